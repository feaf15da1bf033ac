package maglev

import "math/bits"

// Weighted tables: backends do not take turns round-robin but as their
// weights allow. Cilium (after Envoy's weighted Maglev) paces them with a
// counter per backend: turn n (0-based) goes to the first backend, from
// n mod N on and wrapping around, that is due, i.e. whose (n+1)·weight has
// reached its counter; taking a turn adds the sum of all weights to the
// counter. Counters start at weight/N. Some backend is always due: before
// turn n the counters sum to (n + 1/N)·sum of weights, at most what the
// (n+1)·weight sum to.
//
// Cilium finds the backend by scanning, which costs nothing when weights are
// equal (the backend at n mod N is due) but grows with N when they differ:
// with every tenth backend ten times as heavy as the others a turn takes 12
// steps on average among 100 backends and 111 among 1000; one heavy backend
// among 1000 light ones takes about 500.
// So the scan runs while it is short, and once it has cost more than a few
// steps a turn the fill switches to a calendar of due backends, which
// answers the same question in constant time.

// defaultScanBudget is how many scan steps per turn, on average, the
// weighted fill tolerates before it switches to the calendar.
const defaultScanBudget = 4

// fillWeighted fills the table with Cilium's weighted pacing.
func (b *Builder) fillWeighted(table []uint32, weightSum uint64) {
	turns := b.turns
	l := uint64(len(turns))
	m := uint64(b.size)
	step := float64(weightSum)
	if b.scanBudget == 0 {
		b.fillWeightedCalendar(table, 0, step)
		return
	}
	steps := uint64(0)
	for n := range m {
		i := n % l
		for (n+1)*uint64(turns[i].weight) < turns[i].due {
			if i++; i == l {
				i = 0
			}
			steps++
		}
		t := &turns[i]
		t.credit += step
		t.due = uint64(t.credit)
		b.place(table, t)

		if steps > b.scanBudget*(n+1)+l {
			b.fillWeightedCalendar(table, n+1, step)
			return
		}
	}
}

// fillWeightedCalendar fills the table from turn first on, giving each turn
// to the same backend as the scan would: the first due backend from
// n mod N on.
//
// A backend's counter changes only when it takes a turn, and (n+1)·weight
// grows with n, so from one turn it takes to the next the backend becomes
// due at a turn known in advance, dueAt. The calendar files each backend under that
// turn and moves it into a bitmap of due backends when the turn comes; the
// first due backend from n mod N is then the first set bit from there.
func (b *Builder) fillWeightedCalendar(table []uint32, first uint64, step float64) {
	turns := b.turns
	l := uint64(len(turns))
	m := uint64(b.size)
	c := &b.due
	c.reset(len(turns), int(m))
	for i := range turns {
		c.file(int32(i), dueAt(&turns[i]), first)
	}
	for n := first; n < m; n++ {
		c.open(n)
		i := c.firstDue(int(n % l))
		t := &turns[i]
		t.credit += step
		t.due = uint64(t.credit)
		b.place(table, t)
		if at := dueAt(t); at > n {
			c.clearDue(i)
			c.file(int32(i), at, n)
		}
	}
}

// never is later than any turn.
const never = ^uint64(0)

// dueAt returns the first turn n at which t is due: (n+1)·weight ≥ due.
func dueAt(t *turn) uint64 {
	w := uint64(t.weight)
	if w == 0 {
		if t.due == 0 {
			return 0
		}
		return never
	}
	if t.due <= w {
		return 0
	}
	return (t.due+w-1)/w - 1 // ceil(due/weight) - 1
}

// calendar holds the backends of a weighted fill by the turn at which they
// become due, and those already due in a bitmap.
type calendar struct {
	dueNow []uint64 // bit i: backend i is due
	head   []int32  // head[n]: first backend that becomes due at turn n, or -1
	link   []int32  // link[i]: the next backend filed under the same turn, or -1
}

func (c *calendar) reset(backends, turns int) {
	c.dueNow = resize(c.dueNow, (backends+63)/64)
	clear(c.dueNow)
	c.link = resize(c.link, backends)
	c.head = resize(c.head, turns)
	for n := range c.head {
		c.head[n] = -1
	}
}

// file records that backend i becomes due at turn at; now is the current
// turn. A backend due after the last turn is dropped.
func (c *calendar) file(i int32, at, now uint64) {
	switch {
	case at <= now:
		c.dueNow[i/64] |= 1 << (i % 64)
	case at < uint64(len(c.head)):
		c.link[i] = c.head[at]
		c.head[at] = i
	}
}

// open marks the backends filed under turn n as due.
func (c *calendar) open(n uint64) {
	for i := c.head[n]; i >= 0; i = c.link[i] {
		c.dueNow[i/64] |= 1 << (i % 64)
	}
}

func (c *calendar) clearDue(i int) {
	c.dueNow[i/64] &^= 1 << (i % 64)
}

// firstDue returns the first due backend from `from` on, wrapping around.
// Some backend is always due.
func (c *calendar) firstDue(from int) int {
	w := from / 64
	word := c.dueNow[w] &^ (1<<(from%64) - 1)
	for word == 0 {
		if w++; w == len(c.dueNow) {
			w = 0
		}
		word = c.dueNow[w]
	}
	return w*64 + bits.TrailingZeros64(word)
}

// resize returns s with length n, reallocated only if it is too small.
func resize[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}
