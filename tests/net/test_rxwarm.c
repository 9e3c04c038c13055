// SPDX-License-Identifier: MIT
/*
 * Warm reuse of the receive buffers (net/pbuf.c): with little in flight the kernel keeps
 * filling the same few buffers instead of cycling through the whole ring, and when the
 * application holds more buffers than the ring keeps in the kernel's hands, the ring is
 * topped up rather than starving the connection. Both are checked by counting distinct buffers
 * (keel_buf_base), never by timing.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../net/net_internal.h"
#include "helpers.h"

#define RW_BUFS 256 /* the default ring */
static struct {
	void *base[RW_BUFS]; /* shard only */
	_Atomic unsigned nbase;
	_Atomic int send_errors;
	/* held_buffers: hold every slice until HB_HOLD distinct buffers are held */
	struct keel_slice held[4096]; /* shard only */
	unsigned nheld;
	_Atomic int all_held;
	_Atomic uint64_t bytes;
} rw;

/* Count the buffer @s lies in among the distinct ones seen. */
static void
rw_note(const struct keel_slice *s)
{
	void *b = keel_buf_base(s->buf);
	unsigned n = atomic_load(&rw.nbase), k;

	for (k = 0; k < n && rw.base[k] != b; k++)
		;
	if (k == n && n < RW_BUFS)
		atomic_store(&rw.nbase, n + 1), rw.base[n] = b;
}

static void
pp_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		rw_note(&s[i]);
		if (keel_conn_send(c, &s[i]) < 0) {
			atomic_fetch_add(&rw.send_errors, 1);
			keel_slice_put(&s[i]);
		}
	}
}

static void
pp_close(struct keel_conn *c, int status)
{
	(void)c;
	(void)status;
}

static const struct keel_conn_ops pp_ops = { .on_data = pp_data, .on_close = pp_close };

/* 4 KiB ping-pong, one message in flight, for more bytes than the whole ring holds
 * (256 x 16 KiB): the kernel must fill a few recently used buffers over and over. With
 * every buffer in the ring, first-in first-out, it filled all 256 in turn. */
static void
pingpong_run(const char *spec)
{
	struct keel_opts o = net_test_opts(1);
	enum { MSG = 4096 };
	unsigned rounds = (RW_BUFS * 16384u) / MSG * 5 / 4;
	static uint8_t out[MSG], in[MSG];
	struct srv s;
	int fd;

	memset(&rw, 0, sizeof(rw));
	if (spec)
		net_test_feature(&o, spec);
	cr_assert_eq(srv_start(&s, &o, NULL, &pp_ops), 0);
	fd = cli_connect(s.port);
	cr_assert_geq(fd, 0);
	for (unsigned i = 0; i < rounds; i++) {
		memset(out, (int)(i & 0xff), sizeof(out));
		cr_assert_eq(cli_write_all(fd, out, sizeof(out)), 0, "round %u", i);
		cr_assert_eq(cli_read_all(fd, in, sizeof(in)), 0, "round %u", i);
		cr_assert_eq(memcmp(in, out, sizeof(in)), 0, "round %u: echo differs", i);
	}
	close(fd);
	cr_assert_eq(srv_stop(&s), 0);
	cr_assert_eq(atomic_load(&rw.send_errors), 0);
	/* 16 in the ring at first, one or two held by the echo: far below the ring. */
	cr_assert_leq(atomic_load(&rw.nbase), 32,
		      "%u distinct receive buffers filled for %u x %u B one at a time: the ring "
		      "is cycling through its buffers instead of reusing warm ones",
		      atomic_load(&rw.nbase), rounds, (unsigned)MSG);
}

Test(net_rxwarm, pingpong_reuses_a_few_buffers)
{
	pingpong_run(NULL);
}

Test(net_rxwarm, pingpong_reuses_a_few_buffers_whole_buffers)
{
	pingpong_run("pbuf_inc=off");
}

/* The application holds every received slice until slices of HB_HOLD distinct buffers are
 * held (four times the buffers the ring keeps in the kernel's hands), then puts them all and
 * every later one at once. Buffers the application holds are outside the ring's window: the
 * ring is topped up from the spares as the kernel retires buffers, so the connection keeps
 * receiving; were the window to bound the buffers held, it would starve with 3/4 of the
 * buffers to spare and the bytes would never all arrive. */
#define HB_HOLD  64
#define HB_BYTES (4u << 20)

static void
hb_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	(void)c;
	for (unsigned i = 0; i < n; i++) {
		atomic_fetch_add(&rw.bytes, s[i].len);
		if (atomic_load(&rw.all_held) || rw.nheld == sizeof(rw.held) / sizeof(rw.held[0])) {
			keel_slice_put(&s[i]);
			continue;
		}
		rw_note(&s[i]);
		rw.held[rw.nheld++] = s[i];
	}
	if (!atomic_load(&rw.all_held) && atomic_load(&rw.nbase) >= HB_HOLD) {
		while (rw.nheld)
			keel_slice_put(&rw.held[--rw.nheld]);
		atomic_store(&rw.all_held, 1);
	}
}

static void
hb_close(struct keel_conn *c, int status)
{
	(void)c;
	(void)status;
	while (rw.nheld)
		keel_slice_put(&rw.held[--rw.nheld]);
}

static const struct keel_conn_ops hb_ops = { .on_data = hb_data, .on_close = hb_close };

static void
held_run(const char *spec)
{
	struct keel_opts o = net_test_opts(1);
	static uint8_t out[HB_BYTES];
	struct keel_net_config nc;
	struct srv s;
	int fd;

	memset(&rw, 0, sizeof(rw));
	if (spec)
		net_test_feature(&o, spec);
	keel_net_config_init(&nc);
	nc.bulk_buf_size = 0; /* the first ring's window and spares, not the bulk ring's */
	memset(out, 'h', sizeof(out));
	cr_assert_eq(srv_start(&s, &o, &nc, &hb_ops), 0);
	fd = cli_connect(s.port);
	cr_assert_geq(fd, 0);
	cr_assert_eq(cli_write_all(fd, out, sizeof(out)), 0,
		     "the server stopped reading with %u buffers held", atomic_load(&rw.nbase));
	WAIT_UNTIL(atomic_load(&rw.bytes) == HB_BYTES, TEST_WAIT_MS,
		   "%llu of %u bytes received, %u buffers held, all held %d: the ring was not "
		   "topped up from the spares",
		   (unsigned long long)atomic_load(&rw.bytes), HB_BYTES, atomic_load(&rw.nbase),
		   atomic_load(&rw.all_held));
	cr_assert(atomic_load(&rw.all_held));
	close(fd);
	cr_assert_eq(srv_stop(&s), 0);
}

Test(net_rxwarm, held_buffers_do_not_starve_the_ring)
{
	held_run(NULL);
}

Test(net_rxwarm, held_buffers_do_not_starve_the_ring_whole_buffers)
{
	held_run("pbuf_inc=off");
}

/* ---- IORING_CQE_F_BUF_MORE decides whether a partly filled buffer is the kernel's ---- */

/* With incremental consumption a completion that leaves its last buffer partly filled
 * carries IORING_CQE_F_BUF_MORE while the kernel keeps filling that buffer. Without the flag
 * the kernel is done with it, partly filled or not: a receive run from io-wq (the kernel's
 * fallback when it cannot poll) commits the whole buffer when it picks it, so its
 * completions of 100 bytes name buffers 0, 1, 2 without the flag (the final review's run
 * on this kernel with IOSQE_ASYNC). A keel that went by its own count instead (a change
 * tried and withdrawn in the forty-first session) never retired those buffers: the ring's
 * reference stayed, and keel counted buffers in the ring that the kernel had used up. A
 * private ring of 4 buffers, fed completions by hand (the kernel writes nothing). */
static void
bm_start(void *arg)
{
	struct net_shard *ns;
	struct pbuf_ring r;
	struct keel_slice s[4];
	int n;

	(void)arg;
	if (!SHARD_CHECK_EQ(keel__net_shard_get(&ns), 0) ||
	    !SHARD_CHECK_EQ(keel__pbuf_init(ns, &r, 7, 4, 4096, true), 0)) {
		keel_stop(-EIO);
		return;
	}
	/* 100 bytes into buffer 0, no BUF_MORE: retired. */
	n = keel__pbuf_take(&r, 0, 100, IORING_CQE_F_BUFFER, true, s, 4);
	SHARD_CHECK(r.inring == 3 && r.nkref == 0,
		    " a buffer the kernel is done with (no BUF_MORE) is still counted as its own "
		    "(%u of 4 in the ring, %u held for it)",
		    r.inring, r.nkref);
	if (SHARD_CHECK_EQ(n, 1)) {
		SHARD_CHECK_EQ(s[0].len, 100);
		keel_slice_put(&s[0]); /* back to the ring */
	}
	SHARD_CHECK_EQ(r.inring, 4);
	/* 100 bytes into buffer 1 with BUF_MORE: the kernel's still. */
	n = keel__pbuf_take(&r, 1, 100, IORING_CQE_F_BUFFER | IORING_CQE_F_BUF_MORE, true, s, 4);
	SHARD_CHECK(r.inring == 4 && r.nkref == 1,
		    " a buffer the kernel keeps filling (BUF_MORE) was retired (%u of 4)",
		    r.inring);
	if (SHARD_CHECK_EQ(n, 1))
		keel_slice_put(&s[0]);
	keel__pbuf_drop_krefs(&r);
	keel__pbuf_fini(&r);
	keel_stop(0);
}

Test(net_rxwarm, buf_more_says_whether_a_partly_filled_buffer_is_the_kernels)
{
	struct keel_opts o = net_test_opts(1);

	cr_assert_eq(keel_run(&o, bm_start, NULL), 0);
	SHARD_CHECKS_PASSED();
}

/* ---- the window's bounds, on private rings fed by hand (the kernel writes nothing) ---- */

/* A private ring of 8 buffers of 4 KiB into @r, window @window, wmax @wmax; false (the
 * runtime stopping) when it could not be made. */
static bool
window_ring(struct pbuf_ring *r, unsigned window, unsigned wmax)
{
	struct net_shard *ns;

	if (!SHARD_CHECK_EQ(keel__net_shard_get(&ns), 0) ||
	    !SHARD_CHECK_EQ(keel__pbuf_init_window(ns, r, 7, 8, 4096, false, window, wmax), 0)) {
		keel_stop(-EIO);
		return false;
	}
	return true;
}

/* Runs @fn on one shard, which stops the runtime; every shard check must pass. */
static void
run_window_case(keel_shard_fn fn)
{
	struct keel_opts o = net_test_opts(1);

	cr_assert_eq(keel_run(&o, fn, NULL), 0);
	SHARD_CHECKS_PASSED();
}

/* Growing doubles the window but never past wmax (the bulk ring's bulk_window): 4 doubled
 * is 8, clamped to 6, and a second grow leaves it at 6. */
static void
gc_start(void *arg)
{
	struct pbuf_ring r;

	(void)arg;
	if (!window_ring(&r, 4, 6))
		return;
	SHARD_CHECK(r.window == 4 && r.wmax == 6 && r.inring == 4,
		    "the ring starts with window %u, wmax %u, %u in the ring (want 4, 6, 4)",
		    r.window, r.wmax, r.inring);
	SHARD_CHECK(keel__pbuf_grow(&r), "the grown ring holds no buffer");
	SHARD_CHECK(r.window == 6, "the first grow made the window %u, past wmax 6", r.window);
	SHARD_CHECK(r.inring == 6, "%u buffers in the ring after the grow (want 6)", r.inring);
	SHARD_CHECK(keel__pbuf_grow(&r), "the grown ring holds no buffer");
	SHARD_CHECK(r.window == 6, "the second grow made the window %u, past wmax 6", r.window);
	SHARD_CHECK(r.inring == 6, "%u buffers in the ring after the grow (want 6)", r.inring);
	keel__pbuf_fini(&r);
	keel_stop(0);
}

Test(net_rxwarm, growing_the_window_stops_at_wmax)
{
	run_window_case(gc_start);
}

/* A buffer put back goes to the ring only while it holds fewer than the window, else to the
 * spares: 8 buffers, a window of 4; a completion retires the 4 in the ring, the top-up puts
 * the 4 spares there, and the 4 slices put back must all become spares. */
static void
gb_start(void *arg)
{
	struct pbuf_ring r;
	struct keel_slice s[8];
	int n;

	(void)arg;
	if (!window_ring(&r, 4, 0))
		return;
	SHARD_CHECK(r.window == 4 && r.inring == 4 && r.nspare == 4,
		    "the ring starts with window %u, %u in the ring, %u spares (want 4, 4, 4)",
		    r.window, r.inring, r.nspare);
	/* A bundle filling the 4 buffers in the ring (0..3), whole buffers: all retired. */
	n = keel__pbuf_take(&r, 0, 4 * 4096, IORING_CQE_F_BUFFER, true, s, 8);
	SHARD_CHECK(r.inring == 4 && r.nspare == 0,
		    "after the completion: %u in the ring, %u spares (want 4, 0)", r.inring,
		    r.nspare);
	if (SHARD_CHECK_EQ(n, 4))
		while (n)
			keel_slice_put(&s[--n]);
	SHARD_CHECK(r.inring <= r.window,
		    "the buffers put back filled the ring past its window: %u in the ring, "
		    "window %u",
		    r.inring, r.window);
	SHARD_CHECK(r.inring == 4 && r.nspare == 4,
		    "after the puts: %u in the ring, %u spares (want 4, 4)", r.inring, r.nspare);
	keel__pbuf_fini(&r);
	keel_stop(0);
}

Test(net_rxwarm, a_buffer_put_back_to_a_full_window_becomes_a_spare)
{
	run_window_case(gb_start);
}
