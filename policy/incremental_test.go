package policy

import (
	"context"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// A new identity that an existing selector selects becomes reachable by a
// delta that touches only its own entries; removing it deletes them.
func TestIncrementalIdentity(t *testing.T) {
	w := newWorld(t, Config{}, cnp("prod", "db", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: web}}]
  toPorts: [{ports: [{port: "5432", protocol: TCP}, {port: "9000", endPort: 9003, protocol: UDP}]}]`))
	db := w.ident(dbProd)
	pol := w.repo.Compile(Endpoint{Identity: db.ID, Labels: db.Labels})
	// Egress is not enforced: one allow-all entry. No web pod yet.
	openEgress := mapstate.State{{Direction: mapstate.Egress}: {}}
	if before := pol.State(); !maps.Equal(before, openEgress) {
		t.Fatalf("no web pod yet, but the map has %v", before)
	}

	// A web pod appears: its identity is allocated and announced.
	web := identity.Identity{ID: 70001, Labels: mustLabels(t, webProd)}
	w.repo.updateIdentities([]identity.Identity{web}, nil)
	if d := pol.Lookup(web.ID, mapstate.Ingress, nodeplane.ProtoTCP, 5432); d.Allowed {
		t.Fatal("allowed before the policy learnt of the identity")
	}
	delta := pol.updateIdentities([]identity.ID{web.ID})
	want := mapstate.Delta{Upserts: mapstate.State{
		{Identity: web.ID, Direction: mapstate.Ingress, Protocol: 6, Port: 5432, PortPrefixLen: 16}:  {},
		{Identity: web.ID, Direction: mapstate.Ingress, Protocol: 17, Port: 9000, PortPrefixLen: 14}: {},
	}}
	if !reflect.DeepEqual(delta, want) {
		t.Fatalf("delta %+v\nwant  %+v", delta, want)
	}
	if d := pol.Lookup(web.ID, mapstate.Ingress, nodeplane.ProtoTCP, 5432); !d.Allowed {
		t.Fatalf("not reachable after the delta: %+v", d)
	}
	if d := pol.Lookup(web.ID, mapstate.Ingress, nodeplane.ProtoUDP, 9003); !d.Allowed {
		t.Fatalf("range end not reachable: %+v", d)
	}

	// An identity no selector selects changes nothing.
	other := identity.Identity{ID: 70002, Labels: mustLabels(t, webDev)}
	w.repo.updateIdentities([]identity.Identity{other}, nil)
	if d := pol.updateIdentities([]identity.ID{other.ID}); !d.Empty() {
		t.Fatalf("unselected identity produced %+v", d)
	}

	// The pod goes away.
	w.repo.updateIdentities(nil, []identity.ID{web.ID})
	delta = pol.updateIdentities([]identity.ID{web.ID})
	if len(delta.Upserts) != 0 || len(delta.Deletes) != 2 {
		t.Fatalf("removal delta %+v", delta)
	}
	for _, k := range delta.Deletes {
		if k.Identity != web.ID {
			t.Errorf("removal deleted %v", k)
		}
	}
	if d := pol.Lookup(web.ID, mapstate.Ingress, nodeplane.ProtoTCP, 5432); d.Allowed {
		t.Fatal("still reachable after removal")
	}
	if got := pol.State(); !maps.Equal(got, openEgress) {
		t.Fatalf("state after removal: %v", got)
	}
}

// Over random worlds, following identities incrementally gives the same
// map as compiling from scratch, and each delta turns the old map into the
// new one.
func TestIncrementalMatchesFullCompile(t *testing.T) {
	for seed := uint64(0); seed < 60; seed++ {
		g := randomGen{rand.New(rand.NewPCG(seed, 7))}
		repo, err := newRepository(Config{})
		if err != nil {
			t.Fatal(err)
		}
		for i, n := 0, 1+g.pick(5); i < n; i++ {
			if _, err := repo.add(g.policy(i)); err != nil {
				t.Fatal(err)
			}
		}
		next := identity.ID(70000)
		ids := g.identities(30, func(identity.Labels) identity.ID { next++; return next })
		ep := ids[0]
		repo.updateIdentities(ids[:1], nil)
		pol := repo.Compile(Endpoint{Identity: ep.ID, Labels: ep.Labels})
		mirror := pol.State()
		check := func(step string) {
			fresh := repo.Compile(Endpoint{Identity: ep.ID, Labels: ep.Labels}).State()
			if got := pol.State(); !maps.Equal(got, fresh) {
				t.Fatalf("seed %d after %s: incremental %d entries, full %d", seed, step, len(got), len(fresh))
			}
			if !maps.Equal(mirror, fresh) {
				t.Fatalf("seed %d after %s: deltas did not reproduce the map", seed, step)
			}
		}
		for _, id := range ids[1:] {
			repo.updateIdentities([]identity.Identity{id}, nil)
			pol.updateIdentities([]identity.ID{id.ID}).Apply(mirror)
			check("add")
		}
		for _, id := range ids[1:] {
			if g.chance(0.5) {
				repo.updateIdentities(nil, []identity.ID{id.ID})
				pol.updateIdentities([]identity.ID{id.ID}).Apply(mirror)
				check("remove")
			}
		}
	}
}

// recordingMap is a LocalEndpoint of identity id that keeps its map in
// memory and records every delta applied to it.
type recordingMap struct {
	id    identity.ID
	mu    sync.Mutex
	m     mapstate.State
	calls []mapstate.Delta
}

func (r *recordingMap) snapshot() (mapstate.State, []mapstate.Delta) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.m), append([]mapstate.Delta(nil), r.calls...)
}

func (r *recordingMap) Identity() identity.ID { return r.id }

func (r *recordingMap) ApplyPolicy(up mapstate.State, del []mapstate.Key) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = mapstate.State{}
	}
	d := mapstate.Delta{Upserts: maps.Clone(up), Deletes: append([]mapstate.Key(nil), del...)}
	d.Apply(r.m)
	r.calls = append(r.calls, d)
	return nil
}

// The engine applies identity changes to the endpoints' maps as deltas
// (never a rewrite), follows an allocator's watch, and allocates CIDR
// identities into the ipcache for CIDR rules.
func TestEngineIncremental(t *testing.T) {
	alloc, err := identity.NewInProcessAllocator(identity.InProcessConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer alloc.Close()
	ipc := ipcache.New()
	e, err := NewEngine(EngineConfig{CIDRAllocator: alloc, IPCache: ipc})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.WatchIdentities(ctx, alloc) }()
	defer func() { cancel(); <-done }()

	pols, err := Parse([]byte(cnp("prod", "db", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: web}}]
egress:
- toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]`)), "t")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddPolicy(pols[0]); err != nil {
		t.Fatal(err)
	}
	// The CIDR rule's prefixes got identities in the ipcache.
	_, inRange, ok1 := ipc.Lookup(netip.MustParseAddr("10.1.1.1"))
	_, except, ok2 := ipc.Lookup(netip.MustParseAddr("10.96.1.1"))
	if !ok1 || !ok2 || inRange.Identity == except.Identity || !inRange.Identity.IsLocal() {
		t.Fatalf("ipcache: %v %v / %v %v", inRange, ok1, except, ok2)
	}

	dbLabels := mustLabels(t, dbProd)
	dbID, _, err := alloc.Allocate(ctx, dbLabels)
	if err != nil {
		t.Fatal(err)
	}
	m := &recordingMap{id: dbID}
	// Not known until the watch brings it; then known and applied.
	if err := e.WaitForIdentities(ctx, dbID); err != nil {
		t.Fatal(err)
	}
	if err := e.AddEndpoint(m); err != nil {
		t.Fatal(err)
	}
	pol, _ := e.EndpointPolicy(m)
	if d := pol.Lookup(inRange.Identity, mapstate.Egress, nodeplane.ProtoTCP, 443); !d.Allowed {
		t.Fatalf("CIDR identity not allowed: %+v", d)
	}
	if d := pol.Lookup(except.Identity, mapstate.Egress, nodeplane.ProtoTCP, 443); d.Allowed {
		t.Fatalf("except identity allowed: %+v", d)
	}
	_, calls := m.snapshot()
	initial := len(calls)

	// A web pod starts: the allocator's watch brings its identity, and the
	// map gets exactly that identity's entry.
	webLabels := mustLabels(t, webProd)
	webID, _, err := alloc.Allocate(ctx, webLabels)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, c := m.snapshot(); return len(c) > initial })
	_, calls = m.snapshot()
	d := calls[initial]
	wantKey := mapstate.Key{Identity: webID, Direction: mapstate.Ingress}
	if len(d.Upserts) != 1 || len(d.Deletes) != 0 {
		t.Fatalf("delta on identity add: %+v", d)
	}
	if _, ok := d.Upserts[wantKey]; !ok {
		t.Fatalf("delta %+v lacks %v", d, wantKey)
	}

	// It stops: its entry goes.
	if _, err := alloc.Release(ctx, webID); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, c := m.snapshot(); return len(c) > initial+1 })
	state, calls := m.snapshot()
	d = calls[initial+1]
	if len(d.Upserts) != 0 || len(d.Deletes) != 1 || d.Deletes[0] != wantKey {
		t.Fatalf("delta on identity removal: %+v", d)
	}
	if _, ok := state[wantKey]; ok {
		t.Fatal("entry still in the map")
	}

	// Deleting the policy opens the endpoint again and releases the CIDR
	// identities.
	if _, err := e.DeletePolicy(pols[0].ID()); err != nil {
		t.Fatal(err)
	}
	state, _ = m.snapshot()
	if !maps.Equal(state, mapstate.State{{Direction: mapstate.Ingress}: {}, {Direction: mapstate.Egress}: {}}) {
		t.Fatalf("map after delete: %v", m.m)
	}
	if ipc.Len() != 0 {
		t.Fatalf("ipcache still has %d entries", ipc.Len())
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 2000; i++ {
		if cond() {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("timed out")
}
