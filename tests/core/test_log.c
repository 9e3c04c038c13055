// SPDX-License-Identifier: MIT
/*
 * The log sink. A sink that changes the sink (falling back to stderr after its own write
 * failed, say) called keel_log_set_sink while keel_log held the sink's lock for reading:
 * the call waited for the lock for writing on the same thread, for ever (a shard doing so
 * never stopped). The change now takes effect once the sink returns.
 */
#include <keel/log.h>
#include <stdatomic.h>
#include <string.h>

#include <criterion/criterion.h>

static _Atomic int first_calls, second_calls;

static void
second_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)level, (void)module, (void)shard, (void)msg, (void)arg;
	atomic_fetch_add(&second_calls, 1);
}

static void
first_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)level, (void)module, (void)shard, (void)arg;
	atomic_fetch_add(&first_calls, 1);
	keel_log_set_sink(second_sink, NULL);
	/* Still this sink's own message: logged from inside it, it reaches it again (the
	 * change waits for the outer call to return). */
	if (strcmp(msg, "one") == 0)
		keel_log(KEEL_LOG_ERROR, "test", "inner");
}

Test(core_log, a_sink_that_changes_the_sink_goes_on, .timeout = 30)
{
	keel_log_set_sink(first_sink, NULL);
	keel_log(KEEL_LOG_ERROR, "test", "one");
	keel_log(KEEL_LOG_ERROR, "test", "two");
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(atomic_load(&first_calls), 2, "the first sink took %d messages",
		     atomic_load(&first_calls));
	cr_assert_eq(atomic_load(&second_calls), 1, "the second sink took %d messages",
		     atomic_load(&second_calls));
}
