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
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
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

// TestPrivilegedUpstreamIngressEnforced checks that a proxy does not widen
// what a destination admits: A's egress redirects port 7070 to the proxy,
// B admits A only on other ports. The proxy's upstream carries A's
// identity with the egress mark, so B's ingress policy is decided for A
// and drops it; with the ingress mark (B's ingress already decided) the
// same connection passes, which is why only the proxy that decided it may
// set that mark.
func TestPrivilegedUpstreamIngressEnforced(t *testing.T) {
	const port = 7070
	w := proxytest.New(t)
	proxytest.Apply(t, w.A, mapstate.State{
		proxytest.L4(proxytest.IDB, mapstate.Egress, nodeplane.ProtoTCP, port): {ProxyPort: proxyPort},
	})
	proxytest.Apply(t, w.B, mapstate.State{
		proxytest.L4(proxytest.IDA, mapstate.Ingress, nodeplane.ProtoTCP, proxiedTCP): {},
	})
	serveWho(t, w.PodB, port)
	d := proxy.Dialer{Config: w.Proxy, Timeout: time.Second}
	dst := netip.AddrPortFrom(proxytest.B4, port)

	egress, err := proxy.UpstreamMark(proxytest.IDA, false)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := d.Dial(context.Background(), "tcp", dst, egress); err == nil {
		c.Close()
		t.Fatal("upstream with A's egress mark reached B, whose ingress does not admit A on this port")
	}
	ingress, err := proxy.UpstreamMark(proxytest.IDA, true)
	if err != nil {
		t.Fatal(err)
	}
	c, err := d.Dial(context.Background(), "tcp", dst, ingress)
	if err != nil {
		t.Fatalf("upstream with the ingress-enforced mark: %v", err)
	}
	c.Close()
	// Without a mark the node is reserved:host, which B does not admit.
	if c, err := d.Dial(context.Background(), "tcp", dst, 0); err == nil {
		c.Close()
		t.Fatal("unmarked upstream (reserved:host) reached B")
	}
}

func TestUpstreamMark(t *testing.T) {
	for _, tc := range []struct {
		id      uint32
		ingress bool
		want    uint32
	}{
		// Cilium's encoding: low 16 bits of the identity in 16-31, bits
		// 16-23 in 0-7, magic 0x0A00 (ingress) / 0x0B00 (egress).
		{0x0001_03E8, false, 0x03E8_0B01},
		{0x00AB_CDEF, true, 0xCDEF_0AAB},
	} {
		got, err := proxy.UpstreamMark(identityID(tc.id), tc.ingress)
		if err != nil || got != tc.want {
			t.Errorf("UpstreamMark(%#x, %v) = %#x, %v; want %#x", tc.id, tc.ingress, got, err, tc.want)
		}
	}
	for _, bad := range []uint32{0, 1 << 24} {
		if _, err := proxy.UpstreamMark(identityID(bad), false); err == nil {
			t.Errorf("UpstreamMark(%#x) accepted", bad)
		}
	}
}

func TestPorts(t *testing.T) {
	p, err := proxy.NewPorts(proxy.PortsConfig{Min: 100, Max: 102})
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint16]bool{}
	for range 3 {
		port, err := p.Allocate()
		if err != nil || got[port] || port < 100 || port > 102 {
			t.Fatalf("Allocate: %d, %v (have %v)", port, err, got)
		}
		got[port] = true
	}
	if _, err := p.Allocate(); !errors.Is(err, proxy.ErrPortsExhausted) {
		t.Errorf("fourth Allocate: %v", err)
	}
	p.Release(101)
	if port, err := p.Allocate(); err != nil || port != 101 {
		t.Errorf("after Release(101): %d, %v", port, err)
	}
	if err := p.Reserve(101); !errors.Is(err, proxy.ErrPortInUse) {
		t.Errorf("Reserve of a taken port: %v", err)
	}
	if _, err := proxy.NewPorts(proxy.PortsConfig{Min: 5, Max: 4}); err == nil {
		t.Error("empty range accepted")
	}
}

func identityID(v uint32) identity.ID { return identity.ID(v) }

// TestPrivilegedRedirectEvents checks what the datapath reports about a
// redirected connection: its policy verdict carries the proxy port, and
// its packets are traced at TO_PROXY (Cilium's TRACE_TO_PROXY), not
// TO_ENDPOINT.
func TestPrivilegedRedirectEvents(t *testing.T) {
	w := proxytest.New(t)
	proxytest.Apply(t, w.A, mapstate.State{
		proxytest.L4(proxytest.IDB, mapstate.Egress, nodeplane.ProtoTCP, proxiedTCP): {ProxyPort: proxyPort},
	})
	proxytest.Apply(t, w.B, mapstate.State{
		proxytest.L4(proxytest.IDA, mapstate.Ingress, nodeplane.ProtoTCP, proxiedTCP): {},
	})
	serveWho(t, w.PodB, proxiedTCP)
	if err := w.DP.SetMonitorAggregation(monitor.AggregationNone); err != nil {
		t.Fatal(err)
	}
	events, err := w.DP.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	ln, err := proxy.ListenTCP(w.Proxy, proxyPort)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	mark, _ := proxy.UpstreamMark(proxytest.IDA, true)
	r := &relay{t: t, dialer: proxy.Dialer{Config: w.Proxy}}
	go r.serveTCP(ln, mark)
	if got, _, err := ask(t, w.PodA, "tcp", netip.AddrPortFrom(proxytest.B4, proxiedTCP), "ping"); err != nil || got != proxytest.Node4.String()+" ping" {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}

	var verdict, toProxy, toEndpoint bool
	events.SetDeadline(time.Now().Add(3 * time.Second))
	for !(verdict && toProxy) {
		ev, err := events.Read()
		if err != nil {
			break
		}
		switch e := ev.(type) {
		case *datapath.PolicyVerdictEvent:
			if e.Tuple.Src == proxytest.A4 && e.Tuple.DstPort == proxiedTCP {
				verdict = verdict || e.ProxyPort == proxyPort
			}
		case *datapath.TraceEvent:
			if e.Tuple.Src == proxytest.A4 && e.Tuple.DstPort == proxiedTCP {
				toProxy = toProxy || e.Point == monitor.ToProxy
				toEndpoint = toEndpoint || e.Point == monitor.ToEndpoint
			}
		}
	}
	if !verdict || !toProxy || toEndpoint {
		t.Errorf("verdict with proxy port %v, traced to the proxy %v, to the endpoint %v", verdict, toProxy, toEndpoint)
	}
}
