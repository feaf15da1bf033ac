package etcdalloc

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// currentLease returns the lease new references are bound to and the
// channel that is closed when it is found gone.
func (a *Allocator) currentLease() (clientv3.LeaseID, chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lease, a.leaseLost
}

// leaseGone reports whether err says the lease is gone. If so it tells the
// lease loop and waits (bounded by the allocator's lifetime and a lease TTL)
// for a new lease, so that the caller can retry.
func (a *Allocator) leaseGone(err error, lost chan struct{}) bool {
	if !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return false
	}
	a.mu.Lock()
	if a.leaseLost == lost {
		close(lost)
		a.leaseLost = make(chan struct{})
	}
	old := a.lease
	a.mu.Unlock()

	deadline := time.NewTimer(a.ttl)
	defer deadline.Stop()
	for {
		a.mu.Lock()
		renewed, ch := a.lease != old, a.changed
		a.mu.Unlock()
		if renewed {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return false
		case <-a.ctx.Done():
			return false
		}
	}
}

// leaseLoop keeps the lease alive. When renewal stops (etcd unreachable for
// a whole TTL, or a request found the lease gone) it asks etcd whether the
// lease still exists; if not, it takes a new one and writes every reference
// of this node again.
func (a *Allocator) leaseLoop() {
	defer a.wg.Done()
	bo := newBackoff()
	for a.ctx.Err() == nil {
		lease, lost := a.currentLease()
		kctx, kcancel := context.WithCancel(a.ctx)
		if ch, err := a.cli.KeepAlive(kctx, lease); err == nil {
		drain:
			for {
				select {
				case _, ok := <-ch:
					if !ok {
						break drain
					}
					bo.reset()
				case <-lost:
					break drain
				}
			}
		}
		kcancel()
		if a.ctx.Err() != nil {
			return
		}

		ctx, cancel := context.WithTimeout(a.ctx, a.ttl)
		ttl, err := a.cli.TimeToLive(ctx, lease)
		cancel()
		if err == nil && ttl.TTL > 0 {
			continue // still alive: renew again
		}
		if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			if !bo.wait(a.ctx) {
				return
			}
			continue // unreachable: try the same lease again
		}
		if !a.renewLease(bo) {
			return
		}
	}
}

// renewLease grants a new lease, makes it current and re-registers every
// reference, retrying until it succeeds or the allocator closes.
func (a *Allocator) renewLease(bo *backoff) bool {
	for {
		ctx, cancel := context.WithTimeout(a.ctx, a.ttl)
		resp, err := a.cli.Grant(ctx, int64(a.ttl/time.Second))
		cancel()
		if err == nil {
			a.mu.Lock()
			a.lease = resp.ID
			close(a.changed)
			a.changed = make(chan struct{})
			a.mu.Unlock()
			break
		}
		if !bo.wait(a.ctx) {
			return false
		}
	}
	for {
		ctx, cancel := context.WithTimeout(a.ctx, a.ttl)
		err := a.reregister(ctx)
		cancel()
		if err == nil {
			return true
		}
		if !bo.wait(a.ctx) {
			return false
		}
	}
}

// reregister writes this node's reference to every identity it holds under
// the current lease. An identity collected while the lease was gone is
// created again under its old ID if that ID and its labels are still free.
func (a *Allocator) reregister(ctx context.Context) error {
	a.mu.Lock()
	held := make([]*reference, 0, len(a.refs))
	for _, r := range a.refs {
		held = append(held, r)
	}
	a.mu.Unlock()

	var errs []error
	for _, r := range held {
		unlock := a.locks.lock(r.labels)
		a.mu.Lock()
		current := a.refs[r.id] == r
		lease := a.lease
		a.mu.Unlock()
		if current {
			if err := a.rewriteRef(ctx, r, lease); err != nil {
				errs = append(errs, err)
			}
		}
		unlock()
	}
	return errors.Join(errs...)
}

func (a *Allocator) rewriteRef(ctx context.Context, r *reference, lease clientv3.LeaseID) error {
	labelsKey, idKey := a.keys.labels(r.labels), a.keys.id(r.id)
	refKey := a.keys.ref(r.labels, a.node)
	value := strconv.FormatUint(uint64(r.id), 10)
	txn, err := a.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Value(labelsKey), "=", value)).
		Then(clientv3.OpPut(refKey, value, clientv3.WithLease(lease))).
		Else(
			clientv3.OpTxn(
				[]clientv3.Cmp{
					clientv3.Compare(clientv3.CreateRevision(labelsKey), "=", 0),
					clientv3.Compare(clientv3.CreateRevision(idKey), "=", 0),
				},
				[]clientv3.Op{
					clientv3.OpPut(idKey, r.labels.Key()),
					clientv3.OpPut(labelsKey, value),
					clientv3.OpPut(refKey, value, clientv3.WithLease(lease)),
				},
				nil,
			),
		).
		Commit()
	if err != nil {
		return fmt.Errorf("re-register identity %d: %w", uint32(r.id), unavailable(ctx, err))
	}
	if txn.Succeeded || txn.Responses[0].GetResponseTxn().Succeeded {
		return nil
	}
	// The labels got another ID, or the ID other labels, while this
	// node's lease was gone. Nothing here can make the old ID mean these
	// labels again; the reference stays counted so that Release works.
	a.mu.Lock()
	a.conflicts++
	a.mu.Unlock()
	return nil
}

// Conflicts returns how many identities this node held when its lease
// expired that could not be restored under their old ID, because the
// cluster reassigned the ID or the labels meanwhile.
func (a *Allocator) Conflicts() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.conflicts
}
