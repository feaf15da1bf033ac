// Package datapath is nodeplane's endpoint datapath: BPF programs that
// forward, track and filter the traffic of the workloads on a node, the
// maps they share, and a typed Go API over both. How the programs and maps
// work, and how endpoints survive restarts, is in doc/datapath.md.
//
// # Model
//
// An [Endpoint] is a workload: one IPv4 and/or one IPv6 address in its own
// network namespace, reached through a veth pair whose host side lives in
// the node namespace. [Datapath.AddEndpoint] plumbs it (the namespace comes
// from the container runtime, or from [NewNetNS]) and loads its programs.
// Every endpoint has a numeric security identity ([identity.ID]) and its
// own policy map. Remote addresses get their identity from the ipcache
// ([IPCache]), which [ipcache.Writer] feeds; addresses it does not
// cover are the world.
//
// # Policy
//
// A new endpoint's policy map is empty, and an empty map denies every new
// connection. The map holds the compiled policy of package policy/mapstate
// ([mapstate.State]); [mapstate.Lookup] is the exact Go model of the
// kernel's decision. Give every endpoint, whether a policy selects it or
// not, to the policy engine (policy.Engine.AddEndpoint): an Endpoint is
// what the engine manages ([Endpoint.Identity], [Endpoint.ApplyPolicy]),
// and the engine writes the allow-all entries of an endpoint no policy
// selects. [PolicyMap] writes entries directly, for tests and tools.
//
// # Other nodes and the outside
//
// [Datapath.AttachOverlay] puts a program on the node's tunnel device
// (package overlay creates it): traffic to prefixes whose ipcache entry has
// a tunnel endpoint is encapsulated with the sender's identity as VNI, and
// what arrives is decided by the VNI and the destination's ingress policy.
// [Datapath.AttachMasquerade] SNATs endpoint traffic that leaves the
// cluster to the node's address. Both belong to the process (not pinned).
//
// # Observing
//
// Every drop is counted by reason ([Datapath.Counters]) and reported as a
// [DropEvent] with both identities and a [monitor.DropReason]; every
// policy decision about a new connection as a [PolicyVerdictEvent]
// ([Datapath.NewEventReader]). [Endpoint.TestRun] runs a crafted packet
// ([TestPacket]) through an endpoint's program and returns the [Verdict],
// with no traffic at all for a detached endpoint
// ([EndpointConfig].Detached).
//
// # Egress rate
//
// [Endpoint.SetEgressRate] gives an endpoint an egress rate, enforced by
// earliest departure time: its from-endpoint program stamps what it hands
// to the stack with the time it may leave (bpf_skb_set_tstamp, Linux
// 5.18), for the fq qdisc of the egress device to honour, and drops
// packets beyond the horizon ([monitor.DropEDTHorizon]). Package bandwidth
// decides the rates and the qdiscs; this package does not import it.
//
// # Lifetime
//
// [New] creates the shared maps. Everything holding a file descriptor has
// a Close or Delete method, and constructors release what they acquired
// when they fail. Without [Config].BPFFSDir the process owns the
// endpoints: [Datapath.Close] deletes them, interfaces included. With it,
// the bpffs owns them: Close and a crash leave them installed and
// enforcing the policy last written, and the next [New] on the directory
// adopts them ([Datapath.Restored]); one Datapath at a time owns a
// directory. [Datapath.Uninstall] removes every endpoint and every pin.
//
// # Upgrades
//
// [Datapath.Upgrade] replaces every endpoint's programs with another build
// of the BPF object while traffic flows, one step per hook (a tcx link
// update, or a cls_bpf filter replaced in place), keeping the maps and
// their contents; [Config].Programs opens a Datapath on another build. A
// restart of a pinning Datapath onto a new binary swaps the programs the
// same way when the new Datapath adopts the endpoints.
//
// # Errors
//
// Invalid configuration and keys are rejected before anything changes,
// with errors wrapping [ErrInvalidConfig] or [mapstate.ErrInvalidKey]. A
// taken endpoint ID, address or interface name wraps [ErrEndpointExists];
// use of a closed or deleted object wraps [nodeplane.ErrClosed]; a BPFFSDir another
// Datapath holds gives [ErrBPFFSDirInUse]; a pinned map of another layout
// wraps ebpf.ErrMapIncompatible; a kernel feature this machine lacks wraps
// nodeplane.ErrNotSupported. Other errors come from the kernel, wrapped
// with the operation that failed.
package datapath
