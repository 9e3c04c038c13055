// SPDX-License-Identifier: MIT
#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "internal.h"

/* The probe is kept for the process once it completed. One that met a passing shortage (no
 * descriptor or memory left for a trial ring or eventfd) is not: its trials could not say
 * yes or no, so it fails (probe_status) and the next call probes again. The failed one is
 * handed out in a copy of the calling thread's own. */
static struct keel_caps caps;
static _Atomic bool caps_done;
static pthread_mutex_t caps_lock = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local struct keel_caps caps_failed;
static int probe_short; /* under caps_lock: the first shortage a trial met (-EMFILE, ...) */

/* @err (negative) says descriptors or memory ran out: a trial could not be made. */
static bool
probe_short_of(int err)
{
	return err == -EMFILE || err == -ENFILE || err == -ENOMEM || err == -EAGAIN;
}

/* What the probe short of @err (probe_short_of) lacked, with the fix. */
static const char *
probe_short_why(int err)
{
	return err == -EMFILE || err == -ENFILE
		       ? "the process has no file descriptor left for its trial rings (raise "
			 "ulimit -n, or close descriptors)"
		       : "memory ran out for a trial ring of a few entries (the memory cgroup's "
			 "limit, memory.max, or the machine's memory)";
}

/* A trial that failed with @err for want of descriptors or memory: noted. */
static void
trial_failed(int err)
{
	if (probe_short_of(err) && !probe_short)
		probe_short = err;
}

/* A trial registration's result @r: true when it took. A shortage (descriptors, memory)
 * is noted, so that the probe runs again at the next start rather than record the feature
 * missing for the process's life. */
static bool
reg_ok(int r)
{
	if (r < 0)
		trial_failed(r);
	return r >= 0;
}

/* Try a ring with @flags; true when the kernel accepts them. */
static bool
setup_ok(unsigned flags, uint32_t *features)
{
	struct io_uring ring;
	struct io_uring_params p;
	int r;

	memset(&p, 0, sizeof(p));
	p.flags = flags;
	r = io_uring_queue_init_params(4, &ring, &p);
	if (r < 0) {
		trial_failed(r);
		return false;
	}
	if (features)
		*features = p.features;
	io_uring_queue_exit(&ring);
	return true;
}

/* net: register a one-entry buffer ring with IOU_PBUF_RING_INC; kernels before 6.12
 * refuse the flag with EINVAL. */
static bool
probe_pbuf_inc(struct io_uring *ring)
{
	struct keel_buf_reg reg;
	void *mem;
	bool ok;
	int r;

	mem = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED) {
		trial_failed(-errno);
		return false;
	}
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uintptr_t)mem;
	reg.ring_entries = 1;
	reg.bgid = 0;
	reg.flags = IOU_PBUF_RING_INC;
	r = io_uring_register_buf_ring(ring, (struct io_uring_buf_reg *)&reg, 0);
	trial_failed(r);
	ok = r == 0;
	if (ok)
		io_uring_unregister_buf_ring(ring, 0);
	munmap(mem, 4096);
	return ok;
}

#ifdef KEEL_FAULTS
_Atomic unsigned keel__fault_probe_submit;
#endif

/* Submit the one SQE a probe prepared on @ring and wait for its result (*res, and its
 * completion's flags in *flags when not NULL). A submit that fails is no verdict on the
 * feature: a shortage (-EAGAIN, -ENOMEM: memory pressure at the first start) is noted, so
 * that the probe is made again rather than cache the feature as missing; a signal's
 * interruption is waited through. False: no result. */
static bool
probe_submit(struct io_uring *ring, int *res, unsigned *flags)
{
	struct io_uring_cqe *cqe;
	int r;

	do {
#ifdef KEEL_FAULTS
		if (keel__fault_take(&keel__fault_probe_submit)) {
			r = -ENOMEM;
			break;
		}
#endif
		r = io_uring_submit_and_wait(ring, 1);
	} while (r == -EINTR);
	if (r < 0) {
		trial_failed(r);
		return false;
	}
	if (io_uring_peek_cqe(ring, &cqe) != 0)
		return false;
	*res = cqe->res;
	if (flags)
		*flags = cqe->flags;
	io_uring_cqe_seen(ring, cqe);
	return true;
}

/* uring_cmd socket operations (Linux 6.7; liburing 2.3 has no names for them). */
#define SOCKET_OP_GETSOCKOPT 2
#define SOCKET_OP_SETSOCKOPT 3

void
keel__sqe_sockopt(struct io_uring_sqe *sqe, int fd, bool get, int level, int name, void *val,
		  uint32_t len)
{
	/* struct io_uring_sqe of 6.7: cmd_op at 8, level/optname at 16, optlen at 44, optval
	 * at 48; liburing 2.3 lacks the names. */
	uint8_t *b = (uint8_t *)sqe;
	uint32_t cmd_op = get ? SOCKET_OP_GETSOCKOPT : SOCKET_OP_SETSOCKOPT;
	uint32_t lv = (uint32_t)level, nm = (uint32_t)name;
	uint64_t optval = (uint64_t)(uintptr_t)val;

	_Static_assert(sizeof(struct io_uring_sqe) == 64, "the 64-byte SQE");
	io_uring_prep_rw(IORING_OP_URING_CMD, sqe, fd, NULL, 0, 0);
	memcpy(b + 8, &cmd_op, 4);
	memcpy(b + 16, &lv, 4);
	memcpy(b + 20, &nm, 4);
	memcpy(b + 44, &len, 4);
	memcpy(b + 48, &optval, 8);
}

/* Whether the kernel takes socket commands through the ring (SOCKET_URING_OP_GETSOCKOPT,
 * Linux 6.7), which options of a direct descriptor need: SO_TYPE of a UDP socket. Without
 * it, or an older kernel, the command fails with -EOPNOTSUPP. Not a Unix socket: kernels
 * from 6.7 until a later fix refuse every command on a socket whose protocol has no ioctl,
 * which Unix sockets' lack, so the probe would call a kernel that has the commands one
 * that has not. */
static bool
probe_sock_cmd(const struct keel_caps *c, struct io_uring *ring)
{
	struct io_uring_sqe *sqe;
	int fd, res = -EOPNOTSUPP, v = 0;

	if (!c->op_supported[IORING_OP_URING_CMD])
		return false;
	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		trial_failed(-errno);
		return false;
	}
	sqe = io_uring_get_sqe(ring);
	if (sqe) {
		keel__sqe_sockopt(sqe, fd, true, SOL_SOCKET, SO_TYPE, &v, sizeof(v));
		probe_submit(ring, &res, NULL);
	}
	close(fd);
	return res >= 0 && v == SOCK_DGRAM;
}

/* Whether SEND_ZC takes IORING_SEND_ZC_REPORT_USAGE, which keel's zero-copy sends ask for
 * (Linux 6.2; 6.1 has SEND_ZC without it and fails such a send with -EINVAL). A send on an
 * eventfd: the flags are checked first (-EINVAL without it), then the socket (-ENOTSOCK). */
static bool
probe_zc_report(const struct keel_caps *c, struct io_uring *ring)
{
	struct io_uring_sqe *sqe;
	struct io_uring_cqe *cqe;
	static char byte;
	unsigned flags = 0;
	int fd, res = -EINVAL;

	if (!c->op_supported[IORING_OP_SEND_ZC])
		return false;
	fd = eventfd(0, EFD_CLOEXEC);
	if (fd < 0)
		trial_failed(-errno);
	sqe = fd >= 0 ? io_uring_get_sqe(ring) : NULL;
	if (!sqe) {
		if (fd >= 0)
			close(fd);
		return false;
	}
	io_uring_prep_send_zc(sqe, fd, &byte, 1, 0, 0);
	sqe->ioprio |= IORING_SEND_ZC_REPORT_USAGE;
	/* A send that failed at issue may still post its notification: taken here, so the
	 * next probe on this ring reads its own completion. */
	if (probe_submit(ring, &res, &flags) && (flags & IORING_CQE_F_MORE) &&
	    io_uring_wait_cqe(ring, &cqe) == 0)
		io_uring_cqe_seen(ring, cqe);
	close(fd);
	return res != -EINVAL;
}

/* Whether a cancel takes IORING_ASYNC_CANCEL_ANY (Linux 5.19): a shard's stop cancels
 * everything in flight with one. With nothing to cancel it ends -ENOENT; an older kernel
 * refuses the flag (-EINVAL). */
static bool
probe_cancel_any(struct io_uring *ring)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	int res = -EINVAL;

	if (!sqe)
		return false;
	io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
	probe_submit(ring, &res, NULL);
	return res != -EINVAL;
}

#ifdef KEEL_FAULTS
/* KEEL_TEST_HIDE_OPS="OP[,OP...]" (KEEL_FAULTS builds only): the probe reports these io_uring
 * opcodes (numbers, as in io_uring.h) unsupported, so a test can run the paths of a kernel
 * without them. A malformed list is a broken test: say so and stop. */
static void
hide_ops(struct keel_caps *c)
{
	const char *v = getenv("KEEL_TEST_HIDE_OPS"), *p = v;

	if (!v)
		return;
	for (;;) {
		char *end = NULL;
		unsigned long op = 0;

		errno = 0;
		if (*p >= '0' && *p <= '9')
			op = strtoul(p, &end, 10);
		if (!end || errno || op > 255 || (*end && *end != ',')) {
			fprintf(stderr,
				"keel: KEEL_TEST_HIDE_OPS='%s': want io_uring opcode numbers "
				"0-255, separated by commas\n",
				v);
			exit(2);
		}
		c->op_supported[op] = false;
		if (!*end)
			break;
		p = end + 1;
	}
	keel_log(KEEL_LOG_WARN, "core",
		 "KEEL_TEST_HIDE_OPS=%s: these io_uring opcodes are reported unsupported (a test "
		 "build)",
		 v);
}
#endif

static void
probe(struct keel_caps *c)
{
	struct utsname u;
	struct io_uring ring;
	struct io_uring_probe *pr;
	int r;

	probe_short = 0;
	if (uname(&u) == 0)
		snprintf(c->kernel, sizeof(c->kernel), "%s", u.release);
	r = io_uring_queue_init(4, &ring, 0);
	if (r < 0) {
		c->probe_status = r;
		return;
	}
	/* Not io_uring_get_probe_ring: it answers NULL for a refused register as for a
	 * failed allocation, and a seccomp profile that allows the ring but not
	 * io_uring_register would be reported as a memory shortage. */
	pr = calloc(1, sizeof(*pr) + 256 * sizeof(pr->ops[0]));
	r = pr ? io_uring_register_probe(&ring, pr, 256) : -ENOMEM;
	if (r >= 0) {
		c->last_op = pr->last_op;
		for (unsigned i = 0; i < pr->ops_len && i < 256; i++)
			c->op_supported[pr->ops[i].op] = pr->ops[i].flags & IO_URING_OP_SUPPORTED;
	} else if (probe_short_of(r)) {
		trial_failed(r);
	} else {
		c->register_status = r;
	}
	free(pr);
#ifdef KEEL_FAULTS
	hide_ops(c);
#else
	if (getenv("KEEL_TEST_HIDE_OPS"))
		keel_log(KEEL_LOG_WARN, "core",
			 "KEEL_TEST_HIDE_OPS is set but this build has no fault injection: ignored "
			 "(configure with -DKEEL_FAULTS=ON, a non-Release build)");
#endif
	/* -EBUSY: this thread has registered the most ring descriptors a thread may (16);
	 * the kernel has the feature, and each shard's thread has its own 16. */
	r = io_uring_register_ring_fd(&ring);
	c->reg_ring_fd = r == -EBUSY || reg_ok(r);
	c->reg_buffers = reg_ok(io_uring_register_buffers_sparse(&ring, 1));
	/* net: a sparse file table, and a trial incremental buffer ring. */
	c->sparse_files = reg_ok(io_uring_register_files_sparse(&ring, 1));
	c->pbuf_inc = probe_pbuf_inc(&ring);
	c->zc_report_usage = probe_zc_report(c, &ring);
	c->sock_cmd = probe_sock_cmd(c, &ring);
	/* After a probe whose submit failed, its SQE may still wait in the ring: the next
	 * submit would send it too (a SEND_ZC on a closed descriptor's number) and read its
	 * completion for the cancel's. The probe is short then, made again, so none is made. */
	c->cancel_any = !probe_short && probe_cancel_any(&ring);
	io_uring_queue_exit(&ring);

	setup_ok(0, &c->ring_features);
	c->single_issuer = setup_ok(IORING_SETUP_SINGLE_ISSUER, NULL);
	c->defer_taskrun = setup_ok(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN, NULL);
	c->coop_taskrun = setup_ok(IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG, NULL);
	if (probe_short)
		c->probe_status = probe_short;
}

const struct keel_caps *
keel_caps_get(void)
{
	struct keel_caps c;

	if (atomic_load_explicit(&caps_done, memory_order_acquire))
		return &caps;
	pthread_mutex_lock(&caps_lock);
	if (!atomic_load_explicit(&caps_done, memory_order_relaxed)) {
		memset(&c, 0, sizeof(c));
		probe(&c);
		if (probe_short_of(c.probe_status)) {
			pthread_mutex_unlock(&caps_lock);
			caps_failed = c;
			return &caps_failed;
		}
		caps = c;
		atomic_store_explicit(&caps_done, true, memory_order_release);
	}
	pthread_mutex_unlock(&caps_lock);
	return &caps;
}

struct feature_req {
	bool have;
	const char *missing; /* why not, with the fix */
};

static struct feature_req
feature_have(const struct keel_caps *c, enum keel_feature f)
{
	switch (f) {
	case KEEL_FEAT_SINGLE_ISSUER:
		return (struct feature_req){
			c->single_issuer, "IORING_SETUP_SINGLE_ISSUER needs Linux 6.0 or later"
		};
	case KEEL_FEAT_DEFER_TASKRUN:
		return (struct feature_req){
			c->defer_taskrun, "IORING_SETUP_DEFER_TASKRUN needs Linux 6.1 or later"
		};
	case KEEL_FEAT_REG_RING_FD:
		return (struct feature_req){ c->reg_ring_fd,
					     "registered ring fds need Linux 5.18 or later" };
	case KEEL_FEAT_REG_BUFFERS:
		return (struct feature_req){ c->reg_buffers,
					     "sparse registered buffers need Linux 5.19 or later" };
	/* net: */
	case KEEL_FEAT_MULTISHOT_ACCEPT:
		/* IORING_OP_SOCKET arrived with multishot accept in 5.19. */
		return (struct feature_req){ c->op_supported[IORING_OP_SOCKET],
					     "multishot accept needs Linux 5.19 or later" };
	case KEEL_FEAT_MULTISHOT_RECV:
		/* IORING_OP_SEND_ZC arrived with multishot recv in 6.0. */
		return (struct feature_req){ c->op_supported[IORING_OP_SEND_ZC],
					     "multishot recv needs Linux 6.0 or later" };
	case KEEL_FEAT_RECV_BUNDLE:
		return (struct feature_req){ (c->ring_features & (1U << 14)) != 0,
					     "IORING_RECVSEND_BUNDLE (IORING_FEAT_RECVSEND_BUNDLE) "
					     "needs Linux 6.10 or later" };
	case KEEL_FEAT_PBUF_INC:
		return (struct feature_req){ c->pbuf_inc,
					     "incremental buffer rings (IOU_PBUF_RING_INC) need "
					     "Linux 6.12 or later" };
	case KEEL_FEAT_DIRECT_FD:
		return (struct feature_req){ c->sparse_files && c->op_supported[IORING_OP_SOCKET],
					     "direct descriptors need Linux 5.19 or later" };
	case KEEL_FEAT_SEND_ZC:
		/* keel's zero-copy sends ask for the copy report (6.2): on 6.1, which has
		 * both opcodes without it, every such send failed with -EINVAL and aborted
		 * its connection. */
		return (struct feature_req){ c->op_supported[IORING_OP_SEND_ZC] &&
						     c->op_supported[IORING_OP_SENDMSG_ZC] &&
						     c->zc_report_usage,
					     "SEND_ZC/SENDMSG_ZC with IORING_SEND_ZC_REPORT_USAGE "
					     "need Linux 6.2 or later" };
	case KEEL_FEAT_MIN_WAIT:
		return (struct feature_req){
			(c->ring_features & IORING_FEAT_MIN_TIMEOUT) != 0,
			"sleeps that gather completions (IORING_FEAT_MIN_TIMEOUT, "
			"--wait-coalesce-us) need Linux 6.12 or later"
		};
	case KEEL_FEAT_TASKRUN_FLAG:
		return (struct feature_req){
			c->coop_taskrun || c->defer_taskrun,
			"IORING_SETUP_TASKRUN_FLAG needs Linux 5.19 or later"
		};
	default:
		return (struct feature_req){ false, "unknown feature" };
	}
}

const char *keel__sys_io_uring_disabled = "/proc/sys/kernel/io_uring_disabled";
const char *keel__sys_io_uring_group = "/proc/sys/kernel/io_uring_group";

/* An integer sysctl (@path), or @dflt where it cannot be read. */
static long
sysctl_long(const char *path, long dflt)
{
	FILE *f = fopen(path, "re");
	long v;

	if (!f)
		return dflt;
	if (fscanf(f, "%ld", &v) != 1)
		v = dflt;
	fclose(f);
	return v;
}

/* kernel.io_uring_disabled is 1: who may still use io_uring, and the fix, into @buf. */
static void
group_why(char *buf, size_t len)
{
	long gid = sysctl_long(keel__sys_io_uring_group, LONG_MIN);
	struct group *g = gid >= 0 ? getgrgid((gid_t)gid) : NULL;

	if (gid < -1) /* not readable (LONG_MIN), or no gid the kernel takes */
		snprintf(buf, len,
			 "sysctl kernel.io_uring_disabled is 1 (only CAP_SYS_ADMIN and the group "
			 "in kernel.io_uring_group): run the program in that group, or set it to "
			 "0");
	else if (gid == -1)
		snprintf(
			buf, len,
			"sysctl kernel.io_uring_disabled is 1 and kernel.io_uring_group is %ld (no "
			"group): only CAP_SYS_ADMIN may use io_uring; set kernel.io_uring_group to "
			"a group of the user's, or kernel.io_uring_disabled to 0",
			gid);
	else
		snprintf(buf, len,
			 "sysctl kernel.io_uring_disabled is 1: only CAP_SYS_ADMIN and group %s "
			 "(gid %ld, kernel.io_uring_group) may use io_uring: add the user to it "
			 "(usermod -aG %s USER, then log in again), or set "
			 "kernel.io_uring_disabled to 0",
			 g ? g->gr_name : "without a name here", gid, g ? g->gr_name : "GROUP");
}

/* The probe's io_uring_register refused (keel_caps.register_status), with the fix. */
static const char register_refused_why[] =
	"io_uring_register is refused though io_uring_setup is allowed: a seccomp filter (a "
	"container runtime's profile) lets the ring be made but not set up; keel registers "
	"buffer rings, buffers and files: allow io_uring_register in the profile";

/* Why io_uring_setup was refused (@err, its -errno), with the fix, into @buf: the sysctl
 * when it says so, else what else refuses it (it named the sysctl whatever it read, where
 * a container's seccomp profile is the usual cause). */
static const char *
unavailable_why(int err, char *buf, size_t len)
{
	long v = sysctl_long(keel__sys_io_uring_disabled, -1);
	struct utsname u;

	if (err == -EPERM && v == 2)
		snprintf(buf, len,
			 "sysctl kernel.io_uring_disabled is 2 (off for every process): set it "
			 "to 0");
	else if (err == -EPERM && v == 1)
		group_why(buf, len);
	else if (err == -EPERM)
		snprintf(buf, len,
			 "the kernel allows it (kernel.io_uring_disabled is %s), so a seccomp "
			 "filter refuses it (a container runtime's default profile): allow "
			 "io_uring_setup, io_uring_enter and io_uring_register in the profile",
			 v == 0 ? "0" : "not readable here");
	else if (err == -ENOSYS)
		snprintf(buf, len,
			 "this kernel (%s) has no io_uring (built without CONFIG_IO_URING), or a "
			 "seccomp filter answers ENOSYS for it: keel needs Linux 5.19 or later "
			 "with io_uring (6.1 or later for DEFER_TASKRUN)",
			 uname(&u) == 0 ? u.release : "its release unknown");
	else
		snprintf(buf, len,
			 "keel needs Linux 5.19 or later with io_uring enabled (6.1 or later for "
			 "DEFER_TASKRUN); this kernel is %s",
			 uname(&u) == 0 ? u.release : "of a release unknown");
	return buf;
}

int
keel_features_decide(const struct keel_opts *opts, struct keel_feature_decision *out)
{
	const char *feat = keel__opt_name(opts, "--feature");
	const struct keel_caps *c = keel_caps_get();
	int err = 0;

	if (probe_short_of(c->probe_status)) {
		keel_log(KEEL_LOG_ERROR, "core",
			 "the io_uring capability probe could not run (%s): %s; it runs again at "
			 "the next start",
			 strerror(-c->probe_status), probe_short_why(c->probe_status));
		return c->probe_status;
	}
	if (c->probe_status < 0) {
		char why[512];

		keel_log(KEEL_LOG_ERROR, "core", "io_uring is not available (%s): %s",
			 strerror(-c->probe_status),
			 unavailable_why(c->probe_status, why, sizeof(why)));
		return c->probe_status;
	}
	if (c->register_status < 0) {
		keel_log(KEEL_LOG_ERROR, "core", "%s: %s", strerror(-c->register_status),
			 register_refused_why);
		return c->register_status;
	}
	/* What every shard's loop needs, with no fallback: a stop that cancels everything at
	 * once (else the shard never goes quiet and the join hangs), and sleeps bounded by
	 * their argument (else liburing adds a timeout request of its own that the loop would
	 * take for one of keel's). */
	if (!c->cancel_any || !(c->ring_features & IORING_FEAT_EXT_ARG)) {
		keel_log(KEEL_LOG_ERROR, "core",
			 "this kernel (%s) lacks %s, which keel's shard loop needs (no fallback): "
			 "keel needs Linux 5.19 or later, and 6.1 or later for DEFER_TASKRUN",
			 c->kernel,
			 !c->cancel_any ? "IORING_ASYNC_CANCEL_ANY (Linux 5.19)"
					: "IORING_FEAT_EXT_ARG (Linux 5.11)");
		return -ENOTSUP;
	}
	for (int f = 0; f < KEEL_FEAT__COUNT; f++) {
		struct feature_req fr = feature_have(c, (enum keel_feature)f);
		enum keel_policy p = opts->features[f];

		out[f].policy = p;
		/* The feature this one needs, where that one is off and this one is had: the fix
		 * of a forced-on one is then a policy, not a kernel. */
		enum keel_feature need = KEEL_FEAT__COUNT;

		/* DEFER_TASKRUN requires SINGLE_ISSUER. */
		if (f == KEEL_FEAT_DEFER_TASKRUN && !out[KEEL_FEAT_SINGLE_ISSUER].used && fr.have) {
			fr.have = false;
			fr.missing = "DEFER_TASKRUN requires single_issuer, which is off";
			need = KEEL_FEAT_SINGLE_ISSUER;
		}
		/* Without DEFER_TASKRUN a waiter past the minimum wait is not woken by
		 * completions posted straight to the CQ on kernels before 6.19 (fixed in
		 * "io_uring: fix min_wait wakeups for SQPOLL", backported to stable). */
		if (f == KEEL_FEAT_MIN_WAIT && !out[KEEL_FEAT_DEFER_TASKRUN].used && fr.have) {
			fr.have = false;
			fr.missing = "gathering sleeps require defer_taskrun, which is off";
			need = KEEL_FEAT_DEFER_TASKRUN;
		}

		if (p == KEEL_POLICY_OFF) {
			out[f].used = false;
			out[f].reason = "forced off by policy";
		} else if (f == KEEL_FEAT_TASKRUN_FLAG && p == KEEL_POLICY_AUTO && fr.have &&
			   !opts->idle_poll_us) {
			/* Only passes that do not sleep read it; raising it costs every waker of
			 * the ring a write to a line the shard clears (architecture.md, step 6). */
			out[f].used = false;
			out[f].reason =
				"the shards do not poll (--idle-poll-us 0); on: set it anyway";
		} else if (fr.have && f == KEEL_FEAT_SEND_ZC && !out[KEEL_FEAT_REG_BUFFERS].used) {
			/* TCP's zero-copy sends go from fixed buffers only; UDP's (sendmsg_zc
			 * from any memory) do not need them. It said "used" while every TCP send
			 * went out plain. */
			out[f].used = true;
			out[f].reason =
				"UDP only: TCP's zero-copy sends go from registered buffers, "
				"and reg_buffers is off (--feature reg_buffers=auto|on)";
		} else if (fr.have) {
			out[f].used = true;
			out[f].reason =
				p == KEEL_POLICY_ON ? "forced on; kernel has it" : "kernel has it";
		} else {
			out[f].used = false;
			out[f].reason = fr.missing;
			if (p == KEEL_POLICY_ON && need != KEEL_FEAT__COUNT) {
				/* Had by the kernel, and off only through the other's state:
				 * "use auto to fall back" was no fix for a contradiction. */
				const char *fn = keel_feature_name((enum keel_feature)f);
				const char *nn = keel_feature_name(need);
				bool off = out[need].policy == KEEL_POLICY_OFF;

				keel_log(KEEL_LOG_ERROR, "core",
					 "feature %s is forced on but needs %s, which is not used "
					 "(%s): %s%s%s%s%s%s %s=auto to fall back",
					 fn, nn, out[need].reason, off ? "drop " : "",
					 off ? feat : "", off ? " " : "", off ? nn : "",
					 off ? "=off, or use " : "use ", feat, fn);
				err = -EOPNOTSUPP;
			} else if (p == KEEL_POLICY_ON) {
				keel_log(KEEL_LOG_ERROR, "core",
					 "feature %s is forced on but unavailable: %s (kernel %s); "
					 "use %s %s=auto to fall back",
					 keel_feature_name((enum keel_feature)f), fr.missing,
					 c->kernel, feat, keel_feature_name((enum keel_feature)f));
				err = -EOPNOTSUPP;
			}
		}
	}
	return err;
}

void
keel__features_log(const struct keel_opts *opts, const struct keel_feature_decision *d)
{
	const char *feat = keel__opt_name(opts, "--feature");

	/* 'on' means "require it": TCP's sends going plain is a change of what was asked for
	 * (accepted, UDP's still go zero-copy), not a detail for DEBUG. */
	if (d[KEEL_FEAT_SEND_ZC].used && d[KEEL_FEAT_SEND_ZC].policy == KEEL_POLICY_ON &&
	    !d[KEEL_FEAT_REG_BUFFERS].used)
		keel_log(KEEL_LOG_WARN, "core",
			 "%s send_zc=on: only UDP sends go zero-copy; TCP's go from "
			 "registered buffers and reg_buffers is not used (%s): TCP sends go plain; "
			 "give %s reg_buffers=auto|on",
			 feat, d[KEEL_FEAT_REG_BUFFERS].reason, feat);
	for (int f = 0; f < KEEL_FEAT__COUNT; f++) {
		if (d[f].used)
			keel_log(KEEL_LOG_DEBUG, "core", "feature %s: used (%s)",
				 keel_feature_name((enum keel_feature)f), d[f].reason);
		else
			keel_log(KEEL_LOG_INFO, "core", "feature %s: not used (%s)",
				 keel_feature_name((enum keel_feature)f), d[f].reason);
	}
}

bool
keel_feature_used(enum keel_feature f)
{
	struct keel_shard *s = cur_shard(__func__);
	return (unsigned)f < KEEL_FEAT__COUNT && s->rt->features[f].used;
}

/* One row of the capability matrix: what the kernel has, since when, and what keel uses it
 * for. */
struct cap_row {
	const char *name;
	bool have;
	const char *since;
	const char *use;
};

static bool
op(const struct keel_caps *c, unsigned o)
{
	return o < 256 && c->op_supported[o];
}

static bool
feat(const struct keel_caps *c, uint32_t bit)
{
	return c->ring_features & bit;
}

void
keel_caps_print(const struct keel_opts *opts, FILE *f)
{
	const struct keel_caps *c = keel_caps_get();
	struct keel_feature_decision d[KEEL_FEAT__COUNT];
	unsigned nops = 0;

	fprintf(f, "kernel %s\n", c->kernel);
	if (probe_short_of(c->probe_status)) {
		/* Not the kernel's answer: the probe's own want, tried again at the next call. */
		fprintf(f,
			"io_uring capabilities not probed: %s: %s; it runs again at the next "
			"call\n",
			strerror(-c->probe_status), probe_short_why(c->probe_status));
		return;
	}
	if (c->probe_status < 0) {
		char why[512];

		fprintf(f, "io_uring unavailable: %s: %s\n", strerror(-c->probe_status),
			unavailable_why(c->probe_status, why, sizeof(why)));
		return;
	}
	if (c->register_status < 0) {
		fprintf(f, "io_uring unusable: %s: %s\n", strerror(-c->register_status),
			register_refused_why);
		return;
	}
	for (unsigned i = 0; i < 256; i++)
		nops += c->op_supported[i];
	fprintf(f, "ring features 0x%x, %u opcodes supported (last %u)\n\n", c->ring_features, nops,
		c->last_op);

	const struct cap_row rows[] = {
		{ "SINGLE_ISSUER", c->single_issuer, "6.0",
		  "one submitter per ring: cheaper locking" },
		{ "DEFER_TASKRUN", c->defer_taskrun, "6.1",
		  "completions run only when the shard asks" },
		{ "COOP_TASKRUN", c->coop_taskrun, "5.19", "fallback without DEFER_TASKRUN" },
		{ "registered ring fd", c->reg_ring_fd, "5.18", "no fd lookup per io_uring_enter" },
		{ "CQ overflow held", feat(c, IORING_FEAT_NODROP), "5.5",
		  "a full CQ (--cq-entries) loses no completion" },
		{ "ASYNC_CANCEL_ANY", c->cancel_any, "5.19",
		  "a shard's stop cancels everything at once" },
		{ "EXT_ARG waits", feat(c, IORING_FEAT_EXT_ARG), "5.11",
		  "sleep until the next timer" },
		{ "CQE_SKIP_SUCCESS", feat(c, IORING_FEAT_CQE_SKIP), "5.17",
		  "silent MSG_RING wake-ups" },
		{ "MSG_RING", op(c, IORING_OP_MSG_RING), "5.18", "wake a sleeping shard" },
		{ "sparse fixed buffers", c->reg_buffers, "5.19", "registered shard memory" },
		{ "sparse fixed files", c->sparse_files, "5.19", "direct descriptors" },
		{ "multishot accept", op(c, IORING_OP_ACCEPT) && c->sparse_files, "5.19",
		  "one accept SQE per listener" },
		{ "SEND_ZC", op(c, IORING_OP_SEND_ZC), "6.0",
		  "zero-copy sends from fixed buffers" },
		{ "SENDMSG_ZC", op(c, IORING_OP_SENDMSG_ZC), "6.1", "zero-copy UDP datagrams" },
		{ "SEND_ZC copy report", c->zc_report_usage, "6.2",
		  "keel's zero-copy sends need it (REPORT_USAGE)" },
		{ "socket commands", c->sock_cmd, "6.7", "socket options of direct descriptors" },
		{ "RECVSEND_BUNDLE", feat(c, 1U << 14), "6.10", "one CQE spans several buffers" },
		{ "incremental buffers", c->pbuf_inc, "6.12", "small messages share a buffer" },
		{ "min-timeout waits", feat(c, IORING_FEAT_MIN_TIMEOUT), "6.12",
		  "sleeps that gather (--wait-coalesce-us)" },
		{ "RECV_ZC opcode (ZCRX)", op(c, KEEL_IORING_OP_RECV_ZC), "6.15",
		  "zero-copy receive; needs a NIC with header/data split (keel-topo)" },
	};
	fprintf(f, "%-22s %-4s %-6s %s\n", "capability", "here", "since", "keel uses it for");
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
		fprintf(f, "%-22s %-4s %-6s %s\n", rows[i].name, rows[i].have ? "yes" : "no",
			rows[i].since, rows[i].use);

	memset(d, 0, sizeof(d));
	if (keel_features_decide(opts, d) < 0 && !d[0].reason) {
		/* Refused before any feature was decided (the loop's needs): logged above. */
		fprintf(f, "\nno feature decided: keel's shard loop cannot run on this kernel "
			   "(the line above says what it lacks)\n");
		return;
	}
	fprintf(f, "\n%-16s %-6s %-5s %s\n", "feature", "policy", "used", "why");
	for (int i = 0; i < KEEL_FEAT__COUNT; i++)
		fprintf(f, "%-16s %-6s %-5s %s\n", keel_feature_name((enum keel_feature)i),
			keel_policy_name(d[i].policy), d[i].used ? "yes" : "no", d[i].reason);
}
