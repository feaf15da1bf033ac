package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// This file is the Go side of the event format defined in bpf/events.h:
// the raw layouts (checked against BTF by TestMapLayouts) and [ParseEvent],
// which turns one record into a typed [Event]. The layout itself, byte by
// byte, and the allocation-free decoders are in package monitor, which
// readers of records (package flow) use without importing this package;
// TestParseEvent checks that monitor reads these structs'
// bytes back field for field.

// EventVersion is the version of the record layout this package reads.
const EventVersion = monitor.Version

// EventType says what a record reports, with Cilium's message-type
// numbers.
type EventType = monitor.MessageType

// Event types.
const (
	EventDrop          = monitor.MessageTypeDrop
	EventTrace         = monitor.MessageTypeTrace
	EventPolicyVerdict = monitor.MessageTypePolicyVerdict
)

// Hook is the program that saw a packet.
type Hook uint8

// Hooks.
const (
	// FromEndpoint is traffic the endpoint sends (tc ingress of its
	// host-side interface).
	FromEndpoint Hook = 0
	// ToEndpoint is traffic the stack sends to the endpoint (tc egress).
	ToEndpoint Hook = 1
	// FromOverlay is traffic another node sends through the tunnel (tc
	// ingress of the node's tunnel device, [Datapath.AttachOverlay]).
	FromOverlay Hook = 2
	// ToOverlay is the node's own traffic to other nodes' pods (tc egress
	// of the tunnel device, [Datapath.AttachOverlay]).
	ToOverlay Hook = 3
)

func (h Hook) String() string {
	switch h {
	case FromEndpoint:
		return "from-endpoint"
	case ToEndpoint:
		return "to-endpoint"
	case FromOverlay:
		return "from-overlay"
	case ToOverlay:
		return "to-overlay"
	}
	return fmt.Sprintf("Hook(%d)", uint8(h))
}

// hookOf returns the program behind a record's observation point.
func hookOf(p monitor.ObservationPoint) Hook {
	switch p {
	case monitor.FromEndpoint:
		return FromEndpoint
	case monitor.FromOverlay:
		return FromOverlay
	case monitor.ToOverlay:
		return ToOverlay
	}
	return ToEndpoint
}

// PolicyMatch says which kind of policy entry decided, with Cilium's
// numbers (POLICY_MATCH_* in bpf/lib/policy.h).
type PolicyMatch = monitor.PolicyMatch

// Policy match kinds.
const (
	MatchNone      = monitor.MatchNone
	MatchL3Only    = monitor.MatchL3Only
	MatchL3L4      = monitor.MatchL3L4
	MatchL4Only    = monitor.MatchL4Only
	MatchAll       = monitor.MatchAll
	MatchL3Proto   = monitor.MatchL3Proto
	MatchProtoOnly = monitor.MatchProtoOnly
)

// Tuple identifies a flow. For ICMP echo the identifier is SrcPort of a
// request and DstPort of a reply, so that a reply's reversed tuple is its
// request's; other ICMP messages have zero ports.
type Tuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            nodeplane.Protocol
}

func (t Tuple) String() string {
	return fmt.Sprintf("%s -> %s proto %d",
		netip.AddrPortFrom(t.Src, t.SrcPort), netip.AddrPortFrom(t.Dst, t.DstPort), t.Proto)
}

// Reverse returns the tuple of the other direction.
func (t Tuple) Reverse() Tuple {
	return Tuple{Src: t.Dst, Dst: t.Src, SrcPort: t.DstPort, DstPort: t.SrcPort, Proto: t.Proto}
}

func (t tuple) typed() Tuple {
	return Tuple{
		Src: t.SAddr.addr(t.IPVersion), Dst: t.DAddr.addr(t.IPVersion),
		SrcPort: t.SPort.host(), DstPort: t.DPort.host(), Proto: nodeplane.Protocol(t.Proto),
	}
}

func (t Tuple) raw() (tuple, error) {
	if !t.Src.IsValid() || t.Src.Is4() != t.Dst.Is4() || t.Src.Is4In6() || t.Dst.Is4In6() {
		return tuple{}, fmt.Errorf("tuple %v: addresses of one IP family required", t)
	}
	s, v := toRawAddr(t.Src)
	d, _ := toRawAddr(t.Dst)
	return tuple{SAddr: s, DAddr: d, SPort: toBE16(t.SrcPort), DPort: toBE16(t.DstPort),
		Proto: uint8(t.Proto), IPVersion: v}, nil
}

// EventHeader is what every event carries.
type EventHeader struct {
	Type EventType
	// Endpoint is the endpoint whose program saw the packet.
	Endpoint EndpointID
	// Ifindex is the interface the packet was seen on.
	Ifindex uint32
	// Time is CLOCK_MONOTONIC when the event was written.
	Time time.Duration
}

// Event is a [*DropEvent], a [*TraceEvent] or a [*PolicyVerdictEvent].
type Event interface {
	Header() EventHeader
}

// Header returns the common part of the event.
func (h EventHeader) Header() EventHeader { return h }

// DropEvent reports a dropped packet.
type DropEvent struct {
	EventHeader
	// Tuple is the packet's flow; valid when HasTuple (packets dropped
	// before parsing have none).
	Tuple    Tuple
	HasTuple bool
	// SrcIdentity and DstIdentity are the identities of the two ends, as
	// far as the datapath had determined them (0 where it had not).
	SrcIdentity, DstIdentity identity.ID
	Reason                   monitor.DropReason
	// Hook is the program that dropped the packet.
	Hook Hook
	// Direction is the direction of the policy that denied the packet
	// (PolicyDecided), else the program's: Egress from the endpoint,
	// Ingress to it.
	Direction mapstate.Direction
	// PolicyEndpoint is the endpoint whose policy denied the packet
	// (PolicyDecided), else the one whose program dropped it. For traffic
	// between local endpoints the sender's program enforces the receiver's
	// ingress policy: Endpoint is the sender, PolicyEndpoint the receiver.
	PolicyEndpoint EndpointID
	PolicyDecided  bool
	// CTState is the conntrack state (TraceReasonPolicy for a new
	// connection), valid when HasCTState.
	CTState    monitor.TraceReason
	HasCTState bool
	TCPFlags   monitor.TCPFlags
	// OrigLen is the length of the whole packet.
	OrigLen uint32
	// Data holds the packet's first bytes, from the Ethernet header.
	Data []byte
}

// TraceEvent reports a forwarded packet at an observation point.
type TraceEvent struct {
	EventHeader
	Tuple                    Tuple
	SrcIdentity, DstIdentity identity.ID
	Point                    monitor.ObservationPoint
	// Reason is the conntrack state of the packet.
	Reason monitor.TraceReason
	// DstEndpoint and DstIfindex are the endpoint the packet was delivered
	// to and its host-side interface (ToEndpoint only).
	DstEndpoint EndpointID
	DstIfindex  uint32
	TCPFlags    monitor.TCPFlags
	OrigLen     uint32
}

// PolicyVerdictEvent reports one policy decision about a new connection.
type PolicyVerdictEvent struct {
	EventHeader
	Tuple                    Tuple
	SrcIdentity, DstIdentity identity.ID
	// PolicyEndpoint is the endpoint whose policy decided; for traffic
	// between local endpoints the source program also decides the
	// destination's ingress policy.
	PolicyEndpoint EndpointID
	Hook           Hook
	// Direction is the policy's direction: Egress for the sender's policy,
	// Ingress for the receiver's.
	Direction mapstate.Direction
	// Reason is 0 when the connection is allowed, else monitor.DropPolicyDenied or
	// monitor.DropPolicyDeny (or monitor.DropEndpointNotReady without a policy map).
	Reason monitor.DropReason
	// Match says which kind of entry decided, L4PrefixLen how much of
	// protocol and port it fixed.
	Match       PolicyMatch
	L4PrefixLen uint8
	// ProxyPort is the deciding entry's L7 redirect port, 0 for none.
	ProxyPort uint16
	// PolicyPort is the port the lookup used: the destination port, or the
	// ICMP type.
	PolicyPort uint16
	TCPFlags   monitor.TCPFlags
}

// Allowed reports whether the policy allowed the connection.
func (e *PolicyVerdictEvent) Allowed() bool { return e.Reason == 0 }

// Raw layouts, checked against BTF by TestMapLayouts and against
// monitor's decoders by TestParseEvent.

type eventHeader struct {
	Type       uint8  `btf:"type"`
	Version    uint8  `btf:"version"`
	EndpointID uint16 `btf:"endpoint_id"`
	Ifindex    uint32 `btf:"ifindex"`
	KtimeNS    uint64 `btf:"ktime_ns"`
}

const eventCapLen = monitor.CaptureLen

// dropTupleValid is NP_DROP_F_TUPLE.
const dropTupleValid = monitor.DropFlagTuple

type dropEvent struct {
	Hdr              eventHeader       `btf:"hdr"`
	Tuple            tuple             `btf:"tuple"`
	SrcIdentity      uint32            `btf:"src_identity"`
	DstIdentity      uint32            `btf:"dst_identity"`
	Reason           uint8             `btf:"reason"`
	ObsPoint         uint8             `btf:"obs_point"`
	Flags            uint8             `btf:"flags"`
	Direction        uint8             `btf:"direction"`
	OrigLen          uint32            `btf:"orig_len"`
	CapLen           uint16            `btf:"cap_len"`
	PolicyEndpointID uint16            `btf:"policy_endpoint_id"`
	TCPFlags         uint8             `btf:"tcp_flags"`
	CTState          uint8             `btf:"ct_state"`
	PolicyPort       be16              `btf:"policy_port"`
	Data             [eventCapLen]byte `btf:"data"`
}

type traceEvent struct {
	Hdr           eventHeader `btf:"hdr"`
	Tuple         tuple       `btf:"tuple"`
	SrcIdentity   uint32      `btf:"src_identity"`
	DstIdentity   uint32      `btf:"dst_identity"`
	DstEndpointID uint16      `btf:"dst_endpoint_id"`
	ObsPoint      uint8       `btf:"obs_point"`
	Reason        uint8       `btf:"reason"`
	OrigLen       uint32      `btf:"orig_len"`
	TCPFlags      uint8       `btf:"tcp_flags"`
	_             uint8       `btf:"pad"`
	PolicyPort    be16        `btf:"policy_port"`
	DstIfindex    uint32      `btf:"dst_ifindex"`
}

type policyVerdictEvent struct {
	Hdr              eventHeader `btf:"hdr"`
	Tuple            tuple       `btf:"tuple"`
	SrcIdentity      uint32      `btf:"src_identity"`
	DstIdentity      uint32      `btf:"dst_identity"`
	PolicyEndpointID uint16      `btf:"policy_endpoint_id"`
	ProxyPort        uint16      `btf:"proxy_port"`
	ObsPoint         uint8       `btf:"obs_point"`
	Egress           uint8       `btf:"egress"`
	Verdict          uint8       `btf:"verdict"`
	MatchType        uint8       `btf:"match_type"`
	L4PrefixLen      uint8       `btf:"l4_prefix_len"`
	TCPFlags         uint8       `btf:"tcp_flags"`
	PolicyPort       be16        `btf:"policy_port"`
	_                [4]byte     `btf:"pad2"`
}

var (
	dropEventSize    = binary.Size(dropEvent{})
	verdictEventSize = binary.Size(policyVerdictEvent{})
)

// ParseEvent decodes one ring-buffer record. It rejects records that are
// shorter than their type's layout, of an unknown type or version, or with
// fields out of range, with an error wrapping [ErrMalformedEvent] (and
// monitor's more specific error). Bytes after the layout's end are
// ignored. The returned event does not alias b.
func ParseEvent(b []byte) (Event, error) {
	ev, err := parseEvent(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformedEvent, err)
	}
	return ev, nil
}

func parseEvent(b []byte) (Event, error) {
	var h monitor.Header
	if err := monitor.DecodeHeader(b, &h); err != nil {
		return nil, err
	}
	hdr := func(h monitor.Header) EventHeader {
		return EventHeader{Type: h.Type, Endpoint: EndpointID(h.Endpoint), Ifindex: h.Ifindex, Time: time.Duration(h.KtimeNS)}
	}
	switch h.Type {
	case monitor.MessageTypeDrop:
		var r monitor.DropNotify
		if err := r.Decode(b); err != nil {
			return nil, err
		}
		e := &DropEvent{
			EventHeader: hdr(r.Header),
			SrcIdentity: identity.ID(r.SrcIdentity), DstIdentity: identity.ID(r.DstIdentity),
			Reason: r.Reason, Hook: hookOf(r.ObservationPoint), OrigLen: r.OrigLen,
			Direction: mapstate.Ingress, PolicyEndpoint: EndpointID(r.PolicyEndpoint),
			PolicyDecided: r.Flags&monitor.DropFlagPolicy != 0,
			CTState:       r.CTState, HasCTState: r.Flags&monitor.DropFlagCT != 0,
			TCPFlags: r.TCPFlags,
			Data:     append([]byte(nil), r.Data[:r.CapLen]...),
		}
		if r.Direction == monitor.DirectionEgress {
			e.Direction = mapstate.Egress
		}
		if r.Flags&monitor.DropFlagTuple != 0 {
			e.Tuple, e.HasTuple = Tuple(r.Tuple), true
		}
		return e, nil

	case monitor.MessageTypeTrace:
		var r monitor.TraceNotify
		if err := r.Decode(b); err != nil {
			return nil, err
		}
		return &TraceEvent{
			EventHeader: hdr(r.Header), Tuple: Tuple(r.Tuple),
			SrcIdentity: identity.ID(r.SrcIdentity), DstIdentity: identity.ID(r.DstIdentity),
			Point: r.ObservationPoint, Reason: r.Reason,
			DstEndpoint: EndpointID(r.DstEndpoint), DstIfindex: r.DstIfindex,
			TCPFlags: r.TCPFlags, OrigLen: r.OrigLen,
		}, nil

	case monitor.MessageTypePolicyVerdict:
		var r monitor.PolicyVerdictNotify
		if err := r.Decode(b); err != nil {
			return nil, err
		}
		dir := mapstate.Ingress
		if r.Egress {
			dir = mapstate.Egress
		}
		return &PolicyVerdictEvent{
			EventHeader: hdr(r.Header), Tuple: Tuple(r.Tuple),
			SrcIdentity: identity.ID(r.SrcIdentity), DstIdentity: identity.ID(r.DstIdentity),
			PolicyEndpoint: EndpointID(r.PolicyEndpoint), Hook: hookOf(r.ObservationPoint),
			Direction: dir, Reason: r.Verdict,
			Match: r.Match, L4PrefixLen: r.L4PrefixLen, TCPFlags: r.TCPFlags,
			ProxyPort: r.ProxyPort, PolicyPort: r.PolicyPort,
		}, nil
	}
	return nil, fmt.Errorf("%w: %d", monitor.ErrUnknownType, h.Type)
}
