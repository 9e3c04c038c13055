// SPDX-License-Identifier: MIT
/*
 * libFuzzer harness for the framers (keel/frame.h), driven by hand with a standalone
 * allocator, as the unit tests do.
 *
 * Input: byte 0 picks the kind (LEN32, LINE, or USER with a 16-bit little-endian length
 * header) and a small maximum; byte 1 seeds the split points; the rest is the stream, pushed
 * in slices of 1..64 bytes. Checked on every input: every delivered byte lies inside a pushed
 * buffer (no copy) and the stream's bytes come out in order; a frame's slices add up to its
 * length and respect the maximum; after destroy, no buffer is left live (no leak, no double
 * put: ASan and the allocator's counters).
 */
#include <errno.h>
#include <keel/alloc.h>
#include <keel/alloc_runtime.h>
#include <keel/buf.h>
#include <keel/frame.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#define MAX_PUSHES 4096

struct fz {
	const uint8_t *stream; /* the whole input stream, to check delivered bytes against */
	size_t stream_len;
	size_t consumed; /* stream offset of the next payload byte expected */
	enum keel_frame_kind kind;
	uint32_t max;
	struct {
		const uint8_t *p;
		size_t len;
		size_t off; /* stream offset of p[0] */
	} pushed[MAX_PUSHES];
	unsigned npushed;
};

static struct keel_alloc *alloc;

/* The stream offset of delivered byte @p, or SIZE_MAX when it is in no pushed buffer. The
 * newest pushed buffer that holds @p is the one: a buffer freed after its frames were put may
 * be handed out again, but never while a slice of it is alive. */
static size_t
stream_off(const struct fz *z, const uint8_t *p, size_t len)
{
	for (unsigned i = z->npushed; i-- > 0;)
		if (p >= z->pushed[i].p && p + len <= z->pushed[i].p + z->pushed[i].len)
			return z->pushed[i].off + (size_t)(p - z->pushed[i].p);
	return SIZE_MAX;
}

static int
on_frame(void *arg, struct keel_frame *fr)
{
	struct fz *z = arg;
	size_t sum = 0, first = SIZE_MAX, next = SIZE_MAX;

	CHECK(fr->len <= z->max);
	for (unsigned i = 0; i < fr->n; i++) {
		size_t off = stream_off(z, fr->s[i].data, fr->s[i].len);

		CHECK(fr->s[i].len > 0);
		CHECK(off != SIZE_MAX); /* zero copy: the bytes are the pushed ones */
		CHECK(next == SIZE_MAX || off == next); /* contiguous in the stream */
		if (first == SIZE_MAX)
			first = off;
		next = off + fr->s[i].len;
		sum += fr->s[i].len;
		keel_slice_put(&fr->s[i]);
	}
	CHECK(sum == fr->len);
	/* Payloads come in stream order, after the previous frame's end. */
	if (first != SIZE_MAX) {
		CHECK(first >= z->consumed);
		z->consumed = next;
	}
	return 0;
}

/* KEEL_FRAME_USER: a 16-bit little-endian total length (header included, >= 2). */
static long
measure(struct keel_framer *f, void *arg)
{
	uint8_t h[2];

	if (keel_framer_buffered(f) < 2)
		return 0;
	CHECK(keel_framer_peek(f, 0, h, 2) == 2);
	long len = h[0] | (long)h[1] << 8;
	return len < 2 ? -EPROTO : len;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const enum keel_frame_kind kinds[3] = { KEEL_FRAME_LEN32, KEEL_FRAME_LINE,
						       KEEL_FRAME_USER };
	static struct fz z;
	struct keel_framer_opts o = { 0 };
	struct keel_alloc_stats st;
	struct keel_framer *f;
	unsigned seed;
	size_t pos;

	if (!alloc) {
		struct keel_alloc_config cfg = { .memory = 64ull << 20 };

		CHECK(keel_alloc_create(&cfg, &alloc) == 0);
		keel_alloc_bind_thread(alloc);
	}
	if (size < 2)
		return 0;
	memset(&z, 0, sizeof(z));
	z.kind = kinds[data[0] % 3];
	z.max = data[0] & 0x80 ? 64 : 4096;
	z.stream = data + 2;
	z.stream_len = size - 2;
	seed = data[1];
	o.kind = z.kind;
	o.max = z.max;
	o.on_frame = on_frame;
	o.measure = z.kind == KEEL_FRAME_USER ? measure : NULL;
	o.arg = &z;
	CHECK(keel_framer_create(&o, &f) == 0);
	for (pos = 0; pos < z.stream_len && z.npushed < MAX_PUSHES;) {
		size_t n = 1 + (seed = seed * 1103515245u + 12345u) % 64;
		struct keel_slice s;
		int r;

		if (n > z.stream_len - pos)
			n = z.stream_len - pos;
		CHECK(keel_buf_alloc(alloc, n, &s) == 0);
		memcpy(s.data, z.stream + pos, n);
		z.pushed[z.npushed].p = s.data;
		z.pushed[z.npushed].len = n;
		z.pushed[z.npushed++].off = pos;
		pos += n;
		r = keel_framer_push(f, &s);
		if (r < 0) {
			CHECK(r == -EMSGSIZE || r == -EPROTO);
			CHECK(keel_framer_error(f) == r);
			CHECK(keel_framer_buffered(f) == 0);
			break;
		}
		/* Bounded: the maximum frame, its header or terminator, and one pushed slice. */
		CHECK(keel_framer_buffered(f) <= (size_t)z.max + 8 + 64);
	}
	keel_framer_destroy(f);
	keel_alloc_stats(alloc, &st);
	CHECK(st.buffers_live == 0);
	return 0;
}
