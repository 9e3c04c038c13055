// SPDX-License-Identifier: MIT
#include <errno.h>
#include <sched.h>
#include <stdatomic.h>

#include <criterion/criterion.h>

#include "helpers.h"

struct start_state {
	unsigned shards;
	_Atomic unsigned started;
	_Atomic unsigned on_cpu;
	_Atomic unsigned flags_ok;
	_Atomic unsigned ids_seen; /* bitmap of ids, up to 32 */
	unsigned need_flags;
	unsigned forbid_flags;
};

static void
stop_when_all_started(void *arg)
{
	struct start_state *st = arg;
	if (atomic_load(&st->started) == st->shards)
		keel_stop(0);
	else
		keel_defer(stop_when_all_started, st);
}

static void
on_start_record(void *app)
{
	struct start_state *st = app;
	struct keel_shard *sh = keel_this_shard();
	unsigned flags = keel_shard_ring_flags(sh);

	cr_assert_not_null(sh);
	cr_assert_eq(keel_shard_count(sh), st->shards);
	if (sched_getcpu() == keel_shard_cpu(sh))
		atomic_fetch_add(&st->on_cpu, 1);
	if ((flags & st->need_flags) == st->need_flags && !(flags & st->forbid_flags))
		atomic_fetch_add(&st->flags_ok, 1);
	atomic_fetch_or(&st->ids_seen, 1u << keel_shard_id(sh));
	atomic_fetch_add(&st->started, 1);
	if (keel_shard_id(sh) == 0)
		keel_defer(stop_when_all_started, st);
}

static void
run_shards(unsigned n)
{
	struct keel_opts o = test_opts(n);
	struct start_state st = { .shards = n,
				  .need_flags =
					  IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN };

	cr_assert_eq(keel_run(&o, on_start_record, &st), 0);
	cr_assert_eq(atomic_load(&st.started), n);
	cr_assert_eq(atomic_load(&st.ids_seen), (n == 32 ? 0 : (1u << n)) - 1);
	cr_assert_eq(atomic_load(&st.on_cpu), n, "only %u of %u shards ran on their CPU",
		     atomic_load(&st.on_cpu), n);
	cr_assert_eq(atomic_load(&st.flags_ok), n, "ring lacks SINGLE_ISSUER|DEFER_TASKRUN");
}

Test(core_runtime, starts_and_stops_one_shard)
{
	run_shards(1);
}

Test(core_runtime, starts_and_stops_two_shards)
{
	run_shards(2);
}

Test(core_runtime, starts_and_stops_eight_shards_oversubscribed)
{
	run_shards(8);
}

Test(core_runtime, forced_coop_taskrun_fallback_works)
{
	struct keel_opts o = test_opts(2);
	struct start_state st = { .shards = 2,
				  .need_flags =
					  IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER,
				  .forbid_flags = IORING_SETUP_DEFER_TASKRUN };

	o.features[KEEL_FEAT_DEFER_TASKRUN] = KEEL_POLICY_OFF;
	cr_assert_eq(keel_run(&o, on_start_record, &st), 0);
	cr_assert_eq(atomic_load(&st.flags_ok), 2);
}

Test(core_runtime, all_features_forced_off_still_runs)
{
	struct keel_opts o = test_opts(2);
	struct start_state st = { .shards = 2,
				  .forbid_flags =
					  IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SINGLE_ISSUER };

	for (int f = 0; f < KEEL_FEAT__COUNT; f++)
		o.features[f] = KEEL_POLICY_OFF;
	cr_assert_eq(keel_run(&o, on_start_record, &st), 0);
	cr_assert_eq(atomic_load(&st.flags_ok), 2);
}
