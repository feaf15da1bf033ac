package identity

import (
	"context"
	"fmt"
	"io"

	"github.com/nodeplane/nodeplane"
)

// InProcessConfig configures an [InProcessAllocator].
type InProcessConfig struct {
	// ClusterID is written into every cluster-scoped ID (bits 16–23). Zero
	// means 1: cluster 0 is not a valid cluster.
	ClusterID uint8
	// StatePath, when set, is a file that keeps every ID across restarts:
	// it is rewritten (temporary file, fsync, rename, fsync of the
	// directory) before any new or freed ID is reported, and read back by
	// the constructor. The file is locked against a second allocator. Empty
	// means no persistence.
	StatePath string
}

// InProcessAllocator is the embedded default [Allocator]: no dependencies,
// every identity held in this process. It gives cluster-scoped IDs of its
// cluster to workload label sets and local-scope IDs to CIDR and FQDN label
// sets. With [InProcessConfig.StatePath] set, a restarted allocator gets its
// IDs back.
//
// # Restart
//
// References do not survive a restart, IDs do: the constructor restores
// every persisted ID without references ("restored"). Allocate of a restored
// label set takes a reference and returns the same ID as before the restart
// (isNew false). Restored IDs that the program no longer needs are released
// with [InProcessAllocator.ReleaseRestored] once it has re-allocated the
// identities of everything it runs.
type InProcessAllocator struct {
	a       tableAllocator
	cluster uint8
	state   *stateFile // nil without persistence
}

var _ Allocator = (*InProcessAllocator)(nil)

// NewInProcessAllocator returns an allocator, restoring the IDs of the state
// file if one is configured. A state file that is torn, corrupt, written for
// another cluster or inconsistent is an error wrapping [ErrCorruptState]: the
// allocator never starts with IDs that differ from the persisted ones.
func NewInProcessAllocator(cfg InProcessConfig) (*InProcessAllocator, error) {
	cluster := cfg.ClusterID
	if cluster == 0 {
		cluster = 1
	}
	a := &InProcessAllocator{
		a: tableAllocator{
			cache:   NewCache(),
			cluster: newClusterTable(cluster),
			local:   newLocalTable(),
		},
		cluster: cluster,
	}
	if cfg.StatePath == "" {
		return a, nil
	}

	st, err := openStateFile(cfg.StatePath)
	if err != nil {
		return nil, err
	}
	entries, err := st.load(cluster)
	if err != nil {
		st.close()
		return nil, err
	}
	for _, e := range entries {
		t := a.a.tableOf(e.id)
		t.insert(&refEntry{id: e.id, labels: e.labels, restored: true})
		if next := e.id.Index() + 1; next > t.next && next <= t.max {
			t.next = next
		}
		if err := a.a.cache.Upsert(e.id, e.labels); err != nil {
			st.close()
			return nil, fmt.Errorf("restore identity state: %w", err)
		}
	}
	a.state = st
	a.a.persist = a.save
	return a, nil
}

// save writes every ID to the state file. Called with a.a.mu held.
func (a *InProcessAllocator) save() error {
	var entries []stateEntry
	for _, t := range []*refTable{a.a.cluster, a.a.local} {
		for _, e := range t.byID {
			entries = append(entries, stateEntry{id: e.id, labels: e.labels})
		}
	}
	return a.state.save(a.cluster, entries)
}

// Allocate implements [Allocator]. Label sets of local scope get local IDs.
// With persistence, a new ID is on disk before it is returned.
func (a *InProcessAllocator) Allocate(ctx context.Context, labels Labels) (ID, bool, error) {
	return a.a.allocate(ctx, labels)
}

// Release implements [Allocator]. With persistence, a freed ID is removed
// from disk before Release returns; if that fails, nothing changes.
func (a *InProcessAllocator) Release(ctx context.Context, id ID) (bool, error) {
	return a.a.release(ctx, id)
}

// Lookup implements [Allocator].
func (a *InProcessAllocator) Lookup(id ID) (Labels, bool) { return a.a.lookup(id) }

// LookupByLabels implements [Allocator].
func (a *InProcessAllocator) LookupByLabels(labels Labels) (ID, bool) {
	return a.a.lookupByLabels(labels)
}

// Watch implements [Allocator]. Restored IDs are part of the snapshot.
func (a *InProcessAllocator) Watch(opts WatchOptions) ([]Identity, *Watcher[Event]) {
	return a.a.cache.Watch(opts)
}

// ReleaseRestored frees every restored ID that no Allocate has claimed since
// the allocator started, and returns how many it freed. If persisting fails,
// nothing changes.
func (a *InProcessAllocator) ReleaseRestored(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	a.a.mu.Lock()
	defer a.a.mu.Unlock()
	if a.a.closed {
		return 0, fmt.Errorf("release restored: %w", nodeplane.ErrClosed)
	}
	var freed []*refEntry
	for _, t := range []*refTable{a.a.cluster, a.a.local} {
		for _, e := range t.byID {
			if e.restored {
				t.remove(e)
				freed = append(freed, e)
			}
		}
	}
	if len(freed) == 0 {
		return 0, nil
	}
	if a.a.persist != nil {
		if err := a.a.persist(); err != nil {
			for _, e := range freed {
				a.a.tableOf(e.id).insert(e)
			}
			return 0, fmt.Errorf("release restored: %w", err)
		}
	}
	for _, e := range freed {
		a.a.cache.Delete(e.id)
	}
	return len(freed), nil
}

// Close implements [Allocator]: it ends every watch and unlocks the state
// file. The persisted IDs stay for the next allocator.
func (a *InProcessAllocator) Close() error {
	a.a.close()
	if a.state != nil {
		return a.state.close()
	}
	return nil
}

var _ io.Closer = (*InProcessAllocator)(nil)
