package ipcache_test

import (
	"fmt"
	"net/netip"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
)

func ExampleIPCache_Lookup() {
	c := ipcache.New()
	c.Upsert(netip.MustParsePrefix("0.0.0.0/0"), ipcache.Entry{Identity: identity.ReservedWorld})
	c.Upsert(netip.MustParsePrefix("10.0.0.0/8"), ipcache.Entry{Identity: 16777217})
	c.Upsert(netip.MustParsePrefix("10.1.2.3/32"), ipcache.Entry{
		Identity:       65792,
		TunnelEndpoint: netip.MustParseAddr("192.168.0.2"),
	})
	for _, a := range []string{"10.1.2.3", "10.9.9.9", "8.8.8.8", "2001:db8::1"} {
		prefix, e, ok := c.Lookup(netip.MustParseAddr(a))
		fmt.Println(a, prefix, e.Identity, e.TunnelEndpoint, ok)
	}
	// Output:
	// 10.1.2.3 10.1.2.3/32 65792 192.168.0.2 true
	// 10.9.9.9 10.0.0.0/8 16777217 invalid IP true
	// 8.8.8.8 0.0.0.0/0 2 invalid IP true
	// 2001:db8::1 invalid Prefix 0 invalid IP false
}
