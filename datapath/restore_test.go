package datapath

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// TestPrivilegedRestoreRemovesStaleEndpoints leaves endpoints behind in
// every state a dead Datapath can leave them in, and checks what the next
// one adopts, what it removes, and that the IDs and addresses of removed
// endpoints can be used again.
func TestPrivilegedRestoreRemovesStaleEndpoints(t *testing.T) {
	testutils.RequirePrivileged(t)
	bpffs := testutils.NewBPFFS(t)
	node := testutils.NewNetNS(t)
	cfg := Config{BPFFSDir: bpffs, NodeNetNS: nsPath(node), ConntrackMaxEntries: 4096, IPCacheMaxEntries: 4096}
	addr := func(i byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, i}) }
	podB, podC, podE, podF := testutils.NewNetNS(t), testutils.NewNetNS(t), testutils.NewNetNS(t), testutils.NewNetNS(t)

	// The first agent: endpoint 1's pod is deleted after the agent closed
	// (its namespace goes with the subtest), endpoint 2's host interface
	// is deleted by hand, 3 stays, 4 is detached, 5 and 6 are left half
	// added and half deleted, and an entry without a record is planted.
	var gone1 int
	if !t.Run("first agent", func(t *testing.T) {
		podA := testutils.NewNetNS(t)
		d := openPinned(t, cfg)
		for _, ec := range []EndpointConfig{
			{ID: 1, Identity: idA, IPv4: addrA, IPv6: addrA6, NetNS: nsPath(podA)},
			{ID: 2, Identity: idB, IPv4: addrB, NetNS: nsPath(podB)},
			{ID: 3, Identity: idRemote, IPv4: addr(3), NetNS: nsPath(podC)},
			{ID: 4, Identity: idRemote, IPv4: addr(4), Detached: true},
			{ID: 5, Identity: idRemote, IPv4: addr(5), NetNS: nsPath(podE)},
			{ID: 6, Identity: idRemote, IPv4: addr(6), NetNS: nsPath(podF)},
		} {
			ep, err := d.AddEndpoint(ec)
			if err != nil {
				t.Fatal(err)
			}
			if ec.ID == 1 {
				gone1 = ep.HostIfindex()
				// A connection of endpoint 1, which must not outlive it.
				mustUpdate(t, ep.Policy(), map[mapstate.Key]mapstate.Entry{{Direction: mapstate.Egress}: allow})
				if v, _, err := ep.TestRun(FromEndpoint, mustBytes(t, tcpPkt(addrA, remote, 1234, 80, TCPSyn))); err != nil || v.Action != ActionPass {
					t.Fatalf("%+v %v", v, err)
				}
			}
		}
		c, _ := d.Endpoint(3)
		mustUpdate(t, c.Policy(), map[mapstate.Key]mapstate.Entry{allowedKey: allow})
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}) {
		return
	}
	// A namespace goes away asynchronously, and its veth pair with it.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := node.Netlink(t).LinkByIndex(gone1); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("endpoint 1's interface outlived its pod's namespace")
		}
		time.Sleep(20 * time.Millisecond)
	}
	np2, err := node.Netlink(t).LinkByName("np2")
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Netlink(t).LinkDel(np2); err != nil {
		t.Fatal(err)
	}
	records := loadPinned(t, bpffs, recordsMapName)
	for id, st := range map[uint32]recordState{5: recordCreating, 6: recordDeleting} {
		var rec endpointRecord
		if err := records.Lookup(id, &rec); err != nil {
			t.Fatal(err)
		}
		rec.State = st
		if id == 5 {
			rec.HostIfindex = 0 // died right after creating the veth pair
		}
		if err := records.Update(id, rec, ebpf.UpdateExist); err != nil {
			t.Fatal(err)
		}
	}
	orphan := endpointKeyFor(addr(9))
	if err := loadPinned(t, bpffs, datapathMapNpEndpoints).Update(orphan, endpointInfo{EndpointID: 9, Identity: 5}, ebpf.UpdateNoExist); err != nil {
		t.Fatal(err)
	}

	d := openPinned(t, cfg)
	rep := d.Restored()
	if !slices.Equal(rep.Adopted, []EndpointID{3, 4}) || len(rep.Repaired) != 0 {
		t.Fatalf("adopted %v, repaired %+v; want 3 and 4 as they were", rep.Adopted, rep.Repaired)
	}
	want := []struct {
		id     EndpointID
		v4     netip.Addr
		reason string
	}{
		{1, addrA, "is gone"}, {2, addrB, "is gone"},
		{5, addr(5), "while adding"}, {6, addr(6), "while deleting"},
		{9, addr(9), "no record"},
	}
	if len(rep.Removed) != len(want) {
		t.Fatalf("removed %+v", rep.Removed)
	}
	for i, w := range want {
		got := rep.Removed[i]
		if got.ID != w.id || got.IPv4 != w.v4 || !strings.Contains(got.Reason, w.reason) {
			t.Errorf("removed[%d] = %+v, want endpoint %d (%v): %q", i, got, w.id, w.v4, w.reason)
		}
	}
	if got := rep.Removed[0]; got.IPv6 != addrA6 || got.HostIfName != "np1" {
		t.Errorf("removed endpoint 1: %+v", got)
	}

	if cts, err := d.Conntrack().Entries(); err != nil || len(cts) != 0 {
		t.Errorf("conntrack after removing endpoint 1: %+v, %v; want its connection gone", cts, err)
	}

	// Only 3's and 4's state is left, and 3's interface.
	var keys []netip.Addr
	var (
		k    endpointKey
		info endpointInfo
	)
	for it := d.maps.endpoints.Iterate(); it.Next(&k, &info); {
		keys = append(keys, k.Addr.addr(k.IPVersion))
	}
	slices.SortFunc(keys, netip.Addr.Compare)
	if !slices.Equal(keys, []netip.Addr{addr(3), addr(4)}) {
		t.Errorf("endpoints map holds %v", keys)
	}
	for _, m := range []*ebpf.Map{d.maps.policy, d.maps.records} {
		var ids []uint32
		var prev any // nil: the first key
		for {
			var id uint32
			if err := m.NextKey(prev, &id); err != nil {
				break
			}
			ids = append(ids, id)
			prev = id
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []uint32{3, 4}) {
			t.Errorf("%s holds endpoints %v", m, ids)
		}
	}
	// Only tcx links are pinned per endpoint; in tc mode (Linux before
	// 6.6) there are no pins, of removed endpoints or any other.
	entries, err := os.ReadDir(filepath.Join(bpffs, endpointPinDirName))
	if d.AttachMode() == AttachTCX {
		if err != nil || len(entries) != 1 || entries[0].Name() != "3" {
			t.Errorf("endpoint pins %v, %v; want 3's only", entries, err)
		}
	} else if len(entries) != 0 || err != nil && !os.IsNotExist(err) {
		t.Errorf("endpoint pins %v, %v in %s mode; want none", entries, err, d.AttachMode())
	}
	for _, name := range []string{"np5", "np6"} {
		if _, err := node.Netlink(t).LinkByName(name); err == nil {
			t.Errorf("%s, of an interrupted endpoint, is still there", name)
		}
	}

	// The IDs and addresses are free again, and the new endpoints work
	// beside the adopted one.
	podA := testutils.NewNetNS(t)
	a, err := d.AddEndpoint(EndpointConfig{ID: 1, Identity: idA, IPv4: addrA, IPv6: addrA6, NetNS: nsPath(podA)})
	if err != nil {
		t.Fatalf("re-adding endpoint 1: %v", err)
	}
	if _, err := d.AddEndpoint(EndpointConfig{ID: 2, Identity: idB, IPv4: addrB, NetNS: nsPath(testutils.NewNetNS(t))}); err != nil {
		t.Fatalf("re-adding endpoint 2: %v", err)
	}
	mustUpdate(t, a.Policy(), map[mapstate.Key]mapstate.Entry{{Direction: mapstate.Egress}: allow})
	testutils.ServeEcho(t, podC, "tcp", fmt.Sprintf(":%d", allowedPort))
	testutils.ServeEcho(t, podC, "tcp", fmt.Sprintf(":%d", deniedPort))
	c, err := dial(podA, "tcp", netip.AddrPortFrom(addr(3), allowedPort).String(), 2*time.Second)
	if err != nil {
		t.Fatalf("new endpoint 1 -> adopted endpoint 3: %v", err)
	}
	if err := echo(c, "hello"); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(podA, "tcp", netip.AddrPortFrom(addr(3), deniedPort).String(), 500*time.Millisecond); !isTimeout(err) {
		t.Fatalf("new endpoint 1 -> adopted endpoint 3 on a denied port: %v, want a timeout", err)
	}

	if err := d.Uninstall(); err != nil {
		t.Fatal(err)
	}
	links, err := node.Netlink(t).LinkList()
	if err != nil || len(links) != 1 {
		t.Errorf("node links after Uninstall: %d, %v; want lo only", len(links), err)
	}
	expectNoPins(t, bpffs)
}

// TestPrivilegedRestoreRepairs removes a link pin (which detaches the
// program: no process holds the link) and a policy map while no Datapath
// runs; the next one puts both back, the policy map empty, so that the
// endpoint fails closed until its policy is written again.
func TestPrivilegedRestoreRepairs(t *testing.T) {
	w := newRestartWorld(t, AttachTCX)
	d1 := openPinned(t, w.config())
	a1, _, err := installPods(d1, nsPath(w.podA), nsPath(w.podB))
	if err != nil {
		t.Fatal(err)
	}
	ifindex := a1.HostIfindex()
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(w.bpffs, endpointPinDirName, "1", "from_endpoint")); err != nil {
		t.Fatal(err)
	}
	// The kernel frees an unpinned link after an RCU grace period.
	for deadline := time.Now().Add(5 * time.Second); len(w.programs(t, ifindex)) != 1; {
		if time.Now().After(deadline) {
			t.Fatalf("programs on np1 after its pin was removed: %v, want the egress one only", w.programs(t, ifindex))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := loadPinned(t, w.bpffs, datapathMapNpPolicy).Delete(uint32(2)); err != nil {
		t.Fatal(err)
	}
	// Without B's policy map the datapath fails closed (a missing map
	// denies) even before the repair.
	w.expect(t, allowedPort, false)

	d := openPinned(t, w.config())
	rep := d.Restored()
	if !slices.Equal(rep.Adopted, []EndpointID{1, 2}) || len(rep.Removed) != 0 || len(rep.Repaired) != 2 ||
		rep.Repaired[0].ID != 1 || !strings.Contains(rep.Repaired[0].Reason, "from_endpoint link was not pinned") ||
		rep.Repaired[1].ID != 2 || !strings.Contains(rep.Repaired[1].Reason, "policy map was missing") {
		t.Fatalf("restore report %+v", rep)
	}
	if got := w.programs(t, ifindex); len(got) != 2 {
		t.Fatalf("programs on np1 after the repair: %v, want 2", got)
	}
	if _, err := os.Stat(filepath.Join(w.bpffs, endpointPinDirName, "1", "from_endpoint")); err != nil {
		t.Fatalf("repaired link not pinned: %v", err)
	}
	b, _ := d.Endpoint(2)
	if got, err := b.Policy().Dump(); err != nil || len(got) != 0 {
		t.Fatalf("repaired policy map: %v, %v; want it empty", got, err)
	}
	w.expect(t, allowedPort, false)
	mustUpdate(t, b.Policy(), map[mapstate.Key]mapstate.Entry{allowedKey: allow})
	w.expect(t, allowedPort, true)
	w.expect(t, deniedPort, false)
	if err := d.Uninstall(); err != nil {
		t.Fatal(err)
	}
	w.expectClean(t)
}

// TestPrivilegedRestoreRefusesWrongNodeNamespace restarts on the right pins
// with the wrong node namespace: the endpoints' interfaces are not there,
// but their links are still bound to them, so New must refuse rather than
// remove the pins and leave the interfaces unfiltered.
func TestPrivilegedRestoreRefusesWrongNodeNamespace(t *testing.T) {
	w := newRestartWorld(t, AttachTCX)
	d1 := openPinned(t, w.config())
	a1, _, err := installPods(d1, nsPath(w.podA), nsPath(w.podB))
	if err != nil {
		t.Fatal(err)
	}
	progs := w.programs(t, a1.HostIfindex())
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}

	wrong := w.config()
	wrong.NodeNetNS = nsPath(testutils.NewNetNS(t))
	if d, err := New(wrong); err == nil || !strings.Contains(err.Error(), "NodeNetNS") {
		if d != nil {
			d.Close()
		}
		t.Fatalf("New in the wrong node namespace: %v, want a refusal naming NodeNetNS", err)
	}
	if got := w.programs(t, a1.HostIfindex()); !slices.Equal(got, progs) {
		t.Fatalf("programs after the refused New: %v, want %v", got, progs)
	}
	w.expect(t, allowedPort, true)
	w.expect(t, deniedPort, false)

	d := openPinned(t, w.config())
	checkAdoptedPods(t, d)
	if err := d.Uninstall(); err != nil {
		t.Fatal(err)
	}
	w.expectClean(t)
}
