package dnsproxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/fqdn"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy"
	"github.com/nodeplane/nodeplane/proxy"
)

const e2ePolicy = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toFQDNs: [{matchPattern: "*.example.test"}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`

const e2ePolicyRestricted = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.example.test"}]
`

func nsPath(ns *testutils.NetNS) string { return fmt.Sprintf("/proc/self/fd/%d", ns.FD()) }

// TestPrivilegedDNSProxyEndToEnd is the DNS scenario through the
// real datapath: a client endpoint's queries to a DNS server endpoint are
// redirected to the proxy (policy-map proxy port, bpf_sk_assign); with
// toFQDNs matchPattern "*.example.test" the client reaches the resolved
// address only after resolving it through the proxy; a name no DNS rule
// allows is refused by the proxy and never reaches the server; every query
// and response is an L7 flow; after the TTL runs out new connections are
// denied while an open one keeps working.
// dnsWorld is a node with the datapath, a policy engine with the DNS
// machinery, a client endpoint (web), a DNS server endpoint (kube-dns,
// serving on 53 and, for the benchmark's baseline, 5353), two servers
// outside the cluster, and the DNS proxy.
type dnsWorld struct {
	engine  *policy.Engine
	podWeb  *testutils.NetNS
	named   netip.Addr
	named6  netip.Addr
	other   netip.Addr
	webAddr netip.Addr
	obs     *flow.Observer
	queries *sync.Map
	advance func(time.Duration)
}

type blockSource struct{ done chan struct{} }

func (s blockSource) ReadRaw() ([]byte, error) { <-s.done; return nil, os.ErrClosed }

func newDNSWorld(tb testing.TB, policies string, opts ...func(*Config)) *dnsWorld {
	tb.Helper()
	testutils.RequirePrivileged(tb)
	node, podWeb, podDNS := testutils.NewNetNS(tb), testutils.NewNetNS(tb), testutils.NewNetNS(tb)
	pcfg := proxy.Config{NodeNetNS: nsPath(node)}
	d, err := datapath.New(datapath.Config{NodeNetNS: nsPath(node), ConntrackMaxEntries: 4096, IPCacheMaxEntries: 4096})
	testutils.SkipIfNotSupported(tb, err)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	ipc := ipcache.New()
	if err := ipc.AddWriter(d.IPCache()); err != nil {
		tb.Fatal(err)
	}
	alloc, err := identity.NewInProcessAllocator(identity.InProcessConfig{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { alloc.Close() })
	var clockMu sync.Mutex
	now := time.Now()
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	const proxyPort = 10053
	engine, err := policy.NewEngine(policy.EngineConfig{CIDRAllocator: alloc, IPCache: ipc,
		FQDN: &fqdn.Config{Now: clock}, Policy: policy.Config{ProxyPorts: policy.ProxyPorts{DNS: proxyPort}}})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { engine.Close() })
	ctx := context.Background()

	addPod := func(epID datapath.EndpointID, labels string, ns *testutils.NetNS, addr, addr6 netip.Addr) {
		ls, err := identity.ParseLabelList(labels)
		if err != nil {
			tb.Fatal(err)
		}
		id, _, err := alloc.Allocate(ctx, ls)
		if err != nil {
			tb.Fatal(err)
		}
		if err := engine.UpdateIdentities([]identity.Identity{{ID: id, Labels: ls}}, nil); err != nil {
			tb.Fatal(err)
		}
		ep, err := d.AddEndpoint(datapath.EndpointConfig{ID: epID, Identity: id, IPv4: addr, IPv6: addr6, NetNS: nsPath(ns)})
		if err != nil {
			tb.Fatal(err)
		}
		for _, a := range []netip.Addr{addr, addr6} {
			if err := ipc.Upsert(netip.PrefixFrom(a, a.BitLen()), ipcache.Entry{Identity: id}); err != nil {
				tb.Fatal(err)
			}
		}
		if err := engine.AddEndpoint(ep); err != nil {
			tb.Fatal(err)
		}
	}
	webAddr, dnsAddr := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	addPod(1, "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default", podWeb, webAddr, netip.MustParseAddr("fd00::1"))
	addPod(2, "k8s:k8s-app=kube-dns,k8s:io.kubernetes.pod.namespace=kube-system,k8s:io.cilium.k8s.policy.cluster=default", podDNS, dnsAddr, netip.MustParseAddr("fd00::2"))

	// The node: its own address (the source of the proxy's upstream
	// sockets) and two servers outside the cluster.
	nl := node.Netlink(tb)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		tb.Fatal(err)
	}
	named, other := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")
	named6 := netip.MustParseAddr("2001:db8::10")
	node4, node6 := netip.MustParseAddr("10.0.0.254"), netip.MustParseAddr("fd00::fe")
	for _, a := range []netip.Addr{node4, node6, named, other, named6} {
		ipn := &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
		if err := nl.AddrAdd(lo, &netlink.Addr{IPNet: ipn, Flags: unix.IFA_F_NODAD}); err != nil {
			tb.Fatal(err)
		}
	}
	for _, a := range []netip.Addr{node4, node6} {
		if err := ipc.Upsert(netip.PrefixFrom(a, a.BitLen()), ipcache.Entry{Identity: identity.ReservedHost}); err != nil {
			tb.Fatal(err)
		}
	}
	for _, a := range []netip.Addr{named, other} {
		testutils.ServeEcho(tb, node, "tcp", netip.AddrPortFrom(a, 8080).String())
	}
	testutils.ServeEcho(tb, node, "tcp6", netip.AddrPortFrom(named6, 8080).String())
	routing, err := proxy.SetupRouting(pcfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { routing.Close() })

	// The DNS server, in its own endpoint: names under example.test get
	// 192.0.2.10, everything else 192.0.2.11, TTL 5s.
	var serverQueries sync.Map
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		name := strings.ToLower(r.Question[0].Name)
		serverQueries.Store(name, true)
		ip := other
		if strings.HasSuffix(name, ".example.test.") {
			ip = named
		}
		m := new(dns.Msg)
		m.SetReply(r)
		if r.Question[0].Qtype == dns.TypeAAAA {
			m.Answer = []dns.RR{&dns.AAAA{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 5}, AAAA: named6.AsSlice()}}
		} else {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: ip.AsSlice()}}
		}
		w.WriteMsg(m)
	})
	for _, addr := range []string{"10.0.0.2:53", "10.0.0.2:5353", "[fd00::2]:53"} {
		var (
			pc net.PacketConn
			ln net.Listener
		)
		if err := podDNS.Do(func() (err error) {
			if pc, err = net.ListenPacket("udp", addr); err != nil {
				return err
			}
			ln, err = net.Listen("tcp", addr)
			return err
		}); err != nil {
			tb.Fatal(err)
		}
		for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
			go s.ActivateAndServe()
			tb.Cleanup(func() { s.Shutdown() })
		}
	}

	// The proxy's records go to a flow observer, as in a node agent.
	src := blockSource{done: make(chan struct{})}
	tb.Cleanup(func() { close(src.done) })
	obs, err := flow.New(flow.Config{Source: src, NodeName: "node-1"})
	if err != nil {
		tb.Fatal(err)
	}
	cfg := Config{Policy: engine, Port: proxyPort, Proxy: pcfg, Recorder: obs, Timeout: 2 * time.Second, IdleTimeout: 300 * time.Millisecond}
	for _, o := range opts {
		o(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })

	ps, err := engine.Parse([]byte(policies), "e2e.yaml")
	if err != nil {
		tb.Fatal(err)
	}
	for _, pol := range ps {
		if _, err := engine.AddPolicy(pol); err != nil {
			tb.Fatal(err)
		}
	}
	return &dnsWorld{engine: engine, podWeb: podWeb, named: named, named6: named6, other: other, webAddr: webAddr, obs: obs,
		queries: &serverQueries, advance: func(d time.Duration) { clockMu.Lock(); now = now.Add(d); clockMu.Unlock() }}
}

// resolve sends an A query from the client endpoint to server over
// network.
func (w *dnsWorld) resolve(name, network, server string) (*dns.Msg, error) {
	return w.resolveType(name, network, server, dns.TypeA)
}

func (w *dnsWorld) resolveType(name, network, server string, qtype uint16) (*dns.Msg, error) {
	var r *dns.Msg
	err := w.podWeb.Do(func() (err error) {
		c := &dns.Client{Net: network, Timeout: 2 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion(name, qtype)
		r, _, err = c.Exchange(m, server)
		return err
	})
	return r, err
}

func TestPrivilegedDNSProxyEndToEnd(t *testing.T) {
	w := newDNSWorld(t, e2ePolicy+"---\n"+e2ePolicyRestricted)
	engine, podWeb, named, other, webAddr := w.engine, w.podWeb, w.named, w.other, w.webAddr
	resolve := func(name, network string) (*dns.Msg, error) { return w.resolve(name, network, "10.0.0.2:53") }
	dial := func(dst netip.Addr) (net.Conn, error) {
		var c net.Conn
		err := podWeb.Do(func() (err error) {
			c, err = net.DialTimeout("tcp", netip.AddrPortFrom(dst, 8080).String(), 700*time.Millisecond)
			return err
		})
		return c, err
	}
	echo := func(c net.Conn) error {
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		b := make([]byte, 4)
		_, err := io.ReadFull(c, b)
		return err
	}

	if c, err := dial(named); err == nil {
		c.Close()
		t.Fatal("connected before resolving")
	}
	for _, network := range []string{"udp", "tcp"} {
		r, err := resolve("api.example.test.", network)
		if err != nil {
			t.Fatalf("%s query: %v", network, err)
		}
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != named.String() {
			t.Fatalf("%s answer %v", network, r)
		}
	}
	r, err := resolve("api.other.test.", "udp")
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeRefused {
		t.Fatalf("other name: %v", dns.RcodeToString[r.Rcode])
	}
	if _, ok := w.queries.Load("api.other.test."); ok {
		t.Fatal("refused name reached the server")
	}
	open, err := dial(named)
	if err != nil {
		t.Fatalf("resolved address: %v", err)
	}
	defer open.Close()
	if err := echo(open); err != nil {
		t.Fatal(err)
	}
	if c, err := dial(other); err == nil {
		c.Close()
		t.Fatal("connected to an address no toFQDNs name gave")
	}

	// Every query and response became an L7 DNS flow in the observer,
	// with both sides' identities; responses run from the server.
	var reqs, resps, refused int
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	server := netip.MustParseAddr("10.0.0.2")
	if err := w.obs.GetFlows(ctx, flow.Request{Number: 100}, func(r *flow.Response) error {
		f := r.Flow
		if f == nil || f.Type != flow.L7 {
			return nil
		}
		client, srv := f.IP.Source, f.IP.Destination
		if f.IsReply {
			client, srv = srv, client
		}
		if f.L7.DNS == nil || f.Source.Identity == 0 || f.Destination.Identity == 0 || client != webAddr || srv != server {
			t.Errorf("flow %+v", f)
		}
		switch {
		case f.L7.Type == flow.L7Request:
			reqs++
		case f.L7.DNS.Rcode == dns.RcodeRefused:
			refused++
			fallthrough
		default:
			resps++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if reqs != 3 || resps != 3 || refused != 1 {
		t.Fatalf("L7 flows: %d queries, %d responses (%d refused)", reqs, resps, refused)
	}

	// The TTL (5s) runs out.
	w.advance(5 * time.Second)
	if _, err := engine.ExpireDNS(); err != nil {
		t.Fatal(err)
	}
	if c, err := dial(named); err == nil {
		c.Close()
		t.Fatal("new connection after the TTL ran out")
	}
	if err := echo(open); err != nil {
		t.Fatalf("open connection cut: %v", err)
	}

	// Bad input through the redirect: garbage datagrams get FORMERR or
	// nothing, a TCP client that announces a message and stalls is cut
	// after IdleTimeout, one that sends a bad message gets FORMERR; the
	// proxy keeps answering good queries.
	if err := podWeb.Do(func() error {
		u, err := net.Dial("udp", "10.0.0.2:53")
		if err != nil {
			return err
		}
		defer u.Close()
		for _, junk := range [][]byte{{1}, []byte("\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff"), make([]byte, 1400)} {
			if _, err := u.Write(junk); err != nil {
				return err
			}
		}
		// Datagrams are handled concurrently: the two answers (to the
		// header with garbage, ID 0xabcd, and to 1400 zero bytes (more than
		// the 512 a DNS datagram may have without EDNS0), a header
		// without a question, ID 0) come in either order; the single
		// byte gets none.
		_ = u.SetReadDeadline(time.Now().Add(time.Second))
		b := make([]byte, 512)
		ids := map[uint16]bool{}
		for range 2 {
			n, err := u.Read(b)
			if err != nil {
				return fmt.Errorf("no FORMERR for a bad query: %w", err)
			}
			m := new(dns.Msg)
			if err := m.Unpack(b[:n]); err != nil || m.Rcode != dns.RcodeFormatError {
				return fmt.Errorf("answer to a bad query: %v %v", m, err)
			}
			ids[m.Id] = true
		}
		if !ids[0xabcd] || !ids[0] {
			return fmt.Errorf("FORMERR answers for IDs %v", ids)
		}
		_ = u.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, err := u.Read(b); err == nil {
			return fmt.Errorf("a third answer (%d bytes) to three bad datagrams, one without a header", n)
		}
		c, err := net.Dial("tcp", "10.0.0.2:53")
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write([]byte{0xff, 0xff, 1, 2}); err != nil { // 65535 bytes announced, 2 sent
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		start := time.Now()
		if _, err := c.Read(b); err != io.EOF {
			return fmt.Errorf("stalled TCP client: read %v, want EOF", err)
		}
		if el := time.Since(start); el > 2*time.Second {
			return fmt.Errorf("stalled TCP client cut after %v", el)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if r, err := resolve("again.example.test.", "udp"); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("proxy after bad input: %v %v", r, err)
	}
	if r, err := resolve("again.example.test.", "tcp"); err != nil || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("proxy after bad input (tcp): %v %v", r, err)
	}
}

// The same over IPv6: an AAAA query to the DNS server's IPv6 address is
// redirected to the proxy, and the answer's address becomes reachable
// under toFQDNs; another name is refused.
func TestPrivilegedDNSProxyIPv6(t *testing.T) {
	w := newDNSWorld(t, e2ePolicy+"---\n"+e2ePolicyRestricted)
	dial := func() error {
		return w.podWeb.Do(func() error {
			c, err := net.DialTimeout("tcp6", netip.AddrPortFrom(w.named6, 8080).String(), 700*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	if dial() == nil {
		t.Fatal("connected before resolving")
	}
	for _, network := range []string{"udp", "tcp"} {
		r, err := w.resolveType("api.example.test.", network, "[fd00::2]:53", dns.TypeAAAA)
		if err != nil {
			t.Fatalf("%s: %v", network, err)
		}
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("%s answer %v", network, r)
		}
	}
	if err := dial(); err != nil {
		t.Fatalf("resolved IPv6 address: %v", err)
	}
	r, err := w.resolveType("api.other.test.", "udp", "[fd00::2]:53", dns.TypeAAAA)
	if err != nil || r.Rcode != dns.RcodeRefused {
		t.Fatalf("other name over IPv6: %v %v", r, err)
	}
	if _, ok := w.queries.Load("api.other.test."); ok {
		t.Fatal("refused name reached the server")
	}
}
