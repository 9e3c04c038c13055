// SPDX-License-Identifier: MIT
/* keel-topo's report and plan as functions, on a live topology built by hand: what the
 * binary on this machine cannot show (a NIC with named IRQs, one without MSI IRQs). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../../core/topo_internal.h"
#include "fake_topo.h"
#include "topo_tool.h"

static struct keel_map map; /* large: keep it off the worker's stack */

/* A live topology (tests/common/fake_topo.h) whose NIC "fake0" has queue 0's IRQ 77 pointing
 * at CPU 3 now; the map gives that queue to shard 0 on CPU 0 with no irq_cpu (the schema
 * allows leaving it out). */
static struct keel_topo *
fake_live(struct keel_topo_nic **out)
{
	struct keel_topo *t = fake_topo_live_nic(&map, -1, out);

	snprintf(t->info.source, sizeof(t->info.source), "this machine");
	(*out)->ntxq = 1;
	(*out)->rxq[0].affinity_known = true;
	keel_cpuset_add(&(*out)->rxq[0].affinity, 3);
	return t;
}

static char *
report(struct keel_topo *t)
{
	struct tool_ctx c;
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);

	cr_assert_not_null(f);
	memset(&c, 0, sizeof(c));
	c.topo = t;
	c.info = keel_topo_info_get(t);
	c.map = &map;
	c.port = -1;
	report_text(&c, f);
	fclose(f);
	return out;
}

/* keel_map_check and the SVG skip a shard without irq_cpu: the report agrees. */
Test(tools_topo, report_of_a_map_without_irq_cpu_shows_no_mismatch)
{
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live(&nic);
	char *out = report(t);

	cr_assert(strstr(out, "shard 0   -> CPU 0 ") && strstr(out, "fake0 rxq 0"), "%s", out);
	cr_assert_null(strstr(out, "MISMATCH"), "%s", out);
	cr_assert_null(strstr(out, "IRQ CPU -1"), "%s", out);
	free(out);
	/* with irq_cpu the same IRQ is a mismatch */
	map.shards[0].irq_cpu = 0;
	out = report(t);
	cr_assert(strstr(out, "IRQ CPU 0 (IRQ 77 now CPU 3: MISMATCH)"), "%s", out);
	free(out);
	keel_topo_destroy(t);
}

/* keel-topo --plan's steps for @t and the test's map, into @steps (@max of them). */
static unsigned
plan_of(struct keel_topo *t, struct tool_ctx *c, struct plan_step *steps, unsigned max)
{
	memset(c, 0, sizeof(*c));
	c->topo = t;
	c->info = keel_topo_info_get(t);
	c->map = &map;
	c->port = -1;
	return plan_build(c, steps, max);
}

/* --plan for a physical NIC without MSI IRQs (legacy INTx): no IRQ line can be written, and
 * the plan says so for each shard instead of saying nothing. */
Test(tools_topo, plan_for_a_physical_nic_without_msi_irqs_says_to_pin_by_hand)
{
	static struct plan_step steps[64];
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live(&nic);
	struct tool_ctx c;
	bool said = false;
	unsigned n;

	nic->has_irqs = false;
	nic->rxq[0].irq = -1;
	nic->ch_combined = 1; /* no channel change: the IRQ lines would be final */
	map.shards[0].irq_cpu = 0;
	n = plan_of(t, &c, steps, sizeof(steps) / sizeof(steps[0]));
	for (unsigned i = 0; i < n; i++) {
		cr_assert_neq(steps[i].kind, PLAN_WRITE, "an IRQ line without an IRQ: %s",
			      steps[i].why);
		said |= steps[i].kind == PLAN_NOTE && strstr(steps[i].why, "shard 0") &&
			strstr(steps[i].why, "no MSI IRQs") && strstr(steps[i].why, "CPU 0");
	}
	cr_assert(said, "no step says shard 0's IRQ must be pinned by hand (%u steps)", n);
	keel_topo_destroy(t);
}

/* --plan for @t, whose NIC's driver reports no channels (ethtool -l unsupported: e1000e,
 * r8169): no channel step (ethtool -L fails on such a driver), and IRQ 77 pinned to CPU 0.
 * Returns whether a note has @note in it (NULL: not looked for). */
static bool
plan_without_channels(struct keel_topo *t, struct keel_topo_nic *nic, const char *note)
{
	static struct plan_step steps[64];
	struct tool_ctx c;
	bool pinned = false, said = false;
	unsigned n;

	nic->ch_combined = nic->ch_rx = nic->ch_tx = -1;
	nic->ch_max_combined = nic->ch_max_rx = nic->ch_max_tx = -1;
	map.shards[0].irq_cpu = 0;
	n = plan_of(t, &c, steps, sizeof(steps) / sizeof(steps[0]));
	for (unsigned i = 0; i < n; i++) {
		cr_assert(steps[i].kind != PLAN_RUN || !strstr(steps[i].why, "rx queue per shard"),
			  "a channel step for a driver without channels: %s", steps[i].why);
		pinned |= steps[i].kind == PLAN_WRITE &&
			  !strcmp(steps[i].path, "/proc/irq/77/smp_affinity_list") &&
			  !strcmp(steps[i].data, "0");
		said |= note && steps[i].kind == PLAN_NOTE && strstr(steps[i].why, note);
	}
	cr_assert(pinned, "IRQ 77 not pinned to CPU 0 (%u steps)", n);
	return said;
}

/* The same driver with more queues than the map uses (vmxnet3's fixed count, say): no
 * channel step either, a note, and the IRQ line. The plan printed ethtool -L IF combined N,
 * and no IRQ line, whenever the queues were more. */
Test(tools_topo, plan_for_a_nic_without_channels_and_more_queues_pins_its_irq)
{
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live(&nic);

	nic->rxq = realloc(nic->rxq, 4 * sizeof(*nic->rxq));
	cr_assert_not_null(nic->rxq);
	for (int q = 1; q < 4; q++) {
		nic->rxq[q] = nic->rxq[0];
		nic->rxq[q].irq = 77 + q;
	}
	nic->nrxq = 4;
	cr_assert(plan_without_channels(t, nic, "has 4 rx queues"),
		  "no note says the 4 queues stay");
	keel_topo_destroy(t);
}

/* --plan for a NIC whose driver reports no channels and has the queue the map needs: no
 * channel step, and its IRQ line is written. The plan printed ethtool -L, which fails on
 * such a driver, and then never the IRQ line, saying a channel change was still to come,
 * at every --plan. */
Test(tools_topo, plan_for_a_nic_without_channels_pins_its_irq)
{
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live(&nic);

	plan_without_channels(t, nic, NULL);
	keel_topo_destroy(t);
}

/* A driver with combined channels (at most 4) and a larger rx-only maximum (8): the plan
 * sets combined channels (ethtool -L IF combined N), so the map can have at most 4 queues.
 * The mapper took the larger maximum: --shards 8 made a map of 8 queues and the plan said
 * "ethtool -L eth0 combined 8", which the driver refuses. */
Test(tools_topo, the_mapper_keeps_to_the_channels_the_plan_sets)
{
	struct keel_topo_load_opts o = { .synthetic = "pack:1 core:8 pu:1" };
	struct keel_topo *t;
	struct keel_topo_nic *n;
	struct keel_map_req r;
	char err[512];

	cr_assert_eq(keel_topo_load(&o, &t, err, sizeof(err)), 0, "%s", err);
	t->info.live = true;
	t->info.irqbalance = KEEL_TOPO_OFF;
	n = keel__topo_nic_add(t);
	cr_assert_not_null(n);
	t->info.nics = t->nics;
	snprintf(n->name, sizeof(n->name), "eth0");
	n->netdev = true;
	n->numa = 0;
	n->local = t->info.present;
	n->nrxq = 4;
	n->rxq = calloc(4, sizeof(*n->rxq));
	cr_assert_not_null(n->rxq);
	for (int i = 0; i < 4; i++) {
		n->rxq[i].index = i;
		n->rxq[i].irq = -1;
	}
	n->ch_combined = n->ch_max_combined = 4;
	n->ch_rx = n->ch_tx = 0;
	n->ch_max_rx = n->ch_max_tx = 8;
	keel_map_req_init(&r);
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(map.nshards, 4);
	r.shards = 8;
	cr_assert_eq(keel_map_compute(t, &r, &map, err, sizeof(err)), -EINVAL, "a map of %u queues",
		     map.rx_queues);
	cr_assert(strstr(err, "4"), "%s", err);
	keel_topo_destroy(t);
}
