package datapath

import (
	"fmt"

	"github.com/nodeplane/nodeplane/identity"
)

// Direction is the direction of traffic as seen by the endpoint whose policy
// map holds an entry.
type Direction uint8

const (
	// Ingress is traffic arriving at the endpoint.
	Ingress Direction = 0
	// Egress is traffic leaving the endpoint.
	Egress Direction = 1
)

func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("Direction(%d)", uint8(d))
}

// PolicyKey is the key of an entry in an endpoint's policy map. An entry
// matches a packet exchanged with peer identity P, L4 protocol proto and
// destination port port when
//
//   - Identity is P, or Identity is [identity.Unknown], which means any peer;
//   - Direction is the packet's direction relative to the endpoint;
//   - Protocol is 0 (any protocol, in which case Port and PortPrefixLen are
//     0), or Protocol is proto and the first PortPrefixLen bits of Port equal
//     those of port. A port range is a set of keys with power-of-two
//     prefixes; PortPrefixLen 16 is a single port, 0 any port.
//
// For ICMP and ICMPv6 the port is the ICMP type.
type PolicyKey struct {
	Identity      identity.ID
	Direction     Direction
	Protocol      uint8
	Port          uint16
	PortPrefixLen uint8
}

// Validate reports whether the key is well formed: a known direction, no
// port without a protocol, a port prefix of at most 16 bits and no port bits
// set beyond it.
func (k PolicyKey) Validate() error {
	if k.Direction > Egress {
		return fmt.Errorf("policy key %v: %w: direction %d", k, ErrInvalidPolicyKey, k.Direction)
	}
	if k.PortPrefixLen > 16 {
		return fmt.Errorf("policy key %v: %w: port prefix length %d > 16", k, ErrInvalidPolicyKey, k.PortPrefixLen)
	}
	if k.Protocol == 0 && (k.Port != 0 || k.PortPrefixLen != 0) {
		return fmt.Errorf("policy key %v: %w: port without protocol", k, ErrInvalidPolicyKey)
	}
	if k.Port&^portMask(k.PortPrefixLen) != 0 {
		return fmt.Errorf("policy key %v: %w: port %d has bits beyond its /%d prefix", k, ErrInvalidPolicyKey, k.Port, k.PortPrefixLen)
	}
	return nil
}

// L4PrefixLen returns how many bits of protocol and port the key fixes:
// 0 for any protocol, 8 for a protocol with any port, 8+PortPrefixLen
// otherwise. Between two matching entries of one identity the longer one
// wins, as in the kernel's LPM trie.
func (k PolicyKey) L4PrefixLen() uint8 {
	if k.Protocol == 0 {
		return 0
	}
	return 8 + k.PortPrefixLen
}

func (k PolicyKey) String() string {
	l4 := "any"
	switch {
	case k.Protocol == 0:
	case k.PortPrefixLen == 0:
		l4 = fmt.Sprintf("proto %d", k.Protocol)
	case k.PortPrefixLen == 16:
		l4 = fmt.Sprintf("%d/proto %d", k.Port, k.Protocol)
	default:
		last := uint32(k.Port) | uint32(^portMask(k.PortPrefixLen))
		l4 = fmt.Sprintf("%d-%d/proto %d", k.Port, last, k.Protocol)
	}
	return fmt.Sprintf("{%s identity %d %s}", k.Direction, uint32(k.Identity), l4)
}

func portMask(prefixLen uint8) uint16 {
	if prefixLen >= 16 {
		return 0xFFFF
	}
	return ^uint16(0xFFFF >> prefixLen)
}

// matches reports whether the key covers the given L4 tuple, ignoring the
// identity.
func (k PolicyKey) matches(dir Direction, proto uint8, port uint16) bool {
	if k.Direction != dir {
		return false
	}
	if k.Protocol == 0 {
		return true
	}
	return k.Protocol == proto && port&portMask(k.PortPrefixLen) == k.Port
}

// PolicyEntry is the value of a policy-map entry.
type PolicyEntry struct {
	// Deny drops matching traffic with [DropPolicyDeny].
	Deny bool
	// ProxyPort redirects allowed traffic to an L7 proxy listening on this
	// port; 0 means no redirect.
	ProxyPort uint16
	// ProxyPortPriority decides between two matching allow entries, one for
	// the peer and one for any peer: the higher priority wins before the
	// more specific port does.
	ProxyPortPriority uint8
}

// PolicyDecision is the outcome of a policy lookup.
type PolicyDecision struct {
	// Allowed is true when the traffic may pass.
	Allowed bool
	// Reason is DropPolicyDenied or DropPolicyDeny when Allowed is false.
	Reason DropReason
	// ProxyPort is the L7 redirect of the chosen entry, if any.
	ProxyPort uint16
	// Key is the entry that decided, valid when Matched.
	Key     PolicyKey
	Matched bool
}

// LookupPolicy is the Go model of the datapath's policy decision. Given the
// whole content of an endpoint's policy map it returns what the BPF program
// decides for a packet with the given peer, direction, protocol and port.
// Tests use it as the oracle for the kernel; policy compilers use it to
// check their output.
//
// The program looks up the peer's identity and the wildcard identity 0,
// each with longest-prefix match on protocol and port. A deny found for the
// peer decides at once. Otherwise the wildcard entry wins if it denies, if
// there is no peer entry, if its proxy-port priority is higher, or at equal
// priority if its L4 prefix is longer; else the peer entry wins. No match is
// a default-deny drop ([DropPolicyDenied]); a winning deny entry is
// [DropPolicyDeny]. The order is Cilium's (bpf/lib/policy.h).
func LookupPolicy(entries map[PolicyKey]PolicyEntry, peer identity.ID, dir Direction, proto uint8, port uint16) PolicyDecision {
	l3Key, l3, l3ok := longestMatch(entries, peer, dir, proto, port)
	if l3ok && l3.Deny {
		return decide(l3Key, l3)
	}
	l4Key, l4, l4ok := longestMatch(entries, identity.Unknown, dir, proto, port)
	switch {
	case l4ok && (l4.Deny || !l3ok ||
		l4.ProxyPortPriority > l3.ProxyPortPriority ||
		l4.ProxyPortPriority == l3.ProxyPortPriority && l4Key.L4PrefixLen() > l3Key.L4PrefixLen()):
		return decide(l4Key, l4)
	case l3ok:
		return decide(l3Key, l3)
	}
	return PolicyDecision{Reason: DropPolicyDenied}
}

func decide(k PolicyKey, e PolicyEntry) PolicyDecision {
	if e.Deny {
		return PolicyDecision{Reason: DropPolicyDeny, Key: k, Matched: true}
	}
	return PolicyDecision{Allowed: true, ProxyPort: e.ProxyPort, Key: k, Matched: true}
}

// longestMatch finds the entry for id with the longest L4 prefix that covers
// the tuple, as one LPM trie lookup does. It probes the 18 possible prefixes
// from the longest down rather than scanning the map.
func longestMatch(entries map[PolicyKey]PolicyEntry, id identity.ID, dir Direction, proto uint8, port uint16) (PolicyKey, PolicyEntry, bool) {
	for plen := 16; plen >= 0; plen-- {
		k := PolicyKey{Identity: id, Direction: dir, Protocol: proto, PortPrefixLen: uint8(plen),
			Port: port & portMask(uint8(plen))}
		if e, ok := entries[k]; ok {
			return k, e, true
		}
	}
	k := PolicyKey{Identity: id, Direction: dir}
	if e, ok := entries[k]; ok {
		return k, e, true
	}
	return PolicyKey{}, PolicyEntry{}, false
}
