// Package overlay connects the pods of several nodes: a node registry
// (node name → underlay addresses and pod CIDRs), a [Syncer] that keeps
// the ipcache in step with it, and the node's tunnel device.
//
// # Model
//
// Every node registers itself in a [Registry] ([LocalRegistry] in the
// process; package overlay/etcdnodes in etcd, with leases so that a dead
// node's entry expires) with the pod CIDRs ipam's cluster pool gave it. A
// registration whose pod CIDRs overlap another node's is refused
// ([*OverlapError]). Each node runs a [Syncer] that follows the registry
// and writes, for every other node, its pod CIDRs (reserved:world with the
// node's underlay address as tunnel endpoint, as Cilium does) and its
// underlay addresses (reserved:remote-node) into the ipcache: the
// datapath then encapsulates traffic to those CIDRs towards that address,
// and the receiving node takes the sender's identity from the tunnel
// header (VNI), not from the ipcache.
//
// # Tunnel and native routing
//
// [NewTunnel] creates the node's collect-metadata tunnel device (VXLAN on
// port 8472 by default, Cilium's; Geneve where [HaveGeneve]) and owns it;
// datapath.Datapath.AttachOverlay puts the datapath's program on it.
// Endpoints must use [Tunnel.PodMTU] (underlay MTU minus the
// encapsulation overhead) as their MTU. In native-routing mode a [Router]
// keeps routes to the other nodes' pod CIDRs instead, and the syncer runs
// in [ModeNative]. In tunnel mode a Router with [RouterConfig].Device
// routes those CIDRs into the tunnel device, so that the node itself
// reaches other nodes' pods too: the datapath encapsulates its packets
// with reserved:remote-node as VNI, and the receiving node's ingress
// policy sees them as remote-node, as in Cilium. Their source is the
// node's own address in its pod CIDR ([TunnelConfig].HostAddresses,
// registered as [Node].HostAddresses, Cilium's router IP), which the
// other nodes' syncers map to remote-node behind the node's tunnel
// endpoint, so that replies, and pods' connections to the node, go
// through the tunnel too.
//
// # Lifetime
//
// [Syncer.Run] and [Router.Run] follow the registry until their context
// ends; what they wrote stays (a new Run reconciles it). A Tunnel deletes
// its device on Close; a Router removes its routes only on Flush.
//
// # Errors
//
// Invalid nodes wrap [ErrInvalidNode], overlapping pod CIDRs
// [ErrPodCIDROverlap], unknown nodes [ErrNodeNotFound], invalid
// configurations [ErrInvalidConfig]; a closed registry returns errors
// wrapping nodeplane.ErrClosed.
package overlay
