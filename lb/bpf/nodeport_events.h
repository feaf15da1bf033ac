/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * Drop records of the north-south programs, in the datapath's record format
 * (datapath/bpf/events.h, decoded by datapath/monitor and package flow):
 * a packet nodeport.c drops yields a 208-byte drop record on np_np_events
 * with Cilium's reason, observation point FROM_NETWORK, direction ingress,
 * the parsed tuple where there is one, identities 0 (unknown) and the
 * packet's first 128 bytes. Records that find the ring buffer full are
 * counted in np_np_events_lost.
 *
 * drop() runs deep inside the translation, which has no context pointer:
 * count_drop notes the reason in a per-CPU slot (np_note_drop) and the
 * program's entry writes the record once the verdict is a drop
 * (np_drop_notify). A program runs to its end on one CPU, so the slot is
 * that packet's.
 */
#ifndef NP_NODEPORT_EVENTS_H
#define NP_NODEPORT_EVENTS_H

#define NP_EVENT_DROP 1       /* CILIUM_NOTIFY_DROP */
#define NP_EVENT_VERSION 2    /* datapath/bpf/events.h */
#define NP_OBS_FROM_NETWORK 10 /* TRACE_FROM_NETWORK */
#define NP_DIR_INGRESS 1
#define NP_DROP_F_TUPLE 1
#define NP_EVENT_CAP_LEN 128

/* struct np_drop_event of datapath/bpf/events.h, byte for byte; the tuple
 * is nodeport.c's struct np_tuple, which has the datapath's layout. */
struct np_np_drop_event {
	__u8 type;
	__u8 version;
	__u16 endpoint_id;
	__u32 ifindex;
	__u64 ktime_ns;
	__u8 tuple[40];
	__u32 src_identity;
	__u32 dst_identity;
	__u8 reason;
	__u8 obs_point;
	__u8 flags;
	__u8 direction;
	__u32 orig_len;
	__u16 cap_len;
	__u16 policy_endpoint_id;
	__u8 tcp_flags;
	__u8 ct_state;
	__be16 policy_port;
	__u8 data[NP_EVENT_CAP_LEN];
};
NP_ASSERT_SIZE(struct np_np_drop_event, 208);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} np_np_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} np_np_events_lost SEC(".maps");

/* The reason of the drop the running program decided, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} np_np_last_drop SEC(".maps");

static __always_inline void np_note_drop(__u32 reason)
{
	__u32 zero = 0;
	__u32 *r = bpf_map_lookup_elem(&np_np_last_drop, &zero);

	if (r)
		*r = reason;
}

/* What the entry knows of the dropped packet. */
struct np_drop_info {
	__u32 ifindex;
	__u32 len;
	const void *tuple; /* a struct np_tuple, or NULL */
	__u8 tcp_flags;
	__be16 dport;
};

static __always_inline void np_fill_np_drop(struct np_np_drop_event *e, const struct np_drop_info *i, __u32 reason)
{
	__builtin_memset(e, 0, sizeof(*e));
	e->type = NP_EVENT_DROP;
	e->version = NP_EVENT_VERSION;
	e->ifindex = i->ifindex;
	e->ktime_ns = bpf_ktime_get_ns();
	if (i->tuple) {
		__builtin_memcpy(e->tuple, i->tuple, sizeof(e->tuple));
		e->flags = NP_DROP_F_TUPLE;
		e->tcp_flags = i->tcp_flags;
		e->policy_port = i->dport;
	}
	e->reason = reason;
	e->obs_point = NP_OBS_FROM_NETWORK;
	e->direction = NP_DIR_INGRESS;
	e->orig_len = i->len;
}

/* np_drop_notify writes the record of the drop the program just decided;
 * ctx is the xdp_md (xdp set) or the __sk_buff. */
static __always_inline void np_drop_notify(void *ctx, int xdp, const struct np_drop_info *i)
{
	__u32 zero = 0, cap = i->len;
	__u32 *r = bpf_map_lookup_elem(&np_np_last_drop, &zero);

	if (!r)
		return;
	struct np_np_drop_event *e = bpf_ringbuf_reserve(&np_np_events, sizeof(*e), 0);
	if (!e) {
		__u64 *lost = bpf_map_lookup_elem(&np_np_events_lost, &zero);
		if (lost)
			*lost += 1;
		return;
	}
	np_fill_np_drop(e, i, *r);
	if (cap > NP_EVENT_CAP_LEN)
		cap = NP_EVENT_CAP_LEN;
	if (cap > 0) {
		/* As the datapath's np_fill_drop: a mask the verifier of
		 * Linux 6.1 can follow bounds cap to [1, NP_EVENT_CAP_LEN]. */
		cap -= 1;
		asm volatile("" : "+r"(cap));
		cap = (cap & (NP_EVENT_CAP_LEN - 1)) + 1;
		long err = xdp ? bpf_xdp_load_bytes(ctx, 0, e->data, cap)
			       : bpf_skb_load_bytes(ctx, 0, e->data, cap);
		if (!err)
			e->cap_len = cap;
	}
	bpf_ringbuf_submit(e, 0);
}

#endif /* NP_NODEPORT_EVENTS_H */
