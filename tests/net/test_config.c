// SPDX-License-Identifier: MIT
/*
 * Network configuration per runtime (keel_net_shard_init) and per listener
 * (keel_listen_opts.net): two runtimes in one process, and two listeners in one runtime,
 * each with its own settings, and each applies its own.
 */
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../net/net_internal.h"
#include "helpers.h"

/* One runtime of the pair: its configuration and what its shard saw. */
struct side {
	struct keel_net_config cfg;
	struct keel_runtime *rt;
	struct keel_listener *l;
	_Atomic int opened, closes;
	_Atomic uint64_t bytes;
	int write_ret;                /* keel_conn_write of 1000 bytes in on_open */
	struct keel_net_config seen;  /* keel_net_config_get in on_open */
	_Atomic uint32_t max_slice;   /* longest slice on_data received */
	int init_ret, init_again_ret; /* keel_net_shard_init in on_start, then again */
};

static void
side_start(void *arg)
{
	struct side *sd = arg;
	int r;

	sd->init_ret = keel_net_shard_init(&sd->cfg);
	if (!SHARD_CHECK_EQ(sd->init_ret, 0)) {
		keel_stop(sd->init_ret);
		return;
	}
	sd->init_again_ret = keel_net_shard_init(&sd->cfg);
	r = keel_listener_start(sd->l);
	if (!SHARD_CHECK_EQ(r, 0))
		keel_stop(r);
}

static void
side_open(struct keel_conn *c)
{
	struct side *sd = keel_conn_app(c);
	static const char k[1000];

	keel_net_config_get(&sd->seen);
	sd->write_ret = keel_conn_write(c, k, sizeof(k));
	atomic_store(&sd->opened, 1);
}

static void
side_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct side *sd = keel_conn_app(c);

	for (unsigned i = 0; i < n; i++) {
		if (s[i].len > atomic_load(&sd->max_slice))
			atomic_store(&sd->max_slice, s[i].len);
		atomic_fetch_add(&sd->bytes, s[i].len);
		keel_slice_put(&s[i]);
	}
}

static void
side_close(struct keel_conn *c, int status)
{
	struct side *sd = keel_conn_app(c);
	atomic_fetch_add(&sd->closes, 1);
}

static const struct keel_conn_ops side_ops = { .on_open = side_open,
					       .on_data = side_data,
					       .on_close = side_close };

static void
side_up(struct side *sd)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_listen_opts lo = { .addr = "127.0.0.1" };

	cr_assert_eq(keel_runtime_create(&o, &sd->rt), 0);
	lo.rt = sd->rt;
	cr_assert_eq(keel_listener_create(&lo, 1, &side_ops, sd, &sd->l), 0);
	cr_assert_eq(keel_runtime_start(sd->rt, side_start, sd), 0);
}

static void
side_drive(struct side *sd)
{
	static char big[256 << 10];
	char got[1000];
	int fd = cli_connect(keel_listener_port(sd->l));

	cr_assert_geq(fd, 0);
	cr_assert_eq(cli_read_all(fd, got, sizeof(got)), 0, "the 1000 bytes written in on_open");
	cr_assert_eq(cli_write_all(fd, big, sizeof(big)), 0);
	WAIT_FOR(atomic_load(&sd->bytes) == sizeof(big), "the server got %lu bytes",
		 (unsigned long)atomic_load(&sd->bytes));
	close(fd);
	WAIT_FOR(atomic_load(&sd->closes) == 1, "on_close");
}

static void
side_down(struct side *sd)
{
	keel_runtime_stop(sd->rt, 0);
	cr_assert_eq(keel_runtime_join(sd->rt), 0);
	keel_runtime_destroy(sd->rt);
	keel_listener_destroy(sd->l);
}

static struct side a, b;

Test(net_config, two_runtimes_in_one_process_each_apply_their_own)
{
	keel_net_config_init(&a.cfg);
	a.cfg.buf_size = 4096;
	a.cfg.buf_count = 64;
	a.cfg.low_watermark = 100;
	a.cfg.high_watermark = 500; /* the 1000-byte write in on_open passes it */
	keel_net_config_init(&b.cfg);
	b.cfg.buf_size = 32768;
	b.cfg.buf_count = 32;
	/* One ring each, so a slice's length shows the buffer size each shard made. */
	a.cfg.bulk_buf_size = 0;
	b.cfg.bulk_buf_size = 0;

	/* Both run at once. */
	side_up(&a);
	side_up(&b);
	side_drive(&a);
	side_drive(&b);
	side_down(&a);
	side_down(&b);
	SHARD_CHECKS_PASSED();

	cr_assert_eq(a.init_again_ret, -EBUSY, "a second keel_net_shard_init");
	cr_assert_eq(b.init_again_ret, -EBUSY);
	cr_assert_eq(a.seen.buf_size, 4096);
	cr_assert_eq(a.seen.buf_count, 64);
	cr_assert_eq(a.seen.high_watermark, 500);
	cr_assert_eq(b.seen.buf_size, 32768);
	cr_assert_eq(b.seen.buf_count, 32);
	cr_assert_eq(b.seen.high_watermark, 1u << 20);
	/* The watermark each connection got. */
	cr_assert_eq(a.write_ret, 1, "1000 bytes are above runtime a's high watermark");
	cr_assert_eq(b.write_ret, 0, "... and below runtime b's");
	/* The receive buffers each shard made: no slice is longer than one buffer. */
	cr_assert_leq(atomic_load(&a.max_slice), 4096);
	cr_assert_leq(atomic_load(&b.max_slice), 32768);
	/* The process default is untouched. */
	{
		struct keel_net_config d, now;
		keel_net_config_init(&d);
		cr_assert_eq(keel_net_config_get(&now), 0);
		cr_assert_eq(now.buf_size, d.buf_size);
		cr_assert_eq(now.high_watermark, d.high_watermark);
	}
}

/* Two listeners on one shard: their own TCP_NODELAY and watermarks. */
struct lside {
	_Atomic int opened;
	int write_ret;
};
static struct lside l1, l2;

static void
l_open(struct keel_conn *c)
{
	struct lside *ls = keel_conn_app(c);
	static const char k[1000];

	ls->write_ret = keel_conn_write(c, k, sizeof(k));
	atomic_store(&ls->opened, 1);
}

static void
l_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		keel_slice_put(&s[i]);
}

static void
l_close(struct keel_conn *c, int status)
{
}

static const struct keel_conn_ops l_ops = { .on_open = l_open,
					    .on_data = l_data,
					    .on_close = l_close };

static struct keel_listener *ls1, *ls2;
static int start1, start2;

static void
two_start(void *arg)
{
	start1 = keel_listener_start(ls1);
	start2 = keel_listener_start(ls2);
}

/* @own2: the second listener has a configuration of its own (the default's values);
 * else none, and its connections take the shard's, which is the process default's: the
 * first listener, which makes the shard's network state, gives it its sizes only. */
static void
two_listeners_case(bool own2)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_net_config c1, c2;
	struct keel_listen_opts lo1 = { .addr = "127.0.0.1" }, lo2 = lo1;
	struct keel_runtime *rt;
	char got[1000];
	int fd1, fd2;

	/* Plain descriptors: the test reads TCP_NODELAY of the accepted sockets. */
	o.features[KEEL_FEAT_DIRECT_FD] = KEEL_POLICY_OFF;
	keel_net_config_init(&c1);
	c1.nodelay = false;
	c1.low_watermark = 10;
	c1.high_watermark = 100;
	keel_net_config_init(&c2);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	lo1.rt = lo2.rt = rt;
	lo1.net = &c1;
	lo2.net = own2 ? &c2 : NULL;
	cr_assert_eq(keel_listener_create(&lo1, 1, &l_ops, &l1, &ls1), 0);
	cr_assert_eq(keel_listener_create(&lo2, 1, &l_ops, &l2, &ls2), 0);
	/* Copied at create. */
	c1.nodelay = true;
	c1.high_watermark = 1u << 20;
	cr_assert_eq(keel_runtime_start(rt, two_start, NULL), 0);
	fd1 = cli_connect(keel_listener_port(ls1));
	fd2 = cli_connect(keel_listener_port(ls2));
	cr_assert_geq(fd1, 0);
	cr_assert_geq(fd2, 0);
	cr_assert_eq(cli_read_all(fd1, got, sizeof(got)), 0);
	cr_assert_eq(cli_read_all(fd2, got, sizeof(got)), 0);
	cr_assert_eq(start1, 0);
	cr_assert_eq(start2, 0);
	cr_assert_eq(tcp_nodelay_of(keel_listener_port(ls1), true), 0, "listener 1");
	cr_assert_eq(tcp_nodelay_of(keel_listener_port(ls1), false), 0, "accepted on 1");
	cr_assert_eq(tcp_nodelay_of(keel_listener_port(ls2), true), 1, "listener 2");
	cr_assert_eq(tcp_nodelay_of(keel_listener_port(ls2), false), 1, "accepted on 2");
	cr_assert_eq(l1.write_ret, 1, "listener 1's high watermark is 100 bytes");
	cr_assert_eq(l2.write_ret, 0, "listener 2's is the default");
	close(fd1);
	close(fd2);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	keel_listener_destroy(ls1);
	keel_listener_destroy(ls2);
}

Test(net_config, two_listeners_in_one_runtime_each_apply_their_own)
{
	two_listeners_case(true);
}

/* Before, the first listener's watermarks (and every setting but the sizes) became the
 * shard's, so the second listener's connections got a high watermark of 100 bytes. */
Test(net_config, a_listeners_own_configuration_is_not_the_shards)
{
	two_listeners_case(false);
}

static int first_ret = 1, second_ret = 1;
static _Atomic int mismatch_done;

static void
mismatch_start(void *arg)
{
	/* ls1 (default sizes) makes the shard's state; ls2 asks for 4 KiB buffers. */
	first_ret = keel_listener_start(ls1);
	second_ret = keel_listener_start(ls2);
	atomic_store(&mismatch_done, 1);
}

Test(net_config, listener_with_other_buffer_sizes_than_the_shard_is_refused)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_net_config c1, c2;
	struct keel_listen_opts lo1 = { .addr = "127.0.0.1" }, lo2 = lo1;
	struct keel_listener *bad = NULL;
	struct keel_runtime *rt;

	keel_net_config_init(&c1);
	keel_net_config_init(&c2);
	c2.buf_size = 4096;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	lo1.net = &c1;
	lo2.net = &c2;
	cr_assert_eq(keel_listener_create(&lo1, 1, &l_ops, &l1, &ls1), 0);
	cr_assert_eq(keel_listener_create(&lo2, 1, &l_ops, &l2, &ls2), 0);
	/* A bad configuration is refused at create. */
	c2.buf_count = 3;
	cr_assert_eq(keel_listener_create(&lo2, 1, &l_ops, &l2, &bad), -EINVAL);
	cr_assert_null(bad);
	cr_assert_eq(keel_runtime_start(rt, mismatch_start, NULL), 0);
	WAIT_FOR(atomic_load(&mismatch_done), "on_start");
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	cr_assert_eq(first_ret, 0);
	cr_assert_eq(second_ret, -EINVAL, "the second listener's start is refused");
	keel_listener_destroy(ls1);
	keel_listener_destroy(ls2);
}

/* The bulk window is compared as the shard uses it, in whole buffers up to the ring: two
 * values that make the same window are the same configuration. */
Test(net_config, bulk_windows_that_make_the_same_ring_are_equal)
{
	struct keel_net_config x, y;

	keel_net_config_init(&x);
	keel_net_config_init(&y);
	x.bulk_buf_size = 64u << 10;
	x.bulk_buf_count = 64;
	y.bulk_buf_size = x.bulk_buf_size;
	y.bulk_buf_count = x.bulk_buf_count;
	x.bulk_window = 512u << 10;
	y.bulk_window = (512u << 10) + 1000; /* still 8 whole buffers */
	cr_assert(keel__net_config_shard_equal(&x, &y), "8 buffers either way");
	y.bulk_window = 1u << 20;
	cr_assert_not(keel__net_config_shard_equal(&x, &y), "8 buffers against 16");
	x.bulk_window = 0;            /* every buffer */
	y.bulk_window = 64u * 65536u; /* the whole ring, 64 buffers */
	cr_assert(keel__net_config_shard_equal(&x, &y), "0 and the ring's size are both 64");
	y.bulk_window = 1u << 30;
	cr_assert(keel__net_config_shard_equal(&x, &y), "a window above the ring is the ring");
	x.bulk_window = 1;
	y.bulk_window = 1000; /* both under one buffer: one */
	cr_assert(keel__net_config_shard_equal(&x, &y), "one buffer either way");
}

/* An accept back-off under 1 ms is refused: with EMFILE lasting, the accept would be
 * retried every loop pass, a shard spinning on one error. */
Test(net_config, accept_backoff_below_a_millisecond_is_refused)
{
	struct keel_net_config nc;

	keel_net_config_init(&nc);
	nc.accept_backoff_ns = 0;
	cr_assert_eq(keel_net_config_set(&nc), -EINVAL);
	nc.accept_backoff_ns = KEEL_MS(1);
	cr_assert_eq(keel_net_config_set(&nc), 0);
	keel_net_config_init(&nc);
	cr_assert_eq(keel_net_config_set(&nc), 0);
}

/* A high watermark of 0 is refused as --high-watermark 0 is (it was taken, low = high = 0:
 * every send paused reading). */
Test(net_config, a_high_watermark_of_0_is_refused_as_the_option_is)
{
	struct keel_net_config nc;
	char err[256] = "";

	keel_net_config_init(&nc);
	nc.high_watermark = 0;
	nc.low_watermark = 0;
	cr_assert_eq(keel_net_config_check(&nc, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "--high-watermark"), "%s", err);
	nc.high_watermark = 1;
	cr_assert_eq(keel_net_config_check(&nc, err, sizeof(err)), 0, "%s", err);
}

/* Queue steering's check, by NAPI id: a shard may own several queues (a NIC with more
 * queues than shards, the rest mapped by queue % shards), so a second queue of one shard
 * is no mismatch; a queue whose connections reach two shards is. Before, any id other than
 * the shard's first was counted. */
Test(net_config, napi_mismatch_is_a_queue_on_two_shards_not_two_queues_on_one)
{
	struct keel__napi_tab *t = calloc(1, sizeof(*t));

	cr_assert_not_null(t);
	cr_assert(!keel__napi_note(t, 8193, 0));
	cr_assert(!keel__napi_note(t, 8195, 0), "a second queue of shard 0");
	cr_assert(!keel__napi_note(t, 8193, 0));
	cr_assert(!keel__napi_note(t, 8194, 1));
	cr_assert(keel__napi_note(t, 8193, 1), "shard 0's queue reached shard 1");
	cr_assert(keel__napi_note(t, 8194, 0));
	/* Ids that collide in the table keep their own owners. */
	for (uint32_t id = 1; id <= 2 * KEEL__NAPI_SLOTS; id++)
		keel__napi_note(t, 100000 + id, id % 3);
	cr_assert(!keel__napi_note(t, 100000 + 7, 7 % 3));
	cr_assert(keel__napi_note(t, 100000 + 7, (7 + 1) % 3));
	free(t);
}

/* A configuration keel_net_shard_init refuses says why: the shard would otherwise run on the
 * defaults with nothing said (a high watermark set under the default low one). */
static char refuse_log[512];
static int refuse_ret;

static void
refuse_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	if (level == KEEL_LOG_ERROR && !refuse_log[0])
		snprintf(refuse_log, sizeof(refuse_log), "%s", msg);
}

static void
refuse_start(void *arg)
{
	struct keel_net_config nc;

	keel_net_config_init(&nc);
	nc.high_watermark = 64u << 10; /* under the default low watermark (256 KiB) */
	refuse_ret = keel_net_shard_init(&nc);
	keel_stop(0);
}

Test(net_config, a_configuration_refused_by_shard_init_is_logged_with_its_reason)
{
	struct keel_opts o = net_test_opts(1);

	keel_log_set_sink(refuse_sink, NULL);
	int r = keel_run(&o, refuse_start, NULL);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(r, 0);
	cr_assert_eq(refuse_ret, -EINVAL);
	cr_assert(strstr(refuse_log, "keel_net_shard_init") && strstr(refuse_log, "low_watermark"),
		  "log: '%s'", refuse_log);
}
