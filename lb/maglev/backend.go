package maglev

import (
	"fmt"
	"net/netip"
	"strconv"

	"github.com/nodeplane/nodeplane"
)

// Backend is one entry of a service's backend pool as Maglev sees it.
type Backend struct {
	// Key identifies the backend independently of the node computing the
	// table. It is hashed to place the backend in the table and sorted to
	// make the table independent of the order of the pool, so every node
	// must use the same Key for the same backend. [BackendKey] gives the key
	// Cilium uses; with it the tables equal Cilium's.
	Key string

	// ID is the value the table holds for this backend, typically the
	// datapath's backend ID, or the backend's index in a slice. Any value
	// except [InvalidID] is allowed; IDs need not be unique.
	ID uint32

	// Weight scales the backend's share of the table. Weights take effect
	// only when the average weight of the pool is at least 2 (with integer
	// division), exactly as in Cilium: a pool whose weights are all 0 or 1
	// is balanced evenly. A weighted pool gives a backend of weight 0 exactly
	// one entry, so remove a backend from the pool to drain it.
	Weight uint16
}

// InvalidID is the one backend ID a table cannot hold: Cilium marks empty
// table entries with it while filling.
const InvalidID = ^uint32(0)

// keyProtocol returns the name Cilium's backend keys give a protocol
// (pkg/loadbalancer L4Type), and whether they can name it at all. It is
// spelled out here rather than taken from [nodeplane.Protocol.String]
// because the tables must stay byte-identical to Cilium's whatever other
// packages call a protocol.
func keyProtocol(p nodeplane.Protocol) (string, bool) {
	switch p {
	case nodeplane.ProtoAny:
		return "ANY", true
	case nodeplane.ProtoTCP:
		return "TCP", true
	case nodeplane.ProtoUDP:
		return "UDP", true
	case nodeplane.ProtoSCTP:
		return "SCTP", true
	}
	return "", false
}

// BackendKey returns the key Cilium's Maglev hashes and sorts for a backend
// at addr speaking proto, e.g. "[10.0.0.1:8080/TCP,State:active]" or
// "[[fd00::1]:53/UDP,State:active]". Cilium froze this format so that nodes
// running different versions build the same tables; it names the state
// "active" whatever the backend's state is.
//
// The address is formatted with [netip.Addr.String], so an IPv4-mapped IPv6
// address stays IPv6 ("[::ffff:10.0.0.1]") as in Cilium. Backends of a
// remote cluster in a Cilium cluster mesh carry "@<cluster ID>" after the
// address; build such keys yourself if you need them.
//
// It fails with [ErrInvalidAddress] for an invalid or zoned address and with
// [ErrUnsupportedProtocol] for a protocol other than TCP, UDP, SCTP or
// [nodeplane.ProtoAny] (a protocol-agnostic service; Cilium spells it "ANY").
func BackendKey(addr netip.AddrPort, proto nodeplane.Protocol) (string, error) {
	b, err := AppendBackendKey(make([]byte, 0, 64), addr, proto)
	return string(b), err
}

// AppendBackendKey appends [BackendKey] of addr and proto to dst, for
// callers that build many keys into one buffer. On error dst is returned
// unchanged.
func AppendBackendKey(dst []byte, addr netip.AddrPort, proto nodeplane.Protocol) ([]byte, error) {
	ip := addr.Addr()
	if !ip.IsValid() || ip.Zone() != "" {
		return dst, fmt.Errorf("%w: %q", ErrInvalidAddress, ip.String())
	}
	name, ok := keyProtocol(proto)
	if !ok {
		return dst, fmt.Errorf("%w: %d", ErrUnsupportedProtocol, uint8(proto))
	}

	dst = append(dst, '[')
	if ip.Is6() {
		dst = append(dst, '[')
		dst = ip.AppendTo(dst)
		dst = append(dst, ']')
	} else {
		dst = ip.AppendTo(dst)
	}
	dst = append(dst, ':')
	dst = strconv.AppendUint(dst, uint64(addr.Port()), 10)
	dst = append(dst, '/')
	dst = append(dst, name...)
	return append(dst, ",State:active]"...), nil
}
