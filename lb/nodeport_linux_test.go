package lb

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/internal/nat"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/lb/maglev"
)

const (
	xdpDrop = 1
	xdpPass = 2
)

// testPkt is an Ethernet frame with an IPv4 or IPv6 header and a TCP or
// UDP header, with correct checksums.
type testPkt struct {
	src, dst netip.AddrPort
	proto    uint8
	frag     bool   // IPv4: more fragments
	fragOff  uint16 // IPv4: fragment offset, in 8-byte units
	truncL4  bool   // cut inside the L4 header
	truncL3  bool   // cut inside the IP header
	payload  []byte // nil: a short default
}

func csumAdd(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func csumFold(sum uint32) uint16 {
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func pseudo(src, dst netip.Addr, proto uint8, n int) uint32 {
	s := csumAdd(0, src.AsSlice())
	s = csumAdd(s, dst.AsSlice())
	return s + uint32(proto) + uint32(n)
}

func (p testPkt) bytes() []byte {
	payload := []byte("nodeplane-north-south")
	if p.payload != nil {
		payload = p.payload
	}
	var l4 []byte
	if p.proto == 6 {
		l4 = make([]byte, 20, 20+len(payload))
		l4[12] = 5 << 4
		l4[13] = 0x02 // SYN
	} else {
		l4 = make([]byte, 8, 8+len(payload))
		binary.BigEndian.PutUint16(l4[4:], uint16(8+len(payload)))
	}
	binary.BigEndian.PutUint16(l4[0:], p.src.Port())
	binary.BigEndian.PutUint16(l4[2:], p.dst.Port())
	l4 = append(l4, payload...)
	sum := csumFold(csumAdd(pseudo(p.src.Addr(), p.dst.Addr(), p.proto, len(l4)), l4))
	if p.proto == 6 {
		binary.BigEndian.PutUint16(l4[16:], sum)
	} else {
		if sum == 0 {
			sum = 0xffff
		}
		binary.BigEndian.PutUint16(l4[6:], sum)
	}

	eth := make([]byte, 14)
	var l3 []byte
	if p.src.Addr().Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		l3 = make([]byte, 20)
		l3[0] = 0x45
		binary.BigEndian.PutUint16(l3[2:], uint16(20+len(l4)))
		var fo uint16
		if p.frag {
			fo = 0x2000
		}
		binary.BigEndian.PutUint16(l3[6:], fo|p.fragOff)
		l3[8] = 64
		l3[9] = p.proto
		copy(l3[12:], p.src.Addr().AsSlice())
		copy(l3[16:], p.dst.Addr().AsSlice())
		binary.BigEndian.PutUint16(l3[10:], csumFold(csumAdd(0, l3)))
	} else {
		binary.BigEndian.PutUint16(eth[12:], 0x86dd)
		l3 = make([]byte, 40)
		l3[0] = 0x60
		binary.BigEndian.PutUint16(l3[4:], uint16(len(l4)))
		l3[6] = p.proto
		l3[7] = 64
		copy(l3[8:], p.src.Addr().AsSlice())
		copy(l3[24:], p.dst.Addr().AsSlice())
	}
	out := append(append(eth, l3...), l4...)
	switch {
	case p.truncL3:
		return out[:14+len(l3)/2]
	case p.truncL4:
		return out[:14+len(l3)+4]
	}
	return out
}

// parsePkt reads the addresses back from a frame and checks its checksums.
func parsePkt(tb testing.TB, b []byte) (src, dst netip.AddrPort) {
	tb.Helper()
	var sa, da netip.Addr
	var proto uint8
	var l4 []byte
	if binary.BigEndian.Uint16(b[12:]) == 0x0800 {
		l3 := b[14:34]
		if csumFold(csumAdd(0, l3)) != 0 {
			tb.Fatalf("bad IPv4 header checksum")
		}
		sa, _ = netip.AddrFromSlice(l3[12:16])
		da, _ = netip.AddrFromSlice(l3[16:20])
		proto = l3[9]
		l4 = b[34:]
	} else {
		l3 := b[14:54]
		sa, _ = netip.AddrFromSlice(l3[8:24])
		da, _ = netip.AddrFromSlice(l3[24:40])
		proto = l3[6]
		l4 = b[54:]
	}
	if csumFold(csumAdd(pseudo(sa, da, proto, len(l4)), l4)) != 0 {
		tb.Fatalf("bad L4 checksum in %s -> %s", sa, da)
	}
	return netip.AddrPortFrom(sa, binary.BigEndian.Uint16(l4[0:])), netip.AddrPortFrom(da, binary.BigEndian.Uint16(l4[2:]))
}

func runProg(tb testing.TB, prog *ebpf.Program, pkt []byte) (uint32, []byte) {
	tb.Helper()
	out := make([]byte, len(pkt)+256)
	ret, err := prog.Run(&ebpf.RunOptions{Data: pkt, DataOut: out})
	if err != nil {
		tb.Fatal(err)
	}
	return ret, out[:len(pkt)]
}

const testSeed = "q1w2e3r4t5y6u7i8"

func newTestNorthSouth(tb testing.TB) *NorthSouth {
	tb.Helper()
	testutils.RequirePrivileged(tb)
	ns, err := NewNorthSouth(NorthSouthConfig{MaglevTableSize: 251, MaglevHashSeed: testSeed})
	testutils.SkipIfNotSupported(tb, err)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ns.Close() })
	return ns
}

// expectMaglev is the oracle: the backend Cilium's datapath picks for a
// new flow, from lb/maglev's table (Cilium's) of the active backends and
// Cilium's 5-tuple hash written in Go.
func expectMaglev(tb testing.TB, active []Backend, proto nodeplane.Protocol, client netip.AddrPort, dport uint16) netip.AddrPort {
	tb.Helper()
	b, err := maglev.New(maglev.Config{TableSize: 251, HashSeed: testSeed})
	if err != nil {
		tb.Fatal(err)
	}
	in := make([]maglev.Backend, len(active))
	for i, be := range active {
		key, _ := maglev.BackendKey(be.Addr, proto)
		in[i] = maglev.Backend{Key: key, ID: uint32(i), Weight: be.weight()}
	}
	table, err := b.Table(in)
	if err != nil {
		tb.Fatal(err)
	}
	seed, _ := base64.StdEncoding.DecodeString(testSeed)
	h := flowHash(client, dport, uint8(proto), binary.BigEndian.Uint32(seed[4:]), binary.BigEndian.Uint32(seed[8:]))
	return active[table[h%251]].Addr
}

func nsBackends(prefix string, n int, port uint16) []Backend {
	out := make([]Backend, n)
	for i := range out {
		out[i] = Backend{Addr: netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf(prefix, i+1)), port), Weight: uint16(1 + i%3)}
	}
	return out
}

func randomClient(r *rand.Rand, v6 bool) netip.AddrPort {
	port := uint16(1024 + r.IntN(60000))
	if v6 {
		var a [16]byte
		a[0], a[1] = 0x20, 0x01
		for i := 2; i < 16; i++ {
			a[i] = byte(r.Uint32())
		}
		return netip.AddrPortFrom(netip.AddrFrom16(a), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(r.Uint32()), byte(r.Uint32())}), port)
}

// TestPrivilegedNorthSouthMaglev runs packets through the XDP program
// (BPF_PROG_TEST_RUN): every new flow to a Maglev frontend goes to the
// backend Cilium would pick (lb/maglev's table, Cilium's 5-tuple hash),
// TCP and UDP, IPv4 and IPv6, with valid checksums after the rewrite, and
// the tc program translates the backend's reply back to the frontend.
func TestPrivilegedNorthSouthMaglev(t *testing.T) {
	ns := newTestNorthSouth(t)
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		fe       Frontend
		backends []Backend
	}{
		{Frontend{netip.MustParseAddrPort("10.99.0.1:80"), nodeplane.ProtoTCP}, nsBackends("10.20.%d.2", 5, 8080)},
		{Frontend{netip.MustParseAddrPort("10.10.0.1:30053"), nodeplane.ProtoUDP}, nsBackends("10.20.%d.2", 4, 53)},
		{Frontend{netip.MustParseAddrPort("[fd99::1]:443"), nodeplane.ProtoTCP}, nsBackends("fd20::%d", 6, 8443)},
		{Frontend{netip.MustParseAddrPort("[fd99::1]:53"), nodeplane.ProtoUDP}, nsBackends("fd20::%d", 3, 5353)},
	} {
		t.Run(tc.fe.String(), func(t *testing.T) {
			if err := ns.Upsert(Service{Frontend: tc.fe, Type: LoadBalancer, Algorithm: AlgorithmMaglev}, tc.backends); err != nil {
				t.Fatal(err)
			}
			hits := map[netip.AddrPort]int{}
			for range 300 {
				client := randomClient(r, tc.fe.Addr.Addr().Is6())
				pkt := testPkt{src: client, dst: tc.fe.Addr, proto: uint8(tc.fe.Protocol)}
				ret, out := runProg(t, ns.objs.NpNodeportXdp, pkt.bytes())
				if ret != xdpPass {
					t.Fatalf("verdict %d, want XDP_PASS", ret)
				}
				src, dst := parsePkt(t, out)
				want := expectMaglev(t, tc.backends, tc.fe.Protocol, client, tc.fe.Addr.Port())
				if src != client || dst != want {
					t.Fatalf("%s -> %s became %s -> %s, want %s -> %s", client, tc.fe.Addr, src, dst, client, want)
				}
				hits[dst]++

				reply := testPkt{src: dst, dst: client, proto: uint8(tc.fe.Protocol)}
				rret, rout := runProg(t, ns.objs.NpNodeportRevnat, reply.bytes())
				if rret != 0 {
					t.Fatalf("revnat verdict %d", rret)
				}
				rsrc, rdst := parsePkt(t, rout)
				if rsrc != tc.fe.Addr || rdst != client {
					t.Fatalf("reply %s -> %s became %s -> %s, want %s -> %s", dst, client, rsrc, rdst, tc.fe.Addr, client)
				}
			}
			if len(hits) != len(tc.backends) {
				t.Errorf("300 flows reached %d of %d backends: %v", len(hits), len(tc.backends), hits)
			}
		})
	}
}

// TestPrivilegedNorthSouthFlowsStay: removing a backend moves only the
// flows that were on it; a terminating backend keeps its flows and gets no
// new ones; random selection picks only active backends.
func TestPrivilegedNorthSouthFlowsStay(t *testing.T) {
	ns := newTestNorthSouth(t)
	r := rand.New(rand.NewPCG(3, 4))
	for _, alg := range []Algorithm{AlgorithmMaglev, AlgorithmRandom} {
		t.Run(alg.String(), func(t *testing.T) {
			fe := Frontend{netip.MustParseAddrPort("10.99.0.7:80"), nodeplane.ProtoTCP}
			svc := Service{Frontend: fe, Type: LoadBalancer, Algorithm: alg}
			backends := nsBackends("10.30.%d.2", 4, 80)
			if err := ns.Upsert(svc, backends); err != nil {
				t.Fatal(err)
			}
			send := func(client netip.AddrPort) netip.AddrPort {
				ret, out := runProg(t, ns.objs.NpNodeportXdp, testPkt{src: client, dst: fe.Addr, proto: 6}.bytes())
				if ret != xdpPass {
					t.Fatalf("verdict %d", ret)
				}
				_, dst := parsePkt(t, out)
				return dst
			}
			flows := map[netip.AddrPort]netip.AddrPort{}
			for range 400 {
				c := randomClient(r, false)
				flows[c] = send(c)
			}

			// backends[1] terminates: its flows stay, new flows avoid it.
			backends[1].State = BackendTerminating
			if err := ns.Upsert(svc, backends); err != nil {
				t.Fatal(err)
			}
			for c, be := range flows {
				if got := send(c); got != be {
					t.Fatalf("flow %s moved from %s to %s when %s started terminating", c, be, got, backends[1].Addr)
				}
			}
			for range 200 {
				if got := send(randomClient(r, false)); got == backends[1].Addr {
					t.Fatalf("a new flow went to terminating backend %s", got)
				}
			}

			// backends[2] is removed: only its flows move.
			removed := backends[2].Addr
			if err := ns.Upsert(svc, append(append([]Backend{}, backends[:2]...), backends[3:]...)); err != nil {
				t.Fatal(err)
			}
			moved := 0
			for c, be := range flows {
				got := send(c)
				switch {
				case be == removed && (got == removed || got == backends[1].Addr):
					t.Fatalf("flow %s of removed %s went to %s", c, removed, got)
				case be == removed:
					moved++
				case got != be:
					t.Fatalf("flow %s moved from %s to %s though its backend stays", c, be, got)
				}
			}
			if moved == 0 {
				t.Fatalf("no flow was on %s", removed)
			}
			if err := ns.Delete(fe); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestPrivilegedNorthSouthBadPackets: each kind of bad input has its
// outcome, counted under Cilium's drop reason, in the XDP program and in
// its tc fallback. Each drop, and nothing else, yields one drop record,
// which package flow decodes to a DROPPED flow with that reason, the
// packet's addresses and ports, observation point FROM_NETWORK and the
// interface.
func TestPrivilegedNorthSouthBadPackets(t *testing.T) {
	ns := newTestNorthSouth(t)
	drops, err := ns.NewDropReader()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { drops.Close() })
	dec := flow.NewDecoder(flow.DecoderConfig{NodeName: "lb-node"})
	vip := netip.MustParseAddrPort("10.99.0.9:80")
	vip6 := netip.MustParseAddrPort("[fd99::9]:80")
	// Only a terminating backend: no backend takes new flows.
	for _, fe := range []netip.AddrPort{vip, vip6} {
		be := netip.MustParseAddrPort("10.40.0.2:80")
		if fe.Addr().Is6() {
			be = netip.MustParseAddrPort("[fd40::2]:80")
		}
		if err := ns.Upsert(Service{Frontend: Frontend{fe, nodeplane.ProtoTCP}, Type: LoadBalancer, Algorithm: AlgorithmMaglev},
			[]Backend{{Addr: be, State: BackendTerminating}}); err != nil {
			t.Fatal(err)
		}
	}
	client := netip.MustParseAddrPort("198.18.0.1:40000")
	client6 := netip.MustParseAddrPort("[2001:db8::1]:40000")
	other := netip.MustParseAddrPort("10.99.0.10:80")
	for _, tc := range []struct {
		name    string
		pkt     testPkt
		verdict uint32
		reason  monitor.DropReason
	}{
		{"no active backend", testPkt{src: client, dst: vip, proto: 6}, xdpDrop, monitor.DropNoService},
		{"no active backend v6", testPkt{src: client6, dst: vip6, proto: 6}, xdpDrop, monitor.DropNoService},
		{"first fragment to a frontend", testPkt{src: client, dst: vip, proto: 6, frag: true}, xdpDrop, monitor.DropFragNoSupport},
		{"first fragment to a frontend address, other port", testPkt{src: client, dst: netip.AddrPortFrom(vip.Addr(), 81), proto: 6, frag: true}, xdpPass, 0},
		{"later fragment to a frontend address", testPkt{src: client, dst: vip, proto: 6, frag: true, fragOff: 3}, xdpPass, 0},
		{"last fragment to a frontend address", testPkt{src: client, dst: vip, proto: 6, fragOff: 3}, xdpPass, 0},
		{"truncated L4 to a frontend address", testPkt{src: client, dst: vip, proto: 6, truncL4: true}, xdpDrop, monitor.DropCTInvalidHeader},
		{"truncated L4 to a frontend address v6", testPkt{src: client6, dst: vip6, proto: 6, truncL4: true}, xdpDrop, monitor.DropCTInvalidHeader},
		{"truncated IPv4 header", testPkt{src: client, dst: vip, proto: 6, truncL3: true}, xdpDrop, monitor.DropInvalidPacket},
		{"truncated IPv6 header", testPkt{src: client6, dst: vip6, proto: 6, truncL3: true}, xdpDrop, monitor.DropInvalidPacket},
		{"not a frontend", testPkt{src: client, dst: other, proto: 6}, xdpPass, 0},
		{"frontend address, other port", testPkt{src: client, dst: netip.AddrPortFrom(vip.Addr(), 81), proto: 6}, xdpPass, 0},
		{"frontend, other protocol", testPkt{src: client, dst: vip, proto: 17}, xdpPass, 0},
		{"fragment to another address", testPkt{src: client, dst: other, proto: 17, frag: true}, xdpPass, 0},
	} {
		for _, prog := range []struct {
			name           string
			p              *ebpf.Program
			drop, passCode uint32
		}{{"xdp", ns.objs.NpNodeportXdp, xdpDrop, xdpPass}, {"tc", ns.objs.NpNodeportTc, 2, 0}} {
			if tc.pkt.truncL3 && prog.name == "tc" {
				// BPF_PROG_TEST_RUN refuses an skb whose IP header
				// is truncated (EINVAL): only XDP can be fed one.
				continue
			}
			t.Run(tc.name+"/"+prog.name, func(t *testing.T) {
				before, err := ns.Drops()
				if err != nil {
					t.Fatal(err)
				}
				in := tc.pkt.bytes()
				ret, out := runProg(t, prog.p, in)
				want := prog.passCode
				if tc.verdict == xdpDrop {
					want = prog.drop
				}
				if ret != want {
					t.Fatalf("verdict %d, want %d", ret, want)
				}
				after, err := ns.Drops()
				if err != nil {
					t.Fatal(err)
				}
				for r, n := range after {
					want := before[r]
					if r == tc.reason {
						want++
					}
					if n != want {
						t.Errorf("drops[%s] = %d, want %d", r, n, want)
					}
				}
				if tc.verdict == xdpPass && string(out) != string(in) {
					t.Errorf("a passed packet was changed")
				}
				checkDropRecord(t, drops, dec, tc.pkt, tc.reason)
			})
		}
	}
}

// checkDropRecord reads what the last run wrote to the drop ring: one
// record for a drop with reason, decoded by flow, nothing for a pass.
func checkDropRecord(t *testing.T, r *DropReader, dec *flow.Decoder, pkt testPkt, reason monitor.DropReason) {
	t.Helper()
	var recs [][]byte
	for {
		r.SetDeadline(time.Now().Add(20 * time.Millisecond))
		b, err := r.ReadRaw()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, slices.Clone(b))
	}
	if reason == 0 {
		if len(recs) != 0 {
			t.Fatalf("a passed packet left %d drop records", len(recs))
		}
		return
	}
	if len(recs) != 1 {
		t.Fatalf("%d drop records, want 1", len(recs))
	}
	var f flow.Flow
	if err := dec.Decode(recs[0], &f); err != nil {
		t.Fatalf("flow cannot decode the record: %v", err)
	}
	if f.Verdict != flow.Dropped || f.DropReason != reason || f.EventType.SubType != int32(reason) {
		t.Errorf("verdict %v reason %v subtype %d, want DROPPED %v", f.Verdict, f.DropReason, f.EventType.SubType, reason)
	}
	if f.TraceObservationPoint != flow.FromNetwork || f.TrafficDirection != flow.Ingress || f.NodeName != "lb-node" {
		t.Errorf("point %v direction %v node %q", f.TraceObservationPoint, f.TrafficDirection, f.NodeName)
	}
	if !pkt.truncL3 && (f.IP.Source != pkt.src.Addr() || f.IP.Destination != pkt.dst.Addr()) {
		t.Errorf("addresses %s -> %s, want %s -> %s", f.IP.Source, f.IP.Destination, pkt.src.Addr(), pkt.dst.Addr())
	}
	if !pkt.truncL4 && !pkt.truncL3 && (f.L4.SourcePort != pkt.src.Port() || f.L4.DestinationPort != pkt.dst.Port() || uint8(f.L4.Protocol) != pkt.proto) {
		t.Errorf("L4 %+v, want %s -> %s proto %d", f.L4, pkt.src, pkt.dst, pkt.proto)
	}
	if pkt.proto == 6 && !pkt.truncL4 && !pkt.truncL3 && f.L4.TCPFlags != monitor.TCPFlagSYN {
		t.Errorf("TCP flags %v, want SYN", f.L4.TCPFlags)
	}
}

// npTuple and npRev mirror struct np_tuple and struct np_rev.
type npTuple struct {
	Saddr, Daddr [16]byte
	Sport, Dport uint16 // network byte order
	Proto        uint8
	Family       uint8
	_            uint16
}

type npRev struct {
	Addr  [16]byte
	Port  uint16
	SNAT  uint8
	_     uint8
	CAddr [16]byte
	CPort uint16
	_     uint16
}

// TestPrivilegedNorthSouthSNAT: in SNAT mode a new flow leaves with the
// node's address and a NAT port from 61000–65535 as its source, to the
// backend Maglev picks; the backend's reply, run through the same XDP
// program, comes back from the frontend to the client; later packets of
// the flow keep backend and NAT port; flows to one backend never share a
// NAT port. With every NAT port of a backend taken, or the NAT table
// full, a new flow is dropped with DROP_NAT_NO_MAPPING and counted, while
// established flows keep their translation. GC keeps live flows and
// removes expired ones, both directions.
func TestPrivilegedNorthSouthSNAT(t *testing.T) {
	testutils.RequirePrivileged(t)
	snat4, snat6 := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("fd00:1::1")
	ns, err := NewNorthSouth(NorthSouthConfig{MaglevTableSize: 251, MaglevHashSeed: testSeed, SNATAddrs: []netip.Addr{snat4, snat6}})
	testutils.SkipIfNotSupported(t, err)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	r := rand.New(rand.NewPCG(5, 6))
	for _, tc := range []struct {
		fe       Frontend
		backends []Backend
		snat     netip.Addr
	}{
		{Frontend{netip.MustParseAddrPort("10.99.0.1:80"), nodeplane.ProtoTCP}, nsBackends("10.20.%d.2", 4, 8080), snat4},
		{Frontend{netip.MustParseAddrPort("10.99.0.1:53"), nodeplane.ProtoUDP}, nsBackends("10.20.%d.2", 3, 53), snat4},
		{Frontend{netip.MustParseAddrPort("[fd99::1]:443"), nodeplane.ProtoTCP}, nsBackends("fd20::%d", 5, 8443), snat6},
		{Frontend{netip.MustParseAddrPort("[fd99::1]:53"), nodeplane.ProtoUDP}, nsBackends("fd20::%d", 2, 5353), snat6},
	} {
		t.Run(tc.fe.String(), func(t *testing.T) {
			if err := ns.Upsert(Service{Frontend: tc.fe, Type: LoadBalancer, Algorithm: AlgorithmMaglev}, tc.backends); err != nil {
				t.Fatal(err)
			}
			used := map[netip.AddrPort]netip.AddrPort{} // backend + NAT port -> client
			for range 200 {
				client := randomClient(r, tc.fe.Addr.Addr().Is6())
				pkt := testPkt{src: client, dst: tc.fe.Addr, proto: uint8(tc.fe.Protocol)}.bytes()
				ret, out := runProg(t, ns.objs.NpNodeportXdp, pkt)
				if ret != xdpPass {
					drops, _ := ns.Drops()
					t.Fatalf("%s -> %s: verdict %d (drops %v)", client, tc.fe.Addr, ret, drops)
				}
				src, dst := parsePkt(t, out)
				want := expectMaglev(t, tc.backends, tc.fe.Protocol, client, tc.fe.Addr.Port())
				if dst != want || src.Addr() != tc.snat || src.Port() < nat.DefaultPortMin || src.Port() > nat.DefaultPortMax {
					t.Fatalf("%s -> %s became %s -> %s, want %s:[61000,65535] -> %s", client, tc.fe.Addr, src, dst, tc.snat, want)
				}
				key := netip.AddrPortFrom(dst.Addr(), src.Port())
				if other, ok := used[key]; ok {
					t.Fatalf("clients %s and %s share NAT port %d to %s", other, client, src.Port(), dst)
				}
				used[key] = client

				// The next packet of the flow: same backend, same port.
				_, out2 := runProg(t, ns.objs.NpNodeportXdp, pkt)
				if src2, dst2 := parsePkt(t, out2); src2 != src || dst2 != dst {
					t.Fatalf("second packet of %s: %s -> %s, first was %s -> %s", client, src2, dst2, src, dst)
				}

				reply := testPkt{src: dst, dst: src, proto: uint8(tc.fe.Protocol)}
				rret, rout := runProg(t, ns.objs.NpNodeportXdp, reply.bytes())
				if rret != xdpPass {
					t.Fatalf("reply verdict %d", rret)
				}
				if rsrc, rdst := parsePkt(t, rout); rsrc != tc.fe.Addr || rdst != client {
					t.Fatalf("reply %s -> %s became %s -> %s, want %s -> %s", dst, src, rsrc, rdst, tc.fe.Addr, client)
				}
			}
		})
	}

	t.Run("NAT ports exhausted", func(t *testing.T) {
		fe := Frontend{netip.MustParseAddrPort("10.99.0.5:80"), nodeplane.ProtoTCP}
		be := netip.MustParseAddrPort("10.20.9.2:8080")
		if err := ns.Upsert(Service{Frontend: fe, Type: LoadBalancer, Algorithm: AlgorithmMaglev}, []Backend{{Addr: be}}); err != nil {
			t.Fatal(err)
		}
		// Take every NAT port towards the backend.
		k := nat.Key{SrcPort: nat.PortBytes(be.Port()), Proto: 6, Family: nat.FamilyV4, Dir: nat.Ingress}
		k.SrcAddr, _ = nat.AddrBytes(be.Addr())
		k.DstAddr, _ = nat.AddrBytes(snat4)
		v := nat.Entry{Flags: nat.FlagRevDNAT, Created: uint64(nat.Now())}
		var keys []nat.Key
		for port := nat.DefaultPortMin; port <= nat.DefaultPortMax; port++ {
			k.DstPort = nat.PortBytes(uint16(port))
			keys = append(keys, k)
			if err := ns.objs.NpNat.Put(&k, &v); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() {
			for _, k := range keys {
				_ = ns.objs.NpNat.Delete(&k)
			}
		})
		before, _ := ns.Drops()
		ret, _ := runProg(t, ns.objs.NpNodeportXdp, testPkt{src: netip.MustParseAddrPort("198.18.7.7:4000"), dst: fe.Addr, proto: 6}.bytes())
		after, _ := ns.Drops()
		if ret != xdpDrop || after[monitor.DropNATNoMapping] != before[monitor.DropNATNoMapping]+1 {
			t.Fatalf("verdict %d, NAT drops %d -> %d; want XDP_DROP counted as %s", ret,
				before[monitor.DropNATNoMapping], after[monitor.DropNATNoMapping], monitor.DropNATNoMapping)
		}
	})

	t.Run("NAT table full", func(t *testing.T) {
		fe := Frontend{netip.MustParseAddrPort("10.99.0.1:80"), nodeplane.ProtoTCP}
		old := testPkt{src: netip.MustParseAddrPort("198.18.8.8:4444"), dst: fe.Addr, proto: 6}.bytes()
		_, out := runProg(t, ns.objs.NpNodeportXdp, old)
		src, dst := parsePkt(t, out)
		// Fill the table with flows of nobody.
		var keys []nat.Key
		t.Cleanup(func() {
			for _, k := range keys {
				_ = ns.objs.NpNat.Delete(&k)
			}
		})
		for i := 0; ; i++ {
			k := nat.Key{SrcAddr: [16]byte{198, 19, byte(i >> 8), byte(i)}, DstAddr: [16]byte{10, 0, 0, 1}, SrcPort: nat.PortBytes(1), DstPort: nat.PortBytes(2), Proto: 17, Family: nat.FamilyV4}
			if err := ns.objs.NpNat.Put(&k, &nat.Entry{Seen: uint64(nat.Now())}); err != nil {
				if i == 0 {
					t.Fatal(err)
				}
				break
			}
			keys = append(keys, k)
		}
		// The established flow keeps its translation.
		_, out = runProg(t, ns.objs.NpNodeportXdp, old)
		if src2, dst2 := parsePkt(t, out); src2 != src || dst2 != dst {
			t.Fatalf("established flow became %s -> %s in a full table, was %s -> %s", src2, dst2, src, dst)
		}
		before, _ := ns.Drops()
		ret, _ := runProg(t, ns.objs.NpNodeportXdp, testPkt{src: netip.MustParseAddrPort("198.18.9.9:4000"), dst: fe.Addr, proto: 6}.bytes())
		after, _ := ns.Drops()
		if ret != xdpDrop || after[monitor.DropNATNoMapping] != before[monitor.DropNATNoMapping]+1 {
			t.Fatalf("new flow in a full table: verdict %d, NAT drops %d -> %d; want XDP_DROP counted as %s", ret,
				before[monitor.DropNATNoMapping], after[monitor.DropNATNoMapping], monitor.DropNATNoMapping)
		}
	})

	t.Run("GC", func(t *testing.T) {
		flows, err := ns.NATFlows()
		if err != nil || flows < 800 {
			t.Fatalf("%d flows (%v), want the 800 of the tests above", flows, err)
		}
		if n, err := ns.GCNAT(); err != nil || n != 0 {
			t.Fatalf("GC of fresh flows removed %d (%v)", n, err)
		}
		// Six hours and a bit later every flow has expired.
		n, err := ns.nat.GC(nat.Now() + nat.DefaultTCPLifetime + time.Minute)
		if err != nil || n != flows {
			t.Fatalf("GC removed %d of %d flows (%v)", n, flows, err)
		}
		var k nat.Key
		var v nat.Entry
		left := 0
		for it := ns.objs.NpNat.Iterate(); it.Next(&k, &v); {
			left++
		}
		if left != 0 {
			t.Errorf("%d entries left after GC", left)
		}
	})
}

// TestPrivilegedNorthSouthRefusesClusterIP: a ClusterIP frontend is
// cluster-internal; NorthSouth would publish it on the external interface,
// so it refuses it rather than take the type and ignore it.
func TestPrivilegedNorthSouthRefusesClusterIP(t *testing.T) {
	testutils.RequirePrivileged(t)
	ns, err := NewNorthSouth(NorthSouthConfig{})
	testutils.SkipIfNotSupported(t, err)
	defer ns.Close()
	fe := Frontend{netip.MustParseAddrPort("10.96.0.1:80"), nodeplane.ProtoTCP}
	be := []Backend{{Addr: netip.MustParseAddrPort("10.20.0.2:8080")}}
	if err := ns.Upsert(Service{Frontend: fe}, be); !errors.Is(err, ErrInvalidService) {
		t.Fatalf("Upsert of a ClusterIP service: %v, want ErrInvalidService", err)
	}
	for _, typ := range []ServiceType{NodePort, ExternalIP, LoadBalancer} {
		if err := ns.Upsert(Service{Frontend: fe, Type: typ}, be); err != nil {
			t.Errorf("Upsert of a %v service: %v", typ, err)
		}
	}
}

// TestPrivilegedNorthSouthNATConfig: a NATMap that is not a NAT table
// and a bad port range are refused before anything is loaded; a NAT
// table passed in is the one the programs use, and stays open after
// Close.
func TestPrivilegedNorthSouthNATConfig(t *testing.T) {
	testutils.RequirePrivileged(t)
	wrong, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 40, ValueSize: 16, MaxEntries: 65536})
	testutils.SkipIfNotSupported(t, err)
	if err != nil {
		t.Fatal(err)
	}
	defer wrong.Close()
	for _, cfg := range []NorthSouthConfig{
		{NATMap: wrong},
		{NATPortMin: 100},
		{NATPortMin: 2000, NATPortMax: 1000},
	} {
		if ns, err := NewNorthSouth(cfg); !errors.Is(err, ErrInvalidConfig) {
			if ns != nil {
				ns.Close()
			}
			t.Errorf("%+v: %v, want ErrInvalidConfig", cfg, err)
		}
	}
	table, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 40, ValueSize: 56, MaxEntries: 65536})
	if err != nil {
		t.Fatal(err)
	}
	defer table.Close()
	snat := netip.MustParseAddr("10.1.0.1")
	ns, err := NewNorthSouth(NorthSouthConfig{MaglevTableSize: 251, SNATAddrs: []netip.Addr{snat}, NATMap: table, NATGCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	fe := Frontend{netip.MustParseAddrPort("10.99.0.1:80"), nodeplane.ProtoTCP}
	if err := ns.Upsert(Service{Frontend: fe, Type: LoadBalancer}, []Backend{{Addr: netip.MustParseAddrPort("10.20.0.2:8080")}}); err != nil {
		t.Fatal(err)
	}
	runProg(t, ns.objs.NpNodeportXdp, testPkt{src: netip.MustParseAddrPort("198.18.0.1:1000"), dst: fe.Addr, proto: 6}.bytes())
	if err := ns.Close(); err != nil {
		t.Fatal(err)
	}
	n := 0
	var k nat.Key
	var v nat.Entry
	for it := table.Iterate(); it.Next(&k, &v); {
		n++
	}
	if n != 2 {
		t.Errorf("the table passed in holds %d entries after one SNAT flow and Close, want 2", n)
	}
}
