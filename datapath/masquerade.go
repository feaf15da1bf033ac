package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/internal/nat"
)

// natConfig mirrors struct np_nat_config (bpf/nat.h).
type natConfig struct {
	Address  [4]byte  `btf:"address"`
	Flags    uint32   `btf:"flags"`
	Address6 [16]byte `btf:"address6"`
}

// natExcludeKey mirrors struct np_nat_exclude_key: PrefixLen counts the
// 32 bits of Family and pad before the address.
type natExcludeKey struct {
	PrefixLen uint32   `btf:"prefixlen"`
	Family    uint8    `btf:"family"`
	_         [3]byte  `btf:"pad"`
	Addr      [16]byte `btf:"addr"`
}

// The NAT table's key and entry (internal/bpf/include/np_nat.h).
type (
	natKey   = nat.Key
	natEntry = nat.Entry
)

// DefaultMasqueradeGCInterval is how often a Masquerade collects expired
// NAT entries when MasqueradeConfig.GCInterval is zero.
const DefaultMasqueradeGCInterval = 10 * time.Second

// MasqueradeConfig configures [Datapath.AttachMasquerade].
type MasqueradeConfig struct {
	// Ifindex is the node's external interface in the node namespace.
	Ifindex int
	// Address is the node's IPv4 address on it, Address6 its IPv6
	// address: what the outside sees as the source of the endpoints'
	// connections of that family. At least one; a family without an
	// address is not masqueraded.
	Address, Address6 netip.Addr
	// Exclude lists the destinations (IPv4 and IPv6) that keep the
	// endpoints' addresses: the cluster's native CIDR (pod CIDRs of all
	// nodes), as Cilium's ipv4-native-routing-cidr and
	// ipv6-native-routing-cidr.
	Exclude []netip.Prefix
	// PortMin and PortMax bound the node ports (ICMP echo identifiers)
	// of translated flows, inclusive. Both zero: 61000–65535, above
	// Linux's default ephemeral range, so the node's own connections
	// never take one. The NAT table is the node's (see
	// [Datapath.NATMap]): give lb's NorthSouth the same range.
	PortMin, PortMax uint16
	// GCInterval is how often expired NAT entries are removed (flows
	// idle for longer than the Config's conntrack lifetimes: TCP,
	// NonTCP, Close after FIN or RST). Zero means
	// DefaultMasqueradeGCInterval; negative means never (call
	// [Masquerade.GC] yourself).
	GCInterval time.Duration
}

// Masquerade is BPF masquerading on a node's external interface: TCP,
// UDP and ICMP echo, IPv4 and IPv6, from local endpoints to destinations
// outside the excluded prefixes leave with the node's address and a port
// (echo identifier) from the node's NAT table, and replies are translated
// back before the stack routes them to the endpoint. An endpoint's
// answers to connections it accepted (conntrack says so) keep its address,
// as with Cilium's SNAT: a client outside the cluster that reached the pod
// directly, or through a NodePort to a local backend, hears back from the
// address it used. Two flows never
// share a port, also with lb's SNAT flows in the same table: a port is
// taken by creating its reverse entry only if it does not exist. A new
// flow tries 32 ports; if all are taken, or the table is full, its packet
// is dropped and counted under DROP_NAT_NO_MAPPING ([Masquerade.Drops]).
// ICMP errors about a translated flow (unreachable, packet too big, time
// exceeded, parameter problem) reach the endpoint with the quoted packet
// translated back. IPv4 fragments and IPv6 extension headers are not
// translated. Without pinning it belongs to the process; in pinned mode
// it is pinned and adopted as an [Overlay] is: [Datapath.Close] leaves it
// working, the next AttachMasquerade on the interface swaps its programs
// in place. Close detaches it.
type Masquerade struct {
	d     *Datapath
	mu    sync.Mutex
	progs *nodePrograms
	drops *ebpf.Map
	table *nat.Table
	gc    *nat.Collector
}

// masqueradePinDir holds the external interface's pinned links under
// BPFFSDir.
const masqueradePinDir = "masquerade"

var natHooks = [2]endpointHook{
	{pin: "nat_egress", filter: datapathProgNpNatEgress, egress: true},
	{pin: "nat_ingress", filter: datapathProgNpNatIngress},
}

// setExclusions makes the exclusion LPM (pinned, so it may hold an
// earlier Masquerade's prefixes) hold exactly want. A pinned egress
// program can still be running, adopted from the earlier one: only the
// prefixes no longer wanted are deleted, and the wanted ones are written
// over in place, so that program never finds a wanted prefix missing and
// masquerades traffic to the cluster meanwhile. Deleting first keeps the
// map within its size.
func setExclusions(m *ebpf.Map, want []netip.Prefix) error {
	keys := make(map[natExcludeKey]netip.Prefix, len(want))
	for _, p := range want {
		keys[exclusionKey(p)] = p
	}
	var (
		k     natExcludeKey
		stale []natExcludeKey
	)
	it := m.Iterate()
	for it.Next(&k, new(uint8)) {
		if _, ok := keys[k]; !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read exclusions: %w", err)
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete a stale exclusion: %w", err)
		}
	}
	for k, p := range keys {
		if err := m.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("exclude %v: %w", p, err)
		}
	}
	return nil
}

// exclusionKey is the exclusion LPM's key for p: its family, then its
// address, so the prefix length counts the 32-bit family word too.
func exclusionKey(p netip.Prefix) natExcludeKey {
	p = p.Masked()
	addr, family := nat.AddrBytes(p.Addr())
	return natExcludeKey{PrefixLen: 32 + uint32(p.Bits()), Family: family, Addr: addr}
}

func (cfg MasqueradeConfig) validate() (min, max uint16, err error) {
	if cfg.Ifindex <= 0 {
		return 0, 0, fmt.Errorf("attach masquerade: ifindex %d: %w: need an interface", cfg.Ifindex, ErrInvalidConfig)
	}
	if !cfg.Address.IsValid() && !cfg.Address6.IsValid() {
		return 0, 0, fmt.Errorf("attach masquerade: %w: need an IPv4 or IPv6 address", ErrInvalidConfig)
	}
	if cfg.Address.IsValid() && (!cfg.Address.Is4() || cfg.Address.IsUnspecified()) {
		return 0, 0, fmt.Errorf("attach masquerade: address %v: %w: need an IPv4 address", cfg.Address, ErrInvalidConfig)
	}
	if cfg.Address6.IsValid() && (!cfg.Address6.Is6() || cfg.Address6.Is4In6() || cfg.Address6.IsUnspecified() || cfg.Address6.Zone() != "") {
		return 0, 0, fmt.Errorf("attach masquerade: address6 %v: %w: need an IPv6 address", cfg.Address6, ErrInvalidConfig)
	}
	for _, p := range cfg.Exclude {
		if !p.IsValid() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return 0, 0, fmt.Errorf("attach masquerade: exclude %v: %w: need IPv4 or IPv6 prefixes", p, ErrInvalidConfig)
		}
	}
	min, max, err = nat.Ports(cfg.PortMin, cfg.PortMax)
	if err != nil {
		return 0, 0, fmt.Errorf("attach masquerade: %w: %w", ErrInvalidConfig, err)
	}
	return min, max, nil
}

// AttachMasquerade loads the NAT programs, attaches them to the external
// interface (egress translates, ingress translates back), turns
// masquerading on and starts collecting expired entries. One at a time
// per Datapath: a second is refused (ErrInvalidConfig) until the first is
// closed.
func (d *Datapath) AttachMasquerade(cfg MasqueradeConfig) (_ *Masquerade, err error) {
	pmin, pmax, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	if err := d.claim(&d.masqOn, "masquerade"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.unclaim(&d.masqOn)
		}
	}()
	m := &Masquerade{
		d:     d,
		table: nat.New(d.maps.nat, nat.Lifetimes{TCP: d.cfg.TCPLifetime, NonTCP: d.cfg.NonTCPLifetime, Close: d.cfg.CloseLifetime}),
	}
	defer func() {
		if err != nil {
			m.release()
		}
	}()

	// Exclusions first, then the programs, then the switch.
	if err := setExclusions(d.maps.natExclude, cfg.Exclude); err != nil {
		return nil, fmt.Errorf("attach masquerade: %w", err)
	}
	load := nodeLoad{
		vars: map[string]any{datapathVarNpNatPortMin: pmin, datapathVarNpNatPortMax: pmax},
		maps: []string{datapathMapNpNatDrops},
	}
	if m.progs, err = d.attachNodePrograms(masqueradePinDir, cfg.Ifindex, natHooks[:], load); err != nil {
		return nil, fmt.Errorf("attach masquerade to ifindex %d: %w", cfg.Ifindex, err)
	}
	m.drops = m.progs.takeMap(datapathMapNpNatDrops)
	var c natConfig
	if cfg.Address.IsValid() {
		c.Address = cfg.Address.As4()
	}
	if cfg.Address6.IsValid() {
		c.Address6 = cfg.Address6.As16()
	}
	if err := d.maps.natConfig.Put(uint32(0), c); err != nil {
		return nil, fmt.Errorf("attach masquerade: write configuration: %w", err)
	}
	interval := cfg.GCInterval
	if interval == 0 {
		interval = DefaultMasqueradeGCInterval
	}
	if interval > 0 {
		m.gc = m.table.StartGC(interval)
	}
	d.mu.Lock()
	d.masq = m
	d.mu.Unlock()
	return m, nil
}

// stopGC stops the periodic collector, if any.
func (m *Masquerade) stopGC() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gc.Stop()
	m.gc = nil
}

// NATMap returns the node's NAT table, which masquerading translates
// into; hand it to lb.NorthSouthConfig.NATMap so that lb's SNAT flows
// take their ports from the same table. It stays the Datapath's: valid
// until [Datapath.Close].
func (d *Datapath) NATMap() *ebpf.Map { return d.maps.nat }

// Mappings returns the number of flows the NAT table translates now, lb's
// SNAT flows in a shared table included.
func (m *Masquerade) Mappings() (int, error) {
	s, err := m.table.Stats()
	return s.Flows, err
}

// GC deletes the translations of flows idle for longer than their
// lifetime (the Config's conntrack lifetimes), both directions, which
// frees their ports, and entries left without their other half. It
// returns how many flows it removed. A Masquerade runs it every
// MasqueradeConfig.GCInterval by itself.
func (m *Masquerade) GC() (int, error) {
	n, err := m.table.GC(nat.Now())
	if err != nil {
		return n, fmt.Errorf("masquerade: %w", err)
	}
	return n, nil
}

// Drops returns how many packets the NAT programs dropped, by reason
// (Cilium's numbers): DROP_NAT_NO_MAPPING for a new flow that found no
// free port or a full table.
func (m *Masquerade) Drops() (map[monitor.DropReason]uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.drops == nil {
		return nil, fmt.Errorf("masquerade drops: %w", nodeplane.ErrClosed)
	}
	out := map[monitor.DropReason]uint64{}
	var (
		k   uint32
		per []uint64
	)
	it := m.drops.Iterate()
	for it.Next(&k, &per) {
		var sum uint64
		for _, v := range per {
			sum += v
		}
		if sum != 0 {
			out[monitor.DropReason(k)] = sum
		}
	}
	return out, it.Err()
}

func (m *Masquerade) release() error {
	m.gc.Stop()
	m.gc = nil
	var errs []error
	if m.progs != nil {
		errs = append(errs, m.progs.detach())
		m.progs = nil
	}
	if m.drops != nil {
		errs = append(errs, m.drops.Close())
		m.drops = nil
	}
	return errors.Join(errs...)
}

// keep lets go of the handles and leaves masquerading working: for
// Datapath.Close in pinned mode.
func (m *Masquerade) keep() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.progs == nil {
		return nil
	}
	m.gc.Stop()
	m.gc = nil
	var errs []error
	if m.progs != nil {
		errs = append(errs, m.progs.release())
		m.progs = nil
	}
	if m.drops != nil {
		errs = append(errs, m.drops.Close())
		m.drops = nil
	}
	return errors.Join(errs...)
}

// Close stops the collector, turns masquerading off and detaches the
// programs. The NAT table keeps its entries (lb may share it). Closing
// twice, or after the Datapath, is not an error.
func (m *Masquerade) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.progs == nil {
		return nil
	}
	m.d.mu.Lock()
	if m.d.masq == m {
		m.d.masq = nil
	}
	closed := m.d.closed // the Datapath's maps are gone with it
	m.d.mu.Unlock()
	var err error
	if !closed {
		err = m.d.maps.natConfig.Put(uint32(0), natConfig{})
	}
	err = errors.Join(err, m.release())
	m.d.unclaim(&m.d.masqOn)
	return err
}

// egress and ingress are the loaded programs (natHooks' order), for
// BPF_PROG_TEST_RUN in tests.
func (m *Masquerade) egress() *ebpf.Program  { return m.progs.progs[0] }
func (m *Masquerade) ingress() *ebpf.Program { return m.progs.progs[1] }
