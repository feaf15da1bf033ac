package flow_test

import (
	"context"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/flow"
)

func httpRecord(typ flow.L7Type, code uint32, verdict flow.Verdict) *flow.L7Record {
	return &flow.L7Record{
		Time:                time.Unix(1_700_000_000, 0),
		Verdict:             verdict,
		Direction:           flow.Egress,
		Protocol:            nodeplane.ProtoTCP,
		Source:              netip.MustParseAddrPort("10.0.0.1:40000"),
		Destination:         netip.MustParseAddrPort("10.0.0.2:80"),
		SourceIdentity:      1000,
		DestinationIdentity: 2000,
		ProxyPort:           15001,
		L7: flow.Layer7{Type: typ, Latency: 2500 * time.Microsecond, HTTP: &flow.HTTP{
			Code: code, Method: "GET", URL: "http://svc/private\"x", Protocol: "HTTP/1.1",
			Headers: []flow.HTTPHeader{{Key: "X-Token", Value: "12"}},
		}},
	}
}

// TestL7Summary checks the Summary text against Hubble's parser/seven
// formats, written out by hand.
func TestL7Summary(t *testing.T) {
	for _, tc := range []struct {
		rec  *flow.L7Record
		want string
	}{
		{httpRecord(flow.L7Request, 0, flow.Forwarded), `HTTP/1.1 GET http://svc/private"x`},
		{httpRecord(flow.L7Response, 403, flow.Dropped), `HTTP/1.1 403 2ms (GET http://svc/private"x)`},
		{&flow.L7Record{L7: flow.Layer7{Type: flow.L7Request, DNS: &flow.DNS{Query: "a.example.test.", Qtypes: []string{"A"}}}},
			"DNS Query a.example.test. A"},
		{&flow.L7Record{L7: flow.Layer7{Type: flow.L7Response, DNS: &flow.DNS{Query: "a.example.test.", Qtypes: []string{"A"},
			IPs: []netip.Addr{netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2")}, TTL: 30, ObservationSource: flow.DNSSourceProxy}}},
			`DNS Answer "10.1.0.1,10.1.0.2" TTL: 30 (Proxy a.example.test. A)`},
		{&flow.L7Record{L7: flow.Layer7{Type: flow.L7Response, DNS: &flow.DNS{Query: "b.test.", Qtypes: []string{"AAAA"}, Rcode: 5, ObservationSource: flow.DNSSourceProxy}}},
			`DNS Answer RCode: REFUSED (Proxy b.test. AAAA)`},
	} {
		var f flow.Flow
		flow.L7Flow(tc.rec, "n", &f)
		if got := f.Summary(); got != tc.want {
			t.Errorf("Summary() = %q, want %q", got, tc.want)
		}
	}
}

// TestL7JSONAndRing records an HTTP response through an Observer and reads
// it back with GetFlows as JSON: a response runs from the server to the
// client, and the l7 member carries the record.
func TestL7JSONAndRing(t *testing.T) {
	o, err := flow.New(flow.Config{Source: nopSource{}, NodeName: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	o.RecordL7(httpRecord(flow.L7Response, 403, flow.Dropped))
	var line []byte
	err = o.GetFlows(context.Background(), flow.Request{Number: 1}, func(r *flow.Response) error {
		line = r.AppendJSON(nil)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Flow struct {
			Verdict string
			IP      struct{ Source, Destination string }
			Type    string
			L7      struct {
				Type      string
				LatencyNs string `json:"latency_ns"`
				HTTP      struct {
					Code    int
					URL     string
					Headers []struct{ Key, Value string }
				}
			}
			IsReply bool `json:"is_reply"`
			Summary string
		}
	}
	if err := json.Unmarshal(line, &got); err != nil {
		t.Fatalf("%v: %s", err, line)
	}
	f := got.Flow
	if f.Verdict != "DROPPED" || f.Type != "L7" || f.IP.Source != "10.0.0.2" || f.IP.Destination != "10.0.0.1" ||
		!f.IsReply || f.L7.Type != "RESPONSE" || f.L7.LatencyNs != "2500000" || f.L7.HTTP.Code != 403 ||
		f.L7.HTTP.URL != `http://svc/private"x` || len(f.L7.HTTP.Headers) != 1 || f.L7.HTTP.Headers[0].Key != "X-Token" ||
		f.Summary != `HTTP/1.1 403 2ms (GET http://svc/private"x)` {
		t.Errorf("got %+v from %s", f, line)
	}
}

// TestSummaryOnce checks that the JSON encoding's Summary is Flow.Summary
// for the ICMP types the two used to name differently.
func TestSummaryOnce(t *testing.T) {
	for _, tc := range []struct {
		proto     nodeplane.Protocol
		typ, code uint8
		want      string
		src, dst  string
	}{
		{nodeplane.ProtoICMP, 13, 0, "ICMPv4 TimestampRequest", "10.0.0.1", "10.0.0.2"},
		{nodeplane.ProtoICMP, 42, 1, "ICMPv4 42(1)", "10.0.0.1", "10.0.0.2"},
		{nodeplane.ProtoICMPv6, 135, 0, "ICMPv6 NeighborSolicitation", "fd00::1", "fd00::2"},
		{nodeplane.ProtoICMPv6, 200, 0, "ICMPv6 200(0)", "fd00::1", "fd00::2"},
	} {
		f := flow.Flow{Type: flow.L3L4, IP: flow.IP{Source: netip.MustParseAddr(tc.src), Destination: netip.MustParseAddr(tc.dst)},
			L4: flow.L4{Protocol: tc.proto, ICMPType: tc.typ, ICMPCode: tc.code}}
		var got struct{ Flow struct{ Summary string } }
		if err := json.Unmarshal((&flow.Response{Flow: &f}).AppendJSON(nil), &got); err != nil {
			t.Fatal(err)
		}
		if f.Summary() != tc.want || got.Flow.Summary != tc.want {
			t.Errorf("%v type %d: Summary %q, JSON %q, want %q", tc.proto, tc.typ, f.Summary(), got.Flow.Summary, tc.want)
		}
	}
}

type nopSource struct{}

func (nopSource) ReadRaw() ([]byte, error) { select {} }

// TestL7Filters checks Hubble's L7 filter semantics on HTTP and DNS flows.
func TestL7Filters(t *testing.T) {
	var req, resp, dns, l4 flow.Flow
	flow.L7Flow(httpRecord(flow.L7Request, 0, flow.Forwarded), "n", &req)
	flow.L7Flow(httpRecord(flow.L7Response, 403, flow.Forwarded), "n", &resp)
	flow.L7Flow(&flow.L7Record{Protocol: nodeplane.ProtoUDP, L7: flow.Layer7{Type: flow.L7Request, DNS: &flow.DNS{Query: "a.example.test."}}}, "n", &dns)
	l4 = flow.Flow{Type: flow.L3L4, L4: flow.L4{Protocol: nodeplane.ProtoTCP}}
	all := []*flow.Flow{&req, &resp, &dns, &l4}
	for _, tc := range []struct {
		f    flow.Filter
		want []bool // req, resp, dns, l4
	}{
		{flow.Filter{HTTPStatusCode: []string{"4+"}}, []bool{false, true, false, false}},
		{flow.Filter{HTTPStatusCode: []string{"403"}}, []bool{false, true, false, false}},
		{flow.Filter{HTTPStatusCode: []string{"40+"}}, []bool{false, true, false, false}},
		{flow.Filter{HTTPStatusCode: []string{"2+"}}, []bool{false, false, false, false}},
		{flow.Filter{HTTPMethod: []string{"get"}}, []bool{true, true, false, false}},
		{flow.Filter{HTTPPath: []string{"^/private"}}, []bool{true, true, false, false}},
		{flow.Filter{HTTPURL: []string{"^http://svc/"}}, []bool{true, true, false, false}},
		{flow.Filter{HTTPHeader: []flow.HTTPHeader{{Key: "X-Token", Value: "12"}}}, []bool{true, true, false, false}},
		{flow.Filter{DNSQuery: []string{`example\.test\.$`}}, []bool{false, false, true, false}},
		{flow.Filter{Protocol: []string{"http"}}, []bool{true, true, false, false}},
		{flow.Filter{Protocol: []string{"dns"}}, []bool{false, false, true, false}},
		{flow.Filter{Protocol: []string{"tcp"}}, []bool{true, true, false, true}},
		{flow.Filter{EventType: []flow.EventTypeFilter{{Type: 129}}}, []bool{true, true, true, false}},
	} {
		m, err := flow.Compile([]flow.Filter{tc.f}, nil)
		if err != nil {
			t.Fatalf("%+v: %v", tc.f, err)
		}
		for i, f := range all {
			if got := m.Match(f); got != tc.want[i] {
				t.Errorf("%+v on flow %d: %v, want %v", tc.f, i, got, tc.want[i])
			}
		}
	}
	for _, bad := range []flow.Filter{
		{HTTPStatusCode: []string{"600"}}, {HTTPStatusCode: []string{"4"}}, {HTTPPath: []string{"("}}, {DNSQuery: []string{"["}},
		{HTTPMethod: []string{"GET"}, EventType: []flow.EventTypeFilter{{Type: 1}}},
	} {
		if _, err := flow.Compile([]flow.Filter{bad}, nil); err == nil {
			t.Errorf("%+v compiled", bad)
		}
	}
}
