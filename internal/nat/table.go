package nat

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Lifetimes says how long a flow lives after its last packet. A zero
// field takes its default (DefaultTCPLifetime, DefaultNonTCPLifetime,
// DefaultCloseLifetime).
type Lifetimes struct {
	TCP, NonTCP, Close time.Duration
}

func (l Lifetimes) withDefaults() Lifetimes {
	if l.TCP == 0 {
		l.TCP = DefaultTCPLifetime
	}
	if l.NonTCP == 0 {
		l.NonTCP = DefaultNonTCPLifetime
	}
	if l.Close == 0 {
		l.Close = DefaultCloseLifetime
	}
	return l
}

// Table reads and cleans a NAT table map (np_nat). It does not own the
// map.
type Table struct {
	m    *ebpf.Map
	life Lifetimes
	// gcMu serialises collections: two at once would delete each
	// other's pairs twice.
	gcMu sync.Mutex
}

// New wraps m, which must be an np_nat map.
func New(m *ebpf.Map, life Lifetimes) *Table {
	return &Table{m: m, life: life.withDefaults()}
}

// Map returns the wrapped map.
func (t *Table) Map() *ebpf.Map { return t.m }

// Now returns the current CLOCK_MONOTONIC time, the clock of the
// entries' timestamps.
func Now() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // CLOCK_MONOTONIC cannot fail on Linux
	}
	return time.Duration(ts.Nano())
}

// Stats counts the flows in the table.
type Stats struct {
	// Flows is the number of translated flows (egress entries).
	Flows int
	// Services is how many of them are lb's SNAT flows (their reply
	// restores a frontend); the rest are masquerading's.
	Services int
	// V6 and ICMP count the IPv6 and the ICMP echo flows.
	V6, ICMP int
	// Entries is the number of entries, both directions and orphans.
	Entries int
}

// snapshot is the table read once: the egress entries in order, and the
// ingress entries by key.
type snapshot struct {
	fwd []Key
	out []Entry
	rev map[Key]Entry
}

func (t *Table) read() (snapshot, error) {
	var (
		s = snapshot{rev: map[Key]Entry{}}
		k Key
		v Entry
	)
	it := t.m.Iterate()
	for it.Next(&k, &v) {
		if k.Dir == Ingress {
			s.rev[k] = v
			continue
		}
		s.fwd = append(s.fwd, k)
		s.out = append(s.out, v)
	}
	return s, it.Err()
}

// Stats walks the table once.
func (t *Table) Stats() (Stats, error) {
	snap, err := t.read()
	if err != nil {
		return Stats{}, fmt.Errorf("nat stats: %w", err)
	}
	s := Stats{Entries: len(snap.fwd) + len(snap.rev)}
	for i, k := range snap.fwd {
		s.Flows++
		if k.Family == FamilyV6 {
			s.V6++
		}
		if k.Proto == 1 || k.Proto == 58 {
			s.ICMP++
		}
		if r, ok := snap.rev[ReverseOf(k, snap.out[i])]; ok && r.Flags&FlagRevDNAT != 0 {
			s.Services++
		}
	}
	return s, nil
}

func (t *Table) lifetime(proto uint8, flags uint8) time.Duration {
	switch {
	case proto != 6:
		return t.life.NonTCP
	case flags&FlagClosing != 0:
		return t.life.Close
	}
	return t.life.TCP
}

// young is how long an entry may lack its other half: the programs create
// the ingress entry just before the egress one, and a flow created while
// GC reads the table may show only one of them.
const young = time.Second

// GC deletes the flows whose last packet (either direction) is older
// than their lifetime at now (CLOCK_MONOTONIC, see [Now]), both entries,
// egress first so no packet re-uses a port while its old flow still
// points at it; and entries left without their other half for longer
// than a second. It reads the table once: each pair is matched in memory,
// nothing is looked up again. It returns how many flows it removed;
// orphans do not count.
func (t *Table) GC(now time.Duration) (int, error) {
	t.gcMu.Lock()
	defer t.gcMu.Unlock()
	snap, err := t.read()
	if err != nil {
		return 0, fmt.Errorf("nat gc: %w", err)
	}
	fwd, out, rev := snap.fwd, snap.out, snap.rev
	del := func(k Key) error {
		if err := t.m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("nat gc: %w", err)
		}
		return nil
	}
	n := 0
	for i, k := range fwd {
		e := out[i]
		rk := ReverseOf(k, e)
		r, paired := rev[rk]
		delete(rev, rk)
		seen, flags := e.Seen, e.Flags
		if paired {
			seen = max(seen, r.Seen)
			flags |= r.Flags
		}
		if paired && time.Duration(seen)+t.lifetime(k.Proto, flags) > now {
			continue
		}
		// A flow created while the table was read can have its egress
		// entry in the snapshot and its ingress entry in a bucket the
		// walk had passed: a young egress entry is not an orphan yet.
		if !paired && time.Duration(e.Created)+young > now {
			continue
		}
		if err := del(k); err != nil {
			return n, err
		}
		if paired {
			if err := del(rk); err != nil {
				return n, err
			}
			n++
		}
	}
	for rk, r := range rev {
		if time.Duration(r.Created)+young > now {
			continue
		}
		if err := del(rk); err != nil {
			return n, err
		}
	}
	return n, nil
}

// GCStats are the periodic collector's results so far.
type GCStats struct {
	Runs    uint64
	Removed uint64
	// LastErr is the last run's error, nil if it succeeded.
	LastErr error
}

// Collector runs GC periodically; see [Table.StartGC].
type Collector struct {
	t    *Table
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	st   GCStats
}

// StartGC runs GC every interval until Stop.
func (t *Table) StartGC(interval time.Duration) *Collector {
	c := &Collector{t: t, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-c.stop:
				return
			case <-tick.C:
				n, err := t.GC(Now())
				c.mu.Lock()
				c.st.Runs++
				c.st.Removed += uint64(n)
				c.st.LastErr = err
				c.mu.Unlock()
			}
		}
	}()
	return c
}

// Stats returns the collector's results so far.
func (c *Collector) Stats() GCStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

// Stop ends the collector and waits for a run in progress. Stopping twice
// is not an error.
func (c *Collector) Stop() {
	if c == nil {
		return
	}
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
}
