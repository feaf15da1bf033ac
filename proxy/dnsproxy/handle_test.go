package dnsproxy

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/policy"
)

// fakePolicy allows names under example.test and records observations.
type fakePolicy struct {
	mu       sync.Mutex
	observed map[string][]netip.Addr
	ttls     map[string]time.Duration
}

func (f *fakePolicy) EvaluateDNS(_ netip.Addr, _ netip.AddrPort, _ nodeplane.Protocol, name string) (policy.DNSDecision, error) {
	return policy.DNSDecision{Allowed: strings.HasSuffix(name, ".example.test.")}, nil
}

func (f *fakePolicy) ObserveDNS(name string, addrs []netip.Addr, ttl time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.observed == nil {
		f.observed, f.ttls = map[string][]netip.Addr{}, map[string]time.Duration{}
	}
	f.observed[name] = addrs
	f.ttls[name] = ttl
	return nil
}

type records struct {
	mu  sync.Mutex
	all []flow.L7Record
}

func (r *records) RecordL7(rec *flow.L7Record) {
	r.mu.Lock()
	r.all = append(r.all, *rec)
	r.mu.Unlock()
}

// testServer is a real DNS server (miekg/dns) on loopback, UDP and TCP:
// every name gets 192.0.2.1 with TTL 30; "big.example.test" gets 100 A
// records (too large for 512 bytes).
func testServer(t testing.TB) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	var queries atomic.Int64
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		queries.Add(1)
		m := new(dns.Msg)
		m.SetReply(r)
		if strings.HasPrefix(strings.ToLower(r.Question[0].Name), "alias.") {
			// A CNAME to real.example.test. with an A and an AAAA record.
			target := "real.example.test."
			m.Answer = []dns.RR{
				&dns.CNAME{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 60}, Target: target},
				&dns.A{Hdr: dns.RR_Header{Name: target, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30}, A: net.IPv4(192, 0, 2, 50)},
				&dns.AAAA{Hdr: dns.RR_Header{Name: target, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: 10}, AAAA: net.ParseIP("2001:db8::50")},
			}
			w.WriteMsg(m)
			return
		}
		n := 1
		if strings.HasPrefix(r.Question[0].Name, "big.") {
			n = 100
		}
		for i := range n {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 30},
				A: net.IPv4(192, 0, 2, byte(1+i))})
		}
		w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		go s.ActivateAndServe()
		t.Cleanup(func() { s.Shutdown() })
	}
	return addr, &queries
}

var client = netip.MustParseAddrPort("10.0.0.1:40000")

func query(name string, qtype uint16) []byte {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	b, _ := m.Pack()
	return b
}

func TestHandleAllowedRefusedAndRecorded(t *testing.T) {
	server, queries := testServer(t)
	pol, recs := &fakePolicy{}, &records{}
	p := newProxy(Config{Policy: pol, Recorder: recs, Port: 10053, Timeout: time.Second})
	for _, proto := range []nodeplane.Protocol{nodeplane.ProtoUDP, nodeplane.ProtoTCP} {
		reply := new(dns.Msg)
		if err := reply.Unpack(p.handle(context.Background(), query("WWW.example.test.", dns.TypeA), client, server, proto)); err != nil {
			t.Fatal(err)
		}
		if reply.Rcode != dns.RcodeSuccess || len(reply.Answer) != 1 {
			t.Fatalf("%v: allowed query answered %v", proto, reply)
		}
	}
	if got := pol.observed["www.example.test."]; len(got) != 1 || got[0] != netip.MustParseAddr("192.0.2.1") || pol.ttls["www.example.test."] != 30*time.Second {
		t.Fatalf("observed %v %v", pol.observed, pol.ttls)
	}
	before := queries.Load()
	reply := new(dns.Msg)
	if err := reply.Unpack(p.handle(context.Background(), query("evil.test.", dns.TypeA), client, server, nodeplane.ProtoUDP)); err != nil {
		t.Fatal(err)
	}
	if reply.Rcode != dns.RcodeRefused || queries.Load() != before {
		t.Fatalf("refused name: rcode %v, server saw %d queries", dns.RcodeToString[reply.Rcode], queries.Load()-before)
	}
	if _, ok := pol.observed["evil.test."]; ok {
		t.Fatal("refused name observed")
	}
	// Every query and response is a record: 3 queries, 3 responses.
	var req, resp, dropped int
	for _, r := range recs.all {
		switch r.L7.Type {
		case flow.L7Request:
			req++
		case flow.L7Response:
			resp++
		}
		if r.Verdict == flow.Dropped {
			dropped++
		}
		if r.L7.DNS == nil || r.Source != client || r.Destination != server {
			t.Fatalf("record %+v", r)
		}
	}
	if req != 3 || resp != 3 || dropped != 2 {
		t.Fatalf("records: %d requests, %d responses, %d dropped", req, resp, dropped)
	}
}

func TestHandleBadInput(t *testing.T) {
	server, queries := testServer(t)
	p := newProxy(Config{Policy: &fakePolicy{}, Port: 10053, Timeout: 300 * time.Millisecond})
	ctx := context.Background()
	// Too short for a header: no answer.
	if r := p.handle(ctx, []byte{1, 2, 3}, client, server, nodeplane.ProtoUDP); r != nil {
		t.Fatalf("short message answered %x", r)
	}
	// A response sent to the proxy: no answer (no loops).
	resp := new(dns.Msg)
	resp.SetQuestion("a.example.test.", dns.TypeA)
	resp.Response = true
	b, _ := resp.Pack()
	if r := p.handle(ctx, b, client, server, nodeplane.ProtoUDP); r != nil {
		t.Fatal("response answered")
	}
	// A header followed by garbage, and two questions: FORMERR, same ID.
	garbage := append([]byte{0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0}, 0xff, 0xff, 0xff)
	two := new(dns.Msg)
	two.SetQuestion("a.example.test.", dns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	tb, _ := two.Pack()
	for _, msg := range [][]byte{garbage, tb} {
		m := new(dns.Msg)
		if err := m.Unpack(p.handle(ctx, msg, client, server, nodeplane.ProtoUDP)); err != nil {
			t.Fatal(err)
		}
		if m.Rcode != dns.RcodeFormatError || m.Id != uint16(msg[0])<<8|uint16(msg[1]) {
			t.Fatalf("bad message answered %v", m)
		}
	}
	if queries.Load() != 0 {
		t.Fatal("bad input reached the server")
	}
	// An answer too large for 512 bytes over UDP is truncated (TC), so
	// the client retries over TCP, where it comes whole.
	m := new(dns.Msg)
	raw := p.handle(ctx, query("big.example.test.", dns.TypeA), client, server, nodeplane.ProtoUDP)
	if err := m.Unpack(raw); err != nil {
		t.Fatal(err)
	}
	if !m.Truncated || len(raw) > dns.MinMsgSize {
		t.Fatalf("UDP answer of %d bytes, truncated %v", len(raw), m.Truncated)
	}
	if err := m.Unpack(p.handle(ctx, query("big.example.test.", dns.TypeA), client, server, nodeplane.ProtoTCP)); err != nil || len(m.Answer) != 100 {
		t.Fatalf("TCP answer %d records, %v", len(m.Answer), err)
	}
	// A server that does not answer: SERVFAIL.
	dead := netip.MustParseAddrPort("127.0.0.1:1")
	if err := m.Unpack(p.handle(ctx, query("a.example.test.", dns.TypeA), client, dead, nodeplane.ProtoUDP)); err != nil || m.Rcode != dns.RcodeServerFailure {
		t.Fatalf("dead server: %v %v", m, err)
	}
}

// Cilium's other reject response code, nameError, answers NXDOMAIN.
func TestHandleRejectNameError(t *testing.T) {
	server, queries := testServer(t)
	p := newProxy(Config{Policy: &fakePolicy{}, Port: 10053, RejectRcode: dns.RcodeNameError})
	m := new(dns.Msg)
	if err := m.Unpack(p.handle(context.Background(), query("evil.test.", dns.TypeA), client, server, nodeplane.ProtoUDP)); err != nil {
		t.Fatal(err)
	}
	if m.Rcode != dns.RcodeNameError || queries.Load() != 0 {
		t.Fatalf("rcode %s, %d queries reached the server", dns.RcodeToString[m.Rcode], queries.Load())
	}
}

func TestNewRefusesConfig(t *testing.T) {
	for _, cfg := range []Config{{}, {Policy: &fakePolicy{}}, {Policy: &fakePolicy{}, Port: 1, Timeout: -1},
		{Policy: &fakePolicy{}, Port: 1, RejectRcode: dns.RcodeServerFailure}, {Policy: &fakePolicy{}, Port: 1, MaxTCPConnections: -1}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// An answer through a CNAME, as Cilium reads it: the addresses (A and
// AAAA) belong to the queried name, for the lowest TTL of the chain
// (CNAME included); the response record lists them and the CNAME.
func TestHandleCNAMEAndIPv6(t *testing.T) {
	server, _ := testServer(t)
	pol, recs := &fakePolicy{}, &records{}
	p := newProxy(Config{Policy: pol, Recorder: recs, Port: 10053, Timeout: time.Second})
	reply := new(dns.Msg)
	if err := reply.Unpack(p.handle(context.Background(), query("Alias.Example.Test.", dns.TypeA), client, server, nodeplane.ProtoUDP)); err != nil {
		t.Fatal(err)
	}
	if len(reply.Answer) != 3 {
		t.Fatalf("answer %v", reply)
	}
	want := []netip.Addr{netip.MustParseAddr("192.0.2.50"), netip.MustParseAddr("2001:db8::50")}
	got := pol.observed["alias.example.test."]
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] || pol.ttls["alias.example.test."] != 10*time.Second || len(pol.observed) != 1 {
		t.Errorf("observed %v, TTLs %v", pol.observed, pol.ttls)
	}
	last := recs.all[len(recs.all)-1]
	if d := last.L7.DNS; d == nil || len(d.CNAMEs) != 1 || d.CNAMEs[0] != "real.example.test." || d.TTL != 10 || len(d.IPs) != 2 ||
		strings.Join(d.RRTypes, ",") != "CNAME,A,AAAA" {
		t.Fatalf("response record %+v", last.L7.DNS)
	}
}

func TestAnswerAddrsChain(t *testing.T) {
	rr := func(s string) dns.RR {
		r, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	m := new(dns.Msg)
	m.Answer = []dns.RR{rr("a.test. 60 IN CNAME b.test."), rr("b.test. 20 IN CNAME c.test."), rr("c.test. 30 IN A 192.0.2.1")}
	ips, ttl, cnames, ok := answerAddrs(m, "a.test.")
	if !ok || len(ips) != 1 || ttl != 20 || len(cnames) != 2 {
		t.Fatalf("chain: %v %d %v %v", ips, ttl, cnames, ok)
	}
	// A record for a name off the chain: nothing is learnt.
	m.Answer = append(m.Answer, rr("evil.test. 30 IN A 192.0.2.66"))
	if _, _, _, ok := answerAddrs(m, "a.test."); ok {
		t.Fatal("off-chain record accepted")
	}
	// No address records: no TTL.
	m.Answer = nil
	if ips, ttl, _, ok := answerAddrs(m, "a.test."); !ok || len(ips) != 0 || ttl != 0 {
		t.Fatalf("empty answer: %v %d %v", ips, ttl, ok)
	}
}
