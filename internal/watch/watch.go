// Package watch is the event stream behind identity's and ipcache's Watch:
// a [Watcher] that queues events for one consumer and a [Hub] that fans
// them out. identity re-exports the consumer side (identity.Watcher,
// identity.WatchOptions); the publishing side stays inside the module.
package watch

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nodeplane/nodeplane"
)

// DefaultMaxBacklog is the backlog limit of a watcher whose
// [Options.MaxBacklog] is zero.
const DefaultMaxBacklog = 1 << 20

// ErrOverflow: a watcher fell further behind than its backlog limit and was
// cut off; watch again to resynchronise. identity exports it as
// identity.ErrOverflow.
var ErrOverflow = errors.New("watcher backlog overflow")

// Options configure a watch.
type Options struct {
	// MaxBacklog is how many undelivered events a watcher may hold before
	// it is cut off with [ErrOverflow]. Zero means 1<<20
	// ([DefaultMaxBacklog]); a negative value means no limit.
	MaxBacklog int
}

// Watcher delivers a stream of events, each exactly once and in the order
// they happened. Publishing never waits for the consumer: events queue
// inside the watcher until [Watcher.Next] takes them. A watcher whose queue
// grows beyond its backlog limit is cut off (its Next returns
// [ErrOverflow]) so that a stuck consumer cannot hold memory without
// bound; the consumer recovers by watching again, which starts with a fresh
// snapshot.
//
// A Watcher is safe for concurrent use; events are handed out once in total,
// not once per goroutine.
type Watcher[E any] struct {
	mu     sync.Mutex
	queue  []E
	head   int
	max    int
	err    error
	notify chan struct{}
	detach func(*Watcher[E])
}

func newWatcher[E any](opts Options, detach func(*Watcher[E])) *Watcher[E] {
	max := opts.MaxBacklog
	if max == 0 {
		max = DefaultMaxBacklog
	}
	return &Watcher[E]{max: max, notify: make(chan struct{}, 1), detach: detach}
}

// Next returns the next event, waiting for one until ctx is done. After the
// source closes, Next returns the events still queued and then an error
// wrapping [nodeplane.ErrClosed]; after an overflow it returns
// [ErrOverflow]; after [Watcher.Close] it returns nodeplane.ErrClosed.
func (w *Watcher[E]) Next(ctx context.Context) (E, error) {
	for {
		w.mu.Lock()
		if w.head < len(w.queue) {
			e := w.queue[w.head]
			var zero E
			w.queue[w.head] = zero
			w.head++
			if w.head == len(w.queue) {
				w.queue, w.head = w.queue[:0], 0
			} else if w.head > 64 && w.head*2 > len(w.queue) {
				// Drop the consumed front so the queue does not grow
				// without bound while the consumer keeps up.
				n := copy(w.queue, w.queue[w.head:])
				clear(w.queue[n:])
				w.queue, w.head = w.queue[:n], 0
			}
			w.mu.Unlock()
			return e, nil
		}
		err := w.err
		w.mu.Unlock()
		if err != nil {
			var zero E
			return zero, err
		}
		select {
		case <-w.notify:
		case <-ctx.Done():
			var zero E
			return zero, ctx.Err()
		}
	}
}

// Backlog returns the number of events queued and not yet taken.
func (w *Watcher[E]) Backlog() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.queue) - w.head
}

// Close stops the watcher: queued events are dropped and Next returns an
// error wrapping [nodeplane.ErrClosed]. Close is idempotent.
func (w *Watcher[E]) Close() error {
	w.detach(w)
	w.mu.Lock()
	w.queue, w.head = nil, 0
	if w.err == nil {
		w.err = errClosed
	}
	w.mu.Unlock()
	w.wake()
	return nil
}

func (w *Watcher[E]) wake() {
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

// push queues e. It reports false when the watcher is past its limit or
// finished and must be dropped by the publisher. The publisher serialises
// pushes.
func (w *Watcher[E]) push(e E) bool {
	w.mu.Lock()
	if w.err != nil {
		w.mu.Unlock()
		return false
	}
	if w.max > 0 && len(w.queue)-w.head >= w.max {
		w.queue, w.head = nil, 0
		w.err = ErrOverflow
		w.mu.Unlock()
		w.wake()
		return false
	}
	w.queue = append(w.queue, e)
	w.mu.Unlock()
	w.wake()
	return true
}

// finish ends the stream after the queued events.
func (w *Watcher[E]) finish(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
	w.wake()
}

// errClosed ends the stream of a closed watcher or source.
var errClosed = fmt.Errorf("watch: %w", nodeplane.ErrClosed)

// Hub fans events out to watchers. The zero Hub is ready. Its owner
// serialises Publish, Subscribe and Close with its own lock, which is also
// what makes a snapshot and a subscription atomic.
type Hub[E any] struct {
	mu       sync.Mutex // guards watchers against Close from any goroutine
	watchers map[*Watcher[E]]struct{}
	closed   bool
}

// Subscribe returns a watcher of the events published from now on; after
// Close, a watcher that has already ended.
func (h *Hub[E]) Subscribe(opts Options) *Watcher[E] {
	w := newWatcher(opts, h.remove)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		w.err = errClosed
		return w
	}
	if h.watchers == nil {
		h.watchers = make(map[*Watcher[E]]struct{})
	}
	h.watchers[w] = struct{}{}
	return w
}

func (h *Hub[E]) remove(w *Watcher[E]) {
	h.mu.Lock()
	delete(h.watchers, w)
	h.mu.Unlock()
}

// Publish queues e for every watcher, dropping those cut off.
func (h *Hub[E]) Publish(e E) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for w := range h.watchers {
		if !w.push(e) {
			delete(h.watchers, w)
		}
	}
}

// Close ends every watcher after the events it has queued.
func (h *Hub[E]) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for w := range h.watchers {
		w.finish(errClosed)
	}
	h.watchers = nil
}
