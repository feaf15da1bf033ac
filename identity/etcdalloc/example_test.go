package etcdalloc_test

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/etcdalloc"
)

// Every node of a cluster runs one allocator against the same etcd; the same
// labels get the same ID on all of them.
func Example() {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:2379"}, DialTimeout: 5 * time.Second})
	if err != nil {
		panic(err)
	}
	defer cli.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	alloc, err := etcdalloc.New(ctx, etcdalloc.Config{Client: cli, NodeName: "node-1", ClusterID: 1})
	if err != nil {
		panic(err)
	}
	defer alloc.Close()

	labels, _ := identity.ParseLabelList("k8s:app=web,k8s:io.kubernetes.pod.namespace=prod")
	id, isNew, err := alloc.Allocate(ctx, labels)
	if err != nil {
		panic(err) // wraps etcdalloc.ErrUnavailable while etcd is unreachable
	}
	fmt.Println(id, isNew)

	// Follow the identities of the whole cluster.
	snapshot, w := alloc.Watch(identity.WatchOptions{})
	defer w.Close()
	fmt.Println(len(snapshot), "identities")
	for {
		e, err := w.Next(ctx)
		if err != nil {
			return
		}
		fmt.Println(e)
	}
}
