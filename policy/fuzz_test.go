package policy

import (
	"errors"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// FuzzParse feeds arbitrary YAML and JSON to the parser. Whatever it
// accepts must be valid, must enter a repository, and must compile into a
// map that decides like the rules.
func FuzzParse(f *testing.F) {
	for _, seed := range []string{
		cnp("prod", "a", "endpointSelector: {matchLabels: {app: db}}\ningress:\n- fromEndpoints: [{matchLabels: {app: web}}]\n  toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]"),
		cnp("prod", "b", "endpointSelector: {}\negressDeny:\n- toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]\negress:\n- toEntities: [world, cluster]"),
		ccnp("c", "endpointSelector: {matchExpressions: [{key: app, operator: NotIn, values: [x]}]}\ningress:\n- icmps: [{fields: [{type: 8}, {family: IPv6, type: EchoReply}]}]"),
		knp("prod", "d", "podSelector: {}\npolicyTypes: [Ingress, Egress]\ningress:\n- from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {}}, {ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]\n  ports: [{port: 80, endPort: 90}, {protocol: UDP}]"),
		`{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"e"},"specs":[{"endpointSelector":{},"egress":[{"toFQDNs":[{"matchPattern":"*.example.com"}],"toPorts":[{"ports":[{"port":"443"}]}]}]}]}]}`,
		"---\n---\n# nothing\n",
		"a: &x [*x]",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, err := Parse(data, "fuzz")
		if err != nil {
			if ps != nil {
				t.Fatal("policies returned with an error")
			}
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("error does not wrap ErrInvalidPolicy: %v", err)
			}
			return
		}
		repo, err := newRepository(Config{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			if err := p.validate(); err != nil {
				t.Fatalf("parsed policy does not validate: %v", err)
			}
			if _, err := repo.replace(p); err != nil {
				t.Fatalf("parsed policy rejected by the repository: %v", err)
			}
		}
		pod := identity.Identity{ID: 70000, Labels: mustLabels(t, webProd)}
		repo.updateIdentities([]identity.Identity{pod}, nil)
		for _, peer := range identity.ReservedIdentities()[:4] {
			for _, dir := range []mapstate.Direction{mapstate.Ingress, mapstate.Egress} {
				ep := Endpoint{Identity: pod.ID, Labels: pod.Labels}
				pol := repo.Compile(ep)
				for _, port := range []uint16{0, 53, 80, 443} {
					d := pol.Lookup(peer.ID, dir, nodeplane.ProtoTCP, port)
					ev := repo.Evaluate(ep, peer, dir, nodeplane.ProtoTCP, port)
					if d.Allowed != ev.Allowed {
						t.Fatalf("%s from %d port %d: map %v, rules %v", dir, peer.ID, port, d, ev)
					}
				}
			}
		}
	})
}

func mustLabels(tb testing.TB, s string) identity.Labels {
	tb.Helper()
	ls, err := identity.ParseLabelList(s)
	if err != nil {
		tb.Fatal(err)
	}
	return ls
}
