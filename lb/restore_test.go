package lb

import (
	"errors"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
)

// TestRebuildImage: the maps LB writes for a table decode to that table
// with nothing to repair; leftovers of an interrupted update are listed for
// deletion; content LB cannot have written is refused.
func TestRebuildImage(t *testing.T) {
	var m Model
	a := Service{Frontend: fe("10.96.0.1:80", nodeplane.ProtoTCP), SessionAffinity: time.Minute, Type: ExternalIP}
	b := Service{Frontend: fe("[fd00::1]:53", nodeplane.ProtoUDP), Algorithm: AlgorithmMaglev}
	m.Upsert(a, backendsOf("10.0.0.1:80", "10.0.0.2:80"))
	m.Upsert(b, backendsOf("[fd00::2]:53"))
	m.Upsert(a, backendsOf("10.0.0.2:80", "10.0.0.3:80"))
	// internalTrafficPolicy=Local: which backends are local comes back
	// from the live slots.
	c := Service{Frontend: fe("10.96.0.3:80", nodeplane.ProtoTCP), InternalTrafficLocal: true}
	cbes := backendsOf("10.0.0.5:80", "10.0.0.6:80", "10.0.0.7:80")
	cbes[1].Local = true
	m.Upsert(c, cbes)

	st := imageOf(m.t)
	got, r, err := rebuild(st)
	if err != nil {
		t.Fatal(err)
	}
	if !r.empty() {
		t.Fatalf("image needs repair: %+v", *r)
	}
	if describeTable(got) != describeTable(m.t) {
		t.Fatalf("decoded\n%s\nwant\n%s", describeTable(got), describeTable(m.t))
	}
	if e := got.services[c.Frontend]; !e.svc.InternalTrafficLocal || len(e.slots()) != 1 || !e.slots()[0].Local || e.slots()[0].Addr != cbes[1].Addr {
		t.Fatalf("internalTrafficPolicy=Local service decoded as %+v", e)
	}
	if got.lastServiceID != 3 || got.lastBackendID != 7 {
		t.Fatalf("ID cursors %d, %d", got.lastServiceID, got.lastBackendID)
	}

	leftovers := imageOf(m.t)
	leftovers.svc4[lb4KeyOf(a.Frontend, 1)] = lbService{BackendID: 1, RevNAT: 1}
	leftovers.be4[99] = lb4Backend{Address: [4]byte{10, 0, 0, 9}, Port: portBytes(80), Proto: 6, Weight: 1, RevNAT: 7}
	leftovers.maglev[7] = struct{}{}
	_, r, err = rebuild(leftovers)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.delSvc4) != 1 || len(r.delBe4) != 1 || len(r.delMaglev) != 1 || len(r.reslot) != 0 {
		t.Fatalf("repair %+v", *r)
	}

	for name, corrupt := range map[string]func(*pinnedState){
		"slot base": func(st *pinnedState) {
			k := lb4KeyOf(a.Frontend, 0)
			v := st.svc4[k]
			v.SlotBase = 3
			st.svc4[k] = v
		},
		"missing live slot": func(st *pinnedState) {
			delete(st.svc4, lb4KeyOf(a.Frontend, m.t.services[a.Frontend].bank+1))
		},
		"foreign backend in slot": func(st *pinnedState) {
			st.svc4[lb4KeyOf(a.Frontend, m.t.services[a.Frontend].bank+1)] = lbService{BackendID: 3000, RevNAT: 1}
		},
		"algorithm": func(st *pinnedState) {
			k := lb6KeyOf(b.Frontend, 0)
			v := st.svc6[k]
			v.Algorithm = 9
			st.svc6[k] = v
		},
		"backend family": func(st *pinnedState) {
			st.be6[500] = lb6Backend{Address: [16]byte{0xfd, 15: 9}, Port: portBytes(80), Proto: 6, Weight: 1, RevNAT: 1}
		},
	} {
		st := imageOf(m.t)
		corrupt(st)
		if _, _, err := rebuild(st); !errors.Is(err, ErrPinnedState) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
