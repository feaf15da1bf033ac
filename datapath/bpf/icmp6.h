/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * icmp6.h answers an endpoint's neighbour solicitations, as Cilium's
 * bpf_lxc does (bpf/lib/icmp6.h, __icmp6_handle_ns): a solicitation for the
 * endpoint's gateway gets a neighbour advertisement with the router flag
 * from the datapath itself, one for any other target is dropped (Cilium's
 * ACTION_UNKNOWN_ICMP6_NS, DROP_UNKNOWN_TARGET, for endpoints). An
 * endpoint's only on-link neighbour is its gateway, which no interface
 * carries, so nothing else is there to answer. Every other neighbour
 * discovery and multicast listener message takes the path of any ICMPv6
 * message: address checks, conntrack and policy.
 */
#ifndef NP_ICMP6_H
#define NP_ICMP6_H

#include "parse.h"

#define NP_ICMP6_NS 135
#define NP_ICMP6_NA 136
#define NP_ICMP6_NA_ROUTER 0x80
#define NP_ICMP6_NA_SOLICITED 0x40
#define NP_ND_OPT_TARGET_LLADDR 2
/* An ND message arrives with hop limit 255 or was forwarded: RFC 4861 7.1.1. */
#define NP_ND_HOP_LIMIT 255
/* ICMPv6 header and target address of a solicitation or advertisement. */
#define NP_ND_MIN_LEN 24
/* The advertisement: ICMPv6 header, target, target link-layer option. */
#define NP_NA_LEN 32

/* fe80::1, the link-local gateway of every endpoint (see plumbing_linux.go). */
static __always_inline int np_is_gateway6(const __u8 *a)
{
	return a[0] == 0xfe && a[1] == 0x80 && a[15] == 1 &&
	       !(a[2] | a[3] | a[4] | a[5] | a[6] | a[7] | a[8] | a[9] | a[10] | a[11] | a[12] | a[13] |
		 a[14]);
}

/* np_fold_csum folds a bpf_csum_diff sum into the 16-bit checksum field. */
static __always_inline __u16 np_fold_csum(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/*
 * np_icmp6_answer_ns turns a neighbour solicitation for the gateway, sent
 * by the endpoint, into the gateway's advertisement (RFC 4861 7.2.4): from
 * the gateway to the soliciting address, or to all nodes with the solicited
 * flag clear when that is unspecified; node_mac is the gateway's MAC. It
 * returns 0 with the packet rewritten, to be sent back to the endpoint, or
 * the reason to drop it.
 */
static __always_inline int np_icmp6_answer_ns(struct __sk_buff *skb, const struct np_pkt *p,
					      const __u8 *node_mac)
{
	__u8 ns[NP_ND_MIN_LEN], eth_src[ETH_ALEN], hop_limit;
	__u32 icmp[NP_NA_LEN / 4] = {}, pseudo[10] = {}, hdr[2];
	struct ethhdr eth;
	__be16 plen;
	__u8 *na = (__u8 *)icmp, *ph = (__u8 *)pseudo;
	int solicited, i;
	__s64 sum;

	if (bpf_skb_load_bytes(skb, ETH_HLEN + 4, &plen, sizeof(plen)) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + 7, &hop_limit, sizeof(hop_limit)) ||
	    bpf_skb_load_bytes(skb, ETH_ALEN, eth_src, sizeof(eth_src)))
		return DROP_INVALID;
	/* Fragmented or short solicitations and forwarded ones are invalid. */
	if (p->flags & NP_PKT_FIRST_FRAG || hop_limit != NP_ND_HOP_LIMIT ||
	    p->l4_off + NP_ND_MIN_LEN > ETH_HLEN + sizeof(struct ipv6hdr) + bpf_ntohs(plen) ||
	    bpf_skb_load_bytes(skb, p->l4_off, ns, sizeof(ns)) || ns[1] != 0)
		return DROP_INVALID;
	if (!np_is_gateway6(&ns[8]))
		return DROP_UNKNOWN_TARGET;
	/* A solicitation from the unspecified address (duplicate address
	 * detection) is answered to all nodes, unsolicited. */
	solicited = (p->tuple.saddr.words[0] | p->tuple.saddr.words[1] | p->tuple.saddr.words[2] |
		     p->tuple.saddr.words[3]) != 0;

	/* The pseudo-header: source, destination, length, next header. */
	__builtin_memcpy(ph, &ns[8], 16);
	if (solicited) {
		__builtin_memcpy(ph + 16, p->tuple.saddr.bytes, 16);
	} else {
		ph[16] = 0xff;
		ph[17] = 0x02;
		ph[31] = 1; /* ff02::1 */
	}
	pseudo[8] = bpf_htonl(NP_NA_LEN);
	pseudo[9] = bpf_htonl(NP_IPPROTO_ICMPV6);

	na[0] = NP_ICMP6_NA;
	na[4] = NP_ICMP6_NA_ROUTER | (solicited ? NP_ICMP6_NA_SOLICITED : 0);
	__builtin_memcpy(&na[8], &ns[8], 16);
	na[24] = NP_ND_OPT_TARGET_LLADDR;
	na[25] = 1; /* in units of 8 bytes */
	for (i = 0; i < ETH_ALEN; i++)
		na[26 + i] = node_mac[i];
	sum = bpf_csum_diff(NULL, 0, pseudo, sizeof(pseudo), 0);
	if (sum < 0)
		return DROP_INVALID;
	sum = bpf_csum_diff(NULL, 0, icmp, sizeof(icmp), (__u32)sum);
	if (sum < 0)
		return DROP_INVALID;
	{
		__u16 csum = np_fold_csum(sum);

		__builtin_memcpy(&na[2], &csum, 2);
	}

	/* Version, traffic class, flow label; payload length, next header,
	 * hop limit. */
	hdr[0] = bpf_htonl(0x60000000);
	hdr[1] = bpf_htonl((NP_NA_LEN << 16) | (NP_IPPROTO_ICMPV6 << 8) | NP_ND_HOP_LIMIT);
	__builtin_memcpy(eth.h_dest, eth_src, ETH_ALEN);
	__builtin_memcpy(eth.h_source, node_mac, ETH_ALEN);
	eth.h_proto = bpf_htons(ETH_P_IPV6);

	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(struct ipv6hdr) + NP_NA_LEN, 0) ||
	    bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, hdr, sizeof(hdr), 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + 8, ph, 32, 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(struct ipv6hdr), icmp, sizeof(icmp), 0))
		return DROP_INVALID;
	return 0;
}

#endif /* NP_ICMP6_H */
