package bandwidth

import (
	"errors"
	"fmt"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath"
)

// Manager applies endpoints' [Limits]. It chooses its mechanism once, in
// [New]: EDT through the datapath where the kernel has sch_fq, else the
// token-bucket fallback. Its methods are safe for concurrent use.
//
// With EDT the Manager owns the root qdiscs of its devices until [Close],
// which puts back what was there before. The endpoints' limits are not
// the Manager's: EDT rates live in the datapath's map and token buckets on
// the endpoints' interfaces, and both outlive the Manager (an agent that
// restarts finds them in place); [Manager.Clear] removes them.
type Manager struct {
	cfg  Config
	mech Mechanism

	mu     sync.Mutex
	saved  []*savedRoot // the devices' qdiscs before fq, for Close
	closed bool
}

// New returns a Manager. With EDT (chosen or required) it checks that the
// kernel has sch_fq and delivery-time stamps, and installs fq with the
// horizon on cfg.Devices, remembering each device's root qdisc for
// [Manager.Close]. A device whose qdiscs Close could not put back (a
// classful root other than mq, or a qdisc kind netlink cannot read back
// whole; the kernel's default, tbf, fq, fq_codel and mq with such leaves
// are fine) is refused, and the devices done so far are put back. Errors
// wrap [ErrInvalidConfig], or nodeplane.ErrNotSupported when EDT is
// required and the kernel lacks it.
func New(cfg Config) (*Manager, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, mech: cfg.Mechanism}
	switch err := errors.Join(HaveEDT(), HaveDeliveryTime()); {
	case m.mech == MechanismAuto && len(cfg.Devices) == 0:
		// Departure times take effect only in fq on the device a packet
		// leaves by: without devices to install it on, EDT could limit
		// nothing, so auto takes the fallback.
		m.mech = MechanismTBF
	case m.mech == MechanismAuto && err == nil:
		m.mech = MechanismEDT
	case m.mech == MechanismAuto && errors.Is(err, nodeplane.ErrNotSupported):
		m.mech = MechanismTBF
	case m.mech == MechanismAuto:
		return nil, err
	case m.mech == MechanismEDT && err != nil:
		return nil, fmt.Errorf("EDT: %w", err)
	}
	if m.mech == MechanismEDT {
		if err := withHandle(cfg.NodeNetNS, func(h *netlink.Handle) error {
			for _, dev := range cfg.Devices {
				saved, err := installFq(h, dev, cfg)
				if saved != nil {
					m.saved = append(m.saved, saved)
				}
				if err != nil {
					return errors.Join(err, m.restore(h))
				}
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Close puts back the root qdiscs the devices had before [New] installed
// fq: the kernel's default (deleting fq brings it back) or the qdiscs
// someone had configured, as netlink read them. Options netlink does not
// read (fq's ce_threshold, orphan_mask and priomap, for one) come back as
// the kernel's defaults. A device that is gone is skipped. What Close puts
// back is what New found: after a process that did not Close (a crash, or
// an agent that keeps its devices' fq across restarts, as Cilium does),
// that is the earlier Manager's fq.
//
// Endpoints keep their limits, see [Manager]; with EDT they limit nothing
// until fq is on the devices again. The fallback has nothing to put back.
// Close tries every device once and returns their errors joined; it is
// idempotent, and afterwards the Manager's other methods fail with
// nodeplane.ErrClosed.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	if len(m.saved) == 0 {
		return nil
	}
	return withHandle(m.cfg.NodeNetNS, m.restore)
}

// restore puts back the saved qdiscs, the last device first.
func (m *Manager) restore(h *netlink.Handle) error {
	var errs []error
	for i := len(m.saved) - 1; i >= 0; i-- {
		errs = append(errs, m.saved[i].restore(h))
	}
	m.saved = nil
	return errors.Join(errs...)
}

// DeviceStats returns the statistics of the fq qdiscs on the Manager's
// devices (none with the fallback), read from the kernel now.
func (m *Manager) DeviceStats() ([]DeviceStats, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(); err != nil {
		return nil, err
	}
	if m.mech != MechanismEDT {
		return nil, nil
	}
	var out []DeviceStats
	err := withNetNS(m.cfg.NodeNetNS, func(ns netns.NsHandle, h *netlink.Handle) error {
		for _, dev := range m.cfg.Devices {
			st, err := fqStats(ns, h, dev)
			if err != nil {
				return err
			}
			out = append(out, st)
		}
		return nil
	})
	return out, err
}

func (m *Manager) usable() error {
	if m.closed {
		return fmt.Errorf("bandwidth manager: %w", nodeplane.ErrClosed)
	}
	return nil
}

// Mechanism returns the mechanism in effect: MechanismEDT or MechanismTBF.
func (m *Manager) Mechanism() Mechanism { return m.mech }

// Set gives an endpoint its limits, replacing earlier ones; a zero rate
// removes the limit in that direction. Egress is limited by the Manager's
// mechanism: EDT through [datapath.Endpoint.SetEgressRate], or, as the
// fallback, a tbf qdisc on the endpoint's interface inside its namespace.
// Ingress is limited as the CNI bandwidth plugin does it, by a tbf qdisc on
// the egress of the endpoint's host-side interface; traffic from other
// local endpoints is redirected past it and is not limited. The fallback
// and ingress limits need an attached endpoint. Errors wrap
// [ErrInvalidRate] for bad limits.
func (m *Manager) Set(ep *datapath.Endpoint, l Limits) error {
	if err := l.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(); err != nil {
		return err
	}

	var errs []error
	switch {
	case m.mech == MechanismEDT && l.Egress != 0:
		errs = append(errs, ep.SetEgressRate(datapath.EgressLimit{
			BitsPerSecond: uint64(l.Egress),
			Horizon:       m.cfg.Horizon,
			Priority:      l.Priority,
			HasPriority:   l.HasPriority,
		}))
	case m.mech == MechanismEDT:
		errs = append(errs, ep.ClearEgressRate())
	default:
		errs = append(errs, m.setTBF(ep, ep.NetNS(), ep.IfName(), l.Egress))
	}
	errs = append(errs, m.setTBF(ep, ep.NodeNetNS(), ep.HostIfName(), l.Ingress))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%v: set bandwidth: %w", ep, err)
	}
	return nil
}

// Clear removes an endpoint's limits; clearing an endpoint without any
// succeeds.
func (m *Manager) Clear(ep *datapath.Endpoint) error { return m.Set(ep, Limits{}) }

// setTBF puts a token bucket of rate on the endpoint's interface dev in
// the namespace at nsPath, or removes it for rate 0.
func (m *Manager) setTBF(ep *datapath.Endpoint, nsPath, dev string, rate Rate) error {
	switch {
	case ep.HostIfName() == "": // detached: no interfaces
		if rate == 0 {
			return nil
		}
		return fmt.Errorf("%w: a token bucket needs an attached endpoint", ErrInvalidConfig)
	case dev == "":
		// An endpoint adopted from an earlier process's pins knows only
		// its host side: its pod interface is not known here.
		if rate == 0 {
			return nil
		}
		return fmt.Errorf("%w: %v: the pod's interface is not known (an adopted endpoint); use SetPodEgress", ErrInvalidConfig, ep)
	}
	return m.tbfAt(nsPath, dev, rate)
}

// SetPodEgress puts the fallback's egress token bucket of rate on the pod's
// interface ifName in the namespace at nsPath, or removes it for rate 0:
// what Set does for the egress of an endpoint whose handle does not know
// its pod side (one adopted from an earlier process's pins knows only its
// host side). With EDT the egress limit is the datapath's: use Set.
func (m *Manager) SetPodEgress(nsPath, ifName string, rate Rate) error {
	if m.mech == MechanismEDT {
		return fmt.Errorf("%w: with EDT the egress rate is the datapath's; use Set", ErrInvalidConfig)
	}
	if err := (Limits{Egress: rate}).Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.usable(); err != nil {
		return err
	}
	return m.tbfAt(nsPath, ifName, rate)
}

// tbfAt puts a token bucket of rate on interface dev in the namespace at
// nsPath, or removes it for rate 0.
func (m *Manager) tbfAt(nsPath, dev string, rate Rate) error {
	return withHandle(nsPath, func(h *netlink.Handle) error {
		link, err := h.LinkByName(dev)
		if err != nil {
			if rate == 0 {
				return nil // the interface is gone, and its qdisc with it
			}
			return fmt.Errorf("interface %s: %w", dev, err)
		}
		if rate == 0 {
			return deleteRootQdisc(h, link, "tbf")
		}
		return h.QdiscReplace(tbfQdisc(link.Attrs().Index, rate, m.cfg))
	})
}

// tbfQdisc is the CNI bandwidth plugin's token bucket (createTBF): rate,
// a burst, and a queue of latency's worth of bytes plus the burst. The
// burst is 10 ms of the rate, at least 64 KiB so that a GSO packet fits.
func tbfQdisc(ifindex int, rate Rate, cfg Config) *netlink.Tbf {
	bytesPerSec := rate.BytesPerSecond()
	burst := bytesPerSec / 100
	if burst < 64<<10 {
		burst = 64 << 10
	}
	if burst > 1<<30 {
		burst = 1 << 30
	}
	limit := bytesPerSec*uint64(cfg.TBFLatency.Microseconds())/1e6 + burst
	if limit > 1<<31 {
		limit = 1 << 31
	}
	return &netlink.Tbf{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(1, 0),
			Parent:    netlink.HANDLE_ROOT,
		},
		Rate:   bytesPerSec,
		Limit:  uint32(limit),
		Buffer: netlink.Xmittime(bytesPerSec, uint32(burst)),
	}
}

// withHandle runs fn with a netlink handle in the namespace at path ("" is
// the process's).
func withHandle(path string, fn func(*netlink.Handle) error) error {
	return withNetNS(path, func(_ netns.NsHandle, h *netlink.Handle) error { return fn(h) })
}

// withNetNS runs fn with the namespace at path ("" is the process's) and a
// netlink handle in it.
func withNetNS(path string, fn func(netns.NsHandle, *netlink.Handle) error) error {
	get := netns.Get
	if path != "" {
		get = func() (netns.NsHandle, error) { return netns.GetFromPath(path) }
	}
	ns, err := get()
	if err != nil {
		return fmt.Errorf("open namespace %q: %w", path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in namespace %q: %w", path, err)
	}
	defer h.Close()
	return fn(ns, h)
}
