package lb

import (
	"fmt"
	"net/netip"
	"slices"
)

// slotBank is where the second bank of backend slots starts (LB_SLOT_BANK in
// bpf/lb.h). Bank 0 uses slots 1..slotBank-1, bank 1 slotBank+1..2*slotBank-1.
const slotBank = 32768

// table is the control plane's account of every service: exactly what the
// kernel maps hold once the last update returned. LB keeps it in step with
// the maps; Model runs the datapath's decision procedure against it. Both
// derive IDs, slot order and banks from the same code, so the two agree on
// every number the kernel sees.
type table struct {
	services map[Frontend]*entry
	byID     map[ServiceID]*entry
	// backends maps every backend ID in use to its service.
	backends map[BackendID]*entry

	lastServiceID ServiceID
	lastBackendID BackendID
}

// entry is one service as programmed.
type entry struct {
	svc Service
	id  ServiceID
	// bank is the slot base of the live bank: 0 or slotBank.
	bank uint16
	// backends in the order the user gave them, with normalised weights.
	backends []backendEntry
}

type backendEntry struct {
	Backend
	id BackendID
}

// slots returns the backends that take new connections, in slot order:
// slot bank+1+i holds slots()[i]. They are the active ones and, with
// InternalTrafficLocal, only the local ones among them.
func (e *entry) slots() []backendEntry {
	var s []backendEntry
	for _, b := range e.backends {
		if b.State == BackendActive && (b.Local || !e.svc.InternalTrafficLocal) {
			s = append(s, b)
		}
	}
	return s
}

func (e *entry) clone() *entry {
	c := *e
	c.backends = slices.Clone(e.backends)
	return &c
}

func (e *entry) publicBackends() []Backend {
	out := make([]Backend, len(e.backends))
	for i, b := range e.backends {
		out[i] = b.Backend
	}
	return out
}

func newTable() *table {
	return &table{
		services: make(map[Frontend]*entry),
		byID:     make(map[ServiceID]*entry),
		backends: make(map[BackendID]*entry),
	}
}

// update is the transition of one service, computed before any map is
// written. Applying it in the order documented on LB keeps every connect
// consistent.
type update struct {
	// old is nil for a new service; new is nil for a deletion.
	old, new *entry
	// write lists the backend entries to create or rewrite.
	write []backendEntry
	// remove lists the backend entries to delete once the service entry no
	// longer leads to them.
	remove []backendEntry
	// flip is set when the slots change: they are written to the bank
	// new.bank, and old.bank is cleared after the swap.
	flip bool
	// matchAdd and matchDel are the backends that become, or stop being,
	// active members of the service (affinity match entries).
	matchAdd, matchDel []BackendID
	// newIDs are the backend IDs this update allocates.
	newIDs []BackendID
}

// planUpsert validates svc and backends and computes the update that makes
// the service look like that. It does not change t.
func (t *table) planUpsert(svc Service, backends []Backend) (*update, error) {
	if err := svc.validate(); err != nil {
		return nil, err
	}
	if err := validateBackends(svc.Frontend, backends); err != nil {
		return nil, err
	}

	old := t.services[svc.Frontend]
	ne := &entry{svc: svc, backends: make([]backendEntry, 0, len(backends))}
	u := &update{old: old, new: ne}
	oldBy := make(map[netip.AddrPort]backendEntry)
	if old != nil {
		ne.id = old.id
		for _, b := range old.backends {
			oldBy[b.Addr] = b
		}
	} else {
		id, ok := t.nextServiceID()
		if !ok {
			return nil, fmt.Errorf("%w: all %d service IDs in use", ErrFull, 1<<16-1)
		}
		ne.id = id
	}

	reserved := make(map[BackendID]struct{})
	taken := func(id BackendID) bool {
		_, used := t.backends[id]
		_, res := reserved[id]
		return used || res
	}
	cursor := t.lastBackendID
	for _, b := range backends {
		b.Weight = b.weight()
		if ob, ok := oldBy[b.Addr]; ok {
			be := backendEntry{Backend: b, id: ob.id}
			ne.backends = append(ne.backends, be)
			if ob.Backend != b {
				u.write = append(u.write, be)
			}
			delete(oldBy, b.Addr)
			continue
		}
		id, ok := t.nextBackendID(cursor, taken)
		if !ok {
			return nil, fmt.Errorf("%w: no free backend ID", ErrFull)
		}
		cursor = id
		reserved[id] = struct{}{}
		u.newIDs = append(u.newIDs, id)
		be := backendEntry{Backend: b, id: id}
		ne.backends = append(ne.backends, be)
		u.write = append(u.write, be)
	}
	if old != nil {
		for _, b := range old.backends {
			if _, gone := oldBy[b.Addr]; gone {
				u.remove = append(u.remove, b)
			}
		}
	}

	wasActive := make(map[BackendID]bool)
	if old != nil {
		for _, b := range old.slots() {
			wasActive[b.id] = true
		}
	}
	newSlots := ne.slots()
	for _, b := range newSlots {
		if !wasActive[b.id] {
			u.matchAdd = append(u.matchAdd, b.id)
		}
		delete(wasActive, b.id)
	}
	if old != nil {
		for _, b := range old.slots() {
			if wasActive[b.id] {
				u.matchDel = append(u.matchDel, b.id)
			}
		}
	}

	switch {
	case old == nil:
		ne.bank = 0
		u.flip = len(newSlots) > 0
	case !sameSlots(old.slots(), newSlots):
		ne.bank = old.bank ^ slotBank
		u.flip = true
	default:
		ne.bank = old.bank
	}
	return u, nil
}

// planUpsertBackends computes adding backends to the service at fe, or
// updating those with an address the service already has.
func (t *table) planUpsertBackends(fe Frontend, backends []Backend) (*update, error) {
	e := t.services[fe]
	if e == nil {
		return nil, fmt.Errorf("%w: %s", ErrServiceNotFound, fe)
	}
	merged := e.publicBackends()
	for _, b := range backends {
		i := slices.IndexFunc(merged, func(x Backend) bool { return x.Addr == b.Addr })
		if i >= 0 {
			merged[i] = b
		} else {
			merged = append(merged, b)
		}
	}
	return t.planUpsert(e.svc, merged)
}

// planDeleteBackends computes removing the backends with the given
// addresses from the service at fe; each must be one of its backends.
func (t *table) planDeleteBackends(fe Frontend, addrs []netip.AddrPort) (*update, error) {
	e := t.services[fe]
	if e == nil {
		return nil, fmt.Errorf("%w: %s", ErrServiceNotFound, fe)
	}
	kept := e.publicBackends()
	for _, a := range addrs {
		i := slices.IndexFunc(kept, func(x Backend) bool { return x.Addr == a })
		if i < 0 {
			return nil, fmt.Errorf("%w: %s is not a backend of %s", ErrInvalidBackend, a, fe)
		}
		kept = slices.Delete(kept, i, i+1)
	}
	return t.planUpsert(e.svc, kept)
}

// planDelete computes the removal of the service at fe.
func (t *table) planDelete(fe Frontend) (*update, error) {
	old := t.services[fe]
	if old == nil {
		return nil, fmt.Errorf("%w: %s", ErrServiceNotFound, fe)
	}
	u := &update{old: old, remove: slices.Clone(old.backends)}
	for _, b := range old.slots() {
		u.matchDel = append(u.matchDel, b.id)
	}
	return u, nil
}

// commit records u as applied.
func (t *table) commit(u *update) {
	if u.old != nil {
		for _, b := range u.remove {
			delete(t.backends, b.id)
		}
	}
	if u.new == nil {
		delete(t.services, u.old.svc.Frontend)
		delete(t.byID, u.old.id)
		return
	}
	e := u.new
	t.services[e.svc.Frontend] = e
	t.byID[e.id] = e
	for _, b := range e.backends {
		t.backends[b.id] = e
	}
	if u.old == nil {
		t.lastServiceID = e.id
	}
	if n := len(u.newIDs); n > 0 {
		t.lastBackendID = u.newIDs[n-1]
	}
}

// unchanged reports whether u would write nothing.
func (u *update) unchanged() bool {
	return u.old != nil && u.new != nil && u.old.svc == u.new.svc && !u.flip &&
		len(u.write) == 0 && len(u.remove) == 0
}

func sameSlots(a, b []backendEntry) bool {
	return slices.EqualFunc(a, b, func(x, y backendEntry) bool { return x.id == y.id })
}

// nextServiceID returns the first free ID after the last one handed out.
// Handing IDs out round-robin rather than lowest-first keeps a deleted
// service's ID, and the affinity and reverse entries the kernel still holds
// under it, unused for as long as possible.
func (t *table) nextServiceID() (ServiceID, bool) {
	id := t.lastServiceID
	for range 1<<16 - 1 {
		id++
		if id == 0 {
			id = 1
		}
		if _, used := t.byID[id]; !used {
			return id, true
		}
	}
	return 0, false
}

// nextBackendID is nextServiceID for backends, searching after id; taken
// also excludes the IDs an update in preparation has reserved.
func (t *table) nextBackendID(id BackendID, taken func(BackendID) bool) (BackendID, bool) {
	// Far fewer backends than IDs fit in the maps, so this ends quickly;
	// the bound only guards against a table that is somehow full.
	for range len(t.backends) + MaxBackends + 2 {
		id++
		// 0 means no backend in the maps, and a Maglev table cannot
		// hold ^0.
		if id == 0 || id == ^BackendID(0) {
			id = 1
		}
		if !taken(id) {
			return id, true
		}
	}
	return 0, false
}

// lookup returns a copy of the service at fe.
func (t *table) lookup(fe Frontend) (Service, []Backend, bool) {
	e := t.services[fe]
	if e == nil {
		return Service{}, nil, false
	}
	return e.svc, e.publicBackends(), true
}

// family is 0 for IPv4 frontends, 1 for IPv6 ones.
func family(fe Frontend) int {
	if fe.Addr.Addr().Is4() {
		return 0
	}
	return 1
}
