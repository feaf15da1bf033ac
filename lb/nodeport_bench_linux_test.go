package lb

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/testutils"
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

// BenchmarkNorthSouthConnect measures the latency of a TCP connect()
// (SYN, SYN-ACK, then a reset) from a client namespace through the node
// namespace to a backend namespace, for a VIP balanced:
//
//   - direct: no VIP, to the backend address (the node only routes);
//   - xdp-native: by NorthSouth on the client's interface, native XDP;
//   - xdp-generic: the same, generic XDP;
//   - tc: the same, tc ingress (the fallback mode);
//   - iptables: by kube-proxy-style rules in the node's nat PREROUTING
//     (one service; DNAT and conntrack's reverse translation);
//   - ipvs: by an IPVS virtual service in NAT mode, as kube-proxy's IPVS
//     mode sets it up (see setupIPVSService).
//
// Each client namespace has its own interface on the node, so the variants
// do not see each other's programs or rules (but the node's netfilter
// hooks, conntrack's and IPVS's, see every variant's packets). The
// sub-benchmark "interleaved" runs the variants in rounds of 20 connects;
// each reports its median, and its ns/op covers all of them and means
// nothing. Where the kernel lacks IPVS, the sub-benchmark "ipvs" skips
// and says so, and the others run without it.
func BenchmarkNorthSouthConnect(b *testing.B) {
	testutils.RequirePrivileged(b)
	top := newTopology(b, northSouthClients, 2)
	serveAcceptClose(b, top)
	variants := northSouthVariants(b, top)

	b.Run("interleaved", func(b *testing.B) {
		const perRound = 20
		lat := make([][]time.Duration, len(variants))
		for _, v := range variants {
			inNetNS(b, v.client.ns, func() { v.connect(b) }) // neighbour entries
		}
		b.ResetTimer()
		for done := 0; done < b.N; done += perRound {
			for i, v := range variants {
				inNetNS(b, v.client.ns, func() {
					for range min(perRound, b.N-done) {
						lat[i] = append(lat[i], v.connect(b))
					}
				})
			}
		}
		b.StopTimer()
		for i, v := range variants {
			reportLatency(b, lat[i], v.name+"-")
		}
	})
}

// northSouthClients is the number of client namespaces northSouthVariants
// needs, one per variant.
const northSouthClients = 6

// northSouthVariants sets up the variants of BenchmarkNorthSouthConnect
// and BenchmarkNorthSouthRR on a topology of northSouthClients clients and
// 2 backends: client k reaches the backends directly (0), through
// NorthSouth in native XDP (1), generic XDP (2) or tc (3) mode, through
// iptables DNAT (4) or through IPVS (5). A kernel without IPVS leaves the
// last out and runs the sub-benchmark "ipvs", which skips for it.
func northSouthVariants(b *testing.B, top *topology) []connectVariant {
	backends := []Backend{
		{Addr: top.backends[0].addr(false, backendPort)},
		{Addr: top.backends[1].addr(false, backendPort)},
	}
	vip := netip.MustParseAddrPort("10.99.0.1:80")
	svc := Service{Frontend: Frontend{vip, nodeplane.ProtoTCP}, Type: LoadBalancer, Algorithm: AlgorithmMaglev}
	attach := func(ifName string, mode AttachMode) {
		ns, err := NewNorthSouth(NorthSouthConfig{})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ns.Close() })
		if err := ns.Upsert(svc, backends); err != nil {
			b.Fatal(err)
		}
		if err := top.node.Do(func() error {
			l, err := net.InterfaceByName(ifName)
			if err != nil {
				return err
			}
			_, err = ns.Attach(l.Index, mode)
			return err
		}); err != nil {
			b.Fatal(err)
		}
	}
	attach("c1", AttachXDPNative)
	attach("c2", AttachXDPGeneric)
	attach("c3", AttachTC)
	variants := []connectVariant{
		{name: "direct", client: top.clients[0], dst: backends[0].Addr},
		{name: "xdp-native", client: top.clients[1], dst: vip},
		{name: "xdp-generic", client: top.clients[2], dst: vip},
		{name: "tc", client: top.clients[3], dst: vip},
	}
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		b.Logf("iptables baseline skipped: %v", err)
	} else {
		// A VIP of its own, which only client 4 connects to; the
		// NorthSouth VIP 10.99.0.1 is not in the rules.
		node := &endpointNS{name: "node", ns: top.node}
		if err := kubeProxyRules(node, "PREROUTING", 1, func(int) netip.AddrPort { return netip.MustParseAddrPort("10.99.0.3:80") }, backends); err != nil {
			b.Fatal(err)
		}
		variants = append(variants, connectVariant{name: "iptables", client: top.clients[4], dst: netip.MustParseAddrPort("10.99.0.3:80")})
	}

	if err := haveIPVS(); err != nil {
		b.Run("ipvs", func(b *testing.B) { testutils.SkipIfNotSupported(b, err) })
	} else {
		// A VIP of its own again, which only client 5 connects to.
		ipvsVIP := netip.MustParseAddrPort("10.99.0.4:80")
		setupIPVSService(b, top.node, ipvsVIP, backends)
		variants = append(variants, connectVariant{name: "ipvs", client: top.clients[5], dst: ipvsVIP})
	}
	return variants
}

// BenchmarkNorthSouthRR measures request/response round trips (one byte
// and a newline each way, like netperf's TCP_RR) on one established TCP
// connection per variant of BenchmarkNorthSouthConnect. The sub-benchmark
// "interleaved" runs them in rounds of 200; each variant reports its median
// round trip and the requests per second one connection achieves at that
// median.
func BenchmarkNorthSouthRR(b *testing.B) {
	testutils.RequirePrivileged(b)
	top := newTopology(b, northSouthClients, 2)
	top.serve(b)
	variants := northSouthVariants(b, top)
	conns := make([]*bufio.ReadWriter, len(variants))
	for i, v := range variants {
		var c net.Conn
		if err := v.client.ns.Do(func() (err error) {
			c, err = net.DialTimeout("tcp", v.dst.String(), 2*time.Second)
			return err
		}); err != nil {
			b.Fatalf("%s: %v", v.name, err)
		}
		b.Cleanup(func() { c.Close() })
		conns[i] = bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))
		if _, err := conns[i].ReadString('\n'); err != nil { // the greeting
			b.Fatalf("%s: %v", v.name, err)
		}
	}
	rr := func(b *testing.B, rw *bufio.ReadWriter) time.Duration {
		start := time.Now()
		rw.WriteString("x\n")
		if err := rw.Flush(); err != nil {
			b.Fatal(err)
		}
		if _, err := rw.ReadString('\n'); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	b.Run("interleaved", func(b *testing.B) {
		const perRound = 200
		lat := make([][]time.Duration, len(variants))
		b.ResetTimer()
		for done := 0; done < b.N; done += perRound {
			for i := range variants {
				for range min(perRound, b.N-done) {
					lat[i] = append(lat[i], rr(b, conns[i]))
				}
			}
		}
		b.StopTimer()
		for i, v := range variants {
			l := lat[i]
			slices.Sort(l)
			med := l[len(l)/2]
			b.ReportMetric(float64(med.Nanoseconds()), v.name+"-p50-ns/rr")
			b.ReportMetric(1e9/float64(med.Nanoseconds()), v.name+"-rr/s")
		}
	})
}
