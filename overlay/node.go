package overlay

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/nodeplane/nodeplane/ipam"
)

// Node is one node of the cluster as the registry knows it.
type Node struct {
	// Name is the node's name, as ipam.CheckNodeName accepts it (no '/', space
	// or control character).
	Name string
	// Addresses are the node's underlay addresses (IPv4, IPv6 or both):
	// where other nodes send its encapsulated traffic, and the source of
	// the tunnel packets it sends. At least one.
	Addresses []netip.Addr
	// PodCIDRs are the prefixes of the node's pods (the node CIDRs ipam's
	// cluster pool handed it), IPv4 and/or IPv6. They must not overlap any
	// other node's.
	PodCIDRs []netip.Prefix
	// HostAddresses are the node's own addresses inside its pod CIDRs, at
	// most one per family: the source of its own traffic to other nodes'
	// pods ([TunnelConfig].HostAddresses; Cilium's CiliumInternalIP, the
	// router IP on cilium_host). Other nodes map them to
	// reserved:remote-node, through the tunnel in tunnel mode. Optional.
	HostAddresses []netip.Addr
}

// canonical checks n and returns it in canonical form: addresses and
// CIDRs sorted and deduplicated.
func (n Node) canonical() (Node, error) {
	if err := ipam.CheckNodeName(n.Name); err != nil {
		return n, fmt.Errorf("node %q: %w: %v", n.Name, ErrInvalidNode, err)
	}
	if len(n.Addresses) == 0 {
		return n, fmt.Errorf("node %q: %w: no underlay address", n.Name, ErrInvalidNode)
	}
	out := Node{Name: n.Name}
	for _, a := range n.Addresses {
		if !a.IsValid() || a.Zone() != "" || a.IsUnspecified() || a.Is4In6() || a.IsMulticast() {
			return n, fmt.Errorf("node %q: underlay address %v: %w: must be a unicast address without zone", n.Name, a, ErrInvalidNode)
		}
		out.Addresses = append(out.Addresses, a)
	}
	for _, p := range n.PodCIDRs {
		if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return n, fmt.Errorf("node %q: pod CIDR %v: %w: must be a valid prefix with host bits clear", n.Name, p, ErrInvalidNode)
		}
		out.PodCIDRs = append(out.PodCIDRs, p)
	}
	var v4, v6 int
	for _, a := range n.HostAddresses {
		if !a.IsValid() || a.Zone() != "" || !slices.ContainsFunc(n.PodCIDRs, func(p netip.Prefix) bool { return p.Contains(a) }) {
			return n, fmt.Errorf("node %q: host address %v: %w: must be an address inside one of its pod CIDRs", n.Name, a, ErrInvalidNode)
		}
		if slices.Contains(out.HostAddresses, a) {
			continue
		}
		out.HostAddresses = append(out.HostAddresses, a)
		if a.Is4() {
			v4++
		} else {
			v6++
		}
	}
	if v4 > 1 || v6 > 1 {
		return n, fmt.Errorf("node %q: host addresses %v: %w: at most one per family", n.Name, n.HostAddresses, ErrInvalidNode)
	}
	slices.SortFunc(out.HostAddresses, netip.Addr.Compare)
	slices.SortFunc(out.Addresses, netip.Addr.Compare)
	out.Addresses = slices.Compact(out.Addresses)
	slices.SortFunc(out.PodCIDRs, comparePrefix)
	out.PodCIDRs = slices.Compact(out.PodCIDRs)
	for i := 1; i < len(out.PodCIDRs); i++ {
		for j := range i {
			if out.PodCIDRs[i].Overlaps(out.PodCIDRs[j]) {
				return n, &OverlapError{Node: n.Name, OtherNode: n.Name, CIDR: out.PodCIDRs[i].String(), OtherCIDR: out.PodCIDRs[j].String()}
			}
		}
	}
	return out, nil
}

// Equal reports whether two nodes in canonical form are the same.
func (n Node) Equal(o Node) bool {
	return n.Name == o.Name && slices.Equal(n.Addresses, o.Addresses) && slices.Equal(n.PodCIDRs, o.PodCIDRs) &&
		slices.Equal(n.HostAddresses, o.HostAddresses)
}

// Address returns the node's underlay address to reach a pod CIDR of the
// given family through: one of the same family if it has one (VXLAN over
// IPv4 for IPv4 pods), else its first address.
func (n Node) Address(is4 bool) netip.Addr {
	for _, a := range n.Addresses {
		if a.Is4() == is4 {
			return a
		}
	}
	if len(n.Addresses) == 0 {
		return netip.Addr{}
	}
	return n.Addresses[0]
}

// CheckOverlap returns an [*OverlapError] if a pod CIDR of n overlaps one
// of another node in others (n's own earlier entry, same name, is
// ignored).
func CheckOverlap(n Node, others []Node) error {
	for _, o := range others {
		if o.Name == n.Name {
			continue
		}
		for _, p := range n.PodCIDRs {
			for _, q := range o.PodCIDRs {
				if p.Overlaps(q) {
					return &OverlapError{Node: n.Name, OtherNode: o.Name, CIDR: p.String(), OtherCIDR: q.String()}
				}
			}
		}
	}
	return nil
}

// Canonical validates n and returns it with addresses and pod CIDRs
// sorted and deduplicated; registries store nodes in this form.
func Canonical(n Node) (Node, error) { return n.canonical() }

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
