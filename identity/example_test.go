package identity_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
)

func ExampleParseLabelList() {
	// The labels Cilium gives a pod, source prefix included.
	ls, err := identity.ParseLabelList("k8s:io.kubernetes.pod.namespace=prod,k8s:app=web,k8s:io.cilium.k8s.policy.cluster=default")
	if err != nil {
		panic(err)
	}
	fmt.Println(ls)
	fmt.Println(ls.Key())
	// Output:
	// k8s:app=web,k8s:io.cilium.k8s.policy.cluster=default,k8s:io.kubernetes.pod.namespace=prod
	// k8s:app=web;k8s:io.cilium.k8s.policy.cluster=default;k8s:io.kubernetes.pod.namespace=prod;
}

func ExampleParseLabel() {
	for _, s := range []string{"k8s:app=web", "app=web", "$host", "k8s:", "any:app=web"} {
		l, err := identity.ParseLabel(s)
		if err != nil {
			fmt.Println(err)
			continue
		}
		fmt.Printf("source=%s key=%s value=%q\n", l.Source, l.Key, l.Value)
	}
	// Output:
	// source=k8s key=app value="web"
	// source=unspec key=app value="web"
	// source=reserved key=host value=""
	// invalid label "k8s:": empty key
	// invalid label "any:app=web": source "any" only selects; a label needs a real source
}

func ExampleNewSelector() {
	// A selector as a policy file writes it. Keys without a source select
	// labels from every source.
	var spec identity.LabelSelector
	err := json.Unmarshal([]byte(`{
		"matchLabels": {"app": "web"},
		"matchExpressions": [
			{"key": "k8s:io.kubernetes.pod.namespace", "operator": "In", "values": ["prod", "staging"]},
			{"key": "debug", "operator": "DoesNotExist"}
		]}`), &spec)
	if err != nil {
		panic(err)
	}
	sel, err := identity.NewSelector(spec)
	if err != nil {
		panic(err)
	}
	fmt.Println(sel)

	for _, list := range []string{
		"k8s:app=web,k8s:io.kubernetes.pod.namespace=prod",
		"container:app=web,k8s:io.kubernetes.pod.namespace=staging",
		"k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,k8s:debug=true",
		"k8s:app=web,k8s:io.kubernetes.pod.namespace=dev",
	} {
		ls, _ := identity.ParseLabelList(list)
		fmt.Println(sel.Matches(ls), ls)
	}
	// Output:
	// any:app=web,!any:debug,k8s:io.kubernetes.pod.namespace in (prod,staging)
	// true k8s:app=web,k8s:io.kubernetes.pod.namespace=prod
	// true container:app=web,k8s:io.kubernetes.pod.namespace=staging
	// false k8s:app=web,k8s:debug=true,k8s:io.kubernetes.pod.namespace=prod
	// false k8s:app=web,k8s:io.kubernetes.pod.namespace=dev
}

func ExampleNewSelector_invalid() {
	_, err := identity.NewSelector(identity.LabelSelector{
		MatchExpressions: []identity.SelectorRequirement{{Key: "app", Operator: "Equals", Values: []string{"web"}}},
	})
	fmt.Println(err)
	// Output:
	// matchExpressions[0].operator: invalid value "Equals": not a valid selector operator (want In, NotIn, Exists or DoesNotExist)
}

func ExampleCIDRSelector() {
	sel, err := identity.CIDRSelector(netip.MustParsePrefix("10.0.0.0/8"), nodeplane.SingleStack)
	if err != nil {
		panic(err)
	}
	for _, p := range []string{"10.1.0.0/16", "192.168.0.0/16"} {
		ls, _ := identity.CIDRLabels(netip.MustParsePrefix(p), nodeplane.SingleStack)
		fmt.Println(sel, "selects", ls, sel.Matches(ls))
	}
	// Output:
	// cidr:10.0.0.0/8= selects cidr:10.1.0.0/16,reserved:world true
	// cidr:10.0.0.0/8= selects cidr:192.168.0.0/16,reserved:world false
}

func ExampleID() {
	id, err := identity.ClusterScopedID(1, 300)
	if err != nil {
		panic(err)
	}
	fmt.Println(id, id.Scope(), id.ClusterID(), id.Index())
	fmt.Printf("%#v\n", id)

	local, _ := identity.LocalScopedID(7)
	_, onWire := local.Wire()
	fmt.Println(local, local.Scope(), onWire)

	labels, _ := identity.ReservedKubeAPIServer.ReservedLabels()
	fmt.Println(identity.Identity{ID: identity.ReservedKubeAPIServer, Labels: labels})

	_, err = identity.ParseID("1000")
	fmt.Println(err)
	// Output:
	// 65836 cluster 1 300
	// identity.ID(65836 /* cluster 1 index 300 */)
	// 16777223 local false
	// 7 (reserved:kube-apiserver,reserved:remote-node)
	// identity 1000: invalid identity: cluster 0 is not a valid cluster
}

func ExampleLookupReserved() {
	for _, list := range []string{"reserved:host,k8s:kubernetes.io/hostname=node1", "reserved:world-ipv6", "reserved:world,k8s:app=web"} {
		ls, _ := identity.ParseLabelList(list)
		id, ok := identity.LookupReserved(ls)
		fmt.Println(id, ok)
	}
	// Output:
	// 1 true
	// 10 true
	// 0 false
}

func ExampleInProcessAllocator() {
	ctx := context.Background()
	alloc, err := identity.NewInProcessAllocator(identity.InProcessConfig{ClusterID: 1})
	if err != nil {
		panic(err)
	}
	defer alloc.Close()

	web, _ := identity.ParseLabelList("k8s:app=web,k8s:io.kubernetes.pod.namespace=prod")
	id, isNew, _ := alloc.Allocate(ctx, web)
	fmt.Println(id, isNew)
	id, isNew, _ = alloc.Allocate(ctx, web) // a second workload with the same labels
	fmt.Println(id, isNew)

	// CIDR identities are node-local; the world's prefix is reserved.
	cidr, _ := identity.CIDRLabels(netip.MustParsePrefix("192.0.2.0/24"), nodeplane.SingleStack)
	local, _, _ := alloc.Allocate(ctx, cidr)
	fmt.Println(local, local.Scope())
	world, _ := identity.CIDRLabels(netip.MustParsePrefix("0.0.0.0/0"), nodeplane.SingleStack)
	reserved, _, _ := alloc.Allocate(ctx, world)
	fmt.Println(reserved)

	labels, _ := alloc.Lookup(id)
	fmt.Println(identity.Identity{ID: id, Labels: labels})

	released, _ := alloc.Release(ctx, id)
	fmt.Println(released)
	released, _ = alloc.Release(ctx, id)
	fmt.Println(released)
	_, err = alloc.Release(ctx, id)
	fmt.Println(err)
	// Output:
	// 65792 true
	// 65792 false
	// 16777217 local
	// 2
	// 65792 (k8s:app=web,k8s:io.kubernetes.pod.namespace=prod)
	// false
	// true
	// release identity 65792: identity not allocated
}

func ExampleInProcessAllocator_Watch() {
	ctx := context.Background()
	alloc, _ := identity.NewInProcessAllocator(identity.InProcessConfig{})
	defer alloc.Close()
	web, _ := identity.ParseLabelList("k8s:app=web")
	alloc.Allocate(ctx, web)

	snapshot, w := alloc.Watch(identity.WatchOptions{})
	defer w.Close()
	fmt.Println("snapshot:", snapshot)

	db, _ := identity.ParseLabelList("k8s:app=db")
	id, _, _ := alloc.Allocate(ctx, db)
	alloc.Release(ctx, id)
	for range 2 {
		e, _ := w.Next(ctx)
		fmt.Println(e)
	}
	// Output:
	// snapshot: [65792 (k8s:app=web)]
	// added 65793 (k8s:app=db)
	// removed 65793 (k8s:app=db)
}

func ExampleInProcessConfig_statePath() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "identity-example")
	defer os.RemoveAll(dir)
	cfg := identity.InProcessConfig{StatePath: filepath.Join(dir, "identities")}

	alloc, _ := identity.NewInProcessAllocator(cfg)
	web, _ := identity.ParseLabelList("k8s:app=web")
	db, _ := identity.ParseLabelList("k8s:app=db")
	alloc.Allocate(ctx, web)
	alloc.Allocate(ctx, db)
	alloc.Close()

	// After a restart the IDs come back. Allocate claims them; the ones
	// nobody claims are released once the program has caught up.
	alloc, err := identity.NewInProcessAllocator(cfg)
	if err != nil {
		panic(err)
	}
	defer alloc.Close()
	id, isNew, _ := alloc.Allocate(ctx, db)
	fmt.Println(id, isNew)
	n, _ := alloc.ReleaseRestored(ctx)
	fmt.Println("released", n)
	// Output:
	// 65793 false
	// released 1
}

// The labels of a pod as Cilium gives them to its endpoint: the allocator
// turns them into the pod's identity, and Cilium policies select on them.
func ExamplePodLabels() {
	labels, err := identity.PodLabels(identity.PodLabelsConfig{
		Namespace:       "prod",
		Labels:          map[string]string{"app": "web"},
		NamespaceLabels: map[string]string{"team": "payments"},
	})
	if err != nil {
		panic(err)
	}
	for l := range labels.All() {
		fmt.Println(l)
	}
	// Output:
	// k8s:app=web
	// k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=prod
	// k8s:io.cilium.k8s.namespace.labels.team=payments
	// k8s:io.cilium.k8s.policy.cluster=default
	// k8s:io.kubernetes.pod.namespace=prod
}
