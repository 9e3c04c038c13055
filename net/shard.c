// SPDX-License-Identifier: MIT
/*
 * The shard's network state: created on first use (a listener starting, a connect, a UDP
 * bind), with the feature decisions, the sparse file table and the receive buffer ring.
 * It lives until the runtime stops and the last connection, endpoint, in-flight
 * notification and application-held receive buffer is gone (a reference count), so a
 * buffer put late still has a ring to return to.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/un.h>

#include "net_internal.h"
#include "zcrx.h"

/* One list of defaults: the initial configuration and keel_net_config_init(). */
#define NET_CONFIG_DEFAULTS                                                                        \
	{                                                                                          \
		.buf_size = 16384, .buf_count = 256,                                               \
		.zc_threshold = KEEL_NET_ZC_THRESHOLD_DEFAULT, .high_watermark = 1u << 20,         \
		.low_watermark = 256u << 10, .max_files = 4096, .accept_backoff_ns = KEEL_MS(100), \
		.close_timeout_ns = 0, .nodelay = true, .udp_buf_count = 256,                      \
		.udp_buf_size = 65536, .header_bytes = 1, .send_max = KEEL_NET_SEND_MAX_DEFAULT,   \
		.shard_send_max = KEEL_NET_SHARD_SEND_MAX_DEFAULT, .bulk_buf_size = 65536,         \
		.bulk_buf_count = 64, .bulk_window = KEEL_NET_BULK_WINDOW_DEFAULT,                 \
		.udp_gso_segs = KEEL_UDP_GSO_MAX, .udp_send_max = KEEL_NET_UDP_SEND_MAX_DEFAULT,   \
	}

static struct keel_net_config g_cfg = NET_CONFIG_DEFAULTS;

static _Thread_local struct net_shard *tl_ns;

const struct keel_net_config *
keel__net_cfg(void)
{
	return &g_cfg;
}

void
keel__net_verify_fail(const char *file, int line, const char *e)
{
	keel_log(KEEL_LOG_ERROR, NET_MOD, "%s:%d: invariant failed: %s", file, line, e);
	abort();
}

void
keel_net_config_init(struct keel_net_config *c)
{
	const struct keel_net_config d = NET_CONFIG_DEFAULTS;
	*c = d;
}

/* The bulk ring's largest window in buffers: bulk_window in whole buffers, at least one,
 * at most the ring (0: every buffer). Only with the bulk ring on (bulk_buf_size above
 * buf_size, so not 0). */
static uint32_t
bulk_wmax(const struct keel_net_config *c)
{
	uint32_t n = c->bulk_window / c->bulk_buf_size;

	if (!c->bulk_window || n >= c->bulk_buf_count)
		return c->bulk_buf_count;
	return n ? n : 1;
}

/* Two configurations that make the same buffer rings and file table: bulk_window as the
 * window it makes, so 0 and the ring's size, or two sizes with the same whole buffers,
 * are one. */
bool
keel__net_config_shard_equal(const struct keel_net_config *a, const struct keel_net_config *b)
{
	return a->buf_size == b->buf_size && a->buf_count == b->buf_count &&
	       a->max_files == b->max_files && a->udp_buf_count == b->udp_buf_count &&
	       a->udp_buf_size == b->udp_buf_size && keel__net_bulk_on(a) == keel__net_bulk_on(b) &&
	       (!keel__net_bulk_on(a) ||
		(a->bulk_buf_size == b->bulk_buf_size && a->bulk_buf_count == b->bulk_buf_count &&
		 bulk_wmax(a) == bulk_wmax(b)));
}

/* The fields keel__net_config_shard_equal compares: the shard's rings and file table. */
static void
shard_sizes_from(struct keel_net_config *dst, const struct keel_net_config *src)
{
	dst->buf_size = src->buf_size;
	dst->buf_count = src->buf_count;
	dst->max_files = src->max_files;
	dst->udp_buf_count = src->udp_buf_count;
	dst->udp_buf_size = src->udp_buf_size;
	dst->bulk_buf_size = src->bulk_buf_size;
	dst->bulk_buf_count = src->bulk_buf_count;
	dst->bulk_window = src->bulk_window;
}

/* keel_net_config_check, its reason logged under @call's name: a configuration refused
 * without a word would leave the caller on the defaults unaware. */
static int
config_check_logged(const struct keel_net_config *c, const char *call)
{
	char why[256];

	if (keel_net_config_check(c, why, sizeof(why)) == 0)
		return 0;
	keel_log(KEEL_LOG_ERROR, NET_MOD, "%s refused the configuration: %s", call, why);
	return -EINVAL;
}

int
keel_net_config_set(const struct keel_net_config *c)
{
	if (config_check_logged(c, "keel_net_config_set") < 0)
		return -EINVAL;
	g_cfg = *c;
	return 0;
}

int
keel_net_config_get(struct keel_net_config *out)
{
	if (!out)
		return -EINVAL;
	*out = tl_ns ? tl_ns->cfg : g_cfg;
	return 0;
}

static int shard_create(const struct keel_net_config *cfg, struct net_shard **out);

int
keel_net_shard_init(const struct keel_net_config *c)
{
	struct net_shard *ns;

	if (config_check_logged(c, "keel_net_shard_init") < 0)
		return -EINVAL;
	if (!keel_this_shard())
		return -EPERM;
	if (keel_shard_stopping()) /* as keel__net_shard_get_cfg: nothing new */
		return -ESHUTDOWN;
	if (tl_ns) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "shard %u: keel_net_shard_init after the shard's network state was made "
			 "(a listener started, a connect or a UDP endpoint came first): call it "
			 "first, in on_start",
			 tl_ns->id);
		return -EBUSY;
	}
	return shard_create(c, &ns);
}

/* The stop, once no connection is to be flushed: every one still open is aborted
 * (-ESHUTDOWN; one with a send in flight is reset), and the state goes with its last
 * reference. */
static void
stop_rest(struct net_shard *ns)
{
	ns->stopping = true;
	keel__conns_stop(ns);
	keel__lim_stop(ns);
	keel__udps_stop(ns);
	keel__zcrx_stop(ns);
	keel__net_unref(ns); /* the base reference */
}

/* The flush is over: the last connection gone, or the deadline passed (flush_expire). The
 * hold is released first: stop_rest may free @ns. */
static void
flush_end(struct net_shard *ns)
{
	if (!ns->flushing)
		return;
	ns->flushing = false;
	keel__stop_release(&ns->flush_hold);
	stop_rest(ns);
}

static void
flush_end_cb(struct keel__later *l)
{
	struct net_shard *ns = container_of(l, struct net_shard, flush_end_later);

	flush_end(ns);
	keel__net_unref(ns); /* the kick's */
}

void
keel__net_flush_idle(struct net_shard *ns)
{
	/* The loop runs while the stop is held: the kick cannot find it ended. */
	bool queued = keel__net_kick(ns, &ns->flush_end_later, flush_end_cb);

	net_verify(queued);
}

/* --stop-flush-ms passed from the stop's start with connections still closing (core took
 * the hold back): they are aborted now, and the stop goes on. */
static void
flush_expire(struct keel__stop_hold *h)
{
	struct net_shard *ns = container_of(h, struct net_shard, flush_hold);

	keel_log(KEEL_LOG_WARN, NET_MOD,
		 "shard %u: %llu connections still closing at the stop's deadline (%s %u): aborted "
		 "(-ESHUTDOWN; a reply still going out is cut by a reset). Their peers did not "
		 "take their replies or end their side in time; raise %s to wait longer",
		 ns->id, (unsigned long long)ns->st.conns_open, keel__stop_flush_opt(),
		 keel__stop_flush_ms(), keel__stop_flush_opt());
	flush_end(ns);
}

/* The flush's second step, a stop hook registered by on_stop: it runs after the hooks
 * registered before it (the application's, which may still queue replies), and closes
 * every connection gracefully. The closes' own timers are stopped with every other timer
 * right after the hooks: the deadline bounds them (the linger's bound too, where it
 * starts later). */
static void
flush_timers_cb(struct keel__later *l)
{
	struct net_shard *ns = container_of(l, struct net_shard, flush_timers_later);

	if (ns->flushing)
		keel__conns_flush_timers(ns);
	keel__net_unref(ns); /* the kick's */
}

static void
flush_begin(void *arg)
{
	struct net_shard *ns = arg;

	if (!ns->conns) {
		flush_end(ns);
		return;
	}
	keel__conns_flush(ns);
	/* The stop stops every timer right after its hooks, the closes' too (those begun
	 * here, and those begun before the stop, lingering or not): they are started again
	 * on the next pass. The loop runs while the stop is held: the kick cannot find it
	 * ended. */
	if (ns->conns && !keel__net_kick(ns, &ns->flush_timers_later, flush_timers_cb))
		net_verify(false);
}

static void
on_stop(void *arg)
{
	struct net_shard *ns = arg;
	int r;

	if (!keel__stop_flush_ms() || !ns->conns) {
		ns->stopping = true;
		keel__listeners_stop(ns, false);
		stop_rest(ns);
		return;
	}
	/* --stop-flush-ms: nothing new comes (the listeners stop, their accepts cancelled
	 * now, UDP endpoints end), and the connections stay open for the application's stop
	 * hooks, which run after this one; the state is not stopping yet, so that the closes'
	 * receives still get buffers. */
	keel__listeners_stop(ns, true);
	keel__udps_stop(ns);
	r = keel__stop_hold(&ns->flush_hold, flush_expire,
			    "the network's graceful closes of its connections");
	if (r == 0)
		r = keel_shard_on_stop(flush_begin, ns);
	if (r < 0) {
		keel__stop_release(&ns->flush_hold);
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "shard %u: the stop's flush (%s %u) could not begin (%s): the "
			 "connections are aborted at once, as without it",
			 ns->id, keel__stop_flush_opt(), keel__stop_flush_ms(), strerror(-r));
		ns->stopping = true;
		stop_rest(ns);
		return;
	}
	ns->flushing = true;
}

/* The shard's receive rings. One not made (UDP, bulk) is all zeros, which the pbuf calls
 * below take as an empty ring: no buffers, no references, nothing registered. */
#define NET_NRINGS 3
static void
rings(struct net_shard *ns, struct pbuf_ring *out[NET_NRINGS])
{
	out[0] = &ns->tcp;
	out[1] = &ns->udp;
	out[2] = &ns->bulk;
}

/* The rings' own references on buffers the kernel may still write (bufs_kernel). */
static uint64_t
rings_nkref(struct net_shard *ns)
{
	struct pbuf_ring *r[NET_NRINGS];
	uint64_t n = 0;

	rings(ns, r);
	for (unsigned i = 0; i < NET_NRINGS; i++)
		n += r[i]->nkref;
	return n;
}

static void
destroy(struct net_shard *ns)
{
	struct pbuf_ring *r[NET_NRINGS];

	rings(ns, r);
	for (unsigned i = 0; i < NET_NRINGS; i++)
		keel__pbuf_fini(r[i]);
	keel__udp_fini(ns);
	keel__zcrx_fini(ns);
	keel__framers_detach(ns);
	/* The file table stays: this runs while the shard stops, and the application's direct
	 * files (keel_file_openat with KEEL_FILE_OPEN_DIRECT_DESC) live in it too, which its stop
	 * hooks may still write, sync and close. Nothing registers another on this ring (no
	 * network state is made once the stop has begun); the ring's end releases it. */
	free(ns->scratch);
	if (tl_ns == ns)
		tl_ns = NULL;
	free(ns);
}

bool
keel__net_kick(struct net_shard *ns, struct keel__later *l, void (*fn)(struct keel__later *))
{
	if (l->queued)
		return true;
	l->fn = fn;
	if (keel__later(l) < 0)
		return false; /* the shard's loop has ended */
	keel__net_ref(ns);
	return true;
}

void
keel__net_unref_slow(struct net_shard *ns)
{
	net_verify(ns->refs > 0);
	if (--ns->refs == 0) {
		destroy(ns);
		return;
	}
	/* Stopped, and only the rings' own references on partly filled buffers (incremental
	 * consumption) are left: no receive is in flight, so put them. */
	if (ns->stopping && !ns->dropping && ns->refs == rings_nkref(ns)) {
		struct pbuf_ring *r[NET_NRINGS];

		ns->dropping = true;
		ns->refs++;
		rings(ns, r);
		for (unsigned i = 0; i < NET_NRINGS; i++)
			keel__pbuf_drop_krefs(r[i]);
		keel__net_unref(ns);
	}
}

struct net_shard *
keel__net_shard_cur(void)
{
	return tl_ns;
}

int
keel__net_shard_get(struct net_shard **out)
{
	return keel__net_shard_get_cfg(NULL, out);
}

/* The failure of a network state made after the kernel had taken its ZCRX registration:
 * the shard's ring keeps that interface queue until it closes (6.18 has no unregister), so
 * a second state would find the queue its own ring holds (EEXIST, and under --zcrx auto a
 * copy path that cannot read what the NIC puts in the area). Every later try on this
 * shard fails with it instead. A shard is a thread of its own: this ends with it. */
static __thread int tl_zcrx_stuck;

int
keel__net_shard_get_cfg(const struct keel_net_config *cfg, struct net_shard **out)
{
	if (!keel_this_shard())
		return -EPERM;
	/* Nothing new once the stop began: also in a stop hook that runs before the network's
	 * own (registered before the shard's first network use), and with no network state
	 * yet, whose rings and table would be made only to be torn down. */
	if (keel_shard_stopping())
		return -ESHUTDOWN;
	if (tl_ns) {
		*out = tl_ns;
		return 0;
	}
	if (tl_zcrx_stuck) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "shard %u: no network state: an earlier one failed (%s) after the kernel "
			 "had taken its ZCRX registration, which the shard's ring keeps until it "
			 "closes; stop and start the runtime again, or run with --zcrx off",
			 keel_shard_id(keel_this_shard()), strerror(-tl_zcrx_stuck));
		return tl_zcrx_stuck;
	}
	if (cfg) {
		/* A listener's configuration gives the shard its sizes only; everything else
		 * of the shard's (its connects, UDP endpoints, listeners without their own,
		 * shard_send_max) is the process default's. */
		struct keel_net_config c = g_cfg;

		shard_sizes_from(&c, cfg);
		return shard_create(&c, out);
	}
	return shard_create(&g_cfg, out);
}

/* The kernel refuses a registered file table of more slots than RLIMIT_NOFILE's soft limit
 * (EMFILE), and that limit is often 1,024 (login shells, systemd services) where the table's
 * default is 4,096. liburing then raises the soft limit by the table's size, unsaid, and
 * fails when the hard limit is below that sum (ulimit -n 1024 sets both: the start failed,
 * advising direct_fd=off). Here, below @want, the soft limit is raised to the hard one, as
 * Go's runtime does at its start, and said; a hard limit below @want is refused with the
 * fix. The last runtime's destroy puts it back (core/nofile.c). Process-wide, so under
 * core's lock (shards start together, and a destroy may put it back meanwhile). Returns 0
 * or -EMFILE. */
static int
nofile_fit(unsigned id, unsigned want)
{
	struct rlimit rl;
	int r = 0;

	keel__nofile_lock();
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    rl.rlim_cur < want) {
		rlim_t was = rl.rlim_cur;

		if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) {
			keel_log(KEEL_LOG_ERROR, NET_MOD,
				 "shard %u: a direct-descriptor table of %u slots (--max-files) "
				 "needs a descriptor limit of at least %u, and this process's hard "
				 "limit is %llu: raise it (ulimit -Hn as root, LimitNOFILE= for a "
				 "systemd service), or lower --max-files, or use --feature "
				 "direct_fd=off",
				 id, want, want, (unsigned long long)rl.rlim_max);
			r = -EMFILE;
		} else {
			rl.rlim_cur = rl.rlim_max;
			if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
				r = -errno;
				keel_log(
					KEEL_LOG_ERROR, NET_MOD,
					"shard %u: raising the descriptor limit from %llu to %llu "
					"for a direct-descriptor table of %u slots failed: %s; raise "
					"ulimit -n, or lower --max-files",
					id, (unsigned long long)was,
					(unsigned long long)rl.rlim_max, want, strerror(-r));
			} else {
				keel__nofile_raised(was, rl.rlim_max);
				keel_log(
					KEEL_LOG_INFO, NET_MOD,
					"raised the soft descriptor limit (ulimit -n) from %llu to "
					"its hard limit %llu: a direct-descriptor table of %u slots "
					"(--max-files) needs at least %u",
					(unsigned long long)was, (unsigned long long)rl.rlim_max,
					want, want);
			}
		}
	}
	keel__nofile_unlock();
	return r;
}

static int
shard_create(const struct keel_net_config *cfg, struct net_shard **out)
{
	struct keel_shard *sh = keel_this_shard();
	struct net_shard *ns;
	int r;

	ns = calloc(1, sizeof(*ns));
	if (!ns)
		return -ENOMEM;
	ns->id = keel_shard_id(sh);
	ns->cpu = keel_shard_cpu(sh);
	ns->ring = keel_shard_ring_get();
	ns->cfg = *cfg;
	ns->f_ms_accept = keel_feature_used(KEEL_FEAT_MULTISHOT_ACCEPT);
	ns->f_ms_recv = keel_feature_used(KEEL_FEAT_MULTISHOT_RECV);
	ns->f_bundle = keel_feature_used(KEEL_FEAT_RECV_BUNDLE);
	ns->f_inc = keel_feature_used(KEEL_FEAT_PBUF_INC);
	ns->f_direct = keel_feature_used(KEEL_FEAT_DIRECT_FD);
	ns->f_zc = keel_feature_used(KEEL_FEAT_SEND_ZC);
	ns->refs = 1;
	if (ns->f_direct) {
		r = nofile_fit(ns->id, ns->cfg.max_files);
		if (r < 0) {
			free(ns);
			return r;
		}
		r = io_uring_register_files_sparse(ns->ring, ns->cfg.max_files);
		if (r == -EBUSY) {
			/* A ring has one table: the application registered its own (docs/file.md,
			 * a core-only program's way to direct descriptors). */
			keel_log(
				KEEL_LOG_ERROR, NET_MOD,
				"shard %u: the ring has a file table already (the application's "
				"own, io_uring_register_files_sparse): keel's network layer "
				"registers one of --max-files slots (%u) for files and connections "
				"both; register none, or use --feature direct_fd=off",
				ns->id, ns->cfg.max_files);
			free(ns);
			return -EEXIST;
		}
		if (r < 0) {
			keel_log(KEEL_LOG_ERROR, NET_MOD,
				 "shard %u: registering a file table of %u slots failed: %s; lower "
				 "--max-files, or use --feature direct_fd=off",
				 ns->id, ns->cfg.max_files, strerror(-r));
			free(ns);
			return r;
		}
		ns->files = true;
	}
	/* Before the buffer ring: a failed --zcrx on then unwinds nothing but the file table. */
	r = keel__zcrx_setup(ns); /* --zcrx on: fails with the reason and the fix */
	if (r < 0)
		goto err;
	/* One completion spans at most one ring's buffers. */
	ns->scratch_n = keel__net_bulk_on(&ns->cfg) && ns->cfg.bulk_buf_count > ns->cfg.buf_count
				? ns->cfg.bulk_buf_count
				: ns->cfg.buf_count;
	ns->scratch = calloc(ns->scratch_n, sizeof(*ns->scratch));
	if (!ns->scratch) {
		r = -ENOMEM;
		goto err;
	}
	r = keel__pbuf_init_window(ns, &ns->tcp, 0, ns->cfg.buf_count, ns->cfg.buf_size, ns->f_inc,
				   NET_RX_WINDOW, 0);
	if (r < 0)
		goto err;
	r = keel_shard_on_stop(on_stop, ns);
	if (r < 0)
		goto err;
	tl_ns = ns;
	*out = ns;
	return 0;
err:
	if (ns->zcrx && ns->zcrx->registered)
		tl_zcrx_stuck = r;
	keel__zcrx_fini(ns);
	keel__pbuf_fini(&ns->tcp);
	if (ns->files)
		io_uring_unregister_files(keel_shard_ring_get());
	free(ns->scratch);
	free(ns);
	return r;
}

struct pbuf_ring *
keel__net_bulk(struct net_shard *ns)
{
	int r;

	if (ns->bulk_ready)
		return &ns->bulk;
	if (!keel__net_bulk_on(&ns->cfg) || ns->st.bulk_failed || ns->stopping)
		return NULL;
	r = keel__pbuf_init_window(ns, &ns->bulk, NET_BULK_BGID, ns->cfg.bulk_buf_count,
				   ns->cfg.bulk_buf_size, ns->f_inc, NET_BULK_WINDOW,
				   bulk_wmax(&ns->cfg));
	if (r < 0) {
		ns->st.bulk_failed = 1;
		keel_log(
			KEEL_LOG_ERROR, NET_MOD,
			"shard %u: the bulk receive ring (%u buffers of %u bytes) could not be "
			"made: %s; its connections stay on the first ring. Raise --memory, or "
			"lower bulk_buf_count/bulk_buf_size (keel-echo --bulk-buf-count/"
			"--bulk-buf-size), or turn it off with bulk_buf_size 0 (--bulk-buf-size 0)",
			ns->id, ns->cfg.bulk_buf_count, ns->cfg.bulk_buf_size, strerror(-r));
		return NULL;
	}
	ns->bulk_ready = true;
	return &ns->bulk;
}

int
keel__net_fixed(struct net_shard *ns, const struct keel_slice *s, unsigned *index, uint64_t *offset)
{
	const struct keel_slice *area = NULL;
	struct pbuf_ring *rs[NET_NRINGS];
	int r;

	if (!keel_buf_is_external(s->buf))
		return keel_buf_fixed(s, index, offset);
	/* A receive buffer: its area is a buffer of the shard's allocator. */
	rings(ns, rs);
	for (unsigned i = 0; i < NET_NRINGS; i++)
		if (keel__pbuf_owns(rs[i], s->data, &area))
			break;
	if (!area)
		return -ENOENT;
	r = keel_buf_fixed(area, index, offset);
	if (r == 0)
		*offset += (uint64_t)(s->data - area->data);
	return r;
}

int
keel_net_stats(const struct keel_shard *sh, struct keel_net_stats *out)
{
	struct net_shard *ns = tl_ns;

	if (!sh || !out || sh != keel_this_shard())
		return -EINVAL;
	if (!ns)
		return -ENOENT;
	*out = ns->st;
	out->bufs_out = ns->tcp.out + ns->udp.out + ns->bulk.out; /* 0 for a ring not made */
	out->bufs_kernel = rings_nkref(ns);
	out->timeout_sweep_ns = ns->lim_period;
	out->bulk_window = ns->bulk_ready ? (uint64_t)ns->bulk.window * ns->bulk.bufsize : 0;
	return 0;
}

/* "unix:/path" or "unix:@abstract" into a sockaddr_un. */
static int
unix_parse(const char *addr, struct sockaddr_storage *out, socklen_t *len)
{
	struct sockaddr_un *u = (struct sockaddr_un *)out;
	const char *name = addr + 5;
	size_t n = strlen(name);

	if (!n || n >= sizeof(u->sun_path) || (name[0] == '@' && n < 2)) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "Unix socket address '%s': give unix:/path or unix:@abstract-name, at "
			 "most %zu bytes after 'unix:'",
			 addr, sizeof(u->sun_path) - 1);
		return -EINVAL;
	}
	u->sun_family = AF_UNIX;
	if (name[0] == '@') {
		/* Abstract: a leading NUL, and the length says where the name ends. */
		memcpy(u->sun_path + 1, name + 1, n - 1);
		*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
	} else {
		memcpy(u->sun_path, name, n + 1);
		*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	}
	return 0;
}

/* An IPv6 literal with a scope ("fe80::1%eth0", "fe80::1%2"): the interface a link-local
 * address belongs to, into sin6_scope_id. inet_pton takes no scope; getaddrinfo with
 * AI_NUMERICHOST does, and never asks a resolver (the interface's name goes to
 * if_nametoindex, a local ioctl), so this is fit for a shard. The literal before the '%' is
 * checked first, so that a bad one is not reported as a bad interface.
 * Returns 0; -ENODEV (logged) when no interface has that name or index; -EINVAL (not
 * logged: the caller says what is expected) when what precedes the '%' is no IPv6 literal. */
static int
scoped6_parse(const char *addr, const char *pct, uint16_t port, struct sockaddr_storage *out,
	      socklen_t *len)
{
	struct addrinfo hints = { .ai_family = AF_INET6,
				  .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICHOST };
	struct addrinfo *res = NULL;
	struct in6_addr a;
	char host[INET6_ADDRSTRLEN], ifname[IF_NAMESIZE];
	size_t hl = (size_t)(pct - addr);
	int r;

	if (hl >= sizeof(host))
		return -EINVAL;
	memcpy(host, addr, hl);
	host[hl] = 0;
	if (inet_pton(AF_INET6, host, &a) != 1)
		return -EINVAL;
	/* glibc takes a numeric scope on any address and does not check it names an
	 * interface: both are checked here, so the rule holds for names and numbers alike. */
	if (pct[1] && !IN6_IS_ADDR_LINKLOCAL(&a) && !IN6_IS_ADDR_MC_LINKLOCAL(&a)) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "address '%s': only a link-local address (fe80::/10) takes a scope: "
			 "drop '%s'",
			 addr, pct);
		return -ENODEV;
	}
	r = pct[1] ? getaddrinfo(addr, NULL, &hints, &res) : EAI_NONAME;
	if (r != 0 || !res || res->ai_addrlen != sizeof(struct sockaddr_in6) ||
	    !if_indextoname(((const struct sockaddr_in6 *)res->ai_addr)->sin6_scope_id, ifname)) {
		if (res)
			freeaddrinfo(res);
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "address '%s': no network interface '%s' (the scope after '%%' names the "
			 "interface of a link-local address, fe80::1%%eth0, or its index; ip link "
			 "lists them)",
			 addr, pct + 1);
		return -ENODEV;
	}
	memcpy(out, res->ai_addr, sizeof(struct sockaddr_in6));
	freeaddrinfo(res);
	((struct sockaddr_in6 *)out)->sin6_port = htons(port);
	*len = sizeof(struct sockaddr_in6);
	return 0;
}

int
keel_net_addr_parse(const char *addr, uint16_t port, struct sockaddr_storage *out, socklen_t *len)
{
	struct sockaddr_in *a4 = (struct sockaddr_in *)out;
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
	socklen_t unused;
	const char *pct;
	int r;

	if (!len)
		len = &unused;

	memset(out, 0, sizeof(*out));
	if (!addr)
		addr = "0.0.0.0";
	if (!strncmp(addr, "unix:", 5))
		return unix_parse(addr, out, len);
	if (inet_pton(AF_INET, addr, &a4->sin_addr) == 1) {
		a4->sin_family = AF_INET;
		a4->sin_port = htons(port);
		*len = sizeof(*a4);
		return 0;
	}
	if (inet_pton(AF_INET6, addr, &a6->sin6_addr) == 1) {
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(port);
		*len = sizeof(*a6);
		return 0;
	}
	pct = strchr(addr, '%');
	if (pct && strchr(addr, ':')) {
		r = scoped6_parse(addr, pct, port, out, len);
		if (r != -EINVAL) /* 0, or no such interface (logged) */
			return r == 0 ? 0 : -EINVAL;
		memset(out, 0, sizeof(*out));
	}
	keel_log(KEEL_LOG_ERROR, NET_MOD,
		 "address '%s' does not parse: give an IPv4 (127.0.0.1) or IPv6 (::1, "
		 "fe80::1%%eth0 with the interface of a link-local one) literal, or unix:/path "
		 "or unix:@name (a host name: resolve it before the run with keel_net_resolve)",
		 addr);
	return -EINVAL;
}

int
keel_net_resolve(const char *host, uint16_t port, int family, struct sockaddr_storage *out,
		 socklen_t *len)
{
	struct addrinfo hints = { 0 }, *res = NULL;
	struct keel_shard *sh = keel_this_shard();
	socklen_t l;
	int r;

	if (!host || !*host || !out ||
	    (family != AF_UNSPEC && family != AF_INET && family != AF_INET6))
		return -EINVAL;
	/* A literal (or unix:) needs no resolver: the same answer on any thread. So does
	 * what can only be meant as one (digits and dots, or a colon: no host name looks
	 * like that), which is refused as a bad literal, not sent to DNS. */
	if (!strncmp(host, "unix:", 5) || strchr(host, ':') ||
	    strspn(host, "0123456789.") == strlen(host)) {
		r = keel_net_addr_parse(host, port, out, len ? len : &l);
		if (r == 0 && family != AF_UNSPEC && out->ss_family != family)
			return -EAFNOSUPPORT;
		return r;
	}
	if (sh) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "shard %u: resolving '%s' would block the shard's loop: resolve host "
			 "names before the runtime starts (keel_net_resolve) and connect with "
			 "keel_conn_connect_addr",
			 keel_shard_id(sh), host);
		return -EPERM;
	}
	hints.ai_family = family;
	hints.ai_socktype = SOCK_STREAM;
	r = getaddrinfo(host, NULL, &hints, &res);
	if (r != 0) {
		int e = r == EAI_NONAME || r == EAI_NODATA ? -ENOENT
			: r == EAI_AGAIN                   ? -EAGAIN
			: r == EAI_MEMORY                  ? -ENOMEM
			: r == EAI_FAMILY                  ? -EAFNOSUPPORT
			: r == EAI_SYSTEM                  ? -errno
							   : -EINVAL;
		keel_log(KEEL_LOG_ERROR, NET_MOD, "resolving '%s': %s", host,
			 r == EAI_SYSTEM ? strerror(-e) : gai_strerror(r));
		return e;
	}
	memset(out, 0, sizeof(*out));
	memcpy(out, res->ai_addr, res->ai_addrlen);
	if (out->ss_family == AF_INET)
		((struct sockaddr_in *)out)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)out)->sin6_port = htons(port);
	if (len)
		*len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}
