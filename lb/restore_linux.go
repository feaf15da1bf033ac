package lb

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// restore rebuilds the table from pinned maps and tidies them (see
// rebuild). Called by New before the programs are attached.
func (lb *LB) restore() error {
	st, err := lb.dump()
	if err != nil {
		return fmt.Errorf("read pinned maps in %s: %w", lb.cfg.PinPath, err)
	}
	t, r, err := rebuild(st)
	if err != nil {
		return fmt.Errorf("restore from %s: %w", lb.cfg.PinPath, err)
	}
	if err := lb.repair(r); err != nil {
		return fmt.Errorf("restore from %s: %w", lb.cfg.PinPath, err)
	}
	lb.t = t
	var (
		k   lbHostAddr
		one uint8
	)
	it := lb.objs.NpLbHostAddr.Iterate()
	for it.Next(&k, &one) {
		lb.hosts[netip.AddrFrom16(k.Address).Unmap()] = struct{}{}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read pinned host addresses: %w", err)
	}
	for _, e := range t.services {
		f := family(e.svc.Frontend)
		lb.svcEntries[f] += 1 + len(e.slots())
		lb.beEntries[f] += len(e.backends)
		lb.matchEntries += len(e.slots())
	}
	return nil
}

func (lb *LB) dump() (*pinnedState, error) {
	st := newPinnedState()
	m := &lb.objs.sockMaps
	if err := dumpMap(m.NpLb4Svc, st.svc4); err != nil {
		return nil, err
	}
	if err := dumpMap(m.NpLb6Svc, st.svc6); err != nil {
		return nil, err
	}
	if err := dumpMap(m.NpLb4Be, st.be4); err != nil {
		return nil, err
	}
	if err := dumpMap(m.NpLb6Be, st.be6); err != nil {
		return nil, err
	}
	if err := dumpMap(m.NpLbAffMatch, st.match); err != nil {
		return nil, err
	}
	if err := dumpMap(m.NpLb4Revnat, st.revnat4); err != nil {
		return nil, err
	}
	if err := dumpMap(m.NpLb6Revnat, st.revnat6); err != nil {
		return nil, err
	}
	var id uint16
	var inner ebpf.MapID
	it := m.NpLbMaglev.Iterate()
	for it.Next(&id, &inner) {
		if len(st.maglev) == 0 {
			if err := lb.checkMaglevSize(inner); err != nil {
				return nil, err
			}
		}
		st.maglev[id] = struct{}{}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", m.NpLbMaglev, err)
	}
	return st, nil
}

// checkMaglevSize refuses pinned Maglev tables of another size than the
// configured one: the outer map only takes inner maps like its first.
func (lb *LB) checkMaglevSize(id ebpf.MapID) error {
	inner, err := ebpf.NewMapFromID(id)
	if err != nil {
		return fmt.Errorf("open pinned Maglev table: %w", err)
	}
	defer inner.Close()
	if got, want := inner.ValueSize(), 4*lb.cfg.MaglevTableSize; got != want {
		return fmt.Errorf("pinned Maglev tables have %d entries, the configuration %d: %w",
			got/4, lb.cfg.MaglevTableSize, ebpf.ErrMapIncompatible)
	}
	return nil
}

func dumpMap[K comparable, V any](m *ebpf.Map, into map[K]V) error {
	var (
		k K
		v V
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		into[k] = v
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("%s: %w", m, err)
	}
	return nil
}

// repair makes the maps the image of the rebuilt table: deletions first,
// so that a reslot can use the bank they free.
func (lb *LB) repair(r *repair) error {
	m := &lb.objs.sockMaps
	var errs []error
	del := func(mp *ebpf.Map, k any) { errs = append(errs, ignoreMissing(mp.Delete(k))) }
	for _, k := range r.delSvc4 {
		del(m.NpLb4Svc, &k)
	}
	for _, k := range r.delSvc6 {
		del(m.NpLb6Svc, &k)
	}
	for _, k := range r.delBe4 {
		del(m.NpLb4Be, &k)
	}
	for _, k := range r.delBe6 {
		del(m.NpLb6Be, &k)
	}
	for _, k := range r.delMatch {
		del(m.NpLbAffMatch, &k)
	}
	for _, k := range r.delRevNAT4 {
		del(m.NpLb4Revnat, &k)
	}
	for _, k := range r.delRevNAT6 {
		del(m.NpLb6Revnat, &k)
	}
	for _, k := range r.delMaglev {
		del(m.NpLbMaglev, &k)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	for _, k := range r.putMatch {
		if err := lb.putMatch(ServiceID(k.RevNAT), BackendID(k.BackendID)); err != nil {
			return err
		}
	}
	for _, e := range r.putRevNAT {
		if err := lb.putRevNAT(e); err != nil {
			return err
		}
	}
	for _, rs := range r.reslot {
		e := rs.e
		for i, b := range e.slots() {
			if err := lb.putSlot(e, e.bank+uint16(i)+1, b); err != nil {
				return err
			}
		}
		if err := lb.putService(e); err != nil {
			return err
		}
		for i := range rs.oldCount {
			if err := lb.deleteService(e.svc.Frontend, rs.oldBank+i+1); err != nil {
				return err
			}
		}
	}
	for _, e := range r.putMaglev {
		if err := lb.putMaglev(e); err != nil {
			return err
		}
	}
	return nil
}
