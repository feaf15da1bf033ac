package datapath

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// testRunRepeat is how often BPF_PROG_TEST_RUN runs a packet per call; the
// kernel reports the mean.
const testRunRepeat = 100000

// runPerPacket reports the program's mean time per packet as ns/op.
func runPerPacket(b *testing.B, prog *ebpf.Program, pkt []byte, wantRet uint32) {
	b.Helper()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		ret, d, err := prog.Benchmark(pkt, testRunRepeat, nil)
		if err != nil {
			b.Fatal(err)
		}
		if ret != wantRet {
			b.Fatalf("program returned %d, want %d", ret, wantRet)
		}
		total += d
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "ns/op")
}

// BenchmarkFromEndpoint measures the from-endpoint program per packet with
// BPF_PROG_TEST_RUN, with 10, 1k and 100k ipcache entries and policy
// entries, beside an empty tc program in the same run:
//
//   - established: a packet of a known connection to an ipcache peer
//     (endpoint, ipcache and conntrack lookups, conntrack update);
//   - new-denied: a new connection the egress policy denies, so every
//     packet pays both policy lookups and the event reservations (no reader
//     drains the ring buffer, so events count as lost);
//
// Traffic to a local endpoint is left out: the program decrements the
// packet's TTL in place, and BPF_PROG_TEST_RUN repeats on one buffer, so
// after 63 runs the measurement would be of the TTL-expired path.
func BenchmarkFromEndpoint(b *testing.B) {
	d, _ := newTestDatapath(b, Config{IPCacheMaxEntries: 1 << 17, PolicyMapMaxEntries: 1 << 17, EventsBufferSize: 4096})
	empty, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer empty.Close()

	a := addDetached(b, d, 1, idA, addrA.String(), "")
	addDetached(b, d, 2, idB, addrB.String(), "")
	bEp, _ := d.Endpoint(2)
	if err := d.IPCache().UpsertPrefix(netip.MustParsePrefix("192.0.2.0/24"), ipcache.Entry{Identity: idRemote}); err != nil {
		b.Fatal(err)
	}
	mustUpdate(b, a.Policy(), map[mapstate.Key]mapstate.Entry{
		{Identity: idRemote, Direction: mapstate.Egress, Protocol: protoTCP, Port: 80, PortPrefixLen: 16}: allow,
		{Identity: idB, Direction: mapstate.Egress, Protocol: protoTCP, Port: 8080, PortPrefixLen: 16}:    allow,
	})
	mustUpdate(b, bEp.Policy(), map[mapstate.Key]mapstate.Entry{
		{Identity: idA, Direction: mapstate.Ingress, Protocol: protoTCP, Port: 8080, PortPrefixLen: 16}: allow,
	})

	established := mustBytes(b, tcpPkt(addrA, remote, 40000, 80, TCPAck))
	denied := mustBytes(b, tcpPkt(addrA, remote, 40001, 81, TCPSyn))
	for _, pkt := range [][]byte{established} {
		if v, _, err := a.TestRun(FromEndpoint, pkt); err != nil || v.Reason != 0 {
			b.Fatalf("opening the benchmark's connections: %+v %v", v, err)
		}
	}

	rng := rand.New(rand.NewPCG(1, 2))
	ipcacheN, policyN := 1, 2 // what is in the maps so far
	for _, n := range []int{10, 1000, 100000} {
		// Grow both maps to n entries with prefixes and keys that never
		// match the benchmark's packets.
		for ; ipcacheN < n; ipcacheN++ {
			p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))}), 24+rng.IntN(9))
			if p.Contains(addrA) || p.Contains(addrB) {
				ipcacheN--
				continue
			}
			if err := d.IPCache().UpsertPrefix(p, ipcache.Entry{Identity: identity.ID(5000 + rng.IntN(1000))}); err != nil {
				b.Fatal(err)
			}
		}
		batch := map[mapstate.Key]mapstate.Entry{}
		for ; policyN < n; policyN++ {
			k := mapstate.Key{Identity: identity.ID(5000 + rng.IntN(100000)), Direction: mapstate.Direction(rng.IntN(2)),
				Protocol: protoTCP, Port: uint16(rng.IntN(65536)), PortPrefixLen: 16}
			if _, dup := batch[k]; dup {
				policyN--
				continue
			}
			batch[k] = mapstate.Entry{}
		}
		mustUpdate(b, a.Policy(), batch)

		for _, bc := range []struct {
			name string
			prog *ebpf.Program
			pkt  []byte
			ret  uint32
		}{
			{"empty-program", empty, established, tcActOK},
			{"established", a.progs.from, established, tcActOK},
			{"new-denied", a.progs.from, denied, tcActShot},
		} {
			b.Run(fmt.Sprintf("entries=%d/%s", n, bc.name), func(b *testing.B) {
				runPerPacket(b, bc.prog, bc.pkt, bc.ret)
			})
		}
	}
}

// BenchmarkTCPThroughput runs iperf3 between two namespaces: over a bare
// veth pair (the baseline), and between two datapath endpoints (each
// behind its own veth pair, pod to pod through the from-endpoint program
// and bpf_redirect_peer), empty maps and with 100k ipcache and policy
// entries. It reports Gbit/s; the ratio to the baseline is the datapath's
// cost.
func BenchmarkTCPThroughput(b *testing.B) {
	testutils.RequirePrivileged(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Skip("iperf3 not installed (apt-get install iperf3)")
	}
	const seconds = "3"

	b.Run("bare-veth", func(b *testing.B) {
		client, server := testutils.NewNetNS(b), testutils.NewNetNS(b)
		v := testutils.NewVeth(b, client, "c0", server, "s0")
		for _, side := range []struct {
			ns   *testutils.NetNS
			idx  int
			addr netip.Addr
		}{{client, v.Index, addrA}, {server, v.PeerIndex, addrB}} {
			nl := side.ns.Netlink(b)
			l, err := nl.LinkByIndex(side.idx)
			if err != nil {
				b.Fatal(err)
			}
			ipn := &net.IPNet{IP: side.addr.AsSlice(), Mask: net.CIDRMask(24, 32)}
			if err := nl.AddrAdd(l, &netlink.Addr{IPNet: ipn}); err != nil {
				b.Fatal(err)
			}
		}
		testutils.Iperf3(b, client, server, addrB, seconds)
	})

	for _, entries := range []int{0, 100000} {
		b.Run(fmt.Sprintf("datapath/entries=%d", entries), func(b *testing.B) {
			d, _ := newTestDatapath(b, Config{IPCacheMaxEntries: 1 << 17, PolicyMapMaxEntries: 1 << 17})
			client, server := testutils.NewNetNS(b), testutils.NewNetNS(b)
			a, err := d.AddEndpoint(EndpointConfig{ID: 1, Identity: idA, IPv4: addrA, NetNS: nsPath(client)})
			if err != nil {
				b.Fatal(err)
			}
			s, err := d.AddEndpoint(EndpointConfig{ID: 2, Identity: idB, IPv4: addrB, NetNS: nsPath(server)})
			if err != nil {
				b.Fatal(err)
			}
			mustUpdate(b, a.Policy(), map[mapstate.Key]mapstate.Entry{{Identity: idB, Direction: mapstate.Egress}: allow})
			mustUpdate(b, s.Policy(), map[mapstate.Key]mapstate.Entry{
				{Identity: idA, Direction: mapstate.Ingress, Protocol: protoTCP, Port: 5201, PortPrefixLen: 16}: allow,
			})
			fillMaps(b, d, a, entries)
			testutils.Iperf3(b, client, server, addrB, seconds)
		})
	}
}

func fillMaps(b *testing.B, d *Datapath, ep *Endpoint, n int) {
	rng := rand.New(rand.NewPCG(3, 4))
	batch := map[mapstate.Key]mapstate.Entry{}
	for len(batch) < n {
		batch[mapstate.Key{Identity: identity.ID(5000 + rng.IntN(100000)), Direction: mapstate.Direction(rng.IntN(2)),
			Protocol: protoTCP, Port: uint16(rng.IntN(65536)), PortPrefixLen: 16}] = mapstate.Entry{}
	}
	mustUpdate(b, ep.Policy(), batch)
	for i := 0; i < n; i++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16 + byte(i>>16), byte(i >> 8), byte(i)}), 32)
		if err := d.IPCache().UpsertPrefix(p, ipcache.Entry{Identity: 5000}); err != nil {
			b.Fatal(err)
		}
	}
}
