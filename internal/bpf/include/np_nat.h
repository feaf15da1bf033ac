/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * np_nat.h: the node's one NAT table, shared by the datapath's
 * masquerading (datapath/bpf/nat.h) and the north-south load balancer's
 * SNAT mode (lb/bpf/nodeport.c). Both objects declare np_nat from this
 * header and the loaders hand them the same map, so a node port is never
 * given to two flows, whichever program translated them.
 *
 * A translated flow holds two entries, as in Cilium's SNAT maps:
 *
 *   egress  (NP_NAT_EGRESS): the flow as it leaves before translation
 *           (source: the pod or, for a service flow, the client; the
 *           destination: the server or backend) -> the node address and
 *           port it leaves with;
 *   ingress (NP_NAT_INGRESS): the reply as it arrives (source: the
 *           server; destination: the node address and that port) -> the
 *           original source address and port, and for a service flow
 *           (NP_NAT_F_REVDNAT) also the frontend the reply must come from.
 *
 * A port is taken by creating the ingress entry with BPF_NOEXIST, so two
 * flows to one server address and port never share it. ICMP echo is
 * translated as Cilium does, with the identifier as the port: an echo
 * request's identifier is its source port (destination port 0), an echo
 * reply's its destination port (source port 0).
 *
 * The table is a plain hash, not an LRU: an entry in use is never
 * evicted, and a full table refuses new flows (the caller drops them with
 * DROP_NAT_NO_MAPPING) instead of silently breaking old ones. Go removes
 * expired entries (internal/nat); the programs keep `seen` fresh to a
 * second and mark TCP flows that saw FIN or RST (NP_NAT_F_CLOSING).
 *
 * The loader sets np_nat_port_min/max; every object sharing the table
 * gets the same range. Include np_common.h and np_csum.h first.
 */
#ifndef NP_NAT_SHARED_H
#define NP_NAT_SHARED_H

#define NP_NAT_EGRESS 0
#define NP_NAT_INGRESS 1

/* np_nat_entry.flags */
#define NP_NAT_F_REVDNAT 1 /* ingress: the reply's source becomes peer */
#define NP_NAT_F_CLOSING 2 /* TCP: FIN or RST seen */

/* New flows try this many candidate ports (Cilium's
 * SNAT_COLLISION_RETRIES without the large instruction limit). */
#define NP_NAT_TRIES 32

#define NP_NAT_FAMILY_V4 4
#define NP_NAT_FAMILY_V6 6
#define NP_NAT_ICMPV6 58
#define NP_NAT_SEEN_NS 1000000000ULL

#ifndef NP_NAT_PINNING
#define NP_NAT_PINNING 0 /* LIBBPF_PIN_NONE */
#endif

/* IPv4 addresses in the first 4 bytes, the rest zero. */
struct np_nat_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family; /* NP_NAT_FAMILY_V4, NP_NAT_FAMILY_V6 */
	__u8 dir;    /* NP_NAT_EGRESS, NP_NAT_INGRESS */
	__u8 pad;
};
NP_ASSERT_SIZE(struct np_nat_key, 40);

struct np_nat_entry {
	__u8 addr[16]; /* egress: the node address; ingress: the original source */
	__u8 peer[16]; /* ingress with NP_NAT_F_REVDNAT: the frontend */
	__be16 port;
	__be16 peer_port;
	__u8 flags;
	__u8 pad[3];
	__u64 created; /* CLOCK_MONOTONIC ns */
	__u64 seen;    /* last packet, to a second */
};
NP_ASSERT_SIZE(struct np_nat_entry, 56);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct np_nat_key);
	__type(value, struct np_nat_entry);
	__uint(max_entries, 65536);
	__uint(pinning, NP_NAT_PINNING);
} np_nat SEC(".maps");

/* The node ports of translated flows, inclusive. */
const volatile __u16 np_nat_port_min = 61000;
const volatile __u16 np_nat_port_max = 65535;

/* np_nat_touch keeps an entry's `seen` fresh and marks a TCP flow that
 * saw FIN or RST (tcpflags: byte 13 of the TCP header, 0 otherwise). */
static __always_inline void np_nat_touch(struct np_nat_entry *e, __u8 tcpflags)
{
	__u64 now = bpf_ktime_get_ns();

	if (now - e->seen > NP_NAT_SEEN_NS)
		e->seen = now;
	if ((tcpflags & 0x05) && !(e->flags & NP_NAT_F_CLOSING)) /* FIN, RST */
		e->flags |= NP_NAT_F_CLOSING;
}

/* np_nat_reverse_of fills the key of the reply to the flow fwd once it
 * leaves from node:port. */
static __always_inline void np_nat_reverse_of(struct np_nat_key *r, const struct np_nat_key *fwd,
					      const __u8 *node, __be16 port)
{
	__builtin_memcpy(r->saddr, fwd->daddr, 16);
	__builtin_memcpy(r->daddr, node, 16);
	r->sport = fwd->dport;
	r->dport = port;
	r->proto = fwd->proto;
	r->family = fwd->family;
	r->dir = NP_NAT_INGRESS;
	r->pad = 0;
}

/* Scratch space for a new flow, off the 512-byte stack (XDP programs
 * that also balance have little left). Each object has its own. */
struct np_nat_scratch {
	struct np_nat_key fwd;    /* the flow before translation */
	struct np_nat_key rev;    /* its reply after translation */
	struct np_nat_entry out;  /* the egress entry */
	struct np_nat_entry back; /* the ingress entry */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct np_nat_scratch);
	__uint(max_entries, 1);
} np_nat_scratch SEC(".maps");

/* np_nat_scratch_get returns this CPU's scratch space, zeroed. */
static __always_inline struct np_nat_scratch *np_nat_scratch_get(void)
{
	__u32 zero = 0;
	struct np_nat_scratch *s = bpf_map_lookup_elem(&np_nat_scratch, &zero);

	if (s)
		__builtin_memset(s, 0, sizeof(*s));
	return s;
}

/* np_nat_create takes a node port for the new flow s->fwd (its egress
 * key) leaving from node: it tries NP_NAT_TRIES consecutive ports of the
 * range, from the flow's own source port if the range holds it (as Cilium
 * keeps ports) or a random one, creating the ingress entry s->back with
 * BPF_NOEXIST, then the egress entry s->out (addr and port filled in
 * here). The caller fills fwd and back's addr, port, peer and flags. It
 * returns the port, or 0 when every try collided or the table is full:
 * the caller drops with DROP_NAT_NO_MAPPING. */
static __always_inline __be16 np_nat_create(struct np_nat_scratch *s, const __u8 *node)
{
	__u16 min = np_nat_port_min, max = np_nat_port_max;
	__u32 range = (__u32)max - min + 1;
	__u16 own = bpf_ntohs(s->fwd.sport);
	__u32 start = own >= min && own <= max ? own - min : bpf_get_prandom_u32() % range;
	__u64 now = bpf_ktime_get_ns();

	__builtin_memcpy(s->out.addr, node, 16);
	s->out.created = now;
	s->out.seen = now;
	s->back.created = now;
	s->back.seen = now;
	for (int i = 0; i < NP_NAT_TRIES; i++) {
		__be16 port = bpf_htons((__u16)(min + (start + i) % range));
		/* int, not long: before Linux 6.4 the verifier turns this
		 * helper into a direct call of the map's update function,
		 * which returns an int, so the upper half of the register is
		 * zero and a 64-bit -EEXIST never matches (6.1 took a taken
		 * port for a full table). */
		int err;

		np_nat_reverse_of(&s->rev, &s->fwd, node, port);
		err = bpf_map_update_elem(&np_nat, &s->rev, &s->back, BPF_NOEXIST);
		if (err == -17 /* EEXIST: taken, try the next */)
			continue;
		if (err)
			return 0; /* full */
		s->out.port = port;
		if (bpf_map_update_elem(&np_nat, &s->fwd, &s->out, BPF_ANY)) {
			bpf_map_delete_elem(&np_nat, &s->rev);
			return 0;
		}
		return port;
	}
	return 0;
}

/* Where NAT rewrites an L4 header: the checksum, and the port (TCP, UDP)
 * or the echo identifier (ICMP, ICMPv6: one field for both directions). */
static __always_inline __u32 np_nat_csum_off(__u8 proto)
{
	return proto == IPPROTO_TCP ? 16 : proto == IPPROTO_UDP ? 6 : 2;
}

static __always_inline __u32 np_nat_port_off(__u8 proto, int dst)
{
	if (proto == IPPROTO_ICMP || proto == NP_NAT_ICMPV6)
		return 4;
	return dst ? 2 : 0;
}

/* np_nat_rewrite_skb replaces the destination (dst) or source address and
 * port of an skb's packet (IP header at ETH_HLEN, L4 header at l4off)
 * with the kernel's checksum helpers, which also handle CHECKSUM_PARTIAL
 * packets (a pod's traffic on a veth). ICMPv4's checksum covers no
 * pseudo-header; UDP's zero checksum stays zero. */
static __always_inline int np_nat_rewrite_skb(struct __sk_buff *skb, __u8 family, __u8 proto, __u32 l4off,
					      int dst, const __u8 *from_addr, const __u8 *to_addr,
					      __be16 from_port, __be16 to_port)
{
	__u32 csum = l4off + np_nat_csum_off(proto);
	__u64 mangled = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (family == NP_NAT_FAMILY_V4) {
		__be32 from, to;

		__builtin_memcpy(&from, from_addr, 4);
		__builtin_memcpy(&to, to_addr, 4);
		if (proto != IPPROTO_ICMP &&
		    bpf_l4_csum_replace(skb, csum, from, to, BPF_F_PSEUDO_HDR | mangled | 4) < 0)
			return -1;
		if (bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), from, to, 4) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, ETH_HLEN + (dst ? 16 : 12), &to, 4, 0) < 0)
			return -1;
	} else {
		__u8 from[16], to[16];
		__s64 diff;

		__builtin_memcpy(from, from_addr, 16);
		__builtin_memcpy(to, to_addr, 16);
		diff = bpf_csum_diff((__be32 *)from, 16, (__be32 *)to, 16, 0);
		if (diff < 0)
			return -1;
		if (bpf_l4_csum_replace(skb, csum, 0, diff, BPF_F_PSEUDO_HDR | mangled) < 0)
			return -1;
		if (bpf_skb_store_bytes(skb, ETH_HLEN + (dst ? 24 : 8), to, 16, 0) < 0)
			return -1;
	}
	if (from_port == to_port)
		return 0;
	if (bpf_l4_csum_replace(skb, csum, from_port, to_port, mangled | 2) < 0)
		return -1;
	if (bpf_skb_store_bytes(skb, l4off + np_nat_port_off(proto, dst), &to_port, 2, 0) < 0)
		return -1;
	return 0;
}

static __always_inline __u32 np_nat_load32(const __u8 *p)
{
	__u32 v;

	__builtin_memcpy(&v, p, 4);
	return v;
}

/* np_nat_rewrite_direct is the same for a packet read through direct
 * access (XDP, or tc after bpf_skb_pull_data), TCP and UDP: l3 is the IP
 * header, l4 the L4 header, csum its checksum (NULL: none to update, IPv4
 * UDP with 0). The arithmetic assumes a full checksum, which received
 * packets have. Every access is bounds-checked here, next to it, so the
 * verifier sees the checks on every path. */
static __always_inline void np_nat_rewrite_direct(void *l3, void *l4, __u16 *csum, void *end, __u8 family,
						  int dst, const __u8 *addr, __be16 newport)
{
	struct udphdr *udp = l4; /* TCP and UDP keep the ports in the same place */

	if ((void *)(udp + 1) > end)
		return;
	if (csum && (void *)(csum + 1) > end)
		return;
	if (family == NP_NAT_FAMILY_V4) {
		struct iphdr *ip4 = l3;
		if ((void *)(ip4 + 1) > end)
			return;
		__u8 *field = dst ? (__u8 *)&ip4->daddr : (__u8 *)&ip4->saddr;
		__u32 from = np_nat_load32(field), to = np_nat_load32(addr);
		csum_replace4(&ip4->check, from, to);
		if (csum)
			csum_replace4(csum, from, to);
		__builtin_memcpy(field, addr, 4);
	} else {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > end)
			return;
		__u8 *field = dst ? (__u8 *)&ip6->daddr : (__u8 *)&ip6->saddr;
#pragma unroll
		for (int i = 0; i < 16; i += 4) {
			if (csum)
				csum_replace4(csum, np_nat_load32(field + i), np_nat_load32(addr + i));
		}
		__builtin_memcpy(field, addr, 16);
	}
	__be16 *port = dst ? &udp->dest : &udp->source;
	if (csum)
		csum_replace2(csum, *port, newport);
	*port = newport;
}

#endif /* NP_NAT_SHARED_H */
