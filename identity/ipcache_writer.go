package identity

import "net/netip"

// IPCacheEntry is what the ipcache knows about a prefix.
type IPCacheEntry struct {
	// Identity of the addresses in the prefix.
	Identity ID
	// TunnelEndpoint is the node that hosts the addresses when they are
	// reached through an overlay; the zero Addr means none (local, or
	// native routing).
	TunnelEndpoint netip.Addr
	// Flags qualify the entry.
	Flags IPCacheFlags
}

// IPCacheFlags qualify an ipcache entry.
type IPCacheFlags uint8

// IPCacheWriter receives every change of the ipcache. The datapath's ipcache
// map implements it, so that the kernel's view follows the Go model.
//
// Prefixes are masked ([netip.Prefix.Masked]) before they reach a writer.
type IPCacheWriter interface {
	UpsertPrefix(prefix netip.Prefix, entry IPCacheEntry) error
	DeletePrefix(prefix netip.Prefix) error
}
