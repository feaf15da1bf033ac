package datapath

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf/ringbuf"
)

// EventReader reads the datapath's events ring buffer. The ring buffer has
// one consumer position: use one reader per Datapath (per pin directory).
type EventReader struct {
	r   *ringbuf.Reader
	rec ringbuf.Record
}

// NewEventReader returns a reader of the events ring buffer.
func (d *Datapath) NewEventReader() (*EventReader, error) {
	r, err := ringbuf.NewReader(d.maps.events)
	if err != nil {
		return nil, fmt.Errorf("events reader: %w", err)
	}
	return &EventReader{r: r}, nil
}

// Read blocks until an event arrives and returns it. After the deadline it
// returns an error wrapping os.ErrDeadlineExceeded; once the reader is
// closed, [ErrClosed]. A record it cannot decode is returned as an error
// wrapping [ErrMalformedEvent]; the next Read continues with the next
// record. Read is not safe for concurrent use with itself.
func (r *EventReader) Read() (Event, error) {
	if err := r.r.ReadInto(&r.rec); err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("read events: %w", err)
	}
	return ParseEvent(r.rec.RawSample)
}

// ReadRaw blocks until a record arrives and returns its bytes, undecoded
// (package flow decodes them without allocating). The slice is valid until
// the next ReadRaw or Read. Errors are those of Read; ReadRaw implements
// flow.Source.
func (r *EventReader) ReadRaw() ([]byte, error) {
	if err := r.r.ReadInto(&r.rec); err != nil {
		if errors.Is(err, ringbuf.ErrClosed) {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("read events: %w", err)
	}
	return r.rec.RawSample, nil
}

// SetDeadline makes Read give up at t; the zero time means never.
func (r *EventReader) SetDeadline(t time.Time) { r.r.SetDeadline(t) }

// Close stops the reader, unblocking a Read in progress.
func (r *EventReader) Close() error { return r.r.Close() }
