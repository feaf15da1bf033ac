package bandwidth

import (
	"fmt"
	"math"
	"time"
)

// Mechanism is how a [Manager] enforces egress rates.
type Mechanism uint8

// Mechanisms.
const (
	// MechanismAuto picks EDT where the kernel has sch_fq ([HaveEDT]) and
	// Config.Devices names devices to install fq on, and the token-bucket
	// fallback otherwise.
	MechanismAuto Mechanism = iota
	// MechanismEDT stamps departure times in the datapath and needs fq on
	// the node's egress devices (Config.Devices).
	MechanismEDT
	// MechanismTBF is the fallback of the CNI bandwidth plugin: a tbf
	// qdisc on the endpoint's side of its veth pair for egress. It is a
	// queue with its own latency, not EDT.
	MechanismTBF
)

func (m Mechanism) String() string {
	switch m {
	case MechanismAuto:
		return "auto"
	case MechanismEDT:
		return "EDT"
	case MechanismTBF:
		return "TBF (fallback)"
	}
	return fmt.Sprintf("Mechanism(%d)", uint8(m))
}

// Config configures a [Manager]. The zero value picks the mechanism by
// probing and uses Cilium's 2 s horizons.
type Config struct {
	// Mechanism chooses how egress is limited; see [Mechanism].
	Mechanism Mechanism
	// NodeNetNS is the path of the node's network namespace, where the
	// devices and the endpoints' host-side interfaces live; empty is the
	// process's own. It must be the datapath's.
	NodeNetNS string
	// Devices are the node's egress devices. With EDT the Manager gives
	// each an fq qdisc (mq with an fq leaf per TX queue on a multi-queue
	// device) with the horizon, replacing its root qdisc, so that the
	// departure times take effect. Unused by the fallback.
	Devices []string
	// Horizon is the EDT program's drop horizon: it drops a packet whose
	// departure would lie this far ahead of now or more
	// (REACHED_EDT_RATE_LIMITING_DROP_HORIZON) without booking its slot.
	// Zero is DefaultHorizon, Cilium's 2 s (bwmap.DefaultDropHorizon).
	Horizon time.Duration
	// FqHorizon is the horizon of the fq qdiscs the Manager installs
	// (fq's "horizon", with "horizon_drop": fq drops a packet whose
	// departure time lies further ahead and counts it in its
	// horizon_drops statistic, [Manager.DeviceStats]). Zero is
	// DefaultHorizon, Cilium's FqDefaultHorizon. fq's horizon guards
	// against departure times nobody bounded, such as an application's
	// SO_TXTIME; the EDT program bounds its own stamps by Horizon. Keep it
	// at least Horizon, as Cilium does: below, fq drops packets whose
	// slots the program has already booked, and the endpoint loses that
	// share of its rate. At most about 71 minutes (fq keeps it in
	// microseconds in 32 bits).
	FqHorizon time.Duration
	// TBFLatency bounds the queue of the fallback's token buckets, as the
	// CNI bandwidth plugin's latency (its default, 25 ms, when zero).
	TBFLatency time.Duration
}

const defaultTBFLatency = 25 * time.Millisecond

func (c Config) withDefaults() (Config, error) {
	if c.Mechanism > MechanismTBF {
		return c, fmt.Errorf("%w: unknown mechanism %d", ErrInvalidConfig, c.Mechanism)
	}
	if c.Mechanism == MechanismTBF && len(c.Devices) > 0 {
		return c, fmt.Errorf("%w: Devices are for EDT's fq; the token-bucket fallback does not use them", ErrInvalidConfig)
	}
	if c.Horizon < 0 || c.FqHorizon < 0 || c.TBFLatency < 0 {
		return c, fmt.Errorf("%w: negative horizon or latency", ErrInvalidConfig)
	}
	if c.FqHorizon > math.MaxUint32*time.Microsecond {
		return c, fmt.Errorf("%w: fq horizon %v does not fit fq's 32-bit microseconds", ErrInvalidConfig, c.FqHorizon)
	}
	if c.Mechanism == MechanismTBF && c.FqHorizon != 0 {
		return c, fmt.Errorf("%w: FqHorizon is for EDT's fq; the token-bucket fallback does not use it", ErrInvalidConfig)
	}
	if c.Horizon == 0 {
		c.Horizon = DefaultHorizon
	}
	if c.FqHorizon == 0 {
		c.FqHorizon = DefaultHorizon
	}
	if c.TBFLatency == 0 {
		c.TBFLatency = defaultTBFLatency
	}
	return c, nil
}

// DeviceStats are the statistics of the fq qdiscs on one of the Manager's
// devices, summed over its TX queues.
type DeviceStats struct {
	Device string
	// Qdiscs is how many fq qdiscs the sums cover.
	Qdiscs int
	// Throttled counts packets fq held until their departure time.
	Throttled uint64
	// HorizonDrops counts packets fq dropped because their departure
	// time lay beyond its horizon (Config.FqHorizon); HorizonCaps those
	// it would have capped at the horizon instead (never, with the
	// Manager's drop policy).
	HorizonDrops, HorizonCaps uint64
}
