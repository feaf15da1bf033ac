package identity

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/nodeplane/nodeplane"
)

// Names of the reserved labels, "reserved:<name>".
const (
	LabelHost          = "host"
	LabelWorld         = "world"
	LabelWorldIPv4     = "world-ipv4"
	LabelWorldIPv6     = "world-ipv6"
	LabelUnmanaged     = "unmanaged"
	LabelHealth        = "health"
	LabelInit          = "init"
	LabelRemoteNode    = "remote-node"
	LabelKubeAPIServer = "kube-apiserver"
	LabelIngress       = "ingress"
)

// CIDRLabel returns the label that names prefix in a CIDR identity, in the
// form Cilium writes it: the masked address and length, with IPv6 colons
// turned into '-' because selector keys cannot hold ':' ("cidr:10.0.0.0/8",
// "cidr:2001-db8--0/32"). A zero-length prefix has no cidr label (it is the
// world); CIDRLabel rejects it, as it rejects an invalid prefix.
func CIDRLabel(prefix netip.Prefix) (Label, error) {
	if !prefix.IsValid() {
		return Label{}, fmt.Errorf("cidr label for %v: %w", prefix, ErrInvalidPrefix)
	}
	if prefix.Bits() == 0 {
		return Label{}, fmt.Errorf("cidr label for %v: %w: a zero-length prefix is the world, not a cidr", prefix, ErrInvalidPrefix)
	}
	return Label{Source: SourceCIDR, Key: prefixToLabelKey(prefix)}, nil
}

// WorldLabel returns the reserved label of the world outside the cluster for
// addresses of addr's family: "reserved:world" in a single-stack cluster,
// "reserved:world-ipv4" or "reserved:world-ipv6" in a dual-stack one.
func WorldLabel(addr netip.Addr, stack nodeplane.StackMode) Label {
	name := LabelWorld
	if stack == nodeplane.DualStack {
		if addr.Is4() {
			name = LabelWorldIPv4
		} else {
			name = LabelWorldIPv6
		}
	}
	return Label{Source: SourceReserved, Key: name}
}

// CIDRLabels returns the labels of the identity Cilium gives the addresses
// of prefix when they are not in the cluster: the prefix's own cidr label
// (none for a zero-length prefix) and the world label of its family (see
// [WorldLabel]). A CIDR selector for any prefix that contains this one
// selects the identity (see [Labels.Has]).
func CIDRLabels(prefix netip.Prefix, stack nodeplane.StackMode) (Labels, error) {
	if !prefix.IsValid() {
		return Labels{}, fmt.Errorf("cidr labels for %v: %w", prefix, ErrInvalidPrefix)
	}
	world := WorldLabel(prefix.Addr(), stack)
	if prefix.Bits() == 0 {
		return makeLabels([]Label{world}), nil
	}
	return makeLabels([]Label{{Source: SourceCIDR, Key: prefixToLabelKey(prefix)}, world}), nil
}

// prefixToLabelKey renders a prefix as Cilium's cidr label key: a leading
// or trailing ':' of an IPv6 address gets a '0' so that no key starts or
// ends with '-', then every ':' becomes '-'.
func prefixToLabelKey(prefix netip.Prefix) string {
	addr := prefix.Masked().Addr().String()
	if prefix.Addr().Is6() {
		if strings.HasPrefix(addr, ":") {
			addr = "0" + addr
		}
		if strings.HasSuffix(addr, ":") {
			addr += "0"
		}
		addr = strings.ReplaceAll(addr, ":", "-")
	}
	return addr + "/" + strconv.Itoa(prefix.Bits())
}

// labelKeyToPrefix reads a cidr label key back ('-' to ':'). Like Cilium it
// accepts prefixes with host bits set.
func labelKeyToPrefix(key string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.ReplaceAll(key, "-", ":"))
	if err != nil {
		return netip.Prefix{}, err
	}
	return p, nil
}

// prefixContains reports whether outer contains all of inner, Cilium's
// Label.HasCIDR test.
func prefixContains(outer, inner netip.Prefix) bool {
	return outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}
