package hubble

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	relaypb "github.com/cilium/cilium/api/v1/relay"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/flow"
)

// ringObserver serves a flow.Ring the test fills, as flow.Observer serves
// its own.
type ringObserver struct {
	ring  *flow.Ring
	node  string
	start time.Time
}

func (r *ringObserver) GetFlows(ctx context.Context, req flow.Request, fn func(*flow.Response) error) error {
	return r.ring.GetFlows(ctx, req, r.node, fn)
}

func (r *ringObserver) Status() flow.Status {
	return flow.Status{NumFlows: uint64(r.ring.Len()), MaxFlows: uint64(r.ring.Cap()),
		SeenFlows: r.ring.Written(), Uptime: time.Since(r.start)}
}

// startServer serves src on a loopback port and returns a client.
func startServer(t testing.TB, src Observer) (observerpb.ObserverClient, *grpc.ClientConn, string) {
	t.Helper()
	s, err := New(Config{Flows: src, NodeName: "node-a", Address: "127.0.0.1", Version: "nodeplane-test"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return observerpb.NewObserverClient(conn), conn, l.Addr().String()
}

// testFlows are six flows a second apart: web→db TCP allowed and denied,
// their replies, and ICMP.
func testFlows() []flow.Flow {
	v4 := func(s, d string) flow.IP {
		return flow.IP{Source: netip.MustParseAddr(s), Destination: netip.MustParseAddr(d)}
	}
	tcp := func(sp, dp uint16, fl monitor.TCPFlags) flow.L4 {
		return flow.L4{Protocol: nodeplane.ProtoTCP, SourcePort: sp, DestinationPort: dp, TCPFlags: fl}
	}
	fs := []flow.Flow{
		{Verdict: flow.Forwarded, IP: v4("10.0.0.1", "10.0.0.2"), L4: tcp(40000, 80, monitor.TCPFlagSYN), Source: web(), Destination: db(), PolicyMatchType: monitor.MatchL3L4},
		{Verdict: flow.Forwarded, IP: v4("10.0.0.2", "10.0.0.1"), L4: tcp(80, 40000, monitor.TCPFlagSYN|monitor.TCPFlagACK), Source: db(), Destination: web(), IsReply: true, IsReplyKnown: true},
		{Verdict: flow.Dropped, DropReason: monitor.DropPolicyDenied, IP: v4("10.0.0.1", "10.0.0.2"), L4: tcp(40001, 5432, monitor.TCPFlagSYN), Source: web(), Destination: db(), TrafficDirection: flow.Ingress},
		{Verdict: flow.Forwarded, IP: v4("10.0.0.1", "10.0.0.2"), L4: flow.L4{Protocol: nodeplane.ProtoICMP, ICMPType: 8}, Source: web(), Destination: db()},
		{Verdict: flow.Dropped, DropReason: monitor.DropPolicyDenied, IP: v4("10.0.0.2", "10.0.0.1"), L4: flow.L4{Protocol: nodeplane.ProtoUDP, SourcePort: 5000, DestinationPort: 53}, Source: db(), Destination: web(), TrafficDirection: flow.Egress},
		{Verdict: flow.Forwarded, IP: v4("10.0.0.1", "10.0.0.2"), L4: tcp(40000, 80, monitor.TCPFlagFIN|monitor.TCPFlagACK), Source: web(), Destination: db(), IsReplyKnown: true},
	}
	for i := range fs {
		fs[i].Time = t0.Add(time.Duration(i) * time.Second)
		fs[i].Type = flow.L3L4
		switch {
		case fs[i].Verdict == flow.Dropped:
			fs[i].EventType = flow.EventType{Type: int32(monitor.MessageTypeDrop), SubType: int32(fs[i].DropReason)}
		case i == 0:
			fs[i].EventType = flow.EventType{Type: int32(monitor.MessageTypePolicyVerdict)}
		default:
			fs[i].EventType = flow.EventType{Type: int32(monitor.MessageTypeTrace), SubType: int32(monitor.FromEndpoint)}
			fs[i].TraceObservationPoint = flow.FromEndpoint
		}
		fs[i].NodeName = "node-a"
	}
	return fs
}

func newRing(capacity int, fs []flow.Flow) *ringObserver {
	r := &ringObserver{ring: flow.NewRing(capacity), node: "node-a", start: time.Now()}
	for i := range fs {
		r.ring.Write(&fs[i])
	}
	return r
}

// collect runs GetFlows and returns the source ports (ICMP: its type+1000)
// of the flows, in order, and the lost events.
func collect(t *testing.T, c observerpb.ObserverClient, req *observerpb.GetFlowsRequest) ([]uint32, []*flowpb.LostEvent, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.GetFlows(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	var (
		ports []uint32
		lost  []*flowpb.LostEvent
	)
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return ports, lost, nil
		}
		if err != nil {
			return ports, lost, err
		}
		if l := r.GetLostEvents(); l != nil {
			lost = append(lost, l)
			continue
		}
		ports = append(ports, flowKey(r.GetFlow()))
	}
}

func flowKey(f *flowpb.Flow) uint32 {
	l4 := f.GetL4()
	switch {
	case l4.GetTCP() != nil:
		return l4.GetTCP().GetSourcePort()
	case l4.GetUDP() != nil:
		return l4.GetUDP().GetSourcePort()
	case l4.GetICMPv4() != nil:
		return 1000 + l4.GetICMPv4().GetType()
	}
	return 0
}

func TestGetFlows(t *testing.T) {
	c, _, _ := startServer(t, newRing(16, testFlows()))
	ts := func(i int) *timestamppb.Timestamp { return timestamppb.New(t0.Add(time.Duration(i) * time.Second)) }
	dropped := &flowpb.FlowFilter{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}
	for _, tc := range []struct {
		name string
		req  *observerpb.GetFlowsRequest
		want []uint32
	}{
		{"all", &observerpb.GetFlowsRequest{}, []uint32{40000, 80, 40001, 1008, 5000, 40000}},
		{"last 2", &observerpb.GetFlowsRequest{Number: 2}, []uint32{5000, 40000}},
		{"first 2", &observerpb.GetFlowsRequest{Number: 2, First: true}, []uint32{40000, 80}},
		{"dropped", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{dropped}}, []uint32{40001, 5000}},
		{"last dropped", &observerpb.GetFlowsRequest{Number: 1, Whitelist: []*flowpb.FlowFilter{dropped}}, []uint32{5000}},
		{"not dropped", &observerpb.GetFlowsRequest{Blacklist: []*flowpb.FlowFilter{dropped}}, []uint32{40000, 80, 1008, 40000}},
		{"dropped OR icmp", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{dropped, {Protocol: []string{"icmp"}}}}, []uint32{40001, 1008, 5000}},
		{"dropped AND tcp", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{Verdict: dropped.Verdict, Protocol: []string{"tcp"}}}}, []uint32{40001}},
		{"from label app=db", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{SourceLabel: []string{"k8s:app=db"}}}}, []uint32{80, 5000}},
		{"to pod prod/db", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{DestinationPod: []string{"prod/db"}}}}, []uint32{40000, 40001, 1008, 40000}},
		{"reply", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{Reply: []bool{true}}}}, []uint32{80}},
		{"SYN without ACK filter matches SYN and SYN-ACK", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{TcpFlags: []*flowpb.TCPFlags{{SYN: true}}}}}, []uint32{40000, 80, 40001}},
		{"since 2s", &observerpb.GetFlowsRequest{Since: ts(2)}, []uint32{40001, 1008, 5000, 40000}},
		{"since 1s until 3s", &observerpb.GetFlowsRequest{Since: ts(1), Until: ts(3)}, []uint32{80, 40001, 1008}},
		{"until 1s", &observerpb.GetFlowsRequest{Until: ts(1)}, []uint32{40000, 80}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, lost, err := collect(t, c, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if len(lost) != 0 {
				t.Errorf("lost events %v", lost)
			}
			if !slicesEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func slicesEqual(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestGetFlowsResponse(t *testing.T) {
	fs := testFlows()
	c, _, _ := startServer(t, newRing(16, fs))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Number: 1, Whitelist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if r.GetNodeName() != "node-a" || !r.GetTime().AsTime().Equal(fs[4].Time) {
		t.Errorf("response node %q time %v", r.GetNodeName(), r.GetTime().AsTime())
	}
	if want := Proto(&fs[4]); !proto.Equal(r.GetFlow(), want) {
		t.Errorf("flow %v, want %v", r.GetFlow(), want)
	}
}

func TestGetFlowsFieldMask(t *testing.T) {
	c, _, _ := startServer(t, newRing(16, testFlows()))
	mask, err := fieldmaskpb.New(&flowpb.Flow{}, "verdict", "source.pod_name", "l4")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Number: 1, FieldMask: mask})
	if err != nil {
		t.Fatal(err)
	}
	r, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	want := &flowpb.Flow{
		Verdict: flowpb.Verdict_FORWARDED,
		Source:  &flowpb.Endpoint{PodName: "web-0"},
		L4: &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: 40000, DestinationPort: 80,
			Flags: &flowpb.TCPFlags{FIN: true, ACK: true}}}},
	}
	if !proto.Equal(r.GetFlow(), want) {
		t.Errorf("masked flow %v, want %v", r.GetFlow(), want)
	}

	_, err = c.GetFlows(ctx, &observerpb.GetFlowsRequest{FieldMask: &fieldmaskpb.FieldMask{Paths: []string{"source.nope"}}})
	if err == nil {
		_, _, err = collect(t, c, &observerpb.GetFlowsRequest{FieldMask: &fieldmaskpb.FieldMask{Paths: []string{"source.nope"}}})
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad mask: %v, want InvalidArgument", err)
	}
}

func TestGetFlowsInvalid(t *testing.T) {
	c, _, _ := startServer(t, newRing(16, testFlows()))
	for _, req := range []*observerpb.GetFlowsRequest{
		{First: true, Follow: true},
		{Whitelist: []*flowpb.FlowFilter{{DestinationFqdn: []string{"example.com"}}}},
		{Whitelist: []*flowpb.FlowFilter{{HttpStatusCode: []string{"99"}}}},                                               // refused by flow.Compile
		{Whitelist: []*flowpb.FlowFilter{{HttpMethod: []string{"GET"}, EventType: []*flowpb.EventTypeFilter{{Type: 1}}}}}, // as Hubble
		{Whitelist: []*flowpb.FlowFilter{{SourceIp: []string{"not-an-ip"}}}},                                              // refused by flow.Compile
		{Blacklist: []*flowpb.FlowFilter{{Protocol: []string{"gopher"}}}},
	} {
		_, _, err := collect(t, c, req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: %v, want InvalidArgument", req, err)
		}
	}
}

func TestGetFlowsFollow(t *testing.T) {
	fs := testFlows()
	obs := newRing(16, fs[:2])
	c, _, _ := startServer(t, obs)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Number: 1, Follow: true,
		Whitelist: []*flowpb.FlowFilter{{SourcePod: []string{"prod/web"}}}})
	if err != nil {
		t.Fatal(err)
	}
	next := func() uint32 {
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return flowKey(r.GetFlow())
	}
	if got := next(); got != 40000 { // the last matching past flow
		t.Fatalf("first followed flow %d, want 40000", got)
	}
	for i := 2; i < len(fs); i++ {
		obs.ring.Write(&fs[i])
	}
	for _, want := range []uint32{40001, 1008, 40000} { // 5000 is from db
		if got := next(); got != want {
			t.Fatalf("followed flow %d, want %d", got, want)
		}
	}
}

// TestGetFlowsSlowClient follows with a client that does not read while
// far more flows arrive than the ring and gRPC's buffers hold. The writer
// must never wait for it, and every flow written must reach the client
// either as a flow or in a HUBBLE_RING_BUFFER lost event's count.
func TestGetFlowsSlowClient(t *testing.T) {
	const total = 200_000
	obs := newRing(64, nil)
	c, _, _ := startServer(t, obs)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	st, err := c.GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	// Wait until the server follows (a follower starts at the ring's end)
	// by writing numbered markers (destination port 1) until one arrives.
	marker := testFlows()[0]
	marker.L4.DestinationPort = 1
	var (
		mu               sync.Mutex
		delivered, lost  uint64
		firstMarker      = -1
		gotMarker, stall = make(chan struct{}), make(chan struct{})
		recvErr          = make(chan error, 1)
	)
	go func() {
		for {
			r, err := st.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			mu.Lock()
			switch {
			case r.GetLostEvents() != nil:
				if s := r.GetLostEvents().GetSource(); s != flowpb.LostEventSource_HUBBLE_RING_BUFFER {
					t.Errorf("lost event source %v", s)
				}
				lost += r.GetLostEvents().GetNumEventsLost()
			case firstMarker < 0:
				if r.GetFlow().GetL4().GetTCP().GetDestinationPort() != 1 {
					t.Errorf("first flow followed is not a marker: %v", r.GetFlow())
				}
				firstMarker = int(flowKey(r.GetFlow()))
				close(gotMarker)
				mu.Unlock()
				<-stall // the slow client: stop reading
				mu.Lock()
			default:
				delivered++
			}
			mu.Unlock()
		}
	}()
	markers := 0
	for waiting := true; waiting; {
		marker.L4.SourcePort = uint16(markers)
		obs.ring.Write(&marker)
		markers++
		select {
		case <-gotMarker:
			waiting = false
		case <-time.After(10 * time.Millisecond):
		}
	}

	f := testFlows()[0]
	start := time.Now()
	for i := range total {
		f.L4.SourcePort = uint16(i%60000 + 1)
		obs.ring.Write(&f)
	}
	writeTime := time.Since(start)
	t.Logf("%d flows written in %v while the client stalled", total, writeTime)
	if writeTime > 20*time.Second {
		t.Errorf("writing took %v: the writer waited for the client", writeTime)
	}

	close(stall)
	// Markers after the first one received count as delivered or lost
	// like the rest.
	mu.Lock()
	want := uint64(total + markers - 1 - firstMarker)
	mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		d, l := delivered, lost
		mu.Unlock()
		if d+l >= want {
			if d+l != want {
				t.Errorf("delivered %d + lost %d = %d, want %d", d, l, d+l, want)
			}
			if l == 0 {
				t.Errorf("a stalled client lost nothing of %d flows through a ring of 64", total)
			}
			t.Logf("delivered %d, reported lost %d", d, l)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30s: delivered %d + lost %d < %d", d, l, want)
		}
		select {
		case err := <-recvErr:
			t.Fatalf("Recv: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestServerStatus(t *testing.T) {
	fs := testFlows()
	now := time.Now()
	for i := range fs {
		fs[i].Time = now.Add(-time.Duration(len(fs)-i) * time.Second) // within the last minute
	}
	c, conn, _ := startServer(t, newRing(16, fs))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: ServiceName})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", hc, err)
	}

	st, err := c.ServerStatus(ctx, &observerpb.ServerStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetNumFlows() != 6 || st.GetMaxFlows() != 16 || st.GetSeenFlows() != 6 ||
		st.GetUptimeNs() == 0 || st.GetVersion() != "nodeplane-test" ||
		st.GetNumConnectedNodes().GetValue() != 1 || st.GetNumUnavailableNodes() == nil {
		t.Errorf("status %v", st)
	}
	if want := 6.0 / 60; st.GetFlowsRate() < want*0.99 || st.GetFlowsRate() > want*1.01 {
		t.Errorf("flows rate %v, want %v (6 flows in the last minute)", st.GetFlowsRate(), want)
	}

	nodes, err := c.GetNodes(ctx, &observerpb.GetNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.GetNodes()) != 1 {
		t.Fatalf("nodes %v", nodes)
	}
	n := nodes.GetNodes()[0]
	if n.GetName() != "node-a" || n.GetState() != relaypb.NodeState_NODE_CONNECTED || n.GetNumFlows() != 6 ||
		n.GetMaxFlows() != 16 || n.GetSeenFlows() != 6 || n.GetAddress() != "127.0.0.1" {
		t.Errorf("node %v", n)
	}

	_, err = c.GetAgentEvents(ctx, &observerpb.GetAgentEventsRequest{})
	if err == nil {
		_, err = mustRecvAgent(ctx, c)
	}
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("GetAgentEvents: %v, want Unimplemented", err)
	}
}

func mustRecvAgent(ctx context.Context, c observerpb.ObserverClient) (*observerpb.GetAgentEventsResponse, error) {
	st, err := c.GetAgentEvents(ctx, &observerpb.GetAgentEventsRequest{})
	if err != nil {
		return nil, err
	}
	return st.Recv()
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Config{}); err == nil || !strings.Contains(err.Error(), "Flows") {
		t.Errorf("New without Flows: %v", err)
	}
	s, err := New(Config{Flows: newRing(1, nil)})
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.NodeName == "" || s.cfg.Version != "nodeplane" {
		t.Errorf("defaults: %+v", s.cfg)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := s.Serve(l); err == nil {
		t.Error("Serve after Close succeeded")
	}
}
