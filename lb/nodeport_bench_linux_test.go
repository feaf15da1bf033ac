package lb

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/nodeplane/nodeplane"
)

// BenchmarkNorthSouthXDP measures the XDP program per packet with
// BPF_PROG_TEST_RUN (the kernel's own timing, one core, a 75-byte TCP SYN
// frame), beside the ceiling: a program that only returns XDP_PASS.
//
//   - batch/…: 100,000 runs per call, for programs that leave the packet
//     alone: xdp-pass and not-a-service (one frontend lookup that misses);
//   - single/…: one run per call, whose fixed cost single/xdp-pass shows:
//     established (a flow conntrack knows: frontend, conntrack and backend
//     lookups, reply-tuple update, rewrite) and new-flow (a new source port
//     and source address every packet: Maglev selection among 1,000
//     backends, M=16381, and two LRU inserts; beyond the LRU's 262,144
//     entries each insert evicts, as in a full table).
func BenchmarkNorthSouthXDP(b *testing.B) {
	ns := newBenchNorthSouth(b, 0)
	fe := Frontend{netip.MustParseAddrPort("10.99.0.1:80"), nodeplane.ProtoTCP}
	if err := ns.Upsert(Service{Frontend: fe, Type: LoadBalancer, Algorithm: AlgorithmMaglev}, benchBackends(1000, 0)); err != nil {
		b.Fatal(err)
	}
	pass, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer pass.Close()
	client := netip.MustParseAddrPort("198.18.0.1:40000")
	syn := testPkt{src: client, dst: fe.Addr, proto: 6}.bytes()
	other := testPkt{src: client, dst: netip.MustParseAddrPort("10.98.0.1:80"), proto: 6}.bytes()

	// batch runs the program 100,000 times per call on the same buffer.
	// The kernel does not restore the packet between runs, so only
	// programs that do not rewrite it can be measured this way.
	batch := func(b *testing.B, prog *ebpf.Program, pkt []byte) {
		var total float64
		for b.Loop() {
			_, d, err := prog.Benchmark(pkt, 100000, nil)
			if err != nil {
				b.Fatal(err)
			}
			total += float64(d.Nanoseconds())
		}
		report(b, total)
	}
	// single runs one packet per call, with a new source port per call
	// if newFlow; a call has a fixed cost of its own, which
	// xdp-pass/single shows.
	single := func(b *testing.B, prog *ebpf.Program, pkt []byte, newFlow bool) {
		pkt = append([]byte{}, pkt...)
		var total float64
		var flow uint32
		for b.Loop() {
			if newFlow {
				// Source port and the low 16 bits of the source
				// address: 2^32 flows before one repeats.
				flow++
				binary.BigEndian.PutUint16(pkt[14+20:], uint16(flow))
				binary.BigEndian.PutUint16(pkt[14+14:], uint16(flow>>16))
			}
			_, d, err := prog.Benchmark(pkt, 1, nil)
			if err != nil {
				b.Fatal(err)
			}
			total += float64(d.Nanoseconds())
		}
		report(b, total)
	}
	b.Run("batch/xdp-pass", func(b *testing.B) { batch(b, pass, syn) })
	b.Run("batch/not-a-service", func(b *testing.B) { batch(b, ns.objs.NpNodeportXdp, other) })
	b.Run("single/xdp-pass", func(b *testing.B) { single(b, pass, syn, false) })
	b.Run("single/not-a-service", func(b *testing.B) { single(b, ns.objs.NpNodeportXdp, other, false) })
	b.Run("single/established", func(b *testing.B) { single(b, ns.objs.NpNodeportXdp, syn, false) })
	b.Run("single/new-flow", func(b *testing.B) { single(b, ns.objs.NpNodeportXdp, syn, true) })
}

func report(b *testing.B, total float64) {
	per := total / float64(b.N)
	b.ReportMetric(per, "ns/pkt")
	b.ReportMetric(1e9/per, "pkt/s")
}

// BenchmarkNorthSouthUpsert1000 measures replacing the backends of a
// 1,000-backend Maglev service (M=16381 and 65521): building the table and
// writing the maps. Each round changes one backend's weight, so the table
// is rebuilt every time.
func BenchmarkNorthSouthUpsert1000(b *testing.B) {
	for _, m := range []uint{16381, 65521} {
		b.Run(fmt.Sprintf("M=%d", m), func(b *testing.B) {
			ns := newBenchNorthSouth(b, m)
			fe := Frontend{netip.MustParseAddrPort("10.99.0.1:80"), nodeplane.ProtoTCP}
			svc := Service{Frontend: fe, Type: LoadBalancer, Algorithm: AlgorithmMaglev}
			i := 0
			for b.Loop() {
				i++
				if err := ns.Upsert(svc, benchBackends(1000, i)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func newBenchNorthSouth(b *testing.B, m uint) *NorthSouth {
	b.Helper()
	ns := newTestNorthSouth(b)
	if m == 0 {
		return ns
	}
	ns.Close()
	ns2, err := NewNorthSouth(NorthSouthConfig{MaglevTableSize: m})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ns2.Close() })
	return ns2
}

func benchBackends(n, round int) []Backend {
	out := make([]Backend, n)
	for i := range out {
		out[i] = Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 50, byte(i >> 8), byte(i)}), 8080), Weight: 100}
	}
	out[round%n].Weight = 50
	return out
}
