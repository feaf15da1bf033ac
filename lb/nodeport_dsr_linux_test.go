package lb

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/tcattach"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

func runProgOut(tb testing.TB, prog *ebpf.Program, pkt []byte) (uint32, []byte) {
	tb.Helper()
	opts := ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt)+256)}
	ret, err := prog.Run(&opts)
	if err != nil {
		tb.Fatal(err)
	}
	return ret, opts.DataOut
}

// parseDSR reads a frame with a DSR option: source, destination, the
// frontend in the option, and checks the IPv4 header and L4 checksums.
func parseDSR(tb testing.TB, b []byte) (src, dst, fe netip.AddrPort, proto uint8) {
	tb.Helper()
	var sa, da, fa netip.Addr
	var fport uint16
	var l4 []byte
	if binary.BigEndian.Uint16(b[12:]) == 0x0800 {
		l3 := b[14:42]
		if l3[0] != 0x47 {
			tb.Fatalf("IPv4 version/IHL %#x, want 0x47", l3[0])
		}
		if csumFold(csumAdd(0, l3)) != 0 {
			tb.Fatal("bad IPv4 header checksum")
		}
		if got := int(binary.BigEndian.Uint16(l3[2:])); got != len(b)-14 {
			tb.Fatalf("IPv4 total length %d, frame carries %d", got, len(b)-14)
		}
		opt := l3[20:28]
		if opt[0] != 0x9a || opt[1] != 8 {
			tb.Fatalf("option % x", opt)
		}
		fport = binary.BigEndian.Uint16(opt[2:])
		fa, _ = netip.AddrFromSlice(opt[4:8])
		sa, _ = netip.AddrFromSlice(l3[12:16])
		da, _ = netip.AddrFromSlice(l3[16:20])
		proto = l3[9]
		l4 = b[42:]
	} else {
		l3 := b[14:54]
		if l3[6] != 60 {
			tb.Fatalf("next header %d, want 60 (destination options)", l3[6])
		}
		ext := b[54:78]
		if ext[1] != 2 || ext[2] != 0x1b || ext[3] != 20 {
			tb.Fatalf("destination options % x", ext)
		}
		if got := int(binary.BigEndian.Uint16(l3[4:])); got != len(b)-54 {
			tb.Fatalf("IPv6 payload length %d, frame carries %d", got, len(b)-54)
		}
		fa, _ = netip.AddrFromSlice(ext[4:20])
		fport = binary.BigEndian.Uint16(ext[20:])
		sa, _ = netip.AddrFromSlice(l3[8:24])
		da, _ = netip.AddrFromSlice(l3[24:40])
		proto = ext[0]
		l4 = b[78:]
	}
	if csumFold(csumAdd(pseudo(sa, da, proto, len(l4)), l4)) != 0 {
		tb.Fatalf("bad L4 checksum in %s -> %s", sa, da)
	}
	return netip.AddrPortFrom(sa, binary.BigEndian.Uint16(l4[0:])), netip.AddrPortFrom(da, binary.BigEndian.Uint16(l4[2:])),
		netip.AddrPortFrom(fa, fport), proto
}

// TestPrivilegedNorthSouthDSR: in DSR mode the XDP program sends a new
// flow to the backend Maglev picks with the client's address kept and the
// frontend in Cilium's IPv4 option or IPv6 destination option (lengths and
// checksums right); on the backend's node the decoder records it, and the
// reply leaves from the frontend. An IPv4 packet with options of its own is
// dropped. DSR refuses the tc attach mode and SNAT.
func TestPrivilegedNorthSouthDSR(t *testing.T) {
	testutils.RequirePrivileged(t)
	lbNode, err := NewNorthSouth(NorthSouthConfig{MaglevTableSize: 251, MaglevHashSeed: testSeed, DSR: true})
	testutils.SkipIfNotSupported(t, err)
	if err != nil {
		t.Fatal(err)
	}
	defer lbNode.Close()
	beNode := newTestNorthSouth(t)
	r := rand.New(rand.NewPCG(7, 8))
	for _, tc := range []struct {
		fe       Frontend
		backends []Backend
	}{
		{Frontend{netip.MustParseAddrPort("10.99.0.1:80"), nodeplane.ProtoTCP}, nsBackends("10.20.%d.2", 4, 8080)},
		{Frontend{netip.MustParseAddrPort("10.99.0.1:53"), nodeplane.ProtoUDP}, nsBackends("10.20.%d.2", 3, 53)},
		{Frontend{netip.MustParseAddrPort("[fd99::1]:443"), nodeplane.ProtoTCP}, nsBackends("fd20::%d", 5, 8443)},
		{Frontend{netip.MustParseAddrPort("[fd99::1]:53"), nodeplane.ProtoUDP}, nsBackends("fd20::%d", 2, 5353)},
	} {
		t.Run(tc.fe.String(), func(t *testing.T) {
			if err := lbNode.Upsert(Service{Frontend: tc.fe, Type: LoadBalancer, Algorithm: AlgorithmMaglev}, tc.backends); err != nil {
				t.Fatal(err)
			}
			for range 100 {
				client := randomClient(r, tc.fe.Addr.Addr().Is6())
				pkt := testPkt{src: client, dst: tc.fe.Addr, proto: uint8(tc.fe.Protocol)}.bytes()
				ret, out := runProgOut(t, lbNode.objs.NpNodeportXdp, pkt)
				if ret != xdpPass {
					t.Fatalf("verdict %d", ret)
				}
				src, dst, fe, proto := parseDSR(t, out)
				want := expectMaglev(t, tc.backends, tc.fe.Protocol, client, tc.fe.Addr.Port())
				if src != client || dst != want || fe != tc.fe.Addr || proto != uint8(tc.fe.Protocol) {
					t.Fatalf("%s -> %s became %s -> %s carrying %s, want %s -> %s carrying %s", client, tc.fe.Addr, src, dst, fe, client, want, tc.fe.Addr)
				}

				// The backend's node.
				if ret, _ := runProgOut(t, beNode.objs.NpDsrDecode, out); ret != 0 {
					t.Fatalf("decoder verdict %d", ret)
				}
				reply := testPkt{src: dst, dst: client, proto: uint8(tc.fe.Protocol)}
				_, rout := runProg(t, beNode.objs.NpNodeportRevnat, reply.bytes())
				if rsrc, rdst := parsePkt(t, rout); rsrc != tc.fe.Addr || rdst != client {
					t.Fatalf("reply %s -> %s left as %s -> %s, want %s -> %s", dst, client, rsrc, rdst, tc.fe.Addr, client)
				}
			}
		})
	}
	t.Run("IPv4 options", func(t *testing.T) {
		plain := testPkt{src: netip.MustParseAddrPort("198.18.0.9:999"), dst: netip.MustParseAddrPort("10.99.0.1:80"), proto: 6}.bytes()
		// Four NOP options after the IP header.
		pkt := append(append(append([]byte{}, plain[:34]...), 1, 1, 1, 1), plain[34:]...)
		pkt[14] = 0x46
		binary.BigEndian.PutUint16(pkt[16:], uint16(len(pkt)-14))
		binary.BigEndian.PutUint16(pkt[24:], 0)
		binary.BigEndian.PutUint16(pkt[24:], csumFold(csumAdd(0, pkt[14:38])))
		before, _ := lbNode.Drops()
		ret, _ := runProgOut(t, lbNode.objs.NpNodeportXdp, pkt)
		after, _ := lbNode.Drops()
		if ret != xdpDrop || after[134] != before[134]+1 {
			t.Fatalf("verdict %d, DROP_INVALID %d -> %d", ret, before[134], after[134])
		}
	})
	t.Run("config", func(t *testing.T) {
		if _, err := NewNorthSouth(NorthSouthConfig{DSR: true, SNATAddrs: []netip.Addr{netip.MustParseAddr("10.1.0.1")}}); err == nil {
			t.Error("DSR with SNAT accepted")
		}
		if _, err := lbNode.Attach(1, AttachTC); err == nil {
			t.Error("DSR in tc mode accepted")
		}
	})
}

// TestPrivilegedNorthSouthDSRTraffic: real TCP and UDP, IPv4 and IPv6, in
// DSR mode. Each backend namespace has its own link to the client and
// routes the client's address over it; its NorthSouth decodes the option
// and sends the replies from the frontend. Backends see the client's
// address, and the LB node sends the client no reply: its interface
// towards the client transmits (almost) nothing while flows run. Backend
// 1's node attaches with clsact filters (the fallback for kernels without
// tcx), the others as the probe chooses.
func TestPrivilegedNorthSouthDSRTraffic(t *testing.T) {
	testutils.RequirePrivileged(t)
	lbNode, err := NewNorthSouth(NorthSouthConfig{MaglevTableSize: 251, MaglevHashSeed: testSeed, DSR: true})
	testutils.SkipIfNotSupported(t, err)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lbNode.Close() })
	top := newTopology(t, 1, 3)
	top.serve(t)
	client := top.clients[0]
	sysctl(t, client.ns, "net/ipv4/conf/all/rp_filter", "0")
	sysctl(t, client.ns, "net/ipv4/conf/default/rp_filter", "0")
	for j, be := range top.backends {
		direct := testutils.NewVeth(t, be.ns, "d0", client.ns, fmt.Sprintf("d%d", j))
		sysctl(t, client.ns, fmt.Sprintf("net/ipv4/conf/d%d/rp_filter", j), "0")
		bnl, cnl := be.ns.Netlink(t), client.ns.Netlink(t)
		addAddr(t, bnl, direct.Index, netip.MustParsePrefix(fmt.Sprintf("10.3.%d.2/24", j)))
		addAddr(t, bnl, direct.Index, netip.MustParsePrefix(fmt.Sprintf("fd00:3:%d::2/64", j)))
		addAddr(t, cnl, direct.PeerIndex, netip.MustParsePrefix(fmt.Sprintf("10.3.%d.1/24", j)))
		addAddr(t, cnl, direct.PeerIndex, netip.MustParsePrefix(fmt.Sprintf("fd00:3:%d::1/64", j)))
		// The backend address stays the preferred source: a UDP server
		// on the wildcard address answers from the route's source.
		for _, rt := range []struct {
			dst, gw string
			src     netip.Addr
		}{
			{client.v4.String() + "/32", fmt.Sprintf("10.3.%d.1", j), be.v4},
			{client.v6.String() + "/128", fmt.Sprintf("fd00:3:%d::1", j), be.v6},
		} {
			_, dst, _ := net.ParseCIDR(rt.dst)
			if err := bnl.RouteAdd(&netlink.Route{LinkIndex: direct.Index, Dst: dst, Gw: net.ParseIP(rt.gw), Src: rt.src.AsSlice()}); err != nil {
				t.Fatalf("route %s in %s: %v", rt.dst, be.name, err)
			}
		}
		beNS, err := NewNorthSouth(NorthSouthConfig{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { beNS.Close() })
		if j == 1 {
			// One backend node on the clsact fallback of older
			// kernels.
			beNS.tcMode = tcattach.Clsact
		}
		if err := be.ns.Do(func() error {
			for _, name := range []string{"eth0", "d0"} {
				l, err := net.InterfaceByName(name)
				if err != nil {
					return err
				}
				if err := beNS.AttachDSRBackend(l.Index); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			testutils.SkipIfNotSupported(t, err)
			t.Fatal(err)
		}
	}
	var c0 int
	if err := top.node.Do(func() error {
		l, err := net.InterfaceByName("c0")
		if err != nil {
			return err
		}
		c0 = l.Index
		_, err = lbNode.Attach(l.Index, AttachAuto)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	txPackets := func() uint64 {
		l, err := top.node.Netlink(t).LinkByIndex(c0)
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().Statistics.TxPackets
	}

	for _, v6 := range []bool{false, true} {
		vip := netip.MustParseAddr("10.99.0.1")
		if v6 {
			vip = netip.MustParseAddr("fd99::1")
		}
		for _, proto := range []nodeplane.Protocol{nodeplane.ProtoTCP, nodeplane.ProtoUDP} {
			fe := netip.AddrPortFrom(vip, 80)
			t.Run(fmt.Sprintf("%s/%s", fe, proto), func(t *testing.T) {
				var backends []Backend
				for _, be := range top.backends {
					backends = append(backends, Backend{Addr: be.addr(v6, backendPort)})
				}
				svc := Service{Frontend: Frontend{fe, proto}, Type: LoadBalancer, Algorithm: AlgorithmMaglev}
				if err := lbNode.Upsert(svc, backends); err != nil {
					t.Fatal(err)
				}
				defer lbNode.Delete(svc.Frontend)
				before := txPackets()
				checkNorthSouthFlows(t, lbNode, top, client, svc, backends, client.addr(v6, 0).Addr())
				if sent := txPackets() - before; sent > 4 {
					t.Errorf("the LB node sent the client %d packets; replies should leave the backends directly", sent)
				}
			})
		}
	}
	drops, err := lbNode.Drops()
	if err != nil {
		t.Fatal(err)
	}
	if len(drops) != 0 {
		t.Errorf("drops: %v", drops)
	}
}

// TestPrivilegedNorthSouthExternalTrafficLocal: a service with
// externalTrafficPolicy=Local is neither SNATed (in SNAT mode) nor DSRed
// (in DSR mode): the backend sees the client, and the reply is translated
// back at tc egress like in DNAT mode.
func TestPrivilegedNorthSouthExternalTrafficLocal(t *testing.T) {
	testutils.RequirePrivileged(t)
	for _, cfg := range []NorthSouthConfig{
		{MaglevTableSize: 251, MaglevHashSeed: testSeed, SNATAddrs: []netip.Addr{netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("fd00:1::1")}},
		{MaglevTableSize: 251, MaglevHashSeed: testSeed, DSR: true},
	} {
		name := "snat"
		if cfg.DSR {
			name = "dsr"
		}
		t.Run(name, func(t *testing.T) {
			ns, err := NewNorthSouth(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer ns.Close()
			for _, fe := range []Frontend{
				{netip.MustParseAddrPort("10.1.0.1:30080"), nodeplane.ProtoTCP},
				{netip.MustParseAddrPort("[fd00:1::1]:30053"), nodeplane.ProtoUDP},
			} {
				backends := nsBackends("10.20.%d.2", 3, 8080)
				if fe.Addr.Addr().Is6() {
					backends = nsBackends("fd20::%d", 3, 8080)
				}
				svc := Service{Frontend: fe, Type: NodePort, Algorithm: AlgorithmMaglev, ExternalTrafficLocal: true}
				if err := ns.Upsert(svc, backends); err != nil {
					t.Fatal(err)
				}
				r := rand.New(rand.NewPCG(9, 10))
				for range 50 {
					client := randomClient(r, fe.Addr.Addr().Is6())
					pkt := testPkt{src: client, dst: fe.Addr, proto: uint8(fe.Protocol)}.bytes()
					ret, out := runProgOut(t, ns.objs.NpNodeportXdp, pkt)
					if ret != xdpPass || len(out) != len(pkt) {
						t.Fatalf("verdict %d, %d bytes out of %d: want XDP_PASS, no option", ret, len(out), len(pkt))
					}
					src, dst := parsePkt(t, out)
					want := expectMaglev(t, backends, fe.Protocol, client, fe.Addr.Port())
					if src != client || dst != want {
						t.Fatalf("%s -> %s became %s -> %s, want %s -> %s", client, fe.Addr, src, dst, client, want)
					}
					_, rout := runProg(t, ns.objs.NpNodeportRevnat, testPkt{src: dst, dst: client, proto: uint8(fe.Protocol)}.bytes())
					if rsrc, rdst := parsePkt(t, rout); rsrc != fe.Addr || rdst != client {
						t.Fatalf("reply became %s -> %s, want %s -> %s", rsrc, rdst, fe.Addr, client)
					}
				}
			}
		})
	}
}
