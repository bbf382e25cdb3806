/* blast: a StatsD UDP load generator for side-by-side throughput runs.
 *
 *   blast HOST PORT METRICS PER_PACKET NAMES RATE [KIND [PREFIX]]
 *
 * Sends METRICS lines in packets of PER_PACKET lines each, cycling over NAMES
 * distinct names "bench.m<i>", at RATE lines per second (0 = as fast as possible),
 * using sendmmsg in batches. KIND is c (counter "+1", default), ms (timer), g, s,
 * mix or mix30 (see below).
 * Prints one line: sent=<lines> packets=<n> seconds=<s> rate=<lines/s>.
 * With counters every name's expected total is METRICS/NAMES (+1 for the first
 * METRICS%NAMES names), so a sink can verify that nothing was lost.
 *
 * Line number s (0-based) always uses name index i = s % NAMES, whatever its kind
 * (a packet that is full gives the line to the next packet, it never skips it), and
 * its kind and value depend only on s:
 *   c     PREFIX.m<i>:1|c
 *   ms    PREFIX.t<i>:<s % 1000>|ms
 *   g     PREFIX.g<i>:<s % 100>|g
 *   s     PREFIX.s<i>:<s % 50>|s
 *   mix   kind by s % 5:  c c ms g s             (40% c, 20% ms, 20% g, 20% s)
 *   mix30 kind by s % 10: c c c c ms ms ms g g s  (40% c, 30% ms, 20% g, 10% s)
 * So a sink can compute every expected total (and each gauge's last value) from
 * METRICS and NAMES alone. When NAMES is a multiple of 10, each name index has one
 * kind in mix30 (i % 10 picks it), so counter and timer totals stay per-name exact.
 *
 * Changes from the original tool (/work/shared/bench/blast.c), all backwards
 * compatible (the six positional arguments and the output line are unchanged):
 *   - KIND mix30: the benchmark's "30% timers" type mix;
 *   - PREFIX (optional 8th argument, default "bench", at most 64 bytes): the first
 *     name component, so two runs against one daemon need not share names.
 *
 * Build: cc -O2 -o bench/blast bench/blast.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAXPKT 1432
#define MAXLINE 160

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: blast HOST PORT METRICS PER_PACKET NAMES RATE "
                        "[c|ms|g|s|mix|mix30 [PREFIX]]\n");
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    long metrics = atol(argv[3]);
    int per = atoi(argv[4]);
    long names = atol(argv[5]);
    double rate = atof(argv[6]);
    const char *kind = argc > 7 ? argv[7] : "c";
    const char *prefix = argc > 8 ? argv[8] : "bench";
    if (per < 1 || names < 1 || metrics < 1) return 2;
    if (strlen(prefix) > 64) { fprintf(stderr, "blast: PREFIX over 64 bytes\n"); return 2; }
    int mix5 = !strcmp(kind, "mix"), mix10 = !strcmp(kind, "mix30");

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int sndbuf = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &to.sin_addr);
    if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0) { perror("connect"); return 1; }

    static char bufs[BATCH][MAXPKT + MAXLINE];
    struct iovec iov[BATCH];
    struct mmsghdr msgs[BATCH];
    long sent = 0, packets = 0, next_name = 0;
    double start = now();
    while (sent < metrics) {
        int n = 0;
        while (n < BATCH && sent < metrics) {
            char *p = bufs[n];
            int len = 0, lines = 0;
            while (lines < per && sent < metrics) {
                long i = next_name;
                next_name = (next_name + 1) % names;
                const char *k = kind;
                if (mix5) {
                    static const char *kinds[] = {"c", "c", "ms", "g", "s"};
                    k = kinds[sent % 5];
                } else if (mix10) {
                    static const char *kinds[] = {"c", "c", "c", "c", "ms", "ms", "ms",
                                                  "g", "g", "s"};
                    k = kinds[sent % 10];
                }
                int w;
                if (!strcmp(k, "ms"))
                    w = snprintf(p + len, MAXLINE, "%s.t%ld:%ld|ms\n", prefix, i, sent % 1000);
                else if (!strcmp(k, "g"))
                    w = snprintf(p + len, MAXLINE, "%s.g%ld:%ld|g\n", prefix, i, sent % 100);
                else if (!strcmp(k, "s"))
                    w = snprintf(p + len, MAXLINE, "%s.s%ld:%ld|s\n", prefix, i, sent % 50);
                else
                    w = snprintf(p + len, MAXLINE, "%s.m%ld:1|c\n", prefix, i);
                if (len + w > MAXPKT && lines > 0) { next_name = i; break; }
                len += w;
                lines++;
                sent++;
            }
            if (len > 0 && p[len - 1] == '\n') len--;
            iov[n].iov_base = p;
            iov[n].iov_len = len;
            memset(&msgs[n], 0, sizeof msgs[n]);
            msgs[n].msg_hdr.msg_iov = &iov[n];
            msgs[n].msg_hdr.msg_iovlen = 1;
            n++;
        }
        int off = 0;
        while (off < n) {
            int r = sendmmsg(fd, msgs + off, n - off, 0);
            if (r < 0) { perror("sendmmsg"); return 1; }
            off += r;
        }
        packets += n;
        if (rate > 0) {
            double due = start + sent / rate;
            double t = now();
            if (due > t) {
                struct timespec d = {(time_t)(due - t), (long)((due - t - (long)(due - t)) * 1e9)};
                nanosleep(&d, NULL);
            }
        }
    }
    double secs = now() - start;
    printf("sent=%ld packets=%ld seconds=%.3f rate=%.0f\n", sent, packets, secs, sent / secs);
    return 0;
}
