package flow

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nodeplane/nodeplane/datapath/monitor"
)

// Source yields raw datapath records; datapath's EventReader is one
// (ReadRaw). The returned slice may be reused by the next call. ReadRaw
// returns an error wrapping os.ErrClosed once the source is closed, and one
// wrapping os.ErrDeadlineExceeded when a deadline passes.
type Source interface {
	ReadRaw() ([]byte, error)
}

// Sink receives every flow the Observer stores and every loss it notices;
// flow/metrics implements it with Prometheus counters. Calls come from the
// Observer's reading goroutine, and from RecordL7's callers, possibly at
// once; they must not block.
type Sink interface {
	ObserveFlow(f *Flow)
	ObserveLost(src LostSource, n uint64)
}

// Config configures an [Observer].
type Config struct {
	// Source is where records come from; required.
	Source Source
	// KernelLost returns the datapath's count of records it could not
	// write (datapath's EventsLost); optional. The Observer polls it and
	// reports increases as lost events.
	KernelLost func() (uint64, error)
	// LostPollInterval is how often KernelLost is polled (default 1s).
	LostPollInterval time.Duration
	// Capacity is the ring's size in flows (default 4095, Hubble's).
	Capacity int
	NodeName string
	Catalog  *Catalog
	// Sink is told about every flow and loss; optional.
	Sink Sink
	// Boot is passed to the Decoder (zero: measured).
	Boot time.Time
}

// Observer reads records from a Source, decodes and enriches them, keeps
// the last flows in a Ring and serves them with GetFlows. A slow reader
// never holds up the Source: it loses flows to ring overruns and is told
// how many.
type Observer struct {
	cfg   Config
	dec   *Decoder
	ring  *Ring
	start time.Time

	seen       atomic.Uint64
	mu         sync.Mutex
	lost       map[LostSource]uint64
	decodeErrs map[string]uint64
	kernelLost uint64 // last value of KernelLost
}

// New returns an Observer; call Run to start reading.
func New(cfg Config) (*Observer, error) {
	if cfg.Source == nil {
		return nil, errors.New("flow: Config.Source is required")
	}
	if cfg.Capacity == 0 {
		cfg.Capacity = 4095
	}
	if cfg.Capacity < 0 {
		return nil, fmt.Errorf("flow: Capacity %d < 0", cfg.Capacity)
	}
	if cfg.LostPollInterval <= 0 {
		cfg.LostPollInterval = time.Second
	}
	o := &Observer{
		cfg:        cfg,
		dec:        NewDecoder(DecoderConfig{NodeName: cfg.NodeName, Catalog: cfg.Catalog, Boot: cfg.Boot}),
		ring:       NewRing(cfg.Capacity),
		start:      time.Now(),
		lost:       make(map[LostSource]uint64),
		decodeErrs: make(map[string]uint64),
	}
	if cfg.KernelLost != nil {
		// Losses from before this Observer are not its readers' concern.
		if n, err := cfg.KernelLost(); err == nil {
			o.kernelLost = n
		}
	}
	return o, nil
}

// NodeName returns the configured node name.
func (o *Observer) NodeName() string { return o.cfg.NodeName }

// deadliner is a Source that can stop waiting (datapath's EventReader).
type deadliner interface{ SetDeadline(time.Time) }

// Run reads records until the Source is closed or ctx ends (it then returns
// nil) or the Source fails. Records it cannot decode are counted by reason
// (Status) and reported to readers as lost events; Run goes on with the
// next. When the Source has a SetDeadline method (datapath's EventReader
// does), Run wakes up every LostPollInterval even without records, to poll
// the kernel's lost counter and to notice ctx; otherwise both happen when a
// record arrives, and closing the Source is how to stop Run. Run is not
// safe for concurrent use with itself.
func (o *Observer) Run(ctx context.Context) error {
	var (
		f        Flow
		nextPoll = time.Now().Add(o.cfg.LostPollInterval)
	)
	dl, _ := o.cfg.Source.(deadliner)
	if dl != nil {
		dl.SetDeadline(nextPoll)
		defer dl.SetDeadline(time.Time{})
	}
	for {
		if ctx.Err() != nil {
			return nil
		}
		rec, err := o.cfg.Source.ReadRaw()
		if now := time.Now(); !now.Before(nextPoll) {
			nextPoll = now.Add(o.cfg.LostPollInterval)
			if dl != nil {
				dl.SetDeadline(nextPoll)
			}
			o.pollKernelLost()
		}
		if err != nil {
			if errors.Is(err, os.ErrClosed) {
				o.pollKernelLost()
				return nil
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			return fmt.Errorf("flow: read records: %w", err)
		}
		if err := o.dec.Decode(rec, &f); err != nil {
			o.decodeError(err)
			continue
		}
		o.seen.Add(1)
		o.ring.Write(&f)
		if o.cfg.Sink != nil {
			o.cfg.Sink.ObserveFlow(&f)
		}
	}
}

// Process decodes, stores and counts one record as Run does; for callers
// that read records themselves (and for tests and benchmarks).
func (o *Observer) Process(rec []byte, scratch *Flow) error {
	if err := o.dec.Decode(rec, scratch); err != nil {
		o.decodeError(err)
		return err
	}
	o.seen.Add(1)
	o.ring.Write(scratch)
	if o.cfg.Sink != nil {
		o.cfg.Sink.ObserveFlow(scratch)
	}
	return nil
}

// DecodeErrorReason names the kind of a decode error, without its variable
// parts: "truncated", "unknown version", "unknown type", "field out of
// range", or "malformed".
func DecodeErrorReason(err error) string {
	for _, e := range []error{monitor.ErrTruncated, monitor.ErrVersion, monitor.ErrUnknownType, monitor.ErrField} {
		if errors.Is(err, e) {
			return strings.TrimPrefix(e.Error(), monitor.ErrMalformed.Error()+": ")
		}
	}
	return "malformed"
}

func (o *Observer) decodeError(err error) {
	o.mu.Lock()
	o.decodeErrs[DecodeErrorReason(err)]++
	o.mu.Unlock()
	o.addLost(LostEventsQueue, 1)
}

func (o *Observer) pollKernelLost() {
	if o.cfg.KernelLost == nil {
		return
	}
	n, err := o.cfg.KernelLost()
	if err != nil || n <= o.kernelLost {
		return
	}
	d := n - o.kernelLost
	o.kernelLost = n
	o.addLost(LostRingBuffer, d)
}

func (o *Observer) addLost(src LostSource, n uint64) {
	o.mu.Lock()
	o.lost[src] += n
	o.mu.Unlock()
	o.ring.WriteLost(LostEvent{Source: src, NumEventsLost: n, Time: time.Now()})
	if o.cfg.Sink != nil {
		o.cfg.Sink.ObserveLost(src, n)
	}
}

// GetFlows serves a request from the ring; see [Ring.GetFlows]. Flows a
// follower lost to ring overruns are reported to it and counted in
// Status.Lost[LostHubbleRing].
func (o *Observer) GetFlows(ctx context.Context, req Request, fn func(*Response) error) error {
	return o.ring.GetFlows(ctx, req, o.cfg.NodeName, func(r *Response) error {
		if r.Lost != nil && r.Lost.Source == LostHubbleRing {
			o.mu.Lock()
			o.lost[LostHubbleRing] += r.Lost.NumEventsLost
			o.mu.Unlock()
			if o.cfg.Sink != nil {
				o.cfg.Sink.ObserveLost(LostHubbleRing, r.Lost.NumEventsLost)
			}
		}
		return fn(r)
	})
}

// Status reports the observer's counters.
func (o *Observer) Status() Status {
	o.mu.Lock()
	defer o.mu.Unlock()
	return Status{
		NumFlows: uint64(o.ring.Flows()), MaxFlows: uint64(o.ring.Cap()), SeenFlows: o.seen.Load(),
		Uptime: time.Since(o.start), Lost: maps.Clone(o.lost), DecodeErrors: maps.Clone(o.decodeErrs),
	}
}
