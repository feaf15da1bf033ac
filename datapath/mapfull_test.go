package datapath

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// The map-full tests: a full map gives the caller an error and leaves the
// map as it was, or makes the datapath drop with a counted reason; it never
// makes a wrong verdict.

// TestPrivilegedPolicyMapFull applies a policy one entry larger than the
// endpoint's policy map: Apply fails, the map keeps its old entries, and
// the port the extra entry would have opened stays denied.
func TestPrivilegedPolicyMapFull(t *testing.T) {
	const size = 8
	d, _ := newTestDatapath(t, Config{PolicyMapMaxEntries: size})
	a := addDetached(t, d, 1, idA, addrA.String(), "")
	if err := d.IPCache().UpsertPrefix(netip.MustParsePrefix("192.0.2.0/24"), ipcache.Entry{Identity: idRemote}); err != nil {
		t.Fatal(err)
	}
	old := mapstate.State{{Identity: idRemote, Direction: mapstate.Egress, Protocol: protoTCP, Port: 80, PortPrefixLen: 16}: allow}
	mustUpdate(t, a.Policy(), old)
	next := mapstate.State{}
	for i := range size + 1 {
		next[mapstate.Key{Identity: idRemote, Direction: mapstate.Egress, Protocol: protoTCP, Port: uint16(1000 + i), PortPrefixLen: 16}] = allow
	}
	err := a.Policy().Apply(next, nil)
	if err == nil {
		t.Fatalf("Apply of %d entries to a map of %d succeeded", len(next)+1, size)
	}
	t.Logf("Apply to a full policy map: %v", err)
	got, err := a.Policy().Dump()
	if err != nil || len(got) != len(old) || got[mapstate.Key{Identity: idRemote, Direction: mapstate.Egress, Protocol: protoTCP, Port: 80, PortPrefixLen: 16}] != allow {
		t.Fatalf("policy after the failed Apply: %v, %v; want the old one", got, err)
	}
	for port, want := range map[uint16]monitor.DropReason{80: 0, 1000: monitor.DropPolicyDenied, 1000 + size: monitor.DropPolicyDenied} {
		v, _, err := a.TestRun(FromEndpoint, mustBytes(t, tcpPkt(addrA, remote, 40000+port, port, TCPSyn)))
		if err != nil || v.Reason != want {
			t.Errorf("port %d after the failed Apply: %+v, %v; want reason %v", port, v, err, want)
		}
	}
}

// TestPrivilegedIPCacheFull fills the ipcache: the next UpsertPrefix fails,
// the entries there stay, and a packet from the prefix that did not fit
// gets the world identity, which the policy does not allow.
func TestPrivilegedIPCacheFull(t *testing.T) {
	const size = 4
	d, _ := newTestDatapath(t, Config{IPCacheMaxEntries: size})
	a := addDetached(t, d, 1, idA, addrA.String(), "")
	mustUpdate(t, a.Policy(), mapstate.State{{Identity: idRemote, Direction: mapstate.Ingress}: allow})
	prefix := func(i int) netip.Prefix { return netip.MustParsePrefix(fmt.Sprintf("198.18.%d.0/24", i)) }
	for i := range size {
		if err := d.IPCache().UpsertPrefix(prefix(i), ipcache.Entry{Identity: idRemote}); err != nil {
			t.Fatalf("upsert %d of %d: %v", i+1, size, err)
		}
	}
	err := d.IPCache().UpsertPrefix(prefix(size), ipcache.Entry{Identity: idRemote})
	if err == nil {
		t.Fatalf("upsert into a full ipcache of %d succeeded", size)
	}
	t.Logf("UpsertPrefix into a full ipcache: %v", err)
	for i := range size {
		if e, ok, err := d.IPCache().Lookup(prefix(i).Addr().Next()); err != nil || !ok || e.Identity != idRemote {
			t.Fatalf("entry %d after the failed upsert: %+v %v %v", i, e, ok, err)
		}
	}
	for i, want := range map[int]monitor.DropReason{0: 0, size: monitor.DropPolicyDenied} {
		src := prefix(i).Addr().Next()
		v, _, err := a.TestRun(ToEndpoint, mustBytes(t, tcpPkt(src, addrA, 40000, 80, TCPSyn)))
		if err != nil || v.Reason != want {
			t.Errorf("from %v: %+v, %v; want reason %v", src, v, err, want)
		}
	}
}

// TestPrivilegedConntrackFull opens ten times as many connections as the
// conntrack LRU holds: the oldest entries are evicted, and the reply of a
// connection whose entry is gone is a new connection the ingress policy
// denies, dropped with POLICY_DENIED and counted. No reply passes without
// its entry, and every verdict is a defined one.
func TestPrivilegedConntrackFull(t *testing.T) {
	const size, conns = 256, 2560
	d, _ := newTestDatapath(t, Config{ConntrackMaxEntries: size})
	a := addDetached(t, d, 1, idA, addrA.String(), "")
	if err := d.IPCache().UpsertPrefix(netip.MustParsePrefix("192.0.2.0/24"), ipcache.Entry{Identity: idRemote}); err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, a.Policy(), mapstate.State{{Identity: idRemote, Direction: mapstate.Egress, Protocol: protoTCP, Port: 80, PortPrefixLen: 16}: allow})
	for i := range conns {
		v, _, err := a.TestRun(FromEndpoint, mustBytes(t, tcpPkt(addrA, remote, uint16(10000+i), 80, TCPSyn)))
		if err != nil || v.Action != ActionPass {
			t.Fatalf("connection %d: %+v, %v", i, v, err)
		}
	}
	before, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	var replied, evicted int
	for i := range conns {
		v, _, err := a.TestRun(ToEndpoint, mustBytes(t, tcpPkt(remote, addrA, 80, uint16(10000+i), TCPSyn|TCPAck)))
		switch {
		case err != nil:
			t.Fatalf("reply %d: %v", i, err)
		case v.Action == ActionPass && v.Conntrack == ConntrackReply:
			replied++
		case v.Action == ActionDrop && v.Reason == monitor.DropPolicyDenied && v.Conntrack == ConntrackNew:
			evicted++
		default:
			t.Fatalf("reply %d: %+v: neither a tracked reply nor a counted drop", i, v)
		}
	}
	after, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	key := CounterKey{Hook: ToEndpoint, Reason: monitor.DropPolicyDenied}
	t.Logf("%d connections through a conntrack table of %d: %d replies tracked, %d evicted and dropped", conns, size, replied, evicted)
	if evicted == 0 || replied > size {
		t.Fatalf("%d replies tracked by a table of %d: it was never full", replied, size)
	}
	if n := after[key].Packets - before[key].Packets; n != uint64(evicted) {
		t.Fatalf("POLICY_DENIED counter grew by %d, %d replies dropped", n, evicted)
	}
}
