package ipam

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
)

// allocator is what the benchmarks drive: the Pool or the naive baseline.
type allocator interface {
	AllocateNext(owner string) (netip.Addr, error)
	Allocate(netip.Addr, string) error
	Release(netip.Addr) error
}

type poolAllocator struct {
	p *Pool
	f Family
}

func (a poolAllocator) AllocateNext(owner string) (netip.Addr, error) {
	return a.p.AllocateNext(a.f, owner)
}

func (a poolAllocator) Allocate(addr netip.Addr, owner string) error {
	return a.p.Allocate(addr, owner)
}

func (a poolAllocator) Release(addr netip.Addr) error { return a.p.Release(addr) }

// benchOwners are distinct owners, as in real use (one container, one or
// two addresses).
var benchOwners = func() []string {
	o := make([]string, 1<<16)
	for i := range o {
		o[i] = fmt.Sprintf("%012x/eth0", i)
	}
	return o
}()

// churn keeps a pool at a fill level the way a node sees it: pods come
// (AllocateNext) and random pods go (Release).
type churn struct {
	a    allocator
	held []netip.Addr
	rng  *rand.Rand
	next int
}

func (c *churn) allocate(b *testing.B) {
	a, err := c.a.AllocateNext(benchOwners[c.next%len(benchOwners)])
	if err != nil {
		b.Fatal(err)
	}
	c.next++
	c.held = append(c.held, a)
}

func (c *churn) releaseRandom(b *testing.B) netip.Addr {
	i := c.rng.IntN(len(c.held))
	a := c.held[i]
	c.held[i] = c.held[len(c.held)-1]
	c.held = c.held[:len(c.held)-1]
	if err := c.a.Release(a); err != nil {
		b.Fatal(err)
	}
	return a
}

// fill fills the pool completely, then releases random addresses down to
// the given percentage, so that the free addresses are scattered. It fills
// with Allocate, address by address: filling the naive pool with its own
// AllocateNext would take quadratic time.
func (c *churn) fill(b *testing.B, p netip.Prefix, percent int) {
	if percent == 0 {
		return // a fresh pool
	}
	a := p.Addr().Next()
	for range benchSize {
		if err := c.a.Allocate(a, benchOwners[c.next%len(benchOwners)]); err != nil {
			b.Fatal(err)
		}
		c.next++
		c.held = append(c.held, a)
		a = a.Next()
	}
	for len(c.held) > benchSize*percent/100 {
		c.releaseRandom(b)
	}
}

// The address counts: a /16 and a /112 both have 65534 allocatable addresses.
const benchSize = 1<<16 - 2

// batch is how many operations run between timer stops; small enough to
// keep a 99% full pool within 0.1% of its fill level.
const batch = 64

var benchPrefixes = []struct {
	name string
	p    netip.Prefix
	f    Family
}{
	{"16", netip.MustParsePrefix("10.0.0.0/16"), IPv4},
	{"112", netip.MustParsePrefix("fd00::/112"), IPv6},
}

func benchImpls(p netip.Prefix, f Family) []struct {
	name string
	new  func() allocator
} {
	return []struct {
		name string
		new  func() allocator
	}{
		{"sparse", func() allocator {
			pool, err := New(Config{Prefixes: []netip.Prefix{p}})
			if err != nil {
				panic(err)
			}
			return poolAllocator{pool, f}
		}},
		{"naive", func() allocator { return newNaivePool(p) }},
		{"naive-rotating", func() allocator { return newRotatingNaivePool(p) }},
	}
}

// BenchmarkAllocateNext measures AllocateNext on a pool held at 0%, 50% and
// 99% full by random churn, against the naive linear scan.
func BenchmarkAllocateNext(b *testing.B) {
	for _, bp := range benchPrefixes {
		for _, fill := range []int{0, 50, 99} {
			for _, impl := range benchImpls(bp.p, bp.f) {
				b.Run(fmt.Sprintf("prefix=%s/fill=%d%%/impl=%s", bp.name, fill, impl.name), func(b *testing.B) {
					c := &churn{a: impl.new(), rng: rand.New(rand.NewPCG(1, 2))}
					c.fill(b, bp.p, fill)
					b.ReportAllocs()
					b.ResetTimer()
					for done := 0; done < b.N; done += batch {
						n := min(batch, b.N-done)
						for range n {
							c.allocate(b)
						}
						b.StopTimer()
						for range n {
							c.releaseRandom(b)
						}
						b.StartTimer()
					}
				})
			}
		}
	}
}

// BenchmarkRelease measures Release of a random allocated address on a pool
// held at 50% and 99% full.
func BenchmarkRelease(b *testing.B) {
	for _, bp := range benchPrefixes {
		for _, fill := range []int{50, 99} {
			for _, impl := range benchImpls(bp.p, bp.f) {
				b.Run(fmt.Sprintf("prefix=%s/fill=%d%%/impl=%s", bp.name, fill, impl.name), func(b *testing.B) {
					c := &churn{a: impl.new(), rng: rand.New(rand.NewPCG(1, 2))}
					c.fill(b, bp.p, fill)
					b.ReportAllocs()
					b.ResetTimer()
					var released [batch]netip.Addr
					for done := 0; done < b.N; done += batch {
						n := min(batch, b.N-done)
						for i := range n {
							released[i] = c.releaseRandom(b)
						}
						b.StopTimer()
						// Put them back where they were: refilling with the
						// naive AllocateNext would take longer than the run.
						for _, a := range released[:n] {
							if err := c.a.Allocate(a, benchOwners[c.next%len(benchOwners)]); err != nil {
								b.Fatal(err)
							}
							c.next++
							c.held = append(c.held, a)
						}
						b.StartTimer()
					}
				})
			}
		}
	}
}

// BenchmarkBitmap measures the sparse bitmap alone (find the next clear
// offset from a cursor, set it, clear a random set one) at 99% full, for a
// /16's and a /64's worth of offsets: the search cost must not depend on the
// size of the space.
func BenchmarkBitmap(b *testing.B) {
	for _, width := range []uint{16, 64} {
		b.Run(fmt.Sprintf("width=%d/fill=99%%", width), func(b *testing.B) {
			const n = 1 << 16 // populated offsets, at the start of the space
			bm := newSparseBitmap(width)
			rng := rand.New(rand.NewPCG(1, 2))
			held := make([]u128, 0, n)
			for i := range uint64(n) {
				bm.set(u128{lo: i})
				held = append(held, u128{lo: i})
			}
			for range n / 100 {
				i := rng.IntN(len(held))
				bm.clear(held[i])
				held[i] = held[len(held)-1]
				held = held[:len(held)-1]
			}
			cur := u128{}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				off, ok := bm.nextClear(cur)
				if !ok || !off.less(u128{lo: n}) {
					off, _ = bm.nextClear(u128{})
				}
				bm.set(off)
				cur, _ = off.inc()
				i := rng.IntN(len(held))
				bm.clear(held[i])
				held[i] = off
			}
		})
	}
}
