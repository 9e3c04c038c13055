// SPDX-License-Identifier: MIT
/*
 * keel-echo: every byte received is sent back, using the received slices themselves as
 * the send buffers (no copy in the application).
 */
#include <errno.h>
#include <keel/jemalloc.h>
#include <keel/keel.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"

static const char usage[] =
	"usage: keel-echo --port P [--addr A] [--udp] [--steer cpu|queue|hash] [--forward]\n"
	"                 [--max-conns N] [--caps] [network options] [runtime options]\n"
	"Echo TCP (or UDP) on every shard; SIGINT/SIGTERM stop it.\n"
	"--forward: TCP, length-prefixed frames (a 32-bit big-endian length, then the bytes, as\n"
	"           keel-bench sends them); each frame goes to the next shard and back, without\n"
	"           copying, before it is echoed (docs/net.md). Frames held away pin receive\n"
	"           buffers: size the ring (--buf-count, --buf-size) for the bytes in flight.\n"
	"--max-conns N: connections per shard; those beyond are accepted and closed at once\n"
	"           (counted as over_limit; default 0, no limit)\n"
	"--caps: print what the kernel and liburing support, and exit\n";

struct app {
	const char *addr;
	long port;
	bool udp;
	bool forward;
	struct keel_listener *l;
	const char *steer;          /* the steering's name, for the listening line */
	_Atomic unsigned started;   /* shards whose listener (or UDP endpoint) runs */
	_Atomic uint16_t udp_port;  /* --udp: the bound port (--port 0, one shard: the kernel's) */
	struct keel_net_stats *net; /* --stats: [shard] the network counters at stop */
};

/* The network counters, read on the shard as it begins to stop (before the network's own
 * stop hook, registered after this one). */
static void
net_snap(void *arg)
{
	struct app *a = arg;
	struct keel_shard *sh = keel_this_shard();

	keel_net_stats(sh, &a->net[keel_shard_id(sh)]);
}

static void
net_print(const struct app *a, unsigned shards)
{
	for (unsigned i = 0; i < shards; i++) {
		const struct keel_net_stats *n = &a->net[i];
		char iovs[48] = "";

		/* send_iovs counts TCP's buffers only: UDP's sends say their datagrams below. */
		if (!a->udp)
			snprintf(iovs, sizeof(iovs), " of %llu buffers",
				 (unsigned long long)n->send_iovs);
		fprintf(stderr,
			"shard %u net: %llu receive completions, %llu buffers, %llu ENOBUFS, %llu "
			"re-arms, %llu receive SQEs (%llu multishot), %llu sends%s, bulk ring: "
			"%llu moves to, %llu back, window %llu KiB%s\n",
			i, (unsigned long long)n->recv_cqes, (unsigned long long)n->recv_bufs,
			(unsigned long long)n->enobufs, (unsigned long long)n->rearms,
			(unsigned long long)n->recv_arms,
			(unsigned long long)n->recv_arms_multishot, (unsigned long long)n->sends,
			iovs, (unsigned long long)n->bulk_moves, (unsigned long long)n->bulk_backs,
			(unsigned long long)(n->bulk_window >> 10),
			n->bulk_failed ? " (could not be made)" : "");
		if (n->udp_drops || n->udp_truncated || n->udp_nomem || n->udp_recv_errors)
			fprintf(stderr,
				"shard %u net: UDP: datagrams lost on receipt: %llu dropped by the "
				"kernel (socket buffer full), %llu longer than --udp-buf-size, %llu "
				"for want of memory; %llu receive errors\n",
				i, (unsigned long long)n->udp_drops,
				(unsigned long long)n->udp_truncated,
				(unsigned long long)n->udp_nomem,
				(unsigned long long)n->udp_recv_errors);
		if (n->udp_send_errors)
			fprintf(stderr, "shard %u net: UDP: %llu datagrams lost to failed sends\n",
				i, (unsigned long long)n->udp_send_errors);
		if (n->udp_send_capped)
			fprintf(stderr,
				"shard %u net: UDP: %llu echoes not sent: the shard held "
				"--udp-send-max datagrams in flight\n",
				i, (unsigned long long)n->udp_send_capped);
		if (n->udp_gso_sends || n->udp_gso_fallbacks)
			fprintf(stderr,
				"shard %u net: UDP: %llu sendmsgs carried %llu datagrams (UDP_SEGMENT), "
				"%llu refused and sent one by one, %llu batch states\n",
				i, (unsigned long long)n->udp_gso_sends,
				(unsigned long long)n->udp_gso_datagrams,
				(unsigned long long)n->udp_gso_fallbacks,
				(unsigned long long)n->udp_gso_batches);
	}
}

/* The listener's counters: accepts, and whether steering put each connection where it
 * said (docs/net.md, "Steering, and how to verify it"). */
static void
listener_print(const struct keel_listener *l, unsigned shards)
{
	for (unsigned i = 0; i < shards; i++) {
		struct keel_listener_stats ls;

		if (keel_listener_stats(l, i, &ls) < 0)
			continue;
		fprintf(stderr,
			"shard %u listener: %llu accepted, %llu steering checks, %llu CPU "
			"mismatches, %llu queue mismatches, %llu unverified, %llu accept errors, "
			"%llu over max_conns\n",
			i, (unsigned long long)ls.accepted, (unsigned long long)ls.steer_reads,
			(unsigned long long)ls.cpu_mismatch, (unsigned long long)ls.napi_mismatch,
			(unsigned long long)ls.unverified, (unsigned long long)ls.accept_errors,
			(unsigned long long)ls.over_limit);
	}
}

static void
on_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		int r = keel_conn_send(c, &s[i]);

		if (r < 0) {
			/* An echo with a hole in it is no echo: the connection ends (-ENOMEM
			 * leaves it open; -EPIPE: it is ending already). */
			for (unsigned j = i; j < n; j++)
				keel_slice_put(&s[j]);
			if (r != -EPIPE)
				keel_conn_abort(c, r);
			return;
		}
	}
}

static void
on_close(struct keel_conn *c, int status)
{
}

static const struct keel_conn_ops echo_ops = {
	.on_data = on_data,
	.on_close = on_close,
};

static void
on_datagram(struct keel_udp *u, struct keel_slice *s, const struct sockaddr_storage *src)
{
	if (keel_udp_send(u, s, src) < 0)
		keel_slice_put(s);
}

static const struct keel_udp_ops udp_ops = { .on_datagram = on_datagram };

static void
on_start(void *arg)
{
	struct app *a = arg;
	int r;

	if (a->net && keel_shard_on_stop(net_snap, a) < 0)
		keel_log(KEEL_LOG_WARN, "echo", "shard %u: no memory for --stats' network counters",
			 keel_shard_id(keel_this_shard()));
	if (a->udp) {
		struct keel_udp *u;
		r = keel_udp_open(a->addr, (uint16_t)a->port, &udp_ops, a, &u);
		if (r == 0)
			atomic_store(&a->udp_port, keel_udp_port(u));
	} else {
		r = keel_listener_start(a->l);
	}
	if (r < 0) {
		keel_log(KEEL_LOG_ERROR, "echo", "shard %u: %s on %s port %ld: %s",
			 keel_shard_id(keel_this_shard()),
			 a->udp ? "opening the UDP endpoint" : "starting the listener",
			 a->addr ? a->addr : "0.0.0.0", a->port, strerror(-r));
		keel_stop(r);
		return;
	}
	/* Said by the last shard to start its listener: a shard that cannot (ZCRX on a NIC
	 * that cannot do it, say) stops the program before the line, so a script that waits
	 * for it never meets a server that is about to exit. Signals are blocked on shards,
	 * so a SIGTERM right after the line stops the runtime cleanly. */
	if (atomic_fetch_add(&a->started, 1) + 1 != keel_shard_count(keel_this_shard()))
		return;
	if (a->l)
		fprintf(stderr, "keel-echo: listening on %s port %u, %u shards, steering %s%s\n",
			a->addr, keel_listener_port(a->l), keel_shard_count(keel_this_shard()),
			a->steer, a->forward ? ", forwarding frames" : "");
	else
		fprintf(stderr, "keel-echo: UDP on %s port %u, %u shards\n", a->addr,
			(unsigned)atomic_load(&a->udp_port), keel_shard_count(keel_this_shard()));
}

/* keel-echo's own options, read by keel_opts_next (as keel's: "--port 0" or "--port=0").
 * main's switch has no default: an option added here and not parsed there does not compile
 * (-Wswitch). */
enum echo_opt { E_UDP, E_FORWARD, E_CAPS, E_PORT, E_ADDR, E_STEER, E_MAX_CONNS };

static const struct keel_app_opt echo_opts[] = {
	[E_UDP] = { "--udp", NULL },
	[E_FORWARD] = { "--forward", NULL },
	[E_CAPS] = { "--caps", NULL },
	[E_PORT] = { "--port", "0..65535" },
	[E_ADDR] = { "--addr", "an address, or unix:PATH" },
	[E_STEER] = { "--steer", "cpu, queue or hash" },
	[E_MAX_CONNS] = { "--max-conns", "a count, 0 for no limit" },
};

static void
die(const char *msg, const char *opt)
{
	fprintf(stderr, "keel-echo: %s%s\n%s", msg, opt ? opt : "", usage);
	exit(2);
}

int
main(int argc, char **argv)
{
	struct keel_opts o;
	struct keel_net_config nc;
	struct keel_listen_opts lo;
	struct keel_runtime *rt;
	struct app a = { .addr = "0.0.0.0", .port = -1 };
	bool caps = false, steer_given = false;
	int r;

#ifndef KEEL_ECHO_MALLOC_LIBC
	/* keel's own server opts in to jemalloc arenas per shard (docs/embedding.md);
	 * keel-echo-libc, built without this, is what an embedder gets by default. */
	keel_jemalloc_enable();
#endif
	keel_opts_init(&o);
	keel_net_config_init(&nc);
	keel_net_opts_parse_or_exit(&o, &nc, &argc, argv, usage);
	memset(&lo, 0, sizeof(lo));
	for (int i = 1;;) { /* keel_opts_next: as keel's options are written */
		const char *v;
		char *end, err[256];

		r = keel_opts_next(argc, argv, &i, echo_opts,
				   sizeof(echo_opts) / sizeof(echo_opts[0]), &v, err, sizeof(err));
		if (r == -ENOENT) { /* the options' end: keel-echo takes no argument */
			if (i < argc)
				die("unexpected argument ", argv[i]);
			break;
		}
		if (r < 0)
			die(err, NULL);
		switch ((enum echo_opt)r) {
		case E_UDP:
			a.udp = !strcmp(v, "on");
			break;
		case E_FORWARD:
			a.forward = !strcmp(v, "on");
			break;
		case E_CAPS:
			caps = !strcmp(v, "on");
			break;
		case E_PORT:
			a.port = strtol(v, &end, 10);
			if (*v < '0' || *v > '9' || *end || a.port < 0 || a.port > 65535)
				die("--port expects 0..65535, got ", v);
			break;
		case E_ADDR:
			a.addr = v;
			break;
		case E_STEER:
			if (keel_steer_parse(v, &lo.steer) < 0)
				die("--steer expects cpu, queue or hash, got ", v);
			steer_given = true;
			break;
		case E_MAX_CONNS: {
			long m = strtol(v, &end, 10);
			if (*v < '0' || *v > '9' || *end || m < 0 || m > (1L << 24))
				die("--max-conns expects a count from 0 (no limit) to 16777216, got ",
				    v);
			lo.max_conns = (uint32_t)m;
			break;
		}
		}
	}
	if (caps) {
		keel_caps_print(&o, stdout);
		return 0;
	}
	if (a.port < 0)
		die("missing ", "--port");
	if (a.forward && a.udp)
		die("--forward frames TCP streams: drop --udp or --forward", NULL);
	/* They shape a TCP listener's accepts: with --udp they were taken and ignored. */
	if (a.udp && (steer_given || lo.max_conns))
		die(steer_given ? "--steer" : "--max-conns",
		    " applies to TCP connections: drop it with --udp");
	if (keel_net_config_set(&nc) < 0) /* keel_net_opts_parse checked it */
		die("keel_net_config_set refused the network options", NULL);
	r = keel_runtime_create(&o, &rt);
	if (r < 0)
		return 1;
	/* Each shard binds the UDP port with SO_REUSEPORT: port 0 would give each its own. */
	if (a.udp && a.port == 0 && keel_runtime_shard_count(rt) > 1) {
		keel_runtime_destroy(rt);
		die("--udp with --port 0 binds a different port on every shard: give a port, or "
		    "--shards 1",
		    NULL);
	}
	if (!a.udp) {
		lo.addr = a.addr;
		lo.port = (uint16_t)a.port;
		lo.rt = rt;
		lo.no_addrs = true; /* an echo never asks for a connection's addresses */
		/* Queue steering follows the --map file: rx queue q goes to the shard that owns
		 * it there (without a map, queue q goes to shard q % shards). */
		if (lo.steer == KEEL_STEER_QUEUE && o.map_path && *o.map_path) {
			static struct keel_map m;
			static unsigned qs[KEEL_MAX_SHARDS * 4];
			char err[256];
			if (keel_map_load(o.map_path, &m, err, sizeof(err)) < 0)
				die("--map: ", err);
			for (unsigned i = 0; i < m.nshards; i++)
				if (m.shards[i].rxq >= 0 &&
				    (unsigned)m.shards[i].rxq < sizeof(qs) / sizeof(qs[0])) {
					qs[m.shards[i].rxq] = i;
					if ((unsigned)m.shards[i].rxq + 1 > lo.nqueues)
						lo.nqueues = (unsigned)m.shards[i].rxq + 1;
				}
			lo.queue_shard = lo.nqueues ? qs : NULL;
		}
		r = keel_listener_create(&lo, keel_runtime_shard_count(rt),
					 a.forward ? &echo_fwd_ops : &echo_ops, &a, &a.l);
		if (r < 0) {
			/* A name that does not resolve is -ENOENT: not "No such file". */
			fprintf(stderr, "keel-echo: listening on %s port %ld: %s\n", a.addr, a.port,
				r == -ENOENT && strncmp(a.addr, "unix:", 5)
					? "the address does not resolve (give an IP address, or a "
					  "name the resolver knows)"
					: strerror(-r));
			keel_runtime_destroy(rt);
			return 1;
		}
	}
	a.steer = keel_steer_name(lo.steer);
	if (a.forward && keel_runtime_shard_count(rt) == 1)
		fprintf(stderr, "keel-echo: --forward with one shard relays every frame to that "
				"shard itself: nothing crosses shards (give --shards 2 or more)\n");
	if (o.stats) {
		a.net = calloc(keel_runtime_shard_count(rt), sizeof(*a.net));
		if (!a.net)
			die("out of memory for --stats", NULL);
	}
	r = keel_runtime_start(rt, on_start, &a);
	if (r == 0)
		r = keel_runtime_join(rt);
	/* keel_runtime_join printed the runtime's counters (--stats); the forwarding ones
	 * are the app's. */
	if (a.net && r == 0)
		net_print(&a, keel_runtime_shard_count(rt));
	if (a.net && r == 0 && a.l)
		listener_print(a.l, keel_runtime_shard_count(rt));
	if (o.stats && a.forward)
		for (unsigned i = 0; i < keel_runtime_shard_count(rt); i++) {
			struct echo_fwd_stats fs;
			echo_fwd_stats(i, &fs);
			fprintf(stderr,
				"shard %u forward: %llu frames in, %llu relayed for other shards, "
				"%llu queued for echo, %llu dropped (connection gone or failed), "
				"%llu cut "
				"short by a half-close, %llu waited "
				"for room, %llu errors; reading paused %llu times for bytes away "
				"(at most %llu away); %llu half-closes waited for frames away\n",
				i, (unsigned long long)fs.frames_in,
				(unsigned long long)fs.frames_relayed,
				(unsigned long long)fs.frames_out,
				(unsigned long long)fs.frames_dropped,
				(unsigned long long)fs.frames_cut,
				(unsigned long long)fs.frames_waited, (unsigned long long)fs.errors,
				(unsigned long long)fs.away_holds, (unsigned long long)fs.away_peak,
				(unsigned long long)fs.eofs_held);
		}
	keel_runtime_destroy(rt);
	keel_listener_destroy(a.l);
	echo_fwd_fini();
	free(a.net);
	return r < 0 ? 1 : 0;
}
