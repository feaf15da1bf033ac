package overlay_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/overlay"
)

// TestPrivilegedOverlayRestart: node-a's datapath is pinned. While the
// frontend on A keeps opening connections to the backend on B and one
// long-lived connection keeps exchanging lines, A's Datapath is closed
// (its endpoints and its overlay stay attached, pinned) and a new one
// takes over: NewTunnel adopts the tunnel device, New the endpoints, and
// AttachOverlay the device's programs, replacing them in place. No connection fails, the
// long-lived one survives, and afterwards the backend's policy is still
// enforced across the tunnel.
func TestPrivilegedOverlayRestart(t *testing.T) {
	bpffs := testutils.NewBPFFS(t)
	w := newTwoNodesPinned(t, overlay.ModeTunnel, bpffs)

	// The long-lived connection.
	var conn net.Conn
	if err := w.front.ns.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(w.back.addr, 8080).String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	roundTrip := func() error {
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		msg := []byte("still there\n")
		if _, err := conn.Write(msg); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		_, err := io.ReadFull(conn, buf)
		return err
	}
	if err := roundTrip(); err != nil {
		t.Fatal(err)
	}

	var ok, failed atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := echo(w.front, w.back.addr, 8080); err != nil {
				failed.Add(1)
				t.Logf("connection during restart: %v", err)
			} else {
				ok.Add(1)
			}
		}
	}()
	waitCond(t, "connections before the restart", func() bool { return ok.Load() >= 3 })
	// The nodes' drop counters (pinned: they span the restart), to say
	// where a failed connection's packets went.
	ca0, cb0 := counters(t, w.a.d), counters(t, w.b.d)

	// The restart: close, then a new Datapath on the same directory.
	a := w.a
	a.events.Close()
	a.ipc.RemoveWriter(a.d.IPCache())
	if err := a.d.Close(); err != nil {
		t.Fatal(err)
	}
	before := ok.Load()
	// The successor process: the tunnel device is adopted, not
	// recreated, so the programs on it and the routes through it stay.
	oldIfindex := a.tunnel.Ifindex()
	if err := a.tunnel.Release(); err != nil {
		t.Fatal(err)
	}
	tun, err := overlay.NewTunnel(overlay.TunnelConfig{NodeNetNS: nsPath(a.ns), IPv6Underlay: true,
		HostAddresses: []netip.Addr{a.hostAddr(), a.hostAddr6()}})
	if err != nil {
		t.Fatal(err)
	}
	a.tunnel = tun
	if !tun.Adopted() || tun.Ifindex() != oldIfindex {
		t.Errorf("tunnel after the restart: adopted %v, ifindex %d; want the old device, %d", tun.Adopted(), tun.Ifindex(), oldIfindex)
	}
	d, err := a.newDatapath()
	if err != nil {
		t.Fatal(err)
	}
	a.d = d
	t.Cleanup(func() {
		a.ipc.RemoveWriter(d.IPCache())
		if err := d.Uninstall(); err != nil {
			t.Errorf("uninstall node-a's datapath: %v", err)
		}
	})
	if got := d.Restored().Adopted; len(got) != 2 {
		t.Errorf("adopted endpoints %v, want node-a's two pods", got)
	}
	if err := a.ipc.AddWriter(d.IPCache()); err != nil {
		t.Fatal(err)
	}
	if a.overlay, err = d.AttachOverlay(a.tunnel.Ifindex()); err != nil {
		t.Fatal(err)
	}
	if !a.overlay.Adopted() && d.Pinning() && datapath.HaveTCX() == nil {
		t.Error("AttachOverlay did not adopt the pinned links of the earlier Datapath")
	}
	if a.events, err = d.NewEventReader(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*testPod{w.front, w.other} {
		ep, found := d.Endpoint(p.ep.ID())
		if !found {
			t.Fatalf("endpoint %d not adopted", p.ep.ID())
		}
		p.ep = ep
	}
	waitCond(t, "connections after the restart", func() bool { return ok.Load() >= before+3 })
	close(stop)
	<-done
	if n := failed.Load(); n != 0 {
		t.Errorf("%d of %d connections failed across the restart; drops counted meanwhile: node-a %v, node-b %v",
			n, n+ok.Load(), dropDeltas(ca0, counters(t, w.a.d)), dropDeltas(cb0, counters(t, w.b.d)))
	}
	t.Logf("%d connections across the restart, %d failed", ok.Load(), failed.Load())
	if err := roundTrip(); err != nil {
		t.Fatalf("the long-lived connection did not survive the restart: %v", err)
	}

	// Still enforced and still encapsulating.
	if err := echo(w.other, w.back.addr, 8080); err == nil {
		t.Fatal("the other identity reached the backend after the restart")
	}
	if err := echo(w.front, w.back.addr6, 8080); err != nil {
		t.Fatalf("frontend to backend over IPv6 after the restart: %v", err)
	}
}

// dropDeltas lists the drop counters that grew from before to after.
func dropDeltas(before, after map[datapath.CounterKey]datapath.Counter) []string {
	var out []string
	for k, c := range after {
		if k.Reason != 0 && c.Packets > before[k].Packets {
			out = append(out, fmt.Sprintf("%v at %v: %d", k.Reason, k.Hook, c.Packets-before[k].Packets))
		}
	}
	slices.Sort(out)
	return out
}
