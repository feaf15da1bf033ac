// Package maglev computes Maglev lookup tables (Eisenbud et al., NSDI 2016)
// that are identical to Cilium's for the same backends, table size and seed.
//
// A lookup table has M entries, M a prime; the datapath picks the entry at
// hash(packet) mod M and sends the flow to the backend the entry names.
// Every backend has its own permutation of the entries, derived from
// MurmurHash3 of its key under the cluster-wide seed, and backends take
// turns claiming the next free entry of their permutation until the table
// is full. Because a backend's permutation depends on nothing but its key,
// adding or removing one of N backends moves only about 1/N of the entries,
// and every node of a cluster computes the same table without talking to the
// others. Weights change how often a backend gets a turn.
//
// A [Builder] is made once per table size and seed with [New] and computes
// tables with [Builder.Table] or, into a table the caller owns,
// [Builder.Fill]. It keeps its scratch space between calls; building a table
// allocates nothing else. It is safe for concurrent use.
//
// # Compatibility with Cilium
//
// The tables equal those of Cilium's pkg/maglev (checked against v1.20.2 on
// the inputs in testdata) when the configuration is the same (Cilium's
// --bpf-lb-maglev-table-size and --bpf-lb-maglev-hash-seed) and each
// backend's [Backend.Key] is what [BackendKey] returns for its address and
// protocol. Cilium puts the backends of a service in the table only while
// they are active (or, when none is, those terminating); choosing them is up
// to the caller.
//
// # Errors
//
// [New] rejects a configuration up front with [ErrTableSize] or
// [ErrHashSeed]. Building a table fails only on bad arguments
// ([ErrNoBackends], [ErrInvalidID], [ErrTableLength]) and then leaves the
// caller's table untouched. Errors wrap the sentinels of this package and
// name the offending value.
package maglev
