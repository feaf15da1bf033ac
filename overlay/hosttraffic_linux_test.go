package overlay_test

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/overlay"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// TestPrivilegedHostTraffic: node A itself (its namespace) connects to
// the backend on B. A's Router with the tunnel device routes B's pod CIDRs
// into the device, from A's own address in its pod CIDR (Cilium's router
// IP, on the device), and the device's egress program encapsulates the
// packets with reserved:remote-node (6) as VNI, as Cilium sends host
// traffic: the capture on the underlay sees VNI 6 from A, and B takes the
// source as remote-node. B's replies return through the tunnel to A's
// address in its pod CIDR. B's ingress policy, which admits only the
// frontend's identity, drops the connection with POLICY_DENIED and
// remote-node as source identity; once it admits remote-node on the port,
// the connection goes through, over IPv4 and IPv6. The other way, B's
// backend reaches A's host address, which B's ipcache maps to remote-node
// through the tunnel (the registry's HostAddresses). A's counters have the
// packets under to-overlay and B's the drop under from-overlay; a packet
// A routes into the device to an address without a tunnel endpoint is
// dropped with NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT in A's events and
// counters.
func TestPrivilegedHostTraffic(t *testing.T) {
	w := newTwoNodes(t, overlay.ModeTunnel)
	a6 := w.underlay(w.addrA)[1]
	src, src6 := w.a.hostAddr(), w.a.hostAddr6()

	// Routes to B's pod CIDRs through A's tunnel device.
	waitCond(t, "node-a's route to node-b's pods through the tunnel", func() bool {
		rs, err := w.nsA.Netlink(t).RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: overlay.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
		return err == nil && len(rs) == 1 && rs[0].Dst.String() == w.b.podCIDR.String() && rs[0].Gw == nil &&
			rs[0].LinkIndex == w.a.tunnel.Ifindex() && rs[0].Src.String() == src.String()
	})
	rs, err := w.nsA.Netlink(t).RouteListFiltered(netlink.FAMILY_V6, &netlink.Route{Protocol: overlay.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil || len(rs) != 1 || rs[0].Dst.String() != w.b.podCIDR6.String() || rs[0].Src.String() != src6.String() {
		t.Fatalf("node-a's IPv6 routes through the tunnel: %v, %v; want %v from %v", rs, err, w.b.podCIDR6, src6)
	}

	// Denied: B's backend admits the frontend only.
	if err := echoFrom(w.nsA, netip.Addr{}, w.back.addr, 8080); err == nil {
		t.Fatal("node-a reached the backend, which admits only the frontend")
	}
	e := w.b.waitDrop(t, func(e *datapath.DropEvent) bool {
		return e.HasTuple && e.Tuple.Src == src && e.Tuple.Dst == w.back.addr
	})
	if e.Reason != monitor.DropPolicyDenied || e.SrcIdentity != identity.ReservedRemoteNode || e.DstIdentity != idBackend ||
		e.Hook != datapath.FromOverlay || e.Direction != mapstate.Ingress {
		t.Errorf("drop on B: reason %v, identities %d -> %d, hook %v, direction %v; want POLICY_DENIED, %d -> %d, from-overlay, ingress",
			e.Reason, e.SrcIdentity, e.DstIdentity, e.Hook, e.Direction, identity.ReservedRemoteNode, idBackend)
	}
	waitCond(t, "the capture to see node-a's VNI", func() bool {
		return w.capB.seen(w.addrA)[uint32(identity.ReservedRemoteNode)] > 0
	})

	// Admitted: remote-node on 8080, v4 and v6.
	if err := w.back.ep.Policy().Apply(map[mapstate.Key]mapstate.Entry{
		{Identity: idFrontend, Direction: mapstate.Ingress, Protocol: 6, Port: 8080, PortPrefixLen: 16}:                  {},
		{Identity: identity.ReservedRemoteNode, Direction: mapstate.Ingress, Protocol: 6, Port: 8080, PortPrefixLen: 16}: {},
	}, nil); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := echoFrom(w.nsA, netip.Addr{}, w.back.addr, 8080); err != nil {
			t.Fatalf("node-a to the backend on B, connection %d: %v", i, err)
		}
		if err := echoFrom(w.nsA, netip.Addr{}, w.back.addr6, 8080); err != nil {
			t.Fatalf("node-a to the backend on B over IPv6, connection %d: %v", i, err)
		}
	}
	// The capture reads asynchronously.
	waitCond(t, "the capture to see VNI 6 from node-a over IPv6", func() bool {
		return w.capB.seen(a6)[uint32(identity.ReservedRemoteNode)] > 0
	})
	// The host's own packets never carry an identity of its pods, nor
	// host (1): every VNI A sent is one of its pods' or remote-node.
	for _, src := range []netip.Addr{w.addrA, a6} {
		for vni := range w.capB.seen(src) {
			switch identity.ID(vni) {
			case idFrontend, idOther, identity.ReservedRemoteNode:
			default:
				t.Errorf("VNI %d from %v on the underlay", vni, src)
			}
		}
	}

	// The other way: B's backend connects to A's host address, which B's
	// ipcache has as remote-node behind A's tunnel endpoint (from the
	// registry's HostAddresses). The backend may send to remote-node on
	// port 9090 only, so the connection succeeding shows the destination
	// was taken as remote-node, not as world (A's pod CIDR).
	if e, ok := w.b.ipc.Get(netip.PrefixFrom(src, 32)); !ok || e.Identity != identity.ReservedRemoteNode || e.TunnelEndpoint != w.addrA {
		t.Fatalf("node-b's ipcache entry for node-a's host address: %+v, %v", e, ok)
	}
	testutils.ServeEcho(t, w.nsA, "tcp4", netip.AddrPortFrom(src, 9090).String())
	if err := w.back.ep.Policy().Apply(map[mapstate.Key]mapstate.Entry{
		{Identity: idFrontend, Direction: mapstate.Ingress, Protocol: 6, Port: 8080, PortPrefixLen: 16}:                  {},
		{Identity: identity.ReservedRemoteNode, Direction: mapstate.Ingress, Protocol: 6, Port: 8080, PortPrefixLen: 16}: {},
		{Identity: identity.ReservedRemoteNode, Direction: mapstate.Egress, Protocol: 6, Port: 9090, PortPrefixLen: 16}:  {},
	}, nil); err != nil {
		t.Fatal(err)
	}
	if err := echo(w.back, src, 9090); err != nil {
		t.Fatalf("backend on B to node-a's host address: %v", err)
	}

	ca := counters(t, w.a.d)
	if c := ca[datapath.CounterKey{Hook: datapath.ToOverlay}]; c.Packets == 0 {
		t.Errorf("node-a counted no packets encapsulated at to-overlay: %v", ca)
	}
	cb := counters(t, w.b.d)
	if c := cb[datapath.CounterKey{Hook: datapath.FromOverlay, Reason: monitor.DropPolicyDenied}]; c.Packets == 0 {
		t.Errorf("node-b counted no POLICY_DENIED at from-overlay: %v", cb)
	}

	// An address without a tunnel endpoint, routed into the device.
	nl := w.nsA.Netlink(t)
	stray := netip.MustParsePrefix("10.99.0.0/24")
	if err := nl.RouteAdd(&netlink.Route{
		Dst:       &net.IPNet{IP: stray.Addr().AsSlice(), Mask: net.CIDRMask(stray.Bits(), 32)},
		LinkIndex: w.a.tunnel.Ifindex(), Scope: netlink.SCOPE_LINK,
	}); err != nil {
		t.Fatal(err)
	}
	dst := stray.Addr().Next()
	if err := w.nsA.Do(func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 9)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("nowhere"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	e = w.a.waitDrop(t, func(e *datapath.DropEvent) bool { return e.HasTuple && e.Tuple.Dst == dst })
	if e.Reason != monitor.DropNoTunnelEndpoint || e.Hook != datapath.ToOverlay || e.SrcIdentity != identity.ReservedHost {
		t.Errorf("drop on A: reason %v at %v from %d, want %v at to-overlay from host", e.Reason, e.Hook, e.SrcIdentity, monitor.DropNoTunnelEndpoint)
	}
	ca = counters(t, w.a.d)
	if c := ca[datapath.CounterKey{Hook: datapath.ToOverlay, Reason: monitor.DropNoTunnelEndpoint}]; c.Packets == 0 {
		t.Errorf("node-a counted no NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT at to-overlay: %v", ca)
	}
}

func counters(t testing.TB, d *datapath.Datapath) map[datapath.CounterKey]datapath.Counter {
	t.Helper()
	c, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}
