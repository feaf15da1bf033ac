package maglev

import (
	"encoding/binary"
	"math/bits"
)

// murmur3 computes MurmurHash3_x64_128 (Austin Appleby, SMHasher) of data
// with the given 32-bit seed and returns the two 64-bit halves of the digest.
//
// Blocks are read little-endian, as the reference implementation does on the
// little-endian machines Cilium runs on; Cilium's own murmur3 reads them in
// host byte order, so on a big-endian host it would disagree with this (and
// with itself on other hosts).
//
// It takes a string, the type of backend keys, so that hashing a key neither
// copies nor allocates.
func murmur3(data string, seed uint32) (h1, h2 uint64) {
	const (
		c1 = 0x87c37b91114253d5
		c2 = 0x4cf5ad432745937f
	)
	n := len(data)
	h1, h2 = uint64(seed), uint64(seed)

	for len(data) >= 16 {
		k1 := le64(data)
		k2 := le64(data[8:])
		data = data[16:]

		h1 ^= bits.RotateLeft64(k1*c1, 31) * c2
		h1 = bits.RotateLeft64(h1, 27) + h2
		h1 = h1*5 + 0x52dce729

		h2 ^= bits.RotateLeft64(k2*c2, 33) * c1
		h2 = bits.RotateLeft64(h2, 31) + h1
		h2 = h2*5 + 0x38495ab5
	}

	// The tail (0..15 bytes) is loaded as two little-endian words padded with
	// zeros; k2 only takes part when there are more than 8 bytes.
	if len(data) > 0 {
		var tail [16]byte
		copy(tail[:], data)
		if len(data) > 8 {
			k2 := binary.LittleEndian.Uint64(tail[8:])
			h2 ^= bits.RotateLeft64(k2*c2, 33) * c1
		}
		k1 := binary.LittleEndian.Uint64(tail[:8])
		h1 ^= bits.RotateLeft64(k1*c1, 31) * c2
	}

	h1 ^= uint64(n)
	h2 ^= uint64(n)
	h1 += h2
	h2 += h1
	h1 = fmix64(h1)
	h2 = fmix64(h2)
	h1 += h2
	h2 += h1
	return h1, h2
}

// fmix64 is MurmurHash3's 64-bit finaliser: it forces every input bit to
// affect every output bit.
func fmix64(k uint64) uint64 {
	k ^= k >> 33
	k *= 0xff51afd7ed558ccd
	k ^= k >> 33
	k *= 0xc4ceb9fe1a85ec53
	k ^= k >> 33
	return k
}

// le64 loads the first 8 bytes of s as a little-endian word; the compiler
// turns it into a single load.
func le64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}
