// SPDX-License-Identifier: MIT
/* --plan: the exact commands that make the machine match the map, each with why it
 * matters; --apply runs them (only when asked). */
#include <errno.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "topo_tool.h"

extern char **environ;

static void
step(struct plan_step *out, unsigned max, unsigned *n, bool comment, const char *why,
     const char *fmt, ...)
{
	struct plan_step *s;
	va_list ap;

	if (*n >= max)
		return;
	s = &out[(*n)++];
	memset(s, 0, sizeof(*s));
	s->comment = comment;
	snprintf(s->why, sizeof(s->why), "%s", why);
	if (fmt) {
		va_start(ap, fmt);
		vsnprintf(s->cmd, sizeof(s->cmd), fmt, ap);
		va_end(ap);
	}
}

/* Queues of the map are 0..N-1 (the default): RSS "equal N" covers exactly them. */
static bool
contiguous(const struct keel_map *m)
{
	unsigned seen = 0;

	for (unsigned i = 0; i < m->nshards; i++)
		if (m->shards[i].rxq >= 0)
			seen++;
	for (unsigned i = 0; i < m->nshards; i++)
		if (m->shards[i].rxq >= (int)seen)
			return false;
	return seen == m->rx_queues;
}

unsigned
plan_build(const struct tool_ctx *c, struct plan_step *out, unsigned max)
{
	const struct keel_map *m = c->map;
	const struct keel_topo_nic *nic =
		m->iface[0] ? keel_topo_nic_find(c->topo, m->iface) : NULL;
	const char *ifn = m->iface;
	bool live = c->info->live;
	unsigned n = 0, nq = m->rx_queues;

	if (!m->iface[0] || !nq) {
		step(out, max, &n, true, "the map has no NIC: nothing to configure", NULL);
		return n;
	}
	if (nic && !nic->netdev) {
		step(out, max, &n, true,
		     "this PCI function has no network interface: bind a network driver to it, then "
		     "plan again with its interface name",
		     NULL);
		return n;
	}
	/* Channels first: the rx queues (and their IRQs) exist only afterwards. */
	if (live && nic && nic->ch_max_combined == 0 && nic->ch_max_rx > 0)
		step(out, max, &n, false,
		     "one rx queue per shard: the driver has separate rx channels",
		     "ethtool -L %s rx %u", ifn, nq);
	else
		step(out, max, &n, false,
		     "one rx queue per shard, so each shard owns the queue its packets arrive on",
		     "ethtool -L %s combined %u", ifn, nq);

	if (m->hds) {
		step(out, max, &n, false,
		     "header/data split: headers to kernel memory, payload to the shard's buffers "
		     "(ZCRX needs it)",
		     "ethtool -G %s tcp-data-split on", ifn);
		step(out, max, &n, false,
		     "split every packet, however small, so all payload lands in ZCRX buffers "
		     "(ethtool 6.13+)",
		     "ethtool -G %s hds-thresh 0", ifn);
	}

	if (nic && nic->is_virtual) {
		step(out, max, &n, true,
		     "virtual interface: no RSS table, ntuple rules or IRQs to configure", NULL);
		return n;
	}
	if (contiguous(m)) {
		step(out, max, &n, false,
		     "RSS spreads flows over exactly the shards' queues, none elsewhere",
		     "ethtool -X %s equal %u", ifn, nq);
	} else {
		char cmd[512];
		int off = snprintf(cmd, sizeof(cmd), "ethtool -X %s weight", ifn);
		for (unsigned q = 0; q < nq && off < (int)sizeof(cmd) - 8; q++) {
			bool used = false;
			for (unsigned i = 0; i < m->nshards; i++)
				used |= m->shards[i].rxq == (int)q;
			off += snprintf(cmd + off, sizeof(cmd) - (size_t)off, " %d", used ? 1 : 0);
		}
		step(out, max, &n, false,
		     "RSS weights: flows only to the queues the map gives to shards", "%s", cmd);
	}
	if (c->port > 0) {
		step(out, max, &n, false, "ntuple filters must be on before rules can be added",
		     "ethtool -K %s ntuple on", ifn);
		if (nq == 1 && m->nshards)
			step(out, max, &n, false,
			     "steer the service port to the shard's queue, other traffic stays on "
			     "RSS",
			     "ethtool -N %s flow-type tcp4 dst-port %d action %d && ethtool -N %s "
			     "flow-type tcp6 dst-port %d action %d",
			     ifn, c->port, m->shards[0].rxq, ifn, c->port, m->shards[0].rxq);
		else
			step(out, max, &n, false,
			     "steer the service port into an RSS context over the shards' queues "
			     "(ethtool prints the context number; the command passes it on)",
			     "ctx=$(ethtool -X %s context new start 0 equal %u | awk '/New RSS "
			     "context/ {print $NF}') && ethtool -N %s flow-type tcp4 dst-port %d "
			     "context \"$ctx\" && ethtool -N %s flow-type tcp6 dst-port %d context "
			     "\"$ctx\"",
			     ifn, nq, ifn, c->port, ifn, c->port);
	}

	if (!live || c->info->irqbalance == KEEL_TOPO_ON)
		step(out, max, &n, false,
		     live ? "irqbalance is running: it would move the IRQs below again"
			  : "irqbalance (when running) would move the IRQs below again",
		     "systemctl stop irqbalance");
	else if (c->info->irqbalance == KEEL_TOPO_OFF)
		step(out, max, &n, true, "irqbalance is not running: nothing to stop", NULL);

	for (unsigned i = 0; i < m->nshards; i++) {
		const struct keel_map_shard *s = &m->shards[i];
		const struct keel_topo_rxq *q =
			nic && s->rxq >= 0 && s->rxq < nic->nrxq ? &nic->rxq[s->rxq] : NULL;
		char why[400];

		if (s->rxq < 0 || s->irq_cpu < 0)
			continue;
		if (live && q && q->irq >= 0) {
			snprintf(why, sizeof(why),
				 "shard %u: rx queue %d's IRQ (%s) fires on the shard's own CPU", i,
				 s->rxq, q->irq_name);
			step(out, max, &n, false, why, "echo %d > /proc/irq/%d/smp_affinity_list",
			     s->irq_cpu, q->irq);
		} else if (live && nic && !nic->has_irqs) {
			continue;
		} else {
			snprintf(
				why, sizeof(why),
				"shard %u: pin the IRQ of %s rx queue %d to CPU %d; its IRQ number is "
				"%s: run keel-topo --plan again on the machine after the commands "
				"above",
				i, ifn, s->rxq, s->irq_cpu,
				live ? "not known yet (the queue or its IRQ name is missing)"
				     : "only known on the live machine");
			step(out, max, &n, true, why, NULL);
		}
	}
	return n;
}

void
plan_print(const struct plan_step *s, unsigned n, FILE *f)
{
	for (unsigned i = 0; i < n; i++) {
		fprintf(f, "# %s\n", s[i].why);
		if (!s[i].comment)
			fprintf(f, "%s\n", s[i].cmd);
	}
}

int
plan_apply(const struct plan_step *s, unsigned n)
{
	if (geteuid() != 0) {
		fprintf(stderr, "keel-topo: --apply changes NICs and IRQs and needs root: run it "
				"with sudo, or run the commands above by hand\n");
		return 1;
	}
	for (unsigned i = 0; i < n; i++) {
		char *argv[] = { "sh", "-c", (char *)s[i].cmd, NULL };
		pid_t pid;
		int st, r;

		if (s[i].comment)
			continue;
		fprintf(stderr, "+ %s\n", s[i].cmd);
		r = posix_spawn(&pid, "/bin/sh", NULL, NULL, argv, environ);
		if (r != 0) {
			fprintf(stderr, "keel-topo: cannot run /bin/sh: %s\n", strerror(r));
			return 1;
		}
		if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr,
				"keel-topo: '%s' failed; the steps before it were applied, the rest "
				"were not (fix the cause and run --plan --apply again)\n",
				s[i].cmd);
			return 1;
		}
	}
	return 0;
}
