package lb

import (
	"fmt"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/ringread"
)

// DropReader reads the drop records of a [NorthSouth]: one per packet its
// programs drop, in the datapath's record format (datapath/monitor's
// DropNotify, with Cilium's drop reason, observation point FROM_NETWORK,
// direction ingress, the packet's tuple where it has one, and identities
// 0). It implements flow.Source, so a flow.Observer turns the records
// into Hubble flows.
//
// The ring buffer has one consumer position: use one DropReader per
// NorthSouth. ReadRaw, SetDeadline and Close may be called from different
// goroutines; ReadRaw is not safe for concurrent use with itself.
type DropReader struct {
	r *ringread.Reader
}

// NewDropReader returns a reader of the drop records. Close it before or
// after the NorthSouth.
func (np *NorthSouth) NewDropReader() (*DropReader, error) {
	np.mu.Lock()
	defer np.mu.Unlock()
	if np.closed {
		return nil, nodeplane.ErrClosed
	}
	r, err := ringread.New(np.objs.NpNpEvents)
	if err != nil {
		return nil, err
	}
	return &DropReader{r: r}, nil
}

// ReadRaw blocks until a record arrives and returns its bytes, valid until
// the next ReadRaw. Once the deadline has passed it returns the records
// already there and then an error wrapping os.ErrDeadlineExceeded; once
// the reader is closed, [nodeplane.ErrClosed].
func (r *DropReader) ReadRaw() ([]byte, error) { return r.r.ReadRaw() }

// SetDeadline makes ReadRaw give up at t, also one already waiting; the
// zero time means never.
func (r *DropReader) SetDeadline(t time.Time) { r.r.SetDeadline(t) }

// Close stops the reader, unblocking a ReadRaw in progress.
func (r *DropReader) Close() error { return r.r.Close() }

// DropEventsLost returns how many drop records found the ring buffer full
// and were not written (for flow.Config.KernelLost).
func (np *NorthSouth) DropEventsLost() (uint64, error) {
	np.mu.Lock()
	defer np.mu.Unlock()
	if np.closed {
		return 0, nodeplane.ErrClosed
	}
	var percpu []uint64
	if err := np.objs.NpNpEventsLost.Lookup(uint32(0), &percpu); err != nil {
		return 0, fmt.Errorf("read lost drop records: %w", err)
	}
	var n uint64
	for _, v := range percpu {
		n += v
	}
	return n, nil
}
