package fqdn

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// Change says that the set of selectors selecting an address changed, and
// what it is now. An empty Selectors means no selector selects the address
// any more: its identity should go.
type Change struct {
	Addr      netip.Addr
	Selectors []Selector
}

// Selections tracks which addresses each registered selector selects: the
// addresses the DNS answers of [Selections.Observe] gave to names the
// selector matches, until their TTL runs out ([Selections.Expire]). Every
// method that changes something returns the [Change]s it caused, sorted by
// address. A Selections is safe for concurrent use.
type Selections struct {
	now    func() time.Time
	minTTL time.Duration

	mu        sync.Mutex
	cache     cache
	selectors map[Selector]*registered
	// selected caches, per address, the selectors that select it now.
	selected map[netip.Addr][]Selector
	// nameSels caches, per remembered name, the registered selectors that
	// match it, so that recomputing an address matches no pattern.
	nameSels map[string][]Selector
}

type registered struct {
	m    *Matcher
	refs int
}

// New returns a Selections with no selectors and an empty cache.
func New(cfg Config) (*Selections, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	s := &Selections{
		now:       now,
		minTTL:    cfg.MinTTL,
		selectors: map[Selector]*registered{},
		selected:  map[netip.Addr][]Selector{},
		nameSels:  map[string][]Selector{},
	}
	s.cache = newCache(cmp.Or(cfg.MaxIPsPerName, DefaultMaxIPsPerName), cmp.Or(cfg.MaxEntries, DefaultMaxEntries),
		func(name string) { delete(s.nameSels, name) })
	return s, nil
}

// Now returns the current time of the configured clock.
func (s *Selections) Now() time.Time { return s.now() }

// MinTTL returns the configured minimum TTL.
func (s *Selections) MinTTL() time.Duration { return s.minTTL }

// AddSelector registers a selector (counted: each AddSelector needs a
// RemoveSelector) and returns the addresses it now selects as changes.
func (s *Selections) AddSelector(sel Selector) ([]Change, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.selectors[sel]; r != nil {
		r.refs++
		return nil, nil
	}
	m, err := Compile(sel)
	if err != nil {
		return nil, err
	}
	s.selectors[sel] = &registered{m: m, refs: 1}
	var touched []netip.Addr
	for name := range s.cache.names {
		if m.Matches(name) {
			if ns, ok := s.nameSels[name]; ok {
				s.nameSels[name] = insertSelector(ns, sel)
			}
			for a := range s.cache.names[name] {
				touched = append(touched, a)
			}
		}
	}
	return s.recomputeLocked(touched), nil
}

// RemoveSelector drops a reference taken by AddSelector; with the last one
// the selector stops selecting its addresses, which it returns as changes.
func (s *Selections) RemoveSelector(sel Selector) []Change {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.selectors[sel]
	if r == nil {
		return nil
	}
	if r.refs--; r.refs > 0 {
		return nil
	}
	delete(s.selectors, sel)
	for name, ns := range s.nameSels {
		if i, ok := slices.BinarySearchFunc(ns, sel, compareSelectors); ok {
			s.nameSels[name] = slices.Delete(ns, i, i+1)
		}
	}
	var touched []netip.Addr
	for a, sels := range s.selected {
		if slices.Contains(sels, sel) {
			touched = append(touched, a)
		}
	}
	return s.recomputeLocked(touched)
}

// Observe records a DNS answer: name resolved to addrs for ttl (raised to
// the minimum TTL; an answer whose TTL is then zero is remembered for
// [ZeroTTLLifetime]). Invalid addresses are ignored; an empty name is
// [ErrInvalidName]. It returns the addresses whose selectors changed.
func (s *Selections) Observe(name string, addrs []netip.Addr, ttl time.Duration) ([]Change, error) {
	if strings.TrimSpace(name) == "" || len(name) > MaxNameLength+1 {
		return nil, fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	name = Normalize(name)
	ttl = max(ttl, s.minTTL)
	valid := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		if a.IsValid() {
			valid = append(valid, a.Unmap())
		}
	}
	if ttl <= 0 {
		ttl = ZeroTTLLifetime
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	added := s.cache.update(name, valid, s.now().Add(ttl))
	return s.recomputeLocked(added), nil
}

// Expire forgets every answer whose TTL has run out and returns the
// addresses whose selectors changed.
func (s *Selections) Expire() []Change {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.recomputeLocked(s.cache.expire(s.now()))
}

// NextExpiry returns when the earliest remembered answer runs out, for
// scheduling [Selections.Expire]; false if nothing is remembered.
func (s *Selections) NextExpiry() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cache.next()
}

// Selected returns the addresses a selector selects now, sorted.
func (s *Selections) Selected(sel Selector) []netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []netip.Addr
	for a, sels := range s.selected {
		if slices.Contains(sels, sel) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// SelectorsOf returns the selectors that select an address now.
func (s *Selections) SelectorsOf(a netip.Addr) []Selector {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.selected[a.Unmap()])
}

// Names returns the names that resolve to an address now, sorted.
func (s *Selections) Names(a netip.Addr) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for n := range s.cache.byAddr[a.Unmap()] {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// recomputeLocked recomputes the selectors of the given addresses and
// returns those that changed.
func (s *Selections) recomputeLocked(addrs []netip.Addr) []Change {
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)
	var out []Change
	for _, a := range addrs {
		var sels []Selector
		for name := range s.cache.byAddr[a] {
			for _, sel := range s.selectorsOfNameLocked(name) {
				sels = insertSelector(sels, sel)
			}
		}
		old := s.selected[a]
		if slices.Equal(old, sels) {
			continue
		}
		if len(sels) == 0 {
			delete(s.selected, a)
		} else {
			s.selected[a] = sels
		}
		out = append(out, Change{Addr: a, Selectors: slices.Clone(sels)})
	}
	return out
}

// selectorsOfNameLocked returns the registered selectors that match a
// remembered name, sorted, matching them once per name.
func (s *Selections) selectorsOfNameLocked(name string) []Selector {
	if ns, ok := s.nameSels[name]; ok {
		return ns
	}
	var ns []Selector
	for sel, r := range s.selectors {
		if r.m.Matches(name) {
			ns = insertSelector(ns, sel)
		}
	}
	s.nameSels[name] = ns
	return ns
}

// insertSelector adds sel to a sorted list that may hold it already.
func insertSelector(ns []Selector, sel Selector) []Selector {
	i, ok := slices.BinarySearchFunc(ns, sel, compareSelectors)
	if ok {
		return ns
	}
	return slices.Insert(ns, i, sel)
}

func compareSelectors(a, b Selector) int {
	if c := strings.Compare(a.MatchName, b.MatchName); c != 0 {
		return c
	}
	return strings.Compare(a.MatchPattern, b.MatchPattern)
}
