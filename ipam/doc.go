// Package ipam hands out IP addresses to workloads on a node, and node CIDRs
// to nodes of a cluster.
//
// # Host-scope pools
//
// A [Pool] owns one or more IPv4 and IPv6 prefixes, typically the node's pod
// CIDRs, and gives addresses to owners: opaque strings such as a container
// ID and interface name, as CNI plugins and Cilium's host-scope IPAM use
// them. No other node is asked, because no other node allocates from these
// prefixes. [Pool.AllocateNext] picks a free address, [Pool.Allocate] a
// given one, [Pool.AllocateNextDual] one of each family in one step;
// [Pool.Release] and [Pool.ReleaseOwner] give them back. The first and last
// address of each prefix (for IPv4 the network and broadcast addresses) and
// any configured reserved address are never handed out.
//
// Allocation uses a rotating cursor: the search for a free address starts
// after the last one handed out and wraps around, so released addresses are
// reused as late as possible. Used addresses live in a sparse radix bitmap
// (fan-out 64, leaves of 4096 addresses) whose nodes record which children
// are full; finding the next free address takes O(log64 N) steps however
// full the pool is, and memory follows the number of allocations, not the
// size of the prefix, so a /8 or a /64 costs nothing until used.
//
// # Persistence
//
// A pool built with a [StateFile] writes every change through to disk before
// the call returns, atomically (temporary file, fsync, rename, fsync of the
// directory), and [New] restores it after a restart. The caller then
// releases the owners that no longer exist: the pool cannot know that a
// container died while the node was down. [Pool.Snapshot] and
// [Pool.Restore] do the same for callers that keep the state elsewhere.
// Processes that share a state file, such as concurrent CNI plugin
// invocations, hold [StateFile.Lock] around restoring, changing and saving.
//
// # Cluster pools
//
// A [ClusterAllocator] carves node CIDRs of a fixed size out of cluster
// CIDRs, as Cilium's cluster-pool IPAM does: one per family when a node
// joins, more when its pool runs out. [ClusterPool] keeps the cluster's
// state in one process. [github.com/nodeplane/nodeplane/ipam/etcdpool]
// shares it among many processes through etcd; it lives apart so that
// importing ipam does not pull in the etcd client.
//
// # Errors
//
// Failed calls leave the pool as it was, including when writing the state
// file fails. Errors wrap the sentinels in this package: [ErrExhausted]
// (as an [*ExhaustedError]), [ErrAllocated] (as an [*AllocatedError] that
// names the owner), [ErrOutOfRange], [ErrReserved], [ErrNotAllocated],
// [ErrOverlap], [ErrMaskSize], [ErrInvalid] and [ErrCorrupt].
package ipam
