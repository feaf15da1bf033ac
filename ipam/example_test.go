package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/nodeplane/nodeplane/ipam"
)

func Example() {
	pool, err := ipam.New(ipam.Config{
		Prefixes: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/112")},
		// The node's router address; .0 and .255 are never handed out anyway.
		Reserved: []netip.Addr{netip.MustParseAddr("10.244.1.1")},
	})
	if err != nil {
		panic(err)
	}

	// A CNI ADD for a dual-stack pod.
	v4, v6, err := pool.AllocateNextDual("9f1c2e/eth0")
	if err != nil {
		panic(err)
	}
	fmt.Println("pod:", v4, v6)

	// A single-stack one.
	a, _ := pool.AllocateNext(ipam.IPv4, "77ab01/eth0")
	fmt.Println("pod:", a)

	owner, _ := pool.Owner(v4)
	fmt.Println(v4, "belongs to", owner)

	// CNI DEL releases whatever the container held; running it twice is fine.
	released, _ := pool.ReleaseOwner("9f1c2e/eth0")
	fmt.Println("released:", released)
	fmt.Println("IPv4 used:", pool.Used(ipam.IPv4), "free:", pool.Free(ipam.IPv4))

	// The rotating cursor does not hand the released address out again yet.
	a, _ = pool.AllocateNext(ipam.IPv4, "c0ffee/eth0")
	fmt.Println("next pod:", a)
	// Output:
	// pod: 10.244.1.2 fd00:244:1::1
	// pod: 10.244.1.3
	// 10.244.1.2 belongs to 9f1c2e/eth0
	// released: [10.244.1.2 fd00:244:1::1]
	// IPv4 used: 1 free: 252
	// next pod: 10.244.1.4
}

func ExamplePool_Allocate() {
	pool, _ := ipam.New(ipam.Config{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}})
	a := netip.MustParseAddr("10.0.0.10")
	if err := pool.Allocate(a, "db-0/eth0"); err != nil {
		panic(err)
	}

	err := pool.Allocate(a, "db-1/eth0")
	var taken *ipam.AllocatedError
	if errors.As(err, &taken) {
		fmt.Println(taken.Addr, "is held by", taken.Owner)
	}
	fmt.Println(errors.Is(pool.Allocate(netip.MustParseAddr("10.0.0.255"), "x"), ipam.ErrReserved))
	fmt.Println(errors.Is(pool.Allocate(netip.MustParseAddr("10.0.1.1"), "x"), ipam.ErrOutOfRange))
	// Output:
	// 10.0.0.10 is held by db-0/eth0
	// true
	// true
}

func ExampleExhaustedError() {
	pool, _ := ipam.New(ipam.Config{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/30")}})
	for i := range 3 {
		_, err := pool.AllocateNext(ipam.IPv4, fmt.Sprint("pod-", i))
		if errors.Is(err, ipam.ErrExhausted) {
			fmt.Println(err)
		}
	}
	// Grow the pool, for example with a further node CIDR.
	pool.AddPrefix(netip.MustParsePrefix("10.0.0.4/30"))
	a, _ := pool.AllocateNext(ipam.IPv4, "pod-2")
	fmt.Println(a)
	// Output:
	// allocate next IPv4 address for "pod-2": IPv4 pool exhausted (10.0.0.0/30)
	// 10.0.0.5
}

// A pool with a state file survives restarts; the caller collects the
// owners that went away while it was down.
func ExampleStateFile() {
	dir, _ := os.MkdirTemp("", "ipam")
	defer os.RemoveAll(dir)
	state, _ := ipam.NewStateFile(filepath.Join(dir, "pool.state"))
	cfg := ipam.Config{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, State: state}

	pool, _ := ipam.New(cfg)
	for _, c := range []string{"a/eth0", "b/eth0", "c/eth0"} {
		pool.AllocateNext(ipam.IPv4, c)
	}

	// The agent restarts. Container b died meanwhile.
	pool, err := ipam.New(cfg)
	if err != nil {
		panic(err)
	}
	running := map[string]bool{"a/eth0": true, "c/eth0": true}
	for _, owner := range pool.Snapshot().Owners() {
		if !running[owner] {
			released, _ := pool.ReleaseOwner(owner)
			fmt.Println("collected", owner, released)
		}
	}
	for _, al := range pool.Snapshot().Allocations {
		fmt.Println(al.Addr, al.Owner)
	}
	a, _ := pool.AllocateNext(ipam.IPv4, "d/eth0")
	fmt.Println("next:", a)
	// Output:
	// collected b/eth0 [10.0.0.2]
	// 10.0.0.1 a/eth0
	// 10.0.0.3 c/eth0
	// next: 10.0.0.4
}

// A CNI plugin runs as one process per ADD or DEL, possibly many at once.
// Each holds the state file's lock while it restores, changes and saves
// the pool.
func ExampleStateFile_Lock() {
	dir, _ := os.MkdirTemp("", "ipam")
	defer os.RemoveAll(dir)
	cniAdd := func(ctx context.Context, container string) (netip.Addr, error) {
		state, err := ipam.NewStateFile(filepath.Join(dir, "pool.state"))
		if err != nil {
			return netip.Addr{}, err
		}
		lock, err := state.Lock(ctx)
		if err != nil {
			return netip.Addr{}, err
		}
		defer lock.Close()
		pool, err := ipam.New(ipam.Config{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}, State: state})
		if err != nil {
			return netip.Addr{}, err
		}
		return pool.AllocateNext(ipam.IPv4, container+"/eth0")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range []string{"a", "b"} {
		addr, err := cniAdd(ctx, c)
		fmt.Println(c, addr, err)
	}
	// Output:
	// a 10.0.0.1 <nil>
	// b 10.0.0.2 <nil>
}

func ExampleClusterPool() {
	ctx := context.Background()
	cluster, err := ipam.NewClusterPool(ipam.ClusterConfig{
		CIDRs:            []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/96")},
		NodeMaskSizeIPv4: 24,
		NodeMaskSizeIPv6: 112,
	})
	if err != nil {
		panic(err)
	}
	for _, node := range []string{"worker-1", "worker-2"} {
		cidrs, _ := cluster.AllocateNode(ctx, node)
		fmt.Println(node, cidrs)
	}
	// worker-1's host pool ran out of IPv4 addresses.
	more, _ := cluster.Expand(ctx, "worker-1", ipam.IPv4)
	fmt.Println("worker-1 +", more)

	_, err = ipam.NewClusterPool(ipam.ClusterConfig{
		CIDRs:            []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		NodeMaskSizeIPv4: 12,
	})
	fmt.Println(errors.Is(err, ipam.ErrMaskSize))
	// Output:
	// worker-1 [10.244.0.0/24 fd00:244::/112]
	// worker-2 [10.244.1.0/24 fd00:244::1:0/112]
	// worker-1 + 10.244.2.0/24
	// true
}
