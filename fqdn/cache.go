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
	// MaxIPsPerName bounds the addresses remembered for one name, as
	// Cilium's --tofqdns-endpoint-max-ip-per-hostname does: beyond it the
	// addresses that would expire first are forgotten. Zero: 1000,
	// Cilium's default. Negative is invalid.
	MaxIPsPerName int
	// Now returns the current time. Nil: time.Now.
	Now func() time.Time
}

// DefaultMaxIPsPerName is Cilium's default --tofqdns-endpoint-max-ip-per-hostname.
const DefaultMaxIPsPerName = 1000

func (c Config) validate() error {
	if c.MinTTL < 0 {
		return fmt.Errorf("fqdn config: negative MinTTL %v", c.MinTTL)
	}
	if c.MaxIPsPerName < 0 {
		return fmt.Errorf("fqdn config: negative MaxIPsPerName %d", c.MaxIPsPerName)
	}
	return nil
}

// cache maps names to the addresses DNS answers gave them, each with the
// time its TTL runs out. A later answer extends an address's expiry, never
// shortens it, and does not remove addresses an earlier answer gave: they
// stay until their own TTL runs out, as in Cilium's DNSCache.
type cache struct {
	maxPerName int
	names      map[string]map[netip.Addr]time.Time
	// byAddr maps each address to the names that resolve to it.
	byAddr map[netip.Addr]map[string]struct{}
}

func newCache(maxPerName int) cache {
	return cache{maxPerName: maxPerName, names: map[string]map[netip.Addr]time.Time{}, byAddr: map[netip.Addr]map[string]struct{}{}}
}

// update records an answer and returns the addresses that are new for the
// name or that it forgot for the name (over maxPerName).
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
	if over := len(m) - c.maxPerName; over > 0 {
		type exp struct {
			a netip.Addr
			t time.Time
		}
		all := make([]exp, 0, len(m))
		for a, t := range m {
			all = append(all, exp{a, t})
		}
		slices.SortFunc(all, func(x, y exp) int {
			if c := x.t.Compare(y.t); c != 0 {
				return c
			}
			return x.a.Compare(y.a)
		})
		for _, e := range all[:over] {
			c.forget(name, e.a)
			added = append(added, e.a)
		}
	}
	return added
}

// forget removes one (name, address).
func (c *cache) forget(name string, a netip.Addr) {
	m := c.names[name]
	delete(m, a)
	if len(m) == 0 {
		delete(c.names, name)
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
	for name, m := range c.names {
		for a, exp := range m {
			if exp.After(now) {
				continue
			}
			c.forget(name, a)
			touched = append(touched, a)
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
