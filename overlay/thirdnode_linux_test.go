package overlay_test

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/overlay"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// TestPrivilegedThirdNode: while the frontend on A keeps talking to the
// backend on B, a third node joins through the etcd registry, A's pod
// reaches a pod on it, and then its process dies: its lease (2s) expires,
// A's ipcache forgets its pod CIDR and A no longer sends it anything. No
// component restarts, and the A–B traffic never fails.
func TestPrivilegedThirdNode(t *testing.T) {
	w := newTwoNodes(t, overlay.ModeTunnel)

	ctx, stop := context.WithCancel(context.Background())
	var ok, failed atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if err := echo(w.front, w.back.addr, 8080); err != nil {
				failed.Add(1)
				t.Logf("background connection failed: %v", err)
			} else {
				ok.Add(1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	defer func() { stop(); <-done }()

	nsC := testutils.NewNetNS(t)
	addrC := netip.MustParseAddr("192.168.50.3")
	w.plug(t, nsC, addrC, "pc")
	// node-c follows the cluster through one client and announces itself
	// through another, with a short lease, which it later loses.
	announceCli := w.srv.Client(t)
	announce := newEtcdRegistry(t, announceCli, 2*time.Second)
	c := newTestNode(t, overlay.ModeTunnel, "node-c", nsC, w.underlay(addrC), w.pool, newEtcdRegistry(t, w.srv.Client(t), 0), announce, "")
	cidrC := c.podCIDR
	const idC identity.ID = 3001
	podC := c.addPod(t, 1, idC, 10)
	if err := podC.ep.Policy().Apply(map[mapstate.Key]mapstate.Entry{
		{Identity: idFrontend, Direction: mapstate.Ingress, Protocol: 6, Port: 8080, PortPrefixLen: 16}: {},
	}, nil); err != nil {
		t.Fatal(err)
	}
	testutils.ServeEcho(t, podC.ns, "tcp4", netip.AddrPortFrom(podC.addr, 8080).String())

	waitCond(t, "node-a to learn node-c", func() bool {
		e, ok := w.a.ipc.Get(cidrC)
		return ok && e.TunnelEndpoint == addrC
	})
	joined := time.Now()
	if err := echo(w.front, podC.addr, 8080); err != nil {
		t.Fatalf("frontend on A to the pod on node-c: %v", err)
	}

	// node-c's process dies: its client goes away without revoking.
	announceCli.Close()
	crashed := time.Now()
	waitCond(t, "node-a to forget node-c", func() bool {
		_, ok := w.a.ipc.Get(cidrC)
		return !ok
	})
	t.Logf("first connection to node-c done %v after node-a learned it; node-c forgotten %v after it died",
		crashed.Sub(joined).Round(time.Millisecond), time.Since(crashed).Round(100*time.Millisecond))
	if err := echo(w.front, podC.addr, 8080); err == nil {
		t.Error("the pod on node-c is still reachable after node-c left")
	}
	if got := w.capB.seen(w.addrA); got[uint32(idFrontend)] == 0 {
		t.Errorf("no VXLAN from A on the underlay: %v", got)
	}
	stop()
	<-done
	t.Logf("background A->B connections: %d succeeded, %d failed", ok.Load(), failed.Load())
	if failed.Load() != 0 || ok.Load() == 0 {
		t.Errorf("background A->B connections: %d succeeded, %d failed; want none failed", ok.Load(), failed.Load())
	}
}
