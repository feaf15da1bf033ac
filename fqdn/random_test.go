package fqdn

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestSelectionsMatchOracle runs random sequences of answers, expiries and
// selector changes. After every step, the addresses each selector selects
// must equal a brute-force oracle's (every remembered answer of a name the
// selector matches, until its expiry), and the Changes returned so far,
// applied in order to an empty map, must give exactly the same picture:
// the incremental updates lose and invent nothing.
func TestSelectionsMatchOracle(t *testing.T) {
	names := []string{"a.example.test", "b.example.test", "x.a.example.test", "other.test", "Example.Test"}
	sels := []Selector{{MatchPattern: "*.example.test"}, {MatchName: "other.test"}, {MatchPattern: "**.example.test"},
		{MatchPattern: "*"}, {MatchName: "example.test"}}
	pool := addrs("192.0.2.1", "192.0.2.2", "192.0.2.3", "2001:db8::1")
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 7))
		c := &clock{t: time.Unix(1000, 0)}
		minTTL := time.Duration(r.IntN(3)) * time.Second
		s, err := New(Config{MinTTL: minTTL, Now: c.now, MaxIPsPerName: 1000})
		if err != nil {
			t.Fatal(err)
		}
		type answer struct {
			name string
			addr netip.Addr
		}
		expiry := map[answer]time.Time{} // the oracle's cache
		refs := map[Selector]int{}
		applied := map[netip.Addr][]Selector{}
		apply := func(chs []Change) {
			for _, ch := range chs {
				if len(ch.Selectors) == 0 {
					delete(applied, ch.Addr)
				} else {
					applied[ch.Addr] = ch.Selectors
				}
			}
		}
		for step := range 200 {
			switch x := r.IntN(10); {
			case x < 4:
				name := names[r.IntN(len(names))]
				var as []netip.Addr
				for _, a := range pool {
					if r.IntN(2) == 0 {
						as = append(as, a)
					}
				}
				ttl := time.Duration(r.IntN(5)) * time.Second
				chs, err := s.Observe(name, as, ttl)
				if err != nil {
					t.Fatal(err)
				}
				apply(chs)
				if eff := max(ttl, minTTL); true {
					if eff <= 0 {
						eff = ZeroTTLLifetime
					}
					for _, a := range as {
						k := answer{Normalize(name), a}
						if e := c.t.Add(eff); e.After(expiry[k]) {
							expiry[k] = e
						}
					}
				}
			case x < 6:
				c.t = c.t.Add(time.Duration(r.IntN(1500)) * time.Millisecond)
				apply(s.Expire())
				for k, e := range expiry {
					if !e.After(c.t) {
						delete(expiry, k)
					}
				}
			case x < 8:
				sel := sels[r.IntN(len(sels))]
				chs, err := s.AddSelector(sel)
				if err != nil {
					t.Fatal(err)
				}
				refs[sel]++
				apply(chs)
			default:
				sel := sels[r.IntN(len(sels))]
				if refs[sel] == 0 {
					continue
				}
				refs[sel]--
				apply(s.RemoveSelector(sel))
			}
			for _, sel := range sels {
				m, _ := Compile(sel)
				var want []netip.Addr
				if refs[sel] > 0 {
					for k := range expiry {
						if m.Matches(k.name) && !slices.Contains(want, k.addr) {
							want = append(want, k.addr)
						}
					}
				}
				slices.SortFunc(want, netip.Addr.Compare)
				if got := s.Selected(sel); !slices.Equal(got, want) {
					t.Fatalf("seed %d step %d: %v selects %v, oracle %v", seed, step, sel, got, want)
				}
				var fromChanges []netip.Addr
				for a, ss := range applied {
					if slices.Contains(ss, sel) {
						fromChanges = append(fromChanges, a)
					}
				}
				slices.SortFunc(fromChanges, netip.Addr.Compare)
				if !slices.Equal(fromChanges, want) {
					t.Fatalf("seed %d step %d: changes say %v selects %v, oracle %v", seed, step, sel, fromChanges, want)
				}
			}
		}
	}
}
