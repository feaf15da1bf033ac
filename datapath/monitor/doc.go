// Package monitor is the vocabulary of the records the datapath emits: why a
// packet was dropped, and (as the trace records grow) where it was seen. It
// holds no BPF code and no kernel access, like Cilium's pkg/monitor/api, so
// that pure packages (policy's explanations, flow decoders, tools reading
// exported events) can name drop reasons without linking the BPF programs.
//
// The numbers are Cilium's, so tools that know Cilium's records read ours;
// the names are Hubble's.
package monitor
