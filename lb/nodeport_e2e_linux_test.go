package lb

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/tcattach"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// checkClsactFilters checks, in the caller's namespace, that the
// interface's clsact hooks hold the north-south filters: the reply
// translation at egress and, with ingress, the tc translation.
func checkClsactFilters(ifindex int, ingress bool) error {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return err
	}
	for _, h := range []struct {
		parent uint32
		want   string
		there  bool
	}{
		{netlink.HANDLE_MIN_EGRESS, nodeportProgNpNodeportRevnat, true},
		{netlink.HANDLE_MIN_INGRESS, nodeportProgNpNodeportTc, ingress},
	} {
		fs, err := netlink.FilterList(l, h.parent)
		if err != nil {
			return err
		}
		found := false
		for _, f := range fs {
			if bf, ok := f.(*netlink.BpfFilter); ok && bf.Name == h.want && bf.DirectAction {
				found = true
			}
		}
		if found != h.there {
			return fmt.Errorf("clsact filter %s present %v, want %v (filters %v)", h.want, found, h.there, fs)
		}
	}
	return nil
}

// TestPrivilegedNorthSouthTraffic: a client namespace reaches a VIP and a
// NodePort (the node's own address on its external interface c0) of the
// node namespace, where NorthSouth is attached to c0 in each mode (native
// XDP, generic XDP, tc), with its tc hooks as the probe chooses them (tcx
// on 6.6+) and as clsact filters (the fallback for older kernels, forced
// here); backends in three other namespaces answer, TCP
// and UDP, IPv4 and IPv6. Backends see the client's own address. Removing
// a backend moves only the flows that were on it: the other flows' TCP
// connections keep working and their UDP flows (same source port) keep
// their backend.
func TestPrivilegedNorthSouthTraffic(t *testing.T) {
	for _, mode := range []AttachMode{AttachXDPNative, AttachXDPGeneric, AttachTC} {
		t.Run(mode.String(), func(t *testing.T) { northSouthTraffic(t, mode, 0) })
	}
	for _, mode := range []AttachMode{AttachXDPNative, AttachTC} {
		t.Run(mode.String()+"/clsact", func(t *testing.T) { northSouthTraffic(t, mode, tcattach.Clsact) })
	}
}

func northSouthTraffic(t *testing.T, want AttachMode, tcMode tcattach.Mode) {
	ns := newTestNorthSouth(t)
	ns.tcMode = tcMode
	top := newTopology(t, 1, 3)
	top.serve(t)
	client := top.clients[0]
	if err := top.node.Do(func() error {
		l, err := net.InterfaceByName("c0")
		if err != nil {
			return err
		}
		mode, err := ns.Attach(l.Index, want)
		if err == nil && mode != want {
			err = fmt.Errorf("attached as %s, want %s", mode, want)
		}
		if err == nil && tcMode == tcattach.Clsact {
			err = checkClsactFilters(l.Index, want == AttachTC)
		}
		return err
	}); err != nil {
		testutils.SkipIfNotSupported(t, err)
		t.Fatal(err)
	}

	for _, v6 := range []bool{false, true} {
		vip := netip.MustParseAddr("10.99.0.1")
		nodeAddr := netip.MustParseAddr("10.1.0.1")
		if v6 {
			vip = netip.MustParseAddr("fd99::1")
			nodeAddr = netip.MustParseAddr("fd00:1:0::1")
		}
		for _, fe := range []netip.AddrPort{netip.AddrPortFrom(vip, 80), netip.AddrPortFrom(nodeAddr, 30080)} {
			for _, proto := range []nodeplane.Protocol{nodeplane.ProtoTCP, nodeplane.ProtoUDP} {
				t.Run(fmt.Sprintf("%s/%s", fe, proto), func(t *testing.T) {
					var backends []Backend
					for _, be := range top.backends {
						backends = append(backends, Backend{Addr: be.addr(v6, backendPort)})
					}
					svc := Service{Frontend: Frontend{fe, proto}, Type: LoadBalancer, Algorithm: AlgorithmMaglev}
					if err := ns.Upsert(svc, backends); err != nil {
						t.Fatal(err)
					}
					defer ns.Delete(svc.Frontend)
					checkNorthSouthFlows(t, ns, top, client, svc, backends, client.addr(v6, 0).Addr())
				})
			}
		}
	}
	drops, err := ns.Drops()
	if err != nil {
		t.Fatal(err)
	}
	if len(drops) != 0 {
		t.Errorf("drops: %v", drops)
	}
}

// nsFlow is one client flow: a TCP connection or a UDP socket.
type nsFlow struct {
	conn    net.Conn
	rd      *bufio.Reader
	backend string
}

// checkNorthSouthFlows opens flows to svc from client; backends must see
// the address sees.
func checkNorthSouthFlows(t *testing.T, ns *NorthSouth, top *topology, client *endpointNS, svc Service, backends []Backend, sees netip.Addr) {
	network := "tcp"
	if svc.Frontend.Protocol == nodeplane.ProtoUDP {
		network = "udp"
	}
	// ask sends a line on f and returns the backend's answer.
	ask := func(f *nsFlow, msg string) (string, error) {
		f.conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := f.conn.Write([]byte(msg + "\n")); err != nil {
			return "", err
		}
		if network == "udp" {
			buf := make([]byte, 512)
			n, err := f.conn.Read(buf)
			return strings.TrimSpace(string(buf[:n])), err
		}
		line, err := f.rd.ReadString('\n')
		return strings.TrimSpace(line), err
	}
	open := func() *nsFlow {
		f := &nsFlow{}
		if err := client.ns.Do(func() (err error) {
			f.conn, err = net.DialTimeout(network, svc.Frontend.Addr.String(), 2*time.Second)
			return err
		}); err != nil {
			t.Fatalf("dial %s: %v", svc.Frontend, err)
		}
		t.Cleanup(func() { f.conn.Close() })
		// The reply's source must be the frontend, or the socket would
		// not have accepted it.
		if network == "tcp" {
			f.rd = bufio.NewReader(f.conn)
			f.conn.SetDeadline(time.Now().Add(2 * time.Second))
			greet, err := f.rd.ReadString('\n')
			if err != nil {
				t.Fatalf("greeting over %s: %v", svc.Frontend, err)
			}
			f.backend, _, _ = strings.Cut(greet, " ")
			if want := sees.String(); !strings.Contains(greet, " "+want+":") && !strings.Contains(greet, " ["+want+"]:") {
				t.Fatalf("backend saw %q, not %s", greet, want)
			}
		} else {
			ans, err := ask(f, "hello")
			if err != nil {
				t.Fatalf("UDP over %s: %v", svc.Frontend, err)
			}
			f.backend, _, _ = strings.Cut(ans, " ")
		}
		return f
	}

	const n = 24
	flows := make([]*nsFlow, n)
	seen := map[string]int{}
	for i := range flows {
		flows[i] = open()
		seen[flows[i].backend]++
	}
	if len(seen) < 2 {
		t.Fatalf("%d flows all went to %v", n, seen)
	}

	// Remove the backend of flow 0.
	gone := flows[0].backend
	var keep []Backend
	for i, be := range top.backends {
		if be.name != gone {
			keep = append(keep, backends[i])
		}
	}
	if err := ns.Upsert(svc, keep); err != nil {
		t.Fatal(err)
	}
	for i, f := range flows {
		ans, err := ask(f, fmt.Sprintf("ping %d", i))
		switch {
		case f.backend != gone && err != nil:
			t.Fatalf("flow %d on %s, which stays, broke: %v", i, f.backend, err)
		case f.backend != gone && network == "udp" && !strings.HasPrefix(ans, f.backend+" "):
			t.Fatalf("flow %d moved from %s: %q", i, f.backend, ans)
		case f.backend != gone && network == "tcp" && ans != fmt.Sprintf("ping %d", i):
			t.Fatalf("flow %d on %s: echo %q", i, f.backend, ans)
		case f.backend == gone && network == "udp" && err == nil && strings.HasPrefix(ans, gone+" "):
			t.Fatalf("flow %d still reaches removed %s", i, gone)
		}
	}
	// New flows avoid the removed backend.
	for range 8 {
		if f := open(); f.backend == gone {
			t.Fatalf("a new flow reached removed backend %s", gone)
		}
	}
}

// TestPrivilegedNorthSouthSNATTraffic: the same traffic in SNAT mode.
// Backends see the node's address, reply to it over their own interface,
// where the XDP program translates the replies back; removing a backend
// moves only its flows.
func TestPrivilegedNorthSouthSNATTraffic(t *testing.T) {
	testutils.RequirePrivileged(t)
	snat4, snat6 := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("fd00:1:0::1")
	ns, err := NewNorthSouth(NorthSouthConfig{MaglevTableSize: 251, MaglevHashSeed: testSeed, SNATAddrs: []netip.Addr{snat4, snat6}})
	testutils.SkipIfNotSupported(t, err)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	top := newTopology(t, 1, 3)
	top.serve(t)
	client := top.clients[0]
	// The translated packets carry the node's own address as source
	// when the stack routes them; IPv4 drops them as martians unless the
	// receiving interface accepts local sources.
	sysctl(t, top.node, "net/ipv4/conf/c0/accept_local", "1")
	if err := top.node.Do(func() error {
		for _, name := range []string{"c0", "b0", "b1", "b2"} {
			l, err := net.InterfaceByName(name)
			if err != nil {
				return err
			}
			if _, err := ns.Attach(l.Index, AttachAuto); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		testutils.SkipIfNotSupported(t, err)
		t.Fatal(err)
	}
	for _, v6 := range []bool{false, true} {
		vip, sees := netip.MustParseAddr("10.99.0.1"), snat4
		if v6 {
			vip, sees = netip.MustParseAddr("fd99::1"), snat6
		}
		for _, proto := range []nodeplane.Protocol{nodeplane.ProtoTCP, nodeplane.ProtoUDP} {
			fe := netip.AddrPortFrom(vip, 80)
			t.Run(fmt.Sprintf("%s/%s", fe, proto), func(t *testing.T) {
				var backends []Backend
				for _, be := range top.backends {
					backends = append(backends, Backend{Addr: be.addr(v6, backendPort)})
				}
				svc := Service{Frontend: Frontend{fe, proto}, Type: LoadBalancer, Algorithm: AlgorithmMaglev}
				if err := ns.Upsert(svc, backends); err != nil {
					t.Fatal(err)
				}
				defer ns.Delete(svc.Frontend)
				checkNorthSouthFlows(t, ns, top, client, svc, backends, sees)
			})
		}
	}
	drops, err := ns.Drops()
	if err != nil {
		t.Fatal(err)
	}
	if len(drops) != 0 {
		t.Errorf("drops: %v", drops)
	}
}

// TestPrivilegedNorthSouthAttachAuto: the probe picks native XDP on a
// veth, and tc on an interface that already has an XDP program.
func TestPrivilegedNorthSouthAttachAuto(t *testing.T) {
	first, second := newTestNorthSouth(t), newTestNorthSouth(t)
	node, peer := testutils.NewNetNS(t), testutils.NewNetNS(t)
	veth := testutils.NewVeth(t, node, "ext0", peer, "eth0")
	var modes [2]AttachMode
	if err := node.Do(func() (err error) {
		if modes[0], err = first.Attach(veth.Index, AttachAuto); err != nil {
			return err
		}
		modes[1], err = second.Attach(veth.Index, AttachAuto)
		return err
	}); err != nil {
		testutils.SkipIfNotSupported(t, err)
		t.Fatal(err)
	}
	if modes != [2]AttachMode{AttachXDPNative, AttachTC} {
		t.Errorf("modes %v, want [xdp-native tc]", modes)
	}
	if _, err := first.Attach(veth.Index, AttachMode(9)); err == nil {
		t.Error("attach mode 9 accepted")
	}
}

// TestPrivilegedNorthSouthClsactClose: in clsact mode Close removes the
// filters it added, which, unlike tcx links, would outlive the process.
func TestPrivilegedNorthSouthClsactClose(t *testing.T) {
	ns := newTestNorthSouth(t)
	ns.tcMode = tcattach.Clsact
	node, peer := testutils.NewNetNS(t), testutils.NewNetNS(t)
	veth := testutils.NewVeth(t, node, "ext0", peer, "eth0")
	if err := node.Do(func() error {
		if _, err := ns.Attach(veth.Index, AttachTC); err != nil {
			return err
		}
		return checkClsactFilters(veth.Index, true)
	}); err != nil {
		t.Fatal(err)
	}
	if err := ns.Close(); err != nil {
		t.Fatal(err)
	}
	nl := node.Netlink(t)
	l, err := nl.LinkByIndex(veth.Index)
	if err != nil {
		t.Fatal(err)
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := nl.FilterList(l, parent)
		if err != nil {
			t.Fatal(err)
		}
		if len(fs) != 0 {
			t.Errorf("filters left at %x after Close: %v", parent, fs)
		}
	}
}
