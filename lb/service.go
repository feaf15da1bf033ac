package lb

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/nodeplane/nodeplane"
)

// ServiceType is the Kubernetes service type a frontend belongs to. At the
// socket layer, as in Cilium, every type is translated alike except
// ExternalIP, which is translated only when its address is one of the node's
// (LB.SetHostAddresses). The type is recorded in the service entry for the
// packet path. A NodePort frontend is one node address and port; Cilium's
// wildcard 0.0.0.0:port surrogate is not supported.
type ServiceType uint8

// Service types. The zero value is ClusterIP.
const (
	ClusterIP ServiceType = iota
	NodePort
	ExternalIP
	LoadBalancer
)

func (t ServiceType) String() string {
	switch t {
	case ClusterIP:
		return "ClusterIP"
	case NodePort:
		return "NodePort"
	case ExternalIP:
		return "ExternalIP"
	case LoadBalancer:
		return "LoadBalancer"
	}
	return fmt.Sprintf("ServiceType(%d)", uint8(t))
}

// Algorithm is how the packet path picks a backend for a new flow.
//
// The socket layer picks randomly for both, as Cilium does: Maglev hashes a
// flow's 5-tuple, which does not exist yet when connect() runs, and consistency
// across nodes only matters for packets that may arrive at any node. A Maglev
// service additionally gets its lookup table written for the packet path.
type Algorithm uint8

// Algorithms. The zero value is AlgorithmRandom.
const (
	AlgorithmRandom Algorithm = iota
	AlgorithmMaglev
)

func (a Algorithm) String() string {
	switch a {
	case AlgorithmRandom:
		return "random"
	case AlgorithmMaglev:
		return "maglev"
	}
	return fmt.Sprintf("Algorithm(%d)", uint8(a))
}

// BackendState says whether a backend may receive new connections. Only
// active backends do; the others stay known to the service, so that
// connections already made to them keep working, but are never selected.
type BackendState uint8

// Backend states, with Cilium's numeric values. The zero value is
// BackendActive.
const (
	// BackendActive receives new connections.
	BackendActive BackendState = iota
	// BackendTerminating is shutting down gracefully (a Kubernetes endpoint
	// that is terminating).
	BackendTerminating
	// BackendQuarantined failed health checks.
	BackendQuarantined
	// BackendMaintenance was taken out of rotation by an operator.
	BackendMaintenance
)

func (s BackendState) String() string {
	switch s {
	case BackendActive:
		return "active"
	case BackendTerminating:
		return "terminating"
	case BackendQuarantined:
		return "quarantined"
	case BackendMaintenance:
		return "maintenance"
	}
	return fmt.Sprintf("BackendState(%d)", uint8(s))
}

// ServiceID identifies a service frontend in the kernel maps: Cilium's
// reverse-NAT index. IDs are unique across IPv4 and IPv6 and never 0.
type ServiceID uint16

// BackendID identifies one backend of one service in the kernel maps. It is
// never 0.
type BackendID uint32

// Frontend is the address a service is reached at.
type Frontend struct {
	Addr     netip.AddrPort
	Protocol nodeplane.Protocol
}

func (f Frontend) String() string {
	return f.Addr.String() + "/" + f.Protocol.String()
}

// Service is a frontend and how it distributes connections.
type Service struct {
	Frontend  Frontend
	Type      ServiceType
	Algorithm Algorithm
	// SessionAffinity, when non-zero, pins each client to the backend it was
	// given until the client has not used the service for this long. At the
	// socket layer a client is a network namespace. Whole seconds, at most
	// MaxSessionAffinity.
	SessionAffinity time.Duration
	// ExternalTrafficLocal is Kubernetes' externalTrafficPolicy=Local for
	// [NorthSouth]: the service's backends are this node's own, and
	// packets from outside reach them with the client's address (no SNAT,
	// no DSR). The socket layer ignores it: its clients are on the node.
	ExternalTrafficLocal bool
	// InternalTrafficLocal is Kubernetes' internalTrafficPolicy=Local, for
	// traffic from inside the cluster, which is the socket layer's: only
	// backends marked Local (on this node) take new connections there,
	// and with none the service has no backend (connect and sendmsg fail
	// with EHOSTUNREACH), as Cilium's internal scope. [NorthSouth] balances
	// traffic from outside, which externalTrafficPolicy governs, and
	// ignores it.
	InternalTrafficLocal bool
}

// MaxSessionAffinity is the longest session affinity timeout: Cilium keeps
// it in 24 bits of seconds.
const MaxSessionAffinity = (1<<24 - 1) * time.Second

// Backend is one address a service forwards to.
type Backend struct {
	Addr netip.AddrPort
	// Weight is the backend's share in the service's Maglev table, relative
	// to the other backends; 0 means DefaultWeight. Random selection, as in
	// Cilium, ignores weights.
	Weight uint16
	State  BackendState
	// Local says the backend runs on this node (a Kubernetes endpoint
	// whose nodeName is this node's); it matters to services with
	// InternalTrafficLocal.
	Local bool
}

// DefaultWeight is the weight of a backend that does not set one, Cilium's
// default.
const DefaultWeight = 100

// MaxBackends is the largest number of backends a service may have. Active
// backends fill one bank of slots, whose size bounds them.
const MaxBackends = slotBank - 1

func (s Service) validate() error {
	fe := s.Frontend
	if err := validateAddr(fe.Addr); err != nil {
		return fmt.Errorf("%w: frontend %s: %w", ErrInvalidService, fe.Addr, err)
	}
	switch fe.Protocol {
	case nodeplane.ProtoTCP, nodeplane.ProtoUDP:
	default:
		return fmt.Errorf("%w: frontend %s: protocol %d is not TCP or UDP", ErrInvalidService, fe.Addr, uint8(fe.Protocol))
	}
	if s.Type > LoadBalancer {
		return fmt.Errorf("%w: %s: unknown %s", ErrInvalidService, fe, s.Type)
	}
	if s.Algorithm > AlgorithmMaglev {
		return fmt.Errorf("%w: %s: unknown %s", ErrInvalidService, fe, s.Algorithm)
	}
	if a := s.SessionAffinity; a != 0 {
		if a < 0 || a > MaxSessionAffinity || a%time.Second != 0 {
			return fmt.Errorf("%w: %s: session affinity %s is not a whole number of seconds in [1s, %s]",
				ErrInvalidService, fe, a, MaxSessionAffinity)
		}
	}
	return nil
}

func validateBackends(fe Frontend, backends []Backend) error {
	if len(backends) > MaxBackends {
		return fmt.Errorf("%w: %s: %d backends, at most %d", ErrInvalidBackend, fe, len(backends), MaxBackends)
	}
	seen := make(map[netip.AddrPort]struct{}, len(backends))
	for _, b := range backends {
		if err := validateAddr(b.Addr); err != nil {
			return fmt.Errorf("%w: %s: backend %s: %w", ErrInvalidBackend, fe, b.Addr, err)
		}
		if b.Addr.Addr().Is4() != fe.Addr.Addr().Is4() {
			return fmt.Errorf("%w: %s: backend %s is not in the frontend's address family", ErrInvalidBackend, fe, b.Addr)
		}
		if b.State > BackendMaintenance {
			return fmt.Errorf("%w: %s: backend %s: unknown %s", ErrInvalidBackend, fe, b.Addr, b.State)
		}
		if _, dup := seen[b.Addr]; dup {
			return fmt.Errorf("%w: %s: backend %s listed twice", ErrInvalidBackend, fe, b.Addr)
		}
		seen[b.Addr] = struct{}{}
	}
	return nil
}

// validateAddr accepts what the kernel maps can key on: a plain IPv4 or IPv6
// address and a non-zero port.
func validateAddr(ap netip.AddrPort) error {
	a := ap.Addr()
	switch {
	case !a.IsValid():
		return fmt.Errorf("no address")
	case a.Is4In6():
		return fmt.Errorf("IPv4-mapped IPv6 address; use the IPv4 form")
	case a.Zone() != "":
		return fmt.Errorf("address has a zone")
	case a.IsUnspecified():
		return fmt.Errorf("unspecified address")
	case ap.Port() == 0:
		return fmt.Errorf("port 0")
	}
	return nil
}

func (b Backend) weight() uint16 {
	if b.Weight == 0 {
		return DefaultWeight
	}
	return b.Weight
}
