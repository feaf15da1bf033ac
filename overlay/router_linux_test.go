package overlay_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/overlay"
	"github.com/nodeplane/nodeplane/overlay/internal/registrytest"
)

// TestPrivilegedRouter: the router installs a route per remote pod CIDR,
// follows a node moving and leaving, and removes a stale route an
// earlier router left; in tunnel mode (Device) a second router takes its
// routes over and sends them through the tunnel device from the device's
// address; routes are read back from the kernel.
func TestPrivilegedRouter(t *testing.T) {
	ns := testutils.NewNetNS(t)
	nl := ns.Netlink(t)
	dummy := testutils.NewVeth(t, ns, "ul0", testutils.NewNetNS(t), "peer")
	l, err := nl.LinkByIndex(dummy.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(192, 168, 50, 1), Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	stale := &netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 9, 0, 0), Mask: net.CIDRMask(24, 32)}, Gw: net.IPv4(192, 168, 50, 9), Protocol: overlay.RouteProtocol}
	if err := nl.RouteAdd(stale); err != nil {
		t.Fatal(err)
	}
	routes := func() []string {
		rs, err := nl.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: overlay.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rs {
			if r.Gw == nil {
				out = append(out, fmt.Sprintf("%v dev %d src %v", r.Dst, r.LinkIndex, r.Src))
				continue
			}
			out = append(out, r.Dst.String()+" via "+r.Gw.String())
		}
		slices.Sort(out)
		return out
	}
	want := func(what string, w ...string) {
		t.Helper()
		waitCond(t, what, func() bool { return slices.Equal(routes(), w) })
	}

	reg := overlay.NewLocalRegistry()
	defer reg.Close()
	ctx := context.Background()
	for _, n := range []overlay.Node{
		registrytest.Node("node-a", []string{"192.168.50.1"}, "10.1.0.0/24"),
		registrytest.Node("node-b", []string{"192.168.50.2"}, "10.1.1.0/24", "10.2.1.0/24"),
	} {
		if err := reg.Register(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	r, err := overlay.NewRouter(overlay.RouterConfig{Registry: reg, LocalNode: "node-a", NodeNetNS: nsPath(ns)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(rctx) }()

	want("node-b's routes, the stale one gone", "10.1.1.0/24 via 192.168.50.2", "10.2.1.0/24 via 192.168.50.2")
	if err := reg.Register(ctx, registrytest.Node("node-b", []string{"192.168.50.3"}, "10.1.1.0/24")); err != nil {
		t.Fatal(err)
	}
	want("node-b moved", "10.1.1.0/24 via 192.168.50.3")
	if err := reg.Deregister(ctx, "node-b"); err != nil {
		t.Fatal(err)
	}
	want("node-b gone")
	if err := reg.Register(ctx, registrytest.Node("node-c", []string{"192.168.50.4"}, "10.1.2.0/24")); err != nil {
		t.Fatal(err)
	}
	want("node-c joined", "10.1.2.0/24 via 192.168.50.4")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// Tunnel mode: a Router with the tunnel device takes over the routes
	// the first one left and sends them through the device, from the
	// device's address.
	tun, err := overlay.NewTunnel(overlay.TunnelConfig{NodeNetNS: nsPath(ns), HostAddresses: []netip.Addr{netip.MustParseAddr("10.1.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	rd, err := overlay.NewRouter(overlay.RouterConfig{Registry: reg, LocalNode: "node-a", NodeNetNS: nsPath(ns), Device: tun.Name()})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	rctx, cancel = context.WithCancel(ctx)
	go func() { done <- rd.Run(rctx) }()
	want("node-c's route through the tunnel", fmt.Sprintf("10.1.2.0/24 dev %d src 10.1.0.1", tun.Ifindex()))
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := overlay.NewRouter(overlay.RouterConfig{Registry: reg, LocalNode: "node-a", NodeNetNS: nsPath(ns), Device: "nosuchdev"}); err == nil {
		t.Error("NewRouter with a missing device succeeded")
	}

	if err := rd.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := routes(); len(got) != 0 {
		t.Errorf("after Flush: %v", got)
	}
	if err := r.Flush(); err != nil {
		t.Fatal(err)
	}
}
