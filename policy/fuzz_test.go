package policy

import (
	"errors"
	"net/textproto"
	"regexp"
	"strings"
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
		cnp("prod", "h", "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"80\"}], rules: {http: [{method: GET, path: /p/.*, host: h, headers: [\"X-A: 1\", X-B], headerMatches: [{name: X-C, value: v}]}]}}]"),
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
		// With HTTP and DNS proxies, as statically valid L7 rules and
		// toFQDNs need them.
		repo, err := newRepository(Config{ProxyPorts: ProxyPorts{HTTP: 15001, DNS: 10053}})
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

// FuzzHTTPMatch compiles arbitrary HTTP rules and matches arbitrary
// requests: a rule compiles exactly when its regular expressions do, and
// a request matches exactly when each field does on its own (checked with
// the standard library's anchored match, independently of the matcher).
func FuzzHTTPMatch(f *testing.F) {
	f.Add("GET", "/public/.*", "", "X-Token: 1", "GET", "/public/x", "h", "X-Token", "1")
	f.Add("(", "", "", "", "", "", "", "", "")
	f.Add("", "/a|/b", "svc(:80)?", "X-A", "POST", "/b", "svc:80", "X-A", "")
	f.Fuzz(func(t *testing.T, method, path, host, header, rMethod, rTarget, rHost, hName, hValue string) {
		rule := HTTPRule{Method: method, Path: path, Host: host}
		if header != "" {
			rule.Headers = []string{header}
		}
		m, err := CompileHTTPRule(rule)
		compiles := true
		for _, re := range []string{method, path, host} {
			if re != "" {
				if _, err := regexp.Compile(anchor(re)); err != nil {
					compiles = false
				}
			}
		}
		if (err == nil) != compiles {
			t.Fatalf("%+v: compile error %v, regexps compile %v", rule, err, compiles)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("error does not wrap ErrInvalidPolicy: %v", err)
			}
			return
		}
		req := HTTPRequest{Method: rMethod, Target: rTarget, Host: rHost, Header: map[string][]string{}}
		if hName != "" {
			req.Header[textproto.CanonicalMIMEHeaderKey(hName)] = []string{hValue}
		}
		got, field, _ := m.Match(&req)
		want := true
		for _, c := range []struct{ re, s string }{{method, rMethod}, {path, rTarget}, {host, rHost}} {
			if c.re != "" && !regexp.MustCompile("^(?:"+c.re+")$").MatchString(c.s) {
				want = false
			}
		}
		if header != "" {
			name, value, exact := strings.Cut(header, " ")
			name = textproto.CanonicalMIMEHeaderKey(strings.TrimRight(name, ":"))
			if !exact {
				name = textproto.CanonicalMIMEHeaderKey(header)
			}
			vals, ok := req.Header[name]
			if name == "Host" {
				vals, ok = []string{rHost}, rHost != ""
			}
			if !ok || exact && strings.Join(vals, ",") != value {
				want = false
			}
		}
		if got != want {
			t.Fatalf("%+v on %+v: %v (failed %q), want %v", rule, req, got, field, want)
		}
	})
}
