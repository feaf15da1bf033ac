package policy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// newFlowSizes are the policy map sizes and chain lengths the new-flow
// benchmarks compare, the same N for BPF, iptables and nftables.
func newFlowSizes() []int { return []int{10, 1000, 10000, 100000} }

// BenchmarkPolicyConnect measures new TCP connections per second from a
// client namespace to a server namespace: connect, a one-byte request and
// its echo, then a close by reset (SO_LINGER 0, so that no TIME_WAIT
// socket holds a client port and every connection is a new flow to both
// conntracks), one connection after the other. The configurations are
// filterSetups' with the same N for all three filters: the BPF policy map
// with N entries, and iptables and nftables chains that accept
// ESTABLISHED,RELATED first and then hold N rules, the real client's
// last. So the chain is walked by a connection's first packet only, as in
// kube-router's and Calico's iptables policies, and the BPF map is
// consulted by its first packet only: a fair comparison of what a new
// connection pays. For iptables, checkFirstPacketOnly verifies by the rule
// counters that only first packets walked the rules.
//
// Each configuration runs as a sub-benchmark that makes b.N connections
// through it and, in alternating rounds of 20, b.N connections over bare
// veth, the baseline, so that on a shared machine both see the same load;
// reportPaired says what it reports (what = conn), and conn/s:
// connections over their summed time.
func BenchmarkPolicyConnect(b *testing.B) {
	testutils.RequirePrivileged(b)
	dst := netip.AddrPortFrom(benchServer, benchPort).String()
	type variant struct {
		name           string
		client, server *testutils.NetNS
		conns          uint64 // connections made through it
	}
	var variants []*variant
	for _, fs := range filterSetups(filterConfig{bpfEntries: newFlowSizes(), chainRules: newFlowSizes(), acceptEstablished: true}) {
		start := time.Now()
		client, server := fs.setup(b)
		testutils.ServeEcho(b, server, "tcp4", dst)
		v := &variant{name: fs.name, client: client, server: server}
		// One connection outside the timer: neighbour entries, and proof
		// that the filter lets the client in.
		var err error
		for try := 0; try < 50; try++ {
			if err = client.Do(func() error { _, err := connectRequestClose(dst); return err }); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			b.Fatalf("%s: %v", v.name, err)
		}
		v.conns++
		b.Logf("%s: set up in %s", v.name, time.Since(start).Round(time.Millisecond))
		variants = append(variants, v)
	}

	connectN := func(b *testing.B, v *variant, n int, lat []time.Duration) []time.Duration {
		err := v.client.Do(func() error {
			for range n {
				d, err := connectRequestClose(dst)
				if err != nil {
					return err
				}
				lat = append(lat, d)
				v.conns++
			}
			return nil
		})
		if err != nil {
			b.Fatalf("%s: %v", v.name, err)
		}
		return lat
	}
	bare := variants[0]
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			// b.N connections of the configuration and b.N over bare veth,
			// in alternating rounds of 20.
			const perRound = 20
			lat := make([]time.Duration, 0, b.N)
			var base []time.Duration
			for done := 0; done < b.N; done += perRound {
				lat = connectN(b, v, min(perRound, b.N-done), lat)
				if v != bare {
					base = connectN(b, bare, min(perRound, b.N-done), base)
				}
			}
			reportPaired(b, lat, base, "conn")
			if strings.HasPrefix(v.name, "iptables+established/") {
				checkFirstPacketOnly(b, v.server, v.conns)
			}
		})
	}
}

// checkFirstPacketOnly checks, by the rule counters of the server's INPUT
// chain, that of conns connections only the first packets walked the
// rules: the last rule (the client's) accepted conns packets, and the
// first (ESTABLISHED,RELATED) at least two per connection (the handshake's
// ACK, the request; the reset is not always counted there, as it may
// arrive after conntrack closed the entry).
func checkFirstPacketOnly(b *testing.B, server *testutils.NetNS, conns uint64) {
	b.Helper()
	var out bytes.Buffer
	cmd := exec.Command("iptables", "-L", "INPUT", "-v", "-x", "-n")
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := server.Run(cmd); err != nil {
		b.Fatalf("iptables -L: %v\n%s", err, out.String())
	}
	var pkts []uint64
	for _, line := range strings.Split(out.String(), "\n")[2:] {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			b.Fatalf("iptables -L: %q: %v", line, err)
		}
		pkts = append(pkts, n)
	}
	if len(pkts) < 2 {
		b.Fatalf("iptables -L: %d rules\n%s", len(pkts), out.String())
	}
	est, allowed := pkts[0], pkts[len(pkts)-1]
	if allowed != conns || est < 2*conns {
		b.Fatalf("%d connections: the client's rule accepted %d packets (want %d), the ESTABLISHED rule %d (want ≥ %d)",
			conns, allowed, conns, est, 2*conns)
	}
}

// connectRequestClose connects to dst, sends one byte, reads its echo and
// closes the connection with a reset, and returns how long that took. It
// must run in the client's namespace.
func connectRequestClose(dst string) (time.Duration, error) {
	start := time.Now()
	c, err := net.DialTimeout("tcp4", dst, 5*time.Second)
	if err != nil {
		return 0, err
	}
	tc := c.(*net.TCPConn)
	buf := []byte{1}
	if _, err := tc.Write(buf); err != nil {
		tc.Close()
		return 0, err
	}
	if err := tc.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		tc.Close()
		return 0, err
	}
	if _, err := io.ReadFull(tc, buf); err != nil {
		tc.Close()
		return 0, fmt.Errorf("read echo: %w", err)
	}
	if err := tc.SetLinger(0); err != nil {
		tc.Close()
		return 0, err
	}
	if err := tc.Close(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// reportPaired reports a configuration's mean time per operation (a
// connection, a round trip: what) as ns/op, its median (p50-ns/what) and,
// if the baseline ran beside it, the baseline's median (bare-p50-ns/what)
// and the difference of the two medians (extra-ns/what): what the filter
// adds. On a shared machine the mean is at the mercy of the few operations
// that waited for a CPU; the medians are what an operation costs.
func reportPaired(b *testing.B, lat, base []time.Duration, what string) {
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	b.ReportMetric(float64(sum.Nanoseconds())/float64(len(lat)), "ns/op")
	if what == "conn" {
		b.ReportMetric(float64(len(lat))/sum.Seconds(), "conn/s")
	}
	p50 := median(lat)
	b.ReportMetric(float64(p50.Nanoseconds()), "p50-ns/"+what)
	if len(base) > 0 {
		bp50 := median(base)
		b.ReportMetric(float64(bp50.Nanoseconds()), "bare-p50-ns/"+what)
		b.ReportMetric(float64((p50 - bp50).Nanoseconds()), "extra-ns/"+what)
	}
}

func median(d []time.Duration) time.Duration {
	slices.Sort(d)
	return d[len(d)/2]
}

// BenchmarkPolicyNewFlowBPF measures what the datapath's to-endpoint
// program (the real one, found through the tcx query) costs the first
// packet of a new connection, with BPF_PROG_TEST_RUN, the server
// endpoint's policy map compiled from rules with 10, 1k, 10k and 100k
// entries (and as many ipcache entries). Every run is one packet
// (Repeat 1), and every SYN has a source port no earlier SYN used, so it
// misses conntrack and is decided by the policy map; the conntrack table
// is flushed, outside the measured time, before the ports repeat.
// ns/op is the kernel's own measurement of one run:
//
//   - empty-program: a tc program that returns at once, run the same way:
//     the cost of a test run itself, the baseline;
//   - new-allowed: a SYN from the real client, allowed by its entry, which
//     then creates a conntrack entry;
//   - new-denied: a SYN from an address no entry names (both policy
//     lookups miss, a drop event is reserved);
//   - established: the same SYN again and again after a first, untimed
//     run: a conntrack hit that never consults policy (what an
//     established flow's packets cost).
func BenchmarkPolicyNewFlowBPF(b *testing.B) {
	d, node := newTestDatapath(b, datapath.Config{IPCacheMaxEntries: 1 << 18, PolicyMapMaxEntries: 1 << 18, EventsBufferSize: 4096})
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	defer empty.Close()

	podNS := testutils.NewNetNS(b)
	ep, err := d.AddEndpoint(datapath.EndpointConfig{ID: 1, Identity: 60000, IPv4: benchServer,
		NetNS: fmt.Sprintf("/proc/self/fd/%d", podNS.FD())})
	if err != nil {
		b.Fatal(err)
	}
	prog := attachedProgram(b, node, ep.HostIfindex(), "np_to_endpoint")
	unknown := netip.MustParseAddr("192.0.2.1")

	// conntrack holds 1<<16 entries (newTestDatapath): flush before the
	// source ports wrap, so that every SYN of new-allowed is new.
	const ports = 60000
	syn := func(src netip.Addr, sport uint16) []byte {
		raw, err := datapath.TestPacket{Src: src, Dst: benchServer, Proto: 6, SrcPort: sport, DstPort: benchPort}.Bytes()
		if err != nil {
			b.Fatal(err)
		}
		return raw
	}

	for _, n := range newFlowSizes() {
		// The sizes grow and every size's entries include the smaller
		// ones', so writing the whole state adds the new entries.
		state, ids, addrs, _ := compiledServerPolicy(b, n)
		if err := ep.Policy().Apply(state, nil); err != nil {
			b.Fatal(err)
		}
		for i := range ids {
			if err := d.IPCache().UpsertPrefix(netip.PrefixFrom(addrs[i], 32), ipcache.Entry{Identity: ids[i].ID}); err != nil {
				b.Fatal(err)
			}
		}
		for _, bc := range []struct {
			name  string
			prog  *ebpf.Program
			src   netip.Addr
			fresh bool // a new source port every run
			ret   uint32
		}{
			{"empty-program", empty, benchClient, true, 0},
			{"new-allowed", prog, benchClient, true, 0},
			{"new-denied", prog, unknown, true, 2},
			{"established", prog, benchClient, false, 0},
		} {
			b.Run(fmt.Sprintf("entries=%d/%s", n, bc.name), func(b *testing.B) {
				if _, err := d.Conntrack().Flush(); err != nil {
					b.Fatal(err)
				}
				established := syn(bc.src, 1)
				if !bc.fresh { // the entry the runs will hit
					if _, _, err := bc.prog.Benchmark(established, 1, nil); err != nil {
						b.Fatal(err)
					}
				}
				var total time.Duration
				for i := range b.N {
					pkt := established
					if bc.fresh {
						if i > 0 && i%ports == 0 {
							if _, err := d.Conntrack().Flush(); err != nil {
								b.Fatal(err)
							}
						}
						pkt = syn(bc.src, uint16(1+i%ports))
					}
					ret, dur, err := bc.prog.Benchmark(pkt, 1, nil)
					if err != nil {
						b.Fatal(err)
					}
					if ret != bc.ret {
						b.Fatalf("program returned %d, want %d", ret, bc.ret)
					}
					total += dur
				}
				b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/op")
				if bc.name == "new-allowed" {
					// Every SYN since the last flush made an entry: each
					// was new, not a conntrack hit.
					entries, err := d.Conntrack().Entries()
					if err != nil {
						b.Fatal(err)
					}
					if want := (b.N-1)%ports + 1; len(entries) != want {
						b.Fatalf("conntrack holds %d entries after %d new SYNs since the flush", len(entries), want)
					}
				}
			})
		}
	}
}
