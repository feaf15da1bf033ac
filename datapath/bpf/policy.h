/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * policy.h decides a packet against an endpoint's policy map. The decision
 * is datapath.LookupPolicy in Go, entry for entry; a test runs both on
 * random maps and packets and compares.
 *
 * Two longest-prefix lookups, as in Cilium's bpf/lib/policy.h: one for the
 * peer's identity, one for identity 0 (any peer). A deny for the peer
 * decides at once. Otherwise the any-peer entry wins when it denies, when
 * there is no peer entry, when its proxy-port priority is higher, or at
 * equal priority when its L4 prefix is longer; else the peer entry wins.
 * No entry at all is the default deny.
 */
#ifndef NP_POLICY_H
#define NP_POLICY_H

#include "maps.h"
#include "events.h"

struct np_policy_result {
	__u16 proxy_port;    /* host order */
	__u8 reason;         /* 0 allowed, DROP_POLICY, DROP_POLICY_DENY, DROP_EP_NOT_READY */
	__u8 match_type;     /* enum np_policy_match */
	__u8 l4_prefix_len;
};

static __always_inline __u8 np_match_type(int any_peer, __u8 l4_prefix_len)
{
	if (any_peer)
		return l4_prefix_len == 0 ? NP_POLICY_MATCH_ALL :
		       l4_prefix_len <= 8 ? NP_POLICY_MATCH_PROTO_ONLY :
					    NP_POLICY_MATCH_L4_ONLY;
	return l4_prefix_len > 8 ? NP_POLICY_MATCH_L3_L4 :
	       l4_prefix_len > 0 ? NP_POLICY_MATCH_L3_PROTO :
				   NP_POLICY_MATCH_L3_ONLY;
}

/* np_policy_result_from fills r from the deciding entry. Not inlined: its
 * signature is what puts struct np_policy_entry into the object's BTF,
 * which the inner map definition and the Go layout test need. */
static __noinline void np_policy_result_from(const struct np_policy_entry *win, int any_peer,
					     struct np_policy_result *r)
{
	r->l4_prefix_len = win->l4_prefix_len;
	r->match_type = np_match_type(any_peer, win->l4_prefix_len);
	if (win->flags & NP_POLICY_DENY) {
		r->reason = DROP_POLICY_DENY;
		r->proxy_port = 0;
		return;
	}
	r->reason = 0;
	r->proxy_port = bpf_ntohs(win->proxy_port);
}

/* np_policy_decide looks key (whose identity is the peer's) up in the
 * policy map of endpoint_id. Not inlined, for the same BTF reason. */
static __noinline void np_policy_decide(__u16 endpoint_id, const struct np_policy_key *peer_key,
					struct np_policy_result *r)
{
	struct np_policy_key key = *peer_key;
	const struct np_policy_entry *l3, *l4;
	__u32 ep = endpoint_id;
	void *map;

	r->proxy_port = 0;
	r->match_type = NP_POLICY_MATCH_NONE;
	r->l4_prefix_len = 0;

	map = bpf_map_lookup_elem(&np_policy, &ep);
	if (!map) {
		r->reason = DROP_EP_NOT_READY;
		return;
	}

	l3 = bpf_map_lookup_elem(map, &key);
	if (l3 && (l3->flags & NP_POLICY_DENY)) {
		np_policy_result_from(l3, 0, r);
		return;
	}
	key.identity = 0;
	l4 = bpf_map_lookup_elem(map, &key);
	if (l4 && ((l4->flags & NP_POLICY_DENY) || !l3 ||
		   l4->proxy_port_priority > l3->proxy_port_priority ||
		   (l4->proxy_port_priority == l3->proxy_port_priority &&
		    l4->l4_prefix_len > l3->l4_prefix_len))) {
		np_policy_result_from(l4, 1, r);
		return;
	}
	if (l3) {
		np_policy_result_from(l3, 0, r);
		return;
	}
	r->reason = DROP_POLICY;
}

#endif /* NP_POLICY_H */
