/* SPDX-License-Identifier: MIT */
/*
 * A live topology built by hand, for tests of what reads one (keel_map_check, keel-topo's
 * report and plan): one physical NIC "fake0" (no such interface here) with one rx queue whose
 * IRQ 77 is named "fake0-TxRx-0", and in @map a map giving that queue to shard 0 on CPU 0
 * with @irq_cpu (-1: left out, as the schema allows). The caller sets what its test needs on
 * the NIC (*@out) and frees the topology with keel_topo_destroy. Include after
 * core/topo_internal.h and criterion.
 */
#ifndef KEEL_TEST_FAKE_TOPO_H
#define KEEL_TEST_FAKE_TOPO_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline struct keel_topo *
fake_topo_live_nic(struct keel_map *map, int irq_cpu, struct keel_topo_nic **out)
{
	struct keel_topo *t = calloc(1, sizeof(*t));
	struct keel_topo_nic *n;

	cr_assert_not_null(t);
	t->info.live = true;
	t->info.irqbalance = KEEL_TOPO_OFF;
	n = keel__topo_nic_add(t);
	cr_assert_not_null(n);
	snprintf(n->name, sizeof(n->name), "fake0");
	snprintf(n->pci, sizeof(n->pci), "0000:81:00.0");
	n->netdev = true;
	n->has_irqs = true;
	n->nrxq = 1;
	n->rxq = calloc(1, sizeof(*n->rxq));
	cr_assert_not_null(n->rxq);
	n->rxq[0].irq = 77;
	snprintf(n->rxq[0].irq_name, sizeof(n->rxq[0].irq_name), "fake0-TxRx-0");
	memset(map, 0, sizeof(*map));
	map->version = KEEL_MAP_VERSION;
	snprintf(map->iface, sizeof(map->iface), "fake0");
	map->rx_queues = 1;
	map->nshards = 1;
	map->shards[0] = (struct keel_map_shard){
		.cpu = 0, .core = -1, .numa = -1, .rxq = 0, .irq_cpu = irq_cpu
	};
	*out = n;
	return t;
}

#endif
