// SPDX-License-Identifier: MIT
/* Runtime lifecycle: shard threads, pinning, signals, foreign requests, deferred work. */
#include <dirent.h>
#include <errno.h>
#include <keel/alloc.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#include "internal.h"
#include "topo_internal.h"

/* A countdown latch: threads arrive and wait until all parties have arrived. Unlike a
 * pthread barrier, the count can shrink when a thread could not be created. */
static void
latch_arrive(pthread_mutex_t *lock, pthread_cond_t *cond, unsigned *left, bool wait)
{
	pthread_mutex_lock(lock);
	if (*left > 0 && --*left == 0)
		pthread_cond_broadcast(cond);
	while (wait && *left > 0)
		pthread_cond_wait(cond, lock);
	pthread_mutex_unlock(lock);
}

/* ---- deferred work ---- */

int
keel__defer_push(struct defer_vec *v, keel_fn fn, void *arg)
{
	if (v->n == v->cap) {
		size_t cap = v->cap ? v->cap * 2 : 64;
		/* The shard's own arena (vectors live and die on their shard). */
		struct defer_item *nv = keel_shard_realloc(v->v, cap * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		v->v = nv;
		v->cap = cap;
	}
	v->v[v->n++] = (struct defer_item){ fn, arg };
	return 0;
}

void
keel__defer_fini(struct defer_vec *v)
{
	keel_shard_free(v->v);
	memset(v, 0, sizeof(*v));
}

#ifdef KEEL_FAULTS
_Atomic unsigned keel__fault_defer_nomem;
_Atomic unsigned keel__fault_stop_hook_nomem;
void (*keel__hook_join_done)(struct keel_runtime *rt);
void (*keel__hook_join_wait)(struct keel_runtime *rt);
void (*keel__hook_join_calls)(struct keel_runtime *rt);
void (*keel__hook_submit)(struct keel_runtime *rt, unsigned shard);
#endif

int
keel_defer(keel_fn fn, void *arg)
{
	struct keel_shard *s = cur_shard(__func__);
	if (!fn)
		return -EINVAL;
#ifdef KEEL_FAULTS
	if (keel__fault_take(&keel__fault_defer_nomem))
		return -ENOMEM;
#endif
	/* The loop has ended (a foreign request's done, completed with -ECANCELED at the
	 * shard's end): no pass is left to run it. */
	if (s->phase == PHASE_DONE)
		return -ESHUTDOWN;
	return keel__defer_push(&s->defer_next, fn, arg);
}

int
keel__later(struct keel__later *l)
{
	struct keel_shard *s = cur_shard(__func__);

	if (l->queued)
		return 0;
	if (s->phase == PHASE_DONE)
		return -ESHUTDOWN;
	l->queued = true;
	l->next = NULL;
	if (s->later_tail)
		s->later_tail->next = l;
	else
		s->later_head = l;
	s->later_tail = l;
	return 0;
}

/* keel__later's queue, detached first: what its calls queue runs on the next pass. */
static unsigned
later_run(struct keel_shard *s)
{
	struct keel__later *l = s->later_head;
	unsigned n = 0;

	s->later_head = s->later_tail = NULL;
	while (l) {
		struct keel__later *next = l->next;

		l->queued = false;
		l->fn(l);
		l = next;
		n++;
	}
	return n;
}

unsigned
keel__defer_run(struct keel_shard *s)
{
	struct defer_vec tmp;
	/* keel__later's steps first, and the calls they defer run in this pass with the
	 * rest: counted after them (counted before, those past the count were lost). */
	unsigned later = s->later_head ? later_run(s) : 0;
	size_t n = s->defer_next.n;

	if (n) {
		/* Swap: what these callbacks defer lands in the (now empty) next vector. */
		tmp = s->defer_run;
		s->defer_run = s->defer_next;
		s->defer_next = tmp;
		s->defer_next.n = 0;
		for (size_t i = 0; i < n; i++)
			s->defer_run.v[i].fn(s->defer_run.v[i].arg);
		s->defer_run.n = 0;
	}
	if (n + later) /* every pass comes here: no counter write for nothing */
		STAT_ADD(s, deferred, n + later);
	return (unsigned)n + later;
}

bool
keel_shard_stopping(void)
{
	return cur_shard(__func__)->stop_begun;
}

bool
keel_stop_requested(void)
{
	return atomic_load_explicit(&cur_shard(__func__)->rt->stopping, memory_order_relaxed);
}

int
keel_shard_on_stop(keel_fn fn, void *arg)
{
	struct keel_shard *s = cur_shard(__func__);
	if (!fn)
		return -EINVAL;
	/* Registered once the stop has begun: it runs at once, as deferred work (the stop
	 * waits for deferred work), rather than never. */
	if (s->phase != PHASE_RUN)
		return keel_defer(fn, arg);
#ifdef KEEL_FAULTS
	if (keel__fault_take(&keel__fault_stop_hook_nomem))
		return -ENOMEM;
#endif
	return keel__defer_push(&s->stop_hooks, fn, arg);
}

/* ---- shard threads ---- */

static int
pin(struct keel_shard *s)
{
	hwloc_bitmap_t set = hwloc_bitmap_alloc();
	int r;

	if (!set) {
		keel_log(KEEL_LOG_ERROR, "core", "pinning shard %u to CPU %d: out of memory", s->id,
			 s->cpu);
		return -ENOMEM;
	}
	hwloc_bitmap_only(set, (unsigned)s->cpu);
	r = hwloc_set_cpubind(s->rt->topo, set, HWLOC_CPUBIND_THREAD | HWLOC_CPUBIND_STRICT);
	if (r < 0)
		r = hwloc_set_cpubind(s->rt->topo, set, HWLOC_CPUBIND_THREAD);
	hwloc_bitmap_free(set);
	if (r < 0) {
		int e = errno;
		/* create checked the CPU against the affinity mask: it changed since. */
		keel_log(KEEL_LOG_ERROR, "core", "pinning shard %u to CPU %d failed: %s%s", s->id,
			 s->cpu, strerror(e),
			 e == EINVAL ? " (the CPU was allowed when the runtime was created: the "
				       "cgroup's cpuset or the process's affinity changed since; "
				       "taskset -cp PID shows what is allowed now)"
				     : "");
		return -e;
	}
	return 0;
}

static int
shard_init(struct keel_shard *s)
{
	int r;
	char name[16];

	snprintf(name, sizeof(name), "keel-shard-%u", s->id);
	pthread_setname_np(pthread_self(), name);
	r = pin(s);
	if (r < 0)
		return r;
	r = keel__shard_ring_init(s);
	if (r < 0)
		return r;
	s->ring_ok = true;
	r = keel__bufreg_init(s); /* alloc: allocator + sparse fixed-buffer table */
	if (r < 0)
		return r;
	r = keel__mail_init(s);
	if (r < 0)
		return r;
	keel__foreign_arm(s);
	if (s->sigfd >= 0)
		keel__signal_arm(s);
	/* Submit the internal reads now so a wake-up written before our first pass counts. A
	 * failure is said and not fatal: the reads stay queued, the first pass submits them
	 * again, and a wake-up written before still counts (the eventfd keeps it). */
	keel__submit_said(s);
	return 0;
}

static void *
shard_main(void *p)
{
	struct keel_shard *s = p;
	struct keel_runtime *rt = s->rt;
	int r;

	keel__cur = s;
	r = shard_init(s);
	if (r < 0) {
		pthread_mutex_lock(&rt->start_lock);
		if (!rt->start_err)
			rt->start_err = r;
		pthread_mutex_unlock(&rt->start_lock);
	}
	latch_arrive(&rt->start_lock, &rt->latch_cond, &rt->ready_left, true);
	if (!rt->start_err) {
		atomic_store(&rt->accepting, true);
		s->now_ns = keel__clock_ns(); /* keel_now_ns() is valid in on_start too */
		keel__mail_link(s);
		if (rt->on_start)
			rt->on_start(rt->app);
		keel__shard_loop(s);
	}
	/* Every shard has left its loop before any ring closes: no MSG_RING can then target
	 * a closed ring. */
	latch_arrive(&rt->start_lock, &rt->latch_cond, &rt->exit_left, true);
	if (s->ring_ok)
		keel__shard_ring_fini(s);
	keel__mail_fini(s);
	keel__timers_fini(s);
	keel__defer_fini(&s->defer_run);
	keel__defer_fini(&s->defer_next);
	keel__defer_fini(&s->stop_hooks);
	/* alloc: after the ring (no fixed buffer in use), and last: overflow nodes and
	 * defer vectors above live in the shard's arena. */
	keel__bufreg_fini(s);
	keel__cur = NULL;
	return NULL;
}

/* The shards' buffer memory (--memory each) beyond what the process's memory cgroup allows:
 * the allocator's cap is keel's own, so past the cgroup's limit no allocation fails with
 * ENOMEM; the kernel's OOM killer ends the process instead (docs/memory.md). Said at
 * create, once. Huge pages are charged elsewhere (hugetlb), so not with --hugepages. */
static void
memory_limit_check(unsigned nshards, const struct keel_opts *o)
{
	uint64_t limit, total = (uint64_t)nshards * o->memory;
	char file[PATH_MAX], fix[160];

	if (o->hugepages || keel__cgroup_memory_limit(&limit, file, sizeof(file)) < 0 ||
	    total <= limit)
		return;
	/* A share below the least --memory create takes: fewer shards is the fix. */
	if (limit / nshards < KEEL_ALLOC_HUGEPAGE)
		snprintf(
			fix, sizeof(fix), "at the least %s (2 MiB) it holds %llu shard%s: lower %s",
			keel__opt_name(o, "--memory"),
			(unsigned long long)(limit / KEEL_ALLOC_HUGEPAGE),
			limit / KEEL_ALLOC_HUGEPAGE == 1 ? "" : "s", keel__opt_name(o, "--shards"));
	else
		snprintf(fix, sizeof(fix),
			 "lower %s to %llu MiB or less per shard (leaving room for the rest of "
			 "the process)",
			 keel__opt_name(o, "--memory"),
			 (unsigned long long)(limit / nshards >> 20));
	keel_log(KEEL_LOG_WARN, "core",
		 "%u shard%s x %s %llu MiB = %llu MiB of buffers is more than this "
		 "process's memory cgroup allows (%llu MiB, %s): past that the kernel's OOM "
		 "killer ends the process, where keel's own cap would fail an allocation with "
		 "ENOMEM; %s, or raise the cgroup's limit",
		 nshards, nshards == 1 ? "" : "s", keel__opt_name(o, "--memory"),
		 (unsigned long long)(o->memory >> 20), (unsigned long long)(total >> 20),
		 (unsigned long long)(limit >> 20), file, fix);
}

/* More shards than CPUs (--shards over the CPUs --cpuset or the affinity mask allow): shard i
 * runs on the (i mod n)-th CPU, so several share one CPU's time and a busy shard delays the
 * others there (with idle polling, a polling shard spins against them). Allowed (tests do
 * it on purpose), but said at create, once, with the fix, as a map that stacks shards is
 * (topo_map.c): WARN, as that line is. */
static void
shards_share_check(unsigned nshards, const int *cpus, unsigned ncpus, const struct keel_opts *o)
{
	const char *cpuset = keel__opt_name(o, "--cpuset");
	struct keel_cpuset set;
	char list[128];

	if (nshards <= ncpus)
		return;
	memset(&set, 0, sizeof(set));
	for (unsigned i = 0; i < ncpus; i++)
		keel_cpuset_add(&set, (unsigned)cpus[i]);
	keel_log(KEEL_LOG_WARN, "core",
		 "%u shards on %u CPU%s (%s %s): up to %u shards share a CPU, and a busy shard "
		 "delays the others on its CPU; lower %s to %u, or %s%s",
		 nshards, ncpus, ncpus == 1 ? "" : "s",
		 o->cpuset_given ? cpuset : "this process's affinity mask",
		 keel_topo_cpulist_format(&set, list, sizeof(list)), (nshards + ncpus - 1) / ncpus,
		 keel__opt_name(o, "--shards"), ncpus,
		 o->cpuset_given ? "widen "
				 : "allow more CPUs (taskset -c, or the cgroup's "
				   "cpuset.cpus)",
		 o->cpuset_given ? cpuset : "");
}

/* The CPUs shards may run on, in ascending order: the affinity mask, narrowed by --cpuset.
 * The mask is the calling thread's (sched_getaffinity(0)), as every thread it creates
 * inherits it: what taskset or a launcher set for the process, unless the host pinned this
 * thread first (docs/embedding.md: create the runtime, then pin the host's threads).
 * Every error writes @why (the caller logs it). */
static int
cpus_of(const struct keel_opts *o, int *cpus, unsigned *n, char *why, size_t whylen)
{
	const char *cpuset = keel__opt_name(o, "--cpuset");
	struct keel_cpuset allowed;
	unsigned beyond = 0;
	char list[128];
	int r;

	*n = 0;
	r = keel__affinity_get(&allowed, &beyond, why, whylen); /* topo_sysfs.c */
	if (r < 0)
		return r;
	if (beyond && !o->cpuset_given)
		keel_log(KEEL_LOG_WARN, "core",
			 "%u allowed CPU%s at or above %d (KEEL_MAX_CPUS, keel's CPU limit) "
			 "take%s no shard; use --cpuset or taskset -c to choose CPUs below it",
			 beyond, beyond == 1 ? " is" : "s are", KEEL_MAX_CPUS,
			 beyond == 1 ? "s" : "");
	for (unsigned c = 0; c < KEEL_MAX_CPUS; c++) {
		if (o->cpuset_given) {
			if (!keel_cpuset_has(&o->cpuset, c))
				continue;
			if (!keel_cpuset_has(&allowed, c)) {
				char cg[400];

				if (keel__cpu_not_online(c, cg, sizeof(cg))[0]) {
					snprintf(why, whylen, "%s: %s", cpuset, cg);
					return -EINVAL;
				}
				keel__cgroup_excludes(c, cg, sizeof(cg));
				/* isolcpus= keeps a CPU out of a process's mask unless it is
				 * given at the start (taskset, as the mapper says, topo_map.c);
				 * a host started so may still have narrowed the creating
				 * thread, so both fixes are named. */
				if (!cg[0] && keel__cpu_isolated(c)) {
					snprintf(
						why, whylen,
						"%s: CPU %u is isolated (isolcpus=, listed in "
						"/sys/devices/system/cpu/isolated), so a process has "
						"it only when given it: start the program with "
						"taskset -c and a list that holds it (allowed CPUs: "
						"%s); if it was, the mask is the creating thread's: "
						"create the runtime before pinning the host's threads",
						cpuset, c,
						keel_topo_cpulist_format(&allowed, list,
									 sizeof(list)));
					return -EINVAL;
				}
				snprintf(
					why, whylen,
					"%s: CPU %u is not in this process's affinity mask%s "
					"(allowed CPUs: %s)%s",
					cpuset, c, cg,
					keel_topo_cpulist_format(&allowed, list, sizeof(list)),
					cg[0] ? "; pick from those, or run the program in a cgroup "
						"that has it"
					      : "; the mask is the creating thread's (taskset sets "
						"it for the whole process): a thread pinned before "
						"the create narrows it, so create the runtime "
						"first and pin the host's threads after");
				return -EINVAL;
			}
		} else if (!keel_cpuset_has(&allowed, c)) {
			continue;
		}
		cpus[(*n)++] = (int)c;
	}
	if (*n == 0 && o->cpuset_given) {
		snprintf(why, whylen, "%s: no CPU given", cpuset);
		return -EINVAL;
	}
	if (*n == 0) {
		snprintf(why, whylen,
			 "every CPU this process may run on is at or above %d (KEEL_MAX_CPUS, "
			 "keel's CPU limit); start it with taskset -c on CPUs below %d",
			 KEEL_MAX_CPUS, KEEL_MAX_CPUS);
		return -EINVAL;
	}
	return 0;
}

/* --iface given as a PCI function ("0000:81:00.0" or "81:00.0"), as keel-topo takes it: its
 * network interface's name into @iface, said, as ZCRX and the rest use names (it opened the
 * bus id as a name: ENODEV). Returns 0 (not a bus id, or resolved), or -ENODEV (a function
 * without a network interface, or with several: logged with the fix). */
static int
iface_from_pci(const char *name, char *iface, size_t len)
{
	char id[32], found[32];
	int n = keel__topo_sysfs_pci_ifname(iface, id, sizeof(id), found, sizeof(found));

	if (n < 0)
		return 0; /* not a bus id: taken as a name, as before */
	if (n != 1) {
		keel_log(KEEL_LOG_ERROR, "core",
			 "%s %s: PCI function %s has %s network interface; give the "
			 "interface's name (keel-topo lists them)%s",
			 name, iface, id, n ? "more than one" : "no",
			 n ? "" : ", or bind a network driver to it first");
		return -ENODEV;
	}
	keel_log(KEEL_LOG_INFO, "core", "%s %s: PCI function %s is interface %s", name, iface, id,
		 found);
	snprintf(iface, len, "%s", found);
	return 0;
}

/* --iface without --map: where each shard's rx queue has its IRQ (warnings only). */
static void
iface_check(const struct keel_runtime *rt)
{
	int cpus[KEEL_MAX_SHARDS], rxqs[KEEL_MAX_SHARDS];
	unsigned n = rt->count > KEEL_MAX_SHARDS ? KEEL_MAX_SHARDS : rt->count;

	for (unsigned i = 0; i < n; i++) {
		cpus[i] = rt->shards[i].cpu;
		rxqs[i] = rt->shards[i].rxq;
	}
	keel__topo_iface_check(keel__opt_name(&rt->opts, "--iface"), rt->opts.iface, cpus, rxqs, n);
}

/* The ZCRX options against the shards' queues, before any shard runs (so before the kernel is
 * asked): one queue, one shard; queues need an interface; "on" needs a queue per shard and
 * DEFER_TASKRUN (the kernel refuses the registration on any other ring). */
static int
zcrx_check(const struct keel_runtime *rt)
{
	const char *iface = keel_runtime_rx_iface(rt);
	unsigned with = 0;

	if (rt->opts.zcrx == KEEL_POLICY_OFF)
		return 0;
	for (unsigned i = 0; i < rt->count; i++) {
		if (rt->shards[i].rxq < 0)
			continue;
		with++;
		for (unsigned j = 0; j < i; j++)
			if (rt->shards[j].rxq == rt->shards[i].rxq) {
				keel_log(KEEL_LOG_ERROR, "core",
					 "shards %u and %u both ask for rx queue %d of %s: one "
					 "queue, one shard (a queue takes one ZCRX interface "
					 "queue); give each shard its own queue in %s or the "
					 "%s file, or use %s off",
					 j, i, rt->shards[i].rxq, iface ? iface : "the interface",
					 keel__opt_name(&rt->opts, "--rxqs"),
					 keel__opt_name(&rt->opts, "--map"),
					 keel__opt_name(&rt->opts, "--zcrx"));
				return -EINVAL;
			}
	}
	if (with && !iface) {
		keel_log(KEEL_LOG_ERROR, "core",
			 "the shards have rx queues but no interface: give --iface IF");
		return -EINVAL;
	}
	if (rt->opts.zcrx != KEEL_POLICY_ON)
		return 0;
	if (with < rt->count) {
		keel_log(KEEL_LOG_ERROR, "core",
			 "%s on: %u of %u shards have no rx queue; give one per shard with "
			 "--rxqs IF:LIST or a --map file (keel-topo --plan --hds), or use %s "
			 "auto",
			 keel__opt_name(&rt->opts, "--zcrx"), rt->count - with, rt->count,
			 keel__opt_name(&rt->opts, "--zcrx"));
		return -EINVAL;
	}
	if (!rt->features[KEEL_FEAT_DEFER_TASKRUN].used) {
		const struct keel_feature_decision *d = &rt->features[KEEL_FEAT_DEFER_TASKRUN];

		/* The fix follows the cause: its own policy, single_issuer's (which it needs),
		 * or the kernel. */
		keel_log(KEEL_LOG_ERROR, "core",
			 "%s on needs IORING_SETUP_DEFER_TASKRUN (Linux 6.1), which is not used "
			 "(%s): %s, or use %s auto",
			 keel__opt_name(&rt->opts, "--zcrx"), d->reason,
			 d->policy == KEEL_POLICY_OFF ? "drop --feature defer_taskrun=off"
			 : rt->features[KEEL_FEAT_SINGLE_ISSUER].policy == KEEL_POLICY_OFF
				 ? "drop --feature single_issuer=off (DEFER_TASKRUN needs it)"
				 : "run Linux 6.1 or later",
			 keel__opt_name(&rt->opts, "--zcrx"));
		return -EINVAL;
	}
	return 0;
}

static int runtime_create(const struct keel_opts *opts, struct keel_runtime **out);

unsigned keel__mail_scan_max = KEEL_MAIL_SCAN_MAX;
_Atomic bool keel__prefetchw_ok;

/* PREFETCHW: CPUID 0x80000001, ECX bit 8 (PRFCHW, AMD's 3DNowPrefetch). */
static void
prefetchw_probe(void)
{
#if defined(__x86_64__)
	unsigned a, b, c, d;

	if (__get_cpuid(0x80000001, &a, &b, &c, &d) && (c & (1u << 8)))
		atomic_store_explicit(&keel__prefetchw_ok, true, memory_order_relaxed);
#endif
}

/* A create that fails leaves the host's log level as it was (the options' level is set
 * early, for what the checks log). */
int
keel_runtime_create(const struct keel_opts *opts, struct keel_runtime **out)
{
	enum keel_log_level level = keel_log_get_level();
	int r;

	prefetchw_probe();
	r = runtime_create(opts, out);

	if (r < 0)
		keel_log_set_level(level);
	else
		keel__nofile_runtime_created();
	return r;
}

static int
runtime_create(const struct keel_opts *opts, struct keel_runtime **out)
{
	struct keel_runtime *rt;
	int *cpus = NULL;
	unsigned ncpus = 0;
	char why[1024] = "";
	int r;

	if (!opts || !out)
		return -EINVAL;
	/* Values only a host setting the fields directly can give (the parser refuses them):
	 * a policy past ON was taken for auto, a level past debug turned debug on, without a
	 * word. */
	if ((unsigned)opts->log_level > KEEL_LOG_DEBUG) {
		keel_log(KEEL_LOG_ERROR, "core",
			 "keel_opts.log_level %u: not a level (KEEL_LOG_ERROR..KEEL_LOG_DEBUG)",
			 (unsigned)opts->log_level);
		return -EINVAL;
	}
	for (unsigned i = 0; i < KEEL_FEAT__COUNT; i++)
		if ((unsigned)opts->features[i] > KEEL_POLICY_ON) {
			keel_log(KEEL_LOG_ERROR, "core",
				 "keel_opts.features[%u] (--feature %s) is %u: not a policy "
				 "(KEEL_POLICY_AUTO, _OFF or _ON)",
				 i, keel_feature_name((enum keel_feature)i),
				 (unsigned)opts->features[i]);
			return -EINVAL;
		}
	if ((unsigned)opts->zcrx > KEEL_POLICY_ON) {
		keel_log(KEEL_LOG_ERROR, "core",
			 "keel_opts.zcrx (--zcrx) is %u: not a policy (KEEL_POLICY_AUTO, _OFF or "
			 "_ON)",
			 (unsigned)opts->zcrx);
		return -EINVAL;
	}
	if (opts->ring_entries < KEEL__RING_ENTRIES_MIN ||
	    opts->ring_entries > KEEL__RING_ENTRIES_MAX) {
		keel_log(KEEL_LOG_ERROR, "core", "%s %u: from %u to %u",
			 keel__opt_name(opts, "--ring-entries"), opts->ring_entries,
			 KEEL__RING_ENTRIES_MIN, KEEL__RING_ENTRIES_MAX);
		return -EINVAL;
	}
	/* The allocator takes 2 MiB (one huge page, the least region) to its maximum: below,
	 * every shard failed at start with a bare EINVAL. */
	if (opts->memory < KEEL_ALLOC_HUGEPAGE || opts->memory > KEEL_ALLOC_MAX_MEMORY) {
		keel_log(KEEL_LOG_ERROR, "core", "%s %llu bytes: from 2M to %lluG per shard",
			 keel__opt_name(opts, "--memory"), (unsigned long long)opts->memory,
			 (unsigned long long)(KEEL_ALLOC_MAX_MEMORY >> 30));
		return -EINVAL;
	}
	if (opts->file_qd < 1 || opts->file_qd > KEEL_FILE_QD_MAX) {
		/* 0 meant the default, silently, and past the most was taken as it was. */
		keel_log(KEEL_LOG_ERROR, "core", "%s %u: from 1 to %u (keel_opts_init gives %u)",
			 keel__opt_name(opts, "--file-qd"), opts->file_qd, KEEL_FILE_QD_MAX,
			 KEEL_FILE_QD_DEFAULT);
		return -EINVAL;
	}
	if (opts->idle_poll_us > KEEL__IDLE_POLL_US_MAX) {
		keel_log(KEEL_LOG_ERROR, "core", "%s %u: at most %u (10 s)",
			 keel__opt_name(opts, "--idle-poll-us"), opts->idle_poll_us,
			 KEEL__IDLE_POLL_US_MAX);
		return -EINVAL;
	}
	keel_log_set_level(opts->log_level);
#ifdef KEEL_FAULTS
	r = keel__faults_env();
	if (r < 0)
		return r;
#else
	if (getenv("KEEL_FAULTS"))
		keel_log(KEEL_LOG_WARN, "core",
			 "KEEL_FAULTS is set but this build has no fault injection: ignored "
			 "(configure with -DKEEL_FAULTS=ON, a non-Release build)");
#endif
	if (opts->mailbox_entries < KEEL__MAILBOX_ENTRIES_MIN ||
	    (opts->mailbox_entries & (opts->mailbox_entries - 1))) {
		keel_log(KEEL_LOG_ERROR, "core", "%s %u is not a power of two >= %u",
			 keel__opt_name(opts, "--mailbox-entries"), opts->mailbox_entries,
			 KEEL__MAILBOX_ENTRIES_MIN);
		return -EINVAL;
	}
	if (opts->cq_entries < opts->ring_entries || opts->cq_entries > KEEL_CQ_ENTRIES_MAX) {
		keel_log(KEEL_LOG_ERROR, "core",
			 "%s %u must be from %s (%u) to %u: raise %s or lower %s (default CQ %u)",
			 keel__opt_name(opts, "--cq-entries"), opts->cq_entries,
			 keel__opt_name(opts, "--ring-entries"), opts->ring_entries,
			 KEEL_CQ_ENTRIES_MAX, keel__opt_name(opts, "--cq-entries"),
			 keel__opt_name(opts, "--ring-entries"), KEEL_CQ_ENTRIES_DEFAULT);
		return -EINVAL;
	}
	/* As the option parser's ranges, for fields set directly. */
	if (opts->stall_ms < 1 || opts->stall_ms > KEEL__STALL_MS_MAX) {
		keel_log(KEEL_LOG_ERROR, "core",
			 "%s %u: from 1 to %u (0 would report every pass a stall)",
			 keel__opt_name(opts, "--stall-ms"), opts->stall_ms, KEEL__STALL_MS_MAX);
		return -EINVAL;
	}
	if (opts->mailbox_entries > KEEL__MAILBOX_ENTRIES_MAX) {
		keel_log(KEEL_LOG_ERROR, "core", "%s %u: at most %u",
			 keel__opt_name(opts, "--mailbox-entries"), opts->mailbox_entries,
			 KEEL__MAILBOX_ENTRIES_MAX);
		return -EINVAL;
	}
	if (opts->mailbox_overflow > KEEL__MAILBOX_OVERFLOW_MAX) {
		keel_log(KEEL_LOG_ERROR, "core", "%s %u: at most %u",
			 keel__opt_name(opts, "--mailbox-overflow"), opts->mailbox_overflow,
			 KEEL__MAILBOX_OVERFLOW_MAX);
		return -EINVAL;
	}
	if (opts->shards > KEEL_MAX_SHARDS) {
		keel_log(KEEL_LOG_ERROR, "core", "%s %u: at most %d shards",
			 keel__opt_name(opts, "--shards"), opts->shards, KEEL_MAX_SHARDS);
		return -EINVAL;
	}
	/* As the option parser's range: a gathering sleep's window (and the bound it puts on a
	 * wake-up's fallback) stays within 100 ms when the field is set directly too. */
	if (opts->wait_coalesce_us > KEEL__WAIT_COALESCE_US_MAX) {
		keel_log(KEEL_LOG_ERROR, "core", "%s %u: at most %u (100 ms)",
			 keel__opt_name(opts, "--wait-coalesce-us"), opts->wait_coalesce_us,
			 KEEL__WAIT_COALESCE_US_MAX);
		return -EINVAL;
	}
	/* Options that ask for what another turns off: each was accepted, and did nothing. */
	if (opts->wait_coalesce_fixed && !opts->wait_coalesce_us) {
		keel_log(KEEL_LOG_ERROR, "core", "%s needs %s > 0 (give a window, or drop %s)",
			 keel__opt_name(opts, "--wait-coalesce-fixed"),
			 keel__opt_name(opts, "--wait-coalesce-us"),
			 keel__opt_name(opts, "--wait-coalesce-fixed"));
		return -EINVAL;
	}
	if (opts->features[KEEL_FEAT_MIN_WAIT] == KEEL_POLICY_ON && !opts->wait_coalesce_us) {
		keel_log(KEEL_LOG_ERROR, "core",
			 "%s min_wait=on needs %s > 0: with no window no sleep gathers (give a "
			 "window, or %s min_wait=auto|off)",
			 keel__opt_name(opts, "--feature"),
			 keel__opt_name(opts, "--wait-coalesce-us"),
			 keel__opt_name(opts, "--feature"));
		return -EINVAL;
	}
	if (opts->idle_poll_adaptive && !opts->idle_poll_us) {
		keel_log(KEEL_LOG_ERROR, "core", "%s needs %s > 0 (give a window, or drop %s)",
			 keel__opt_name(opts, "--idle-poll-adaptive"),
			 keel__opt_name(opts, "--idle-poll-us"),
			 keel__opt_name(opts, "--idle-poll-adaptive"));
		return -EINVAL;
	}
	rt = calloc(1, sizeof(*rt));
	if (!rt)
		return -ENOMEM;
	rt->opts = *opts;
	/* A PCI function's interface name, before anything compares names (the map's). */
	r = iface_from_pci(keel__opt_name(opts, "--iface"), rt->opts.iface, sizeof(rt->opts.iface));
	if (r < 0)
		goto err_rt;
	cpus = calloc(KEEL_MAX_CPUS, sizeof(*cpus));
	if (!cpus) {
		r = -ENOMEM;
		goto err_rt;
	}
	r = keel_features_decide(opts, rt->features);
	if (r < 0)
		goto err_rt;
	/* min_wait=on where the ring cannot gather failed above; fixed gathering was left to
	 * an INFO line about min_wait alone. */
	if (opts->wait_coalesce_fixed && !rt->features[KEEL_FEAT_MIN_WAIT].used)
		keel_log(KEEL_LOG_WARN, "core",
			 "%s: the sleeps cannot gather here, min_wait is not used (%s): every "
			 "sleep ends at the first completion",
			 keel__opt_name(opts, "--wait-coalesce-fixed"),
			 rt->features[KEEL_FEAT_MIN_WAIT].reason);
	r = cpus_of(opts, cpus, &ncpus, why, sizeof(why));
	if (r < 0) {
		keel_log(KEEL_LOG_ERROR, "core", "%s", why);
		goto err_rt;
	}
	r = keel__topo_apply_map(&rt->opts, cpus, &ncpus, &rt->map, why,
				 sizeof(why)); /* topo_map.c */
	if (r < 0)
		goto err_rt;
	if (r > 0)
		rt->count = ncpus; /* the map decides, whatever default the program set */
	else
		rt->count = opts->shards ? opts->shards
					 : (ncpus > KEEL_MAX_SHARDS ? KEEL_MAX_SHARDS : ncpus);
	rt->mail_scan = rt->count <= keel__mail_scan_max;
	if (r == 0 && !opts->shards && ncpus > KEEL_MAX_SHARDS)
		keel_log(KEEL_LOG_WARN, "core",
			 "%u allowed CPUs, one shard each by default, but a runtime has at most "
			 "%d (KEEL_MAX_SHARDS): the CPUs after the first %d take no shard; use "
			 "--cpuset to choose them, or run a runtime per group of CPUs",
			 ncpus, KEEL_MAX_SHARDS, KEEL_MAX_SHARDS);
	if (r == 0)
		shards_share_check(rt->count, cpus, ncpus, opts);
	memory_limit_check(rt->count, opts);
	if (hwloc_topology_init(&rt->topo) < 0) {
		r = -ENOMEM;
		goto err_rt;
	}
	if (hwloc_topology_load(rt->topo) < 0) {
		const char *xml = getenv("HWLOC_XMLFILE"), *root = getenv("HWLOC_FSROOT");
		int e = errno;

		r = -EIO;
		/* What hwloc reads is the environment's when it says so: the usual cause. */
		keel_log(KEEL_LOG_ERROR, "core",
			 "hwloc could not load this machine's topology: %s%s%s%s%s%s",
			 e ? strerror(e) : "no error code given",
			 xml ? "; HWLOC_XMLFILE is set, to " : "", xml ? xml : "",
			 root ? "; HWLOC_FSROOT is set, to " : "", root ? root : "",
			 xml || root ? " (unset it to read this machine)"
				     : " (is /sys mounted? lstopo-no-graphics, of hwloc-nox, shows "
				       "hwloc's own error)");
		goto err_topo;
	}
	/* Shards' NUMA nodes and memory binding read from another machine's description. */
	r = keel__topo_not_here(rt->topo, why, sizeof(why));
	if (r < 0) {
		keel_log(KEEL_LOG_ERROR, "core", "%s", why);
		goto err_topo;
	}
	/* --rxqs gives one queue per shard: queues past the shards' count would have no shard
	 * while RSS still sends them traffic; shards past the queues' count get none (said).
	 * They were cut or padded without a word (keel-topo --plan refuses both). */
	if (opts->nrxqs > rt->count) {
		keel_log(KEEL_LOG_ERROR, "core",
			 "%s gives %u queues for %u shard%s: the queues after the first %u "
			 "would have no shard while RSS still sends them traffic; give %s "
			 "%u, or fewer queues (and lower the interface's with ethtool -L)",
			 keel__opt_name(opts, "--rxqs"), opts->nrxqs, rt->count,
			 rt->count == 1 ? "" : "s", rt->count, keel__opt_name(opts, "--shards"),
			 opts->nrxqs);
		r = -EINVAL;
		goto err_topo;
	}
	if (opts->nrxqs && opts->nrxqs < rt->count)
		keel_log(KEEL_LOG_WARN, "core",
			 "%s gives %u queue%s for %u shards: shards %u and up own no rx queue "
			 "(no ZCRX, no queue steering there)",
			 keel__opt_name(opts, "--rxqs"), opts->nrxqs, opts->nrxqs == 1 ? "" : "s",
			 rt->count, opts->nrxqs);
	rt->shards = calloc(rt->count, sizeof(*rt->shards));
	if (!rt->shards) {
		r = -ENOMEM;
		goto err_topo;
	}
	for (unsigned i = 0; i < rt->count; i++) {
		static _Atomic unsigned shard_gen;
		struct keel_shard *s = &rt->shards[i];
		s->rt = rt;
		s->id = i;
		s->timer_gen = atomic_fetch_add(&shard_gen, 1) + 1;
		s->cpu = cpus[i % ncpus];
		if (opts->nrxqs)
			s->rxq = i < opts->nrxqs ? (int)opts->rxqs[i] : -1;
		else if (rt->map)
			s->rxq = rt->map->shards[i].rxq;
		else /* --iface alone: shard i takes queue i, as keel-topo --plan does */
			s->rxq = opts->iface[0] ? (int)i : -1;
		s->sigfd = -1;
		s->xefd = -1;
		pthread_mutex_init(&s->xlock, NULL);
	}
	r = zcrx_check(rt);
	if (r < 0) {
		free(rt->shards);
		goto err_topo;
	}
	if (opts->iface[0] && !rt->map)
		iface_check(rt);
	pthread_mutex_init(&rt->start_lock, NULL);
	pthread_cond_init(&rt->latch_cond, NULL);
	pthread_cond_init(&rt->join_cond, NULL);
	keel__features_log(opts, rt->features);
	free(cpus);
	*out = rt;
	return 0;
err_topo:
	hwloc_topology_destroy(rt->topo);
err_rt:
	free(cpus);
	free(rt->map);
	free(rt);
	return r;
}

/* The signalfd and the eventfds keel_runtime_start makes, closed (and marked so). */
static void
close_shard_fds(struct keel_runtime *rt)
{
	for (unsigned i = 0; i < rt->count; i++) {
		struct keel_shard *s = &rt->shards[i];

		if (s->sigfd >= 0)
			close(s->sigfd);
		if (s->xefd >= 0)
			close(s->xefd);
		s->sigfd = s->xefd = -1;
	}
}

/* A thread's starts of runtimes with opts.signals that have not been released, and the
 * mask the first of them found: SIGINT and SIGTERM stay blocked on the thread until the last
 * is released. Saved and restored per runtime, a runtime joined while another started after
 * it still ran unblocked them under that one (a SIGTERM then took the process's default
 * action, killing it), and the last joined restored a mask with them blocked for good (a
 * review's runs). On the heap, not in the thread's own storage, because a runtime may be
 * joined (keel_runtime_destroy without a join) on another thread, which cannot touch the
 * starting thread's mask but must still take its start off the count: else that thread's
 * next runtimes, joined where they started, never gave its mask back. */
struct keel__sig_hold {
	unsigned starts; /* runtimes started on the thread, not yet released */
	unsigned refs;   /* the thread's own while it runs, and one per runtime started */
	bool owed;       /* the last was released elsewhere: the mask is still blocked here and
			  * @saved is still the one to give back */
	sigset_t saved;
	struct keel__sig_hold *next, **pprev; /* every record (holds), for the unload */
};

static pthread_mutex_t hold_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t hold_once = PTHREAD_ONCE_INIT;
static pthread_key_t hold_key;       /* its destructor drops the thread's reference as it exits */
static bool hold_key_made;           /* pthread_key_create made it (hold_unload deletes it) */
static struct keel__sig_hold *holds; /* under hold_lock */
static bool hold_unloaded;           /* under hold_lock: hold_unload ran */
static _Thread_local struct keel__sig_hold *my_hold;

static void
hold_put(struct keel__sig_hold *h)
{
	bool last;

	pthread_mutex_lock(&hold_lock);
	/* After hold_unload (the process exits while this thread still runs keel) the record
	 * may be freed: it is left alone. */
	last = !hold_unloaded && --h->refs == 0;
	if (last) {
		*h->pprev = h->next;
		if (h->next)
			h->next->pprev = h->pprev;
	}
	pthread_mutex_unlock(&hold_lock);
	if (last)
		free(h);
}

/* The key's destructor, as the thread exits: the thread's reference goes, and so does its
 * pointer (a destructor of another key that runs after it and starts a runtime makes a new
 * record rather than take this one, maybe freed). */
static void
hold_exit(void *p)
{
	my_hold = NULL;
	hold_put(p);
}

static int hold_key_err; /* pthread_key_create's error, if it had one */

static void
hold_key_make(void)
{
	hold_key_err = pthread_key_create(&hold_key, hold_exit);
	hold_key_made = hold_key_err == 0;
}

/* As libkeel is unloaded (a host's dlclose, or the process's exit): the key's destructor is
 * in this library, so a thread that started a runtime here and exits after the unload
 * called into unmapped code (a crash). The key goes; the records it would have dropped, of
 * threads that no runtime started here still holds, are freed; one a runtime still holds (a
 * host that unloaded libkeel with a runtime not joined, which it must not do) is left
 * allocated. Deleted first: a thread that exits meanwhile (the process's exit) runs the
 * destructor either before, under hold_lock, or not at all. A start after this fails
 * (hold_unloaded). */
__attribute__((destructor)) static void
hold_unload(void)
{
	struct keel__sig_hold *h, *next;

	if (hold_key_made)
		pthread_key_delete(hold_key);
	pthread_mutex_lock(&hold_lock);
	hold_unloaded = true;
	for (h = holds; h; h = next) {
		next = h->next;
		if (h->refs == 1 && !h->starts)
			free(h); /* only its thread's reference, whose key is gone */
	}
	holds = NULL;
	pthread_mutex_unlock(&hold_lock);
}

/* The calling thread's record in *@out, made at its first start with signals. Returns 0 or
 * -errno: -EAGAIN when the process had no thread-specific key left for it (logged; the key
 * was not made, and a setspecific on it would overwrite another library's key 0),
 * -ESHUTDOWN after hold_unload (not logged: the caller says it). */
static int
hold_mine(struct keel__sig_hold **out)
{
	struct keel__sig_hold *h;
	int r;

	if (my_hold) {
		*out = my_hold;
		return 0;
	}
	pthread_once(&hold_once, hold_key_make);
	if (hold_key_err) {
		keel_log(KEEL_LOG_ERROR, "core",
			 "opts.signals: no thread-specific key for the signal mask's record "
			 "(pthread_key_create: %s; the process holds PTHREAD_KEYS_MAX keys): "
			 "set keel_opts.signals false and handle SIGINT and SIGTERM in the "
			 "host",
			 strerror(hold_key_err));
		return -EAGAIN;
	}
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->refs = 1;
	pthread_mutex_lock(&hold_lock);
	/* After hold_unload the key is deleted (the process exits): keel_runtime_start says
	 * so. */
	r = hold_unloaded ? ESHUTDOWN : pthread_setspecific(hold_key, h);
	if (r == 0) {
		h->next = holds;
		if (holds)
			holds->pprev = &h->next;
		h->pprev = &holds;
		holds = h;
	}
	pthread_mutex_unlock(&hold_lock);
	if (r != 0) {
		free(h);
		return -r;
	}
	*out = my_hold = h;
	return 0;
}

/* @rt's start blocked the stop signals on its thread: once no other such start there is
 * running, the signals that came as the last one stopped are taken (@take_late) and the
 * thread's mask from before the first goes back. */
static void take_late_signals(struct keel_runtime *rt);

static void
mask_release(struct keel_runtime *rt, bool take_late)
{
	struct keel__sig_hold *h = rt->sig_hold;
	bool mine = h == my_hold, give_back;

	if (!h)
		return;
	rt->sig_hold = NULL;
	pthread_mutex_lock(&hold_lock);
	give_back = --h->starts == 0;
	/* Released on another thread, the starting thread's mask cannot be given back from
	 * here: it is when that thread next releases a runtime it started. */
	h->owed = give_back && !mine;
	pthread_mutex_unlock(&hold_lock);
	if (!mine)
		keel_log(KEEL_LOG_ERROR, "core",
			 "a runtime with signals on was joined on another thread than the one "
			 "that started it, which keeps SIGINT and SIGTERM blocked (until it "
			 "joins a runtime it starts): call keel_runtime_join on the starting "
			 "thread before keel_runtime_destroy");
	else if (give_back && take_late)
		take_late_signals(rt);
	if (mine && give_back)
		pthread_sigmask(SIG_SETMASK, &h->saved, NULL);
	hold_put(h);
}

int
keel_runtime_start(struct keel_runtime *rt, keel_shard_fn on_start, void *app)
{
	unsigned created = 0;
	int r = 0;

	if (rt->started)
		return -EALREADY;
	rt->start_err = 0; /* a start that failed before any thread existed may be tried again */
	rt->on_start = on_start;
	rt->app = app;
	rt->ready_left = rt->count + 1;
	rt->exit_left = rt->count;

	if (rt->opts.signals) {
		sigset_t set;
		sigemptyset(&set);
		sigaddset(&set, SIGINT);
		sigaddset(&set, SIGTERM);
		/* Blocked here and so in every shard thread (they inherit the mask); every
		 * shard polls a signalfd of its own through its ring and reads it (signal.c),
		 * so a callback that blocks one shard does not keep them unread: a
		 * process-directed signal is taken by a shard that runs. Not a thread of
		 * keel's own: under valgrind a shard asleep in io_uring_enter keeps every other
		 * thread from running, and such a thread never took SIGTERM (the forty-third
		 * session's trial). */
		struct keel__sig_hold *h = NULL;

		r = hold_mine(&h);
		pthread_mutex_lock(&hold_lock);
		if (r == -ESHUTDOWN || hold_unloaded) { /* the process exits: @h may be freed */
			pthread_mutex_unlock(&hold_lock);
			keel_log(KEEL_LOG_ERROR, "core",
				 "keel_runtime_start with opts.signals after libkeel's unload (the "
				 "process is exiting): start runtimes before exit()");
			r = -ESHUTDOWN;
			goto err;
		}
		if (r < 0) {
			pthread_mutex_unlock(&hold_lock);
			goto err;
		}
		/* The first start here saves the mask, unless one released elsewhere left it
		 * blocked: the one saved then is still the thread's own. */
		pthread_sigmask(SIG_BLOCK, &set, h->starts++ || h->owed ? NULL : &h->saved);
		h->owed = false;
		h->refs++;
		pthread_mutex_unlock(&hold_lock);
		rt->sig_hold = h;
		for (unsigned i = 0; i < rt->count; i++) {
			rt->shards[i].sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
			if (rt->shards[i].sigfd < 0) {
				r = -errno;
				keel_log(
					KEEL_LOG_ERROR, "core",
					"signalfd for shard %u failed: %s%s", i, strerror(-r),
					r == -EMFILE || r == -ENFILE
						? " (each shard takes one descriptor for it: raise "
						  "ulimit -n)"
						: "");
				goto err;
			}
		}
	}
	for (unsigned i = 0; i < rt->count; i++) {
		rt->shards[i].xefd = eventfd(0, EFD_CLOEXEC);
		if (rt->shards[i].xefd < 0) {
			r = -errno;
			keel_log(KEEL_LOG_ERROR, "core", "shard %u: eventfd failed: %s%s", i,
				 strerror(-r),
				 r == -EMFILE || r == -ENFILE ? KEEL__NOFILE_HINT : "");
			goto err;
		}
	}
	if (rt->opts.signals)
		keel__signal_list(rt);
	rt->started = true;
	for (; created < rt->count; created++) {
		r = -pthread_create(&rt->shards[created].thread, NULL, shard_main,
				    &rt->shards[created]);
		if (r < 0) {
			keel_log(KEEL_LOG_ERROR, "core", "creating shard thread %u failed: %s%s",
				 created, strerror(-r),
				 r == -EAGAIN ? " (a limit on threads: ulimit -u, the cgroup's "
						"pids.max or TasksMax= in the systemd unit, or "
						"kernel.threads-max)"
					      : "");
			break;
		}
	}
	if (r < 0) {
		/* Arrive for the threads that do not exist, so the others can go on and exit. */
		pthread_mutex_lock(&rt->start_lock);
		rt->start_err = r;
		rt->exit_left -= rt->count - created;
		rt->ready_left -= rt->count - created;
		pthread_mutex_unlock(&rt->start_lock);
	}
	rt->created = created;
	latch_arrive(&rt->start_lock, &rt->latch_cond, &rt->ready_left, true);
	if (rt->start_err) {
		r = rt->start_err;
		keel_runtime_join(rt);
		return r;
	}
	atomic_store(&rt->accepting, true);
	return 0;
err:
	close_shard_fds(rt); /* nothing started: as before the call (a later start makes them) */
	mask_release(rt, false);
	rt->start_err = r;
	return r;
}

#define STOP_GIVEN (1ull << 32)

/* The status of the first stop (0 when none was given). */
static int
stop_status(struct keel_runtime *rt)
{
	return (int)(uint32_t)atomic_load(&rt->stop_word);
}

void
keel_runtime_stop(struct keel_runtime *rt, int status)
{
	uint64_t expect = 0;

	/* Counted before the stop can take effect: the shards may end as soon as one is woken,
	 * and keel_runtime_join waits for this call to leave @rt before it returns (its
	 * caller may destroy @rt at once). */
	atomic_fetch_add(&rt->stop_calls, 1);
	atomic_compare_exchange_strong(&rt->stop_word, &expect,
				       STOP_GIVEN | (uint64_t)(uint32_t)status);
	/* The sleepers are woken through their eventfds, never with an SQE of the calling
	 * shard: a signal handler may run this on a shard's thread in the middle of that
	 * shard's own io_uring_get_sqe, and both would take the same slot. The caller's own
	 * shard too when it has announced a sleep (a handler that ran between its last look
	 * at the stop and its wait); inside a callback it has not. */
	if (!atomic_exchange(&rt->stopping, 1) && rt->started) {
		for (unsigned i = 0; i < rt->count; i++) {
			struct keel_shard *t = &rt->shards[i];
			if (atomic_load(&t->sleeping) && atomic_exchange(&t->sleeping, 0))
				keel__shard_wake(t, NULL);
		}
	}
	atomic_fetch_sub(&rt->stop_calls, 1);
}

void
keel_stop(int status)
{
	keel_runtime_stop(cur_shard(__func__)->rt, status);
}

/* SIGINT/SIGTERM pending once the shards have left their loops (nothing reads their
 * signalfds now): taken here before the caller's mask returns, where their default action
 * would end the process inside join. As in the shards' readers, the first is the stop
 * (already under way) and a second exits at once. */
static void
take_late_signals(struct keel_runtime *rt)
{
	struct timespec now = { 0, 0 };
	sigset_t set;
	int sig;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	while ((sig = sigtimedwait(&set, NULL, &now)) > 0)
		keel__signal_got(sig, true);
}

/* What join returns: start's error when it failed, else the stop status. */
static int
join_status(struct keel_runtime *rt)
{
	return rt->start_err ? rt->start_err : stop_status(rt);
}

/* --stats's table at the join: through the log sink when a host set one (a line each, as
 * INFO of module "stats"), so a host that routes keel's log gets it too; else on stderr, as
 * keel_runtime_stats_print writes it. */
static void
stats_report(const struct keel_runtime *rt)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	if (!f) { /* no memory for the text: the table as it was */
		keel_runtime_stats_print(rt, stderr);
		return;
	}
	keel_runtime_stats_print(rt, f);
	if (fclose(f) != 0)
		keel_runtime_stats_print(rt, stderr);
	else if (!keel__log_to_sink(KEEL_LOG_INFO, "stats", text))
		fputs(text, stderr);
	free(text);
}

/* Whether the calling thread is one of @rt's shards, which can neither wait for the shards'
 * end (its own among them: they wait for it at their exit) nor free @rt under itself: then
 * @call is logged, refused. */
static bool
on_own_shard(const struct keel_runtime *rt, const char *call)
{
	const struct keel_shard *s = keel__cur;

	if (!s || s->rt != rt)
		return false;
	keel_log(KEEL_LOG_ERROR, "core",
		 "%s on shard %u of that runtime: refused (a shard cannot wait for its own end, "
		 "nor free the runtime it runs on; it would hang): call keel_stop there, and "
		 "keel_runtime_join and keel_runtime_destroy on the thread that started the "
		 "runtime",
		 call, s->id);
	return true;
}

/* Whether a keel_runtime_stop or keel_runtime_submit on another thread is inside @rt. */
static bool
calls_in_progress(struct keel_runtime *rt)
{
	if (atomic_load(&rt->stop_calls))
		return true;
	for (unsigned i = 0; i < rt->count; i++)
		if (atomic_load(&rt->shards[i].xcalls))
			return true;
	return false;
}

/* Until no such call is left: a stop may still be waking shards that have ended, a submit
 * be about to lock a shard's request list (and find it closed). The caller may destroy @rt
 * once this returns. */
static void
calls_wait(struct keel_runtime *rt)
{
#ifdef KEEL_FAULTS
	bool said = false;
#endif

	while (calls_in_progress(rt)) {
#ifdef KEEL_FAULTS
		if (!said && keel__hook_join_calls)
			keel__hook_join_calls(rt);
		said = true;
#endif
		sched_yield();
	}
}

/* The join, once claimed (rt->join JOIN_BUSY). Returns the join's status. */
static int
join_claimed(struct keel_runtime *rt)
{
	int r;

	for (unsigned i = 0; i < rt->created; i++)
		pthread_join(rt->shards[i].thread, NULL);
	keel__signal_unlist(rt); /* no other runtime's signal reader stops @rt from now on */
	calls_wait(rt);
	/* A start that failed leaves pending signals to the host, as one that failed before
	 * its threads does: no stop of keel's was under way for them to belong to. */
	mask_release(rt, !rt->start_err);
	if (rt->opts.stats)
		stats_report(rt);
#ifdef KEEL_FAULTS
	keel__faults_env_report();
#endif
	r = join_status(rt);
	/* A destroy on another thread waits for this (join_wait) and frees @rt as soon as it
	 * sees it: nothing here touches @rt once the lock is released. */
	pthread_mutex_lock(&rt->start_lock);
	atomic_store(&rt->join, JOIN_DONE);
#ifdef KEEL_FAULTS
	if (keel__hook_join_done)
		keel__hook_join_done(rt);
#endif
	pthread_cond_broadcast(&rt->join_cond);
	pthread_mutex_unlock(&rt->start_lock);
	return r;
}

/* Until another thread's join of @rt has returned. Under the lock: a join that stored
 * JOIN_DONE still holds it until it no longer touches @rt. */
static void
join_wait(struct keel_runtime *rt)
{
#ifdef KEEL_FAULTS
	if (keel__hook_join_wait)
		keel__hook_join_wait(rt);
#endif
	pthread_mutex_lock(&rt->start_lock);
	while (atomic_load(&rt->join) != JOIN_DONE)
		pthread_cond_wait(&rt->join_cond, &rt->start_lock);
	pthread_mutex_unlock(&rt->start_lock);
}

int
keel_runtime_join(struct keel_runtime *rt)
{
	int idle = JOIN_IDLE;

	if (!rt->started)
		return join_status(rt);
	if (on_own_shard(rt, "keel_runtime_join"))
		return -EDEADLK;
	/* Claimed once: two joins at once would join the same threads (undefined) and give
	 * the signal mask's record back twice. */
	if (!atomic_compare_exchange_strong(&rt->join, &idle, JOIN_BUSY)) {
		if (idle == JOIN_DONE)
			return join_status(rt);
		keel_log(KEEL_LOG_ERROR, "core",
			 "keel_runtime_join while another thread joins the runtime: refused "
			 "(-EALREADY); join a runtime once, on the thread that started it");
		return -EALREADY;
	}
	return join_claimed(rt);
}

/* Whether a shard ended with operations still counted (their CQEs dropped). */
static bool
shards_unmatched(const struct keel_runtime *rt)
{
	for (unsigned i = 0; i < rt->count; i++)
		if (rt->shards[i].ops_unmatched)
			return true;
	return false;
}

void
keel_runtime_destroy(struct keel_runtime *rt)
{
	int idle = JOIN_IDLE;

	if (!rt || on_own_shard(rt, "keel_runtime_destroy"))
		return;
	if (rt->started) {
		if (atomic_load(&rt->join) != JOIN_DONE)
			keel_runtime_stop(rt, 0);
		/* Joined here, or, when another thread's join is under way or has just ended,
		 * after that join has released start_lock: freeing @rt under it would have it
		 * join freed threads, or signal and unlock freed memory (a JOIN_DONE read
		 * without the lock may be one its joiner stored and has not yet unlocked). */
		if (atomic_compare_exchange_strong(&rt->join, &idle, JOIN_BUSY))
			join_claimed(rt);
		else
			join_wait(rt);
	}
	close_shard_fds(rt);
#ifdef KEEL_FAULTS
	/* A lock held here is a thread still inside @rt (EBUSY from glibc): the tests of the
	 * races above see it at once rather than as a use after free that may go unseen (the
	 * freed memory's reads and writes are glibc's, not instrumented). */
	for (unsigned i = 0; i < rt->count; i++)
		keel_verify(pthread_mutex_destroy(&rt->shards[i].xlock) == 0);
	keel_verify(pthread_mutex_destroy(&rt->start_lock) == 0);
#else
	for (unsigned i = 0; i < rt->count; i++)
		pthread_mutex_destroy(&rt->shards[i].xlock);
	pthread_mutex_destroy(&rt->start_lock);
#endif
	pthread_cond_destroy(&rt->latch_cond);
	pthread_cond_destroy(&rt->join_cond);
	/* A shard that ended with operations that never completed (loop.c, final_drain)
	 * leaves its struct, whose internal reads' buffers such an operation may still
	 * write, allocated: a leak, said by that shard's ERROR line. */
	if (!shards_unmatched(rt))
		free(rt->shards);
	else
		KEEL__LEAK_ON_PURPOSE(rt->shards);
	hwloc_topology_destroy(rt->topo);
	free(rt->map);
	free(rt);
	keel__nofile_runtime_destroyed(); /* the last one puts the descriptor limit back */
}

int
keel_run(const struct keel_opts *opts, keel_shard_fn on_start, void *app)
{
	struct keel_runtime *rt;
	int r = keel_runtime_create(opts, &rt);

	if (r < 0)
		return r;
	r = keel_runtime_start(rt, on_start, app);
	if (r == 0)
		r = keel_runtime_join(rt);
	keel_runtime_destroy(rt);
	return r;
}

/* ---- accessors and stats ---- */

unsigned
keel_runtime_shard_count(const struct keel_runtime *rt)
{
	return rt->count;
}

int
keel_runtime_shard_cpu(const struct keel_runtime *rt, unsigned shard)
{
	return shard < rt->count ? rt->shards[shard].cpu : -EINVAL;
}

const struct keel_opts *
keel_runtime_opts(const struct keel_runtime *rt)
{
	return &rt->opts;
}

const char *
keel_runtime_rx_iface(const struct keel_runtime *rt)
{
	return rt->opts.iface[0] ? rt->opts.iface : keel_runtime_map_iface(rt);
}

int
keel_shard_rxq(const struct keel_shard *sh)
{
	return sh->rxq;
}

const char *
keel_runtime_map_iface(const struct keel_runtime *rt)
{
	return rt->map && rt->map->iface[0] ? rt->map->iface : NULL;
}

struct keel_shard *
keel_this_shard(void)
{
	return keel__cur;
}

unsigned
keel_shard_id(const struct keel_shard *sh)
{
	return sh->id;
}

unsigned
keel_shard_count(const struct keel_shard *sh)
{
	return sh->rt->count;
}

int
keel_shard_cpu(const struct keel_shard *sh)
{
	return sh->cpu;
}

struct keel_runtime *
keel_shard_runtime(const struct keel_shard *sh)
{
	return sh->rt;
}

unsigned
keel_shard_ring_flags(const struct keel_shard *sh)
{
	return sh->ring_flags;
}

int
keel_runtime_stats(const struct keel_runtime *rt, unsigned shard, struct keel_shard_stats *out)
{
	const struct atomic_stats *a;

	if (!rt || shard >= rt->count)
		return -EINVAL;
	a = &rt->shards[shard].stats;
#define LD(f) out->f = atomic_load_explicit(&a->f, memory_order_relaxed)
	LD(passes);
	LD(enters);
	LD(cqes);
	LD(msgs_sent);
	LD(msgs_recv);
	LD(msgs_overflow);
	LD(msgs_refused);
	LD(sleeps);
	LD(wakeups);
	LD(wake_fallbacks);
	LD(cq_overflows);
	LD(cq_dropped);
	LD(stalls);
	LD(timers_fired);
	LD(deferred);
	LD(foreign);
	LD(max_pass_ns);
	LD(idle_poll_ns);
	LD(polls_found);
	LD(polls_slept);
	LD(coalesced);
	LD(coalesce_trials);
	LD(coalesce_won);
	LD(wakeups_ring);
	LD(merges);
#undef LD
	return 0;
}

void
keel_runtime_stats_print(const struct keel_runtime *rt, FILE *f)
{
	fprintf(f,
		"%5s %4s %12s %10s %12s %12s %12s %9s %8s %9s %9s %7s %8s %7s %6s %9s %10s %10s %10s "
		"%10s %9s %7s %10s\n",
		"shard", "cpu", "passes", "enters", "cqes", "msgs_sent", "msgs_recv", "overflow",
		"refused", "sleeps", "wakeups", "wake_fb", "cq_ovf", "cq_drop", "stalls", "max_ms",
		"idle_ms", "poll_found", "poll_slept", "coalesced", "co_trials", "co_won",
		"merged");
	for (unsigned i = 0; i < rt->count; i++) {
		struct keel_shard_stats st;
		keel_runtime_stats(rt, i, &st);
		fprintf(f,
			"%5u %4d %12llu %10llu %12llu %12llu %12llu %9llu %8llu %9llu %9llu %7llu "
			"%8llu %7llu %6llu %9.2f %10.1f %10llu %10llu %10llu %9llu %7llu %10llu\n",
			i, rt->shards[i].cpu, (unsigned long long)st.passes,
			(unsigned long long)st.enters, (unsigned long long)st.cqes,
			(unsigned long long)st.msgs_sent, (unsigned long long)st.msgs_recv,
			(unsigned long long)st.msgs_overflow, (unsigned long long)st.msgs_refused,
			(unsigned long long)st.sleeps, (unsigned long long)st.wakeups,
			(unsigned long long)st.wake_fallbacks, (unsigned long long)st.cq_overflows,
			(unsigned long long)st.cq_dropped, (unsigned long long)st.stalls,
			(double)st.max_pass_ns / 1e6, (double)st.idle_poll_ns / 1e6,
			(unsigned long long)st.polls_found, (unsigned long long)st.polls_slept,
			(unsigned long long)st.coalesced, (unsigned long long)st.coalesce_trials,
			(unsigned long long)st.coalesce_won, (unsigned long long)st.merges);
	}
}
