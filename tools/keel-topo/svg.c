// SPDX-License-Identifier: MIT
/* --svg: one picture of the machine. NUMA nodes side by side, their cores in a grid with the
 * hardware threads as chips (a shard's chip is filled and labelled), the NICs under the node
 * they are attached to, the mapped NIC's rx queues under it with an arrow to the shard that
 * owns each, and IRQs that point elsewhere in orange with a dashed arrow to where they go. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../core/topo_internal.h"
#include "topo_tool.h"

#define MARGIN   24
#define GAP      14
#define CORE_W   132
#define CORE_H   64
#define NODE_HD  46
#define NIC_H    46
#define Q_W      64
#define Q_H      40
#define MAX_QS   64
#define MAX_COLS 64 /* NUMA nodes drawn */
#define MAX_NIC  6  /* per column; the rest are counted */

#define C_SHARD "#2b6cb0"
#define C_WARN  "#dd6b20"
#define C_LOCAL "#2f855a"

struct pos {
	int x, y; /* anchor: bottom centre of a PU chip, top centre of a queue chip */
	bool set;
};

struct col {
	int os;     /* NUMA node OS index, -1: the column of NICs without a node */
	int x, w;   /* node box */
	int ncores; /* cores drawn in it */
	int cols;   /* core grid columns */
};

static void
esc(FILE *f, const char *s)
{
	for (; *s; s++) {
		switch (*s) {
		case '<':
			fputs("&lt;", f);
			break;
		case '>':
			fputs("&gt;", f);
			break;
		case '&':
			fputs("&amp;", f);
			break;
		case '"':
			fputs("&quot;", f);
			break;
		default:
			if ((unsigned char)*s >= 0x20)
				fputc(*s, f);
		}
	}
}

static void
text(FILE *f, int x, int y, int size, const char *fill, const char *anchor, const char *weight,
     const char *s)
{
	fprintf(f,
		"<text x=\"%d\" y=\"%d\" font-size=\"%d\" fill=\"%s\" text-anchor=\"%s\" "
		"font-weight=\"%s\">",
		x, y, size, fill, anchor, weight);
	esc(f, s);
	fputs("</text>\n", f);
}

static bool
pu_allowed(const struct keel_topo_info *in, unsigned cpu)
{
	return keel_cpuset_has(&in->allowed, cpu);
}

static int
core_grid_cols(int ncores)
{
	if (ncores <= 4)
		return ncores ? ncores : 1;
	if (ncores <= 16)
		return 4;
	return 8;
}

/* The NICs drawn under column @os, the mapped one first. */
static unsigned
nics_of(const struct tool_ctx *c, int os, const struct keel_topo_nic **out, unsigned max,
	unsigned *hidden)
{
	const struct keel_topo_info *in = c->info;
	const struct keel_topo_nic *mapped =
		c->map && c->map->iface[0] ? keel_topo_nic_find(c->topo, c->map->iface) : NULL;
	unsigned n = 0;

	*hidden = 0;
	if (mapped && mapped->numa == os)
		out[n++] = mapped;
	for (unsigned i = 0; i < in->nnics; i++) {
		const struct keel_topo_nic *nic = &in->nics[i];
		if (nic == mapped || nic->numa != os)
			continue;
		if (n < max)
			out[n++] = nic;
		else
			(*hidden)++;
	}
	return n;
}

static bool
irq_mismatch(const struct keel_topo_rxq *q, int want)
{
	struct keel_cpuset w;

	if (!q || q->irq < 0 || !q->affinity_known || want < 0)
		return false;
	memset(&w, 0, sizeof(w));
	keel_cpuset_add(&w, (unsigned)want);
	return q->affinity_beyond || memcmp(&w, &q->affinity, sizeof(w)) != 0;
}

/* Whether shard @s's queue's IRQ is one another shard's queue has too (keel__topo_shared_irq:
 * virtio-net's one vector for every virtqueue): it can point at one set of CPUs, so it is
 * drawn once as shared, not as a mismatch with an arrow at every shard but one. */
static bool
shard_irq_shared(const struct keel_topo_nic *nic, const struct keel_map *m, unsigned s)
{
	const struct keel_map_shard *sh = &m->shards[s];

	return nic && sh->rxq >= 0 && sh->rxq < nic->nrxq && sh->irq_cpu >= 0 &&
	       nic->rxq[sh->rxq].irq >= 0 && keel__topo_shared_irq(nic, m, s, NULL) != 0;
}

/* The line said once above the mapped NIC's queues for the first IRQ several of them share
 * (their boxes read "IRQ N*"), into @buf; whether the map puts several shards' queues on it
 * (then --check counts it, and the line is in the warning colour). @buf is "" when no IRQ is
 * shared. */
static bool
shared_irq_line(const struct keel_topo_nic *nic, const struct keel_map *m, unsigned nq_draw,
		char *buf, size_t len)
{
	const struct keel_topo_rxq *first = NULL;
	unsigned others = 0;
	bool by_shards = false;
	char list[256];
	int with;

	buf[0] = 0;
	for (unsigned q = 0; q < nq_draw && (int)q < nic->nrxq; q++) {
		const struct keel_topo_rxq *r = &nic->rxq[q];
		bool seen = false;

		if (r->irq < 0 || irq_queues(nic, r->irq) < 2)
			continue;
		for (unsigned p = 0; p < q && !seen; p++)
			seen = nic->rxq[p].irq == r->irq;
		if (seen)
			continue;
		if (first)
			others++;
		else
			first = r;
	}
	if (!first)
		return false;
	for (unsigned s = 0; s < m->nshards && !by_shards; s++)
		by_shards =
			shard_irq_shared(nic, m, s) && nic->rxq[m->shards[s].rxq].irq == first->irq;
	with = irq_queues(nic, first->irq);
	snprintf(buf, len, "* IRQ %d (%s) → CPU %s%s serves %s%d rx queues%s%s", first->irq,
		 first->irq_name,
		 first->affinity_known
			 ? keel_topo_cpulist_format(&first->affinity, list, sizeof(list))
			 : "?",
		 first->affinity_beyond ? ",1024+" : "", with == nic->nrxq ? "all " : "", with,
		 by_shards ? ": one IRQ cannot fire on each shard's CPU (see keel-topo --check)"
			   : "",
		 others ? " · more shared IRQs in the text report" : "");
	return by_shards;
}

/* A generous estimate of @s's width at @size px in DejaVu Sans (bold is wider), so boxes
 * can be sized from their text instead of clipping it. */
static int
text_w(const char *s, int size, bool bold)
{
	int n = 0;

	for (; *s; s++)
		n += ((unsigned char)*s & 0xc0) != 0x80; /* count UTF-8 characters */
	return (int)((double)n * size * (bold ? 0.66 : 0.58)) + 2;
}

/* Whether node @os holds memory only (HBM, CXL: no core of its own). */
static bool
node_memory_only(const struct keel_topo_info *in, int os)
{
	for (unsigned i = 0; i < in->nnuma; i++)
		if ((int)in->numa[i].os == os)
			return in->numa[i].memory_only;
	return false;
}

/* The title of the node column @os. */
static void
node_title(const struct tool_ctx *c, int os, char *buf, size_t len)
{
	const struct keel_topo_info *in = c->info;
	const struct keel_map *m = c->map;
	bool local = m && m->numa >= 0 && m->numa == os;
	char mem[32] = "";

	if (os < 0) {
		snprintf(buf, len, "no NUMA node");
		return;
	}
	for (unsigned i = 0; i < in->nnuma; i++)
		if ((int)in->numa[i].os == os && in->numa[i].memory_bytes)
			snprintf(mem, sizeof(mem), " · %.0f GiB",
				 (double)in->numa[i].memory_bytes / (double)(1ull << 30));
	snprintf(buf, len, "NUMA node %d%s%s", os, mem, local ? " · local to the NIC" : "");
}

/* Text with a white halo, so it stays readable where an arrow passes under it. */
static void
label(FILE *f, int x, int y, int size, const char *fill, const char *anchor, const char *weight,
      const char *halo, const char *s)
{
	fprintf(f,
		"<text x=\"%d\" y=\"%d\" font-size=\"%d\" fill=\"%s\" text-anchor=\"%s\" "
		"font-weight=\"%s\" stroke=\"%s\" stroke-width=\"3\" paint-order=\"stroke\" "
		"stroke-linejoin=\"round\">",
		x, y, size, fill, anchor, weight, halo);
	esc(f, s);
	fputs("</text>\n", f);
}

int
svg_write(const struct tool_ctx *c, FILE *f)
{
	const struct keel_topo_info *in = c->info;
	const struct keel_map *m = c->map;
	const struct keel_topo_nic *mapped =
		m && m->iface[0] ? keel_topo_nic_find(c->topo, m->iface) : NULL;
	struct col cols[MAX_COLS + 2];
	unsigned ncols = 0;
	struct pos *pu_pos = calloc(KEEL_MAX_CPUS, sizeof(*pu_pos));
	struct pos qpos[MAX_QS];
	int width, height, core_top, q_top, nic_top, max_core_rows = 0, max_nic_h = 0, qrows = 0;
	int qcol = -1, per = 1, bh;
	char buf[512], list[256], shared[384] = "";
	bool any_unnoded = false, any_nic_unnoded = false, any_mismatch = false,
	     shared_warn = false;
	unsigned nq_draw = 0, nq_left = 0;
	char *labels = NULL;
	size_t labels_len = 0;
	FILE *lf;

	if (!pu_pos)
		return -ENOMEM;
	lf = open_memstream(&labels, &labels_len);
	if (!lf) {
		free(pu_pos);
		return -ENOMEM;
	}
	memset(qpos, 0, sizeof(qpos));
	for (unsigned i = 0; i < in->ncores; i++)
		any_unnoded |= in->cores[i].numa < 0;
	for (unsigned i = 0; i < in->nnics; i++)
		any_nic_unnoded |= in->nics[i].numa < 0;

	/* Columns: one per NUMA node (at most MAX_COLS drawn, the title says when more are
	 * left out), plus one for what has no node. */
	for (unsigned i = 0; i < in->nnuma && ncols < MAX_COLS; i++)
		cols[ncols++] = (struct col){ .os = (int)in->numa[i].os };
	if (any_unnoded || any_nic_unnoded || !ncols)
		cols[ncols++] = (struct col){ .os = -1 };
	if (mapped && m) {
		int nq = mapped->nrxq > (int)m->rx_queues ? mapped->nrxq : (int)m->rx_queues;
		nq_draw = nq > MAX_QS ? MAX_QS : (unsigned)(nq < 0 ? 0 : nq);
		nq_left = nq > MAX_QS ? (unsigned)nq - MAX_QS : 0;
	}
	{
		int x = MARGIN;
		for (unsigned k = 0; k < ncols; k++) {
			struct col *cl = &cols[k];
			int rows, tw;
			for (unsigned i = 0; i < in->ncores; i++)
				cl->ncores += in->cores[i].numa == cl->os;
			cl->cols = core_grid_cols(cl->ncores);
			cl->w = cl->cols * (CORE_W + GAP) + GAP;
			if (cl->w < 260 && !node_memory_only(in, cl->os))
				cl->w = 260; /* a memory-only node: as wide as its title */
			/* The box fits its title (and a memory-only node's line under it). */
			node_title(c, cl->os, buf, sizeof(buf));
			tw = text_w(buf, 15, true) + 24;
			if (cl->w < tw)
				cl->w = tw;
			for (unsigned i = 0; i < in->nnuma; i++)
				if ((int)in->numa[i].os == cl->os && in->numa[i].memory_only) {
					snprintf(buf, sizeof(buf), "memory only, near CPUs %s",
						 keel_topo_cpulist_format(&in->numa[i].cpus, list,
									  sizeof(list)));
					tw = text_w(buf, 11, false) + 24;
					if (cl->w < tw)
						cl->w = tw;
				}
			rows = (cl->ncores + cl->cols - 1) / cl->cols;
			if (rows > max_core_rows)
				max_core_rows = rows;
			cl->x = x;
			x += cl->w + GAP * 2;
			if (mapped && mapped->numa == cl->os)
				qcol = (int)k;
		}
		width = x - GAP * 2 + MARGIN;
		if (width < 760)
			width = 760;
		/* The shared IRQ's line above the queues is as long as it needs. */
		if (qcol >= 0 && nq_draw) {
			shared_warn = shared_irq_line(mapped, m, nq_draw, shared, sizeof(shared));
			if (shared[0] && width < cols[qcol].x + text_w(shared, 11, false) + MARGIN)
				width = cols[qcol].x + text_w(shared, 11, false) + MARGIN;
		}
	}
	/* The mapped NIC's queues sit right under its node, above the NICs, so the arrows to
	 * the shards cross no NIC box and no other queue row. */
	if (qcol >= 0 && nq_draw) {
		per = (cols[qcol].w + 8) / (Q_W + 8);
		if (per < 1)
			per = 1;
		qrows = (int)((nq_draw + (unsigned)per - 1) / (unsigned)per);
	}
	core_top = MARGIN + 92;
	bh = NODE_HD + max_core_rows * (CORE_H + GAP);
	q_top = core_top + bh + GAP * 4;
	nic_top = q_top + (qrows ? qrows * (Q_H + 8) + GAP * 2 : 0) + GAP;
	for (unsigned k = 0; k < ncols; k++) {
		const struct keel_topo_nic *list_n[MAX_NIC];
		unsigned hidden, nn = nics_of(c, cols[k].os, list_n, MAX_NIC, &hidden);
		int h = (int)nn * (NIC_H + GAP);
		if (hidden)
			h += 24;
		if (h > max_nic_h)
			max_nic_h = h;
	}
	height = nic_top + 30 + max_nic_h + MARGIN;

	fprintf(f,
		"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
		"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 "
		"%d %d\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">\n",
		width, height, width, height);
	fputs("<defs>\n"
	      "<marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" "
	      "markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" "
	      "fill=\"" C_SHARD "\"/></marker>\n"
	      "<marker id=\"warn\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" "
	      "markerHeight=\"7\" orient=\"auto-start-reverse\"><path d=\"M0,0 L10,5 L0,10 z\" "
	      "fill=\"" C_WARN "\"/></marker>\n"
	      "</defs>\n",
	      f);
	fprintf(f, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#ffffff\"/>\n", width,
		height);
	/* Title, what it shows, legend. */
	{
		/* "xml /long/path/x.xml": the file name says which machine; the path does not. */
		const char *src = in->source, *slash = strrchr(src, '/');
		char shown[320];
		if (!strncmp(src, "xml ", 4) && slash)
			snprintf(shown, sizeof(shown), "xml %s", slash + 1);
		else
			snprintf(shown, sizeof(shown), "%s", src);
		snprintf(buf, sizeof(buf), "keel-topo: %s%s%s", shown,
			 in->host[0] ? " · host " : "", in->host);
	}
	text(f, MARGIN, MARGIN + 16, 18, "#1a202c", "start", "bold", buf);
	if (m)
		snprintf(buf, sizeof(buf),
			 "%u shard%s%s%s · SMT %s · NUMA %s · %u NUMA node%s, %u cores, %u PUs",
			 m->nshards, m->nshards == 1 ? "" : "s", m->iface[0] ? " on " : "",
			 m->iface, m->smt == KEEL_MAP_SMT_ALLOW ? "allow" : "avoid",
			 m->numa_policy == KEEL_MAP_NUMA_SPREAD ? "spread" : "local", in->nnuma,
			 in->nnuma == 1 ? "" : "s", in->ncores, in->npus);
	else
		snprintf(buf, sizeof(buf), "no map: %s", c->map_error ? c->map_error : "?");
	/* What the picture leaves out is said: nodes past the 64th, queues past MAX_QS. */
	if (in->nnuma > MAX_COLS || (qcol >= 0 && nq_left)) {
		char more[200];
		size_t l = 0, keep;

		if (in->nnuma > MAX_COLS)
			l += (size_t)snprintf(more, sizeof(more),
					      " · %u NUMA nodes past the first %d not drawn",
					      in->nnuma - MAX_COLS, MAX_COLS);
		if (qcol >= 0 && nq_left)
			l += (size_t)snprintf(more + l, sizeof(more) - l,
					      " · %u of %s's rx queues past the first %d not drawn",
					      nq_left, mapped->name, MAX_QS);
		snprintf(more + l, sizeof(more) - l, " (see the text report)");
		/* Whole, after the line cut (at a character's start) to make room for it. */
		keep = strlen(buf);
		if (keep + strlen(more) >= sizeof(buf)) {
			keep = sizeof(buf) - 1 - strlen(more);
			while (keep && ((unsigned char)buf[keep] & 0xc0) == 0x80)
				keep--;
		}
		snprintf(buf + keep, sizeof(buf) - keep, "%s", more);
	}
	text(f, MARGIN, MARGIN + 38, 13, "#4a5568", "start", "normal", buf);
	{
		int lx = MARGIN, ly = MARGIN + 52;
		fprintf(f,
			"<rect x=\"%d\" y=\"%d\" width=\"18\" height=\"14\" rx=\"3\" fill=\"" C_SHARD
			"\"/>\n",
			lx, ly);
		text(f, lx + 24, ly + 12, 12, "#2d3748", "start", "normal", "shard's CPU");
		lx += 120;
		fprintf(f,
			"<rect x=\"%d\" y=\"%d\" width=\"18\" height=\"14\" rx=\"3\" fill=\"#edf2f7\" "
			"stroke=\"#a0aec0\"/>\n",
			lx, ly);
		text(f, lx + 24, ly + 12, 12, "#2d3748", "start", "normal", "free CPU");
		lx += 100;
		fprintf(f,
			"<rect x=\"%d\" y=\"%d\" width=\"18\" height=\"14\" rx=\"3\" fill=\"#f7fafc\" "
			"stroke=\"#cbd5e0\" stroke-dasharray=\"3,2\"/>\n",
			lx, ly);
		text(f, lx + 24, ly + 12, 12, "#2d3748", "start", "normal", "not allowed");
		lx += 110;
		fprintf(f,
			"<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"" C_SHARD
			"\" stroke-width=\"2\" marker-end=\"url(#arrow)\"/>\n",
			lx, ly + 7, lx + 30, ly + 7);
		text(f, lx + 36, ly + 12, 12, "#2d3748", "start", "normal", "rx queue → shard");
		lx += 160;
		fprintf(f,
			"<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"" C_WARN
			"\" stroke-width=\"2\" stroke-dasharray=\"5,3\" marker-end=\"url(#warn)\"/>\n",
			lx, ly + 7, lx + 30, ly + 7);
		text(f, lx + 36, ly + 12, 12, "#2d3748", "start", "normal",
		     "IRQ points elsewhere (fix: --plan)");
	}

	/* NUMA nodes and their cores. Labels go to @lf, drawn after the arrows. */
	for (unsigned k = 0; k < ncols; k++) {
		struct col *cl = &cols[k];
		bool local = m && m->numa >= 0 && m->numa == cl->os;
		int idx = 0;

		if (cl->os < 0 && !cl->ncores)
			continue;
		fprintf(f,
			"<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" rx=\"10\" fill=\"%s\" "
			"stroke=\"%s\" stroke-width=\"%d\"/>\n",
			cl->x, core_top, cl->w, bh, local ? "#f0fff4" : "#f7fafc",
			local ? C_LOCAL : "#a0aec0", local ? 3 : 1);
		node_title(c, cl->os, buf, sizeof(buf));
		text(f, cl->x + 12, core_top + 22, 15, local ? C_LOCAL : "#2d3748", "start", "bold",
		     buf);
		if (cl->os >= 0) {
			const struct keel_topo_numa *nd = NULL;
			for (unsigned i = 0; i < in->nnuma; i++)
				if ((int)in->numa[i].os == cl->os)
					nd = &in->numa[i];
			snprintf(buf, sizeof(buf), "%s %s",
				 nd && nd->memory_only ? "memory only, near CPUs" : "CPUs",
				 nd ? keel_topo_cpulist_format(&nd->cpus, list, sizeof(list))
				    : "?");
			text(f, cl->x + 12, core_top + 38, 11, "#718096", "start", "normal", buf);
		}
		for (unsigned ci = 0; ci < in->ncores; ci++) {
			const struct keel_topo_core *co = &in->cores[ci];
			int cx, cy, chip_w, np;

			if (co->numa != cl->os)
				continue;
			cx = cl->x + GAP + (idx % cl->cols) * (CORE_W + GAP);
			cy = core_top + NODE_HD + (idx / cl->cols) * (CORE_H + GAP);
			idx++;
			fprintf(f,
				"<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" rx=\"6\" "
				"fill=\"#ffffff\" stroke=\"#a0aec0\"/>\n",
				cx, cy, CORE_W, CORE_H);
			snprintf(buf, sizeof(buf), "core %u", ci);
			label(lf, cx + 8, cy + 15, 11, "#718096", "start", "normal", "#ffffff",
			      buf);
			np = co->npus ? (int)co->npus : 1;
			chip_w = (CORE_W - 16 - (np - 1) * 6) / np;
			for (unsigned p = 0; p < co->npus; p++) {
				unsigned cpu = co->pus[p], sid;
				int px = cx + 8 + (int)p * (chip_w + 6), py = cy + 22;
				bool mine = shard_on_cpu(m, cpu, &sid) != NULL;
				bool ok = pu_allowed(in, cpu);

				fprintf(f,
					"<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"34\" rx=\"4\" "
					"fill=\"%s\" stroke=\"%s\"%s/>\n",
					px, py, chip_w,
					mine ? C_SHARD
					: ok ? "#edf2f7"
					     : "#f7fafc",
					mine ? C_SHARD
					: ok ? "#a0aec0"
					     : "#cbd5e0",
					ok ? "" : " stroke-dasharray=\"3,2\"");
				if (mine) {
					snprintf(buf, sizeof(buf), "S%u", sid);
					label(lf, px + chip_w / 2, py + 15, 13, "#ffffff", "middle",
					      "bold", C_SHARD, buf);
					snprintf(buf, sizeof(buf), "cpu %u", cpu);
					label(lf, px + chip_w / 2, py + 29, 10, "#ebf8ff", "middle",
					      "normal", C_SHARD, buf);
				} else {
					snprintf(buf, sizeof(buf), "cpu %u", cpu);
					label(lf, px + chip_w / 2, py + 22, 11,
					      ok ? "#2d3748" : "#a0aec0", "middle", "normal",
					      ok ? "#edf2f7" : "#f7fafc", buf);
				}
				if (cpu < KEEL_MAX_CPUS)
					pu_pos[cpu] =
						(struct pos){ px + chip_w / 2, py + 34, true };
			}
		}
	}

	/* Where the queues go (drawn after the arrows, so an arrow starts at its box). */
	for (unsigned qi = 0; qcol >= 0 && qi < nq_draw; qi++) {
		int qx = cols[qcol].x + (int)(qi % (unsigned)per) * (Q_W + 8);
		int qy = q_top + (int)(qi / (unsigned)per) * (Q_H + 8);
		qpos[qi] = (struct pos){ qx + Q_W / 2, qy, true };
	}

	/* Arrows: queue -> shard CPU (solid), and IRQ -> where it points now when that is
	 * not the shard (dashed, warning colour). Queue rows below the first start at the
	 * right edge of their box and rise in the gap between queue columns. */
	for (unsigned s = 0; m && s < m->nshards; s++) {
		const struct keel_map_shard *sh = &m->shards[s];
		const struct pos *a, *b;
		int ax, ay;
		if (sh->rxq < 0 || sh->rxq >= (int)nq_draw || sh->cpu < 0 ||
		    sh->cpu >= KEEL_MAX_CPUS)
			continue;
		a = &qpos[sh->rxq];
		b = &pu_pos[sh->cpu];
		if (!a->set || !b->set)
			continue;
		ax = a->x;
		ay = a->y;
		if (ay > q_top) {
			/* up the gap to the right of the queue, past the rows above */
			ax = a->x + Q_W / 2 + 4;
			fprintf(f,
				"<path d=\"M%d,%d L%d,%d L%d,%d\" fill=\"none\" stroke=\"" C_SHARD
				"\" stroke-width=\"2\" stroke-opacity=\"0.75\"/>\n",
				a->x + Q_W / 2, a->y + Q_H / 2, ax, a->y + Q_H / 2, ax, q_top - 4);
			ay = q_top - 4;
		}
		fprintf(f,
			"<path d=\"M%d,%d C%d,%d %d,%d %d,%d\" fill=\"none\" stroke=\"" C_SHARD
			"\" stroke-width=\"2\" stroke-opacity=\"0.75\" marker-end=\"url(#arrow)\"/>\n",
			ax, ay, ax, ay - 40, b->x, b->y + 40, b->x, b->y + 2);
		if (mapped && sh->rxq < mapped->nrxq) {
			const struct keel_topo_rxq *rq = &mapped->rxq[sh->rxq];
			unsigned w = 0;
			if (!irq_mismatch(rq, sh->irq_cpu) || shard_irq_shared(mapped, m, s))
				continue;
			for (unsigned cpu = 0; cpu < KEEL_MAX_CPUS; cpu++)
				w += keel_cpuset_has(&rq->affinity, cpu);
			for (unsigned cpu = 0; cpu < KEEL_MAX_CPUS && w <= 4; cpu++) {
				const struct pos *t = &pu_pos[cpu];
				if (!keel_cpuset_has(&rq->affinity, cpu) || !t->set ||
				    (int)cpu == sh->irq_cpu)
					continue;
				fprintf(f,
					"<path d=\"M%d,%d C%d,%d %d,%d %d,%d\" fill=\"none\" "
					"stroke=\"" C_WARN "\" stroke-width=\"2\" "
					"stroke-dasharray=\"6,4\" marker-end=\"url(#warn)\"/>\n",
					ax + 6, ay, ax + 6, ay - 60, t->x + 6, t->y + 60, t->x + 6,
					t->y + 2);
			}
		}
	}

	/* The queues. */
	if (qcol >= 0 && nq_draw)
		label(f, cols[qcol].x, q_top - 8, 11, "#4a5568", "start", "normal", "#ffffff",
		      "rx queues of the mapped NIC");
	if (shared[0])
		label(f, cols[qcol].x, q_top - 22, 11, shared_warn ? C_WARN : "#4a5568", "start",
		      shared_warn ? "bold" : "normal", "#ffffff", shared);
	any_mismatch |= shared_warn;
	for (unsigned qi = 0; qcol >= 0 && qi < nq_draw; qi++) {
		int qx = qpos[qi].x - Q_W / 2, qy = qpos[qi].y;
		const struct keel_topo_rxq *rq = (int)qi < mapped->nrxq ? &mapped->rxq[qi] : NULL;
		int want = -1;
		bool exists = rq != NULL, bad, shared_by_shards = false;
		const char *fill, *stroke;

		for (unsigned s = 0; m && s < m->nshards; s++)
			if (m->shards[s].rxq == (int)qi) {
				want = m->shards[s].irq_cpu;
				shared_by_shards |= shard_irq_shared(mapped, m, s);
			}
		bad = irq_mismatch(rq, want) && !shared_by_shards;
		any_mismatch |= bad;
		fill = bad ? "#feebc8" : want >= 0 ? "#ebf8ff" : "#ffffff";
		stroke = bad ? C_WARN : want >= 0 ? C_SHARD : "#a0aec0";
		fprintf(f,
			"<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" rx=\"5\" fill=\"%s\" "
			"stroke=\"%s\" stroke-width=\"%d\"%s/>\n",
			qx, qy, Q_W, Q_H, fill, stroke, bad ? 2 : 1,
			exists || !c->info->live ? "" : " stroke-dasharray=\"4,3\"");
		snprintf(buf, sizeof(buf), "rxq %u", qi);
		text(f, qx + Q_W / 2, qy + 16, 12, "#1a202c", "middle", "bold", buf);
		if (rq && rq->irq >= 0 && irq_queues(mapped, rq->irq) > 1)
			snprintf(buf, sizeof(buf), "IRQ %d*", rq->irq); /* said once above */
		else if (rq && rq->irq >= 0)
			snprintf(buf, sizeof(buf), "IRQ %d→%s%s", rq->irq,
				 rq->affinity_known ? keel_topo_cpulist_format(&rq->affinity, list,
									       sizeof(list))
						    : "?",
				 rq->affinity_beyond ? ",1024+" : "");
		else if (!exists && c->info->live)
			snprintf(buf, sizeof(buf), "planned");
		else
			buf[0] = 0;
		text(f, qx + Q_W / 2, qy + 32, 10, bad ? C_WARN : "#4a5568", "middle", "normal",
		     buf);
	}

	/* NICs under their node. */
	for (unsigned k = 0; k < ncols; k++) {
		struct col *cl = &cols[k];
		const struct keel_topo_nic *list_n[MAX_NIC];
		unsigned hidden, nn = nics_of(c, cl->os, list_n, MAX_NIC, &hidden);
		int y = nic_top;

		if (nn && cl->os < 0 && !cl->ncores)
			text(f, cl->x, y - 8, 12, "#718096", "start", "normal",
			     "NICs without NUMA locality");
		for (unsigned j = 0; j < nn; j++) {
			const struct keel_topo_nic *nic = list_n[j];
			bool is_mapped = nic == mapped;
			char q[32] = "";

			fprintf(f,
				"<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" rx=\"8\" "
				"fill=\"%s\" stroke=\"%s\" stroke-width=\"%d\"/>\n",
				cl->x, y, cl->w, NIC_H, is_mapped ? "#ebf8ff" : "#fffff0",
				is_mapped ? C_SHARD : "#b7791f", is_mapped ? 2 : 1);
			snprintf(buf, sizeof(buf), "%s%s%s%s", nic->name,
				 nic->driver[0] ? " · " : "", nic->driver,
				 is_mapped && nq_draw ? " · its queues are above" : "");
			text(f, cl->x + 10, y + 19, 14, "#1a202c", "start", "bold", buf);
			if (nic->nrxq >= 0)
				snprintf(q, sizeof(q), " · %d rx queue%s", nic->nrxq,
					 nic->nrxq == 1 ? "" : "s");
			if (!nic->netdev)
				snprintf(buf, sizeof(buf), "PCI function, no interface (VF?)");
			else if (nic->nlower)
				snprintf(buf, sizeof(buf), "over %s", nic->lower);
			else if (nic->is_virtual)
				snprintf(buf, sizeof(buf), "virtual%s", q);
			else
				snprintf(buf, sizeof(buf), "PCI %s%s%s%s", nic->pci, q,
					 c->info->live ? " · hds " : "",
					 c->info->live ? keel_topo_state_name(nic->hds) : "");
			text(f, cl->x + 10, y + 36, 11, "#4a5568", "start", "normal", buf);
			y += NIC_H + GAP;
		}
		if (hidden) {
			snprintf(buf, sizeof(buf), "+ %u more NIC%s (see the text report)", hidden,
				 hidden == 1 ? "" : "s");
			text(f, cl->x + 4, y + 14, 12, "#718096", "start", "normal", buf);
		}
	}

	/* Core and CPU labels last, over the arrows. */
	fclose(lf);
	if (labels)
		fwrite(labels, 1, labels_len, f);
	free(labels);
	if (any_mismatch)
		text(f, width - MARGIN, MARGIN + 16, 13, C_WARN, "end", "bold",
		     "IRQ placement differs from the map");
	fputs("</svg>\n", f);
	free(pu_pos);
	return ferror(f) ? -EIO : 0;
}
