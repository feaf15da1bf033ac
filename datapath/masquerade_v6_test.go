package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// TestPrivilegedMasqueradeIPv6: pods reach an IPv6 "world" server that
// sees only the node's IPv6 address; 15 concurrent connections from three
// pods get 15 distinct ports, and each reply reaches its own connection.
func TestPrivilegedMasqueradeIPv6(t *testing.T) {
	d, _, world, wan, pods := newMasqWorld(t, Config{})
	m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address6: masqNodeAddr6, GCInterval: -1,
		Exclude: []netip.Prefix{netip.MustParsePrefix("fd00:0:0:10::/64")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	seen := recordingServer(t, world, "tcp6", "[fd00:203::2]:9000")

	const perPod = 5
	var dials []func() (net.Conn, error)
	for _, pod := range pods {
		for range perPod {
			dials = append(dials, func() (net.Conn, error) { return talkTo(pod, "tcp6", "[fd00:203::2]:9000") })
		}
	}
	conns := openAll(t, dials)
	got := seen()
	ports := map[uint16]bool{}
	for src := range got {
		if src.Addr() != masqNodeAddr6 {
			t.Errorf("the server saw %v, want only %v", src, masqNodeAddr6)
		}
		ports[src.Port()] = true
	}
	if len(conns) != len(pods)*perPod || len(ports) != len(conns) {
		t.Errorf("%d connections, %d distinct ports at the server; want %d each", len(conns), len(ports), len(pods)*perPod)
	}
	// IPv4 is not masqueraded without an IPv4 address: the world has no
	// route back, so the connection fails.
	seen4 := recordingServer(t, world, "tcp4", "203.0.113.2:9000")
	if c, err := talkTo(pods[0], "tcp4", "203.0.113.2:9000"); err == nil {
		c.Close()
		t.Error("IPv4 connected without masquerading")
	}
	for src := range seen4() {
		if src.Addr() == masqNodeAddr {
			t.Errorf("IPv4 was masqueraded to %v", src)
		}
	}
}

// icmpEcho is an ICMP or ICMPv6 echo message.
type icmpEcho struct {
	typ     uint8
	id, seq uint16
	payload []byte
}

func (e icmpEcho) bytes(v6 bool) []byte {
	b := make([]byte, 8+len(e.payload))
	b[0] = e.typ
	binary.BigEndian.PutUint16(b[4:], e.id)
	binary.BigEndian.PutUint16(b[6:], e.seq)
	copy(b[8:], e.payload)
	if !v6 { // the kernel fills in ICMPv6 checksums of raw sockets
		binary.BigEndian.PutUint16(b[2:], inetChecksum(b))
	}
	return b
}

func parseEcho(b []byte) (icmpEcho, bool) {
	if len(b) < 8 {
		return icmpEcho{}, false
	}
	return icmpEcho{typ: b[0], id: binary.BigEndian.Uint16(b[4:]), seq: binary.BigEndian.Uint16(b[6:]), payload: b[8:]}, true
}

// inetChecksum is RFC 1071's checksum of b.
func inetChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func icmpNet(v6 bool) (network, any string, request, reply uint8) {
	if v6 {
		return "ip6:ipv6-icmp", "::", 128, 129
	}
	return "ip4:icmp", "0.0.0.0", 8, 0
}

// pingFrom sends one echo request with id and payload from ns to dst over a
// raw socket and returns the echo reply that comes back to ns.
func pingFrom(ns *testutils.NetNS, dst netip.Addr, id uint16, payload []byte) (net.Addr, icmpEcho, error) {
	v6 := dst.Is6()
	network, any, request, reply := icmpNet(v6)
	var c net.PacketConn
	if err := ns.Do(func() (err error) { c, err = net.ListenPacket(network, any); return err }); err != nil {
		return nil, icmpEcho{}, err
	}
	defer c.Close()
	if _, err := c.WriteTo(icmpEcho{typ: request, id: id, seq: 1, payload: payload}.bytes(v6), &net.IPAddr{IP: dst.AsSlice()}); err != nil {
		return nil, icmpEcho{}, err
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return nil, icmpEcho{}, err
		}
		if e, ok := parseEcho(buf[:n]); ok && e.typ == reply {
			e.payload = bytes.Clone(e.payload)
			return from, e, nil
		}
	}
}

// echoSeen records, in ns, the echo requests that arrive: source and
// identifier.
func echoSeen(t *testing.T, ns *testutils.NetNS, v6 bool) func() map[string]bool {
	network, any, request, _ := icmpNet(v6)
	var c net.PacketConn
	if err := ns.Do(func() (err error) { c, err = net.ListenPacket(network, any); return err }); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var (
		mu   sync.Mutex
		seen = map[string]bool{}
	)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if e, ok := parseEcho(buf[:n]); ok && e.typ == request {
				mu.Lock()
				seen[fmt.Sprintf("%s id %d", from, e.id)] = true
				mu.Unlock()
			}
		}
	}()
	return func() map[string]bool {
		mu.Lock()
		defer mu.Unlock()
		out := map[string]bool{}
		for k := range seen {
			out[k] = true
		}
		return out
	}
}

// TestPrivilegedMasqueradeICMP: three pods ping the world with the same
// echo identifier at once, over IPv4 and IPv6. The world sees the node's
// address with three distinct identifiers (the identifier is the NAT
// port, as in Cilium); each pod gets the reply to its own request (its
// payload) with its own identifier, from the world's address.
func TestPrivilegedMasqueradeICMP(t *testing.T) {
	d, _, world, wan, pods := newMasqWorld(t, Config{})
	m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: masqNodeAddr, Address6: masqNodeAddr6, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	for _, tc := range []struct {
		name        string
		world, node netip.Addr
	}{{"IPv4", masqWorldAddr, masqNodeAddr}, {"IPv6", masqWorldAddr6, masqNodeAddr6}} {
		t.Run(tc.name, func(t *testing.T) {
			seen := echoSeen(t, world, tc.world.Is6())
			const id = 0x1234
			var wg sync.WaitGroup
			for i, pod := range pods {
				wg.Go(func() {
					payload := fmt.Appendf(nil, "pod %d over %s", i, tc.name)
					from, e, err := pingFrom(pod, tc.world, id, payload)
					if err != nil {
						t.Errorf("pod %d: %v", i, err)
						return
					}
					if from.String() != tc.world.String() || e.id != id || !bytes.Equal(e.payload, payload) {
						t.Errorf("pod %d got a reply from %s, id %#x, payload %q; want from %s, id %#x, %q", i, from, e.id, e.payload, tc.world, id, payload)
					}
				})
			}
			wg.Wait()
			// The recorder reads on its own: give it a moment.
			got := seen()
			for deadline := time.Now().Add(time.Second); len(got) < len(pods) && time.Now().Before(deadline); got = seen() {
				time.Sleep(10 * time.Millisecond)
			}
			if len(got) != len(pods) {
				t.Errorf("the world saw %v, want %d distinct requests", got, len(pods))
			}
			for k := range got {
				var from string
				var gotID int
				if _, err := fmt.Sscanf(k, "%s id %d", &from, &gotID); err != nil || from != tc.node.String() {
					t.Errorf("the world saw %s, want requests from %s", k, tc.node)
				}
			}
		})
	}
	if n, err := m.Mappings(); err != nil || n != 2*len(pods) {
		t.Errorf("%d flows (%v), want %d echo flows", n, err, 2*len(pods))
	}
}

// TestPrivilegedMasqueradeICMPErrors: the world's ICMP port unreachable
// about a masqueraded UDP flow reaches the pod's socket as "connection
// refused", over IPv4 and IPv6. Untranslated, the error would be addressed
// to the node's port and the pod's read would time out.
func TestPrivilegedMasqueradeICMPErrors(t *testing.T) {
	d, _, _, wan, pods := newMasqWorld(t, Config{})
	m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: masqNodeAddr, Address6: masqNodeAddr6, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	for _, dst := range []string{"203.0.113.2:9999", "[fd00:203::2]:9999"} {
		t.Run(dst, func(t *testing.T) {
			var c net.Conn
			if err := pods[0].Do(func() (err error) { c, err = net.Dial("udp", dst); return err }); err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := c.Write([]byte("anyone?")); err != nil {
				t.Fatal(err)
			}
			_, err := c.Read(make([]byte, 16))
			if !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatalf("read: %v, want connection refused (the world's port unreachable)", err)
			}
		})
	}
}
