package policy

import (
	"testing"
)

// TestNearMisses checks the explanation of a packet no rule allows: for
// each allow item that selects the endpoint, the parts that failed, down
// to the label requirement.
func TestNearMisses(t *testing.T) {
	const (
		noCluster = "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod"
		farWeb    = "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=far"
	)
	dbFromWeb := cnp("prod", "db", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: web}}]
  toPorts: [{ports: [{port: "5432", protocol: TCP}]}]`)
	type want struct {
		rule   string // RuleRef.Path
		misses []Miss // Selector is only checked to be set for peer parts
	}
	tests := []struct {
		name     string
		docs     []string
		from, to string
		port     string
		egress   bool
		want     []want
	}{{
		name: "a peer without the cluster label Cilium adds to selectors",
		docs: []string{dbFromWeb}, from: noCluster, to: dbProd, port: "5432",
		want: []want{{"spec.ingress[0]", []Miss{{Part: MissPeer, Requirement: "k8s:io.cilium.k8s.policy.cluster=default",
			Detail: "requires k8s:io.cilium.k8s.policy.cluster=default (Cilium adds the local cluster to peer selectors that name no cluster); the peer has no io.cilium.k8s.policy.cluster label"}}}},
	}, {
		name: "a peer of another cluster",
		docs: []string{dbFromWeb}, from: farWeb, to: dbProd, port: "5432",
		want: []want{{"spec.ingress[0]", []Miss{{Part: MissPeer, Requirement: "k8s:io.cilium.k8s.policy.cluster=default",
			Detail: "requires k8s:io.cilium.k8s.policy.cluster=default (Cilium adds the local cluster to peer selectors that name no cluster); the peer has k8s:io.cilium.k8s.policy.cluster=far"}}}},
	}, {
		name: "a peer of another namespace",
		docs: []string{dbFromWeb}, from: webDev, to: dbProd, port: "5432",
		want: []want{{"spec.ingress[0]", []Miss{{Part: MissPeer, Requirement: "k8s:io.kubernetes.pod.namespace=prod",
			Detail: "requires k8s:io.kubernetes.pod.namespace=prod (Cilium limits the peers of a namespaced policy to its namespace unless the selector names a namespace); the peer has k8s:io.kubernetes.pod.namespace=dev"}}}},
	}, {
		name: "a peer label the user wrote",
		docs: []string{dbFromWeb}, from: apiProd, to: dbProd, port: "5432",
		want: []want{{"spec.ingress[0]", []Miss{{Part: MissPeer, Requirement: "any:app=web",
			Detail: "requires any:app=web; the peer has k8s:app=api"}}}},
	}, {
		name: "the port",
		docs: []string{dbFromWeb}, from: webProd, to: dbProd, port: "5433",
		want: []want{{"spec.ingress[0]", []Miss{{Part: MissPort, Detail: "5433/TCP is not among 5432/TCP"}}}},
	}, {
		name: "the protocol",
		docs: []string{dbFromWeb}, from: webProd, to: dbProd, port: "5432/UDP",
		want: []want{{"spec.ingress[0]", []Miss{{Part: MissProtocol, Detail: "5432/UDP: no port entry is for UDP (the item has 5432/TCP)"}}}},
	}, {
		name: "peer and port both",
		docs: []string{dbFromWeb}, from: apiProd, to: dbProd, port: "22",
		want: []want{{"spec.ingress[0]", []Miss{
			{Part: MissPeer, Requirement: "any:app=web", Detail: "requires any:app=web; the peer has k8s:app=api"},
			{Part: MissPort, Detail: "22/TCP is not among 5432/TCP"}}}},
	}, {
		name: "ANY is TCP, UDP and SCTP; ICMP is another protocol",
		docs: []string{cnp("prod", "db", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- toPorts: [{ports: [{port: "53", protocol: ANY}]}]`)},
		from: webProd, to: dbProd, port: "8/ICMP",
		want: []want{{"spec.ingress[0]", []Miss{{Part: MissProtocol,
			Detail: "type 8/ICMP: no port entry is for ICMP (the item has 53/TCP, 53/UDP, 53/SCTP)"}}}},
	}, {
		name: "a CIDR except",
		docs: []string{cnp("prod", "web", `
endpointSelector: {matchLabels: {app: web}}
egress:
- toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12]}]`)},
		from: webProd, to: "cidr 10.96.0.10", port: "53/UDP", egress: true,
		want: []want{{"spec.egress[0]", []Miss{{Part: MissCIDRExcept, Requirement: "!cidr:10.96.0.0/12",
			Detail: "the peer is in 10.96.0.0/12, an except of 10.0.0.0/8"}}}},
	}, {
		name: "an address outside the CIDR",
		docs: []string{cnp("prod", "web", `
endpointSelector: {matchLabels: {app: web}}
egress:
- toCIDR: [10.0.0.0/8]`)},
		from: webProd, to: "cidr 192.168.1.1", port: "443", egress: true,
		want: []want{{"spec.egress[0]", []Miss{{Part: MissPeer, Requirement: "cidr:10.0.0.0/8",
			Detail: "the peer is not in 10.0.0.0/8"}}}},
	}, {
		name: "a pod for a CIDR rule",
		docs: []string{cnp("prod", "web", `
endpointSelector: {matchLabels: {app: web}}
egress:
- toCIDR: [10.0.0.0/8]`)},
		from: webProd, to: dbProd, port: "443", egress: true,
		want: []want{{"spec.egress[0]", []Miss{{Part: MissPeer,
			Detail: "CIDR rules select only peers outside the cluster, and the peer has no reserved:world label"}}}},
	}, {
		name: "an empty peer list, an item without ports and a named port the endpoint lacks",
		docs: []string{cnp("prod", "db", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: []
- toPorts: [{}]
- toPorts: [{ports: [{port: http, protocol: TCP}]}]`)},
		from: webProd, to: dbProd, port: "80",
		want: []want{
			{"spec.ingress[0]", []Miss{{Part: MissPeer, Detail: "its peer list is given but empty: it selects no peer"}}},
			{"spec.ingress[1]", []Miss{{Part: MissPort, Detail: "its toPorts list no port: it allows nothing"}}},
			{"spec.ingress[2]", []Miss{{Part: MissPort, Detail: "80/TCP is not among http/TCP (the endpoint defines no named port http)"}}},
		},
	}, {
		name: "a clusterwide peer selector requires a namespace",
		docs: []string{ccnp("db", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: web}}]`)},
		from: "reserved:host", to: dbProd, port: "80",
		want: []want{{"spec.ingress[0]", []Miss{
			{Part: MissPeer, Requirement: "any:app=web", Detail: "requires any:app=web; the peer has no app label"},
			{Part: MissPeer, Requirement: "k8s:io.cilium.k8s.policy.cluster=default",
				Detail: "requires k8s:io.cilium.k8s.policy.cluster=default (Cilium adds the local cluster to peer selectors that name no cluster); the peer has no io.cilium.k8s.policy.cluster label"},
			{Part: MissPeer, Requirement: "k8s:io.kubernetes.pod.namespace",
				Detail: "requires k8s:io.kubernetes.pod.namespace (Cilium limits the peers of a clusterwide policy to endpoints with a namespace); the peer has no io.kubernetes.pod.namespace label"},
		}}},
	}, {
		name: "an item with neither peers nor ports",
		docs: []string{cnp("prod", "db", `
endpointSelector: {matchLabels: {app: db}}
ingress: [{}]`)},
		from: webProd, to: dbProd, port: "80",
		want: []want{{"spec.ingress[0]", []Miss{{Part: MissPeer,
			Detail: "it has neither peers nor ports: it allows nothing and only makes the direction default-deny"}}}},
	}, {
		name: "none for a packet a deny rule denies",
		docs: []string{cnp("prod", "db", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: api}}]
ingressDeny:
- fromEndpoints: [{matchLabels: {app: web}}]`)},
		from: webProd, to: dbProd, port: "80",
	}, {
		name: "none for an allowed packet",
		docs: []string{dbFromWeb}, from: webProd, to: dbProd, port: "5432",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newWorld(t, Config{}, tt.docs...)
			from, to := w.ident(tt.from), w.ident(tt.to)
			pn, proto := parseTestPort(t, tt.port)
			dirs := TraceIngressOnly
			if tt.egress {
				dirs = TraceEgressOnly
			}
			res, err := w.repo.Trace(TraceRequest{From: from, To: to, Protocol: proto, Port: pn, Directions: dirs})
			if err != nil {
				t.Fatal(err)
			}
			side := res.Ingress
			if tt.egress {
				side = res.Egress
			}
			got := side.NearMisses
			if len(got) != len(tt.want) {
				t.Fatalf("%d near misses, want %d:\n%+v\n%s", len(got), len(tt.want), got, res)
			}
			for i, nm := range got {
				wn := tt.want[i]
				if nm.Rule.Path != wn.rule {
					t.Errorf("near miss %d: rule %s, want %s", i, nm.Rule, wn.rule)
				}
				if len(nm.Misses) != len(wn.misses) {
					t.Errorf("near miss %d: misses\n%+v\nwant\n%+v", i, nm.Misses, wn.misses)
					continue
				}
				for j, m := range nm.Misses {
					wm := wn.misses[j]
					if (m.Part == MissPort || m.Part == MissProtocol) && m.Selector != "" ||
						m.Requirement != "" && m.Selector == "" {
						t.Errorf("miss %d.%d: selector %q for part %s", i, j, m.Selector, m.Part)
					}
					m.Selector = ""
					if m != wm {
						t.Errorf("miss %d.%d:\n got {%s %q %q}\nwant {%s %q %q}", i, j,
							m.Part, m.Requirement, m.Detail, wm.Part, wm.Requirement, wm.Detail)
					}
				}
			}
		})
	}
}
