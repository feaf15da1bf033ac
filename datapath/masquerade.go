package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
)

// natConfig mirrors struct np_nat_config (bpf/nat.h).
type natConfig struct {
	Address [4]byte `btf:"address"`
	Flags   uint32  `btf:"flags"`
}

// natExcludeKey mirrors struct np_nat_exclude_key.
type natExcludeKey struct {
	PrefixLen uint32  `btf:"prefixlen"`
	Addr      [4]byte `btf:"addr"`
}

// natKey mirrors struct np_nat_key: one direction of a translated flow,
// addresses and ports in network byte order.
type natKey struct {
	SrcAddr [4]byte `btf:"saddr"`
	DstAddr [4]byte `btf:"daddr"`
	SrcPort [2]byte `btf:"sport"`
	DstPort [2]byte `btf:"dport"`
	Proto   uint8   `btf:"proto"`
	Dir     uint8   `btf:"dir"`
	_       [2]byte `btf:"pad"`
}

// natEntry mirrors struct np_nat_entry.
type natEntry struct {
	Addr    [4]byte `btf:"addr"`
	Port    [2]byte `btf:"port"`
	_       [2]byte `btf:"pad"`
	Created uint64  `btf:"created"`
}

// NAT port range and directions (bpf/nat.h).
const (
	natPortMin = 61000
	natPortMax = 65535
	natEgress  = 0
	natIngress = 1
)

// MasqueradeConfig configures [Datapath.AttachMasquerade].
type MasqueradeConfig struct {
	// Ifindex is the node's external interface in the node namespace.
	Ifindex int
	// Address is the node's IPv4 address on it: what the outside sees as
	// the source of the endpoints' connections.
	Address netip.Addr
	// Exclude lists the IPv4 destinations that keep the endpoints'
	// addresses: the cluster's native CIDR (pod CIDRs of all nodes), as
	// Cilium's ipv4-native-routing-cidr.
	Exclude []netip.Prefix
}

// Masquerade is BPF masquerading on a node's external interface: IPv4 TCP
// and UDP from local endpoints to destinations outside the excluded
// prefixes leave with the node's address and a port from the NAT table
// (61000–65535, outside Linux's default ephemeral range, so the node's own
// connections never take one), and replies are translated back before
// the stack routes them to the endpoint. Two flows never share a port: a
// port is taken by creating its reverse entry only if it does not exist.
// ICMP, IPv6 and fragments are not translated. Without pinning it belongs
// to the process; in pinned mode it is pinned and adopted as an [Overlay]
// is: [Datapath.Close] leaves it working, the next AttachMasquerade on the
// interface swaps its programs in place. Close detaches it.
type Masquerade struct {
	d     *Datapath
	mu    sync.Mutex
	progs *nodePrograms
}

// masqueradePinDir holds the external interface's pinned links under
// BPFFSDir.
const masqueradePinDir = "masquerade"

var natHooks = [2]endpointHook{
	{pin: "nat_egress", filter: datapathProgNpNatEgress, egress: true},
	{pin: "nat_ingress", filter: datapathProgNpNatIngress},
}

// AttachMasquerade loads the NAT programs, attaches them to the external
// interface (egress translates, ingress translates back) and turns
// masquerading on. One at a time per Datapath: a second is refused
// (ErrInvalidConfig) until the first is closed.
func (d *Datapath) AttachMasquerade(cfg MasqueradeConfig) (_ *Masquerade, err error) {
	if cfg.Ifindex <= 0 || !cfg.Address.Is4() {
		return nil, fmt.Errorf("attach masquerade: ifindex %d, address %v: %w: need an interface and an IPv4 address", cfg.Ifindex, cfg.Address, ErrInvalidConfig)
	}
	for _, p := range cfg.Exclude {
		if !p.IsValid() || !p.Addr().Is4() {
			return nil, fmt.Errorf("attach masquerade: exclude %v: %w: need IPv4 prefixes", p, ErrInvalidConfig)
		}
	}
	if err := d.claim(&d.masqOn, "masquerade"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.unclaim(&d.masqOn)
		}
	}()
	m := &Masquerade{d: d}
	defer func() {
		if err != nil {
			m.release()
		}
	}()

	// Exclusions first, then the programs, then the switch.
	var k natExcludeKey
	for it := d.maps.natExclude.Iterate(); it.Next(&k, new(uint8)); {
		_ = d.maps.natExclude.Delete(k)
	}
	for _, p := range cfg.Exclude {
		p = p.Masked()
		if err := d.maps.natExclude.Put(natExcludeKey{PrefixLen: uint32(p.Bits()), Addr: p.Addr().As4()}, uint8(1)); err != nil {
			return nil, fmt.Errorf("attach masquerade: exclude %v: %w", p, err)
		}
	}
	if m.progs, err = d.attachNodePrograms(masqueradePinDir, cfg.Ifindex, natHooks[:]); err != nil {
		return nil, fmt.Errorf("attach masquerade to ifindex %d: %w", cfg.Ifindex, err)
	}
	if err := d.maps.natConfig.Put(uint32(0), natConfig{Address: cfg.Address.As4()}); err != nil {
		return nil, fmt.Errorf("attach masquerade: write configuration: %w", err)
	}
	d.mu.Lock()
	d.masq = m
	d.mu.Unlock()
	return m, nil
}

// Mappings returns the number of flows the NAT table translates now.
func (m *Masquerade) Mappings() (int, error) {
	var (
		k natKey
		v natEntry
		n int
	)
	it := m.d.maps.nat.Iterate()
	for it.Next(&k, &v) {
		if k.Dir == natEgress {
			n++
		}
	}
	return n, it.Err()
}

// GC deletes the translations of flows conntrack no longer knows (closed
// and expired: run it after [Conntrack.GC]), both directions, which frees
// their ports, and reverse entries whose flow entry is gone (evicted from
// the LRU table). It returns how many flows it removed.
func (m *Masquerade) GC() (int, error) {
	var (
		k        natKey
		v        natEntry
		stale    []natKey
		orphaned []natKey
	)
	nat := m.d.maps.nat
	// The programs create a flow's reverse entry just before its flow
	// entry: a reverse entry younger than a second may be one of those.
	young := uint64(MonotonicNow() - time.Second)
	it := nat.Iterate()
	for it.Next(&k, &v) {
		if k.Dir != natEgress {
			if v.Created > young {
				continue
			}
			var fwd natEntry
			err := nat.Lookup(natKey{SrcAddr: v.Addr, DstAddr: k.SrcAddr, SrcPort: v.Port, DstPort: k.SrcPort, Proto: k.Proto, Dir: natEgress}, &fwd)
			if errors.Is(err, ebpf.ErrKeyNotExist) || err == nil && (fwd.Addr != k.DstAddr || fwd.Port != k.DstPort) {
				orphaned = append(orphaned, k)
			}
			continue
		}
		t := Tuple{
			Src: netip.AddrFrom4(k.SrcAddr), Dst: netip.AddrFrom4(k.DstAddr),
			SrcPort: be16(k.SrcPort).host(), DstPort: be16(k.DstPort).host(), Proto: nodeplane.Protocol(k.Proto),
		}
		_, ok, err := m.d.conntrack.Lookup(t)
		if err != nil {
			return 0, fmt.Errorf("masquerade gc: %w", err)
		}
		if !ok {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("masquerade gc: %w", err)
	}
	n := 0
	for _, k := range stale {
		if err := nat.Lookup(k, &v); err != nil {
			continue
		}
		back := natKey{SrcAddr: k.DstAddr, DstAddr: v.Addr, SrcPort: k.DstPort, DstPort: v.Port, Proto: k.Proto, Dir: natIngress}
		for _, del := range []natKey{k, back} {
			if err := nat.Delete(del); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return n, fmt.Errorf("masquerade gc: %w", err)
			}
		}
		n++
	}
	for _, k := range orphaned {
		if err := nat.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("masquerade gc: %w", err)
		}
	}
	return n, nil
}

func (m *Masquerade) release() error {
	if m.progs == nil {
		return nil
	}
	err := m.progs.detach()
	m.progs = nil
	return err
}

// keep lets go of the handles and leaves masquerading working: for
// Datapath.Close in pinned mode.
func (m *Masquerade) keep() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.progs == nil {
		return nil
	}
	err := m.progs.release()
	m.progs = nil
	return err
}

// Close turns masquerading off and detaches the programs. Closing twice
// is not an error.
func (m *Masquerade) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.progs == nil {
		return nil
	}
	err := m.d.maps.natConfig.Put(uint32(0), natConfig{})
	err = errors.Join(err, m.release())
	m.d.mu.Lock()
	if m.d.masq == m {
		m.d.masq = nil
	}
	m.d.mu.Unlock()
	m.d.unclaim(&m.d.masqOn)
	return err
}
