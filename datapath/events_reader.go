package datapath

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/nodeplane/nodeplane"
)

// EventReader reads the datapath's events ring buffer. The ring buffer has
// one consumer position: use one reader per Datapath (per pin directory).
//
// Read, SetDeadline and Close may be called from different goroutines; Read
// is not safe for concurrent use with itself.
type EventReader struct {
	r   *ringbuf.Reader
	rec ringbuf.Record

	// mu guards the deadline and its timer, never held across a wait:
	// ringbuf.Reader holds its own lock while it waits, so its SetDeadline
	// would block until a waiting Read returns. EventReader keeps the
	// deadline itself and wakes a waiting Read with Flush.
	mu       sync.Mutex
	deadline time.Time
	timer    *time.Timer
}

// NewEventReader returns a reader of the events ring buffer.
func (d *Datapath) NewEventReader() (*EventReader, error) {
	r, err := ringbuf.NewReader(d.maps.events)
	if err != nil {
		return nil, fmt.Errorf("events reader: %w", err)
	}
	return &EventReader{r: r}, nil
}

// Read blocks until an event arrives and returns it. Once the deadline has
// passed, it returns the events already in the ring buffer and then an
// error wrapping os.ErrDeadlineExceeded; once the reader is closed,
// [nodeplane.ErrClosed]. A record it cannot decode is returned as an error wrapping
// [ErrMalformedEvent]; the next Read continues with the next record.
func (r *EventReader) Read() (Event, error) {
	b, err := r.ReadRaw()
	if err != nil {
		return nil, err
	}
	return ParseEvent(b)
}

// ReadRaw blocks until a record arrives and returns its bytes, undecoded
// (package flow decodes them without allocating). The slice is valid until
// the next ReadRaw or Read. Its errors and deadline are those of Read;
// ReadRaw implements flow.Source.
func (r *EventReader) ReadRaw() ([]byte, error) {
	for {
		deadline := r.currentDeadline()
		// No ReadInto runs now (Read is not concurrent with itself), so the
		// ring buffer's own lock is free.
		r.r.SetDeadline(deadline)
		err := r.r.ReadInto(&r.rec)
		switch {
		case err == nil:
			return r.rec.RawSample, nil
		case errors.Is(err, ringbuf.ErrClosed):
			return nil, nodeplane.ErrClosed
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, ringbuf.ErrFlushed):
			// Woken by the deadline the wait started with or by SetDeadline;
			// the deadline may since have moved.
			if d := r.currentDeadline(); !d.IsZero() && !time.Now().Before(d) {
				return nil, fmt.Errorf("read events: %w", os.ErrDeadlineExceeded)
			}
		default:
			return nil, fmt.Errorf("read events: %w", err)
		}
	}
}

func (r *EventReader) currentDeadline() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.deadline
}

// SetDeadline makes Read give up at t, including a Read already blocked in
// another goroutine; the zero time means never. It does not wait for Read.
func (r *EventReader) SetDeadline(t time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deadline = t
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	if t.IsZero() {
		return
	}
	// A waiting Read may wait for an earlier deadline or none: wake it at t
	// so that it looks at the deadline again. Flush on a closed reader
	// fails harmlessly.
	r.timer = time.AfterFunc(time.Until(t), func() { _ = r.r.Flush() })
}

// Close stops the reader, unblocking a Read in progress.
func (r *EventReader) Close() error {
	r.mu.Lock()
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	r.mu.Unlock()
	return r.r.Close()
}
