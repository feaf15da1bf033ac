package datapath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/nat"
)

// runNAT runs prog (np_nat_egress or np_nat_ingress) on pkt with
// BPF_PROG_TEST_RUN and returns the verdict and the packet it left.
func runNAT(t *testing.T, prog *ebpf.Program, pkt []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(pkt)+256)
	opts := ebpf.RunOptions{Data: pkt, DataOut: out}
	ret, err := prog.Run(&opts)
	if err != nil {
		t.Fatal(err)
	}
	return ret, out[:len(opts.DataOut)]
}

// natPort reads the translated source port (echo identifier) of an
// egress packet.
func natPort(pkt []byte, p TestPacket) uint16 {
	off := 14 + 20
	if p.Src.Is6() {
		off = 14 + 40
	}
	if p.Proto == nodeplane.ProtoICMP || p.Proto == nodeplane.ProtoICMPv6 {
		off += 4
	}
	return binary.BigEndian.Uint16(pkt[off:])
}

// sameWire compares packets, taking the two forms of a one's-complement
// zero (0x0000, 0xffff) in a TCP or ICMP checksum field as equal.
func sameWire(got, want []byte) bool {
	if bytes.Equal(got, want) {
		return true
	}
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] && !(got[i]^want[i] == 0xff && (got[i] == 0 || got[i] == 0xff)) {
			return false
		}
	}
	return true
}

// TestPrivilegedNATTestRun runs crafted packets through the masquerading
// programs: each translated packet must be byte for byte the packet
// TestPacket builds for the translated tuple (so every checksum is
// right, by a Go computation independent of the BPF updates), for TCP,
// UDP and ICMP echo over IPv4 and IPv6; a port in the range is kept, as
// Cilium does; the reply, run through the ingress program, must come
// back as the packet to the pod. What NAT leaves alone must leave
// unchanged.
func TestPrivilegedNATTestRun(t *testing.T) {
	d, _, _, wan, _ := newMasqWorld(t, Config{})
	m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: masqNodeAddr, Address6: masqNodeAddr6, GCInterval: -1,
		Exclude: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00:0:0:10::/64")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	pod4, pod6 := netip.MustParseAddr("10.1.0.10"), netip.MustParseAddr("fd00:0:0:10::10")
	payload := []byte("some payload bytes")

	for _, tc := range []struct {
		name string
		pkt  TestPacket
		keep bool // the source port is in the range: kept
	}{
		{"TCPv4", TestPacket{Src: pod4, Dst: masqWorldAddr, Proto: nodeplane.ProtoTCP, SrcPort: 40000, DstPort: 80, TCPFlags: TCPSyn, Payload: payload}, false},
		{"UDPv4", TestPacket{Src: pod4, Dst: masqWorldAddr, Proto: nodeplane.ProtoUDP, SrcPort: 61234, DstPort: 53, Payload: payload}, true},
		{"ICMPv4", TestPacket{Src: pod4, Dst: masqWorldAddr, Proto: nodeplane.ProtoICMP, ICMPType: 8, ICMPID: 7, Payload: payload}, false},
		{"TCPv6", TestPacket{Src: pod6, Dst: masqWorldAddr6, Proto: nodeplane.ProtoTCP, SrcPort: 40000, DstPort: 443, TCPFlags: TCPSyn | TCPAck, Payload: payload}, false},
		{"UDPv6", TestPacket{Src: pod6, Dst: masqWorldAddr6, Proto: nodeplane.ProtoUDP, SrcPort: 5000, DstPort: 53, Payload: payload}, false},
		{"ICMPv6", TestPacket{Src: pod6, Dst: masqWorldAddr6, Proto: nodeplane.ProtoICMPv6, ICMPType: 128, ICMPID: 0xbeef, Payload: payload}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := masqNodeAddr
			if tc.pkt.Src.Is6() {
				node = masqNodeAddr6
			}
			ret, out := runNAT(t, m.egress(), mustBytes(t, tc.pkt))
			if ret != 0 {
				t.Fatalf("egress verdict %d", ret)
			}
			port := natPort(out, tc.pkt)
			if port < nat.DefaultPortMin || tc.keep && port != tc.pkt.SrcPort {
				t.Fatalf("egress port %d; want one of 61000-65535 (keep %v)", port, tc.keep)
			}
			want := tc.pkt
			want.Src = node
			if tc.pkt.ICMPType != 0 {
				want.ICMPID = port
			} else {
				want.SrcPort = port
			}
			if !sameWire(out, mustBytes(t, want)) {
				t.Fatalf("egress:\n got % x\nwant % x", out, mustBytes(t, want))
			}
			// The same flow again: the same port.
			if _, again := runNAT(t, m.egress(), mustBytes(t, tc.pkt)); natPort(again, tc.pkt) != port {
				t.Errorf("second packet got port %d, first %d", natPort(again, tc.pkt), port)
			}

			reply := TestPacket{Src: tc.pkt.Dst, Dst: node, Proto: tc.pkt.Proto, SrcPort: tc.pkt.DstPort, DstPort: port, TCPFlags: TCPAck, Payload: payload}
			back := reply
			back.Dst = tc.pkt.Src
			back.DstPort = tc.pkt.SrcPort
			if tc.pkt.ICMPType != 0 {
				reply.SrcPort, reply.DstPort, back.SrcPort, back.DstPort = 0, 0, 0, 0
				reply.ICMPType = map[bool]uint8{false: 0, true: 129}[tc.pkt.Src.Is6()]
				back.ICMPType = reply.ICMPType
				reply.ICMPID, back.ICMPID = port, tc.pkt.ICMPID
			}
			ret, in := runNAT(t, m.ingress(), mustBytes(t, reply))
			if ret != 0 || !sameWire(in, mustBytes(t, back)) {
				t.Fatalf("ingress verdict %d:\n got % x\nwant % x", ret, in, mustBytes(t, back))
			}
		})
	}

	// ICMP errors about a translated flow come back to the pod: the
	// outer destination and the quoted source (address, port or echo
	// identifier) are the pod's again, every checksum right but the
	// quoted L4 one, which stays as it was.
	for _, tc := range []struct {
		name  string
		flow  TestPacket
		typ   uint8
		code  uint8
		proto nodeplane.Protocol
	}{
		{"port unreachable", TestPacket{Src: pod4, Dst: masqWorldAddr, Proto: nodeplane.ProtoUDP, SrcPort: 5001, DstPort: 9999}, 3, 3, nodeplane.ProtoICMP},
		{"fragmentation needed", TestPacket{Src: pod4, Dst: masqWorldAddr, Proto: nodeplane.ProtoTCP, SrcPort: 5002, DstPort: 80, TCPFlags: TCPAck}, 3, 4, nodeplane.ProtoICMP},
		{"echo time exceeded", TestPacket{Src: pod4, Dst: masqWorldAddr, Proto: nodeplane.ProtoICMP, ICMPType: 8, ICMPID: 77}, 11, 0, nodeplane.ProtoICMP},
		{"IPv6 packet too big", TestPacket{Src: pod6, Dst: masqWorldAddr6, Proto: nodeplane.ProtoTCP, SrcPort: 5003, DstPort: 443, TCPFlags: TCPAck}, 2, 0, nodeplane.ProtoICMPv6},
		{"IPv6 port unreachable", TestPacket{Src: pod6, Dst: masqWorldAddr6, Proto: nodeplane.ProtoUDP, SrcPort: 5004, DstPort: 9999}, 1, 4, nodeplane.ProtoICMPv6},
	} {
		t.Run("ICMP error/"+tc.name, func(t *testing.T) {
			node := masqNodeAddr
			hl := 20
			if tc.flow.Src.Is6() {
				node, hl = masqNodeAddr6, 40
			}
			_, out := runNAT(t, m.egress(), mustBytes(t, tc.flow))
			port := natPort(out, tc.flow)
			// The error quotes the translated packet's IP header and
			// the first 8 bytes of its L4 header.
			quoted := out[14 : 14+hl+8]
			errPkt := TestPacket{Src: tc.flow.Dst, Dst: node, Proto: tc.proto, ICMPType: tc.typ, ICMPCode: tc.code, Payload: quoted}
			orig := mustBytes(t, tc.flow)[14 : 14+hl+8]
			want := bytes.Clone(orig)
			// The quoted L4 checksum stays the translated packet's.
			if off := l4ChecksumOffset(tc.flow.Proto); off >= 0 && off+2 <= 8 {
				copy(want[hl+off:hl+off+2], quoted[hl+off:hl+off+2])
			}
			wantPkt := TestPacket{Src: tc.flow.Dst, Dst: tc.flow.Src, Proto: tc.proto, ICMPType: tc.typ, ICMPCode: tc.code, Payload: want}
			ret, in := runNAT(t, m.ingress(), mustBytes(t, errPkt))
			if ret != 0 || !sameWire(in, mustBytes(t, wantPkt)) {
				t.Fatalf("port %d, verdict %d:\n got % x\nwant % x", port, ret, in, mustBytes(t, wantPkt))
			}
		})
	}

	// A reply to lb's SNAT flow (NP_NAT_F_REVDNAT) that reaches the
	// masquerading ingress program (lb's own program not on this
	// interface) comes back from the frontend to the client.
	t.Run("service reply", func(t *testing.T) {
		client, fe := netip.MustParseAddrPort("198.51.100.2:4321"), netip.MustParseAddrPort("198.51.100.1:30080")
		k := natKey{SrcAddr: addr16(masqWorldAddr), DstAddr: addr16(masqNodeAddr), SrcPort: nat.PortBytes(9000), DstPort: nat.PortBytes(62000), Proto: 6, Family: nat.FamilyV4, Dir: nat.Ingress}
		v := natEntry{Addr: addr16(client.Addr()), Port: nat.PortBytes(client.Port()), Peer: addr16(fe.Addr()), PeerPort: nat.PortBytes(fe.Port()), Flags: nat.FlagRevDNAT, Created: uint64(nat.Now())}
		if err := d.maps.nat.Put(k, v); err != nil {
			t.Fatal(err)
		}
		defer d.maps.nat.Delete(k)
		reply := TestPacket{Src: masqWorldAddr, Dst: masqNodeAddr, Proto: nodeplane.ProtoTCP, SrcPort: 9000, DstPort: 62000, TCPFlags: TCPAck, Payload: payload}
		want := TestPacket{Src: fe.Addr(), Dst: client.Addr(), Proto: nodeplane.ProtoTCP, SrcPort: fe.Port(), DstPort: client.Port(), TCPFlags: TCPAck, Payload: payload}
		ret, in := runNAT(t, m.ingress(), mustBytes(t, reply))
		if ret != 0 || !sameWire(in, mustBytes(t, want)) {
			t.Fatalf("verdict %d:\n got % x\nwant % x", ret, in, mustBytes(t, want))
		}
	})

	for _, tc := range []struct {
		name string
		prog *ebpf.Program
		pkt  TestPacket
	}{
		{"excluded destination", m.egress(), TestPacket{Src: pod4, Dst: netip.MustParseAddr("10.2.0.1"), Proto: nodeplane.ProtoTCP, SrcPort: 1, DstPort: 2}},
		{"excluded IPv6 destination", m.egress(), TestPacket{Src: pod6, Dst: netip.MustParseAddr("fd00:0:0:10::99"), Proto: nodeplane.ProtoUDP, SrcPort: 1, DstPort: 2}},
		{"not an endpoint", m.egress(), TestPacket{Src: netip.MustParseAddr("10.1.0.99"), Dst: masqWorldAddr, Proto: nodeplane.ProtoTCP, SrcPort: 1, DstPort: 2}},
		{"the node itself", m.egress(), TestPacket{Src: masqNodeAddr, Dst: masqWorldAddr, Proto: nodeplane.ProtoTCP, SrcPort: 1, DstPort: 2}},
		{"ICMP error out", m.egress(), TestPacket{Src: pod4, Dst: masqWorldAddr, Proto: nodeplane.ProtoICMP, ICMPType: 3, ICMPCode: 3}},
		{"ICMP error about no flow", m.ingress(), TestPacket{Src: masqWorldAddr, Dst: masqNodeAddr, Proto: nodeplane.ProtoICMP, ICMPType: 3, ICMPCode: 3,
			Payload: mustBytes(t, TestPacket{Src: masqNodeAddr, Dst: masqWorldAddr, Proto: nodeplane.ProtoUDP, SrcPort: 61999, DstPort: 9})[14:42]}},
		{"ICMP echo reply out", m.egress(), TestPacket{Src: pod4, Dst: masqWorldAddr, Proto: nodeplane.ProtoICMP, ICMPType: 0, ICMPID: 9}},
		{"reply to no flow", m.ingress(), TestPacket{Src: masqWorldAddr, Dst: masqNodeAddr, Proto: nodeplane.ProtoTCP, SrcPort: 80, DstPort: 61001}},
		{"not to the node", m.ingress(), TestPacket{Src: masqWorldAddr, Dst: netip.MustParseAddr("203.0.113.9"), Proto: nodeplane.ProtoUDP, SrcPort: 80, DstPort: 61001}},
	} {
		t.Run("untouched/"+tc.name, func(t *testing.T) {
			pkt := mustBytes(t, tc.pkt)
			ret, out := runNAT(t, tc.prog, pkt)
			if ret != 0 || !bytes.Equal(out, pkt) {
				t.Errorf("verdict %d, packet changed:\n got % x\nwant % x", ret, out, pkt)
			}
		})
	}
}

// TestPrivilegedNATCollisionTestRun: a new flow whose candidate ports are
// taken keeps trying the next ones until the free one. With 8 node ports
// and all but 61007 taken for the server's address and port, a SYN from
// the pod's port 61000 (in the range, so the search starts there and
// collides first, whatever the random source) leaves from 61007, and so
// does each of 16 flows from ports outside the range (random starts).
// On kernels before 6.4 a map update's error reaches the program
// zero-extended: a search that compared it as a 64-bit -EEXIST stopped at
// the first collision and dropped the flow (DROP_NAT_NO_MAPPING), which
// this test shows deterministically in the 6.1 guest.
func TestPrivilegedNATCollisionTestRun(t *testing.T) {
	d, _, _, wan, _ := newMasqWorld(t, Config{})
	const portMin, portMax, free = 61000, 61007, 61007
	m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: masqNodeAddr, PortMin: portMin, PortMax: portMax, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	taken := natKey{SrcAddr: addr16(masqWorldAddr), DstAddr: addr16(masqNodeAddr), SrcPort: nat.PortBytes(80), Proto: 6, Family: nat.FamilyV4, Dir: nat.Ingress}
	for p := portMin; p < free; p++ {
		taken.DstPort = nat.PortBytes(uint16(p))
		if err := d.maps.nat.Put(taken, natEntry{Addr: addr16(netip.MustParseAddr("10.9.9.9")), Port: nat.PortBytes(1), Created: uint64(nat.Now())}); err != nil {
			t.Fatal(err)
		}
	}
	pod := netip.MustParseAddr("10.1.0.10")
	sports := []uint16{portMin}
	for i := range 16 {
		sports = append(sports, uint16(40000+i))
	}
	for i, sport := range sports {
		syn := TestPacket{Src: pod, Dst: masqWorldAddr, Proto: nodeplane.ProtoTCP, SrcPort: sport, DstPort: 80, TCPFlags: TCPSyn}
		ret, out := runNAT(t, m.egress(), mustBytes(t, syn))
		if ret != 0 {
			drops, _ := m.Drops()
			t.Fatalf("flow %d from port %d: verdict %d (drops %v), want it sent from %d", i, sport, ret, drops, free)
		}
		if got := natPort(out, syn); got != free {
			t.Fatalf("flow %d from port %d left from %d, want the free %d", i, sport, got, free)
		}
		// Free the port again for the next flow: both of its entries.
		fwd := natKey{SrcAddr: addr16(pod), DstAddr: addr16(masqWorldAddr), SrcPort: nat.PortBytes(sport), DstPort: nat.PortBytes(80), Proto: 6, Family: nat.FamilyV4, Dir: nat.Egress}
		rev := taken
		rev.DstPort = nat.PortBytes(free)
		for _, k := range []natKey{fwd, rev} {
			if err := d.maps.nat.Delete(k); err != nil {
				t.Fatalf("flow %d: delete %+v: %v", i, k, err)
			}
		}
	}
}
