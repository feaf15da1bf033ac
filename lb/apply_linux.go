package lb

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
)

// apply writes u to the maps in the order documented on LB and records it
// in the table. It must be called with lb.mu held.
func (lb *LB) apply(u *update) error {
	ref := u.new
	if ref == nil {
		ref = u.old
	}
	fe := ref.svc.Frontend
	f := family(fe)

	if u.new != nil {
		if err := lb.checkRoom(u, f); err != nil {
			return err
		}
		var undo undoLog
		if err := lb.prepare(u, &undo); err != nil {
			return errors.Join(err, undo.run())
		}
		if err := lb.putService(u.new); err != nil {
			return errors.Join(fmt.Errorf("write service entry of %s: %w", fe, err), undo.run())
		}
	} else if err := lb.deleteService(fe, 0); err != nil {
		return fmt.Errorf("delete service entry of %s: %w", fe, err)
	}

	// The new service entry is live: the rest only removes what no reader
	// starting now can reach.
	cleanupErr := lb.cleanup(u)
	lb.account(u, f)
	lb.t.commit(u)
	if cleanupErr != nil {
		return fmt.Errorf("service %s updated, but stale entries remain: %w", fe, cleanupErr)
	}
	return nil
}

// checkRoom refuses an update whose peak map usage would not fit.
func (lb *LB) checkRoom(u *update, f int) error {
	fe := u.new.svc.Frontend
	svc := lb.svcEntries[f]
	if u.old == nil {
		svc++
	}
	if u.flip {
		svc += len(u.new.slots())
	}
	if svc > int(lb.cfg.ServiceEntries) {
		return fmt.Errorf("%w: %s needs %d service map entries, capacity %d", ErrFull, fe, svc, lb.cfg.ServiceEntries)
	}
	if n := lb.beEntries[f] + len(u.newIDs); n > int(lb.cfg.BackendEntries) {
		return fmt.Errorf("%w: %s needs %d backend map entries, capacity %d", ErrFull, fe, n, lb.cfg.BackendEntries)
	}
	if n := lb.matchEntries + len(u.matchAdd); n > 2*int(lb.cfg.BackendEntries) {
		return fmt.Errorf("%w: %s needs %d affinity match entries, capacity %d", ErrFull, fe, n, 2*lb.cfg.BackendEntries)
	}
	return nil
}

// account updates the entry counts once u is applied.
func (lb *LB) account(u *update, f int) {
	if u.old != nil {
		lb.svcEntries[f] -= 1 + len(u.old.slots())
	}
	if u.new != nil {
		lb.svcEntries[f] += 1 + len(u.new.slots())
	}
	lb.beEntries[f] += len(u.newIDs) - len(u.remove)
	lb.matchEntries += len(u.matchAdd) - len(u.matchDel)
}

// prepare writes everything the new service entry will point at (steps 1
// to 3), logging how to take each write back.
func (lb *LB) prepare(u *update, undo *undoLog) error {
	e, old := u.new, u.old
	fe := e.svc.Frontend

	for _, b := range u.write {
		if err := lb.putBackend(e, b); err != nil {
			return fmt.Errorf("write backend %s of %s: %w", b.Addr, fe, err)
		}
		prev := -1
		if old != nil {
			prev = slices.IndexFunc(old.backends, func(x backendEntry) bool { return x.id == b.id })
		}
		if prev >= 0 {
			ob := old.backends[prev]
			undo.add(func() error { return lb.putBackend(old, ob) })
		} else {
			undo.add(func() error { return lb.deleteBackend(fe, b.id) })
		}
	}

	if u.flip {
		for i, b := range e.slots() {
			slot := e.bank + uint16(i) + 1
			if err := lb.putSlot(e, slot, b); err != nil {
				return fmt.Errorf("write slot %d of %s: %w", slot, fe, err)
			}
			undo.add(func() error { return lb.deleteService(fe, slot) })
		}
	}

	for _, id := range u.matchAdd {
		if err := lb.putMatch(e.id, id); err != nil {
			return fmt.Errorf("write affinity match of %s: %w", fe, err)
		}
		undo.add(func() error { return lb.deleteMatch(e.id, id) })
	}

	if old == nil {
		if err := lb.putRevNAT(e); err != nil {
			return fmt.Errorf("write reverse NAT entry of %s: %w", fe, err)
		}
		undo.add(func() error { return lb.deleteRevNAT(fe, e.id) })
	}

	if needsMaglev(e) && maglevChanged(old, e) {
		if err := lb.putMaglev(e); err != nil {
			return fmt.Errorf("write Maglev table of %s: %w", fe, err)
		}
		if old != nil && needsMaglev(old) {
			undo.add(func() error { return lb.putMaglev(old) })
		} else {
			undo.add(func() error { return lb.deleteMaglev(e.id) })
		}
	}
	return nil
}

// cleanup deletes what the previous service entry led to and the new one
// does not (step 5).
func (lb *LB) cleanup(u *update) error {
	old, e := u.old, u.new
	if old == nil {
		return nil
	}
	fe := old.svc.Frontend
	var errs []error
	if u.flip || e == nil {
		for i := range old.slots() {
			errs = append(errs, lb.deleteService(fe, old.bank+uint16(i)+1))
		}
	}
	for _, id := range u.matchDel {
		errs = append(errs, lb.deleteMatch(old.id, id))
	}
	for _, b := range u.remove {
		errs = append(errs, lb.deleteBackend(fe, b.id))
	}
	if needsMaglev(old) && (e == nil || !needsMaglev(e)) {
		errs = append(errs, lb.deleteMaglev(old.id))
	}
	if e == nil {
		errs = append(errs, lb.deleteRevNAT(fe, old.id))
	}
	return errors.Join(errs...)
}

// undoLog collects the inverse of each write of an update in preparation.
type undoLog []func() error

func (l *undoLog) add(f func() error) { *l = append(*l, f) }

// run undoes the writes, newest first.
func (l *undoLog) run() error {
	var errs []error
	for i := len(*l) - 1; i >= 0; i-- {
		errs = append(errs, (*l)[i]())
	}
	*l = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("undo: %w", err)
	}
	return nil
}

// The map accessors below are the only code that builds map keys and
// values from the table.

func (lb *LB) putService(e *entry) error {
	return lb.putSvcEntry(e.svc.Frontend, 0, serviceValue(e))
}

func (lb *LB) putSlot(e *entry, slot uint16, b backendEntry) error {
	return lb.putSvcEntry(e.svc.Frontend, slot, slotValue(e, b))
}

func (lb *LB) putSvcEntry(fe Frontend, slot uint16, v lbService) error {
	if family(fe) == 0 {
		k := lb4KeyOf(fe, slot)
		return lb.objs.NpLb4Svc.Update(&k, &v, ebpf.UpdateAny)
	}
	k := lb6KeyOf(fe, slot)
	return lb.objs.NpLb6Svc.Update(&k, &v, ebpf.UpdateAny)
}

func (lb *LB) deleteService(fe Frontend, slot uint16) error {
	if family(fe) == 0 {
		k := lb4KeyOf(fe, slot)
		return ignoreMissing(lb.objs.NpLb4Svc.Delete(&k))
	}
	k := lb6KeyOf(fe, slot)
	return ignoreMissing(lb.objs.NpLb6Svc.Delete(&k))
}

func (lb *LB) putBackend(e *entry, b backendEntry) error {
	id := uint32(b.id)
	if family(e.svc.Frontend) == 0 {
		v := lb4BackendOf(e, b)
		return lb.objs.NpLb4Be.Update(&id, &v, ebpf.UpdateAny)
	}
	v := lb6BackendOf(e, b)
	return lb.objs.NpLb6Be.Update(&id, &v, ebpf.UpdateAny)
}

func (lb *LB) deleteBackend(fe Frontend, id BackendID) error {
	k := uint32(id)
	if family(fe) == 0 {
		return ignoreMissing(lb.objs.NpLb4Be.Delete(&k))
	}
	return ignoreMissing(lb.objs.NpLb6Be.Delete(&k))
}

func (lb *LB) putMatch(svc ServiceID, be BackendID) error {
	k := lbAffinityMatch{BackendID: uint32(be), RevNAT: uint16(svc)}
	var one uint8 = 1
	return lb.objs.NpLbAffMatch.Update(&k, &one, ebpf.UpdateAny)
}

func (lb *LB) deleteMatch(svc ServiceID, be BackendID) error {
	k := lbAffinityMatch{BackendID: uint32(be), RevNAT: uint16(svc)}
	return ignoreMissing(lb.objs.NpLbAffMatch.Delete(&k))
}

func (lb *LB) putRevNAT(e *entry) error {
	fe := e.svc.Frontend
	id := uint16(e.id)
	if family(fe) == 0 {
		v := lb4ReverseNAT{Address: fe.Addr.Addr().As4(), Port: portBytes(fe.Addr.Port()), Proto: uint8(fe.Protocol)}
		return lb.objs.NpLb4Revnat.Update(&id, &v, ebpf.UpdateAny)
	}
	v := lb6ReverseNAT{Address: fe.Addr.Addr().As16(), Port: portBytes(fe.Addr.Port()), Proto: uint8(fe.Protocol)}
	return lb.objs.NpLb6Revnat.Update(&id, &v, ebpf.UpdateAny)
}

func (lb *LB) deleteRevNAT(fe Frontend, svc ServiceID) error {
	id := uint16(svc)
	if family(fe) == 0 {
		return ignoreMissing(lb.objs.NpLb4Revnat.Delete(&id))
	}
	return ignoreMissing(lb.objs.NpLb6Revnat.Delete(&id))
}

func ignoreMissing(err error) error {
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
}
