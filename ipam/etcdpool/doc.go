// Package etcdpool is an [ipam.ClusterAllocator] whose state lives in etcd,
// so that any number of processes (one operator replica per zone, or every
// node agent allocating its own CIDR) share the cluster CIDRs without ever
// giving one node CIDR to two nodes.
//
// Each node CIDR is one key, prefix + "cidrs/" + CIDR, whose value is the
// node name; an index key, prefix + "nodes/" + node + "/" + family + "/" +
// CIDR, lets a node's CIDRs be listed and compared in one range. Every
// change is one etcd transaction that creates a CIDR key only if it does not
// exist (and, for a node's first CIDR of a family, only if the node has none
// of that family yet), or deletes it only if it still names the node. A
// process that loses a race reads the new state and tries the next free
// CIDR; the transaction, not the process, decides.
//
// To choose a candidate, a process mirrors the CIDR keys into an in-process
// [ipam.ClusterPool], re-reading them at the start of every attempt, and
// lets it pick with its rotating cursor. Each process has its own cursor.
// Reading all CIDR keys costs O(nodes) per call, which is fine for node
// CIDRs, allocated once per node.
//
// The cluster configuration (CIDRs and mask sizes) is stored in etcd by the
// first process; a process with a different configuration fails in [New]
// with [ErrConfigMismatch] rather than carving different node CIDRs out of
// the same space.
//
// A Pool does not own its etcd client: the caller closes the client.
// Errors wrap the sentinels of package ipam, or etcd's own errors.
package etcdpool
