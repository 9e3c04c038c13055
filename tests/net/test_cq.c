// SPDX-License-Identifier: MIT
/* A completion queue far smaller than the completions of one pass: the kernel holds the
 * excess in its overflow list (IORING_FEAT_NODROP), multishot receives end and must be
 * re-armed, and no byte may be lost. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

#define MSG_LEN 64

/* The log lines that name the fix for an overflowed CQ (sinks run on shard threads). */
static _Atomic unsigned ovf_lines;

static void
cq_log_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)arg;
	(void)shard;
	if (level == KEEL_LOG_WARN && !strcmp(module, "core") && strstr(msg, "overflowed") &&
	    strstr(msg, "raise --cq-entries"))
		atomic_fetch_add(&ovf_lines, 1);
	else
		fprintf(stderr, "[%s] %s\n", module, msg);
}

struct cq_test {
	struct keel_runtime *rt;
	struct keel_listener *l;
	_Atomic unsigned opens, closes, close_errors;
	_Atomic unsigned cq_size; /* the CQ the shard's ring got */
	struct shard_hold hold;   /* the shard waits until the clients have written */
};

static void
cq_open(struct keel_conn *c)
{
	struct cq_test *t = keel_conn_app(c);

	atomic_fetch_add(&t->opens, 1);
}

static void
cq_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (keel_conn_send(c, &s[i]) < 0)
			keel_slice_put(&s[i]);
}

static void
cq_close(struct keel_conn *c, int status)
{
	struct cq_test *t = keel_conn_app(c);

	atomic_fetch_add(&t->closes, 1);
	if (status < 0)
		atomic_fetch_add(&t->close_errors, 1);
}

static const struct keel_conn_ops cq_ops = { .on_open = cq_open,
					     .on_data = cq_data,
					     .on_close = cq_close };

static void
cq_start(void *arg)
{
	struct cq_test *t = arg;
	int r = keel_listener_start(t->l);

	atomic_store(&t->cq_size, keel_shard_ring_get()->cq.ring_entries);
	if (r < 0)
		keel_stop(r);
}

static void
stats_fn(struct keel_xreq *req)
{
	keel_xreq_complete(req, keel_net_stats(keel_this_shard(), req->arg));
}

static void
fill(char *p, unsigned conn, unsigned round)
{
	for (unsigned k = 0; k < MSG_LEN; k++)
		p[k] = (char)(conn * 7 + round * 13 + k);
}

static void
cq_run(const char *feature)
{
	unsigned nconn = test_small() ? 500 : 2000;
	struct keel_opts o = net_test_opts(1);
	struct keel_net_config nc;
	struct keel_listen_opts lo = { .addr = "127.0.0.1" };
	struct cq_test *t = calloc(1, sizeof(*t));
	struct keel_shard_stats st;
	struct rlimit rl;
	int *fds = calloc(nconn, sizeof(*fds));
	char out[MSG_LEN], in[MSG_LEN];

	cr_assert(t && fds);
	/* Client sockets here, and the server's too when direct descriptors are off. */
	getrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < 2 * nconn + 64) {
		rl.rlim_cur = rl.rlim_max < 2 * nconn + 64 ? rl.rlim_max : 2 * nconn + 64;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur < 2 * nconn + 64)
		cr_skip_test("RLIMIT_NOFILE %llu is below %u: raise ulimit -n",
			     (unsigned long long)rl.rlim_cur, 2 * nconn + 64);
	shard_hold_init(&t->hold);
	atomic_store(&ovf_lines, 0);
	keel_log_set_sink(cq_log_sink, NULL);
	o.idle_poll_us = 0;
	o.ring_entries = 8;
	o.cq_entries = 16;
	if (feature)
		net_test_feature(&o, feature);
	keel_net_config_init(&nc);
	/* Enough receive buffers that the test is about the CQ, not buffer starvation. */
	nc.buf_size = 2048;
	nc.buf_count = 4096;
	cr_assert_eq(keel_net_config_set(&nc), 0);
	cr_assert_eq(keel_runtime_create(&o, &t->rt), 0);
	lo.rt = t->rt;
	cr_assert_eq(keel_listener_create(&lo, 1, &cq_ops, t, &t->l), 0);
	cr_assert_eq(keel_runtime_start(t->rt, cq_start, t), 0);
	for (unsigned i = 0; i < nconn; i++) {
		struct timeval tv = { .tv_sec = 30 };
		fds[i] = cli_connect(keel_listener_port(t->l));
		cr_assert_geq(fds[i], 0, "connection %u: %s", i, strerror(-fds[i]));
		setsockopt(fds[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	}
	/* Every connection accepted and its receive armed (armed in the pass that opened it,
	 * submitted before the shard takes the request below). */
	for (uint64_t deadline = test_now_ms() + 30000; atomic_load(&t->opens) < nconn;) {
		cr_assert_lt(test_now_ms(), deadline, "%u of %u connections opened in 30 s",
			     atomic_load(&t->opens), nconn);
		test_pause();
	}
	for (unsigned round = 0; round < 2; round++) {
		/* Round 0 proves no byte is lost; round 1 that every receive was re-armed. */
		/* Held: every receive completes in the shard's next system call, thousands
		 * of CQEs into a CQ of 16. */
		shard_hold(&t->hold, t->rt, 0);
		for (unsigned i = 0; i < nconn; i++) {
			fill(out, i, round);
			cr_assert_eq(cli_write_all(fds[i], out, MSG_LEN), 0);
		}
		shard_hold_release(&t->hold);
		for (unsigned i = 0; i < nconn; i++) {
			int r = cli_read_all(fds[i], in, MSG_LEN);
			cr_assert_eq(r, 0, "round %u, connection %u: no echo in 30 s (%s)", round,
				     i, strerror(-r));
			fill(out, i, round);
			cr_assert_eq(memcmp(in, out, MSG_LEN), 0,
				     "round %u, connection %u: differs", round, i);
		}
	}
	for (unsigned i = 0; i < nconn; i++)
		close(fds[i]);
	for (uint64_t deadline = test_now_ms() + 30000; atomic_load(&t->closes) < nconn;) {
		cr_assert_lt(test_now_ms(), deadline, "%u of %u connections closed in 30 s",
			     atomic_load(&t->closes), nconn);
		test_pause();
	}
	/* The shard's net counters, read on the shard once every connection closed. */
	struct keel_net_stats ns;
	struct keel_xqueue *q;
	struct keel_xreq sreq = { .fn = stats_fn, .arg = &ns }, *done;
	cr_assert_eq(keel_xqueue_create(&q), 0);
	sreq.queue = q;
	cr_assert_eq(keel_runtime_submit(t->rt, 0, &sreq), 0);
	cr_assert_eq(keel_xqueue_wait(q, &done, 1, KEEL_S(30)), 1,
		     "no stats from the shard in 30 s");
	keel_xqueue_destroy(q);
	keel_runtime_stop(t->rt, 0);
	cr_assert_eq(keel_runtime_join(t->rt), 0);
	cr_assert_eq(keel_runtime_stats(t->rt, 0, &st), 0);
	keel_runtime_destroy(t->rt);
	keel_listener_destroy(t->l);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(atomic_load(&t->cq_size), 16);
	cr_assert_eq(atomic_load(&t->closes), nconn);
	cr_assert_gt(st.cq_overflows, 0, "the CQ never overflowed: the path was not tested");
	/* Said once, naming the option to raise; the stats count every overflowed pass. */
	cr_assert_eq(atomic_load(&ovf_lines), 1,
		     "%u log lines say the CQ overflowed and name --cq-entries (want 1)",
		     atomic_load(&ovf_lines));
	/* Every receive buffer back in its ring: none lost with an overflowed CQE. */
	cr_assert_eq(ns.bufs_out, ns.bufs_kernel,
		     "%llu receive buffers out of their ring after every connection closed",
		     (unsigned long long)(ns.bufs_out - ns.bufs_kernel));
	cr_assert_eq(st.cq_dropped, 0, "the kernel dropped %llu completions",
		     (unsigned long long)st.cq_dropped);
	/* Multishot receives whose CQE did not fit ended and were re-armed (round 1 shows
	 * that every one was). */
	cr_assert_gt(ns.rearms, 0, "no receive ended: the overflow did not end multishots");
	cr_assert_eq(ns.recv_cqes, 2 * nconn, "%llu receive completions for %u messages",
		     (unsigned long long)ns.recv_cqes, 2 * nconn);
	shard_hold_fini(&t->hold);
	free(fds);
	free(t);
}

Test(net_cq, overflow_loses_no_data_and_rearms_every_multishot, .timeout = 300)
{
	cq_run(NULL);
}

/* Without DEFER_TASKRUN the kernel posts completions outside io_uring_enter too. */
Test(net_cq, overflow_without_defer_taskrun, .timeout = 300)
{
	cq_run("defer_taskrun=off");
}
