// Package bandwidth limits how fast endpoints send: per-endpoint rates
// from Kubernetes' bandwidth annotations, enforced in the kernel.
//
// # Model
//
// [Limits] is what a pod asks for: an egress rate in bits per second (the
// kubernetes.io/egress-bandwidth annotation, [ParseRate] reads its
// Kubernetes quantity syntax), optionally an ingress rate (the
// kubernetes.io/ingress-bandwidth annotation, as the CNI bandwidth plugin
// offers) and a priority. [ParseAnnotations] turns a pod's annotations into
// Limits.
//
// # Enforcement
//
// Egress is enforced the way Cilium's bandwidth manager does it, with EDT
// (earliest departure time): the endpoint's program in the datapath stamps
// every packet it hands to the stack with the time it may leave, no earlier
// than the previous packet's departure plus len/rate, and drops packets
// that would have to wait longer than the drop horizon
// (REACHED_EDT_RATE_LIMITING_DROP_HORIZON). The stamps are honoured by the
// fq qdisc on the device the packet leaves by; without sch_fq they are
// ignored and nothing is limited. [HaveEDT] says whether this kernel has
// sch_fq, [HaveDeliveryTime] whether it keeps a delivery time across
// namespaces and forwarding (skb->tstamp_type, Linux 5.18), which both
// EDT and BBR pacing of pods need.
//
// Where the kernel lacks sch_fq the fallback is the CNI bandwidth
// plugin's: a token bucket filter (tbf) per endpoint. It is a different
// mechanism, with a queue and its latency, and this package never calls it
// EDT.
//
// # Manager
//
// A [Manager] ([New]) applies Limits to datapath endpoints. It picks its
// [Mechanism] once: with EDT it installs fq (mq with fq leaves on
// multi-queue devices) on the node's egress devices and writes each
// endpoint's rate into the datapath (datapath.Endpoint.SetEgressRate);
// with the fallback it puts a tbf qdisc on the endpoint's interface inside
// its namespace.
//
// EDT has two horizons, as in Cilium, both 2 s by default: the program's
// (Config.Horizon, bwmap.DefaultDropHorizon), beyond which it drops a
// packet without booking its slot, and fq's (Config.FqHorizon,
// FqDefaultHorizon, with fq's horizon_drop policy and Cilium's 2^15
// buckets), beyond which fq drops any packet, whoever stamped it: an
// application's SO_TXTIME as much as the program. fq counts those drops
// (horizon_drops), which [Manager.DeviceStats] reads. An fq horizon below
// the program's makes fq drop packets whose slots the program already
// booked, and the endpoint loses that share of its rate.
//
// The Manager owns its devices' root qdiscs until [Manager.Close], which
// puts back what they had before (Cilium leaves fq in place instead);
// endpoints' limits outlive it. Ingress limits are a
// tbf on the egress of the endpoint's host-side interface either way, as
// the CNI bandwidth plugin has them. What a rate counts differs a little:
// tbf counts frames on the wire, so a TCP stream's payload is about 4.4%
// below the limit at MTU 1500; the EDT hook counts skb->len at tc ingress,
// one set of headers per GSO packet, so the payload is about the limit
// (Cilium's EDT on the egress device counts wire length).
//
// # Errors
//
// Bad quantities and limits wrap [ErrInvalidRate], a configuration that
// cannot work [ErrInvalidConfig]. A kernel feature this
// machine lacks wraps nodeplane.ErrNotSupported.
package bandwidth
