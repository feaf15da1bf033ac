package lb

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/lb/maglev"
)

// newTestLB returns an LB attached to a fresh cgroup, closed at cleanup.
func newTestLB(tb testing.TB, cfg Config) *LB {
	tb.Helper()
	testutils.RequirePrivileged(tb)
	testutils.SkipIfNotSupported(tb, HaveSocketLB())
	if cfg.Cgroup == "" {
		cfg.Cgroup = testutils.NewCgroup(tb).Path
	}
	lb, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { lb.Close() })
	return lb
}

// TestPrivilegedMapsFollowModel drives an LB and a Model through the same
// random updates and checks after each that the kernel maps hold exactly the
// encoding of the table both built. The LB and the Model plan with the same
// code (planUpsert), so this checks the map writes and their bookkeeping,
// not the planner's choices; TestPrivilegedSelectionIsUniformOverActiveBackends
// and the end-to-end tests check those over real connections.
func TestPrivilegedMapsFollowModel(t *testing.T) {
	lb := newTestLB(t, Config{})
	var m Model
	rng := rand.New(rand.NewPCG(1, 2))
	frontends := []Frontend{
		fe("10.96.0.1:80", nodeplane.ProtoTCP), fe("10.96.0.1:80", nodeplane.ProtoUDP), fe("10.96.0.2:443", nodeplane.ProtoTCP),
		fe("[fd00:96::1]:80", nodeplane.ProtoTCP), fe("[fd00:96::2]:53", nodeplane.ProtoUDP), fe("[fd00:96::3]:8080", nodeplane.ProtoTCP),
	}
	pool := func(fe Frontend, i int) netip.AddrPort {
		if fe.Addr.Addr().Is4() {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 8080)
		}
		return netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("fd00::%d", i+1)), 8080)
	}
	randomBackends := func(fe Frontend) []Backend {
		var out []Backend
		for _, i := range rng.Perm(8)[:rng.IntN(8)] {
			out = append(out, Backend{
				Addr:   pool(fe, i),
				Weight: uint16(rng.IntN(3) * 50),
				State:  BackendState(max(0, rng.IntN(6)-2)),
			})
		}
		return out
	}
	for step := range 400 {
		f := frontends[rng.IntN(len(frontends))]
		_, cur, exists := m.Lookup(f)
		var op string
		var errLB, errModel error
		switch k := rng.IntN(10); {
		case k < 5 || !exists:
			svc := Service{Frontend: f, Type: ServiceType(rng.IntN(4)), Algorithm: Algorithm(rng.IntN(2))}
			if rng.IntN(3) == 0 {
				svc.SessionAffinity = time.Duration(1+rng.IntN(100)) * time.Second
			}
			bes := randomBackends(f)
			op = fmt.Sprintf("upsert %s with %d backends", f, len(bes))
			_, errLB = lb.Upsert(svc, bes)
			_, errModel = m.Upsert(svc, bes)
		case k < 7:
			add := randomBackends(f)
			op = fmt.Sprintf("upsert %d backends of %s", len(add), f)
			errLB = lb.UpsertBackends(f, add...)
			merged := cur
			for _, b := range add {
				if i := slices.IndexFunc(merged, func(x Backend) bool { return x.Addr == b.Addr }); i >= 0 {
					merged[i] = b
				} else {
					merged = append(merged, b)
				}
			}
			svc, _, _ := m.Lookup(f)
			_, errModel = m.Upsert(svc, merged)
		case k < 9 && len(cur) > 0:
			drop := cur[rng.IntN(len(cur))].Addr
			op = fmt.Sprintf("delete backend %s of %s", drop, f)
			errLB = lb.DeleteBackends(f, drop)
			svc, _, _ := m.Lookup(f)
			_, errModel = m.Upsert(svc, slices.DeleteFunc(cur, func(b Backend) bool { return b.Addr == drop }))
		default:
			op = fmt.Sprintf("delete %s", f)
			errLB = lb.Delete(f)
			errModel = m.Delete(f)
		}
		if errLB != nil || errModel != nil {
			t.Fatalf("step %d, %s: LB %v, model %v", step, op, errLB, errModel)
		}
		requireMapsMatch(t, lb, &m)
	}
}

func TestPrivilegedInvalidAndFull(t *testing.T) {
	lb := newTestLB(t, Config{ServiceEntries: 6, BackendEntries: 6})
	svc := Service{Frontend: fe("10.96.0.1:80", nodeplane.ProtoTCP)}
	if _, err := lb.Upsert(svc, backendsOf("10.0.0.1:80", "10.0.0.2:80")); err != nil {
		t.Fatal(err)
	}
	before := describeTable(lb.t)

	// 1 service entry + 2 live slots + 4 new slots > 6.
	_, err := lb.Upsert(svc, backendsOf("10.0.0.3:80", "10.0.0.4:80", "10.0.0.5:80", "10.0.0.6:80"))
	if !errors.Is(err, ErrFull) {
		t.Fatalf("over capacity: %v", err)
	}
	if _, err := lb.Upsert(svc, backendsOf("10.0.0.1:80", "[fd00::1]:80")); !errors.Is(err, ErrInvalidBackend) {
		t.Fatalf("mixed families: %v", err)
	}
	if err := lb.DeleteBackends(svc.Frontend, netip.MustParseAddrPort("10.0.0.9:80")); !errors.Is(err, ErrInvalidBackend) {
		t.Fatalf("delete unknown backend: %v", err)
	}
	if err := lb.UpsertBackends(fe("10.96.0.9:80", nodeplane.ProtoTCP)); !errors.Is(err, ErrServiceNotFound) {
		t.Fatalf("backends of unknown service: %v", err)
	}
	if after := describeTable(lb.t); after != before {
		t.Fatalf("failed updates changed the table:\n%s\nwas\n%s", after, before)
	}
	requireMapsMatch(t, lb, nil)

	if got := lb.Services(); len(got) != 1 || got[0] != svc.Frontend {
		t.Fatalf("Services() = %v", got)
	}
	if err := lb.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := lb.Upsert(svc, nil); err == nil {
		t.Fatal("Upsert after Close succeeded")
	}
}

func TestPrivilegedRestore(t *testing.T) {
	testutils.RequirePrivileged(t)
	pins := testutils.NewBPFFS(t)
	cg := testutils.NewCgroup(t)
	cfg := Config{Cgroup: cg.Path, PinPath: pins}

	lb1 := newTestLB(t, cfg)
	a := Service{Frontend: fe("10.96.0.1:80", nodeplane.ProtoTCP), SessionAffinity: time.Minute}
	b := Service{Frontend: fe("[fd00:96::1]:53", nodeplane.ProtoUDP), Type: LoadBalancer, Algorithm: AlgorithmMaglev}
	c := Service{Frontend: fe("10.96.0.2:80", nodeplane.ProtoTCP), Type: NodePort}
	aBackends := []Backend{
		{Addr: netip.MustParseAddrPort("10.0.0.9:80"), State: BackendTerminating},
		{Addr: netip.MustParseAddrPort("10.0.0.1:80"), Weight: 7},
		{Addr: netip.MustParseAddrPort("10.0.0.2:80")},
	}
	for _, u := range []struct {
		svc Service
		bes []Backend
	}{{a, aBackends}, {b, backendsOf("[fd00::1]:53")}, {c, nil}} {
		if _, err := lb1.Upsert(u.svc, u.bes); err != nil {
			t.Fatal(err)
		}
	}
	if err := lb1.SetHostAddresses(netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")); err != nil {
		t.Fatal(err)
	}
	// Flip a's bank so that the restored one is bank 1.
	if _, err := lb1.Upsert(a, aBackends[:2]); err != nil {
		t.Fatal(err)
	}
	want := describeTable(lb1.t)
	if err := lb1.Close(); err != nil {
		t.Fatal(err)
	}

	lb2 := newTestLB(t, cfg)
	if got := describeTable(lb2.t); got != want {
		t.Fatalf("restored\n%s\nwant\n%s", got, want)
	}
	requireMapsMatch(t, lb2, nil)
	if len(lb2.hosts) != 2 || !lb2.hosts.has(netip.MustParseAddr("2001:db8::1")) {
		t.Fatalf("restored host addresses %v", lb2.hosts)
	}
	id, err := lb2.Upsert(Service{Frontend: fe("10.96.0.3:80", nodeplane.ProtoTCP)}, nil)
	if err != nil || id != 4 {
		t.Fatalf("new service after restore: ID %d, %v", id, err)
	}
	if err := lb2.Delete(fe("10.96.0.3:80", nodeplane.ProtoTCP)); err != nil {
		t.Fatal(err)
	}
	lb2.Close()

	// What an update cut short leaves behind: a slot in the unused bank, a
	// new backend not yet in a slot, a backend of a service whose entry was
	// deleted, a match entry and a reverse NAT entry of no service.
	open := func(name string) *ebpf.Map {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pins, name), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	svc4, be4, match, revnat4 := open("np_lb4_svc"), open("np_lb4_be"), open("np_lb_aff_match"), open("np_lb4_revnat")
	put := func(m *ebpf.Map, k, v any) {
		if err := m.Put(k, v); err != nil {
			t.Fatal(err)
		}
	}
	aID := lb2.t.services[a.Frontend].id
	put(svc4, lb4KeyOf(a.Frontend, 1), lbService{BackendID: 2, RevNAT: uint16(aID)})
	put(be4, uint32(100), lb4Backend{Address: [4]byte{10, 0, 0, 5}, Port: portBytes(80), Proto: 6, Weight: 100, RevNAT: uint16(aID)})
	put(be4, uint32(101), lb4Backend{Address: [4]byte{10, 0, 0, 6}, Port: portBytes(80), Proto: 6, Weight: 100, RevNAT: 99})
	put(match, lbAffinityMatch{BackendID: 101, RevNAT: 99}, uint8(1))
	put(revnat4, uint16(99), lb4ReverseNAT{Address: [4]byte{10, 96, 9, 9}, Port: portBytes(80), Proto: 6})

	lb3 := newTestLB(t, cfg)
	requireMapsMatch(t, lb3, nil)
	_, got, _ := lb3.Lookup(a.Frontend)
	if !slices.ContainsFunc(got, func(b Backend) bool { return b.Addr == netip.MustParseAddrPort("10.0.0.5:80") }) {
		t.Fatalf("the backend written before the interruption was not rolled forward: %v", got)
	}
	lb3.Close()

	// Content this package cannot have written is refused, and New leaves
	// it alone.
	put(svc4, lb4KeyOf(c.Frontend, 0), lbService{RevNAT: 3, SlotBase: 5, Algorithm: algRandom})
	if _, err := New(cfg); !errors.Is(err, ErrPinnedState) || !strings.Contains(err.Error(), "slot base 5") {
		t.Fatalf("corrupt pinned state: %v", err)
	}
	var v lbService
	if err := svc4.Lookup(lb4KeyOf(c.Frontend, 0), &v); err != nil || v.SlotBase != 5 {
		t.Fatalf("New touched the corrupt entry: %+v, %v", v, err)
	}

	// Pinned maps of another size are not reused silently.
	other := cfg
	other.MaglevTableSize = 251
	if _, err := New(other); !errors.Is(err, ebpf.ErrMapIncompatible) {
		t.Fatalf("pinned Maglev tables of another size: %v", err)
	}
	cfg.ServiceEntries = 1024
	if _, err := New(cfg); err == nil || !strings.Contains(err.Error(), "do not match") {
		t.Fatalf("incompatible pins: %v", err)
	}
}

// TestPrivilegedTrafficAcrossRestart: a connection made before the LB
// restarts keeps working and showing the VIP, and new connections are
// balanced by the restored state: each reaches one of the service's two
// backends, which sees the client's own address, and both share them
// uniformly (chi-square, p < 0.001 to fail by chance).
func TestPrivilegedTrafficAcrossRestart(t *testing.T) {
	testutils.RequirePrivileged(t)
	pins := testutils.NewBPFFS(t)
	e := newEnv(t, 2, Config{PinPath: pins})
	svc := Service{Frontend: fe("10.96.1.1:80", nodeplane.ProtoTCP)}
	e.upsert(t, svc, e.backends(false, 2))
	if r := e.client.one(clientCmd{Op: "dial", Net: "tcp4", Addr: "10.96.1.1:80", ID: 1}); r.Err != "" {
		t.Fatal(r.Err)
	}

	if err := e.lb.Close(); err != nil {
		t.Fatal(err)
	}
	lb, err := New(Config{Cgroup: e.cg.Path, PinPath: pins})
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	counts := map[string]int{}
	for _, r := range e.client.do(clientCmd{Op: "dials", Net: "tcp4", Addr: "10.96.1.1:80", Count: 400}).Results {
		if r.Err != "" || r.Peer != "10.96.1.1:80" {
			t.Fatalf("after restart: %+v", r)
		}
		be := e.top.backendOf(r.Greeting)
		_, seen, _ := strings.Cut(r.Greeting, " ")
		if be == nil {
			t.Fatalf("after restart a connection reached %q, not a backend of the service", r.Greeting)
		}
		if ap, err := netip.ParseAddrPort(seen); err != nil || ap.Addr() != e.top.clients[0].v4 {
			t.Fatalf("after restart %s saw the client as %q", be.name, seen)
		}
		counts[be.name]++
	}
	obs := []int{counts[e.top.backends[0].name], counts[e.top.backends[1].name]}
	if x := chiSquare(obs); x > chiSquareCritical001[1] {
		t.Fatalf("after restart the restored service balances %v: chi-square %.2f > %.2f", counts, x, chiSquareCritical001[1])
	}
	if r := e.client.one(clientCmd{Op: "echo", ID: 1, Msg: "hi"}); r.Err != "" || r.Greeting != "hi" || r.Peer != "10.96.1.1:80" {
		t.Fatalf("connection from before the restart: %+v", r)
	}
}

// TestPrivilegedMaglevTables checks the per-service Maglev table map the
// packet path will read: present exactly for Maglev services with an active
// backend, holding the table lb/maglev computes for the active backends.
func TestPrivilegedMaglevTables(t *testing.T) {
	lb := newTestLB(t, Config{MaglevTableSize: 1021})
	builder, err := maglev.New(maglev.Config{TableSize: 1021})
	if err != nil {
		t.Fatal(err)
	}
	svc := Service{Frontend: fe("[fd00:96::7]:443", nodeplane.ProtoTCP), Algorithm: AlgorithmMaglev}
	bes := backendsOf("[fd00::1]:443", "[fd00::2]:443", "[fd00::3]:443")
	bes[2].Weight = 300

	// tableOf reads the kernel's table of svc, or nil.
	tableOf := func(id ServiceID) []uint32 {
		t.Helper()
		var innerID ebpf.MapID
		key := uint16(id)
		if err := lb.objs.NpLbMaglev.Lookup(&key, &innerID); errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		} else if err != nil {
			t.Fatal(err)
		}
		inner, err := ebpf.NewMapFromID(innerID)
		if err != nil {
			t.Fatal(err)
		}
		defer inner.Close()
		tbl := make([]uint32, 1021)
		if err := inner.Lookup(uint32(0), tbl); err != nil {
			t.Fatal(err)
		}
		return tbl
	}
	// want computes the table of the active backends as LB's table names
	// them.
	want := func() []uint32 {
		t.Helper()
		lb.mu.Lock()
		defer lb.mu.Unlock()
		e := lb.t.services[svc.Frontend]
		var in []maglev.Backend
		for _, b := range e.slots() {
			key, err := maglev.BackendKey(b.Addr, nodeplane.ProtoTCP)
			if err != nil {
				t.Fatal(err)
			}
			in = append(in, maglev.Backend{Key: key, ID: uint32(b.id), Weight: b.Weight})
		}
		tbl, err := builder.Table(in)
		if err != nil {
			t.Fatal(err)
		}
		return tbl
	}

	id, err := lb.Upsert(svc, bes)
	if err != nil {
		t.Fatal(err)
	}
	if got := tableOf(id); !slices.Equal(got, want()) {
		t.Fatal("table after create differs from lb/maglev's")
	}
	// The weighted backend owns about 3/5 of the table.
	heavy := 0
	for _, v := range tableOf(id) {
		if v == uint32(lb.t.services[svc.Frontend].backends[2].id) {
			heavy++
		}
	}
	if heavy < 1021*55/100 || heavy > 1021*65/100 {
		t.Fatalf("weight 300 of 500 got %d of 1021 entries", heavy)
	}

	bes[0].State = BackendTerminating
	if _, err := lb.Upsert(svc, bes); err != nil {
		t.Fatal(err)
	}
	got := tableOf(id)
	if !slices.Equal(got, want()) || slices.Contains(got, uint32(lb.t.services[svc.Frontend].backends[0].id)) {
		t.Fatal("table after a backend terminates")
	}
	requireMapsMatch(t, lb, nil)

	for i := range bes {
		bes[i].State = BackendMaintenance
	}
	if _, err := lb.Upsert(svc, bes); err != nil {
		t.Fatal(err)
	}
	if tableOf(id) != nil {
		t.Fatal("table kept without active backends")
	}
	bes[1].State = BackendActive
	if _, err := lb.Upsert(svc, bes); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(tableOf(id), want()) {
		t.Fatal("table after a backend came back")
	}
	svc.Algorithm = AlgorithmRandom
	if _, err := lb.Upsert(svc, bes); err != nil {
		t.Fatal(err)
	}
	if tableOf(id) != nil {
		t.Fatal("table kept after switching to random")
	}
	svc.Algorithm = AlgorithmMaglev
	if _, err := lb.Upsert(svc, bes); err != nil {
		t.Fatal(err)
	}
	if err := lb.Delete(svc.Frontend); err != nil {
		t.Fatal(err)
	}
	if tableOf(id) != nil {
		t.Fatal("table kept after delete")
	}
	requireMapsMatch(t, lb, nil)
}
