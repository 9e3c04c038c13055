// SPDX-License-Identifier: MIT
/*
 * RLIMIT_MEMLOCK: in a forked child that drops CAP_IPC_LOCK and lowers the limit below one
 * region, a runtime with reg_buffers=auto runs with unregistered buffers (plain sends that
 * deliver) after one log line naming the limit and the fix; with reg_buffers=on start-up
 * fails with that message.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <keel/keel.h>
#include <keel/ring.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

#define LEN 4096

static struct logcap cap = { PTHREAD_MUTEX_INITIALIZER, "", 0 };

struct ml_state {
	struct keel_op op;
	int fd;
	struct keel_slice s;
	int registered[2];
	int fixed;
	int zc;
	int sent;
};

static void
ml_sent(struct keel_op *op, int res, uint32_t flags)
{
	struct ml_state *st = (struct ml_state *)op;

	st->sent = res;
	if (!(flags & IORING_CQE_F_MORE)) {
		keel_slice_put(&st->s);
		keel_stop(0);
	}
}

static void
ml_start(void *app)
{
	struct ml_state *st = app;
	unsigned id = keel_shard_id(keel_this_shard()), idx;
	uint64_t off;
	struct io_uring_sqe *sqe;

	st->registered[id] = keel_shard_bufs_registered();
	if (id != 0)
		return;
	if (keel_buf_alloc(keel_shard_alloc(), LEN, &st->s) < 0) {
		keel_stop(-ENOMEM);
		return;
	}
	memset(st->s.data, 'k', LEN);
	st->fixed = keel_buf_fixed(&st->s, &idx, &off);
	sqe = keel_sqe_get();
	st->zc = keel_prep_send_buf(sqe, st->fd, &st->s, 0);
	st->op.fn = ml_sent;
	keel_sqe_bind(sqe, &st->op);
}

static int
drop_cap_ipc_lock(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct d[2];
	unsigned w = CAP_IPC_LOCK / 32, bit = 1u << (CAP_IPC_LOCK % 32);

	/* Out of the bounding set too (needs CAP_SETPCAP; harmless when it fails). */
	prctl(PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0);
	if (syscall(SYS_capget, &h, d) < 0)
		return -errno;
	d[w].effective &= ~bit;
	d[w].permitted &= ~bit;
	d[w].inheritable &= ~bit;
	if (syscall(SYS_capset, &h, d) < 0)
		return -errno;
	if (syscall(SYS_capget, &h, d) < 0 || (d[w].effective & bit))
		return -EPERM;
	return 0;
}

/* The child: returns 0, or writes what went wrong to @out and returns 1. */
static int
child(char *out, size_t len)
{
	struct rlimit rl = { 1 << 20, 1 << 20 }; /* below one 4 MiB region */
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	struct keel_opts o;
	struct ml_state st = { 0 };
	char got[LEN];
	int l, fds[2], r;
	size_t n = 0;

	if ((r = drop_cap_ipc_lock()) < 0)
		return snprintf(out, len, "dropping CAP_IPC_LOCK: %s", strerror(-r)), 1;
	if (setrlimit(RLIMIT_MEMLOCK, &rl) < 0)
		return snprintf(out, len, "setrlimit: %s", strerror(errno)), 1;
	l = socket(AF_INET, SOCK_STREAM, 0);
	if (bind(l, (struct sockaddr *)&sa, sizeof(sa)) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&sa, &sl))
		return snprintf(out, len, "listen: %s", strerror(errno)), 1;
	fds[0] = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(fds[0], (struct sockaddr *)&sa, sizeof(sa)) ||
	    (fds[1] = accept(l, NULL, NULL)) < 0)
		return snprintf(out, len, "connect: %s", strerror(errno)), 1;

	keel_log_set_sink(logcap_keel_sink, &cap);
	keel_opts_init(&o);
	/* The ring's own pages count against the low limit too (without CAP_IPC_LOCK): keep
	 * the CQ at its old size, so only the buffer registration this test is about can fail. */
	o.cq_entries = 1024;
	o.shards = 2;
	o.signals = false;
	o.log_level = KEEL_LOG_INFO;
	o.idle_poll_us = 0; /* two tests at once on two cores: no spinning shards */
	o.memory = 16 << 20;
	st.fd = fds[0];
	r = keel_run(&o, ml_start, &st);
	if (r != 0)
		return snprintf(out, len, "auto: keel_run = %d; log: %s", r, cap.text), 1;
	if (st.registered[0] || st.registered[1])
		return snprintf(out, len, "auto: a shard claims registered buffers"), 1;
	if (st.fixed != -ENOMEM) /* region 0's failure, that region's */
		return snprintf(out, len, "auto: keel_buf_fixed = %d, want -ENOMEM", st.fixed), 1;
	if (st.zc != 0 || st.sent != LEN)
		return snprintf(out, len, "auto: zc %d, sent %d", st.zc, st.sent), 1;
	while (n < LEN) {
		ssize_t k = recv(fds[1], got + n, LEN - n, 0);
		if (k <= 0)
			return snprintf(out, len, "recv: %s", strerror(errno)), 1;
		n += (size_t)k;
	}
	for (size_t i = 0; i < LEN; i++)
		if (got[i] != 'k')
			return snprintf(out, len, "byte %zu arrived wrong", i), 1;
	if (logcap_count(&cap, "RLIMIT_MEMLOCK") != 1 || !logcap_has(&cap, "ulimit -l") ||
	    !logcap_has(&cap, "LimitMEMLOCK="))
		return snprintf(out, len, "auto: want one line naming the limit and the fix: %s",
				cap.text),
		       1;

	/* Policy on: start-up fails with the message. */
	cap.len = 0;
	cap.text[0] = 0;
	o.features[KEEL_FEAT_REG_BUFFERS] = KEEL_POLICY_ON;
	r = keel_run(&o, NULL, NULL);
	if (r >= 0)
		return snprintf(out, len, "on: keel_run = %d, want a failure", r), 1;
	if (!logcap_has(&cap, "RLIMIT_MEMLOCK") || !logcap_has(&cap, "ulimit -l") ||
	    !logcap_has(&cap, "LimitMEMLOCK="))
		return snprintf(out, len, "on: no message naming the limit and fix: %s", cap.text),
		       1;
	return 0;
}

Test(alloc_memlock, low_rlimit_without_cap_ipc_lock_falls_back_or_fails_when_forced)
{
	int p[2], status;
	char msg[2048] = "";
	pid_t pid;

	cr_assert_eq(pipe(p), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		char out[2048] = "";
		int rc = child(out, sizeof(out));
		if (write(p[1], out, strlen(out)) < 0)
			rc = 2;
		_exit(rc);
	}
	close(p[1]);
	status = wait_child_output(pid, p[0], msg, sizeof(msg), TEST_WAIT_MS, "the memlock child");
	close(p[0]);
	cr_assert(WIFEXITED(status), "child died (status %#x)", status);
	cr_assert_eq(WEXITSTATUS(status), 0, "%s", msg);
}

/* ---- mid-run: region 0 registers, region 1 does not ---- */

struct mr_state {
	struct keel_op nop;
	int fixed0, fixed1, reg_before, reg_after, prep1;
};

static void
mr_nop_done(struct keel_op *op, int res, uint32_t flags)
{
}

static void
mr_start(void *app)
{
	struct mr_state *st = app;
	struct io_uring_sqe *sqe;
	struct keel_slice s0, s1;
	unsigned idx;
	uint64_t off;

	/* Region-sized: one buffer per region. */
	if (keel_buf_alloc(keel_shard_alloc(), 4 << 20, &s0) < 0 ||
	    keel_buf_alloc(keel_shard_alloc(), 4 << 20, &s1) < 0) {
		keel_stop(-ENOMEM);
		return;
	}
	st->reg_before = keel_shard_bufs_registered();
	st->fixed0 = keel_buf_fixed(&s0, &idx, &off);
	st->fixed1 = keel_buf_fixed(&s1, &idx, &off);
	st->reg_after = keel_shard_bufs_registered();
	/* Prepared only, never submitted: the sqe is turned into a nop either way. */
	sqe = keel_sqe_get();
	st->prep1 = keel_prep_send_buf(sqe, -1, &s1, 0);
	io_uring_prep_nop(sqe);
	st->nop.fn = mr_nop_done;
	keel_sqe_bind(sqe, &st->nop);
	keel_slice_put(&s0);
	keel_slice_put(&s1);
	keel_stop(0);
}

/* Pin @len bytes in a ring of our own: the kernel counts them against the same per-user
 * RLIMIT_MEMLOCK, so region 0 fits under the limit and region 1 does not. */
static int
pin_bytes(struct io_uring *ring, void **mem, size_t len)
{
	struct iovec iov;
	int r = io_uring_queue_init(4, ring, 0);

	if (r < 0)
		return r;
	if (posix_memalign(mem, 4096, len))
		return -ENOMEM;
	memset(*mem, 0, len);
	iov.iov_base = *mem;
	iov.iov_len = len;
	return io_uring_register_buffers(ring, &iov, 1);
}

static int
midrun_child(char *out, size_t len, int on)
{
	struct rlimit rl = { 8 << 20, 8 << 20 }; /* --memory 8M passes the start-up check */
	struct io_uring pin;
	void *mem;
	struct keel_opts o;
	struct mr_state st;
	int r;

	if (setrlimit(RLIMIT_MEMLOCK, &rl) < 0)
		return snprintf(out, len, "setrlimit: %s", strerror(errno)), 1;
	/* A user of its own: the kernel counts pinned pages per user, and unpins a ring's
	 * buffers asynchronously after it exits; other tests' rings must not count here.
	 * Leaving root drops CAP_IPC_LOCK with every other capability. */
	if (setgid((gid_t)(200000 + getpid())) < 0 || setuid((uid_t)(200000 + getpid())) < 0)
		return snprintf(out, len, "setuid: %s", strerror(errno)), 1;
	if ((r = drop_cap_ipc_lock()) < 0)
		return snprintf(out, len, "dropping CAP_IPC_LOCK: %s", strerror(-r)), 1;
	if ((r = pin_bytes(&pin, &mem, 2 << 20)) < 0)
		return snprintf(out, len, "pinning 2 MiB: %s", strerror(-r)), 1;
	keel_log_set_sink(logcap_keel_sink, &cap);
	keel_opts_init(&o);
	/* The ring's own pages count against the low limit too (without CAP_IPC_LOCK): keep
	 * the CQ at its old size, so only the buffer registration this test is about can fail. */
	o.cq_entries = 1024;
	o.shards = 1;
	o.signals = false;
	o.log_level = KEEL_LOG_INFO;
	o.idle_poll_us = 0; /* two tests at once on two cores: no spinning shards */
	o.memory = 8 << 20;
	const char *p = on ? "on" : "auto";
	cap.len = 0;
	cap.text[0] = 0;
	memset(&st, 0, sizeof(st));
	o.features[KEEL_FEAT_REG_BUFFERS] = on ? KEEL_POLICY_ON : KEEL_POLICY_AUTO;
	r = keel_run(&o, mr_start, &st);
	if (r != 0)
		return snprintf(out, len, "%s: keel_run = %d; log: %s", p, r, cap.text), 1;
	if (st.fixed0 != 0 || st.fixed1 != -ENOMEM || !st.reg_before || st.reg_after)
		return snprintf(out, len, "%s: fixed %d/%d, registered() %d then %d; log: %s", p,
				st.fixed0, st.fixed1, st.reg_before, st.reg_after, cap.text),
		       1;
	if (st.prep1 != (on ? -ENOMEM : 0))
		return snprintf(out, len, "%s: keel_prep_send_buf = %d", p, st.prep1), 1;
	/* keel's total pinned so far (region 0), the need, and the fix. */
	if (logcap_count(&cap, "RLIMIT_MEMLOCK") != 1 ||
	    !logcap_has(&cap, "4096 KiB pinned by keel so far") ||
	    !logcap_has(&cap, "8192 KiB needed") || !logcap_has(&cap, "ulimit -l"))
		return snprintf(out, len, "%s: want one line with totals and the fix: %s", p,
				cap.text),
		       1;
	return 0;
}

/* ---- auto: region 0 fails, a later region registers ---- */

/* Region 0's registration failing for the limit (another ring of the user holding pins, as
 * a runtime that just exited does until the kernel releases them) turned registration off
 * for the whole shard: every buffer then answered -EOPNOTSUPP for the rest of the run. It
 * is one region's failure, as memory.md says: that region answers -ENOMEM, and a later
 * region, first used once the pins are gone, registers. */
static struct {
	struct io_uring pin;
	int fixed0, fixed1, registered;
} r0;

static void
r0_start(void *app)
{
	struct keel_slice s0, s1;
	unsigned idx;
	uint64_t off;

	(void)app;
	if (keel_buf_alloc(keel_shard_alloc(), 4 << 20, &s0) < 0 ||
	    keel_buf_alloc(keel_shard_alloc(), 4 << 20, &s1) < 0) {
		keel_stop(-ENOMEM);
		return;
	}
	r0.fixed0 = keel_buf_fixed(&s0, &idx, &off);
	io_uring_unregister_buffers(&r0.pin); /* the other pins go */
	r0.fixed1 = keel_buf_fixed(&s1, &idx, &off);
	r0.registered = keel_shard_bufs_registered();
	keel_slice_put(&s0);
	keel_slice_put(&s1);
	keel_stop(0);
}

static int
region0_child(char *out, size_t len, int unused)
{
	struct rlimit rl = { 8 << 20, 8 << 20 };
	struct keel_opts o;
	void *mem;
	int r;

	(void)unused;
	if (setrlimit(RLIMIT_MEMLOCK, &rl) < 0)
		return snprintf(out, len, "setrlimit: %s", strerror(errno)), 1;
	if (setgid((gid_t)(200000 + getpid())) < 0 || setuid((uid_t)(200000 + getpid())) < 0)
		return snprintf(out, len, "setuid: %s", strerror(errno)), 1;
	if ((r = drop_cap_ipc_lock()) < 0)
		return snprintf(out, len, "dropping CAP_IPC_LOCK: %s", strerror(-r)), 1;
	if ((r = pin_bytes(&r0.pin, &mem, 6 << 20)) < 0) /* 6 + 4 MiB > 8 */
		return snprintf(out, len, "pinning 6 MiB: %s", strerror(-r)), 1;
	keel_log_set_sink(logcap_keel_sink, &cap);
	keel_opts_init(&o);
	o.cq_entries = 1024;
	o.shards = 1;
	o.signals = false;
	o.log_level = KEEL_LOG_INFO;
	o.idle_poll_us = 0;
	o.memory = 8 << 20;
	r = keel_run(&o, r0_start, NULL);
	if (r != 0)
		return snprintf(out, len, "keel_run = %d; log: %s", r, cap.text), 1;
	if (r0.fixed0 != -ENOMEM || r0.fixed1 != 0 || r0.registered)
		return snprintf(out, len,
				"region 0: %d (want -ENOMEM), region 1 after the pins went: %d "
				"(want 0), registered() %d (want 0); log: %s",
				r0.fixed0, r0.fixed1, r0.registered, cap.text),
		       1;
	return 0;
}

/* ---- the fallback line is logged for each runtime of the process ---- */

static void
stop_now(void *app)
{
	keel_stop(0);
}

static int
twice_child(char *out, size_t len, int unused)
{
	struct rlimit rl = { 1 << 20, 1 << 20 };
	struct keel_opts o;
	int r;

	if ((r = drop_cap_ipc_lock()) < 0)
		return snprintf(out, len, "dropping CAP_IPC_LOCK: %s", strerror(-r)), 1;
	if (setrlimit(RLIMIT_MEMLOCK, &rl) < 0)
		return snprintf(out, len, "setrlimit: %s", strerror(errno)), 1;
	keel_log_set_sink(logcap_keel_sink, &cap);
	keel_opts_init(&o);
	/* The ring's own pages count against the low limit too (without CAP_IPC_LOCK): keep
	 * the CQ at its old size, so only the buffer registration this test is about can fail. */
	o.cq_entries = 1024;
	o.shards = 1;
	o.signals = false;
	o.log_level = KEEL_LOG_INFO;
	o.idle_poll_us = 0; /* two tests at once on two cores: no spinning shards */
	o.memory = 16 << 20;
	for (int i = 0; i < 2; i++) {
		struct keel_runtime *rt;
		if ((r = keel_runtime_create(&o, &rt)) < 0 ||
		    (r = keel_runtime_start(rt, stop_now, NULL)) < 0 ||
		    (r = keel_runtime_join(rt)) < 0)
			return snprintf(out, len, "run %d: %d", i, r), 1;
		keel_runtime_destroy(rt);
	}
	if (logcap_count(&cap, "RLIMIT_MEMLOCK") != 2)
		return snprintf(out, len, "want one fallback line per runtime: %s", cap.text), 1;
	return 0;
}

/* Two runtimes at once: the line is one per runtime whatever the other logs between. One
 * process-wide slot held the runtime that last logged, and a runtime that ended cleared it:
 * runtime 1 logged at its start, runtime 2 ran (and logged, and ended) meanwhile, and
 * runtime 1's next failed registration (a region of a buffer asked for later) logged a
 * second line. */
static _Atomic int overlap_go;

static void
overlap_tick(struct keel_timer *t, void *arg)
{
	struct keel_slice sl[2];
	uint32_t idx;
	uint64_t off;

	(void)arg;
	if (!atomic_load(&overlap_go))
		return;
	keel_timer_destroy(t);
	/* Region-sized: the second takes a region of its own, whose registration fails as
	 * the first region's did. */
	if (keel_buf_alloc(keel_shard_alloc(), 4 << 20, &sl[0]) < 0) {
		keel_stop(-ENOMEM);
		return;
	}
	if (keel_buf_alloc(keel_shard_alloc(), 4 << 20, &sl[1]) < 0) {
		keel_slice_put(&sl[0]);
		keel_stop(-ENOMEM);
		return;
	}
	for (int i = 0; i < 2; i++) {
		(void)keel_buf_fixed(&sl[i], &idx, &off);
		keel_slice_put(&sl[i]);
	}
	keel_stop(0);
}

static void
overlap_start(void *app)
{
	struct keel_timer *t;

	(void)app;
	if (keel_timer_create(overlap_tick, NULL, &t) < 0) {
		keel_stop(-ENOMEM);
		return;
	}
	keel_timer_start(t, KEEL_MS(1), KEEL_MS(1));
}

static int
overlap_child(char *out, size_t len, int unused)
{
	struct rlimit rl = { 1 << 20, 1 << 20 };
	struct keel_runtime *rt1, *rt2;
	struct keel_opts o;
	int r, lines;

	(void)unused;
	if ((r = drop_cap_ipc_lock()) < 0)
		return snprintf(out, len, "dropping CAP_IPC_LOCK: %s", strerror(-r)), 1;
	if (setrlimit(RLIMIT_MEMLOCK, &rl) < 0)
		return snprintf(out, len, "setrlimit: %s", strerror(errno)), 1;
	keel_log_set_sink(logcap_keel_sink, &cap);
	keel_opts_init(&o);
	o.cq_entries = 1024; /* as twice_child: only the buffers' registration fails */
	o.shards = 1;
	o.signals = false;
	o.log_level = KEEL_LOG_INFO;
	o.idle_poll_us = 0;
	o.memory = 16 << 20;
	if ((r = keel_runtime_create(&o, &rt1)) < 0 ||
	    (r = keel_runtime_start(rt1, overlap_start, NULL)) < 0)
		return snprintf(out, len, "runtime 1: %d", r), 1;
	/* Runtime 1's start has logged once its shard runs the ticks: wait for its line. */
	for (int i = 0; i < 5000 && !logcap_count(&cap, "RLIMIT_MEMLOCK"); i++)
		usleep(1000);
	if ((r = keel_runtime_create(&o, &rt2)) < 0 ||
	    (r = keel_runtime_start(rt2, stop_now, NULL)) < 0 || (r = keel_runtime_join(rt2)) < 0)
		return snprintf(out, len, "runtime 2: %d", r), 1;
	keel_runtime_destroy(rt2);
	atomic_store(&overlap_go, 1);
	if ((r = keel_runtime_join(rt1)) < 0)
		return snprintf(out, len, "runtime 1's join: %d; log: %s", r, cap.text), 1;
	keel_runtime_destroy(rt1);
	lines = logcap_count(&cap, "RLIMIT_MEMLOCK");
	if (lines != 2)
		return snprintf(out, len, "%d fallback lines for 2 runtimes: %s", lines, cap.text),
		       1;
	return 0;
}

/* The sparse fixed-buffer table itself refused (the kernel's allocation of its table, here
 * a seccomp filter answering ENOMEM to IORING_REGISTER_BUFFERS2 once the probe was made):
 * under auto the shard runs with unregistered buffers, and says so at WARN, as
 * docs/memory.md promises for a failed registration; it was an INFO line, below the default
 * log level, so the fallback was silent. */
static int
sparse_child(char *out, size_t len, int unused)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_register, 0, 3),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, IORING_REGISTER_BUFFERS2, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOMEM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };
	struct keel_runtime *rt;
	struct keel_opts o;
	int r;

	if (!keel_caps_get()->reg_buffers)
		return snprintf(out, len, "SKIP: this kernel has no sparse buffer tables"), 0;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0)
		return snprintf(out, len, "seccomp: %s", strerror(errno)), 1;
	keel_log_set_sink(logcap_keel_sink, &cap);
	keel_opts_init(&o);
	o.shards = 1;
	o.signals = false;
	o.log_level = KEEL_LOG_WARN; /* the default */
	o.idle_poll_us = 0;
	o.memory = 16 << 20;
	if ((r = keel_runtime_create(&o, &rt)) < 0 ||
	    (r = keel_runtime_start(rt, stop_now, NULL)) < 0 || (r = keel_runtime_join(rt)) < 0)
		return snprintf(out, len, "run: %d %s", r, cap.text), 1;
	keel_runtime_destroy(rt);
	if (logcap_count(&cap, "sparse fixed-buffer table") != 1 ||
	    logcap_count(&cap, "unregistered buffers") != 1)
		return snprintf(out, len,
				"want one WARN line naming the table and the fallback: '%s'",
				cap.text),
		       1;
	return 0;
}

static void
run_child(int (*fn)(char *, size_t, int), int arg)
{
	int p[2], status;
	char msg[2048] = "";
	pid_t pid;

	cr_assert_eq(pipe(p), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		char out[2048] = "";
		int rc = fn(out, sizeof(out), arg);
		if (write(p[1], out, strlen(out)) < 0)
			rc = 2;
		_exit(rc);
	}
	close(p[1]);
	status = wait_child_output(pid, p[0], msg, sizeof(msg), TEST_WAIT_MS, "the memlock child");
	close(p[0]);
	cr_assert(WIFEXITED(status), "child died (status %#x)", status);
	cr_assert_eq(WEXITSTATUS(status), 0, "%s", msg);
	if (!strncmp(msg, "SKIP: ", 6))
		cr_skip_test("%s", msg + 6);
}

Test(alloc_memlock, midrun_registration_failure_is_truthful_with_policy_auto)
{
	run_child(midrun_child, 0);
}

Test(alloc_memlock, midrun_registration_failure_is_an_error_with_policy_on)
{
	run_child(midrun_child, 1);
}

Test(alloc_memlock, fallback_line_is_logged_for_a_second_runtime_in_the_process)
{
	run_child(twice_child, 0);
}

Test(alloc_memlock, the_fallback_line_is_one_per_runtime_while_another_runs)
{
	run_child(overlap_child, 0);
}

Test(alloc_memlock, a_failed_region_0_leaves_later_regions_to_register)
{
	run_child(region0_child, 0);
}

Test(alloc_memlock, a_refused_sparse_table_under_auto_is_warned)
{
	run_child(sparse_child, 0);
}
