package lb

import (
	"fmt"
	"net/netip"
)

// hostAddrs is the set of the node's own addresses, unmapped and without
// zone.
type hostAddrs map[netip.Addr]struct{}

func newHostAddrs(addrs []netip.Addr) (hostAddrs, error) {
	set := make(hostAddrs, len(addrs))
	for _, a := range addrs {
		if !a.IsValid() {
			return nil, fmt.Errorf("%w: invalid host address", ErrInvalidService)
		}
		set[a.Unmap().WithZone("")] = struct{}{}
	}
	if len(set) > maxHostAddrs {
		return nil, fmt.Errorf("%w: %d host addresses, at most %d", ErrFull, len(set), maxHostAddrs)
	}
	return set, nil
}

func (h hostAddrs) has(a netip.Addr) bool {
	_, ok := h[a.Unmap()]
	return ok
}

func hostAddrKey(a netip.Addr) lbHostAddr {
	return lbHostAddr{Address: netip.AddrFrom16(a.As16()).As16()}
}
