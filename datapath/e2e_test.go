package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// e2eWorld is two endpoints, each in its own namespace behind a veth pair
// in a node namespace, with the node reachable at addresses of its own.
type e2eWorld struct {
	d            *Datapath
	node         *testutils.NetNS
	podA, podB   *testutils.NetNS
	a, b         *Endpoint
	events       *EventReader
	nodeV4       netip.Addr
	nodeV6       netip.Addr
	allowedPorts map[uint8]uint16
}

func newE2EWorld(t *testing.T, mode AttachMode) *e2eWorld {
	d, node := newTestDatapath(t, Config{Attach: mode})
	w := &e2eWorld{
		d: d, node: node,
		podA: testutils.NewNetNS(t), podB: testutils.NewNetNS(t),
		nodeV4: netip.MustParseAddr("10.0.0.254"), nodeV6: netip.MustParseAddr("fd00::fe"),
	}
	var err error
	w.a, err = d.AddEndpoint(EndpointConfig{ID: 1, Identity: idA, IPv4: addrA, IPv6: addrA6, NetNS: nsPath(w.podA)})
	if err != nil {
		t.Fatal(err)
	}
	w.b, err = d.AddEndpoint(EndpointConfig{ID: 2, Identity: idB, IPv4: addrB, IPv6: addrB6, NetNS: nsPath(w.podB)})
	if err != nil {
		t.Fatal(err)
	}

	// The node's own addresses, on its loopback, are the host identity.
	nl := node.Netlink(t)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{w.nodeV4, w.nodeV6} {
		if err := nl.AddrAdd(lo, &netlink.Addr{IPNet: hostPrefix(a), Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatal(err)
		}
		if err := d.IPCache().UpsertPrefix(netip.PrefixFrom(a, a.BitLen()), identity.IPCacheEntry{Identity: identity.ReservedHost}); err != nil {
			t.Fatal(err)
		}
	}

	// A may send anything to B; B accepts from A TCP 8080, UDP 5353 and
	// pings; A accepts TCP 8080 from the node. Nothing else is allowed.
	mustUpdate(t, w.a.Policy(), map[PolicyKey]PolicyEntry{
		{Identity: idB, Direction: Egress}:                                                                       allow,
		{Identity: identity.ReservedHost, Direction: Egress}:                                                     allow,
		{Identity: identity.ReservedHost, Direction: Ingress, Protocol: protoTCP, Port: 8080, PortPrefixLen: 16}: allow,
	})
	mustUpdate(t, w.b.Policy(), map[PolicyKey]PolicyEntry{
		{Identity: idA, Direction: Ingress, Protocol: protoTCP, Port: 8080, PortPrefixLen: 16}:   allow,
		{Identity: idA, Direction: Ingress, Protocol: protoUDP, Port: 5353, PortPrefixLen: 16}:   allow,
		{Identity: idA, Direction: Ingress, Protocol: protoICMP, Port: 8, PortPrefixLen: 16}:     allow,
		{Identity: idA, Direction: Ingress, Protocol: protoICMPv6, Port: 128, PortPrefixLen: 16}: allow,
	})

	w.events, err = d.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.events.Close() })
	return w
}

func listenUDP(t *testing.T, ns *testutils.NetNS, addr string) {
	t.Helper()
	var pc net.PacketConn
	if err := ns.Do(func() (err error) { pc, err = net.ListenPacket("udp", addr); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1<<16)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
}

// dial connects from inside ns; the socket keeps its namespace afterwards.
func dial(ns *testutils.NetNS, network, addr string, timeout time.Duration) (c net.Conn, err error) {
	err = ns.Do(func() error {
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

func echo(c net.Conn, msg string) error {
	return echoWithin(c, msg, 2*time.Second)
}

func echoWithin(c net.Conn, msg string, timeout time.Duration) error {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echoed %q, sent %q", buf, msg)
	}
	return nil
}

// ping sends one ICMP echo request from inside ns and waits for the reply.
func ping(ns *testutils.NetNS, dst netip.Addr, id uint16, timeout time.Duration) error {
	network, typ := "ip4:icmp", uint8(8)
	if dst.Is6() {
		network, typ = "ip6:ipv6-icmp", 128
	}
	var pc net.PacketConn
	if err := ns.Do(func() (err error) { pc, err = net.ListenPacket(network, ""); return err }); err != nil {
		return err
	}
	defer pc.Close()
	req := make([]byte, 16)
	req[0] = typ
	binary.BigEndian.PutUint16(req[4:], id)
	binary.BigEndian.PutUint16(req[6:], 1)
	if dst.Is4() {
		binary.BigEndian.PutUint16(req[2:], ^checksum(0, req))
	} // the kernel computes ICMPv6 checksums of raw sockets
	if _, err := pc.WriteTo(req, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return err
	}
	_ = pc.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			return err
		}
		if n >= 8 && (buf[0] == 0 || buf[0] == 129) && binary.BigEndian.Uint16(buf[4:]) == id {
			return nil
		}
	}
}

// waitDrop reads events until a drop that match accepts, or fails.
func (w *e2eWorld) waitDrop(t *testing.T, match func(*DropEvent) bool) *DropEvent {
	t.Helper()
	return waitEvent(t, w.events, match)
}

// waitEvent reads events until one of type E that match accepts, or fails.
func waitEvent[E Event](t *testing.T, r *EventReader, match func(E) bool) E {
	t.Helper()
	r.SetDeadline(time.Now().Add(5 * time.Second))
	for {
		ev, err := r.Read()
		if err != nil {
			var zero E
			t.Fatalf("no matching %T: %v", zero, err)
		}
		if e, ok := ev.(E); ok && match(e) {
			return e
		}
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

func TestPrivilegedEndToEnd(t *testing.T) {
	for _, mode := range []AttachMode{AttachTCX, AttachTC} {
		t.Run(mode.String(), func(t *testing.T) {
			w := newE2EWorld(t, mode)
			if got := w.d.AttachMode(); got != mode {
				t.Fatalf("attach mode %s, want %s", got, mode)
			}
			for _, fam := range []struct {
				name       string
				a, b, node netip.Addr
			}{
				{"IPv4", addrA, addrB, w.nodeV4},
				{"IPv6", addrA6, addrB6, w.nodeV6},
			} {
				t.Run(fam.name, func(t *testing.T) { w.run(t, fam.a, fam.b, fam.node) })
			}
		})
	}
}

func (w *e2eWorld) run(t *testing.T, a, b, node netip.Addr) {
	testutils.ServeEcho(t, w.podB, "tcp", netip.AddrPortFrom(b, 8080).String())
	testutils.ServeEcho(t, w.podB, "tcp", netip.AddrPortFrom(b, 8081).String())
	listenUDP(t, w.podB, netip.AddrPortFrom(b, 5353).String())
	listenUDP(t, w.podB, netip.AddrPortFrom(b, 5354).String())
	testutils.ServeEcho(t, w.podA, "tcp", netip.AddrPortFrom(a, 8080).String())
	testutils.ServeEcho(t, w.podA, "tcp", netip.AddrPortFrom(a, 8081).String())

	dropFromAToB := func(proto uint8, dport uint16) func(*DropEvent) bool {
		return func(e *DropEvent) bool {
			return e.HasTuple && e.Tuple.Proto == proto && e.Tuple.Dst == b && e.Tuple.DstPort == dport
		}
	}
	// checkDenied checks a policy drop: who saw it (hook of endpoint ep),
	// and whose policy of which direction denied it (dir of policyEP).
	checkDenied := func(t *testing.T, e *DropEvent, src, dst identity.ID, hook Hook, ep EndpointID, dir Direction, policyEP EndpointID) {
		t.Helper()
		if e.Reason != DropPolicyDenied || e.SrcIdentity != src || e.DstIdentity != dst || e.Hook != hook || e.Endpoint != ep {
			t.Fatalf("drop event %+v, want POLICY_DENIED %d -> %d at %s of endpoint %d", e, src, dst, hook, ep)
		}
		if !e.PolicyDecided || e.Direction != dir || e.PolicyEndpoint != policyEP || !e.HasCTState {
			t.Fatalf("drop event %+v, want the %s policy of endpoint %d named", e, dir, policyEP)
		}
	}

	t.Run("TCP allowed", func(t *testing.T) {
		c, err := dial(w.podA, "tcp", netip.AddrPortFrom(b, 8080).String(), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		sport := c.LocalAddr().(*net.TCPAddr).AddrPort().Port()
		if err := echo(c, "hello from A"); err != nil {
			t.Fatal(err)
		}

		// The connection went through the datapath: both policies
		// allowed it, and conntrack tracked it both ways.
		flow := Tuple{Src: a, Dst: b, SrcPort: sport, DstPort: 8080, Proto: protoTCP}
		for _, want := range []struct {
			dir   Direction
			ep    EndpointID
			match PolicyMatch
		}{{Egress, 1, MatchL3Only}, {Ingress, 2, MatchL3L4}} {
			v := waitEvent(t, w.events, func(e *PolicyVerdictEvent) bool { return e.Tuple == flow && e.Direction == want.dir })
			if !v.Allowed() || v.PolicyEndpoint != want.ep || v.Match != want.match || v.SrcIdentity != idA || v.DstIdentity != idB {
				t.Errorf("%s verdict %+v, want allowed by endpoint %d's policy (%s)", want.dir, v, want.ep, want.match)
			}
		}
		ct, ok, err := w.d.Conntrack().Lookup(flow)
		if err != nil || !ok {
			t.Fatalf("no conntrack entry for %v: %v", flow, err)
		}
		if ct.Packets < 3 || ct.ReplyPackets < 2 || ct.Flags&ConntrackSeenReply == 0 || ct.SrcIdentity != idA || ct.DstIdentity != idB {
			t.Errorf("conntrack entry %+v", ct)
		}
	})
	t.Run("TCP denied", func(t *testing.T) {
		_, err := dial(w.podA, "tcp", netip.AddrPortFrom(b, 8081).String(), 500*time.Millisecond)
		if !isTimeout(err) {
			t.Fatalf("dial a denied port: %v, want a timeout", err)
		}
		e := w.waitDrop(t, dropFromAToB(protoTCP, 8081))
		checkDenied(t, e, idA, idB, FromEndpoint, 1, Ingress, 2)
	})
	t.Run("UDP allowed", func(t *testing.T) {
		c, err := dial(w.podA, "udp", netip.AddrPortFrom(b, 5353).String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := echo(c, "datagram"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("UDP denied", func(t *testing.T) {
		c, err := dial(w.podA, "udp", netip.AddrPortFrom(b, 5354).String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := echoWithin(c, "datagram", 500*time.Millisecond); !isTimeout(err) {
			t.Fatalf("UDP to a denied port: %v, want a timeout", err)
		}
		e := w.waitDrop(t, dropFromAToB(protoUDP, 5354))
		checkDenied(t, e, idA, idB, FromEndpoint, 1, Ingress, 2)
	})
	// 3000 bytes do not fit the veths' MTU of 1500: A's stack sends the
	// datagram in three fragments, the last one short, and B's reassembles
	// it.
	big := strings.Repeat("fragmented datagram ", 150)
	t.Run("UDP fragmented allowed", func(t *testing.T) {
		c, err := dial(w.podA, "udp", netip.AddrPortFrom(b, 5353).String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		sport := c.LocalAddr().(*net.UDPAddr).AddrPort().Port()
		if err := echo(c, big); err != nil {
			t.Fatal(err)
		}
		flow := Tuple{Src: a, Dst: b, SrcPort: sport, DstPort: 5353, Proto: protoUDP}
		ct, ok, err := w.d.Conntrack().Lookup(flow)
		if err != nil || !ok {
			t.Fatalf("no conntrack entry for %v: %v", flow, err)
		}
		if ct.Packets < 3 || ct.ReplyPackets < 3 {
			t.Errorf("conntrack counted %d packets and %d replies for one datagram each way, want a packet per fragment (3 or more)",
				ct.Packets, ct.ReplyPackets)
		}
	})
	t.Run("UDP fragmented denied", func(t *testing.T) {
		c, err := dial(w.podA, "udp", netip.AddrPortFrom(b, 5354).String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := echoWithin(c, big, 500*time.Millisecond); !isTimeout(err) {
			t.Fatalf("fragmented UDP to a denied port: %v, want a timeout", err)
		}
		e := w.waitDrop(t, func(e *DropEvent) bool {
			return dropFromAToB(protoUDP, 5354)(e) && e.OrigLen < 1000 // the last fragment, ports from the first
		})
		checkDenied(t, e, idA, idB, FromEndpoint, 1, Ingress, 2)
	})
	t.Run("ICMP allowed", func(t *testing.T) {
		if err := ping(w.podA, b, 0x1234, 2*time.Second); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("ICMP denied", func(t *testing.T) {
		// B's egress policy allows nothing.
		if err := ping(w.podB, a, 0x4321, 500*time.Millisecond); !isTimeout(err) {
			t.Fatalf("ping from B: %v, want a timeout", err)
		}
		e := w.waitDrop(t, func(e *DropEvent) bool {
			return e.HasTuple && e.Tuple.Src == b && e.Tuple.Dst == a && (e.Tuple.Proto == protoICMP || e.Tuple.Proto == protoICMPv6)
		})
		checkDenied(t, e, idB, idA, FromEndpoint, 2, Egress, 2)
	})
	t.Run("node to endpoint allowed", func(t *testing.T) {
		c, err := dial(w.node, "tcp", netip.AddrPortFrom(a, 8080).String(), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr().Unmap(); got != node {
			t.Fatalf("node dialled from %v, want %v", got, node)
		}
		if err := echo(c, "hello from the node"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("node to endpoint denied", func(t *testing.T) {
		_, err := dial(w.node, "tcp", netip.AddrPortFrom(a, 8081).String(), 500*time.Millisecond)
		if !isTimeout(err) {
			t.Fatalf("dial a denied port: %v, want a timeout", err)
		}
		e := w.waitDrop(t, func(e *DropEvent) bool {
			return e.HasTuple && e.Tuple.Dst == a && e.Tuple.DstPort == 8081
		})
		checkDenied(t, e, identity.ReservedHost, idA, ToEndpoint, 1, Ingress, 1)
	})
	t.Run("endpoint to node", func(t *testing.T) {
		testutils.ServeEcho(t, w.node, "tcp", netip.AddrPortFrom(node, 9000).String())
		c, err := dial(w.podA, "tcp", netip.AddrPortFrom(node, 9000).String(), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := echo(c, "hello node"); err != nil {
			t.Fatal(err)
		}
	})
}
