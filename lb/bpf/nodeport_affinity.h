/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * Session affinity (sessionAffinity: ClientIP) on the north-south path, as
 * Cilium's lb4/lb6_affinity_backend_id_by_addr and
 * lb*_update_affinity_by_addr: a client address is pinned, per frontend,
 * to the backend its flows use. A new flow of a pinned client takes the
 * pinned backend while the pin is younger than the frontend's timeout
 * and the backend still takes new flows (np_np_aff_match holds the
 * service's active backends); an expired or stale pin is removed and the
 * flow is balanced as usual. Every packet of the service refreshes its
 * client's pin with its flow's backend. Times are whole seconds of
 * CLOCK_MONOTONIC, as in sock.c.
 */
#ifndef NP_NODEPORT_AFFINITY_H
#define NP_NODEPORT_AFFINITY_H

#ifndef READ_ONCE
#define READ_ONCE(x) (*(volatile typeof(x) *)&(x))
#endif
#ifndef WRITE_ONCE
#define WRITE_ONCE(x, v) (*(volatile typeof(x) *)&(x)) = (v)
#endif

struct np_aff_key {
	__u8 addr[16]; /* the client; IPv4 in the first 4 bytes */
	__u32 svc_id;
	__u8 family;
	__u8 pad[3];
};
NP_ASSERT_SIZE(struct np_aff_key, 24);

struct np_aff_val {
	__u64 last_used;
	__u32 backend_id;
	__u32 pad;
};
NP_ASSERT_SIZE(struct np_aff_val, 16);

struct np_aff_match {
	__u32 backend_id;
	__u32 svc_id;
};
NP_ASSERT_SIZE(struct np_aff_match, 8);

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct np_aff_key);
	__type(value, struct np_aff_val);
	__uint(max_entries, 65536);
} np_np_aff SEC(".maps");

/* The backends of each service that take new flows. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct np_aff_match);
	__type(value, __u8);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} np_np_aff_match SEC(".maps");

static __always_inline __u64 np_aff_now(void)
{
	return bpf_ktime_get_coarse_ns() / 1000000000ULL;
}

static __always_inline void np_aff_key_of(struct np_aff_key *k, const __u8 *addr, __u8 family, __u32 svc_id)
{
	__builtin_memset(k, 0, sizeof(*k));
	__builtin_memcpy(k->addr, addr, 16);
	k->svc_id = svc_id;
	k->family = family;
}

/* np_aff_get returns the backend the client at addr is pinned to for
 * svc_id, or 0. */
static __always_inline __u32 np_aff_get(const __u8 *addr, __u8 family, __u32 svc_id, __u32 timeout, __u64 now)
{
	struct np_aff_key k;
	np_aff_key_of(&k, addr, family, svc_id);
	struct np_aff_val *v = bpf_map_lookup_elem(&np_np_aff, &k);
	if (!v)
		return 0;
	/* Sticky for [last_used, last_used + timeout). */
	if (READ_ONCE(v->last_used) + timeout <= now) {
		bpf_map_delete_elem(&np_np_aff, &k);
		return 0;
	}
	struct np_aff_match m = {.backend_id = READ_ONCE(v->backend_id), .svc_id = svc_id};
	if (!bpf_map_lookup_elem(&np_np_aff_match, &m)) {
		bpf_map_delete_elem(&np_np_aff, &k);
		return 0;
	}
	return m.backend_id;
}

/* np_aff_set pins the client to backend_id, or refreshes its pin. */
static __always_inline void np_aff_set(const __u8 *addr, __u8 family, __u32 svc_id, __u32 backend_id, __u64 now)
{
	struct np_aff_key k;
	np_aff_key_of(&k, addr, family, svc_id);
	struct np_aff_val *v = bpf_map_lookup_elem(&np_np_aff, &k);
	if (v && READ_ONCE(v->backend_id) == backend_id) {
		if (READ_ONCE(v->last_used) != now)
			WRITE_ONCE(v->last_used, now);
		return;
	}
	struct np_aff_val nv = {.last_used = now, .backend_id = backend_id};
	bpf_map_update_elem(&np_np_aff, &k, &nv, BPF_ANY);
}

#endif /* NP_NODEPORT_AFFINITY_H */
