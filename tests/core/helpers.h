/* SPDX-License-Identifier: MIT */
/* Shared helpers for the core tests. */
#ifndef KEEL_TEST_HELPERS_H
#define KEEL_TEST_HELPERS_H

#include <keel/keel.h>
#include <keel/ring.h>
#include <stdatomic.h>

#include "shard_check.h"
#include "wait.h"

/* Options for a test runtime: quiet, no signal handling unless a test asks for it, and no
 * idle polling (Criterion runs two tests at once on two cores: shards that spin between
 * passes would starve each other; a test about polling sets idle_poll_us itself). */
static inline struct keel_opts
test_opts(unsigned shards)
{
	struct keel_opts o;
	keel_opts_init(&o);
	o.shards = shards;
	o.signals = false;
	o.log_level = KEEL_LOG_WARN;
	o.idle_poll_us = 0;
	return o;
}

#endif
