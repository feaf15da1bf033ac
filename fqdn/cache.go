package fqdn

import (
	"container/heap"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Config configures a [Selections].
type Config struct {
	// MinTTL is the shortest time an answer is remembered, whatever its own
	// TTL says: Cilium's --tofqdns-min-ttl. Zero (Cilium's default) keeps
	// every answer exactly as long as its TTL. Negative is invalid.
	MinTTL time.Duration
	// MaxIPsPerName bounds the addresses remembered for one name, as
	// Cilium's --tofqdns-endpoint-max-ip-per-hostname does: beyond it the
	// addresses that would expire first are forgotten. Zero: 1000,
	// Cilium's default. Negative is invalid.
	MaxIPsPerName int
	// MaxEntries bounds the (name, address) pairs remembered in all, so
	// that clients resolving ever new names cannot grow the cache (and the
	// work under the policy engine's lock) without bound: beyond it the
	// pairs that would expire first are forgotten, whatever their name.
	// Cilium bounds only the addresses per name; this bound is the SDK's.
	// Zero: 100000. Negative is invalid.
	MaxEntries int
	// Now returns the current time. Nil: time.Now.
	Now func() time.Time
}

// DefaultMaxIPsPerName is Cilium's default --tofqdns-endpoint-max-ip-per-hostname.
const DefaultMaxIPsPerName = 1000

// DefaultMaxEntries is the default Config.MaxEntries.
const DefaultMaxEntries = 100000

// ZeroTTLLifetime is how long an answer whose TTL (after MinTTL) is zero
// is remembered. Cilium learns such an answer like any other (the IPs are
// in the datapath before the client gets the answer) and forgets it at
// its next DNS garbage collection, a one-minute controller; here expiry
// is exact, and a lifetime of zero would race the client's connection, so
// the answer lives for the shortest TTL a record can otherwise carry.
const ZeroTTLLifetime = time.Second

func (c Config) validate() error {
	if c.MinTTL < 0 {
		return fmt.Errorf("fqdn config: negative MinTTL %v", c.MinTTL)
	}
	if c.MaxIPsPerName < 0 {
		return fmt.Errorf("fqdn config: negative MaxIPsPerName %d", c.MaxIPsPerName)
	}
	if c.MaxEntries < 0 {
		return fmt.Errorf("fqdn config: negative MaxEntries %d", c.MaxEntries)
	}
	return nil
}

// cache maps names to the addresses DNS answers gave them, each with the
// time its TTL runs out. A later answer extends an address's expiry, never
// shortens it, and does not remove addresses an earlier answer gave: they
// stay until their own TTL runs out, as in Cilium's DNSCache.
//
// Every operation costs in proportion to what it changes, not to the size
// of the cache: the callers hold the policy engine's lock. Expiries are
// kept in a heap (expire and next look at its top only), and the bounds
// evict the pairs that would expire first.
type cache struct {
	maxPerName, maxEntries int
	names                  map[string]map[netip.Addr]time.Time
	// byAddr maps each address to the names that resolve to it.
	byAddr map[netip.Addr]map[string]struct{}
	// entries counts the (name, address) pairs.
	entries int
	// expiries holds each pair with an expiry it was given, earliest
	// first. An item whose time is no longer the pair's (a later answer
	// extended it, or the pair was forgotten) is stale and skipped.
	expiries expiryHeap
	// nameGone is told of each name that no longer has an address.
	nameGone func(name string)
}

type expiryItem struct {
	t    time.Time
	name string
	addr netip.Addr
}

type expiryHeap []expiryItem

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].t.Before(h[j].t) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiryItem)) }
func (h *expiryHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}

func newCache(maxPerName, maxEntries int, nameGone func(string)) cache {
	return cache{maxPerName: maxPerName, maxEntries: maxEntries, names: map[string]map[netip.Addr]time.Time{},
		byAddr: map[netip.Addr]map[string]struct{}{}, nameGone: nameGone}
}

// current reports whether a heap item is its pair's expiry.
func (c *cache) current(it expiryItem) bool {
	t, ok := c.names[it.name][it.addr]
	return ok && t.Equal(it.t)
}

// update records an answer and returns the addresses that are new for the
// name or that the bounds made it forget (for this or another name).
func (c *cache) update(name string, addrs []netip.Addr, expires time.Time) []netip.Addr {
	m := c.names[name]
	if m == nil {
		m = map[netip.Addr]time.Time{}
		c.names[name] = m
	}
	var touched []netip.Addr
	for _, a := range addrs {
		old, ok := m[a]
		if ok && !expires.After(old) {
			continue
		}
		if !ok {
			touched = append(touched, a)
			ns := c.byAddr[a]
			if ns == nil {
				ns = map[string]struct{}{}
				c.byAddr[a] = ns
			}
			ns[name] = struct{}{}
			c.entries++
		}
		m[a] = expires
		heap.Push(&c.expiries, expiryItem{t: expires, name: name, addr: a})
	}
	if len(m) == 0 {
		// An answer without (valid) addresses leaves no name behind.
		delete(c.names, name)
		return nil
	}
	// Over the name's bound: forget its addresses that would expire first
	// (Cilium's --tofqdns-endpoint-max-ip-per-hostname).
	if over := len(m) - c.maxPerName; over > 0 {
		type exp struct {
			a netip.Addr
			t time.Time
		}
		all := make([]exp, 0, len(m))
		for a, t := range m {
			all = append(all, exp{a, t})
		}
		less := func(x, y exp) int {
			if c := x.t.Compare(y.t); c != 0 {
				return c
			}
			return x.a.Compare(y.a)
		}
		if over == 1 {
			// The common case, an answer with one address more than the
			// bound: one pass, no sort.
			all = []exp{slices.MinFunc(all, less)}
		} else {
			slices.SortFunc(all, less)
		}
		for _, e := range all[:over] {
			c.forget(name, e.a)
			touched = append(touched, e.a)
		}
	}
	// Over the cache's bound: forget the pairs, of any name, that would
	// expire first.
	for c.entries > c.maxEntries {
		it := heap.Pop(&c.expiries).(expiryItem)
		if c.current(it) {
			c.forget(it.name, it.addr)
			touched = append(touched, it.addr)
		}
	}
	c.compact()
	return touched
}

// forget removes one (name, address).
func (c *cache) forget(name string, a netip.Addr) {
	m := c.names[name]
	if _, ok := m[a]; !ok {
		return
	}
	delete(m, a)
	c.entries--
	if len(m) == 0 {
		delete(c.names, name)
		if c.nameGone != nil {
			c.nameGone(name)
		}
	}
	ns := c.byAddr[a]
	delete(ns, name)
	if len(ns) == 0 {
		delete(c.byAddr, a)
	}
}

// expire removes every (name, address) whose TTL ran out at now and
// returns the addresses that lost a name.
func (c *cache) expire(now time.Time) []netip.Addr {
	var touched []netip.Addr
	for len(c.expiries) > 0 && !c.expiries[0].t.After(now) {
		it := heap.Pop(&c.expiries).(expiryItem)
		if c.current(it) {
			c.forget(it.name, it.addr)
			touched = append(touched, it.addr)
		}
	}
	slices.SortFunc(touched, netip.Addr.Compare)
	return slices.Compact(touched)
}

// next returns the earliest expiry in the cache.
func (c *cache) next() (time.Time, bool) {
	for len(c.expiries) > 0 {
		if it := c.expiries[0]; c.current(it) {
			return it.t, true
		}
		heap.Pop(&c.expiries)
	}
	return time.Time{}, false
}

// compact rebuilds the heap without its stale items once they outnumber
// the live ones, so that answers that keep extending the same pairs do
// not grow it without bound.
func (c *cache) compact() {
	if len(c.expiries) <= 2*c.entries+64 {
		return
	}
	h := make(expiryHeap, 0, c.entries)
	for name, m := range c.names {
		for a, t := range m {
			h = append(h, expiryItem{t: t, name: name, addr: a})
		}
	}
	heap.Init(&h)
	c.expiries = h
}
