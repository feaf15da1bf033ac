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
// # L7 proxies
//
// An allowing entry with a proxy port (mapstate.Entry.ProxyPort) sends the
// connection to the L7 proxy listening on that port in the node's
// namespace instead of its destination (bpf/proxy.h): the endpoint's
// program assigns the first packet (a TCP SYN, every UDP datagram) to the
// proxy's transparent socket with bpf_sk_assign and marks every packet
// 0x200, which package proxy's routing delivers locally. The source
// endpoint's egress entry decides; for a local destination its ingress
// entry too (the proxy then enforces both sides' L7 rules). The
// connection's conntrack entry keeps the port ([ConntrackProxy],
// [ConntrackEntry.ProxyPort]), and replies from the proxy's socket are the
// entry's replies. The proxy's upstream connection carries the source's
// identity in its socket mark (proxy.UpstreamMark), which the
// destination's program uses as the source identity; an ingress proxy port
// the destination's own program meets (a source that did not come through
// a local endpoint's program) is dropped, SOCKET_LOOKUP_FAILED, as is a
// redirect with no proxy socket; a proxy port on an ICMP entry is
// PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL.
//
// # Other nodes and the outside
//
// [Datapath.AttachOverlay] puts programs on the node's tunnel device
// (package overlay creates it): traffic to prefixes whose ipcache entry has
// a tunnel endpoint is encapsulated with the sender's identity as VNI (the
// node's own traffic, routed into the device, with reserved:remote-node),
// and what arrives is decided by the VNI and the destination's ingress
// policy. [Datapath.AttachMasquerade] SNATs endpoint traffic that leaves
// the cluster (TCP, UDP, ICMP echo; IPv4 and IPv6) to the node's address,
// through the node's one NAT table ([Datapath.NATMap]), which lb's SNAT
// mode shares so that no node port is handed out twice. Without pinning
// both belong to the process; with pinning their links are pinned, Close
// leaves them working and the next attach adopts them, as endpoints are
// adopted.
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
