package etcdpool_test

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nodeplane/nodeplane/ipam"
	"github.com/nodeplane/nodeplane/ipam/etcdpool"
)

// A node agent allocates its own pod CIDRs from the cluster's, through
// etcd, and builds its host pool from them. (Needs an etcd server, so it is
// compiled but not run.)
func Example() {
	ctx := context.Background()
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://127.0.0.1:2379"}, DialTimeout: 5 * time.Second})
	if err != nil {
		panic(err)
	}
	defer client.Close()

	cluster, err := etcdpool.New(ctx, etcdpool.Config{
		Client:  client,
		Cluster: ipam.ClusterConfig{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}},
	})
	if err != nil {
		panic(err)
	}
	cidrs, err := cluster.AllocateNode(ctx, "worker-1")
	if err != nil {
		panic(err)
	}
	pool, err := ipam.New(ipam.Config{Prefixes: cidrs})
	if err != nil {
		panic(err)
	}
	fmt.Println(pool.Prefixes())
}
