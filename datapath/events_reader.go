package datapath

import (
	"time"

	"github.com/nodeplane/nodeplane/internal/ringread"
)

// EventReader reads the datapath's events ring buffer. The ring buffer has
// one consumer position: use one reader per Datapath (per pin directory).
//
// Read, SetDeadline and Close may be called from different goroutines; Read
// is not safe for concurrent use with itself.
type EventReader struct {
	r *ringread.Reader
}

// NewEventReader returns a reader of the events ring buffer.
func (d *Datapath) NewEventReader() (*EventReader, error) {
	r, err := ringread.New(d.maps.events)
	if err != nil {
		return nil, err
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
func (r *EventReader) ReadRaw() ([]byte, error) { return r.r.ReadRaw() }

// SetDeadline makes Read give up at t, including a Read already blocked in
// another goroutine; the zero time means never. It does not wait for Read.
func (r *EventReader) SetDeadline(t time.Time) { r.r.SetDeadline(t) }

// Close stops the reader, unblocking a Read in progress.
func (r *EventReader) Close() error { return r.r.Close() }
