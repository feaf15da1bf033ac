package overlay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RouteProtocol marks the routes a [Router] installs (rtm_protocol), so
// that a new Router finds and reconciles those an earlier one left.
const RouteProtocol netlink.RouteProtocol = 0x4e // 'N'

// RouterConfig configures a [Router].
type RouterConfig struct {
	// Registry is the node registry to follow. Required.
	Registry Registry
	// LocalNode is this node's name; it gets no route. Required.
	LocalNode string
	// NodeNetNS is the node's network namespace (a path); empty means the
	// caller's.
	NodeNetNS string
	// Device, when set, is the name of the node's tunnel device ([Tunnel])
	// in tunnel mode: the routes then go through it without a gateway
	// ("10.1.1.0/24 dev np_vxlan"), for the node's own traffic to other
	// nodes' pods, which the datapath's program on the device
	// encapsulates with reserved:remote-node as VNI
	// (datapath.Datapath.AttachOverlay). The device's addresses
	// ([TunnelConfig].HostAddresses) are the routes' sources. Pods'
	// traffic does not take these routes: the datapath sends it to the
	// device itself.
	Device string
}

// Router is native routing: it keeps, in the node's routing table, a
// route to every other node's pod CIDRs via that node's underlay address
// ("10.1.1.0/24 via 192.168.50.2"), so that pod traffic crosses the
// underlay unencapsulated and the receiving node's datapath takes the
// sender's identity from its ipcache. The nodes must share a link (or
// routers that know the pod CIDRs), and forward IP packets
// (net.ipv4.ip_forward, net.ipv6.conf.all.forwarding); pair it with a
// [Syncer] in [ModeNative].
type Router struct {
	cfg     RouterConfig
	ns      netns.NsHandle
	nl      *netlink.Handle
	ifindex int // of cfg.Device; 0 without
	// src4 and src6 are the device's addresses, the routes' sources.
	src4, src6 netip.Addr
	// routes are the installed routes by node name, with their gateway
	// (the zero Addr for routes through cfg.Device).
	routes map[string]map[netip.Prefix]netip.Addr
}

// NewRouter validates cfg and opens the node namespace.
func NewRouter(cfg RouterConfig) (_ *Router, err error) {
	switch {
	case cfg.Registry == nil:
		return nil, fmt.Errorf("new router: Registry is nil: %w", ErrInvalidConfig)
	case cfg.LocalNode == "":
		return nil, fmt.Errorf("new router: LocalNode is empty: %w", ErrInvalidConfig)
	}
	path := cfg.NodeNetNS
	if path == "" {
		path = "/proc/self/ns/net"
	}
	r := &Router{cfg: cfg, routes: make(map[string]map[netip.Prefix]netip.Addr)}
	if r.ns, err = netns.GetFromPath(path); err != nil {
		return nil, fmt.Errorf("new router: open node namespace %s: %w", path, err)
	}
	if r.nl, err = netlink.NewHandleAt(r.ns); err != nil {
		r.ns.Close()
		return nil, fmt.Errorf("new router: netlink in %s: %w", path, err)
	}
	if cfg.Device != "" {
		l, err := r.nl.LinkByName(cfg.Device)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("new router: device %q: %w", cfg.Device, err)
		}
		r.ifindex = l.Attrs().Index
		addrs, err := r.nl.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("new router: addresses of %q: %w", cfg.Device, err)
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			switch ip = ip.Unmap(); {
			case !ok || !ip.IsGlobalUnicast():
			case ip.Is4() && !r.src4.IsValid():
				r.src4 = ip
			case ip.Is6() && !r.src6.IsValid():
				r.src6 = ip
			}
		}
	}
	return r, nil
}

// Run follows the registry until ctx is done (nil) or the watch fails.
// It first deletes the routes of RouteProtocol that no node calls for
// (left by an earlier Router). The routes stay when Run returns; [Router.Flush]
// removes them.
func (r *Router) Run(ctx context.Context) error {
	if err := r.adopt(); err != nil {
		return err
	}
	return follow(ctx, r.cfg.Registry, r)
}

// adopt reads the routes an earlier Router left into r.routes, under a
// node name no registry entry has, so that the snapshot replaces or
// removes them.
func (r *Router) adopt() error {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := r.nl.RouteListFiltered(fam, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			return fmt.Errorf("router: list routes: %w", err)
		}
		for _, rt := range routes {
			if rt.Dst == nil {
				continue
			}
			p, ok := netipPrefix(rt.Dst)
			var gw netip.Addr
			if rt.Gw != nil {
				gw, ok = netip.AddrFromSlice(rt.Gw)
			}
			if !ok {
				continue
			}
			if r.routes[""] == nil {
				r.routes[""] = make(map[netip.Prefix]netip.Addr)
			}
			r.routes[""][p] = gw.Unmap()
		}
	}
	return nil
}

func netipPrefix(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}

func (r *Router) known() []string {
	names := make([]string, 0, len(r.routes))
	for name := range r.routes {
		names = append(names, name)
	}
	return names
}

func (r *Router) route(p netip.Prefix, gw netip.Addr) *netlink.Route {
	rt := &netlink.Route{
		Dst:      &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
		Protocol: RouteProtocol,
	}
	if gw.IsValid() {
		rt.Gw = gw.AsSlice()
	} else {
		rt.LinkIndex = r.ifindex
		rt.Scope = netlink.SCOPE_LINK
		src := r.src6
		if p.Addr().Is4() {
			src = r.src4
		}
		if src.IsValid() {
			rt.Src = src.AsSlice()
		}
	}
	return rt
}

func (r *Router) apply(n Node) error {
	if n.Name == r.cfg.LocalNode {
		return nil
	}
	want := make(map[netip.Prefix]netip.Addr, len(n.PodCIDRs))
	for _, p := range n.PodCIDRs {
		if r.ifindex != 0 {
			want[p] = netip.Addr{} // through the tunnel device
		} else {
			want[p] = n.Address(p.Addr().Is4())
		}
	}
	// Routes this node no longer needs, or that an earlier Router left
	// for its CIDRs.
	for _, name := range []string{n.Name, ""} {
		for p, gw := range r.routes[name] {
			if w, ok := want[p]; ok && w == gw && name == n.Name {
				continue
			}
			if _, ok := want[p]; ok {
				delete(r.routes[name], p) // replaced below
				continue
			}
			if name == "" {
				continue
			}
			if err := r.del(p, gw); err != nil {
				return err
			}
			delete(r.routes[name], p)
		}
	}
	if r.routes[n.Name] == nil {
		r.routes[n.Name] = make(map[netip.Prefix]netip.Addr)
	}
	for p, gw := range want {
		if old, ok := r.routes[n.Name][p]; ok && old == gw {
			continue
		}
		if gw.IsValid() && p.Addr().Is4() != gw.Is4() {
			// A route across families needs an encapsulation; native
			// routing has none.
			return fmt.Errorf("router: node %q: pod CIDR %v has no underlay address of its family", n.Name, p)
		}
		if err := r.nl.RouteReplace(r.route(p, gw)); err != nil {
			return fmt.Errorf("router: route %v via %v: %w", p, gw, err)
		}
		r.routes[n.Name][p] = gw
	}
	return nil
}

func (r *Router) del(p netip.Prefix, gw netip.Addr) error {
	err := r.nl.RouteDel(r.route(p, gw))
	if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("router: delete route %v via %v: %w", p, gw, err)
	}
	return nil
}

func (r *Router) remove(name string) error {
	for p, gw := range r.routes[name] {
		if err := r.del(p, gw); err != nil {
			return err
		}
		delete(r.routes[name], p)
	}
	delete(r.routes, name)
	return nil
}

// Flush deletes every route the Router installed or adopted.
func (r *Router) Flush() error {
	var errs []error
	for _, name := range r.known() {
		errs = append(errs, r.remove(name))
	}
	return errors.Join(errs...)
}

// Close releases the namespace handle; the routes stay.
func (r *Router) Close() error {
	r.nl.Close()
	return r.ns.Close()
}
