package identity

import (
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/watch"
)

// EventKind says what happened to an identity.
type EventKind uint8

const (
	// EventAdded: the identity came into existence.
	EventAdded EventKind = iota + 1
	// EventRemoved: the identity is gone; its ID may be reused later.
	EventRemoved
)

func (k EventKind) String() string {
	switch k {
	case EventAdded:
		return "added"
	case EventRemoved:
		return "removed"
	}
	return fmt.Sprintf("EventKind(%d)", uint8(k))
}

// Event reports an identity added or removed anywhere the allocator sees:
// on this node, or, for a cluster-wide allocator, on any node.
type Event struct {
	Kind   EventKind
	ID     ID
	Labels Labels
}

func (e Event) String() string {
	return e.Kind.String() + " " + Identity{e.ID, e.Labels}.String()
}

// Cache is the table of identities an allocator knows, ID to labels and
// back, and the source of its watch stream. Every change is delivered to
// every watcher exactly once, in the order the changes were made.
//
// Allocators own their Cache and expose it read-only through [Allocator];
// Cache is exported so that allocators in other packages (such as
// identity/etcdalloc) keep the same contract. It is safe for concurrent use.
type Cache struct {
	mu       sync.RWMutex
	byID     map[ID]Labels
	byLabels map[Labels]ID
	hub      watch.Hub[Event]
	closed   bool
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{byID: make(map[ID]Labels), byLabels: make(map[Labels]ID)}
}

// Upsert records that id names labels. Re-recording the same pair changes
// nothing. A new pair is announced as [EventAdded]; an ID that named other
// labels is first announced as removed. It is an error, and changes nothing,
// to give an invalid or reserved ID, empty labels, or labels that another
// ID names.
func (c *Cache) Upsert(id ID, labels Labels) error {
	if err := id.Validate(); err != nil {
		return err
	}
	if id.IsReserved() {
		return fmt.Errorf("cache identity %d: %w: reserved identities are not cached", uint32(id), ErrInvalidID)
	}
	if labels.IsEmpty() {
		return fmt.Errorf("cache identity %d: %w", uint32(id), ErrNoLabels)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nodeplane.ErrClosed
	}
	if other, ok := c.byLabels[labels]; ok {
		if other == id {
			return nil
		}
		return fmt.Errorf("cache identity %d: labels %v already have identity %d", uint32(id), labels, uint32(other))
	}
	if old, ok := c.byID[id]; ok {
		delete(c.byLabels, old)
		c.hub.Publish(Event{Kind: EventRemoved, ID: id, Labels: old})
	}
	c.byID[id] = labels
	c.byLabels[labels] = id
	c.hub.Publish(Event{Kind: EventAdded, ID: id, Labels: labels})
	return nil
}

// Delete forgets id and announces it as [EventRemoved]. It reports whether
// the ID was present.
func (c *Cache) Delete(id ID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	labels, ok := c.byID[id]
	if !ok || c.closed {
		return false
	}
	delete(c.byID, id)
	delete(c.byLabels, labels)
	c.hub.Publish(Event{Kind: EventRemoved, ID: id, Labels: labels})
	return true
}

// Lookup returns the labels of id.
func (c *Cache) Lookup(id ID) (Labels, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	ls, ok := c.byID[id]
	return ls, ok
}

// LookupByLabels returns the ID of a label set.
func (c *Cache) LookupByLabels(labels Labels) (ID, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	id, ok := c.byLabels[labels]
	return id, ok
}

// Len returns the number of identities.
func (c *Cache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.byID)
}

// Snapshot returns every identity, in ID order.
func (c *Cache) Snapshot() []Identity {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.snapshotLocked()
}

func (c *Cache) snapshotLocked() []Identity {
	ids := slices.Sorted(maps.Keys(c.byID))
	out := make([]Identity, len(ids))
	for i, id := range ids {
		out[i] = Identity{ID: id, Labels: c.byID[id]}
	}
	return out
}

// Watch returns the identities the cache holds now, in ID order, and a
// watcher that delivers every change made after that snapshot.
func (c *Cache) Watch(opts WatchOptions) ([]Identity, *Watcher[Event]) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.snapshotLocked(), c.hub.Subscribe(opts)
}

// Close ends every watch (after the events already queued) and makes further
// changes fail. Lookups keep answering from the last state.
func (c *Cache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.hub.Close()
}
