// Package clustertest is the conformance suite every ipam.ClusterAllocator
// passes: the in-process ClusterPool and the etcd-backed pool run the same
// cases, so they cannot drift apart in semantics.
package clustertest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/nodeplane/nodeplane/ipam"
)

// NewFunc returns a fresh, empty allocator for cfg, or the error the
// configuration deserves.
type NewFunc func(t *testing.T, cfg ipam.ClusterConfig) (ipam.ClusterAllocator, error)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func prefixes(ss ...string) []netip.Prefix {
	ps := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		ps[i] = pfx(s)
	}
	return ps
}

func mustNew(t *testing.T, newAlloc NewFunc, cfg ipam.ClusterConfig) ipam.ClusterAllocator {
	t.Helper()
	a, err := newAlloc(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// Run runs the suite.
func Run(t *testing.T, newAlloc NewFunc) {
	t.Run("Config", func(t *testing.T) { testConfig(t, newAlloc) })
	t.Run("AllocateNode", func(t *testing.T) { testAllocateNode(t, newAlloc) })
	t.Run("ExpandAndExhaust", func(t *testing.T) { testExpandAndExhaust(t, newAlloc) })
	t.Run("Occupy", func(t *testing.T) { testOccupy(t, newAlloc) })
	t.Run("Release", func(t *testing.T) { testRelease(t, newAlloc) })
	t.Run("NodeNames", func(t *testing.T) { testNodeNames(t, newAlloc) })
	t.Run("HugeIPv6", func(t *testing.T) { testHugeIPv6(t, newAlloc) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, newAlloc) })
}

func testConfig(t *testing.T, newAlloc NewFunc) {
	for _, tc := range []struct {
		name string
		cfg  ipam.ClusterConfig
		want error
	}{
		{"no CIDRs", ipam.ClusterConfig{}, ipam.ErrInvalid},
		{"host bits", ipam.ClusterConfig{CIDRs: prefixes("10.0.0.1/16")}, ipam.ErrInvalid},
		{"overlap", ipam.ClusterConfig{CIDRs: prefixes("10.0.0.0/8", "10.1.0.0/16")}, ipam.ErrOverlap},
		{"node CIDR larger than cluster", ipam.ClusterConfig{CIDRs: prefixes("10.0.0.0/16"), NodeMaskSizeIPv4: 8}, ipam.ErrMaskSize},
		{"default too large", ipam.ClusterConfig{CIDRs: prefixes("10.0.0.0/25")}, ipam.ErrMaskSize},
		{"IPv6 node CIDR larger", ipam.ClusterConfig{CIDRs: prefixes("fd00::/112"), NodeMaskSizeIPv6: 64}, ipam.ErrMaskSize},
		{"mask beyond address", ipam.ClusterConfig{CIDRs: prefixes("10.0.0.0/16"), NodeMaskSizeIPv4: 33}, ipam.ErrMaskSize},
		{"negative mask", ipam.ClusterConfig{CIDRs: prefixes("10.0.0.0/16"), NodeMaskSizeIPv6: -1}, ipam.ErrMaskSize},
	} {
		if _, err := newAlloc(t, tc.cfg); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

func testAllocateNode(t *testing.T, newAlloc NewFunc) {
	ctx := context.Background()
	a := mustNew(t, newAlloc, ipam.ClusterConfig{CIDRs: prefixes("10.0.0.0/16", "fd00::/104")})
	got, err := a.AllocateNode(ctx, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	if want := prefixes("10.0.0.0/24", "fd00::/112"); !slices.Equal(got, want) {
		t.Fatalf("node-a got %v, want %v (default masks /24 and /112)", got, want)
	}
	again, err := a.AllocateNode(ctx, "node-a")
	if err != nil || !slices.Equal(again, got) {
		t.Fatalf("second AllocateNode = %v, %v; want the same CIDRs", again, err)
	}
	b, err := a.AllocateNode(ctx, "node-b")
	if err != nil {
		t.Fatal(err)
	}
	if want := prefixes("10.0.1.0/24", "fd00::1:0/112"); !slices.Equal(b, want) {
		t.Fatalf("node-b got %v, want %v", b, want)
	}
	nodes, err := a.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 || !slices.Equal(nodes["node-a"], got) || !slices.Equal(nodes["node-b"], b) {
		t.Fatalf("Nodes = %v", nodes)
	}
	if cidrs, err := a.NodeCIDRs(ctx, "node-c"); err != nil || len(cidrs) != 0 {
		t.Fatalf("NodeCIDRs of an unknown node = %v, %v", cidrs, err)
	}
}

func testExpandAndExhaust(t *testing.T, newAlloc NewFunc) {
	ctx := context.Background()
	a := mustNew(t, newAlloc, ipam.ClusterConfig{
		CIDRs:            prefixes("10.0.0.0/22", "fd00::/63"),
		NodeMaskSizeIPv4: 24, NodeMaskSizeIPv6: 64,
	})
	if _, err := a.AllocateNode(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	p, err := a.Expand(ctx, "n1", ipam.IPv4)
	if err != nil || p != pfx("10.0.1.0/24") {
		t.Fatalf("Expand = %v, %v", p, err)
	}
	if cidrs, _ := a.NodeCIDRs(ctx, "n1"); !slices.Equal(cidrs, prefixes("10.0.0.0/24", "10.0.1.0/24", "fd00::/64")) {
		t.Fatalf("n1 holds %v", cidrs)
	}
	if _, err := a.AllocateNode(ctx, "n2"); err != nil { // takes the last IPv6 /64
		t.Fatal(err)
	}
	// n3 would get an IPv4 CIDR but no IPv6 one: it gets neither.
	_, err = a.AllocateNode(ctx, "n3")
	var ex *ipam.ExhaustedError
	if !errors.Is(err, ipam.ErrExhausted) || !errors.As(err, &ex) || ex.Family != ipam.IPv6 {
		t.Fatalf("AllocateNode with IPv6 exhausted: %v", err)
	}
	if cidrs, _ := a.NodeCIDRs(ctx, "n3"); len(cidrs) != 0 {
		t.Fatalf("failed AllocateNode left n3 with %v", cidrs)
	}
	if p, err := a.Expand(ctx, "n3", ipam.IPv4); err != nil || p != pfx("10.0.3.0/24") {
		t.Fatalf("IPv4 still free after the failed call: %v, %v", p, err)
	}
	if _, err := a.Expand(ctx, "n3", ipam.IPv4); !errors.Is(err, ipam.ErrExhausted) {
		t.Fatalf("Expand on a full IPv4 cluster: %v", err)
	}
	if _, err := a.Expand(ctx, "n3", ipam.Family(0)); !errors.Is(err, ipam.ErrInvalid) {
		t.Fatalf("Expand with a bad family: %v", err)
	}
	v4only := mustNew(t, newAlloc, ipam.ClusterConfig{CIDRs: prefixes("10.0.0.0/16")})
	if _, err := v4only.Expand(ctx, "n", ipam.IPv6); !errors.Is(err, ipam.ErrInvalid) {
		t.Fatalf("IPv6 Expand on an IPv4 cluster: %v", err)
	}
	if got, err := v4only.AllocateNode(ctx, "n"); err != nil || !slices.Equal(got, prefixes("10.0.0.0/24")) {
		t.Fatalf("IPv4-only AllocateNode = %v, %v", got, err)
	}
}

func testOccupy(t *testing.T, newAlloc NewFunc) {
	ctx := context.Background()
	a := mustNew(t, newAlloc, ipam.ClusterConfig{CIDRs: prefixes("10.0.0.0/16", "fd00::/104")})
	if err := a.Occupy(ctx, "n1", pfx("10.0.0.0/24")); err != nil {
		t.Fatal(err)
	}
	if err := a.Occupy(ctx, "n1", pfx("10.0.0.0/24")); err != nil {
		t.Fatalf("occupying again: %v", err)
	}
	var ae *ipam.AllocatedError
	if err := a.Occupy(ctx, "n2", pfx("10.0.0.0/24")); !errors.As(err, &ae) || ae.Owner != "n1" || ae.CIDR != pfx("10.0.0.0/24") {
		t.Fatalf("occupying another node's CIDR: %v", err)
	}
	for _, tc := range []struct {
		cidr netip.Prefix
		want error
	}{
		{pfx("10.0.0.0/25"), ipam.ErrInvalid},
		{pfx("10.0.1.1/24"), ipam.ErrInvalid},
		{pfx("10.1.0.0/24"), ipam.ErrOutOfRange},
		{pfx("fd01::/112"), ipam.ErrOutOfRange},
		{netip.Prefix{}, ipam.ErrInvalid},
	} {
		if err := a.Occupy(ctx, "n2", tc.cidr); !errors.Is(err, tc.want) {
			t.Errorf("Occupy(%s): %v, want %v", tc.cidr, err, tc.want)
		}
	}
	// Next allocations go around occupied CIDRs.
	got, err := a.AllocateNode(ctx, "n2")
	if err != nil || !slices.Equal(got, prefixes("10.0.1.0/24", "fd00::/112")) {
		t.Fatalf("AllocateNode after Occupy = %v, %v", got, err)
	}
}

func testRelease(t *testing.T, newAlloc NewFunc) {
	ctx := context.Background()
	a := mustNew(t, newAlloc, ipam.ClusterConfig{CIDRs: prefixes("10.0.0.0/23", "fd00::/111")})
	n1, _ := a.AllocateNode(ctx, "n1")
	if err := a.ReleaseCIDR(ctx, "n2", n1[0]); !errors.Is(err, ipam.ErrNotAllocated) {
		t.Fatalf("releasing another node's CIDR: %v", err)
	}
	if err := a.ReleaseCIDR(ctx, "n1", pfx("10.0.1.0/24")); !errors.Is(err, ipam.ErrNotAllocated) {
		t.Fatalf("releasing a free CIDR: %v", err)
	}
	if err := a.ReleaseCIDR(ctx, "n1", pfx("10.2.0.0/24")); !errors.Is(err, ipam.ErrOutOfRange) {
		t.Fatalf("releasing a CIDR outside the cluster: %v", err)
	}
	if err := a.ReleaseCIDR(ctx, "n1", n1[0]); err != nil {
		t.Fatal(err)
	}
	if got, _ := a.NodeCIDRs(ctx, "n1"); !slices.Equal(got, n1[1:]) {
		t.Fatalf("after ReleaseCIDR n1 holds %v", got)
	}
	released, err := a.ReleaseNode(ctx, "n1")
	if err != nil || !slices.Equal(released, n1[1:]) {
		t.Fatalf("ReleaseNode = %v, %v", released, err)
	}
	if released, err := a.ReleaseNode(ctx, "n1"); err != nil || len(released) != 0 {
		t.Fatalf("second ReleaseNode = %v, %v", released, err)
	}
	if nodes, _ := a.Nodes(ctx); len(nodes) != 0 {
		t.Fatalf("Nodes after release = %v", nodes)
	}
	// Released CIDRs come back, the rotation offering the others first.
	n2, err := a.AllocateNode(ctx, "n2")
	if err != nil || !slices.Equal(n2, prefixes("10.0.1.0/24", "fd00::1:0/112")) {
		t.Fatalf("n2 = %v, %v", n2, err)
	}
	n3, err := a.AllocateNode(ctx, "n3")
	if err != nil || !slices.Equal(n3, n1) {
		t.Fatalf("n3 = %v, %v; want n1's old %v", n3, err, n1)
	}
}

func testNodeNames(t *testing.T, newAlloc NewFunc) {
	ctx := context.Background()
	a := mustNew(t, newAlloc, ipam.ClusterConfig{CIDRs: prefixes("10.0.0.0/16")})
	for _, bad := range []string{"", "a/b", "a b", "a\nb", "\xff", string(make([]byte, 254))} {
		if _, err := a.AllocateNode(ctx, bad); !errors.Is(err, ipam.ErrInvalid) {
			t.Errorf("AllocateNode(%q): %v", bad, err)
		}
	}
	if nodes, _ := a.Nodes(ctx); len(nodes) != 0 {
		t.Fatalf("bad names allocated: %v", nodes)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := a.AllocateNode(cancelled, "n"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

func testHugeIPv6(t *testing.T, newAlloc NewFunc) {
	ctx := context.Background()
	// 2^80 node CIDRs: only a sparse allocator gets here at all.
	a := mustNew(t, newAlloc, ipam.ClusterConfig{CIDRs: prefixes("fd00::/32"), NodeMaskSizeIPv6: 112})
	for i := range 3 {
		got, err := a.AllocateNode(ctx, fmt.Sprint("n", i))
		if err != nil {
			t.Fatal(err)
		}
		want := netip.PrefixFrom(netip.AddrFrom16([16]byte{0: 0xfd, 13: byte(i)}), 112)
		if !slices.Equal(got, []netip.Prefix{want}) {
			t.Fatalf("n%d got %v, want %v", i, got, want)
		}
	}
	last := pfx("fd00:0:ffff:ffff:ffff:ffff:ffff:0/112")
	if err := a.Occupy(ctx, "far", last); err != nil {
		t.Fatal(err)
	}
}

// testConcurrent has many "nodes" ask at once; the CIDRs they get must be
// disjoint.
func testConcurrent(t *testing.T, newAlloc NewFunc) {
	ctx := context.Background()
	a := mustNew(t, newAlloc, ipam.ClusterConfig{CIDRs: prefixes("10.0.0.0/16", "fd00::/96")})
	const nodes = 16
	var wg sync.WaitGroup
	results := make([][]netip.Prefix, nodes)
	for i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := fmt.Sprint("node-", i)
			cidrs, err := a.AllocateNode(ctx, node)
			if err != nil {
				t.Error(err)
				return
			}
			more, err := a.Expand(ctx, node, ipam.IPv4)
			if err != nil {
				t.Error(err)
				return
			}
			results[i] = append(cidrs, more)
		}()
	}
	wg.Wait()
	seen := map[netip.Prefix]int{}
	for i, cidrs := range results {
		if len(cidrs) != 3 {
			t.Fatalf("node-%d got %v", i, cidrs)
		}
		for _, p := range cidrs {
			if j, dup := seen[p]; dup {
				t.Fatalf("%s given to node-%d and node-%d", p, j, i)
			}
			seen[p] = i
		}
	}
	all, err := a.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, cidrs := range results {
		got := all[fmt.Sprint("node-", i)]
		want := slices.SortedFunc(slices.Values(cidrs), func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		if !slices.Equal(got, want) {
			t.Fatalf("node-%d: allocator says %v, the node got %v", i, got, want)
		}
	}
}
