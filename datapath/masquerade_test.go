package datapath

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// TestPrivilegedMasquerade: pods on a node reach a "world" server in
// another namespace through the node's external interface. With BPF
// masquerading the server sees only the node's address; 60 concurrent
// connections from three pods to one server port get 60 distinct ports;
// two pods using the same source port do not collide; replies reach the
// right pod; a destination in an excluded prefix sees the pod's address.
func TestPrivilegedMasquerade(t *testing.T) {
	d, _, world, wan, pods := newMasqWorld(t)
	nodeAddr, worldAddr := masqNodeAddr, masqWorldAddr

	// The server records who connects.
	var mu sync.Mutex
	sources := map[netip.AddrPort]bool{}
	var ln net.Listener
	if err := world.Do(func() (err error) { ln, err = net.Listen("tcp4", "203.0.113.2:9000"); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			sources[c.RemoteAddr().(*net.TCPAddr).AddrPort()] = true
			mu.Unlock()
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				line, err := r.ReadString('\n')
				if err == nil {
					fmt.Fprintf(c, "%s says %s", c.RemoteAddr(), line)
				}
				_, _ = r.ReadByte() // hold the connection until the client closes
			}()
		}
	}()
	seen := func() map[netip.AddrPort]bool {
		mu.Lock()
		defer mu.Unlock()
		out := map[netip.AddrPort]bool{}
		for k := range sources {
			out[k] = true
		}
		clear(sources)
		return out
	}

	m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: nodeAddr, Exclude: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	if err != nil {
		t.Fatal(err)
	}

	// talk connects from pod (from local port lport, 0 for any), checks
	// the reply is addressed to the pod's connection, and returns the
	// open connection.
	talk := func(pod *testutils.NetNS, lport int) (net.Conn, error) {
		var c net.Conn
		err := pod.Do(func() (err error) {
			dl := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{Port: lport}}
			c, err = dl.Dial("tcp4", "203.0.113.2:9000")
			return err
		})
		if err != nil {
			return nil, err
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(c, "hello from %s\n", c.LocalAddr()); err != nil {
			c.Close()
			return nil, err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			c.Close()
			return nil, err
		}
		if want := fmt.Sprintf("says hello from %s\n", c.LocalAddr()); len(line) < len(want) || line[len(line)-len(want):] != want {
			c.Close()
			return nil, fmt.Errorf("reply %q is not for %s", line, c.LocalAddr())
		}
		return c, nil
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

	// Every port but one is taken for flows to the server's port: a new
	// connection gets exactly the free one; with none free it is dropped.
	t.Run("Collisions", func(t *testing.T) {
		free := uint16(63333)
		key := natKey{SrcAddr: worldAddr.As4(), DstAddr: nodeAddr.As4(), SrcPort: [2]byte{9000 >> 8, 9000 & 0xff}, Proto: 6, Dir: natIngress}
		taken := natEntry{Addr: [4]byte{10, 9, 9, 9}, Port: [2]byte{0, 1}}
		var keys []natKey
		for p := natPortMin; p <= natPortMax; p++ {
			if uint16(p) == free {
				continue
			}
			key.DstPort = [2]byte{byte(p >> 8), byte(p)}
			keys = append(keys, key)
			if err := d.maps.nat.Put(key, taken); err != nil {
				t.Fatal(err)
			}
		}
		c, err := talk(pods[2], 0)
		if err != nil {
			t.Fatalf("with one free port: %v", err)
		}
		got := seen()
		if len(got) != 1 || !got[netip.AddrPortFrom(nodeAddr, free)] {
			t.Errorf("server saw %v, want only %v:%d", got, nodeAddr, free)
		}
		c.Close()
		// The free port is now the connection's: a second flow from a new
		// source port finds none.
		if c, err := talk(pods[2], 0); err == nil {
			c.Close()
			t.Error("a connection succeeded with no port free")
		}
	})

	// With conntrack flushed, GC frees every translation, both
	// directions.
	t.Run("GC", func(t *testing.T) {
		// Reverse entries without a flow entry are collected once they
		// are a second old (see GC).
		time.Sleep(1100 * time.Millisecond)
		if _, err := d.Conntrack().Flush(); err != nil {
			t.Fatal(err)
		}
		before, err := m.Mappings()
		if err != nil || before == 0 {
			t.Fatalf("mappings before GC: %d, %v", before, err)
		}
		n, err := m.GC()
		if err != nil {
			t.Fatal(err)
		}
		// What is left must be what GC keeps: flows conntrack knows (a
		// packet may have recreated one since the flush).
		var (
			k             natKey
			v             natEntry
			kept, reverse int
		)
		for it := d.maps.nat.Iterate(); it.Next(&k, &v); {
			if k.Dir != natEgress {
				reverse++
				continue
			}
			kept++
			tup := Tuple{Src: netip.AddrFrom4(k.SrcAddr), Dst: netip.AddrFrom4(k.DstAddr), SrcPort: be16(k.SrcPort).host(), DstPort: be16(k.DstPort).host(), Proto: nodeplane.Protocol(k.Proto)}
			if _, ok, _ := d.Conntrack().Lookup(tup); !ok {
				t.Errorf("GC kept %v, which conntrack does not know", tup)
			}
		}
		if n+kept != before || n < before-2 {
			t.Errorf("GC removed %d of %d flows and kept %d", n, before, kept)
		}
		// The 4535 reverse entries Collisions planted have no flow entry.
		if reverse > kept+2 {
			t.Errorf("%d reverse entries left for %d flows", reverse, kept)
		}
		if after, _ := m.Mappings(); after != kept {
			t.Errorf("%d mappings after GC, %d flow entries", after, kept)
		}
		// The ports are free again.
		c, err := talk(pods[0], 0)
		if err != nil {
			t.Fatalf("after GC: %v", err)
		}
		c.Close()
		seen()
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
}

var (
	masqNodeAddr  = netip.MustParseAddr("203.0.113.1")
	masqWorldAddr = netip.MustParseAddr("203.0.113.2")
)

// newMasqWorld is a node with three endpoints (10.1.0.10-12, allowed to
// send to the world) and a "world" namespace behind the node's external
// interface wan0 (node 203.0.113.1/24, world 203.0.113.2/24). The node
// forwards; the world has no route to the pods.
func newMasqWorld(t testing.TB) (*Datapath, *testutils.NetNS, *testutils.NetNS, *testutils.Veth, []*testutils.NetNS) {
	return newMasqWorldWith(t, Config{})
}

func newMasqWorldWith(t testing.TB, cfg Config) (*Datapath, *testutils.NetNS, *testutils.NetNS, *testutils.Veth, []*testutils.NetNS) {
	d, node := newTestDatapath(t, cfg)
	world := testutils.NewNetNS(t)
	wan := testutils.NewVeth(t, node, "wan0", world, "eth0")
	nodeAddr, worldAddr := masqNodeAddr, masqWorldAddr
	for _, x := range []struct {
		ns   *testutils.NetNS
		name string
		addr netip.Addr
	}{{node, "wan0", nodeAddr}, {world, "eth0", worldAddr}} {
		nl := x.ns.Netlink(t)
		l, err := nl.LinkByName(x.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: x.addr.AsSlice(), Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := node.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644) }); err != nil {
		t.Fatal(err)
	}

	var pods []*testutils.NetNS
	for i := range 3 {
		ns := testutils.NewNetNS(t)
		ep, err := d.AddEndpoint(EndpointConfig{ID: EndpointID(i + 1), Identity: identity.ID(1000 + i), IPv4: netip.AddrFrom4([4]byte{10, 1, 0, byte(10 + i)}), NetNS: nsPath(ns)})
		if err != nil {
			t.Fatal(err)
		}
		mustUpdate(t, ep.Policy(), map[mapstate.Key]mapstate.Entry{{Identity: identity.ReservedWorld, Direction: mapstate.Egress}: allow})
		pods = append(pods, ns)
	}

	return d, node, world, wan, pods
}
