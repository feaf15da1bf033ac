package datapath

import (
	"encoding/binary"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane/internal/nat"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// TestPrivilegedNATPinMigration: NAT maps pinned by a build with the
// earlier layout (IPv4-only LRU table, 8-byte configuration and exclusion
// keys) are converted on New: the table's entries are carried over with
// their fields, the configuration and exclusions start empty.
func TestPrivilegedNATPinMigration(t *testing.T) {
	testutils.RequirePrivileged(t)
	dir := testutils.NewBPFFS(t)
	for _, s := range []*ebpf.MapSpec{
		{Name: "np_nat", Type: ebpf.LRUHash, KeySize: natV1KeySize, ValueSize: natV1ValueSize, MaxEntries: 65536},
		{Name: "np_nat_config", Type: ebpf.Array, KeySize: 4, ValueSize: natV1ConfigSize, MaxEntries: 1},
		{Name: "np_nat_exclude", Type: ebpf.LPMTrie, KeySize: natV1ExcludeSize, ValueSize: 1, MaxEntries: 64, Flags: 1 /* BPF_F_NO_PREALLOC */},
	} {
		m, err := ebpf.NewMap(s)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if s.Name == "np_nat" {
			// 10.1.0.10:40000 -> 203.0.113.2:80 TCP, egress, via
			// 203.0.113.1:61001 created at 12345.
			key := [natV1KeySize]byte{10, 1, 0, 10, 203, 0, 113, 2, 0x9c, 0x40, 0, 80, 6, 0}
			var val [natV1ValueSize]byte
			copy(val[:], []byte{203, 0, 113, 1, 0xee, 0x49})
			binary.NativeEndian.PutUint64(val[8:], 12345)
			if err := m.Put(key, val); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.Pin(filepath.Join(dir, s.Name)); err != nil {
			t.Fatal(err)
		}
	}
	d, _ := newTestDatapath(t, Config{BPFFSDir: dir})
	k := natKey{SrcAddr: [16]byte{10, 1, 0, 10}, DstAddr: [16]byte{203, 0, 113, 2}, SrcPort: nat.PortBytes(40000), DstPort: nat.PortBytes(80), Proto: 6, Family: nat.FamilyV4, Dir: nat.Egress}
	var v natEntry
	if err := d.NATMap().Lookup(k, &v); err != nil {
		t.Fatalf("migrated entry: %v", err)
	}
	if v.Addr != [16]byte{203, 0, 113, 1} || nat.PortOf(v.Port) != 61001 || v.Created != 12345 || v.Seen != 12345 {
		t.Errorf("migrated entry %+v", v)
	}
	var c natConfig
	if err := d.maps.natConfig.Lookup(uint32(0), &c); err != nil || c != (natConfig{}) {
		t.Errorf("configuration %+v, %v; want empty", c, err)
	}
}
