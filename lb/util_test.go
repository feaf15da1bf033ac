package lb

import "net/netip"

func fe(s string, p Protocol) Frontend {
	return Frontend{Addr: netip.MustParseAddrPort(s), Protocol: p}
}
