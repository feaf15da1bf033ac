package datapath

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
)

// IPCache is the datapath's ipcache map: prefixes to identities, longest
// prefix first. The programs take the identity of every remote address
// from it; an address it does not cover is the world
// (identity.ReservedWorld). Local endpoints are found in the endpoints map
// first, so the ipcache need not hold them.
//
// IPCache implements [ipcache.Writer], so the identity package's
// ipcache can drive it. Its methods are safe for concurrent use.
type IPCache struct {
	m *ebpf.Map
}

var _ ipcache.Writer = (*IPCache)(nil)

// UpsertPrefix maps a prefix to an entry. The prefix's host bits are
// ignored. An IPv4-mapped IPv6 prefix is an IPv6 prefix, as on the wire.
// Identity 0 and IDs that fit no range are refused with an error wrapping
// identity.ErrInvalidID.
func (c *IPCache) UpsertPrefix(prefix netip.Prefix, entry ipcache.Entry) error {
	if !prefix.IsValid() {
		return fmt.Errorf("ipcache: upsert: invalid prefix %v", prefix)
	}
	// Identity 0 means "any peer" in a policy key; an ID of no range is
	// no one's. (Cluster-scoped IDs of cluster 0 are accepted, as the wire
	// format carries them.)
	if id := entry.Identity; id == identity.Unknown || id.Scope() == identity.ScopeInvalid {
		return fmt.Errorf("ipcache: upsert %v: identity %d: %w", prefix, uint32(id), identity.ErrInvalidID)
	}
	info := ipcacheInfo{Identity: uint32(entry.Identity), Flags: uint8(entry.Flags)}
	if t := entry.TunnelEndpoint; t.IsValid() {
		if t.Zone() != "" {
			return fmt.Errorf("ipcache: upsert %v: tunnel endpoint %v has a zone", prefix, t)
		}
		info.TunnelEndpoint, info.TunnelIPVersion = toRawAddr(t)
	}
	if err := c.m.Update(ipcacheKeyFor(prefix), info, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("ipcache: upsert %v: %w", prefix.Masked(), err)
	}
	return nil
}

// DeletePrefix removes a prefix. Removing a prefix that is not there is
// not an error: the map already says what the caller wants.
func (c *IPCache) DeletePrefix(prefix netip.Prefix) error {
	if !prefix.IsValid() {
		return fmt.Errorf("ipcache: delete: invalid prefix %v", prefix)
	}
	if err := c.m.Delete(ipcacheKeyFor(prefix)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("ipcache: delete %v: %w", prefix.Masked(), err)
	}
	return nil
}

// Lookup returns the entry of the longest prefix that covers addr, as the
// kernel's trie finds it.
func (c *IPCache) Lookup(addr netip.Addr) (ipcache.Entry, bool, error) {
	if !addr.IsValid() {
		return ipcache.Entry{}, false, fmt.Errorf("ipcache: lookup: invalid address")
	}
	var info ipcacheInfo
	err := c.m.Lookup(ipcacheKeyFor(netip.PrefixFrom(addr.WithZone(""), addr.BitLen())), &info)
	switch {
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return ipcache.Entry{}, false, nil
	case err != nil:
		return ipcache.Entry{}, false, fmt.Errorf("ipcache: lookup %v: %w", addr, err)
	}
	return info.typed(), true, nil
}

// Dump returns every prefix in the map.
func (c *IPCache) Dump() (map[netip.Prefix]ipcache.Entry, error) {
	out := make(map[netip.Prefix]ipcache.Entry)
	var (
		k    ipcacheKey
		info ipcacheInfo
	)
	it := c.m.Iterate()
	for it.Next(&k, &info) {
		p, err := k.prefix()
		if err != nil {
			return nil, fmt.Errorf("ipcache: dump: %w", err)
		}
		out[p] = info.typed()
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("ipcache: dump: %w", err)
	}
	return out, nil
}

func (info ipcacheInfo) typed() ipcache.Entry {
	return ipcache.Entry{
		Identity:       identity.ID(info.Identity),
		TunnelEndpoint: info.TunnelEndpoint.addr(info.TunnelIPVersion),
		Flags:          ipcache.Flags(info.Flags),
	}
}
