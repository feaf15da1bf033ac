// Package nat is the Go side of the node's one NAT table
// (internal/bpf/include/np_nat.h): the key and entry types the table
// holds, garbage collection of expired flows and table statistics. The
// datapath's masquerading and lb's north-south SNAT mode translate into
// the same table, so the node port of a flow is unique across both; both
// packages use this package to read and clean it, and neither owns the
// other's entries.
//
// A [Table] wraps a map it does not own: closing the map stays with the
// loader that created it. Its methods are safe for concurrent use; the
// periodic collector ([Table.StartGC]) belongs to the caller, who stops it
// before closing the map.
package nat
