package overlay

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/watch"
)

// Event reports a change of the registry: a node joined or changed
// (Deleted false, Node the new value), or left (Deleted true, only
// Node.Name set).
type Event struct {
	Node    Node
	Deleted bool
}

// Registry is the cluster's list of nodes. [LocalRegistry] keeps it in
// the process (one node's view, or tests); package overlay/etcdnodes keeps
// it in etcd, where a node's entry lives as long as the node renews it.
type Registry interface {
	// Register adds or replaces a node. A node whose pod CIDRs overlap
	// another node's is refused with an [*OverlapError].
	Register(ctx context.Context, n Node) error
	// Deregister removes a node; [ErrNodeNotFound] if there is none.
	Deregister(ctx context.Context, name string) error
	// Nodes returns every node, sorted by name.
	Nodes(ctx context.Context) ([]Node, error)
	// Watch returns the nodes now and a watcher of every change after
	// them. The watcher ends when ctx is done or the registry closes.
	Watch(ctx context.Context) ([]Node, *identity.Watcher[Event], error)
}

// LocalRegistry is an in-process [Registry]. The zero value is not ready;
// use [NewLocalRegistry]. It is safe for concurrent use.
type LocalRegistry struct {
	mu     sync.Mutex
	nodes  map[string]Node
	hub    watch.Hub[Event]
	closed bool
}

var _ Registry = (*LocalRegistry)(nil)

// NewLocalRegistry returns an empty in-process registry.
func NewLocalRegistry() *LocalRegistry {
	return &LocalRegistry{nodes: make(map[string]Node)}
}

func (r *LocalRegistry) check() error {
	if r.closed {
		return fmt.Errorf("node registry: %w", nodeplane.ErrClosed)
	}
	return nil
}

// Register adds or replaces n.
func (r *LocalRegistry) Register(ctx context.Context, n Node) error {
	n, err := n.canonical()
	if err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.check(); err != nil {
		return err
	}
	if err := CheckOverlap(n, r.sortedLocked()); err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	if old, ok := r.nodes[n.Name]; ok && old.Equal(n) {
		return nil
	}
	r.nodes[n.Name] = n
	r.hub.Publish(Event{Node: n})
	return nil
}

// Deregister removes the node called name.
func (r *LocalRegistry) Deregister(ctx context.Context, name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.check(); err != nil {
		return err
	}
	if _, ok := r.nodes[name]; !ok {
		return fmt.Errorf("deregister node %q: %w", name, ErrNodeNotFound)
	}
	delete(r.nodes, name)
	r.hub.Publish(Event{Node: Node{Name: name}, Deleted: true})
	return nil
}

// Nodes returns every node, sorted by name.
func (r *LocalRegistry) Nodes(ctx context.Context) ([]Node, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.check(); err != nil {
		return nil, err
	}
	return r.sortedLocked(), nil
}

// Watch returns the nodes and a watcher of the changes after them.
func (r *LocalRegistry) Watch(ctx context.Context) ([]Node, *identity.Watcher[Event], error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.check(); err != nil {
		return nil, nil, err
	}
	w := r.hub.Subscribe(watch.Options{})
	context.AfterFunc(ctx, func() { w.Close() })
	return r.sortedLocked(), w, nil
}

// Close ends every watcher; later calls fail with [nodeplane.ErrClosed].
func (r *LocalRegistry) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.closed = true
		r.hub.Close()
	}
	return nil
}

func (r *LocalRegistry) sortedLocked() []Node {
	out := make([]Node, 0, len(r.nodes))
	for _, n := range r.nodes {
		out = append(out, n)
	}
	slices.SortFunc(out, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	return out
}
