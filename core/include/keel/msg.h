/* SPDX-License-Identifier: MIT */
/*
 * Cross-shard messages. One single-producer single-consumer queue per ordered pair of
 * shards, allocated NUMA-local to the receiver. Messages between a pair arrive exactly once
 * and in the order they were sent. A full queue never drops and never blocks: the overflow
 * waits, in order, on the sender. A sleeping receiver is woken with IORING_OP_MSG_RING.
 *
 * Sends are published at the end of the sender's loop pass, so a burst of sends costs one
 * queue publication per destination.
 */
#ifndef KEEL_MSG_H
#define KEEL_MSG_H

#include <keel/common.h>
#include <keel/runtime.h>

/** The work of a keel_call(): its return value (0 or -errno) is the status given to done. */
typedef int (*keel_call_fn)(void *arg);

/** Completion of a keel_call() or keel_broadcast(), run on the calling shard. */
typedef void (*keel_done_fn)(int status, void *arg);

/**
 * Run @fn(@arg) on shard @dst (which may be this shard: it then runs on a later pass).
 * Ownership: whatever @arg points at moves to @dst with the message, on success only.
 * Returns: 0; -EINVAL for a shard that does not exist; -ENOMEM when the overflow list
 * could not grow; -ESHUTDOWN once this shard is stopping (after its on-stop hooks ran):
 * new messages are refused so that a busy runtime can drain and stop, while messages
 * already sent, and the replies of calls already made, are still delivered.
 * Context: a shard.
 */
KEEL_API int keel_send(unsigned dst, keel_fn fn, void *arg);

/**
 * Run @fn(@arg) on shard @dst, then @done(status, @done_arg) back on this shard, where
 * status is what @fn returned.
 * Returns: as keel_send().
 * Context: a shard.
 */
KEEL_API int keel_call(unsigned dst, keel_call_fn fn, void *arg, keel_done_fn done, void *done_arg);

/**
 * Run @fn(@arg) once on every shard, this one included, then @all_done(status, @done_arg)
 * on this shard once every shard reached has run it: status is 0, or -ENOMEM when memory
 * ran out part-way and some shards were not reached. @arg is shared: @fn must only read
 * it, or synchronise itself.
 * Returns: 0, -ENOMEM when nothing was sent (all_done will not run), or -ESHUTDOWN as for
 * keel_send().
 * Context: a shard.
 */
KEEL_API int keel_broadcast(keel_fn fn, void *arg, keel_done_fn all_done, void *done_arg);

#endif
