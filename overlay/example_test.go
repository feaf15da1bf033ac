package overlay_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/overlay"
)

// Two nodes register; node-a's syncer writes node-b's pod CIDR (with its
// tunnel endpoint) and underlay address into node-a's ipcache. A third
// node claiming an overlapping CIDR is refused.
func Example() {
	ctx := context.Background()
	reg := overlay.NewLocalRegistry()
	defer reg.Close()
	for _, n := range []overlay.Node{
		{Name: "node-a", Addresses: []netip.Addr{netip.MustParseAddr("192.168.0.1")}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}},
		{Name: "node-b", Addresses: []netip.Addr{netip.MustParseAddr("192.168.0.2")}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.1.0/24")}},
	} {
		if err := reg.Register(ctx, n); err != nil {
			panic(err)
		}
	}
	err := reg.Register(ctx, overlay.Node{Name: "node-c", Addresses: []netip.Addr{netip.MustParseAddr("192.168.0.3")}, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.1.128/25")}})
	fmt.Println(errors.Is(err, overlay.ErrPodCIDROverlap), err)

	ipc := ipcache.New()
	s, err := overlay.NewSyncer(overlay.SyncerConfig{Registry: reg, IPCache: ipc, LocalNode: "node-a"})
	if err != nil {
		panic(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- s.Run(sctx) }()
	for ipc.Len() < 2 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	for _, p := range []string{"10.1.1.0/24", "192.168.0.2/32"} {
		e, _ := ipc.Get(netip.MustParsePrefix(p))
		fmt.Printf("%s: identity %d, tunnel endpoint %v\n", p, e.Identity, e.TunnelEndpoint)
	}
	// Output:
	// true register node: node node-c: pod CIDR 10.1.1.128/25 overlaps pod CIDR 10.1.1.0/24 of node node-b
	// 10.1.1.0/24: identity 2, tunnel endpoint 192.168.0.2
	// 192.168.0.2/32: identity 6, tunnel endpoint invalid IP
}
