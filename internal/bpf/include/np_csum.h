/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * np_csum.h: incremental Internet checksum updates (RFC 1624) on 16-bit
 * words as they lie in memory, for programs that rewrite headers without
 * the skb checksum helpers (XDP). They assume a full checksum in the
 * field, not a CHECKSUM_PARTIAL pseudo-header sum. Include np_common.h
 * first.
 */
#ifndef NP_CSUM_H
#define NP_CSUM_H

static __always_inline __u16 csum_fold32(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

static __always_inline void csum_replace2(__u16 *sum, __u16 from, __u16 to)
{
	__u32 s = (__u16)~*sum;
	s += (__u16)~from;
	s += to;
	*sum = ~csum_fold32(s);
}

static __always_inline void csum_replace4(__u16 *sum, __u32 from, __u32 to)
{
	csum_replace2(sum, (__u16)from, (__u16)to);
	csum_replace2(sum, (__u16)(from >> 16), (__u16)(to >> 16));
}

#endif /* NP_CSUM_H */
