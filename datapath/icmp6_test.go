package datapath

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

var (
	gateway6   = netip.MustParseAddr("fe80::1")
	podLL      = netip.MustParseAddr("fe80::a")
	hostLL     = netip.MustParseAddr("fe80::2")
	allNodes   = netip.MustParseAddr("ff02::1")
	allRouters = netip.MustParseAddr("ff02::2")
	mldv2      = netip.MustParseAddr("ff02::16")
	podMAC     = net.HardwareAddr{0x0a, 0x58, 0x0a, 0x00, 0x00, 0x01}
	nodeMAC    = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0xaa}
)

// solicitedNode is the solicited-node multicast address of a.
func solicitedNode(a netip.Addr) netip.Addr {
	b := a.As16()
	return netip.AddrFrom16([16]byte{0xff, 0x02, 11: 1, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
}

// ndPacket is an ICMPv6 message of the given type whose body (after the
// 4-byte reserved field) is target and, if mac is set, a link-layer address
// option (1: source, 2: target).
func ndPacket(src, dst netip.Addr, typ uint8, hop uint8, target netip.Addr, opt uint8, mac net.HardwareAddr) TestPacket {
	var body []byte
	if target.IsValid() {
		t := target.As16()
		body = append(body, t[:]...)
	}
	if mac != nil {
		body = append(body, opt, 1)
		body = append(body, mac...)
	}
	return TestPacket{Src: src, Dst: dst, Proto: protoICMPv6, ICMPType: typ, TTL: hop, SrcMAC: podMAC, Payload: body}
}

// mldPacket is an MLD message (query 130, report 131, done 132, v2 report
// 143) with a multicast address in its body.
func mldPacket(src, dst netip.Addr, typ uint8) TestPacket {
	g := netip.MustParseAddr("ff05::1:3").As16()
	return TestPacket{Src: src, Dst: dst, Proto: protoICMPv6, ICMPType: typ, TTL: 1, Payload: append(make([]byte, 0, 20), g[:]...)}
}

// TestPrivilegedICMPv6NeighbourDiscovery runs neighbour discovery and
// multicast listener messages through an endpoint's programs. As Cilium's
// bpf_lxc does: the datapath answers a neighbour solicitation for the
// endpoint's gateway itself and drops one for any other target; every other
// ND and MLD message (and a solicitation towards the endpoint) goes through
// the source or destination address check, conntrack and policy like any
// ICMPv6 message, so nothing bypasses them.
func TestPrivilegedICMPv6NeighbourDiscovery(t *testing.T) {
	w := newTestRunWorld(t)
	// Detached endpoints have no host-side interface; give A's entry a node
	// MAC so that the answer's addresses can be checked.
	info := w.a.info(idA)
	info.NodeMAC = [6]byte(nodeMAC)
	if err := w.d.maps.endpoints.Update(endpointKeyFor(addrA6), info, ebpf.UpdateExist); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		hook Hook
		pkt  TestPacket
		want want
	}{
		// From the endpoint: solicitations.
		{"NS for the gateway is answered", FromEndpoint,
			ndPacket(podLL, solicitedNode(gateway6), 135, 255, gateway6, 1, podMAC),
			want{ActionRedirect, 0, 0, 0, 0}},
		{"DAD-style NS for the gateway is answered to all nodes", FromEndpoint,
			ndPacket(netip.IPv6Unspecified(), solicitedNode(gateway6), 135, 255, gateway6, 0, nil),
			want{ActionRedirect, 0, 0, 0, 0}},
		{"NS for another address is dropped", FromEndpoint,
			ndPacket(podLL, solicitedNode(hostLL), 135, 255, hostLL, 1, podMAC),
			want{ActionDrop, monitor.DropUnknownTarget, 0, 0, 0}},
		{"NS for a remote address is dropped", FromEndpoint,
			ndPacket(addrA6, solicitedNode(remote6), 135, 255, remote6, 1, podMAC),
			want{ActionDrop, monitor.DropUnknownTarget, 0, 0, 0}},
		{"DAD for the endpoint's own address is dropped", FromEndpoint,
			ndPacket(netip.IPv6Unspecified(), solicitedNode(addrA6), 135, 255, addrA6, 0, nil),
			want{ActionDrop, monitor.DropUnknownTarget, 0, 0, 0}},
		{"NS with hop limit below 255 is invalid", FromEndpoint,
			ndPacket(podLL, solicitedNode(gateway6), 135, 64, gateway6, 1, podMAC),
			want{ActionDrop, monitor.DropInvalidPacket, 0, 0, 0}},
		{"truncated NS is invalid", FromEndpoint,
			TestPacket{Src: podLL, Dst: solicitedNode(gateway6), Proto: protoICMPv6, ICMPType: 135, TTL: 255, Payload: make([]byte, 8)},
			want{ActionDrop, monitor.DropInvalidPacket, 0, 0, 0}},

		// From the endpoint: everything else is checked like any packet.
		{"NA from a link-local source fails the source check", FromEndpoint,
			ndPacket(podLL, hostLL, 136, 255, podLL, 2, podMAC),
			want{ActionDrop, monitor.DropInvalidSourceIP, 0, 0, 0}},
		{"NA from the endpoint's address meets policy", FromEndpoint,
			ndPacket(addrA6, remote6, 136, 255, addrA6, 2, podMAC),
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idA, idRemote}},
		{"RS fails the source check", FromEndpoint,
			ndPacket(podLL, allRouters, 133, 255, netip.Addr{}, 1, podMAC),
			want{ActionDrop, monitor.DropInvalidSourceIP, 0, 0, 0}},
		{"RA fails the source check", FromEndpoint,
			ndPacket(podLL, allNodes, 134, 255, netip.Addr{}, 0, nil),
			want{ActionDrop, monitor.DropInvalidSourceIP, 0, 0, 0}},
		{"redirect from the endpoint's address meets policy", FromEndpoint,
			ndPacket(addrA6, remote6, 137, 255, remote6, 0, nil),
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idA, idRemote}},
		{"MLDv2 report fails the source check", FromEndpoint,
			mldPacket(podLL, mldv2, 143),
			want{ActionDrop, monitor.DropInvalidSourceIP, 0, 0, 0}},
		{"MLDv2 report from :: fails the source check", FromEndpoint,
			mldPacket(netip.IPv6Unspecified(), mldv2, 143),
			want{ActionDrop, monitor.DropInvalidSourceIP, 0, 0, 0}},
		{"MLD done fails the source check", FromEndpoint,
			mldPacket(podLL, allRouters, 132),
			want{ActionDrop, monitor.DropInvalidSourceIP, 0, 0, 0}},
		{"MLD query from the endpoint's address meets policy", FromEndpoint,
			mldPacket(addrA6, remote6, 130),
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idA, idRemote}},
		{"MLD report to a local endpoint meets its policies", FromEndpoint,
			mldPacket(addrA6, addrB6, 131),
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idA, idB}},

		// To the endpoint: the destination must be the endpoint's, then
		// ingress policy decides.
		{"multicast NS to the endpoint is dropped", ToEndpoint,
			ndPacket(hostLL, solicitedNode(addrA6), 135, 255, addrA6, 1, nodeMAC),
			want{ActionDrop, monitor.DropUnknownTarget, 0, 0, 0}},
		{"RA to all nodes is dropped", ToEndpoint,
			ndPacket(hostLL, allNodes, 134, 255, netip.Addr{}, 1, nodeMAC),
			want{ActionDrop, monitor.DropUnknownTarget, 0, 0, 0}},
		{"MLD query to all nodes is dropped", ToEndpoint,
			mldPacket(hostLL, allNodes, 130),
			want{ActionDrop, monitor.DropUnknownTarget, 0, 0, 0}},
		{"unicast NS from a remote peer meets ingress policy", ToEndpoint,
			ndPacket(remote6, addrA6, 135, 255, addrA6, 1, nodeMAC),
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idRemote, idA}},
		{"NA from a remote peer meets ingress policy", ToEndpoint,
			ndPacket(remote6, addrA6, 136, 255, remote6, 2, nodeMAC),
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idRemote, idA}},
		{"MLD report to the endpoint meets ingress policy", ToEndpoint,
			mldPacket(remote6, addrA6, 143),
			want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idRemote, idA}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := mustBytes(t, tc.pkt)
			v, out, err := w.a.TestRun(tc.hook, in)
			if err != nil {
				t.Fatal(err)
			}
			if got := wantOf(v); got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			if v.Action == ActionRedirect {
				checkNeighbourAdvert(t, tc.pkt, out)
			}
		})
	}

	// With a rule that allows it, the same unicast solicitation passes:
	// policy, not a blanket rule, decided above.
	mustUpdate(t, w.a.Policy(), mapstate.State{
		{Identity: idRemote, Direction: mapstate.Ingress, Protocol: protoICMPv6, Port: 135, PortPrefixLen: 16}: allow,
	})
	v, _, err := w.a.TestRun(ToEndpoint, mustBytes(t, ndPacket(remote6, addrA6, 135, 255, addrA6, 1, nodeMAC)))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := wantOf(v), (want{ActionPass, 0, ConntrackNew, idRemote, idA}); got != want {
		t.Fatalf("allowed NS: got %+v, want %+v", got, want)
	}
}

// checkNeighbourAdvert checks the datapath's answer to a solicitation for
// the gateway against RFC 4861 section 7.2.4: a neighbour advertisement from
// the gateway to the soliciting address (all nodes for an unspecified one,
// without the solicited flag), with the router flag, the gateway as target,
// the node MAC as target link-layer address, hop limit 255 and a valid
// checksum, in an Ethernet frame from the node MAC to the endpoint.
func checkNeighbourAdvert(t *testing.T, ns TestPacket, out []byte) {
	t.Helper()
	const eth, ip6 = 14, 40
	if len(out) < eth+ip6+32 {
		t.Fatalf("answer is %d bytes", len(out))
	}
	if !bytes.Equal(out[0:6], podMAC) || !bytes.Equal(out[6:12], nodeMAC) || binary.BigEndian.Uint16(out[12:]) != 0x86dd {
		t.Errorf("Ethernet header %x, want %s from %s, IPv6", out[:14], podMAC, nodeMAC)
	}
	ip := out[eth:]
	plen := int(binary.BigEndian.Uint16(ip[4:]))
	src, _ := netip.AddrFromSlice(ip[8:24])
	dst, _ := netip.AddrFromSlice(ip[24:40])
	wantDst, solicited := ns.Src, true
	if ns.Src.IsUnspecified() {
		wantDst, solicited = allNodes, false
	}
	if plen != 32 || ip[6] != protoICMPv6 || ip[7] != 255 || src != gateway6 || dst != wantDst {
		t.Errorf("IPv6 header: payload %d, next %d, hop limit %d, %v -> %v; want 32, 58, 255, %v -> %v",
			plen, ip[6], ip[7], src, dst, gateway6, wantDst)
	}
	if len(out) < eth+ip6+plen {
		t.Fatalf("answer is %d bytes, its header says %d", len(out), eth+ip6+plen)
	}
	na := ip[ip6 : ip6+plen]
	if na[0] != 136 || na[1] != 0 {
		t.Errorf("ICMPv6 type %d code %d, want 136 0", na[0], na[1])
	}
	wantFlags := byte(0x80) // router
	if solicited {
		wantFlags |= 0x40
	}
	if na[4] != wantFlags || na[5] != 0 || na[6] != 0 || na[7] != 0 {
		t.Errorf("flags %x, want %x", na[4:8], wantFlags)
	}
	if target, _ := netip.AddrFromSlice(na[8:24]); target != gateway6 {
		t.Errorf("target %v, want %v", target, gateway6)
	}
	if na[24] != 2 || na[25] != 1 || !bytes.Equal(na[26:32], nodeMAC) {
		t.Errorf("option %x, want target link-layer address %s", na[24:32], nodeMAC)
	}
	// The checksum over the pseudo-header and the message sums to 0xffff.
	var pseudo []byte
	pseudo = append(pseudo, ip[8:40]...)
	pseudo = binary.BigEndian.AppendUint32(pseudo, uint32(plen))
	pseudo = append(pseudo, 0, 0, 0, protoICMPv6)
	if c := checksum(uint32(checksum(0, pseudo)), na); c != 0xffff {
		t.Errorf("ICMPv6 checksum invalid (sum %#x)", c)
	}
}

// TestPrivilegedGatewayNeighbourResolvedByDatapath: on a real veth, an
// endpoint that has lost its permanent neighbour entry for the gateway
// resolves it again through the datapath's answer (nothing else owns
// fe80::1), learns the host-side MAC, and its traffic flows.
func TestPrivilegedGatewayNeighbourResolvedByDatapath(t *testing.T) {
	w := newE2EWorld(t, AttachAuto)
	testutils.ServeEcho(t, w.podB, "tcp6", netip.AddrPortFrom(addrB6, 8080).String())

	eth0 := func(h *netlink.Handle) netlink.Link {
		l, err := h.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	pod := w.podA.Netlink(t)
	link := eth0(pod)
	if err := pod.NeighDel(&netlink.Neigh{LinkIndex: link.Attrs().Index, Family: unix.AF_INET6, IP: gateway6.AsSlice()}); err != nil {
		t.Fatalf("delete the gateway's neighbour entry: %v", err)
	}

	c, err := dial(w.podA, "tcp6", netip.AddrPortFrom(addrB6, 8080).String(), 5*time.Second)
	if err != nil {
		t.Fatalf("connect through an unresolved gateway: %v", err)
	}
	if err := echo(c, "nd"); err != nil {
		t.Fatal(err)
	}

	neighs, err := pod.NeighList(link.Attrs().Index, unix.AF_INET6)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range neighs {
		if gw, _ := netip.AddrFromSlice(n.IP); gw == gateway6 {
			if !bytes.Equal(n.HardwareAddr, w.a.HostMAC()) || n.State&(unix.NUD_REACHABLE|unix.NUD_STALE|unix.NUD_DELAY|unix.NUD_PROBE) == 0 {
				t.Fatalf("gateway neighbour %s state %#x, want %s resolved", n.HardwareAddr, n.State, w.a.HostMAC())
			}
			return
		}
	}
	t.Fatalf("no neighbour entry for %v after the connection", gateway6)
}
