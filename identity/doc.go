// Package identity gives workloads numeric security identities derived from
// their labels, the model at the heart of Cilium-style network policy:
// workloads that share labels share an identity, policy is written against
// identities rather than addresses, and the ipcache maps addresses back to
// identities for the datapath.
//
// An [ID] is a uint32 with Cilium's layout. IDs 1–10 are reserved for
// well-known peers (host, world, remote-node, ...). Cluster-scoped IDs carry
// the cluster ID in bits 16–23 and mean the same label set on every node of
// that cluster. Local-scope IDs have bit 24 set; they name CIDR and FQDN
// peers and never leave the node. Only the low 24 bits travel on the wire.
package identity
