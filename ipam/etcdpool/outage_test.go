package etcdpool

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/internal/testutils/etcdtest"
	"github.com/nodeplane/nodeplane/ipam"
)

// TestEtcdPoolOutage stops etcd under a pool: new work (a node's first
// CIDRs, a lookup, a release) fails within the caller's context and
// changes nothing; after etcd restarts on the same data, the pool works
// again by itself: the node that had CIDRs gets the same ones, the node
// refused during the outage gets fresh ones, and no CIDR has two owners.
// (A node's pod addresses come from its own ipam.Pool over the CIDRs it
// holds, which needs no etcd.)
func TestEtcdPoolOutage(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	p, err := New(ctx, Config{Client: srv.Client(t), Prefix: freshPrefix(t), Cluster: ipam.ClusterConfig{
		CIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}, NodeMaskSizeIPv4: 24,
	}})
	if err != nil {
		t.Fatal(err)
	}
	n1, err := p.AllocateNode(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}

	srv.Stop()

	for name, call := range map[string]func(context.Context) error{
		"AllocateNode": func(ctx context.Context) error { _, err := p.AllocateNode(ctx, "n2"); return err },
		"NodeCIDRs":    func(ctx context.Context) error { _, err := p.NodeCIDRs(ctx, "n1"); return err },
		"ReleaseCIDR":  func(ctx context.Context) error { return p.ReleaseCIDR(ctx, "n1", n1[0]) },
	} {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		start := time.Now()
		err := call(cctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s during the outage: %v, want the caller's deadline", name, err)
		}
		if took := time.Since(start); took > 3*time.Second {
			t.Errorf("%s during the outage returned after %v, past the caller's 1s deadline", name, took)
		}
		t.Logf("%s during the outage: %v", name, err)
	}

	srv.Restart()

	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	again, err := p.AllocateNode(rctx, "n1")
	if err != nil || !slices.Equal(again, n1) {
		t.Fatalf("AllocateNode(n1) after the restart = %v, %v; want %v", again, err, n1)
	}
	n2, err := p.AllocateNode(rctx, "n2")
	if err != nil || len(n2) != 1 || n2[0] == n1[0] {
		t.Fatalf("AllocateNode(n2) after the restart = %v, %v", n2, err)
	}
	nodes, err := p.Nodes(rctx)
	if err != nil || len(nodes) != 2 || !slices.Equal(nodes["n1"], n1) || !slices.Equal(nodes["n2"], n2) {
		t.Fatalf("Nodes after the restart = %v, %v", nodes, err)
	}
}
