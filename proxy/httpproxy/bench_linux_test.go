package httpproxy_test

import (
	"io"
	"net/http"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/proxy/internal/proxytest"
)

// BenchmarkHTTP measures sequential keep-alive GETs from web to db, the
// same client and the same server: "direct" to port 9090 (an L4 allow,
// not redirected) is the baseline, "proxy" to port 80 goes through the
// datapath's redirect and the HTTP proxy, which decides every request
// against db's rules and records two L7 flows. It reports requests/s and
// the p50 and p99 latency of one request.
func BenchmarkHTTP(b *testing.B) {
	e := newEnv(b, nil)
	for _, bc := range []struct {
		name string
		port uint16
	}{{"direct", l4Port}, {"proxy", httpPort}} {
		b.Run(bc.name, func(b *testing.B) {
			c := client(e.w.PodA, nil)
			url := "http://" + netip.AddrPortFrom(proxytest.B4, bc.port).String() + "/public/x"
			req, err := http.NewRequest("GET", url, nil)
			if err != nil {
				b.Fatal(err)
			}
			req.Header.Set("X-Token", "12345")
			get := func() time.Duration {
				start := time.Now()
				resp, err := c.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d", resp.StatusCode)
				}
				return time.Since(start)
			}
			get() // connect outside the measurement
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				lat = append(lat, get())
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
