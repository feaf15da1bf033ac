package ipam

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

// FuzzDecodeState feeds arbitrary bytes to the state decoder. It must never
// panic; whatever it accepts must be a restorable snapshot that encodes back
// to the same state.
func FuzzDecodeState(f *testing.F) {
	for _, s := range []Snapshot{testSnapshot(), {}, generation(3)} {
		data, err := encodeState(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("nodeplane-ipam-state 1 2 00000000\n{}"))
	f.Add([]byte("nodeplane-ipam-state 1 0 00000000\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) { decodeRoundTrip(t, data) })
}

// decodeRoundTrip decodes a state file, which must either fail with
// ErrCorrupt or give a snapshot that encodes and decodes to itself. It
// reports whether the file was accepted.
func decodeRoundTrip(t *testing.T, data []byte) (Snapshot, bool) {
	t.Helper()
	snap, err := decodeState(data)
	if err != nil {
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("decode error does not match ErrCorrupt: %v", err)
		}
		return Snapshot{}, false
	}
	again, err := encodeState(snap)
	if err != nil {
		t.Fatalf("accepted a snapshot that does not encode: %v", err)
	}
	snap2, err := decodeState(again)
	if err != nil {
		t.Fatalf("re-encoded snapshot does not decode: %v", err)
	}
	if !reflect.DeepEqual(snap, snap2) {
		t.Fatalf("round trip changed the snapshot:\n%+v\n%+v", snap, snap2)
	}
	return snap, true
}

// FuzzDecodeStateBody fuzzes the JSON body behind a header with the right
// length and checksum, which random bytes almost never produce: it reaches
// the body's parser and checks that FuzzDecodeState cannot.
func FuzzDecodeStateBody(f *testing.F) {
	for _, s := range []Snapshot{testSnapshot(), {}, generation(2)} {
		data, err := encodeState(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data[bytes.IndexByte(data, '\n')+1:])
	}
	f.Add([]byte(`{"allocations":[{"addr":"10.0.0.1","owner":"a"},{"addr":"10.0.0.1","owner":"b"}]}`))
	f.Add([]byte(`{"allocations":null,"next":["fe80::1%eth0"]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		snap, ok := decodeRoundTrip(t, stateFormat.Encode(body))
		if !ok {
			return
		}
		// Whatever is accepted restores into a pool that covers it, or is
		// rejected by Restore with an ipam error, never a panic.
		p := mustPool(t, Config{Prefixes: []netip.Prefix{pfx("0.0.0.0/0"), pfx("::/0")}})
		if err := p.Restore(snap); err != nil && !errors.Is(err, ErrReserved) {
			t.Fatalf("restore of a decoded snapshot: %v", err)
		}
	})
}

// model is the obvious implementation of a Pool over a small address space:
// a list of every allocatable address, a map of owners and a cursor index
// per family. The fuzzer checks the real pool against it.
type model struct {
	addrs  [2][]netip.Addr // allocatable addresses in search order
	cursor [2]int
	owners map[netip.Addr]string
}

var (
	fuzzPrefixes = []netip.Prefix{pfx("10.0.0.0/28"), pfx("10.0.1.0/29"), pfx("fd00::/125"), pfx("fd00:1::/126")}
	fuzzReserved = []netip.Addr{addr("10.0.0.5"), addr("fd00::3")}
	fuzzOwners   = []string{"ctr-a/eth0", "ctr-b/eth0", "ctr-c/net1", "ctr-d/eth0"}
)

func newModel() *model {
	m := &model{owners: map[netip.Addr]string{}}
	for _, p := range fuzzPrefixes {
		f := familyOf(p.Addr()).index()
		var last netip.Addr
		for a := p.Addr(); p.Contains(a); a = a.Next() {
			last = a
		}
		for a := p.Addr().Next(); a != last; a = a.Next() {
			if !slices.Contains(fuzzReserved, a) {
				m.addrs[f] = append(m.addrs[f], a)
			}
		}
	}
	return m
}

// next returns the address AllocateNext must hand out, and the cursor after.
func (m *model) next(f Family) (netip.Addr, int, bool) {
	as := m.addrs[f.index()]
	for k := range len(as) {
		i := (m.cursor[f.index()] + k) % len(as)
		if _, taken := m.owners[as[i]]; !taken {
			return as[i], i + 1, true
		}
	}
	return netip.Addr{}, 0, false
}

// seek moves the model's cursor to the first allocatable address at or after
// a, as restoring Snapshot.Next does for the pool.
func (m *model) seek(a netip.Addr) {
	as := m.addrs[familyOf(a).index()]
	i, _ := slices.BinarySearchFunc(as, a, netip.Addr.Compare)
	m.cursor[familyOf(a).index()] = i % len(as)
}

func (m *model) snapshot() []Allocation {
	al := make([]Allocation, 0, len(m.owners))
	for a, o := range m.owners {
		al = append(al, Allocation{a, o})
	}
	slices.SortFunc(al, func(x, y Allocation) int { return x.Addr.Compare(y.Addr) })
	return al
}

// FuzzPoolOps runs random sequences of allocations, releases and restarts
// (through the state encoding, sometimes collecting an owner as garbage) and
// checks after every step that no address has two owners, that no
// allocation is lost, and that AllocateNext follows the rotating cursor
// exactly.
func FuzzPoolOps(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 2, 3, 4, 5, 6, 7})
	f.Add([]byte{2, 0, 2, 1, 2, 2, 2, 3, 2, 0, 2, 1, 6, 0, 2, 2})
	f.Add([]byte{3, 0x11, 3, 0x25, 4, 0x11, 0, 0, 0, 1, 0, 2, 6, 1, 0, 3})
	f.Fuzz(func(t *testing.T, ops []byte) {
		cfg := Config{Prefixes: fuzzPrefixes, Reserved: fuzzReserved}
		p := mustPool(t, cfg)
		m := newModel()
		var all []netip.Addr
		for _, pf := range fuzzPrefixes {
			for a := pf.Addr(); pf.Contains(a); a = a.Next() {
				all = append(all, a)
			}
		}
		all = append(all, addr("10.0.2.1"), addr("fd00:2::1")) // outside

		for len(ops) >= 2 {
			op, arg := ops[0]%8, ops[1]
			ops = ops[2:]
			owner := fuzzOwners[int(arg)%len(fuzzOwners)]
			fam := IPv4
			if arg&0x80 != 0 {
				fam = IPv6
			}
			switch op {
			case 0, 1: // AllocateNext
				a, err := p.AllocateNext(fam, owner)
				want, cur, ok := m.next(fam)
				if !ok {
					if !errors.Is(err, ErrExhausted) {
						t.Fatalf("AllocateNext(%s) on a full family: %v, %v", fam, a, err)
					}
					break
				}
				if err != nil || a != want {
					t.Fatalf("AllocateNext(%s) = %v, %v; want %v", fam, a, err, want)
				}
				m.owners[a] = owner
				m.cursor[fam.index()] = cur % len(m.addrs[fam.index()])
			case 2: // AllocateNextDual
				v4, v6, err := p.AllocateNextDual(owner)
				w4, c4, ok4 := m.next(IPv4)
				w6, c6, ok6 := m.next(IPv6)
				if !ok4 || !ok6 {
					if !errors.Is(err, ErrExhausted) {
						t.Fatalf("AllocateNextDual with a full family: %v %v %v", v4, v6, err)
					}
					break
				}
				if err != nil || v4 != w4 || v6 != w6 {
					t.Fatalf("AllocateNextDual = %v %v %v; want %v %v", v4, v6, err, w4, w6)
				}
				m.owners[v4], m.owners[v6] = owner, owner
				m.cursor[0], m.cursor[1] = c4%len(m.addrs[0]), c6%len(m.addrs[1])
			case 3: // Allocate
				a := all[int(arg)%len(all)]
				err := p.Allocate(a, owner)
				cur, taken := m.owners[a]
				allocatable := slices.Contains(m.addrs[familyOf(a).index()], a)
				var ae *AllocatedError
				switch {
				case !p.Contains(a) && !errors.Is(err, ErrOutOfRange):
					t.Fatalf("Allocate(%s) outside: %v", a, err)
				case p.Contains(a) && !allocatable && !errors.Is(err, ErrReserved):
					t.Fatalf("Allocate(%s) reserved: %v", a, err)
				case taken && (!errors.As(err, &ae) || ae.Owner != cur):
					t.Fatalf("Allocate(%s) held by %s: %v", a, cur, err)
				case allocatable && !taken && err != nil:
					t.Fatalf("Allocate(%s) free: %v", a, err)
				}
				if err == nil {
					m.owners[a] = owner
				}
			case 4: // Release
				a := all[int(arg)%len(all)]
				err := p.Release(a)
				if _, taken := m.owners[a]; taken != (err == nil) {
					t.Fatalf("Release(%s): %v, model holds it: %v", a, err, taken)
				}
				delete(m.owners, a)
			case 5: // ReleaseOwner
				got, err := p.ReleaseOwner(owner)
				var want []netip.Addr
				for a, o := range m.owners {
					if o == owner {
						want = append(want, a)
						delete(m.owners, a)
					}
				}
				slices.SortFunc(want, netip.Addr.Compare)
				if err != nil || !slices.Equal(got, want) {
					t.Fatalf("ReleaseOwner(%s) = %v, %v; want %v", owner, got, err, want)
				}
			case 6, 7: // restart through the state encoding
				data, err := encodeState(p.Snapshot())
				if err != nil {
					t.Fatal(err)
				}
				snap, err := decodeState(data)
				if err != nil {
					t.Fatal(err)
				}
				if op == 7 { // the caller collects a dead owner
					snap.Allocations = slices.DeleteFunc(snap.Allocations, func(al Allocation) bool { return al.Owner == owner })
					for a, o := range m.owners {
						if o == owner {
							delete(m.owners, a)
						}
					}
				}
				p = mustPool(t, cfg)
				if err := p.Restore(snap); err != nil {
					t.Fatalf("restore: %v", err)
				}
				for _, a := range snap.Next {
					m.seek(a)
				}
			}

			// The invariants, after every step.
			if got, want := p.Snapshot().Allocations, m.snapshot(); !slices.Equal(got, want) {
				t.Fatalf("after op %d: pool holds\n%v\nwant\n%v", op, got, want)
			}
			for _, fam := range []Family{IPv4, IPv6} {
				used := uint64(0)
				for a := range m.owners {
					if familyOf(a) == fam {
						used++
					}
				}
				total := uint64(len(m.addrs[fam.index()]))
				if p.Used(fam) != used || p.Free(fam) != total-used {
					t.Fatalf("%s: Used %d Free %d, want %d and %d", fam, p.Used(fam), p.Free(fam), used, total-used)
				}
			}
		}
	})
}

func TestModelMatchesConfig(t *testing.T) {
	m := newModel()
	p := mustPool(t, Config{Prefixes: fuzzPrefixes, Reserved: fuzzReserved})
	for _, f := range []Family{IPv4, IPv6} {
		if got := p.Free(f); got != uint64(len(m.addrs[f.index()])) {
			t.Fatalf("%s: pool has %d free, model %d: %v", f, got, len(m.addrs[f.index()]), m.addrs[f.index()])
		}
	}
	if fmt.Sprint(m.addrs[0][:3]) != "[10.0.0.1 10.0.0.2 10.0.0.3]" {
		t.Fatalf("model addresses %v", m.addrs[0])
	}
}
