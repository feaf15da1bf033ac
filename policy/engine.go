package policy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
)

// PolicyMapWriter is where an endpoint's compiled policy goes: the
// datapath's per-endpoint policy map ([datapath.PolicyMap]) implements it.
// Apply must change exactly the given keys, leaving the others alone, and
// must leave the map unchanged when it fails.
type PolicyMapWriter interface {
	Apply(upserts map[datapath.PolicyKey]datapath.PolicyEntry, deletes []datapath.PolicyKey) error
}

// EngineConfig configures an [Engine].
type EngineConfig struct {
	// Policy configures the repository.
	Policy Config
	// CIDRAllocator allocates the local identities of the prefixes that
	// CIDR rules name (typically an [identity.LocalAllocator] or the
	// node's [identity.InProcessAllocator]). Nil: CIDR rules select only
	// CIDR identities that exist for other reasons.
	CIDRAllocator identity.Allocator
	// IPCache receives prefix → identity for those prefixes, so that the
	// datapath maps addresses to them (longest prefix wins, which is how
	// except ranges get their own identity). Nil: not published.
	IPCache *ipcache.IPCache
}

// Engine keeps the policy maps of local endpoints in step with the rules
// and the identities: it compiles each endpoint's policy when the endpoint
// is added, recompiles the endpoints a changed policy selects (before or
// after the change; no other endpoint's policy can change), and applies
// only the difference to each endpoint's map; when identities come and go
// (see
// [Engine.UpdateIdentities] and [Engine.WatchIdentities]) it updates only
// the entries of those identities.
//
// An Engine is safe for concurrent use; its operations are serialised.
type Engine struct {
	cfg  EngineConfig
	repo *Repository

	mu        sync.Mutex
	closed    bool
	endpoints map[datapath.EndpointID]*engineEndpoint
	// cidrs are the prefixes CIDR rules name, with the number of policies
	// that name them and the identity allocated for them.
	cidrs map[netip.Prefix]*cidrIdentity
	// policyCIDRs remembers the prefixes of each policy, for release.
	policyCIDRs map[PolicyID][]netip.Prefix
}

type engineEndpoint struct {
	ep     Endpoint
	w      PolicyMapWriter
	policy *EndpointPolicy
}

type cidrIdentity struct {
	refs int
	id   identity.Identity
}

// NewEngine returns an engine with an empty repository.
func NewEngine(cfg EngineConfig) (*Engine, error) {
	repo, err := NewRepository(cfg.Policy)
	if err != nil {
		return nil, err
	}
	return &Engine{
		cfg:         cfg,
		repo:        repo,
		endpoints:   map[datapath.EndpointID]*engineEndpoint{},
		cidrs:       map[netip.Prefix]*cidrIdentity{},
		policyCIDRs: map[PolicyID][]netip.Prefix{},
	}, nil
}

// Repository returns the engine's repository, for reading and tracing.
// Change policies through the engine, not the repository, so that the
// endpoints' maps follow.
func (e *Engine) Repository() *Repository { return e.repo }

// AddEndpoint starts managing an endpoint's policy map: it compiles the
// endpoint's policy and writes all of it with w. The map is expected to be
// empty; use the same ID to remove the endpoint later.
func (e *Engine) AddEndpoint(id datapath.EndpointID, ep Endpoint, w PolicyMapWriter) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nodeplane.ErrClosed
	}
	if _, ok := e.endpoints[id]; ok {
		return fmt.Errorf("add endpoint %d: %w", id, ErrEndpointExists)
	}
	if err := checkEndpointIdentity(ep.Identity, ep.Labels); err != nil {
		return fmt.Errorf("add endpoint %d: %w", id, err)
	}
	// The endpoint's own identity must be known for peers' rules to
	// select it, and its selections are computed against the cache.
	e.repo.UpdateIdentities([]identity.Identity{{ID: ep.Identity, Labels: ep.Labels}}, nil)
	p := e.repo.Compile(ep)
	if err := w.Apply(p.State(), nil); err != nil {
		return fmt.Errorf("add endpoint %d: write policy map: %w", id, err)
	}
	e.endpoints[id] = &engineEndpoint{ep: ep, w: w, policy: p}
	// Other endpoints may now reach this identity.
	return e.updatePeersLocked([]identity.ID{ep.Identity}, id)
}

// RemoveEndpoint stops managing an endpoint. Its map is left as it is.
func (e *Engine) RemoveEndpoint(id datapath.EndpointID) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.endpoints[id]; !ok {
		return fmt.Errorf("remove endpoint %d: %w", id, ErrUnknownEndpoint)
	}
	delete(e.endpoints, id)
	return nil
}

// EndpointPolicy returns the current compiled policy of an endpoint.
func (e *Engine) EndpointPolicy(id datapath.EndpointID) (*EndpointPolicy, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ee, ok := e.endpoints[id]
	if !ok {
		return nil, false
	}
	return ee.policy, true
}

// AddPolicy adds a policy and updates the maps of the endpoints it
// selects.
func (e *Engine) AddPolicy(p Policy) (uint64, error) {
	return e.putPolicy(p, false)
}

// ReplacePolicy adds or replaces a policy and updates the maps of the
// endpoints the old or the new version selects.
func (e *Engine) ReplacePolicy(p Policy) (uint64, error) {
	return e.putPolicy(p, true)
}

// DeletePolicy deletes a policy and updates the maps of the endpoints it
// selected.
func (e *Engine) DeletePolicy(id PolicyID) (uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return 0, nodeplane.ErrClosed
	}
	affected := e.selectedLocked(nil, id)
	rev, err := e.repo.Delete(id)
	if err != nil {
		return 0, err
	}
	errs := []error{e.recompileLocked(affected)}
	errs = append(errs, e.releaseCIDRsLocked(e.policyCIDRs[id]))
	delete(e.policyCIDRs, id)
	return rev, errors.Join(errs...)
}

func (e *Engine) putPolicy(p Policy, replace bool) (uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return 0, nodeplane.ErrClosed
	}
	if err := p.validate(); err != nil {
		return 0, err
	}
	// Allocate the identities of the policy's prefixes first, so that its
	// CIDR selectors find them when the policy is resolved.
	prefixes := policyPrefixes(&p)
	if err := e.acquireCIDRsLocked(prefixes); err != nil {
		return 0, err
	}
	// The endpoints the policy selects before the change (if it exists)
	// and after it are the only ones whose policy can change.
	affected := e.selectedLocked(nil, p.ID())
	var (
		rev uint64
		err error
	)
	if replace {
		rev, err = e.repo.Replace(p)
	} else {
		rev, err = e.repo.Add(p)
	}
	if err != nil {
		return 0, errors.Join(err, e.releaseCIDRsLocked(prefixes))
	}
	affected = e.selectedLocked(affected, p.ID())
	old := e.policyCIDRs[p.ID()]
	e.policyCIDRs[p.ID()] = prefixes
	errs := []error{e.recompileLocked(affected), e.releaseCIDRsLocked(old)}
	return rev, errors.Join(errs...)
}

// selectedLocked adds to set the endpoints that a rule of policy id, as
// the repository holds it now, selects as its subject, the way Compile
// selects rules. A policy the repository does not hold selects none.
func (e *Engine) selectedLocked(set map[datapath.EndpointID]bool, id PolicyID) map[datapath.EndpointID]bool {
	if set == nil {
		set = map[datapath.EndpointID]bool{}
	}
	entries := e.repo.policyEntries(id)
	if len(entries) == 0 {
		return set
	}
	for epID, ee := range e.endpoints {
		if set[epID] {
			continue
		}
		in, eg, _ := e.repo.selectRules(entries, ee.ep.Identity, ee.ep.Labels)
		if len(in)+len(eg) > 0 {
			set[epID] = true
		}
	}
	return set
}

// recompileLocked recompiles the given endpoints and applies the
// differences.
func (e *Engine) recompileLocked(which map[datapath.EndpointID]bool) error {
	var errs []error
	for _, id := range e.endpointIDsLocked() {
		if !which[id] {
			continue
		}
		ee := e.endpoints[id]
		p := e.repo.Compile(ee.ep)
		d := Diff(ee.policy.State(), p.State())
		if !d.Empty() {
			if err := ee.w.Apply(d.Upserts, d.Deletes); err != nil {
				errs = append(errs, fmt.Errorf("endpoint %d: %w", id, err))
				continue
			}
		}
		ee.policy = p
	}
	return errors.Join(errs...)
}

func (e *Engine) endpointIDsLocked() []datapath.EndpointID {
	ids := make([]datapath.EndpointID, 0, len(e.endpoints))
	for id := range e.endpoints {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// UpdateIdentities tells the engine that identities were added or removed
// and updates the entries of exactly those identities in every endpoint's
// map.
func (e *Engine) UpdateIdentities(added []identity.Identity, removed []identity.ID) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nodeplane.ErrClosed
	}
	for _, a := range added {
		if err := checkPeerIdentity(a); err != nil {
			return fmt.Errorf("update identities: %w", err)
		}
	}
	e.repo.UpdateIdentities(added, removed)
	ids := slices.Clone(removed)
	for _, a := range added {
		ids = append(ids, a.ID)
	}
	return e.updatePeersLocked(ids, 0)
}

// updatePeersLocked recomputes the given peer identities' entries in the
// map of every endpoint except skip.
func (e *Engine) updatePeersLocked(ids []identity.ID, skip datapath.EndpointID) error {
	var errs []error
	for _, id := range e.endpointIDsLocked() {
		if id == skip {
			continue
		}
		ee := e.endpoints[id]
		before := ee.policy.State()
		d := ee.policy.UpdateIdentities(ids)
		if d.Empty() {
			continue
		}
		if err := ee.w.Apply(d.Upserts, d.Deletes); err != nil {
			// Keep the compiled state equal to the map's.
			ee.policy.mu.Lock()
			ee.policy.state = before
			ee.policy.rebuildIndexLocked()
			ee.policy.mu.Unlock()
			errs = append(errs, fmt.Errorf("endpoint %d: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// WatchIdentities follows an allocator's identities until ctx is done or
// the watch fails: it applies the current set, then every addition and
// removal, with [Engine.UpdateIdentities]. Reserved identities are known
// from the start and need no watch.
func (e *Engine) WatchIdentities(ctx context.Context, alloc identity.Allocator) error {
	snapshot, w := alloc.Watch(identity.WatchOptions{})
	defer w.Close()
	if err := e.UpdateIdentities(snapshot, nil); err != nil {
		return err
	}
	for {
		ev, err := w.Next(ctx)
		if err != nil {
			return err
		}
		switch ev.Kind {
		case identity.EventAdded:
			err = e.UpdateIdentities([]identity.Identity{{ID: ev.ID, Labels: ev.Labels}}, nil)
		case identity.EventRemoved:
			err = e.UpdateIdentities(nil, []identity.ID{ev.ID})
		}
		if err != nil {
			return err
		}
	}
}

// Close stops the engine and releases the CIDR identities it allocated.
// The endpoints' maps are left as they are.
func (e *Engine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	var all []netip.Prefix
	for _, ps := range e.policyCIDRs {
		all = append(all, ps...)
	}
	e.policyCIDRs = nil
	return e.releaseCIDRsLocked(all)
}

// policyPrefixes returns the prefixes a policy's CIDR rules name, allow
// ranges and excepts, without zero-length ones (the world identities).
func policyPrefixes(p *Policy) []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	var out []netip.Prefix
	add := func(pfx netip.Prefix) {
		pfx = pfx.Masked()
		if pfx.Bits() == 0 || seen[pfx] {
			return
		}
		seen[pfx] = true
		out = append(out, pfx)
	}
	sets := func(cidrs []netip.Prefix, rules []CIDRRule) {
		for _, c := range cidrs {
			add(c)
		}
		for _, r := range rules {
			add(r.CIDR)
			for _, x := range r.Except {
				add(x)
			}
		}
	}
	for _, r := range p.Rules {
		for _, in := range append(slices.Clone(r.Ingress), r.IngressDeny...) {
			sets(in.FromCIDR, in.FromCIDRSet)
		}
		for _, eg := range append(slices.Clone(r.Egress), r.EgressDeny...) {
			sets(eg.ToCIDR, eg.ToCIDRSet)
		}
	}
	return out
}

// acquireCIDRsLocked takes a reference on the identity of each prefix,
// allocating it and publishing it in the ipcache the first time.
func (e *Engine) acquireCIDRsLocked(prefixes []netip.Prefix) error {
	if e.cfg.CIDRAllocator == nil {
		return nil
	}
	ctx := context.Background()
	var added []identity.Identity
	for i, pfx := range prefixes {
		if c := e.cidrs[pfx]; c != nil {
			c.refs++
			continue
		}
		ls, err := identity.CIDRLabels(pfx, !e.repo.cfg.SingleStack)
		if err == nil {
			var id identity.ID
			if id, _, err = e.cfg.CIDRAllocator.Allocate(ctx, ls); err == nil {
				if e.cfg.IPCache != nil {
					if err = e.cfg.IPCache.Upsert(pfx, ipcache.Entry{Identity: id}); err != nil {
						_, _ = e.cfg.CIDRAllocator.Release(ctx, id)
					}
				}
				if err == nil {
					ident := identity.Identity{ID: id, Labels: ls}
					e.cidrs[pfx] = &cidrIdentity{refs: 1, id: ident}
					added = append(added, ident)
				}
			}
		}
		if err != nil {
			rerr := e.releaseCIDRsLocked(prefixes[:i])
			return errors.Join(fmt.Errorf("identity for %v: %w", pfx, err), rerr)
		}
	}
	// Known at once, whether or not a watch of the allocator follows.
	e.repo.UpdateIdentities(added, nil)
	ids := make([]identity.ID, len(added))
	for i, a := range added {
		ids[i] = a.ID
	}
	return e.updatePeersLocked(ids, 0)
}

// releaseCIDRsLocked drops a reference on each prefix's identity,
// releasing it and its ipcache entry with the last one.
func (e *Engine) releaseCIDRsLocked(prefixes []netip.Prefix) error {
	if e.cfg.CIDRAllocator == nil {
		return nil
	}
	var errs []error
	var gone []identity.ID
	for _, pfx := range prefixes {
		c := e.cidrs[pfx]
		if c == nil {
			continue
		}
		if c.refs--; c.refs > 0 {
			continue
		}
		delete(e.cidrs, pfx)
		if e.cfg.IPCache != nil {
			if err := e.cfg.IPCache.Delete(pfx); err != nil {
				errs = append(errs, err)
			}
		}
		released, err := e.cfg.CIDRAllocator.Release(context.Background(), c.id.ID)
		if err != nil {
			errs = append(errs, err)
		}
		if released {
			gone = append(gone, c.id.ID)
		}
	}
	if len(gone) > 0 {
		e.repo.UpdateIdentities(nil, gone)
		errs = append(errs, e.updatePeersLocked(gone, 0))
	}
	return errors.Join(errs...)
}
