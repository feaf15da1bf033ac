/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * np_jhash.h: the kernel's jhash (include/linux/jhash.h, Bob Jenkins'
 * lookup3), which Cilium's datapath uses to hash flows for Maglev
 * (bpf/lib/jhash.h). Include np_common.h first.
 */
#ifndef NP_JHASH_H
#define NP_JHASH_H

static __always_inline __u32 rol32(__u32 w, __u32 s) { return (w << s) | (w >> (32 - s)); }

#define JHASH_INITVAL 0xdeadbeef

#define jhash_mix(a, b, c)                  \
	{                                   \
		a -= c; a ^= rol32(c, 4);   \
		c += b;                     \
		b -= a; b ^= rol32(a, 6);   \
		a += c;                     \
		c -= b; c ^= rol32(b, 8);   \
		b += a;                     \
		a -= c; a ^= rol32(c, 16);  \
		c += b;                     \
		b -= a; b ^= rol32(a, 19);  \
		a += c;                     \
		c -= b; c ^= rol32(b, 4);   \
		b += a;                     \
	}

#define jhash_final(a, b, c)                 \
	{                                    \
		c ^= b; c -= rol32(b, 14);   \
		a ^= c; a -= rol32(c, 11);   \
		b ^= a; b -= rol32(a, 25);   \
		c ^= b; c -= rol32(b, 16);   \
		a ^= c; a -= rol32(c, 4);    \
		b ^= a; b -= rol32(a, 14);   \
		c ^= b; c -= rol32(b, 24);   \
	}

static __always_inline __u32 jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	initval += JHASH_INITVAL + (3 << 2);
	a += initval;
	b += initval;
	c += initval;
	jhash_final(a, b, c);
	return c;
}

#endif /* NP_JHASH_H */
