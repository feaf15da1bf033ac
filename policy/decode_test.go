package policy

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
)

func TestParseDocuments(t *testing.T) {
	data := `
# A multi-document file as kubectl users have them.
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web
  namespace: prod
  labels: {team: a}
  annotations: {note: ignored}
spec:
  endpointSelector:
    matchLabels: {app: web}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: lb}
    toPorts:
    - ports: [{port: "443", protocol: TCP}, {port: "8000", endPort: 8010}]
  egressDeny:
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
specs:
- endpointSelector: {}
  egress:
  - toEntities: [world]
    icmps: [{fields: [{type: EchoRequest}, {family: IPv6, type: 128}]}]
status: {}
---
---
{"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
 "metadata": {"name": "cw", "namespace": "ignored"},
 "spec": {"endpointSelector": {}, "enableDefaultDeny": {"ingress": false}, "ingress": [{"fromEntities": ["cluster"]}]}}
---
apiVersion: v1
kind: List
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: np}
  spec:
    podSelector: {}
    policyTypes: [Ingress, Egress]
    ingress:
    - from:
      - podSelector: {matchLabels: {app: web}}
      - ipBlock: {cidr: 192.168.0.0/16}
      ports: [{port: http}, {protocol: UDP, port: 53}]
`
	ps, err := Parse([]byte(data), "policies.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 3 {
		t.Fatalf("got %d policies, want 3", len(ps))
	}
	web, cw, np := ps[0], ps[1], ps[2]

	if web.ID() != (PolicyID{KindCiliumNetworkPolicy, "prod", "web"}) || len(web.Rules) != 2 {
		t.Fatalf("web: %v with %d rules", web.ID(), len(web.Rules))
	}
	in := web.Rules[0].Ingress[0]
	if got := in.ToPorts[0].Ports; len(got) != 2 ||
		got[0] != (PortProtocol{Port: 443, Protocol: nodeplane.ProtoTCP}) ||
		got[1] != (PortProtocol{Port: 8000, EndPort: 8010, Protocol: nodeplane.ProtoAny}) {
		t.Errorf("web ports: %+v", got)
	}
	if in.Origin != "spec.ingress[0]" {
		t.Errorf("origin %q", in.Origin)
	}
	deny := web.Rules[0].EgressDeny[0].ToCIDRSet[0]
	if deny.CIDR != netip.MustParsePrefix("10.0.0.0/8") || deny.Except[0] != netip.MustParsePrefix("10.1.0.0/16") {
		t.Errorf("cidr set: %+v", deny)
	}
	icmp := web.Rules[1].Egress[0].ICMPs[0].Fields
	if icmp[0] != (ICMPField{Type: 8}) || icmp[1] != (ICMPField{IPv6: true, Type: 128}) {
		t.Errorf("icmp: %+v", icmp)
	}
	if web.Source != "policies.yaml, document 1" {
		t.Errorf("source %q", web.Source)
	}

	if cw.ID() != (PolicyID{KindCiliumClusterwideNetworkPolicy, "", "cw"}) {
		t.Errorf("cw: %v", cw.ID())
	}
	if dd := cw.Rules[0].EnableDefaultDeny.Ingress; dd == nil || *dd {
		t.Errorf("cw enableDefaultDeny: %v", dd)
	}

	// The NetworkPolicy defaults to namespace "default"; each peer is one
	// item with the rule's ports; Egress without rules denies all egress.
	if np.ID() != (PolicyID{KindNetworkPolicy, "default", "np"}) {
		t.Errorf("np: %v", np.ID())
	}
	r := np.Rules[0]
	if len(r.Ingress) != 2 || len(r.Egress) != 1 {
		t.Fatalf("np items: %d ingress %d egress", len(r.Ingress), len(r.Egress))
	}
	if r.Ingress[0].FromEndpoints[0].MatchLabels["k8s:io.kubernetes.pod.namespace"] != "default" ||
		r.Ingress[0].FromEndpoints[0].MatchLabels["k8s:app"] != "web" {
		t.Errorf("np peer 0: %+v", r.Ingress[0].FromEndpoints)
	}
	if r.Ingress[1].FromCIDRSet[0].CIDR != netip.MustParsePrefix("192.168.0.0/16") {
		t.Errorf("np peer 1: %+v", r.Ingress[1])
	}
	if p := r.Ingress[1].ToPorts; len(p) != 2 || p[0].Ports[0] != (PortProtocol{Name: "http", Protocol: nodeplane.ProtoTCP}) ||
		p[1].Ports[0] != (PortProtocol{Port: 53, Protocol: nodeplane.ProtoUDP}) {
		t.Errorf("np ports: %+v", p)
	}
	if e := r.Egress[0].ToEndpoints; e == nil || len(e) != 0 {
		t.Errorf("np egress: %+v, want an item selecting no peer", r.Egress[0])
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, doc string
		// want are substrings that must each appear in one error.
		want []string
	}{
		{"syntax", "kind: [", []string{"document 1", "not valid YAML or JSON"}},
		{"missing kind", "apiVersion: cilium.io/v2\nmetadata: {name: x}", []string{"kind: missing"}},
		{"unknown kind", "apiVersion: v1\nkind: Pod\nmetadata: {name: x}", []string{`unsupported kind "Pod"`}},
		{"wrong apiVersion", "apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {endpointSelector: {}, ingress: [{}]}",
			[]string{`apiVersion: "cilium.io/v1" cannot hold`}},
		{"no name", cnp("prod", "", "endpointSelector: {}\ningress: [{}]"), []string{"metadata.name: a CiliumNetworkPolicy must have a name"}},
		{"no spec", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}", []string{"needs spec or specs"}},
		{"unknown field", cnp("prod", "x", "endpointSelector: {}\ningress:\n- fromEndpoint: [{}]"),
			[]string{"document 1 (CiliumNetworkPolicy prod/x), line 9: spec.ingress[0].fromEndpoint: unknown field"}},
		{"no direction", cnp("prod", "x", "endpointSelector: {}"), []string{"spec: rule must have at least one of"}},
		{"no selector", cnp("prod", "x", "ingress: [{}]"), []string{"spec: rule must have one of endpointSelector or nodeSelector"}},
		{"bad entity", cnp("prod", "x", "endpointSelector: {}\negress:\n- toEntities: [world, moon]"),
			[]string{"spec.egress[0].toEntities[1]: unsupported entity: moon"}},
		{"bad CIDR", cnp("prod", "x", "endpointSelector: {}\negress:\n- toCIDR: [10.0.0.0/33]"),
			[]string{"spec.egress[0].toCIDR[0]: unable to parse CIDR"}},
		{"except outside", cnp("prod", "x", "endpointSelector: {}\negress:\n- toCIDRSet: [{cidr: 10.0.0.0/16, except: [10.2.0.0/24]}]"),
			[]string{"spec.egress[0].toCIDRSet[0].except[0]: allow CIDR prefix 10.0.0.0/16 does not contain exclude CIDR prefix 10.2.0.0/24"}},
		{"bad port", cnp("prod", "x", "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"99999\"}]}]"),
			[]string{"spec.ingress[0].toPorts[0].ports[0].port: unable to parse port"}},
		{"missing port", cnp("prod", "x", "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{protocol: TCP}]}]"),
			[]string{"spec.ingress[0].toPorts[0].ports[0].port: port must be specified"}},
		{"ICMP in toPorts", cnp("prod", "x", "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"8\", protocol: ICMP}]}]"),
			[]string{"ports[0].protocol: invalid protocol \"ICMP\""}},
		{"combined peers", cnp("prod", "x", "endpointSelector: {}\ningress:\n- fromEndpoints: [{}]\n  fromEntities: [world]"),
			[]string{"spec.ingress[0]: combining fromEndpoints and fromEntities is not supported yet"}},
		{"bad selector", cnp("prod", "x", "endpointSelector: {matchExpressions: [{key: app, operator: Has}]}\ningress: [{}]"),
			[]string{"spec.endpointSelector.matchExpressions[0].operator"}},
		{"second spec", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: a}\nspecs:\n- endpointSelector: {}\n  ingress: [{}]\n- endpointSelector: {}\n  ingress: [{fromEntities: [bad]}]",
			[]string{"specs[1].ingress[0].fromEntities[0]: unsupported entity"}},
		{"HTTP needs TCP", cnp("prod", "x", "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: \"80\"}], rules: {http: [{method: GET}]}}]"),
			[]string{"L7 rules can only apply to TCP (not ANY)"}},
		{"unsupported toServices", cnp("prod", "x", "endpointSelector: {}\negress:\n- toServices: [{k8sService: {serviceName: a}}]"),
			[]string{"spec.egress[0].toServices: toServices (service selection) is not supported"}},
		{"deny with L7", cnp("prod", "x", "endpointSelector: {}\ningressDeny:\n- toPorts: [{ports: [{port: \"80\"}], rules: {http: [{}]}}]"),
			[]string{"spec.ingressDeny[0].toPorts[0].rules: unknown field"}},
		{"authentication without mode", cnp("prod", "x", "endpointSelector: {}\ningress:\n- fromEndpoints: [{}]\n  authentication: {}"),
			[]string{"spec.ingress[0].authentication.mode: mode must be specified"}},
		{"nodeSelector in CNP", cnp("prod", "x", "nodeSelector: {}\ningress: [{}]"), []string{"only a CiliumClusterwideNetworkPolicy may select nodes"}},
		{"KNP bad port", knp("prod", "x", "podSelector: {}\ningress:\n- ports: [{port: 0}]"), []string{"spec.ingress[0].ports[0].port: must be between 1 and 65535"}},
		{"KNP endPort below port", knp("prod", "x", "podSelector: {}\ningress:\n- ports: [{port: 90, endPort: 80}]"),
			[]string{"spec.ingress[0].ports[0].endPort: must be greater than or equal to `port`"}},
		{"KNP except not inside", knp("prod", "x", "podSelector: {}\negress:\n- to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]"),
			[]string{"spec.egress[0].to[0].ipBlock.except[0]: must be a strict subset"}},
		{"KNP ipBlock and podSelector", knp("prod", "x", "podSelector: {}\negress:\n- to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]"),
			[]string{"spec.egress[0].to[0]: may not specify both ipBlock and another peer"}},
		{"KNP protocol", knp("prod", "x", "podSelector: {}\ningress:\n- ports: [{protocol: ICMP}]"), []string{`unsupported value "ICMP"`}},
		{"KNP source in key", knp("prod", "x", "podSelector: {matchLabels: {\"k8s:app\": web}}"), []string{"a Kubernetes label key cannot contain ':'"}},
		{"KNP policyTypes", knp("prod", "x", "podSelector: {}\npolicyTypes: [Both]"), []string{`spec.policyTypes[0]: unsupported value "Both"`}},
		{"unquoted port", cnp("prod", "x", "endpointSelector: {}\ningress:\n- toPorts: [{ports: [{port: 80}]}]"),
			[]string{"spec.ingress[0].toPorts[0].ports[0].port: must be a string, not a number"}},
		{"wrong type", cnp("prod", "x", "endpointSelector: {matchLabels: {app: [web]}}\ningress: [{}]"),
			[]string{"spec.endpointSelector.matchLabels[app]: must be a string, not a list"}},
		{"ICMP type name", cnp("prod", "x", "endpointSelector: {}\ningress:\n- icmps: [{fields: [{type: PacketTooBig}]}]"),
			[]string{"ICMP type PacketTooBig not found in IPv4"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps, err := Parse([]byte(tt.doc), "in.yaml")
			if err == nil {
				t.Fatalf("no error; parsed %d policies", len(ps))
			}
			if ps != nil {
				t.Errorf("policies returned with an error")
			}
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Errorf("error does not wrap ErrInvalidPolicy: %v", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nlacks %q", err, w)
				}
			}
			for _, ve := range ValidationErrors(err) {
				if ve.Source != "in.yaml" || ve.Document != 1 {
					t.Errorf("error without source and document: %+v", ve)
				}
			}
		})
	}
}

// Every document of every file is validated, and every problem reported.
func TestParseFilesReportsAll(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", cnp("prod", "ok", "endpointSelector: {}\ningress: [{}]")+"---\n"+cnp("prod", "bad", "endpointSelector: {}\ningress:\n- fromEntities: [x]"))
	write("b.json", `{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "n"}, "spec": {"podSelector": {}, "egress": [{"ports": [{"port": 70000}]}]}}`)
	write("c.txt", "not a policy")
	_, err := ParseFiles(dir)
	ves := ValidationErrors(err)
	if len(ves) != 2 {
		t.Fatalf("got %d errors, want 2: %v", len(ves), err)
	}
	if !strings.Contains(ves[0].Error(), "a.yaml: document 2 (CiliumNetworkPolicy prod/bad)") ||
		!strings.Contains(ves[1].Error(), "b.json: document 1 (NetworkPolicy default/n)") ||
		ves[1].Path != "spec.egress[0].ports[0].port" {
		t.Errorf("errors: %v", err)
	}

	ps, err := ParseFiles(filepath.Join(dir, "a.yaml"))
	if err == nil || ps != nil {
		t.Errorf("file with one bad document: %v, %d policies", err, len(ps))
	}
}

// Policies built in Go are validated by the repository the same way.
func TestRepositoryValidates(t *testing.T) {
	repo, err := newRepository(Config{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = repo.add(Policy{Kind: KindCiliumNetworkPolicy, Namespace: "prod", Name: "x", Rules: []Rule{{
		EndpointSelector: &identity.LabelSelector{},
		Ingress:          []IngressRule{{FromEntities: []Entity{"moon"}}},
	}}})
	var ve *ValidationError
	if !errors.As(err, &ve) || ve.Path != "rules[0].ingress[0].fromEntities[0]" {
		t.Fatalf("got %v", err)
	}
	if repo.Revision() != 1 || len(repo.Policies()) != 0 {
		t.Errorf("repository changed by a failed Add")
	}
}
