package overlay_test

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/overlay"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// Pod to pod across two nodes: overlay (VXLAN) vs native routing vs the
// baseline, two namespaces joined by one bare veth pair; and node A
// itself to the pod on B over the overlay (host-overlay).
//
//	NODEPLANE_REQUIRE_PRIV=1 go test ./overlay -run '^$' -bench 'PodToPod' -count 6

// podToPodPaths returns, per path, a client namespace, a server
// namespace and the server's address.
func podToPodPath(b *testing.B, path string) (client, server *testutils.NetNS, dst netip.Addr) {
	switch path {
	case "bare-veth":
		c, s := testutils.NewNetNS(b), testutils.NewNetNS(b)
		testutils.NewVeth(b, c, "eth0", s, "eth0")
		for _, x := range []struct {
			ns   *testutils.NetNS
			addr string
		}{{c, "10.1.0.10"}, {s, "10.1.1.10"}} {
			nl := x.ns.Netlink(b)
			l, err := nl.LinkByName("eth0")
			if err != nil {
				b.Fatal(err)
			}
			if err := nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(x.addr).To4(), Mask: net.CIDRMask(8, 32)}}); err != nil {
				b.Fatal(err)
			}
		}
		return c, s, netip.MustParseAddr("10.1.1.10")
	case "overlay", "native":
		mode := overlay.ModeTunnel
		if path == "native" {
			mode = overlay.ModeNative
		}
		w := newTwoNodes(b, mode)
		if err := w.back.ep.Policy().Apply(map[mapstate.Key]mapstate.Entry{
			{Identity: idFrontend, Direction: mapstate.Ingress, Protocol: 6}: {},
		}, nil); err != nil {
			b.Fatal(err)
		}
		return w.front.ns, w.back.ns, w.back.addr
	case "host-overlay":
		// Node A itself (its namespace) to the pod on B: routed into
		// the tunnel device, encapsulated as remote-node.
		w := newTwoNodes(b, overlay.ModeTunnel)
		if err := w.back.ep.Policy().Apply(map[mapstate.Key]mapstate.Entry{
			{Identity: identity.ReservedRemoteNode, Direction: mapstate.Ingress, Protocol: 6}: {},
		}, nil); err != nil {
			b.Fatal(err)
		}
		waitCond(b, "node-a's route to node-b's pods", func() bool {
			rs, err := w.nsA.Netlink(b).RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: overlay.RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
			return err == nil && len(rs) == 1
		})
		return w.nsA, w.back.ns, w.back.addr
	}
	b.Fatalf("unknown path %q", path)
	return nil, nil, netip.Addr{}
}

var podToPodPaths = []string{"bare-veth", "native", "overlay", "host-overlay"}

// BenchmarkPodToPodThroughput: one iperf3 TCP stream, 3 s per op.
func BenchmarkPodToPodThroughput(b *testing.B) {
	for _, path := range podToPodPaths {
		b.Run(path, func(b *testing.B) {
			c, s, dst := podToPodPath(b, path)
			testutils.Iperf3(b, c, s, dst, "3")
		})
	}
}

// BenchmarkPodToPodRR: request/response latency, one byte each way over
// one TCP connection; one op is one round trip.
func BenchmarkPodToPodRR(b *testing.B) {
	for _, path := range podToPodPaths {
		b.Run(path, func(b *testing.B) {
			c, s, dst := podToPodPath(b, path)
			testutils.ServeEcho(b, s, "tcp4", netip.AddrPortFrom(dst, 8081).String())
			var conn net.Conn
			err := c.Do(func() (err error) {
				conn, err = net.DialTimeout("tcp4", netip.AddrPortFrom(dst, 8081).String(), 2*time.Second)
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			buf := []byte{0}
			b.ResetTimer()
			for range b.N {
				if _, err := conn.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := conn.Read(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
