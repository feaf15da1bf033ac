/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * BPF masquerading (IPv4, TCP and UDP), as Cilium's SNAT on the native
 * device: two programs on the node's external interface.
 *
 *   np_nat_egress   tc egress: a packet from a local endpoint to an
 *                   address outside the excluded prefixes (the cluster's
 *                   native CIDR) leaves with the node's address as source
 *                   and a source port the NAT table allocated for its flow.
 *   np_nat_ingress  tc ingress: a packet to the node's address whose
 *                   reverse flow the NAT table knows is translated back to
 *                   the endpoint's address and port; anything else (the
 *                   node's own traffic) passes untouched.
 *
 * The NAT table holds two entries per flow, as Cilium's: the egress one
 * (endpoint tuple -> node address and port) and the ingress one (outside
 * tuple -> endpoint address and port). A port is taken by creating the
 * ingress entry with BPF_NOEXIST, so two flows never share one: on a
 * collision the next candidate is tried, through the whole range if need
 * be. Ports come from
 * [NP_NAT_PORT_MIN, NP_NAT_PORT_MAX], outside Linux's default ephemeral
 * range, so the node's own connections do not collide with them.
 *
 * Included by datapath.c after its helpers.
 */

#ifndef NP_NAT_H
#define NP_NAT_H

#define NP_NAT_PORT_MIN 61000
#define NP_NAT_PORT_MAX 65535

#define NP_NAT_EGRESS 0
#define NP_NAT_INGRESS 1

struct np_nat_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir; /* NP_NAT_EGRESS, NP_NAT_INGRESS */
	__u8 pad[2];
};
NP_ASSERT_SIZE(struct np_nat_key, 16);

struct np_nat_entry {
	__be32 addr; /* translated address */
	__be16 port; /* translated port */
	__u16 pad;
	__u64 created; /* CLOCK_MONOTONIC ns */
};
NP_ASSERT_SIZE(struct np_nat_entry, 16);

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct np_nat_key);
	__type(value, struct np_nat_entry);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_nat SEC(".maps");

struct np_nat_config {
	__be32 address; /* the node's address; 0: masquerading off */
	__u32 flags;    /* reserved */
};
NP_ASSERT_SIZE(struct np_nat_config, 8);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct np_nat_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_nat_config SEC(".maps");

/* Destinations that are never masqueraded (the cluster's native CIDR). */
struct np_nat_exclude_key {
	__u32 prefixlen;
	__be32 addr;
};
NP_ASSERT_SIZE(struct np_nat_exclude_key, 8);

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct np_nat_exclude_key);
	__type(value, __u8);
	__uint(max_entries, 64);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_nat_exclude SEC(".maps");

/* The parts of an IPv4 TCP/UDP packet NAT rewrites. */
struct np_nat_pkt {
	__be32 saddr, daddr;
	__be16 sport, dport;
	__u8 proto;
	__u32 l4off;
};

/* np_nat_parse reads an unfragmented IPv4 TCP or UDP packet; -1 for
 * anything else, which NAT leaves alone. */
static __always_inline int np_nat_parse(struct __sk_buff *skb, struct np_nat_pkt *p)
{
	struct iphdr ip;
	__be16 ports[2];

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -1;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
	if (bpf_ntohs(ip.frag_off) & (IP_MF | IP_OFFSET))
		return -1;
	if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
		return -1;
	p->l4off = ETH_HLEN + ip.ihl * 4;
	if (bpf_skb_load_bytes(skb, p->l4off, ports, sizeof(ports)) < 0)
		return -1;
	p->saddr = ip.saddr;
	p->daddr = ip.daddr;
	p->sport = ports[0];
	p->dport = ports[1];
	p->proto = ip.protocol;
	return 0;
}

/* np_nat_rewrite replaces the source (egress) or destination (ingress)
 * address and port, with the IPv4 and L4 checksums. */
static __always_inline int np_nat_rewrite(struct __sk_buff *skb, const struct np_nat_pkt *p,
					  int ingress, __be32 to_addr, __be16 to_port)
{
	__u32 addr_off = ETH_HLEN + (ingress ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));
	__u32 port_off = p->l4off + (ingress ? 2 : 0);
	__u32 csum_off = p->l4off + (p->proto == IPPROTO_TCP ? 16 : 6);
	__u64 l4flags = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__be32 from_addr = ingress ? p->daddr : p->saddr;
	__be16 from_port = ingress ? p->dport : p->sport;

	if (bpf_l4_csum_replace(skb, csum_off, from_addr, to_addr, BPF_F_PSEUDO_HDR | l4flags | 4) < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, csum_off, from_port, to_port, l4flags | 2) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), from_addr, to_addr, 4) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, addr_off, &to_addr, 4, 0) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, port_off, &to_port, 2, 0) < 0)
		return -1;
	return 0;
}

static __always_inline const struct np_nat_config *np_nat_config_get(void)
{
	__u32 zero = 0;
	const struct np_nat_config *cfg = bpf_map_lookup_elem(&np_nat_config, &zero);

	return cfg && cfg->address ? cfg : NULL;
}

struct np_nat_alloc_ctx {
	struct np_nat_key rkey;
	struct np_nat_entry back;
	__u32 start;
	__u16 port; /* network order; 0 while none found */
};

static long np_nat_try_port(__u64 i, void *arg)
{
	struct np_nat_alloc_ctx *c = arg;
	__u32 range = NP_NAT_PORT_MAX - NP_NAT_PORT_MIN + 1;
	__u16 cand = NP_NAT_PORT_MIN + (c->start + (__u32)i) % range;

	c->rkey.dport = bpf_htons(cand);
	if (bpf_map_update_elem(&np_nat, &c->rkey, &c->back, BPF_NOEXIST) == 0) {
		c->port = c->rkey.dport;
		return 1;
	}
	return 0;
}

/* np_nat_alloc takes a free port for the flow: it creates the flow's
 * ingress entry with BPF_NOEXIST, probing the range linearly from a random
 * start (bpf_loop), so a port is found whenever one is free for this
 * outside address and port. Only a full range fails. */
static __always_inline int np_nat_alloc(const struct np_nat_pkt *p, __be32 node, __be16 *port)
{
	struct np_nat_alloc_ctx c = {
		.rkey = {
			.saddr = p->daddr,
			.daddr = node,
			.sport = p->dport,
			.proto = p->proto,
			.dir = NP_NAT_INGRESS,
		},
		.back = {
			.addr = p->saddr,
			.port = p->sport,
			.created = bpf_ktime_get_ns(),
		},
		.start = bpf_get_prandom_u32(),
	};

	bpf_loop(NP_NAT_PORT_MAX - NP_NAT_PORT_MIN + 1, np_nat_try_port, &c, 0);
	if (!c.port)
		return -1;
	*port = c.port;
	return 0;
}

SEC("tc")
int np_nat_egress(struct __sk_buff *skb)
{
	const struct np_nat_config *cfg = np_nat_config_get();
	struct np_nat_exclude_key ex = { .prefixlen = 32 };
	struct np_nat_entry *e, out = {};
	struct np_nat_key key = {};
	struct np_nat_pkt p = {};
	union np_addr src;

	if (!cfg || np_nat_parse(skb, &p))
		return TC_ACT_OK;
	if (p.saddr == cfg->address)
		return TC_ACT_OK;
	__builtin_memset(&src, 0, sizeof(src));
	src.ip4 = p.saddr;
	if (!np_lookup_endpoint(&src, NP_IPV4)) /* only local endpoints */
		return TC_ACT_OK;
	ex.addr = p.daddr;
	if (bpf_map_lookup_elem(&np_nat_exclude, &ex))
		return TC_ACT_OK;

	key.saddr = p.saddr;
	key.daddr = p.daddr;
	key.sport = p.sport;
	key.dport = p.dport;
	key.proto = p.proto;
	key.dir = NP_NAT_EGRESS;
	e = bpf_map_lookup_elem(&np_nat, &key);
	if (!e || e->addr != cfg->address) {
		out.addr = cfg->address;
		out.created = bpf_ktime_get_ns();
		if (np_nat_alloc(&p, cfg->address, &out.port))
			return TC_ACT_SHOT; /* DROP_NAT_NO_MAPPING: no free port */
		if (bpf_map_update_elem(&np_nat, &key, &out, BPF_ANY))
			return TC_ACT_SHOT;
		e = &out;
	}
	if (np_nat_rewrite(skb, &p, 0, e->addr, e->port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

SEC("tc")
int np_nat_ingress(struct __sk_buff *skb)
{
	const struct np_nat_config *cfg = np_nat_config_get();
	struct np_nat_key key = {};
	struct np_nat_entry *e;
	struct np_nat_pkt p = {};

	if (!cfg || np_nat_parse(skb, &p) || p.daddr != cfg->address)
		return TC_ACT_OK;
	key.saddr = p.saddr;
	key.daddr = p.daddr;
	key.sport = p.sport;
	key.dport = p.dport;
	key.proto = p.proto;
	key.dir = NP_NAT_INGRESS;
	e = bpf_map_lookup_elem(&np_nat, &key);
	if (!e) /* the node's own traffic */
		return TC_ACT_OK;
	if (np_nat_rewrite(skb, &p, 1, e->addr, e->port))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

#endif /* NP_NAT_H */
