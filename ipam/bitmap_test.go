package ipam

import (
	"math/rand/v2"
	"testing"
)

// refNextClear is the obvious linear search over a map-based set.
func refNextClear(set map[u128]bool, width uint, from u128) (u128, bool) {
	end := lowMask(width)
	for off := from; ; {
		if !set[off] {
			return off, true
		}
		if off == end {
			return u128{}, false
		}
		off, _ = off.inc()
	}
}

func TestSparseBitmapMatchesReference(t *testing.T) {
	for _, width := range []uint{0, 1, 5, 6, 7, 11, 12, 13, 16, 18, 19, 24, 31, 32, 63, 64, 65, 100, 127, 128} {
		rng := rand.New(rand.NewPCG(uint64(width), 1))
		b := newSparseBitmap(width)
		set := map[u128]bool{}
		end := lowMask(width)
		// Offsets cluster around a few bases, including the very start and
		// end of the range, so that words and leaves fill up completely.
		bases := []u128{{}, end, u128{lo: 4096}.and(end), u128{hi: rng.Uint64(), lo: rng.Uint64()}.and(end)}
		pick := func() u128 {
			base := bases[rng.IntN(len(bases))]
			d := u128{lo: uint64(rng.IntN(9000))}.and(end)
			off := base.and(lowMask(13).not()).or(d)
			return off.and(end)
		}
		for range 20000 {
			off := pick()
			switch rng.IntN(4) {
			case 0, 1:
				if got, want := b.set(off), !set[off]; got != want {
					t.Fatalf("width %d: set(%v) = %v, want %v", width, off, got, want)
				}
				set[off] = true
			case 2:
				if got, want := b.clear(off), set[off]; got != want {
					t.Fatalf("width %d: clear(%v) = %v, want %v", width, off, got, want)
				}
				delete(set, off)
			case 3:
				if got, want := b.isSet(off), set[off]; got != want {
					t.Fatalf("width %d: isSet(%v) = %v, want %v", width, off, got, want)
				}
			}
			from := pick()
			got, gotOK := b.nextClear(from)
			want, wantOK := refNextClear(set, width, from)
			if got != want || gotOK != wantOK {
				t.Fatalf("width %d: nextClear(%v) = %v, %v; want %v, %v", width, from, got, gotOK, want, wantOK)
			}
		}
		var n int
		prev, first := u128{}, true
		b.forEachSet(func(off u128) bool {
			if !set[off] {
				t.Fatalf("width %d: forEachSet yields %v, which is clear", width, off)
			}
			if !first && !prev.less(off) {
				t.Fatalf("width %d: forEachSet not ascending: %v after %v", width, off, prev)
			}
			prev, first = off, false
			n++
			return true
		})
		if n != len(set) {
			t.Fatalf("width %d: forEachSet yields %d offsets, want %d", width, n, len(set))
		}
	}
}

func TestSparseBitmapFillAndDrain(t *testing.T) {
	for _, width := range []uint{0, 3, 12, 13, 14, 18} {
		b := newSparseBitmap(width)
		size := uint64(1) << width
		for i := range size {
			off, ok := b.nextClear(u128{})
			if !ok || off.lo != i {
				t.Fatalf("width %d: nextClear = %v, %v; want %d", width, off, ok, i)
			}
			b.set(off)
		}
		if !b.full() {
			t.Fatalf("width %d: not full after %d sets", width, size)
		}
		if off, ok := b.nextClear(u128{}); ok {
			t.Fatalf("width %d: full bitmap offers %v", width, off)
		}
		for i := range size {
			b.clear(u128{lo: i})
		}
		if b.root.count != 0 && width > 12 {
			t.Fatalf("width %d: root keeps %d children after draining", width, b.root.count)
		}
		if off, ok := b.nextClear(u128{}); !ok || !off.isZero() {
			t.Fatalf("width %d: drained bitmap offers %v, %v", width, off, ok)
		}
	}
}

func TestSparseBitmapFreesEmptyNodes(t *testing.T) {
	b := newSparseBitmap(64)
	off := u128{lo: 0xdead_beef_0000_1234}
	b.set(off)
	if b.root.count != 1 {
		t.Fatalf("root has %d children, want 1", b.root.count)
	}
	b.clear(off)
	if b.root.count != 0 {
		t.Fatalf("root has %d children after clear, want 0", b.root.count)
	}
}
