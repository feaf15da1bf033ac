package flow_test

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/flow"
)

// Flows for the filter tests, as the decoder and catalog make them.
var (
	fwdSyn = flow.Flow{ // web/a-7d9f -> db/b-0 TCP SYN, forwarded, traced to the endpoint
		Verdict: flow.Forwarded, EventType: flow.EventType{Type: 4, SubType: 0},
		IP: flow.IP{Source: addrA, Destination: addrB},
		L4: flow.L4{Protocol: flow.ProtoTCP, SourcePort: 40000, DestinationPort: 8080, TCPFlags: monitor.TCPFlagSYN},
		Source: flow.Endpoint{ID: 1, Identity: idA, Namespace: "web", PodName: "a-7d9f",
			Labels: []string{"k8s:app=web", "k8s:io.kubernetes.pod.namespace=web"}},
		Destination: flow.Endpoint{ID: 2, Identity: idB, Namespace: "db", PodName: "b-0",
			Labels: []string{"k8s:app=db", "k8s:io.kubernetes.pod.namespace=db", "k8s:tier=backend"}},
		DestinationService: flow.Service{Name: "db", Namespace: "db"},
		NodeName:           "node-1", TrafficDirection: flow.Ingress, IsReplyKnown: true,
		TraceObservationPoint: flow.ToEndpoint, Interface: flow.Interface{Index: 7, Name: "np2"},
	}
	replySynAck = flow.Flow{ // the reply, to the stack
		Verdict: flow.Forwarded, EventType: flow.EventType{Type: 4, SubType: 3},
		IP:     flow.IP{Source: addrB, Destination: addrA},
		L4:     flow.L4{Protocol: flow.ProtoTCP, SourcePort: 8080, DestinationPort: 40000, TCPFlags: monitor.TCPFlagSYN | monitor.TCPFlagACK},
		Source: fwdSyn.Destination, Destination: fwdSyn.Source,
		NodeName: "node-1", TrafficDirection: flow.Egress, IsReply: true, IsReplyKnown: true,
	}
	droppedICMP = flow.Flow{ // dropped ping from remote, reply unknown
		Verdict: flow.Dropped, DropReason: monitor.DropPolicyDenied, EventType: flow.EventType{Type: 1, SubType: 133},
		IP: flow.IP{Source: remote, Destination: addrA}, L4: flow.L4{Protocol: flow.ProtoICMP, ICMPType: 8},
		Source:      flow.Endpoint{Identity: 2},
		Destination: fwdSyn.Source, NodeName: "node-2", TrafficDirection: flow.Ingress,
	}
	udp6 = flow.Flow{ // an unenriched IPv6 UDP trace, reply flag unknown
		Verdict: flow.Forwarded, EventType: flow.EventType{Type: 4, SubType: 5},
		IP: flow.IP{Source: addrA6, Destination: netip.MustParseAddr("2001:db8::1")},
		L4: flow.L4{Protocol: flow.ProtoUDP, SourcePort: 5353, DestinationPort: 53},
	}
	allFlows = []*flow.Flow{&fwdSyn, &replySynAck, &droppedICMP, &udp6}
)

// TestFilters checks Compile against Hubble's filter semantics (its
// pkg/hubble/filters, read by hand): which of the four flows each allow-
// and deny-list selects.
func TestFilters(t *testing.T) {
	F := func(f flow.Filter) []flow.Filter { return []flow.Filter{f} }
	for _, tc := range []struct {
		name        string
		allow, deny []flow.Filter
		want        [4]bool // fwdSyn, replySynAck, droppedICMP, udp6
	}{
		{"no filters", nil, nil, [4]bool{true, true, true, true}},
		{"empty filter matches all", F(flow.Filter{}), nil, [4]bool{true, true, true, true}},
		{"source IP", F(flow.Filter{SourceIP: []string{"10.0.0.1"}}), nil, [4]bool{true, false, false, false}},
		{"source CIDR, either", F(flow.Filter{SourceIP: []string{"10.0.0.0/31", "192.0.2.0/24"}}), nil, [4]bool{true, false, true, false}},
		{"destination IPv6 CIDR", F(flow.Filter{DestinationIP: []string{"2001:db8::/32"}}), nil, [4]bool{false, false, false, true}},
		{"pod prefix in namespace", F(flow.Filter{SourcePod: []string{"web/a-"}}), nil, [4]bool{true, false, false, false}},
		{"whole namespace", F(flow.Filter{DestinationPod: []string{"web/"}}), nil, [4]bool{false, true, true, false}},
		{"pod without namespace is default's", F(flow.Filter{SourcePod: []string{"a-7d9f"}}), nil, [4]bool{}},
		{"label with source", F(flow.Filter{SourceLabel: []string{"k8s:app=web"}}), nil, [4]bool{true, false, false, false}},
		{"label any source", F(flow.Filter{DestinationLabel: []string{"app=web"}}), nil, [4]bool{false, true, true, false}},
		{"label set", F(flow.Filter{SourceLabel: []string{"app in (db, cache)"}}), nil, [4]bool{false, true, false, false}},
		{"label absent", F(flow.Filter{DestinationLabel: []string{"!tier"}}), nil, [4]bool{false, true, true, true}},
		{"label notin", F(flow.Filter{DestinationLabel: []string{"tier notin (backend)"}}), nil, [4]bool{false, true, true, true}},
		{"label requirements AND", F(flow.Filter{SourceLabel: []string{"app=db,tier=frontend"}}), nil, [4]bool{}},
		{"labels OR", F(flow.Filter{SourceLabel: []string{"app=db", "app=web"}}), nil, [4]bool{true, true, false, false}},
		{"identity", F(flow.Filter{SourceIdentity: []uint32{idB, 2}}), nil, [4]bool{false, true, true, false}},
		{"verdict", F(flow.Filter{Verdict: []flow.Verdict{flow.Dropped}}), nil, [4]bool{false, false, true, false}},
		{"drop reason", F(flow.Filter{DropReasonDesc: []monitor.DropReason{monitor.DropPolicyDeny}}), nil, [4]bool{}},
		{"protocol tcp", F(flow.Filter{Protocol: []string{"TCP"}}), nil, [4]bool{true, true, false, false}},
		{"protocol icmp covers v4", F(flow.Filter{Protocol: []string{"icmp"}}), nil, [4]bool{false, false, true, false}},
		{"protocol icmpv6", F(flow.Filter{Protocol: []string{"icmpv6"}}), nil, [4]bool{}},
		{"destination port", F(flow.Filter{DestinationPort: []string{"8080", "53"}}), nil, [4]bool{true, false, false, true}},
		{"source port", F(flow.Filter{SourcePort: []string{"8080"}}), nil, [4]bool{false, true, false, false}},
		{"reply true", F(flow.Filter{Reply: []bool{true}}), nil, [4]bool{false, true, false, false}},
		// Hubble: a dropped flow with an unknown flag is not a reply; a
		// forwarded one with an unknown flag matches neither.
		{"reply false", F(flow.Filter{Reply: []bool{false}}), nil, [4]bool{true, false, true, false}},
		{"TCP flag SYN", F(flow.Filter{TCPFlags: []monitor.TCPFlags{monitor.TCPFlagSYN}}), nil, [4]bool{true, true, false, false}},
		{"TCP flags SYN and ACK", F(flow.Filter{TCPFlags: []monitor.TCPFlags{monitor.TCPFlagSYN | monitor.TCPFlagACK}}), nil, [4]bool{false, true, false, false}},
		{"TCP flags either", F(flow.Filter{TCPFlags: []monitor.TCPFlags{monitor.TCPFlagFIN, monitor.TCPFlagACK}}), nil, [4]bool{false, true, false, false}},
		{"event type", F(flow.Filter{EventType: []flow.EventTypeFilter{{Type: 4}}}), nil, [4]bool{true, true, false, true}},
		{"event subtype", F(flow.Filter{EventType: []flow.EventTypeFilter{{Type: 4, MatchSubType: true, SubType: 3}}}), nil, [4]bool{false, true, false, false}},
		{"direction", F(flow.Filter{TrafficDirection: []flow.TrafficDirection{flow.Ingress}}), nil, [4]bool{true, false, true, false}},
		{"node name pattern", F(flow.Filter{NodeName: []string{"node-*"}}), nil, [4]bool{true, true, true, false}},
		{"node name with cluster", F(flow.Filter{NodeName: []string{"default/node-2"}}), nil, [4]bool{false, false, true, false}},
		{"IP version", F(flow.Filter{IPVersion: []flow.IPVersion{flow.IPv6}}), nil, [4]bool{false, false, false, true}},
		{"interface", F(flow.Filter{Interface: []flow.Interface{{Name: "np2"}}}), nil, [4]bool{true, false, false, false}},
		{"destination service", F(flow.Filter{DestinationService: []string{"db/d"}}), nil, [4]bool{true, false, false, false}},
		{"source service never set", F(flow.Filter{SourceService: []string{"db/db"}}), nil, [4]bool{}},
		{"fields AND", F(flow.Filter{SourcePod: []string{"web/"}, Verdict: []flow.Verdict{flow.Dropped}}), nil, [4]bool{}},
		{"filters OR", []flow.Filter{{SourcePod: []string{"web/"}}, {Verdict: []flow.Verdict{flow.Dropped}}}, nil, [4]bool{true, false, true, false}},
		{"deny only", nil, F(flow.Filter{Protocol: []string{"tcp"}}), [4]bool{false, false, true, true}},
		{"allow minus deny", F(flow.Filter{Verdict: []flow.Verdict{flow.Forwarded}}), F(flow.Filter{Reply: []bool{true}}), [4]bool{true, false, false, true}},
		{"deny list OR", nil, []flow.Filter{{Protocol: []string{"udp"}}, {DestinationPort: []string{"8080"}}}, [4]bool{false, true, true, false}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := flow.Compile(tc.allow, tc.deny)
			if err != nil {
				t.Fatal(err)
			}
			for i, f := range allFlows {
				if got := m.Match(f); got != tc.want[i] {
					t.Errorf("flow %d: match %v, want %v", i, got, tc.want[i])
				}
			}
		})
	}
}

func TestFilterErrors(t *testing.T) {
	for _, f := range []flow.Filter{
		{SourceIP: []string{"10.0.0.300"}},
		{DestinationIP: []string{"10.0.0.0/33"}},
		{SourcePod: []string{""}},
		{SourceLabel: []string{"app in web"}},
		{SourceLabel: []string{""}},
		{Protocol: []string{"gre"}},
		{DestinationPort: []string{"65536"}},
		{SourcePort: []string{"http"}},
		{NodeName: []string{"["}},
	} {
		if _, err := flow.Compile([]flow.Filter{f}, nil); !errors.Is(err, flow.ErrInvalidFilter) {
			t.Errorf("%+v: %v, want ErrInvalidFilter", f, err)
		}
		if _, err := flow.Compile(nil, []flow.Filter{f}); !errors.Is(err, flow.ErrInvalidFilter) {
			t.Errorf("deny %+v: %v, want ErrInvalidFilter", f, err)
		}
	}
}
