// SPDX-License-Identifier: MIT
/*
 * keel-topo --zcrx's interface facts (tools/keel-topo/zcrx.c, compiled into this binary):
 * what it counts as missing for ZCRX, from a NIC description made here, so the verdict
 * does not depend on this machine's NICs (none of which can do ZCRX).
 */
#include <keel/keel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../../core/topo_internal.h"
#include "fake_topo.h"
#include "topo_tool.h"

/* A NIC of a ZCRX driver with header/data split on and 8 queues; no such interface exists
 * here, so ntuple reads "unknown" (not counted). */
static struct keel_topo_nic
capable_nic(void)
{
	struct keel_topo_nic n;

	memset(&n, 0, sizeof(n));
	snprintf(n.name, sizeof(n.name), "keelnosuch7");
	snprintf(n.driver, sizeof(n.driver), "mlx5_core");
	snprintf(n.pci, sizeof(n.pci), "0000:81:00.0");
	n.netdev = true;
	n.nrxq = 8;
	n.hds = KEEL_TOPO_ON;
	n.hds_capable = KEEL_TOPO_ON;
	n.hds_thresh = 0;
	return n;
}

static unsigned
facts(const struct keel_topo_nic *n, char *out, size_t len)
{
	FILE *f = fmemopen(out, len, "w");
	unsigned missing;

	cr_assert_not_null(f);
	missing = zcrx_iface_facts(n->name, n, 3, f);
	fclose(f);
	return missing;
}

Test(tools_topo_zcrx, capable_nic_with_split_and_threshold_0_misses_nothing)
{
	struct keel_topo_nic n = capable_nic();
	char out[4096];

	cr_assert_eq(facts(&n, out, sizeof(out)), 0, "%s", out);
	cr_assert(strstr(out, "header/data split: on"), "%s", out);
}

/* The kernel refuses the registration with EINVAL when hds-thresh is not 0, so a nonzero
 * threshold is missing, with the command that fixes it. */
Test(tools_topo_zcrx, nonzero_hds_thresh_is_missing)
{
	struct keel_topo_nic n = capable_nic();
	char out[4096];

	n.hds_thresh = 256;
	cr_assert_eq(facts(&n, out, sizeof(out)), 1, "%s", out);
	cr_assert(strstr(out, "ethtool -G keelnosuch7 hds-thresh 0"), "%s", out);
	/* Unknown (an older kernel or ethtool): not counted, the registration will say. */
	n.hds_thresh = -1;
	cr_assert_eq(facts(&n, out, sizeof(out)), 0, "%s", out);
}

/* zcrx_report(@t, --iface @iface, the map @m or none) into @out; returns its status. */
static int
report_for(struct keel_topo *t, const struct keel_map *m, const char *iface, char *out, size_t len)
{
	struct keel_map_req req;
	struct tool_ctx c;
	FILE *f = fmemopen(out, len, "w");
	int r;

	cr_assert_not_null(f);
	memset(&c, 0, sizeof(c));
	c.topo = t;
	c.info = keel_topo_info_get(t);
	c.port = -1;
	c.map = m;
	keel_map_req_init(&req);
	snprintf(req.iface, sizeof(req.iface), "%s", iface);
	r = zcrx_report(&c, &req, f);
	fclose(f);
	return r;
}

/* --iface takes a PCI bus id ("0000:81:00.0" or "81:00.0") as the rest of keel-topo does:
 * --zcrx resolves it to the NIC and reports and probes its interface. It compared names
 * alone, so it said the bus id was "not a NIC with a device in the topology" and probed
 * an interface called "81:00.0". */
Test(tools_topo_zcrx, a_pci_bus_id_names_the_nic_and_its_interface_is_probed)
{
	static struct keel_map map; /* large: off the worker's stack */
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_topo_live_nic(&map, 0, &nic);
	static char by_name[8192], out[8192];

	snprintf(nic->driver, sizeof(nic->driver), "mlx5_core");
	nic->hds = nic->hds_capable = KEEL_TOPO_ON;
	nic->hds_thresh = 0;
	report_for(t, NULL, "fake0", by_name, sizeof(by_name));
	cr_assert(strstr(by_name, "fake0:\n  driver: mlx5_core") &&
			  strstr(by_name, "ZCRX on fake0 rx queue 0"),
		  "premise: %s", by_name);
	for (int i = 0; i < 2; i++) {
		const char *id = i ? "81:00.0" : "0000:81:00.0";

		report_for(t, NULL, id, out, sizeof(out));
		cr_assert(!strstr(out, "not a NIC with a device"), "--iface %s: %s", id, out);
		cr_assert(strstr(out, "fake0:\n  driver: mlx5_core (has the queue API"),
			  "--iface %s: %s", id, out);
		cr_assert(strstr(out, "ZCRX on fake0 rx queue 0") && !strstr(out, "ZCRX on 0000") &&
				  !strstr(out, "ZCRX on 81"),
			  "--iface %s: the probe took another name: %s", id, out);
		cr_assert(strstr(out, "fake0: 0 of 1 queue can do ZCRX"), "--iface %s: %s", id,
			  out);
	}
	/* With --iface alone, one queue is probed (the last), not each of the NIC's: every
	 * probe restarts the queue it binds on a capable NIC, so eight probes interrupted the
	 * traffic of all eight queues. */
	nic->nrxq = 8;
	report_for(t, NULL, "fake0", out, sizeof(out));
	cr_assert(strstr(out, "ZCRX on fake0 rx queue 7") && !strstr(out, "rx queue 0:") &&
			  strstr(out, "fake0: 0 of 1 queue can do ZCRX"),
		  "%s", out);
	cr_assert(strstr(out, "queue 7 of 8 probed alone") && strstr(out, "--rxqs fake0:LIST"),
		  "%s", out);
	/* With a map of that interface (--check --map M --zcrx --iface IF), the map's queues,
	 * as without --iface (a review's find: the last queue alone was probed). */
	map.nshards = 2;
	map.shards[0].rxq = 2;
	map.shards[1] = map.shards[0];
	map.shards[1].rxq = 5;
	report_for(t, &map, "fake0", out, sizeof(out));
	cr_assert(strstr(out, "ZCRX on fake0 rx queue 2") &&
			  strstr(out, "ZCRX on fake0 rx queue 5") && !strstr(out, "rx queue 7") &&
			  !strstr(out, "probed alone") &&
			  strstr(out, "fake0: 0 of 2 queues can do ZCRX"),
		  "%s", out);
	/* A function without an interface (a VF without a network driver): said, and none of
	 * an interface's facts (split, channels) are asked of it. */
	nic->netdev = false;
	snprintf(nic->name, sizeof(nic->name), "0000:81:00.0");
	report_for(t, NULL, "81:00.0", out, sizeof(out));
	cr_assert(strstr(out, "0000:81:00.0:\n  driver: none (a PCI function without a network "
			      "interface") &&
			  !strstr(out, "header/data split"),
		  "%s", out);
	keel_topo_destroy(t);
}

/* A PCI function with two interfaces (a VPI card's Ethernet and InfiniBand ports): its bus
 * id names neither, and --zcrx refuses it with their names, as the plan and the runtime
 * do. It reported and probed the first one found. */
Test(tools_topo_zcrx, a_bus_id_of_a_function_with_two_interfaces_is_refused)
{
	static struct keel_map map;
	struct keel_topo_nic *nic, *ib;
	struct keel_topo *t = fake_topo_live_nic(&map, 0, &nic);
	static char out[8192];
	char names[64];

	ib = keel__topo_nic_add(t);
	cr_assert_not_null(ib);
	snprintf(ib->name, sizeof(ib->name), "fakeib0");
	snprintf(ib->pci, sizeof(ib->pci), "0000:81:00.0");
	ib->netdev = true;
	cr_assert_eq(keel_topo_pci_ifaces(t, "0000:81:00.0", names, sizeof(names)), 2);
	cr_assert_str_eq(names, "fake0, fakeib0");
	for (int i = 0; i < 2; i++) {
		const char *id = i ? "81:00.0" : "0000:81:00.0";

		cr_assert_eq(report_for(t, NULL, id, out, sizeof(out)), 2, "--iface %s: %s", id,
			     out);
		cr_assert(!strstr(out, "ZCRX on"), "--iface %s probed: %s", id, out);
	}
	/* By name, each is its own. */
	report_for(t, NULL, "fake0", out, sizeof(out));
	cr_assert(strstr(out, "ZCRX on fake0 rx queue 0"), "%s", out);
	keel_topo_destroy(t);
}
