package ipcache

import (
	"net/netip"
	"slices"
)

// lpm is a longest-prefix-match table of one address family: a map per
// prefix length, searched from the longest length in use to the shortest.
type lpm struct {
	byLen []map[netip.Prefix]Entry
	// lens lists the lengths with entries, longest first.
	lens []int
	n    int
}

func newLPM(bits int) lpm {
	return lpm{byLen: make([]map[netip.Prefix]Entry, bits+1)}
}

func (t *lpm) get(p netip.Prefix) (Entry, bool) {
	e, ok := t.byLen[p.Bits()][p]
	return e, ok
}

func (t *lpm) set(p netip.Prefix, e Entry) {
	m := t.byLen[p.Bits()]
	if m == nil {
		m = make(map[netip.Prefix]Entry)
		t.byLen[p.Bits()] = m
	}
	if _, ok := m[p]; !ok {
		t.n++
		if len(m) == 0 {
			t.lens = append(t.lens, p.Bits())
			slices.SortFunc(t.lens, func(a, b int) int { return b - a })
		}
	}
	m[p] = e
}

func (t *lpm) del(p netip.Prefix) {
	m := t.byLen[p.Bits()]
	if _, ok := m[p]; !ok {
		return
	}
	delete(m, p)
	t.n--
	if len(m) == 0 {
		t.lens = slices.DeleteFunc(t.lens, func(l int) bool { return l == p.Bits() })
	}
}

func (t *lpm) lookup(addr netip.Addr) (netip.Prefix, Entry, bool) {
	for _, bits := range t.lens {
		p, _ := addr.Prefix(bits)
		if e, ok := t.byLen[bits][p]; ok {
			return p, e, true
		}
	}
	return netip.Prefix{}, Entry{}, false
}
