package hubble

import (
	"fmt"
	"math"
	"net/netip"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/flow"
)

// This file is the one place where nodeplane's flow types and Hubble's
// protobufs meet: flows out, filters and requests in.

// Proto returns f as Hubble's protobuf, with every field `hubble observe`
// shows. flow.Flow carries flow.proto's numbers for its enums, so most
// fields are casts. The result shares nothing with f except the label
// strings, which are immutable.
func Proto(f *flow.Flow) *flowpb.Flow {
	pb := &flowpb.Flow{
		Time:                  timestamppb.New(f.Time),
		Verdict:               flowpb.Verdict(f.Verdict),
		DropReason:            uint32(f.DropReason),
		DropReasonDesc:        flowpb.DropReason(f.DropReason),
		Type:                  flowpb.FlowType(f.Type),
		NodeName:              f.NodeName,
		Source:                endpoint(&f.Source),
		Destination:           endpoint(&f.Destination),
		TrafficDirection:      flowpb.TrafficDirection(f.TrafficDirection),
		PolicyMatchType:       uint32(f.PolicyMatchType),
		TraceObservationPoint: flowpb.TraceObservationPoint(f.TraceObservationPoint),
		TraceReason:           flowpb.TraceReason(f.TraceReason),
		ProxyPort:             uint32(f.ProxyPort),
		Summary:               Summary(f),
		EventType:             &flowpb.CiliumEventType{Type: f.EventType.Type, SubType: f.EventType.SubType},
	}
	if f.IP.Source.IsValid() || f.IP.Destination.IsValid() {
		pb.IP = &flowpb.IP{
			Source:      addrString(f.IP.Source),
			Destination: addrString(f.IP.Destination),
			IpVersion:   flowpb.IPVersion(f.IP.Version()),
		}
	}
	pb.L4 = layer4(&f.L4)
	if f.IsReplyKnown {
		pb.IsReply = wrapperspb.Bool(f.IsReply)
		pb.Reply = f.IsReply // deprecated twin of is_reply, still filled by Hubble
	}
	if f.Interface != (flow.Interface{}) {
		pb.Interface = &flowpb.NetworkInterface{Index: f.Interface.Index, Name: f.Interface.Name}
	}
	if s := f.DestinationService; s != (flow.Service{}) {
		pb.DestinationService = &flowpb.Service{Name: s.Name, Namespace: s.Namespace}
	}
	if f.Type == flow.L7 {
		pb.L7 = layer7(&f.L7)
	}
	return pb
}

func layer7(l *flow.Layer7) *flowpb.Layer7 {
	pb := &flowpb.Layer7{Type: flowpb.L7FlowType(l.Type), LatencyNs: uint64(l.Latency)}
	if h := l.HTTP; h != nil {
		r := &flowpb.HTTP{Code: h.Code, Method: h.Method, Url: h.URL, Protocol: h.Protocol}
		for _, hd := range h.Headers {
			r.Headers = append(r.Headers, &flowpb.HTTPHeader{Key: hd.Key, Value: hd.Value})
		}
		pb.Record = &flowpb.Layer7_Http{Http: r}
	}
	if d := l.DNS; d != nil {
		r := &flowpb.DNS{
			Query: d.Query, Ttl: d.TTL, Cnames: d.CNAMEs, ObservationSource: d.ObservationSource,
			Rcode: d.Rcode, Qtypes: d.Qtypes, Rrtypes: d.RRTypes,
		}
		for _, ip := range d.IPs {
			r.Ips = append(r.Ips, ip.String())
		}
		pb.Record = &flowpb.Layer7_Dns{Dns: r}
	}
	return pb
}

func endpoint(e *flow.Endpoint) *flowpb.Endpoint {
	return &flowpb.Endpoint{
		ID:        e.ID,
		Identity:  e.Identity,
		Namespace: e.Namespace,
		PodName:   e.PodName,
		Labels:    e.Labels,
	}
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func layer4(l *flow.L4) *flowpb.Layer4 {
	switch l.Protocol {
	case nodeplane.ProtoTCP:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{
			SourcePort: uint32(l.SourcePort), DestinationPort: uint32(l.DestinationPort),
			Flags: tcpFlags(l.TCPFlags),
		}}}
	case nodeplane.ProtoUDP:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{
			SourcePort: uint32(l.SourcePort), DestinationPort: uint32(l.DestinationPort),
		}}}
	case nodeplane.ProtoSCTP:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_SCTP{SCTP: &flowpb.SCTP{
			SourcePort: uint32(l.SourcePort), DestinationPort: uint32(l.DestinationPort),
		}}}
	case nodeplane.ProtoICMP:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv4{ICMPv4: &flowpb.ICMPv4{
			Type: uint32(l.ICMPType), Code: uint32(l.ICMPCode),
		}}}
	case nodeplane.ProtoICMPv6:
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv6{ICMPv6: &flowpb.ICMPv6{
			Type: uint32(l.ICMPType), Code: uint32(l.ICMPCode),
		}}}
	}
	return nil
}

// tcpFlags returns nil without flags, as Hubble leaves flags unset for a
// TCP header with none.
func tcpFlags(f monitor.TCPFlags) *flowpb.TCPFlags {
	if f == 0 {
		return nil
	}
	return &flowpb.TCPFlags{
		FIN: f&monitor.TCPFlagFIN != 0, SYN: f&monitor.TCPFlagSYN != 0,
		RST: f&monitor.TCPFlagRST != 0, PSH: f&monitor.TCPFlagPSH != 0,
		ACK: f&monitor.TCPFlagACK != 0, URG: f&monitor.TCPFlagURG != 0,
		ECE: f&monitor.TCPFlagECE != 0, CWR: f&monitor.TCPFlagCWR != 0,
	}
}

// lostEvent returns l as Hubble's LostEvent.
func lostEvent(l *flow.LostEvent) *flowpb.LostEvent {
	return &flowpb.LostEvent{
		Source:        flowpb.LostEventSource(l.Source),
		NumEventsLost: l.NumEventsLost,
		First:         timestamppb.New(l.Time),
		Last:          timestamppb.New(l.Time),
	}
}

// request converts a GetFlows request into flow's. It fails on a request
// Hubble rejects (first with follow, an invalid time) and on a filter that
// uses a field nodeplane's flows never carry (see [Filters]).
func request(req *observerpb.GetFlowsRequest) (flow.Request, error) {
	if req.GetFirst() && req.GetFollow() {
		return flow.Request{}, fmt.Errorf("first cannot be specified with follow")
	}
	r := flow.Request{Number: req.GetNumber(), First: req.GetFirst(), Follow: req.GetFollow()}
	if ts := req.GetSince(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			return flow.Request{}, fmt.Errorf("since: %w", err)
		}
		r.Since = ts.AsTime()
	}
	if ts := req.GetUntil(); ts != nil {
		if err := ts.CheckValid(); err != nil {
			return flow.Request{}, fmt.Errorf("until: %w", err)
		}
		r.Until = ts.AsTime()
	}
	var err error
	if r.Allow, err = Filters(req.GetWhitelist()); err != nil {
		return flow.Request{}, fmt.Errorf("whitelist: %w", err)
	}
	if r.Deny, err = Filters(req.GetBlacklist()); err != nil {
		return flow.Request{}, fmt.Errorf("blacklist: %w", err)
	}
	return r, nil
}

// Filters converts Hubble filters one to one, each into the flow.Filter
// with the same fields. A field that nodeplane's flows never carry (FQDNs,
// workloads, cluster names, node labels, trace IDs,
// encryption, translated source addresses, UUIDs, CEL expressions; the TCP
// NS flag) is an error naming it, not ignored: ignoring a field would
// widen the filter, and a filter that can never match is better stated
// than silently served empty.
func Filters(in []*flowpb.FlowFilter) ([]flow.Filter, error) {
	if len(in) == 0 {
		return nil, nil
	}
	out := make([]flow.Filter, len(in))
	for i, ff := range in {
		if err := filter(ff, &out[i]); err != nil {
			return nil, fmt.Errorf("filter %d: %w", i, err)
		}
	}
	return out, nil
}

// filter converts one Hubble FlowFilter into out, field by field.
func filter(ff *flowpb.FlowFilter, out *flow.Filter) error {
	if name := unsupportedField(ff); name != "" {
		return fmt.Errorf("field %s: nodeplane flows do not carry it", name)
	}
	*out = flow.Filter{
		SourceIP:            ff.GetSourceIp(),
		SourcePod:           ff.GetSourcePod(),
		SourceLabel:         ff.GetSourceLabel(),
		SourceService:       ff.GetSourceService(),
		SourceIdentity:      ff.GetSourceIdentity(),
		DestinationIP:       ff.GetDestinationIp(),
		DestinationPod:      ff.GetDestinationPod(),
		DestinationLabel:    ff.GetDestinationLabel(),
		DestinationService:  ff.GetDestinationService(),
		DestinationIdentity: ff.GetDestinationIdentity(),
		Protocol:            ff.GetProtocol(),
		SourcePort:          ff.GetSourcePort(),
		DestinationPort:     ff.GetDestinationPort(),
		Reply:               ff.GetReply(),
		NodeName:            ff.GetNodeName(),
		HTTPStatusCode:      ff.GetHttpStatusCode(),
		HTTPMethod:          ff.GetHttpMethod(),
		HTTPPath:            ff.GetHttpPath(),
		HTTPURL:             ff.GetHttpUrl(),
		DNSQuery:            ff.GetDnsQuery(),
	}
	for _, h := range ff.GetHttpHeader() {
		out.HTTPHeader = append(out.HTTPHeader, flow.HTTPHeader{Key: h.GetKey(), Value: h.GetValue()})
	}
	for _, d := range ff.GetTrafficDirection() {
		out.TrafficDirection = append(out.TrafficDirection, flow.TrafficDirection(d))
	}
	for _, v := range ff.GetVerdict() {
		out.Verdict = append(out.Verdict, flow.Verdict(v))
	}
	for _, r := range ff.GetDropReasonDesc() {
		if r < 0 || r > math.MaxUint8 {
			return fmt.Errorf("field drop_reason_desc: %v (%d) is not a datapath drop reason", r, int32(r))
		}
		out.DropReasonDesc = append(out.DropReasonDesc, monitor.DropReason(r))
	}
	for _, i := range ff.GetInterface() {
		out.Interface = append(out.Interface, flow.Interface{Index: i.GetIndex(), Name: i.GetName()})
	}
	for _, t := range ff.GetEventType() {
		out.EventType = append(out.EventType, flow.EventTypeFilter{
			Type: t.GetType(), MatchSubType: t.GetMatchSubType(), SubType: t.GetSubType(),
		})
	}
	for _, f := range ff.GetTcpFlags() {
		out.TCPFlags = append(out.TCPFlags, fromTCPFlags(f))
	}
	for _, v := range ff.GetIpVersion() {
		out.IPVersion = append(out.IPVersion, flow.IPVersion(v))
	}
	return nil
}

func fromTCPFlags(f *flowpb.TCPFlags) monitor.TCPFlags {
	var out monitor.TCPFlags
	for _, b := range []struct {
		set  bool
		flag monitor.TCPFlags
	}{
		{f.GetFIN(), monitor.TCPFlagFIN}, {f.GetSYN(), monitor.TCPFlagSYN},
		{f.GetRST(), monitor.TCPFlagRST}, {f.GetPSH(), monitor.TCPFlagPSH},
		{f.GetACK(), monitor.TCPFlagACK}, {f.GetURG(), monitor.TCPFlagURG},
		{f.GetECE(), monitor.TCPFlagECE}, {f.GetCWR(), monitor.TCPFlagCWR},
	} {
		if b.set {
			out |= b.flag
		}
	}
	return out
}

// unsupportedField returns the proto name of the first field of ff that
// nodeplane's flows never carry, or "".
func unsupportedField(ff *flowpb.FlowFilter) string {
	for _, c := range []struct {
		name string
		set  bool
	}{
		{"uuid", len(ff.GetUuid()) > 0},
		{"source_ip_xlated", len(ff.GetSourceIpXlated()) > 0},
		{"source_fqdn", len(ff.GetSourceFqdn()) > 0},
		{"destination_fqdn", len(ff.GetDestinationFqdn()) > 0},
		{"source_workload", len(ff.GetSourceWorkload()) > 0},
		{"destination_workload", len(ff.GetDestinationWorkload()) > 0},
		{"source_cluster_name", len(ff.GetSourceClusterName()) > 0},
		{"destination_cluster_name", len(ff.GetDestinationClusterName()) > 0},
		{"node_labels", len(ff.GetNodeLabels()) > 0},
		{"trace_id", len(ff.GetTraceId()) > 0},
		{"ip_trace_id", len(ff.GetIpTraceId()) > 0},
		{"encrypted", len(ff.GetEncrypted()) > 0},
		{"experimental.cel_expression", len(ff.GetExperimental().GetCelExpression()) > 0},
	} {
		if c.set {
			return c.name
		}
	}
	for _, f := range ff.GetTcpFlags() {
		if f.GetNS() {
			return "tcp_flags.NS"
		}
	}
	return ""
}
