// SPDX-License-Identifier: MIT
/*
 * keel_conn_write / keel_conn_writev: copying sends mixed with slice sends keep their
 * order, large writes span several buffers, every byte arrives, and writes after close or
 * shutdown fail with -EPIPE.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../net/net_internal.h"
#include "helpers.h"

/* Byte @i of the stream the server writes. */
static uint8_t
pat(uint64_t i)
{
	return (uint8_t)(i * 131 + i / 251 + 7);
}

/* The pieces the server queues in on_open, in order: kind 'w' keel_conn_write, 'v'
 * keel_conn_writev of three parts (sizes a, b, c), 's' keel_conn_send of a slice. */
struct piece {
	char kind;
	uint32_t a, b, c;
};

static const struct piece pieces[] = {
	{ 'w', 1, 0, 0 },     { 's', 100, 0, 0 },    { 'v', 5, 0, 7 },
	{ 'w', 13, 0, 0 },    { 'w', 300000, 0, 0 }, /* spans several write buffers */
	{ 's', 70000, 0, 0 }, { 'w', 2, 0, 0 },      { 'v', 100000, 3, 200000 },
	{ 'w', 1, 0, 0 },     { 's', 9, 0, 0 },      { 'v', 4096, 4096, 1 },
};

static uint64_t
stream_len(void)
{
	uint64_t n = 0;
	for (unsigned i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++)
		n += pieces[i].a + pieces[i].b + pieces[i].c;
	return n;
}

static _Atomic int opens, after_close_ok;

static void
fill(uint8_t *p, uint64_t at, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		p[i] = pat(at + i);
}

static void
mixed_open(struct keel_conn *c)
{
	uint64_t at = 0;
	int r;

	atomic_fetch_add(&opens, 1);
	for (unsigned i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
		const struct piece *pc = &pieces[i];
		uint32_t tot = pc->a + pc->b + pc->c;

		if (pc->kind == 's') {
			struct keel_slice s;
			if (!SHARD_CHECK_EQ(keel_buf_alloc(keel_shard_alloc(), pc->a, &s), 0))
				goto fail;
			fill(s.data, at, pc->a);
			s.len = pc->a;
			r = keel_conn_send(c, &s);
		} else {
			uint8_t *buf = malloc(tot ? tot : 1);
			if (!SHARD_CHECK(buf != NULL))
				goto fail;
			fill(buf, at, tot);
			if (pc->kind == 'w') {
				r = keel_conn_write(c, buf, pc->a);
			} else {
				struct iovec iov[3] = { { buf, pc->a },
							{ buf + pc->a, pc->b },
							{ buf + pc->a + pc->b, pc->c } };
				r = keel_conn_writev(c, iov, 3);
			}
			/* Copied: the caller's memory is free again at once. */
			memset(buf, 0xee, tot);
			free(buf);
		}
		if (!SHARD_CHECK(r == 0 || r == 1, " piece %u: %d", i, r))
			goto fail;
		at += tot;
	}
	keel_conn_close(c);
	{
		struct iovec iov = { "x", 1 };
		struct keel_slice s;
		bool ok = keel_conn_write(c, "x", 1) == -EPIPE &&
			  keel_conn_writev(c, &iov, 1) == -EPIPE;
		SHARD_CHECK(ok, " write after close is -EPIPE");
		/* The slice path says the same, and keeps the caller's reference. */
		if (SHARD_CHECK_EQ(keel_buf_alloc(keel_shard_alloc(), 1, &s), 0)) {
			SHARD_CHECK_EQ(keel_conn_send(c, &s), -EPIPE);
			keel_slice_put(&s);
		}
		if (ok)
			atomic_fetch_add(&after_close_ok, 1);
	}
	return;
fail:
	keel_conn_abort(c, -EIO);
}

static void
drop_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		keel_slice_put(&s[i]);
}

static void
count_close(struct keel_conn *c, int status)
{
	struct srv *sv = keel_conn_app(c);
	atomic_fetch_add(&sv->closes, 1);
	if (status < 0)
		atomic_fetch_add(&sv->close_errors, 1);
}

static const struct keel_conn_ops mixed_ops = { .on_open = mixed_open,
						.on_data = drop_data,
						.on_close = count_close };

static void
read_to_eof_and_check(int fd, uint64_t want)
{
	uint8_t *got = malloc(want + 1);
	uint64_t n = 0;

	cr_assert(got);
	for (;;) {
		ssize_t r = cli_recv(fd, got + n, want + 1 - n);
		cr_assert_geq(r, 0, "recv: %s after %lu bytes", strerror(errno), (unsigned long)n);
		if (r == 0)
			break;
		n += (uint64_t)r;
		cr_assert_leq(n, want, "more bytes than were written");
	}
	cr_assert_eq(n, want, "got %lu of %lu bytes", (unsigned long)n, (unsigned long)want);
	for (uint64_t i = 0; i < want; i++)
		cr_assert_eq(got[i], pat(i), "byte %lu is %u, want %u", (unsigned long)i, got[i],
			     pat(i));
	free(got);
}

static void
mixed_case(bool zc)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_net_config nc;
	struct srv s;
	int fd;

	keel_net_config_init(&nc);
	if (zc) {
		/* Large write buffers go out with SEND_ZC (they are registered memory). */
		net_test_feature(&o, "send_zc=on");
		nc.zc_threshold = 4096;
	}
	atomic_store(&opens, 0);
	atomic_store(&after_close_ok, 0);
	cr_assert_eq(srv_start(&s, &o, &nc, &mixed_ops), 0);
	fd = cli_connect(s.port);
	cr_assert_geq(fd, 0);
	read_to_eof_and_check(fd, stream_len());
	close(fd);
	WAIT_FOR(atomic_load(&s.closes) == 1, "the server's on_close");
	if (zc) {
		struct keel_net_stats st;

		cr_assert_eq(srv_net_stats(&s, 0, &st), 0);
		cr_assert_gt(st.sends_zc, 0, "no send went out with SEND_ZC");
	}
	cr_assert_eq(srv_stop(&s), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&after_close_ok), 1);
	cr_assert_eq(atomic_load(&s.close_errors), 0);
}

Test(net_write, writes_and_slice_sends_keep_their_order)
{
	mixed_case(false);
}

Test(net_write, writes_and_slice_sends_keep_their_order_with_send_zc)
{
	mixed_case(true);
}

/* Small writes between slice sends (a reply's header written, its body sent as a slice,
 * request after request): the writes share one write buffer, each joining the queue as a
 * piece of it. Each once took a 4 KiB buffer of its own: this test measured 4,224,000
 * bytes held for 110,000 queued (38 times what send_max counts; a write of 10 bytes, a
 * slice of 100, 1,000 of each). */
#define INTERLEAVE_N     1000u
#define INTERLEAVE_WRITE 10u
#define INTERLEAVE_SLICE 100u

static _Atomic uint64_t interleave_held, interleave_queued;

static void
interleave_open(struct keel_conn *c)
{
	struct keel_alloc_stats before, after;
	uint8_t w[INTERLEAVE_WRITE];
	uint64_t at = 0;

	if (!SHARD_CHECK_EQ(keel_alloc_stats(keel_shard_alloc(), &before), 0))
		goto fail;
	for (unsigned i = 0; i < INTERLEAVE_N; i++) {
		struct keel_slice s;

		fill(w, at, INTERLEAVE_WRITE);
		if (!SHARD_CHECK_EQ(keel_conn_write(c, w, INTERLEAVE_WRITE), 0))
			goto fail;
		at += INTERLEAVE_WRITE;
		if (!SHARD_CHECK_EQ(keel_buf_alloc(keel_shard_alloc(), INTERLEAVE_SLICE, &s), 0))
			goto fail;
		fill(s.data, at, INTERLEAVE_SLICE);
		s.len = INTERLEAVE_SLICE;
		if (!SHARD_CHECK_EQ(keel_conn_send(c, &s), 0))
			goto fail;
		at += INTERLEAVE_SLICE;
	}
	if (!SHARD_CHECK_EQ(keel_alloc_stats(keel_shard_alloc(), &after), 0))
		goto fail;
	atomic_store(&interleave_held, after.bytes_in_use - before.bytes_in_use);
	atomic_store(&interleave_queued, at);
	keel_conn_close(c);
	return;
fail:
	keel_conn_abort(c, -EIO);
}

static const struct keel_conn_ops interleave_ops = { .on_open = interleave_open,
						     .on_data = drop_data,
						     .on_close = count_close };

Test(net_write, small_writes_between_slice_sends_share_one_write_buffer)
{
	const uint64_t want = (uint64_t)INTERLEAVE_N * (INTERLEAVE_WRITE + INTERLEAVE_SLICE);
	uint64_t held;
	struct srv s;
	int fd;

	cr_assert_eq(srv_start(&s, NULL, NULL, &interleave_ops), 0);
	fd = cli_connect(s.port);
	cr_assert_geq(fd, 0);
	read_to_eof_and_check(fd, want);
	close(fd);
	WAIT_FOR(atomic_load(&s.closes) == 1, "the server's on_close");
	cr_assert_eq(srv_stop(&s), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&interleave_queued), want);
	/* The slices' buffers (128 bytes each, the allocator's class for 100) and the writes'
	 * bytes in 4 KiB buffers: 138,000 bytes and a buffer's room. One buffer per write
	 * was 4.2 MB. */
	held = atomic_load(&interleave_held);
	cr_assert_leq(held, (uint64_t)INTERLEAVE_N * 128u + INTERLEAVE_N * INTERLEAVE_WRITE + 8192u,
		      "queuing %lu bytes held %lu bytes of the shard's memory", (unsigned long)want,
		      (unsigned long)held);
}

/* The open write buffer goes once its last piece is sent, not when the whole queue has:
 * a 200-byte header written before 16 MiB of slices held its 4 KiB buffer for as long as
 * the slices took to send (a review's find), where a write buffer went once sent before
 * writes shared one. The client reads the header and a little, then stops: the slices
 * wait in the queue, and the buffer must be gone. */
#define WBQ_SLICES 16u
#define WBQ_SLICE  (1u << 20)

static struct keel_conn *_Atomic wbq_conn;

static void
wbq_open(struct keel_conn *c)
{
	uint8_t hdr[200];

	fill(hdr, 0, sizeof(hdr));
	if (!SHARD_CHECK_EQ(keel_conn_write(c, hdr, sizeof(hdr)), 0))
		goto fail;
	for (unsigned i = 0; i < WBQ_SLICES; i++) {
		struct keel_slice s;
		int r;

		if (!SHARD_CHECK_EQ(keel_buf_alloc(keel_shard_alloc(), WBQ_SLICE, &s), 0))
			goto fail;
		fill(s.data, sizeof(hdr) + (uint64_t)i * WBQ_SLICE, WBQ_SLICE);
		s.len = WBQ_SLICE;
		r = keel_conn_send(c, &s);
		if (!SHARD_CHECK(r == 0 || r == 1, " send %u: %d", i, r)) {
			keel_slice_put(&s);
			goto fail;
		}
	}
	atomic_store(&wbq_conn, c);
	return;
fail:
	keel_conn_abort(c, -EIO);
}

/* On the shard: 1 when slices still wait in the queue and no write buffer is held; 2 when
 * one is; 0 when the queue has emptied (the test shows nothing then). */
static void
wbq_probe(struct keel_xreq *req)
{
	struct keel_conn *c = atomic_load(&wbq_conn);

	keel_xreq_complete(req, !keel__conn_queue_slices(c) ? 0 : keel__conn_write_open(c) ? 2 : 1);
}

static int
wbq_ask(struct keel_runtime *rt)
{
	struct keel_xqueue *q;
	struct keel_xreq req = { .fn = wbq_probe }, *done;
	int r;

	cr_assert_eq(keel_xqueue_create(&q), 0);
	req.queue = q;
	cr_assert_eq(keel_runtime_submit(rt, 0, &req), 0);
	cr_assert_eq(keel_xqueue_wait(q, &done, 1, KEEL_S(30)), 1, "the shard did not answer");
	r = done->status;
	keel_xqueue_destroy(q);
	return r;
}

static const struct keel_conn_ops wbq_ops = { .on_open = wbq_open,
					      .on_data = drop_data,
					      .on_close = count_close };

Test(net_write, the_write_buffer_goes_once_its_last_piece_is_sent)
{
	static uint8_t got[4096];
	struct srv s;
	int fd, r;

	atomic_store(&wbq_conn, NULL);
	cr_assert_eq(srv_start(&s, NULL, NULL, &wbq_ops), 0);
	fd = cli_connect(s.port);
	cr_assert_geq(fd, 0);
	WAIT_FOR(atomic_load(&wbq_conn) != NULL, "the server's queue");
	cr_assert_eq(cli_read_all(fd, got, sizeof(got)), 0);
	for (size_t i = 0; i < sizeof(got); i++)
		cr_assert_eq(got[i], pat(i), "byte %zu", i);
	/* The header's send is done once its bytes reached us; its completion is reaped by
	 * the shard's next passes. */
	WAIT_FOR((r = wbq_ask(s.rt)) != 2, "the write buffer's release");
	cr_assert_eq(r, 1, "the queue emptied: the client's socket took 16 MiB");
	close(fd);
	WAIT_FOR(atomic_load(&s.closes) == 1, "the server's on_close");
	cr_assert_eq(srv_stop(&s), 0);
	SHARD_CHECKS_PASSED();
}

/* An echo that copies what it receives with keel_conn_write (and every other on_data with
 * keel_conn_writev of the slices), so writes land while a send is in flight. */
static void
copy_echo_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	static _Thread_local unsigned calls;
	struct iovec iov[64] = { { 0 } };
	unsigned k = 0;
	int r = 0;

	if (calls++ % 2 == 0) {
		for (unsigned i = 0; i < n && r >= 0; i++)
			r = keel_conn_write(c, s[i].data, s[i].len);
	} else {
		for (unsigned i = 0; i < n && k < 64; i++, k++)
			iov[k] = (struct iovec){ s[i].data, s[i].len };
		r = keel_conn_writev(c, iov, k);
		for (unsigned i = k; i < n && r >= 0; i++)
			r = keel_conn_write(c, s[i].data, s[i].len);
	}
	for (unsigned i = 0; i < n; i++)
		keel_slice_put(&s[i]);
	if (!SHARD_CHECK(r >= 0, " write: %d", r))
		keel_conn_abort(c, -EIO);
}

static const struct keel_conn_ops copy_echo_ops = { .on_data = copy_echo_data,
						    .on_close = count_close };

Test(net_write, copying_echo_returns_every_byte)
{
	size_t len = test_small() ? (1u << 20) : (8u << 20);
	uint8_t *out = malloc(len), *in = malloc(len);
	struct srv s;
	int fd;

	cr_assert(out && in);
	for (size_t i = 0; i < len; i++)
		out[i] = pat(i);
	cr_assert_eq(srv_start(&s, NULL, NULL, &copy_echo_ops), 0);
	fd = cli_connect(s.port);
	cr_assert_geq(fd, 0);
	/* In rounds of 256 KiB written then read, so neither side's buffers fill up. */
	for (size_t at = 0; at < len; at += 256u << 10) {
		size_t n = len - at < (256u << 10) ? len - at : (256u << 10);
		cr_assert_eq(cli_write_all(fd, out + at, n), 0);
		cr_assert_eq(cli_read_all(fd, in + at, n), 0);
	}
	cr_assert_eq(memcmp(in, out, len), 0);
	close(fd);
	WAIT_FOR(atomic_load(&s.closes) == 1, "the server's on_close");
	cr_assert_eq(srv_stop(&s), 0);
	SHARD_CHECKS_PASSED();
	free(out);
	free(in);
}

/* Bad input and the state checks, on one accepted connection. */
static _Atomic int bad_done;

static void
bad_open(struct keel_conn *c)
{
	struct iovec none[1] = { { NULL, 0 } };
	struct iovec big[2] = { { (void *)"a", 1 }, { (void *)"b", 1 } };
	struct keel_slice s;

	SHARD_CHECK_EQ(keel_conn_write(c, "x", 0), -EINVAL);
	SHARD_CHECK_EQ(keel_conn_write(c, NULL, 1), -EINVAL);
	SHARD_CHECK_EQ(keel_conn_writev(c, none, 0), -EINVAL);
	SHARD_CHECK_EQ(keel_conn_writev(c, none, 1), -EINVAL); /* nothing to send */
	SHARD_CHECK_EQ(keel_conn_writev(c, NULL, 1), -EINVAL);
	SHARD_CHECK_EQ(keel_conn_queued(c), 0);
	SHARD_CHECK_EQ(keel_conn_writev(c, big, 2), 0);
	SHARD_CHECK_EQ(keel_conn_queued(c), 2);
	SHARD_CHECK_EQ(keel_conn_shutdown(c), 0);
	SHARD_CHECK_EQ(keel_conn_write(c, "x", 1), -EPIPE);
	SHARD_CHECK_EQ(keel_conn_writev(c, big, 2), -EPIPE);
	/* The slice path says the same, and leaves the caller its reference. */
	if (SHARD_CHECK_EQ(keel_buf_alloc(keel_shard_alloc(), 1, &s), 0)) {
		int r;

		s.data[0] = 'y';
		s.len = 1;
		r = keel_conn_send(c, &s);
		SHARD_CHECK_EQ(r, -EPIPE, "keel_conn_send after keel_conn_shutdown");
		if (r < 0)
			keel_slice_put(&s);
	}
	atomic_store(&bad_done, 1);
}

static const struct keel_conn_ops bad_ops = { .on_open = bad_open,
					      .on_data = drop_data,
					      .on_close = count_close };

Test(net_write, bad_input_and_write_after_shutdown)
{
	struct srv s;
	char b[4];
	int fd;

	atomic_store(&bad_done, 0);
	cr_assert_eq(srv_start(&s, NULL, NULL, &bad_ops), 0);
	fd = cli_connect(s.port);
	cr_assert_geq(fd, 0);
	/* The two bytes queued before the shutdown, then EOF. */
	cr_assert_eq(cli_read_all(fd, b, 2), 0);
	cr_assert_eq(memcmp(b, "ab", 2), 0);
	cr_assert_eq(cli_recv(fd, b, sizeof(b)), 0, "EOF after the shutdown");
	close(fd);
	WAIT_FOR(atomic_load(&s.closes) == 1, "the server's on_close");
	cr_assert_eq(srv_stop(&s), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&bad_done), 1);
}

/* Slices sent one after another whose bytes follow on in one buffer (the receives of a
 * peer trickling bytes into an incrementally consumed buffer, echoed) take one entry of
 * the send queue, not one each: two buffers of 3,000 one-byte slices make two entries.
 * Each slice made its own entry before (24 bytes outside --memory, and every send walked
 * them all). The bytes arrive in order. */
#define TRICKLE_BUF 3000u

static _Atomic uint32_t trickle_entries = UINT32_MAX;

static void
trickle_open(struct keel_conn *c)
{
	struct keel_slice whole[2];
	int r = 0;

	for (unsigned b = 0; b < 2; b++) {
		if (!SHARD_CHECK_EQ(keel_buf_alloc(keel_shard_alloc(), TRICKLE_BUF, &whole[b]), 0))
			goto fail;
		fill(whole[b].data, (uint64_t)b * TRICKLE_BUF, TRICKLE_BUF);
		whole[b].len = TRICKLE_BUF;
	}
	for (unsigned b = 0; b < 2; b++) {
		for (uint32_t off = 0; off < TRICKLE_BUF && r >= 0; off++) {
			struct keel_slice one;

			r = keel_slice_sub(&whole[b], off, 1, &one);
			if (r == 0 && (r = keel_conn_send(c, &one)) < 0)
				keel_slice_put(&one);
			/* Sent, it is emptied, joined to the tail or not: keel_frame_send's
			 * caller puts whatever is left after a failure, and a joined slice
			 * kept its (put) reference. */
			else if (r >= 0 && !SHARD_CHECK(one.buf == NULL,
							" byte %u of buffer %u kept "
							"its buffer after the send",
							off, b))
				r = -EIO;
		}
		keel_slice_put(&whole[b]);
	}
	if (!SHARD_CHECK(r >= 0, " send: %d", r))
		goto fail;
	atomic_store(&trickle_entries, keel__conn_queue_slices(c));
	keel_conn_close(c);
	return;
fail:
	keel_conn_abort(c, -EIO);
}

static const struct keel_conn_ops trickle_ops = { .on_open = trickle_open,
						  .on_data = drop_data,
						  .on_close = count_close };

Test(net_write, adjacent_slices_of_one_buffer_take_one_queue_entry)
{
	struct srv s;
	int fd;

	cr_assert_eq(srv_start(&s, NULL, NULL, &trickle_ops), 0);
	fd = cli_connect(s.port);
	cr_assert_geq(fd, 0);
	read_to_eof_and_check(fd, 2 * TRICKLE_BUF);
	close(fd);
	WAIT_FOR(atomic_load(&s.closes) == 1, "the server's on_close");
	cr_assert_eq(srv_stop(&s), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&trickle_entries), 2,
		     "%u queue entries for 6,000 slices of two buffers",
		     atomic_load(&trickle_entries));
	cr_assert_eq(atomic_load(&s.close_errors), 0);
}

/* A peer trickling bytes to an echo whose receive ring runs low, while the echo's queue
 * waits for it to read: each received byte was copied out of the ring (unring) into an
 * allocator buffer of its own (64 bytes at least) and took a queue entry (24 bytes outside
 * --memory), so the echo held some 90 times what send_max counts. Small slices copied out
 * of a pressed ring join the connection's open write buffer now, as writes do.
 *
 * The server writes more than the kernel's socket buffers take (the client reads nothing
 * until the end, with a small receive buffer), so its queue never empties; the client's
 * first PT_STASH bytes are kept by the application (three of the ring's four buffers: the
 * ring runs low), and every byte after them, sent one at a time, each received before the
 * next is sent, is echoed with keel_conn_send. */
#define PT_BUFS  4u
#define PT_STASH (3u * 4096u)
#define PT_BYTES 400u

static uint64_t pt_fill_len;
static struct keel_slice pt_stash[PT_STASH];
static unsigned pt_nstash;
static _Atomic uint64_t pt_got, pt_held;
static _Atomic uint32_t pt_entries, pt_pressed;
static struct keel_alloc_stats pt_before;
static uint32_t pt_entries_before;
/* The shard's memory taken whole while the bytes are trickled (pt_exhaust), then given
 * back. */
static bool pt_exhaust;
static struct keel_slice *pt_hoard;
static size_t pt_nhoard, pt_hoard_cap;

static void
pt_hoard_all(void)
{
	static const uint32_t sizes[] = { 1u << 20, 64u << 10, 4096, 512, 64 };

	for (unsigned k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++)
		for (;;) {
			if (pt_nhoard == pt_hoard_cap) {
				size_t cap = pt_hoard_cap ? 2 * pt_hoard_cap : 1024;
				struct keel_slice *h = realloc(pt_hoard, cap * sizeof(*h));

				if (!SHARD_CHECK(h != NULL))
					return;
				pt_hoard = h;
				pt_hoard_cap = cap;
			}
			if (keel_buf_alloc(keel_shard_alloc(), sizes[k], &pt_hoard[pt_nhoard]) < 0)
				break;
			pt_nhoard++;
		}
}

static void
pt_hoard_free(void)
{
	while (pt_nhoard)
		keel_slice_put(&pt_hoard[--pt_nhoard]);
	free(pt_hoard);
	pt_hoard = NULL;
	pt_hoard_cap = 0;
}

static void
pt_open(struct keel_conn *c)
{
	uint8_t *p = malloc(pt_fill_len);
	int r;

	if (!SHARD_CHECK(p != NULL))
		goto fail;
	fill(p, 0, (uint32_t)pt_fill_len);
	r = keel_conn_write(c, p, pt_fill_len);
	free(p);
	if (!SHARD_CHECK(r == 0, " write: %d", r))
		goto fail;
	return;
fail:
	keel_conn_abort(c, -EIO);
}

static void
pt_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		uint64_t at = atomic_load(&pt_got);
		int r;

		if (at < PT_STASH) {
			/* The test sends the stash whole before the first trickled byte. */
			if (!SHARD_CHECK(at + s[i].len <= PT_STASH && pt_nstash < PT_STASH))
				goto fail;
			atomic_store(&pt_got, at + s[i].len);
			pt_stash[pt_nstash++] = s[i];
			continue;
		}
		if (at == PT_STASH && pt_exhaust)
			pt_hoard_all();
		if (at == PT_STASH &&
		    (!SHARD_CHECK_EQ(keel_alloc_stats(keel_shard_alloc(), &pt_before), 0)))
			goto fail;
		if (at == PT_STASH)
			pt_entries_before = keel__conn_queue_slices(c);
		if (!SHARD_CHECK(s[i].len == 1, " %u bytes in one receive", s[i].len))
			goto fail;
		atomic_fetch_add(&pt_pressed, keel__conn_slice_pressed(c, &s[i]));
		r = keel_conn_send(c, &s[i]);
		if (!SHARD_CHECK(r == 0, " send: %d", r))
			goto fail;
		if (at + 1 == PT_STASH + PT_BYTES) {
			struct keel_alloc_stats after;

			if (!SHARD_CHECK_EQ(keel_alloc_stats(keel_shard_alloc(), &after), 0))
				goto fail;
			atomic_store(&pt_held, after.bytes_in_use - pt_before.bytes_in_use);
			atomic_store(&pt_entries, keel__conn_queue_slices(c) - pt_entries_before);
			pt_hoard_free();
		}
		atomic_store(&pt_got, at + 1);
	}
	return;
fail:
	for (unsigned i = 0; i < n; i++)
		keel_slice_put(&s[i]);
	keel_conn_abort(c, -EIO);
}

static void
pt_close(struct keel_conn *c, int status)
{
	while (pt_nstash)
		keel_slice_put(&pt_stash[--pt_nstash]);
	count_close(c, status);
}

/* The most a TCP socket's send buffer grows to (tcp_wmem's third field), or 4 MiB. */
static uint64_t
tcp_wmem_max(void)
{
	FILE *f = fopen("/proc/sys/net/ipv4/tcp_wmem", "re");
	unsigned long lo, def, max = 4ul << 20;

	if (f) {
		if (fscanf(f, "%lu %lu %lu", &lo, &def, &max) != 3)
			max = 4ul << 20;
		fclose(f);
	}
	return max;
}

static const struct keel_conn_ops pt_ops = { .on_open = pt_open,
					     .on_data = pt_data,
					     .on_close = pt_close };

static void
pt_case(bool exhaust)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_net_config nc;
	struct keel_net_stats st;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	static uint8_t stash[PT_STASH];
	uint8_t *got;
	int fd, rcv = 4096;
	uint64_t total;
	struct srv s;

	/* Twice what the server's socket may buffer, and more: the queue stays. */
	pt_fill_len = 2 * tcp_wmem_max() + (2u << 20);
	pt_exhaust = exhaust;
	atomic_store(&pt_got, 0);
	atomic_store(&pt_pressed, 0);
	keel_net_config_init(&nc);
	nc.buf_count = PT_BUFS;
	nc.buf_size = 4096;
	nc.bulk_buf_size = 0;
	nc.high_watermark = 64u << 20; /* reading never pauses: every byte goes to send */
	nc.low_watermark = 32u << 20;
	cr_assert_eq(srv_start(&s, &o, &nc, &pt_ops), 0);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv)), 0);
	a.sin_port = htons(s.port);
	cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0, "connect: %s",
		     strerror(errno));
	cr_assert_eq(cli_write_all(fd, stash, sizeof(stash)), 0);
	WAIT_FOR(atomic_load(&pt_got) == PT_STASH, "the stash");
	for (uint32_t i = 0; i < PT_BYTES; i++) {
		uint8_t b = pat(pt_fill_len + i);

		cr_assert_eq(cli_write_all(fd, &b, 1), 0);
		WAIT_FOR(atomic_load(&pt_got) == PT_STASH + i + 1, "byte %u's receive", i);
	}
	cr_assert_eq(srv_net_stats(&s, 0, &st), 0);
	/* Every trickled byte took the path of a ring running low. */
	cr_assert_eq(atomic_load(&pt_pressed), PT_BYTES,
		     "premise: %u of %u bytes were of a ring "
		     "running low",
		     atomic_load(&pt_pressed), PT_BYTES);
	if (exhaust)
		cr_assert(pt_nhoard == 0 && pt_before.bytes_in_use > (60u << 20),
			  "premise: the memory was taken (%lu bytes in use)",
			  (unsigned long)pt_before.bytes_in_use);
	else
		cr_assert_geq(st.recv_copies, PT_BYTES, "the ring did not run low: %lu copies",
			      (unsigned long)st.recv_copies);
	/* Everything, in order: the write, then the echoed bytes. */
	rcv = 4 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
	total = pt_fill_len + PT_BYTES;
	got = malloc(total);
	cr_assert(got);
	cr_assert_eq(cli_read_all(fd, got, total), 0);
	for (uint64_t i = 0; i < total; i++)
		cr_assert_eq(got[i], pat(i), "byte %lu is %u, want %u", (unsigned long)i, got[i],
			     pat(i));
	free(got);
	close(fd);
	WAIT_FOR(atomic_load(&s.closes) == 1, "the server's on_close");
	cr_assert_eq(srv_stop(&s), 0);
	SHARD_CHECKS_PASSED();
	if (exhaust)
		return;
	/* One buffer of 512 bytes (NET_PRESSED_JOIN_BUF) for them all, in one queue entry or
	 * two; a buffer of 64 bytes and an entry each before. */
	cr_assert_leq(atomic_load(&pt_held), 512u, "%u bytes held %lu bytes of the shard's memory",
		      PT_BYTES, (unsigned long)atomic_load(&pt_held));
	cr_assert_leq(atomic_load(&pt_entries), 2u, "%u bytes took %u more queue entries", PT_BYTES,
		      atomic_load(&pt_entries));
}

Test(net_write, bytes_trickled_to_an_echo_on_a_pressed_ring_share_one_write_buffer)
{
	pt_case(false);
}

/* Without memory for the write buffer, the slice is copied as before or, without memory
 * for that either, stays in the ring: the send succeeds. Joining the write buffer first
 * returned -ENOMEM there (a review's find), which the echo answers with an abort, where
 * the copy's failure had left the slice queued. */
Test(net_write, a_pressed_small_slice_without_memory_is_still_sent)
{
	pt_case(true);
}
