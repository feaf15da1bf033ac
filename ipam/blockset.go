package ipam

import (
	"math/big"
	"net/netip"
)

// block is one prefix cut into units of 2^unit addresses: single addresses
// (unit 0) in a Pool, node CIDRs in a ClusterPool. A set bit in taken is a
// unit that is allocated or reserved.
type block struct {
	prefix   netip.Prefix
	base     u128
	unit     uint // address bits per unit
	taken    *sparseBitmap
	reserved uint64 // units marked taken for good when the block was built
}

func newBlock(p netip.Prefix, unit uint) *block {
	host := uint(p.Addr().BitLen() - p.Bits())
	return &block{
		prefix: p,
		base:   u128FromAddr(p.Addr()),
		unit:   unit,
		taken:  newSparseBitmap(host - unit),
	}
}

// offset returns the unit that holds a, which must be inside the prefix.
func (b *block) offset(a netip.Addr) u128 {
	return u128FromAddr(a).and(b.base.not()).shr(b.unit)
}

// addr returns the first address of unit off.
func (b *block) addr(off u128) netip.Addr {
	return b.base.or(off.shl(b.unit)).addr(b.prefix.Addr().Is4())
}

// size returns the number of units in the block, 2^(host bits - unit).
func (b *block) size() *big.Int {
	return new(big.Int).Lsh(big.NewInt(1), b.taken.width)
}

// reserve marks off as never to be handed out.
func (b *block) reserve(off u128) {
	if b.taken.set(off) {
		b.reserved++
	}
}

// blockSet is the allocatable space of one family: the blocks and a cursor.
// The search for a free unit starts at the cursor and moves it past the unit
// it hands out, wrapping from the last block to the first, so released units
// are handed out again only after the rest of the space has been offered.
type blockSet struct {
	blocks []*block
	cur    int  // block the next search starts in
	curOff u128 // unit the next search starts at
}

// find returns the block that contains a.
func (s *blockSet) find(a netip.Addr) (*block, int) {
	for i, b := range s.blocks {
		if b.prefix.Contains(a) {
			return b, i
		}
	}
	return nil, -1
}

// next returns the first free unit at or after the cursor, wrapping around.
// It changes nothing.
func (s *blockSet) next() (bi int, off u128, ok bool) {
	n := len(s.blocks)
	if n == 0 {
		return 0, u128{}, false
	}
	if off, ok := s.blocks[s.cur].taken.nextClear(s.curOff); ok {
		return s.cur, off, true
	}
	for k := 1; k <= n; k++ {
		i := (s.cur + k) % n
		b := s.blocks[i]
		if b.taken.full() {
			continue
		}
		// Not full, so a search from the start always succeeds; for the
		// cursor's own block (k == n) it finds a unit before the cursor.
		off, _ := b.taken.nextClear(u128{})
		return i, off, true
	}
	return 0, u128{}, false
}

// advance moves the cursor past unit off of block bi.
func (s *blockSet) advance(bi int, off u128) {
	next, wrapped := off.inc()
	if wrapped || lowMask(s.blocks[bi].taken.width).less(next) {
		s.cur, s.curOff = (bi+1)%len(s.blocks), u128{}
		return
	}
	s.cur, s.curOff = bi, next
}

// prefixes returns the blocks' prefixes.
func (s *blockSet) prefixes() []netip.Prefix {
	ps := make([]netip.Prefix, len(s.blocks))
	for i, b := range s.blocks {
		ps[i] = b.prefix
	}
	return ps
}

// capacity returns the number of units that can ever be handed out: all
// units minus the reserved ones.
func (s *blockSet) capacity() *big.Int {
	c := new(big.Int)
	for _, b := range s.blocks {
		c.Add(c, b.size())
		c.Sub(c, new(big.Int).SetUint64(b.reserved))
	}
	return c
}
