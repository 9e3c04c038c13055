// SPDX-License-Identifier: MIT
/*
 * keel-topo --zcrx (with or without --check): per interface and rx queue, can ZCRX work and
 * what is missing. The verdict comes from the probe a shard's start-up makes
 * (keel_zcrx_probe: the same checks and registration, on a scratch ring); the interface's
 * facts (driver, header/data split, channels, ntuple) say what to change.
 */
#include <errno.h>
#include <keel/zcrx.h>
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "topo_tool.h"

/* The drivers with a ZCRX queue API (Linux 6.15-6.18). */
static const char *const zcrx_drivers[] = { "bnxt_en", "mlx5_core", "gve", "fbnic" };

static bool
driver_has_zcrx(const char *d)
{
	for (size_t i = 0; i < sizeof(zcrx_drivers) / sizeof(zcrx_drivers[0]); i++)
		if (!strcmp(d, zcrx_drivers[i]))
			return true;
	return false;
}

/* ntuple filters on @iface: 1 on, 0 off, -1 unknown (ETHTOOL_GFLAGS). */
static int
ntuple_state(const char *iface)
{
	struct ethtool_value ev = { .cmd = ETHTOOL_GFLAGS };
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), r = -1;

	if (fd < 0)
		return -1;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%.*s", (int)sizeof(ifr.ifr_name) - 1, iface);
	ifr.ifr_data = (void *)&ev;
	if (ioctl(fd, SIOCETHTOOL, &ifr) == 0)
		r = (ev.data & ETH_FLAG_NTUPLE) ? 1 : 0;
	close(fd);
	return r;
}

unsigned
zcrx_iface_facts(const char *iface, const struct keel_topo_nic *nic, int maxq, FILE *f)
{
	unsigned missing = 0;
	int nt = ntuple_state(iface);

	fprintf(f, "%s:\n", iface);
	if (!nic) {
		fprintf(f,
			"  driver: unknown (%s is not a NIC with a device in the topology: a "
			"virtual interface has no parent device, which ZCRX needs)\n",
			iface);
		missing++;
	} else if (!nic->netdev) {
		/* Nothing else to read: no interface has the split, channels or ntuple. */
		fprintf(f,
			"  driver: none (a PCI function without a network interface, e.g. an SR-IOV "
			"VF without a network driver: bind bnxt_en, mlx5_core, gve or fbnic to it and "
			"name its interface)\n");
		return missing + 1;
	} else if (!nic->driver[0] || nic->is_virtual) {
		fprintf(f,
			"  driver: %s (virtual: no parent device; ZCRX needs bnxt_en, mlx5_core, "
			"gve or fbnic)\n",
			nic->driver[0] ? nic->driver : "none");
		missing++;
	} else if (driver_has_zcrx(nic->driver)) {
		fprintf(f, "  driver: %s (has the queue API ZCRX needs)\n", nic->driver);
	} else {
		fprintf(f,
			"  driver: %s (no ZCRX queue API: ZCRX needs bnxt_en, mlx5_core, gve or "
			"fbnic)\n",
			nic->driver);
		missing++;
	}
	if (nic) {
		if (nic->hds == KEEL_TOPO_ON)
			fprintf(f, "  header/data split: on\n");
		else if (nic->hds_capable == KEEL_TOPO_OFF)
			fprintf(f, "  header/data split: not supported by the driver\n");
		else if (nic->hds == KEEL_TOPO_OFF)
			fprintf(f,
				"  header/data split: off; run: ethtool -G %s tcp-data-split on\n",
				iface);
		else
			fprintf(f,
				"  header/data split: unknown; run: ethtool -G %s tcp-data-split "
				"on and check with ethtool -g %s\n",
				iface, iface);
		if (nic->hds != KEEL_TOPO_ON)
			missing++;
		/* The kernel (__net_mp_open_rxq) refuses an interface queue with EINVAL unless
		 * the threshold is 0: required, not a tuning. Unknown (older kernel or ethtool)
		 * is not counted: the probe below says what the kernel thinks. */
		if (nic->hds_thresh == 0) {
			fprintf(f, "  header/data split threshold: 0 bytes\n");
		} else if (nic->hds_thresh > 0) {
			fprintf(f,
				"  header/data split threshold: %d bytes; ZCRX needs 0 (the kernel "
				"refuses the registration with EINVAL otherwise); run: ethtool -G %s "
				"hds-thresh 0\n",
				nic->hds_thresh, iface);
			missing++;
		}
		if (nic->nrxq >= 0) {
			fprintf(f, "  channels: %d rx queues", nic->nrxq);
			if (maxq >= nic->nrxq) {
				fprintf(f, "; queue %d does not exist: ethtool -L %s combined %d",
					maxq, iface, maxq + 1);
				missing++;
			}
			fprintf(f,
				" (keep the ZCRX queues out of the RSS table and steer the service "
				"port to them: give the shards the last queues, then keel-topo "
				"--iface %s --rxqs %s:K-L --hds --port P --plan prints both)\n",
				iface, iface);
		} else {
			fprintf(f, "  channels: unknown\n");
		}
	}
	if (nt == 1)
		fprintf(f, "  ntuple: on (steer each shard's port to its queue: keel-topo --plan "
			   "--port P)\n");
	else if (nt == 0) {
		fprintf(f,
			"  ntuple: off; run: ethtool -K %s ntuple on, then the rules of "
			"keel-topo --plan --port P\n",
			iface);
		missing++;
	} else {
		fprintf(f, "  ntuple: unknown (the driver does not report it)\n");
	}
	return missing;
}

int
zcrx_report(const struct tool_ctx *c, const struct keel_map_req *req, FILE *f)
{
	const char *iface = NULL;
	const struct keel_topo_nic *nic;
	int qs[KEEL_MAX_SHARDS];
	unsigned nq = 0, bad = 0, total = 0;
	char why[512];

	if (req->iface[0]) {
		iface = req->iface;
		for (unsigned i = 0; i < req->nrxqs; i++)
			qs[nq++] = (int)req->rxqs[i];
	} else if (c->map && c->map->iface[0]) {
		iface = c->map->iface;
		for (unsigned i = 0; i < c->map->nshards; i++)
			if (c->map->shards[i].rxq >= 0)
				qs[nq++] = c->map->shards[i].rxq;
	}
	if (!iface) {
		fprintf(stderr, "keel-topo: --zcrx: no interface: give --iface IF (or --rxqs "
				"IF:LIST)\n");
		return 2;
	}
	/* --iface may be the PCI bus id (as everywhere in keel-topo): the facts and the probe
	 * are of the NIC's interface, whose name the kernel knows. */
	nic = keel_topo_nic_find(c->topo, iface);
	/* Found by its bus id: a function with several interfaces names none of them (the
	 * plan and the runtime refuse it too). */
	if (nic && strcmp(nic->name, iface) &&
	    keel_topo_pci_ifaces(c->topo, nic->pci, why, sizeof(why)) > 1) {
		fprintf(stderr,
			"keel-topo: --zcrx: --iface %s: PCI function %s has more than one network "
			"interface (%s); give the interface's name\n",
			iface, nic->pci, why);
		return 2;
	}
	if (nic)
		iface = nic->name;
	/* --iface naming the map's interface, without --rxqs: the map's queues. */
	if (!nq && c->map && c->map->iface[0] &&
	    (!strcmp(c->map->iface, iface) ||
	     (nic && keel_topo_nic_find(c->topo, c->map->iface) == nic)))
		for (unsigned i = 0; i < c->map->nshards; i++)
			if (c->map->shards[i].rxq >= 0)
				qs[nq++] = c->map->shards[i].rxq;
	/* No queues given: the last one alone (where the plan puts the shards' queues). A probe
	 * binds an interface queue, and a capable NIC restarts that queue twice: probing every
	 * queue of a live NIC interrupted each one's traffic for an answer the user had not
	 * asked queue by queue. */
	bool one_of_many = false;
	if (!nq) {
		one_of_many = nic && nic->nrxq > 1;
		qs[nq++] = nic && nic->nrxq > 0 ? nic->nrxq - 1 : 0;
	}
	int maxq = 0;
	for (unsigned i = 0; i < nq; i++)
		if (qs[i] > maxq)
			maxq = qs[i];
	fprintf(f, "ZCRX readiness (each queue probed with the registration keel makes at "
		   "start-up, on a scratch ring; on a capable NIC the queue restarts briefly)\n");
	total = zcrx_iface_facts(iface, nic, maxq, f);
	for (unsigned i = 0; i < nq; i++) {
		int r = keel_zcrx_probe(iface, qs[i], why, sizeof(why));

		if (r == 0) {
			fprintf(f, "  rx queue %d: ZCRX can work (%s)\n", qs[i], why);
		} else {
			fprintf(f, "  rx queue %d: ZCRX cannot work: %s\n", qs[i], why);
			bad++;
		}
	}
	if (one_of_many)
		fprintf(f,
			"  (queue %d of %d probed alone: a probe restarts the queue it binds; give "
			"--rxqs %s:LIST to probe the queues the shards take)\n",
			qs[0], nic->nrxq, iface);
	fprintf(f, "%s: %u of %u queue%s can do ZCRX%s\n", iface, nq - bad, nq, nq == 1 ? "" : "s",
		total ? "; fix what is listed above, then run keel-topo --check --zcrx again" : "");
	return bad ? 1 : 0;
}
