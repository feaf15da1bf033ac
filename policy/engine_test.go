package policy

import (
	"maps"
	"math/rand/v2"
	"testing"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/identity"
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
