package mapstate

import (
	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
)

// Decision is the outcome of a policy lookup.
type Decision struct {
	// Allowed is true when the traffic may pass.
	Allowed bool
	// Reason is [monitor.DropPolicyDenied] or [monitor.DropPolicyDeny]
	// when Allowed is false.
	Reason monitor.DropReason
	// ProxyPort is the L7 redirect of the chosen entry, if any.
	ProxyPort uint16
	// Key is the entry that decided, valid when Matched.
	Key     Key
	Matched bool
}

// Lookup is the Go model of the datapath's policy decision. Given the whole
// content of an endpoint's policy map it returns what the BPF program
// decides for a packet with the given peer, direction, protocol and port.
// Tests use it as the oracle for the kernel; policy compilers use it to
// check their output.
//
// The program looks up the peer's identity and the wildcard identity 0,
// each with longest-prefix match on protocol and port. A deny found for the
// peer decides at once. Otherwise the wildcard entry wins if it denies, if
// there is no peer entry, if its proxy-port priority is higher, or at equal
// priority if its L4 prefix is longer; else the peer entry wins. No match is
// a default-deny drop ([monitor.DropPolicyDenied]); a winning deny entry is
// [monitor.DropPolicyDeny]. The order is Cilium's (bpf/lib/policy.h).
func Lookup(entries State, peer identity.ID, dir Direction, proto nodeplane.Protocol, port uint16) Decision {
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
	return Decision{Reason: monitor.DropPolicyDenied}
}

func decide(k Key, e Entry) Decision {
	if e.Deny {
		return Decision{Reason: monitor.DropPolicyDeny, Key: k, Matched: true}
	}
	return Decision{Allowed: true, ProxyPort: e.ProxyPort, Key: k, Matched: true}
}

// longestMatch finds the entry for id with the longest L4 prefix that covers
// the tuple, as one LPM trie lookup does. It probes the 18 possible prefixes
// from the longest down rather than scanning the map.
func longestMatch(entries State, id identity.ID, dir Direction, proto nodeplane.Protocol, port uint16) (Key, Entry, bool) {
	for plen := 16; plen >= 0; plen-- {
		k := Key{Identity: id, Direction: dir, Protocol: proto, PortPrefixLen: uint8(plen),
			Port: port & portMask(uint8(plen))}
		if e, ok := entries[k]; ok {
			return k, e, true
		}
	}
	k := Key{Identity: id, Direction: dir}
	if e, ok := entries[k]; ok {
		return k, e, true
	}
	return Key{}, Entry{}, false
}
