package lb

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
)

// FuzzRebuild feeds arbitrary pinned map content to rebuild, the decoder
// New runs on pinned maps. It must never panic; content it accepts must
// decode into a consistent table, and applying its repair must give maps
// that decode to the same table with nothing left to repair.
func FuzzRebuild(f *testing.F) {
	f.Add(seedPinnedState(f))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		st := decodeFuzzState(data)
		tbl, r, err := rebuild(st)
		if err != nil {
			if !errors.Is(err, ErrPinnedState) {
				t.Fatalf("error without ErrPinnedState: %v", err)
			}
			return
		}
		checkTable(t, tbl)
		applyRepair(st, r)
		again, r2, err := rebuild(st)
		if err != nil {
			t.Fatalf("repaired state does not decode: %v", err)
		}
		if !r2.empty() {
			t.Fatalf("repair did not converge: %+v", *r2)
		}
		if a, b := describeTable(tbl), describeTable(again); a != b {
			t.Fatalf("repair changed the table:\n%s\n%s", a, b)
		}
	})
}

// FuzzModel runs arbitrary updates and connects through a Model and checks
// the datapath's invariants on every answer.
func FuzzModel(f *testing.F) {
	f.Add([]byte{0, 0, 0xff, 0, 2, 0, 5, 1, 3, 2, 1})
	f.Add([]byte{0, 3, 0x0f, 0x05, 1, 2, 3, 0, 1, 0x30, 9, 2, 3, 7})
	f.Fuzz(func(t *testing.T, data []byte) {
		var m Model
		fes := []Frontend{fe("10.96.0.1:80", nodeplane.ProtoTCP), fe("10.96.0.1:80", nodeplane.ProtoUDP), fe("[fd00::1]:53", nodeplane.ProtoUDP), fe("[fd00::1]:80", nodeplane.ProtoTCP)}
		next := func() byte {
			if len(data) == 0 {
				return 0
			}
			b := data[0]
			data = data[1:]
			return b
		}
		for len(data) > 0 {
			op, f := next()%3, fes[next()%4]
			switch op {
			case 0:
				mask, states, aff := next(), next(), next()
				var bes []Backend
				for i := range 8 {
					if mask&(1<<i) == 0 {
						continue
					}
					a := netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)})
					if !f.Addr.Addr().Is4() {
						a = netip.AddrFrom16([16]byte{0xfd, 15: byte(i + 1)})
					}
					bes = append(bes, Backend{Addr: netip.AddrPortFrom(a, 80), State: BackendState(states >> (i % 4 * 2) & 3)})
				}
				svc := Service{Frontend: f, SessionAffinity: time.Duration(aff%4) * time.Second}
				if _, err := m.Upsert(svc, bes); err != nil {
					t.Fatal(err)
				}
			case 1:
				_ = m.Delete(f)
			case 2:
				req := Request{
					Dest: f.Addr, Protocol: f.Protocol, Random: uint32(next()) << 8,
					SocketCookie: uint64(next()), NetNSCookie: uint64(next() % 3),
					Now: time.Duration(next()) * time.Second,
				}
				if next()%2 == 1 && f.Addr.Addr().Is4() {
					req.Dest = netip.AddrPortFrom(netip.AddrFrom16(f.Addr.Addr().As16()), f.Addr.Port())
				}
				r, err := m.Connect(req)
				eligible := m.Eligible(f)
				_, _, exists := m.Lookup(f)
				switch {
				case !exists:
					if err != nil || r.Translated || r.Dest != req.Dest {
						t.Fatalf("non-service %v: %+v, %v", req, r, err)
					}
				case len(eligible) == 0:
					if !errors.Is(err, ErrNoBackends) {
						t.Fatalf("no active backend: %+v, %v", r, err)
					}
				default:
					got := netip.AddrPortFrom(r.Dest.Addr().Unmap(), r.Dest.Port())
					if err != nil || !r.Translated || !slices.ContainsFunc(eligible, func(b Backend) bool { return b.Addr == got }) {
						t.Fatalf("%v reached %+v, %v; eligible %v", req, r, err, eligible)
					}
					if r.Dest.Addr().Is4In6() != req.Dest.Addr().Is4In6() {
						t.Fatalf("family form changed: %s -> %s", req.Dest, r.Dest)
					}
					if p := m.Peer(req.SocketCookie, f.Protocol, r.Dest); p != req.Dest {
						t.Fatalf("peer of %s shown as %s, want %s", r.Dest, p, req.Dest)
					}
				}
			}
		}
		m.init()
		checkTable(t, m.t)
	})
}

// checkTable checks the invariants every table must hold.
func checkTable(t *testing.T, tbl *table) {
	t.Helper()
	ids := make(map[BackendID]bool)
	for fe, e := range tbl.services {
		if e.svc.Frontend != fe || tbl.byID[e.id] != e || e.id == 0 {
			t.Fatalf("service %s indexed wrongly", fe)
		}
		if e.bank != 0 && e.bank != slotBank {
			t.Fatalf("%s: bank %d", fe, e.bank)
		}
		if err := e.svc.validate(); err != nil {
			t.Fatal(err)
		}
		if err := validateBackends(fe, e.publicBackends()); err != nil {
			t.Fatal(err)
		}
		for _, b := range e.backends {
			if ids[b.id] || tbl.backends[b.id] != e || b.id == 0 || b.Weight == 0 {
				t.Fatalf("%s: backend %d", fe, b.id)
			}
			ids[b.id] = true
		}
	}
	if len(tbl.byID) != len(tbl.services) || len(tbl.backends) != len(ids) {
		t.Fatal("index sizes differ")
	}
}

// Record kinds of the fuzz encoding of a pinnedState: a kind byte, then the
// key and the value in native byte order.
const (
	kindSvc4    byte = iota // lb4Key → lbService
	kindSvc6                // lb6Key → lbService
	kindBe4                 // uint32 → lb4Backend
	kindBe6                 // uint32 → lb6Backend
	kindMatch               // lbAffinityMatch → uint8
	kindRevNAT4             // uint16 → lb4ReverseNAT
	kindRevNAT6             // uint16 → lb6ReverseNAT
	kindMaglev              // uint16 → uint8 (ignored)
	fuzzKinds
)

func decodeFuzzState(data []byte) *pinnedState {
	st := newPinnedState()
	r := bytes.NewReader(data)
	for {
		kind, err := r.ReadByte()
		if err != nil {
			return st
		}
		switch kind % fuzzKinds {
		case kindSvc4:
			readRecord(r, st.svc4)
		case kindSvc6:
			readRecord(r, st.svc6)
		case kindBe4:
			readRecord(r, st.be4)
		case kindBe6:
			readRecord(r, st.be6)
		case kindMatch:
			readRecord(r, st.match)
		case kindRevNAT4:
			readRecord(r, st.revnat4)
		case kindRevNAT6:
			readRecord(r, st.revnat6)
		case kindMaglev:
			tables := make(map[uint16]uint8)
			readRecord(r, tables)
			for k := range tables {
				st.maglev[k] = struct{}{}
			}
		}
	}
}

// readRecord reads a key and a value and, if both are whole, stores them in
// m.
func readRecord[K comparable, V any](r *bytes.Reader, m map[K]V) {
	var k K
	var v V
	if binary.Read(r, binary.NativeEndian, &k) == nil && binary.Read(r, binary.NativeEndian, &v) == nil {
		m[k] = v
	}
}

func encodeFuzzRecord(buf *bytes.Buffer, kind byte, k, v any) {
	buf.WriteByte(kind)
	_ = binary.Write(buf, binary.NativeEndian, k)
	_ = binary.Write(buf, binary.NativeEndian, v)
}

func encodeFuzzRecords[K comparable, V any](buf *bytes.Buffer, kind byte, m map[K]V) {
	for k, v := range m {
		encodeFuzzRecord(buf, kind, k, v)
	}
}

// seedPinnedState encodes the maps of a small but complete table, plus an
// interrupted update's leftovers.
func seedPinnedState(tb testing.TB) []byte {
	var m Model
	a := Service{Frontend: fe("10.96.0.1:80", nodeplane.ProtoTCP), SessionAffinity: time.Minute}
	b := Service{Frontend: fe("[fd00::1]:53", nodeplane.ProtoUDP), Algorithm: AlgorithmMaglev, Type: NodePort}
	if _, err := m.Upsert(a, backendsOf("10.0.0.1:80", "10.0.0.2:80")); err != nil {
		tb.Fatal(err)
	}
	if _, err := m.Upsert(b, backendsOf("[fd00::2]:53")); err != nil {
		tb.Fatal(err)
	}
	bes := backendsOf("10.0.0.2:80", "10.0.0.3:80")
	bes[1].State = BackendMaintenance
	if _, err := m.Upsert(a, bes); err != nil {
		tb.Fatal(err)
	}
	var buf bytes.Buffer
	st := imageOf(m.t)
	encodeFuzzRecords(&buf, kindSvc4, st.svc4)
	encodeFuzzRecords(&buf, kindSvc6, st.svc6)
	encodeFuzzRecords(&buf, kindBe4, st.be4)
	encodeFuzzRecords(&buf, kindBe6, st.be6)
	encodeFuzzRecords(&buf, kindMatch, st.match)
	encodeFuzzRecords(&buf, kindRevNAT4, st.revnat4)
	encodeFuzzRecords(&buf, kindRevNAT6, st.revnat6)
	for k := range st.maglev {
		encodeFuzzRecord(&buf, kindMaglev, k, uint8(0))
	}
	// Leftovers: a slot of the unused bank, an orphan backend.
	encodeFuzzRecord(&buf, kindSvc4, lb4KeyOf(a.Frontend, 1), lbService{BackendID: 1, RevNAT: 1})
	encodeFuzzRecord(&buf, kindBe4, uint32(77), lb4Backend{Address: [4]byte{10, 0, 0, 7}, Port: portBytes(80), Proto: 6, Weight: 1, RevNAT: 9})
	return buf.Bytes()
}

// imageOf is what the maps hold for tbl, as LB writes them.
func imageOf(tbl *table) *pinnedState {
	st := newPinnedState()
	for _, e := range tbl.services {
		writeEntry(st, e)
	}
	return st
}

func writeEntry(st *pinnedState, e *entry) {
	fe := e.svc.Frontend
	v4 := family(fe) == 0
	putSvc := func(slot uint16, v lbService) {
		if v4 {
			st.svc4[lb4KeyOf(fe, slot)] = v
		} else {
			st.svc6[lb6KeyOf(fe, slot)] = v
		}
	}
	putSvc(0, serviceValue(e))
	for i, b := range e.slots() {
		putSvc(e.bank+uint16(i)+1, slotValue(e, b))
		st.match[lbAffinityMatch{BackendID: uint32(b.id), RevNAT: uint16(e.id)}] = 1
	}
	for _, b := range e.backends {
		if v4 {
			st.be4[uint32(b.id)] = lb4BackendOf(e, b)
		} else {
			st.be6[uint32(b.id)] = lb6BackendOf(e, b)
		}
	}
	writeRevNAT(st, e)
	if needsMaglev(e) {
		st.maglev[uint16(e.id)] = struct{}{}
	}
}

func writeRevNAT(st *pinnedState, e *entry) {
	fe := e.svc.Frontend
	if family(fe) == 0 {
		st.revnat4[uint16(e.id)] = lb4ReverseNAT{Address: fe.Addr.Addr().As4(), Port: portBytes(fe.Addr.Port()), Proto: uint8(fe.Protocol)}
	} else {
		st.revnat6[uint16(e.id)] = lb6ReverseNAT{Address: fe.Addr.Addr().As16(), Port: portBytes(fe.Addr.Port()), Proto: uint8(fe.Protocol)}
	}
}

// applyRepair does to st what LB.repair does to the maps.
func applyRepair(st *pinnedState, r *repair) {
	for _, k := range r.delSvc4 {
		delete(st.svc4, k)
	}
	for _, k := range r.delSvc6 {
		delete(st.svc6, k)
	}
	for _, k := range r.delBe4 {
		delete(st.be4, k)
	}
	for _, k := range r.delBe6 {
		delete(st.be6, k)
	}
	for _, k := range r.delMatch {
		delete(st.match, k)
	}
	for _, k := range r.delRevNAT4 {
		delete(st.revnat4, k)
	}
	for _, k := range r.delRevNAT6 {
		delete(st.revnat6, k)
	}
	for _, k := range r.delMaglev {
		delete(st.maglev, k)
	}
	for _, k := range r.putMatch {
		st.match[k] = 1
	}
	for _, e := range r.putRevNAT {
		writeRevNAT(st, e)
	}
	for _, rs := range r.reslot {
		e := rs.e
		fe := e.svc.Frontend
		for i, b := range e.slots() {
			if family(fe) == 0 {
				st.svc4[lb4KeyOf(fe, e.bank+uint16(i)+1)] = slotValue(e, b)
			} else {
				st.svc6[lb6KeyOf(fe, e.bank+uint16(i)+1)] = slotValue(e, b)
			}
		}
		if family(fe) == 0 {
			st.svc4[lb4KeyOf(fe, 0)] = serviceValue(e)
		} else {
			st.svc6[lb6KeyOf(fe, 0)] = serviceValue(e)
		}
		for i := range rs.oldCount {
			if family(fe) == 0 {
				delete(st.svc4, lb4KeyOf(fe, rs.oldBank+i+1))
			} else {
				delete(st.svc6, lb6KeyOf(fe, rs.oldBank+i+1))
			}
		}
	}
	for _, e := range r.putMaglev {
		st.maglev[uint16(e.id)] = struct{}{}
	}
}
