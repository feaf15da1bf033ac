package policy

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// DNSDecision is what an endpoint's egress policy says about one DNS query
// to one server: what a DNS proxy enforces.
type DNSDecision struct {
	// Allowed is whether the query may be forwarded to the server.
	Allowed bool
	// Rule is the rule item that allowed it (zero when denied, or when
	// the direction is not enforced).
	Rule RuleRef
	// DNSRule is the DNS rule that matched the name; zero when the port
	// is allowed without DNS rules (every query).
	DNSRule DNSRule
	// Reason explains the decision in words, for flows and traces.
	Reason string
	// Client and Server are the identities of the two sides, as
	// [Engine.EvaluateDNS] found them in the ipcache (zero from
	// [Repository.EvaluateDNS]): for the proxy's records and for the mark
	// of its upstream connection.
	Client, Server identity.ID
}

// EvaluateDNS decides a DNS query for name that endpoint ep sends to a
// server with identity server on port/proto, as Cilium's DNS proxy does:
// the query is allowed when an egress allow rule that selects the server
// and covers the port either has no DNS rules (all names) or has a DNS
// rule whose matchName or matchPattern matches the name; otherwise it is
// refused. A deny rule that covers the server and port denies every query
// (the datapath would drop it anyway), wherever it stands among the
// rules. A port whose rules have an empty DNS list has no DNS rules
// (Cilium redirects a port to its DNS proxy only for a non-empty list):
// every query. A direction that is not enforced allows everything.
func (r *Repository) EvaluateDNS(ep Endpoint, server identity.Identity, proto nodeplane.Protocol, port uint16, name string) DNSDecision {
	entries, _ := r.snapshot()
	_, eg, dirs := r.selectRules(entries, ep.Identity, ep.Labels)
	if !dirs[mapstate.Egress].Enforced {
		return DNSDecision{Allowed: true, Reason: "egress policy is not enforced"}
	}
	namedPort := r.namedPortFunc(ep, server, mapstate.Egress)
	// Deny rules first, wherever they stand among the rules: in Cilium a
	// deny that covers the server and port wins over every allow (the
	// datapath drops the query before any proxy sees it).
	for _, e := range eg {
		if !e.deny || !e.matchesPeer(server.Labels) {
			continue
		}
		if e.l3Only() || slices.ContainsFunc(e.ports, func(p l4Port) bool { return p.matches(proto, port, namedPort) }) {
			return DNSDecision{Rule: e.ref, Reason: "denied by " + e.ref.String()}
		}
	}
	var (
		portAllowed bool
		withRules   []RuleRef
	)
	for _, e := range eg {
		if e.deny || !e.matchesPeer(server.Labels) {
			continue
		}
		if e.l3Only() {
			return DNSDecision{Allowed: true, Rule: e.ref, Reason: "all traffic to the server allowed by " + e.ref.String()}
		}
		for _, p := range e.ports {
			if !p.matches(proto, port, namedPort) {
				continue
			}
			portAllowed = true
			if p.dns == nil {
				return DNSDecision{Allowed: true, Rule: e.ref, Reason: fmt.Sprintf("port %s allowed without DNS rules by %s", p, e.ref)}
			}
			if rule, ok := p.dns.match(name); ok {
				return DNSDecision{Allowed: true, Rule: e.ref, DNSRule: rule,
					Reason: fmt.Sprintf("%q matches DNS rule %s of %s", name, rule, e.ref)}
			}
			withRules = append(withRules, e.ref)
		}
	}
	switch {
	case len(withRules) > 0:
		return DNSDecision{Reason: fmt.Sprintf("%q matches no DNS rule of %v", name, withRules)}
	case portAllowed:
		return DNSDecision{Reason: fmt.Sprintf("%q matches no DNS rule", name)}
	}
	return DNSDecision{Reason: fmt.Sprintf("no egress rule allows %d/%s to the server", port, proto)}
}

// EvaluateDNS decides a DNS query as [Repository.EvaluateDNS] does, naming
// both sides by address: the client (src) and the server (dst) are looked
// up in the engine's ipcache (an address it does not hold is the world),
// and the client's identity must be that of a managed endpoint.
func (e *Engine) EvaluateDNS(src netip.Addr, dst netip.AddrPort, proto nodeplane.Protocol, name string) (DNSDecision, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return DNSDecision{}, nodeplane.ErrClosed
	}
	if e.fqdn == nil {
		return DNSDecision{}, fmt.Errorf("evaluate DNS query: %w: the engine has no EngineConfig.FQDN", nodeplane.ErrNotSupported)
	}
	srcID, ok := e.lookupIdentityLocked(src)
	if !ok {
		return DNSDecision{}, fmt.Errorf("evaluate DNS query from %v: %w: the address is not in the ipcache", src, ErrUnknownEndpoint)
	}
	var subject *Endpoint
	for _, ee := range e.endpoints {
		if ee.subject.Identity == srcID {
			subject = &ee.subject
			break
		}
	}
	if subject == nil {
		return DNSDecision{}, fmt.Errorf("evaluate DNS query from %v (identity %v): %w", src, srcID, ErrUnknownEndpoint)
	}
	dstID, _ := e.lookupIdentityLocked(dst.Addr())
	labels, _ := e.repo.rv.cache.Labels(dstID)
	d := e.repo.EvaluateDNS(*subject, identity.Identity{ID: dstID, Labels: labels}, proto, dst.Port(), name)
	d.Client, d.Server = srcID, dstID
	return d, nil
}

// lookupIdentityLocked maps an address to its identity through the
// ipcache: the world identity of its family when the ipcache has none.
func (e *Engine) lookupIdentityLocked(a netip.Addr) (identity.ID, bool) {
	a = a.Unmap()
	if e.cfg.IPCache != nil {
		if _, ent, ok := e.cfg.IPCache.Lookup(a); ok {
			return ent.Identity, true
		}
	}
	id := identity.ReservedWorld
	if e.repo.cfg.Stack == nodeplane.DualStack {
		id = identity.ReservedWorldIPv4
		if a.Is6() {
			id = identity.ReservedWorldIPv6
		}
	}
	return id, false
}
