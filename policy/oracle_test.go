package policy

import (
	"math/rand/v2"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// oracleWorld is one random universe of the oracle test: policies,
// identities and the compiled policy of every identity that can be an
// endpoint.
type oracleWorld struct {
	repo       *Repository
	identities []identity.Identity
	endpoints  []identity.Identity
	compiled   map[identity.ID]*EndpointPolicy
}

func newOracleWorld(tb testing.TB, seed uint64) *oracleWorld {
	tb.Helper()
	g := randomGen{rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))}
	repo, err := newRepository(Config{})
	if err != nil {
		tb.Fatal(err)
	}
	for i, n := 0, 1+g.pick(5); i < n; i++ {
		if _, err := repo.add(g.policy(i)); err != nil {
			tb.Fatalf("seed %d: %v", seed, err)
		}
	}
	nextCluster, nextLocal := identity.ID(70000), identity.LocalScopeFlag|1
	ids := g.identities(24, func(ls identity.Labels) identity.ID {
		if ls.Scope() == identity.ScopeLocal {
			nextLocal++
			return nextLocal
		}
		nextCluster++
		return nextCluster
	})
	repo.updateIdentities(ids, nil)
	w := &oracleWorld{repo: repo, compiled: map[identity.ID]*EndpointPolicy{}}
	w.identities = append(identity.ReservedIdentities(), ids...)
	for _, id := range w.identities {
		// Every identity gets a policy, endpoint or not: the map must
		// agree with the rules whatever the subject.
		w.endpoints = append(w.endpoints, id)
		w.compiled[id.ID] = repo.Compile(Endpoint{Identity: id.ID, Labels: id.Labels})
	}
	return w
}

// TestOracle checks, over random policies, identities and packets, that
// the datapath's decision over the compiled map (mapstate.Lookup)
// equals a direct evaluation of the rules, reason included.
func TestOracle(t *testing.T) {
	worlds, packets := 250, 420
	if testing.Short() {
		worlds = 40
	}
	cases, denied, allowed := 0, 0, 0
	for seed := uint64(0); seed < uint64(worlds); seed++ {
		w := newOracleWorld(t, seed)
		g := randomGen{rand.New(rand.NewPCG(seed, 1))}
		for i := 0; i < packets; i++ {
			ep := w.endpoints[g.pick(len(w.endpoints))]
			peer := w.identities[g.pick(len(w.identities))]
			dir := []mapstate.Direction{mapstate.Ingress, mapstate.Egress}[g.pick(2)]
			pkt := g.packet()
			d := w.compiled[ep.ID].Lookup(peer.ID, dir, pkt.proto, pkt.port)
			ev := w.repo.Evaluate(Endpoint{Identity: ep.ID, Labels: ep.Labels}, peer, dir, pkt.proto, pkt.port)
			cases++
			if d.Allowed {
				allowed++
			} else {
				denied++
			}
			if d.Allowed != ev.Allowed || !d.Allowed && d.Reason != ev.Reason {
				t.Fatalf("seed %d: %s of %d (%s) with %d (%s), %d/%s:\n  map:   %+v\n  rules: %+v",
					seed, dir, ep.ID, ep.Labels, peer.ID, peer.Labels, pkt.port, pkt.proto, d, ev)
			}
		}
	}
	t.Logf("%d cases: %d allowed, %d denied", cases, allowed, denied)
	if !testing.Short() && cases < 100000 {
		t.Fatalf("only %d cases", cases)
	}
	// A generator that only produced one verdict would prove little.
	if allowed < cases/10 || denied < cases/10 {
		t.Fatalf("unbalanced cases: %d allowed, %d denied", allowed, denied)
	}
}

// TestOracleDenyReasons checks the datapath's reason codes on the
// decisions that distinguish them.
func TestOracleDenyReasons(t *testing.T) {
	w := newWorld(t, Config{}, cnp("prod", "p", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: web}}]
ingressDeny:
- fromEndpoints: [{matchLabels: {app: web}}]
  toPorts: [{ports: [{port: "22", protocol: TCP}]}]`))
	web, db := w.ident(webProd), w.ident(dbProd)
	pol := w.repo.Compile(Endpoint{Identity: db.ID, Labels: db.Labels})
	for _, tt := range []struct {
		peer   identity.ID
		port   uint16
		reason monitor.DropReason
	}{
		{web.ID, 22, monitor.DropPolicyDeny},
		{web.ID, 80, 0},
		{w.ident(apiProd).ID, 80, monitor.DropPolicyDenied},
	} {
		d := pol.Lookup(tt.peer, mapstate.Ingress, nodeplane.ProtoTCP, tt.port)
		if d.Reason != tt.reason || d.Allowed != (tt.reason == 0) {
			t.Errorf("peer %d port %d: %+v, want reason %d", tt.peer, tt.port, d, tt.reason)
		}
	}
}
