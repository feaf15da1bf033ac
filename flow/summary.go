package flow

import (
	"strconv"
	"strings"
	"time"

	"github.com/nodeplane/nodeplane"
)

// Summary returns the text Hubble puts in a flow's Summary field, which
// `hubble observe` prints after the verdict: "TCP Flags: SYN, ACK",
// "ICMPv4 EchoRequest", "UDP", and for L7 flows "HTTP/1.1 GET
// http://svc/public/x" or "HTTP/1.1 403 0ms (GET http://svc/private)".
// Hubble takes the L3/L4 text from the last layer its packet decoder
// recognised, naming ICMP messages as gopacket does, and the L7 text from
// the access-log record (its parser/seven); this is the same text from the
// flow. The JSON encoding and flow/hubble both use it.
func (f *Flow) Summary() string { return string(f.AppendSummary(nil)) }

// AppendSummary appends [Flow.Summary]'s text to b; for L3/L4 flows it
// does not allocate.
func (f *Flow) AppendSummary(b []byte) []byte {
	if f.Type == L7 {
		return append(b, f.L7.summary()...)
	}
	switch f.L4.Protocol {
	case nodeplane.ProtoTCP:
		b = append(b, "TCP Flags: "...)
		// Hubble's order: SYN ACK RST FIN PSH URG ECE CWR.
		first := true
		for _, i := range [...]uint8{1, 4, 2, 0, 3, 5, 6, 7} {
			if f.L4.TCPFlags&(1<<i) != 0 {
				if !first {
					b = append(b, ", "...)
				}
				first = false
				b = append(b, jsonTCPFlags[i]...)
			}
		}
		return b
	case nodeplane.ProtoUDP:
		return append(b, "UDP"...)
	case nodeplane.ProtoSCTP:
		return append(b, "SCTP"...)
	case nodeplane.ProtoICMP:
		return appendICMPName(append(b, "ICMPv4 "...), icmpv4Names, f.L4.ICMPType, f.L4.ICMPCode)
	case nodeplane.ProtoICMPv6:
		return appendICMPName(append(b, "ICMPv6 "...), icmpv6Names, f.L4.ICMPType, f.L4.ICMPCode)
	}
	switch f.IP.Version() {
	case IPv4:
		return append(b, "IPv4"...)
	case IPv6:
		return append(b, "IPv6"...)
	}
	return b
}

// summary is Hubble's parser/seven text for HTTP and DNS records.
func (l *Layer7) summary() string {
	switch {
	case l.HTTP != nil:
		req := l.HTTP.Method + " " + l.HTTP.URL
		if l.Type == L7Response {
			return l.HTTP.Protocol + " " + strconv.FormatUint(uint64(l.HTTP.Code), 10) + " " +
				strconv.FormatInt(int64(l.Latency/time.Millisecond), 10) + "ms (" + req + ")"
		}
		return l.HTTP.Protocol + " " + req
	case l.DNS != nil:
		qtypes := strings.Join(l.DNS.Qtypes, ",")
		if l.Type != L7Response {
			return "DNS Query " + l.DNS.Query + " " + qtypes
		}
		var answer string
		if l.DNS.Rcode != 0 {
			answer = "RCode: " + dnsRcodeName(l.DNS.Rcode)
		} else {
			ips := make([]string, len(l.DNS.IPs))
			for i, ip := range l.DNS.IPs {
				ips[i] = ip.String()
			}
			answer = strconv.Quote(strings.Join(ips, ",")) + " TTL: " + strconv.FormatUint(uint64(l.DNS.TTL), 10)
		}
		source := "Query"
		if l.DNS.ObservationSource == DNSSourceProxy {
			source = "Proxy"
		}
		return "DNS Answer " + answer + " (" + source + " " + l.DNS.Query + " " + qtypes + ")"
	}
	return ""
}

// dnsRcodeName names a DNS response code as miekg/dns's RcodeToString.
func dnsRcodeName(rc uint32) string {
	switch rc {
	case 0:
		return "NOERROR"
	case 1:
		return "FORMERR"
	case 2:
		return "SERVFAIL"
	case 3:
		return "NXDOMAIN"
	case 4:
		return "NOTIMP"
	case 5:
		return "REFUSED"
	}
	return strconv.FormatUint(uint64(rc), 10)
}

type icmpType struct {
	name  string
	codes map[uint8]string // nil: the type has no codes
}

// appendICMPName formats a type and code as gopacket's
// ICMPv4TypeCode.String and ICMPv6TypeCode.String do.
func appendICMPName(b []byte, types map[uint8]icmpType, typ, code uint8) []byte {
	t, ok := types[typ]
	switch {
	case !ok:
		b = strconv.AppendUint(b, uint64(typ), 10)
		b = append(b, '(')
		b = strconv.AppendUint(b, uint64(code), 10)
		return append(b, ')')
	case t.codes == nil && code == 0:
		return append(b, t.name...)
	}
	b = append(b, t.name...)
	if c, ok := t.codes[code]; ok {
		b = append(b, '(')
		b = append(b, c...)
		return append(b, ')')
	}
	b = append(b, "(Code: "...)
	b = strconv.AppendUint(b, uint64(code), 10)
	return append(b, ')')
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
