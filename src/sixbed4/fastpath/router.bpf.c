// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0
/*
 * The 6bed4 router's kernel fast path (see docs/architecture.md).
 *
 * Two tc programs (attached as tcx links by sixbed4.fastpath.loader):
 *
 *   uplink_in   tc ingress of the uplink.  A datagram to the router's IPv4:port
 *               whose outcome under RouterCore is certain is handled here:
 *               "to the TUN" -> outer headers removed, redirected into the TUN
 *               device's ingress (the kernel then forwards it exactly as after a
 *               TUN write); "relay" -> hop limit - 1, re-addressed to the other
 *               peer, sent out of the uplink (the IPv4 next hop from the kernel).
 *   tun_out     tc egress of the 6bed4 TUN device.  A packet the kernel routed
 *               there for a valid peer address is put into UDP/IPv4 from the
 *               router's address and port and sent out of the uplink.
 *
 * Everything else - RS/ND, bad or hostile input, the router's own services,
 * masquerading, hop limit <= 1, anything this code is not sure about - is
 * handed on untouched (TCX_NEXT) to the socket or the TUN read, where the
 * Python router decides.  The rules here are a subset of core/router.py; the
 * differential test (tests/integration/test_fastpath_diff.py) runs both on
 * the same packets.  Nothing is dropped here, but for lack of memory halfway.
 */
#include "common.bpf.h"

/* --- shared with sixbed4/fastpath/loader.py (struct layout) --- */

struct fp_config {
	__u8 prefix[8];     /* the served /64 */
	__be32 ipv4;        /* the router's -l address */
	__be32 bind;        /* where datagrams arrive; 0 = at any of the host's addresses */
	__be32 source;      /* the source of the datagrams to peers (the socket's) */
	__be16 port;        /* the router's UDP port */
	__u8 ttl;           /* net.ipv4.ip_default_ttl: what the router's socket sends with */
	__u8 flags;         /* FP_MASQUERADE, FP_TUN_DOWN */
	__u8 router_iid[8]; /* the router's own address, bytes 8..15 */
	__u32 tun_ifindex;
	__u32 uplink_ifindex; /* datagrams to peers leave here (next hop: the kernel's routes and neighbours) */
	__u32 l2_len;       /* 0 on the TUN device; 14 under BPF_PROG_TEST_RUN, which adds an Ethernet header */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fp_config);
} config SEC(".maps");

/* the host's own IPv4 addresses, kept current by the router (never peer endpoints) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __be32);
	__type(value, __u8);
} host_ipv4s SEC(".maps");

/* masquerading hosts: packets from them are rewritten by the Python path */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct in6_addr);
	__type(value, __u8);
} masq_hosts SEC(".maps");

/* SECURITY-RULES.md: an IPv4:port a peer can be at. */
static __always_inline int is_peer_endpoint(__be32 ip, __be16 port, const struct fp_config *cfg)
{
	__u8 first = bpf_ntohl(ip) >> 24;

	if (port == 0 || port == bpf_htons(PORT_6BED4) || port == cfg->port)
		return 0;
	if (first == 0 || first == 127 || first >= 224)
		return 0;
	if (ip == cfg->ipv4 || bpf_map_lookup_elem(&host_ipv4s, &ip))
		return 0;
	return 1;
}

/* A canonical 6bed4 interface identifier (U/L and I/G bits 0) that encodes a peer endpoint. */
static __always_inline int is_peer_address(const __u8 *address, const struct fp_config *cfg)
{
	return (address[8] & 0x03) == 0 && is_peer_endpoint(iid_ipv4(address), iid_port(address), cfg);
}

/* --- peer -> router: tc ingress of the uplink -------------------------------- */

static __always_inline int relay(struct __sk_buff *skb, const struct fp_config *cfg, struct frame *f, __u32 n)
{
	const __u8 *dst6 = f->ip6.daddr.in6_u.u6_addr8;
	struct endpoints to = { .src = f->ip.daddr, /* the address the datagram came to */
				.dst = iid_ipv4(dst6), .sport = cfg->port, .dport = iid_port(dst6) };
	__u8 hop_limit = f->ip6.hop_limit - 1;
	struct outer out;
	__s64 sum;

	if (!is_peer_address(dst6, cfg) || f->ip6.hop_limit <= 1 || f->udp.check == 0)
		return pass(FP_UDP_PASSED);
	outer_headers(&out, &to, cfg->ttl, n);
	/* incremental: the old checksum minus the old addresses, ports and hop limit, plus the new ones */
	{
		__be32 old[4] = { f->ip.saddr, f->ip.daddr, 0, 0 };
		__be32 new[4] = { out.ip.saddr, out.ip.daddr, 0, 0 };
		__u8 *old_word = (__u8 *)&old[3], *new_word = (__u8 *)&new[3];

		__builtin_memcpy(&old[2], &f->udp.source, 4);
		__builtin_memcpy(&new[2], &out.udp.source, 4);
		/* bytes 4..7 of the IPv6 header: payload length, next header, hop limit */
		__builtin_memcpy(old_word, &f->ip6.payload_len, 2);
		__builtin_memcpy(new_word, &f->ip6.payload_len, 2);
		old_word[2] = new_word[2] = f->ip6.nexthdr;
		old_word[3] = f->ip6.hop_limit;
		new_word[3] = hop_limit;
		sum = bpf_csum_diff(old, sizeof(old), new, sizeof(new), (__u16)~f->udp.check);
		if (sum < 0)
			return pass(FP_UDP_PASSED);
		out.udp.check = ~fold(sum);
		if (!out.udp.check)
			out.udp.check = 0xffff;
	}
	if (bpf_skb_store_bytes(skb, sizeof(struct ethhdr), &out, sizeof(out), 0) ||
	    bpf_skb_store_bytes(skb, offsetof(struct frame, ip6.hop_limit), &hop_limit, 1, 0))
		return TCX_DROP; /* half rewritten (cannot happen: the data is linear and writable) */
	count(FP_UDP_IN, n, FP_RELAYED);
	return send_out(cfg->uplink_ifindex);
}

SEC("tc")
int uplink_in(struct __sk_buff *skb)
{
	__u32 zero = 0;
	const struct fp_config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct frame *f;
	void *end;
	int n;

	if (!cfg)
		return TCX_NEXT;
	f = datagram_frame(skb);
	if (!f || f->udp.dest != cfg->port)
		return TCX_NEXT;
	if (cfg->bind ? f->ip.daddr != cfg->bind : !bpf_map_lookup_elem(&host_ipv4s, &f->ip.daddr))
		return TCX_NEXT;
	/* from here on the datagram is the router's: what is not taken goes to its socket */
	end = packet_end(skb);
	n = carried_packet(skb, f, end);
	if (n < 0 || (void *)(f + 1) > end)
		return pass(FP_UDP_PASSED);
	if (!is_peer_endpoint(f->ip.saddr, f->udp.source, cfg))
		return pass(FP_UDP_PASSED);
	const __u8 *src6 = f->ip6.saddr.in6_u.u6_addr8;
	const __u8 *dst6 = f->ip6.daddr.in6_u.u6_addr8;
	__u8 *origin = (__u8 *)&f->ip.saddr;
	/* originator validation: the /64 and exactly this IPv4:port, any lanid */
	if (!prefix_is(src6, cfg->prefix) || src6[8] != (origin[0] & 0xfc) || src6[9] != origin[1] ||
	    src6[10] != origin[2] || src6[11] != origin[3] || iid_port(src6) != f->udp.source ||
	    (src6[14] & 0xc0) != (origin[0] & 0x03) << 6)
		return pass(FP_UDP_PASSED);
	/* unicast, not link-local, not the router's own /114 (its services, its address), hop limit > 1 */
	if (dst6[0] == 0xff || (dst6[0] == 0xfe && (dst6[1] & 0xc0) == 0x80))
		return pass(FP_UDP_PASSED);
	if (prefix_is(dst6, cfg->prefix) && iid_ipv4(dst6) == cfg->ipv4 && iid_port(dst6) == cfg->port)
		return pass(FP_UDP_PASSED);
	if (prefix_is(dst6, cfg->prefix) && dst6[8] == src6[8] && dst6[9] == src6[9] && dst6[10] == src6[10] &&
	    dst6[11] == src6[11] && dst6[12] == src6[12] && dst6[13] == src6[13] &&
	    dst6[14] == (src6[14] & 0xc0) && dst6[15] == 0)
		return pass(FP_UDP_PASSED); /* the peer's own /114, lanid 0: the router's services */

	/* the outer UDP checksum, as the socket would check it */
	if (!udp_checksum_right(skb, n))
		return pass(FP_UDP_PASSED);
	f = (void *)(long)skb->data;
	if ((void *)(f + 1) > (void *)(long)skb->data_end)
		return TCX_NEXT;

	dst6 = f->ip6.daddr.in6_u.u6_addr8;
	if (prefix_is(dst6, cfg->prefix)) {
		if (iid_port(dst6) != 0)
			return relay(skb, cfg, f, n);
		/* port 0: the host's own addresses, through the TUN as any native packet */
	} else if (dst6[0] == 0xfc && dst6[1] == 0x64) {
		return relay(skb, cfg, f, n);
	}
	if (f->ip6.hop_limit <= 1 || (cfg->flags & FP_TUN_DOWN))
		return pass(FP_UDP_PASSED);
	return into_tun(skb, n, cfg->tun_ifindex);
}

/* --- router -> peers: tc egress of the TUN device ----------------------------- */

SEC("tc")
int tun_out(struct __sk_buff *skb)
{
	__u32 zero = 0;
	const struct fp_config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct ipv6hdr *ip6;
	__u32 l2, n;

	if (!cfg || skb->protocol != bpf_htons(ETH_P_IPV6))
		return TCX_NEXT;
	l2 = cfg->l2_len == 14 ? 14 : 0;
	ip6 = routed_packet(skb, l2, &n);
	if (!ip6)
		return pass(FP_TUN_PASSED);
	const __u8 *src6 = ip6->saddr.in6_u.u6_addr8;
	const __u8 *dst6 = ip6->daddr.in6_u.u6_addr8;
	/* a peer address of the /64 (not multicast, not port 0, a peer endpoint) */
	if (!prefix_is(dst6, cfg->prefix) || !is_peer_address(dst6, cfg))
		return pass(FP_TUN_PASSED);
	/* a native packet claiming to be from one of our peers is forged (tun_spoofed_source) */
	if (prefix_is(src6, cfg->prefix) && iid_port(src6) != 0 && !prefix_is(src6 + 8, cfg->router_iid))
		return pass(FP_TUN_PASSED);
	if ((cfg->flags & FP_MASQUERADE) && bpf_map_lookup_elem(&masq_hosts, &ip6->saddr))
		return pass(FP_TUN_PASSED);

	struct endpoints to = { .src = cfg->source, .dst = iid_ipv4(dst6), .sport = cfg->port,
				.dport = iid_port(dst6) };
	return encapsulate(skb, l2, n, &to, cfg->ttl, cfg->uplink_ifindex);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
