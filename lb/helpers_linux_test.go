package lb

import (
	"testing"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// env is one end-to-end setup: the topology with servers on every backend,
// a cgroup with the load balancer attached, a client agent in the first
// client namespace and cgroup, and a Model fed the same updates as the LB.
type env struct {
	top    *topology
	cg     *testutils.Cgroup
	lb     *LB
	model  *Model
	client *client
}

func newEnv(tb testing.TB, backends int, cfg Config) *env {
	tb.Helper()
	testutils.RequirePrivileged(tb)
	testutils.SkipIfNotSupported(tb, HaveSocketLB())
	top := newTopology(tb, 1, backends)
	top.serve(tb)
	cg := testutils.NewCgroup(tb)
	cfg.Cgroup = cg.Path
	lb, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := lb.Close(); err != nil {
			tb.Error(err)
		}
	})
	return &env{top: top, cg: cg, lb: lb, model: &Model{}, client: startClient(tb, top.clients[0], cg)}
}

// upsert programs svc in the LB and the model and checks that both hand out
// the same ID and that the maps hold exactly the table.
func (e *env) upsert(tb testing.TB, svc Service, backends []Backend) ServiceID {
	tb.Helper()
	id, err := e.lb.Upsert(svc, backends)
	if err != nil {
		tb.Fatalf("Upsert %s: %v", svc.Frontend, err)
	}
	mid, err := e.model.Upsert(svc, backends)
	if err != nil {
		tb.Fatalf("model Upsert %s: %v", svc.Frontend, err)
	}
	if id != mid {
		tb.Fatalf("LB gave %s ID %d, model %d", svc.Frontend, id, mid)
	}
	requireMapsMatch(tb, e.lb, e.model)
	return id
}

// backends returns n backends on port backendPort of the first n backend
// namespaces, in the family of v6.
func (e *env) backends(v6 bool, n int) []Backend {
	var out []Backend
	for _, be := range e.top.backends[:n] {
		out = append(out, Backend{Addr: be.addr(v6, backendPort)})
	}
	return out
}

// requireMapsMatch reads the kernel maps back and checks that they hold
// exactly the image of lb's table: nothing missing, nothing left over. If
// model is not nil, its table must be the same too.
func requireMapsMatch(tb testing.TB, lb *LB, model *Model) {
	tb.Helper()
	lb.mu.Lock()
	st, err := lb.dump()
	want := describeTable(lb.t)
	lb.mu.Unlock()
	if err != nil {
		tb.Fatal(err)
	}
	got, r, err := rebuild(st)
	if err != nil {
		tb.Fatalf("maps do not decode: %v", err)
	}
	if !r.empty() {
		tb.Fatalf("maps hold leftovers or miss entries: %+v", *r)
	}
	if g := describeTable(got); g != want {
		tb.Fatalf("maps hold\n%s\nwant\n%s", g, want)
	}
	if model != nil {
		if m := describeTable(model.t); m != want {
			tb.Fatalf("model holds\n%s\nLB\n%s", m, want)
		}
	}
}
