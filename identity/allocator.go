package identity

import (
	"context"
	"fmt"
)

// Allocator hands out numeric identities for label sets, with reference
// counting: every successful Allocate takes one reference on this node,
// every Release drops one, and an identity lives while some reference to it
// does.
//
// Label sets are routed by kind. A set that [LookupReserved] resolves gets
// its reserved ID without a reference. A set whose [Labels.Scope] is local (cidr,
// fqdn and reserved labels only) gets a node-local ID. Every other set gets a
// cluster-scoped ID, the same on every node that shares the allocator's
// backend.
//
// Implementations are safe for concurrent use.
type Allocator interface {
	// Allocate returns the identity of labels, taking a reference. isNew
	// reports whether this call created the identity: it did not exist
	// before, on this node or (for a cluster-wide allocator) anywhere.
	Allocate(ctx context.Context, labels Labels) (id ID, isNew bool, err error)
	// Release drops one reference taken by Allocate. released reports
	// whether it was the last reference on this node. Releasing an ID
	// without references fails with [ErrNotAllocated]; releasing a reserved
	// ID does nothing.
	Release(ctx context.Context, id ID) (released bool, err error)
	// Lookup returns the labels of an identity this allocator knows,
	// reserved identities included. It never waits on the outside world.
	Lookup(id ID) (Labels, bool)
	// LookupByLabels returns the identity of a label set if it exists,
	// without taking a reference.
	LookupByLabels(labels Labels) (ID, bool)
	// Watch returns the identities that exist now (reserved ones excluded)
	// and a watcher that reports every identity added or removed after
	// that, wherever the allocator sees it.
	Watch(opts WatchOptions) ([]Identity, *Watcher[Event])
	// Close stops the allocator and ends every watch. It does not release
	// references; identities of a persistent or shared backend outlive it.
	Close() error
}

// checkAllocatable rejects label sets no identity can be given.
func checkAllocatable(labels Labels) error {
	if labels.IsEmpty() {
		return fmt.Errorf("allocate: %w", ErrNoLabels)
	}
	return nil
}
