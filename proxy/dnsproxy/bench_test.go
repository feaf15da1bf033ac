package dnsproxy

import (
	"context"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/nodeplane/nodeplane"
)

// BenchmarkQueries compares a query answered through the proxy's message
// path (decode, policy decision, forward over a fresh UDP socket, learn
// the answer, record, re-encode) with the same query sent directly to the
// same server by a miekg/dns client: the baseline.
func BenchmarkQueries(b *testing.B) {
	server, _ := testServer(b)
	q := query("www.example.test.", dns.TypeA)
	b.Run("direct", func(b *testing.B) {
		c := &dns.Client{Net: "udp", Timeout: time.Second}
		m := new(dns.Msg)
		m.SetQuestion("www.example.test.", dns.TypeA)
		for b.Loop() {
			if _, _, err := c.Exchange(m, server.String()); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
	})
	b.Run("proxy", func(b *testing.B) {
		p := newProxy(Config{Policy: &fakePolicy{}, Recorder: &records{}, Port: 10053, Timeout: time.Second})
		for b.Loop() {
			if r := p.handle(context.Background(), q, client, server, nodeplane.ProtoUDP); r == nil {
				b.Fatal("no answer")
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
	})
}
