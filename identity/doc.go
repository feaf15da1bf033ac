// Package identity gives workloads numeric security identities derived from
// their labels, the model at the heart of Cilium-style network policy:
// workloads that share labels share an identity, and policy is written
// against identities rather than addresses. The package is pure Go with no
// dependencies beyond the standard library. The etcd-backed allocator lives
// in identity/etcdalloc; the ipcache, which maps address prefixes back to
// identities for the datapath, in identity/ipcache.
//
// # Labels and selectors
//
// A [Label] is source:key=value ("k8s:app=web", "reserved:host",
// "cidr:10.0.0.0/8"); [Labels] is an immutable, comparable set of them in
// Cilium's canonical form, at most one label per key, whose [Labels.Key] names
// the set in a key-value store. A [Selector], compiled from a
// Kubernetes-style [LabelSelector] (matchLabels and matchExpressions with In,
// NotIn, Exists, DoesNotExist), selects label sets with Cilium's semantics:
// a key without a source selects that key from every source ("any"), an
// absent label satisfies NotIn and DoesNotExist, and a cidr selector selects
// the identities of every prefix inside its own.
//
// [PodLabels] builds the labels Cilium gives a pod: its own, its
// namespace's, the namespace name and the cluster name. Policies depend on
// the last two; a pod labelled without them is selected by no namespaced
// policy and matches no peer selector.
//
// # Numeric identities
//
// An [ID] is a uint32 with Cilium's layout. IDs 1–10 are reserved for
// well-known peers (host, world, remote-node, ...), with the labels
// [ID.ReservedLabels] returns. Cluster-scoped IDs carry the cluster ID (1–255)
// in bits 16–23 and an index from 256 in bits 0–15, and mean the same label
// set on every node of that cluster. Local-scope IDs have bit 24 set; they
// name CIDR and FQDN peers and never leave the node. Only the low 24 bits
// travel on the wire.
//
// # Allocators
//
// An [Allocator] turns label sets into IDs with reference counting and
// reports every identity added or removed through a [Watcher]: a snapshot,
// then each change exactly once, in order, never blocking the allocator.
// [InProcessAllocator] is the embedded default, optionally persisted to a
// state file; [LocalAllocator] serves CIDR and FQDN identities alone;
// identity/etcdalloc shares identities across a cluster.
//
// # Lifetime and errors
//
// Allocators and caches hold no OS resources except an open state file;
// Close them to end their watches and release the file. Malformed input is
// reported with errors that wrap one of the sentinel errors
// ([ErrInvalidLabel], [ErrInvalidSelector], [ErrInvalidID], ...) and name the
// offending input; typed errors ([*LabelError], [*SelectorError]) carry
// the details. A call that fails changes nothing.
package identity
