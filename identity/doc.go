// Package identity gives workloads numeric security identities derived from
// their labels, the model at the heart of Cilium-style network policy:
// workloads that share labels share an identity, policy is written against
// identities rather than addresses, and the ipcache maps addresses back to
// identities for the datapath.
//
// # Labels and selectors
//
// A [Label] is source:key=value ("k8s:app=web", "reserved:host",
// "cidr:10.0.0.0/8"); [Labels] is an immutable, comparable set of them in
// Cilium's canonical form, at most one label per key. A [Selector], compiled
// from a Kubernetes-style [LabelSelector] (matchLabels and matchExpressions
// with In, NotIn, Exists, DoesNotExist), selects label sets with Cilium's
// semantics: a key without a source selects that key from every source
// ("any"), and a cidr selector selects every prefix inside its own.
//
// # Numeric identities
//
// An [ID] is a uint32 with Cilium's layout. IDs 1–10 are reserved for
// well-known peers (host, world, remote-node, ...). Cluster-scoped IDs carry
// the cluster ID in bits 16–23 and mean the same label set on every node of
// that cluster. Local-scope IDs have bit 24 set; they name CIDR and FQDN
// peers and never leave the node. Only the low 24 bits travel on the wire.
//
// # Errors
//
// Malformed input is reported with errors that wrap one of the sentinel
// errors ([ErrInvalidLabel], [ErrInvalidSelector], [ErrInvalidID], ...) and
// name the offending input; typed errors ([*LabelError], [*SelectorError])
// carry the details. A call that fails on bad input changes nothing.
package identity
