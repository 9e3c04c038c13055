// SPDX-License-Identifier: MIT
/*
 * Cross-shard messages under pressure, as a plain program so ThreadSanitizer can watch it:
 * queues of 16 entries, so sends and calls meet -EAGAIN and wait for room
 * (keel_msg_wait_room), with and without an overflow allowance; slices moved and exported
 * to the receiver, and exported back home inside a call; the stop while all of that is in
 * flight. Then the signal paths: two runtimes with opts.signals stopped by one SIGTERM, and
 * a stop from a signal handler on a shard's thread. tsan_runtime's traffic stays inside the
 * default queues and ends before its stop, so none of this ran under TSan before. The
 * pressure runs with either way a shard finds its mail (an inbox scan, a has-mail bitmap).
 * Exits 0 when every check held, 1 otherwise.
 */
#include <errno.h>
#include <keel/keel.h>
#include <keel/ring.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAXS 3

/* core/internal.h: the most shards for which a runtime finds its mail by reading every
 * inbox; a runtime of more uses the has-mail bitmap. */
extern unsigned keel__mail_scan_max;

static int failures;
#define CHECK(c)                                                                                  \
	do {                                                                                      \
		if (!(c)) {                                                                       \
			fprintf(stderr, "tsan_msg: check failed at line %d: %s\n", __LINE__, #c); \
			__atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);                       \
		}                                                                                 \
	} while (0)

/* A message: @seq-th from shard @src, its slice's bytes derived from @seq. */
struct pm {
	unsigned src, seq;
	bool call;
	struct keel_slice s;
};

static struct per {
	unsigned next_seq[MAXS], recv_seq[MAXS]; /* shard only */
	bool blocked[MAXS], pumping;             /* shard only */
	_Atomic uint64_t accepted[MAXS], received[MAXS], calls, dones, waits, rooms;
} P[MAXS];
static _Atomic int stopping;
static _Atomic unsigned bad_logs;

static unsigned
me(void)
{
	return keel_shard_id(keel_this_shard());
}

static void
check_bytes(const struct pm *m)
{
	for (uint32_t i = 0; i < m->s.len; i++)
		if (m->s.data[i] != (uint8_t)(m->seq + i)) {
			CHECK(!"a byte arrived wrong");
			return;
		}
}

/* On the receiver: in order per sender, bytes intact. */
static void
arrived(struct pm *m)
{
	struct per *p = &P[me()];

	CHECK(m->seq == p->recv_seq[m->src]);
	p->recv_seq[m->src] = m->seq + 1;
	atomic_fetch_add(&p->received[m->src], 1);
	check_bytes(m);
}

static void
recv_fn(void *arg)
{
	struct pm *m = arg;

	arrived(m);
	keel_slice_put(&m->s);
	free(m);
}

static int
call_fn(void *arg)
{
	struct pm *m = arg;
	struct keel_slice back;

	arrived(m);
	CHECK(keel_slice_export(&m->s, m->src, &back) == 0); /* back home inside the call */
	keel_slice_put(&m->s);
	m->s = back;
	return 7;
}

static void
call_done(int status, void *arg)
{
	struct pm *m = arg;

	CHECK(status == 7);
	atomic_fetch_add(&P[me()].dones, 1);
	keel_slice_put(&m->s);
	free(m);
}

static void pump(void *arg);

static void
pump_later(struct per *p)
{
	if (!p->pumping && keel_defer(pump, NULL) == 0)
		p->pumping = true;
}

static void
room(int status, void *arg)
{
	struct per *p = &P[me()];

	atomic_fetch_add(&p->rooms, 1);
	p->blocked[(uintptr_t)arg] = false;
	if (status == 0)
		pump_later(p);
	else
		CHECK(status == -ESHUTDOWN);
}

/* One message to @d: a moved slice or an exported one, by keel_send or keel_call. Returns
 * keel_send/keel_call's result. */
static int
one(struct per *p, unsigned d)
{
	struct pm *m = malloc(sizeof(*m));
	size_t len = 1 + (p->next_seq[d] * 37) % 3000;
	struct keel_slice s;
	int r;

	if (!m)
		return -ENOMEM;
	if (keel_buf_alloc(keel_shard_alloc(), len, &s) < 0) {
		free(m);
		return -ENOMEM;
	}
	for (size_t i = 0; i < len; i++)
		s.data[i] = (uint8_t)(p->next_seq[d] + i);
	m->src = me();
	m->seq = p->next_seq[d];
	m->call = m->seq % 3 == 0;
	if (m->seq % 2) {
		CHECK(keel_slice_export(&s, d, &m->s) == 0);
		keel_slice_put(&s);
	} else {
		m->s = s;
		keel_slice_move(&m->s, d);
	}
	r = m->call ? keel_call(d, call_fn, m, call_done, m) : keel_send(d, recv_fn, m);
	if (r == 0) {
		p->next_seq[d]++;
		atomic_fetch_add(&p->accepted[d], 1);
		if (m->call)
			atomic_fetch_add(&p->calls, 1);
		return 0;
	}
	keel_slice_move(&m->s, m->src); /* refused: still ours */
	keel_slice_put(&m->s);
	free(m);
	return r;
}

static void
pump(void *arg)
{
	struct per *p = &P[me()];
	bool any = false;

	(void)arg;
	p->pumping = false;
	if (atomic_load(&stopping))
		return;
	for (unsigned k = 0; k < 8; k++) {
		for (unsigned d = 0; d < MAXS; d++) {
			int r;

			if (p->blocked[d])
				continue;
			r = one(p, d);
			if (r == 0) {
				any = true;
			} else if (r == -EAGAIN) {
				p->blocked[d] = true;
				CHECK(keel_msg_wait_room(d, room, (void *)(uintptr_t)d) == 0);
				atomic_fetch_add(&p->waits, 1);
			} else {
				CHECK(r == -ESHUTDOWN);
				return;
			}
		}
	}
	if (any)
		pump_later(p);
}

static void
on_stop(void *arg)
{
	(void)arg;
	atomic_store(&stopping, 1);
}

static void
msg_start(void *app)
{
	(void)app;
	keel_shard_on_stop(on_stop, NULL);
	pump_later(&P[me()]);
}

/* TSan makes loop passes slow: its stall lines are expected, nothing else at WARN. */
static void
sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module;
	(void)arg;
	/* Stalls come on a loaded machine; more shards than CPUs is this test's choice. */
	if (level <= KEEL_LOG_WARN && !strstr(msg, "stall: loop pass took") &&
	    !strstr(msg, "share a CPU")) {
		atomic_fetch_add(&bad_logs, 1);
		fprintf(stderr, "tsan_msg: shard %d: %s\n", shard, msg);
	}
}

static void
pressure(unsigned overflow, unsigned ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };
	struct keel_opts o;
	struct keel_runtime *rt;
	uint64_t waits = 0, calls = 0;

	memset(P, 0, sizeof(P));
	atomic_store(&stopping, 0);
	keel_opts_init(&o);
	o.shards = MAXS;
	o.signals = false;
	o.idle_poll_us = 0;
	o.mailbox_entries = 16;
	o.mailbox_overflow = overflow;
	o.memory = 64ull << 20;
	o.log_level = KEEL_LOG_WARN;
	CHECK(keel_runtime_create(&o, &rt) == 0);
	CHECK(keel_runtime_start(rt, msg_start, NULL) == 0);
	nanosleep(&ts, NULL);
	keel_runtime_stop(rt, 0); /* with messages, calls and room waits in flight */
	CHECK(keel_runtime_join(rt) == 0);
	for (unsigned s = 0; s < MAXS; s++) {
		for (unsigned d = 0; d < MAXS; d++)
			CHECK(atomic_load(&P[s].accepted[d]) == atomic_load(&P[d].received[s]));
		CHECK(atomic_load(&P[s].calls) == atomic_load(&P[s].dones));
		CHECK(atomic_load(&P[s].waits) == atomic_load(&P[s].rooms));
		waits += atomic_load(&P[s].waits);
		calls += atomic_load(&P[s].calls);
	}
	printf("tsan_msg: overflow %u: %llu calls, %llu waits for room\n", overflow,
	       (unsigned long long)calls, (unsigned long long)waits);
	CHECK(calls > 0);
	CHECK(waits > 0); /* the full queue was met: the path under test ran */
	keel_runtime_destroy(rt);
}

/* ---- signals ---- */

static _Atomic int started;

static void
count_start(void *app)
{
	(void)app;
	atomic_fetch_add(&started, 1);
}

static void
wait_started(int n)
{
	struct timespec ts = { 0, 1000000 };

	for (int i = 0; i < 120000 && atomic_load(&started) < n; i++)
		nanosleep(&ts, NULL);
	CHECK(atomic_load(&started) == n);
}

/* Two runtimes that read SIGINT/SIGTERM: one SIGTERM stops both. */
static void
two_runtimes(void)
{
	struct keel_opts o;
	struct keel_runtime *a, *b;
	sigset_t set, old;

	/* keel_runtime_start blocks them in this thread; the others block them as a host
	 * must (none here). */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, &old);
	atomic_store(&started, 0);
	keel_opts_init(&o);
	o.shards = 2;
	o.signals = true;
	o.idle_poll_us = 0;
	o.log_level = KEEL_LOG_WARN;
	CHECK(keel_runtime_create(&o, &a) == 0);
	CHECK(keel_runtime_create(&o, &b) == 0);
	CHECK(keel_runtime_start(a, count_start, NULL) == 0);
	CHECK(keel_runtime_start(b, count_start, NULL) == 0);
	wait_started(4);
	kill(getpid(), SIGTERM);
	CHECK(keel_runtime_join(b) == 0);
	CHECK(keel_runtime_join(a) == 0);
	keel_runtime_destroy(b);
	keel_runtime_destroy(a);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	printf("tsan_msg: one SIGTERM stopped two runtimes\n");
}

/* A host's handler stops the runtime on whichever thread the signal lands, a shard's. */
static struct keel_runtime *handler_rt;
static _Atomic pid_t shard_tid;

static void
on_usr1(int sig)
{
	(void)sig;
	keel_runtime_stop(handler_rt, 5);
}

static void
nop_done(struct keel_op *op, int res, uint32_t flags)
{
	(void)op;
	(void)res;
	(void)flags;
}

static struct keel_op nop_op = { .fn = nop_done };

/* Shard 0 takes SQEs pass after pass: the handler's stop lands amid them. */
static void
busy(void *arg)
{
	struct io_uring_sqe *sqe;

	(void)arg;
	for (int i = 0; i < 16 && (sqe = keel_sqe_get()); i++) {
		io_uring_prep_nop(sqe);
		keel_sqe_bind(sqe, &nop_op);
	}
	if (!atomic_load(&stopping))
		keel_defer(busy, NULL);
}

static void
busy_start(void *app)
{
	(void)app;
	keel_shard_on_stop(on_stop, NULL);
	if (keel_shard_id(keel_this_shard()) == 0) {
		atomic_store(&shard_tid, (pid_t)syscall(SYS_gettid));
		keel_defer(busy, NULL);
	}
	atomic_fetch_add(&started, 1);
}

static void
stop_in_a_handler(void)
{
	struct sigaction sa;
	struct keel_opts o;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	for (int round = 0; round < 20; round++) {
		struct timespec ts = { 0, (long)(round % 7) * 300000L };

		atomic_store(&started, 0);
		atomic_store(&stopping, 0);
		keel_opts_init(&o);
		o.shards = 2;
		o.signals = false;
		o.idle_poll_us = 0;
		o.log_level = KEEL_LOG_WARN;
		CHECK(keel_runtime_create(&o, &handler_rt) == 0);
		CHECK(keel_runtime_start(handler_rt, busy_start, NULL) == 0);
		wait_started(2);
		nanosleep(&ts, NULL);
		syscall(SYS_tgkill, getpid(), atomic_load(&shard_tid), SIGUSR1);
		CHECK(keel_runtime_join(handler_rt) == 5);
		keel_runtime_destroy(handler_rt);
	}
	signal(SIGUSR1, SIG_DFL);
	printf("tsan_msg: 20 stops from a handler on a shard's thread\n");
}

int
main(void)
{
	unsigned saved_scan_max = keel__mail_scan_max;

	keel_log_set_sink(sink, NULL);
	pressure(4, 1000);
	pressure(0, 500);
	/* Again with the has-mail bitmap, which a runtime of more shards than the scan takes
	 * uses (core/internal.h). */
	keel__mail_scan_max = 0;
	pressure(4, 500);
	keel__mail_scan_max = saved_scan_max;
	two_runtimes();
	stop_in_a_handler();
	CHECK(atomic_load(&bad_logs) == 0);
	printf("tsan_msg: %s\n", failures ? "FAILED" : "ok");
	return failures ? 1 : 0;
}
