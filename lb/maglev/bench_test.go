package maglev

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/nodeplane/nodeplane"
)

// benchBackends returns n backends at consecutive IPv4 addresses, port
// 8080, as a pod network would have them.
func benchBackends(tb testing.TB, n int, weight uint16) []Backend {
	tb.Helper()
	out := make([]Backend, n)
	a := netip.MustParseAddr("10.0.0.0")
	for i := range out {
		a = a.Next()
		key, err := BackendKey(netip.AddrPortFrom(a, 8080), nodeplane.ProtoTCP)
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = Backend{Key: key, ID: uint32(i + 1), Weight: weight}
	}
	return out
}

// BenchmarkTable measures building a table with Builder.Fill (lazy
// permutations) beside the direct computation that materialises all N
// permutations first, as Cilium does. Weights: 1 is an even table (and
// Cilium's own benchmark); 100 is Kubernetes' default and takes the
// weighted path with equal weights; mixed gives every tenth backend 1000
// and the others 100. Cilium's own implementation is compared in the same
// run outside this module; see doc/benchmarks.md.
func BenchmarkTable(b *testing.B) {
	for _, m := range []uint{16381, 65521} {
		for _, n := range []int{10, 100, 1000} {
			for _, w := range []string{"1", "100", "mixed"} {
				backends := benchBackends(b, n, 100)
				for i := range backends {
					switch {
					case w == "1":
						backends[i].Weight = 1
					case w == "mixed" && i%10 == 0:
						backends[i].Weight = 1000
					}
				}
				name := fmt.Sprintf("M=%d/N=%d/weight=%s", m, n, w)
				b.Run(name+"/impl=lazy", func(b *testing.B) {
					builder, err := New(Config{TableSize: m})
					if err != nil {
						b.Fatal(err)
					}
					table := make([]uint32, m)
					b.ReportAllocs()
					for b.Loop() {
						if err := builder.Fill(table, backends); err != nil {
							b.Fatal(err)
						}
					}
				})
				b.Run(name+"/impl=materialised", func(b *testing.B) {
					builder, err := New(Config{TableSize: m})
					if err != nil {
						b.Fatal(err)
					}
					b.ReportAllocs()
					for b.Loop() {
						referenceTable(uint64(m), builder.seed, backends)
					}
				})
			}
		}
	}
}
