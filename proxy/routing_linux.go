package proxy

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Routing is the node's routing for redirected packets: the rule "fwmark
// 0x200/0xf00 lookup 2004" (priority 9) and the routes "local 0.0.0.0/0
// dev lo" and "local ::/0 dev lo" in table 2004, for IPv4 and IPv6, as
// Cilium installs them for its tproxy redirection. Without them a packet
// the datapath assigned to a proxy socket would be forwarded towards its
// destination instead of delivered to the socket. Close removes them.
type Routing struct {
	nl     *netlink.Handle
	rules  []*netlink.Rule
	routes []*netlink.Route
}

// SetupRouting installs the routing in cfg.NodeNetNS. Entries that exist
// already (another Routing, an agent restarted) are left and kept; Close
// removes them all the same, so one Routing per node is the rule.
func SetupRouting(cfg Config) (_ *Routing, err error) {
	nl, err := nodeNetlink(cfg)
	if err != nil {
		return nil, err
	}
	r := &Routing{nl: nl}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.Close())
		}
	}()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("proxy: routing: loopback: %w", err)
	}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rule := netlink.NewRule()
		rule.Family = fam
		rule.Priority = RulePriority
		rule.Mark = MarkToProxy
		m := MarkMask
		rule.Mask = &m
		rule.Table = RouteTable
		if err := nl.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("proxy: routing: add rule %v: %w", rule, err)
		}
		r.rules = append(r.rules, rule)

		dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if fam == unix.AF_INET6 {
			dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		route := &netlink.Route{
			LinkIndex: lo.Attrs().Index,
			Dst:       dst,
			Table:     RouteTable,
			Type:      unix.RTN_LOCAL,
			Scope:     unix.RT_SCOPE_HOST,
			Family:    fam,
		}
		if err := nl.RouteReplace(route); err != nil {
			return nil, fmt.Errorf("proxy: routing: add route %v: %w", route, err)
		}
		r.routes = append(r.routes, route)
	}
	return r, nil
}

// Close removes the rules and routes; missing ones are fine.
func (r *Routing) Close() error {
	if r.nl == nil {
		return nil
	}
	var errs []error
	for _, rule := range r.rules {
		if err := r.nl.RuleDel(rule); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("proxy: routing: delete rule: %w", err))
		}
	}
	for _, route := range r.routes {
		if err := r.nl.RouteDel(route); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("proxy: routing: delete route: %w", err))
		}
	}
	r.nl.Close()
	r.nl = nil
	return errors.Join(errs...)
}

func nodeNetlink(cfg Config) (*netlink.Handle, error) {
	if cfg.NodeNetNS == "" {
		return netlink.NewHandle()
	}
	ns, err := netns.GetFromPath(cfg.NodeNetNS)
	if err != nil {
		return nil, fmt.Errorf("proxy: node namespace %s: %w", cfg.NodeNetNS, err)
	}
	defer ns.Close()
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("proxy: netlink in %s: %w", cfg.NodeNetNS, err)
	}
	return nl, nil
}
