// SPDX-License-Identifier: MIT
/*
 * keel-kv: a sharded key-value server that speaks the Redis protocol (RESP2). See
 * docs/kv.md.
 */
#include <errno.h>
#include <keel/keel.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "kv.h"
#include "server.h"
#include "testfault.h"

static const char usage[] =
	"usage: keel-kv [--port P] [--addr A] [--maxmemory BYTES] [--timeout SECONDS]\n"
	"               [--proto-max-bulk-len BYTES] [--client-query-buffer-limit BYTES]\n"
	"               [--handoff copy|export] [--appendonly yes|no]\n"
	"               [--appendfsync always|everysec|no] [--dir DIR]\n"
	"               [--aof-truncate-corrupt yes|no] [--auto-aof-rewrite-percentage N]\n"
	"               [--auto-aof-rewrite-min-size BYTES] [--maxclients N]\n"
	"               [--maxmemory-clients BYTES] [--client-addrs yes|no]\n"
	"               [network options] [runtime options]\n"
	"A Redis-protocol key-value server, keys spread over the shards (docs/kv.md).\n"
	"--port P: TCP port (default 6379; 0: an ephemeral one, printed at start)\n"
	"--addr A: address to listen on (default 0.0.0.0)\n"
	"--maxmemory BYTES: writes past this much key/value memory get -OOM (0: no limit;\n"
	"           suffixes k kb m mb g gb)\n"
	"--timeout SECONDS: close connections idle this long (0: never, the default; the\n"
	"           network layer's --idle-timeout-ms aborts them instead, docs/kv.md)\n"
	"--proto-max-bulk-len BYTES: the largest bulk string accepted (default 512mb); a\n"
	"           longer one gets an error and the connection is closed\n"
	"--client-query-buffer-limit BYTES: the largest request buffered (default 1gb)\n"
	"--handoff copy|export: requests for another shard's keys travel copied (default)\n"
	"           or as an export of the receive buffer (keel_slice_export)\n"
	"--appendonly yes|no: log every write to DIR/appendonly-<shard>.aof and replay the\n"
	"           files at start (default no)\n"
	"--appendfsync always|everysec|no: when the files reach the disk: before the reply,\n"
	"           each second (the default), or when the kernel decides\n"
	"--dir DIR: where the append-only files live (default .)\n"
	"--aof-truncate-corrupt yes|no: a bad record inside a file (not a torn last record)\n"
	"           stops the start (no, the default); yes: cut the file there, after saving\n"
	"           the bytes from there to FILE.corrupt-OFFSET\n"
	"--auto-aof-rewrite-percentage N: rewrite a shard's file by itself, as BGREWRITEAOF\n"
	"           does, once it has grown by N % since its last rewrite or the start (default\n"
	"           100; 0: only on BGREWRITEAOF)\n"
	"--auto-aof-rewrite-min-size BYTES: no file is rewritten by itself while the shards'\n"
	"           files together are smaller than this, or it is smaller than its share\n"
	"           of it (BYTES / shards; default 64mb)\n"
	"--maxclients N: clients open at once, over every shard (default 10000, or fewer\n"
	"           where the shards' descriptor tables hold fewer); one past it gets\n"
	"           \"-ERR max number of clients reached\" and is closed\n"
	"--maxmemory-clients BYTES: what the clients hold together (their request and reply\n"
	"           buffers, transactions, watches, names; INFO memory mem_clients_normal);\n"
	"           past it the client holding the most is closed (INFO stats\n"
	"           evicted_clients).\n"
	"           At least 1mb, or a percentage of --maxmemory (10%); default 0: no limit\n"
	"--client-addrs yes|no: read each client's address and the local one at accept,\n"
	"           for CLIENT LIST's addr and laddr and CLIENT KILL ADDR/LADDR (default no:\n"
	"           they read ?:0; yes costs each accept a getpeername, and a getsockname\n"
	"           on a wildcard --addr)\n";

static void
die(const char *msg, const char *opt)
{
	fprintf(stderr, "keel-kv: %s%s\n%s", msg, opt ? opt : "", usage);
	exit(2);
}

/* keel-kv's own options, each taking a value. The table names each once: main's switch
 * has no default, so an option added here and not parsed there does not compile (-Wswitch),
 * where a list of names beside a chain of strcmps let one be added to either alone. */
enum kv_opt {
	O_PORT,
	O_ADDR,
	O_MAXMEMORY,
	O_TIMEOUT,
	O_MAX_BULK,
	O_QUERY_MAX,
	O_HANDOFF,
	O_APPENDONLY,
	O_APPENDFSYNC,
	O_AOF_TRUNCATE,
	O_RW_PCT,
	O_RW_MIN,
	O_MAXCLIENTS,
	O_MAXMEMORY_CLIENTS,
	O_CLIENT_ADDRS,
	O_DIR,
	O__COUNT
};

/* Indexed by enum kv_opt, for keel_opts_next ("--port 7000", as Redis reads it, or
 * "--port=7000", as keel's options are written). */
static const struct keel_app_opt kv_opts[] = {
	[O_PORT] = { "--port", "0..65535" },
	[O_ADDR] = { "--addr", "an address" },
	[O_MAXMEMORY] = { "--maxmemory", "bytes" },
	[O_TIMEOUT] = { "--timeout", "seconds" },
	[O_MAX_BULK] = { "--proto-max-bulk-len", "bytes" },
	[O_QUERY_MAX] = { "--client-query-buffer-limit", "bytes" },
	[O_HANDOFF] = { "--handoff", "copy or export" },
	[O_APPENDONLY] = { "--appendonly", "yes or no" },
	[O_APPENDFSYNC] = { "--appendfsync", "always, everysec or no" },
	[O_AOF_TRUNCATE] = { "--aof-truncate-corrupt", "yes or no" },
	[O_RW_PCT] = { "--auto-aof-rewrite-percentage", "a percentage" },
	[O_RW_MIN] = { "--auto-aof-rewrite-min-size", "bytes" },
	[O_MAXCLIENTS] = { "--maxclients", "a count" },
	[O_MAXMEMORY_CLIENTS] = { "--maxmemory-clients", "bytes or a percentage" },
	[O_CLIENT_ADDRS] = { "--client-addrs", "yes or no" },
	[O_DIR] = { "--dir", "a directory" },
};
_Static_assert(sizeof(kv_opts) / sizeof(kv_opts[0]) == O__COUNT, "an option without a name");

/* Of the append-only file: nothing without --appendonly yes. */
static bool
kv_opt_aof(enum kv_opt id)
{
	return id == O_APPENDFSYNC || id == O_AOF_TRUNCATE || id == O_RW_PCT || id == O_RW_MIN ||
	       id == O_DIR;
}

/* "100", "100b", "64k", "64kb", "100mb", "1gb", as Redis's memtoll reads them (case does
 * not matter): k, m and g are powers of 1000, kb, mb and gb of 1024 (redis-server 7.0.15:
 * maxmemory 1k is 1000, 1kb 1024). keel's own options (--send-max, --memory) take powers
 * of 1024 for either, as keel's other programs do. */
static int
parse_bytes(const char *s, uint64_t *out)
{
	static const struct {
		const char *unit;
		uint64_t mul;
	} units[] = { { "", 1 },
		      { "b", 1 },
		      { "k", 1000 },
		      { "kb", 1024 },
		      { "m", 1000 * 1000 },
		      { "mb", 1024 * 1024 },
		      { "g", 1000 * 1000 * 1000 },
		      { "gb", 1024 * 1024 * 1024 } };
	char *end;
	unsigned long long v;
	uint64_t mul = 0;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *s < '0' || *s > '9') /* strtoull takes spaces and a sign */
		return -EINVAL;
	for (size_t i = 0; i < sizeof(units) / sizeof(units[0]) && !mul; i++)
		if (!strcasecmp(end, units[i].unit))
			mul = units[i].mul;
	if (!mul)
		return -EINVAL;
	if (v > UINT64_MAX / mul)
		return -ERANGE;
	*out = v * mul;
	return 0;
}

struct app {
	struct keel_listener *l;
	const char *addr;
	_Atomic unsigned loaded;  /* shards whose data is loaded */
	_Atomic unsigned started; /* shards whose listener runs */
};

static void
listen_now(void *arg)
{
	struct app *a = arg;
	unsigned n = keel_shard_count(keel_this_shard());
	int r;

	if (kv_shard_stopped()) /* stopped (SIGTERM) while the last shard loaded */
		return;
	r = keel_listener_start(a->l);
	if (r < 0) {
		keel_log(KEEL_LOG_ERROR, "kv", "shard %u: listening: %s",
			 keel_shard_id(keel_this_shard()), strerror(-r));
		keel_stop(r);
		return;
	}
	/* Said by the last shard to start: every shard has replayed its append-only file
	 * and listens, so whoever waits for this line finds the data there; a shard that
	 * fails stops the program before the line. Shards run with signals blocked, so a
	 * SIGTERM right after it stops the runtime cleanly. */
	if (atomic_fetch_add(&a->started, 1) + 1 == n)
		fprintf(stderr, "keel-kv: listening on %s port %u, %u shards\n", a->addr,
			keel_listener_port(a->l), n);
}

/* For tests only: the last shard, once loaded, waits until the file KEEL_KV_TEST_HOLD_LOAD
 * names exists (at most 60 s), so that a test can see what the other shards do meanwhile. */
static void
test_hold_load(unsigned self, unsigned n)
{
	const char *path = getenv("KEEL_KV_TEST_HOLD_LOAD");
	struct timespec ms = { 0, 1000000 };

	if (!path || n < 2 || self != n - 1)
		return;
	for (int i = 0; i < 60000 && access(path, F_OK) < 0; i++)
		nanosleep(&ms, NULL);
}

static void
on_start(void *arg)
{
	struct app *a = arg;
	unsigned self = keel_shard_id(keel_this_shard());
	unsigned n = keel_shard_count(keel_this_shard());
	int r = kv_shard_start();

	if (r == -EINTR) { /* a stop (SIGINT/SIGTERM) during the load: as at any other time */
		keel_log(KEEL_LOG_WARN, "kv",
			 "shard %u: a stop came while loading the append-only files (a signal, "
			 "or another shard's failure): stopping; the files are as they were",
			 self);
		keel_stop(0);
		return;
	}
	if (r < 0) { /* the lines above say which part (the table, the append-only file) */
		keel_log(KEEL_LOG_ERROR, "kv", "shard %u: starting its key table and files: %s",
			 self, strerror(-r));
		keel_stop(r);
		return;
	}
	test_hold_load(self, n);
	/* No shard serves a client before every shard has loaded. Keys change owners between
	 * runs (the hash seed is new), so until the last shard has put its new file in place
	 * an old file may still hold records of a key another shard owns now and already
	 * wrote to its own new file; a crash then would replay both, in directory order, and
	 * could bring back the older value. The last shard to load starts every listener
	 * (connections wait in the listeners' backlogs meanwhile). */
	if (atomic_fetch_add(&a->loaded, 1) + 1 < n)
		return;
	for (unsigned i = 0; i < n; i++) {
		if (i == self) {
			listen_now(a);
			continue;
		}
		r = keel_send(i, listen_now, a);
		if (r < 0) {
			keel_log(KEEL_LOG_ERROR, "kv", "shard %u: starting shard %u's listener: %s",
				 self, i, strerror(-r));
			keel_stop(r);
			return;
		}
	}
}

/* The most clients that can be open at once here: with direct descriptors each shard's
 * table (--max-files, less two slots), each shard's share its own limit too; else the
 * descriptor limit, less what the shards and files hold. A --maxclients above it is lowered
 * to it (and said when given), as Redis lowers maxclients to its descriptor limit: a client
 * past a full table waited in the listen backlog, unanswered, instead of getting the error. */
static void
maxclients_fit(const struct keel_opts *o, const struct keel_net_config *nc, unsigned nshards,
	       bool given)
{
	struct keel_feature_decision d[KEEL_FEAT__COUNT];
	struct rlimit rl;
	uint64_t cap, reserve = 32 + 8 * (uint64_t)nshards;
	char why[200];

	if (keel_features_decide(o, d) < 0) /* keel_runtime_create decided: not reached */
		return;
	if (d[KEEL_FEAT_DIRECT_FD].used) {
		/* Less two slots: the armed accept's, and one for a client to be refused in
		 * (server.c's on_open), so that a shard whose table its clients fill (the
		 * kernel spreads them unevenly) still answers the next one. */
		kv_cfg.shard_clients = nc->max_files > 3 ? nc->max_files - 2 : 1;
		cap = (uint64_t)nshards * kv_cfg.shard_clients;
		snprintf(why, sizeof(why),
			 "each shard's direct-descriptor table holds %u clients (--max-files %u, "
			 "less two slots) x %u shards; raise --max-files for more",
			 kv_cfg.shard_clients, nc->max_files, nshards);
	} else if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
		cap = rl.rlim_cur > reserve + 1 ? rl.rlim_cur - reserve : 1;
		snprintf(why, sizeof(why),
			 "the descriptor limit is %llu (ulimit -n), %llu of them kept for the "
			 "shards and files; raise ulimit -n for more",
			 (unsigned long long)rl.rlim_cur, (unsigned long long)reserve);
	} else {
		return;
	}
	if (kv_cfg.maxclients <= cap)
		return;
	if (given) /* the default is lowered quietly: CONFIG GET maxclients and INFO say it */
		fprintf(stderr, "keel-kv: --maxclients %u lowered to %llu: %s\n", kv_cfg.maxclients,
			(unsigned long long)cap, why);
	kv_cfg.maxclients = (uint32_t)cap;
}

int
main(int argc, char **argv)
{
	struct keel_opts o;
	struct keel_net_config nc;
	struct keel_listen_opts lo;
	struct keel_runtime *rt;
	struct app a = { 0 };
	const char *addr = "0.0.0.0", *aof_opt = NULL;
	bool maxclients_given = false;
	long port = 6379;
	unsigned failed;
	int r;

	kv_test_faults_init();
	keel_opts_init(&o);
	keel_net_config_init(&nc);
	keel_net_opts_parse_or_exit(&o, &nc, &argc, argv, usage);
	memset(&lo, 0, sizeof(lo));
	for (int i = 1;;) { /* every option takes a value */
		const char *v;
		char *end, err[256];
		uint64_t b;

		/* What is not an option of keel-kv's is said as such (keel_opts_next): a stray
		 * word or an unknown option read as an option missing its value, and an option's
		 * missing value took the next option as it ("--dir --appendonly yes"). */
		r = keel_opts_next(argc, argv, &i, kv_opts, O__COUNT, &v, err, sizeof(err));
		if (r == -ENOENT) { /* the options' end: keel-kv takes no argument */
			if (i < argc)
				die("unexpected argument ", argv[i]);
			break;
		}
		if (r < 0)
			die(err, NULL);
		if (kv_opt_aof((enum kv_opt)r))
			aof_opt = kv_opts[r].name;
		switch ((enum kv_opt)r) {
		case O_PORT: {
			port = strtol(v, &end, 10);
			if (*v < '0' || *v > '9' || *end || port < 0 || port > 65535)
				die("--port expects 0..65535, got ", v);
			break;
		}
		case O_ADDR: {
			addr = v;
			break;
		}
		case O_MAXMEMORY: {
			if (parse_bytes(v, &kv_cfg.maxmemory) < 0)
				die("--maxmemory expects bytes (100mb, 1gb, ...), got ", v);
			break;
		}
		case O_TIMEOUT: {
			long t = strtol(v, &end, 10);
			if (*v < '0' || *v > '9' || *end || t < 0 || t > 100000000)
				die("--timeout expects seconds (0: never), got ", v);
			kv_cfg.timeout_s = (unsigned)t;
			break;
		}
		case O_MAX_BULK: {
			if (parse_bytes(v, &b) < 0 || b < 1024 || b > (1ull << 32) - 1)
				die("--proto-max-bulk-len expects 1kb up to 4gb - 1 (4294967295 bytes), got ",
				    v);
			kv_cfg.max_bulk = b;
			break;
		}
		case O_QUERY_MAX: {
			if (parse_bytes(v, &b) < 0 || b < 1024 * 1024)
				die("--client-query-buffer-limit expects at least 1mb, got ", v);
			kv_cfg.query_max = b;
			break;
		}
		case O_HANDOFF: {
			if (!strcmp(v, "copy"))
				kv_cfg.handoff_export = false;
			else if (!strcmp(v, "export"))
				kv_cfg.handoff_export = true;
			else
				die("--handoff expects copy or export, got ", v);
			break;
		}
		case O_CLIENT_ADDRS: {
			if (strcmp(v, "yes") && strcmp(v, "no"))
				die("--client-addrs expects yes or no, got ", v);
			kv_cfg.client_addrs = !strcmp(v, "yes");
			break;
		}
		case O_APPENDONLY: {
			if (strcmp(v, "yes") && strcmp(v, "no"))
				die("--appendonly expects yes or no, got ", v);
			kv_cfg.aof = !strcmp(v, "yes");
			break;
		}
		case O_APPENDFSYNC: {
			if (!strcmp(v, "always"))
				kv_cfg.fsync = KV_FSYNC_ALWAYS;
			else if (!strcmp(v, "everysec"))
				kv_cfg.fsync = KV_FSYNC_EVERYSEC;
			else if (!strcmp(v, "no"))
				kv_cfg.fsync = KV_FSYNC_NO;
			else
				die("--appendfsync expects always, everysec or no, got ", v);
			break;
		}
		case O_AOF_TRUNCATE: {
			if (strcmp(v, "yes") && strcmp(v, "no"))
				die("--aof-truncate-corrupt expects yes or no, got ", v);
			kv_cfg.aof_truncate_corrupt = !strcmp(v, "yes");
			break;
		}
		case O_RW_PCT: {
			long pct = strtol(v, &end, 10);
			if (*v < '0' || *v > '9' || *end || pct < 0 || pct > 1000000)
				die("--auto-aof-rewrite-percentage expects 0..1000000 (0: off), got ",
				    v);
			kv_cfg.auto_rw_pct = (unsigned)pct;
			break;
		}
		case O_RW_MIN: {
			if (parse_bytes(v, &kv_cfg.auto_rw_min) < 0)
				die("--auto-aof-rewrite-min-size expects bytes (64mb, 1gb, ...), got ",
				    v);
			break;
		}
		case O_MAXCLIENTS: {
			unsigned long long m = strtoull(v, &end, 10);
			if (*v < '0' || *v > '9' || *end || m < 1 || m > UINT32_MAX)
				die("--maxclients expects 1..4294967295, got ", v);
			kv_cfg.maxclients = (uint32_t)m;
			maxclients_given = true;
			break;
		}
		case O_MAXMEMORY_CLIENTS: {
			/* Bytes, or as Redis 7 also takes it, a percentage of --maxmemory (made
			 * bytes once every option is read). */
			unsigned long pct = strtoul(v, &end, 10);

			if (*v >= '0' && *v <= '9' && !strcmp(end, "%")) {
				if (pct < 1 || pct > 100)
					die("--maxmemory-clients expects a percentage of --maxmemory "
					    "from 1% to 100%, got ",
					    v);
				kv_cfg.maxmemory_clients_pct = (unsigned)pct;
				break;
			}
			if (parse_bytes(v, &b) < 0 || (b && b < 1024 * 1024))
				die("--maxmemory-clients expects 0 (no limit), at least 1mb, or a "
				    "percentage of --maxmemory (10%), got ",
				    v);
			kv_cfg.maxmemory_clients = b;
			kv_cfg.maxmemory_clients_pct = 0;
			break;
		}
		case O_DIR: {
			kv_cfg.dir = v;
			break;
		}
		case O__COUNT: /* no option's index */
			break;
		}
	}
	if (kv_cfg.maxmemory_clients_pct) {
		if (!kv_cfg.maxmemory) {
			fprintf(stderr,
				"keel-kv: --maxmemory-clients %u%% is a share of --maxmemory, which is "
				"not set (no limit): give --maxmemory, or --maxmemory-clients in "
				"bytes\n",
				kv_cfg.maxmemory_clients_pct);
			exit(2);
		}
		kv_cfg.maxmemory_clients = kv_cfg.maxmemory / 100 * kv_cfg.maxmemory_clients_pct;
		if (kv_cfg.maxmemory_clients < 1024 * 1024) {
			fprintf(stderr,
				"keel-kv: --maxmemory-clients %u%% of --maxmemory %llu is %llu bytes, "
				"under the least (1mb): give a larger share or --maxmemory\n",
				kv_cfg.maxmemory_clients_pct, (unsigned long long)kv_cfg.maxmemory,
				(unsigned long long)kv_cfg.maxmemory_clients);
			exit(2);
		}
	}
	if (aof_opt && !kv_cfg.aof)
		fprintf(stderr,
			"keel-kv: %s has no effect without --appendonly yes (no append-only file is "
			"written)\n",
			aof_opt);
	/* keel-kv queues replies up to the high watermark before it stops reading (a large
	 * one in pieces until the queue passes it): a --send-max below it would reset a
	 * client that reads before it was ever paused. */
	if (nc.send_max && nc.send_max < nc.high_watermark) {
		char m[160];

		snprintf(m, sizeof(m),
			 "%llu, below --high-watermark %llu: raise --send-max or lower "
			 "--high-watermark",
			 (unsigned long long)nc.send_max, (unsigned long long)nc.high_watermark);
		die("--send-max ", m);
	}
	kv_cfg.high_watermark = nc.high_watermark;
	kv_cfg.reply_max = nc.send_max;
	if (keel_net_config_set(&nc) < 0) /* keel_net_opts_parse checked it */
		die("keel_net_config_set refused the network options", NULL);
	if (kv_aof_preload() < 0)
		return 1;
	r = keel_hash_key_random(&kv_cfg.hash_key);
	if (r < 0) {
		fprintf(stderr, "keel-kv: getrandom for the key table's hash key failed: %s\n",
			strerror(-r));
		return 1;
	}
	r = keel_runtime_create(&o, &rt);
	if (r < 0)
		return 1;
	kv_cfg.nshards = keel_runtime_shard_count(rt);
	maxclients_fit(&o, &nc, kv_cfg.nshards, maxclients_given);
	lo.addr = addr;
	lo.port = (uint16_t)port;
	lo.rt = rt;
	/* Only CLIENT LIST and KILL ask for them, and reading them costs every accept. */
	lo.no_addrs = !kv_cfg.client_addrs;
	r = keel_listener_create(&lo, kv_cfg.nshards, &kv_conn_ops, &a, &a.l);
	if (r < 0) {
		fprintf(stderr, "keel-kv: listening on %s port %ld: %s\n", addr, port,
			strerror(-r));
		keel_runtime_destroy(rt);
		return 1;
	}
	kv_set_port(keel_listener_port(a.l));
	a.addr = addr;
	if (kv_cfg.aof) /* loading may take a while: the port is known before the listening line */
		fprintf(stderr,
			"keel-kv: bound %s port %u; %u shards load the append-only files, then listen\n",
			addr, keel_listener_port(a.l), kv_cfg.nshards);
	r = keel_runtime_start(rt, on_start, &a);
	if (r == 0)
		r = keel_runtime_join(rt);
	keel_runtime_destroy(rt);
	keel_listener_destroy(a.l);
	failed = kv_aof_stop_failures();
	if (failed) /* a supervisor sees it: what was written since the last good sync is lost */
		fprintf(stderr,
			"keel-kv: %u append-only file(s) could not be written and synced at the "
			"stop (the lines above say why): what was written to them since their "
			"last good sync may not be on disk; exit status 1\n",
			failed);
	kv_fini();
	return r < 0 || failed ? 1 : 0;
}
