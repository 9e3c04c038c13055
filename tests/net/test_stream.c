// SPDX-License-Identifier: MIT
/* Data integrity per feature combination, steering, bad input, shutdown with open conns. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../net/net_internal.h"
#include "helpers.h"

#define NCONN 16

/* Each connection's stream is a window onto one random pattern of PAT_LEN bytes (a prime,
 * so a buffer-sized chunk that is lost, repeated or reordered lands at an offset whose
 * bytes differ), starting at a per-connection offset. Sending needs no generation and
 * checking is a memcmp per chunk, so the client keeps up with the server and the test
 * measures keel, not the checker. */
#define PAT_LEN  1048573u
#define IO_CHUNK (256u << 10)
static uint8_t pattern[PAT_LEN + IO_CHUNK];

static void
pattern_init(void)
{
	uint64_t s = 0x9e3779b97f4a7c15ull;

	for (size_t k = 0; k + 8 <= sizeof(pattern); k += 8) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		memcpy(&pattern[k], &s, 8);
	}
	/* The tail repeats the head, so a chunk starting near the end reads straight on. */
	memcpy(&pattern[PAT_LEN], pattern, IO_CHUNK);
}

/* The sum of the bytes, eight at a time in 16-bit lanes folded every 128 words (before a
 * lane can overflow): both ends sum what they saw. */
static uint64_t
sum64(const uint8_t *p, size_t n)
{
	uint64_t s = 0, w;
	size_t k = 0;

	while (k + 8 <= n) {
		uint64_t acc = 0;
		for (int j = 0; j < 128 && k + 8 <= n; j++, k += 8) {
			memcpy(&w, p + k, 8);
			acc += (w & 0x00ff00ff00ff00ffull) + ((w >> 8) & 0x00ff00ff00ff00ffull);
		}
		for (int i = 0; i < 4; i++)
			s += (acc >> (16 * i)) & 0xffff;
	}
	for (; k < n; k++)
		s += p[k];
	return s;
}

/* Full duplex: write 16 streams while reading the echo back, comparing every byte with
 * what was sent and a sum of the bytes at both ends. */
/* The shards' network counters summed, once every connection has closed (so that the direct
 * descriptors' releases are counted). */
static void
integrity_stats(struct srv *s, struct keel_net_stats *sum)
{
	struct keel_net_stats st[2];

	WAIT_FOR(srv_net_stats(s, 0, &st[0]) == 0 && srv_net_stats(s, 1, &st[1]) == 0 &&
			 st[0].conns_open + st[1].conns_open == 0,
		 "the server's connections closed");
	memset(sum, 0, sizeof(*sum));
	sum->sends_zc = st[0].sends_zc + st[1].sends_zc;
	sum->fd_closes_ring = st[0].fd_closes_ring + st[1].fd_closes_ring;
	sum->recv_cqes = st[0].recv_cqes + st[1].recv_cqes;
	sum->recv_bufs = st[0].recv_bufs + st[1].recv_bufs;
	sum->recv_more = st[0].recv_more + st[1].recv_more;
	sum->recv_arms = st[0].recv_arms + st[1].recv_arms;
	sum->recv_arms_multishot = st[0].recv_arms_multishot + st[1].recv_arms_multishot;
}

/* The feature under test was in use, or not, as asked: the stream alone would pass with it
 * silently off (or on). */
static void
integrity_feature_used(struct srv *s, const char *feature, enum keel_policy p)
{
	struct keel_net_stats st;
	bool on = p != KEEL_POLICY_OFF;

	integrity_stats(s, &st);
	if (!feature || !strcmp(feature, "direct_fd"))
		cr_assert_eq(st.fd_closes_ring > 0, on,
			     "direct_fd %s: %llu releases through the ring", on ? "auto" : "off",
			     (unsigned long long)st.fd_closes_ring);
	if (feature && !strcmp(feature, "send_zc"))
		cr_assert_eq(st.sends_zc > 0, on, "send_zc %s: %llu zero-copy sends",
			     keel_policy_name(p), (unsigned long long)st.sends_zc);
	/* Every receive SQE was of the kind the test names (without this check a forced
	 * multishot passed these tests just as well); whether a completion keeps a multishot
	 * one armed is the kernel's call, so recv_more is asked of single-shot only. */
	if (!feature || !strcmp(feature, "multishot_recv")) {
		int used = rt_feature_used(s->rt, 0, KEEL_FEAT_MULTISHOT_RECV);

		cr_assert(recv_kind_was(&st, on) && used == on,
			  "multishot_recv %s: the shard %s it; %llu of %llu receive SQEs were "
			  "multishot, and %llu of %llu receive completions left one armed",
			  keel_policy_name(on ? KEEL_POLICY_AUTO : KEEL_POLICY_OFF),
			  used == 1 ? "used"
			  : used    ? "could not say"
				    : "did not use",
			  (unsigned long long)st.recv_arms_multishot,
			  (unsigned long long)st.recv_arms, (unsigned long long)st.recv_more,
			  (unsigned long long)st.recv_cqes);
	}
	/* Whole buffers: every slice starts at its buffer's start. */
	if (feature && !strcmp(feature, "pbuf_inc") && !on)
		cr_assert_eq(atomic_load(&s->inner_slices), 0,
			     "pbuf_inc off: %llu slices inside a buffer",
			     (unsigned long long)atomic_load(&s->inner_slices));
	if (feature && !strcmp(feature, "recv_bundle"))
		cr_assert_eq(st.recv_bufs, st.recv_cqes,
			     "recv_bundle off: %llu buffers in %llu receive completions",
			     (unsigned long long)st.recv_bufs, (unsigned long long)st.recv_cqes);
	/* Bundles in use where the kernel has them (IORING_FEAT_RECVSEND_BUNDLE, bit 14):
	 * some completion took more than one buffer. With bundles turned off in the auto
	 * mode, every test of this file passed. */
	if (!feature && (keel_caps_get()->ring_features & (1U << 14)))
		cr_assert_gt(st.recv_bufs, st.recv_cqes,
			     "recv_bundle auto: %llu buffers in %llu receive completions",
			     (unsigned long long)st.recv_bufs, (unsigned long long)st.recv_cqes);
}

static void
integrity_polling(const char *feature, enum keel_policy p, uint32_t zc_threshold,
		  unsigned idle_poll_us)
{
	/* 64 MiB per connection on 16 connections, once per feature combination; the
	 * sanitizer run of tools/test.sh (KEEL_TEST_SCALE=small) moves 1 MiB each. Shards
	 * that poll take the client's CPU on a 2-core machine: 4 MiB each then. */
	size_t total = test_small() ? (1u << 20) : idle_poll_us ? (4u << 20) : (64u << 20);
	struct keel_opts o = net_test_opts(2);
	struct keel_net_config nc;
	struct srv s;
	int fds[NCONN];
	size_t base[NCONN];
	uint64_t wsum[NCONN] = { 0 }, rsum[NCONN] = { 0 };
	size_t sent[NCONN] = { 0 }, rcvd[NCONN] = { 0 };
	static uint8_t buf[IO_CHUNK];
	unsigned done = 0;

	if (!pattern[0] && !pattern[1])
		pattern_init();
	o.idle_poll_us = idle_poll_us;
	keel_net_config_init(&nc);
	nc.zc_threshold = zc_threshold;
	if (feature) {
		char err[128];
		char spec[64];
		int argc = 3;
		snprintf(spec, sizeof(spec), "%s=%s", feature, keel_policy_name(p));
		char *argv[] = { "t", "--feature", spec, NULL };
		cr_assert_eq(keel_opts_parse(&o, &argc, argv, err, sizeof(err)), 0, "%s", err);
	}
	cr_assert_eq(srv_start(&s, &o, &nc, NULL), 0);
	/* The client's socket buffers stay autotuned: a fixed SO_RCVBUF let the send_zc=on
	 * run crawl (tiny copied ZC skbs shrank the client's window below the 64 KiB
	 * loopback MSS, so the server sent only on window probes). */
	for (int i = 0; i < NCONN; i++) {
		fds[i] = cli_connect(s.port);
		cr_assert_geq(fds[i], 0);
		fcntl(fds[i], F_SETFL, O_NONBLOCK);
		base[i] = (size_t)i * 65537u;
	}
	while (done < NCONN) {
		struct pollfd pf[NCONN];
		for (int i = 0; i < NCONN; i++) {
			pf[i].fd = rcvd[i] < total ? fds[i] : -1;
			pf[i].events = POLLIN | (sent[i] < total ? POLLOUT : 0);
		}
		int pr;
		while ((pr = poll(pf, NCONN, TEST_WAIT_MS)) < 0 && errno == EINTR)
			; /* a signal is not progress, nor the lack of it */
		cr_assert_gt(pr, 0, "no progress for %u ms (%u of %d connections done): %s",
			     TEST_WAIT_MS, done, NCONN, pr < 0 ? strerror(errno) : "timeout");
		for (int i = 0; i < NCONN; i++) {
			if (pf[i].revents & POLLOUT) {
				size_t n = total - sent[i] < IO_CHUNK ? total - sent[i] : IO_CHUNK;
				const uint8_t *src = &pattern[(base[i] + sent[i]) % PAT_LEN];
				ssize_t w = send(fds[i], src, n, MSG_NOSIGNAL);
				cr_assert(w >= 0 || errno == EAGAIN, "send: %s", strerror(errno));
				if (w > 0) {
					wsum[i] += sum64(src, (size_t)w);
					sent[i] += (size_t)w;
				}
			}
			if (pf[i].revents & (POLLIN | POLLHUP | POLLERR)) {
				size_t want =
					total - rcvd[i] < IO_CHUNK ? total - rcvd[i] : IO_CHUNK;
				ssize_t r = recv(fds[i], buf, want, 0);
				cr_assert(r > 0 || (r < 0 && errno == EAGAIN), "recv: %zd %s", r,
					  strerror(errno));
				if (r <= 0)
					continue;
				const uint8_t *e = &pattern[(base[i] + rcvd[i]) % PAT_LEN];
				if (memcmp(buf, e, (size_t)r)) {
					size_t k = 0;
					while (buf[k] == e[k])
						k++;
					cr_assert_fail("conn %d byte %zu differs", i, rcvd[i] + k);
				}
				rsum[i] += sum64(buf, (size_t)r);
				rcvd[i] += (size_t)r;
				if (rcvd[i] == total)
					done++;
			}
		}
	}
	for (int i = 0; i < NCONN; i++) {
		cr_assert_eq(wsum[i], rsum[i]);
		cr_assert_eq(sent[i], total);
		close(fds[i]);
	}
	integrity_feature_used(&s, feature, p);
	if (idle_poll_us) { /* the shards did poll: the stream alone passes without */
		struct keel_shard_stats st0, st1;

		cr_assert_eq(keel_runtime_stats(s.rt, 0, &st0), 0);
		cr_assert_eq(keel_runtime_stats(s.rt, 1, &st1), 0);
		cr_assert_gt(st0.idle_poll_ns + st1.idle_poll_ns, 0,
			     "--idle-poll-us %u: no polling", idle_poll_us);
	}
	cr_assert_eq(srv_stop(&s), 0);
}

static void
integrity(const char *feature, enum keel_policy p, uint32_t zc_threshold)
{
	integrity_polling(feature, p, zc_threshold, 0);
}

Test(net_stream, integrity_all_auto)
{
	integrity(NULL, KEEL_POLICY_AUTO, 32768);
}
Test(net_stream, integrity_multishot_recv_off)
{
	integrity("multishot_recv", KEEL_POLICY_OFF, 32768);
}
Test(net_stream, integrity_bundle_off)
{
	integrity("recv_bundle", KEEL_POLICY_OFF, 32768);
}
Test(net_stream, integrity_pbuf_inc_off)
{
	integrity("pbuf_inc", KEEL_POLICY_OFF, 32768);
}
Test(net_stream, integrity_direct_fd_off)
{
	integrity("direct_fd", KEEL_POLICY_OFF, 32768);
}
Test(net_stream, integrity_send_zc_on_all_sizes)
{
	integrity("send_zc", KEEL_POLICY_ON, 1);
}
Test(net_stream, integrity_send_zc_off)
{
	integrity("send_zc", KEEL_POLICY_OFF, 1);
}
/* Shards that poll: their passes find arrivals through IORING_SQ_TASKRUN (taskrun_flag
 * auto), or, with the flag off, by entering the kernel each pass. */
Test(net_stream, integrity_polling_shards)
{
	integrity_polling(NULL, KEEL_POLICY_AUTO, 32768, 50);
}
Test(net_stream, integrity_polling_shards_taskrun_flag_off)
{
	integrity_polling("taskrun_flag", KEEL_POLICY_OFF, 32768, 50);
}

/* A polling shard finds each arrival within its window: 10 round trips of 64 bytes on one
 * connection to one shard that polls for 2 s before it sleeps. With the flag, a pass sees
 * the arrival's task work through IORING_SQ_TASKRUN; without it, the pass enters the
 * kernel. The integrity tests above showed only that the shards spent time polling: with
 * either way of seeing an arrival broken, they passed (each poll then ran out its window
 * and slept, and the next arrival woke it). Here no poll may have run out its window
 * (polls_slept): each next request comes at once, well inside it. */
static void
polling_finds(const char *taskrun_flag)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_shard_stats st;
	struct srv s;
	char buf[64], got[64];
	int fd;

	o.idle_poll_us = 2000000;
	if (taskrun_flag) {
		char err[128], spec[64];
		int argc = 3;
		char *argv[] = { "t", "--feature", spec, NULL };

		snprintf(spec, sizeof(spec), "taskrun_flag=%s", taskrun_flag);
		cr_assert_eq(keel_opts_parse(&o, &argc, argv, err, sizeof(err)), 0, "%s", err);
	}
	cr_assert_eq(srv_start(&s, &o, NULL, NULL), 0);
	fd = cli_connect(s.port);
	cr_assert_geq(fd, 0);
	memset(buf, 'p', sizeof(buf));
	for (int i = 0; i < 10; i++) {
		size_t n = 0;

		buf[0] = (char)('0' + i);
		cr_assert_eq(send(fd, buf, sizeof(buf), 0), (ssize_t)sizeof(buf));
		while (n < sizeof(got)) {
			ssize_t r;

			wait_fd(fd, POLLIN, TEST_WAIT_MS, 0, "the echo of a round trip");
			r = recv(fd, got + n, sizeof(got) - n, 0);
			cr_assert_gt(r, 0);
			n += (size_t)r;
		}
		cr_assert_eq(memcmp(buf, got, sizeof(buf)), 0);
	}
	cr_assert_eq(keel_runtime_stats(s.rt, 0, &st), 0);
	cr_assert_eq(st.polls_slept, 0,
		     "%llu polls ran out their window and slept (found %llu): the arrivals "
		     "were not seen",
		     (unsigned long long)st.polls_slept, (unsigned long long)st.polls_found);
	close(fd);
	cr_assert_eq(srv_stop(&s), 0);
}

Test(net_stream, a_polling_shard_finds_each_arrival_in_its_window)
{
	polling_finds(NULL);
}
Test(net_stream, a_polling_shard_finds_each_arrival_in_its_window_taskrun_flag_off)
{
	polling_finds("off");
}

/* Shutdown with connections open: every connection is closed with -ESHUTDOWN and nothing
 * leaks (the ASan run checks). */
Test(net_stream, shutdown_with_open_connections)
{
	struct keel_opts o = net_test_opts(2);
	struct srv s;
	int fds[8];
	char b[100] = { 1 };

	cr_assert_eq(srv_start(&s, &o, NULL, NULL), 0);
	for (int i = 0; i < 8; i++) {
		fds[i] = cli_connect(s.port);
		cr_assert_geq(fds[i], 0);
		cr_assert_eq(cli_write_all(fds[i], b, sizeof(b)), 0);
		cr_assert_eq(cli_read_all(fds[i], b, sizeof(b)), 0);
	}
	cr_assert_eq(srv_stop(&s), 0);
	cr_assert_eq(atomic_load(&s.closes), 8);
	cr_assert_eq(atomic_load(&s.close_errors), 8);
	cr_assert_eq(atomic_load(&s.close_shutdown), 8, "not every status was -ESHUTDOWN");
	for (int i = 0; i < 8; i++) {
		cr_assert_eq(cli_recv(fds[i], b, 1), 0, "server side closed");
		close(fds[i]);
	}
}

Test(net_stream, bad_input_gives_clear_errors)
{
	struct keel_listen_opts lo = { .addr = "127.0.0.1.5" };
	struct keel_listener *l, *l2;
	int fd;

	cr_assert_eq(keel_listener_create(&lo, 1, &echo_ops, NULL, &l), -EINVAL);
	lo.addr = "127.0.0.1";
	cr_assert_eq(keel_listener_create(&lo, 1, &echo_ops, NULL, &l), 0);
	/* A port in use (a plain socket without SO_REUSEPORT holds it). */
	fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(fd, 1), 0);
	socklen_t al = sizeof(a);
	getsockname(fd, (struct sockaddr *)&a, &al);
	lo.port = ntohs(a.sin_port);
	cr_assert_eq(keel_listener_create(&lo, 1, &echo_ops, NULL, &l2), -EADDRINUSE);
	close(fd);
	keel_listener_destroy(l);
}

/* The RPS mask of lo's receive queue, or 0 when RPS is off (the SYN is then processed on
 * the CPU that sent it, in its softirq or its ksoftirqd, both per-CPU). */
static unsigned long
lo_rps_mask(void)
{
	char b[64] = { 0 };
	int fd = open("/sys/class/net/lo/queues/rx-0/rps_cpus", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	if (read(fd, b, sizeof(b) - 1) < 0)
		b[0] = 0;
	close(fd);
	return strtoul(b, NULL, 16);
}

/* CPU steering: every connection from a client pinned to CPU k is accepted by the shard
 * pinned to CPU k, and its SO_INCOMING_CPU, read after the handshake, agrees. Nothing here
 * waits for the shards to start: the program is attached before any socket listens. */
Test(net_stream, cpu_steering_accepts_on_the_client_cpu)
{
	struct keel_opts o = net_test_opts(2);
	struct srv s;
	cpu_set_t set, old;
	uint64_t want[2] = { 0, 0 };

	if (lo_rps_mask())
		cr_skip_test("RPS is on for lo: SYNs are processed on other CPUs");
	sched_getaffinity(0, sizeof(old), &old);
	if (CPU_COUNT(&old) < 2)
		cr_skip_test("needs two CPUs");
	cr_assert_eq(srv_start(&s, &o, NULL, NULL), 0);
	for (unsigned sh = 0; sh < 2; sh++) {
		int cpu = keel_runtime_shard_cpu(s.rt, sh);
		cr_assert_geq(cpu, 0, "shard %u is not pinned", sh);
		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		cr_assert_eq(sched_setaffinity(0, sizeof(set), &set), 0);
		for (int j = 0; j < 10; j++) {
			char b[8] = "ping";
			int fd = cli_connect(s.port);
			cr_assert_geq(fd, 0);
			cr_assert_eq(cli_write_all(fd, b, 4), 0);
			cr_assert_eq(cli_read_all(fd, b, 4), 0);
			close(fd);
		}
		want[sh] = 10;
	}
	sched_setaffinity(0, sizeof(old), &old);
	/* Read after the runtime ended: the SO_INCOMING_CPU reads (uring_cmd on direct
	 * descriptors) have all completed by then. */
	keel_runtime_stop(s.rt, 0);
	cr_assert_eq(keel_runtime_join(s.rt), 0);
	for (unsigned sh = 0; sh < 2; sh++) {
		struct keel_listener_stats st;
		cr_assert_eq(keel_listener_stats(s.l, sh, &st), 0);
		cr_assert_eq(st.accepted, want[sh], "shard %u (cpu %d) accepted %llu, want %llu",
			     sh, keel_runtime_shard_cpu(s.rt, sh), (unsigned long long)st.accepted,
			     (unsigned long long)want[sh]);
		cr_assert_eq(st.cpu_mismatch, 0, "shard %u: %llu connections arrived elsewhere", sh,
			     (unsigned long long)st.cpu_mismatch);
		cr_assert_eq(st.unverified, 0);
	}
	keel_runtime_destroy(s.rt);
	keel_listener_destroy(s.l);
}

static void
qsteer_start(void *arg)
{
	int r = keel_listener_start(arg);
	if (r < 0)
		keel_stop(r);
}

/* The instructions of keel's steering programs, run as the kernel's classic BPF would,
 * with @a the value SKF_AD_CPU or SKF_AD_QUEUE loads, @hash the one SKF_AD_RXHASH loads and
 * @rnd the one SKF_AD_RANDOM loads; the index returned. */
static uint32_t
cbpf_run_hr(const struct sock_filter *f, unsigned n, uint32_t a, uint32_t hash, uint32_t rnd)
{
	uint32_t A = 0;

	for (unsigned pc = 0; pc < n; pc++) {
		const struct sock_filter *i = &f[pc];

		switch (i->code) {
		case BPF_LD | BPF_W | BPF_ABS:
			cr_assert(i->k == (uint32_t)(SKF_AD_OFF + SKF_AD_QUEUE) ||
				  i->k == (uint32_t)(SKF_AD_OFF + SKF_AD_CPU) ||
				  i->k == (uint32_t)(SKF_AD_OFF + SKF_AD_RXHASH) ||
				  i->k == (uint32_t)(SKF_AD_OFF + SKF_AD_RANDOM));
			A = i->k == (uint32_t)(SKF_AD_OFF + SKF_AD_RXHASH)   ? hash
			    : i->k == (uint32_t)(SKF_AD_OFF + SKF_AD_RANDOM) ? rnd
									     : a;
			break;
		case BPF_LD | BPF_IMM:
			A = i->k;
			break;
		case BPF_JMP | BPF_JEQ | BPF_K:
			pc += A == i->k ? i->jt : i->jf;
			break;
		case BPF_ALU | BPF_SUB | BPF_K:
			A -= i->k;
			break;
		case BPF_ALU | BPF_MOD | BPF_K:
			A %= i->k;
			break;
		case BPF_RET | BPF_K:
			return i->k;
		case BPF_RET | BPF_A:
			return A;
		default:
			cr_assert_fail("instruction 0x%x not expected", i->code);
		}
	}
	cr_assert_fail("the program ran off its end");
	return 0;
}

static uint32_t
cbpf_run_h(const struct sock_filter *f, unsigned n, uint32_t a, uint32_t hash)
{
	return cbpf_run_hr(f, n, a, hash, 0);
}

static uint32_t
cbpf_run(const struct sock_filter *f, unsigned n, uint32_t a)
{
	return cbpf_run_h(f, n, a, 0);
}

/* SKF_AD_QUEUE loads skb->queue_mapping, which a driver sets to the rx queue + 1
 * (skb_record_rx_queue; 0 where none is recorded, as on lo). The program took the raw value
 * for the queue, so on a NIC every queue's connections went to the next queue's shard (lo,
 * with nothing recorded, hid it: the next test). Queues 0-3 mapped to shards 2, 0, 1, 2 of
 * three; queue 5 (not in the map) by its number; CPU steering is the CPU's index. */
Test(net_stream, steering_programs_read_the_rx_queue_as_the_kernel_records_it)
{
	static const unsigned qmap[4] = { 2, 0, 1, 2 };
	static const int cpus[3] = { 4, 9, 6 };
	struct sock_filter f[KEEL__STEER_PROG_MAX(4)];
	unsigned n = keel__steer_prog(KEEL_STEER_QUEUE, 3, NULL, qmap, 4, f);

	cr_assert_leq(n, sizeof(f) / sizeof(f[0]));
	cr_assert_eq(cbpf_run(f, n, 0), 2, "nothing recorded (lo): queue 0");
	for (uint32_t q = 0; q < 4; q++)
		cr_assert_eq(cbpf_run(f, n, q + 1), qmap[q], "rx queue %u", q);
	cr_assert_eq(cbpf_run(f, n, 5 + 1), 5 % 3, "rx queue 5, past the map");
	n = keel__steer_prog(KEEL_STEER_QUEUE, 3, NULL, NULL, 0, f);
	for (uint32_t q = 0; q < 3; q++)
		cr_assert_eq(cbpf_run(f, n, q + 1), q, "rx queue %u, no map", q);
	n = keel__steer_prog(KEEL_STEER_CPU, 3, cpus, NULL, 0, f);
	for (uint32_t i = 0; i < 3; i++)
		cr_assert_eq(cbpf_run(f, n, (uint32_t)cpus[i]), i, "cpu %d", cpus[i]);
	cr_assert_eq(cbpf_run(f, n, 7), 7 % 3, "a cpu of no shard");
}

/* Shards that share a CPU share its connections by the flow's hash: with shards 0, 2 and 3
 * on CPU 4 and shard 1 on CPU 9, CPU 4's flows go to 0, 2 or 3 by hash % 3 (shard 0 took
 * them all, and shards 2 and 3 accepted nothing, with no counter saying so). A CPU with
 * more shards than a jump can pass over is refused (0). */
Test(net_stream, shards_that_share_a_cpu_share_its_connections)
{
	static const int cpus[4] = { 4, 9, 4, 4 };
	static const uint32_t group[3] = { 0, 2, 3 };
	static int many[KEEL__STEER_CPU_GROUP_MAX + 1];
	static struct sock_filter big[KEEL__STEER_PROG_MAX(KEEL__STEER_CPU_GROUP_MAX + 1)];
	struct sock_filter f[KEEL__STEER_PROG_MAX(4)];
	unsigned n = keel__steer_prog(KEEL_STEER_CPU, 4, cpus, NULL, 0, f);
	bool got[4] = { false };

	cr_assert_gt(n, 0);
	cr_assert_leq(n, sizeof(f) / sizeof(f[0]));
	for (uint32_t h = 1; h < 30; h++) {
		uint32_t sh = cbpf_run_hr(f, n, 4, h, 1);

		cr_assert(sh == 0 || sh == 2 || sh == 3, "hash %u on cpu 4: shard %u", h, sh);
		cr_assert_eq(sh, group[h % 3], "hash %u", h);
		got[sh] = true;
		cr_assert_eq(cbpf_run_h(f, n, 9, h), 1, "cpu 9, hash %u", h);
	}
	cr_assert(got[0] && got[2] && got[3]);
	/* No hash (0: a NIC that gives none, RPS off): a random number picks, where shard 0
	 * took them all. */
	for (uint32_t r = 0; r < 30; r++)
		cr_assert_eq(cbpf_run_hr(f, n, 4, 0, r), group[r % 3],
			     "no hash, random %u on cpu 4", r);
	cr_assert_eq(cbpf_run_h(f, n, 7, 5), 7 % 4, "a cpu of no shard");
	/* The most a CPU may have, and one more. */
	n = keel__steer_prog(KEEL_STEER_CPU, KEEL__STEER_CPU_GROUP_MAX, many, NULL, 0, big);
	cr_assert_gt(n, 0);
	cr_assert_leq(n, KEEL__STEER_PROG_MAX(KEEL__STEER_CPU_GROUP_MAX));
	cr_assert_eq(cbpf_run_h(big, n, 0, 200), 200 % KEEL__STEER_CPU_GROUP_MAX);
	cr_assert_eq(
		keel__steer_prog(KEEL_STEER_CPU, KEEL__STEER_CPU_GROUP_MAX + 1, many, NULL, 0, big),
		0);
}

/* The same on the kernel's program: three shards on one CPU (--cpuset 0), clients pinned
 * to it; each shard accepts some of the 30 connections (the flow hash of loopback SYNs is
 * the socket's random txhash: the chance that one shard gets none is 3 * (2/3)^30, below
 * 1e-5). */
Test(net_stream, shards_on_one_cpu_all_accept)
{
	struct keel_opts o = net_test_opts(3);
	char err[128];
	cpu_set_t set, old;
	struct srv s;

	if (lo_rps_mask())
		cr_skip_test("RPS is on for lo: SYNs are processed on other CPUs");
	cr_assert_eq(keel_cpulist_parse("0", &o.cpuset, err, sizeof(err)), 0, "%s", err);
	o.cpuset_given = true;
	cr_assert_eq(srv_start(&s, &o, NULL, NULL), 0);
	for (unsigned sh = 0; sh < 3; sh++)
		cr_assert_eq(keel_runtime_shard_cpu(s.rt, sh), 0, "shard %u", sh);
	sched_getaffinity(0, sizeof(old), &old);
	CPU_ZERO(&set);
	CPU_SET(0, &set);
	cr_assert_eq(sched_setaffinity(0, sizeof(set), &set), 0);
	for (int j = 0; j < 30; j++) {
		char b[8] = "ping";
		int fd = cli_connect(s.port);
		cr_assert_geq(fd, 0);
		cr_assert_eq(cli_write_all(fd, b, 4), 0);
		cr_assert_eq(cli_read_all(fd, b, 4), 0);
		close(fd);
	}
	sched_setaffinity(0, sizeof(old), &old);
	keel_runtime_stop(s.rt, 0);
	cr_assert_eq(keel_runtime_join(s.rt), 0);
	for (unsigned sh = 0; sh < 3; sh++) {
		struct keel_listener_stats st;

		cr_assert_eq(keel_listener_stats(s.l, sh, &st), 0);
		cr_assert_gt(st.accepted, 0, "shard %u of 3 on CPU 0 accepted nothing", sh);
		cr_assert_eq(st.cpu_mismatch, 0);
	}
	keel_runtime_destroy(s.rt);
	keel_listener_destroy(s.l);
}

/* A port another program listens on is refused (-EADDRINUSE, naming the way out), whatever
 * the steering: the listener's sockets set SO_REUSEPORT, so another socket of the same user
 * that sets it too was joined without an error, and the kernel split the connections
 * between the two programs (hash steering; CPU and queue steering failed at listen with a
 * bare "Address already in use"). */
Test(net_stream, a_port_another_socket_listens_on_is_refused)
{
	static const enum keel_steer steers[] = { KEEL_STEER_HASH, KEEL_STEER_CPU };
	struct keel_opts o = net_test_opts(2);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	struct keel_runtime *rt;
	int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)), 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(fd, 8), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &al), 0);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	for (unsigned i = 0; i < 2; i++) {
		struct keel_listen_opts lo = {
			.addr = "127.0.0.1", .port = ntohs(a.sin_port), .steer = steers[i], .rt = rt
		};
		struct keel_listener *l = NULL;
		int r = keel_listener_create(&lo, 2, &echo_ops, NULL, &l);

		if (r == 0)
			keel_listener_destroy(l);
		cr_assert_eq(r, -EADDRINUSE, "steer %s: %d", keel_steer_name(steers[i]), r);
	}
	keel_runtime_destroy(rt);
	close(fd);
}

/* Queue steering: lo records no rx queue (queue_mapping 0), taken as its one queue, 0;
 * mapping it to shard 1 sends every connection there, from the first SYN (the program is
 * attached before the sockets listen). lo gives no NAPI id either: every accept is
 * unverified (it was counted nowhere, as if verified). */
Test(net_stream, queue_steering_follows_the_queue_map)
{
	struct keel_opts o = net_test_opts(2);
	struct keel_runtime *rt;
	struct keel_listener *l;
	static const unsigned qmap[1] = { 1 };
	struct keel_listen_opts lo = {
		.addr = "127.0.0.1", .steer = KEEL_STEER_QUEUE, .queue_shard = qmap, .nqueues = 1
	};
	struct keel_listener_stats st0, st1;
	static struct srv counters; /* echo_ops' app: its counters */

	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_listener_create(&lo, 2, &echo_ops, &counters, &l), 0);
	/* Connections made before the shards start wait in the chosen socket's backlog. */
	int early = cli_connect(keel_listener_port(l));
	cr_assert_geq(early, 0);
	cr_assert_eq(keel_runtime_start(rt, qsteer_start, l), 0);
	for (int j = 0; j < 6; j++) {
		char b[8] = "ping";
		int fd = j == 0 ? early : cli_connect(keel_listener_port(l));
		cr_assert_geq(fd, 0);
		cr_assert_eq(cli_write_all(fd, b, 4), 0);
		cr_assert_eq(cli_read_all(fd, b, 4), 0);
		close(fd);
	}
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	cr_assert_eq(keel_listener_stats(l, 0, &st0), 0);
	cr_assert_eq(keel_listener_stats(l, 1, &st1), 0);
	cr_assert_eq(st0.accepted, 0);
	cr_assert_eq(st1.accepted, 6);
	cr_assert_eq(st1.napi_mismatch, 0);
	/* lo has no NAPI id (0): nothing checked, so none verified. */
	cr_assert_eq(st1.unverified, 6, "%llu of 6 accepts unverified",
		     (unsigned long long)st1.unverified);
	cr_assert_eq(atomic_load(&counters.closes), 6);
	keel_runtime_destroy(rt);
	keel_listener_destroy(l);
}

/* A queue map naming a shard the listener does not have is refused at create (-EINVAL),
 * the log naming the queue, the shard and the count: it was taken modulo the count, so a
 * map naming shard 5 for a 4-shard listener steered that queue to shard 1, unsaid. */
static char qmap_log[512];

static void
qmap_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module;
	(void)shard;
	(void)arg;
	if (level == KEEL_LOG_ERROR && !qmap_log[0])
		snprintf(qmap_log, sizeof(qmap_log), "%s", msg);
}

Test(net_stream, a_queue_map_naming_a_shard_out_of_range_is_refused)
{
	static const unsigned qmap[3] = { 0, 5, 1 }, good[3] = { 3, 2, 0 };
	struct keel_listen_opts lo = {
		.addr = "127.0.0.1", .steer = KEEL_STEER_QUEUE, .queue_shard = qmap, .nqueues = 3
	};
	struct keel_listener *l = NULL;
	int r;

	qmap_log[0] = 0;
	keel_log_set_sink(qmap_sink, NULL);
	r = keel_listener_create(&lo, 4, &echo_ops, NULL, &l);
	keel_log_set_sink(NULL, NULL);
	if (r == 0)
		keel_listener_destroy(l);
	cr_assert_eq(r, -EINVAL, "a map naming shard 5 of 4: %d", r);
	cr_assert(strstr(qmap_log, "queue 1") && strstr(qmap_log, "shard 5") &&
			  strstr(qmap_log, "4 shards"),
		  "log: '%s'", qmap_log);
	/* Every entry below the count: made. */
	lo.queue_shard = good;
	cr_assert_eq(keel_listener_create(&lo, 4, &echo_ops, NULL, &l), 0);
	keel_listener_destroy(l);
}
