package ipam

import (
	"fmt"
	"net/netip"
	"slices"
)

// Snapshot is the state of a [Pool]: who holds which address, and where the
// search for the next free address resumes. It is what a [StateFile] stores.
type Snapshot struct {
	// Allocations in ascending address order, IPv4 first.
	Allocations []Allocation
	// Next holds, per family the pool serves, the address at which
	// AllocateNext resumes its search. Restoring it keeps the rotation
	// across restarts, so a restart does not hand out a just-released
	// address first.
	Next []netip.Addr
}

// Allocation is one address and its owner.
type Allocation struct {
	Addr  netip.Addr
	Owner string
}

// Owners returns the distinct owners in s, sorted.
func (s Snapshot) Owners() []string {
	owners := make([]string, 0, len(s.Allocations))
	for _, a := range s.Allocations {
		owners = append(owners, a.Owner)
	}
	slices.Sort(owners)
	return slices.Compact(owners)
}

// Snapshot returns the pool's current state.
func (p *Pool) Snapshot() Snapshot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.snapshotLocked()
}

func (p *Pool) snapshotLocked() Snapshot {
	s := Snapshot{Allocations: make([]Allocation, 0, len(p.owners))}
	for a, o := range p.owners {
		s.Allocations = append(s.Allocations, Allocation{Addr: a, Owner: o})
	}
	slices.SortFunc(s.Allocations, func(x, y Allocation) int { return x.Addr.Compare(y.Addr) })
	for i := range p.fams {
		if f := &p.fams[i]; len(f.blocks) > 0 {
			s.Next = append(s.Next, f.blocks[f.cur].addr(f.curOff))
		}
	}
	return s
}

// Restore re-reserves the allocations in s, all or none: after a restart,
// a caller passes the snapshot it saved (usually filtered to the owners that
// still exist; the rest are garbage to collect) and the pool then hands out
// exactly the addresses nobody holds.
//
// Restore fails without changing anything if an address is outside the pool
// ([ErrOutOfRange]), reserved ([ErrReserved]), held by a different owner or
// listed twice ([*AllocatedError]), or if an owner is invalid. An address
// the pool already gives to the same owner is accepted, so restoring twice
// is harmless. Next addresses outside the pool are ignored: they are hints.
// A pool with a [StateFile] restores its file in [New] by itself.
func (p *Pool) Restore(s Snapshot) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	undo, err := p.restoreLocked(s)
	if err == nil {
		err = p.persist(undo)
	}
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	return nil
}

func (p *Pool) restoreLocked(s Snapshot) (func(), error) {
	seen := make(map[netip.Addr]string, len(s.Allocations))
	var add []Allocation
	for _, al := range s.Allocations {
		if err := checkAddr(al.Addr); err != nil {
			return nil, err
		}
		if err := checkOwner(al.Owner); err != nil {
			return nil, fmt.Errorf("%s: %w", al.Addr, err)
		}
		if o, dup := seen[al.Addr]; dup {
			return nil, fmt.Errorf("%s listed twice: %w", al.Addr, &AllocatedError{Addr: al.Addr, Owner: o})
		}
		seen[al.Addr] = al.Owner
		b, _ := p.fams[familyOf(al.Addr).index()].find(al.Addr)
		if b == nil {
			return nil, fmt.Errorf("%s: %w", al.Addr, ErrOutOfRange)
		}
		if o, ok := p.owners[al.Addr]; ok {
			if o != al.Owner {
				return nil, &AllocatedError{Addr: al.Addr, Owner: o}
			}
			continue
		}
		if b.taken.isSet(b.offset(al.Addr)) {
			return nil, fmt.Errorf("%s: %w", al.Addr, ErrReserved)
		}
		add = append(add, al)
	}

	type cursor struct {
		cur int
		off u128
	}
	var saved [2]cursor
	for i := range p.fams {
		saved[i] = cursor{p.fams[i].cur, p.fams[i].curOff}
	}
	for _, al := range add {
		b, _ := p.fams[familyOf(al.Addr).index()].find(al.Addr)
		b.taken.set(b.offset(al.Addr))
		p.addOwner(al.Addr, al.Owner)
	}
	for _, a := range s.Next {
		if checkAddr(a) != nil {
			continue
		}
		f := &p.fams[familyOf(a).index()]
		if b, bi := f.find(a); b != nil {
			f.cur, f.curOff = bi, b.offset(a)
		}
	}
	return func() {
		for _, al := range add {
			b, _ := p.fams[familyOf(al.Addr).index()].find(al.Addr)
			b.taken.clear(b.offset(al.Addr))
			p.removeOwner(al.Addr)
		}
		for i := range p.fams {
			p.fams[i].cur, p.fams[i].curOff = saved[i].cur, saved[i].off
		}
	}, nil
}
