package policy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/fqdn"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
)

// This file is the engine's half of DNS-based policy, in Cilium's model:
// a DNS proxy reports the answers endpoints receive (Engine.ObserveDNS);
// every address that an answer gave to a name some toFQDNs selector
// matches gets a local identity labelled with its cidr labels and one
// fqdn:<name or pattern> label per matching selector, published in the
// ipcache; the selector selects exactly the identities with its label.
// When the answer's TTL runs out (Engine.ExpireDNS) the identity and the
// ipcache entry go, so new connections to the address are denied again,
// while connections the datapath's conntrack already tracks keep flowing.

// selector returns the fqdn package's form of the selector.
func (f FQDNSelector) selector() fqdn.Selector {
	return fqdn.Selector{MatchName: f.MatchName, MatchPattern: f.MatchPattern}
}

// dnsRules are the compiled DNS rules of a port.
type dnsRules struct {
	rules    []DNSRule
	matchers []*fqdn.Matcher
}

// compileDNSRules compiles the DNS rules of a port rule; nil if it has
// none. An empty list is none: Cilium's L4Filter takes the DNS parser,
// and so the redirect to the DNS proxy, only for len(rules.DNS) > 0
// (pkg/policy/l4.go), so "dns: []" allows the port like no rules at all.
func compileDNSRules(r *L7Rules) (*dnsRules, error) {
	if r == nil || len(r.DNS) == 0 {
		return nil, nil
	}
	out := &dnsRules{rules: slices.Clone(r.DNS)}
	for _, d := range r.DNS {
		m, err := fqdn.Compile(fqdn.Selector{MatchName: d.MatchName, MatchPattern: d.MatchPattern})
		if err != nil {
			return nil, err
		}
		out.matchers = append(out.matchers, m)
	}
	return out, nil
}

// match returns the first rule that allows a query name.
func (d *dnsRules) match(name string) (DNSRule, bool) {
	for i, m := range d.matchers {
		if m.Matches(name) {
			return d.rules[i], true
		}
	}
	return DNSRule{}, false
}

func (r DNSRule) String() string {
	if r.MatchName != "" {
		return "matchName " + r.MatchName
	}
	return "matchPattern " + r.MatchPattern
}

// policyFQDNs returns the distinct toFQDNs selectors of a policy.
func policyFQDNs(p *Policy) []fqdn.Selector {
	var out []fqdn.Selector
	for _, r := range p.Rules {
		for _, eg := range r.Egress {
			for _, f := range eg.ToFQDNs {
				if s := f.selector(); !slices.Contains(out, s) {
					out = append(out, s)
				}
			}
		}
	}
	return out
}

// fqdnState is what an engine with the DNS machinery holds.
type fqdnState struct {
	sel *fqdn.Selections
	// ids are the identities the engine gave addresses for their names.
	ids map[netip.Addr]identity.Identity
	// policies remembers the selectors of each policy, for release.
	policies map[PolicyID][]fqdn.Selector
	// observed wakes RunDNSExpiry when an answer arrives, whose TTL may
	// run out before the loop's next wake-up.
	observed chan struct{}
	// retry holds the addresses whose identity or ipcache entry could not
	// be brought in line with their selectors (an allocation or an ipcache
	// write failed): the selections have moved on and will not report
	// them again, so every later change retries them first. Without it a
	// failed delete at expiry would leave the address allowed for ever.
	retry map[netip.Addr]struct{}
}

func newFQDNState(cfg EngineConfig) (*fqdnState, error) {
	if cfg.FQDN == nil {
		if cfg.Policy.ProxyPorts.DNS != 0 {
			return nil, errors.New("engine config: a DNS proxy port (Policy.ProxyPorts.DNS) needs FQDN: the proxy's answers feed toFQDNs")
		}
		return nil, nil
	}
	if cfg.CIDRAllocator == nil || cfg.IPCache == nil {
		return nil, errors.New("engine config: FQDN needs a CIDRAllocator and an IPCache: addresses learnt from DNS become identities in the ipcache")
	}
	if cfg.Policy.ProxyPorts.DNS == 0 {
		return nil, errors.New("engine config: FQDN needs Policy.ProxyPorts.DNS: ports with DNS rules redirect to the DNS proxy")
	}
	sel, err := fqdn.New(*cfg.FQDN)
	if err != nil {
		return nil, fmt.Errorf("engine config: %w", err)
	}
	return &fqdnState{sel: sel, ids: map[netip.Addr]identity.Identity{}, policies: map[PolicyID][]fqdn.Selector{},
		observed: make(chan struct{}, 1), retry: map[netip.Addr]struct{}{}}, nil
}

// ObserveDNS tells the engine that a DNS answer gave name the addresses
// addrs for ttl (the answer's TTL; the engine keeps it at least
// EngineConfig.FQDN.MinTTL, and an answer whose TTL is then zero for
// fqdn.ZeroTTLLifetime). Addresses the name's toFQDNs selectors did
// not select before get identities, ipcache entries and policy-map entries
// before ObserveDNS returns, so a connection the endpoint opens after
// receiving the answer is allowed. It fails with [nodeplane.ErrNotSupported]
// when the engine has no DNS machinery (EngineConfig.FQDN).
func (e *Engine) ObserveDNS(name string, addrs []netip.Addr, ttl time.Duration) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nodeplane.ErrClosed
	}
	if e.fqdn == nil {
		return fmt.Errorf("observe DNS answer: %w: the engine has no EngineConfig.FQDN", nodeplane.ErrNotSupported)
	}
	changes, err := e.fqdn.sel.Observe(name, addrs, ttl)
	if err != nil {
		return fmt.Errorf("observe DNS answer: %w", err)
	}
	select {
	case e.fqdn.observed <- struct{}{}:
	default:
	}
	return e.applyFQDNLocked(changes)
}

// ExpireDNS forgets the DNS answers whose TTL has run out and removes the
// identities of the addresses no selector selects any more, so that new
// connections to them are denied. It returns when the next answer runs
// out (zero when none is remembered): call it again then. Connections the
// datapath already tracks are not cut. An address whose identity or
// ipcache entry could not be changed (the error says which) is retried
// by the next call, and by every later ObserveDNS or policy change.
func (e *Engine) ExpireDNS() (next time.Time, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return time.Time{}, nodeplane.ErrClosed
	}
	if e.fqdn == nil {
		return time.Time{}, fmt.Errorf("expire DNS answers: %w: the engine has no EngineConfig.FQDN", nodeplane.ErrNotSupported)
	}
	err = e.applyFQDNLocked(e.fqdn.sel.Expire())
	next, _ = e.fqdn.sel.NextExpiry()
	return next, err
}

// RunDNSExpiry calls [Engine.ExpireDNS] whenever an answer runs out (and
// at least every interval) until ctx is done or the engine is closed, and
// returns ctx's cause or [nodeplane.ErrClosed]. A pass that fails does not
// stop it: the changes that failed are retried by the next pass, at most
// interval later, and onError (when not nil) is given each failure. Run
// one per engine.
func (e *Engine) RunDNSExpiry(ctx context.Context, interval time.Duration, onError func(error)) error {
	if interval <= 0 {
		interval = time.Second
	}
	if e.fqdn == nil {
		return fmt.Errorf("expire DNS answers: %w: the engine has no EngineConfig.FQDN", nodeplane.ErrNotSupported)
	}
	for {
		next, err := e.ExpireDNS()
		if errors.Is(err, nodeplane.ErrClosed) {
			return err
		}
		if err != nil && onError != nil {
			onError(err)
		}
		wait := interval
		if !next.IsZero() {
			wait = min(wait, max(time.Until(next), time.Millisecond))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return context.Cause(ctx)
		case <-e.fqdn.observed:
			t.Stop()
		case <-t.C:
		}
	}
}

// FQDNSelections returns the addresses a toFQDNs selector selects now.
func (e *Engine) FQDNSelections(s FQDNSelector) []netip.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fqdn == nil {
		return nil
	}
	return e.fqdn.sel.Selected(s.selector())
}

// DNSNames returns the names whose unexpired answers gave an address.
func (e *Engine) DNSNames(a netip.Addr) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fqdn == nil {
		return nil
	}
	return e.fqdn.sel.Names(a)
}

// acquireFQDNsLocked registers a policy's selectors; the addresses they
// select get their identities before the policy is resolved.
func (e *Engine) acquireFQDNsLocked(sels []fqdn.Selector) error {
	if e.fqdn == nil {
		return nil
	}
	var changes []fqdn.Change
	for i, s := range sels {
		ch, err := e.fqdn.sel.AddSelector(s)
		if err != nil {
			return errors.Join(err, e.releaseFQDNsLocked(sels[:i]))
		}
		changes = append(changes, ch...)
	}
	return e.applyFQDNLocked(changes)
}

// releaseFQDNsLocked releases selectors acquireFQDNsLocked registered.
func (e *Engine) releaseFQDNsLocked(sels []fqdn.Selector) error {
	if e.fqdn == nil {
		return nil
	}
	var changes []fqdn.Change
	for _, s := range sels {
		changes = append(changes, e.fqdn.sel.RemoveSelector(s)...)
	}
	return e.applyFQDNLocked(changes)
}

// applyFQDNLocked gives each changed address the identity of its current
// selectors (or takes it away), publishes it in the ipcache and updates
// the policy maps of every endpoint for the identities that came and went.
func (e *Engine) applyFQDNLocked(changes []fqdn.Change) error {
	if len(e.fqdn.retry) > 0 {
		// Earlier failures first, as the selections see them now; a
		// change for the same address among changes wins.
		retries := make([]fqdn.Change, 0, len(e.fqdn.retry)+len(changes))
		for a := range e.fqdn.retry {
			retries = append(retries, fqdn.Change{Addr: a, Selectors: e.fqdn.sel.SelectorsOf(a)})
		}
		slices.SortFunc(retries, func(x, y fqdn.Change) int { return x.Addr.Compare(y.Addr) })
		changes = append(retries, changes...)
	}
	if len(changes) == 0 {
		return nil
	}
	// A later change of the same address wins.
	last := map[netip.Addr]fqdn.Change{}
	var order []netip.Addr
	for _, ch := range changes {
		if _, ok := last[ch.Addr]; !ok {
			order = append(order, ch.Addr)
		}
		last[ch.Addr] = ch
	}
	ctx := context.Background()
	var (
		errs    []error
		added   []identity.Identity
		dropped []identity.ID
	)
	for _, a := range order {
		ch := last[a]
		// Settled unless a write below fails.
		delete(e.fqdn.retry, a)
		pfx := netip.PrefixFrom(a, a.BitLen())
		old, hadOld := e.fqdn.ids[a]
		if len(ch.Selectors) == 0 {
			if !hadOld {
				continue
			}
			// Give the address back to the CIDR identity a toCIDR rule
			// allocated for exactly it, if any; else remove it — unless
			// someone else (an endpoint) has taken the entry meanwhile.
			var err error
			if cur, ok := e.cfg.IPCache.Get(pfx); ok && cur.Identity != old.ID {
				// Not ours any more: leave it.
			} else if c := e.cidrs[pfx]; c != nil {
				err = e.cfg.IPCache.Upsert(pfx, ipcache.Entry{Identity: c.id.ID})
			} else {
				err = e.cfg.IPCache.Delete(pfx)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("fqdn identity of %v: %w", a, err))
				e.fqdn.retry[a] = struct{}{}
				continue
			}
			delete(e.fqdn.ids, a)
			dropped = append(dropped, e.releaseFQDNIdentity(ctx, old.ID)...)
			continue
		}
		ls, err := fqdnLabels(pfx, ch.Selectors, e.repo.cfg.Stack)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if hadOld && old.Labels == ls {
			continue
		}
		if cur, ok := e.cfg.IPCache.Get(pfx); ok && !hadOld && (e.cidrs[pfx] == nil || cur.Identity != e.cidrs[pfx].id.ID) {
			// The address already has an identity that is not a CIDR
			// identity of this engine (an endpoint's, a node's): a DNS
			// answer must not relabel it. Like Cilium's ipcache, where
			// entries from endpoints outrank those generated for
			// DNS-learnt addresses, the existing identity stays.
			errs = append(errs, fmt.Errorf("fqdn identity of %v: %w: the address has identity %v in the ipcache", a, ErrAddressInUse, cur.Identity))
			continue
		}
		id, _, err := e.cfg.CIDRAllocator.Allocate(ctx, ls)
		if err != nil {
			errs = append(errs, fmt.Errorf("fqdn identity of %v: %w", a, err))
			e.fqdn.retry[a] = struct{}{}
			continue
		}
		ident := identity.Identity{ID: id, Labels: ls}
		// Known to the selectors (and the maps) before the ipcache sends
		// the address to it, so no packet meets an identity that no
		// policy knows yet.
		e.learnLocked([]identity.Identity{ident}, nil)
		if err := e.updatePeersLocked([]identity.ID{id}); err != nil {
			errs = append(errs, err)
		}
		if err := e.cfg.IPCache.Upsert(pfx, ipcache.Entry{Identity: id}); err != nil {
			errs = append(errs, fmt.Errorf("fqdn identity of %v: %w", a, err))
			dropped = append(dropped, e.releaseFQDNIdentity(ctx, id)...)
			e.fqdn.retry[a] = struct{}{}
			continue
		}
		e.fqdn.ids[a] = ident
		added = append(added, ident)
		if hadOld {
			dropped = append(dropped, e.releaseFQDNIdentity(ctx, old.ID)...)
		}
	}
	if len(dropped) > 0 {
		e.learnLocked(nil, dropped)
		errs = append(errs, e.updatePeersLocked(dropped))
	}
	return errors.Join(errs...)
}

// releaseFQDNIdentity releases an identity the engine allocated for an
// address and returns it if the allocator let it go.
func (e *Engine) releaseFQDNIdentity(ctx context.Context, id identity.ID) []identity.ID {
	released, err := e.cfg.CIDRAllocator.Release(ctx, id)
	if err != nil || !released {
		return nil
	}
	return []identity.ID{id}
}

// fqdnLabels are the labels of an address learnt from DNS: its cidr labels
// and an fqdn label per selector that selects it.
func fqdnLabels(pfx netip.Prefix, sels []fqdn.Selector, stack nodeplane.StackMode) (identity.Labels, error) {
	ls, err := identity.CIDRLabels(pfx, stack)
	if err != nil {
		return identity.Labels{}, err
	}
	var extra []identity.Label
	for _, s := range sels {
		extra = append(extra, identity.Label{Source: identity.SourceFQDN, Key: s.LabelKey()})
	}
	more, err := identity.NewLabels(extra...)
	if err != nil {
		return identity.Labels{}, fmt.Errorf("fqdn labels of %v: %w", pfx, err)
	}
	return ls.Merge(more), nil
}

// fqdnHoldsLocked reports whether a host prefix has an identity learnt
// from DNS: its ipcache entry is then the FQDN identity, which carries the
// prefix's cidr labels too, so a CIDR rule for exactly that prefix selects
// it and must not replace or remove the entry.
func (e *Engine) fqdnHoldsLocked(pfx netip.Prefix) bool {
	if e.fqdn == nil || pfx.Bits() != pfx.Addr().BitLen() {
		return false
	}
	_, ok := e.fqdn.ids[pfx.Addr()]
	return ok
}
