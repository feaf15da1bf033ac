/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * conntrack.h tracks connections in np_conntrack, one entry per connection
 * keyed by the tuple of its first packet. A packet whose tuple is a key
 * belongs to an established connection; one whose reversed tuple is a key
 * is a reply; an ICMP error about a tracked packet is related; anything
 * else is new and must pass policy before an entry is created.
 *
 * Entries carry an expiry in CLOCK_MONOTONIC seconds that every packet
 * pushes forward; userspace garbage-collects expired ones, and the LRU
 * evicts the oldest when the map is full.
 */
#ifndef NP_CONNTRACK_H
#define NP_CONNTRACK_H

#include "maps.h"
#include "parse.h"

enum np_ct_state {
	NP_CT_NEW = 0,
	NP_CT_ESTABLISHED = 1,
	NP_CT_REPLY = 2,
	NP_CT_RELATED = 3,
};

/* Lifetimes in seconds, set at load time from datapath.Config. The
 * defaults are Cilium's (bpf/node_config.h). */
volatile const __u32 np_ct_lifetime_tcp = 21600;
volatile const __u32 np_ct_lifetime_nontcp = 60;
volatile const __u32 np_ct_lifetime_syn = 60;
volatile const __u32 np_ct_lifetime_close = 10;

static __always_inline __u32 np_now_sec(void)
{
	/* Coarse time is enough for second-granular expiry and cheaper; it
	 * is CLOCK_MONOTONIC_COARSE, the same base as userspace's
	 * CLOCK_MONOTONIC. */
	return bpf_ktime_get_coarse_ns() / 1000000000ULL;
}

static __always_inline void np_tuple_reverse(const struct np_tuple *t, struct np_tuple *r)
{
	r->saddr = t->daddr;
	r->daddr = t->saddr;
	r->sport = t->dport;
	r->dport = t->sport;
	r->proto = t->proto;
	r->ip_version = t->ip_version;
	r->pad[0] = 0;
	r->pad[1] = 0;
}

static __always_inline __u32 np_ct_closing(__u32 flags)
{
	return (flags & NP_CT_RST) ||
	       ((flags & NP_CT_TX_CLOSING) && (flags & NP_CT_RX_CLOSING));
}

static __always_inline __u32 np_ct_lifetime(const struct np_pkt *p, __u32 flags)
{
	if (p->tuple.proto != IPPROTO_TCP)
		return np_ct_lifetime_nontcp;
	if (np_ct_closing(flags))
		return np_ct_lifetime_close;
	if (p->tcp_flags & NP_TCP_SYN)
		return np_ct_lifetime_syn;
	return np_ct_lifetime_tcp;
}

/* TCP flags of p as NP_CT_* bits, seen from the originator (reply = 0) or
 * the responder. */
static __always_inline __u32 np_ct_tcp_bits(const struct np_pkt *p, int reply)
{
	__u32 bits = 0;

	if (p->tuple.proto != IPPROTO_TCP)
		return 0;
	if (p->tcp_flags & NP_TCP_RST)
		bits |= NP_CT_RST;
	if (p->tcp_flags & NP_TCP_FIN)
		bits |= reply ? NP_CT_RX_CLOSING : NP_CT_TX_CLOSING;
	return bits;
}

/* np_ct_related looks up the connection an ICMP error is about: the header
 * it quotes is of a packet that went the other way, in either direction of
 * the connection. */
static __always_inline int np_ct_related(struct __sk_buff *skb, const struct np_pkt *p)
{
	struct np_tuple inner = {}, rev;
	__u32 off = p->l4_off + 8; /* the quoted header follows the ICMP header */
	__be16 ports[2] = {};

	inner.ip_version = p->tuple.ip_version;
	if (p->tuple.ip_version == NP_IPV4) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) || ip.ihl < 5)
			return 0;
		inner.saddr.ip4 = ip.saddr;
		inner.daddr.ip4 = ip.daddr;
		inner.proto = ip.protocol;
		off += ip.ihl * 4;
	} else {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
			return 0;
		__builtin_memcpy(inner.saddr.bytes, &ip6.saddr, 16);
		__builtin_memcpy(inner.daddr.bytes, &ip6.daddr, 16);
		inner.proto = ip6.nexthdr;
		off += sizeof(ip6);
	}

	switch (inner.proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
			return 0;
		inner.sport = ports[0];
		inner.dport = ports[1];
		break;
	case IPPROTO_ICMP:
	case NP_IPPROTO_ICMPV6: {
		__u8 hdr[6];
		__be16 id;
		int v6 = inner.proto == NP_IPPROTO_ICMPV6;

		if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)))
			return 0;
		__builtin_memcpy(&id, &hdr[4], 2);
		if (hdr[0] == (v6 ? ICMPV6_ECHO_REQUEST : ICMP_ECHO))
			inner.sport = id;
		else if (hdr[0] == (v6 ? ICMPV6_ECHO_REPLY : ICMP_ECHOREPLY))
			inner.dport = id;
		else
			return 0;
		break;
	}
	default:
		return 0;
	}

	if (bpf_map_lookup_elem(&np_conntrack, &inner))
		return 1;
	np_tuple_reverse(&inner, &rev);
	return bpf_map_lookup_elem(&np_conntrack, &rev) != NULL;
}

/* np_ct_lookup classifies p and returns the entry of an established
 * connection or a reply in *entry. */
static __always_inline int np_ct_lookup(struct __sk_buff *skb, const struct np_pkt *p,
					struct np_ct_entry **entry)
{
	struct np_ct_entry *e;
	struct np_tuple rev;

	e = bpf_map_lookup_elem(&np_conntrack, &p->tuple);
	if (e) {
		/* A fresh SYN on a closed tuple starts a new connection, which
		 * must pass today's policy rather than inherit the old verdict. */
		if (p->tuple.proto == IPPROTO_TCP && np_ct_closing(e->flags) &&
		    (p->tcp_flags & (NP_TCP_SYN | NP_TCP_ACK)) == NP_TCP_SYN)
			return NP_CT_NEW;
		*entry = e;
		return NP_CT_ESTABLISHED;
	}
	np_tuple_reverse(&p->tuple, &rev);
	e = bpf_map_lookup_elem(&np_conntrack, &rev);
	if (e) {
		*entry = e;
		return NP_CT_REPLY;
	}
	if ((p->flags & NP_PKT_ICMP_ERROR) && np_ct_related(skb, p))
		return NP_CT_RELATED;
	return NP_CT_NEW;
}

/* np_ct_update accounts p to its connection and pushes the expiry. */
static __always_inline void np_ct_update(struct np_ct_entry *e, const struct np_pkt *p,
					 int reply, __u32 now)
{
	__u32 bits = np_ct_tcp_bits(p, reply);
	__u32 flags, expires;

	if (reply) {
		__sync_fetch_and_add(&e->packets_rev, 1);
		__sync_fetch_and_add(&e->bytes_rev, p->len);
		bits |= NP_CT_SEEN_REPLY;
		if ((e->tcp_flags_rev | p->tcp_flags) != e->tcp_flags_rev)
			e->tcp_flags_rev |= p->tcp_flags;
	} else {
		__sync_fetch_and_add(&e->packets_fwd, 1);
		__sync_fetch_and_add(&e->bytes_fwd, p->len);
		if ((e->tcp_flags_fwd | p->tcp_flags) != e->tcp_flags_fwd)
			e->tcp_flags_fwd |= p->tcp_flags;
	}
	flags = e->flags;
	if ((flags | bits) != flags) {
		__sync_fetch_and_or(&e->flags, bits);
		flags |= bits;
	}
	/* Write only when the second changes: fewer dirty cache lines. */
	expires = now + np_ct_lifetime(p, flags);
	if (e->expires != expires)
		e->expires = expires;
}

/* np_ct_create creates the entry of a new connection; flags are extra
 * NP_CT_* flags (NP_CT_PROXY with its port, proxy.h). */
static __always_inline int np_ct_create(const struct np_pkt *p, __u32 src_identity,
					__u32 dst_identity, __u16 endpoint_id, __u32 now,
					__u32 flags)
{
	struct np_ct_entry e = {
		.packets_fwd = 1,
		.bytes_fwd = p->len,
		.created = now,
		.src_identity = src_identity,
		.dst_identity = dst_identity,
		.flags = np_ct_tcp_bits(p, 0) | flags,
		.endpoint_id = endpoint_id,
		.tcp_flags_fwd = p->tcp_flags,
		.last_report_fwd = now, /* a new connection is reported */
	};

	e.expires = now + np_ct_lifetime(p, e.flags);
	return bpf_map_update_elem(&np_conntrack, &p->tuple, &e, BPF_ANY);
}

#endif /* NP_CONNTRACK_H */
