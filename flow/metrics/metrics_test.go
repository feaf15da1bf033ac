package metrics_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/flow/metrics"
)

// TestMetrics counts hand-made flows and compares the exposition with the
// names and label values Hubble and Cilium use.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	trace := flow.Flow{Verdict: flow.Forwarded, EventType: flow.EventType{Type: 4, SubType: 0}, L4: flow.L4{Protocol: nodeplane.ProtoTCP}}
	dropped := flow.Flow{Verdict: flow.Dropped, DropReason: monitor.DropPolicyDenied, EventType: flow.EventType{Type: 1, SubType: 133},
		L4: flow.L4{Protocol: nodeplane.ProtoTCP}, TrafficDirection: flow.Ingress}
	verdict := flow.Flow{Verdict: flow.Dropped, DropReason: monitor.DropPolicyDenied, EventType: flow.EventType{Type: 5},
		TrafficDirection: flow.Ingress, PolicyMatchType: monitor.MatchNone}
	allowed := flow.Flow{Verdict: flow.Forwarded, EventType: flow.EventType{Type: 5}, TrafficDirection: flow.Egress,
		PolicyMatchType: monitor.MatchL3L4}
	for range 3 {
		m.ObserveFlow(&trace)
	}
	m.ObserveFlow(&dropped)
	m.ObserveFlow(&dropped)
	m.ObserveFlow(&verdict)
	m.ObserveFlow(&allowed)
	fromHost := allowed
	fromHost.Source.Identity = 1
	m.ObserveFlow(&fromHost) // counted as a flow, not as a verdict
	var l7 flow.Flow
	flow.L7Flow(&flow.L7Record{Verdict: flow.Dropped, L7: flow.Layer7{Type: flow.L7Request, HTTP: &flow.HTTP{Method: "GET"}}}, "n", &l7)
	m.ObserveFlow(&l7) // a denied request is no packet drop
	m.ObserveLost(flow.LostRingBuffer, 4)
	m.ObserveLost(flow.LostHubbleRing, 2)

	want := `
# HELP cilium_drop_count_total Total dropped packets, tagged by drop reason and ingress/egress direction
# TYPE cilium_drop_count_total counter
cilium_drop_count_total{direction="INGRESS",reason="Policy denied"} 2
# HELP hubble_drop_total Number of drops
# TYPE hubble_drop_total counter
hubble_drop_total{protocol="TCP",reason="POLICY_DENIED"} 2
# HELP hubble_flows_processed_total Total number of flows processed
# TYPE hubble_flows_processed_total counter
hubble_flows_processed_total{subtype="",type="Drop",verdict="DROPPED"} 2
hubble_flows_processed_total{subtype="HTTP",type="L7",verdict="DROPPED"} 1
hubble_flows_processed_total{subtype="",type="PolicyVerdict",verdict="DROPPED"} 1
hubble_flows_processed_total{subtype="",type="PolicyVerdict",verdict="FORWARDED"} 2
hubble_flows_processed_total{subtype="to-endpoint",type="Trace",verdict="FORWARDED"} 3
# HELP hubble_lost_events_total Number of lost events
# TYPE hubble_lost_events_total counter
hubble_lost_events_total{source="hubble_ring_buffer"} 2
hubble_lost_events_total{source="perf_event_ring_buffer"} 4
# HELP hubble_policy_verdicts_total Total number of Cilium network policy verdicts
# TYPE hubble_policy_verdicts_total counter
hubble_policy_verdicts_total{action="dropped",direction="ingress",match="none"} 1
hubble_policy_verdicts_total{action="forwarded",direction="egress",match="l3-l4"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { m.ObserveFlow(&dropped) }); n != 0 {
		t.Errorf("ObserveFlow allocates %v times", n)
	}
}

// TestMetricsFromRecords runs the records the BPF programs wrote through
// an Observer with the metrics as its sink: every flow is counted once.
func TestMetricsFromRecords(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("..", "testdata", "records", "*.rec"))
	var recs [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for len(b) >= 2 {
			n := int(b[0]) | int(b[1])<<8
			recs = append(recs, b[2:2+n])
			b = b[2+n:]
		}
	}
	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	o, err := flow.New(flow.Config{Source: &nopSource{}, Sink: m, Boot: time.Unix(0, 0)})
	if err != nil {
		t.Fatal(err)
	}
	var f flow.Flow
	for _, r := range recs {
		if err := o.Process(r, &f); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, mf := range mfs {
		if mf.GetName() == "hubble_flows_processed_total" {
			for _, c := range mf.GetMetric() {
				total += c.GetCounter().GetValue()
			}
		}
	}
	if total != float64(len(recs)) || len(recs) == 0 {
		t.Fatalf("counted %v flows of %d records", total, len(recs))
	}
}

type nopSource struct{}

func (nopSource) ReadRaw() ([]byte, error) { return nil, os.ErrClosed }
