package datapath

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
)

// EndpointID names an endpoint on this node, as Cilium's 16-bit endpoint
// IDs do. 0 is not a valid ID.
type EndpointID uint16

// AttachMode selects how programs are attached to interfaces.
type AttachMode uint8

const (
	// AttachAuto uses tcx where the kernel has it ([HaveTCX]) and tc
	// clsact with cls_bpf otherwise.
	AttachAuto AttachMode = iota
	// AttachTCX requires tcx links (Linux 6.6).
	AttachTCX
	// AttachTC uses a clsact qdisc and direct-action cls_bpf filters,
	// created over netlink.
	AttachTC
)

func (m AttachMode) String() string {
	switch m {
	case AttachAuto:
		return "auto"
	case AttachTCX:
		return "tcx"
	case AttachTC:
		return "tc"
	}
	return fmt.Sprintf("AttachMode(%d)", uint8(m))
}

// Config configures a [Datapath]. The zero value is usable: every zero
// field means the documented default.
type Config struct {
	// BPFFSDir is an existing directory on a bpffs mount in which the
	// maps are pinned by name and the endpoints' tcx links by endpoint.
	// Endpoints then outlive the Datapath and its process, and the next
	// Datapath on the directory reuses the maps with their contents and
	// adopts the endpoints (see the package documentation, Lifetime).
	// Empty means no pinning: the maps and endpoints live as long as the
	// Datapath.
	BPFFSDir string
	// NodeNetNS is the path of the network namespace the host-side
	// interfaces live in, such as /proc/PID/ns/net or /var/run/netns/NAME.
	// Empty means the namespace of the process (/proc/self/ns/net).
	NodeNetNS string
	// Attach selects tcx or tc; the default is AttachAuto.
	Attach AttachMode

	// MaxEndpoints bounds the number of endpoints (default 4096). The
	// endpoints map holds two addresses per endpoint.
	MaxEndpoints int
	// IPCacheMaxEntries bounds the ipcache (default 512000, Cilium's).
	IPCacheMaxEntries int
	// ConntrackMaxEntries is the size of the conntrack LRU (default
	// 262144). The LRU is preallocated: about 150 bytes an entry.
	ConntrackMaxEntries int
	// FragmentsMaxEntries is the size of the LRU that carries the L4
	// header of a fragmented datagram's first fragment to the later ones
	// (default 8192, Cilium's): how many datagrams may be in flight in
	// fragments at once.
	FragmentsMaxEntries int
	// PolicyMapMaxEntries bounds each endpoint's policy map (default
	// 16384, Cilium's).
	PolicyMapMaxEntries int
	// NATMaxEntries is the size of the node's NAT table (default 65536),
	// two entries per translated flow, masquerading's and lb's SNAT flows
	// alike (see [Datapath.NATMap]). It is a preallocated hash, not an
	// LRU: when it is full new flows are dropped (DROP_NAT_NO_MAPPING)
	// until GC frees entries; no live translation is ever evicted.
	// Cilium's bpf-nat-global-max is 524288.
	NATMaxEntries int
	// EventsBufferSize is the size of the events ring buffer in bytes, a
	// power of two multiple of the page size (default 256 KiB).
	EventsBufferSize int

	// Conntrack lifetimes; zero means Cilium's default, in brackets.
	// TCPLifetime applies to established TCP connections [6h],
	// NonTCPLifetime to UDP, SCTP and ICMP flows [60s], SYNLifetime to TCP
	// connections that have sent nothing but SYNs [60s], CloseLifetime to
	// TCP connections after a RST or a FIN each way [10s]. Each packet
	// extends its connection's lifetime. Whole seconds only.
	TCPLifetime, NonTCPLifetime, SYNLifetime, CloseLifetime time.Duration

	// MonitorAggregation is how many trace records forwarded packets
	// produce, with Cilium's levels (see [monitor.AggregationLevel]);
	// default AggregationMedium, Cilium's default. AggregationOff writes
	// none. [Datapath.SetMonitorAggregation] changes it at run time.
	MonitorAggregation monitor.AggregationLevel
	// MonitorAggregationInterval is how often an active connection is
	// reported from AggregationMedium on (default 5s, Cilium's); whole
	// seconds.
	MonitorAggregationInterval time.Duration
	// MonitorAggregationFlags are the TCP flags whose first appearance in
	// a direction of a connection is reported from AggregationMedium on
	// (default SYN, FIN and RST, Cilium's).
	MonitorAggregationFlags monitor.TCPFlags

	// Programs is the BPF object to run instead of the one embedded in
	// this build, as [ebpf.LoadCollectionSpec] reads it: datapath/bpf
	// compiled otherwise (other defines or flags), or another release's
	// build with the same maps. Every map and program of the embedded
	// object must be there with the same type, key and value sizes and
	// flags, else New fails with [ErrInvalidConfig]. Nil, the default,
	// uses the embedded object. [Datapath.Upgrade] replaces the programs
	// of a running Datapath.
	Programs *ebpf.CollectionSpec `json:"-"`
}

const (
	defaultMaxEndpoints        = 4096
	defaultIPCacheMaxEntries   = 512000
	defaultConntrackMaxEntries = 262144
	defaultFragmentsMaxEntries = 8192
	defaultPolicyMapMaxEntries = 16384
	defaultEventsBufferSize    = 256 << 10
	defaultNATMaxEntries       = 65536
	defaultTCPLifetime         = 6 * time.Hour
	defaultNonTCPLifetime      = 60 * time.Second
	defaultSYNLifetime         = 60 * time.Second
	defaultCloseLifetime       = 10 * time.Second
	defaultAggregationInterval = 5 * time.Second
	defaultAggregationFlags    = monitor.TCPFlagSYN | monitor.TCPFlagFIN | monitor.TCPFlagRST
	// maxEndpointID: endpoint IDs are 16-bit.
	maxEndpointID = 1<<16 - 1
)

// withDefaults returns c with every zero field set to its default, or an
// error wrapping ErrInvalidConfig.
func (c Config) withDefaults(pageSize int) (Config, error) {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MaxEndpoints, defaultMaxEndpoints)
	def(&c.IPCacheMaxEntries, defaultIPCacheMaxEntries)
	def(&c.ConntrackMaxEntries, defaultConntrackMaxEntries)
	def(&c.FragmentsMaxEntries, defaultFragmentsMaxEntries)
	def(&c.PolicyMapMaxEntries, defaultPolicyMapMaxEntries)
	def(&c.EventsBufferSize, defaultEventsBufferSize)
	def(&c.NATMaxEntries, defaultNATMaxEntries)
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	defDur(&c.TCPLifetime, defaultTCPLifetime)
	defDur(&c.NonTCPLifetime, defaultNonTCPLifetime)
	defDur(&c.SYNLifetime, defaultSYNLifetime)
	defDur(&c.CloseLifetime, defaultCloseLifetime)

	for _, f := range []struct {
		name string
		v    int
		max  int
	}{
		{"MaxEndpoints", c.MaxEndpoints, maxEndpointID},
		{"IPCacheMaxEntries", c.IPCacheMaxEntries, 1 << 30},
		{"ConntrackMaxEntries", c.ConntrackMaxEntries, 1 << 30},
		{"FragmentsMaxEntries", c.FragmentsMaxEntries, 1 << 30},
		{"PolicyMapMaxEntries", c.PolicyMapMaxEntries, 1 << 30},
		{"NATMaxEntries", c.NATMaxEntries, 1 << 30},
	} {
		if f.v < 1 || f.v > f.max {
			return c, fmt.Errorf("%w: %s %d out of range [1, %d]", ErrInvalidConfig, f.name, f.v, f.max)
		}
	}
	if n := c.EventsBufferSize; n < pageSize || n&(n-1) != 0 || n > 1<<30 {
		return c, fmt.Errorf("%w: EventsBufferSize %d is not a power of two between the page size %d and 1 GiB",
			ErrInvalidConfig, n, pageSize)
	}
	for _, f := range []struct {
		name string
		v    time.Duration
	}{
		{"TCPLifetime", c.TCPLifetime}, {"NonTCPLifetime", c.NonTCPLifetime},
		{"SYNLifetime", c.SYNLifetime}, {"CloseLifetime", c.CloseLifetime},
	} {
		if f.v < time.Second || f.v%time.Second != 0 || f.v > 1<<31*time.Second {
			return c, fmt.Errorf("%w: %s %v is not a whole number of seconds in [1s, 2^31s]", ErrInvalidConfig, f.name, f.v)
		}
	}
	if c.MonitorAggregation == monitor.AggregationDefault {
		c.MonitorAggregation = monitor.AggregationMedium
	}
	if c.MonitorAggregation > monitor.AggregationMaximum {
		return c, fmt.Errorf("%w: unknown monitor aggregation level %d", ErrInvalidConfig, c.MonitorAggregation)
	}
	defDur(&c.MonitorAggregationInterval, defaultAggregationInterval)
	if v := c.MonitorAggregationInterval; v < time.Second || v%time.Second != 0 || v > 1<<31*time.Second {
		return c, fmt.Errorf("%w: MonitorAggregationInterval %v is not a whole number of seconds in [1s, 2^31s]", ErrInvalidConfig, v)
	}
	if c.MonitorAggregationFlags == 0 {
		c.MonitorAggregationFlags = defaultAggregationFlags
	}
	if c.Attach > AttachTC {
		return c, fmt.Errorf("%w: unknown attach mode %d", ErrInvalidConfig, c.Attach)
	}
	return c, nil
}

// EndpointConfig describes an endpoint to add with [Datapath.AddEndpoint].
type EndpointConfig struct {
	// ID names the endpoint; required, unique on the node.
	ID EndpointID
	// Identity is the endpoint's security identity; required (not
	// identity.Unknown, which policy keys use to mean any peer).
	Identity identity.ID
	// IPv4 and IPv6 are the endpoint's addresses; at least one is
	// required. They are the only source addresses it may send from.
	IPv4, IPv6 netip.Addr
	// MAC of the endpoint's interface. Default: 0a:58 followed by the IPv4
	// address (the Kubernetes convention), or 0a:58:00:00 and the ID
	// without IPv4.
	MAC net.HardwareAddr

	// NetNS is the path of the endpoint's network namespace, such as
	// /proc/PID/ns/net, /var/run/netns/NAME or a CNI plugin's CNI_NETNS.
	// AddEndpoint creates a veth pair, moves one end into this namespace and
	// configures it. Required unless Detached.
	NetNS string
	// IfName is the interface name inside NetNS (default "eth0").
	IfName string
	// HostIfName is the name of the host-side interface in the node
	// namespace (default "np" followed by the ID).
	HostIfName string
	// MTU of both ends of the veth pair (default: the kernel's, 1500).
	MTU int

	// Detached adds the endpoint's map entries and programs without any
	// interface: nothing is created or attached, and the endpoint's traffic
	// can only be simulated with [Endpoint.TestRun]. NetNS must be empty.
	// Packets the datapath redirects to a detached endpoint have nowhere
	// to go (ifindex 0).
	Detached bool
}

const (
	defaultIfName  = "eth0"
	maxIfNameLen   = 15 // IFNAMSIZ - 1
	gatewayMACSize = 6
)

func (c EndpointConfig) withDefaults() (EndpointConfig, error) {
	bad := func(format string, args ...any) (EndpointConfig, error) {
		return c, fmt.Errorf("%w: endpoint %d: %s", ErrInvalidConfig, c.ID, fmt.Sprintf(format, args...))
	}
	if c.ID == 0 {
		return bad("ID 0 is reserved")
	}
	if err := checkEndpointIdentity(c.Identity); err != nil {
		return bad("%v", err)
	}
	if !c.IPv4.IsValid() && !c.IPv6.IsValid() {
		return bad("no address")
	}
	if c.IPv4.IsValid() && (!c.IPv4.Is4() || !endpointUnicast(c.IPv4) ||
		c.IPv4.As4()[0] == 0 || c.IPv4 == netip.AddrFrom4([4]byte{255, 255, 255, 255})) {
		return bad("IPv4 %v is not a unicast IPv4 address an endpoint can own (not loopback, link-local, broadcast, multicast or 0.0.0.0/8)", c.IPv4)
	}
	if c.IPv6.IsValid() && (!c.IPv6.Is6() || c.IPv6.Is4In6() || c.IPv6.Zone() != "" || !endpointUnicast(c.IPv6)) {
		return bad("IPv6 %v is not a global or unique-local unicast IPv6 address", c.IPv6)
	}
	if c.MAC == nil {
		c.MAC = defaultMAC(c)
	}
	if len(c.MAC) != gatewayMACSize || c.MAC[0]&1 != 0 {
		return bad("MAC %v is not a unicast Ethernet address", c.MAC)
	}
	if c.Detached {
		if c.NetNS != "" {
			return bad("NetNS %q given for a detached endpoint", c.NetNS)
		}
		return c, nil
	}
	if c.NetNS == "" {
		return bad("NetNS required (or Detached)")
	}
	if c.IfName == "" {
		c.IfName = defaultIfName
	}
	if c.HostIfName == "" {
		c.HostIfName = fmt.Sprintf("np%d", c.ID)
	}
	for _, n := range []string{c.IfName, c.HostIfName} {
		if len(n) > maxIfNameLen || !validIfName(n) {
			return bad("interface name %q is not valid", n)
		}
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return bad("MTU %d out of range [68, 65535]", c.MTU)
	}
	return c, nil
}

// endpointUnicast reports whether a is an address a pod can own: not
// unspecified, loopback, multicast or link-local.
func endpointUnicast(a netip.Addr) bool {
	return !a.IsUnspecified() && !a.IsLoopback() && !a.IsMulticast() &&
		!a.IsLinkLocalUnicast() && !a.IsLinkLocalMulticast() && !a.IsInterfaceLocalMulticast()
}

// checkEndpointIdentity accepts the identities an endpoint can have: a
// cluster-scoped one, or reserved:health or reserved:init as Cilium gives
// its health endpoint and endpoints whose labels are not known yet. The
// other reserved identities name peers (world, remote nodes) or the host,
// and local-scope ones name CIDRs, never an endpoint.
func checkEndpointIdentity(id identity.ID) error {
	switch {
	case id == identity.Unknown:
		return errors.New("identity 0 means any peer and cannot name an endpoint")
	case id == identity.ReservedHealth, id == identity.ReservedInit, id.IsCluster():
		return nil
	case id.IsReserved():
		return fmt.Errorf("reserved identity %v cannot name an endpoint (only health and init can)", id)
	case id.IsLocal():
		return fmt.Errorf("local-scope identity %v names a CIDR, not an endpoint", id)
	}
	if err := id.Validate(); err != nil {
		return err
	}
	return fmt.Errorf("identity %v cannot name an endpoint", id)
}

func validIfName(n string) bool {
	if n == "" || n == "." || n == ".." {
		return false
	}
	for _, r := range n {
		if r <= ' ' || r == '/' || r == ':' || r > '~' {
			return false
		}
	}
	return true
}

func defaultMAC(c EndpointConfig) net.HardwareAddr {
	if c.IPv4.IsValid() {
		a := c.IPv4.As4()
		return net.HardwareAddr{0x0a, 0x58, a[0], a[1], a[2], a[3]}
	}
	return net.HardwareAddr{0x0a, 0x58, 0, 0, byte(c.ID >> 8), byte(c.ID)}
}
