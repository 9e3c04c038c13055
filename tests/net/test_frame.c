// SPDX-License-Identifier: MIT
/*
 * Framer tests: the core driven by hand with slices from a standalone allocator (no ring,
 * deterministic), a seeded property test with random split points, and end to end over
 * loopback (keel_frame_send -> framing echo server -> framing client).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <keel/alloc_runtime.h>
#include <keel/frame.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../net/net_internal.h"
#include "helpers.h"

/* ---- the core, by hand ---- */

struct got {
	struct keel_alloc *a;
	uint8_t *bytes; /* delivered payloads, back to back */
	size_t nbytes, cap;
	uint32_t lens[4096];
	unsigned nframes;
	unsigned max_slices;
	/* Pushed buffers' ranges: every delivered byte must lie inside one (no copy). */
	struct {
		const uint8_t *p;
		size_t len;
	} pushed[8192];
	unsigned npushed;
	bool outside;
	int fail_at; /* on_frame returns -ECANCELED for this frame number (1-based) */
	bool keep;   /* keep the first frame's slices in kept[] */
	struct keel_slice kept[64];
	unsigned nkept;
};

static bool
inside(struct got *g, const uint8_t *p, size_t len)
{
	for (unsigned i = 0; i < g->npushed; i++)
		if (p >= g->pushed[i].p && p + len <= g->pushed[i].p + g->pushed[i].len)
			return true;
	return false;
}

static int
collect(void *arg, struct keel_frame *fr)
{
	struct got *g = arg;
	uint32_t sum = 0;

	if (g->fail_at && (int)g->nframes + 1 == g->fail_at) {
		for (unsigned i = 0; i < fr->n; i++)
			keel_slice_put(&fr->s[i]);
		return -ECANCELED;
	}
	cr_assert_lt(g->nframes, 4096);
	g->lens[g->nframes++] = fr->len;
	if (fr->n > g->max_slices)
		g->max_slices = fr->n;
	for (unsigned i = 0; i < fr->n; i++) {
		struct keel_slice *s = &fr->s[i];

		cr_assert_gt(s->len, 0, "empty slice in a frame");
		if (!inside(g, s->data, s->len))
			g->outside = true;
		if (g->nbytes + s->len > g->cap) {
			g->cap = (g->nbytes + s->len) * 2;
			g->bytes = realloc(g->bytes, g->cap);
			cr_assert_not_null(g->bytes);
		}
		memcpy(g->bytes + g->nbytes, s->data, s->len);
		g->nbytes += s->len;
		sum += s->len;
		if (g->keep && g->nframes == 1 && g->nkept < 64)
			g->kept[g->nkept++] = *s; /* the reference moves to kept[] */
		else
			keel_slice_put(s);
	}
	cr_assert_eq(sum, fr->len);
	return 0;
}

static void
got_init_memory(struct got *g, uint64_t memory)
{
	struct keel_alloc_config cfg;

	memset(g, 0, sizeof(*g));
	memset(&cfg, 0, sizeof(cfg));
	cfg.memory = memory;
	cr_assert_eq(keel_alloc_create(&cfg, &g->a), 0);
	keel_alloc_bind_thread(g->a);
}

static void
got_init(struct got *g)
{
	got_init_memory(g, 64ull << 20);
}

static uint64_t
live(struct got *g)
{
	struct keel_alloc_stats st;
	keel_alloc_stats(g->a, &st);
	return st.buffers_live;
}

static void
got_fini(struct got *g)
{
	for (unsigned i = 0; i < g->nkept; i++)
		keel_slice_put(&g->kept[i]);
	cr_assert_eq(live(g), 0, "buffers leaked: %llu", (unsigned long long)live(g));
	keel_alloc_bind_thread(NULL);
	keel_alloc_destroy(g->a);
	free(g->bytes);
}

static struct keel_framer *
framer(struct got *g, enum keel_frame_kind kind, uint32_t max, keel_frame_measure_fn m)
{
	struct keel_framer_opts o = {
		.kind = kind, .max = max, .on_frame = collect, .measure = m, .arg = g
	};
	struct keel_framer *f;
	cr_assert_eq(keel_framer_create(&o, &f), 0);
	return f;
}

/* Push @len bytes of @p as one freshly allocated slice; returns the push's result. */
static int
push(struct got *g, struct keel_framer *f, const void *p, size_t len)
{
	struct keel_slice s;

	cr_assert_gt(len, 0);
	cr_assert_eq(keel_buf_alloc(g->a, len, &s), 0);
	memcpy(s.data, p, len);
	cr_assert_lt(g->npushed, 8192);
	g->pushed[g->npushed].p = s.data;
	g->pushed[g->npushed++].len = len;
	return keel_framer_push(f, &s);
}

static int
push_str(struct got *g, struct keel_framer *f, const char *str)
{
	return push(g, f, str, strlen(str));
}

static size_t
hdr32(uint8_t *out, uint32_t len)
{
	out[0] = (uint8_t)(len >> 24);
	out[1] = (uint8_t)(len >> 16);
	out[2] = (uint8_t)(len >> 8);
	out[3] = (uint8_t)len;
	return 4;
}

#define assert_frames(g, str)                                                         \
	do {                                                                          \
		cr_assert_eq((g)->nbytes, strlen(str), "got %zu bytes", (g)->nbytes); \
		cr_assert_eq(memcmp((g)->bytes, (str), (g)->nbytes), 0);              \
	} while (0)

/* A line trickled a byte per receive into one incrementally consumed buffer: each push is
 * the byte after the last one, in the same buffer, and is held as one slice with it.
 * Held a slice per byte, they cost 24 bytes each outside --memory and the line's scan
 * walked all of them on every push (quadratic in the line's length). Also: an empty slice
 * with no buffer ({0}) is accepted, as the header says, not put (an abort). */
Test(net_frame, bytes_pushed_one_after_another_are_held_as_one_slice)
{
	struct got g;
	struct keel_framer *f;
	struct keel_slice big, one, none = { 0 };
	const unsigned n = 40000;

	got_init(&g);
	f = framer(&g, KEEL_FRAME_LINE, 1u << 20, NULL);
	cr_assert_eq(keel_buf_alloc(g.a, n + 1, &big), 0);
	memset(big.data, 'x', n);
	big.data[n] = '\n';
	g.pushed[g.npushed].p = big.data;
	g.pushed[g.npushed++].len = n + 1;
	for (unsigned i = 0; i < n; i++) {
		cr_assert_eq(keel_slice_sub(&big, i, 1, &one), 0);
		cr_assert_eq(keel_framer_push(f, &one), 0);
	}
	cr_assert_eq(keel__framer_slices(f), 1, "%zu slices held for one line",
		     keel__framer_slices(f));
	cr_assert_eq(keel_framer_buffered(f), n);
	cr_assert_eq(keel_framer_push(f, &none), 0);
	cr_assert_eq(keel_slice_sub(&big, n, 1, &one), 0);
	cr_assert_eq(keel_framer_push(f, &one), 0);
	cr_assert_eq(g.nframes, 1);
	cr_assert_eq(g.lens[0], n);
	cr_assert(!g.outside, "a delivered byte outside the pushed buffer: copied");
	keel_slice_put(&big);
	keel_framer_destroy(f);
	/* A failed framer takes {0} too (it put it: an abort). */
	f = framer(&g, KEEL_FRAME_LINE, 4, NULL);
	cr_assert_eq(push_str(&g, f, "longer than four\n"), -EMSGSIZE);
	none = (struct keel_slice){ 0 };
	cr_assert_eq(keel_framer_push(f, &none), -EMSGSIZE);
	keel_framer_destroy(f);
	got_fini(&g);
}

Test(net_frame, create_rejects_bad_options)
{
	struct keel_framer_opts o = { .kind = KEEL_FRAME_LEN32 };
	struct keel_framer *f;

	cr_assert_eq(keel_framer_create(&o, &f), -EINVAL, "no on_frame");
	o.on_frame = collect;
	o.kind = 0;
	cr_assert_eq(keel_framer_create(&o, &f), -EINVAL, "no kind");
	o.kind = KEEL_FRAME_USER;
	cr_assert_eq(keel_framer_create(&o, &f), -EINVAL, "user without measure");
	o.kind = KEEL_FRAME_LINE;
	o.measure = (keel_frame_measure_fn)1;
	cr_assert_eq(keel_framer_create(&o, &f), -EINVAL, "measure for a built-in kind");
}

Test(net_frame, len32_frames_in_one_slice_and_split)
{
	struct got g;
	struct keel_framer *f;
	uint8_t b[64];
	size_t n = 0;

	got_init(&g);
	f = framer(&g, KEEL_FRAME_LEN32, 0, NULL);
	n += hdr32(b + n, 5);
	memcpy(b + n, "hello", 5), n += 5;
	n += hdr32(b + n, 6);
	memcpy(b + n, "world!", 6), n += 6;
	cr_assert_eq(push(&g, f, b, n), 0);
	cr_assert_eq(g.nframes, 2);
	cr_assert_eq(g.lens[0], 5);
	cr_assert_eq(g.lens[1], 6);
	/* A header split 1+3 and a payload split across three slices. */
	n = hdr32(b, 9);
	memcpy(b + n, "abcdefghi", 9), n += 9;
	cr_assert_eq(push(&g, f, b, 1), 0);
	cr_assert_eq(push(&g, f, b + 1, 3), 0);
	cr_assert_eq(keel_framer_buffered(f), 4);
	cr_assert_eq(push(&g, f, b + 4, 2), 0);
	cr_assert_eq(push(&g, f, b + 6, 4), 0);
	cr_assert_eq(g.nframes, 2);
	cr_assert_eq(push(&g, f, b + 10, 3), 0);
	cr_assert_eq(g.nframes, 3);
	cr_assert_eq(g.max_slices, 3);
	cr_assert_eq(keel_framer_buffered(f), 0);
	assert_frames(&g, "helloworld!abcdefghi");
	cr_assert(!g.outside, "a delivered slice does not point into a pushed buffer");
	keel_framer_destroy(f);
	got_fini(&g);
}

Test(net_frame, zero_length_frames)
{
	struct got g;
	struct keel_framer *f;
	uint8_t b[12];

	got_init(&g);
	f = framer(&g, KEEL_FRAME_LEN32, 0, NULL);
	hdr32(b, 0);
	hdr32(b + 4, 0);
	hdr32(b + 8, 0);
	cr_assert_eq(push(&g, f, b, 12), 0);
	cr_assert_eq(g.nframes, 3);
	cr_assert_eq(g.lens[2], 0);
	cr_assert_eq(g.max_slices, 0);
	keel_framer_destroy(f);
	f = framer(&g, KEEL_FRAME_LINE, 0, NULL);
	cr_assert_eq(push_str(&g, f, "\n\r\n"), 0);
	cr_assert_eq(g.nframes, 5);
	cr_assert_eq(g.lens[3] + g.lens[4], 0);
	keel_framer_destroy(f);
	got_fini(&g);
}

Test(net_frame, lines_lf_and_crlf_strip_the_terminator)
{
	struct got g;
	struct keel_framer *f;

	got_init(&g);
	f = framer(&g, KEEL_FRAME_LINE, 0, NULL);
	cr_assert_eq(push_str(&g, f, "a\r\nbb\nccc\r\n\nx\ry\n"), 0);
	cr_assert_eq(g.nframes, 5);
	cr_assert_eq(g.lens[0], 1);
	cr_assert_eq(g.lens[1], 2);
	cr_assert_eq(g.lens[2], 3);
	cr_assert_eq(g.lens[3], 0);
	cr_assert_eq(g.lens[4], 3, "a CR that is not before the LF is kept");
	/* CR and LF in different slices; a line over four slices. */
	cr_assert_eq(push_str(&g, f, "de"), 0);
	cr_assert_eq(push_str(&g, f, "f"), 0);
	cr_assert_eq(push_str(&g, f, "g\r"), 0);
	cr_assert_eq(g.nframes, 5);
	cr_assert_eq(push_str(&g, f, "\nrest"), 0);
	cr_assert_eq(g.nframes, 6);
	cr_assert_eq(g.lens[5], 4);
	cr_assert_eq(keel_framer_buffered(f), 4);
	assert_frames(&g, "abbcccx\rydefg");
	cr_assert(!g.outside);
	keel_framer_destroy(f); /* puts the partial "rest" */
	got_fini(&g);
}

/* A user protocol: 2-byte little-endian total length (header included), 0xffff is bad. */
static long
measure_le16(struct keel_framer *f, void *arg)
{
	uint8_t h[2];
	const uint8_t *p;
	unsigned len;

	if (keel_framer_peek(f, 0, h, 2) < 2)
		return 0;
	len = h[0] | h[1] << 8;
	if (len == 0xffff || len < 2)
		return -EPROTO;
	/* The cursor sees the same bytes, without copying. */
	cr_assert_geq(keel_framer_chunk(f, 0, &p), 1);
	cr_assert_eq(p[0], h[0]);
	return len;
}

Test(net_frame, user_measure_callback)
{
	struct got g;
	struct keel_framer *f;
	const uint8_t b[] = { 5, 0, 'a', 'b', 'c', 2, 0, 4, 0, 'x' };
	const uint8_t bad[] = { 0xff, 0xff, 1, 2, 3 };

	got_init(&g);
	f = framer(&g, KEEL_FRAME_USER, 0, measure_le16);
	cr_assert_eq(push(&g, f, b, 1), 0, "a split header: need more");
	cr_assert_eq(push(&g, f, b + 1, 9), 0);
	cr_assert_eq(g.nframes, 2);
	cr_assert_eq(g.lens[0], 5);
	cr_assert_eq(g.lens[1], 2);
	cr_assert_eq(keel_framer_buffered(f), 3);
	cr_assert_eq(push(&g, f, "y", 1), 0);
	cr_assert_eq(g.nframes, 3);
	cr_assert_eq(memcmp(g.bytes, "\5\0abc\2\0\4\0xy", 11), 0);
	cr_assert_eq(push(&g, f, bad, sizeof(bad)), -EPROTO);
	cr_assert_eq(keel_framer_error(f), -EPROTO);
	cr_assert_neq(strlen(keel_framer_reason(f)), 0);
	cr_assert_eq(keel_framer_buffered(f), 0, "a failed framer holds nothing");
	cr_assert_eq(push(&g, f, b, sizeof(b)), -EPROTO, "refuses input after an error");
	cr_assert_eq(g.nframes, 3);
	keel_framer_destroy(f);
	got_fini(&g);
}

Test(net_frame, peek_and_chunk_cross_slices)
{
	struct got g;
	struct keel_framer *f;
	const uint8_t *p;
	char buf[16];

	got_init(&g);
	f = framer(&g, KEEL_FRAME_LINE, 0, NULL);
	cr_assert_eq(push_str(&g, f, "ab"), 0);
	cr_assert_eq(push_str(&g, f, "cde"), 0);
	cr_assert_eq(push_str(&g, f, "f"), 0);
	cr_assert_eq(keel_framer_peek(f, 1, buf, 4), 4);
	cr_assert_eq(memcmp(buf, "bcde", 4), 0);
	cr_assert_eq(keel_framer_peek(f, 4, buf, 16), 2);
	cr_assert_eq(keel_framer_chunk(f, 3, &p), 2);
	cr_assert_eq(memcmp(p, "de", 2), 0);
	cr_assert(inside(&g, p, 2));
	cr_assert_eq(keel_framer_chunk(f, 6, &p), 0);
	keel_framer_destroy(f);
	got_fini(&g);
}

/* An offset near SIZE_MAX (a peer's 64-bit length added to a header's size) is past the
 * buffered bytes, also when the head slice is partly consumed: its sum with the consumed
 * part wrapped and landed on a frame already delivered. */
Test(net_frame, offsets_that_would_wrap_are_past_the_buffered_bytes)
{
	struct got g;
	struct keel_framer *f;
	const uint8_t *p = (const uint8_t *)"";
	char buf[16];

	got_init(&g);
	f = framer(&g, KEEL_FRAME_LINE, 0, NULL);
	cr_assert_eq(push_str(&g, f, "x\nhello"), 0);
	cr_assert_eq(g.nframes, 1);
	cr_assert_eq(keel_framer_buffered(f), 5);
	cr_assert_eq(keel_framer_peek(f, SIZE_MAX - 1, buf, 1), 0, "peeked '%c'", buf[0]);
	cr_assert_eq(keel_framer_peek(f, SIZE_MAX, buf, 16), 0);
	cr_assert_eq(keel_framer_chunk(f, SIZE_MAX, &p), 0);
	cr_assert_null(p);
	cr_assert_eq(keel_framer_peek(f, 5, buf, 16), 0);
	cr_assert_eq(keel_framer_peek(f, 4, buf, 16), 1);
	cr_assert_eq(buf[0], 'o');
	keel_framer_destroy(f);
	got_fini(&g);
}

Test(net_frame, max_size_len32_refused_from_the_header)
{
	struct got g;
	struct keel_framer *f;
	uint8_t b[4 + 1024];

	got_init(&g);
	f = framer(&g, KEEL_FRAME_LEN32, 1024, NULL);
	hdr32(b, 1024);
	memset(b + 4, 'z', 1024);
	cr_assert_eq(push(&g, f, b, sizeof(b)), 0, "exactly the maximum is fine");
	cr_assert_eq(g.nframes, 1);
	hdr32(b, 1025);
	cr_assert_eq(push(&g, f, b, 4), -EMSGSIZE, "known from the header alone");
	cr_assert(strstr(keel_framer_reason(f), "keel_framer_opts.max"),
		  "the reason names the setting: '%s'", keel_framer_reason(f));
	cr_assert_eq(keel_framer_buffered(f), 0);
	cr_assert_eq(live(&g), 0, "nothing buffered after the error");
	for (int i = 0; i < 100; i++)
		cr_assert_eq(push(&g, f, b + 4, 1000), -EMSGSIZE);
	cr_assert_eq(live(&g), 0);
	keel_framer_destroy(f);
	got_fini(&g);
}

/* A line may hold max bytes and a CR while it waits for its LF (docs/framing.md, "Maximum
 * frame size"): the CR is not refused as a byte past the maximum. */
Test(net_frame, a_line_of_max_bytes_and_its_cr_waits_for_the_lf)
{
	struct got g;
	struct keel_framer *f;
	int r;

	got_init(&g);
	f = framer(&g, KEEL_FRAME_LINE, 8, NULL);
	r = push_str(&g, f, "12345678\r");
	cr_assert_eq(r, 0, "max bytes and a CR wait for the LF: got %d (%s)", r,
		     keel_framer_reason(f));
	cr_assert_eq(g.nframes, 0);
	cr_assert_eq(keel_framer_buffered(f), 9);
	cr_assert_eq(push_str(&g, f, "\n"), 0);
	cr_assert_eq(g.nframes, 1);
	cr_assert_eq(g.lens[0], 8);
	assert_frames(&g, "12345678");
	cr_assert_eq(keel_framer_buffered(f), 0);
	cr_assert_eq(push_str(&g, f, "abcdefghij"), -EMSGSIZE, "10 bytes without a LF");
	cr_assert_eq(g.nframes, 1);
	cr_assert_eq(live(&g), 0);
	keel_framer_destroy(f);
	got_fini(&g);
}

Test(net_frame, max_size_line_and_user_never_buffer_unbounded)
{
	struct got g;
	struct keel_framer *f;
	uint8_t junk[1000];
	int r = 0, i;

	got_init(&g);
	memset(junk, 'j', sizeof(junk));
	f = framer(&g, KEEL_FRAME_LINE, 4096, NULL);
	for (i = 0; i < 1000 && r == 0; i++) {
		cr_assert_leq(keel_framer_buffered(f), 4096 + 1, "held past max + CR");
		r = push(&g, f, junk, sizeof(junk));
	}
	cr_assert_eq(r, -EMSGSIZE);
	cr_assert_eq(i, 5, "fails once more than max + 1 bytes wait for a LF");
	cr_assert_eq(live(&g), 0);
	keel_framer_destroy(f);
	/* A line of max + 1 bytes ending in LF (no CR) is too long as well. */
	f = framer(&g, KEEL_FRAME_LINE, 4, NULL);
	cr_assert_eq(push_str(&g, f, "abcd\r\n"), 0);
	cr_assert_eq(push_str(&g, f, "abcde\n"), -EMSGSIZE);
	cr_assert_eq(g.nframes, 1);
	keel_framer_destroy(f);
	/* User mode: "need more" with max bytes buffered means the frame is too long. */
	f = framer(&g, KEEL_FRAME_USER, 4096, measure_le16);
	r = push(&g, f, "\x00\x80", 2); /* 32 KiB announced */
	cr_assert_eq(r, -EMSGSIZE, "a measured length above max fails at once");
	keel_framer_destroy(f);
	got_fini(&g);
}

static long
measure_never(struct keel_framer *f, void *arg)
{
	return 0;
}

Test(net_frame, max_size_user_need_more_forever)
{
	struct got g;
	struct keel_framer *f;
	uint8_t junk[1000];
	int r = 0, i;

	got_init(&g);
	memset(junk, 'j', sizeof(junk));
	f = framer(&g, KEEL_FRAME_USER, 4096, measure_never);
	for (i = 0; i < 1000 && r == 0; i++)
		r = push(&g, f, junk, sizeof(junk));
	cr_assert_eq(r, -EMSGSIZE);
	cr_assert_eq(i, 5);
	cr_assert_eq(live(&g), 0);
	keel_framer_destroy(f);
	got_fini(&g);
}

/* "Need more" fails as soon as max bytes are buffered (docs/framing.md): the frame is then
 * at least max + 1 bytes, so the byte that makes max is refused, not the one after it. */
Test(net_frame, user_need_more_fails_at_exactly_max_buffered)
{
	struct got g;
	struct keel_framer *f;

	got_init(&g);
	f = framer(&g, KEEL_FRAME_USER, 8, measure_never);
	cr_assert_eq(push_str(&g, f, "1234567"), 0, "max - 1 bytes still wait");
	cr_assert_eq(keel_framer_buffered(f), 7);
	cr_assert_eq(push_str(&g, f, "8"), -EMSGSIZE, "need more with max bytes buffered");
	cr_assert_eq(keel_framer_error(f), -EMSGSIZE);
	cr_assert_eq(g.nframes, 0);
	cr_assert_eq(live(&g), 0);
	keel_framer_destroy(f);
	got_fini(&g);
}

Test(net_frame, on_frame_error_stops_the_framer)
{
	struct got g;
	struct keel_framer *f;

	got_init(&g);
	g.fail_at = 2;
	f = framer(&g, KEEL_FRAME_LINE, 0, NULL);
	cr_assert_eq(push_str(&g, f, "one\ntwo\nthree\n"), -ECANCELED);
	cr_assert_eq(g.nframes, 1);
	cr_assert_eq(keel_framer_error(f), -ECANCELED);
	cr_assert_eq(push_str(&g, f, "four\n"), -ECANCELED);
	cr_assert_eq(g.nframes, 1);
	keel_framer_destroy(f);
	got_fini(&g);
}

Test(net_frame, refcounts_follow_the_frames)
{
	struct got g;
	struct keel_framer *f;
	struct keel_slice whole, s;
	uint8_t *base;

	got_init(&g);
	g.keep = true;
	f = framer(&g, KEEL_FRAME_LINE, 0, NULL);
	cr_assert_eq(keel_buf_alloc(g.a, 16, &whole), 0);
	memcpy(whole.data, "aa\nbb\ncc", 8);
	cr_assert_eq(keel_slice_sub(&whole, 0, 8, &s), 0);
	keel_slice_put(&whole);
	base = s.data;
	g.pushed[g.npushed].p = base;
	g.pushed[g.npushed++].len = 8;
	cr_assert_eq(keel_framer_push(f, &s), 0);
	cr_assert_eq(g.nframes, 2);
	/* Held: the framer's reference (partial "cc") and the kept first frame. */
	cr_assert_eq(g.nkept, 1);
	cr_assert_eq(g.kept[0].data, base, "the frame is the pushed bytes themselves");
	cr_assert_eq(keel_slice_refs(&g.kept[0]), 2);
	keel_framer_destroy(f);
	cr_assert_eq(keel_slice_refs(&g.kept[0]), 1);
	cr_assert_eq(live(&g), 1);
	got_fini(&g); /* puts kept[0] and checks nothing is live */
}

/* ---- property: random frames, random split points ---- */

static uint64_t
rnd(uint64_t *st)
{
	uint64_t x = *st;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *st = x;
}

/* @reclaim: between pushes, now and then, the framer copies what it holds into buffers of
 * its own, as when the receive buffers run out (keel__framer_compact): the frames and their
 * bytes must be the same, though no longer the pushed buffers'. */
static void
property(enum keel_frame_kind kind, uint64_t seed, unsigned iters, bool reclaim)
{
	uint64_t st = seed;
	struct got g;
	size_t cap = 2 << 20;
	uint8_t *stream = malloc(cap), *want = malloc(cap);
	uint32_t *wlens = malloc(4096 * sizeof(*wlens));

	cr_assert(stream && want && wlens);
	got_init(&g);
	for (unsigned it = 0; it < iters; it++) {
		struct keel_framer *f =
			framer(&g, kind, 0, kind == KEEL_FRAME_USER ? measure_le16 : NULL);
		unsigned nf = 1 + rnd(&st) % 40, nsl = 0;
		size_t n = 0, w = 0, pos;

		g.nframes = 0;
		g.nbytes = 0;
		g.npushed = 0;
		g.max_slices = 0;
		for (unsigned i = 0; i < nf; i++) {
			/* Mostly small frames, some spanning many receive-sized slices. */
			uint32_t len = rnd(&st) % 8 == 0 ? rnd(&st) % 40000 : rnd(&st) % 300;
			bool crlf = rnd(&st) & 1;

			if (kind == KEEL_FRAME_USER && len < 2)
				len = 2;
			if (kind == KEEL_FRAME_USER && len > 60000)
				len = 60000;
			cr_assert_lt(n + len + 8, cap);
			if (kind == KEEL_FRAME_LEN32)
				n += hdr32(stream + n, len);
			for (uint32_t k = 0; k < len; k++) {
				uint8_t c = (uint8_t)rnd(&st);
				if (kind == KEEL_FRAME_LINE &&
				    (c == '\n' || (k == len - 1 && c == '\r')))
					c = 'L';
				stream[n + k] = c;
			}
			if (kind == KEEL_FRAME_USER) {
				stream[n] = (uint8_t)len;
				stream[n + 1] = (uint8_t)(len >> 8);
			}
			memcpy(want + w, stream + n, len);
			w += len;
			n += len;
			if (kind == KEEL_FRAME_LINE) {
				if (crlf)
					stream[n++] = '\r';
				stream[n++] = '\n';
			}
			wlens[i] = len;
		}
		/* Split at random points: 1-byte slices, medium, whole-stream, all mixed. */
		for (pos = 0; pos < n; nsl++) {
			size_t left = n - pos, take;
			switch (rnd(&st) % 4) {
			case 0:
				take = 1 + rnd(&st) % 3;
				break;
			case 1:
				take = 1 + rnd(&st) % 64;
				break;
			case 2:
				take = 1 + rnd(&st) % 16384;
				break;
			default:
				take = rnd(&st) % 16 == 0 ? left : 1 + rnd(&st) % 4096;
				break;
			}
			if (take > left)
				take = left;
			cr_assert_eq(push(&g, f, stream + pos, take), 0, "seed %llu iter %u",
				     (unsigned long long)seed, it);
			if (reclaim && rnd(&st) % 8 == 0)
				cr_assert_geq(keel__framer_compact(f, g.a), 0);
			/* Bounded: at most one frame (and its framing) plus one pushed slice. */
			cr_assert_leq(keel_framer_buffered(f), 40000 + 8 + take);
			pos += take;
		}
		cr_assert_eq(g.nframes, nf, "seed %llu iter %u: %u of %u frames",
			     (unsigned long long)seed, it, g.nframes, nf);
		for (unsigned i = 0; i < nf; i++)
			cr_assert_eq(g.lens[i], wlens[i], "seed %llu iter %u frame %u",
				     (unsigned long long)seed, it, i);
		cr_assert_eq(g.nbytes, w);
		cr_assert_eq(memcmp(g.bytes, want, w), 0, "seed %llu iter %u: bytes differ",
			     (unsigned long long)seed, it);
		cr_assert(reclaim || !g.outside, "seed %llu iter %u: a delivered slice was copied",
			  (unsigned long long)seed, it);
		cr_assert_eq(keel_framer_buffered(f), 0);
		keel_framer_destroy(f);
		cr_assert_eq(live(&g), 0, "seed %llu iter %u: buffers leaked",
			     (unsigned long long)seed, it);
	}
	/* With reclaims, some delivered frame came from the framer's copies (outside stays
	 * set once seen): a compact that copied nothing passed this test too. */
	cr_assert(!reclaim || g.outside, "seed %llu: no delivered slice was a reclaim's copy",
		  (unsigned long long)seed);
	got_fini(&g);
	free(stream);
	free(want);
	free(wlens);
}

Test(net_frame, property_len32_random_splits)
{
	property(KEEL_FRAME_LEN32, 0x6b65656c31ull, test_small() ? 100 : 400, false);
}
Test(net_frame, property_lines_random_splits)
{
	property(KEEL_FRAME_LINE, 0x6b65656c32ull, test_small() ? 100 : 400, false);
}
Test(net_frame, property_user_random_splits)
{
	property(KEEL_FRAME_USER, 0x6b65656c33ull, test_small() ? 100 : 400, false);
}
Test(net_frame, property_random_splits_with_reclaims)
{
	property(KEEL_FRAME_LEN32, 0x6b65656c34ull, test_small() ? 50 : 200, true);
	property(KEEL_FRAME_LINE, 0x6b65656c35ull, test_small() ? 50 : 200, true);
	property(KEEL_FRAME_USER, 0x6b65656c36ull, test_small() ? 50 : 200, true);
}

/* Reclaims of a frame larger than the allocator's largest buffer (4 MiB regions here): what
 * is held is copied into several buffers of the framer's own, the rest of the frame into
 * the last one's room, then held in pushed slices again and copied again; the frame is
 * delivered once, with its bytes, and nothing leaks. */
Test(net_frame, reclaims_of_a_frame_larger_than_one_buffer_keep_its_bytes)
{
	const size_t len = 10u << 20, step = 64u << 10;
	uint8_t *b = malloc(4 + len);
	uint64_t st = 0x72636c6dull;
	struct keel_framer *f;
	unsigned compactions = 0;
	struct got g;

	cr_assert_not_null(b);
	got_init(&g);
	cr_assert_eq(keel_alloc_buf_max(g.a), 4u << 20, "the test wants 4 MiB buffers at most");
	f = framer(&g, KEEL_FRAME_LEN32, 0, NULL);
	hdr32(b, (uint32_t)len);
	for (size_t i = 0; i < len; i++)
		b[4 + i] = (uint8_t)rnd(&st);
	for (size_t pos = 0; pos < 4 + len; pos += step) {
		size_t take = 4 + len - pos < step ? 4 + len - pos : step;

		cr_assert_eq(push(&g, f, b + pos, take), 0);
		if (pos == (6u << 20) || pos == (9u << 20)) {
			cr_assert_eq(keel__framer_compact(f, g.a), 1);
			cr_assert_leq(keel__framer_slices(f), 3, "%zu slices held after a reclaim",
				      keel__framer_slices(f));
			compactions++;
		}
	}
	cr_assert_eq(compactions, 2);
	cr_assert_eq(g.nframes, 1);
	cr_assert_eq(g.lens[0], len);
	cr_assert_eq(g.nbytes, len);
	cr_assert(!memcmp(g.bytes, b + 4, len), "the frame's bytes differ");
	cr_assert_eq(keel_framer_buffered(f), 0);
	keel_framer_destroy(f);
	cr_assert_eq(live(&g), 0, "buffers leaked");
	got_fini(&g);
	free(b);
}

/* A second reclaim of a long frame copies only what was held as it came since the first:
 * the buffers the first filled stay where they are. It copied everything again, its own
 * buffers too, so a reclaim needed twice the frame's memory: with 16 MiB (four 4 MiB regions)
 * 8 MiB copied into buffers of its own plus 2 MiB held since could not be reclaimed
 * (-ENOMEM, and the connection would be aborted), though 2 MiB more fit. The first copy
 * fills its two buffers exactly (8 MiB = 2 x keel_alloc_buf_max), so what follows finds no
 * room and is held as it came (a review's case). */
Test(net_frame, a_second_reclaim_copies_only_what_came_since_the_first)
{
	const size_t len = 12u << 20, step = 64u << 10;
	uint8_t *b = malloc(4 + len);
	uint64_t st = 0x73636f70ull;
	struct keel_framer *f;
	const uint8_t *p0, *p1;
	struct got g;
	size_t pos = 0;

	cr_assert_not_null(b);
	got_init_memory(&g, 16ull << 20);
	cr_assert_eq(keel_alloc_buf_max(g.a), 4u << 20, "the test wants 4 MiB buffers at most");
	f = framer(&g, KEEL_FRAME_LEN32, 0, NULL);
	hdr32(b, (uint32_t)len);
	for (size_t i = 0; i < len; i++)
		b[4 + i] = (uint8_t)rnd(&st);
	for (; pos < (8u << 20); pos += step)
		cr_assert_eq(push(&g, f, b + pos, step), 0);
	cr_assert_eq(keel__framer_compact(f, g.a), 1);
	cr_assert_eq(keel__framer_slices(f), 2);
	cr_assert_gt(keel_framer_chunk(f, 0, &p0), 0);
	for (unsigned i = 0; i < 32; i++, pos += step)
		cr_assert_eq(push(&g, f, b + pos, step), 0);
	cr_assert_eq(keel__framer_slices(f), 2 + 32,
		     "no room after an exact fill: held as it came");
	cr_assert_eq(keel__framer_compact(f, g.a), 1, "the second reclaim failed");
	cr_assert_gt(keel_framer_chunk(f, 0, &p1), 0);
	cr_assert_eq(p0, p1, "the bytes already in buffers of its own were copied again");
	cr_assert_eq(keel__framer_slices(f), 3);
	for (; pos < 4 + len; pos += step) {
		size_t take = 4 + len - pos < step ? 4 + len - pos : step;

		cr_assert_eq(push(&g, f, b + pos, take), 0);
		if (keel__framer_slices(f) > 8)
			cr_assert_geq(keel__framer_compact(f, g.a), 0);
	}
	cr_assert_eq(g.nframes, 1);
	cr_assert_eq(g.lens[0], len);
	cr_assert(!memcmp(g.bytes, b + 4, len), "the frame's bytes differ");
	keel_framer_destroy(f);
	got_fini(&g);
	free(b);
}

/* The room a reclaim leaves in its last buffer ends at a LEN32 frame's end, as the comment
 * of keel__framer_compact promises: it ended at the buffer's capacity, which the allocator
 * rounds up to a power of two (5,004 bytes asked, 8 KiB given), so the next frame's bytes
 * were copied there too instead of being held as they came. */
Test(net_frame, a_reclaims_room_ends_at_the_len32_frames_end)
{
	uint8_t b[4 + 5000 + 4 + 100];
	const uint8_t *p;
	struct keel_framer *f;
	struct got g;
	size_t n;

	got_init(&g);
	f = framer(&g, KEEL_FRAME_LEN32, 0, NULL);
	n = hdr32(b, 5000);
	memset(b + n, 'a', 5000);
	n += 5000;
	n += hdr32(b + n, 100);
	memset(b + n, 'b', 100);
	cr_assert_eq(push(&g, f, b, 4 + 1000), 0);
	cr_assert_eq(keel__framer_compact(f, g.a), 1);
	/* The rest of the first frame and the start of the second, in one receive. */
	cr_assert_eq(push(&g, f, b + 4 + 1000, 4000 + 4 + 50), 0);
	cr_assert_eq(g.nframes, 1);
	cr_assert_eq(keel_framer_buffered(f), 54);
	cr_assert_gt(keel_framer_chunk(f, 0, &p), 0);
	cr_assert(inside(&g, p, 1),
		  "the second frame's start was copied into the reclaim's buffer");
	keel_framer_destroy(f);
	got_fini(&g);
}

/* A reclaim's copy is sized by the bytes that arrived, not by the length a peer's header
 * announces: a LEN32 header alone, announcing 16 MiB, costs a few KiB of --memory. It cost a
 * whole buffer of keel_alloc_buf_max (4 MiB), so a peer's connections each sending a header
 * could take the shard's memory at the next reclaim. */
Test(net_frame, a_reclaim_copies_what_arrived_not_what_a_header_announces)
{
	struct keel_alloc_stats before, after;
	struct keel_framer *f;
	struct got g;
	uint8_t h[4];

	got_init(&g);
	f = framer(&g, KEEL_FRAME_LEN32, 0, NULL);
	hdr32(h, KEEL_FRAME_MAX_DEFAULT);
	cr_assert_eq(push(&g, f, h, sizeof(h)), 0);
	keel_alloc_stats(g.a, &before);
	cr_assert_eq(keel__framer_compact(f, g.a), 1);
	keel_alloc_stats(g.a, &after);
	cr_assert_leq(after.bytes_in_use, before.bytes_in_use + (16u << 10),
		      "a 4-byte header's copy took %llu bytes",
		      (unsigned long long)(after.bytes_in_use - before.bytes_in_use));
	cr_assert_eq(keel_framer_buffered(f), 4);
	keel_framer_destroy(f);
	cr_assert_eq(live(&g), 0);
	got_fini(&g);
}

/* Short of memory for a reclaim's whole room, the buffer it falls back to still has room for
 * 4 KiB: it had room only for the bytes taken, so a peer trickling a line a byte per receive
 * while --memory ran low made a buffer of the framer's own per byte, each with its
 * bookkeeping in malloc, outside --memory (an own_id and a slot of the slice queue, copied at
 * every reclaim): 201 buffers for 201 bytes. */
Test(net_frame, a_reclaim_short_of_memory_still_takes_room_for_4_kib)
{
	struct keel_framer *f;
	struct got g;
	char line[202];

	memset(line, 'x', 201);
	line[201] = '\n';
	got_init(&g);
	f = framer(&g, KEEL_FRAME_LINE, 0, NULL);
	for (unsigned i = 0; i < 201; i++) {
		cr_assert_eq(push(&g, f, line + i, 1), 0);
		atomic_store(&keel__frame_fail_room, 1); /* the whole room cannot be had */
		cr_assert_geq(keel__framer_compact(f, g.a), 0, "reclaim %u failed", i);
	}
	atomic_store(&keel__frame_fail_room, 0);
	cr_assert_eq(keel_framer_buffered(f), 201);
	cr_assert_eq(keel__framer_slices(f), 1, "%zu buffers of its own for 201 bytes",
		     keel__framer_slices(f));
	cr_assert_eq(push(&g, f, line + 201, 1), 0);
	cr_assert_eq(g.nframes, 1);
	cr_assert_eq(g.lens[0], 201);
	cr_assert(!memcmp(g.bytes, line, 201), "the line's bytes differ");
	keel_framer_destroy(f);
	cr_assert_eq(live(&g), 0);
	got_fini(&g);
}

/* A reclaim right after another, nothing pushed between: the framer holds only copies of
 * its own (here several, the frame being larger than one buffer), nothing of the receive
 * buffers, and copies nothing again. It copied the whole partial frame again at every
 * reclaim of the shard (its early return looked for one buffer of its own only). */
Test(net_frame, a_reclaim_with_nothing_pushed_since_the_last_copies_nothing)
{
	const size_t len = 10u << 20, held = 6u << 20, step = 64u << 10;
	uint8_t *b = calloc(1, 4 + len);
	struct keel_framer *f;
	struct got g;

	cr_assert_not_null(b);
	got_init(&g);
	f = framer(&g, KEEL_FRAME_LEN32, 0, NULL);
	hdr32(b, (uint32_t)len);
	for (size_t pos = 0; pos < held; pos += step)
		cr_assert_eq(push(&g, f, b + pos, step), 0);
	cr_assert_eq(keel__framer_compact(f, g.a), 1);
	cr_assert_gt(keel__framer_slices(f), 1, "the test wants several buffers of its own");
	cr_assert_eq(keel__framer_compact(f, g.a), 0, "copied again with nothing pushed");
	cr_assert_eq(push(&g, f, b + held, step), 0); /* into the room of the last copy */
	cr_assert_eq(keel__framer_compact(f, g.a), 0, "a push into the copy's room is no ring's");
	keel_framer_destroy(f);
	cr_assert_eq(live(&g), 0);
	got_fini(&g);
	free(b);
}

/* ---- end to end over loopback ---- */

struct e2e {
	struct keel_runtime *rt;
	struct keel_listener *l;
	uint16_t port;
	bool with_client;
	uint64_t rng;
	unsigned frames, sent, echoed, bad;
	uint8_t *cur; /* the frame in flight (lock-step: one at a time) */
	uint32_t curlen;
	struct keel_net_stats ns;
	_Atomic int srv_closed, cli_closed, srv_status, cli_status, start_err;
};

static int
srv_frame(void *arg, struct keel_frame *fr)
{
	struct keel_conn *c = arg;
	int r = keel_frame_send(c, fr->s, fr->n);

	if (r < 0)
		for (unsigned i = 0; i < fr->n; i++)
			if (fr->s[i].buf)
				keel_slice_put(&fr->s[i]);
	return r < 0 ? r : 0;
}

static void
attach(struct keel_conn *c, keel_frame_fn fn)
{
	struct keel_framer_opts o = { .kind = KEEL_FRAME_LEN32, .on_frame = fn, .arg = c };
	struct keel_framer *f;
	int r = keel_framer_create(&o, &f);

	if (r < 0) {
		keel_conn_abort(c, r);
		return;
	}
	keel_conn_set_user(c, f);
}

static void
framed_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct keel_framer *f = keel_conn_user(c);

	if (!f) {
		for (unsigned i = 0; i < n; i++)
			keel_slice_put(&s[i]);
		return;
	}
	keel_framer_on_data(f, c, s, n);
}

static void
srv_open(struct keel_conn *c)
{
	attach(c, srv_frame);
}

static void
srv_close(struct keel_conn *c, int status)
{
	struct e2e *e = keel_conn_app(c);

	keel_framer_destroy(keel_conn_user(c));
	atomic_store(&e->srv_status, status);
	atomic_fetch_add(&e->srv_closed, 1);
}

static const struct keel_conn_ops srv_ops = { .on_open = srv_open,
					      .on_data = framed_data,
					      .on_close = srv_close };

static void
send_next(struct keel_conn *c)
{
	struct e2e *e = keel_conn_app(c);
	struct keel_slice sl[16];
	unsigned n = 0;
	uint32_t off = 0;
	int r;

	if (e->sent == e->frames) {
		keel_net_stats(keel_this_shard(), &e->ns);
		keel_conn_close(c);
		return;
	}
	/* Zero-length, small, and several-receive-buffer frames. */
	switch (rnd(&e->rng) % 4) {
	case 0:
		e->curlen = (uint32_t)(rnd(&e->rng) % 4);
		break;
	case 1:
		e->curlen = (uint32_t)(rnd(&e->rng) % 2000);
		break;
	default:
		e->curlen = (uint32_t)(rnd(&e->rng) % 100000);
		break;
	}
	for (uint32_t k = 0; k < e->curlen; k++)
		e->cur[k] = (uint8_t)rnd(&e->rng);
	/* Payload slices of at most 8 KiB: below the SEND_ZC threshold (see docs). */
	while (off < e->curlen) {
		uint32_t len = e->curlen - off > 8192 ? 8192 : e->curlen - off;
		if (keel_buf_alloc(keel_shard_alloc(), len, &sl[n]) < 0)
			break;
		memcpy(sl[n].data, e->cur + off, len);
		off += len;
		n++;
	}
	r = keel_frame_send(c, sl, n);
	if (off < e->curlen || r < 0) {
		for (unsigned i = 0; i < n; i++)
			if (sl[i].buf)
				keel_slice_put(&sl[i]);
		e->bad++;
		keel_conn_abort(c, r < 0 ? r : -ENOMEM);
		return;
	}
	e->sent++;
}

static int
cli_frame(void *arg, struct keel_frame *fr)
{
	struct keel_conn *c = arg;
	struct e2e *e = keel_conn_app(c);
	uint32_t off = 0;

	if (fr->len != e->curlen)
		e->bad++;
	for (unsigned i = 0; i < fr->n; i++) {
		if (off + fr->s[i].len > e->curlen ||
		    memcmp(fr->s[i].data, e->cur + off, fr->s[i].len))
			e->bad++;
		off += fr->s[i].len;
		keel_slice_put(&fr->s[i]);
	}
	e->echoed++;
	send_next(c);
	return 0;
}

static void
cli_open(struct keel_conn *c)
{
	attach(c, cli_frame);
	send_next(c);
}

static void
cli_close(struct keel_conn *c, int status)
{
	struct e2e *e = keel_conn_app(c);

	keel_framer_destroy(keel_conn_user(c));
	atomic_store(&e->cli_status, status);
	atomic_fetch_add(&e->cli_closed, 1);
}

static const struct keel_conn_ops cli_ops = { .on_open = cli_open,
					      .on_data = framed_data,
					      .on_close = cli_close };

static void
e2e_start_shard(void *arg)
{
	struct e2e *e = arg;
	struct keel_conn *c;
	int r = keel_listener_start(e->l);

	if (r == 0 && e->with_client)
		r = keel_conn_connect("127.0.0.1", e->port, KEEL_S(5), &cli_ops, e, &c);
	if (r < 0) {
		atomic_store(&e->start_err, r);
		keel_stop(r);
	}
}

/* One shard listening on loopback with the server callbacks @ops and the network
 * configuration @nc (NULL: the defaults). */
static void
e2e_start_cfg(struct e2e *e, const struct keel_conn_ops *ops, const struct keel_net_config *cfg)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_net_config nc;
	struct keel_listen_opts lo = { .addr = "127.0.0.1" };

	keel_net_config_init(&nc);
	if (cfg)
		nc = *cfg;
	cr_assert_eq(keel_net_config_set(&nc), 0);
	cr_assert_eq(keel_runtime_create(&o, &e->rt), 0);
	cr_assert_eq(keel_listener_create(&lo, 1, ops, e, &e->l), 0);
	e->port = keel_listener_port(e->l);
	cr_assert_eq(keel_runtime_start(e->rt, e2e_start_shard, e), 0);
}

static void
e2e_start_with(struct e2e *e, const struct keel_conn_ops *ops)
{
	e2e_start_cfg(e, ops, NULL);
}

static void
e2e_start(struct e2e *e)
{
	e2e_start_with(e, &srv_ops);
}

/* Wait for @flag to reach @want (or for the start to fail); fails the test naming @what
 * after TEST_WAIT_MS. */
static void
e2e_wait(struct e2e *e, _Atomic int *flag, int want, const char *what)
{
	WAIT_FOR(atomic_load(flag) >= want || atomic_load(&e->start_err), "%s", what);
}

static void
e2e_stop(struct e2e *e)
{
	keel_runtime_stop(e->rt, 0);
	cr_assert_eq(keel_runtime_join(e->rt), 0);
	keel_runtime_destroy(e->rt);
	keel_listener_destroy(e->l);
}

Test(net_frame, loopback_frame_send_echo)
{
	struct e2e e;

	memset(&e, 0, sizeof(e));
	e.with_client = true;
	e.rng = 0x6b65656c34ull;
	e.frames = test_small() ? 50 : 300;
	e.cur = malloc(100000);
	cr_assert_not_null(e.cur);
	e2e_start(&e);
	e2e_wait(&e, &e.srv_closed, 1, "the server's on_close");
	e2e_wait(&e, &e.cli_closed, 1, "the client's on_close");
	e2e_stop(&e);
	cr_assert_eq(atomic_load(&e.start_err), 0);
	cr_assert_eq(e.echoed, e.frames, "%u of %u frames came back", e.echoed, e.frames);
	cr_assert_eq(e.bad, 0, "frames came back different");
	cr_assert_eq(atomic_load(&e.cli_status), 0);
	cr_assert_eq(atomic_load(&e.srv_status), 0);
	/*
	 * One send per frame: lock-step, each side sent @frames framed messages, each as one
	 * header + payload; only a short send (the kernel took part) adds one.
	 */
	cr_assert_eq(e.ns.sends_zc, 0);
	cr_assert_geq(e.ns.sends, 2ull * e.frames);
	cr_assert_leq(e.ns.sends, 2ull * e.frames + e.ns.short_sends, "sends %llu short %llu",
		      (unsigned long long)e.ns.sends, (unsigned long long)e.ns.short_sends);
	/* Each send offered at least one buffer, each frame at least its 4-byte header. */
	cr_assert_geq(e.ns.send_iovs, e.ns.sends);
	cr_assert_geq(e.ns.send_bytes, 2ull * e.frames * 4);
	free(e.cur);
}

Test(net_frame, loopback_oversized_frame_closes_with_emsgsize)
{
	struct e2e e;
	uint8_t b[4 + 64], in[4];
	int fd, r;

	memset(&e, 0, sizeof(e));
	e2e_start(&e);
	fd = cli_connect(e.port);
	cr_assert_geq(fd, 0);
	hdr32(b, KEEL_FRAME_MAX_DEFAULT + 1);
	memset(b + 4, 'x', 64);
	cr_assert_eq(cli_write_all(fd, b, sizeof(b)), 0);
	r = cli_read_all(fd, in, sizeof(in));
	cr_assert(r == -EPIPE || r == -ECONNRESET, "the server closes: got %d", r);
	e2e_wait(&e, &e.srv_closed, 1, "the server's on_close");
	cr_assert_eq(atomic_load(&e.srv_status), -EMSGSIZE);
	close(fd);
	e2e_stop(&e);
}

/* One frame larger than all the shard's receive buffers together (16 of 16 KiB, no bulk
 * ring). The framer holds a frame's received slices until it is whole, so before, the ring
 * ran dry with the frame unfinished: nothing more could be received on any connection of
 * the shard, the frame never completed, and the client's write stalled. Now, when the
 * buffers run out, the framer copies what it holds into a buffer of its own and the rest
 * of the frame goes there: the frame is echoed whole, and a second connection is served
 * after it. */
#define BIG_FRAME (1u << 20)
Test(net_frame, a_frame_larger_than_the_receive_buffers_arrives_and_starves_no_one)
{
	struct keel_net_config nc;
	struct keel_net_stats st;
	struct e2e e;
	uint8_t *out = malloc(4 + BIG_FRAME), *in = malloc(4 + BIG_FRAME), small[9], back[9];
	uint64_t x = 0x6672616d65ull;
	int a, b;

	cr_assert(out && in);
	keel_net_config_init(&nc);
	nc.buf_count = 16;
	nc.bulk_buf_size = 0;
	memset(&e, 0, sizeof(e));
	e2e_start_cfg(&e, &srv_ops, &nc);
	hdr32(out, BIG_FRAME);
	for (uint32_t i = 0; i < BIG_FRAME; i++)
		out[4 + i] = (uint8_t)rnd(&x);
	a = cli_connect(e.port);
	b = cli_connect(e.port);
	cr_assert(a >= 0 && b >= 0);
	cr_assert_eq(cli_write_all(a, out, 4 + BIG_FRAME), 0,
		     "the server stopped reading the frame (its receive buffers ran out)");
	cr_assert_eq(cli_read_all(a, in, 4 + BIG_FRAME), 0, "the frame did not come back");
	cr_assert(!memcmp(in, out, 4 + BIG_FRAME), "the frame came back different");
	hdr32(small, 5);
	memcpy(small + 4, "hello", 5);
	cr_assert_eq(cli_write_all(b, small, sizeof(small)), 0);
	cr_assert_eq(cli_read_all(b, back, sizeof(back)), 0, "the second connection starved");
	cr_assert(!memcmp(back, small, sizeof(small)));
	cr_assert_eq(rt_net_stats(e.rt, 0, &st), 0);
	cr_assert_gt(st.enobufs, 0, "the buffers never ran out: the test shows nothing");
	cr_assert_gt(st.frame_reclaims, 0);
	close(a);
	close(b);
	e2e_wait(&e, &e.srv_closed, 2, "the server's on_close");
	e2e_stop(&e);
	free(out);
	free(in);
}

/* One shard with 16 receive buffers, no bulk ring and 8 MiB of --memory, serving @ops. */
static void
e2e_start_tight(struct e2e *e, const struct keel_conn_ops *ops)
{
	struct keel_net_config nc;
	struct keel_opts o = net_test_opts(1);
	struct keel_listen_opts lo = { .addr = "127.0.0.1" };

	keel_net_config_init(&nc);
	nc.buf_count = 16;
	nc.bulk_buf_size = 0;
	cr_assert_eq(keel_net_config_set(&nc), 0);
	o.memory = 8ull << 20;
	memset(e, 0, sizeof(*e));
	cr_assert_eq(keel_runtime_create(&o, &e->rt), 0);
	cr_assert_eq(keel_listener_create(&lo, 1, ops, e, &e->l), 0);
	e->port = keel_listener_port(e->l);
	cr_assert_eq(keel_runtime_start(e->rt, e2e_start_shard, e), 0);
}

/* The same with too little --memory for the copy (8 MiB, a 12 MiB frame): the frame fails
 * with -ENOMEM, its buffers go back, and its connection is aborted at its next push, the
 * reason logged. Before, the failed framer dropped what came next without a word and the
 * connection stayed open, its peer waiting for a reply that would never come. */
Test(net_frame, a_frame_the_copy_has_no_memory_for_aborts_its_connection)
{
	const uint32_t len = 12u << 20;
	uint8_t *out = calloc(1, 4 + len);
	struct e2e e;
	int a, r;

	cr_assert_not_null(out);
	e2e_start_tight(&e, &srv_ops);
	hdr32(out, len);
	a = cli_connect(e.port);
	cr_assert_geq(a, 0);
	r = cli_write_all(a, out, 4 + len);
	/* The whole frame can fit in the two sockets' buffers before the abort (1 of 24 runs
	 * here): the reset then shows on a read, which the server never answers. */
	if (r == 0) {
		uint8_t c;

		r = cli_read_all(a, &c, 1);
	}
	cr_assert(r == -EPIPE || r == -ECONNRESET,
		  "the write, or the read after it, ended with %d (%s), not a reset", r,
		  strerror(-r));
	e2e_wait(&e, &e.srv_closed, 1, "the server's on_close");
	cr_assert_eq(atomic_load(&e.srv_status), -ENOMEM);
	close(a);
	e2e_stop(&e);
	free(out);
}

/* ---- two framers on one connection: a failed reclaim of either aborts it ---- */

/* An application may push one connection's data through several framers (a protocol that
 * switches framing). Framer A holds the start of a long frame, then framer B the start of
 * a short one; the shard's memory is then all taken but one 64 KiB block, and a second
 * connection (Y), whose slices the application keeps, runs the receive buffers out. The
 * reclaim copies B's few bytes and has no room for A's 100 KiB: A's frame fails, and the
 * connection must be aborted then, since its peer, which sent all it will, waits. Before,
 * the connection knew only the framer that listed itself last (B), so A's failure only
 * marked A for an abort at its next push, which never came. */
#define TF_A_BYTES (100u << 10)
#define TF_EXHAUST 256u
#define TF_HOLD    512u

static struct {
	struct keel_framer *a, *b;
	struct keel_conn *x;
	_Atomic int route, opened, x_closed, x_status, y_closed;
	_Atomic long held_a, held_b, y_bytes;
	struct keel_slice spent[TF_EXHAUST], y_held[TF_HOLD];
	unsigned nspent, ny;
	_Atomic int exhausted; /* 1: done, leaving one 64 KiB block; -1: nothing could be had */
} tf;

static int
tf_frame(void *arg, struct keel_frame *fr)
{
	(void)arg;
	for (unsigned i = 0; i < fr->n; i++)
		if (fr->s[i].buf)
			keel_slice_put(&fr->s[i]);
	return 0;
}

/* Take the shard's memory, large blocks first, and give one 64 KiB block back. */
static void
tf_exhaust(void)
{
	static const size_t sizes[] = { 1u << 20, 64u << 10 };
	struct keel_alloc *a = keel_shard_alloc();

	for (unsigned k = 0; k < 2; k++)
		while (tf.nspent < TF_EXHAUST &&
		       keel_buf_alloc(a, sizes[k], &tf.spent[tf.nspent]) == 0)
			tf.nspent++;
	if (tf.nspent < 2 || tf.spent[tf.nspent - 1].len != 64u << 10) {
		atomic_store(&tf.exhausted, -1);
		return;
	}
	keel_slice_put(&tf.spent[--tf.nspent]);
	atomic_store(&tf.exhausted, 1);
}

static void
tf_open(struct keel_conn *c)
{
	struct keel_framer_opts o = { .kind = KEEL_FRAME_LEN32, .on_frame = tf_frame };

	if (atomic_fetch_add(&tf.opened, 1) == 0) {
		tf.x = c;
		if (keel_framer_create(&o, &tf.a) < 0 || keel_framer_create(&o, &tf.b) < 0)
			keel_conn_abort(c, -ENOMEM);
	}
}

static void
tf_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	if (c == tf.x) {
		int route = atomic_load(&tf.route);

		if (route == 1 && !atomic_load(&tf.exhausted))
			tf_exhaust();
		keel_framer_on_data(route ? tf.b : tf.a, c, s, n);
		atomic_store(&tf.held_a, (long)keel_framer_buffered(tf.a));
		atomic_store(&tf.held_b, (long)keel_framer_buffered(tf.b));
		return;
	}
	for (unsigned i = 0; i < n; i++) { /* Y: kept until X closes: the buffers run out */
		atomic_fetch_add(&tf.y_bytes, (long)s[i].len);
		if (tf.ny < TF_HOLD && !atomic_load(&tf.x_closed))
			tf.y_held[tf.ny++] = s[i];
		else
			keel_slice_put(&s[i]);
	}
}

static void
tf_close(struct keel_conn *c, int status)
{
	if (c == tf.x) {
		while (tf.nspent)
			keel_slice_put(&tf.spent[--tf.nspent]);
		keel_framer_destroy(tf.a);
		keel_framer_destroy(tf.b);
		atomic_store(&tf.x_status, status);
		atomic_store(&tf.x_closed, 1);
	}
	while (tf.ny) /* Y's go back once X is gone (or Y), so that Y can read on */
		keel_slice_put(&tf.y_held[--tf.ny]);
	if (c != tf.x)
		atomic_store(&tf.y_closed, 1);
}

static const struct keel_conn_ops tf_ops = { .on_open = tf_open,
					     .on_data = tf_data,
					     .on_close = tf_close };

Test(net_frame, a_failed_reclaim_of_either_framer_of_a_connection_aborts_it)
{
	struct e2e e;
	uint8_t *a_bytes = calloc(1, 4 + TF_A_BYTES), b_bytes[4 + 10] = { 0 };
	uint8_t *y_bytes = calloc(1, 512u << 10);
	int x, y;

	cr_assert(a_bytes && y_bytes);
	memset(&tf, 0, sizeof(tf));
	e2e_start_tight(&e, &tf_ops);
	x = cli_connect(e.port);
	cr_assert_geq(x, 0);
	WAIT_FOR(atomic_load(&tf.opened) == 1, "X's on_open");
	y = cli_connect(e.port);
	cr_assert_geq(y, 0);
	WAIT_FOR(atomic_load(&tf.opened) == 2, "Y's on_open");
	/* A: the start of a 1 MiB frame, 100 KiB of it. */
	hdr32(a_bytes, 1u << 20);
	cr_assert_eq(cli_write_all(x, a_bytes, 4 + TF_A_BYTES), 0);
	WAIT_FOR(atomic_load(&tf.held_a) == 4 + TF_A_BYTES, "framer A holding %u bytes (%ld)",
		 4 + TF_A_BYTES, atomic_load(&tf.held_a));
	/* B: the start of a 1,000-byte frame, after which the memory is taken. */
	atomic_store(&tf.route, 1);
	hdr32(b_bytes, 1000);
	cr_assert_eq(cli_write_all(x, b_bytes, sizeof(b_bytes)), 0);
	WAIT_FOR(atomic_load(&tf.held_b) == (long)sizeof(b_bytes), "framer B holding %zu bytes",
		 sizeof(b_bytes));
	cr_assert_eq(atomic_load(&tf.exhausted), 1, "the shard's memory could not be taken");
	cr_assert_eq(atomic_load(&tf.x_closed), 0);
	/* Y runs the receive buffers out; X's peer sends nothing more. */
	cr_assert_eq(cli_write_all(y, y_bytes, 512u << 10), 0);
	WAIT_FOR(
		atomic_load(&tf.x_closed),
		"X was not aborted when its framer A's reclaim failed (A held %ld at its last push, B %ld)",
		atomic_load(&tf.held_a), atomic_load(&tf.held_b));
	cr_assert_eq(atomic_load(&tf.x_status), -ENOMEM);
	close(x);
	close(y);
	WAIT_FOR(atomic_load(&tf.y_closed), "Y's on_close");
	e2e_stop(&e);
	free(a_bytes);
	free(y_bytes);
}

/* ---- a callback that closes the connection sees no later frame of it ---- */

static _Atomic int quit_closed, quit_after; /* closed; frames delivered after the close */

/* The first frame is answered (its bytes echoed), then the connection is closed, as a
 * QUIT is; a frame delivered after that would be answered with -EPIPE, aborting the
 * connection and dropping the reply queued before the close. */
static int
quit_frame(void *arg, struct keel_frame *fr)
{
	struct keel_conn *c = arg;
	int r;

	if (atomic_load(&quit_closed))
		atomic_fetch_add(&quit_after, 1);
	r = keel_frame_send(c, fr->s, fr->n);
	if (r < 0)
		for (unsigned i = 0; i < fr->n; i++)
			if (fr->s[i].buf)
				keel_slice_put(&fr->s[i]);
	if (r == 0) {
		atomic_store(&quit_closed, 1);
		keel_conn_close(c);
	}
	return r;
}

static void
quit_open(struct keel_conn *c)
{
	attach(c, quit_frame);
}

static _Atomic int quit_ret = -1;   /* keel_framer_on_data's return: 0 after a clean close */
static _Atomic long quit_held = -1; /* what the framer held after it */

static void
quit_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	atomic_store(&quit_ret, keel_framer_on_data(keel_conn_user(c), c, s, n));
	atomic_store(&quit_held, (long)keel_framer_buffered(keel_conn_user(c)));
}

static const struct keel_conn_ops quit_ops = { .on_open = quit_open,
					       .on_data = quit_data,
					       .on_close = srv_close };

Test(net_frame, frames_after_a_close_in_the_callback_are_not_delivered)
{
	struct e2e e;
	uint8_t b[4 + 4 + 4 + 1], in[8], more;
	size_t n = 0;
	int fd;

	memset(&e, 0, sizeof(e));
	atomic_store(&quit_after, 0);
	atomic_store(&quit_closed, 0);
	atomic_store(&quit_ret, -1);
	atomic_store(&quit_held, -1);
	e2e_start_with(&e, &quit_ops);
	fd = cli_connect(e.port);
	cr_assert_geq(fd, 0);
	/* Two frames in one write: one receive, one on_data. */
	n += hdr32(b + n, 4);
	memcpy(b + n, "QUIT", 4);
	n += 4;
	n += hdr32(b + n, 1);
	b[n++] = 'X';
	cr_assert_eq(cli_write_all(fd, b, n), 0);
	cr_assert_eq(cli_read_all(fd, in, sizeof(in)), 0, "the reply queued before the close");
	cr_assert_eq(memcmp(in + 4, "QUIT", 4), 0);
	cr_assert_eq(cli_read_all(fd, &more, 1), -EPIPE, "end of stream after the reply");
	close(fd); /* the end of ours: a graceful close waits for it */
	e2e_wait(&e, &e.srv_closed, 1, "the server's on_close");
	cr_assert_eq(atomic_load(&e.srv_status), 0, "a graceful close, not an abort");
	cr_assert_eq(atomic_load(&quit_after), 0, "frames delivered after the close");
	cr_assert_eq(atomic_load(&quit_ret), 0, "keel_framer_on_data returned %d",
		     atomic_load(&quit_ret));
	/* ... and the frame after the close is not held until on_close either (it was, with
	 * its receive buffer, while the graceful close waited for the peer) */
	cr_assert_eq(atomic_load(&quit_held), 0, "the framer held %ld bytes after the close",
		     atomic_load(&quit_held));
	e2e_stop(&e);
}

/* An empty slice ({0}, as keel_conn_send leaves one it took) after the frame whose callback
 * closes: keel_framer_push takes one (nothing to put), but the puts of what came after the
 * close put every slice, and a put of no buffer aborted the process. */
static void
quit_empty_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct keel_slice v[64];
	unsigned k = n < 63 ? n : 63;

	for (unsigned i = 0; i < k; i++)
		v[i] = s[i];
	for (unsigned i = k; i < n; i++)
		keel_slice_put(&s[i]);
	v[k] = (struct keel_slice){ 0 };
	atomic_store(&quit_ret, keel_framer_on_data(keel_conn_user(c), c, v, k + 1));
}

static const struct keel_conn_ops quit_empty_ops = { .on_open = quit_open,
						     .on_data = quit_empty_data,
						     .on_close = srv_close };

Test(net_frame, an_empty_slice_after_a_close_in_the_callback_is_skipped)
{
	struct e2e e;
	uint8_t b[4 + 4], in[8], more;
	int fd;

	memset(&e, 0, sizeof(e));
	atomic_store(&quit_after, 0);
	atomic_store(&quit_closed, 0);
	atomic_store(&quit_ret, -1);
	e2e_start_with(&e, &quit_empty_ops);
	fd = cli_connect(e.port);
	cr_assert_geq(fd, 0);
	hdr32(b, 4);
	memcpy(b + 4, "QUIT", 4);
	cr_assert_eq(cli_write_all(fd, b, sizeof(b)), 0);
	cr_assert_eq(cli_read_all(fd, in, sizeof(in)), 0, "the reply queued before the close");
	cr_assert_eq(cli_read_all(fd, &more, 1), -EPIPE, "end of stream after the reply");
	close(fd);
	e2e_wait(&e, &e.srv_closed, 1, "the server's on_close");
	cr_assert_eq(atomic_load(&quit_ret), 0, "keel_framer_on_data returned %d",
		     atomic_load(&quit_ret));
	e2e_stop(&e);
}

/* ---- a callback that pauses reading gets no later frame until it resumes ---- */

/* Ten frames in one write: the callback pauses reading on the second and looks, from
 * deferred work (after the push), at how many frames came; then resumes, and the other
 * eight follow, in order. Before, the push delivered all ten: a cap on requests in
 * flight that pauses reading (keel-embed's) was no cap. */
static struct {
	_Atomic int frames, seen_at_check, order_bad, done;
	struct keel_conn *c;
} pz;

static void
pz_check(void *arg)
{
	atomic_store(&pz.seen_at_check, atomic_load(&pz.frames));
	keel_conn_resume_read(pz.c);
}

static int
pz_frame(void *arg, struct keel_frame *fr)
{
	struct keel_conn *c = arg;
	int k = atomic_fetch_add(&pz.frames, 1);
	uint8_t b = 0;

	if (fr->n && fr->s[0].len)
		b = fr->s[0].data[0];
	if (b != (uint8_t)('0' + k))
		atomic_fetch_add(&pz.order_bad, 1);
	for (unsigned i = 0; i < fr->n; i++)
		keel_slice_put(&fr->s[i]);
	if (k == 1) {
		pz.c = c;
		keel_conn_pause_read(c);
		if (keel_defer(pz_check, NULL) < 0)
			return -ENOMEM;
	}
	if (k == 9) {
		atomic_store(&pz.done, 1);
		keel_conn_close(c);
	}
	return 0;
}

static void
pz_open(struct keel_conn *c)
{
	attach(c, pz_frame);
}

static const struct keel_conn_ops pz_ops = { .on_open = pz_open,
					     .on_data = framed_data,
					     .on_close = srv_close };

Test(net_frame, frames_after_a_pause_in_the_callback_wait_for_the_resume)
{
	struct e2e e;
	uint8_t b[10 * 5];
	size_t n = 0;
	int fd;

	memset(&e, 0, sizeof(e));
	memset(&pz, 0, sizeof(pz));
	atomic_store(&pz.seen_at_check, -1);
	e2e_start_with(&e, &pz_ops);
	fd = cli_connect(e.port);
	cr_assert_geq(fd, 0);
	for (int i = 0; i < 10; i++) {
		n += hdr32(b + n, 1);
		b[n++] = (uint8_t)('0' + i);
	}
	cr_assert_eq(cli_write_all(fd, b, n), 0);
	/* The server's end after the tenth frame, then ours (its close waits for it). */
	cr_assert_eq(cli_read_all(fd, b, 1), -EPIPE, "EOF after the tenth frame");
	close(fd);
	e2e_wait(&e, &e.srv_closed, 1, "the server's on_close after the tenth frame");
	cr_assert_eq(atomic_load(&pz.seen_at_check), 2, "frames delivered before the resume: %d",
		     atomic_load(&pz.seen_at_check));
	cr_assert_eq(atomic_load(&pz.frames), 10);
	cr_assert_eq(atomic_load(&pz.order_bad), 0, "frames out of order");
	cr_assert_eq(atomic_load(&e.srv_status), 0);
	e2e_stop(&e);
}

/* ---- a pause whose hand-back finds no memory fails the framer, as its contract says ---- */

/* Three frames in one write; the first pauses reading with the next allocation failing:
 * the framer cannot hand the other two back, so the stream is broken. It aborted the
 * connection but keel_framer_on_data returned 0, the framer had no error and nothing was
 * logged; it returns -ENOMEM, keel_framer_error says so and on_close gets it. */
static struct {
	_Atomic int frames, ret, err;
} gb;

static int
gb_frame(void *arg, struct keel_frame *fr)
{
	for (unsigned i = 0; i < fr->n; i++)
		keel_slice_put(&fr->s[i]);
	if (atomic_fetch_add(&gb.frames, 1) == 0) {
		atomic_store(&keel__frame_fail_give_back, 1);
		keel_conn_pause_read(arg);
	}
	return 0;
}

static void
gb_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct keel_framer *f = keel_conn_user(c);
	int r = keel_framer_on_data(f, c, s, n);

	if (r < 0 && !atomic_load(&gb.ret)) {
		atomic_store(&gb.err, keel_framer_error(f));
		atomic_store(&gb.ret, r);
	}
}

static void
gb_open(struct keel_conn *c)
{
	attach(c, gb_frame);
}

static const struct keel_conn_ops gb_ops = { .on_open = gb_open,
					     .on_data = gb_data,
					     .on_close = srv_close };

Test(net_frame, a_pause_whose_hand_back_finds_no_memory_fails_the_framer)
{
	struct e2e e;
	uint8_t b[3 * 5];
	size_t n = 0;
	int fd;

	memset(&e, 0, sizeof(e));
	memset(&gb, 0, sizeof(gb));
	e2e_start_with(&e, &gb_ops);
	fd = cli_connect(e.port);
	cr_assert_geq(fd, 0);
	for (int i = 0; i < 3; i++) {
		n += hdr32(b + n, 1);
		b[n++] = (uint8_t)('0' + i);
	}
	cr_assert_eq(cli_write_all(fd, b, n), 0);
	e2e_wait(&e, &e.srv_closed, 1, "the server's on_close");
	close(fd);
	cr_assert_eq(atomic_load(&gb.frames), 1);
	cr_assert_eq(atomic_load(&gb.ret), -ENOMEM, "keel_framer_on_data returned %d",
		     atomic_load(&gb.ret));
	cr_assert_eq(atomic_load(&gb.err), -ENOMEM);
	cr_assert_eq(atomic_load(&e.srv_status), -ENOMEM);
	cr_assert_eq(atomic_load(&keel__frame_fail_give_back), 0, "the hand-back never came");
	e2e_stop(&e);
}

/* ---- a reclaim after a pause keeps the buffers an earlier one filled ---- */

/* A line framer holds the start of a line (1,000 bytes) and a reclaim copies it into a
 * buffer of its own (as when the receive buffers run out; keel__framer_compact, called here
 * by hand). The line's LF and the start of the next line follow in one receive, copied into
 * that buffer's room; the first line's callback pauses reading, so the framer hands the
 * start of the second (a slice of its own buffer) back to the connection, which pushes it
 * again after the resume. A reclaim then has nothing of the receive buffers to copy: the
 * hand-back forgot which held slices were the framer's own (it kept a count of the first
 * held slices, and set it to 0), so that reclaim copied them again, into a new buffer, the
 * old one still held until the copy was made. */
static struct {
	_Atomic int phase, frames, bad, compact1, compact2, in_own, moved;
	const uint8_t *own; /* the first reclaim's buffer (the shard's thread only) */
} rp;

static void
rp_resume(void *arg)
{
	atomic_store(&rp.phase, 2);
	keel_conn_resume_read(arg);
}

static int
rp_frame(void *arg, struct keel_frame *fr)
{
	struct keel_conn *c = arg;
	int k = atomic_fetch_add(&rp.frames, 1);
	uint8_t want = k == 0 ? 'a' : 'B';

	if (fr->len != (k == 0 ? 1000u : 4u))
		atomic_fetch_add(&rp.bad, 1);
	for (unsigned i = 0; i < fr->n; i++) {
		for (uint32_t j = 0; j < fr->s[i].len; j++)
			if (fr->s[i].data[j] != want)
				atomic_fetch_add(&rp.bad, 1);
		keel_slice_put(&fr->s[i]);
	}
	if (k == 0) {
		keel_conn_pause_read(c);
		if (keel_defer(rp_resume, c) < 0)
			return -ENOMEM;
	}
	return 0;
}

static void
rp_open(struct keel_conn *c)
{
	struct keel_framer_opts o = { .kind = KEEL_FRAME_LINE, .on_frame = rp_frame, .arg = c };
	struct keel_framer *f;
	int r = keel_framer_create(&o, &f);

	if (r < 0) {
		keel_conn_abort(c, r);
		return;
	}
	keel_conn_set_user(c, f);
}

static void
rp_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct keel_framer *f = keel_conn_user(c);
	const uint8_t *p0, *p1;

	keel_framer_on_data(f, c, s, n);
	if (atomic_load(&rp.phase) == 0 && keel_framer_buffered(f) == 1000) {
		atomic_store(&rp.compact1, keel__framer_compact(f, keel_shard_alloc()));
		keel_framer_chunk(f, 0, &rp.own);
		atomic_store(&rp.phase, 1);
	} else if (atomic_load(&rp.phase) == 2 && keel_framer_buffered(f) == 4) {
		keel_framer_chunk(f, 0, &p0);
		atomic_store(&rp.in_own, p0 == rp.own + 1001);
		atomic_store(&rp.compact2, keel__framer_compact(f, keel_shard_alloc()));
		keel_framer_chunk(f, 0, &p1);
		atomic_store(&rp.moved, p1 != p0);
		atomic_store(&rp.phase, 3);
	}
}

static const struct keel_conn_ops rp_ops = { .on_open = rp_open,
					     .on_data = rp_data,
					     .on_close = srv_close };

Test(net_frame, a_reclaim_after_a_pause_keeps_the_buffers_an_earlier_one_filled)
{
	static uint8_t a[1000];
	struct e2e e;
	int fd;

	memset(&e, 0, sizeof(e));
	memset(&rp, 0, sizeof(rp));
	memset(a, 'a', sizeof(a));
	e2e_start_with(&e, &rp_ops);
	fd = cli_connect(e.port);
	cr_assert_geq(fd, 0);
	cr_assert_eq(cli_write_all(fd, a, sizeof(a)), 0);
	e2e_wait(&e, &rp.phase, 1, "the first line's start held");
	cr_assert_eq(atomic_load(&rp.compact1), 1, "the first reclaim copied nothing");
	cr_assert_eq(cli_write_all(fd, "\nBBBB", 5), 0);
	e2e_wait(&e, &rp.phase, 3, "the second line's start pushed again after the resume");
	cr_assert(atomic_load(&rp.in_own),
		  "the second line's start is not in the reclaim's buffer");
	cr_assert_eq(atomic_load(&rp.compact2), 0,
		     "the reclaim after the resume copied the framer's own buffer again");
	cr_assert(!atomic_load(&rp.moved), "the held bytes moved to another buffer");
	cr_assert_eq(cli_write_all(fd, "\n", 1), 0);
	e2e_wait(&e, &rp.frames, 2, "the second line");
	close(fd);
	e2e_wait(&e, &e.srv_closed, 1, "the server's on_close");
	cr_assert_eq(atomic_load(&rp.bad), 0, "a line's bytes differ");
	cr_assert_eq(atomic_load(&e.srv_status), 0);
	e2e_stop(&e);
}

/* ---- on_data's array stays as given while a framer handed part of it pauses ---- */

/* An application may hand the framer the first slice of on_data's array only and read the
 * rest itself (a protocol switch). Held data, delivered again after a resume, used to come
 * in an array inside the connection's held queue: a frame callback that paused reading made
 * the framer give its slices back into that queue, over the tail of the array the
 * application still held. Every frame here pauses reading until deferred work resumes it;
 * the stream is zeros (zero-length LEN32 frames, whatever bytes the application takes out
 * of it), the send watermark small so that on_data gets two slices at a time; on_data
 * hands the framer its first slice and checks that the others are unchanged after. */
static struct {
	_Atomic int cases, clobbered, frames, closed;
	bool paused;
} sw;

static void
sw_resume(void *arg)
{
	sw.paused = false;
	if (!atomic_load(&sw.closed))
		keel_conn_resume_read(arg);
}

static int
sw_frame(void *arg, struct keel_frame *fr)
{
	struct keel_conn *c = arg;

	for (unsigned i = 0; i < fr->n; i++)
		keel_slice_put(&fr->s[i]);
	atomic_fetch_add(&sw.frames, 1);
	if (!sw.paused) {
		sw.paused = true;
		keel_conn_pause_read(c);
		if (keel_defer(sw_resume, c) < 0)
			return -ENOMEM;
	}
	return 0;
}

static void
sw_open(struct keel_conn *c)
{
	attach(c, sw_frame);
}

static void
sw_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct keel_framer *f = keel_conn_user(c);
	struct keel_slice keep[64];
	unsigned m = n - 1 < 64 ? n - 1 : 64;
	bool was = sw.paused;

	memcpy(keep, s + 1, m * sizeof(*s));
	keel_framer_on_data(f, c, s, 1);
	if (m && !was && sw.paused) {
		atomic_fetch_add(&sw.cases, 1);
		if (memcmp(keep, s + 1, m * sizeof(*s)))
			atomic_fetch_add(&sw.clobbered, 1);
	}
	for (unsigned i = 0; i < m; i++) /* read raw: put, as the application was given them */
		keel_slice_put(&keep[i]);
	for (unsigned i = 1 + m; i < n; i++)
		keel_slice_put(&s[i]);
}

static void
sw_close(struct keel_conn *c, int status)
{
	atomic_store(&sw.closed, 1);
	srv_close(c, status);
}

static const struct keel_conn_ops sw_ops = { .on_open = sw_open,
					     .on_data = sw_data,
					     .on_close = sw_close };

Test(net_frame, the_array_on_data_holds_stays_as_given_when_a_framer_pauses)
{
	static uint8_t zeros[16u << 10];
	struct keel_net_config nc;
	struct e2e e;
	int fd;

	keel_net_config_init(&nc);
	nc.buf_count = 16;
	nc.buf_size = 4096;
	nc.bulk_buf_size = 0;
	nc.high_watermark = 4096;
	nc.low_watermark = 1024;
	memset(&e, 0, sizeof(e));
	memset(&sw, 0, sizeof(sw));
	e2e_start_cfg(&e, &sw_ops, &nc);
	fd = cli_connect(e.port);
	cr_assert_geq(fd, 0);
	/* Until 50 deliveries of two slices or more met a pause in their first. */
	for (int w = 0; w < 2000 && atomic_load(&sw.cases) < 50; w++)
		cr_assert_eq(cli_write_all(fd, zeros, sizeof(zeros)), 0);
	close(fd);
	e2e_wait(&e, &e.srv_closed, 1, "the server's on_close");
	cr_log_info("%d deliveries of two slices or more paused in their first, %d frames",
		    atomic_load(&sw.cases), atomic_load(&sw.frames));
	cr_assert_geq(atomic_load(&sw.cases), 50, "the case never came");
	cr_assert_eq(atomic_load(&sw.clobbered), 0, "%d of %d arrays changed under the application",
		     atomic_load(&sw.clobbered), atomic_load(&sw.cases));
	e2e_stop(&e);
}

/* Framed connections that pause and never resume hold the frames their framer gave back
 * (keel__conn_unread) while the ring runs low: those come out of the ring too, and another
 * connection still receives. 'H' frames pause their connection for good; a 'P' frame is
 * echoed (its payload). */
static int
hp_frame(void *arg, struct keel_frame *fr)
{
	struct keel_conn *c = arg;
	uint8_t b[8];
	size_t n = 0;

	for (unsigned i = 0; i < fr->n; i++) {
		size_t k = fr->s[i].len < sizeof(b) - n ? fr->s[i].len : sizeof(b) - n;

		memcpy(b + n, fr->s[i].data, k);
		n += k;
		keel_slice_put(&fr->s[i]);
	}
	if (n && b[0] == 'H')
		keel_conn_pause_read(c);
	else if (n)
		keel_conn_write(c, b, n);
	return 0;
}

static void
hp_open(struct keel_conn *c)
{
	attach(c, hp_frame);
}

static const struct keel_conn_ops hp_ops = { .on_open = hp_open,
					     .on_data = framed_data,
					     .on_close = srv_close };

Test(net_frame, paused_framed_connections_do_not_take_every_receive_buffer)
{
	static uint8_t w[64u << 10];
	struct keel_net_config nc;
	struct keel_net_stats st;
	struct e2e e;
	int hog[3], probe;
	size_t n = 0;
	uint8_t b[8];

	keel_net_config_init(&nc);
	nc.buf_count = 16;
	nc.buf_size = 4096;
	nc.bulk_buf_size = 0;
	memset(&e, 0, sizeof(e));
	e2e_start_cfg(&e, &hp_ops, &nc);
	while (n + 4 + 1000 <= sizeof(w)) { /* 1,000-byte frames of 'H' */
		n += hdr32(w + n, 1000);
		memset(w + n, 'H', 1000);
		n += 1000;
	}
	for (int h = 0; h < 3; h++) {
		hog[h] = cli_connect(e.port);
		cr_assert_geq(hog[h], 0);
		fcntl(hog[h], F_SETFL, O_NONBLOCK);
		(void)!send(hog[h], w, n, MSG_NOSIGNAL); /* what the socket takes */
	}
	probe = cli_connect(e.port);
	cr_assert_geq(probe, 0);
	n = hdr32(b, 4);
	memcpy(b + n, "Ping", 4);
	cr_assert_eq(cli_write_all(probe, b, n + 4), 0);
	cr_assert_eq(cli_read_all(probe, b, 4), 0,
		     "the probe got no echo: paused framed connections held every receive buffer");
	cr_assert_eq(memcmp(b, "Ping", 4), 0);
	cr_assert_eq(rt_net_stats(e.rt, 0, &st), 0);
	cr_assert_gt(st.recv_copies, 0, "nothing was copied out of the ring");
	close(probe);
	for (int h = 0; h < 3; h++)
		close(hog[h]);
	e2e_stop(&e);
}

/* ---- a pass's frames leave together, byte-exact (copied small frames, merged iovecs) ---- */

/* Round 0: 64 frames of 16 bytes; round 1: a sweep of sizes 0..64 KiB, some split over
 * several payload slices (empty ones among them). Each round is queued in one pass. */
static const uint32_t sweep[] = { 0,    1,    3,    4,    5,    15,   16,    17,    63,
				  64,   65,   255,  256,  511,  512,  513,   1000,  1023,
				  1024, 1025, 4095, 4096, 4097, 8192, 16384, 65535, 65536 };
#define BATCH_SMALL 64u

struct batch {
	uint16_t port;
	unsigned round;
	uint64_t sends[2], short_sends[2]; /* keel_net_stats after each round's ack */
	_Atomic int closed, status;
};

static uint8_t
pat(unsigned round, unsigned frame, uint32_t k)
{
	return (uint8_t)(round * 97 + frame * 131 + k * 7);
}

static unsigned
round_frames(unsigned round)
{
	return round == 0 ? BATCH_SMALL : (unsigned)(sizeof(sweep) / sizeof(sweep[0]));
}

static uint32_t
round_len(unsigned round, unsigned i)
{
	return round == 0 ? 16 : sweep[i];
}

static void
batch_send(struct keel_conn *c, unsigned round)
{
	for (unsigned i = 0; i < round_frames(round); i++) {
		uint32_t len = round_len(round, i), off = 0;
		/* Frame i in 1 + i % 3 slices (round 1; a ninth-slice case too), with an empty
		 * slice in the middle of every third one. */
		unsigned parts = round == 0 ? 1 : i == 5 ? 9 : 1 + i % 3, n = 0;
		struct keel_slice sl[12];

		for (unsigned p = 0; p < parts; p++) {
			uint32_t want = p + 1 == parts ? len - off : len / parts;
			if (keel_buf_alloc(keel_shard_alloc(), want ? want : 1, &sl[n]) < 0)
				goto fail;
			sl[n].len = want;
			for (uint32_t k = 0; k < want; k++)
				sl[n].data[k] = pat(round, i, off + k);
			off += want;
			n++;
			if (round == 1 && i % 3 == 2 && p == 0) {
				if (keel_buf_alloc(keel_shard_alloc(), 1, &sl[n]) < 0)
					goto fail;
				sl[n++].len = 0;
			}
		}
		if (keel_frame_send(c, sl, n) < 0) {
			for (unsigned k = 0; k < n; k++)
				if (sl[k].buf)
					keel_slice_put(&sl[k]);
			keel_conn_abort(c, -EIO);
			return;
		}
		continue;
fail:
		while (n--)
			keel_slice_put(&sl[n]);
		keel_conn_abort(c, -ENOMEM);
		return;
	}
}

static void
batch_open(struct keel_conn *c)
{
	batch_send(c, 0);
}

static void
batch_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct batch *b = keel_conn_app(c);
	struct keel_net_stats st;

	for (unsigned i = 0; i < n; i++)
		keel_slice_put(&s[i]);
	if (SHARD_CHECK_EQ(keel_net_stats(keel_this_shard(), &st), 0) && b->round < 2) {
		b->sends[b->round] = st.sends;
		b->short_sends[b->round] = st.short_sends;
	}
	if (++b->round == 2)
		keel_conn_close(c);
	else
		batch_send(c, b->round);
}

static void
batch_close(struct keel_conn *c, int status)
{
	struct batch *b = keel_conn_app(c);

	atomic_store(&b->status, status);
	atomic_store(&b->closed, 1);
}

static const struct keel_conn_ops batch_ops = { .on_open = batch_open,
						.on_data = batch_data,
						.on_close = batch_close };

static void
batch_start(void *arg)
{
	struct batch *b = arg;
	struct keel_conn *c;
	int r = keel_conn_connect("127.0.0.1", b->port, KEEL_S(5), &batch_ops, b, &c);

	if (!SHARD_CHECK_EQ(r, 0))
		keel_stop(r);
}

/* Read one round's frames from @fd and compare every byte. */
static void
batch_expect(int fd, unsigned round)
{
	uint8_t *buf = malloc(65536);

	cr_assert_not_null(buf);
	for (unsigned i = 0; i < round_frames(round); i++) {
		uint8_t h[4];
		uint32_t len, want = round_len(round, i);

		cr_assert_eq(cli_read_all(fd, h, 4), 0, "round %u frame %u: header", round, i);
		len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
		cr_assert_eq(len, want, "round %u frame %u: length %u, want %u", round, i, len,
			     want);
		cr_assert_eq(cli_read_all(fd, buf, len), 0, "round %u frame %u: payload", round, i);
		for (uint32_t k = 0; k < len; k++)
			cr_assert_eq(buf[k], pat(round, i, k), "round %u frame %u: byte %u", round,
				     i, k);
	}
	free(buf);
}

Test(net_frame, one_pass_of_frames_leaves_in_one_send_byte_exact)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_runtime *rt;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	static struct batch b;
	int lfd, fd;

	memset(&b, 0, sizeof(b));
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(lfd, 0);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(listen(lfd, 1), 0);
	cr_assert_eq(getsockname(lfd, (struct sockaddr *)&a, &alen), 0);
	b.port = ntohs(a.sin_port);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, batch_start, &b), 0);
	fd = accept(lfd, NULL, NULL);
	cr_assert_geq(fd, 0);
	for (unsigned round = 0; round < 2; round++) {
		batch_expect(fd, round);
		cr_assert_eq(cli_write_all(fd, "k", 1), 0);
	}
	/* keel's end, then ours (its graceful close waits for it). */
	{
		char x;
		cr_assert_eq(cli_read_all(fd, &x, 1), -EPIPE, "EOF from keel's client");
	}
	close(fd);
	WAIT_FOR(atomic_load(&b.closed), "the client's on_close");
	close(lfd);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&b.status), 0);
	/* 64 small frames queued in one pass: one send (the kernel taking part of it adds
	 * one), not one per 64 iovecs. */
	cr_assert_leq(b.sends[0], 1 + b.short_sends[0], "%llu sends for 64 frames of 16 B",
		      (unsigned long long)b.sends[0]);
	/* The sweep too (split and empty slices, merged iovecs): one pass, one send. */
	cr_assert_leq(b.sends[1] - b.sends[0], 1 + (b.short_sends[1] - b.short_sends[0]),
		      "%llu sends for the sweep's %u frames",
		      (unsigned long long)(b.sends[1] - b.sends[0]), round_frames(1));
}
