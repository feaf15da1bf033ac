package ipcache

import (
	"net/netip"

	"github.com/nodeplane/nodeplane/identity"
)

// Entry is what the ipcache knows about a prefix.
type Entry struct {
	// Identity of the addresses in the prefix.
	Identity identity.ID
	// TunnelEndpoint is the node that hosts the addresses when they are
	// reached through an overlay; the zero Addr means none (local, or
	// native routing).
	TunnelEndpoint netip.Addr
	// Flags qualify the entry.
	Flags Flags
}

// Flags qualify an ipcache entry. Bits not defined here are carried
// through to writers unchanged.
type Flags uint8

const (
	// FlagSkipTunnel: send to the prefix without encapsulation even
	// though a tunnel endpoint is known (Cilium's flag_skip_tunnel).
	FlagSkipTunnel Flags = 1 << iota
)

// Writer receives every change of the ipcache. The datapath's ipcache
// map implements it, so that the kernel's view follows the Go model.
//
// Prefixes are masked ([netip.Prefix.Masked]) before they reach a writer,
// and are never IPv4-mapped IPv6 prefixes. Calls are serialised by the
// [IPCache]. A writer must apply a call completely or not at all, and
// DeletePrefix of a prefix the writer does not hold must succeed: the
// ipcache uses both to put a writer back in step after a failure.
type Writer interface {
	UpsertPrefix(prefix netip.Prefix, entry Entry) error
	DeletePrefix(prefix netip.Prefix) error
}
