package identity

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
)

func newTestAllocator(t *testing.T, cfg InProcessConfig) *InProcessAllocator {
	t.Helper()
	a, err := NewInProcessAllocator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

func TestInProcessAllocateRelease(t *testing.T) {
	ctx := context.Background()
	a := newTestAllocator(t, InProcessConfig{ClusterID: 3})
	web := mustLabels(t, "k8s:app=web")
	db := mustLabels(t, "k8s:app=db")

	id, isNew, err := a.Allocate(ctx, web)
	if err != nil || !isNew {
		t.Fatalf("Allocate(web) = %v, %v, %v", id, isNew, err)
	}
	if id.ClusterID() != 3 || id.Index() != MinClusterIndex {
		t.Errorf("first ID %#v, want cluster 3 index 256", id)
	}
	again, isNew, err := a.Allocate(ctx, web)
	if err != nil || isNew || again != id {
		t.Fatalf("second Allocate(web) = %v, %v, %v; want %v, false", again, isNew, err, id)
	}
	dbID, _, _ := a.Allocate(ctx, db)
	if dbID == id {
		t.Fatal("two label sets share an ID")
	}
	if ls, ok := a.Lookup(id); !ok || ls != web {
		t.Errorf("Lookup(%v) = %v, %v", id, ls, ok)
	}
	if got, ok := a.LookupByLabels(web); !ok || got != id {
		t.Errorf("LookupByLabels(web) = %v, %v", got, ok)
	}

	if released, err := a.Release(ctx, id); err != nil || released {
		t.Fatalf("first Release = %v, %v; want false (one reference left)", released, err)
	}
	if released, err := a.Release(ctx, id); err != nil || !released {
		t.Fatalf("second Release = %v, %v; want true", released, err)
	}
	if _, ok := a.Lookup(id); ok {
		t.Error("released ID still looks up")
	}
	if released, err := a.Release(ctx, id); !errors.Is(err, ErrNotAllocated) || released {
		t.Errorf("duplicate Release = %v, %v; want ErrNotAllocated", released, err)
	}
	if ls, ok := a.Lookup(dbID); !ok || ls != db {
		t.Error("duplicate release disturbed another identity")
	}

	// A released ID is not reused right away.
	next, isNew, _ := a.Allocate(ctx, web)
	if !isNew || next == id {
		t.Errorf("re-allocating web gave %v (new %v); want a fresh ID after %v", next, isNew, id)
	}
}

func TestAllocatorReservedAndLocal(t *testing.T) {
	ctx := context.Background()
	a := newTestAllocator(t, InProcessConfig{})

	host := mustLabels(t, "reserved:host", "k8s:kubernetes.io/hostname=n1")
	id, isNew, err := a.Allocate(ctx, host)
	if err != nil || id != ReservedHost || isNew {
		t.Errorf("Allocate(host) = %v, %v, %v", id, isNew, err)
	}
	if released, err := a.Release(ctx, ReservedHost); err != nil || released {
		t.Errorf("Release(host) = %v, %v", released, err)
	}
	if ls, ok := a.Lookup(ReservedWorld); !ok || ls.String() != "reserved:world" {
		t.Errorf("Lookup(world) = %v, %v", ls, ok)
	}

	cidr, _ := CIDRLabels(netip.MustParsePrefix("192.0.2.0/24"), nodeplane.SingleStack)
	lid, isNew, err := a.Allocate(ctx, cidr)
	if err != nil || !isNew || !lid.IsLocal() {
		t.Fatalf("Allocate(cidr) = %#v, %v, %v", lid, isNew, err)
	}
	world, _ := CIDRLabels(netip.MustParsePrefix("0.0.0.0/0"), nodeplane.SingleStack)
	if wid, _, err := a.Allocate(ctx, world); err != nil || wid != ReservedWorld {
		t.Errorf("Allocate(0.0.0.0/0 labels) = %v, %v", wid, err)
	}
	// The default cluster is 1.
	pod, _, _ := a.Allocate(ctx, mustLabels(t, "k8s:app=x"))
	if pod.ClusterID() != 1 {
		t.Errorf("default cluster ID: %#v", pod)
	}

	if _, _, err := a.Allocate(ctx, Labels{}); !errors.Is(err, ErrNoLabels) {
		t.Errorf("Allocate(empty) = %v", err)
	}
	for _, id := range []ID{0, 11, 1000, 2<<16 | 300, 1 << 26} {
		if _, err := a.Release(ctx, id); err == nil {
			t.Errorf("Release(%d) succeeded", id)
		}
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := a.Allocate(cancelled, mustLabels(t, "k8s:app=y")); !errors.Is(err, context.Canceled) {
		t.Errorf("Allocate with cancelled context = %v", err)
	}
	if _, ok := a.LookupByLabels(mustLabels(t, "k8s:app=y")); ok {
		t.Error("failed Allocate left an identity behind")
	}
}

func TestLocalAllocator(t *testing.T) {
	ctx := context.Background()
	cache := NewCache()
	l := NewLocalAllocator(LocalAllocatorConfig{Stack: nodeplane.DualStack, Cache: cache})
	defer l.Close()

	id4, isNew, err := l.AllocateCIDR(ctx, netip.MustParsePrefix("10.0.0.0/8"))
	if err != nil || !isNew || !id4.IsLocal() || id4.Index() != 1 {
		t.Fatalf("AllocateCIDR(10/8) = %#v, %v, %v", id4, isNew, err)
	}
	ls, _ := l.Lookup(id4)
	if ls.String() != "cidr:10.0.0.0/8,reserved:world-ipv4" {
		t.Errorf("labels = %v", ls)
	}
	if got, ok := cache.Lookup(id4); !ok || got != ls {
		t.Error("shared cache does not hold the local identity")
	}
	if id, _, err := l.AllocateCIDR(ctx, netip.MustParsePrefix("::/0")); err != nil || id != ReservedWorldIPv6 {
		t.Errorf("AllocateCIDR(::/0) = %v, %v", id, err)
	}
	if _, _, err := l.Allocate(ctx, mustLabels(t, "k8s:app=web")); !errors.Is(err, ErrWrongScope) {
		t.Errorf("cluster labels: %v", err)
	}
	if _, _, err := l.AllocateCIDR(ctx, netip.Prefix{}); !errors.Is(err, ErrInvalidPrefix) {
		t.Errorf("bad prefix: %v", err)
	}
	fq := mustLabels(t, "fqdn:*.example.com", "cidr:203.0.113.7/32", "reserved:world-ipv4")
	if id, _, err := l.Allocate(ctx, fq); err != nil || !id.IsLocal() {
		t.Errorf("fqdn identity = %v, %v", id, err)
	}
}

func TestWatchSnapshotAndOrder(t *testing.T) {
	ctx := context.Background()
	a := newTestAllocator(t, InProcessConfig{})
	web := mustLabels(t, "k8s:app=web")
	webID, _, _ := a.Allocate(ctx, web)

	snap, w := a.Watch(WatchOptions{})
	defer w.Close()
	if len(snap) != 1 || snap[0] != (Identity{webID, web}) {
		t.Fatalf("snapshot = %v", snap)
	}

	var want []Event
	for i := range 50 {
		ls := mustLabels(t, fmt.Sprintf("k8s:n=%d", i))
		id, _, _ := a.Allocate(ctx, ls)
		a.Allocate(ctx, ls) // a second reference announces nothing
		want = append(want, Event{EventAdded, id, ls})
		if i%3 == 0 {
			a.Release(ctx, id)
			a.Release(ctx, id)
			want = append(want, Event{EventRemoved, id, ls})
		}
	}
	for i, we := range want {
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		got, err := w.Next(tctx)
		cancel()
		if err != nil || got != we {
			t.Fatalf("event %d = %v, %v; want %v", i, got, err, we)
		}
	}
	tctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if e, err := w.Next(tctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("extra event %v, %v", e, err)
	}

	// Closing the allocator delivers what is queued, then nodeplane.ErrClosed.
	extra := mustLabels(t, "k8s:n=last")
	id, _, _ := a.Allocate(ctx, extra)
	a.Close()
	if e, err := w.Next(ctx); err != nil || e != (Event{EventAdded, id, extra}) {
		t.Errorf("queued event after Close = %v, %v", e, err)
	}
	if _, err := w.Next(ctx); !errors.Is(err, nodeplane.ErrClosed) {
		t.Errorf("after the queue: %v", err)
	}
	if _, _, err := a.Allocate(ctx, mustLabels(t, "k8s:n=closed")); !errors.Is(err, nodeplane.ErrClosed) {
		t.Errorf("Allocate after Close = %v", err)
	}
	if _, ok := a.Lookup(id); !ok {
		t.Error("lookups must keep answering after Close")
	}
}

func TestWatchOverflowAndClose(t *testing.T) {
	ctx := context.Background()
	a := newTestAllocator(t, InProcessConfig{})
	_, slow := a.Watch(WatchOptions{MaxBacklog: 10})
	_, fast := a.Watch(WatchOptions{MaxBacklog: 10})
	_, unlimited := a.Watch(WatchOptions{MaxBacklog: -1})
	for i := range 25 {
		a.Allocate(ctx, mustLabels(t, fmt.Sprintf("k8s:n=%d", i)))
		if _, err := fast.Next(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := slow.Next(ctx); !errors.Is(err, ErrWatcherOverflow) {
		t.Errorf("slow watcher: %v, want ErrWatcherOverflow", err)
	}
	if unlimited.Backlog() != 25 {
		t.Errorf("unlimited backlog = %d", unlimited.Backlog())
	}
	unlimited.Close()
	if _, err := unlimited.Next(ctx); !errors.Is(err, nodeplane.ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
	unlimited.Close() // idempotent

	// A watcher blocked in Next wakes up on an event.
	done := make(chan Event)
	go func() {
		e, _ := fast.Next(ctx)
		done <- e
	}()
	time.Sleep(10 * time.Millisecond)
	ls := mustLabels(t, "k8s:wake=up")
	id, _, _ := a.Allocate(ctx, ls)
	select {
	case e := <-done:
		if e != (Event{EventAdded, id, ls}) {
			t.Errorf("woken with %v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("blocked watcher not woken")
	}
}

// TestConcurrentAllocateRelease runs allocators and releasers over
// overlapping label sets and checks that no label set ever has two IDs, no
// ID two label sets, and that everything is freed at the end.
func TestConcurrentAllocateRelease(t *testing.T) {
	ctx := context.Background()
	a := newTestAllocator(t, InProcessConfig{})
	_, w := a.Watch(WatchOptions{MaxBacklog: -1})
	defer w.Close()

	const workers, rounds, sets = 16, 400, 40
	labels := make([]Labels, sets)
	for i := range labels {
		if i%4 == 0 {
			labels[i], _ = CIDRLabels(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16), nodeplane.SingleStack)
		} else {
			labels[i] = mustLabels(t, fmt.Sprintf("k8s:set=%d", i))
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			var held []ID
			for range rounds {
				if len(held) > 0 && rng.IntN(2) == 0 {
					i := rng.IntN(len(held))
					if _, err := a.Release(ctx, held[i]); err != nil {
						errs <- err
						return
					}
					held = append(held[:i], held[i+1:]...)
					continue
				}
				ls := labels[rng.IntN(sets)]
				id, _, err := a.Allocate(ctx, ls)
				if err != nil {
					errs <- err
					return
				}
				// While we hold a reference, the label set must map
				// to this ID and back.
				if got, ok := a.Lookup(id); !ok || got != ls {
					errs <- fmt.Errorf("ID %v held for %v looks up as %v", id, ls, got)
					return
				}
				if got, ok := a.LookupByLabels(ls); !ok || got != id {
					errs <- fmt.Errorf("labels %v held with %v look up as %v", ls, id, got)
					return
				}
				held = append(held, id)
			}
			for _, id := range held {
				if _, err := a.Release(ctx, id); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if snap, _ := a.Watch(WatchOptions{}); len(snap) != 0 {
		t.Fatalf("identities leaked: %v", snap)
	}

	// Replaying the event stream gives a consistent history: every
	// removal matches a live addition, no ID is added twice while live.
	live := map[ID]Labels{}
	for w.Backlog() > 0 {
		e, _ := w.Next(ctx)
		switch e.Kind {
		case EventAdded:
			if _, dup := live[e.ID]; dup {
				t.Fatalf("ID %v added twice", e.ID)
			}
			for id, ls := range live {
				if ls == e.Labels {
					t.Fatalf("labels %v added as %v while live as %v", ls, e.ID, id)
				}
			}
			live[e.ID] = e.Labels
		case EventRemoved:
			if live[e.ID] != e.Labels {
				t.Fatalf("removal %v without matching addition", e)
			}
			delete(live, e.ID)
		}
	}
	if len(live) != 0 {
		t.Fatalf("event stream ends with live identities %v", live)
	}
}

func TestExhaustion(t *testing.T) {
	ctx := context.Background()
	a := newTestAllocator(t, InProcessConfig{})
	// Shrink the cluster range to three IDs to reach its end.
	a.a.cluster.max = a.a.cluster.min + 2
	for i := range 3 {
		if _, _, err := a.Allocate(ctx, mustLabels(t, fmt.Sprintf("k8s:n=%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := a.Allocate(ctx, mustLabels(t, "k8s:n=4")); !errors.Is(err, ErrExhausted) {
		t.Fatalf("fourth allocation: %v", err)
	}
	id, _ := a.LookupByLabels(mustLabels(t, "k8s:n=1"))
	a.Release(ctx, id)
	got, _, err := a.Allocate(ctx, mustLabels(t, "k8s:n=4"))
	if err != nil || got != id {
		t.Errorf("after a release: %v, %v; want the freed %v", got, err, id)
	}
}
