package datapath

// DropReason says why the datapath dropped a packet. The numbers are
// Cilium's (pkg/monitor/api/drop.go), so tools that know them read ours.
type DropReason uint8

// Drop reasons.
const (
	// DropInvalidSourceIP: the source address is not the sending endpoint's
	// (anti-spoofing).
	DropInvalidSourceIP DropReason = 132
	// DropPolicyDenied: no policy entry allows the traffic and the endpoint
	// enforces policy in that direction (default deny).
	DropPolicyDenied DropReason = 133
	// DropInvalidPacket: malformed or truncated headers.
	DropInvalidPacket DropReason = 134
	// DropPolicyDeny: an explicit deny entry matched.
	DropPolicyDeny DropReason = 181
)
