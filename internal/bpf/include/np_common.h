/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * np_common.h is the one header every nodeplane BPF program includes first.
 *
 * Kernel types come from the committed vmlinux.h (generated from the BTF of
 * the kernel we develop on, see README.md in this directory), helpers from
 * libbpf's bpf_helpers.h. vmlinux.h carries enums and structs but not the
 * kernel's #defines, so the few constants we need are spelled out here.
 */
#ifndef NP_COMMON_H
#define NP_COMMON_H

/*
 * nodeplane programs touch only UAPI structures (__sk_buff, bpf_sock_addr,
 * packet headers), whose layout the kernel keeps stable, so they need no
 * CO-RE relocations. Turning off vmlinux.h's blanket preserve_access_index
 * also keeps the objects byte-reproducible: with it, every context access
 * drags the whole context struct into BTF together with forward declarations
 * of the structs it points to, and clang orders those by heap address, which
 * varies with the length of the build directory's path. A program that does
 * need CO-RE can still ask for it per access (BPF_CORE_READ).
 */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"

#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* Ethernet protocol numbers (include/uapi/linux/if_ether.h). */
#define ETH_ALEN 6
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_ARP 0x0806
#define ETH_P_IPV6 0x86DD

/* tc verdicts (include/uapi/linux/pkt_cls.h). */
#define TC_ACT_UNSPEC (-1)
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define TC_ACT_REDIRECT 7

/* Address families (include/linux/socket.h). */
#define AF_INET 2
#define AF_INET6 10

/* IPv4 fragment bits in iphdr->frag_off, host order. */
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

/* ICMPv6 types (include/uapi/linux/icmpv6.h). */
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129
#define ICMPV6_NDISC_RS 133
#define ICMPV6_NDISC_RA 134
#define ICMPV6_NDISC_NS 135
#define ICMPV6_NDISC_NA 136

/* ICMPv4 types (include/uapi/linux/icmp.h). */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

/* bpf_fib_lookup / bpf_redirect_neigh flags live in enums and are in vmlinux.h. */

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/*
 * Compile-time layout checks: every struct shared with Go is checked here for
 * its size, and in Go against the BTF of the compiled object.
 */
#define NP_ASSERT_SIZE(type, size) \
	_Static_assert(sizeof(type) == (size), "unexpected size of " #type)

#endif /* NP_COMMON_H */
