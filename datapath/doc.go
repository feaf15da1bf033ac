// Package datapath owns nodeplane's endpoint datapath: the BPF programs that
// forward, track and filter the traffic of local endpoints, the maps they
// share (local endpoints, ipcache, conntrack, per-endpoint policy, events,
// counters) and the Go types that mirror them.
//
// Policy-map semantics are defined by [PolicyKey], [PolicyEntry] and
// [LookupPolicy], the Go model of the kernel's decision.
package datapath
