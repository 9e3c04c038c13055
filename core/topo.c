// SPDX-License-Identifier: MIT
/* Topology discovery with hwloc: packages, NUMA nodes, cores, SMT siblings, caches and the
 * PCI locality of each NIC; live facts (queues, IRQs) come from topo_sysfs.c. */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hwloc.h>

#include "../alloc/numa_local.h"
#include "internal.h"
#include "topo_internal.h"

const char *
keel_topo_state_name(enum keel_topo_state s)
{
	switch (s) {
	case KEEL_TOPO_OFF:
		return "off";
	case KEEL_TOPO_ON:
		return "on";
	default:
		return "unknown";
	}
}

char *
keel_topo_cpulist_format(const struct keel_cpuset *s, char *buf, size_t len)
{
	char full[8192]; /* 1024 CPUs, every other one: < 4 KiB */
	size_t off = 0, cut;

	if (!len)
		return buf;
	full[0] = 0;
	for (unsigned c = 0; c < KEEL_MAX_CPUS; c++) {
		unsigned e = c;
		int n;

		if (!keel_cpuset_has(s, c))
			continue;
		while (e + 1 < KEEL_MAX_CPUS && keel_cpuset_has(s, e + 1))
			e++;
		if (e == c)
			n = snprintf(full + off, sizeof(full) - off, "%s%u", off ? "," : "", c);
		else
			n = snprintf(full + off, sizeof(full) - off, "%s%u-%u", off ? "," : "", c,
				     e);
		if (n < 0 || (size_t)n >= sizeof(full) - off)
			break;
		off += (size_t)n;
		c = e;
	}
	if (off < len) {
		memcpy(buf, full, off + 1);
		return buf;
	}
	/* Too long: cut at an element boundary and say so, never in the middle of a number
	 * ("0,2,4,38" would name a CPU that is not in the set). */
	cut = off;
	while (cut > 0 && (full[cut] != ',' || cut + 5 > len))
		cut--;
	if (cut > 0)
		snprintf(buf, len, "%.*s,...", (int)cut, full);
	else
		snprintf(buf, len, "%s", len >= 4 ? "..." : "");
	return buf;
}

/* @b into @out; returns how many of its CPUs are numbered past what @out holds
 * (KEEL_MAX_CPUS), which are left out. */
static unsigned
cpuset_from_hwloc(hwloc_const_bitmap_t b, struct keel_cpuset *out)
{
	unsigned beyond = 0;
	int i;

	memset(out, 0, sizeof(*out));
	hwloc_bitmap_foreach_begin(i, b)
	{
		if ((unsigned)i < KEEL_MAX_CPUS)
			keel_cpuset_add(out, (unsigned)i);
		else
			beyond++;
	}
	hwloc_bitmap_foreach_end();
	return beyond;
}

struct keel_topo_nic *
keel__topo_nic_add(struct keel_topo *t)
{
	struct keel_topo_nic *n;

	if (t->info.nnics == t->nics_cap) {
		unsigned cap = t->nics_cap ? t->nics_cap * 2 : 8;
		struct keel_topo_nic *nv = realloc(t->nics, cap * sizeof(*nv));
		if (!nv)
			return NULL;
		t->nics = nv;
		t->nics_cap = cap;
		t->info.nics = nv;
	}
	n = &t->nics[t->info.nnics++];
	memset(n, 0, sizeof(*n));
	n->numa = -1;
	n->nrxq = n->ntxq = -1;
	n->ch_rx = n->ch_tx = n->ch_combined = -1;
	n->ch_max_rx = n->ch_max_tx = n->ch_max_combined = -1;
	n->ring_rx = -1;
	n->hds_thresh = -1;
	return n;
}

/* The kind of @node as load_cpus read it once: @arg, by hwloc's logical index. */
static bool
kind_cached(hwloc_obj_t node, void *arg)
{
	return ((const bool *)arg)[node->logical_index];
}

/* The NUMA node of the CPUs @set (keel__numa_pick: a node with CPUs before a memory-only one,
 * then the narrowest, then the lowest number), or -1. The first node in hwloc's order was
 * taken: a memory-only node attached before the DRAM one, as hwloc orders them, got the
 * cores. */
static int
numa_of_cpuset(const bool *kind, hwloc_topology_t h, hwloc_const_cpuset_t set)
{
	hwloc_obj_t node = keel__numa_pick(h, set, kind_cached, (void *)kind);

	return node ? (int)node->os_index : -1;
}

static int
load_cpus(struct keel_topo *t, hwloc_topology_t h)
{
	bool here = t->info.live && hwloc_topology_is_thissystem(h);
	int nnuma = hwloc_get_nbobjs_by_type(h, HWLOC_OBJ_NUMANODE);
	int ncores = hwloc_get_nbobjs_by_type(h, HWLOC_OBJ_CORE);
	int npus = hwloc_get_nbobjs_by_type(h, HWLOC_OBJ_PU);
	bool pu_cores = ncores <= 0; /* no core level: every PU is a core of its own */
	hwloc_obj_t o = NULL;
	unsigned k = 0, beyond = 0;
	bool *kind; /* each node's kind (keel__numa_memory_kind), by logical index */

	if (npus <= 0)
		return -EINVAL;
	if (pu_cores)
		ncores = npus;
	if (nnuma < 0)
		nnuma = 0;
	t->numa = calloc((size_t)nnuma + 1, sizeof(*t->numa));
	t->cores = calloc((size_t)ncores, sizeof(*t->cores));
	t->pus = calloc((size_t)npus, sizeof(*t->pus));
	kind = calloc((size_t)nnuma + 1, sizeof(*kind));
	if (!t->numa || !t->cores || !t->pus || !kind) {
		free(kind);
		return -ENOMEM;
	}
	t->info.npackages = (unsigned)hwloc_get_nbobjs_by_type(h, HWLOC_OBJ_PACKAGE);
	if (!t->info.npackages)
		t->info.npackages = 1;

	while ((o = hwloc_get_next_obj_by_type(h, HWLOC_OBJ_NUMANODE, o))) {
		struct keel_topo_numa *n = &t->numa[k++];
		n->os = o->os_index;
		n->memory_bytes = o->attr ? o->attr->numanode.local_memory : 0;
		cpuset_from_hwloc(o->cpuset, &n->cpus);
		/* In the topology either way (HWLOC_TOPOLOGY_FLAG_INCLUDE_DISALLOWED), said. A
		 * node without memory of its own (CPUs only) is in no cpuset.mems, which the
		 * kernel keeps to nodes with memory: nothing of it to allow. */
		n->memory_allowed =
			hwloc_bitmap_isset(hwloc_topology_get_allowed_nodeset(h), o->os_index) ||
			!n->memory_bytes;
		kind[o->logical_index] = keel__numa_memory_kind(o, here);
	}
	t->info.nnuma = k;

	for (int c = 0; c < ncores; c++) {
		struct keel_topo_core *core = &t->cores[c];
		hwloc_obj_t co = hwloc_get_obj_by_type(h, pu_cores ? HWLOC_OBJ_PU : HWLOC_OBJ_CORE,
						       (unsigned)c);
		hwloc_obj_t pkg = hwloc_get_ancestor_obj_by_type(h, HWLOC_OBJ_PACKAGE, co);
		hwloc_obj_t pu = NULL;

		core->package = pkg ? pkg->logical_index : 0;
		core->numa = numa_of_cpuset(kind, h, co->cpuset);
		for (hwloc_obj_t p = co->parent; p; p = p->parent) {
			if (p->type == HWLOC_OBJ_L2CACHE && !core->l2_bytes)
				core->l2_bytes = p->attr->cache.size;
			if (p->type == HWLOC_OBJ_L3CACHE && !core->l3_bytes)
				core->l3_bytes = p->attr->cache.size;
		}
		while ((pu = hwloc_get_next_obj_inside_cpuset_by_type(h, co->cpuset, HWLOC_OBJ_PU,
								      pu))) {
			struct keel_topo_pu *kp = &t->pus[pu->logical_index];
			kp->os = pu->os_index;
			kp->core = (unsigned)c;
			kp->smt = core->npus;
			if (core->npus >= KEEL_TOPO_MAX_SMT) {
				/* Not a CPU keel can place a shard on: said, and left out of
				 * the machine's CPUs, so no option can name it (it stayed in
				 * them, in no core, and --cpuset of it found no CPU left). */
				keel_log(KEEL_LOG_WARN, "topo",
					 "core %d has more than %d hardware threads "
					 "(KEEL_TOPO_MAX_SMT, keel's limit): CPU %u takes no shard",
					 c, KEEL_TOPO_MAX_SMT, pu->os_index);
				kp->allowed = false;
				continue;
			}
			/* A CPU numbered past what a CPU set holds is in no set keel keeps (the
			 * machine's, a node's, the allowed ones): it was shown allowed, and the
			 * node's list ended at 1023 without a word. */
			kp->allowed = pu->os_index < KEEL_MAX_CPUS;
			if (!kp->allowed)
				beyond++;
			keel_cpuset_add(&t->info.present, pu->os_index);
			core->pus[core->npus++] = pu->os_index;
		}
		for (unsigned i = 0; i < t->info.nnuma; i++)
			if (core->numa >= 0 && t->numa[i].os == (unsigned)core->numa)
				t->numa[i].ncores++;
	}
	if (beyond)
		keel_log(
			KEEL_LOG_WARN, "topo",
			"%u CPUs are numbered %d or above (KEEL_MAX_CPUS, keel's limit): they take "
			"no shard, and the CPU lists shown stop at %d",
			beyond, KEEL_MAX_CPUS, KEEL_MAX_CPUS - 1);
	/* Memory only, as keel sees it: a node that no core belongs to (a node of the kind whose
	 * cores, by hwloc's guess, are its own still has them; a CXL node without a subtype that
	 * no core chose is memory only). */
	for (unsigned i = 0; i < t->info.nnuma; i++)
		t->numa[i].memory_only = t->numa[i].ncores == 0;
	free(kind);
	t->info.ncores = (unsigned)ncores;
	t->info.npus = (unsigned)npus;
	return 0;
}

/* hwloc's NUMA latency matrix, by the position of each node in t->numa: the mapper orders
 * the nodes off the NIC's by it. None (a file or machine without one, or no memory) leaves
 * t->numa_dist NULL: not an error, the mapper then orders by package. */
static void
load_distances(struct keel_topo *t, hwloc_topology_t h)
{
	struct hwloc_distances_s *d = NULL;
	unsigned nr = 1, n = t->info.nnuma;

	if (n < 2 ||
	    hwloc_distances_get_by_type(h, HWLOC_OBJ_NUMANODE, &nr, &d,
					HWLOC_DISTANCES_KIND_MEANS_LATENCY, 0) < 0 ||
	    !nr)
		return;
	t->numa_dist = calloc((size_t)n * n, sizeof(*t->numa_dist));
	for (unsigned i = 0; t->numa_dist && i < d->nbobjs; i++)
		for (unsigned j = 0; j < d->nbobjs; j++) {
			int a = -1, b = -1;

			for (unsigned k = 0; k < n; k++) {
				if (t->numa[k].os == d->objs[i]->os_index)
					a = (int)k;
				if (t->numa[k].os == d->objs[j]->os_index)
					b = (int)k;
			}
			if (a >= 0 && b >= 0)
				t->numa_dist[(unsigned)a * n + (unsigned)b] =
					d->values[i * d->nbobjs + j];
		}
	hwloc_distances_release(h, d);
}

uint64_t
keel__topo_numa_distance(const struct keel_topo *t, int from, int to)
{
	int a = -1, b = -1;

	if (!t->numa_dist || from < 0 || to < 0)
		return 0;
	for (unsigned k = 0; k < t->info.nnuma; k++) {
		if (t->numa[k].os == (unsigned)from)
			a = (int)k;
		if (t->numa[k].os == (unsigned)to)
			b = (int)k;
	}
	if (a < 0 || b < 0)
		return 0;
	return t->numa_dist[(unsigned)a * t->info.nnuma + (unsigned)b];
}

/* A NIC's local CPUs and NUMA node: those of its nearest non-I/O ancestor. The node is the
 * one node of that ancestor, not counting memory-only nodes attached beside it (HBM, CXL: no
 * core belongs to them; the NIC's node read "not one node" on such machines); -1 when it has
 * several. */
static void
nic_locality(const struct keel_topo *t, hwloc_topology_t h, hwloc_obj_t io, struct keel_topo_nic *n)
{
	hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(h, io);
	int found = -1, count = 0;

	if (!anc)
		return;
	/* CPUs past the limit are local too: said (report, mapper), not dropped silently. */
	n->local_beyond = cpuset_from_hwloc(anc->cpuset, &n->local) > 0;
	if (!anc->nodeset || hwloc_bitmap_iszero(anc->nodeset))
		return;
	if (hwloc_bitmap_weight(anc->nodeset) == 1) {
		n->numa = hwloc_bitmap_first(anc->nodeset);
		return;
	}
	for (unsigned i = 0; i < t->info.nnuma; i++)
		if (hwloc_bitmap_isset(anc->nodeset, t->numa[i].os) && !t->numa[i].memory_only) {
			found = (int)t->numa[i].os;
			count++;
		}
	if (count == 1)
		n->numa = found;
}

static void
pci_busid(hwloc_obj_t pci, char *buf, size_t len)
{
	snprintf(buf, len, "%04x:%02x:%02x.%01x", pci->attr->pcidev.domain, pci->attr->pcidev.bus,
		 pci->attr->pcidev.dev, pci->attr->pcidev.func);
}

static int
load_nics(struct keel_topo *t, hwloc_topology_t h)
{
	hwloc_obj_t o = NULL;

	/* Network interfaces, with the PCI function they sit on. */
	while ((o = hwloc_get_next_osdev(h, o))) {
		struct keel_topo_nic *n;
		const char *model;

		if (o->attr->osdev.type != HWLOC_OBJ_OSDEV_NETWORK || !o->name)
			continue;
		n = keel__topo_nic_add(t);
		if (!n)
			return -ENOMEM;
		keel__topo_strcpy(n->name, sizeof(n->name), o->name);
		n->netdev = true;
		if (o->parent && o->parent->type == HWLOC_OBJ_PCI_DEVICE) {
			pci_busid(o->parent, n->pci, sizeof(n->pci));
			model = hwloc_obj_get_info_by_name(o->parent, "PCIDevice");
			if (model)
				keel__topo_strcpy(n->model, sizeof(n->model), model);
		}
		nic_locality(t, h, o, n);
	}
	/* Ethernet PCI functions without an interface (SR-IOV VFs, functions bound to vfio or
	 * to no driver): an operator may still place work by their locality. */
	o = NULL;
	while ((o = hwloc_get_next_pcidev(h, o))) {
		struct keel_topo_nic *n;
		bool has_net = false;
		const char *model;

		if ((o->attr->pcidev.class_id >> 8) != 0x02)
			continue;
		for (hwloc_obj_t c = o->io_first_child; c; c = c->next_sibling)
			if (c->type == HWLOC_OBJ_OS_DEVICE &&
			    c->attr->osdev.type == HWLOC_OBJ_OSDEV_NETWORK)
				has_net = true;
		if (has_net)
			continue;
		n = keel__topo_nic_add(t);
		if (!n)
			return -ENOMEM;
		pci_busid(o, n->pci, sizeof(n->pci));
		keel__topo_strcpy(n->name, sizeof(n->name), n->pci);
		model = hwloc_obj_get_info_by_name(o, "PCIDevice");
		if (model)
			keel__topo_strcpy(n->model, sizeof(n->model), model);
		nic_locality(t, h, o, n);
	}
	return 0;
}

static void
load_allowed(struct keel_topo *t)
{
	struct keel_cpuset mask;
	char why[256] = "";

	/* The source's allowed CPUs (a cgroup's cpuset, an XML file's allowed set), then, live,
	 * the affinity mask within them (an XML file has no mask). */
	for (unsigned w = 0; w < KEEL_MAX_CPUS / 64; w++)
		t->info.allowed.bits[w] = t->info.present.bits[w] & t->hw_allowed.bits[w];
	if (t->info.live && keel__affinity_get(&mask, NULL, why, sizeof(why)) < 0)
		/* Not fatal for a report, but the map may then use CPUs the process cannot. */
		keel_log(KEEL_LOG_WARN, "topo",
			 "%s; the map assumes every CPU of the cgroup's cpuset is allowed, so "
			 "check it with keel-topo --check before use",
			 why);
	else if (t->info.live)
		for (unsigned w = 0; w < KEEL_MAX_CPUS / 64; w++)
			t->info.allowed.bits[w] &= mask.bits[w];
	for (unsigned i = 0; i < t->info.npus; i++)
		t->pus[i].allowed = keel_cpuset_has(&t->info.allowed, t->pus[i].os);
}

int
keel__topo_not_here(hwloc_topology_t h, char *err, size_t errlen)
{
	/* The variables that make hwloc describe something other than this machine. */
	static const char *const vars[] = {
		"HWLOC_XMLFILE", "HWLOC_SYNTHETIC",  "HWLOC_THISSYSTEM",
		"HWLOC_FSROOT",  "HWLOC_CPUID_PATH", "HWLOC_COMPONENTS"
	};
	char set[512] = "";
	size_t n = 0;

	if (hwloc_topology_is_thissystem(h))
		return 0;
	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
		const char *v = getenv(vars[i]);
		int w;

		if (!v || n >= sizeof(set))
			continue;
		w = snprintf(set + n, sizeof(set) - n, "%s %s=%s", n ? "," : "", vars[i], v);
		if (w > 0)
			n += (size_t)w;
	}
	return keel__errf(err, errlen, -EINVAL,
			  "hwloc read another description than this machine's%s%s%s: its CPUs, "
			  "NUMA nodes and NICs are not this machine's; unset %s, or set "
			  "HWLOC_THISSYSTEM=1 if it describes this machine (to look at another "
			  "machine: keel-topo --xml or --synthetic)",
			  n ? " (the environment sets" : "", set, n ? ")" : "",
			  n ? "those variables" : "what makes hwloc do so");
}

int
keel_topo_load(const struct keel_topo_load_opts *o, struct keel_topo **out, char *err,
	       size_t errlen)
{
	struct keel_topo *t;
	hwloc_topology_t h;
	const char *xml = o && o->xml && *o->xml ? o->xml : NULL;
	const char *syn = o && o->synthetic && *o->synthetic ? o->synthetic : NULL;
	int r;

	if (xml && syn)
		return keel__errf(
			err, errlen, -EINVAL,
			"--xml and --synthetic both given: pick one description of the machine");
	if (xml) {
		struct stat st;
		if (stat(xml, &st) < 0)
			return keel__errf(err, errlen, -errno,
					  "cannot read hwloc XML '%s': %s (check the path)", xml,
					  strerror(errno));
	}
	t = calloc(1, sizeof(*t));
	if (!t)
		return keel__errf(err, errlen, -ENOMEM, "reading the topology: out of memory");
	if (hwloc_topology_init(&h) < 0) {
		free(t);
		return keel__errf(err, errlen, -ENOMEM, "hwloc_topology_init failed");
	}
	/* Keep PCI devices and network interfaces so NICs have a locality. */
	hwloc_topology_set_io_types_filter(h, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
	/* The linux component reads the PCI tree from sysfs by itself. The libpciaccess one
	 * ("pci") adds only device names and leaks on every load (LeakSanitizer sees it);
	 * GPU components cost start-up time for nothing a NIC map needs. */
	hwloc_topology_set_components(h, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, "pci");
	hwloc_topology_set_components(h, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, "opencl");
	hwloc_topology_set_components(h, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, "gl");
	/* CPUs outside the cgroup's cpuset (or an XML file's allowed set) stay in, marked not
	 * allowed (load_allowed): without the flag hwloc drops them, and a node whose CPUs
	 * are all outside read "memory only", its NIC with no local CPU, so the map moved off
	 * the NIC's node without a word. */
	hwloc_topology_set_flags(h, HWLOC_TOPOLOGY_FLAG_INCLUDE_DISALLOWED);
	t->info.live = !xml && !syn;
	if (xml) {
		snprintf(t->info.source, sizeof(t->info.source), "xml %s", xml);
		if (hwloc_topology_set_xml(h, xml) < 0) {
			r = keel__errf(
				err, errlen, -EINVAL,
				"hwloc cannot use '%s' as XML: %s (check it with: lstopo-no-graphics "
				"--input %s)",
				xml, strerror(errno), xml);
			goto err_h;
		}
	} else if (syn) {
		snprintf(t->info.source, sizeof(t->info.source), "synthetic %s", syn);
		if (hwloc_topology_set_synthetic(h, syn) < 0) {
			r = keel__errf(
				err, errlen, -EINVAL,
				"hwloc rejects the synthetic description '%s' (expected e.g. "
				"\"pack:2 numa:2 core:8 pu:2\")",
				syn);
			goto err_h;
		}
	} else {
		snprintf(t->info.source, sizeof(t->info.source), "this machine");
	}
	if (hwloc_topology_load(h) < 0) {
		/* An XML file is parsed here, not when it is named: its faults show now. */
		if (xml)
			r = keel__errf(
				err, errlen, -EINVAL,
				"hwloc could not load %s: %s (an XML topology file: check it "
				"with lstopo-no-graphics --input %s, or write a new one with "
				"lstopo-no-graphics --of xml FILE)",
				t->info.source, strerror(errno), xml);
		else
			r = keel__errf(err, errlen, -EINVAL, "hwloc could not load %s: %s",
				       t->info.source, strerror(errno));
		goto err_h;
	}
	/* A live load that is not of this machine (HWLOC_XMLFILE or HWLOC_SYNTHETIC in the
	 * environment) mixed another machine's CPUs, nodes and NICs with this one's sysfs. */
	if (t->info.live && (r = keel__topo_not_here(h, err, errlen)) < 0)
		goto err_h;
	if (t->info.live) {
		if (gethostname(t->info.host, sizeof(t->info.host)) < 0)
			t->info.host[0] = 0;
		t->info.host[sizeof(t->info.host) - 1] = 0;
	} else {
		const char *hn = hwloc_obj_get_info_by_name(hwloc_get_root_obj(h), "HostName");
		if (hn)
			keel__topo_strcpy(t->info.host, sizeof(t->info.host), hn);
	}
	r = load_cpus(t, h);
	if (r == 0) {
		load_distances(t, h);
		r = load_nics(t, h);
	}
	if (r < 0) {
		keel__errf(err, errlen, r, "reading the topology of %s failed: %s", t->info.source,
			   strerror(-r));
		goto err_h;
	}
	cpuset_from_hwloc(hwloc_topology_get_allowed_cpuset(h), &t->hw_allowed);
	cpuset_from_hwloc(hwloc_topology_get_complete_cpuset(h), &t->hw_complete);
	hwloc_topology_destroy(h);
	load_allowed(t);
	t->info.irqbalance = KEEL_TOPO_UNKNOWN;
	if (t->info.live) {
		r = keel__topo_sysfs_virtual(t);
		if (r < 0) {
			keel__errf(err, errlen, r, "listing network interfaces failed: %s",
				   strerror(-r));
			keel_topo_destroy(t);
			return r;
		}
		for (unsigned i = 0; i < t->info.nnics; i++)
			keel__topo_sysfs_nic(&t->nics[i]);
		t->info.irqbalance = keel__topo_irqbalance();
	} else {
		for (unsigned i = 0; i < t->info.nnics; i++) {
			struct keel_topo_nic *n = &t->nics[i];
			/* A PCI function without an interface has no queues to give (as live,
			 * and as the report and the mapper take it). */
			if (!o->queues || !n->netdev)
				continue;
			n->nrxq = n->ntxq = (int)o->queues;
			n->rxq = calloc(o->queues, sizeof(*n->rxq));
			if (!n->rxq) {
				keel_topo_destroy(t);
				return keel__errf(err, errlen, -ENOMEM,
						  "%u rx queues per interface: out of memory",
						  o->queues);
			}
			for (unsigned q = 0; q < o->queues; q++) {
				n->rxq[q].index = q;
				n->rxq[q].irq = -1;
			}
		}
	}
	t->info.numa = t->numa;
	t->info.cores = t->cores;
	t->info.pus = t->pus;
	t->info.nics = t->nics;
	*out = t;
	return 0;
err_h:
	hwloc_topology_destroy(h);
	keel_topo_destroy(t);
	return r;
}

void
keel_topo_destroy(struct keel_topo *t)
{
	if (!t)
		return;
	for (unsigned i = 0; i < t->info.nnics; i++)
		free(t->nics[i].rxq);
	free(t->nics);
	free(t->numa);
	free(t->cores);
	free(t->pus);
	free(t->numa_dist);
	free(t);
}

const struct keel_topo_info *
keel_topo_info_get(const struct keel_topo *t)
{
	return &t->info;
}

/* "88:00.1" and "0000:88:00.1" name the same function. */
static bool
pci_match(const char *busid, const char *name)
{
	if (!*busid)
		return false;
	if (!strcasecmp(busid, name))
		return true;
	return strlen(name) == 7 && !strcasecmp(busid + 5, name);
}

unsigned
keel_topo_pci_ifaces(const struct keel_topo *t, const char *pci, char *buf, size_t len)
{
	size_t off = 0;
	unsigned n = 0;

	if (len)
		buf[0] = 0;
	for (unsigned i = 0; i < t->info.nnics; i++) {
		const struct keel_topo_nic *c = &t->nics[i];
		int w;

		if (!pci[0] || strcmp(c->pci, pci) || !c->name[0])
			continue;
		n++;
		if (off >= len)
			continue;
		w = snprintf(buf + off, len - off, "%s%s", off ? ", " : "", c->name);
		if (w > 0 && (size_t)w < len - off)
			off += (size_t)w;
		else
			buf[off] = 0; /* cut at a whole name */
	}
	return n;
}

const struct keel_topo_nic *
keel_topo_nic_find(const struct keel_topo *t, const char *name)
{
	if (!name || !*name)
		return NULL;
	for (unsigned i = 0; i < t->info.nnics; i++)
		if (!strcmp(t->nics[i].name, name))
			return &t->nics[i];
	for (unsigned i = 0; i < t->info.nnics; i++)
		if (pci_match(t->nics[i].pci, name))
			return &t->nics[i];
	return NULL;
}
