package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

const httpPolicy = `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: web}}]
  toPorts:
  - ports: [{port: "80", protocol: TCP}]
    rules:
      http:
      - {method: GET, path: "/public/.*"}
      - {method: POST, path: /submit, headers: ["X-Token: 12345"]}
      - {path: /hdr, headerMatches: [{name: X-Mode}]}
- fromEndpoints: [{matchLabels: {app: api}}]
  toPorts: [{ports: [{port: "80", protocol: TCP}]}]`

// HTTP rules are accepted only by a repository that has an HTTP proxy;
// without one they are refused as not supported, at their path.
func TestHTTPRulesNeedProxy(t *testing.T) {
	ps, err := Parse([]byte(cnp("prod", "x", httpPolicy)), "in.yaml")
	if err != nil {
		t.Fatalf("static validation refused HTTP rules: %v", err)
	}
	repo, err := newRepository(Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = repo.add(ps[0])
	if !errors.Is(err, ErrInvalidPolicy) {
		t.Fatalf("without proxy: %v, want ErrInvalidPolicy", err)
	}
	var found bool
	for _, ve := range ValidationErrors(err) {
		found = found || ve.Path == "spec.ingress[0].toPorts[0].rules.http" && strings.Contains(ve.Reason, "not supported yet")
	}
	if !found {
		t.Errorf("no \"not supported yet\" at the http rules: %v", err)
	}
	repo, err = newRepository(Config{ProxyPorts: ProxyPorts{HTTP: 15001}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.add(ps[0]); err != nil {
		t.Fatalf("with a proxy: %v", err)
	}
}

// TestHTTPCompile checks the entries and the proxy's view: web's port 80
// is redirected with its three rules; api's plain L4 allow is redirected
// too (the key is shared by no rule here, so api's stays a plain allow) and
// lets every request through.
func TestHTTPCompile(t *testing.T) {
	w := newWorld(t, Config{ProxyPorts: ProxyPorts{HTTP: 15001}}, cnp("prod", "x", httpPolicy))
	db, web, api := w.ident(dbProd), w.ident(webProd), w.ident(apiProd)
	pol := w.repo.Compile(Endpoint{Identity: db.ID, Labels: db.Labels})

	k := mapstate.Key{Identity: web.ID, Direction: mapstate.Ingress, Protocol: nodeplane.ProtoTCP, Port: 80, PortPrefixLen: 16}
	if e, ok := pol.State()[k]; !ok || e.ProxyPort != 15001 || e.ProxyPortPriority != ProxyPriorityHTTP {
		t.Errorf("web's entry %+v (present %v), want proxy port 15001", e, ok)
	}
	k.Identity = api.ID
	if e, ok := pol.State()[k]; !ok || e.ProxyPort != 0 {
		t.Errorf("api's entry %+v (present %v), want a plain allow", e, ok)
	}

	hp, redirect := pol.HTTP(web.ID, mapstate.Ingress, nodeplane.ProtoTCP, 80)
	if !redirect || hp.AllowAll || len(hp.Rules) != 3 {
		t.Fatalf("web: redirect %v, %+v", redirect, hp)
	}
	for _, tc := range []struct {
		req   HTTPRequest
		allow bool
		rule  string // path of the matching rule
		field string // of the first rule's failure, when denied
	}{
		{HTTPRequest{Method: "GET", Target: "/public/x"}, true, "spec.ingress[0].toPorts[0].rules.http[0]", ""},
		{HTTPRequest{Method: "GET", Target: "/public/x?y=1"}, true, "spec.ingress[0].toPorts[0].rules.http[0]", ""},
		{HTTPRequest{Method: "POST", Target: "/public/x"}, false, "", "method"},
		{HTTPRequest{Method: "GET", Target: "/private"}, false, "", "path"},
		{HTTPRequest{Method: "GETX", Target: "/public/x"}, false, "", "method"},
		{HTTPRequest{Method: "POST", Target: "/submit", Header: map[string][]string{"X-Token": {"12345"}}}, true, "spec.ingress[0].toPorts[0].rules.http[1]", ""},
		{HTTPRequest{Method: "POST", Target: "/submit", Header: map[string][]string{"X-Token": {"abc"}}}, false, "", "method"},
		{HTTPRequest{Method: "PUT", Target: "/hdr", Header: map[string][]string{"X-Mode": {""}}}, true, "spec.ingress[0].toPorts[0].rules.http[2]", ""},
	} {
		d := hp.Decide(&tc.req)
		switch {
		case d.Allowed != tc.allow:
			t.Errorf("%+v: allowed %v, want %v (%+v)", tc.req, d.Allowed, tc.allow, d)
		case tc.allow && (d.Matched == nil || d.Matched.Path != tc.rule):
			t.Errorf("%+v: matched %+v, want %s", tc.req, d.Matched, tc.rule)
		case !tc.allow && (len(d.Misses) != 3 || d.Misses[0].Field != tc.field):
			t.Errorf("%+v: misses %+v, want 3 with the first on %s", tc.req, d.Misses, tc.field)
		}
	}
	hp, redirect = pol.HTTP(api.ID, mapstate.Ingress, nodeplane.ProtoTCP, 80)
	if redirect || !hp.AllowAll {
		t.Errorf("api: redirect %v, %+v; want a plain allow-all", redirect, hp)
	}
}

// TestHTTPMatcherCilium checks the matcher against Cilium's (Envoy's)
// semantics, written out by hand: anchored regular expressions, header
// strings split at the first space, exact values, presence, repeated
// headers joined by commas, case-insensitive header names.
func TestHTTPMatcherCilium(t *testing.T) {
	for _, tc := range []struct {
		rule  HTTPRule
		req   HTTPRequest
		match bool
	}{
		{HTTPRule{Path: "/a"}, HTTPRequest{Target: "/a"}, true},
		{HTTPRule{Path: "/a"}, HTTPRequest{Target: "/ab"}, false}, // anchored
		{HTTPRule{Path: "/a"}, HTTPRequest{Target: "x/a"}, false},
		{HTTPRule{Path: "/a|/b"}, HTTPRequest{Target: "/b"}, true}, // alternation inside the anchor
		{HTTPRule{Method: "GET|HEAD"}, HTTPRequest{Method: "HEAD"}, true},
		{HTTPRule{Method: "GET"}, HTTPRequest{Method: "get"}, false},
		{HTTPRule{Host: "svc(:80)?"}, HTTPRequest{Host: "svc:80"}, true},
		{HTTPRule{Host: "svc"}, HTTPRequest{Host: "svc.evil"}, false},
		{HTTPRule{Headers: []string{"X-Token"}}, HTTPRequest{Header: map[string][]string{"X-Token": {""}}}, true},
		{HTTPRule{Headers: []string{"x-token"}}, HTTPRequest{Header: map[string][]string{"X-Token": {"1"}}}, true},
		{HTTPRule{Headers: []string{"X-Token"}}, HTTPRequest{}, false},
		{HTTPRule{Headers: []string{"X-Token: 1"}}, HTTPRequest{Header: map[string][]string{"X-Token": {"1"}}}, true},
		{HTTPRule{Headers: []string{"X-Token 1"}}, HTTPRequest{Header: map[string][]string{"X-Token": {"1"}}}, true},
		{HTTPRule{Headers: []string{"X-Token: 1"}}, HTTPRequest{Header: map[string][]string{"X-Token": {"12"}}}, false},
		{HTTPRule{Headers: []string{"X-Token: a b"}}, HTTPRequest{Header: map[string][]string{"X-Token": {"a b"}}}, true},
		{HTTPRule{Headers: []string{"X-Token:1"}}, HTTPRequest{Header: map[string][]string{"X-Token": {"1"}}}, false}, // a name "X-Token:1"
		{HTTPRule{Headers: []string{"X-A: 1,2"}}, HTTPRequest{Header: map[string][]string{"X-A": {"1", "2"}}}, true},
		{HTTPRule{HeaderMatches: []HeaderMatch{{Name: "X-A", Value: "v"}}}, HTTPRequest{Header: map[string][]string{"X-A": {"v"}}}, true},
		{HTTPRule{HeaderMatches: []HeaderMatch{{Name: "X-A", Value: "v"}}}, HTTPRequest{Header: map[string][]string{"X-A": {"w"}}}, false},
		{HTTPRule{HeaderMatches: []HeaderMatch{{Name: "X-A"}}}, HTTPRequest{Header: map[string][]string{"X-A": {"w"}}}, true},
		{HTTPRule{HeaderMatches: []HeaderMatch{{Name: "X-A"}}}, HTTPRequest{}, false},
		{HTTPRule{}, HTTPRequest{Method: "DELETE", Target: "/x"}, true},
	} {
		m, err := CompileHTTPRule(tc.rule)
		if err != nil {
			t.Fatalf("%+v: %v", tc.rule, err)
		}
		if ok, field, reason := m.Match(&tc.req); ok != tc.match {
			t.Errorf("%+v on %+v: %v (%s: %s), want %v", tc.rule, tc.req, ok, field, reason, tc.match)
		}
	}
	for _, bad := range []HTTPRule{{Path: "("}, {Method: "[a"}, {HeaderMatches: []HeaderMatch{{Name: "x", Mismatch: "LOG"}}},
		{HeaderMatches: []HeaderMatch{{Name: "x", Secret: &Secret{Name: "s"}}}}, {HeaderMatches: []HeaderMatch{{}}}} {
		if _, err := CompileHTTPRule(bad); !errors.Is(err, ErrInvalidPolicy) {
			t.Errorf("%+v compiled: %v", bad, err)
		}
	}
}

var _ = identity.Unknown

// An empty HTTP rule list is no HTTP rules, as in Cilium (the HTTP parser,
// and the redirect, only for a non-empty list): a plain allow, which a
// repository without an HTTP proxy accepts too.
func TestEmptyHTTPRuleListIsPlainL4(t *testing.T) {
	const doc = `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: web}}]
  toPorts:
  - ports: [{port: "80", protocol: TCP}]
    rules: {http: []}`
	for _, cfg := range []Config{{ProxyPorts: ProxyPorts{HTTP: 15001}}, {}} {
		w := newWorld(t, cfg, cnp("prod", "x", doc))
		db, web := w.ident(dbProd), w.ident(webProd)
		pol := w.repo.Compile(Endpoint{Identity: db.ID, Labels: db.Labels})
		k := mapstate.Key{Identity: web.ID, Direction: mapstate.Ingress, Protocol: nodeplane.ProtoTCP, Port: 80, PortPrefixLen: 16}
		if e, ok := pol.State()[k]; !ok || e.ProxyPort != 0 {
			t.Errorf("proxy port %d: web's entry %+v (present %v), want a plain allow", cfg.ProxyPorts.HTTP, e, ok)
		}
	}
}
