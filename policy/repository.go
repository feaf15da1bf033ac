package policy

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
)

// EnforcementMode is Cilium's policy enforcement mode.
type EnforcementMode uint8

const (
	// EnforcementDefault: an endpoint enforces policy in a direction once
	// some rule selects it in that direction (Cilium's "default").
	EnforcementDefault EnforcementMode = iota
	// EnforcementAlways: every endpoint is default-deny in both directions.
	EnforcementAlways
	// EnforcementNever: nothing is enforced.
	EnforcementNever
)

func (m EnforcementMode) String() string {
	switch m {
	case EnforcementDefault:
		return "default"
	case EnforcementAlways:
		return "always"
	case EnforcementNever:
		return "never"
	}
	return fmt.Sprintf("EnforcementMode(%d)", uint8(m))
}

// Config configures a [Repository]. The zero value is Cilium's default
// configuration.
type Config struct {
	// ClusterName is the local cluster's name. Peer endpoint selectors of
	// every rule are limited to it unless they select a cluster
	// themselves, and the cluster entity selects endpoints labelled with
	// it. Empty means "default", Cilium's default name.
	ClusterName string
	// AnyCluster stops limiting peer selectors to the local cluster
	// (Cilium's policy-default-local-cluster=false).
	AnyCluster bool
	// Stack is the cluster's IP families. In a [nodeplane.SingleStack]
	// cluster the world outside it is the single reserved:world identity.
	// The zero value is [nodeplane.DualStack], where IPv4 and IPv6
	// destinations outside the cluster are world-ipv4 and world-ipv6 and
	// 0.0.0.0/0 selects only the former. The CIDR allocator must use the
	// same mode.
	Stack nodeplane.StackMode
	// Enforcement is the policy enforcement mode; the zero value is
	// EnforcementDefault.
	Enforcement EnforcementMode
	// HostFirewall makes the host identity subject to policy. Without it,
	// as in Cilium by default, the host is never restricted. Host policies
	// (nodeSelector) are rejected as not supported yet, so no rule selects
	// the host either way.
	HostFirewall bool
	// NamedPorts resolves the named ports of peers, for egress rules that
	// name a port. Nil: such rules select no port (ingress rules use the
	// endpoint's own named ports).
	NamedPorts NamedPortResolver
	// ProxyPorts are the node's L7 proxies. A port rule with HTTP rules is
	// compiled into entries that redirect to ProxyPorts.HTTP; without an
	// HTTP proxy (0, the default) such rules are rejected as not supported
	// (fail closed).
	ProxyPorts ProxyPorts
}

func (c Config) clusterName() string {
	switch {
	case c.AnyCluster:
		return ""
	case c.ClusterName == "":
		return clusterNameDflt
	}
	return c.ClusterName
}

func (c Config) validate() error {
	if c.Enforcement > EnforcementNever {
		return fmt.Errorf("policy config: unknown enforcement mode %d", c.Enforcement)
	}
	if c.ClusterName != "" {
		if strings.ContainsAny(c.ClusterName, ":;,= \t\n") {
			return fmt.Errorf("policy config: invalid cluster name %q", c.ClusterName)
		}
	}
	return nil
}

// Repository holds an [Engine]'s policies and resolves them against
// identities. Callers get it from [Engine.Repository] to read, compile,
// evaluate and trace; it has no method that changes it, so that every
// change goes through the engine and reaches the endpoints' maps. Every
// change bumps its revision. A Repository is safe for concurrent use.
//
// Rules are resolved when they are added: their selectors are compiled
// and entered into the repository's selector cache, which tracks the
// identities each one selects from then on.
type Repository struct {
	cfg Config
	rv  resolver

	mu       sync.RWMutex
	policies map[PolicyID]*storedPolicy
	order    []PolicyID // insertion order, for stable listings
	revision uint64
}

type storedPolicy struct {
	policy  Policy
	entries []*entry
}

// newRepository returns an empty repository at revision 1 that knows the
// reserved identities.
func newRepository(cfg Config) (*Repository, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cache := newSelectorCache()
	cache.updateIdentities(identity.ReservedIdentities(), nil)
	return &Repository{
		cfg:      cfg,
		rv:       resolver{clusterName: cfg.clusterName(), stack: cfg.Stack, cache: cache},
		policies: map[PolicyID]*storedPolicy{},
		revision: 1,
	}, nil
}

// Config returns the repository's configuration.
func (r *Repository) Config() Config { return r.cfg }

// Revision returns the current revision; it grows with every change.
func (r *Repository) Revision() uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.revision
}

// add adds a policy. It fails with [ErrPolicyExists] if a policy of the
// same kind, namespace and name is present, and with [ErrInvalidPolicy] if
// the policy does not validate; the repository is unchanged on error.
func (r *Repository) add(p Policy) (uint64, error) {
	return r.put(p, false)
}

// replace adds a policy or replaces the one of the same kind, namespace
// and name, atomically.
func (r *Repository) replace(p Policy) (uint64, error) {
	return r.put(p, true)
}

func (r *Repository) put(p Policy, replace bool) (uint64, error) {
	p = p.clone()
	if err := p.validateFor(&r.cfg); err != nil {
		return 0, err
	}
	id := p.ID()
	r.mu.RLock()
	_, exists := r.policies[id]
	r.mu.RUnlock()
	if exists && !replace {
		return 0, fmt.Errorf("add %s: %w", id, ErrPolicyExists)
	}
	// Resolve outside the lock: selector compilation and evaluation are the
	// expensive part and touch only the selector cache.
	entries, err := r.rv.resolve(&p)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrInvalidPolicy, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	old, exists := r.policies[id]
	if exists && !replace {
		r.rv.cache.releaseEntries(entries)
		return 0, fmt.Errorf("add %s: %w", id, ErrPolicyExists)
	}
	r.policies[id] = &storedPolicy{policy: p, entries: entries}
	if exists {
		r.rv.cache.releaseEntries(old.entries)
	} else {
		r.order = append(r.order, id)
	}
	r.revision++
	return r.revision, nil
}

// delete removes a policy. It fails with [ErrPolicyNotFound] if there is
// none by that ID.
func (r *Repository) delete(id PolicyID) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, ok := r.policies[id]
	if !ok {
		return 0, fmt.Errorf("delete %s: %w", id, ErrPolicyNotFound)
	}
	delete(r.policies, id)
	r.order = slices.DeleteFunc(r.order, func(x PolicyID) bool { return x == id })
	r.rv.cache.releaseEntries(old.entries)
	r.revision++
	return r.revision, nil
}

// Get returns a copy of a policy.
func (r *Repository) Get(id PolicyID) (Policy, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	sp, ok := r.policies[id]
	if !ok {
		return Policy{}, false
	}
	return sp.policy.clone(), true
}

// Policies returns the IDs of the policies in the order they were added.
func (r *Repository) Policies() []PolicyID {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return slices.Clone(r.order)
}

// updateIdentities tells the repository's selector cache that identities
// were added or removed.
func (r *Repository) updateIdentities(added []identity.Identity, removed []identity.ID) {
	r.rv.cache.updateIdentities(added, removed)
}

// policyEntries returns the resolved entries of one policy, nil if the
// repository does not hold it.
func (r *Repository) policyEntries(id PolicyID) []*entry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if sp, ok := r.policies[id]; ok {
		return sp.entries
	}
	return nil
}

// snapshot returns the entries of every policy and the revision, for a
// consistent computation.
func (r *Repository) snapshot() ([]*entry, uint64) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []*entry
	for _, id := range r.order {
		out = append(out, r.policies[id].entries...)
	}
	return out, r.revision
}

// clone returns a deep enough copy of p that the caller's later changes
// to its slices do not reach the repository.
func (p Policy) clone() Policy {
	out := p
	out.Rules = make([]Rule, len(p.Rules))
	for i, r := range p.Rules {
		out.Rules[i] = r.clone()
	}
	out.rulePaths = slices.Clone(p.rulePaths)
	return out
}

func (r Rule) clone() Rule {
	out := r
	out.EndpointSelector = cloneSelectorPtr(r.EndpointSelector)
	out.NodeSelector = cloneSelectorPtr(r.NodeSelector)
	out.Ingress = cloneSlice(r.Ingress, IngressRule.clone)
	out.IngressDeny = cloneSlice(r.IngressDeny, IngressRule.clone)
	out.Egress = cloneSlice(r.Egress, EgressRule.clone)
	out.EgressDeny = cloneSlice(r.EgressDeny, EgressRule.clone)
	return out
}

func (r IngressRule) clone() IngressRule {
	out := r
	out.FromEndpoints = cloneSlice(r.FromEndpoints, cloneSelector)
	out.FromNodes = cloneSlice(r.FromNodes, cloneSelector)
	out.FromEntities = slices.Clone(r.FromEntities)
	out.FromCIDR = slices.Clone(r.FromCIDR)
	out.FromCIDRSet = cloneSlice(r.FromCIDRSet, CIDRRule.clone)
	out.ToPorts = cloneSlice(r.ToPorts, PortRule.clone)
	out.ICMPs = cloneSlice(r.ICMPs, ICMPRule.clone)
	return out
}

func (r EgressRule) clone() EgressRule {
	out := r
	out.ToEndpoints = cloneSlice(r.ToEndpoints, cloneSelector)
	out.ToNodes = cloneSlice(r.ToNodes, cloneSelector)
	out.ToEntities = slices.Clone(r.ToEntities)
	out.ToCIDR = slices.Clone(r.ToCIDR)
	out.ToCIDRSet = cloneSlice(r.ToCIDRSet, CIDRRule.clone)
	out.ToFQDNs = slices.Clone(r.ToFQDNs)
	out.ToPorts = cloneSlice(r.ToPorts, PortRule.clone)
	out.ICMPs = cloneSlice(r.ICMPs, ICMPRule.clone)
	return out
}

func (r CIDRRule) clone() CIDRRule {
	r.Except = slices.Clone(r.Except)
	return r
}

func (r PortRule) clone() PortRule {
	r.Ports = slices.Clone(r.Ports)
	if r.Rules != nil {
		l7 := *r.Rules
		l7.HTTP = cloneSlice(l7.HTTP, func(h HTTPRule) HTTPRule { h.Headers = slices.Clone(h.Headers); return h })
		l7.DNS = slices.Clone(l7.DNS)
		r.Rules = &l7
	}
	return r
}

func (r ICMPRule) clone() ICMPRule {
	r.Fields = slices.Clone(r.Fields)
	return r
}

func cloneSelectorPtr(s *identity.LabelSelector) *identity.LabelSelector {
	if s == nil {
		return nil
	}
	c := cloneSelector(*s)
	return &c
}

func cloneSelector(s identity.LabelSelector) identity.LabelSelector {
	out := identity.LabelSelector{}
	if s.MatchLabels != nil {
		out.MatchLabels = make(map[string]string, len(s.MatchLabels))
		for k, v := range s.MatchLabels {
			out.MatchLabels[k] = v
		}
	}
	for _, e := range s.MatchExpressions {
		e.Values = slices.Clone(e.Values)
		out.MatchExpressions = append(out.MatchExpressions, e)
	}
	return out
}

// cloneSlice copies a slice element by element, keeping nil and empty
// apart (the difference matters for peer lists).
func cloneSlice[T any](s []T, clone func(T) T) []T {
	if s == nil {
		return nil
	}
	out := make([]T, len(s))
	for i, v := range s {
		out[i] = clone(v)
	}
	return out
}
