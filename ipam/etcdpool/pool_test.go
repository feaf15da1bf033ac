package etcdpool

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/nodeplane/nodeplane/internal/testutils/etcdtest"
	"github.com/nodeplane/nodeplane/ipam"
	"github.com/nodeplane/nodeplane/ipam/internal/clustertest"
)

var prefixSeq atomic.Int64

// freshPrefix returns a key prefix no other test uses, so that one server
// serves many independent pools.
func freshPrefix(t *testing.T) string {
	return fmt.Sprintf("/test/%d/", prefixSeq.Add(1))
}

func TestEtcdPool(t *testing.T) {
	srv := etcdtest.Start(t)
	client := srv.Client(t)
	ctx := context.Background()

	t.Run("Conformance", func(t *testing.T) {
		clustertest.Run(t, func(t *testing.T, cfg ipam.ClusterConfig) (ipam.ClusterAllocator, error) {
			return New(ctx, Config{Client: client, Cluster: cfg, Prefix: freshPrefix(t)})
		})
	})

	t.Run("ConfigMismatch", func(t *testing.T) {
		prefix := freshPrefix(t)
		cfg := ipam.ClusterConfig{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}}
		if _, err := New(ctx, Config{Client: client, Cluster: cfg, Prefix: prefix}); err != nil {
			t.Fatal(err)
		}
		// Same configuration, defaults spelled out: accepted.
		cfg.NodeMaskSizeIPv4 = ipam.DefaultNodeMaskSizeIPv4
		if _, err := New(ctx, Config{Client: client, Cluster: cfg, Prefix: prefix}); err != nil {
			t.Fatalf("same configuration: %v", err)
		}
		cfg.NodeMaskSizeIPv4 = 25
		if _, err := New(ctx, Config{Client: client, Cluster: cfg, Prefix: prefix}); !errors.Is(err, ErrConfigMismatch) {
			t.Fatalf("different mask size: %v", err)
		}
		if _, err := New(ctx, Config{Cluster: cfg}); !errors.Is(err, ipam.ErrInvalid) {
			t.Fatalf("nil client: %v", err)
		}
	})

	t.Run("CorruptKey", func(t *testing.T) {
		prefix := freshPrefix(t)
		p, err := New(ctx, Config{Client: client, Cluster: ipam.ClusterConfig{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}}, Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.Put(ctx, prefix+"cidrs/not-a-cidr", "n1"); err != nil {
			t.Fatal(err)
		}
		if _, err := p.AllocateNode(ctx, "n2"); !errors.Is(err, ipam.ErrCorrupt) {
			t.Fatalf("AllocateNode over a corrupt key: %v", err)
		}
	})

	// A node that expanded many times holds more CIDRs than one etcd
	// transaction may touch (--max-txn-ops, 128 by default): ReleaseNode
	// must still release all of them.
	t.Run("ReleaseNodeWithManyCIDRs", func(t *testing.T) {
		p, err := New(ctx, Config{Client: client, Cluster: ipam.ClusterConfig{
			CIDRs:            []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")},
			NodeMaskSizeIPv4: 24,
		}, Prefix: freshPrefix(t)})
		if err != nil {
			t.Fatal(err)
		}
		const n = 150
		want, err := p.AllocateNode(ctx, "big")
		if err != nil {
			t.Fatal(err)
		}
		for len(want) < n {
			c, err := p.Expand(ctx, "big", ipam.IPv4)
			if err != nil {
				t.Fatalf("expand %d: %v", len(want), err)
			}
			want = append(want, c)
		}
		got, err := p.ReleaseNode(ctx, "big")
		if err != nil {
			t.Fatalf("ReleaseNode of %d CIDRs: %v", n, err)
		}
		slices.SortFunc(want, comparePrefix)
		slices.SortFunc(got, comparePrefix)
		if !slices.Equal(got, want) {
			t.Fatalf("released %d CIDRs, want the %d the node held", len(got), len(want))
		}
		if left, err := p.NodeCIDRs(ctx, "big"); err != nil || len(left) != 0 {
			t.Fatalf("after ReleaseNode the node still holds %v (%v)", left, err)
		}
		// Every CIDR is free again: another node can take all 256.
		for i := range 256 {
			if _, err := p.Expand(ctx, "other", ipam.IPv4); err != nil {
				t.Fatalf("expand %d after release: %v", i, err)
			}
		}
	})

	// Two node agents, each with its own client and Pool, allocate at the
	// same moment, again and again. Both start with the same cursor, so they
	// pick the same candidates; etcd's transactions must keep the CIDRs
	// disjoint.
	t.Run("TwoNodesConcurrently", func(t *testing.T) {
		var conflicts uint64
		for round := range 20 {
			prefix := freshPrefix(t)
			cfg := Config{
				Cluster: ipam.ClusterConfig{CIDRs: []netip.Prefix{
					netip.MustParsePrefix("10.0.0.0/20"), netip.MustParsePrefix("fd00::/104"),
				}},
				Prefix: prefix,
			}
			pools := make([]*Pool, 2)
			for i := range pools {
				cfg.Client = srv.Client(t)
				p, err := New(ctx, cfg)
				if err != nil {
					t.Fatal(err)
				}
				pools[i] = p
			}
			got := make([][]netip.Prefix, 2)
			start := make(chan struct{})
			var wg sync.WaitGroup
			for i, p := range pools {
				wg.Add(1)
				go func() {
					defer wg.Done()
					node := fmt.Sprint("node-", i)
					<-start
					cidrs, err := p.AllocateNode(ctx, node)
					if err != nil {
						t.Error(err)
						return
					}
					for range 3 {
						c, err := p.Expand(ctx, node, ipam.IPv4)
						if err != nil {
							t.Error(err)
							return
						}
						cidrs = append(cidrs, c)
					}
					got[i] = cidrs
				}()
			}
			close(start)
			wg.Wait()
			if t.Failed() {
				t.FailNow()
			}
			seen := map[netip.Prefix]int{}
			for i, cidrs := range got {
				if len(cidrs) != 5 {
					t.Fatalf("round %d: node-%d got %v", round, i, cidrs)
				}
				for _, c := range cidrs {
					if j, dup := seen[c]; dup {
						t.Fatalf("round %d: %s given to node-%d and node-%d", round, c, j, i)
					}
					seen[c] = i
				}
			}
			// etcd agrees with what the nodes were told.
			nodes, err := pools[0].Nodes(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for i, cidrs := range got {
				slices.SortFunc(cidrs, comparePrefix)
				if !slices.Equal(nodes[fmt.Sprint("node-", i)], cidrs) {
					t.Fatalf("round %d: etcd holds %v for node-%d, it was told %v", round, nodes, i, cidrs)
				}
			}
			conflicts += pools[0].conflicts.Load() + pools[1].conflicts.Load()
		}
		t.Logf("%d transactions lost a race and were retried", conflicts)
		if conflicts == 0 {
			t.Fatal("the two nodes never raced: the test did not exercise the transactions")
		}
	})

	// The same node asking through two processes at once still gets one CIDR
	// per family.
	t.Run("SameNodeTwice", func(t *testing.T) {
		for range 10 {
			cfg := Config{Cluster: ipam.ClusterConfig{CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}}, Prefix: freshPrefix(t)}
			var wg sync.WaitGroup
			results := make([][]netip.Prefix, 2)
			start := make(chan struct{})
			for i := range 2 {
				cfg.Client = srv.Client(t)
				p, err := New(ctx, cfg)
				if err != nil {
					t.Fatal(err)
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					r, err := p.AllocateNode(ctx, "node")
					if err != nil {
						t.Error(err)
					}
					results[i] = r
				}()
			}
			close(start)
			wg.Wait()
			if len(results[0]) != 1 || !slices.Equal(results[0], results[1]) {
				t.Fatalf("one node, two callers: %v and %v", results[0], results[1])
			}
		}
	})
}
