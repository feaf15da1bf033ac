// Package nodeplane is a Go SDK for building a node dataplane on eBPF: the
// building blocks of a Cilium-class CNI, node agent or load balancer, as
// independent packages that each do one thing in the kernel and can be
// composed as the caller sees fit. There is no agent to run.
//
// The packages and how they compose:
//
//   - [github.com/nodeplane/nodeplane/identity] turns label sets into numeric
//     security identities (in-process or cluster-wide through etcd) and keeps
//     the ipcache, the map from address prefix to identity.
//   - [github.com/nodeplane/nodeplane/policy] parses Cilium and Kubernetes
//     network policies, resolves their selectors against identities and
//     compiles them, incrementally, into per-endpoint policy-map entries;
//     it also traces why a packet is allowed or denied.
//   - [github.com/nodeplane/nodeplane/datapath] owns the BPF programs that
//     enforce that state on endpoint traffic: endpoints (veth + netns),
//     ipcache, conntrack, policy maps, forwarding and drop events.
//   - [github.com/nodeplane/nodeplane/lb] translates service addresses to
//     backends at the socket layer and builds Maglev tables.
//   - [github.com/nodeplane/nodeplane/ipam] hands out pod addresses from
//     host-scope pools that survive restarts and carves node CIDRs from
//     cluster CIDRs.
//
// A node agent typically allocates an address from ipam, creates a datapath
// endpoint with it, allocates the endpoint's identity from its labels,
// publishes address → identity in the ipcache, and lets policy compile the
// rules that select the endpoint into its policy map. The examples directory
// holds binaries built from these packages, such as examples/policytrace,
// which explains the verdict of a set of policies for a flow.
//
// Errors that mean "this kernel cannot do it" wrap [ErrNotSupported] in every
// package, so callers can degrade with a single errors.Is check.
package nodeplane
