/* SPDX-License-Identifier: MIT */
/* keel-topo's parts: the text/JSON report, the SVG picture, the plan and its commands. */
#ifndef KEEL_TOPO_TOOL_H
#define KEEL_TOPO_TOOL_H

#include <keel/keel.h>
#include <stdbool.h>
#include <stdio.h>

/* The map and how it came about, for every output. */
struct tool_ctx {
	const struct keel_topo *topo;
	const struct keel_topo_info *info;
	const struct keel_map *map; /* NULL when none could be computed */
	const char *map_error;      /* why not, when map is NULL */
	int port;                   /* --port for ntuple rules, -1 none */
};

/* Human-readable report of the machine and the map. */
void report_text(const struct tool_ctx *c, FILE *f);

/* The same as one JSON document (schema in docs/topology.md). */
void report_json(const struct tool_ctx *c, FILE *f);

/* An SVG picture of the machine and the map. Returns 0 or -errno. */
int svg_write(const struct tool_ctx *c, FILE *f);

/* What one plan step does. */
enum plan_kind {
	PLAN_NOTE,    /* a comment only */
	PLAN_RUN,     /* run argv */
	PLAN_NEW_CTX, /* run argv (ethtool -X ... context new) and keep the context number */
	PLAN_WRITE,   /* write @data to @path (/proc/irq/N/smp_affinity_list) */
};

#define PLAN_MAX_ARGS 520
/* A step's why: the longest, a shared IRQ's note, holds two lists of up to 255 bytes
 * (keel__topo_list_format) and some 330 of its own. */
#define PLAN_WHY_LEN 1024
/* An argument replaced by the number PLAN_NEW_CTX printed ("$ctx" in the script). */
#define PLAN_CTX_ARG "\x01ctx"

/* One step of a plan and why it matters. Commands are argv, never shell text. */
struct plan_step {
	enum plan_kind kind;
	unsigned argc;
	const char *argv[PLAN_MAX_ARGS]; /* into buf */
	char buf[2048];
	size_t used;
	bool too_long;           /* an argument did not fit: printed as a note, not run */
	bool stops_apply;        /* a note saying the plan cannot be right: --apply refuses */
	char path[64], data[16]; /* PLAN_WRITE */
	char why[PLAN_WHY_LEN];
};

/* The commands that make the machine match c->map. Returns the number of steps in @out. */
unsigned plan_build(const struct tool_ctx *c, struct plan_step *out, unsigned max);

/* Print the steps as a shell script. */
void plan_print(const struct plan_step *s, unsigned n, FILE *f);

/* Run the steps in order (each as an argv, or a direct write), stopping at the first
 * failure. Returns 0 or 1. */
int plan_apply(const struct plan_step *s, unsigned n);

/* --zcrx: per interface and rx queue (--rxqs/--iface, else the map's), whether ZCRX can
 * work (keel_zcrx_probe) and what is missing. Returns 0 (every queue can), 1, or 2 (no
 * interface given or mapped). */
int zcrx_report(const struct tool_ctx *c, const struct keel_map_req *req, FILE *f);

/* --zcrx's facts of @iface (@nic: its topology entry, NULL when it has none; @maxq: the
 * highest queue asked for), printed to @f once. Returns: how many are missing for ZCRX. */
unsigned zcrx_iface_facts(const char *iface, const struct keel_topo_nic *nic, int maxq, FILE *f);

/* JSON string helper shared by the JSON report. */
void json_str(FILE *f, const char *s);

/* How many of @n's rx queues have IRQ @irq (-1: none): more than one where one vector serves
 * several queues (virtio-net's for every virtqueue, "virtio0-virtqueues"), which fires on
 * one set of CPUs for them all. */
int irq_queues(const struct keel_topo_nic *n, int irq);

/* The map's shard on @cpu (its id in *id), or NULL. */
const struct keel_map_shard *shard_on_cpu(const struct keel_map *m, unsigned cpu, unsigned *id);

#endif
