package bandwidth

import (
	"fmt"
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
// probing and uses Cilium's 2 s horizon.
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
	// Horizon is the drop horizon of the EDT program and of fq; zero is
	// DefaultHorizon.
	Horizon time.Duration
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
	if c.Horizon < 0 || c.TBFLatency < 0 {
		return c, fmt.Errorf("%w: negative horizon or latency", ErrInvalidConfig)
	}
	if c.Horizon == 0 {
		c.Horizon = DefaultHorizon
	}
	if c.TBFLatency == 0 {
		c.TBFLatency = defaultTBFLatency
	}
	return c, nil
}
