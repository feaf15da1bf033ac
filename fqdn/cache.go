package fqdn

import (
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
	// Now returns the current time. Nil: time.Now.
	Now func() time.Time
}

func (c Config) validate() error {
	if c.MinTTL < 0 {
		return fmt.Errorf("fqdn config: negative MinTTL %v", c.MinTTL)
	}
	return nil
}

// cache maps names to the addresses DNS answers gave them, each with the
// time its TTL runs out. A later answer extends an address's expiry, never
// shortens it, and does not remove addresses an earlier answer gave: they
// stay until their own TTL runs out, as in Cilium's DNSCache.
type cache struct {
	names map[string]map[netip.Addr]time.Time
	// byAddr maps each address to the names that resolve to it.
	byAddr map[netip.Addr]map[string]struct{}
}

func newCache() cache {
	return cache{names: map[string]map[netip.Addr]time.Time{}, byAddr: map[netip.Addr]map[string]struct{}{}}
}

// update records an answer and returns the addresses that are new for the
// name.
func (c *cache) update(name string, addrs []netip.Addr, expires time.Time) []netip.Addr {
	m := c.names[name]
	if m == nil {
		m = map[netip.Addr]time.Time{}
		c.names[name] = m
	}
	var added []netip.Addr
	for _, a := range addrs {
		old, ok := m[a]
		if !ok {
			added = append(added, a)
			ns := c.byAddr[a]
			if ns == nil {
				ns = map[string]struct{}{}
				c.byAddr[a] = ns
			}
			ns[name] = struct{}{}
		}
		if !ok || expires.After(old) {
			m[a] = expires
		}
	}
	return added
}

// expire removes every (name, address) whose TTL ran out at now and
// returns the addresses that lost a name.
func (c *cache) expire(now time.Time) []netip.Addr {
	var touched []netip.Addr
	for name, m := range c.names {
		for a, exp := range m {
			if exp.After(now) {
				continue
			}
			delete(m, a)
			ns := c.byAddr[a]
			delete(ns, name)
			if len(ns) == 0 {
				delete(c.byAddr, a)
			}
			touched = append(touched, a)
		}
		if len(m) == 0 {
			delete(c.names, name)
		}
	}
	slices.SortFunc(touched, netip.Addr.Compare)
	return slices.Compact(touched)
}

// next returns the earliest expiry in the cache.
func (c *cache) next() (time.Time, bool) {
	var first time.Time
	found := false
	for _, m := range c.names {
		for _, exp := range m {
			if !found || exp.Before(first) {
				first, found = exp, true
			}
		}
	}
	return first, found
}
