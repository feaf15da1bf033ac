package policy

import (
	"fmt"
	"slices"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// Endpoint is what policy needs to know of a local endpoint: its identity
// and labels (which rules select it) and its named ports (which ports
// ingress rules that name a port mean).
type Endpoint struct {
	Identity identity.ID
	Labels   identity.Labels
	// NamedPorts are the endpoint's named container ports.
	NamedPorts []NamedPort
}

// checkEndpointID accepts what can name a local endpoint: a valid
// identity, either cluster-scoped or reserved:health or reserved:init
// (Cilium's health endpoint, and endpoints whose labels are not known yet).
// Identity 0 means "any peer" in a policy key; the other reserved
// identities name peers or the host and local-scope ones CIDRs.
func checkEndpointID(id identity.ID) error {
	if err := id.Validate(); err != nil {
		return err
	}
	if id.IsLocal() || id.IsReserved() && id != identity.ReservedHealth && id != identity.ReservedInit {
		return fmt.Errorf("identity %v: %w: cannot name an endpoint", id, identity.ErrInvalidID)
	}
	return nil
}

// checkPeerIdentity accepts an identity the engine can be told about: a
// valid ID with labels.
func checkPeerIdentity(ident identity.Identity) error {
	if err := ident.ID.Validate(); err != nil {
		return err
	}
	if ident.Labels.IsEmpty() {
		return fmt.Errorf("identity %v: %w", ident.ID, identity.ErrNoLabels)
	}
	if ls, ok := ident.ID.ReservedLabels(); ok && ls != ident.Labels {
		return fmt.Errorf("identity %v: %w: a reserved identity has the labels %v, not %v", ident.ID, identity.ErrInvalidID, ls, ident.Labels)
	}
	return nil
}

// NamedPort is a named port of an endpoint.
type NamedPort struct {
	Name     string
	Port     uint16
	Protocol nodeplane.Protocol
}

// NamedPortResolver tells which port numbers a peer identity uses for a
// port name: egress rules that name a port mean the destination's port.
type NamedPortResolver interface {
	NamedPorts(peer identity.ID, name string, proto nodeplane.Protocol) []uint16
}

func (ep *Endpoint) namedPort(name string, proto nodeplane.Protocol) []uint16 {
	var out []uint16
	for _, np := range ep.NamedPorts {
		if np.Name == name && np.Protocol == proto && np.Port != 0 {
			out = append(out, np.Port)
		}
	}
	return out
}

// DirectionPolicy summarises an endpoint's policy in one direction.
type DirectionPolicy struct {
	// Enforced is whether rules restrict the direction at all.
	Enforced bool
	// DefaultDeny is whether traffic no rule allows is dropped.
	DefaultDeny bool
	// Rules are the rule items that select the endpoint in this
	// direction, allow and deny, in repository order.
	Rules []RuleRef
	// DefaultDenyRules are the rule items that put the direction in
	// default-deny mode. Empty with DefaultDeny set means the
	// enforcement mode or the endpoint's init label did.
	DefaultDenyRules []RuleRef
	// Reason explains Enforced and DefaultDeny in words.
	Reason string
}

// selectRules returns, for a subject identity, the entries that apply to
// it in each direction and whether each direction is enforced and
// default-deny, following Cilium's computePolicyEnforcementAndRules.
func (r *Repository) selectRules(entries []*entry, subject identity.ID, labels identity.Labels) (ingress, egress []*entry, dirs [2]DirectionPolicy) {
	isHost := subject == identity.ReservedHost
	if isHost && !r.cfg.HostFirewall {
		for d := range dirs {
			dirs[d].Reason = "the host is not subject to policy (host firewall disabled)"
		}
		return nil, nil, dirs
	}
	if r.cfg.Enforcement == EnforcementNever {
		for d := range dirs {
			dirs[d].Reason = "policy enforcement mode is never"
		}
		return nil, nil, dirs
	}
	// The cache's selections answer for an identity it knows with these
	// labels; otherwise match the labels.
	cached, ok := r.rv.cache.Labels(subject)
	useCache := ok && cached == labels
	for _, e := range entries {
		// Node rules select only the host, endpoint rules never select it.
		if e.node != isHost {
			continue
		}
		if useCache && !r.rv.cache.selects(e.subject, subject) || !useCache && !e.subject.cs.matches(labels) {
			continue
		}
		d := mapstate.Egress
		if e.ingress {
			d = mapstate.Ingress
			ingress = append(ingress, e)
		} else {
			egress = append(egress, e)
		}
		dirs[d].Rules = append(dirs[d].Rules, e.ref)
		if e.defaultDeny {
			dirs[d].DefaultDeny = true
			dirs[d].DefaultDenyRules = append(dirs[d].DefaultDenyRules, e.ref)
		}
	}
	// Cilium tests lbls.Has("init"): a label keyed init from any source.
	_, isInit := labels.Get(identity.LabelInit)
	for d := range dirs {
		dp := &dirs[d]
		dp.Enforced = len(dp.Rules) > 0
		switch {
		case r.cfg.Enforcement == EnforcementAlways:
			dp.Enforced, dp.DefaultDeny = true, true
			dp.Reason = "policy enforcement mode is always: default deny"
		case isInit:
			dp.Enforced, dp.DefaultDeny = true, true
			dp.Reason = "the endpoint has reserved:init (labels not known yet): default deny"
		case !dp.Enforced:
			dp.Reason = "no rule selects the endpoint in this direction: everything is allowed"
		case dp.DefaultDeny:
			dp.Reason = fmt.Sprintf("selected by %d rule item(s), %d of them enable default deny", len(dp.Rules), len(dp.DefaultDenyRules))
		default:
			dp.Reason = fmt.Sprintf("selected by %d rule item(s), none enables default deny: what no deny rule denies is allowed", len(dp.Rules))
		}
	}
	return ingress, egress, dirs
}

// filter is one (selector, L4, verdict) triple of an endpoint's policy in
// one direction: what a rule item contributes once its ports are
// expanded.
type filter struct {
	entry *entry
	// sel selects the peers; nil means every peer (identity 0 in the map).
	sel   *selectorRef
	l4    l4Port
	all   bool // every protocol (an item with peers but no ports)
	deny  bool
	dir   mapstate.Direction
	named bool // egress named port: resolved per peer identity
}

// buildFilters expands entries into filters.
func buildFilters(entries []*entry, dir mapstate.Direction) []filter {
	var out []filter
	for _, e := range entries {
		if e.peers == nil {
			continue
		}
		sels := e.peers
		if len(sels) == 0 {
			if !e.l4Given {
				continue
			}
			sels = []*selectorRef{nil}
		}
		for _, s := range sels {
			if s != nil && s.cs.wildcard {
				s = nil
			}
			if e.l3Only() {
				out = append(out, filter{entry: e, sel: s, all: true, deny: e.deny, dir: dir})
				continue
			}
			for _, p := range e.ports {
				out = append(out, filter{entry: e, sel: s, l4: p, deny: e.deny, dir: dir,
					named: p.name != "" && dir == mapstate.Egress})
			}
		}
	}
	return out
}

// keys returns the map keys of a filter for one peer identity (0 for the
// wildcard), resolving named ports.
func (f *filter) keys(peer identity.ID, ep *Endpoint, peers NamedPortResolver) []mapstate.Key {
	base := mapstate.Key{Identity: peer, Direction: f.dir}
	if f.all {
		return []mapstate.Key{base}
	}
	base.Protocol = f.l4.proto
	var ports []mapstate.PortPrefix
	switch {
	case f.l4.name != "":
		var nums []uint16
		if f.dir == mapstate.Ingress {
			nums = ep.namedPort(f.l4.name, f.l4.proto)
		} else if peers != nil && peer != identity.Unknown {
			nums = peers.NamedPorts(peer, f.l4.name, f.l4.proto)
		}
		for _, n := range nums {
			ports = append(ports, mapstate.PortPrefix{Port: n, Bits: 16})
		}
	default:
		ports = mapstate.PortRangePrefixes(f.l4.bounds())
	}
	out := make([]mapstate.Key, 0, len(ports))
	for _, p := range ports {
		k := base
		k.Port, k.PortPrefixLen = p.Port, p.Bits
		if p.Bits == 0 {
			k.Port = 0
		}
		out = append(out, k)
	}
	return out
}

// normalize applies deny precedence among the keys of one identity: a deny
// wins over an allow of the same key, and an allow that a deny of the same
// identity covers is dropped, because the datapath's longest-prefix match
// would otherwise pick the narrower allow. Denies of the wildcard identity
// need no such care: the datapath lets a wildcard deny win over any peer
// allow.
func normalize(m map[mapstate.Key]mapstate.Entry) {
	var denies []mapstate.Key
	for k, e := range m {
		if e.Deny {
			denies = append(denies, k)
		}
	}
	if len(denies) == 0 {
		return
	}
	for k, e := range m {
		if e.Deny {
			continue
		}
		for _, d := range denies {
			if d.Direction == k.Direction && d.Covers(k) {
				delete(m, k)
				break
			}
		}
	}
}

func sortedIDs(m map[identity.ID]struct{}) []identity.ID {
	out := make([]identity.ID, 0, len(m))
	for id := range m {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}
