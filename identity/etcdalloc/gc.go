package etcdalloc

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// RunGC deletes every identity of the cluster that no node references any
// more and returns how many it deleted. Each deletion is a transaction that
// requires the identity's reference range to be empty and its master key
// unchanged, so an identity a node is joining concurrently survives. Any
// node may run it; concurrent runs are safe.
func (a *Allocator) RunGC(ctx context.Context) (int, error) {
	masters, err := a.cli.Get(ctx, a.keys.idPrefix(), clientv3.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("etcdalloc: gc: %w", unavailable(ctx, err))
	}
	refs, err := a.cli.Get(ctx, a.keys.refPrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithRev(masters.Header.Revision))
	if err != nil {
		return 0, fmt.Errorf("etcdalloc: gc: %w", unavailable(ctx, err))
	}
	referenced := make(map[string]bool, len(refs.Kvs))
	for _, kv := range refs.Kvs {
		if ls, ok := a.keys.refLabels(string(kv.Key)); ok {
			referenced[ls] = true
		}
	}

	deleted := 0
	for _, kv := range masters.Kvs {
		id, labels, ok := a.parseMaster(kv)
		if !ok || referenced[labels.Key()] {
			continue
		}
		labelsKey := a.keys.labels(labels)
		txn, err := a.cli.Txn(ctx).
			If(
				clientv3.Compare(clientv3.ModRevision(string(kv.Key)), "=", kv.ModRevision),
				clientv3.Compare(clientv3.Value(labelsKey), "=", strconv.FormatUint(uint64(id), 10)),
				clientv3.Compare(clientv3.CreateRevision(a.keys.refLabelsPrefix(labels)).WithPrefix(), "=", 0),
			).
			Then(clientv3.OpDelete(string(kv.Key)), clientv3.OpDelete(labelsKey)).
			Commit()
		if err != nil {
			return deleted, fmt.Errorf("etcdalloc: gc identity %d: %w", uint32(id), unavailable(ctx, err))
		}
		if txn.Succeeded {
			deleted++
		}
	}
	return deleted, nil
}

func (a *Allocator) gcLoop(every time.Duration) {
	defer a.wg.Done()
	for {
		// Jitter spreads the nodes' runs apart.
		t := time.NewTimer(every/2 + rand.N(every))
		select {
		case <-t.C:
		case <-a.ctx.Done():
			t.Stop()
			return
		}
		ctx, cancel := context.WithTimeout(a.ctx, every)
		a.RunGC(ctx) // failures are retried on the next run
		cancel()
	}
}
