package policy

import (
	"fmt"
	"strings"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// TraceRequest describes a flow to trace: a packet from one identity to
// another, to a destination port.
type TraceRequest struct {
	// From and To are the two sides, with their labels.
	From, To identity.Identity
	// FromNamedPorts and ToNamedPorts are the sides' named ports; rules
	// that name a port mean the destination's.
	FromNamedPorts, ToNamedPorts []NamedPort
	Protocol                     nodeplane.Protocol
	// Port is the destination port, or the ICMP type.
	Port uint16
	// Directions restricts the trace to the source's egress or the
	// destination's ingress; zero means both (the whole path).
	Directions TraceDirections
	// DNSName, when set, makes the flow a DNS query for this name: if the
	// source's egress redirects it to the DNS proxy (a port with DNS
	// rules), the proxy's decision by those rules is part of the verdict
	// ([SideTrace.DNS]), REFUSED counting as denied.
	DNSName string
	// HTTP is a request to decide where a side redirects the flow to the
	// HTTP proxy; nil traces the connection only (the side then lists its
	// HTTP rules without deciding a request).
	HTTP *HTTPRequest
}

// TraceDirections selects which sides of a flow a trace decides.
type TraceDirections uint8

const (
	// TraceBoth decides the whole path: the source's egress and the
	// destination's ingress must both allow the packet.
	TraceBoth TraceDirections = iota
	// TraceEgressOnly decides the source's egress only.
	TraceEgressOnly
	// TraceIngressOnly decides the destination's ingress only.
	TraceIngressOnly
)

// TraceResult is the verdict on a traced flow and its explanation.
type TraceResult struct {
	Allowed bool
	// Egress and Ingress are the two sides; nil when not decided (not
	// requested, or the side is not an endpoint that policy applies to).
	Egress, Ingress *SideTrace
	// Notes explain sides that were not decided.
	Notes []string
}

// SideTrace is one direction of a traced flow.
type SideTrace struct {
	Direction mapstate.Direction
	// Endpoint is the side whose policy applies; Peer is the other side.
	Endpoint, Peer identity.Identity
	// Evaluation is the direct evaluation of the rules.
	Evaluation Evaluation
	// Decision is what the datapath decides from the compiled map.
	Decision mapstate.Decision
	// MapEntries is the size of the compiled map.
	MapEntries int
	// NearMisses explain a packet that no rule allows in a default-deny
	// direction: each allow item that selects the endpoint, and which of
	// its parts failed. Empty otherwise.
	NearMisses []NearMiss
	// HTTP is set when the side redirects the flow to the HTTP proxy.
	HTTP *HTTPTrace
	// DNS is the DNS proxy's decision on TraceRequest.DNSName when the
	// datapath redirects the query to the DNS proxy; nil otherwise.
	DNS *DNSDecision
}

// HTTPTrace is the L7 part of a side: the HTTP rules the proxy applies to
// the flow's requests and, for a traced request, its decision.
type HTTPTrace struct {
	ProxyPort uint16
	Policy    *HTTPPolicy
	// Decision is nil when no request was traced.
	Decision *HTTPDecision
}

// Allowed is the side's verdict: the datapath's decision over the compiled
// map, which Trace checks against the direct evaluation, and for a traced
// request or DNS query the proxy's.
func (s *SideTrace) Allowed() bool {
	return s.Decision.Allowed && (s.HTTP == nil || s.HTTP.Decision == nil || s.HTTP.Decision.Allowed) &&
		(s.DNS == nil || s.DNS.Allowed)
}

// PolicyApplies reports whether an identity can be a local endpoint whose
// policy decides traffic: a cluster identity (a pod), or the reserved
// health, init and ingress identities, or the host when its firewall is
// enabled. Traffic from or to the world, CIDR identities, remote nodes,
// the kube-apiserver and unmanaged endpoints is decided by the other side
// only.
func (r *Repository) PolicyApplies(id identity.ID) bool {
	switch id {
	case identity.ReservedHealth, identity.ReservedInit, identity.ReservedIngress:
		return true
	case identity.ReservedHost:
		return r.cfg.HostFirewall
	}
	return !id.IsReserved() && !id.IsLocal() && id != identity.Unknown
}

// Trace decides a flow the way the datapath does, side by side with the
// direct evaluation of the rules, and explains it. The source's egress
// policy and the destination's ingress policy both apply (unless
// Directions restricts them), each only if [Repository.PolicyApplies] to
// that side. Both identities must be known to the repository's selector
// cache, so that the compiled maps can hold them.
//
// A side denied for want of an allow carries its near misses
// ([SideTrace.NearMisses]): why each allow item that selects the endpoint
// did not match.
//
// It fails with [ErrInconsistent] if the compiled map and the rules
// disagree, which would be a bug in this package.
func (r *Repository) Trace(req TraceRequest) (*TraceResult, error) {
	cache := r.rv.cache
	for _, side := range []identity.Identity{req.From, req.To} {
		if ls, ok := cache.Labels(side.ID); !ok || ls != side.Labels {
			return nil, fmt.Errorf("trace: identity %d (%s): %w", side.ID, side.Labels, ErrUnknownIdentity)
		}
	}
	res := &TraceResult{Allowed: true}
	side := func(dir mapstate.Direction, ep identity.Identity, epPorts []NamedPort, peer identity.Identity) (*SideTrace, error) {
		endpoint := Endpoint{Identity: ep.ID, Labels: ep.Labels, NamedPorts: epPorts}
		pol := r.Compile(endpoint)
		st := &SideTrace{
			Direction:  dir,
			Endpoint:   ep,
			Peer:       peer,
			Evaluation: r.Evaluate(endpoint, peer, dir, req.Protocol, req.Port),
			Decision:   pol.Lookup(peer.ID, dir, req.Protocol, req.Port),
			MapEntries: pol.Len(),
		}
		if !st.Evaluation.Allowed && len(st.Evaluation.DeniedBy) == 0 {
			st.NearMisses = r.nearMisses(endpoint, peer, dir, req.Protocol, req.Port)
		}
		dnsRedirect := st.Decision.Allowed && st.Decision.ProxyPort != 0 && st.Decision.ProxyPort == r.cfg.ProxyPorts.DNS
		switch {
		case dnsRedirect:
			if dir == mapstate.Egress && req.DNSName != "" {
				d := r.EvaluateDNS(endpoint, peer, req.Protocol, req.Port, req.DNSName)
				st.DNS = &d
			}
		case st.Decision.Allowed && st.Decision.ProxyPort != 0:
			hp, _ := pol.HTTP(peer.ID, dir, req.Protocol, req.Port)
			st.HTTP = &HTTPTrace{ProxyPort: st.Decision.ProxyPort, Policy: hp}
			if req.HTTP != nil {
				d := hp.Decide(req.HTTP)
				st.HTTP.Decision = &d
			}
		}
		if st.Decision.Allowed != st.Evaluation.Allowed ||
			!st.Decision.Allowed && st.Decision.Reason != st.Evaluation.Reason {
			return st, fmt.Errorf("trace %s of %d: map says %s, rules say %s: %w", dir, ep.ID,
				decisionString(st.Decision), evaluationString(st.Evaluation), ErrInconsistent)
		}
		return st, nil
	}
	var err error
	if req.Directions != TraceIngressOnly {
		if r.PolicyApplies(req.From.ID) {
			if res.Egress, err = side(mapstate.Egress, req.From, req.FromNamedPorts, req.To); err != nil {
				return res, err
			}
			res.Allowed = res.Allowed && res.Egress.Allowed()
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("egress: the source (identity %d) %s; no egress policy applies", req.From.ID, notEndpointReason(req.From.ID)))
		}
	}
	if req.Directions != TraceEgressOnly {
		if r.PolicyApplies(req.To.ID) {
			// Ingress named ports are the destination's own.
			if res.Ingress, err = side(mapstate.Ingress, req.To, req.ToNamedPorts, req.From); err != nil {
				return res, err
			}
			res.Allowed = res.Allowed && res.Ingress.Allowed()
		} else {
			res.Notes = append(res.Notes, fmt.Sprintf("ingress: the destination (identity %d) %s; no ingress policy applies", req.To.ID, notEndpointReason(req.To.ID)))
		}
	}
	return res, nil
}

// notEndpointReason says why policy does not apply at an identity.
func notEndpointReason(id identity.ID) string {
	switch {
	case id == identity.ReservedHost:
		return "is the host, which endpoint policy does not restrict (host firewall disabled)"
	case id.IsLocal():
		return "is outside the cluster (a CIDR identity)"
	case id.IsReserved():
		name, _ := id.ReservedName()
		return "is reserved:" + name + ", not a local endpoint"
	}
	return "is not a local endpoint"
}

func decisionString(d mapstate.Decision) string {
	if d.Allowed {
		if d.Matched {
			return "allowed by entry " + d.Key.String()
		}
		return "allowed"
	}
	if d.Matched {
		return fmt.Sprintf("denied (%d) by entry %s", d.Reason, d.Key)
	}
	return fmt.Sprintf("denied (%d): no entry matches", d.Reason)
}

func evaluationString(e Evaluation) string {
	if e.Allowed {
		return "allowed"
	}
	return fmt.Sprintf("denied (%d)", e.Reason)
}

// String renders the trace as the explanation policytrace prints.
func (t *TraceResult) String() string {
	var b strings.Builder
	for _, s := range []*SideTrace{t.Egress, t.Ingress} {
		if s == nil {
			continue
		}
		s.write(&b)
		b.WriteByte('\n')
	}
	for _, n := range t.Notes {
		b.WriteString("note: " + n + "\n")
	}
	if t.Allowed {
		b.WriteString("Final verdict: ALLOWED\n")
	} else {
		b.WriteString("Final verdict: DENIED\n")
	}
	return b.String()
}

func (s *SideTrace) write(b *strings.Builder) {
	who, peerRole := "source", "destination"
	if s.Direction == mapstate.Ingress {
		who, peerRole = "destination", "source"
	}
	fmt.Fprintf(b, "%s of the %s (identity %d: %s)\n", titleCase(s.Direction.String()), who, s.Endpoint.ID, s.Endpoint.Labels)
	fmt.Fprintf(b, "  %s: identity %d (%s)\n", peerRole, s.Peer.ID, s.Peer.Labels)
	ev := s.Evaluation
	fmt.Fprintf(b, "  policy: %s\n", ev.Policy.Reason)
	for _, r := range ev.Policy.Rules {
		fmt.Fprintf(b, "    selects: %s\n", r)
	}
	if ev.Policy.DefaultDeny {
		if len(ev.Policy.DefaultDenyRules) > 0 {
			fmt.Fprintf(b, "  default deny: yes, because of %s", ev.Policy.DefaultDenyRules[0])
			if n := len(ev.Policy.DefaultDenyRules) - 1; n > 0 {
				fmt.Fprintf(b, " and %d more", n)
			}
			b.WriteByte('\n')
		} else {
			b.WriteString("  default deny: yes\n")
		}
	} else if ev.Policy.Enforced {
		b.WriteString("  default deny: no (every selecting rule sets enableDefaultDeny false)\n")
	}
	for _, m := range ev.DeniedBy {
		fmt.Fprintf(b, "  DENIED by %s\n", m)
	}
	for _, m := range ev.AllowedBy {
		if len(ev.DeniedBy) > 0 {
			fmt.Fprintf(b, "  allowed by %s, but deny takes precedence\n", m)
		} else {
			fmt.Fprintf(b, "  ALLOWED by %s\n", m)
		}
	}
	switch {
	case !ev.Policy.Enforced:
		b.WriteString("  no rule applies: allowed\n")
	case len(ev.DeniedBy) == 0 && len(ev.AllowedBy) == 0 && ev.Policy.DefaultDeny:
		b.WriteString("  no rule allows it: denied by default deny\n")
		if len(s.NearMisses) > 0 {
			b.WriteString("  near misses (allow items that select the endpoint, and what failed):\n")
		}
		for _, nm := range s.NearMisses {
			fmt.Fprintf(b, "    %s\n", nm.Rule)
			for _, m := range nm.Misses {
				fmt.Fprintf(b, "      %s\n", m)
			}
		}
	case len(ev.DeniedBy) == 0 && len(ev.AllowedBy) == 0:
		b.WriteString("  no rule matches and the direction is not default-deny: allowed\n")
	}
	fmt.Fprintf(b, "  datapath: %s (%d map entries)\n", decisionString(s.Decision), s.MapEntries)
	if s.HTTP != nil {
		s.HTTP.write(b)
	}
	if s.Decision.Allowed && s.Decision.ProxyPort != 0 && s.HTTP == nil {
		fmt.Fprintf(b, "  redirected to the DNS proxy on port %d: its DNS rules decide each query\n", s.Decision.ProxyPort)
	}
	if d := s.DNS; d != nil {
		if d.Allowed {
			fmt.Fprintf(b, "  DNS proxy: query forwarded: %s\n", d.Reason)
		} else {
			fmt.Fprintf(b, "  DNS proxy: query REFUSED: %s\n", d.Reason)
		}
	}
	verdict := "ALLOWED"
	if !s.Allowed() {
		verdict = "DENIED"
	}
	fmt.Fprintf(b, "  %s verdict: %s\n", s.Direction, verdict)
}

func titleCase(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func (h *HTTPTrace) write(b *strings.Builder) {
	fmt.Fprintf(b, "  redirected to the HTTP proxy (port %d)\n", h.ProxyPort)
	if h.Policy.AllowAll {
		if h.Policy.AllowAllRef != (RuleRef{}) {
			fmt.Fprintf(b, "    every request: %s allows the port without HTTP rules\n", h.Policy.AllowAllRef)
		} else {
			b.WriteString("    every request: the direction is not enforced\n")
		}
	}
	for _, r := range h.Policy.Rules {
		fmt.Fprintf(b, "    HTTP rule %s %s: %s\n", r.Ref.Policy, r.Path, httpRuleString(r.Rule()))
	}
	d := h.Decision
	if d == nil {
		b.WriteString("    (no request traced: requests are decided by these rules, any one allowing)\n")
		return
	}
	switch {
	case d.Allowed && d.Matched != nil:
		fmt.Fprintf(b, "  request ALLOWED by HTTP rule %s %s\n", d.Matched.Ref.Policy, d.Matched.Path)
	case d.Allowed:
		b.WriteString("  request ALLOWED: every request is\n")
	default:
		b.WriteString("  request DENIED (403 Access denied): no HTTP rule matches\n")
		for _, m := range d.Misses {
			fmt.Fprintf(b, "    %s %s: %s failed: %s\n", m.Rule.Ref.Policy, m.Rule.Path, m.Field, m.Reason)
		}
	}
}

func httpRuleString(r HTTPRule) string {
	var parts []string
	for _, f := range []struct{ k, v string }{{"method", r.Method}, {"path", r.Path}, {"host", r.Host}} {
		if f.v != "" {
			parts = append(parts, fmt.Sprintf("%s %q", f.k, f.v))
		}
	}
	for _, h := range r.Headers {
		parts = append(parts, fmt.Sprintf("header %q", h))
	}
	for _, h := range r.HeaderMatches {
		if h.Value != "" {
			parts = append(parts, fmt.Sprintf("header %s = %q", h.Name, h.Value))
		} else {
			parts = append(parts, fmt.Sprintf("header %s present", h.Name))
		}
	}
	if len(parts) == 0 {
		return "any request"
	}
	return strings.Join(parts, ", ")
}
