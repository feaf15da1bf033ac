package lb

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
)

// DefaultNATGCInterval is NorthSouthConfig.NATGCInterval's default.
const DefaultNATGCInterval = 10 * time.Second

// NorthSouthConfig configures a [NorthSouth]. The zero value is Cilium's
// default Maglev configuration.
type NorthSouthConfig struct {
	// MaglevTableSize is the size M of every Maglev table, one of
	// maglev.SupportedTableSizes; 0 means maglev.DefaultTableSize.
	MaglevTableSize uint
	// MaglevHashSeed is the cluster's seed in Cilium's format (12 bytes,
	// standard base64): bytes 0–3 seed the backend permutations, bytes 4–7
	// the IPv4 packet hash and 8–11 the IPv6 packet hash, as in Cilium.
	// Empty means maglev.DefaultHashSeed.
	MaglevHashSeed string

	// SNATAddrs switch on SNAT mode, per family: a translated packet
	// leaves with this node address (at most one IPv4 and one IPv6) and a
	// port from the NAT table (NATPortMin–NATPortMax) as its source, so backends reply to the node
	// whatever their routes; the client address is then hidden from them.
	// Replies arrive on the interface towards the backends, so attach
	// there too. The stack routes translated packets; for IPv4 it drops
	// packets with a local source as martians unless the external
	// interface has net.ipv4.conf.IFACE.accept_local=1 (this package does
	// not change sysctls). A family without an address uses DNAT mode:
	// backends see the client and must route replies through this node.
	SNATAddrs []netip.Addr

	// NATMap is the node's NAT table that SNAT mode takes its ports from:
	// pass datapath's Datapath.NATMap so that masquerading and SNAT
	// never hand out one node port twice. Nil: a table of this
	// NorthSouth's own. A map of another layout is refused
	// (ErrInvalidConfig). The caller keeps owning it; close it after
	// this NorthSouth.
	NATMap *ebpf.Map
	// NATPortMin and NATPortMax bound SNAT's node ports, inclusive; both
	// zero means 61000–65535 (the masquerading default, above Linux's
	// ephemeral range). A shared table's users should use one range.
	NATPortMin, NATPortMax uint16
	// NATGCInterval is how often SNAT mode removes the NAT entries of
	// flows idle for longer than Cilium's conntrack lifetimes (TCP 6h,
	// 10s after FIN or RST, others 60s). Zero means
	// DefaultNATGCInterval; negative means never (call
	// [NorthSouth.GCNAT] yourself). Without SNAT nothing is collected.
	// Sharing the datapath's table, leave collection to its Masquerade
	// (negative here): two collectors with different lifetimes on one
	// table remove flows at the shorter one.
	NATGCInterval time.Duration

	// DSR switches on direct server return (exclusive with SNATAddrs):
	// the translated packet carries the frontend in an IPv4 option or an
	// IPv6 destination option, in Cilium's formats, and the backend's
	// node, where another NorthSouth is attached with
	// [NorthSouth.AttachDSRBackend], sends the replies from the frontend
	// straight to the client. The packet grows by 8 (IPv4) or 24 (IPv6)
	// bytes; one that then exceeds the MTU of its route to the backend
	// (the kernel's FIB says) is answered, as Cilium's DSR ICMP errors,
	// with an ICMP fragmentation needed or packet too big from the
	// frontend advertising that MTU less the overhead, and counted under
	// DROP_FRAG_NEEDED. IPv4 packets that carry
	// options already are dropped (DROP_INVALID). DSR needs an XDP attach
	// mode.
	DSR bool
}

func (cfg NorthSouthConfig) snatAddrs() (v4, v6 netip.Addr, err error) {
	if cfg.DSR && len(cfg.SNATAddrs) > 0 {
		return v4, v6, fmt.Errorf("%w: DSR and SNAT are exclusive", ErrInvalidConfig)
	}
	for _, a := range cfg.SNATAddrs {
		switch {
		case !a.IsValid() || a.IsUnspecified() || a.Zone() != "" || a.Is4In6():
			return v4, v6, fmt.Errorf("%w: SNAT address %s", ErrInvalidConfig, a)
		case a.Is4() && v4.IsValid(), a.Is6() && v6.IsValid():
			return v4, v6, fmt.Errorf("%w: two SNAT addresses of one family (%s)", ErrInvalidConfig, a)
		case a.Is4():
			v4 = a
		default:
			v6 = a
		}
	}
	return v4, v6, nil
}

// AttachMode says how [NorthSouth.Attach] hooks the translation of
// arriving packets into an interface.
type AttachMode uint8

const (
	// AttachAuto probes: native XDP if the driver takes it (veth does),
	// generic XDP otherwise, tc ingress if the interface takes no XDP
	// program at all (one is attached already).
	AttachAuto AttachMode = iota
	// AttachXDPNative: XDP in the driver.
	AttachXDPNative
	// AttachXDPGeneric: XDP in the stack, after the skb is built.
	AttachXDPGeneric
	// AttachTC: a tc ingress program (tcx, or tc clsact before Linux 6.6).
	AttachTC
)

func (m AttachMode) String() string {
	switch m {
	case AttachAuto:
		return "auto"
	case AttachXDPNative:
		return "xdp-native"
	case AttachXDPGeneric:
		return "xdp-generic"
	case AttachTC:
		return "tc"
	}
	return fmt.Sprintf("AttachMode(%d)", uint8(m))
}
