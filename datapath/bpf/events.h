/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * events.h is the binary format of the records the datapath writes to the
 * np_events ring buffer. Its Go twin is datapath/events.go; a test checks
 * the two layouts against each other through BTF.
 *
 * Every record starts with struct np_event_hdr. type says which struct
 * follows, with Cilium's message-type numbers; version is NP_EVENT_VERSION
 * and changes whenever a layout does. Integers are in host byte order,
 * addresses and ports in network byte order (as on the wire). Records are
 * never truncated: a record's length is the size of its struct.
 *
 *   NP_EVENT_DROP            struct np_drop_event            208 bytes
 *   NP_EVENT_TRACE           struct np_trace_event            80 bytes
 *   NP_EVENT_POLICY_VERDICT  struct np_policy_verdict_event   80 bytes
 *
 * A drop record is written for every packet the datapath drops; it names
 * the direction and, when a policy decided, the endpoint whose policy it
 * was. A policy verdict record is written for every policy decision about a
 * new connection (one that conntrack does not know), allowed or not, so a
 * denied new connection yields both. Trace records report forwarded
 * packets at Cilium's observation points, as many as the monitor
 * aggregation level in np_trace_config lets through (see the trace section
 * below).
 */
#ifndef NP_EVENTS_H
#define NP_EVENTS_H

#include "maps.h"

#define NP_EVENT_VERSION 2

/* Cilium's message types (CILIUM_NOTIFY_* in bpf/lib/common.h). */
enum np_event_type {
	NP_EVENT_DROP = 1,
	NP_EVENT_TRACE = 4,
	NP_EVENT_POLICY_VERDICT = 5,
};

/* Which program saw the packet: the counters' and np_state's hook. */
enum np_hook {
	NP_HOOK_FROM_ENDPOINT = 0, /* sent by the endpoint (tc ingress of its host-side veth) */
	NP_HOOK_TO_ENDPOINT = 1,   /* sent to the endpoint by the stack (tc egress) */
	NP_HOOK_FROM_OVERLAY = 2,  /* received from another node (tc ingress of the tunnel device) */
	NP_HOOK_TO_OVERLAY = 3,    /* the node's own traffic to another node (tc egress of the tunnel device) */
};

/* Observation points in records, Cilium's numbers (TRACE_* in
 * bpf/lib/trace.h). */
enum np_obs_point {
	NP_OBS_TO_ENDPOINT = 0,   /* TRACE_TO_LXC */
	NP_OBS_TO_PROXY = 1,      /* TRACE_TO_PROXY */
	NP_OBS_TO_STACK = 3,      /* TRACE_TO_STACK */
	NP_OBS_TO_OVERLAY = 4,    /* TRACE_TO_OVERLAY */
	NP_OBS_FROM_ENDPOINT = 5, /* TRACE_FROM_LXC */
	NP_OBS_FROM_OVERLAY = 9,  /* TRACE_FROM_OVERLAY */
};

/* Traffic direction in drop records, Hubble's numbers. */
enum np_direction {
	NP_DIR_UNKNOWN = 0,
	NP_DIR_INGRESS = 1,
	NP_DIR_EGRESS = 2,
};

struct np_event_hdr {
	__u8 type;          /* enum np_event_type */
	__u8 version;       /* NP_EVENT_VERSION */
	__u16 endpoint_id;  /* endpoint whose program wrote the record */
	__u32 ifindex;      /* interface the packet was seen on */
	__u64 ktime_ns;     /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
};
NP_ASSERT_SIZE(struct np_event_hdr, 16);

/* np_drop_event.flags */
#define NP_DROP_F_TUPLE  (1U << 0) /* tuple holds the parsed packet */
#define NP_DROP_F_CT     (1U << 1) /* ct_state is the conntrack state */
#define NP_DROP_F_POLICY (1U << 2) /* a policy decided: direction, policy_endpoint_id are its */

/* Bytes of the packet, from the Ethernet header on, kept in a drop record. */
#define NP_EVENT_CAP_LEN 128

struct np_drop_event {
	struct np_event_hdr hdr;
	struct np_tuple tuple;       /* zero unless NP_DROP_F_TUPLE */
	__u32 src_identity;          /* 0 where not known yet */
	__u32 dst_identity;          /* 0 where not known yet */
	__u8 reason;                 /* Cilium drop reason (DROP_* below) */
	__u8 obs_point;              /* enum np_obs_point */
	__u8 flags;                  /* NP_DROP_F_* */
	__u8 direction;              /* enum np_direction */
	__u32 orig_len;              /* length of the whole packet */
	__u16 cap_len;               /* valid bytes in data */
	__u16 policy_endpoint_id;    /* endpoint whose policy decided, else the writer */
	__u8 tcp_flags;
	__u8 ct_state;               /* enum np_ct_state, with NP_DROP_F_CT */
	__be16 policy_port;          /* dport, or the ICMP type */
	__u8 data[NP_EVENT_CAP_LEN]; /* the packet's first bytes */
};
NP_ASSERT_SIZE(struct np_drop_event, 208);

/* Which entry decided, with Cilium's numbers (bpf/lib/policy.h). */
enum np_policy_match {
	NP_POLICY_MATCH_NONE = 0,
	NP_POLICY_MATCH_L3_ONLY = 1,   /* identity, any protocol */
	NP_POLICY_MATCH_L3_L4 = 2,     /* identity, protocol and port(s) */
	NP_POLICY_MATCH_L4_ONLY = 3,   /* any identity, protocol and port(s) */
	NP_POLICY_MATCH_ALL = 4,       /* any identity, any protocol */
	NP_POLICY_MATCH_L3_PROTO = 5,  /* identity, protocol, any port */
	NP_POLICY_MATCH_PROTO_ONLY = 6,/* any identity, protocol, any port */
};

struct np_policy_verdict_event {
	struct np_event_hdr hdr;
	struct np_tuple tuple;
	__u32 src_identity;
	__u32 dst_identity;
	__u16 policy_endpoint_id; /* endpoint whose policy map decided */
	__u16 proxy_port;         /* host order; 0 without L7 redirect */
	__u8 obs_point;           /* enum np_obs_point */
	__u8 egress;              /* 0: ingress policy, 1: egress policy */
	__u8 verdict;             /* 0 allowed, else the drop reason */
	__u8 match_type;          /* enum np_policy_match */
	__u8 l4_prefix_len;       /* of the deciding entry */
	__u8 tcp_flags;
	__be16 policy_port;       /* port looked up: dport, or the ICMP type */
	__u8 pad2[4];
};
NP_ASSERT_SIZE(struct np_policy_verdict_event, 80);

/* ---- trace records and monitor aggregation ---- */

/*
 * A trace record reports a forwarded packet at an observation point:
 * FROM_ENDPOINT when the endpoint's program accepts it, then TO_ENDPOINT
 * when it is delivered to a local endpoint or TO_STACK when it is passed to
 * the node's stack. reason is the conntrack state (Cilium's TRACE_REASON_*
 * are its CT_* numbers, which np_ct_state shares).
 *
 * np_trace_config holds the monitor aggregation level, with Cilium's
 * semantics (emit_trace_notify in bpf/lib/trace.h): level 0 (none) traces
 * every packet at every point; from 1 (lowest) on FROM_* points are not
 * traced; from 3 (medium) on a known connection is traced only when a
 * packet carries a flag of report_flags not seen before in its direction,
 * or when interval seconds have passed since its last report in that
 * direction. The map's aggregation field is the level plus one, so that a
 * zeroed map means no trace records at all.
 */
struct np_trace_event {
	struct np_event_hdr hdr;
	struct np_tuple tuple;
	__u32 src_identity;
	__u32 dst_identity;
	__u16 dst_endpoint_id;    /* endpoint delivered to, 0 for none */
	__u8 obs_point;           /* enum np_obs_point */
	__u8 reason;              /* enum np_ct_state */
	__u32 orig_len;
	__u8 tcp_flags;
	__u8 pad;
	__be16 policy_port;       /* dport, or the ICMP type */
	__u32 dst_ifindex;        /* interface delivered to, 0 for none */
};
NP_ASSERT_SIZE(struct np_trace_event, 80);

#define NP_AGGREGATE_LOWEST 1 /* Cilium's TRACE_AGGREGATE_RX */
#define NP_AGGREGATE_MEDIUM 3 /* Cilium's TRACE_AGGREGATE_ACTIVE_CT */

struct np_trace_config {
	__u8 aggregation;   /* 0: no trace records; else the Cilium level + 1 */
	__u8 report_flags;  /* TCP flags whose first appearance is reported */
	__u8 pad[2];
	__u32 interval;     /* seconds between reports of an active connection */
};
NP_ASSERT_SIZE(struct np_trace_config, 8);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct np_trace_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_trace_config SEC(".maps");

/* Drop reasons: Cilium's numbers (bpf/lib/drop_reasons.h negated,
 * pkg/monitor/api/drop.go). */
#define DROP_INVALID_SIP       132
#define DROP_POLICY            133
#define DROP_INVALID           134
#define DROP_CT_INVALID_HDR    135
#define DROP_CT_UNKNOWN_PROTO  137
#define DROP_UNKNOWN_L3        139
#define DROP_WRITE_ERROR       141
#define DROP_NO_TUNNEL_KEY     147
#define DROP_UNKNOWN_TARGET    150
#define DROP_NO_TUNNEL_ENDPOINT 160
#define DROP_CT_CREATE_FAILED  155
#define DROP_INVALID_EXTHDR    156
#define DROP_EDT_HORIZON       162
#define DROP_INVALID_IDENTITY  171
#define DROP_UNKNOWN_SENDER    172
#define DROP_FRAG_NOT_FOUND    175
#define DROP_PROXY_LOOKUP_FAILED 178
#define DROP_PROXY_SET_FAILED  179
#define DROP_PROXY_UNKNOWN_PROTO 180
#define DROP_POLICY_DENY       181
#define DROP_EP_NOT_READY      203

#endif /* NP_EVENTS_H */
