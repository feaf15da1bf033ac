package lb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/internal/nat"
	"github.com/nodeplane/nodeplane/internal/tcattach"
	"github.com/nodeplane/nodeplane/lb/maglev"
)

// NorthSouth balances packets that arrive on a node's external interface for
// a frontend (a NodePort, LoadBalancer or external IP address, port and
// protocol) across the frontend's backends: an XDP program translates the
// destination to a backend chosen by Maglev or at random and remembers the
// flow. In DNAT mode (the default) the client address is kept, backends
// must route their replies through the node, and a tc egress program
// translates them back. In SNAT mode (NorthSouthConfig.SNATAddrs) the
// source becomes the node's address and a NAT port, and the XDP program
// translates replies back where they arrive. See lb/bpf/nodeport.c for the
// packet path.
//
// A NorthSouth is safe for concurrent use. Close detaches and frees
// everything.
type NorthSouth struct {
	mu       sync.Mutex
	objs     nodeportObjects
	builder  *maglev.Builder
	size     int
	services map[Frontend]*npService
	vips     map[netip.Addr]int
	nextSvc  uint32
	nextBe   uint32
	links    []io.Closer
	dsr      bool
	// nat reads the NAT table SNAT mode translates into (objs.NpNat
	// or the caller's NATMap); natGC collects it.
	nat   *nat.Table
	natGC *nat.Collector
	// tcMode is how tc hooks attach; 0 probes (tcx, else clsact). Tests
	// set tcattach.Clsact to run the fallback on a kernel with tcx.
	tcMode tcattach.Mode
	closed bool
}

type npService struct {
	id       uint32
	svc      Service
	backends map[netip.AddrPort]npBackend
}

type npBackend struct {
	id uint32
	Backend
}

// Go twins of the C structs in lb/bpf/nodeport.c.
type npFeKey struct {
	Addr   [16]byte
	Port   uint16 // network byte order
	Proto  uint8
	Family uint8
}

type npFe struct {
	SvcID           uint32
	Count           uint32
	Alg             uint8
	Flags           uint8
	_               [2]byte
	AffinityTimeout uint32 // seconds
}

// npAffMatch is struct np_aff_match: an active backend of a service.
type npAffMatch struct {
	BackendID uint32
	SvcID     uint32
}

const npFeLocal = 1

type npBe struct {
	Addr   [16]byte
	Port   uint16 // network byte order
	Family uint8
	_      uint8
}

const (
	npAlgRandom = 1
	npAlgMaglev = 2
)

func npFamily(a netip.Addr) uint8 {
	if a.Is4() {
		return 4
	}
	return 6
}

func npAddr(a netip.Addr) (out [16]byte) {
	if a.Is4() {
		b := a.As4()
		copy(out[:], b[:])
		return out
	}
	return a.As16()
}

// htons converts a port to the network byte order the maps hold, read as
// a little-endian u16.
func htons(p uint16) uint16 { return p<<8 | p>>8 }

func feKey(fe Frontend) npFeKey {
	return npFeKey{Addr: npAddr(fe.Addr.Addr()), Port: htons(fe.Addr.Port()), Proto: uint8(fe.Protocol), Family: npFamily(fe.Addr.Addr())}
}

func vipKey(a netip.Addr) npFeKey {
	return npFeKey{Addr: npAddr(a), Family: npFamily(a)}
}

// NewNorthSouth loads the programs and maps; nothing is attached until
// [NorthSouth.Attach]. It fails with [ErrInvalidConfig] for a Maglev table
// size or seed lb/maglev refuses, and with an error wrapping
// nodeplane.ErrNotSupported when the kernel cannot load the programs.
func NewNorthSouth(cfg NorthSouthConfig) (_ *NorthSouth, err error) {
	spec, builder, err := cfg.nodeportSpec()
	if err != nil {
		return nil, err
	}
	np := &NorthSouth{dsr: cfg.DSR, builder: builder, size: builder.TableSize(), services: map[Frontend]*npService{}, vips: map[netip.Addr]int{}}
	var opts *ebpf.CollectionOptions
	if cfg.NATMap != nil {
		// The node's table is sized by its owner.
		spec.Maps[nodeportMapNpNat].MaxEntries = cfg.NATMap.MaxEntries()
		opts = &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{nodeportMapNpNat: cfg.NATMap}}
	}
	if err := spec.LoadAndAssign(&np.objs, opts); err != nil {
		var ve *ebpf.VerifierError
		switch {
		case errors.Is(err, ebpf.ErrMapIncompatible):
			return nil, fmt.Errorf("%w: NATMap is not a NAT table: %w", ErrInvalidConfig, err)
		case errors.As(err, &ve):
			return nil, fmt.Errorf("load nodeport programs: %w", err)
		}
		return nil, fmt.Errorf("load nodeport programs: %w: %w", nodeplane.ErrNotSupported, err)
	}
	np.nat = nat.New(np.objs.NpNat, nat.Lifetimes{})
	interval := cfg.NATGCInterval
	if interval == 0 {
		interval = DefaultNATGCInterval
	}
	if interval > 0 && len(cfg.SNATAddrs) > 0 { // valid: nodeportSpec checked them
		np.natGC = np.nat.StartGC(interval)
	}
	return np, nil
}

// nodeportSpec returns the programs' spec set up for cfg (Maglev table size
// and seed, NAT port range, SNAT addresses, DSR) and the Maglev builder, or
// an error wrapping [ErrInvalidConfig].
func (cfg NorthSouthConfig) nodeportSpec() (*ebpf.CollectionSpec, *maglev.Builder, error) {
	builder, err := maglev.New(maglev.Config{TableSize: cfg.MaglevTableSize, HashSeed: cfg.MaglevHashSeed})
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	seedStr := cfg.MaglevHashSeed
	if seedStr == "" {
		seedStr = maglev.DefaultHashSeed
	}
	seed, err := maglev.ParseHashSeed(seedStr)
	if err != nil { // maglev.New checked it
		return nil, nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}

	snat4, snat6, err := cfg.snatAddrs()
	if err != nil {
		return nil, nil, err
	}
	pmin, pmax, err := nat.Ports(cfg.NATPortMin, cfg.NATPortMax)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}

	spec, err := loadNodeport()
	if err != nil {
		return nil, nil, err
	}
	size := builder.TableSize()
	spec.Maps[nodeportMapNpNpLut].ValueSize = uint32(4 * size)
	for name, v := range map[string]uint16{nodeportVarNpNatPortMin: pmin, nodeportVarNpNatPortMax: pmax} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	for name, v := range map[string]uint32{
		"lut_size":   uint32(size),
		"hash_seed4": binary.BigEndian.Uint32(seed[4:8]),
		"hash_seed6": binary.BigEndian.Uint32(seed[8:12]),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	// The program copies these words to the packet as they lie in
	// memory.
	if snat4.IsValid() {
		a := snat4.As4()
		if err := spec.Variables["snat4"].Set(binary.LittleEndian.Uint32(a[:])); err != nil {
			return nil, nil, fmt.Errorf("set snat4: %w", err)
		}
	}
	if snat6.IsValid() {
		a := snat6.As16()
		var w [4]uint32
		for i := range w {
			w[i] = binary.LittleEndian.Uint32(a[4*i:])
		}
		if err := spec.Variables["snat6"].Set(w); err != nil {
			return nil, nil, fmt.Errorf("set snat6: %w", err)
		}
	}
	if cfg.DSR {
		if err := spec.Variables["dsr"].Set(uint8(1)); err != nil {
			return nil, nil, fmt.Errorf("set dsr: %w", err)
		}
	}
	return spec, builder, nil
}

// Attach hooks the programs into the interface with index ifindex in the
// caller's network namespace, in the given mode ([AttachAuto] probes), and
// returns the mode it used: the translation of arriving packets (XDP or
// tc ingress) and, beside it, the translation of replies at tc egress.
// The tc hooks are tcx links where the kernel has tcx (Linux 6.6) and
// cls_bpf filters under a clsact qdisc otherwise, as the datapath chooses
// (priority 0x4e50, handle 1, named after the program: a filter of that
// slot is replaced, and stays until Close). Attach every interface packets
// for frontends arrive on and, in SNAT mode, every interface backends'
// replies arrive on.
func (np *NorthSouth) Attach(ifindex int, mode AttachMode) (AttachMode, error) {
	np.mu.Lock()
	defer np.mu.Unlock()
	if np.closed {
		return 0, nodeplane.ErrClosed
	}
	if mode > AttachTC {
		return 0, fmt.Errorf("%w: attach mode %d", ErrInvalidConfig, mode)
	}
	if np.dsr && mode == AttachTC {
		return 0, fmt.Errorf("%w: DSR needs an XDP attach mode", ErrInvalidConfig)
	}
	var (
		in  io.Closer
		err error
	)
	xdp := func(flags link.XDPAttachFlags) (io.Closer, error) {
		return link.AttachXDP(link.XDPOptions{Program: np.objs.NpNodeportXdp, Interface: ifindex, Flags: flags})
	}
	tc := func() (io.Closer, error) {
		return np.attachTC(ifindex, false, nodeportProgNpNodeportTc, np.objs.NpNodeportTc)
	}
	switch mode {
	case AttachXDPNative:
		in, err = xdp(link.XDPDriverMode)
	case AttachXDPGeneric:
		in, err = xdp(link.XDPGenericMode)
	case AttachTC:
		in, err = tc()
	default:
		var errs []error
		for _, try := range []struct {
			mode   AttachMode
			attach func() (io.Closer, error)
		}{
			{AttachXDPNative, func() (io.Closer, error) { return xdp(link.XDPDriverMode) }},
			{AttachXDPGeneric, func() (io.Closer, error) { return xdp(link.XDPGenericMode) }},
			{AttachTC, tc},
		} {
			if np.dsr && try.mode == AttachTC {
				continue
			}
			if in, err = try.attach(); err == nil {
				mode = try.mode
				break
			}
			errs = append(errs, fmt.Errorf("%s: %w", try.mode, err))
		}
		if in == nil {
			err = errors.Join(errs...)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("attach to interface %d: %w", ifindex, err)
	}
	out, err := np.attachTC(ifindex, true, nodeportProgNpNodeportRevnat, np.objs.NpNodeportRevnat)
	if err != nil {
		in.Close()
		return 0, fmt.Errorf("attach tc egress to interface %d: %w", ifindex, err)
	}
	np.links = append(np.links, in, out)
	return mode, nil
}

// AttachDSRBackend hooks the backend side of DSR into the interface with
// index ifindex, where the packets for local backends arrive (tc ingress)
// and their replies leave (tc egress): packets carrying a DSR option
// record their frontend, and the replies leave with the frontend as their
// source. This NorthSouth needs no services for it; the node's own
// frontends, if any, work as before.
func (np *NorthSouth) AttachDSRBackend(ifindex int) error {
	np.mu.Lock()
	defer np.mu.Unlock()
	if np.closed {
		return nodeplane.ErrClosed
	}
	in, err := np.attachTC(ifindex, false, nodeportProgNpDsrDecode, np.objs.NpDsrDecode)
	if err != nil {
		return fmt.Errorf("attach DSR decoder to interface %d: %w", ifindex, err)
	}
	out, err := np.attachTC(ifindex, true, nodeportProgNpNodeportRevnat, np.objs.NpNodeportRevnat)
	if err != nil {
		in.Close()
		return fmt.Errorf("attach tc egress to interface %d: %w", ifindex, err)
	}
	np.links = append(np.links, in, out)
	return nil
}

// npTCPriority is the clsact priority of the north-south filters: after
// the datapath's (1), so that on one interface they run in the order tcx
// would append them.
const npTCPriority = 0x4e50

// attachTC attaches prog at tc ingress or egress (tcx, or clsact).
func (np *NorthSouth) attachTC(ifindex int, egress bool, name string, prog *ebpf.Program) (io.Closer, error) {
	prio := uint16(npTCPriority)
	if name == nodeportProgNpDsrDecode {
		prio++ // beside np_nodeport_tc when a node is both
	}
	return tcattach.Attach(tcattach.Filter{Ifindex: ifindex, Egress: egress, Name: name, Priority: prio, Handle: 1}, prog, np.tcMode)
}

// Upsert creates or replaces the service at svc.Frontend with backends.
// Backends that stay keep their flows; backends that are not
// BackendActive keep the flows they have and get no new ones; removed
// backends lose their flows, which move to a backend the table names.
// A service without an active backend drops new flows (DROP_NO_SERVICE).
// Only TCP and UDP frontends exist. With svc.SessionAffinity a client
// address is pinned to the backend of its flows, as Cilium's ClientIP
// affinity: a new flow from it takes that backend while it takes new
// flows and the client has sent to the frontend within the timeout. The
// socket layer's fields (InternalTrafficLocal, Backend.Local) do not
// apply to this path, which carries traffic from outside the node. With
// svc.ExternalTrafficLocal the caller
// passes the node's own backends only (as kube-proxy filters endpoints),
// and flows are neither SNATed nor DSRed: backends see the client.
//
// Invalid input fails with [ErrInvalidService] or [ErrInvalidBackend]
// before anything changes. A failed map update ([ErrFull]) stops the
// update where it failed: backend entries written before it stay (unused),
// and packets see the old service or, if only the frontend entry could
// not be written, the new table with the old backend count; repeat the
// Upsert to finish it.
func (np *NorthSouth) Upsert(svc Service, backends []Backend) error {
	if err := svc.validate(); err != nil {
		return err
	}
	if svc.Type == ClusterIP {
		return fmt.Errorf("%w: %s: a ClusterIP frontend is not reachable from outside the node; NorthSouth balances NodePort, LoadBalancer and ExternalIP frontends", ErrInvalidService, svc.Frontend)
	}
	if err := validateBackends(svc.Frontend, backends); err != nil {
		return err
	}
	np.mu.Lock()
	defer np.mu.Unlock()
	if np.closed {
		return nodeplane.ErrClosed
	}

	old := np.services[svc.Frontend]
	s := &npService{svc: svc, backends: make(map[netip.AddrPort]npBackend, len(backends))}
	if old != nil {
		s.id = old.id
	} else {
		np.nextSvc++
		s.id = np.nextSvc
	}
	// Stable IDs: a backend that stays keeps its ID and so its flows.
	var active []npBackend
	for _, b := range backends {
		nb := npBackend{Backend: b}
		if ob, ok := old.lookup(b.Addr); ok {
			nb.id = ob.id
		} else {
			np.nextBe++
			nb.id = np.nextBe
		}
		s.backends[b.Addr] = nb
		if b.State == BackendActive {
			active = append(active, nb)
		}
	}
	slices.SortFunc(active, func(a, b npBackend) int { return int(a.id) - int(b.id) })

	lut := make([]uint32, np.size)
	if len(active) > 0 {
		if svc.Algorithm == AlgorithmMaglev {
			in := make([]maglev.Backend, len(active))
			for i, b := range active {
				key, err := maglev.BackendKey(b.Addr, svc.Frontend.Protocol)
				if err != nil {
					return fmt.Errorf("%w: %w", ErrInvalidBackend, err)
				}
				in[i] = maglev.Backend{Key: key, ID: b.id, Weight: b.weight()}
			}
			if err := np.builder.Fill(lut, in); err != nil {
				return fmt.Errorf("%w: %w", ErrInvalidBackend, err)
			}
		} else {
			// Any index below M names an active backend, so a
			// packet that reads the table while the count changes
			// still finds one.
			for i := range lut {
				lut[i] = active[i%len(active)].id
			}
		}
	}

	// Order: backends, then the table, then the frontend that points at
	// them; removed backends last. A packet sees the old or the new
	// service, and every ID it reads exists.
	for _, b := range s.backends {
		v := npBe{Addr: npAddr(b.Addr.Addr()), Port: htons(b.Addr.Port()), Family: npFamily(b.Addr.Addr())}
		if err := np.objs.NpNpBe.Put(b.id, &v); err != nil {
			return fmt.Errorf("%w: backend %s: %w", ErrFull, b.Addr, err)
		}
	}
	if err := np.objs.NpNpLut.Put(s.id, lut); err != nil {
		return fmt.Errorf("%w: table of %s: %w", ErrFull, svc.Frontend, err)
	}
	for _, b := range active {
		if err := np.objs.NpNpAffMatch.Put(npAffMatch{BackendID: b.id, SvcID: s.id}, uint8(1)); err != nil {
			return fmt.Errorf("%w: affinity match of %s: %w", ErrFull, b.Addr, err)
		}
	}
	alg := uint8(npAlgRandom)
	if svc.Algorithm == AlgorithmMaglev {
		alg = npAlgMaglev
	}
	fe := npFe{SvcID: s.id, Count: uint32(len(active)), Alg: alg, AffinityTimeout: uint32(svc.SessionAffinity / time.Second)}
	if svc.ExternalTrafficLocal {
		fe.Flags |= npFeLocal
	}
	if err := np.objs.NpNpFe.Put(feKey(svc.Frontend), &fe); err != nil {
		return fmt.Errorf("%w: frontend %s: %w", ErrFull, svc.Frontend, err)
	}
	if old == nil {
		vip := svc.Frontend.Addr.Addr()
		np.vips[vip]++
		if err := np.objs.NpNpVip.Put(vipKey(vip), uint32(np.vips[vip])); err != nil {
			return fmt.Errorf("%w: address %s: %w", ErrFull, vip, err)
		}
	} else {
		for addr, ob := range old.backends {
			if _, stays := s.backends[addr]; !stays {
				_ = np.objs.NpNpBe.Delete(ob.id)
			}
			if nb, ok := s.backends[addr]; !ok || nb.State != BackendActive {
				// Pins to it are stale from now on.
				_ = np.objs.NpNpAffMatch.Delete(npAffMatch{BackendID: ob.id, SvcID: s.id})
			}
		}
	}
	np.services[svc.Frontend] = s
	return nil
}

func (s *npService) lookup(a netip.AddrPort) (npBackend, bool) {
	if s == nil {
		return npBackend{}, false
	}
	b, ok := s.backends[a]
	return b, ok
}

// Delete removes the service at fe; its flows end. It fails with
// [ErrServiceNotFound] for an unknown frontend.
func (np *NorthSouth) Delete(fe Frontend) error {
	np.mu.Lock()
	defer np.mu.Unlock()
	if np.closed {
		return nodeplane.ErrClosed
	}
	s, ok := np.services[fe]
	if !ok {
		return fmt.Errorf("%w: %s", ErrServiceNotFound, fe)
	}
	var errs []error
	errs = append(errs, np.objs.NpNpFe.Delete(feKey(fe)))
	vip := fe.Addr.Addr()
	if np.vips[vip]--; np.vips[vip] == 0 {
		delete(np.vips, vip)
		errs = append(errs, np.objs.NpNpVip.Delete(vipKey(vip)))
	} else {
		errs = append(errs, np.objs.NpNpVip.Put(vipKey(vip), uint32(np.vips[vip])))
	}
	errs = append(errs, np.objs.NpNpLut.Delete(s.id))
	for _, b := range s.backends {
		errs = append(errs, np.objs.NpNpBe.Delete(b.id))
		if b.State == BackendActive {
			errs = append(errs, np.objs.NpNpAffMatch.Delete(npAffMatch{BackendID: b.id, SvcID: s.id}))
		}
	}
	delete(np.services, fe)
	return errors.Join(errs...)
}

// Drops returns how many packets the programs dropped, by reason (Cilium's
// numbers).
func (np *NorthSouth) Drops() (map[monitor.DropReason]uint64, error) {
	np.mu.Lock()
	defer np.mu.Unlock()
	if np.closed {
		return nil, nodeplane.ErrClosed
	}
	out := map[monitor.DropReason]uint64{}
	var (
		k uint32
		v uint64
	)
	it := np.objs.NpNpDrops.Iterate()
	for it.Next(&k, &v) {
		if v != 0 {
			out[monitor.DropReason(k)] = v
		}
	}
	return out, it.Err()
}

// NATFlows returns the number of flows in the NAT table SNAT mode uses
// (masquerading's included when the table is shared).
func (np *NorthSouth) NATFlows() (int, error) {
	np.mu.Lock()
	defer np.mu.Unlock()
	if np.closed {
		return 0, nodeplane.ErrClosed
	}
	s, err := np.nat.Stats()
	return s.Flows, err
}

// GCNAT removes the NAT entries of flows idle for longer than Cilium's
// conntrack lifetimes, both directions, and returns how many flows it
// removed; NorthSouthConfig.NATGCInterval runs it periodically.
func (np *NorthSouth) GCNAT() (int, error) {
	np.mu.Lock()
	defer np.mu.Unlock()
	if np.closed {
		return 0, nodeplane.ErrClosed
	}
	return np.nat.GC(nat.Now())
}

// Close stops the NAT collector, detaches the programs and frees the
// maps (a NATMap passed in stays open: it is the caller's).
func (np *NorthSouth) Close() error {
	np.mu.Lock()
	defer np.mu.Unlock()
	if np.closed {
		return nil
	}
	np.closed = true
	np.natGC.Stop()
	var errs []error
	for _, l := range np.links {
		errs = append(errs, l.Close())
	}
	errs = append(errs, np.objs.Close())
	return errors.Join(errs...)
}
