// SPDX-License-Identifier: MIT
/* --plan: the exact commands that make the machine match the map, each with why it
 * matters; --apply runs them (only when asked), each as an argv or a direct file write,
 * never through a shell: interface names come from the machine or a topology file and may
 * hold any character but '/'. */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../core/topo_internal.h"
#include "topo_tool.h"

extern char **environ;

static struct plan_step *
step(struct plan_step *out, unsigned max, unsigned *n, enum plan_kind kind, const char *why)
{
	struct plan_step *s;

	if (*n >= max)
		return NULL;
	s = &out[(*n)++];
	memset(s, 0, sizeof(*s));
	s->kind = kind;
	snprintf(s->why, sizeof(s->why), "%s", why);
	return s;
}

static struct plan_step *
note(struct plan_step *out, unsigned max, unsigned *n, const char *why)
{
	return step(out, max, n, PLAN_NOTE, why);
}

/* Append one argument to @s; one that does not fit marks the step too long. */
static void __attribute__((format(printf, 2, 3))) add_arg(struct plan_step *s, const char *fmt, ...)
{
	va_list ap;
	int k;

	if (s->argc >= PLAN_MAX_ARGS) {
		s->too_long = true;
		return;
	}
	va_start(ap, fmt);
	k = vsnprintf(s->buf + s->used, sizeof(s->buf) - s->used, fmt, ap);
	va_end(ap);
	if (k < 0 || (size_t)k >= sizeof(s->buf) - s->used) {
		s->too_long = true;
		return;
	}
	s->argv[s->argc++] = s->buf + s->used;
	s->used += (size_t)k + 1;
}

/* A command: arguments as separate strings, NULL-terminated. */
static void
cmd(struct plan_step *out, unsigned max, unsigned *n, enum plan_kind kind, const char *why, ...)
{
	struct plan_step *s = step(out, max, n, kind, why);
	va_list ap;
	const char *a;

	if (!s)
		return;
	va_start(ap, why);
	while ((a = va_arg(ap, const char *)) && s->argc < PLAN_MAX_ARGS)
		add_arg(s, "%s", a);
	va_end(ap);
}

/* The queues the map gives to shards, ascending, in @q; returns how many. */
static unsigned
owned_queues(const struct keel_map *m, int *q)
{
	unsigned n = 0;

	for (unsigned v = 0; v < m->rx_queues; v++)
		for (unsigned i = 0; i < m->nshards; i++)
			if (m->shards[i].rxq == (int)v) {
				q[n++] = (int)v;
				break;
			}
	return n;
}

/* "weight w0 w1 ...": 1 for the queues the map owns, 0 for the others (as arguments); with
 * @others, the other way round. */
static void
add_weights(struct plan_step *s, const struct keel_map *m, bool others)
{
	if (!s)
		return;
	add_arg(s, "weight");
	for (unsigned v = 0; v < m->rx_queues; v++) {
		bool used = false;
		for (unsigned i = 0; i < m->nshards; i++)
			used |= m->shards[i].rxq == (int)v;
		add_arg(s, "%d", used != others ? 1 : 0);
	}
}

/* "ethtool -X IF weight ...": the queues the map owns (or, with @others, the rest). */
static void
rss_weights(struct plan_step *out, unsigned max, unsigned *n, const struct keel_map *m,
	    const char *why, bool others)
{
	struct plan_step *s = step(out, max, n, PLAN_RUN, why);

	if (s) {
		add_arg(s, "ethtool");
		add_arg(s, "-X");
		add_arg(s, "%s", m->iface);
	}
	add_weights(s, m, others);
}

/* Before ethtool -L: the kernel refuses a channel count at or below the highest queue that a
 * user-set RSS table (an earlier plan's equal/weight line), an ntuple rule or an RSS
 * context names (EINVAL). The default table is no obstacle, and the plan sets its own
 * after the channels (@sets_table): reset it. A virtual interface (@virt) has none of them. Rules
 * and contexts are only said: which of them an earlier plan added is not known here. */
static void
reset_table(struct plan_step *out, unsigned max, unsigned *n, const char *ifn, unsigned nq,
	    bool virt, bool sets_table)
{
	char why[400];

	if (virt) /* no table, rules or contexts */
		return;
	snprintf(why, sizeof(why),
		 "ntuple rules and RSS contexts an earlier plan added stay; one naming a queue at "
		 "or above %u makes ethtool -L fail (EINVAL): ethtool -n %.31s lists them, "
		 "ethtool -N %.31s delete LOC and ethtool -X %.31s context N delete remove them",
		 nq, ifn, ifn, ifn); /* a name of 15 bytes at most (IFNAMSIZ), a bus id's 12 */
	note(out, max, n, why);
	if (sets_table)
		cmd(out, max, n, PLAN_RUN,
		    "the default RSS table, so that a table an earlier plan set (which names the "
		    "old queues) does not make ethtool -L fail; the RSS line below sets the map's",
		    "ethtool", "-X", ifn, "default", (char *)NULL);
}

/* Whether shard @i's queue of @nic has an IRQ another shard's queue has too (virtio-net with
 * one vector for every virtqueue); at the first shard with it, the note that says so into
 * @why, else "" (said already). */
static bool
shared_irq_note(const struct tool_ctx *c, const struct keel_topo_nic *nic, unsigned i, char *why,
		size_t len)
{
	const struct keel_map *m = c->map;
	const struct keel_topo_rxq *q = &nic->rxq[m->shards[i].rxq];
	struct keel__topo_list ql, sl;
	char queues[256], shards[256]; /* whole lists: the note holds both (PLAN_WHY_LEN) */
	/* As --check decides it, and its queues and shards. */
	int shared = keel__topo_shared_irq_lists(nic, m, i, NULL, &ql, &sl);

	why[0] = 0;
	if (shared <= 0)
		return shared < 0; /* said at the first shard with it */
	keel__topo_list_format(&ql, queues, sizeof(queues));
	keel__topo_list_format(&sl, shards, sizeof(shards));
	snprintf(why, len,
		 "shards %s: rx queues %s of %s share IRQ %d (%s), which fires where it points, "
		 "not per queue; give the device an MSI-X vector per queue (QEMU virtio-net-pci: "
		 "vectors=%d), or pin it by hand to one shard's CPU: echo %d > "
		 "/proc/irq/%d/smp_affinity_list",
		 shards, queues, nic->name, q->irq, q->irq_name, 2 * nic->nrxq + 2,
		 m->shards[i].irq_cpu, q->irq);
	return true;
}

/* The note for the shards of @ifn, a NIC without MSI IRQs, from shard @first (the first with
 * a queue and an IRQ CPU): its legacy INTx line is one IRQ for all its queues and names none,
 * so one note names them and the fix (a note per shard said the one IRQ as many). */
static void
no_msi_note(const struct tool_ctx *c, const char *ifn, unsigned first, char *why, size_t len)
{
	const struct keel_map *m = c->map;
	struct keel__topo_list ql = { 0 }, sl = { 0 };
	char queues[256], shards[256]; /* whole lists: the note holds both (PLAN_WHY_LEN) */
	unsigned ns = 0;
	bool more_queues = false;

	for (unsigned j = first; j < m->nshards; j++) {
		const struct keel_map_shard *s = &m->shards[j];

		if (s->rxq < 0 || s->irq_cpu < 0)
			continue;
		more_queues |= s->rxq != m->shards[first].rxq;
		keel__topo_list_add(&ql, (unsigned)s->rxq);
		keel__topo_list_add(&sl, j);
		ns++;
	}
	keel__topo_list_format(&ql, queues, sizeof(queues));
	keel__topo_list_format(&sl, shards, sizeof(shards));
	if (ns < 2)
		snprintf(why, len,
			 "shard %u: %s has no MSI IRQs (a legacy INTx line, or none listed in its "
			 "msi_irqs), so rx queue %d's IRQ cannot be identified: find %s's IRQ in "
			 "/proc/interrupts and pin it by hand to CPU %d",
			 first, ifn, m->shards[first].rxq, ifn, m->shards[first].irq_cpu);
	else
		snprintf(
			why, len,
			"shards %s: %s has no MSI IRQs (a legacy INTx line): one IRQ for rx "
			"queue%s %s, which cannot fire on each shard's CPU (an IRQ per queue needs "
			"MSI-X); find %s's IRQ in /proc/interrupts and pin it by hand to one "
			"shard's CPU, e.g. CPU %d",
			shards, ifn, more_queues ? "s" : "", queues, ifn, m->shards[first].irq_cpu);
}

unsigned
plan_build(const struct tool_ctx *c, struct plan_step *out, unsigned max)
{
	const struct keel_map *m = c->map;
	const struct keel_topo_nic *nic =
		m->iface[0] ? keel_topo_nic_find(c->topo, m->iface) : NULL;
	const char *ifn = m->iface;
	bool live = c->info->live, channels_change = true, sets_table, no_msi_said = false;
	unsigned n = 0, nq = m->rx_queues, nown;
	int *owned = calloc(nq + 1, sizeof(*owned));
	char a[32], b[32], why[PLAN_WHY_LEN];

	if (!owned)
		return 0;
	nown = owned_queues(m, owned);
	/* Whether the RSS lines below set the indirection table: not on a virtual interface,
	 * nor when --hds leaves the shards every queue (a note stops the plan there). */
	sets_table = !(nic && nic->is_virtual) && !(m->hds && nown == nq);
	/* A map of a bond, VLAN or macvlan (an older keel-topo's, or written by hand; the
	 * mapper refuses to make one): its queues are software ones, no command here serves
	 * it. */
	if (nic && nic->nlower) {
		struct plan_step *ns;

		snprintf(
			why, sizeof(why),
			"%s is over %s: it has no hardware rx queues, IRQs or NUMA node of its own, so no "
			"command can make this map work; plan again with --iface %.*s",
			ifn, nic->lower, (int)strcspn(nic->lower, ","), nic->lower);
		ns = note(out, max, &n, why);
		if (ns)
			ns->stops_apply = true;
		goto out;
	}
	/* A PCI function without an interface first: the map names it but has no queues. */
	if (nic && !nic->netdev) {
		note(out, max, &n,
		     "this PCI function has no network interface: bind a network driver to it, then "
		     "plan again with its interface name");
		goto out;
	}
	if (!m->iface[0] || !nq) {
		note(out, max, &n, "the map has no NIC: nothing to configure");
		goto out;
	}
	/* Channels first: the rx queues (and their IRQs) exist only afterwards. */
	snprintf(a, sizeof(a), "%u", nq);
	if (live && nic && nic->ch_max_combined == 0 && nic->ch_max_rx > 0) {
		if (nic->ch_rx == (int)nq) {
			channels_change = false;
			snprintf(why, sizeof(why),
				 "%s already has %u rx channel%s: nothing to change", ifn, nq,
				 nq == 1 ? "" : "s");
			note(out, max, &n, why);
		} else {
			reset_table(out, max, &n, ifn, nq, nic && nic->is_virtual, sets_table);
			cmd(out, max, &n, PLAN_RUN,
			    "one rx queue per shard: the driver has separate rx channels",
			    "ethtool", "-L", ifn, "rx", a, (char *)NULL);
		}
	} else if (live && nic && nic->ch_combined == (int)nq) {
		channels_change = false;
		snprintf(why, sizeof(why),
			 "%s already has %u combined channel%s: nothing to change", ifn, nq,
			 nq == 1 ? "" : "s");
		note(out, max, &n, why);
	} else if (live && nic && nic->ch_combined < 0 && nic->ch_rx < 0 && nic->nrxq >= (int)nq) {
		/* A driver that reports no channels (ethtool -l: not supported), e1000e,
		 * r8169 or vmxnet3 say: its queues are what sysfs lists, and the map's are
		 * among them. A channel step here could only fail, and kept the IRQ lines
		 * from being pinned by saying a channel change was still to come. More queues
		 * than the map's stay: the indirection table keeps flows off them. */
		channels_change = false;
		if (nic->nrxq == (int)nq)
			snprintf(why, sizeof(why),
				 "%s has %u rx queue%s (its driver reports no channels): nothing "
				 "to change",
				 ifn, nq, nq == 1 ? "" : "s");
		else
			snprintf(why, sizeof(why),
				 "%s has %d rx queues and its driver reports no channels, so none "
				 "can be taken away: the map uses %u; the RSS line keeps flows on "
				 "those",
				 ifn, nic->nrxq, nq);
		note(out, max, &n, why);
	} else {
		reset_table(out, max, &n, ifn, nq, nic && nic->is_virtual, sets_table);
		cmd(out, max, &n, PLAN_RUN,
		    "one rx queue per shard, so each shard owns the queue its packets arrive on",
		    "ethtool", "-L", ifn, "combined", a, (char *)NULL);
	}

	if (m->hds && live && nic && nic->hds_capable == KEEL_TOPO_OFF) {
		snprintf(
			why, sizeof(why),
			"the map needs header/data split (--hds), but the driver%s%s of %s cannot "
			"do it (the kernel reports no tcp-data-split for it): no command can turn it "
			"on; use a NIC whose driver supports it",
			nic->driver[0] ? " " : "", nic->driver, ifn);
		struct plan_step *ns = note(out, max, &n, why);
		if (ns)
			ns->stops_apply = true; /* the rest would set up ZCRX queues for nothing */
	} else if (m->hds) {
		cmd(out, max, &n, PLAN_RUN,
		    "header/data split: headers to kernel memory, payload to the shard's buffers "
		    "(ZCRX needs it)",
		    "ethtool", "-G", ifn, "tcp-data-split", "on", (char *)NULL);
		cmd(out, max, &n, PLAN_RUN,
		    "threshold 0: ZCRX needs it (the kernel refuses the interface queue with "
		    "EINVAL otherwise), and every packet's payload lands in ZCRX buffers "
		    "(ethtool 6.13+)",
		    "ethtool", "-G", ifn, "hds-thresh", "0", (char *)NULL);
	}

	if (nic && nic->is_virtual) {
		note(out, max, &n,
		     "virtual interface: no RSS table, ntuple rules or IRQs to configure");
		goto out;
	}
	if (m->hds && nown == nq) {
		/* Every queue would be a ZCRX queue: RSS would put every flow there (the shards'
		 * own outbound TCP, other programs'), and a plain receive of payload in an area
		 * fails (docs/zcrx.md). No table can be right until other queues exist. */
		snprintf(why, sizeof(why),
			 "with --hds the shards' queues are ZCRX queues, and RSS must keep every "
			 "flow but the service port's off them: %s needs queues the shards do not "
			 "own. Map more rx queues than shards, the shards' last (--rxqs %s:K-L, "
			 "queues 0..K-1 for the rest), with --port, and plan again",
			 ifn, ifn);
		struct plan_step *ns = note(out, max, &n, why);
		if (ns)
			ns->stops_apply = true; /* the rest would leave RSS on the areas */
	} else if (m->hds) {
		rss_weights(out, max, &n, m,
			    "RSS weights: every flow to the queues without ZCRX; only the service "
			    "port's rules below reach the shards'",
			    true);
		if (c->port <= 0)
			note(out, max, &n,
			     "no --port: without the ntuple rules it prints, no flow reaches the "
			     "ZCRX queues");
	} else if (nown == nq) {
		cmd(out, max, &n, PLAN_RUN,
		    "RSS spreads flows over exactly the shards' queues, none elsewhere", "ethtool",
		    "-X", ifn, "equal", a, (char *)NULL);
	} else {
		rss_weights(out, max, &n, m,
			    "RSS weights: flows only to the queues the map gives to shards", false);
	}
	if (c->port > 0 && nown) {
		char port[16], q[16];

		snprintf(port, sizeof(port), "%d", c->port);
		/* keel-topo does not know which rules an earlier plan added (ethtool numbers
		 * them; nothing records the numbers): said, so that they are not doubled. */
		snprintf(why, sizeof(why),
			 "the rules below are added again at each run: first remove an earlier "
			 "plan's for port %d and their RSS context (ethtool -n %s lists them; "
			 "ethtool -N %s delete LOC, ethtool -X %s context N delete)",
			 c->port, ifn, ifn, ifn);
		note(out, max, &n, why);
		cmd(out, max, &n, PLAN_RUN, "ntuple filters must be on before rules can be added",
		    "ethtool", "-K", ifn, "ntuple", "on", (char *)NULL);
		if (nown == 1) {
			snprintf(q, sizeof(q), "%d", owned[0]);
			cmd(out, max, &n, PLAN_RUN,
			    "steer the service port (IPv4) to the shard's queue, other traffic stays "
			    "on RSS",
			    "ethtool", "-N", ifn, "flow-type", "tcp4", "dst-port", port, "action",
			    q, (char *)NULL);
			cmd(out, max, &n, PLAN_RUN, "the same for IPv6", "ethtool", "-N", ifn,
			    "flow-type", "tcp6", "dst-port", port, "action", q, (char *)NULL);
		} else {
			/* A contiguous set is "start S equal N"; any other set a weight list with
			 * 1 for each owned queue, so the context covers exactly them. */
			bool contiguous = owned[nown - 1] - owned[0] == (int)nown - 1;
			struct plan_step *s;

			s = step(
				out, max, &n, PLAN_NEW_CTX,
				"a new RSS context over exactly the shards' queues; ethtool prints "
				"its number, which the rules below use");
			if (s) {
				add_arg(s, "ethtool");
				add_arg(s, "-X");
				add_arg(s, "%s", ifn);
				add_arg(s, "context");
				add_arg(s, "new");
				if (contiguous) {
					snprintf(b, sizeof(b), "%d", owned[0]);
					add_arg(s, "start");
					add_arg(s, "%s", b);
					snprintf(b, sizeof(b), "%u", nown);
					add_arg(s, "equal");
					add_arg(s, "%s", b);
				} else {
					add_weights(s, m, false);
				}
			}
			cmd(out, max, &n, PLAN_RUN,
			    "steer the service port (IPv4) into that context, other traffic stays on "
			    "the default RSS",
			    "ethtool", "-N", ifn, "flow-type", "tcp4", "dst-port", port, "context",
			    PLAN_CTX_ARG, (char *)NULL);
			cmd(out, max, &n, PLAN_RUN, "the same for IPv6", "ethtool", "-N", ifn,
			    "flow-type", "tcp6", "dst-port", port, "context", PLAN_CTX_ARG,
			    (char *)NULL);
		}
	}

	if (!live || c->info->irqbalance == KEEL_TOPO_ON)
		cmd(out, max, &n, PLAN_RUN,
		    live ? "irqbalance is running: it would move the IRQs below again"
			 : "irqbalance (when running) would move the IRQs below again",
		    "systemctl", "stop", "irqbalance", (char *)NULL);
	else if (c->info->irqbalance == KEEL_TOPO_OFF)
		note(out, max, &n, "irqbalance is not running: nothing to stop");
	else
		note(out, max, &n,
		     "irqbalance: not visible from this PID namespace (a container); if it runs "
		     "on the host, stop it there (systemctl stop irqbalance), or it would move the "
		     "IRQs below again");

	if (live && channels_change && nic && nic->has_irqs)
		note(out, max, &n,
		     "the channel change above creates the rx queues and their IRQs anew, so IRQ "
		     "numbers read now would be wrong: run keel-topo --plan again after it to get "
		     "the IRQ lines");
	for (unsigned i = 0; i < m->nshards; i++) {
		const struct keel_map_shard *s = &m->shards[i];
		const struct keel_topo_rxq *q =
			nic && s->rxq >= 0 && s->rxq < nic->nrxq ? &nic->rxq[s->rxq] : NULL;

		if (s->rxq < 0 || s->irq_cpu < 0)
			continue;
		if (live && nic && !nic->has_irqs) {
			/* Not virtual (that returned above): a device without MSI vectors,
			 * whose legacy IRQ names no queue. Say so rather than nothing, once: it
			 * is one line for all the queues. */
			if (!no_msi_said) {
				no_msi_note(c, ifn, i, why, sizeof(why));
				note(out, max, &n, why);
			}
			no_msi_said = true;
			continue;
		}
		if (live && !channels_change && q && q->irq >= 0 &&
		    shared_irq_note(c, nic, i, why, sizeof(why))) {
			/* One IRQ for several shards' queues (virtio-net's vector for every
			 * virtqueue): one note at the first, no line that the next would undo. */
			if (why[0])
				note(out, max, &n, why);
		} else if (live && !channels_change && q && q->irq >= 0) {
			struct plan_step *st;
			snprintf(why, sizeof(why),
				 "shard %u: rx queue %d's IRQ (%s) fires on the shard's own CPU", i,
				 s->rxq, q->irq_name);
			st = step(out, max, &n, PLAN_WRITE, why);
			if (st) {
				snprintf(st->path, sizeof(st->path),
					 "/proc/irq/%d/smp_affinity_list", q->irq);
				snprintf(st->data, sizeof(st->data), "%d", s->irq_cpu);
			}
		} else {
			snprintf(
				why, sizeof(why),
				"shard %u: pin the IRQ of %s rx queue %d to CPU %d; its IRQ number is "
				"%s: run keel-topo --plan again on the machine after the commands "
				"above",
				i, ifn, s->rxq, s->irq_cpu,
				!live             ? "only known on the live machine"
				: channels_change ? "known only after the channel change"
						  : "not known (the queue or its IRQ name is "
						    "missing)");
			note(out, max, &n, why);
		}
	}
out:
	free(owned);
	return n;
}

/* @s quoted for a POSIX shell when it needs to be: 'it'\''s' style. */
static void
put_word(FILE *f, const char *s)
{
	bool plain = *s != 0;

	for (const char *p = s; *p; p++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_@%+=:,./-",
			    *p))
			plain = false;
	if (plain) {
		fputs(s, f);
		return;
	}
	fputc('\'', f);
	for (; *s; s++) {
		if (*s == '\'')
			fputs("'\\''", f);
		else
			fputc(*s, f);
	}
	fputc('\'', f);
}

static void
put_argv(FILE *f, const struct plan_step *s)
{
	for (unsigned i = 0; i < s->argc; i++) {
		if (i)
			fputc(' ', f);
		if (!strcmp(s->argv[i], PLAN_CTX_ARG))
			fputs("\"$ctx\"", f);
		else
			put_word(f, s->argv[i]);
	}
}

void
plan_print(const struct plan_step *s, unsigned n, FILE *f)
{
	for (unsigned i = 0; i < n; i++) {
		fprintf(f, "# %s\n", s[i].why);
		if (s[i].too_long) {
			fprintf(f,
				"# (the command is too long for keel-topo: %u queues; write it "
				"by hand)\n",
				s[i].argc);
			continue;
		}
		switch (s[i].kind) {
		case PLAN_NOTE:
			break;
		case PLAN_RUN:
			put_argv(f, &s[i]);
			fputc('\n', f);
			break;
		case PLAN_NEW_CTX:
			fputs("ctx=$(", f);
			put_argv(f, &s[i]);
			fputs(" | awk '/New RSS context/ {print $NF}')\n", f);
			break;
		case PLAN_WRITE:
			fprintf(f, "echo ");
			put_word(f, s[i].data);
			fputs(" > ", f);
			put_word(f, s[i].path);
			fputc('\n', f);
			break;
		}
	}
}

/* Run @s (context placeholders replaced by @ctx); its stdout printed, and its last
 * @outlen - 1 bytes kept in @outbuf when given (read to the end: a command left writing into
 * a full pipe died of SIGPIPE). Returns 0 when it exited 0; 1 when it failed and why was
 * said (its status, or the signal that killed it); -errno when it could not be run. */
static int
run_argv(const struct plan_step *s, const char *ctx, char *outbuf, size_t outlen)
{
	char *argv[PLAN_MAX_ARGS + 1];
	posix_spawn_file_actions_t fa;
	int pipefd[2] = { -1, -1 }, st, r;
	pid_t pid;

	for (unsigned i = 0; i < s->argc; i++)
		argv[i] = !strcmp(s->argv[i], PLAN_CTX_ARG) ? (char *)ctx : (char *)s->argv[i];
	argv[s->argc] = NULL;
	posix_spawn_file_actions_init(&fa);
	if (outbuf) {
		if (pipe2(pipefd, O_CLOEXEC) < 0)
			return -errno;
		posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDOUT_FILENO);
	}
	r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (outbuf)
		close(pipefd[1]);
	if (r != 0) {
		if (outbuf)
			close(pipefd[0]);
		fprintf(stderr, "keel-topo: cannot run %s: %s%s\n", argv[0], strerror(r),
			r == ENOENT ? " (not in PATH: install it, Debian's ethtool or iproute2 "
				      "for ip, and have /usr/sbin in PATH)"
				    : "");
		return -r;
	}
	if (outbuf) {
		size_t len = 0, keep = outlen - 1;
		char chunk[4096];
		ssize_t k;

		while ((k = read(pipefd[0], chunk, sizeof(chunk))) > 0 ||
		       (k < 0 && errno == EINTR)) {
			size_t n = k > 0 ? (size_t)k : 0, from = n > keep ? n - keep : 0;

			fwrite(chunk, 1, n, stdout);
			n -= from;
			if (len + n > keep) { /* the oldest bytes go */
				memmove(outbuf, outbuf + (len + n - keep), keep - n);
				len = keep - n;
			}
			memcpy(outbuf + len, chunk + from, n);
			len += n;
		}
		outbuf[len] = 0;
		close(pipefd[0]);
	}
	while (waitpid(pid, &st, 0) < 0) {
		if (errno != EINTR) {
			int e = errno;

			fprintf(stderr, "keel-topo: waiting for %s: %s\n", argv[0], strerror(e));
			return -e;
		}
	}
	if (WIFSIGNALED(st)) {
		fprintf(stderr, "keel-topo: %s was killed by signal %d (%s)\n", argv[0],
			WTERMSIG(st), strsignal(WTERMSIG(st)));
		return 1;
	}
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "keel-topo: %s exited with status %d\n", argv[0],
			WIFEXITED(st) ? WEXITSTATUS(st) : -1);
		return 1;
	}
	return 0;
}

static int
write_file(const char *path, const char *data)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	size_t len = strlen(data);
	int r = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, data, len) != (ssize_t)len)
		r = -errno ? -errno : -EIO;
	close(fd);
	return r;
}

int
plan_apply(const struct plan_step *s, unsigned n)
{
	char ctx[32] = "", out[512] = "";

	for (unsigned i = 0; i < n; i++)
		if (s[i].stops_apply) {
			fprintf(stderr,
				"keel-topo: --apply refused: step %u says the plan cannot be "
				"right as it is; nothing was run\n",
				i + 1);
			return 1;
		}
	if (geteuid() != 0) {
		fprintf(stderr, "keel-topo: --apply changes NICs and IRQs and needs root: run it "
				"with sudo, or run the commands above by hand\n");
		return 1;
	}
	for (unsigned i = 0; i < n; i++) {
		int r = 0;

		if (s[i].kind == PLAN_NOTE)
			continue;
		if (s[i].too_long) {
			fprintf(stderr, "keel-topo: step %u is too long to run; stopping\n", i + 1);
			return 1;
		}
		fputs("+ ", stderr);
		if (s[i].kind == PLAN_WRITE) {
			fprintf(stderr, "echo %s > %s\n", s[i].data, s[i].path);
			r = write_file(s[i].path, s[i].data);
		} else {
			put_argv(stderr, &s[i]);
			fputc('\n', stderr);
			r = run_argv(&s[i], ctx, s[i].kind == PLAN_NEW_CTX ? out : NULL,
				     sizeof(out));
			if (r == 0 && s[i].kind == PLAN_NEW_CTX) {
				/* "New RSS context is 1": the last number of that line. */
				const char *p = strstr(out, "New RSS context");
				const char *e = p ? strchr(p, '\n') : NULL;
				const char *d = e ? e : p ? p + strlen(p) : NULL;
				while (d && d > p && (d[-1] < '0' || d[-1] > '9'))
					d--;
				const char *b = d;
				while (b && b > p && b[-1] >= '0' && b[-1] <= '9')
					b--;
				if (!p || b == d)
					r = -EPROTO;
				else
					snprintf(ctx, sizeof(ctx), "%.*s", (int)(d - b), b);
			}
		}
		if (r != 0) {
			fprintf(stderr,
				"keel-topo: step %u failed%s%s%s; the steps before it were applied, "
				"the rest were not (fix the cause and run --plan --apply again)\n",
				i + 1, r < 0 ? " (" : "", r < 0 ? strerror(-r) : "",
				r < 0 ? ")" : "");
			return 1;
		}
	}
	return 0;
}
