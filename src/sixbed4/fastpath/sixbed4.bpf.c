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

/* --- shared with sixbed4/fastpath/loader.py (struct layouts and indexes) --- */

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

enum fp_flags {
	FP_MASQUERADE = 1, /* packets from the masq_hosts go the slow path (their source is rewritten) */
	FP_TUN_DOWN = 2,   /* the TUN device is down: the slow path counts what it cannot take (tun_down) */
};

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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct fp_counters);
} counters SEC(".maps");

/* The kernel's sk_buff, for its checksum state (CO-RE: the offset from the running kernel's BTF). */
struct sk_buff___fp {
	__u8 ip_summed : 2;
} __attribute__((preserve_access_index));

extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/* --- helpers ---------------------------------------------------------------- */

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

static __always_inline int pass(__u32 which)
{
	__u32 zero = 0;
	struct fp_counters *c = bpf_map_lookup_elem(&counters, &zero);

	if (c)
		c->value[which] += 1;
	return TCX_NEXT;
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

/* The ones' complement sum of an IPv4 header without options (0xffff if its checksum is right). */
static __always_inline __u16 ipv4_header_sum(const struct iphdr *ip)
{
	const __u16 *word = (const __u16 *)ip;
	__u64 sum = 0;

	for (int i = 0; i < 10; i++)
		sum += word[i];
	return fold(sum);
}

static __always_inline __u16 ipv4_header_checksum(struct iphdr *ip)
{
	ip->check = 0;
	return ~ipv4_header_sum(ip);
}

/* The outer IPv4 + UDP headers as the router's socket sends them (DF, ID 0, default TTL). */
static __always_inline void outer_headers(struct iphdr *ip, struct udphdr *udp, const struct fp_config *cfg,
					  __be32 src, __be32 dst, __be16 dport, __u32 payload)
{
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(payload + OUTER_LEN);
	ip->id = 0;
	ip->frag_off = bpf_htons(IP_DF);
	ip->ttl = cfg->ttl;
	ip->protocol = IPPROTO_UDP;
	ip->saddr = src;
	ip->daddr = dst;
	ip->check = ipv4_header_checksum(ip);
	udp->source = cfg->port;
	udp->dest = dport;
	udp->len = bpf_htons(payload + sizeof(*udp));
	udp->check = 0;
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

/*
 * Out of the uplink, to the next hop the kernel's routes and neighbour table
 * give (resolving it if need be), as for the router's own socket.  The frame
 * must start with an Ethernet header, which is replaced.
 */
static __always_inline int send_out(const struct fp_config *cfg)
{
	return bpf_redirect_neigh(cfg->uplink_ifindex, NULL, 0, 0);
}

/* --- peer -> router: tc ingress of the uplink -------------------------------- */

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

static __always_inline int relay(struct __sk_buff *skb, const struct fp_config *cfg, struct frame *f, __u32 n)
{
	const __u8 *dst6 = f->ip6.daddr.in6_u.u6_addr8;
	__be32 src = f->ip.daddr; /* the address the datagram came to */
	__be32 target = iid_ipv4(dst6);
	__be16 target_port = iid_port(dst6);
	__u8 hop_limit = f->ip6.hop_limit - 1;
	struct outer out;
	__s64 sum;

	if (!is_peer_address(dst6, cfg) || f->ip6.hop_limit <= 1 || f->udp.check == 0)
		return pass(FP_UDP_PASSED);
	outer_headers(&out.ip, &out.udp, cfg, src, target, target_port, n);
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
	return send_out(cfg);
}

SEC("tc")
int uplink_in(struct __sk_buff *skb)
{
	__u32 zero = 0;
	const struct fp_config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct sk_buff___fp *kskb;
	struct frame *f;
	__u32 n, len = skb->len;
	void *data, *end;
	__s64 sum;

	if (!cfg || skb->protocol != bpf_htons(ETH_P_IP) || skb->pkt_type != PACKET_HOST || skb->vlan_present ||
	    skb->gso_size)
		return TCX_NEXT; /* not a plain IPv4 packet for this host (a VLAN's is its device's) */
	if (len < offsetof(struct frame, ip6) || make_linear(skb, len))
		return TCX_NEXT;
	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	f = data;
	if ((void *)&f->ip6 > end)
		return TCX_NEXT;
	/* plain IPv4 (no options, no fragment) UDP to the router's address and port */
	if (f->eth.h_proto != bpf_htons(ETH_P_IP) || f->ip.version != 4 || f->ip.ihl != 5 ||
	    f->ip.protocol != IPPROTO_UDP || (f->ip.frag_off & bpf_htons(IP_MF_OFFSET)) ||
	    f->udp.dest != cfg->port)
		return TCX_NEXT;
	if (cfg->bind ? f->ip.daddr != cfg->bind : !bpf_map_lookup_elem(&host_ipv4s, &f->ip.daddr))
		return TCX_NEXT;
	/* from here on the datagram is the router's: what is not taken goes to its socket */
	if ((void *)(f + 1) > end || len > sizeof(struct ethhdr) + OUTER_LEN + LINK_MTU)
		return pass(FP_UDP_PASSED); /* shorter than an IPv6 header (a keepalive), or too long */
	if (bpf_ntohs(f->ip.tot_len) != len - sizeof(struct ethhdr) ||
	    bpf_ntohs(f->udp.len) != len - sizeof(struct ethhdr) - sizeof(struct iphdr))
		return pass(FP_UDP_PASSED);
	if (ipv4_header_sum(&f->ip) != 0xffff)
		return pass(FP_UDP_PASSED); /* the kernel drops it: let it */
	n = len - sizeof(struct ethhdr) - OUTER_LEN;

	/* one IPv6 packet that RouterCore would forward without a question */
	if (f->ip6.version != 6 || bpf_ntohs(f->ip6.payload_len) != n - sizeof(struct ipv6hdr))
		return pass(FP_UDP_PASSED);
	if (f->ip6.nexthdr == IPPROTO_ICMPV6) {
		__u8 *type = (__u8 *)(f + 1);

		if ((void *)(type + 1) > end)
			return pass(FP_UDP_PASSED);
		if (*type >= 133 && *type <= 137) /* Neighbor Discovery */
			return pass(FP_UDP_PASSED);
	}
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
	kskb = bpf_cast_to_kern_ctx(skb);
	__u8 summed = BPF_CORE_READ_BITFIELD(kskb, ip_summed);
	if (summed == CHECKSUM_PARTIAL)
		return pass(FP_UDP_PASSED); /* from a local sender: its checksum is not there yet */
	if (f->udp.check && summed != CHECKSUM_UNNECESSARY) {
		sum = packet_sum(skb, sizeof(struct ethhdr) + sizeof(struct iphdr), n + sizeof(struct udphdr), 0);
		if (sum < 0)
			return pass(FP_UDP_PASSED);
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
		f = data;
		if ((void *)(f + 1) > end)
			return TCX_NEXT;
		__u64 total = (__u64)sum + f->ip.saddr + f->ip.daddr + bpf_htons(IPPROTO_UDP) + f->udp.len;
		if (fold(total) != 0xffff)
			return pass(FP_UDP_PASSED);
	}

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

	/* to the TUN: drop the outer IPv4 + UDP headers, into the device as a write would */
	if (bpf_skb_adjust_room(skb, -(__s32)OUTER_LEN, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_DECAP_L3_IPV6))
		return pass(FP_UDP_PASSED);
	count(FP_UDP_IN, n, FP_TO_TUN);
	return bpf_redirect(cfg->tun_ifindex, BPF_F_INGRESS);
}

/* --- router -> peer: tc egress of the TUN device ----------------------------- */

SEC("tc")
int tun_out(struct __sk_buff *skb)
{
	__u32 zero = 0;
	const struct fp_config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct sk_buff___fp *kskb;
	struct outer outer;
	struct ipv6hdr *ip6;
	__u32 l2, n;
	__s64 sum;

	if (!cfg || skb->protocol != bpf_htons(ETH_P_IPV6))
		return TCX_NEXT;
	if (skb->gso_size)
		return pass(FP_TUN_PASSED); /* a GSO packet: cut into datagrams after this hook, read by Python */
	l2 = cfg->l2_len == 14 ? 14 : 0;
	if (skb->len < l2 + sizeof(*ip6) || skb->len > l2 + LINK_MTU)
		return pass(FP_TUN_PASSED);
	n = skb->len - l2;
	if (make_linear(skb, skb->len))
		return pass(FP_TUN_PASSED);
	ip6 = (void *)(long)skb->data + l2;
	if ((void *)(ip6 + 1) > (void *)(long)skb->data_end)
		return pass(FP_TUN_PASSED);
	if (ip6->version != 6)
		return pass(FP_TUN_PASSED);
	if (ip6->nexthdr == IPPROTO_ICMPV6) {
		__u8 *type = (__u8 *)(ip6 + 1);

		if ((void *)(type + 1) > (void *)(long)skb->data_end)
			return pass(FP_TUN_PASSED);
		if (*type >= 133 && *type <= 137)
			return pass(FP_TUN_PASSED);
	}
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

	/* the datagram's checksum covers the IPv6 packet, which must be finished: a local
	 * sender's packet whose transport checksum the kernel fills in later (as it leaves)
	 * goes to the Python path, which reads it finished from the TUN device; after an
	 * encapsulation here, a virtual device (veth) would hand it on unfinished */
	kskb = bpf_cast_to_kern_ctx(skb);
	if (BPF_CORE_READ_BITFIELD(kskb, ip_summed) == CHECKSUM_PARTIAL)
		return pass(FP_TUN_PASSED);
	sum = packet_sum(skb, l2, n, 0);
	if (sum < 0)
		return pass(FP_TUN_PASSED);

	ip6 = (void *)(long)skb->data + l2;
	if ((void *)(ip6 + 1) > (void *)(long)skb->data_end)
		return pass(FP_TUN_PASSED);
	dst6 = ip6->daddr.in6_u.u6_addr8;
	outer_headers(&outer.ip, &outer.udp, cfg, cfg->source, iid_ipv4(dst6), iid_port(dst6), n);
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
	return send_out(cfg);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
