// Command nodeplaneref prints this SDK's policy verdicts for the cases of
// ../gen.py, in the format of ../cilium.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

type input struct {
	Docs     []string          `json:"docs"`
	From     string            `json:"from"`
	To       string            `json:"to"`
	ToCIDR   string            `json:"tocidr"`
	Proto    string            `json:"proto"`
	Port     uint16            `json:"port"`
	NamedTCP map[string]uint16 `json:"namedtcp"`
}

type output struct {
	Egress  string `json:"egress"`
	Ingress string `json:"ingress"`
	Err     string `json:"err,omitempty"`
}

func verdict(b bool) string {
	if b {
		return "allowed"
	}
	return "denied"
}

func run(in input) (out output) {
	defer func() {
		if r := recover(); r != nil {
			out = output{Err: fmt.Sprintf("panic: %v", r)}
		}
	}()
	var pols []policy.Policy
	for i, d := range in.Docs {
		ps, err := policy.Parse([]byte(d), fmt.Sprintf("doc%d", i))
		if err != nil {
			return output{Err: err.Error()}
		}
		pols = append(pols, ps...)
	}
	eng, err := policy.NewEngine(policy.EngineConfig{})
	if err != nil {
		return output{Err: err.Error()}
	}
	defer eng.Close()
	repo := eng.Repository()
	for _, p := range pols {
		if _, err := eng.ReplacePolicy(p); err != nil {
			return output{Err: err.Error()}
		}
	}
	next := identity.ID(1<<16 | 1000) // cluster 1
	ident := func(ls identity.Labels) identity.Identity {
		if id, ok := identity.LookupReserved(ls); ok {
			return identity.Identity{ID: id, Labels: ls}
		}
		next++
		return identity.Identity{ID: next, Labels: ls}
	}
	fromL, err := identity.ParseLabelList(in.From)
	if err != nil {
		return output{Err: err.Error()}
	}
	from := ident(fromL)
	var to identity.Identity
	if in.ToCIDR != "" {
		pfx, err := netip.ParsePrefix(in.ToCIDR)
		if err != nil {
			a, err2 := netip.ParseAddr(in.ToCIDR)
			if err2 != nil {
				return output{Err: err.Error()}
			}
			pfx = netip.PrefixFrom(a, a.BitLen())
		}
		ls, err := identity.CIDRLabels(pfx, nodeplane.DualStack)
		if err != nil {
			return output{Err: err.Error()}
		}
		if id, ok := identity.LookupReserved(ls); ok {
			to = identity.Identity{ID: id, Labels: ls}
		} else {
			to = identity.Identity{ID: identity.LocalScopeFlag | 1, Labels: ls}
		}
	} else {
		toL, err := identity.ParseLabelList(in.To)
		if err != nil {
			return output{Err: err.Error()}
		}
		to = ident(toL)
	}
	if err := eng.UpdateIdentities([]identity.Identity{from, to}, nil); err != nil {
		return output{Err: err.Error()}
	}
	proto, err := nodeplane.ParseProtocol(in.Proto)
	if err != nil {
		return output{Err: err.Error()}
	}
	eg := repo.Compile(policy.Endpoint{Identity: from.ID, Labels: from.Labels})
	var nps []policy.NamedPort
	for n, p := range in.NamedTCP {
		nps = append(nps, policy.NamedPort{Name: n, Port: p, Protocol: nodeplane.ProtoTCP})
	}
	ig := repo.Compile(policy.Endpoint{Identity: to.ID, Labels: to.Labels, NamedPorts: nps})
	de := eg.Lookup(to.ID, mapstate.Egress, proto, in.Port)
	di := ig.Lookup(from.ID, mapstate.Ingress, proto, in.Port)
	ee := repo.Evaluate(policy.Endpoint{Identity: from.ID, Labels: from.Labels}, to, mapstate.Egress, proto, in.Port)
	ei := repo.Evaluate(policy.Endpoint{Identity: to.ID, Labels: to.Labels, NamedPorts: nps}, from, mapstate.Ingress, proto, in.Port)
	if de.Allowed != ee.Allowed || di.Allowed != ei.Allowed {
		return output{Err: fmt.Sprintf("INCONSISTENT map/eval egress %v/%v ingress %v/%v", de.Allowed, ee.Allowed, di.Allowed, ei.Allowed)}
	}
	return output{Egress: verdict(de.Allowed), Ingress: verdict(di.Allowed)}
}

func main() {
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 16<<20), 16<<20)
	enc := json.NewEncoder(os.Stdout)
	for sc.Scan() {
		var in input
		if err := json.Unmarshal(sc.Bytes(), &in); err != nil {
			enc.Encode(output{Err: err.Error()})
			continue
		}
		enc.Encode(run(in))
	}
}
