/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * maps.h declares every map of the endpoint datapath and the layout of its
 * keys and values. Each struct here has a Go twin in datapath/maps.go whose
 * size and field offsets a test checks against the BTF of the compiled
 * object, so the two cannot drift. Sizes are also asserted below.
 *
 * Conventions shared by all keys:
 *  - ip_version is 4 or 6; IPv4 addresses occupy the first 4 bytes of a
 *    union np_addr and the other 12 bytes are zero.
 *  - addresses and L4 ports are in network byte order, everything else in
 *    host order.
 *  - every pad byte is zero, so that keys compare by memcmp.
 */
#ifndef NP_MAPS_H
#define NP_MAPS_H

#include "np_common.h"

#define NP_IPV4 4
#define NP_IPV6 6

union np_addr {
	__be32 ip4;
	__u32 words[4];
	__u8 bytes[16];
};

/* np_tuple is a conntrack key and the flow tuple of events. ICMP echo
 * requests carry the echo identifier as sport and 0 as dport, echo replies
 * the reverse, so that a reply's reversed tuple is its request's. */
struct np_tuple {
	union np_addr saddr;
	union np_addr daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 ip_version;
	__u8 pad[2];
};
NP_ASSERT_SIZE(struct np_tuple, 40);

/* ---- local endpoints: address -> endpoint ---- */

struct np_endpoint_key {
	union np_addr addr;
	__u8 ip_version;
	__u8 pad[3];
};
NP_ASSERT_SIZE(struct np_endpoint_key, 20);

struct np_endpoint_info {
	__u32 ifindex;       /* host-side interface, the redirect target */
	__u32 identity;      /* security identity of the endpoint */
	__u16 endpoint_id;
	__u16 flags;         /* reserved, zero */
	__u8 mac[6];         /* the endpoint's own MAC */
	__u8 node_mac[6];    /* MAC of the host-side interface (its gateway) */
};
NP_ASSERT_SIZE(struct np_endpoint_info, 24);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct np_endpoint_key);
	__type(value, struct np_endpoint_info);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_endpoints SEC(".maps");

/* ---- ipcache: prefix -> identity, longest prefix wins ---- */

/* The first 32 data bits (ip_version and pad) are always part of the
 * prefix, so prefixlen = 32 + the address prefix length, and an IPv4 /0
 * never matches an IPv6 address. */
#define NP_IPCACHE_STATIC_PREFIX 32

struct np_ipcache_key {
	__u32 prefixlen;
	__u8 ip_version;
	__u8 pad[3];
	union np_addr addr;
};
NP_ASSERT_SIZE(struct np_ipcache_key, 24);

struct np_ipcache_info {
	__u32 identity;
	union np_addr tunnel_endpoint;
	__u8 tunnel_ip_version; /* 0: no tunnel endpoint, else 4 or 6 */
	__u8 flags;             /* ipcache.Flags */
	__u8 pad[2];
};
NP_ASSERT_SIZE(struct np_ipcache_info, 24);

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct np_ipcache_key);
	__type(value, struct np_ipcache_info);
	__uint(max_entries, 512000);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_ipcache SEC(".maps");

/* ---- conntrack ---- */

/* np_ct_entry.flags */
#define NP_CT_SEEN_REPLY  (1U << 0) /* a packet went the reverse way */
#define NP_CT_TX_CLOSING  (1U << 1) /* FIN seen from the originator */
#define NP_CT_RX_CLOSING  (1U << 2) /* FIN seen from the responder */
#define NP_CT_RST         (1U << 3) /* RST seen, either way */

struct np_ct_entry {
	__u64 packets_fwd;
	__u64 bytes_fwd;
	__u64 packets_rev;
	__u64 bytes_rev;
	__u32 expires;      /* CLOCK_MONOTONIC seconds; GC deletes after it */
	__u32 created;      /* CLOCK_MONOTONIC seconds */
	__u32 src_identity; /* originator's identity at creation */
	__u32 dst_identity; /* responder's identity at creation */
	__u32 flags;        /* NP_CT_* */
	__u16 endpoint_id;  /* endpoint whose program created the entry */
	__u8 tcp_flags_fwd; /* union of TCP flags seen from the originator */
	__u8 tcp_flags_rev; /* ... and from the responder */
	__u32 last_report_fwd; /* CLOCK_MONOTONIC seconds of the last trace report, */
	__u32 last_report_rev; /* each way (monitor aggregation, events.h) */
};
NP_ASSERT_SIZE(struct np_ct_entry, 64);

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct np_tuple);
	__type(value, struct np_ct_entry);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_conntrack SEC(".maps");

/* ---- IP fragments ---- */

/* Only the first fragment of a datagram carries its L4 header. The first
 * fragment records what the datapath read from it under the datagram's
 * identity, and the later ones replay it, so that every fragment gets the
 * first one's verdict (Cilium's fragment tracking, for IPv4 and IPv6). */
struct np_frag_key {
	union np_addr saddr;
	union np_addr daddr;
	__be32 id;         /* IPv4: the 16-bit identification, zero-extended */
	__u8 proto;        /* IPv4 protocol; IPv6: the fragment header's next header */
	__u8 ip_version;
	__u8 pad[2];
};
NP_ASSERT_SIZE(struct np_frag_key, 40);

struct np_frag_l4 {
	__be16 sport;
	__be16 dport;
	__be16 policy_port;
	__u8 proto;        /* the L4 protocol behind any IPv6 extension headers */
	__u8 tcp_flags;
};
NP_ASSERT_SIZE(struct np_frag_l4, 8);

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct np_frag_key);
	__type(value, struct np_frag_l4);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_frags SEC(".maps");

/* ---- per-endpoint policy ---- */

/* The key of Cilium's policy map (bpf/lib/policy.h). identity and egress
 * are always matched in full (40 bits); protocol and dport follow as an
 * L4 prefix of 0 (any), 8 (protocol, any port) or 8+n (port prefix /n).
 * Lookups use the full prefix NP_POLICY_FULL_PREFIX. */
#define NP_POLICY_STATIC_PREFIX 40
#define NP_POLICY_FULL_PREFIX (NP_POLICY_STATIC_PREFIX + 24)

struct np_policy_key {
	__u32 prefixlen;
	__u32 identity;  /* peer identity, 0 = any peer */
	__u8 egress;     /* 0 ingress, 1 egress */
	__u8 protocol;
	__be16 dport;    /* ICMP type for ICMP and ICMPv6 */
};
NP_ASSERT_SIZE(struct np_policy_key, 12);

/* np_policy_entry.flags */
#define NP_POLICY_DENY (1U << 0)

struct np_policy_entry {
	__be16 proxy_port;
	__u8 flags;               /* NP_POLICY_* */
	__u8 l4_prefix_len;       /* the key's prefixlen - 40, for precedence */
	__u8 proxy_port_priority;
	__u8 pad[3];
};
NP_ASSERT_SIZE(struct np_policy_entry, 8);

/* One policy map per endpoint, keyed by endpoint ID. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);
		__type(key, struct np_policy_key);
		__type(value, struct np_policy_entry);
		__uint(max_entries, 16384);
		__uint(map_flags, BPF_F_NO_PREALLOC);
	});
} np_policy SEC(".maps");

/* ---- counters ---- */

/* Index: hook << 8 | reason, reason 0 counting forwarded packets. */
#define NP_COUNTER_SLOTS 1024 /* four hooks (enum np_hook) */

struct np_counter {
	__u64 packets;
	__u64 bytes;
};
NP_ASSERT_SIZE(struct np_counter, 16);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct np_counter);
	__uint(max_entries, NP_COUNTER_SLOTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_counters SEC(".maps");

/* Events that found the ring buffer full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_events_lost SEC(".maps");

/* ---- events ---- */

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_events SEC(".maps");

#endif /* NP_MAPS_H */
