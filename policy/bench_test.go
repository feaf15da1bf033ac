package policy

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// benchScale is a cluster for the benchmarks: pods spread over namespaces
// with a handful of apps each, and namespaced rules between the apps, the
// shape of real policy sets.
type benchScale struct {
	namespaces, appsPerNS, identities, rules int
}

func (s benchScale) identitiesList() []identity.Identity {
	out := make([]identity.Identity, 0, s.identities)
	for i := 0; i < s.identities; i++ {
		ns := i % s.namespaces
		app := (i / s.namespaces) % s.appsPerNS
		ls, err := identity.ParseLabelList(fmt.Sprintf(
			"k8s:app=app%d,k8s:pod-template-hash=h%d,k8s:io.kubernetes.pod.namespace=ns%d,k8s:io.cilium.k8s.namespace.labels.team=t%d,%s",
			app, i, ns, ns%7, clusterLbl))
		if err != nil {
			panic(err)
		}
		out = append(out, identity.Identity{ID: identity.ID(70000 + i), Labels: ls})
	}
	return out
}

// policies returns s.rules rules: per namespace, each app accepts two
// other apps on a port and a range, denies one of them SSH, and may reach
// the world's 443 and one CIDR set.
func (s benchScale) policies() []Policy {
	var out []Policy
	for i := 0; i < s.rules; i++ {
		ns := i % s.namespaces
		app := (i / s.namespaces) % s.appsPerNS
		peer := func(d int) identity.LabelSelector {
			return identity.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", (app+d)%s.appsPerNS)}}
		}
		out = append(out, Policy{Kind: KindCiliumNetworkPolicy, Namespace: fmt.Sprintf("ns%d", ns), Name: fmt.Sprintf("r%d", i),
			Rules: []Rule{{
				EndpointSelector: &identity.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app%d", app)}},
				Ingress: []IngressRule{{
					FromEndpoints: []identity.LabelSelector{peer(1), peer(2)},
					ToPorts:       []PortRule{{Ports: []PortProtocol{{Port: 8080, Protocol: nodeplane.ProtoTCP}, {Port: 9000, EndPort: 9099, Protocol: nodeplane.ProtoTCP}}}},
				}},
				IngressDeny: []IngressRule{{
					FromEndpoints: []identity.LabelSelector{peer(2)},
					ToPorts:       []PortRule{{Ports: []PortProtocol{{Port: 22, Protocol: nodeplane.ProtoTCP}}}},
				}},
				Egress: []EgressRule{
					{ToEndpoints: []identity.LabelSelector{peer(3)}},
					{ToEntities: []Entity{EntityWorld}, ToPorts: []PortRule{{Ports: []PortProtocol{{Port: 443, Protocol: nodeplane.ProtoTCP}}}}},
					{ToCIDRSet: []CIDRRule{{CIDR: netip.MustParsePrefix("10.0.0.0/8"), Except: []netip.Prefix{netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/16", ns%256))}}}},
				},
			}}})
	}
	return out
}

var benchDefault = benchScale{namespaces: 100, appsPerNS: 10, identities: 10000, rules: 1000}

var benchIdentities = sync.OnceValue(func() []identity.Identity { return benchDefault.identitiesList() })

// newBenchRepo returns a repository with the benchmark's identities and
// rules.
func newBenchRepo(b *testing.B, s benchScale, ids []identity.Identity) *Repository {
	b.Helper()
	repo, err := newRepository(Config{})
	if err != nil {
		b.Fatal(err)
	}
	repo.updateIdentities(ids, nil)
	for _, p := range s.policies() {
		if _, err := repo.add(p); err != nil {
			b.Fatal(err)
		}
	}
	return repo
}

// BenchmarkCompile measures compiling 1k rules against 10k identities:
//
//   - rules: adding the rules to a repository that knows the identities,
//     which resolves every rule and evaluates each distinct selector
//     against the identities once (the selector cache);
//   - endpoint: compiling one endpoint's policy map from the repository;
//   - all-endpoints: compiling the maps of one endpoint per identity of a
//     namespace's apps (100 endpoints), what a node does at start.
func BenchmarkCompile(b *testing.B) {
	ids := benchIdentities()
	policies := benchDefault.policies()
	b.Run("rules=1000/identities=10000/rules", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			repo, err := newRepository(Config{})
			if err != nil {
				b.Fatal(err)
			}
			repo.updateIdentities(ids, nil)
			b.StartTimer()
			for _, p := range policies {
				if _, err := repo.add(p); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
	repo := newBenchRepo(b, benchDefault, ids)
	ep := Endpoint{Identity: ids[0].ID, Labels: ids[0].Labels}
	b.Run("rules=1000/identities=10000/endpoint", func(b *testing.B) {
		b.ReportAllocs()
		var entries int
		for i := 0; i < b.N; i++ {
			entries = repo.Compile(ep).Len()
		}
		b.ReportMetric(float64(entries), "entries")
	})
	b.Run("rules=1000/identities=10000/all-endpoints", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			for _, id := range ids[:100] {
				repo.Compile(Endpoint{Identity: id.ID, Labels: id.Labels})
			}
		}
	})
}

// BenchmarkIdentityAdd measures the latency of a new identity: the
// selector cache update and the delta of every compiled endpoint policy
// (100 endpoints), against the baseline of recompiling those endpoints.
func BenchmarkIdentityAdd(b *testing.B) {
	ids := benchIdentities()
	repo := newBenchRepo(b, benchDefault, ids)
	var pols []*EndpointPolicy
	for _, id := range ids[:100] {
		pols = append(pols, repo.Compile(Endpoint{Identity: id.ID, Labels: id.Labels}))
	}
	// The new pod: app1 in ns0, selected by some of the endpoints' rules.
	newID := identity.Identity{ID: 99999, Labels: mustLabels(b, "k8s:app=app1,k8s:pod-template-hash=new,k8s:io.kubernetes.pod.namespace=ns0,k8s:io.cilium.k8s.namespace.labels.team=t0,"+clusterLbl)}

	b.Run("incremental", func(b *testing.B) {
		b.ReportAllocs()
		changed := 0
		for i := 0; i < b.N; i++ {
			repo.updateIdentities([]identity.Identity{newID}, nil)
			for _, p := range pols {
				if d := p.updateIdentities([]identity.ID{newID.ID}); !d.Empty() {
					changed++
				}
			}
			// Remove it again (untimed) for the next round.
			b.StopTimer()
			repo.updateIdentities(nil, []identity.ID{newID.ID})
			for _, p := range pols {
				p.updateIdentities([]identity.ID{newID.ID})
			}
			b.StartTimer()
		}
		b.ReportMetric(float64(changed)/float64(b.N), "endpoints-changed")
	})
	b.Run("full-recompile-baseline", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			repo.updateIdentities([]identity.Identity{newID}, nil)
			for _, p := range pols {
				fresh := repo.Compile(p.Endpoint())
				_ = mapstate.Diff(p.State(), fresh.State())
			}
			b.StopTimer()
			repo.updateIdentities(nil, []identity.ID{newID.ID})
			b.StartTimer()
		}
	})
}

// discardEndpoint is a LocalEndpoint of that identity whose map is
// nowhere.
type discardEndpoint identity.ID

func (d discardEndpoint) Identity() identity.ID { return identity.ID(d) }

func (discardEndpoint) ApplyPolicy(mapstate.State, []mapstate.Key) error {
	return nil
}

// BenchmarkPolicyChange measures replacing one policy under an engine with
// 1k rules, 10k identities and 100 endpoints, of which the policy selects
// one. The engine recompiles only the endpoints the policy selects before
// or after the change; the baseline recompiles and diffs all 100, as the
// engine did before.
func BenchmarkPolicyChange(b *testing.B) {
	ids := benchIdentities()
	policies := benchDefault.policies()
	e, err := NewEngine(EngineConfig{})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	if err := e.UpdateIdentities(ids, nil); err != nil {
		b.Fatal(err)
	}
	for _, p := range policies {
		if _, err := e.AddPolicy(p); err != nil {
			b.Fatal(err)
		}
	}
	for _, id := range ids[:100] {
		if err := e.AddEndpoint(discardEndpoint(id.ID)); err != nil {
			b.Fatal(err)
		}
	}
	// policies[0] selects app0 in ns0: ids[0], one of the endpoints. Its
	// two versions differ in a port.
	versions := [2]Policy{policies[0], policies[0].clone()}
	versions[1].Rules[0].Ingress[0].ToPorts[0].Ports[0].Port = 8081

	b.Run("selected-endpoints", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := e.ReplacePolicy(versions[(i+1)%2]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("recompile-all-baseline", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, err := e.repo.replace(versions[(i+1)%2]); err != nil {
				b.Fatal(err)
			}
			for _, ee := range e.endpoints {
				fresh := e.repo.Compile(ee.subject)
				_ = mapstate.Diff(ee.policy.State(), fresh.State())
			}
		}
	})
}

// BenchmarkParse measures parsing a policy file of 100 documents.
func BenchmarkParse(b *testing.B) {
	var doc []byte
	for i := 0; i < 100; i++ {
		doc = append(doc, cnp("prod", fmt.Sprintf("p%d", i), `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: web}}]
  toPorts: [{ports: [{port: "5432", protocol: TCP}, {port: "8000", endPort: 8100}]}]
egressDeny:
- toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]`)...)
		doc = append(doc, "---\n"...)
	}
	b.SetBytes(int64(len(doc)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := Parse(doc, "bench"); err != nil {
			b.Fatal(err)
		}
	}
}
