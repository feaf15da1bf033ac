package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane/internal/nat"
)

// Sizes of the NAT maps of earlier builds (IPv4-only masquerading, an LRU
// NAT table private to the datapath).
const (
	natV1KeySize     = 16
	natV1ValueSize   = 16
	natV1ConfigSize  = 8
	natV1ExcludeSize = 8
)

// migrateNATPins converts the NAT maps pinned in dir by an earlier build
// to the current layout, so that an upgrade keeps the node's masqueraded
// connections (without it New would refuse the pins as incompatible): the
// NAT table's entries are carried over (IPv4, TCP and UDP, both
// directions; seen starts at their creation time), and the configuration
// and exclusion maps, which AttachMasquerade rewrites, are recreated
// empty. Pins of any other shape are left for New's compatibility check.
func migrateNATPins(spec *ebpf.CollectionSpec, dir string) error {
	for name, size := range map[string]uint32{datapathMapNpNatConfig: natV1ConfigSize, datapathMapNpNatExclude: natV1ExcludeSize} {
		path := filepath.Join(dir, name)
		old, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("open pinned %s: %w", name, err)
		}
		oldSize := old.ValueSize()
		if name == datapathMapNpNatExclude {
			oldSize = old.KeySize()
		}
		old.Close()
		if oldSize == size {
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("remove %s of an earlier build: %w", name, err)
			}
		}
	}

	s := spec.Maps[datapathMapNpNat]
	path := filepath.Join(dir, s.Name)
	old, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned NAT table: %w", err)
	}
	defer old.Close()
	if old.KeySize() != natV1KeySize || old.ValueSize() != natV1ValueSize || old.Type() != ebpf.LRUHash {
		return nil
	}
	s = s.Copy()
	s.Pinning = ebpf.PinNone
	nm, err := ebpf.NewMap(s)
	if err != nil {
		return fmt.Errorf("migrate NAT table: %w", err)
	}
	defer nm.Close()
	var (
		key   [natV1KeySize]byte
		value [natV1ValueSize]byte
	)
	it := old.Iterate()
	for it.Next(&key, &value) {
		k, v := natV1Convert(key, value)
		if err := nm.Put(k, v); err != nil {
			return fmt.Errorf("migrate NAT entry: %w", err)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("migrate NAT table: %w", err)
	}
	tmp := path + "_migrating" // bpffs names have no dots
	_ = os.Remove(tmp)
	if err := nm.Pin(tmp); err != nil {
		return fmt.Errorf("pin migrated NAT table: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("replace NAT table pin: %w", err)
	}
	return nil
}

// natV1Convert converts an entry of the earlier layout: key {saddr[4],
// daddr[4], sport[2], dport[2], proto, dir, pad[2]}, value {addr[4],
// port[2], pad[2], created u64}.
func natV1Convert(key [natV1KeySize]byte, value [natV1ValueSize]byte) (natKey, natEntry) {
	var k natKey
	copy(k.SrcAddr[:4], key[0:4])
	copy(k.DstAddr[:4], key[4:8])
	copy(k.SrcPort[:], key[8:10])
	copy(k.DstPort[:], key[10:12])
	k.Proto, k.Dir, k.Family = key[12], key[13], nat.FamilyV4
	var v natEntry
	copy(v.Addr[:4], value[0:4])
	copy(v.Port[:], value[4:6])
	v.Created = binary.NativeEndian.Uint64(value[8:16])
	v.Seen = v.Created
	return k, v
}
