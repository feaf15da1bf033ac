package flow_test

import (
	"fmt"
	"os"
	"time"

	"github.com/nodeplane/nodeplane/flow"
)

// Decode a drop record the datapath wrote, enrich it, filter it as
// `hubble observe --verdict DROPPED --to-pod db/` would, and print its
// JSON line.
func Example() {
	b, err := os.ReadFile("testdata/records/local-denied.rec")
	if err != nil {
		panic(err)
	}
	recs, err := readRecords(b)
	if err != nil {
		panic(err)
	}
	cat := flow.NewCatalog(flow.CatalogConfig{})
	cat.SetEndpoint(addrA, flow.EndpointInfo{ID: 1, Namespace: "web", PodName: "a-7d9f"})
	cat.SetEndpoint(addrB, flow.EndpointInfo{ID: 2, Namespace: "db", PodName: "b-0"})
	cat.SetIdentity(idA, []string{"k8s:app=web"})
	cat.SetIdentity(idB, []string{"k8s:app=db"})

	// Boot pins the clock so that the output is reproducible.
	dec := flow.NewDecoder(flow.DecoderConfig{NodeName: "node-1", Catalog: cat, Boot: time.Unix(1_800_000_000, 0).Add(-1234 * time.Second)})
	m, err := flow.Compile([]flow.Filter{{Verdict: []flow.Verdict{flow.Dropped}, DestinationPod: []string{"db/"},
		EventType: []flow.EventTypeFilter{{Type: 1}}}}, nil)
	if err != nil {
		panic(err)
	}
	var f flow.Flow
	for _, rec := range recs {
		if err := dec.Decode(rec, &f); err != nil {
			panic(err)
		}
		if m.Match(&f) {
			f.Time = time.Unix(1_800_000_000, 0) // the record's own time varies with the capture
			fmt.Printf("%s", (&flow.Response{Flow: &f, NodeName: f.NodeName}).AppendJSON(nil))
		}
	}
	// Output:
	// {"flow":{"time":"2027-01-15T08:00:00Z","verdict":"DROPPED","drop_reason":133,"IP":{"source":"10.0.0.1","destination":"10.0.0.2","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":40002,"destination_port":9999,"flags":{"SYN":true}}},"source":{"ID":1,"identity":1000,"namespace":"web","labels":["k8s:app=web"],"pod_name":"a-7d9f"},"destination":{"ID":2,"identity":2000,"namespace":"db","labels":["k8s:app=db"],"pod_name":"b-0"},"Type":"L3_L4","node_name":"node-1","event_type":{"type":1,"sub_type":133},"traffic_direction":"INGRESS","trace_observation_point":"FROM_ENDPOINT","drop_reason_desc":"POLICY_DENIED","is_reply":false,"interface":{"index":1},"Summary":"TCP Flags: SYN"},"node_name":"node-1","time":"2027-01-15T08:00:00Z"}
}
