// Package etcdnodes is an [overlay.Registry] kept in etcd, for clusters:
// every node registers itself, and every node's syncer watches the others
// join and leave. It is a package of its own so that importing overlay
// does not pull in the etcd client.
//
// # Keys
//
// Under Prefix:
//
//	nodes/<name>   → {"addresses": [...], "podCIDRs": [...]}, bound to the registering process's lease
//	version        → "" (bumped by every registration)
//
// A registration reads every node, checks that the new node's pod CIDRs
// overlap none of the others ([overlay.OverlapError] otherwise), and
// writes the node in a transaction that requires the version key to be
// unchanged since the read: two nodes racing for overlapping CIDRs cannot
// both win.
//
// # Lifetime
//
// [New] grants a lease (Config.LeaseTTL) and renews it until [Registry.Close],
// which revokes it: a node that shuts down leaves at once, one that
// crashes leaves when its lease expires, and the other nodes' watches see
// either as a deletion. If the lease is lost while the process lives, the
// registry takes a new one and registers its nodes again.
package etcdnodes
