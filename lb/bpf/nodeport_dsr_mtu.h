/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * DSR and the path MTU, as Cilium's dsr_set_opt4/6 with DSR ICMP errors:
 * a packet that the DSR option (8 bytes) or extension header (24 bytes)
 * would make larger than the MTU of the route to its backend is not
 * sent. The client gets an ICMP fragmentation needed (IPv4) or packet too
 * big (ICMPv6) from the frontend, with that MTU less the DSR overhead (but
 * not below the family's minimum MTU, np_dsr_adv_mtu) and a quote of its
 * packet as it sent it (IP header and 8 bytes), sent back out of the
 * interface it came in on (XDP_TX), and the packet counts under
 * DROP_FRAG_NEEDED (136), as Cilium's metrics count it. The MTU is the
 * kernel's answer for the route (bpf_fib_lookup with the grown length); a
 * packet without a route, or whose route the lookup cannot resolve, goes
 * on as before. Included by nodeport.c before its entry programs.
 */
#ifndef NP_NODEPORT_DSR_MTU_H
#define NP_NODEPORT_DSR_MTU_H

#define DROP_FRAG_NEEDED 136
#define NP_ICMP_FRAG_NEEDED 4
#define NP_ICMP_LEN_V4 (ETH_HLEN + 20 + 8 + 20 + 8)
#define NP_ICMP_LEN_V6 (ETH_HLEN + 40 + 8 + 40 + 8)

/* Scratch space off the stack, which the XDP program uses most of. */
struct np_dsr_scratch {
	struct np_dsr d;
	struct bpf_fib_lookup f;
	__u8 q[48]; /* the quote: IP header and 8 bytes */
	__u8 mac[ETH_ALEN * 2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct np_dsr_scratch);
	__uint(max_entries, 1);
} np_np_dsr_scratch SEC(".maps");

static __always_inline struct np_dsr *np_dsr_scratch(void)
{
	__u32 zero = 0;
	struct np_dsr_scratch *s = bpf_map_lookup_elem(&np_np_dsr_scratch, &zero);

	if (!s)
		return 0;
	__builtin_memset(&s->d, 0, sizeof(s->d));
	return &s->d;
}

/* np_dsr_mtu returns the MTU of the route the translated packet (to its
 * backend) takes when the DSR header would not fit it, else 0. */
static __noinline __u32 np_dsr_mtu(struct xdp_md *ctx, const struct np_dsr *d)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct np_dsr_scratch *s = bpf_map_lookup_elem(&np_np_dsr_scratch, &zero);
	if (!s)
		return 0;
	struct bpf_fib_lookup *fp = &s->f;
	__builtin_memset(fp, 0, sizeof(*fp));
#define f (*fp)

	f.ifindex = ctx->ingress_ifindex;
	if (d->family == NP_FAMILY_V4) {
		struct iphdr *ip = data + ETH_HLEN;
		if ((void *)(ip + 1) > end)
			return 0;
		f.family = AF_INET;
		f.l4_protocol = ip->protocol;
		f.tot_len = bpf_ntohs(ip->tot_len) + DSR_IPV4_OPT_LEN;
		f.ipv4_src = ip->saddr;
		f.ipv4_dst = ip->daddr;
	} else {
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		if ((void *)(ip6 + 1) > end)
			return 0;
		f.family = AF_INET6;
		f.l4_protocol = ip6->nexthdr;
		f.tot_len = 40 + bpf_ntohs(ip6->payload_len) + DSR_IPV6_EXT_LEN;
		__builtin_memcpy(f.ipv6_src, &ip6->saddr, 16);
		__builtin_memcpy(f.ipv6_dst, &ip6->daddr, 16);
	}
	if (bpf_fib_lookup(ctx, fp, sizeof(*fp), 0) != BPF_FIB_LKUP_RET_FRAG_NEEDED)
		return 0;
	return f.mtu_result ? f.mtu_result : 1;
#undef f
}

/* The smallest MTU the client may be told: a host does not go below it
 * (IPv4: RFC 791's 68; IPv6: RFC 8200's 1280, below which RFC 8201's
 * receivers discard a packet too big). */
#define NP_MIN_MTU_V4 68
#define NP_MIN_MTU_V6 1280

/* np_dsr_adv_mtu is the MTU the client is told: the route's less the DSR
 * overhead, but not below the family's minimum. That is also the answer
 * for a route MTU no larger than the overhead (and for the 1 np_dsr_mtu
 * returns when the lookup gave no MTU), where the subtraction would wrap
 * and tell the client an MTU of nearly 64K or 4G. */
static __always_inline __u32 np_dsr_adv_mtu(__u32 mtu, __u32 overhead, __u32 min)
{
	return mtu >= overhead + min ? mtu - overhead : min;
}

/* np_dsr_too_big turns the packet, translated to its backend already,
 * into the ICMP error for its client and returns XDP_TX, or XDP_DROP if it
 * cannot. */
static __noinline int np_dsr_too_big(struct xdp_md *ctx, const struct np_dsr *d, __u32 mtu)
{
	void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct np_dsr_scratch *s = bpf_map_lookup_elem(&np_np_dsr_scratch, &zero);
	int v6 = d->family == NP_FAMILY_V6;
	if (!s)
		return XDP_DROP;
	__u8 *q = s->q, *mac = s->mac;

	count_drop(DROP_FRAG_NEEDED);
	if (data + ETH_HLEN + 48 > end)
		return XDP_DROP;
	__builtin_memcpy(mac, data, sizeof(s->mac));
	__builtin_memcpy(q, data + ETH_HLEN, sizeof(s->q));

	/* Undo the translation in the quote: the client sent to the
	 * frontend. */
	if (!v6) {
		struct iphdr *qi = (void *)q;
		if (qi->ihl != 5)
			return XDP_DROP;
		__u32 from = qi->daddr, to = load32(d->addr);
		__u16 *ports = (void *)(q + 20);
		csum_replace4(&qi->check, from, to);
		if (qi->protocol == IPPROTO_UDP_ && ports[3]) {
			csum_replace4(&ports[3], from, to);
			csum_replace2(&ports[3], ports[1], d->port);
		}
		qi->daddr = to;
		ports[1] = d->port;
	} else {
		struct ipv6hdr *qi = (void *)q;
		__u16 *ports = (void *)(q + 40);
		int l4 = qi->nexthdr == IPPROTO_TCP_ || qi->nexthdr == IPPROTO_UDP_;
#pragma unroll
		for (int i = 0; i < 16; i += 4) {
			if (l4 && qi->nexthdr == IPPROTO_UDP_)
				csum_replace4(&ports[3], load32((__u8 *)&qi->daddr + i), load32(d->addr + i));
		}
		__builtin_memcpy(&qi->daddr, d->addr, 16);
		if (l4) {
			if (qi->nexthdr == IPPROTO_UDP_)
				csum_replace2(&ports[3], ports[1], d->port);
			ports[1] = d->port;
		}
	}

	/* Shrink the packet to the error's length and write it. */
	int len = v6 ? NP_ICMP_LEN_V6 : NP_ICMP_LEN_V4;
	if (bpf_xdp_adjust_tail(ctx, len - (int)(end - data)))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if (data + NP_ICMP_LEN_V4 > end)
		return XDP_DROP;
	struct ethhdr *eth = data;
	__builtin_memcpy(eth->h_dest, mac + ETH_ALEN, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);

	if (!v6) {
		struct iphdr *ip = data + ETH_HLEN;
		struct iphdr *qi = (void *)q;
		__u8 *icmp = (void *)(ip + 1);
		ip->version = 4;
		ip->ihl = 5;
		ip->tos = 0;
		ip->tot_len = bpf_htons(20 + 8 + 28);
		ip->id = 0;
		ip->frag_off = bpf_htons(0x4000); /* DF */
		ip->ttl = 64;
		ip->protocol = NP_IPPROTO_ICMP;
		ip->saddr = load32(d->addr);
		ip->daddr = qi->saddr;
		ip4_csum(ip, 10);
		icmp[0] = NP_ICMP_DEST_UNREACH;
		icmp[1] = NP_ICMP_FRAG_NEEDED;
		*(__u16 *)(icmp + 2) = 0;
		*(__u16 *)(icmp + 4) = 0;
		*(__be16 *)(icmp + 6) = bpf_htons(np_dsr_adv_mtu(mtu, DSR_IPV4_OPT_LEN, NP_MIN_MTU_V4));
		__builtin_memcpy(icmp + 8, q, 28);
		__u32 sum = 0;
#pragma unroll
		for (int i = 0; i < 36; i += 2)
			sum += *(__u16 *)(icmp + i);
		*(__u16 *)(icmp + 2) = ~csum_fold32(sum);
		return XDP_TX;
	}
	if (data + NP_ICMP_LEN_V6 > end)
		return XDP_DROP;
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct ipv6hdr *qi = (void *)q;
	__u8 *icmp = (void *)(ip6 + 1);
	ip6->version = 6;
	ip6->priority = 0;
	__builtin_memset(ip6->flow_lbl, 0, 3);
	ip6->payload_len = bpf_htons(8 + 48);
	ip6->nexthdr = NP_IPPROTO_ICMPV6;
	ip6->hop_limit = 64;
	__builtin_memcpy(&ip6->saddr, d->addr, 16);
	__builtin_memcpy(&ip6->daddr, &qi->saddr, 16);
	icmp[0] = NP_ICMPV6_PKT_TOOBIG;
	icmp[1] = 0;
	*(__u16 *)(icmp + 2) = 0;
	*(__be32 *)(icmp + 4) = bpf_htonl(np_dsr_adv_mtu(mtu, DSR_IPV6_EXT_LEN, NP_MIN_MTU_V6));
	__builtin_memcpy(icmp + 8, q, 48);
	/* The ICMPv6 checksum covers a pseudo-header: both addresses, the
	 * length and the next header. */
	__u32 sum = bpf_htons(8 + 48) + bpf_htons(NP_IPPROTO_ICMPV6);
#pragma unroll
	for (int i = 0; i < 16; i += 2)
		sum += *(__u16 *)((__u8 *)&ip6->saddr + i) + *(__u16 *)((__u8 *)&ip6->daddr + i);
#pragma unroll
	for (int i = 0; i < 56; i += 2)
		sum += *(__u16 *)(icmp + i);
	*(__u16 *)(icmp + 2) = ~csum_fold32(sum);
	return XDP_TX;
}

/* np_dsr_out sends a packet nodeport_ingress translated for DSR: with
 * the DSR header, or, too big for it, as the client's ICMP error. Inlined:
 * Linux 6.1 rounds every frame of a call chain up to 32 bytes, and
 * main + np_dsr_out + np_dsr_too_big would pass 512. */
static __always_inline int np_dsr_out(struct xdp_md *ctx, const struct np_dsr *d)
{
	__u32 mtu = np_dsr_mtu(ctx, d);

	return mtu ? np_dsr_too_big(ctx, d, mtu) : dsr_push(ctx, d);
}

#endif /* NP_NODEPORT_DSR_MTU_H */
