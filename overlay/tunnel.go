package overlay

import (
	"fmt"
	"net/netip"
)

// TunnelProtocol is the encapsulation of the tunnel device.
type TunnelProtocol uint8

const (
	// VXLAN (RFC 7348): the default, present in every kernel nodeplane
	// supports.
	VXLAN TunnelProtocol = iota
	// Geneve (RFC 8926), where the kernel has it ([HaveGeneve]).
	Geneve
)

func (p TunnelProtocol) String() string {
	switch p {
	case VXLAN:
		return "vxlan"
	case Geneve:
		return "geneve"
	}
	return fmt.Sprintf("TunnelProtocol(%d)", uint8(p))
}

// Tunnel ports.
const (
	// DefaultVXLANPort is Cilium's VXLAN port (the Linux kernel's
	// historical default), used when TunnelConfig.Port is zero.
	DefaultVXLANPort = 8472
	// IANAVXLANPort is VXLAN's IANA-assigned port.
	IANAVXLANPort = 4789
	// DefaultGenevePort is Geneve's IANA-assigned port, Cilium's default.
	DefaultGenevePort = 6081
)

// DefaultTunnelName is the tunnel device's name when TunnelConfig.Name is
// empty.
const DefaultTunnelName = "np_vxlan"

// Encapsulation overheads on an IPv4 underlay: outer Ethernet (14), IPv4
// (20), UDP (8) and the VXLAN or Geneve header without options (8), as
// Cilium counts them. An IPv6 underlay adds 20.
const (
	VXLANOverhead  = 50
	GeneveOverhead = 50
	ipv6Extra      = 20
)

// TunnelConfig configures a [Tunnel].
type TunnelConfig struct {
	// NodeNetNS is the node's network namespace (a path such as
	// /proc/PID/ns/net); empty means the caller's. It must be the
	// datapath's Config.NodeNetNS.
	NodeNetNS string
	// Name of the device. Empty means DefaultTunnelName.
	Name string
	// Protocol is VXLAN (the zero value) or Geneve.
	Protocol TunnelProtocol
	// Port is the UDP port. Zero means DefaultVXLANPort (8472, Cilium's)
	// for VXLAN and DefaultGenevePort for Geneve.
	Port uint16
	// UnderlayMTU is the MTU of the node's underlay interface. Zero means
	// 1500. It must leave at least 1280 bytes for pods.
	UnderlayMTU int
	// IPv6Underlay says the nodes talk over IPv6 (20 bytes more overhead).
	IPv6Underlay bool
	// HostAddresses are the node's own addresses in its pod CIDRs, at most
	// one IPv4 and one IPv6 (Cilium's router IPs, which it puts on
	// cilium_host), assigned to the device as /32 and /128. A [Router]
	// with the device routes other nodes' pod CIDRs through it with
	// these as source, so that the node's own connections to other
	// nodes' pods are answered through the tunnel. Optional.
	HostAddresses []netip.Addr
}

func (c TunnelConfig) withDefaults() (TunnelConfig, error) {
	if c.Name == "" {
		c.Name = DefaultTunnelName
	}
	if len(c.Name) > 15 {
		return c, fmt.Errorf("tunnel device name %q longer than 15 bytes: %w", c.Name, ErrInvalidConfig)
	}
	switch c.Protocol {
	case VXLAN:
		if c.Port == 0 {
			c.Port = DefaultVXLANPort
		}
	case Geneve:
		if c.Port == 0 {
			c.Port = DefaultGenevePort
		}
	default:
		return c, fmt.Errorf("tunnel protocol %v: %w", c.Protocol, ErrInvalidConfig)
	}
	if c.UnderlayMTU == 0 {
		c.UnderlayMTU = 1500
	}
	var v4, v6 int
	for _, a := range c.HostAddresses {
		switch {
		case !a.IsValid() || a.Zone() != "" || a.Is4In6():
			return c, fmt.Errorf("tunnel host address %v: %w", a, ErrInvalidConfig)
		case a.Is4():
			v4++
		default:
			v6++
		}
	}
	if v4 > 1 || v6 > 1 {
		return c, fmt.Errorf("tunnel host addresses %v: at most one per family: %w", c.HostAddresses, ErrInvalidConfig)
	}
	if c.UnderlayMTU > 65535 || c.podMTU() < 1280 {
		return c, fmt.Errorf("underlay MTU %d leaves a pod MTU of %d (at least 1280, IPv6's minimum): %w", c.UnderlayMTU, c.podMTU(), ErrInvalidConfig)
	}
	return c, nil
}

// Overhead returns the bytes encapsulation adds to each packet.
func (c TunnelConfig) Overhead() int {
	o := VXLANOverhead
	if c.Protocol == Geneve {
		o = GeneveOverhead
	}
	if c.IPv6Underlay {
		o += ipv6Extra
	}
	return o
}

func (c TunnelConfig) podMTU() int { return c.UnderlayMTU - c.Overhead() }
