package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/nodeplane/nodeplane"
)

// Key mirrors struct np_nat_key: one direction of a translated flow.
// Addresses are 16 bytes (IPv4 in the first 4, the rest zero); ports in
// network byte order. ICMP echo keeps its identifier in SrcPort (egress)
// or DstPort (ingress), with the other port zero.
type Key struct {
	SrcAddr [16]byte `btf:"saddr"`
	DstAddr [16]byte `btf:"daddr"`
	SrcPort [2]byte  `btf:"sport"`
	DstPort [2]byte  `btf:"dport"`
	Proto   uint8    `btf:"proto"`
	Family  uint8    `btf:"family"`
	Dir     uint8    `btf:"dir"`
	_       uint8    `btf:"pad"`
}

// Entry mirrors struct np_nat_entry.
type Entry struct {
	Addr     [16]byte `btf:"addr"`
	Peer     [16]byte `btf:"peer"`
	Port     [2]byte  `btf:"port"`
	PeerPort [2]byte  `btf:"peer_port"`
	Flags    uint8    `btf:"flags"`
	_        [3]byte  `btf:"pad"`
	Created  uint64   `btf:"created"` // CLOCK_MONOTONIC ns
	Seen     uint64   `btf:"seen"`
}

// Directions, flags and families (np_nat.h).
const (
	Egress  = 0
	Ingress = 1

	FlagRevDNAT = 1 // ingress entry of a service flow: restore the frontend
	FlagClosing = 2 // TCP flow that saw FIN or RST

	FamilyV4 = 4
	FamilyV6 = 6
)

// The default port range, inclusive: above Linux's default ephemeral
// range (32768–60999), so the node's own connections never take a port
// NAT hands out.
const (
	DefaultPortMin = 61000
	DefaultPortMax = 65535
)

// Cilium's conntrack lifetimes, which NAT entries follow here: a TCP flow
// lives 6 hours after its last packet, 10 seconds once it saw FIN or RST;
// anything else 60 seconds.
const (
	DefaultTCPLifetime    = 21600 * time.Second
	DefaultNonTCPLifetime = 60 * time.Second
	DefaultCloseLifetime  = 10 * time.Second
)

// ErrInvalidPorts is returned for a port range that is empty, starts at
// 0 or is reversed.
var ErrInvalidPorts = errors.New("invalid NAT port range")

// Ports returns the port range a configuration names: both zero means
// the default range.
func Ports(min, max uint16) (uint16, uint16, error) {
	if min == 0 && max == 0 {
		return DefaultPortMin, DefaultPortMax, nil
	}
	if min == 0 || max < min {
		return 0, 0, fmt.Errorf("%w: %d-%d: need 1 <= min <= max", ErrInvalidPorts, min, max)
	}
	return min, max, nil
}

// AddrBytes returns a's 16-byte form in the table (IPv4 in the first 4
// bytes) and its family.
func AddrBytes(a netip.Addr) (out [16]byte, family uint8) {
	if a.Is4() {
		b := a.As4()
		copy(out[:], b[:])
		return out, FamilyV4
	}
	return a.As16(), FamilyV6
}

// Addr is the inverse of AddrBytes.
func Addr(b [16]byte, family uint8) netip.Addr {
	if family == FamilyV4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// PortBytes converts a host-order port to the table's network order.
func PortBytes(p uint16) [2]byte { return [2]byte{byte(p >> 8), byte(p)} }

// PortOf converts a table port to host order.
func PortOf(b [2]byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

// ReverseOf returns the ingress key of the egress entry (k, e): the
// reply from k's destination to e's address and port.
func ReverseOf(k Key, e Entry) Key {
	return Key{SrcAddr: k.DstAddr, DstAddr: e.Addr, SrcPort: k.DstPort, DstPort: e.Port, Proto: k.Proto, Family: k.Family, Dir: Ingress}
}

// Protocol names the flow's protocol.
func (k Key) Protocol() nodeplane.Protocol { return nodeplane.Protocol(k.Proto) }
