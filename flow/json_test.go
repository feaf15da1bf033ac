package flow_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/flow"
)

// TestJSON decodes a captured drop, enriched, and reads its JSON line back
// with encoding/json: the members are flow.proto's field names (as
// protojson with proto names writes them, which `hubble observe -o jsonpb`
// prints) with the values the table expects.
func TestJSON(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "records", "local-denied.rec"))
	if err != nil {
		t.Fatal(err)
	}
	recs, err := readRecords(b)
	if err != nil {
		t.Fatal(err)
	}
	dec := flow.NewDecoder(flow.DecoderConfig{NodeName: "node-1", Catalog: testCatalog(), Boot: time.Unix(1_700_000_000, 0)})
	var f flow.Flow
	if err := dec.Decode(recs[2], &f); err != nil {
		t.Fatal(err)
	}
	line := (&flow.Response{Flow: &f, NodeName: "node-1"}).AppendJSON(nil)
	if !strings.HasSuffix(string(line), "}\n") || strings.Count(string(line), "\n") != 1 {
		t.Fatalf("not one line: %q", line)
	}
	var got map[string]any
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	fl := got["flow"].(map[string]any)
	want := map[string]any{
		"verdict":          "DROPPED",
		"drop_reason":      133.0,
		"drop_reason_desc": "POLICY_DENIED",
		"IP":               map[string]any{"source": "10.0.0.1", "destination": "10.0.0.2", "ipVersion": "IPv4"},
		"l4": map[string]any{"TCP": map[string]any{"source_port": 40002.0, "destination_port": 9999.0,
			"flags": map[string]any{"SYN": true}}},
		"source": map[string]any{"ID": 1.0, "identity": 1000.0, "namespace": "web", "pod_name": "a-7d9f",
			"labels": []any{"k8s:app=web", "k8s:io.kubernetes.pod.namespace=web"}},
		"destination": map[string]any{"ID": 2.0, "identity": 2000.0, "namespace": "db", "pod_name": "b-0",
			"labels": []any{"k8s:app=db", "k8s:io.kubernetes.pod.namespace=db", "k8s:tier=backend"}},
		"Type":                    "L3_L4",
		"node_name":               "node-1",
		"event_type":              map[string]any{"type": 1.0, "sub_type": 133.0},
		"traffic_direction":       "INGRESS",
		"trace_observation_point": "FROM_ENDPOINT",
		"is_reply":                false,
		"interface":               map[string]any{"index": 1.0, "name": "lo"},
		"Summary":                 "TCP Flags: SYN",
	}
	for k, v := range want {
		if !reflect.DeepEqual(fl[k], v) {
			t.Errorf("%s: %#v, want %#v", k, fl[k], v)
		}
	}
	ts, err := time.Parse(time.RFC3339Nano, fl["time"].(string))
	if err != nil || !ts.Equal(f.Time) {
		t.Errorf("time %v (%v), want %v", fl["time"], err, f.Time)
	}
	if got["node_name"] != "node-1" || got["time"] != fl["time"] {
		t.Errorf("response node %v time %v", got["node_name"], got["time"])
	}
	for k := range fl {
		if _, ok := want[k]; !ok && k != "time" {
			t.Errorf("unexpected member %s: %v", k, fl[k])
		}
	}

	// Lost events, and strings that need escaping.
	lost := (&flow.Response{Lost: &flow.LostEvent{Source: flow.LostHubbleRing, NumEventsLost: 7, Time: t0}, NodeName: "n\"\x01é"}).AppendJSON(nil)
	var l map[string]any
	if err := json.Unmarshal(lost, &l); err != nil {
		t.Fatalf("%v: %s", err, lost)
	}
	if fmt.Sprint(l["lost_events"]) != "map[num_events_lost:7 source:HUBBLE_RING_BUFFER]" || l["node_name"] != "n\"\x01é" ||
		l["time"] != "2026-12-07T00:00:00Z" {
		t.Errorf("lost event %s", lost)
	}
}

// TestDecodeAllocs checks the hot path allocates nothing: decoding a
// record (with enrichment) into a caller's Flow, filtering it, and
// appending its JSON to a reused buffer.
func TestDecodeAllocs(t *testing.T) {
	recs := capturedRecords(t)
	dec := flow.NewDecoder(flow.DecoderConfig{NodeName: "node-1", Catalog: testCatalog(), Boot: time.Unix(0, 0)})
	m, err := flow.Compile([]flow.Filter{{SourceLabel: []string{"k8s:app=web"}}, {Verdict: []flow.Verdict{flow.Dropped}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var f flow.Flow
	buf := make([]byte, 0, 4096)
	n := testing.AllocsPerRun(100, func() {
		for _, r := range recs {
			if err := dec.Decode(r, &f); err != nil {
				t.Fatal(err)
			}
			if m.Match(&f) {
				buf = f.AppendJSON(buf[:0])
			}
		}
	})
	if n != 0 {
		t.Fatalf("%v allocations per run of %d records", n, len(recs))
	}
}
