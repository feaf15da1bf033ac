package policy

import (
	"fmt"
	"testing"

	"github.com/nodeplane/nodeplane"
)

// flowCase is one flow and the verdicts Cilium gives it: egress is the
// source's egress policy, ingress the destination's ingress policy.
type flowCase struct {
	from, to, port  string
	egress, ingress string
}

type ruleKindTest struct {
	name  string
	cfg   Config
	docs  []string
	flows []flowCase
}

func cnp(ns, name, spec string) string {
	return fmt.Sprintf("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n%s", name, ns, indent(spec))
}

func ccnp(name, spec string) string {
	return fmt.Sprintf("apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata:\n  name: %s\nspec:\n%s", name, indent(spec))
}

func knp(ns, name, spec string) string {
	return fmt.Sprintf("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n%s", name, ns, indent(spec))
}

func indent(s string) string {
	out := ""
	for _, line := range splitLines(s) {
		out += "  " + line + "\n"
	}
	return out
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	if start < len(s) {
		out = append(out, s[start:])
	}
	return out
}

func runRuleKindTests(t *testing.T, tests []ruleKindTest) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, tt.cfg, tt.docs...)
			for _, f := range tt.flows {
				eg, in := w.sides(f.from, f.to, f.port)
				if eg != f.egress || in != f.ingress {
					t.Errorf("%s -> %s %s: egress %s ingress %s, want egress %s ingress %s",
						f.from, f.to, f.port, eg, in, f.egress, f.ingress)
				}
			}
		})
	}
}

func TestEndpointRules(t *testing.T) {
	runRuleKindTests(t, []ruleKindTest{{
		name: "fromEndpoints is scoped to the policy's namespace",
		docs: []string{cnp("prod", "db", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: web}}]`)},
		flows: []flowCase{
			{webProd, dbProd, "5432", "allow", "allow"},
			// web in dev is not in the policy's namespace.
			{webDev, dbProd, "5432", "allow", "deny"},
			// The policy selects db in prod only: db in dev is open.
			{webProd, dbDev, "5432", "allow", "allow"},
		},
	}, {
		name: "peer selectors require the local cluster's name",
		docs: []string{cnp("prod", "db", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: web}}]`)},
		flows: []flowCase{
			// A web pod of another cluster, or one whose labels lack the
			// cluster label, is not selected: Cilium adds
			// io.cilium.k8s.policy.cluster=default to peer selectors.
			{"k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=other", dbProd, "80", "allow", "deny"},
			{"k8s:app=web,k8s:io.kubernetes.pod.namespace=prod", dbProd, "80", "allow", "deny"},
		},
	}, {
		name: "fromEndpoints [{}] is every pod of the namespace",
		docs: []string{cnp("prod", "same-ns", `
endpointSelector: {}
ingress:
- fromEndpoints: [{}]`)},
		flows: []flowCase{
			{webProd, dbProd, "80", "allow", "allow"},
			{apiProd, dbProd, "80/UDP", "allow", "allow"},
			{webDev, dbProd, "80", "allow", "deny"},
			{"reserved:host", dbProd, "80", "allow", "deny"},
		},
	}, {
		name: "a selector that names a namespace label is not rescoped",
		docs: []string{cnp("prod", "from-team-b", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints:
  - matchLabels: {k8s:io.cilium.k8s.namespace.labels.team: b}`)},
		flows: []flowCase{
			{webDev, dbProd, "80", "allow", "allow"},
			{webProd, dbProd, "80", "allow", "deny"},
		},
	}, {
		name: "a selector that names the namespace selects across namespaces",
		docs: []string{cnp("prod", "from-dev", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints:
  - matchLabels: {io.kubernetes.pod.namespace: dev, app: web}`)},
		flows: []flowCase{
			{webDev, dbProd, "80", "allow", "allow"},
			{webProd, dbProd, "80", "allow", "deny"},
		},
	}, {
		name: "fromEndpoints [] selects nothing but still denies by default",
		docs: []string{cnp("prod", "nothing", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: []
  toPorts: [{ports: [{port: "80"}]}]`)},
		flows: []flowCase{{webProd, dbProd, "80", "allow", "deny"}},
	}, {
		name: "matchExpressions",
		docs: []string{cnp("prod", "expr", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints:
  - matchExpressions:
    - {key: app, operator: In, values: [web, api]}
    - {key: io.cilium.k8s.namespace.labels.team, operator: DoesNotExist}`)},
		flows: []flowCase{
			{webProd, dbProd, "80", "allow", "allow"},
			// api has a team namespace label.
			{apiProd, dbProd, "80", "allow", "deny"},
		},
	}, {
		name: "source-qualified keys match only that source",
		docs: []string{cnp("prod", "src", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {container:app: web}}]`)},
		flows: []flowCase{{webProd, dbProd, "80", "allow", "deny"}},
	}, {
		name: "clusterwide peers need a namespace label, subjects span namespaces",
		docs: []string{ccnp("all-db", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{}]`)},
		flows: []flowCase{
			{webDev, dbProd, "80", "allow", "allow"},
			{webProd, dbDev, "80", "allow", "allow"},
			// Reserved identities have no namespace label.
			{"reserved:health", dbProd, "80", "allow", "deny"},
		},
	}, {
		name: "endpointSelector {} in a clusterwide policy selects reserved identities too",
		docs: []string{ccnp("deny-all-egress", `
endpointSelector: {}
egress:
- {}`)},
		flows: []flowCase{
			{"reserved:health", dbProd, "80", "deny", "allow"},
			{"reserved:world", dbProd, "80", "deny", "allow"},
			// The host is not subject to endpoint policy.
			{"reserved:host", dbProd, "80", "allow", "allow"},
		},
	}})
}

func TestEntityRules(t *testing.T) {
	entityPolicy := func(entities string) string {
		return cnp("prod", "e", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEntities: `+entities)
	}
	runRuleKindTests(t, []ruleKindTest{{
		name: "world covers reserved:world, world-ipv4/6 and CIDR identities",
		docs: []string{entityPolicy("[world]")},
		flows: []flowCase{
			{"reserved:world", dbProd, "80", "allow", "allow"},
			{"reserved:world-ipv4", dbProd, "80", "allow", "allow"},
			{"cidr 8.8.8.8", dbProd, "80", "allow", "allow"},
			{"cidr 2001:db8::1", dbProd, "80", "allow", "allow"},
			{webProd, dbProd, "80", "allow", "deny"},
			{"reserved:host", dbProd, "80", "allow", "deny"},
		},
	}, {
		name: "world-ipv4 is one family",
		docs: []string{entityPolicy("[world-ipv4]")},
		flows: []flowCase{
			{"cidr 8.8.8.8", dbProd, "80", "allow", "allow"},
			{"cidr 2001:db8::1", dbProd, "80", "allow", "deny"},
			// reserved:world is not world-ipv4.
			{"reserved:world", dbProd, "80", "allow", "deny"},
		},
	}, {
		name: "cluster covers the cluster's pods and reserved in-cluster identities",
		docs: []string{entityPolicy("[cluster]")},
		flows: []flowCase{
			{webDev, dbProd, "80", "allow", "allow"},
			{"reserved:host", dbProd, "80", "allow", "allow"},
			{"reserved:remote-node", dbProd, "80", "allow", "allow"},
			{"reserved:kube-apiserver,reserved:remote-node", dbProd, "80", "allow", "allow"},
			{"reserved:health", dbProd, "80", "allow", "allow"},
			// An init endpoint is itself default-deny in both directions.
			{"reserved:init", dbProd, "80", "deny", "allow"},
			{"reserved:ingress", dbProd, "80", "allow", "allow"},
			{"reserved:unmanaged", dbProd, "80", "allow", "allow"},
			{"reserved:world", dbProd, "80", "allow", "deny"},
			{"k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=other", dbProd, "80", "allow", "deny"},
		},
	}, {
		name: "remote-node includes the kube-apiserver",
		docs: []string{entityPolicy("[remote-node]")},
		flows: []flowCase{
			{"reserved:remote-node", dbProd, "80", "allow", "allow"},
			{"reserved:kube-apiserver,reserved:remote-node", dbProd, "80", "allow", "allow"},
			{"reserved:host", dbProd, "80", "allow", "deny"},
		},
	}, {
		name: "host, health, init, ingress, unmanaged, kube-apiserver",
		docs: []string{entityPolicy("[host, health, kube-apiserver]")},
		flows: []flowCase{
			{"reserved:host", dbProd, "80", "allow", "allow"},
			{"reserved:health", dbProd, "80", "allow", "allow"},
			{"reserved:kube-apiserver,reserved:remote-node", dbProd, "80", "allow", "allow"},
			{"reserved:remote-node", dbProd, "80", "allow", "deny"},
			{"reserved:ingress", dbProd, "80", "allow", "deny"},
		},
	}, {
		name: "all is every peer; none is no peer",
		docs: []string{entityPolicy("[all]"), cnp("prod", "none", `
endpointSelector: {matchLabels: {app: web}}
ingress:
- fromEntities: [none]`)},
		flows: []flowCase{
			{"reserved:world", dbProd, "80/UDP", "allow", "allow"},
			{webDev, dbProd, "8", "allow", "allow"},
			{dbProd, webProd, "80", "allow", "deny"},
		},
	}, {
		name: "single stack: one world identity",
		cfg:  Config{Stack: nodeplane.SingleStack},
		docs: []string{entityPolicy("[world-ipv4]"), cnp("dev", "w", `
endpointSelector: {}
egress:
- toCIDR: [0.0.0.0/0]`)},
		flows: []flowCase{
			{"cidr 8.8.8.8", dbProd, "80", "allow", "deny"},
			{webDev, "reserved:world", "80", "allow", "allow"},
		},
	}})
}

func TestCIDRRules(t *testing.T) {
	runRuleKindTests(t, []ruleKindTest{{
		name: "toCIDR selects prefixes inside it",
		docs: []string{cnp("prod", "c", `
endpointSelector: {matchLabels: {app: web}}
egress:
- toCIDR: [10.0.0.0/8, 192.168.1.1]`)},
		flows: []flowCase{
			{webProd, "cidr 10.1.2.3", "443", "allow", "allow"},
			{webProd, "cidr 10.1.0.0/16", "443", "allow", "allow"},
			{webProd, "cidr 192.168.1.1", "443", "allow", "allow"},
			{webProd, "cidr 192.168.1.2", "443", "deny", "allow"},
			// A prefix that contains the rule's is not inside it.
			{webProd, "cidr 10.0.0.0/7", "443", "deny", "allow"},
			// CIDR rules never select pods, even with in-range labels.
			{webProd, dbProd, "443", "deny", "allow"},
		},
	}, {
		name: "toCIDRSet except carves out sub-prefixes",
		docs: []string{cnp("prod", "c", `
endpointSelector: {matchLabels: {app: web}}
egress:
- toCIDRSet:
  - cidr: 10.0.0.0/8
    except: [10.96.0.0/12]`)},
		flows: []flowCase{
			{webProd, "cidr 10.1.2.3", "80", "allow", "allow"},
			{webProd, "cidr 10.96.1.1", "80", "deny", "allow"},
			{webProd, "cidr 10.96.0.0/12", "80", "deny", "allow"},
			// A prefix wider than the except is not "inside" it, so the
			// except does not remove it (Cilium's label semantics).
			{webProd, "cidr 10.96.0.0/11", "80", "allow", "allow"},
		},
	}, {
		name: "0.0.0.0/0 is world-ipv4 in a dual-stack cluster",
		docs: []string{cnp("prod", "c", `
endpointSelector: {matchLabels: {app: web}}
egress:
- toCIDR: [0.0.0.0/0]`)},
		flows: []flowCase{
			{webProd, "cidr 8.8.8.8", "80", "allow", "allow"},
			{webProd, "reserved:world-ipv4", "80", "allow", "allow"},
			{webProd, "reserved:world", "80", "deny", "allow"},
			{webProd, "cidr 2001:db8::1", "80", "deny", "allow"},
			{webProd, "reserved:host", "80", "deny", "allow"},
		},
	}, {
		name: "fromCIDR on ingress",
		docs: []string{cnp("prod", "c", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromCIDR: [203.0.113.0/24]
  toPorts: [{ports: [{port: "5432", protocol: TCP}]}]`)},
		flows: []flowCase{
			{"cidr 203.0.113.7", dbProd, "5432", "allow", "allow"},
			{"cidr 203.0.113.7", dbProd, "5433", "allow", "deny"},
			{"cidr 198.51.100.7", dbProd, "5432", "allow", "deny"},
		},
	}})
}

func TestPortRules(t *testing.T) {
	runRuleKindTests(t, []ruleKindTest{{
		name: "ports, ranges and protocols",
		docs: []string{cnp("prod", "p", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- toPorts:
  - ports:
    - {port: "80", protocol: TCP}
    - {port: "1000", endPort: 1999, protocol: UDP}
    - {port: "53", protocol: ANY}
    - {port: "0", protocol: SCTP}`)},
		flows: []flowCase{
			{webProd, dbProd, "80/TCP", "allow", "allow"},
			{webProd, dbProd, "80/UDP", "allow", "deny"},
			{webProd, dbProd, "1000/UDP", "allow", "allow"},
			{webProd, dbProd, "1500/UDP", "allow", "allow"},
			{webProd, dbProd, "1999/UDP", "allow", "allow"},
			{webProd, dbProd, "2000/UDP", "allow", "deny"},
			{webProd, dbProd, "999/UDP", "allow", "deny"},
			// ANY is TCP, UDP and SCTP, not ICMP.
			{webProd, dbProd, "53/TCP", "allow", "allow"},
			{webProd, dbProd, "53/SCTP", "allow", "allow"},
			{webProd, dbProd, "53/ICMP", "allow", "deny"},
			// Port 0 is every port of the protocol.
			{webProd, dbProd, "9999/SCTP", "allow", "allow"},
			// toPorts without peers allows every peer, in or out of the cluster.
			{"reserved:world", dbProd, "80", "allow", "allow"},
		},
	}, {
		name: "a protocol-less port rule is TCP, UDP and SCTP",
		docs: []string{cnp("prod", "p", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: web}}]
  toPorts: [{ports: [{port: "8080"}]}]`)},
		flows: []flowCase{
			{webProd, dbProd, "8080/UDP", "allow", "allow"},
			{webProd, dbProd, "8081/UDP", "allow", "deny"},
		},
	}, {
		name: "L3-only rules allow every protocol, ICMP included",
		docs: []string{cnp("prod", "p", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: web}}]`)},
		flows: []flowCase{
			{webProd, dbProd, "8/ICMP", "allow", "allow"},
			{webProd, dbProd, "65535/UDP", "allow", "allow"},
		},
	}, {
		name: "ICMP types",
		docs: []string{cnp("prod", "p", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- icmps:
  - fields:
    - {type: 8}
    - {family: IPv6, type: EchoRequest}`)},
		flows: []flowCase{
			{webProd, dbProd, "8/ICMP", "allow", "allow"},
			{webProd, dbProd, "0/ICMP", "allow", "deny"},
			{webProd, dbProd, "128/ICMPv6", "allow", "allow"},
			{webProd, dbProd, "8/ICMPv6", "allow", "deny"},
			{webProd, dbProd, "8/TCP", "allow", "deny"},
		},
	}, {
		name: "toPorts [{}] allows nothing",
		docs: []string{cnp("prod", "p", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{}]
  toPorts: [{}]`)},
		flows: []flowCase{{webProd, dbProd, "80", "allow", "deny"}},
	}, {
		name: "named ports without a definition select no port",
		docs: []string{cnp("prod", "p", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- toPorts: [{ports: [{port: http, protocol: TCP}]}]`)},
		flows: []flowCase{{webProd, dbProd, "80", "allow", "deny"}},
	}})
}

func TestDenyRules(t *testing.T) {
	runRuleKindTests(t, []ruleKindTest{{
		name: "deny wins over allow",
		docs: []string{cnp("prod", "p", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEntities: [all]
ingressDeny:
- fromEndpoints: [{matchLabels: {app: web}}]
  toPorts: [{ports: [{port: "22", protocol: TCP}]}]`)},
		flows: []flowCase{
			{webProd, dbProd, "22", "allow", "deny"},
			{webProd, dbProd, "80", "allow", "allow"},
			{apiProd, dbProd, "22", "allow", "allow"},
		},
	}, {
		name: "a deny range beats a narrower allow of the same peer",
		docs: []string{cnp("prod", "p", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: web}}]
  toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
ingressDeny:
- fromEndpoints: [{matchLabels: {app: web}}]
  toPorts: [{ports: [{port: "8000", endPort: 8999, protocol: TCP}]}]`)},
		flows: []flowCase{
			{webProd, dbProd, "8080", "allow", "deny"},
			{webProd, dbProd, "9000", "allow", "deny"},
		},
	}, {
		name: "a wildcard L4 deny beats a peer allow",
		docs: []string{cnp("prod", "p", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: web}}]
ingressDeny:
- toPorts: [{ports: [{port: "443", protocol: TCP}]}]`)},
		flows: []flowCase{
			{webProd, dbProd, "443", "allow", "deny"},
			{webProd, dbProd, "444", "allow", "allow"},
		},
	}, {
		name: "deny-only policies still make the direction default-deny",
		docs: []string{cnp("prod", "p", `
endpointSelector: {matchLabels: {app: db}}
egressDeny:
- toEntities: [world]`)},
		flows: []flowCase{
			{dbProd, "cidr 8.8.8.8", "443", "deny", "allow"},
			{dbProd, webProd, "443", "deny", "allow"},
		},
	}, {
		name: "enableDefaultDeny false: only denies bite",
		docs: []string{cnp("prod", "p", `
endpointSelector: {matchLabels: {app: db}}
enableDefaultDeny: {egress: false}
egressDeny:
- toEntities: [world]`)},
		flows: []flowCase{
			{dbProd, "cidr 8.8.8.8", "443", "deny", "allow"},
			{dbProd, webProd, "443", "allow", "allow"},
		},
	}, {
		name: "one default-deny rule is enough",
		docs: []string{
			cnp("prod", "open", "endpointSelector: {}\nenableDefaultDeny: {ingress: false}\ningress:\n- fromEntities: [world]"),
			cnp("prod", "strict", "endpointSelector: {matchLabels: {app: db}}\ningress:\n- fromEndpoints: [{matchLabels: {app: web}}]"),
		},
		flows: []flowCase{
			{apiProd, dbProd, "80", "allow", "deny"},
			{apiProd, webProd, "80", "allow", "allow"},
			{"reserved:world", dbProd, "80", "allow", "allow"},
		},
	}, {
		name: "ingress [{}] denies all, egress untouched",
		docs: []string{cnp("prod", "deny-all", "endpointSelector: {}\ningress:\n- {}")},
		flows: []flowCase{
			{webProd, dbProd, "80", "allow", "deny"},
			{dbProd, "cidr 8.8.8.8", "80", "allow", "allow"},
		},
	}, {
		name: "endpoints with an init label are always default-deny",
		docs: []string{cnp("prod", "p", "endpointSelector: {matchLabels: {app: web}}\negress:\n- toEndpoints: [{}]")},
		flows: []flowCase{
			{"reserved:init", dbProd, "80", "deny", "allow"},
			{dbProd, "reserved:init", "80", "allow", "deny"},
		},
	}, {
		name: "enforcement mode always",
		cfg:  Config{Enforcement: EnforcementAlways},
		flows: []flowCase{
			{webProd, dbProd, "80", "deny", "deny"},
		},
	}, {
		name: "enforcement mode never",
		cfg:  Config{Enforcement: EnforcementNever},
		docs: []string{cnp("prod", "deny-all", "endpointSelector: {}\ningress:\n- {}")},
		flows: []flowCase{
			{webProd, dbProd, "80", "allow", "allow"},
		},
	}})
}

func TestNetworkPolicyRules(t *testing.T) {
	runRuleKindTests(t, []ruleKindTest{{
		name: "default deny ingress",
		docs: []string{knp("prod", "deny", "podSelector: {}\npolicyTypes: [Ingress]")},
		flows: []flowCase{
			{webProd, dbProd, "80", "allow", "deny"},
			{dbProd, "cidr 8.8.8.8", "80", "allow", "allow"},
		},
	}, {
		name:  "no policyTypes means Ingress",
		docs:  []string{knp("prod", "deny", "podSelector: {}")},
		flows: []flowCase{{webProd, dbProd, "80", "allow", "deny"}},
	}, {
		name: "egress rules without policyTypes still enforce ingress",
		docs: []string{knp("prod", "eg", "podSelector: {matchLabels: {app: web}}\negress:\n- to: [{podSelector: {}}]")},
		flows: []flowCase{
			{webProd, dbProd, "80", "allow", "allow"},
			{dbProd, webProd, "80", "allow", "deny"},
			{webProd, "cidr 8.8.8.8", "80", "deny", "allow"},
		},
	}, {
		name:  "ingress [{}] allows all (unlike a CiliumNetworkPolicy)",
		docs:  []string{knp("prod", "all", "podSelector: {}\ningress:\n- {}")},
		flows: []flowCase{{"reserved:world", dbProd, "80", "allow", "allow"}},
	}, {
		name: "podSelector AND namespaceSelector",
		docs: []string{knp("prod", "and", `
podSelector: {matchLabels: {app: db}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {team: b}}
    podSelector: {matchLabels: {app: web}}`)},
		flows: []flowCase{
			{webDev, dbProd, "80", "allow", "allow"},
			{dbDev, dbProd, "80", "allow", "deny"},
			{webProd, dbProd, "80", "allow", "deny"},
		},
	}, {
		name: "podSelector OR namespaceSelector",
		docs: []string{knp("prod", "or", `
podSelector: {matchLabels: {app: db}}
ingress:
- from:
  - namespaceSelector: {matchLabels: {team: b}}
  - podSelector: {matchLabels: {app: web}}`)},
		flows: []flowCase{
			{dbDev, dbProd, "80", "allow", "allow"},
			{webProd, dbProd, "80", "allow", "allow"},
			{apiProd, dbProd, "80", "allow", "deny"},
		},
	}, {
		name: "empty namespaceSelector is every namespace",
		docs: []string{knp("prod", "ns", `
podSelector: {matchLabels: {app: db}}
ingress:
- from: [{namespaceSelector: {}}]`)},
		flows: []flowCase{
			{webDev, dbProd, "80", "allow", "allow"},
			{"reserved:host", dbProd, "80", "allow", "deny"},
		},
	}, {
		name: "ipBlock with except, ports with endPort and default TCP",
		docs: []string{knp("prod", "eg", `
podSelector: {matchLabels: {app: web}}
policyTypes: [Egress]
egress:
- to:
  - ipBlock: {cidr: 10.0.0.0/8, except: [10.96.0.0/12]}
  ports:
  - port: 8000
    endPort: 8100`)},
		flows: []flowCase{
			{webProd, "cidr 10.1.1.1", "8050", "allow", "allow"},
			{webProd, "cidr 10.1.1.1", "8050/UDP", "deny", "allow"},
			{webProd, "cidr 10.1.1.1", "8101", "deny", "allow"},
			{webProd, "cidr 10.96.0.1", "8050", "deny", "allow"},
			// policyTypes [Egress] leaves ingress open.
			{dbProd, webProd, "80", "allow", "allow"},
		},
	}})
}
