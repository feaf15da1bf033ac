package lb

import (
	"errors"
	"slices"
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

// maglevTable returns e's Maglev lookup table of size m, as backend IDs.
func maglevTable(e *entry, m uint32) ([]uint32, error) {
	_, _ = e, m
	return nil, errors.New("Maglev table generation is not available yet")
}
