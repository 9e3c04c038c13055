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

/* One command of a plan and why it matters; cmd NULL for a comment-only step. */
struct plan_step {
	char cmd[512];
	char why[400];
	bool comment; /* printed as "# why", not run by --apply */
};

/* The commands that make the machine match c->map. Returns the number of steps in @out. */
unsigned plan_build(const struct tool_ctx *c, struct plan_step *out, unsigned max);

/* Print the steps as a shell script. */
void plan_print(const struct plan_step *s, unsigned n, FILE *f);

/* Run the steps with /bin/sh, in order, stopping at the first failure. Returns 0 or 1. */
int plan_apply(const struct plan_step *s, unsigned n);

/* JSON string helper shared by the JSON report. */
void json_str(FILE *f, const char *s);

/* The map's shard on @cpu (its id in *id), or NULL. */
const struct keel_map_shard *shard_on_cpu(const struct keel_map *m, unsigned cpu, unsigned *id);

#endif
