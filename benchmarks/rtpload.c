/* RTP load generator for benchmarks/calls.py: paced G.711 streams on inherited sockets.

   calls.py sets up the calls, binds one UDP socket per leg (the port its SDP advertised),
   connects it to the exchange's media port of that leg and passes the descriptors down:

       rtpload SECONDS DRAIN_SECONDS PTIME_MS < "FD\n" per leg (stream id = line number)

   Every leg sends one 172-octet PCMA packet per PTIME_MS; the N legs are staggered evenly
   over the packet time (packet j of the whole run is due at start + j * PTIME / N), as
   unsynchronised phones would be. Each payload starts with the stream id, its sequence
   number and the CLOCK_REALTIME send time; the receiver takes the kernel's receive
   timestamp (SO_TIMESTAMPNS, also CLOCK_REALTIME), so transit = the time a packet spent
   in the exchange (plus loopback), without this program's own scheduling delay.

   Prints "started" when the first packet is due, "stopped" when sending ends, then (after
   DRAIN_SECONDS more of receiving) one JSON object with the counts and percentiles. */

#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define PACKET 172           /* 12 header + 160 payload: 20 ms of G.711 */
#define HIST_US 200000       /* 1 us buckets up to 200 ms, then one overflow bucket */
#define BATCH 16
#define QUANTUM_NS 200000LL  /* sleep at least this long between send bursts */

static uint64_t transit_hist[HIST_US + 1], late_hist[HIST_US + 1];
static double transit_max_us, late_max_us;

static int64_t now_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void record(uint64_t *hist, double *max, int64_t ns) {
    double us = ns / 1000.0;
    if (us < 0) us = 0;
    if (us > *max) *max = us;
    hist[us < HIST_US ? (int)us : HIST_US]++;
}

static double percentile(const uint64_t *hist, double q) {
    uint64_t total = 0, seen = 0;
    for (int i = 0; i <= HIST_US; i++) total += hist[i];
    if (total == 0) return 0;
    uint64_t want = (uint64_t)(q * (total - 1)) + 1;
    for (int i = 0; i <= HIST_US; i++) {
        seen += hist[i];
        if (seen >= want) return i;
    }
    return HIST_US;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: rtpload SECONDS DRAIN_SECONDS PTIME_MS < fds\n");
        return 2;
    }
    double seconds = atof(argv[1]), drain = atof(argv[2]);
    int ptime_ms = atoi(argv[3]);
    int cap = 1024, n = 0, fd;
    int *fds = malloc(cap * sizeof(int));
    while (scanf("%d", &fd) == 1) {
        if (n == cap) fds = realloc(fds, (cap *= 2) * sizeof(int));
        fds[n++] = fd;
    }
    if (n == 0 || ptime_ms <= 0 || seconds <= 0) {
        fprintf(stderr, "rtpload: nothing to do\n");
        return 2;
    }
    uint64_t *sent = calloc(n, 8), *received = calloc(n, 8), *reordered = calloc(n, 8);
    int64_t *last_seq = malloc(n * 8);
    uint64_t send_errors = 0, foreign = 0, stale = 0;
    int ep = epoll_create1(0);
    int one = 1;
    for (int i = 0; i < n; i++) {
        last_seq[i] = -1;
        if (setsockopt(fds[i], SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one) < 0) {
            perror("rtpload: SO_TIMESTAMPNS");
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) < 0) {
            perror("rtpload: epoll_ctl");
            return 1;
        }
    }
    int timer = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
    epoll_ctl(ep, EPOLL_CTL_ADD, timer, &tev);

    int64_t period = (int64_t)ptime_ms * 1000000LL;
    int64_t start = now_ns(CLOCK_MONOTONIC) + 20000000LL;
    int64_t start_real = now_ns(CLOCK_REALTIME) + 20000000LL;
    int64_t end = start + (int64_t)(seconds * 1e9), drain_end = 0;
    uint64_t j = 0;
    int sending = 1;
    printf("started\n");
    fflush(stdout);

    unsigned char packet[PACKET];
    memset(packet, 0xD5, sizeof packet); /* A-law silence */
    packet[0] = 0x80;
    packet[1] = 8;
    struct mmsghdr msgs[BATCH];
    struct iovec iovs[BATCH];
    unsigned char bufs[BATCH][2048];
    char ctrl[BATCH][CMSG_SPACE(sizeof(struct timespec))];
    struct epoll_event events[256];

    for (;;) {
        int64_t now = now_ns(CLOCK_MONOTONIC);
        if (sending) {
            for (;;) {
                int64_t due = start + (int64_t)(j / n) * period + (int64_t)(j % n) * period / n;
                if (due >= end) {
                    sending = 0;
                    drain_end = now + (int64_t)(drain * 1e9);
                    printf("stopped\n");
                    fflush(stdout);
                    break;
                }
                if (due > now) {
                    int64_t at = due > now + QUANTUM_NS ? due : now + QUANTUM_NS;
                    struct itimerspec spec = {{0, 0}, {at / 1000000000LL, at % 1000000000LL}};
                    timerfd_settime(timer, TFD_TIMER_ABSTIME, &spec, NULL);
                    break;
                }
                int leg = (int)(j % n);
                uint32_t k = (uint32_t)(j / n);
                uint16_t seq = (uint16_t)k;
                uint32_t ts = k * 160, ssrc = 0x10000 + leg, id = leg;
                int64_t real = now_ns(CLOCK_REALTIME);
                packet[2] = seq >> 8;
                packet[3] = seq & 0xFF;
                uint32_t net[3] = {htobe32(ts), htobe32(ssrc), htobe32(id)};
                memcpy(packet + 4, net, 12); /* timestamp, SSRC, then payload: stream id */
                uint32_t kbe = htobe32(k);
                uint64_t realbe = htobe64((uint64_t)real);
                memcpy(packet + 16, &kbe, 4);
                memcpy(packet + 20, &realbe, 8);
                if (send(fds[leg], packet, PACKET, MSG_DONTWAIT) == PACKET) {
                    sent[leg]++;
                } else {
                    send_errors++;
                }
                record(late_hist, &late_max_us, now_ns(CLOCK_MONOTONIC) - due);
                j++;
            }
        }
        if (!sending) {
            if (now >= drain_end) break;
            struct itimerspec spec = {{0, 0}, {drain_end / 1000000000LL, drain_end % 1000000000LL}};
            timerfd_settime(timer, TFD_TIMER_ABSTIME, &spec, NULL);
        }
        int ready = epoll_wait(ep, events, 256, -1);
        if (ready < 0 && errno != EINTR) {
            perror("rtpload: epoll_wait");
            return 1;
        }
        for (int e = 0; e < ready; e++) {
            uint32_t which = events[e].data.u32;
            if (which == UINT32_MAX) {
                uint64_t expirations;
                if (read(timer, &expirations, sizeof expirations) < 0) { /* spurious */ }
                continue;
            }
            for (;;) {
                for (int b = 0; b < BATCH; b++) {
                    iovs[b].iov_base = bufs[b];
                    iovs[b].iov_len = sizeof bufs[b];
                    memset(&msgs[b].msg_hdr, 0, sizeof msgs[b].msg_hdr);
                    msgs[b].msg_hdr.msg_iov = &iovs[b];
                    msgs[b].msg_hdr.msg_iovlen = 1;
                    msgs[b].msg_hdr.msg_control = ctrl[b];
                    msgs[b].msg_hdr.msg_controllen = sizeof ctrl[b];
                }
                int got = recvmmsg(fds[which], msgs, BATCH, MSG_DONTWAIT, NULL);
                if (got <= 0) break; /* EAGAIN, or ECONNREFUSED from an earlier send */
                for (int b = 0; b < got; b++) {
                    unsigned char *p = bufs[b];
                    if (msgs[b].msg_len < 28) {
                        foreign++;
                        continue;
                    }
                    int64_t rx = 0;
                    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[b].msg_hdr); c;
                         c = CMSG_NXTHDR(&msgs[b].msg_hdr, c)) {
                        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                            struct timespec t;
                            memcpy(&t, CMSG_DATA(c), sizeof t);
                            rx = (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
                        }
                    }
                    uint32_t id, k;
                    uint64_t sentbe;
                    memcpy(&id, p + 12, 4);
                    memcpy(&k, p + 16, 4);
                    memcpy(&sentbe, p + 20, 8);
                    id = be32toh(id);
                    k = be32toh(k);
                    int64_t sent_at = (int64_t)be64toh(sentbe);
                    if (id >= (uint32_t)n) {
                        foreign++;
                        continue;
                    }
                    if (sent_at < start_real - 1000000000LL) {
                        stale++; /* left over from an earlier run on the same sockets */
                        continue;
                    }
                    received[id]++;
                    if ((int64_t)k <= last_seq[id]) reordered[id]++;
                    else last_seq[id] = k;
                    if (rx == 0) rx = now_ns(CLOCK_REALTIME);
                    record(transit_hist, &transit_max_us, rx - sent_at);
                }
                if (got < BATCH) break;
            }
        }
    }

    uint64_t total_sent = 0, total_received = 0, total_reordered = 0, lossy_streams = 0;
    int64_t lost = 0;
    for (int i = 0; i < n; i++) {
        total_sent += sent[i];
        total_received += received[i];
        total_reordered += reordered[i];
    }
    /* Stream i's packets come back on the other leg of its call: loss is counted over all
       streams together (the receiver counts by the stream id in the payload). */
    for (int i = 0; i < n; i++) {
        int64_t d = (int64_t)sent[i] - (int64_t)received[i];
        if (d > 0) {
            lost += d;
            lossy_streams++;
        }
    }
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    double cpu = usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec +
                 usage.ru_stime.tv_usec / 1e6;
    printf("{\"legs\": %d, \"sent\": %llu, \"received\": %llu, \"lost\": %lld, "
           "\"lossy_streams\": %llu, \"reordered\": %llu, \"send_errors\": %llu, "
           "\"foreign\": %llu, \"stale\": %llu, "
           "\"transit_us\": {\"p50\": %.0f, \"p90\": %.0f, \"p99\": %.0f, \"p999\": %.0f, "
           "\"max\": %.0f}, "
           "\"send_late_us\": {\"p50\": %.0f, \"p99\": %.0f, \"max\": %.0f}, "
           "\"cpu_s\": %.3f}\n",
           n, (unsigned long long)total_sent, (unsigned long long)total_received,
           (long long)lost, (unsigned long long)lossy_streams,
           (unsigned long long)total_reordered, (unsigned long long)send_errors,
           (unsigned long long)foreign, (unsigned long long)stale,
           percentile(transit_hist, 0.5), percentile(transit_hist, 0.9),
           percentile(transit_hist, 0.99), percentile(transit_hist, 0.999), transit_max_us,
           percentile(late_hist, 0.5), percentile(late_hist, 0.99), late_max_us, cpu);
    return 0;
}
