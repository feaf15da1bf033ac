/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Copyright 2026 The nodeplane Authors. */

/*
 * The overlay: pods on other nodes reached through one collect-metadata
 * tunnel device (VXLAN) per node, as Cilium's tunnel mode.
 *
 *   from an endpoint  a packet to a prefix whose ipcache entry names a
 *                     tunnel endpoint (another node's pod CIDR) gets a
 *                     tunnel key (VNI = the sender's identity, 24 bits;
 *                     outer destination = the tunnel endpoint) and goes to
 *                     the tunnel device (np_overlay_encap).
 *   np_to_overlay     tc egress of the tunnel device: what the node
 *                     itself routes into the device (a route to another
 *                     node's pod CIDR through it) gets its tunnel key here,
 *                     with reserved:remote-node as VNI, as Cilium presents
 *                     host traffic (HOST_ID becomes LOCAL_NODE_ID, i.e.
 *                     remote-node, in __encap_with_nodeid); packets an
 *                     endpoint's program sent here already have theirs
 *                     (NP_MARK_MAGIC_OVERLAY) and pass untouched.
 *   np_from_overlay   tc ingress of the tunnel device: the sender's
 *                     identity comes from the VNI, after the outer source
 *                     was checked to be a node the ipcache knows
 *                     (reserved:remote-node); conntrack and the local
 *                     destination's ingress policy decide as for local
 *                     traffic, then the packet goes into its namespace.
 *
 * Included by datapath.c after its helpers (np_state, np_exit, ...).
 */

#ifndef NP_OVERLAY_H
#define NP_OVERLAY_H

/* Cilium's identities that matter here (identity.Reserved*). */
#define NP_HOST_ID           1
#define NP_REMOTE_NODE_ID    6
#define NP_KUBE_APISERVER_ID 7

/* ipcache.FlagSkipTunnel */
#define NP_IPCACHE_F_SKIP_TUNNEL (1U << 0)

#define NP_VNI_MASK 0xffffff

/* skb->pkt_type values (include/uapi/linux/if_packet.h). */
#define NP_PACKET_HOST      0
#define NP_PACKET_OTHERHOST 3

/* skb->mark of a packet an endpoint's program encapsulated, in the
 * nibble Cilium's MARK_MAGIC_* use (MARK_MAGIC_OVERLAY is Cilium's too):
 * np_to_overlay sees it, clears it and leaves the tunnel key alone. A
 * mark never crosses into the node from a pod's namespace (the veth
 * scrubs it), so a pod cannot forge it; the node's own sockets could, and
 * their packets then leave without a tunnel key, which the device drops. */
#define NP_MARK_MAGIC_MASK    0x0F00
#define NP_MARK_MAGIC_OVERLAY 0x0400

struct np_overlay_config {
	__u32 tunnel_ifindex; /* 0: no overlay, traffic to other nodes goes to the stack */
	__u32 flags;          /* reserved */
};
NP_ASSERT_SIZE(struct np_overlay_config, 8);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct np_overlay_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} np_overlay_config SEC(".maps");

/* np_has_tunnel reports whether an ipcache entry sends its prefix
 * through the tunnel. */
static __always_inline bool np_has_tunnel(const struct np_ipcache_info *info)
{
	return info && info->tunnel_ip_version && !(info->flags & NP_IPCACHE_F_SKIP_TUNNEL);
}

/* np_set_tunnel_key gives the packet the tunnel key towards info's
 * tunnel endpoint with VNI identity; it returns 0 or the drop reason. */
static __always_inline __u8 np_set_tunnel_key(struct __sk_buff *skb,
					      const struct np_ipcache_info *info, __u32 identity)
{
	struct bpf_tunnel_key key;
	__u64 flags = 0;

	/* memset, not = {}: an initializer need not clear a union's other
	 * members, and the verifier rejects reading them. */
	__builtin_memset(&key, 0, sizeof(key));
	key.tunnel_id = identity & NP_VNI_MASK;
	key.tunnel_ttl = 64;
	if (info->tunnel_ip_version == NP_IPV4) {
		key.remote_ipv4 = bpf_ntohl(info->tunnel_endpoint.ip4);
	} else {
		key.remote_ipv6[0] = info->tunnel_endpoint.words[0];
		key.remote_ipv6[1] = info->tunnel_endpoint.words[1];
		key.remote_ipv6[2] = info->tunnel_endpoint.words[2];
		key.remote_ipv6[3] = info->tunnel_endpoint.words[3];
		flags = BPF_F_TUNINFO_IPV6;
	}
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), flags) < 0)
		return DROP_WRITE_ERROR;
	return 0;
}

/* np_overlay_encap sends a packet of an allowed connection to another
 * node's pod through the tunnel device. info is the destination's
 * ipcache entry when known is set (the caller looked it up for a new
 * connection's identity); otherwise it is looked up here. It returns
 * TC_ACT_UNSPEC when the destination is not behind a tunnel endpoint (or
 * no tunnel device is configured): the packet then goes to the stack as
 * before. */
static __always_inline int np_overlay_encap(struct __sk_buff *skb, struct np_state *s,
					    const struct np_ipcache_info *info, bool known)
{
	__u32 zero = 0;
	const struct np_overlay_config *cfg = bpf_map_lookup_elem(&np_overlay_config, &zero);

	if (!cfg || !cfg->tunnel_ifindex)
		return TC_ACT_UNSPEC;
	if (!known)
		info = np_ipcache_lookup(&s->pkt.tuple.daddr, s->pkt.tuple.ip_version);
	if (!np_has_tunnel(info))
		return TC_ACT_UNSPEC;
	s->reason = np_set_tunnel_key(skb, info, s->src_identity);
	if (s->reason)
		return TC_ACT_SHOT;
	skb->mark = NP_MARK_MAGIC_OVERLAY;
	s->overlay = 1;
	s->redirect_ifindex = cfg->tunnel_ifindex;
	return bpf_redirect(cfg->tunnel_ifindex, 0);
}

/* np_overlay_sender reads the tunnel key and checks the sender: the outer
 * source must be a node (reserved:remote-node in the ipcache), the VNI an
 * identity a node may send. It sets the source identity or the reason. */
static __always_inline void np_overlay_sender(struct __sk_buff *skb, struct np_state *s)
{
	struct bpf_tunnel_key key;
	const struct np_ipcache_info *info;
	union np_addr outer;
	/* The helper fails unless asked for the outer header's family. The
	 * inner packet's is the likely one (the syncer gives a pod CIDR a
	 * tunnel endpoint of its own family where the node has one), so the
	 * usual packet takes one call. */
	__u64 first = s->pkt.tuple.ip_version == NP_IPV6 ? BPF_F_TUNINFO_IPV6 : 0;
	__u64 flags = first;
	__u32 vni;

	__builtin_memset(&key, 0, sizeof(key));
	__builtin_memset(&outer, 0, sizeof(outer));

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), flags) < 0) {
		flags = first ^ BPF_F_TUNINFO_IPV6;
		if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), flags) < 0) {
			s->reason = DROP_NO_TUNNEL_KEY;
			return;
		}
	}
	if (!(flags & BPF_F_TUNINFO_IPV6)) {
		outer.ip4 = bpf_htonl(key.remote_ipv4);
	} else {
		outer.words[0] = key.remote_ipv6[0];
		outer.words[1] = key.remote_ipv6[1];
		outer.words[2] = key.remote_ipv6[2];
		outer.words[3] = key.remote_ipv6[3];
	}
	info = np_ipcache_lookup(&outer, flags ? NP_IPV6 : NP_IPV4);
	if (!info || (info->identity != NP_REMOTE_NODE_ID && info->identity != NP_KUBE_APISERVER_ID)) {
		s->reason = DROP_UNKNOWN_SENDER;
		return;
	}
	vni = key.tunnel_id & NP_VNI_MASK;
	/* No identity (0) is never sent; a node presents its own traffic as
	 * remote-node, never as host (Cilium drops HOST_ID from a tunnel). */
	if (vni == 0 || vni == NP_HOST_ID || vni != key.tunnel_id) {
		s->reason = DROP_INVALID_IDENTITY;
		return;
	}
	s->src_identity = vni;
}

SEC("tc")
int np_from_overlay(struct __sk_buff *skb)
{
	struct np_state s = { .hook = NP_HOOK_FROM_OVERLAY };
	struct np_endpoint_info *dst;
	struct np_ct_entry *ct = NULL;
	__u32 now;
	int ret;

	ret = np_parse(skb, &s.pkt);
	if (ret == NP_PARSE_PASS)
		return np_exit(skb, &s, TC_ACT_OK);
	if (ret) {
		s.reason = ret;
		return np_exit(skb, &s, TC_ACT_SHOT);
	}
	s.parsed = 1;
	np_overlay_sender(skb, &s);
	if (s.reason)
		return np_exit(skb, &s, TC_ACT_SHOT);
	np_frag_record(&s.pkt);

	dst = np_lookup_endpoint(&s.pkt.tuple.daddr, s.pkt.tuple.ip_version);
	if (!dst) {
		/* For the node itself (a reply to its own traffic, sent to its
		 * address in its pod CIDR): the stack decides. The inner frame
		 * is addressed to the sender's MAC for its pod's gateway, not
		 * this device's, so the stack would take it for another host's
		 * and drop it. */
		if (skb->pkt_type == NP_PACKET_OTHERHOST)
			bpf_skb_change_type(skb, NP_PACKET_HOST);
		return np_exit(skb, &s, TC_ACT_OK);
	}
	s.dst_ep = dst->endpoint_id;
	s.dst_identity = dst->identity;

	s.ct_state = np_ct_lookup(skb, &s.pkt, &ct);
	now = np_now_sec();
	np_trace_prepare(&s, ct, now);
	if (ct) {
		np_ct_identities(&s, ct);
		np_ct_update(ct, &s.pkt, s.ct_state == NP_CT_REPLY, now);
	} else if (s.ct_state == NP_CT_NEW) {
		s.reason = np_check_policy(skb, &s, dst->endpoint_id, 0);
		/* An L7 rule cannot be honoured for a packet from another
		 * node. */
		np_refuse_ingress_proxy(&s, dst->endpoint_id);
		if (s.reason)
			return np_exit(skb, &s, TC_ACT_SHOT);
		if (np_ct_create(&s.pkt, s.src_identity, s.dst_identity, dst->endpoint_id, now, 0)) {
			s.reason = DROP_CT_CREATE_FAILED;
			return np_exit(skb, &s, TC_ACT_SHOT);
		}
	}
	return np_exit(skb, &s, np_redirect_local(skb, &s, dst));
}

/* np_to_overlay gives the node's own packets to other nodes' pods their
 * tunnel key: the destination's tunnel endpoint from the ipcache, the VNI
 * reserved:remote-node (the L7 proxy's upstream connections: their
 * source's identity; packets the node forwards: their source's ipcache
 * identity, world if none). A packet to an address without a tunnel endpoint
 * is dropped (NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT): the device could not
 * send it anyway. No policy applies: nodeplane has no host firewall. */
SEC("tc")
int np_to_overlay(struct __sk_buff *skb)
{
	struct np_state s = { .hook = NP_HOOK_TO_OVERLAY, .src_identity = NP_HOST_ID };
	const struct np_trace_config *tcfg;
	const struct np_ipcache_info *info;
	int ret;

	if ((skb->mark & NP_MARK_MAGIC_MASK) == NP_MARK_MAGIC_OVERLAY) {
		skb->mark = 0;
		return TC_ACT_OK;
	}
	ret = np_parse(skb, &s.pkt);
	if (ret == NP_PARSE_PASS)
		return np_exit(skb, &s, TC_ACT_OK);
	if (ret) {
		s.reason = ret;
		return np_exit(skb, &s, TC_ACT_SHOT);
	}
	s.parsed = 1;
	info = np_ipcache_lookup(&s.pkt.tuple.daddr, s.pkt.tuple.ip_version);
	if (!np_has_tunnel(info)) {
		s.dst_identity = info ? info->identity : NP_WORLD_ID;
		s.reason = DROP_NO_TUNNEL_ENDPOINT;
		return np_exit(skb, &s, TC_ACT_SHOT);
	}
	s.dst_identity = info->identity;
	if (np_proxy_mark(skb)) {
		/* The L7 proxy's upstream connections keep their source's
		 * identity (proxy.h): the destination decides by it. */
		s.src_identity = np_mark_identity(skb->mark);
	} else if (!skb->sk) {
		/* Not sent by a socket of this node: forwarded through it
		 * (from outside, say). It keeps the identity the ipcache
		 * gives its source, world if none: never remote-node. */
		const struct np_ipcache_info *src =
			np_ipcache_lookup(&s.pkt.tuple.saddr, s.pkt.tuple.ip_version);
		s.src_identity = src ? src->identity : NP_WORLD_ID;
	} else {
		s.src_identity = NP_REMOTE_NODE_ID;
	}
	s.reason = np_set_tunnel_key(skb, info, s.src_identity);
	if (s.reason)
		return np_exit(skb, &s, TC_ACT_SHOT);
	/* Without conntrack there is nothing to aggregate by: every packet
	 * is reported below medium, none from medium on. */
	tcfg = np_trace_config_get();
	if (tcfg && tcfg->aggregation && tcfg->aggregation - 1 < NP_AGGREGATE_MEDIUM)
		s.aggregation = tcfg->aggregation;
	s.overlay = 1;
	return np_exit(skb, &s, TC_ACT_OK);
}

#endif /* NP_OVERLAY_H */
