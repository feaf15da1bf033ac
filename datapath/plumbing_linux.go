package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Link-local gateways of every endpoint. They are never configured on an
// interface: the endpoint's permanent neighbour entries resolve them to
// the host-side MAC, and the datapath routes whatever arrives there.
var (
	gatewayIPv4 = netip.MustParseAddr("169.254.1.1")
	gatewayIPv6 = netip.MustParseAddr("fe80::1")
)

// nodeNamespace is the namespace holding the host-side interfaces.
type nodeNamespace struct {
	ns netns.NsHandle
	nl *netlink.Handle
}

func openNodeNamespace(path string) (*nodeNamespace, error) {
	if path == "" {
		path = "/proc/self/ns/net"
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open node namespace %s: %w", path, err)
	}
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("netlink in node namespace %s: %w", path, err)
	}
	return &nodeNamespace{ns: ns, nl: nl}, nil
}

func (n *nodeNamespace) close() error {
	n.nl.Close()
	return n.ns.Close()
}

// plumb creates the endpoint's veth pair with the peer in the endpoint's
// namespace and configures both sides. On error it removes what it made.
func (n *nodeNamespace) plumb(cfg EndpointConfig) (_ hostLink, err error) {
	podNS, err := netns.GetFromPath(cfg.NetNS)
	if err != nil {
		return hostLink{}, fmt.Errorf("endpoint %d: open namespace %s: %w", cfg.ID, cfg.NetNS, err)
	}
	defer podNS.Close()
	pod, err := netlink.NewHandleAt(podNS)
	if err != nil {
		return hostLink{}, fmt.Errorf("endpoint %d: netlink in %s: %w", cfg.ID, cfg.NetNS, err)
	}
	defer pod.Close()

	veth := &netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: cfg.HostIfName, MTU: cfg.MTU},
		PeerName:  cfg.IfName,
		// The peer is born in the endpoint's namespace, with its MAC.
		PeerNamespace:    netlink.NsFd(int(podNS)),
		PeerHardwareAddr: cfg.MAC,
		PeerMTU:          uint32(cfg.MTU),
	}
	if err := n.nl.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return hostLink{}, fmt.Errorf("endpoint %d: interface %s or %s: %w", cfg.ID, cfg.HostIfName, cfg.IfName, ErrEndpointExists)
		}
		return hostLink{}, fmt.Errorf("endpoint %d: create veth %s: %w", cfg.ID, cfg.HostIfName, err)
	}
	host, err := n.nl.LinkByName(cfg.HostIfName)
	if err != nil {
		// Cannot find what we just made; the name is all we have.
		_ = n.nl.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: cfg.HostIfName}})
		return hostLink{}, fmt.Errorf("endpoint %d: find %s: %w", cfg.ID, cfg.HostIfName, err)
	}
	hl := hostLink{index: host.Attrs().Index, name: cfg.HostIfName, mac: host.Attrs().HardwareAddr}
	defer func() {
		if err != nil {
			_ = n.nl.LinkDel(host)
		}
	}()

	if err := n.configureHost(cfg, host); err != nil {
		return hostLink{}, fmt.Errorf("endpoint %d: configure %s: %w", cfg.ID, cfg.HostIfName, err)
	}
	if err := configurePod(pod, cfg, hl.mac); err != nil {
		return hostLink{}, fmt.Errorf("endpoint %d: configure %s in %s: %w", cfg.ID, cfg.IfName, cfg.NetNS, err)
	}
	return hl, nil
}

// configureHost brings the host side up and routes the endpoint's
// addresses to it, with permanent neighbour entries.
func (n *nodeNamespace) configureHost(cfg EndpointConfig, host netlink.Link) error {
	if err := n.nl.LinkSetUp(host); err != nil {
		return err
	}
	for _, a := range []netip.Addr{cfg.IPv4, cfg.IPv6} {
		if !a.IsValid() {
			continue
		}
		if err := n.nl.NeighSet(&netlink.Neigh{
			LinkIndex: host.Attrs().Index, Family: family(a), State: netlink.NUD_PERMANENT,
			IP: a.AsSlice(), HardwareAddr: cfg.MAC,
		}); err != nil {
			return fmt.Errorf("neighbour %v: %w", a, err)
		}
		if err := n.nl.RouteReplace(&netlink.Route{
			LinkIndex: host.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: hostPrefix(a),
		}); err != nil {
			return fmt.Errorf("route %v: %w", a, err)
		}
	}
	return nil
}

// configurePod gives the endpoint's interface its addresses and default
// routes through the link-local gateways.
func configurePod(pod *netlink.Handle, cfg EndpointConfig, gatewayMAC net.HardwareAddr) error {
	link, err := pod.LinkByName(cfg.IfName)
	if err != nil {
		return err
	}
	idx := link.Attrs().Index
	if err := pod.LinkSetUp(link); err != nil {
		return err
	}
	if a := cfg.IPv4; a.IsValid() {
		if err := pod.AddrAdd(link, &netlink.Addr{IPNet: hostPrefix(a)}); err != nil {
			return fmt.Errorf("address %v: %w", a, err)
		}
		if err := pod.RouteAdd(&netlink.Route{LinkIndex: idx, Scope: netlink.SCOPE_LINK, Dst: hostPrefix(gatewayIPv4)}); err != nil {
			return fmt.Errorf("route to gateway %v: %w", gatewayIPv4, err)
		}
	}
	if a := cfg.IPv6; a.IsValid() {
		// No duplicate address detection: the address is the datapath's
		// to hand out, and DAD would hold it tentative for a second.
		if err := pod.AddrAdd(link, &netlink.Addr{IPNet: hostPrefix(a), Flags: unix.IFA_F_NODAD}); err != nil {
			return fmt.Errorf("address %v: %w", a, err)
		}
	}
	for _, gw := range []netip.Addr{gatewayIPv4, gatewayIPv6} {
		if gw.Is4() && !cfg.IPv4.IsValid() || gw.Is6() && !cfg.IPv6.IsValid() {
			continue
		}
		if err := pod.NeighSet(&netlink.Neigh{
			LinkIndex: idx, Family: family(gw), State: netlink.NUD_PERMANENT,
			IP: gw.AsSlice(), HardwareAddr: gatewayMAC,
		}); err != nil {
			return fmt.Errorf("neighbour %v: %w", gw, err)
		}
		if err := pod.RouteAdd(&netlink.Route{LinkIndex: idx, Gw: gw.AsSlice(), Family: family(gw)}); err != nil {
			return fmt.Errorf("default route via %v: %w", gw, err)
		}
	}
	return nil
}

// unplumb deletes the host side of the veth pair, which takes the peer,
// the routes, the neighbour entries and the attachments with it.
func (n *nodeNamespace) unplumb(cfg EndpointConfig, host hostLink) error {
	link, err := n.nl.LinkByIndex(host.index)
	if isLinkNotFound(err) {
		return nil // gone already, e.g. with its namespace
	}
	if err != nil {
		return fmt.Errorf("endpoint %d: find %s: %w", cfg.ID, host.name, err)
	}
	if link.Attrs().Name != host.name {
		return nil // the ifindex was reused by someone else's interface
	}
	if err := n.nl.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("endpoint %d: delete %s: %w", cfg.ID, host.name, err)
	}
	return nil
}

// isLinkNotFound reports whether err says that no such interface exists.
func isLinkNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func hostPrefix(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}
