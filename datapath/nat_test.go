package datapath

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/internal/nat"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/lb"
)

// recordingServer listens on addr (TCP) in ns, answers each connection's
// first line with "<remote> says <line>" and holds the connection until
// the client closes it. seen returns (and forgets) the sources so far.
func recordingServer(t testing.TB, ns *testutils.NetNS, network, addr string) (seen func() map[netip.AddrPort]bool) {
	var (
		mu      sync.Mutex
		sources = map[netip.AddrPort]bool{}
		ln      net.Listener
	)
	if err := ns.Do(func() (err error) { ln, err = net.Listen(network, addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			src := c.RemoteAddr().(*net.TCPAddr).AddrPort()
			mu.Lock()
			sources[netip.AddrPortFrom(src.Addr().Unmap(), src.Port())] = true
			mu.Unlock()
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				line, err := r.ReadString('\n')
				if err == nil {
					fmt.Fprintf(c, "%s says %s", c.RemoteAddr(), line)
				}
				_, _ = r.ReadByte()
			}()
		}
	}()
	return func() map[netip.AddrPort]bool {
		mu.Lock()
		defer mu.Unlock()
		out := map[netip.AddrPort]bool{}
		for k := range sources {
			out[k] = true
		}
		clear(sources)
		return out
	}
}

// talkTo connects from ns to dst, sends a line naming its own address and
// checks the answer is about that line: the reply reached this
// connection. It returns the open connection.
func talkTo(ns *testutils.NetNS, network, dst string) (net.Conn, error) {
	return talkFrom(ns, network, dst, 0)
}

// talkFrom is talkTo from local port lport (0: any).
func talkFrom(ns *testutils.NetNS, network, dst string, lport int) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		dl := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{Port: lport}}
		c, err = dl.Dial(network, dst)
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

// openAll runs the dials at once and returns the connections they made;
// each failure is a test error.
func openAll(t *testing.T, dials []func() (net.Conn, error)) []net.Conn {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	for _, dial := range dials {
		wg.Go(func() {
			c, err := dial()
			if err != nil {
				t.Errorf("connection: %v", err)
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return conns
}

func sysctlIn(t testing.TB, ns *testutils.NetNS, key, value string) {
	t.Helper()
	if err := ns.Do(func() error { return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644) }); err != nil {
		t.Fatal(err)
	}
}

// TestPrivilegedNATSharedWithNorthSouth: masquerading and lb's SNAT mode
// translate into the node's one NAT table (lb.NorthSouthConfig.NATMap =
// Datapath.NATMap), to the same node address and the same server port at
// once. With 8 node ports, 4 pod connections (masqueraded) and 4 client
// connections to a NodePort whose backend is the server (SNATed) get the
// 8 distinct ports; every reply reaches its own connection; a ninth flow
// of either kind finds no port and is dropped with DROP_NAT_NO_MAPPING,
// counted by the program that dropped it. Two separate tables would hand
// out the same port twice (both start from the flow's own port or a
// random one in the same 8) and connections would fail.
//
// The datapath's table has a size of its own (NATMaxEntries), which lb
// takes on.
func TestPrivilegedNATSharedWithNorthSouth(t *testing.T) {
	d, node, world, wan, pods := newMasqWorld(t, Config{NATMaxEntries: 4096})
	nodeAddr := masqNodeAddr
	client := testutils.NewNetNS(t)
	cli := testutils.NewVeth(t, node, "cli0", client, "eth0")
	for _, x := range []struct {
		ns   *testutils.NetNS
		name string
		addr string
	}{{node, "cli0", "198.51.100.1"}, {client, "eth0", "198.51.100.2"}} {
		nl := x.ns.Netlink(t)
		l, err := nl.LinkByName(x.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := nl.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(x.addr), Mask: net.CIDRMask(24, 32)}}); err != nil {
			t.Fatal(err)
		}
	}
	// The translated packets carry node addresses as sources when the
	// stack routes them (the SNATed request, and the reply from the
	// NodePort, the node's own address): IPv4 drops them as martians
	// unless the receiving interface accepts local sources.
	sysctlIn(t, node, "net/ipv4/conf/cli0/accept_local", "1")
	sysctlIn(t, node, "net/ipv4/conf/wan0/accept_local", "1")

	const portMin, portMax = 61000, 61007
	m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: nodeAddr, Exclude: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, PortMin: portMin, PortMax: portMax, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	ns, err := lb.NewNorthSouth(lb.NorthSouthConfig{MaglevTableSize: 251, SNATAddrs: []netip.Addr{nodeAddr}, NATMap: d.NATMap(), NATPortMin: portMin, NATPortMax: portMax, NATGCInterval: -1})
	testutils.SkipIfNotSupported(t, err)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	fe := lb.Frontend{Addr: netip.MustParseAddrPort("198.51.100.1:30080"), Protocol: nodeplane.ProtoTCP}
	if err := ns.Upsert(lb.Service{Frontend: fe, Type: lb.NodePort, Algorithm: lb.AlgorithmMaglev}, []lb.Backend{{Addr: netip.MustParseAddrPort("203.0.113.2:9000")}}); err != nil {
		t.Fatal(err)
	}
	if err := node.Do(func() error {
		for _, idx := range []int{cli.Index, wan.Index} {
			if _, err := ns.Attach(idx, lb.AttachAuto); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		testutils.SkipIfNotSupported(t, err)
		t.Fatal(err)
	}
	seen := recordingServer(t, world, "tcp4", "203.0.113.2:9000")

	var dials []func() (net.Conn, error)
	for i := range 4 {
		dials = append(dials,
			func() (net.Conn, error) { return talkTo(pods[i%len(pods)], "tcp4", "203.0.113.2:9000") },
			func() (net.Conn, error) { return talkTo(client, "tcp4", fe.Addr.String()) })
	}
	conns := openAll(t, dials)
	got := seen()
	for src := range got {
		if src.Addr() != nodeAddr || src.Port() < portMin || src.Port() > portMax {
			t.Errorf("the server saw %v, want %v:[%d,%d]", src, nodeAddr, portMin, portMax)
		}
	}
	if len(conns) != 8 || len(got) != 8 {
		t.Fatalf("%d connections open, the server saw %d distinct sources; want 8 each", len(conns), len(got))
	}
	st, err := nat.New(d.NATMap(), nat.Lifetimes{}).Stats()
	if err != nil || st.Flows != 8 || st.Services != 4 {
		t.Errorf("NAT table: %+v (%v), want 8 flows, 4 of them the service's", st, err)
	}
	if n, err := ns.NATFlows(); err != nil || n != 8 {
		t.Errorf("NorthSouth sees %d flows (%v), want the same 8", n, err)
	}

	// A ninth flow of either kind: no port left.
	if c, err := talkTo(pods[0], "tcp4", "203.0.113.2:9000"); err == nil {
		c.Close()
		t.Error("a ninth (masqueraded) connection succeeded")
	}
	if c, err := talkTo(client, "tcp4", fe.Addr.String()); err == nil {
		c.Close()
		t.Error("a ninth (SNATed) connection succeeded")
	}
	md, err := m.Drops()
	if err != nil || md[monitor.DropNATNoMapping] == 0 {
		t.Errorf("masquerade drops %v (%v), want DROP_NAT_NO_MAPPING", md, err)
	}
	nd, err := ns.Drops()
	if err != nil || nd[monitor.DropNATNoMapping] == 0 {
		t.Errorf("north-south drops %v (%v), want DROP_NAT_NO_MAPPING", nd, err)
	}
	if len(seen()) != 0 {
		t.Error("the server saw a ninth connection")
	}
}

// echoLine writes a line on c and reads it back from an echo server.
func echoLine(c net.Conn, line string) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintln(c, line); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != line+"\n" {
		return fmt.Errorf("echo %q, sent %q", got, line)
	}
	return nil
}

func natDrops(t *testing.T, m *Masquerade) uint64 {
	t.Helper()
	d, err := m.Drops()
	if err != nil {
		t.Fatal(err)
	}
	return d[monitor.DropNATNoMapping]
}

// TestPrivilegedMasqueradeCollisions: with 8 node ports and 7 of them
// taken for flows to the server's port, a new connection gets exactly the
// free one; with none free the next is dropped with DROP_NAT_NO_MAPPING,
// counted; a connection to another server port still gets a port (ports
// are per outside address and port).
func TestPrivilegedMasqueradeCollisions(t *testing.T) {
	d, _, world, wan, pods := newMasqWorld(t, Config{})
	const portMin, portMax, free = 61000, 61007, 61005
	m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: masqNodeAddr, PortMin: portMin, PortMax: portMax, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	seen := recordingServer(t, world, "tcp4", "203.0.113.2:9000")
	recordingServer(t, world, "tcp4", "203.0.113.2:9001")

	k := natKey{SrcAddr: addr16(masqWorldAddr), DstAddr: addr16(masqNodeAddr), SrcPort: nat.PortBytes(9000), Proto: 6, Family: nat.FamilyV4, Dir: nat.Ingress}
	for p := portMin; p <= portMax; p++ {
		if p == free {
			continue
		}
		k.DstPort = nat.PortBytes(uint16(p))
		if err := d.maps.nat.Put(k, natEntry{Addr: addr16(netip.MustParseAddr("10.9.9.9")), Port: nat.PortBytes(1), Created: uint64(nat.Now())}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := talkTo(pods[0], "tcp4", "203.0.113.2:9000")
	if err != nil {
		t.Fatalf("with one free port: %v", err)
	}
	defer c.Close()
	if got := seen(); len(got) != 1 || !got[netip.AddrPortFrom(masqNodeAddr, free)] {
		t.Errorf("server saw %v, want only %v:%d", got, masqNodeAddr, free)
	}
	before := natDrops(t, m)
	if c, err := talkTo(pods[1], "tcp4", "203.0.113.2:9000"); err == nil {
		c.Close()
		t.Error("a connection succeeded with no port free")
	}
	if after := natDrops(t, m); after <= before {
		t.Errorf("DROP_NAT_NO_MAPPING %d -> %d, want the refused flow counted", before, after)
	}
	c2, err := talkTo(pods[1], "tcp4", "203.0.113.2:9001")
	if err != nil {
		t.Fatalf("to another server port: %v", err)
	}
	c2.Close()
}

// TestPrivilegedMasqueradeFullTable: when the NAT table is full, an
// established flow keeps its translation, a new flow is dropped with
// DROP_NAT_NO_MAPPING and counted (no entry is evicted, so no flow is
// ever translated with another's port); once entries are freed new flows
// pass again.
func TestPrivilegedMasqueradeFullTable(t *testing.T) {
	d, _, world, wan, pods := newMasqWorld(t, Config{})
	m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: masqNodeAddr, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	testutils.ServeEcho(t, world, "tcp4", "203.0.113.2:9001")
	dial := func(pod *testutils.NetNS) (net.Conn, error) {
		var c net.Conn
		err := pod.Do(func() (err error) { c, err = net.DialTimeout("tcp4", "203.0.113.2:9001", 2*time.Second); return err })
		return c, err
	}
	old, err := dial(pods[0])
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := echoLine(old, "before"); err != nil {
		t.Fatal(err)
	}

	var filler []natKey
	t.Cleanup(func() {
		for _, k := range filler {
			_ = d.maps.nat.Delete(k)
		}
	})
	for i := 0; ; i++ {
		k := natKey{SrcAddr: [16]byte{198, 19, byte(i >> 8), byte(i)}, DstAddr: [16]byte{192, 0, 2, 1}, SrcPort: nat.PortBytes(1), DstPort: nat.PortBytes(2), Proto: 17, Family: nat.FamilyV4}
		if err := d.maps.nat.Put(k, natEntry{Seen: uint64(nat.Now())}); err != nil {
			if len(filler) == 0 {
				t.Fatal(err)
			}
			break
		}
		filler = append(filler, k)
	}
	if err := echoLine(old, "when full"); err != nil {
		t.Errorf("established flow in a full table: %v", err)
	}
	before := natDrops(t, m)
	if c, err := dial(pods[1]); err == nil {
		c.Close()
		t.Error("a new connection succeeded in a full table")
	}
	if after := natDrops(t, m); after <= before {
		t.Errorf("DROP_NAT_NO_MAPPING %d -> %d, want the refused flow counted", before, after)
	}
	for _, k := range filler[:10] {
		if err := d.maps.nat.Delete(k); err != nil {
			t.Fatal(err)
		}
	}
	c, err := dial(pods[1])
	if err != nil {
		t.Fatalf("after freeing entries: %v", err)
	}
	defer c.Close()
	if err := echoLine(c, "after"); err != nil {
		t.Error(err)
	}
}

// TestPrivilegedMasqueradePeriodicGC: with GCInterval set, closed
// connections' translations disappear by themselves once CloseLifetime
// has passed since their FIN; an open connection's stays and keeps
// working.
func TestPrivilegedMasqueradePeriodicGC(t *testing.T) {
	d, _, world, wan, pods := newMasqWorld(t, Config{CloseLifetime: time.Second})
	m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: masqNodeAddr, GCInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	testutils.ServeEcho(t, world, "tcp4", "203.0.113.2:9001")
	var open net.Conn
	for i := range 6 {
		var c net.Conn
		if err := pods[i%len(pods)].Do(func() (err error) { c, err = net.DialTimeout("tcp4", "203.0.113.2:9001", 2*time.Second); return err }); err != nil {
			t.Fatal(err)
		}
		if err := echoLine(c, "hi"); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			open = c
			defer c.Close()
			continue
		}
		c.Close()
	}
	if n, err := m.Mappings(); err != nil || n != 6 {
		t.Fatalf("%d flows (%v), want 6", n, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, err := m.Mappings()
		if err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d flows 5 s after closing, want the open one only", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := echoLine(open, "still here"); err != nil {
		t.Errorf("open connection after GC: %v", err)
	}
	if n, err := m.Mappings(); err != nil || n != 1 {
		t.Errorf("%d flows (%v), want the open one", n, err)
	}
}

func TestMasqueradeConfigValidate(t *testing.T) {
	v4, v6 := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("fd00::1")
	for _, tc := range []struct {
		cfg MasqueradeConfig
		ok  bool
	}{
		{MasqueradeConfig{Ifindex: 1, Address: v4}, true},
		{MasqueradeConfig{Ifindex: 1, Address6: v6}, true},
		{MasqueradeConfig{Ifindex: 1, Address: v4, Address6: v6, Exclude: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/48")}, PortMin: 1024, PortMax: 2047}, true},
		{MasqueradeConfig{Address: v4}, false},
		{MasqueradeConfig{Ifindex: 1}, false},
		{MasqueradeConfig{Ifindex: 1, Address: v6}, false},
		{MasqueradeConfig{Ifindex: 1, Address6: v4}, false},
		{MasqueradeConfig{Ifindex: 1, Address6: netip.MustParseAddr("::ffff:1.2.3.4")}, false},
		{MasqueradeConfig{Ifindex: 1, Address: netip.IPv4Unspecified()}, false},
		{MasqueradeConfig{Ifindex: 1, Address: v4, Exclude: []netip.Prefix{{}}}, false},
		{MasqueradeConfig{Ifindex: 1, Address: v4, PortMin: 1}, false},
		{MasqueradeConfig{Ifindex: 1, Address: v4, PortMin: 3000, PortMax: 2000}, false},
	} {
		_, _, err := tc.cfg.validate()
		if tc.ok != (err == nil) || err != nil && !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: %v (want ok %v, or ErrInvalidConfig)", tc.cfg, err, tc.ok)
		}
	}
}

// TestPrivilegedMasqueradeCollectorStopsWithDatapath: closing the
// Datapath under an attached Masquerade stops its NAT collector, which
// would otherwise run on a closed map; closing the Masquerade afterwards
// is harmless.
func TestPrivilegedMasqueradeCollectorStopsWithDatapath(t *testing.T) {
	d, _, _, wan, _ := newMasqWorld(t, Config{})
	m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: masqNodeAddr, GCInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	gc := m.gc
	time.Sleep(50 * time.Millisecond)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	runs := gc.Stats().Runs
	time.Sleep(50 * time.Millisecond)
	if gc.Stats().Runs != runs || m.gc != nil {
		t.Errorf("the collector ran on after Datapath.Close (%d -> %d runs)", runs, gc.Stats().Runs)
	}
	if st := gc.Stats(); st.Runs == 0 || st.LastErr != nil {
		t.Errorf("collector before Close: %+v", st)
	}
	_ = m.Close()
}
