package lb

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// xdpMd is struct xdp_md, the context BPF_PROG_TEST_RUN takes for XDP.
type xdpMd struct {
	Data, DataEnd, DataMeta      uint32
	IngressIfindex, RxQueueIndex uint32
	EgressIfindex                uint32
}

// newDSRMTUNode is a DSR-mode NorthSouth and a node namespace that
// forwards, with ext0 (10.2.0.1/24, fd00:2::1/64) toward a peer: the
// interface the DSR MTU tests route their backends through.
func newDSRMTUNode(t *testing.T) (*NorthSouth, *testutils.NetNS, *netlink.Handle, *testutils.Veth) {
	t.Helper()
	testutils.RequirePrivileged(t)
	ns, err := NewNorthSouth(NorthSouthConfig{MaglevTableSize: 251, MaglevHashSeed: testSeed, DSR: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	node, peer := testutils.NewNetNS(t), testutils.NewNetNS(t)
	veth := testutils.NewVeth(t, node, "ext0", peer, "eth0")
	nl := node.Netlink(t)
	addAddr(t, nl, veth.Index, netip.MustParsePrefix("10.2.0.1/24"))
	addAddr(t, nl, veth.Index, netip.MustParsePrefix("fd00:2::1/64"))
	sysctl(t, node, "net/ipv4/ip_forward", "1")
	sysctl(t, node, "net/ipv6/conf/all/forwarding", "1")
	return ns, node, nl, veth
}

// runXDPIn runs np_nodeport_xdp on in as received on veth, inside node
// (the program asks node's FIB for the route's MTU), and returns the
// verdict and the packet as the program left it.
func runXDPIn(t *testing.T, ns *NorthSouth, node *testutils.NetNS, veth *testutils.Veth, in []byte) (uint32, []byte) {
	t.Helper()
	opts := ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256),
		Context: xdpMd{DataEnd: uint32(len(in)), IngressIfindex: uint32(veth.Index)}}
	var ret uint32
	if err := node.Do(func() (err error) {
		ret, err = ns.objs.NpNodeportXdp.Run(&opts)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return ret, opts.DataOut
}

// readTooBig reads the ICMP error in out, whose IP header is l3 bytes
// long, and the MTU it advertises (fragmentation needed or packet too
// big). It also returns the type and code the error should have for its
// family.
func readTooBig(t *testing.T, out []byte, l3 int) (got icmpSeen, typ, code uint8, mtu int) {
	t.Helper()
	got = readICMPError(t, out)
	if l3 == 40 {
		return got, 2, 0, int(binary.BigEndian.Uint32(out[14+l3+4:]))
	}
	return got, 3, 4, int(binary.BigEndian.Uint16(out[14+l3+6:]))
}

// TestPrivilegedNorthSouthDSRMTU: in DSR mode a packet that the DSR
// option or extension header would make larger than the MTU of its route
// to the backend (1400 here) is answered, as Cilium's DSR ICMP errors, with
// a fragmentation needed (IPv4) or packet too big (ICMPv6) to the client
// from the frontend, with the route's MTU less the DSR overhead (8 or 24
// bytes) and a quote of the packet as the client sent it, sent back out
// (XDP_TX), every checksum valid; it counts under DROP_FRAG_NEEDED. A
// packet that fits with the header, up to the last byte, is sent on with
// it. Crafted packets through BPF_PROG_TEST_RUN, in a namespace whose
// route to the backends leaves through an interface with the small MTU
// (the program asks the kernel's FIB).
func TestPrivilegedNorthSouthDSRMTU(t *testing.T) {
	ns, node, nl, veth := newDSRMTUNode(t)
	// Forwarded packets leave with the device's MTU (a route's MTU
	// counts for forwarding only when locked).
	l, err := nl.LinkByIndex(veth.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetMTU(l, 1400); err != nil {
		t.Fatal(err)
	}
	for _, rt := range []struct{ dst, gw string }{{"10.40.0.0/16", "10.2.0.2"}, {"fd40::/16", "fd00:2::2"}} {
		_, dst, _ := net.ParseCIDR(rt.dst)
		if err := nl.RouteAdd(&netlink.Route{LinkIndex: veth.Index, Dst: dst, Gw: net.ParseIP(rt.gw)}); err != nil {
			t.Fatalf("route %s: %v", rt.dst, err)
		}
	}

	for _, tc := range []struct {
		vip, be, client netip.AddrPort
		grow, l3        int
	}{
		{netip.MustParseAddrPort("10.99.0.9:53"), netip.MustParseAddrPort("10.40.0.9:5353"), netip.MustParseAddrPort("198.18.0.9:40009"), 8, 20},
		{netip.MustParseAddrPort("[fd99::9]:53"), netip.MustParseAddrPort("[fd40::9]:5353"), netip.MustParseAddrPort("[2001:db8::9]:40009"), 24, 40},
	} {
		if err := ns.Upsert(Service{Frontend: Frontend{tc.vip, nodeplane.ProtoUDP}, Type: LoadBalancer}, []Backend{{Addr: tc.be}}); err != nil {
			t.Fatal(err)
		}
		// run sends a UDP packet whose IP packet is n bytes long.
		run := func(n int) (uint32, []byte, []byte) {
			t.Helper()
			in := testPkt{src: tc.client, dst: tc.vip, proto: 17, payload: make([]byte, n-tc.l3-8)}.bytes()
			copy(in[0:6], []byte{2, 0, 0, 0, 0, 1}) // destination MAC: the node
			copy(in[6:12], []byte{2, 0, 0, 0, 0, 2})
			ret, out := runXDPIn(t, ns, node, veth, in)
			return ret, in, out
		}
		t.Run(tc.vip.String(), func(t *testing.T) {
			// The largest packet that fits with the DSR header.
			ret, _, out := run(1400 - tc.grow)
			if ret != xdpPass {
				t.Fatalf("a packet that fits: verdict %d", ret)
			}
			if _, dst, fe, _ := parseDSR(t, out); dst != tc.be || fe != tc.vip {
				t.Fatalf("a packet that fits went to %s with frontend %s", dst, fe)
			}

			before, err := ns.Drops()
			if err != nil {
				t.Fatal(err)
			}
			ret, in, out := run(1400 - tc.grow + 1)
			if ret != 3 { // XDP_TX
				t.Fatalf("one byte too many: verdict %d, want XDP_TX", ret)
			}
			after, err := ns.Drops()
			if err != nil {
				t.Fatal(err)
			}
			if after[monitor.DropFragNeeded] != before[monitor.DropFragNeeded]+1 {
				t.Errorf("DROP_FRAG_NEEDED %d -> %d", before[monitor.DropFragNeeded], after[monitor.DropFragNeeded])
			}
			if string(out[0:6]) != string(in[6:12]) || string(out[6:12]) != string(in[0:6]) {
				t.Errorf("MAC addresses not swapped: % x", out[:12])
			}
			got, typ, code, mtu := readTooBig(t, out, tc.l3)
			want := icmpSeen{src: tc.vip.Addr(), dst: tc.client.Addr(), qsrc: tc.client, qdst: tc.vip, typ: typ, code: code}
			if got != want {
				t.Fatalf("client gets %+v, want %+v", got, want)
			}
			if mtu != 1400-tc.grow {
				t.Errorf("MTU %d, want %d", mtu, 1400-tc.grow)
			}
			// A client that sends what the error says fits gets
			// through.
			if ret, _, _ := run(mtu); ret != xdpPass {
				t.Errorf("a packet of the advertised MTU: verdict %d", ret)
			}
		})
	}
}

// TestPrivilegedNorthSouthDSRMTUFloor: the MTU the client is told is the
// route's less the DSR overhead, but never below the family's minimum
// (IPv4 68, RFC 791; IPv6 1280, RFC 8200), which receivers hold to anyway.
// In particular a route MTU smaller than the overhead (8 or 24 bytes)
// advertises the minimum instead of a wrapped subtraction (65532 for a
// 4-byte IPv4 route MTU before). Routes with locked MTUs (the only ones
// forwarding honours below the device's), crafted packets through
// BPF_PROG_TEST_RUN.
func TestPrivilegedNorthSouthDSRMTUFloor(t *testing.T) {
	ns, node, nl, veth := newDSRMTUNode(t)

	for i, tc := range []struct {
		routeMTU, want int
		v6             bool
	}{
		{routeMTU: 4, want: 68},                // smaller than the 8-byte option
		{routeMTU: 8, want: 68},                // nothing left
		{routeMTU: 70, want: 68},               // 62 would be below IPv4's minimum
		{routeMTU: 200, want: 192},             // above it: the route's less 8
		{routeMTU: 20, v6: true, want: 1280},   // smaller than the 24-byte header
		{routeMTU: 1290, v6: true, want: 1280}, // 1266 would be below IPv6's minimum
		{routeMTU: 1400, v6: true, want: 1376},
	} {
		vip := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 99, 1, byte(i)}), 53)
		be := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 41, byte(i), 9}), 5353)
		client := netip.MustParseAddrPort("198.18.0.9:40009")
		dst, gw, l3 := fmt.Sprintf("10.41.%d.0/24", i), "10.2.0.2", 20
		if tc.v6 {
			vip = netip.MustParseAddrPort(fmt.Sprintf("[fd99:1::%d]:53", i))
			be = netip.MustParseAddrPort(fmt.Sprintf("[fd41:%d::9]:5353", i))
			client = netip.MustParseAddrPort("[2001:db8::9]:40009")
			dst, gw, l3 = fmt.Sprintf("fd41:%d::/32", i), "fd00:2::2", 40
		}
		_, dstNet, _ := net.ParseCIDR(dst)
		if err := nl.RouteAdd(&netlink.Route{LinkIndex: veth.Index, Dst: dstNet, Gw: net.ParseIP(gw), MTU: tc.routeMTU, MTULock: true}); err != nil {
			t.Fatalf("route %s: %v", dst, err)
		}
		if err := ns.Upsert(Service{Frontend: Frontend{vip, nodeplane.ProtoUDP}, Type: LoadBalancer}, []Backend{{Addr: be}}); err != nil {
			t.Fatal(err)
		}
		t.Run(fmt.Sprintf("%s/mtu%d", vip.Addr(), tc.routeMTU), func(t *testing.T) {
			// Larger than the route's MTU, and than what the
			// client is told, so that it is too big either way.
			in := testPkt{src: client, dst: vip, proto: 17, payload: make([]byte, 1500-l3-8)}.bytes()
			before, err := ns.Drops()
			if err != nil {
				t.Fatal(err)
			}
			ret, out := runXDPIn(t, ns, node, veth, in)
			if ret != 3 { // XDP_TX
				t.Fatalf("verdict %d, want XDP_TX", ret)
			}
			after, err := ns.Drops()
			if err != nil {
				t.Fatal(err)
			}
			if after[monitor.DropFragNeeded] != before[monitor.DropFragNeeded]+1 {
				t.Errorf("DROP_FRAG_NEEDED %d -> %d", before[monitor.DropFragNeeded], after[monitor.DropFragNeeded])
			}
			got, typ, code, mtu := readTooBig(t, out, l3)
			want := icmpSeen{src: vip.Addr(), dst: client.Addr(), qsrc: client, qdst: vip, typ: typ, code: code}
			if got != want {
				t.Fatalf("client gets %+v, want %+v", got, want)
			}
			if mtu != tc.want {
				t.Errorf("MTU %d, want %d", mtu, tc.want)
			}
		})
	}
}
