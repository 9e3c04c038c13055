// SPDX-License-Identifier: MIT
/*
 * A fixed workload of shard wake-ups, for instruction counts (valgrind --tool=callgrind)
 * and system-call counts (strace -c -f) of the loop's sleep and wake-up path; see
 * tools/bench/wakeloop.sh and docs/performance.md ("The wake-up path").
 *
 *   wakeloop timer ROUNDS     one shard; a timer wakes it, the callback queues one NOP that
 *                             posts nothing, the shard sleeps again (ROUNDS wake-ups)
 *   wakeloop pingpong ROUNDS  two shards asleep between rounds: shard 0's timer sends a
 *                             keel_call to shard 1, whose reply re-arms the timer
 *
 * Prints the loop's counters per round. The work done is fixed by ROUNDS; how often the
 * shards find each other awake still depends on scheduling, so pingpong's counters vary a
 * little between runs (timer's do not).
 */
#include <errno.h>
#include <keel/keel.h>
#include <keel/ring.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GAP_US 200

static unsigned rounds, done;
static struct keel_timer *timer;

static void
nop_tick(struct keel_timer *t, void *arg)
{
	struct io_uring_sqe *sqe;

	if (done++ == rounds) {
		keel_timer_destroy(t);
		keel_stop(0);
		return;
	}
	sqe = keel_sqe_get();
	if (!sqe) {
		keel_stop(-EBUSY);
		return;
	}
	io_uring_prep_nop(sqe);
	io_uring_sqe_set_data(sqe, NULL);
	sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
	keel_timer_start(t, KEEL_US(GAP_US), 0);
}

static int
pong(void *arg)
{
	return 0;
}

static void
ponged(int status, void *arg)
{
	if (++done == rounds) {
		keel_timer_destroy(timer);
		keel_stop(0);
		return;
	}
	keel_timer_start(timer, KEEL_US(GAP_US), 0);
}

static void
ping_tick(struct keel_timer *t, void *arg)
{
	int r = keel_call(1, pong, NULL, ponged, NULL);

	if (r < 0)
		keel_stop(r);
}

static void
start(void *app)
{
	bool pingpong = app != NULL;
	int r;

	if (keel_shard_id(keel_this_shard()) != 0)
		return;
	r = keel_timer_create(pingpong ? ping_tick : nop_tick, NULL, &timer);
	if (r == 0)
		r = keel_timer_start(timer, KEEL_US(GAP_US), 0);
	if (r < 0)
		keel_stop(r);
}

int
main(int argc, char **argv)
{
	struct keel_opts o;
	struct keel_runtime *rt;
	bool pingpong;
	int r;

	if (argc != 3 || (strcmp(argv[1], "timer") && strcmp(argv[1], "pingpong")) ||
	    !(rounds = (unsigned)strtoul(argv[2], NULL, 10))) {
		fprintf(stderr, "usage: wakeloop timer|pingpong ROUNDS\n");
		return 2;
	}
	pingpong = !strcmp(argv[1], "pingpong");
	keel_opts_init(&o);
	o.shards = pingpong ? 2 : 1;
	o.idle_poll_us = 0;
	o.signals = false;
	o.log_level = KEEL_LOG_WARN;
	r = keel_runtime_create(&o, &rt);
	if (r == 0)
		r = keel_runtime_start(rt, start, pingpong ? (void *)1 : NULL);
	if (r == 0)
		r = keel_runtime_join(rt);
	if (r < 0) {
		fprintf(stderr, "wakeloop: %s\n", strerror(-r));
		return 1;
	}
	for (unsigned i = 0; i < o.shards; i++) {
		struct keel_shard_stats st;

		keel_runtime_stats(rt, i, &st);
		printf("shard %u: %u rounds: %.2f passes, %.2f enters, %.2f sleeps per round\n", i,
		       rounds, (double)st.passes / rounds, (double)st.enters / rounds,
		       (double)st.sleeps / rounds);
	}
	keel_runtime_destroy(rt);
	return 0;
}
