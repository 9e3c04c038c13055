// SPDX-License-Identifier: MIT
/*
 * The shard's allocator on its ring: a sparse fixed-buffer table (slot i = region i of the
 * shard's allocator) registered at ring set-up, filled lazily: a region is registered the
 * first time one of its buffers is used for I/O. Start-up registers region 0 only (bounded
 * time, and the RLIMIT_MEMLOCK decision is made before the first request); 1 GiB of
 * regions is never pinned in one stall.
 *
 * RLIMIT_MEMLOCK: the soft limit is raised to the hard limit once per process. Without
 * CAP_IPC_LOCK, pinned pages count against it; when a registration fails with ENOMEM the
 * shard goes on with unregistered buffers (plain sends) after one log line naming the
 * limit and the fix, or, with --feature reg_buffers=on, start-up fails with that message.
 */
#include "bufreg.h"

#include <errno.h>
#include <keel/alloc_runtime.h>
#include <linux/capability.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "internal.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;
/* Bytes this process has pinned in fixed-buffer tables, all runtimes and shards: what a
 * person compares with RLIMIT_MEMLOCK (the kernel counts pinned pages per user). */
static _Atomic uint64_t pinned_bytes;

static void
alloc_log_hook(int level, const char *msg, void *arg)
{
	keel_log((enum keel_log_level)level, "alloc", "%s", msg);
}

static void
process_init(void)
{
	struct rlimit rl;

	keel_alloc_log_set(alloc_log_hook, NULL);
	if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_MEMLOCK, &rl) < 0)
			keel_log(KEEL_LOG_DEBUG, "core", "raising RLIMIT_MEMLOCK failed: %s",
				 strerror(errno));
	}
}

static bool
have_cap_ipc_lock(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];

	if (syscall(SYS_capget, &h, d) < 0)
		return false;
	return d[CAP_IPC_LOCK / 32].effective & (1u << (CAP_IPC_LOCK % 32));
}

static const char *
memlock_str(char *buf, size_t len)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_MEMLOCK, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		snprintf(buf, len, "unlimited");
	else
		snprintf(buf, len, "%llu KiB", (unsigned long long)(rl.rlim_cur >> 10));
	return buf;
}

/* The message a person needs, at the level the policy asks for: the limit, what is pinned
 * already, what the whole configuration needs, and the fix. @what: the registration that
 * failed (a region mid-run, or the start-up check). */
static void
memlock_fail_log(struct keel_shard *s, const char *what)
{
	struct keel__bufreg *br = s->bufreg;
	struct keel_runtime *rt = s->rt;
	uint64_t need = rt->opts.memory * rt->count;
	const char *mem = keel__opt_name(&rt->opts, "--memory");
	const char *feat = keel__opt_name(&rt->opts, "--feature");
	struct rlimit rl;
	bool cap = have_cap_ipc_lock();
	char lim[32];

	/* Without the limit (unlimited, or CAP_IPC_LOCK: root's benchmarks) an ENOMEM is a
	 * real shortage of memory to pin: blaming the limit sent people to raise a limit they
	 * did not have. */
	if ((getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur == RLIM_INFINITY) || cap) {
		if (!br->policy_on && atomic_exchange(&rt->memlock_said, true))
			return;
		keel_log(br->policy_on ? KEEL_LOG_ERROR : KEEL_LOG_WARN, "core",
			 "shard %u: %s: out of memory, and not for RLIMIT_MEMLOCK (%s, "
			 "CAP_IPC_LOCK %s): the machine or the memory cgroup had no memory to pin "
			 "(%llu KiB pinned by keel so far, %s %llu MiB x %u shards); lower "
			 "%s, or give the cgroup more room (memory.max)%s%s%s",
			 s->id, what, memlock_str(lim, sizeof(lim)), cap ? "held" : "not held",
			 (unsigned long long)(atomic_load(&pinned_bytes) >> 10), mem,
			 (unsigned long long)(rt->opts.memory >> 20), rt->count, mem,
			 br->policy_on ? ", or use " : "", br->policy_on ? feat : "",
			 br->policy_on ? " reg_buffers=auto to run with unregistered buffers"
				       : "; running with unregistered buffers (plain sends) where "
					 "registration fails");
		return;
	}
	if (br->policy_on) {
		keel_log(
			KEEL_LOG_ERROR, "core",
			"shard %u: %s: RLIMIT_MEMLOCK (%s) is too low and the process lacks "
			"CAP_IPC_LOCK: %llu KiB pinned by keel so far (other pinned memory of this user "
			"counts too), at least %llu KiB needed (%s %llu MiB "
			"x %u shards); raise it (ulimit -l "
			"unlimited, or LimitMEMLOCK=infinity in the systemd unit), or use %s "
			"reg_buffers=auto to run with "
			"unregistered buffers",
			s->id, what, memlock_str(lim, sizeof(lim)),
			(unsigned long long)(atomic_load(&pinned_bytes) >> 10),
			(unsigned long long)(need >> 10), mem,
			(unsigned long long)(rt->opts.memory >> 20), rt->count, feat);
		return;
	}
	if (atomic_exchange(&rt->memlock_said, true))
		return;
	keel_log(KEEL_LOG_WARN, "core",
		 "registered buffers: %s on shard %u: RLIMIT_MEMLOCK (%s) is too low without "
		 "CAP_IPC_LOCK: %llu KiB pinned by keel so far (other pinned memory of this user "
		 "counts too), at least %llu KiB needed (%s %llu MiB x %u "
		 "shards); "
		 "running with unregistered buffers (plain sends) where registration "
		 "fails. Fix: ulimit -l unlimited, or LimitMEMLOCK=infinity in the systemd unit",
		 what, s->id, memlock_str(lim, sizeof(lim)),
		 (unsigned long long)(atomic_load(&pinned_bytes) >> 10),
		 (unsigned long long)(need >> 10), mem, (unsigned long long)(rt->opts.memory >> 20),
		 rt->count);
}

#ifdef KEEL_FAULTS
_Atomic unsigned keel__fault_bufreg_nomem;
#endif

/* Register region @idx in slot @idx. Returns 0 or -errno. */
static int
register_slot(struct keel_shard *s, unsigned idx)
{
	struct keel__bufreg *br = s->bufreg;
	struct iovec iov;
	void *base;
	uint64_t len;
	/* Tag 0: the kernel posts no CQE when the slot is dropped (at ring exit). */
	__u64 tag = 0;
	int r;

	r = keel_alloc_region(br->alloc, idx, &base, &len);
	if (r < 0)
		return r;
	iov.iov_base = base;
	iov.iov_len = len;
#ifdef KEEL_FAULTS
	if (keel__fault_take(&keel__fault_bufreg_nomem))
		r = -ENOMEM; /* as the kernel says when it cannot pin the pages */
	else
#endif
		r = io_uring_register_buffers_update_tag(&s->ring, idx, &iov, &tag, 1);
	if (r == 1) {
		br->slots[idx] = SLOT_REGISTERED;
		atomic_fetch_add(&pinned_bytes, len);
		keel_alloc_region_set_registered(br->alloc, idx, true);
		return 0;
	}
	r = r < 0 ? r : -EIO;
	br->slots[idx] = SLOT_FAILED;
	br->failed = true;
	if (r == -ENOMEM) {
		char what[96];
		snprintf(what, sizeof(what), "registering buffer region %u (%llu KiB) failed", idx,
			 (unsigned long long)(len >> 10));
		memlock_fail_log(s, what);
	} else
		keel_log(KEEL_LOG_ERROR, "core", "shard %u: registering region %u failed: %s",
			 s->id, idx, strerror(-r));
	return r;
}

static void
grow_cb(void *arg)
{
	/* One region per pass; a failure is logged once by the allocator. */
	(void)keel_alloc_grow(arg);
}

static int
grow_hook(struct keel_alloc *a, void *ctx)
{
	/* Off the hot path: after this pass's callbacks. Never inline: when deferring fails,
	 * the allocator asks again later. */
	return keel_defer(grow_cb, a);
}

static void
release_home(void *arg)
{
	keel_buf_release(arg);
}

/* A buffer's way home from a shard of another runtime: a foreign request to its shard. */
struct xrt_home {
	struct keel_xreq req;
	struct keel_buf *b;
};

static void
xrt_release(struct keel_xreq *req)
{
	struct xrt_home *h = (struct xrt_home *)req;

	keel_buf_release(h->b);
	keel_xreq_complete(req, 0);
}

static void
xrt_done(struct keel_xreq *req)
{
	free(req);
}

static int
send_home_hook(struct keel_alloc *home, struct keel_buf *b, void *ctx)
{
	struct keel_shard *hs = ctx, *cur = keel__cur;
	struct xrt_home *h;
	int r;

	if (!cur) {
		/* No shard of any runtime: a host thread with an allocator of its own bound (with
		 * none, the allocator aborts before calling here). The count it just dropped is
		 * not atomic and was changed off the buffer's shard, as the allocator's own check
		 * says; refusing (the buffer leaked, logged) let the misuse go on. */
		keel_log(KEEL_LOG_ERROR, "core",
			 "last put of a buffer of shard %u on a thread that is not a shard (an "
			 "allocator bound to it makes no shard): buffers may be held and put only "
			 "on shards; hand the slice back to a shard to put (keel_runtime_submit), "
			 "or copy its bytes out there",
			 hs->id);
		keel_verify(cur != NULL);
	}
	/* Not keel_send: a last put during the stop sequence (a cancelled operation's
	 * completion) must still reach home, or the buffer leaks. */
	if (__builtin_expect(hs->rt == cur->rt, 1))
		return keel__send_internal(hs->id, release_home, b);
	/* Handed from another runtime's shard: the shard index means another shard here, so
	 * it goes through the home runtime's foreign requests (refused once that one stops:
	 * then it leaks, logged by the allocator). */
	h = malloc(sizeof(*h));
	if (!h)
		return -ENOMEM;
	*h = (struct xrt_home){ .req = { .fn = xrt_release, .done = xrt_done }, .b = b };
	r = keel_runtime_submit(hs->rt, hs->id, &h->req);
	if (r < 0)
		free(h);
	return r;
}

int
keel__bufreg_init(struct keel_shard *s)
{
	struct keel_runtime *rt = s->rt;
	struct keel_alloc_config cfg;
	struct keel__bufreg *br;
	unsigned nslots;
	int r;

	pthread_once(&once, process_init);
	br = calloc(1, sizeof(*br));
	if (!br)
		return -ENOMEM;
	s->bufreg = br;
	br->policy_on = rt->features[KEEL_FEAT_REG_BUFFERS].policy == KEEL_POLICY_ON;

	memset(&cfg, 0, sizeof(cfg));
	cfg.shard = s->id;
	cfg.memory = rt->opts.memory;
	cfg.hugepages = rt->opts.hugepages;
	cfg.topo = rt->topo;
	cfg.cpu = s->cpu;
	cfg.grow = grow_hook;
	cfg.send_home = send_home_hook;
	cfg.ctx = s;
	r = keel_alloc_create(&cfg, &br->alloc);
	if (r == -ENOMEM && rt->opts.hugepages) /* the allocator's line above says which */
		keel_log(KEEL_LOG_ERROR, "core",
			 "%s: %llu huge pages of 2 MiB needed in all (%llu MiB of buffers a "
			 "shard, %s rounded to whole regions, x %u shards), reserved at start: if "
			 "they were not reserved, set /proc/sys/vm/nr_hugepages to at least that",
			 keel__opt_name(&rt->opts, "--hugepages"),
			 (unsigned long long)(keel_alloc_memory_of(&cfg) / KEEL_ALLOC_HUGEPAGE *
					      rt->count),
			 (unsigned long long)(keel_alloc_memory_of(&cfg) >> 20),
			 keel__opt_name(&rt->opts, "--memory"), rt->count);
	if (r < 0) {
		keel_log(KEEL_LOG_ERROR, "core", "shard %u: buffer memory (%s %llu MiB%s%s): %s",
			 s->id, keel__opt_name(&rt->opts, "--memory"),
			 (unsigned long long)(rt->opts.memory >> 20),
			 rt->opts.hugepages ? ", " : "",
			 rt->opts.hugepages ? keel__opt_name(&rt->opts, "--hugepages") : "",
			 strerror(-r));
		return r;
	}
	keel_alloc_bind_thread(br->alloc);

	if (!rt->features[KEEL_FEAT_REG_BUFFERS].used)
		return 0;
	if (br->policy_on && !have_cap_ipc_lock()) {
		struct rlimit rl;
		uint64_t need = (uint64_t)rt->opts.memory * rt->count;
		/* Arithmetic only: the kernel counts pinned pages per user, so other processes
		 * of this user may still make a later registration fail (then an error to
		 * the caller of keel_buf_fixed / keel_prep_send_buf, see keel/bufreg.h). */
		if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
		    rl.rlim_cur < need) {
			memlock_fail_log(s, "start-up check");
			return -ENOMEM;
		}
	}
	/* One slot per region: keel_alloc_create refuses more regions than a table holds. */
	nslots = keel_alloc_region_max(br->alloc);
	br->slots = calloc(nslots, 1);
	if (!br->slots)
		return -ENOMEM; /* br->nslots stays 0: keel__bufreg_fini walks no slot */
	br->nslots = nslots;
	r = io_uring_register_buffers_sparse(&s->ring, br->nslots);
	if (r < 0) {
		if (br->policy_on)
			keel_log(KEEL_LOG_ERROR, "core",
				 "shard %u: sparse fixed-buffer table of %u slots failed: %s (%s "
				 "reg_buffers=on)",
				 s->id, br->nslots, strerror(-r),
				 keel__opt_name(&s->rt->opts, "--feature"));
		else
			keel_log(KEEL_LOG_WARN, "core",
				 "shard %u: sparse fixed-buffer table of %u slots failed: %s; "
				 "running with unregistered buffers (plain sends)",
				 s->id, br->nslots, strerror(-r));
		return br->policy_on ? r : 0;
	}
	br->enabled = true;
	/* Region 0 now: bounded, and the memlock decision is made at start. Under auto its
	 * failure is that region's (SLOT_FAILED, -ENOMEM for its buffers): a later region is
	 * still tried at its first use, as pins another ring held (one that just exited: the
	 * kernel releases them after it) may be gone by then. */
	r = register_slot(s, 0);
	if (r < 0 && br->policy_on) /* reg_buffers=on: whatever the error, not a plain start */
		return r;
	return 0;
}

void
keel__bufreg_fini(struct keel_shard *s)
{
	struct keel__bufreg *br = s->bufreg;

	if (!br)
		return;
	if (s->rt->opts.stats && br->alloc) {
		struct keel_alloc_stats st;
		char line[512];

		keel_alloc_stats(br->alloc, &st);
		snprintf(line, sizeof(line),
			 "shard %u memory: %llu/%llu regions pre-faulted, %llu MiB registered, in "
			 "use %llu KiB (peak %llu KiB), %llu allocation failures, %llu returned "
			 "from other shards",
			 s->id, (unsigned long long)st.regions, (unsigned long long)st.regions_max,
			 (unsigned long long)(st.bytes_registered >> 20),
			 (unsigned long long)(st.bytes_in_use >> 10),
			 (unsigned long long)(st.bytes_peak >> 10),
			 (unsigned long long)st.alloc_failures,
			 (unsigned long long)st.remote_returns);
		/* Part of --stats's report, as its table (runtime.c, stats_report): through the
		 * log sink when a host set one, else on stderr, whatever the log level. */
		if (!keel__log_to_sink(KEEL_LOG_INFO, "stats", line))
			fprintf(stderr, "%s\n", line);
	}
	/* The ring is gone: its table no longer pins anything. */
	for (unsigned i = 0; i < br->nslots; i++) {
		if (br->slots[i] != SLOT_REGISTERED)
			continue;
		void *base;
		uint64_t len;
		if (keel_alloc_region(br->alloc, i, &base, &len) == 0)
			atomic_fetch_sub(&pinned_bytes, len);
		keel_alloc_region_set_registered(br->alloc, i, false);
	}
	/* Operations that never completed (their CQEs dropped, loop.c final_drain) may still
	 * be live ones keel could not tell from them: their buffers are left allocated, not
	 * handed back to the system under a kernel that may still write them. */
	if (!s->ops_unmatched)
		keel_alloc_destroy(br->alloc);
	else
		KEEL__LEAK_ON_PURPOSE(br->alloc);
	keel_alloc_bind_thread(NULL);
	free(br->slots);
	free(br);
	s->bufreg = NULL;
}

struct keel_alloc *
keel_shard_alloc(void)
{
	return cur_shard(__func__)->bufreg->alloc;
}

void *
keel_shard_malloc(size_t size)
{
	if (KEEL__FAULTS_ALLOC())
		return NULL;
	return keel_alloc_malloc(cur_shard(__func__)->bufreg->alloc, size);
}

void *
keel_shard_realloc(void *p, size_t size)
{
	if (size && KEEL__FAULTS_ALLOC())
		return NULL;
	return keel_alloc_realloc(cur_shard(__func__)->bufreg->alloc, p, size);
}

void
keel_shard_free(void *p)
{
	if (p)
		keel_alloc_free(cur_shard(__func__)->bufreg->alloc, p);
}

bool
keel_shard_bufs_registered(void)
{
	struct keel__bufreg *br = cur_shard(__func__)->bufreg;

	return br->enabled && !br->failed;
}

/* Slot @idx registered (now, on its first use) for a fixed-buffer operation at @off:
 * *index and *offset, or -ENOMEM when the region's registration failed earlier. */
static int
slot_ready(struct keel_shard *s, struct keel__bufreg *br, unsigned idx, uint64_t off,
	   unsigned *index, uint64_t *offset)
{
	switch (br->slots[idx]) {
	case SLOT_REGISTERED:
		break;
	case SLOT_FAILED:
		return -ENOMEM;
	default:
		/* Whatever the cause (logged there), as every later use of the slot answers:
		 * under reg_buffers=on the callers refuse on -ENOMEM; another code made the
		 * first use a plain send and the next ones errors. */
		if (register_slot(s, idx) < 0)
			return -ENOMEM;
	}
	*index = idx;
	*offset = off;
	return 0;
}

int
keel_buf_fixed(const struct keel_slice *sl, unsigned *index, uint64_t *offset)
{
	struct keel_shard *s = cur_shard(__func__);
	struct keel__bufreg *br = s->bufreg;
	unsigned idx;
	uint64_t off;

	if (keel_buf_home(sl->buf) != br->alloc)
		return -EXDEV;
	if (keel_buf_is_external(sl->buf))
		return -ENOENT;
	if (!br->enabled)
		return -EOPNOTSUPP;
	/* Locate the buffer's start, not sl->data: a zero-length slice at the end of a buffer
	 * points at the first byte of the next region. */
	if (keel_alloc_locate(br->alloc, keel_buf_base(sl->buf), &idx, &off) < 0)
		return -ENOENT;
	off += (uint64_t)(sl->data - (uint8_t *)keel_buf_base(sl->buf));
	if (idx >= br->nslots)
		return -ERANGE;
	return slot_ready(s, br, idx, off, index, offset);
}

int
keel_prep_send_buf(struct io_uring_sqe *sqe, int fd, const struct keel_slice *sl, int msg_flags)
{
	unsigned idx;
	uint64_t off;

	int r = keel_buf_fixed(sl, &idx, &off);

	/* SEND_ZC only where the shard uses it (the send_zc policy, and a kernel that has it:
	 * registered buffers came in 5.19, SEND_ZC in 6.0): --feature send_zc=off sends plain. */
	if (r == 0 && keel_feature_used(KEEL_FEAT_SEND_ZC)) {
		io_uring_prep_send_zc_fixed(sqe, fd, sl->data, sl->len, msg_flags, 0, idx);
		return 1;
	}
	if (r == 0) {
		io_uring_prep_send(sqe, fd, sl->data, sl->len, msg_flags);
		return 0;
	}
	/* reg_buffers=on promised registered sends: a region that failed to register is an
	 * error for the caller, not a silent plain send. */
	if (r == -ENOMEM && cur_shard(__func__)->bufreg->policy_on)
		return r;
	io_uring_prep_send(sqe, fd, sl->data, sl->len, msg_flags);
	return 0;
}

int
keel__bufreg_fixed_mem(struct keel_shard *s, const void *p, size_t len, unsigned *index,
		       uint64_t *offset)
{
	struct keel__bufreg *br = s->bufreg;
	unsigned idx;
	uint64_t off, rlen;
	void *base;

	if (!br->enabled)
		return -EOPNOTSUPP;
	if (keel_alloc_locate(br->alloc, p, &idx, &off) < 0 ||
	    keel_alloc_region(br->alloc, idx, &base, &rlen) < 0)
		return -ENOENT;
	if (off + len > rlen || idx >= br->nslots)
		return -ERANGE;
	return slot_ready(s, br, idx, off, index, offset);
}
