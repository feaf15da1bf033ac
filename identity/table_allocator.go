package identity

import (
	"context"
	"fmt"
	"net/netip"
	"sync"

	"github.com/nodeplane/nodeplane"
)

// tableAllocator is the allocation logic shared by [InProcessAllocator] and
// [LocalAllocator]: reserved label sets resolve without a reference, the
// others take references in a refTable per scope, and the cache follows
// every identity created and removed.
type tableAllocator struct {
	mu      sync.Mutex
	cache   *Cache
	cluster *refTable // nil: cluster-scoped label sets are refused
	local   *refTable
	// persist, when set, is called with mu held after every change of the
	// set of IDs, before the change is announced. If it fails, the change
	// is undone and the error returned.
	persist func() error
	closed  bool
}

func (a *tableAllocator) tableFor(labels Labels) (*refTable, error) {
	switch labels.Scope() {
	case ScopeLocal:
		return a.local, nil
	case ScopeCluster:
		if a.cluster == nil {
			return nil, fmt.Errorf("allocate %v: %w: labels need a cluster-scoped identity", labels, ErrWrongScope)
		}
		return a.cluster, nil
	}
	return nil, fmt.Errorf("allocate: %w", ErrNoLabels)
}

func (a *tableAllocator) allocate(ctx context.Context, labels Labels) (ID, bool, error) {
	if err := checkAllocatable(labels); err != nil {
		return Unknown, false, err
	}
	if err := ctx.Err(); err != nil {
		return Unknown, false, err
	}
	// Fast path: another reference to a label set that has an ID.
	// Reserved label sets never have a table entry.
	a.mu.Lock()
	if e := a.lookupEntry(labels); e != nil && !a.closed {
		e.refs++
		e.restored = false
		a.mu.Unlock()
		return e.id, false, nil
	}
	a.mu.Unlock()

	if id, ok := LookupReserved(labels); ok {
		return id, false, nil
	}
	t, err := a.tableFor(labels)
	if err != nil {
		return Unknown, false, err
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return Unknown, false, fmt.Errorf("allocate: %w", nodeplane.ErrClosed)
	}
	e, created, err := t.acquire(labels)
	if err != nil {
		return Unknown, false, err
	}
	if !created {
		return e.id, false, nil
	}
	if a.persist != nil {
		if err := a.persist(); err != nil {
			t.undoCreate(e)
			return Unknown, false, fmt.Errorf("allocate %v: %w", labels, err)
		}
	}
	if err := a.cache.Upsert(e.id, labels); err != nil {
		// The tables and the cache change together under mu; a
		// disagreement is a bug, not an input error.
		panic(fmt.Sprintf("identity: cache out of step with allocator: %v", err))
	}
	return e.id, true, nil
}

// lookupEntry returns the table entry of labels. Called with mu held.
func (a *tableAllocator) lookupEntry(labels Labels) *refEntry {
	if e := a.local.byLabels[labels]; e != nil {
		return e
	}
	if a.cluster != nil {
		return a.cluster.byLabels[labels]
	}
	return nil
}

func (a *tableAllocator) tableOf(id ID) *refTable {
	switch {
	case a.local.owns(id):
		return a.local
	case a.cluster != nil && a.cluster.owns(id):
		return a.cluster
	}
	return nil
}

func (a *tableAllocator) release(ctx context.Context, id ID) (bool, error) {
	if id.IsReserved() {
		return false, nil
	}
	if err := id.Validate(); err != nil {
		return false, fmt.Errorf("release: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return false, err
	}
	t := a.tableOf(id)
	if t == nil {
		return false, fmt.Errorf("release identity %d: %w: not in this allocator's range", uint32(id), ErrNotAllocated)
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return false, fmt.Errorf("release: %w", nodeplane.ErrClosed)
	}
	e, last, err := t.release(id)
	if err != nil || !last {
		return false, err
	}
	if a.persist != nil {
		if err := a.persist(); err != nil {
			t.undoRelease(e)
			return false, fmt.Errorf("release identity %d: %w", uint32(id), err)
		}
	}
	a.cache.Delete(id)
	return true, nil
}

func (a *tableAllocator) lookup(id ID) (Labels, bool) {
	if ls, ok := id.ReservedLabels(); ok {
		return ls, true
	}
	return a.cache.Lookup(id)
}

func (a *tableAllocator) lookupByLabels(labels Labels) (ID, bool) {
	if id, ok := LookupReserved(labels); ok {
		return id, true
	}
	return a.cache.LookupByLabels(labels)
}

func (a *tableAllocator) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.closed {
		a.closed = true
		a.cache.Close()
	}
}

// LocalAllocatorConfig configures a [LocalAllocator].
type LocalAllocatorConfig struct {
	// Stack selects the world labels of the identities
	// [LocalAllocator.AllocateCIDR] creates (see [WorldLabel]). The zero
	// value is [nodeplane.DualStack], as in policy.Config.
	Stack nodeplane.StackMode
	// Cache receives the identities the allocator creates. Nil means a
	// cache of the allocator's own. Sharing a cache lets a cluster-wide
	// allocator report local identities in the same watch stream.
	Cache *Cache
}

// LocalAllocator hands out node-local identities (bit 24 set) for label sets
// of local scope: addresses outside the cluster, named by cidr, fqdn and
// reserved labels. It is in-memory; CIDR identities are re-created by the
// program after a restart. Cluster-scoped label sets fail with
// [ErrWrongScope]. It implements [Allocator].
type LocalAllocator struct {
	a     tableAllocator
	stack nodeplane.StackMode
}

var _ Allocator = (*LocalAllocator)(nil)

// NewLocalAllocator returns a local-scope allocator.
func NewLocalAllocator(cfg LocalAllocatorConfig) *LocalAllocator {
	cache := cfg.Cache
	if cache == nil {
		cache = NewCache()
	}
	return &LocalAllocator{
		a:     tableAllocator{cache: cache, local: newLocalTable()},
		stack: cfg.Stack,
	}
}

// Allocate implements [Allocator].
func (l *LocalAllocator) Allocate(ctx context.Context, labels Labels) (ID, bool, error) {
	return l.a.allocate(ctx, labels)
}

// Release implements [Allocator].
func (l *LocalAllocator) Release(ctx context.Context, id ID) (bool, error) {
	return l.a.release(ctx, id)
}

// Lookup implements [Allocator].
func (l *LocalAllocator) Lookup(id ID) (Labels, bool) { return l.a.lookup(id) }

// LookupByLabels implements [Allocator].
func (l *LocalAllocator) LookupByLabels(labels Labels) (ID, bool) {
	return l.a.lookupByLabels(labels)
}

// Watch implements [Allocator]. With a shared cache it reports every
// identity of that cache.
func (l *LocalAllocator) Watch(opts WatchOptions) ([]Identity, *Watcher[Event]) {
	return l.a.cache.Watch(opts)
}

// Close implements [Allocator]. It closes the cache, shared or not.
func (l *LocalAllocator) Close() error {
	l.a.close()
	return nil
}

// AllocateCIDR allocates the identity of the addresses in prefix, labelled
// by [CIDRLabels]: a local-scope ID, or the reserved world identity for a
// zero-length prefix.
func (l *LocalAllocator) AllocateCIDR(ctx context.Context, prefix netip.Prefix) (ID, bool, error) {
	labels, err := CIDRLabels(prefix, l.stack)
	if err != nil {
		return Unknown, false, err
	}
	return l.a.allocate(ctx, labels)
}
