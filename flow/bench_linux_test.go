package flow_test

import (
	"errors"
	"io"
	"os"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/flow"
)

// BenchmarkRingbufRead drains the datapath's ring buffer, filled by the BPF
// programs (BPF_PROG_TEST_RUN of the capture cases at aggregation none,
// untimed), and reports records/s of one reading goroutine:
//
//   - copy: the bare loop, ringbuf.Reader.ReadInto (EventReader.ReadRaw is
//     nothing more) and a copy of the bytes: the ceiling;
//   - decode: ReadRaw and Decode into one Flow, enriched by the catalog;
//   - decode+filter+json: and a two-filter allow-list and the JSON line of
//     every match to io.Discard (records -> filtered flows -> JSON);
//   - observer: Observer.Process (decode, enrich, store in the ring).
func BenchmarkRingbufRead(b *testing.B) {
	w := newCaptureWorld(b, monitor.AggregationNone)
	var pkts []packet
	for _, c := range recordCases {
		pkts = append(pkts, c.send...)
	}
	m, err := flow.Compile([]flow.Filter{{SourceLabel: []string{"k8s:app=web"}}, {Verdict: []flow.Verdict{flow.Dropped}}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	o, err := flow.New(flow.Config{Source: w.events, Catalog: testCatalog(), Capacity: 4095})
	if err != nil {
		b.Fatal(err)
	}
	dec := flow.NewDecoder(flow.DecoderConfig{NodeName: "node-1", Catalog: testCatalog()})
	for _, mode := range []string{"copy", "decode", "decode+filter+json", "observer"} {
		b.Run(mode, func(b *testing.B) {
			var f flow.Flow
			buf := make([]byte, 0, 4096)
			total := 0
			for b.Loop() {
				b.StopTimer()
				for range 600 {
					for _, p := range pkts {
						if err := w.send(p); err != nil {
							b.Fatal(err)
						}
					}
				}
				// A deadline in the past: read what is there, then stop.
				w.events.SetDeadline(time.Now())
				b.StartTimer()
				for {
					rec, err := w.events.ReadRaw()
					if errors.Is(err, os.ErrDeadlineExceeded) {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					total++
					switch mode {
					case "copy":
						buf = append(buf[:0], rec...)
					case "decode":
						if err := dec.Decode(rec, &f); err != nil {
							b.Fatal(err)
						}
					case "decode+filter+json":
						if err := dec.Decode(rec, &f); err != nil {
							b.Fatal(err)
						}
						if m.Match(&f) {
							buf = (&flow.Response{Flow: &f}).AppendJSON(buf[:0])
							_, _ = io.Discard.Write(buf)
						}
					case "observer":
						if err := o.Process(rec, &f); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
			b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "records/s")
		})
	}
}
