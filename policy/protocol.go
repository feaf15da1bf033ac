package policy

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// Protocol is an IP protocol number. ProtoAny (0) in a [PortProtocol] means
// TCP, UDP and SCTP, as in Cilium; in a datapath key it means every
// protocol.
type Protocol uint8

// Protocols a policy can name.
const (
	ProtoAny    Protocol = 0
	ProtoICMP   Protocol = 1
	ProtoIGMP   Protocol = 2
	ProtoIPIP   Protocol = 4
	ProtoTCP    Protocol = 6
	ProtoUDP    Protocol = 17
	ProtoIPv6   Protocol = 41
	ProtoGRE    Protocol = 47
	ProtoESP    Protocol = 50
	ProtoAH     Protocol = 51
	ProtoICMPv6 Protocol = 58
	ProtoVRRP   Protocol = 112
	ProtoSCTP   Protocol = 132
)

var protocolNames = map[Protocol]string{
	ProtoAny: "ANY", ProtoICMP: "ICMP", ProtoIGMP: "IGMP", ProtoIPIP: "IPIP",
	ProtoTCP: "TCP", ProtoUDP: "UDP", ProtoIPv6: "IPV6", ProtoGRE: "GRE",
	ProtoESP: "ESP", ProtoAH: "AH", ProtoICMPv6: "ICMPV6", ProtoVRRP: "VRRP",
	ProtoSCTP: "SCTP",
}

func (p Protocol) String() string {
	if n, ok := protocolNames[p]; ok {
		return n
	}
	return strconv.Itoa(int(p))
}

// ParseProtocol reads a protocol name as Cilium does, case-insensitively:
// TCP, UDP, SCTP, ICMP, ICMPv6, ANY (or empty), VRRP, IGMP, GRE, IPIP, IPV6,
// ESP, AH; or a protocol number.
func ParseProtocol(s string) (Protocol, error) {
	if s == "" {
		return ProtoAny, nil
	}
	u := strings.ToUpper(s)
	for p, n := range protocolNames {
		if n == u {
			return p, nil
		}
	}
	if n, err := strconv.ParseUint(s, 10, 8); err == nil {
		return Protocol(n), nil
	}
	return 0, fmt.Errorf("unknown protocol %q", s)
}

// portProtocolValid reports whether a toPorts entry may name the protocol:
// Cilium's L4Proto.Validate. ICMP is written with icmps, not toPorts.
func portProtocolValid(p Protocol) bool {
	switch p {
	case ProtoAny, ProtoTCP, ProtoUDP, ProtoSCTP, ProtoVRRP, ProtoIGMP,
		ProtoGRE, ProtoIPIP, ProtoIPv6, ProtoESP, ProtoAH:
		return true
	}
	return false
}

// extendedProtocol reports whether p has no ports (Cilium's extended IP
// protocols).
func extendedProtocol(p Protocol) bool {
	switch p {
	case ProtoVRRP, ProtoIGMP, ProtoGRE, ProtoIPIP, ProtoIPv6, ProtoESP, ProtoAH:
		return true
	}
	return false
}

// PortPrefix is a block of ports that share their first Bits bits with
// Port: the unit of a policy-map key. Bits 16 is one port, 0 every port.
type PortPrefix struct {
	Port uint16
	Bits uint8
}

// Last returns the highest port in the block.
func (p PortPrefix) Last() uint16 {
	return p.Port | ^portMask(p.Bits)
}

func (p PortPrefix) String() string {
	switch p.Bits {
	case 16:
		return strconv.Itoa(int(p.Port))
	case 0:
		return "*"
	}
	return fmt.Sprintf("%d-%d", p.Port, p.Last())
}

func portMask(bitsLen uint8) uint16 {
	if bitsLen >= 16 {
		return 0xFFFF
	}
	return ^uint16(0xFFFF >> bitsLen)
}

// PortRangePrefixes splits the range first..last into the fewest
// power-of-two aligned blocks that cover exactly it, the way an LPM key
// set must express a range. A range with last <= first is the single port
// first; 0..0 and 0..65535 are every port.
func PortRangePrefixes(first, last uint16) []PortPrefix {
	if first == 0 && (last == 0 || last == 0xFFFF) {
		return []PortPrefix{{0, 0}}
	}
	if last <= first {
		return []PortPrefix{{first, 16}}
	}
	var out []PortPrefix
	// Walk up from first: at each step take the largest aligned block that
	// starts at cur and does not pass last.
	cur := uint32(first)
	end := uint32(last)
	for cur <= end {
		// Largest block size allowed by alignment of cur.
		size := uint32(1) << bits.TrailingZeros32(cur|1<<16)
		for cur+size-1 > end {
			size >>= 1
		}
		out = append(out, PortPrefix{Port: uint16(cur), Bits: uint8(16 - bits.TrailingZeros32(size))})
		cur += size
	}
	return out
}
