package maglev

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/nodeplane/nodeplane"
)

func mustNew(tb testing.TB, cfg Config) *Builder {
	tb.Helper()
	b, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func mustKey(tb testing.TB, addrPort string, proto nodeplane.Protocol) string {
	tb.Helper()
	k, err := BackendKey(netip.MustParseAddrPort(addrPort), proto)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// runLengths renders a table as id(count),… runs.
func runLengths(table []uint32) string {
	var sb strings.Builder
	for i := 0; i < len(table); {
		j := i
		for j < len(table) && table[j] == table[i] {
			j++
		}
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, "%d(%d)", table[i], j-i)
		i = j
	}
	return sb.String()
}

// TestCiliumPublishedTable reproduces the table Cilium's own test suite
// publishes (pkg/maglev TestReproducible): M=251, the default seed, four
// weighted backends 0.0.0.i:i/TCP.
func TestCiliumPublishedTable(t *testing.T) {
	const want = "2(5),3(1),2(3),1(1),2(2),0(1),2(1),3(1),2(1),3(1),2(1),1(1),2(7),1(1),2(14),3(1),2(1)," +
		"1(2),2(12),3(1),2(3),1(1),2(4),3(1),2(8),3(1),2(2),1(1),2(16),1(2),2(3),3(1),2(11),1(2),2(4),3(1),2(3)," +
		"1(1),2(4),3(1),2(1),0(1),1(1),2(8),1(1),2(7),1(1),2(4),3(1),2(1),3(1),2(9),1(2),2(5),1(1),2(7),3(1),2(1)," +
		"3(1),1(1),2(8),1(1),2(4),0(1),2(1),1(1),2(5),3(1),2(3),1(1),2(4),3(1),2(3),1(1),2(12),0(1),3(1),2(3),3(1)," +
		"2(4),3(1),2(2),1(1),2(7)"
	backends := []Backend{
		{Key: mustKey(t, "0.0.0.1:1", nodeplane.ProtoTCP), Weight: 2, ID: 0},
		{Key: mustKey(t, "0.0.0.3:3", nodeplane.ProtoTCP), Weight: 13, ID: 1},
		{Key: mustKey(t, "0.0.0.4:4", nodeplane.ProtoTCP), Weight: 111, ID: 2},
		{Key: mustKey(t, "0.0.0.5:5", nodeplane.ProtoTCP), Weight: 10, ID: 3},
	}
	for _, p := range pacings {
		table, err := newPaced(t, Config{TableSize: 251}, p.budget).Table(backends)
		if err != nil {
			t.Fatal(err)
		}
		if got := runLengths(table); got != want {
			t.Errorf("pacing %s: table\n%s\nwant\n%s", p.name, got, want)
		}
	}
}

func TestNewValidatesConfig(t *testing.T) {
	for _, tt := range []struct {
		cfg     Config
		wantErr error
		inMsg   string
	}{
		{Config{}, nil, ""},
		{Config{TableSize: 251, HashSeed: "AAAAAAAAAAAAAAAA"}, nil, ""},
		{Config{TableSize: 131071}, nil, ""},
		{Config{TableSize: 16383}, ErrTableSize, "16383 is not prime"},
		{Config{TableSize: 16411}, ErrTableSize, "16411 is prime but not supported"},
		{Config{TableSize: 1}, ErrTableSize, "not prime"},
		{Config{TableSize: 262139}, ErrTableSize, "too large"},
		{Config{TableSize: math.MaxUint}, ErrTableSize, "too large"},
		{Config{HashSeed: "not base64!"}, ErrHashSeed, "not standard base64"},
		{Config{HashSeed: "JLfvgnHc2kaSUFa"}, ErrHashSeed, "not standard base64"},
		{Config{HashSeed: "JLfvgnHc2kaSUFaIAA=="}, ErrHashSeed, "13 bytes, want 12"},
		{Config{HashSeed: "JLfvgg=="}, ErrHashSeed, "4 bytes, want 12"},
		// Like Cilium, which decodes with the same decoder, accept line breaks.
		{Config{HashSeed: "JLfvgnHc\r\n2kaSUFaI\n"}, nil, ""},
	} {
		b, err := New(tt.cfg)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("New(%+v): error %v, want %v", tt.cfg, err, tt.wantErr)
			continue
		}
		if err != nil && !strings.Contains(err.Error(), tt.inMsg) {
			t.Errorf("New(%+v): error %q does not say %q", tt.cfg, err, tt.inMsg)
		}
		if (err == nil) != (b != nil) {
			t.Errorf("New(%+v) = %v, %v", tt.cfg, b, err)
		}
	}
	if got := mustNew(t, Config{}).TableSize(); got != DefaultTableSize {
		t.Errorf("default table size %d", got)
	}
	sizes := SupportedTableSizes()
	for _, m := range sizes {
		if !isPrime(m) {
			t.Errorf("supported size %d is not prime", m)
		}
		if got := mustNew(t, Config{TableSize: m}).TableSize(); got != int(m) {
			t.Errorf("TableSize() = %d, want %d", got, m)
		}
	}
	sizes[0] = 7
	if SupportedTableSizes()[0] != 251 {
		t.Error("SupportedTableSizes shares its slice")
	}
}

func TestFillRejectsBadArguments(t *testing.T) {
	b := mustNew(t, Config{TableSize: 251})
	good := []Backend{{Key: "a", ID: 1}, {Key: "b", ID: 2}}
	for _, tt := range []struct {
		name     string
		tableLen int
		backends []Backend
		wantErr  error
	}{
		{"short table", 250, good, ErrTableLength},
		{"long table", 252, good, ErrTableLength},
		{"no backends", 251, nil, ErrNoBackends},
		{"invalid ID", 251, []Backend{{Key: "a", ID: 1}, {Key: "b", ID: InvalidID}}, ErrInvalidID},
	} {
		table := make([]uint32, tt.tableLen)
		for i := range table {
			table[i] = 7
		}
		if err := b.Fill(table, tt.backends); !errors.Is(err, tt.wantErr) {
			t.Errorf("%s: Fill error %v, want %v", tt.name, err, tt.wantErr)
		}
		if slices.ContainsFunc(table, func(id uint32) bool { return id != 7 }) {
			t.Errorf("%s: Fill wrote to the table despite the error", tt.name)
		}
		if tt.tableLen == 251 {
			if got, err := b.Table(tt.backends); !errors.Is(err, tt.wantErr) || got != nil {
				t.Errorf("%s: Table = %v, %v; want nil, %v", tt.name, got, err, tt.wantErr)
			}
		}
	}
	// A failed call leaves the Builder usable.
	want := referenceTable(251, b.seed, good)
	if got, err := b.Table(good); err != nil || !slices.Equal(got, want) {
		t.Fatalf("after errors: %v", err)
	}
}

// randomBackends returns n backends with distinct keys and weights drawn
// by one of several patterns.
func randomBackends(r *rand.Rand, n int) []Backend {
	mode := r.IntN(6)
	out := make([]Backend, n)
	for i := range out {
		var w uint16
		switch mode {
		case 0:
			w = 1
		case 1:
			w = 100
		case 2:
			w = uint16(r.IntN(101))
		case 3:
			w = uint16(r.IntN(65536))
		case 4: // one heavy backend among light ones
			w = uint16(1 + r.IntN(3))
			if i == 0 {
				w = 60000
			}
		case 5:
			w = uint16(r.IntN(2))
		}
		out[i] = Backend{Key: fmt.Sprintf("backend-%d-%x", i, r.Uint32()), ID: r.Uint32N(InvalidID), Weight: w}
	}
	r.Shuffle(n, func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// TestMatchesReference compares the lazy fill, with every pacing, with the
// direct computation on random pools, including pools with duplicate keys
// and more backends than entries.
func TestMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	for _, m := range []uint{251, 509, 1021, 2039, 4093} {
		builders := make([]*Builder, len(pacings))
		for i, p := range pacings {
			builders[i] = newPaced(t, Config{TableSize: m}, p.budget)
		}
		for range 40 {
			backends := randomBackends(r, 1+r.IntN(300))
			if r.IntN(4) == 0 { // duplicate keys with other IDs and weights
				for range 1 + r.IntN(len(backends)) {
					d := backends[r.IntN(len(backends))]
					d.ID, d.Weight = r.Uint32N(1000), uint16(r.IntN(200))
					backends = append(backends, d)
				}
			}
			want := referenceTable(uint64(m), builders[0].seed, backends)
			for i, b := range builders {
				got, err := b.Table(backends)
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(got, want) {
					t.Fatalf("M=%d, %d backends, pacing %s: table differs from the reference", m, len(backends), pacings[i].name)
				}
			}
		}
	}
}

// TestTableIgnoresBackendOrder: the same pool in any order gives the same
// table, as every node must compute it.
func TestTableIgnoresBackendOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 1))
	b := mustNew(t, Config{})
	for range 10 {
		backends := randomBackends(r, 1+r.IntN(200))
		want, err := b.Table(backends)
		if err != nil {
			t.Fatal(err)
		}
		r.Shuffle(len(backends), func(i, j int) { backends[i], backends[j] = backends[j], backends[i] })
		got, err := b.Table(backends)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatal("table depends on the order of the backends")
		}
	}
}

// counts returns how many entries each ID has.
func counts(table []uint32) map[uint32]int {
	c := map[uint32]int{}
	for _, id := range table {
		c[id]++
	}
	return c
}

// TestDisruption: removing one of N backends reassigns its entries to the
// others and moves few entries between the others; adding it back restores
// the table. The tables have at least 130·N entries; Cilium and the Maglev
// paper advise M ≥ 100·N, where more entries move (3% at M=1021, N=10).
func TestDisruption(t *testing.T) {
	for _, tt := range []struct {
		m uint
		n int
	}{
		{1021, 3}, {4093, 10}, {16381, 10}, {16381, 100}, {65521, 10}, {65521, 100}, {131071, 1000},
	} {
		for _, weight := range []uint16{1, 100} {
			b := mustNew(t, Config{TableSize: tt.m})
			backends := benchBackends(t, tt.n, weight)
			before, err := b.Table(backends)
			if err != nil {
				t.Fatal(err)
			}
			for _, gone := range []int{0, tt.n / 2, tt.n - 1} {
				rest := slices.Delete(slices.Clone(backends), gone, gone+1)
				after, err := b.Table(rest)
				if err != nil {
					t.Fatal(err)
				}
				goneID := backends[gone].ID
				changed, moved := 0, 0
				for i := range before {
					switch {
					case after[i] == goneID:
						t.Fatalf("M=%d N=%d: entry %d still selects the removed backend", tt.m, tt.n, i)
					case before[i] == goneID:
						changed++
					case before[i] != after[i]:
						changed++
						moved++
					}
				}
				// The removed backend had 1/N of the table; at most 1.5%
				// of the table moves between the backends that stay.
				share := float64(changed) / float64(tt.m)
				if frac := float64(moved) / float64(tt.m); frac > 0.015 {
					t.Errorf("M=%d N=%d weight %d, removing backend %d: %.2f%% of entries moved between remaining backends (%.2f%% changed, 1/N = %.2f%%)",
						tt.m, tt.n, weight, gone, 100*frac, 100*share, 100/float64(tt.n))
				}
				t.Logf("M=%d N=%d weight %d, removing backend %d: %.3f%% of entries changed, 1/N = %.3f%%", tt.m, tt.n, weight, gone, 100*share, 100/float64(tt.n))

				// Adding the backend back is the reverse change.
				again, err := b.Table(append(rest, backends[gone]))
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Equal(again, before) {
					t.Fatalf("M=%d N=%d: adding the backend back does not restore the table", tt.m, tt.n)
				}
			}
		}
	}
}

// TestDistribution: in an even pool every backend has ⌊M/N⌋ or ⌈M/N⌉
// entries. In a weighted pool, with the table sized as Cilium and the paper
// advise (M ≥ 100·N), every backend with an expected share M·weight/Σweight
// of at least 100 entries is within 3% of it, the table as a whole is within
// 1% (half the sum of the absolute deviations), and a backend of weight 0
// has exactly one entry.
func TestDistribution(t *testing.T) {
	r := rand.New(rand.NewPCG(2, 3))
	for _, m := range []uint{251, 1021, 16381, 65521} {
		b := mustNew(t, Config{TableSize: m})
		for _, n := range []int{1, 2, 3, 10, 100, 250} {
			backends := benchBackends(t, n, 1)
			table, err := b.Table(backends)
			if err != nil {
				t.Fatal(err)
			}
			c := counts(table)
			for _, be := range backends {
				if got, lo := c[be.ID], int(m)/n; got != lo && got != lo+1 {
					t.Errorf("M=%d N=%d even: backend has %d entries, want %d or %d", m, n, got, lo, lo+1)
				}
			}

			for _, weights := range []func() uint16{
				func() uint16 { return uint16(1 + r.IntN(100)) },
				func() uint16 { return uint16(1 + r.IntN(65535)) },
				func() uint16 { return uint16(r.IntN(1 + r.IntN(65536))) }, // many small, some 0
			} {
				var sum uint64
				for i := range backends {
					backends[i].Weight = weights()
					sum += uint64(backends[i].Weight)
				}
				if sum/uint64(n) <= 1 || m < 100*uint(n) {
					continue // weights not in use, or the table too small
				}
				table, err := b.Table(backends)
				if err != nil {
					t.Fatal(err)
				}
				c := counts(table)
				off := 0.0
				for _, be := range backends {
					got := c[be.ID]
					if be.Weight == 0 {
						if got != 1 {
							t.Errorf("M=%d N=%d: backend of weight 0 has %d entries, want 1", m, n, got)
						}
						continue
					}
					want := float64(m) * float64(be.Weight) / float64(sum)
					d := math.Abs(float64(got) - want)
					off += d
					if want >= 100 && d > 0.03*want {
						t.Errorf("M=%d N=%d: weight %d of %d has %d entries, want %.1f ± 3%%", m, n, be.Weight, sum, got, want)
					}
				}
				if off/2 > 0.01*float64(m) {
					t.Errorf("M=%d N=%d: %.0f entries (%.2f%%) off the weights", m, n, off/2, 50*off/float64(m))
				}
			}
		}
	}
}

// TestNoAllocations: Fill allocates nothing once the Builder has seen a pool
// of the size; Table allocates the table only.
func TestNoAllocations(t *testing.T) {
	for _, weight := range []uint16{1, 100} {
		backends := benchBackends(t, 500, weight)
		backends[0].Weight = 60000 // unequal weights take the calendar
		b := mustNew(t, Config{TableSize: 16381})
		table := make([]uint32, b.TableSize())
		if err := b.Fill(table, backends); err != nil {
			t.Fatal(err)
		}
		if n := testing.AllocsPerRun(20, func() { _ = b.Fill(table, backends) }); n != 0 {
			t.Errorf("weight %d: Fill made %v allocations", weight, n)
		}
		if n := testing.AllocsPerRun(20, func() { _, _ = b.Table(backends) }); n != 1 {
			t.Errorf("weight %d: Table made %v allocations, want 1", weight, n)
		}
	}
}

// TestConcurrentUse: one Builder shared by goroutines gives each the right
// table (run with -race).
func TestConcurrentUse(t *testing.T) {
	b := mustNew(t, Config{TableSize: 1021})
	r := rand.New(rand.NewPCG(5, 5))
	pools := make([][]Backend, 8)
	wants := make([][]uint32, len(pools))
	for i := range pools {
		pools[i] = randomBackends(r, 1+r.IntN(100))
		wants[i] = referenceTable(1021, b.seed, pools[i])
	}
	var wg sync.WaitGroup
	for i := range pools {
		wg.Go(func() {
			for range 20 {
				got, err := b.Table(pools[i])
				if err != nil || !slices.Equal(got, wants[i]) {
					t.Errorf("pool %d: wrong table (%v)", i, err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestBackendKey(t *testing.T) {
	for _, tt := range []struct {
		addr  string
		proto nodeplane.Protocol
		want  string
	}{
		{"10.0.0.1:8080", nodeplane.ProtoTCP, "[10.0.0.1:8080/TCP,State:active]"},
		{"0.0.0.1:1", nodeplane.ProtoTCP, "[0.0.0.1:1/TCP,State:active]"},
		{"192.168.1.1:53", nodeplane.ProtoUDP, "[192.168.1.1:53/UDP,State:active]"},
		{"10.0.0.1:0", nodeplane.ProtoSCTP, "[10.0.0.1:0/SCTP,State:active]"},
		{"10.0.0.1:65535", nodeplane.ProtoAny, "[10.0.0.1:65535/ANY,State:active]"},
		{"[fd00::1]:80", nodeplane.ProtoTCP, "[[fd00::1]:80/TCP,State:active]"},
		{"[2001:db8:0:0:1:0:0:1]:443", nodeplane.ProtoTCP, "[[2001:db8::1:0:0:1]:443/TCP,State:active]"},
		{"[::ffff:10.0.0.1]:80", nodeplane.ProtoUDP, "[[::ffff:10.0.0.1]:80/UDP,State:active]"},
	} {
		got, err := BackendKey(netip.MustParseAddrPort(tt.addr), tt.proto)
		if err != nil || got != tt.want {
			t.Errorf("BackendKey(%s, %v) = %q, %v; want %q", tt.addr, tt.proto, got, err, tt.want)
		}
		buf := []byte("prefix")
		if got, err := AppendBackendKey(buf, netip.MustParseAddrPort(tt.addr), tt.proto); err != nil || string(got) != "prefix"+tt.want {
			t.Errorf("AppendBackendKey(%s) = %q, %v", tt.addr, got, err)
		}
	}

	for _, tt := range []struct {
		addr    netip.AddrPort
		proto   nodeplane.Protocol
		wantErr error
	}{
		{netip.AddrPort{}, nodeplane.ProtoTCP, ErrInvalidAddress},
		{netip.AddrPortFrom(netip.MustParseAddr("fe80::1%eth0"), 80), nodeplane.ProtoTCP, ErrInvalidAddress},
		{netip.MustParseAddrPort("10.0.0.1:80"), 1, ErrUnsupportedProtocol},
		{netip.MustParseAddrPort("10.0.0.1:80"), 58, ErrUnsupportedProtocol},
	} {
		if got, err := BackendKey(tt.addr, tt.proto); !errors.Is(err, tt.wantErr) || got != "" {
			t.Errorf("BackendKey(%v, %v) = %q, %v; want %v", tt.addr, tt.proto, got, err, tt.wantErr)
		}
		if got, err := AppendBackendKey([]byte("x"), tt.addr, tt.proto); !errors.Is(err, tt.wantErr) || string(got) != "x" {
			t.Errorf("AppendBackendKey(%v, %v) = %q, %v; want %v and dst unchanged", tt.addr, tt.proto, got, err, tt.wantErr)
		}
	}

	// Cilium's key spelling, independent of nodeplane.Protocol.String.
	for p, want := range map[nodeplane.Protocol]string{nodeplane.ProtoAny: "ANY", nodeplane.ProtoTCP: "TCP", nodeplane.ProtoUDP: "UDP", nodeplane.ProtoSCTP: "SCTP", nodeplane.ProtoICMPv6: ""} {
		if got, ok := keyProtocol(p); got != want || ok != (want != "") {
			t.Errorf("keyProtocol(%d) = %q, %v, want %q", p, got, ok, want)
		}
	}
}
