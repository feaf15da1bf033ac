/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * lb.h is the map contract of nodeplane's load balancer: the layout of every
 * map the Go package lb writes and the BPF programs read. The socket-layer
 * programs (sock.c) use it today; the north-south NodePort programs will
 * include it unchanged. Each struct has a Go twin in lb/maptypes.go, and a
 * test compares the two through the BTF of the compiled object.
 *
 * The model follows Cilium's lb{4,6}_services_v2 / lb{4,6}_backends_v3:
 *
 *   services   (addr, port, proto, slot 0)   -> service entry: count, bank, ID
 *              (addr, port, proto, slot n>0) -> backend ID
 *   backends   backend ID                    -> backend address and state
 *
 * Only active backends occupy slots, so a selection never lands on a
 * terminating, quarantined or in-maintenance backend. Unlike Cilium, slots
 * come in two banks (slot_base 0 or LB_SLOT_BANK): an update writes the new
 * slots into the bank the service entry does not point at, then swaps the
 * service entry, so a reader that holds the old entry still finds the old,
 * complete bank. The services and backends maps are not preallocated, so a
 * replaced element is freed only after an RCU grace period and a reader's
 * pointer never sees a torn value.
 *
 * Every field marked __be is in network byte order; everything else is in
 * host order.
 */
#ifndef NP_LB_H
#define NP_LB_H

/* Slots of the second bank start after this one; a bank holds at most
 * LB_SLOT_BANK - 1 backends. */
#define LB_SLOT_BANK 32768

/* lb_service.flags: the service type, and affinity. The bit positions are
 * Cilium's SVC_FLAG_* values. ClusterIP has no type bit. */
#define SVC_F_EXTERNAL_IP (1 << 0)
#define SVC_F_NODEPORT (1 << 1)
#define SVC_F_AFFINITY (1 << 4)
#define SVC_F_LOADBALANCER (1 << 5)
#define SVC_F_INT_LOCAL (1 << 6) /* internalTrafficPolicy=Local (nodeplane's bit; the control plane's) */

/* lb_service.algorithm, Cilium's LB_SELECTION_* values. */
#define LB_ALG_RANDOM 1
#define LB_ALG_MAGLEV 2

/* lb{4,6}_backend.state, Cilium's BE_STATE_* values. */
#define BE_STATE_ACTIVE 0
#define BE_STATE_TERMINATING 1
#define BE_STATE_QUARANTINED 2
#define BE_STATE_MAINTENANCE 3

/* Size of a Maglev lookup table in the template inner map. The loader sets
 * the real size (a Cilium prime) before creating the map. */
#define LB_MAGLEV_LUT_SIZE 16381

struct lb4_key {
	__be32 address;
	__be16 dport;
	__u16 backend_slot; /* 0: the service entry; n > 0: a backend slot */
	__u8 proto;
	__u8 scope; /* reserved for externalTrafficPolicy=Local; always 0 */
	__u8 pad[2];
};

struct lb6_key {
	__u32 address[4]; /* network byte order, as in bpf_sock_addr */
	__be16 dport;
	__u16 backend_slot;
	__u8 proto;
	__u8 scope;
	__u8 pad[2];
};

/* The value of both services maps. A service entry (slot 0) uses every
 * field but backend_id; a slot entry only backend_id and rev_nat_index. */
struct lb_service {
	__u32 backend_id;
	__u32 affinity_timeout; /* seconds; 0 when the service has no affinity */
	__u16 count;		/* active backends, in slots slot_base+1 .. slot_base+count */
	__u16 slot_base;	/* 0 or LB_SLOT_BANK */
	__u16 rev_nat_index;	/* the service ID */
	__u8 flags;		/* SVC_F_* */
	__u8 algorithm;		/* LB_ALG_* */
};

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 state; /* BE_STATE_* */
	__u16 weight;
	__u16 rev_nat_index; /* the service this backend belongs to */
};

struct lb6_backend {
	__u32 address[4];
	__be16 port;
	__u8 proto;
	__u8 state;
	__u16 weight;
	__u16 rev_nat_index;
};

/* Service ID -> frontend, for reverse translation of replies in the packet
 * path (north-south). */
struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct lb6_reverse_nat {
	__u32 address[4];
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* (socket cookie, backend) -> frontend, written at connect/sendmsg and read
 * by recvmsg and getpeername, so the application sees the address it used. */
struct lb4_sock_revnat_key {
	__u64 cookie;
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct lb4_sock_revnat {
	__be32 address;
	__be16 port;
	__u16 rev_nat_index;
};

struct lb6_sock_revnat_key {
	__u64 cookie;
	__u32 address[4];
	__be16 port;
	__u16 pad;
	__u32 pad2;
};

struct lb6_sock_revnat {
	__u32 address[4];
	__be16 port;
	__u16 rev_nat_index;
};

/* Session affinity. At the socket layer the client is its network
 * namespace (netns_cookie = 1, client_cookie); in the packet path it will be
 * the client address (netns_cookie = 0). */
struct lb4_affinity_key {
	union {
		__u64 client_cookie;
		__be32 client_ip;
	};
	__u16 rev_nat_id;
	__u8 netns_cookie;
	__u8 pad1;
	__u32 pad2;
};

struct lb6_affinity_key {
	union {
		__u64 client_cookie;
		__u32 client_ip[4];
	};
	__u16 rev_nat_id;
	__u8 netns_cookie;
	__u8 pad1;
	__u32 pad2;
};

struct lb_affinity_val {
	__u64 last_used; /* CLOCK_MONOTONIC_COARSE, seconds */
	__u32 backend_id;
	__u32 pad;
};

/* Present while backend_id is an active backend of service rev_nat_id: an
 * affinity entry pointing elsewhere is stale. */
struct lb_affinity_match {
	__u32 backend_id;
	__u16 rev_nat_id;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb_service);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_lb4_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb6_key);
	__type(value, struct lb_service);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_lb6_svc SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_lb4_be SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb6_backend);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_lb6_be SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_lb4_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u16);
	__type(value, struct lb6_reverse_nat);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_lb6_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_sock_revnat_key);
	__type(value, struct lb4_sock_revnat);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_lb4_sk_rnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb6_sock_revnat_key);
	__type(value, struct lb6_sock_revnat);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_lb6_sk_rnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb_affinity_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_lb4_aff SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb6_affinity_key);
	__type(value, struct lb_affinity_val);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_lb6_aff SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_affinity_match);
	__type(value, __u8);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_lb_aff_match SEC(".maps");

/* The node's own addresses (IPv4 as IPv4-mapped IPv6). An ExternalIP
 * service is translated at the socket layer only when its address is one of
 * them, as in Cilium: translating any address a service claims would let a
 * service capture traffic to, say, a public IP. */
struct lb_host_addr {
	__u32 address[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_host_addr);
	__type(value, __u8);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_lb_host_addr SEC(".maps");

/* Service ID -> that service's Maglev lookup table (backend IDs), one inner
 * array per Maglev-algorithm service, swapped whole on every change. Service
 * IDs are unique across IPv4 and IPv6, so one map serves both. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__type(key, __u16);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_ARRAY);
		__uint(key_size, sizeof(__u32));
		__uint(value_size, sizeof(__u32) * LB_MAGLEV_LUT_SIZE);
		__uint(max_entries, 1);
	});
} np_lb_maglev SEC(".maps");

#endif /* NP_LB_H */
