/* SPDX-License-Identifier: MIT */
/*
 * What the running kernel's io_uring offers, and the start-up decision for each feature
 * of keel_opts (--feature). Plain data: no liburing types.
 */
#ifndef KEEL_CAPS_H
#define KEEL_CAPS_H

#include <keel/common.h>
#include <keel/opts.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/** What the running kernel's io_uring offers, probed once per process. */
struct keel_caps {
	char kernel[65];        /* uname release */
	int probe_status;       /* 0, or -errno: no ring could be created at all, or a trial
				 * found no descriptor or memory (-EMFILE, -ENFILE, -ENOMEM,
				 * -EAGAIN; such a probe is not kept) */
	uint32_t ring_features; /* IORING_FEAT_* of a default ring */
	unsigned last_op;       /* highest opcode the kernel knows */
	bool op_supported[256]; /* by IORING_OP_* */
	bool single_issuer;     /* IORING_SETUP_SINGLE_ISSUER accepted */
	bool defer_taskrun;     /* IORING_SETUP_DEFER_TASKRUN accepted */
	bool coop_taskrun;      /* IORING_SETUP_COOP_TASKRUN | TASKRUN_FLAG accepted */
	bool reg_ring_fd;       /* io_uring_register_ring_fd works */
	bool reg_buffers;       /* sparse registered-buffer tables (5.19) */
	bool sparse_files;      /* net: sparse registered-file tables (5.19) */
	bool pbuf_inc;          /* net: IOU_PBUF_RING_INC buffer rings register (6.12) */
	bool zc_report_usage;   /* net: SEND_ZC takes IORING_SEND_ZC_REPORT_USAGE (6.2) */
	bool cancel_any;        /* IORING_ASYNC_CANCEL_ANY (5.19): the stop needs it */
	bool sock_cmd;          /* net: socket options through the ring (SOCKET_URING_OP_*
				 * of IORING_OP_URING_CMD, 6.7): a direct descriptor's */
	int register_status;    /* 0, or the -errno io_uring_register gave for the op list
				 * though io_uring_setup worked (a seccomp profile's -EPERM):
				 * the probe is kept, keel_runtime_create refuses */
};

/**
 * The capability probe, run on first use and kept for the process once made. A probe that
 * a shortage of descriptors or memory left undecided is not kept: it comes back with
 * probe_status set (keel_runtime_create fails, naming the fix), in a struct of the calling
 * thread's that the thread's next call replaces, and the next call probes again.
 * Returns: a read-only struct, valid for the life of the process once the probe was made.
 * Context: any thread.
 */
KEEL_API const struct keel_caps *keel_caps_get(void);

/** The decision for one feature at start-up. */
struct keel_feature_decision {
	enum keel_policy policy;
	bool used;
	const char *reason; /* why it is used or not, for people */
};

/**
 * Decide every feature of @opts against the capabilities: fills @out[KEEL_FEAT__COUNT].
 * Returns: 0, -EOPNOTSUPP when a feature forced on is missing, or the probe's status when
 * it could not run (-EMFILE, -ENOMEM, ...: keel_caps_get) or io_uring is missing, or
 * -ENOTSUP when the kernel lacks what the shard loop needs (the
 * message, with the fix, is logged in each case).
 */
KEEL_API int keel_features_decide(const struct keel_opts *opts, struct keel_feature_decision *out);

/**
 * Whether feature @f is used by this shard's runtime (the start-up decision).
 * Context: a shard.
 */
KEEL_API bool keel_feature_used(enum keel_feature f);

/** Print the capability matrix and each feature's decision for @opts to @f. */
KEEL_API void keel_caps_print(const struct keel_opts *opts, FILE *f);

#ifdef __cplusplus
}
#endif

#endif
