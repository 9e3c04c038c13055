// SPDX-License-Identifier: MIT
/*
 * KEEL_BUF_TRACE: built against keel_alloc_trace (the allocator with tracing compiled in).
 * Planted double puts, a wrong-shard put and a leak must each be reported with the
 * allocation site.
 */
#include <errno.h>
#include <keel/alloc_runtime.h>
#include <stdio.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../helpers.h"

#define MiB (1ULL << 20)

/* keel_buf_alloc() recording the line it was called from (the same __LINE__ the library
 * records as the allocation site). */
#define ALLOC_AT(line, a, n, s) ((line) = __LINE__, keel_buf_alloc((a), (n), (s)))

static struct logcap cap = { PTHREAD_MUTEX_INITIALIZER, "", 0 };

static struct keel_alloc *
make(unsigned shard)
{
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_DEFAULT, 8 * MiB, 4 * MiB);
	struct keel_alloc *a = NULL;

	c.shard = shard;
	keel_alloc_log_set(logcap_alloc_hook, &cap);
	cr_assert_eq(keel_alloc_create(&c, &a), 0);
	return a;
}

static void
site(char *buf, size_t len, int line)
{
	snprintf(buf, len, "test_trace.c:%d", line);
}

Test(alloc_trace, double_put_is_reported_with_the_allocation_site)
{
	struct keel_alloc *a = make(0);
	struct keel_alloc_stats st;
	struct keel_slice s, g;
	char where[64];
	int line = 0;

	keel_alloc_bind_thread(a);
	cr_assert_eq(ALLOC_AT(line, a, 1000, &s), 0);
	keel_slice_get(&s, &g);
	keel_slice_put(&g);
	keel_slice_put(&s); /* the last reference */
	cr_assert_eq(cap.len, 0, "no report for correct puts: %s", cap.text);
	keel_slice_put(&s); /* planted double put */
	site(where, sizeof(where), line);
	cr_assert(logcap_has(&cap, "double put"), "log: %s", cap.text);
	cr_assert(logcap_has(&cap, where), "no allocation site %s in: %s", where, cap.text);
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.trace_errors, 1);
	cr_assert_eq(st.buffers_live, 0, "the double put did not free anything twice");
	keel_alloc_destroy(a);
}

Test(alloc_trace, double_put_after_the_header_was_reused_leaves_the_new_buffer_alone)
{
	struct keel_alloc *a = make(0);
	struct keel_slice s, t;

	keel_alloc_bind_thread(a);
	cr_assert_eq(keel_buf_alloc(a, 64, &s), 0);
	keel_slice_put(&s);
	cr_assert_eq(keel_buf_alloc(a, 64, &t), 0);
	cr_assert_eq(t.buf, s.buf, "the header is reused (LIFO)");
	keel_slice_put(&s); /* stale slice: same header, older generation */
	cr_assert(logcap_has(&cap, "double put"), "log: %s", cap.text);
	cr_assert_eq(keel_slice_refs(&t), 1, "the new buffer kept its reference");
	keel_slice_put(&t);
	keel_alloc_destroy(a);
}

/* A sub-slice or a reference taken through a stale slice: reported, and what comes back is
 * no slice (sub fails, get gives an empty one whose put does nothing), not a slice whose
 * use faults or whose put aborts the process this mode exists to keep running. */
Test(alloc_trace, sub_and_get_through_a_stale_slice_are_refused)
{
	struct keel_alloc *a = make(0);
	struct keel_alloc_stats st;
	struct keel_slice s, o, g;

	keel_alloc_bind_thread(a);
	cr_assert_eq(keel_buf_alloc(a, 100, &s), 0);
	keel_slice_put(&s);
	memset(&o, 0x5a, sizeof(o));
	cr_assert_eq(keel_slice_sub(&s, 10, 20, &o), -ESTALE);
	cr_assert_null(o.buf, "sub left a slice behind");
	keel_slice_get(&s, &g);
	cr_assert_null(g.buf);
	cr_assert_null(g.data);
	keel_slice_put(&g); /* an empty slice: nothing, no abort */
	cr_assert(logcap_has(&cap, "get"), "log: %s", cap.text);
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.trace_errors, 2, "the stale sub and get, once each");
	keel_alloc_destroy(a);
}

/* The empty slice a stale get gives back, used again: get, sub, export, move and refs on
 * it are reported or refused, as the stale slice was; they dereferenced its NULL buffer
 * (SIGSEGV), in the mode that exists to report misuse and go on. */
Test(alloc_trace, the_empty_slice_of_a_stale_get_is_refused_again)
{
	struct keel_alloc *a = make(0);
	struct keel_slice s, e, o;

	keel_alloc_bind_thread(a);
	cr_assert_eq(keel_buf_alloc(a, 100, &s), 0);
	keel_slice_put(&s);
	keel_slice_get(&s, &e); /* stale: reported, e is empty */
	cr_assert_null(e.buf);
	keel_slice_get(&e, &o);
	cr_assert_null(o.buf);
	cr_assert_eq(keel_slice_sub(&e, 0, 0, &o), -ESTALE);
	cr_assert_null(o.buf);
	cr_assert_eq(keel_slice_export(&e, 0, &o), -EINVAL);
	keel_slice_move(&e, 1);
	cr_assert_eq(keel_slice_refs(&e), 0);
	keel_slice_put(&e);
	cr_assert(logcap_has(&cap, "empty slice"), "log: %s", cap.text);
	keel_alloc_destroy(a);
}

Test(alloc_trace, put_on_the_wrong_shard_is_reported)
{
	struct keel_alloc *a0 = make(0), *a1 = make(1);
	struct keel_slice s, moved;
	char where[64];
	int line = 0;

	keel_alloc_bind_thread(a0);
	cr_assert_eq(ALLOC_AT(line, a0, 100, &s), 0);
	cr_assert_eq(keel_buf_alloc(a0, 100, &moved), 0);
	keel_slice_move(&moved, 1);
	keel_alloc_bind_thread(a1); /* now "on shard 1" */
	keel_slice_put(&moved);     /* moved properly: no report */
	cr_assert_eq(cap.len, 0, "unexpected report: %s", cap.text);
	keel_slice_put(&s); /* never moved: wrong shard */
	site(where, sizeof(where), line);
	cr_assert(logcap_has(&cap, "wrong shard"), "log: %s", cap.text);
	cr_assert(logcap_has(&cap, "on shard 1 of a buffer held by shard 0"), "log: %s", cap.text);
	cr_assert(logcap_has(&cap, where), "no allocation site %s in: %s", where, cap.text);
	keel_alloc_bind_thread(NULL);
	keel_alloc_destroy(a0);
	keel_alloc_destroy(a1);
}

Test(alloc_trace, leak_at_teardown_is_reported_with_the_allocation_site)
{
	struct keel_alloc *a = make(2);
	struct keel_slice s, ok;
	char where[64];
	int line = 0;

	keel_alloc_bind_thread(a);
	cr_assert_eq(ALLOC_AT(line, a, 5000, &s), 0); /* planted leak */
	cr_assert_eq(keel_buf_alloc(a, 5000, &ok), 0);
	keel_slice_put(&ok);
	keel_alloc_destroy(a);
	site(where, sizeof(where), line);
	cr_assert(logcap_has(&cap, "leak on shard 2"), "log: %s", cap.text);
	cr_assert(logcap_has(&cap, where), "no allocation site %s in: %s", where, cap.text);
	cr_assert_eq(logcap_count(&cap, "buf trace: leak"), 1, "only the planted leak: %s",
		     cap.text);
}

/* Slot headers (keel_buf_slot_create): a put through a slice of an earlier use of the slot
 * is a double put, reported, and the use now live keeps its reference; a use never ended is
 * a leak with the site that armed it. */
static void
slot_release(void *data, uint32_t len, void *arg)
{
	(void)data;
	(void)len;
	++*(unsigned *)arg;
}

Test(alloc_trace, a_stale_slice_of_an_earlier_slot_use_is_reported_and_skipped)
{
	static uint8_t mem[512];
	struct keel_alloc *a = make(0);
	struct keel_alloc_stats st;
	struct keel_slice s, stale, t;
	struct keel_buf *b;
	unsigned released = 0;

	keel_alloc_bind_thread(a);
	cr_assert_eq(keel_buf_slot_create(a, mem, sizeof(mem), slot_release, &released, &b), 0);
	keel_buf_slot_arm(b, &s);
	stale = s;
	keel_slice_put(&s);
	cr_assert_eq(released, 1);
	keel_buf_slot_arm(b, &t);
	cr_assert_eq(cap.len, 0, "no report for correct use: %s", cap.text);
	keel_slice_put(&stale);
	cr_assert(logcap_has(&cap, "double put"), "log: %s", cap.text);
	cr_assert_eq(keel_slice_refs(&t), 1, "the live use kept its reference");
	cr_assert_eq(released, 1, "the live use did not end");
	keel_alloc_stats(a, &st);
	cr_assert_eq(st.trace_errors, 1);
	keel_slice_put(&t);
	cr_assert_eq(released, 2);
	keel_buf_slot_destroy(b);
	keel_alloc_destroy(a);
}

Test(alloc_trace, a_slot_use_never_put_is_a_leak_with_the_site_that_armed_it)
{
	static uint8_t mem[512];
	struct keel_alloc *a = make(3);
	struct keel_slice s;
	struct keel_buf *b;
	unsigned released = 0;
	char where[64];
	int line;

	keel_alloc_bind_thread(a);
	cr_assert_eq(keel_buf_slot_create(a, mem, sizeof(mem), slot_release, &released, &b), 0);
	line = __LINE__ + 1;
	keel_buf_slot_arm(b, &s); /* planted leak */
	keel_alloc_destroy(a);
	site(where, sizeof(where), line);
	cr_assert(logcap_has(&cap, "leak on shard 3"), "log: %s", cap.text);
	cr_assert(logcap_has(&cap, where), "no arm site %s in: %s", where, cap.text);
}
