package policy

import (
	"context"
	"errors"
	"maps"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// TestEnginePolicyChangesMatchFullCompile changes policies at random under
// an engine with many endpoints. The engine recompiles only the endpoints
// a changed policy selects; after every change each endpoint's compiled
// policy and map must still equal a compilation from scratch, and an
// endpoint the policy does not select must not be written to.
func TestEnginePolicyChangesMatchFullCompile(t *testing.T) {
	for seed := uint64(0); seed < 30; seed++ {
		g := randomGen{rand.New(rand.NewPCG(seed, 11))}
		e, err := NewEngine(EngineConfig{})
		if err != nil {
			t.Fatal(err)
		}
		next := identity.ID(70000)
		ids := g.identities(40, func(identity.Labels) identity.ID { next++; return next })
		if err := e.UpdateIdentities(ids, nil); err != nil {
			t.Fatal(err)
		}
		type managed struct {
			ep Endpoint
			m  *recordingMap
		}
		eps := map[datapath.EndpointID]managed{}
		for i, id := range ids[:12] {
			epID := datapath.EndpointID(i + 1)
			m := managed{Endpoint{Identity: id.ID, Labels: id.Labels}, &recordingMap{id: id.ID}}
			if err := e.AddEndpoint(m.m); err != nil {
				t.Fatal(err)
			}
			eps[epID] = m
		}

		var live []Policy
		for step := range 40 {
			var (
				err  error
				what string
			)
			writes := map[datapath.EndpointID]int{}
			for id, m := range eps {
				_, calls := m.m.snapshot()
				writes[id] = len(calls)
			}
			switch x := g.r.Float64(); {
			case len(live) == 0 || x < 0.45:
				p := g.policy(step)
				what = "add " + p.ID().String()
				_, err = e.AddPolicy(p)
				live = append(live, p)
			case x < 0.75:
				i := g.pick(len(live))
				p := g.policy(step)
				p.Kind, p.Namespace, p.Name = live[i].Kind, live[i].Namespace, live[i].Name
				what = "replace " + p.ID().String()
				_, err = e.ReplacePolicy(p)
				live[i] = p
			default:
				i := g.pick(len(live))
				what = "delete " + live[i].ID().String()
				_, err = e.DeletePolicy(live[i].ID())
				live = append(live[:i], live[i+1:]...)
			}
			if err != nil {
				t.Fatalf("seed %d step %d %s: %v", seed, step, what, err)
			}
			for id, m := range eps {
				fresh := e.repo.Compile(m.ep).State()
				pol, _ := e.EndpointPolicy(m.m)
				if got := pol.State(); !maps.Equal(got, fresh) {
					t.Fatalf("seed %d step %d %s: endpoint %d compiled %d entries, from scratch %d",
						seed, step, what, id, len(got), len(fresh))
				}
				state, calls := m.m.snapshot()
				if !maps.Equal(state, fresh) {
					t.Fatalf("seed %d step %d %s: endpoint %d's map differs from its policy", seed, step, what, id)
				}
				if len(calls) > writes[id]+1 {
					t.Fatalf("seed %d step %d %s: endpoint %d written %d times for one change", seed, step, what, id, len(calls)-writes[id])
				}
			}
		}
		e.Close()
	}
}

// *datapath.Endpoint is what the engine manages in a node.
var _ LocalEndpoint = (*datapath.Endpoint)(nil)

// AddEndpoint rejects what it cannot manage with an error, never a panic,
// and writes nothing then.
func TestEngineAddEndpointErrors(t *testing.T) {
	e, err := NewEngine(EngineConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var nilMap *recordingMap
	for name, ep := range map[string]LocalEndpoint{"nil": nil, "nil pointer": nilMap, "not comparable": sliceEndpoint{}} {
		if err := e.AddEndpoint(ep); !errors.Is(err, ErrInvalidEndpoint) {
			t.Errorf("%s: AddEndpoint = %v, want ErrInvalidEndpoint", name, err)
		}
		if err := e.RemoveEndpoint(ep); !errors.Is(err, ErrInvalidEndpoint) {
			t.Errorf("%s: RemoveEndpoint = %v, want ErrInvalidEndpoint", name, err)
		}
		if _, ok := e.EndpointPolicy(ep); ok {
			t.Errorf("%s: EndpointPolicy found", name)
		}
	}
	// An identity the engine was not told about.
	m := &recordingMap{id: 70001}
	if err := e.AddEndpoint(m); !errors.Is(err, ErrUnknownIdentity) {
		t.Fatalf("AddEndpoint of an unknown identity = %v, want ErrUnknownIdentity", err)
	}
	if _, calls := m.snapshot(); len(calls) != 0 {
		t.Fatalf("map written %d times for a rejected endpoint", len(calls))
	}
	if err := e.UpdateIdentities([]identity.Identity{{ID: 70001, Labels: mustLabels(t, webProd)}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.AddEndpoint(m); err != nil {
		t.Fatal(err)
	}
	if err := e.AddEndpoint(m); !errors.Is(err, ErrEndpointExists) {
		t.Fatalf("second AddEndpoint = %v, want ErrEndpointExists", err)
	}
	if err := e.RemoveEndpoint(m); err != nil {
		t.Fatal(err)
	}
	if err := e.RemoveEndpoint(m); !errors.Is(err, ErrUnknownEndpoint) {
		t.Fatalf("second RemoveEndpoint = %v, want ErrUnknownEndpoint", err)
	}
}

// sliceEndpoint cannot be compared, so it cannot identify an endpoint.
type sliceEndpoint []int

func (sliceEndpoint) Identity() identity.ID                            { return identity.ReservedHost }
func (sliceEndpoint) ApplyPolicy(mapstate.State, []mapstate.Key) error { return nil }

// An endpoint no policy selects is added like any other and gets the
// allow-all entries; without them the datapath would deny everything.
func TestEngineUnselectedEndpointAllowsAll(t *testing.T) {
	e, err := NewEngine(EngineConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	web := identity.Identity{ID: 70001, Labels: mustLabels(t, webProd)}
	if err := e.UpdateIdentities([]identity.Identity{web}, nil); err != nil {
		t.Fatal(err)
	}
	m := &recordingMap{id: web.ID}
	if err := e.AddEndpoint(m); err != nil {
		t.Fatal(err)
	}
	state, _ := m.snapshot()
	want := mapstate.State{{Direction: mapstate.Ingress}: {}, {Direction: mapstate.Egress}: {}}
	if !maps.Equal(state, want) {
		t.Fatalf("map of an unselected endpoint = %v, want %v", state, want)
	}
}

// WaitForIdentities returns once every identity is known (and applied),
// with the context's error when one never comes, and nodeplane.ErrClosed once the
// engine is closed.
func TestEngineWaitForIdentities(t *testing.T) {
	e, err := NewEngine(EngineConfig{})
	if err != nil {
		t.Fatal(err)
	}
	web := identity.Identity{ID: 70001, Labels: mustLabels(t, webProd)}
	db := identity.Identity{ID: 70002, Labels: mustLabels(t, dbProd)}
	// Reserved identities are known from the start.
	if err := e.WaitForIdentities(context.Background(), identity.ReservedHost, identity.ReservedWorld); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := e.WaitForIdentities(ctx, web.ID); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("wait for an identity nobody gives = %v, want DeadlineExceeded", err)
	}
	done := make(chan error, 1)
	go func() { done <- e.WaitForIdentities(context.Background(), web.ID, db.ID) }()
	if err := e.UpdateIdentities([]identity.Identity{web}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("returned %v with db still unknown", err)
	case <-time.After(20 * time.Millisecond):
	}
	if err := e.UpdateIdentities([]identity.Identity{db}, nil); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	go func() { done <- e.WaitForIdentities(context.Background(), 70003) }()
	e.Close()
	if err := <-done; !errors.Is(err, nodeplane.ErrClosed) {
		t.Fatalf("wait on a closed engine = %v, want nodeplane.ErrClosed", err)
	}
}
