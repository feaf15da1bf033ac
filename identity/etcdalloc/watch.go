package etcdalloc

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/nodeplane/nodeplane/identity"
)

// list reads every master key into the cache, reporting the differences
// with what the cache held (cluster-scoped IDs only; local ones are not in
// etcd), and returns the revision it read at.
func (a *Allocator) list(ctx context.Context) (int64, error) {
	resp, err := a.cli.Get(ctx, a.keys.idPrefix(), clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("etcdalloc: list identities: %w", unavailable(ctx, err))
	}
	want := make(map[identity.ID]identity.Labels, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if id, labels, ok := a.parseMaster(kv); ok {
			want[id] = labels
		}
	}
	// Removals first, so that a label set that moved to another ID is free
	// when its new ID is added.
	for _, have := range a.cache.Snapshot() {
		if !have.ID.IsCluster() {
			continue
		}
		if ls, ok := want[have.ID]; !ok || ls != have.Labels {
			a.cache.Delete(have.ID)
		}
	}
	for id, labels := range want {
		a.cache.Upsert(id, labels) // rejects only data another writer corrupted
	}
	a.notifyChanged(resp.Header.Revision)
	return resp.Header.Revision, nil
}

func (a *Allocator) parseMaster(kv *mvccpb.KeyValue) (identity.ID, identity.Labels, bool) {
	id, err := a.keys.parseIDKey(string(kv.Key))
	if err != nil {
		return identity.Unknown, identity.Labels{}, false
	}
	labels, err := identity.LabelsFromKey(string(kv.Value))
	if err != nil || labels.IsEmpty() || labels.Scope() != identity.ScopeCluster {
		return identity.Unknown, identity.Labels{}, false
	}
	return id, labels, true
}

func (a *Allocator) notifyChanged(rev int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if rev > a.rev {
		a.rev = rev
	}
	close(a.changed)
	a.changed = make(chan struct{})
}

// watchLoop applies master-key events to the cache from revision rev+1 on.
// The etcd client resumes a broken stream by itself; when the stream ends
// (error, cancellation by the server) the loop watches again from the last
// revision applied, and after a compaction it re-lists.
func (a *Allocator) watchLoop(rev int64) {
	defer a.wg.Done()
	backoff := newBackoff()
	for a.ctx.Err() == nil {
		wch := a.cli.Watch(clientv3.WithRequireLeader(a.ctx), a.keys.idPrefix(),
			clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithPrevKV())
		relist := false
		for wresp := range wch {
			if wresp.CompactRevision != 0 {
				relist = true
				break
			}
			if wresp.Err() != nil {
				break
			}
			for _, ev := range wresp.Events {
				a.apply(ev)
			}
			if n := len(wresp.Events); n > 0 {
				rev = wresp.Events[n-1].Kv.ModRevision
				a.notifyChanged(rev)
				backoff.reset()
			}
		}
		if a.ctx.Err() != nil {
			return
		}
		if relist {
			ctx, cancel := context.WithTimeout(a.ctx, 30*time.Second)
			r, err := a.list(ctx)
			cancel()
			if err == nil {
				rev = r
				continue
			}
		}
		if !backoff.wait(a.ctx) {
			return
		}
	}
}

func (a *Allocator) apply(ev *clientv3.Event) {
	switch ev.Type {
	case clientv3.EventTypePut:
		if id, labels, ok := a.parseMaster(ev.Kv); ok {
			if old, had := a.cache.Lookup(id); had && old != labels {
				a.cache.Delete(id)
			}
			a.cache.Upsert(id, labels)
		}
	case clientv3.EventTypeDelete:
		if id, err := a.keys.parseIDKey(string(ev.Kv.Key)); err == nil {
			a.cache.Delete(id)
		}
	}
}

// backoff waits between retries: 100ms doubling to 5s.
type backoff struct{ d time.Duration }

func newBackoff() *backoff { return &backoff{d: 100 * time.Millisecond} }

func (b *backoff) reset() { b.d = 100 * time.Millisecond }

func (b *backoff) wait(ctx context.Context) bool {
	t := time.NewTimer(b.d)
	defer t.Stop()
	if b.d *= 2; b.d > 5*time.Second {
		b.d = 5 * time.Second
	}
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
