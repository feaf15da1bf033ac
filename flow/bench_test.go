package flow_test

import (
	"io"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/flow"
)

// BenchmarkDecode decodes the records the BPF programs wrote (31 records:
// drops, traces, policy verdicts), from memory, per record:
//
//   - decode: into a caller's Flow, no catalog;
//   - decode+enrich: with the catalog (endpoints, labels, services,
//     interfaces);
//   - decode+enrich+filter+json: and through a two-filter allow-list to a
//     JSON line in a reused buffer, written to io.Discard.
//
// It reports records/s (one core: the loop is single-threaded).
func BenchmarkDecode(b *testing.B) {
	recs := capturedRecords(b)
	m, err := flow.Compile([]flow.Filter{{SourceLabel: []string{"k8s:app=web"}}, {Verdict: []flow.Verdict{flow.Dropped}}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name    string
		catalog *flow.Catalog
		json    bool
	}{
		{"decode", nil, false},
		{"decode+enrich", testCatalog(), false},
		{"decode+enrich+filter+json", testCatalog(), true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			dec := flow.NewDecoder(flow.DecoderConfig{NodeName: "node-1", Catalog: bc.catalog, Boot: time.Unix(0, 0)})
			var f flow.Flow
			buf := make([]byte, 0, 4096)
			b.ReportAllocs()
			n := 0
			for b.Loop() {
				for _, r := range recs {
					if err := dec.Decode(r, &f); err != nil {
						b.Fatal(err)
					}
					if bc.json && m.Match(&f) {
						buf = (&flow.Response{Flow: &f, NodeName: "node-1"}).AppendJSON(buf[:0])
						_, _ = io.Discard.Write(buf)
					}
				}
				n += len(recs)
			}
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "records/s")
		})
	}
}
