package identity

import "github.com/nodeplane/nodeplane/internal/watch"

// WatchOptions configure a watch. MaxBacklog is how many undelivered events
// a watcher may hold before it is cut off with [ErrWatcherOverflow]: zero
// means 1<<20, a negative value means no limit.
type WatchOptions = watch.Options

// Watcher delivers a stream of events, each exactly once and in the order
// they happened; [Allocator.Watch], [Cache.Watch] and identity/ipcache's
// IPCache.Watch return one. Publishing never waits for the consumer: events
// queue inside the watcher until it takes them. A watcher whose queue grows
// beyond its backlog limit is cut off, so that a stuck consumer cannot hold
// memory without bound; the consumer recovers by watching again, which
// starts with a fresh snapshot. Its methods:
//
//   - Next(ctx) (E, error) returns the next event, waiting until ctx is
//     done. After the source closes it returns the events still queued and
//     then an error wrapping [nodeplane.ErrClosed]; after an overflow,
//     [ErrWatcherOverflow]; after Close, an error wrapping ErrClosed.
//   - Backlog() int returns the number of events queued and not yet taken.
//   - Close() error stops the watcher and drops what it queued; it is
//     idempotent.
//
// A Watcher is safe for concurrent use; events are handed out once in total,
// not once per goroutine.
type Watcher[E any] = watch.Watcher[E]
