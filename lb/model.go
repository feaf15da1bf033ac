package lb

import (
	"net/netip"
	"time"

	"github.com/nodeplane/nodeplane"
)

// Model is the socket-layer load balancer in Go: the same services as an LB
// given the same calls, and the decision procedure of the BPF programs run
// against them. Connect answers what connect() or sendmsg() does, Peer what
// recvmsg() and getpeername() report. Tests use it as the oracle for the
// kernel; callers can use it to explain a translation.
//
// Given the same sequence of Upsert and Delete calls, a Model and an LB
// allocate the same service and backend IDs and the same slots. The model
// also keeps the kernel's session-affinity and reverse-translation entries,
// which Connect updates as the kernel does (without the kernel's LRU
// eviction).
//
// The zero value is an empty model. A Model is not safe for concurrent use.
type Model struct {
	t        *table
	hosts    hostAddrs
	affinity map[modelAffinityKey]modelAffinity
	revnat   map[modelRevNATKey]modelRevNAT
}

type modelAffinityKey struct {
	v6      bool
	netns   uint64
	service ServiceID
}

type modelAffinity struct {
	lastUsed uint64 // seconds
	backend  BackendID
}

type modelRevNATKey struct {
	cookie  uint64
	backend netip.AddrPort
}

type modelRevNAT struct {
	frontend netip.AddrPort
	service  ServiceID
}

func (m *Model) init() {
	if m.t == nil {
		m.t = newTable()
		m.hosts = make(hostAddrs)
		m.affinity = make(map[modelAffinityKey]modelAffinity)
		m.revnat = make(map[modelRevNATKey]modelRevNAT)
	}
}

// Upsert creates or replaces the service at svc.Frontend, as LB.Upsert.
func (m *Model) Upsert(svc Service, backends []Backend) (ServiceID, error) {
	m.init()
	u, err := m.t.planUpsert(svc, backends)
	if err != nil {
		return 0, err
	}
	m.t.commit(u)
	return u.new.id, nil
}

// Delete removes the service at fe, as LB.Delete.
func (m *Model) Delete(fe Frontend) error {
	m.init()
	u, err := m.t.planDelete(fe)
	if err != nil {
		return err
	}
	m.t.commit(u)
	return nil
}

// SetHostAddresses sets the node's addresses, as LB.SetHostAddresses.
func (m *Model) SetHostAddresses(addrs ...netip.Addr) error {
	m.init()
	set, err := newHostAddrs(addrs)
	if err != nil {
		return err
	}
	m.hosts = set
	return nil
}

// Lookup returns the service at fe and its backends.
func (m *Model) Lookup(fe Frontend) (Service, []Backend, bool) {
	m.init()
	return m.t.lookup(fe)
}

// Request is one connect() or sendmsg() as the BPF program sees it.
type Request struct {
	// Dest is the destination the application passed. On an AF_INET6
	// socket an IPv4 destination is IPv4-mapped; both forms are accepted.
	Dest     netip.AddrPort
	Protocol nodeplane.Protocol
	// Random is what bpf_get_prandom_u32 returns; it selects TCP backends.
	Random uint32
	// SocketCookie is the socket's SO_COOKIE; it selects UDP backends and
	// keys the reverse translation.
	SocketCookie uint64
	// NetNSCookie is the client's SO_NETNS_COOKIE, the session-affinity
	// client.
	NetNSCookie uint64
	// Now is CLOCK_MONOTONIC_COARSE; affinity counts whole seconds of it.
	Now time.Duration
}

// Result is what a Request turns into.
type Result struct {
	// Dest is where the socket connects or sends: the backend if
	// Translated, else the request's destination.
	Dest       netip.AddrPort
	Translated bool
	Service    ServiceID
	Backend    BackendID
	// Pinned says the backend came from session affinity.
	Pinned bool
}

// Connect runs the forward translation of r. It returns ErrNoBackends when
// r's destination is a service without an active backend: the kernel fails
// the system call with EHOSTUNREACH.
//
// The decision, step by step, as in bpf/sock.c:
//  1. Only TCP and UDP are translated; the service is looked up by exact
//     address, port and protocol. No service: no translation.
//  2. No active backend: refuse. An ExternalIP service whose address is not
//     one of the node's (SetHostAddresses) is then left alone.
//  3. With affinity, a pin of this client for this service that is younger
//     than the timeout (last use + timeout > now, in whole seconds) and
//     still names an active backend of the service is used and refreshed;
//     an expired or stale pin is dropped.
//  4. Otherwise slot (selector mod active backends) is taken, where the
//     selector is Random for TCP and SocketCookie for UDP; with affinity
//     the choice becomes the client's pin.
//  5. A reverse entry (socket cookie, backend) -> frontend is recorded.
func (m *Model) Connect(r Request) (Result, error) {
	m.init()
	dest := r.Dest
	mapped := dest.Addr().Is4In6()
	if mapped {
		dest = netip.AddrPortFrom(dest.Addr().Unmap(), dest.Port())
	}
	res := Result{Dest: r.Dest}
	if r.Protocol != nodeplane.ProtoTCP && r.Protocol != nodeplane.ProtoUDP {
		return res, nil
	}
	e := m.t.services[Frontend{Addr: dest, Protocol: r.Protocol}]
	if e == nil {
		return res, nil
	}
	slots := e.slots()
	if len(slots) == 0 {
		return res, ErrNoBackends
	}
	if e.svc.Type == ExternalIP && !m.hosts.has(dest.Addr()) {
		return res, nil
	}

	var be backendEntry
	pinned := false
	now := uint64(r.Now / time.Second)
	akey := modelAffinityKey{v6: !dest.Addr().Is4(), netns: r.NetNSCookie, service: e.id}
	if e.svc.SessionAffinity != 0 {
		if pin, ok := m.affinity[akey]; ok {
			timeout := uint64(e.svc.SessionAffinity / time.Second)
			b, member := slotByID(slots, pin.backend)
			switch {
			case pin.lastUsed+timeout <= now, !member:
				delete(m.affinity, akey)
			default:
				m.affinity[akey] = modelAffinity{lastUsed: now, backend: pin.backend}
				be, pinned = b, true
			}
		}
	}
	if !pinned {
		sel := uint64(r.Random)
		if r.Protocol == nodeplane.ProtoUDP {
			sel = r.SocketCookie
		}
		be = slots[sel%uint64(len(slots))]
		if e.svc.SessionAffinity != 0 {
			m.affinity[akey] = modelAffinity{lastUsed: now, backend: be.id}
		}
	}

	m.revnat[modelRevNATKey{cookie: r.SocketCookie, backend: be.Addr}] = modelRevNAT{frontend: dest, service: e.id}

	res.Dest = be.Addr
	if mapped {
		res.Dest = netip.AddrPortFrom(netip.AddrFrom16(be.Addr.Addr().As16()), be.Addr.Port())
	}
	res.Translated = true
	res.Service = e.id
	res.Backend = be.id
	res.Pinned = pinned
	return res, nil
}

// slotByID finds an active backend by ID. The kernel asks the affinity
// match map, which holds exactly the active backends of each service.
func slotByID(slots []backendEntry, id BackendID) (backendEntry, bool) {
	for _, b := range slots {
		if b.id == id {
			return b, true
		}
	}
	return backendEntry{}, false
}

// Peer runs the reverse translation of recvmsg() and getpeername(): the
// address the application sees for a peer of the socket with the given
// cookie. A peer the socket reached through a service that still exists
// under the same ID and has an active backend is shown as the frontend;
// otherwise the reverse entry is dropped and the peer shown as it is.
func (m *Model) Peer(socketCookie uint64, proto nodeplane.Protocol, peer netip.AddrPort) netip.AddrPort {
	m.init()
	addr := peer
	mapped := addr.Addr().Is4In6()
	if mapped {
		addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	}
	key := modelRevNATKey{cookie: socketCookie, backend: addr}
	rn, ok := m.revnat[key]
	if !ok {
		return peer
	}
	e := m.t.services[Frontend{Addr: rn.frontend, Protocol: proto}]
	if e == nil || e.id != rn.service || len(e.slots()) == 0 {
		delete(m.revnat, key)
		return peer
	}
	if mapped {
		return netip.AddrPortFrom(netip.AddrFrom16(rn.frontend.Addr().As16()), rn.frontend.Port())
	}
	return rn.frontend
}

// Eligible returns the backends a new connection to fe may reach: the
// service's active backends, in slot order.
func (m *Model) Eligible(fe Frontend) []Backend {
	m.init()
	e := m.t.services[fe]
	if e == nil {
		return nil
	}
	var out []Backend
	for _, b := range e.slots() {
		out = append(out, b.Backend)
	}
	return out
}
