package policy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sync"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/fqdn"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// LocalEndpoint is an endpoint of this node whose policy map an [Engine]
// keeps; *datapath.Endpoint implements it. The engine takes everything it
// needs from it, so the caller names an endpoint once: its identity (read
// once, by [Engine.AddEndpoint]; to change it, remove the endpoint and add it
// again) and the map to write. The value itself identifies the endpoint in
// later calls, so it must be comparable (a pointer, typically).
type LocalEndpoint interface {
	// Identity returns the endpoint's security identity.
	Identity() identity.ID
	// ApplyPolicy changes the endpoint's policy map: it writes every entry
	// of upserts and removes every key of deletes, leaving the other keys
	// alone, and leaves the map unchanged when it fails.
	ApplyPolicy(upserts mapstate.State, deletes []mapstate.Key) error
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
	// FQDN, when set, gives the engine the DNS machinery that makes
	// toFQDNs and DNS rules (toPorts[].rules.dns) enforceable: a DNS proxy
	// reports answers with [Engine.ObserveDNS], the engine turns the
	// addresses toFQDNs selectors select into identities in IPCache
	// (allocated by CIDRAllocator; both are then required) and takes them
	// away when the answers' TTL runs out ([Engine.ExpireDNS]). Its
	// MinTTL is Cilium's --tofqdns-min-ttl (default 0: the answer's TTL).
	// Policy.ProxyPorts.DNS, the port of the node's transparent DNS proxy
	// (proxy/dnsproxy, Cilium's --tofqdns-proxy-port), is then required:
	// ports with DNS rules redirect there, so the proxy decides every
	// query. Nil: policies with toFQDNs or DNS rules are rejected as not
	// supported, because nothing would enforce them (and
	// Policy.ProxyPorts.DNS must be 0).
	FQDN *fqdn.Config
}

// Engine is the one way to change policy: it holds the policies and the
// identities they are resolved against, and keeps the policy maps of local
// endpoints in step with both. It compiles each endpoint's policy when the
// endpoint is added, recompiles the endpoints a changed policy selects
// (before or after the change; no other endpoint's policy can change), and
// applies only the difference to each endpoint's map; when identities come
// and go ([Engine.UpdateIdentities], [Engine.WatchIdentities]) it updates
// only the entries of those identities. [Engine.Repository] gives a
// read-only view for tracing and evaluation.
//
// # Every endpoint must be added
//
// The datapath denies all traffic of an endpoint whose policy map is empty.
// An endpoint that no policy selects is not exempt: it must be added too,
// and [Engine.AddEndpoint] writes the allow-all entries that make it
// unrestricted. Add every endpoint as soon as the datapath has created it.
//
// # Identities first
//
// An endpoint's labels are those of its identity, which the engine must
// already know: feed it the allocator's identities with
// [Engine.WatchIdentities] (or [Engine.UpdateIdentities]) and, when the
// watch runs in another goroutine, wait for the endpoint's identity with
// [Engine.WaitForIdentities] before [Engine.AddEndpoint].
//
// An Engine is safe for concurrent use; its operations are serialised.
type Engine struct {
	cfg  EngineConfig
	repo *Repository

	mu     sync.Mutex
	closed bool
	// endpoints are the managed endpoints in the order they were added.
	endpoints []*engineEndpoint
	// learnt is closed and replaced whenever the engine learns or forgets
	// identities, to wake WaitForIdentities.
	learnt chan struct{}
	// cidrs are the prefixes CIDR rules name, with the number of policies
	// that name them and the identity allocated for them.
	cidrs map[netip.Prefix]*cidrIdentity
	// policyCIDRs remembers the prefixes of each policy, for release.
	policyCIDRs map[PolicyID][]netip.Prefix
	// fqdn is the DNS machinery (fqdn.go); nil without EngineConfig.FQDN.
	fqdn *fqdnState
}

type engineEndpoint struct {
	ep      LocalEndpoint
	subject Endpoint
	policy  *EndpointPolicy
}

type cidrIdentity struct {
	refs int
	id   identity.Identity
}

// NewEngine returns an engine with no policies that knows the reserved
// identities.
func NewEngine(cfg EngineConfig) (*Engine, error) {
	repo, err := newRepository(cfg.Policy)
	if err != nil {
		return nil, err
	}
	fs, err := newFQDNState(cfg)
	if err != nil {
		return nil, err
	}
	return &Engine{
		cfg:         cfg,
		repo:        repo,
		learnt:      make(chan struct{}),
		cidrs:       map[netip.Prefix]*cidrIdentity{},
		policyCIDRs: map[PolicyID][]netip.Prefix{},
		fqdn:        fs,
	}, nil
}

// Repository returns a read-only view of the engine's policies and
// identities, for [Repository.Trace], [Repository.Evaluate],
// [Repository.Compile] and listings. It stays current as the engine
// changes.
func (e *Engine) Repository() *Repository { return e.repo }

// AddEndpoint starts managing an endpoint's policy map: it compiles the
// policy of the endpoint's identity and writes all of it with
// ep.ApplyPolicy. The map is expected to be empty. namedPorts are the
// endpoint's named container ports, for ingress rules that name a port.
//
// Every endpoint must be added, including those no policy selects (see
// [Engine]). The identity must be known to the engine: otherwise the error
// wraps [ErrUnknownIdentity] and nothing is written. A nil endpoint, or one
// that is not comparable, wraps [ErrInvalidEndpoint]; one already managed
// wraps [ErrEndpointExists].
func (e *Engine) AddEndpoint(ep LocalEndpoint, namedPorts ...NamedPort) error {
	if err := validEndpoint(ep); err != nil {
		return fmt.Errorf("add endpoint: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nodeplane.ErrClosed
	}
	if e.findLocked(ep) >= 0 {
		return fmt.Errorf("add endpoint %v: %w", ep, ErrEndpointExists)
	}
	id := ep.Identity()
	if err := checkEndpointID(id); err != nil {
		return fmt.Errorf("add endpoint %v: %w", ep, err)
	}
	labels, ok := e.repo.rv.cache.Labels(id)
	if !ok {
		return fmt.Errorf("add endpoint %v: identity %v: %w: give it to the engine (UpdateIdentities, WatchIdentities) and WaitForIdentities first",
			ep, id, ErrUnknownIdentity)
	}
	subject := Endpoint{Identity: id, Labels: labels, NamedPorts: slices.Clone(namedPorts)}
	p := e.repo.Compile(subject)
	if err := ep.ApplyPolicy(p.State(), nil); err != nil {
		return fmt.Errorf("add endpoint %v: write policy map: %w", ep, err)
	}
	e.endpoints = append(e.endpoints, &engineEndpoint{ep: ep, subject: subject, policy: p})
	return nil
}

// validEndpoint rejects what cannot be a managed endpoint: nil, or a value
// that cannot be compared (it identifies the endpoint).
func validEndpoint(ep LocalEndpoint) error {
	if ep == nil {
		return fmt.Errorf("%w: nil", ErrInvalidEndpoint)
	}
	v := reflect.ValueOf(ep)
	if !v.Type().Comparable() {
		return fmt.Errorf("%w: %T is not comparable", ErrInvalidEndpoint, ep)
	}
	if v.Kind() == reflect.Pointer && v.IsNil() {
		return fmt.Errorf("%w: nil %T", ErrInvalidEndpoint, ep)
	}
	return nil
}

// findLocked returns the index of ep in e.endpoints, or -1.
func (e *Engine) findLocked(ep LocalEndpoint) int {
	return slices.IndexFunc(e.endpoints, func(ee *engineEndpoint) bool { return ee.ep == ep })
}

// RemoveEndpoint stops managing an endpoint. Its map is left as it is.
func (e *Engine) RemoveEndpoint(ep LocalEndpoint) error {
	if err := validEndpoint(ep); err != nil {
		return fmt.Errorf("remove endpoint: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	i := e.findLocked(ep)
	if i < 0 {
		return fmt.Errorf("remove endpoint %v: %w", ep, ErrUnknownEndpoint)
	}
	e.endpoints = slices.Delete(e.endpoints, i, i+1)
	return nil
}

// EndpointPolicy returns the current compiled policy of a managed
// endpoint: what its map holds.
func (e *Engine) EndpointPolicy(ep LocalEndpoint) (*EndpointPolicy, bool) {
	if validEndpoint(ep) != nil {
		return nil, false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	i := e.findLocked(ep)
	if i < 0 {
		return nil, false
	}
	return e.endpoints[i].policy, true
}

// AddPolicy adds a policy and updates the maps of the endpoints it
// selects. It fails with [ErrPolicyExists] if a policy of the same kind,
// namespace and name is present, and with [ErrInvalidPolicy] if the policy
// does not validate; nothing changes then.
func (e *Engine) AddPolicy(p Policy) (uint64, error) {
	return e.putPolicy(p, false)
}

// ReplacePolicy adds or replaces a policy and updates the maps of the
// endpoints the old or the new version selects.
func (e *Engine) ReplacePolicy(p Policy) (uint64, error) {
	return e.putPolicy(p, true)
}

// DeletePolicy deletes a policy and updates the maps of the endpoints it
// selected. It fails with [ErrPolicyNotFound] if there is none by that ID.
func (e *Engine) DeletePolicy(id PolicyID) (uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return 0, nodeplane.ErrClosed
	}
	affected := e.selectedLocked(nil, id)
	rev, err := e.repo.delete(id)
	if err != nil {
		return 0, err
	}
	errs := []error{e.recompileLocked(affected)}
	errs = append(errs, e.releaseCIDRsLocked(e.policyCIDRs[id]))
	delete(e.policyCIDRs, id)
	if e.fqdn != nil {
		errs = append(errs, e.releaseFQDNsLocked(e.fqdn.policies[id]))
		delete(e.fqdn.policies, id)
	}
	return rev, errors.Join(errs...)
}

func (e *Engine) putPolicy(p Policy, replace bool) (uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return 0, nodeplane.ErrClosed
	}
	if err := p.validateFor(&e.cfg.Policy); err != nil {
		return 0, err
	}
	// Allocate the identities of the policy's prefixes (and of the
	// addresses its DNS names resolved to) first, so that its CIDR and
	// FQDN selectors find them when the policy is resolved.
	prefixes := policyPrefixes(&p)
	if err := e.acquireCIDRsLocked(prefixes); err != nil {
		return 0, err
	}
	var names []fqdn.Selector
	if e.fqdn != nil {
		names = policyFQDNs(&p)
		if err := e.acquireFQDNsLocked(names); err != nil {
			return 0, errors.Join(err, e.releaseCIDRsLocked(prefixes))
		}
	}
	// The endpoints the policy selects before the change (if it exists)
	// and after it are the only ones whose policy can change.
	affected := e.selectedLocked(nil, p.ID())
	var (
		rev uint64
		err error
	)
	if replace {
		rev, err = e.repo.replace(p)
	} else {
		rev, err = e.repo.add(p)
	}
	if err != nil {
		return 0, errors.Join(err, e.releaseCIDRsLocked(prefixes), e.releaseFQDNsLocked(names))
	}
	affected = e.selectedLocked(affected, p.ID())
	old := e.policyCIDRs[p.ID()]
	e.policyCIDRs[p.ID()] = prefixes
	errs := []error{e.recompileLocked(affected), e.releaseCIDRsLocked(old)}
	if e.fqdn != nil {
		oldNames := e.fqdn.policies[p.ID()]
		e.fqdn.policies[p.ID()] = names
		errs = append(errs, e.releaseFQDNsLocked(oldNames))
	}
	return rev, errors.Join(errs...)
}

// Parse is [Parse] for this engine: it also refuses, with every other
// problem of every document, what the engine cannot enforce (L7 rules
// without their proxy, toFQDNs without EngineConfig.FQDN), which
// [Engine.AddPolicy] would refuse one policy at a time.
func (e *Engine) Parse(data []byte, source string) ([]Policy, error) {
	return parse(data, source, &e.cfg.Policy)
}

// ParseFiles is [ParseFiles] for this engine, as [Engine.Parse] is for
// [Parse].
func (e *Engine) ParseFiles(path string) ([]Policy, error) {
	return parseFiles(path, &e.cfg.Policy)
}

// selectedLocked adds to set the endpoints that a rule of policy id, as
// the repository holds it now, selects as its subject, the way Compile
// selects rules. A policy the repository does not hold selects none.
func (e *Engine) selectedLocked(set map[*engineEndpoint]bool, id PolicyID) map[*engineEndpoint]bool {
	if set == nil {
		set = map[*engineEndpoint]bool{}
	}
	entries := e.repo.policyEntries(id)
	if len(entries) == 0 {
		return set
	}
	for _, ee := range e.endpoints {
		if set[ee] {
			continue
		}
		in, eg, _ := e.repo.selectRules(entries, ee.subject.Identity, ee.subject.Labels)
		if len(in)+len(eg) > 0 {
			set[ee] = true
		}
	}
	return set
}

// recompileLocked recompiles the given endpoints and applies the
// differences.
func (e *Engine) recompileLocked(which map[*engineEndpoint]bool) error {
	var errs []error
	for _, ee := range e.endpoints {
		if !which[ee] {
			continue
		}
		p := e.repo.Compile(ee.subject)
		d := mapstate.Diff(ee.policy.State(), p.State())
		if !d.Empty() {
			if err := ee.ep.ApplyPolicy(d.Upserts, d.Deletes); err != nil {
				errs = append(errs, fmt.Errorf("endpoint %v: %w", ee.ep, err))
				continue
			}
		}
		ee.policy = p
	}
	return errors.Join(errs...)
}

// UpdateIdentities tells the engine that identities were added or removed
// and updates the entries of exactly those identities in every endpoint's
// map before it returns. It is the one way to feed the engine identities;
// [Engine.WatchIdentities] calls it for every change of an allocator.
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
	for _, id := range removed {
		if id.IsReserved() {
			return fmt.Errorf("update identities: remove %v: %w: reserved identities are always known", id, identity.ErrInvalidID)
		}
	}
	e.learnLocked(added, removed)
	ids := slices.Clone(removed)
	for _, a := range added {
		ids = append(ids, a.ID)
	}
	return e.updatePeersLocked(ids)
}

// learnLocked updates the selector cache and wakes WaitForIdentities.
func (e *Engine) learnLocked(added []identity.Identity, removed []identity.ID) {
	if len(added)+len(removed) == 0 {
		return
	}
	e.repo.updateIdentities(added, removed)
	close(e.learnt)
	e.learnt = make(chan struct{})
}

// WaitForIdentities blocks until the engine knows every one of ids, that
// is until [Engine.UpdateIdentities] (or the watch of
// [Engine.WatchIdentities]) has given them to it and has applied their
// entries to every managed endpoint's map, or until ctx is done or the
// engine closed. Call it between allocating an endpoint's identity and
// [Engine.AddEndpoint] when the watch runs in another goroutine.
// Reserved identities are always known. An identity whose entries could
// not be written to some map still counts as known; that failure is the
// error of UpdateIdentities (or of the watch).
func (e *Engine) WaitForIdentities(ctx context.Context, ids ...identity.ID) error {
	for {
		e.mu.Lock()
		closed, learnt := e.closed, e.learnt
		i := slices.IndexFunc(ids, func(id identity.ID) bool {
			_, ok := e.repo.rv.cache.Labels(id)
			return !ok
		})
		e.mu.Unlock()
		switch {
		case i < 0:
			return nil
		case closed:
			return fmt.Errorf("wait for identity %v: %w", ids[i], nodeplane.ErrClosed)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for identity %v: %w", ids[i], context.Cause(ctx))
		case <-learnt:
		}
	}
}

// updatePeersLocked recomputes the given peer identities' entries in the
// map of every endpoint.
func (e *Engine) updatePeersLocked(ids []identity.ID) error {
	var errs []error
	for _, ee := range e.endpoints {
		before := ee.policy.State()
		d := ee.policy.updateIdentities(ids)
		if d.Empty() {
			continue
		}
		if err := ee.ep.ApplyPolicy(d.Upserts, d.Deletes); err != nil {
			// Keep the compiled state equal to the map's.
			ee.policy.mu.Lock()
			ee.policy.state = before
			ee.policy.rebuildIndexLocked()
			ee.policy.mu.Unlock()
			errs = append(errs, fmt.Errorf("endpoint %v: %w", ee.ep, err))
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
	if e.fqdn != nil {
		// Every address learnt from DNS loses its identity.
		var names []fqdn.Selector
		for _, sels := range e.fqdn.policies {
			names = append(names, sels...)
		}
		e.fqdn.policies = nil
		_ = e.releaseFQDNsLocked(names)
	}
	var all []netip.Prefix
	for _, ps := range e.policyCIDRs {
		all = append(all, ps...)
	}
	e.policyCIDRs = nil
	// Releasing the CIDR identities wakes the waiters through learnLocked,
	// which replaces learnt: close the last one after it.
	err := e.releaseCIDRsLocked(all)
	close(e.learnt)
	return err
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
		ls, err := identity.CIDRLabels(pfx, e.repo.cfg.Stack)
		if err == nil {
			var id identity.ID
			if id, _, err = e.cfg.CIDRAllocator.Allocate(ctx, ls); err == nil {
				if e.cfg.IPCache != nil && !e.fqdnHoldsLocked(pfx) {
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
	e.learnLocked(added, nil)
	ids := make([]identity.ID, len(added))
	for i, a := range added {
		ids[i] = a.ID
	}
	return e.updatePeersLocked(ids)
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
		if e.cfg.IPCache != nil && !e.fqdnHoldsLocked(pfx) {
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
		e.learnLocked(nil, gone)
		errs = append(errs, e.updatePeersLocked(gone))
	}
	return errors.Join(errs...)
}
