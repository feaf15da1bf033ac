package monitor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// This file is the binary layout of the datapath's records (C:
// datapath/bpf/events.h; the datapath's layout test checks the two against
// the object's BTF) and their decoders. Integers are in host byte order
// (little-endian on the bpfel objects), addresses and ports in network byte
// order.
//
//	header, 16 bytes, starts every record
//	   0 u8   type       MessageType
//	   1 u8   version    Version
//	   2 u16  endpoint   endpoint whose program wrote the record
//	   4 u32  ifindex    interface the packet was seen on
//	   8 u64  ktime_ns   CLOCK_MONOTONIC
//	tuple, 40 bytes at 16
//	   0 [16] saddr      IPv4 in the first 4 bytes
//	  16 [16] daddr
//	  32 be16 sport      ICMP echo: identifier in sport (request) or dport (reply)
//	  34 be16 dport
//	  36 u8   proto
//	  37 u8   ip_version 4 or 6
//	drop record, 208 bytes
//	  56 u32 src identity, 60 u32 dst identity, 64 u8 drop reason,
//	  65 u8 observation point, 66 u8 flags (1 tuple valid, 2 conntrack
//	  state valid, 4 direction and endpoint from a policy decision),
//	  67 u8 direction (Direction), 68 u32 original length,
//	  72 u16 captured length, 74 u16 endpoint whose policy decided (or the
//	  writer), 76 u8 TCP flags, 77 u8 conntrack state (TraceReason), 78
//	  be16 destination port or ICMP type (with the tuple), 80 [128] the packet's first bytes from the Ethernet header
//	trace record, 80 bytes
//	  56 u32 src identity, 60 u32 dst identity, 64 u16 endpoint delivered
//	  to (0: none), 66 u8 observation point, 67 u8 reason (TraceReason),
//	  68 u32 original length, 72 u8 TCP flags, 74 be16 destination port or
//	  ICMP type, 76 u32 ifindex delivered to (0: none)
//	policy verdict record, 80 bytes
//	  56 u32 src identity, 60 u32 dst identity, 64 u16 endpoint whose
//	  policy decided, 66 u16 proxy port (host order), 68 u8 observation
//	  point, 69 u8 direction (0 ingress, 1 egress), 70 u8 verdict (0
//	  allowed, else drop reason), 71 u8 match type, 72 u8 L4 prefix length,
//	  73 u8 TCP flags, 74 be16 port looked up (destination port or ICMP
//	  type)

// Version is the record layout version this package reads.
const Version = 2

// Record sizes.
const (
	HeaderLen        = 16
	TupleLen         = 40
	DropLen          = 208
	TraceLen         = 80
	PolicyVerdictLen = 80
	// CaptureLen is how many bytes of the packet a drop record keeps.
	CaptureLen = 128
)

// Errors of the decoders. Every decode error wraps ErrMalformed and, where
// it applies, one of the more specific ones.
var (
	ErrMalformed   = errors.New("malformed record")
	ErrTruncated   = fmt.Errorf("%w: truncated", ErrMalformed)
	ErrVersion     = fmt.Errorf("%w: unknown version", ErrMalformed)
	ErrUnknownType = fmt.Errorf("%w: unknown type", ErrMalformed)
	ErrField       = fmt.Errorf("%w: field out of range", ErrMalformed)
)

// Header is what every record carries.
type Header struct {
	Type     MessageType
	Version  uint8
	Endpoint uint16 // endpoint whose program wrote the record
	Ifindex  uint32 // interface the packet was seen on
	KtimeNS  uint64 // CLOCK_MONOTONIC
}

// Tuple is a packet's addresses, ports and protocol.
type Tuple struct {
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            uint8
}

// Drop record flags.
const (
	DropFlagTuple  = 1 << 0 // Tuple is valid
	DropFlagCT     = 1 << 1 // CTState is valid
	DropFlagPolicy = 1 << 2 // a policy decided: Direction and PolicyEndpoint are its
)

// DropNotify is a drop record.
type DropNotify struct {
	Header
	Tuple                    Tuple // valid with DropFlagTuple
	SrcIdentity, DstIdentity uint32
	Reason                   DropReason
	ObservationPoint         ObservationPoint
	Flags                    uint8
	Direction                Direction
	OrigLen                  uint32
	// PolicyEndpoint is the endpoint whose policy dropped the packet (with
	// DropFlagPolicy), else the endpoint whose program did.
	PolicyEndpoint uint16
	TCPFlags       TCPFlags
	CTState        TraceReason // valid with DropFlagCT
	// PolicyPort is the destination port, or the ICMP type for ICMP (with
	// DropFlagTuple).
	PolicyPort uint16
	CapLen     uint16
	Data       [CaptureLen]byte // Data[:CapLen] is valid
}

// TraceNotify is a trace record: a forwarded packet.
type TraceNotify struct {
	Header
	Tuple                    Tuple
	SrcIdentity, DstIdentity uint32
	DstEndpoint              uint16 // endpoint delivered to, 0 for none
	ObservationPoint         ObservationPoint
	Reason                   TraceReason
	OrigLen                  uint32
	TCPFlags                 TCPFlags
	PolicyPort               uint16 // destination port, or ICMP type for ICMP
	DstIfindex               uint32 // interface delivered to, 0 for none
}

// PolicyVerdictNotify is a policy decision about a new connection.
type PolicyVerdictNotify struct {
	Header
	Tuple                    Tuple
	SrcIdentity, DstIdentity uint32
	PolicyEndpoint           uint16
	ProxyPort                uint16
	ObservationPoint         ObservationPoint
	Egress                   bool
	Verdict                  DropReason // 0 allowed
	Match                    PolicyMatch
	L4PrefixLen              uint8
	TCPFlags                 TCPFlags
	PolicyPort               uint16
}

var le = binary.LittleEndian

// DecodeHeader decodes the header of rec and checks its version.
func DecodeHeader(rec []byte, h *Header) error {
	if len(rec) < HeaderLen {
		return fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrTruncated, len(rec), HeaderLen)
	}
	*h = Header{
		Type: MessageType(rec[0]), Version: rec[1], Endpoint: le.Uint16(rec[2:]),
		Ifindex: le.Uint32(rec[4:]), KtimeNS: le.Uint64(rec[8:]),
	}
	if h.Version != Version {
		return fmt.Errorf("%w: version %d, want %d", ErrVersion, h.Version, Version)
	}
	switch h.Type {
	case MessageTypeDrop, MessageTypeTrace, MessageTypePolicyVerdict:
		return nil
	}
	return fmt.Errorf("%w: %d", ErrUnknownType, rec[0])
}

func need(rec []byte, n int, what MessageType) error {
	if len(rec) < n {
		return fmt.Errorf("%w: %s record of %d bytes, want %d", ErrTruncated, what, len(rec), n)
	}
	return nil
}

func decodeTuple(b []byte, t *Tuple) error {
	switch b[37] {
	case 4:
		t.Src = netip.AddrFrom4([4]byte(b[0:4]))
		t.Dst = netip.AddrFrom4([4]byte(b[16:20]))
	case 6:
		t.Src = netip.AddrFrom16([16]byte(b[0:16]))
		t.Dst = netip.AddrFrom16([16]byte(b[16:32]))
	default:
		return fmt.Errorf("%w: tuple IP version %d", ErrField, b[37])
	}
	t.SrcPort = binary.BigEndian.Uint16(b[32:])
	t.DstPort = binary.BigEndian.Uint16(b[34:])
	t.Proto = b[36]
	return nil
}

// Decode decodes a drop record into d. Bytes after the layout are ignored.
func (d *DropNotify) Decode(rec []byte) error {
	if err := DecodeHeader(rec, &d.Header); err != nil {
		return err
	}
	if d.Type != MessageTypeDrop {
		return fmt.Errorf("%w: %s record decoded as drop", ErrUnknownType, d.Type)
	}
	if err := need(rec, DropLen, MessageTypeDrop); err != nil {
		return err
	}
	d.Flags = rec[66]
	d.Tuple = Tuple{}
	if d.Flags&DropFlagTuple != 0 {
		if err := decodeTuple(rec[16:56], &d.Tuple); err != nil {
			return err
		}
	}
	d.SrcIdentity, d.DstIdentity = le.Uint32(rec[56:]), le.Uint32(rec[60:])
	d.Reason = DropReason(rec[64])
	d.ObservationPoint = ObservationPoint(rec[65])
	d.Direction = Direction(rec[67])
	if d.Direction > DirectionEgress {
		return fmt.Errorf("%w: drop direction %d", ErrField, rec[67])
	}
	d.OrigLen = le.Uint32(rec[68:])
	d.CapLen = le.Uint16(rec[72:])
	if d.CapLen > CaptureLen {
		return fmt.Errorf("%w: drop record captures %d bytes, at most %d fit", ErrField, d.CapLen, CaptureLen)
	}
	d.PolicyEndpoint = le.Uint16(rec[74:])
	d.TCPFlags = TCPFlags(rec[76])
	d.CTState = TraceReason(rec[77])
	d.PolicyPort = binary.BigEndian.Uint16(rec[78:])
	copy(d.Data[:], rec[80:80+CaptureLen])
	return nil
}

// Decode decodes a trace record into t. Bytes after the layout are ignored.
func (t *TraceNotify) Decode(rec []byte) error {
	if err := DecodeHeader(rec, &t.Header); err != nil {
		return err
	}
	if t.Type != MessageTypeTrace {
		return fmt.Errorf("%w: %s record decoded as trace", ErrUnknownType, t.Type)
	}
	if err := need(rec, TraceLen, MessageTypeTrace); err != nil {
		return err
	}
	if err := decodeTuple(rec[16:56], &t.Tuple); err != nil {
		return err
	}
	t.SrcIdentity, t.DstIdentity = le.Uint32(rec[56:]), le.Uint32(rec[60:])
	t.DstEndpoint = le.Uint16(rec[64:])
	t.ObservationPoint = ObservationPoint(rec[66])
	if int(t.ObservationPoint) >= len(obsNames) {
		return fmt.Errorf("%w: observation point %d", ErrField, rec[66])
	}
	t.Reason = TraceReason(rec[67])
	t.OrigLen = le.Uint32(rec[68:])
	t.TCPFlags = TCPFlags(rec[72])
	t.PolicyPort = binary.BigEndian.Uint16(rec[74:])
	t.DstIfindex = le.Uint32(rec[76:])
	return nil
}

// Decode decodes a policy verdict record into v. Bytes after the layout
// are ignored.
func (v *PolicyVerdictNotify) Decode(rec []byte) error {
	if err := DecodeHeader(rec, &v.Header); err != nil {
		return err
	}
	if v.Type != MessageTypePolicyVerdict {
		return fmt.Errorf("%w: %s record decoded as policy verdict", ErrUnknownType, v.Type)
	}
	if err := need(rec, PolicyVerdictLen, MessageTypePolicyVerdict); err != nil {
		return err
	}
	if err := decodeTuple(rec[16:56], &v.Tuple); err != nil {
		return err
	}
	v.SrcIdentity, v.DstIdentity = le.Uint32(rec[56:]), le.Uint32(rec[60:])
	v.PolicyEndpoint = le.Uint16(rec[64:])
	v.ProxyPort = le.Uint16(rec[66:])
	v.ObservationPoint = ObservationPoint(rec[68])
	if rec[69] > 1 {
		return fmt.Errorf("%w: policy direction %d", ErrField, rec[69])
	}
	v.Egress = rec[69] == 1
	v.Verdict = DropReason(rec[70])
	v.Match = PolicyMatch(rec[71])
	v.L4PrefixLen = rec[72]
	v.TCPFlags = TCPFlags(rec[73])
	v.PolicyPort = binary.BigEndian.Uint16(rec[74:])
	return nil
}
