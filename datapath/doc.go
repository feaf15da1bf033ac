// Package datapath is nodeplane's endpoint datapath: BPF programs that
// forward, track and filter the traffic of the workloads on a node, the
// maps they share, and a typed Go API over both.
//
// # Model
//
// An [Endpoint] is a workload: one IPv4 and/or one IPv6 address in its own
// network namespace, reached through a veth pair whose host side lives in
// the node namespace. Every endpoint has a numeric security identity
// ([identity.ID]) and its own policy map. Remote addresses get their
// identity from the ipcache ([IPCache]), a longest-prefix-match map that
// [identity.IPCacheWriter] feeds; addresses it does not cover are the world
// (identity 2).
//
// Each endpoint gets its own copy of two programs, with its ID compiled in
// as a load-time constant, attached to the host-side interface with tcx (or
// tc clsact where the kernel lacks tcx, see [HaveTCX]):
//
//   - from-endpoint (ingress of the host side) sees what the endpoint
//     sends. The source address must be the endpoint's (else
//     [DropInvalidSourceIP]). A packet conntrack knows, or a reply or an
//     ICMP error about a known connection, passes. A new connection must be
//     allowed by the endpoint's egress policy and, when the destination is
//     another local endpoint, by that endpoint's ingress policy; then
//     conntrack records it. Packets to local endpoints are routed (TTL,
//     MACs) and redirected straight into the destination's namespace
//     (bpf_redirect_peer); everything else goes to the node's stack.
//   - to-endpoint (egress of the host side) sees what the node's stack
//     sends to the endpoint: from the node itself or routed from outside.
//     The source's identity comes from the ipcache; new connections must be
//     allowed by the endpoint's ingress policy.
//
// Policy follows Cilium's policy map: keys of peer identity (0 for any),
// direction, protocol and destination port with a prefix length for port
// ranges, two lookups per decision, and [LookupPolicy] as the exact Go model
// of the kernel's choice. An empty policy map denies every new connection.
// IP fragments are tracked as Cilium tracks them: the first fragment of a
// datagram records its ports under the datagram's addresses and
// identification, and the later ones get the first one's verdict; a later
// fragment whose first one was not seen is dropped. Malformed, truncated and
// non-IP packets are dropped (ARP and IPv6 neighbour discovery pass
// untouched). Every drop is counted by reason
// ([Datapath.Counters]) and reported as a [DropEvent] with both identities,
// the direction and the endpoint whose policy decided; every policy
// decision about a new connection as a [PolicyVerdictEvent]; forwarded
// packets as [TraceEvent]s at Cilium's observation points, as many as the
// monitor aggregation level lets through (Config.MonitorAggregation,
// [Datapath.SetMonitorAggregation]; default medium: state changes and
// periodic samples). [Datapath.NewEventReader] reads them; the record
// format is package monitor's, with Cilium's numbers, and package flow
// turns records into Hubble flows.
//
// Inside an endpoint's namespace, AddEndpoint configures the address(es)
// as /32 and /128 and default routes through the link-local gateways
// 169.254.1.1 and fe80::1, whose permanent neighbour entries name the
// host-side MAC, so no ARP or neighbour discovery is needed. The node
// namespace gets a host route and a permanent neighbour entry per address.
//
// # Testing policy without traffic
//
// [Endpoint.TestRun] runs a crafted packet ([TestPacket]) through an
// endpoint's program with BPF_PROG_TEST_RUN and returns the [Verdict]:
// pass, redirect or drop, the drop reason, the identities, the conntrack
// state and the policy entry that decided. The programs leave that verdict
// in skb->cb, which is how the kernel reports it back. A detached endpoint
// ([EndpointConfig].Detached) has programs and map entries but no
// interface, so such tests need no namespaces at all.
//
// # Lifetime
//
// [New] creates the shared maps, or opens them from their pins when
// [Config].BPFFSDir is set; a later Datapath on the same directory reuses
// them with their contents (ipcache, conntrack, counters). Endpoints are
// added and deleted at run time. Everything holding a file descriptor has
// a Close or Delete method, and constructors release what they acquired
// when they fail. What outlives the process depends on pinning.
//
// Without BPFFSDir the process owns the endpoints: [Datapath.Close]
// deletes them, interfaces included, so that no interface is left without
// its programs. A process that dies without Close cannot do that: its tcx
// links go with it and the interfaces stay, unfiltered, while tc filters
// stay attached with nobody to change or remove them. Anything that must
// survive its own crash sets BPFFSDir.
//
// With BPFFSDir the kernel and the bpffs own the endpoints, and a Datapath
// only manages them. An endpoint's tcx links are pinned in
// BPFFSDir/endpoints/ID/ (a tc filter is held by its interface), its
// policy map by the pinned hash-of-maps, and a record in the pinned
// np_ep_records map keeps what is needed to find it again: addresses, MAC,
// identity, host interface, attach mode, and how far adding or deleting
// it got. Close releases the descriptors and leaves all of it in place,
// and so does a crash (SIGKILL, OOM, panic): traffic keeps flowing under
// the policy last written, established connections included, and
// nothing the policy denies gets through. One Datapath at a time owns a
// directory: New takes an exclusive flock on it, which the kernel drops
// with the process, and a second one fails with [ErrBPFFSDirInUse].
//
// The next New on the directory restores what it finds ([RestoreReport],
// [Datapath.Restored]). An endpoint whose host interface is still there
// in the node namespace is adopted: [Datapath.Endpoints] and
// [Datapath.Endpoint] return it, with a working [Endpoint.Policy],
// [Endpoint.SetIdentity], [Endpoint.TestRun] and [Endpoint.Delete]. The
// new build's programs replace the old ones in one step (tcx link update,
// or tc filter replace), so an upgrade never leaves an interface without
// a program; a missing link or policy map is put back, the policy map
// empty (denying). For tcx, a pinned link still attached to the recorded
// ifindex proves the interface is the same device, since the kernel
// unbinds links from devices that go away; for tc, which has no such
// binding, the interface must have the recorded ifindex and name and be
// a veth. The state of the other endpoints is deleted (map entries,
// policy map, pins, conntrack entries), as is that of endpoints whose
// AddEndpoint or Delete a dead process left half done, interfaces
// included; their IDs and addresses are free for AddEndpoint again.
// [Endpoint.Delete] removes an endpoint for good, and [Datapath.Uninstall]
// removes every endpoint and every pin.
//
// Programs may change freely between builds; the maps may not. A pinned
// map whose type, sizes or flags differ from this build's makes New fail
// with an error wrapping ebpf.ErrMapIncompatible, and a record of a format
// this build does not know makes it fail without touching anything.
//
// # Errors
//
// Invalid configuration and keys are rejected before anything changes,
// with errors wrapping [ErrInvalidConfig] or [ErrInvalidPolicyKey]. A taken
// endpoint ID, address or interface name wraps [ErrEndpointExists]; use of
// a closed or deleted object wraps [ErrClosed]; a BPFFSDir another
// Datapath holds gives [ErrBPFFSDirInUse]; a kernel feature this
// machine lacks wraps nodeplane.ErrNotSupported. Other errors come from the
// kernel, wrapped with the operation that failed.
package datapath
