/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * proxy.h redirects connections whose policy entry carries a proxy port to
 * the L7 proxy listening on that port in the node's namespace, as Cilium's
 * bpf-tproxy does (bpf/lib/proxy.h):
 *
 *   - the first packet (a TCP SYN, every UDP datagram) is assigned to the
 *     proxy's socket with bpf_sk_assign: a TCP listener or UDP socket
 *     bound to the wildcard address and the proxy port with IP_TRANSPARENT,
 *     found with bpf_skc_lookup_tcp / bpf_sk_lookup_udp under the packet's
 *     own addresses and the proxy port;
 *   - every packet of the connection gets skb->mark NP_MARK_TO_PROXY, which
 *     the node's routing (package proxy sets it up: "fwmark 0x200/0xf00
 *     lookup 2004" with "local default dev lo" in table 2004) delivers
 *     locally although its destination is not the node's. A TCP packet
 *     after the SYN reaches the proxy's accepted socket by the kernel's own
 *     lookup: that socket's local address is the original destination.
 *
 * The connection's conntrack entry records the proxy port in its flags
 * (NP_CT_PROXY, bits 16-31), so the packets after the first need no policy
 * lookup. Replies leave the proxy's socket with the original destination
 * as their source and are the entry's replies at np_to_endpoint.
 *
 * The proxy's own upstream connection carries the source's identity in its
 * socket mark (SO_MARK), Cilium's encoding: magic in bits 8-11, the
 * identity's low 16 bits in bits 16-31 and bits 16-23 in bits 0-7.
 *   NP_MARK_FROM_PROXY_INGRESS: the destination's ingress policy was
 *       decided when the connection was redirected (local destination) and
 *       its L7 part by the proxy; np_to_endpoint does not decide it again.
 *   NP_MARK_FROM_PROXY_EGRESS: only the source's egress policy was; the
 *       destination's ingress policy is decided as for any packet, with the
 *       identity from the mark as the source.
 * Only a process with CAP_NET_ADMIN in the node's namespace can set a
 * socket mark, and packets from the network never carry one, so the mark
 * is trusted as Cilium trusts it.
 */
#ifndef NP_PROXY_H
#define NP_PROXY_H

#include "maps.h"
#include "parse.h"

#define NP_MARK_MAGIC_MASK          0x0F00
#define NP_MARK_TO_PROXY            0x0200 /* Cilium's MARK_MAGIC_TO_PROXY */
#define NP_MARK_FROM_PROXY_INGRESS  0x0A00 /* MARK_MAGIC_PROXY_INGRESS */
#define NP_MARK_FROM_PROXY_EGRESS   0x0B00 /* MARK_MAGIC_PROXY_EGRESS */

/* np_ct_entry.flags: the connection is redirected to the proxy port in
 * bits 16-31. */
#define NP_CT_PROXY            (1U << 4)
#define NP_CT_PROXY_PORT_SHIFT 16

static __always_inline __u32 np_mark_identity(__u32 mark)
{
	return ((mark >> 16) & 0xFFFF) | ((mark & 0xFF) << 16);
}

/* np_proxy_mark returns NP_MARK_FROM_PROXY_* of a packet, or 0. */
static __always_inline __u32 np_proxy_mark(const struct __sk_buff *skb)
{
	__u32 magic = skb->mark & NP_MARK_MAGIC_MASK;

	if (magic == NP_MARK_FROM_PROXY_INGRESS || magic == NP_MARK_FROM_PROXY_EGRESS)
		return magic;
	return 0;
}

/* np_proxy_assign assigns the packet to the proxy's socket on proxy_port
 * and returns 0, or the drop reason. */
static __always_inline __u8 np_proxy_assign(struct __sk_buff *skb, const struct np_pkt *p,
					    __u16 proxy_port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 len;
	long err;

	if (p->tuple.ip_version == NP_IPV4) {
		t.ipv4.saddr = p->tuple.saddr.ip4;
		t.ipv4.daddr = p->tuple.daddr.ip4;
		t.ipv4.sport = p->tuple.sport;
		t.ipv4.dport = bpf_htons(proxy_port);
		len = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, p->tuple.saddr.bytes, 16);
		__builtin_memcpy(t.ipv6.daddr, p->tuple.daddr.bytes, 16);
		t.ipv6.sport = p->tuple.sport;
		t.ipv6.dport = bpf_htons(proxy_port);
		len = sizeof(t.ipv6);
	}
	if (p->tuple.proto == IPPROTO_TCP)
		sk = (struct bpf_sock *)bpf_skc_lookup_tcp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_sk_lookup_udp(skb, &t, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return DROP_PROXY_LOOKUP_FAILED;
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return DROP_PROXY_SET_FAILED;
	return 0;
}

/* np_proxy_redirect sends a packet of a redirected connection to the
 * proxy: the mark for the node's routing, and for the first packet of a
 * TCP connection and every UDP datagram the socket assignment. It returns
 * 0 or the drop reason. */
static __always_inline __u8 np_proxy_redirect(struct __sk_buff *skb, const struct np_pkt *p,
					      __u16 proxy_port)
{
	__u8 reason;

	switch (p->tuple.proto) {
	case IPPROTO_TCP:
		if ((p->tcp_flags & (NP_TCP_SYN | NP_TCP_ACK)) != NP_TCP_SYN)
			break;
		/* fall through */
	case IPPROTO_UDP:
		reason = np_proxy_assign(skb, p, proxy_port);
		if (reason)
			return reason;
		break;
	default:
		return DROP_PROXY_UNKNOWN_PROTO;
	}
	skb->mark = NP_MARK_TO_PROXY;
	return 0;
}

#endif /* NP_PROXY_H */
