/* SPDX-License-Identifier: MIT */
/*
 * An operation on a shard's ring, as the loop sees it: a struct keel_op embedded in the
 * caller's object, whose address is the SQE's user_data. This header needs no liburing, so
 * public headers that embed an operation (keel/file.h) do not expose the kernel ABI; the
 * calls that prepare SQEs are in keel/ring.h.
 */
#ifndef KEEL_OP_H
#define KEEL_OP_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_op;

/** Completion of an operation: @res and @flags are the CQE's. */
typedef void (*keel_op_fn)(struct keel_op *op, int res, uint32_t flags);

/** An operation; embed it and recover the outer object with container_of-style arithmetic. */
struct keel_op {
	keel_op_fn fn;
};

#ifdef __cplusplus
}
#endif

#endif
