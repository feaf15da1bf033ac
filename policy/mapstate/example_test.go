package mapstate_test

import (
	"fmt"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// Lookup is the Go model of the kernel's decision: here a port range
// allowed for one peer, and an explicit deny for everyone that takes
// precedence.
func ExampleLookup() {
	const web identity.ID = 1<<16 | 1000 // cluster 1, index 1000
	entries := mapstate.State{
		// 8080-8083 from web: a /14 port prefix.
		{Identity: web, Direction: mapstate.Ingress, Protocol: nodeplane.ProtoTCP, Port: 8080, PortPrefixLen: 14}: {},
		// Nobody may reach 8082.
		{Direction: mapstate.Ingress, Protocol: nodeplane.ProtoTCP, Port: 8082, PortPrefixLen: 16}: {Deny: true},
	}
	for _, port := range []uint16{8080, 8082, 8084} {
		d := mapstate.Lookup(entries, web, mapstate.Ingress, nodeplane.ProtoTCP, port)
		if d.Allowed {
			fmt.Printf("%d: allowed by %v\n", port, d.Key)
		} else {
			fmt.Printf("%d: %v\n", port, d.Reason)
		}
	}
	// Output:
	// 8080: allowed by {ingress identity 66536 8080-8083/proto 6}
	// 8082: POLICY_DENY
	// 8084: POLICY_DENIED
}

// PortRangePrefixes shows how a range becomes LPM keys.
func ExamplePortRangePrefixes() {
	for _, p := range mapstate.PortRangePrefixes(8000, 8100) {
		fmt.Println(p)
	}
	// Output:
	// 8000-8063
	// 8064-8095
	// 8096-8099
	// 8100
}
