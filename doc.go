// Package nodeplane is a Go SDK for building a node dataplane on eBPF: the
// building blocks of a Cilium-class CNI, node agent or load balancer, as
// independent packages that each do one thing in the kernel and can be
// composed as the caller sees fit. There is no agent to run.
//
// The packages and how they compose (doc/architecture.md has the layers
// and which package may import which):
//
//   - [github.com/nodeplane/nodeplane/identity] turns label sets into numeric
//     security identities (in-process or cluster-wide through etcd) and keeps
//     the ipcache, the map from address prefix to identity.
//   - [github.com/nodeplane/nodeplane/policy] parses Cilium and Kubernetes
//     network policies, resolves their selectors against identities and,
//     through its Engine (the one way to change policy), compiles them
//     incrementally into each endpoint's policy map; it also traces why a
//     packet is allowed or denied. It imports no kernel code: the compiled
//     form is [github.com/nodeplane/nodeplane/policy/mapstate].
//   - [github.com/nodeplane/nodeplane/datapath] owns the BPF programs that
//     enforce that state on endpoint traffic: endpoints (veth + netns),
//     ipcache, conntrack, policy maps, forwarding and drop events, whose
//     vocabulary is [github.com/nodeplane/nodeplane/datapath/monitor].
//   - [github.com/nodeplane/nodeplane/lb] translates service addresses to
//     backends at the socket layer, balances NodePort and LoadBalancer
//     traffic in XDP or tc (NorthSouth), and builds Maglev tables.
//   - [github.com/nodeplane/nodeplane/ipam] hands out pod addresses from
//     host-scope pools that survive restarts and carves node CIDRs from
//     cluster CIDRs.
//   - [github.com/nodeplane/nodeplane/flow] turns the datapath's records
//     into Hubble-style flows (filters, a ring, JSON); its subpackages
//     export Prometheus metrics and the Hubble Observer API.
//   - [github.com/nodeplane/nodeplane/overlay] joins nodes: a node
//     registry, the VXLAN device that carries the sender's identity, and
//     native routing.
//   - [github.com/nodeplane/nodeplane/bandwidth] limits endpoints' egress
//     rate: EDT in the datapath where the kernel has sch_fq, a token
//     bucket where not.
//   - [github.com/nodeplane/nodeplane/proxy] holds what the node's
//     in-process L7 proxies share behind the datapath's transparent
//     redirect (policy entries with a proxy port); its httpproxy enforces
//     HTTP rules per request and reports L7 flows to flow, its dnsproxy
//     enforces DNS rules per query (REFUSED for a name no rule allows) and
//     feeds the answers to the policy engine for toFQDNs.
//   - [github.com/nodeplane/nodeplane/fqdn] is DNS-based policy's model:
//     Cilium's matchName/matchPattern, the DNS answers with their TTLs,
//     and which addresses each toFQDNs selector selects.
//
// A node agent allocates an address from ipam, allocates the pod's
// identity from its labels, creates a datapath endpoint with both,
// publishes address → identity in the ipcache, and gives the endpoint to
// the policy engine, which writes the rules that select it into its policy
// map. Every endpoint goes to the engine, selected or not: the datapath
// denies all traffic of an endpoint whose policy map is empty. Example
// (example_test.go) is that path as code. The examples directory holds
// binaries built from these packages: the node agent (examples/node, with
// its -demo), a CNI plugin (examples/cni), a standalone L4 load balancer
// (examples/l4lb) and examples/policytrace, which explains the verdict of
// a set of policies for a flow.
//
// The root package holds what every package shares: [Protocol], the one
// IP-protocol type; [StackMode], which identity's allocators and policy
// must agree on; and the errors below.
//
// Errors that mean "this kernel cannot do it" wrap [ErrNotSupported] in every
// package, so callers can degrade with a single errors.Is check.
package nodeplane
