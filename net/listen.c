// SPDX-License-Identifier: MIT
/*
 * Listening: one SO_REUSEPORT socket per shard, created and bound in shard order (the
 * reuseport program returns an index into the group in the order sockets joined it), a
 * classic-BPF program that maps the receiving CPU or rx queue to the owning shard, and
 * multishot accept into direct descriptors on each shard.
 *
 * Verification: each accepted connection's SO_INCOMING_CPU (and NAPI id) is read back
 * (a uring_cmd getsockopt for direct descriptors, getsockopt otherwise) and compared with
 * the accepting shard; mismatches are counted per shard.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "net_internal.h"

#ifndef SO_INCOMING_NAPI_ID
#define SO_INCOMING_NAPI_ID 56
#endif

struct lstats {
	_Atomic uint64_t accepted, cpu_mismatch, napi_mismatch, unverified, accept_errors;
	_Atomic uint64_t over_limit;
	_Atomic uint64_t steer_reads;
};

struct keel__lshard {
	struct keel_op op;
	struct keel_listener *l;
	struct net_shard *ns;
	unsigned shard;
	int fd;
	bool armed, started, stopping;
	bool verify_off;  /* the kernel refused the ring's getsockopt: no more steering reads */
	bool parked;      /* not armed: the shard's direct-descriptor table is full of its
			   * connections (keel__listeners_slot_freed arms it again) */
	bool cancel_sent; /* cancel_op is in flight: the armed multishot accept (table low) */
	unsigned errors_of_one; /* accept errors of one connection in a row (accept_cb) */
	bool multi;             /* the armed accept is a multishot one */
	struct keel_op cancel_op;
	struct keel_timer *backoff;
	uint64_t errors_logged_ns; /* failures seen, for the rate limit */
	struct keel__lshard *next;
};

struct keel_listener {
	struct keel_conn_ops ops;
	void *app;
	unsigned n;
	uint16_t port;
	enum keel_steer steer;
	bool no_addrs;
	/* Bound to one IP address (not a wildcard): every accepted connection's local
	 * address is this one, so it is copied instead of read with getsockname. */
	bool local_known;
	struct sockaddr_storage local;
	socklen_t locallen;
	int family;      /* of its sockets, and so of the connections it accepts */
	bool unix_sock;  /* AF_UNIX: one socket, shared by the shards (no reuseport) */
	char *unix_path; /* the path keel bound (created), unlinked at destroy */
	dev_t unix_dev;  /* ... and the inode it got, so only that file is unlinked */
	ino_t unix_ino;
	struct keel_listener *upath_next; /* upaths: listed while unix_path is keel's file */
	bool upath_listed;
	bool has_cfg;               /* opts.net was given: cfg is this listener's */
	struct keel_net_config cfg; /* settings of the listener and its connections */
	unsigned *queue_shard;
	unsigned nqueues;
	_Atomic unsigned started;
	bool attached; /* the steering program is in place */
	/* Without the runtime at create, the last shard to start attaches the program to
	 * parts[0]'s socket from its own thread, while shard 0, stopped, may close it from
	 * its own: the attach and that close hold this lock (late_attach, lshard_close). */
	pthread_mutex_t attach_lock;
	int *cpus;                   /* [n], filled as shards start */
	struct keel__lshard *parts;  /* [n] */
	struct lstats *stats;        /* [n] */
	struct keel__napi_tab *napi; /* queue steering: each queue's shard, by NAPI id */
	uint32_t max_conns;          /* per shard, 0: no limit (keel_listen_opts) */
};

#define STAT_INC(l, sh, f) atomic_fetch_add_explicit(&(l)->stats[sh].f, 1, memory_order_relaxed)

int
keel_steer_parse(const char *s, enum keel_steer *out)
{
	if (!strcmp(s, "cpu"))
		*out = KEEL_STEER_CPU;
	else if (!strcmp(s, "queue"))
		*out = KEEL_STEER_QUEUE;
	else if (!strcmp(s, "hash"))
		*out = KEEL_STEER_HASH;
	else
		return -EINVAL;
	return 0;
}

const char *
keel_steer_name(enum keel_steer s)
{
	return s == KEEL_STEER_CPU ? "cpu" : s == KEEL_STEER_QUEUE ? "queue" : "hash";
}

static int steer_attach(struct keel_listener *l);

/* The stat of a Unix listener's path after its bind (net_internal.h): a pointer so tests can
 * play a path removed or unreadable in between. */
int (*keel__unix_path_stat)(const char *path, struct stat *st) = stat;

/* The listeners whose Unix path keel made: a second SIGINT/SIGTERM exits at once, skipping
 * keel_listener_destroy, and left their socket files, so the next start failed with
 * EADDRINUSE until someone removed them. */
static pthread_mutex_t upaths_lock = PTHREAD_MUTEX_INITIALIZER;
static struct keel_listener *upaths;

/* Remove @l's path if it is still the socket keel made (not a file put there since). */
static void
upath_unlink(const struct keel_listener *l)
{
	struct stat st;

	if (stat(l->unix_path, &st) == 0 && st.st_dev == l->unix_dev && st.st_ino == l->unix_ino)
		unlink(l->unix_path);
}

/* keel__before_fast_exit: every listed path goes. */
static void
upaths_unlink_all(void)
{
	pthread_mutex_lock(&upaths_lock);
	for (struct keel_listener *l = upaths; l; l = l->upath_next)
		upath_unlink(l);
	pthread_mutex_unlock(&upaths_lock);
}

static void
upath_list(struct keel_listener *l)
{
	pthread_mutex_lock(&upaths_lock);
	l->upath_next = upaths;
	upaths = l;
	l->upath_listed = true;
	keel__before_fast_exit = upaths_unlink_all;
	pthread_mutex_unlock(&upaths_lock);
}

static void
upath_unlist(struct keel_listener *l)
{
	pthread_mutex_lock(&upaths_lock);
	for (struct keel_listener **pp = &upaths; *pp; pp = &(*pp)->upath_next)
		if (*pp == l) {
			*pp = l->upath_next;
			break;
		}
	l->upath_listed = false;
	pthread_mutex_unlock(&upaths_lock);
}

/* Remember @b, the first socket's bound address, when it names one IP address: then it is
 * every accepted connection's local address. A wildcard (0.0.0.0, ::) or a link-local
 * IPv6 address (whose scope an accepted socket may report differently) is read per
 * connection instead. */
static void
local_note(struct keel_listener *l, const struct sockaddr_storage *b, socklen_t bl)
{
	bool one;

	if (b->ss_family == AF_INET) {
		one = ((const struct sockaddr_in *)b)->sin_addr.s_addr != htonl(INADDR_ANY);
	} else if (b->ss_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)b)->sin6_addr;
		one = !IN6_IS_ADDR_UNSPECIFIED(a) && !IN6_IS_ADDR_LINKLOCAL(a) &&
		      !IN6_IS_ADDR_V4MAPPED(a);
	} else {
		one = false;
	}
	if (!one || bl > sizeof(l->local))
		return;
	memcpy(&l->local, b, bl);
	l->locallen = bl;
	l->local_known = true;
}

/* A Unix domain listener: reuseport groups are for IP sockets, so there is one socket;
 * each shard accepts on its own duplicate of it, and the kernel gives each connection to
 * one of the accepts waiting (no steering). A path is created by bind (an existing one
 * is EADDRINUSE: keel never removes a file it did not make) and unlinked at destroy. */
static int
unix_listen(struct keel_listener *l, const struct keel_listen_opts *o,
	    const struct sockaddr_storage *ss, socklen_t len)
{
	const struct sockaddr_un *u = (const struct sockaddr_un *)ss;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), r;
	struct stat st;

	if (fd < 0) {
		r = -errno;
		keel_log(KEEL_LOG_ERROR, NET_MOD, "socket(AF_UNIX): %s", strerror(-r));
		return r;
	}
	l->parts[0].fd = fd;
	l->unix_sock = true;
	l->attached = true; /* nothing to steer */
	if (bind(fd, (const struct sockaddr *)ss, len) < 0) {
		r = -errno;
		/* An abstract name has no file: it is free once its last socket closes. */
		keel_log(KEEL_LOG_ERROR, NET_MOD, "bind %s: %s%s", o->addr, strerror(-r),
			 r != -EADDRINUSE ? ""
			 : u->sun_path[0]
				 ? " (the name is taken; for a path left behind by a program that "
				   "ended, remove the file)"
				 : " (another socket holds the abstract name: stop the program "
				   "that listens there, or choose another name)");
		return r;
	}
	if (u->sun_path[0]) {
		l->unix_path = strdup(u->sun_path);
		if (!l->unix_path || keel__unix_path_stat(u->sun_path, &st) < 0) {
			/* The bind just made the file: without its identity the destroy would
			 * not know it as keel's and would leave it behind, so it goes now. */
			r = l->unix_path ? -errno : -ENOMEM;
			unlink(u->sun_path);
			keel_log(KEEL_LOG_ERROR, NET_MOD, "listen %s: %s%s", o->addr,
				 l->unix_path ? "stat of the bound path: " : "", strerror(-r));
			return r;
		}
		l->unix_dev = st.st_dev;
		l->unix_ino = st.st_ino;
		upath_list(l);
	}
	if (listen(fd, o->backlog ? o->backlog : 4096) < 0) {
		r = -errno;
		keel_log(KEEL_LOG_ERROR, NET_MOD, "listen %s: %s", o->addr, strerror(-r));
		return r;
	}
	for (unsigned i = 1; i < l->n; i++) {
		l->parts[i].fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		if (l->parts[i].fd < 0) {
			r = -errno;
			keel_log(KEEL_LOG_ERROR, NET_MOD, "dup of the Unix listener: %s",
				 strerror(-r));
			return r;
		}
	}
	return 0;
}

/* A listener's socket call @what that failed with @r (-errno) at @port, logged with the fix
 * a person needs (keel__sock_hint; for a bind (@bind), a port another program holds too). */
static void
sock_fail(const struct keel_listen_opts *o, unsigned port, const char *what, int r, bool bind)
{
	keel_log(KEEL_LOG_ERROR, NET_MOD, "listener on %s port %u: %s: %s%s",
		 o->addr ? o->addr : "0.0.0.0", port, what, strerror(-r),
		 bind && r == -EADDRINUSE
			 ? " (another program listens there: pick another port, or stop it)"
			 : keel__sock_hint(r, bind));
}

/* Whether another socket holds the port: a bind without SO_REUSEPORT (with SO_REUSEADDR, so
 * that connections of a server that ran here before, in TIME_WAIT, do not count) fails where
 * one listens. The listener's own sockets take SO_REUSEPORT, which lets another process of
 * the same user that sets it too share the port without an error: its connections split
 * between them by the kernel's hash. A program binding between this probe and the
 * listener's bind is not caught. Returns 0 or -errno (logged). */
static int
port_free(const struct sockaddr_storage *ss, socklen_t len, const struct keel_listen_opts *o)
{
	int one = 1, r = 0;
	int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0) {
		r = -errno;
		sock_fail(o, o->port, "socket", r, false);
		return r;
	}
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (const struct sockaddr *)ss, len) < 0) {
		r = -errno;
		sock_fail(o, o->port, "bind", r, true);
	}
	close(fd);
	return r;
}

int
keel_listener_create(const struct keel_listen_opts *o, unsigned nshards,
		     const struct keel_conn_ops *ops, void *app, struct keel_listener **out)
{
	struct sockaddr_storage ss;
	socklen_t len;
	struct keel_listener *l;
	int r, one = 1;

	if (!nshards || nshards > KEEL_MAX_SHARDS || !ops || !ops->on_data || !ops->on_close)
		return -EINVAL;
	/* Not taken modulo the count: a map naming shard 5 of 4 meant something else (the
	 * count, or the map, is wrong), and steering queue 1 to shard 1 hid it. */
	for (unsigned q = 0; o->queue_shard && q < o->nqueues; q++)
		if (o->queue_shard[q] >= nshards) {
			keel_log(KEEL_LOG_ERROR, NET_MOD,
				 "keel_listen_opts.queue_shard: rx queue %u is mapped to shard %u, "
				 "but the listener has %u shards (0 to %u): fix the map or the "
				 "listener's shard count",
				 q, o->queue_shard[q], nshards, nshards - 1);
			return -EINVAL;
		}
	/* Past it the kernel refused the program with EINVAL, said only as "Invalid argument",
	 * and its length (an unsigned short) wrapped from 32765 queues on. */
	if (o->steer == KEEL_STEER_QUEUE && o->queue_shard && o->nqueues > KEEL__STEER_QUEUES_MAX) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "keel_listen_opts.queue_shard: a map of %u rx queues is longer than the "
			 "queue-steering program can hold (at most %u queues: the kernel takes "
			 "%u instructions, 2 a queue); map at most %u, fewer queues on the NIC "
			 "(ethtool -L), or use --steer hash",
			 o->nqueues, KEEL__STEER_QUEUES_MAX, BPF_MAXINSNS, KEEL__STEER_QUEUES_MAX);
		return -EINVAL;
	}
	/* A host name is resolved here, on the thread setting up (never on a shard's loop:
	 * keel_net_resolve refuses there). */
	r = keel_net_resolve(o->addr ? o->addr : "0.0.0.0", o->port, AF_UNSPEC, &ss, &len);
	if (r < 0)
		return r;
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	pthread_mutex_init(&l->attach_lock, NULL);
	l->ops = *ops;
	l->app = app;
	l->n = nshards;
	l->steer = o->steer;
	l->family = ss.ss_family;
	l->max_conns = o->max_conns;
	l->no_addrs = o->no_addrs;
	if (o->net) {
		char why[160];

		if (keel_net_config_check(o->net, why, sizeof(why)) < 0) {
			keel_log(KEEL_LOG_ERROR, NET_MOD, "keel_listen_opts.net: %s", why);
			r = -EINVAL;
			goto err;
		}
		l->cfg = *o->net;
		l->has_cfg = true;
	} else {
		l->cfg = *keel__net_cfg();
	}
	l->cpus = calloc(nshards, sizeof(*l->cpus));
	l->parts = calloc(nshards, sizeof(*l->parts));
	l->stats = calloc(nshards, sizeof(*l->stats));
	if (l->parts) /* before any error: keel_listener_destroy closes what is >= 0 */
		for (unsigned i = 0; i < nshards; i++)
			l->parts[i].fd = -1;
	if (o->steer == KEEL_STEER_QUEUE)
		l->napi = calloc(1, sizeof(*l->napi));
	if (!l->cpus || !l->parts || !l->stats || (o->steer == KEEL_STEER_QUEUE && !l->napi)) {
		r = -ENOMEM;
		goto err;
	}
	if (o->queue_shard && o->nqueues) {
		l->queue_shard = calloc(o->nqueues, sizeof(unsigned));
		if (!l->queue_shard) {
			r = -ENOMEM;
			goto err;
		}
		memcpy(l->queue_shard, o->queue_shard, o->nqueues * sizeof(unsigned));
		l->nqueues = o->nqueues;
	}
	if (ss.ss_family == AF_UNIX) {
		r = unix_listen(l, o, &ss, len);
		if (r < 0)
			goto err;
		*out = l;
		return 0;
	}
	if (o->port) {
		r = port_free(&ss, len, o);
		if (r < 0)
			goto err;
	}
	/* Bound in shard order, none listening yet: a TCP socket joins the reuseport group
	 * when it listens, in that order, so socket i is index i of the group. */
	for (unsigned i = 0; i < nshards; i++) {
		int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			r = -errno;
			sock_fail(o, o->port, "socket", r, false);
			goto err;
		}
		l->parts[i].fd = fd;
		if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) {
			r = -errno;
			sock_fail(o, o->port, "SO_REUSEADDR", r, false);
			goto err;
		}
		/* Accepted sockets inherit TCP_NODELAY from the listener, so direct descriptors
		 * (which setsockopt cannot reach) get it too. */
		if (l->cfg.nodelay &&
		    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
			keel_log(KEEL_LOG_WARN, NET_MOD, "TCP_NODELAY: %s", strerror(errno));
		if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
			r = -errno;
			sock_fail(o, o->port, "SO_REUSEPORT", r, false);
			goto err;
		}
		if (bind(fd, (struct sockaddr *)&ss, len) < 0) {
			r = -errno;
			sock_fail(o, i ? l->port : o->port, "bind", r, true);
			goto err;
		}
		if (i == 0) {
			struct sockaddr_storage b;
			socklen_t bl = sizeof(b);
			if (getsockname(fd, (struct sockaddr *)&b, &bl) < 0) {
				r = -errno;
				keel_log(KEEL_LOG_ERROR, NET_MOD, "getsockname: %s", strerror(-r));
				goto err;
			}
			l->port = ntohs(((struct sockaddr_in *)&b)->sin_port);
			/* The other sockets join the group on the port actually bound. */
			((struct sockaddr_in *)&ss)->sin_port = htons(l->port);
			local_note(l, &b, bl);
		}
	}
	/* Attaching to the first, still unhashed socket creates the group with the program;
	 * the others join it as they listen. So the first SYN is already steered. */
	if (l->steer == KEEL_STEER_QUEUE || (l->steer == KEEL_STEER_CPU && o->rt)) {
		if (l->steer == KEEL_STEER_CPU) {
			if (keel_runtime_shard_count(o->rt) < nshards) {
				keel_log(KEEL_LOG_ERROR, NET_MOD,
					 "listener for %u shards, but keel_listen_opts.rt has %u: "
					 "give the runtime that runs it",
					 nshards, keel_runtime_shard_count(o->rt));
				r = -EINVAL;
				goto err;
			}
			for (unsigned i = 0; i < nshards; i++)
				l->cpus[i] = keel_runtime_shard_cpu(o->rt, i);
		}
		r = steer_attach(l);
		if (r < 0)
			goto err;
		l->attached = true;
	}
	for (unsigned i = 0; i < nshards; i++) {
		if (listen(l->parts[i].fd, o->backlog ? o->backlog : 4096) < 0) {
			r = -errno;
			sock_fail(o, l->port, "listen", r, false);
			goto err;
		}
	}
	*out = l;
	return 0;
err:
	keel_listener_destroy(l);
	return r;
}

/* CPU steering: the jeq/ret of each CPU, in the order of its first shard; the shards that
 * share a CPU (more shards than CPUs, an oversubscribed map) share its connections by the
 * flow's hash (SKF_AD_RXHASH, % their count), where the first of them took every one and
 * the others none. The hash is skb->hash as it stands, not computed: 0 for every SYN from a
 * NIC that gives none with RPS off, which sent them all to the first shard again; then a
 * random number (SKF_AD_RANDOM) picks. Returns the instructions written, or 0 when a CPU has
 * more shards than a jump can pass over (KEEL__STEER_CPU_GROUP_MAX). */
static unsigned
steer_cpu_keys(unsigned n, const int *cpus, struct sock_filter *f, unsigned k)
{
	for (unsigned i = 0; i < n; i++) {
		unsigned same[KEEL__STEER_CPU_GROUP_MAX], g = 0;
		bool seen = false;

		for (unsigned j = 0; j < i && !seen; j++)
			seen = cpus[j] == cpus[i];
		if (seen)
			continue;
		for (unsigned j = i; j < n; j++) {
			if (cpus[j] != cpus[i])
				continue;
			if (g == KEEL__STEER_CPU_GROUP_MAX)
				return 0;
			same[g++] = j;
		}
		if (g == 1) {
			f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K,
							      (unsigned)cpus[i], 0, 1);
			f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, i);
			continue;
		}
		/* Past the group's block when the CPU is another: ld hash, jeq 0, ld random,
		 * mod, a jeq/ret pair for each of its shards but the last, whose ret ends the
		 * block. */
		f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)cpus[i],
						      0, (uint8_t)(2 * g + 3));
		f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
						      (uint32_t)(SKF_AD_OFF + SKF_AD_RXHASH));
		f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1);
		f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
						      (uint32_t)(SKF_AD_OFF + SKF_AD_RANDOM));
		f[k++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, g);
		for (unsigned t = 0; t + 1 < g; t++) {
			f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, t, 0, 1);
			f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, same[t]);
		}
		f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, same[g - 1]);
	}
	return k;
}

/* The steering program into @f (KEEL__STEER_PROG_MAX(keys) instructions at most); its
 * length, 0 when it cannot be made (steer_cpu_keys). ld CPU or QUEUE; one jeq/ret pair
 * per key (a block per CPU that shards share); default: key % n. SKF_AD_QUEUE reads
 * skb->queue_mapping, which a driver sets to the rx queue + 1 (skb_record_rx_queue; 0:
 * none recorded, as on lo, whose one queue is 0): queue q is key q + 1, and 0 is taken as
 * queue 0. */
_Static_assert(2 * KEEL__STEER_QUEUES_MAX + 6 <= BPF_MAXINSNS &&
		       2 * (KEEL__STEER_QUEUES_MAX + 1) + 6 > BPF_MAXINSNS,
	       "the longest queue map's program is the longest the kernel takes");

unsigned
keel__steer_prog(enum keel_steer steer, unsigned n, const int *cpus, const unsigned *queue_shard,
		 unsigned nqueues, struct sock_filter *f)
{
	bool cpu = steer == KEEL_STEER_CPU;
	unsigned nkeys = cpu ? 0 : (nqueues ? nqueues : n);
	unsigned k = 0;

	f[k++] = (struct sock_filter)BPF_STMT(
		BPF_LD | BPF_W | BPF_ABS,
		(uint32_t)(SKF_AD_OFF + (cpu ? SKF_AD_CPU : SKF_AD_QUEUE)));
	if (!cpu) {
		f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 1);
		f[k++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_IMM, 1);
	} else if (!(k = steer_cpu_keys(n, cpus, f, k))) {
		return 0;
	}
	for (unsigned i = 0; i < nkeys; i++) {
		unsigned shard = queue_shard ? queue_shard[i] % n : i % n;
		f[k++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, i + 1, 0, 1);
		f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, shard);
	}
	if (!cpu)
		f[k++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_SUB | BPF_K, 1);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_ALU | BPF_MOD | BPF_K, n);
	f[k++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_A, 0);
	return k;
}

static int
steer_attach(struct keel_listener *l)
{
	struct sock_filter *f;
	struct sock_fprog prog;
	unsigned nkeys = l->steer == KEEL_STEER_CPU ? l->n : (l->nqueues ? l->nqueues : l->n);
	unsigned k;
	int r = 0;

	if (l->steer == KEEL_STEER_HASH)
		return 0;
	f = calloc(KEEL__STEER_PROG_MAX(nkeys), sizeof(*f));
	if (!f)
		return -ENOMEM;
	k = keel__steer_prog(l->steer, l->n, l->cpus, l->queue_shard, l->nqueues, f);
	if (!k) {
		free(f);
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "CPU steering: a CPU has more than %d of the listener's shards; give "
			 "the shards more CPUs, or use --steer hash",
			 KEEL__STEER_CPU_GROUP_MAX);
		return -EINVAL;
	}
	memset(&prog, 0, sizeof(prog)); /* its padding goes to the kernel too */
	prog.len = (unsigned short)k;
	prog.filter = f;
	if (setsockopt(l->parts[0].fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog, sizeof(prog)) <
	    0) {
		r = -errno;
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "attaching the %s steering program failed: %s; use --steer hash",
			 keel_steer_name(l->steer), strerror(-r));
	}
	free(f);
	return r;
}

/* Reading back where the flow arrived. */
struct verify_op {
	struct keel_op op;
	struct keel_listener *l;
	struct keel__lshard *ls;
	struct net_shard *ns;
	int optname;
	uint32_t val;
};

/* Whether a shard of @l runs on @cpu. A connection that arrived on a CPU with none goes
 * where the program's fallback sends it (key % shards), which is no mismatch: counted as
 * one, every connection of a server with fewer shards than CPUs looked misrouted. From the
 * runtime's CPUs, fixed at its create (l->cpus fills as shards start). On the shard. */
static bool
cpu_has_shard(const struct keel_listener *l, uint32_t cpu)
{
	const struct keel_runtime *rt = keel_shard_runtime(keel_this_shard());

	for (unsigned i = 0; i < l->n; i++)
		if (keel_runtime_shard_cpu(rt, i) == (int)cpu)
			return true;
	return false;
}

/* @cpu: the shard's; not read through @ls, whose network state a stop may have released
 * while the read was in flight (the read holds its own reference). */
static void
verify_check(struct keel_listener *l, struct keel__lshard *ls, int cpu, int optname, int res,
	     uint32_t val)
{
	if (res < 0) {
		STAT_INC(l, ls->shard, unverified);
		return;
	}
	if (optname == SO_INCOMING_CPU) {
		if (l->steer == KEEL_STEER_CPU && (int)val != cpu && cpu_has_shard(l, val))
			STAT_INC(l, ls->shard, cpu_mismatch);
	} else if (!val) {
		/* No NAPI id (loopback, veth, a driver without NAPI): nothing to check by. */
		STAT_INC(l, ls->shard, unverified);
	} else if (l->napi && keel__napi_note(l->napi, val, ls->shard)) {
		STAT_INC(l, ls->shard, napi_mismatch);
	}
}

bool
keel__napi_note(struct keel__napi_tab *t, uint32_t id, unsigned shard)
{
	uint64_t mine = (uint64_t)id << 32 | (shard + 1);
	unsigned h = (id * 2654435761u) % KEEL__NAPI_SLOTS;

	for (unsigned i = 0; i < KEEL__NAPI_SLOTS; i++) {
		_Atomic uint64_t *e = &t->e[(h + i) % KEEL__NAPI_SLOTS];
		uint64_t v = atomic_load_explicit(e, memory_order_relaxed);

		if (!v && atomic_compare_exchange_strong(e, &v, mine))
			return false; /* the first connection from this queue */
		if (v >> 32 == id)
			return (uint32_t)v != shard + 1;
	}
	return false;
}

static void
verify_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct verify_op *v = container_of(op, struct verify_op, op);

	/* The ring's getsockopt (SOCKET_URING_OP_GETSOCKOPT) is Linux 6.7's: before it every
	 * read fails the same way, and an SQE per accept would buy only "unverified". */
	if ((res == -EOPNOTSUPP || res == -EINVAL) && !v->ls->verify_off) {
		v->ls->verify_off = true;
		keel_log(
			KEEL_LOG_WARN, NET_MOD,
			"shard %u: reading where a connection arrived (%s) through the ring failed: "
			"%s (SOCKET_URING_OP_GETSOCKOPT needs Linux 6.7); steering is no longer "
			"checked on this shard (keel_listener_stats.unverified counts the "
			"connections); --feature direct_fd=off checks it with getsockopt",
			v->ls->shard,
			v->optname == SO_INCOMING_CPU ? "SO_INCOMING_CPU" : "SO_INCOMING_NAPI_ID",
			strerror(-res));
	}
	verify_check(v->l, v->ls, v->ns->cpu, v->optname, res, v->val);
	keel__net_unref(v->ns);
	free(v);
}

static void
verify_submit(struct keel__lshard *ls, int fd, bool direct, int optname)
{
	struct keel_listener *l = ls->l;
	struct io_uring_sqe *sqe;
	struct verify_op *v;

	if (direct && ls->verify_off) {
		STAT_INC(l, ls->shard, unverified);
		return;
	}
	if (!direct) {
		uint32_t val = 0;
		socklen_t len = sizeof(val);
		int r = getsockopt(fd, SOL_SOCKET, optname, &val, &len) < 0 ? -errno : 0;

		STAT_INC(l, ls->shard, steer_reads);
		verify_check(l, ls, ls->ns->cpu, optname, r, val);
		return;
	}
	v = calloc(1, sizeof(*v));
	sqe = v ? keel_sqe_get() : NULL;
	if (!sqe) {
		free(v);
		STAT_INC(l, ls->shard, unverified);
		return;
	}
	STAT_INC(l, ls->shard, steer_reads); /* issued: not when it could not be */
	v->op.fn = verify_cb;
	v->l = l;
	v->ls = ls;
	v->ns = ls->ns;
	v->optname = optname;
	keel__net_ref(ls->ns);
	keel__sqe_sockopt(sqe, fd, true, SOL_SOCKET, optname, &v->val, sizeof(v->val));
	sqe->flags |= IOSQE_FIXED_FILE;
	keel_sqe_bind(sqe, &v->op);
}

static void accept_arm(struct keel__lshard *ls);
static void arm_parked(struct net_shard *ns);

static void
backoff_cb(struct keel_timer *t, void *arg)
{
	struct keel__lshard *ls = arg;

	if (!ls->stopping && !ls->armed)
		accept_arm(ls);
}

static void
lshard_close(struct keel__lshard *ls)
{
	if (ls->fd >= 0) {
		/* Shard 0's socket, which a late attach may still read (late_attach). */
		bool attach_target = ls == &ls->l->parts[0] && !ls->l->attached;

		if (attach_target)
			pthread_mutex_lock(&ls->l->attach_lock);
		close(ls->fd);
		ls->fd = -1;
		if (attach_target)
			pthread_mutex_unlock(&ls->l->attach_lock);
	}
	if (ls->backoff) {
		keel_timer_destroy(ls->backoff);
		ls->backoff = NULL;
	}
	if (ls->ns) {
		struct net_shard *ns = ls->ns;
		ls->ns = NULL;
		keel__net_unref(ns);
	}
}

/* The listener's configuration, or the shard's when it was created without one. */
static const struct keel_net_config *
lcfg(const struct keel_listener *l, const struct net_shard *ns)
{
	return l->has_cfg ? &l->cfg : &ns->cfg;
}

_Atomic unsigned keel__net_fail_files_update;

int
keel__direct_clear(unsigned slot)
{
	int m1 = -1;

	if (keel__fault_take(&keel__net_fail_files_update))
		return -EIO;
	return io_uring_register_files_update(keel_shard_ring_get(), slot, &m1, 1);
}

/* Close an accepted descriptor no connection will own: a plain close, or the direct
 * descriptor's table slot cleared (a failure there leaves the slot taken: logged, and
 * counted, so that no accept is armed on the slot). */
static void
drop_accepted(struct keel__lshard *ls, int res, bool direct)
{
	int r;

	if (!direct) {
		close(res);
		return;
	}
	r = keel__direct_clear((unsigned)res);
	if (r < 0) {
		ls->ns->st.direct_stuck++;
		keel_log(KEEL_LOG_WARN, NET_MOD,
			 "shard %u: clearing direct descriptor %d of a dropped connection failed "
			 "(%s): its socket stays open and the slot taken until the shard ends",
			 ls->shard, res, strerror(-r));
	}
}

/* Slots left in the shard's direct-descriptor table (max_files) for accepted connections,
 * less the single accepts in flight (each may take one). The kernel takes a connection off
 * the backlog and then installs its direct descriptor: with no slot left (-ENFILE) it
 * closes the connection. So no accept is armed without a slot for it (the backlog keeps the
 * connections), and a multishot accept, which takes every connection queued at once, only
 * while more than ACCEPT_MULTI_ROOM slots are left; below that, one connection per accept.
 * A burst of more queued connections than that, arriving just then, can still outrun the
 * slots (the multishot cannot be told to stop in time): each one over is closed, counted in
 * accept_errors. The application's own direct descriptors (keel_file_openat with
 * KEEL_FILE_OPEN_DIRECT_DESC) share the table and are counted too (keel_file_direct_slots),
 * but core does not say when one closes: a listener parked on a table they help fill looks
 * again every accept_backoff_ns (accept_arm). An open that takes the slot an armed single
 * accept counted on still makes that accept fail with ENFILE. */
#define ACCEPT_MULTI_ROOM 256u
static uint32_t
slots_left(const struct net_shard *ns)
{
	uint32_t used;

	if (!ns->f_direct)
		return UINT32_MAX;
	used = ns->direct_conns + ns->accepts_single + keel_file_direct_slots() +
	       (uint32_t)ns->st.direct_stuck;
	return used < ns->cfg.max_files ? ns->cfg.max_files - used : 0;
}

static bool
table_full(const struct net_shard *ns)
{
	return slots_left(ns) == 0;
}

/* Room for a multishot accept, which may take every queued connection in one go. */
static bool
multi_room(const struct net_shard *ns)
{
	return slots_left(ns) > ACCEPT_MULTI_ROOM;
}

/* An accept error that belongs to the one connection it took (accept(2): the pending
 * network errors passed on, an aborted handshake, a firewall's refusal): the next
 * connection is accepted at once. Any other (descriptors, memory) waits accept_backoff_ns. */
static bool
accept_error_of_one(int res)
{
	/* Not EPERM: a security module refuses it on the listening socket, before any
	 * connection is taken, so every accept would fail at once. */
	switch (-res) {
	case ECONNABORTED:
	case EPROTO:
	case ENETDOWN:
	case ENOPROTOOPT:
	case EHOSTDOWN:
	case ENONET:
	case EHOSTUNREACH:
	case ENETUNREACH:
	case ETIMEDOUT:
		return true;
	default:
		return false;
	}
}

/* The limit an accept that found no descriptor hit, which depends on the mode: a plain
 * descriptor is the process's (EMFILE: RLIMIT_NOFILE, itself capped by fs.nr_open) or the
 * system's (ENFILE: fs.file-max, every process's open files). A direct one takes no
 * descriptor of the process: its ENFILE is the table with no free slot, which keel's count
 * (slots_left) said had one, so something keel does not count took it: the application's
 * own direct descriptors, registered on the ring outside keel_file. The struct file a
 * direct accept still makes can hit fs.file-max too. ENOMEM and ENOBUFS are the kernel's
 * memory (socket buffers, the connection's own); any other gets a line that says where to
 * look, so that no pause goes unexplained. */
const char *
keel__accept_error_hint(int res, bool direct)
{
	switch (-res) {
	case EMFILE:
		return " (the process has no descriptor left: raise ulimit -n, at most fs.nr_open)";
	case ENFILE:
		return direct ? " (the direct-descriptor table had no free slot where keel counted "
				"one: the application's own direct descriptors take slots; raise "
				"--max-files (keel_net_config.max_files), or, should the whole "
				"system be out of files, fs.file-max)"
			      : " (the system's open files reached fs.file-max: raise it with sysctl "
				"fs.file-max, or close files elsewhere)";
	case ENOMEM:
	case ENOBUFS:
		return " (the kernel had no memory for the connection: check dmesg, the memory "
		       "free, and the socket memory in use (/proc/net/sockstat) against "
		       "net.ipv4.tcp_mem and net.core.rmem_max/wmem_max)";
	default:
		/* Reached by one connection's errors only when 16 came in a row. */
		return accept_error_of_one(res)
			       ? " (16 connections in a row failed so: look at the network path "
				 "and the clients)"
			       : " (not a descriptor limit nor one connection's error: see "
				 "accept(2) for it, and the kernel log, dmesg)";
	}
}

static void
accept_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct keel__lshard *ls = container_of(op, struct keel__lshard, op);
	struct keel_listener *l = ls->l;
	struct net_shard *ns = ls->ns;
	bool direct = ns->f_direct;

	if (!(flags & IORING_CQE_F_MORE)) {
		ls->armed = false;
		if (!ls->multi && direct) {
			net_verify(ns->accepts_single > 0);
			ns->accepts_single--;
			/* A failed or dropped one leaves its slot: another parked listener's. */
			if (res < 0 || ls->stopping)
				arm_parked(ns);
		}
	}
	if (res >= 0) {
		bool over = !ls->stopping && l->max_conns && ns->st.conns_open >= l->max_conns;

		ls->errors_of_one = 0;
		if (ls->stopping || over) {
			/* Stopping, or over the limit: closed at once, before any operation or
			 * memory of a connection; the peer sees a reset or EOF. */
			if (over)
				STAT_INC(l, ls->shard, over_limit);
			drop_accepted(ls, res, direct);
		} else {
			struct keel_conn *c =
				keel__conn_new(ns, res, direct, l->family, true, &l->ops, l->app,
					       l->has_cfg ? &l->cfg : NULL);
			if (c) {
				/* Counted before anything can close it (and release its slot). */
				if (direct)
					ns->direct_conns++;
				STAT_INC(l, ls->shard, accepted);
				/* Only what the steering compares: cpu steering the incoming
				 * CPU, queue steering the NAPI id; hash steering has nothing to
				 * check. After the connection is made: the descriptor the read
				 * names is then its own, never a slot freed below. */
				if (!l->unix_sock && l->steer != KEEL_STEER_HASH)
					verify_submit(ls, res, direct,
						      l->steer == KEEL_STEER_CPU
							      ? SO_INCOMING_CPU
							      : SO_INCOMING_NAPI_ID);
				keel__conn_accepted(c, !l->no_addrs,
						    l->local_known ? &l->local : NULL, l->locallen);
				if (ls->multi && !multi_room(ns))
					keel__listeners_table_low(ns);
			} else {
				keel_log(KEEL_LOG_WARN, NET_MOD,
					 "shard %u: no memory for an accepted connection: closed",
					 ls->shard);
				drop_accepted(ls, res, direct);
			}
		}
	} else if (res != -ECANCELED) {
		/* Sixteen in a row is no longer one connection's: pause as for any other. */
		bool one = accept_error_of_one(res) && ++ls->errors_of_one < 16;

		if (!one)
			ls->errors_of_one = 0;

		/* Rate-limited: the first failure, then one in 100. */
		STAT_INC(l, ls->shard, accept_errors);
		if (ls->errors_logged_ns++ % 100 == 0) {
			keel_log(KEEL_LOG_WARN, NET_MOD, "shard %u: accept failed: %s; %s%llu ms%s",
				 ls->shard, strerror(-res),
				 one ? "that connection's error: accepting again at once ("
				     : "pausing ",
				 one ? 0ull
				     : (unsigned long long)KEEL_NS_TO_MS(
					       lcfg(l, ns)->accept_backoff_ns),
				 one ? ")" : keel__accept_error_hint(res, direct));
		}
		if (!ls->stopping && !ls->armed && !one) {
			/* A slot freed meanwhile arms it again before the back-off ends. */
			ls->parked = res == -ENFILE && direct;
			keel_timer_start(ls->backoff, lcfg(l, ns)->accept_backoff_ns, 0);
			return;
		}
	}
	if (!ls->armed) {
		if (ls->stopping)
			lshard_close(ls);
		else
			accept_arm(ls); /* an accept, or a cancel keel did not ask for */
	}
}

/* A parked listener on a table the application's direct files help fill: a connection's
 * close arms it (keel__listeners_slot_freed), but core does not say when a file's slot
 * frees (its close, or an open that failed), so it looks again after the back-off. */
static void
parked_recheck(struct keel__lshard *ls)
{
	if (ls->parked && !ls->armed && !ls->stopping && keel_file_direct_slots() &&
	    !keel_timer_pending(ls->backoff))
		keel_timer_start(ls->backoff, lcfg(ls->l, ls->ns)->accept_backoff_ns, 0);
}

static void
accept_arm(struct keel__lshard *ls)
{
	struct net_shard *ns = ls->ns;
	struct io_uring_sqe *sqe;

	if (ls->armed)
		return;
	if (table_full(ns)) {
		/* Said once until the table has room for a multishot accept again, and then at
		 * most once every 10 s with the times since: with a small table room comes and
		 * goes with every close, and a line each time flooded the log (4,961 lines in
		 * 5 s of churn with --max-files 8). */
		uint64_t now = keel_now_ns();

		if (!ns->table_full_said &&
		    (!ns->table_full_ns || now - ns->table_full_ns >= KEEL_S(10))) {
			char since[96] = "";

			if (ns->table_full_unsaid)
				snprintf(since, sizeof(since),
					 "; it filled %llu times more in the %.0f s since the last "
					 "such line",
					 (unsigned long long)ns->table_full_unsaid,
					 (double)(now - ns->table_full_ns) / 1e9);
			keel_log(
				KEEL_LOG_WARN, NET_MOD,
				"shard %u: its %u connections, %u accepts in flight, %u direct "
				"files and %llu slots that could not be cleared fill the "
				"direct-descriptor table (max_files): accepting waits, new "
				"connections queued in the listen backlog, until one closes (raise "
				"--max-files)%s",
				ls->shard, ns->direct_conns, ns->accepts_single,
				keel_file_direct_slots(), (unsigned long long)ns->st.direct_stuck,
				since);
			ns->table_full_ns = now;
			ns->table_full_unsaid = 0;
		} else if (!ns->table_full_said) {
			ns->table_full_unsaid++;
		}
		ns->table_full_said = true;
		ls->parked = true;
		parked_recheck(ls);
		return;
	}
	ls->parked = false;
	ls->multi = ns->f_ms_accept && multi_room(ns);
	/* Room again (a quarter of the table, or room for a multishot): said anew next time. */
	if (slots_left(ns) > ns->cfg.max_files / 4 || multi_room(ns))
		ns->table_full_said = false;
	sqe = keel_sqe_get();

	if (!sqe) {
		/* The ring could not submit (its error is logged): try again after the pause
		 * an accept error gets, rather than leave this shard's socket unserved. */
		keel_log(KEEL_LOG_WARN, NET_MOD,
			 "shard %u: no SQE to arm the accept; retrying in %llu ms", ls->shard,
			 (unsigned long long)KEEL_NS_TO_MS(lcfg(ls->l, ns)->accept_backoff_ns));
		keel_timer_start(ls->backoff, lcfg(ls->l, ns)->accept_backoff_ns, 0);
		return;
	}
	if (ns->f_direct) {
		if (ls->multi)
			io_uring_prep_multishot_accept_direct(sqe, ls->fd, NULL, NULL, 0);
		else {
			io_uring_prep_accept(sqe, ls->fd, NULL, NULL, 0);
			/* Not io_uring_prep_accept_direct(): liburing 2.3 stores index + 1, which
			 * turns IORING_FILE_INDEX_ALLOC (~0U) into 0, a plain accept. */
			sqe->file_index = IORING_FILE_INDEX_ALLOC;
		}
	} else {
		if (ls->multi)
			io_uring_prep_multishot_accept(sqe, ls->fd, NULL, NULL, SOCK_CLOEXEC);
		else
			io_uring_prep_accept(sqe, ls->fd, NULL, NULL, SOCK_CLOEXEC);
	}
	keel_sqe_bind(sqe, &ls->op);
	ls->armed = true;
	if (!ls->multi && ns->f_direct)
		ns->accepts_single++;
}

/* Each listener's armed accept holds a slot of the direct-descriptor table (slots_left),
 * so a shard with as many listeners as slots has none left for a connection once they are
 * all armed, and those past max_files are parked from the start: they wait, with no
 * connection open, until one of the others' connections closes, maybe for ever. Said
 * when a start brings the shard's count to max_files (the "N - 1 fewer" rule of
 * docs/net.md no longer holds there). */
static void
listeners_vs_table(const struct net_shard *ns, unsigned id)
{
	unsigned n = 0;

	if (!ns->f_direct)
		return;
	for (const struct keel__lshard *ls = ns->lshards; ls; ls = ls->next)
		n += !ls->stopping;
	if (n >= ns->cfg.max_files)
		keel_log(KEEL_LOG_WARN, NET_MOD,
			 "shard %u: %u listeners on a direct-descriptor table of %u slots "
			 "(max_files): each listener's armed accept holds a slot, so the table "
			 "is full with no connection open: a listener that accepts one waits for "
			 "a close before it accepts again, and those past the %u-th may wait for "
			 "ever; raise --max-files (keel_net_config.max_files) well above the "
			 "listener count",
			 id, n, ns->cfg.max_files, ns->cfg.max_files);
}

/* The attach of the last shard to start, on its thread. Shard 0 may have stopped already
 * (another shard's start runs before that shard sees the stop) and closed its socket, the
 * one the program goes on: the attach read -1 (EBADF, said as "use --steer hash"), or a
 * number since reused by another file. Under the lock that close takes: a socket closed
 * is a listener stopping, with nothing left to steer, so the attach is skipped; one not
 * yet closed stays open until the attach is done. */
static int
late_attach(struct keel_listener *l)
{
	int r = 0;

	pthread_mutex_lock(&l->attach_lock);
	if (l->parts[0].fd >= 0)
		r = steer_attach(l);
	pthread_mutex_unlock(&l->attach_lock);
	return r;
}

int
keel_listener_start(struct keel_listener *l)
{
	struct keel_shard *sh = keel_this_shard();
	struct keel__lshard *ls;
	struct net_shard *ns;
	unsigned id, count;
	int r;

	if (!sh)
		return -EPERM;
	id = keel_shard_id(sh);
	if (id >= l->n || l->parts[id].started)
		return -EINVAL;
	/* Each shard's socket listens from the create: one for a shard the runtime lacks
	 * takes its share of the connections into a backlog nothing accepts. */
	count = keel_runtime_shard_count(keel_shard_runtime(sh));
	if (count < l->n) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "listener on port %u for %u shards, started on a runtime of %u: the "
			 "kernel would queue connections for the missing shards that nothing "
			 "accepts; create it for %u",
			 l->port, l->n, count, count);
		return -EINVAL;
	}
	r = keel__net_shard_get_cfg(l->has_cfg ? &l->cfg : NULL, &ns);
	if (r < 0)
		return r;
	if (l->has_cfg && !keel__net_config_shard_equal(&l->cfg, &ns->cfg)) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "shard %u: the listener's configuration (keel_listen_opts.net) has other "
			 "buffer ring or file table sizes (buf_size, buf_count, max_files, udp_*, "
			 "bulk_buf_*, bulk_window) "
			 "than this shard's network state was made with; use the same ones, or "
			 "start this listener first",
			 id);
		return -EINVAL;
	}
	ls = &l->parts[id];
	r = keel_timer_create(backoff_cb, ls, &ls->backoff);
	if (r < 0)
		return r;
	ls->op.fn = accept_cb;
	ls->l = l;
	ls->ns = ns;
	ls->shard = id;
	ls->started = true;
	keel__net_ref(ns);
	ls->next = ns->lshards;
	ns->lshards = ls;
	listeners_vs_table(ns, id);
	if (!l->attached)
		l->cpus[id] = keel_shard_cpu(sh);
	/* Without the runtime at create, the last shard to start knows every CPU: it attaches
	 * the program (until then the kernel's hash places connections). */
	r = 0;
	if (atomic_fetch_add(&l->started, 1) + 1 == l->n && !l->attached)
		r = late_attach(l); /* logged; accepting all the same serves this socket */
	accept_arm(ls);
	return r;
}

static void
cancel_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct keel__lshard *ls = container_of(op, struct keel__lshard, cancel_op);

	(void)res, (void)flags;
	ls->cancel_sent = false;
}

void
keel__listeners_table_low(struct net_shard *ns)
{
	/* A multishot accept stays armed: cancelled, its last completion (-ECANCELED) arms
	 * a single one in accept_arm, or parks it with the table full. */
	for (struct keel__lshard *ls = ns->lshards; ls; ls = ls->next) {
		struct io_uring_sqe *sqe;

		if (!ls->armed || !ls->multi || multi_room(ns) || ls->cancel_sent || ls->stopping ||
		    !(sqe = keel_sqe_get()))
			continue;
		io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)&ls->op, 0);
		ls->cancel_op.fn = cancel_cb;
		keel_sqe_bind(sqe, &ls->cancel_op);
		ls->cancel_sent = true;
	}
}

/* Arm parked listeners of the shard while slots are left, one accept a slot. Each armed one
 * goes to the end of the list, so that a listener whose backlog never empties does not take
 * every freed slot from the others. */
static void
arm_parked(struct net_shard *ns)
{
	unsigned n = 0;

	for (struct keel__lshard *ls = ns->lshards; ls; ls = ls->next)
		n++;
	for (unsigned k = 0; k < n && !table_full(ns); k++) {
		struct keel__lshard **pp = &ns->lshards, *ls;

		while (*pp && !((*pp)->parked && !(*pp)->armed && !(*pp)->stopping))
			pp = &(*pp)->next;
		if (!(ls = *pp))
			break;
		accept_arm(ls);
		if (ls->parked)
			break;  /* it found no slot after all */
		*pp = ls->next; /* to the tail */
		ls->next = NULL;
		for (pp = &ns->lshards; *pp; pp = &(*pp)->next)
			;
		*pp = ls;
	}
	/* The table full (files counted in it): those still parked look again later. */
	for (struct keel__lshard *ls = ns->lshards; ls; ls = ls->next)
		parked_recheck(ls);
}

void
keel__listeners_slot_freed(struct net_shard *ns)
{
	net_verify(ns->direct_conns > 0);
	ns->direct_conns--;
	arm_parked(ns);
}

void
keel__listeners_stop(struct net_shard *ns, bool cancel)
{
	for (struct keel__lshard *ls = ns->lshards; ls; ls = ls->next) {
		struct io_uring_sqe *sqe;

		ls->stopping = true;
		if (ls->backoff)
			keel_timer_stop(ls->backoff);
		/* Armed: keel cancels it right after the stop hooks, or, while the stop's
		 * flush holds that cancel, here; the callback closes. Without an SQE it waits
		 * for the stop's cancel, what it accepts meanwhile closed at once. */
		if (!ls->armed)
			lshard_close(ls);
		else if (cancel && !ls->cancel_sent && (sqe = keel_sqe_get())) {
			io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)&ls->op, 0);
			ls->cancel_op.fn = cancel_cb;
			keel_sqe_bind(sqe, &ls->cancel_op);
			ls->cancel_sent = true;
		}
	}
}

void
keel_listener_destroy(struct keel_listener *l)
{
	if (!l)
		return;
	if (l->parts)
		for (unsigned i = 0; i < l->n; i++)
			if (l->parts[i].fd >= 0)
				close(l->parts[i].fd);
	if (l->unix_path) {
		if (l->upath_listed)
			upath_unlist(l);
		/* Only the socket keel made: not a file someone put there since. */
		upath_unlink(l);
		free(l->unix_path);
	}
	free(l->parts);
	free(l->cpus);
	free(l->stats);
	free(l->napi);
	free(l->queue_shard);
	pthread_mutex_destroy(&l->attach_lock);
	free(l);
}

uint16_t
keel_listener_port(const struct keel_listener *l)
{
	return l->port;
}

void *
keel_listener_app(const struct keel_listener *l)
{
	return l->app;
}

int
keel_listener_stats(const struct keel_listener *l, unsigned shard, struct keel_listener_stats *out)
{
	if (shard >= l->n)
		return -EINVAL;
	out->accepted = atomic_load(&l->stats[shard].accepted);
	out->cpu_mismatch = atomic_load(&l->stats[shard].cpu_mismatch);
	out->napi_mismatch = atomic_load(&l->stats[shard].napi_mismatch);
	out->unverified = atomic_load(&l->stats[shard].unverified);
	out->accept_errors = atomic_load(&l->stats[shard].accept_errors);
	out->over_limit = atomic_load(&l->stats[shard].over_limit);
	out->steer_reads = atomic_load(&l->stats[shard].steer_reads);
	return 0;
}
