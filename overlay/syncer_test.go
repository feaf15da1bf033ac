package overlay_test

import (
	"context"
	"maps"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/overlay"
	"github.com/nodeplane/nodeplane/overlay/internal/registrytest"
)

// countingWriter records every call the ipcache makes, to check that
// the syncer's changes are incremental.
type countingWriter struct {
	mu      sync.Mutex
	upserts map[netip.Prefix]int
	deletes map[netip.Prefix]int
}

func newCountingWriter() *countingWriter {
	return &countingWriter{upserts: map[netip.Prefix]int{}, deletes: map[netip.Prefix]int{}}
}

func (w *countingWriter) UpsertPrefix(p netip.Prefix, _ ipcache.Entry) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.upserts[p]++
	return nil
}

func (w *countingWriter) DeletePrefix(p netip.Prefix) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.deletes[p]++
	return nil
}

func (w *countingWriter) reset() (up, del map[netip.Prefix]int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	up, del = w.upserts, w.deletes
	w.upserts, w.deletes = map[netip.Prefix]int{}, map[netip.Prefix]int{}
	return up, del
}

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

// contents returns the ipcache as a map.
func contents(c *ipcache.IPCache) map[netip.Prefix]ipcache.Entry {
	return maps.Collect(c.All())
}

// waitFor polls until the ipcache equals want.
func waitFor(t testing.TB, c *ipcache.IPCache, want map[netip.Prefix]ipcache.Entry) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !maps.Equal(contents(c), want) {
		if time.Now().After(deadline) {
			t.Fatalf("ipcache\n%v\nwant\n%v", contents(c), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func world(tep string) ipcache.Entry {
	e := ipcache.Entry{Identity: identity.ReservedWorld}
	if tep != "" {
		e.TunnelEndpoint = addr(tep)
	}
	return e
}

var remoteNode = ipcache.Entry{Identity: identity.ReservedRemoteNode}

// RunSyncer starts a syncer for node local on r and c; the test's cleanup
// stops it and checks that it returned nil.
func runSyncer(t testing.TB, r overlay.Registry, c *ipcache.IPCache, local string, mode overlay.Mode) {
	t.Helper()
	s, err := overlay.NewSyncer(overlay.SyncerConfig{Registry: r, IPCache: c, LocalNode: local, Mode: mode})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("syncer: %v", err)
		}
	})
}

// TestSyncer follows nodes joining, changing and leaving an in-process
// registry and compares the ipcache with entries written out by hand
// (Cilium's: pod CIDR → world + tunnel endpoint, node address →
// remote-node), and the writer's calls with the changes.
func TestSyncer(t *testing.T) {
	ctx := context.Background()
	r := overlay.NewLocalRegistry()
	defer r.Close()
	c := ipcache.New()
	w := newCountingWriter()
	if err := c.AddWriter(w); err != nil {
		t.Fatal(err)
	}
	// A local pod's entry, not the syncer's: it must survive.
	pod := pfx("10.1.0.5/32")
	if err := c.Upsert(pod, ipcache.Entry{Identity: 1000}); err != nil {
		t.Fatal(err)
	}
	self := registrytest.Node("node-a", []string{"192.168.0.1"}, "10.1.0.0/24")
	if err := r.Register(ctx, self); err != nil {
		t.Fatal(err)
	}
	b := registrytest.Node("node-b", []string{"192.168.0.2", "fd00::2"}, "10.1.1.0/24", "fd01:0:0:1::/64")
	if err := r.Register(ctx, b); err != nil {
		t.Fatal(err)
	}
	runSyncer(t, r, c, "node-a", overlay.ModeTunnel)

	want := map[netip.Prefix]ipcache.Entry{
		pod:                    {Identity: 1000},
		pfx("10.1.1.0/24"):     world("192.168.0.2"),
		pfx("fd01:0:0:1::/64"): world("fd00::2"),
		pfx("192.168.0.2/32"):  remoteNode,
		pfx("fd00::2/128"):     remoteNode,
	}
	waitFor(t, c, want)
	w.reset()

	// node-c joins with an IPv6-only underlay: its IPv4 pods are reached
	// over IPv6.
	cn := registrytest.Node("node-c", []string{"fd00::3"}, "10.1.2.0/24")
	if err := r.Register(ctx, cn); err != nil {
		t.Fatal(err)
	}
	want[pfx("10.1.2.0/24")] = world("fd00::3")
	want[pfx("fd00::3/128")] = remoteNode
	waitFor(t, c, want)
	if up, del := w.reset(); len(up) != 2 || len(del) != 0 {
		t.Errorf("node-c joining wrote %v, deleted %v; want its 2 entries only", up, del)
	}

	// node-b moves its IPv4 underlay address: only what changed is written.
	b.Addresses[0] = addr("192.168.0.22")
	if err := r.Register(ctx, b); err != nil {
		t.Fatal(err)
	}
	delete(want, pfx("192.168.0.2/32"))
	want[pfx("192.168.0.22/32")] = remoteNode
	want[pfx("10.1.1.0/24")] = world("192.168.0.22")
	waitFor(t, c, want)
	if up, del := w.reset(); len(up) != 2 || len(del) != 1 || del[pfx("192.168.0.2/32")] != 1 {
		t.Errorf("node-b moving wrote %v, deleted %v", up, del)
	}

	// node-b leaves.
	if err := r.Deregister(ctx, "node-b"); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"10.1.1.0/24", "fd01:0:0:1::/64", "192.168.0.22/32", "fd00::2/128"} {
		delete(want, pfx(p))
	}
	waitFor(t, c, want)
	if up, del := w.reset(); len(up) != 0 || len(del) != 4 {
		t.Errorf("node-b leaving wrote %v, deleted %v", up, del)
	}
}

// TestSyncerHostAddresses: a node's host addresses become remote-node
// entries, through the tunnel in tunnel mode, not in native mode.
func TestSyncerHostAddresses(t *testing.T) {
	for _, mode := range []overlay.Mode{overlay.ModeTunnel, overlay.ModeNative} {
		r := overlay.NewLocalRegistry()
		defer r.Close()
		c := ipcache.New()
		n := registrytest.Node("node-b", []string{"192.168.0.2"}, "10.1.1.0/24")
		n.HostAddresses = []netip.Addr{addr("10.1.1.1")}
		if err := r.Register(context.Background(), n); err != nil {
			t.Fatal(err)
		}
		runSyncer(t, r, c, "node-a", mode)
		tep, host := "192.168.0.2", ipcache.Entry{Identity: identity.ReservedRemoteNode, TunnelEndpoint: addr("192.168.0.2")}
		if mode == overlay.ModeNative {
			tep, host = "", remoteNode
		}
		waitFor(t, c, map[netip.Prefix]ipcache.Entry{pfx("10.1.1.0/24"): world(tep), pfx("192.168.0.2/32"): remoteNode, pfx("10.1.1.1/32"): host})
	}
}

// TestSyncerNative: in native-routing mode entries carry no tunnel
// endpoint.
func TestSyncerNative(t *testing.T) {
	r := overlay.NewLocalRegistry()
	defer r.Close()
	c := ipcache.New()
	if err := r.Register(context.Background(), registrytest.Node("node-b", []string{"192.168.0.2"}, "10.1.1.0/24")); err != nil {
		t.Fatal(err)
	}
	runSyncer(t, r, c, "node-a", overlay.ModeNative)
	waitFor(t, c, map[netip.Prefix]ipcache.Entry{pfx("10.1.1.0/24"): world(""), pfx("192.168.0.2/32"): remoteNode})
}

func TestNewSyncerInvalid(t *testing.T) {
	r := overlay.NewLocalRegistry()
	defer r.Close()
	for _, cfg := range []overlay.SyncerConfig{
		{IPCache: ipcache.New(), LocalNode: "a"},
		{Registry: r, LocalNode: "a"},
		{Registry: r, IPCache: ipcache.New()},
		{Registry: r, IPCache: ipcache.New(), LocalNode: "a", Mode: 7},
	} {
		if _, err := overlay.NewSyncer(cfg); err == nil {
			t.Errorf("NewSyncer(%+v) accepted", cfg)
		}
	}
}
