package identity

import (
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"sync"
)

// ErrPrefixNotFound: the ipcache holds no entry for the prefix.
var ErrPrefixNotFound = errors.New("prefix not in ipcache")

// ErrIPCacheWriter: a registered [IPCacheWriter] failed; see
// [*IPCacheWriterError].
var ErrIPCacheWriter = errors.New("ipcache writer failed")

// IPCacheWriterError reports a writer that failed to apply a change. It
// unwraps to both [ErrIPCacheWriter] and the writer's own error.
type IPCacheWriterError struct {
	Op     string // "upsert" or "delete"
	Prefix netip.Prefix
	Err    error
	// OutOfSync is set when putting the writer back to the ipcache's
	// state failed too: its entry for Prefix is unknown until
	// [IPCache.Resync] succeeds.
	OutOfSync bool
}

func (e *IPCacheWriterError) Error() string {
	s := fmt.Sprintf("ipcache writer: %s %v: %v", e.Op, e.Prefix, e.Err)
	if e.OutOfSync {
		s += " (writer out of sync until Resync)"
	}
	return s
}

// Unwrap returns [ErrIPCacheWriter] and the writer's error.
func (e *IPCacheWriterError) Unwrap() []error { return []error{ErrIPCacheWriter, e.Err} }

// IPCacheEvent reports a change of the ipcache.
type IPCacheEvent struct {
	Prefix netip.Prefix
	// Entry is the new entry; zero when Deleted.
	Entry   IPCacheEntry
	Deleted bool
}

// IPCache maps address prefixes to identities, IPv4 and IPv6 apart, and
// answers longest-prefix-match lookups: the entry of the most specific
// prefix that contains an address.
//
// Every change is forwarded to the registered [IPCacheWriter]s (the
// datapath's map) and announced to watchers. A change is all or nothing: if
// a writer fails, the writers already updated are put back, the ipcache
// stays as it was, and the error ([*IPCacheWriterError]) says so. When
// putting a writer back fails as well, the ipcache remembers that the
// writer is out of step for that prefix, says so in the error, and
// [IPCache.Resync] repairs it; [IPCache.OutOfSync] counts such prefixes.
// The model and a writer never disagree without an error having said so.
//
// IPCache is safe for concurrent use; writers are called with its lock
// held, one call at a time.
type IPCache struct {
	mu      sync.RWMutex
	v4, v6  lpm
	writers []*ipcacheWriter
	hub     hub[IPCacheEvent]
}

type ipcacheWriter struct {
	w IPCacheWriter
	// pending holds the prefixes for which the writer may disagree with
	// the ipcache.
	pending map[netip.Prefix]struct{}
}

// NewIPCache returns an empty ipcache.
func NewIPCache() *IPCache {
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
		return p, fmt.Errorf("ipcache prefix %v: %w", p, ErrInvalidPrefix)
	}
	if p.Addr().Is4In6() {
		return p, fmt.Errorf("ipcache prefix %v: %w: IPv4-mapped IPv6; use the IPv4 prefix", p, ErrInvalidPrefix)
	}
	return p.Masked(), nil
}

func checkEntry(e IPCacheEntry) error {
	switch e.Identity.Scope() {
	case ScopeUnknown, ScopeInvalid:
		return fmt.Errorf("ipcache entry: identity %d: %w", uint32(e.Identity), ErrInvalidID)
	}
	if t := e.TunnelEndpoint; t.IsValid() && (t.Zone() != "" || t.IsUnspecified()) {
		return fmt.Errorf("ipcache entry: tunnel endpoint %v: %w: must be a unicast address without zone", t, ErrInvalidPrefix)
	}
	return nil
}

// Upsert sets the entry of prefix (masked first). Setting an entry to its
// current value changes nothing. Invalid prefixes and entries (an unknown or
// invalid identity, a zoned or unspecified tunnel endpoint) are rejected.
func (c *IPCache) Upsert(prefix netip.Prefix, entry IPCacheEntry) error {
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
	c.hub.publish(IPCacheEvent{Prefix: prefix, Entry: entry})
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
	c.hub.publish(IPCacheEvent{Prefix: prefix, Deleted: true})
	return nil
}

// rollback puts the writers touched by a failed change back to the
// ipcache's (unchanged) state for prefix and builds the error. Called with
// c.mu held.
func (c *IPCache) rollback(touched []*ipcacheWriter, op string, prefix netip.Prefix, cause error, old IPCacheEntry, had bool) error {
	werr := &IPCacheWriterError{Op: op, Prefix: prefix, Err: cause}
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

func restore(w IPCacheWriter, prefix netip.Prefix, e IPCacheEntry, had bool) error {
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
func (c *IPCache) Lookup(addr netip.Addr) (netip.Prefix, IPCacheEntry, bool) {
	if !addr.IsValid() {
		return netip.Prefix{}, IPCacheEntry{}, false
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
func (c *IPCache) Get(prefix netip.Prefix) (IPCacheEntry, bool) {
	prefix, err := checkPrefix(prefix)
	if err != nil {
		return IPCacheEntry{}, false
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
func (c *IPCache) All() iter.Seq2[netip.Prefix, IPCacheEntry] {
	c.mu.RLock()
	snap := c.snapshotLocked()
	c.mu.RUnlock()
	return func(yield func(netip.Prefix, IPCacheEntry) bool) {
		for _, e := range snap {
			if !yield(e.Prefix, e.Entry) {
				return
			}
		}
	}
}

func (c *IPCache) snapshotLocked() []IPCacheEvent {
	out := make([]IPCacheEvent, 0, c.v4.n+c.v6.n)
	for _, t := range []*lpm{&c.v4, &c.v6} {
		for _, m := range t.byLen {
			for p, e := range m {
				out = append(out, IPCacheEvent{Prefix: p, Entry: e})
			}
		}
	}
	slices.SortFunc(out, func(a, b IPCacheEvent) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
	return out
}

// Watch returns the entries held now, in [IPCache.All] order, and a watcher
// for every change after them.
func (c *IPCache) Watch(opts WatchOptions) ([]IPCacheEvent, *Watcher[IPCacheEvent]) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.snapshotLocked(), c.hub.subscribe(opts)
}

// AddWriter registers w: it is first given every current entry, then every
// change. If that initial copy fails, the entries already copied are
// deleted again, w is not registered, and the error says what failed.
func (c *IPCache) AddWriter(w IPCacheWriter) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, have := range c.writers {
		if have.w == w {
			return errors.New("ipcache: writer already registered")
		}
	}
	snap := c.snapshotLocked()
	for i, e := range snap {
		if err := w.UpsertPrefix(e.Prefix, e.Entry); err != nil {
			werr := &IPCacheWriterError{Op: "upsert", Prefix: e.Prefix, Err: err}
			for _, done := range snap[:i+1] {
				if derr := w.DeletePrefix(done.Prefix); derr != nil {
					werr.Err = errors.Join(werr.Err, fmt.Errorf("undo %v: %w", done.Prefix, derr))
				}
			}
			return fmt.Errorf("ipcache: add writer: %w", werr)
		}
	}
	c.writers = append(c.writers, &ipcacheWriter{w: w, pending: make(map[netip.Prefix]struct{})})
	return nil
}

// RemoveWriter unregisters w and reports whether it was registered. The
// writer keeps what it holds.
func (c *IPCache) RemoveWriter(w IPCacheWriter) bool {
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
				errs = append(errs, &IPCacheWriterError{Op: op, Prefix: p, Err: err, OutOfSync: true})
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

// lpm is a longest-prefix-match table of one address family: a map per
// prefix length, searched from the longest length in use to the shortest.
type lpm struct {
	byLen []map[netip.Prefix]IPCacheEntry
	// lens lists the lengths with entries, longest first.
	lens []int
	n    int
}

func newLPM(bits int) lpm {
	return lpm{byLen: make([]map[netip.Prefix]IPCacheEntry, bits+1)}
}

func (t *lpm) get(p netip.Prefix) (IPCacheEntry, bool) {
	e, ok := t.byLen[p.Bits()][p]
	return e, ok
}

func (t *lpm) set(p netip.Prefix, e IPCacheEntry) {
	m := t.byLen[p.Bits()]
	if m == nil {
		m = make(map[netip.Prefix]IPCacheEntry)
		t.byLen[p.Bits()] = m
	}
	if _, ok := m[p]; !ok {
		t.n++
		if len(m) == 0 {
			t.lens = append(t.lens, p.Bits())
			slices.SortFunc(t.lens, func(a, b int) int { return b - a })
		}
	}
	m[p] = e
}

func (t *lpm) del(p netip.Prefix) {
	m := t.byLen[p.Bits()]
	if _, ok := m[p]; !ok {
		return
	}
	delete(m, p)
	t.n--
	if len(m) == 0 {
		t.lens = slices.DeleteFunc(t.lens, func(l int) bool { return l == p.Bits() })
	}
}

func (t *lpm) lookup(addr netip.Addr) (netip.Prefix, IPCacheEntry, bool) {
	for _, bits := range t.lens {
		p, _ := addr.Prefix(bits)
		if e, ok := t.byLen[bits][p]; ok {
			return p, e, true
		}
	}
	return netip.Prefix{}, IPCacheEntry{}, false
}
