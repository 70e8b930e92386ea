/* delayline: hold every packet of one NFQUEUE queue for a fixed time, then accept it.
 *
 * Why: this kernel has htb but no sch_netem (nor sch_fq for BPF departure times), so the
 * lab adds link latency here. The lab runs it inside its bridge namespace only, behind
 *     iptables -A FORWARD -j NFQUEUE --queue-num Q
 * with br_netfilter passing bridged IPv4 frames through that chain. Each packet crosses
 * the bridge once per direction, so a delay D gives a round-trip time of 2 D.
 *
 * The delay is the same for every packet, so the packets fall due in arrival order: a
 * FIFO ring of (packet id, due time) is the whole scheduler, and one batch verdict
 * ("accept every id <= X") releases all that are due. Packets are not copied to user
 * space (COPY_META) and GSO packets stay whole (F_GSO), so the cost per packet is small.
 *
 * What costs CPU is waking up (a context switch and a timer per wake on a virtual machine:
 * measured 2/5 of this program's CPU at N=16, when it woke for every packet). So:
 * - the kernel stamps each packet when it reaches the bridge (a socket with SO_TIMESTAMP
 *   turns on receive timestamps; NFQA_TIMESTAMP carries them), and while packets are held
 *   we sleep on the timer alone and read the new ones when we wake: their arrival times do
 *   not depend on when we read them. Without kernel stamps (the first packet says), we
 *   fall back to waking on every arrival and stamping it with the time we read it.
 * - we wake when the oldest held packet is due, and release with it every packet due
 *   within the next SLACK_NS (one batch verdict): at most ~1/SLACK_NS wakes a second, and
 *   a packet goes at most SLACK_NS early (2 % of 10 ms; a lone packet, such as the RTT
 *   check's, goes on time).
 * - messages are read with recvmmsg, many per system call.
 *
 * Usage: delayline QUEUE DELAY_US
 * stdout: one JSON line {"event": "ready", ...} once bound, {"event": "stopped", ...} at
 * exit (SIGTERM/SIGINT). Exit codes: 0 stopped by a signal, 1 setup failed (why on stderr).
 * Build: gcc -O2 -o delayline delayline.c -lnetfilter_queue
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

#define RING 65536u /* packets held at once; also the kernel queue's length */

struct held {
    uint32_t id;
    int64_t due_ns;
};

static struct held ring[RING];
static uint32_t head, count;
static int64_t delay_ns;
/* How late a timed wake-up runs (moving average): we ask to wake that much early. An idle
 * virtual CPU takes ~0.1 ms to wake, which would otherwise add to every packet's delay. */
static int64_t late_ns;
#define LATE_MAX_NS 300000
/* Release every packet due within this much of now at each wake (see the top comment). */
#define SLACK_NS 200000
/* Kernel stamps: 1 in use, 0 not known yet, -1 missing (fall back to read times). */
static int stamps;
/* CLOCK_REALTIME - CLOCK_MONOTONIC, ns: kernel stamps are wall-clock times. */
static int64_t real_off_ns;
static uint64_t n_packets, n_dropped, max_held, n_wakes, n_batches;
static volatile sig_atomic_t stop;

static int64_t clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa,
                     void *data) {
    (void)msg;
    int64_t arrived = *(const int64_t *)data; /* when we read it */
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (ph == NULL)
        return 0;
    struct timeval tv;
    if (stamps >= 0 && nfq_get_timestamp(nfa, &tv) == 0 && tv.tv_sec > 0) {
        int64_t at = (int64_t)tv.tv_sec * 1000000000 + (int64_t)tv.tv_usec * 1000 - real_off_ns;
        stamps = 1;
        if (at < arrived) /* never later than we read it; a clock step cannot hold it longer */
            arrived = at;
    } else {
        stamps = -1; /* one packet without a stamp: read times from now on */
    }
    uint32_t id = ntohl(ph->packet_id);
    if (count == RING) { /* a full line behaves like a full router buffer: drop */
        nfq_set_verdict(qh, id, NF_DROP, 0, NULL);
        n_dropped++;
        return 0;
    }
    struct held *slot = &ring[(head + count) % RING];
    slot->id = id;
    slot->due_ns = arrived + delay_ns;
    count++;
    n_packets++;
    if (count > max_held)
        max_held = count;
    return 0;
}

/* Accept every packet that is due, or will be by the time we would next wake up (one batch
 * verdict); return ns until the next is due, or -1 when the line is empty. */
static int64_t release(struct nfq_q_handle *qh) {
    int64_t now = now_ns();
    uint32_t last = 0, n = 0;
    while (count > 0 && ring[head].due_ns <= now + SLACK_NS) {
        last = ring[head].id;
        head = (head + 1) % RING;
        count--;
        n++;
    }
    if (n > 0) {
        n_batches++;
        if (nfq_set_verdict_batch(qh, last, NF_ACCEPT) < 0)
            fprintf(stderr, "delayline: verdict failed: %s\n", strerror(errno));
    }
    return count > 0 ? ring[head].due_ns - now : -1;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: delayline QUEUE DELAY_US\n");
        return 1;
    }
    unsigned queue = (unsigned)strtoul(argv[1], NULL, 10);
    delay_ns = (int64_t)strtoll(argv[2], NULL, 10) * 1000;
    if (delay_ns < 0 || queue > 65535) {
        fprintf(stderr, "delayline: bad queue %s or delay %s us\n", argv[1], argv[2]);
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    /* Real-time priority, when allowed: on a busy 2-core machine a normal process can wake
     * late by milliseconds, which would show up as latency jitter. It sleeps in ppoll almost
     * all the time, so it takes little CPU. */
    struct sched_param sp = {.sched_priority = 10};
    int realtime = sched_setscheduler(0, SCHED_FIFO, &sp) == 0;

    struct nfq_handle *h = nfq_open();
    if (h == NULL) {
        fprintf(stderr, "delayline: nfq_open failed: %s (needs CAP_NET_ADMIN and "
                        "nfnetlink_queue)\n", strerror(errno));
        return 1;
    }
    /* Any socket asking for receive timestamps makes the kernel stamp every packet as it
     * arrives (netdev_tstamp_prequeue); kept open while we run. */
    int tsock = socket(AF_INET, SOCK_DGRAM, 0), on = 1;
    if (tsock < 0 || setsockopt(tsock, SOL_SOCKET, SO_TIMESTAMP, &on, sizeof on) < 0)
        stamps = -1;
    int64_t arrived = 0;
    struct nfq_q_handle *qh = nfq_create_queue(h, (uint16_t)queue, &on_packet, &arrived);
    if (qh == NULL) {
        fprintf(stderr, "delayline: cannot bind queue %u: %s\n", queue, strerror(errno));
        nfq_close(h);
        return 1;
    }
    if (nfq_set_mode(qh, NFQNL_COPY_META, 0) < 0) {
        fprintf(stderr, "delayline: cannot set copy mode: %s\n", strerror(errno));
        return 1;
    }
    nfq_set_queue_maxlen(qh, RING);
    /* Keep GSO packets whole; never let the kernel bypass us when the queue is full. */
    nfq_set_queue_flags(qh, NFQA_CFG_F_GSO, NFQA_CFG_F_GSO);
    int fd = nfq_fd(h);
    int rcvbuf = 16 * 1024 * 1024, one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof one);

    printf("{\"event\": \"ready\", \"queue\": %u, \"delay_us\": %lld, \"realtime\": %s}\n",
           queue, (long long)(delay_ns / 1000), realtime ? "true" : "false");
    fflush(stdout);

    enum { BATCH = 64, MSG = 8192 };
    static char bufs[BATCH][MSG];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    while (!stop) {
        int64_t wait = release(qh);
        /* With kernel stamps and packets held, the timer alone wakes us (new packets wait
         * in the socket, stamped); otherwise an arrival wakes us too. */
        int timer_only = wait >= 0 && stamps == 1;
        struct pollfd pfd = {.fd = fd, .events = timer_only ? 0 : POLLIN};
        struct timespec ts, *tsp = NULL;
        int64_t wake_at = 0;
        if (wait >= 0) {
            wait = wait > late_ns ? wait - late_ns : 0;
            wake_at = now_ns() + wait;
            ts.tv_sec = wait / 1000000000;
            ts.tv_nsec = wait % 1000000000;
            tsp = &ts;
        }
        int r = ppoll(&pfd, 1, tsp, NULL);
        n_wakes++;
        if (r < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "delayline: poll failed: %s\n", strerror(errno));
            break;
        }
        if (r == 0 && tsp != NULL) { /* a timed wake-up: learn how late it ran */
            int64_t late = now_ns() - wake_at;
            late = late < 0 ? 0 : late > LATE_MAX_NS ? LATE_MAX_NS : late;
            late_ns += (late - late_ns) / 8;
        }
        if (r == 0 && !timer_only)
            continue;
        /* Drain every message waiting, many per call; each is stamped by the kernel or,
         * failing that, with the time we read it. */
        real_off_ns = clock_ns(CLOCK_REALTIME) - now_ns();
        for (;;) {
            for (int i = 0; i < BATCH; i++) {
                iov[i] = (struct iovec){.iov_base = bufs[i], .iov_len = MSG};
                msgs[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &iov[i], .msg_iovlen = 1}};
            }
            int got = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
            if (got < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ENOBUFS)
                    fprintf(stderr, "delayline: recv failed: %s\n", strerror(errno));
                break;
            }
            arrived = now_ns();
            for (int i = 0; i < got; i++)
                nfq_handle_packet(h, bufs[i], (int)msgs[i].msg_len);
            if (got < BATCH)
                break;
        }
    }
    /* Let everything still held go at once: nothing may stay stuck in the kernel. */
    if (count > 0)
        nfq_set_verdict_batch(qh, ring[(head + count - 1) % RING].id, NF_ACCEPT);
    printf("{\"event\": \"stopped\", \"packets\": %llu, \"dropped\": %llu, \"max_held\": %llu, "
           "\"wakes\": %llu, \"batches\": %llu, \"kernel_stamps\": %s}\n",
           (unsigned long long)n_packets, (unsigned long long)n_dropped,
           (unsigned long long)max_held, (unsigned long long)n_wakes,
           (unsigned long long)n_batches, stamps == 1 ? "true" : "false");
    fflush(stdout);
    nfq_destroy_queue(qh);
    nfq_close(h);
    return 0;
}
