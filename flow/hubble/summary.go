package hubble

import (
	"strconv"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/flow"
)

// Summary returns the text Hubble puts in a flow's Summary field, which
// `hubble observe` prints after the verdict: "TCP Flags: SYN, ACK",
// "ICMPv4 EchoRequest", "UDP". Hubble takes it from the last layer its
// packet decoder recognised, naming ICMP messages as gopacket does; this
// is the same text from the decoded flow.
func Summary(f *flow.Flow) string {
	switch f.L4.Protocol {
	case nodeplane.ProtoTCP:
		return "TCP Flags: " + f.L4.TCPFlags.String()
	case nodeplane.ProtoUDP:
		return "UDP"
	case nodeplane.ProtoSCTP:
		return "SCTP"
	case nodeplane.ProtoICMP:
		return "ICMPv4 " + icmpName(icmpv4Names, f.L4.ICMPType, f.L4.ICMPCode)
	case nodeplane.ProtoICMPv6:
		return "ICMPv6 " + icmpName(icmpv6Names, f.L4.ICMPType, f.L4.ICMPCode)
	}
	switch f.IP.Version() {
	case flow.IPv4:
		return "IPv4"
	case flow.IPv6:
		return "IPv6"
	}
	return ""
}

type icmpType struct {
	name  string
	codes map[uint8]string // nil: the type has no codes
}

// icmpName formats a type and code as gopacket's ICMPv4TypeCode.String
// and ICMPv6TypeCode.String do.
func icmpName(types map[uint8]icmpType, typ, code uint8) string {
	t, ok := types[typ]
	switch {
	case !ok:
		return strconv.Itoa(int(typ)) + "(" + strconv.Itoa(int(code)) + ")"
	case t.codes == nil && code == 0:
		return t.name
	}
	if c, ok := t.codes[code]; ok {
		return t.name + "(" + c + ")"
	}
	return t.name + "(Code: " + strconv.Itoa(int(code)) + ")"
}

var icmpv4Names = map[uint8]icmpType{
	0: {"EchoReply", nil},
	3: {"DestinationUnreachable", map[uint8]string{
		0: "Net", 1: "Host", 2: "Protocol", 3: "Port", 4: "FragmentationNeeded",
		5: "SourceRoutingFailed", 6: "NetUnknown", 7: "HostUnknown", 8: "SourceIsolated",
		9: "NetAdminProhibited", 10: "HostAdminProhibited", 11: "NetTOS", 12: "HostTOS",
		13: "CommAdminProhibited", 14: "HostPrecedence", 15: "PrecedenceCutoff",
	}},
	4:  {"SourceQuench", nil},
	5:  {"Redirect", map[uint8]string{0: "Net", 1: "Host", 2: "TOS+Net", 3: "TOS+Host"}},
	8:  {"EchoRequest", nil},
	9:  {"RouterAdvertisement", nil},
	10: {"RouterSolicitation", nil},
	11: {"TimeExceeded", map[uint8]string{0: "TTLExceeded", 1: "FragmentReassemblyTimeExceeded"}},
	12: {"ParameterProblem", map[uint8]string{0: "PointerIndicatesError", 1: "MissingOption", 2: "BadLength"}},
	13: {"TimestampRequest", nil},
	14: {"TimestampReply", nil},
	15: {"InfoRequest", nil},
	16: {"InfoReply", nil},
	17: {"AddressMaskRequest", nil},
	18: {"AddressMaskReply", nil},
}

var icmpv6Names = map[uint8]icmpType{
	1: {"DestinationUnreachable", map[uint8]string{
		0: "NoRouteToDst", 1: "AdminProhibited", 2: "BeyondScopeOfSrc", 3: "AddressUnreachable",
		4: "PortUnreachable", 5: "SrcAddressFailedPolicy", 6: "RejectRouteToDst",
	}},
	2:   {"PacketTooBig", nil},
	3:   {"TimeExceeded", map[uint8]string{0: "HopLimitExceeded", 1: "FragmentReassemblyTimeExceeded"}},
	4:   {"ParameterProblem", map[uint8]string{0: "ErroneousHeaderField", 1: "UnrecognizedNextHeader", 2: "UnrecognizedIPv6Option"}},
	128: {"EchoRequest", nil},
	129: {"EchoReply", nil},
	133: {"RouterSolicitation", nil},
	134: {"RouterAdvertisement", nil},
	135: {"NeighborSolicitation", nil},
	136: {"NeighborAdvertisement", nil},
	137: {"Redirect", nil},
}
