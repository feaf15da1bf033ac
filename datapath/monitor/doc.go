// Package monitor is the vocabulary of the records the datapath writes to
// its events ring buffer, without BPF: record types, observation points,
// trace reasons, drop reasons, monitor-aggregation levels, and the binary
// layout of each record with an allocation-free decoder. It is to nodeplane
// what Cilium's pkg/monitor/api is to Cilium, and uses Cilium's numbers
// throughout, so that tools which know Cilium's (Hubble's) vocabulary read
// ours.
//
// Readers of records (package flow, a CLI, a test) import this package
// instead of datapath: it imports only the standard library
// (`go list -deps ./datapath/monitor | wc -l`: 67 packages, all std),
// where datapath brings cilium/ebpf and netlink (171).
//
// # Records
//
// Every record starts with a 16-byte [Header]; its Type says which layout
// follows ([DropNotify], [TraceNotify], [PolicyVerdictNotify]) and its
// Version is [Version], which changes whenever a layout does. Decode a
// record with [DecodeHeader] and the Decode method of its type; they check
// lengths and fields and return errors wrapping [ErrMalformed] (more
// specifically [ErrTruncated], [ErrVersion] or [ErrUnknownType]) rather
// than panicking on any input.
package monitor
