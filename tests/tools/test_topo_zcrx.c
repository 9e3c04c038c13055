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
