// Package proxytest builds the world the proxies' privileged tests run in:
// a node namespace with a datapath, two endpoints in namespaces of their
// own, the node's addresses, and the proxy routing. It is for tests only.
package proxytest

import (
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy/mapstate"
	"github.com/nodeplane/nodeplane/proxy"
)

// Identities and addresses of the world.
var (
	// IDA and IDB are cluster-scoped identities (cluster 1).
	IDA, IDB = identity.ID(1<<16 | 1000), identity.ID(1<<16 | 2000)
	A4, A6   = netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")
	B4, B6   = netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("fd00::2")
	// Node4 and Node6 are the node's own addresses (on its loopback), the
	// source of the proxies' upstream connections.
	Node4, Node6 = netip.MustParseAddr("10.0.0.254"), netip.MustParseAddr("fd00::fe")
)

// World is a node with endpoints A and B.
type World struct {
	Node, PodA, PodB *testutils.NetNS
	DP               *datapath.Datapath
	A, B             *datapath.Endpoint
	// Proxy is the proxy configuration for the node's namespace.
	Proxy proxy.Config
}

// NsPath is the path of a test namespace.
func NsPath(ns *testutils.NetNS) string { return fmt.Sprintf("/proc/self/fd/%d", ns.FD()) }

// New builds the world; everything is removed by tb.Cleanup. It skips or
// fails as testutils.RequirePrivileged says.
func New(tb testing.TB) *World {
	tb.Helper()
	testutils.RequirePrivileged(tb)
	w := &World{Node: testutils.NewNetNS(tb), PodA: testutils.NewNetNS(tb), PodB: testutils.NewNetNS(tb)}
	w.Proxy = proxy.Config{NodeNetNS: NsPath(w.Node)}
	d, err := datapath.New(datapath.Config{NodeNetNS: NsPath(w.Node), ConntrackMaxEntries: 4096, IPCacheMaxEntries: 4096})
	testutils.SkipIfNotSupported(tb, err)
	tb.Cleanup(func() {
		if err := d.Close(); err != nil {
			tb.Errorf("close datapath: %v", err)
		}
	})
	w.DP = d
	if w.A, err = d.AddEndpoint(datapath.EndpointConfig{ID: 1, Identity: IDA, IPv4: A4, IPv6: A6, NetNS: NsPath(w.PodA)}); err != nil {
		tb.Fatal(err)
	}
	if w.B, err = d.AddEndpoint(datapath.EndpointConfig{ID: 2, Identity: IDB, IPv4: B4, IPv6: B6, NetNS: NsPath(w.PodB)}); err != nil {
		tb.Fatal(err)
	}
	nl := w.Node.Netlink(tb)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		tb.Fatal(err)
	}
	for _, a := range []netip.Addr{Node4, Node6} {
		ipn := &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
		if err := nl.AddrAdd(lo, &netlink.Addr{IPNet: ipn, Flags: unix.IFA_F_NODAD}); err != nil {
			tb.Fatal(err)
		}
		if err := d.IPCache().UpsertPrefix(netip.PrefixFrom(a, a.BitLen()), ipcache.Entry{Identity: identity.ReservedHost}); err != nil {
			tb.Fatal(err)
		}
	}
	r, err := proxy.SetupRouting(w.Proxy)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := r.Close(); err != nil {
			tb.Errorf("close routing: %v", err)
		}
	})
	return w
}

// Apply writes entries into ep's policy map.
func Apply(tb testing.TB, ep *datapath.Endpoint, s mapstate.State) {
	tb.Helper()
	if err := ep.ApplyPolicy(s, nil); err != nil {
		tb.Fatal(err)
	}
}

// L4 is the key of an L4 entry for peer, direction, protocol and port.
func L4(peer identity.ID, dir mapstate.Direction, proto nodeplane.Protocol, port uint16) mapstate.Key {
	return mapstate.Key{Identity: peer, Direction: dir, Protocol: proto, Port: port, PortPrefixLen: 16}
}
