package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// report is one write to the API server: an event or a status update.
type report struct {
	what string
	do   func(context.Context) error
}

// reporter posts the agent's writes to the API server from one goroutine,
// so that no informer handler waits on the API server.
//
// Events are posted once, in order, and dropped when too many are queued,
// as client-go's event broadcaster drops them: an event is a note, not
// state. A status is state: only the latest one per object is kept (a
// newer one replaces one not yet written), and a write that fails is
// retried with backoff until it succeeds, the object is gone, or a newer
// status replaces it.
type reporter struct {
	log    *slog.Logger
	events chan report

	mu       sync.Mutex
	statuses map[objectKey]pendingStatus
	kick     chan struct{} // capacity 1: statuses changed or a retry is due
}

// pendingStatus is a status write waiting its turn, with its failures so far.
type pendingStatus struct {
	r        report
	failures int
	due      time.Time
}

// Backoff of a failed status write: doubling from statusRetryMin, at most
// statusRetryMax.
const (
	statusRetryMin = 500 * time.Millisecond
	statusRetryMax = 30 * time.Second
	eventQueue     = 256
)

func newReporter(log *slog.Logger) *reporter {
	return &reporter{log: log, events: make(chan report, eventQueue),
		statuses: map[objectKey]pendingStatus{}, kick: make(chan struct{}, 1)}
}

// event queues r, or drops it when too many are queued.
func (p *reporter) event(r report) {
	select {
	case p.events <- r:
	default:
		p.log.Warn("event dropped: too many queued", "report", r.what)
	}
}

// status queues r as key's status, replacing one not yet written.
func (p *reporter) status(key objectKey, r report) {
	p.mu.Lock()
	p.statuses[key] = pendingStatus{r: r}
	p.mu.Unlock()
	p.wake()
}

func (p *reporter) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// run posts until ctx ends.
func (p *reporter) run(ctx context.Context) error {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case r := <-p.events:
			p.post(ctx, r)
		case <-p.kick:
		case <-retry.C:
		}
		if next, ok := p.postStatuses(ctx, time.Now()); ok {
			retry.Reset(time.Until(next))
		}
	}
}

func (p *reporter) post(ctx context.Context, r report) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	err := r.do(cctx)
	if err != nil && ctx.Err() == nil {
		p.log.Warn("report to the API server failed", "report", r.what, "err", err)
	}
	return err
}

// postStatuses writes the statuses that are due at now. It returns when
// the earliest one left is due, if any is left.
func (p *reporter) postStatuses(ctx context.Context, now time.Time) (time.Time, bool) {
	p.mu.Lock()
	due := map[objectKey]pendingStatus{}
	for k, s := range p.statuses {
		if !s.due.After(now) {
			due[k] = s
			delete(p.statuses, k)
		}
	}
	p.mu.Unlock()
	for k, s := range due {
		err := p.post(ctx, s.r)
		if err == nil || apierrors.IsNotFound(err) || ctx.Err() != nil {
			continue
		}
		s.failures++
		s.due = time.Now().Add(min(statusRetryMin<<min(s.failures-1, 16), statusRetryMax))
		p.mu.Lock()
		if _, newer := p.statuses[k]; !newer {
			p.statuses[k] = s
		}
		p.mu.Unlock()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var next time.Time
	for _, s := range p.statuses {
		if next.IsZero() || s.due.Before(next) {
			next = s.due
		}
	}
	return next, !next.IsZero()
}
