package policy

import (
	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// RuleMatch is a rule item that matched a packet.
type RuleMatch struct {
	Rule RuleRef
	// Peer is the selector that selected the peer ("every peer" for an
	// item without peers).
	Peer string
	// Port is the port entry that matched ("all protocols" for an item
	// without ports).
	Port string
}

func (m RuleMatch) String() string {
	return m.Rule.String() + " (peer " + m.Peer + ", port " + m.Port + ")"
}

// Evaluation is the outcome of evaluating the rules for one packet in one
// direction of one endpoint.
type Evaluation struct {
	Allowed bool
	// Reason is DropPolicyDeny when a deny rule matched, DropPolicyDenied
	// when nothing allowed a packet in a default-deny direction.
	Reason monitor.DropReason
	// Policy summarises the direction (enforced, default deny, why).
	Policy DirectionPolicy
	// Denied and Allowed list the rule items that matched.
	DeniedBy  []RuleMatch
	AllowedBy []RuleMatch
}

// Evaluate decides a packet by evaluating the rules directly, without the
// compiled map or the selector cache: every selector is matched against
// the peer's labels. It is the definition the compiled map must agree
// with, and what traces explain. ep is the endpoint whose policy applies
// (the destination for ingress, the source for egress); peer is the other
// side.
func (r *Repository) Evaluate(ep Endpoint, peer identity.Identity, dir mapstate.Direction, proto nodeplane.Protocol, port uint16) Evaluation {
	entries, _ := r.snapshot()
	in, eg, dirs := r.selectRules(entries, ep.Identity, ep.Labels)
	ev := Evaluation{Policy: dirs[dir]}
	if !ev.Policy.Enforced {
		ev.Allowed = true
		return ev
	}
	sel := eg
	if dir == mapstate.Ingress {
		sel = in
	}
	namedPort := r.namedPortFunc(ep, peer, dir)
	for _, e := range sel {
		if !e.matchesPeer(peer.Labels) {
			continue
		}
		peerDesc := "every peer"
		for _, p := range e.peers {
			if p.cs.wildcard {
				break
			}
			if p.cs.matches(peer.Labels) {
				peerDesc = p.cs.desc
				break
			}
		}
		var m *RuleMatch
		if e.l3Only() {
			m = &RuleMatch{Rule: e.ref, Peer: peerDesc, Port: "all protocols"}
		} else {
			for _, p := range e.ports {
				if p.matches(proto, port, namedPort) {
					m = &RuleMatch{Rule: e.ref, Peer: peerDesc, Port: p.String()}
					break
				}
			}
		}
		if m == nil {
			continue
		}
		if e.deny {
			ev.DeniedBy = append(ev.DeniedBy, *m)
		} else {
			ev.AllowedBy = append(ev.AllowedBy, *m)
		}
	}
	switch {
	case len(ev.DeniedBy) > 0:
		ev.Reason = monitor.DropPolicyDeny
	case len(ev.AllowedBy) > 0, !ev.Policy.DefaultDeny:
		ev.Allowed = true
	default:
		ev.Reason = monitor.DropPolicyDenied
	}
	return ev
}

// namedPortFunc resolves the named ports of rules in one direction: an
// ingress rule names the endpoint's own port, an egress rule the peer's.
func (r *Repository) namedPortFunc(ep Endpoint, peer identity.Identity, dir mapstate.Direction) func(string, nodeplane.Protocol) []uint16 {
	return func(name string, p nodeplane.Protocol) []uint16 {
		if dir == mapstate.Ingress {
			return ep.namedPort(name, p)
		}
		if r.cfg.NamedPorts == nil {
			return nil
		}
		return r.cfg.NamedPorts.NamedPorts(peer.ID, name, p)
	}
}
