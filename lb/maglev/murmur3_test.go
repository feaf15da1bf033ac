package maglev

import (
	"encoding/binary"
	"fmt"
	"testing"
)

// TestMurmur3Vectors checks published MurmurHash3_x64_128 outputs: those of
// PeterScott/murmur3's test.c (printed as four 32-bit words of the
// little-endian digest) and those in Cilium's pkg/murmur3 tests.
func TestMurmur3Vectors(t *testing.T) {
	words := func(h1, h2 uint64) string {
		return fmt.Sprintf("%08x%08x%08x%08x", uint32(h1), uint32(h1>>32), uint32(h2), uint32(h2>>32))
	}
	for _, tt := range []struct {
		seed uint32
		in   string
		want string
	}{
		{123, "Hello, world!", "8743acad421c8c73d373c3f5f19732fd"},
		{321, "Hello, world!", "f86d4004ca47f42bb9546c7979200aee"},
		{123, "xxxxxxxxxxxxxxxxxxxxxxxxxxxx", "becf7e04dbcf74637751664ef66e73e0"},
		{123, "", "4cd9597081679d1abd92f8784bace33d"},
	} {
		if got := words(murmur3(tt.in, tt.seed)); got != tt.want {
			t.Errorf("murmur3(%q, %d) = %s, want %s", tt.in, tt.seed, got, tt.want)
		}
	}
	for _, tt := range []struct {
		seed   uint32
		h1, h2 uint64
		in     string
	}{
		{0, 0, 0, ""},
		{1234, 0x1629cce705a7069c, 0x316c1fbd953aaecd, "hello world"},
		{500, 0x188f69f0abbd67de, 0x1b0eeb31b4c00cb6, "lorem ipsum dolor sit amet"},
	} {
		if h1, h2 := murmur3(tt.in, tt.seed); h1 != tt.h1 || h2 != tt.h2 {
			t.Errorf("murmur3(%q, %d) = %#x, %#x, want %#x, %#x", tt.in, tt.seed, h1, h2, tt.h1, tt.h2)
		}
	}
}

// TestMurmur3Verification runs SMHasher's VerificationTest, which covers
// every tail length and many seeds: hash the prefixes key[:i] of
// key = 0, 1, …, 255 with seed 256-i, hash the concatenated digests with
// seed 0, and compare the first 32 bits with the value SMHasher publishes
// for MurmurHash3_x64_128.
func TestMurmur3Verification(t *testing.T) {
	var key [256]byte
	digests := make([]byte, 0, 16*256)
	for i := range key {
		key[i] = byte(i)
		h1, h2 := murmur3(string(key[:i]), uint32(256-i))
		digests = binary.LittleEndian.AppendUint64(digests, h1)
		digests = binary.LittleEndian.AppendUint64(digests, h2)
	}
	h1, _ := murmur3(string(digests), 0)
	if got, want := uint32(h1), uint32(0x6384BA69); got != want {
		t.Fatalf("verification value %#08x, want %#08x", got, want)
	}
}
