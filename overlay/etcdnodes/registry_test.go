package etcdnodes_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/internal/testutils/etcdtest"
	"github.com/nodeplane/nodeplane/overlay"
	"github.com/nodeplane/nodeplane/overlay/etcdnodes"
	"github.com/nodeplane/nodeplane/overlay/internal/registrytest"
)

var prefixSeq atomic.Int64

func freshPrefix() string { return fmt.Sprintf("/test/%d/", prefixSeq.Add(1)) }

func newRegistry(t *testing.T, srv *etcdtest.Server, prefix string, ttl time.Duration) *etcdnodes.Registry {
	t.Helper()
	r, err := etcdnodes.New(context.Background(), etcdnodes.Config{Client: srv.Client(t), Prefix: prefix, LeaseTTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestEtcdRegistry(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()

	t.Run("Conformance", func(t *testing.T) {
		registrytest.Run(t, func(t *testing.T) overlay.Registry {
			return newRegistry(t, srv, freshPrefix(), 0)
		})
	})

	t.Run("Config", func(t *testing.T) {
		if _, err := etcdnodes.New(ctx, etcdnodes.Config{}); !errors.Is(err, overlay.ErrInvalidConfig) {
			t.Errorf("nil client: %v", err)
		}
		if _, err := etcdnodes.New(ctx, etcdnodes.Config{Client: srv.Client(t), LeaseTTL: time.Second}); !errors.Is(err, overlay.ErrInvalidConfig) {
			t.Errorf("1s lease: %v", err)
		}
	})

	// Other keys under the prefix (another package sharing it) are not
	// nodes.
	t.Run("ForeignKeys", func(t *testing.T) {
		prefix := freshPrefix()
		r := newRegistry(t, srv, prefix, 0)
		if _, err := srv.Client(t).Put(ctx, prefix+"ipam/cidrs/10.0.0.0/24", "node-x"); err != nil {
			t.Fatal(err)
		}
		if err := r.Register(ctx, registrytest.Node("n", []string{"192.168.0.1"}, "10.0.0.0/24")); err != nil {
			t.Fatalf("register beside foreign keys: %v", err)
		}
		if nodes, err := r.Nodes(ctx); err != nil || len(nodes) != 1 {
			t.Fatalf("Nodes = %v, %v", nodes, err)
		}
	})

	// Two processes race to register overlapping CIDRs under different
	// names, many times: exactly one wins each round.
	t.Run("OverlapRace", func(t *testing.T) {
		prefix := freshPrefix()
		r1 := newRegistry(t, srv, prefix, 0)
		r2 := newRegistry(t, srv, prefix, 0)
		for i := range 20 {
			cidr := fmt.Sprintf("10.%d.0.0/24", i)
			var wg sync.WaitGroup
			errs := make([]error, 2)
			for j, r := range []*etcdnodes.Registry{r1, r2} {
				wg.Go(func() {
					errs[j] = r.Register(ctx, registrytest.Node(fmt.Sprintf("n%d-%d", i, j), []string{fmt.Sprintf("192.168.%d.%d", i, j+1)}, cidr))
				})
			}
			wg.Wait()
			won := 0
			for _, err := range errs {
				switch {
				case err == nil:
					won++
				case !errors.Is(err, overlay.ErrPodCIDROverlap):
					t.Fatalf("round %d: %v", i, err)
				}
			}
			if won != 1 {
				t.Fatalf("round %d: %d registrations of %s won (%v)", i, won, cidr, errs)
			}
		}
		nodes, err := r1.Nodes(ctx)
		if err != nil || len(nodes) != 20 {
			t.Fatalf("%d nodes, %v; want 20", len(nodes), err)
		}
	})

	// A node whose process dies leaves when its lease expires; one that
	// closes its registry leaves at once. Watchers see both.
	t.Run("LeaseExpiry", func(t *testing.T) {
		prefix := freshPrefix()
		watcher := newRegistry(t, srv, prefix, 0)
		cli := srv.Client(t)
		dying, err := etcdnodes.New(ctx, etcdnodes.Config{Client: cli, Prefix: prefix, LeaseTTL: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		leaving := newRegistry(t, srv, prefix, 0)
		if err := dying.Register(ctx, registrytest.Node("dying", []string{"192.168.0.9"}, "10.9.0.0/24")); err != nil {
			t.Fatal(err)
		}
		if err := leaving.Register(ctx, registrytest.Node("leaving", []string{"192.168.0.8"}, "10.8.0.0/24")); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		nodes, w, err := watcher.Watch(wctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes) != 2 {
			t.Fatalf("snapshot %v", nodes)
		}
		// Renewal keeps the entry beyond its TTL.
		time.Sleep(3 * time.Second)
		if n, _ := watcher.Nodes(ctx); len(n) != 2 {
			t.Fatalf("after 3s of a 2s lease with renewal: %v", n)
		}
		leaving.Close()
		if ev := registrytest.Next(t, w); !ev.Deleted || ev.Node.Name != "leaving" {
			t.Fatalf("event %+v, want leaving's deletion", ev)
		}
		// The client of "dying" goes away without revoking: a crash.
		start := time.Now()
		cli.Close()
		if ev := registrytest.Next(t, w); !ev.Deleted || ev.Node.Name != "dying" {
			t.Fatalf("event %+v, want dying's expiry", ev)
		}
		t.Logf("crashed node's entry expired after %v", time.Since(start).Round(100*time.Millisecond))
		dying.Close()
	})

	// A lease revoked behind the registry's back (etcd lost it) is
	// replaced and the node registered again.
	t.Run("LeaseLost", func(t *testing.T) {
		prefix := freshPrefix()
		r := newRegistry(t, srv, prefix, 2*time.Second)
		n := registrytest.Node("n", []string{"192.168.0.1"}, "10.0.0.0/24")
		if err := r.Register(ctx, n); err != nil {
			t.Fatal(err)
		}
		admin := srv.Client(t)
		leases, err := admin.Leases(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range leases.Leases {
			ttl, err := admin.TimeToLive(ctx, l.ID, clientv3WithKeys())
			if err != nil {
				continue
			}
			for _, k := range ttl.Keys {
				if string(k) == prefix+"nodes/n" {
					if _, err := admin.Revoke(ctx, l.ID); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		if got, _ := r.Nodes(ctx); len(got) != 0 {
			t.Fatalf("after revoking: %v", got)
		}
		deadline := time.Now().Add(15 * time.Second)
		for {
			got, err := r.Nodes(ctx)
			if err == nil && len(got) == 1 && got[0].Name == "n" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node not registered again: %v, %v", got, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// TestEtcdSyncer: two nodes' syncers follow the etcd registry; a third
// node joins and crashes, and both ipcaches follow without restarts.
func TestEtcdSyncer(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	prefix := freshPrefix()
	nodes := []overlay.Node{
		registrytest.Node("node-a", []string{"192.168.0.1"}, "10.1.0.0/24"),
		registrytest.Node("node-b", []string{"192.168.0.2"}, "10.1.1.0/24"),
	}
	caches := make([]*ipcache.IPCache, 2)
	for i, n := range nodes {
		r := newRegistry(t, srv, prefix, 0)
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
	wait := func(c *ipcache.IPCache, want map[netip.Prefix]ipcache.Entry) { waitIPCache(t, c, want, 20*time.Second) }
	wait(caches[0], wantEntries(nodes[1]))
	wait(caches[1], wantEntries(nodes[0]))

	third := registrytest.Node("node-c", []string{"192.168.0.3"}, "10.1.2.0/24")
	cli := srv.Client(t)
	rc, err := etcdnodes.New(ctx, etcdnodes.Config{Client: cli, Prefix: prefix, LeaseTTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := rc.Register(ctx, third); err != nil {
		t.Fatal(err)
	}
	wantA, wantB := wantEntries(nodes[1]), wantEntries(nodes[0])
	maps.Copy(wantA, wantEntries(third))
	maps.Copy(wantB, wantEntries(third))
	wait(caches[0], wantA)
	wait(caches[1], wantB)

	cli.Close() // node-c crashes
	wait(caches[0], wantEntries(nodes[1]))
	wait(caches[1], wantEntries(nodes[0]))
	rc.Close()
}

func clientv3WithKeys() clientv3.LeaseOption { return clientv3.WithAttachedKeys() }

// wantEntries is what a syncer should write for nodes: each pod CIDR as
// world behind the node's first address, each node address as
// remote-node.
func wantEntries(ns ...overlay.Node) map[netip.Prefix]ipcache.Entry {
	m := map[netip.Prefix]ipcache.Entry{}
	for _, n := range ns {
		for _, c := range n.PodCIDRs {
			m[c] = ipcache.Entry{Identity: identity.ReservedWorld, TunnelEndpoint: n.Addresses[0]}
		}
		for _, a := range n.Addresses {
			m[netip.PrefixFrom(a, 32)] = ipcache.Entry{Identity: identity.ReservedRemoteNode}
		}
	}
	return m
}

// waitIPCache waits until c holds exactly want, failing after timeout.
func waitIPCache(t testing.TB, c *ipcache.IPCache, want map[netip.Prefix]ipcache.Entry, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !maps.Equal(maps.Collect(c.All()), want) {
		if time.Now().After(deadline) {
			t.Fatalf("ipcache %v, want %v", maps.Collect(c.All()), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
