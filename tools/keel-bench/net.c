// SPDX-License-Identifier: MIT
/*
 * keel-bench network modes: pingpong, throughput, stream, connections, udp (clients) and
 * serve (a TCP and UDP echo server). Options are parsed here (keel's runtime options first,
 * keel_opts_parse), the server backend is picked by --backend and the client by --client
 * (default: the epoll client, whatever the server: one client program for both), and without --port
 * the client starts a server in this process on an ephemeral loopback port.
 *
 * CPU over the window: when the client sets its window it calls on_window; a sampler thread
 * then reads CPU-time clocks at the window's start and end: the server's (the in-process
 * server threads' pthread_getcpuclockid clocks, or with --server-pid the whole server
 * process's clock_getcpuclockid clock) and this process's, so both servers are measured the
 * same way and the client's own CPU shows whether the client was the bottleneck. With
 * --server-cpus LIST it also reads /proc/stat's rows of those CPUs at the same instants:
 * all the work done on the server's CPUs, whoever's context it ran in (receive softirqs
 * that run while the server sleeps are charged to the idle task, not to the server's
 * clock). See docs/bench.md.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <keel/caps.h>
#include <keel/net.h>
#include <keel/topo.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "../../core/topo_internal.h"
#include "backend.h"
#include "bench.h"

static const struct bench_backend *const backends[] = { &bench_backend_epoll, &bench_backend_keel };

static const char *const mode_names[] = { "pingpong", "throughput", "stream", "connections",
					  "udp" };
#define NMODES (sizeof(mode_names) / sizeof(mode_names[0]))

static const char client_usage[] =
	"usage: keel-bench pingpong|throughput|stream|connections|udp [options] [runtime "
	"options]\n"
	"  --backend B    the in-process server: keel or epoll (default keel)\n"
	"  --client B     the client: keel or epoll (default: epoll, for either server; udp: one\n"
	"                 client)\n"
	"  --port P       drive an external echo server on P (keel-echo, keel-bench serve);\n"
	"                 without it a server starts in this process on an ephemeral port\n"
	"  --server-pid N with --port: the server's pid, whose CPU time is read at the\n"
	"                 window's edges (server_cpu_*)\n"
	"  --addr A       the server's IPv4 address (default 127.0.0.1)\n"
	"  --size N       payload bytes per message, stream: per chunk, udp: per datagram\n"
	"                 (default 64; stream 65536)\n"
	"  --inflight N   messages in flight per connection (pingpong and connections: 1;\n"
	"                 throughput default 64; stream: chunks, default 16; udp: datagrams\n"
	"                 per socket, default 1)\n"
	"  --conns N      connections (connections mode: the held ones timed; udp: sockets;\n"
	"                 default 1)\n"
	"  --idle M       connections mode: idle connections held open (default 100)\n"
	"  --churn N      connections mode: open/close loops per client thread (default 1)\n"
	"  --threads T    client threads (default 1)\n"
	"  --shards N     in-process server threads, one per core (default 1)\n"
	"  --busy-poll-us N  the epoll server: epoll_wait(0) for N us before blocking (default\n"
	"                 0); keel's runtime option is --idle-poll-us (keel-bench's default\n"
	"                 0, not the runtime's 50, as below)\n"
	"  --gather-us N  the epoll server: sleep N us before a blocking epoll_wait while\n"
	"                 keel's wait coalescing policy says it pays (default 0: never); keel's\n"
	"                 runtime option is --wait-coalesce-us (default 10)\n"
	"  --gather-fixed the epoll server: with --gather-us, before every blocking wait\n"
	"  --no-defer-writes  the epoll server: send each reply as its connection is read\n"
	"                 (default --defer-writes: a wait's replies after all of its events, as\n"
	"                 Redis does)\n"
	"  --udp-gso      the epoll server: echo each run of datagrams of one size from one\n"
	"                 source with one sendmsg carrying UDP_SEGMENT (default: sendmmsg)\n"
	"  --steer S      the keel server: cpu or hash, which shard accepts a connection\n"
	"                 (default hash, as the epoll server's SO_REUSEPORT group; cpu on\n"
	"                 loopback puts client thread i's connections on one shard)\n"
	"  --server-cpus LIST  the server's CPUs: also report their busy time over the window\n"
	"                 from /proc/stat (server_cpus_*; all work on them, softirqs included)\n"
	"  --client-poll-us N  the epoll client (and udp's): epoll_wait(0) for N us after its\n"
	"                 last event before blocking (default 0); a polling client uses its\n"
	"                 whole core, so its rows always read client-bound\n"
	"  --seconds S    measured window (default 3)\n"
	"  --warmup S     run this long first without counting (default 0.5)\n"
	"  --cpuset LIST  pin to these CPUs in order: in-process server threads first, then\n"
	"                 the client threads (default: server i on CPU i, client i on CPU\n"
	"                 shards+i)\n"
	"  --no-pin       do not pin threads (not with --cpuset)\n"
	"  --json         print JSON instead of a table\n\n";

/* After keel_opts_help(), whose defaults are the runtime's: keel-bench sets its own. */
static const char rt_defaults[] =
	"keel-bench's defaults for the runtime options above (not the runtime's): --idle-poll-us\n"
	"0 (no spin, as the epoll server's --busy-poll-us 0), --memory 64M, --log-level warn.\n"
	"Without a keel runtime in the process (epoll server and client) only --shards and\n"
	"--cpuset are taken. --map places the keel server's shards; the client's threads take\n"
	"the CPUs it leaves free.\n";

static const char serve_usage[] =
	"usage: keel-bench serve [options]\n"
	"  --backend B    keel or epoll (default keel)\n"
	"  --port P       port to listen on (default 0: an ephemeral port, printed)\n"
	"  --addr A       IPv4 address to bind (default 127.0.0.1)\n"
	"  --shards N     server threads, one per core, SO_REUSEPORT (default 1)\n"
	"  --busy-poll-us N  epoll: epoll_wait(0) for N us before blocking (default 0);\n"
	"                 keel: use the runtime option --idle-poll-us (keel-bench's default\n"
	"                 0, not the runtime's 50, as below)\n"
	"  --gather-us N  epoll: sleep N us before a blocking epoll_wait while keel's wait\n"
	"                 coalescing policy says it pays (default 0); --gather-fixed: always;\n"
	"                 keel: use the runtime option --wait-coalesce-us (default 10)\n"
	"  --no-defer-writes  epoll: send each reply as its connection is read (default\n"
	"                 --defer-writes: a wait's replies after all of its events are read, as\n"
	"                 Redis does)\n"
	"  --udp-gso      epoll: echo each run of datagrams of one size from one source with\n"
	"                 one sendmsg carrying UDP_SEGMENT, as keel batches its UDP sends\n"
	"                 (default: sendmmsg, a datagram per message)\n"
	"  --steer S      keel: cpu or hash, which shard accepts a connection (default hash,\n"
	"                 as the epoll server's SO_REUSEPORT group places them; cpu steering\n"
	"                 on loopback follows the client's CPU, not a NIC queue's)\n"
	"  --cpuset LIST  server thread i on the i-th CPU of LIST (default CPU i)\n"
	"  --seconds S    stop after S seconds (default: at SIGINT or SIGTERM)\n"
	"  --size N       report per-message figures for framed messages of N bytes\n"
	"  --no-pin       do not pin the server threads (not with --cpuset)\n"
	"  --json         print the end report as JSON\n"
	"  network options (below): keel's receive rings, UDP batching, limits (keel only)\n"
	"Serves TCP and UDP (each datagram back to its sender) on the same port.\n\n";

struct opts {
	const char *prog;
	struct bench_cfg cfg;
	struct keel_opts rt;
	const struct bench_backend *be, *client;
	bool json, has_port, serve, has_size, has_busy, has_gather, has_client_poll, has_steer;
	bool has_defer; /* --defer-writes or --no-defer-writes given */
	long server_pid;
	double seconds, warmup;
	struct keel_cpuset server_cpus; /* --server-cpus */
	bool has_server_cpus;
	bool has_net; /* network options (keel_net_opts_parse): keel's server or client only */
	/* The first runtime option (keel_opts_parse) of the command line other than --shards
	 * and --cpuset, the two that place the epoll side's threads too ("": none), and
	 * whether --cpuset was one of them (else a cpuset came from KEEL_CPUSET). */
	char rt_opt[48];
	bool rt_cpuset_argv;
	/* The first option of the command line that only a keel server takes (--map, --zcrx,
	 * --iface, --rxqs, --zcrx-area, --zcrx-rq-entries: they give its shards CPUs and rx
	 * queues; keel.c's opts_for drops them from the keel client's runtime), "": none. */
	char server_opt[48];
	bool keel_here; /* a keel runtime runs in this process (keel_in_process) */
};

/* The client: --client's, or the epoll client, whichever server runs, so that a comparison
 * of the two servers has one client program unless told otherwise. Until the sixty-fourth
 * session it was --backend's, which paired each server with its own kind of client. */
static const struct bench_backend *
client_of(const struct opts *o)
{
	return o->client ? o->client : &bench_backend_epoll;
}

static int
bad(const struct opts *o, const char *opt, const char *what, const char *got)
{
	fprintf(stderr, "keel-bench %s: %s: %s%s%s%s\n", o->prog, opt, what, got ? ", got '" : "",
		got ? got : "", got ? "'" : "");
	return 2;
}

static int
parse_u32(const struct opts *o, const char *opt, const char *v, uint32_t lo, uint32_t hi,
	  uint32_t *out)
{
	char what[64];
	uint64_t x;

	snprintf(what, sizeof(what), "expected %u..%u", lo, hi);
	if (!bench_parse_u64(v, lo, hi, &x))
		return bad(o, opt, what, v);
	*out = (uint32_t)x;
	return 0;
}

static int
parse_secs(const struct opts *o, const char *opt, const char *v, double lo, double hi, double *out)
{
	char what[64];

	snprintf(what, sizeof(what), "expected seconds, %g..%g", lo, hi);
	if (!bench_parse_double(v, lo, hi, out))
		return bad(o, opt, what, v);
	return 0;
}

static int
parse(struct opts *o, int argc, char **argv)
{
	struct bench_cfg *c = &o->cfg;
	uint32_t port = 0;
	bool has_inflight = false, has_threads = false;
	const char *addr = "127.0.0.1";

	for (int i = 1; i < argc; i++) {
		const char *v = NULL, *a = argv[i];
		int m = 0;

#define OPT(name) ((m = bench_opt(argc, argv, &i, name, &v)) != 0)
		if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
			fputs(o->serve ? serve_usage : client_usage, stdout);
			keel_net_opts_help(stdout);
			keel_opts_help(stdout);
			fputs(rt_defaults, stdout);
			exit(0);
		} else if (!strcmp(a, "--json")) {
			o->json = true;
		} else if (!strcmp(a, "--no-pin")) {
			c->pin = false;
		} else if (OPT("--backend") || (!o->serve && OPT("--client"))) {
			const char *opt = !strncmp(a, "--backend", 9) ? "--backend" : "--client";
			const struct bench_backend **be = opt[2] == 'b' ? &o->be : &o->client;

			if (m < 0)
				return bad(o, opt, "missing value (epoll or keel)", NULL);
			*be = NULL;
			for (size_t k = 0; k < sizeof(backends) / sizeof(backends[0]); k++)
				if (!strcmp(v, backends[k]->name))
					*be = backends[k];
			if (!*be)
				return bad(o, opt, "expected epoll or keel", v);
		} else if (!o->serve && OPT("--server-pid")) {
			uint32_t pid;
			if (m < 0 || parse_u32(o, "--server-pid", v, 1, 1u << 30, &pid))
				return m < 0 ? bad(o, "--server-pid", "missing value", NULL) : 2;
			o->server_pid = pid;
		} else if (OPT("--busy-poll-us")) {
			if (m < 0 ||
			    parse_u32(o, "--busy-poll-us", v, 0, 10000000, &c->busy_poll_us))
				return m < 0 ? bad(o, "--busy-poll-us", "missing value", NULL) : 2;
			o->has_busy = true;
		} else if (!o->serve && OPT("--server-cpus")) {
			char err[160];

			if (m < 0)
				return bad(o, "--server-cpus", "missing value", NULL);
			memset(&o->server_cpus, 0, sizeof(o->server_cpus));
			if (keel_cpulist_parse(v, &o->server_cpus, err, sizeof(err)) < 0)
				return bad(o, "--server-cpus", "expected a CPU list (e.g. 0-3,8)",
					   v);
			o->has_server_cpus = true;
		} else if (!o->serve && OPT("--client-poll-us")) {
			if (m < 0 ||
			    parse_u32(o, "--client-poll-us", v, 0, 10000000, &c->client_poll_us))
				return m < 0 ? bad(o, "--client-poll-us", "missing value", NULL)
					     : 2;
			o->has_client_poll = true;
		} else if (OPT("--gather-us")) {
			if (m < 0 || parse_u32(o, "--gather-us", v, 0, 100000, &c->gather_us))
				return m < 0 ? bad(o, "--gather-us", "missing value", NULL) : 2;
			o->has_gather = true;
		} else if (!strcmp(a, "--gather-fixed")) {
			c->gather_fixed = true;
			o->has_gather = true;
		} else if (!strcmp(a, "--defer-writes") || !strcmp(a, "--no-defer-writes")) {
			c->defer_writes = a[2] == 'd';
			o->has_defer = true;
		} else if (!strcmp(a, "--udp-gso")) {
			c->udp_gso = true;
		} else if (OPT("--steer")) {
			enum keel_steer st;
			if (m < 0)
				return bad(o, "--steer", "missing value", NULL);
			if (keel_steer_parse(v, &st) < 0 || st == KEEL_STEER_QUEUE)
				return bad(o, "--steer", "expected cpu or hash", v);
			c->steer = (int)st;
			o->has_steer = true;
		} else if (OPT("--addr")) {
			if (m < 0)
				return bad(o, "--addr", "missing value", NULL);
			addr = v;
		} else if (OPT("--port")) {
			if (m < 0 || parse_u32(o, "--port", v, o->serve ? 0 : 1, 65535, &port))
				return m < 0 ? bad(o, "--port", "missing value", NULL) : 2;
			o->has_port = true;
		} else if (OPT("--size")) {
			if (m < 0 || parse_u32(o, "--size", v, 1, 4u << 20, &c->size))
				return m < 0 ? bad(o, "--size", "missing value", NULL) : 2;
			o->has_size = true;
		} else if (!o->serve && OPT("--inflight")) {
			if (m < 0 || parse_u32(o, "--inflight", v, 1, 1024, &c->inflight))
				return m < 0 ? bad(o, "--inflight", "missing value", NULL) : 2;
			has_inflight = true;
		} else if (!o->serve && OPT("--conns")) {
			if (m < 0 || parse_u32(o, "--conns", v, 1, 10000, &c->conns))
				return m < 0 ? bad(o, "--conns", "missing value", NULL) : 2;
		} else if (!o->serve && OPT("--idle")) {
			if (m < 0 || parse_u32(o, "--idle", v, 0, 100000, &c->idle))
				return m < 0 ? bad(o, "--idle", "missing value", NULL) : 2;
		} else if (!o->serve && OPT("--churn")) {
			if (m < 0 || parse_u32(o, "--churn", v, 0, 1000, &c->churn))
				return m < 0 ? bad(o, "--churn", "missing value", NULL) : 2;
		} else if (!o->serve && OPT("--threads")) {
			if (m < 0 || parse_u32(o, "--threads", v, 1, 256, &c->threads))
				return m < 0 ? bad(o, "--threads", "missing value", NULL) : 2;
			has_threads = true;
		} else if (OPT("--seconds")) {
			if (m < 0 ||
			    parse_secs(o, "--seconds", v, o->serve ? 0 : 0.01, 86400, &o->seconds))
				return m < 0 ? bad(o, "--seconds", "missing value", NULL) : 2;
		} else if (!o->serve && OPT("--warmup")) {
			if (m < 0 || parse_secs(o, "--warmup", v, 0, 3600, &o->warmup))
				return m < 0 ? bad(o, "--warmup", "missing value", NULL) : 2;
		} else {
			return bad(o, a, "unknown option (see --help)", NULL);
		}
#undef OPT
	}
	memset(&c->addr, 0, sizeof(c->addr));
	c->addr.sin_family = AF_INET;
	c->addr.sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, addr, &c->addr.sin_addr) != 1)
		return bad(o, "--addr", "expected an IPv4 address", addr);
	if (o->has_busy && o->be != &bench_backend_epoll)
		return bad(o, "--busy-poll-us",
			   "the epoll server's option (keel's runtime option is --idle-poll-us)",
			   NULL);
	if (o->has_gather && o->be != &bench_backend_epoll)
		return bad(o, o->cfg.gather_fixed ? "--gather-fixed" : "--gather-us",
			   "the epoll server's option (keel's runtime options are "
			   "--wait-coalesce-us and --wait-coalesce-fixed)",
			   NULL);
	if (c->gather_fixed && !c->gather_us)
		return bad(o, "--gather-fixed", "needs --gather-us N (N > 0)", NULL);
	if (o->has_net && o->be != &bench_backend_keel &&
	    (o->serve || client_of(o) != &bench_backend_keel))
		return bad(o, "network options (--buf-count, --bulk-buf-size, ...)",
			   "keel's network layer's (keel_net_opts_parse): give them with --backend "
			   "keel or --client keel",
			   NULL);
	if (o->has_steer && o->be != &bench_backend_keel)
		return bad(o, "--steer",
			   "the keel server's option (the epoll server's SO_REUSEPORT group places "
			   "connections by the kernel's hash)",
			   NULL);
	if (o->has_defer && (o->be != &bench_backend_epoll || (!o->serve && o->has_port)))
		return bad(o, c->defer_writes ? "--defer-writes" : "--no-defer-writes",
			   "the epoll server's option: give it with --backend epoll, to the "
			   "server that runs it",
			   NULL);
	if (c->udp_gso && o->be != &bench_backend_epoll)
		return bad(o, "--udp-gso",
			   "the epoll server's option (keel batches its UDP sends itself; "
			   "--udp-gso-segs 1 turns that off)",
			   NULL);
	if (o->has_gather && !o->serve && o->has_port)
		return bad(o, o->cfg.gather_fixed ? "--gather-fixed" : "--gather-us",
			   "sets the in-process epoll server; give it to the keel-bench serve that "
			   "--port drives",
			   NULL);
	/* The in-process server's other settings, with a client of an external server: taken
	 * and ignored, with nothing in the JSON to say so. */
	if (!o->serve && o->has_port && (o->has_busy || c->udp_gso || o->has_steer))
		return bad(o,
			   o->has_busy  ? "--busy-poll-us"
			   : c->udp_gso ? "--udp-gso"
					: "--steer",
			   "sets the in-process server; give it to the server that --port drives",
			   NULL);
	if (o->has_net && !o->serve && o->has_port && client_of(o) != &bench_backend_keel)
		return bad(o, "network options (--buf-count, --bulk-buf-size, ...)",
			   "keel's network layer's, and neither the epoll client nor the server "
			   "--port drives takes them here: give them to that server",
			   NULL);
	if (o->serve)
		return 0;
	if (o->server_pid && !o->has_port)
		return bad(o, "--server-pid",
			   "needs --port (the in-process server is measured "
			   "without it)",
			   NULL);
	if (c->mode == BENCH_UDP && o->client && o->client != &bench_backend_epoll)
		return bad(o, "--client",
			   "udp has one client (plain sockets, recvmmsg/sendmmsg): use --client "
			   "epoll or leave it out",
			   NULL);
	if (o->has_client_poll && c->mode != BENCH_UDP && client_of(o) != &bench_backend_epoll)
		return bad(o, "--client-poll-us",
			   "the epoll client's option (a keel client polls with the runtime "
			   "option --idle-poll-us; give --client epoll)",
			   NULL);
	if (c->mode == BENCH_UDP && (c->size < 16 || c->size > 65507))
		return bad(o, "--size",
			   "udp: expected 16..65507 (the datagram, with its 8-byte "
			   "sequence number)",
			   NULL);
	if (has_inflight && c->inflight != 1 &&
	    (c->mode == BENCH_PINGPONG || c->mode == BENCH_CONNECTIONS))
		return bad(o, "--inflight",
			   "this mode keeps one message in flight (see throughput)", NULL);
	if (has_threads && c->threads > c->conns)
		return bad(o, "--threads", "more threads than --conns", NULL);
	return 0;
}

static void
defaults(struct opts *o, enum bench_mode mode)
{
	struct bench_cfg *c = &o->cfg;

	memset(c, 0, sizeof(*c));
	c->mode = mode;
	c->size = mode == BENCH_STREAM ? 65536 : 64;
	c->inflight = mode == BENCH_THROUGHPUT ? 64 : mode == BENCH_STREAM ? 16 : 1;
	c->conns = 1;
	c->idle = 100;
	c->churn = 1;
	c->threads = 1;
	c->shards = 1;
	c->steer = KEEL_STEER_HASH;
	c->defer_writes = true;
	c->pin = true;
	o->be = &bench_backend_keel;
	o->client = NULL;
	o->seconds = 3;
	o->warmup = 0.5;
}

/* Held and idle connections need descriptors on both sides: take the hard limit. */
static void
raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* ---- CPU over the window ---- */

#define MAX_CLOCKS 256

struct sampler {
	pthread_t tid;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool have_window, cancel, ok;
	bool done; /* the sampler thread is through: the end read, or given up */
	uint64_t t_start, t_end;
	clockid_t srv[MAX_CLOCKS];
	unsigned nsrv;
	bool srv_in_process; /* the server's clocks are threads of this process */
	/* at the window's start [0] and end [1]: wall, server CPU, this process's CPU */
	uint64_t wall[2], scpu[2], pcpu[2];
	const struct keel_cpuset *cpus; /* --server-cpus, or NULL */
	unsigned ncpus;                 /* ... how many */
	uint64_t busy[2], total[2];     /* their /proc/stat ticks: busy, all */
	struct keel_cpuset ccpus;       /* the client threads' CPUs (pinned, none a server's) */
	unsigned nccpus;                /* ... how many; 0: not read */
	uint64_t cbusy[2], ctotal[2];   /* their /proc/stat ticks */
	int err;
};

/* How late the later of the two samples was after its edge of the window, ms. */
static double
sampler_late_ms(const struct sampler *s)
{
	uint64_t a = s->wall[0] - s->t_start, b = s->wall[1] - s->t_end;

	return (double)(a > b ? a : b) / 1e6;
}

static int
clock_ns(clockid_t c, uint64_t *out)
{
	struct timespec ts;

	if (clock_gettime(c, &ts) < 0)
		return -errno;
	*out = (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
	return 0;
}

/* The CPUs in @s. */
static unsigned
cpuset_count(const struct keel_cpuset *s)
{
	unsigned n = 0;

	for (unsigned w = 0; w < KEEL_MAX_CPUS / 64; w++)
		n += (unsigned)__builtin_popcountll(s->bits[w]);
	return n;
}

/* /proc/stat's ticks of the @want CPUs in @cpus: busy (user, nice, system, irq, softirq) and
 * all (those, idle and iowait; steal and guest time are the hypervisor's). Returns 0, or
 * -errno (-ENOENT when one of them has no row). */
static int
proc_stat_ticks(const struct keel_cpuset *cpus, unsigned want, uint64_t *busy, uint64_t *total)
{
	char line[512];
	unsigned seen = 0;
	FILE *f;

	f = fopen("/proc/stat", "re");
	if (!f)
		return -errno;
	*busy = *total = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long t[7] = { 0 };
		unsigned cpu;

		/* "cpuN ..." rows only: %u would read the total row "cpu  T ..." as a CPU. */
		if (strncmp(line, "cpu", 3) || line[3] < '0' || line[3] > '9')
			continue;
		if (sscanf(line, "cpu%u %llu %llu %llu %llu %llu %llu %llu", &cpu, &t[0], &t[1],
			   &t[2], &t[3], &t[4], &t[5], &t[6]) != 8 ||
		    !keel_cpuset_has(cpus, cpu))
			continue;
		*busy += t[0] + t[1] + t[2] + t[5] + t[6];
		*total += t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6];
		seen++;
	}
	fclose(f);
	return seen == want ? 0 : -ENOENT;
}

/* Cores busy over the window from two /proc/stat readings of @n CPUs (total grew). */
static double
busy_cores(const uint64_t busy[2], const uint64_t total[2], unsigned n)
{
	return (double)(busy[1] - busy[0]) / (double)(total[1] - total[0]) * n;
}

static int
sample(struct sampler *s, int k)
{
	uint64_t v = 0;
	int r;

	if (s->cpus) {
		r = proc_stat_ticks(s->cpus, s->ncpus, &s->busy[k], &s->total[k]);
		if (r < 0)
			return r;
	}
	if (s->nccpus) {
		r = proc_stat_ticks(&s->ccpus, s->nccpus, &s->cbusy[k], &s->ctotal[k]);
		if (r < 0)
			return r;
	}
	/* The wall clock on the outer side of the CPU clocks: read before them at the start
	 * and after them at the end, so that the CPU counted lies within the wall interval
	 * even when the sampler is preempted between the reads (a share of a core never
	 * comes out above what the threads could use). */
	if (k == 0)
		s->wall[k] = bench_now_ns();
	s->scpu[k] = 0;
	for (unsigned i = 0; i < s->nsrv; i++) {
		r = clock_ns(s->srv[i], &v);
		if (r < 0)
			return r;
		s->scpu[k] += v;
	}
	r = clock_ns(CLOCK_PROCESS_CPUTIME_ID, &s->pcpu[k]);
	if (k == 1)
		s->wall[k] = bench_now_ns();
	return r;
}

/* Wait until @t (monotonic ns) unless cancelled. Returns false when cancelled. Holds mu. */
static bool
wait_until(struct sampler *s, uint64_t t)
{
	struct timespec ts = { .tv_sec = (time_t)(t / 1000000000ULL),
			       .tv_nsec = (long)(t % 1000000000ULL) };

	while (!s->cancel && bench_now_ns() < t)
		pthread_cond_timedwait(&s->cv, &s->mu, &ts);
	return !s->cancel;
}

static void *
sampler_thread(void *arg)
{
	struct sampler *s = arg;

	pthread_mutex_lock(&s->mu);
	while (!s->have_window && !s->cancel)
		pthread_cond_wait(&s->cv, &s->mu);
	if (wait_until(s, s->t_start)) {
		s->err = sample(s, 0);
		if (s->err == 0 && wait_until(s, s->t_end)) {
			s->err = sample(s, 1);
			s->ok = s->err == 0;
		}
	}
	s->done = true;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/* A client thread past the window's end: whether the end read was made (on_window_end). */
static bool
on_window_end(void *arg, bool wait)
{
	struct sampler *s = arg;
	bool done;

	pthread_mutex_lock(&s->mu);
	while (wait && s->have_window && !s->done && !s->cancel)
		pthread_cond_wait(&s->cv, &s->mu);
	done = !s->have_window || s->done || s->cancel;
	pthread_mutex_unlock(&s->mu);
	return done;
}

static void
on_window(void *arg, uint64_t t_start, uint64_t t_end)
{
	struct sampler *s = arg;

	pthread_mutex_lock(&s->mu);
	s->t_start = t_start;
	s->t_end = t_end;
	s->have_window = true;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

static int
sampler_start(struct sampler *s)
{
	pthread_condattr_t ca;
	int r;

	pthread_mutex_init(&s->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&s->cv, &ca);
	pthread_condattr_destroy(&ca);
	r = -pthread_create(&s->tid, NULL, sampler_thread, s);
	if (r < 0) {
		pthread_cond_destroy(&s->cv);
		pthread_mutex_destroy(&s->mu);
	}
	return r;
}

/* After the client returned: a window that did not end yet is cancelled (a failed run); one
 * that ended gets its last sample now if the sampler has not woken yet. */
static void
sampler_stop(struct sampler *s)
{
	pthread_mutex_lock(&s->mu);
	if (!s->have_window || bench_now_ns() < s->t_end)
		s->cancel = true;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->tid, NULL);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
}

/* The CPUs the client threads are pinned to (distinct), or their number unpinned. */
static unsigned
client_cores(const struct bench_cfg *c)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	struct keel_cpuset seen;
	unsigned n = 0;

	if (!c->pin)
		return c->threads < (unsigned)ncpu ? c->threads : (unsigned)ncpu;
	memset(&seen, 0, sizeof(seen));
	for (unsigned i = 0; i < c->threads; i++) {
		int cpu = bench_cpu_for(c, c->client_cpu0 + i);
		if (!keel_cpuset_has(&seen, (unsigned)cpu)) {
			keel_cpuset_add(&seen, (unsigned)cpu);
			n++;
		}
	}
	return n;
}

/* The client threads' CPUs into *@set and their count into *@n, for their /proc/stat busy
 * time: none (0) when not pinning, or when one of them is a server CPU (an in-process
 * server's, or --server-cpus), whose busy time would be the server's too. */
static void
client_cpuset(const struct opts *o, const struct bench_cfg *c, struct keel_cpuset *set, unsigned *n)
{
	uint64_t b, t;

	memset(set, 0, sizeof(*set));
	*n = 0;
	if (!c->pin)
		return;
	for (unsigned i = 0; i < c->threads; i++) {
		unsigned cpu = (unsigned)bench_cpu_for(c, c->client_cpu0 + i);

		bool shared = o->has_server_cpus && keel_cpuset_has(&o->server_cpus, cpu);

		if (!o->has_port && c->map_given)
			shared |= keel_cpuset_has(&c->map_cpus, cpu);
		for (unsigned j = 0; !o->has_port && !c->map_given && j < c->shards; j++)
			shared |= cpu == (unsigned)bench_cpu_for(c, j);
		if (shared) {
			*n = 0;
			return;
		}
		if (!keel_cpuset_has(set, cpu)) {
			keel_cpuset_add(set, cpu);
			(*n)++;
		}
	}
	if (proc_stat_ticks(set, *n, &b, &t) < 0)
		*n = 0; /* a CPU without a row: the flag goes by the client's clocks alone */
}

/* Pin the calling thread to the client threads' CPUs (nothing when not pinning). */
static int
pin_to_client_cpus(const struct bench_cfg *c)
{
	cpu_set_t set;

	if (!c->pin)
		return 0;
	CPU_ZERO(&set);
	for (unsigned i = 0; i < c->threads; i++)
		CPU_SET(bench_cpu_for(c, c->client_cpu0 + i), &set);
	return -pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* ---- reports ---- */

static void
json_num(const char *key, double v, bool valid, const char *fmt, bool last)
{
	printf("  \"%s\": ", key);
	if (valid)
		printf(fmt, v);
	else
		printf("null");
	printf("%s\n", last ? "" : ",");
}

static void
json_u64(const char *key, uint64_t v)
{
	printf("  \"%s\": %llu,\n", key, (unsigned long long)v);
}

/* The servers' sleep and poll settings: keel's runtime options, the epoll server's. An
 * external server's (--port) are its own, unknown here: only the client's are given then
 * (a keel client's polling is its runtime's idle_poll_us). */
static void
json_policy(const struct opts *o)
{
	/* keel's fields only where a keel runtime ran: an epoll run printed keel-bench's
	 * defaults (or options nothing used) as if they were the run's. */
	if (!o->has_port || o->serve) {
		if (o->keel_here)
			json_u64("idle_poll_us", o->rt.idle_poll_us);
		json_u64("busy_poll_us", o->cfg.busy_poll_us);
		if (o->keel_here)
			json_u64("wait_coalesce_us", o->rt.wait_coalesce_us);
		json_u64("gather_us", o->cfg.gather_us);
	} else if (client_of(o) == &bench_backend_keel) {
		json_u64("client_idle_poll_us", o->rt.idle_poll_us);
	}
	json_u64("client_poll_us", o->cfg.client_poll_us);
}

struct window_cpu {
	bool valid;
	double late_ms, wall_s, server_util, client_util, server_ns_per_msg, client_ns_per_msg;
	bool late;       /* late_ms over 2 % of the window, 10 ms at least */
	bool cpus_valid; /* --server-cpus: their /proc/stat busy time */
	double cpus_util, cpus_ns_per_msg;
	unsigned client_cores;
	double client_thread_max; /* the busiest client thread's share of a core (0: unknown) */
	bool client_cpus_valid;   /* the client's CPUs' /proc/stat busy time was read */
	double client_cpus_util;  /* ... in cores: the client's threads and whatever else ran
				   * there (softirqs run off the client's clock, on veth) */
	bool client_bound;
	char from[64];
};

static void
report(const struct opts *o, const struct bench_result *r, const struct bench_server_stats *ss,
       bool have_server, const struct window_cpu *w, uint64_t errors, const char *error)
{
	const struct bench_cfg *c = &o->cfg;
	const struct bench_backend *cli = client_of(o);
	double secs = (double)r->window_ns / 1e9;
	double mps = (double)r->msgs / secs;
	double gbps = (double)r->msgs * c->size * 8.0 / secs / 1e9;
	bool lat = c->mode != BENCH_STREAM && r->lat.count > 0;
	bool per_msg = have_server && r->msgs_all > 0;
	double sys = per_msg ? (double)ss->syscalls / (double)r->msgs_all : 0;
	double p[5] = { bench_hist_pct(&r->lat, 50) / 1e3, bench_hist_pct(&r->lat, 90) / 1e3,
			bench_hist_pct(&r->lat, 99) / 1e3, bench_hist_pct(&r->lat, 99.9) / 1e3,
			r->lat.max_ns / 1e3 };
	uint32_t inflight =
		c->mode == BENCH_PINGPONG || c->mode == BENCH_CONNECTIONS ? 1 : c->inflight;
	const char *server = o->has_port ? "external" : o->be->name;
	const char *client = c->mode == BENCH_UDP ? "sockets" : cli->name;

	if (o->json) {
		printf("{\n  \"mode\": \"%s\",\n  \"backend\": \"%s\",\n", mode_names[c->mode],
		       o->be->name);
		printf("  \"server\": \"%s\",\n  \"client\": \"%s\",\n", server, client);
		printf("  \"size\": %u,\n  \"inflight\": %u,\n  \"conns\": %u,\n", c->size,
		       inflight, c->conns);
		printf("  \"threads\": %u,\n  \"shards\": %u,\n", c->threads, c->shards);
		json_policy(o);
		printf("  \"seconds\": %.3f,\n  \"warmup\": %.3f,\n", secs, o->warmup);
		printf("  \"msgs\": %llu,\n  \"bytes\": %llu,\n", (unsigned long long)r->msgs,
		       (unsigned long long)r->bytes);
		json_u64("msgs_all", r->msgs_all);
		json_u64(c->mode == BENCH_UDP ? "tx_dgrams_all" : "tx_bytes_all", r->tx_all);
		json_u64(c->mode == BENCH_UDP ? "rx_dgrams_all" : "rx_bytes_all", r->rx_all);
		if (c->mode == BENCH_UDP) {
			json_u64("lost", r->lost);
			json_u64("lost_all", r->lost_all);
			json_u64("late", r->late);
		}
		json_u64("stalled_conns", r->stalled);
		json_num("msgs_per_sec", mps, true, "%.0f", false);
		json_num("gbps", gbps, true, "%.3f", false);
		json_num("lat_p50_us", p[0], lat, "%.2f", false);
		json_num("lat_p90_us", p[1], lat, "%.2f", false);
		json_num("lat_p99_us", p[2], lat, "%.2f", false);
		json_num("lat_p999_us", p[3], lat, "%.2f", false);
		json_num("lat_max_us", p[4], lat, "%.2f", false);
		if (c->mode == BENCH_CONNECTIONS) {
			printf("  \"idle\": %u,\n  \"churn\": %u,\n  \"cycles\": %llu,\n", c->idle,
			       c->churn, (unsigned long long)r->cycles);
			json_num("conns_per_sec", (double)r->cycles / secs, true, "%.0f", false);
		}
		printf("  \"cpu_from\": \"%s\",\n", w->valid ? w->from : "");
		json_num("cpu_window_s", w->wall_s, w->valid, "%.3f", false);
		json_num("cpu_sample_late_ms", w->late_ms, w->valid, "%.3f", false);
		printf("  \"cpu_sample_late\": %s,\n",
		       w->valid ? (w->late ? "true" : "false") : "null");
		json_num("server_cpu_util", w->server_util, w->valid, "%.3f", false);
		json_num("server_cpu_ns_per_msg", w->server_ns_per_msg, w->valid && r->msgs, "%.0f",
			 false);
		json_num("server_cpus_util", w->cpus_util, w->cpus_valid, "%.3f", false);
		json_num("server_cpus_ns_per_msg", w->cpus_ns_per_msg, w->cpus_valid && r->msgs,
			 "%.0f", false);
		json_num("client_cpu_util", w->client_util, w->valid, "%.3f", false);
		/* The client's own CPU per message, and the two processes' together: on
		 * loopback the client's send runs the server socket's wake-up (io_uring's poll
		 * wake-up for keel's, epoll's callback for the other), which no server clock
		 * holds; the client being the same program for both servers, a difference in
		 * its CPU per message is the server's doing. */
		json_num("client_cpu_ns_per_msg", w->client_ns_per_msg, w->valid && r->msgs, "%.0f",
			 false);
		json_num("total_cpu_ns_per_msg", w->server_ns_per_msg + w->client_ns_per_msg,
			 w->valid && r->msgs, "%.0f", false);
		json_num("client_thread_max_util", w->client_thread_max,
			 w->valid && w->client_thread_max > 0, "%.3f", false);
		json_num("client_cpus_util", w->client_cpus_util, w->client_cpus_valid, "%.3f",
			 false);
		printf("  \"client_cores\": %u,\n", w->client_cores);
		printf("  \"client_bound\": %s,\n",
		       w->valid ? (w->client_bound ? "true" : "false") : "null");
		if (c->mode == BENCH_UDP || cli == &bench_backend_epoll) {
			json_u64("client_polls", r->polls);
			json_u64("client_sleeps", r->sleeps);
		}
		json_num("server_syscalls_per_msg", sys, per_msg, "%.3f", false);
		if (have_server) {
			printf("  \"server_syscalls_what\": \"%s\",\n", ss->syscalls_what);
			json_u64("server_bytes_in", ss->bytes_in);
			json_u64("server_bytes_out", ss->bytes_out);
			json_u64("server_dgrams_in", ss->dgrams_in);
			json_u64("server_dgrams_out", ss->dgrams_out);
			json_u64("server_sleeps", ss->sleeps);
			json_u64("server_polls", ss->polls);
			json_u64("server_gathered", ss->gathered);
			if (ss->zcrx_state) {
				printf("  \"server_zcrx\": \"%s\",\n", ss->zcrx_state);
				json_u64("server_zcrx_bytes", ss->zcrx_bytes);
				json_u64("server_zcrx_copy_bytes", ss->zcrx_copy_bytes);
				json_u64("server_zcrx_refills", ss->zcrx_refills);
				json_u64("server_zcrx_frags", ss->zcrx_frags);
			}
		}
		printf("  \"errors\": %llu", (unsigned long long)errors);
		if (error)
			printf(",\n  \"error\": \"%s\"", error);
		printf("\n}\n");
		return;
	}
	printf("%s: server %s, client %s, %u B payload, %u in flight x %u %s, %u client "
	       "threads, %.2f s (after %.2f s warm-up)\n",
	       mode_names[c->mode], server, client, c->size, inflight, c->conns,
	       c->mode == BENCH_UDP ? "sockets" : "conns", c->threads, secs, o->warmup);
	if (c->mode == BENCH_CONNECTIONS)
		printf("  %u idle connections held, %u open/close loop(s) per thread: %llu cycles, "
		       "%.0f connections/s (connect + one round trip + close)\n",
		       c->idle, c->churn, (unsigned long long)r->cycles, (double)r->cycles / secs);
	printf("%14s %12s %10s %9s %9s %9s %9s %9s\n", "msgs", "msgs/s", "Gb/s", "p50 us", "p90 us",
	       "p99 us", "p99.9 us", "max us");
	printf("%14llu %12.0f %10.3f", (unsigned long long)r->msgs, mps, gbps);
	for (int i = 0; i < 5; i++)
		if (lat)
			printf(" %9.2f", p[i]);
		else
			printf(" %9s", "-");
	printf("\n  Gb/s counts payload bits echoed back (one direction, length fields "
	       "excluded)\n");
	if (c->mode == BENCH_UDP)
		printf("  udp: %llu datagrams sent, %llu echoed (the whole run); in the window %llu "
		       "lost (no echo in 50 ms), %llu late\n",
		       (unsigned long long)r->tx_all, (unsigned long long)r->rx_all,
		       (unsigned long long)r->lost, (unsigned long long)r->late);
	if (w->valid)
		printf("CPU over the %.2f s window: server %.2f cores (%.0f ns per message, from "
		       "%s), client %.2f of %u core%s (%.0f ns per message; busiest thread "
		       "%.2f)%s\n",
		       w->wall_s, w->server_util, w->server_ns_per_msg, w->from, w->client_util,
		       w->client_cores, w->client_cores == 1 ? "" : "s", w->client_ns_per_msg,
		       w->client_thread_max,
		       w->client_bound ? ": CLIENT-BOUND (the server CPU figure is the one that "
					 "counts)"
				       : "");
	else if (o->has_port)
		printf("server CPU: not measured (give --server-pid)\n");
	if (w->cpus_valid)
		printf("server CPUs (--server-cpus, /proc/stat, softirqs included): %.2f cores busy, "
		       "%.0f ns per message\n",
		       w->cpus_util, w->cpus_ns_per_msg);
	if (w->client_cpus_valid)
		printf("client CPUs (/proc/stat, softirqs included): %.2f of %u busy\n",
		       w->client_cpus_util, w->client_cores);
	if (c->client_poll_us)
		printf("client: epoll_wait(0) for %u us before blocking: %llu polls, %llu waits "
		       "that could block\n",
		       c->client_poll_us, (unsigned long long)r->polls,
		       (unsigned long long)r->sleeps);
	if (have_server)
		printf("server (in-process, %u shard%s): %.3f syscalls per message (%s) over its "
		       "whole life, warm-up included\n",
		       c->shards, c->shards == 1 ? "" : "s", sys, ss->syscalls_what);
	if (errors)
		printf("errors: %llu\n", (unsigned long long)errors);
	if (r->stalled)
		printf("stalled: %llu %s%s got no echo in the second half of the window (the "
		       "server stopped answering, or served them grossly unfairly): the rate does "
		       "not show them\n",
		       (unsigned long long)r->stalled, c->mode == BENCH_UDP ? "flow" : "connection",
		       r->stalled == 1 ? "" : "s");
}

/*
 * Start the server. With an ephemeral port, the TCP listener picks it and UDP binds the
 * same number, which something else may hold already: try a few ports then.
 */
static int
serve_start(const struct bench_backend *be, const struct bench_cfg *c, uint16_t *port,
	    struct bench_server **srv)
{
	int rc = -EADDRINUSE;

	for (int i = 0; i < 8 && rc == -EADDRINUSE; i++) {
		rc = be->serve_start(c, port, srv);
		if (c->addr.sin_port != 0)
			break;
	}
	return rc;
}

static int
run_client(struct opts *o)
{
	struct bench_cfg *c = &o->cfg;
	const struct bench_backend *cli = client_of(o);
	struct bench_server_stats ss = { 0 };
	struct bench_server *srv = NULL;
	struct bench_result *r = calloc(1, sizeof(*r));
	struct sampler *smp = calloc(1, sizeof(*smp));
	struct window_cpu w = { 0 };
	uint64_t errors;
	uint16_t port;
	int rc, status = 0;

	if (!r || !smp) {
		free(r);
		free(smp);
		return 1;
	}
	c->seconds_ns = (uint64_t)(o->seconds * 1e9);
	c->warmup_ns = (uint64_t)(o->warmup * 1e9);
	if (!c->map_given) /* else map_place set it */
		c->client_cpu0 = o->has_port && c->cpus_given ? 0 : c->shards;
	if (o->server_pid) {
		uint64_t probe;

		rc = kill((pid_t)o->server_pid, 0) < 0 ? -errno : 0;
		if (rc == 0)
			rc = -clock_getcpuclockid((pid_t)o->server_pid, &smp->srv[0]);
		if (rc == 0)
			rc = clock_ns(smp->srv[0], &probe);
		if (rc < 0) {
			fprintf(stderr,
				"keel-bench %s: --server-pid %ld: %s (is the server "
				"running?)\n",
				o->prog, o->server_pid, strerror(-rc));
			free(r);
			free(smp);
			return 2;
		}
		smp->nsrv = 1;
		snprintf(w.from, sizeof(w.from), "pid %ld", o->server_pid);
	}
	if (o->has_server_cpus) {
		uint64_t b, t;

		smp->ncpus = cpuset_count(&o->server_cpus);
		rc = proc_stat_ticks(&o->server_cpus, smp->ncpus, &b, &t);
		if (rc < 0) {
			fprintf(stderr,
				"keel-bench %s: --server-cpus: %s (a CPU of the list that is not "
				"online?)\n",
				o->prog,
				rc == -ENOENT ? "not every CPU has a row in /proc/stat"
					      : strerror(-rc));
			free(r);
			free(smp);
			return 2;
		}
		smp->cpus = &o->server_cpus;
	}
	if (!o->has_port) {
		c->addr.sin_port = 0;
		rc = serve_start(o->be, c, &port, &srv);
		if (rc < 0) {
			fprintf(stderr, "keel-bench %s: starting the %s server: %s\n", o->prog,
				o->be->name, strerror(-rc));
			free(r);
			free(smp);
			return 1;
		}
		c->addr.sin_port = htons(port);
		smp->nsrv = o->be->server_clocks(srv, smp->srv, MAX_CLOCKS);
		smp->srv_in_process = true;
		snprintf(w.from, sizeof(w.from), "in-process server threads");
	}
	client_cpuset(o, c, &smp->ccpus, &smp->nccpus);
	/* This thread and the CPU sampler it starts keep to the client's CPUs too: unpinned,
	 * the sampler could wake on a server CPU at the window's edges and take its time. */
	rc = pin_to_client_cpus(c);
	if (rc < 0) {
		fprintf(stderr,
			"keel-bench %s: pinning the main thread to the client's CPUs: %s (a CPU "
			"of --cpuset this process may not use? or run with --no-pin)\n",
			o->prog, strerror(-rc));
		if (srv)
			o->be->serve_stop(srv, &ss);
		free(r);
		free(smp);
		return 1;
	}
	c->on_window = on_window;
	c->on_window_end = on_window_end;
	c->window_arg = smp;
	rc = sampler_start(smp);
	if (rc == 0) {
		rc = c->mode == BENCH_UDP ? bench_udp_client_run(c, r) : cli->client_run(c, r);
		sampler_stop(smp);
	} else {
		snprintf(r->why, sizeof(r->why), "starting the CPU sampler: %s", strerror(-rc));
	}
	if (smp->ok) {
		double wall = (double)(smp->wall[1] - smp->wall[0]);
		double scpu = (double)(smp->scpu[1] - smp->scpu[0]);
		double pcpu = (double)(smp->pcpu[1] - smp->pcpu[0]);
		double ccpu = smp->srv_in_process ? pcpu - scpu : pcpu;

		w.valid = wall > 0;
		w.wall_s = wall / 1e9;
		w.late_ms = sampler_late_ms(smp);
		w.server_util = wall > 0 ? scpu / wall : 0;
		w.client_util = wall > 0 ? (ccpu > 0 ? ccpu : 0) / wall : 0;
		/* The clocks were read over the window shifted by the sampler's wake-ups, which
		 * can make it longer or shorter than the window the messages were counted over:
		 * per message is the rate over the one times the length of the other. Where the
		 * sampler woke so late that the two hardly overlap, the run says so
		 * (cpu_sample_late; compare.sh refuses it). */
		w.server_ns_per_msg =
			r->msgs ? w.server_util * (double)r->window_ns / (double)r->msgs : 0;
		w.client_ns_per_msg =
			r->msgs ? w.client_util * (double)r->window_ns / (double)r->msgs : 0;
		/* 2 % of the window, 10 ms at least: the figures are then off by at most that
		 * (the interval's tail past the window is idle); on the 2-CPU machines the
		 * latest edge of a 308-run matrix was 4 ms of a 1 s window, and the tests'
		 * windows are 0.3-0.5 s. */
		w.late = w.late_ms * 1e6 > fmax((double)r->window_ns / 50, 10e6);
		if (w.late)
			fprintf(stderr,
				"keel-bench %s: the CPU sampler read its clocks %.1f ms after "
				"an edge of the window: its CPU figures are over a shifted "
				"interval (a loaded machine)\n",
				o->prog, w.late_ms);
		w.client_cores = client_cores(c);
		/* Client-bound: its threads together used 0.9 of their cores, or the busiest
		 * one 0.9 of its own (several threads: one saturated beside idle ones). */
		w.client_thread_max = r->client_thread_max;
		if (smp->nccpus && smp->ctotal[1] > smp->ctotal[0]) {
			w.client_cpus_valid = true;
			w.client_cpus_util = busy_cores(smp->cbusy, smp->ctotal, smp->nccpus);
		}
		/* Or the client's CPUs were 0.9 busy: work the client's clock does not see
		 * (receive processing run in softirq context off its threads) also holds it
		 * back. */
		w.client_bound = w.client_util >= 0.9 * w.client_cores ||
				 w.client_thread_max >= 0.9 ||
				 (w.client_cpus_valid && w.client_cpus_util >= 0.9 * smp->nccpus);
		if (!smp->nsrv) { /* external server, no --server-pid */
			w.valid = false;
		}
		if (smp->cpus && smp->total[1] > smp->total[0]) {
			w.cpus_valid = wall > 0;
			w.cpus_util = busy_cores(smp->busy, smp->total, smp->ncpus);
			w.cpus_ns_per_msg =
				r->msgs ? w.cpus_util * (double)r->window_ns / (double)r->msgs : 0;
		}
	}
	w.client_cores = client_cores(c);
	if (srv) {
		int s = o->be->serve_stop(srv, &ss);
		if (s < 0 && rc == 0) {
			rc = s;
			snprintf(r->why, sizeof(r->why), "stopping the server: %s", strerror(-s));
		}
	}
	errors = r->errors + ss.errors;
	if (rc == 0 && ss.errors)
		snprintf(r->why, sizeof(r->why), "the server counted %llu connection errors",
			 (unsigned long long)ss.errors);
	if (rc == 0 && !ss.errors && r->msgs == 0)
		snprintf(r->why, sizeof(r->why),
			 "no message came back in the window: the run measured nothing");
	if (rc < 0 || errors || r->msgs == 0) {
		if (!r->why[0])
			snprintf(r->why, sizeof(r->why), "%s", strerror(-rc));
		if (errors == 0)
			errors = 1;
		status = 1;
	}
	report(o, r, &ss, srv != NULL, &w, errors, status ? r->why : NULL);
	if (status)
		fprintf(stderr, "keel-bench %s: %s\n", o->prog, r->why);
	free(r);
	free(smp);
	return status;
}

static int
run_serve(struct opts *o)
{
	struct bench_cfg *c = &o->cfg;
	struct bench_server_stats ss;
	struct bench_server *srv;
	struct timespec ts;
	char addr[INET_ADDRSTRLEN], gather[64];
	uint16_t port;
	sigset_t set;
	double msgs;
	int rc, sig;

	/* Block the stop signals before the server threads exist, so they inherit the mask
	 * and only this thread takes them. */
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	rc = serve_start(o->be, c, &port, &srv);
	if (rc < 0) {
		fprintf(stderr, "keel-bench serve: %s server on port %u: %s\n", o->be->name,
			ntohs(c->addr.sin_port), strerror(-rc));
		return 1;
	}
	inet_ntop(AF_INET, &c->addr.sin_addr, addr, sizeof(addr));
	/* Either server's sleeps may gather arrivals first (keel: --wait-coalesce-us, epoll:
	 * --gather-us): say so, it is a policy. */
	gather[0] = '\0';
	if (o->be == &bench_backend_keel && o->rt.wait_coalesce_us) {
		/* What the runtime decided, not the option: without IORING_FEAT_MIN_TIMEOUT
		 * (Linux 6.12) keel's sleeps cannot gather (compare.sh reads this line). */
		struct keel_feature_decision dec[KEEL_FEAT__COUNT];

		if (keel_features_decide(&o->rt, dec) == 0 && !dec[KEEL_FEAT_MIN_WAIT].used)
			snprintf(gather, sizeof(gather), ", sleeps do not gather (min_wait: %s)",
				 dec[KEEL_FEAT_MIN_WAIT].reason);
		else
			snprintf(gather, sizeof(gather), ", sleeps gather up to %u us (%s)",
				 o->rt.wait_coalesce_us,
				 o->rt.wait_coalesce_fixed ? "fixed" : "adaptive");
	} else if (o->be == &bench_backend_epoll && c->gather_us)
		snprintf(gather, sizeof(gather), ", sleeps gather for %u us first (%s)",
			 c->gather_us, c->gather_fixed ? "fixed" : "adaptive");
	printf("keel-bench serve: %s echo server on %s:%u (TCP and UDP%s), %u shard%s%s, pid %ld, "
	       "%s%s\n",
	       o->be->name, addr, port,
	       o->be == &bench_backend_epoll
		       ? (c->udp_gso ? "; UDP replies: UDP_SEGMENT" : "; UDP replies: sendmmsg")
		       : "",
	       c->shards, c->shards == 1 ? "" : "s",
	       o->be == &bench_backend_keel && c->shards > 1
		       ? (c->steer == KEEL_STEER_CPU ? " (cpu steering)" : " (hash steering)")
		       : "",
	       (long)getpid(),
	       o->be == &bench_backend_keel ? (o->rt.idle_poll_us ? "idle-poll" : "blocking")
					    : (c->busy_poll_us ? "busy-poll" : "blocking"),
	       gather);
	fflush(stdout);
	if (o->seconds > 0) {
		ts.tv_sec = (time_t)o->seconds;
		ts.tv_nsec = (long)((o->seconds - (double)ts.tv_sec) * 1e9);
		do
			sig = sigtimedwait(&set, NULL, &ts);
		while (sig < 0 && errno == EINTR);
	} else {
		sigwait(&set, &sig);
	}
	rc = o->be->serve_stop(srv, &ss);
	if (rc < 0) {
		fprintf(stderr, "keel-bench serve: stopping: %s\n", strerror(-rc));
		return 1;
	}
	msgs = o->has_size ? (double)ss.bytes_in / (c->size + BENCH_HDR) : 0;
	if (o->json) {
		printf("{\n  \"mode\": \"serve\",\n  \"backend\": \"%s\",\n  \"shards\": %u,\n",
		       o->be->name, c->shards);
		json_policy(o);
		printf("  \"bytes\": %llu,\n  \"bytes_out\": %llu,\n  \"dgrams_in\": %llu,\n"
		       "  \"dgrams_out\": %llu,\n  \"accepted\": %llu,\n  \"cpu_ns\": %llu,\n"
		       "  \"syscalls\": %llu,\n  \"syscalls_what\": \"%s\",\n  \"sleeps\": %llu,\n"
		       "  \"polls\": %llu,\n  \"gathered\": %llu,\n  \"recvs\": %llu,\n"
		       "  \"sends\": %llu,\n"
		       "  \"send_iovs\": %llu,\n  \"short_sends\": %llu,\n"
		       "  \"udp_recv_calls\": %llu,\n  \"udp_send_calls\": %llu,\n",
		       (unsigned long long)ss.bytes_in, (unsigned long long)ss.bytes_out,
		       (unsigned long long)ss.dgrams_in, (unsigned long long)ss.dgrams_out,
		       (unsigned long long)ss.accepted, (unsigned long long)ss.cpu_ns,
		       (unsigned long long)ss.syscalls, ss.syscalls_what,
		       (unsigned long long)ss.sleeps, (unsigned long long)ss.polls,
		       (unsigned long long)ss.gathered, (unsigned long long)ss.recvs,
		       (unsigned long long)ss.sends, (unsigned long long)ss.send_iovs,
		       (unsigned long long)ss.short_sends, (unsigned long long)ss.udp_recv_calls,
		       (unsigned long long)ss.udp_send_calls);
		json_num("size", c->size, o->has_size, "%.0f", false);
		json_num("msgs", msgs, o->has_size, "%.0f", false);
		json_num("server_cpu_ns_per_msg", ss.cpu_ns / msgs, o->has_size && msgs > 0, "%.0f",
			 false);
		json_num("server_syscalls_per_msg", ss.syscalls / msgs, o->has_size && msgs > 0,
			 "%.3f", false);
		if (ss.zcrx_state)
			printf("  \"zcrx\": \"%s\",\n  \"zcrx_bytes\": %llu,\n  \"zcrx_copy_bytes\": "
			       "%llu,\n  \"zcrx_refills\": %llu,\n",
			       ss.zcrx_state, (unsigned long long)ss.zcrx_bytes,
			       (unsigned long long)ss.zcrx_copy_bytes,
			       (unsigned long long)ss.zcrx_refills);
		if (o->be == &bench_backend_epoll)
			printf("  \"held\": %llu,\n  \"held_bytes\": %llu,\n",
			       (unsigned long long)ss.held, (unsigned long long)ss.held_bytes);
		printf("  \"errors\": %llu\n}\n", (unsigned long long)ss.errors);
	} else {
		bool udp = ss.dgrams_in || ss.dgrams_out;

		printf("served %llu bytes on %llu connections; CPU %.1f ms; %llu syscalls (%s); "
		       "%llu errors\n",
		       (unsigned long long)ss.bytes_in, (unsigned long long)ss.accepted,
		       ss.cpu_ns / 1e6, (unsigned long long)ss.syscalls, ss.syscalls_what,
		       (unsigned long long)ss.errors);
		printf("bytes in %llu out %llu; datagrams in %llu out %llu; %llu blocking waits, "
		       "%llu busy polls, %llu gathered\n",
		       (unsigned long long)ss.bytes_in, (unsigned long long)ss.bytes_out,
		       (unsigned long long)ss.dgrams_in, (unsigned long long)ss.dgrams_out,
		       (unsigned long long)ss.sleeps, (unsigned long long)ss.polls,
		       (unsigned long long)ss.gathered);
		if (udp)
			printf("UDP: %llu datagrams in %llu receive calls (%.1f each), %llu out in "
			       "%llu sends (%.1f each)\n",
			       (unsigned long long)ss.dgrams_in,
			       (unsigned long long)ss.udp_recv_calls,
			       ss.udp_recv_calls ? (double)ss.dgrams_in / ss.udp_recv_calls : 0.0,
			       (unsigned long long)ss.dgrams_out,
			       (unsigned long long)ss.udp_send_calls,
			       ss.udp_send_calls ? (double)ss.dgrams_out / ss.udp_send_calls : 0.0);
		if (ss.io_udp_too && udp) /* keel's counts hold UDP's: no TCP-only figures */
			printf("TCP and UDP: %llu receive completions, %llu sends (%llu short)\n",
			       (unsigned long long)ss.recvs, (unsigned long long)ss.sends,
			       (unsigned long long)ss.short_sends);
		else
			printf("TCP: %llu receives (%.0f B each), %llu sends (%.0f B and %.2f "
			       "buffers each, %llu short)\n",
			       (unsigned long long)ss.recvs,
			       ss.recvs ? (double)ss.bytes_in / ss.recvs : 0.0,
			       (unsigned long long)ss.sends,
			       ss.sends ? (double)ss.bytes_out / ss.sends : 0.0,
			       ss.sends ? (double)ss.send_iovs / ss.sends : 0.0,
			       (unsigned long long)ss.short_sends);
		if (o->be == &bench_backend_epoll)
			printf("epoll backpressure: %llu sends left %llu B the socket did not take, "
			       "held uncopied in the read buffer handed to the connection, whose "
			       "reads waited until they went\n",
			       (unsigned long long)ss.held, (unsigned long long)ss.held_bytes);
		if (ss.zcrx_state) { /* keel */
			printf("keel receives: %llu without a buffer, %llu multishot re-arms, %llu "
			       "pauses at the high watermark, bulk window %llu KiB; %llu passes "
			       "merged arrivals\n",
			       (unsigned long long)ss.enobufs, (unsigned long long)ss.rearms,
			       (unsigned long long)ss.bp_pauses,
			       (unsigned long long)ss.bulk_window / 1024,
			       (unsigned long long)ss.merges);
			printf("ZCRX %s: %llu bytes zero-copy, %llu through the copy path (a "
			       "fallback, or connections without RECV_ZC), %llu refill entries\n",
			       ss.zcrx_state, (unsigned long long)ss.zcrx_bytes,
			       (unsigned long long)ss.zcrx_copy_bytes,
			       (unsigned long long)ss.zcrx_refills);
		}
		if (o->has_size && msgs > 0)
			printf("per message of %u B (+4 B length), whole life: %.0f ns CPU, %.3f "
			       "syscalls\n",
			       c->size, ss.cpu_ns / msgs, ss.syscalls / msgs);
	}
	return ss.errors ? 1 : 0;
}

/* Whether the keel server runs in this process (serve, or a client mode without --port). */
static bool
keel_server_here(const struct opts *o)
{
	return o->be == &bench_backend_keel && (o->serve || !o->has_port);
}

/* Whether a keel runtime runs in this process: the keel server (serve, or a client mode
 * without --port), or the keel client (udp's client is plain sockets). */
static bool
keel_in_process(const struct opts *o)
{
	if (keel_server_here(o))
		return true;
	return !o->serve && o->cfg.mode != BENCH_UDP && client_of(o) == &bench_backend_keel;
}

/* The runtime options keel_opts_parse took from the command line: those of @before (argv as
 * it was) that @after (argv as it left it) lacks. The options' values are taken too, and
 * do not start with "--". */
static void
rt_given(struct opts *o, char **before, int nbefore, char **after, int nafter)
{
	static const char *const server_only[] = { "--map",  "--zcrx",      "--iface",
						   "--rxqs", "--zcrx-area", "--zcrx-rq-entries" };

	for (int i = 1; i < nbefore; i++) {
		const char *a = before[i];
		size_t len = strcspn(a, "=");
		bool kept = false;

		for (int j = 1; j < nafter && !kept; j++)
			kept = after[j] == a;
		if (kept || strncmp(a, "--", 2) || len == 2)
			continue;
		for (size_t k = 0; k < sizeof(server_only) / sizeof(server_only[0]); k++)
			if (len == strlen(server_only[k]) && !strncmp(a, server_only[k], len) &&
			    !o->server_opt[0])
				snprintf(o->server_opt, sizeof(o->server_opt), "%s",
					 server_only[k]);
		if (len == strlen("--cpuset") && !strncmp(a, "--cpuset", len))
			o->rt_cpuset_argv = true;
		else if (!(len == strlen("--shards") && !strncmp(a, "--shards", len)) &&
			 !o->rt_opt[0])
			snprintf(o->rt_opt, sizeof(o->rt_opt), "%.*s", (int)len, a);
	}
}

/*
 * The runtime options with no keel runtime in the process: keel_opts_parse took them and
 * nothing used them (the JSON even gave them as the run's). keel-bench itself reads
 * --shards and --cpuset, for the epoll side's threads. And --no-pin with a CPU list, which
 * it dropped unsaid.
 */
static int
rt_check(const struct opts *o)
{
	char what[400];

	if (!o->cfg.pin && o->rt.cpuset_given)
		return bad(o,
			   o->rt_cpuset_argv ? "--no-pin and --cpuset" : "--no-pin and KEEL_CPUSET",
			   "the CPU list pins the threads, --no-pin leaves them unpinned: give one",
			   NULL);
	/* The keel client alone: it runs no server shards to place or give rx queues, and
	 * took the option unused (the JSON gave it as the run's). */
	if (o->keel_here && !keel_server_here(o) && o->server_opt[0]) {
		if (o->has_port)
			snprintf(
				what, sizeof(what),
				"an option of the keel server's shards (their CPUs, rx queues, "
				"zero-copy receive), and that server runs outside this process "
				"(--port drives it; the keel client here takes none of --map, "
				"--zcrx, --iface, --rxqs, --zcrx-area, --zcrx-rq-entries): give it "
				"to that server, or drop --port to run a keel server here");
		else
			snprintf(
				what, sizeof(what),
				"an option of the keel server's shards (their CPUs, rx queues, "
				"zero-copy receive), and the server here is the epoll one (the "
				"keel client takes none of --map, --zcrx, --iface, --rxqs, "
				"--zcrx-area, --zcrx-rq-entries): give --backend keel, or drop it");
		return bad(o, o->server_opt, what, NULL);
	}
	if (o->keel_here || !o->rt_opt[0])
		return 0;
	if (o->serve)
		snprintf(what, sizeof(what),
			 "a keel runtime option, and the epoll server runs no keel runtime (of "
			 "those it takes --shards and --cpuset; it polls with --busy-poll-us and "
			 "gathers with --gather-us): give it with --backend keel");
	else if (!o->has_port)
		snprintf(what, sizeof(what),
			 "a keel runtime option, and no keel runtime runs in this process (the "
			 "epoll server, %s client; of those options keel-bench takes --shards and "
			 "--cpuset): the epoll server polls with --busy-poll-us and gathers with "
			 "--gather-us; give --backend keel%s for a keel side",
			 o->cfg.mode == BENCH_UDP ? "udp's sockets" : "the epoll",
			 o->cfg.mode == BENCH_UDP ? "" : " or --client keel");
	else
		snprintf(what, sizeof(what),
			 "a keel runtime option, and no keel runtime runs in this process (the "
			 "server --port drives, %s client): give it to that server%s",
			 o->cfg.mode == BENCH_UDP ? "udp's sockets" : "the epoll",
			 o->cfg.mode == BENCH_UDP ? "" : ", or use --client keel");
	return bad(o, o->rt_opt, what, NULL);
}

/*
 * --map with the keel server in this process: the map places its shards (keel.c's opts_for
 * leaves the count and the CPUs to the runtime), so the run's shard count is the map's
 * unless --shards was given (the runtime refuses a different one), and the client's CPU
 * slots are the CPUs the process may use that the map leaves free, the first after the
 * map's highest CPU (wrapping); where the map takes them all, the client shares them. The
 * runtime's own checks of the map against the options beside it run here first: a map that
 * does not load, or that a --cpuset, another --shards or an --iface conflicts with, is a
 * usage error, exit 2 with one line in the runtime's words (the runtime refused it later, a
 * failed run, exit 1), and so, after those, is a map no longer this machine's (a CPU
 * offline, its interface gone: keel__topo_map_stale, the runtime's check, which it runs
 * again when it takes the map). Returns 0, or 2 (said).
 */
static int
map_place(struct opts *o)
{
	struct bench_cfg *c = &o->cfg;
	struct keel_map *m;
	cpu_set_t allowed;
	unsigned top = 0, below = 0, nfree = 0;
	char why[1024];
	int r;

	if (!o->rt.map_path || !*o->rt.map_path || o->be != &bench_backend_keel ||
	    (!o->serve && o->has_port))
		return 0;
	r = keel__topo_map_of_opts(&o->rt, false, &m, why, sizeof(why));
	if (r < 0) {
		fprintf(stderr, "keel-bench %s: %s\n", o->prog, why);
		return 2;
	}
	if (r == 0)
		return 0;
	/* A map no longer this machine's: the runtime would refuse it once started, and
	 * keel-bench exit 1 as for a failed run. */
	if (keel__topo_map_stale(&o->rt, m, why, sizeof(why)) < 0) {
		fprintf(stderr, "keel-bench %s: %s\n", o->prog, why);
		free(m);
		return 2;
	}
	if (!o->rt.shards_given)
		c->shards = m->nshards;
	memset(&c->map_cpus, 0, sizeof(c->map_cpus));
	for (unsigned i = 0; i < m->nshards; i++) {
		unsigned cpu = (unsigned)m->shards[i].cpu;

		keel_cpuset_add(&c->map_cpus, cpu);
		top = cpu > top ? cpu : top;
	}
	free(m);
	c->map_given = true;
	if (sched_getaffinity(0, sizeof(allowed), &allowed) < 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);

		CPU_ZERO(&allowed);
		for (long cpu = 0; cpu < n && cpu < CPU_SETSIZE; cpu++)
			CPU_SET(cpu, &allowed);
	}
	memset(&c->cpus, 0, sizeof(c->cpus));
	for (unsigned cpu = 0; cpu < CPU_SETSIZE && cpu < KEEL_MAX_CPUS; cpu++)
		if (CPU_ISSET(cpu, &allowed) && !keel_cpuset_has(&c->map_cpus, cpu)) {
			keel_cpuset_add(&c->cpus, cpu);
			nfree++;
			below += cpu < top;
		}
	if (!nfree) {
		for (unsigned cpu = 0; cpu < CPU_SETSIZE && cpu < KEEL_MAX_CPUS; cpu++)
			if (CPU_ISSET(cpu, &allowed))
				keel_cpuset_add(&c->cpus, cpu);
		below = 0;
	}
	c->cpus_given = true;
	c->client_cpu0 = below;
	return 0;
}

int
bench_net(int argc, char **argv)
{
	struct opts o;
	char err[512];
	int rc;

	memset(&o, 0, sizeof(o));
	o.prog = argv[0];
	o.serve = !strcmp(argv[0], "serve");
	defaults(&o, BENCH_PINGPONG);
	for (unsigned m = 0; m < NMODES; m++)
		if (!strcmp(argv[0], mode_names[m]))
			defaults(&o, (enum bench_mode)m);
	if (o.serve)
		o.seconds = 0;
	/* keel's runtime options (--idle-poll-us, --shards, --cpuset...), keel-bench's
	 * defaults first: quiet logs, 64 MiB of buffers per shard, and no polling, as the
	 * epoll server's --busy-poll-us and client's --client-poll-us default to none (the
	 * runtime's 50 us made an in-process keel run spin against an epoll run that
	 * blocked). */
	keel_opts_init(&o.rt);
	o.rt.log_level = KEEL_LOG_WARN;
	o.rt.memory = 64ull << 20;
	o.rt.idle_poll_us = 0;
	{
		/* argv before the parse, to name the options it took (rt_given) */
		char **before = malloc(sizeof(*before) * (size_t)(argc + 1));
		int n = argc;

		if (!before)
			return 1;
		memcpy(before, argv, sizeof(*before) * (size_t)argc);
		rc = keel_opts_parse(&o.rt, &argc, argv, err, sizeof(err));
		if (rc == 0)
			rt_given(&o, before, n, argv, argc);
		free(before);
	}
	if (rc < 0) {
		fprintf(stderr, "keel-bench %s: %s\n", o.prog, err);
		return 2;
	}
	if (rc == 1) {
		fputs(o.serve ? serve_usage : client_usage, stdout);
		keel_net_opts_help(stdout);
		keel_opts_help(stdout);
		fputs(rt_defaults, stdout);
		return 0;
	}
	{
		struct keel_net_config nc;
		int n = argc;

		keel_net_config_init(&nc);
		if (keel_net_opts_parse(&nc, &argc, argv, err, sizeof(err)) < 0 ||
		    keel_net_config_set(&nc) < 0) {
			fprintf(stderr, "keel-bench %s: %s\n", o.prog, err);
			return 2;
		}
		o.has_net = argc != n;
	}
	if (o.rt.shards_given)
		o.cfg.shards = o.rt.shards;
	if (o.rt.cpuset_given) {
		o.cfg.cpus = o.rt.cpuset;
		o.cfg.cpus_given = true;
	}
	o.cfg.rt = &o.rt;
	rc = parse(&o, argc, argv);
	if (rc)
		return rc;
	o.keel_here = keel_in_process(&o);
	rc = rt_check(&o);
	if (rc)
		return rc;
	rc = map_place(&o);
	if (rc)
		return rc;
	if (o.be->unavailable) {
		fprintf(stderr, "keel-bench %s: %s\n", o.prog, o.be->unavailable);
		return 2;
	}
	raise_nofile();
	return o.serve ? run_serve(&o) : run_client(&o);
}
