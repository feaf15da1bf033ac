package dnsproxy

import (
	"net"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"
)

const benchPolicy = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules:
        dns: [{matchPattern: "*.example.test"}]
    - ports: [{port: "5353", protocol: UDP}]
`

// BenchmarkPrivilegedDNSDatapath measures DNS queries from a client
// endpoint to a DNS server endpoint through the real datapath, one client
// socket, sequential queries: "direct" to the server's port 5353, which
// an L4 rule allows (the baseline), and "proxy" to port 53, whose DNS
// rules make the datapath redirect every query to the DNS proxy (which
// decides it, forwards it over a fresh upstream socket, learns the answer
// into the engine and records two L7 flows). Same server, same client,
// same run. Reports queries/s and the p50/p99 latency.
func BenchmarkPrivilegedDNSDatapath(b *testing.B) {
	w := newDNSWorld(b, benchPolicy)
	for _, tc := range []struct{ name, server string }{{"direct", "10.0.0.2:5353"}, {"proxy", "10.0.0.2:53"}} {
		b.Run(tc.name, func(b *testing.B) {
			var c net.Conn
			if err := w.podWeb.Do(func() (err error) { c, err = net.Dial("udp", tc.server); return err }); err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			co := &dns.Conn{Conn: c}
			client := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
			m := new(dns.Msg)
			m.SetQuestion("www.example.test.", dns.TypeA)
			lat := make([]time.Duration, 0, 1<<16)
			for b.Loop() {
				start := time.Now()
				r, _, err := client.ExchangeWithConn(m, co)
				if err != nil || r.Rcode != dns.RcodeSuccess {
					b.Fatalf("%v %v", r, err)
				}
				lat = append(lat, time.Since(start))
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
