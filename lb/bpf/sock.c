/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * Socket-layer load balancing: cgroup sock_addr programs that rewrite the
 * destination of connect() and sendmsg() from a service frontend to one of
 * its backends, and the source seen by recvmsg() and getpeername() back to
 * the frontend. Packets never carry the service address, so there is no
 * per-packet NAT and no conntrack.
 *
 * Semantics are Cilium's bpf_sock.c:
 *  - TCP picks a slot with bpf_get_prandom_u32(); UDP with the socket
 *    cookie, so every datagram of one socket reaches the same backend.
 *  - A service with no active backend refuses: connect() and sendmsg() fail
 *    with EHOSTUNREACH (bpf_set_retval); without it the kernel would say
 *    EPERM.
 *  - Session affinity is keyed by the client's network namespace cookie and
 *    expires affinity_timeout seconds after its last use.
 *  - Maglev services are selected like random ones here: Maglev hashes the
 *    5-tuple, which does not exist yet at connect() time; the per-service
 *    table serves the packet path.
 *  - An ExternalIP service is translated only when its address is one of
 *    the node's (np_lb_host_addr).
 *  - An IPv4-mapped IPv6 destination on an AF_INET6 socket is translated
 *    with the IPv4 tables.
 *
 * The Go function (*lb.Model).Connect is the reference for this file.
 */

#include "np_common.h"
#include "lb.h"

#define SYS_REJECT 0
#define SYS_PROCEED 1

#define EPERM 1
#define ENOENT 2
#define ENXIO 6
#define ENOMEM 12
#define EHOSTUNREACH 113

#define NSEC_PER_SEC 1000000000ULL

/* A selection that misses a slot or a backend raced with an update that
 * retired them; it rereads the service entry, which then points at a newer
 * complete bank. More retries would need more updates of the same service
 * within one connect(). */
#define LB_SELECT_TRIES 4

#ifndef READ_ONCE
#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#endif
#ifndef WRITE_ONCE
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x)) = (v)
#endif

/* The kernel keeps the port in network byte order in the low 16 bits of
 * user_port and only allows 32-bit access to it. */
static __always_inline __be16 ctx_dport(const struct bpf_sock_addr *ctx)
{
	volatile __u32 port = ctx->user_port;

	return (__be16)port;
}

static __always_inline void ctx_set_dport(struct bpf_sock_addr *ctx, __be16 port)
{
	ctx->user_port = (__u32)port;
}

static __always_inline void ctx_get_ip6(const struct bpf_sock_addr *ctx, __u32 *a)
{
	a[0] = ctx->user_ip6[0];
	a[1] = ctx->user_ip6[1];
	a[2] = ctx->user_ip6[2];
	a[3] = ctx->user_ip6[3];
}

static __always_inline void ctx_set_ip6(struct bpf_sock_addr *ctx, const __u32 *a)
{
	ctx->user_ip6[0] = a[0];
	ctx->user_ip6[1] = a[1];
	ctx->user_ip6[2] = a[2];
	ctx->user_ip6[3] = a[3];
}

/* ::ffff:a.b.c.d */
static __always_inline bool ip6_is_v4_mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0x0000ffff);
}

static __always_inline bool lb_proto_supported(__u32 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP;
}

static __always_inline __u64 lb_now_sec(void)
{
	return bpf_ktime_get_coarse_ns() / NSEC_PER_SEC;
}

/* The value that picks a slot: random per TCP connection, the socket cookie
 * for UDP, where a fresh random choice per datagram would scatter one flow. */
static __always_inline __u64 lb_selector(struct bpf_sock_addr *ctx, __u32 proto)
{
	if (proto == IPPROTO_TCP)
		return bpf_get_prandom_u32();
	return bpf_get_socket_cookie(ctx);
}

static __always_inline bool lb_affinity_match(__u32 backend_id, __u16 rev_nat)
{
	struct lb_affinity_match m = {
		.backend_id = backend_id,
		.rev_nat_id = rev_nat,
	};

	return bpf_map_lookup_elem(&np_lb_aff_match, &m) != NULL;
}

/* The backend a client is pinned to, or 0. Expired and stale pins are
 * removed, so the next selection starts afresh. A use refreshes the pin. */
static __always_inline __u32 lb_affinity_get(void *map, void *key, __u16 rev_nat,
					     __u32 timeout, __u64 now)
{
	struct lb_affinity_val *val;
	__u32 backend_id;

	val = bpf_map_lookup_elem(map, key);
	if (!val)
		return 0;
	/* Sticky for [last_used, last_used + timeout), in whole seconds. */
	if (READ_ONCE(val->last_used) + timeout <= now) {
		bpf_map_delete_elem(map, key);
		return 0;
	}
	backend_id = READ_ONCE(val->backend_id);
	if (!lb_affinity_match(backend_id, rev_nat)) {
		bpf_map_delete_elem(map, key);
		return 0;
	}
	WRITE_ONCE(val->last_used, now);
	return backend_id;
}

static __always_inline bool lb_host_addr4(__be32 addr)
{
	struct lb_host_addr key = {
		.address = { 0, 0, bpf_htonl(0x0000ffff), addr },
	};

	return bpf_map_lookup_elem(&np_lb_host_addr, &key) != NULL;
}

static __always_inline bool lb_host_addr6(const __u32 *addr)
{
	struct lb_host_addr key = {
		.address = { addr[0], addr[1], addr[2], addr[3] },
	};

	return bpf_map_lookup_elem(&np_lb_host_addr, &key) != NULL;
}

static __always_inline void lb_affinity_set(void *map, void *key, __u32 backend_id, __u64 now)
{
	struct lb_affinity_val val = {
		.last_used = now,
		.backend_id = backend_id,
	};

	bpf_map_update_elem(map, key, &val, BPF_ANY);
}

/*
 * lbN_backend_copy reads backend id once into *b and returns b, or NULL when
 * the entry is gone or does not belong to service rev_nat. A backend map
 * element the control plane deletes can be reused at once for another
 * backend (hash maps recycle freed elements without waiting for readers),
 * so fields read through the map pointer at different times may belong to
 * different backends: the destination and the reverse-NAT key of a
 * connection could disagree, and getpeername would show the backend. One
 * copy, checked against the service, keeps them together.
 */
static __always_inline const struct lb4_backend *lb4_backend_copy(__u32 id, __u16 rev_nat,
								  struct lb4_backend *b)
{
	const struct lb4_backend *be = bpf_map_lookup_elem(&np_lb4_be, &id);

	if (!be)
		return NULL;
	__builtin_memcpy(b, be, sizeof(*b));
	return b->rev_nat_index == rev_nat ? b : NULL;
}

static __always_inline const struct lb6_backend *lb6_backend_copy(__u32 id, __u16 rev_nat,
								  struct lb6_backend *b)
{
	const struct lb6_backend *be = bpf_map_lookup_elem(&np_lb6_be, &id);

	if (!be)
		return NULL;
	__builtin_memcpy(b, be, sizeof(*b));
	return b->rev_nat_index == rev_nat ? b : NULL;
}

/*
 * IPv4 forward translation of (*addr, *port). Returns 0 and the backend in
 * (*addr, *port); -ENXIO when the destination is not a service (leave it
 * alone); -EHOSTUNREACH when the service has no backend to offer; -ENOMEM
 * when the reverse entry could not be written.
 */
static __always_inline int lb4_xlate_fwd(struct bpf_sock_addr *ctx, __u32 proto,
					 __be32 *addr, __be16 *port)
{
	struct lb4_key key = {
		.address = *addr,
		.dport = *port,
		.proto = (__u8)proto,
	};
	struct lb4_affinity_key akey = {};
	const struct lb4_backend *be = NULL;
	struct lb4_backend b = {};
	const struct lb_service *svc, *slot;
	bool affinity = false, pinned = false;
	__u32 backend_id = 0;
	__u16 rev_nat = 0;
	__u64 now = 0;
	int i;

	if (!lb_proto_supported(proto))
		return -ENXIO;

	for (i = 0; i < LB_SELECT_TRIES; i++) {
		__u16 count, base;

		be = NULL;
		key.backend_slot = 0;
		svc = bpf_map_lookup_elem(&np_lb4_svc, &key);
		if (!svc)
			return -ENXIO;
		count = svc->count;
		base = svc->slot_base;
		rev_nat = svc->rev_nat_index;
		if (count == 0)
			return -EHOSTUNREACH;
		/* An external IP that is not the node's is left alone. */
		if (i == 0 && (svc->flags & SVC_F_EXTERNAL_IP) && !lb_host_addr4(key.address))
			return -EPERM;

		affinity = svc->flags & SVC_F_AFFINITY;
		if (affinity) {
			__u32 timeout = svc->affinity_timeout;

			now = lb_now_sec();
			akey.client_cookie = bpf_get_netns_cookie(ctx);
			akey.rev_nat_id = rev_nat;
			akey.netns_cookie = 1;
			backend_id = lb_affinity_get(&np_lb4_aff, &akey, rev_nat, timeout, now);
			if (backend_id) {
				be = lb4_backend_copy(backend_id, rev_nat, &b);
				if (be && b.state == BE_STATE_ACTIVE) {
					pinned = true;
					break;
				}
				be = NULL;
			}
		}

		key.backend_slot = base + (__u16)(lb_selector(ctx, proto) % count) + 1;
		slot = bpf_map_lookup_elem(&np_lb4_svc, &key);
		if (!slot)
			continue;
		backend_id = slot->backend_id;
		be = lb4_backend_copy(backend_id, rev_nat, &b);
		if (be)
			break;
	}
	if (!be)
		return -EHOSTUNREACH;

	if (affinity && !pinned)
		lb_affinity_set(&np_lb4_aff, &akey, backend_id, now);

	{
		struct lb4_sock_revnat_key rkey = {
			.cookie = bpf_get_socket_cookie(ctx),
			.address = b.address,
			.port = b.port,
		};
		struct lb4_sock_revnat rval = {
			.address = *addr,
			.port = *port,
			.rev_nat_index = rev_nat,
		};
		struct lb4_sock_revnat *old;

		old = bpf_map_lookup_elem(&np_lb4_sk_rnat, &rkey);
		if (!old || old->address != rval.address || old->port != rval.port ||
		    old->rev_nat_index != rval.rev_nat_index) {
			/* Nonzero, not < 0: before Linux 6.4 a map op's error
			 * reaches the program zero-extended (np_nat.h). */
			if (bpf_map_update_elem(&np_lb4_sk_rnat, &rkey, &rval, BPF_ANY))
				return -ENOMEM;
		}
	}

	*addr = b.address;
	*port = b.port;
	return 0;
}

/* IPv4 reverse translation of a peer (*addr, *port) the socket talks to.
 * Returns 0 with the frontend in (*addr, *port), or < 0 to leave it. */
static __always_inline int lb4_xlate_rev(struct bpf_sock_addr *ctx, __u32 proto,
					 __be32 *addr, __be16 *port)
{
	struct lb4_sock_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = *addr,
		.port = *port,
	};
	const struct lb4_sock_revnat *rval;
	const struct lb_service *svc;
	struct lb4_key key = {};

	rval = bpf_map_lookup_elem(&np_lb4_sk_rnat, &rkey);
	if (!rval)
		return -ENXIO;

	key.address = rval->address;
	key.dport = rval->port;
	key.proto = (__u8)proto;
	svc = bpf_map_lookup_elem(&np_lb4_svc, &key);
	/* The frontend is gone, was replaced, or lost its backends. */
	if (!svc || svc->rev_nat_index != rval->rev_nat_index || svc->count == 0) {
		bpf_map_delete_elem(&np_lb4_sk_rnat, &rkey);
		return -ENOENT;
	}
	*addr = rval->address;
	*port = rval->port;
	return 0;
}

static __always_inline bool ip6_eq(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline void ip6_copy(__u32 *dst, const __u32 *src)
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

/* IPv6 twin of lb4_xlate_fwd. */
static __always_inline int lb6_xlate_fwd(struct bpf_sock_addr *ctx, __u32 proto,
					 __u32 *addr, __be16 *port)
{
	struct lb6_key key = {
		.dport = *port,
		.proto = (__u8)proto,
	};
	struct lb6_affinity_key akey = {};
	const struct lb6_backend *be = NULL;
	struct lb6_backend b = {};
	const struct lb_service *svc, *slot;
	bool affinity = false, pinned = false;
	__u32 backend_id = 0;
	__u16 rev_nat = 0;
	__u64 now = 0;
	int i;

	if (!lb_proto_supported(proto))
		return -ENXIO;
	ip6_copy(key.address, addr);

	for (i = 0; i < LB_SELECT_TRIES; i++) {
		__u16 count, base;

		be = NULL;
		key.backend_slot = 0;
		svc = bpf_map_lookup_elem(&np_lb6_svc, &key);
		if (!svc)
			return -ENXIO;
		count = svc->count;
		base = svc->slot_base;
		rev_nat = svc->rev_nat_index;
		if (count == 0)
			return -EHOSTUNREACH;
		/* An external IP that is not the node's is left alone. */
		if (i == 0 && (svc->flags & SVC_F_EXTERNAL_IP) && !lb_host_addr6(key.address))
			return -EPERM;

		affinity = svc->flags & SVC_F_AFFINITY;
		if (affinity) {
			__u32 timeout = svc->affinity_timeout;

			now = lb_now_sec();
			akey.client_cookie = bpf_get_netns_cookie(ctx);
			akey.rev_nat_id = rev_nat;
			akey.netns_cookie = 1;
			backend_id = lb_affinity_get(&np_lb6_aff, &akey, rev_nat, timeout, now);
			if (backend_id) {
				be = lb6_backend_copy(backend_id, rev_nat, &b);
				if (be && b.state == BE_STATE_ACTIVE) {
					pinned = true;
					break;
				}
				be = NULL;
			}
		}

		key.backend_slot = base + (__u16)(lb_selector(ctx, proto) % count) + 1;
		slot = bpf_map_lookup_elem(&np_lb6_svc, &key);
		if (!slot)
			continue;
		backend_id = slot->backend_id;
		be = lb6_backend_copy(backend_id, rev_nat, &b);
		if (be)
			break;
	}
	if (!be)
		return -EHOSTUNREACH;

	if (affinity && !pinned)
		lb_affinity_set(&np_lb6_aff, &akey, backend_id, now);

	{
		struct lb6_sock_revnat_key rkey = {
			.cookie = bpf_get_socket_cookie(ctx),
			.port = b.port,
		};
		struct lb6_sock_revnat rval = {
			.port = *port,
			.rev_nat_index = rev_nat,
		};
		struct lb6_sock_revnat *old;

		ip6_copy(rkey.address, b.address);
		ip6_copy(rval.address, addr);
		old = bpf_map_lookup_elem(&np_lb6_sk_rnat, &rkey);
		if (!old || !ip6_eq(old->address, rval.address) || old->port != rval.port ||
		    old->rev_nat_index != rval.rev_nat_index) {
			if (bpf_map_update_elem(&np_lb6_sk_rnat, &rkey, &rval, BPF_ANY))
				return -ENOMEM;
		}
	}

	ip6_copy(addr, b.address);
	*port = b.port;
	return 0;
}

/* IPv6 twin of lb4_xlate_rev. */
static __always_inline int lb6_xlate_rev(struct bpf_sock_addr *ctx, __u32 proto,
					 __u32 *addr, __be16 *port)
{
	struct lb6_sock_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.port = *port,
	};
	const struct lb6_sock_revnat *rval;
	const struct lb_service *svc;
	struct lb6_key key = {};

	ip6_copy(rkey.address, addr);
	rval = bpf_map_lookup_elem(&np_lb6_sk_rnat, &rkey);
	if (!rval)
		return -ENXIO;

	ip6_copy(key.address, rval->address);
	key.dport = rval->port;
	key.proto = (__u8)proto;
	svc = bpf_map_lookup_elem(&np_lb6_svc, &key);
	if (!svc || svc->rev_nat_index != rval->rev_nat_index || svc->count == 0) {
		bpf_map_delete_elem(&np_lb6_sk_rnat, &rkey);
		return -ENOENT;
	}
	ip6_copy(addr, rval->address);
	*port = rval->port;
	return 0;
}

/* Forward translation for either family; the IPv6 hooks route IPv4-mapped
 * destinations through the IPv4 tables. */
static __always_inline int sock4_fwd(struct bpf_sock_addr *ctx)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = ctx_dport(ctx);
	int err;

	err = lb4_xlate_fwd(ctx, ctx->protocol, &addr, &port);
	if (err)
		return err;
	ctx->user_ip4 = addr;
	ctx_set_dport(ctx, port);
	return 0;
}

static __always_inline int sock6_fwd(struct bpf_sock_addr *ctx)
{
	__be16 port = ctx_dport(ctx);
	__u32 addr[4];
	int err;

	ctx_get_ip6(ctx, addr);
	if (ip6_is_v4_mapped(addr)) {
		__be32 addr4 = addr[3];

		err = lb4_xlate_fwd(ctx, ctx->protocol, &addr4, &port);
		addr[3] = addr4;
	} else {
		err = lb6_xlate_fwd(ctx, ctx->protocol, addr, &port);
	}
	if (err)
		return err;
	ctx_set_ip6(ctx, addr);
	ctx_set_dport(ctx, port);
	return 0;
}

static __always_inline void sock4_rev(struct bpf_sock_addr *ctx)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = ctx_dport(ctx);

	if (lb4_xlate_rev(ctx, ctx->protocol, &addr, &port))
		return;
	ctx->user_ip4 = addr;
	ctx_set_dport(ctx, port);
}

static __always_inline void sock6_rev(struct bpf_sock_addr *ctx)
{
	__be16 port = ctx_dport(ctx);
	__u32 addr[4];
	int err;

	ctx_get_ip6(ctx, addr);
	if (ip6_is_v4_mapped(addr)) {
		__be32 addr4 = addr[3];

		err = lb4_xlate_rev(ctx, ctx->protocol, &addr4, &port);
		addr[3] = addr4;
	} else {
		err = lb6_xlate_rev(ctx, ctx->protocol, addr, &port);
	}
	if (err)
		return;
	ctx_set_ip6(ctx, addr);
	ctx_set_dport(ctx, port);
}

/* connect() and sendmsg() refuse only when the service exists and cannot be
 * served; everything else proceeds untouched. */
static __always_inline int fwd_verdict(int err)
{
	if (err == -EHOSTUNREACH || err == -ENOMEM) {
		bpf_set_retval(err);
		return SYS_REJECT;
	}
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int np_sock4_connect(struct bpf_sock_addr *ctx)
{
	return fwd_verdict(sock4_fwd(ctx));
}

SEC("cgroup/connect6")
int np_sock6_connect(struct bpf_sock_addr *ctx)
{
	return fwd_verdict(sock6_fwd(ctx));
}

SEC("cgroup/sendmsg4")
int np_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return fwd_verdict(sock4_fwd(ctx));
}

SEC("cgroup/sendmsg6")
int np_sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return fwd_verdict(sock6_fwd(ctx));
}

SEC("cgroup/recvmsg4")
int np_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	sock4_rev(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/recvmsg6")
int np_sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	sock6_rev(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int np_sock4_getpeer(struct bpf_sock_addr *ctx)
{
	sock4_rev(ctx);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int np_sock6_getpeer(struct bpf_sock_addr *ctx)
{
	sock6_rev(ctx);
	return SYS_PROCEED;
}

char __license[] SEC("license") = "Dual BSD/GPL";
