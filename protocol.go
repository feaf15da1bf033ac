package nodeplane

import (
	"fmt"
	"strconv"
	"strings"
)

// Protocol is an IP protocol number (IANA), the one protocol type of every
// package: policy rules, policy-map keys, datapath tuples and load-balancer
// frontends all use it. [ProtoAny] (0) means "every protocol" where a
// package allows that (a policy port rule, a policy-map key, a Maglev
// backend of a protocol-agnostic service); elsewhere it is invalid.
type Protocol uint8

// Protocols by their IANA numbers.
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

// protocolNames are Cilium's spellings (pkg/policy/api L4Proto).
var protocolNames = [...]struct {
	p    Protocol
	name string
}{
	{ProtoAny, "ANY"}, {ProtoICMP, "ICMP"}, {ProtoIGMP, "IGMP"}, {ProtoIPIP, "IPIP"},
	{ProtoTCP, "TCP"}, {ProtoUDP, "UDP"}, {ProtoIPv6, "IPV6"}, {ProtoGRE, "GRE"},
	{ProtoESP, "ESP"}, {ProtoAH, "AH"}, {ProtoICMPv6, "ICMPV6"}, {ProtoVRRP, "VRRP"},
	{ProtoSCTP, "SCTP"},
}

// String returns Cilium's name of the protocol ("TCP", "ICMPV6", "ANY"),
// or its number for a protocol without one.
func (p Protocol) String() string {
	for _, n := range protocolNames {
		if n.p == p {
			return n.name
		}
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
	for _, n := range protocolNames {
		if n.name == u {
			return n.p, nil
		}
	}
	if n, err := strconv.ParseUint(s, 10, 8); err == nil {
		return Protocol(n), nil
	}
	return 0, fmt.Errorf("unknown protocol %q", s)
}

// StackMode says which IP families the cluster runs. It decides the
// identity of the world outside the cluster, so the identity allocator that
// labels CIDRs and the policy repository that selects them must agree on
// it: both take this one type.
//
// The zero value is [DualStack], the mode every package used by default
// before the type existed (policy's default; identity's allocators only
// differ in the labels of zero-length prefixes).
type StackMode uint8

const (
	// DualStack: IPv4 and IPv6. Addresses outside the cluster are
	// reserved:world-ipv4 and reserved:world-ipv6, and 0.0.0.0/0 selects
	// only the former.
	DualStack StackMode = iota
	// SingleStack: one IP family. The world outside the cluster is the
	// single reserved:world identity.
	SingleStack
)

func (m StackMode) String() string {
	switch m {
	case DualStack:
		return "dual-stack"
	case SingleStack:
		return "single-stack"
	}
	return "StackMode(" + strconv.Itoa(int(m)) + ")"
}
