package etcdnodes_test

import (
	"context"
	"errors"
	"maps"
	"net/netip"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/internal/testutils/etcdtest"
	"github.com/nodeplane/nodeplane/overlay"
	"github.com/nodeplane/nodeplane/overlay/etcdnodes"
	"github.com/nodeplane/nodeplane/overlay/internal/registrytest"
)

// TestEtcdRegistryOutage stops etcd under two nodes whose syncers fill
// their ipcaches from the registry: the ipcaches keep every entry they had
// through the outage; Register and Nodes fail within the caller's context;
// after etcd restarts on the same data, the syncers recover by themselves
// (their Run does not fail) and a node registered then reaches both
// ipcaches, next to the old entries.
func TestEtcdRegistryOutage(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	prefix := freshPrefix()
	nodes := []overlay.Node{
		registrytest.Node("node-a", []string{"192.168.0.1"}, "10.1.0.0/24"),
		registrytest.Node("node-b", []string{"192.168.0.2"}, "10.1.1.0/24"),
	}
	var regs []*etcdnodes.Registry
	caches := make([]*ipcache.IPCache, 2)
	for i, n := range nodes {
		r := newRegistry(t, srv, prefix, 0)
		regs = append(regs, r)
		if err := r.Register(ctx, n); err != nil {
			t.Fatal(err)
		}
		caches[i] = ipcache.New()
		s, err := overlay.NewSyncer(overlay.SyncerConfig{Registry: r, IPCache: caches[i], LocalNode: n.Name})
		if err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- s.Run(sctx) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("syncer of %s: %v", n.Name, err)
			}
		})
	}
	wait := func(c *ipcache.IPCache, want map[netip.Prefix]ipcache.Entry) { waitIPCache(t, c, want, 30*time.Second) }
	wait(caches[0], wantEntries(nodes[1]))
	wait(caches[1], wantEntries(nodes[0]))

	srv.Stop()

	third := registrytest.Node("node-c", []string{"192.168.0.3"}, "10.1.2.0/24")
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	err := regs[0].Register(cctx, third)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Register during the outage: %v, want the caller's deadline", err)
	}
	cctx, cancel = context.WithTimeout(ctx, time.Second)
	_, err = regs[1].Nodes(cctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Nodes during the outage: %v, want the caller's deadline", err)
	}
	// What the ipcaches have, they keep.
	time.Sleep(2 * time.Second)
	if got := maps.Collect(caches[0].All()); !maps.Equal(got, wantEntries(nodes[1])) {
		t.Fatalf("node-a's ipcache during the outage: %v", got)
	}
	if got := maps.Collect(caches[1].All()); !maps.Equal(got, wantEntries(nodes[0])) {
		t.Fatalf("node-b's ipcache during the outage: %v", got)
	}

	srv.Restart()

	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := regs[0].Register(rctx, third); err != nil {
		t.Fatalf("Register after the restart: %v", err)
	}
	// node-a registered node-c: its syncer skips only node-a itself.
	wait(caches[0], wantEntries(nodes[1], third))
	wait(caches[1], wantEntries(nodes[0], third))
}
