package maglev

import (
	"slices"
	"strings"
)

// referenceTable computes the Maglev table the direct way, as the
// definition (and Cilium) states it: materialise every backend's whole
// permutation of the M entries, mark empty entries with InvalidID, and let
// backends claim entries turn by turn. It is the oracle for the lazy
// Builder and the baseline of its benchmarks.
func referenceTable(m uint64, seed uint32, backends []Backend) []uint32 {
	sorted := slices.Clone(backends)
	slices.SortFunc(sorted, func(a, b Backend) int { return strings.Compare(a.Key, b.Key) })

	n := len(sorted)
	perm := make([]uint64, n*int(m))
	for i, be := range sorted {
		h1, h2 := murmur3(be.Key, seed)
		offset, skip := h1%m, h2%(m-1)+1
		row := perm[i*int(m) : (i+1)*int(m)]
		row[0] = offset
		for j := 1; j < len(row); j++ {
			row[j] = (row[j-1] + skip) % m
		}
	}

	var weightSum uint64
	counter := make([]float64, n)
	for i, be := range sorted {
		weightSum += uint64(be.Weight)
		counter[i] = float64(be.Weight) / float64(n)
	}
	weighted := weightSum/uint64(n) > 1

	next := make([]uint64, n)
	table := make([]uint32, m)
	for i := range table {
		table[i] = InvalidID
	}
	for turn := range m {
		i := int(turn % uint64(n))
		for weighted && (turn+1)*uint64(sorted[i].Weight) < uint64(counter[i]) {
			i = (i + 1) % n
		}
		if weighted {
			counter[i] += float64(weightSum)
		}
		c := perm[uint64(i)*m+next[i]]
		for table[c] != InvalidID {
			next[i]++
			c = perm[uint64(i)*m+next[i]]
		}
		table[c] = sorted[i].ID
		next[i]++
	}
	return table
}
