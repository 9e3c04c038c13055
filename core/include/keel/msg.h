/* SPDX-License-Identifier: MIT */
/*
 * Cross-shard messages. One single-producer single-consumer queue per ordered pair of
 * shards, allocated NUMA-local to the receiver. Messages between a pair arrive exactly once
 * and in the order they were sent. A full queue never drops and never blocks: up to
 * keel_opts.mailbox_overflow messages per destination wait, in order, on the sender; past
 * that the app's sends are refused with -EAGAIN until keel_msg_wait_room() says there is
 * room again (keel's own traffic, such as a buffer's trip home or a call's reply, is never
 * refused). A sleeping receiver is woken with IORING_OP_MSG_RING.
 *
 * Sends are published at the end of the sender's loop pass, so a burst of sends costs one
 * queue publication per destination.
 */
#ifndef KEEL_MSG_H
#define KEEL_MSG_H

#include <keel/common.h>
#include <keel/runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The work of a keel_call(): its return value (0 or -errno) is the status given to done. */
typedef int (*keel_call_fn)(void *arg);

/** Completion of a keel_call() or keel_broadcast(), run on the calling shard. */
typedef void (*keel_done_fn)(int status, void *arg);

/**
 * Run @fn(@arg) on shard @dst (which may be this shard: it then runs on a later pass).
 * Ownership: whatever @arg points at moves to @dst with the message, on success only.
 * Returns: 0; -EINVAL for a shard that does not exist, or no @fn; -EAGAIN when @dst's queue
 * is full and keel_opts.mailbox_overflow messages of the app's to it already wait on this
 * shard (keel's own, call replies and buffers going home, are not counted; nothing was
 * sent: try again from a keel_msg_wait_room() callback, or drop the work); -ENOMEM when the
 * overflow list could not grow; -ESHUTDOWN once this shard is stopping (after its on-stop
 * hooks ran): new messages are refused so that a busy runtime can drain and stop, while
 * messages already sent, and the replies of calls already made, are still delivered.
 * Context: a shard.
 */
KEEL_API int keel_send(unsigned dst, keel_fn fn, void *arg);

/**
 * Run @fn(0, @arg) on this shard, on a later pass, once a message to @dst would not be
 * refused with -EAGAIN (at once, on the next pass, when there is room now); or
 * @fn(-ESHUTDOWN, @arg) once this shard stops first. Runs exactly once. Waiters of one
 * destination run in the order they waited, on the same pass: a send from the callback may
 * still meet a queue that an earlier callback filled again, so a sender that gets -EAGAIN
 * there waits again. While a waiter waits, the shard looks for room at least every
 * millisecond (the receiver does not signal it).
 * Returns: 0; -EINVAL (no such shard, no @fn); -ENOMEM; -ESHUTDOWN once this shard is
 * stopping (then @fn never runs).
 * Context: a shard.
 */
KEEL_API int keel_msg_wait_room(unsigned dst, keel_done_fn fn, void *arg);

/**
 * Run @fn(@arg) on shard @dst, then @done(status, @done_arg) back on this shard, where
 * status is what @fn returned. @done is required.
 * Returns: as keel_send(), and -EINVAL without @done.
 * Context: a shard.
 */
KEEL_API int keel_call(unsigned dst, keel_call_fn fn, void *arg, keel_done_fn done, void *done_arg);

/**
 * The work of a keel_call_value(), run on the destination: returns 0 or -errno (the status
 * given to done) and may store a result in *@value (it starts at 0). A pointer travels as
 * (uint64_t)(uintptr_t)p; what it points at moves to the caller with the reply.
 */
typedef int (*keel_call_value_fn)(void *arg, uint64_t *value);

/** Completion of a keel_call_value(), run on the calling shard: @fn's status and value. */
typedef void (*keel_value_done_fn)(int status, uint64_t value, void *arg);

/**
 * Run @fn(@arg, &value) on shard @dst, then @done(status, value, @done_arg) back on this
 * shard: status is what @fn returned, value what it stored. Like keel_call(), the call and
 * its reply travel through the pair's queues, in order with the other messages; the reply
 * is delivered even while either shard stops. Costs one allocation from this shard's arena
 * per call (freed before @done runs).
 * Ownership: whatever @arg points at moves to @dst with the message, and whatever value
 * points at moves back with the reply, on success only.
 * Returns: as keel_send(); on an error @fn and @done never run.
 * Context: a shard.
 */
KEEL_API int keel_call_value(unsigned dst, keel_call_value_fn fn, void *arg,
			     keel_value_done_fn done, void *done_arg);

/**
 * Run @fn(@arg) once on every shard, this one included, then @all_done(status, @done_arg)
 * on this shard once every shard reached has run it: status is 0, or -ENOMEM when memory
 * ran out part-way and some shards were not reached (a part that waits for room in a full
 * queue takes its node from the heap when the shard's memory is out, said once: so only the
 * heap's running out does that; those parts count toward the sender's mailbox_overflow).
 * @arg is shared: @fn must only read
 * it, or synchronise itself.
 * Returns: 0, -EINVAL for a NULL @fn, -ENOMEM when nothing was sent (all_done will not
 * run), -EAGAIN when any shard's queue is full as for keel_send() (nothing was sent), or
 * -ESHUTDOWN as for keel_send().
 * Context: a shard.
 */
KEEL_API int keel_broadcast(keel_fn fn, void *arg, keel_done_fn all_done, void *done_arg);

#ifdef __cplusplus
}
#endif

#endif
