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
