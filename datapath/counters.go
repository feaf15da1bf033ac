package datapath

import (
	"fmt"
	"time"

	"github.com/nodeplane/nodeplane/datapath/monitor"
)

// CounterKey names one counter: packets a hook forwarded (Reason 0) or
// dropped for a reason.
type CounterKey struct {
	Hook   Hook
	Reason DropReason
}

// Counter counts packets and their bytes.
type Counter struct {
	Packets, Bytes uint64
}

// Counters returns the datapath's packet counters, summed over CPUs; zero
// counters are left out. The counters live in the shared counters map, so
// with pinning they cover every Datapath on the same directory.
func (d *Datapath) Counters() (map[CounterKey]Counter, error) {
	out := make(map[CounterKey]Counter)
	var (
		k      uint32
		percpu []counter
	)
	it := d.maps.counters.Iterate()
	for it.Next(&k, &percpu) {
		var sum Counter
		for _, c := range percpu {
			sum.Packets += c.Packets
			sum.Bytes += c.Bytes
		}
		if sum.Packets != 0 {
			out[CounterKey{Hook: Hook(k >> 8), Reason: DropReason(k)}] = sum
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	return out, nil
}

// traceConfig is struct np_trace_config.
type traceConfig struct {
	Aggregation uint8   `btf:"aggregation"`
	ReportFlags uint8   `btf:"report_flags"`
	_           [2]byte `btf:"pad"`
	Interval    uint32  `btf:"interval"`
}

// SetMonitorAggregation sets the monitor aggregation level of every
// endpoint's programs at once (it is a map, not a load-time constant);
// AggregationDefault means Config.MonitorAggregation. The interval and
// report flags stay those of Config.
func (d *Datapath) SetMonitorAggregation(level monitor.AggregationLevel) error {
	if level == monitor.AggregationDefault {
		level = d.cfg.MonitorAggregation
	}
	var tc traceConfig
	switch n, ok := level.CiliumLevel(); {
	case ok:
		tc.Aggregation = n + 1
	case level != monitor.AggregationOff:
		return fmt.Errorf("%w: unknown monitor aggregation level %d", ErrInvalidConfig, level)
	}
	tc.ReportFlags = uint8(d.cfg.MonitorAggregationFlags)
	tc.Interval = uint32(d.cfg.MonitorAggregationInterval / time.Second)
	if err := d.maps.trace.Put(uint32(0), tc); err != nil {
		return fmt.Errorf("set monitor aggregation: %w", err)
	}
	return nil
}

// EventsLost returns how many events found the ring buffer full and were
// not written.
func (d *Datapath) EventsLost() (uint64, error) {
	var percpu []uint64
	if err := d.maps.eventsLost.Lookup(uint32(0), &percpu); err != nil {
		return 0, fmt.Errorf("read lost events: %w", err)
	}
	var n uint64
	for _, v := range percpu {
		n += v
	}
	return n, nil
}
