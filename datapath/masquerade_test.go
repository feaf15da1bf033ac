package datapath

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/nat"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// TestPrivilegedMasquerade: pods on a node reach a "world" server in
// another namespace through the node's external interface. With BPF
// masquerading the server sees only the node's address; 60 concurrent
// connections from three pods to one server port get 60 distinct ports;
// two pods using the same source port do not collide; replies reach the
// right pod; GC keeps live flows and removes expired ones; a destination
// in an excluded prefix sees the pod's address; a connection from outside
// to a pod's address is answered from that address.
func TestPrivilegedMasquerade(t *testing.T) {
	d, _, world, wan, pods := newMasqWorld(t, Config{})
	nodeAddr, worldAddr := masqNodeAddr, masqWorldAddr

	// The server records who connects.
	seen := recordingServer(t, world, "tcp4", "203.0.113.2:9000")

	// The flows take node ports at random from 61000-65000 (the pods'
	// ephemeral ports are outside it); GC's made-up orphans below use
	// ports above it, which no real flow can hold.
	m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: nodeAddr, PortMin: 61000, PortMax: 65000, Exclude: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	if err != nil {
		t.Fatal(err)
	}

	talk := func(pod *testutils.NetNS, lport int) (net.Conn, error) {
		return talkFrom(pod, "tcp4", "203.0.113.2:9000", lport)
	}

	t.Run("Concurrent", func(t *testing.T) {
		const perPod = 20
		var wg sync.WaitGroup
		conns := make(chan net.Conn, len(pods)*perPod)
		errs := make(chan error, len(pods)*perPod)
		for _, pod := range pods {
			for range perPod {
				wg.Go(func() {
					c, err := talk(pod, 0)
					if err != nil {
						errs <- err
						return
					}
					conns <- c
				})
			}
		}
		wg.Wait()
		close(conns)
		close(errs)
		for err := range errs {
			t.Errorf("connection: %v", err)
		}
		n := 0
		for c := range conns {
			n++
			defer c.Close()
		}
		got := seen()
		ports := map[uint16]bool{}
		for src := range got {
			if src.Addr() != nodeAddr {
				t.Errorf("the server saw source %v, want only %v", src, nodeAddr)
			}
			ports[src.Port()] = true
		}
		if n != len(pods)*perPod || len(ports) != n {
			t.Errorf("%d connections open, %d distinct source ports at the server; want %d each", n, len(ports), len(pods)*perPod)
		}
		if k, err := m.Mappings(); err != nil || k < n {
			t.Errorf("NAT table holds %d flows (%v), want at least %d", k, err, n)
		}
	})

	t.Run("SamePort", func(t *testing.T) {
		var cs []net.Conn
		for _, pod := range pods[:2] {
			c, err := talk(pod, 40000)
			if err != nil {
				t.Fatalf("two pods from local port 40000: %v", err)
			}
			defer c.Close()
			cs = append(cs, c)
		}
		got := seen()
		if len(got) != 2 {
			t.Errorf("server saw %v, want two distinct sources", got)
		}
		for src := range got {
			if src.Addr() != nodeAddr {
				t.Errorf("the server saw source %v, want %v", src, nodeAddr)
			}
		}
	})

	// GC keeps the flows that are live and removes the expired ones,
	// both directions: a closed TCP connection (FIN seen) lives
	// CloseLifetime after its last packet, an open one TCPLifetime.
	t.Run("GC", func(t *testing.T) {
		open, err := talk(pods[0], 0)
		if err != nil {
			t.Fatal(err)
		}
		defer open.Close()
		seen()
		// An ingress entry whose egress entry is gone, created long ago,
		// and one created now (a flow being set up).
		// Their node ports are outside the range the flows take theirs
		// from: a real flow's ingress entry would pair with them.
		orphan := natKey{DstAddr: addr16(nodeAddr), SrcPort: nat.PortBytes(9000), DstPort: nat.PortBytes(65535), Proto: 6, Family: nat.FamilyV4, Dir: nat.Ingress}
		orphan.SrcAddr = addr16(worldAddr)
		young := orphan
		young.DstPort = nat.PortBytes(65534)
		if err := d.maps.nat.Put(orphan, natEntry{Created: 1}); err != nil {
			t.Fatal(err)
		}
		if err := d.maps.nat.Put(young, natEntry{Created: uint64(nat.Now())}); err != nil {
			t.Fatal(err)
		}
		before, err := m.Mappings()
		if err != nil || before < 62 {
			t.Fatalf("mappings before GC: %d, %v; want the 62 connections so far", before, err)
		}
		if n, err := m.GC(); err != nil || n != 0 {
			t.Fatalf("GC now removed %d flows (%v), want none: all are fresh", n, err)
		}
		var v natEntry
		if err := d.maps.nat.Lookup(orphan, &v); err == nil {
			t.Error("the old orphan survived GC")
		}
		if err := d.maps.nat.Lookup(young, &v); err != nil {
			t.Errorf("the young orphan did not survive GC: %v", err)
		}
		// The closed connections have expired 11 s later; the open one
		// has not.
		n, err := m.table.GC(nat.Now() + 11*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if n != before-1 {
			t.Errorf("GC 11 s later removed %d of %d flows, want all but the open one", n, before)
		}
		var (
			k    natKey
			left []natKey
		)
		for it := d.maps.nat.Iterate(); it.Next(&k, &v); {
			left = append(left, k)
		}
		if len(left) != 2 {
			t.Errorf("entries left: %v, want the open flow's two", left)
		}
		// The open connection still talks, through its translation.
		if _, err := fmt.Fprintf(open, "x\n"); err != nil {
			t.Fatal(err)
		}
		if n, err := m.table.GC(nat.Now() + 7*time.Hour); err != nil || n != 1 {
			t.Errorf("GC 7 h later removed %d flows (%v), want the open one", n, err)
		}
	})

	t.Run("Excluded", func(t *testing.T) {
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		// The world namespace routes pod addresses back through the node,
		// as a cluster's native network would.
		wnl := world.Netlink(t)
		if err := wnl.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.IPv4(10, 1, 0, 0), Mask: net.CIDRMask(24, 32)}, Gw: nodeAddr.AsSlice()}); err != nil {
			t.Fatal(err)
		}
		m2, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: nodeAddr, Exclude: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}})
		if err != nil {
			t.Fatal(err)
		}
		defer m2.Close()
		c, err := talk(pods[0], 0)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got := seen()
		if len(got) != 1 {
			t.Fatalf("server saw %v", got)
		}
		for src := range got {
			if src.Addr() != netip.MustParseAddr("10.1.0.10") {
				t.Errorf("an excluded destination saw %v, want the pod's address", src)
			}
		}
	})

	// A client outside the cluster that reaches a pod's address (the
	// world routes the pods' /24 through the node, as above) gets its
	// replies from that address: masquerading is for the connections
	// the pods open, not for their answers. Masqueraded, the SYN-ACK
	// would come from the node's address and the dial would fail.
	t.Run("InboundRepliesKeepThePodAddress", func(t *testing.T) {
		m3, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: nodeAddr, Exclude: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
		if err != nil {
			t.Fatal(err)
		}
		defer m3.Close()
		ep, ok := d.Endpoint(1)
		if !ok {
			t.Fatal("endpoint 1 is gone")
		}
		mustUpdate(t, ep.Policy(), map[mapstate.Key]mapstate.Entry{{Identity: identity.ReservedWorld, Direction: mapstate.Ingress}: allow})
		podSeen := recordingServer(t, pods[0], "tcp4", "10.1.0.10:8080")
		before, err := m3.Mappings()
		if err != nil {
			t.Fatal(err)
		}
		c, err := talkTo(world, "tcp4", "10.1.0.10:8080")
		if err != nil {
			t.Fatalf("world to the pod's address: %v", err)
		}
		defer c.Close()
		if got := c.RemoteAddr().(*net.TCPAddr).AddrPort(); got != netip.MustParseAddrPort("10.1.0.10:8080") {
			t.Errorf("the world's connection is to %v, want the pod's address", got)
		}
		if got := podSeen(); len(got) != 1 || !got[netip.AddrPortFrom(worldAddr, c.LocalAddr().(*net.TCPAddr).AddrPort().Port())] {
			t.Errorf("the pod saw %v, want the world's address and port", got)
		}
		// The pod's own connections out are still masqueraded.
		out, err := talk(pods[0], 0)
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		for src := range seen() {
			if src.Addr() != nodeAddr {
				t.Errorf("the pod's own connection reached the world from %v, want %v", src, nodeAddr)
			}
		}
		if after, err := m3.Mappings(); err != nil || after != before+1 {
			t.Errorf("NAT table: %d flows before, %d (%v) after one inbound and one outbound connection; want one more", before, after, err)
		}
	})
}

var (
	masqNodeAddr   = netip.MustParseAddr("203.0.113.1")
	masqWorldAddr  = netip.MustParseAddr("203.0.113.2")
	masqNodeAddr6  = netip.MustParseAddr("fd00:203::1")
	masqWorldAddr6 = netip.MustParseAddr("fd00:203::2")
)

// newMasqWorld is a node with three endpoints (10.1.0.10-12 and
// fd00:0:0:10::10-12, allowed to send to the world) and a "world"
// namespace behind the node's external interface wan0 (node
// 203.0.113.1/24 and fd00:203::1/64, world .2 and ::2). The node
// forwards; the world has no route to the pods.
func newMasqWorld(t testing.TB, cfg Config) (*Datapath, *testutils.NetNS, *testutils.NetNS, *testutils.Veth, []*testutils.NetNS) {
	d, node := newTestDatapath(t, cfg)
	world := testutils.NewNetNS(t)
	// No duplicate address detection on the link between node and world:
	// while an interface's link-local address is tentative (one to two
	// seconds after it comes up, longer on a busy machine) the kernel
	// sends no neighbour solicitation from it (ndisc_send_ns wants a
	// usable link-local source), so the node could not resolve the
	// world's IPv6 address within a dial's timeout and every IPv6
	// connection of a test failed at once (seen in CI, about 1 in 5 runs
	// under load, never with the masquerade programs involved).
	for _, ns := range []*testutils.NetNS{node, world} {
		sysctlIn(t, ns, "net/ipv6/conf/default/accept_dad", "0")
		sysctlIn(t, ns, "net/ipv6/conf/all/accept_dad", "0")
	}
	wan := testutils.NewVeth(t, node, "wan0", world, "eth0")
	for _, x := range []struct {
		ns   *testutils.NetNS
		name string
		addr netip.Addr
		bits int
	}{
		{node, "wan0", masqNodeAddr, 24}, {world, "eth0", masqWorldAddr, 24},
		{node, "wan0", masqNodeAddr6, 64}, {world, "eth0", masqWorldAddr6, 64},
	} {
		nl := x.ns.Netlink(t)
		l, err := nl.LinkByName(x.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: x.addr.AsSlice(), Mask: net.CIDRMask(x.bits, x.addr.BitLen())}, Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatal(err)
		}
	}
	sysctlIn(t, node, "net/ipv4/ip_forward", "1")
	sysctlIn(t, node, "net/ipv6/conf/all/forwarding", "1")

	var pods []*testutils.NetNS
	for i := range 3 {
		ns := testutils.NewNetNS(t)
		ep, err := d.AddEndpoint(EndpointConfig{ID: EndpointID(i + 1), Identity: identity.ID(1000 + i), IPv4: netip.AddrFrom4([4]byte{10, 1, 0, byte(10 + i)}),
			IPv6: netip.AddrFrom16([16]byte{0xfd, 7: 0x10, 15: byte(0x10 + i)}), NetNS: nsPath(ns)})
		if err != nil {
			t.Fatal(err)
		}
		mustUpdate(t, ep.Policy(), map[mapstate.Key]mapstate.Entry{{Identity: identity.ReservedWorld, Direction: mapstate.Egress}: allow})
		pods = append(pods, ns)
	}

	return d, node, world, wan, pods
}

func addr16(a netip.Addr) [16]byte {
	b, _ := nat.AddrBytes(a)
	return b
}
