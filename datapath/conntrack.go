package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane/identity"
)

// Conntrack is the datapath's connection table: one entry per connection,
// keyed by the tuple of its first packet. The programs create entries for
// connections policy allowed and let later packets of either direction
// through without a policy decision; entries expire after the lifetimes of
// [Config], and [Conntrack.GC] removes expired ones. The table is an LRU:
// when it is full the least recently used entry makes room.
type Conntrack struct {
	m *ebpf.Map
}

// ConntrackFlags describe what a connection has seen.
type ConntrackFlags uint32

// Conntrack flags, as NP_CT_* in bpf/maps.h.
const (
	// ConntrackSeenReply: a packet went from the responder back.
	ConntrackSeenReply ConntrackFlags = 1 << 0
	// ConntrackTxClosing: the originator sent a FIN.
	ConntrackTxClosing ConntrackFlags = 1 << 1
	// ConntrackRxClosing: the responder sent a FIN.
	ConntrackRxClosing ConntrackFlags = 1 << 2
	// ConntrackReset: either side sent a RST.
	ConntrackReset ConntrackFlags = 1 << 3
	// ConntrackProxy: the connection is redirected to the L7 proxy on
	// ConntrackEntry.ProxyPort (NP_CT_PROXY, bpf/proxy.h).
	ConntrackProxy ConntrackFlags = 1 << 4
)

// ctProxyPortShift is NP_CT_PROXY_PORT_SHIFT: the proxy port lives in the
// flags' upper half.
const ctProxyPortShift = 16

// ConntrackEntry is one tracked connection.
type ConntrackEntry struct {
	// Tuple is the connection's first packet's.
	Tuple Tuple
	// Packets and bytes from the originator and from the responder.
	Packets, Bytes           uint64
	ReplyPackets, ReplyBytes uint64
	// Created and Expires are CLOCK_MONOTONIC times.
	Created, Expires time.Duration
	// SrcIdentity and DstIdentity are the originator's and responder's
	// identities when the connection was created.
	SrcIdentity, DstIdentity identity.ID
	// Endpoint is the endpoint whose program created the entry.
	Endpoint EndpointID
	Flags    ConntrackFlags
	// TCPFlags and ReplyTCPFlags are the union of the TCP flags seen each
	// way.
	TCPFlags, ReplyTCPFlags uint8
	// ProxyPort is the L7 proxy the connection is redirected to, with
	// ConntrackProxy.
	ProxyPort uint16
}

func (e ctEntry) typed(t tuple) ConntrackEntry {
	return ConntrackEntry{
		Tuple:   t.typed(),
		Packets: e.PacketsFwd, Bytes: e.BytesFwd, ReplyPackets: e.PacketsRev, ReplyBytes: e.BytesRev,
		Created:     time.Duration(e.Created) * time.Second,
		Expires:     time.Duration(e.Expires) * time.Second,
		SrcIdentity: identity.ID(e.SrcIdentity), DstIdentity: identity.ID(e.DstIdentity),
		Endpoint: EndpointID(e.EndpointID), Flags: ConntrackFlags(e.Flags & (1<<ctProxyPortShift - 1)),
		TCPFlags: e.TCPFlagsFwd, ReplyTCPFlags: e.TCPFlagsRev,
		ProxyPort: uint16(e.Flags >> ctProxyPortShift),
	}
}

// Lookup returns the entry whose key is t exactly (the tuple of the
// connection's first packet).
func (c *Conntrack) Lookup(t Tuple) (ConntrackEntry, bool, error) {
	k, err := t.raw()
	if err != nil {
		return ConntrackEntry{}, false, fmt.Errorf("conntrack: lookup: %w", err)
	}
	var e ctEntry
	switch err := c.m.Lookup(k, &e); {
	case errors.Is(err, ebpf.ErrKeyNotExist):
		return ConntrackEntry{}, false, nil
	case err != nil:
		return ConntrackEntry{}, false, fmt.Errorf("conntrack: lookup %v: %w", t, err)
	}
	return e.typed(k), true, nil
}

// Entries returns every entry.
func (c *Conntrack) Entries() ([]ConntrackEntry, error) {
	var (
		out []ConntrackEntry
		k   tuple
		e   ctEntry
	)
	it := c.m.Iterate()
	for it.Next(&k, &e) {
		out = append(out, e.typed(k))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("conntrack: list: %w", err)
	}
	return out, nil
}

// GC deletes the entries that expired before now, a CLOCK_MONOTONIC time
// (see [MonotonicNow]), and returns how many it deleted. An entry a packet
// refreshes while GC runs is kept: each one is checked again right before
// it is deleted.
func (c *Conntrack) GC(now time.Duration) (int, error) {
	sec := uint32(now / time.Second)
	var (
		expired []tuple
		k       tuple
		e       ctEntry
	)
	it := c.m.Iterate()
	for it.Next(&k, &e) {
		if e.Expires < sec {
			expired = append(expired, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("conntrack: gc: %w", err)
	}
	deleted := 0
	for _, k := range expired {
		if err := c.m.Lookup(k, &e); err != nil || e.Expires >= sec {
			continue
		}
		switch err := c.m.Delete(k); {
		case err == nil:
			deleted++
		case !errors.Is(err, ebpf.ErrKeyNotExist):
			return deleted, fmt.Errorf("conntrack: gc: delete %v: %w", k.typed(), err)
		}
	}
	return deleted, nil
}

// Flush deletes every entry and returns how many it deleted; established
// connections are then decided by policy again at their next packet, like
// new ones.
func (c *Conntrack) Flush() (int, error) {
	return c.deleteIf(func(tuple) bool { return true })
}

// deleteAddrs deletes the entries of connections from or to any of addrs.
func (c *Conntrack) deleteAddrs(addrs []netip.Addr) (int, error) {
	keys := make(map[endpointKey]bool, len(addrs))
	for _, a := range addrs {
		keys[endpointKeyFor(a)] = true
	}
	return c.deleteIf(func(k tuple) bool {
		return keys[endpointKey{Addr: k.SAddr, IPVersion: k.IPVersion}] ||
			keys[endpointKey{Addr: k.DAddr, IPVersion: k.IPVersion}]
	})
}

// deleteIf deletes the entries whose key del selects and returns how many
// it deleted.
func (c *Conntrack) deleteIf(del func(tuple) bool) (int, error) {
	var (
		keys []tuple
		k    tuple
		e    ctEntry
	)
	it := c.m.Iterate()
	for it.Next(&k, &e) {
		if del(k) {
			keys = append(keys, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("conntrack: list: %w", err)
	}
	n := 0
	for _, k := range keys {
		switch err := c.m.Delete(k); {
		case err == nil:
			n++
		case !errors.Is(err, ebpf.ErrKeyNotExist):
			return n, fmt.Errorf("conntrack: delete %v: %w", k.typed(), err)
		}
	}
	return n, nil
}
