/* SPDX-License-Identifier: MIT */
/*
 * Which NUMA node a CPU's memory is, when memory-only nodes (high-bandwidth memory, CXL,
 * persistent or GPU memory) are attached beside its DRAM node: hwloc gives such a node the
 * CPUs of the object it hangs off (a package, the machine), so a CPU's nodeset holds them
 * all, and binding to it lets allocations land on (or spill to) the far memory. Shared by
 * the allocator (region binding), the runtime (mailboxes) and the topology report (the node
 * of a core or a NIC): static inline, since alloc links nothing of core and core's internal
 * symbols are hidden.
 */
#ifndef KEEL_NUMA_LOCAL_H
#define KEEL_NUMA_LOCAL_H

#include <stdbool.h>
#include <stdio.h>
#include <strings.h>

#include <hwloc.h>

/* Whether @node is of the memory-only kind. On this machine (@here: a live topology hwloc
 * loaded from this system, hwloc_topology_is_thissystem) sysfs says so (an empty cpulist);
 * elsewhere, or when sysfs cannot be read, hwloc's subtype does (DRAM has none, or "DRAM";
 * hwloc guesses it from bandwidth, or takes HWLOC_MEMTIERS, so it is only a preference). */
static inline bool
keel__numa_memory_kind(hwloc_obj_t node, bool here)
{
	char path[96], buf[8] = "";
	FILE *f;

	if (here) {
		snprintf(path, sizeof(path), "/sys/devices/system/node/node%u/cpulist",
			 node->os_index);
		f = fopen(path, "re");
		if (f) {
			if (!fgets(buf, sizeof(buf), f))
				buf[0] = 0;
			fclose(f);
			return buf[0] == 0 || buf[0] == '\n';
		}
	}
	return node->subtype && strcasecmp(node->subtype, "DRAM") != 0;
}

/* The NUMA node of the CPUs @set: of the nodes whose CPUs include them, one not of the
 * memory-only kind (@kind, with @arg) before one that is, then the narrowest, then the lowest
 * number; NULL when no node includes them. */
static inline hwloc_obj_t
keel__numa_pick(hwloc_topology_t h, hwloc_const_cpuset_t set,
		bool (*kind)(hwloc_obj_t node, void *arg), void *arg)
{
	hwloc_obj_t node = NULL, best = NULL;
	bool best_mem = false;
	int best_w = 0;

	if (hwloc_bitmap_iszero(set))
		return NULL;
	while ((node = hwloc_get_next_obj_by_type(h, HWLOC_OBJ_NUMANODE, node))) {
		bool mem;
		int w;

		if (!hwloc_bitmap_isincluded(set, node->cpuset))
			continue;
		mem = kind(node, arg);
		w = hwloc_bitmap_weight(node->cpuset);
		if (!best || (best_mem && !mem) ||
		    (best_mem == mem &&
		     (w < best_w || (w == best_w && node->os_index < best->os_index)))) {
			best = node;
			best_mem = mem;
			best_w = w;
		}
	}
	return best;
}

static inline bool
keel__numa_kind_here_(hwloc_obj_t node, void *arg)
{
	return keel__numa_memory_kind(node, *(const bool *)arg);
}

/* The node of OS CPU @cpu's memory on @h (keel__numa_pick with keel__numa_memory_kind), or
 * NULL. */
static inline hwloc_obj_t
keel__numa_of_cpu(hwloc_topology_t h, unsigned cpu)
{
	hwloc_obj_t pu = hwloc_get_pu_obj_by_os_index(h, cpu);
	bool here = hwloc_topology_is_thissystem(h);

	return pu ? keel__numa_pick(h, pu->cpuset, keel__numa_kind_here_, &here) : NULL;
}

#endif
