// SPDX-License-Identifier: MIT
/* The report: text for people, JSON for programs (same facts, schema in docs/topology.md). */
#include <stdio.h>
#include <string.h>

#include "../../core/topo_internal.h"
#include "topo_tool.h"

static const char *
size_str(uint64_t bytes, char *buf, size_t len)
{
	if (!bytes)
		snprintf(buf, len, "?");
	else if (bytes >= (1ull << 30))
		snprintf(buf, len, "%.1f GiB", (double)bytes / (double)(1ull << 30));
	else if (bytes >= (1ull << 20))
		snprintf(buf, len, "%llu MiB", (unsigned long long)(bytes >> 20));
	else
		snprintf(buf, len, "%llu KiB", (unsigned long long)(bytes >> 10));
	return buf;
}

static const char *
num_or(int v, char *buf, size_t len, const char *unknown)
{
	if (v < 0)
		return unknown;
	snprintf(buf, len, "%d", v);
	return buf;
}

const struct keel_map_shard *
shard_on_cpu(const struct keel_map *m, unsigned cpu, unsigned *id)
{
	if (!m)
		return NULL;
	for (unsigned i = 0; i < m->nshards; i++)
		if (m->shards[i].cpu == (int)cpu) {
			*id = i;
			return &m->shards[i];
		}
	return NULL;
}

static void
text_core(const struct tool_ctx *c, unsigned ci, FILE *f)
{
	const struct keel_topo_core *co = &c->info->cores[ci];
	char b1[32], b2[32];

	fprintf(f, "    core %-3u PU", ci);
	for (unsigned p = 0; p < co->npus; p++) {
		unsigned id;
		bool allowed = true;
		for (unsigned k = 0; k < c->info->npus; k++)
			if (c->info->pus[k].os == co->pus[p])
				allowed = c->info->pus[k].allowed;
		fprintf(f, " %u%s", co->pus[p], allowed ? "" : "(not allowed)");
		if (shard_on_cpu(c->map, co->pus[p], &id))
			fprintf(f, "[shard %u]", id);
	}
	if (co->l2_bytes || co->l3_bytes)
		fprintf(f, "   L2 %s, L3 %s", size_str(co->l2_bytes, b1, sizeof(b1)),
			size_str(co->l3_bytes, b2, sizeof(b2)));
	fputc('\n', f);
}

/* "NUMA node N, local CPUs LIST", saying where CPUs past KEEL_MAX_CPUS are local too: the
 * list cannot hold them, and was shown empty when they were all of them. */
static void
text_nic_local(const struct keel_topo_nic *n, FILE *f)
{
	char node[48], list[256];

	if (n->numa >= 0)
		snprintf(node, sizeof(node), "NUMA node %d", n->numa);
	else
		snprintf(node, sizeof(node), "NUMA node: not one node");
	keel_topo_cpulist_format(&n->local, list, sizeof(list));
	if (!n->local_beyond)
		fprintf(f, "      %s, local CPUs %s\n", node, list);
	else if (!list[0])
		fprintf(f,
			"      %s, local CPUs: all numbered %d or above (KEEL_MAX_CPUS, keel's "
			"limit), so no shard can run on them\n",
			node, KEEL_MAX_CPUS);
	else
		fprintf(f,
			"      %s, local CPUs %s and more numbered %d or above (KEEL_MAX_CPUS, "
			"keel's limit: they take no shard)\n",
			node, list, KEEL_MAX_CPUS);
}

int
irq_queues(const struct keel_topo_nic *n, int irq)
{
	int with = 0;

	for (int q = 0; irq >= 0 && q < n->nrxq; q++)
		with += n->rxq[q].irq == irq;
	return with;
}

static void
text_nic(const struct tool_ctx *c, const struct keel_topo_nic *n, FILE *f)
{
	char b1[16], b2[16], b3[16], list[256];
	int with;

	fprintf(f, "  %s", n->name);
	if (!n->netdev)
		fprintf(f, "  (PCI function without a network interface, e.g. an SR-IOV VF)");
	if (n->driver[0])
		fprintf(f, "  driver %s", n->driver);
	if (n->is_vf)
		fprintf(f, "  SR-IOV VF");
	if (n->pci[0] && n->netdev)
		fprintf(f, "  PCI %s", n->pci);
	if (n->model[0])
		fprintf(f, "  \"%s\"", n->model);
	fputc('\n', f);
	if (n->nlower)
		fprintf(f,
			"      over %s: no PCI device, queues or IRQs of its own (its packets arrive "
			"on those of %s); a map names %s\n",
			n->lower, n->nlower == 1 ? "that interface" : "those interfaces",
			n->nlower == 1 ? "it" : "one of them");
	else if (n->is_virtual)
		fprintf(f, "      virtual interface: no PCI device, no NUMA locality\n");
	else
		text_nic_local(n, f);
	if (!n->netdev)
		return;
	if (!c->info->live && n->nrxq < 0) {
		fprintf(f, "      rx queues: unknown offline (give --queues N)\n");
		return;
	}
	fprintf(f, "      rx queues %s, tx queues %s", num_or(n->nrxq, b1, sizeof(b1), "?"),
		num_or(n->ntxq, b2, sizeof(b2), "?"));
	if (c->info->live) {
		if (n->ch_combined >= 0 || n->ch_rx >= 0)
			fprintf(f, "; channels combined %d/%d rx %d/%d tx %d/%d (now/max)",
				n->ch_combined, n->ch_max_combined, n->ch_rx, n->ch_max_rx,
				n->ch_tx, n->ch_max_tx);
		else
			fprintf(f, "; channels: not reported by the driver");
		fprintf(f, "; rx ring %s; header/data split %s",
			num_or(n->ring_rx, b3, sizeof(b3), "?"), keel_topo_state_name(n->hds));
		if (n->hds_thresh >= 0)
			fprintf(f, " (threshold %d)", n->hds_thresh);
	}
	fputc('\n', f);
	if (!c->info->live)
		return;
	if (!n->has_irqs && n->nrxq > 0) {
		fprintf(f, "      no MSI IRQs (virtual or legacy interrupt device)\n");
		return;
	}
	for (int q = 0; q < n->nrxq && q < 64; q++) {
		const struct keel_topo_rxq *r = &n->rxq[q];
		if (r->irq < 0) {
			fprintf(f, "      rxq %-3d IRQ unknown (none named for it)\n", q);
			continue;
		}
		with = irq_queues(n, r->irq);
		fprintf(f, "      rxq %-3d IRQ %-4d %-24s -> CPU %s%s", q, r->irq, r->irq_name,
			r->affinity_known
				? keel_topo_cpulist_format(&r->affinity, list, sizeof(list))
				: "?",
			r->affinity_beyond ? " and CPUs >= 1024 (beyond KEEL_MAX_CPUS)" : "");
		if (with > 1)
			fprintf(f, " (shared by %s%d rx queues)", with == n->nrxq ? "all " : "",
				with);
		fputc('\n', f);
	}
	if (n->nrxq > 64)
		fprintf(f, "      ... %d more rx queues\n", n->nrxq - 64);
}

/* The map's NIC in the topology, or NULL. */
static const struct keel_topo_nic *
map_nic(const struct tool_ctx *c)
{
	return c->map->iface[0] ? keel_topo_nic_find(c->topo, c->map->iface) : NULL;
}

static const struct keel_topo_rxq *
map_rxq(const struct tool_ctx *c, const struct keel_map_shard *s)
{
	const struct keel_topo_nic *n = map_nic(c);

	if (!n || s->rxq < 0 || s->rxq >= n->nrxq)
		return NULL;
	return &n->rxq[s->rxq];
}

void
report_text(const struct tool_ctx *c, FILE *f)
{
	const struct keel_topo_info *in = c->info;
	char list[512], b1[32];
	unsigned nmapped_nic = 0, nshared = 0;

	fprintf(f, "Topology of %s%s%s%s\n", in->source, in->host[0] ? " (host " : "", in->host,
		in->host[0] ? ")" : "");
	fprintf(f, "  %u package%s, %u NUMA node%s, %u core%s, %u PU%s; CPUs allowed here: %s\n",
		in->npackages, in->npackages == 1 ? "" : "s", in->nnuma, in->nnuma == 1 ? "" : "s",
		in->ncores, in->ncores == 1 ? "" : "s", in->npus, in->npus == 1 ? "" : "s",
		keel_topo_cpulist_format(&in->allowed, list, sizeof(list)));
	for (unsigned i = 0; i < in->nnuma; i++) {
		const struct keel_topo_numa *nd = &in->numa[i];
		const char *na = nd->memory_allowed ? ""
				 : in->live ? "not allowed here: outside the cgroup's cpuset.mems"
					    : "not allowed: outside the file's allowed nodeset";

		if (nd->memory_only) {
			fprintf(f,
				"\nNUMA node %u: %s memory only (no CPUs of its own%s%s), near CPUs "
				"%s\n",
				nd->os, size_str(nd->memory_bytes, b1, sizeof(b1)),
				na[0] ? "; " : "", na,
				keel_topo_cpulist_format(&nd->cpus, list, sizeof(list)));
			continue;
		}
		fprintf(f, "\nNUMA node %u: %s memory%s%s%s, %u core%s, CPUs %s\n", nd->os,
			size_str(nd->memory_bytes, b1, sizeof(b1)), na[0] ? " (" : "", na,
			na[0] ? ")" : "", nd->ncores, nd->ncores == 1 ? "" : "s",
			keel_topo_cpulist_format(&nd->cpus, list, sizeof(list)));
		for (unsigned ci = 0; ci < in->ncores; ci++)
			if (in->cores[ci].numa == (int)nd->os)
				text_core(c, ci, f);
	}
	for (unsigned ci = 0, hdr = 0; ci < in->ncores; ci++) {
		if (in->cores[ci].numa >= 0)
			continue;
		if (!hdr++)
			fprintf(f, "\nCores without a NUMA node:\n");
		text_core(c, ci, f);
	}

	fprintf(f, "\nNICs:\n");
	if (!in->nnics)
		fprintf(f, "  none\n");
	for (unsigned i = 0; i < in->nnics; i++)
		text_nic(c, &in->nics[i], f);
	fprintf(f, "\nirqbalance: %s\n",
		in->irqbalance == KEEL_TOPO_ON    ? "running (it moves IRQs; the plan stops it)"
		: in->irqbalance == KEEL_TOPO_OFF ? "not running"
		: in->live ? "unknown: none seen from this PID namespace (a container), and the "
			     "host's, which would move the IRQs, is not listed here"
			   : "unknown (offline)");

	fprintf(f, "\nMap");
	if (!c->map) {
		fprintf(f, ": none: %s\n", c->map_error ? c->map_error : "not computed");
		return;
	}
	fprintf(f, " (%u shard%s%s", c->map->nshards, c->map->nshards == 1 ? "" : "s",
		c->map->notes & KEEL_MAP_NOTE_CLAMPED ? ", cut to KEEL_MAX_SHARDS" : "");
	if (c->map->iface[0])
		fprintf(f, " for %s, NUMA node %s", c->map->iface,
			num_or(c->map->numa, b1, sizeof(b1), "none"));
	fprintf(f, "; smt %s, numa %s, reserve %u):\n",
		c->map->smt == KEEL_MAP_SMT_ALLOW ? "allow" : "avoid",
		c->map->numa_policy == KEEL_MAP_NUMA_SPREAD ? "spread" : "local", c->map->reserve);
	for (unsigned i = 0; i < c->map->nshards; i++) {
		const struct keel_map_shard *s = &c->map->shards[i];
		const struct keel_topo_rxq *q = map_rxq(c, s);
		char core[16], node[16];

		fprintf(f, "  shard %-3u -> CPU %-4d (core %s, node %s)", i, s->cpu,
			num_or(s->core, core, sizeof(core), "?"),
			num_or(s->numa, node, sizeof(node), "?"));
		if (s->rxq < 0) {
			fprintf(f, " -> no rx queue\n");
			continue;
		}
		nmapped_nic++;
		fprintf(f, " -> %s rxq %d -> IRQ CPU %s", c->map->iface, s->rxq,
			num_or(s->irq_cpu, b1, sizeof(b1), "not set"));
		if (q && q->irq >= 0 && q->affinity_known && s->irq_cpu < 0) {
			/* No irq_cpu: nothing to compare, as in keel_map_check and the SVG. */
			fprintf(f, " (IRQ %d now CPU %s%s)", q->irq,
				keel_topo_cpulist_format(&q->affinity, list, sizeof(list)),
				q->affinity_beyond ? " and CPUs >= 1024" : "");
		} else if (q && q->irq >= 0 && s->irq_cpu >= 0 &&
			   keel__topo_shared_irq(map_nic(c), c->map, i, NULL)) {
			/* One IRQ for several shards' queues can point at one set of CPUs only:
			 * a MISMATCH on every shard but one said nothing true. Said once below. */
			fprintf(f, " (IRQ %d%s%s%s, shared: see below)", q->irq,
				q->affinity_known ? " now CPU " : "",
				q->affinity_known
					? keel_topo_cpulist_format(&q->affinity, list, sizeof(list))
					: "",
				q->affinity_known && q->affinity_beyond ? " and CPUs >= 1024" : "");
			nshared++;
		} else if (q && q->irq >= 0 && q->affinity_known) {
			struct keel_cpuset want;
			memset(&want, 0, sizeof(want));
			keel_cpuset_add(&want, (unsigned)s->irq_cpu);
			fprintf(f, " (IRQ %d now CPU %s%s%s)", q->irq,
				keel_topo_cpulist_format(&q->affinity, list, sizeof(list)),
				q->affinity_beyond ? " and CPUs >= 1024" : "",
				q->affinity_beyond || memcmp(&want, &q->affinity, sizeof(want))
					? ": MISMATCH"
					: ": ok");
		} else if (c->info->live && s->rxq >= 0 && !q) {
			fprintf(f, " (queue does not exist yet: see --plan)");
		}
		fputc('\n', f);
	}
	/* Each shared IRQ once, in --check's words, with its fix. */
	for (unsigned i = 0; nshared && i < c->map->nshards; i++) {
		const struct keel_map_shard *s = &c->map->shards[i];
		const struct keel_topo_rxq *q = map_rxq(c, s);

		if (!q || q->irq < 0 || s->irq_cpu < 0 ||
		    keel__topo_shared_irq(map_nic(c), c->map, i, NULL) <= 0)
			continue;
		fputs("  ", f);
		keel__topo_shared_irq(map_nic(c), c->map, i, f);
	}
	if (nmapped_nic)
		fprintf(f,
			"Run keel-topo --plan to write this map and the commands that apply it.\n");
}

/* ---- JSON ---- */

void
json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	fputc('"', f);
}

static void
json_str_or_null(FILE *f, const char *s)
{
	if (*s)
		json_str(f, s);
	else
		fputs("null", f);
}

static void
json_int(FILE *f, int v)
{
	if (v < 0)
		fputs("null", f);
	else
		fprintf(f, "%d", v);
}

static void
json_cpus(FILE *f, const struct keel_cpuset *s)
{
	char list[4096];
	json_str(f, keel_topo_cpulist_format(s, list, sizeof(list)));
}

static void
json_state(FILE *f, enum keel_topo_state s)
{
	json_str(f, keel_topo_state_name(s));
}

static void
json_nic(const struct tool_ctx *c, const struct keel_topo_nic *n, FILE *f)
{
	fputs("    { \"name\": ", f);
	json_str(f, n->name);
	fputs(", \"netdev\": ", f);
	fputs(n->netdev ? "true" : "false", f);
	fputs(", \"pci\": ", f);
	if (n->pci[0])
		json_str(f, n->pci);
	else
		fputs("null", f);
	fputs(", \"virtual\": ", f);
	fputs(n->is_virtual ? "true" : "false", f);
	fputs(", \"lower\": [", f);
	for (const char *p = n->lower; *p;) {
		char name[sizeof(n->lower)];
		size_t len = strcspn(p, ",");

		snprintf(name, sizeof(name), "%.*s", (int)len, p);
		fputs(p == n->lower ? "" : ", ", f);
		json_str(f, name);
		p += len;
		p += strspn(p, ", ");
	}
	fputs("]", f);
	fputs(", \"vf\": ", f);
	fputs(n->is_vf ? "true" : "false", f);
	fputs(", \"model\": ", f);
	json_str_or_null(f, n->model);
	fputs(", \"driver\": ", f);
	json_str_or_null(f, n->driver);
	fputs(",\n      \"numa_node\": ", f);
	json_int(f, n->numa);
	fputs(", \"local_cpus\": ", f);
	json_cpus(f, &n->local);
	fputs(", \"local_cpus_beyond_limit\": ", f);
	fputs(n->local_beyond ? "true" : "false", f);
	fputs(", \"rx_queues\": ", f);
	json_int(f, n->nrxq);
	fputs(", \"tx_queues\": ", f);
	json_int(f, n->ntxq);
	fputs(",\n      \"channels\": { \"rx\": ", f);
	json_int(f, n->ch_rx);
	fputs(", \"tx\": ", f);
	json_int(f, n->ch_tx);
	fputs(", \"combined\": ", f);
	json_int(f, n->ch_combined);
	fputs(", \"max_rx\": ", f);
	json_int(f, n->ch_max_rx);
	fputs(", \"max_tx\": ", f);
	json_int(f, n->ch_max_tx);
	fputs(", \"max_combined\": ", f);
	json_int(f, n->ch_max_combined);
	fputs(" },\n      \"rx_ring\": ", f);
	json_int(f, n->ring_rx);
	fputs(", \"hds\": ", f);
	json_state(f, n->hds);
	fputs(", \"hds_thresh\": ", f);
	json_int(f, n->hds_thresh);
	fputs(", \"irqs\": ", f);
	fputs(n->has_irqs ? "true" : "false", f);
	fputs(",\n      \"rxq\": [", f);
	for (int q = 0; q < n->nrxq; q++) {
		const struct keel_topo_rxq *r = &n->rxq[q];
		fprintf(f, "%s\n        { \"queue\": %d, \"irq\": ", q ? "," : "", q);
		json_int(f, r->irq);
		fputs(", \"irq_name\": ", f);
		if (r->irq_name[0])
			json_str(f, r->irq_name);
		else
			fputs("null", f);
		fputs(", \"affinity\": ", f);
		if (r->affinity_known)
			json_cpus(f, &r->affinity);
		else
			fputs("null", f);
		fputs(", \"affinity_beyond_limit\": ", f);
		fputs(r->affinity_beyond ? "true" : "false", f);
		fputs(", \"irq_shared\": ", f);
		fputs(irq_queues(n, r->irq) > 1 ? "true" : "false", f);
		fputs(" }", f);
	}
	fputs(n->nrxq > 0 ? "\n      ] }" : "] }", f);
	(void)c;
}

void
report_json(const struct tool_ctx *c, FILE *f)
{
	const struct keel_topo_info *in = c->info;

	fputs("{\n  \"keel_topo\": 1,\n  \"source\": ", f);
	json_str(f, in->source);
	fputs(",\n  \"live\": ", f);
	fputs(in->live ? "true" : "false", f);
	fputs(",\n  \"host\": ", f);
	json_str_or_null(f, in->host);
	fprintf(f, ",\n  \"packages\": %u,\n  \"cores\": %u,\n  \"pus\": %u,\n  \"cpus\": ",
		in->npackages, in->ncores, in->npus);
	json_cpus(f, &in->present);
	fputs(",\n  \"cpus_allowed\": ", f);
	json_cpus(f, &in->allowed);
	fputs(",\n  \"numa_nodes\": [", f);
	for (unsigned i = 0; i < in->nnuma; i++) {
		const struct keel_topo_numa *nd = &in->numa[i];
		fprintf(f, "%s\n    { \"node\": %u, \"memory_bytes\": ", i ? "," : "", nd->os);
		if (nd->memory_bytes)
			fprintf(f, "%llu", (unsigned long long)nd->memory_bytes);
		else
			fputs("null", f);
		fputs(", \"cpus\": ", f);
		json_cpus(f, &nd->cpus);
		fprintf(f, ", \"memory_only\": %s, \"memory_allowed\": %s }",
			nd->memory_only ? "true" : "false", nd->memory_allowed ? "true" : "false");
	}
	fputs(in->nnuma ? "\n  ],\n  \"core_list\": [" : "],\n  \"core_list\": [", f);
	for (unsigned i = 0; i < in->ncores; i++) {
		const struct keel_topo_core *co = &in->cores[i];
		fprintf(f, "%s\n    { \"core\": %u, \"package\": %u, \"numa_node\": ", i ? "," : "",
			i, co->package);
		json_int(f, co->numa);
		fputs(", \"pus\": [", f);
		for (unsigned p = 0; p < co->npus; p++)
			fprintf(f, "%s%u", p ? ", " : "", co->pus[p]);
		fputs("], \"l2_bytes\": ", f);
		if (co->l2_bytes)
			fprintf(f, "%llu", (unsigned long long)co->l2_bytes);
		else
			fputs("null", f);
		fputs(", \"l3_bytes\": ", f);
		if (co->l3_bytes)
			fprintf(f, "%llu", (unsigned long long)co->l3_bytes);
		else
			fputs("null", f);
		fputs(" }", f);
	}
	fputs(in->ncores ? "\n  ],\n  \"nics\": [" : "],\n  \"nics\": [", f);
	for (unsigned i = 0; i < in->nnics; i++) {
		fputs(i ? ",\n" : "\n", f);
		json_nic(c, &in->nics[i], f);
	}
	fputs(in->nnics ? "\n  ],\n  \"irqbalance\": " : "],\n  \"irqbalance\": ", f);
	json_str(f, in->irqbalance == KEEL_TOPO_ON    ? "running"
		    : in->irqbalance == KEEL_TOPO_OFF ? "stopped"
						      : "unknown");
	fputs(",\n  \"map\": ", f);
	if (c->map)
		keel_map_write(c->map, f);
	else
		fputs("null\n", f);
	fputs(",\n  \"map_error\": ", f);
	if (c->map)
		fputs("null", f);
	else
		json_str(f, c->map_error ? c->map_error : "");
	fputs("\n}\n", f);
}
