package datapath

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
)

// EgressLimit is the rate at which an endpoint's traffic may leave the
// node, enforced by earliest departure time (EDT, bpf/edt.h): the
// endpoint's program stamps each packet it hands to the stack with the
// time it may leave, and the fq qdisc of the device it leaves by holds it
// until then. Traffic to other local endpoints is not limited. Without
// fq on that device the stamps are ignored; package bandwidth probes for
// it and falls back to a token bucket.
type EgressLimit struct {
	// BitsPerSecond is the rate, at least 8.
	BitsPerSecond uint64
	// Horizon is how far ahead of now a packet's departure may lie; the
	// program drops packets beyond it with
	// monitor.DropEDTHorizon. Zero means 2 s, Cilium's default.
	Horizon time.Duration
	// Priority, when HasPriority, becomes the skb->priority of the
	// endpoint's packets (fq's priomap picks a band by it).
	Priority    uint8
	HasPriority bool
}

// defaultEDTHorizon is Cilium's default drop horizon (bwmap.DefaultDropHorizon).
const defaultEDTHorizon = 2 * time.Second

// edtInfo is struct np_edt_info.
type edtInfo struct {
	BytesPerSecond uint64 `btf:"bps"`
	LastDeparture  uint64 `btf:"t_last"`
	HorizonNs      uint64 `btf:"t_horizon_drop"`
	Prio           uint32 `btf:"prio"`
	_              uint32 `btf:"pad"`
}

// EgressState is an endpoint's EDT state as the kernel holds it.
type EgressState struct {
	EgressLimit
	// LastDeparture is the departure time (CLOCK_MONOTONIC) the program
	// gave the last packet it scheduled, zero before the first.
	LastDeparture time.Duration
}

// SetEgressRate limits the rate of the traffic the endpoint sends off the
// node, or changes the limit; the schedule starts afresh. Errors wrap
// [ErrInvalidConfig] for a limit below 8 bit/s or a negative horizon.
func (ep *Endpoint) SetEgressRate(l EgressLimit) error {
	if l.BitsPerSecond < 8 {
		return fmt.Errorf("endpoint %d: %w: egress rate %d bit/s is below 8", ep.cfg.ID, ErrInvalidConfig, l.BitsPerSecond)
	}
	if l.Horizon < 0 {
		return fmt.Errorf("endpoint %d: %w: negative EDT horizon %v", ep.cfg.ID, ErrInvalidConfig, l.Horizon)
	}
	if l.Horizon == 0 {
		l.Horizon = defaultEDTHorizon
	}
	info := edtInfo{BytesPerSecond: l.BitsPerSecond / 8, HorizonNs: uint64(l.Horizon)}
	if l.HasPriority {
		info.Prio = uint32(l.Priority) + 1
	}
	ep.mu.RLock()
	defer ep.mu.RUnlock()
	if err := ep.usable(); err != nil {
		return err
	}
	if err := ep.dp.maps.edt.Put(uint32(ep.cfg.ID), info); err != nil {
		return fmt.Errorf("endpoint %d: set egress rate: %w", ep.cfg.ID, err)
	}
	return nil
}

// ClearEgressRate removes the endpoint's limit; clearing an endpoint
// without one succeeds.
func (ep *Endpoint) ClearEgressRate() error {
	ep.mu.RLock()
	defer ep.mu.RUnlock()
	if err := ep.usable(); err != nil {
		return err
	}
	return ep.clearEgressRate()
}

func (ep *Endpoint) clearEgressRate() error {
	if err := ep.dp.maps.edt.Delete(uint32(ep.cfg.ID)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("endpoint %d: clear egress rate: %w", ep.cfg.ID, err)
	}
	return nil
}

// EgressState returns the endpoint's EDT state, and false when it has no
// limit.
func (ep *Endpoint) EgressState() (EgressState, bool, error) {
	ep.mu.RLock()
	defer ep.mu.RUnlock()
	if err := ep.usable(); err != nil {
		return EgressState{}, false, err
	}
	var info edtInfo
	if err := ep.dp.maps.edt.Lookup(uint32(ep.cfg.ID), &info); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return EgressState{}, false, nil
		}
		return EgressState{}, false, fmt.Errorf("endpoint %d: read egress rate: %w", ep.cfg.ID, err)
	}
	s := EgressState{
		EgressLimit: EgressLimit{
			BitsPerSecond: info.BytesPerSecond * 8,
			Horizon:       time.Duration(info.HorizonNs),
		},
		LastDeparture: time.Duration(info.LastDeparture),
	}
	if info.Prio != 0 {
		s.Priority, s.HasPriority = uint8(info.Prio-1), true
	}
	return s, true, nil
}

// usable fails for a deleted or released endpoint; ep.mu is held.
func (ep *Endpoint) usable() error {
	if ep.deleted {
		return fmt.Errorf("endpoint %d: %w", ep.cfg.ID, nodeplane.ErrClosed)
	}
	return nil
}
