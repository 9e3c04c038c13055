// SPDX-License-Identifier: MIT
/*
 * keel-bench xshard: cross-shard messaging between shard 0 and shard 1.
 *
 * keel: one-way messages/s with a bounded window (the receiver acknowledges through a
 * shared counter every 64 messages, so the sender never overflows the queue); round trips
 * with keel_call while both shards poll; round trips with both shards asleep between
 * pings (--idle-poll-us 0 and a gap), so each ping and each reply is a MSG_RING wake-up.
 *
 * baseline: the same three exchanges between two threads pinned to the same CPUs, through
 * a lock-free single-producer single-consumer ring with an eventfd wake-up (the consumer
 * takes everything queued; the producer writes the eventfd only when the consumer said it
 * waits), whose producer writes up to 256 messages against a cached head and publishes
 * them with one store and one fence, as a shard publishes its slots once per loop pass.
 * Until the sixteenth session it was a mutex-protected queue, which made the polling
 * baseline contend on one lock (futex sleeps); until the thirty-seventh its producer
 * published every message: both weaker than keel's sender by construction.
 */
#include <errno.h>
#include <keel/keel.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

/* The receiver acknowledges every ACK_EVERY messages, or every half window where the
 * window (--mailbox-entries, 16 at least) is smaller: acknowledging less often than the
 * window fills would stall the sender for good (16 messages a run at 16 and 32 entries). */
#define ACK_EVERY   64
#define MAX_SAMPLES (4u << 20)
#define WARMUP      100

struct result {
	double msgs_per_sec;
	double rtt_p50_us, rtt_p99_us;
	double wake_rtt_p50_us, wake_rtt_p99_us;
	uint64_t rtt_samples, wake_samples;
};

/* A measurement's samples after its warm-up: at most MAX_SAMPLES kept, spread over the
 * whole window (a long run kept only its first 4 Mi, and the percentiles said nothing of
 * the rest). */
struct samples {
	struct bench_reservoir r;
	size_t seen;
};

static void
sample_add(struct samples *s, uint64_t ns)
{
	if (s->seen++ < WARMUP)
		return;
	bench_reservoir_add(&s->r, ns);
}

struct xs {
	uint64_t dur_ns;
	uint64_t gap_us;
	unsigned window, ack_every;
	int err;
	int cpu[2];

	/* shard 0 */
	_Alignas(64) uint64_t sent;
	bool oneway_done, rtt_done;
	uint64_t t_start, t_ping, t_phase_end;
	struct keel_timer *timer;
	struct samples rtt, wake;
	uint64_t oneway_count;
	uint64_t oneway_ns;

	/* shard 1 */
	_Alignas(64) uint64_t recv;
	uint64_t count_snapshot;
	_Alignas(64) _Atomic uint64_t acked;
};

/* ---- keel: one-way ---- */

static void rtt_begin(struct xs *x);

static void
oneway_recv(void *arg)
{
	struct xs *x = arg;
	if (++x->recv % x->ack_every == 0)
		atomic_store_explicit(&x->acked, x->recv, memory_order_release);
}

static void
oneway_pump(void *arg)
{
	struct xs *x = arg;
	uint64_t acked = atomic_load_explicit(&x->acked, memory_order_acquire);

	if (x->oneway_done)
		return;
	for (unsigned n = 0; n < 256 && x->sent - acked < x->window; n++) {
		if (keel_send(1, oneway_recv, x) < 0) {
			x->err = -ENOMEM;
			keel_stop(-ENOMEM);
			return;
		}
		x->sent++;
	}
	keel_defer(oneway_pump, x);
}

static int
oneway_snapshot(void *arg)
{
	struct xs *x = arg;
	x->count_snapshot = x->recv;
	return 0;
}

static void
oneway_counted(int status, void *arg)
{
	struct xs *x = arg;
	/* The call ran after every message sent before it (per-pair order), so the count is
	 * exact for the interval. */
	x->oneway_ns = bench_now_ns() - x->t_start;
	x->oneway_count = x->count_snapshot;
	rtt_begin(x);
}

static void
oneway_end(struct keel_timer *t, void *arg)
{
	struct xs *x = arg;
	x->oneway_done = true;
	keel_call(1, oneway_snapshot, x, oneway_counted, x);
}

/* ---- keel: round trips ---- */

static int
noop(void *arg)
{
	return 0;
}

static void ping(struct xs *x);

static void
pong(int status, void *arg)
{
	struct xs *x = arg;
	uint64_t now = bench_now_ns();

	sample_add(&x->rtt, now - x->t_ping);
	if (now < x->t_phase_end)
		ping(x);
	else
		keel_stop(0);
}

static void
ping(struct xs *x)
{
	x->t_ping = bench_now_ns();
	if (keel_call(1, noop, NULL, pong, x) < 0)
		keel_stop(-ENOMEM);
}

static void
rtt_begin(struct xs *x)
{
	x->t_phase_end = bench_now_ns() + x->dur_ns;
	ping(x);
}

static void
polling_start(void *app)
{
	struct xs *x = app;
	struct keel_shard *sh = keel_this_shard();

	if (keel_shard_id(sh) > 1)
		return;
	x->cpu[keel_shard_id(sh)] = keel_shard_cpu(sh);
	if (keel_shard_id(sh) != 0)
		return;
	if (keel_timer_create(oneway_end, x, &x->timer) < 0) {
		keel_stop(-ENOMEM);
		return;
	}
	x->t_start = bench_now_ns();
	keel_timer_start(x->timer, x->dur_ns, 0);
	keel_defer(oneway_pump, x);
}

/* ---- keel: round trips with both shards asleep ---- */

static void wake_ping(struct keel_timer *t, void *arg);

static void
wake_pong(int status, void *arg)
{
	struct xs *x = arg;
	uint64_t now = bench_now_ns();

	sample_add(&x->wake, now - x->t_ping);
	if (now < x->t_phase_end)
		keel_timer_start(x->timer, KEEL_US(x->gap_us), 0);
	else
		keel_stop(0);
}

static void
wake_ping(struct keel_timer *t, void *arg)
{
	struct xs *x = arg;
	x->t_ping = bench_now_ns();
	if (keel_call(1, noop, NULL, wake_pong, x) < 0)
		keel_stop(-ENOMEM);
}

static void
sleeping_start(void *app)
{
	struct xs *x = app;

	if (keel_shard_id(keel_this_shard()) != 0)
		return;
	if (keel_timer_create(wake_ping, x, &x->timer) < 0) {
		keel_stop(-ENOMEM);
		return;
	}
	x->t_phase_end = bench_now_ns() + x->dur_ns;
	keel_timer_start(x->timer, KEEL_US(x->gap_us), 0);
}

/* ---- baseline: a lock-free single-producer single-consumer ring + eventfd ---- */

/* A message as keel's carries one (struct msg, 32 bytes): a function the consumer calls
 * with an argument. */
struct item {
	void (*fn)(void *arg, uint64_t v); /* NULL: stop */
	void *arg;
	uint64_t v;
	uint64_t spare;
};

/* The strongest plain-threads design for one producer and one consumer: no lock, each side
 * writes only its own index; a consumer about to sleep says so (waiting), and the producer
 * writes the eventfd only then (the seq_cst fences on both sides order the flag against the
 * indices, so a wake-up is never lost; a stray one only makes a sleep return early). The
 * producer batches as keel's sender does: items are written against a cached head (the
 * consumer's line is read only when that shows no room) and published together, one tail
 * store and one fence for up to 256 (bq_put, then bq_publish); keel's shard writes its slots
 * and publishes once per loop pass. Until the thirty-seventh session it published every
 * item (a store, a fence and a read of the consumer's head each), which keel's one-way lead
 * came from. */
struct bq {
	_Alignas(64) _Atomic size_t tail; /* the producer's */
	size_t tail_local, head_cache;    /* the producer's own */
	_Alignas(64) _Atomic size_t head; /* the consumer's */
	_Alignas(64) _Atomic int waiting;
	struct item *buf;
	size_t cap; /* a power of two */
	int efd;
};

static int
bq_init(struct bq *q, unsigned window)
{
	memset(q, 0, sizeof(*q));
	/* Room for the whole one-way window and the stop item: the producer never waits. */
	q->cap = 64;
	while (q->cap < 2 * (size_t)window + 2)
		q->cap *= 2;
	q->buf = malloc(q->cap * sizeof(*q->buf));
	q->efd = eventfd(0, EFD_CLOEXEC);
	return q->buf && q->efd >= 0 ? 0 : -ENOMEM;
}

static void
bq_fini(struct bq *q)
{
	if (!q->cap)
		return; /* never initialised */
	free(q->buf);
	if (q->efd >= 0)
		close(q->efd);
}

/* Write one item, unpublished. */
static void
bq_put(struct bq *q, void (*fn)(void *, uint64_t), void *arg, uint64_t v)
{
	size_t t = q->tail_local;
	struct item *it;

	while (t - q->head_cache == q->cap) /* full by the cached head: read the real one */
		q->head_cache = atomic_load_explicit(&q->head, memory_order_acquire);
	it = &q->buf[t & (q->cap - 1)];
	it->fn = fn;
	it->arg = arg;
	it->v = v;
	q->tail_local = t + 1;
}

/* Publish what bq_put wrote: one tail store and one fence, and the eventfd if the consumer
 * said it waits. */
static void
bq_publish(struct bq *q)
{
	atomic_store_explicit(&q->tail, q->tail_local, memory_order_release);
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&q->waiting, memory_order_relaxed) &&
	    atomic_exchange_explicit(&q->waiting, 0, memory_order_relaxed)) {
		uint64_t one = 1;
		if (write(q->efd, &one, sizeof(one)) != sizeof(one))
			abort();
	}
}

static void
bq_push(struct bq *q, void (*fn)(void *, uint64_t), void *arg, uint64_t v)
{
	bq_put(q, fn, arg, v);
	bq_publish(q);
}

/* Take up to max items. An empty queue is polled for @spin_ns (UINT64_MAX: for ever, 0:
 * not at all), then waited for on the eventfd: the policy keel's shards follow with
 * --idle-poll-us. */
static size_t
bq_pop(struct bq *q, struct item *out, size_t max, uint64_t spin_ns)
{
	uint64_t spin_end = 0;

	for (;;) {
		size_t h = atomic_load_explicit(&q->head, memory_order_relaxed);
		size_t t = atomic_load_explicit(&q->tail, memory_order_acquire);
		size_t n = 0;
		uint64_t v;

		while (n < max && h + n != t) {
			out[n] = q->buf[(h + n) & (q->cap - 1)];
			n++;
		}
		if (n)
			atomic_store_explicit(&q->head, h + n, memory_order_release);
		if (n || spin_ns == UINT64_MAX)
			return n;
		if (spin_ns) {
			uint64_t now = bench_now_ns();
			if (!spin_end)
				spin_end = now + spin_ns;
			if (now < spin_end)
				continue;
		}
		atomic_store_explicit(&q->waiting, 1, memory_order_relaxed);
		atomic_thread_fence(memory_order_seq_cst);
		if (atomic_load_explicit(&q->tail, memory_order_acquire) != h) {
			atomic_store_explicit(&q->waiting, 0, memory_order_relaxed);
			continue;
		}
		if (read(q->efd, &v, sizeof(v)) != sizeof(v) && errno != EINTR)
			abort();
	}
}

struct base {
	struct bq q01, q10;
	int cpu[2];
	uint64_t dur_ns, gap_us;
	unsigned window, ack_every;
	_Alignas(64) _Atomic uint64_t acked;
	_Alignas(64) uint64_t recv;
	uint64_t t_end;
	int mode;         /* 0 one-way, 1 polling rtt, 2 sleeping rtt */
	uint64_t spin_ns; /* modes 0 and 1: each side polls this long before sleeping */
};

/* The messages' functions, called by the consumer as a shard calls keel_send's. */
static void
base_oneway_recv(void *arg, uint64_t v)
{
	struct base *b = arg;

	(void)v;
	if (++b->recv % b->ack_every == 0)
		atomic_store_explicit(&b->acked, b->recv, memory_order_release);
}

static void
base_pong(void *arg, uint64_t v)
{
	struct base *b = arg;

	bq_push(&b->q10, NULL, NULL, v);
}

static void *
base_consumer(void *p)
{
	struct base *b = p;
	struct item items[256];

	bench_pin(b->cpu[1]);
	for (;;) {
		/* One-way and polling round trips: poll as keel's shards do (--idle-poll-us),
		 * then sleep; sleeping round trips: sleep at once. */
		size_t n = bq_pop(&b->q01, items, 256, b->mode == 2 ? 0 : b->spin_ns);
		for (size_t i = 0; i < n; i++) {
			if (!items[i].fn) {
				b->t_end = bench_now_ns();
				return NULL;
			}
			items[i].fn(items[i].arg, items[i].v);
		}
	}
}

static int
run_baseline(struct base *b, int mode, struct samples *smp, uint64_t *count, uint64_t *ns)
{
	pthread_t th;
	uint64_t t0, end, sent = 0;
	struct item it;

	b->mode = mode;
	b->recv = 0;
	atomic_store(&b->acked, 0);
	if (pthread_create(&th, NULL, base_consumer, b))
		return -EAGAIN;
	bench_pin(b->cpu[0]);
	t0 = bench_now_ns();
	end = t0 + b->dur_ns;
	if (mode == 0) {
		while (bench_now_ns() < end) {
			uint64_t acked = atomic_load_explicit(&b->acked, memory_order_acquire);
			/* Up to 256 a pass, published together, as keel's pump and loop pass. */
			for (unsigned n = 0; n < 256 && sent - acked < b->window; n++) {
				bq_put(&b->q01, base_oneway_recv, b, sent);
				sent++;
			}
			bq_publish(&b->q01);
		}
	} else {
		while (bench_now_ns() < end) {
			uint64_t t = bench_now_ns();
			bq_push(&b->q01, base_pong, b, t);
			while (bq_pop(&b->q10, &it, 1, mode == 2 ? 0 : b->spin_ns) == 0)
				;
			/* Modes 1 and 2 pass samples; cppcheck follows mode 0's NULL. */
			// cppcheck-suppress ctunullpointer
			sample_add(smp, bench_now_ns() - t);
			if (mode == 2) {
				struct timespec gap = { 0, (long)(b->gap_us * 1000) };
				nanosleep(&gap, NULL);
			}
		}
	}
	bq_push(&b->q01, NULL, NULL, 0);
	pthread_join(th, NULL);
	if (count)
		*count = b->recv;
	if (ns)
		*ns = b->t_end - t0;
	return 0;
}

/* ---- driver ---- */

static void
summarise(struct result *r, struct samples *rtt, struct samples *wake, uint64_t count, uint64_t ns)
{
	r->msgs_per_sec = ns ? (double)count * 1e9 / (double)ns : 0;
	r->rtt_samples = rtt->r.n;
	r->wake_samples = wake->r.n;
	r->rtt_p50_us = (double)bench_percentile(rtt->r.v, rtt->r.n, 50) / 1000.0;
	r->rtt_p99_us = (double)bench_percentile(rtt->r.v, rtt->r.n, 99) / 1000.0;
	r->wake_rtt_p50_us = (double)bench_percentile(wake->r.v, wake->r.n, 50) / 1000.0;
	r->wake_rtt_p99_us = (double)bench_percentile(wake->r.v, wake->r.n, 99) / 1000.0;
}

static void
print_json_result(const char *indent, const struct result *r)
{
	printf("%s\"msgs_per_sec\": %.0f,\n", indent, r->msgs_per_sec);
	printf("%s\"rtt_p50_us\": %.3f,\n", indent, r->rtt_p50_us);
	printf("%s\"rtt_p99_us\": %.3f,\n", indent, r->rtt_p99_us);
	printf("%s\"rtt_samples\": %llu,\n", indent, (unsigned long long)r->rtt_samples);
	printf("%s\"wake_rtt_p50_us\": %.3f,\n", indent, r->wake_rtt_p50_us);
	printf("%s\"wake_rtt_p99_us\": %.3f,\n", indent, r->wake_rtt_p99_us);
	printf("%s\"wake_samples\": %llu", indent, (unsigned long long)r->wake_samples);
}

/* This thread's affinity mask, sized for the machine (a cpu_set_t is too small past 1,024
 * possible CPUs: the kernel refuses it with EINVAL). NULL when it cannot be read. */
static cpu_set_t *
affinity_save(size_t *size)
{
	for (unsigned n = CPU_SETSIZE; n <= (1u << 20); n *= 2) {
		cpu_set_t *m = CPU_ALLOC(n);

		if (!m)
			return NULL;
		*size = CPU_ALLOC_SIZE(n);
		if (sched_getaffinity(0, *size, m) == 0)
			return m;
		CPU_FREE(m);
		if (errno != EINVAL)
			return NULL;
	}
	return NULL;
}

static const char xshard_usage[] =
	"usage: keel-bench xshard [--seconds S] [--gap-us N] [--baseline-first] [--json]\n"
	"                [runtime options]\n"
	"  --seconds S   length of each of the three measurements (default 2)\n"
	"  --gap-us N    pause between sleeping round trips (default 1000)\n"
	"  --baseline-first  measure the baseline before keel (default after; xshard.sh\n"
	"                alternates)\n"
	"  --json        print JSON instead of a table\n\n";

int
bench_xshard(int argc, char **argv)
{
	struct keel_opts o;
	struct xs *x;
	struct base *b;
	struct result rk = { 0 }, rb = { 0 };
	struct samples brtt = { 0 }, bwake = { 0 };
	uint64_t bcount = 0, bns = 0;
	double seconds = 2;
	uint64_t gap_us = 1000;
	int status = 1;
	bool json = false, base_first = false;
	unsigned idle_poll_us;
	int r;

	keel_opts_init(&o);
	o.shards = 2;
	o.signals = false;
	o.log_level = KEEL_LOG_WARN;
	keel_opts_parse_or_exit(&o, &argc, argv, xshard_usage);
	if (o.idle_poll_adaptive) {
		fprintf(stderr,
			"keel-bench xshard: --idle-poll-adaptive has no counterpart in the "
			"baseline, whose sides poll --idle-poll-us and then sleep; drop it\n");
		return 2;
	}
	for (int i = 1; i < argc; i++) {
		const char *v;
		int m;
		if ((m = bench_opt(argc, argv, &i, "--seconds", &v)) != 0) {
			if (m < 0 || !bench_parse_double(v, 0, 3600, &seconds) || seconds <= 0) {
				fprintf(stderr,
					"keel-bench xshard: --seconds: expected 0 < S <= 3600\n");
				return 2;
			}
		} else if ((m = bench_opt(argc, argv, &i, "--gap-us", &v)) != 0) {
			uint64_t g;
			if (m < 0 || !bench_parse_u64(v, 0, 1000000, &g)) {
				fprintf(stderr,
					"keel-bench xshard: --gap-us: expected 0..1000000\n");
				return 2;
			}
			gap_us = g;
		} else if (!strcmp(argv[i], "--json")) {
			json = true;
		} else if (!strcmp(argv[i], "--baseline-first")) {
			base_first = true;
		} else {
			fprintf(stderr, "keel-bench xshard: unknown option '%s' (see --help)\n",
				argv[i]);
			return 2;
		}
	}
	if (o.shards < 2) {
		fprintf(stderr, "keel-bench xshard: --shards: needs at least 2 shards\n");
		return 2;
	}
	x = aligned_alloc(64, (sizeof(*x) + 63) & ~(size_t)63);
	b = aligned_alloc(64, (sizeof(*b) + 63) & ~(size_t)63);
	if (!x || !b) {
		fprintf(stderr, "keel-bench xshard: out of memory\n");
		free(x);
		free(b);
		return 1;
	}
	memset(x, 0, sizeof(*x));
	memset(b, 0, sizeof(*b));
	x->gap_us = gap_us;
	x->dur_ns = (uint64_t)(seconds * 1e9);
	x->window = o.mailbox_entries;
	x->ack_every = x->window / 2 < ACK_EVERY ? x->window / 2 : ACK_EVERY;
	if (!x->ack_every)
		x->ack_every = 1;
	x->rtt.r.v = malloc(MAX_SAMPLES * sizeof(uint64_t));
	x->wake.r.v = malloc(MAX_SAMPLES * sizeof(uint64_t));
	brtt.r.v = malloc(MAX_SAMPLES * sizeof(uint64_t));
	bwake.r.v = malloc(MAX_SAMPLES * sizeof(uint64_t));
	x->rtt.r.cap = x->wake.r.cap = brtt.r.cap = bwake.r.cap = MAX_SAMPLES;
	if (!x->rtt.r.v || !x->wake.r.v || !brtt.r.v || !bwake.r.v) {
		fprintf(stderr, "keel-bench xshard: out of memory\n");
		goto out;
	}

	/* The baseline runs on the shards' CPUs: known before keel runs from the runtime's
	 * placement, so that either may go first (xshard.sh alternates). */
	{
		struct keel_runtime *rt;

		r = keel_runtime_create(&o, &rt);
		if (r < 0) {
			fprintf(stderr, "keel-bench xshard: runtime: %s\n", strerror(-r));
			goto out;
		}
		x->cpu[0] = keel_runtime_shard_cpu(rt, 0);
		x->cpu[1] = keel_runtime_shard_cpu(rt, 1);
		keel_runtime_destroy(rt);
	}
	b->cpu[0] = x->cpu[0];
	b->cpu[1] = x->cpu[1];
	b->dur_ns = x->dur_ns;
	b->gap_us = x->gap_us;
	b->window = x->window;
	b->ack_every = x->ack_every;
	b->spin_ns = (uint64_t)o.idle_poll_us * 1000;
	if (bq_init(&b->q01, b->window) || bq_init(&b->q10, b->window)) {
		fprintf(stderr, "keel-bench xshard: out of memory\n");
		goto out;
	}
	for (int pass = 0; pass < 2; pass++) {
		if ((pass == 0) == base_first) {
			/* baseline on the same CPUs; it pins this thread, whose affinity the
			 * runtime reads to place its shards: put it back after */
			size_t msz = 0;
			cpu_set_t *mask = affinity_save(&msz);

			r = run_baseline(b, 0, NULL, &bcount, &bns) ||
			    run_baseline(b, 1, &brtt, NULL, NULL) ||
			    run_baseline(b, 2, &bwake, NULL, NULL);
			if (mask) {
				sched_setaffinity(0, msz, mask);
				CPU_FREE(mask);
			} else {
				fprintf(stderr,
					"keel-bench xshard: this thread's CPU affinity could "
					"not be read: keel's runtime will see only CPU %d\n",
					b->cpu[0]);
			}
			if (r) {
				fprintf(stderr, "keel-bench xshard: baseline failed\n");
				goto out;
			}
			continue;
		}
		/* keel, polling: one-way then round trips. */
		r = keel_run(&o, polling_start, x);
		if (r < 0 || x->err) {
			fprintf(stderr, "keel-bench xshard: runtime failed: %s\n",
				strerror(-(r ? r : x->err)));
			goto out;
		}
		/* keel, sleeping: every message wakes its receiver. */
		idle_poll_us = o.idle_poll_us;
		o.idle_poll_us = 0;
		r = keel_run(&o, sleeping_start, x);
		o.idle_poll_us = idle_poll_us;
		if (r < 0) {
			fprintf(stderr, "keel-bench xshard: runtime failed: %s\n", strerror(-r));
			goto out;
		}
	}
	summarise(&rk, &x->rtt, &x->wake, x->oneway_count, x->oneway_ns);
	summarise(&rb, &brtt, &bwake, bcount, bns);

	if (x->oneway_count == 0 || bcount == 0 || rk.rtt_samples == 0 || rb.rtt_samples == 0 ||
	    rk.wake_samples == 0 || rb.wake_samples == 0) {
		fprintf(stderr, "keel-bench xshard: a measurement moved no messages "
				"(run longer with --seconds)\n");
		goto out;
	}
	if (json) {
		printf("{\n  \"mode\": \"xshard\",\n  \"shards\": %u,\n  \"cpus\": [%d, %d],\n",
		       o.shards, x->cpu[0], x->cpu[1]);
		printf("  \"seconds\": %.3f,\n  \"messages\": %llu,\n", seconds,
		       (unsigned long long)x->oneway_count);
		print_json_result("  ", &rk);
		printf(",\n  \"baseline\": {\n    \"name\": \"spsc ring + eventfd\",\n"
		       "    \"messages\": %llu,\n",
		       (unsigned long long)bcount);
		print_json_result("    ", &rb);
		printf("\n  },\n  \"ratio_msgs_per_sec\": %.2f\n}\n",
		       rk.msgs_per_sec / rb.msgs_per_sec);
	} else {
		printf("xshard: shard 0 (CPU %d) -> shard 1 (CPU %d), %.1f s per measurement\n",
		       x->cpu[0], x->cpu[1], seconds);
		printf("%-26s %14s %14s %8s\n", "", "keel", "spsc+eventfd", "ratio");
		printf("%-26s %14.0f %14.0f %7.2fx\n", "one-way msgs/s", rk.msgs_per_sec,
		       rb.msgs_per_sec, rk.msgs_per_sec / rb.msgs_per_sec);
		printf("%-26s %14.2f %14.2f %7.2fx\n", "polling rtt p50 (us)", rk.rtt_p50_us,
		       rb.rtt_p50_us, rb.rtt_p50_us / rk.rtt_p50_us);
		printf("%-26s %14.2f %14.2f %7.2fx\n", "polling rtt p99 (us)", rk.rtt_p99_us,
		       rb.rtt_p99_us, rb.rtt_p99_us / rk.rtt_p99_us);
		printf("%-26s %14.2f %14.2f %7.2fx\n", "sleeping rtt p50 (us)", rk.wake_rtt_p50_us,
		       rb.wake_rtt_p50_us, rb.wake_rtt_p50_us / rk.wake_rtt_p50_us);
		printf("%-26s %14.2f %14.2f %7.2fx\n", "sleeping rtt p99 (us)", rk.wake_rtt_p99_us,
		       rb.wake_rtt_p99_us, rb.wake_rtt_p99_us / rk.wake_rtt_p99_us);
		printf("(ratio > 1: keel is better; latency ratios are baseline/keel)\n");
	}
	status = 0;
out:
	bq_fini(&b->q01);
	bq_fini(&b->q10);
	free(x->rtt.r.v);
	free(x->wake.r.v);
	free(brtt.r.v);
	free(bwake.r.v);
	free(x);
	free(b);
	return status;
}
