package flow

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
)

// Flow is one observed packet (or policy decision) with Hubble's field
// semantics (flow.proto's Flow). Its enums carry flow.proto's numbers, so
// converting to the protobuf is a cast. A Flow holds no pointers of its own
// besides strings, label slices and its L7 record, which the enrichment shares between
// flows and never modifies: copying a Flow is cheap and safe.
type Flow struct {
	// Time is when the datapath wrote the record (wall clock, converted
	// from CLOCK_MONOTONIC at decode time).
	Time time.Time
	// Verdict is FORWARDED for a trace, DROPPED for a drop, and the policy's
	// decision for a policy verdict.
	Verdict Verdict
	// DropReason is why the packet was dropped, 0 when it was not (Hubble's
	// drop_reason and drop_reason_desc).
	DropReason monitor.DropReason
	// EventType is the record's Cilium message type and subtype (the
	// observation point of a trace, the reason of a drop).
	EventType EventType
	// Type is L3_L4 for every flow the datapath reports.
	Type FlowType
	IP   IP
	L4   L4
	// Source and Destination are the packet's ends.
	Source, Destination Endpoint
	// DestinationService is the service whose address the packet was sent
	// to, when the destination is a service frontend.
	DestinationService Service
	NodeName           string
	// TrafficDirection is INGRESS or EGRESS from the point of view of the
	// endpoint whose program (or policy) saw the packet, as Hubble's.
	TrafficDirection TrafficDirection
	// IsReply says whether the packet is a reply of its connection; valid
	// when IsReplyKnown (Hubble's is_reply is null otherwise).
	IsReply, IsReplyKnown bool
	// PolicyMatchType is the kind of policy entry that decided (policy
	// verdicts only).
	PolicyMatchType monitor.PolicyMatch
	// TraceObservationPoint is where the datapath saw the packet.
	TraceObservationPoint ObservationPoint
	// TraceReason is the conntrack state behind a trace.
	TraceReason TraceReason
	// Interface is the interface the packet was seen on.
	Interface Interface
	// ProxyPort is the L7 proxy port of the deciding policy entry, or of
	// the proxy that reported an L7 flow.
	ProxyPort uint16
	// L7 is the layer-7 record of a flow of Type L7; zero otherwise. Its
	// HTTP and DNS records are shared between copies of the flow and never
	// modified.
	L7 Layer7
}

// IP is a flow's layer 3.
type IP struct {
	Source, Destination netip.Addr
}

// Version returns IPv4 or IPv6, or IPVersionNotUsed without addresses.
func (ip IP) Version() IPVersion {
	switch {
	case ip.Source.Is4():
		return IPv4
	case ip.Source.Is6():
		return IPv6
	}
	return IPVersionNotUsed
}

// L4 is a flow's layer 4. Protocol is the IANA number; ports are valid for
// TCP, UDP and SCTP, TCPFlags for TCP, ICMPType and ICMPCode for ICMP and
// ICMPv6.
type L4 struct {
	Protocol                    nodeplane.Protocol
	SourcePort, DestinationPort uint16
	TCPFlags                    monitor.TCPFlags
	ICMPType, ICMPCode          uint8
}

// Endpoint is one end of a flow (flow.proto's Endpoint). ID is the
// endpoint ID when the address is a local endpoint's, else 0.
type Endpoint struct {
	ID        uint32
	Identity  uint32
	Namespace string
	PodName   string
	// Labels are "source:key=value" strings, sorted, as Hubble prints them.
	// Shared between flows: never modify.
	Labels []string
}

// Service names a service (flow.proto's Service).
type Service struct {
	Name, Namespace string
}

// Interface is a network interface (flow.proto's NetworkInterface).
type Interface struct {
	Index uint32
	Name  string
}

// EventType is flow.proto's CiliumEventType.
type EventType struct {
	Type    int32
	SubType int32
}

// Verdict is flow.proto's Verdict.
type Verdict int32

// Verdicts.
const (
	VerdictUnknown Verdict = 0
	Forwarded      Verdict = 1
	Dropped        Verdict = 2
	Error          Verdict = 3
	Audit          Verdict = 4
	Redirected     Verdict = 5
	Traced         Verdict = 6
	Translated     Verdict = 7
)

var verdictNames = [...]string{"VERDICT_UNKNOWN", "FORWARDED", "DROPPED", "ERROR", "AUDIT", "REDIRECTED", "TRACED", "TRANSLATED"}

func (v Verdict) String() string {
	if v >= 0 && int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return fmt.Sprintf("Verdict(%d)", int32(v))
}

// FlowType is flow.proto's FlowType.
type FlowType int32

// Flow types.
const (
	UnknownType FlowType = 0
	L3L4        FlowType = 1
	L7          FlowType = 2
	Sock        FlowType = 3
)

func (t FlowType) String() string {
	switch t {
	case UnknownType:
		return "UNKNOWN_TYPE"
	case L3L4:
		return "L3_L4"
	case L7:
		return "L7"
	case Sock:
		return "SOCK"
	}
	return fmt.Sprintf("FlowType(%d)", int32(t))
}

// TrafficDirection is flow.proto's TrafficDirection.
type TrafficDirection int32

// Traffic directions.
const (
	TrafficDirectionUnknown TrafficDirection = 0
	Ingress                 TrafficDirection = 1
	Egress                  TrafficDirection = 2
)

func (d TrafficDirection) String() string {
	return monitor.Direction(d).String()
}

// IPVersion is flow.proto's IPVersion.
type IPVersion int32

// IP versions.
const (
	IPVersionNotUsed IPVersion = 0
	IPv4             IPVersion = 1
	IPv6             IPVersion = 2
)

func (v IPVersion) String() string {
	switch v {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return "IP_NOT_USED"
}

// ObservationPoint is flow.proto's TraceObservationPoint (note TO_ENDPOINT
// is 101 there, where Cilium's datapath number is 0: see
// [FromMonitorPoint]).
type ObservationPoint int32

// Observation points.
const (
	UnknownPoint ObservationPoint = 0
	ToProxy      ObservationPoint = 1
	ToHost       ObservationPoint = 2
	ToStack      ObservationPoint = 3
	ToOverlay    ObservationPoint = 4
	ToEndpoint   ObservationPoint = 101
	FromEndpoint ObservationPoint = 5
	FromProxy    ObservationPoint = 6
	FromHost     ObservationPoint = 7
	FromStack    ObservationPoint = 8
	FromOverlay  ObservationPoint = 9
	FromNetwork  ObservationPoint = 10
	ToNetwork    ObservationPoint = 11
	FromCrypto   ObservationPoint = 12
	ToCrypto     ObservationPoint = 13
)

// FromMonitorPoint converts a datapath observation point to Hubble's.
func FromMonitorPoint(p monitor.ObservationPoint) ObservationPoint {
	if p == monitor.ToEndpoint {
		return ToEndpoint
	}
	if p > monitor.ToCrypto {
		return UnknownPoint
	}
	return ObservationPoint(p)
}

var pointNames = [...]string{"UNKNOWN_POINT", "TO_PROXY", "TO_HOST", "TO_STACK", "TO_OVERLAY",
	"FROM_ENDPOINT", "FROM_PROXY", "FROM_HOST", "FROM_STACK", "FROM_OVERLAY", "FROM_NETWORK",
	"TO_NETWORK", "FROM_CRYPTO", "TO_CRYPTO"}

func (p ObservationPoint) String() string {
	if p == ToEndpoint {
		return "TO_ENDPOINT"
	}
	if p >= 0 && int(p) < len(pointNames) {
		return pointNames[p]
	}
	return fmt.Sprintf("ObservationPoint(%d)", int32(p))
}

// TraceReason is flow.proto's TraceReason (the datapath's number plus
// one: see [FromMonitorReason]).
type TraceReason int32

// Trace reasons.
const (
	TraceReasonUnknown TraceReason = 0
	TraceReasonNew     TraceReason = 1
	TraceEstablished   TraceReason = 2
	TraceReply         TraceReason = 3
	TraceRelated       TraceReason = 4
)

// FromMonitorReason converts a datapath trace reason to Hubble's.
func FromMonitorReason(r monitor.TraceReason) TraceReason {
	if !r.Known() {
		return TraceReasonUnknown
	}
	return TraceReason(r&0x7f) + 1
}

func (r TraceReason) String() string {
	switch r {
	case TraceReasonUnknown:
		return "TRACE_REASON_UNKNOWN"
	case TraceReasonNew:
		return "NEW"
	case TraceEstablished:
		return "ESTABLISHED"
	case TraceReply:
		return "REPLY"
	case TraceRelated:
		return "RELATED"
	}
	return fmt.Sprintf("TraceReason(%d)", int32(r))
}
