// Package tcattach attaches tc (sched_cls) programs to an interface's
// ingress or egress: with a tcx link where the kernel has tcx (Linux 6.6,
// [HaveTCX]), and otherwise with a cls_bpf filter in direct-action mode
// under a clsact qdisc, as Cilium does on older kernels. The datapath's
// endpoint hooks and lb's north-south programs share it.
package tcattach
