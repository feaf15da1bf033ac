package lb

import (
	"fmt"
	"slices"

	"github.com/nodeplane/nodeplane/lb/maglev"
)

// needsMaglev reports whether e gets a Maglev table: a Maglev service with
// an active backend. Only active backends are in the table, as only they
// may receive new flows.
func needsMaglev(e *entry) bool {
	return e.svc.Algorithm == AlgorithmMaglev && len(e.slots()) > 0
}

// maglevChanged reports whether e's table differs from old's: the table is
// a function of the active backends' addresses and weights, and it names
// them by ID.
func maglevChanged(old, e *entry) bool {
	if old == nil || !needsMaglev(old) {
		return true
	}
	return !slices.EqualFunc(old.slots(), e.slots(), func(a, b backendEntry) bool {
		return a.id == b.id && a.Addr == b.Addr && a.Weight == b.Weight
	})
}

// maglevTable returns e's Maglev lookup table, as backend IDs. Backends are
// keyed as Cilium keys them, so every node, and Cilium itself, computes the
// same table for the same backends and seed.
func maglevTable(b *maglev.Builder, e *entry) ([]uint32, error) {
	slots := e.slots()
	in := make([]maglev.Backend, len(slots))
	for i, be := range slots {
		key, err := maglev.BackendKey(be.Addr, e.svc.Frontend.Protocol)
		if err != nil {
			return nil, err
		}
		in[i] = maglev.Backend{Key: key, ID: uint32(be.id), Weight: be.Weight}
	}
	tbl, err := b.Table(in)
	if err != nil {
		return nil, fmt.Errorf("Maglev table of %s: %w", e.svc.Frontend, err)
	}
	return tbl, nil
}
