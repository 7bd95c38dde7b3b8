/* Load generator for bench/run.py: crafted Ethernet frames on an AF_PACKET
 * socket, sent in sendmmsg batches, optionally paced to a target rate.
 *
 *   loadgen IFNAME SRCMAC DSTMAC MODE SIZE RATE SECONDS FLOWS SRC4 DST4 SRC6 DST6
 *
 * MODE  6bed4: IPv4/UDP to DST4:25790 whose payload is an IPv6/UDP packet of
 *              SIZE bytes from the 6bed4 address of (SRC4+i/50000):(10000+i%50000)
 *              (lanid 1, prefix = first 8 bytes of SRC6) to DST6;
 *       6to:   IPv6/UDP of SIZE bytes from SRC6 to the 6bed4 address of
 *              DST4:(10000+i%50000) (prefix = first 8 bytes of DST6);
 *       6:     plain IPv6/UDP of SIZE bytes from SRC6 to DST6 (kernel baseline).
 * FLOWS distinct flows are cycled (i = packet number % FLOWS).  RATE 0 = as
 * fast as possible.  Prints "sent N seconds S" on exit.
 *
 * A C generator because the router under test is Python: the generator must be
 * much faster than what it measures.  Checksums are valid (payload sum cached).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define FRAME_MAX 1600
#define PORT_SPAN 50000

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint32_t sum16(const uint8_t *p, size_t n, uint32_t s) {
    for (size_t i = 0; i + 1 < n; i += 2) s += (p[i] << 8) | p[i + 1];
    if (n & 1) s += p[n - 1] << 8;
    return s;
}

static uint16_t fold(uint32_t s) {
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

static void parse_mac(const char *text, uint8_t *mac) {
    unsigned m[6];
    if (sscanf(text, "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) {
        fprintf(stderr, "bad MAC %s\n", text);
        exit(2);
    }
    for (int i = 0; i < 6; i++) mac[i] = (uint8_t)m[i];
}

/* The 6bed4 interface identifier of ipv4:port, lanid 1 (PROTOCOL.md section 1). */
static void encode_iid(uint8_t *iid, const uint8_t *ipv4, uint16_t port) {
    iid[0] = ipv4[0] & 0xfc;
    iid[1] = ipv4[1];
    iid[2] = ipv4[2];
    iid[3] = ipv4[3];
    iid[4] = port >> 8;
    iid[5] = port & 0xff;
    iid[6] = (ipv4[0] & 3) << 6;
    iid[7] = 1;
}

int main(int argc, char **argv) {
    if (argc != 13) {
        fprintf(stderr, "usage: loadgen IFNAME SRCMAC DSTMAC MODE SIZE RATE SECONDS FLOWS SRC4 DST4 SRC6 DST6\n");
        return 2;
    }
    const char *mode = argv[4];
    int size = atoi(argv[5]);
    double rate = atof(argv[6]), seconds = atof(argv[7]);
    long flows = atol(argv[8]);
    uint8_t src4[4], dst4[4], src6[16], dst6[16], smac[6], dmac[6];
    parse_mac(argv[2], smac);
    parse_mac(argv[3], dmac);
    if (inet_pton(AF_INET, argv[9], src4) != 1 || inet_pton(AF_INET, argv[10], dst4) != 1 ||
        inet_pton(AF_INET6, argv[11], src6) != 1 || inet_pton(AF_INET6, argv[12], dst6) != 1 ||
        size < 48 || size > 1280 || flows < 1) {
        fprintf(stderr, "loadgen: bad arguments\n");
        return 2;
    }
    int tunnel = strcmp(mode, "6bed4") == 0, to6bed4 = strcmp(mode, "6to") == 0;
    if (!tunnel && !to6bed4 && strcmp(mode, "6") != 0) {
        fprintf(stderr, "loadgen: unknown mode %s\n", mode);
        return 2;
    }

    int fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (fd < 0) { perror("socket"); return 1; }
    int one = 1, sndbuf = 4 << 20;
    setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    struct sockaddr_ll sll = {.sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(argv[1]), .sll_halen = 6};
    if (!sll.sll_ifindex) { fprintf(stderr, "no interface %s\n", argv[1]); return 1; }
    memcpy(sll.sll_addr, dmac, 6);
    if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) { perror("bind"); return 1; }

    /* One frame per batch slot; only the flow-dependent fields change per packet. */
    static uint8_t frames[BATCH][FRAME_MAX];
    int v6_at = tunnel ? 14 + 20 + 8 : 14;
    int frame_len = v6_at + size;
    uint8_t tmpl[FRAME_MAX] = {0};
    memcpy(tmpl, dmac, 6);
    memcpy(tmpl + 6, smac, 6);
    tmpl[12] = tunnel ? 0x08 : 0x86;
    tmpl[13] = tunnel ? 0x00 : 0xdd;
    if (tunnel) {
        uint8_t *ip = tmpl + 14;
        ip[0] = 0x45;
        ip[2] = (20 + 8 + size) >> 8;
        ip[3] = (20 + 8 + size) & 0xff;
        ip[6] = 0x40; /* DF */
        ip[8] = 64;
        ip[9] = 17;
        memcpy(ip + 16, dst4, 4);
        uint8_t *udp = ip + 20;
        udp[2] = 25790 >> 8;
        udp[3] = 25790 & 0xff;
        udp[4] = (8 + size) >> 8;
        udp[5] = (8 + size) & 0xff;
    }
    uint8_t *v6 = tmpl + v6_at;
    v6[0] = 0x60;
    v6[4] = (size - 40) >> 8;
    v6[5] = (size - 40) & 0xff;
    v6[6] = 17;
    v6[7] = 64;
    memcpy(v6 + 8, src6, 16);
    memcpy(v6 + 24, dst6, 16);
    uint8_t *u6 = v6 + 40;
    u6[0] = 0x30; u6[1] = 0x39; /* 12345 -> 9 */
    u6[2] = 0x00; u6[3] = 0x09;
    u6[4] = (size - 40) >> 8;
    u6[5] = (size - 40) & 0xff;
    for (int i = 48; i < size; i++) v6[i] = (uint8_t)i;
    uint32_t data_sum = sum16(v6 + 48, size - 48, 0);
    uint32_t payload_sum = data_sum + sum16(u6, 6, 0) + (size - 40) + 17;

    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    for (int b = 0; b < BATCH; b++) {
        memcpy(frames[b], tmpl, frame_len);
        iov[b].iov_base = frames[b];
        iov[b].iov_len = frame_len;
        memset(&msgs[b], 0, sizeof msgs[b]);
        msgs[b].msg_hdr.msg_iov = &iov[b];
        msgs[b].msg_hdr.msg_iovlen = 1;
    }

    uint64_t sent = 0;
    long flow = 0;
    double start = now(), end = start + seconds;
    for (;;) {
        double t = now();
        if (t >= end) break;
        if (rate > 0) {
            double due = start + sent / rate;
            if (due > t) {
                if (due - t > 200e-6) usleep((useconds_t)((due - t) * 1e6) - 100);
                continue;
            }
        }
        for (int b = 0; b < BATCH; b++, flow = (flow + 1) % flows) {
            uint8_t *f = frames[b], *p6 = f + v6_at;
            uint8_t ip[4] = {src4[0], src4[1], src4[2], src4[3]};
            uint32_t add = (uint32_t)(flow / PORT_SPAN);
            uint32_t ipn = ((uint32_t)ip[0] << 24 | ip[1] << 16 | ip[2] << 8 | ip[3]) + add;
            ip[0] = ipn >> 24; ip[1] = ipn >> 16; ip[2] = ipn >> 8; ip[3] = ipn;
            uint16_t port = 10000 + flow % PORT_SPAN;
            if (tunnel) {
                uint8_t *h = f + 14;
                memcpy(h + 12, ip, 4);
                h[4] = (sent + b) >> 8; h[5] = (sent + b) & 0xff; /* IP ID counts up, as GRO expects */
                h[10] = h[11] = 0;
                uint16_t c = ~fold(sum16(h, 20, 0));
                h[10] = c >> 8; h[11] = c & 0xff;
                h[20] = port >> 8; h[21] = port & 0xff;
                encode_iid(p6 + 16, ip, port);
            } else if (to6bed4) {
                encode_iid(p6 + 32, dst4, port);
            }
            uint16_t c = ~fold(sum16(p6 + 8, 32, payload_sum));
            if (c == 0) c = 0xffff;
            p6[46] = c >> 8; p6[47] = c & 0xff;
            if (tunnel) { /* outer UDP checksum: GRO merges only checksummed datagrams */
                uint8_t *h = f + 14, *udp = h + 20;
                udp[6] = udp[7] = 0;
                uint32_t s = sum16(h + 12, 8, 17 + 8 + size) + sum16(udp, 8, 0) + sum16(p6, 48, data_sum);
                uint16_t oc = ~fold(s);
                if (oc == 0) oc = 0xffff;
                udp[6] = oc >> 8; udp[7] = oc & 0xff;
            }
        }
        int n = sendmmsg(fd, msgs, BATCH, 0);
        if (n > 0) sent += n;
        else usleep(50); /* ENOBUFS: the device queue is full */
    }
    printf("sent %llu seconds %.6f\n", (unsigned long long)sent, now() - start);
    return 0;
}
