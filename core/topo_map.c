// SPDX-License-Identifier: MIT
/* The core/queue map: computing it from a topology and a request, checking it against the
 * live machine, and applying a map file to the runtime's CPU list (--map FILE). */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"
#include "topo_internal.h"

void
keel_map_req_init(struct keel_map_req *r)
{
	memset(r, 0, sizeof(*r));
}

int
keel_map_req_rxqs_parse(struct keel_map_req *r, const char *s, char *err, size_t errlen)
{
	const char *colon = strrchr(s, ':'), *p;
	size_t iflen;
	unsigned n = 0;

	/* The last colon separates IF from LIST, so a PCI bus id can name the NIC. */
	if (!colon || colon == s || !colon[1])
		return keel__errf(err, errlen, -EINVAL,
				  "--rxqs: '%s' is not IF:LIST (expected e.g. eth0:0-3)", s);
	iflen = (size_t)(colon - s);
	if (iflen >= sizeof(r->iface))
		return keel__errf(err, errlen, -EINVAL, "--rxqs: interface name too long in '%s'",
				  s);
	/* Parsed by hand, not as a CPU set: the order is the shard order ("eth0:7,3" gives
	 * shard 0 queue 7), and a queue named twice is a mistake, not a no-op. */
	for (p = colon + 1;;) {
		unsigned long a, b;
		char *end;

		if (*p < '0' || *p > '9')
			goto bad;
		a = b = strtoul(p, &end, 10);
		p = end;
		if (*p == '-') {
			p++;
			if (*p < '0' || *p > '9')
				goto bad;
			b = strtoul(p, &end, 10);
			p = end;
		}
		if (a > 65535 || b > 65535 || b < a)
			goto bad;
		for (unsigned long q = a; q <= b; q++) {
			for (unsigned i = 0; i < n; i++)
				if (r->rxqs[i] == q)
					return keel__errf(err, errlen, -EINVAL,
							  "--rxqs: rx queue %lu is named twice in "
							  "'%s': give each shard its own queue",
							  q, s);
			if (n == KEEL_MAX_SHARDS)
				return keel__errf(err, errlen, -EINVAL,
						  "--rxqs: more than %d queues", KEEL_MAX_SHARDS);
			r->rxqs[n++] = (unsigned)q;
		}
		if (!*p)
			break;
		if (*p++ != ',')
			goto bad;
	}
	memcpy(r->iface, s, iflen);
	r->iface[iflen] = 0;
	r->nrxqs = n;
	return 0;
bad:
	return keel__errf(err, errlen, -EINVAL,
			  "--rxqs: '%s' is not a queue list (expected e.g. eth0:0-3,6)", s);
}

/* The NIC a map uses when none is named: the first with a PCI device (it has a locality),
 * else the first interface over no other (a bond or VLAN is refused below), else the first
 * interface. */
static const struct keel_topo_nic *
default_nic(const struct keel_topo_info *in)
{
	for (unsigned i = 0; i < in->nnics; i++)
		if (in->nics[i].netdev && in->nics[i].pci[0])
			return &in->nics[i];
	for (unsigned i = 0; i < in->nnics; i++)
		if (in->nics[i].netdev && !in->nics[i].nlower)
			return &in->nics[i];
	for (unsigned i = 0; i < in->nnics; i++)
		if (in->nics[i].netdev)
			return &in->nics[i];
	return NULL;
}

/* Why a map of @name, an interface over the @nlower interfaces @lower (a bond, VLAN,
 * macvlan: struct keel_topo_nic's lower), is no map to run, with the interface to plan with
 * instead (@how: "plan with", "run: keel-topo --plan"), into @buf. */
static void
over_others(const char *name, const char *lower, unsigned nlower, const char *how, char *buf,
	    size_t len)
{
	int first = (int)strcspn(lower, ",");

	snprintf(
		buf, len,
		"%s is over %s: an interface over others (a bond, VLAN or macvlan) has no "
		"hardware rx queues, IRQs or NUMA node of its own (its packets arrive on the queues of %s); "
		"%s --iface %.*s%s",
		name, lower, nlower == 1 ? "that interface" : "those interfaces", how, first, lower,
		nlower == 1 ? "" : " (or each of them: a map serves one interface)");
}

static void
nic_names(const struct keel_topo_info *in, char *buf, size_t len)
{
	size_t off = 0;

	buf[0] = 0;
	for (unsigned i = 0; i < in->nnics; i++) {
		int n = snprintf(buf + off, len - off, "%s%s", off ? ", " : "", in->nics[i].name);
		if (n < 0 || (size_t)n >= len - off)
			break;
		off += (size_t)n;
	}
	if (!buf[0])
		snprintf(buf, len, "none");
}

static int
pu_numa(const struct keel_topo_info *in, unsigned cpu, int *core)
{
	for (unsigned i = 0; i < in->npus; i++)
		if (in->pus[i].os == cpu) {
			*core = (int)in->pus[i].core;
			return in->cores[in->pus[i].core].numa;
		}
	*core = -1;
	return -1;
}

/* The most rx queues @nic can have: live, the ethtool channel maximum when the driver
 * reports one (ethtool -L can create queues up to it), else the queues it has now; offline,
 * --queues. -1 when unknown. *src says which, for messages. */
static int
queue_limit(const struct keel_topo_info *in, const struct keel_topo_nic *nic, const char **src)
{
	int q = nic->nrxq;

	*src = in->live ? "its current count" : "--queues";
	if (in->live) {
		/* The kind of channel keel-topo --plan sets: combined where the driver has
		 * them (ethtool -L IF combined N), else rx. A larger rx-only maximum beside
		 * combined ones made maps that "combined N" cannot make. */
		int ch = nic->ch_max_combined > 0 ? nic->ch_max_combined : nic->ch_max_rx;
		if (ch > 0 && ch >= q) {
			q = ch;
			*src = "the driver's channel maximum";
		}
	}
	return q;
}

/* One core's place in the order the mapper takes cores in, within each tier. */
struct core_rank {
	unsigned core;  /* index in the topology's cores */
	bool remote;    /* not local to the NIC */
	uint64_t dist;  /* remote: NUMA latency from the NIC's nearest node (UINT64_MAX unknown) */
	bool other_pkg; /* remote: in a package none of the NIC's cores is in */
};

static int
rank_cmp(const void *pa, const void *pb)
{
	const struct core_rank *a = pa, *b = pb;

	if (a->remote != b->remote)
		return a->remote ? 1 : -1;
	if (a->dist != b->dist)
		return a->dist < b->dist ? -1 : 1;
	if (a->other_pkg != b->other_pkg)
		return a->other_pkg ? 1 : -1;
	return a->core < b->core ? -1 : a->core > b->core;
}

/* The cores in the order each tier takes them, into @order[in->ncores]: those local to @nic
 * in hwloc's order, then the others nearest first: by hwloc's NUMA latency from the NIC's
 * node(s) where the topology has one, then those in the NIC's package (a node of its own
 * package before the other socket's, which hwloc's order put first when the NIC was on a
 * package's second node), then hwloc's order. Returns 0 or -ENOMEM. */
static int
core_order(const struct keel_topo *t, const struct keel_topo_nic *nic, unsigned *order)
{
	const struct keel_topo_info *in = keel_topo_info_get(t);
	struct core_rank *rk = calloc(in->ncores + 1, sizeof(*rk));
	bool *nic_pkg = calloc(in->npackages + 1, sizeof(*nic_pkg));
	int *nic_node = calloc(in->nnuma + 2, sizeof(*nic_node));
	unsigned nnode = 0;
	bool any_remote = false;

	if (!rk || !nic_pkg || !nic_node) {
		free(rk);
		free(nic_pkg);
		free(nic_node);
		return -ENOMEM;
	}
	/* The NIC's nodes and packages: those of its local cores, and its own node's (whose
	 * cores may all be numbered past KEEL_MAX_CPUS, which nic->local cannot hold). */
	if (nic && nic->numa >= 0)
		nic_node[nnode++] = nic->numa;
	for (unsigned c = 0; c < in->ncores; c++) {
		const struct keel_topo_core *co = &in->cores[c];
		bool local = !nic || keel_cpuset_has(&nic->local, co->pus[0]);
		bool known = false;

		rk[c].core = c;
		rk[c].remote = !local;
		any_remote |= !local;
		if (!local && !(nic && nic->numa >= 0 && co->numa == nic->numa))
			continue;
		if (co->package < in->npackages)
			nic_pkg[co->package] = true;
		for (unsigned k = 0; k < nnode && !known; k++)
			known = nic_node[k] == co->numa;
		if (local && co->numa >= 0 && !known && nnode < in->nnuma + 1)
			nic_node[nnode++] = co->numa;
	}
	for (unsigned c = 0; c < in->ncores && any_remote; c++) {
		const struct keel_topo_core *co = &in->cores[c];

		if (!rk[c].remote)
			continue;
		rk[c].other_pkg = co->package >= in->npackages || !nic_pkg[co->package];
		/* Without a matrix every distance is 0: the package decides. */
		rk[c].dist = t->numa_dist ? UINT64_MAX : 0;
		for (unsigned k = 0; k < nnode && t->numa_dist; k++) {
			uint64_t d = keel__topo_numa_distance(t, nic_node[k], co->numa);

			if (d && d < rk[c].dist)
				rk[c].dist = d;
		}
	}
	qsort(rk, in->ncores, sizeof(*rk), rank_cmp);
	for (unsigned c = 0; c < in->ncores; c++)
		order[c] = rk[c].core;
	free(rk);
	free(nic_pkg);
	free(nic_node);
	return 0;
}

/* Append node @node to the list @buf ("0, 1") unless it is there; @seen[@n] the nodes so far.
 * Returns the new count. */
static unsigned
node_list_add(int node, int *seen, unsigned n, unsigned cap, char *buf, size_t len)
{
	size_t off = strlen(buf);

	if (node < 0)
		return n;
	for (unsigned i = 0; i < n; i++)
		if (seen[i] == node)
			return n;
	if (n < cap)
		seen[n] = node;
	snprintf(buf + off, len - off, "%s%d", n ? ", " : "", node);
	return n + 1;
}

/* A physical NIC with no one NUMA node (firmware numa_node -1, no _PXM: hwloc hangs it off
 * the machine or a package, local to CPUs of several nodes): every one of those cores
 * counts as local, and the shards go to the first in hwloc's order, which may be the socket
 * far from the NIC. Said when the allowed local cores span nodes (--cpuset on one node is a
 * choice already made), naming the nodes the shards are on. */
static void
warn_no_one_node(const struct keel_topo_info *in, const struct keel_topo_nic *nic,
		 const struct keel_cpuset *allowed, const struct keel_map *m)
{
	int seen[64];
	char span[256] = "", on[256] = "";
	unsigned nspan = 0, non = 0;

	for (unsigned c = 0; c < in->ncores; c++) {
		const struct keel_topo_core *co = &in->cores[c];
		bool any = false;

		if (!keel_cpuset_has(&nic->local, co->pus[0]))
			continue;
		for (unsigned p = 0; p < co->npus && !any; p++)
			any = keel_cpuset_has(allowed, co->pus[p]);
		if (any)
			nspan = node_list_add(co->numa, seen, nspan, 64, span, sizeof(span));
	}
	if (nspan < 2)
		return;
	for (unsigned i = 0; i < m->nshards; i++)
		non = node_list_add(m->shards[i].numa, seen, non, 64, on, sizeof(on));
	keel_log(KEEL_LOG_WARN, "topo",
		 "%s has no NUMA node of its own (%s): its local CPUs span NUMA nodes %s, so the "
		 "shards are on node%s %s by hwloc's order alone, which may be the socket far "
		 "from the NIC; give --cpuset with the CPUs of the NIC's node (its PCI slot's "
		 "socket, from the board's manual), or fix the slot's _PXM in the firmware (a "
		 "BIOS update) so that numa_node names it",
		 nic->name,
		 in->live ? "its numa_node in sysfs is -1: the firmware's _PXM gives its PCI slot "
			    "none"
			  : "the topology hangs it off several nodes, as hwloc does for a PCI slot "
			    "whose numa_node is -1: no _PXM in the firmware",
		 span, non == 1 ? "" : "s", on);
}

int
keel_map_compute(const struct keel_topo *t, const struct keel_map_req *req, struct keel_map *out,
		 char *err, size_t errlen)
{
	const struct keel_topo_info *in = keel_topo_info_get(t);
	const struct keel_topo_nic *nic = NULL;
	struct keel_cpuset allowed = in->allowed;
	unsigned *cand, *corder, ncand = 0, nphys = 0, nlocal_phys = 0, nlocal_reserved = 0, shards;
	const char *qsrc = "";
	int qmax;
	unsigned char *reserved;
	char list[1024]; /* over_others: up to about 650 bytes */
	int r = 0;

	memset(out, 0, sizeof(*out));
	out->version = KEEL_MAP_VERSION;
	out->numa = -1;
	out->smt = req->smt;
	out->numa_policy = req->numa;
	out->reserve = req->reserve;
	out->hds = req->hds;
	keel__topo_strcpy(out->source, sizeof(out->source), in->source);

	if (req->iface[0]) {
		nic = keel_topo_nic_find(t, req->iface);
		if (!nic) {
			nic_names(in, list, sizeof(list));
			return keel__errf(
				err, errlen, -ENODEV,
				"no interface '%s' on %s (it has: %s); pick one with --iface",
				req->iface, in->source, list);
		}
		/* Found by its bus id: a function with several interfaces (a VPI card's
		 * Ethernet and InfiniBand ports) names none of them, as the runtime says. */
		if (strcmp(nic->name, req->iface) &&
		    keel_topo_pci_ifaces(t, nic->pci, list, sizeof(list)) > 1)
			return keel__errf(err, errlen, -EINVAL,
					  "--iface %s: PCI function %s has more than one network "
					  "interface (%s); give the interface's name",
					  req->iface, nic->pci, list);
	} else {
		nic = default_nic(in);
	}
	/* Mapped as a virtual interface (no PCI device), its shards went to the first cores in
	 * hwloc's order whatever node the NIC beneath it is on, each owning a software queue. */
	if (nic && nic->nlower) {
		over_others(nic->name, nic->lower, nic->nlower, "plan with", list, sizeof(list));
		return keel__errf(err, errlen, -EINVAL, "%s", list);
	}
	if (nic) {
		keel__topo_strcpy(out->iface, sizeof(out->iface), nic->name);
		keel__topo_strcpy(out->pci, sizeof(out->pci), nic->pci);
		out->numa = nic->numa;
	}

	if (req->cpuset_given) {
		for (unsigned c = 0; c < KEEL_MAX_CPUS; c++) {
			if (!keel_cpuset_has(&req->cpuset, c))
				continue;
			char cg[400] = "";

			/* A live topology holds the CPUs outside the process's cgroup too, not
			 * allowed (hwloc is asked for them), but not offline ones. */
			if (!keel_cpuset_has(&in->present, c) && in->live &&
			    keel__cpu_not_online(c, cg, sizeof(cg))[0])
				return keel__errf(err, errlen, -EINVAL, "--cpuset: %s", cg);
			for (unsigned i = 0; i < in->npus && !keel_cpuset_has(&in->present, c); i++)
				if (in->pus[i].os == c)
					return keel__errf(
						err, errlen, -EINVAL,
						"--cpuset: CPU %u is a hardware thread of core %u "
						"beyond the %d a core keel counts (KEEL_TOPO_MAX_SMT): "
						"it takes no shard; pick from CPUs %s",
						c, in->pus[i].core, KEEL_TOPO_MAX_SMT,
						keel_topo_cpulist_format(&in->allowed, list,
									 sizeof(list)));
			/* A file written with the CPU offline lists it in its complete cpuset
			 * only: it is not missing from the machine, and no mask left it out. */
			if (!keel_cpuset_has(&in->present, c) && !in->live &&
			    keel_cpuset_has(&t->hw_complete, c))
				return keel__errf(
					err, errlen, -EINVAL,
					"--cpuset: CPU %u was offline when %s was written (its "
					"complete cpuset has it, with no PU), so the file neither "
					"describes nor allows it; pick from its allowed CPUs %s, or "
					"write the file again with the CPU online (echo 1 > "
					"/sys/devices/system/cpu/cpu%u/online, then "
					"lstopo-no-graphics --of xml FILE)",
					c, in->source,
					keel_topo_cpulist_format(&in->allowed, list, sizeof(list)),
					c);
			if (!keel_cpuset_has(&in->present, c))
				return keel__errf(
					err, errlen, -EINVAL,
					"--cpuset: CPU %u does not exist on %s (CPUs: %s)", c,
					in->source,
					keel_topo_cpulist_format(&in->present, list, sizeof(list)));
			if (!keel_cpuset_has(&in->allowed, c)) {
				if (in->live)
					keel__cgroup_excludes(c, cg, sizeof(cg));
				/* isolcpus= keeps a CPU out of every process's mask unless it
				 * was started on it: the fix is taskset, not a wider cgroup. */
				if (in->live && !cg[0] && keel__cpu_isolated(c))
					return keel__errf(
						err, errlen, -EINVAL,
						"--cpuset: CPU %u is isolated (isolcpus=, listed in "
						"/sys/devices/system/cpu/isolated), so no process has it "
						"unless started on it: start the program with taskset -c "
						"and a list that holds it; the allowed CPUs are %s",
						c,
						keel_topo_cpulist_format(&in->allowed, list,
									 sizeof(list)));
				/* A file's allowed set is its writer's, not this process's. */
				if (!in->live)
					return keel__errf(
						err, errlen, -EINVAL,
						"--cpuset: CPU %u is outside the allowed CPUs of %s "
						"(those of the process that wrote it: its cgroup's "
						"cpuset and affinity mask), %s; pick from those, or "
						"write the file again from a process that has the CPU "
						"(lstopo-no-graphics --of xml FILE, outside that cgroup "
						"or taskset)",
						c, in->source,
						keel_topo_cpulist_format(&in->allowed, list,
									 sizeof(list)));
				return keel__errf(
					err, errlen, -EINVAL,
					"--cpuset: CPU %u is outside this process's affinity "
					"mask%s; the allowed CPUs are %s: pick from those, or %s",
					c, cg,
					keel_topo_cpulist_format(&in->allowed, list, sizeof(list)),
					cg[0] ? "run the program in a cgroup that has it"
					      : "start the program with a wider mask");
			}
		}
		for (unsigned w = 0; w < KEEL_MAX_CPUS / 64; w++)
			allowed.bits[w] &= req->cpuset.bits[w];
	}

	cand = calloc(in->npus + 1, sizeof(*cand));
	corder = calloc(in->ncores + 1, sizeof(*corder));
	reserved = calloc(in->ncores + 1, 1);
	if (!cand || !corder || !reserved || core_order(t, nic, corder) < 0) {
		r = -ENOMEM;
		goto out;
	}
	/* Tiers, in order: local first threads (A), local siblings (B), remote first threads
	 * (C), remote siblings (D). "First thread" is a core's first allowed PU. NUMA local
	 * takes A B C D, spread A C B D; SMT avoid drops B and D. Each tier takes its cores in
	 * core_order's order (remote ones nearest the NIC first). Reserved cores (the first
	 * --reserve cores of A then C) take part in none. */
	{
		unsigned left = req->reserve;
		for (int pass = 0; pass < 2 && left; pass++)
			for (unsigned oi = 0; oi < in->ncores && left; oi++) {
				unsigned c = corder[oi];
				const struct keel_topo_core *co = &in->cores[c];
				bool local = !nic || keel_cpuset_has(&nic->local, co->pus[0]);
				bool any = false;
				if (local != (pass == 0))
					continue;
				for (unsigned p = 0; p < co->npus; p++)
					any |= keel_cpuset_has(&allowed, co->pus[p]);
				if (any) {
					reserved[c] = 1;
					left--;
					nlocal_reserved += pass == 0;
				}
			}
		if (left) {
			r = keel__errf(
				err, errlen, -EINVAL,
				"--reserve %u leaves no core for shards (allowed CPUs: %s); reserve "
				"fewer",
				req->reserve,
				keel_topo_cpulist_format(&allowed, list, sizeof(list)));
			goto out;
		}
	}
	{
		static const int order_local[4] = { 0, 1, 2, 3 }, order_spread[4] = { 0, 2, 1, 3 };
		const int *order = req->numa == KEEL_MAP_NUMA_SPREAD ? order_spread : order_local;

		for (int k = 0; k < 4; k++) {
			int tier = order[k];
			bool want_local = tier < 2, sibling = tier & 1;

			if (sibling && req->smt == KEEL_MAP_SMT_AVOID)
				continue;
			for (unsigned rank = sibling ? 1 : 0;
			     rank < (sibling ? KEEL_TOPO_MAX_SMT : 1); rank++)
				for (unsigned oi = 0; oi < in->ncores; oi++) {
					unsigned c = corder[oi];
					const struct keel_topo_core *co = &in->cores[c];
					bool local =
						!nic || keel_cpuset_has(&nic->local, co->pus[0]);
					unsigned seen = 0;

					if (local != want_local || reserved[c])
						continue;
					/* The rank-th allowed PU of the core. */
					for (unsigned p = 0; p < co->npus; p++) {
						if (!keel_cpuset_has(&allowed, co->pus[p]))
							continue;
						if (seen++ == rank) {
							cand[ncand++] = co->pus[p];
							if (!sibling) {
								nphys++;
								nlocal_phys += local;
							}
							break;
						}
					}
				}
		}
	}
	if (!ncand) {
		r = keel__errf(err, errlen, -EINVAL,
			       "no CPU is left for shards (allowed CPUs: %s%s)%s",
			       keel_topo_cpulist_format(&allowed, list, sizeof(list)),
			       req->reserve ? ", after --reserve" : "",
			       req->reserve ? "; reserve fewer cores" : "");
		goto out;
	}

	if (req->nrxqs && !nic) {
		r = keel__errf(err, errlen, -ENODEV, "--rxqs: no interface '%s'", req->iface);
		goto out;
	}
	/* A PCI function without a netdev has no rx queues a shard could own: say so rather
	 * than give every shard none. */
	if (req->nrxqs && !nic->netdev) {
		r = keel__errf(
			err, errlen, -EINVAL,
			"--rxqs: %s is a PCI function with no network interface (e.g. an "
			"SR-IOV VF without a network driver), so it has no rx queues to give "
			"the shards; bind a network driver to it and name its interface, or "
			"drop --rxqs (--iface %s alone places the shards by its locality)",
			nic->name, nic->name);
		goto out;
	}
	if (nic && nic->local_beyond) {
		/* Every CPU local to the NIC numbered past what a CPU set holds: nic->local is
		 * empty, so no core counted as local and the warning below (allowed CPUs that
		 * leave the NIC's node out) could not fire. No option places a shard there, so
		 * it is said whether or not --shards is given. */
		bool below = false;

		for (unsigned w = 0; w < KEEL_MAX_CPUS / 64 && !below; w++)
			below = nic->local.bits[w] != 0;
		if (!below)
			keel_log(
				KEEL_LOG_WARN, "topo",
				"the CPUs local to %s (NUMA node %d) are all numbered %d or above "
				"(KEEL_MAX_CPUS, keel's limit), where no shard can run: the map puts "
				"the shards on other nodes' cores, where its packets cross the "
				"interconnect; use a NIC on a node whose CPUs are below %d",
				nic->name, nic->numa, KEEL_MAX_CPUS, KEEL_MAX_CPUS);
	}
	qmax = nic && nic->netdev ? queue_limit(in, nic, &qsrc) : -1;
	shards = req->shards;
	if (!shards) {
		/* One per physical core local to the NIC (all cores without a NIC, or when the
		 * allowed CPUs have no local core), no more than the queues the NIC can have. */
		/* A reserve that took every allowed core local to the NIC must not move the
		 * default map to another node without a word. */
		if (nic && !nlocal_phys && nlocal_reserved) {
			r = keel__errf(
				err, errlen, -EINVAL,
				"--reserve %u takes every core local to %s (%u): the default "
				"map would move to another NUMA node; reserve fewer, or give "
				"--shards to place shards off the NIC's node on purpose",
				req->reserve, nic->name, nlocal_reserved);
			goto out;
		}
		if (nic && !nlocal_phys) {
			/* The allowed CPUs (--cpuset, the affinity mask) leave out every core
			 * local to the NIC: said, as the reserve's case is refused above, with
			 * --rxqs too (its queues choose no CPU: it moved without a word). */
			bool any = false, source = false;

			for (unsigned c = 0; c < in->ncores && !any; c++)
				any = keel_cpuset_has(&nic->local, in->cores[c].pus[0]);
			/* Whether the source allows any of them (a cgroup's cpuset, an XML
			 * file's allowed set): if not, no --cpuset or mask can. */
			for (unsigned w = 0; w < KEEL_MAX_CPUS / 64 && !source; w++)
				source = (nic->local.bits[w] & t->hw_allowed.bits[w]) != 0;
			if (any)
				keel_log(
					KEEL_LOG_WARN, "topo",
					"no allowed CPU is local to %s (NUMA node %d): the default "
					"map puts the shards on other nodes' cores, where its "
					"packets cross the interconnect; %s, or give --shards to "
					"place them off the NIC's node on purpose",
					nic->name, nic->numa,
					source ? "allow some of the node's CPUs (--cpuset, the "
						 "affinity mask)"
					: in->live
						? "the process's cgroup leaves out all the node's "
						  "CPUs: run it in a cgroup whose cpuset has some"
						: "the allowed set the topology file was written with "
						  "(a cgroup's cpuset) leaves out all the node's CPUs");
		}
		if (req->nrxqs)
			shards = req->nrxqs;
		else
			shards = nlocal_phys ? nlocal_phys : nphys;
		if (!req->nrxqs && qmax > 0 && (unsigned)qmax < shards)
			shards = (unsigned)qmax;
		if (!shards)
			shards = 1;
		if (shards > KEEL_MAX_SHARDS) {
			shards = KEEL_MAX_SHARDS;
			out->notes |= KEEL_MAP_NOTE_CLAMPED;
		}
	}
	if (shards > KEEL_MAX_SHARDS) {
		r = keel__errf(err, errlen, -EINVAL, "--shards %u: at most %d shards", shards,
			       KEEL_MAX_SHARDS);
		goto out;
	}
	if (shards > ncand && !req->oversubscribe) {
		bool siblings = req->smt == KEEL_MAP_SMT_AVOID && in->npus > in->ncores;
		r = keel__errf(err, errlen, -EINVAL,
			       "%u shards but only %u CPU%s can take one (%s of the allowed CPUs "
			       "%s%s); use fewer shards%s%s, or --oversubscribe",
			       shards, ncand, ncand == 1 ? "" : "s",
			       siblings ? "one per physical core" : "one per CPU",
			       keel_topo_cpulist_format(&allowed, list, sizeof(list)),
			       req->reserve ? ", after --reserve" : "",
			       siblings ? ", --smt allow" : "",
			       req->cpuset_given ? ", a wider --cpuset" : "");
		goto out;
	}
	if (req->nrxqs && shards > req->nrxqs && !req->extra_without_rxq) {
		r = keel__errf(
			err, errlen, -EINVAL,
			"--rxqs gives %u queue%s for %u shards: give one queue per shard, or "
			"--no-rxq-for-extra to run the other shards without one",
			req->nrxqs, req->nrxqs == 1 ? "" : "s", shards);
		goto out;
	}
	if (req->nrxqs && shards < req->nrxqs) {
		r = keel__errf(err, errlen, -EINVAL,
			       "--rxqs gives %u queues for %u shard%s: queues past the %u%s would "
			       "have no shard while RSS still sends them traffic; give %u queue%s, "
			       "or --shards %u",
			       req->nrxqs, shards, shards == 1 ? "" : "s", shards,
			       shards == 1 ? "st" : "", shards, shards == 1 ? "" : "s", req->nrxqs);
		goto out;
	}
	if (!req->nrxqs && qmax >= 0 && shards > (unsigned)qmax && !req->extra_without_rxq) {
		r = keel__errf(err, errlen, -EINVAL,
			       "%u shards but %s has at most %d rx queue%s (%s): shard i owns rx "
			       "queue i, so %u shard%s would have none; use --shards %d, or "
			       "--no-rxq-for-extra to run the extra shards without a queue",
			       shards, nic->name, qmax, qmax == 1 ? "" : "s", qsrc,
			       shards - (unsigned)qmax, shards - (unsigned)qmax == 1 ? "" : "s",
			       qmax ? qmax : 1);
		goto out;
	}
	out->nshards = shards;
	for (unsigned i = 0; i < shards; i++) {
		struct keel_map_shard *s = &out->shards[i];
		s->cpu = (int)cand[i % ncand];
		s->numa = pu_numa(in, (unsigned)s->cpu, &s->core);
		s->rxq = -1;
		s->irq_cpu = -1;
		if (!nic || !nic->netdev)
			continue;
		if (req->nrxqs)
			s->rxq = i < req->nrxqs ? (int)req->rxqs[i] : -1;
		else
			s->rxq = qmax < 0 || (int)i < qmax ? (int)i : -1;
		if (s->rxq < 0)
			continue;
		if (req->nrxqs && qmax >= 0 && s->rxq >= qmax) {
			r = keel__errf(
				err, errlen, -EINVAL,
				"--rxqs: rx queue %d of %s does not exist (%s has at most %d "
				"rx queue%s, %s: 0-%d); pick queues from those",
				s->rxq, nic->name, nic->name, qmax, qmax == 1 ? "" : "s", qsrc,
				qmax - 1);
			goto out;
		}
		s->irq_cpu = s->cpu;
		if ((unsigned)s->rxq + 1 > out->rx_queues)
			out->rx_queues = (unsigned)s->rxq + 1;
	}
	/* --rxqs without --shards: one shard per queue, more than the NIC's node has allowed
	 * cores for: the rest went to other nodes' cores without a word (the default map
	 * without --rxqs stops at the local cores; none local at all is said above). */
	if (!req->shards && req->nrxqs && nic && nic->numa >= 0 && nlocal_phys &&
	    req->numa != KEEL_MAP_NUMA_SPREAD) {
		unsigned off = 0;

		for (unsigned k = 0; k < shards; k++)
			off += out->shards[k].numa >= 0 && out->shards[k].numa != nic->numa;
		if (off) {
			bool siblings = req->smt == KEEL_MAP_SMT_AVOID && in->npus > in->ncores;

			keel_log(KEEL_LOG_WARN, "topo",
				 "%u of the %u shards --rxqs asks for are on other nodes' cores "
				 "than %s's (NUMA node %d), where their packets cross the "
				 "interconnect: the node's allowed CPUs took %u; give at most %u "
				 "queues%s, or --shards %u to place them so on purpose",
				 off, shards, nic->name, nic->numa, shards - off, shards - off,
				 siblings ? ", --smt allow to use the cores' second threads" : "",
				 shards);
		}
	}
	if (nic && !nic->is_virtual && nic->numa < 0)
		warn_no_one_node(in, nic, &allowed, out);
	/* Shards on a node whose memory this process may not use (a cgroup's cpuset.mems):
	 * their memory comes from another node, across the interconnect. Said once. */
	for (unsigned i = 0; i < in->nnuma; i++) {
		unsigned on = 0;

		if (in->numa[i].memory_allowed)
			continue;
		for (unsigned k = 0; k < shards; k++)
			on += out->shards[k].numa == (int)in->numa[i].os;
		if (on)
			keel_log(KEEL_LOG_WARN, "topo",
				 "%u shard%s on NUMA node %u, whose memory this process may not "
				 "use (%s): their memory comes from another node, across the "
				 "interconnect; allow the node's memory (cpuset.mems), or keep the "
				 "shards off its CPUs (--cpuset)",
				 on, on == 1 ? "" : "s", in->numa[i].os,
				 in->live ? "outside the cgroup's cpuset.mems"
					  : "outside the file's allowed nodeset");
	}
out:
	free(cand);
	free(corder);
	free(reserved);
	if (r < 0)
		out->nshards = 0;
	return r;
}

/* ---- checking a map against the live machine ---- */

static bool
pci_name(const char *s)
{
	return strchr(s, ':') != NULL;
}

/* "ethtool -X IF weight W0 W1 ...": weight 1 for each of the @rx queues of interface @ifn a
 * shard of @m serves, 0 for the others, into @buf ("keel-topo --plan" where it does not fit). */
static void
rss_weights(const struct keel_map *m, const char *ifn, unsigned rx, char *buf, size_t len)
{
	size_t o = (size_t)snprintf(buf, len, "ethtool -X %s weight", ifn);

	for (unsigned q = 0; q < rx && o < len; q++) {
		bool served = false;

		for (unsigned s = 0; s < m->nshards && !served; s++)
			served = m->shards[s].rxq == (int)q;
		o += (size_t)snprintf(buf + o, len - o, " %d", served);
	}
	if (o >= len)
		snprintf(buf, len, "keel-topo --plan for the ethtool -X weight line");
}

/* Calls @emit for each reason @m cannot run here (@fatal), or may not run as meant (not
 * @fatal: the runtime warns and starts); stops early when @emit returns false. */
static unsigned
validate_each(const struct keel_map *m, bool (*emit)(void *arg, const char *line, bool fatal),
	      void *arg)
{
	struct keel_cpuset online, mask;
	char line[1024], list[256];
	unsigned n = 0;
	int ro = keel__topo_cpulist_read("/sys/devices/system/cpu/online", &online);
	/* -ERANGE: more CPUs online than keel counts; the ones a map can name are there. */
	bool have_online = ro == 0 || ro == -ERANGE;
	bool have_mask = keel__affinity_get(&mask, NULL, NULL, 0) == 0;
	/* The interface whose queues and RSS are checked: the map's, or its PCI function's. */
	const char *ifn = m->iface[0] ? m->iface : NULL;
	char pifn[32];

	if (m->version != KEEL_MAP_VERSION) {
		snprintf(line, sizeof(line),
			 "map version %u is not %d; write it again with: keel-topo --plan",
			 m->version, KEEL_MAP_VERSION);
		n++;
		if (!emit(arg, line, true))
			return n;
	}
	for (unsigned i = 0; i < m->nshards; i++) {
		int cpu = m->shards[i].cpu, icpu = m->shards[i].irq_cpu;
		if (icpu >= 0 && (icpu >= KEEL_MAX_CPUS ||
				  (have_online && !keel_cpuset_has(&online, (unsigned)icpu)))) {
			snprintf(line, sizeof(line),
				 "shard %u: irq_cpu %d does not exist or is offline here (online: "
				 "%s); the map is stale: run keel-topo --plan again",
				 i, icpu,
				 have_online ? keel_topo_cpulist_format(&online, list, sizeof(list))
					     : "unknown");
			n++;
			if (!emit(arg, line, true))
				return n;
		}
		if (cpu < 0 || cpu >= KEEL_MAX_CPUS ||
		    (have_online && !keel_cpuset_has(&online, (unsigned)cpu))) {
			snprintf(line, sizeof(line),
				 "shard %u: CPU %d does not exist or is offline here (online: %s); "
				 "the map is stale: run keel-topo --plan again",
				 i, cpu,
				 have_online ? keel_topo_cpulist_format(&online, list, sizeof(list))
					     : "unknown");
		} else if (have_mask && !keel_cpuset_has(&mask, (unsigned)cpu)) {
			char cg[400];

			keel__cgroup_excludes((unsigned)cpu, cg, sizeof(cg));
			snprintf(line, sizeof(line),
				 "shard %u: CPU %d is outside this process's affinity mask%s "
				 "(allowed: %s); run it %s, or run keel-topo --plan again",
				 i, cpu, cg, keel_topo_cpulist_format(&mask, list, sizeof(list)),
				 cg[0] ? "in a cgroup that has the map's CPUs"
				       : "with taskset -c covering the map");
		} else {
			continue;
		}
		n++;
		if (!emit(arg, line, true))
			return n;
	}
	if (m->iface[0] && pci_name(m->iface)) {
		/* A PCI function: it must still be there, and where it has an interface the map
		 * is checked as that interface's below (a VF without a driver's interface has no
		 * queues to count; a map naming eth0's function by its bus id had none of these
		 * checks, its queues included). */
		char path[128], id[32];
		struct stat st;

		snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s%s",
			 strlen(m->iface) == 7 ? "0000:" : "", m->iface);
		if (strchr(m->iface, '/') || stat(path, &st) < 0) {
			ifn = NULL;
			snprintf(
				line, sizeof(line),
				"PCI function %s does not exist here (no %s); the map is stale: run "
				"keel-topo --plan again",
				m->iface, path);
			n++;
			if (!emit(arg, line, true))
				return n;
		} else {
			ifn = keel__topo_sysfs_pci_ifname(m->iface, id, sizeof(id), pifn,
							  sizeof(pifn)) == 1
				      ? pifn
				      : NULL;
		}
	}
	if (ifn) {
		int rx = keel__topo_sysfs_rxq_count(ifn), pr, numa;
		char pci[64], lower[sizeof(((struct keel_topo_nic *)0)->lower)];
		unsigned nlower = 0;

		if (rx == -ENODEV) {
			keel__topo_sysfs_ifnames(list, sizeof(list));
			snprintf(line, sizeof(line),
				 "interface %s does not exist here (interfaces: %s); the map is "
				 "stale: run keel-topo --plan again",
				 ifn, list);
			n++;
			if (!emit(arg, line, true))
				return n;
		} else if ((nlower = keel__topo_sysfs_lower(ifn, lower, sizeof(lower)))) {
			/* A bond, VLAN or macvlan: read as keel_topo_load reads it (the lower_NAME
			 * links under keel__sys_class_net), so the runtime refuses what keel-topo
			 * --check and --plan refuse; it counted the interface's software queues
			 * and started. */
			over_others(ifn, lower, nlower,
				    "the map's shards and queues line up with nothing: run "
				    "keel-topo --plan",
				    line, sizeof(line));
			n++;
			if (!emit(arg, line, true))
				return n;
		} else if (m->pci[0] &&
			   (pr = keel__topo_sysfs_pci_of(ifn, pci, sizeof(pci), &numa)) !=
				   -ENODEV &&
			   (pr < 0 || strcmp(pci, m->pci) != 0 ||
			    (m->numa >= 0 && numa >= 0 && numa != m->numa))) {
			/* The name is there but is another NIC (names moved after a reboot or a
			 * NIC change, or a map copied from another host): the shards were placed
			 * for the map's NIC and node. */
			char here[96] = "no PCI function", was[48] = "";

			if (pr == 0)
				snprintf(here, sizeof(here), "PCI %s", pci);
			if (pr == 0 && numa >= 0)
				snprintf(here, sizeof(here), "PCI %s (NUMA node %d)", pci, numa);
			if (m->numa >= 0)
				snprintf(was, sizeof(was), " (NUMA node %d)", m->numa);
			snprintf(line, sizeof(line),
				 "interface %s is %s here, the map was made for PCI %s%s: the map "
				 "is stale (the interface names another NIC): run keel-topo --plan "
				 "again",
				 ifn, here, m->pci, was);
			n++;
			if (!emit(arg, line, true))
				return n;
		} else if (rx >= 0 && (unsigned)rx < m->rx_queues) {
			snprintf(
				line, sizeof(line),
				"%s has %d rx queue%s, the map needs %u; run: ethtool -L %s %s %u (or "
				"keel-topo --plan again)",
				ifn, rx, rx == 1 ? "" : "s", m->rx_queues, ifn,
				keel__topo_sysfs_channel_kind(ifn), m->rx_queues);
			n++;
			if (!emit(arg, line, true))
				return n;
		} else if (rx >= 0 && m->rx_queues) {
			/* Queues no shard serves: more queues than the map's (how a ZCRX set-up
			 * looks, zcrx.md: RSS limited to the served queues, the others for other
			 * uses), or a map whose queues have gaps (--rxqs IF:5,2). Flows the RSS
			 * table sends there reach no shard's CPU: said unless the table keeps to
			 * the served queues; not fatal. */
			unsigned served = 0, unserved = 0;
			uint32_t *t = NULL;
			int sz, first = -1;

			for (unsigned s = 0; s < m->nshards; s++)
				served += m->shards[s].rxq >= 0;
			sz = served < (unsigned)rx ? keel__topo_rss_table(ifn, &t) : 0;
			if (sz > 0)
				first = keel__topo_rss_unserved(t, (uint32_t)sz, m, &unserved);
			free(t);
			if (first >= 0) {
				snprintf(
					line, sizeof(line),
					"%s's RSS table sends flows to rx queue %d%s, which no shard "
					"of the map serves: they reach no shard's CPU; run keel-topo "
					"--plan again for an ethtool -X line that weights only the "
					"map's %u queue%s",
					ifn, first, unserved > 1 ? " (and other queues)" : "",
					served, served == 1 ? "" : "s");
				n++;
				if (!emit(arg, line, false))
					return n;
			} else if (sz < 0 && (unsigned)rx > served) {
				/* The queues served are 0..served-1, or have gaps: then only a
				 * weight per queue keeps RSS to them (equal N would spread flows
				 * over the first N, served or not). */
				char fix[400];

				if (m->rx_queues == served)
					snprintf(
						fix, sizeof(fix),
						"ethtool -X %s equal %u, or ethtool -L %s combined "
						"%u",
						ifn, served, ifn, served);
				else
					rss_weights(m, ifn, (unsigned)rx, fix, sizeof(fix));
				snprintf(
					line, sizeof(line),
					"%s has %d rx queues, the map serves %u and its RSS table "
					"could not be read (%s): flows on the other queues reach no "
					"shard's CPU; run: %s (or keel-topo --plan again)",
					ifn, rx, served, strerror(-sz), fix);
				n++;
				if (!emit(arg, line, false))
					return n;
			}
		}
	}
	return n;
}

int
keel__topo_rss_unserved(const uint32_t *t, uint32_t n, const struct keel_map *m, unsigned *count)
{
	/* Queue numbers are below 65536 (a map's rxq, and what a table of at most 65536
	 * entries can name): one bit per queue, served or already counted. */
	uint64_t served[65536 / 64] = { 0 }, seen[65536 / 64] = { 0 };
	int first = -1;

	*count = 0;
	for (unsigned s = 0; s < m->nshards; s++)
		if (m->shards[s].rxq >= 0 && m->shards[s].rxq < 65536)
			served[m->shards[s].rxq / 64] |= 1ull << (m->shards[s].rxq % 64);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t q = t[i] < 65536 ? t[i] : 65535;

		if ((served[q / 64] | seen[q / 64]) & (1ull << (q % 64)))
			continue;
		seen[q / 64] |= 1ull << (q % 64);
		(*count)++;
		if (first < 0 || q < (uint32_t)first)
			first = (int)q;
	}
	return first;
}

struct first_line {
	char *buf;
	size_t len;
	bool fatal;
	bool quiet; /* lines that only warn are not logged (keel__topo_map_stale) */
};

/* The first reason the map cannot run; one that only may not run as meant is logged. */
static bool
keep_first(void *arg, const char *line, bool fatal)
{
	struct first_line *f = arg;

	if (!fatal) {
		if (!f->quiet)
			keel_log(KEEL_LOG_WARN, "core", "map: %s", line);
		return true;
	}
	if (f->buf && f->len)
		snprintf(f->buf, f->len, "%s", line);
	f->fatal = true;
	return false;
}

int
keel_map_validate(const struct keel_map *m, char *err, size_t errlen)
{
	struct first_line f = { err, errlen, false, false };

	validate_each(m, keep_first, &f);
	return f.fatal ? -EINVAL : 0;
}

static bool
print_line(void *arg, const char *line, bool fatal)
{
	(void)fatal; /* --check reports both: each is something to look at */
	fprintf((FILE *)arg, "%s\n", line);
	return true;
}

int
keel__topo_shared_irq_lists(const struct keel_topo_nic *nic, const struct keel_map *m, unsigned i,
			    FILE *f, struct keel__topo_list *queues, struct keel__topo_list *shards)
{
	const struct keel_topo_rxq *q = &nic->rxq[m->shards[i].rxq];
	char ql[256], sl[256];
	unsigned with = 0;
	bool other = false;

	/* Shared only with another queue: shards a map puts on one queue share its IRQ as
	 * they share the queue (a vector per queue is no cure). */
	for (unsigned j = 0; j < m->nshards && !other; j++) {
		const struct keel_map_shard *s = &m->shards[j];

		other = s->rxq >= 0 && s->irq_cpu >= 0 && s->rxq < nic->nrxq &&
			s->rxq != m->shards[i].rxq && nic->rxq[s->rxq].irq == q->irq;
	}
	if (!other)
		return 0;
	queues->n = queues->over = shards->n = shards->over = 0;
	for (unsigned j = 0; j < m->nshards; j++) {
		const struct keel_map_shard *s = &m->shards[j];

		if (s->rxq < 0 || s->irq_cpu < 0 || s->rxq >= nic->nrxq ||
		    nic->rxq[s->rxq].irq != q->irq)
			continue;
		if (j < i)
			return -1;
		with++;
		/* Each queue once: two shards a map puts on one queue share it. */
		keel__topo_list_add(queues, (unsigned)s->rxq);
		keel__topo_list_add(shards, j);
	}
	if (with < 2)
		return 0;
	if (f)
		fprintf(f,
			"%s rx queues %s (shards %s) share one IRQ %d (%s): an IRQ fires on the "
			"CPUs it points at, not per queue, so it cannot fire on each shard's CPU; "
			"give the device an MSI-X vector per queue (virtio-net: 2 per queue pair "
			"and 2 more, e.g. QEMU's -device virtio-net-pci,mq=on,vectors=%d), or pin "
			"it by hand to one of the shards' CPUs: echo %d > "
			"/proc/irq/%d/smp_affinity_list\n",
			nic->name, keel__topo_list_format(queues, ql, sizeof(ql)),
			keel__topo_list_format(shards, sl, sizeof(sl)), q->irq, q->irq_name,
			2 * nic->nrxq + 2, m->shards[i].irq_cpu, q->irq);
	return 1;
}

int
keel__topo_shared_irq(const struct keel_topo_nic *nic, const struct keel_map *m, unsigned i,
		      FILE *f)
{
	struct keel__topo_list queues, shards; /* 1 KiB each */

	return keel__topo_shared_irq_lists(nic, m, i, f, &queues, &shards);
}

bool
keel__topo_list_add(struct keel__topo_list *l, unsigned v)
{
	for (unsigned i = 0; i < l->n; i++)
		if (l->v[i] == v)
			return false;
	if (l->n < sizeof(l->v) / sizeof(l->v[0]))
		l->v[l->n++] = v;
	else
		l->over++;
	return true;
}

const char *
keel__topo_list_format(const struct keel__topo_list *l, char *buf, size_t len)
{
	size_t o = 0;
	unsigned all = l->n + l->over;

	buf[0] = 0;
	for (unsigned i = 0; i < l->n; i++) {
		char item[32], rest[32] = "";
		int il = snprintf(item, sizeof(item), "%s%u", i ? ", " : "", l->v[i]);
		int rl =
			all - i - 1 ? snprintf(rest, sizeof(rest), " and %u more", all - i - 1) : 0;

		/* Room for this value and for saying the ones after it, should they not fit:
		 * the room each value leaves is what the next one's " and N more" takes. */
		if (o + (size_t)il + (size_t)rl >= len) {
			snprintf(buf + o, len - o, "%s%u more", o ? " and " : "", all - i);
			return buf;
		}
		memcpy(buf + o, item, (size_t)il + 1);
		o += (size_t)il;
	}
	if (l->over)
		snprintf(buf + o, len - o, " and %u more", l->over);
	return buf;
}

/* keel_map_check's one line for @nic, a physical NIC without MSI IRQs, from shard @first
 * (the first with a queue and an IRQ CPU): its legacy INTx line is one IRQ for all its
 * queues, and nothing names a queue of it, so one line names the queues and the fix, as
 * one "pin it by hand" line per queue said the one IRQ as many. */
static void
no_msi_line(const struct keel_topo_nic *nic, const struct keel_map *m, unsigned first, FILE *f)
{
	struct keel__topo_list ql, sl; /* 1 KiB each */
	char queues[256], shards[256];
	unsigned nq = 0, ns = 0;

	ql.n = ql.over = sl.n = sl.over = 0;
	for (unsigned j = first; j < m->nshards; j++) {
		const struct keel_map_shard *s = &m->shards[j];

		if (s->rxq < 0 || s->irq_cpu < 0 || s->rxq >= nic->nrxq)
			continue;
		nq += keel__topo_list_add(&ql, (unsigned)s->rxq);
		keel__topo_list_add(&sl, j);
		ns++;
	}
	keel__topo_list_format(&ql, queues, sizeof(queues));
	keel__topo_list_format(&sl, shards, sizeof(shards));
	if (ns < 2) {
		fprintf(f,
			"%s rx queue %s (shard %s): %s has no MSI IRQs (a legacy INTx line, or "
			"none listed in its msi_irqs), so the queue's IRQ cannot be identified and "
			"its CPU cannot be checked; find %s's IRQ in /proc/interrupts and pin it by "
			"hand to CPU %d\n",
			nic->name, queues, shards, nic->name, nic->name, m->shards[first].irq_cpu);
		return;
	}
	fprintf(f,
		"%s rx queue%s %s (shards %s): %s has no MSI IRQs (a legacy INTx line, or none "
		"listed in its msi_irqs), one IRQ for all its queues that names none of them, so "
		"it cannot be checked and cannot fire on each shard's CPU (an IRQ per queue needs "
		"MSI-X); find %s's IRQ in /proc/interrupts and pin it by hand to one of the "
		"shards' CPUs, e.g. CPU %d\n",
		nic->name, nq == 1 ? "" : "s", queues, shards, nic->name, nic->name,
		m->shards[first].irq_cpu);
}

int
keel_map_check(const struct keel_topo *live, const struct keel_map *m, FILE *f)
{
	const struct keel_topo_info *in = keel_topo_info_get(live);
	const struct keel_topo_nic *nic;
	char list[256];
	unsigned n;
	bool irq_checked = false, no_msi_said = false;

	if (!in->live)
		return -EINVAL;
	n = validate_each(m, print_line, f);
	nic = m->iface[0] ? keel_topo_nic_find(live, m->iface) : NULL;
	/* An interface over others (a bond, VLAN) is said by validate_each; its queues have no
	 * IRQs of their own to check. */
	if (!nic || nic->nlower)
		return (int)n;
	for (unsigned i = 0; i < m->nshards; i++) {
		const struct keel_map_shard *s = &m->shards[i];
		const struct keel_topo_rxq *q;
		struct keel_cpuset want;
		int shared;

		if (s->rxq < 0 || s->irq_cpu < 0 || s->rxq >= nic->nrxq)
			continue;
		if (!nic->has_irqs) {
			/* A virtual interface has no IRQs to point anywhere. A device without MSI
			 * vectors (legacy INTx) has one, but nothing says which queue it is: that
			 * cannot be checked, so it is not a match. It is one line for all the
			 * queues, so it is said once, at the first shard. */
			if (nic->is_virtual || no_msi_said)
				continue;
			irq_checked = no_msi_said = true;
			no_msi_line(nic, m, i, f);
			n++;
			continue;
		}
		q = &nic->rxq[s->rxq];
		irq_checked = true;
		if (q->irq < 0) {
			fprintf(f,
				"%s rx queue %d (shard %u): no IRQ of %s is named for it in "
				"/proc/interrupts, so its CPU cannot be checked; pin it by hand to CPU "
				"%d\n",
				nic->name, s->rxq, i, nic->name, s->irq_cpu);
			n++;
			continue;
		}
		shared = keel__topo_shared_irq(nic, m, i, f);
		if (shared) {
			n += shared > 0; /* said once, at its first shard */
			continue;
		}
		memset(&want, 0, sizeof(want));
		keel_cpuset_add(&want, (unsigned)s->irq_cpu);
		if (!q->affinity_known) {
			fprintf(f,
				"%s rx queue %d (shard %u): IRQ %d affinity unreadable; run as root: "
				"echo %d > /proc/irq/%d/smp_affinity_list\n",
				nic->name, s->rxq, i, q->irq, s->irq_cpu, q->irq);
			n++;
		} else if (q->affinity_beyond) {
			/* Read fine, but it includes CPUs the map cannot name: not the one CPU. */
			const char *below =
				keel_topo_cpulist_format(&q->affinity, list, sizeof(list));
			fprintf(f,
				"%s rx queue %d (shard %u): IRQ %d (%s) points at %s%s%sCPUs at or "
				"above %d (KEEL_MAX_CPUS, keel's CPU limit), the map wants CPU %d; "
				"run: echo %d > /proc/irq/%d/smp_affinity_list\n",
				nic->name, s->rxq, i, q->irq, q->irq_name, below[0] ? "CPU " : "",
				below, below[0] ? " and at " : "", KEEL_MAX_CPUS, s->irq_cpu,
				s->irq_cpu, q->irq);
			n++;
		} else if (memcmp(&want, &q->affinity, sizeof(want))) {
			fprintf(f,
				"%s rx queue %d (shard %u): IRQ %d (%s) points at CPU %s, the map wants "
				"CPU %d; run: echo %d > /proc/irq/%d/smp_affinity_list\n",
				nic->name, s->rxq, i, q->irq, q->irq_name,
				keel_topo_cpulist_format(&q->affinity, list, sizeof(list)),
				s->irq_cpu, s->irq_cpu, q->irq);
			n++;
		}
	}
	if (m->hds && nic->hds != KEEL_TOPO_ON) {
		if (nic->hds_capable == KEEL_TOPO_OFF)
			fprintf(f,
				"%s: the driver%s%s cannot do header/data split, which the map "
				"needs; use a NIC whose driver supports it\n",
				nic->name, nic->driver[0] ? " " : "", nic->driver);
		else if (nic->hds == KEEL_TOPO_OFF)
			fprintf(f,
				"%s: header/data split is off, the map needs it; run: ethtool -G %s "
				"tcp-data-split on\n",
				nic->name, nic->name);
		else
			fprintf(f,
				"%s: header/data split state is unknown (the kernel did not report "
				"it), the map needs it; run: ethtool -G %s tcp-data-split on and check "
				"with ethtool -g %s\n",
				nic->name, nic->name, nic->name);
		n++;
	}
	/* The split alone is not enough: the kernel (__net_mp_open_rxq) refuses a ZCRX
	 * interface queue with EINVAL unless the threshold is 0, which is why --plan sets it.
	 * Unknown (-1: an older kernel or ethtool) is not counted, as --zcrx does not. */
	if (m->hds && nic->hds_capable != KEEL_TOPO_OFF && nic->hds_thresh > 0) {
		fprintf(f,
			"%s: header/data split threshold is %d bytes, the map needs 0 (the kernel "
			"refuses a ZCRX queue with EINVAL otherwise); run: ethtool -G %s hds-thresh "
			"0\n",
			nic->name, nic->hds_thresh, nic->name);
		n++;
	}
	if (irq_checked && in->irqbalance == KEEL_TOPO_ON) {
		fprintf(f, "irqbalance is running and moves rx IRQs away from the map; run: "
			   "systemctl stop irqbalance\n");
		n++;
	}
	return (int)n;
}

/* ---- the runtime's --iface without --map ---- */

/* The most lines of keel_map_check() logged, one per queue. */
#define IFACE_WARN_LIMIT 8

void
keel__topo_iface_check(const char *name, const char *iface, const int *cpus, const int *rxqs,
		       unsigned n)
{
	struct keel_topo_load_opts lo = { 0 };
	struct keel_topo *live = NULL;
	const struct keel_topo_nic *nic;
	struct keel_map *m;
	char err[256], *text = NULL, *line, *save = NULL;
	size_t len = 0;
	unsigned shown = 0, total = 0;
	FILE *f;

	m = calloc(1, sizeof(*m));
	if (!m || keel_topo_load(&lo, &live, err, sizeof(err)) < 0) {
		free(m);
		return; /* no map to check against: said by nothing, as without --iface */
	}
	nic = keel_topo_nic_find(live, iface);
	if (nic && nic->nlower) {
		/* A bond, VLAN, macvlan or bridge with ports has no device link, so it is
		 * virtual too, and nothing was said: its shards' queues are software ones, and
		 * the queues and IRQs its packets arrive on are the NICs' beneath it. */
		int first = (int)strcspn(nic->lower, ",");

		keel_log(KEEL_LOG_WARN, "topo",
			 "%s %s is over %s (a bond, VLAN, macvlan or bridge): it has no hardware "
			 "rx queues or IRQs of its own, its packets arrive on the queues of %s, "
			 "so no shard's queue or CPU lines up with an IRQ; for queue and IRQ "
			 "alignment give %s one of them (keel-topo --plan --iface %.*s writes a "
			 "map for it%s)",
			 name, iface, nic->lower,
			 nic->nlower == 1 ? "that interface" : "those interfaces", name, first,
			 nic->lower, nic->nlower == 1 ? "" : "; a runtime serves one interface");
	}
	if (nic && nic->is_virtual) { /* lo, veth: no queues to line up, no IRQs */
		free(m);
		keel_topo_destroy(live);
		return;
	}
	m->version = KEEL_MAP_VERSION;
	keel__topo_strcpy(m->iface, sizeof(m->iface), iface);
	m->numa = -1;
	m->nshards = n > KEEL_MAX_SHARDS ? KEEL_MAX_SHARDS : n;
	for (unsigned i = 0; i < m->nshards; i++) {
		m->shards[i].cpu = cpus[i];
		m->shards[i].rxq = rxqs[i];
		m->shards[i].irq_cpu = rxqs[i] >= 0 ? cpus[i] : -1;
		m->shards[i].core = m->shards[i].numa = -1;
		if (rxqs[i] >= 0 && (unsigned)rxqs[i] + 1 > m->rx_queues)
			m->rx_queues = (unsigned)rxqs[i] + 1;
	}
	f = open_memstream(&text, &len);
	if (f) {
		keel_map_check(live, m, f);
		fclose(f);
	}
	for (line = text ? strtok_r(text, "\n", &save) : NULL; line;
	     line = strtok_r(NULL, "\n", &save)) {
		total++;
		if (shown++ < IFACE_WARN_LIMIT)
			keel_log(KEEL_LOG_WARN, "topo",
				 "%s %s without --map (its map: shard i on the i-th allowed "
				 "CPU, with rx queue i): %s",
				 name, iface, line);
	}
	if (total > IFACE_WARN_LIMIT)
		keel_log(KEEL_LOG_WARN, "topo", "%s %s without --map: %u more such lines", name,
			 iface, total - IFACE_WARN_LIMIT);
	if (total)
		keel_log(KEEL_LOG_WARN, "topo",
			 "%s %s without --map: the shards and their rx queues do not line "
			 "up with the interface as the lines above say; keel-topo --plan --iface "
			 "%s writes a map that pairs shards, CPUs and queues by locality and "
			 "prints the commands that fix the rest: run with --map FILE",
			 name, iface, iface);
	free(text);
	free(m);
	keel_topo_destroy(live);
}

/* ---- the runtime's --map FILE ---- */

int
keel__topo_map_of_opts(const struct keel_opts *o, bool validate, struct keel_map **out, char *why,
		       size_t whylen)
{
	const char *map = keel__opt_name(o, "--map"), *iface = keel__opt_name(o, "--iface");
	struct keel_map *m;
	char err[400] = "";
	int r;

	*out = NULL;
	if (!o->map_path || !*o->map_path)
		return 0;
	m = malloc(sizeof(*m));
	if (!m) {
		snprintf(why, whylen, "%s %s: out of memory", map, o->map_path);
		return -ENOMEM;
	}
	r = keel_map_load(o->map_path, m, err, sizeof(err));
	/* A map on a PCI function with an interface: the runtime goes on with the interface's
	 * name, as for --iface given so (ZCRX opens it by name, and --iface compares it), and
	 * validates it as that interface's (the function resolved once). */
	if (r == 0 && m->iface[0] && pci_name(m->iface)) {
		char id[32], name[32];

		if (keel__topo_sysfs_pci_ifname(m->iface, id, sizeof(id), name, sizeof(name)) ==
		    1) {
			keel_log(KEEL_LOG_INFO, "core", "%s %s: PCI function %s is interface %s",
				 map, o->map_path, id, name);
			keel__topo_strcpy(m->iface, sizeof(m->iface), name);
		}
	}
	if (r == 0 && validate)
		r = keel_map_validate(m, err, sizeof(err));
	if (r == 0 && o->cpuset_given) {
		snprintf(err, sizeof(err), "%s and %s both choose the CPUs: drop one",
			 keel__opt_name(o, "--cpuset"), map);
		r = -EINVAL;
	}
	/* Only a count the user gave conflicts: a program's own default (keel-bench sets 2)
	 * yields to the map. */
	if (r == 0 && o->shards_given && o->shards != m->nshards) {
		snprintf(err, sizeof(err),
			 "%s %u but the map has %u shards: drop %s or run keel-topo --plan "
			 "--shards %u",
			 keel__opt_name(o, "--shards"), o->shards, m->nshards,
			 keel__opt_name(o, "--shards"), o->shards);
		r = -EINVAL;
	}
	/* The shards take the map's queue numbers (unless --rxqs gives its own, with its
	 * interface): they are queues of the map's interface, not of another one. */
	if (r == 0 && o->iface[0] && !o->nrxqs && !m->iface[0]) {
		snprintf(err, sizeof(err),
			 "%s %s but the map gives no shard an rx queue (it was planned "
			 "without an interface): run keel-topo --plan --iface %s, or give the "
			 "queues with --rxqs %s:LIST",
			 iface, o->iface, o->iface, o->iface);
		r = -EINVAL;
	}
	if (r == 0 && o->iface[0] && !o->nrxqs && m->iface[0] && strcmp(o->iface, m->iface)) {
		snprintf(err, sizeof(err),
			 "%s %s but the map's rx queues are of interface %s: drop %s "
			 "(the map names the interface), or run keel-topo --plan --iface %s for a "
			 "map of %s",
			 iface, o->iface, m->iface, iface, o->iface, o->iface);
		r = -EINVAL;
	}
	if (r == 0 && !m->nshards) {
		snprintf(err, sizeof(err), "the map has no shards; run keel-topo --plan again");
		r = -EINVAL;
	}
	if (r < 0) {
		/* Every path above writes @err; should one not, still say something true. */
		if (!err[0])
			snprintf(err, sizeof(err), "%s", strerror(-r));
		snprintf(why, whylen, "%s %s: %s", map, o->map_path, err);
		free(m);
		return r;
	}
	*out = m;
	return 1;
}

int
keel__topo_map_stale(const struct keel_opts *o, const struct keel_map *m, char *why, size_t whylen)
{
	char err[1024] = "";
	struct first_line f = { err, sizeof(err), false, true };

	validate_each(m, keep_first, &f);
	if (!f.fatal)
		return 0;
	snprintf(why, whylen, "%s %s: %s", keel__opt_name(o, "--map"), o->map_path, err);
	return -EINVAL;
}

int
keel__topo_apply_map(const struct keel_opts *o, int *cpus, unsigned *ncpus, struct keel_map **out,
		     char *why, size_t whylen)
{
	const char *map = keel__opt_name(o, "--map");
	struct keel_map *m;
	char full[1024] = "";
	int r;

	r = keel__topo_map_of_opts(o, true, &m, full, sizeof(full));
	if (r < 0) {
		/* @why is the runtime's short buffer: log the whole reason here. */
		keel_log(KEEL_LOG_ERROR, "topo", "%s", full);
		snprintf(why, whylen, "%s", full);
	}
	if (r <= 0)
		return r;
	for (unsigned i = 0; i < m->nshards; i++) {
		cpus[i] = m->shards[i].cpu;
		for (unsigned j = 0; j < i; j++)
			if (cpus[j] == cpus[i]) { /* said, not refused: a map may oversubscribe */
				keel_log(KEEL_LOG_WARN, "topo",
					 "%s %s: shards %u and %u share CPU %d, and so its time; "
					 "keel-topo --plan gives each shard its own CPU",
					 map, o->map_path, j, i, cpus[i]);
				break;
			}
	}
	*ncpus = m->nshards;
	keel_log(KEEL_LOG_INFO, "topo", "%s %s: %u shard%s%s%s", map, o->map_path, m->nshards,
		 m->nshards == 1 ? "" : "s", m->iface[0] ? " for " : "", m->iface);
	*out = m;
	return 1;
}
