package hubble

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/flow"
)

var (
	t0      = time.Date(2026, 12, 7, 1, 2, 3, 456789000, time.UTC)
	webLbls = []string{"k8s:app=web", "k8s:io.kubernetes.pod.namespace=prod"}
	dbLbls  = []string{"k8s:app=db", "k8s:io.kubernetes.pod.namespace=prod"}
)

func web() flow.Endpoint {
	return flow.Endpoint{ID: 11, Identity: 1001, Namespace: "prod", PodName: "web-0", Labels: webLbls}
}

func db() flow.Endpoint {
	return flow.Endpoint{ID: 12, Identity: 1002, Namespace: "prod", PodName: "db-0", Labels: dbLbls}
}

func TestProto(t *testing.T) {
	pbWeb := &flowpb.Endpoint{ID: 11, Identity: 1001, Namespace: "prod", PodName: "web-0", Labels: webLbls}
	pbDB := &flowpb.Endpoint{ID: 12, Identity: 1002, Namespace: "prod", PodName: "db-0", Labels: dbLbls}
	v4 := flow.IP{Source: netip.MustParseAddr("10.0.0.1"), Destination: netip.MustParseAddr("10.0.0.2")}
	pbV4 := &flowpb.IP{Source: "10.0.0.1", Destination: "10.0.0.2", IpVersion: flowpb.IPVersion_IPv4}

	for _, tc := range []struct {
		name string
		in   flow.Flow
		want *flowpb.Flow
	}{
		{
			name: "policy-denied TCP SYN at the receiver's ingress",
			in: flow.Flow{
				Time: t0, Verdict: flow.Dropped, DropReason: monitor.DropPolicyDenied,
				EventType: flow.EventType{Type: 1, SubType: 133}, Type: flow.L3L4, IP: v4,
				L4:     flow.L4{Protocol: nodeplane.ProtoTCP, SourcePort: 40000, DestinationPort: 5432, TCPFlags: monitor.TCPFlagSYN},
				Source: web(), Destination: db(), NodeName: "node-a",
				TrafficDirection: flow.Ingress, IsReply: false, IsReplyKnown: true,
				TraceObservationPoint: flow.FromEndpoint,
				Interface:             flow.Interface{Index: 7, Name: "lxc12"},
			},
			want: &flowpb.Flow{
				Time: timestamppb.New(t0), Verdict: flowpb.Verdict_DROPPED,
				DropReason: 133, DropReasonDesc: flowpb.DropReason_POLICY_DENIED,
				EventType: &flowpb.CiliumEventType{Type: 1, SubType: 133}, Type: flowpb.FlowType_L3_L4,
				IP: pbV4,
				L4: &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{
					SourcePort: 40000, DestinationPort: 5432, Flags: &flowpb.TCPFlags{SYN: true}}}},
				Source: pbWeb, Destination: pbDB, NodeName: "node-a",
				TrafficDirection: flowpb.TrafficDirection_INGRESS, IsReply: wrapperspb.Bool(false),
				TraceObservationPoint: flowpb.TraceObservationPoint_FROM_ENDPOINT,
				Interface:             &flowpb.NetworkInterface{Index: 7, Name: "lxc12"},
				Summary:               "TCP Flags: SYN",
			},
		},
		{
			name: "allowed policy verdict, L3-L4 match, egress",
			in: flow.Flow{
				Time: t0, Verdict: flow.Forwarded, EventType: flow.EventType{Type: 5}, Type: flow.L3L4, IP: v4,
				L4:     flow.L4{Protocol: nodeplane.ProtoTCP, SourcePort: 40001, DestinationPort: 80, TCPFlags: monitor.TCPFlagSYN},
				Source: web(), Destination: db(), TrafficDirection: flow.Egress,
				PolicyMatchType: monitor.MatchL3L4,
			},
			want: &flowpb.Flow{
				Time: timestamppb.New(t0), Verdict: flowpb.Verdict_FORWARDED,
				EventType: &flowpb.CiliumEventType{Type: 5}, Type: flowpb.FlowType_L3_L4, IP: pbV4,
				L4: &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{
					SourcePort: 40001, DestinationPort: 80, Flags: &flowpb.TCPFlags{SYN: true}}}},
				Source: pbWeb, Destination: pbDB, TrafficDirection: flowpb.TrafficDirection_EGRESS,
				PolicyMatchType: 2, Summary: "TCP Flags: SYN",
			},
		},
		{
			name: "forwarded TCP reply with every flag, to-endpoint trace, service",
			in: flow.Flow{
				Time: t0, Verdict: flow.Forwarded, EventType: flow.EventType{Type: 4, SubType: 0}, Type: flow.L3L4,
				IP:     flow.IP{Source: v4.Destination, Destination: v4.Source},
				L4:     flow.L4{Protocol: nodeplane.ProtoTCP, SourcePort: 80, DestinationPort: 40001, TCPFlags: 0xff},
				Source: db(), Destination: web(), TrafficDirection: flow.Egress,
				IsReply: true, IsReplyKnown: true, TraceObservationPoint: flow.ToEndpoint,
				TraceReason:        flow.TraceReply,
				DestinationService: flow.Service{Name: "web", Namespace: "prod"},
			},
			want: &flowpb.Flow{
				Time: timestamppb.New(t0), Verdict: flowpb.Verdict_FORWARDED,
				EventType: &flowpb.CiliumEventType{Type: 4}, Type: flowpb.FlowType_L3_L4,
				IP: &flowpb.IP{Source: "10.0.0.2", Destination: "10.0.0.1", IpVersion: flowpb.IPVersion_IPv4},
				L4: &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{
					SourcePort: 80, DestinationPort: 40001, Flags: &flowpb.TCPFlags{
						FIN: true, SYN: true, RST: true, PSH: true, ACK: true, URG: true, ECE: true, CWR: true}}}},
				Source: pbDB, Destination: pbWeb, TrafficDirection: flowpb.TrafficDirection_EGRESS,
				IsReply: wrapperspb.Bool(true), Reply: true,
				TraceObservationPoint: flowpb.TraceObservationPoint_TO_ENDPOINT,
				TraceReason:           flowpb.TraceReason_REPLY,
				DestinationService:    &flowpb.Service{Name: "web", Namespace: "prod"},
				Summary:               "TCP Flags: SYN, ACK, RST, FIN, PSH, URG, ECE, CWR",
			},
		},
		{
			name: "ICMPv4 echo request, reply flag unknown, world destination",
			in: flow.Flow{
				Time: t0, Verdict: flow.Forwarded, Type: flow.L3L4,
				IP:     flow.IP{Source: v4.Source, Destination: netip.MustParseAddr("1.1.1.1")},
				L4:     flow.L4{Protocol: nodeplane.ProtoICMP, ICMPType: 8},
				Source: web(), Destination: flow.Endpoint{Identity: 2, Labels: []string{"reserved:world"}},
			},
			want: &flowpb.Flow{
				Time: timestamppb.New(t0), Verdict: flowpb.Verdict_FORWARDED,
				EventType: &flowpb.CiliumEventType{}, Type: flowpb.FlowType_L3_L4,
				IP:     &flowpb.IP{Source: "10.0.0.1", Destination: "1.1.1.1", IpVersion: flowpb.IPVersion_IPv4},
				L4:     &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv4{ICMPv4: &flowpb.ICMPv4{Type: 8}}},
				Source: pbWeb, Destination: &flowpb.Endpoint{Identity: 2, Labels: []string{"reserved:world"}},
				Summary: "ICMPv4 EchoRequest",
			},
		},
		{
			name: "ICMPv6 port unreachable and UDP-less IPv6",
			in: flow.Flow{
				Time: t0, Verdict: flow.Forwarded, Type: flow.L3L4,
				IP: flow.IP{Source: netip.MustParseAddr("fd00::1"), Destination: netip.MustParseAddr("fd00::2")},
				L4: flow.L4{Protocol: nodeplane.ProtoICMPv6, ICMPType: 1, ICMPCode: 4},
			},
			want: &flowpb.Flow{
				Time: timestamppb.New(t0), Verdict: flowpb.Verdict_FORWARDED,
				EventType: &flowpb.CiliumEventType{}, Type: flowpb.FlowType_L3_L4,
				IP:     &flowpb.IP{Source: "fd00::1", Destination: "fd00::2", IpVersion: flowpb.IPVersion_IPv6},
				L4:     &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv6{ICMPv6: &flowpb.ICMPv6{Type: 1, Code: 4}}},
				Source: &flowpb.Endpoint{}, Destination: &flowpb.Endpoint{},
				Summary: "ICMPv6 DestinationUnreachable(PortUnreachable)",
			},
		},
		{
			name: "UDP",
			in: flow.Flow{Time: t0, Verdict: flow.Forwarded, IP: v4,
				L4: flow.L4{Protocol: nodeplane.ProtoUDP, SourcePort: 5353, DestinationPort: 53}},
			want: &flowpb.Flow{
				Time: timestamppb.New(t0), Verdict: flowpb.Verdict_FORWARDED, EventType: &flowpb.CiliumEventType{},
				IP: pbV4, L4: &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: 5353, DestinationPort: 53}}},
				Source: &flowpb.Endpoint{}, Destination: &flowpb.Endpoint{}, Summary: "UDP",
			},
		},
		{
			name: "drop without a parsed packet: no IP, no L4",
			in: flow.Flow{Time: t0, Verdict: flow.Dropped, DropReason: monitor.DropUnknownL3,
				EventType: flow.EventType{Type: 1, SubType: 139}},
			want: &flowpb.Flow{
				Time: timestamppb.New(t0), Verdict: flowpb.Verdict_DROPPED, DropReason: 139,
				DropReasonDesc: flowpb.DropReason_UNSUPPORTED_L3_PROTOCOL,
				EventType:      &flowpb.CiliumEventType{Type: 1, SubType: 139},
				Source:         &flowpb.Endpoint{}, Destination: &flowpb.Endpoint{},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Proto(&tc.in)
			if !proto.Equal(got, tc.want) {
				t.Errorf("Proto:\n got %v\nwant %v", protojson.Format(got), protojson.Format(tc.want))
			}
		})
	}
}

// TestProtoDropReasonNames checks that every drop reason the datapath uses
// has the name in Hubble's enum that monitor.DropReason.String gives it, so
// drop_reason_desc and nodeplane's own output agree.
func TestProtoDropReasonNames(t *testing.T) {
	for _, r := range []monitor.DropReason{
		monitor.DropInvalidSourceIP, monitor.DropPolicyDenied, monitor.DropInvalidPacket,
		monitor.DropCTInvalidHeader, monitor.DropCTUnknownProto, monitor.DropUnknownL3,
		monitor.DropUnknownTarget, monitor.DropCTCreateFailed, monitor.DropInvalidExtHeader,
		monitor.DropFragmentNotFound, monitor.DropPolicyDeny, monitor.DropEndpointNotReady,
		monitor.DropEDTHorizon,
		monitor.DropFragNoSupport, monitor.DropNoService, monitor.DropNATNoMapping,
		monitor.DropWriteError, monitor.DropNoTunnelKey, monitor.DropInvalidIdentity, monitor.DropUnknownSender,
	} {
		got := Proto(&flow.Flow{DropReason: r}).GetDropReasonDesc()
		if got.String() != r.String() {
			t.Errorf("reason %d: Hubble names it %s, monitor %s", r, got, r)
		}
	}
}

func TestSummaryICMP(t *testing.T) {
	for _, tc := range []struct {
		proto     nodeplane.Protocol
		typ, code uint8
		want      string
	}{
		{nodeplane.ProtoICMP, 0, 0, "ICMPv4 EchoReply"},
		{nodeplane.ProtoICMP, 3, 3, "ICMPv4 DestinationUnreachable(Port)"},
		{nodeplane.ProtoICMP, 3, 99, "ICMPv4 DestinationUnreachable(Code: 99)"},
		{nodeplane.ProtoICMP, 8, 1, "ICMPv4 EchoRequest(Code: 1)"},
		{nodeplane.ProtoICMP, 42, 7, "ICMPv4 42(7)"},
		{nodeplane.ProtoICMPv6, 128, 0, "ICMPv6 EchoRequest"},
		{nodeplane.ProtoICMPv6, 135, 0, "ICMPv6 NeighborSolicitation"},
		{nodeplane.ProtoICMPv6, 3, 0, "ICMPv6 TimeExceeded(HopLimitExceeded)"},
	} {
		f := flow.Flow{L4: flow.L4{Protocol: tc.proto, ICMPType: tc.typ, ICMPCode: tc.code}}
		if got := Summary(&f); got != tc.want {
			t.Errorf("%d/%d/%d: %q, want %q", tc.proto, tc.typ, tc.code, got, tc.want)
		}
	}
}

func TestFilter(t *testing.T) {
	in := &flowpb.FlowFilter{
		SourceIp: []string{"10.0.0.0/8"}, SourcePod: []string{"prod/web"}, SourceLabel: []string{"k8s:app=web"},
		SourceService: []string{"prod/web"}, SourceIdentity: []uint32{1001},
		DestinationIp: []string{"10.0.0.2"}, DestinationPod: []string{"prod/db-0"}, DestinationLabel: []string{"app=db"},
		DestinationService: []string{"prod/db"}, DestinationIdentity: []uint32{1002},
		TrafficDirection: []flowpb.TrafficDirection{flowpb.TrafficDirection_INGRESS},
		Verdict:          []flowpb.Verdict{flowpb.Verdict_DROPPED, flowpb.Verdict_FORWARDED},
		DropReasonDesc:   []flowpb.DropReason{flowpb.DropReason_POLICY_DENIED},
		Interface:        []*flowpb.NetworkInterface{{Index: 7, Name: "lxc12"}},
		EventType:        []*flowpb.EventTypeFilter{{Type: 1}, {Type: 4, MatchSubType: true, SubType: 3}},
		Protocol:         []string{"tcp"}, SourcePort: []string{"40000"}, DestinationPort: []string{"5432"},
		Reply:     []bool{false},
		TcpFlags:  []*flowpb.TCPFlags{{SYN: true}, {SYN: true, ACK: true}, {FIN: true, RST: true, PSH: true, URG: true, ECE: true, CWR: true}},
		NodeName:  []string{"node-*"},
		IpVersion: []flowpb.IPVersion{flowpb.IPVersion_IPv4},
	}
	want := flow.Filter{
		SourceIP: []string{"10.0.0.0/8"}, SourcePod: []string{"prod/web"}, SourceLabel: []string{"k8s:app=web"},
		SourceService: []string{"prod/web"}, SourceIdentity: []uint32{1001},
		DestinationIP: []string{"10.0.0.2"}, DestinationPod: []string{"prod/db-0"}, DestinationLabel: []string{"app=db"},
		DestinationService: []string{"prod/db"}, DestinationIdentity: []uint32{1002},
		TrafficDirection: []flow.TrafficDirection{flow.Ingress},
		Verdict:          []flow.Verdict{flow.Dropped, flow.Forwarded},
		DropReasonDesc:   []monitor.DropReason{monitor.DropPolicyDenied},
		Interface:        []flow.Interface{{Index: 7, Name: "lxc12"}},
		EventType:        []flow.EventTypeFilter{{Type: 1}, {Type: 4, MatchSubType: true, SubType: 3}},
		Protocol:         []string{"tcp"}, SourcePort: []string{"40000"}, DestinationPort: []string{"5432"},
		Reply: []bool{false},
		TCPFlags: []monitor.TCPFlags{monitor.TCPFlagSYN, monitor.TCPFlagSYN | monitor.TCPFlagACK,
			monitor.TCPFlagFIN | monitor.TCPFlagRST | monitor.TCPFlagPSH | monitor.TCPFlagURG | monitor.TCPFlagECE | monitor.TCPFlagCWR},
		NodeName:  []string{"node-*"},
		IPVersion: []flow.IPVersion{flow.IPv4},
	}
	var got flow.Filter
	if err := filter(in, &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Filter:\n got %+v\nwant %+v", got, want)
	}
}

// TestFilterCoversEveryField sets each field of Hubble's FlowFilter in turn
// and requires the conversion to either carry it into flow.Filter or
// refuse it by name, so that a field a newer Cilium adds cannot be dropped
// silently (which would widen an allow-list filter to everything).
func TestFilterCoversEveryField(t *testing.T) {
	fields := (&flowpb.FlowFilter{}).ProtoReflect().Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		t.Run(string(fd.Name()), func(t *testing.T) {
			ff := &flowpb.FlowFilter{}
			setSomething(ff.ProtoReflect(), fd)
			var out flow.Filter
			err := filter(ff, &out)
			switch {
			case err != nil:
				if !strings.Contains(err.Error(), string(fd.Name())) {
					t.Errorf("error %q does not name the field", err)
				}
			case reflect.DeepEqual(out, flow.Filter{}):
				t.Errorf("field %s was neither converted nor refused", fd.Name())
			}
		})
	}
}

// setSomething gives fd a non-default value in m: one element for a list,
// a nested field set for a message.
func setSomething(m protoreflect.Message, fd protoreflect.FieldDescriptor) {
	elem := func() protoreflect.Value {
		switch fd.Kind() {
		case protoreflect.StringKind:
			return protoreflect.ValueOfString("10.0.0.1")
		case protoreflect.BoolKind:
			return protoreflect.ValueOfBool(true)
		case protoreflect.Uint32Kind:
			return protoreflect.ValueOfUint32(1)
		case protoreflect.Uint64Kind:
			return protoreflect.ValueOfUint64(1)
		case protoreflect.EnumKind:
			return protoreflect.ValueOfEnum(1)
		case protoreflect.MessageKind:
			sub := m.NewField(fd)
			if fd.IsList() {
				sub = protoreflect.ValueOfMessage(sub.List().NewElement().Message())
			}
			msg := sub.Message()
			subFields := msg.Descriptor().Fields()
			// Set the first field that has a value; for TCPFlags that is FIN.
			sf := subFields.Get(0)
			if sf.IsList() {
				l := msg.Mutable(sf).List()
				l.Append(protoreflect.ValueOfString("x"))
			} else if sf.Kind() == protoreflect.BoolKind {
				msg.Set(sf, protoreflect.ValueOfBool(true))
			} else if sf.Kind() == protoreflect.StringKind {
				msg.Set(sf, protoreflect.ValueOfString("x"))
			} else if sf.Kind() == protoreflect.Int32Kind {
				msg.Set(sf, protoreflect.ValueOfInt32(1))
			} else if sf.Kind() == protoreflect.Uint32Kind {
				msg.Set(sf, protoreflect.ValueOfUint32(1))
			}
			return protoreflect.ValueOfMessage(msg)
		}
		panic("unhandled kind " + fd.Kind().String())
	}
	if fd.IsList() {
		m.Mutable(fd).List().Append(elem())
		return
	}
	m.Set(fd, elem())
}

func TestFilterRefusesNS(t *testing.T) {
	var out flow.Filter
	err := filter(&flowpb.FlowFilter{TcpFlags: []*flowpb.TCPFlags{{NS: true}}}, &out)
	if err == nil || !strings.Contains(err.Error(), "tcp_flags.NS") {
		t.Fatalf("got %v, want an error naming tcp_flags.NS", err)
	}
}

func TestRequest(t *testing.T) {
	since, until := t0.Add(-time.Hour), t0
	r, err := request(&observerpb.GetFlowsRequest{
		Number: 20, Follow: true, Since: timestamppb.New(since), Until: timestamppb.New(until),
		Whitelist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}, {SourcePod: []string{"prod/"}}},
		Blacklist: []*flowpb.FlowFilter{{Protocol: []string{"udp"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if r.Number != 20 || !r.Follow || r.First || !r.Since.Equal(since) || !r.Until.Equal(until) {
		t.Errorf("request %+v", r)
	}
	if len(r.Allow) != 2 || len(r.Deny) != 1 || r.Allow[0].Verdict[0] != flow.Dropped ||
		r.Allow[1].SourcePod[0] != "prod/" || r.Deny[0].Protocol[0] != "udp" {
		t.Errorf("lists: allow %+v deny %+v", r.Allow, r.Deny)
	}

	for _, bad := range []*observerpb.GetFlowsRequest{
		{First: true, Follow: true},
		{Since: &timestamppb.Timestamp{Nanos: -1}},
		{Until: &timestamppb.Timestamp{Seconds: -1 << 62}},
		{Whitelist: []*flowpb.FlowFilter{{SourceFqdn: []string{"example.com"}}}},
		{Blacklist: []*flowpb.FlowFilter{{DropReasonDesc: []flowpb.DropReason{1000}}}},
	} {
		if _, err := request(bad); err == nil {
			t.Errorf("request(%v) succeeded", bad)
		}
	}
}

// TestProtoCoversEveryField changes each field of flow.Flow in turn (the
// leaves of its nested structs) and requires Proto's output to change, so
// that a field flow adds later cannot be left out of the protobuf
// silently.
func TestProtoCoversEveryField(t *testing.T) {
	base := func(proto nodeplane.Protocol) flow.Flow {
		return flow.Flow{L4: flow.L4{Protocol: proto}, IsReplyKnown: true}
	}
	var leaves []string
	var visit func(prefix string, typ reflect.Type)
	visit = func(prefix string, typ reflect.Type) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			name := prefix + f.Name
			switch {
			case f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeOf(time.Time{}) && f.Type != reflect.TypeOf(netip.Addr{}):
				visit(name+".", f.Type)
			case f.Type.Kind() == reflect.Pointer && f.Type.Elem().Kind() == reflect.Struct:
				visit(name+".", f.Type.Elem())
			default:
				leaves = append(leaves, name)
			}
		}
	}
	visit("", reflect.TypeOf(flow.Flow{}))

	for _, path := range leaves {
		t.Run(path, func(t *testing.T) {
			p := nodeplane.ProtoTCP
			if strings.Contains(path, "ICMP") {
				p = nodeplane.ProtoICMP
			}
			zero, changed := base(p), base(p)
			if strings.HasPrefix(path, "L7.") {
				zero.Type, changed.Type = flow.L7, flow.L7
				// The record's presence alone must not count as the change.
				zero.L7 = flow.Layer7{HTTP: &flow.HTTP{}, DNS: &flow.DNS{}}
				changed.L7 = flow.Layer7{HTTP: &flow.HTTP{}, DNS: &flow.DNS{}}
				if strings.HasPrefix(path, "L7.HTTP") {
					zero.L7.DNS, changed.L7.DNS = nil, nil
				} else {
					zero.L7.HTTP, changed.L7.HTTP = nil, nil
				}
			}
			fv := reflect.ValueOf(&changed).Elem().FieldByName(strings.Split(path, ".")[0])
			for _, name := range strings.Split(path, ".")[1:] {
				if fv.Kind() == reflect.Pointer {
					fv = fv.Elem()
				}
				fv = fv.FieldByName(name)
			}
			setNonZero(t, fv)
			if proto.Equal(Proto(&zero), Proto(&changed)) {
				t.Errorf("changing %s does not change the protobuf", path)
			}
		})
	}
}

func setNonZero(t *testing.T, v reflect.Value) {
	t.Helper()
	switch v.Interface().(type) {
	case time.Time:
		v.Set(reflect.ValueOf(t0))
		return
	case netip.Addr:
		v.Set(reflect.ValueOf(netip.MustParseAddr("10.0.0.9")))
		return
	}
	switch v.Kind() {
	case reflect.Bool:
		v.SetBool(!v.Bool())
	case reflect.String:
		v.SetString("x")
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(3)
	case reflect.Int32, reflect.Int64, reflect.Int:
		v.SetInt(3)
	case reflect.Slice:
		v.Set(reflect.Append(reflect.MakeSlice(v.Type(), 0, 1), reflect.New(v.Type().Elem()).Elem()))
		setNonZero(t, v.Index(0))
	case reflect.Struct:
		for i := range v.NumField() {
			setNonZero(t, v.Field(i))
		}
	default:
		t.Fatalf("no non-zero value for %s", v.Type())
	}
}
