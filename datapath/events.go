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
// the binary layout of every record in the events ring buffer, and
// [ParseEvent], which turns one record into a typed [Event].
//
// Layout (little-endian integers on the machines bpfel objects run on;
// addresses and ports in network byte order):
//
//	header, 16 bytes, starts every record
//	   0 u8   type       1 drop, 2 policy verdict
//	   1 u8   version    EventVersion
//	   2 u16  endpoint   endpoint whose program wrote it
//	   4 u32  ifindex    interface the packet was seen on
//	   8 u64  ktime_ns   CLOCK_MONOTONIC
//	tuple, 40 bytes (struct np_tuple)
//	   0 [16] saddr      IPv4 in the first 4 bytes
//	  16 [16] daddr
//	  32 be16 sport      ICMP echo: identifier in sport (request) or dport (reply)
//	  34 be16 dport
//	  36 u8   proto
//	  37 u8   ip_version 4 or 6
//	drop record, 208 bytes
//	   0 header, 16 tuple (valid when flags&1), 56 u32 src identity,
//	  60 u32 dst identity, 64 u8 reason, 65 u8 hook, 66 u8 flags,
//	  68 u32 original packet length, 72 u16 captured length,
//	  80 [128] the packet's first bytes from the Ethernet header
//	policy verdict record, 80 bytes
//	   0 header, 16 tuple, 56 u32 src identity, 60 u32 dst identity,
//	  64 u16 endpoint whose policy decided, 66 u16 proxy port (host order),
//	  68 u8 hook, 69 u8 direction (0 ingress, 1 egress), 70 u8 verdict
//	  (0 allowed, else drop reason), 71 u8 match type, 72 u8 L4 prefix
//	  length, 74 be16 port looked up (destination port or ICMP type)

// EventVersion is the version of the record layout this package reads.
const EventVersion = 1

// EventType says what a record reports.
type EventType uint8

// Event types.
const (
	EventDrop          EventType = 1
	EventPolicyVerdict EventType = 2
)

func (t EventType) String() string {
	switch t {
	case EventDrop:
		return "drop"
	case EventPolicyVerdict:
		return "policy-verdict"
	}
	return fmt.Sprintf("EventType(%d)", uint8(t))
}

// Hook is where the datapath saw a packet.
type Hook uint8

// Hooks.
const (
	// FromEndpoint is traffic the endpoint sends (tc ingress of its
	// host-side interface).
	FromEndpoint Hook = 0
	// ToEndpoint is traffic the stack sends to the endpoint (tc egress).
	ToEndpoint Hook = 1
)

func (h Hook) String() string {
	switch h {
	case FromEndpoint:
		return "from-endpoint"
	case ToEndpoint:
		return "to-endpoint"
	}
	return fmt.Sprintf("Hook(%d)", uint8(h))
}

// PolicyMatch says which kind of policy entry decided, with Cilium's
// numbers (POLICY_MATCH_* in bpf/lib/policy.h).
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

// Event is a [*DropEvent] or a [*PolicyVerdictEvent].
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
	Hook                     Hook
	// OrigLen is the length of the whole packet.
	OrigLen uint32
	// Data holds the packet's first bytes, from the Ethernet header.
	Data []byte
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
	// Reason is 0 when the connection is allowed, else DropPolicyDenied or
	// DropPolicyDeny (or DropEndpointNotReady without a policy map).
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
}

// Allowed reports whether the policy allowed the connection.
func (e *PolicyVerdictEvent) Allowed() bool { return e.Reason == 0 }

// Raw layouts, checked against BTF by TestMapLayouts.

type eventHeader struct {
	Type       uint8  `btf:"type"`
	Version    uint8  `btf:"version"`
	EndpointID uint16 `btf:"endpoint_id"`
	Ifindex    uint32 `btf:"ifindex"`
	KtimeNS    uint64 `btf:"ktime_ns"`
}

const eventCapLen = 128

// dropTupleValid is NP_DROP_F_TUPLE.
const dropTupleValid = 1 << 0

type dropEvent struct {
	Hdr         eventHeader       `btf:"hdr"`
	Tuple       tuple             `btf:"tuple"`
	SrcIdentity uint32            `btf:"src_identity"`
	DstIdentity uint32            `btf:"dst_identity"`
	Reason      uint8             `btf:"reason"`
	Hook        uint8             `btf:"hook"`
	Flags       uint8             `btf:"flags"`
	_           uint8             `btf:"pad"`
	OrigLen     uint32            `btf:"orig_len"`
	CapLen      uint16            `btf:"cap_len"`
	_           [6]byte           `btf:"pad2"`
	Data        [eventCapLen]byte `btf:"data"`
}

type policyVerdictEvent struct {
	Hdr              eventHeader `btf:"hdr"`
	Tuple            tuple       `btf:"tuple"`
	SrcIdentity      uint32      `btf:"src_identity"`
	DstIdentity      uint32      `btf:"dst_identity"`
	PolicyEndpointID uint16      `btf:"policy_endpoint_id"`
	ProxyPort        uint16      `btf:"proxy_port"`
	Hook             uint8       `btf:"hook"`
	Egress           uint8       `btf:"egress"`
	Verdict          uint8       `btf:"verdict"`
	MatchType        uint8       `btf:"match_type"`
	L4PrefixLen      uint8       `btf:"l4_prefix_len"`
	_                uint8       `btf:"pad"`
	PolicyPort       be16        `btf:"policy_port"`
	_                [4]byte     `btf:"pad2"`
}

var (
	headerSize       = binary.Size(eventHeader{})
	dropEventSize    = binary.Size(dropEvent{})
	verdictEventSize = binary.Size(policyVerdictEvent{})
)

// ParseEvent decodes one ring-buffer record. It rejects records that are
// shorter than their type's layout, of an unknown type or version, or with
// fields out of range, with an error wrapping [ErrMalformedEvent]. Bytes
// after the layout's end are ignored. The returned event does not alias b.
func ParseEvent(b []byte) (Event, error) {
	if len(b) < headerSize {
		return nil, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrMalformedEvent, len(b), headerSize)
	}
	var h eventHeader
	if _, err := binary.Decode(b, binary.NativeEndian, &h); err != nil {
		return nil, fmt.Errorf("%w: header: %v", ErrMalformedEvent, err)
	}
	if h.Version != EventVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrMalformedEvent, h.Version, EventVersion)
	}
	hdr := EventHeader{
		Type: EventType(h.Type), Endpoint: EndpointID(h.EndpointID), Ifindex: h.Ifindex,
		Time: time.Duration(h.KtimeNS),
	}

	switch hdr.Type {
	case EventDrop:
		var r dropEvent
		if err := decodeRecord(b, dropEventSize, &r); err != nil {
			return nil, err
		}
		if r.CapLen > eventCapLen {
			return nil, fmt.Errorf("%w: drop record captures %d bytes, at most %d fit", ErrMalformedEvent, r.CapLen, eventCapLen)
		}
		e := &DropEvent{
			EventHeader: hdr,
			SrcIdentity: identity.ID(r.SrcIdentity), DstIdentity: identity.ID(r.DstIdentity),
			Reason: monitor.DropReason(r.Reason), Hook: Hook(r.Hook), OrigLen: r.OrigLen,
			Data: append([]byte(nil), r.Data[:r.CapLen]...),
		}
		if r.Flags&dropTupleValid != 0 {
			t, err := decodeTuple(r.Tuple)
			if err != nil {
				return nil, err
			}
			e.Tuple, e.HasTuple = t, true
		}
		return e, nil

	case EventPolicyVerdict:
		var r policyVerdictEvent
		if err := decodeRecord(b, verdictEventSize, &r); err != nil {
			return nil, err
		}
		t, err := decodeTuple(r.Tuple)
		if err != nil {
			return nil, err
		}
		if r.Egress > 1 {
			return nil, fmt.Errorf("%w: policy direction %d", ErrMalformedEvent, r.Egress)
		}
		return &PolicyVerdictEvent{
			EventHeader: hdr, Tuple: t,
			SrcIdentity: identity.ID(r.SrcIdentity), DstIdentity: identity.ID(r.DstIdentity),
			PolicyEndpoint: EndpointID(r.PolicyEndpointID), Hook: Hook(r.Hook),
			Direction: mapstate.Direction(r.Egress), Reason: monitor.DropReason(r.Verdict),
			Match: PolicyMatch(r.MatchType), L4PrefixLen: r.L4PrefixLen,
			ProxyPort: r.ProxyPort, PolicyPort: r.PolicyPort.host(),
		}, nil
	}
	return nil, fmt.Errorf("%w: unknown type %d", ErrMalformedEvent, h.Type)
}

func decodeRecord(b []byte, size int, out any) error {
	if len(b) < size {
		return fmt.Errorf("%w: %d bytes, a %T record has %d", ErrMalformedEvent, len(b), out, size)
	}
	if _, err := binary.Decode(b[:size], binary.NativeEndian, out); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformedEvent, err)
	}
	return nil
}

func decodeTuple(t tuple) (Tuple, error) {
	if t.IPVersion != ipv4 && t.IPVersion != ipv6 {
		return Tuple{}, fmt.Errorf("%w: tuple IP version %d", ErrMalformedEvent, t.IPVersion)
	}
	return t.typed(), nil
}
