/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * parse.h turns a packet into the tuple the datapath decides on, or into
 * the reason it is dropped. It reads the L3 header with direct packet
 * access (pulling it into the linear area when needed) and everything
 * behind it with bpf_skb_load_bytes, which copes with any offset and with
 * non-linear skbs.
 */
#ifndef NP_PARSE_H
#define NP_PARSE_H

#include "maps.h"
#include "events.h"

#define NP_IPPROTO_HOPOPTS 0
#define NP_IPPROTO_ROUTING 43
#define NP_IPPROTO_FRAGMENT 44
#define NP_IPPROTO_ICMPV6 58
#define NP_IPPROTO_NONE 59
#define NP_IPPROTO_DSTOPTS 60

#define NP_TCP_FIN 0x01
#define NP_TCP_SYN 0x02
#define NP_TCP_RST 0x04
#define NP_TCP_ACK 0x10

/* IPv6 extension headers skipped before giving up. */
#define NP_IPV6_MAX_EXTHDRS 4

/* np_parse result besides 0 (parsed) and a drop reason (>= 130). */
#define NP_PARSE_PASS 1 /* link-local control traffic (ARP): pass untouched */

/* np_pkt.flags */
#define NP_PKT_ICMP_ERROR (1U << 0) /* an ICMP error: may relate to a connection */
#define NP_PKT_FIRST_FRAG (1U << 1) /* the first fragment of a datagram: np_frag_record it */
#define NP_PKT_ND_NS (1U << 2)      /* an ICMPv6 neighbour solicitation (icmp6.h) */

struct np_pkt {
	struct np_tuple tuple;
	__u32 len;          /* skb->len */
	__u32 l4_off;       /* offset of the L4 header */
	__be16 policy_port; /* dport, or the ICMP type, as the policy key wants it */
	__u8 tcp_flags;
	__u8 flags;         /* NP_PKT_* */
	__u8 frag_proto;    /* with NP_PKT_FIRST_FRAG: the fragment key's protocol */
	__be32 frag_id;     /* ... and its identification */
};

/* np_pull makes the first need bytes linear and returns the packet
 * pointers, or -1 when the packet is shorter than that. */
static __always_inline int np_pull(struct __sk_buff *skb, __u32 need, void **data, void **data_end)
{
	*data = (void *)(long)skb->data;
	*data_end = (void *)(long)skb->data_end;
	if (*data + need <= *data_end)
		return 0;
	if (skb->len < need || bpf_skb_pull_data(skb, need))
		return -1;
	*data = (void *)(long)skb->data;
	*data_end = (void *)(long)skb->data_end;
	return *data + need <= *data_end ? 0 : -1;
}

/* ICMP types that carry the header of the packet they complain about. */
static __always_inline int np_icmp4_is_error(__u8 type)
{
	return type == 3 /* dest unreachable */ || type == 4 /* source quench */ ||
	       type == 5 /* redirect */ || type == 11 /* time exceeded */ ||
	       type == 12 /* parameter problem */;
}

static __always_inline int np_icmp6_is_error(__u8 type)
{
	return type >= 1 && type <= 4; /* unreachable, too big, time exceeded, param */
}

/* np_parse_l4 fills ports, TCP flags and the policy port. end is where the
 * L3 payload ends. */
static __always_inline int np_parse_l4(struct __sk_buff *skb, struct np_pkt *p, __u32 end)
{
	__u32 off = p->l4_off;

	switch (p->tuple.proto) {
	case IPPROTO_TCP: {
		__u8 hdr[14];

		if (off + 20 > end || bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)))
			return DROP_CT_INVALID_HDR;
		__builtin_memcpy(&p->tuple.sport, &hdr[0], 2);
		__builtin_memcpy(&p->tuple.dport, &hdr[2], 2);
		p->tcp_flags = hdr[13];
		p->policy_port = p->tuple.dport;
		return 0;
	}
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__be16 ports[2];
		__u32 min = p->tuple.proto == IPPROTO_UDP ? 8 : 12;

		if (off + min > end || bpf_skb_load_bytes(skb, off, ports, sizeof(ports)))
			return DROP_CT_INVALID_HDR;
		p->tuple.sport = ports[0];
		p->tuple.dport = ports[1];
		p->policy_port = ports[1];
		return 0;
	}
	case IPPROTO_ICMP:
	case NP_IPPROTO_ICMPV6: {
		/* type, code, checksum, echo identifier */
		__u8 hdr[6];
		__be16 id;
		__u8 type;
		int v6 = p->tuple.proto == NP_IPPROTO_ICMPV6;

		if (off + 8 > end || bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)))
			return DROP_CT_INVALID_HDR;
		type = hdr[0];
		__builtin_memcpy(&id, &hdr[4], 2);
		p->policy_port = bpf_htons(type);
		if (v6 && type == 135)
			p->flags |= NP_PKT_ND_NS;
		if (type == (v6 ? ICMPV6_ECHO_REQUEST : ICMP_ECHO)) {
			p->tuple.sport = id;
		} else if (type == (v6 ? ICMPV6_ECHO_REPLY : ICMP_ECHOREPLY)) {
			p->tuple.dport = id;
		} else if (v6 ? np_icmp6_is_error(type) : np_icmp4_is_error(type)) {
			p->flags |= NP_PKT_ICMP_ERROR;
		}
		return 0;
	}
	}
	return DROP_CT_UNKNOWN_PROTO;
}

static __always_inline void np_frag_key_init(struct np_frag_key *k, const struct np_pkt *p,
					     __be32 id, __u8 proto)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->saddr = p->tuple.saddr;
	k->daddr = p->tuple.daddr;
	k->id = id;
	k->proto = proto;
	k->ip_version = p->tuple.ip_version;
}

/* np_frag_record keeps what the first fragment of a datagram said for the
 * fragments after it; np_admit calls it once the packet's addresses are
 * accepted as the endpoint's. ICMP errors are not kept: they are cut to fit
 * the minimum MTU (576 bytes for IPv4, 1280 for IPv6) and never need
 * fragmenting, so the rest of one is dropped. Should the update fail, the
 * later fragments are dropped as not found. */
static __always_inline void np_frag_record(const struct np_pkt *p)
{
	struct np_frag_key k;
	struct np_frag_l4 l4 = {
		.sport = p->tuple.sport,
		.dport = p->tuple.dport,
		.policy_port = p->policy_port,
		.proto = p->tuple.proto,
		.tcp_flags = p->tcp_flags,
	};

	if (!(p->flags & NP_PKT_FIRST_FRAG) || (p->flags & NP_PKT_ICMP_ERROR))
		return;
	np_frag_key_init(&k, p, p->frag_id, p->frag_proto);
	bpf_map_update_elem(&np_frags, &k, &l4, BPF_ANY);
}

/* np_frag_replay gives a later fragment its first fragment's L4 fields. */
static __always_inline int np_frag_replay(struct np_pkt *p, const struct np_frag_key *k)
{
	struct np_frag_l4 *l4 = bpf_map_lookup_elem(&np_frags, k);

	if (!l4)
		return DROP_FRAG_NOT_FOUND;
	p->tuple.proto = l4->proto;
	p->tuple.sport = l4->sport;
	p->tuple.dport = l4->dport;
	p->policy_port = l4->policy_port;
	p->tcp_flags = l4->tcp_flags;
	return 0;
}

static __always_inline int np_parse_ipv4(struct __sk_buff *skb, struct np_pkt *p)
{
	void *data, *data_end;
	struct np_frag_key k;
	struct iphdr *ip;
	__u32 hlen, tot;
	__be16 frag, id;

	if (np_pull(skb, ETH_HLEN + sizeof(struct iphdr), &data, &data_end))
		return DROP_INVALID;
	ip = data + ETH_HLEN;
	if (ip->version != 4 || ip->ihl < 5)
		return DROP_INVALID;
	hlen = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	if (tot < hlen || ETH_HLEN + tot > skb->len)
		return DROP_INVALID;
	frag = ip->frag_off & bpf_htons(IP_MF | IP_OFFSET);
	id = ip->id;

	p->tuple.ip_version = NP_IPV4;
	p->tuple.saddr.ip4 = ip->saddr;
	p->tuple.daddr.ip4 = ip->daddr;
	p->tuple.proto = ip->protocol;
	p->l4_off = ETH_HLEN + hlen;
	if (!frag)
		return np_parse_l4(skb, p, ETH_HLEN + tot);

	if (frag & bpf_htons(IP_OFFSET)) {
		np_frag_key_init(&k, p, (__be32)id, p->tuple.proto);
		return np_frag_replay(p, &k);
	}
	p->flags |= NP_PKT_FIRST_FRAG;
	p->frag_id = (__be32)id;
	p->frag_proto = p->tuple.proto;
	return np_parse_l4(skb, p, ETH_HLEN + tot);
}

static __always_inline int np_parse_ipv6(struct __sk_buff *skb, struct np_pkt *p)
{
	void *data, *data_end;
	struct np_frag_key k;
	struct ipv6hdr *ip6;
	__u32 off, end;
	__be32 frag_id = 0;
	__u8 nexthdr, frag_proto = 0;
	int i, frag = -1; /* -1: no fragment header, 0: atomic, 1: first fragment, 2: a later one */

	if (np_pull(skb, ETH_HLEN + sizeof(struct ipv6hdr), &data, &data_end))
		return DROP_INVALID;
	ip6 = data + ETH_HLEN;
	if (ip6->version != 6)
		return DROP_INVALID;
	end = ETH_HLEN + sizeof(struct ipv6hdr) + bpf_ntohs(ip6->payload_len);
	if (end > skb->len)
		return DROP_INVALID;

	p->tuple.ip_version = NP_IPV6;
	__builtin_memcpy(p->tuple.saddr.bytes, &ip6->saddr, 16);
	__builtin_memcpy(p->tuple.daddr.bytes, &ip6->daddr, 16);
	nexthdr = ip6->nexthdr;
	off = ETH_HLEN + sizeof(struct ipv6hdr);

#pragma unroll
	for (i = 0; i < NP_IPV6_MAX_EXTHDRS; i++) {
		__u8 ext[2]; /* next header, length */

		switch (nexthdr) {
		case NP_IPPROTO_HOPOPTS:
		case NP_IPPROTO_ROUTING:
		case NP_IPPROTO_DSTOPTS:
		case IPPROTO_AH:
			if (off + 8 > end || bpf_skb_load_bytes(skb, off, ext, sizeof(ext)))
				return DROP_INVALID_EXTHDR;
			/* AH counts 4-byte words less 2, the others 8-byte words less 1. */
			off += nexthdr == IPPROTO_AH ? ((__u32)ext[1] + 2) * 4 : ((__u32)ext[1] + 1) * 8;
			nexthdr = ext[0];
			continue;
		case NP_IPPROTO_FRAGMENT: {
			/* next header, reserved, offset << 3 | M, identification */
			__u8 fh[8];
			__be16 offlg;

			if (frag >= 0 || off + 8 > end || bpf_skb_load_bytes(skb, off, fh, sizeof(fh)))
				return DROP_INVALID_EXTHDR;
			__builtin_memcpy(&offlg, &fh[2], 2);
			__builtin_memcpy(&frag_id, &fh[4], 4);
			off += 8;
			nexthdr = fh[0];
			frag_proto = nexthdr;
			/* An atomic fragment (offset 0, no M flag) is a whole packet. */
			if (offlg & bpf_htons(0xfff8))
				frag = 2;
			else if (offlg & bpf_htons(1))
				frag = 1;
			else
				frag = 0;
			if (frag == 2)
				break;
			continue;
		}
		}
		break;
	}
	if (frag == 2) {
		/* Behind the fragment header is the middle of a datagram. */
		np_frag_key_init(&k, p, frag_id, frag_proto);
		p->l4_off = off;
		return np_frag_replay(p, &k);
	}
	switch (nexthdr) {
	case NP_IPPROTO_HOPOPTS:
	case NP_IPPROTO_ROUTING:
	case NP_IPPROTO_DSTOPTS:
	case IPPROTO_AH:
	case NP_IPPROTO_FRAGMENT:
		return DROP_INVALID_EXTHDR; /* too many */
	}
	p->tuple.proto = nexthdr;
	p->l4_off = off;
	if (frag == 1) {
		p->flags |= NP_PKT_FIRST_FRAG;
		p->frag_id = frag_id;
		p->frag_proto = frag_proto;
	}
	return np_parse_l4(skb, p, end);
}

/* np_parse returns 0 with p filled in, NP_PARSE_PASS for ARP, or the
 * reason to drop the packet. */
static __always_inline int np_parse(struct __sk_buff *skb, struct np_pkt *p)
{
	p->len = skb->len;
	switch (skb->protocol) {
	case bpf_htons(ETH_P_IP):
		return np_parse_ipv4(skb, p);
	case bpf_htons(ETH_P_IPV6):
		return np_parse_ipv6(skb, p);
	case bpf_htons(ETH_P_ARP):
		return NP_PARSE_PASS;
	}
	return DROP_UNKNOWN_L3;
}

#endif /* NP_PARSE_H */
