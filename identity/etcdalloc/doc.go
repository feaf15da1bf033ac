// Package etcdalloc is an [identity.Allocator] whose cluster-scoped
// identities live in etcd, so that the same labels get the same ID on every
// node of a cluster. It is a package of its own so that importing identity
// does not pull in the etcd client.
//
// # Keys
//
// Under Prefix + "c<cluster>/" the allocator keeps, for each identity N with
// label set L (in the canonical form of [identity.Labels.Key]):
//
//	id/<N>               → L   master key: ID to labels
//	labels/<L>           → N   index: labels to ID, created with the master
//	ref/<L>/<node>       → N   a node's reference, bound to the node's lease
//
// A new identity is created with one transaction that writes the master,
// the index and the creating node's reference only if neither the master nor
// the index exists, so two nodes racing for the same labels agree on one ID
// and two label sets never get the same ID. A node joins an existing
// identity with a transaction that adds its reference only if the index
// still names that ID. Garbage collection deletes the master and
// the index of an identity with a transaction that requires the reference
// range to be empty and the master to be unchanged; it therefore never
// removes an identity that a node is joining at the same moment.
//
// References are counted locally: the first Allocate of a label set on a
// node writes the reference key, later ones only count, and the Release of
// the last local reference deletes it. References of a node that dies
// disappear with its lease; the identities then have no reference and are
// collected.
//
// # Cache and watch
//
// Every node keeps a cache of all the cluster's identities, filled by a
// list at start and then fed by a watch of the master keys from the
// revision of the list. Lookup and LookupByLabels answer from the cache and
// never wait for etcd; Watch reports every identity created or collected
// anywhere in the cluster. When the watch breaks, it resumes from the last
// revision it saw; if etcd has compacted that revision, the cache is
// re-listed and the differences are reported as events.
//
// Label sets of local scope (CIDR, FQDN) get node-local identities from an
// in-memory [identity.LocalAllocator] sharing the same cache, and reserved
// label sets their reserved IDs; neither touches etcd.
//
// # Outages
//
// While etcd is unreachable, lookups keep answering from the cache, Allocate
// of a label set this node already references only counts, and everything
// else fails when the caller's context ends, with an error that wraps
// [ErrUnavailable] and the context's error. When etcd comes back, the watch
// resumes where it stopped and the lease keeps its references if it did
// not expire; if it did, the allocator takes a new lease and writes its
// references again, recreating an identity under the same ID if it was
// collected in the meantime.
package etcdalloc
