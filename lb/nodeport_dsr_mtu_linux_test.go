package lb

import (
	"encoding/binary"
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
	testutils.RequirePrivileged(t)
	ns, err := NewNorthSouth(NorthSouthConfig{MaglevTableSize: 251, MaglevHashSeed: testSeed, DSR: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	node, peer := testutils.NewNetNS(t), testutils.NewNetNS(t)
	veth := testutils.NewVeth(t, node, "ext0", peer, "eth0")
	nl := node.Netlink(t)
	// Forwarded packets leave with the device's MTU (a route's MTU
	// counts for forwarding only when locked).
	l, err := nl.LinkByIndex(veth.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetMTU(l, 1400); err != nil {
		t.Fatal(err)
	}
	addAddr(t, nl, veth.Index, netip.MustParsePrefix("10.2.0.1/24"))
	addAddr(t, nl, veth.Index, netip.MustParsePrefix("fd00:2::1/64"))
	for _, rt := range []struct{ dst, gw string }{{"10.40.0.0/16", "10.2.0.2"}, {"fd40::/16", "fd00:2::2"}} {
		_, dst, _ := net.ParseCIDR(rt.dst)
		if err := nl.RouteAdd(&netlink.Route{LinkIndex: veth.Index, Dst: dst, Gw: net.ParseIP(rt.gw)}); err != nil {
			t.Fatalf("route %s: %v", rt.dst, err)
		}
	}
	sysctl(t, node, "net/ipv4/ip_forward", "1")
	sysctl(t, node, "net/ipv6/conf/all/forwarding", "1")

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
			opts := ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256),
				Context: xdpMd{DataEnd: uint32(len(in)), IngressIfindex: uint32(veth.Index)}}
			var ret uint32
			if err := node.Do(func() (err error) {
				ret, err = ns.objs.NpNodeportXdp.Run(&opts)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			return ret, in, opts.DataOut
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
			got := readICMPError(t, out)
			want := icmpSeen{src: tc.vip.Addr(), dst: tc.client.Addr(), qsrc: tc.client, qdst: tc.vip, typ: 3, code: 4}
			mtu := int(binary.BigEndian.Uint16(out[14+tc.l3+6:]))
			if tc.vip.Addr().Is6() {
				want.typ, want.code = 2, 0
				mtu = int(binary.BigEndian.Uint32(out[14+tc.l3+4:]))
			}
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
