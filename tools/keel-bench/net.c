// SPDX-License-Identifier: MIT
/*
 * keel-bench network modes: pingpong, throughput, stream, connections (clients) and serve
 * (a byte-echo server). Options are parsed here, the backend is picked by --backend, and
 * without --port the client starts a server of the same backend in this process on an
 * ephemeral loopback port, so one command measures both sides. See docs/bench.md.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "backend.h"
#include "bench.h"

static const struct bench_backend *const backends[] = { &bench_backend_epoll, &bench_backend_keel };

static const char *const mode_names[] = { "pingpong", "throughput", "stream", "connections" };

static const char client_usage[] =
	"usage: keel-bench pingpong|throughput|stream|connections [options]\n"
	"  --backend B    keel or epoll (default keel); the in-process server uses it too\n"
	"  --port P       drive an external echo server on P (keel-echo, keel-bench serve);\n"
	"                 without it a server starts in this process on an ephemeral port\n"
	"  --addr A       the server's IPv4 address (default 127.0.0.1)\n"
	"  --size N       payload bytes per message, stream: per chunk (default 64; stream "
	"65536)\n"
	"  --inflight N   messages in flight per connection (pingpong and connections: 1;\n"
	"                 throughput default 64; stream: chunks, default 16)\n"
	"  --conns N      connections (connections mode: the held ones timed; default 1)\n"
	"  --idle M       connections mode: idle connections held open (default 100)\n"
	"  --churn N      connections mode: open/close loops per client thread (default 1)\n"
	"  --threads T    client threads (default 1)\n"
	"  --shards N     in-process server threads, one per core (default 1)\n"
	"  --seconds S    measured window (default 3)\n"
	"  --warmup S     run this long first without counting (default 0.5)\n"
	"  --no-pin       do not pin threads (default: server i on CPU i, client i on CPU "
	"shards+i)\n"
	"  --json         print JSON instead of a table\n";

static const char serve_usage[] =
	"usage: keel-bench serve [options]\n"
	"  --backend B    keel or epoll (default keel)\n"
	"  --port P       port to listen on (default 0: an ephemeral port, printed)\n"
	"  --addr A       IPv4 address to bind (default 127.0.0.1)\n"
	"  --shards N     server threads, one per core, SO_REUSEPORT (default 1)\n"
	"  --seconds S    stop after S seconds (default: at SIGINT or SIGTERM)\n"
	"  --size N       report per-message figures for framed messages of N bytes\n"
	"  --no-pin       do not pin the server threads\n"
	"  --json         print the end report as JSON\n";

struct opts {
	const char *prog;
	struct bench_cfg cfg;
	const struct bench_backend *be;
	bool json, has_port, serve, has_size;
	double seconds, warmup;
};

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
	char what[64], *end;
	unsigned long long x;

	snprintf(what, sizeof(what), "expected %u..%u", lo, hi);
	errno = 0;
	x = strtoull(v, &end, 10);
	if (!*v || *end || errno || x < lo || x > hi || *v == '-')
		return bad(o, opt, what, v);
	*out = (uint32_t)x;
	return 0;
}

static int
parse_secs(const struct opts *o, const char *opt, const char *v, double lo, double hi, double *out)
{
	char what[64], *end;
	double x;

	snprintf(what, sizeof(what), "expected seconds, %g..%g", lo, hi);
	x = strtod(v, &end);
	if (!*v || *end || !isfinite(x) || x < lo || x > hi)
		return bad(o, opt, what, v);
	*out = x;
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
			exit(0);
		} else if (!strcmp(a, "--json")) {
			o->json = true;
		} else if (!strcmp(a, "--no-pin")) {
			c->pin = false;
		} else if (OPT("--backend")) {
			if (m < 0)
				return bad(o, "--backend", "missing value (epoll or keel)", NULL);
			o->be = NULL;
			for (size_t k = 0; k < sizeof(backends) / sizeof(backends[0]); k++)
				if (!strcmp(v, backends[k]->name))
					o->be = backends[k];
			if (!o->be)
				return bad(o, "--backend", "expected epoll or keel", v);
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
		} else if (OPT("--shards")) {
			if (m < 0 || parse_u32(o, "--shards", v, 1, 256, &c->shards))
				return m < 0 ? bad(o, "--shards", "missing value", NULL) : 2;
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
	if (o->serve)
		return 0;
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
	c->pin = true;
	o->be = &bench_backend_keel;
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
report(const struct opts *o, const struct bench_result *r, const struct bench_server_stats *ss,
       bool have_server, uint64_t errors, const char *error)
{
	const struct bench_cfg *c = &o->cfg;
	double secs = (double)r->window_ns / 1e9;
	double mps = (double)r->msgs / secs;
	double gbps = (double)r->msgs * c->size * 8.0 / secs / 1e9;
	bool lat = c->mode != BENCH_STREAM && r->lat.count > 0;
	bool per_msg = have_server && r->msgs_all > 0;
	double cpu = per_msg ? (double)ss->cpu_ns / (double)r->msgs_all : 0;
	double sys = per_msg ? (double)ss->syscalls / (double)r->msgs_all : 0;
	double p[5] = { bench_hist_pct(&r->lat, 50) / 1e3, bench_hist_pct(&r->lat, 90) / 1e3,
			bench_hist_pct(&r->lat, 99) / 1e3, bench_hist_pct(&r->lat, 99.9) / 1e3,
			r->lat.max_ns / 1e3 };
	uint32_t inflight =
		c->mode == BENCH_PINGPONG || c->mode == BENCH_CONNECTIONS ? 1 : c->inflight;

	if (o->json) {
		printf("{\n  \"mode\": \"%s\",\n  \"backend\": \"%s\",\n", mode_names[c->mode],
		       o->be->name);
		printf("  \"size\": %u,\n  \"inflight\": %u,\n  \"conns\": %u,\n", c->size,
		       inflight, c->conns);
		printf("  \"threads\": %u,\n  \"shards\": %u,\n", c->threads, c->shards);
		printf("  \"seconds\": %.3f,\n  \"warmup\": %.3f,\n", secs, o->warmup);
		printf("  \"msgs\": %llu,\n  \"bytes\": %llu,\n", (unsigned long long)r->msgs,
		       (unsigned long long)r->bytes);
		printf("  \"msgs_all\": %llu,\n", (unsigned long long)r->msgs_all);
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
		json_num("server_cpu_ns_per_msg", cpu, per_msg, "%.0f", false);
		json_num("server_syscalls_per_msg", sys, per_msg, "%.3f", false);
		if (have_server)
			printf("  \"server_syscalls_what\": \"%s\",\n  \"server_bytes\": %llu,\n",
			       ss->syscalls_what, (unsigned long long)ss->bytes_in);
		printf("  \"errors\": %llu", (unsigned long long)errors);
		if (error)
			printf(",\n  \"error\": \"%s\"", error);
		printf("\n}\n");
		return;
	}
	printf("%s: backend %s, %u B payload, %u in flight x %u conns, %u client threads, "
	       "%.2f s (after %.2f s warm-up)\n",
	       mode_names[c->mode], o->be->name, c->size, inflight, c->conns, c->threads, secs,
	       o->warmup);
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
	if (have_server)
		printf("server (in-process, %u shard%s): %.0f ns CPU per message, %.3f syscalls per "
		       "message (%s), over its whole life, warm-up included\n",
		       c->shards, c->shards == 1 ? "" : "s", cpu, sys, ss->syscalls_what);
	else
		printf("server: external; it reports its own figures when it stops\n");
	if (errors)
		printf("errors: %llu\n", (unsigned long long)errors);
}

static int
run_client(struct opts *o)
{
	struct bench_cfg *c = &o->cfg;
	struct bench_server_stats ss = { 0 };
	struct bench_server *srv = NULL;
	struct bench_result *r = calloc(1, sizeof(*r));
	uint64_t errors;
	uint16_t port;
	int rc, status = 0;

	if (!r)
		return 1;
	c->seconds_ns = (uint64_t)(o->seconds * 1e9);
	c->warmup_ns = (uint64_t)(o->warmup * 1e9);
	if (!o->has_port) {
		c->addr.sin_port = 0;
		rc = o->be->serve_start(c, &port, &srv);
		if (rc < 0) {
			fprintf(stderr, "keel-bench %s: starting the %s server: %s\n", o->prog,
				o->be->name, strerror(-rc));
			free(r);
			return 1;
		}
		c->addr.sin_port = htons(port);
	}
	rc = o->be->client_run(c, r);
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
	report(o, r, &ss, srv != NULL, errors, status ? r->why : NULL);
	if (status)
		fprintf(stderr, "keel-bench %s: %s\n", o->prog, r->why);
	free(r);
	return status;
}

static int
run_serve(struct opts *o)
{
	struct bench_cfg *c = &o->cfg;
	struct bench_server_stats ss;
	struct bench_server *srv;
	struct timespec ts;
	char addr[INET_ADDRSTRLEN];
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
	rc = o->be->serve_start(c, &port, &srv);
	if (rc < 0) {
		fprintf(stderr, "keel-bench serve: %s server on port %u: %s\n", o->be->name,
			ntohs(c->addr.sin_port), strerror(-rc));
		return 1;
	}
	inet_ntop(AF_INET, &c->addr.sin_addr, addr, sizeof(addr));
	printf("keel-bench serve: %s echo server on %s:%u, %u shard%s\n", o->be->name, addr, port,
	       c->shards, c->shards == 1 ? "" : "s");
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
		printf("  \"bytes\": %llu,\n  \"accepted\": %llu,\n  \"cpu_ns\": %llu,\n"
		       "  \"syscalls\": %llu,\n  \"syscalls_what\": \"%s\",\n",
		       (unsigned long long)ss.bytes_in, (unsigned long long)ss.accepted,
		       (unsigned long long)ss.cpu_ns, (unsigned long long)ss.syscalls,
		       ss.syscalls_what);
		json_num("size", c->size, o->has_size, "%.0f", false);
		json_num("msgs", msgs, o->has_size, "%.0f", false);
		json_num("server_cpu_ns_per_msg", ss.cpu_ns / msgs, o->has_size && msgs > 0, "%.0f",
			 false);
		json_num("server_syscalls_per_msg", ss.syscalls / msgs, o->has_size && msgs > 0,
			 "%.3f", false);
		printf("  \"errors\": %llu\n}\n", (unsigned long long)ss.errors);
	} else {
		printf("served %llu bytes on %llu connections; CPU %.1f ms; %llu syscalls (%s); "
		       "%llu errors\n",
		       (unsigned long long)ss.bytes_in, (unsigned long long)ss.accepted,
		       ss.cpu_ns / 1e6, (unsigned long long)ss.syscalls, ss.syscalls_what,
		       (unsigned long long)ss.errors);
		if (o->has_size && msgs > 0)
			printf("per message of %u B (+4 B length): %.0f ns CPU, %.3f syscalls\n",
			       c->size, ss.cpu_ns / msgs, ss.syscalls / msgs);
	}
	return ss.errors ? 1 : 0;
}

int
bench_net(int argc, char **argv)
{
	struct opts o;
	int rc;

	memset(&o, 0, sizeof(o));
	o.prog = argv[0];
	o.serve = !strcmp(argv[0], "serve");
	defaults(&o, BENCH_PINGPONG);
	for (int m = 0; m < 4; m++)
		if (!strcmp(argv[0], mode_names[m]))
			defaults(&o, (enum bench_mode)m);
	if (o.serve)
		o.seconds = 0;
	rc = parse(&o, argc, argv);
	if (rc)
		return rc;
	if (o.be->unavailable) {
		fprintf(stderr, "keel-bench %s: %s\n", o.prog, o.be->unavailable);
		return 2;
	}
	raise_nofile();
	return o.serve ? run_serve(&o) : run_client(&o);
}
