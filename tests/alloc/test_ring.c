// SPDX-License-Identifier: MIT
/*
 * Buffers on shard rings: fixed-buffer index/offset over every region boundary, SEND_ZC
 * with a fixed buffer over loopback, the first request of a shard with 1 GiB of regions,
 * cross-shard transfer and release at home, the cap on a shard, the forced-off fallback.
 *
 * Shard threads record failures with SHARD_CHECK (shard_check.h); the test thread asserts
 * after keel_run() returns (Criterion's asserts belong to the test thread).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <keel/alloc_runtime.h>
#include <keel/keel.h>
#include <keel/ring.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

#define MiB (1ULL << 20)

static struct keel_opts
ring_opts(unsigned shards, uint64_t memory)
{
	struct keel_opts o;
	keel_opts_init(&o);
	o.shards = shards;
	o.signals = false;
	o.log_level = KEEL_LOG_WARN;
	o.memory = memory;
	o.idle_poll_us = 0; /* two tests at once on two cores: no spinning shards */
	return o;
}

static uint64_t
now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* A connected loopback TCP pair: fds[0] sends, fds[1] receives. */
static void
tcp_pair(int fds[2])
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(l, 0);
	cr_assert_eq(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(l, 1), 0);
	cr_assert_eq(getsockname(l, (struct sockaddr *)&sa, &sl), 0);
	fds[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fds[0], 0);
	cr_assert_eq(connect(fds[0], (struct sockaddr *)&sa, sizeof(sa)), 0);
	fds[1] = accept(l, NULL, NULL);
	cr_assert_geq(fds[1], 0);
	close(l);
	/* The receiving end's reads end at the suite's deadline (recv_all names the wait). */
	struct timeval tv = { .tv_sec = TEST_WAIT_MS / 1000 };
	cr_assert_eq(setsockopt(fds[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
}

static void
recv_all(int fd, uint8_t *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = recv(fd, buf + got, len - got, 0);
		if (n < 0 && errno == EINTR)
			continue;
		cr_assert_gt(n, 0, "waiting for %zu sent bytes, %zu arrived: %s", len, got,
			     n == 0            ? "EOF"
			     : errno == EAGAIN ? "nothing more within the deadline"
					       : strerror(errno));
		got += (size_t)n;
	}
}

static uint8_t
pattern(size_t buf, size_t i)
{
	return (uint8_t)(buf * 131 + i * 7 + (i >> 9));
}

/* ---- fixed buffers over every region boundary ---- */

#define FX_BUF   (64u << 10)
#define FX_MEM   (32 * MiB)
#define FX_COUNT (FX_MEM / FX_BUF)

struct fx_write {
	struct keel_op op;
	struct fx_state *st;
	unsigned i;
};

struct fx_state {
	int memfd;
	struct keel_slice bufs[FX_COUNT];
	struct fx_write w[FX_COUNT];
	unsigned n, done, boundary_bufs;
	uint64_t regions_used;
};

static void
fx_done(struct keel_op *op, int res, uint32_t flags)
{
	struct fx_write *w = (struct fx_write *)op;
	struct fx_state *st = w->st;

	if (res != (int)FX_BUF)
		SHARD_FAIL("WRITE_FIXED of buffer %u: %d (%s)", w->i, res,
			   res < 0 ? strerror(-res) : "short");
	if (++st->done == st->n) {
		for (unsigned i = 0; i < st->n; i++)
			keel_slice_put(&st->bufs[i]);
		keel_stop(0);
	}
}

static void
fx_start(void *app)
{
	struct fx_state *st = app;
	struct keel_alloc *a = keel_shard_alloc();
	int r;

	SHARD_CHECK(keel_shard_bufs_registered());
	while (st->n < FX_COUNT && (r = keel_buf_alloc(a, FX_BUF, &st->bufs[st->n])) == 0)
		st->n++;
	SHARD_CHECK(st->n == FX_COUNT); /* 64 KiB classes tile the regions exactly */
	for (unsigned i = 0; i < st->n; i++) {
		struct keel_slice *s = &st->bufs[i];
		unsigned idx, ridx;
		uint64_t off, roff, rlen;
		void *base;
		struct io_uring_sqe *sqe;

		for (size_t k = 0; k < s->len; k++)
			s->data[k] = pattern(i, k);
		r = keel_buf_fixed(s, &idx, &off);
		if (r < 0) {
			SHARD_FAIL("keel_buf_fixed(buffer %u): %s", i, strerror(-r));
			keel_stop(r);
			return;
		}
		SHARD_CHECK(keel_alloc_locate(a, s->data, &ridx, &roff) == 0);
		SHARD_CHECK(idx == ridx && off == roff);
		SHARD_CHECK(keel_alloc_region(a, idx, &base, &rlen) == 0);
		SHARD_CHECK((uint8_t *)base + off == s->data);
		SHARD_CHECK(off + s->len <= rlen);
		if (off == 0 || off + s->len == rlen)
			st->boundary_bufs++;
		st->regions_used |= 1ULL << idx;
		sqe = keel_sqe_get();
		io_uring_prep_write_fixed(sqe, st->memfd, s->data, s->len, (uint64_t)i * FX_BUF,
					  (int)idx);
		st->w[i] = (struct fx_write){ .st = st, .i = i };
		st->w[i].op.fn = fx_done;
		keel_sqe_bind(sqe, &st->w[i].op);
	}
}

Test(alloc_ring, fixed_index_and_offset_correct_over_every_region_boundary)
{
	struct keel_opts o = ring_opts(1, FX_MEM);
	struct fx_state *st = calloc(1, sizeof(*st));
	uint8_t *back = malloc(FX_BUF);
	int rc;

	st->memfd = memfd_create("keel-fixed", MFD_CLOEXEC);
	cr_assert_geq(st->memfd, 0);
	rc = keel_run(&o, fx_start, st);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(rc, 0);
	cr_assert_eq(st->done, FX_COUNT);
	cr_assert_eq(st->regions_used, 0xff, "all 8 regions used");
	cr_assert_eq(st->boundary_bufs, 16, "a buffer on each side of every region boundary");
	/* What the kernel read through (index, address) is what each buffer held. */
	for (unsigned i = 0; i < FX_COUNT; i++) {
		cr_assert_eq(pread(st->memfd, back, FX_BUF, (off_t)i * FX_BUF), (ssize_t)FX_BUF);
		for (size_t k = 0; k < FX_BUF; k++)
			if (back[k] != pattern(i, k))
				cr_assert_fail("buffer %u byte %zu: kernel read %#x, expected %#x",
					       i, k, back[k], pattern(i, k));
	}
	close(st->memfd);
	free(back);
	free(st);
}

/* ---- SEND_ZC with a fixed buffer over loopback ---- */

#define ZC_LEN (48u << 10)

struct zc_state {
	struct keel_op op;
	int fd;
	struct keel_slice s;
	int zc;
	int sent;
	bool notif;
	bool registered;
	bool want_zc;
};

static void
zc_done(struct keel_op *op, int res, uint32_t flags)
{
	struct zc_state *st = (struct zc_state *)op;

	if (flags & IORING_CQE_F_NOTIF) {
		/* The kernel is done with the pages: now the buffer may go. */
		st->notif = true;
		keel_slice_put(&st->s);
		keel_stop(0);
		return;
	}
	st->sent = res;
	if (!(flags & IORING_CQE_F_MORE)) { /* no notification follows: a plain send */
		keel_slice_put(&st->s);
		keel_stop(0);
	}
}

static void
zc_start(void *app)
{
	struct zc_state *st = app;
	struct io_uring_sqe *sqe;

	st->registered = keel_shard_bufs_registered();
	if (keel_buf_alloc(keel_shard_alloc(), ZC_LEN, &st->s) < 0) {
		SHARD_FAIL("keel_buf_alloc failed");
		keel_stop(-ENOMEM);
		return;
	}
	for (size_t k = 0; k < ZC_LEN; k++)
		st->s.data[k] = pattern(7, k);
	sqe = keel_sqe_get();
	st->zc = keel_prep_send_buf(sqe, st->fd, &st->s, MSG_WAITALL);
	st->op.fn = zc_done;
	keel_sqe_bind(sqe, &st->op);
}

static void
send_and_check_zc(enum keel_policy reg, enum keel_policy zc, int expect_zc)
{
	struct keel_opts o = ring_opts(1, 16 * MiB);
	struct zc_state st = { 0 };
	uint8_t *got = malloc(ZC_LEN);
	int fds[2], rc;

	o.features[KEEL_FEAT_REG_BUFFERS] = reg;
	o.features[KEEL_FEAT_SEND_ZC] = zc;
	tcp_pair(fds);
	st.fd = fds[0];
	rc = keel_run(&o, zc_start, &st);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(rc, 0);
	cr_assert_eq(st.zc, expect_zc, "keel_prep_send_buf chose %s",
		     st.zc ? "SEND_ZC fixed" : "a plain send");
	cr_assert_eq(st.registered, reg != KEEL_POLICY_OFF);
	cr_assert_eq(st.sent, (int)ZC_LEN, "send result %d", st.sent);
	cr_assert_eq(st.notif, expect_zc, "zero-copy notification");
	recv_all(fds[1], got, ZC_LEN);
	for (size_t k = 0; k < ZC_LEN; k++)
		if (got[k] != pattern(7, k))
			cr_assert_fail("byte %zu arrived as %#x, sent %#x", k, got[k],
				       pattern(7, k));
	close(fds[0]);
	close(fds[1]);
	free(got);
}

static void
send_and_check(enum keel_policy reg, int expect_zc)
{
	send_and_check_zc(reg, KEEL_POLICY_AUTO, expect_zc);
}

Test(alloc_ring, send_zc_fixed_buffer_over_loopback_delivers_the_bytes)
{
	send_and_check(KEEL_POLICY_AUTO, 1);
}

Test(alloc_ring, forced_off_registration_sends_plain)
{
	send_and_check(KEEL_POLICY_OFF, 0);
}

/* --feature send_zc=off: a plain send from a registered buffer. keel_prep_send_buf took
 * SEND_ZC whenever the buffer was registered, whatever the policy (and the kernel: 5.19 has
 * registered buffers, SEND_ZC came in 6.0). */
Test(alloc_ring, send_zc_forced_off_sends_plain_from_a_registered_buffer)
{
	send_and_check_zc(KEEL_POLICY_AUTO, KEEL_POLICY_OFF, 0);
}

/* ---- the first request with 1 GiB of regions ---- */

struct first_state {
	struct keel_op op;
	int memfd;
	struct keel_slice s;
	int res;
	_Atomic uint64_t t_done;
	struct keel_alloc_stats st;
};

static void
first_done(struct keel_op *op, int res, uint32_t flags)
{
	struct first_state *fs = (struct first_state *)op;

	atomic_store(&fs->t_done, now_ns());
	fs->res = res;
	keel_alloc_stats(keel_shard_alloc(), &fs->st);
	keel_slice_put(&fs->s);
	keel_stop(0);
}

static void
first_start(void *app)
{
	struct first_state *fs = app;
	struct io_uring_sqe *sqe;
	unsigned idx;
	uint64_t off;
	int r;

	r = keel_buf_alloc(keel_shard_alloc(), 16384, &fs->s);
	if (r == 0)
		r = keel_buf_fixed(&fs->s, &idx, &off);
	if (r < 0) {
		SHARD_FAIL("first request: %s", strerror(-r));
		keel_stop(r);
		return;
	}
	memset(fs->s.data, 0x5a, fs->s.len);
	sqe = keel_sqe_get();
	io_uring_prep_write_fixed(sqe, fs->memfd, fs->s.data, fs->s.len, 0, (int)idx);
	fs->op.fn = first_done;
	keel_sqe_bind(sqe, &fs->op);
}

Test(alloc_ring, first_request_waits_for_no_prefault_of_1gib_of_regions)
{
	struct keel_opts o = ring_opts(1, 1024 * MiB);
	struct first_state fs = { .memfd = memfd_create("keel-first", MFD_CLOEXEC) };
	struct keel_runtime *rt;
	uint64_t t0, ms;
	int rc;

	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	t0 = now_ns();
	cr_assert_eq(keel_runtime_start(rt, first_start, &fs), 0);
	rc = keel_runtime_join(rt);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(rc, 0);
	cr_assert_eq(fs.res, 16384);
	ms = (atomic_load(&fs.t_done) - t0) / 1000000;
	/* The design property behind the bound: nothing near 1 GiB is pre-faulted or pinned
	 * (region 0 at start, then the grow hook's low-water mark of 2 spare regions). */
	cr_assert_eq(fs.st.regions_max, 256);
	cr_assert_leq(fs.st.regions, 3, "%llu regions pre-faulted before the first request",
		      (unsigned long long)fs.st.regions);
	cr_assert_leq(fs.st.bytes_registered, 8 * MiB);
	/* The time itself is reported, not asserted: on a loaded machine (CI: 2 cores, ASan) a
	 * bound in milliseconds fails for reasons that are not keel's. The counts above are the
	 * property that makes it fast. */
	cr_log_info("first request served %llu ms after start", (unsigned long long)ms);
	close(fs.memfd);
}

/* ---- cross-shard transfer and release at home ---- */

struct xs_msg {
	struct keel_slice s;
	struct keel_alloc *home;
	struct xs_state *st;
};

struct xs_state {
	uint8_t *first_data;
	int fixed_on_other;
	bool checked;
	uint64_t live_after, remote_after;
	bool reused;
};

static void
xs_check_home(void *arg)
{
	struct xs_state *st = arg;
	struct keel_alloc_stats s;
	struct keel_slice again;

	/* Per-pair order: the buffer's trip home (sent first) ran before this. */
	keel_alloc_stats(keel_shard_alloc(), &s);
	st->live_after = s.buffers_live;
	st->remote_after = s.remote_returns;
	if (keel_buf_alloc(keel_shard_alloc(), 3000, &again) == 0) {
		st->reused = again.data == st->first_data;
		keel_slice_put(&again);
	}
	st->checked = true;
	keel_stop(0);
}

static void
xs_receive(void *arg)
{
	struct xs_msg *m = arg;
	struct xs_state *st = m->st;
	unsigned idx;
	uint64_t off;
	bool ok = true;

	SHARD_CHECK(keel_shard_id(keel_this_shard()) == 1);
	for (size_t k = 0; k < m->s.len; k++)
		ok &= m->s.data[k] == pattern(3, k);
	SHARD_CHECK(ok);
	/* Its region is in shard 0's table, not ours. */
	st->fixed_on_other = keel_buf_fixed(&m->s, &idx, &off);
	keel_slice_put(&m->s);       /* the last reference: goes home to shard 0 */
	keel_alloc_free(m->home, m); /* general memory of shard 0, freed here */
	SHARD_CHECK(keel_send(0, xs_check_home, st) == 0);
}

static void
xs_start(void *app)
{
	struct xs_state *st = app;
	struct keel_alloc *a;
	struct xs_msg *m;

	if (keel_shard_id(keel_this_shard()) != 0)
		return;
	a = keel_shard_alloc();
	m = keel_alloc_malloc(a, sizeof(*m));
	SHARD_CHECK(m != NULL);
	if (!m || keel_buf_alloc(a, 3000, &m->s) < 0) {
		keel_stop(-ENOMEM);
		return;
	}
	for (size_t k = 0; k < m->s.len; k++)
		m->s.data[k] = pattern(3, k);
	st->first_data = m->s.data;
	m->home = a;
	m->st = st;
	keel_slice_move(&m->s, 1);
	SHARD_CHECK(keel_send(1, xs_receive, m) == 0);
}

Test(alloc_ring, cross_shard_transfer_and_release_at_home)
{
	struct keel_opts o = ring_opts(2, 16 * MiB);
	struct xs_state st = { 0 };
	int rc;

	rc = keel_run(&o, xs_start, &st);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(rc, 0);
	cr_assert(st.checked);
	cr_assert_eq(st.fixed_on_other, -EXDEV);
	cr_assert_eq(st.remote_after, 1, "the last put on shard 1 sent the buffer home");
	cr_assert_eq(st.live_after, 0, "shard 0 freed it");
	cr_assert(st.reused, "the memory is back in shard 0's pool");
}

/* ---- the cap on a shard ---- */

struct cap_state {
	unsigned n;
	int last;
	uint64_t failures;
};

static void
cap_start(void *app)
{
	struct cap_state *cs = app;
	struct keel_slice s[32];
	struct keel_alloc_stats st;

	while (cs->n < 32 && (cs->last = keel_buf_alloc(keel_shard_alloc(), MiB, &s[cs->n])) == 0)
		cs->n++;
	keel_alloc_stats(keel_shard_alloc(), &st);
	cs->failures = st.alloc_failures;
	for (unsigned i = 0; i < cs->n; i++)
		keel_slice_put(&s[i]);
	keel_stop(0);
}

Test(alloc_ring, memory_cap_on_a_shard_returns_enomem)
{
	struct keel_opts o = ring_opts(1, 8 * MiB);
	struct cap_state cs = { 0 };

	cr_assert_eq(keel_run(&o, cap_start, &cs), 0, "the shard keeps running");
	cr_assert_eq(cs.last, -ENOMEM);
	cr_assert_eq(cs.n, 8, "%u buffers of 1 MiB under --memory 8M", cs.n);
	cr_assert_eq(cs.failures, 1);
}

/* ---- a zero-length slice at the end of a buffer ---- */

struct zl_state {
	int r;
	unsigned idx;
	uint64_t off;
};

static void
zl_start(void *app)
{
	struct zl_state *zs = app;
	struct keel_slice s0, s1, end;

	/* Two region-sized buffers: regions 0 and 1 both in use. */
	if (keel_buf_alloc(keel_shard_alloc(), 4 * MiB, &s0) < 0 ||
	    keel_buf_alloc(keel_shard_alloc(), 4 * MiB, &s1) < 0) {
		zs->r = -ENOMEM;
		keel_stop(0);
		return;
	}
	SHARD_CHECK(keel_slice_sub(&s0, s0.len, 0, &end) == 0);
	zs->r = keel_buf_fixed(&end, &zs->idx, &zs->off);
	keel_slice_put(&end);
	keel_slice_put(&s0);
	keel_slice_put(&s1);
	keel_stop(0);
}

Test(alloc_ring, zero_length_slice_at_a_buffer_end_stays_in_its_region)
{
	struct keel_opts o = ring_opts(1, 8 * MiB);
	struct zl_state zs = { .idx = 99 };
	int rc;

	rc = keel_run(&o, zl_start, &zs);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(rc, 0);
	cr_assert_eq(zs.r, 0, "keel_buf_fixed: %s", strerror(-zs.r));
	cr_assert_eq(zs.idx, 0, "the end of region 0's buffer resolved to region %u", zs.idx);
	cr_assert_eq(zs.off, 4 * MiB);
}
