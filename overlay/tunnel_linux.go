package overlay

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/feature"
	"github.com/nodeplane/nodeplane/internal/netnsutil"
)

var geneveProbe = feature.NewProbe("Geneve", "", func() error {
	ns, err := netnsutil.New()
	if err != nil {
		return err
	}
	defer ns.Close()
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer nl.Close()
	err = nl.LinkAdd(&netlink.Geneve{LinkAttrs: netlink.LinkAttrs{Name: "np_probe"}, FlowBased: true, Dport: DefaultGenevePort})
	if errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("geneve link: %w (%w)", err, nodeplane.ErrNotSupported)
	}
	return err
})

// HaveGeneve reports whether the kernel can create Geneve devices; the
// error wraps nodeplane.ErrNotSupported when it cannot. The answer is
// cached.
func HaveGeneve() error { return geneveProbe.Result() }

// Tunnel is the node's collect-metadata tunnel device: one device for all
// remote nodes, the destination of each packet set by the datapath
// (bpf_skb_set_tunnel_key). It owns the device: Close deletes it.
type Tunnel struct {
	cfg     TunnelConfig
	ns      netns.NsHandle
	nl      *netlink.Handle
	link    netlink.Link
	adopted bool
}

// NewTunnel creates the device in the node namespace and sets it up with
// the pod MTU. A device of that name an earlier process left is adopted
// when it is what cfg asks for (protocol, collect-metadata, port, MTU;
// [Tunnel.Adopted]), so that a restarting agent keeps the device the
// datapath's programs and the node's routes are on and traffic keeps
// flowing; otherwise it is replaced.
func NewTunnel(cfg TunnelConfig) (_ *Tunnel, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.Protocol == Geneve {
		if err := HaveGeneve(); err != nil {
			return nil, fmt.Errorf("new tunnel: %w", err)
		}
	}
	path := cfg.NodeNetNS
	if path == "" {
		path = "/proc/self/ns/net"
	}
	t := &Tunnel{cfg: cfg}
	if t.ns, err = netns.GetFromPath(path); err != nil {
		return nil, fmt.Errorf("new tunnel: open node namespace %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			t.release()
		}
	}()
	if t.nl, err = netlink.NewHandleAt(t.ns); err != nil {
		return nil, fmt.Errorf("new tunnel: netlink in %s: %w", path, err)
	}
	if old, err := t.nl.LinkByName(cfg.Name); err == nil {
		if cfg.matches(old) {
			t.link, t.adopted = old, true
			if err := t.setUp(); err != nil {
				return nil, err
			}
			return t, nil
		}
		if err := t.nl.LinkDel(old); err != nil {
			return nil, fmt.Errorf("new tunnel: delete old %s: %w", cfg.Name, err)
		}
	}
	attrs := netlink.LinkAttrs{Name: cfg.Name, MTU: cfg.podMTU()}
	var link netlink.Link
	if cfg.Protocol == Geneve {
		link = &netlink.Geneve{LinkAttrs: attrs, FlowBased: true, Dport: cfg.Port}
	} else {
		link = &netlink.Vxlan{LinkAttrs: attrs, FlowBased: true, Port: int(cfg.Port), Learning: false}
	}
	if err := t.nl.LinkAdd(link); err != nil {
		return nil, fmt.Errorf("new tunnel: add %s device %s: %w", cfg.Protocol, cfg.Name, err)
	}
	if t.link, err = t.nl.LinkByName(cfg.Name); err != nil {
		return nil, fmt.Errorf("new tunnel: %w", err)
	}
	if err := t.setUp(); err != nil {
		_ = t.nl.LinkDel(t.link)
		return nil, err
	}
	return t, nil
}

// matches reports whether l is the device cfg describes.
func (c TunnelConfig) matches(l netlink.Link) bool {
	if l.Attrs().MTU != c.podMTU() {
		return false
	}
	switch dev := l.(type) {
	case *netlink.Vxlan:
		return c.Protocol == VXLAN && dev.FlowBased && dev.Port == int(c.Port)
	case *netlink.Geneve:
		return c.Protocol == Geneve && dev.FlowBased && dev.Dport == c.Port
	}
	return false
}

// setUp makes the device NOARP with the host addresses, and up; on an
// adopted device it changes only what differs.
func (t *Tunnel) setUp() error {
	cfg := t.cfg
	// No neighbour resolution on the device: the node's own packets routed
	// into it (a Router with Device) go out at once, the destination MAC
	// being the device's own, and get their tunnel key from the
	// datapath; an ARP request or neighbour solicitation would have none
	// and be dropped.
	if t.link.Attrs().RawFlags&unix.IFF_NOARP == 0 {
		if err := t.nl.LinkSetARPOff(t.link); err != nil {
			return fmt.Errorf("new tunnel: set %s noarp: %w", cfg.Name, err)
		}
	}
	for _, a := range cfg.HostAddresses {
		ipn := &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
		if err := t.nl.AddrReplace(t.link, &netlink.Addr{IPNet: ipn, Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("new tunnel: add %v to %s: %w", a, cfg.Name, err)
		}
	}
	if t.link.Attrs().Flags&net.FlagUp == 0 {
		if err := t.nl.LinkSetUp(t.link); err != nil {
			return fmt.Errorf("new tunnel: set %s up: %w", cfg.Name, err)
		}
	}
	return nil
}

// Adopted reports whether NewTunnel found the device an earlier process
// left and kept it.
func (t *Tunnel) Adopted() bool { return t.adopted }

// Ifindex returns the device's interface index in the node namespace,
// for datapath.Datapath.AttachOverlay.
func (t *Tunnel) Ifindex() int { return t.link.Attrs().Index }

// Name returns the device's name.
func (t *Tunnel) Name() string { return t.cfg.Name }

// Port returns the UDP port.
func (t *Tunnel) Port() uint16 { return t.cfg.Port }

// Protocol returns the encapsulation.
func (t *Tunnel) Protocol() TunnelProtocol { return t.cfg.Protocol }

// PodMTU is the MTU endpoints must use (datapath.EndpointConfig.MTU) so
// that their packets fit the underlay once encapsulated: the underlay MTU
// minus [TunnelConfig.Overhead].
func (t *Tunnel) PodMTU() int { return t.cfg.podMTU() }

// Close deletes the device. Closing twice is not an error.
func (t *Tunnel) Close() error {
	if t.nl == nil {
		return nil
	}
	var err error
	if t.link != nil {
		if e := t.nl.LinkDel(t.link); e != nil && !errors.Is(e, unix.ENODEV) {
			err = fmt.Errorf("delete tunnel %s: %w", t.cfg.Name, e)
		}
	}
	t.release()
	return err
}

// Release lets go of the namespace and netlink handles and leaves the
// device in place, for a process handing the node over to its successor
// (whose NewTunnel adopts it). Close after Release does nothing.
func (t *Tunnel) Release() error {
	t.release()
	return nil
}

func (t *Tunnel) release() {
	if t.nl != nil {
		t.nl.Close()
		t.nl = nil
	}
	if t.ns.IsOpen() {
		t.ns.Close()
	}
	t.link = nil
}
