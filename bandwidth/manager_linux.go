package bandwidth

import (
	"errors"
	"fmt"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath"
)

// Manager applies endpoints' [Limits]. It chooses its mechanism once, in
// [New]: EDT through the datapath where the kernel has sch_fq, else the
// token-bucket fallback. Its methods are safe for concurrent use.
type Manager struct {
	cfg  Config
	mech Mechanism
	mu   sync.Mutex
}

// New returns a Manager. With EDT (chosen or required) it checks that the
// kernel has sch_fq and delivery-time stamps, and installs fq with the
// horizon on cfg.Devices. Errors wrap [ErrInvalidConfig], or
// nodeplane.ErrNotSupported when EDT is required and the kernel lacks it.
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
				if err := installFq(h, dev, cfg); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return m, nil
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

// installFq replaces dev's root qdisc by fq with the horizon, or by mq
// with an fq leaf per TX queue on a multi-queue device, as Cilium's
// bandwidth manager does.
func installFq(h *netlink.Handle, dev string, cfg Config) error {
	link, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("device %s: %w", dev, err)
	}
	idx := link.Attrs().Index
	fq := func(parent uint32, handle uint32) *netlink.Fq {
		q := netlink.NewFq(netlink.QdiscAttrs{LinkIndex: idx, Parent: parent, Handle: handle})
		q.Horizon = uint32(cfg.Horizon.Microseconds())
		q.HorizonDropPolicy = netlink.HORIZON_DROP_POLICY_DROP
		return q
	}
	n := link.Attrs().NumTxQueues
	if n <= 1 {
		if err := h.QdiscReplace(fq(netlink.HANDLE_ROOT, netlink.MakeHandle(1, 0))); err != nil {
			return fmt.Errorf("device %s: install fq: %w", dev, err)
		}
		return nil
	}
	mq := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: idx, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(1, 0)},
		QdiscType:  "mq",
	}
	if err := h.QdiscReplace(mq); err != nil {
		return fmt.Errorf("device %s: install mq: %w", dev, err)
	}
	for i := 1; i <= n; i++ {
		if err := h.QdiscReplace(fq(netlink.MakeHandle(1, uint16(i)), netlink.MakeHandle(uint16(10+i), 0))); err != nil {
			return fmt.Errorf("device %s: install fq on TX queue %d: %w", dev, i, err)
		}
	}
	return nil
}

// deleteRootQdisc deletes link's root qdisc if it is of kind, which
// brings back the device's default.
func deleteRootQdisc(h *netlink.Handle, link netlink.Link, kind string) error {
	qs, err := h.QdiscList(link)
	if err != nil {
		return err
	}
	for _, q := range qs {
		if q.Attrs().Parent == netlink.HANDLE_ROOT && q.Type() == kind {
			if err := h.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) {
				return err
			}
		}
	}
	return nil
}

// withHandle runs fn with a netlink handle in the namespace at path ("" is
// the process's).
func withHandle(path string, fn func(*netlink.Handle) error) error {
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
	return fn(h)
}
