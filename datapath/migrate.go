package datapath

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// ctEntryV1Size is the conntrack value of event version 1 builds, before
// the entries grew the two trace-report stamps (monitor aggregation).
const ctEntryV1Size = 56

// migrateConntrackPin converts a conntrack map pinned in dir by an earlier
// build, whose entries lack the trace-report stamps, to the current layout,
// so that an upgrade keeps the node's connections (without it New would
// refuse the pin as incompatible). Entries keep everything they had; the
// stamps start at zero, so each connection's next packet at aggregation
// medium is reported. A pin of any other shape is left for New's
// compatibility check to refuse. Programs of the earlier build still
// attached write to the old map until New swaps them, so connections they
// create in that window are not carried over.
func migrateConntrackPin(spec *ebpf.MapSpec, dir string) error {
	path := filepath.Join(dir, spec.Name)
	old, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned conntrack map: %w", err)
	}
	defer old.Close()
	if old.ValueSize() != ctEntryV1Size || old.ValueSize() == spec.ValueSize || old.KeySize() != spec.KeySize ||
		old.Type() != spec.Type || old.MaxEntries() != spec.MaxEntries {
		return nil
	}
	s := spec.Copy()
	s.Pinning = ebpf.PinNone
	nm, err := ebpf.NewMap(s)
	if err != nil {
		return fmt.Errorf("migrate conntrack map: %w", err)
	}
	defer nm.Close()
	var (
		key   = make([]byte, old.KeySize())
		value = make([]byte, old.ValueSize())
		wide  = make([]byte, spec.ValueSize)
	)
	it := old.Iterate()
	for it.Next(&key, &value) {
		copy(wide, value) // the new fields follow the old ones and start at zero
		if err := nm.Put(key, wide); err != nil {
			return fmt.Errorf("migrate conntrack entry: %w", err)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("migrate conntrack map: %w", err)
	}
	// Pin beside the old one, then rename over it: the pin path always
	// names a whole map.
	tmp := path + "_migrating" // bpffs names have no dots
	_ = os.Remove(tmp)
	if err := nm.Pin(tmp); err != nil {
		return fmt.Errorf("pin migrated conntrack map: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("replace conntrack pin: %w", err)
	}
	return nil
}

// migrateCountersPin grows a counters map pinned in dir by an earlier
// build, which had slots for fewer hooks, to the current size, keeping
// its counts; a pin of any other shape is left for New's compatibility
// check. Programs of the earlier build still attached count into the old
// map until New's adoption swaps them.
func migrateCountersPin(spec *ebpf.MapSpec, dir string) error {
	path := filepath.Join(dir, spec.Name)
	old, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open pinned counters map: %w", err)
	}
	defer old.Close()
	if old.Type() != spec.Type || old.KeySize() != spec.KeySize || old.ValueSize() != spec.ValueSize ||
		old.MaxEntries() >= spec.MaxEntries {
		return nil
	}
	s := spec.Copy()
	s.Pinning = ebpf.PinNone
	nm, err := ebpf.NewMap(s)
	if err != nil {
		return fmt.Errorf("migrate counters map: %w", err)
	}
	defer nm.Close()
	var (
		k      uint32
		percpu []counter
	)
	it := old.Iterate()
	for it.Next(&k, &percpu) {
		if err := nm.Put(k, percpu); err != nil {
			return fmt.Errorf("migrate counter %d: %w", k, err)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("migrate counters map: %w", err)
	}
	tmp := path + "_migrating"
	_ = os.Remove(tmp)
	if err := nm.Pin(tmp); err != nil {
		return fmt.Errorf("pin migrated counters map: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("replace counters pin: %w", err)
	}
	return nil
}
