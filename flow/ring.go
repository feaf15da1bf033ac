package flow

import (
	"context"
	"sync"
	"time"
)

// Ring holds the last flows (and lost-event reports) in order. One writer
// adds entries; any number of readers read them concurrently. A reader
// never blocks the writer: when the writer laps a reader, the reader learns
// how many entries it missed ([LostHubbleRing]) and goes on with the oldest
// entry still stored.
type Ring struct {
	mu      sync.Mutex
	buf     []entry
	next    uint64        // sequence number of the next write
	waiting bool          // someone waits on notify
	notify  chan struct{} // closed on a write when waiting
}

type entry struct {
	flow   Flow
	lost   LostEvent
	isLost bool
}

// NewRing returns a ring of capacity entries (at least 1).
func NewRing(capacity int) *Ring {
	if capacity < 1 {
		capacity = 1
	}
	return &Ring{buf: make([]entry, capacity), notify: make(chan struct{})}
}

// Cap returns the ring's capacity.
func (r *Ring) Cap() int { return len(r.buf) }

// Len returns how many entries the ring holds.
func (r *Ring) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return int(min(r.next, uint64(len(r.buf))))
}

// Written returns how many entries were ever written.
func (r *Ring) Written() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.next
}

// Write appends a copy of f.
func (r *Ring) Write(f *Flow) {
	r.mu.Lock()
	e := &r.buf[r.next%uint64(len(r.buf))]
	e.flow, e.isLost = *f, false
	r.advance()
}

// WriteLost appends a lost-event report.
func (r *Ring) WriteLost(l LostEvent) {
	r.mu.Lock()
	e := &r.buf[r.next%uint64(len(r.buf))]
	e.flow, e.lost, e.isLost = Flow{}, l, true
	r.advance()
}

// advance publishes the write and unlocks.
func (r *Ring) advance() {
	r.next++
	if r.waiting {
		close(r.notify)
		r.notify = make(chan struct{})
		r.waiting = false
	}
	r.mu.Unlock()
}

// bounds returns the oldest stored and the next sequence number.
func (r *Ring) bounds() (oldest, next uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.oldestLocked(), r.next
}

func (r *Ring) oldestLocked() uint64 {
	if r.next > uint64(len(r.buf)) {
		return r.next - uint64(len(r.buf))
	}
	return 0
}

// read copies entry seq into e. It returns false with the oldest sequence
// number still stored when seq was overwritten; seq must be below next.
func (r *Ring) read(seq uint64, e *entry) (ok bool, oldest uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if o := r.oldestLocked(); seq < o {
		return false, o
	}
	*e = r.buf[seq%uint64(len(r.buf))]
	return true, 0
}

// wait blocks until an entry with sequence number seq exists or ctx ends.
func (r *Ring) wait(ctx context.Context, seq uint64) error {
	for {
		r.mu.Lock()
		if seq < r.next {
			r.mu.Unlock()
			return nil
		}
		r.waiting = true
		ch := r.notify
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// GetFlows calls fn with the flows req selects, oldest first, and with
// lost-event reports (which no filter removes), until the past flows are
// exhausted (without Follow), Until is passed, ctx ends, or fn returns an
// error. It returns nil at the natural end, else the error. nodeName is
// put into every Response.
func (r *Ring) GetFlows(ctx context.Context, req Request, nodeName string, fn func(*Response) error) error {
	m, err := Compile(req.Allow, req.Deny)
	if err != nil {
		return err
	}
	var (
		e    entry
		resp = Response{NodeName: nodeName}
	)
	emit := func(e *entry) error {
		if e.isLost {
			resp.Flow, resp.Lost = nil, &e.lost
		} else {
			resp.Flow, resp.Lost = &e.flow, nil
		}
		return fn(&resp)
	}
	lost := func(n uint64) error {
		l := entry{isLost: true, lost: LostEvent{Source: LostHubbleRing, NumEventsLost: n, Time: time.Now()}}
		return emit(&l)
	}
	inWindow := func(f *Flow) (ok, past bool) {
		if !req.Since.IsZero() && f.Time.Before(req.Since) {
			return false, false
		}
		if !req.Until.IsZero() && f.Time.After(req.Until) {
			return false, true
		}
		return true, false
	}

	oldest, next := r.bounds()
	start := oldest
	switch {
	case req.Number > 0 && !req.First:
		// The newest Number matches: find where they start, going back.
		var n uint64
		start = next
		for seq := next; seq > oldest && n < req.Number; seq-- {
			if ok, _ := r.read(seq-1, &e); !ok {
				break
			}
			if e.isLost {
				continue
			}
			if in, _ := inWindow(&e.flow); in && m.Match(&e.flow) {
				n++
				start = seq - 1
			}
		}
	case req.Number == 0 && req.Follow && req.Since.IsZero():
		start = next // follow only
	}

	var sent uint64
	seq := start
	for ; seq < next; seq++ {
		ok, o := r.read(seq, &e)
		if !ok {
			if err := lost(o - seq); err != nil {
				return err
			}
			seq = o - 1
			continue
		}
		if e.isLost {
			if err := emit(&e); err != nil {
				return err
			}
			continue
		}
		in, past := inWindow(&e.flow)
		if past {
			return nil
		}
		if !in || !m.Match(&e.flow) {
			continue
		}
		if err := emit(&e); err != nil {
			return err
		}
		if sent++; req.Number > 0 && sent >= req.Number && !req.Follow {
			return nil
		}
	}
	if !req.Follow {
		return nil
	}
	for {
		if err := r.wait(ctx, seq); err != nil {
			return err
		}
		ok, o := r.read(seq, &e)
		if !ok {
			if err := lost(o - seq); err != nil {
				return err
			}
			seq = o
			continue
		}
		seq++
		if e.isLost {
			if err := emit(&e); err != nil {
				return err
			}
			continue
		}
		in, past := inWindow(&e.flow)
		if past {
			return nil
		}
		if in && m.Match(&e.flow) {
			if err := emit(&e); err != nil {
				return err
			}
		}
	}
}
