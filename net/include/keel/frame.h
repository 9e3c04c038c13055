/* SPDX-License-Identifier: MIT */
/*
 * Message framing: turn a connection's byte stream into whole messages without copying.
 *
 * A framer (struct keel_framer, opaque) takes the slices a connection receives
 * (keel_framer_push(), or keel_framer_on_data() from the app's on_data) and holds their
 * references until it has a whole frame; it then delivers the frame's payload as an array
 * of slices that are sub-slices of the received ones (keel_slice_sub: the bytes are never
 * copied). Three kinds:
 *   - KEEL_FRAME_LEN32: a 32-bit big-endian length, then that many payload bytes; the
 *     header is not part of the delivered frame;
 *   - KEEL_FRAME_LINE: bytes up to a LF; the LF and one CR just before it are stripped
 *     (CRLF and LF lines both arrive without their terminator; other CRs are kept);
 *   - KEEL_FRAME_USER: the app's measure callback peeks at the buffered bytes
 *     (keel_framer_peek(), keel_framer_chunk()) and returns the frame's length; the whole
 *     frame is delivered as is (strip your own header with keel_slice_sub()).
 *
 * Memory is bounded: a frame whose payload exceeds the maximum (default 16 MiB) is an
 * error (-EMSGSIZE) as soon as it is known, and the framer never holds more than the
 * maximum frame, its header or terminator, and one pushed slice. A framer fed by
 * keel_framer_on_data() copies a partial frame out of the shard's receive buffers when they
 * run out, so that partial frames cannot hold every buffer (docs/framing.md, "Ownership").
 *
 * The framer core needs no socket or shard (only the shard holding the slices), so it can
 * be driven by hand; keel_frame_send() and keel_framer_on_data() are the connection glue.
 *
 * Threading: a framer is used on one shard, the one holding its slices.
 */
#ifndef KEEL_FRAME_H
#define KEEL_FRAME_H

#include <keel/buf.h>
#include <keel/common.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_conn;
struct keel_framer;

/** The default maximum payload of one frame. */
#define KEEL_FRAME_MAX_DEFAULT (16u << 20)
/** Bytes of the KEEL_FRAME_LEN32 header. */
#define KEEL_FRAME_LEN32_HDR 4u

/** How frames are delimited. */
enum keel_frame_kind {
	KEEL_FRAME_LEN32 = 1, /* 32-bit big-endian payload length, then the payload */
	KEEL_FRAME_LINE = 2,  /* a line ending in LF or CRLF */
	KEEL_FRAME_USER = 3,  /* the length comes from keel_framer_opts.measure */
};

/**
 * One frame: @len payload bytes in @n slices, in order (@n is 0 for an empty frame).
 * Each slice points into a buffer that was pushed into the framer.
 */
struct keel_frame {
	struct keel_slice *s;
	unsigned n;
	uint32_t len;
};

/**
 * A whole frame arrived.
 * Ownership: the callee owns each of @fr->s[i]'s references (put them, keep them, or give
 * them to keel_conn_send()/keel_frame_send()); the array itself is borrowed for the call.
 * Returns: 0 to go on; a negative errno stops the framer, which fails with that error.
 * Context: inside keel_framer_push(); the callee must not destroy the framer (return an
 * error instead, and destroy it after the push returns).
 */
typedef int (*keel_frame_fn)(void *arg, struct keel_frame *fr);

/**
 * KEEL_FRAME_USER: how long is the next frame? Look at the buffered bytes with
 * keel_framer_buffered(), keel_framer_peek() or keel_framer_chunk() (offset 0 is the first
 * byte of the next frame).
 * Returns: the frame's total length (> 0; the whole frame is delivered, header included);
 * 0 when more bytes are needed; a negative errno (-EPROTO, say) for a bad frame, which
 * fails the framer with that error.
 * Context: inside keel_framer_push().
 */
typedef long (*keel_frame_measure_fn)(struct keel_framer *f, void *arg);

/** Framer options. Zero-initialise, then set kind and on_frame. */
struct keel_framer_opts {
	enum keel_frame_kind kind;
	uint32_t max; /* largest payload (bytes; for KEEL_FRAME_USER the whole measured frame,
		       * header included); 0: KEEL_FRAME_MAX_DEFAULT */
	keel_frame_fn on_frame;        /* required */
	keel_frame_measure_fn measure; /* required for KEEL_FRAME_USER, else NULL */
	void *arg;                     /* for on_frame and measure */
};

/**
 * Create a framer.
 * Returns: 0 and *out; -EINVAL (no on_frame, unknown kind, measure missing for
 * KEEL_FRAME_USER or given for another kind); -ENOMEM.
 * Context: any thread; then used on one shard.
 */
KEEL_API int keel_framer_create(const struct keel_framer_opts *o, struct keel_framer **out);

/**
 * Destroy @f: the slices it still holds (a partial frame) are put.
 * Context: the shard holding those slices; never from inside its own callbacks.
 */
KEEL_API void keel_framer_destroy(struct keel_framer *f);

/**
 * Append @s to the stream and deliver every frame that is now whole, in order.
 * Consumes: @s's reference, always (on failure too: a failing framer puts everything it
 * holds, and @s may already have given bytes to delivered frames).
 * Returns: 0; -EMSGSIZE when a frame's payload exceeds the maximum; -EPROTO for a frame
 * the kind cannot parse; the error of measure or on_frame; -ENOMEM. After an error the
 * framer is failed: every later push returns the same error (keel_framer_error()).
 * An empty slice is accepted (and put; one with no buffer, {0}, too). Bytes that continue
 * the last held slice in the same buffer (the next receive into an incrementally consumed
 * buffer) are held as one slice with it.
 * Context: the shard holding @s.
 */
KEEL_API int keel_framer_push(struct keel_framer *f, struct keel_slice *s);

/** Bytes buffered and not yet delivered (for measure: the bytes it may look at). */
KEEL_API size_t keel_framer_buffered(const struct keel_framer *f);

/**
 * Copy up to @len buffered bytes from offset @off into @buf, across slice boundaries (for
 * measure, where a header may be split; copy only what you need).
 * Returns: the number of bytes copied (less than @len at the end of the buffered bytes).
 */
KEEL_API size_t keel_framer_peek(const struct keel_framer *f, size_t off, void *buf, size_t len);

/**
 * Zero-copy cursor: point *@out at the buffered byte at offset @off.
 * Returns: how many contiguous bytes start there (to the end of that slice), or 0 past the
 * buffered bytes. The pointer is valid until measure returns.
 */
KEEL_API size_t keel_framer_chunk(const struct keel_framer *f, size_t off, const uint8_t **out);

/** 0, or the error that failed @f. */
KEEL_API int keel_framer_error(const struct keel_framer *f);

/** Why @f failed, for a person ("" when it has not). Valid while @f lives. */
KEEL_API const char *keel_framer_reason(const struct keel_framer *f);

/**
 * Connection glue for the app's on_data: push the @n slices into @f. When @f fails, the
 * reason is logged (module "net", rate-limited) and @c is aborted with the error
 * (keel_conn_abort(c, err)), so the app's on_close sees it as its status. Once a frame
 * callback has closed or aborted @c, no later frame is delivered: the push stops after
 * that frame and the remaining slices are put (a graceful close still sends what was
 * queued before it). Once reading is paused (keel_conn_pause_read in a callback, or the
 * send queue's high watermark), the push stops too, and what it had not delivered goes
 * back to @c, to be delivered again, in order, after the resume.
 * Consumes: every slice's reference, always (the array is borrowed).
 * Returns: 0, or the framer's error (the connection is then aborted).
 * Context: @c's shard, typically inside on_data.
 */
KEEL_API int keel_framer_on_data(struct keel_framer *f, struct keel_conn *c, struct keel_slice *s,
				 unsigned n);

/**
 * Send one KEEL_FRAME_LEN32 frame: a 4-byte header, then the @n payload slices, queued
 * together so that they leave in one send (see docs/framing.md for the limits of that
 * promise). A small frame (<= 512 bytes in <= 8 slices) is copied into the connection's
 * write buffer and its slices put; a larger one is queued without copying. Empty slices
 * are allowed (put); @n may be 0 (an empty frame).
 * Consumes: the @n references, on success. On failure the slices that were queued (or
 * empty and put) are zeroed and every slice whose buf is not NULL is still the caller's;
 * when queueing fails after the header went in (-ENOMEM), a half-queued frame would
 * desynchronise the peer, so @c is also aborted with that error.
 * Returns: 0; 1 when the queued bytes are above the high watermark (see keel_conn_send());
 * -EMSGSIZE for a payload of 4 GiB or more; -EPIPE after close or shutdown; -ENOBUFS when
 * the frame would pass send_max or shard_send_max (@c is then aborted with -ENOBUFS, as by
 * keel_conn_send()); -ENOMEM.
 * Context: @c's shard.
 */
KEEL_API int keel_frame_send(struct keel_conn *c, struct keel_slice *s, unsigned n);

#ifdef __cplusplus
}
#endif

#endif
