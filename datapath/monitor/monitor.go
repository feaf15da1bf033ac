package monitor

import (
	"fmt"
	"strings"
)

// MessageType says what a record reports, with Cilium's numbers
// (MessageType* in pkg/monitor/api, CILIUM_NOTIFY_* in bpf/lib/common.h),
// which Hubble shows as a flow's event_type.type.
type MessageType uint8

// Message types.
const (
	MessageTypeDrop          MessageType = 1
	MessageTypeTrace         MessageType = 4
	MessageTypePolicyVerdict MessageType = 5
	// MessageTypeAccessLog is an L7 proxy's record (Cilium's
	// MessageTypeAccessLog); the datapath writes none, flow.L7Record
	// carries them.
	MessageTypeAccessLog MessageType = 129
)

func (t MessageType) String() string {
	switch t {
	case MessageTypeDrop:
		return "drop"
	case MessageTypeTrace:
		return "trace"
	case MessageTypePolicyVerdict:
		return "policy-verdict"
	case MessageTypeAccessLog:
		return "accesslog"
	}
	return fmt.Sprintf("MessageType(%d)", uint8(t))
}

// ObservationPoint is where the datapath saw a packet, with Cilium's
// numbers (TRACE_* in bpf/lib/trace.h, Trace* in pkg/monitor/api). A trace
// record's observation point is Hubble's event_type.sub_type.
type ObservationPoint uint8

// Observation points. The datapath writes ToEndpoint, ToStack and
// FromEndpoint; the others are Cilium's and kept for their names.
const (
	ToEndpoint   ObservationPoint = 0 // TRACE_TO_LXC: delivered to the endpoint
	ToProxy      ObservationPoint = 1
	ToHost       ObservationPoint = 2
	ToStack      ObservationPoint = 3 // TRACE_TO_STACK: passed to the node's stack
	ToOverlay    ObservationPoint = 4
	FromEndpoint ObservationPoint = 5 // TRACE_FROM_LXC: sent by the endpoint
	FromProxy    ObservationPoint = 6
	FromHost     ObservationPoint = 7
	FromStack    ObservationPoint = 8
	FromOverlay  ObservationPoint = 9
	FromNetwork  ObservationPoint = 10
	ToNetwork    ObservationPoint = 11
	FromCrypto   ObservationPoint = 12
	ToCrypto     ObservationPoint = 13
)

var obsNames = [...]string{
	"to-endpoint", "to-proxy", "to-host", "to-stack", "to-overlay", "from-endpoint",
	"from-proxy", "from-host", "from-stack", "from-overlay", "from-network", "to-network",
	"from-crypto", "to-crypto",
}

// String returns Cilium's name ("to-endpoint", as `cilium monitor` prints).
func (p ObservationPoint) String() string {
	if int(p) < len(obsNames) {
		return obsNames[p]
	}
	return fmt.Sprintf("ObservationPoint(%d)", uint8(p))
}

// IsFrom reports whether p is where a packet enters the datapath
// (FROM_*): monitor aggregation from AggregationLowest on hides these.
func (p ObservationPoint) IsFrom() bool {
	switch p {
	case FromEndpoint, FromProxy, FromHost, FromStack, FromOverlay, FromNetwork, FromCrypto:
		return true
	}
	return false
}

// TraceReason is why the datapath forwarded a packet: the conntrack state
// it found, with Cilium's numbers (TRACE_REASON_* in bpf/lib/trace.h,
// which are its CT_* states).
type TraceReason uint8

// Trace reasons.
const (
	TraceReasonPolicy         TraceReason = 0 // a new connection, allowed by policy
	TraceReasonCTEstablished  TraceReason = 1
	TraceReasonCTReply        TraceReason = 2
	TraceReasonCTRelated      TraceReason = 3
	TraceReasonUnknown        TraceReason = 5
	traceReasonEncryptedFlag  TraceReason = 0x80
	traceReasonMaxKnownReason TraceReason = TraceReasonCTRelated
)

// Known reports whether r is a conntrack state (so the packet's reply flag
// is known).
func (r TraceReason) Known() bool { return r&^traceReasonEncryptedFlag <= traceReasonMaxKnownReason }

// IsReply reports whether r says the packet is a reply.
func (r TraceReason) IsReply() bool { return r&^traceReasonEncryptedFlag == TraceReasonCTReply }

func (r TraceReason) String() string {
	switch r {
	case TraceReasonPolicy:
		return "new"
	case TraceReasonCTEstablished:
		return "established"
	case TraceReasonCTReply:
		return "reply"
	case TraceReasonCTRelated:
		return "related"
	case TraceReasonUnknown:
		return "unknown"
	}
	return fmt.Sprintf("TraceReason(%d)", uint8(r))
}

// Direction is a traffic direction with Hubble's numbers
// (TrafficDirection in flow.proto), as drop records carry it.
type Direction uint8

// Directions.
const (
	DirectionUnknown Direction = 0
	DirectionIngress Direction = 1
	DirectionEgress  Direction = 2
)

func (d Direction) String() string {
	switch d {
	case DirectionUnknown:
		return "TRAFFIC_DIRECTION_UNKNOWN"
	case DirectionIngress:
		return "INGRESS"
	case DirectionEgress:
		return "EGRESS"
	}
	return fmt.Sprintf("Direction(%d)", uint8(d))
}

// PolicyMatch says which kind of policy entry decided, with Cilium's
// numbers (POLICY_MATCH_* in bpf/lib/policy.h), Hubble's
// policy_match_type.
type PolicyMatch uint8

// Policy match kinds.
const (
	MatchNone      PolicyMatch = 0 // no entry: default deny
	MatchL3Only    PolicyMatch = 1 // the peer, any protocol
	MatchL3L4      PolicyMatch = 2 // the peer, protocol and port(s)
	MatchL4Only    PolicyMatch = 3 // any peer, protocol and port(s)
	MatchAll       PolicyMatch = 4 // any peer, any protocol
	MatchL3Proto   PolicyMatch = 5 // the peer, protocol, any port
	MatchProtoOnly PolicyMatch = 6 // any peer, protocol, any port
)

func (m PolicyMatch) String() string {
	names := [...]string{"none", "L3-only", "L3-L4", "L4-only", "all", "L3-proto", "proto-only"}
	if int(m) < len(names) {
		return names[m]
	}
	return fmt.Sprintf("PolicyMatch(%d)", uint8(m))
}

// TCPFlags are the flags of a TCP header's 13th byte (FIN is bit 0).
type TCPFlags uint8

// TCP flags.
const (
	TCPFlagFIN TCPFlags = 1 << iota
	TCPFlagSYN
	TCPFlagRST
	TCPFlagPSH
	TCPFlagACK
	TCPFlagURG
	TCPFlagECE
	TCPFlagCWR
)

var tcpFlagNames = [...]string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}

// String lists the flags as Hubble's summary does ("SYN, ACK").
func (f TCPFlags) String() string {
	var b strings.Builder
	// Hubble's order: SYN ACK RST FIN PSH URG ECE CWR.
	for _, i := range [...]int{1, 4, 2, 0, 3, 5, 6, 7} {
		if f&(1<<i) != 0 {
			if b.Len() > 0 {
				b.WriteString(", ")
			}
			b.WriteString(tcpFlagNames[i])
		}
	}
	return b.String()
}

// AggregationLevel is Cilium's monitor-aggregation level: how many trace
// records forwarded packets produce. Its zero value, AggregationDefault,
// stands for the default of whatever holds it (datapath.Config: medium,
// Cilium's).
type AggregationLevel uint8

// Aggregation levels. The semantics are Cilium's (emit_trace_notify in
// bpf/lib/trace.h): from AggregationLowest on no FROM_* traces; from
// AggregationMedium on a known connection reports only when a packet
// carries a report flag (SYN, FIN, RST by default) not seen before in its
// direction, or when the report interval (5 s by default) has passed since
// its last report in that direction; new connections always report.
// AggregationLow and AggregationMaximum behave like the level below them,
// as in Cilium. AggregationOff writes no trace records at all (drops and
// policy verdicts are still reported); Cilium has no such level.
const (
	AggregationDefault AggregationLevel = iota
	AggregationOff
	AggregationNone
	AggregationLowest
	AggregationLow
	AggregationMedium
	AggregationMaximum
)

var aggNames = [...]string{"default", "off", "none", "lowest", "low", "medium", "maximum"}

func (l AggregationLevel) String() string {
	if int(l) < len(aggNames) {
		return aggNames[l]
	}
	return fmt.Sprintf("AggregationLevel(%d)", uint8(l))
}

// ParseAggregationLevel reads a level by Cilium's names and numbers
// ("none", "disabled", "lowest", "low", "medium", "max", "maximum", "0"-"4")
// or "off".
func ParseAggregationLevel(s string) (AggregationLevel, error) {
	switch strings.ToLower(s) {
	case "off":
		return AggregationOff, nil
	case "none", "disabled", "0":
		return AggregationNone, nil
	case "lowest", "1":
		return AggregationLowest, nil
	case "low", "2":
		return AggregationLow, nil
	case "medium", "3":
		return AggregationMedium, nil
	case "max", "maximum", "4":
		return AggregationMaximum, nil
	}
	return 0, fmt.Errorf("unknown monitor aggregation level %q", s)
}

// CiliumLevel returns the level's number in Cilium's option
// (MonitorAggregationLevel*), which is the datapath's, and false for
// AggregationDefault, AggregationOff and unknown levels.
func (l AggregationLevel) CiliumLevel() (uint8, bool) {
	if l < AggregationNone || l > AggregationMaximum {
		return 0, false
	}
	return uint8(l - AggregationNone), true
}
