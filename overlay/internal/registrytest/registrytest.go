// Package registrytest is the conformance test every overlay.Registry
// passes: the in-process one and the etcd one run the same cases.
package registrytest

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/overlay"
)

// Node builds a node from strings.
func Node(name string, addrs []string, cidrs ...string) overlay.Node {
	n := overlay.Node{Name: name}
	for _, a := range addrs {
		n.Addresses = append(n.Addresses, netip.MustParseAddr(a))
	}
	for _, c := range cidrs {
		n.PodCIDRs = append(n.PodCIDRs, netip.MustParsePrefix(c))
	}
	return n
}

// Next returns the watcher's next event within 10s.
func Next(t testing.TB, w *identity.Watcher[overlay.Event]) overlay.Event {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev, err := w.Next(ctx)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	return ev
}

// Run runs the conformance cases against registries from newRegistry,
// each of which must start empty.
func Run(t *testing.T, newRegistry func(t *testing.T) overlay.Registry) {
	ctx := context.Background()
	a := Node("node-a", []string{"192.168.0.1", "fd00::1"}, "10.1.0.0/24", "fd01:0:0:1::/64")
	a.HostAddresses = []netip.Addr{netip.MustParseAddr("fd01:0:0:1::1"), netip.MustParseAddr("10.1.0.1")}
	b := Node("node-b", []string{"192.168.0.2"}, "10.1.1.0/24")

	t.Run("Invalid", func(t *testing.T) {
		r := newRegistry(t)
		for _, n := range []overlay.Node{
			Node("", []string{"192.168.0.1"}),
			Node("bad/name", []string{"192.168.0.1"}),
			Node("no-address", nil, "10.0.0.0/24"),
			Node("unspecified", []string{"0.0.0.0"}),
			Node("zoned", []string{"fe80::1%eth0"}),
			{Name: "host-bits", Addresses: []netip.Addr{netip.MustParseAddr("192.168.0.1")}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/24")}},
			{Name: "host-outside", Addresses: []netip.Addr{netip.MustParseAddr("192.168.0.1")}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")},
				HostAddresses: []netip.Addr{netip.MustParseAddr("10.0.1.1")}},
			{Name: "host-two", Addresses: []netip.Addr{netip.MustParseAddr("192.168.0.1")}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")},
				HostAddresses: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")}},
		} {
			if err := r.Register(ctx, n); !errors.Is(err, overlay.ErrInvalidNode) {
				t.Errorf("Register(%+v) = %v, want ErrInvalidNode", n, err)
			}
		}
		if err := r.Register(ctx, Node("self-overlap", []string{"192.168.0.1"}, "10.0.0.0/16", "10.0.1.0/24")); !errors.Is(err, overlay.ErrPodCIDROverlap) {
			t.Errorf("own CIDRs overlapping: %v", err)
		}
		if nodes, err := r.Nodes(ctx); err != nil || len(nodes) != 0 {
			t.Errorf("after invalid registrations: %v, %v; want none", nodes, err)
		}
	})

	t.Run("Overlap", func(t *testing.T) {
		r := newRegistry(t)
		for _, n := range []overlay.Node{a, b} {
			if err := r.Register(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
		for _, c := range []overlay.Node{
			Node("node-c", []string{"192.168.0.3"}, "10.1.0.128/25"),
			Node("node-c", []string{"192.168.0.3"}, "10.0.0.0/8"),
			Node("node-c", []string{"192.168.0.3"}, "10.9.0.0/24", "fd01::/48"),
		} {
			err := r.Register(ctx, c)
			var oe *overlay.OverlapError
			if !errors.As(err, &oe) || !errors.Is(err, overlay.ErrPodCIDROverlap) {
				t.Fatalf("Register(%v) = %v, want an OverlapError", c.PodCIDRs, err)
			}
			if oe.Node != "node-c" || (oe.OtherNode != "node-a" && oe.OtherNode != "node-b") || !strings.Contains(err.Error(), oe.OtherNode) {
				t.Errorf("error %q does not name both nodes", err)
			}
		}
		// A node may change its own CIDRs; the refused ones left no trace.
		a2 := Node("node-a", []string{"192.168.0.1"}, "10.1.2.0/24")
		if err := r.Register(ctx, a2); err != nil {
			t.Fatalf("node-a changing its own CIDRs: %v", err)
		}
		nodes, err := r.Nodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes) != 2 || !nodes[0].Equal(mustCanon(t, a2)) || !nodes[1].Equal(mustCanon(t, b)) {
			t.Errorf("Nodes = %+v", nodes)
		}
	})

	t.Run("Watch", func(t *testing.T) {
		r := newRegistry(t)
		if err := r.Register(ctx, a); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		nodes, w, err := r.Watch(wctx)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if len(nodes) != 1 || !nodes[0].Equal(mustCanon(t, a)) {
			t.Fatalf("snapshot %+v, want node-a", nodes)
		}
		if err := r.Register(ctx, b); err != nil {
			t.Fatal(err)
		}
		if ev := Next(t, w); ev.Deleted || !ev.Node.Equal(mustCanon(t, b)) {
			t.Fatalf("event %+v, want node-b joining", ev)
		}
		if err := r.Deregister(ctx, "node-a"); err != nil {
			t.Fatal(err)
		}
		if ev := Next(t, w); !ev.Deleted || ev.Node.Name != "node-a" {
			t.Fatalf("event %+v, want node-a leaving", ev)
		}
		if err := r.Deregister(ctx, "node-a"); !errors.Is(err, overlay.ErrNodeNotFound) {
			t.Errorf("deregistering twice: %v", err)
		}
		cancel()
		deadline, dcancel := context.WithTimeout(ctx, 10*time.Second)
		defer dcancel()
		if _, err := w.Next(deadline); err == nil || deadline.Err() != nil {
			t.Errorf("watcher after its context ended: %v (deadline %v)", err, deadline.Err())
		}
	})
}

func mustCanon(t testing.TB, n overlay.Node) overlay.Node {
	t.Helper()
	c, err := overlay.Canonical(n)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
