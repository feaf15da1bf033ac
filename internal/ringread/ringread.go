package ringread

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/nodeplane/nodeplane"
)

// Reader reads one ring buffer. The ring buffer has one consumer
// position: use one Reader per ring buffer.
//
// ReadRaw, SetDeadline and Close may be called from different goroutines;
// ReadRaw is not safe for concurrent use with itself.
type Reader struct {
	r   *ringbuf.Reader
	rec ringbuf.Record

	// mu guards the deadline and its timer, never held across a wait:
	// ringbuf.Reader holds its own lock while it waits, so its SetDeadline
	// would block until a waiting read returns. Reader keeps the
	// deadline itself and wakes a waiting read with Flush.
	mu       sync.Mutex
	deadline time.Time
	timer    *time.Timer
}

// New returns a reader of the ring buffer m.
func New(m *ebpf.Map) (*Reader, error) {
	r, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, fmt.Errorf("events reader: %w", err)
	}
	return &Reader{r: r}, nil
}

// ReadRaw blocks until a record arrives and returns its bytes. The slice
// is valid until the next ReadRaw. Once the deadline has passed, it
// returns the records already in the ring buffer and then an error
// wrapping os.ErrDeadlineExceeded; once the reader is closed,
// [nodeplane.ErrClosed] (which wraps os.ErrClosed).
func (r *Reader) ReadRaw() ([]byte, error) {
	for {
		deadline := r.currentDeadline()
		// No ReadInto runs now (ReadRaw is not concurrent with itself),
		// so the ring buffer's own lock is free.
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

func (r *Reader) currentDeadline() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.deadline
}

// SetDeadline makes ReadRaw give up at t, including one already blocked in
// another goroutine; the zero time means never. It does not wait for
// ReadRaw.
func (r *Reader) SetDeadline(t time.Time) {
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
	// A waiting read may wait for an earlier deadline or none: wake it at
	// t so that it looks at the deadline again. Flush on a closed reader
	// fails harmlessly.
	r.timer = time.AfterFunc(time.Until(t), func() { _ = r.r.Flush() })
}

// Close stops the reader, unblocking a ReadRaw in progress.
func (r *Reader) Close() error {
	r.mu.Lock()
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	r.mu.Unlock()
	return r.r.Close()
}
