package datapath

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// This file mirrors the keys and values of bpf/maps.h. Every struct has a
// fixed layout without implicit padding; the `btf` tags name the C members,
// and TestMapLayouts checks sizes and offsets against the BTF of the
// compiled object. Conversions between these raw forms and the typed API
// happen here and nowhere else.

// IP versions as the maps store them.
const (
	ipv4 = 4
	ipv6 = 6
)

// rawAddr is union np_addr: an IPv4 address in the first 4 bytes, the rest
// zero, or an IPv6 address.
type rawAddr [16]byte

func toRawAddr(a netip.Addr) (rawAddr, uint8) {
	var r rawAddr
	if a.Is4() {
		b := a.As4()
		copy(r[:], b[:])
		return r, ipv4
	}
	return a.As16(), ipv6
}

func (r rawAddr) addr(version uint8) netip.Addr {
	switch version {
	case ipv4:
		return netip.AddrFrom4([4]byte(r[:4]))
	case ipv6:
		return netip.AddrFrom16(r)
	}
	return netip.Addr{}
}

// be16 is a 16-bit value in network byte order, as ports are in the maps.
type be16 [2]byte

func toBE16(v uint16) be16 {
	var b be16
	binary.BigEndian.PutUint16(b[:], v)
	return b
}

func (b be16) host() uint16 { return binary.BigEndian.Uint16(b[:]) }

// endpointKey is struct np_endpoint_key.
type endpointKey struct {
	Addr      rawAddr `btf:"addr"`
	IPVersion uint8   `btf:"ip_version"`
	_         [3]byte `btf:"pad"`
}

func endpointKeyFor(a netip.Addr) endpointKey {
	r, v := toRawAddr(a)
	return endpointKey{Addr: r, IPVersion: v}
}

// endpointInfo is struct np_endpoint_info.
type endpointInfo struct {
	Ifindex    uint32  `btf:"ifindex"`
	Identity   uint32  `btf:"identity"`
	EndpointID uint16  `btf:"endpoint_id"`
	Flags      uint16  `btf:"flags"`
	MAC        [6]byte `btf:"mac"`
	NodeMAC    [6]byte `btf:"node_mac"`
}

// ipcacheStaticPrefix is NP_IPCACHE_STATIC_PREFIX: the key bits before the
// address (ip_version and pad) always take part in the match.
const ipcacheStaticPrefix = 32

// ipcacheKey is struct np_ipcache_key.
type ipcacheKey struct {
	PrefixLen uint32  `btf:"prefixlen"`
	IPVersion uint8   `btf:"ip_version"`
	_         [3]byte `btf:"pad"`
	Addr      rawAddr `btf:"addr"`
}

func ipcacheKeyFor(p netip.Prefix) ipcacheKey {
	r, v := toRawAddr(p.Masked().Addr())
	return ipcacheKey{PrefixLen: ipcacheStaticPrefix + uint32(p.Bits()), IPVersion: v, Addr: r}
}

func (k ipcacheKey) prefix() (netip.Prefix, error) {
	a := k.Addr.addr(k.IPVersion)
	if !a.IsValid() || k.PrefixLen < ipcacheStaticPrefix {
		return netip.Prefix{}, fmt.Errorf("malformed ipcache key %+v", k)
	}
	return a.Prefix(int(k.PrefixLen - ipcacheStaticPrefix))
}

// ipcacheInfo is struct np_ipcache_info.
type ipcacheInfo struct {
	Identity        uint32  `btf:"identity"`
	TunnelEndpoint  rawAddr `btf:"tunnel_endpoint"`
	TunnelIPVersion uint8   `btf:"tunnel_ip_version"`
	Flags           uint8   `btf:"flags"`
	_               [2]byte `btf:"pad"`
}

// tuple is struct np_tuple: a conntrack key and an event's flow.
type tuple struct {
	SAddr     rawAddr `btf:"saddr"`
	DAddr     rawAddr `btf:"daddr"`
	SPort     be16    `btf:"sport"`
	DPort     be16    `btf:"dport"`
	Proto     uint8   `btf:"proto"`
	IPVersion uint8   `btf:"ip_version"`
	_         [2]byte `btf:"pad"`
}

// fragKey is struct np_frag_key. Go never reads the fragments map; the
// mirror keeps the layout checked like every other.
type fragKey struct {
	SAddr     rawAddr `btf:"saddr"`
	DAddr     rawAddr `btf:"daddr"`
	ID        uint32  `btf:"id"`
	Proto     uint8   `btf:"proto"`
	IPVersion uint8   `btf:"ip_version"`
	_         [2]byte `btf:"pad"`
}

// fragL4 is struct np_frag_l4.
type fragL4 struct {
	SPort      be16  `btf:"sport"`
	DPort      be16  `btf:"dport"`
	PolicyPort be16  `btf:"policy_port"`
	Proto      uint8 `btf:"proto"`
	TCPFlags   uint8 `btf:"tcp_flags"`
}

// ctEntry is struct np_ct_entry.
type ctEntry struct {
	PacketsFwd  uint64 `btf:"packets_fwd"`
	BytesFwd    uint64 `btf:"bytes_fwd"`
	PacketsRev  uint64 `btf:"packets_rev"`
	BytesRev    uint64 `btf:"bytes_rev"`
	Expires     uint32 `btf:"expires"`
	Created     uint32 `btf:"created"`
	SrcIdentity uint32 `btf:"src_identity"`
	DstIdentity uint32 `btf:"dst_identity"`
	Flags       uint32 `btf:"flags"`
	EndpointID  uint16 `btf:"endpoint_id"`
	TCPFlagsFwd uint8  `btf:"tcp_flags_fwd"`
	TCPFlagsRev uint8  `btf:"tcp_flags_rev"`
	// Trace reports (monitor aggregation), CLOCK_MONOTONIC seconds.
	LastReportFwd uint32 `btf:"last_report_fwd"`
	LastReportRev uint32 `btf:"last_report_rev"`
}

// policyStaticPrefix is NP_POLICY_STATIC_PREFIX: identity and direction
// always match in full; the L4 prefix follows.
const policyStaticPrefix = 40

// policyKey is struct np_policy_key, Cilium's policy_key.
type policyKey struct {
	PrefixLen uint32 `btf:"prefixlen"`
	Identity  uint32 `btf:"identity"`
	Egress    uint8  `btf:"egress"`
	Protocol  uint8  `btf:"protocol"`
	DPort     be16   `btf:"dport"`
}

func rawPolicyKey(k mapstate.Key) policyKey {
	return policyKey{
		PrefixLen: policyStaticPrefix + uint32(k.L4PrefixLen()),
		Identity:  uint32(k.Identity),
		Egress:    uint8(k.Direction),
		Protocol:  uint8(k.Protocol),
		DPort:     toBE16(k.Port),
	}
}

func (k policyKey) typed() (mapstate.Key, error) {
	if k.PrefixLen < policyStaticPrefix || k.PrefixLen > policyStaticPrefix+24 ||
		(k.PrefixLen > policyStaticPrefix && k.PrefixLen < policyStaticPrefix+8) {
		return mapstate.Key{}, fmt.Errorf("malformed policy key %+v: prefix length %d", k, k.PrefixLen)
	}
	pk := mapstate.Key{Identity: identity.ID(k.Identity), Direction: mapstate.Direction(k.Egress)}
	if l4 := k.PrefixLen - policyStaticPrefix; l4 > 0 {
		pk.Protocol = nodeplane.Protocol(k.Protocol)
		pk.PortPrefixLen = uint8(l4 - 8)
		pk.Port = k.DPort.host() & portMask(pk.PortPrefixLen)
	}
	return pk, nil
}

// policyDeny is NP_POLICY_DENY.
const policyDeny = 1 << 0

// policyEntry is struct np_policy_entry.
type policyEntry struct {
	ProxyPort         be16    `btf:"proxy_port"`
	Flags             uint8   `btf:"flags"`
	L4PrefixLen       uint8   `btf:"l4_prefix_len"`
	ProxyPortPriority uint8   `btf:"proxy_port_priority"`
	_                 [3]byte `btf:"pad"`
}

func rawPolicyEntry(e mapstate.Entry, k mapstate.Key) policyEntry {
	r := policyEntry{
		ProxyPort:         toBE16(e.ProxyPort),
		L4PrefixLen:       k.L4PrefixLen(),
		ProxyPortPriority: e.ProxyPortPriority,
	}
	if e.Deny {
		r.Flags |= policyDeny
	}
	return r
}

func (e policyEntry) typed() mapstate.Entry {
	return mapstate.Entry{
		Deny:              e.Flags&policyDeny != 0,
		ProxyPort:         e.ProxyPort.host(),
		ProxyPortPriority: e.ProxyPortPriority,
	}
}

// counter is struct np_counter, one per CPU.
type counter struct {
	Packets uint64 `btf:"packets"`
	Bytes   uint64 `btf:"bytes"`
}

// counterSlots is NP_COUNTER_SLOTS: hook << 8 | reason.
const counterSlots = 1024

// portMask is the mask of a port prefix of prefixLen bits, for converting
// raw policy keys.
func portMask(prefixLen uint8) uint16 {
	if prefixLen >= 16 {
		return 0xFFFF
	}
	return ^uint16(0xFFFF >> prefixLen)
}
