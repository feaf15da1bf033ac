/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * The endpoint datapath: two programs on the host-side veth of every
 * endpoint, loaded once per endpoint with its ID and addresses as load-time
 * constants.
 *
 *   np_from_endpoint  tc ingress: what the endpoint sends. Anti-spoofing,
 *                     conntrack, the endpoint's egress policy, and for a
 *                     local destination its ingress policy and a redirect
 *                     into its namespace; anything else goes to the stack,
 *                     stamped with its departure time where the endpoint
 *                     has a rate (edt.h).
 *   np_to_endpoint    tc egress: what the stack sends to the endpoint. The
 *                     source identity comes from the endpoints map or the
 *                     ipcache; conntrack and the endpoint's ingress policy
 *                     decide.
 *
 * Traffic between two local endpoints is redirected straight into the
 * destination's namespace with bpf_redirect_peer, so it never reaches the
 * destination's np_to_endpoint: its ingress policy is enforced here.
 *
 * Packets of known connections take a fast path: anti-spoofing against the
 * addresses compiled in, one conntrack lookup, and for a local destination
 * its endpoint entry. Their identities are the ones conntrack recorded when
 * the connection was created; identities are looked up (endpoints map,
 * ipcache) only for new connections.
 *
 * The overlay (overlay.h) adds a third program, np_from_overlay, on the
 * node's tunnel device, and sends traffic to other nodes' pods there.
 *
 * Both programs leave their verdict in skb->cb (layout below), which is how
 * BPF_PROG_TEST_RUN callers read the drop reason.
 */

#include "np_common.h"
#include "maps.h"
#include "events.h"
#include "parse.h"
#include "conntrack.h"
#include "policy.h"
#include "icmp6.h"
#include "edt.h"
#include "proxy.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* The endpoint this copy of the programs serves, and its addresses (zero
 * when it has none of a family); set at load time. An endpoint's addresses
 * never change, so anti-spoofing needs no lookup. */
volatile const __u16 np_endpoint_id = 0;
volatile const __be32 np_endpoint_ipv4 = 0;
volatile const __u32 np_endpoint_ipv6[4] = {};

/* Identity of addresses the ipcache does not know (Cilium's WORLD_ID). */
#define NP_WORLD_ID 2

/*
 * The verdict in skb->cb when a program returns:
 *   cb[0]  bits 0-7 drop reason (0: not dropped), 8-15 enum np_ct_state,
 *          bit 24 NP_VERDICT_VALID
 *   cb[1]  source identity
 *   cb[2]  destination identity
 *   cb[3]  redirect target ifindex (0: none)
 *   cb[4]  bits 0-15 proxy port, 16-23 policy match type, 24-31 L4 prefix
 *          length, of the last policy decision (new connections only)
 *
 * A connection whose policy entry has a proxy port goes to the L7 proxy
 * in the node's namespace instead (proxy.h).
 */
#define NP_VERDICT_VALID (1U << 24)

struct np_state {
	struct np_pkt pkt;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 redirect_ifindex;
	struct np_policy_result policy;
	__u8 reason;
	__u8 ct_state;
	__u8 hook;
	__u8 parsed;
	/* Trace and drop reporting (events.h). */
	__u8 ct_known;      /* ct_state is conntrack's */
	__u8 monitor;       /* medium aggregation: this packet is to be reported */
	__u8 aggregation;   /* np_trace_config.aggregation */
	__u8 policy_dir;    /* enum np_direction of the denying policy, 0 for none */
	__u16 policy_ep;    /* endpoint of the denying policy */
	__u16 dst_ep;       /* local endpoint the packet is delivered to */
	__u8 overlay;       /* sent to the tunnel device (overlay.h) */
	__u8 to_proxy;      /* redirected to the L7 proxy (proxy.h) */
};

static __always_inline void np_fill_hdr(struct np_event_hdr *h, struct __sk_buff *skb, __u8 type)
{
	h->type = type;
	h->version = NP_EVENT_VERSION;
	h->endpoint_id = np_endpoint_id;
	h->ifindex = skb->ifindex;
	h->ktime_ns = bpf_ktime_get_ns();
}

static __always_inline __u8 np_obs_of(__u8 hook)
{
	if (hook == NP_HOOK_FROM_OVERLAY)
		return NP_OBS_FROM_OVERLAY;
	if (hook == NP_HOOK_TO_OVERLAY)
		return NP_OBS_TO_OVERLAY;
	return hook == NP_HOOK_FROM_ENDPOINT ? NP_OBS_FROM_ENDPOINT : NP_OBS_TO_ENDPOINT;
}

static __always_inline void np_event_lost(void)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(&np_events_lost, &zero);

	if (lost)
		*lost += 1;
}

/* The record-filling functions take the record type as a parameter and are
 * not inlined, which puts the event layouts into the object's BTF for the
 * Go layout test. */
static __noinline void np_fill_drop(struct np_drop_event *e, struct __sk_buff *skb,
				    const struct np_state *s)
{
	__u32 cap;

	__builtin_memset(e, 0, sizeof(*e));
	np_fill_hdr(&e->hdr, skb, NP_EVENT_DROP);
	if (s->parsed) {
		e->tuple = s->pkt.tuple;
		e->flags = NP_DROP_F_TUPLE;
		e->tcp_flags = s->pkt.tcp_flags;
		e->policy_port = s->pkt.policy_port;
	}
	if (s->ct_known) {
		e->flags |= NP_DROP_F_CT;
		e->ct_state = s->ct_state;
	}
	e->src_identity = s->src_identity;
	e->dst_identity = s->dst_identity;
	e->reason = s->reason;
	e->obs_point = np_obs_of(s->hook);
	if (s->policy_dir) {
		e->flags |= NP_DROP_F_POLICY;
		e->direction = s->policy_dir;
		e->policy_endpoint_id = s->policy_ep;
	} else {
		/* No policy decided: the writer's side of the packet. */
		e->direction = s->hook == NP_HOOK_FROM_ENDPOINT || s->hook == NP_HOOK_TO_OVERLAY ?
				       NP_DIR_EGRESS : NP_DIR_INGRESS;
		e->policy_endpoint_id = np_endpoint_id;
	}
	e->orig_len = skb->len;
	cap = skb->len;
	if (cap > NP_EVENT_CAP_LEN)
		cap = NP_EVENT_CAP_LEN;
	if (cap > 0) {
		/* bpf_skb_load_bytes refuses a length that may be 0, and the
		 * verifier of Linux 6.1 learns no lower bound from cap != 0: a
		 * mask it can follow bounds cap to [1, NP_EVENT_CAP_LEN]. The
		 * empty asm keeps clang from folding the mask away. */
		_Static_assert((NP_EVENT_CAP_LEN & (NP_EVENT_CAP_LEN - 1)) == 0,
			       "NP_EVENT_CAP_LEN must be a power of two");
		cap -= 1;
		asm volatile("" : "+r"(cap));
		cap = (cap & (NP_EVENT_CAP_LEN - 1)) + 1;
		if (bpf_skb_load_bytes(skb, 0, e->data, cap) == 0)
			e->cap_len = cap;
	}
}

static __always_inline void np_emit_drop(struct __sk_buff *skb, const struct np_state *s)
{
	struct np_drop_event *e = bpf_ringbuf_reserve(&np_events, sizeof(*e), 0);

	if (!e) {
		np_event_lost();
		return;
	}
	np_fill_drop(e, skb, s);
	bpf_ringbuf_submit(e, 0);
}

static __noinline void np_fill_verdict(struct np_policy_verdict_event *e, struct __sk_buff *skb,
				       const struct np_state *s, __u16 policy_endpoint_id,
				       __u8 egress)
{
	__builtin_memset(e, 0, sizeof(*e));
	np_fill_hdr(&e->hdr, skb, NP_EVENT_POLICY_VERDICT);
	e->tuple = s->pkt.tuple;
	e->src_identity = s->src_identity;
	e->dst_identity = s->dst_identity;
	e->policy_endpoint_id = policy_endpoint_id;
	e->proxy_port = s->policy.proxy_port;
	e->obs_point = np_obs_of(s->hook);
	e->egress = egress;
	e->verdict = s->policy.reason;
	e->match_type = s->policy.match_type;
	e->l4_prefix_len = s->policy.l4_prefix_len;
	e->tcp_flags = s->pkt.tcp_flags;
	e->policy_port = s->pkt.policy_port;
}

static __always_inline void np_emit_verdict(struct __sk_buff *skb, const struct np_state *s,
					    __u16 policy_endpoint_id, __u8 egress)
{
	struct np_policy_verdict_event *e = bpf_ringbuf_reserve(&np_events, sizeof(*e), 0);

	if (!e) {
		np_event_lost();
		return;
	}
	np_fill_verdict(e, skb, s, policy_endpoint_id, egress);
	bpf_ringbuf_submit(e, 0);
}

/* ---- trace records (events.h: monitor aggregation) ---- */

static __noinline void np_fill_trace(struct np_trace_event *e, struct __sk_buff *skb,
				     const struct np_state *s, __u8 obs_point)
{
	__builtin_memset(e, 0, sizeof(*e));
	np_fill_hdr(&e->hdr, skb, NP_EVENT_TRACE);
	e->tuple = s->pkt.tuple;
	e->src_identity = s->src_identity;
	e->dst_identity = s->dst_identity;
	e->obs_point = obs_point;
	e->reason = s->ct_state;
	e->orig_len = skb->len;
	e->tcp_flags = s->pkt.tcp_flags;
	e->policy_port = s->pkt.policy_port;
	if (obs_point == NP_OBS_TO_ENDPOINT) {
		e->dst_endpoint_id = s->dst_ep;
		e->dst_ifindex = s->redirect_ifindex ? s->redirect_ifindex : skb->ifindex;
	}
}

static __always_inline void np_emit_trace(struct __sk_buff *skb, const struct np_state *s,
					  __u8 obs_point)
{
	struct np_trace_event *e = bpf_ringbuf_reserve(&np_events, sizeof(*e), 0);

	if (!e) {
		np_event_lost();
		return;
	}
	np_fill_trace(e, skb, s, obs_point);
	bpf_ringbuf_submit(e, 0);
}

/* np_trace_config_get returns the aggregation setting, 0 (no traces) when
 * the map is missing its entry. */
static __always_inline const struct np_trace_config *np_trace_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&np_trace_config, &zero);
}

/* np_ct_report decides, for aggregation medium and above, whether a packet
 * of a known connection is reported, as Cilium's __ct_update_timeout: a
 * report flag not seen before in this direction, or the interval passed
 * since the last report. It must run before np_ct_update adds the packet's
 * flags to the entry. */
static __always_inline __u8 np_ct_report(struct np_ct_entry *e, const struct np_pkt *p,
					 int reply, __u32 now,
					 const struct np_trace_config *cfg)
{
	__u8 seen = reply ? e->tcp_flags_rev : e->tcp_flags_fwd;
	__u32 last = reply ? e->last_report_rev : e->last_report_fwd;

	if ((p->tcp_flags & cfg->report_flags & ~seen) || now - last >= cfg->interval) {
		if (reply)
			e->last_report_rev = now;
		else
			e->last_report_fwd = now;
		return 1;
	}
	return 0;
}

/* np_trace reports a forwarded packet at the points its path passed. */
static __always_inline void np_trace(struct __sk_buff *skb, const struct np_state *s, int action)
{
	__u8 level;

	if (!s->aggregation || !s->parsed)
		return;
	level = s->aggregation - 1;
	if (level >= NP_AGGREGATE_MEDIUM && !s->monitor)
		return;
	if (s->hook == NP_HOOK_TO_ENDPOINT) {
		np_emit_trace(skb, s, NP_OBS_TO_ENDPOINT);
		return;
	}
	if (s->hook == NP_HOOK_TO_OVERLAY) {
		np_emit_trace(skb, s, NP_OBS_TO_OVERLAY);
		return;
	}
	if (level < NP_AGGREGATE_LOWEST)
		np_emit_trace(skb, s, np_obs_of(s->hook));
	if (s->to_proxy)
		np_emit_trace(skb, s, NP_OBS_TO_PROXY);
	else if (s->overlay)
		np_emit_trace(skb, s, NP_OBS_TO_OVERLAY);
	else
		np_emit_trace(skb, s, action == TC_ACT_REDIRECT ? NP_OBS_TO_ENDPOINT : NP_OBS_TO_STACK);
}

/* np_trace_prepare reads the aggregation level and, from medium on,
 * decides whether this packet is reported; it runs right after the
 * conntrack lookup. New and related packets are always reported. */
static __always_inline void np_trace_prepare(struct np_state *s, struct np_ct_entry *ct, __u32 now)
{
	const struct np_trace_config *cfg = np_trace_config_get();

	s->ct_known = 1;
	if (!cfg || !cfg->aggregation)
		return;
	s->aggregation = cfg->aggregation;
	if (cfg->aggregation - 1 < NP_AGGREGATE_MEDIUM)
		return;
	if (!ct)
		s->monitor = 1;
	else
		s->monitor = np_ct_report(ct, &s->pkt, s->ct_state == NP_CT_REPLY, now, cfg);
}

/* np_exit records the verdict in skb->cb and the counters, reports drops,
 * and returns the tc action. */
static __always_inline int np_exit(struct __sk_buff *skb, struct np_state *s, int action)
{
	__u32 idx = ((__u32)s->hook << 8) | s->reason;
	struct np_counter *c;

	skb->cb[0] = s->reason | ((__u32)s->ct_state << 8) | NP_VERDICT_VALID;
	skb->cb[1] = s->src_identity;
	skb->cb[2] = s->dst_identity;
	skb->cb[3] = s->redirect_ifindex;
	skb->cb[4] = s->policy.proxy_port | ((__u32)s->policy.match_type << 16) |
		     ((__u32)s->policy.l4_prefix_len << 24);

	c = bpf_map_lookup_elem(&np_counters, &idx);
	if (c) {
		c->packets += 1;
		c->bytes += skb->len;
	}
	if (s->reason) {
		np_emit_drop(skb, s);
		return TC_ACT_SHOT;
	}
	np_trace(skb, s, action);
	return action;
}

static __always_inline int np_is_own_addr(const union np_addr *a, __u8 ip_version)
{
	if (ip_version == NP_IPV4)
		return np_endpoint_ipv4 != 0 && a->ip4 == np_endpoint_ipv4;
	return (np_endpoint_ipv6[0] | np_endpoint_ipv6[1] | np_endpoint_ipv6[2] | np_endpoint_ipv6[3]) &&
	       a->words[0] == np_endpoint_ipv6[0] && a->words[1] == np_endpoint_ipv6[1] &&
	       a->words[2] == np_endpoint_ipv6[2] && a->words[3] == np_endpoint_ipv6[3];
}

/* np_ct_identities takes a known connection's identities from its entry:
 * what they were when it was created. */
static __always_inline void np_ct_identities(struct np_state *s, const struct np_ct_entry *ct)
{
	if (s->ct_state == NP_CT_REPLY) {
		s->src_identity = ct->dst_identity;
		s->dst_identity = ct->src_identity;
	} else {
		s->src_identity = ct->src_identity;
		s->dst_identity = ct->dst_identity;
	}
}

static __always_inline struct np_endpoint_info *np_lookup_endpoint(const union np_addr *addr,
								   __u8 ip_version)
{
	struct np_endpoint_key key = {
		.addr = *addr,
		.ip_version = ip_version,
	};

	return bpf_map_lookup_elem(&np_endpoints, &key);
}

/* np_ipcache_lookup returns the ipcache's longest match for an address,
 * or NULL. */
static __always_inline const struct np_ipcache_info *np_ipcache_lookup(const union np_addr *addr,
								       __u8 ip_version)
{
	struct np_ipcache_key key = {
		.prefixlen = NP_IPCACHE_STATIC_PREFIX + (ip_version == NP_IPV4 ? 32 : 128),
		.ip_version = ip_version,
		.addr = *addr,
	};

	return bpf_map_lookup_elem(&np_ipcache, &key);
}

/* Identity of a remote address: the ipcache's longest match, else world. */
static __always_inline __u32 np_ipcache_identity(const union np_addr *addr, __u8 ip_version)
{
	const struct np_ipcache_info *info = np_ipcache_lookup(addr, ip_version);

	return info ? info->identity : NP_WORLD_ID;
}

/* Identity of an address: a local endpoint's, else the ipcache's longest
 * match, else world. */
static __always_inline __u32 np_identity_of(const union np_addr *addr, __u8 ip_version)
{
	struct np_endpoint_info *ep = np_lookup_endpoint(addr, ip_version);

	return ep ? ep->identity : np_ipcache_identity(addr, ip_version);
}

/* np_check_policy decides a new connection against one endpoint's policy,
 * reports the verdict, and returns the drop reason or 0. */
static __always_inline __u8 np_check_policy(struct __sk_buff *skb, struct np_state *s,
					    __u16 endpoint_id, __u8 egress)
{
	struct np_policy_key key = {
		.prefixlen = NP_POLICY_FULL_PREFIX,
		.identity = egress ? s->dst_identity : s->src_identity,
		.egress = egress,
		.protocol = s->pkt.tuple.proto,
		.dport = s->pkt.policy_port,
	};

	np_policy_decide(endpoint_id, &key, &s->policy);
	np_emit_verdict(skb, s, endpoint_id, egress);
	if (s->policy.reason) {
		s->policy_dir = egress ? NP_DIR_EGRESS : NP_DIR_INGRESS;
		s->policy_ep = endpoint_id;
	}
	return s->policy.reason;
}

/* np_refuse_ingress_proxy fails closed where an allowing ingress entry
 * has a proxy port that the hook cannot honour (no proxy socket can be
 * assigned to the packet there): the packet is dropped as
 * PROXY_LOOKUP_FAILED (TCP, UDP) or PROXY_UNKNOWN_PROTO, decided by
 * endpoint ep's ingress policy, never let through without its L7 rules. */
static __always_inline void np_refuse_ingress_proxy(struct np_state *s, __u32 ep)
{
	if (s->reason || !s->policy.proxy_port)
		return;
	s->reason = s->pkt.tuple.proto == IPPROTO_TCP || s->pkt.tuple.proto == IPPROTO_UDP ?
			    DROP_PROXY_LOOKUP_FAILED :
			    DROP_PROXY_UNKNOWN_PROTO;
	s->policy_dir = NP_DIR_INGRESS;
	s->policy_ep = ep;
}

/* np_redirect_local hands the packet to a local endpoint: it routes it
 * (hop limit, MACs) and redirects it into the endpoint's namespace. A
 * packet whose hop limit runs out goes to the stack, which answers with
 * ICMP time exceeded. */
static __always_inline int np_redirect_local(struct __sk_buff *skb, struct np_state *s,
					     const struct np_endpoint_info *dst)
{
	void *data, *data_end;
	struct ethhdr *eth;

	if (s->pkt.tuple.ip_version == NP_IPV4) {
		struct iphdr *ip;
		__u32 csum;

		if (np_pull(skb, ETH_HLEN + sizeof(*ip), &data, &data_end))
			return TC_ACT_OK;
		ip = data + ETH_HLEN;
		if (ip->ttl <= 1)
			return TC_ACT_OK;
		/* RFC 1624 incremental update, as the kernel's ip_decrease_ttl. */
		csum = (__u32)ip->check + (__u32)bpf_htons(0x0100);
		ip->check = (__u16)(csum + (csum >= 0xFFFF));
		ip->ttl--;
	} else {
		struct ipv6hdr *ip6;

		if (np_pull(skb, ETH_HLEN + sizeof(*ip6), &data, &data_end))
			return TC_ACT_OK;
		ip6 = data + ETH_HLEN;
		if (ip6->hop_limit <= 1)
			return TC_ACT_OK;
		ip6->hop_limit--;
	}
	eth = data;
	__builtin_memcpy(eth->h_dest, dst->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, dst->node_mac, ETH_ALEN);
	s->redirect_ifindex = dst->ifindex;
	return bpf_redirect_peer(dst->ifindex, 0);
}

/* np_answer_ns answers the endpoint's neighbour solicitation for its
 * gateway with the gateway's advertisement, sent straight back into the
 * endpoint's namespace, and drops any other (icmp6.h). */
static __always_inline int np_answer_ns(struct __sk_buff *skb, struct np_state *s)
{
	union np_addr own = {
		.words = { np_endpoint_ipv6[0], np_endpoint_ipv6[1], np_endpoint_ipv6[2],
			   np_endpoint_ipv6[3] },
	};
	struct np_endpoint_info *ep = NULL;

	if (own.words[0] | own.words[1] | own.words[2] | own.words[3])
		ep = np_lookup_endpoint(&own, NP_IPV6);
	if (!ep || ep->endpoint_id != np_endpoint_id) {
		s->reason = ep ? DROP_UNKNOWN_TARGET : DROP_EP_NOT_READY;
		return TC_ACT_SHOT;
	}
	s->reason = np_icmp6_answer_ns(skb, &s->pkt, ep->node_mac);
	if (s->reason)
		return TC_ACT_SHOT;
	s->redirect_ifindex = skb->ifindex;
	return bpf_redirect_peer(skb->ifindex, 0);
}

/* np_admit parses the packet and checks that the endpoint owns its source
 * (from the endpoint) or its destination (to the endpoint). It returns
 * TC_ACT_UNSPEC to go on, or the action to exit with. Only an admitted
 * packet may record a first fragment, so that an endpoint cannot plant
 * ports for datagrams of addresses it does not own. */
static __always_inline int np_admit(struct __sk_buff *skb, struct np_state *s, bool from_endpoint)
{
	int ret = np_parse(skb, &s->pkt);

	if (ret == NP_PARSE_PASS)
		return TC_ACT_OK;
	if (ret) {
		s->reason = ret;
		return TC_ACT_SHOT;
	}
	s->parsed = 1;
	if (from_endpoint && (s->pkt.flags & NP_PKT_ND_NS))
		return np_answer_ns(skb, s);
	if (from_endpoint && !np_is_own_addr(&s->pkt.tuple.saddr, s->pkt.tuple.ip_version)) {
		s->reason = DROP_INVALID_SIP; /* anti-spoofing */
		return TC_ACT_SHOT;
	}
	if (!from_endpoint && !np_is_own_addr(&s->pkt.tuple.daddr, s->pkt.tuple.ip_version)) {
		s->reason = DROP_UNKNOWN_TARGET;
		return TC_ACT_SHOT;
	}
	np_frag_record(&s->pkt);
	return TC_ACT_UNSPEC;
}

#include "overlay.h"
#include "nat.h"

SEC("tc")
int np_from_endpoint(struct __sk_buff *skb)
{
	struct np_state s = { .hook = NP_HOOK_FROM_ENDPOINT };
	struct np_endpoint_info *src, *dst;
	/* The destination's ipcache entry, once looked up (new connections
	 * to addresses that are not local endpoints): the overlay needs it
	 * again. */
	const struct np_ipcache_info *dst_info = NULL;
	bool dst_info_known = false;
	struct np_ct_entry *ct = NULL;
	__u16 proxy_port = 0;
	__u32 now;
	int ret;

	ret = np_admit(skb, &s, true);
	if (ret != TC_ACT_UNSPEC)
		return np_exit(skb, &s, ret);
	dst = np_lookup_endpoint(&s.pkt.tuple.daddr, s.pkt.tuple.ip_version);
	if (dst)
		s.dst_ep = dst->endpoint_id;

	s.ct_state = np_ct_lookup(skb, &s.pkt, &ct);
	now = np_now_sec();
	np_trace_prepare(&s, ct, now);
	if (ct) {
		/* Established or reply: the fast path, no identity lookups. */
		np_ct_identities(&s, ct);
		np_ct_update(ct, &s.pkt, s.ct_state == NP_CT_REPLY, now);
	} else {
		/* Our identity lives in the endpoints map, so that it can change
		 * without reloading the program. */
		src = np_lookup_endpoint(&s.pkt.tuple.saddr, s.pkt.tuple.ip_version);
		if (!src || src->endpoint_id != np_endpoint_id) {
			s.reason = DROP_EP_NOT_READY;
			return np_exit(skb, &s, TC_ACT_SHOT);
		}
		s.src_identity = src->identity;
		if (dst) {
			s.dst_identity = dst->identity;
		} else {
			dst_info = np_ipcache_lookup(&s.pkt.tuple.daddr, s.pkt.tuple.ip_version);
			dst_info_known = true;
			s.dst_identity = dst_info ? dst_info->identity : NP_WORLD_ID;
		}
	}

	if (s.ct_state == NP_CT_NEW) {
		s.reason = np_check_policy(skb, &s, np_endpoint_id, 1);
		/* The source's egress proxy port wins; for a local destination
		 * the proxy then enforces both sides' L7 rules. */
		proxy_port = s.policy.proxy_port;
		if (!s.reason && dst) {
			s.reason = np_check_policy(skb, &s, dst->endpoint_id, 0);
			if (!proxy_port)
				proxy_port = s.policy.proxy_port;
		}
		/* A connection the proxy cannot take leaves no entry. */
		if (!s.reason && proxy_port)
			s.reason = np_proxy_redirect(skb, &s.pkt, proxy_port);
		if (s.reason)
			return np_exit(skb, &s, TC_ACT_SHOT);
		if (np_ct_create(&s.pkt, s.src_identity, s.dst_identity, np_endpoint_id, now,
				 proxy_port ? NP_CT_PROXY | ((__u32)proxy_port << NP_CT_PROXY_PORT_SHIFT) : 0)) {
			s.reason = DROP_CT_CREATE_FAILED;
			return np_exit(skb, &s, TC_ACT_SHOT);
		}
	} else if (ct && s.ct_state == NP_CT_ESTABLISHED && (ct->flags & NP_CT_PROXY)) {
		proxy_port = ct->flags >> NP_CT_PROXY_PORT_SHIFT;
		s.reason = np_proxy_redirect(skb, &s.pkt, proxy_port);
		if (s.reason)
			return np_exit(skb, &s, TC_ACT_SHOT);
	}

	if (proxy_port) {
		/* To the proxy through the node's stack (proxy.h): no
		 * redirect to the destination, no rate, no tunnel. */
		s.to_proxy = 1;
		return np_exit(skb, &s, TC_ACT_OK);
	}

	if (dst)
		return np_exit(skb, &s, np_redirect_local(skb, &s, dst));
	/* What leaves for the stack leaves at the endpoint's rate (edt.h);
	 * traffic to local endpoints is not limited, as in Cilium, whose EDT
	 * runs on the node's egress devices. */
	s.reason = np_edt_sched_departure(skb, np_endpoint_id);
	if (s.reason)
		return np_exit(skb, &s, TC_ACT_SHOT);
	ret = np_overlay_encap(skb, &s, dst_info, dst_info_known);
	if (ret != TC_ACT_UNSPEC)
		return np_exit(skb, &s, ret);
	return np_exit(skb, &s, TC_ACT_OK);
}

SEC("tc")
int np_to_endpoint(struct __sk_buff *skb)
{
	struct np_state s = { .hook = NP_HOOK_TO_ENDPOINT };
	struct np_endpoint_info *dst;
	struct np_ct_entry *ct = NULL;
	__u32 from_proxy;
	__u32 now;
	int ret;

	ret = np_admit(skb, &s, false);
	if (ret != TC_ACT_UNSPEC)
		return np_exit(skb, &s, ret);

	s.dst_ep = np_endpoint_id;
	s.ct_state = np_ct_lookup(skb, &s.pkt, &ct);
	now = np_now_sec();
	np_trace_prepare(&s, ct, now);
	if (ct) {
		np_ct_identities(&s, ct);
		np_ct_update(ct, &s.pkt, s.ct_state == NP_CT_REPLY, now);
		return np_exit(skb, &s, TC_ACT_OK);
	}

	dst = np_lookup_endpoint(&s.pkt.tuple.daddr, s.pkt.tuple.ip_version);
	if (!dst || dst->endpoint_id != np_endpoint_id) {
		s.reason = DROP_EP_NOT_READY;
		return np_exit(skb, &s, TC_ACT_SHOT);
	}
	s.dst_identity = dst->identity;
	/* The L7 proxy's upstream connections carry their source's identity
	 * in the mark (proxy.h). */
	from_proxy = np_proxy_mark(skb);
	s.src_identity = from_proxy ? np_mark_identity(skb->mark) :
				      np_identity_of(&s.pkt.tuple.saddr, s.pkt.tuple.ip_version);

	if (s.ct_state == NP_CT_NEW) {
		/* An ingress proxy decided this endpoint's ingress policy when
		 * it took the connection. */
		if (from_proxy != NP_MARK_FROM_PROXY_INGRESS) {
			s.reason = np_check_policy(skb, &s, np_endpoint_id, 0);
			/* This hook sees the stack's packets after routing,
			 * where no socket can be assigned. */
			np_refuse_ingress_proxy(&s, np_endpoint_id);
		}
		if (s.reason)
			return np_exit(skb, &s, TC_ACT_SHOT);
		if (np_ct_create(&s.pkt, s.src_identity, s.dst_identity, np_endpoint_id, now, 0)) {
			s.reason = DROP_CT_CREATE_FAILED;
			return np_exit(skb, &s, TC_ACT_SHOT);
		}
	}
	return np_exit(skb, &s, TC_ACT_OK);
}
