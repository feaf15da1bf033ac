package datapath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
	protoGRE    = 47
)

// testRunWorld is the two-endpoint world of the BPF_PROG_TEST_RUN tests: A
// (identity 1000) and B (identity 2000) are local, 192.0.2.0/24 and
// 2001:db8::/32 are a remote peer with identity 3000, the rest is world.
type testRunWorld struct {
	d    *Datapath
	a, b *Endpoint
}

const (
	idA      identity.ID = 1000
	idB      identity.ID = 2000
	idRemote identity.ID = 3000
)

var (
	addrA    = netip.MustParseAddr("10.0.0.1")
	addrB    = netip.MustParseAddr("10.0.0.2")
	addrA6   = netip.MustParseAddr("fd00::1")
	addrB6   = netip.MustParseAddr("fd00::2")
	remote   = netip.MustParseAddr("192.0.2.10")
	remote6  = netip.MustParseAddr("2001:db8::10")
	world    = netip.MustParseAddr("198.51.100.1")
	spoofed  = netip.MustParseAddr("10.0.0.99")
	allow    = mapstate.Entry{}
	denyThis = mapstate.Entry{Deny: true}
)

func newTestRunWorld(t *testing.T) *testRunWorld {
	d, _ := newTestDatapath(t, Config{})
	w := &testRunWorld{
		d: d,
		a: addDetached(t, d, 1, idA, addrA.String(), addrA6.String()),
		b: addDetached(t, d, 2, idB, addrB.String(), addrB6.String()),
	}
	for _, p := range []string{"192.0.2.0/24", "2001:db8::/32"} {
		if err := d.IPCache().UpsertPrefix(netip.MustParsePrefix(p), ipcache.Entry{Identity: idRemote}); err != nil {
			t.Fatal(err)
		}
	}
	mustUpdate(t, w.a.Policy(), map[mapstate.Key]mapstate.Entry{
		{Identity: idRemote, Direction: mapstate.Egress, Protocol: protoTCP, Port: 80, PortPrefixLen: 16}:                allow,
		{Identity: idRemote, Direction: mapstate.Egress, Protocol: protoTCP, Port: 443, PortPrefixLen: 16}:               denyThis,
		{Identity: idRemote, Direction: mapstate.Egress, Protocol: protoUDP, Port: 53, PortPrefixLen: 16}:                allow,
		{Identity: idRemote, Direction: mapstate.Egress, Protocol: protoICMP, Port: 8, PortPrefixLen: 16}:                allow,
		{Identity: idRemote, Direction: mapstate.Egress, Protocol: protoICMPv6, Port: 128, PortPrefixLen: 16}:            allow,
		{Identity: idB, Direction: mapstate.Egress}:                                                                      allow,
		{Identity: identity.ReservedWorld, Direction: mapstate.Ingress, Protocol: protoTCP, Port: 22, PortPrefixLen: 16}: allow,
	})
	mustUpdate(t, w.b.Policy(), map[mapstate.Key]mapstate.Entry{
		{Identity: idA, Direction: mapstate.Ingress, Protocol: protoTCP, Port: 8080, PortPrefixLen: 16}: allow,
		{Identity: idA, Direction: mapstate.Ingress, Protocol: protoTCP, Port: 9090, PortPrefixLen: 16}: denyThis,
	})
	return w
}

func tcpPkt(src, dst netip.Addr, sport, dport uint16, flags uint8) TestPacket {
	return TestPacket{Src: src, Dst: dst, Proto: protoTCP, SrcPort: sport, DstPort: dport, TCPFlags: flags}
}

// want is the part of a Verdict the table tests compare.
type want struct {
	action   Action
	reason   monitor.DropReason
	ct       ConntrackState
	src, dst identity.ID
}

func wantOf(v Verdict) want {
	return want{v.Action, v.Reason, v.Conntrack, v.SrcIdentity, v.DstIdentity}
}

func TestPrivilegedTestRun(t *testing.T) {
	w := newTestRunWorld(t)
	// The cases run in order: later ones rely on connections earlier ones
	// opened.
	for _, tc := range []struct {
		name string
		ep   *Endpoint
		hook Hook
		pkt  any // TestPacket or []byte
		want want
	}{
		{"allowed by egress policy", w.a, FromEndpoint, tcpPkt(addrA, remote, 40000, 80, TCPSyn),
			want{ActionPass, 0, ConntrackNew, idA, idRemote}},
		{"same connection again", w.a, FromEndpoint, tcpPkt(addrA, remote, 40000, 80, TCPAck),
			want{ActionPass, 0, ConntrackEstablished, idA, idRemote}},
		{"reply via conntrack", w.a, ToEndpoint, tcpPkt(remote, addrA, 80, 40000, TCPSyn|TCPAck),
			want{ActionPass, 0, ConntrackReply, idRemote, idA}},
		{"same packet from another port is new and denied", w.a, ToEndpoint, tcpPkt(remote, addrA, 81, 40000, TCPAck),
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idRemote, idA}},
		{"denied by default", w.a, FromEndpoint, tcpPkt(addrA, remote, 40001, 81, TCPSyn),
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idA, idRemote}},
		{"explicit deny", w.a, FromEndpoint, tcpPkt(addrA, remote, 40002, 443, TCPSyn),
			want{ActionDrop, monitor.DropPolicyDeny, ConntrackNew, idA, idRemote}},
		{"UDP allowed", w.a, FromEndpoint, TestPacket{Src: addrA, Dst: remote, Proto: protoUDP, SrcPort: 5353, DstPort: 53},
			want{ActionPass, 0, ConntrackNew, idA, idRemote}},
		{"UDP reply", w.a, ToEndpoint, TestPacket{Src: remote, Dst: addrA, Proto: protoUDP, SrcPort: 53, DstPort: 5353},
			want{ActionPass, 0, ConntrackReply, idRemote, idA}},
		{"UDP denied", w.a, FromEndpoint, TestPacket{Src: addrA, Dst: remote, Proto: protoUDP, SrcPort: 5353, DstPort: 54},
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idA, idRemote}},
		{"ICMP echo allowed", w.a, FromEndpoint, TestPacket{Src: addrA, Dst: remote, Proto: protoICMP, ICMPType: 8, ICMPID: 7},
			want{ActionPass, 0, ConntrackNew, idA, idRemote}},
		{"ICMP echo reply via conntrack", w.a, ToEndpoint, TestPacket{Src: remote, Dst: addrA, Proto: protoICMP, ICMPType: 0, ICMPID: 7},
			want{ActionPass, 0, ConntrackReply, idRemote, idA}},
		{"ICMP echo reply of another identifier", w.a, ToEndpoint, TestPacket{Src: remote, Dst: addrA, Proto: protoICMP, ICMPType: 0, ICMPID: 8},
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idRemote, idA}},
		{"ICMP error about a tracked connection is related", w.a, ToEndpoint, icmpErrorAbout(t, remote, tcpPkt(addrA, remote, 40000, 80, TCPAck)),
			want{ActionPass, 0, ConntrackRelated, idRemote, idA}},
		{"ICMP error about nothing tracked", w.a, ToEndpoint, icmpErrorAbout(t, remote, tcpPkt(addrA, remote, 49999, 80, TCPAck)),
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idRemote, idA}},
		{"ICMP echo to the world denied", w.a, FromEndpoint, TestPacket{Src: addrA, Dst: world, Proto: protoICMP, ICMPType: 8, ICMPID: 9},
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idA, identity.ReservedWorld}},
		{"local destination: redirect", w.a, FromEndpoint, tcpPkt(addrA, addrB, 40003, 8080, TCPSyn),
			want{ActionRedirect, 0, ConntrackNew, idA, idB}},
		{"local reply: redirect back", w.b, FromEndpoint, tcpPkt(addrB, addrA, 8080, 40003, TCPSyn|TCPAck),
			want{ActionRedirect, 0, ConntrackReply, idB, idA}},
		{"local destination's ingress default deny", w.a, FromEndpoint, tcpPkt(addrA, addrB, 40004, 8081, TCPSyn),
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idA, idB}},
		{"local destination's explicit deny", w.a, FromEndpoint, tcpPkt(addrA, addrB, 40005, 9090, TCPSyn),
			want{ActionDrop, monitor.DropPolicyDeny, ConntrackNew, idA, idB}},
		{"spoofed source", w.a, FromEndpoint, tcpPkt(spoofed, remote, 40006, 80, TCPSyn),
			want{ActionDrop, monitor.DropInvalidSourceIP, 0, 0, 0}},
		{"another endpoint's source", w.a, FromEndpoint, tcpPkt(addrB, remote, 40007, 80, TCPSyn),
			want{ActionDrop, monitor.DropInvalidSourceIP, 0, 0, 0}},
		{"world to endpoint allowed", w.a, ToEndpoint, tcpPkt(world, addrA, 50000, 22, TCPSyn),
			want{ActionPass, 0, ConntrackNew, identity.ReservedWorld, idA}},
		{"world to endpoint denied", w.a, ToEndpoint, tcpPkt(world, addrA, 50000, 23, TCPSyn),
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, identity.ReservedWorld, idA}},
		{"stack sends another endpoint's packet", w.a, ToEndpoint, tcpPkt(world, addrB, 50000, 22, TCPSyn),
			want{ActionDrop, monitor.DropUnknownTarget, 0, 0, 0}},

		{"IPv6 allowed", w.a, FromEndpoint, tcpPkt(addrA6, remote6, 40000, 80, TCPSyn),
			want{ActionPass, 0, ConntrackNew, idA, idRemote}},
		{"IPv6 reply", w.a, ToEndpoint, tcpPkt(remote6, addrA6, 80, 40000, TCPSyn|TCPAck),
			want{ActionPass, 0, ConntrackReply, idRemote, idA}},
		{"IPv6 denied", w.a, FromEndpoint, tcpPkt(addrA6, remote6, 40000, 81, TCPSyn),
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idA, idRemote}},
		{"IPv6 explicit deny", w.a, FromEndpoint, tcpPkt(addrA6, remote6, 40000, 443, TCPSyn),
			want{ActionDrop, monitor.DropPolicyDeny, ConntrackNew, idA, idRemote}},
		{"IPv6 echo", w.a, FromEndpoint, TestPacket{Src: addrA6, Dst: remote6, Proto: protoICMPv6, ICMPType: 128, ICMPID: 3},
			want{ActionPass, 0, ConntrackNew, idA, idRemote}},
		{"IPv6 echo reply", w.a, ToEndpoint, TestPacket{Src: remote6, Dst: addrA6, Proto: protoICMPv6, ICMPType: 129, ICMPID: 3},
			want{ActionPass, 0, ConntrackReply, idRemote, idA}},
		{"IPv6 local redirect", w.a, FromEndpoint, tcpPkt(addrA6, addrB6, 40000, 8080, TCPSyn),
			want{ActionRedirect, 0, ConntrackNew, idA, idB}},
		{"IPv6 spoofed", w.a, FromEndpoint, tcpPkt(netip.MustParseAddr("fd00::99"), remote6, 40000, 80, TCPSyn),
			want{ActionDrop, monitor.DropInvalidSourceIP, 0, 0, 0}},
		// Neighbour discovery and MLD: TestPrivilegedICMPv6NeighbourDiscovery.

		{"ARP passes", w.a, FromEndpoint, arpRequest(),
			want{ActionPass, 0, 0, 0, 0}},
		{"unknown ethertype", w.a, FromEndpoint, withEtherType(0x88cc, make([]byte, 46)),
			want{ActionDrop, monitor.DropUnknownL3, 0, 0, 0}},
		// BPF_PROG_TEST_RUN refuses IPv4 and IPv6 packets shorter than
		// their fixed header; TestPrivilegedMalformedFrames sends those
		// over a real interface.
		{"IPv4 header length beyond the packet", w.a, FromEndpoint, mutate(t, tcpPkt(addrA, remote, 1, 80, 0), func(b []byte) { b[14] = 0x4f }),
			want{ActionDrop, monitor.DropInvalidPacket, 0, 0, 0}},
		{"garbage IPv4", w.a, FromEndpoint, withEtherType(0x0800, bytes.Repeat([]byte{0xff}, 40)),
			want{ActionDrop, monitor.DropInvalidPacket, 0, 0, 0}},
		{"IPv4 header length below 5", w.a, FromEndpoint, mutate(t, tcpPkt(addrA, remote, 1, 80, 0), func(b []byte) { b[14] = 0x44 }),
			want{ActionDrop, monitor.DropInvalidPacket, 0, 0, 0}},
		{"IPv4 total length beyond the packet", w.a, FromEndpoint, mutate(t, tcpPkt(addrA, remote, 1, 80, 0), func(b []byte) { b[16], b[17] = 0x05, 0xdc }),
			want{ActionDrop, monitor.DropInvalidPacket, 0, 0, 0}},
		{"truncated TCP header", w.a, FromEndpoint, truncateL4(t, tcpPkt(addrA, remote, 1, 80, 0), 8),
			want{ActionDrop, monitor.DropCTInvalidHeader, 0, 0, 0}},
		{"truncated UDP header", w.a, FromEndpoint, truncateL4(t, TestPacket{Src: addrA, Dst: remote, Proto: protoUDP}, 4),
			want{ActionDrop, monitor.DropCTInvalidHeader, 0, 0, 0}},
		{"unknown L4 protocol", w.a, FromEndpoint, TestPacket{Src: addrA, Dst: remote, Proto: protoGRE, Payload: make([]byte, 8)},
			want{ActionDrop, monitor.DropCTUnknownProto, 0, 0, 0}},
		{"IPv6 version garbage", w.a, FromEndpoint, withEtherType(0x86dd, bytes.Repeat([]byte{0xff}, 60)),
			want{ActionDrop, monitor.DropInvalidPacket, 0, 0, 0}},
		{"IPv6 payload length beyond the packet", w.a, FromEndpoint, mutate(t, tcpPkt(addrA6, remote6, 1, 80, 0), func(b []byte) { b[18] = 0xff }),
			want{ActionDrop, monitor.DropInvalidPacket, 0, 0, 0}},
		{"IPv6 extension headers skipped", w.a, FromEndpoint, ipv6WithExt(t, []uint8{0, 60}),
			want{ActionPass, 0, ConntrackNew, idA, idRemote}},
		{"IPv6 too many extension headers", w.a, FromEndpoint, ipv6WithExt(t, []uint8{0, 60, 60, 60, 60}),
			want{ActionDrop, monitor.DropInvalidExtHeader, 0, 0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt, ok := tc.pkt.([]byte)
			if !ok {
				pkt = mustBytes(t, tc.pkt.(TestPacket))
			}
			v, out, err := tc.ep.TestRun(tc.hook, pkt)
			if err != nil {
				t.Fatal(err)
			}
			got := wantOf(v)
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			if v.Action == ActionRedirect {
				checkRouted(t, pkt, out, tc.ep.dp, v)
			}
		})
	}
}

// checkRouted checks a packet redirected to a local endpoint: addressed to
// its MAC, hop limit one less, IPv4 checksum still valid.
func checkRouted(t *testing.T, in, out []byte, d *Datapath, v Verdict) {
	t.Helper()
	var dst *Endpoint
	for _, id := range []EndpointID{1, 2} {
		if ep, _ := d.Endpoint(id); ep.Identity() == v.DstIdentity {
			dst = ep
		}
	}
	if !bytes.Equal(out[0:6], dst.MAC()) {
		t.Errorf("destination MAC %x, want the endpoint's %x", out[0:6], dst.MAC())
	}
	if binary.BigEndian.Uint16(in[12:]) == 0x0800 {
		if out[22] != in[22]-1 {
			t.Errorf("TTL %d after %d", out[22], in[22])
		}
		if c := checksum(0, out[14:34]); c != 0xffff {
			t.Errorf("IPv4 header checksum invalid after routing (sum %#x)", c)
		}
	} else if out[21] != in[21]-1 {
		t.Errorf("hop limit %d after %d", out[21], in[21])
	}
}

func withEtherType(etherType uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	binary.BigEndian.PutUint16(b[12:], etherType)
	return append(b, payload...)
}

func arpRequest() []byte {
	b := withEtherType(0x0806, make([]byte, 28))
	copy(b[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	return b
}

func mutate(t *testing.T, p TestPacket, fn func([]byte)) []byte {
	b := mustBytes(t, p)
	fn(b)
	return b
}

// truncateL4 keeps n bytes of the L4 header and fixes the IP length.
func truncateL4(t *testing.T, p TestPacket, n int) []byte {
	b := mustBytes(t, p)
	b = b[:14+20+n]
	binary.BigEndian.PutUint16(b[16:], uint16(20+n))
	return b
}

// icmpErrorAbout is an ICMP port-unreachable from `from` quoting the
// header of the packet q.
func icmpErrorAbout(t *testing.T, from netip.Addr, q TestPacket) TestPacket {
	quoted := mustBytes(t, q)[14:]
	return TestPacket{Src: from, Dst: q.Src, Proto: protoICMP, ICMPType: 3, ICMPCode: 3, Payload: quoted[:28]}
}

// ipv6WithExt is a TCP SYN from A to port 80 of the remote peer behind the
// given extension headers (8 bytes each).
func ipv6WithExt(t *testing.T, exts []uint8) []byte {
	tcp := mustBytes(t, tcpPkt(addrA6, remote6, 40100, 80, TCPSyn))
	l4 := tcp[14+40:]
	var chain []byte
	for i, e := range exts {
		next := uint8(protoTCP)
		if i+1 < len(exts) {
			next = exts[i+1]
		}
		h := make([]byte, 8)
		h[0] = next
		chain = append(chain, h...)
		_ = e
	}
	b := append([]byte(nil), tcp[:14+40]...)
	b[14+6] = exts[0]
	binary.BigEndian.PutUint16(b[14+4:], uint16(len(chain)+len(l4)))
	return append(append(b, chain...), l4...)
}
