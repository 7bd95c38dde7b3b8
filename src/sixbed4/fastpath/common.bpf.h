/* SPDX-License-Identifier: BSD-2-Clause OR GPL-2.0 */
/*
 * What the router's and the peer's fast paths share (router.bpf.c, peer.bpf.c):
 * the counters, checksums, the 6bed4 address fields, and the two moves both
 * make - a datagram's outer headers removed and the IPv6 packet put into the
 * TUN device's ingress, and an IPv6 packet put into UDP/IPv4 and sent out of
 * the uplink.  Each program decides for itself which packets those are.
 */
#ifndef SIXBED4_COMMON_BPF_H
#define SIXBED4_COMMON_BPF_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

/* tcx verdicts (linux/bpf.h of 6.6; the build may use older headers) */
#define TCX_NEXT (-1)
#define TCX_DROP 2
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV6
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif

#define PORT_6BED4 25790
#define LINK_MTU 1280
#define OUTER_LEN (sizeof(struct iphdr) + sizeof(struct udphdr)) /* 28 */
#define IP_DF 0x4000
#define IP_MF_OFFSET 0x3fff
#define CHECKSUM_NONE 0
#define CHECKSUM_UNNECESSARY 1
#define CHECKSUM_PARTIAL 3

/* fp_config.flags (shared with sixbed4/fastpath/loader.py) */
enum fp_flags {
	FP_MASQUERADE = 1, /* router: packets from the masq_hosts go the slow path (their source is rewritten) */
	FP_TUN_DOWN = 2,   /* the TUN device is down: the slow path counts what it cannot take (tun_down) */
	FP_LEASED = 4,     /* peer: it has a /114 from the router (until then everything is the slow path's) */
};

/* The counters, the same for both (loader.py COUNTER_NAMES); the first seven are the cores' too. */
enum fp_counter {
	FP_UDP_IN, FP_UDP_IN_BYTES, FP_TO_TUN, FP_RELAYED,
	FP_TUN_IN, FP_TUN_IN_BYTES, FP_TO_UDP,
	FP_UDP_PASSED, FP_TUN_PASSED,
	FP_COUNTERS
};

struct fp_counters {
	__u64 value[FP_COUNTERS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fp_counters);
} counters SEC(".maps");

#ifndef COMPAT_5_10
/* The kernel's sk_buff, for its checksum state (CO-RE: the offset from the running kernel's BTF). */
struct sk_buff___fp {
	__u8 ip_summed : 2;
} __attribute__((preserve_access_index));

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;
#endif

/* A datagram on the uplink, as far as the programs look into it. */
struct frame {
	struct ethhdr eth;
	struct iphdr ip;
	struct udphdr udp;
	struct ipv6hdr ip6;
} __attribute__((packed));

/* Outer IPv4 + UDP headers, as one aligned block on the stack. */
struct outer {
	struct iphdr ip;
	struct udphdr udp;
};

/* --- counting ------------------------------------------------------------------ */

static __always_inline void count(__u32 which, __u64 bytes, __u32 event)
{
	__u32 zero = 0;
	struct fp_counters *c = bpf_map_lookup_elem(&counters, &zero);

	if (!c)
		return;
	c->value[which] += 1;
	c->value[which + 1] += bytes;
	c->value[event] += 1;
}

/* Hand the packet on, untouched, to the next program or the kernel (the slow path). */
static __always_inline int pass(__u32 which)
{
	__u32 zero = 0;
	struct fp_counters *c = bpf_map_lookup_elem(&counters, &zero);

	if (c)
		c->value[which] += 1;
	return TCX_NEXT;
}

/* --- packet access and checksums ------------------------------------------------- */

/* The packet's end, read anew: the compiler must not reuse an earlier read (the
 * verifier refuses the zero-extension it would add to it). */
static __always_inline void *packet_end(struct __sk_buff *skb)
{
	asm volatile("" ::: "memory");
	return (void *)(long)skb->data_end;
}

/* The whole packet in the linear part, where the program can read it (mostly it is already). */
static __always_inline long make_linear(struct __sk_buff *skb, __u32 len)
{
	if ((long)skb->data_end - (long)skb->data >= len)
		return 0;
	return bpf_skb_pull_data(skb, len);
}

static __always_inline __u16 fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum;
}

/*
 * The packet's checksum state: verified by the NIC (CHECKSUM_UNNECESSARY), or
 * unfinished (CHECKSUM_PARTIAL: a local sender's, whose transport checksum the
 * kernel or NIC fills in as it leaves; until then the field holds only the
 * pseudo header's sum).  From Linux 6.2 the programs read the kernel's
 * skb->ip_summed.  The build for older kernels (COMPAT_5_10) asks
 * bpf_csum_level() whether it is verified, and takes a checksum field that
 * holds just the pseudo header's sum for unfinished: a finished checksum that
 * equals it by chance (1 in 65536) only sends its packet the slow way.
 */
#ifndef COMPAT_5_10
static __always_inline __u8 checksum_state(struct __sk_buff *skb)
{
	struct sk_buff___fp *kskb = bpf_cast_to_kern_ctx(skb);

	return BPF_CORE_READ_BITFIELD(kskb, ip_summed);
}

static __always_inline int checksum_verified(struct __sk_buff *skb)
{
	return checksum_state(skb) == CHECKSUM_UNNECESSARY;
}

static __always_inline int datagram_unfinished(struct __sk_buff *skb, const struct frame *f)
{
	return checksum_state(skb) == CHECKSUM_PARTIAL;
}

static __always_inline int packet_unfinished(struct __sk_buff *skb, __u32 l2)
{
	return checksum_state(skb) == CHECKSUM_PARTIAL;
}
#else
static __always_inline int checksum_verified(struct __sk_buff *skb)
{
	return bpf_csum_level(skb, BPF_CSUM_LEVEL_QUERY) >= 0;
}

static __always_inline int datagram_unfinished(struct __sk_buff *skb, const struct frame *f)
{
	return f->udp.check == fold((__u64)f->ip.saddr + f->ip.daddr + bpf_htons(IPPROTO_UDP) + f->udp.len);
}

/* The IPv6 packet at offset l2 (0 or 14): a TCP or UDP checksum that is the pseudo
 * header's sum; behind extension headers, where the transport header may be one, too. */
static __always_inline int packet_unfinished(struct __sk_buff *skb, __u32 l2)
{
	struct ipv6hdr *ip6 = (void *)(long)skb->data + (l2 & 0xff);
	void *end = (void *)(long)skb->data_end;
	__u16 *check;
	__u64 sum;

	if ((void *)(ip6 + 1) > end)
		return 1;
	switch (ip6->nexthdr) {
	case IPPROTO_TCP:
		check = (__u16 *)((__u8 *)(ip6 + 1) + 16);
		break;
	case IPPROTO_UDP:
		check = (__u16 *)((__u8 *)(ip6 + 1) + 6);
		break;
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_DSTOPTS:
		return 1;
	default:
		return 0; /* no transport checksum a sender leaves unfinished */
	}
	if ((void *)(check + 1) > end)
		return 1;
	sum = ip6->payload_len + bpf_htons(ip6->nexthdr);
	for (int i = 0; i < 4; i++)
		sum += (__u64)ip6->saddr.in6_u.u6_addr32[i] + ip6->daddr.in6_u.u6_addr32[i];
	return *check == fold(sum);
}
#endif

/*
 * Ones' complement sum (unfolded, memory order) of `len` bytes (< 2048) at
 * offset `off` of the linear packet, added to `seed`; < 0 if out of bounds.
 */
static __always_inline __s64 packet_sum(struct __sk_buff *skb, __u32 off, __u32 len, __u32 seed)
{
	void *end = (void *)(long)skb->data_end;
	__u8 *p = (__u8 *)(long)skb->data + (off & 0xff);
	__s64 sum = seed;

	if (len >= 2048)
		return -1;
	for (int i = 0; i < 3; i++) {
		if (len < 512)
			break;
		if ((void *)(p + 512) > end)
			return -1;
		sum = bpf_csum_diff(0, 0, (void *)p, 512, sum);
		p += 512;
		len -= 512;
	}
#define CHUNK(size)                                                        \
	if (len & size) {                                                  \
		if ((void *)(p + size) > end)                              \
			return -1;                                         \
		sum = bpf_csum_diff(0, 0, (void *)p, size, sum);           \
		p += size;                                                 \
	}
	CHUNK(256) CHUNK(128) CHUNK(64) CHUNK(32) CHUNK(16) CHUNK(8) CHUNK(4)
#undef CHUNK
	if (len & 3) {
		__u8 tail[4] = {};

		if ((void *)(p + 1) > end)
			return -1;
		tail[0] = p[0];
		if (len & 2) {
			if ((void *)(p + 2) > end)
				return -1;
			tail[1] = p[1];
		}
		if ((len & 3) == 3) {
			if ((void *)(p + 3) > end)
				return -1;
			tail[2] = p[2];
		}
		sum = bpf_csum_diff(0, 0, (__be32 *)tail, 4, sum);
	}
	return sum;
}

/* The ones' complement sum of an IPv4 header without options (0xffff if its checksum is right). */
static __always_inline __u16 ipv4_header_sum(const struct iphdr *ip)
{
	const __u16 *word = (const __u16 *)ip;
	__u64 sum = 0;

	for (int i = 0; i < 10; i++)
		sum += word[i];
	return fold(sum);
}

/* The UDP checksum from the pseudo header, the UDP header and `payload_sum`. */
static __always_inline __u16 udp_checksum(struct iphdr *ip, struct udphdr *udp, __u64 payload_sum)
{
	__u64 sum = payload_sum;

	sum += ip->saddr;
	sum += ip->daddr;
	sum += bpf_htons(IPPROTO_UDP);
	sum += udp->len;
	sum += udp->source;
	sum += udp->dest;
	sum += udp->len;
	__u16 check = ~fold(sum);
	return check ? check : 0xffff;
}

/* --- 6bed4 addresses --------------------------------------------------------------- */

static __always_inline int prefix_is(const __u8 *address, const __u8 *prefix)
{
	__u64 a, b;

	__builtin_memcpy(&a, address, 8);
	__builtin_memcpy(&b, prefix, 8);
	return a == b;
}

/* The IPv4 address an interface identifier (bytes 8..15 of an address) encodes. */
static __always_inline __be32 iid_ipv4(const __u8 *address)
{
	__u8 v4[4] = { (address[8] & 0xfc) | (address[14] >> 6), address[9], address[10], address[11] };
	__be32 ip;

	__builtin_memcpy(&ip, v4, 4);
	return ip;
}

static __always_inline __be16 iid_port(const __u8 *address)
{
	__be16 port;

	__builtin_memcpy(&port, address + 12, 2);
	return port;
}

/* An ICMPv6 Neighbor Discovery message (RS, RA, NS, NA, Redirect): 6bed4 does its own, in Python.
 * 1 if it is one, 0 if not, -1 if its type lies past the end. */
static __always_inline int is_nd(const struct ipv6hdr *ip6, void *end)
{
	const __u8 *type = (const __u8 *)(ip6 + 1);

	if (ip6->nexthdr != IPPROTO_ICMPV6)
		return 0;
	if ((void *)(type + 1) > end)
		return -1;
	return *type >= 133 && *type <= 137;
}

/* --- datagrams in ------------------------------------------------------------------ */

/*
 * The uplink frame as a possible datagram: a plain IPv4 packet for this host,
 * no VLAN tag, not GSO, linear up to the IPv6 header (checked again by the
 * caller); NULL for anything else.
 */
static __always_inline struct frame *datagram_frame(struct __sk_buff *skb)
{
	struct frame *f;

	if (skb->protocol != bpf_htons(ETH_P_IP) || skb->pkt_type != PACKET_HOST || skb->vlan_present ||
	    skb->gso_size)
		return NULL; /* not a plain IPv4 packet for this host (a VLAN's is its device's) */
	if (skb->len < offsetof(struct frame, ip6) || make_linear(skb, skb->len))
		return NULL;
	f = (void *)(long)skb->data;
	if ((void *)&f->ip6 > (void *)(long)skb->data_end)
		return NULL;
	/* plain IPv4 (no options, no fragment) UDP */
	if (f->eth.h_proto != bpf_htons(ETH_P_IP) || f->ip.version != 4 || f->ip.ihl != 5 ||
	    f->ip.protocol != IPPROTO_UDP || (f->ip.frag_off & bpf_htons(IP_MF_OFFSET)))
		return NULL;
	return f;
}

/*
 * The length of the IPv6 packet in a datagram that carries exactly one (at
 * most LINK_MTU bytes, every length field agreeing, a right IPv4 header
 * checksum, not Neighbor Discovery); -1 otherwise.
 */
static __always_inline int carried_packet(struct __sk_buff *skb, struct frame *f, void *end)
{
	__u32 len = skb->len, n;

	if ((void *)(f + 1) > end || len > sizeof(struct ethhdr) + OUTER_LEN + LINK_MTU)
		return -1; /* shorter than an IPv6 header (a keepalive), or too long */
	if (bpf_ntohs(f->ip.tot_len) != len - sizeof(struct ethhdr) ||
	    bpf_ntohs(f->udp.len) != len - sizeof(struct ethhdr) - sizeof(struct iphdr))
		return -1;
	if (ipv4_header_sum(&f->ip) != 0xffff)
		return -1; /* the kernel drops it: let it */
	n = len - sizeof(struct ethhdr) - OUTER_LEN;
	if (f->ip6.version != 6 || bpf_ntohs(f->ip6.payload_len) != n - sizeof(struct ipv6hdr))
		return -1;
	if (is_nd(&f->ip6, end))
		return -1;
	return n;
}

/*
 * Whether the socket would accept the datagram's UDP checksum (carrying `n`
 * bytes).  Moves the packet's data: the caller reloads its pointers.
 */
static __always_inline int udp_checksum_right(struct __sk_buff *skb, __u32 n)
{
	struct frame *f;
	__s64 sum;

	f = (void *)(long)skb->data;
	if ((void *)(f + 1) > (void *)(long)skb->data_end)
		return 0;
	if (datagram_unfinished(skb, f))
		return 0; /* from a local sender: its checksum is not there yet */
	if (!f->udp.check || checksum_verified(skb))
		return 1; /* none (allowed in IPv4), or verified by the NIC */
	sum = packet_sum(skb, sizeof(struct ethhdr) + sizeof(struct iphdr), n + sizeof(struct udphdr), 0);
	if (sum < 0)
		return 0;
	f = (void *)(long)skb->data;
	if ((void *)(f + 1) > (void *)(long)skb->data_end)
		return 0;
	return fold((__u64)sum + f->ip.saddr + f->ip.daddr + bpf_htons(IPPROTO_UDP) + f->udp.len) == 0xffff;
}

/* The outer headers off, and the IPv6 packet into the TUN device's ingress, as a TUN write would. */
static __always_inline int into_tun(struct __sk_buff *skb, __u32 n, __u32 tun_ifindex)
{
#ifndef COMPAT_5_10
	if (bpf_skb_adjust_room(skb, -(__s32)OUTER_LEN, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_DECAP_L3_IPV6))
		return pass(FP_UDP_PASSED);
#else
	/* before 6.3 bpf_skb_adjust_room cannot change skb->protocol; bpf_skb_change_proto
	 * can, and puts 20 bytes (an IPv6 header's room) in front of the IPv4 header: all go */
	if (bpf_skb_change_proto(skb, bpf_htons(ETH_P_IPV6), 0))
		return pass(FP_UDP_PASSED);
	if (bpf_skb_adjust_room(skb, -(__s32)(OUTER_LEN + sizeof(struct ipv6hdr) - sizeof(struct iphdr)),
				BPF_ADJ_ROOM_MAC, 0))
		return TCX_DROP; /* changed halfway (out of memory) */
#endif
	count(FP_UDP_IN, n, FP_TO_TUN);
	return bpf_redirect(tun_ifindex, BPF_F_INGRESS);
}

/* --- datagrams out ----------------------------------------------------------------- */

/* Where a datagram goes: the address and port it leaves from and the ones it goes to. */
struct endpoints {
	__be32 src, dst;
	__be16 sport, dport;
};

/* The outer IPv4 + UDP headers as an unconnected UDP socket sends them (DF, ID 0, `ttl`). */
static __always_inline void outer_headers(struct outer *out, const struct endpoints *to, __u8 ttl, __u32 payload)
{
	out->ip.version = 4;
	out->ip.ihl = 5;
	out->ip.tos = 0;
	out->ip.tot_len = bpf_htons(payload + OUTER_LEN);
	out->ip.id = 0;
	out->ip.frag_off = bpf_htons(IP_DF);
	out->ip.ttl = ttl;
	out->ip.protocol = IPPROTO_UDP;
	out->ip.saddr = to->src;
	out->ip.daddr = to->dst;
	out->ip.check = 0;
	out->ip.check = ~ipv4_header_sum(&out->ip);
	out->udp.source = to->sport;
	out->udp.dest = to->dport;
	out->udp.len = bpf_htons(payload + sizeof(struct udphdr));
	out->udp.check = 0;
}

/*
 * Out of the uplink, to the next hop the kernel's routes and neighbour table
 * give (resolving it if need be), as for the daemon's own socket.  The frame
 * must start with an Ethernet header, which is replaced.
 */
static __always_inline int send_out(__u32 uplink_ifindex)
{
	return bpf_redirect_neigh(uplink_ifindex, NULL, 0, 0);
}

/*
 * The IPv6 packet of `n` bytes at offset `l2` (0 on the TUN device; 14 under
 * BPF_PROG_TEST_RUN), routed into the TUN device, put into a UDP datagram
 * `to` and sent out of the uplink - or handed on untouched if it cannot be.
 */
static __always_inline int encapsulate(struct __sk_buff *skb, __u32 l2, __u32 n, const struct endpoints *to, __u8 ttl,
				       __u32 uplink_ifindex)
{
	struct outer outer;
	__s64 sum;

	/* the datagram's checksum covers the IPv6 packet, which must be finished: a local
	 * sender's packet whose transport checksum the kernel fills in later (as it leaves)
	 * goes to the Python path, which reads it finished from the TUN device; after an
	 * encapsulation here, a virtual device (veth) would hand it on unfinished */
	if (packet_unfinished(skb, l2))
		return pass(FP_TUN_PASSED);
	sum = packet_sum(skb, l2, n, 0);
	if (sum < 0)
		return pass(FP_TUN_PASSED);
	outer_headers(&outer, to, ttl, n);
	outer.udp.check = udp_checksum(&outer.ip, &outer.udp, (__u64)sum);

	if (bpf_skb_adjust_room(skb, OUTER_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP))
		return pass(FP_TUN_PASSED);
	/* from here the packet is changed: a failure (out of memory) can only drop it;
	 * an Ethernet header (zeros) for bpf_redirect_neigh, which puts the real one */
	if (!l2 && bpf_skb_change_head(skb, sizeof(struct ethhdr), 0))
		return TCX_DROP;
	if (bpf_skb_store_bytes(skb, sizeof(struct ethhdr), &outer, sizeof(outer), 0))
		return TCX_DROP;
	count(FP_TUN_IN, n, FP_TO_UDP);
	return send_out(uplink_ifindex);
}

/*
 * The IPv6 packet routed into the TUN device, at offset l2 (0, or 14 under
 * BPF_PROG_TEST_RUN), if it is one either node might take: plain (not GSO), of
 * 40..LINK_MTU bytes, made linear, not Neighbor Discovery; NULL otherwise.
 * Sets *n to its length.
 */
static __always_inline struct ipv6hdr *routed_packet(struct __sk_buff *skb, __u32 l2, __u32 *n)
{
	struct ipv6hdr *ip6;
	void *end;

	if (skb->gso_size)
		return NULL; /* a GSO packet: cut into datagrams after this hook, read by Python */
	if (skb->len < l2 + sizeof(*ip6) || skb->len > l2 + LINK_MTU)
		return NULL;
	*n = skb->len - l2;
	if (make_linear(skb, skb->len))
		return NULL;
	ip6 = (void *)(long)skb->data + l2;
	end = (void *)(long)skb->data_end;
	if ((void *)(ip6 + 1) > end || ip6->version != 6 || is_nd(ip6, end))
		return NULL;
	return ip6;
}

#endif
