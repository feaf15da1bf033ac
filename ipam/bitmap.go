package ipam

import "math/bits"

// sparseBitmap is a set of offsets in [0, 2^width), width up to 128, that
// finds the first clear offset at or after any position in O(width/6) steps
// and uses memory in proportion to the offsets that are set, not to 2^width.
//
// It is a radix tree with a fan-out of 64. A leaf holds 64 words of 64 bits,
// 4096 offsets; each inner level adds 6 bits. A missing child means that all
// its offsets are clear, so an untouched /64 costs one root node. Every node
// keeps a "full" mask with one bit per child (per word, in a leaf), so the
// search skips full subtrees with one TrailingZeros64 instead of scanning
// them: the cost of a search does not depend on how full the set is.
//
// Children whose offsets are all clear again are freed, so the memory follows
// the set's population. The root is never freed; bits the root covers beyond
// 2^width are marked set and full when it is built, so a search never returns
// them and the root needs no special cases.
type sparseBitmap struct {
	width uint // offsets are in [0, 2^width)
	top   uint // bit position of the root's child index
	root  *bitmapNode
}

const (
	fanoutBits = 6
	leafShift  = fanoutBits // bit position of the word index in a leaf
	allOnes    = ^uint64(0)
)

type bitmapNode struct {
	full  uint64 // bit i: child i (word i, in a leaf) has no clear offset
	count int    // leaf: set bits; inner: non-nil children
	words *[64]uint64
	kids  *[64]*bitmapNode
}

func newSparseBitmap(width uint) *sparseBitmap {
	top := uint(leafShift)
	for top+fanoutBits < width {
		top += fanoutBits
	}
	b := &sparseBitmap{width: width, top: top, root: newBitmapNode(top)}

	// Offsets at or above 2^width do not exist: mark them taken.
	span := top + fanoutBits // bits the root covers
	if span == width {
		return b
	}
	if top == leafShift {
		for off := uint64(1) << width; off < 1<<span; off++ {
			b.root.setBit(uint(off>>6), uint(off&63))
		}
		return b
	}
	valid := uint(1) << (width - top) // valid children of the root
	b.root.full |= allOnes << valid
	return b
}

func newBitmapNode(shift uint) *bitmapNode {
	if shift == leafShift {
		return &bitmapNode{words: new([64]uint64)}
	}
	return &bitmapNode{kids: new([64]*bitmapNode)}
}

func (n *bitmapNode) isFull() bool { return n.full == allOnes }

// setBit sets bit b of word w of a leaf and reports whether it was clear.
func (n *bitmapNode) setBit(w, b uint) bool {
	m := uint64(1) << b
	if n.words[w]&m != 0 {
		return false
	}
	n.words[w] |= m
	n.count++
	if n.words[w] == allOnes {
		n.full |= 1 << w
	}
	return true
}

// full reports whether no offset is clear.
func (b *sparseBitmap) full() bool { return b.root.isFull() }

// set sets off and reports whether it was clear.
func (b *sparseBitmap) set(off u128) bool {
	return set(b.root, b.top, off)
}

func set(n *bitmapNode, shift uint, off u128) bool {
	i := off.index(shift)
	if shift == leafShift {
		return n.setBit(i, off.index(0))
	}
	c := n.kids[i]
	if c == nil {
		c = newBitmapNode(shift - fanoutBits)
		n.kids[i] = c
		n.count++
	}
	if !set(c, shift-fanoutBits, off) {
		return false
	}
	if c.isFull() {
		n.full |= 1 << i
	}
	return true
}

// clear clears off and reports whether it was set.
func (b *sparseBitmap) clear(off u128) bool {
	return clear(b.root, b.top, off)
}

func clear(n *bitmapNode, shift uint, off u128) bool {
	i := off.index(shift)
	if shift == leafShift {
		m := uint64(1) << off.index(0)
		if n.words[i]&m == 0 {
			return false
		}
		n.words[i] &^= m
		n.count--
		n.full &^= 1 << i
		return true
	}
	c := n.kids[i]
	if c == nil || !clear(c, shift-fanoutBits, off) {
		return false
	}
	n.full &^= 1 << i
	if c.count == 0 {
		n.kids[i] = nil
		n.count--
	}
	return true
}

// isSet reports whether off is set.
func (b *sparseBitmap) isSet(off u128) bool {
	n, shift := b.root, b.top
	for shift > leafShift {
		n = n.kids[off.index(shift)]
		if n == nil {
			return false
		}
		shift -= fanoutBits
	}
	return n.words[off.index(shift)]&(1<<off.index(0)) != 0
}

// nextClear returns the lowest clear offset at or after from, if any. It
// does not wrap around.
func (b *sparseBitmap) nextClear(from u128) (u128, bool) {
	return nextClear(b.root, b.top, from)
}

// nextClear searches the subtree n, whose child index is the digit of off at
// shift; the digits of off above it are the subtree's own path.
func nextClear(n *bitmapNode, shift uint, off u128) (u128, bool) {
	i := off.index(shift)
	if shift == leafShift {
		if w := ^n.words[i] & (allOnes << off.index(0)); w != 0 {
			return off.withIndex(0, uint(bits.TrailingZeros64(w))), true
		}
		// Shifting by 64 (i == 63) yields zero in Go: no word follows.
		m := ^n.full & (allOnes << (i + 1))
		if m == 0 {
			return u128{}, false
		}
		j := uint(bits.TrailingZeros64(m))
		b := uint(bits.TrailingZeros64(^n.words[j]))
		return off.withIndex(leafShift, j).withIndex(0, b), true
	}
	if n.full&(1<<i) == 0 {
		c := n.kids[i]
		if c == nil {
			return off, true // an absent child is all clear
		}
		if r, ok := nextClear(c, shift-fanoutBits, off); ok {
			return r, true
		}
	}
	m := ^n.full & (allOnes << (i + 1))
	if m == 0 {
		return u128{}, false
	}
	j := uint(bits.TrailingZeros64(m))
	first := off.withIndex(shift, j)
	c := n.kids[j]
	if c == nil {
		return first, true
	}
	// c is not full and we start at its first offset, so this succeeds
	// without backtracking.
	return nextClear(c, shift-fanoutBits, first)
}

// forEachSet calls fn for every set offset in ascending order, until fn
// returns false.
func (b *sparseBitmap) forEachSet(fn func(u128) bool) {
	end := lowMask(b.width)
	forEachSet(b.root, b.top, u128{}, func(off u128) bool {
		// Only a leaf root holds bits past the end, and they come last.
		return !end.less(off) && fn(off)
	})
}

func forEachSet(n *bitmapNode, shift uint, base u128, fn func(u128) bool) bool {
	if shift == leafShift {
		for w := uint(0); w < 64; w++ {
			for word := n.words[w]; word != 0; word &= word - 1 {
				off := base.withIndex(leafShift, w).withIndex(0, uint(bits.TrailingZeros64(word)))
				if !fn(off) {
					return false
				}
			}
		}
		return true
	}
	for i := uint(0); i < 64; i++ {
		if c := n.kids[i]; c != nil {
			if !forEachSet(c, shift-fanoutBits, base.withIndex(shift, i), fn) {
				return false
			}
		}
	}
	return true
}
