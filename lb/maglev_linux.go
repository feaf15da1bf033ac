package lb

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// putMaglev writes e's Maglev table as a fresh inner map and swaps it into
// the outer map in one update, so a reader sees the old or the new table.
func (lb *LB) putMaglev(e *entry) error {
	tbl, err := maglevTable(lb.maglev, e)
	if err != nil {
		return err
	}
	inner, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "np_lb_maglev_in",
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  4 * lb.cfg.MaglevTableSize,
		MaxEntries: 1,
	})
	if err != nil {
		return fmt.Errorf("create Maglev table map: %w", err)
	}
	defer inner.Close()
	if err := inner.Put(uint32(0), tbl); err != nil {
		return fmt.Errorf("fill Maglev table map: %w", err)
	}
	id := uint16(e.id)
	return lb.objs.NpLbMaglev.Update(&id, inner, ebpf.UpdateAny)
}

func (lb *LB) deleteMaglev(svc ServiceID) error {
	id := uint16(svc)
	return ignoreMissing(lb.objs.NpLbMaglev.Delete(&id))
}
