package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/nodeplane/nodeplane/identity"
)

// Sentinel errors.
var (
	// ErrPortsExhausted: every port of a Ports range is taken.
	ErrPortsExhausted = errors.New("proxy: no free proxy port")
	// ErrPortInUse: a port asked for by Reserve is already taken.
	ErrPortInUse = errors.New("proxy: proxy port in use")
	// ErrNoOriginalDestination: a socket did not say where its traffic
	// was sent (a datagram without IP_ORIGDSTADDR, a connection that was
	// not redirected).
	ErrNoOriginalDestination = errors.New("proxy: no original destination")
)

// Marks the datapath and the node's routing agree on (datapath/bpf/proxy.h,
// Cilium's MARK_MAGIC_*). The magic lives in bits 8-11.
const (
	// MarkToProxy is what the datapath stamps on packets it redirects to
	// a proxy; the node's routing delivers them locally (see [Routing]).
	MarkToProxy uint32 = 0x0200
	// MarkMask selects the magic.
	MarkMask uint32 = 0x0F00

	markFromProxyIngress uint32 = 0x0A00
	markFromProxyEgress  uint32 = 0x0B00
)

// Cilium's routing for proxy redirection (pkg/datapath/linux/route):
// table 2004 (RouteTableToProxy) holds the local default routes, selected
// by the rule of priority 9 (RulePriorityToProxyIngress) for MarkToProxy.
const (
	RouteTable   = 2004
	RulePriority = 9
)

// maxMarkIdentity is the largest identity a mark carries: 24 bits.
const maxMarkIdentity = 1<<24 - 1

// UpstreamMark returns the socket mark (SO_MARK) of a proxy's upstream
// connection on behalf of a source with identity src, in Cilium's
// encoding: the identity's low 16 bits in bits 16-31, bits 16-23 in bits
// 0-7. ingressEnforced says that the proxy enforced the destination
// endpoint's ingress policy (the connection was redirected for a local
// destination, whose ingress policy the datapath decided then): the
// destination's program does not decide it again. Otherwise it does, with
// src as the source identity, as it would for the client itself; this is
// how a proxy never bypasses the destination's policy. The destination
// sees the proxy's connection come from the node's address, with src's
// identity.
func UpstreamMark(src identity.ID, ingressEnforced bool) (uint32, error) {
	if src == 0 || uint64(src) > maxMarkIdentity {
		return 0, fmt.Errorf("proxy: identity %d does not fit a mark (1 to %d)", src, maxMarkIdentity)
	}
	magic := markFromProxyEgress
	if ingressEnforced {
		magic = markFromProxyIngress
	}
	id := uint32(src)
	return (id&0xFFFF)<<16 | magic | (id>>16)&0xFF, nil
}

// Redirected is a connection (or a UDP flow) the datapath sent to a proxy,
// as the proxy sees it.
type Redirected struct {
	// Source is the endpoint's address and port.
	Source netip.AddrPort
	// Destination is where the endpoint sent it: the original destination.
	Destination netip.AddrPort
}

// OriginalDestination returns the original destination of a connection
// accepted by a [ListenTCP] listener: the accepted socket's own address
// (getsockname), which the datapath's redirection leaves untouched.
func OriginalDestination(c net.Conn) (netip.AddrPort, error) {
	a, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("%w: %T is not TCP", ErrNoOriginalDestination, c.LocalAddr())
	}
	ap := a.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// RedirectedConn returns both ends of an accepted connection.
func RedirectedConn(c net.Conn) (Redirected, error) {
	dst, err := OriginalDestination(c)
	if err != nil {
		return Redirected{}, err
	}
	r, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return Redirected{}, fmt.Errorf("%w: remote %T", ErrNoOriginalDestination, c.RemoteAddr())
	}
	rp := r.AddrPort()
	return Redirected{Source: netip.AddrPortFrom(rp.Addr().Unmap(), rp.Port()), Destination: dst}, nil
}

// Ports hands out proxy ports from a range. It is safe for concurrent use.
type Ports struct {
	min, max uint16
	mu       sync.Mutex
	used     map[uint16]bool
	next     uint16
}

// PortsConfig configures [NewPorts].
type PortsConfig struct {
	// Min and Max bound the range, inclusive (default 10000 and 20000,
	// Cilium's proxy port range).
	Min, Max uint16
}

// NewPorts returns an allocator of the range.
func NewPorts(cfg PortsConfig) (*Ports, error) {
	if cfg.Min == 0 && cfg.Max == 0 {
		cfg.Min, cfg.Max = 10000, 20000
	}
	if cfg.Min == 0 || cfg.Max < cfg.Min {
		return nil, fmt.Errorf("proxy: port range %d-%d is empty or starts at 0", cfg.Min, cfg.Max)
	}
	return &Ports{min: cfg.Min, max: cfg.Max, used: map[uint16]bool{}, next: cfg.Min}, nil
}

// Allocate returns a free port of the range, round robin, so that a port
// just released is not handed out again at once.
func (p *Ports) Allocate() (uint16, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := int(p.max) - int(p.min) + 1
	for range n {
		port := p.next
		if p.next == p.max {
			p.next = p.min
		} else {
			p.next++
		}
		if !p.used[port] {
			p.used[port] = true
			return port, nil
		}
	}
	return 0, ErrPortsExhausted
}

// Reserve takes a given port (in or out of the range).
func (p *Ports) Reserve(port uint16) error {
	if port == 0 {
		return errors.New("proxy: port 0")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.used[port] {
		return fmt.Errorf("%w: %d", ErrPortInUse, port)
	}
	p.used[port] = true
	return nil
}

// Release returns a port; releasing a free port does nothing.
func (p *Ports) Release(port uint16) {
	p.mu.Lock()
	delete(p.used, port)
	p.mu.Unlock()
}

// Config says where the proxy works.
type Config struct {
	// NodeNetNS is the path of the node's network namespace: where the
	// datapath's host-side interfaces are, so where proxy sockets must be
	// (bpf_sk_assign assigns only sockets of the packet's namespace) and
	// where upstream connections start. Empty: the caller's namespace.
	NodeNetNS string
}
