// Package lb load-balances service addresses at the socket layer: when a
// program in a cgroup connects to, or sends a datagram to, a service
// frontend, the kernel rewrites the destination to one of the service's
// backends before a packet exists, and rewrites the backend back to the
// frontend wherever the program looks at its peer (recvmsg, getpeername).
// Packets carry backend addresses from the start, so there is no per-packet
// NAT and no conntrack, and the cost of a connect does not grow with the
// number of services: one hash lookup finds the service, one its backend.
// This is Cilium's socket-level load balancing (bpf_sock.c), with Cilium's
// semantics.
//
// # Model
//
// A [Service] is a [Frontend] (address, port, TCP or UDP), a [ServiceType],
// an [Algorithm] and an optional session affinity timeout. Its [Backend]s
// have an address, a weight and a [BackendState]; only BackendActive
// backends receive new connections, the others stay known so that the
// connections they already have are not disturbed. IPv4 and IPv6 services
// are separate; an AF_INET6 socket reaches IPv4 services through
// IPv4-mapped addresses.
//
// A connect or sendmsg to a frontend behaves as follows:
//
//   - TCP picks a backend at random (bpf_get_prandom_u32), UDP by the
//     socket cookie, so every datagram of a socket goes to the same backend.
//   - With session affinity, a client (at the socket layer: a network
//     namespace) stays with its backend until it has not used the service
//     for the timeout, counted in whole seconds, or until the backend stops
//     being active.
//   - With Service.InternalTrafficLocal (internalTrafficPolicy=Local) only
//     the active backends marked Backend.Local (on this node) take new
//     connections, as Cilium's internal scope.
//   - A service without an active backend refuses: the system call fails
//     with EHOSTUNREACH, as in Cilium. Destinations that are not a frontend
//     are left alone, and so is an ExternalIP frontend that is not one of
//     the node's addresses ([LB.SetHostAddresses]): a service may not
//     capture traffic to somebody else's address.
//   - A Maglev service is selected randomly too. Maglev hashes a flow's
//     5-tuple, which does not exist at connect time, and the consistency it
//     buys matters only for packets that may reach any node; the service's
//     Maglev table (built with package maglev, identical to Cilium's) is
//     kept in a per-service map for the packet path.
//
// [Model] is this decision procedure in Go, for tests and explanations.
//
// # North-south: packets from outside the node
//
// [NorthSouth] balances packets that arrive on a node's external interface
// for a NodePort, LoadBalancer or external IP frontend, like Cilium's
// nodeport XDP path. [NorthSouth.Attach] puts an XDP program on the
// interface (native mode when the driver takes it, veth does; generic
// otherwise) and a tc egress program beside it (tcx, or a tc clsact
// filter on kernels before 6.6). The XDP program picks a
// backend for each new flow with Maglev (lut[hash % M], Cilium's 5-tuple
// hash and seed, so every node and Cilium pick the same backend) or at
// random, records the flow in a conntrack map so that it stays on its
// backend while the backend exists, rewrites the destination and lets the
// stack route the packet. In DNAT mode the client address is kept:
// backends must route replies back through the node, whose tc program
// restores the frontend as their source. In SNAT mode
// (NorthSouthConfig.SNATAddrs) packets leave with the node's address and a
// NAT port, and the XDP program translates the replies back where they
// arrive. The NAT table is the node's one (NorthSouthConfig.NATMap, the
// datapath's Datapath.NATMap), shared with the datapath's masquerading, so
// no node port is handed out twice; a flow that finds no free port, or a
// full table, is dropped with DROP_NAT_NO_MAPPING. In DSR mode (NorthSouthConfig.DSR) the packet carries the
// frontend in Cilium's IPv4 option or IPv6 destination option, and a
// NorthSouth on the backend's node ([NorthSouth.AttachDSRBackend]) sends
// the replies from the frontend straight to the client. Backends that are
// not active keep their flows and get no new ones. Drops carry Cilium's
// reasons ([NorthSouth.Drops]) and each dropped packet yields a drop
// record in the datapath's format ([NorthSouth.NewDropReader], a
// flow.Source). Service.ExternalTrafficLocal (externalTrafficPolicy=Local)
// exempts a service from SNAT and DSR, so its backends, the node's own,
// see the client. Session affinity pins a client address to its backend
// as Cilium's ClientIP affinity. ICMP errors about translated flows reach
// the client translated back; IPv6 extension headers are walked as
// Cilium does; a DSR packet too big for its route gets the client an
// ICMP fragmentation needed or packet too big.
//
// # Lifetime
//
// [New] loads the programs, attaches them to a cgroup2 directory (they act
// on every process in it and below it) and returns an [LB] that owns them
// and the maps. [LB.Upsert], [LB.UpsertBackends], [LB.DeleteBackends] and
// [LB.Delete] change services; each is atomic for connects: a connect uses
// either the old or the new service, never a mix (see [LB] for the order of
// writes that ensures it). [LB.Close] detaches the programs. With
// Config.PinPath the maps outlive the LB, and the next New restores its
// services from them, so a restart does not disturb connections.
//
// # Errors
//
// Kernels without the hooks or helpers make New fail with an error wrapping
// nodeplane.ErrNotSupported; [HaveSocketLB] tells in advance. A Config New
// cannot use fails with [ErrInvalidConfig]. Invalid input fails with
// [ErrInvalidService] or [ErrInvalidBackend], an update that
// does not fit the maps with [ErrFull], an update of an unknown frontend
// with [ErrServiceNotFound]; in each case nothing changes. Pinned maps with
// content this package cannot have written make New fail with
// [ErrPinnedState].
package lb
