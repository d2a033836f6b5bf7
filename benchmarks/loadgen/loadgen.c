/* The benchmarks' load generator: one epoll thread, many WebSocket clients.
 *
 * Compiled so that it is never the limit (a Python client saturated first,
 * and then measured itself). It reads a plan (a line per client: the request
 * path, a tab, the subscribe message or nothing), opens the connections with
 * `concurrency` handshakes in flight, and then takes commands on stdin:
 *
 *   start    send each client's subscribe message
 *   reset    zero the counters (and note this process's CPU time)
 *   report   print one JSON line: frames, bytes, loss, order, latency, own CPU
 *   close    close every connection, wait for the server to let go, exit
 *
 * With --subscribe-on-open each client subscribes as soon as it is upgraded
 * and counts as connected when the first frame after that arrives (the
 * subscription's confirmation): connect + upgrade + key check + subscribe.
 *
 * Updates are the bench feed's trades: `"seq":N` per topic gives loss and
 * order, `"pub_ns":T` (CLOCK_REALTIME) the publish-to-receive latency of
 * every --sample-every'th update.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CONNECTING, UPGRADING, OPEN, DONE };
#define TOPICS 16             /* per client: the market-shaped plan takes at most 10 */
#define MAX_SAMPLES 2000000

typedef struct {
    int fd, state, subscribed, confirmed, close_code;
    char *pend;               /* bytes of a frame (or of the upgrade response) not yet whole */
    uint32_t plen, pcap;
    const char *path, *sub;
    uint32_t sublen;
    int64_t topic[TOPICS], seq[TOPICS];
    int ntopics;
} conn_t;

static conn_t *conns;
static int nconns, epfd, port, concurrency = 200, source_block = 0, subscribe_on_open = 0;
static int sample_every = 97, pause_us = 0;
static uint64_t frames, nbytes, others, gaps, reorders, sampled_at;
static int64_t *samples;
static size_t nsamples;
static int opened, failed, pending_done, next_to_connect, in_flight;
static char buf[1 << 20];

static int64_t now_ns(int clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int64_t field_int(const char *p, size_t n, const char *key) {
    size_t kl = strlen(key);
    const char *at = memmem(p, n, key, kl);
    if (!at) return -1;
    at += kl;
    const char *end = p + n;
    int64_t v = 0;
    while (at < end && *at >= '0' && *at <= '9') v = v * 10 + (*at++ - '0');
    return v;
}

/* A masked client frame (the mask is fixed: the server must unmask, not judge it). */
static void send_frame(conn_t *c, int opcode, const char *payload, size_t n) {
    char out[16 + 65536];
    static const unsigned char mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t h = 0;
    if (n > 65535) return;
    out[h++] = (char)(0x80 | opcode);
    if (n < 126) out[h++] = (char)(0x80 | n);
    else { out[h++] = (char)(0x80 | 126); out[h++] = (char)(n >> 8); out[h++] = (char)n; }
    memcpy(out + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < n; i++) out[h + i] = payload[i] ^ mask[i & 3];
    if (write(c->fd, out, h + n) < 0 && errno != EAGAIN) c->state = DONE;
}

static void finish_connect(conn_t *c, int ok) {
    /* One client has its answer: start the next one. */
    in_flight--;
    if (ok) opened++; else failed++;
    pending_done++;
    (void)c;
}

static void start_next(void);

static void close_conn(conn_t *c) {
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    c->state = DONE;
}

static void subscribe(conn_t *c) {
    if (c->sublen && !c->subscribed) {
        send_frame(c, 1, c->sub, c->sublen);
        c->subscribed = 1;
    }
}

static void on_update(conn_t *c, const char *p, size_t n) {
    frames++;
    nbytes += n;
    int64_t seq = field_int(p, n, "\"seq\":");
    if (seq > 0) {
        int64_t sym = field_int(p, n, "\"symbol\":\"BENCH");
        const char *chan = memmem(p, n, "\"channel\":\"", 11);
        int64_t topic = sym * 4 + (chan ? (chan[11] == 't' ? 0 : chan[11] == 'q' ? 1 : chan[11] == 'b' ? 2 : 3) : 3);
        int i;
        for (i = 0; i < c->ntopics && c->topic[i] != topic; i++) {}
        if (i == c->ntopics && i < TOPICS) { c->topic[i] = topic; c->seq[i] = 0; c->ntopics++; }
        if (i < TOPICS) {
            int64_t prev = c->seq[i];
            if (prev && seq != prev + 1) {
                if (seq <= prev) reorders++;
                else gaps += seq - prev - 1;
            }
            c->seq[i] = seq;
        }
    }
    if (++sampled_at % sample_every == 0 && nsamples < MAX_SAMPLES) {
        int64_t pub = field_int(p, n, "\"pub_ns\":");
        if (pub > 0) samples[nsamples++] = now_ns(CLOCK_REALTIME) - pub;
    }
}

/* Whole frames from p; returns the bytes used (the rest waits for more). */
static size_t frames_in(conn_t *c, const char *p, size_t n) {
    size_t used = 0;
    while (n - used >= 2) {
        const unsigned char *f = (const unsigned char *)p + used;
        size_t avail = n - used, h = 2;
        uint64_t len = f[1] & 0x7f;
        if (len == 126) {
            if (avail < 4) break;
            len = ((uint64_t)f[2] << 8) | f[3];
            h = 4;
        } else if (len == 127) {
            if (avail < 10) break;
            len = 0;
            for (int i = 0; i < 8; i++) len = (len << 8) | f[2 + i];
            h = 10;
        }
        if (avail < h + len) break;
        const char *payload = (const char *)f + h;
        int opcode = f[0] & 0x0f;
        if (opcode == 1 && len > 16 && memcmp(payload, "{\"type\":\"update\"", 16) == 0) {
            on_update(c, payload, len);
        } else if (opcode == 9) {
            send_frame(c, 10, payload, len);
        } else if (opcode == 8) {
            c->close_code = len >= 2 ? (((unsigned char)payload[0]) << 8 | (unsigned char)payload[1]) : 1005;
            used = n;
            close_conn(c);
            return used;
        } else {
            others++;
            if (subscribe_on_open && !c->confirmed) {
                c->confirmed = 1;
                finish_connect(c, 1);
            }
        }
        used += h + len;
    }
    return used;
}

static void keep(conn_t *c, const char *p, size_t n) {
    if (n > c->pcap) {
        c->pcap = n < 4096 ? 4096 : (uint32_t)n;
        c->pend = realloc(c->pend, c->pcap);
    }
    memmove(c->pend, p, n);
    c->plen = (uint32_t)n;
}

static void on_bytes(conn_t *c, const char *p, size_t n) {
    if (c->plen) {                      /* a partial frame waits: join it */
        if (c->plen + n > c->pcap) {
            c->pcap = c->plen + n;
            c->pend = realloc(c->pend, c->pcap);
        }
        memcpy(c->pend + c->plen, p, n);
        n += c->plen;
        c->plen = 0;
        p = c->pend;
    }
    if (c->state == UPGRADING) {
        const char *end = memmem(p, n, "\r\n\r\n", 4);
        if (!end) { keep(c, p, n); return; }
        if (n < 12 || memcmp(p + 9, "101", 3) != 0) {
            finish_connect(c, 0);
            close_conn(c);
            return;
        }
        c->state = OPEN;
        if (subscribe_on_open) subscribe(c);
        if (!subscribe_on_open || !c->sublen) {
            c->confirmed = 1;
            finish_connect(c, 1);
        }
        size_t head = end + 4 - p;
        p += head;
        n -= head;
    }
    size_t used = frames_in(c, p, n);
    if (c->state == OPEN && used < n) keep(c, p + used, n - used);
}

static void start_next(void) {
    while (in_flight < concurrency && next_to_connect < nconns) {
        int i = next_to_connect++;
        conn_t *c = &conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (c->fd < 0) { perror("socket"); c->state = DONE; failed++; pending_done++; continue; }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* The port is chosen at connect(), by the whole 4-tuple: bind(port 0)
         * would search the address's ports itself (266 µs a call, measured). */
        setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        struct sockaddr_in src = {.sin_family = AF_INET};
        /* 5,000 clients per loopback source address: no run runs out of ports. */
        src.sin_addr.s_addr = htonl((127u << 24) | ((1u + (source_block + i / 5000) % 240) << 8) | 1u);
        bind(c->fd, (struct sockaddr *)&src, sizeof src);
        struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
        dst.sin_addr.s_addr = htonl(0x7f000001);
        if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
            close(c->fd); c->fd = -1; c->state = DONE; failed++; pending_done++; continue;
        }
        c->state = CONNECTING;
        struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
        in_flight++;
    }
}

static void on_event(conn_t *c, uint32_t events) {
    if (c->state == CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) { finish_connect(c, 0); close_conn(c); return; }
        char req[2048];
        int n = snprintf(req, sizeof req,
                         "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                         c->path, port);
        if (write(c->fd, req, n) != n) { finish_connect(c, 0); close_conn(c); return; }
        c->state = UPGRADING;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
        return;
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    ssize_t n = read(c->fd, buf, sizeof buf);
    if (n > 0) { on_bytes(c, buf, (size_t)n); return; }
    if (n < 0 && errno == EAGAIN) return;
    if (c->state == UPGRADING || (subscribe_on_open && c->state == OPEN && c->sublen && !c->confirmed))
        finish_connect(c, 0);
    if (!c->close_code) c->close_code = -1;   /* closed without a close frame */
    close_conn(c);
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static double cpu_at_reset, wall_at_reset;
static const char *samples_out;

static void report(void) {
    double wall = now_ns(CLOCK_MONOTONIC) / 1e9 - wall_at_reset, cpu = cpu_seconds() - cpu_at_reset;
    int closed = 0;
    for (int i = 0; i < nconns; i++) closed += conns[i].close_code != 0;
    qsort(samples, nsamples, sizeof *samples, cmp64);
    /* The samples first: the harness reads them once it has the line. */
    if (samples_out) {
        FILE *f = fopen(samples_out, "w");
        for (size_t i = 0; f && i < nsamples; i++) fprintf(f, "%.1f\n", samples[i] / 1e3);
        if (f) fclose(f);
    }
    printf("{\"frames\": %llu, \"bytes\": %llu, \"others\": %llu, \"lost\": %llu, \"reordered\": %llu, "
           "\"disconnected\": %d, \"cpu\": %.4f, \"wall\": %.4f, \"samples\": %zu",
           (unsigned long long)frames, (unsigned long long)nbytes, (unsigned long long)others,
           (unsigned long long)gaps, (unsigned long long)reorders, closed, cpu, wall, nsamples);
    static const double qs[] = {50, 90, 99, 99.9};
    for (int q = 0; q < 4 && nsamples; q++) {
        size_t k = (size_t)(qs[q] / 100 * nsamples);
        printf(", \"p%g\": %.1f", qs[q], samples[k < nsamples ? k : nsamples - 1] / 1e3);
    }
    printf("}\n");
    fflush(stdout);
}

static void command(const char *line) {
    if (!strncmp(line, "start", 5)) {
        for (int i = 0; i < nconns; i++) if (conns[i].state == OPEN) subscribe(&conns[i]);
        printf("started\n");
    } else if (!strncmp(line, "reset", 5)) {
        frames = nbytes = others = gaps = reorders = 0;
        nsamples = 0;
        cpu_at_reset = cpu_seconds();
        wall_at_reset = now_ns(CLOCK_MONOTONIC) / 1e9;
        printf("reset\n");
    } else if (!strncmp(line, "report", 6)) {
        report();
        return;
    } else if (!strncmp(line, "close", 5)) {
        for (int i = 0; i < nconns; i++) if (conns[i].fd >= 0) shutdown(conns[i].fd, SHUT_WR);
        /* Wait for each server to close its side, so that the next run inherits nothing. */
        int64_t until = now_ns(CLOCK_MONOTONIC) + 20000000000LL;
        struct epoll_event evs[1024];
        for (;;) {
            int open = 0;
            for (int i = 0; i < nconns; i++) open += conns[i].fd >= 0;
            if (!open || now_ns(CLOCK_MONOTONIC) > until) break;
            int k = epoll_wait(epfd, evs, 1024, 100);
            for (int e = 0; e < k; e++) {
                conn_t *c = evs[e].data.ptr;
                if (!c) continue;
                ssize_t n = read(c->fd, buf, sizeof buf);
                if (n == 0 || (n < 0 && errno != EAGAIN)) close_conn(c);
            }
        }
        printf("closed\n");
        fflush(stdout);
        exit(0);
    }
    fflush(stdout);
}

static void read_plan(const char *path, int first, int count) {
    FILE *f = fopen(path, "r");
    if (!f) { perror(path); exit(2); }
    int lines = 0;
    for (int ch; (ch = fgetc(f)) != EOF;) lines += ch == '\n';
    rewind(f);
    if (count > lines - first) count = lines - first > 0 ? lines - first : 0;
    conns = calloc(count ? count : 1, sizeof *conns);
    char *line = NULL;
    size_t cap = 0;
    int i = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0 && nconns < count) {
        if (i++ < first) continue;
        if (line[n - 1] == '\n') line[--n] = 0;
        char *tab = strchr(line, '\t');
        conn_t *c = &conns[nconns++];
        c->fd = -1;
        if (tab) *tab = 0;
        c->path = strdup(line);
        c->sub = strdup(tab ? tab + 1 : "");
        c->sublen = (uint32_t)strlen(c->sub);
    }
    free(line);
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: loadgen PORT PLAN [--first I] [--count N] [--concurrency C] [--source-block B] "
                        "[--sample-every K] [--samples-out FILE] [--subscribe-on-open] [--pause-us N]\n");
        return 2;
    }
    port = atoi(argv[1]);
    int first = 0, count = 1 << 30;
    for (int a = 3; a < argc; a++) {
        if (!strcmp(argv[a], "--first")) first = atoi(argv[++a]);
        else if (!strcmp(argv[a], "--count")) count = atoi(argv[++a]);
        else if (!strcmp(argv[a], "--concurrency")) concurrency = atoi(argv[++a]);
        else if (!strcmp(argv[a], "--source-block")) source_block = atoi(argv[++a]);
        else if (!strcmp(argv[a], "--sample-every")) sample_every = atoi(argv[++a]);
        else if (!strcmp(argv[a], "--samples-out")) samples_out = argv[++a];
        else if (!strcmp(argv[a], "--subscribe-on-open")) subscribe_on_open = 1;
        else if (!strcmp(argv[a], "--pause-us")) pause_us = atoi(argv[++a]);
        else { fprintf(stderr, "loadgen: unknown flag %s\n", argv[a]); return 2; }
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    read_plan(argv[2], first, count);
    samples = malloc(sizeof *samples * MAX_SAMPLES);
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);

    double t0 = now_ns(CLOCK_MONOTONIC) / 1e9, c0 = cpu_seconds();
    int announced = 0;
    char line[256];
    size_t llen = 0;
    struct epoll_event evs[1024];
    start_next();
    for (;;) {
        if (!announced && pending_done == nconns) {
            double wall = now_ns(CLOCK_MONOTONIC) / 1e9 - t0;
            printf("{\"connected\": %d, \"failed\": %d, \"seconds\": %.4f, \"cpu\": %.4f}\n", opened, failed, wall,
                   cpu_seconds() - c0);
            fflush(stdout);
            announced = 1;
        }
        int k = epoll_wait(epfd, evs, 1024, 100);
        for (int e = 0; e < k; e++) {
            conn_t *c = evs[e].data.ptr;
            if (c) { on_event(c, evs[e].events); continue; }
            ssize_t n = read(0, line + llen, sizeof line - 1 - llen);
            if (n == 0) return 0;                   /* the harness went away */
            if (n < 0) continue;
            llen += n;
            char *nl;
            while ((nl = memchr(line, '\n', llen))) {
                *nl = 0;
                command(line);
                llen -= nl + 1 - line;
                memmove(line, nl + 1, llen);
            }
            if (llen == sizeof line - 1) llen = 0;
        }
        start_next();
        /* At a flood to thousands of clients, reading each socket as soon as
         * a frame lands costs a read per frame; a pause lets each read take
         * many (the latency figures then include up to the pause). */
        if (pause_us && announced) {
            struct timespec ts = {0, pause_us * 1000L};
            nanosleep(&ts, NULL);
        }
    }
}
