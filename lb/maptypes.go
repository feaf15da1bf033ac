package lb

import (
	"encoding/binary"
	"net/netip"
	"structs"
)

// The Go twins of the structs in bpf/lb.h, field for field. Addresses and
// ports are byte arrays in network order, so no field ever needs a byte
// swap; TestMapLayoutMatchesBTF compares sizes and offsets with the compiled
// object.

// lb4Key is struct lb4_key.
type lb4Key struct {
	_       structs.HostLayout
	Address [4]byte
	Port    [2]byte
	Slot    uint16
	Proto   uint8
	Scope   uint8
	Pad     [2]uint8
}

// lb6Key is struct lb6_key.
type lb6Key struct {
	_       structs.HostLayout
	Address [16]byte
	Port    [2]byte
	Slot    uint16
	Proto   uint8
	Scope   uint8
	Pad     [2]uint8
}

// lbService is struct lb_service.
type lbService struct {
	_               structs.HostLayout
	BackendID       uint32
	AffinityTimeout uint32
	Count           uint16
	SlotBase        uint16
	RevNAT          uint16
	Flags           uint8
	Algorithm       uint8
}

// lb4Backend is struct lb4_backend.
type lb4Backend struct {
	_       structs.HostLayout
	Address [4]byte
	Port    [2]byte
	Proto   uint8
	State   uint8
	Weight  uint16
	RevNAT  uint16
}

// lb6Backend is struct lb6_backend.
type lb6Backend struct {
	_       structs.HostLayout
	Address [16]byte
	Port    [2]byte
	Proto   uint8
	State   uint8
	Weight  uint16
	RevNAT  uint16
}

// lb4ReverseNAT is struct lb4_reverse_nat.
type lb4ReverseNAT struct {
	_       structs.HostLayout
	Address [4]byte
	Port    [2]byte
	Proto   uint8
	Pad     uint8
}

// lb6ReverseNAT is struct lb6_reverse_nat.
type lb6ReverseNAT struct {
	_       structs.HostLayout
	Address [16]byte
	Port    [2]byte
	Proto   uint8
	Pad     uint8
}

// lb4SockRevNATKey is struct lb4_sock_revnat_key.
type lb4SockRevNATKey struct {
	_       structs.HostLayout
	Cookie  uint64
	Address [4]byte
	Port    [2]byte
	Pad     uint16
}

// lb4SockRevNAT is struct lb4_sock_revnat.
type lb4SockRevNAT struct {
	_       structs.HostLayout
	Address [4]byte
	Port    [2]byte
	RevNAT  uint16
}

// lb6SockRevNATKey is struct lb6_sock_revnat_key.
type lb6SockRevNATKey struct {
	_       structs.HostLayout
	Cookie  uint64
	Address [16]byte
	Port    [2]byte
	Pad     uint16
	Pad2    uint32
}

// lb6SockRevNAT is struct lb6_sock_revnat.
type lb6SockRevNAT struct {
	_       structs.HostLayout
	Address [16]byte
	Port    [2]byte
	RevNAT  uint16
}

// lb4AffinityKey is struct lb4_affinity_key; Client holds the union of a
// netns cookie (native endian) and an IPv4 address.
type lb4AffinityKey struct {
	_           structs.HostLayout
	Client      [8]byte
	RevNAT      uint16
	NetNSCookie uint8
	Pad1        uint8
	Pad2        uint32
}

// lb6AffinityKey is struct lb6_affinity_key.
type lb6AffinityKey struct {
	_           structs.HostLayout
	Client      [16]byte
	RevNAT      uint16
	NetNSCookie uint8
	Pad1        uint8
	Pad2        uint32
}

// lbAffinityVal is struct lb_affinity_val.
type lbAffinityVal struct {
	_         structs.HostLayout
	LastUsed  uint64
	BackendID uint32
	Pad       uint32
}

// lbAffinityMatch is struct lb_affinity_match.
type lbAffinityMatch struct {
	_         structs.HostLayout
	BackendID uint32
	RevNAT    uint16
	Pad       uint16
}

// lbHostAddr is struct lb_host_addr: an address of the node, IPv4 as
// IPv4-mapped IPv6.
type lbHostAddr struct {
	_       structs.HostLayout
	Address [16]byte
}

// maxHostAddrs is the capacity of the host address map.
const maxHostAddrs = 1024

// Values of lbService.Flags and .Algorithm (SVC_F_*, LB_ALG_*).
const (
	svcFlagExternalIP   = 1 << 0
	svcFlagNodePort     = 1 << 1
	svcFlagAffinity     = 1 << 4
	svcFlagLoadBalancer = 1 << 5
	// svcFlagIntLocal is internalTrafficPolicy=Local; nodeplane's bit
	// (Cilium keeps SVC_FLAG_INT_LOCAL_SCOPE in flags2, which this
	// layout has not). Only a restore reads it.
	svcFlagIntLocal = 1 << 6

	algRandom = 1
	algMaglev = 2
)

// portBytes and portOf are the one place where ports change byte order.
func portBytes(p uint16) [2]byte {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return b
}

func portOf(b [2]byte) uint16 { return binary.BigEndian.Uint16(b[:]) }

func typeFlags(t ServiceType) uint8 {
	switch t {
	case NodePort:
		return svcFlagNodePort
	case ExternalIP:
		return svcFlagExternalIP
	case LoadBalancer:
		return svcFlagLoadBalancer
	}
	return 0
}

// serviceValue is the service entry (slot 0) of e.
func serviceValue(e *entry) lbService {
	v := lbService{
		Count:     uint16(len(e.slots())),
		SlotBase:  e.bank,
		RevNAT:    uint16(e.id),
		Flags:     typeFlags(e.svc.Type),
		Algorithm: algRandom,
	}
	if e.svc.Algorithm == AlgorithmMaglev {
		v.Algorithm = algMaglev
	}
	if e.svc.InternalTrafficLocal {
		v.Flags |= svcFlagIntLocal
	}
	if a := e.svc.SessionAffinity; a != 0 {
		v.Flags |= svcFlagAffinity
		v.AffinityTimeout = uint32(a.Seconds())
	}
	return v
}

func slotValue(e *entry, b backendEntry) lbService {
	return lbService{BackendID: uint32(b.id), RevNAT: uint16(e.id)}
}

func lb4KeyOf(fe Frontend, slot uint16) lb4Key {
	return lb4Key{
		Address: fe.Addr.Addr().As4(),
		Port:    portBytes(fe.Addr.Port()),
		Slot:    slot,
		Proto:   uint8(fe.Protocol),
	}
}

func lb6KeyOf(fe Frontend, slot uint16) lb6Key {
	return lb6Key{
		Address: fe.Addr.Addr().As16(),
		Port:    portBytes(fe.Addr.Port()),
		Slot:    slot,
		Proto:   uint8(fe.Protocol),
	}
}

func lb4BackendOf(e *entry, b backendEntry) lb4Backend {
	return lb4Backend{
		Address: b.Addr.Addr().As4(),
		Port:    portBytes(b.Addr.Port()),
		Proto:   uint8(e.svc.Frontend.Protocol),
		State:   uint8(b.State),
		Weight:  b.Weight,
		RevNAT:  uint16(e.id),
	}
}

func lb6BackendOf(e *entry, b backendEntry) lb6Backend {
	return lb6Backend{
		Address: b.Addr.Addr().As16(),
		Port:    portBytes(b.Addr.Port()),
		Proto:   uint8(e.svc.Frontend.Protocol),
		State:   uint8(b.State),
		Weight:  b.Weight,
		RevNAT:  uint16(e.id),
	}
}

func addrPort4(a [4]byte, p [2]byte) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4(a), portOf(p))
}

func addrPort6(a [16]byte, p [2]byte) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom16(a), portOf(p))
}

func netnsClient4(cookie uint64) [8]byte {
	var c [8]byte
	binary.NativeEndian.PutUint64(c[:], cookie)
	return c
}

func netnsClient6(cookie uint64) [16]byte {
	var c [16]byte
	binary.NativeEndian.PutUint64(c[:8], cookie)
	return c
}
