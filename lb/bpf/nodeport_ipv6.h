/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * IPv6 extension headers on the north-south path, walked as Cilium's
 * ipv6_hdrlen does: hop-by-hop options, routing, destination options and
 * AH are skipped, at most NP_IPV6_MAX_HEADERS of them; a chain that is
 * longer, or ends in "no next header", is DROP_INVALID_EXTHDR, and one
 * cut short by the packet's end DROP_INVALID. A fragment header makes
 * the packet a fragment as an IPv4 one with the same offset and flag
 * would be: the first fragment carries the L4 header, later ones do not;
 * an atomic fragment (offset 0, no more fragments) is a whole packet.
 */
#ifndef NP_NODEPORT_IPV6_H
#define NP_NODEPORT_IPV6_H

#define NP_NEXTHDR_HOP 0
#define NP_NEXTHDR_ROUTING 43
#define NP_NEXTHDR_FRAGMENT 44
#define NP_NEXTHDR_AUTH 51
#define NP_NEXTHDR_NONE 59
#define NP_NEXTHDR_DEST 60
#define NP_IPV6_MAX_HEADERS 4

#define DROP_INVALID_EXTHDR 156

/* np_ipv6_l4 finds the upper-layer header of the IPv6 packet at ip6. It
 * returns 0 with *nexthdr, *l4, *frag (a fragment) and *later (a fragment
 * after the first) set, or a negative drop reason. */
static __always_inline int np_ipv6_l4(struct ipv6hdr *ip6, void *end, __u8 *nexthdr, void **l4, int *frag, int *later)
{
	__u8 nh = ip6->nexthdr;
	void *off = (void *)(ip6 + 1);

	*frag = 0;
	*later = 0;
#pragma unroll
	for (int i = 0; i < NP_IPV6_MAX_HEADERS; i++) {
		__u8 *h = off;

		switch (nh) {
		case NP_NEXTHDR_HOP:
		case NP_NEXTHDR_ROUTING:
		case NP_NEXTHDR_DEST:
		case NP_NEXTHDR_AUTH:
			if ((void *)(h + 2) > end)
				return -134; /* DROP_INVALID */
			/* AH counts 4-byte words less 2, the others 8-byte
			 * words less 1. */
			if (nh == NP_NEXTHDR_AUTH)
				off += ((__u32)h[1] + 2) * 4;
			else
				off += ((__u32)h[1] + 1) * 8;
			nh = h[0];
			continue;
		case NP_NEXTHDR_FRAGMENT: {
			if ((void *)(h + 8) > end)
				return -134; /* DROP_INVALID */
			if (*frag)
				return -DROP_INVALID_EXTHDR; /* two fragment headers */
			__be16 offlg;
			__builtin_memcpy(&offlg, h + 2, 2);
			if (offlg & bpf_htons(0xfff9)) {
				*frag = 1;
				*later = (offlg & bpf_htons(0xfff8)) != 0;
			}
			nh = h[0];
			off += 8;
			continue;
		}
		case NP_NEXTHDR_NONE:
			return -DROP_INVALID_EXTHDR;
		}
		break;
	}
	switch (nh) {
	case NP_NEXTHDR_HOP:
	case NP_NEXTHDR_ROUTING:
	case NP_NEXTHDR_DEST:
	case NP_NEXTHDR_AUTH:
	case NP_NEXTHDR_FRAGMENT:
	case NP_NEXTHDR_NONE:
		return -DROP_INVALID_EXTHDR; /* too many */
	}
	*nexthdr = nh;
	*l4 = off;
	return 0;
}

#endif /* NP_NODEPORT_IPV6_H */
