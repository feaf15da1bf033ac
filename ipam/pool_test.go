package ipam

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
)

func mustPool(t testing.TB, cfg Config) *Pool {
	t.Helper()
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func TestNewRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want error
	}{
		{"no prefixes", Config{}, ErrInvalid},
		{"zero prefix", Config{Prefixes: []netip.Prefix{{}}}, ErrInvalid},
		{"host bits", Config{Prefixes: []netip.Prefix{pfx("10.0.0.1/24")}}, ErrInvalid},
		{"4in6", Config{Prefixes: []netip.Prefix{pfx("::ffff:10.0.0.0/120")}}, ErrInvalid},
		{"slash 31", Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/31")}}, ErrInvalid},
		{"slash 32", Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/32")}}, ErrInvalid},
		{"slash 127", Config{Prefixes: []netip.Prefix{pfx("fd00::/127")}}, ErrInvalid},
		{"overlap", Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/16"), pfx("10.0.3.0/24")}}, ErrOverlap},
		{"duplicate", Config{Prefixes: []netip.Prefix{pfx("fd00::/64"), pfx("fd00::/64")}}, ErrOverlap},
		{"reserved outside", Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/24")}, Reserved: []netip.Addr{addr("10.0.1.1")}}, ErrOutOfRange},
		{"reserved other family", Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/24")}, Reserved: []netip.Addr{addr("fd00::1")}}, ErrOutOfRange},
		{"reserved zero", Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/24")}, Reserved: []netip.Addr{{}}}, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if !errors.Is(err, tc.want) {
				t.Fatalf("New: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestAllocateNextSkipsReservedAndExhausts(t *testing.T) {
	p := mustPool(t, Config{
		Prefixes: []netip.Prefix{pfx("10.0.0.0/29")},
		Reserved: []netip.Addr{addr("10.0.0.1"), addr("10.0.0.4")},
	})
	var got []string
	for range 4 {
		a, err := p.AllocateNext(IPv4, "c")
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a.String())
	}
	if want := []string{"10.0.0.2", "10.0.0.3", "10.0.0.5", "10.0.0.6"}; !slices.Equal(got, want) {
		t.Fatalf("allocated %v, want %v", got, want)
	}
	_, err := p.AllocateNext(IPv4, "c")
	var ex *ExhaustedError
	if !errors.Is(err, ErrExhausted) || !errors.As(err, &ex) || ex.Family != IPv4 || !slices.Equal(ex.Prefixes, []netip.Prefix{pfx("10.0.0.0/29")}) {
		t.Fatalf("AllocateNext on a full pool: %v (%#v)", err, ex)
	}
	if p.Free(IPv4) != 0 || p.Used(IPv4) != 4 {
		t.Fatalf("Free %d Used %d, want 0 and 4", p.Free(IPv4), p.Used(IPv4))
	}
}

func TestAllocateNextRotates(t *testing.T) {
	p := mustPool(t, Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/29")}})
	next := func() string {
		t.Helper()
		a, err := p.AllocateNext(IPv4, "c")
		if err != nil {
			t.Fatal(err)
		}
		return a.String()
	}
	if a, b := next(), next(); a != "10.0.0.1" || b != "10.0.0.2" {
		t.Fatalf("first two: %s %s", a, b)
	}
	if err := p.Release(addr("10.0.0.1")); err != nil {
		t.Fatal(err)
	}
	// The released .1 waits until the rest has been offered.
	for _, want := range []string{"10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.1"} {
		if got := next(); got != want {
			t.Fatalf("got %s, want %s", got, want)
		}
	}
}

func TestAllocateNextAcrossPrefixes(t *testing.T) {
	p := mustPool(t, Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/30"), pfx("10.0.1.0/30"), pfx("fd00::/126")}})
	var got []string
	for range 4 {
		a, err := p.AllocateNext(IPv4, "c")
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, a.String())
	}
	if want := []string{"10.0.0.1", "10.0.0.2", "10.0.1.1", "10.0.1.2"}; !slices.Equal(got, want) {
		t.Fatalf("allocated %v, want %v", got, want)
	}
	if _, err := p.AllocateNext(IPv4, "c"); !errors.Is(err, ErrExhausted) {
		t.Fatalf("fifth: %v", err)
	}
	// The cursor wraps from the last prefix to the first.
	if err := p.Release(addr("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	if a, err := p.AllocateNext(IPv4, "c"); err != nil || a != addr("10.0.0.2") {
		t.Fatalf("after wrap: %v %v", a, err)
	}
	if a, err := p.AllocateNext(IPv6, "c"); err != nil || a != addr("fd00::1") {
		t.Fatalf("IPv6: %v %v", a, err)
	}
}

func TestAllocateSpecific(t *testing.T) {
	p := mustPool(t, Config{
		Prefixes: []netip.Prefix{pfx("10.0.0.0/24"), pfx("fd00::/120")},
		Reserved: []netip.Addr{addr("10.0.0.1")},
	})
	if err := p.Allocate(addr("10.0.0.7"), "a"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr  netip.Addr
		owner string
		want  error
	}{
		{addr("10.0.0.7"), "b", ErrAllocated},
		{addr("10.0.0.7"), "a", ErrAllocated},
		{addr("10.0.0.0"), "b", ErrReserved},
		{addr("10.0.0.255"), "b", ErrReserved},
		{addr("10.0.0.1"), "b", ErrReserved},
		{addr("fd00::"), "b", ErrReserved},
		{addr("fd00::ff"), "b", ErrReserved},
		{addr("10.0.1.7"), "b", ErrOutOfRange},
		{addr("::ffff:10.0.0.7"), "b", ErrOutOfRange},
		{addr("fe80::1%eth0"), "b", ErrInvalid},
		{netip.Addr{}, "b", ErrInvalid},
		{addr("10.0.0.8"), "", ErrInvalid},
		{addr("10.0.0.8"), "\xff", ErrInvalid},
		{addr("10.0.0.8"), strings.Repeat("x", maxOwnerLen+1), ErrInvalid},
	} {
		before := p.Snapshot()
		err := p.Allocate(tc.addr, tc.owner)
		if !errors.Is(err, tc.want) {
			t.Errorf("Allocate(%s, %q): %v, want %v", tc.addr, tc.owner, err, tc.want)
		}
		if after := p.Snapshot(); !reflect.DeepEqual(before, after) {
			t.Errorf("Allocate(%s, %q) failed but changed the pool", tc.addr, tc.owner)
		}
	}
	var ae *AllocatedError
	if err := p.Allocate(addr("10.0.0.7"), "b"); !errors.As(err, &ae) || ae.Owner != "a" || ae.Addr != addr("10.0.0.7") {
		t.Fatalf("AllocatedError: %v (%#v)", err, ae)
	}
	if o, ok := p.Owner(addr("10.0.0.7")); !ok || o != "a" {
		t.Fatalf("Owner = %q, %v", o, ok)
	}
	// Allocate does not move the cursor.
	if a, _ := p.AllocateNext(IPv4, "n"); a != addr("10.0.0.2") {
		t.Fatalf("AllocateNext after Allocate: %s", a)
	}
}

func TestRelease(t *testing.T) {
	p := mustPool(t, Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/24")}, Reserved: []netip.Addr{addr("10.0.0.1")}})
	a, _ := p.AllocateNext(IPv4, "a")
	for _, tc := range []struct {
		addr netip.Addr
		want error
	}{
		{addr("10.0.0.3"), ErrNotAllocated},
		{addr("10.0.0.1"), ErrReserved},
		{addr("10.0.0.255"), ErrReserved},
		{addr("10.1.0.3"), ErrOutOfRange},
		{netip.Addr{}, ErrInvalid},
	} {
		before := p.Snapshot()
		if err := p.Release(tc.addr); !errors.Is(err, tc.want) {
			t.Errorf("Release(%s): %v, want %v", tc.addr, err, tc.want)
		}
		if !reflect.DeepEqual(before, p.Snapshot()) {
			t.Errorf("Release(%s) failed but changed the pool", tc.addr)
		}
	}
	if err := p.Release(a); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Owner(a); ok || p.Used(IPv4) != 0 {
		t.Fatalf("%s still owned after Release", a)
	}
	if err := p.Release(a); !errors.Is(err, ErrNotAllocated) {
		t.Fatalf("second Release: %v", err)
	}
}

func TestReleaseOwner(t *testing.T) {
	p := mustPool(t, Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/24"), pfx("fd00::/64")}})
	v4, v6, err := p.AllocateNextDual("ctr/eth0")
	if err != nil {
		t.Fatal(err)
	}
	extra, _ := p.AllocateNext(IPv4, "ctr/eth0")
	other, _ := p.AllocateNext(IPv4, "other")
	if got := p.Addrs("ctr/eth0"); !slices.Equal(got, []netip.Addr{v4, extra, v6}) {
		t.Fatalf("Addrs = %v", got)
	}
	got, err := p.ReleaseOwner("ctr/eth0")
	if err != nil || !slices.Equal(got, []netip.Addr{v4, extra, v6}) {
		t.Fatalf("ReleaseOwner = %v, %v", got, err)
	}
	if got, err := p.ReleaseOwner("ctr/eth0"); err != nil || len(got) != 0 {
		t.Fatalf("second ReleaseOwner = %v, %v", got, err)
	}
	if o, _ := p.Owner(other); o != "other" {
		t.Fatalf("ReleaseOwner touched another owner's address")
	}
	if p.Used(IPv4) != 1 || p.Used(IPv6) != 0 {
		t.Fatalf("Used = %d/%d", p.Used(IPv4), p.Used(IPv6))
	}
}

func TestAllocateNextDualIsAllOrNothing(t *testing.T) {
	p := mustPool(t, Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/24"), pfx("fd00::/126")}})
	for i := range 2 {
		if _, _, err := p.AllocateNextDual(fmt.Sprint("c", i)); err != nil {
			t.Fatal(err)
		}
	}
	before := p.Snapshot()
	_, _, err := p.AllocateNextDual("c2")
	var ex *ExhaustedError
	if !errors.As(err, &ex) || ex.Family != IPv6 {
		t.Fatalf("third dual allocation: %v", err)
	}
	if !reflect.DeepEqual(before, p.Snapshot()) {
		t.Fatalf("failed dual allocation kept its IPv4 address")
	}
	if a, _ := p.AllocateNext(IPv4, "c2"); a != addr("10.0.0.3") {
		t.Fatalf("IPv4 cursor moved by the failed dual allocation: got %s", a)
	}

	single := mustPool(t, Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/24")}})
	if _, _, err := single.AllocateNextDual("c"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("dual on IPv4-only pool: %v", err)
	}
	if _, err := single.AllocateNext(IPv6, "c"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("IPv6 on IPv4-only pool: %v", err)
	}
	if _, err := single.AllocateNext(Family(5), "c"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad family: %v", err)
	}
	if single.Used(IPv4) != 0 {
		t.Fatalf("failed calls allocated")
	}
}

func TestUsedAndFree(t *testing.T) {
	for _, tc := range []struct {
		prefixes []string
		reserved []string
		f        Family
		free     uint64
	}{
		{[]string{"10.0.0.0/24"}, nil, IPv4, 254},
		{[]string{"10.0.0.0/24"}, []string{"10.0.0.1", "10.0.0.0"}, IPv4, 253},
		{[]string{"10.0.0.0/30", "10.0.0.8/29"}, nil, IPv4, 2 + 6},
		{[]string{"10.0.0.0/8"}, nil, IPv4, 1<<24 - 2},
		{[]string{"fd00::/112"}, nil, IPv6, 1<<16 - 2},
		{[]string{"fd00::/64"}, nil, IPv6, math.MaxUint64 - 1},
		{[]string{"fd00::/64", "fd01::/64"}, nil, IPv6, math.MaxUint64},
		{[]string{"::/0"}, nil, IPv6, math.MaxUint64},
		{[]string{"fd00::/64"}, nil, IPv4, 0},
	} {
		cfg := Config{}
		for _, s := range tc.prefixes {
			cfg.Prefixes = append(cfg.Prefixes, pfx(s))
		}
		for _, s := range tc.reserved {
			cfg.Reserved = append(cfg.Reserved, addr(s))
		}
		p := mustPool(t, cfg)
		if got := p.Free(tc.f); got != tc.free {
			t.Errorf("%v %v: Free(%s) = %d, want %d", tc.prefixes, tc.reserved, tc.f, got, tc.free)
		}
		if tc.free == 0 {
			continue
		}
		if _, err := p.AllocateNext(tc.f, "x"); err != nil {
			t.Fatal(err)
		}
		want := tc.free - 1
		if tc.free == math.MaxUint64 && len(tc.prefixes) > 1 || tc.prefixes[0] == "::/0" {
			want = math.MaxUint64 // still more than a uint64 holds
		}
		if got := p.Free(tc.f); got != want || p.Used(tc.f) != 1 {
			t.Errorf("%v: after one allocation Free = %d, Used = %d; want %d, 1", tc.prefixes, got, p.Used(tc.f), want)
		}
	}
}

func TestAddPrefix(t *testing.T) {
	p := mustPool(t, Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/30")}})
	p.AllocateNext(IPv4, "a")
	p.AllocateNext(IPv4, "b")
	if _, err := p.AllocateNext(IPv4, "c"); !errors.Is(err, ErrExhausted) {
		t.Fatal(err)
	}
	if err := p.AddPrefix(pfx("10.0.0.0/24")); !errors.Is(err, ErrOverlap) {
		t.Fatalf("overlapping AddPrefix: %v", err)
	}
	if err := p.AddPrefix(pfx("10.0.1.0/30")); err != nil {
		t.Fatal(err)
	}
	if a, err := p.AllocateNext(IPv4, "c"); err != nil || a != addr("10.0.1.1") {
		t.Fatalf("after AddPrefix: %s %v", a, err)
	}
	if err := p.AddPrefix(pfx("fd00::/64")); err != nil {
		t.Fatal(err)
	}
	if got := p.Prefixes(); !slices.Equal(got, []netip.Prefix{pfx("10.0.0.0/30"), pfx("10.0.1.0/30"), pfx("fd00::/64")}) {
		t.Fatalf("Prefixes = %v", got)
	}
}

func TestRestore(t *testing.T) {
	cfg := Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/24"), pfx("fd00::/64")}, Reserved: []netip.Addr{addr("10.0.0.1")}}
	src := mustPool(t, cfg)
	for i := range 5 {
		if _, _, err := src.AllocateNextDual(fmt.Sprint("c", i)); err != nil {
			t.Fatal(err)
		}
	}
	src.Release(addr("10.0.0.3"))
	snap := src.Snapshot()

	dst := mustPool(t, cfg)
	if err := dst.Restore(snap); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(dst.Snapshot(), snap) {
		t.Fatalf("restored %+v, want %+v", dst.Snapshot(), snap)
	}
	// The cursor came along: both pools hand out the same next address.
	a1, _ := src.AllocateNext(IPv4, "n")
	a2, _ := dst.AllocateNext(IPv4, "n")
	if a1 != a2 || a1 != addr("10.0.0.7") {
		t.Fatalf("next after restore: %s and %s, want 10.0.0.7", a1, a2)
	}
	if err := dst.Restore(snap); err != nil {
		t.Fatalf("restoring twice: %v", err)
	}

	for _, tc := range []struct {
		name string
		al   []Allocation
		want error
	}{
		{"outside", []Allocation{{addr("10.9.0.5"), "x"}}, ErrOutOfRange},
		{"reserved", []Allocation{{addr("10.0.0.1"), "x"}}, ErrReserved},
		{"broadcast", []Allocation{{addr("10.0.0.255"), "x"}}, ErrReserved},
		{"other owner", []Allocation{{addr("10.0.0.2"), "x"}}, ErrAllocated},
		{"twice", []Allocation{{addr("10.0.0.20"), "x"}, {addr("10.0.0.20"), "y"}}, ErrAllocated},
		{"empty owner", []Allocation{{addr("10.0.0.20"), ""}}, ErrInvalid},
		{"zero addr", []Allocation{{netip.Addr{}, "x"}}, ErrInvalid},
		// All or nothing: the valid first entry is not kept.
		{"partial", []Allocation{{addr("10.0.0.30"), "x"}, {addr("10.9.0.5"), "x"}}, ErrOutOfRange},
	} {
		fresh := mustPool(t, cfg)
		fresh.Allocate(addr("10.0.0.2"), "c0")
		before := fresh.Snapshot()
		if err := fresh.Restore(Snapshot{Allocations: tc.al}); !errors.Is(err, tc.want) {
			t.Errorf("%s: Restore: %v, want %v", tc.name, err, tc.want)
		}
		if !reflect.DeepEqual(before, fresh.Snapshot()) {
			t.Errorf("%s: failed Restore changed the pool", tc.name)
		}
	}
}

func TestPoolMemoryIsSparse(t *testing.T) {
	// A dense bitmap of a /8 alone would take 2 MiB; of a /64, 2^61 bytes.
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	p := mustPool(t, Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/8"), pfx("fd00::/64")}})
	for i := range 1000 {
		if _, _, err := p.AllocateNextDual(fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("a /8 + /64 pool with 1000 dual-stack allocations holds %d KiB", grew>>10)
	if grew > 1<<20 {
		t.Fatalf("pool holds %d bytes, want well under 1 MiB", grew)
	}
	runtime.KeepAlive(p)
}

// TestConcurrentAllocate runs 32 goroutines against one pool, each
// allocating and releasing; no address may ever have two holders.
func TestConcurrentAllocate(t *testing.T) {
	// Small prefixes, so that the cursors wrap around many times.
	p := mustPool(t, Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/22"), pfx("fd00::/118")}})
	const workers, rounds = 32, 1000
	var (
		mu      sync.Mutex
		holders = map[netip.Addr]string{}
		wg      sync.WaitGroup
	)
	claim := func(a netip.Addr, owner string) {
		mu.Lock()
		defer mu.Unlock()
		if h, ok := holders[a]; ok {
			t.Errorf("%s handed to %s while %s holds it", a, owner, h)
		}
		holders[a] = owner
	}
	unclaim := func(a netip.Addr) {
		mu.Lock()
		defer mu.Unlock()
		delete(holders, a)
	}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []netip.Addr
			for r := range rounds {
				owner := fmt.Sprintf("w%d/r%d", w, r)
				switch {
				case len(mine) >= 8:
					// Release the oldest address; unclaim first, since the
					// moment Release returns another worker may get it.
					a := mine[0]
					mine = mine[1:]
					unclaim(a)
					if err := p.Release(a); err != nil {
						t.Error(err)
						return
					}
				case r%2 == 0:
					a, err := p.AllocateNext(IPv4, owner)
					if err != nil {
						t.Error(err)
						return
					}
					claim(a, owner)
					mine = append(mine, a)
				default:
					v4, v6, err := p.AllocateNextDual(owner)
					if err != nil {
						t.Error(err)
						return
					}
					claim(v4, owner)
					claim(v6, owner)
					mine = append(mine, v4, v6)
				}
			}
		}()
	}
	wg.Wait()
	snap := p.Snapshot()
	if len(snap.Allocations) != len(holders) {
		t.Fatalf("pool holds %d addresses, workers hold %d", len(snap.Allocations), len(holders))
	}
	for _, al := range snap.Allocations {
		if holders[al.Addr] != al.Owner {
			t.Fatalf("%s: pool says %q, worker %q", al.Addr, al.Owner, holders[al.Addr])
		}
	}
}
