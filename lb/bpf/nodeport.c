/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * North-south load balancing on a node's external interface: an XDP program
 * (np_nodeport_xdp; np_nodeport_tc is the same at tc ingress, for
 * interfaces that take no XDP program) that translates packets to a
 * frontend (NodePort, LoadBalancer or external IP, address + port +
 * protocol) to one of its backends, and a tc egress program
 * (np_nodeport_revnat) that translates the backends' replies back, so the
 * client sees the frontend answer. The XDP and tc entry programs only
 * dispatch: each tail-calls its hook's program for the packet's family
 * (np_nodeport_xdp4/6, np_nodeport_tc4/6), which does the translation
 * (see "one program per family" below).
 *
 *  - Backend selection is Cilium's: Maglev picks lut[hash % M] with the
 *    5-tuple hash of bpf/lib/hash.h (jhash of the source address and both
 *    ports, the destination address left out, seeded with bytes 4..7 of the
 *    cluster seed for IPv4 and 8..11 for IPv6); random picks one of the
 *    first count entries of the same table.
 *  - A conntrack entry keyed by the client's tuple keeps a flow on its
 *    backend for as long as the backend exists, whatever the table says
 *    now; the table holds only the backends that take new flows, so a
 *    terminating backend keeps its flows and gets no new ones.
 *  - A frontend with externalTrafficPolicy=Local (NP_FE_F_LOCAL) is never
 *    SNATed nor DSRed: its backends are the node's own and see the client.
 *  - Packets that are not to a frontend are left alone (XDP_PASS). IPv6
 *    extension headers are walked as Cilium does (nodeport_ipv6.h; a bad
 *    chain drops with DROP_INVALID_EXTHDR, whatever the destination). The
 *    first fragment of an IPv4 or IPv6 datagram to a frontend (it carries the
 *    ports) is dropped (DROP_FRAG_NOSUPPORT); later fragments carry no
 *    ports and pass, so the node's own fragmented traffic to an address
 *    a NodePort shares is not disturbed (the datagram to the frontend
 *    never reassembles). To a frontend address, a truncated L4 header
 *    drops (DROP_CT_INVALID_HDR); a frontend without
 *    backends drops (DROP_NO_SERVICE), a full conntrack table cannot happen
 *    (LRU) but a failed insert drops (DROP_CT_CREATE_FAILED). A truncated
 *    IP header drops (DROP_INVALID). Drops count in np_np_drops by reason.
 *  - The backend is reached by routing: the program rewrites the
 *    destination and passes the packet to the stack, which forwards it.
 *    In DNAT mode the client address is kept, so a backend's replies must
 *    be routed back through this node, where np_nodeport_revnat (tc egress
 *    of the external interface) restores the frontend as their source.
 *    In SNAT mode (snat4/snat6 set) the source becomes the node's address
 *    and a port from the node's one NAT table (np_nat, np_nat.h, shared
 *    with the datapath's masquerading; no free port or a full table:
 *    DROP_NAT_NO_MAPPING); replies come to that address, and this program,
 *    attached where they arrive, sends them back from the frontend to the
 *    client. DNAT and DSR replies are found in np_np_rev.
 *    In DSR mode (dsr set) the client address is kept and the frontend
 *    travels in Cilium's IPv4 option (type 0x9a, 8 bytes) or IPv6
 *    destination option (type 0x1b, a 24-byte header); np_dsr_decode on
 *    the backend's node records it, and that node's np_nodeport_revnat
 *    sends the replies from the frontend, directly to the client.
 *
 * The Go reference of the hash is flowHash in lb/jhash_test.go.
 */

#include "np_common.h"
#include "np_csum.h"
#include "np_jhash.h"
#include "np_nat.h"
#include "nodeport_events.h"
#include "nodeport_affinity.h"
#include "nodeport_ipv6.h"

#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17

/* Cilium's drop reasons (bpf/lib/common.h), positive. */
#define DROP_INVALID 134
#define DROP_CT_INVALID_HDR 135
#define DROP_CT_CREATE_FAILED 155
#define DROP_FRAG_NOSUPPORT 157
#define DROP_NO_SERVICE 158
#define DROP_NAT_NO_MAPPING 167

/* np_fe.flags */
#define NP_FE_F_LOCAL 1 /* externalTrafficPolicy=Local: no SNAT, no DSR */

#define NP_ALG_RANDOM 1
#define NP_ALG_MAGLEV 2

#define NP_FAMILY_V4 4
#define NP_FAMILY_V6 6

/* Set by the loader: the Maglev table size M and the packet hash seeds. */
const volatile __u32 lut_size = 16381;
const volatile __u32 hash_seed4 = 0;
const volatile __u32 hash_seed6 = 0;
/* SNAT mode: the node's addresses that become the source of translated
 * packets (an all-zero address: no SNAT for that family). */
const volatile __u32 snat4 = 0;
const volatile __u32 snat6[4] = {};
/* DSR mode: the frontend travels to the backend's node in an IPv4 option
 * or an IPv6 destination option (Cilium's formats), whose program
 * (np_dsr_decode) makes the replies leave from the frontend directly. */
const volatile __u8 dsr = 0;

#define DSR_IPV4_OPT_TYPE 0x9a /* copied, class 0, number 26 */
#define DSR_IPV4_OPT_LEN 8
#define DSR_IPV6_OPT_TYPE 0x1b /* skip if unknown */
#define DSR_IPV6_EXT_LEN 24
#define IPPROTO_DSTOPTS_ 60
#define NP_DSR 100 /* nodeport_ingress: pass, after inserting the DSR option */

struct np_dsr {
	__u8 addr[16];
	__be16 port;
	__u8 family;
};

/* A frontend: IPv4 addresses in the first 4 bytes, the rest zero. */
struct np_fe_key {
	__u8 addr[16];
	__be16 port;
	__u8 proto;
	__u8 family;
};
NP_ASSERT_SIZE(struct np_fe_key, 20);

struct np_fe {
	__u32 svc_id;
	__u32 count; /* backends taking new flows: the first count lut entries */
	__u8 alg;
	__u8 flags;
	__u8 pad[2];
	__u32 affinity_timeout; /* seconds; 0: no session affinity (nodeport_affinity.h) */
};
NP_ASSERT_SIZE(struct np_fe, 16);

struct np_be {
	__u8 addr[16];
	__be16 port;
	__u8 family;
	__u8 pad;
};
NP_ASSERT_SIZE(struct np_be, 20);

/* A flow as the packet carries it. */
struct np_tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};
NP_ASSERT_SIZE(struct np_tuple, 40);

struct np_ct {
	__u32 backend_id;
	__u32 svc_id;
	__be16 nat_port; /* SNAT: the node's source port of the flow */
	__u16 pad;
};
NP_ASSERT_SIZE(struct np_ct, 12);

/* What a reply gets: the frontend as its source and, in SNAT mode, the
 * client as its destination. */
struct np_rev {
	__u8 addr[16];
	__be16 port;
	__u8 snat;
	__u8 pad;
	__u8 caddr[16];
	__be16 cport;
	__u16 pad2;
};
NP_ASSERT_SIZE(struct np_rev, 40);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct np_fe_key);
	__type(value, struct np_fe);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} np_np_fe SEC(".maps");

/* Frontend addresses (port 0, proto 0) with the number of frontends on
 * them, to recognise truncated packets to a frontend. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct np_fe_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} np_np_vip SEC(".maps");

/* svc_id -> the Maglev table, M backend IDs; the loader sets value_size to
 * 4*M. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__uint(value_size, 4 * 16381);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} np_np_lut SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct np_be);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} np_np_be SEC(".maps");

/* np_be_copy reads backend id into b in one go. np_np_be is not
 * preallocated, so an element Upsert deletes may be reused at once for
 * another backend, and reading it field by field at different times could
 * mix the two (sock.c's lb4_backend_copy, for the same reason). */
static __always_inline int np_be_copy(__u32 id, struct np_be *b)
{
	const struct np_be *be = bpf_map_lookup_elem(&np_np_be, &id);

	if (!be)
		return 0;
	__builtin_memcpy(b, be, sizeof(*b));
	return 1;
}

/* client tuple (destination: the frontend) -> backend */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct np_tuple);
	__type(value, struct np_ct);
	__uint(max_entries, 262144);
} np_np_ct SEC(".maps");

/* reply tuple (source: the backend) -> the frontend to restore */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct np_tuple);
	__type(value, struct np_rev);
	__uint(max_entries, 262144);
} np_np_rev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 256);
} np_np_drops SEC(".maps");

static __always_inline __u32 load32(const __u8 *p)
{
	__u32 v;
	__builtin_memcpy(&v, p, 4);
	return v;
}

/* Cilium's hash_from_tuple_v4/v6 on a little-endian host: words as they
 * lie in memory, the source port in the high half (Cilium's tuple keeps the
 * packet's source port in its dport field). */
static __always_inline __u32 tuple_hash(const struct np_tuple *t, int family)
{
	__u32 ports = ((__u32)t->sport << 16) | t->dport;

	if (family == NP_FAMILY_V4)
		return jhash_3words(load32(t->saddr), ports, t->proto, hash_seed4);

	__u32 a = load32(t->saddr), b = load32(t->saddr + 4), c = load32(t->saddr + 8);
	jhash_mix(a, b, c);
	a += load32(t->saddr + 12);
	b += ports;
	c += t->proto;
	jhash_mix(a, b, c);
	a += hash_seed6;
	jhash_final(a, b, c);
	return c;
}

static __always_inline void count_drop(__u32 reason)
{
	np_note_drop(reason);
	__u64 *n = bpf_map_lookup_elem(&np_np_drops, &reason);
	if (n)
		__sync_fetch_and_add(n, 1);
}

/* Parsed headers of one packet. */
struct pkt {
	struct np_tuple t;
	void *l3;
	void *l4;
	__u16 *l4csum; /* NULL: no L4 checksum to update (IPv4 UDP with 0) */
	int frag;      /* IPv4 fragment */
	int later;     /* IPv4 fragment after the first: no L4 header */
	int short_l4;  /* L4 header truncated */
};

/* parse fills p from the packet. It returns 0 for a TCP or UDP packet
 * p describes (maybe a fragment or with a truncated L4 header), 1 for a
 * packet of no interest, and -DROP_INVALID for a truncated IP header.
 * family (NP_FAMILY_V4 or _V6, a constant) makes a packet of the other
 * family one of no interest, and the other family's code dead; 0 takes
 * both. */
static __always_inline int parse(void *data, void *end, struct pkt *p, int family)
{
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return 1;
	__builtin_memset(&p->t, 0, sizeof(p->t));

	void *l4;
	int v6 = 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP) && family != NP_FAMILY_V6) {
		struct iphdr *ip4 = (void *)(eth + 1);
		if ((void *)(ip4 + 1) > end || ip4->ihl < 5)
			return -DROP_INVALID;
		if (ip4->protocol != IPPROTO_TCP_ && ip4->protocol != IPPROTO_UDP_)
			return 1;
		p->l3 = ip4;
		p->t.family = NP_FAMILY_V4;
		p->t.proto = ip4->protocol;
		__builtin_memcpy(p->t.saddr, &ip4->saddr, 4);
		__builtin_memcpy(p->t.daddr, &ip4->daddr, 4);
		p->frag = (ip4->frag_off & bpf_htons(IP_MF | IP_OFFSET)) != 0;
		p->later = (ip4->frag_off & bpf_htons(IP_OFFSET)) != 0;
		l4 = (void *)ip4 + ip4->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6) && family != NP_FAMILY_V4) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return -DROP_INVALID;
		/* Extension headers: nodeport_ipv6.h. */
		__u8 nh;
		int err = np_ipv6_l4(ip6, end, &nh, &l4, &p->frag, &p->later);
		if (err < 0)
			return err;
		if (nh != IPPROTO_TCP_ && nh != IPPROTO_UDP_)
			return 1;
		p->l3 = ip6;
		v6 = 1;
		p->t.family = NP_FAMILY_V6;
		p->t.proto = nh;
		__builtin_memcpy(p->t.saddr, &ip6->saddr, 16);
		__builtin_memcpy(p->t.daddr, &ip6->daddr, 16);
	} else {
		return 1;
	}
	p->l4 = l4;
	p->l4csum = 0;
	p->short_l4 = 1;
	if (p->later)
		return 0;
	if (p->t.proto == IPPROTO_TCP_) {
		struct tcphdr *tcp = l4;
		if ((void *)(tcp + 1) > end)
			return 0;
		p->t.sport = tcp->source;
		p->t.dport = tcp->dest;
		p->l4csum = &tcp->check;
	} else {
		struct udphdr *udp = l4;
		if ((void *)(udp + 1) > end)
			return 0;
		p->t.sport = udp->source;
		p->t.dport = udp->dest;
		if (udp->check || v6)
			p->l4csum = &udp->check;
	}
	p->short_l4 = 0;
	return 0;
}

/* rewrite replaces the destination (dst) or source address and port of
 * the packet with addr and port, fixing the IPv4 header and the L4
 * checksum. It checks the bounds itself, next to each access, so that the
 * verifier sees them on every path. family is p's, passed as a constant
 * (the verifier does not know the byte in p->t). */
static __always_inline void rewrite(struct pkt *p, void *end, int family, int dst, const __u8 *addr,
				    __be16 newport)
{
	np_nat_rewrite_direct(p->l3, p->l4, p->l4csum, end, family, dst, addr, newport);
}

static __always_inline int drop(__u32 reason)
{
	count_drop(reason);
	return XDP_DROP;
}

/* tcp_flags reads the TCP flags byte for the NAT table's FIN/RST mark. */
static __always_inline __u8 tcp_flags(struct pkt *p, void *end)
{
	__u8 *f = p->l4 + 13;

	if (p->t.proto != IPPROTO_TCP_ || (void *)(f + 1) > end)
		return 0;
	return *f;
}

/* nat_key fills k, a key of the node's NAT table, with the flow t in the
 * direction dir (NP_NAT_EGRESS, NP_NAT_INGRESS). */
static __always_inline void nat_key(struct np_nat_key *k, const struct np_tuple *t, __u8 dir)
{
	__builtin_memcpy(k->saddr, t->saddr, 16);
	__builtin_memcpy(k->daddr, t->daddr, 16);
	k->sport = t->sport;
	k->dport = t->dport;
	k->proto = t->proto;
	k->family = t->family;
	k->dir = dir;
	k->pad = 0;
}

/* snat_reply translates a reply to a SNAT flow (to the node's address and
 * a NAT port) back: from the frontend, to the client. The NAT table's
 * other entries (the datapath's masquerading) are its programs' to
 * translate. */
static __noinline int snat_reply(struct pkt *p, void *end, int family)
{
	struct np_nat_key k;
	nat_key(&k, &p->t, NP_NAT_INGRESS);
	struct np_nat_entry *e = bpf_map_lookup_elem(&np_nat, &k);
	if (!e || !(e->flags & NP_NAT_F_REVDNAT))
		return XDP_PASS;
	np_nat_touch(e, tcp_flags(p, end));
	struct np_nat_entry r = *e;
	rewrite(p, end, family, 0, r.peer, r.peer_port);
	rewrite(p, end, family, 1, r.addr, r.port);
	return XDP_PASS;
}

/* np_np_nat_port returns the node port of the flow this CPU's NAT scratch
 * holds (fwd, back, and out.addr: the node address) in the node's NAT
 * table, taking one if it has none; 0 when no port is free or the table is
 * full. tcpflags is the packet's TCP flags byte (0 for UDP). A global
 * function, so that the verifier checks it, and its loop over candidate
 * ports, once on its own: as a static function it was checked again on
 * every path of nodeport_ingress that reached it (issue 16). The flow
 * travels in the scratch, not in arguments: a global function cannot take
 * packet pointers, and sees a pointer argument as maybe NULL. */
__noinline int np_np_nat_port(__u32 tcpflags)
{
	__u32 zero = 0;
	struct np_nat_scratch *ns = bpf_map_lookup_elem(&np_nat_scratch, &zero);
	__u8 node[16];

	if (!ns)
		return 0;
	struct np_nat_entry *ne = bpf_map_lookup_elem(&np_nat, &ns->fwd);
	if (ne && !__builtin_memcmp(ne->addr, ns->out.addr, 16)) {
		np_nat_touch(ne, tcpflags);
		return ne->port;
	}
	__builtin_memcpy(node, ns->out.addr, 16);
	return np_nat_create(ns, node);
}

/* snat_port returns the node port of the flow p (after DNAT to b) in the
 * node's NAT table, taking one if it has none; 0 when no port is free or
 * the table is full. A subprogram of its own: its locals do not count
 * towards nodeport_ingress's frame, which is near the stack limit. */
static __noinline __be16 snat_port(struct pkt *p, void *end, const struct np_be *b, const __u8 *snat_addr)
{
	struct np_nat_scratch *ns = np_nat_scratch_get();
	if (!ns)
		return 0;
	struct np_nat_key *fk = &ns->fwd;
	nat_key(fk, &p->t, NP_NAT_EGRESS);
	__builtin_memcpy(fk->daddr, b->addr, 16); /* after DNAT */
	fk->dport = b->port;
	__builtin_memcpy(ns->out.addr, snat_addr, 16);
	__builtin_memcpy(ns->back.addr, p->t.saddr, 16);
	ns->back.port = p->t.sport;
	__builtin_memcpy(ns->back.peer, p->t.daddr, 16);
	ns->back.peer_port = p->t.dport;
	ns->back.flags = NP_NAT_F_REVDNAT;
	return np_np_nat_port(tcp_flags(p, end));
}

#include "nodeport_icmp.h"

#define NP_SNAT_ANY (snat4 || snat6[0] || snat6[1] || snat6[2] || snat6[3])

/* nodeport_ingress is the translation of arriving packets, for XDP and
 * for tc ingress; it returns XDP_PASS or XDP_DROP. */
static __always_inline int nodeport_ingress(void *data, void *end, struct np_dsr *d, int family)
{
	struct pkt p;

	int ret = parse(data, end, &p, family);
	if (ret < 0)
		return drop(-ret);
	if (ret > 0)
		return XDP_PASS;

	struct np_fe_key key = {};
	__builtin_memcpy(key.addr, p.t.daddr, 16);
	key.family = p.t.family;
	if (p.later)
		return XDP_PASS;
	if (p.short_l4) {
		if (!bpf_map_lookup_elem(&np_np_vip, &key))
			return XDP_PASS;
		return drop(DROP_CT_INVALID_HDR);
	}
	key.port = p.t.dport;
	key.proto = p.t.proto;
	struct np_fe *fe = bpf_map_lookup_elem(&np_np_fe, &key);
	if (!fe) {
		if (!p.frag && (snat4 || snat6[0] || snat6[1] || snat6[2] || snat6[3]))
			return snat_reply(&p, end, family);
		return XDP_PASS;
	}
	if (p.frag)
		return drop(DROP_FRAG_NOSUPPORT);

	__u32 svc_id = fe->svc_id;
	__u8 fe_flags = fe->flags;
	__u32 aff_timeout = fe->affinity_timeout;
	__u64 now = aff_timeout ? np_aff_now() : 0;
	struct np_be b;
	int have_be = 0;
	__u32 be_id = 0;
	__be16 nat_port = 0;
	struct np_ct *ct = bpf_map_lookup_elem(&np_np_ct, &p.t);
	if (ct && ct->svc_id == svc_id) {
		be_id = ct->backend_id;
		nat_port = ct->nat_port;
		have_be = np_be_copy(be_id, &b);
	}
	int new_flow = !have_be;
	if (!have_be && aff_timeout && fe->count) {
		be_id = np_aff_get(p.t.saddr, family, svc_id, aff_timeout, now);
		have_be = be_id && np_be_copy(be_id, &b) && b.family == family;
	}
	if (!have_be) {
		__u32 count = fe->count;
		if (count == 0)
			return drop(DROP_NO_SERVICE);
		__u32 *lut = bpf_map_lookup_elem(&np_np_lut, &svc_id);
		if (!lut)
			return drop(DROP_NO_SERVICE);
		__u32 idx;
		if (fe->alg == NP_ALG_MAGLEV)
			idx = tuple_hash(&p.t, family) % lut_size;
		else
			idx = bpf_get_prandom_u32() % count;
		/* The verifier loses the upper half of a 32-bit modulo;
		 * a 64-bit mask and compare bound the index for it. */
		__u64 i = idx;
		asm volatile("%0 &= 0x1ffff" : "+r"(i));
		if (i >= (__u64)lut_size)
			return drop(DROP_NO_SERVICE);
		be_id = lut[i];
		if (!np_be_copy(be_id, &b) || b.family != family)
			return drop(DROP_NO_SERVICE);
	}
	if (aff_timeout)
		np_aff_set(p.t.saddr, family, svc_id, be_id, now);

	if (dsr && !(fe_flags & NP_FE_F_LOCAL)) {
		if (family == NP_FAMILY_V4) {
			struct iphdr *ip4 = p.l3;
			if ((void *)(ip4 + 1) > end || ip4->ihl != 5)
				return drop(DROP_INVALID); /* no room for the option */
		}
		if (new_flow) {
			struct np_ct val = {.backend_id = be_id, .svc_id = svc_id};
			if (bpf_map_update_elem(&np_np_ct, &p.t, &val, BPF_ANY))
				return drop(DROP_CT_CREATE_FAILED);
		}
		__builtin_memcpy(d->addr, p.t.daddr, 16);
		d->port = p.t.dport;
		d->family = family;
		rewrite(&p, end, family, 1, b.addr, b.port);
		return NP_DSR;
	}

	__u8 snat_addr[16] = {};
	int snat = 0;
	if (family == NP_FAMILY_V4) {
		__u32 a = snat4;
		__builtin_memcpy(snat_addr, &a, 4);
		snat = a != 0;
	} else {
		__u32 a[4] = {snat6[0], snat6[1], snat6[2], snat6[3]};
		__builtin_memcpy(snat_addr, a, 16);
		snat = (a[0] | a[1] | a[2] | a[3]) != 0;
	}
	/* Local backends only: the client address is kept. */
	if (fe_flags & NP_FE_F_LOCAL)
		snat = 0;

	/* The reply tuple: from the backend to the client, or in SNAT mode
	 * to the node's address and the flow's NAT port. */
	struct np_tuple rt = {};
	__builtin_memcpy(rt.saddr, b.addr, 16);
	if (snat)
		__builtin_memcpy(rt.daddr, snat_addr, 16);
	else
		__builtin_memcpy(rt.daddr, p.t.saddr, 16);
	rt.sport = b.port;
	rt.dport = p.t.sport;
	rt.proto = p.t.proto;
	rt.family = p.t.family;
	struct np_rev rev = {};
	__builtin_memcpy(rev.addr, p.t.daddr, 16);
	rev.port = p.t.dport;
	if (snat) {
		/* The flow after DNAT (client -> backend) in the node's NAT
		 * table: its port, or a new one. */
		nat_port = snat_port(&p, end, &b, snat_addr);
		if (!nat_port)
			return drop(DROP_NAT_NO_MAPPING);
	} else {
		/* An established flow has its reply entry already, unless the
		 * LRU evicted it; an update costs several lookups. */
		if (new_flow || !bpf_map_lookup_elem(&np_np_rev, &rt)) {
			if (bpf_map_update_elem(&np_np_rev, &rt, &rev, BPF_ANY))
				return drop(DROP_CT_CREATE_FAILED);
		}
	}
	if (new_flow) {
		struct np_ct val = {.backend_id = be_id, .svc_id = svc_id, .nat_port = nat_port};
		if (bpf_map_update_elem(&np_np_ct, &p.t, &val, BPF_ANY))
			return drop(DROP_CT_CREATE_FAILED);
	}

	rewrite(&p, end, family, 1, b.addr, b.port);
	if (snat)
		rewrite(&p, end, family, 0, snat_addr, nat_port);
	return XDP_PASS;
}

static __always_inline void ip4_csum(struct iphdr *ip, int words)
{
	__u32 sum = 0;
	__u16 *w = (__u16 *)ip;
	ip->check = 0;
#pragma unroll
	for (int i = 0; i < 14; i++)
		if (i < words)
			sum += w[i];
	ip->check = ~csum_fold32(sum);
}

/* dsr_push inserts the DSR option after the IP header: the Ethernet and
 * IP headers move to the front of the grown packet. */
static __always_inline int dsr_push(struct xdp_md *ctx, const struct np_dsr *d)
{
	int grow = d->family == NP_FAMILY_V4 ? DSR_IPV4_OPT_LEN : DSR_IPV6_EXT_LEN;
	if (bpf_xdp_adjust_head(ctx, -grow))
		return drop(DROP_INVALID);
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;

	if (d->family == NP_FAMILY_V4) {
		if (data + ETH_HLEN + 20 + DSR_IPV4_OPT_LEN > end)
			return drop(DROP_INVALID);
		/* Ascending copy: the destination lies before the source. */
#pragma unroll
		for (int i = 0; i < ETH_HLEN + 20; i += 2)
			*(__u16 *)(data + i) = *(__u16 *)(data + DSR_IPV4_OPT_LEN + i);
		struct iphdr *ip = data + ETH_HLEN;
		__u8 *opt = (void *)(ip + 1);
		opt[0] = DSR_IPV4_OPT_TYPE;
		opt[1] = DSR_IPV4_OPT_LEN;
		__builtin_memcpy(opt + 2, &d->port, 2);
		__builtin_memcpy(opt + 4, d->addr, 4);
		ip->ihl = 7;
		ip->tot_len = bpf_htons(bpf_ntohs(ip->tot_len) + DSR_IPV4_OPT_LEN);
		ip4_csum(ip, 14);
		return XDP_PASS;
	}
	if (data + ETH_HLEN + 40 + DSR_IPV6_EXT_LEN > end)
		return drop(DROP_INVALID);
#pragma unroll
	for (int i = 0; i < ETH_HLEN + 40; i += 2)
		*(__u16 *)(data + i) = *(__u16 *)(data + DSR_IPV6_EXT_LEN + i);
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	__u8 *ext = (void *)(ip6 + 1);
	ext[0] = ip6->nexthdr;
	ext[1] = DSR_IPV6_EXT_LEN / 8 - 1;
	ext[2] = DSR_IPV6_OPT_TYPE;
	ext[3] = DSR_IPV6_EXT_LEN - 4;
	__builtin_memcpy(ext + 4, d->addr, 16);
	__builtin_memcpy(ext + 20, &d->port, 2);
	ext[22] = 0;
	ext[23] = 0;
	ip6->nexthdr = IPPROTO_DSTOPTS_;
	ip6->payload_len = bpf_htons(bpf_ntohs(ip6->payload_len) + DSR_IPV6_EXT_LEN);
	return XDP_PASS;
}

#include "nodeport_dsr_mtu.h"

/* drop_info describes a dropped packet for its drop record. */
static __always_inline void drop_info(void *data, void *end, struct pkt *p, struct np_drop_info *i)
{
	i->len = end - data;
	i->tuple = 0;
	if (parse(data, end, p, 0) != 0 || p->short_l4)
		return;
	i->tuple = &p->t;
	i->dport = p->t.dport;
	if (p->t.proto == IPPROTO_TCP_ && p->l4 + 14 <= end)
		i->tcp_flags = *(__u8 *)(p->l4 + 13);
}

/* The drop records of the two entries, in functions of their own: their
 * stack does not add to the translation's. */
static __noinline void xdp_drop_notify(struct xdp_md *ctx)
{
	struct np_drop_info i = {.ifindex = ctx->ingress_ifindex};
	struct pkt p;

	drop_info((void *)(long)ctx->data, (void *)(long)ctx->data_end, &p, &i);
	np_drop_notify(ctx, 1, &i);
}

static __noinline void tc_drop_notify(struct __sk_buff *skb)
{
	struct np_drop_info i = {.ifindex = skb->ifindex};
	struct pkt p;

	drop_info((void *)(long)skb->data, (void *)(long)skb->data_end, &p, &i);
	i.len = skb->len;
	np_drop_notify(skb, 0, &i);
}

/* The translation of arriving packets runs in one program per family,
 * reached by a tail call from the entry program of its hook (as Cilium's
 * CILIUM_CALL_IPV4_FROM_NETDEV and _IPV6_): the verifier then sees only
 * one family's paths at a time. With SNAT addresses of both families one
 * program for both went past the 1M instructions Linux 6.1's verifier
 * processes (issue 16). The loader fills the program arrays (their
 * initializers); a slot found empty drops the packet with
 * DROP_MISSED_TAIL_CALL, as Cilium's send_drop_notify after a tail call
 * does. */
#define NP_CALL_IPV4 0
#define NP_CALL_IPV6 1
#define DROP_MISSED_TAIL_CALL 140

/* nodeport_call returns the slot for the packet's family, or -1 for a
 * packet the translation leaves alone (not IP, or no Ethernet header). */
static __always_inline int nodeport_call(void *data, void *end)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return -1;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return NP_CALL_IPV4;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return NP_CALL_IPV6;
	return -1;
}

static __always_inline int nodeport_xdp(struct xdp_md *ctx, int family)
{
	/* The DSR frontend lives in per-CPU scratch, off the stack. */
	struct np_dsr *d = np_dsr_scratch();
	if (!d)
		return XDP_PASS;
	int v = nodeport_ingress((void *)(long)ctx->data, (void *)(long)ctx->data_end, d, family);
	if (v == NP_DSR)
		v = np_dsr_out(ctx, d);
	if (v == XDP_PASS && NP_SNAT_ANY) {
		/* ICMP errors about SNAT flows (nodeport_icmp.h) */
		if (family == NP_FAMILY_V4)
			np_icmp4_xdp(ctx, 1);
		else
			np_icmp6_xdp(ctx, 1);
	}
	if (v == XDP_DROP)
		xdp_drop_notify(ctx);
	return v;
}

SEC("xdp")
int np_nodeport_xdp4(struct xdp_md *ctx)
{
	return nodeport_xdp(ctx, NP_FAMILY_V4);
}

SEC("xdp")
int np_nodeport_xdp6(struct xdp_md *ctx)
{
	return nodeport_xdp(ctx, NP_FAMILY_V6);
}

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, int(struct xdp_md *));
} np_np_calls_xdp SEC(".maps") = {
	.values =
		{
			[NP_CALL_IPV4] = (void *)&np_nodeport_xdp4,
			[NP_CALL_IPV6] = (void *)&np_nodeport_xdp6,
		},
};

SEC("xdp")
int np_nodeport_xdp(struct xdp_md *ctx)
{
	int slot = nodeport_call((void *)(long)ctx->data, (void *)(long)ctx->data_end);

	if (slot < 0)
		return XDP_PASS;
	bpf_tail_call(ctx, &np_np_calls_xdp, slot);
	count_drop(DROP_MISSED_TAIL_CALL);
	xdp_drop_notify(ctx);
	return XDP_DROP;
}

/* The tc fallback, for interfaces that take no XDP program (one is there
 * already). The arithmetic checksum updates assume full checksums, which
 * received packets have (CHECKSUM_COMPLETE stays valid: every change is
 * compensated within the packet). */
static __always_inline int nodeport_tc(struct __sk_buff *skb, int family)
{
	struct np_dsr d = {};
	int v = nodeport_ingress((void *)(long)skb->data, (void *)(long)skb->data_end, &d, family);
	if (v == NP_DSR) {
		/* Not in tc mode: the loader refuses DSR with tc. */
		count_drop(DROP_INVALID);
		v = XDP_DROP;
	}
	if (v == XDP_DROP) {
		tc_drop_notify(skb);
		return TC_ACT_SHOT;
	}
	if (NP_SNAT_ANY) {
		/* ICMP errors about SNAT flows (nodeport_icmp.h) */
		if (family == NP_FAMILY_V4)
			np_icmp4_skb(skb, 1);
		else
			np_icmp6_skb(skb, 1);
	}
	return TC_ACT_OK;
}

SEC("tc")
int np_nodeport_tc4(struct __sk_buff *skb)
{
	return nodeport_tc(skb, NP_FAMILY_V4);
}

SEC("tc")
int np_nodeport_tc6(struct __sk_buff *skb)
{
	return nodeport_tc(skb, NP_FAMILY_V6);
}

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, int(struct __sk_buff *));
} np_np_calls_tc SEC(".maps") = {
	.values =
		{
			[NP_CALL_IPV4] = (void *)&np_nodeport_tc4,
			[NP_CALL_IPV6] = (void *)&np_nodeport_tc6,
		},
};

SEC("tc")
int np_nodeport_tc(struct __sk_buff *skb)
{
	/* The linear part stays pulled for the tail call's program. */
	bpf_skb_pull_data(skb, 0);
	int slot = nodeport_call((void *)(long)skb->data, (void *)(long)skb->data_end);

	if (slot < 0)
		return TC_ACT_OK;
	bpf_tail_call(skb, &np_np_calls_tc, slot);
	count_drop(DROP_MISSED_TAIL_CALL);
	tc_drop_notify(skb);
	return TC_ACT_SHOT;
}

/* revnat_skb restores the frontend as the source of a reply with the
 * kernel's checksum helpers, which, unlike the XDP path's arithmetic, also
 * handle CHECKSUM_PARTIAL packets (a backend's reply on a veth, or on a NIC
 * with checksum offload). */
static __always_inline void revnat_skb(struct __sk_buff *skb, struct pkt *p, __u32 l4off, const struct np_rev *r)
{
	__u32 csumoff = l4off + (p->t.proto == IPPROTO_TCP_ ? 16 : 6);
	__u64 mangled = p->t.proto == IPPROTO_UDP_ ? BPF_F_MARK_MANGLED_0 : 0;
	int has_csum = p->l4csum != 0;

	if (p->t.family == NP_FAMILY_V4) {
		__u32 from = load32(p->t.saddr), to = load32(r->addr);
		if (has_csum)
			bpf_l4_csum_replace(skb, csumoff, from, to, BPF_F_PSEUDO_HDR | mangled | 4);
		bpf_l3_csum_replace(skb, ETH_HLEN + 10, from, to, 4);
		bpf_skb_store_bytes(skb, ETH_HLEN + 12, &to, 4, 0);
	} else {
		__u8 from[16], to[16];
		__builtin_memcpy(from, p->t.saddr, 16);
		__builtin_memcpy(to, r->addr, 16);
		__s64 diff = bpf_csum_diff((__be32 *)from, 16, (__be32 *)to, 16, 0);
		bpf_l4_csum_replace(skb, csumoff, 0, diff, BPF_F_PSEUDO_HDR | mangled);
		bpf_skb_store_bytes(skb, ETH_HLEN + 8, to, 16, 0);
	}
	__be16 oldport = p->t.sport, newport = r->port;
	if (has_csum)
		bpf_l4_csum_replace(skb, csumoff, oldport, newport, mangled | 2);
	bpf_skb_store_bytes(skb, l4off, &newport, 2, 0);
}

SEC("tc")
int np_nodeport_revnat(struct __sk_buff *skb)
{
	bpf_skb_pull_data(skb, 0);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct pkt p;

	int ret = parse(data, end, &p, 0);
	if (ret == 1) {
		/* ICMP errors about DNAT and DSR flows (nodeport_icmp.h). */
		np_icmp_skb(skb, 0);
		return TC_ACT_OK;
	}
	if (ret != 0 || p.frag || p.short_l4)
		return TC_ACT_OK;
	struct np_rev *rev = bpf_map_lookup_elem(&np_np_rev, &p.t);
	if (!rev || rev->snat)
		return TC_ACT_OK;
	struct np_rev r = *rev;
	revnat_skb(skb, &p, (__u32)(p.l4 - data), &r);
	return TC_ACT_OK;
}

/* np_dsr_decode runs at tc ingress on the backend's node: a packet that
 * carries the DSR option records its flow's frontend in np_np_rev, so that
 * np_nodeport_revnat (tc egress) sends the replies from the frontend. The
 * option stays in the packet; the stack ignores it. */
SEC("tc")
int np_dsr_decode(struct __sk_buff *skb)
{
	bpf_skb_pull_data(skb, 0);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;

	struct np_tuple rt = {};
	struct np_rev rev = {};
	__be16 *ports;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl != 7)
			return TC_ACT_OK;
		__u8 *opt = (void *)(ip + 1);
		if ((void *)(opt + DSR_IPV4_OPT_LEN) > end || opt[0] != DSR_IPV4_OPT_TYPE || opt[1] != DSR_IPV4_OPT_LEN)
			return TC_ACT_OK;
		if (ip->protocol != IPPROTO_TCP_ && ip->protocol != IPPROTO_UDP_)
			return TC_ACT_OK;
		ports = (void *)(opt + DSR_IPV4_OPT_LEN);
		if ((void *)(ports + 2) > end)
			return TC_ACT_OK;
		__builtin_memcpy(rev.addr, opt + 4, 4);
		__builtin_memcpy(&rev.port, opt + 2, 2);
		__builtin_memcpy(rt.saddr, &ip->daddr, 4);
		__builtin_memcpy(rt.daddr, &ip->saddr, 4);
		rt.proto = ip->protocol;
		rt.family = NP_FAMILY_V4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_DSTOPTS_)
			return TC_ACT_OK;
		__u8 *ext = (void *)(ip6 + 1);
		if ((void *)(ext + DSR_IPV6_EXT_LEN) > end || ext[1] != DSR_IPV6_EXT_LEN / 8 - 1 ||
		    ext[2] != DSR_IPV6_OPT_TYPE || ext[3] != DSR_IPV6_EXT_LEN - 4)
			return TC_ACT_OK;
		if (ext[0] != IPPROTO_TCP_ && ext[0] != IPPROTO_UDP_)
			return TC_ACT_OK;
		ports = (void *)(ext + DSR_IPV6_EXT_LEN);
		if ((void *)(ports + 2) > end)
			return TC_ACT_OK;
		__builtin_memcpy(rev.addr, ext + 4, 16);
		__builtin_memcpy(&rev.port, ext + 20, 2);
		__builtin_memcpy(rt.saddr, &ip6->daddr, 16);
		__builtin_memcpy(rt.daddr, &ip6->saddr, 16);
		rt.proto = ext[0];
		rt.family = NP_FAMILY_V6;
	} else {
		return TC_ACT_OK;
	}
	rt.sport = ports[1];
	rt.dport = ports[0];
	struct np_rev *old = bpf_map_lookup_elem(&np_np_rev, &rt);
	if (!old || __builtin_memcmp(old->addr, rev.addr, 16) || old->port != rev.port)
		bpf_map_update_elem(&np_np_rev, &rt, &rev, BPF_ANY);
	return TC_ACT_OK;
}

char __license[] SEC("license") = "Dual BSD/GPL";
