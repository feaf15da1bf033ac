package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy/mapstate"
	"github.com/nodeplane/nodeplane/proxy"
	"github.com/nodeplane/nodeplane/proxy/internal/proxytest"
)

const (
	proxyPort  = 15001
	proxiedTCP = 8080 // A's egress to B: redirected
	plainTCP   = 9090 // A's egress to B: allowed, not redirected
	proxiedUDP = 5353
)

// serveWho answers each line on TCP and each datagram on UDP with the
// peer's address as the server sees it: where the connection came from.
func serveWho(t *testing.T, ns *testutils.NetNS, port int) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := ns.Do(func() (err error) {
		if ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					from := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
					fmt.Fprintf(c, "%s %s", from, line)
				}
			}()
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			a := from.(*net.UDPAddr).AddrPort().Addr().Unmap()
			_, _ = pc.WriteTo([]byte(fmt.Sprintf("%s %s", a, buf[:n])), from)
		}
	}()
}

// relay is a minimal transparent proxy: it records what it was given and
// relays to the original destination with the source's identity.
type relay struct {
	t      *testing.T
	dialer proxy.Dialer
	mu     sync.Mutex
	seen   []proxy.Redirected
}

func (r *relay) record(x proxy.Redirected) {
	r.mu.Lock()
	r.seen = append(r.seen, x)
	r.mu.Unlock()
}

func (r *relay) serveTCP(ln *net.TCPListener, mark uint32) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			red, err := proxy.RedirectedConn(c)
			if err != nil {
				r.t.Errorf("redirected conn: %v", err)
				return
			}
			r.record(red)
			up, err := r.dialer.Dial(context.Background(), "tcp", red.Destination, mark)
			if err != nil {
				r.t.Logf("upstream: %v", err)
				return
			}
			defer up.Close()
			go func() { _, _ = io.Copy(up, c); up.(*net.TCPConn).CloseWrite() }()
			_, _ = io.Copy(c, up)
		}()
	}
}

func (r *relay) serveUDP(u *proxy.UDPConn, mark uint32) {
	buf := make([]byte, 2048)
	for {
		n, src, dst, err := u.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, proxy.ErrNoOriginalDestination) {
				r.t.Errorf("datagram from %v without original destination", src)
				continue
			}
			return
		}
		r.record(proxy.Redirected{Source: src, Destination: dst})
		up, err := r.dialer.Dial(context.Background(), "udp", dst, mark)
		if err != nil {
			r.t.Errorf("upstream: %v", err)
			continue
		}
		_, _ = up.Write(buf[:n])
		up.SetReadDeadline(time.Now().Add(3 * time.Second))
		m, err := up.Read(buf)
		up.Close()
		if err != nil {
			r.t.Errorf("upstream read: %v", err)
			continue
		}
		if _, err := u.WriteFrom(buf[:m], dst, src); err != nil {
			r.t.Errorf("answer: %v", err)
		}
	}
}

func ask(t *testing.T, ns *testutils.NetNS, network string, dst netip.AddrPort, msg string) (string, netip.AddrPort, error) {
	t.Helper()
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = net.DialTimeout(network, dst.String(), 3*time.Second)
		return err
	})
	if err != nil {
		return "", netip.AddrPort{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	local := c.LocalAddr()
	var lap netip.AddrPort
	switch a := local.(type) {
	case *net.TCPAddr:
		lap = a.AddrPort()
	case *net.UDPAddr:
		lap = a.AddrPort()
	}
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return "", lap, err
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil {
		return "", lap, err
	}
	return strings.TrimSpace(string(buf[:n])), lap, nil
}

// TestPrivilegedRedirect sends TCP and UDP, IPv4 and IPv6, from endpoint A
// to endpoint B through the datapath. Entries with a proxy port must reach
// the proxy with the client's address and the original destination, and
// reach B through the proxy (B sees the node's address); an entry without
// one reaches B directly (B sees A). The proxy's upstream carries A's
// identity: B's ingress policy, which admits A and not the node, must let
// it in.
func TestPrivilegedRedirect(t *testing.T) {
	w := proxytest.New(t)
	egress := mapstate.Entry{ProxyPort: proxyPort}
	proxytest.Apply(t, w.A, mapstate.State{
		proxytest.L4(proxytest.IDB, mapstate.Egress, nodeplane.ProtoTCP, proxiedTCP): egress,
		proxytest.L4(proxytest.IDB, mapstate.Egress, nodeplane.ProtoUDP, proxiedUDP): egress,
		proxytest.L4(proxytest.IDB, mapstate.Egress, nodeplane.ProtoTCP, plainTCP):   {},
	})
	// B admits A only (not the node): the proxy gets in on A's identity.
	proxytest.Apply(t, w.B, mapstate.State{
		proxytest.L4(proxytest.IDA, mapstate.Ingress, nodeplane.ProtoTCP, proxiedTCP): {},
		proxytest.L4(proxytest.IDA, mapstate.Ingress, nodeplane.ProtoUDP, proxiedUDP): {},
		proxytest.L4(proxytest.IDA, mapstate.Ingress, nodeplane.ProtoTCP, plainTCP):   {},
	})
	serveWho(t, w.PodB, proxiedTCP)
	serveWho(t, w.PodB, plainTCP)
	serveWho(t, w.PodB, proxiedUDP)

	ln, err := proxy.ListenTCP(w.Proxy, proxyPort)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	u, err := proxy.ListenUDP(w.Proxy, proxyPort)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	// A's egress proxy; B's ingress is decided again at B for A.
	mark, err := proxy.UpstreamMark(proxytest.IDA, false)
	if err != nil {
		t.Fatal(err)
	}
	r := &relay{t: t, dialer: proxy.Dialer{Config: w.Proxy}}
	go r.serveTCP(ln, mark)
	go r.serveUDP(u, mark)

	for _, tc := range []struct {
		network string
		dst     netip.Addr
		port    uint16
		node    netip.Addr // who B sees: the node through the proxy, else A
		proxied bool
	}{
		{"tcp", proxytest.B4, proxiedTCP, proxytest.Node4, true},
		{"tcp", proxytest.B6, proxiedTCP, proxytest.Node6, true},
		{"udp", proxytest.B4, proxiedUDP, proxytest.Node4, true},
		{"udp", proxytest.B6, proxiedUDP, proxytest.Node6, true},
		{"tcp", proxytest.B4, plainTCP, proxytest.A4, false},
		{"tcp", proxytest.B6, plainTCP, proxytest.A6, false},
	} {
		dst := netip.AddrPortFrom(tc.dst, tc.port)
		t.Run(fmt.Sprintf("%s-%v", tc.network, dst), func(t *testing.T) {
			r.mu.Lock()
			r.seen = nil
			r.mu.Unlock()
			got, local, err := ask(t, w.PodA, tc.network, dst, "ping")
			if err != nil {
				t.Fatalf("ask %v: %v", dst, err)
			}
			if want := tc.node.String() + " ping"; got != want {
				t.Errorf("B answered %q, want %q", got, want)
			}
			r.mu.Lock()
			seen := r.seen
			r.mu.Unlock()
			want := proxy.Redirected{Source: netip.AddrPortFrom(local.Addr().Unmap(), local.Port()), Destination: dst}
			switch {
			case tc.proxied && (len(seen) != 1 || seen[0] != want):
				t.Errorf("proxy saw %v, want %v", seen, want)
			case !tc.proxied && len(seen) != 0:
				t.Errorf("proxy saw %v, want nothing", seen)
			}
		})
	}

	// The connection's conntrack entry remembers the proxy.
	var found bool
	entries, err := w.DP.Conntrack().Entries()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Tuple.DstPort == proxiedTCP && e.Tuple.Src == proxytest.A4 {
			found = e.Flags&datapath.ConntrackProxy != 0 && e.ProxyPort == proxyPort
		}
	}
	if !found {
		t.Error("no conntrack entry of A's proxied connection with ConntrackProxy and the proxy port")
	}
}
