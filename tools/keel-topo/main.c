// SPDX-License-Identifier: MIT
/* keel-topo: report this machine's topology (or a topology file's), compute the core/queue
 * map, write it with the commands that make the machine match (--plan), check the machine
 * against a map (--check), and show the io_uring capabilities (--caps). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "topo_tool.h"

static const char usage[] =
	"usage: keel-topo [SOURCE] [MAP OPTIONS] [MODE]\n"
	"Report this machine's NUMA nodes, cores, NICs, rx queues and IRQs, and the core/queue\n"
	"map keel programs would use (shard i -> CPU -> rx queue -> IRQ CPU).\n"
	"\n"
	"Source (default: this machine):\n"
	"  --xml FILE            an hwloc XML topology (offline; no queues or IRQs)\n"
	"  --synthetic DESC      an hwloc synthetic topology, e.g. \"pack:2 numa:2 core:8 pu:2\"\n"
	"  --queues N            offline: rx queues of every NIC\n"
	"Map options:\n"
	"  --iface IF            the NIC (name or PCI bus id; default: the first PCI NIC)\n"
	"  --shards N            shards (default: one per physical core local to the NIC,\n"
	"                        at most one per rx queue it can have)\n"
	"  --cpuset LIST         CPUs shards may use, e.g. 0-7,16\n"
	"  --rxqs IF:LIST        rx queue of each shard, e.g. eth0:0-3\n"
	"  --smt avoid|allow     SMT siblings after the physical cores --numa reaches first:\n"
	"                        with local, the NIC node's siblings before other nodes'\n"
	"                        cores (default avoid: never siblings)\n"
	"  --reserve N           keep the first N NIC-local cores free for housekeeping\n"
	"  --numa local|spread   after local physical cores: local siblings, or other nodes\n"
	"  --oversubscribe       allow more shards than CPUs\n"
	"  --no-rxq-for-extra    shards beyond the rx queues that exist (or beyond --rxqs)\n"
	"                        run without a queue (default: an error)\n"
	"  --hds                 the map needs header/data split (ZCRX)\n"
	"  --port P              --plan: ntuple rules steering TCP port P to the shards' queues\n"
	"  --map FILE            the map file: --plan writes it (default keel-map.json);\n"
	"                        --check, the report, --json and --svg read it (then the\n"
	"                        map options above are errors: the file decides)\n"
	"Mode (default: the text report):\n"
	"  --json                the report as JSON\n"
	"  --svg FILE            a picture of the machine and the map\n"
	"  --plan                write the map file and print the commands that apply it\n"
	"                        (with --svg FILE, also the picture)\n"
	"  --apply               with --plan: run those commands (root)\n"
	"  --check               compare this machine with the map; exit 1 on mismatch\n"
	"  --caps                io_uring capabilities and feature decisions\n"
	"  --feature NAME=auto|on|off\n"
	"                        with --caps: decide as a runtime given it would\n"
	"  --zcrx                per interface and rx queue (--iface/--rxqs, else the map's):\n"
	"                        can ZCRX work, from the start-up registration probe, and\n"
	"                        what is missing (driver, header split, channels, ntuple);\n"
	"                        exit 1 when a queue cannot (with --check: after the map)\n"
	"  --help                this text\n"
	"A value is given as --opt VALUE or --opt=VALUE, a flag as --flag or --flag=on|off;\n"
	"\"--\" ends the options.\n";

struct args {
	struct keel_topo_load_opts load;
	struct keel_map_req req;
	const char *map_path;
	const char *svg;
	int port;
	bool json, plan, apply, check, caps, zcrx;
	/* The map options given, in order ("--iface, --shards"), for the --map FILE check;
	 * shape_opts without --iface and --rxqs, which --zcrx also reads. */
	char map_opts[160], shape_opts[160];
};

/* The options that shape a computed map. */
static const char *const map_opt_names[] = {
	"--iface",   "--shards",        "--cpuset",           "--rxqs", "--smt", "--numa",
	"--reserve", "--oversubscribe", "--no-rxq-for-extra", "--hds",  NULL
};

/* Note that map option @name was given. */
static void
note_map_opt(struct args *a, const char *name)
{
	bool queue_pick = !strcmp(name, "--iface") || !strcmp(name, "--rxqs");

	for (int k = 0; k < 2; k++) {
		char *b = k ? a->shape_opts : a->map_opts;
		size_t n = strlen(b);
		if ((k && queue_pick) || strstr(b, name))
			continue;
		snprintf(b + n, sizeof(a->map_opts) - n, "%s%s", n ? ", " : "", name);
	}
}

static int
bad(const char *fmt, const char *a, const char *b)
{
	fprintf(stderr, "keel-topo: ");
	fprintf(stderr, fmt, a, b);
	fprintf(stderr, "\n");
	return -EINVAL;
}

static int
parse_num(const char *opt, const char *v, unsigned lo, unsigned hi, unsigned *out)
{
	char *end;
	unsigned long n;

	errno = 0;
	n = strtoul(v, &end, 10);
	if (!*v || *end || errno || v[0] == '-' || n < lo || n > hi) {
		char range[64];
		snprintf(range, sizeof(range), "%u..%u", lo, hi);
		fprintf(stderr, "keel-topo: %s: '%s' is not a number in %s\n", opt, v, range);
		return -EINVAL;
	}
	*out = (unsigned)n;
	return 0;
}

/* keel-topo's options, read by keel_opts_next (keel's rules: "--opt value" or "--opt=value",
 * a flag alone or "--flag=on|off", "--" the end). @arg says what a value is, for messages. */
enum {
	O_HELP,
	O_XML,
	O_SYNTHETIC,
	O_QUEUES,
	O_IFACE,
	O_SHARDS,
	O_CPUSET,
	O_RXQS,
	O_SMT,
	O_RESERVE,
	O_NUMA,
	O_PORT,
	O_MAP,
	O_SVG,
	O_FEATURE,
	O_NO_RXQ_FOR_EXTRA,
	O_OVERSUBSCRIBE,
	O_HDS,
	O_JSON,
	O_PLAN,
	O_APPLY,
	O_CHECK,
	O_CAPS,
	O_ZCRX,
	O_COUNT
};

static const struct keel_app_opt own_opts[O_COUNT] = {
	[O_HELP] = { "--help", NULL },
	[O_XML] = { "--xml", "an hwloc XML file" },
	[O_SYNTHETIC] = { "--synthetic", "e.g. \"pack:2 numa:2 core:8 pu:2\"" },
	[O_QUEUES] = { "--queues", "1..4096" },
	[O_IFACE] = { "--iface", "an interface or PCI bus id" },
	[O_SHARDS] = { "--shards", "a shard count" },
	[O_CPUSET] = { "--cpuset", "a CPU list, e.g. 0-7,16" },
	[O_RXQS] = { "--rxqs", "IF:LIST" },
	[O_SMT] = { "--smt", "avoid or allow" },
	[O_RESERVE] = { "--reserve", "a core count" },
	[O_NUMA] = { "--numa", "local or spread" },
	[O_PORT] = { "--port", "1..65535" },
	[O_MAP] = { "--map", "a map file" },
	[O_SVG] = { "--svg", "a file to write" },
	[O_FEATURE] = { "--feature", "NAME=auto|on|off" },
	[O_NO_RXQ_FOR_EXTRA] = { "--no-rxq-for-extra", NULL },
	[O_OVERSUBSCRIBE] = { "--oversubscribe", NULL },
	[O_HDS] = { "--hds", NULL },
	[O_JSON] = { "--json", NULL },
	[O_PLAN] = { "--plan", NULL },
	[O_APPLY] = { "--apply", NULL },
	[O_CHECK] = { "--check", NULL },
	[O_CAPS] = { "--caps", NULL },
	[O_ZCRX] = { "--zcrx", NULL },
};

static int
parse_args(int argc, char **argv, struct args *a)
{
	char err[256] = "";
	bool feature = false;
	int i = 1, k;
	const char *v;

	memset(a, 0, sizeof(*a));
	keel_map_req_init(&a->req);
	a->port = -1;
	while ((k = keel_opts_next(argc, argv, &i, own_opts, O_COUNT, &v, err, sizeof(err))) >= 0) {
		const char *name = own_opts[k].name;
		bool on = !strcmp(v, "on"); /* a flag's value: "on" or "off" */
		unsigned u;

		/* A value option is given once read; a flag only if it ends on (after the
		 * loop): "--hds=off" changes nothing and is no map option given. */
		for (int m = 0; map_opt_names[m]; m++)
			if (own_opts[k].arg && !strcmp(name, map_opt_names[m]))
				note_map_opt(a, map_opt_names[m]);
		switch (k) {
		case O_HELP:
			if (on) {
				fputs(usage, stdout);
				exit(0);
			}
			break;
		case O_XML:
			a->load.xml = v;
			break;
		case O_SYNTHETIC:
			a->load.synthetic = v;
			break;
		case O_QUEUES:
			if (parse_num(name, v, 1, 4096, &a->load.queues))
				return -EINVAL;
			break;
		case O_IFACE:
			if (strlen(v) >= sizeof(a->req.iface))
				return bad("--iface: '%s' is too long%s", v, "");
			if (a->req.nrxqs && strcmp(a->req.iface, v))
				return bad("--iface %s conflicts with --rxqs %s:...", v,
					   a->req.iface);
			snprintf(a->req.iface, sizeof(a->req.iface), "%s", v);
			break;
		case O_SHARDS:
			if (parse_num(name, v, 1, KEEL_MAX_SHARDS, &a->req.shards))
				return -EINVAL;
			break;
		case O_CPUSET:
			if (keel_cpulist_parse(v, &a->req.cpuset, err, sizeof(err)) < 0)
				return bad("%s%s", err, "");
			a->req.cpuset_given = true;
			break;
		case O_RXQS: {
			char prev[KEEL_TOPO_NAME_MAX];
			snprintf(prev, sizeof(prev), "%s", a->req.iface);
			if (keel_map_req_rxqs_parse(&a->req, v, err, sizeof(err)) < 0)
				return bad("%s%s", err, "");
			if (prev[0] && strcmp(prev, a->req.iface))
				return bad("--rxqs names %s but --iface is %s: use one interface",
					   a->req.iface, prev);
			break;
		}
		case O_SMT:
			if (!strcmp(v, "avoid"))
				a->req.smt = KEEL_MAP_SMT_AVOID;
			else if (!strcmp(v, "allow"))
				a->req.smt = KEEL_MAP_SMT_ALLOW;
			else
				return bad("--smt: '%s' is not avoid or allow%s", v, "");
			break;
		case O_NUMA:
			if (!strcmp(v, "local"))
				a->req.numa = KEEL_MAP_NUMA_LOCAL;
			else if (!strcmp(v, "spread"))
				a->req.numa = KEEL_MAP_NUMA_SPREAD;
			else
				return bad("--numa: '%s' is not local or spread%s", v, "");
			break;
		case O_RESERVE:
			if (parse_num(name, v, 0, KEEL_MAX_CPUS, &a->req.reserve))
				return -EINVAL;
			break;
		case O_PORT:
			if (parse_num(name, v, 1, 65535, &u))
				return -EINVAL;
			a->port = (int)u;
			break;
		case O_MAP:
			a->map_path = v;
			break;
		case O_SVG:
			a->svg = v;
			break;
		case O_FEATURE:
			/* read by keel_opts_parse() for --caps */
			feature = true;
			break;
		case O_NO_RXQ_FOR_EXTRA:
			a->req.extra_without_rxq = on;
			break;
		case O_OVERSUBSCRIBE:
			a->req.oversubscribe = on;
			break;
		case O_HDS:
			a->req.hds = on;
			break;
		case O_JSON:
			a->json = on;
			break;
		case O_PLAN:
			a->plan = on;
			break;
		case O_APPLY:
			a->apply = on;
			break;
		case O_CHECK:
			a->check = on;
			break;
		case O_CAPS:
			a->caps = on;
			break;
		case O_ZCRX:
			a->zcrx = on;
			break;
		}
	}
	if (k != -ENOENT)
		return bad("%s%s", err, "");
	if (a->req.oversubscribe)
		note_map_opt(a, "--oversubscribe");
	if (a->req.extra_without_rxq)
		note_map_opt(a, "--no-rxq-for-extra");
	if (a->req.hds)
		note_map_opt(a, "--hds");
	/* After "--": keel-topo reads its machine, or a file an option names. */
	if (i < argc)
		return bad("unexpected argument '%s' after \"--\": keel-topo takes no arguments "
			   "(drop it; a file is given with --xml, --map or --svg)%s",
			   argv[i], "");
	if ((a->load.xml && !*a->load.xml) || (a->load.synthetic && !*a->load.synthetic))
		return bad("%s needs a value: %s", a->load.xml ? "--xml" : "--synthetic",
			   a->load.xml ? "an hwloc XML file"
				       : "e.g. \"pack:2 numa:2 core:8 pu:2\"");
	if (a->load.queues && !a->load.xml && !a->load.synthetic)
		return bad("--queues describes the NICs of a topology file (--xml/--synthetic); "
			   "on this machine the rx queues are read from sysfs: drop --queues%s%s",
			   "", "");
	if (a->caps && (a->load.xml || a->load.synthetic))
		return bad("--caps describes this machine's kernel, not a topology file: drop "
			   "--xml/--synthetic%s%s",
			   "", "");
	if (a->apply && !a->plan)
		return bad("--apply runs the commands of --plan: give --plan too%s%s", "", "");
	/* The commands of another machine's plan would change this one's NICs and IRQs. */
	if (a->apply && (a->load.xml || a->load.synthetic))
		return bad("--apply changes this machine, and the plan is of %s: drop --apply (or "
			   "plan on the machine itself)%s",
			   a->load.xml ? "a topology file (--xml)" : "a synthetic machine", "");
	if (a->port >= 0 && !a->plan)
		return bad("--port steers a port in the commands of --plan: give --plan too (it "
			   "did nothing without it)%s%s",
			   "", "");
	if (a->svg && (a->check || a->zcrx || a->caps))
		return bad("--svg draws the report's machine and map: give it without "
			   "--check/--zcrx/--caps (it wrote nothing with them)%s%s",
			   "", "");
	if (feature && !a->caps)
		return bad("--feature shapes the decisions of --caps: give --caps too (it did "
			   "nothing without it)%s%s",
			   "", "");
	if (a->check && (a->load.xml || a->load.synthetic))
		return bad(
			"--check compares the live machine with a map: drop --xml/--synthetic%s%s",
			"", "");
	if (a->zcrx && (a->load.xml || a->load.synthetic || a->json || a->plan || a->caps))
		return bad("--zcrx probes this machine's interfaces (alone or with --check): drop "
			   "--xml/--synthetic/--json/--plan/--caps%s%s",
			   "", "");
	if ((int)a->json + (int)a->plan + (int)a->check + (int)a->caps > 1)
		return bad("give one of --json, --plan, --check, --caps%s%s", "", "");
	/* Without --plan, --map FILE is read and shown as it is: options that would compute
	 * a map would be silently dropped. --zcrx reads --iface/--rxqs for its own queues. */
	if (a->map_path && !a->plan && !a->caps) {
		const char *given = a->zcrx ? a->shape_opts : a->map_opts;
		if (*given) {
			fprintf(stderr,
				"keel-topo: --map %s decides the map (it is read, not computed): "
				"drop %s (or give --plan to compute a new map with %s and write it "
				"to %s)\n",
				a->map_path, given, strchr(given, ',') ? "them" : "it",
				a->map_path);
			return -EINVAL;
		}
	}
	return 0;
}

static int
caps_main(int argc, char **argv)
{
	struct keel_opts o;
	char err[256] = "";

	keel_opts_init(&o);
	if (keel_opts_parse(&o, &argc, argv, err, sizeof(err)) < 0) {
		fprintf(stderr, "keel-topo: %s\n", err);
		return 2;
	}
	keel_caps_print(&o, stdout);
	return 0;
}

/* The report, --json and --svg show a map file as written: where this machine no longer
 * matches it (a CPU gone, a queue or IRQ elsewhere), say so on stderr, with what --check
 * would list, so that the placement shown is not taken for what runs. */
static void
map_stale_warn(const struct keel_topo *topo, const struct keel_map *m, const char *path)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	int n;

	if (!f)
		return;
	n = keel_map_check(topo, m, f);
	if (fclose(f) == 0 && n > 0)
		fprintf(stderr,
			"keel-topo: warning: the map in %s does not match this machine; it is shown "
			"as written (keel-topo --check --map %s lists the same, keel-topo --plan "
			"writes a new map):\n%s",
			path, path, buf);
	free(buf);
}

int
main(int argc, char **argv)
{
	struct args a;
	struct keel_topo *topo = NULL;
	struct keel_map *map = calloc(1, sizeof(*map));
	struct tool_ctx c;
	char err[1024] = "";
	int r, status = 0;
	bool plan_kept = false; /* --plan of the map in --map FILE, which stays as it is */

	if (!map)
		return 2;
	if (parse_args(argc, argv, &a) < 0) {
		free(map);
		return 2;
	}
	if (a.caps) {
		free(map);
		return caps_main(argc, argv);
	}
	keel_log_set_level(KEEL_LOG_WARN);
	r = keel_topo_load(&a.load, &topo, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "keel-topo: %s\n", err);
		free(map);
		return 2;
	}
	memset(&c, 0, sizeof(c));
	c.topo = topo;
	c.info = keel_topo_info_get(topo);
	c.port = a.port;

	if (a.map_path && !a.plan) {
		/* --check, the report, --json and --svg show the map in the file. */
		r = keel_map_load(a.map_path, map, err, sizeof(err));
	} else if (a.map_path && !a.map_opts[0] && access(a.map_path, F_OK) == 0) {
		/* --plan --map FILE of a map that exists, and no option shaping another: the
		 * commands of that map (edited by hand, or planned offline with options), not
		 * a default map written over it. */
		r = keel_map_load(a.map_path, map, err, sizeof(err));
		if (r == 0 && c.info->live) /* against this machine; an offline plan is not */
			r = keel_map_validate(map, err, sizeof(err));
		plan_kept = r == 0;
		if (r < 0) {
			char why[400];

			snprintf(why, sizeof(why), "%.399s", err);
			snprintf(
				err, sizeof(err),
				"--plan --map %.300s: the map there cannot be planned (%s); remove "
				"it, or give the options of a new map (--shards, --iface, ...) to "
				"replace it",
				a.map_path, why);
		}
	} else {
		r = keel_map_compute(topo, &a.req, map, err, sizeof(err));
	}
	if (r == 0)
		c.map = map;
	else
		c.map_error = err;
	if (c.map && (c.map->notes & KEEL_MAP_NOTE_CLAMPED))
		fprintf(stderr,
			"keel-topo: note: the default shard count was cut to %d (KEEL_MAX_SHARDS); "
			"give --shards to choose\n",
			KEEL_MAX_SHARDS);
	if (c.map && a.map_path && !a.plan && !a.check && !a.zcrx && c.info->live)
		map_stale_warn(topo, c.map, a.map_path);
	if (a.load.queues && c.map && !c.map->iface[0])
		fprintf(stderr,
			"keel-topo: note: --queues %u has no effect: %s has no NIC, so no shard "
			"gets an rx queue\n",
			a.load.queues, c.info->source);

	if (a.zcrx) {
		int z;

		/* With --check, the map first when there is one (a map of an interface that
		 * is not a NIC, lo say, cannot be made: the ZCRX verdict still can). */
		if (a.check && c.map) {
			r = keel_map_check(topo, c.map, stdout);
			status = r < 0 ? 2 : r > 0 ? 1 : 0;
		}
		z = zcrx_report(&c, &a.req, stdout);
		if (z > status)
			status = z;
		goto out;
	}
	if (a.check) {
		if (!c.map) {
			fprintf(stderr, "keel-topo: %s\n", err);
			status = 2;
		} else {
			r = keel_map_check(topo, c.map, stdout);
			if (r < 0) {
				fprintf(stderr, "keel-topo: --check failed: %s\n", strerror(-r));
				status = 2;
			} else if (r > 0) {
				status = 1;
			} else {
				printf("this machine matches the map (%u shard%s%s%s)\n",
				       c.map->nshards, c.map->nshards == 1 ? "" : "s",
				       c.map->iface[0] ? " on " : "", c.map->iface);
			}
		}
		goto out;
	}
	if (a.svg) {
		FILE *f = fopen(a.svg, "we");
		if (!f) {
			fprintf(stderr, "keel-topo: cannot write %s: %s (check the directory)\n",
				a.svg, strerror(errno));
			status = 2;
			goto out;
		}
		r = svg_write(&c, f);
		{
			bool werr = ferror(f);
			int ce = fclose(f) != 0 ? errno : 0;

			if (r < 0 || werr || ce) {
				/* svg_write's own error (-errno), else the close's (which reports
				 * a write that failed before it), else the stream's flag alone. */
				fprintf(stderr, "keel-topo: writing %s failed: %s\n", a.svg,
					r < 0 ? strerror(-r)
					: ce  ? strerror(ce)
					      : "an I/O error");
				status = 2;
				goto out;
			}
		}
	}
	if (a.plan) {
		static struct plan_step steps[300];
		const char *path = a.map_path ? a.map_path : "keel-map.json";
		unsigned n;

		if (!c.map) {
			fprintf(stderr, "keel-topo: %s\n", err);
			status = 2;
			goto out;
		}
		r = plan_kept ? 0 : keel_map_save(c.map, path, err, sizeof(err));
		if (r < 0) {
			fprintf(stderr, "keel-topo: %s\n", err);
			status = 2;
			goto out;
		}
		n = plan_build(&c, steps, sizeof(steps) / sizeof(steps[0]));
		if (plan_kept)
			printf("# keel-topo --plan: the map in %s as it is (%u shard%s; give map "
			       "options, or remove it, to plan another); run keel programs with "
			       "--map %s\n",
			       path, c.map->nshards, c.map->nshards == 1 ? "" : "s", path);
		else
			printf("# keel-topo --plan: wrote %s (%u shard%s); run keel programs with "
			       "--map %s\n",
			       path, c.map->nshards, c.map->nshards == 1 ? "" : "s", path);
		plan_print(steps, n, stdout);
		if (a.apply)
			status = plan_apply(steps, n);
		goto out;
	}
	if (a.json)
		report_json(&c, stdout);
	else if (!a.svg)
		report_text(&c, stdout);
	if (!c.map) {
		fprintf(stderr, "keel-topo: %s\n", err);
		status = 2;
	}
out:
	keel_topo_destroy(topo);
	free(map);
	return status;
}
