// SPDX-License-Identifier: MIT
/*
 * keel_slice_export and keel_slice_copy, step by step on simulated shards (xshard_sim.h):
 * who holds which count, when a proxy travels home, and when the memory comes back.
 */
#include <errno.h>
#include <signal.h>
#include <string.h>

#include <criterion/criterion.h>

#include "xshard_sim.h"

static uint8_t mem[4096];

/* A received buffer as the net layer makes it: external memory (the ring's), the ring's
 * own reference (*ring), and a frame slice of it (*frame) as the framer hands it out. */
static void
received(struct keel_slice *ring, struct keel_slice *frame, size_t off, size_t len)
{
	for (size_t i = 0; i < sizeof(mem); i++)
		mem[i] = (uint8_t)(i * 7 + 3);
	cr_assert_eq(keel_buf_wrap(sim.a[0], mem, sizeof(mem), sim_ext_release, NULL, ring), 0);
	cr_assert_eq(keel_slice_sub(ring, off, len, frame), 0);
}

static void
stats(int i, struct keel_alloc_stats *st)
{
	keel_alloc_stats(sim.a[i], st);
}

Test(alloc_export, remote_puts_leave_the_home_count_alone_until_the_proxy_comes_home)
{
	struct keel_slice ring, frame, p, g, sub, bad;
	struct keel_alloc_stats st;

	sim_init(NULL, NULL);
	received(&ring, &frame, 100, 1000);
	cr_assert_eq(keel_slice_export(&frame, 1, &p), 0);
	cr_assert_eq(keel_slice_refs(&ring), 3, "ring + frame + the export's home reference");
	cr_assert(keel_buf_is_foreign(p.buf));
	cr_assert_eq(keel_buf_home(p.buf), sim.a[0], "the proxy's home is the exporter");
	cr_assert_eq(p.data, frame.data);
	cr_assert_eq(p.len, 1000);
	keel_slice_put(&frame); /* the home goes on without it */

	sim_on(1);
	cr_assert_eq(memcmp(p.data, mem + 100, 1000), 0, "zero copy: the same bytes");
	keel_slice_get(&p, &g);
	cr_assert_eq(keel_slice_sub(&p, 10, 20, &sub), 0);
	cr_assert_eq(keel_slice_sub(&p, 990, 20, &bad), -ERANGE, "the window is the export's");
	cr_assert_eq(keel_slice_refs(&p), 3, "the remote side counts on the proxy");
	keel_slice_put(&g);
	keel_slice_put(&sub);
	cr_assert_eq(sim.nmail, 0, "not the last put yet");
	keel_slice_put(&p);
	cr_assert_eq(sim_pending(0), 1, "the proxy's last put travels home");

	sim_on(0);
	cr_assert_eq(keel_slice_refs(&ring), 2, "only the home changed the count so far");
	stats(0, &st);
	cr_assert_eq(st.exports, 1);
	cr_assert_eq(st.exports_live, 1);
	cr_assert_eq(sim_deliver(0), 1);
	cr_assert_eq(keel_slice_refs(&ring), 1, "the export's reference dropped at home");
	stats(0, &st);
	cr_assert_eq(st.exports_live, 0);
	cr_assert_eq(st.remote_returns, 1);
	cr_assert_eq(sim.released, 0);
	keel_slice_put(&ring);
	cr_assert_eq(sim.released, 1, "last holder anywhere done: the memory went home");
	cr_assert_eq(sim.released_on[0], 1, "on its home shard");
	sim_fini();
}

Test(alloc_export, the_last_reference_anywhere_returns_the_memory_even_when_home_puts_first)
{
	struct keel_slice ring, frame, p;

	sim_init(NULL, NULL);
	received(&ring, &frame, 0, 64);
	cr_assert_eq(keel_slice_export(&frame, 2, &p), 0);
	keel_slice_put(&frame);
	keel_slice_put(&ring); /* the kernel is done with the buffer */
	cr_assert_eq(sim.released, 0, "the export still holds it");
	sim_on(2);
	keel_slice_put(&p);
	cr_assert_eq(sim.released, 0, "not freed on the wrong shard");
	cr_assert_eq(sim_deliver(0), 1);
	cr_assert_eq(sim.released_on[0], 1);
	sim_fini();
}

Test(alloc_export, a_proxy_exported_onward_goes_home_hop_by_hop)
{
	struct keel_slice ring, frame, p1, p2;
	struct keel_alloc_stats st;

	sim_init(NULL, NULL);
	received(&ring, &frame, 8, 100);
	cr_assert_eq(keel_slice_export(&frame, 1, &p1), 0);
	keel_slice_put(&frame);
	sim_on(1);
	cr_assert_eq(keel_slice_export(&p1, 2, &p2), 0);
	cr_assert_eq(keel_buf_home(p2.buf), sim.a[1], "a proxy of the proxy, made on 1");
	cr_assert_eq(keel_slice_refs(&p1), 2);
	keel_slice_put(&p1);
	sim_on(2);
	cr_assert_eq(memcmp(p2.data, mem + 8, 100), 0);
	keel_slice_put(&p2);
	cr_assert_eq(sim_pending(1), 1);
	cr_assert_eq(sim_pending(0), 0, "shard 1's proxy still holds the first one");
	cr_assert_eq(sim_deliver(1), 1);
	cr_assert_eq(sim_pending(0), 1, "then the first proxy travels home");
	cr_assert_eq(sim_deliver(0), 1);
	sim_on(0);
	cr_assert_eq(keel_slice_refs(&ring), 1);
	stats(1, &st);
	cr_assert_eq(st.exports, 1);
	cr_assert_eq(st.exports_live, 0);
	keel_slice_put(&ring);
	cr_assert_eq(sim.released_on[0], 1);
	sim_fini();
}

Test(alloc_export, a_proxy_sent_back_home_is_read_and_put_there)
{
	struct keel_slice ring, frame, p, back, g;

	sim_init(NULL, NULL);
	received(&ring, &frame, 0, 512);
	cr_assert_eq(keel_slice_export(&frame, 1, &p), 0);
	keel_slice_put(&frame);
	sim_on(1);
	cr_assert_eq(keel_slice_export(&p, 0, &back), 0);
	keel_slice_put(&p);
	sim_on(0);
	cr_assert_eq(back.data, mem, "home reads the same bytes through the return proxy");
	keel_slice_get(&back, &g); /* home counts on the return proxy like any holder */
	keel_slice_put(&g);
	keel_slice_put(&back);
	cr_assert_eq(sim_pending(1), 1);
	cr_assert_eq(sim_deliver(1), 1);
	cr_assert_eq(sim_deliver(0), 1);
	sim_on(0);
	cr_assert_eq(keel_slice_refs(&ring), 1);
	keel_slice_put(&ring);
	cr_assert_eq(sim.released, 1);
	sim_fini();
}

Test(alloc_export, a_proxy_moved_back_whole_is_released_at_home_without_a_message)
{
	struct keel_slice ring, frame, p;

	sim_init(NULL, NULL);
	received(&ring, &frame, 0, 16);
	cr_assert_eq(keel_slice_export(&frame, 1, &p), 0);
	keel_slice_put(&frame);
	sim_on(1);
	keel_slice_move(&p, 0); /* its only reference goes back: a move is enough */
	sim_on(0);
	keel_slice_put(&p);
	cr_assert_eq(sim.nmail, 0, "the proxy's home is here");
	cr_assert_eq(keel_slice_refs(&ring), 1);
	keel_slice_put(&ring);
	cr_assert_eq(sim.released, 1);
	sim_fini();
}

Test(alloc_export, exporting_an_allocated_slice_works_the_same)
{
	struct keel_slice s, p;
	struct keel_alloc_stats st;

	sim_init(NULL, NULL);
	cr_assert_eq(keel_buf_alloc(sim.a[0], 3000, &s), 0);
	memset(s.data, 0xab, 3000);
	cr_assert_eq(keel_slice_export(&s, 1, &p), 0);
	keel_slice_put(&s);
	stats(0, &st);
	cr_assert_eq(st.buffers_live, 1, "kept for the export");
	sim_on(1);
	cr_assert_eq(p.data[2999], 0xab);
	keel_slice_put(&p);
	sim_deliver(0);
	stats(0, &st);
	cr_assert_eq(st.buffers_live, 0);
	cr_assert_eq(st.bytes_in_use, 0);
	sim_fini();
}

Test(alloc_export, export_to_this_shard_is_an_ordinary_reference)
{
	struct keel_slice s, p;

	sim_init(NULL, NULL);
	cr_assert_eq(keel_buf_alloc(sim.a[0], 64, &s), 0);
	cr_assert_eq(keel_slice_export(&s, 0, &p), 0);
	cr_assert_eq(p.buf, s.buf);
	cr_assert_eq(keel_slice_refs(&s), 2);
	keel_slice_put(&p);
	keel_slice_put(&s);
	sim_fini();
}

Test(alloc_export, export_refused_without_a_shard_or_a_way_home)
{
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_DEFAULT, 8ULL << 20, 4ULL << 20);
	struct keel_alloc *a;
	struct keel_slice s, p;

	cr_assert_eq(keel_alloc_create(&c, &a), 0);
	keel_alloc_bind_thread(a);
	cr_assert_eq(keel_buf_alloc(a, 64, &s), 0);
	cr_assert_eq(keel_slice_export(&s, 1, &p), -EINVAL, "no send_home hook: no way back");
	cr_assert_eq(keel_slice_refs(&s), 1, "nothing taken");
	keel_alloc_bind_thread(NULL);
	cr_assert_eq(keel_slice_export(&s, 1, &p), -EPERM);
	cr_assert_eq(keel_slice_copy(&s, &p), -EPERM);
	keel_alloc_bind_thread(a);
	keel_slice_put(&s);
	keel_alloc_destroy(a);
}

/* A caller that does not check the return (docs/net.md's example once) must not send or put
 * whatever *out held before: a refused export leaves an empty slice, never garbage. */
Test(alloc_export, a_refused_export_leaves_an_empty_slice)
{
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_DEFAULT, 8ULL << 20, 4ULL << 20);
	struct keel_alloc *a;
	struct keel_slice s, out;

	cr_assert_eq(keel_alloc_create(&c, &a), 0);
	keel_alloc_bind_thread(a);
	cr_assert_eq(keel_buf_alloc(a, 64, &s), 0);
	memset(&out, 0xa5, sizeof(out));
	cr_assert_eq(keel_slice_export(&s, 1, &out), -EINVAL, "no send_home hook: no way back");
	cr_assert_null(out.buf, "a refused export (-EINVAL) left *out as it was: %p", out.buf);
	cr_assert_null(out.data);
	cr_assert_eq(out.len, 0);
	keel_alloc_bind_thread(NULL);
	memset(&out, 0xa5, sizeof(out));
	cr_assert_eq(keel_slice_export(&s, 1, &out), -EPERM);
	cr_assert_null(out.buf, "a refused export (-EPERM) left *out as it was: %p", out.buf);
	keel_alloc_bind_thread(a);
	cr_assert_eq(keel_slice_refs(&s), 1, "nothing taken");
	keel_slice_put(&s);
	keel_alloc_destroy(a);
}

/* A refused copy leaves *out empty, as a refused export does: -EPERM on a thread without an
 * allocator, -E2BIG for a slice larger than the calling shard's largest buffer (an
 * external buffer may be), -ENOMEM at the cap. */
static int big_released;

static void
big_release(void *data, uint32_t cap, void *arg)
{
	(void)data, (void)cap, (void)arg;
	big_released++;
}

Test(alloc_export, a_refused_copy_leaves_an_empty_slice)
{
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_DEFAULT, 8ULL << 20, 4ULL << 20);
	static uint8_t big[(4u << 20) + 1];
	struct keel_alloc *a;
	struct keel_slice s, ext, fill[16], out;
	unsigned n = 0;
	int r;

	cr_assert_eq(keel_alloc_create(&c, &a), 0);
	keel_alloc_bind_thread(a);
	cr_assert_eq(keel_buf_alloc(a, 64, &s), 0);
	keel_alloc_bind_thread(NULL);
	memset(&out, 0xa5, sizeof(out));
	cr_assert_eq(keel_slice_copy(&s, &out), -EPERM);
	cr_assert_null(out.buf, "a refused copy (-EPERM) left *out as it was: %p", out.buf);
	cr_assert_null(out.data);
	cr_assert_eq(out.len, 0);
	keel_alloc_bind_thread(a);
	cr_assert_eq(keel_buf_wrap(a, big, sizeof(big), big_release, NULL, &ext), 0);
	memset(&out, 0xa5, sizeof(out));
	cr_assert_eq(keel_slice_copy(&ext, &out), -E2BIG);
	cr_assert_null(out.buf, "a refused copy (-E2BIG) left *out as it was: %p", out.buf);
	cr_assert_eq(out.len, 0);
	while (n < 16 && (r = keel_buf_alloc(a, 1 << 20, &fill[n])) == 0)
		n++;
	cr_assert_eq(r, -ENOMEM, "no -ENOMEM after %u buffers of 1 MiB", n);
	memset(&out, 0xa5, sizeof(out));
	cr_assert_eq(keel_slice_copy(&fill[0], &out), -ENOMEM);
	cr_assert_null(out.buf, "a refused copy (-ENOMEM) left *out as it was: %p", out.buf);
	cr_assert_eq(out.len, 0);
	while (n)
		keel_slice_put(&fill[--n]);
	cr_assert_eq(keel_slice_refs(&s), 1, "nothing taken");
	keel_slice_put(&ext);
	cr_assert_eq(big_released, 1);
	keel_slice_put(&s);
	keel_alloc_destroy(a);
}

Test(alloc_export, copy_lands_in_the_calling_shards_memory_and_frees_the_original_at_once)
{
	struct keel_slice ring, frame, c, e;
	struct keel_alloc_stats st;

	sim_init(NULL, NULL);
	received(&ring, &frame, 50, 300);
	cr_assert_eq(keel_slice_copy(&frame, &c), 0);
	cr_assert_neq(c.buf, frame.buf);
	cr_assert_eq(c.len, 300);
	cr_assert_eq(memcmp(c.data, mem + 50, 300), 0);
	keel_slice_put(&frame);
	keel_slice_put(&ring);
	cr_assert_eq(sim.released, 1, "the received buffer went back at once");
	keel_slice_move(&c, 1); /* the copy's only reference */
	sim_on(1);
	cr_assert_eq(c.data[0], (uint8_t)(50 * 7 + 3));
	keel_slice_put(&c);
	cr_assert_eq(sim_deliver(0), 1);
	stats(0, &st);
	cr_assert_eq(st.buffers_live, 0);

	/* On the receiving shard: a local copy of an exported slice, the proxy put early. */
	sim_on(0);
	received(&ring, &frame, 0, 10);
	cr_assert_eq(keel_slice_export(&frame, 1, &e), 0);
	keel_slice_put(&frame);
	sim_on(1);
	cr_assert_eq(keel_slice_copy(&e, &c), 0);
	cr_assert_eq(keel_buf_home(c.buf), sim.a[1]);
	keel_slice_put(&e);
	cr_assert_eq(memcmp(c.data, mem, 10), 0);
	keel_slice_put(&c); /* local: no message */
	cr_assert_eq(sim_deliver(0), 1, "only the proxy's trip home");
	sim_on(0);
	keel_slice_put(&ring);
	cr_assert_eq(sim.released, 2);
	/* An empty slice copies to an empty slice. */
	cr_assert_eq(keel_buf_alloc(sim.a[0], 8, &ring), 0);
	cr_assert_eq(keel_slice_sub(&ring, 8, 0, &e), 0);
	cr_assert_eq(keel_slice_copy(&e, &c), 0);
	cr_assert_eq(c.len, 0);
	keel_slice_put(&c);
	keel_slice_put(&e);
	keel_slice_put(&ring);
	sim_fini();
}

static struct logcap cap = { PTHREAD_MUTEX_INITIALIZER, "", 0 };

/* The export's kept reference holds the received buffer: one buffer, counted once (it was
 * counted again through its proxy, "2 buffers"), and the proxy said apart. */
Test(alloc_export, the_teardown_line_counts_an_exported_buffer_once)
{
	struct keel_slice ring, frame, p;
	char line[512];

	sim_init(logcap_alloc_hook, &cap);
	received(&ring, &frame, 0, 16);
	cr_assert_eq(keel_slice_export(&frame, 1, &p), 0);
	keel_slice_put(&frame);
	keel_slice_put(&ring); /* only the export's reference is left; p is never put */
	keel_alloc_destroy(sim.a[0]);
	keel_alloc_log_set(NULL, NULL);
	logcap_line(&cap, "still referenced at teardown", line, sizeof(line));
	cr_assert(strstr(line, "shard 0: 1 buffers ("), "line: '%s'", line);
	cr_assert(strstr(line, "and 1 exported slices"), "line: '%s'", line);
	keel_alloc_destroy(sim.a[1]);
	keel_alloc_destroy(sim.a[2]);
}

#ifndef KEEL_BUF_TRACE
static void
quiet_log(int lvl, const char *msg, void *arg)
{
	(void)lvl;
	(void)msg;
	(void)arg;
}

/* A put after the last one, made while that last put is still on its way home: the header
 * is not released yet, so its generation has not moved and the generation check passes.
 * The count (0) is what stops it; without that check the count wrapped and the buffer was
 * released later under a reference the caller still believed in. */
Test(alloc_export, a_put_while_the_last_one_travels_home_aborts, .signal = SIGABRT)
{
	struct keel_slice ring, frame, p, again;

	sim_init(quiet_log, NULL);
	received(&ring, &frame, 0, 16);
	cr_assert_eq(keel_slice_export(&frame, 1, &p), 0);
	keel_slice_put(&frame);
	sim_on(1);
	again = p;
	keel_slice_put(&p);
	cr_assert_eq(sim.nmail, 1, "the proxy's last put travels home (test premise)");
	keel_slice_put(&again); /* aborts */
	keel_alloc_log_set(NULL, NULL);
	cr_assert_fail("a put after the last one returned while that one was on its way home");
}
#endif
