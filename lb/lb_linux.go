package lb

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/nodeplane/nodeplane/lb/maglev"
)

// LB is the socket-layer load balancer of one cgroup: it owns the maps and
// the programs attached to the cgroup, and keeps the maps in step with the
// services given to it. An LB is safe for concurrent use.
//
// Every update is ordered so that a concurrent connect() sees either the
// old or the new service, never a mix:
//
//  1. backend entries that are new or changed are written;
//  2. the active backends are written into the slot bank the service entry
//     does not use (Cilium's slot layout, doubled);
//  3. affinity match entries of newly active backends, the reverse-NAT
//     entry of a new service and a Maglev table are written;
//  4. the service entry is replaced in one map update: from here on the new
//     bank is live;
//  5. the old bank, match entries of backends no longer active and the
//     backends no longer listed are deleted.
//
// A failure before step 4 undoes steps 1 to 3 and leaves the old service
// in place. A connect that read the old service entry just before step 4
// may find a slot or backend gone in step 5; it then rereads the service
// entry, as Cilium's datapath cannot, and selects from the new bank.
type LB struct {
	mu    sync.Mutex
	cfg   Config
	t     *table
	hosts hostAddrs
	// objs are the programs and maps bpf2go generated; their Close
	// releases every one of them, however many sock.c defines.
	objs   sockObjects
	links  []link.Link
	maglev *maglev.Builder
	closed bool

	// Entries in use, for refusing updates that cannot fit before writing.
	svcEntries   [2]int // [v4, v6]
	beEntries    [2]int
	matchEntries int
}

// New loads the socket load balancer, restores the services of pinned maps
// if Config.PinPath holds any, and attaches the programs to
// Config.Cgroup. It fails with an error wrapping nodeplane.ErrNotSupported
// when the kernel lacks a hook or helper it needs (see HaveSocketLB).
func New(cfg Config) (_ *LB, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	mb, err := maglev.New(maglev.Config{TableSize: uint(cfg.MaglevTableSize), HashSeed: cfg.MaglevHashSeed})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	if err := HaveSocketLB(); err != nil {
		return nil, err
	}

	spec, err := loadSock()
	if err != nil {
		return nil, fmt.Errorf("load BPF spec: %w", err)
	}
	sizes := map[string]uint32{
		"np_lb4_svc":      cfg.ServiceEntries,
		"np_lb6_svc":      cfg.ServiceEntries,
		"np_lb4_be":       cfg.BackendEntries,
		"np_lb6_be":       cfg.BackendEntries,
		"np_lb_aff_match": 2 * cfg.BackendEntries,
		"np_lb4_aff":      cfg.AffinityEntries,
		"np_lb6_aff":      cfg.AffinityEntries,
		"np_lb4_sk_rnat":  cfg.SocketEntries,
		"np_lb6_sk_rnat":  cfg.SocketEntries,
	}
	for name, ms := range spec.Maps {
		if n, ok := sizes[name]; ok {
			ms.MaxEntries = n
		}
		if cfg.PinPath == "" {
			ms.Pinning = ebpf.PinNone
		}
	}
	spec.Maps["np_lb_maglev"].InnerMap.ValueSize = 4 * cfg.MaglevTableSize

	lb := &LB{cfg: cfg, t: newTable(), hosts: make(hostAddrs), maglev: mb}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinPath}}
	if err := spec.LoadAndAssign(&lb.objs, opts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("pinned maps in %s do not match this configuration: %w", cfg.PinPath, err)
		}
		return nil, fmt.Errorf("load BPF objects: %w", err)
	}
	defer func() {
		if err != nil {
			lb.closeObjects()
		}
	}()

	if cfg.PinPath != "" {
		if err := lb.restore(); err != nil {
			return nil, err
		}
	}

	hooks := []struct {
		prog *ebpf.Program
		at   ebpf.AttachType
	}{
		{lb.objs.NpSock4Connect, ebpf.AttachCGroupInet4Connect},
		{lb.objs.NpSock6Connect, ebpf.AttachCGroupInet6Connect},
		{lb.objs.NpSock4Sendmsg, ebpf.AttachCGroupUDP4Sendmsg},
		{lb.objs.NpSock6Sendmsg, ebpf.AttachCGroupUDP6Sendmsg},
		{lb.objs.NpSock4Recvmsg, ebpf.AttachCGroupUDP4Recvmsg},
		{lb.objs.NpSock6Recvmsg, ebpf.AttachCGroupUDP6Recvmsg},
		{lb.objs.NpSock4Getpeer, ebpf.AttachCgroupInet4GetPeername},
		{lb.objs.NpSock6Getpeer, ebpf.AttachCgroupInet6GetPeername},
	}
	for _, h := range hooks {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cfg.Cgroup, Attach: h.at, Program: h.prog})
		if err != nil {
			return nil, fmt.Errorf("attach %s to cgroup %s: %w", h.at, cfg.Cgroup, err)
		}
		lb.links = append(lb.links, l)
	}
	return lb, nil
}

// Close detaches the programs and releases the maps. Pinned maps, and the
// services in them, stay for the next New with the same PinPath.
func (lb *LB) Close() error {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if lb.closed {
		return nil
	}
	lb.closed = true
	return lb.closeObjects()
}

func (lb *LB) closeObjects() error {
	var errs []error
	for _, l := range lb.links {
		errs = append(errs, l.Close())
	}
	lb.links = nil
	errs = append(errs, lb.objs.Close())
	return errors.Join(errs...)
}

// Upsert creates the service at svc.Frontend, or replaces it and its
// backend list, and returns its ID. Backends are matched by address: one
// that stays keeps its ID, so affinity pins to it survive. A backend whose
// state is not BackendActive stays known but receives no new connection; a
// service without an active backend refuses connections.
//
// Invalid input fails with ErrInvalidService or ErrInvalidBackend, a full
// map with ErrFull; either leaves the service as it was.
func (lb *LB) Upsert(svc Service, backends []Backend) (ServiceID, error) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if err := lb.usable(); err != nil {
		return 0, err
	}
	u, err := lb.t.planUpsert(svc, backends)
	if err != nil {
		return 0, err
	}
	if u.unchanged() {
		return u.new.id, nil
	}
	return u.new.id, lb.apply(u)
}

// UpsertBackends adds backends to the service at fe, or updates those with
// an address the service already has; the others stay as they are.
func (lb *LB) UpsertBackends(fe Frontend, backends ...Backend) error {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if err := lb.usable(); err != nil {
		return err
	}
	u, err := lb.t.planUpsertBackends(fe, backends)
	if err != nil {
		return err
	}
	if u.unchanged() {
		return nil
	}
	return lb.apply(u)
}

// DeleteBackends removes the backends with the given addresses from the
// service at fe. An address that is not a backend of the service is an
// error wrapping ErrInvalidBackend, and nothing is removed.
func (lb *LB) DeleteBackends(fe Frontend, addrs ...netip.AddrPort) error {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if err := lb.usable(); err != nil {
		return err
	}
	u, err := lb.t.planDeleteBackends(fe, addrs)
	if err != nil {
		return err
	}
	return lb.apply(u)
}

// Delete removes the service at fe. Connections made through it keep
// working; new connections to fe are no longer translated.
func (lb *LB) Delete(fe Frontend) error {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if err := lb.usable(); err != nil {
		return err
	}
	u, err := lb.t.planDelete(fe)
	if err != nil {
		return err
	}
	return lb.apply(u)
}

// SetHostAddresses replaces the set of the node's own addresses. An
// ExternalIP service is translated at the socket layer only when its
// address is in this set, as in Cilium, so that a service cannot capture
// connections to an address that is not the node's. At most 1024
// addresses; on error the set is unchanged.
func (lb *LB) SetHostAddresses(addrs ...netip.Addr) error {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if err := lb.usable(); err != nil {
		return err
	}
	set, err := newHostAddrs(addrs)
	if err != nil {
		return err
	}
	var undo undoLog
	one := uint8(1)
	for a := range set {
		if lb.hosts.has(a) {
			continue
		}
		k := hostAddrKey(a)
		if err := lb.objs.NpLbHostAddr.Update(&k, &one, ebpf.UpdateAny); err != nil {
			return errors.Join(fmt.Errorf("add host address %s: %w", a, err), undo.run())
		}
		undo.add(func() error { return ignoreMissing(lb.objs.NpLbHostAddr.Delete(&k)) })
	}
	var errs []error
	for a := range lb.hosts {
		if !set.has(a) {
			k := hostAddrKey(a)
			errs = append(errs, ignoreMissing(lb.objs.NpLbHostAddr.Delete(&k)))
		}
	}
	lb.hosts = set
	return errors.Join(errs...)
}

// Lookup returns the service at fe and its backends, as last written.
func (lb *LB) Lookup(fe Frontend) (Service, []Backend, bool) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return lb.t.lookup(fe)
}

// Services returns the frontends of all services.
func (lb *LB) Services() []Frontend {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	out := make([]Frontend, 0, len(lb.t.services))
	for fe := range lb.t.services {
		out = append(out, fe)
	}
	return out
}

func (lb *LB) usable() error {
	if lb.closed {
		return errors.New("load balancer closed")
	}
	return nil
}
