// SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0
/*
 * The 6bed4 peer's kernel fast path (see docs/architecture.md).
 *
 * Two tc programs (attached as tcx links by sixbed4.fastpath.loader):
 *
 *   uplink_in   tc ingress of the uplink.  A datagram from the router to the
 *               peer's socket that carries one IPv6 packet for the peer's /114
 *               (not Neighbor Discovery: RAs are the Python peer's) loses its
 *               outer headers and goes into the TUN device's ingress, as a TUN
 *               write would put it.
 *   tun_out     tc egress of the 6bed4 TUN device.  A packet from the peer's
 *               /114 (its own address, or a LAN host's) is put into UDP/IPv4
 *               from the peer's socket to the router and sent out of the uplink.
 *
 * Everything else - RAs and other ND, keepalives, anything from elsewhere or
 * broken, anything before the first RA gave a /114 - is handed on untouched
 * (TCX_NEXT) to the socket or the TUN read, where the Python peer decides.
 * The rules are those of core/peer.py; the differential test
 * (tests/integration/test_peer_fastpath_diff.py) runs both on the same packets.
 */
#include "common.bpf.h"

/* --- shared with sixbed4/fastpath/loader.py (struct layout) --- */

struct peer_config {
	__u8 prefix[16];    /* the /114 of the lease (lanid 0): bytes 0..13 and the top bits of 14 count */
	__be32 router;      /* the router's IPv4 address and port */
	__be32 local;       /* the socket's address as the router sees it arrive and leave (0: unknown yet) */
	__be16 router_port;
	__be16 local_port;
	__u8 ttl;           /* what the socket sends with (net.ipv4.ip_default_ttl) */
	__u8 flags;         /* FP_LEASED, FP_TUN_DOWN */
	__u8 pad[2];
	__u32 tun_ifindex;
	__u32 uplink_ifindex; /* the interface the route to the router leaves by */
	__u32 l2_len;       /* 0 on the TUN device; 14 under BPF_PROG_TEST_RUN, which adds an Ethernet header */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct peer_config);
} config SEC(".maps");

/* An address of the peer's /114: its own (lanid 1) and those it hands on (any lanid). */
static __always_inline int in_lease(const __u8 *address, const struct peer_config *cfg)
{
	__u32 a, b;
	__u16 c, d;

	__builtin_memcpy(&a, address + 8, 4);
	__builtin_memcpy(&b, cfg->prefix + 8, 4);
	__builtin_memcpy(&c, address + 12, 2);
	__builtin_memcpy(&d, cfg->prefix + 12, 2);
	return prefix_is(address, cfg->prefix) && a == b && c == d && (address[14] & 0xc0) == (cfg->prefix[14] & 0xc0);
}

static __always_inline int active(const struct peer_config *cfg)
{
	return (cfg->flags & FP_LEASED) && cfg->local;
}

/* --- router -> peer: tc ingress of the uplink -------------------------------- */

SEC("tc")
int uplink_in(struct __sk_buff *skb)
{
	__u32 zero = 0;
	const struct peer_config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct frame *f;
	void *end;
	int n;

	if (!cfg)
		return TCX_NEXT;
	f = datagram_frame(skb);
	if (!f || f->ip.daddr != cfg->local || f->udp.dest != cfg->local_port || !cfg->local)
		return TCX_NEXT;
	/* from here on the datagram is the peer's: what is not taken goes to its socket */
	if (f->ip.saddr != cfg->router || f->udp.source != cfg->router_port || !active(cfg) ||
	    (cfg->flags & FP_TUN_DOWN))
		return pass(FP_UDP_PASSED);
	end = packet_end(skb);
	n = carried_packet(skb, f, end);
	if (n < 0 || (void *)(f + 1) > end)
		return pass(FP_UDP_PASSED);
	if (!in_lease(f->ip6.daddr.in6_u.u6_addr8, cfg))
		return pass(FP_UDP_PASSED);
	if (!udp_checksum_right(skb, n))
		return pass(FP_UDP_PASSED);
	return into_tun(skb, n, cfg->tun_ifindex);
}

/* --- peer -> router: tc egress of the TUN device ----------------------------- */

SEC("tc")
int tun_out(struct __sk_buff *skb)
{
	__u32 zero = 0;
	const struct peer_config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct ipv6hdr *ip6;
	__u32 l2, n;

	if (!cfg || skb->protocol != bpf_htons(ETH_P_IPV6))
		return TCX_NEXT;
	l2 = cfg->l2_len == 14 ? 14 : 0;
	ip6 = routed_packet(skb, l2, &n);
	if (!ip6 || !active(cfg))
		return pass(FP_TUN_PASSED);
	if (ip6->daddr.in6_u.u6_addr8[0] == 0xff || !in_lease(ip6->saddr.in6_u.u6_addr8, cfg))
		return pass(FP_TUN_PASSED); /* multicast; a source the router would refuse */

	struct endpoints to = { .src = cfg->local, .dst = cfg->router, .sport = cfg->local_port,
				.dport = cfg->router_port };
	return encapsulate(skb, l2, n, &to, cfg->ttl, cfg->uplink_ifindex);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
