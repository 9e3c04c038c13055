// SPDX-License-Identifier: MIT
/* keel-topo's report and plan as functions, on a live topology built by hand: what the
 * binary on this machine cannot show (a NIC with named IRQs, one without MSI IRQs). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../core/topo_internal.h"
#include "fake_topo.h"
#include "tmpdir.h"
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

/* The tool's context for @t and the test's map. */
static void
ctx_of(struct keel_topo *t, struct tool_ctx *c)
{
	memset(c, 0, sizeof(*c));
	c->topo = t;
	c->info = keel_topo_info_get(t);
	c->map = &map;
	c->port = -1;
}

static char *
report(struct keel_topo *t)
{
	struct tool_ctx c;
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);

	cr_assert_not_null(f);
	ctx_of(t, &c);
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
	ctx_of(t, c);
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

/* --plan for a virtio-net NIC whose one IRQ serves every queue (virtio0-virtqueues, as
 * keel__topo_rxq_irqs gives it to each): an IRQ line per shard, each undoing the one before,
 * or (the IRQ named no queue) a "pin it by hand" note per queue, said nothing true. Now one
 * note names the queues, the shared IRQ and the fix, and no IRQ line is written. */
Test(tools_topo, plan_for_a_virtio_vector_shared_by_every_queue_says_it_once)
{
	static struct plan_step steps[64];
	static const int irqs[2] = { 24, 25 };
	char names[2][64] = { "virtio0-config", "virtio0-virtqueues" };
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live(&nic);
	struct tool_ctx c;
	unsigned n, said = 0;

	nic->rxq = realloc(nic->rxq, 2 * sizeof(*nic->rxq));
	cr_assert_not_null(nic->rxq);
	nic->nrxq = 2;
	nic->ch_combined = nic->ch_max_combined = 2; /* no channel change */
	for (int q = 0; q < 2; q++) {
		nic->rxq[q] = (struct keel_topo_rxq){ .index = (unsigned)q, .irq = -1 };
		map.shards[q] = (struct keel_map_shard){
			.cpu = q, .core = -1, .numa = -1, .rxq = q, .irq_cpu = q
		};
	}
	map.nshards = 2;
	map.rx_queues = 2;
	keel__topo_rxq_irqs(nic, irqs, 2, names);
	n = plan_of(t, &c, steps, sizeof(steps) / sizeof(steps[0]));
	for (unsigned i = 0; i < n; i++) {
		cr_assert_neq(steps[i].kind, PLAN_WRITE, "an IRQ line for a shared IRQ: %s %s",
			      steps[i].path, steps[i].data);
		cr_assert_null(strstr(steps[i].why, "pin the IRQ of"), "%s", steps[i].why);
		said += steps[i].kind == PLAN_NOTE &&
			strstr(steps[i].why, "rx queues 0, 1 of fake0 share IRQ 25") &&
			strstr(steps[i].why, "echo 0 > /proc/irq/25/smp_affinity_list");
	}
	cr_assert_eq(said, 1, "%u notes of the shared IRQ (%u steps)", said, n);
	keel_topo_destroy(t);
}

/* @nq queues of the test's NIC sharing IRQ 25 (a virtio-net vector for all), and @ns shards,
 * shard i on queue i % @nq. */
static void
shared_irq_nic(struct keel_topo_nic *nic, unsigned nq, unsigned ns)
{
	nic->rxq = realloc(nic->rxq, nq * sizeof(*nic->rxq));
	cr_assert_not_null(nic->rxq);
	nic->nrxq = nq;
	nic->ch_combined = nic->ch_max_combined = (int)nq; /* no channel change */
	for (unsigned q = 0; q < nq; q++)
		nic->rxq[q] = (struct keel_topo_rxq){ .index = q, .irq = 25 };
	snprintf(nic->rxq[0].irq_name, sizeof(nic->rxq[0].irq_name), "virtio0-virtqueues");
	for (unsigned i = 0; i < ns; i++)
		map.shards[i] = (struct keel_map_shard){ .cpu = (int)i,
							 .core = -1,
							 .numa = -1,
							 .rxq = (int)(i % nq),
							 .irq_cpu = (int)i };
	map.nshards = ns;
	map.rx_queues = nq;
}

/* --plan's note for a shared IRQ of 40 queues and shards lists all 40 of each: the lists
 * were cut at 32 characters ("0, 1, 2, 3, 4, 5, 6, 7, 8, 9..."), mid-list and unsaid how
 * many were left out, in a note of 400 bytes. */
Test(tools_topo, plan_note_of_a_shared_irq_lists_every_queue_and_shard)
{
	static struct plan_step steps[64];
	static char want[512];
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live(&nic);
	struct tool_ctx c;
	size_t o = 0;
	unsigned n, said = 0;
	const char *last = "";

	shared_irq_nic(nic, 40, 40);
	for (unsigned q = 0; q < 40; q++)
		o += (size_t)snprintf(want + o, sizeof(want) - o, "%s%u", q ? ", " : "", q);
	n = plan_of(t, &c, steps, sizeof(steps) / sizeof(steps[0]));
	for (unsigned i = 0; i < n; i++) {
		const char *why = steps[i].why, *rq = strstr(why, ": rx queues ");
		size_t wl = strlen(want);

		if (steps[i].kind != PLAN_NOTE || !strstr(why, "share IRQ 25"))
			continue;
		last = why;
		said += !strncmp(why, "shards ", 7) && !strncmp(why + 7, want, wl) &&
			why[7 + wl] == ':' && rq && !strncmp(rq + 12, want, wl) &&
			!strncmp(rq + 12 + wl, " of fake0", 9) &&
			strstr(why, "echo 0 > /proc/irq/25/smp_affinity_list");
	}
	cr_assert_eq(said, 1, "no note lists shards and queues 0 to 39 whole: %s", last);
	keel_topo_destroy(t);
}

/* A list longer than its line keeps whole items and says how many it left out: never cut
 * mid-number, never left out unsaid. */
Test(tools_topo, a_list_too_long_for_its_line_says_how_many_it_left_out)
{
	static struct keel__topo_list l;
	char buf[40];

	l.n = 0;
	for (unsigned v = 100; v < 120; v++)
		cr_assert(keel__topo_list_add(&l, v));
	cr_assert_not(keel__topo_list_add(&l, 105), "a value already there was added again");
	cr_assert_str_eq(keel__topo_list_format(&l, buf, sizeof(buf)),
			 "100, 101, 102, 103, 104 and 15 more");
	l.n = 3;
	cr_assert_str_eq(keel__topo_list_format(&l, buf, sizeof(buf)), "100, 101, 102");
}

/* keel__topo_shared_irq's line (keel-topo --check and the report) for two shards on queue
 * 0 and one on queue 1 of one shared IRQ names queue 0 once: it listed "0, 0, 1". */
Test(tools_topo, shared_irq_line_names_a_queue_of_two_shards_once)
{
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live(&nic);
	char *out = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&out, &len);

	cr_assert_not_null(f);
	shared_irq_nic(nic, 2, 3);
	map.shards[1].rxq = 0;
	map.shards[2].rxq = 1;
	cr_assert_eq(keel__topo_shared_irq(nic, &map, 0, f), 1);
	fclose(f);
	cr_assert(strstr(out, "rx queues 0, 1 (shards 0, 1, 2) share one IRQ 25"), "%s", out);
	free(out);
	keel_topo_destroy(t);
}

/* The report and --json of a virtio-net NIC whose one IRQ serves every queue: each queue
 * shows it (keel__topo_rxq_irqs gives it to each), marked shared, as one IRQ fires on one
 * set of CPUs for them all; a queue with its own IRQ is not marked. Before, each queue's line
 * read as its own IRQ ("rxq 1   IRQ 25   virtio0-virtqueues -> CPU ..."). */
Test(tools_topo, report_marks_a_virtio_vector_shared_by_every_queue)
{
	static const int irqs[2] = { 24, 25 };
	char names[2][64] = { "virtio0-config", "virtio0-virtqueues" };
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live(&nic);
	struct tool_ctx c;
	char *out = report(t), *json = NULL;
	size_t len = 0;
	FILE *f;

	/* fake0's one queue has its own IRQ 77 */
	cr_assert(strstr(out, "rxq 0   IRQ 77"), "%s", out);
	cr_assert_null(strstr(out, "shared"), "%s", out);
	free(out);

	nic->rxq = realloc(nic->rxq, 3 * sizeof(*nic->rxq));
	cr_assert_not_null(nic->rxq);
	nic->nrxq = 3;
	for (int q = 0; q < 3; q++)
		nic->rxq[q] = (struct keel_topo_rxq){ .index = (unsigned)q, .irq = -1 };
	keel__topo_rxq_irqs(nic, irqs, 2, names);
	out = report(t);
	for (int q = 0; q < 3; q++) {
		char line[128];

		snprintf(line, sizeof(line),
			 "rxq %-3d IRQ 25   virtio0-virtqueues       -> CPU ? (shared by all 3 rx "
			 "queues)\n",
			 q);
		cr_assert(strstr(out, line), "no \"%s\" in:\n%s", line, out);
	}
	free(out);

	ctx_of(t, &c);
	f = open_memstream(&json, &len);
	cr_assert_not_null(f);
	report_json(&c, f);
	fclose(f);
	for (int q = 0; q < 3; q++) {
		char item[160];

		snprintf(item, sizeof(item),
			 "{ \"queue\": %d, \"irq\": 25, \"irq_name\": \"virtio0-virtqueues\", "
			 "\"affinity\": null, \"affinity_beyond_limit\": false, \"irq_shared\": "
			 "true }",
			 q);
		cr_assert(strstr(json, item), "no %s in:\n%s", item, json);
	}
	free(json);

	/* The Map section, with a shard on each queue and the IRQ on CPUs 0-3: one IRQ points
	 * at one set of CPUs, so it is said once as shared, in --check's words with its fix,
	 * not as "IRQ 25 now CPU 0-3: MISMATCH" on each shard. */
	for (int q = 0; q < 3; q++) {
		nic->rxq[q].affinity_known = true;
		for (unsigned cpu = 0; cpu < 4; cpu++)
			keel_cpuset_add(&nic->rxq[q].affinity, cpu);
		map.shards[q] = (struct keel_map_shard){
			.cpu = q, .core = -1, .numa = -1, .rxq = q, .irq_cpu = q
		};
	}
	map.nshards = 3;
	map.rx_queues = 3;
	out = report(t);
	cr_assert_null(strstr(out, "MISMATCH"), "%s", out);
	for (int q = 0; q < 3; q++) {
		char line[128];

		snprintf(line, sizeof(line),
			 "fake0 rxq %d -> IRQ CPU %d (IRQ 25 now CPU 0-3, shared: see below)\n", q,
			 q);
		cr_assert(strstr(out, line), "no \"%s\" in:\n%s", line, out);
	}
	{
		const char *said = strstr(out, "\n  fake0 rx queues 0, 1, 2 (shards 0, 1, 2) share "
					       "one IRQ 25 (virtio0-virtqueues)");

		cr_assert(said && strstr(said, "vectors=8") &&
				  strstr(said, "echo 0 > /proc/irq/25/smp_affinity_list\n"),
			  "%s", out);
		cr_assert_null(strstr(strstr(said, "share one IRQ") + 1, "share one IRQ"),
			       "said twice:\n%s", out);
	}
	free(out);
	keel_topo_destroy(t);
}

/* --svg of the same NIC and map: the one IRQ each queue has was drawn on each queue box
 * ("IRQ 25→0-3"), and each box but one in the warning colour as a mismatch. Each box now
 * reads "IRQ 25*", and one line above the queues says the IRQ, where it points and that it
 * cannot fire on each shard's CPU. */
Test(tools_topo, svg_draws_a_virtio_vector_shared_by_every_queue_once)
{
	static const int irqs[2] = { 24, 25 };
	char names[2][64] = { "virtio0-config", "virtio0-virtqueues" };
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live(&nic);
	struct tool_ctx c;
	char *svg = NULL;
	const char *p;
	size_t len = 0;
	unsigned boxes = 0;
	FILE *f;

	nic->rxq = realloc(nic->rxq, 3 * sizeof(*nic->rxq));
	cr_assert_not_null(nic->rxq);
	nic->nrxq = 3;
	for (int q = 0; q < 3; q++) {
		nic->rxq[q] = (struct keel_topo_rxq){ .index = (unsigned)q, .irq = -1 };
		nic->rxq[q].affinity_known = true;
		for (unsigned cpu = 0; cpu < 4; cpu++)
			keel_cpuset_add(&nic->rxq[q].affinity, cpu);
		map.shards[q] = (struct keel_map_shard){
			.cpu = q, .core = -1, .numa = -1, .rxq = q, .irq_cpu = q
		};
	}
	map.nshards = 3;
	map.rx_queues = 3;
	keel__topo_rxq_irqs(nic, irqs, 2, names);
	ctx_of(t, &c);
	f = open_memstream(&svg, &len);
	cr_assert_not_null(f);
	cr_assert_eq(svg_write(&c, f), 0);
	fclose(f);
	cr_assert_null(strstr(svg, "IRQ 25→"), "a shared IRQ drawn per queue:\n%s", svg);
	for (p = svg; (p = strstr(p, ">IRQ 25*</text>")); p++)
		boxes++;
	cr_assert_eq(boxes, 3, "%u queue boxes marked shared:\n%s", boxes, svg);
	p = strstr(svg, ">* IRQ 25 (virtio0-virtqueues) → CPU 0-3 serves all 3 rx queues: one "
			"IRQ cannot fire on each shard's CPU (see keel-topo --check)</text>");
	cr_assert(p, "no line for the shared IRQ:\n%s", svg);
	cr_assert_null(strstr(p + 2, "* IRQ 25 ("), "said twice:\n%s", svg);
	cr_assert_null(strstr(svg, "#feebc8"), "a queue drawn as a mismatch:\n%s", svg);
	free(svg);
	keel_topo_destroy(t);
}

/* --plan for a NIC without MSI IRQs (legacy INTx) with shards on three of its queues (two on
 * one): its one IRQ line serves all of them, and the plan said "shard N: ... no MSI IRQs ...
 * pin it by hand to CPU N" for each shard. One note says it for the NIC now. */
Test(tools_topo, plan_for_a_nic_without_msi_irqs_says_it_once)
{
	static struct plan_step steps[64];
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live(&nic);
	struct tool_ctx c;
	unsigned n, said = 0, all = 0;

	nic->rxq = realloc(nic->rxq, 3 * sizeof(*nic->rxq));
	cr_assert_not_null(nic->rxq);
	nic->nrxq = 3;
	nic->has_irqs = false;
	nic->ch_combined = nic->ch_max_combined = 3; /* no channel change */
	for (int q = 0; q < 3; q++)
		nic->rxq[q] = (struct keel_topo_rxq){ .index = (unsigned)q, .irq = -1 };
	for (int i = 0; i < 4; i++)
		map.shards[i] = (struct keel_map_shard){
			.cpu = i, .core = -1, .numa = -1, .rxq = i % 3, .irq_cpu = i
		};
	map.nshards = 4;
	map.rx_queues = 3;
	n = plan_of(t, &c, steps, sizeof(steps) / sizeof(steps[0]));
	for (unsigned i = 0; i < n; i++) {
		cr_assert_neq(steps[i].kind, PLAN_WRITE, "an IRQ line without an IRQ: %s",
			      steps[i].why);
		all += strstr(steps[i].why, "no MSI IRQs") != NULL;
		said += steps[i].kind == PLAN_NOTE &&
			strstr(steps[i].why, "shards 0, 1, 2, 3: fake0 has no MSI IRQs") &&
			strstr(steps[i].why, "rx queues 0, 1, 2,") &&
			strstr(steps[i].why, "pin it by hand to one shard's CPU, e.g. CPU 0");
	}
	cr_assert(said == 1 && all == 1, "%u notes of the NIC's one IRQ, %u in all (%u steps)%s%s",
		  said, all, n, n ? ": " : "", n ? steps[n - 1].why : "");
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

/* In @dir, a stand-in for the command @name that appends its arguments to @dir/ran and
 * exits 0 (as the real one would on success). */
static void
stub_command(const char *dir, const char *name)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	fprintf(f, "#!/bin/sh\necho \"%s $*\" >> '%s/ran'\nexit 0\n", name, dir);
	cr_assert_eq(fclose(f), 0);
	cr_assert_eq(chmod(path, 0755), 0);
}

/* plan_apply(@steps, @n) with PATH set to @dir alone and stderr kept in @errpath; PATH and
 * stderr come back after it. Returns plan_apply's status. */
static int
apply_in(const char *dir, const struct plan_step *steps, unsigned n, const char *errpath)
{
	char *oldpath = getenv("PATH") ? strdup(getenv("PATH")) : NULL;
	int saved, fd, r;

	cr_assert_eq(setenv("PATH", dir, 1), 0);
	fflush(stderr);
	saved = dup(STDERR_FILENO);
	fd = open(errpath, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
	cr_assert(saved >= 0 && fd >= 0);
	cr_assert_geq(dup2(fd, STDERR_FILENO), 0);
	r = plan_apply(steps, n);
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	close(fd);
	if (oldpath)
		setenv("PATH", oldpath, 1);
	else
		unsetenv("PATH");
	free(oldpath);
	return r;
}

/* plan_apply(@steps, @n) with PATH holding only stand-ins for ethtool and systemctl that
 * record a call, and stderr kept in @out: fails the test if any command ran (whatever
 * plan_apply does, no real one can). Returns plan_apply's status. */
static int
apply_with_stubs(const struct plan_step *steps, unsigned n, char *out, size_t len)
{
	char dir[] = "/tmp/keel-topo-apply-XXXXXX", errpath[256], ran[256];
	int fd, r;
	ssize_t got;

	cr_assert_not_null(mkdtemp(dir));
	stub_command(dir, "ethtool");
	stub_command(dir, "systemctl");
	snprintf(errpath, sizeof(errpath), "%s/stderr", dir);
	snprintf(ran, sizeof(ran), "%s/ran", dir);
	r = apply_in(dir, steps, n, errpath);
	fd = open(errpath, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0);
	got = read(fd, out, len - 1);
	close(fd);
	out[got > 0 ? got : 0] = 0;
	fd = open(ran, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		char cmds[1024];
		ssize_t k = read(fd, cmds, sizeof(cmds) - 1);

		close(fd);
		cmds[k > 0 ? k : 0] = 0;
		cr_assert_fail("--apply ran commands of a plan it must refuse:\n%s(it said: %s)",
			       cmds, out);
	}
	rm_dir(dir);
	return r;
}

/* The first step of @steps[@n] that stops --apply (1-based), which must say @says; the
 * plan must have a command that --apply would run (ahead of the note or after it), and no
 * IRQ line (nothing would be written to /proc). */
static unsigned
first_stop(const struct plan_step *steps, unsigned n, const char *says)
{
	unsigned stop = 0;
	bool any = false;

	for (unsigned i = 0; i < n; i++) {
		cr_assert_neq(steps[i].kind, PLAN_WRITE, "an IRQ line in the plan: %s",
			      steps[i].why);
		if (steps[i].stops_apply && !stop)
			stop = i + 1;
		any |= steps[i].kind == PLAN_RUN;
	}
	cr_assert(stop, "no step of the %u says the plan cannot be applied", n);
	cr_assert(strstr(steps[stop - 1].why, says), "%s", steps[stop - 1].why);
	cr_assert(any, "no command in the plan (premise: --apply would run one)");
	return stop;
}

/* --apply refused a plan whose step @stop says it cannot be right: status 1, the step named,
 * "nothing was run" (and apply_with_stubs saw no command run). */
static void
assert_refused(const struct plan_step *steps, unsigned n, unsigned stop)
{
	char out[2048], want[96];
	int r = apply_with_stubs(steps, n, out, sizeof(out));

	cr_assert_eq(r, 1, "--apply gave %d, not 1 (it said: %s)", r, out);
	snprintf(want, sizeof(want), "--apply refused: step %u says the plan cannot be right",
		 stop);
	cr_assert(strstr(out, want) && strstr(out, "nothing was run"),
		  "the refusal does not name step %u: '%s'", stop, out);
}

/* keel-topo --plan --hds --apply where the shards own every rx queue: each would be a ZCRX
 * queue, and no RSS table can keep other flows off them, so the plan's note marks it not to
 * be applied. --apply refuses (status 1) before it runs anything, the commands ahead of the
 * note included, and names the note's step. */
Test(tools_topo, apply_refuses_an_hds_plan_whose_shards_own_every_queue)
{
	static struct plan_step steps[64];
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live(&nic);
	struct tool_ctx c;
	unsigned n;

	nic->hds_capable = KEEL_TOPO_ON;
	map.hds = true; /* 1 shard on fake0's 1 rx queue: it owns them all */
	n = plan_of(t, &c, steps, sizeof(steps) / sizeof(steps[0]));
	assert_refused(steps, n, first_stop(steps, n, "needs queues the shards do not own"));
	keel_topo_destroy(t);
}

/* The same for a NIC whose driver cannot split headers from data, with queues the shards do
 * not own (so that note alone stops it): no command can turn the split on, and running the
 * rest (channels, RSS weights, ntuple rules) would set up ZCRX queues that can never work.
 * It ran them, and said 0, before the fortieth session. */
Test(tools_topo, apply_refuses_an_hds_plan_for_a_driver_that_cannot_split)
{
	static struct plan_step steps[64];
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live(&nic);
	struct tool_ctx c;
	unsigned n;

	nic->hds_capable = KEEL_TOPO_OFF;
	snprintf(nic->driver, sizeof(nic->driver), "virtio_net");
	nic->nrxq = 2;
	nic->rxq = realloc(nic->rxq, 2 * sizeof(*nic->rxq));
	cr_assert_not_null(nic->rxq);
	nic->rxq[1] = nic->rxq[0];
	nic->rxq[1].irq = 78;
	snprintf(nic->rxq[1].irq_name, sizeof(nic->rxq[1].irq_name), "fake0-TxRx-1");
	map.hds = true;
	map.rx_queues = 2; /* queue 0 for the other flows, queue 1 the shard's */
	map.shards[0].rxq = 1;
	n = plan_of(t, &c, steps, sizeof(steps) / sizeof(steps[0]));
	for (unsigned i = 0; i < n; i++)
		cr_assert(!strstr(steps[i].why, "needs queues the shards do not own"),
			  "premise: the shards own every queue (%s)", steps[i].why);
	assert_refused(steps, n, first_stop(steps, n, "virtio_net of fake0 cannot do it"));
	keel_topo_destroy(t);
}

/* In @dir, a stand-in ethtool that records its arguments in @dir/ran and plays the kernel's
 * rule for a user-set RSS table: "-X IF equal/weight" sets one (@dir/table says "set"),
 * "-X IF default" clears it, and "-L" fails while one is set (the kernel refuses channel
 * counts at or below the highest queue a user-set table names; the stand-in refuses any).
 * Shell built-ins only: PATH holds nothing else. */
static void
stub_ethtool_with_table(const char *dir)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/ethtool", dir);
	f = fopen(path, "w");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	fprintf(f,
		"#!/bin/sh\n"
		"echo \"ethtool $*\" >> '%s/ran'\n"
		"case \"$1 $3\" in\n"
		"'-X default') echo none > '%s/table' ;;\n"
		"'-X equal'|'-X weight') echo set > '%s/table' ;;\n"
		"esac\n"
		"v=none\n"
		"[ -e '%s/table' ] && read v < '%s/table'\n"
		"if [ \"$1\" = -L ] && [ \"$v\" = set ]; then\n"
		"  echo 'netlink error: Invalid argument' >&2; exit 1\n"
		"fi\n"
		"exit 0\n",
		dir, dir, dir, dir, dir);
	cr_assert_eq(fclose(f), 0);
	cr_assert_eq(chmod(path, 0755), 0);
}

/* plan_apply(@steps, @n) with PATH holding only that stand-in (and systemctl's), in a
 * state where an earlier plan left a user-set table when @table; the commands run go to
 * @ran. Returns plan_apply's status. Needs root (plan_apply refuses otherwise). */
static int
apply_over_a_table(const struct plan_step *steps, unsigned n, bool table, char *ran, size_t len)
{
	char dir[] = "/tmp/keel-topo-apply-XXXXXX", path[256];
	int fd, r;
	ssize_t got;

	cr_assert_not_null(mkdtemp(dir));
	stub_ethtool_with_table(dir);
	stub_command(dir, "systemctl");
	if (table) {
		snprintf(path, sizeof(path), "%s/table", dir);
		fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
		cr_assert_geq(fd, 0);
		cr_assert_eq(write(fd, "set\n", 4), 4);
		close(fd);
	}
	snprintf(path, sizeof(path), "%s/stderr", dir);
	r = apply_in(dir, steps, n, path);
	snprintf(path, sizeof(path), "%s/ran", dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	got = fd >= 0 ? read(fd, ran, len - 1) : 0;
	if (fd >= 0)
		close(fd);
	ran[got > 0 ? got : 0] = 0;
	rm_dir(dir);
	return r;
}

/* An earlier plan's RSS table (ethtool -X IF weight ..., which the kernel keeps as
 * user-set) makes the next plan's first step, ethtool -L, fail with EINVAL when the new
 * count is at or below a queue the table names. A plan that changes the channels and sets a
 * table resets it first (ethtool -X IF default), so --apply runs through; it stopped at
 * ethtool -L. */
Test(tools_topo, plan_resets_the_rss_table_before_changing_the_channels)
{
	static struct plan_step steps[64];
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live(&nic);
	struct tool_ctx c;
	char ran[2048];
	int reset = -1, channels = -1, equal = -1, said = -1;
	unsigned n;

	nic->ch_combined = 4; /* 4 channels now, the map's 1 queue: ethtool -L runs */
	nic->ch_max_combined = 4;
	map.shards[0].irq_cpu = 0;
	n = plan_of(t, &c, steps, sizeof(steps) / sizeof(steps[0]));
	for (unsigned i = 0; i < n; i++) {
		if (steps[i].kind == PLAN_NOTE && said < 0 &&
		    strstr(steps[i].why, "ethtool -N fake0 delete LOC"))
			said = (int)i;
		if (steps[i].kind != PLAN_RUN || steps[i].argc < 4)
			continue;
		if (!strcmp(steps[i].argv[1], "-X") && !strcmp(steps[i].argv[3], "default"))
			reset = (int)i;
		if (!strcmp(steps[i].argv[1], "-L"))
			channels = (int)i;
		if (!strcmp(steps[i].argv[1], "-X") && !strcmp(steps[i].argv[3], "equal"))
			equal = (int)i;
	}
	cr_assert(channels >= 0 && equal > channels, "premise: -L, then -X equal (%u steps)", n);
	cr_assert(reset >= 0 && reset < channels,
		  "no ethtool -X fake0 default before ethtool -L (step %d, -L at %d)", reset,
		  channels);
	/* Rules and contexts an earlier plan added block it too: said, with the commands. */
	cr_assert(said >= 0 && said < channels, "no note on earlier rules before ethtool -L");
	if (geteuid() != 0)
		cr_skip_test("--apply needs root (the plan's order was checked)");
	cr_assert_eq(apply_over_a_table(steps, n, true, ran, sizeof(ran)), 0,
		     "--apply over an earlier plan's table failed; it ran:\n%s", ran);
	cr_assert(strstr(ran, "ethtool -X fake0 default\nethtool -L fake0 combined 1\n"), "%s",
		  ran);
	/* With the channels already right, nothing to reset for: no extra step. */
	nic->ch_combined = 1;
	n = plan_of(t, &c, steps, sizeof(steps) / sizeof(steps[0]));
	for (unsigned i = 0; i < n; i++)
		cr_assert(steps[i].kind != PLAN_RUN || steps[i].argc < 4 ||
				  strcmp(steps[i].argv[3], "default"),
			  "a reset without a channel change (step %u)", i);
	keel_topo_destroy(t);
}

/* The text of @path (the test fails when it cannot be read); free() it. */
static char *
read_all(const char *path)
{
	FILE *f = fopen(path, "r");
	char *text = calloc(1, 1 << 16);
	size_t n;

	cr_assert(f && text, "%s: %s", path, strerror(errno));
	n = fread(text, 1, (1 << 16) - 1, f);
	text[n] = 0;
	fclose(f);
	return text;
}

/* A stand-in @name in @dir running the shell text @body. */
static void
script_command(const char *dir, const char *name, const char *body)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	fprintf(f, "#!/bin/sh\n%s\n", body);
	cr_assert_eq(fclose(f), 0);
	cr_assert_eq(chmod(path, 0755), 0);
}

/* One step running `ethtool ARGS...` (@kind), @args NULL-terminated. */
static void
step_of(struct plan_step *s, enum plan_kind kind, const char *const *args)
{
	memset(s, 0, sizeof(*s));
	s->kind = kind;
	s->argv[s->argc++] = "ethtool";
	while (*args)
		s->argv[s->argc++] = *args++;
}

/* --apply's report of a step that fails says how: its exit status, or the signal that
 * killed it (all were "failed (Input/output error)"); and a command that writes more than
 * the 512 bytes kept of its output is read to its end, so it is not killed by SIGPIPE and
 * the context number at its end is found. Stand-ins for ethtool (PATH), never the real one. */
Test(topo_plan, apply_says_how_a_step_failed_and_reads_a_long_output)
{
	static const char *const x[] = { "-X", "fake0", "context", "new", "equal", "2", NULL };
	static const char *const n[] = { "-N",      "fake0",      "flow-type", "tcp4",
					 "context", PLAN_CTX_ARG, NULL };
	static const char *const l[] = { "-L", "fake0", "combined", "2", NULL };
	struct plan_step steps[2];
	char dir[] = "/tmp/keel-topo-fail-XXXXXX", errpath[256], ran[512], *text;
	int r;

	if (geteuid() != 0)
		cr_skip_test("--apply needs root");
	cr_assert_not_null(mkdtemp(dir));
	snprintf(errpath, sizeof(errpath), "%s/stderr", dir);
	step_of(&steps[0], PLAN_RUN, l);
	script_command(dir, "ethtool", "exit 3");
	r = apply_in(dir, steps, 1, errpath);
	text = read_all(errpath);
	cr_assert_eq(r, 1);
	cr_assert(strstr(text, "ethtool exited with status 3") && strstr(text, "step 1 failed;"),
		  "%s", text);
	free(text);
	script_command(dir, "ethtool", "kill -TERM $$");
	r = apply_in(dir, steps, 1, errpath);
	text = read_all(errpath);
	cr_assert_eq(r, 1);
	cr_assert(strstr(text, "ethtool was killed by signal 15"), "%s", text);
	free(text);
	/* 64 KiB before the context's line (more than a pipe holds); then the rule step runs
	 * with that context's number. */
	snprintf(ran, sizeof(ran),
		 "if [ \"$1\" = -X ]; then /usr/bin/head -c 65536 /dev/zero | /usr/bin/tr '\\0' x; "
		 "echo; "
		 "echo 'New RSS context is 7'; else echo \"$*\" > '%s/ran'; fi",
		 dir);
	script_command(dir, "ethtool", ran);
	step_of(&steps[0], PLAN_NEW_CTX, x);
	step_of(&steps[1], PLAN_RUN, n);
	fflush(stdout);
	{
		int saved = dup(STDOUT_FILENO), devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);

		dup2(devnull, STDOUT_FILENO); /* the 64 KiB the command prints */
		r = apply_in(dir, steps, 2, errpath);
		fflush(stdout);
		dup2(saved, STDOUT_FILENO);
		close(saved);
		close(devnull);
	}
	text = read_all(errpath);
	cr_assert_eq(r, 0, "%s", text);
	free(text);
	snprintf(errpath, sizeof(errpath), "%s/ran", dir);
	text = read_all(errpath);
	cr_assert_str_eq(text, "-N fake0 flow-type tcp4 context 7\n");
	free(text);
	rm_dir(dir);
}

/* A map of vlan0, an interface over fake0 (an older keel-topo's, which mapped it as a
 * virtual interface, or one written by hand; the mapper now refuses to make it). The report
 * and --json say what it is over; the plan runs nothing and stops --apply, naming fake0 to
 * plan with. Its plan was ethtool -L vlan0 and "virtual interface: no RSS table, ntuple
 * rules or IRQs to configure". sysfs is a folder of the test's (keel__sys_class_net). */
Test(tools_topo, a_map_of_an_interface_over_another_is_said_and_not_applied)
{
	static struct plan_step steps[64];
	char root[] = "/tmp/keel-net-XXXXXX", path[300], *out = NULL;
	struct keel_topo_nic *nic;
	struct keel_topo *t = fake_live(&nic);
	struct tool_ctx c;
	unsigned n, stop = 0;
	size_t len = 0;
	FILE *f;

	cr_assert(mkdtemp(root));
	snprintf(path, sizeof(path), "%s/vlan0", root);
	cr_assert_eq(mkdir(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/vlan0/lower_fake0", root);
	cr_assert_eq(symlink("../fake0", path), 0);
	keel__sys_class_net = root;
	cr_assert_eq(keel__topo_sysfs_virtual(t), 0);
	snprintf(map.iface, sizeof(map.iface), "vlan0");

	n = plan_of(t, &c, steps, sizeof(steps) / sizeof(steps[0]));
	for (unsigned i = 0; i < n; i++) {
		cr_assert_neq(steps[i].kind, PLAN_RUN, "step %u runs a command: %s", i + 1,
			      steps[i].why);
		if (steps[i].stops_apply && !stop)
			stop = i + 1;
	}
	cr_assert(stop, "no step of the %u stops --apply", n);
	cr_assert(strstr(steps[stop - 1].why, "vlan0 is over fake0") &&
			  strstr(steps[stop - 1].why, "--iface fake0"),
		  "%s", steps[stop - 1].why);

	out = report(t);
	cr_assert(strstr(out, "  vlan0\n      over fake0: "), "%s", out);
	free(out);
	out = NULL;
	f = open_memstream(&out, &len);
	cr_assert_not_null(f);
	report_json(&c, f);
	fclose(f);
	cr_assert(strstr(out, "\"name\": \"vlan0\"") && strstr(out, "\"lower\": [\"fake0\"]") &&
			  strstr(out, "\"lower\": []"),
		  "%s", out);
	free(out);
	keel_topo_destroy(t);
	rm_dir(root);
}
