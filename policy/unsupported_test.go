package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
)

// Rules this package cannot enforce are rejected, not enforced as
// something wider: an HTTP rule that allows GET /public must not become
// "every request on port 80". Each case names the field path and says
// "not supported yet".
func TestParseRejectsUnenforced(t *testing.T) {
	tests := []struct {
		name, doc string
		path      string
	}{
		{"HTTP header match from a secret", cnp("prod", "x", `
endpointSelector: {}
ingress:
- toPorts:
  - ports: [{port: "80", protocol: TCP}]
    rules: {http: [{headerMatches: [{name: X-Token, secret: {name: s}}]}]}`), "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].secret"},
		{"HTTP header mismatch action", cnp("prod", "x", `
endpointSelector: {}
ingress:
- toPorts:
  - ports: [{port: "80", protocol: TCP}]
    rules: {http: [{headerMatches: [{name: X-Token, value: "1", mismatch: LOG}]}]}`), "spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0].mismatch"},
		{"Kafka rules", cnp("prod", "x", `
endpointSelector: {}
ingress:
- toPorts:
  - ports: [{port: "9092", protocol: TCP}]
    rules: {kafka: [{role: produce, topic: t}]}`), "spec.ingress[0].toPorts[0].rules.kafka"},
		{"generic L7 rules", cnp("prod", "x", `
endpointSelector: {}
ingress:
- toPorts:
  - ports: [{port: "9000", protocol: TCP}]
    rules: {l7proto: myproto, l7: [{action: allow}]}`), "spec.ingress[0].toPorts[0].rules.l7proto"},
		{"ingress authentication", cnp("prod", "x", `
endpointSelector: {}
ingress:
- fromEndpoints: [{}]
  authentication: {mode: required}`), "spec.ingress[0].authentication.mode"},
		{"egress authentication", cnp("prod", "x", `
endpointSelector: {}
egress:
- toEndpoints: [{}]
  authentication: {mode: test-always-fail}`), "spec.egress[0].authentication.mode"},
		{"host policy", ccnp("x", `
nodeSelector: {matchLabels: {role: worker}}
ingress:
- fromEntities: [cluster]`), "spec.nodeSelector"},
		{"host policy in specs", `apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: x}
specs:
- endpointSelector: {}
  ingress: [{fromEntities: [cluster]}]
- nodeSelector: {}
  egress: [{toEntities: [world]}]
`, "specs[1].nodeSelector"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps, err := Parse([]byte(tt.doc), "in.yaml")
			if err == nil {
				t.Fatalf("accepted: %+v", ps)
			}
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Errorf("error does not wrap ErrInvalidPolicy: %v", err)
			}
			var found bool
			for _, ve := range ValidationErrors(err) {
				if ve.Path == tt.path && strings.Contains(ve.Reason, "not supported yet") {
					found = true
					if ve.Document != 1 || ve.Source != "in.yaml" {
						t.Errorf("error does not name its document: %v", ve)
					}
				}
			}
			if !found {
				t.Errorf("no \"not supported yet\" error at %s:\n%v", tt.path, err)
			}
		})
	}
}

// What is enforced as written stays accepted: authentication that is
// disabled is what a rule without authentication means.
func TestParseAcceptsEnforced(t *testing.T) {
	for name, doc := range map[string]string{
		"authentication disabled": cnp("prod", "x", `
endpointSelector: {}
ingress:
- fromEndpoints: [{}]
  authentication: {mode: disabled}`),
		"empty L7 rules": cnp("prod", "x", `
endpointSelector: {}
ingress:
- toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {}}]`),
		"ports without L7 rules": cnp("prod", "x", `
endpointSelector: {}
egress:
- toEndpoints: [{}]
  toPorts: [{ports: [{port: "80"}]}]`),
	} {
		if _, err := Parse([]byte(doc), "in.yaml"); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// Policies built in Go are held to the same rule: the engine rejects
// what it cannot enforce.
func TestRepositoryRejectsUnenforced(t *testing.T) {
	sel := &identity.LabelSelector{}
	tests := []struct {
		name string
		rule Rule
		path string
	}{
		{"HTTP", Rule{EndpointSelector: sel, Ingress: []IngressRule{{ToPorts: []PortRule{{
			Ports: []PortProtocol{{Port: 80, Protocol: nodeplane.ProtoTCP}},
			Rules: &L7Rules{HTTP: []HTTPRule{{Method: "GET"}}}}}}}}, "rules[0].ingress[0].toPorts[0].rules.http"},
		{"DNS", Rule{EndpointSelector: sel, Egress: []EgressRule{{ToPorts: []PortRule{{
			Ports: []PortProtocol{{Port: 53, Protocol: nodeplane.ProtoUDP}},
			Rules: &L7Rules{DNS: []DNSRule{{MatchPattern: "*"}}}}}}}}, "rules[0].egress[0].toPorts[0].rules.dns"},
		{"FQDN", Rule{EndpointSelector: sel, Egress: []EgressRule{{ToFQDNs: []FQDNSelector{{MatchName: "example.com"}}}}},
			"rules[0].egress[0].toFQDNs"},
		{"nodeSelector", Rule{NodeSelector: sel, Ingress: []IngressRule{{FromEntities: []Entity{EntityCluster}}}},
			"rules[0].nodeSelector"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := NewEngine(EngineConfig{Policy: Config{HostFirewall: true}})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			repo := e.Repository()
			_, err = e.AddPolicy(Policy{Kind: KindCiliumClusterwideNetworkPolicy, Name: "x", Rules: []Rule{tt.rule}})
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Fatalf("Add: %v, want ErrInvalidPolicy", err)
			}
			var found bool
			for _, ve := range ValidationErrors(err) {
				found = found || ve.Path == tt.path && strings.Contains(ve.Reason, "not supported yet")
			}
			if !found {
				t.Errorf("no \"not supported yet\" error at %s: %v", tt.path, err)
			}
			if repo.Revision() != 1 {
				t.Errorf("repository changed: revision %d", repo.Revision())
			}
		})
	}
}
