// SPDX-License-Identifier: MIT
/* The topology mapper on real machines' hwloc XML (../shared/topologies), synthetic edge
 * cases, and the live machine; the map file parser; the runtime's --map. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../alloc/numa_local.h"
#include "../../core/internal.h"
#include "../../core/topo_internal.h"
#include "fake_topo.h"
#include "gen_topo.h"
#include "helpers.h"
#include "tmpdir.h"

#ifndef KEEL_TOPOLOGIES_DIR
#define KEEL_TOPOLOGIES_DIR "../shared/topologies"
#endif

static char err[1024];

/* Load a topology file from the shared folder, or skip the test when it is not there. */
static struct keel_topo *
load_xml(const char *name, unsigned queues)
{
	char path[512];
	struct keel_topo_load_opts o = { .queues = queues };
	struct keel_topo *t = NULL;
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", KEEL_TOPOLOGIES_DIR, name);
	if (stat(path, &st) < 0)
		cr_skip_test("topology file %s is missing (shared/ must sit beside the repo)",
			     path);
	o.xml = path;
	cr_assert_eq(keel_topo_load(&o, &t, err, sizeof(err)), 0, "%s", err);
	return t;
}

static struct keel_topo *
load_syn(const char *desc)
{
	struct keel_topo_load_opts o = { .synthetic = desc };
	struct keel_topo *t = NULL;

	cr_assert_eq(keel_topo_load(&o, &t, err, sizeof(err)), 0, "%s", err);
	return t;
}

static int
compute(struct keel_topo *t, const char *iface, unsigned shards, enum keel_map_smt smt,
	enum keel_map_numa numa, unsigned reserve, struct keel_map *m)
{
	struct keel_map_req r;

	keel_map_req_init(&r);
	if (iface)
		snprintf(r.iface, sizeof(r.iface), "%s", iface);
	r.shards = shards;
	r.smt = smt;
	r.numa = numa;
	r.reserve = reserve;
	return keel_map_compute(t, &r, m, err, sizeof(err));
}

/* The core and SMT rank of OS CPU @cpu. */
static const struct keel_topo_pu *
pu_of(struct keel_topo *t, int cpu)
{
	const struct keel_topo_info *in = keel_topo_info_get(t);
	for (unsigned i = 0; i < in->npus; i++)
		if ((int)in->pus[i].os == cpu)
			return &in->pus[i];
	cr_assert_fail("CPU %d not in the topology", cpu);
	return NULL;
}

static void
assert_distinct_cores(struct keel_topo *t, const struct keel_map *m)
{
	for (unsigned i = 0; i < m->nshards; i++)
		for (unsigned j = i + 1; j < m->nshards; j++)
			cr_assert_neq(pu_of(t, m->shards[i].cpu)->core,
				      pu_of(t, m->shards[j].cpu)->core,
				      "shards %u and %u share a core (CPUs %d, %d)", i, j,
				      m->shards[i].cpu, m->shards[j].cpu);
}

static struct keel_map map; /* large: keep it off the worker's stack */

Test(core_topo, xml_24em64t_six_shards_on_node0_physical_cores)
{
	struct keel_topo *t = load_xml("24em64t-2n6c2t-pci.xml", 0);
	const struct keel_topo_nic *nic = keel_topo_nic_find(t, "eth0");

	cr_assert_not_null(nic);
	cr_assert_eq(nic->numa, 0);
	cr_assert_eq(compute(t, "eth0", 6, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map), 0,
		     "%s", err);
	cr_assert_eq(map.nshards, 6);
	cr_assert_eq(map.numa, 0);
	for (unsigned i = 0; i < 6; i++) {
		cr_assert_eq(map.shards[i].numa, 0, "shard %u on node %d", i, map.shards[i].numa);
		cr_assert_eq(pu_of(t, map.shards[i].cpu)->smt, 0, "shard %u on a sibling", i);
		cr_assert_eq(map.shards[i].rxq, (int)i);
		cr_assert_eq(map.shards[i].irq_cpu, map.shards[i].cpu);
	}
	assert_distinct_cores(t, &map);
	keel_topo_destroy(t);
}

/* Replace the first @from in @s (of room @cap) with @to; the test fails when it is not there. */
static void
xml_edit(char *s, size_t cap, const char *from, const char *to)
{
	char *p = strstr(s, from);
	size_t fl = strlen(from), tl = strlen(to), rest;

	cr_assert_not_null(p, "the topology file has no '%s'", from);
	rest = strlen(p + fl) + 1;
	cr_assert_lt((size_t)(p - s) + tl + rest, cap);
	memmove(p + tl, p + fl, rest);
	memcpy(p, to, tl);
}

/* 24em64t with memory-only NUMA nodes as hwloc shows them on HBM and CXL machines: an HBM
 * node attached to package 0 before its DRAM node (hwloc's order on such machines), and a
 * CXL node attached to the whole machine. Each takes the CPUs of what it is attached to, so
 * by cpuset alone package 0's cores were node 2's (the HBM), and the NICs under package 0,
 * whose ancestor then has two nodes, were on "not one node": the map had no NUMA node and
 * put its memory on the HBM. Cores and NICs belong to the DRAM nodes; the others are marked
 * memory-only. */
/* 24em64t with each (from, to) pair of @edits[@n] made (xml_edit), written to @tmp (a
 * mkstemp template; the caller unlinks it). */
static void
write_xml_edited(const char *const (*edits)[2], unsigned n, char *tmp)
{
	static char xml[1 << 20];
	char path[512];
	size_t len;
	FILE *f;
	int fd;

	snprintf(path, sizeof(path), "%s/24em64t-2n6c2t-pci.xml", KEEL_TOPOLOGIES_DIR);
	f = fopen(path, "r");
	if (!f)
		cr_skip_test("topology file %s is missing (shared/ must sit beside the repo)",
			     path);
	len = fread(xml, 1, sizeof(xml) - 1, f);
	fclose(f);
	xml[len] = 0;
	for (unsigned i = 0; i < n; i++)
		xml_edit(xml, sizeof(xml), edits[i][0], edits[i][1]);
	fd = mkstemp(tmp);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, xml, strlen(xml)), (ssize_t)strlen(xml));
	close(fd);
}

/* 24em64t with @edits made, loaded. */
static struct keel_topo *
load_xml_edited(const char *const (*edits)[2], unsigned n)
{
	char tmp[] = "/tmp/keel-topo-edit-XXXXXX";
	struct keel_topo_load_opts o = { 0 };
	struct keel_topo *t = NULL;

	write_xml_edited(edits, n, tmp);
	o.xml = tmp;
	cr_assert_eq(keel_topo_load(&o, &t, err, sizeof(err)), 0, "%s", err);
	unlink(tmp);
	return t;
}

/* The machine's nodeset with nodes 2 and 3 added; package 0's with node 2. */
#define NODES_0_TO_3                                                                                            \
	{                                                                                                       \
		"nodeset=\"0x00000003\" complete_nodeset=\"0x00000003\" allowed_nodeset=\"0x00000003\"",        \
			"nodeset=\"0x0000000f\" complete_nodeset=\"0x0000000f\" allowed_nodeset=\"0x0000000f\"" \
	}
#define PACKAGE0_NODE2(attrs)                                                                               \
	{                                                                                                   \
		"nodeset=\"0x00000001\" complete_nodeset=\"0x00000001\" gp_index=\"3\">\n"                  \
		"      <object type=\"NUMANode\"",                                                          \
			"nodeset=\"0x00000005\" complete_nodeset=\"0x00000005\" gp_index=\"3\">\n"          \
			"      <object type=\"NUMANode\" os_index=\"2\" " attrs                             \
			"cpuset=\"0x00555555\" complete_cpuset=\"0x00555555\" nodeset=\"0x00000004\" "      \
			"complete_nodeset=\"0x00000004\" gp_index=\"900\" local_memory=\"17179869184\"/>\n" \
			"      <object type=\"NUMANode\""                                                   \
	}

/* Cores and NICs belong to nodes with cores, and the nodes no core belongs to read
 * memory-only, in three layouts:
 * - an HBM node attached to package 0 before its DRAM node (hwloc's order on such machines)
 *   and a CXL node attached to the whole machine: each takes the CPUs of what it hangs off,
 *   so by cpuset alone package 0's cores were node 2's (the HBM), and the NICs under package
 *   0, whose ancestor then has two nodes, were on "not one node": the map had no node;
 * - the same CXL-like node in package 0 without a subtype (hwloc 2.9 names no CXL memory):
 *   no core chooses it (same CPUs, higher number), so the NICs still have node 0;
 * - both DRAM nodes given an HBM subtype (hwloc guesses tiers from bandwidth, and
 *   HWLOC_MEMTIERS can say anything): they keep their cores, and the report its nodes. */
Test(core_topo, memory_only_numa_nodes_own_no_cores_and_no_nic)
{
	static const char *const hbm_cxl[][2] = {
		NODES_0_TO_3,
		{ "    <object type=\"Package\" os_index=\"0\"",
		  "    <object type=\"NUMANode\" os_index=\"3\" subtype=\"CXL-DRAM\" "
		  "cpuset=\"0x00ffffff\" complete_cpuset=\"0x00ffffff\" nodeset=\"0x00000008\" "
		  "complete_nodeset=\"0x00000008\" gp_index=\"901\" local_memory=\"68719476736\"/>\n"
		  "    <object type=\"Package\" os_index=\"0\"" },
		PACKAGE0_NODE2("subtype=\"HBM\" "),
	};
	static const char *const plain_beside[][2] = { NODES_0_TO_3, PACKAGE0_NODE2("") };
	static const char *const all_hbm[][2] = {
		{ "<object type=\"NUMANode\" os_index=\"0\"",
		  "<object type=\"NUMANode\" subtype=\"HBM\" os_index=\"0\"" },
		{ "<object type=\"NUMANode\" os_index=\"1\"",
		  "<object type=\"NUMANode\" subtype=\"HBM\" os_index=\"1\"" },
	};
	struct keel_topo *t;
	const struct keel_topo_nic *nic;

	t = load_xml_edited(hbm_cxl, 3);
	cr_assert_eq(t->info.nnuma, 4);
	for (unsigned i = 0; i < t->info.nnuma; i++) {
		const struct keel_topo_numa *nd = &t->info.numa[i];

		cr_assert_eq(nd->memory_only, nd->os >= 2, "node %u", nd->os);
		cr_assert_eq(nd->ncores, nd->os >= 2 ? 0u : 6u, "node %u has %u cores", nd->os,
			     nd->ncores);
	}
	for (unsigned c = 0; c < t->info.ncores; c++)
		cr_assert(t->info.cores[c].numa == 0 || t->info.cores[c].numa == 1,
			  "core %u on node %d", c, t->info.cores[c].numa);
	nic = keel_topo_nic_find(t, "eth0");
	cr_assert_not_null(nic);
	cr_assert_eq(nic->numa, 0, "eth0 on node %d", nic->numa);
	cr_assert_eq(compute(t, "eth0", 6, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map), 0,
		     "%s", err);
	cr_assert_eq(map.numa, 0);
	for (unsigned i = 0; i < 6; i++)
		cr_assert_eq(map.shards[i].numa, 0, "shard %u on node %d", i, map.shards[i].numa);
	keel_topo_destroy(t);

	t = load_xml_edited(plain_beside, 2);
	nic = keel_topo_nic_find(t, "eth0");
	cr_assert_not_null(nic);
	cr_assert_eq(nic->numa, 0, "eth0 beside an unnamed memory node: on node %d", nic->numa);
	for (unsigned i = 0; i < t->info.nnuma; i++)
		cr_assert_eq(t->info.numa[i].memory_only, t->info.numa[i].os == 2, "node %u",
			     t->info.numa[i].os);
	keel_topo_destroy(t);

	t = load_xml_edited(all_hbm, 2);
	for (unsigned i = 0; i < t->info.nnuma; i++) {
		cr_assert(!t->info.numa[i].memory_only, "node %u", t->info.numa[i].os);
		cr_assert_eq(t->info.numa[i].ncores, 6u, "node %u", t->info.numa[i].os);
	}
	keel_topo_destroy(t);
}

/* The node a CPU's memory is bound to (the allocator's regions, the runtime's mailboxes):
 * PU 0's nodeset on a machine with an HBM node in its package holds both nodes, and binding
 * to it let allocations land on (or spill to) the HBM; keel__numa_of_cpu gives the DRAM
 * node alone. */
Test(core_topo, a_cpus_memory_node_is_its_dram_node_not_the_hbm_beside_it)
{
	static const char *const hbm[][2] = { NODES_0_TO_3, PACKAGE0_NODE2("subtype=\"HBM\" ") };
	char tmp[] = "/tmp/keel-topo-edit-XXXXXX";
	hwloc_topology_t h;
	hwloc_obj_t pu, node;

	write_xml_edited(hbm, 2, tmp);
	cr_assert_eq(hwloc_topology_init(&h), 0);
	cr_assert_eq(hwloc_topology_set_xml(h, tmp), 0);
	cr_assert_eq(hwloc_topology_load(h), 0);
	unlink(tmp);
	pu = hwloc_get_pu_obj_by_os_index(h, 0);
	cr_assert_not_null(pu);
	cr_assert_eq(hwloc_bitmap_weight(pu->nodeset), 2, "PU 0's nodeset: both nodes");
	node = keel__numa_of_cpu(h, 0);
	cr_assert_not_null(node);
	cr_assert_eq(node->os_index, 0u, "PU 0's memory on node %u", node->os_index);
	node = keel__numa_of_cpu(h, 1);
	cr_assert_not_null(node);
	cr_assert_eq(node->os_index, 1u);
	hwloc_topology_destroy(h);
}

Test(core_topo, xml_32em64t_eight_shards_on_node1_where_the_nic_is)
{
	struct keel_topo *t = load_xml("32em64t-2n8c2t-pci-normalio.xml", 0);

	cr_assert_eq(keel_topo_nic_find(t, "eth0")->numa, 1);
	cr_assert_eq(compute(t, "eth0", 8, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map), 0,
		     "%s", err);
	for (unsigned i = 0; i < 8; i++) {
		cr_assert_eq(map.shards[i].numa, 1, "shard %u on node %d", i, map.shards[i].numa);
		cr_assert_eq(pu_of(t, map.shards[i].cpu)->smt, 0);
	}
	assert_distinct_cores(t, &map);
	cr_assert_eq(map.rx_queues, 8);
	keel_topo_destroy(t);
}

Test(core_topo, sixteen_shards_smt_allow_numa_local_fill_node1_siblings)
{
	struct keel_topo *t = load_xml("32em64t-2n8c2t-pci-normalio.xml", 0);

	cr_assert_eq(compute(t, "eth0", 16, KEEL_MAP_SMT_ALLOW, KEEL_MAP_NUMA_LOCAL, 0, &map), 0,
		     "%s", err);
	for (unsigned i = 0; i < 16; i++) {
		cr_assert_eq(map.shards[i].numa, 1, "shard %u on node %d", i, map.shards[i].numa);
		/* physical cores first, then siblings */
		cr_assert_eq(pu_of(t, map.shards[i].cpu)->smt, i < 8 ? 0u : 1u, "shard %u", i);
	}
	keel_topo_destroy(t);
}

Test(core_topo, sixteen_shards_numa_spread_take_node0_cores_before_siblings)
{
	struct keel_topo *t = load_xml("32em64t-2n8c2t-pci-normalio.xml", 0);

	cr_assert_eq(compute(t, "eth0", 16, KEEL_MAP_SMT_ALLOW, KEEL_MAP_NUMA_SPREAD, 0, &map), 0,
		     "%s", err);
	for (unsigned i = 0; i < 16; i++) {
		cr_assert_eq(map.shards[i].numa, i < 8 ? 1 : 0, "shard %u on node %d", i,
			     map.shards[i].numa);
		cr_assert_eq(pu_of(t, map.shards[i].cpu)->smt, 0);
	}
	assert_distinct_cores(t, &map);
	keel_topo_destroy(t);
}

Test(core_topo, sixteen_shards_smt_avoid_never_share_a_core)
{
	struct keel_topo *t = load_xml("32em64t-2n8c2t-pci-normalio.xml", 0);

	cr_assert_eq(compute(t, "eth0", 16, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map), 0,
		     "%s", err);
	assert_distinct_cores(t, &map);
	for (unsigned i = 0; i < 8; i++)
		cr_assert_eq(map.shards[i].numa, 1);
	/* 17 does not fit one per physical core: a clear error naming the ways out */
	cr_assert_eq(compute(t, "eth0", 17, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map),
		     -EINVAL);
	cr_assert(strstr(err, "--smt allow") && strstr(err, "--oversubscribe"), "%s", err);
	keel_topo_destroy(t);
}

/* A topology from tests/common/gen_topo.py @args, loaded with @queues rx queues per NIC. */
static struct keel_topo *
load_gen(const char *args, unsigned queues)
{
	struct keel_topo_load_opts o = { .queues = queues };
	struct keel_topo *t = NULL;
	char path[128];

	gen_topo_xml(args, path, sizeof(path));
	o.xml = path;
	cr_assert_eq(keel_topo_load(&o, &t, err, sizeof(err)), 0, "%s", err);
	unlink(path);
	return t;
}

/* Shards @from..@to-1 of the map are all on NUMA node @node. */
static void
assert_shards_on(const struct keel_map *m, unsigned from, unsigned to, int node)
{
	for (unsigned i = from; i < to; i++)
		cr_assert_eq(m->shards[i].numa, node, "shard %u on node %d (CPU %d), not node %d",
			     i, m->shards[i].numa, m->shards[i].cpu, node);
}

/* Two packages of two nodes each (4 cores, 2 threads), eth0 on node 2, the first of the
 * second package; no NUMA distances in the file. Shards past the NIC's node go to node 3,
 * in the NIC's package, before the other package's nodes: they went to node 0 (hwloc's
 * logical order) while node 3 stood idle. */
Test(core_topo, shards_past_the_nics_node_go_to_its_own_package_first)
{
	struct keel_topo *t = load_gen("2 2 4 2 --interleave --nics eth0@2", 16);

	cr_assert_eq(keel_topo_nic_find(t, "eth0")->numa, 2);
	cr_assert_eq(compute(t, "eth0", 6, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map), 0,
		     "%s", err);
	assert_shards_on(&map, 0, 4, 2);
	assert_shards_on(&map, 4, 6, 3);
	assert_distinct_cores(t, &map);
	/* spread: every physical core first, node 3's before the other package's */
	cr_assert_eq(compute(t, "eth0", 16, KEEL_MAP_SMT_ALLOW, KEEL_MAP_NUMA_SPREAD, 0, &map), 0,
		     "%s", err);
	assert_shards_on(&map, 0, 4, 2);
	assert_shards_on(&map, 4, 8, 3);
	for (unsigned i = 8; i < 16; i++)
		cr_assert(map.shards[i].numa == 0 || map.shards[i].numa == 1, "shard %u on node %d",
			  i, map.shards[i].numa);
	/* local: the NIC node's siblings, then node 3's cores */
	cr_assert_eq(compute(t, "eth0", 12, KEEL_MAP_SMT_ALLOW, KEEL_MAP_NUMA_LOCAL, 0, &map), 0,
		     "%s", err);
	assert_shards_on(&map, 0, 8, 2);
	assert_shards_on(&map, 8, 12, 3);
	/* A reserve past the local cores takes the nearest remote core, as the shards would. */
	cr_assert_eq(compute(t, "eth0", 4, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 5, &map), 0,
		     "%s", err);
	assert_shards_on(&map, 0, 3, 3);
	assert_shards_on(&map, 3, 4, 0);
	keel_topo_destroy(t);
}

/* Four packages of one node (2 cores each) and eth0 on node 0, with a NUMA latency matrix
 * of a ring: node 0 is 21 from nodes 1 and 3, 31 from node 2. Shards past node 0 go to the
 * nearest nodes first (1, 3, then 2); without the matrix, all other packages are alike and
 * hwloc's order stands (1, 2, 3). */
Test(core_topo, shards_past_the_nics_node_follow_the_numa_distances)
{
	struct keel_topo *t = load_gen("4 1 2 1 --nics eth0@0 --distances '10 21 31 21 21 10 21 "
				       "31 31 21 10 21 21 31 21 10'",
				       8);

	cr_assert_eq(compute(t, "eth0", 8, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map), 0,
		     "%s", err);
	assert_shards_on(&map, 0, 2, 0);
	assert_shards_on(&map, 2, 4, 1);
	assert_shards_on(&map, 4, 6, 3);
	assert_shards_on(&map, 6, 8, 2);
	keel_topo_destroy(t);
	t = load_gen("4 1 2 1 --nics eth0@0", 8);
	cr_assert_eq(compute(t, "eth0", 8, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map), 0,
		     "%s", err);
	for (unsigned i = 0; i < 8; i++)
		assert_shards_on(&map, i, i + 1, (int)i / 2);
	keel_topo_destroy(t);
}

Test(core_topo, reserve_one_keeps_the_first_local_core_free)
{
	struct keel_topo *t = load_xml("32em64t-2n8c2t-pci-normalio.xml", 0);
	const struct keel_topo_nic *nic = keel_topo_nic_find(t, "eth0");
	const struct keel_topo_info *in = keel_topo_info_get(t);
	int first = -1;

	/* the first core local to eth0 */
	for (unsigned c = 0; c < in->ncores && first < 0; c++)
		if (keel_cpuset_has(&nic->local, in->cores[c].pus[0]))
			first = (int)c;
	cr_assert_geq(first, 0);
	cr_assert_eq(compute(t, "eth0", 7, KEEL_MAP_SMT_ALLOW, KEEL_MAP_NUMA_LOCAL, 1, &map), 0,
		     "%s", err);
	for (unsigned i = 0; i < map.nshards; i++) {
		cr_assert_neq(map.shards[i].core, first, "shard %u on the reserved core", i);
		cr_assert_eq(map.shards[i].numa, 1);
	}
	cr_assert_eq(map.reserve, 1);
	keel_topo_destroy(t);
}

/* A reserve that takes every core local to the NIC: the default map is refused with the
 * reason, not moved to the other node (8 shards on node 0 for eth0 on node 1, its IRQs
 * pinned across the interconnect). An explicit --shards places them there on purpose. */
Test(core_topo, a_reserve_of_every_local_core_refuses_the_default_map)
{
	struct keel_topo *t = load_xml("32em64t-2n8c2t-pci-normalio.xml", 0);

	cr_assert_eq(compute(t, "eth0", 0, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 8, &map),
		     -EINVAL, "a map of %u shards, the first on NUMA node %d", map.nshards,
		     map.nshards ? map.shards[0].numa : -1);
	cr_assert(strstr(err, "--reserve 8 takes every core local to eth0 (8)"), "%s", err);
	cr_assert_eq(compute(t, "eth0", 4, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 8, &map), 0,
		     "%s", err);
	cr_assert_eq(map.shards[0].numa, 0);
	/* Fewer reserved: the default stays on the NIC's node. */
	cr_assert_eq(compute(t, "eth0", 0, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 7, &map), 0,
		     "%s", err);
	cr_assert_eq(map.nshards, 1);
	cr_assert_eq(map.shards[0].numa, 1);
	keel_topo_destroy(t);
}

/* The RSS check reads which queues the table names, not its highest: a map of queues 5 and
 * 2 (--rxqs IF:5,2, rx_queues 6) on a 6-queue NIC with the default table leaves flows on
 * 0, 1, 3 and 4 to no shard. Compared with rx_queues only, that table passed. */
Test(core_topo, rss_check_finds_the_queues_no_shard_serves)
{
	static const uint32_t dflt[] = { 0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5 };
	static const uint32_t kept[] = { 5, 2, 5, 2, 2, 5 };
	unsigned count = 99;

	memset(&map, 0, sizeof(map));
	map.nshards = 3;
	map.shards[0].rxq = 5;
	map.shards[1].rxq = 2;
	map.shards[2].rxq = -1;
	map.rx_queues = 6;
	cr_assert_eq(keel__topo_rss_unserved(dflt, 12, &map, &count), 0);
	cr_assert_eq(count, 4, "queues 0, 1, 3 and 4");
	cr_assert_eq(keel__topo_rss_unserved(kept, 6, &map, &count), -1);
	cr_assert_eq(count, 0);
}

Test(core_topo, manyvfs_resolves_a_vf_to_its_numa_node)
{
	struct keel_topo *t = load_xml("16intel64-manyVFs.xml", 0);
	const struct keel_topo_nic *vf = keel_topo_nic_find(t, "0000:88:00.1");

	cr_assert_not_null(vf, "the VF 0000:88:00.1 was not found");
	cr_assert(!vf->netdev);
	cr_assert_eq(vf->numa, 1);
	cr_assert_eq(keel_topo_nic_find(t, "88:00.1"), vf, "short bus id");
	cr_assert_eq(keel_topo_nic_find(t, "eth0")->numa, 0);
	cr_assert_eq(compute(t, "88:00.1", 4, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map), 0,
		     "%s", err);
	for (unsigned i = 0; i < 4; i++) {
		cr_assert_eq(map.shards[i].numa, 1);
		cr_assert_eq(map.shards[i].rxq, -1, "a function without an interface has no queue");
	}
	keel_topo_destroy(t);
}

Test(core_topo, rxqs_on_a_pci_function_without_an_interface_is_refused)
{
	struct keel_topo *t = load_xml("16intel64-manyVFs.xml", 4);
	struct keel_map_req r;

	keel_map_req_init(&r);
	cr_assert_eq(keel_map_req_rxqs_parse(&r, "0000:88:00.1:0-1", err, sizeof(err)), 0, "%s",
		     err);
	memset(err, 0, sizeof(err));
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), -EINVAL,
		     "the queues were dropped (shard 0 rxq %d)", map.shards[0].rxq);
	cr_assert(strstr(err, "--rxqs") && strstr(err, "0000:88:00.1") &&
			  strstr(err, "no network interface"),
		  "%s", err);
	/* --queues gives no queues to such a function (the JSON showed 4 with their entries,
	 * where the report, the live path and the mapper see none) */
	for (unsigned i = 0; i < keel_topo_info_get(t)->nnics; i++) {
		const struct keel_topo_nic *n = &keel_topo_info_get(t)->nics[i];

		cr_assert(n->netdev || (n->nrxq <= 0 && !n->rxq), "%s: %d rx queues", n->name,
			  n->nrxq);
	}
	keel_topo_destroy(t);
}

Test(core_topo, synthetic_one_core_needs_oversubscribe_for_two_shards)
{
	struct keel_topo *t = load_syn("core:1 pu:1");
	struct keel_map_req r;

	cr_assert_eq(compute(t, NULL, 0, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map), 0, "%s",
		     err);
	cr_assert_eq(map.nshards, 1);
	cr_assert_eq(map.shards[0].cpu, 0);
	cr_assert_eq(compute(t, NULL, 2, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map),
		     -EINVAL);
	cr_assert(strstr(err, "--oversubscribe"), "%s", err);
	keel_map_req_init(&r);
	r.shards = 2;
	r.oversubscribe = true;
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(map.shards[0].cpu, 0);
	cr_assert_eq(map.shards[1].cpu, 0);
	/* --reserve 1 leaves nothing */
	cr_assert_eq(compute(t, NULL, 1, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 1, &map),
		     -EINVAL);
	cr_assert(strstr(err, "--reserve"), "%s", err);
	keel_topo_destroy(t);
}

Test(core_topo, synthetic_four_nodes_without_nics_map_every_physical_core)
{
	struct keel_topo *t = load_syn("numa:4 core:2 pu:2");
	const struct keel_topo_info *in = keel_topo_info_get(t);

	cr_assert_eq(in->nnuma, 4);
	cr_assert_eq(in->ncores, 8);
	cr_assert_eq(in->npus, 16);
	cr_assert_eq(in->nnics, 0);
	cr_assert_eq(compute(t, NULL, 0, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map), 0, "%s",
		     err);
	cr_assert_eq(map.nshards, 8);
	cr_assert_str_empty(map.iface);
	cr_assert_eq(map.rx_queues, 0);
	for (unsigned i = 0; i < 8; i++)
		cr_assert_eq(map.shards[i].rxq, -1);
	assert_distinct_cores(t, &map);
	cr_assert_eq(compute(t, "eth0", 0, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map),
		     -ENODEV);
	cr_assert(strstr(err, "it has: none"), "%s", err);
	keel_topo_destroy(t);
}

Test(core_topo, unknown_interface_names_the_ones_that_exist)
{
	struct keel_topo *t = load_xml("24em64t-2n6c2t-pci.xml", 0);

	cr_assert_eq(compute(t, "eth9", 2, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map),
		     -ENODEV);
	cr_assert(strstr(err, "eth9") && strstr(err, "eth0") && strstr(err, "eth2"), "%s", err);
	keel_topo_destroy(t);
}

Test(core_topo, rxqs_naming_a_missing_queue_is_refused)
{
	struct keel_topo *t = load_xml("24em64t-2n6c2t-pci.xml", 4);
	struct keel_map_req r;

	keel_map_req_init(&r);
	cr_assert_eq(keel_map_req_rxqs_parse(&r, "eth1:1-3", err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(r.iface, "eth1");
	cr_assert_eq(r.nrxqs, 3);
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(map.nshards, 3);
	cr_assert_eq(map.shards[0].rxq, 1);
	cr_assert_eq(map.shards[2].rxq, 3);
	cr_assert_eq(map.rx_queues, 4);

	cr_assert_eq(keel_map_req_rxqs_parse(&r, "eth1:2-5", err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "rx queue 4 of eth1 does not exist"), "%s", err);
	cr_assert_eq(keel_map_req_rxqs_parse(&r, "eth1", err, sizeof(err)), -EINVAL);
	cr_assert_eq(keel_map_req_rxqs_parse(&r, "eth1:x", err, sizeof(err)), -EINVAL);
	keel_topo_destroy(t);
}

Test(core_topo, rxqs_keep_the_given_order_and_refuse_duplicates)
{
	struct keel_topo *t = load_xml("24em64t-2n6c2t-pci.xml", 8);
	struct keel_map_req r;

	keel_map_req_init(&r);
	cr_assert_eq(keel_map_req_rxqs_parse(&r, "eth1:7,3,4-5", err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(r.nrxqs, 4);
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(map.shards[0].rxq, 7);
	cr_assert_eq(map.shards[1].rxq, 3);
	cr_assert_eq(map.shards[3].rxq, 5);
	cr_assert_eq(map.rx_queues, 8);
	cr_assert_eq(keel_map_req_rxqs_parse(&r, "eth1:1,0-2", err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "rx queue 1 is named twice"), "%s", err);
	cr_assert_eq(keel_map_req_rxqs_parse(&r, "eth1:3-1", err, sizeof(err)), -EINVAL);
	cr_assert_eq(keel_map_req_rxqs_parse(&r, "eth1:1,", err, sizeof(err)), -EINVAL);
	/* fewer queues than shards: an error, or shards without a queue when asked */
	cr_assert_eq(keel_map_req_rxqs_parse(&r, "eth1:2,6", err, sizeof(err)), 0, "%s", err);
	r.shards = 3;
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "--no-rxq-for-extra"), "%s", err);
	r.extra_without_rxq = true;
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(map.shards[1].rxq, 6);
	cr_assert_eq(map.shards[2].rxq, -1);
	cr_assert_eq(map.shards[2].irq_cpu, -1);
	/* more queues than shards: refused, not the extra queues silently left unserved */
	cr_assert_eq(keel_map_req_rxqs_parse(&r, "eth1:0-3", err, sizeof(err)), 0, "%s", err);
	r.shards = 2;
	r.extra_without_rxq = false;
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "--rxqs gives 4 queues for 2 shards"), "%s", err);
	keel_topo_destroy(t);
}

Test(core_topo, default_shards_beyond_the_queues_that_exist_are_refused)
{
	struct keel_topo *t = load_xml("24em64t-2n6c2t-pci.xml", 2);
	struct keel_map_req r;

	/* --queues 2 --shards 4: shards 2 and 3 would map queues 2 and 3, which do not exist */
	cr_assert_eq(compute(t, "eth0", 4, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map),
		     -EINVAL);
	cr_assert(strstr(err, "eth0 has at most 2 rx queues (--queues)") &&
			  strstr(err, "--shards 2") && strstr(err, "--no-rxq-for-extra"),
		  "%s", err);
	keel_map_req_init(&r);
	snprintf(r.iface, sizeof(r.iface), "eth0");
	r.shards = 4;
	r.extra_without_rxq = true;
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(map.nshards, 4);
	cr_assert_eq(map.shards[1].rxq, 1);
	cr_assert_eq(map.shards[2].rxq, -1);
	cr_assert_eq(map.shards[3].rxq, -1);
	cr_assert_eq(map.rx_queues, 2);
	/* the default is one shard per queue there is */
	cr_assert_eq(compute(t, "eth0", 0, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map), 0,
		     "%s", err);
	cr_assert_eq(map.nshards, 2);
	keel_topo_destroy(t);
}

Test(core_topo, default_stays_on_the_nics_node_whether_or_not_queues_are_known)
{
	/* eth0 on node 1 of 2 nodes x 8 cores x 2 threads; 16 queues would once have spread
	 * the default over all 16 physical cores, node 0 included. */
	unsigned queues[] = { 0, 16, 4 }, want[] = { 8, 8, 4 };

	for (unsigned k = 0; k < 3; k++) {
		struct keel_topo *t = load_xml("32em64t-2n8c2t-pci-normalio.xml", queues[k]);

		cr_assert_eq(
			compute(t, "eth0", 0, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map), 0,
			"%s", err);
		cr_assert_eq(map.nshards, want[k], "--queues %u: %u shards", queues[k],
			     map.nshards);
		for (unsigned i = 0; i < map.nshards; i++) {
			cr_assert_eq(map.shards[i].numa, 1, "--queues %u: shard %u on node %d",
				     queues[k], i, map.shards[i].numa);
			cr_assert_eq(pu_of(t, map.shards[i].cpu)->smt, 0);
		}
		assert_distinct_cores(t, &map);
		keel_topo_destroy(t);
	}
}

Test(core_topo, default_shard_count_is_clamped_to_keel_max_shards)
{
	struct keel_topo *t = load_syn("pack:4 numa:4 core:32 pu:2");

	cr_assert_eq(keel_topo_info_get(t)->ncores, 512);
	cr_assert_eq(compute(t, NULL, 0, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map), 0, "%s",
		     err);
	cr_assert_eq(map.nshards, KEEL_MAX_SHARDS);
	cr_assert(map.notes & KEEL_MAP_NOTE_CLAMPED);
	assert_distinct_cores(t, &map);
	/* an explicit count is not clamped silently */
	cr_assert_eq(compute(t, NULL, 100, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map), 0,
		     "%s", err);
	cr_assert_eq(map.notes & KEEL_MAP_NOTE_CLAMPED, 0);
	keel_topo_destroy(t);
}

Test(core_topo, cpuset_outside_the_machine_or_the_affinity_mask_is_refused)
{
	struct keel_topo *t = load_syn("core:4 pu:1");
	struct keel_topo *live;
	struct keel_map_req r;
	cpu_set_t one;

	keel_map_req_init(&r);
	cr_assert_eq(keel_cpulist_parse("2-5", &r.cpuset, err, sizeof(err)), 0);
	r.cpuset_given = true;
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "CPU 4 does not exist"), "%s", err);
	keel_cpulist_parse("2-3", &r.cpuset, err, sizeof(err));
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(map.nshards, 2);
	cr_assert_eq(map.shards[0].cpu, 2);
	keel_topo_destroy(t);

	/* Live: this worker process is confined to CPU 0; CPU 1 is then not allowed. */
	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		cr_skip_test("needs 2 CPUs to confine the affinity mask");
	CPU_ZERO(&one);
	CPU_SET(0, &one);
	cr_assert_eq(sched_setaffinity(0, sizeof(one), &one), 0);
	cr_assert_eq(keel_topo_load(NULL, &live, err, sizeof(err)), 0, "%s", err);
	keel_cpulist_parse("1", &r.cpuset, err, sizeof(err));
	cr_assert_eq(keel_map_compute(live, &r, &map, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "CPU 1 is outside this process's affinity mask") &&
			  strstr(err, "the allowed CPUs are 0:") && !strstr(err, "taskset -p"),
		  "%s", err);
	keel_topo_destroy(live);
}

Test(core_topo, irq_names_resolve_to_rx_queues)
{
	unsigned q = 99;

	cr_assert_eq(keel__topo_irq_rxq("virtio2-input.0", NULL, &q), 1);
	cr_assert_eq(q, 0);
	cr_assert_eq(keel__topo_irq_rxq("eth0-TxRx-7", NULL, &q), 1);
	cr_assert_eq(q, 7);
	cr_assert_eq(keel__topo_irq_rxq("mlx5_comp3@pci:0000:81:00.0", NULL, &q), 1);
	cr_assert_eq(q, 3);
	cr_assert_eq(keel__topo_irq_rxq("virtio2-output.0", NULL, &q), 0);
	cr_assert_eq(keel__topo_irq_rxq("virtio2-config", NULL, &q), 0);
	cr_assert_eq(keel__topo_irq_rxq("i40e-eth0-tx-2", NULL, &q), 0);
	cr_assert_eq(keel__topo_irq_rxq("mlx5_async0@pci:0000:81:00.0", NULL, &q), 0);
	/* An interface's own vector (ixgbe's "other"), idpf's mailbox, gve's block numbers:
	 * no rx queue. An interface named uplink0 does not make its queues link vectors. */
	cr_assert_eq(keel__topo_irq_rxq("enp3s0f1", NULL, &q), 0);
	cr_assert_eq(keel__topo_irq_rxq("eno1", NULL, &q), 0);
	cr_assert_eq(keel__topo_irq_rxq("idpf-Mailbox-0", NULL, &q), 0);
	cr_assert_eq(keel__topo_irq_rxq("gve-ntfy-blk0", NULL, &q), 0);
	cr_assert_eq(keel__topo_irq_rxq("ice-uplink0-TxRx-3", NULL, &q), 1);
	cr_assert_eq(q, 3);
	cr_assert_eq(keel__topo_irq_rxq("ice-eth0-link", NULL, &q), 0);
	/* The interface's own name is not read: eth-1's "other" vector is no queue 1, link0's
	 * and ctx0's queues are queues, and a name that is the interface's is its own vector.
	 * Read whole, eth-1 took queue 1, link0 lost every queue, ctx0's were tx ("ctx"). */
	cr_assert_eq(keel__topo_irq_rxq("eth-1", "eth-1", &q), 0);
	cr_assert_eq(keel__topo_irq_rxq("eth-1-TxRx-1", "eth-1", &q), 1);
	cr_assert_eq(q, 1);
	cr_assert_eq(keel__topo_irq_rxq("lan_2", "lan_2", &q), 0);
	cr_assert_eq(keel__topo_irq_rxq("link0-TxRx-2", "link0", &q), 1);
	cr_assert_eq(q, 2);
	cr_assert_eq(keel__topo_irq_rxq("ctx0-1", "ctx0", &q), 1);
	cr_assert_eq(q, 1);
	cr_assert_eq(keel__topo_irq_rxq("i40e-rx0-tx-2", "rx0", &q), 0, "tx-only, named rx0");
	cr_assert_eq(keel__topo_irq_rxq("ice-link0-link", "link0", &q), 0);
	/* Words, not substrings: TxRx is combined, a lone tx word is tx-only. */
	cr_assert_eq(keel__topo_irq_rxq("ena-Tx-Rx-4", NULL, &q), 1);
	cr_assert_eq(q, 4);
	cr_assert_eq(keel__topo_irq_rxq("eth0-tx0-3", "eth0", &q), 0);
}

/* mkdir -p for the test's tree. */
static void
mkdirs(const char *path)
{
	char buf[256];

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *p = buf + 1; *p; p++)
		if (*p == '/') {
			*p = 0;
			mkdir(buf, 0755);
			*p = '/';
		}
	cr_assert(mkdir(buf, 0755) == 0 || errno == EEXIST, "mkdir %s: %s", buf, strerror(errno));
}

/* An empty file @dir/@name. */
static void
touch_in(const char *dir, int name)
{
	char path[300];
	FILE *f;

	cr_assert_lt(snprintf(path, sizeof(path), "%s/%d", dir, name), (int)sizeof(path));
	f = fopen(path, "w");
	cr_assert(f, "%s: %s", path, strerror(errno));
	fclose(f);
}

/* A NIC's MSI IRQs are read whole, however many: a large one has thousands (the list was
 * cut at 512 in directory order, so some rx queues' IRQs were not found), in ascending
 * order (it was the directory's, so which IRQ won a queue varied), and a device
 * without its own (virtio-net) takes its parent's, but a PCI function does not. */
Test(core_topo, msi_irqs_are_read_whole_in_order_and_from_the_parent_when_none)
{
	char root[] = "/tmp/keel-msi-XXXXXX", dir[300], dev[256];
	int *irqs = NULL, n;
	bool seen[1500] = { false };

	cr_assert(mkdtemp(root));
	snprintf(dev, sizeof(dev), "%s/pci/nic", root);
	snprintf(dir, sizeof(dir), "%s/msi_irqs", dev);
	mkdirs(dir);
	for (int i = 0; i < 1500; i++)
		touch_in(dir, 100 + i);
	n = keel__topo_msi_irqs(dev, &irqs);
	cr_assert_eq(n, 1500);
	for (int i = 0; i < n; i++) {
		cr_assert(irqs[i] >= 100 && irqs[i] < 1600 && !seen[irqs[i] - 100], "irq %d",
			  irqs[i]);
		seen[irqs[i] - 100] = true;
		/* Ascending, whatever the directory's order: which of two IRQs that name one
		 * queue is taken must not change from run to run. */
		cr_assert(i == 0 || irqs[i - 1] < irqs[i], "irq %d after %d", irqs[i], irqs[i - 1]);
	}
	free(irqs);

	/* A virtio device under the PCI device: no msi_irqs of its own. */
	snprintf(dev, sizeof(dev), "%s/pci/nic/virtio3", root);
	mkdirs(dev);
	n = keel__topo_msi_irqs(dev, &irqs);
	cr_assert_eq(n, 1500, "the parent's IRQs were not taken");
	free(irqs);

	snprintf(dev, sizeof(dev), "%s/none", root);
	cr_assert_eq(keel__topo_msi_irqs(dev, &irqs), 0);
	cr_assert_null(irqs);

	/* A PCI function on a legacy INTx line, under a PCIe port with MSI IRQs of its own
	 * (AER, PME): those are not the NIC's. They were taken as its IRQs. */
	snprintf(dev, sizeof(dev), "%s/pci/nic/intx", root);
	mkdirs(dev);
	snprintf(dir, sizeof(dir), "%s/config", dev);
	fclose(fopen(dir, "w"));
	cr_assert_eq(keel__topo_msi_irqs(dev, &irqs), 0, "a PCI function took its port's IRQs");
	cr_assert_null(irqs);
	rm_dir(root);
}

Test(core_topo, irq_name_with_a_queue_number_beyond_65535_is_not_an_rx_queue)
{
	unsigned q = 99;

	/* (int)4294967295 is -1: it passed the "q >= nrxq" bound and indexed rxq[] far out */
	cr_assert_eq(keel__topo_irq_rxq("eth0-TxRx-4294967295", NULL, &q), 0, "q %u", q);
	cr_assert_eq(keel__topo_irq_rxq("eth0-TxRx-2147483648", NULL, &q), 0, "q %u", q);
	cr_assert_eq(keel__topo_irq_rxq("eth0-TxRx-99999999999999999999999", NULL, &q), 0, "q %u",
		     q);
	cr_assert_eq(keel__topo_irq_rxq("eth0-TxRx-65536", NULL, &q), 0, "q %u", q);
	cr_assert_eq(keel__topo_irq_rxq("eth0-TxRx-65535", NULL, &q), 1);
	cr_assert_eq(q, 65535);
	cr_assert_eq(keel__topo_irq_rxq("eth0-TxRx-0000012", NULL, &q), 1);
	cr_assert_eq(q, 12);
}

Test(core_topo, irq_names_survive_proc_interrupts_lines_longer_than_4k)
{
	/* 512 CPUs: each line is ~5.7 KB of counts before the name. */
	char *doc = NULL, names[3][64] = { "", "", "" };
	size_t len = 0;
	int irqs[3] = { 38, 40, 99 };
	FILE *f = open_memstream(&doc, &len);

	cr_assert_not_null(f);
	fputs("     ", f);
	for (int c = 0; c < 512; c++)
		fprintf(f, " CPU%-7d", c);
	fputc('\n', f);
	for (int irq = 37; irq <= 40; irq++) {
		fprintf(f, "%4d:", irq);
		for (int c = 0; c < 512; c++)
			fprintf(f, " %10d", c * 1000 + irq);
		fprintf(f, "  PCI-MSIX-0000:00:03.0 %d-edge      virtio2-input.%d\n", irq,
			irq - 37);
	}
	fclose(f);
	cr_assert_gt(len, 4 * 5000);
	f = fmemopen(doc, len, "r");
	cr_assert_eq(keel__topo_irq_names_parse(f, irqs, 3, names), 2);
	fclose(f);
	cr_assert_str_eq(names[0], "virtio2-input.1");
	cr_assert_str_eq(names[1], "virtio2-input.3");
	cr_assert_str_empty(names[2]);
	free(doc);
}

/* An online list or IRQ affinity on a machine with 1280 CPUs: CPUs beyond keel's set are
 * reported as such (-ERANGE naming the limit, the others kept), not as unreadable. */
Test(core_topo, cpulist_beyond_keel_max_cpus_is_reported_as_beyond_not_unreadable)
{
	char path[128];
	struct keel_cpuset s;
	FILE *f;

	snprintf(path, sizeof(path), "/tmp/keel-test-cpulist-%d", (int)getpid());
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs("0-1279\n", f);
	fclose(f);
	cr_assert_eq(keel__topo_cpulist_read(path, &s), -ERANGE);
	unlink(path);
	cr_assert(keel_cpuset_has(&s, 0) && keel_cpuset_has(&s, 1023));
	cr_assert_eq(keel_cpulist_parse("0-1279", &s, err, sizeof(err)), -ERANGE);
	cr_assert(strstr(err, "1024") && strstr(err, "KEEL_MAX_CPUS"), "%s", err);
	cr_assert(keel_cpuset_has(&s, 5) && keel_cpuset_has(&s, 1023));
	cr_assert_eq(keel_cpulist_parse("4,99999999999999999999999", &s, err, sizeof(err)),
		     -ERANGE);
	cr_assert(keel_cpuset_has(&s, 4));
	/* a malformed list is still that */
	cr_assert_eq(keel_cpulist_parse("0-3,x", &s, err, sizeof(err)), -EINVAL);
	cr_assert_eq(keel_cpulist_parse("2000-1", &s, err, sizeof(err)), -EINVAL);
	cr_assert_eq(keel_cpulist_parse("0-3,", &s, err, sizeof(err)), -EINVAL, "a trailing comma");
}

Test(core_topo, cpulist_format_round_trips)
{
	struct keel_cpuset s, back;
	char buf[128];

	keel_cpulist_parse("0-3,8,10-11,1023", &s, err, sizeof(err));
	cr_assert_str_eq(keel_topo_cpulist_format(&s, buf, sizeof(buf)), "0-3,8,10-11,1023");
	keel_cpulist_parse(buf, &back, err, sizeof(err));
	cr_assert_eq(memcmp(&s, &back, sizeof(s)), 0);
}

Test(core_topo, cpulist_format_truncates_at_an_element_boundary)
{
	struct keel_cpuset s;
	char buf[16];

	keel_cpulist_parse("0,2,4,382", &s, err, sizeof(err));
	cr_assert_str_eq(keel_topo_cpulist_format(&s, buf, 9), "0,2,...");
	cr_assert_str_eq(keel_topo_cpulist_format(&s, buf, 10), "0,2,4,382");
	keel_cpulist_parse("0,2,4,382,500", &s, err, sizeof(err));
	cr_assert_str_eq(keel_topo_cpulist_format(&s, buf, 13), "0,2,4,...");
	cr_assert_str_eq(keel_topo_cpulist_format(&s, buf, 4), "...");
	keel_cpulist_parse("0-1000", &s, err, sizeof(err));
	cr_assert_str_eq(keel_topo_cpulist_format(&s, buf, 4), "...");
	cr_assert_str_eq(keel_topo_cpulist_format(&s, buf, 7), "0-1000");
}

/* ---- map file ---- */

static struct keel_map back;

Test(core_topo, map_file_round_trips)
{
	struct keel_topo *t = load_xml("32em64t-2n8c2t-pci-normalio.xml", 16);
	char *buf = NULL;
	size_t len = 0;
	FILE *f;

	cr_assert_eq(compute(t, "eth0", 12, KEEL_MAP_SMT_ALLOW, KEEL_MAP_NUMA_SPREAD, 1, &map), 0,
		     "%s", err);
	map.hds = true;
	f = open_memstream(&buf, &len);
	cr_assert_eq(keel_map_write(&map, f), 0);
	fclose(f);
	cr_assert_eq(keel_map_parse(buf, len, &back, err, sizeof(err)), 0, "%s\n%s", err, buf);
	cr_assert_eq(memcmp(&map, &back, sizeof(map)), 0, "%s", buf);
	free(buf);
	keel_topo_destroy(t);
}

/* The map is written to a new file beside it, then renamed: a name someone made first (a
 * symlink planted where keel-topo --plan --apply, as root, writes) is refused, and what
 * it points to is left alone. */
Test(core_topo, map_save_never_writes_through_a_planted_name)
{
	struct keel_topo *t = load_xml("32em64t-2n8c2t-pci-normalio.xml", 16);
	char dir[] = "/tmp/keel-mapsave-XXXXXX", path[256], tmp[300], victim[256], buf[16];
	FILE *f;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/map.json", dir);
	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
	snprintf(victim, sizeof(victim), "%s/victim", dir);
	f = fopen(victim, "w");
	cr_assert_not_null(f);
	fputs("precious", f);
	fclose(f);
	cr_assert_eq(symlink(victim, tmp), 0);
	cr_assert_eq(compute(t, "eth0", 4, KEEL_MAP_SMT_ALLOW, KEEL_MAP_NUMA_SPREAD, 1, &map), 0,
		     "%s", err);
	cr_assert_eq(keel_map_save(&map, path, err, sizeof(err)), -EEXIST, "%s", err);
	cr_assert(strstr(err, "in the way"), "%s", err);
	f = fopen(victim, "r");
	cr_assert_not_null(f);
	cr_assert_eq(fread(buf, 1, sizeof(buf), f), 8);
	fclose(f);
	cr_assert_eq(memcmp(buf, "precious", 8), 0, "the symlink's target was written");
	cr_assert_eq(access(path, F_OK), -1, "a map was saved");
	/* With the name free, the map is saved, and reads back the same. */
	cr_assert_eq(unlink(tmp), 0);
	cr_assert_eq(keel_map_save(&map, path, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(keel_map_load(path, &back, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(memcmp(&map, &back, sizeof(map)), 0);
	unlink(path);
	unlink(victim);
	rmdir(dir);
	keel_topo_destroy(t);
}

static void
expect_reject(const char *doc, const char *why)
{
	cr_assert_eq(keel_map_parse(doc, strlen(doc), &back, err, sizeof(err)), -EINVAL,
		     "accepted: %s", doc);
	cr_assert(strstr(err, why), "for %s: got '%s', expected '%s'", doc, err, why);
}

#define SHARD0 "\"shards\": [{\"shard\": 0, \"cpu\": 0, \"rxq\": 0}]"

Test(core_topo, map_parser_is_strict)
{
	const char *ok = "{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1, " SHARD0 "}";

	cr_assert_eq(keel_map_parse(ok, strlen(ok), &back, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(back.nshards, 1);
	cr_assert_eq(back.shards[0].core, -1);
	expect_reject("{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1, " SHARD0
		      ", \"colour\": 1}",
		      "unknown member \"colour\"");
	expect_reject(
		"{\"keel_map\": 1, \"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1, " SHARD0
		"}",
		"duplicate member \"keel_map\" (remove one)");
	expect_reject("{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1, \"shards\": "
		      "[{\"shard\": 0, \"cpu\": 0, \"cpu\": 1, \"rxq\": 0}]}",
		      "duplicate member \"cpu\" (remove one) at line 1");
	expect_reject("{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1, " SHARD0 "} x",
		      "data after the document");
	/* The fixes named: an editor's byte-order mark, and the rx_queues a queue needs. */
	expect_reject("\xef\xbb\xbf{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1, " SHARD0
		      "}",
		      "byte-order mark starts the file: save it without one");
	expect_reject("{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1, \"shards\": "
		      "[{\"shard\": 0, \"cpu\": 0, \"rxq\": 3}]}",
		      "shard 0's rxq 3 is not below \"rx_queues\" 1: it must be 4: the highest "
		      "rxq + 1");
	/* The value advised is the one the parser takes: the highest rxq + 1, not the first
	 * shard's (it advised "at least 4" here, and the interface's count, which any value
	 * above 6 is refused for). */
	{
		static const char fmt[] = "{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": %u, "
					  "\"shards\": [{\"shard\": 0, \"cpu\": 0, \"rxq\": 3}, "
					  "{\"shard\": 1, \"cpu\": 1, \"rxq\": 5}]}";
		char doc[256];

		snprintf(doc, sizeof(doc), fmt, 1u);
		expect_reject(doc, "shard 0's rxq 3 is not below \"rx_queues\" 1: it must be 6: "
				   "the highest rxq + 1");
		snprintf(doc, sizeof(doc), fmt, 6u);
		cr_assert_eq(keel_map_parse(doc, strlen(doc), &back, err, sizeof(err)), 0,
			     "the advised rx_queues 6 is refused: %s", err);
		cr_assert_eq(back.rx_queues, 6);
	}
	/* Many members: refused at the 65th, not compared with each other (90,000 in a
	 * 1 MiB file took 19 s to refuse). */
	{
		size_t cap = 2u << 20, o = 0;
		char *big = malloc(cap);

		cr_assert_not_null(big);
		o += (size_t)snprintf(big + o, cap - o, "{");
		for (unsigned i = 0; i < 90000; i++)
			o += (size_t)snprintf(big + o, cap - o, "%s\"m%u\": 0", i ? "," : "", i);
		o += (size_t)snprintf(big + o, cap - o, "}");
		cr_assert_eq(keel_map_parse(big, o, &back, err, sizeof(err)), -EINVAL);
		cr_assert(strstr(err, "more than 64 members"), "%s", err);
		free(big);
	}
	expect_reject("{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1.5, " SHARD0 "}",
		      "only integers");
	expect_reject("{\"keel_map\": 2, \"iface\": \"lo\", \"rx_queues\": 1, " SHARD0 "}",
		      "\"keel_map\" must be");
	expect_reject("{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1}",
		      "missing member \"shards\"");
	expect_reject("{\"keel_map\": 1, \"iface\": 7, \"rx_queues\": 1, " SHARD0 "}",
		      "\"iface\" must be");
	/* too long: said so (it said "must be a non-empty string or null", as for a number) */
	expect_reject("{\"keel_map\": 1, \"iface\": "
		      "\"abcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcdefghijabcd\", "
		      "\"rx_queues\": 1, " SHARD0 "}",
		      "\"iface\" must be at most 63 characters long (it has 64)");
	expect_reject("{\"keel_map\": 1, \"iface\": \"lo\", \"pci\": \"0000:81:00.0000000\", "
		      "\"rx_queues\": 1, " SHARD0 "}",
		      "\"pci\" must be at most 15 characters long");
	expect_reject("{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 0, " SHARD0 "}",
		      "below \"rx_queues\"");
	expect_reject("{\"keel_map\": 1, \"iface\": null, \"rx_queues\": 1, " SHARD0 "}",
		      "\"iface\" is null");
	expect_reject("{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1, \"shards\": "
		      "[{\"shard\": 1, \"cpu\": 0, \"rxq\": 0}]}",
		      "\"shard\" must be");
	expect_reject("{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1, \"shards\": "
		      "[{\"shard\": 0, \"cpu\": 1024, \"rxq\": 0}]}",
		      "\"cpu\" must be");
	expect_reject("{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1, \"shards\": []}",
		      "1 to 256 shards");
	expect_reject("{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1, \"shards\": [",
		      "unexpected end of file");
	expect_reject("{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1, " SHARD0,
		      "unexpected end of file");
	expect_reject("{\"keel_map\": 1, \"iface\": \"l", "unexpected end of file");
	expect_reject("{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 2, \"shards\": "
		      "[{\"shard\": 0, \"cpu\": 0, \"rxq\": 1}, "
		      "{\"shard\": 1, \"cpu\": 0, \"rxq\": 1}]}",
		      "shards 0 and 1 both own rxq 1");
	expect_reject("{\"keel_map\": 1, \"iface\": \"l\\qo\", \"rx_queues\": 1, " SHARD0 "}",
		      "bad escape");
	expect_reject("[1, 2]", "must be an object");
	expect_reject("", "unexpected end of file");
	/* rx_queues is the highest rxq + 1: more asks the NIC for queues no shard uses. */
	expect_reject("{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 8, " SHARD0 "}",
		      "\"rx_queues\" is 8, but the highest rxq is 0: it must be 1");
	expect_reject("{\"keel_map\": 1, \"iface\": null, \"rx_queues\": 9, \"shards\": "
		      "[{\"shard\": 0, \"cpu\": 0, \"rxq\": null}]}",
		      "it must be 0");
}

/* Errors name the line they are on: a string left open at the end of line 3, a shard's
 * queue (line 5) past rx_queues or without an interface, a NUL byte on line 2. */
Test(core_topo, map_parser_errors_name_their_line)
{
	expect_reject("{\n \"keel_map\": 1,\n \"iface\": \"eth0,\n \"rx_queues\": 1\n}",
		      "at line 3");
	expect_reject("{\"keel_map\": 1,\n \"iface\": \"lo\",\n \"rx_queues\": 1,\n \"shards\": [\n"
		      "  {\"shard\": 0, \"cpu\": 0, \"rxq\": 3}\n]}",
		      "at line 5");
	expect_reject("{\"keel_map\": 1,\n \"iface\": null,\n \"rx_queues\": 1,\n \"shards\": [\n"
		      "  {\"shard\": 0, \"cpu\": 0, \"rxq\": 0}\n]}",
		      "at line 5");
	{
		const char doc[] = "{\"keel_map\": 1,\n \"iface\"\0: \"lo\"}";
		cr_assert_eq(keel_map_parse(doc, sizeof(doc) - 1, &back, err, sizeof(err)),
			     -EINVAL);
		cr_assert(strstr(err, "NUL byte") && strstr(err, "at line 2"), "%s", err);
	}
}

/* A document with more array members than the parser keeps (valid JSON, well under the
 * file size cap): refused, and the message is written and names the limit. */
Test(core_topo, map_parser_too_many_members_fills_the_message)
{
	const char *head = "{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1, \"shards\": [";
	size_t n = 100001, len = strlen(head) + 2 * n + 2;
	char *doc = malloc(len + 1), *p;
	char msg[400];

	cr_assert_not_null(doc);
	p = doc + sprintf(doc, "%s", head);
	for (size_t i = 0; i < n; i++)
		p += sprintf(p, "%s0", i ? "," : "");
	p += sprintf(p, "]}");
	cr_assert_lt((size_t)(p - doc), (size_t)1 << 20);
	memset(msg, 'X', sizeof(msg));
	cr_assert_lt(keel_map_parse(doc, (size_t)(p - doc), &back, msg, sizeof(msg)), 0);
	cr_assert_not_null(memchr(msg, 0, sizeof(msg)), "the message was not written");
	cr_assert(strstr(msg, "100000"), "%s", msg);
	free(doc);
}

/* A map on @iface (lo is present in every network namespace) on @cpus. */
static void
write_map(const char *path, const char *iface, unsigned rx_queues, const int *cpus, unsigned n)
{
	FILE *f = fopen(path, "w");

	cr_assert_not_null(f);
	fprintf(f, "{\"keel_map\": 1, \"iface\": \"%s\", \"rx_queues\": %u, \"shards\": [", iface,
		rx_queues);
	/* shard i owns queue i while there are queues (a queue has one owner) */
	for (unsigned i = 0; i < n; i++) {
		fprintf(f, "%s{\"shard\": %u, \"cpu\": %d, \"rxq\": ", i ? ", " : "", i, cpus[i]);
		if (i < rx_queues)
			fprintf(f, "%u}", i);
		else
			fprintf(f, "null}");
	}
	fprintf(f, "]}\n");
	fclose(f);
}

static void
tmp_path(char *buf, size_t len, const char *tag)
{
	snprintf(buf, len, "/tmp/keel-test-map-%d-%s.json", (int)getpid(), tag);
}

Test(core_topo, validate_refuses_a_stale_map_with_the_reason)
{
	char path[128];
	int cpu0 = 0, cpu_gone = KEEL_MAX_CPUS - 1;

	tmp_path(path, sizeof(path), "stale");
	write_map(path, "lo", 1, &cpu0, 1);
	cr_assert_eq(keel_map_load(path, &back, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), 0, "%s", err);

	write_map(path, "nosuchif0", 1, &cpu0, 1);
	keel_map_load(path, &back, err, sizeof(err));
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "nosuchif0 does not exist") && strstr(err, "keel-topo --plan"), "%s",
		  err);

	write_map(path, "lo", 4, &cpu0, 1);
	keel_map_load(path, &back, err, sizeof(err));
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "ethtool -L lo combined 4"), "%s", err);

	write_map(path, "lo", 1, &cpu_gone, 1);
	keel_map_load(path, &back, err, sizeof(err));
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "does not exist or is offline"), "%s", err);
	unlink(path);
	cr_assert_eq(keel_map_load(path, &back, err, sizeof(err)), -ENOENT);
	cr_assert(strstr(err, "keel-topo --plan"), "%s", err);
}

/* Log lines of the runtime, for the tests that read the reason of a refusal. */
static char logged[2048];

static void
log_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	size_t n = strlen(logged);

	(void)level, (void)module, (void)shard, (void)arg;
	snprintf(logged + n, sizeof(logged) - n, "%s\n", msg);
}

/* A map request for @iface (the default shards, SMT avoided, NUMA local) on the CPUs @cpus
 * (--cpuset), or NULL: the allowed ones. */
static void
req_on_cpus(struct keel_map_req *r, const char *iface, const char *cpus)
{
	keel_map_req_init(r);
	snprintf(r->iface, sizeof(r->iface), "%s", iface);
	if (!cpus)
		return;
	cr_assert_eq(keel_cpulist_parse(cpus, &r->cpuset, err, sizeof(err)), 0, "%s", err);
	r->cpuset_given = true;
}

/* --cpuset with a CPU a topology file does not allow, offline: the file's CPU 3 was offline
 * when it was written (its complete cpuset only) and was called missing ("does not exist");
 * online but outside the file's allowed set (its writer's cgroup), the message blamed this
 * process's affinity mask and asked for a wider one, which no mask of this process changes.
 * Each now names the real cause and the fix: the file, written again. */
Test(core_topo, a_cpu_a_topology_file_leaves_out_is_said_as_the_files_not_the_mask)
{
	struct keel_topo *t = load_gen("1 1 4 1 --offline-cpus 3", 0);
	struct keel_map_req r;

	req_on_cpus(&r, "eth0", "2-3");
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "CPU 3 was offline when xml ") &&
			  strstr(err, "pick from its allowed CPUs 0-2") &&
			  strstr(err, "/sys/devices/system/cpu/cpu3/online") &&
			  !strstr(err, "does not exist") && !strstr(err, "affinity mask"),
		  "%s", err);
	keel_topo_destroy(t);

	t = load_gen("1 1 4 1 --allowed-cpus 0-2", 0);
	req_on_cpus(&r, "eth0", "2-3");
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "CPU 3 is outside the allowed CPUs of xml ") &&
			  strstr(err, "the process that wrote it") &&
			  strstr(err, "write the file again") && !strstr(err, "this process"),
		  "%s", err);
	keel_topo_destroy(t);
}

/* keel_map_compute of @r into map, which must succeed; what it logs in logged (emptied
 * first). */
static void
compute_logged(const struct keel_topo *t, const struct keel_map_req *r)
{
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_map_compute(t, r, &map, err, sizeof(err)), 0, "%s", err);
	keel_log_set_sink(NULL, NULL);
}

static void
write_map_rxqs(const char *path, const char *iface, unsigned rx_queues, const int *cpus,
	       const int *rxqs, unsigned n)
{
	FILE *f = fopen(path, "w");

	cr_assert_not_null(f);
	fprintf(f, "{\"keel_map\": 1, \"iface\": \"%s\", \"rx_queues\": %u, \"shards\": [", iface,
		rx_queues);
	for (unsigned i = 0; i < n; i++) {
		fprintf(f, "%s{\"shard\": %u, \"cpu\": %d, \"rxq\": ", i ? ", " : "", i, cpus[i]);
		if (rxqs[i] < 0)
			fprintf(f, "null}");
		else
			fprintf(f, "%d}", rxqs[i]);
	}
	fprintf(f, "]}\n");
	fclose(f);
}

/* --iface without --map: shard i takes rx queue i on the i-th allowed CPU, which need not
 * be where the interface has that queue or its IRQ (keel-topo --plan pins the IRQs for its
 * own map, which places shards by locality). The runtime checks that pairing as keel-topo
 * --check checks a map, and warns with the fix; it still starts. Here the interface does
 * not exist, which every machine can show (a NIC's IRQ lines depend on the machine). */
Test(core_topo, runtime_with_iface_and_no_map_warns_where_its_queues_do_not_line_up)
{
	struct keel_runtime *rt;
	struct keel_opts o = test_opts(1);

	snprintf(o.iface, sizeof(o.iface), "nosuchif0");
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "--iface nosuchif0 without --map") &&
			  strstr(logged, "interface nosuchif0 does not exist here") &&
			  strstr(logged, "keel-topo --plan --iface nosuchif0"),
		  "%s", logged);
	keel_runtime_destroy(rt);
}

Test(core_topo, runtime_takes_shards_and_cpus_from_the_map)
{
	char path[128];
	int cpus[2];
	unsigned n = 0;
	cpu_set_t mask;
	struct keel_runtime *rt;
	struct keel_opts o = test_opts(0);

	cr_assert_eq(sched_getaffinity(0, sizeof(mask), &mask), 0);
	/* The allowed CPUs in reverse order: the map, not the mask, decides. */
	for (int c = CPU_SETSIZE - 1; c >= 0 && n < 2; c--)
		if (CPU_ISSET(c, &mask))
			cpus[n++] = c;
	tmp_path(path, sizeof(path), "rt");
	write_map(path, "lo", 1, cpus, n);
	o.map_path = path;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_shard_count(rt), n);
	for (unsigned i = 0; i < n; i++)
		cr_assert_eq(keel_runtime_shard_cpu(rt, i), cpus[i]);
	keel_runtime_destroy(rt);

	/* A program's own default count (keel-bench sets 2) yields to the map... */
	o.shards = n + 3;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_shard_count(rt), n);
	keel_runtime_destroy(rt);
	/* ...a --shards the user gave that disagrees with it is refused, with the reason */
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	o.shards_given = true;
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	cr_assert(strstr(logged, "but the map has") && strstr(logged, "drop --shards"), "%s",
		  logged);
	o.shards = 0;
	o.shards_given = false;
	/* a stale map is refused, and the log line says why */
	logged[0] = 0;
	write_map(path, "nosuchif0", 1, cpus, n);
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	cr_assert(strstr(logged, "interface nosuchif0 does not exist here") &&
			  strstr(logged, "run keel-topo --plan again"),
		  "%s", logged);
	/* a VF (PCI bus id) map whose function is gone */
	logged[0] = 0;
	write_map(path, "0000:ff:1f.7", 0, cpus, n);
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	cr_assert(strstr(logged, "PCI function 0000:ff:1f.7 does not exist here"), "%s", logged);
	keel_log_set_sink(NULL, NULL);
	unlink(path);
}

static atomic_int seen_rxq[2];

static void
record_rxq(void *app)
{
	struct keel_shard *sh = keel_this_shard();

	(void)app;
	atomic_store(&seen_rxq[keel_shard_id(sh)], keel_shard_rxq(sh) + 100);
	keel_stop(0);
}

Test(core_topo, runtime_gives_each_shard_its_rxq_from_the_map)
{
	char path[128];
	int cpus[2] = { 0, 0 }, rxqs[2] = { 0, -1 };
	struct keel_runtime *rt;
	struct keel_opts o = test_opts(0);

	tmp_path(path, sizeof(path), "rxq");
	write_map_rxqs(path, "lo", 1, cpus, rxqs, 2);
	o.map_path = path;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_str_eq(keel_runtime_map_iface(rt), "lo");
	cr_assert_eq(keel_runtime_start(rt, record_rxq, NULL), 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	cr_assert_eq(atomic_load(&seen_rxq[0]), 100, "shard 0 owns rxq 0");
	cr_assert_eq(atomic_load(&seen_rxq[1]), 99, "shard 1 has no queue: -1");
	unlink(path);
	/* without --map: no interface, no queue */
	o.map_path = NULL;
	o.shards = 1;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_null(keel_runtime_map_iface(rt));
	keel_runtime_destroy(rt);
}

/* ---- the affinity mask on a machine with more CPUs than a cpu_set_t holds ---- */

/* A stand-in for sched_getaffinity on a machine with 2048 possible CPUs: like the kernel, it
 * refuses a mask shorter than that (EINVAL, as for a plain cpu_set_t); the process may run
 * on fake_cpus. With fake_errno set it fails with that instead. */
static int fake_cpus[4], nfake, fake_errno;

static int
fake_affinity(pid_t pid, size_t size, cpu_set_t *mask)
{
	(void)pid;
	if (fake_errno || size * 8 < 2048) {
		errno = fake_errno ? fake_errno : EINVAL;
		return -1;
	}
	memset(mask, 0, size);
	for (int i = 0; i < nfake; i++)
		CPU_SET_S((unsigned)fake_cpus[i], size, mask);
	return 0;
}

Test(core_topo, runtime_reads_an_affinity_mask_wider_than_cpu_set_t)
{
	struct keel_runtime *rt;
	struct keel_opts o = test_opts(0);

	keel__sched_getaffinity = fake_affinity;
	fake_cpus[0] = 0;
	fake_cpus[1] = 1500;
	nfake = 2;
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0, "%s", logged);
	cr_assert_eq(keel_runtime_shard_count(rt), 1);
	cr_assert_eq(keel_runtime_shard_cpu(rt, 0), 0);
	keel_runtime_destroy(rt);
	/* CPU 1500 is allowed but beyond keel's limit: said, not silently dropped */
	cr_assert(strstr(logged, "1024") && strstr(logged, "KEEL_MAX_CPUS"), "%s", logged);
	keel_log_set_sink(NULL, NULL);
}

Test(core_topo, runtime_refuses_when_every_allowed_cpu_is_beyond_keel_max_cpus)
{
	struct keel_runtime *rt;
	struct keel_opts o = test_opts(0);

	keel__sched_getaffinity = fake_affinity;
	fake_cpus[0] = 1500;
	nfake = 1;
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_lt(keel_runtime_create(&o, &rt), 0);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "1024") && strstr(logged, "KEEL_MAX_CPUS") &&
			  strstr(logged, "taskset"),
		  "%s", logged);
}

Test(core_topo, runtime_names_why_the_affinity_mask_cannot_be_read)
{
	struct keel_runtime *rt;
	struct keel_opts o = test_opts(0);

	keel__sched_getaffinity = fake_affinity;
	fake_errno = EPERM;
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), -EPERM);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "sched_getaffinity") && strstr(logged, strerror(EPERM)), "%s",
		  logged);
}

Test(core_topo, topology_reads_a_wide_affinity_mask_and_warns_when_it_cannot)
{
	struct keel_topo *t;
	const struct keel_topo_info *in;

	keel__sched_getaffinity = fake_affinity;
	fake_cpus[0] = 0;
	fake_cpus[1] = 1500;
	nfake = 2;
	cr_assert_eq(keel_topo_load(NULL, &t, err, sizeof(err)), 0, "%s", err);
	in = keel_topo_info_get(t);
	cr_assert(keel_cpuset_has(&in->allowed, 0));
	for (unsigned c = 1; c < KEEL_MAX_CPUS; c++)
		cr_assert(!keel_cpuset_has(&in->allowed, c), "CPU %u is not in the mask", c);
	keel_topo_destroy(t);
	/* a map's CPU outside that mask is stale (this machine has CPU 1 online) */
	memset(&back, 0, sizeof(back));
	back.version = KEEL_MAP_VERSION;
	back.nshards = 1;
	back.shards[0] = (struct keel_map_shard){
		.cpu = 0, .core = -1, .numa = -1, .rxq = -1, .irq_cpu = -1
	};
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), 0, "%s", err);
	if (sysconf(_SC_NPROCESSORS_ONLN) > 1) {
		back.shards[0].cpu = 1;
		cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), -EINVAL);
		cr_assert(strstr(err, "outside this process's affinity mask (allowed: 0)"), "%s",
			  err);
	}
	/* a mask that cannot be read: every CPU counts, and a warning says so */
	fake_errno = EPERM;
	logged[0] = 0;
	keel_log_set_level(KEEL_LOG_WARN);
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_topo_load(NULL, &t, err, sizeof(err)), 0, "%s", err);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "affinity") && strstr(logged, strerror(EPERM)), "%s", logged);
	keel_topo_destroy(t);
}

/* --map's queues are of its interface: an --iface naming another would pair them with it. */
Test(core_topo, runtime_refuses_a_map_and_an_iface_naming_different_interfaces)
{
	char path[128];
	int cpus[1] = { 0 };
	struct keel_runtime *rt;
	struct keel_opts o = test_opts(0);

	tmp_path(path, sizeof(path), "iface");
	write_map(path, "lo", 1, cpus, 1);
	o.map_path = path;
	snprintf(o.iface, sizeof(o.iface), "eth1");
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL, "eth1 took lo's queues");
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "--iface eth1") && strstr(logged, "interface lo") &&
			  strstr(logged, "drop --iface"),
		  "%s", logged);
	/* the same interface agrees with the map */
	snprintf(o.iface, sizeof(o.iface), "lo");
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_str_eq(keel_runtime_rx_iface(rt), "lo");
	keel_runtime_destroy(rt);
	unlink(path);
}

/* A map planned without an interface gives no shard a queue: an --iface with it (and no
 * --rxqs) was taken, every shard without a queue while keel_runtime_rx_iface named it. A
 * map whose shards share a CPU is said (not refused: a map may oversubscribe). */
Test(core_topo, runtime_refuses_an_iface_with_a_map_of_no_interface_and_names_shared_cpus)
{
	char path[128];
	struct keel_runtime *rt;
	struct keel_opts o = test_opts(0);
	FILE *f;

	tmp_path(path, sizeof(path), "noif");
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fprintf(f,
		"{\"keel_map\": 1, \"iface\": null, \"rx_queues\": 0, \"shards\": [{\"shard\": 0, "
		"\"cpu\": 0, \"rxq\": null}, {\"shard\": 1, \"cpu\": 0, \"rxq\": null}]}\n");
	fclose(f);
	o.map_path = path;
	snprintf(o.iface, sizeof(o.iface), "lo");
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL, "lo taken with a map of no queues");
	cr_assert(strstr(logged, "gives no shard an rx queue") && strstr(logged, "--iface lo"),
		  "%s", logged);
	o.iface[0] = 0;
	logged[0] = 0;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "shards 0 and 1 share CPU 0"), "%s", logged);
	keel_runtime_destroy(rt);
	unlink(path);
}

/* --rxqs gives one queue per shard: more queues than shards is refused (those past the
 * shards would have no shard), fewer is said; both were cut or padded without a word. */
Test(core_topo, runtime_refuses_more_rxqs_than_shards_and_names_fewer)
{
	struct keel_runtime *rt;
	struct keel_opts o = test_opts(1);

	snprintf(o.iface, sizeof(o.iface), "lo");
	o.zcrx = KEEL_POLICY_OFF;
	o.rxqs[0] = 0;
	o.rxqs[1] = 1;
	o.nrxqs = 2;
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL, "2 queues for 1 shard taken");
	cr_assert(strstr(logged, "--rxqs gives 2 queues for 1 shard") &&
			  strstr(logged, "give --shards 2"),
		  "%s", logged);
	o = test_opts(2);
	snprintf(o.iface, sizeof(o.iface), "lo");
	o.zcrx = KEEL_POLICY_OFF;
	o.nrxqs = 1;
	logged[0] = 0;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "shards 1 and up own no rx queue"), "%s", logged);
	keel_runtime_destroy(rt);
}

/* --iface given as a PCI function, as keel-topo takes it, names its network interface for
 * the runtime too: keel_runtime_rx_iface() is the name (ZCRX opened the bus id as one:
 * ENODEV). A function with no interface is refused, naming the fix. Uses this machine's first
 * PCI network interface (skipped without one). */
/* The first network interface here with a PCI function of its own: its name and the
 * function's bus id; false when there is none. */
static bool
pci_interface(char name[64], char busid[32])
{
	char link[300], path[4096];
	struct dirent *de;
	DIR *d = opendir("/sys/class/net");

	name[0] = busid[0] = 0;
	while (d && (de = readdir(d)) && !busid[0]) {
		char *at;

		if (de->d_name[0] == '.')
			continue;
		snprintf(link, sizeof(link), "/sys/class/net/%s/device", de->d_name);
		if (!realpath(link, path))
			continue;
		/* .../0000:00:03.0[/virtio2]: the PCI function is the path's bus-id part */
		for (at = strtok(path, "/"); at; at = strtok(NULL, "/")) {
			unsigned a, b, c, e;
			if (sscanf(at, "%4x:%2x:%2x.%1x", &a, &b, &c, &e) == 4 &&
			    strlen(at) == 12) {
				snprintf(busid, 32, "%.31s", at);
				snprintf(name, 64, "%.63s", de->d_name);
			}
		}
	}
	if (d)
		closedir(d);
	return busid[0] != 0;
}

Test(core_topo, runtime_takes_an_iface_given_as_its_pci_function)
{
	struct keel_runtime *rt;
	struct keel_opts o = test_opts(1);
	char name[64], busid[32];

	if (!pci_interface(name, busid))
		cr_skip_test("no PCI network interface here");
	o.zcrx = KEEL_POLICY_OFF;
	snprintf(o.iface, sizeof(o.iface), "%s", busid);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0, "--iface %s", busid);
	cr_assert_str_eq(keel_runtime_rx_iface(rt), name);
	keel_runtime_destroy(rt);
	/* ... before the map's interface is compared with it (it was refused as another) */
	{
		char mpath[128];
		int cpu0 = 0;

		tmp_path(mpath, sizeof(mpath), "pci");
		write_map(mpath, name, 1, &cpu0, 1);
		o.map_path = mpath;
		cr_assert_eq(keel_runtime_create(&o, &rt), 0, "--iface %s --map (of %s)", busid,
			     name);
		keel_runtime_destroy(rt);
		o.map_path = NULL;
		unlink(mpath);
	}
	snprintf(o.iface, sizeof(o.iface), "0000:ff:1f.7");
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), -ENODEV);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "has no network interface") && strstr(logged, "bind"), "%s",
		  logged);
}

/* A map may name its NIC by the PCI function's bus id (docs/topology.md). Where the function
 * has an interface, the map is checked as that interface's: a map that needs more queues than
 * it has was let through ("this machine matches the map"), with nothing compared but the
 * function's presence; and the runtime goes on with the interface's name (it kept the bus
 * id, which ZCRX opens as an interface name, and which --iface IF was refused against). */
Test(core_topo, a_map_on_a_pci_function_is_checked_as_its_interface)
{
	struct keel_runtime *rt;
	struct keel_opts o = test_opts(1);
	char name[64], busid[32], mpath[128], want[128];
	int cpu0 = 0, rx;

	if (!pci_interface(name, busid))
		cr_skip_test("no PCI network interface here");
	rx = keel__topo_sysfs_rxq_count(name);
	cr_assert_gt(rx, 0, "%s: %d", name, rx);
	tmp_path(mpath, sizeof(mpath), "pciq");
	write_map_rxqs(mpath, busid, (unsigned)rx + 1, &cpu0, &rx, 1); /* queue rx: one too many */
	cr_assert_eq(keel_map_load(mpath, &back, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), -EINVAL, "%s: %s", busid, err);
	snprintf(want, sizeof(want), "ethtool -L %s", name);
	cr_assert(strstr(err, want), "%s", err);

	write_map(mpath, busid, 1, &cpu0, 1);
	o.zcrx = KEEL_POLICY_OFF;
	o.map_path = mpath;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0, "--map on %s", busid);
	cr_assert_str_eq(keel_runtime_map_iface(rt), name);
	keel_runtime_destroy(rt);
	snprintf(o.iface, sizeof(o.iface), "%.31s", name);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0, "--iface %s --map on %s", name, busid);
	keel_runtime_destroy(rt);
	unlink(mpath);
}

Test(core_topo, validate_refuses_an_irq_cpu_that_does_not_exist)
{
	char path[128];
	FILE *f;

	tmp_path(path, sizeof(path), "irqcpu");
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fprintf(f, "{\"keel_map\": 1, \"iface\": \"lo\", \"rx_queues\": 1, \"shards\": "
		   "[{\"shard\": 0, \"cpu\": 0, \"rxq\": 0, \"irq_cpu\": 1000}]}\n");
	fclose(f);
	cr_assert_eq(keel_map_load(path, &back, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "irq_cpu 1000 does not exist"), "%s", err);
	unlink(path);
}

Test(core_topo, map_option_and_env_set_map_path)
{
	struct keel_opts o;
	char a0[] = "prog", a1[] = "--map", a2[] = "/x/m.json", a3[] = "app";
	char *argv[] = { a0, a1, a2, a3, NULL };
	int argc = 4;

	keel_opts_init(&o);
	cr_assert_eq(keel_opts_parse(&o, &argc, argv, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(o.map_path, "/x/m.json");
	cr_assert_eq(argc, 2);
	cr_assert_str_eq(argv[1], "app");
	setenv("KEEL_MAP", "/y/m.json", 1);
	keel_opts_init(&o);
	argc = 1;
	cr_assert_eq(keel_opts_parse(&o, &argc, argv, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(o.map_path, "/y/m.json");
	unsetenv("KEEL_MAP");
	/* shards_given: only when the user gave a count */
	cr_assert(!o.shards_given);
	setenv("KEEL_SHARDS", "3", 1);
	keel_opts_init(&o);
	argc = 1;
	cr_assert_eq(keel_opts_parse(&o, &argc, argv, err, sizeof(err)), 0, "%s", err);
	unsetenv("KEEL_SHARDS");
	cr_assert(o.shards_given);
	cr_assert_eq(o.shards, 3);
}

/* ---- the live machine ---- */

Test(core_topo, live_machine_loads_with_queues_from_sysfs)
{
	struct keel_topo *t;
	const struct keel_topo_info *in;
	long online = sysconf(_SC_NPROCESSORS_ONLN);

	cr_assert_eq(keel_topo_load(NULL, &t, err, sizeof(err)), 0, "%s", err);
	in = keel_topo_info_get(t);
	cr_assert(in->live);
	cr_assert_eq((long)in->npus, online);
	cr_assert_geq(in->ncores, 1);
	cr_assert_neq(in->irqbalance, KEEL_TOPO_UNKNOWN);
	for (unsigned i = 0; i < in->nnics; i++) {
		const struct keel_topo_nic *n = &in->nics[i];
		if (!n->netdev)
			continue;
		cr_assert_eq(n->nrxq, keel__topo_sysfs_rxq_count(n->name), "%s", n->name);
		cr_assert_neq(strcmp(n->name, "lo"), 0, "lo is not a NIC");
	}
	keel_topo_destroy(t);
}

Test(core_topo, check_reports_a_map_asking_for_more_queues_than_exist)
{
	struct keel_topo *t;
	char *out = NULL;
	size_t len = 0;
	FILE *f;
	int n;

	cr_assert_eq(keel_topo_load(NULL, &t, err, sizeof(err)), 0, "%s", err);
	memset(&map, 0, sizeof(map));
	map.version = KEEL_MAP_VERSION;
	snprintf(map.iface, sizeof(map.iface), "lo");
	map.rx_queues = 64;
	map.nshards = 1;
	map.shards[0] = (struct keel_map_shard){
		.cpu = 0, .core = -1, .numa = -1, .rxq = 63, .irq_cpu = 0
	};
	f = open_memstream(&out, &len);
	n = keel_map_check(t, &map, f);
	fclose(f);
	cr_assert_geq(n, 1, "%s", out);
	cr_assert(strstr(out, "the map needs 64") && strstr(out, "ethtool -L lo combined 64"), "%s",
		  out);
	free(out);
	keel_topo_destroy(t);
}

Test(core_topo, check_reports_irqbalance_and_hds_off_on_a_capable_nic)
{
	struct keel_topo *t;
	struct keel_topo_nic *nic = NULL;
	char *out = NULL;
	size_t len = 0;
	FILE *f;
	int n;

	cr_assert_eq(keel_topo_load(NULL, &t, err, sizeof(err)), 0, "%s", err);
	for (unsigned i = 0; i < t->info.nnics; i++)
		if (t->nics[i].nrxq > 0 && t->nics[i].has_irqs && t->nics[i].rxq[0].irq >= 0)
			nic = &t->nics[i];
	if (!nic) {
		keel_topo_destroy(t);
		cr_skip_test("no NIC with a named rx IRQ here");
	}
	/* What this machine cannot show by itself: irqbalance running, and a driver that can
	 * split with the split off. */
	t->info.irqbalance = KEEL_TOPO_ON;
	nic->hds_capable = KEEL_TOPO_ON;
	nic->hds = KEEL_TOPO_OFF;
	memset(&map, 0, sizeof(map));
	map.version = KEEL_MAP_VERSION;
	snprintf(map.iface, sizeof(map.iface), "%s", nic->name);
	map.rx_queues = 1;
	map.hds = true;
	map.nshards = 1;
	map.shards[0] =
		(struct keel_map_shard){ .cpu = 0, .core = -1, .numa = -1, .rxq = 0, .irq_cpu = 0 };
	f = open_memstream(&out, &len);
	n = keel_map_check(t, &map, f);
	fclose(f);
	cr_assert(strstr(out, "irqbalance is running") && strstr(out, "systemctl stop irqbalance"),
		  "%s", out);
	cr_assert(strstr(out, "header/data split is off, the map needs it; run: ethtool -G"), "%s",
		  out);
	cr_assert_geq(n, 2, "%s", out);
	free(out);
	keel_topo_destroy(t);
}

/* A live topology built by hand (tests/common/fake_topo.h): NIC "fake0", queue 0 with IRQ
 * 77, given to shard 0 on CPU 0 whose IRQ should be on CPU 0. */
static struct keel_topo *
fake_live_nic(struct keel_topo_nic **out)
{
	return fake_topo_live_nic(&map, 0, out);
}

static char *
check_output(struct keel_topo *t, int *n)
{
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);

	cr_assert_not_null(f);
	*n = keel_map_check(t, &map, f);
	fclose(f);
	return out;
}

Test(core_topo, check_says_an_irq_affinity_beyond_keel_max_cpus_is_that_not_unreadable)
{
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live_nic(&nic);
	char *out;
	int n;

	/* smp_affinity_list "0-1279" as read on a 1280-CPU machine */
	nic->rxq[0].affinity_known = true;
	nic->rxq[0].affinity_beyond = true;
	for (unsigned c = 0; c < KEEL_MAX_CPUS; c++)
		keel_cpuset_add(&nic->rxq[0].affinity, c);
	out = check_output(t, &n);
	cr_assert_geq(n, 1, "%s", out);
	cr_assert(strstr(out, "IRQ 77") && strstr(out, "1024") && strstr(out, "KEEL_MAX_CPUS") &&
			  strstr(out, "echo 0 > /proc/irq/77/smp_affinity_list"),
		  "%s", out);
	cr_assert_null(strstr(out, "unreadable"), "%s", out);
	free(out);
	/* only CPU 0 below the limit, the rest beyond: still a mismatch */
	memset(&nic->rxq[0].affinity, 0, sizeof(nic->rxq[0].affinity));
	keel_cpuset_add(&nic->rxq[0].affinity, 0);
	out = check_output(t, &n);
	cr_assert(strstr(out, "IRQ 77") && strstr(out, "KEEL_MAX_CPUS"), "%s", out);
	free(out);
	keel_topo_destroy(t);
}

/* A physical NIC without MSI IRQs (legacy INTx): its queue's IRQ cannot be identified, so
 * --check cannot say it matches (docs: such an IRQ is a mismatch, "cannot be checked"). */
Test(core_topo, check_counts_a_physical_nic_without_msi_irqs_as_cannot_be_checked)
{
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live_nic(&nic);
	char *out;
	int n_virtual, n;

	nic->has_irqs = false;
	nic->rxq[0].irq = -1;
	/* a virtual interface has no IRQs to check: nothing is said about them */
	nic->is_virtual = true;
	out = check_output(t, &n_virtual);
	cr_assert_null(strstr(out, "cannot be checked"), "%s", out);
	free(out);
	/* a physical one: one more mismatch, naming why and the fix */
	nic->is_virtual = false;
	out = check_output(t, &n);
	cr_assert_eq(n, n_virtual + 1, "%s", out);
	cr_assert(strstr(out, "fake0 rx queue 0 (shard 0)") && strstr(out, "no MSI IRQs") &&
			  strstr(out, "cannot be checked") && strstr(out, "CPU 0"),
		  "%s", out);
	free(out);
	keel_topo_destroy(t);
}

/* A physical NIC without MSI IRQs (legacy INTx) with shards on three of its queues (two on
 * one): its one IRQ line serves all the queues, and --check said "fake0 rx queue N (shard
 * N): fake0 has no MSI IRQs ... pin it by hand to CPU N" for each shard, each counted. One
 * line names the queues, the shards and the fix now, counted once. */
Test(core_topo, check_says_a_nic_without_msi_irqs_once_for_all_its_queues)
{
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live_nic(&nic);
	const char *said;
	char *out;
	int n_virtual, n;

	nic->rxq = realloc(nic->rxq, 3 * sizeof(*nic->rxq));
	cr_assert_not_null(nic->rxq);
	nic->nrxq = 3;
	nic->has_irqs = false;
	for (int q = 0; q < 3; q++)
		nic->rxq[q] = (struct keel_topo_rxq){ .index = (unsigned)q, .irq = -1 };
	for (int i = 0; i < 4; i++)
		map.shards[i] = (struct keel_map_shard){
			.cpu = i, .core = -1, .numa = -1, .rxq = i % 3, .irq_cpu = i
		};
	map.nshards = 4;
	map.rx_queues = 3;
	nic->is_virtual = true;
	out = check_output(t, &n_virtual);
	free(out);
	nic->is_virtual = false;
	out = check_output(t, &n);
	said = strstr(out, "fake0 rx queues 0, 1, 2 (shards 0, 1, 2, 3): fake0 has no MSI IRQs");
	cr_assert(said && strstr(said, "pin it by hand to one of the shards' CPUs, e.g. CPU 0\n"),
		  "%s", out);
	cr_assert_null(strstr(strstr(said, "no MSI IRQs") + 1, "no MSI IRQs"),
		       "said more than once:\n%s", out);
	cr_assert_eq(n, n_virtual + 1, "%s", out);
	free(out);
	keel_topo_destroy(t);
}

/* A virtio-net NIC whose device has too few MSI-X vectors for one per queue: virtio-pci
 * gives one to the configuration and one to every virtqueue (as /proc/interrupts lists
 * them below). No vector named a queue, so each of the 4 queues had "IRQ unknown" and
 * --check printed a "pin it by hand" line per queue, though one IRQ serves them all and no
 * pinning puts it on each shard's CPU. Now every queue has the shared IRQ, and one line
 * says so, with the fix. */
Test(core_topo, a_virtio_vector_shared_by_every_queue_is_said_once)
{
	static const char interrupts[] =
		"           CPU0       CPU1       CPU2       CPU3\n"
		" 24:          0          0          0          0  PCI-MSIX-0000:00:03.0   0-edge "
		"     virtio0-config\n"
		" 25:       1234        567         89         10  PCI-MSIX-0000:00:03.0   1-edge "
		"     virtio0-virtqueues\n";
	int irqs[2] = { 24, 25 };
	char names[2][64] = { "", "" };
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live_nic(&nic);
	FILE *f = fmemopen((void *)interrupts, sizeof(interrupts) - 1, "r");
	char *out;
	int n;

	cr_assert_not_null(f);
	cr_assert_eq(keel__topo_irq_names_parse(f, irqs, 2, names), 2);
	fclose(f);
	snprintf(nic->name, sizeof(nic->name), "eth0");
	snprintf(map.iface, sizeof(map.iface), "eth0");
	nic->rxq = realloc(nic->rxq, 4 * sizeof(*nic->rxq));
	cr_assert_not_null(nic->rxq);
	memset(nic->rxq, 0, 4 * sizeof(*nic->rxq));
	nic->nrxq = 4;
	for (unsigned q = 0; q < 4; q++) {
		nic->rxq[q].index = q;
		nic->rxq[q].irq = -1;
		nic->rxq[q].affinity_known = true;
		keel_cpuset_add(&nic->rxq[q].affinity, 0);
		map.shards[q] = (struct keel_map_shard){
			.cpu = (int)q, .core = -1, .numa = -1, .rxq = (int)q, .irq_cpu = (int)q
		};
	}
	map.nshards = 4;
	map.rx_queues = 4;
	keel__topo_rxq_irqs(nic, irqs, 2, names);
	for (unsigned q = 0; q < 4; q++)
		cr_assert(nic->rxq[q].irq == 25 &&
				  !strcmp(nic->rxq[q].irq_name, "virtio0-virtqueues"),
			  "rxq %u: IRQ %d (%s)", q, nic->rxq[q].irq, nic->rxq[q].irq_name);
	out = check_output(t, &n);
	cr_assert(strstr(out, "eth0 rx queues 0, 1, 2, 3 (shards 0, 1, 2, 3) share one IRQ 25 "
			      "(virtio0-virtqueues)") &&
			  strstr(out, "vectors=10") &&
			  strstr(out, "echo 0 > /proc/irq/25/smp_affinity_list"),
		  "%s", out);
	cr_assert_null(strstr(out, "pin it by hand to CPU"), "%s", out);
	cr_assert_null(strstr(out, "rx queue 1 (shard 1)"), "%s", out);
	free(out);
	keel_topo_destroy(t);
}

/* Two shards a map puts on one queue (--zcrx off allows it) share its IRQ as they share the
 * queue: no other queue has it, so it is no shared vector, and a vector per queue is no
 * cure. The first cut of the shared-vector check said "rx queues 0, 0 (shards 0, 1) share
 * one IRQ ... give the device an MSI-X vector per queue" and skipped the affinity check,
 * which the IRQ on the shards' CPU passes. */
Test(core_topo, shards_on_one_queue_are_no_shared_vector)
{
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live_nic(&nic);
	char *out;
	int n0, n;

	nic->rxq[0].affinity_known = true;
	keel_cpuset_add(&nic->rxq[0].affinity, 0);
	out = check_output(t, &n0); /* one shard on queue 0, its IRQ on its CPU */
	free(out);
	map.shards[1] = map.shards[0];
	map.shards[1].cpu = 1;
	map.nshards = 2;
	out = check_output(t, &n);
	cr_assert_null(strstr(out, "share one IRQ"), "%s", out);
	cr_assert_eq(n, n0, "the IRQ on the shards' CPU was counted as something to fix: %s", out);
	free(out);
	keel_topo_destroy(t);
}

/* A map with header/data split (--hds) needs the split's threshold at 0 as well: the kernel
 * refuses a ZCRX interface queue with EINVAL otherwise, and --plan sets hds-thresh 0 for it.
 * --check compared the split alone and said such a NIC matched. */
Test(core_topo, check_counts_a_nonzero_hds_threshold_as_a_mismatch_of_an_hds_map)
{
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live_nic(&nic);
	char *out;
	int n0, n;

	/* Everything of the NIC matches: the IRQ is on the shard's CPU, the split is on. (No
	 * interface fake0 exists here, which validate_each says: @n0 counts that.) */
	nic->rxq[0].affinity_known = true;
	keel_cpuset_add(&nic->rxq[0].affinity, 0);
	nic->hds_capable = KEEL_TOPO_ON;
	nic->hds = KEEL_TOPO_ON;
	nic->hds_thresh = 0;
	map.hds = true;
	out = check_output(t, &n0);
	cr_assert_null(strstr(out, "header/data split"), "premise: threshold 0 matches: %s", out);
	free(out);
	nic->hds_thresh = 256;
	out = check_output(t, &n);
	cr_assert_eq(n, n0 + 1, "threshold 256 passed --check: '%s'", out);
	cr_assert(strstr(out, "fake0: header/data split threshold is 256 bytes") &&
			  strstr(out, "run: ethtool -G fake0 hds-thresh 0"),
		  "%s", out);
	free(out);
	/* Not known (an older kernel or ethtool): not counted, as keel-topo --zcrx does. */
	nic->hds_thresh = -1;
	out = check_output(t, &n);
	cr_assert_eq(n, n0, "%s", out);
	free(out);
	/* A map without --hds does not care. */
	nic->hds_thresh = 256;
	map.hds = false;
	out = check_output(t, &n);
	cr_assert_eq(n, n0, "%s", out);
	free(out);
	keel_topo_destroy(t);
}

Test(core_topo, bad_sources_fail_with_the_fix)
{
	struct keel_topo *t = NULL;
	struct keel_topo_load_opts o = { .xml = "/nonexistent/topo.xml" };

	cr_assert_eq(keel_topo_load(&o, &t, err, sizeof(err)), -ENOENT);
	cr_assert(strstr(err, "check the path"), "%s", err);
	o.xml = NULL;
	o.synthetic = "banana:3";
	cr_assert_eq(keel_topo_load(&o, &t, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "pack:2"), "%s", err);
	cr_assert_null(t);
	/* A file hwloc cannot parse (truncated): the load fails, and says how to check it
	 * (the hint was only on a failure to name the file, which never comes). */
	{
		char path[128];
		FILE *f;

		snprintf(path, sizeof(path), "/tmp/keel-test-trunc-%d.xml", (int)getpid());
		f = fopen(path, "w");
		cr_assert_not_null(f);
		fprintf(f, "<?xml version=\"1.0\"?>\n<topology version=\"2.0\">\n  <object ");
		fclose(f);
		o.synthetic = NULL;
		o.xml = path;
		cr_assert_eq(keel_topo_load(&o, &t, err, sizeof(err)), -EINVAL);
		cr_assert(strstr(err, "lstopo-no-graphics --input"), "%s", err);
		cr_assert_null(t);
		unlink(path);
	}
}

/* An interface with more rx queues than the map serves, as a ZCRX set-up has (zcrx.md: RSS
 * over the served queues, the others for other uses): the runtime warns with the fix and
 * starts; fewer queues than the map needs still refuse it. The first case failed the start.
 * Root only: a veth of 4 rx queues in a network namespace of the test's own (veth has no
 * RSS table, so the warning says it could not be read). */
Test(core_topo, an_interface_with_more_queues_than_the_map_serves_only_warns)
{
	char path[128];
	int cpu0 = 0;

	if (geteuid() != 0)
		cr_skip_test("needs root: a veth in a network namespace of its own");
	/* A mount namespace too, with /sys mounted again, as ip netns exec does: sysfs shows
	 * the interfaces of the namespace it was mounted in. */
	if (unshare(CLONE_NEWNET | CLONE_NEWNS) < 0)
		cr_skip_test("unshare(CLONE_NEWNET | CLONE_NEWNS): %s", strerror(errno));
	if (mount("", "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
	    umount2("/sys", MNT_DETACH) < 0 || mount("sysfs", "/sys", "sysfs", 0, NULL) < 0)
		cr_skip_test("mounting sysfs in a mount namespace of its own: %s", strerror(errno));
	if (system("ip link add kmv0 numrxqueues 4 type veth peer name kmv1 2>/dev/null") != 0)
		cr_skip_test("ip link add ... type veth failed (iproute2 missing?)");
	tmp_path(path, sizeof(path), "morequeues");
	write_map(path, "kmv0", 1, &cpu0, 1);
	cr_assert_eq(keel_map_load(path, &back, err, sizeof(err)), 0, "%s", err);
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), 0, "%s", err);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "kmv0 has 4 rx queues, the map serves 1") &&
			  strstr(logged, "ethtool -X kmv0 equal 1"),
		  "%s", logged);
	/* Queues 3 and 1 of 4 (--rxqs kmv0:3,1): rx_queues is 4, as many as the interface
	 * has, and the two unserved queues went unsaid; "equal 4" would not keep RSS off
	 * them, a weight per queue does. */
	back.nshards = 2;
	back.shards[0].rxq = 3;
	back.shards[1] = back.shards[0];
	back.shards[1].rxq = 1;
	back.rx_queues = 4;
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), 0, "%s", err);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "kmv0 has 4 rx queues, the map serves 2") &&
			  strstr(logged, "ethtool -X kmv0 weight 0 1 0 1 ") &&
			  !strstr(logged, "equal"),
		  "%s", logged);
	write_map(path, "kmv0", 8, &cpu0, 1);
	keel_map_load(path, &back, err, sizeof(err));
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "kmv0 has 4 rx queues, the map needs 8"), "%s", err);
	/* veth has rx channels, no combined ones: "combined 8" could only fail. */
	cr_assert(strstr(err, "ethtool -L kmv0 rx 8"), "%s", err);
	unlink(path);
}

/* A map names its NIC's PCI function and node, but only the interface name was checked: a
 * name that now belongs to another NIC (names moved after a reboot, a map copied from
 * another host) passed, the shards placed for a NIC and node that are not there. */
Test(core_topo, a_map_made_for_another_nic_under_the_same_name_is_stale)
{
	char pci[16] = "", name[KEEL_TOPO_NAME_MAX] = "";
	int numa;
	DIR *d = opendir("/sys/class/net");
	struct dirent *e;

	memset(&back, 0, sizeof(back));
	back.version = KEEL_MAP_VERSION;
	back.numa = -1;
	back.rx_queues = 1;
	back.nshards = 1;
	back.shards[0] = (struct keel_map_shard){
		.cpu = 0, .core = -1, .numa = -1, .rxq = 0, .irq_cpu = -1
	};
	snprintf(back.iface, sizeof(back.iface), "lo");
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), 0, "%s", err);
	snprintf(back.pci, sizeof(back.pci), "0000:81:00.0");
	back.numa = 1;
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "interface lo is no PCI function here, the map was made for PCI "
			      "0000:81:00.0 (NUMA node 1): the map is stale") &&
			  strstr(err, "keel-topo --plan"),
		  "%s", err);

	/* An interface of a PCI NIC here, where there is one: its own bus id passes, another
	 * does not. */
	cr_assert_not_null(d);
	while ((e = readdir(d)) && !name[0])
		if (e->d_name[0] != '.' &&
		    keel__topo_sysfs_pci_of(e->d_name, pci, sizeof(pci), &numa) == 0 &&
		    keel__topo_sysfs_rxq_count(e->d_name) >= 1)
			snprintf(name, sizeof(name), "%.63s", e->d_name);
	closedir(d);
	if (!name[0])
		cr_skip_test("no interface of a PCI NIC here for the matching half");
	snprintf(back.iface, sizeof(back.iface), "%s", name);
	snprintf(back.pci, sizeof(back.pci), "%s", pci);
	back.numa = numa;
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), 0, "%s: %s", name, err);
	snprintf(back.pci, sizeof(back.pci), "%s",
		 strcmp(pci, "0000:81:00.0") ? "0000:81:00.0" : "0000:82:00.0");
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "the map is stale (the interface names another NIC)"), "%s", err);
}

/* A CPU list file longer than 4 KiB (an IRQ's smp_affinity_list on a machine with more
 * than a thousand CPUs: every even one up to 2046 is 4,565 bytes) is read whole. Its first
 * 4,095 bytes were parsed: a list cut after a comma was refused (-EINVAL, "unreadable"), one
 * cut inside a number named a CPU not in it. Here: -ERANGE (CPUs past what keel counts),
 * with every even CPU keel counts and no odd one. */
Test(core_topo, a_cpu_list_longer_than_4_kib_is_read_whole)
{
	char path[128];
	struct keel_cpuset set;
	FILE *f;
	int r;

	snprintf(path, sizeof(path), "/tmp/keel-test-cpulist-%d", (int)getpid());
	f = fopen(path, "w");
	cr_assert_not_null(f);
	for (int c = 0; c <= 2046; c += 2)
		fprintf(f, "%s%d", c ? "," : "", c);
	fputc('\n', f);
	fclose(f);
	r = keel__topo_cpulist_read(path, &set);
	unlink(path);
	cr_assert(r == 0 || r == -ERANGE, "read: %d (%s)", r, strerror(-r));
	for (unsigned c = 0; c < KEEL_MAX_CPUS && c <= 2046; c++)
		cr_assert_eq(keel_cpuset_has(&set, c), c % 2 == 0, "CPU %u", c);
}

/* ---- the cgroup's cpuset, named when it is why a CPU is not allowed ---- */

/* A file @dir/@name holding @text (the directories made first). */
static void
write_in(const char *dir, const char *name, const char *text)
{
	char path[512];
	FILE *f;

	mkdirs(dir);
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	cr_assert(f, "%s: %s", path, strerror(errno));
	fputs(text, f);
	fclose(f);
}

/* /proc/self/mountinfo and /proc/self/cgroup stand-ins under @root, mounting the hierarchy
 * of controller @ctl at @root/@mnt (@type "cgroup" with @ctl as an option, or "cgroup2")
 * from @mroot, beside a v1 cpu hierarchy, and the process in @cg ("ID:CONTROLLERS:PATH"
 * lines). */
static void
fake_cgroup_of(const char *ctl, const char *root, const char *type, const char *mnt,
	       const char *mroot, const char *cg)
{
	static char mi[300], cgf[300];
	char text[1024];

	snprintf(text, sizeof(text),
		 "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
		 "30 22 0:27 / %s/fs rw,relatime - tmpfs tmpfs rw,mode=755\n"
		 "31 30 0:28 / %s/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n"
		 "40 30 0:37 %s %s/%s rw,relatime shared:12 - %s %s rw,%s\n",
		 root, root, mroot, root, mnt, type, type,
		 strcmp(type, "cgroup") == 0 ? ctl : "nsdelegate");
	write_in(root, "mountinfo", text);
	write_in(root, "cgroup", cg);
	snprintf(mi, sizeof(mi), "%s/mountinfo", root);
	snprintf(cgf, sizeof(cgf), "%s/cgroup", root);
	keel__proc_mountinfo = mi;
	keel__proc_cgroup = cgf;
}

static void
fake_cgroup(const char *root, const char *type, const char *mnt, const char *mroot, const char *cg)
{
	fake_cgroup_of("cpuset", root, type, mnt, mroot, cg);
}

Test(core_topo, the_cgroup_cpuset_is_read_from_v1_v2_and_a_subtree_mount)
{
	char root[] = "/tmp/keel-cg-XXXXXX", dir[300], file[512], want[512];
	struct keel_cpuset s;

	cr_assert(mkdtemp(root));
	/* cgroup v1 beside a v2 hierarchy without cpuset (this hybrid layout is Debian 11's) */
	fake_cgroup(root, "cgroup", "cpuset", "/", "9:cpu,cpuacct:/a\n3:cpuset:/a/b\n0::/x\n");
	snprintf(dir, sizeof(dir), "%s/cpuset/a/b", root);
	write_in(dir, "cpuset.effective_cpus", "0-1,3\n");
	cr_assert_eq(keel__cgroup_cpus(&s, file, sizeof(file)), 0, "%s", file);
	snprintf(want, sizeof(want), "%s/cpuset.effective_cpus", dir);
	cr_assert_str_eq(file, want);
	cr_assert(keel_cpuset_has(&s, 0) && keel_cpuset_has(&s, 1) && !keel_cpuset_has(&s, 2) &&
		  keel_cpuset_has(&s, 3));

	/* cgroup v2 */
	fake_cgroup(root, "cgroup2", "v2", "/", "0::/k.slice/p.scope\n");
	snprintf(dir, sizeof(dir), "%s/v2/k.slice/p.scope", root);
	write_in(dir, "cpuset.cpus.effective", "2\n");
	cr_assert_eq(keel__cgroup_cpus(&s, file, sizeof(file)), 0, "%s", file);
	cr_assert(keel_cpuset_has(&s, 2) && !keel_cpuset_has(&s, 0));
	/* a v2 cgroup whose parent did not enable cpuset for it has no file: its nearest
	 * ancestor's binds it (-ENOENT before, and the --cpuset error named the wrong fix) */
	fake_cgroup(root, "cgroup2", "v2", "/", "0::/u.slice/s.scope\n");
	snprintf(dir, sizeof(dir), "%s/v2/u.slice/s.scope", root);
	write_in(dir, "cgroup.procs", "1\n");
	snprintf(dir, sizeof(dir), "%s/v2/u.slice", root);
	write_in(dir, "cpuset.cpus.effective", "3\n");
	cr_assert_eq(keel__cgroup_cpus(&s, file, sizeof(file)), 0, "the ancestor's file not read");
	snprintf(want, sizeof(want), "%s/v2/u.slice/cpuset.cpus.effective", root);
	cr_assert_str_eq(file, want);
	cr_assert(keel_cpuset_has(&s, 3) && !keel_cpuset_has(&s, 2));
	/* at the root of the hierarchy */
	fake_cgroup(root, "cgroup2", "v2", "/", "0::/\n");
	snprintf(dir, sizeof(dir), "%s/v2", root);
	write_in(dir, "cpuset.cpus.effective", "1\n");
	cr_assert_eq(keel__cgroup_cpus(&s, file, sizeof(file)), 0, "%s", file);
	snprintf(want, sizeof(want), "%s/v2/cpuset.cpus.effective", root);
	cr_assert_str_eq(file, want);
	cr_assert(keel_cpuset_has(&s, 1) && !keel_cpuset_has(&s, 2));

	/* a container's mount of its own subtree: the path below the mount's root */
	fake_cgroup(root, "cgroup", "c", "/docker/abc", "5:cpuset:/docker/abc/in\n");
	snprintf(dir, sizeof(dir), "%s/c/in", root);
	write_in(dir, "cpuset.effective_cpus", "4-5\n");
	cr_assert_eq(keel__cgroup_cpus(&s, file, sizeof(file)), 0, "%s", file);
	cr_assert(keel_cpuset_has(&s, 4) && keel_cpuset_has(&s, 5) && !keel_cpuset_has(&s, 3));

	/* no cpuset hierarchy, or the process in none of it */
	fake_cgroup(root, "cgroup", "cpuset", "/", "0::/x\n");
	cr_assert_eq(keel__cgroup_cpus(&s, file, sizeof(file)), -ENOENT);
	keel__proc_mountinfo = "/nonexistent/mountinfo";
	cr_assert_eq(keel__cgroup_cpus(&s, file, sizeof(file)), -ENOENT);
	rm_dir(root);
}

/* The limit that binds is the least of the process's cgroup and its ancestors' up to the
 * hierarchy's mount (a v1 child's own file says nothing of its parent's); v1's "none" is a
 * page-counter maximum, v2's is "max". */
Test(core_topo, the_memory_cgroup_limit_is_the_least_up_to_the_mount)
{
	char root[] = "/tmp/keel-mcg-XXXXXX", dir[300], file[512], want[512];
	const char *none1 = "9223372036854771712\n";
	uint64_t lim = 0;

	cr_assert(mkdtemp(root));
	/* v1: the parent's limit binds a child without one */
	fake_cgroup_of("memory", root, "cgroup", "memory", "/", "9:cpu:/x\n4:memory:/a/b\n");
	snprintf(dir, sizeof(dir), "%s/memory", root);
	write_in(dir, "memory.limit_in_bytes", none1);
	snprintf(dir, sizeof(dir), "%s/memory/a", root);
	write_in(dir, "memory.limit_in_bytes", "536870912\n");
	snprintf(dir, sizeof(dir), "%s/memory/a/b", root);
	write_in(dir, "memory.limit_in_bytes", none1);
	cr_assert_eq(keel__cgroup_memory_limit(&lim, file, sizeof(file)), 0);
	cr_assert_eq(lim, 512ULL << 20, "limit %llu", (unsigned long long)lim);
	snprintf(want, sizeof(want), "%s/memory/a/memory.limit_in_bytes", root);
	cr_assert_str_eq(file, want);
	/* ... and the child's own when it is less */
	write_in(dir, "memory.limit_in_bytes", "104857600\n");
	cr_assert_eq(keel__cgroup_memory_limit(&lim, file, sizeof(file)), 0);
	cr_assert_eq(lim, 100ULL << 20);
	snprintf(want, sizeof(want), "%s/memory/a/b/memory.limit_in_bytes", root);
	cr_assert_str_eq(file, want);

	/* v2: "max" at the leaf, a limit on its parent */
	fake_cgroup_of("memory", root, "cgroup2", "v2", "/", "0::/k.slice/p.scope\n");
	snprintf(dir, sizeof(dir), "%s/v2/k.slice", root);
	write_in(dir, "memory.max", "1073741824\n");
	snprintf(dir, sizeof(dir), "%s/v2/k.slice/p.scope", root);
	write_in(dir, "memory.max", "max\n");
	cr_assert_eq(keel__cgroup_memory_limit(&lim, file, sizeof(file)), 0);
	cr_assert_eq(lim, 1ULL << 30);
	/* none anywhere */
	snprintf(dir, sizeof(dir), "%s/v2/k.slice", root);
	write_in(dir, "memory.max", "max\n");
	cr_assert_eq(keel__cgroup_memory_limit(&lim, file, sizeof(file)), -ENOENT);

	/* a container's mount of its own subtree: nothing above the mount is read */
	fake_cgroup_of("memory", root, "cgroup", "c", "/docker/abc", "4:memory:/docker/abc/in\n");
	write_in(root, "memory.limit_in_bytes", "4096\n");
	snprintf(dir, sizeof(dir), "%s/c", root);
	write_in(dir, "memory.limit_in_bytes", "268435456\n");
	snprintf(dir, sizeof(dir), "%s/c/in", root);
	write_in(dir, "memory.limit_in_bytes", none1);
	cr_assert_eq(keel__cgroup_memory_limit(&lim, file, sizeof(file)), 0);
	cr_assert_eq(lim, 256ULL << 20, "limit %llu", (unsigned long long)lim);

	/* no memory hierarchy */
	keel__proc_mountinfo = "/nonexistent/mountinfo";
	cr_assert_eq(keel__cgroup_memory_limit(&lim, file, sizeof(file)), -ENOENT);
	rm_dir(root);
}

/* A runtime of @o made and destroyed, what it logged in `logged` (reset first). */
static void
create_logged(struct keel_opts *o)
{
	struct keel_runtime *rt;

	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(o, &rt), 0);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
}

/* Shards x --memory above the memory cgroup's limit is said at create, with the cgroup's
 * file and a --memory that fits: past the limit the OOM killer, not ENOMEM, ends it. */
Test(core_topo, buffer_memory_over_the_memory_cgroup_limit_is_warned_at_create)
{
	char root[] = "/tmp/keel-mcg-XXXXXX", dir[300];
	struct keel_runtime *rt;
	struct keel_opts o = test_opts(2);

	cr_assert(mkdtemp(root));
	fake_cgroup_of("memory", root, "cgroup2", "v2", "/", "0::/pod\n");
	snprintf(dir, sizeof(dir), "%s/v2/pod", root);
	write_in(dir, "memory.max", "268435456\n");
	o.memory = 256ULL << 20;
	create_logged(&o);
	cr_assert(strstr(logged, "2 shards x --memory 256 MiB = 512 MiB of buffers is more than "
				 "this process's memory cgroup allows (256 MiB, ") &&
			  strstr(logged, "v2/pod/memory.max): past that the kernel's OOM killer") &&
			  strstr(logged, "lower --memory to 128 MiB or less per shard"),
		  "%s", logged);

	/* A share below the least --memory (2 MiB) that create takes: the fix is fewer shards.
	 * It said "lower --memory to 1 MiB", which create refuses. */
	write_in(dir, "memory.max", "3145728\n");
	o.memory = 2ULL << 20;
	create_logged(&o);
	cr_assert(strstr(logged, "it holds 1 shard: lower --shards") &&
			  !strstr(logged, "lower --memory to"),
		  "%s", logged);
	write_in(dir, "memory.max", "268435456\n");

	/* within the limit, or huge pages (charged to hugetlb): nothing said */
	o.memory = 128ULL << 20;
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	keel_runtime_destroy(rt);
	o.memory = 256ULL << 20;
	o.hugepages = true;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
	cr_assert(!strstr(logged, "memory cgroup"), "%s", logged);
	rm_dir(root);
}

/* A CPU outside the affinity mask because the cgroup excludes it: taskset cannot add it,
 * so the refusal says the cgroup is why (it advised a wider mask). One the cgroup has is
 * refused as before. */
Test(core_topo, a_cpu_the_cgroup_excludes_is_refused_naming_the_cgroup)
{
	char root[] = "/tmp/keel-cg-XXXXXX", dir[300];
	struct keel_runtime *rt;
	struct keel_opts o = test_opts(0);
	struct keel_topo *t;
	struct keel_map_req r;

	cr_assert(mkdtemp(root));
	fake_cgroup(root, "cgroup2", "v2", "/", "0::/pod\n");
	snprintf(dir, sizeof(dir), "%s/v2/pod", root);
	write_in(dir, "cpuset.cpus.effective", "0\n");
	keel__sched_getaffinity = fake_affinity;
	fake_cpus[0] = 0;
	nfake = 1;

	/* the runtime's --cpuset */
	o.cpuset_given = true;
	memset(&o.cpuset, 0, sizeof(o.cpuset));
	keel_cpuset_add(&o.cpuset, 1);
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "CPU 1 is not in this process's affinity mask: its cgroup's "
				 "cpuset (") &&
			  strstr(logged, "v2/pod/cpuset.cpus.effective is 0) excludes it") &&
			  strstr(logged, "a cgroup that has it"),
		  "%s", logged);

	/* the mapper's --cpuset, and a map's shard */
	cr_assert_eq(keel_topo_load(NULL, &t, err, sizeof(err)), 0, "%s", err);
	memset(&r, 0, sizeof(r));
	keel_cpulist_parse("1", &r.cpuset, err, sizeof(err));
	r.cpuset_given = true;
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "its cgroup's cpuset") && strstr(err, "a cgroup that has it") &&
			  !strstr(err, "wider mask"),
		  "%s", err);
	keel_topo_destroy(t);
	memset(&back, 0, sizeof(back));
	back.version = KEEL_MAP_VERSION;
	back.nshards = 1;
	back.shards[0] = (struct keel_map_shard){
		.cpu = 1, .core = -1, .numa = -1, .rxq = -1, .irq_cpu = -1
	};
	if (sysconf(_SC_NPROCESSORS_ONLN) > 1) {
		cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), -EINVAL);
		cr_assert(strstr(err, "its cgroup's cpuset") && !strstr(err, "taskset -c"), "%s",
			  err);
	}

	/* A CPU that is not online is in no cgroup's set: said as missing, not blamed on the
	 * cgroup ("run the program in a cgroup that has it", which none can). */
	memset(&o.cpuset, 0, sizeof(o.cpuset));
	keel_cpuset_add(&o.cpuset, 1000);
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "CPU 1000 does not exist here (CPUs online: ") &&
			  !strstr(logged, "cgroup"),
		  "%s", logged);
	cr_assert_eq(keel_topo_load(NULL, &t, err, sizeof(err)), 0, "%s", err);
	memset(&r, 0, sizeof(r));
	keel_cpulist_parse("1000", &r.cpuset, err, sizeof(err));
	r.cpuset_given = true;
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "CPU 1000 does not exist here") && !strstr(err, "cgroup"), "%s", err);
	keel_topo_destroy(t);
	memset(&o.cpuset, 0, sizeof(o.cpuset));
	keel_cpuset_add(&o.cpuset, 1);

	/* the cgroup has CPU 1: only the mask excludes it, and taskset is the way */
	write_in(dir, "cpuset.cpus.effective", "0-1\n");
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "CPU 1 is not in this process's affinity mask") &&
			  !strstr(logged, "cgroup"),
		  "%s", logged);
	rm_dir(root);
}

/* Live: a --cpuset CPU outside the affinity mask that /sys/devices/system/cpu/isolated
 * lists (isolcpus=) is refused naming isolcpus and taskset -c, since no process has such a
 * CPU unless started on it; the same CPU, not isolated, gets the plain refusal; inside the
 * mask (a process started on it) an isolated CPU is used. The isolated list is a file of
 * the test's (keel__sys_cpu_isolated), and no cgroup is found (keel__proc_mountinfo), so
 * the cgroup clause cannot take the isolcpus one's place. */
Test(core_topo, an_isolated_cpu_outside_the_mask_is_refused_naming_isolcpus)
{
	char root[] = "/tmp/keel-iso-XXXXXX", path[300];
	struct keel_topo *live;
	struct keel_map_req r;
	cpu_set_t orig, one;

	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		cr_skip_test("needs 2 CPUs to confine the affinity mask");
	cr_assert_eq(sched_getaffinity(0, sizeof(orig), &orig), 0);
	if (!CPU_ISSET(0, &orig) || !CPU_ISSET(1, &orig))
		cr_skip_test("needs CPUs 0 and 1 in this process's affinity mask");
	cr_assert(mkdtemp(root));
	write_in(root, "isolated", "1\n");
	snprintf(path, sizeof(path), "%s/isolated", root);
	keel__sys_cpu_isolated = path;
	keel__proc_mountinfo = "/nonexistent/mountinfo";
	keel_map_req_init(&r);
	keel_cpulist_parse("1", &r.cpuset, err, sizeof(err));
	r.cpuset_given = true;

	/* started on it: CPU 1 is in the mask, isolated or not */
	cr_assert_eq(keel_topo_load(NULL, &live, err, sizeof(err)), 0, "%s", err);
	if (!keel_cpuset_has(&keel_topo_info_get(live)->present, 1)) {
		rm_dir(root);
		cr_skip_test("the live topology has no CPU 1");
	}
	cr_assert_eq(keel_map_compute(live, &r, &map, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(map.nshards, 1);
	cr_assert_eq(map.shards[0].cpu, 1);
	keel_topo_destroy(live);

	/* confined to CPU 0: the isolated CPU 1 is refused, naming isolcpus */
	CPU_ZERO(&one);
	CPU_SET(0, &one);
	cr_assert_eq(sched_setaffinity(0, sizeof(one), &one), 0);
	cr_assert_eq(keel_topo_load(NULL, &live, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(keel_map_compute(live, &r, &map, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "CPU 1 is isolated (isolcpus=") && strstr(err, "taskset -c") &&
			  strstr(err, "the allowed CPUs are 0"),
		  "%s", err);

	/* not isolated: the plain refusal, which advises a wider mask */
	write_in(root, "isolated", "\n");
	cr_assert_eq(keel_map_compute(live, &r, &map, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "CPU 1 is outside this process's affinity mask") &&
			  strstr(err, "a wider mask") && !strstr(err, "isolcpus"),
		  "%s", err);
	keel_topo_destroy(live);
	cr_assert_eq(sched_setaffinity(0, sizeof(orig), &orig), 0);
	rm_dir(root);
}

/* The runtime's own --cpuset check (keel_runtime_create, no map) names isolcpus as the
 * mapper does: for an isolated CPU outside the mask the first fix is taskset -c (then, for
 * a host started so, creating the runtime before pinning its threads), also when the list
 * names CPUs of 1024 and up. Not isolated, the plain refusal. Globals set here are the process's;
 * Criterion forks each test. */
Test(core_topo, the_runtimes_cpuset_names_isolcpus_for_an_isolated_cpu_outside_the_mask)
{
	char root[] = "/tmp/keel-iso-XXXXXX", path[300];
	struct keel_opts o = test_opts(0);
	struct keel_runtime *rt;

	cr_assert(mkdtemp(root));
	write_in(root, "isolated", "1\n");
	snprintf(path, sizeof(path), "%s/isolated", root);
	keel__sys_cpu_isolated = path;
	keel__proc_mountinfo = "/nonexistent/mountinfo";
	keel__sched_getaffinity = fake_affinity;
	fake_cpus[0] = 0;
	nfake = 1;
	o.cpuset_given = true;
	memset(&o.cpuset, 0, sizeof(o.cpuset));
	keel_cpuset_add(&o.cpuset, 1);

	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "CPU 1 is isolated (isolcpus=") && strstr(logged, "taskset -c") &&
			  strstr(logged, "create the runtime before pinning"),
		  "%s", logged);

	/* The isolated list also names a CPU past what a keel_cpuset holds (1024 and up, a
	 * big machine's): CPU 1 is still known isolated (the read's -ERANGE lost the list). */
	write_in(root, "isolated", "1,2000-2001\n");
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "CPU 1 is isolated (isolcpus="), "%s", logged);

	write_in(root, "isolated", "\n");
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "CPU 1 is not in this process's affinity mask") &&
			  strstr(logged, "pin the host's threads after") &&
			  !strstr(logged, "isolcpus"),
		  "%s", logged);
	rm_dir(root);
}

/* A node whose memory the cgroup's cpuset.mems leaves out (an XML file: its allowed nodeset)
 * is in the topology (loaded with HWLOC_TOPOLOGY_FLAG_INCLUDE_DISALLOWED), marked, and a map
 * that puts shards on its CPUs says their memory comes from elsewhere. Without the flag
 * hwloc dropped the node; with it and no mark, the map placed shards there without a word. */
Test(core_topo, a_node_whose_memory_the_cgroup_leaves_out_is_marked_and_said)
{
	struct keel_topo *t = load_gen("1 2 2 1 --nics eth0@1 --allowed-nodes 0", 0);
	const struct keel_topo_info *in = keel_topo_info_get(t);
	struct keel_map_req r;

	cr_assert_eq(in->nnuma, 2);
	for (unsigned i = 0; i < 2; i++)
		cr_assert_eq(in->numa[i].memory_allowed, in->numa[i].os == 0, "node %u: %d",
			     in->numa[i].os, in->numa[i].memory_allowed);
	req_on_cpus(&r, "eth0", NULL);
	compute_logged(t, &r);
	assert_shards_on(&map, 0, map.nshards, 1);
	cr_assert(strstr(logged, "2 shards on NUMA node 1, whose memory this process may not use "
				 "(outside the file's allowed nodeset)"),
		  "%s", logged);
	/* on node 0's CPUs (--cpuset 0-1): nothing said */
	req_on_cpus(&r, "eth0", "0-1");
	compute_logged(t, &r);
	assert_shards_on(&map, 0, map.nshards, 0);
	cr_assert(!strstr(logged, "may not use"), "%s", logged);
	keel_topo_destroy(t);
	/* A node with CPUs and no memory is in no cpuset.mems (the kernel keeps those to nodes
	 * with memory): not marked, and a map on it says nothing (a review's find) */
	t = load_gen("1 2 2 1 --nics eth0@1 --allowed-nodes 0 --no-memory 1", 0);
	in = keel_topo_info_get(t);
	for (unsigned i = 0; i < 2; i++)
		cr_assert(in->numa[i].memory_allowed, "node %u", in->numa[i].os);
	req_on_cpus(&r, "eth0", NULL);
	compute_logged(t, &r);
	assert_shards_on(&map, 0, map.nshards, 1);
	cr_assert(!strstr(logged, "may not use"), "%s", logged);
	keel_topo_destroy(t);
}

/* Live, as root on a machine with a cgroup v1 cpuset hierarchy (v2 needs the controller
 * enabled above the process, which a test should not change): a child in a cgroup of CPU
 * 0 alone asks for CPU 1. The mapper said it "does not exist on this machine" (hwloc left
 * it out); then that it was not one the process may use, and hwloc still left it out of
 * the topology (exit 6): it is in it now, not allowed. */
Test(core_topo, a_cpu_a_live_cgroup_excludes_is_not_called_missing)
{
	char file[512], dir[512], *slash, msg[1024] = "";
	struct keel_cpuset s;
	ssize_t got;
	int pfd[2], st;
	pid_t pid;
	FILE *f;

	if (geteuid() != 0)
		cr_skip_test("needs root to make a cgroup");
	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		cr_skip_test("needs 2 CPUs");
	if (keel__cgroup_cpus(&s, file, sizeof(file)) < 0 || !strstr(file, "effective_cpus") ||
	    !keel_cpuset_has(&s, 1))
		cr_skip_test("needs a cgroup v1 cpuset hierarchy with CPU 1 (%s)", file);
	slash = strrchr(file, '/');
	snprintf(dir, sizeof(dir), "%.*s/keel-test-%d", (int)(slash - file), file, (int)getpid());
	cr_assert(mkdir(dir, 0755) == 0, "%s: %s", dir, strerror(errno));
	write_in(dir, "cpuset.cpus", "0\n");
	write_in(dir, "cpuset.mems", "0\n");
	cr_assert_eq(pipe(pfd), 0);
	pid = fork();
	if (pid == 0) {
		char id[32], path[600];
		const struct keel_topo_info *in;
		struct keel_topo *t;
		struct keel_map_req r;

		close(pfd[0]);
		snprintf(path, sizeof(path), "%s/tasks", dir);
		f = fopen(path, "w");
		snprintf(id, sizeof(id), "%d\n", (int)getpid());
		if (!f || fputs(id, f) < 0 || fclose(f) != 0)
			_exit(2);
		if (keel_topo_load(NULL, &t, err, sizeof(err)) != 0)
			_exit(3);
		/* CPU 1 is in the topology, not allowed: hwloc left it out, so a NIC on its
		 * node had no local CPU and the node read memory only */
		in = keel_topo_info_get(t);
		if (!keel_cpuset_has(&in->present, 1) || keel_cpuset_has(&in->allowed, 1))
			_exit(6);
		for (unsigned i = 0; i < in->npus; i++)
			if (in->pus[i].os == 1 && in->pus[i].allowed)
				_exit(7);
		memset(&r, 0, sizeof(r));
		keel_cpulist_parse("1", &r.cpuset, err, sizeof(err));
		r.cpuset_given = true;
		if (keel_map_compute(t, &r, &map, err, sizeof(err)) != -EINVAL)
			_exit(4);
		if (write(pfd[1], err, strlen(err)) < 0)
			_exit(5);
		_exit(0);
	}
	close(pfd[1]);
	got = read(pfd[0], msg, sizeof(msg) - 1);
	close(pfd[0]);
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	rmdir(dir);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0 && got > 0, "child status %d", st);
	cr_assert(strstr(msg, "its cgroup's cpuset") && !strstr(msg, "does not exist"), "%s", msg);
}

/* A machine whose NIC is on a node whose CPUs the cgroup leaves out (the XML keeps the
 * writer's allowed set, as hwloc writes it from inside a container): node 1's CPUs are in
 * the topology, not allowed, and the map's move to node 0 is said. hwloc left them out of
 * the topology, so node 1 read "memory only (no CPUs of its own)", the NIC had no local
 * CPUs and the shards went to node 0 without a word. */
Test(core_topo, a_nodes_cpus_the_cgroup_leaves_out_are_shown_not_allowed)
{
	struct keel_topo *t = load_gen("1 2 2 1 --nics eth0@1 --allowed-cpus 0-1", 0);
	const struct keel_topo_info *in = keel_topo_info_get(t);
	const struct keel_topo_nic *n = keel_topo_nic_find(t, "eth0");
	struct keel_map_req r;
	char list[64];

	cr_assert_eq(in->npus, 4);
	cr_assert_eq(in->ncores, 4);
	cr_assert_str_eq(keel_topo_cpulist_format(&in->present, list, sizeof(list)), "0-3");
	cr_assert_str_eq(keel_topo_cpulist_format(&in->allowed, list, sizeof(list)), "0-1");
	for (unsigned i = 0; i < in->nnuma; i++) {
		cr_assert(!in->numa[i].memory_only, "node %u reads memory only", in->numa[i].os);
		cr_assert_eq(in->numa[i].ncores, 2, "node %u: %u cores", in->numa[i].os,
			     in->numa[i].ncores);
	}
	for (int c = 0; c < 4; c++)
		cr_assert_eq(pu_of(t, c)->allowed, c < 2, "CPU %d allowed: %d", c,
			     pu_of(t, c)->allowed);
	cr_assert_eq(n->numa, 1);
	cr_assert_str_eq(keel_topo_cpulist_format(&n->local, list, sizeof(list)), "2-3");

	req_on_cpus(&r, "eth0", NULL);
	compute_logged(t, &r);
	cr_assert_eq(map.nshards, 2);
	for (unsigned i = 0; i < map.nshards; i++)
		cr_assert(map.shards[i].cpu == 0 || map.shards[i].cpu == 1, "shard %u on CPU %d", i,
			  map.shards[i].cpu);
	cr_assert(strstr(logged, "no allowed CPU is local to eth0 (NUMA node 1)") &&
			  strstr(logged, "the allowed set the topology file was written with (a "
					 "cgroup's cpuset) leaves out all the node's CPUs"),
		  "%s", logged);
	keel_topo_destroy(t);
}

/* A core with more hardware threads than keel counts (KEEL_TOPO_MAX_SMT): the threads past
 * it are said at load and are not among the machine's CPUs; --cpuset of one names why.
 * They stayed in the CPUs, in no core: the report listed 20 CPUs and 16 in cores, and
 * --cpuset 8,9 said "no CPU is left for shards (allowed CPUs: 8-9)". */
Test(core_topo, threads_past_the_smt_limit_are_said_and_take_no_shard)
{
	struct keel_topo_load_opts o = { .synthetic = "core:2 pu:10" };
	const struct keel_topo_info *in;
	struct keel_topo *t;
	struct keel_map_req r;

	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_topo_load(&o, &t, err, sizeof(err)), 0, "%s", err);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(logged, "core 0 has more than 8 hardware threads") &&
			  strstr(logged, "CPU 9 takes no shard") && strstr(logged, "CPU 19"),
		  "%s", logged);
	in = keel_topo_info_get(t);
	for (unsigned c = 0; c < 20; c++)
		cr_assert_eq(keel_cpuset_has(&in->present, c), c % 10 < 8, "CPU %u", c);
	memset(&r, 0, sizeof(r));
	keel_cpulist_parse("8,9", &r.cpuset, err, sizeof(err));
	r.cpuset_given = true;
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "CPU 8 is a hardware thread of core 0 beyond the 8") &&
			  strstr(err, "pick from CPUs 0-7,10-17"),
		  "%s", err);
	keel_topo_destroy(t);
}

/* HWLOC_SYNTHETIC (or HWLOC_XMLFILE) in the environment made hwloc describe another
 * machine under "Topology of this machine": its CPUs, nodes and NICs mixed with this
 * machine's sysfs, and the runtime bound shards' memory by it. Both refuse now, naming the
 * variable and the fix; HWLOC_THISSYSTEM=1 says the description is this machine's. */
Test(core_topo, a_live_load_that_hwloc_reads_from_the_environment_is_refused_by_name)
{
	struct keel_topo *t = NULL;
	struct keel_runtime *rt = NULL;
	struct keel_opts o;

	setenv("HWLOC_SYNTHETIC", "pack:4 core:4 pu:2", 1);
	cr_assert_eq(keel_topo_load(NULL, &t, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "HWLOC_SYNTHETIC=pack:4 core:4 pu:2") &&
			  strstr(err, "HWLOC_THISSYSTEM=1"),
		  "%s", err);
	keel_opts_init(&o);
	o.shards = 1;
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	/* Said to be this machine's: taken as it is. */
	setenv("HWLOC_SYNTHETIC", "pack:1 core:1 pu:1", 1);
	setenv("HWLOC_THISSYSTEM", "1", 1);
	cr_assert_eq(keel_topo_load(NULL, &t, err, sizeof(err)), 0, "%s", err);
	keel_topo_destroy(t);
	unsetenv("HWLOC_SYNTHETIC");
	unsetenv("HWLOC_THISSYSTEM");
}

/* A machine with CPUs numbered past KEEL_MAX_CPUS (1,200 here): those take no shard, are
 * shown not allowed and are said once; they were shown allowed, and node 1's CPU list
 * ended at 1023 without a word. */
Test(core_topo, cpus_past_keel_max_cpus_are_not_allowed_and_said)
{
	struct keel_topo_load_opts o = { .synthetic = "pack:2 numa:1 core:300 pu:2" };
	struct keel_topo *t = NULL;
	const struct keel_topo_info *in;
	unsigned seen = 0;

	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_topo_load(&o, &t, err, sizeof(err)), 0, "%s", err);
	keel_log_set_sink(NULL, NULL);
	in = keel_topo_info_get(t);
	cr_assert_eq(in->npus, 1200);
	for (unsigned i = 0; i < in->npus; i++) {
		cr_assert_eq(in->pus[i].allowed, in->pus[i].os < KEEL_MAX_CPUS, "CPU %u",
			     in->pus[i].os);
		seen += in->pus[i].os >= KEEL_MAX_CPUS;
	}
	cr_assert_eq(seen, 176);
	cr_assert(strstr(logged, "176 CPUs are numbered 1024 or above"), "%s", logged);
	keel_topo_destroy(t);
}

/* --rxqs naming more queues than the NIC's node has cores for, --shards not given: the
 * shards past those cores went to the other node's cores, where their packets cross the
 * interconnect, without a word (the default map without --rxqs stops at the local cores;
 * the case with no local core at all is said above). */
Test(core_topo, rxqs_that_spill_shards_off_the_nics_node_are_said)
{
	struct keel_topo *t = load_xml("32em64t-2n8c2t-pci-normalio.xml", 16);
	struct keel_map_req r;
	unsigned off = 0;

	req_on_cpus(&r, "eth0", NULL);
	cr_assert_eq(keel_map_req_rxqs_parse(&r, "eth0:0-9", err, sizeof(err)), 0, "%s", err);
	compute_logged(t, &r);
	cr_assert_eq(map.nshards, 10);
	for (unsigned i = 0; i < map.nshards; i++)
		off += map.shards[i].numa != 1;
	cr_assert_eq(off, 2, "%u shards off node 1", off);
	cr_assert(strstr(logged, "2 of the 10 shards --rxqs asks for are on other nodes' cores "
				 "than eth0's (NUMA node 1)") &&
			  strstr(logged, "--smt allow"),
		  "%s", logged);
	/* As many queues as the node has cores: nothing said. */
	cr_assert_eq(keel_map_req_rxqs_parse(&r, "eth0:0-7", err, sizeof(err)), 0, "%s", err);
	compute_logged(t, &r);
	cr_assert(!strstr(logged, "--rxqs asks for"), "%s", logged);
	/* --numa spread: spread on purpose, not said. */
	cr_assert_eq(keel_map_req_rxqs_parse(&r, "eth0:0-9", err, sizeof(err)), 0, "%s", err);
	r.numa = KEEL_MAP_NUMA_SPREAD;
	compute_logged(t, &r);
	cr_assert(!strstr(logged, "--rxqs asks for"), "%s", logged);
	r.numa = KEEL_MAP_NUMA_LOCAL;
	/* --shards given: placed off the node on purpose, not said. */
	r.shards = 10;
	compute_logged(t, &r);
	cr_assert(!strstr(logged, "--rxqs asks for"), "%s", logged);
	keel_topo_destroy(t);
}

/* Allowed CPUs that leave out every core local to the NIC moved the default map to the
 * other node without a word (a reserve that does so is refused): now it is said. */
Test(core_topo, allowed_cpus_without_a_core_local_to_the_nic_are_said)
{
	struct keel_topo *t = load_xml("32em64t-2n8c2t-pci-normalio.xml", 0);
	struct keel_map_req r;

	req_on_cpus(&r, "eth0", "0-7");
	compute_logged(t, &r);
	cr_assert(strstr(logged, "no allowed CPU is local to eth0 (NUMA node 1)") &&
			  strstr(logged, "allow some of the node's CPUs (--cpuset"),
		  "%s", logged);
	/* The same with the queues given (--rxqs): they choose no CPU, and it was not said. */
	cr_assert_eq(keel_map_req_rxqs_parse(&r, "eth0:0-3", err, sizeof(err)), 0, "%s", err);
	compute_logged(t, &r);
	cr_assert(strstr(logged, "no allowed CPU is local to eth0 (NUMA node 1)"), "--rxqs: %s",
		  logged);
	/* With node 1's cores allowed: nothing said. */
	keel_cpulist_parse("8-15", &r.cpuset, err, sizeof(err));
	compute_logged(t, &r);
	cr_assert(!strstr(logged, "no allowed CPU is local"), "%s", logged);
	keel_topo_destroy(t);
}

/* A NIC whose local CPUs are all numbered past KEEL_MAX_CPUS (node 1 here: CPUs 1024-1027;
 * node 0 has 1020-1023): no shard can run beside it, and a CPU set cannot hold those CPUs,
 * so its local set looked empty and the map went to node 0 without a word, the warning for
 * allowed CPUs that leave out the NIC's node never firing. Now it is said, naming the
 * limit, whether or not --shards is given (no option can place a shard there). */
Test(core_topo, a_nic_whose_local_cpus_are_all_past_keel_max_cpus_is_said)
{
	struct keel_topo *t = load_gen("1 2 4 1 --pu-offset 1020 --nics eth0@1,eth1@0", 4);
	struct keel_map_req r;

	keel_map_req_init(&r);
	snprintf(r.iface, sizeof(r.iface), "eth0");
	for (int pass = 0; pass < 2; pass++) {
		r.shards = pass ? 2 : 0;
		logged[0] = 0;
		keel_log_set_sink(log_sink, NULL);
		cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), 0, "%s", err);
		keel_log_set_sink(NULL, NULL);
		cr_assert(strstr(logged, "the CPUs local to eth0 (NUMA node 1) are all numbered "
					 "1024 or above (KEEL_MAX_CPUS, keel's limit)"),
			  "--shards %u: '%s'", r.shards, logged);
		assert_shards_on(&map, 0, map.nshards, 0);
	}
	/* eth1 on node 0, whose CPUs are below the limit: nothing said */
	snprintf(r.iface, sizeof(r.iface), "eth1");
	r.shards = 0;
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), 0, "%s", err);
	keel_log_set_sink(NULL, NULL);
	cr_assert(!strstr(logged, "KEEL_MAX_CPUS"), "%s", logged);
	keel_topo_destroy(t);
}

/* ---- a default shard count capped at KEEL_MAX_SHARDS ---- */

/* A stand-in for sched_getaffinity allowing CPUs 0..many_cpus-1, more than KEEL_MAX_SHARDS
 * and fewer than KEEL_MAX_CPUS, whatever this machine has; like the kernel, it refuses a
 * mask too short for them (EINVAL), and keel__affinity_get tries a larger one. */
static unsigned many_cpus;

static int
many_affinity(pid_t pid, size_t size, cpu_set_t *mask)
{
	(void)pid;
	if (size * 8 < many_cpus) {
		errno = EINVAL;
		return -1;
	}
	memset(mask, 0, size);
	for (unsigned c = 0; c < many_cpus; c++)
		CPU_SET_S(c, size, mask);
	return 0;
}

/* No --shards on a process allowed more CPUs than a runtime has shards: the count is capped
 * at KEEL_MAX_SHARDS and a warning says which CPUs take none and what to do. The shards are
 * made at start, so a create and a destroy cost no rings or memory per shard. With --shards
 * given the same mask says nothing. */
Test(core_topo, a_default_shard_count_capped_at_keel_max_shards_says_so)
{
	struct keel_runtime *rt;
	struct keel_opts o = test_opts(0);
	char want[64];
	int r;

	keel__sched_getaffinity = many_affinity;
	many_cpus = KEEL_MAX_SHARDS + 44;
	o.memory = 2u << 20;
	o.ring_entries = 8;
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	r = keel_runtime_create(&o, &rt);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(r, 0, "%s", logged);
	cr_assert_eq(keel_runtime_shard_count(rt), KEEL_MAX_SHARDS);
	keel_runtime_destroy(rt);
	snprintf(want, sizeof(want), "%u allowed CPUs, one shard each by default", many_cpus);
	cr_assert(strstr(logged, want) && strstr(logged, "at most 256 (KEEL_MAX_SHARDS)") &&
			  strstr(logged, "--cpuset"),
		  "%s", logged);

	o.shards = 4;
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	r = keel_runtime_create(&o, &rt);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(r, 0, "%s", logged);
	cr_assert_eq(keel_runtime_shard_count(rt), 4);
	keel_runtime_destroy(rt);
	cr_assert(!strstr(logged, "KEEL_MAX_SHARDS"), "%s", logged);
}

/* irqbalance seen from a container: /proc lists the PID namespace's processes only, so the
 * host's irqbalance, which moves the IRQs all the same, was reported "not running" (and
 * the plan said "nothing to stop"). Outside the first PID namespace, none seen is unknown.
 * The namespace link is the test's (keel__proc_self_pidns). */
Test(core_topo, irqbalance_not_seen_from_a_container_is_unknown)
{
	char dir[] = "/tmp/keel-pidns-XXXXXX", link[300];
	const char *was = keel__proc_self_pidns;

	if (keel__topo_irqbalance() == KEEL_TOPO_ON)
		cr_skip_test("irqbalance runs here: seen from any namespace");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(link, sizeof(link), "%s/pid", dir);
	cr_assert_eq(symlink("pid:[4026532999]", link), 0);
	keel__proc_self_pidns = link;
	cr_assert(!keel__topo_initial_pidns());
	cr_assert_eq(keel__topo_irqbalance(), KEEL_TOPO_UNKNOWN);
	unlink(link);
	cr_assert_eq(symlink("pid:[4026531836]", link), 0);
	cr_assert(keel__topo_initial_pidns());
	cr_assert_eq(keel__topo_irqbalance(), KEEL_TOPO_OFF);
	keel__proc_self_pidns = was;
	unlink(link);
	rmdir(dir);
}

/* keel_opts_parse of @argv, then a keel_runtime_create that must be refused; what it logs
 * in logged (emptied first). */
static void
parse_create_refused(int *argc, char **argv)
{
	struct keel_opts o = test_opts(0);
	struct keel_runtime *rt;
	char msg[256] = "";

	cr_assert_eq(keel_opts_parse(&o, argc, argv, msg, sizeof(msg)), 0, "%s", msg);
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	keel_log_set_sink(NULL, NULL);
}

/* A conflict between options names where each value came from: KEEL_SHARDS or KEEL_CPUSET
 * (and KEEL_MAP) when the environment set it, the flag when the command line did. The
 * message said "--shards 4 but the map has 1 shards: drop --shards" to a user who never
 * typed --shards. */
Test(core_topo, a_map_conflict_names_the_variable_that_set_the_value)
{
	char path[128], num[16], cpu[16];
	int cpus[1] = { 0 };
	cpu_set_t mask;
	char *argv[4] = { "prog", NULL, NULL, NULL };
	int argc = 1;

	cr_assert_eq(sched_getaffinity(0, sizeof(mask), &mask), 0);
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &mask)) {
			cpus[0] = c;
			break;
		}
	tmp_path(path, sizeof(path), "envsrc");
	write_map(path, "lo", 1, cpus, 1);
	snprintf(num, sizeof(num), "%d", 4);
	snprintf(cpu, sizeof(cpu), "%d", cpus[0]);

	/* KEEL_SHARDS against the map's count */
	setenv("KEEL_SHARDS", num, 1);
	setenv("KEEL_MAP", path, 1);
	parse_create_refused(&argc, argv);
	cr_assert(strstr(logged, "KEEL_MAP ") && strstr(logged, "KEEL_SHARDS 4 but the map has") &&
			  strstr(logged, "drop KEEL_SHARDS") &&
			  !strstr(logged, ": --shards 4 but") && !strstr(logged, "drop --shards"),
		  "%s", logged);
	unsetenv("KEEL_SHARDS");

	/* KEEL_CPUSET beside the map; the map from the command line this time */
	setenv("KEEL_CPUSET", cpu, 1);
	unsetenv("KEEL_MAP");
	argv[1] = "--map";
	argv[2] = path;
	argc = 3;
	parse_create_refused(&argc, argv);
	cr_assert(strstr(logged, "KEEL_CPUSET and --map both choose the CPUs") &&
			  strstr(logged, "--map /tmp/"),
		  "%s", logged);
	unsetenv("KEEL_CPUSET");
	unlink(path);
}

/* ---- interfaces over others: bonds, VLANs, macvlans ---- */

/* A folder standing in for /sys/class/net at @root: fake0 and fake1 (the NICs of the
 * topology), vlan0 over fake0, bond0 over fake0 and fake1, bond0.7 (a VLAN) over bond0, and
 * veth0 over nothing; each with one rx queue. The kernel links a device to each device it is
 * over as lower_NAME. */
static void
fake_class_net(const char *root)
{
	static const char *const ifs[] = { "fake0", "fake1", "vlan0", "bond0", "bond0.7", "veth0" };
	static const char *const lower[][2] = {
		{ "vlan0", "fake0" },
		{ "bond0", "fake1" },
		{ "bond0", "fake0" },
		{ "bond0.7", "bond0" },
	};
	char path[512], target[128];

	for (size_t i = 0; i < sizeof(ifs) / sizeof(ifs[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s/queues/rx-0", root, ifs[i]);
		mkdirs(path);
	}
	for (size_t i = 0; i < sizeof(lower) / sizeof(lower[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s/lower_%s", root, lower[i][0], lower[i][1]);
		snprintf(target, sizeof(target), "../%s", lower[i][1]);
		cr_assert_eq(symlink(target, path), 0, "%s: %s", path, strerror(errno));
	}
}

/* Two nodes of two cores, fake0 on node 1 and fake1 on node 0, and the interfaces of
 * fake_class_net as a live load adds them (keel__sys_class_net stands in for sysfs). */
static struct keel_topo *
load_with_upper_devices(char *root)
{
	struct keel_topo *t = load_gen("1 2 2 1 --nics fake0@1,fake1@0", 2);

	cr_assert(mkdtemp(root));
	fake_class_net(root);
	keel__sys_class_net = root;
	cr_assert_eq(keel__topo_sysfs_virtual(t), 0);
	cr_assert_not_null(keel_topo_nic_find(t, "vlan0"));
	return t;
}

/* A VLAN, bond or macvlan has no PCI device and so counted as virtual: local to every CPU,
 * its shards went to node 0 (hwloc's first cores) while its packets arrive on fake0's
 * queues on node 1, and its own queues are software ones no IRQ or RSS table serves. The
 * map is refused, naming the interfaces beneath it (through a VLAN over a bond too) to plan
 * with; one over nothing (veth) is mapped as before. */
Test(core_topo, an_interface_over_another_is_refused_naming_the_nic_beneath)
{
	char root[] = "/tmp/keel-net-XXXXXX";
	struct keel_topo *t = load_with_upper_devices(root);
	int r;

	r = compute(t, "vlan0", 0, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map);
	cr_assert_eq(r, -EINVAL, "vlan0: %d, %u shards from node %d (%s)", r, map.nshards,
		     map.nshards ? map.shards[0].numa : -1, err);
	cr_assert(strstr(err, "vlan0 is over fake0") && strstr(err, "plan with --iface fake0"),
		  "%s", err);
	r = compute(t, "bond0", 0, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map);
	cr_assert_eq(r, -EINVAL, "bond0: %d (%s)", r, err);
	cr_assert(strstr(err, "bond0 is over fake0, fake1") &&
			  strstr(err, "plan with --iface fake0 (or each"),
		  "%s", err);
	r = compute(t, "bond0.7", 0, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map);
	cr_assert_eq(r, -EINVAL, "bond0.7: %d (%s)", r, err);
	cr_assert(strstr(err, "bond0.7 is over fake0, fake1"), "%s", err);
	/* veth0 is over nothing: a virtual interface, mapped on every CPU as before */
	cr_assert_eq(compute(t, "veth0", 0, KEEL_MAP_SMT_AVOID, KEEL_MAP_NUMA_LOCAL, 0, &map), 0,
		     "%s", err);
	keel_topo_destroy(t);
	rm_dir(root);
}

/* --check of a map on such an interface (an older keel-topo's, or one written by hand):
 * its queues have no IRQs, so nothing was checked and it passed. Now a mismatch naming the
 * interface to plan with. */
Test(core_topo, check_of_a_map_on_an_interface_over_another_names_the_nic_beneath)
{
	char root[] = "/tmp/keel-net-XXXXXX";
	struct keel_topo *t = load_with_upper_devices(root);
	char *out;
	int n;

	t->info.live = true; /* keel_map_check reads the live machine; sysfs is the test's */
	memset(&map, 0, sizeof(map));
	map.version = KEEL_MAP_VERSION;
	snprintf(map.iface, sizeof(map.iface), "vlan0");
	map.numa = -1;
	map.rx_queues = 1;
	map.nshards = 1;
	map.shards[0] =
		(struct keel_map_shard){ .cpu = 0, .core = -1, .numa = -1, .rxq = 0, .irq_cpu = 0 };
	out = check_output(t, &n);
	cr_assert_geq(n, 1, "%d: %s", n, out);
	cr_assert(strstr(out, "vlan0 is over fake0") && strstr(out, "--iface fake0"), "%s", out);
	free(out);
	keel_topo_destroy(t);
	rm_dir(root);
}

/* --iface bond0 without --map: the runtime's check of its queues found a virtual interface
 * (no device link) and said nothing, while the queues and IRQs its packets arrive on are
 * fake0's and fake1's. Now a warning names them and that --iface should name one. A VLAN
 * over one NIC names that one; veth (over nothing) is still not warned about. */
Test(core_topo, runtime_with_an_iface_over_others_names_the_nics_beneath)
{
	char root[] = "/tmp/keel-net-XXXXXX";
	struct keel_topo *t = load_with_upper_devices(root);
	struct keel_runtime *rt;
	struct keel_opts o = test_opts(1);

	keel_topo_destroy(t); /* the runtime loads its own; the folder stays */
	snprintf(o.iface, sizeof(o.iface), "bond0");
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0, "%s", logged);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
	cr_assert(strstr(logged, "--iface bond0 is over fake0, fake1") &&
			  strstr(logged, "queue and IRQ alignment give --iface one of them") &&
			  strstr(logged, "keel-topo --plan --iface fake0"),
		  "logged: '%s'", logged);
	snprintf(o.iface, sizeof(o.iface), "vlan0");
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0, "%s", logged);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
	cr_assert(strstr(logged, "--iface vlan0 is over fake0 (") &&
			  strstr(logged, "the queues of that interface"),
		  "logged: '%s'", logged);
	snprintf(o.iface, sizeof(o.iface), "veth0");
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0, "%s", logged);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
	cr_assert_null(strstr(logged, "is over"), "%s", logged);
	rm_dir(root);
}

/* A map on an interface over others, loaded by the runtime: its check read the queue count
 * from sysfs and not the lower_NAME links keel_topo_load reads, so vlan0's one software queue
 * passed and the runtime started, while keel-topo --check (through the topology) refused the
 * same map. Now the runtime's check reads them from the same place (keel__sys_class_net,
 * here the test's folder) and refuses it, naming the NIC beneath. */
Test(core_topo, runtime_refuses_a_map_on_an_interface_over_another)
{
	char root[] = "/tmp/keel-net-XXXXXX", path[128];
	struct keel_topo *t = load_with_upper_devices(root);
	struct keel_runtime *rt = NULL;
	struct keel_opts o = test_opts(0);
	int cpu0 = 0, r;

	keel_topo_destroy(t);
	tmp_path(path, sizeof(path), "over");
	write_map(path, "bond0.7", 1, &cpu0, 1);
	cr_assert_eq(keel_map_load(path, &back, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), -EINVAL, "bond0.7 passed");
	cr_assert(strstr(err, "bond0.7 is over fake0, fake1") && strstr(err, "--iface fake0"), "%s",
		  err);
	write_map(path, "vlan0", 1, &cpu0, 1);
	o.map_path = path;
	logged[0] = 0;
	keel_log_set_sink(log_sink, NULL);
	r = keel_runtime_create(&o, &rt);
	keel_log_set_sink(NULL, NULL);
	if (r == 0)
		keel_runtime_destroy(rt);
	cr_assert_eq(r, -EINVAL, "a map on vlan0 started: %d, logged '%s'", r, logged);
	cr_assert(strstr(logged, "vlan0 is over fake0") && strstr(logged, "--iface fake0"), "%s",
		  logged);
	/* the NIC beneath is a map's interface as before */
	write_map(path, "fake0", 1, &cpu0, 1);
	cr_assert_eq(keel_map_load(path, &back, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(keel_map_validate(&back, err, sizeof(err)), 0, "%s", err);
	unlink(path);
	rm_dir(root);
}

/* A NIC the firmware gives no NUMA node (numa_node -1, no _PXM: hwloc hangs it off the
 * machine, local to every CPU), on two packages of four cores with four queues: the default
 * map's shards all went to package 0's node, in hwloc's order, which may be the far socket,
 * without a word. Now a warning names the nodes the shards are on and the fixes; with
 * --cpuset on one node there is no guess to warn about. */
Test(core_topo, a_nic_of_no_one_node_spanning_nodes_is_said)
{
	struct keel_topo *t = load_gen("2 1 4 1 --nics eth0@root", 4);
	struct keel_map_req r;

	cr_assert_eq(keel_topo_nic_find(t, "eth0")->numa, -1);
	req_on_cpus(&r, "eth0", NULL);
	compute_logged(t, &r);
	cr_assert_eq(map.nshards, 4);
	assert_shards_on(&map, 0, 4, 0);
	cr_assert(strstr(logged, "eth0 has no NUMA node of its own") &&
			  strstr(logged, "nodes 0, 1") &&
			  strstr(logged, "the shards are on node 0") &&
			  strstr(logged, "--cpuset") && strstr(logged, "_PXM"),
		  "logged: '%s'", logged);
	/* --cpuset on node 1's CPUs: the shards are where the user put them */
	req_on_cpus(&r, "eth0", "4-7");
	compute_logged(t, &r);
	assert_shards_on(&map, 0, 4, 1);
	cr_assert(!strstr(logged, "no NUMA node of its own"), "%s", logged);
	keel_topo_destroy(t);
}
