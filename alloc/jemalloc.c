// SPDX-License-Identifier: MIT
/*
 * Library keel_jemalloc: links jemalloc and hands its entry points to keel_alloc, which
 * itself does not link it (so a program that does not opt in keeps its malloc).
 */
#include <keel/jemalloc.h>

#include "alloc_internal.h"

static const struct keel__je je = {
	.mallocx_fn = mallocx,
	.rallocx_fn = rallocx,
	.dallocx_fn = dallocx,
	.sdallocx_fn = sdallocx,
	.sallocx_fn = sallocx,
	.mallctl_fn = mallctl,
};

int
keel_jemalloc_enable(void)
{
	keel__alloc_set_jemalloc(&je);
	return 0;
}
