// SPDX-License-Identifier: MIT
/*
 * KEEL_BUF_TRACE with exports: a proxy's holder is the shard it was exported to, so the
 * whole round trip (export, remote gets and puts, re-export, return home) reports nothing;
 * a remote shard touching the exported buffer itself, an exported buffer moved away, and a
 * proxy never put are still reported.
 */
#include <errno.h>
#include <keel/alloc_runtime.h>
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../xshard_sim.h"

static struct logcap cap = { PTHREAD_MUTEX_INITIALIZER, "", 0 };
static uint8_t mem[1024];

static uint64_t
trace_errors(void)
{
	uint64_t n = 0;
	for (int i = 0; i < SIM_SHARDS; i++) {
		struct keel_alloc_stats st;
		keel_alloc_stats(sim.a[i], &st);
		n += st.trace_errors;
	}
	return n;
}

Test(alloc_export_trace, a_full_round_trip_reports_nothing)
{
	struct keel_slice ring, frame, p1, p2, back, g, c;

	sim_init(logcap_alloc_hook, &cap);
	cr_assert_eq(keel_buf_wrap(sim.a[0], mem, sizeof(mem), sim_ext_release, NULL, &ring), 0);
	cr_assert_eq(keel_slice_sub(&ring, 10, 100, &frame), 0);
	cr_assert_eq(keel_slice_export(&frame, 1, &p1), 0);
	keel_slice_put(&frame);
	sim_on(1);
	keel_slice_get(&p1, &g);
	cr_assert_eq(keel_slice_export(&p1, 2, &p2), 0);
	cr_assert_eq(keel_slice_export(&g, 0, &back), 0);
	cr_assert_eq(keel_slice_copy(&g, &c), 0);
	keel_slice_put(&c);
	keel_slice_put(&g);
	keel_slice_put(&p1);
	sim_on(2);
	keel_slice_put(&p2);
	sim_on(0);
	keel_slice_put(&back);
	sim_deliver(1);
	sim_deliver(0);
	sim_on(0);
	keel_slice_put(&ring);
	cr_assert_eq(sim.released, 1);
	cr_assert_eq(cap.len, 0, "no report for correct use: %s", cap.text);
	cr_assert_eq(trace_errors(), 0);
	sim_fini();
	cr_assert_eq(cap.len, 0, "no leak reported: %s", cap.text);
}

/* A message that could not be sent: the exporter takes its proxy back and puts it. */
Test(alloc_export_trace, the_exporter_taking_back_an_unsent_proxy_reports_nothing)
{
	struct keel_slice ring, frame, p;

	sim_init(logcap_alloc_hook, &cap);
	cr_assert_eq(keel_buf_wrap(sim.a[0], mem, sizeof(mem), sim_ext_release, NULL, &ring), 0);
	cr_assert_eq(keel_slice_sub(&ring, 0, 10, &frame), 0);
	cr_assert_eq(keel_slice_export(&frame, 1, &p), 0);
	keel_slice_put(&frame);
	keel_slice_move(&p, 0);
	keel_slice_put(&p);
	keel_slice_put(&ring);
	cr_assert_eq(sim.released, 1);
	cr_assert_eq(trace_errors(), 0, "log: %s", cap.text);
	sim_fini();
	cr_assert_eq(cap.len, 0, "no leak reported: %s", cap.text);
}

Test(alloc_export_trace, the_remote_shard_touching_the_exported_buffer_itself_is_reported)
{
	struct keel_slice ring, frame, p, bad;

	sim_init(logcap_alloc_hook, &cap);
	cr_assert_eq(keel_buf_wrap(sim.a[0], mem, sizeof(mem), sim_ext_release, NULL, &ring), 0);
	cr_assert_eq(keel_slice_sub(&ring, 0, 10, &frame), 0);
	cr_assert_eq(keel_slice_export(&frame, 1, &p), 0);
	sim_on(1);
	/* The bug exports prevent: a count of the home's buffer changed on shard 1. */
	keel_slice_get(&frame, &bad);
	cr_assert(logcap_has(&cap, "get on shard 1 of a buffer held by shard 0"), "log: %s",
		  cap.text);
	cr_assert(logcap_has(&cap, "keel_slice_export"), "the report names the fix: %s", cap.text);
	cr_assert_eq(trace_errors(), 1);
	sim_on(0);
	keel_slice_put(&bad);
	keel_slice_put(&frame);
	sim_on(1);
	keel_slice_put(&p);
	sim_deliver(0);
	keel_slice_put(&ring);
	cr_assert_eq(trace_errors(), 1, "nothing else");
	sim_fini();
}

Test(alloc_export_trace, moving_a_shared_receive_buffer_is_reported_on_the_home_put)
{
	struct keel_slice ring, frame;

	sim_init(logcap_alloc_hook, &cap);
	cr_assert_eq(keel_buf_wrap(sim.a[0], mem, sizeof(mem), sim_ext_release, NULL, &ring), 0);
	cr_assert_eq(keel_slice_sub(&ring, 0, 10, &frame), 0);
	keel_slice_move(&frame, 1); /* wrong: the ring still holds a reference here */
	keel_slice_put(&ring);      /* the ring's put on the home shard */
	cr_assert(logcap_has(&cap, "put on shard 0 of a buffer held by shard 1"), "log: %s",
		  cap.text);
	sim_on(1);
	keel_slice_put(&frame);
	sim_deliver(0);
	sim_fini();
}

Test(alloc_export_trace, a_proxy_never_put_is_a_leak_with_the_export_site)
{
	struct keel_slice s, p;
	char where[64];
	int line;

	sim_init(logcap_alloc_hook, &cap);
	cr_assert_eq(keel_buf_alloc(sim.a[0], 100, &s), 0);
	line = __LINE__ + 1;
	cr_assert_eq(keel_slice_export(&s, 2, &p), 0);
	keel_slice_put(&s);
	sim_on(0);
	keel_alloc_destroy(sim.a[0]);
	snprintf(where, sizeof(where), "test_export_trace.c:%d", line);
	cr_assert(logcap_has(&cap, "slice of 100 bytes exported to shard 2"), "log: %s", cap.text);
	cr_assert(logcap_has(&cap, where), "no export site %s in: %s", where, cap.text);
	keel_alloc_destroy(sim.a[1]);
	keel_alloc_destroy(sim.a[2]);
}

/* The exporter's move of a proxy back to itself is exempt from the holder check (an unsent
 * proxy, the_exporter_taking_back_an_unsent_proxy_reports_nothing), not from the stale check:
 * a proxy already put and released may have its header reused by the next export, and a
 * move through the old slice would take that new proxy from the shard that holds it. */
Test(alloc_export_trace, the_exporter_moving_back_a_stale_proxy_is_reported)
{
	struct keel_slice s, p, p2;

	sim_init(logcap_alloc_hook, &cap);
	cr_assert_eq(keel_buf_alloc(sim.a[0], 100, &s), 0); /* kept alive throughout */
	cr_assert_eq(keel_slice_export(&s, 1, &p), 0);
	sim_on(1);
	keel_slice_put(&p);
	cr_assert_eq(sim_deliver(0), 1, "the proxy went home and its header was freed");
	cr_assert_eq(keel_slice_export(&s, 1, &p2), 0);
	cr_assert_eq(p2.buf, p.buf, "test premise: the next export reuses the header");
	cr_assert_eq(trace_errors(), 0, "log: %s", cap.text);
	keel_slice_move(&p, 0); /* stale: p was put on shard 1 already */
	cr_assert_eq(trace_errors(), 1, "a move through a stale proxy slice went unreported");
	cr_assert(logcap_has(&cap, "move of a buffer already freed"), "log: %s", cap.text);
	sim_on(1);
	keel_slice_put(&p2); /* shard 1 still holds the new proxy */
	cr_assert_eq(trace_errors(), 1, "shard 1's put of its own proxy was reported: %s",
		     cap.text);
	cr_assert_eq(sim_deliver(0), 1);
	keel_slice_put(&s);
	sim_fini();
}
