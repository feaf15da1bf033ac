package lb

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/nodeplane/nodeplane"
)

// pinnedState is the content of the maps an earlier LB pinned, decoded
// into the Go twins of their keys and values.
type pinnedState struct {
	svc4    map[lb4Key]lbService
	svc6    map[lb6Key]lbService
	be4     map[uint32]lb4Backend
	be6     map[uint32]lb6Backend
	match   map[lbAffinityMatch]uint8
	revnat4 map[uint16]lb4ReverseNAT
	revnat6 map[uint16]lb6ReverseNAT
	maglev  map[uint16]struct{}
}

func newPinnedState() *pinnedState {
	return &pinnedState{
		svc4:    make(map[lb4Key]lbService),
		svc6:    make(map[lb6Key]lbService),
		be4:     make(map[uint32]lb4Backend),
		be6:     make(map[uint32]lb6Backend),
		match:   make(map[lbAffinityMatch]uint8),
		revnat4: make(map[uint16]lb4ReverseNAT),
		revnat6: make(map[uint16]lb6ReverseNAT),
		maglev:  make(map[uint16]struct{}),
	}
}

// repair lists what the maps need so that they hold exactly the image of
// the rebuilt table: first the deletions, then the rewrites.
type repair struct {
	delSvc4    []lb4Key
	delSvc6    []lb6Key
	delBe4     []uint32
	delBe6     []uint32
	delMatch   []lbAffinityMatch
	delRevNAT4 []uint16
	delRevNAT6 []uint16
	delMaglev  []uint16

	// reslot lists services whose live bank does not match their active
	// backends; it gives the slots of the bank they have now.
	reslot []reslot
	// putMatch and putRevNAT are missing entries; putMaglev lists services
	// without a table that need one, or whose table predates a reslot.
	putMatch  []lbAffinityMatch
	putRevNAT []*entry
	putMaglev []*entry
}

type reslot struct {
	e        *entry
	oldBank  uint16
	oldCount uint16
}

func (r *repair) empty() bool {
	return len(r.delSvc4)+len(r.delSvc6)+len(r.delBe4)+len(r.delBe6)+len(r.delMatch)+
		len(r.delRevNAT4)+len(r.delRevNAT6)+len(r.delMaglev)+len(r.reslot)+
		len(r.putMatch)+len(r.putRevNAT)+len(r.putMaglev) == 0
}

// svcRecord is a service entry found in a services map, with what rebuild
// learns about it.
type svcRecord struct {
	e     *entry
	count uint16
	live  []uint32 // backend IDs of the live bank, in slot order
}

// rebuild reconstructs the table an earlier LB left in st. It fails with
// ErrPinnedState on content this package cannot have written. Content an
// interrupted update can leave behind is tidied: entries no service leads
// to are deleted, and a service whose live slots disagree with its
// backends' states gets new slots (the backend entries win: an update that
// was cut short after writing them is rolled forward, not back).
func rebuild(st *pinnedState) (*table, *repair, error) {
	t := newTable()
	r := &repair{}
	recs := make(map[ServiceID]*svcRecord)

	addService := func(fe Frontend, v lbService, scope uint8, pad [2]uint8) error {
		rec, err := serviceFromEntry(fe, v, scope, pad)
		if err != nil {
			return err
		}
		if _, dup := recs[rec.e.id]; dup {
			return fmt.Errorf("%w: service ID %d used twice", ErrPinnedState, rec.e.id)
		}
		recs[rec.e.id] = rec
		t.services[fe] = rec.e
		t.byID[rec.e.id] = rec.e
		return nil
	}
	for k, v := range st.svc4 {
		if k.Slot == 0 {
			fe := Frontend{Addr: addrPort4(k.Address, k.Port), Protocol: nodeplane.Protocol(k.Proto)}
			if err := addService(fe, v, k.Scope, k.Pad); err != nil {
				return nil, nil, err
			}
		}
	}
	for k, v := range st.svc6 {
		if k.Slot == 0 {
			fe := Frontend{Addr: addrPort6(k.Address, k.Port), Protocol: nodeplane.Protocol(k.Proto)}
			if err := addService(fe, v, k.Scope, k.Pad); err != nil {
				return nil, nil, err
			}
		}
	}

	// Slots: those in a live bank are read, all others are leftovers.
	slot := func(fe Frontend, s uint16, v lbService) (garbage bool, err error) {
		e := t.services[fe]
		if e == nil {
			return true, nil
		}
		rec := recs[e.id]
		if s <= rec.e.bank || s > rec.e.bank+rec.count {
			return true, nil
		}
		if v.RevNAT != uint16(e.id) || v.BackendID == 0 {
			return false, fmt.Errorf("%w: %s slot %d: backend %d of service %d", ErrPinnedState, fe, s, v.BackendID, v.RevNAT)
		}
		rec.live[s-rec.e.bank-1] = v.BackendID
		return false, nil
	}
	for k, v := range st.svc4 {
		if k.Slot != 0 {
			fe := Frontend{Addr: addrPort4(k.Address, k.Port), Protocol: nodeplane.Protocol(k.Proto)}
			if k.Scope != 0 || k.Pad != [2]uint8{} {
				// Not a key of ours; the datapath never looks it up.
				r.delSvc4 = append(r.delSvc4, k)
				continue
			}
			garbage, err := slot(fe, k.Slot, v)
			if err != nil {
				return nil, nil, err
			}
			if garbage {
				r.delSvc4 = append(r.delSvc4, k)
			}
		}
	}
	for k, v := range st.svc6 {
		if k.Slot != 0 {
			fe := Frontend{Addr: addrPort6(k.Address, k.Port), Protocol: nodeplane.Protocol(k.Proto)}
			if k.Scope != 0 || k.Pad != [2]uint8{} {
				r.delSvc6 = append(r.delSvc6, k)
				continue
			}
			garbage, err := slot(fe, k.Slot, v)
			if err != nil {
				return nil, nil, err
			}
			if garbage {
				r.delSvc6 = append(r.delSvc6, k)
			}
		}
	}

	// Backends join the service named in them.
	addBackend := func(id uint32, addr netip.AddrPort, proto, state uint8, weight, revNAT uint16, v4 bool) (garbage bool, err error) {
		e := t.byID[ServiceID(revNAT)]
		if e == nil {
			return true, nil
		}
		fe := e.svc.Frontend
		switch {
		case id == 0:
			return false, fmt.Errorf("%w: backend ID 0", ErrPinnedState)
		case family(fe) == 0 != v4:
			return false, fmt.Errorf("%w: backend %d (%s) of %s is in the other family's map", ErrPinnedState, id, addr, fe)
		case validateAddr(addr) != nil:
			return false, fmt.Errorf("%w: backend %d of %s: %s: %v", ErrPinnedState, id, fe, addr, validateAddr(addr))
		case proto != uint8(fe.Protocol):
			return false, fmt.Errorf("%w: backend %d of %s has protocol %d", ErrPinnedState, id, fe, proto)
		case state > uint8(BackendMaintenance):
			return false, fmt.Errorf("%w: backend %d of %s has state %d", ErrPinnedState, id, fe, state)
		case weight == 0:
			return false, fmt.Errorf("%w: backend %d of %s has weight 0", ErrPinnedState, id, fe)
		case slices.ContainsFunc(e.backends, func(b backendEntry) bool { return b.Addr == addr }):
			return false, fmt.Errorf("%w: %s has backend %s twice", ErrPinnedState, fe, addr)
		case len(e.backends) >= MaxBackends:
			return false, fmt.Errorf("%w: %s has more than %d backends", ErrPinnedState, fe, MaxBackends)
		}
		e.backends = append(e.backends, backendEntry{
			Backend: Backend{Addr: addr, Weight: weight, State: BackendState(state)},
			id:      BackendID(id),
		})
		t.backends[BackendID(id)] = e
		return false, nil
	}
	for id, v := range st.be4 {
		garbage, err := addBackend(id, addrPort4(v.Address, v.Port), v.Proto, v.State, v.Weight, v.RevNAT, true)
		if err != nil {
			return nil, nil, err
		}
		if garbage {
			r.delBe4 = append(r.delBe4, id)
		}
	}
	for id, v := range st.be6 {
		if _, dup := st.be4[id]; dup {
			return nil, nil, fmt.Errorf("%w: backend ID %d in both families", ErrPinnedState, id)
		}
		garbage, err := addBackend(id, addrPort6(v.Address, v.Port), v.Proto, v.State, v.Weight, v.RevNAT, false)
		if err != nil {
			return nil, nil, err
		}
		if garbage {
			r.delBe6 = append(r.delBe6, id)
		}
	}

	// Order each service's backends: the live bank first, in slot order,
	// then the rest by ID. When every live slot holds an active backend and
	// no active backend is missing from them, the slots are already right.
	for _, id := range slices.Sorted(maps.Keys(recs)) {
		rec := recs[id]
		e := rec.e
		pos := make(map[BackendID]int, len(rec.live))
		for i, b := range rec.live {
			if b == 0 {
				return nil, nil, fmt.Errorf("%w: %s: slot %d of its live bank is missing", ErrPinnedState, e.svc.Frontend, int(e.bank)+i+1)
			}
			if t.backends[BackendID(b)] != e {
				return nil, nil, fmt.Errorf("%w: %s: slot %d names backend %d, not one of its own", ErrPinnedState, e.svc.Frontend, int(e.bank)+i+1, b)
			}
			if _, dup := pos[BackendID(b)]; dup {
				return nil, nil, fmt.Errorf("%w: %s: backend %d in two slots", ErrPinnedState, e.svc.Frontend, b)
			}
			pos[BackendID(b)] = i
		}
		// Which backends are local is not in the maps: with
		// InternalTrafficLocal, the ones in the live slots are.
		if e.svc.InternalTrafficLocal {
			for i := range e.backends {
				_, live := pos[e.backends[i].id]
				e.backends[i].Local = live
			}
		}
		slices.SortFunc(e.backends, func(a, b backendEntry) int {
			pa, aLive := pos[a.id]
			pb, bLive := pos[b.id]
			switch {
			case aLive && bLive:
				return cmp.Compare(pa, pb)
			case aLive:
				return -1
			case bLive:
				return 1
			}
			return cmp.Compare(a.id, b.id)
		})
		if !slices.Equal(slotIDs(e), rec.live) {
			r.reslot = append(r.reslot, reslot{e: e, oldBank: e.bank, oldCount: rec.count})
			e.bank ^= slotBank
		}
	}

	// Affinity match entries: exactly one per active backend.
	want := make(map[lbAffinityMatch]bool)
	for _, e := range t.services {
		for _, b := range e.slots() {
			want[lbAffinityMatch{BackendID: uint32(b.id), RevNAT: uint16(e.id)}] = true
		}
	}
	for k := range st.match {
		if !want[k] {
			r.delMatch = append(r.delMatch, k)
		}
		delete(want, k)
	}
	for k := range want {
		r.putMatch = append(r.putMatch, k)
	}

	// Reverse NAT entries: one per service, naming its frontend.
	for id, v := range st.revnat4 {
		e := t.byID[ServiceID(id)]
		if e == nil || family(e.svc.Frontend) != 0 {
			r.delRevNAT4 = append(r.delRevNAT4, id)
			continue
		}
		if addrPort4(v.Address, v.Port) != e.svc.Frontend.Addr || v.Proto != uint8(e.svc.Frontend.Protocol) {
			r.putRevNAT = append(r.putRevNAT, e)
		}
	}
	for id, v := range st.revnat6 {
		e := t.byID[ServiceID(id)]
		if e == nil || family(e.svc.Frontend) != 1 {
			r.delRevNAT6 = append(r.delRevNAT6, id)
			continue
		}
		if addrPort6(v.Address, v.Port) != e.svc.Frontend.Addr || v.Proto != uint8(e.svc.Frontend.Protocol) {
			r.putRevNAT = append(r.putRevNAT, e)
		}
	}
	for id, e := range t.byID {
		_, ok4 := st.revnat4[uint16(id)]
		_, ok6 := st.revnat6[uint16(id)]
		if (family(e.svc.Frontend) == 0 && !ok4) || (family(e.svc.Frontend) == 1 && !ok6) {
			r.putRevNAT = append(r.putRevNAT, e)
		}
	}

	// Maglev tables: one per service that needs one, rebuilt when its
	// slots change.
	reslotted := make(map[ServiceID]bool)
	for _, rs := range r.reslot {
		reslotted[rs.e.id] = true
	}
	for id := range st.maglev {
		if e := t.byID[ServiceID(id)]; e == nil || !needsMaglev(e) {
			r.delMaglev = append(r.delMaglev, id)
		}
	}
	for id, e := range t.byID {
		if !needsMaglev(e) {
			continue
		}
		if _, ok := st.maglev[uint16(id)]; !ok || reslotted[id] {
			r.putMaglev = append(r.putMaglev, e)
		}
	}

	for id := range t.byID {
		t.lastServiceID = max(t.lastServiceID, id)
	}
	for id := range t.backends {
		t.lastBackendID = max(t.lastBackendID, id)
	}
	return t, r, nil
}

// serviceFromEntry decodes a service entry (slot 0).
func serviceFromEntry(fe Frontend, v lbService, scope uint8, pad [2]uint8) (*svcRecord, error) {
	bad := func(format string, args ...any) (*svcRecord, error) {
		return nil, fmt.Errorf("%w: service %s: %s", ErrPinnedState, fe, fmt.Sprintf(format, args...))
	}
	svc := Service{Frontend: fe}
	svc.InternalTrafficLocal = v.Flags&svcFlagIntLocal != 0
	switch v.Flags &^ (svcFlagAffinity | svcFlagIntLocal) {
	case 0:
		svc.Type = ClusterIP
	case svcFlagNodePort:
		svc.Type = NodePort
	case svcFlagExternalIP:
		svc.Type = ExternalIP
	case svcFlagLoadBalancer:
		svc.Type = LoadBalancer
	default:
		return bad("flags %#x", v.Flags)
	}
	switch v.Algorithm {
	case algRandom:
		svc.Algorithm = AlgorithmRandom
	case algMaglev:
		svc.Algorithm = AlgorithmMaglev
	default:
		return bad("algorithm %d", v.Algorithm)
	}
	if (v.Flags&svcFlagAffinity != 0) != (v.AffinityTimeout != 0) {
		return bad("affinity flag and timeout %ds disagree", v.AffinityTimeout)
	}
	svc.SessionAffinity = time.Duration(v.AffinityTimeout) * time.Second
	if err := svc.validate(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPinnedState, err)
	}
	switch {
	case scope != 0 || pad != [2]uint8{}:
		return bad("key scope %d, padding %v", scope, pad)
	case v.RevNAT == 0:
		return bad("ID 0")
	case v.BackendID != 0:
		return bad("backend ID %d in the service entry", v.BackendID)
	case v.SlotBase != 0 && v.SlotBase != slotBank:
		return bad("slot base %d", v.SlotBase)
	case int(v.Count) > MaxBackends:
		return bad("%d slots", v.Count)
	}
	e := &entry{svc: svc, id: ServiceID(v.RevNAT), bank: v.SlotBase}
	return &svcRecord{e: e, count: v.Count, live: make([]uint32, v.Count)}, nil
}

func slotIDs(e *entry) []uint32 {
	var ids []uint32
	for _, b := range e.slots() {
		ids = append(ids, uint32(b.id))
	}
	return ids
}
