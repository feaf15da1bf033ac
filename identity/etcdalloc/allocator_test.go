package etcdalloc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/testutils/etcdtest"
)

func newAllocator(t testing.TB, cli *clientv3.Client, node string, opts ...func(*Config)) *Allocator {
	t.Helper()
	cfg := Config{Client: cli, NodeName: node, ClusterID: 4, GCInterval: -1, LeaseTTL: 30 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func labelSet(t testing.TB, i int) identity.Labels {
	t.Helper()
	ls, err := identity.ParseLabels(
		fmt.Sprintf("k8s:app=app%d", i%97),
		fmt.Sprintf("k8s:io.kubernetes.pod.namespace=ns%d", i/97),
		"k8s:io.cilium.k8s.policy.cluster=default",
	)
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

// waitFor polls cond until it holds or the test's patience runs out.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func clusterIDs(a *Allocator) map[identity.ID]identity.Labels {
	m := map[identity.ID]identity.Labels{}
	snap, w := a.Watch(identity.WatchOptions{})
	w.Close()
	for _, id := range snap {
		if id.ID.IsCluster() {
			m[id.ID] = id.Labels
		}
	}
	return m
}

// TestTwoNodesConcurrent is the scenario: two allocators ("nodes")
// and 16 goroutines allocate 1000 overlapping label sets at once; every set
// gets one ID on both nodes; a restarted allocator sees the same IDs;
// releasing on both nodes lets garbage collection remove them all.
func TestTwoNodesConcurrent(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	nodeA := newAllocator(t, srv.Client(t), "node-a")
	nodeB := newAllocator(t, srv.Client(t), "node-b")
	_, watchB := nodeB.Watch(identity.WatchOptions{MaxBacklog: -1})
	defer watchB.Close()

	const sets, goroutines = 1000, 16
	labels := make([]identity.Labels, sets)
	for i := range labels {
		labels[i] = labelSet(t, i)
	}

	type grant struct {
		set  int
		id   identity.ID
		node *Allocator
	}
	grants := make([][]grant, goroutines)
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		node := nodeA
		if g%2 == 1 {
			node = nodeB
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Every goroutine takes an overlapping half of the sets in
			// its own order.
			order := rand.New(rand.NewPCG(uint64(g), 7)).Perm(sets)
			for _, i := range order[:sets/2+sets/8] {
				id, _, err := node.Allocate(ctx, labels[i])
				if err != nil {
					errs <- fmt.Errorf("goroutine %d, set %d: %w", g, i, err)
					return
				}
				grants[g] = append(grants[g], grant{i, id, node})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Every set has exactly one ID, whichever node or goroutine asked.
	idOf := make([]identity.ID, sets)
	setOf := map[identity.ID]int{}
	for _, gs := range grants {
		for _, gr := range gs {
			if idOf[gr.set] == identity.Unknown {
				idOf[gr.set] = gr.id
			}
			if idOf[gr.set] != gr.id {
				t.Fatalf("set %d got IDs %v and %v", gr.set, idOf[gr.set], gr.id)
			}
			if other, ok := setOf[gr.id]; ok && other != gr.set {
				t.Fatalf("ID %v given to sets %d and %d", gr.id, other, gr.set)
			}
			setOf[gr.id] = gr.set
			if gr.id.ClusterID() != 4 {
				t.Fatalf("ID %#v not of cluster 4", gr.id)
			}
		}
	}
	// Both caches know every allocated set, with the same ID.
	for i, id := range idOf {
		if id == identity.Unknown {
			continue
		}
		for _, n := range []*Allocator{nodeA, nodeB} {
			waitFor(t, "caches to agree", func() bool {
				got, ok := n.LookupByLabels(labels[i])
				return ok && got == id
			})
			if ls, ok := n.Lookup(id); !ok || ls != labels[i] {
				t.Fatalf("node %s: Lookup(%v) = %v, %v", n.node, id, ls, ok)
			}
		}
	}
	allocated := len(setOf)
	if allocated < sets*9/10 {
		t.Fatalf("only %d sets allocated", allocated)
	}
	want := clusterIDs(nodeB)
	if len(want) != allocated {
		t.Fatalf("node-b caches %d identities, %d were allocated", len(want), allocated)
	}

	// Restart node A: the new allocator sees the same IDs and takes over
	// node A's references under its own lease.
	nodeA.Close()
	nodeA2 := newAllocator(t, srv.Client(t), "node-a")
	if got := clusterIDs(nodeA2); len(got) != len(want) {
		t.Fatalf("restarted node sees %d identities, want %d", len(got), len(want))
	} else {
		for id, ls := range want {
			if got[id] != ls {
				t.Fatalf("restarted node: %v is %v, want %v", id, got[id], ls)
			}
		}
	}
	for g, gs := range grants {
		if g%2 == 1 {
			continue
		}
		for i := range gs {
			id, isNew, err := nodeA2.Allocate(ctx, labels[gs[i].set])
			if err != nil || isNew || id != gs[i].id {
				t.Fatalf("restarted node: Allocate(set %d) = %v, %v, %v; want %v", gs[i].set, id, isNew, err, gs[i].id)
			}
			gs[i].node = nodeA2
		}
	}

	// Release everything on node B: node A still holds most sets, GC
	// must only take what node A does not reference.
	for g := 1; g < goroutines; g += 2 {
		for _, gr := range grants[g] {
			if _, err := nodeB.Release(ctx, gr.id); err != nil {
				t.Fatal(err)
			}
		}
	}
	heldByA := map[identity.ID]bool{}
	for g := 0; g < goroutines; g += 2 {
		for _, gr := range grants[g] {
			heldByA[gr.id] = true
		}
	}
	n, err := nodeB.RunGC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n != allocated-len(heldByA) {
		t.Fatalf("GC with node A's references deleted %d, want %d", n, allocated-len(heldByA))
	}
	for id := range heldByA {
		waitFor(t, "GC to settle", func() bool { return len(clusterIDs(nodeB)) == len(heldByA) })
		if _, ok := nodeB.Lookup(id); !ok {
			t.Fatalf("GC removed %v, which node A references", id)
		}
	}

	// Release on node A too; the last release per set reports it.
	releasedLast := 0
	for g := 0; g < goroutines; g += 2 {
		for _, gr := range grants[g] {
			// The restarted node holds one reference per grant: local
			// reference counts do not survive a restart, identities do.
			last, err := nodeA2.Release(ctx, gr.id)
			if err != nil {
				t.Fatal(err)
			}
			if last {
				releasedLast++
			}
		}
	}
	if releasedLast != len(heldByA) {
		t.Fatalf("%d releases reported the last reference, want %d", releasedLast, len(heldByA))
	}
	if _, err := nodeA2.Release(ctx, grants[0][0].id); !errors.Is(err, identity.ErrNotAllocated) {
		t.Fatalf("duplicate release: %v", err)
	}
	n, err = nodeA2.RunGC(ctx)
	if err != nil || n != len(heldByA) {
		t.Fatalf("final GC = %d, %v; want %d", n, err, len(heldByA))
	}
	for _, node := range []*Allocator{nodeA2, nodeB} {
		waitFor(t, "caches to empty", func() bool { return len(clusterIDs(node)) == 0 })
	}
	resp, err := nodeB.cli.Get(ctx, DefaultPrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 0 {
		t.Fatalf("etcd still holds %d keys (%v)", resp.Count, err)
	}

	// Node B's watcher saw every identity come and go, exactly once.
	live := map[identity.ID]identity.Labels{}
	added := 0
	for watchB.Backlog() > 0 {
		e, _ := watchB.Next(ctx)
		switch e.Kind {
		case identity.EventAdded:
			if _, dup := live[e.ID]; dup {
				t.Fatalf("%v added twice", e.ID)
			}
			live[e.ID] = e.Labels
			added++
		case identity.EventRemoved:
			if live[e.ID] != e.Labels {
				t.Fatalf("removal %v without addition", e)
			}
			delete(live, e.ID)
		}
	}
	if added != allocated || len(live) != 0 {
		t.Fatalf("watch saw %d additions (want %d), %d left live", added, allocated, len(live))
	}
}

// TestOutage stops etcd under a running allocator: cached lookups keep
// answering, allocation fails within its context, and after a restart on
// the same data directory and port allocation resumes and the watch
// delivers every change made since, in order.
func TestOutage(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	a := newAllocator(t, srv.Client(t), "node-a")
	known := map[identity.ID]identity.Labels{}
	for i := range 20 {
		id, _, err := a.Allocate(ctx, labelSet(t, i))
		if err != nil {
			t.Fatal(err)
		}
		known[id] = labelSet(t, i)
	}
	_, w := a.Watch(identity.WatchOptions{})
	defer w.Close()

	srv.Stop()

	for id, ls := range known {
		if got, ok := a.Lookup(id); !ok || got != ls {
			t.Fatalf("Lookup(%v) during outage = %v, %v", id, got, ok)
		}
		if got, ok := a.LookupByLabels(ls); !ok || got != id {
			t.Fatalf("LookupByLabels during outage = %v, %v", got, ok)
		}
	}
	// A set this node holds only counts.
	held := labelSet(t, 0)
	if id, isNew, err := a.Allocate(ctx, held); err != nil || isNew || known[id] != held {
		t.Fatalf("Allocate of a held set during outage = %v, %v, %v", id, isNew, err)
	}
	// A local identity needs no etcd.
	if id, _, err := a.AllocateCIDR(ctx, netip.MustParsePrefix("192.0.2.0/24")); err != nil || !id.IsLocal() {
		t.Fatalf("AllocateCIDR during outage = %v, %v", id, err)
	}
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, _, err := a.Allocate(actx, labelSet(t, 500))
	cancel()
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Allocate during outage: %v; want ErrUnavailable and DeadlineExceeded", err)
	}
	t.Logf("allocation during outage: %v", err)
	if _, ok := a.LookupByLabels(labelSet(t, 500)); ok {
		t.Fatal("failed allocation left an identity")
	}
	// Releasing the last reference needs etcd: it fails and keeps it.
	var lastOne identity.ID
	for id := range known {
		if known[id] != held {
			lastOne = id
			break
		}
	}
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	_, err = a.Release(rctx, lastOne)
	cancel()
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Release during outage: %v", err)
	}

	srv.Restart()

	// A second node changes the cluster right after the restart, while
	// node A's watch may still be reconnecting.
	b := newAllocator(t, srv.Client(t), "node-b")
	var want []identity.Event
	for i := 100; i < 150; i++ {
		id, isNew, err := b.Allocate(ctx, labelSet(t, i))
		if err != nil || !isNew {
			t.Fatal(id, isNew, err)
		}
		want = append(want, identity.Event{Kind: identity.EventAdded, ID: id, Labels: labelSet(t, i)})
	}
	actx, cancel = context.WithTimeout(ctx, 30*time.Second)
	id, isNew, err := a.Allocate(actx, labelSet(t, 500))
	cancel()
	if err != nil || !isNew {
		t.Fatalf("Allocate after restart = %v, %v, %v", id, isNew, err)
	}
	want = append(want, identity.Event{Kind: identity.EventAdded, ID: id, Labels: labelSet(t, 500)})
	if released, err := a.Release(ctx, lastOne); err != nil || !released {
		t.Fatalf("Release after restart = %v, %v", released, err)
	}

	for i, we := range want {
		nctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		e, err := w.Next(nctx)
		cancel()
		if e.Kind == identity.EventAdded && e.ID.IsLocal() {
			// The CIDR identity allocated during the outage.
			nctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			e, err = w.Next(nctx)
			cancel()
		}
		if err != nil || e != we {
			t.Fatalf("event %d after restart = %v, %v; want %v", i, e, err, we)
		}
	}
	waitFor(t, "caches to agree", func() bool {
		ca, cb := clusterIDs(a), clusterIDs(b)
		if len(ca) != len(cb) {
			return false
		}
		for id, ls := range ca {
			if cb[id] != ls {
				return false
			}
		}
		return true
	})
}

// TestGCRacesJoiningNodes runs garbage collection in a loop while nodes keep
// joining and leaving the same identities: no node may end up holding a
// reference to an identity that was collected.
func TestGCRacesJoiningNodes(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nodes := []*Allocator{
		newAllocator(t, srv.Client(t), "n1"),
		newAllocator(t, srv.Client(t), "n2"),
		newAllocator(t, srv.Client(t), "n3"),
	}
	var gcRuns sync.WaitGroup
	gcRuns.Add(1)
	go func() {
		defer gcRuns.Done()
		for ctx.Err() == nil {
			nodes[0].RunGC(ctx)
		}
	}()

	var wg sync.WaitGroup
	errs := make(chan error, len(nodes))
	for ni, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(ni), 3))
			for range 150 {
				ls := labelSet(t, rng.IntN(6))
				id, _, err := n.Allocate(ctx, ls)
				if err != nil {
					errs <- err
					return
				}
				// While held, the identity must exist in etcd.
				resp, err := n.cli.Get(ctx, n.keys.id(id))
				if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != ls.Key() {
					errs <- fmt.Errorf("%s holds %v for %v, etcd has %v (%v)", n.node, id, ls, resp.Kvs, err)
					return
				}
				if _, err := n.Release(ctx, id); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	cancel()
	gcRuns.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestLeaseLoss revokes a node's lease behind its back: its references
// vanish and another node collects the identity; the node takes a new lease
// and recreates the identity under the same ID.
func TestLeaseLoss(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx := context.Background()
	a := newAllocator(t, srv.Client(t), "node-a")
	b := newAllocator(t, srv.Client(t), "node-b")
	ls := labelSet(t, 1)
	id, _, err := a.Allocate(ctx, ls)
	if err != nil {
		t.Fatal(err)
	}
	lease, _ := a.currentLease()
	if _, err := b.cli.Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	// Node B may collect the identity before node A notices; either way
	// node A must restore it under the same ID.
	b.RunGC(ctx)
	waitFor(t, "node A to take a new lease", func() bool {
		l, _ := a.currentLease()
		return l != lease
	})
	waitFor(t, "the identity to be restored", func() bool {
		resp, err := b.cli.Get(ctx, a.keys.ref(ls, "node-a"))
		return err == nil && len(resp.Kvs) == 1
	})
	if n, err := b.RunGC(ctx); err != nil || n != 0 {
		t.Fatalf("GC after re-registration deleted %d (%v)", n, err)
	}
	waitFor(t, "node B to see the identity", func() bool {
		got, ok := b.LookupByLabels(ls)
		return ok && got == id
	})
	if a.Conflicts() != 0 {
		t.Errorf("Conflicts() = %d", a.Conflicts())
	}
}

func TestBadInput(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx := context.Background()
	for _, cfg := range []Config{
		{NodeName: "x"},
		{Client: cli},
		{Client: cli, NodeName: "a/b"},
		{Client: cli, NodeName: "n", LeaseTTL: time.Second},
	} {
		if _, err := New(ctx, cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
	a := newAllocator(t, cli, "node-a")
	if _, _, err := a.Allocate(ctx, identity.Labels{}); !errors.Is(err, identity.ErrNoLabels) {
		t.Errorf("empty labels: %v", err)
	}
	for _, id := range []identity.ID{0, 11, 300, 5<<16 | 300, 4<<16 | 300} {
		if _, err := a.Release(ctx, id); err == nil {
			t.Errorf("Release(%d) succeeded", id)
		}
	}
	host, _ := identity.ParseLabels("reserved:host")
	if id, _, err := a.Allocate(ctx, host); err != nil || id != identity.ReservedHost {
		t.Errorf("reserved: %v %v", id, err)
	}
	if released, err := a.Release(ctx, identity.ReservedHost); err != nil || released {
		t.Errorf("release reserved: %v %v", released, err)
	}
	a.Close()
	if _, _, err := a.Allocate(ctx, labelSet(t, 1)); !errors.Is(err, nodeplane.ErrClosed) {
		t.Errorf("Allocate after Close: %v", err)
	}
}
