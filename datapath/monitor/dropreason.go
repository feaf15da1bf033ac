package monitor

import "strconv"

// DropReason says why the datapath dropped a packet. The numbers are
// Cilium's (pkg/monitor/api/drop.go, bpf/lib/drop_reasons.h), so tools that
// know them read ours; 0 means not dropped.
type DropReason uint8

// Drop reasons the datapath uses. The comments name the C constant in
// datapath/bpf/events.h, which has Cilium's name.
const (
	// DropInvalidSourceIP: the source address is not the sending endpoint's
	// (anti-spoofing). DROP_INVALID_SIP.
	DropInvalidSourceIP DropReason = 132
	// DropPolicyDenied: no policy entry allows the traffic and the endpoint
	// enforces policy in that direction (default deny). DROP_POLICY.
	DropPolicyDenied DropReason = 133
	// DropInvalidPacket: malformed or truncated IP header. DROP_INVALID.
	DropInvalidPacket DropReason = 134
	// DropCTInvalidHeader: the L4 header is truncated. DROP_CT_INVALID_HDR.
	DropCTInvalidHeader DropReason = 135
	// DropFragNeeded: a packet that does not fit the MTU of its route
	// once lb's north-south DSR header is added; the client is sent a
	// fragmentation needed or packet too big. DROP_FRAG_NEEDED.
	DropFragNeeded DropReason = 136
	// DropCTUnknownProto: an L4 protocol conntrack cannot track (only TCP,
	// UDP, SCTP, ICMP and ICMPv6 pass). DROP_CT_UNKNOWN_PROTO.
	DropCTUnknownProto DropReason = 137
	// DropUnknownL3: neither IPv4, IPv6 nor ARP. DROP_UNKNOWN_L3.
	DropUnknownL3 DropReason = 139
	// DropWriteError: writing to the packet failed (for the overlay: its
	// tunnel key could not be set). DROP_WRITE_ERROR.
	DropWriteError DropReason = 141
	// DropNoTunnelKey: a packet on the tunnel device carries no tunnel
	// key. DROP_NO_TUNNEL_KEY.
	DropNoTunnelKey DropReason = 147
	// DropUnknownTarget: the stack sent an endpoint a packet that is not
	// addressed to it. DROP_UNKNOWN_TARGET.
	DropUnknownTarget DropReason = 150
	// DropNoTunnelEndpoint: the node routed a packet into the tunnel
	// device to an address the ipcache gives no tunnel endpoint.
	// DROP_NO_TUNNEL_ENDPOINT.
	DropNoTunnelEndpoint DropReason = 160
	// DropCTCreateFailed: the conntrack entry of an allowed connection
	// could not be created. DROP_CT_CREATE_FAILED.
	DropCTCreateFailed DropReason = 155
	// DropInvalidExtHeader: an IPv6 extension header is truncated, or there
	// are more than the datapath skips. DROP_INVALID_EXTHDR.
	DropInvalidExtHeader DropReason = 156
	// DropEDTHorizon: the endpoint sends faster than its egress rate
	// allows, so far that the packet's departure time would lie beyond the
	// drop horizon (package bandwidth, datapath/bpf/edt.h).
	// DROP_EDT_HORIZON.
	DropEDTHorizon DropReason = 162
	// DropFragNoSupport: a fragment addressed to a load-balanced frontend;
	// its ports are not known, so it cannot be balanced.
	// DROP_FRAG_NOSUPPORT.
	DropFragNoSupport DropReason = 157
	// DropNoService: a packet to a load-balanced frontend that has no
	// backend taking new flows. DROP_NO_SERVICE.
	DropNoService DropReason = 158
	// DropNATNoMapping: SNAT found no free NAT port for a new flow.
	// DROP_NAT_NO_MAPPING.
	DropNATNoMapping DropReason = 167
	// DropInvalidIdentity: the VNI of a tunnelled packet is not an
	// identity a node sends (0, or host: nodes present their own traffic
	// as remote-node). DROP_INVALID_IDENTITY.
	DropInvalidIdentity DropReason = 171
	// DropUnknownSender: a tunnelled packet's outer source is not a node
	// the ipcache knows (reserved:remote-node). DROP_UNKNOWN_SENDER.
	DropUnknownSender DropReason = 172
	// DropFragmentNotFound: a later fragment of a datagram whose first
	// fragment the datapath has not seen (lost, reordered, or evicted from
	// the fragments map), so its ports are unknown. DROP_FRAG_NOT_FOUND.
	DropFragmentNotFound DropReason = 175
	// DropProxyLookupFailed: a connection whose policy entry has a proxy
	// port found no proxy socket on that port in the node's namespace, or
	// reached the endpoint where no proxy can take it (its ingress proxy
	// port at the hook that sees the stack's packets, datapath/bpf/proxy.h).
	// DROP_PROXY_LOOKUP_FAILED.
	DropProxyLookupFailed DropReason = 178
	// DropProxySetFailed: the proxy's socket was found but the packet
	// could not be assigned to it. DROP_PROXY_SET_FAILED.
	DropProxySetFailed DropReason = 179
	// DropProxyUnknownProto: a proxy port on an entry of a protocol other
	// than TCP and UDP. DROP_PROXY_UNKNOWN_PROTO.
	DropProxyUnknownProto DropReason = 180
	// DropPolicyDeny: an explicit deny entry matched. DROP_POLICY_DENY.
	DropPolicyDeny DropReason = 181
	// DropEndpointNotReady: a new connection of an endpoint that has no
	// policy map or endpoint entry: it is being added or deleted.
	// DROP_EP_NOT_READY.
	DropEndpointNotReady DropReason = 203
)

// String returns the name Hubble gives the reason (flow.proto's DropReason
// enum), or the number for reasons this package does not produce.
func (r DropReason) String() string {
	switch r {
	case 0:
		return "NOT_DROPPED"
	case DropInvalidSourceIP:
		return "INVALID_SOURCE_IP"
	case DropPolicyDenied:
		return "POLICY_DENIED"
	case DropInvalidPacket:
		return "INVALID_PACKET_DROPPED"
	case DropCTInvalidHeader:
		return "CT_TRUNCATED_OR_INVALID_HEADER"
	case DropFragNeeded:
		return "FRAG_NEEDED"
	case DropCTUnknownProto:
		return "CT_UNKNOWN_L4_PROTOCOL"
	case DropUnknownL3:
		return "UNSUPPORTED_L3_PROTOCOL"
	case DropWriteError:
		return "ERROR_WRITING_TO_PACKET"
	case DropNoTunnelKey:
		return "ERROR_RETRIEVING_TUNNEL_KEY"
	case DropInvalidIdentity:
		return "INVALID_IDENTITY"
	case DropUnknownSender:
		return "UNKNOWN_SENDER"
	case DropUnknownTarget:
		return "UNKNOWN_L3_TARGET_ADDRESS"
	case DropNoTunnelEndpoint:
		return "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT"
	case DropCTCreateFailed:
		return "CT_MAP_INSERTION_FAILED"
	case DropInvalidExtHeader:
		return "INVALID_IPV6_EXTENSION_HEADER"
	case DropEDTHorizon:
		return "REACHED_EDT_RATE_LIMITING_DROP_HORIZON"
	case DropFragNoSupport:
		return "IP_FRAGMENTATION_NOT_SUPPORTED"
	case DropNoService:
		return "SERVICE_BACKEND_NOT_FOUND"
	case DropNATNoMapping:
		return "NO_MAPPING_FOR_NAT_MASQUERADE"
	case DropFragmentNotFound:
		return "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND"
	case DropProxyLookupFailed:
		return "SOCKET_LOOKUP_FAILED"
	case DropProxySetFailed:
		return "SOCKET_ASSIGN_FAILED"
	case DropProxyUnknownProto:
		return "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL"
	case DropPolicyDeny:
		return "POLICY_DENY"
	case DropEndpointNotReady:
		return "DROP_EP_NOT_READY"
	}
	return "DropReason(" + strconv.Itoa(int(r)) + ")"
}
