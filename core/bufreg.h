/* SPDX-License-Identifier: MIT */
/* Private to core/: the shard's allocator and its fixed-buffer table (bufreg.c). */
#ifndef KEEL_CORE_BUFREG_H
#define KEEL_CORE_BUFREG_H

#include <keel/alloc.h>
#include <stdbool.h>
#include <stdint.h>

struct keel_shard;

enum slot_state {
	SLOT_UNTRIED = 0,
	SLOT_REGISTERED = 1,
	SLOT_FAILED = 2,
};

struct keel__bufreg {
	struct keel_alloc *alloc;
	uint8_t *slots; /* [nslots] enum slot_state */
	unsigned nslots;
	bool enabled; /* the sparse table exists and registration is allowed */
	bool failed;  /* a region failed to register (RLIMIT_MEMLOCK) */
	bool policy_on;
};

/* Create the shard's allocator and its sparse fixed-buffer table (ring must exist). */
int keel__bufreg_init(struct keel_shard *s);
/* After the ring is gone: destroy the allocator (leaks are reported). */
void keel__bufreg_fini(struct keel_shard *s);
/* The fixed-buffer slot and offset of @len bytes at @p inside one of this shard's regions,
 * whatever buffer holds them (a receive buffer that net wrapped is carved from an allocator
 * buffer): registers the slot on first use. Returns 0, -ENOENT (not in a region in use),
 * -ERANGE (crosses the region's end), -EOPNOTSUPP (unregistered shard), -ENOMEM (the region
 * could not be registered). */
int keel__bufreg_fixed_mem(struct keel_shard *s, const void *p, size_t len, unsigned *index,
			   uint64_t *offset);

#endif
