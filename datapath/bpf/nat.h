/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * BPF masquerading, as Cilium's SNAT on the native device: two programs
 * on the node's external interface, over the node's one NAT table
 * (np_nat, internal/bpf/include/np_nat.h, shared with lb's SNAT mode).
 *
 *   np_nat_egress   tc egress: a TCP, UDP or ICMP echo request packet,
 *                   IPv4 or IPv6, from a local endpoint to an address
 *                   outside the excluded prefixes (the cluster's native
 *                   CIDR) leaves with the node's address of its family as
 *                   source and a port (echo identifier) the NAT table
 *                   allocated for its flow. No free port, or a full
 *                   table: dropped, counted in np_nat_drops under
 *                   DROP_NAT_NO_MAPPING. A reply of a connection the
 *                   endpoint accepted (conntrack) keeps its address.
 *   np_nat_ingress  tc ingress: a packet to the node's address whose
 *                   reverse flow the NAT table knows is translated back to
 *                   the endpoint's address and port (a service flow of
 *                   lb's SNAT mode also back from the frontend, when lb's
 *                   program did not run first); anything else (the node's
 *                   own traffic) passes untouched.
 *
 * ICMP errors about translated flows are translated back too
 * (np_nat_icmp_error). IPv4 fragments and IPv6 extension headers are not
 * translated. Included by datapath.c after its helpers.
 */

#ifndef NP_NAT_H
#define NP_NAT_H

#define NP_NAT_PINNING LIBBPF_PIN_BY_NAME
#include "np_csum.h"
#include "np_nat.h"

#define NP_DROP_NAT_NO_MAPPING 167 /* Cilium's DROP_NAT_NO_MAPPING */
#define NP_DROP_INVALID 134        /* Cilium's DROP_INVALID: a rewrite failed */

struct np_nat_config {
	__be32 address; /* the node's IPv4 address; 0: IPv4 masquerading off */
	__u32 flags;    /* reserved */
	__u8 address6[16]; /* the node's IPv6 address; zero: IPv6 masquerading off */
};
NP_ASSERT_SIZE(struct np_nat_config, 24);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct np_nat_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_nat_config SEC(".maps");

/* Destinations that are never masqueraded (the cluster's native CIDR):
 * prefixlen counts 32 bits of family and pad before the address. */
struct np_nat_exclude_key {
	__u32 prefixlen;
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};
NP_ASSERT_SIZE(struct np_nat_exclude_key, 24);

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct np_nat_exclude_key);
	__type(value, __u8);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_nat_exclude SEC(".maps");

/* Drops of the NAT programs by reason (Cilium's numbers). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 256);
} np_nat_drops SEC(".maps");

static __always_inline int np_nat_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&np_nat_drops, &reason);

	if (n)
		*n += 1;
	return TC_ACT_SHOT;
}

/* The parts of a packet NAT reads. */
struct np_nat_pkt {
	__u8 saddr[16], daddr[16];
	__be16 sport, dport; /* ICMP echo: the identifier on the node's side */
	__u8 proto, family, tcpflags;
	__u32 l4off;
};

/* np_nat_parse reads an unfragmented IPv4 or IPv6 (no extension headers)
 * TCP or UDP packet, or an ICMP echo request (egress) or reply (ingress);
 * -1 for anything else, which NAT leaves alone (ingress: unless it is an
 * ICMP error, np_nat_icmp_error). */
static __always_inline int np_nat_parse(struct __sk_buff *skb, struct np_nat_pkt *p, int egress)
{
	__u8 icmp_echo;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
			return -1;
		if (ip.version != 4 || ip.ihl < 5)
			return -1;
		if (bpf_ntohs(ip.frag_off) & (IP_MF | IP_OFFSET))
			return -1;
		p->family = NP_NAT_FAMILY_V4;
		p->proto = ip.protocol;
		p->l4off = ETH_HLEN + ip.ihl * 4;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
		icmp_echo = egress ? 8 : 0;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0)
			return -1;
		p->family = NP_NAT_FAMILY_V6;
		p->proto = ip6.nexthdr;
		p->l4off = ETH_HLEN + sizeof(ip6);
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		icmp_echo = egress ? 128 : 129;
	} else {
		return -1;
	}
	switch (p->proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP: {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, p->l4off, ports, sizeof(ports)) < 0)
			return -1;
		p->sport = ports[0];
		p->dport = ports[1];
		if (p->proto == IPPROTO_TCP && bpf_skb_load_bytes(skb, p->l4off + 13, &p->tcpflags, 1) < 0)
			return -1;
		return 0;
	}
	case IPPROTO_ICMP:
	case NP_NAT_ICMPV6: {
		__u8 type;
		__be16 id;

		if ((p->proto == IPPROTO_ICMP) != (p->family == NP_NAT_FAMILY_V4))
			return -1;
		if (bpf_skb_load_bytes(skb, p->l4off, &type, 1) < 0 ||
		    bpf_skb_load_bytes(skb, p->l4off + 4, &id, 2) < 0)
			return -1;
		if (type != icmp_echo)
			return -1;
		p->sport = egress ? id : 0;
		p->dport = egress ? 0 : id;
		return 0;
	}
	}
	return -1;
}

static __always_inline const struct np_nat_config *np_nat_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&np_nat_config, &zero);
}

/* np_nat_node puts the node's address of the packet's family in node; 0
 * if masquerading is off for it. */
static __always_inline int np_nat_node(const struct np_nat_config *cfg, __u8 family, __u8 *node)
{
	__builtin_memset(node, 0, 16);
	if (family == NP_NAT_FAMILY_V4) {
		__builtin_memcpy(node, &cfg->address, 4);
		return cfg->address != 0;
	}
	__builtin_memcpy(node, cfg->address6, 16);
	return (np_nat_load32(node) | np_nat_load32(node + 4) | np_nat_load32(node + 8) | np_nat_load32(node + 12)) != 0;
}

/* np_nat_is_reply says whether p answers a connection the endpoint
 * accepted: its reversed tuple is a conntrack key (conntrack.h keys an
 * entry by the tuple of the connection's first packet). Such a packet
 * keeps the endpoint's address, which is the one its peer connected to (a
 * client outside the cluster routed to the pod's address, or a NodePort
 * client whose packets lb translated to a local backend): masquerading it
 * would answer from an address the peer never used. Cilium's SNAT skips
 * replies the same way. */
static __always_inline int np_nat_is_reply(const struct np_nat_pkt *p)
{
	struct np_tuple rev = {};

	__builtin_memcpy(rev.saddr.bytes, p->daddr, 16);
	__builtin_memcpy(rev.daddr.bytes, p->saddr, 16);
	rev.sport = p->dport;
	rev.dport = p->sport;
	rev.proto = p->proto;
	rev.ip_version = p->family == NP_NAT_FAMILY_V4 ? NP_IPV4 : NP_IPV6;
	return bpf_map_lookup_elem(&np_conntrack, &rev) != NULL;
}

SEC("tc")
int np_nat_egress(struct __sk_buff *skb)
{
	const struct np_nat_config *cfg = np_nat_config_get();
	struct np_nat_exclude_key ex = {};
	struct np_nat_scratch *s;
	struct np_nat_entry *e;
	struct np_nat_pkt p = {};
	union np_addr src;
	__u8 node[16];
	__be16 port;

	if (!cfg || np_nat_parse(skb, &p, 1) || !np_nat_node(cfg, p.family, node))
		return TC_ACT_OK;
	if (!__builtin_memcmp(p.saddr, node, 16))
		return TC_ACT_OK;
	__builtin_memcpy(src.bytes, p.saddr, 16);
	if (!np_lookup_endpoint(&src, p.family == NP_NAT_FAMILY_V4 ? NP_IPV4 : NP_IPV6))
		return TC_ACT_OK; /* only local endpoints */
	ex.prefixlen = 32 + (p.family == NP_NAT_FAMILY_V4 ? 32 : 128);
	ex.family = p.family;
	__builtin_memcpy(ex.addr, p.daddr, 16);
	if (bpf_map_lookup_elem(&np_nat_exclude, &ex))
		return TC_ACT_OK;
	if (np_nat_is_reply(&p))
		return TC_ACT_OK;

	s = np_nat_scratch_get();
	if (!s)
		return np_nat_drop(NP_DROP_NAT_NO_MAPPING);
	__builtin_memcpy(s->fwd.saddr, p.saddr, 16);
	__builtin_memcpy(s->fwd.daddr, p.daddr, 16);
	s->fwd.sport = p.sport;
	s->fwd.dport = p.dport;
	s->fwd.proto = p.proto;
	s->fwd.family = p.family;
	s->fwd.dir = NP_NAT_EGRESS;
	e = bpf_map_lookup_elem(&np_nat, &s->fwd);
	if (e && !__builtin_memcmp(e->addr, node, 16)) {
		port = e->port;
		np_nat_touch(e, p.tcpflags);
	} else {
		__builtin_memcpy(s->back.addr, p.saddr, 16);
		s->back.port = p.sport;
		port = np_nat_create(s, node);
		if (!port)
			return np_nat_drop(NP_DROP_NAT_NO_MAPPING);
	}
	if (np_nat_rewrite_skb(skb, p.family, p.proto, p.l4off, 0, p.saddr, node, p.sport, port))
		return np_nat_drop(NP_DROP_INVALID);
	return TC_ACT_OK;
}

/* np_nat_icmp_error translates an ICMP error (IPv4 destination
 * unreachable, time exceeded, parameter problem; ICMPv6 destination
 * unreachable, packet too big, time exceeded, parameter problem) about a
 * translated flow back to the endpoint, as Cilium's SNAT does: the outer
 * destination becomes the endpoint, and the quoted packet (which left with
 * the node's address and port) gets the endpoint's address and port back,
 * with the ICMP checksum and the quoted IPv4 header checksum updated. The
 * quoted L4 checksum is left alone (it is often cut off, and no stack
 * checks it). Anything else passes untouched. */
static __always_inline int np_nat_icmp_error(struct __sk_buff *skb, const struct np_nat_config *cfg)
{
	struct np_nat_key key = {};
	struct np_nat_entry *e, r;
	__u8 node[16], outer_dst[16] = {}, type, iproto, family;
	__u32 l4off, in_l3, in_l4, in_src, csum;
	__be16 iports[2], from_port;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip, in;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0 || ip.version != 4 || ip.ihl < 5 ||
		    ip.protocol != IPPROTO_ICMP || (bpf_ntohs(ip.frag_off) & (IP_MF | IP_OFFSET)))
			return TC_ACT_OK;
		l4off = ETH_HLEN + ip.ihl * 4;
		if (bpf_skb_load_bytes(skb, l4off, &type, 1) < 0 || (type != 3 && type != 11 && type != 12))
			return TC_ACT_OK;
		in_l3 = l4off + 8;
		if (bpf_skb_load_bytes(skb, in_l3, &in, sizeof(in)) < 0 || in.version != 4 || in.ihl < 5)
			return TC_ACT_OK;
		family = NP_NAT_FAMILY_V4;
		__builtin_memcpy(outer_dst, &ip.daddr, 4);
		iproto = in.protocol;
		in_l4 = in_l3 + in.ihl * 4;
		in_src = in_l3 + offsetof(struct iphdr, saddr);
		__builtin_memcpy(key.saddr, &in.daddr, 4);
		__builtin_memcpy(key.daddr, &in.saddr, 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6, in6;

		if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip6, sizeof(ip6)) < 0 || ip6.nexthdr != NP_NAT_ICMPV6)
			return TC_ACT_OK;
		l4off = ETH_HLEN + sizeof(ip6);
		if (bpf_skb_load_bytes(skb, l4off, &type, 1) < 0 || type < 1 || type > 4)
			return TC_ACT_OK;
		in_l3 = l4off + 8;
		if (bpf_skb_load_bytes(skb, in_l3, &in6, sizeof(in6)) < 0)
			return TC_ACT_OK;
		family = NP_NAT_FAMILY_V6;
		__builtin_memcpy(outer_dst, &ip6.daddr, 16);
		iproto = in6.nexthdr;
		in_l4 = in_l3 + sizeof(in6);
		in_src = in_l3 + offsetof(struct ipv6hdr, saddr);
		__builtin_memcpy(key.saddr, &in6.daddr, 16);
		__builtin_memcpy(key.daddr, &in6.saddr, 16);
	} else {
		return TC_ACT_OK;
	}
	/* To the node, about a packet that left from the node. */
	if (!np_nat_node(cfg, family, node) || __builtin_memcmp(outer_dst, node, 16) ||
	    __builtin_memcmp(key.daddr, node, 16))
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, in_l4, iports, sizeof(iports)) < 0)
		return TC_ACT_OK;
	switch (iproto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		key.sport = iports[1];
		key.dport = iports[0];
		from_port = iports[0];
		break;
	case IPPROTO_ICMP:
	case NP_NAT_ICMPV6: {
		__u8 itype;
		__be16 id;

		/* The quoted packet is an echo request: its identifier. */
		if (bpf_skb_load_bytes(skb, in_l4, &itype, 1) < 0 || bpf_skb_load_bytes(skb, in_l4 + 4, &id, 2) < 0 ||
		    itype != (family == NP_NAT_FAMILY_V4 ? 8 : 128) || (iproto == IPPROTO_ICMP) != (family == NP_NAT_FAMILY_V4))
			return TC_ACT_OK;
		key.sport = 0;
		key.dport = id;
		from_port = id;
		break;
	}
	default:
		return TC_ACT_OK;
	}
	key.proto = iproto;
	key.family = family;
	key.dir = NP_NAT_INGRESS;
	e = bpf_map_lookup_elem(&np_nat, &key);
	if (!e || (e->flags & NP_NAT_F_REVDNAT)) /* service flows: lb's */
		return TC_ACT_OK;
	__builtin_memcpy(&r, e, sizeof(r));
	csum = l4off + 2;

	/* The outer destination: the node's address -> the endpoint's. */
	if (family == NP_NAT_FAMILY_V4) {
		__be32 from, to;

		__builtin_memcpy(&from, node, 4);
		__builtin_memcpy(&to, r.addr, 4);
		if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), from, to, 4) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct iphdr, daddr), &to, 4, 0) < 0)
			return np_nat_drop(NP_DROP_INVALID);
		/* The quoted source, its header checksum; the ICMP checksum
		 * covers both. */
		__u16 icheck, ncheck;
		if (bpf_skb_load_bytes(skb, in_l3 + offsetof(struct iphdr, check), &icheck, 2) < 0)
			return TC_ACT_OK;
		ncheck = icheck;
		csum_replace4(&ncheck, from, to);
		if (bpf_l4_csum_replace(skb, csum, from, to, 4) < 0 ||
		    bpf_l4_csum_replace(skb, csum, icheck, ncheck, 2) < 0 ||
		    bpf_skb_store_bytes(skb, in_src, &to, 4, 0) < 0 ||
		    bpf_skb_store_bytes(skb, in_l3 + offsetof(struct iphdr, check), &ncheck, 2, 0) < 0)
			return np_nat_drop(NP_DROP_INVALID);
	} else {
		__u8 from[16], to[16];
		__s64 diff;

		__builtin_memcpy(from, node, 16);
		__builtin_memcpy(to, r.addr, 16);
		diff = bpf_csum_diff((__be32 *)from, 16, (__be32 *)to, 16, 0);
		if (diff < 0)
			return TC_ACT_OK;
		/* Outer destination (pseudo-header) and quoted source
		 * (payload): the same change twice in the checksum. */
		if (bpf_l4_csum_replace(skb, csum, 0, diff, BPF_F_PSEUDO_HDR) < 0 ||
		    bpf_l4_csum_replace(skb, csum, 0, diff, 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + offsetof(struct ipv6hdr, daddr), to, 16, 0) < 0 ||
		    bpf_skb_store_bytes(skb, in_src, to, 16, 0) < 0)
			return np_nat_drop(NP_DROP_INVALID);
	}
	/* The quoted source port (echo identifier). */
	if (from_port != r.port) {
		__u32 off = in_l4 + (iproto == IPPROTO_TCP || iproto == IPPROTO_UDP ? 0 : 4);

		if (bpf_l4_csum_replace(skb, csum, from_port, r.port, 2) < 0 ||
		    bpf_skb_store_bytes(skb, off, &r.port, 2, 0) < 0)
			return np_nat_drop(NP_DROP_INVALID);
	}
	return TC_ACT_OK;
}

SEC("tc")
int np_nat_ingress(struct __sk_buff *skb)
{
	const struct np_nat_config *cfg = np_nat_config_get();
	struct np_nat_key key = {};
	struct np_nat_entry *e, r;
	struct np_nat_pkt p = {};
	__u8 node[16];

	if (!cfg)
		return TC_ACT_OK;
	if (np_nat_parse(skb, &p, 0))
		return np_nat_icmp_error(skb, cfg);
	if (!np_nat_node(cfg, p.family, node) || __builtin_memcmp(p.daddr, node, 16))
		return TC_ACT_OK;
	__builtin_memcpy(key.saddr, p.saddr, 16);
	__builtin_memcpy(key.daddr, p.daddr, 16);
	key.sport = p.sport;
	key.dport = p.dport;
	key.proto = p.proto;
	key.family = p.family;
	key.dir = NP_NAT_INGRESS;
	e = bpf_map_lookup_elem(&np_nat, &key);
	if (!e) /* the node's own traffic */
		return TC_ACT_OK;
	np_nat_touch(e, p.tcpflags);
	__builtin_memcpy(&r, e, sizeof(r));
	if ((r.flags & NP_NAT_F_REVDNAT) &&
	    np_nat_rewrite_skb(skb, p.family, p.proto, p.l4off, 0, p.saddr, r.peer, p.sport, r.peer_port))
		return np_nat_drop(NP_DROP_INVALID);
	if (np_nat_rewrite_skb(skb, p.family, p.proto, p.l4off, 1, p.daddr, r.addr, p.dport, r.port))
		return np_nat_drop(NP_DROP_INVALID);
	return TC_ACT_OK;
}

#endif /* NP_NAT_H */
