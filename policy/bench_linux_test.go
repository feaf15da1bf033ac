package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

var (
	benchClient = netip.MustParseAddr("10.0.0.1")
	benchServer = netip.MustParseAddr("10.0.0.2")
)

// benchPeers returns n identities labelled as clients of the benchmark
// server's namespace, the first being the real client, and n source
// addresses for them (the client's first).
func benchPeers(n int) ([]identity.Identity, []netip.Addr) {
	ids := make([]identity.Identity, n)
	addrs := make([]netip.Addr, n)
	for i := range ids {
		ls, err := identity.ParseLabelList(fmt.Sprintf("k8s:app=client,k8s:instance=c%d,k8s:io.kubernetes.pod.namespace=bench,%s", i, clusterLbl))
		if err != nil {
			panic(err)
		}
		// Cluster-scoped IDs of clusters 1, 2, …: a cluster's indexes
		// start at identity.MinClusterIndex, so 100k peers span two.
		const per = 1<<16 - identity.MinClusterIndex
		id, err := identity.ClusterScopedID(uint8(1+i/per), uint16(identity.MinClusterIndex+i%per))
		if err != nil {
			panic(err)
		}
		ids[i] = identity.Identity{ID: id, Labels: ls}
		addrs[i] = netip.AddrFrom4([4]byte{172, 16 + byte(i>>16), byte(i >> 8), byte(i)})
	}
	addrs[0] = benchClient
	return ids, addrs
}

const benchServerPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "5201", protocol: TCP}]}]
`

// compiledServerPolicy compiles the server's policy with n client
// identities: n ingress entries, one per client identity, plus the
// allow-all of the unrestricted egress.
func compiledServerPolicy(tb testing.TB, n int) (mapstate.State, []identity.Identity, []netip.Addr, identity.Identity) {
	tb.Helper()
	w := newWorld(tb, Config{}, benchServerPolicy)
	ids, addrs := benchPeers(n)
	server := identity.Identity{ID: 60000, Labels: mustLabels(tb, "k8s:app=server,k8s:io.kubernetes.pod.namespace=bench,"+clusterLbl)}
	w.repo.updateIdentities(append(ids, server), nil)
	state := w.repo.Compile(Endpoint{Identity: server.ID, Labels: server.Labels}).State()
	if len(state) != n+1 {
		tb.Fatalf("compiled %d entries, want %d", len(state), n+1)
	}
	return state, ids, addrs, server
}

// attachedProgram returns the program of a given name attached to an
// interface of ns: how a benchmark reaches the datapath's real program.
func attachedProgram(tb testing.TB, ns *testutils.NetNS, ifindex int, name string) *ebpf.Program {
	tb.Helper()
	var found *ebpf.Program
	err := ns.Do(func() error {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
			if err != nil {
				continue
			}
			for _, ap := range res.Programs {
				p, err := ebpf.NewProgramFromID(ap.ID)
				if err != nil {
					return err
				}
				info, err := p.Info()
				if err == nil && strings.HasPrefix(name, info.Name) && info.Name != "" {
					found = p
					return nil
				}
				p.Close()
			}
		}
		return errors.New("not found")
	})
	if err != nil {
		tb.Skipf("program %s not reachable by tcx query on ifindex %d: %v", name, ifindex, err)
	}
	tb.Cleanup(func() { found.Close() })
	return found
}

// BenchmarkPolicyDecisionBPF measures the datapath's per-packet policy
// decision with BPF_PROG_TEST_RUN, the server endpoint's policy map
// compiled from rules with 10, 1k and 100k entries, beside an empty tc
// program (the cost of the test run itself) in the same run. The packets
// are new connections the policy denies, so every run decides (an allowed
// one would be established after the first run):
//
//   - default-deny: a source no entry names, so both lookups (peer and
//     any-peer) miss: the decision's worst case;
//   - deny-entry: a source the policy denies port 22 to by a deny rule,
//     decided by the peer lookup.
func BenchmarkPolicyDecisionBPF(b *testing.B) {
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
	// The to-endpoint program decides ingress for traffic from outside.
	prog := attachedProgram(b, node, ep.HostIfindex(), "np_to_endpoint")

	unknown := netip.MustParseAddr("192.0.2.1")
	denied := netip.MustParseAddr("192.0.2.2")
	if err := d.IPCache().UpsertPrefix(netip.PrefixFrom(denied, 32), ipcache.Entry{Identity: 65000}); err != nil {
		b.Fatal(err)
	}
	pkt := func(src netip.Addr, dport uint16) []byte {
		raw, err := datapath.TestPacket{Src: src, Dst: benchServer, Proto: 6, SrcPort: 40000, DstPort: dport}.Bytes()
		if err != nil {
			b.Fatal(err)
		}
		return raw
	}

	prev := mapstate.State{}
	for _, n := range []int{10, 1000, 100000} {
		state, ids, addrs, _ := compiledServerPolicy(b, n)
		state[mapstate.Key{Identity: 65000, Direction: mapstate.Ingress, Protocol: 6, Port: 22, PortPrefixLen: 16}] = mapstate.Entry{Deny: true}
		delta := mapstate.Diff(prev, state)
		if err := ep.Policy().Apply(delta.Upserts, delta.Deletes); err != nil {
			b.Fatal(err)
		}
		prev = state
		for i := range ids {
			if err := d.IPCache().UpsertPrefix(netip.PrefixFrom(addrs[i], 32), ipcache.Entry{Identity: ids[i].ID}); err != nil {
				b.Fatal(err)
			}
		}
		for _, bc := range []struct {
			name string
			prog *ebpf.Program
			pkt  []byte
			ret  uint32
		}{
			{"empty-program", empty, pkt(unknown, 5201), 0},
			{"default-deny", prog, pkt(unknown, 5201), 2},
			{"deny-entry", prog, pkt(denied, 22), 2},
		} {
			b.Run(fmt.Sprintf("entries=%d/%s", n, bc.name), func(b *testing.B) {
				var total time.Duration
				for i := 0; i < b.N; i++ {
					ret, dur, err := bc.prog.Benchmark(bc.pkt, 100000, nil)
					if err != nil {
						b.Fatal(err)
					}
					if ret != bc.ret {
						b.Fatalf("program returned %d, want %d", ret, bc.ret)
					}
					total += dur
				}
				b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/op")
			})
		}
	}
}

// filterSetup is one way to filter the benchmark's traffic: it builds a
// client and a server namespace with the filter in place.
type filterSetup struct {
	name  string
	setup func(b *testing.B) (client, server *testutils.NetNS)
}

// filterConfig says which filterSetups to build.
type filterConfig struct {
	bpfEntries []int // policy map sizes of the bpf configurations
	chainRules []int // chain lengths of the iptables and nftables ones
	// acceptEstablished puts an ESTABLISHED,RELATED accept rule first in
	// the chains.
	acceptEstablished bool
}

// establishedOnlyChains are the configurations of the established-flow
// benchmarks (throughput, latency): chains without the ESTABLISHED accept,
// so every packet walks them.
func establishedOnlyChains() filterConfig {
	return filterConfig{bpfEntries: []int{10, 1000, 100000}, chainRules: []int{10, 1000, 10000}}
}

// filterSetups are the configurations the traffic benchmarks compare:
//
//   - bare-veth: a veth pair, no filtering (the baseline);
//   - bpf: the two are datapath endpoints and the server's policy map is
//     compiled from rules that allow cfg.bpfEntries client identities
//     (with as many ipcache entries), the real client among them;
//   - iptables, nftables: a veth pair, and the server's INPUT chain holds
//     cfg.chainRules rules that each accept one client address on the
//     benchmark port, the real client's last, and drops the rest: the same
//     decision as the policy map, written the way iptables and nftables
//     write it (one rule per peer).
//
// The datapath decides a connection's first packet from its maps and the
// rest from conntrack; without cfg.acceptEstablished the chains are
// evaluated for every packet, which is not how iptables policies are
// written. With it, the chains start with the ESTABLISHED,RELATED accept
// that kube-router and Calico's iptables mode put first, so only a
// connection's first packet walks the rules: the fair peer of the datapath.
func filterSetups(cfg filterConfig) []filterSetup {
	vethPair := func(b *testing.B) (client, server *testutils.NetNS) {
		client, server = testutils.NewNetNS(b), testutils.NewNetNS(b)
		v := testutils.NewVeth(b, client, "c0", server, "s0")
		for _, side := range []struct {
			ns   *testutils.NetNS
			idx  int
			addr netip.Addr
		}{{client, v.Index, benchClient}, {server, v.PeerIndex, benchServer}} {
			nl := side.ns.Netlink(b)
			l, err := nl.LinkByIndex(side.idx)
			if err != nil {
				b.Fatal(err)
			}
			if err := nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: side.addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
				b.Fatal(err)
			}
		}
		return client, server
	}
	rules := func(n int) []netip.Addr {
		_, addrs := benchPeers(n)
		// The real client last: every packet walks the whole chain.
		return append(addrs[1:], addrs[0])
	}
	chainName := func(tool string, n int) string {
		if cfg.acceptEstablished {
			tool += "+established"
		}
		return fmt.Sprintf("%s/rules=%d", tool, n)
	}
	out := []filterSetup{{"bare-veth", vethPair}}
	for _, n := range cfg.bpfEntries {
		out = append(out, filterSetup{fmt.Sprintf("bpf/entries=%d", n), func(b *testing.B) (*testutils.NetNS, *testutils.NetNS) {
			d, _ := newTestDatapath(b, datapath.Config{IPCacheMaxEntries: 1 << 18, PolicyMapMaxEntries: 1 << 18})
			state, ids, addrs, server := compiledServerPolicy(b, n)
			clientNS, serverNS := testutils.NewNetNS(b), testutils.NewNetNS(b)
			c, err := d.AddEndpoint(datapath.EndpointConfig{ID: 1, Identity: ids[0].ID, IPv4: benchClient,
				NetNS: fmt.Sprintf("/proc/self/fd/%d", clientNS.FD())})
			if err != nil {
				b.Fatal(err)
			}
			s, err := d.AddEndpoint(datapath.EndpointConfig{ID: 2, Identity: server.ID, IPv4: benchServer,
				NetNS: fmt.Sprintf("/proc/self/fd/%d", serverNS.FD())})
			if err != nil {
				b.Fatal(err)
			}
			// The client's egress is unrestricted; the server's map is the
			// compiled one.
			if err := c.Policy().Apply(mapstate.State{{Direction: mapstate.Egress}: {}}, nil); err != nil {
				b.Fatal(err)
			}
			if err := s.Policy().Apply(state, nil); err != nil {
				b.Fatal(err)
			}
			for i := 1; i < n; i++ {
				if err := d.IPCache().UpsertPrefix(netip.PrefixFrom(addrs[i], 32), ipcache.Entry{Identity: ids[i].ID}); err != nil {
					b.Fatal(err)
				}
			}
			return clientNS, serverNS
		}})
	}
	for _, n := range cfg.chainRules {
		out = append(out, filterSetup{chainName("iptables", n), func(b *testing.B) (*testutils.NetNS, *testutils.NetNS) {
			if _, err := exec.LookPath("iptables-restore"); err != nil {
				b.Skip("iptables not installed")
			}
			client, server := vethPair(b)
			var s strings.Builder
			s.WriteString("*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n")
			if cfg.acceptEstablished {
				s.WriteString("-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n")
			}
			for _, a := range rules(n) {
				fmt.Fprintf(&s, "-A INPUT -s %s/32 -p tcp -m tcp --dport %d -j ACCEPT\n", a, benchPort)
			}
			s.WriteString("COMMIT\n")
			runIn(b, server, s.String(), "iptables-restore")
			return client, server
		}})
	}
	for _, n := range cfg.chainRules {
		out = append(out, filterSetup{chainName("nftables", n), func(b *testing.B) (*testutils.NetNS, *testutils.NetNS) {
			if _, err := exec.LookPath("nft"); err != nil {
				b.Skip("nft not installed")
			}
			client, server := vethPair(b)
			var s strings.Builder
			s.WriteString("table ip bench {\n chain input {\n  type filter hook input priority 0; policy drop;\n")
			if cfg.acceptEstablished {
				s.WriteString("  ct state established,related accept\n")
			}
			for _, a := range rules(n) {
				fmt.Fprintf(&s, "  ip saddr %s tcp dport %d accept\n", a, benchPort)
			}
			s.WriteString(" }\n}\n")
			runIn(b, server, s.String(), "nft", "-f", "-")
			return client, server
		}})
	}
	return out
}

// benchPort is the port every filter configuration allows: iperf3's.
const benchPort = 5201

// BenchmarkPolicyThroughput runs iperf3 (TCP, one stream) from the client
// to the server of each filterSetups configuration and reports Gbit/s.
func BenchmarkPolicyThroughput(b *testing.B) {
	testutils.RequirePrivileged(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 not installed")
	}
	for _, fs := range filterSetups(establishedOnlyChains()) {
		b.Run(fs.name, func(b *testing.B) {
			client, server := fs.setup(b)
			testutils.Iperf3(b, client, server, benchServer, "3")
		})
	}
}

// BenchmarkPolicyLatency measures the round trip of a one-byte request and
// its echo over an established TCP connection, in each filterSetups
// configuration. Every round trip is one packet each way through the
// filters, so the filters' per-packet cost on established flows adds to
// it directly. Beside the chains every packet walks, it runs the same
// chains with the ESTABLISHED,RELATED accept first (iptables+established,
// nftables+established), as real iptables policies are written.
//
// Every configuration is set up first; each sub-benchmark then makes b.N
// round trips through its configuration and, in alternating rounds of
// 100, b.N over bare veth, the baseline, so that on a shared machine both
// see the same load. It reports the mean round trip as ns/op, the median
// (p50-ns/rt) and, beside bare veth, bare veth's median (bare-p50-ns/rt)
// and the difference of the medians (extra-ns/rt).
func BenchmarkPolicyLatency(b *testing.B) {
	testutils.RequirePrivileged(b)
	setups := filterSetups(establishedOnlyChains())
	// [1:]: without bare veth, which is in setups already.
	setups = append(setups, filterSetups(filterConfig{chainRules: []int{10, 1000, 10000}, acceptEstablished: true})[1:]...)
	dst := netip.AddrPortFrom(benchServer, benchPort)
	type variant struct {
		name string
		c    net.Conn
	}
	var variants []variant
	for _, fs := range setups {
		client, server := fs.setup(b)
		serveEcho(b, server, dst)
		var c net.Conn
		for try := 0; ; try++ {
			err := client.Do(func() (err error) {
				c, err = net.DialTimeout("tcp", dst.String(), 5*time.Second)
				return err
			})
			if err == nil {
				break
			}
			if try == 10 {
				b.Fatalf("%s: %v", fs.name, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		defer c.Close()
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		variants = append(variants, variant{fs.name, c})
	}
	buf := []byte{0}
	roundTrips := func(b *testing.B, c net.Conn, n int, lat []time.Duration) []time.Duration {
		for range n {
			start := time.Now()
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		return lat
	}
	for _, v := range variants { // warm up
		roundTrips(b, v.c, 100, nil)
	}
	bare := variants[0]
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			const perRound = 100
			lat := make([]time.Duration, 0, b.N)
			var base []time.Duration
			for done := 0; done < b.N; done += perRound {
				lat = roundTrips(b, v.c, min(perRound, b.N-done), lat)
				if v != bare {
					base = roundTrips(b, bare.c, min(perRound, b.N-done), base)
				}
			}
			reportPaired(b, lat, base, "rt")
		})
	}
}

// serveEcho runs an echo server inside ns.
func serveEcho(tb testing.TB, ns *testutils.NetNS, addr netip.AddrPort) {
	tb.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", addr.String()); return err }); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetNoDelay(true)
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
}

// runIn runs a command with stdin inside ns.
func runIn(b *testing.B, ns *testutils.NetNS, stdin string, name string, args ...string) {
	b.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := ns.Run(cmd); err != nil {
		b.Fatalf("%s: %v\n%s", name, err, out.String())
	}
}
