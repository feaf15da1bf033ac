package ipam

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
)

// u128 is an unsigned 128-bit integer. Every address and offset is one: an
// IPv4 address lives in the low 32 bits, an IPv6 address fills all 128, and
// the offset of an address inside a /0 needs every bit. Only the operations
// the allocator needs exist; there is no general arithmetic.
type u128 struct{ hi, lo uint64 }

func u128FromAddr(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(binary.BigEndian.Uint32(b[:]))}
	}
	b := a.As16()
	return u128{hi: binary.BigEndian.Uint64(b[:8]), lo: binary.BigEndian.Uint64(b[8:])}
}

// addr converts u back to an address of the family given by is4.
func (u u128) addr(is4 bool) netip.Addr {
	if is4 {
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], uint32(u.lo))
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], u.hi)
	binary.BigEndian.PutUint64(b[8:], u.lo)
	return netip.AddrFrom16(b)
}

// lowMask returns a value with the low n bits set, n in [0, 128].
func lowMask(n uint) u128 {
	switch {
	case n >= 128:
		return u128{^uint64(0), ^uint64(0)}
	case n >= 64:
		return u128{hi: 1<<(n-64) - 1, lo: ^uint64(0)}
	default:
		return u128{lo: 1<<n - 1}
	}
}

func (u u128) and(v u128) u128 { return u128{u.hi & v.hi, u.lo & v.lo} }
func (u u128) or(v u128) u128  { return u128{u.hi | v.hi, u.lo | v.lo} }
func (u u128) not() u128       { return u128{^u.hi, ^u.lo} }
func (u u128) isZero() bool    { return u.hi|u.lo == 0 }

func (u u128) shl(n uint) u128 {
	switch {
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{hi: u.lo << (n - 64)}
	default:
		return u128{hi: u.hi<<n | u.lo>>(64-n), lo: u.lo << n}
	}
}

func (u u128) shr(n uint) u128 {
	switch {
	case n >= 128:
		return u128{}
	case n >= 64:
		return u128{lo: u.hi >> (n - 64)}
	default:
		return u128{hi: u.hi >> n, lo: u.lo>>n | u.hi<<(64-n)}
	}
}

// index returns the 6-bit digit of u that starts at bit shift.
func (u u128) index(shift uint) uint {
	return uint(u.shr(shift).lo & 63)
}

// withIndex replaces the 6-bit digit at shift with i and clears every bit
// below it: the first offset of child i of a bitmap node.
func (u u128) withIndex(shift, i uint) u128 {
	return u.and(lowMask(shift + 6).not()).or(u128{lo: uint64(i)}.shl(shift))
}

// inc returns u+1 and whether it wrapped around to zero.
func (u u128) inc() (u128, bool) {
	lo, carry := bits.Add64(u.lo, 1, 0)
	hi, carry := bits.Add64(u.hi, 0, carry)
	return u128{hi, lo}, carry != 0
}

func (u u128) less(v u128) bool {
	return u.hi < v.hi || u.hi == v.hi && u.lo < v.lo
}
