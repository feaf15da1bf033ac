package ipcache

import (
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"reflect"
	"slices"
	"sync"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/watch"
)

// Event reports a change of the ipcache.
type Event struct {
	Prefix netip.Prefix
	// Entry is the new entry; zero when Deleted.
	Entry   Entry
	Deleted bool
}

// IPCache maps address prefixes to identities, IPv4 and IPv6 apart, and
// answers longest-prefix-match lookups: the entry of the most specific
// prefix that contains an address.
//
// Every change is forwarded to the registered [Writer]s (the datapath's
// map) and announced to watchers. A change is all or nothing: if a writer
// fails, the writers already updated are put back, the ipcache stays as it
// was, and the error ([*WriterError]) says so. When putting a writer back
// fails as well, the ipcache remembers that the writer is out of step for
// that prefix, says so in the error, and [IPCache.Resync] repairs it;
// [IPCache.OutOfSync] counts such prefixes. The model and a writer never
// disagree without an error having said so.
//
// IPCache is safe for concurrent use; writers are called with its lock
// held, one call at a time.
type IPCache struct {
	mu      sync.RWMutex
	v4, v6  lpm
	writers []*registered
	hub     watch.Hub[Event]
}

type registered struct {
	w Writer
	// pending holds the prefixes for which the writer may disagree with
	// the ipcache.
	pending map[netip.Prefix]struct{}
}

// New returns an empty ipcache.
func New() *IPCache {
	return &IPCache{v4: newLPM(32), v6: newLPM(128)}
}

func (c *IPCache) table(p netip.Prefix) *lpm {
	if p.Addr().Is4() {
		return &c.v4
	}
	return &c.v6
}

func checkPrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return p, fmt.Errorf("ipcache prefix %v: %w", p, identity.ErrInvalidPrefix)
	}
	if p.Addr().Is4In6() {
		return p, fmt.Errorf("ipcache prefix %v: %w: IPv4-mapped IPv6; use the IPv4 prefix", p, identity.ErrInvalidPrefix)
	}
	return p.Masked(), nil
}

func checkEntry(e Entry) error {
	switch e.Identity.Scope() {
	case identity.ScopeUnknown, identity.ScopeInvalid:
		return fmt.Errorf("ipcache entry: identity %d: %w", uint32(e.Identity), identity.ErrInvalidID)
	}
	if t := e.TunnelEndpoint; t.IsValid() && (t.Zone() != "" || t.IsUnspecified()) {
		return fmt.Errorf("ipcache entry: tunnel endpoint %v: %w: must be a unicast address without zone", t, identity.ErrInvalidPrefix)
	}
	return nil
}

// Upsert sets the entry of prefix (masked first). Setting an entry to its
// current value changes nothing. Invalid prefixes and entries (an unknown or
// invalid identity, a zoned or unspecified tunnel endpoint) are rejected.
func (c *IPCache) Upsert(prefix netip.Prefix, entry Entry) error {
	prefix, err := checkPrefix(prefix)
	if err != nil {
		return err
	}
	if err := checkEntry(entry); err != nil {
		return fmt.Errorf("ipcache upsert %v: %w", prefix, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.table(prefix)
	old, had := t.get(prefix)
	if had && old == entry && !c.anyPending(prefix) {
		return nil
	}
	for i, w := range c.writers {
		if err := w.w.UpsertPrefix(prefix, entry); err != nil {
			return c.rollback(c.writers[:i+1], "upsert", prefix, err, old, had)
		}
	}
	t.set(prefix, entry)
	c.clearPending(prefix)
	c.hub.Publish(Event{Prefix: prefix, Entry: entry})
	return nil
}

// Delete removes the entry of prefix (masked first); [ErrPrefixNotFound]
// if there is none.
func (c *IPCache) Delete(prefix netip.Prefix) error {
	prefix, err := checkPrefix(prefix)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.table(prefix)
	old, had := t.get(prefix)
	if !had {
		return fmt.Errorf("ipcache delete %v: %w", prefix, ErrPrefixNotFound)
	}
	for i, w := range c.writers {
		if err := w.w.DeletePrefix(prefix); err != nil {
			return c.rollback(c.writers[:i+1], "delete", prefix, err, old, true)
		}
	}
	t.del(prefix)
	c.clearPending(prefix)
	c.hub.Publish(Event{Prefix: prefix, Deleted: true})
	return nil
}

// rollback puts the writers touched by a failed change back to the
// ipcache's (unchanged) state for prefix and builds the error. Called with
// c.mu held.
func (c *IPCache) rollback(touched []*registered, op string, prefix netip.Prefix, cause error, old Entry, had bool) error {
	werr := &WriterError{Op: op, Prefix: prefix, Err: cause}
	for _, w := range touched {
		if err := restore(w.w, prefix, old, had); err != nil {
			w.pending[prefix] = struct{}{}
			if w == touched[len(touched)-1] {
				werr.OutOfSync = true
			} else {
				werr.Err = errors.Join(werr.Err, fmt.Errorf("restoring an earlier writer: %w", err))
				werr.OutOfSync = true
			}
			continue
		}
		delete(w.pending, prefix)
	}
	return fmt.Errorf("ipcache %s %v: %w", op, prefix, werr)
}

func restore(w Writer, prefix netip.Prefix, e Entry, had bool) error {
	if had {
		return w.UpsertPrefix(prefix, e)
	}
	return w.DeletePrefix(prefix)
}

func (c *IPCache) anyPending(prefix netip.Prefix) bool {
	for _, w := range c.writers {
		if _, ok := w.pending[prefix]; ok {
			return true
		}
	}
	return false
}

func (c *IPCache) clearPending(prefix netip.Prefix) {
	for _, w := range c.writers {
		delete(w.pending, prefix)
	}
}

// Lookup returns the entry of the longest prefix that contains addr, and
// that prefix. A zone on addr is ignored. IPv4-mapped IPv6 addresses are
// looked up as IPv6 (no IPv4 prefix contains them).
func (c *IPCache) Lookup(addr netip.Addr) (netip.Prefix, Entry, bool) {
	if !addr.IsValid() {
		return netip.Prefix{}, Entry{}, false
	}
	addr = addr.WithZone("")
	c.mu.RLock()
	defer c.mu.RUnlock()
	if addr.Is4() {
		return c.v4.lookup(addr)
	}
	return c.v6.lookup(addr)
}

// Get returns the entry of exactly prefix (masked first).
func (c *IPCache) Get(prefix netip.Prefix) (Entry, bool) {
	prefix, err := checkPrefix(prefix)
	if err != nil {
		return Entry{}, false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.table(prefix).get(prefix)
}

// Len returns the number of prefixes.
func (c *IPCache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.v4.n + c.v6.n
}

// All iterates over a snapshot of the entries: IPv4 before IPv6, by
// address, shorter prefixes first.
func (c *IPCache) All() iter.Seq2[netip.Prefix, Entry] {
	c.mu.RLock()
	snap := c.snapshotLocked()
	c.mu.RUnlock()
	return func(yield func(netip.Prefix, Entry) bool) {
		for _, e := range snap {
			if !yield(e.Prefix, e.Entry) {
				return
			}
		}
	}
}

func (c *IPCache) snapshotLocked() []Event {
	out := make([]Event, 0, c.v4.n+c.v6.n)
	for _, t := range []*lpm{&c.v4, &c.v6} {
		for _, m := range t.byLen {
			for p, e := range m {
				out = append(out, Event{Prefix: p, Entry: e})
			}
		}
	}
	slices.SortFunc(out, func(a, b Event) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
	return out
}

// Watch returns the entries held now, in [IPCache.All] order, and a watcher
// for every change after them.
func (c *IPCache) Watch(opts identity.WatchOptions) ([]Event, *identity.Watcher[Event]) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.snapshotLocked(), c.hub.Subscribe(opts)
}

// AddWriter registers w: it is first given every current entry, then every
// change. If that initial copy fails, the entries already copied are
// deleted again, w is not registered, and the error says what failed. A nil
// w (also a nil pointer in the interface) or one already registered fails
// with [ErrInvalidWriter].
func (c *IPCache) AddWriter(w Writer) error {
	if isNil(w) {
		return fmt.Errorf("ipcache: add writer: %w: nil", ErrInvalidWriter)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, have := range c.writers {
		if have.w == w {
			return fmt.Errorf("ipcache: add writer: %w: already registered", ErrInvalidWriter)
		}
	}
	snap := c.snapshotLocked()
	for i, e := range snap {
		if err := w.UpsertPrefix(e.Prefix, e.Entry); err != nil {
			werr := &WriterError{Op: "upsert", Prefix: e.Prefix, Err: err}
			for _, done := range snap[:i+1] {
				if derr := w.DeletePrefix(done.Prefix); derr != nil {
					werr.Err = errors.Join(werr.Err, fmt.Errorf("undo %v: %w", done.Prefix, derr))
				}
			}
			return fmt.Errorf("ipcache: add writer: %w", werr)
		}
	}
	c.writers = append(c.writers, &registered{w: w, pending: make(map[netip.Prefix]struct{})})
	return nil
}

// isNil reports whether w is nil or holds a nil pointer, map, func, chan
// or slice, whose methods would fail only once a change reaches them.
func isNil(w Writer) bool {
	if w == nil {
		return true
	}
	switch v := reflect.ValueOf(w); v.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Func, reflect.Chan, reflect.Slice, reflect.Interface:
		return v.IsNil()
	}
	return false
}

// RemoveWriter unregisters w and reports whether it was registered. The
// writer keeps what it holds.
func (c *IPCache) RemoveWriter(w Writer) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, have := range c.writers {
		if have.w == w {
			c.writers = slices.Delete(c.writers, i, i+1)
			return true
		}
	}
	return false
}

// OutOfSync returns how many (writer, prefix) pairs may disagree with the
// ipcache after failures; zero means every writer matches it.
func (c *IPCache) OutOfSync() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	n := 0
	for _, w := range c.writers {
		n += len(w.pending)
	}
	return n
}

// Resync writes the ipcache's state for every out-of-sync prefix to its
// writer again and returns the failures that remain.
func (c *IPCache) Resync() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, w := range c.writers {
		for _, p := range slices.SortedFunc(func(yield func(netip.Prefix) bool) {
			for p := range w.pending {
				if !yield(p) {
					return
				}
			}
		}, comparePrefixes) {
			e, had := c.table(p).get(p)
			if err := restore(w.w, p, e, had); err != nil {
				op := "delete"
				if had {
					op = "upsert"
				}
				errs = append(errs, &WriterError{Op: op, Prefix: p, Err: err, OutOfSync: true})
				continue
			}
			delete(w.pending, p)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("ipcache resync: %w", errors.Join(errs...))
	}
	return nil
}

func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
