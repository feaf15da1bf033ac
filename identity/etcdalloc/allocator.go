package etcdalloc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
)

// ErrUnavailable: etcd did not answer (unreachable, no leader, or the
// caller's context ended first).
var ErrUnavailable = errors.New("etcd unavailable")

// ErrConflict: too many concurrent changes of the same label set or ID range
// kept an allocation from completing; retrying is safe.
var ErrConflict = errors.New("allocation conflict")

// Defaults for zero fields of [Config].
const (
	DefaultPrefix     = "nodeplane/identity/"
	DefaultLeaseTTL   = 60 * time.Second
	DefaultGCInterval = 5 * time.Minute
)

// maxAttempts bounds the transaction retries of one allocation.
const maxAttempts = 64

// Config configures an [Allocator].
type Config struct {
	// Client is the etcd client. Required; the allocator does not close it.
	Client *clientv3.Client
	// NodeName names this node in its reference keys. Required: letters,
	// digits, '.', '_' and '-'. Nodes sharing a cluster need distinct names.
	NodeName string
	// ClusterID is written into every cluster-scoped ID (bits 16–23). Zero
	// means 1: cluster 0 is not a valid cluster.
	ClusterID uint8
	// Prefix is prepended to every key. Zero means [DefaultPrefix].
	Prefix string
	// LeaseTTL is the lifetime of this node's references when it stops
	// renewing them. Zero means [DefaultLeaseTTL]; at least 5s.
	LeaseTTL time.Duration
	// GCInterval is how often this node collects identities that have no
	// reference left. Zero means [DefaultGCInterval]; negative disables the
	// background collection ([Allocator.RunGC] still works).
	GCInterval time.Duration
	// Stack selects the world labels of the identities
	// [Allocator.AllocateCIDR] creates. The zero value is
	// [nodeplane.DualStack].
	Stack nodeplane.StackMode
}

// Allocator is an [identity.Allocator] backed by etcd. See the package
// documentation for the scheme. It is safe for concurrent use.
type Allocator struct {
	cli     *clientv3.Client
	node    string
	cluster uint8
	keys    keys
	ttl     time.Duration
	cache   *identity.Cache
	local   *identity.LocalAllocator
	locks   keyedMutex

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	refs     map[identity.ID]*reference
	byLabels map[identity.Labels]*reference
	lease    clientv3.LeaseID
	// leaseLost is closed and replaced when a request finds the lease gone.
	leaseLost chan struct{}
	// changed is closed and replaced whenever the watch applies events.
	changed chan struct{}
	rev     int64
	closed  bool
	// conflicts counts references that could not be restored after the
	// lease was lost.
	conflicts int
}

var _ identity.Allocator = (*Allocator)(nil)

// reference is this node's hold on an identity in etcd.
type reference struct {
	id     identity.ID
	labels identity.Labels
	count  int64
}

// New starts an allocator: it takes a lease, lists the cluster's identities
// into the cache and starts the watch, the lease renewal and the garbage
// collection. ctx bounds the start only.
func New(ctx context.Context, cfg Config) (*Allocator, error) {
	if cfg.Client == nil {
		return nil, errors.New("etcdalloc: Config.Client is required")
	}
	if err := checkNodeName(cfg.NodeName); err != nil {
		return nil, err
	}
	cluster := cfg.ClusterID
	if cluster == 0 {
		cluster = 1
	}
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = DefaultPrefix
	}
	ttl := cfg.LeaseTTL
	if ttl == 0 {
		ttl = DefaultLeaseTTL
	}
	if ttl < 5*time.Second {
		return nil, fmt.Errorf("etcdalloc: LeaseTTL %v below 5s", ttl)
	}
	gcEvery := cfg.GCInterval
	if gcEvery == 0 {
		gcEvery = DefaultGCInterval
	}

	cache := identity.NewCache()
	a := &Allocator{
		cli:       cfg.Client,
		node:      cfg.NodeName,
		cluster:   cluster,
		keys:      newKeys(prefix, cluster),
		ttl:       ttl,
		cache:     cache,
		local:     identity.NewLocalAllocator(identity.LocalAllocatorConfig{Stack: cfg.Stack, Cache: cache}),
		refs:      make(map[identity.ID]*reference),
		byLabels:  make(map[identity.Labels]*reference),
		leaseLost: make(chan struct{}),
		changed:   make(chan struct{}),
	}

	lease, err := a.cli.Grant(ctx, int64(ttl/time.Second))
	if err != nil {
		return nil, fmt.Errorf("etcdalloc: grant lease: %w", unavailable(ctx, err))
	}
	a.lease = lease.ID
	rev, err := a.list(ctx)
	if err != nil {
		a.cli.Revoke(context.WithoutCancel(ctx), lease.ID)
		return nil, err
	}
	a.rev = rev

	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.wg.Add(2)
	go a.watchLoop(rev)
	go a.leaseLoop()
	if gcEvery > 0 {
		a.wg.Add(1)
		go a.gcLoop(gcEvery)
	}
	return a, nil
}

func checkNodeName(name string) error {
	if name == "" {
		return errors.New("etcdalloc: Config.NodeName is required")
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("etcdalloc: NodeName %q: only letters, digits, '.', '_' and '-' are allowed", name)
		}
	}
	return nil
}

// unavailable wraps an etcd client error as [ErrUnavailable], naming the
// context's error when that is what ended the wait.
func unavailable(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w: no answer before the context ended: %w", ErrUnavailable, cerr)
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// Allocate implements [identity.Allocator]. Cluster-scoped label sets this
// node already references only take another local reference; others need
// etcd and wait for it until ctx ends. The returned ID is normally in the
// cache (and its creation in the watch stream) when Allocate returns; if ctx
// ends after etcd committed the reference but before the watch delivered
// it, Allocate returns the ID all the same and the cache catches up.
func (a *Allocator) Allocate(ctx context.Context, labels identity.Labels) (identity.ID, bool, error) {
	if labels.IsEmpty() {
		return identity.Unknown, false, fmt.Errorf("etcdalloc: allocate: %w", identity.ErrNoLabels)
	}
	if id, ok := identity.LookupReserved(labels); ok {
		return id, false, nil
	}
	if labels.Scope() == identity.ScopeLocal {
		return a.local.Allocate(ctx, labels)
	}
	if err := ctx.Err(); err != nil {
		return identity.Unknown, false, err
	}

	unlock := a.locks.lock(labels)
	defer unlock()

	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return identity.Unknown, false, fmt.Errorf("etcdalloc: allocate: %w", nodeplane.ErrClosed)
	}
	if r := a.byLabels[labels]; r != nil {
		r.count++
		a.mu.Unlock()
		return r.id, false, nil
	}
	a.mu.Unlock()

	id, isNew, err := a.acquire(ctx, labels)
	if err != nil {
		return identity.Unknown, false, fmt.Errorf("etcdalloc: allocate %v: %w", labels, err)
	}
	a.waitCached(ctx, id, labels)
	a.addRef(id, labels)
	return id, isNew, nil
}

func (a *Allocator) addRef(id identity.ID, labels identity.Labels) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r := a.byLabels[labels]; r != nil {
		r.count++
		return
	}
	r := &reference{id: id, labels: labels, count: 1}
	a.refs[id] = r
	a.byLabels[labels] = r
}

// acquire writes this node's reference to the identity of labels in etcd,
// creating the identity if it does not exist. Joining an identity the cache
// knows takes one transaction; creating one takes one transaction too; only
// a label set created elsewhere and not yet cached takes two.
func (a *Allocator) acquire(ctx context.Context, labels identity.Labels) (identity.ID, bool, error) {
	labelsKey := a.keys.labels(labels)
	refKey := a.keys.ref(labels, a.node)
	tried := make(map[identity.ID]bool)
	join := func(id identity.ID) (bool, error) {
		lease, lost := a.currentLease()
		value := strconv.FormatUint(uint64(id), 10)
		// The index still naming id proves the identity exists: garbage
		// collection deletes the index with the master.
		txn, err := a.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.Value(labelsKey), "=", value)).
			Then(clientv3.OpPut(refKey, value, clientv3.WithLease(lease))).
			Commit()
		if err != nil {
			if a.leaseGone(err, lost) {
				return false, nil
			}
			return false, unavailable(ctx, err)
		}
		return txn.Succeeded, nil
	}

	for range maxAttempts {
		if id, ok := a.cache.LookupByLabels(labels); ok {
			joined, err := join(id)
			if err != nil {
				return identity.Unknown, false, err
			}
			if joined {
				return id, false, nil
			}
		}

		id, ok := a.candidate(tried)
		if !ok {
			return identity.Unknown, false, identity.ErrExhausted
		}
		tried[id] = true
		lease, lost := a.currentLease()
		idKey := a.keys.id(id)
		value := strconv.FormatUint(uint64(id), 10)
		txn, err := a.cli.Txn(ctx).
			If(
				clientv3.Compare(clientv3.CreateRevision(labelsKey), "=", 0),
				clientv3.Compare(clientv3.CreateRevision(idKey), "=", 0),
			).
			Then(
				clientv3.OpPut(idKey, labels.Key()),
				clientv3.OpPut(labelsKey, value),
				clientv3.OpPut(refKey, value, clientv3.WithLease(lease)),
			).
			Else(clientv3.OpGet(labelsKey)).
			Commit()
		if err != nil {
			if a.leaseGone(err, lost) {
				continue
			}
			return identity.Unknown, false, unavailable(ctx, err)
		}
		if txn.Succeeded {
			return id, true, nil
		}
		kvs := txn.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			continue // the ID is taken by other labels: try another
		}
		// The labels have an identity the cache does not know yet.
		existing, err := a.keys.parseID(string(kvs[0].Value))
		if err != nil {
			return identity.Unknown, false, fmt.Errorf("index key %q: %w", kvs[0].Key, err)
		}
		joined, err := join(existing)
		if err != nil {
			return identity.Unknown, false, err
		}
		if joined {
			return existing, false, nil
		}
		// Collected or recreated meanwhile: start over.
	}
	return identity.Unknown, false, fmt.Errorf("%w: gave up after %d attempts", ErrConflict, maxAttempts)
}

// candidate picks an unused ID of the cluster, starting at a random index so
// that nodes allocating at the same time rarely pick the same one.
func (a *Allocator) candidate(tried map[identity.ID]bool) (identity.ID, bool) {
	const span = identity.MaxClusterIndex - identity.MinClusterIndex + 1
	start := rand.IntN(span)
	for i := range span {
		index := uint16(identity.MinClusterIndex + (start+i)%span)
		id, _ := identity.ClusterScopedID(a.cluster, index)
		if tried[id] {
			continue
		}
		if _, used := a.cache.Lookup(id); !used {
			return id, true
		}
	}
	return identity.Unknown, false
}

// waitCached waits until the watch has put id with labels into the cache,
// or ctx or the allocator ends: the identity exists in etcd either way.
func (a *Allocator) waitCached(ctx context.Context, id identity.ID, labels identity.Labels) {
	for {
		a.mu.Lock()
		ch := a.changed
		a.mu.Unlock()
		if got, ok := a.cache.Lookup(id); ok && got == labels {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		case <-a.ctx.Done():
			return
		}
	}
}

// Release implements [identity.Allocator]. The last local reference is
// removed from etcd before Release returns; if etcd cannot be reached the
// reference stays counted and the error wraps [ErrUnavailable].
func (a *Allocator) Release(ctx context.Context, id identity.ID) (bool, error) {
	if id.IsReserved() {
		return false, nil
	}
	if err := id.Validate(); err != nil {
		return false, fmt.Errorf("etcdalloc: release: %w", err)
	}
	if id.IsLocal() {
		return a.local.Release(ctx, id)
	}
	if id.ClusterID() != a.cluster {
		return false, fmt.Errorf("etcdalloc: release identity %d: %w: belongs to cluster %d", uint32(id), identity.ErrNotAllocated, id.ClusterID())
	}
	a.mu.Lock()
	r := a.refs[id]
	a.mu.Unlock()
	if r == nil {
		return false, fmt.Errorf("etcdalloc: release identity %d: %w", uint32(id), identity.ErrNotAllocated)
	}
	unlock := a.locks.lock(r.labels)
	defer unlock()

	a.mu.Lock()
	if a.refs[id] != r || r.count == 0 {
		// Released concurrently while we waited for the lock.
		a.mu.Unlock()
		return false, fmt.Errorf("etcdalloc: release identity %d: %w", uint32(id), identity.ErrNotAllocated)
	}
	if r.count > 1 {
		r.count--
		a.mu.Unlock()
		return false, nil
	}
	closed := a.closed
	a.mu.Unlock()
	if closed {
		return false, fmt.Errorf("etcdalloc: release: %w", nodeplane.ErrClosed)
	}

	if _, err := a.cli.Delete(ctx, a.keys.ref(r.labels, a.node)); err != nil {
		return false, fmt.Errorf("etcdalloc: release identity %d: %w", uint32(id), unavailable(ctx, err))
	}
	a.mu.Lock()
	delete(a.refs, id)
	delete(a.byLabels, r.labels)
	a.mu.Unlock()
	return true, nil
}

// Lookup implements [identity.Allocator] from the cache.
func (a *Allocator) Lookup(id identity.ID) (identity.Labels, bool) {
	if ls, ok := id.ReservedLabels(); ok {
		return ls, true
	}
	return a.cache.Lookup(id)
}

// LookupByLabels implements [identity.Allocator] from the cache.
func (a *Allocator) LookupByLabels(labels identity.Labels) (identity.ID, bool) {
	if id, ok := identity.LookupReserved(labels); ok {
		return id, true
	}
	return a.cache.LookupByLabels(labels)
}

// Watch implements [identity.Allocator]: every identity of the cluster (and
// this node's local ones), then every change.
func (a *Allocator) Watch(opts identity.WatchOptions) ([]identity.Identity, *identity.Watcher[identity.Event]) {
	return a.cache.Watch(opts)
}

// AllocateCIDR allocates the local identity of the addresses in a prefix;
// see [identity.LocalAllocator.AllocateCIDR].
func (a *Allocator) AllocateCIDR(ctx context.Context, prefix netip.Prefix) (identity.ID, bool, error) {
	return a.local.AllocateCIDR(ctx, prefix)
}

// Close stops the watch, the lease renewal and the collection, and ends
// every watch. References stay in etcd until the lease expires, so that a
// restarted allocator with the same NodeName takes them over.
func (a *Allocator) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	a.mu.Unlock()
	a.cancel()
	a.wg.Wait()
	a.local.Close() // closes the shared cache too
	return nil
}

// keyedMutex serialises work per label set.
type keyedMutex struct {
	mu sync.Mutex
	m  map[identity.Labels]*keyedEntry
}

type keyedEntry struct {
	mu sync.Mutex
	n  int
}

func (k *keyedMutex) lock(labels identity.Labels) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = make(map[identity.Labels]*keyedEntry)
	}
	e := k.m[labels]
	if e == nil {
		e = &keyedEntry{}
		k.m[labels] = e
	}
	e.n++
	k.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		k.mu.Lock()
		if e.n--; e.n == 0 {
			delete(k.m, labels)
		}
		k.mu.Unlock()
	}
}
