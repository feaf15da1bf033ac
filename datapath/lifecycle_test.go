package datapath

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

func TestPrivilegedPinnedMapsSurviveReload(t *testing.T) {
	testutils.RequirePrivileged(t)
	bpffs := testutils.NewBPFFS(t)
	cfg := Config{BPFFSDir: bpffs}
	prefix := netip.MustParsePrefix("192.0.2.0/24")
	flow := tcpPkt(addrA, remote, 40000, 80, TCPSyn)

	d1, _ := newTestDatapath(t, cfg)
	if err := d1.IPCache().UpsertPrefix(prefix, ipcache.Entry{Identity: idRemote}); err != nil {
		t.Fatal(err)
	}
	ep := addDetached(t, d1, 1, idA, addrA.String(), "")
	mustUpdate(t, ep.Policy(), map[mapstate.Key]mapstate.Entry{{Identity: idRemote, Direction: mapstate.Egress}: allow})
	if v, _, err := ep.TestRun(FromEndpoint, mustBytes(t, flow)); err != nil || v.Action != ActionPass {
		t.Fatalf("test run: %+v, %v", v, err)
	}
	for _, name := range []string{"np_endpoints", "np_ipcache", "np_conntrack", "np_policy", "np_counters", "np_events", "np_events_lost", "np_frags"} {
		if _, err := os.Stat(filepath.Join(bpffs, name)); err != nil {
			t.Errorf("map %s not pinned: %v", name, err)
		}
	}
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}

	// A second Datapath on the same pins finds the shared state.
	d2, _ := newTestDatapath(t, cfg)
	if e, ok, err := d2.IPCache().Lookup(remote); err != nil || !ok || e.Identity != idRemote {
		t.Fatalf("ipcache after reload: %+v %v %v", e, ok, err)
	}
	tup := Tuple{Src: addrA, Dst: remote, SrcPort: 40000, DstPort: 80, Proto: protoTCP}
	if ct, ok, err := d2.Conntrack().Lookup(tup); err != nil || !ok || ct.SrcIdentity != idA {
		t.Fatalf("conntrack after reload: %+v %v %v", ct, ok, err)
	}
	if c := counterOf(t, d2, CounterKey{FromEndpoint, 0}); c.Packets != 1 {
		t.Fatalf("forwarded counter after reload: %+v", c)
	}
	// The first Datapath's endpoint outlived it (with pinning, Close
	// leaves endpoints installed) and is the second one's now, with its
	// policy and new programs.
	ep2, ok := d2.Endpoint(1)
	if !ok || ep2.IPv4() != addrA || ep2.Identity() != idA || ep2.HostIfindex() != 0 || ep2.AttachMode() != AttachAuto {
		t.Fatalf("adopted detached endpoint: %v %+v", ok, ep2)
	}
	if got, err := ep2.Policy().Dump(); err != nil || len(got) != 1 || got[mapstate.Key{Identity: idRemote, Direction: mapstate.Egress}] != allow {
		t.Fatalf("adopted endpoint's policy map: %v %v", got, err)
	}
	if v, _, err := ep2.TestRun(FromEndpoint, mustBytes(t, tcpPkt(addrA, remote, 40001, 80, TCPSyn))); err != nil || v.Action != ActionPass || v.SrcIdentity != idA {
		t.Fatalf("test run on the adopted endpoint: %+v, %v", v, err)
	}
	if _, err := d2.AddEndpoint(EndpointConfig{ID: 7, Identity: idB, IPv4: addrA, Detached: true}); !errors.Is(err, ErrEndpointExists) {
		t.Fatalf("address of an adopted endpoint: %v, want ErrEndpointExists", err)
	}
	if _, err := d2.AddEndpoint(EndpointConfig{ID: 1, Identity: idB, IPv4: addrB, Detached: true}); !errors.Is(err, ErrEndpointExists) {
		t.Fatalf("ID of an adopted endpoint: %v, want ErrEndpointExists", err)
	}

	// One Datapath at a time owns the pins.
	other := cfg
	other.NodeNetNS = nsPath(testutils.NewNetNS(t))
	if d, err := New(other); !errors.Is(err, ErrBPFFSDirInUse) {
		if d != nil {
			d.Close()
		}
		t.Fatalf("New on pins in use: %v, want ErrBPFFSDirInUse", err)
	}

	// A configuration that contradicts the pins is refused, and leaves
	// them alone.
	if err := d2.Close(); err != nil {
		t.Fatal(err)
	}
	other.ConntrackMaxEntries = 8192
	if d, err := New(other); !errors.Is(err, ebpf.ErrMapIncompatible) {
		if d != nil {
			d.Close()
		}
		t.Fatalf("New with a different conntrack size on the same pins: %v, want ErrMapIncompatible", err)
	}
	d3, _ := newTestDatapath(t, cfg)
	if got := d3.Restored().Adopted; !slices.Equal(got, []EndpointID{1}) {
		t.Fatalf("adopted after a refused New: %v", got)
	}
	if err := d3.Uninstall(); err != nil {
		t.Fatal(err)
	}
	expectNoPins(t, bpffs)
}

func TestPrivilegedConntrackLifetimesAndGC(t *testing.T) {
	d, _ := newTestDatapath(t, Config{NonTCPLifetime: 5 * time.Second, CloseLifetime: 2 * time.Second})
	ep := addDetached(t, d, 1, idA, addrA.String(), "")
	mustUpdate(t, ep.Policy(), map[mapstate.Key]mapstate.Entry{
		{Direction: mapstate.Egress}:  allow,
		{Direction: mapstate.Ingress}: allow,
	})
	run := func(hook Hook, p TestPacket) {
		t.Helper()
		if v, _, err := ep.TestRun(hook, mustBytes(t, p)); err != nil || v.Action != ActionPass {
			t.Fatalf("%v: %+v, %v", p, v, err)
		}
	}
	start := MonotonicNow()

	udp := TestPacket{Src: addrA, Dst: remote, Proto: protoUDP, SrcPort: 1000, DstPort: 53}
	run(FromEndpoint, udp)
	// An established TCP connection, and one that closed.
	open := tcpPkt(addrA, remote, 2000, 80, TCPSyn)
	run(FromEndpoint, open)
	run(ToEndpoint, tcpPkt(remote, addrA, 80, 2000, TCPSyn|TCPAck))
	run(FromEndpoint, tcpPkt(addrA, remote, 2000, 80, TCPAck))
	closed := tcpPkt(addrA, remote, 3000, 80, TCPSyn)
	run(FromEndpoint, closed)
	run(ToEndpoint, tcpPkt(remote, addrA, 80, 3000, TCPSyn|TCPAck))
	run(FromEndpoint, tcpPkt(addrA, remote, 3000, 80, TCPFin|TCPAck))
	run(ToEndpoint, tcpPkt(remote, addrA, 80, 3000, TCPFin|TCPAck))

	lifetime := func(p TestPacket) time.Duration {
		t.Helper()
		e, ok, err := d.Conntrack().Lookup(Tuple{Src: p.Src, Dst: p.Dst, SrcPort: p.SrcPort, DstPort: p.DstPort, Proto: p.Proto})
		if err != nil || !ok {
			t.Fatalf("no entry for %v: %v", p, err)
		}
		return e.Expires - start
	}
	near := func(got, want time.Duration) bool { return got >= want-2*time.Second && got <= want+2*time.Second }
	if got := lifetime(udp); !near(got, 5*time.Second) {
		t.Errorf("UDP lifetime %v, want the configured 5s", got)
	}
	if got := lifetime(open); !near(got, defaultTCPLifetime) {
		t.Errorf("established TCP lifetime %v, want %v", got, defaultTCPLifetime)
	}
	if got := lifetime(closed); !near(got, 2*time.Second) {
		t.Errorf("closed TCP lifetime %v, want the configured 2s", got)
	}

	// A SYN on the closed tuple is a new connection, decided by policy.
	v, _, err := ep.TestRun(FromEndpoint, mustBytes(t, closed))
	if err != nil || v.Conntrack != ConntrackNew {
		t.Fatalf("SYN on a closed connection: %+v, %v; want new", v, err)
	}
	run(FromEndpoint, tcpPkt(addrA, remote, 3000, 80, TCPRst))

	if n, err := d.Conntrack().GC(MonotonicNow()); err != nil || n != 0 {
		t.Fatalf("GC now: %d, %v; want nothing expired", n, err)
	}
	n, err := d.Conntrack().GC(MonotonicNow() + time.Minute)
	if err != nil || n != 2 {
		t.Fatalf("GC in a minute: %d, %v; want the UDP and the reset TCP entries", n, err)
	}
	entries, err := d.Conntrack().Entries()
	if err != nil || len(entries) != 1 || entries[0].Tuple.SrcPort != 2000 {
		t.Fatalf("left after GC: %+v, %v; want the established connection", entries, err)
	}
	if n, err := d.Conntrack().Flush(); err != nil || n != 1 {
		t.Fatalf("flush: %d, %v", n, err)
	}
}

func TestPrivilegedEndpointLifecycle(t *testing.T) {
	d, node := newTestDatapath(t, Config{})
	pod := testutils.NewNetNS(t)
	cfg := EndpointConfig{ID: 9, Identity: idA, IPv4: addrA, IPv6: addrA6, NetNS: nsPath(pod), HostIfName: "lxc9"}
	ep, err := d.AddEndpoint(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if ep.HostIfName() != "lxc9" || ep.HostIfindex() == 0 || len(ep.HostMAC()) != 6 {
		t.Fatalf("host side %q %d %v", ep.HostIfName(), ep.HostIfindex(), ep.HostMAC())
	}
	if _, err := d.AddEndpoint(cfg); !errors.Is(err, ErrEndpointExists) {
		t.Fatalf("same ID again: %v", err)
	}
	dup := cfg
	dup.ID, dup.NetNS, dup.HostIfName = 10, nsPath(testutils.NewNetNS(t)), ""
	if _, err := d.AddEndpoint(dup); !errors.Is(err, ErrEndpointExists) {
		t.Fatalf("same addresses again: %v", err)
	}
	if _, err := node.Netlink(t).LinkByName("np10"); err == nil {
		t.Fatal("failed AddEndpoint left its interface behind")
	}

	// SetIdentity takes effect for new connections at once.
	mustUpdate(t, ep.Policy(), map[mapstate.Key]mapstate.Entry{{Direction: mapstate.Egress}: allow})
	if err := ep.SetIdentity(4242); err != nil {
		t.Fatal(err)
	}
	v, _, err := ep.TestRun(FromEndpoint, mustBytes(t, tcpPkt(addrA, remote, 1, 2, TCPSyn)))
	if err != nil || v.SrcIdentity != 4242 {
		t.Fatalf("after SetIdentity: %+v, %v", v, err)
	}

	// An unrelated connection, which Delete must leave alone.
	other := addDetached(t, d, 11, idB, addrB.String(), "")
	mustUpdate(t, other.Policy(), map[mapstate.Key]mapstate.Entry{{Direction: mapstate.Egress}: allow})
	if v, _, err := other.TestRun(FromEndpoint, mustBytes(t, tcpPkt(addrB, remote, 1, 2, TCPSyn))); err != nil || v.Reason != 0 {
		t.Fatalf("%+v %v", v, err)
	}

	if err := ep.Delete(); err != nil {
		t.Fatal(err)
	}
	if err := ep.Delete(); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	entries, err := d.Conntrack().Entries()
	if err != nil || len(entries) != 1 || entries[0].Tuple.Src != addrB {
		t.Fatalf("conntrack after Delete: %+v, %v; want only the other endpoint's connection", entries, err)
	}
	if err := other.Delete(); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Netlink(t).LinkByName("lxc9"); err == nil {
		t.Fatal("host interface still there after Delete")
	}
	if _, err := pod.Netlink(t).LinkByName("eth0"); err == nil {
		t.Fatal("endpoint interface still there after Delete")
	}
	if _, _, err := ep.TestRun(FromEndpoint, mustBytes(t, tcpPkt(addrA, remote, 1, 2, TCPSyn))); !errors.Is(err, nodeplane.ErrClosed) {
		t.Fatalf("TestRun after Delete: %v", err)
	}
	if err := ep.Policy().Update(mapstate.Key{}, mapstate.Entry{}); !errors.Is(err, nodeplane.ErrClosed) {
		t.Fatalf("policy update after Delete: %v", err)
	}
	var k endpointKey
	if err := d.maps.endpoints.NextKey(nil, &k); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("endpoints map not empty after Delete: %+v, %v", k, err)
	}
	var inner *ebpf.Map
	if err := d.maps.policy.Lookup(uint32(9), &inner); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("policy map still installed after Delete: %v", err)
	}
	if _, err := d.AddEndpoint(cfg); err != nil {
		t.Fatalf("re-adding a deleted endpoint: %v", err)
	}
}

func TestPrivilegedAddEndpointFailureLeavesNothing(t *testing.T) {
	d, node := newTestDatapath(t, Config{})
	_, err := d.AddEndpoint(EndpointConfig{ID: 5, Identity: idA, IPv4: addrA, NetNS: "/nonexistent/netns"})
	if err == nil {
		t.Fatal("AddEndpoint with a missing namespace succeeded")
	}
	var inner *ebpf.Map
	if err := d.maps.policy.Lookup(uint32(5), &inner); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("policy map of the failed endpoint still installed: %v", err)
	}
	var k endpointKey
	if err := d.maps.endpoints.NextKey(nil, &k); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("endpoints map not empty: %+v, %v", k, err)
	}
	if _, err := node.Netlink(t).LinkByName("np5"); err == nil {
		t.Fatal("interface of the failed endpoint left behind")
	}
	if _, ok := d.Endpoint(5); ok {
		t.Fatal("failed endpoint registered")
	}
	// The ID is free.
	addDetached(t, d, 5, idA, addrA.String(), "")
	// The file descriptors of the failed attempt are checked by TestMain.
}

func TestPrivilegedEventReaderDeadlineAndClose(t *testing.T) {
	d, _ := newTestDatapath(t, Config{})
	r, err := d.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	r.SetDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := r.Read(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline: %v", err)
	}
	r.SetDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := r.Read()
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, nodeplane.ErrClosed) {
			t.Fatalf("blocked Read after Close: %v, want nodeplane.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Read")
	}
}

// TestPrivilegedEventReaderSetDeadlineWakesBlockedRead: a Read blocked with
// no deadline gives up when another goroutine sets one, without Close; a
// deadline moved later while Read waits keeps it waiting; and Read works
// again once the deadline is cleared.
func TestPrivilegedEventReaderSetDeadlineWakesBlockedRead(t *testing.T) {
	d, _ := newTestDatapath(t, Config{})
	r, err := d.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })

	read := func() <-chan error {
		done := make(chan error, 1)
		go func() {
			_, err := r.Read()
			done <- err
		}()
		return done
	}
	wait := func(done <-chan error, within time.Duration) (error, bool) {
		select {
		case err := <-done:
			return err, true
		case <-time.After(within):
			return nil, false
		}
	}

	// Blocked without a deadline; a deadline in the past wakes it at once.
	done := read()
	time.Sleep(50 * time.Millisecond)
	setAt := time.Now()
	setDone := make(chan error, 1)
	go func() { r.SetDeadline(time.Now().Add(-time.Second)); setDone <- nil }()
	if _, ok := wait(setDone, 2*time.Second); !ok {
		t.Fatal("SetDeadline blocked while Read was waiting")
	}
	if err, ok := wait(done, 2*time.Second); !ok {
		t.Fatal("SetDeadline did not wake a blocked Read")
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("woken Read: %v, want os.ErrDeadlineExceeded", err)
	}
	if took := time.Since(setAt); took > time.Second {
		t.Fatalf("Read gave up %v after the deadline", took)
	}

	// Blocked without a deadline; a deadline 200ms ahead wakes it then.
	r.SetDeadline(time.Time{})
	done = read()
	time.Sleep(50 * time.Millisecond)
	deadline := time.Now().Add(200 * time.Millisecond)
	r.SetDeadline(deadline)
	if err, ok := wait(done, 3*time.Second); !ok {
		t.Fatal("a future deadline did not wake a blocked Read")
	} else if !errors.Is(err, os.ErrDeadlineExceeded) || time.Now().Before(deadline) {
		t.Fatalf("Read returned %v at %v before the deadline", err, time.Until(deadline))
	}

	// A deadline moved later while Read waits: it keeps waiting past the
	// first one.
	r.SetDeadline(time.Now().Add(100 * time.Millisecond))
	done = read()
	time.Sleep(20 * time.Millisecond)
	r.SetDeadline(time.Now().Add(600 * time.Millisecond))
	if err, ok := wait(done, 300*time.Millisecond); ok {
		t.Fatalf("Read returned %v at the old deadline, after it was extended", err)
	}
	if err, ok := wait(done, 3*time.Second); !ok || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read after the extended deadline: %v, %v", err, ok)
	}

	// Cleared again: Read blocks until Close.
	r.SetDeadline(time.Time{})
	done = read()
	if err, ok := wait(done, 200*time.Millisecond); ok {
		t.Fatalf("Read without a deadline returned %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err, ok := wait(done, 2*time.Second); !ok || !errors.Is(err, nodeplane.ErrClosed) {
		t.Fatalf("Read after Close: %v, %v", err, ok)
	}
}
