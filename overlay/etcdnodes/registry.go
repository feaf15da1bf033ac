package etcdnodes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/watch"
	"github.com/nodeplane/nodeplane/overlay"
)

// Defaults of [Config].
const (
	DefaultPrefix   = "/nodeplane/overlay/"
	DefaultLeaseTTL = 30 * time.Second
)

// maxAttempts bounds the transactions one Register makes; every lost race
// means another registration won.
const maxAttempts = 100

// Config configures a [Registry].
type Config struct {
	// Client is the etcd client. Required; the registry does not close it.
	Client *clientv3.Client
	// Prefix is the etcd key prefix. Empty means DefaultPrefix; a missing
	// trailing '/' is added.
	Prefix string
	// LeaseTTL is how long the nodes this process registered outlive it
	// when it stops renewing them (crash, partition). Zero means
	// DefaultLeaseTTL; at least 2s (etcd's minimum lease TTL).
	LeaseTTL time.Duration
}

// Registry is an [overlay.Registry] in etcd. Nodes it registers are bound
// to its lease: they disappear when the process stops renewing it. It is
// safe for concurrent use.
type Registry struct {
	cli    *clientv3.Client
	prefix string
	ttl    time.Duration

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	lease clientv3.LeaseID
	mine  map[string]overlay.Node // registered by this process, re-put on a new lease
}

var _ overlay.Registry = (*Registry)(nil)

// New grants the registry's lease and starts renewing it.
func New(ctx context.Context, cfg Config) (_ *Registry, err error) {
	if cfg.Client == nil {
		return nil, fmt.Errorf("etcdnodes: Config.Client is nil: %w", overlay.ErrInvalidConfig)
	}
	ttl := cfg.LeaseTTL
	if ttl == 0 {
		ttl = DefaultLeaseTTL
	}
	if ttl < 2*time.Second {
		return nil, fmt.Errorf("etcdnodes: LeaseTTL %v below 2s: %w", ttl, overlay.ErrInvalidConfig)
	}
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	lease, err := cfg.Client.Grant(ctx, int64(ttl/time.Second))
	if err != nil {
		return nil, fmt.Errorf("etcdnodes: grant lease: %w", err)
	}
	r := &Registry{cli: cfg.Client, prefix: prefix, ttl: ttl, lease: lease.ID, mine: make(map[string]overlay.Node)}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.wg.Add(1)
	go r.keepAlive()
	return r, nil
}

func (r *Registry) nodesPrefix() string        { return r.prefix + "nodes/" }
func (r *Registry) nodeKey(name string) string { return r.nodesPrefix() + name }

// versionKey is bumped by every Register, so that the overlap check and
// the write of one registration happen against the same set of nodes.
func (r *Registry) versionKey() string { return r.prefix + "version" }

// stored is a node as kept in etcd.
type stored struct {
	Addresses     []netip.Addr   `json:"addresses"`
	PodCIDRs      []netip.Prefix `json:"podCIDRs"`
	HostAddresses []netip.Addr   `json:"hostAddresses,omitempty"`
}

func decode(prefix string, key, value []byte) (overlay.Node, error) {
	var s stored
	if err := json.Unmarshal(value, &s); err != nil {
		return overlay.Node{}, fmt.Errorf("etcd key %q: %w", key, err)
	}
	n := overlay.Node{Name: strings.TrimPrefix(string(key), prefix), Addresses: s.Addresses, PodCIDRs: s.PodCIDRs, HostAddresses: s.HostAddresses}
	return overlay.Canonical(n)
}

func (r *Registry) closed() error {
	if r.ctx.Err() != nil {
		return fmt.Errorf("etcdnodes: %w", nodeplane.ErrClosed)
	}
	return nil
}

// Register adds or replaces n, bound to this registry's lease. It is
// refused with an [*overlay.OverlapError] when n's pod CIDRs overlap
// another node's.
func (r *Registry) Register(ctx context.Context, n overlay.Node) error {
	if err := r.closed(); err != nil {
		return err
	}
	n, err := overlay.Canonical(n)
	if err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	value, err := json.Marshal(stored{n.Addresses, n.PodCIDRs, n.HostAddresses})
	if err != nil {
		return err
	}
	for range maxAttempts {
		// The nodes and the version key, read at one revision.
		resp, err := r.cli.Txn(ctx).Then(
			clientv3.OpGet(r.nodesPrefix(), clientv3.WithPrefix()),
			clientv3.OpGet(r.versionKey()),
		).Commit()
		if err != nil {
			return fmt.Errorf("register node %q: %w", n.Name, err)
		}
		var others []overlay.Node
		var version int64
		for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
			version = kv.ModRevision
		}
		for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
			o, err := decode(r.nodesPrefix(), kv.Key, kv.Value)
			if err != nil {
				return fmt.Errorf("register node %q: %w", n.Name, err)
			}
			others = append(others, o)
		}
		if err := overlay.CheckOverlap(n, others); err != nil {
			return fmt.Errorf("register node: %w", err)
		}
		r.mu.Lock()
		lease := r.lease
		r.mu.Unlock()
		txn, err := r.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(r.versionKey()), "=", version)).
			Then(clientv3.OpPut(r.nodeKey(n.Name), string(value), clientv3.WithLease(lease)),
				clientv3.OpPut(r.versionKey(), "")).
			Commit()
		if err != nil {
			return fmt.Errorf("register node %q: %w", n.Name, err)
		}
		if txn.Succeeded {
			r.mu.Lock()
			r.mine[n.Name] = n
			r.mu.Unlock()
			return nil
		}
	}
	return fmt.Errorf("register node %q: gave up after %d conflicting registrations", n.Name, maxAttempts)
}

// Deregister removes the node called name, whoever registered it.
func (r *Registry) Deregister(ctx context.Context, name string) error {
	if err := r.closed(); err != nil {
		return err
	}
	resp, err := r.cli.Delete(ctx, r.nodeKey(name))
	if err != nil {
		return fmt.Errorf("deregister node %q: %w", name, err)
	}
	r.mu.Lock()
	delete(r.mine, name)
	r.mu.Unlock()
	if resp.Deleted == 0 {
		return fmt.Errorf("deregister node %q: %w", name, overlay.ErrNodeNotFound)
	}
	return nil
}

// Nodes returns every node, sorted by name.
func (r *Registry) Nodes(ctx context.Context) ([]overlay.Node, error) {
	nodes, _, err := r.list(ctx)
	return nodes, err
}

func (r *Registry) list(ctx context.Context) ([]overlay.Node, int64, error) {
	if err := r.closed(); err != nil {
		return nil, 0, err
	}
	resp, err := r.cli.Get(ctx, r.nodesPrefix(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, 0, fmt.Errorf("list nodes: %w", err)
	}
	nodes := make([]overlay.Node, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		n, err := decode(r.nodesPrefix(), kv.Key, kv.Value)
		if err != nil {
			return nil, 0, fmt.Errorf("list nodes: %w", err)
		}
		nodes = append(nodes, n)
	}
	slices.SortFunc(nodes, func(a, b overlay.Node) int { return strings.Compare(a.Name, b.Name) })
	return nodes, resp.Header.Revision, nil
}

// Watch returns the nodes and a watcher of every change after them,
// including nodes whose lease expired (as deletions). The watcher ends
// when ctx is done, the registry closes, or etcd ends the watch (then
// Next returns an error; watch again).
func (r *Registry) Watch(ctx context.Context) ([]overlay.Node, *identity.Watcher[overlay.Event], error) {
	nodes, rev, err := r.list(ctx)
	if err != nil {
		return nil, nil, err
	}
	hub := new(watch.Hub[overlay.Event])
	w := hub.Subscribe(watch.Options{})
	wctx, cancel := context.WithCancel(r.ctx)
	stop := context.AfterFunc(ctx, cancel)
	ch := r.cli.Watch(clientv3.WithRequireLeader(wctx), r.nodesPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer stop()
		defer cancel()
		defer hub.Close()
		for resp := range ch {
			if resp.Err() != nil {
				return
			}
			for _, ev := range resp.Events {
				name := strings.TrimPrefix(string(ev.Kv.Key), r.nodesPrefix())
				if ev.Type == clientv3.EventTypeDelete {
					hub.Publish(overlay.Event{Node: overlay.Node{Name: name}, Deleted: true})
					continue
				}
				n, err := decode(r.nodesPrefix(), ev.Kv.Key, ev.Kv.Value)
				if err != nil {
					// A malformed entry (not written by this package) is
					// treated as absent.
					hub.Publish(overlay.Event{Node: overlay.Node{Name: name}, Deleted: true})
					continue
				}
				hub.Publish(overlay.Event{Node: n})
			}
		}
	}()
	return nodes, w, nil
}

// keepAlive renews the lease. When renewal stops while the registry is
// open (etcd lost the lease, or was unreachable for a whole TTL) it takes
// a new lease and writes this process's nodes again.
func (r *Registry) keepAlive() {
	defer r.wg.Done()
	for r.ctx.Err() == nil {
		r.mu.Lock()
		lease := r.lease
		r.mu.Unlock()
		ch, err := r.cli.KeepAlive(r.ctx, lease)
		if err == nil {
			for range ch {
			}
		}
		if r.ctx.Err() != nil {
			return
		}
		if ttl, err := r.cli.TimeToLive(r.ctx, lease); err == nil && ttl.TTL > 0 {
			continue // still alive: the keep-alive stream ended for another reason
		}
		r.renew()
		select {
		case <-r.ctx.Done():
		case <-time.After(r.ttl / 4):
		}
	}
}

// renew takes a new lease and puts this process's nodes under it.
func (r *Registry) renew() {
	ctx, cancel := context.WithTimeout(r.ctx, r.ttl)
	defer cancel()
	grant, err := r.cli.Grant(ctx, int64(r.ttl/time.Second))
	if err != nil {
		return
	}
	r.mu.Lock()
	r.lease = grant.ID
	mine := make([]overlay.Node, 0, len(r.mine))
	for _, n := range r.mine {
		mine = append(mine, n)
	}
	r.mu.Unlock()
	for _, n := range mine {
		_ = r.Register(ctx, n)
	}
}

// Close stops renewing and revokes the lease, so the nodes this process
// registered leave at once; watchers end. It does not close the client.
func (r *Registry) Close() error {
	if r.ctx.Err() != nil {
		return nil
	}
	r.cancel()
	r.wg.Wait()
	r.mu.Lock()
	lease := r.lease
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := r.cli.Revoke(ctx, lease); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcdnodes: revoke lease: %w", err)
	}
	return nil
}
