// SPDX-License-Identifier: MIT
/*
 * Slot headers (keel_buf_slot_create): one header across the uses of memory its owner
 * reuses (a provided-buffer ring's buffer), on simulated shards (xshard_sim.h). Each use
 * is a wrapped buffer whose last put runs the release; the header stays, its generation
 * changed, so slices of an earlier use are stale.
 */
#include <keel/alloc_runtime.h>
#include <signal.h>
#include <string.h>

#include <criterion/criterion.h>

#include "xshard_sim.h"

static uint8_t mem[2048];

static struct keel_buf *
slot(void)
{
	struct keel_buf *b = NULL;

	cr_assert_eq(keel_buf_slot_create(sim.a[0], mem, sizeof(mem), sim_ext_release, NULL, &b),
		     0);
	return b;
}

Test(alloc_slot, each_use_ends_at_its_last_put_and_the_next_use_has_a_new_generation)
{
	struct keel_alloc_stats st;
	struct keel_slice s, g, t;
	struct keel_buf *b;

	sim_init(NULL, NULL);
	b = slot();
	keel_alloc_stats(sim.a[0], &st);
	cr_assert_eq(st.ext_buffers_live, 0, "a header with no use is not a live buffer");
	keel_buf_slot_arm(b, &s);
	cr_assert_eq(s.buf, b);
	cr_assert_eq(s.data, mem);
	cr_assert_eq(s.len, sizeof(mem));
	cr_assert(keel_buf_is_external(s.buf));
	keel_alloc_stats(sim.a[0], &st);
	cr_assert_eq(st.ext_buffers_live, 1);
	cr_assert_eq(st.ext_bytes_in_use, sizeof(mem));
	keel_slice_get(&s, &g);
	keel_slice_put(&s);
	cr_assert_eq(sim.released, 0, "a reference is left");
	keel_slice_put(&g);
	cr_assert_eq(sim.released, 1, "the last put ran the release");
	keel_alloc_stats(sim.a[0], &st);
	cr_assert_eq(st.ext_buffers_live, 0);
	cr_assert_eq(st.ext_bytes_in_use, 0);
	keel_buf_slot_arm(b, &t);
	cr_assert_eq(t.buf, b, "the same header");
	cr_assert_neq(t.gen_, s.gen_, "a new generation: the first use's slices are stale");
	cr_assert_eq(keel_slice_refs(&t), 1);
	keel_slice_put(&t);
	cr_assert_eq(sim.released, 2);
	keel_buf_slot_destroy(b);
	sim_fini();
}

/* The misuse aborts below say what was misused first: the log hook checks the line (a
 * line without it fails the test before the abort). */
static void
says(int level, const char *msg, void *arg)
{
	(void)level;
	cr_assert(strstr(msg, (const char *)arg), "the abort's line: '%s'", msg);
}

/* The allocator's invariant check (alloc_verify) says the expression that failed. */
Test(alloc_slot, a_stale_slice_of_an_earlier_use_aborts_its_put, .signal = SIGABRT)
{
	struct keel_slice s, stale, t;
	struct keel_buf *b;

	sim_init(NULL, NULL);
	b = slot();
	keel_buf_slot_arm(b, &s);
	stale = s;
	keel_slice_put(&s);
	keel_buf_slot_arm(b, &t);
	keel_alloc_log_set(says, "invariant violated: s->gen_ == b->gen (memory corruption)");
	keel_slice_put(&stale); /* the earlier use's: must not drop the new use's reference */
	keel_alloc_log_set(NULL, NULL);
	cr_assert_fail("the put of a stale slice returned (the new use's references: %u)",
		       keel_slice_refs(&t));
}

Test(alloc_slot, arming_a_slot_whose_use_is_live_aborts, .signal = SIGABRT)
{
	struct keel_slice s, t;
	struct keel_buf *b;

	sim_init(NULL, NULL);
	b = slot();
	keel_buf_slot_arm(b, &s);
	keel_alloc_log_set(
		says,
		"invariant violated: b->kind == BUF_SLOT && b->refs == 0 (memory corruption)");
	keel_buf_slot_arm(b, &t);
	keel_alloc_log_set(NULL, NULL);
	cr_assert_fail("a second arm while the first use is live returned");
}

Test(alloc_slot, a_use_exported_and_put_on_another_shard_ends_at_home)
{
	struct keel_slice s, p;
	struct keel_buf *b;

	sim_init(NULL, NULL);
	b = slot();
	keel_buf_slot_arm(b, &s);
	cr_assert_eq(keel_slice_export(&s, 1, &p), 0);
	keel_slice_put(&s);
	cr_assert_eq(sim.released, 0, "the export holds the use");
	sim_on(1);
	keel_slice_put(&p);
	cr_assert_eq(sim.released, 0, "not ended on the wrong shard");
	cr_assert_eq(sim_deliver(0), 1, "the proxy's last put travelled home");
	cr_assert_eq(sim.released_on[0], 1, "the use ended on its home shard");
	keel_buf_slot_arm(b, &s); /* aborts unless the use was over */
	keel_slice_put(&s);
	keel_buf_slot_destroy(b);
	sim_fini();
}

/* The release of a ring's last use may tear the ring down, headers and all (the network
 * shard goes with its last buffer): the header must not be touched after the release. The
 * header destroyed there is the next one a buffer gets (the free list is LIFO): a write to
 * it after the release would change that buffer's generation and fail its put. */
static struct keel_buf *dying;
static struct keel_slice reused;

static void
release_destroys(void *data, uint32_t cap, void *arg)
{
	(void)data;
	(void)cap;
	(void)arg;
	keel_buf_slot_destroy(dying);
	cr_assert_eq(keel_buf_alloc(sim.a[0], 64, &reused), 0);
	cr_assert_eq(reused.buf, dying, "the destroyed header was reused");
}

Test(alloc_slot, a_release_that_destroys_the_header_is_the_last_touch_of_it)
{
	struct keel_alloc_stats st;
	struct keel_slice s;

	sim_init(NULL, NULL);
	cr_assert_eq(
		keel_buf_slot_create(sim.a[0], mem, sizeof(mem), release_destroys, NULL, &dying),
		0);
	keel_buf_slot_arm(dying, &s);
	keel_slice_put(&s);
	cr_assert_eq(keel_slice_refs(&reused), 1);
	keel_slice_put(&reused); /* aborts if the header was written after the release */
	keel_alloc_stats(sim.a[0], &st);
	cr_assert_eq(st.ext_buffers_live, 0);
	cr_assert_eq(st.buffers_live, 0);
	sim_fini();
}

/* A destroyed header is on its allocator's free list: destroyed again, it was linked to
 * itself there, and the next two allocations shared it (x.buf == y.buf). */
Test(alloc_slot, destroying_a_header_twice_aborts, .signal = SIGABRT)
{
	struct keel_buf *b;

	sim_init(NULL, NULL);
	b = slot();
	keel_buf_slot_destroy(b);
	keel_alloc_log_set(says, "keel_buf_slot_destroy of a slot header already destroyed");
	keel_buf_slot_destroy(b);
	keel_alloc_log_set(NULL, NULL);
	cr_assert_fail("a second destroy returned");
}

/* An arm after the destroy began a use on a header on the free list, whose link there
 * overlays the release callback. */
Test(alloc_slot, arming_a_destroyed_header_aborts, .signal = SIGABRT)
{
	struct keel_slice s;
	struct keel_buf *b;

	sim_init(NULL, NULL);
	b = slot();
	keel_buf_slot_destroy(b);
	keel_alloc_log_set(says, "keel_buf_slot_arm of a slot header already destroyed");
	keel_buf_slot_arm(b, &s);
	keel_alloc_log_set(NULL, NULL);
	cr_assert_fail("an arm of a destroyed header returned (slice of %u bytes)", s.len);
}

/* A use counts on its home's allocator, which only the home's thread writes: an arm on
 * another shard is refused as keel_buf_release on one is. */
Test(alloc_slot, arming_on_a_shard_other_than_the_home_aborts, .signal = SIGABRT)
{
	struct keel_slice s;
	struct keel_buf *b;

	sim_init(NULL, NULL);
	b = slot();
	sim_on(1);
	keel_alloc_log_set(says, "keel_buf_slot_arm of a slot header of shard 0 on shard 1");
	keel_buf_slot_arm(b, &s);
	keel_alloc_log_set(NULL, NULL);
	cr_assert_fail("an arm on shard 1 of shard 0's slot returned");
}
