package maglev

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
)

// Errors returned by this package, wrapped with the offending value.
var (
	// ErrTableSize: the table size is not one of [SupportedTableSizes].
	ErrTableSize = errors.New("unsupported maglev table size")
	// ErrHashSeed: the hash seed is not 12 bytes of standard base64.
	ErrHashSeed = errors.New("invalid maglev hash seed")
	// ErrNoBackends: a table needs at least one backend.
	ErrNoBackends = errors.New("no backends")
	// ErrInvalidID: a backend has the ID [InvalidID].
	ErrInvalidID = errors.New("invalid backend ID")
	// ErrTableLength: the table to fill does not have the configured size.
	ErrTableLength = errors.New("table length differs from the table size")
	// ErrInvalidAddress: a backend address is invalid or carries a zone.
	ErrInvalidAddress = errors.New("invalid backend address")
	// ErrUnsupportedProtocol: a backend key cannot name the protocol.
	ErrUnsupportedProtocol = errors.New("unsupported backend protocol")
)

// Builder computes Maglev lookup tables of one size and seed. It owns the
// scratch space of the computation and reuses it from call to call, so that
// building a table allocates nothing but, with [Builder.Table], the table.
//
// A Builder is safe for concurrent use; its calls are serialised because
// they share the scratch space. Use a Builder per goroutine to build tables
// in parallel.
type Builder struct {
	size uint32 // M, prime
	seed uint32 // murmur3 seed of the backend keys

	mu sync.Mutex
	// order holds the indexes of the backends of the current call, sorted by
	// key.
	order []int32
	// turns holds the per-backend fill state, in key order.
	turns []turn
	// used has a bit per table entry, set once the entry is filled. At most
	// 16 KiB, it stays in L1 cache where probing the table itself would not.
	used []uint64
	// due is the calendar of weighted turns; see fillWeightedCalendar.
	due calendar
	// scanBudget is defaultScanBudget; tests set 0 (calendar only) and
	// math.MaxUint32 (scan only) to check both ways of pacing weights.
	scanBudget uint64
}

// turn is a backend's state while a table is filled.
type turn struct {
	// next is the entry the backend tries on its next turn: the next element
	// of its permutation (offset + j·skip) mod M, computed as needed
	// instead of materialising the permutation.
	next uint32
	skip uint32
	id   uint32
	// weight and the counter below pace a weighted backend's turns.
	weight uint32
	// credit is Cilium's floating-point weight counter, kept in float64 so
	// that rounding matches it bit for bit.
	credit float64
	// due is uint64(credit): the backend may take turn n (0-based) once
	// (n+1)·weight ≥ due.
	due uint64
}

// New returns a Builder for cfg, or an error wrapping [ErrTableSize] or
// [ErrHashSeed] if cfg is invalid.
func New(cfg Config) (*Builder, error) {
	cfg = cfg.withDefaults()
	seed, err := cfg.murmurSeed()
	if err != nil {
		return nil, err
	}
	m := uint32(cfg.TableSize)
	return &Builder{
		size: m,
		seed: seed,
		used: make([]uint64, (m+63)/64),

		scanBudget: defaultScanBudget,
	}, nil
}

// TableSize returns the number of entries of the Builder's tables.
func (b *Builder) TableSize() int {
	return int(b.size)
}

// Table returns a new lookup table for backends: TableSize entries, each the
// ID of the backend that entry selects. The table depends on the backends'
// keys, weights and IDs but not on their order, unless two backends share a
// key: then, as in Cilium, their order decides which gets which entries.
// See [Builder.Fill] for the errors.
func (b *Builder) Table(backends []Backend) ([]uint32, error) {
	if err := validate(backends); err != nil {
		return nil, err
	}
	table := make([]uint32, b.size)
	b.fill(table, backends)
	return table, nil
}

// Fill computes the lookup table for backends into table, which must have
// TableSize entries, and allocates nothing. Table and Fill give the same
// result.
//
// It fails, leaving table untouched, with [ErrTableLength] if table has the
// wrong length, [ErrNoBackends] if backends is empty and [ErrInvalidID] if a
// backend's ID is [InvalidID].
func (b *Builder) Fill(table []uint32, backends []Backend) error {
	if len(table) != int(b.size) {
		return fmt.Errorf("%w: %d entries, want %d", ErrTableLength, len(table), b.size)
	}
	if err := validate(backends); err != nil {
		return err
	}
	b.fill(table, backends)
	return nil
}

func validate(backends []Backend) error {
	if len(backends) == 0 {
		return ErrNoBackends
	}
	for i := range backends {
		if backends[i].ID == InvalidID {
			return fmt.Errorf("%w: backend %d (%q) has ID %#x", ErrInvalidID, i, backends[i].Key, InvalidID)
		}
	}
	return nil
}

// fill computes the table of valid, non-empty backends.
//
// It follows Cilium's definition of the table (pkg/maglev, GetLookupTable):
// backends sorted by key; backend i's permutation of the entries starts at
// h1 mod M and steps by h2 mod (M-1) + 1, where h1, h2 = MurmurHash3 x64_128
// of the key; turn n (0 ≤ n < M) starts with backend n mod N and, when
// weights are in use, passes over the backends whose weight counter says
// they are not due; the backend that takes the turn fills the first entry of
// its permutation it has not tried yet that is still empty.
//
// Cilium materialises all N permutations (N·M entries) before filling. A
// permutation is only ever read in order from where the backend left off,
// so here each backend keeps its next entry and steps it by skip: the same
// table for about M·ln M probes of a bitmap rather than N·M writes and reads
// of memory.
func (b *Builder) fill(table []uint32, backends []Backend) {
	b.mu.Lock()
	defer b.mu.Unlock()

	b.sortByKey(backends)

	m := uint64(b.size)
	n := len(backends)
	b.turns = slices.Grow(b.turns[:0], n)[:n]
	var weightSum uint64
	for i, idx := range b.order {
		be := &backends[idx]
		h1, h2 := murmur3(be.Key, b.seed)
		b.turns[i] = turn{
			next:   uint32(h1 % m),
			skip:   uint32(h2%(m-1) + 1),
			id:     be.ID,
			weight: uint32(be.Weight),
			credit: float64(be.Weight) / float64(n),
		}
		b.turns[i].due = uint64(b.turns[i].credit)
		weightSum += uint64(be.Weight)
	}

	clear(b.used)
	if weightSum/uint64(n) > 1 {
		b.fillWeighted(table, weightSum)
	} else {
		b.fillEven(table)
	}
}

// sortByKey sets b.order to the indexes of backends sorted by key.
//
// Backends with equal keys get equal permutations, so their relative order
// decides the table. Cilium sorts with slices.SortFunc, which is not stable
// but deterministic: it makes the same moves for the same sequence of
// comparison results. Sorting indexes with slices.SortFunc and the same
// comparison therefore orders equal keys exactly as Cilium does.
func (b *Builder) sortByKey(backends []Backend) {
	b.order = slices.Grow(b.order[:0], len(backends))
	sorted := true
	for i := range backends {
		b.order = append(b.order, int32(i))
		if i > 0 && backends[i-1].Key >= backends[i].Key {
			sorted = false
		}
	}
	if !sorted {
		slices.SortFunc(b.order, func(i, j int32) int {
			return strings.Compare(backends[i].Key, backends[j].Key)
		})
	}
}

// place gives entry the backend of t: the first entry of its permutation,
// from t.next on, that is still empty.
func (b *Builder) place(table []uint32, t *turn) {
	m, used := b.size, b.used
	c := t.next
	for used[c/64]&(1<<(c%64)) != 0 {
		if c += t.skip; c >= m {
			c -= m
		}
	}
	used[c/64] |= 1 << (c % 64)
	table[c] = t.id
	if c += t.skip; c >= m {
		c -= m
	}
	t.next = c
}

// fillEven fills the table without weights: backends take turns round-robin
// in key order until all M entries are filled.
func (b *Builder) fillEven(table []uint32) {
	left := b.size
	for {
		for i := range b.turns {
			b.place(table, &b.turns[i])
			if left--; left == 0 {
				return
			}
		}
	}
}
