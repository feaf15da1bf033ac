/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * edt.h: per-endpoint egress rate limiting by earliest departure time
 * (EDT), the scheme of Cilium's bandwidth manager (bpf/lib/edt.h,
 * edt_sched_departure).
 *
 * np_from_endpoint sees what an endpoint sends. For a packet it hands to
 * the stack it stamps the earliest time the packet may leave: no earlier
 * than the previous packet's departure plus len/rate. The fq qdisc of the
 * device the packet leaves by holds it until then, so the endpoint's
 * traffic leaves at its rate without a queue of its own. A packet whose
 * departure would lie a drop horizon or more in the future is dropped
 * (DROP_EDT_HORIZON), as Cilium does; that also keeps t_last from running
 * away from the clock.
 *
 * The stamp is set with bpf_skb_set_tstamp as a monotonic delivery time
 * (Linux 5.18): this hook is tc ingress of the host-side veth, where a
 * plain write to skb->tstamp marks it a receive time, which forwarding
 * clears. For the same reason the program does not read skb->tstamp here:
 * at ingress it holds a receive time of the realtime clock (or hides a
 * delivery time), so departures are scheduled from now.
 *
 * Without fq on the egress device the stamps are ignored and nothing is
 * limited; package bandwidth's HaveEDT says which case applies.
 */
#ifndef NP_EDT_H
#define NP_EDT_H

#include "np_common.h"
#include "events.h"

#define NP_NSEC_PER_SEC 1000000000ULL

/* np_edt_info is an endpoint's EDT state, the value of np_edt (Cilium's
 * struct edt_info). */
struct np_edt_info {
	__u64 bps;            /* rate in bytes per second; 0: not limited */
	__u64 t_last;         /* departure of the last packet, ns, CLOCK_MONOTONIC */
	__u64 t_horizon_drop; /* drop packets that would depart this far ahead, ns */
	__u32 prio;           /* skb->priority + 1 for the endpoint's packets; 0: keep */
	__u32 pad;
};
NP_ASSERT_SIZE(struct np_edt_info, 32);

/* Endpoint ID -> EDT state, for the endpoints that have a rate. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct np_edt_info);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_edt SEC(".maps");

/* np_edt_sched_departure schedules a packet of endpoint_id and returns 0,
 * or DROP_EDT_HORIZON. Concurrent packets of one endpoint on several CPUs
 * race on t_last as in Cilium: a lost update lets a packet leave a little
 * early, it never stalls the endpoint. */
static __always_inline __u8 np_edt_sched_departure(struct __sk_buff *skb, __u32 endpoint_id)
{
	struct np_edt_info *info = bpf_map_lookup_elem(&np_edt, &endpoint_id);
	__u64 now, delay, t_next, len;

	if (!info || !info->bps)
		return 0;
	if (info->prio)
		skb->priority = info->prio - 1;

	now = bpf_ktime_get_ns();
	/* wire_len counts the headers of every segment of a GSO packet. */
	len = skb->wire_len ? skb->wire_len : skb->len;
	delay = len * NP_NSEC_PER_SEC / info->bps;
	t_next = *(volatile __u64 *)&info->t_last + delay;
	if (t_next <= now) {
		/* The endpoint was idle for longer than this packet's
		 * share: it leaves now, and the schedule restarts here. */
		*(volatile __u64 *)&info->t_last = now;
		return 0;
	}
	if (t_next - now >= info->t_horizon_drop)
		return DROP_EDT_HORIZON;
	*(volatile __u64 *)&info->t_last = t_next;
	bpf_skb_set_tstamp(skb, t_next, BPF_SKB_TSTAMP_DELIVERY_MONO);
	return 0;
}

#endif /* NP_EDT_H */
