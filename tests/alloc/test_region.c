// SPDX-License-Identifier: MIT
/* Regions: NUMA binding, transparent huge pages, pre-faulting, hugetlbfs, options. */
#include <errno.h>
#include <keel/keel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <hwloc.h>

#include "../../alloc/numa_local.h"
#include "helpers.h"

#define MiB (1ULL << 20)

static struct logcap cap = { PTHREAD_MUTEX_INITIALIZER, "", 0 };

Test(alloc_region, numa_binding_is_asked_for_and_memory_is_on_the_cpus_node)
{
	hwloc_topology_t topo;
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_DEFAULT, 8 * MiB, 4 * MiB);
	struct keel_alloc *a;
	hwloc_bitmap_t where = hwloc_bitmap_alloc(), bound = hwloc_bitmap_alloc();
	hwloc_membind_policy_t pol;
	hwloc_obj_t pu;
	void *base;
	uint64_t len;
	int cpu = sched_getcpu();

	cr_assert_eq(hwloc_topology_init(&topo), 0);
	cr_assert_eq(hwloc_topology_load(topo), 0);
	pu = hwloc_get_pu_obj_by_os_index(topo, (unsigned)cpu);
	cr_assert_not_null(pu);
	if (!hwloc_topology_get_support(topo)->membind->set_area_membind)
		cr_skip_test("hwloc cannot bind memory areas on this system");
	c.topo = topo;
	c.cpu = cpu;
	cr_assert_eq(keel_alloc_create(&c, &a), 0);
	cr_assert_eq(keel_alloc_region(a, 0, &base, &len), 0);
	/* Asked for: the region's policy is BIND to the CPU's node (its one node with CPUs, not
	 * memory-only nodes beside it: numa_local.h). */
	cr_assert_eq(hwloc_get_area_membind(topo, base, len, bound, &pol, HWLOC_MEMBIND_BYNODESET),
		     0, "get_area_membind: %s", strerror(errno));
	cr_assert_eq(pol, HWLOC_MEMBIND_BIND, "policy %d", (int)pol);
	cr_assert(hwloc_bitmap_isequal(bound, keel__numa_of_cpu(topo, (unsigned)cpu)->nodeset),
		  "bound to another node set");
	cr_assert_eq(hwloc_bitmap_weight(bound), 1, "bound to more than one node");
	/* And checked: the pre-faulted pages are on that node. */
	cr_assert_eq(hwloc_get_area_memlocation(topo, base, len, where, HWLOC_MEMBIND_BYNODESET),
		     0);
	cr_assert(!hwloc_bitmap_iszero(where), "no page located (not pre-faulted?)");
	cr_assert(hwloc_bitmap_isincluded(where, pu->nodeset), "pages off the CPU's node");
	keel_alloc_destroy(a);
	hwloc_bitmap_free(where);
	hwloc_bitmap_free(bound);
	hwloc_topology_destroy(topo);
}

Test(alloc_region, first_region_is_prefaulted_at_create)
{
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_DEFAULT, 16 * MiB, 4 * MiB);
	struct keel_alloc *a;
	long pg = sysconf(_SC_PAGESIZE);
	unsigned char *vec;
	void *base;
	uint64_t len;
	size_t resident = 0;

	cr_assert_eq(keel_alloc_create(&c, &a), 0);
	cr_assert_eq(keel_alloc_region(a, 0, &base, &len), 0);
	cr_assert_eq(keel_alloc_region(a, 1, &base, &len), -ENOENT, "only region 0 is mapped");
	cr_assert_eq(keel_alloc_region(a, 0, &base, &len), 0);
	vec = malloc(len / (uint64_t)pg);
	cr_assert_eq(mincore(base, len, vec), 0);
	for (size_t i = 0; i < len / (uint64_t)pg; i++)
		resident += vec[i] & 1;
	cr_assert_eq(resident, len / (uint64_t)pg, "%zu of %llu pages resident", resident,
		     (unsigned long long)(len / (uint64_t)pg));
	free(vec);
	keel_alloc_destroy(a);
}

/* The VmFlags line of the mapping that holds @p in /proc/self/smaps. */
static int
vmflags_of(void *p, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	bool in = false;

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 &&
		    strchr(line, '-') < strchr(line, ' ')) {
			in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
			continue;
		}
		if (in && !strncmp(line, "VmFlags:", 8)) {
			snprintf(out, len, "%s", line);
			fclose(f);
			return 0;
		}
	}
	fclose(f);
	return -ENOENT;
}

Test(alloc_region, regions_are_advised_for_transparent_huge_pages)
{
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_DEFAULT, 8 * MiB, 4 * MiB);
	struct keel_alloc *a;
	char flags[512];
	void *base;
	uint64_t len;

	if (access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) != 0)
		cr_skip_test("kernel built without transparent huge pages");
	cr_assert_eq(keel_alloc_create(&c, &a), 0);
	cr_assert_eq(keel_alloc_region(a, 0, &base, &len), 0);
	cr_assert_eq(((uintptr_t)base) & (KEEL_ALLOC_HUGEPAGE - 1), 0, "region not 2 MiB aligned");
	cr_assert_eq(vmflags_of(base, flags, sizeof(flags)), 0);
	cr_assert(strstr(flags, " hg") != NULL, "no MADV_HUGEPAGE on the region: %s", flags);
	keel_alloc_destroy(a);
}

/* A forked child does not get the buffer memory (MADV_DONTFORK): registered with io_uring,
 * its pages are pinned, and a fork would copy them all (or, under --hugepages, fail for
 * want of huge pages). The child finds the range unmapped. */
Test(alloc_region, regions_are_not_inherited_by_a_forked_child)
{
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_DEFAULT, 8 * MiB, 4 * MiB);
	struct keel_alloc *a;
	char flags[512];
	void *base;
	uint64_t len;
	int status;
	pid_t pid;

	cr_assert_eq(keel_alloc_create(&c, &a), 0);
	cr_assert_eq(keel_alloc_region(a, 0, &base, &len), 0);
	cr_assert_eq(vmflags_of(base, flags, sizeof(flags)), 0);
	cr_assert(strstr(flags, " dc") != NULL, "no MADV_DONTFORK on the region: %s", flags);
	pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0)
		_exit(msync(base, 4096, MS_ASYNC) == -1 && errno == ENOMEM ? 0 : 1);
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		  "the forked child has the region mapped (status %d)", status);
	keel_alloc_destroy(a);
}

Test(alloc_region, hugepages_without_reserved_pages_fail_naming_nr_hugepages)
{
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_DEFAULT, 8 * MiB, 4 * MiB);
	struct keel_alloc *a = NULL;
	long free_pages = read_long("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages");
	int r;

	if (free_pages < 0)
		cr_skip_test("no 2 MiB hugetlbfs pages on this kernel");
	c.hugepages = true;
	keel_alloc_log_set(logcap_alloc_hook, &cap);
	r = keel_alloc_create(&c, &a);
	if (free_pages >= 4) {
		/* Pages are reserved here: the whole cap (4 pages) is reserved at create. */
		char flags[512];
		void *base;
		uint64_t len;
		cr_assert_eq(r, 0, "hugetlbfs region with %ld free pages: %s", free_pages,
			     strerror(-r));
		cr_assert_eq(keel_alloc_region(a, 0, &base, &len), 0);
		cr_assert_eq(vmflags_of(base, flags, sizeof(flags)), 0);
		cr_assert(strstr(flags, " ht") != NULL, "not a hugetlb mapping: %s", flags);
		keel_alloc_destroy(a);
		return;
	}
	cr_assert_eq(r, -ENOMEM, "got %d", r);
	cr_assert(logcap_has(&cap, "/proc/sys/vm/nr_hugepages"), "log: %s", cap.text);
	cr_assert(logcap_has(&cap, "4 huge pages of 2 MiB needed"), "log: %s", cap.text);
}

Test(alloc_region, runtime_with_hugepages_and_none_reserved_fails_start_up)
{
	struct keel_opts o;
	long free_pages = read_long("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages");

	if (free_pages != 0)
		cr_skip_test("this machine has free huge pages (%ld): nothing to fail", free_pages);
	keel_opts_init(&o);
	o.shards = 1;
	o.signals = false;
	o.log_level = KEEL_LOG_ERROR;
	o.hugepages = true;
	o.idle_poll_us = 0;
	keel_log_set_sink(logcap_keel_sink, &cap);
	o.shards = 2;
	cr_assert_eq(keel_run(&o, NULL, NULL), -ENOMEM);
	keel_log_set_sink(NULL, NULL);
	cr_assert(logcap_has(&cap, "/proc/sys/vm/nr_hugepages"), "log: %s", cap.text);
	/* How many: the default 256 MiB per shard, times 2 shards, in 2 MiB pages. */
	cr_assert(logcap_has(&cap, "256 huge pages of 2 MiB needed in all"), "log: %s", cap.text);
	/* Of the memory the allocator maps: 7 MiB is one region of 4 MiB, so 2 pages a shard
	 * (it said 6 in all, 7 MiB / 2 MiB x 2). */
	cap.len = 0;
	cap.text[0] = 0;
	o.memory = 7 * MiB;
	keel_log_set_sink(logcap_keel_sink, &cap);
	cr_assert_eq(keel_run(&o, NULL, NULL), -ENOMEM);
	keel_log_set_sink(NULL, NULL);
	cr_assert(logcap_has(&cap, "4 huge pages of 2 MiB needed in all"), "log: %s", cap.text);
}

/* The whole cap is reserved as address space at create: where the address-space limit
 * (ulimit -v) refuses it, the log says so and names the fix (it said only "Cannot allocate
 * memory"). Not under AddressSanitizer, whose shadow memory a limit would starve. */
Test(alloc_region, an_address_space_limit_below_the_cap_is_named)
{
#if defined(__SANITIZE_ADDRESS__)
	cr_skip_test("AddressSanitizer's shadow memory cannot live under an RLIMIT_AS");
#else
	struct keel_alloc_config c = { .memory = 4ULL << 30 };
	struct keel_alloc *a;
	struct rlimit rl;
	long vm_kb = 0;
	char line[256];
	FILE *f = fopen("/proc/self/status", "re");

	cr_assert(f);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmSize: %ld kB", &vm_kb) == 1)
			break;
	fclose(f);
	cr_assert_gt(vm_kb, 0);
	rl.rlim_cur = rl.rlim_max = ((rlim_t)vm_kb << 10) + (512ULL << 20);
	cr_assert_eq(setrlimit(RLIMIT_AS, &rl), 0);
	keel_alloc_log_set(logcap_alloc_hook, &cap);
	cr_assert_eq(keel_alloc_create(&c, &a), -ENOMEM);
	keel_alloc_log_set(NULL, NULL);
	cr_assert(logcap_has(&cap, "ulimit -v") && logcap_has(&cap, "lower --memory"), "log: %s",
		  cap.text);
#endif
}

/* What an allocator of a config maps: the cap rounded down to whole regions, 0 for a config
 * the create refuses. */
Test(alloc_region, memory_of_a_config_is_its_cap_in_whole_regions)
{
	struct keel_alloc_config c = { 0 };

	cr_assert_eq(keel_alloc_memory_of(&c), KEEL_ALLOC_DEFAULT_MEMORY);
	c.memory = 7 * MiB;
	cr_assert_eq(keel_alloc_memory_of(&c), 4 * MiB);
	c.memory = 3 * MiB; /* below a region: regions of 2 MiB */
	cr_assert_eq(keel_alloc_memory_of(&c), 2 * MiB);
	c.memory = 1 * MiB;
	cr_assert_eq(keel_alloc_memory_of(&c), 0);
	c.memory = 64 * MiB;
	c.region_size = 3 * MiB;
	cr_assert_eq(keel_alloc_memory_of(&c), 0);
	/* More regions than a ring's fixed-buffer table holds, or an unknown backend:
	 * keel_alloc_create refuses both, and this said a size for them. */
	c.region_size = 2 * MiB;
	c.memory = (uint64_t)(KEEL_ALLOC_MAX_REGIONS + 1) * 2 * MiB;
	cr_assert_eq(keel_alloc_memory_of(&c), 0);
	c.memory = (uint64_t)KEEL_ALLOC_MAX_REGIONS * 2 * MiB;
	cr_assert_eq(keel_alloc_memory_of(&c), c.memory);
	c.memory = 64 * MiB;
	c.backend = (enum keel_alloc_backend)(KEEL_ALLOC_BACKEND_JEMALLOC + 1);
	cr_assert_eq(keel_alloc_memory_of(&c), 0);
}

Test(alloc_region, memory_and_hugepages_options_parse)
{
	struct keel_opts o;
	char *argv[] = { "prog",      "--memory",       "512M", "--hugepages",
			 "--feature", "reg_buffers=on", "app",  NULL };
	int argc = 7;
	char err[256];

	keel_opts_init(&o);
	cr_assert_eq(o.memory, 256 * MiB);
	cr_assert_eq(keel_opts_parse(&o, &argc, argv, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(o.memory, 512 * MiB);
	cr_assert(o.hugepages);
	cr_assert_eq(o.features[KEEL_FEAT_REG_BUFFERS], KEEL_POLICY_ON);
	cr_assert_eq(argc, 2);
	cr_assert_str_eq(argv[1], "app");

	static const struct {
		const char *v;
		uint64_t want;
	} ok[] = { { "1G", 1ULL << 30 },
		   { "2048k", 2 * MiB },
		   { "3m", 3 * MiB },
		   { "8388608", 8 * MiB } };
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		char *av[] = { "prog", "--memory", (char *)ok[i].v, NULL };
		int ac = 3;
		cr_assert_eq(keel_opts_parse(&o, &ac, av, err, sizeof(err)), 0, "%s", err);
		cr_assert_eq(o.memory, ok[i].want, "%s", ok[i].v);
	}
	static const char *const bad[] = { "12X", "-1G", "1M", "", "G", "2000G", "65G" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *av[] = { "prog", "--memory", (char *)bad[i], NULL };
		int ac = 3;
		cr_assert_eq(keel_opts_parse(&o, &ac, av, err, sizeof(err)), -EINVAL, "'%s'",
			     bad[i]);
		cr_assert(strstr(err, "--memory") != NULL, "%s", err);
	}
	cr_assert_str_eq(keel_feature_name(KEEL_FEAT_REG_BUFFERS), "reg_buffers");
}

/* One limit: the parser, the allocator and the fixed-buffer table agree on it. */
Test(alloc_region, memory_limit_is_one_constant_named_in_the_errors)
{
	struct keel_opts o;
	char err[256];
	char *ok[] = { "prog", "--memory", "64G", NULL };
	char *big[] = { "prog", "--memory", "65G", NULL };
	int ac = 3;
	struct keel_alloc_config c =
		test_alloc_config(KEEL_ALLOC_BACKEND_DEFAULT, KEEL_ALLOC_MAX_MEMORY, 0);
	struct keel_alloc *a = NULL;

	cr_assert_eq(KEEL_ALLOC_MAX_MEMORY, 64ULL << 30);
	keel_opts_init(&o);
	cr_assert_eq(keel_opts_parse(&o, &ac, ok, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(o.memory, KEEL_ALLOC_MAX_MEMORY);
	ac = 3;
	cr_assert_eq(keel_opts_parse(&o, &ac, big, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "maximum of 64G") != NULL, "%s", err);
	cr_assert_eq(o.memory, KEEL_ALLOC_MAX_MEMORY, "a refused value is not stored");

	/* The allocator takes exactly the maximum (address space only) and no more. */
	cr_assert_eq(keel_alloc_create(&c, &a), 0);
	cr_assert_eq(keel_alloc_region_max(a), KEEL_ALLOC_MAX_REGIONS);
	keel_alloc_destroy(a);
	c.memory = KEEL_ALLOC_MAX_MEMORY + KEEL_ALLOC_DEFAULT_REGION;
	cap.len = 0;
	cap.text[0] = 0;
	keel_alloc_log_set(logcap_alloc_hook, &cap);
	cr_assert_eq(keel_alloc_create(&c, &a), -EINVAL);
	keel_alloc_log_set(NULL, NULL);
	cr_assert(logcap_has(&cap, "at most 16384"), "log: %s", cap.text);
}
