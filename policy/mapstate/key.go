package mapstate

import (
	"errors"
	"fmt"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
)

// ErrInvalidKey is wrapped by the errors of keys that [Key.Validate]
// rejects.
var ErrInvalidKey = errors.New("invalid policy key")

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

// Key is the key of an entry in an endpoint's policy map. An entry matches
// a packet exchanged with peer identity P, L4 protocol proto and
// destination port port when
//
//   - Identity is P, or Identity is [identity.Unknown], which means any peer;
//   - Direction is the packet's direction relative to the endpoint;
//   - Protocol is [nodeplane.ProtoAny] (any protocol, in which case Port and
//     PortPrefixLen are 0), or Protocol is proto and the first PortPrefixLen
//     bits of Port equal those of port. A port range is a set of keys with
//     power-of-two prefixes ([PortRangePrefixes]); PortPrefixLen 16 is a
//     single port, 0 any port.
//
// For ICMP and ICMPv6 the port is the ICMP type.
type Key struct {
	Identity      identity.ID
	Direction     Direction
	Protocol      nodeplane.Protocol
	Port          uint16
	PortPrefixLen uint8
}

// Validate reports whether the key is well formed: a known direction, no
// port without a protocol, a port prefix of at most 16 bits and no port bits
// set beyond it. Errors wrap [ErrInvalidKey].
func (k Key) Validate() error {
	if k.Direction > Egress {
		return fmt.Errorf("policy key %v: %w: direction %d", k, ErrInvalidKey, k.Direction)
	}
	if k.PortPrefixLen > 16 {
		return fmt.Errorf("policy key %v: %w: port prefix length %d > 16", k, ErrInvalidKey, k.PortPrefixLen)
	}
	if k.Protocol == nodeplane.ProtoAny && (k.Port != 0 || k.PortPrefixLen != 0) {
		return fmt.Errorf("policy key %v: %w: port without protocol", k, ErrInvalidKey)
	}
	if k.Port&^portMask(k.PortPrefixLen) != 0 {
		return fmt.Errorf("policy key %v: %w: port %d has bits beyond its /%d prefix", k, ErrInvalidKey, k.Port, k.PortPrefixLen)
	}
	return nil
}

// L4PrefixLen returns how many bits of protocol and port the key fixes:
// 0 for any protocol, 8 for a protocol with any port, 8+PortPrefixLen
// otherwise. Between two matching entries of one identity the longer one
// wins, as in the kernel's LPM trie.
func (k Key) L4PrefixLen() uint8 {
	if k.Protocol == nodeplane.ProtoAny {
		return 0
	}
	return 8 + k.PortPrefixLen
}

// Covers reports whether k matches every packet o matches, ignoring the
// identities and directions of both.
func (k Key) Covers(o Key) bool {
	if k.Protocol == nodeplane.ProtoAny {
		return true
	}
	if k.Protocol != o.Protocol || o.Protocol == nodeplane.ProtoAny {
		return false
	}
	if k.PortPrefixLen > o.PortPrefixLen {
		return false
	}
	return o.Port&portMask(k.PortPrefixLen) == k.Port
}

func (k Key) String() string {
	l4 := "any"
	switch {
	case k.Protocol == nodeplane.ProtoAny:
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

// Compare orders keys by identity, direction, protocol, port and prefix
// length, for stable listings.
func (k Key) Compare(o Key) int {
	switch {
	case k.Identity != o.Identity:
		return cmpInt(k.Identity, o.Identity)
	case k.Direction != o.Direction:
		return cmpInt(k.Direction, o.Direction)
	case k.Protocol != o.Protocol:
		return cmpInt(k.Protocol, o.Protocol)
	case k.Port != o.Port:
		return cmpInt(k.Port, o.Port)
	}
	return cmpInt(k.PortPrefixLen, o.PortPrefixLen)
}

func cmpInt[T ~uint8 | ~uint16 | ~uint32](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Entry is the value of a policy-map entry.
type Entry struct {
	// Deny drops matching traffic with [monitor.DropPolicyDeny].
	Deny bool
	// ProxyPort redirects allowed traffic to an L7 proxy listening on this
	// port; 0 means no redirect.
	ProxyPort uint16
	// ProxyPortPriority decides between two matching allow entries, one for
	// the peer and one for any peer: the higher priority wins before the
	// more specific port does.
	ProxyPortPriority uint8
}
