package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
)

// This file generates random policies, identities and packets for the
// oracle test, the BPF sample and the benchmarks. The generator leans on
// the corners of the semantics: namespaces and namespace labels, reserved
// identities, CIDR identities inside and around except ranges, empty and
// absent peer lists, port ranges (from port 0 too), protocol ANY, deny
// rules and default-deny opt-outs.

type randomGen struct {
	r *rand.Rand
}

var (
	rNamespaces = []string{"prod", "dev"}
	rApps       = []string{"web", "db", "api"}
	rEntities   = []Entity{EntityAll, EntityWorld, EntityWorldIPv4, EntityWorldIPv6, EntityCluster, EntityHost,
		EntityRemoteNode, EntityKubeAPIServer, EntityHealth, EntityInit, EntityIngress, EntityUnmanaged, EntityNone}
	rCIDRs = []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "192.168.0.0/16", "0.0.0.0/0",
		"10.96.0.0/12", "2001:db8::/32", "::/0", "172.16.0.0/12"}
	rAddrs = []string{"10.1.2.3", "10.1.2.4", "10.96.1.1", "10.200.0.1", "192.168.1.1", "8.8.8.8",
		"2001:db8::1", "2001:db9::1", "172.16.5.5", "10.1.0.0/16"}
	rPorts = []uint16{0, 1, 22, 80, 81, 443, 53, 8080, 8081, 1000, 1023, 1024, 1100, 65535}
)

func (g randomGen) pick(n int) int { return g.r.IntN(n) }

func (g randomGen) chance(p float64) bool { return g.r.Float64() < p }

// podLabels returns the labels of a random pod.
func (g randomGen) podLabels() string {
	ns := rNamespaces[g.pick(2)]
	s := fmt.Sprintf("k8s:app=%s,k8s:io.kubernetes.pod.namespace=%s", rApps[g.pick(3)], ns)
	switch {
	case g.chance(0.85):
		s += ",k8s:io.cilium.k8s.policy.cluster=default"
	case g.chance(0.5):
		s += ",k8s:io.cilium.k8s.policy.cluster=other"
	}
	if g.chance(0.5) {
		s += ",k8s:io.cilium.k8s.namespace.labels.team=" + []string{"a", "b"}[g.pick(2)]
	}
	if g.chance(0.3) {
		s += ",k8s:tier=" + []string{"front", "back"}[g.pick(2)]
	}
	if g.chance(0.05) {
		s += ",container:role=x"
	}
	return s
}

func (g randomGen) selector(knpStyle bool) identity.LabelSelector {
	if g.chance(0.15) {
		return identity.LabelSelector{}
	}
	ml := map[string]string{}
	choices := []func(){
		func() { ml["app"] = rApps[g.pick(3)] },
		func() { ml["tier"] = []string{"front", "back"}[g.pick(2)] },
	}
	if !knpStyle {
		choices = append(choices,
			func() { ml["k8s:app"] = rApps[g.pick(3)] },
			func() { ml["io.kubernetes.pod.namespace"] = rNamespaces[g.pick(2)] },
			func() { ml["k8s:io.cilium.k8s.namespace.labels.team"] = []string{"a", "b"}[g.pick(2)] },
			func() { ml["io.cilium.k8s.policy.cluster"] = []string{"default", "other"}[g.pick(2)] },
			func() { ml["reserved:"+[]string{"host", "world", "health", "init", "remote-node"}[g.pick(5)]] = "" },
		)
	}
	for n := 1 + g.pick(2); n > 0; n-- {
		choices[g.pick(len(choices))]()
	}
	s := identity.LabelSelector{MatchLabels: ml}
	if g.chance(0.25) {
		ops := []identity.SelectorOperator{identity.SelectorOpIn, identity.SelectorOpNotIn, identity.SelectorOpExists, identity.SelectorOpDoesNotExist}
		req := identity.SelectorRequirement{Key: []string{"app", "tier", "env"}[g.pick(3)], Operator: ops[g.pick(4)]}
		if req.Operator == identity.SelectorOpIn || req.Operator == identity.SelectorOpNotIn {
			req.Values = []string{rApps[g.pick(3)], "front"}[:1+g.pick(2)]
		}
		s.MatchExpressions = append(s.MatchExpressions, req)
	}
	return s
}

func (g randomGen) ports() []PortRule {
	var out []PortRule
	for n := 1 + g.pick(2); n > 0; n-- {
		if g.chance(0.04) {
			out = append(out, PortRule{})
			continue
		}
		var pr PortRule
		for m := 1 + g.pick(2); m > 0; m-- {
			pp := PortProtocol{Port: []uint16{80, 443, 53, 8080, 0, 1000, 1024}[g.pick(7)]}
			switch x := g.r.Float64(); {
			case x < 0.25:
				// A range; from port 0 it is every port all the same.
				pp.EndPort = pp.Port + []uint16{1, 7, 100, 1000}[g.pick(4)]
			case x < 0.3:
				// An endPort that is not above the port: the port alone.
				pp.EndPort = pp.Port - uint16(g.pick(2))
				if pp.Port == 0 {
					pp.EndPort = 0
				}
			}
			pp.Protocol = []nodeplane.Protocol{nodeplane.ProtoAny, nodeplane.ProtoTCP, nodeplane.ProtoUDP, nodeplane.ProtoSCTP, nodeplane.ProtoTCP}[g.pick(5)]
			pr.Ports = append(pr.Ports, pp)
		}
		out = append(out, pr)
	}
	return out
}

func (g randomGen) cidrRule() CIDRRule {
	excepts := map[string][]string{
		"10.0.0.0/8":    {"10.96.0.0/12", "10.1.2.0/24"},
		"0.0.0.0/0":     {"10.0.0.0/8", "192.168.0.0/16"},
		"10.1.0.0/16":   {"10.1.2.3/32"},
		"2001:db8::/32": {"2001:db8::/64"},
	}
	keys := []string{"10.0.0.0/8", "0.0.0.0/0", "10.1.0.0/16", "2001:db8::/32"}
	c := keys[g.pick(len(keys))]
	r := CIDRRule{CIDR: netip.MustParsePrefix(c)}
	if g.chance(0.7) {
		for _, e := range excepts[c] {
			if g.chance(0.6) {
				r.Except = append(r.Except, netip.MustParsePrefix(e))
			}
		}
	}
	return r
}

// peers fills one peer kind of a rule item, or none.
func (g randomGen) peers() (eps []identity.LabelSelector, ents []Entity, cidrs []netip.Prefix, sets []CIDRRule) {
	switch x := g.r.Float64(); {
	case x < 0.35:
		eps = []identity.LabelSelector{}
		for n := []int{0, 1, 1, 2}[g.pick(4)]; n > 0; n-- {
			eps = append(eps, g.selector(false))
		}
	case x < 0.55:
		for n := 1 + g.pick(2); n > 0; n-- {
			ents = append(ents, rEntities[g.pick(len(rEntities))])
		}
	case x < 0.65:
		for n := 1 + g.pick(2); n > 0; n-- {
			cidrs = append(cidrs, netip.MustParsePrefix(rCIDRs[g.pick(len(rCIDRs))]))
		}
	case x < 0.75:
		sets = []CIDRRule{g.cidrRule()}
	}
	return
}

func (g randomGen) l4() ([]PortRule, []ICMPRule) {
	switch x := g.r.Float64(); {
	case x < 0.5:
		return g.ports(), nil
	case x < 0.55:
		return nil, []ICMPRule{{Fields: []ICMPField{{Type: []uint8{8, 0}[g.pick(2)]}}}}
	}
	return nil, nil
}

func (g randomGen) rule(clusterwide bool) Rule {
	sel := g.selector(false)
	if clusterwide && g.chance(0.05) {
		sel = identity.LabelSelector{MatchLabels: map[string]string{"reserved:" + []string{"health", "init", "ingress", "world"}[g.pick(4)]: ""}}
	} else {
		for k := range sel.MatchLabels {
			if len(k) > 9 && k[:9] == "reserved:" {
				delete(sel.MatchLabels, k)
			}
		}
	}
	r := Rule{EndpointSelector: &sel}
	for sec := 0; sec < 4; sec++ {
		p := 0.5
		if sec%2 == 1 {
			p = 0.25
		}
		if !g.chance(p) {
			continue
		}
		for n := g.pick(3); n > 0; n-- {
			eps, ents, cidrs, sets := g.peers()
			ports, icmps := g.l4()
			switch sec {
			case 0, 1:
				item := IngressRule{FromEndpoints: eps, FromEntities: ents, FromCIDR: cidrs, FromCIDRSet: sets, ToPorts: ports, ICMPs: icmps}
				if sec == 0 {
					r.Ingress = append(r.Ingress, item)
				} else {
					r.IngressDeny = append(r.IngressDeny, item)
				}
			default:
				item := EgressRule{ToEndpoints: eps, ToEntities: ents, ToCIDR: cidrs, ToCIDRSet: sets, ToPorts: ports, ICMPs: icmps}
				if sec == 2 {
					r.Egress = append(r.Egress, item)
				} else {
					r.EgressDeny = append(r.EgressDeny, item)
				}
			}
		}
	}
	if len(r.Ingress)+len(r.IngressDeny)+len(r.Egress)+len(r.EgressDeny) == 0 {
		r.Ingress = []IngressRule{{}}
	}
	if g.chance(0.15) {
		yes, no := true, false
		if g.chance(0.7) {
			r.EnableDefaultDeny.Ingress = []*bool{&yes, &no}[g.pick(2)]
		}
		if g.chance(0.7) {
			r.EnableDefaultDeny.Egress = []*bool{&yes, &no}[g.pick(2)]
		}
	}
	return r
}

// policy returns a random CiliumNetworkPolicy or clusterwide policy.
func (g randomGen) policy(i int) Policy {
	if g.chance(0.3) {
		return Policy{Kind: KindCiliumClusterwideNetworkPolicy, Name: fmt.Sprintf("c%d", i), Rules: []Rule{g.rule(true)}}
	}
	p := Policy{Kind: KindCiliumNetworkPolicy, Namespace: rNamespaces[g.pick(2)], Name: fmt.Sprintf("p%d", i)}
	for n := 1 + g.pick(2); n > 0; n-- {
		p.Rules = append(p.Rules, g.rule(false))
	}
	return p
}

var rReserved = []string{"reserved:host", "reserved:world", "reserved:world-ipv4", "reserved:world-ipv6",
	"reserved:remote-node", "reserved:kube-apiserver,reserved:remote-node", "reserved:health", "reserved:init",
	"reserved:ingress", "reserved:unmanaged"}

// identities returns a random population: pods and CIDR identities, with
// IDs from the given allocator function.
func (g randomGen) identities(n int, next func(identity.Labels) identity.ID) []identity.Identity {
	seen := map[identity.Labels]bool{}
	var out []identity.Identity
	for len(out) < n {
		var ls identity.Labels
		var err error
		if g.chance(0.2) {
			a := rAddrs[g.pick(len(rAddrs))]
			pfx, perr := netip.ParsePrefix(a)
			if perr != nil {
				addr := netip.MustParseAddr(a)
				pfx = netip.PrefixFrom(addr, addr.BitLen())
			}
			ls, err = identity.CIDRLabels(pfx, nodeplane.DualStack)
		} else {
			ls, err = identity.ParseLabelList(g.podLabels())
		}
		if err != nil {
			panic(err)
		}
		if seen[ls] {
			continue
		}
		seen[ls] = true
		out = append(out, identity.Identity{ID: next(ls), Labels: ls})
	}
	return out
}

type randomPacket struct {
	proto nodeplane.Protocol
	port  uint16
}

func (g randomGen) packet() randomPacket {
	switch x := g.r.Float64(); {
	case x < 0.1:
		return randomPacket{nodeplane.ProtoICMP, []uint16{0, 8}[g.pick(2)]}
	case x < 0.25:
		return randomPacket{nodeplane.ProtoUDP, rPorts[g.pick(len(rPorts))]}
	case x < 0.3:
		return randomPacket{nodeplane.ProtoSCTP, rPorts[g.pick(len(rPorts))]}
	}
	return randomPacket{nodeplane.ProtoTCP, rPorts[g.pick(len(rPorts))]}
}
