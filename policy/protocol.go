package policy

import "github.com/nodeplane/nodeplane"

// portProtocolValid reports whether a toPorts entry may name the protocol:
// Cilium's L4Proto.Validate. ICMP is written with icmps, not toPorts.
func portProtocolValid(p nodeplane.Protocol) bool {
	switch p {
	case nodeplane.ProtoAny, nodeplane.ProtoTCP, nodeplane.ProtoUDP, nodeplane.ProtoSCTP,
		nodeplane.ProtoVRRP, nodeplane.ProtoIGMP, nodeplane.ProtoGRE, nodeplane.ProtoIPIP,
		nodeplane.ProtoIPv6, nodeplane.ProtoESP, nodeplane.ProtoAH:
		return true
	}
	return false
}

// extendedProtocol reports whether p has no ports (Cilium's extended IP
// protocols).
func extendedProtocol(p nodeplane.Protocol) bool {
	switch p {
	case nodeplane.ProtoVRRP, nodeplane.ProtoIGMP, nodeplane.ProtoGRE, nodeplane.ProtoIPIP,
		nodeplane.ProtoIPv6, nodeplane.ProtoESP, nodeplane.ProtoAH:
		return true
	}
	return false
}
