// SPDX-License-Identifier: MIT
/*
 * ZCRX set-up: each shard whose runtime gives it an rx queue registers its own interface
 * queue (IORING_REGISTER_ZCRX_IFQ) on its ring, with a receive area and a refill ring in
 * memory it allocated on its own CPU. One queue, one shard: a process-wide claim table
 * refuses a second shard before the kernel is asked (the kernel would say EEXIST, which
 * cannot tell our own mistake from another program's consumer).
 *
 * The receive path on connections (RECV_ZC, area slices, refills on the last put) is in
 * zcrx_rx.c; docs/zcrx.md.
 */
#include "zcrx.h"

#include <errno.h>
#include <net/if.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "net_internal.h"

_Atomic unsigned keel__zcrx_register_calls;

static long
register_ifq(int ring_fd, void *reg)
{
	return syscall(__NR_io_uring_register, ring_fd, KEEL_IORING_REGISTER_ZCRX_IFQ, reg, 1);
}

long (*keel__zcrx_register)(int ring_fd, void *reg) = register_ifq;

unsigned (*keel__zcrx_ifindex)(const char *name) = if_nametoindex;

int (*keel__zcrx_ring_init)(unsigned entries, struct io_uring *ring,
			    struct io_uring_params *p) = io_uring_queue_init_params;

/* The refill ring's header (the kernel's struct io_uring: head and tail, 32 bits each; the
 * entries start where the kernel's offsets say, 64 bytes in on 6.18) comes first in the
 * region; a page is more than it needs on every architecture. */
#define RQ_HEADER_BYTES 4096u

struct claim {
	char iface[32];
	int rxq;
	unsigned shard;
};

static pthread_mutex_t claims_lock = PTHREAD_MUTEX_INITIALIZER;
static struct claim claims[KEEL_MAX_SHARDS];
static unsigned nclaims;

int
keel__zcrx_claim(const char *iface, int rxq, unsigned shard, unsigned *owner)
{
	int r = 0;

	pthread_mutex_lock(&claims_lock);
	for (unsigned i = 0; i < nclaims; i++)
		if (claims[i].rxq == rxq && !strcmp(claims[i].iface, iface)) {
			*owner = claims[i].shard;
			r = -EEXIST;
			goto out;
		}
	if (nclaims == KEEL_MAX_SHARDS) {
		r = -ENOSPC;
		goto out;
	}
	snprintf(claims[nclaims].iface, sizeof(claims[nclaims].iface), "%s", iface);
	claims[nclaims].rxq = rxq;
	claims[nclaims].shard = shard;
	nclaims++;
out:
	pthread_mutex_unlock(&claims_lock);
	return r;
}

void
keel__zcrx_unclaim(const char *iface, int rxq)
{
	pthread_mutex_lock(&claims_lock);
	for (unsigned i = 0; i < nclaims; i++)
		if (claims[i].rxq == rxq && !strcmp(claims[i].iface, iface)) {
			claims[i] = claims[--nclaims];
			break;
		}
	pthread_mutex_unlock(&claims_lock);
}

const char *
keel__zcrx_reason(int err, const char *iface, int rxq, size_t area, char *buf, size_t len)
{
	int e = err < 0 ? -err : err;

	switch (e) {
	case EPERM:
		snprintf(buf, len,
			 "ZCRX on %s rx queue %d: EPERM (operation not permitted): registering an "
			 "interface queue needs CAP_NET_ADMIN; run as root or grant it with the "
			 "right to pin the area's memory (setcap cap_net_admin,cap_ipc_lock+ep "
			 "PROGRAM)",
			 iface, rxq);
		break;
	case EOPNOTSUPP:
		snprintf(buf, len,
			 "ZCRX on %s rx queue %d: EOPNOTSUPP (operation not supported): %s has no "
			 "queue API / no parent device: ZCRX needs bnxt, mlx5, gve or fbnic; give "
			 "an interface of one of those drivers (a kernel built without "
			 "CONFIG_IO_URING_ZCRX answers the same: check /boot/config-$(uname -r))",
			 iface, rxq, iface);
		break;
	case EINVAL:
		snprintf(buf, len,
			 "ZCRX on %s rx queue %d: EINVAL (invalid argument): header/data split is "
			 "off or its threshold is not 0 (the kernel needs both); run: ethtool -G "
			 "%s tcp-data-split on hds-thresh 0 (on a capable NIC; kernels before 6.15 "
			 "also answer EINVAL: ZCRX needs Linux 6.15)",
			 iface, rxq, iface);
		break;
	case EEXIST:
		snprintf(buf, len,
			 "ZCRX on %s rx queue %d: EEXIST (exists): queue %d already has a "
			 "zero-copy consumer (another program's interface queue, an XDP program on "
			 "%s, or the queue of a ring closed just before: the kernel releases it "
			 "after the close, from a work queue, so a restart can find it still taken "
			 "for a moment); give this shard another queue (--rxqs), stop the other "
			 "consumer, or retry",
			 iface, rxq, rxq, iface);
		break;
	case EBUSY:
		snprintf(
			buf, len,
			"ZCRX on %s rx queue %d: EBUSY (device busy): an AF_XDP socket holds queue "
			"%d; close it or give this shard another queue (--rxqs)",
			iface, rxq, rxq);
		break;
	case ENODEV:
		snprintf(buf, len,
			 "ZCRX on %s rx queue %d: ENODEV (no such device): there is no interface "
			 "%s; list them with: ip -br link",
			 iface, rxq, iface);
		break;
	case ERANGE:
		snprintf(buf, len,
			 "ZCRX on %s rx queue %d: ERANGE (out of range): %s has no rx queue %d; "
			 "raise its channels (ethtool -L %s combined N) or give a lower queue "
			 "(--rxqs)",
			 iface, rxq, iface, rxq, iface);
		break;
	case ENOMEM:
		snprintf(buf, len,
			 "ZCRX on %s rx queue %d: ENOMEM (out of memory): the receive area or "
			 "refill ring could not be allocated or pinned; lower --zcrx-area or "
			 "--zcrx-rq-entries, or raise RLIMIT_MEMLOCK (ulimit -l)",
			 iface, rxq);
		break;
	case EFAULT:
		/* Linux through 6.18 and later ones (io_validate_user_buf_range) refuse
		 * registered memory over 1 GiB with EFAULT; a later kernel lifted that. */
		if (area > (1ull << 30)) {
			snprintf(buf, len,
				 "ZCRX on %s rx queue %d: EFAULT (bad address): the kernel refused "
				 "the %zu-byte area: io_uring takes at most 1 GiB of registered "
				 "memory at once on this kernel (6.18 and those before it); use "
				 "--zcrx-area 1G or less",
				 iface, rxq, area);
			break;
		}
		snprintf(buf, len,
			 "ZCRX on %s rx queue %d: EFAULT (bad address): the kernel could not read "
			 "the registration or map the area for the device (an IOMMU or DMA "
			 "mapping failure reads EFAULT too: see the kernel log, dmesg); if the "
			 "log says nothing, it is a keel bug: please report it",
			 iface, rxq);
		break;
	default:
		snprintf(buf, len, "ZCRX on %s rx queue %d: %s (errno %d)", iface, rxq, strerror(e),
			 e);
		break;
	}
	return buf;
}

static size_t
page_round(uint64_t n)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);

	return (size_t)((n + pg - 1) & ~((uint64_t)pg - 1));
}

static void *
map_local(size_t len)
{
	/* Not populated: the registration pins the pages, faulting them in on the calling
	 * thread (the shard's, pinned to its CPU), so the default NUMA policy places them on
	 * its node as a first touch there would. An area the kernel refuses (over 1 GiB on
	 * 6.18, EFAULT before any pin) thus costs no memory and no time. */
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	return p == MAP_FAILED ? NULL : p;
}

const char *
keel__zcrx_ring_fix(const struct keel_opts *o)
{
	/* As the features were decided (core/caps.c): DEFER_TASKRUN is not used because its
	 * policy is off, because single_issuer's is (it needs it), or because the kernel lacks
	 * it (single_issuer came a release earlier). */
	if (o->features[KEEL_FEAT_DEFER_TASKRUN] == KEEL_POLICY_OFF)
		return "drop --feature defer_taskrun=off";
	if (o->features[KEEL_FEAT_SINGLE_ISSUER] == KEEL_POLICY_OFF)
		return "drop --feature single_issuer=off, which DEFER_TASKRUN needs";
	return "this kernel lacks DEFER_TASKRUN: run Linux 6.1 or later (ZCRX itself came in "
	       "6.15)";
}

/* Checks, allocation and the registration. On failure *why holds our own reason (when the
 * kernel was not asked) or is empty (the caller maps the errno). */
static int
try_setup(struct net_zcrx *z, const struct keel_opts *o, unsigned ring_flags, int ring_fd,
	  char *why, size_t whylen)
{
	struct keel_zcrx_area_reg area;
	struct keel_region_desc rd;
	struct keel_zcrx_ifq_reg reg;
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	unsigned owner = 0;
	unsigned idx;
	long r;

	why[0] = 0;
	if (!(ring_flags & IORING_SETUP_DEFER_TASKRUN) || !(ring_flags & IORING_SETUP_CQE32)) {
		snprintf(why, whylen,
			 "ZCRX on %s rx queue %d: the shard's ring lacks %s (the kernel registers "
			 "interface queues only on DEFER_TASKRUN + CQE32 rings); %s",
			 z->iface, z->rxq,
			 (ring_flags & IORING_SETUP_DEFER_TASKRUN) ? "CQE32" : "DEFER_TASKRUN",
			 keel__zcrx_ring_fix(o));
		return -EINVAL;
	}
	if (!o->zcrx_rq_entries || o->zcrx_rq_entries > KEEL_ZCRX_RQ_ENTRIES_MAX ||
	    (o->zcrx_rq_entries & (o->zcrx_rq_entries - 1))) {
		snprintf(why, whylen,
			 "ZCRX on %s rx queue %d: --zcrx-rq-entries %u is not a power of two up to "
			 "%d",
			 z->iface, z->rxq, o->zcrx_rq_entries, KEEL_ZCRX_RQ_ENTRIES_MAX);
		return -EINVAL;
	}
	/* The command line takes 4K..1024G; an embedder's value is checked here, before the
	 * mmap, so that 0 or a size whose page rounding wraps is not reported as ENOMEM. */
	if (o->zcrx_area < pg || o->zcrx_area > KEEL_ZCRX_AREA_MAX) {
		snprintf(why, whylen,
			 "ZCRX on %s rx queue %d: keel_opts.zcrx_area (--zcrx-area) is %llu bytes: "
			 "it must be from %zu bytes (one page) to 1 TiB",
			 z->iface, z->rxq, (unsigned long long)o->zcrx_area, pg);
		return -EINVAL;
	}
	r = keel__zcrx_claim(z->iface, z->rxq, z->shard, &owner);
	if (r == -EEXIST) {
		/* The probe claims as no shard: name it, never its owner number. */
		if (owner == KEEL__ZCRX_PROBE_SHARD)
			snprintf(why, whylen,
				 "ZCRX on %s rx queue %d: a readiness probe of this process "
				 "(keel_zcrx_probe, keel-topo --check --zcrx) holds queue %d for "
				 "the moment it registers it; retry once it returned",
				 z->iface, z->rxq, z->rxq);
		else if (z->shard == KEEL__ZCRX_PROBE_SHARD)
			snprintf(why, whylen,
				 "ZCRX on %s rx queue %d: shard %u of this process has registered "
				 "queue %d: it is in use for zero-copy receive, and the probe does "
				 "not register it a second time (stop that runtime to probe it)",
				 z->iface, z->rxq, owner, z->rxq);
		else
			snprintf(why, whylen,
				 "ZCRX on %s rx queue %d: shard %u of this process already "
				 "registered queue %d: one queue, one shard; give each shard its "
				 "own queue (--rxqs, --map)",
				 z->iface, z->rxq, owner, z->rxq);
		return -EEXIST;
	}
	if (r < 0) {
		snprintf(why, whylen,
			 "ZCRX on %s rx queue %d: this process already holds %d ZCRX queues, the "
			 "most it can (KEEL_MAX_SHARDS, for the shards of every runtime in it and "
			 "keel_zcrx_probe calls under way): give ZCRX queues to fewer shards or "
			 "runtimes in one process (--rxqs; --zcrx off for the others), or rebuild "
			 "keel with a larger KEEL_MAX_SHARDS",
			 z->iface, z->rxq, KEEL_MAX_SHARDS);
		return (int)r;
	}
	z->claimed = true;
	/* 0 is no such interface (ENODEV, errno untouched by some libcs) or a lookup that
	 * could not run: glibc opens a socket for it (EMFILE, ENFILE, EACCES, ...). */
	errno = 0;
	idx = keel__zcrx_ifindex(z->iface);
	if (!idx) {
		int e = errno && errno != ENODEV ? errno : 0;

		if (!e)
			return -ENODEV; /* keel__zcrx_reason says it */
		snprintf(why, whylen,
			 "ZCRX on %s rx queue %d: looking up the interface's index failed: %s%s",
			 z->iface, z->rxq, strerror(e),
			 e == EMFILE ? " (the lookup opens a socket and the process has no "
				       "descriptor left: raise ulimit -n)"
			 : e == ENFILE
				 ? " (the lookup opens a socket and the system has no file left: "
				   "raise fs.file-max)"
			 : e == EACCES || e == EPERM
				 ? " (the lookup opens a socket, which a security policy refused: "
				   "allow AF_INET/AF_UNIX sockets to the process, or --zcrx off)"
				 : "");
		return -e;
	}
	if (keel__zcrx_set_area(z, page_round(o->zcrx_area)) < 0)
		return -ENOMEM;
	z->area = map_local(z->area_len);
	if (!z->area)
		return -ENOMEM;
	z->rq_entries = o->zcrx_rq_entries;
	z->region_len = page_round(RQ_HEADER_BYTES + (uint64_t)z->rq_entries * sizeof(*z->rqes));
	z->region = map_local(z->region_len);
	if (!z->region)
		return -ENOMEM;

	memset(&area, 0, sizeof(area));
	area.addr = (uint64_t)(uintptr_t)z->area;
	area.len = z->area_len;
	memset(&rd, 0, sizeof(rd));
	rd.user_addr = (uint64_t)(uintptr_t)z->region;
	rd.size = z->region_len;
	rd.flags = KEEL_IORING_MEM_REGION_TYPE_USER;
	memset(&reg, 0, sizeof(reg));
	reg.if_idx = idx;
	reg.if_rxq = (uint32_t)z->rxq;
	reg.rq_entries = z->rq_entries;
	reg.area_ptr = (uint64_t)(uintptr_t)&area;
	reg.region_ptr = (uint64_t)(uintptr_t)&rd;

	atomic_fetch_add(&keel__zcrx_register_calls, 1);
	/* The real ring fd: a registered ring index is not accepted by io_uring_register
	 * without IORING_REGISTER_USE_REGISTERED_RING, and liburing 2.3 has no ZCRX helper. */
	r = keel__zcrx_register(ring_fd, &reg);
	if (r < 0)
		return -errno;
	z->registered = true;
	/* Registered: from here the interface queue lives until the ring is closed (6.18 has
	 * no unregister call), and with it the kernel's pins on the area and region. */
	z->area_token = area.rq_area_token;
	z->id = reg.zcrx_id;
	if ((uint64_t)reg.offsets.head + 4 > z->region_len ||
	    (uint64_t)reg.offsets.tail + 4 > z->region_len ||
	    (uint64_t)reg.offsets.rqes + (uint64_t)z->rq_entries * sizeof(*z->rqes) >
		    z->region_len ||
	    (reg.offsets.rqes % _Alignof(struct keel_zcrx_rqe)) || (reg.offsets.head % 4) ||
	    (reg.offsets.tail % 4)) {
		snprintf(why, whylen,
			 "ZCRX on %s rx queue %d: the kernel's refill ring offsets (head %u, tail "
			 "%u, entries %u) do not fit the %zu-byte region: an ABI this keel does "
			 "not know; use --zcrx off",
			 z->iface, z->rxq, reg.offsets.head, reg.offsets.tail, reg.offsets.rqes,
			 z->region_len);
		return -EPROTO;
	}
	z->rq_head = (uint32_t *)((char *)z->region + reg.offsets.head);
	z->rq_tail = (uint32_t *)((char *)z->region + reg.offsets.tail);
	z->rqes = (struct keel_zcrx_rqe *)((char *)z->region + reg.offsets.rqes);
	z->rq_mask = z->rq_entries - 1;
	z->rq_local_tail = __atomic_load_n(z->rq_tail, __ATOMIC_RELAXED);
	return 0;
}

static void
release(struct net_zcrx *z)
{
	if (z->area)
		munmap(z->area, z->area_len);
	if (z->region)
		munmap(z->region, z->region_len);
	z->area = z->region = NULL;
	free(z->page_slices);
	z->page_slices = NULL;
	z->rq_head = z->rq_tail = NULL;
	z->rqes = NULL;
	if (z->claimed)
		keel__zcrx_unclaim(z->iface, z->rxq);
	z->claimed = false;
}

enum keel__zcrx_verdict
keel__zcrx_verdict(enum keel_policy policy, int err, bool registered)
{
	if (err == 0)
		return KEEL__ZCRX_USE;
	/* Registered, then refused by keel: the kernel keeps the interface queue bound to the
	 * area until the ring closes (6.18 has no unregister, and the shard cannot close its
	 * own ring), with nothing refilling it. That is no copy-path fallback: fatal even under
	 * auto, with the message naming --zcrx off. */
	if (policy == KEEL_POLICY_ON || registered)
		return KEEL__ZCRX_FAIL;
	return KEEL__ZCRX_FALLBACK;
}

int
keel__zcrx_setup(struct net_shard *ns)
{
	struct keel_shard *sh = keel_this_shard();
	const struct keel_runtime *rt = keel_shard_runtime(sh);
	const struct keel_opts *o = keel_runtime_opts(rt);
	const char *iface = keel_runtime_rx_iface(rt);
	struct io_uring *ring = keel_shard_ring_get();
	struct net_zcrx *z;
	enum keel__zcrx_verdict v;
	char why[512];
	int r;

	z = calloc(1, sizeof(*z));
	if (!z)
		return -ENOMEM;
	z->shard = ns->id;
	z->ns = ns;
	z->rxq = keel_shard_rxq(sh);
	z->state = KEEL_ZCRX_NONE;
	if (o->zcrx == KEEL_POLICY_OFF || z->rxq < 0 || !iface) {
		ns->zcrx = z;
		return 0;
	}
	snprintf(z->iface, sizeof(z->iface), "%s", iface);
	r = try_setup(z, o, ring->flags, ring->ring_fd, why, sizeof(why));
	v = keel__zcrx_verdict(o->zcrx, r, z->registered);
	if (v == KEEL__ZCRX_USE) {
		z->state = KEEL_ZCRX_ON;
		keel_log(KEEL_LOG_INFO, NET_MOD,
			 "shard %u: ZCRX on %s rx queue %d (interface queue %u, %zu-byte area, %u "
			 "refill entries)",
			 ns->id, z->iface, z->rxq, z->id, z->area_len, z->rq_entries);
		ns->zcrx = z;
		return 0;
	}
	if (!why[0])
		keel__zcrx_reason(r, z->iface, z->rxq, z->area_len, why, sizeof(why));
	/* A registration that succeeded and was then refused keeps its memory: the kernel
	 * holds it until the ring closes. */
	if (z->registered && v == KEEL__ZCRX_FAIL) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "shard %u: %s (the kernel had taken the registration: its queue stays "
			 "bound to the area until the shard's ring closes, with nothing to refill "
			 "it, so even --zcrx auto does not fall back to the copy path here; run "
			 "with --zcrx off)",
			 ns->id, why);
		ns->zcrx = z; /* freed by keel__zcrx_fini() */
		return r;
	}
	if (!z->registered)
		release(z);
	if (v == KEEL__ZCRX_FAIL) {
		/* The policy's way out is said here, not in the reason: --zcrx auto's fallback
		 * line told the user to use --zcrx auto. */
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "shard %u: %s (--zcrx auto runs on the copy path where ZCRX cannot; "
			 "--zcrx off does not try)",
			 ns->id, why);
		free(z);
		return r;
	}
	/* The queue taken by another consumer: what arrives on it may be in that consumer's
	 * memory (another interface queue) or taken by XDP (an AF_XDP socket, a program that
	 * redirects), which no copy-path receive reads either. */
	if (r == -EEXIST || r == -EBUSY)
		keel_log(
			KEEL_LOG_WARN, NET_MOD,
			"shard %u: ZCRX falls back to the copy path: %s; while another zero-copy "
			"consumer holds the queue, the copy path cannot read what arrives on that "
			"queue either: connections steered to it may get no bytes until it is free",
			ns->id, why);
	else
		keel_log(KEEL_LOG_INFO, NET_MOD, "shard %u: ZCRX falls back to the copy path: %s",
			 ns->id, why);
	z->state = KEEL_ZCRX_FALLBACK;
	z->err = -r;
	ns->zcrx = z;
	return 0;
}

void
keel__zcrx_fini(struct net_shard *ns)
{
	struct net_zcrx *z = ns->zcrx;

	if (!z)
		return;
	keel__zcrx_stop(ns);
	ns->zcrx = NULL;
	if (z->claimed)
		keel__zcrx_unclaim(z->iface, z->rxq);
	z->claimed = false;
	/* Unmapping is safe while the ring still holds the interface queue: the kernel pinned
	 * the pages at registration and keeps them until the ring is closed. With area slices
	 * still held, the area stays mapped until the last is put. */
	keel__zcrx_rx_fini(z);
}

int
keel_zcrx_stats(const struct keel_shard *sh, struct keel_zcrx_stats *out)
{
	struct net_shard *ns = keel__net_shard_cur();
	const struct net_zcrx *z;

	if (!sh || !out || sh != keel_this_shard())
		return -EINVAL;
	if (!ns || !ns->zcrx)
		return -ENOENT;
	z = ns->zcrx;
	memset(out, 0, sizeof(*out));
	out->state = z->state;
	out->err = z->err;
	out->rxq = z->rxq;
	out->zc_bytes = z->zc_bytes;
	out->zc_frags = z->zc_frags;
	out->copy_bytes = z->copy_bytes;
	out->conn_fallbacks = z->conn_fallbacks;
	out->cq_full_rearms = z->cq_full_rearms;
	out->nomem_waits = z->nomem_waits;
	out->misrouted = z->misrouted;
	out->refills = z->refills;
	out->refill_publishes = z->publishes;
	out->refills_pending = z->npend;
	out->refills_lost = z->dropped;
	out->held = z->held;
	out->held_pages = z->pages_held;
	out->nomem_aborts = z->nomem_aborts;
	out->frags_refused = z->frags_refused;
	out->frames = z->frames;
	out->frame_frags = z->frame_frags;
	out->frame_frags_max = z->frame_frags_max;
	if (z->state == KEEL_ZCRX_ON) {
		out->zcrx_id = z->id;
		out->area_bytes = z->area_len;
		out->rq_entries = z->rq_entries;
	}
	return 0;
}

/* What io_uring_setup's errno @e means for the probe's ring, and the fix. */
static const char *
ring_reason(int e)
{
	switch (e) {
	case EINVAL: /* flags this kernel does not know: DEFER_TASKRUN (6.1), CQE32 (5.19) */
		return "this kernel does not know those ring flags: ZCRX needs Linux 6.15 with "
		       "CONFIG_IO_URING_ZCRX";
	case EPERM:
		return "io_uring is disabled for this process by the sysctl "
		       "kernel.io_uring_disabled (2: for all; 1: for all but CAP_SYS_ADMIN and "
		       "the group of kernel.io_uring_group); set it to 0, or run in that group";
	case ENOMEM:
		return "out of memory for the ring: the system's memory, or the locked-memory "
		       "limit that older kernels charge rings to (raise it: ulimit -l)";
	case ENOSYS:
		return "this kernel has no io_uring (CONFIG_IO_URING off), or a seccomp filter "
		       "refuses io_uring_setup";
	case EMFILE:
	case ENFILE:
		return "no file descriptor left for the ring (ulimit -n)";
	default:
		return "the kernel refused io_uring_setup";
	}
}

int
keel_zcrx_probe(const char *iface, int rxq, char *why, size_t len)
{
	struct io_uring_params p;
	struct io_uring ring;
	struct keel_opts o;
	struct net_zcrx z;
	int r;

	if (!iface || !*iface || rxq < 0 || !why || !len)
		return -EINVAL;
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQE32;
	r = keel__zcrx_ring_init(8, &ring, &p);
	if (r < 0) {
		snprintf(why, len,
			 "ZCRX on %s rx queue %d: a DEFER_TASKRUN + CQE32 ring could not be made "
			 "(%s): %s",
			 iface, rxq, strerror(-r), ring_reason(-r));
		return r;
	}
	/* The runtime's default area and refill ring, as a shard registers them: a small area
	 * passed where the default one then failed at start-up (the memory lock limit). */
	keel_opts_init(&o);
	memset(&z, 0, sizeof(z));
	snprintf(z.iface, sizeof(z.iface), "%s", iface);
	z.rxq = rxq;
	z.shard = KEEL__ZCRX_PROBE_SHARD;
	r = try_setup(&z, &o, ring.flags, ring.ring_fd, why, len);
	/* Closing the ring drops the interface queue (and the kernel's pins): then unmap. */
	io_uring_queue_exit(&ring);
	release(&z);
	if (r < 0 && !why[0])
		keel__zcrx_reason(r, iface, rxq, o.zcrx_area, why, len);
	if (r == 0)
		snprintf(why, len, "ZCRX on %s rx queue %d: registered and released", iface, rxq);
	return r;
}

const char *
keel_zcrx_state_name(enum keel_zcrx_state s)
{
	switch (s) {
	case KEEL_ZCRX_NONE:
		return "none";
	case KEEL_ZCRX_ON:
		return "on";
	case KEEL_ZCRX_FALLBACK:
		return "fallback";
	}
	return "?";
}
