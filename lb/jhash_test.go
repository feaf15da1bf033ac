package lb

import (
	"encoding/binary"
	"net/netip"
)

// jhash3 is the kernel's (and Cilium's) jhash_3words.
func jhash3(a, b, c, initval uint32) uint32 {
	initval += 0xdeadbeef + 3<<2
	a += initval
	b += initval
	c += initval
	return jhashFinal(a, b, c)
}

func rol32(w uint32, s uint) uint32 { return w<<s | w>>(32-s) }

func jhashMix(a, b, c uint32) (uint32, uint32, uint32) {
	a -= c
	a ^= rol32(c, 4)
	c += b
	b -= a
	b ^= rol32(a, 6)
	a += c
	c -= b
	c ^= rol32(b, 8)
	b += a
	a -= c
	a ^= rol32(c, 16)
	c += b
	b -= a
	b ^= rol32(a, 19)
	a += c
	c -= b
	c ^= rol32(b, 4)
	b += a
	return a, b, c
}

func jhashFinal(a, b, c uint32) uint32 {
	c ^= b
	c -= rol32(b, 14)
	a ^= c
	a -= rol32(c, 11)
	b ^= a
	b -= rol32(a, 25)
	c ^= b
	c -= rol32(b, 16)
	a ^= c
	a -= rol32(c, 4)
	b ^= a
	b -= rol32(a, 14)
	c ^= b
	c -= rol32(b, 24)
	return c
}

// flowHash is Cilium's hash_from_tuple_v4/v6 (bpf/lib/hash.h) on a
// little-endian host, written from Cilium's C: the words as they lie in
// the packet, the source port in the high half.
func flowHash(src netip.AddrPort, dport uint16, proto uint8, seed4, seed6 uint32) uint32 {
	le := binary.LittleEndian
	var p [4]byte
	binary.BigEndian.PutUint16(p[0:], dport)
	binary.BigEndian.PutUint16(p[2:], src.Port())
	ports := uint32(le.Uint16(p[2:]))<<16 | uint32(le.Uint16(p[0:]))
	if src.Addr().Is4() {
		a := src.Addr().As4()
		return jhash3(le.Uint32(a[:]), ports, uint32(proto), seed4)
	}
	s := src.Addr().As16()
	a, b, c := le.Uint32(s[0:]), le.Uint32(s[4:]), le.Uint32(s[8:])
	a, b, c = jhashMix(a, b, c)
	a += le.Uint32(s[12:])
	b += ports
	c += uint32(proto)
	a, b, c = jhashMix(a, b, c)
	a += seed6
	return jhashFinal(a, b, c)
}
