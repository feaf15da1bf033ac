package datapath

import (
	"encoding/binary"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// TestPrivilegedConntrackPinMigration pins a conntrack map as an event
// version 1 build left it (56-byte entries) and checks that New adopts it
// in the current layout with its connections intact.
func TestPrivilegedConntrackPinMigration(t *testing.T) {
	testutils.RequirePrivileged(t)
	dir := testutils.NewBPFFS(t)
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "np_conntrack", Type: ebpf.LRUHash, KeySize: 40, ValueSize: ctEntryV1Size, MaxEntries: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	tup, err := Tuple{Src: addrA, Dst: remote, SrcPort: 40000, DstPort: 80, Proto: protoTCP}.raw()
	if err != nil {
		t.Fatal(err)
	}
	v1 := make([]byte, ctEntryV1Size)
	binary.NativeEndian.PutUint64(v1[0:], 7)      // packets_fwd
	binary.NativeEndian.PutUint32(v1[32:], 1<<30) // expires, far away
	binary.NativeEndian.PutUint32(v1[40:], 1000)  // src_identity
	binary.NativeEndian.PutUint32(v1[44:], 3000)  // dst_identity
	if err := old.Put(tup, v1); err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(filepath.Join(dir, "np_conntrack")); err != nil {
		t.Fatal(err)
	}

	d, _ := newTestDatapath(t, Config{BPFFSDir: dir})
	e, ok, err := d.Conntrack().Lookup(Tuple{Src: addrA, Dst: remote, SrcPort: 40000, DstPort: 80, Proto: protoTCP})
	if err != nil || !ok {
		t.Fatalf("migrated entry not found: %v", err)
	}
	if e.Packets != 7 || e.SrcIdentity != 1000 || e.DstIdentity != 3000 {
		t.Fatalf("migrated entry %+v", e)
	}
	if got := d.maps.conntrack.ValueSize(); got != 64 {
		t.Fatalf("conntrack value size %d after migration", got)
	}
}

// TestPrivilegedCountersPinMigration pins a counters map as a build with
// two hooks left it (512 slots) and checks that New grows it to the
// current size with its counts.
func TestPrivilegedCountersPinMigration(t *testing.T) {
	testutils.RequirePrivileged(t)
	dir := testutils.NewBPFFS(t)
	old, err := ebpf.NewMap(&ebpf.MapSpec{Name: "np_counters", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 16, MaxEntries: 512})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	percpu := make([]counter, ebpf.MustPossibleCPU())
	percpu[0] = counter{Packets: 5, Bytes: 500}
	if err := old.Put(uint32(1<<8|133), percpu); err != nil { // to-endpoint, POLICY_DENIED
		t.Fatal(err)
	}
	if err := old.Pin(filepath.Join(dir, "np_counters")); err != nil {
		t.Fatal(err)
	}

	d, _ := newTestDatapath(t, Config{BPFFSDir: dir})
	if got := d.maps.counters.MaxEntries(); got != counterSlots {
		t.Fatalf("counters map has %d slots after migration, want %d", got, counterSlots)
	}
	c, err := d.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if got := c[CounterKey{Hook: ToEndpoint, Reason: 133}]; got != (Counter{Packets: 5, Bytes: 500}) {
		t.Fatalf("migrated counter %+v, counters %v", got, c)
	}
}
