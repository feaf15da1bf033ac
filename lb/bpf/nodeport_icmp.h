/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * ICMP errors about translated flows, translated back so that the client
 * gets them (included by nodeport.c after its reply map and helpers).
 *
 * The errors are those Cilium's snat_v4_rev_nat/snat_v6_rev_nat translate:
 * ICMPv4 destination unreachable (codes 0-15, fragmentation needed among
 * them) and time exceeded (codes 0-1); ICMPv6 destination unreachable,
 * packet too big and time exceeded (codes 0-1). The quoted packet must be
 * TCP or UDP with its ports (8 bytes of L4 header, RFC 792's minimum).
 * The quoted packet is the one the backend received, so its reverse is a
 * reply tuple: in the node's NAT table (np_nat's ingress entry) for SNAT,
 * in np_np_rev for DNAT and DSR:
 *
 *  - SNAT (np_icmp_error with snat set, where replies arrive): the quote
 *    is node:NAT port -> backend; it becomes client -> frontend, the
 *    error's destination the client.
 *  - DNAT and DSR (snat clear, at tc egress where replies leave): the
 *    quote is client -> backend; it becomes client -> frontend.
 *
 * In both, an error whose source is the backend itself (port unreachable,
 * or the backend's own fragmentation needed) then comes from the
 * frontend, as the backend's replies do. Every checksum stays valid: the
 * quoted IPv4 header's, the quoted L4 header's when the quote holds it
 * (UDP always, TCP from 18 bytes on), the ICMP checksum and the outer
 * IPv4 header's. Anything else passes unchanged.
 */
#ifndef NP_NODEPORT_ICMP_H
#define NP_NODEPORT_ICMP_H

#define NP_ICMP_DEST_UNREACH 3
#define NP_ICMP_TIME_EXCEEDED 11
#define NP_NR_ICMP_UNREACH 15
#define NP_ICMPV6_DEST_UNREACH 1
#define NP_ICMPV6_PKT_TOOBIG 2
#define NP_ICMPV6_TIME_EXCEED 3
#define NP_IPPROTO_ICMP 1
#define NP_IPPROTO_ICMPV6 58

/* The lookup key and the entry found, off the stack: the programs that
 * call these functions use most of theirs. */
struct np_icmp_scratch {
	struct np_tuple k;
	struct np_rev r;
	struct np_nat_key nk;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct np_icmp_scratch);
	__uint(max_entries, 1);
} np_np_icmp_scratch SEC(".maps");

static __always_inline struct np_icmp_scratch *np_icmp_scratch(void)
{
	__u32 zero = 0;
	struct np_icmp_scratch *s = bpf_map_lookup_elem(&np_np_icmp_scratch, &zero);

	if (s)
		__builtin_memset(&s->k, 0, sizeof(s->k));
	return s;
}

/* np_icmp_xlate rewrites the quoted packet's source (dst clear) or
 * destination address and port to addr and port, and every checksum with
 * them. alen is 4 or 16; in is the quoted IP header, l4 its L4 header (8
 * bytes in bounds), l4csum its checksum or NULL, icsum the ICMP checksum.
 * For IPv4 the quoted IP checksum absorbs the address change, so the ICMP
 * checksum changes as the L4 checksum's pseudo-header does; ICMPv6 sees
 * the address bytes themselves. */
static __always_inline void np_icmp_xlate(void *in, int v6, __u8 *l4, __u16 *l4csum, __u16 *icsum,
					  int dst, const __u8 *addr, __be16 port)
{
	__u8 *field;
	if (v6)
		field = dst ? (__u8 *)&((struct ipv6hdr *)in)->daddr : (__u8 *)&((struct ipv6hdr *)in)->saddr;
	else
		field = dst ? (__u8 *)&((struct iphdr *)in)->daddr : (__u8 *)&((struct iphdr *)in)->saddr;

#pragma unroll
	for (int i = 0; i < 16; i += 4) {
		if (i > 0 && !v6)
			break;
		__u32 from = load32(field + i), to = load32(addr + i);
		if (!v6)
			csum_replace4(&((struct iphdr *)in)->check, from, to);
		if (l4csum) {
			csum_replace4(l4csum, from, to);
			/* IPv4: the quoted L4 checksum moved by -delta, nothing
			 * else in the quote did. IPv6: the address moved by
			 * delta and the L4 checksum by -delta. */
			if (!v6)
				csum_replace4(icsum, to, from);
		} else if (v6) {
			csum_replace4(icsum, from, to);
		}
		__builtin_memcpy(field + i, addr + i, 4);
	}
	__be16 *pp = dst ? (__be16 *)(l4 + 2) : (__be16 *)l4;
	__be16 old = *pp;
	if (l4csum)
		csum_replace2(l4csum, old, port); /* the port and the checksum cancel */
	else
		csum_replace2(icsum, old, port);
	*pp = port;
}

/* np_icmp_outer rewrites the error's own source (dst clear) or
 * destination: the IPv4 header checksum, or ICMPv6's pseudo-header. */
static __always_inline void np_icmp_outer(void *ip, int v6, __u16 *icsum, int dst, const __u8 *addr)
{
	__u8 *field;
	if (v6)
		field = dst ? (__u8 *)&((struct ipv6hdr *)ip)->daddr : (__u8 *)&((struct ipv6hdr *)ip)->saddr;
	else
		field = dst ? (__u8 *)&((struct iphdr *)ip)->daddr : (__u8 *)&((struct iphdr *)ip)->saddr;
#pragma unroll
	for (int i = 0; i < 16; i += 4) {
		if (i > 0 && !v6)
			break;
		__u32 from = load32(field + i), to = load32(addr + i);
		if (v6)
			csum_replace4(icsum, from, to);
		else
			csum_replace4(&((struct iphdr *)ip)->check, from, to);
		__builtin_memcpy(field + i, addr + i, 4);
	}
}

/* np_icmp_finish looks the quote's flow up and translates the error; v6 is
 * a constant in each caller. */
static __always_inline void np_icmp_finish(void *ip, int v6, void *in, __u8 *icmp, __u8 *l4, void *end,
					   struct np_icmp_scratch *s, int snat)
{
	struct np_tuple *k = &s->k;
	if (k->proto != IPPROTO_TCP_ && k->proto != IPPROTO_UDP_)
		return;
	if ((void *)(l4 + 8) > end)
		return;
	__builtin_memcpy(&k->sport, l4 + 2, 2);
	__builtin_memcpy(&k->dport, l4, 2);

	struct np_rev *r = &s->r;
	if (snat) {
		/* A SNAT flow's reply entry in the node's NAT table: the
		 * frontend (peer) and the client (addr). */
		struct np_nat_key *nk = &s->nk;
		nat_key(nk, k, NP_NAT_INGRESS);
		struct np_nat_entry *e = bpf_map_lookup_elem(&np_nat, nk);
		if (!e || !(e->flags & NP_NAT_F_REVDNAT))
			return;
		__builtin_memcpy(r->addr, e->peer, 16);
		r->port = e->peer_port;
		__builtin_memcpy(r->caddr, e->addr, 16);
		r->cport = e->port;
	} else {
		struct np_rev *rp = bpf_map_lookup_elem(&np_np_rev, k);
		if (!rp || rp->snat)
			return;
		__builtin_memcpy(r, rp, sizeof(*r));
	}

	__u16 *icsum = (__u16 *)(icmp + 2);
	__u16 *l4csum = 0;
	if (k->proto == IPPROTO_TCP_) {
		if ((void *)(l4 + 18) <= end)
			l4csum = (__u16 *)(l4 + 16);
	} else if (v6 || *(__u16 *)(l4 + 6)) {
		l4csum = (__u16 *)(l4 + 6);
	}
	/* The quote's destination, the backend, becomes the frontend; in
	 * SNAT mode its source, the node, the client. */
	np_icmp_xlate(in, v6, l4, l4csum, icsum, 1, r->addr, r->port);
	if (snat) {
		np_icmp_xlate(in, v6, l4, l4csum, icsum, 0, r->caddr, r->cport);
		np_icmp_outer(ip, v6, icsum, 1, r->caddr);
	}
	/* An error from the backend itself comes from the frontend. */
	__u8 *src = v6 ? (__u8 *)&((struct ipv6hdr *)ip)->saddr : (__u8 *)&((struct iphdr *)ip)->saddr;
	__u32 diff = load32(src) ^ load32(k->saddr);
	if (v6)
		diff |= (load32(src + 4) ^ load32(k->saddr + 4)) | (load32(src + 8) ^ load32(k->saddr + 8)) |
			(load32(src + 12) ^ load32(k->saddr + 12));
	if (!diff)
		np_icmp_outer(ip, v6, icsum, 0, r->addr);
}

static __always_inline void np_icmp4_error(void *data, void *end, int snat)
{
	struct iphdr *ip4 = data + ETH_HLEN;
	if ((void *)(ip4 + 1) > end || ip4->ihl < 5 || ip4->protocol != NP_IPPROTO_ICMP ||
	    (ip4->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return;
	__u8 *icmp = (void *)ip4 + ip4->ihl * 4;
	if ((void *)(icmp + 8) > end)
		return;
	if (!(icmp[0] == NP_ICMP_DEST_UNREACH && icmp[1] <= NP_NR_ICMP_UNREACH) &&
	    !(icmp[0] == NP_ICMP_TIME_EXCEEDED && icmp[1] <= 1))
		return;
	struct iphdr *q = (void *)(icmp + 8);
	if ((void *)(q + 1) > end || q->ihl < 5)
		return;
	struct np_icmp_scratch *s = np_icmp_scratch();
	if (!s)
		return;
	__builtin_memcpy(s->k.saddr, &q->daddr, 4);
	__builtin_memcpy(s->k.daddr, &q->saddr, 4);
	s->k.family = NP_FAMILY_V4;
	s->k.proto = q->protocol;
	np_icmp_finish(ip4, 0, q, icmp, (void *)q + q->ihl * 4, end, s, snat);
}

static __always_inline void np_icmp6_error(void *data, void *end, int snat)
{
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	if ((void *)(ip6 + 1) > end)
		return;
	__u8 nh;
	int frag, later;
	void *p4;
	if (np_ipv6_l4(ip6, end, &nh, &p4, &frag, &later) || nh != NP_IPPROTO_ICMPV6 || frag)
		return;
	__u8 *icmp = p4;
	if ((void *)(icmp + 8) > end)
		return;
	if (icmp[0] != NP_ICMPV6_DEST_UNREACH && icmp[0] != NP_ICMPV6_PKT_TOOBIG &&
	    !(icmp[0] == NP_ICMPV6_TIME_EXCEED && icmp[1] <= 1))
		return;
	struct ipv6hdr *q = (void *)(icmp + 8);
	if ((void *)(q + 1) > end)
		return;
	/* The quote's own extension headers are not walked: a quoted
	 * packet of a translated flow starts with its L4 header. */
	struct np_icmp_scratch *s = np_icmp_scratch();
	if (!s)
		return;
	s->k.proto = q->nexthdr;
	__builtin_memcpy(s->k.saddr, &q->daddr, 16);
	__builtin_memcpy(s->k.daddr, &q->saddr, 16);
	s->k.family = NP_FAMILY_V6;
	np_icmp_finish(ip6, 1, q, icmp, (void *)(q + 1), end, s, snat);
}

/* np_icmp_error translates the ICMP error in the packet, if it is one
 * about a flow of np_np_rev (snat: a SNAT flow; else DNAT or DSR). family
 * (a constant) limits it to ICMP (NP_FAMILY_V4) or ICMPv6 (NP_FAMILY_V6)
 * errors; 0 takes both. */
static __always_inline void np_icmp_error(void *data, void *end, int snat, int family)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return;
	if (eth->h_proto == bpf_htons(ETH_P_IP) && family != NP_FAMILY_V6)
		np_icmp4_error(data, end, snat);
	else if (eth->h_proto == bpf_htons(ETH_P_IPV6) && family != NP_FAMILY_V4)
		np_icmp6_error(data, end, snat);
}

/* The entries: global functions, which the verifier checks once on their
 * own instead of once per path of the program that calls them. One per
 * family for the north-south programs, which run per family (each checks
 * only its own family's code); np_icmp_skb, both families, for
 * np_nodeport_revnat. */
__noinline int np_icmp4_xdp(struct xdp_md *ctx, int snat)
{
	np_icmp_error((void *)(long)ctx->data, (void *)(long)ctx->data_end, snat, NP_FAMILY_V4);
	return 0;
}

__noinline int np_icmp6_xdp(struct xdp_md *ctx, int snat)
{
	np_icmp_error((void *)(long)ctx->data, (void *)(long)ctx->data_end, snat, NP_FAMILY_V6);
	return 0;
}

__noinline int np_icmp4_skb(struct __sk_buff *skb, int snat)
{
	np_icmp_error((void *)(long)skb->data, (void *)(long)skb->data_end, snat, NP_FAMILY_V4);
	return 0;
}

__noinline int np_icmp6_skb(struct __sk_buff *skb, int snat)
{
	np_icmp_error((void *)(long)skb->data, (void *)(long)skb->data_end, snat, NP_FAMILY_V6);
	return 0;
}

__noinline int np_icmp_skb(struct __sk_buff *skb, int snat)
{
	np_icmp_error((void *)(long)skb->data, (void *)(long)skb->data_end, snat, 0);
	return 0;
}

#endif /* NP_NODEPORT_ICMP_H */
