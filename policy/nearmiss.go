package policy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// This file explains near misses: when no rule allows a packet in a
// default-deny direction, which part of each allow item that selects the
// endpoint failed, down to the label requirement of a peer selector. The
// requirements that Cilium adds to peer selectors (the local cluster's
// name, the policy's namespace) are the usual surprise, so they say that
// they were added.

// NearMiss is an allow rule item that selects the endpoint in the traced
// direction but does not allow the packet, with the parts that failed.
type NearMiss struct {
	Rule   RuleRef
	Misses []Miss
}

// MissPart is the part of a rule item that failed to match.
type MissPart string

// The parts of a rule item that can fail to match.
const (
	// MissPeer: no peer selector of the item selects the peer (or the item
	// selects no peer at all).
	MissPeer MissPart = "peer"
	// MissCIDRExcept: the peer is inside the CIDR, but in one of its
	// excepts.
	MissCIDRExcept MissPart = "cidr except"
	// MissProtocol: no port entry of the item is for the packet's
	// protocol.
	MissProtocol MissPart = "protocol"
	// MissPort: port entries are for the protocol, but none covers the
	// port (or the item lists no port at all).
	MissPort MissPart = "port"
)

// Miss is one part of a rule item that did not match a packet.
type Miss struct {
	Part MissPart
	// Selector is the peer selector that did not select the peer, in
	// canonical form, for MissPeer and MissCIDRExcept.
	Selector string
	// Requirement is the requirement of Selector that failed
	// ("k8s:io.cilium.k8s.policy.cluster=default", "cidr:10.0.0.0/8").
	Requirement string
	// Detail says what failed, in words.
	Detail string
}

func (m Miss) String() string {
	if m.Selector != "" {
		return fmt.Sprintf("%s: %s: %s", m.Part, m.Selector, m.Detail)
	}
	return fmt.Sprintf("%s: %s", m.Part, m.Detail)
}

// nearMisses explains, for a packet that no rule allows, every allow item
// that selects the endpoint in dir. It evaluates the rules directly, as
// Evaluate does.
func (r *Repository) nearMisses(ep Endpoint, peer identity.Identity, dir mapstate.Direction, proto nodeplane.Protocol, port uint16) []NearMiss {
	entries, _ := r.snapshot()
	in, eg, _ := r.selectRules(entries, ep.Identity, ep.Labels)
	sel := eg
	if dir == mapstate.Ingress {
		sel = in
	}
	namedPort := r.namedPortFunc(ep, peer, dir)
	var out []NearMiss
	for _, e := range sel {
		if e.deny {
			continue
		}
		var misses []Miss
		peerOK := e.matchesPeer(peer.Labels)
		switch {
		case e.peers == nil:
			misses = append(misses, Miss{Part: MissPeer, Detail: "its peer list is given but empty: it selects no peer"})
		case len(e.peers) == 0 && !e.l4Given:
			misses = append(misses, Miss{Part: MissPeer,
				Detail: "it has neither peers nor ports: it allows nothing and only makes the direction default-deny"})
		case !peerOK:
			for i, p := range e.peers {
				var implied map[string]string
				if i < len(e.implied) {
					implied = e.implied[i]
				}
				misses = append(misses, selectorMisses(p.cs, implied, peer.Labels)...)
			}
		}
		if e.l4Given && e.peers != nil {
			misses = append(misses, portMisses(e.ports, proto, port, namedPort, dir)...)
		}
		if len(misses) > 0 {
			out = append(out, NearMiss{Rule: e.ref, Misses: misses})
		}
	}
	return out
}

// selectorMisses explains why a peer selector does not select a label
// set: one Miss per failed requirement.
func selectorMisses(cs *cachedSelector, implied map[string]string, ls identity.Labels) []Miss {
	switch cs.kind {
	case selFQDN:
		return []Miss{{Part: MissPeer, Selector: cs.desc, Requirement: cs.fqdnLabel.String(),
			Detail: "selects only addresses that a DNS answer seen by the DNS proxy gave to a matching name, until its TTL runs out; the peer has no " +
				cs.fqdnLabel.String() + " label (no such answer, or it expired)"}}
	case selCIDR:
		if !hasWorldLabel(ls) {
			return []Miss{{Part: MissPeer, Selector: cs.desc,
				Detail: "CIDR rules select only peers outside the cluster, and the peer has no reserved:world label"}}
		}
	}
	var out []Miss
	for _, req := range requirements(cs.spec) {
		s, err := identity.NewSelector(req)
		if err != nil || s.Matches(ls) {
			continue
		}
		m := Miss{Part: MissPeer, Selector: cs.desc, Requirement: s.String()}
		if cs.kind == selCIDR {
			m.Detail = "the peer is not in " + cs.cidr.String()
			if req.MatchExpressions[0].Operator == identity.SelectorOpDoesNotExist {
				m.Part = MissCIDRExcept
				m.Detail = fmt.Sprintf("the peer is in %s, an except of %s", exceptFor(cs, req), cs.cidr)
			}
		} else {
			key := requirementKey(req)
			m.Detail = "requires " + s.String()
			if why := implied[key]; why != "" {
				m.Detail += " (" + why + ")"
			}
			m.Detail += "; " + peerHas(ls, key)
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		// Every requirement holds on its own, so the selector matches:
		// the caller only asks about selectors that do not.
		out = append(out, Miss{Part: MissPeer, Selector: cs.desc, Detail: "does not select the peer"})
	}
	return out
}

// requirements splits a selector into one selector per requirement, in a
// stable order: match labels by key, then the expressions in order.
func requirements(s identity.LabelSelector) []identity.LabelSelector {
	var out []identity.LabelSelector
	keys := make([]string, 0, len(s.MatchLabels))
	for k := range s.MatchLabels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		out = append(out, identity.LabelSelector{MatchLabels: map[string]string{k: s.MatchLabels[k]}})
	}
	for _, e := range s.MatchExpressions {
		out = append(out, identity.LabelSelector{MatchExpressions: []identity.SelectorRequirement{e}})
	}
	return out
}

func requirementKey(s identity.LabelSelector) string {
	for k := range s.MatchLabels {
		return k
	}
	return s.MatchExpressions[0].Key
}

// exceptFor returns the except prefix whose requirement req is.
func exceptFor(cs *cachedSelector, req identity.LabelSelector) string {
	key := req.MatchExpressions[0].Key
	for _, e := range cs.except {
		if r, err := cidrRequirement(e, nodeplane.DualStack, identity.SelectorOpDoesNotExist); err == nil && r.Key == key {
			return e.String()
		}
		if r, err := cidrRequirement(e, nodeplane.SingleStack, identity.SelectorOpDoesNotExist); err == nil && r.Key == key {
			return e.String()
		}
	}
	return key
}

// peerHas says what label the peer has for a selector key ("source:key").
func peerHas(ls identity.Labels, key string) string {
	name := key
	if i := strings.IndexByte(key, ':'); i >= 0 {
		name = key[i+1:]
	}
	if l, ok := ls.Get(name); ok {
		return "the peer has " + l.String()
	}
	return "the peer has no " + name + " label"
}

// portMisses explains why no port entry of an item covers a packet.
func portMisses(ports []l4Port, proto nodeplane.Protocol, port uint16, namedPort func(string, nodeplane.Protocol) []uint16, dir mapstate.Direction) []Miss {
	if len(ports) == 0 {
		return []Miss{{Part: MissPort, Detail: "its toPorts list no port: it allows nothing"}}
	}
	var same, all []string
	var unresolved []string
	for _, p := range ports {
		if p.matches(proto, port, namedPort) {
			return nil
		}
		if !slices.Contains(all, p.String()) {
			all = append(all, p.String())
		}
		if p.proto == proto {
			same = append(same, p.String())
			if p.name != "" && len(namedPort(p.name, proto)) == 0 {
				unresolved = append(unresolved, p.name)
			}
		}
	}
	pkt := fmt.Sprintf("%d/%s", port, proto)
	if proto == nodeplane.ProtoICMP || proto == nodeplane.ProtoICMPv6 {
		pkt = fmt.Sprintf("type %d/%s", port, proto)
	}
	if len(same) == 0 {
		return []Miss{{Part: MissProtocol, Detail: fmt.Sprintf("%s: no port entry is for %s (the item has %s)", pkt, proto, strings.Join(all, ", "))}}
	}
	d := fmt.Sprintf("%s is not among %s", pkt, strings.Join(same, ", "))
	if len(unresolved) > 0 {
		owner := "the endpoint"
		if dir == mapstate.Egress {
			owner = "the peer"
		}
		d += fmt.Sprintf(" (%s defines no named port %s)", owner, strings.Join(unresolved, ", "))
	}
	return []Miss{{Part: MissPort, Detail: d}}
}

// impliedRequirements returns the requirement keys that scoping added to
// a peer selector (scoped) beyond what the user wrote (user, normalized),
// with why.
func impliedRequirements(user, scoped identity.LabelSelector) map[string]string {
	var out map[string]string
	add := func(key, why string) {
		if selectorHasKey(user, key) {
			return
		}
		if out == nil {
			out = map[string]string{}
		}
		out[key] = why
	}
	if _, ok := scoped.MatchLabels[clusterKey]; ok {
		add(clusterKey, "Cilium adds the local cluster to peer selectors that name no cluster")
	}
	if _, ok := scoped.MatchLabels[podNamespaceKey]; ok {
		add(podNamespaceKey, "Cilium limits the peers of a namespaced policy to its namespace unless the selector names a namespace")
	}
	for _, e := range scoped.MatchExpressions {
		if e.Key == podNamespaceKey && e.Operator == identity.SelectorOpExists {
			add(podNamespaceKey, "Cilium limits the peers of a clusterwide policy to endpoints with a namespace")
		}
	}
	return out
}
