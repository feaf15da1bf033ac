package overlay_test

import (
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/overlay"
)

// TestPrivilegedForwardedIntoTunnel: packets node A forwards into its
// tunnel device (from a host behind A, not from a local pod or A's own
// sockets) leave with their source's identity in A's ipcache as VNI, and
// with reserved:world (2) when A's ipcache does not know the source, as
// Cilium's bpf_host resolves a forwarded packet's source (resolve_srcid,
// WORLD_ID by default) and encapsulates with it: never remote-node, which
// would let the outside in wherever remote-node is allowed. The capture on
// B's underlay reads the VNI of the real packets; B's drop events (its
// backend admits the frontend only) show B took the same identity from
// the VNI.
func TestPrivilegedForwardedIntoTunnel(t *testing.T) {
	w := newTwoNodes(t, overlay.ModeTunnel)
	const idKnown identity.ID = 4242
	var (
		gw      = netip.MustParseAddr("172.31.0.1")
		unknown = netip.MustParseAddr("172.31.0.2") // not in A's ipcache
		known   = netip.MustParseAddr("172.31.9.2") // in 172.31.9.0/24, idKnown
	)

	// A host outside the cluster behind A: "ext0" on A, "eth0" there,
	// with its default route through A. A forwards (tunnel mode alone
	// does not turn forwarding on) and routes known's prefix back to it.
	ext := testutils.NewNetNS(t)
	testutils.NewVeth(t, w.nsA, "ext0", ext, "eth0")
	for _, x := range []struct {
		ns    *testutils.NetNS
		name  string
		addrs []netip.Prefix
	}{
		{w.nsA, "ext0", []netip.Prefix{netip.PrefixFrom(gw, 24)}},
		{ext, "eth0", []netip.Prefix{netip.PrefixFrom(unknown, 24), netip.PrefixFrom(known, 32)}},
	} {
		nl := x.ns.Netlink(t)
		l, err := nl.LinkByName(x.name)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range x.addrs {
			if err := nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	extnl := ext.Netlink(t)
	if err := extnl.RouteAdd(&netlink.Route{Gw: gw.AsSlice(), Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}); err != nil {
		t.Fatal(err)
	}
	anl := w.nsA.Netlink(t)
	extA, err := anl.LinkByName("ext0")
	if err != nil {
		t.Fatal(err)
	}
	if err := anl.RouteAdd(&netlink.Route{LinkIndex: extA.Attrs().Index, Gw: unknown.AsSlice(),
		Dst: &net.IPNet{IP: net.IP{172, 31, 9, 0}, Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := w.nsA.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) }); err != nil {
		t.Fatal(err)
	}
	if err := w.a.ipc.Upsert(netip.MustParsePrefix("172.31.9.0/24"), ipcache.Entry{Identity: idKnown}); err != nil {
		t.Fatal(err)
	}
	waitCond(t, "node-a's route to node-b's pods through the tunnel", func() bool {
		rs, err := anl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: overlay.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
		return err == nil && len(rs) == 1 && rs[0].Dst.String() == w.b.podCIDR.String() && rs[0].LinkIndex == w.a.tunnel.Ifindex()
	})

	for _, c := range []struct {
		name string
		src  netip.Addr
		want identity.ID
	}{
		{"a source in a known prefix", known, idKnown},
		{"an unknown source", unknown, identity.ReservedWorld},
	} {
		t.Run(c.name, func(t *testing.T) {
			// UDP datagrams from src to B's backend until the capture
			// sees the VNI (the first wait on A's neighbour entry).
			send := func() {
				if err := ext.Do(func() error {
					u, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(c.src, 0)),
						net.UDPAddrFromAddrPort(netip.AddrPortFrom(w.back.addr, 7)))
					if err != nil {
						return err
					}
					defer u.Close()
					_, err = u.Write([]byte("forwarded"))
					return err
				}); err != nil {
					t.Fatal(err)
				}
			}
			waitCond(t, "the capture to see the forwarded packets' VNI", func() bool {
				send()
				time.Sleep(50 * time.Millisecond)
				return w.capB.seen(w.addrA)[uint32(c.want)] > 0
			})
			e := w.b.waitDrop(t, func(e *datapath.DropEvent) bool {
				return e.HasTuple && e.Tuple.Src == c.src && e.Tuple.Dst == w.back.addr
			})
			if e.Reason != monitor.DropPolicyDenied || e.SrcIdentity != c.want || e.Hook != datapath.FromOverlay {
				t.Errorf("drop on B: reason %v, source identity %d, hook %v; want POLICY_DENIED, %d, from-overlay",
					e.Reason, e.SrcIdentity, e.Hook, c.want)
			}
		})
	}
}
