package policy_test

import (
	"fmt"
	"log"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

const examplePolicies = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: db
  namespace: prod
spec:
  endpointSelector:
    matchLabels: {app: db}
  ingress:
  - fromEndpoints:
    - matchLabels: {app: web}
    toPorts:
    - ports: [{port: "5432", protocol: TCP}]
`

func mustIdentity(id identity.ID, labels string) identity.Identity {
	ls, err := identity.ParseLabelList(labels)
	if err != nil {
		log.Fatal(err)
	}
	return identity.Identity{ID: id, Labels: ls}
}

// Parse policies, compile an endpoint's policy map and look packets up the
// way the datapath does.
func Example() {
	policies, err := policy.Parse([]byte(examplePolicies), "example.yaml")
	if err != nil {
		log.Fatal(err)
	}
	e, err := policy.NewEngine(policy.EngineConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close()
	for _, p := range policies {
		if _, err := e.AddPolicy(p); err != nil {
			log.Fatal(err)
		}
	}
	web := mustIdentity(70001, "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default")
	db := mustIdentity(70002, "k8s:app=db,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default")
	if err := e.UpdateIdentities([]identity.Identity{web, db}, nil); err != nil {
		log.Fatal(err)
	}

	pol := e.Repository().Compile(policy.Endpoint{Identity: db.ID, Labels: db.Labels})
	for _, k := range pol.State().Keys() {
		fmt.Println(k)
	}
	fmt.Println(pol.Lookup(web.ID, mapstate.Ingress, nodeplane.ProtoTCP, 5432).Allowed)
	fmt.Println(pol.Lookup(web.ID, mapstate.Ingress, nodeplane.ProtoTCP, 22).Reason)
	// Output:
	// {egress identity 0 any}
	// {ingress identity 70001 5432/proto 6}
	// true
	// POLICY_DENIED
}

// Trace explains a verdict.
func ExampleRepository_Trace() {
	policies, err := policy.Parse([]byte(examplePolicies), "example.yaml")
	if err != nil {
		log.Fatal(err)
	}
	e, err := policy.NewEngine(policy.EngineConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close()
	if _, err := e.AddPolicy(policies[0]); err != nil {
		log.Fatal(err)
	}
	web := mustIdentity(70001, "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default")
	db := mustIdentity(70002, "k8s:app=db,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default")
	if err := e.UpdateIdentities([]identity.Identity{web, db}, nil); err != nil {
		log.Fatal(err)
	}

	res, err := e.Repository().Trace(policy.TraceRequest{From: web, To: db, Protocol: nodeplane.ProtoTCP, Port: 22,
		Directions: policy.TraceIngressOnly})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(res)
	// Output:
	// Ingress of the destination (identity 70002: k8s:app=db,k8s:io.cilium.k8s.policy.cluster=default,k8s:io.kubernetes.pod.namespace=prod)
	//   source: identity 70001 (k8s:app=web,k8s:io.cilium.k8s.policy.cluster=default,k8s:io.kubernetes.pod.namespace=prod)
	//   policy: selected by 1 rule item(s), 1 of them enable default deny
	//     selects: CiliumNetworkPolicy prod/db spec.ingress[0]
	//   default deny: yes, because of CiliumNetworkPolicy prod/db spec.ingress[0]
	//   no rule allows it: denied by default deny
	//   near misses (allow items that select the endpoint, and what failed):
	//     CiliumNetworkPolicy prod/db spec.ingress[0]
	//       port: 22/TCP is not among 5432/TCP
	//   datapath: denied (133): no entry matches (2 map entries)
	//   ingress verdict: DENIED
	//
	// Final verdict: DENIED
}

// Validation errors name the document and the field.
func ExampleParse_errors() {
	_, err := policy.Parse([]byte(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: prod}
spec:
  endpointSelector: {}
  egress:
  - toEntities: [world, moon]
    toPorts: [{ports: [{port: "80", protocol: HTTP}]}]
`), "bad.yaml")
	for _, e := range policy.ValidationErrors(err) {
		fmt.Println(e)
	}
	// Output:
	// bad.yaml: document 1 (CiliumNetworkPolicy prod/bad), line 9: spec.egress[0].toPorts[0].ports[0].protocol: invalid protocol "HTTP", must be { tcp | udp | sctp | vrrp | igmp | gre | ipip | ipv6 | esp | ah | any }
	// bad.yaml: document 1 (CiliumNetworkPolicy prod/bad), line 8: spec.egress[0].toEntities[1]: unsupported entity: moon
}

// An Engine writes compiled policy into the datapath's policy maps and
// keeps them current with deltas.
func ExampleEngine() {
	e, err := policy.NewEngine(policy.EngineConfig{})
	if err != nil {
		log.Fatal(err)
	}
	defer e.Close()
	db := mustIdentity(70002, "k8s:app=db,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default")
	// The engine learns identities (typically from the allocator, with
	// WatchIdentities) before it manages the endpoints that have them.
	if err := e.UpdateIdentities([]identity.Identity{db}, nil); err != nil {
		log.Fatal(err)
	}
	if err := e.AddEndpoint(printEndpoint(db.ID)); err != nil {
		log.Fatal(err)
	}
	policies, _ := policy.Parse([]byte(examplePolicies), "example.yaml")
	if _, err := e.AddPolicy(policies[0]); err != nil {
		log.Fatal(err)
	}
	// A web pod's identity appears.
	web := mustIdentity(70001, "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default")
	if err := e.UpdateIdentities([]identity.Identity{web}, nil); err != nil {
		log.Fatal(err)
	}
	// Output:
	// apply: +{ingress identity 0 any} +{egress identity 0 any}
	// apply: -{ingress identity 0 any}
	// apply: +{ingress identity 70001 5432/proto 6}
}

// printEndpoint is an endpoint of that identity that prints the deltas an
// engine applies to its map; a *datapath.Endpoint would write them into
// the kernel.
type printEndpoint identity.ID

func (p printEndpoint) Identity() identity.ID { return identity.ID(p) }

func (printEndpoint) ApplyPolicy(upserts mapstate.State, deletes []mapstate.Key) error {
	fmt.Print("apply:")
	for _, k := range upserts.Keys() {
		fmt.Print(" +", k)
	}
	for _, k := range deletes {
		fmt.Print(" -", k)
	}
	fmt.Println()
	return nil
}
