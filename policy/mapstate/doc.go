// Package mapstate is the compiled form of an endpoint's policy: the keys
// and entries of its policy map, the difference between two map contents,
// and [Lookup], the Go model of the decision the datapath takes on them.
//
// It is the seam between the policy compiler and the kernel: package policy
// produces a [State] and [Delta]s, package datapath writes them to the
// endpoint's BPF policy map. Neither imports the other; both import this
// package, which holds no BPF or netlink code, so that tools that only parse,
// compile or trace policies link no kernel code. Cilium keeps the same
// split (pkg/policy's MapState, pkg/maps/policymap).
//
// Values are plain comparable structs; a [State] is an ordinary map and is
// not safe for concurrent mutation.
package mapstate
