// SPDX-License-Identifier: MIT
/*
 * Socket options of a connection. A plain descriptor takes setsockopt/getsockopt, called
 * from the loop (a deferred call) so the callback never runs inside the application's
 * call. A direct descriptor has no system call of its own: the option goes through the
 * ring as IORING_OP_URING_CMD with SOCKET_URING_OP_SETSOCKOPT / GETSOCKOPT (Linux 6.7).
 * The kernel's GETSOCKOPT command reads only SOL_SOCKET options, so a get of another level
 * (IPPROTO_TCP, ...) installs a regular copy of the descriptor first
 * (IORING_OP_FIXED_FD_INSTALL, Linux 6.8), reads it with getsockopt and closes the copy.
 * Where the kernel lacks either, the callback gets -EOPNOTSUPP and one line per shard
 * names the kernel needed: no silent fallback.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "net_internal.h"

struct sockopt_op {
	struct keel_op op;
	struct keel_conn *c;
	keel_sockopt_fn cb;
	void *arg;
	bool get;
	int level, name;
	uint32_t len;
	uint8_t val[KEEL_SOCKOPT_MAX];
};

static void
missing(struct net_shard *ns, const char *what, int res)
{
	static _Thread_local bool logged;

	if (logged)
		return;
	logged = true;
	keel_log(KEEL_LOG_WARN, NET_MOD,
		 "shard %u: a socket option of a direct descriptor failed with %s: %s; upgrade "
		 "the kernel, or use --feature direct_fd=off (plain descriptors)",
		 ns->id, strerror(-res), what);
}

static void
finish(struct sockopt_op *o, int status)
{
	struct keel_conn *c = o->c;

	if (o->cb)
		o->cb(c, status, o->get && status >= 0 ? o->val : NULL,
		      o->get && status >= 0 ? (socklen_t)status : 0, o->arg);
	else if (status < 0)
		keel_log(KEEL_LOG_WARN, NET_MOD, "setsockopt level %d option %d: %s", o->level,
			 o->name, strerror(-status));
	free(o);
	keel__conn_unhold(c);
}

/* Plain descriptors (and an installed copy): the system call. */
static int
sys_opt(struct sockopt_op *o, int fd)
{
	socklen_t len = o->len;

	if (o->get)
		return getsockopt(fd, o->level, o->name, o->val, &len) < 0 ? -errno : (int)len;
	return setsockopt(fd, o->level, o->name, o->val, len) < 0 ? -errno : 0;
}

static void
plain_cb(void *arg)
{
	struct sockopt_op *o = arg;
	bool direct;
	int fd = keel__conn_fd(o->c, &direct);

	finish(o, sys_opt(o, fd));
}

static void
cmd_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct sockopt_op *o = container_of(op, struct sockopt_op, op);

	/* Where the kernel has the socket commands (the probe's), the socket lacks the option
	 * (a TCP one on a Unix socket): the callback's error, no advice to upgrade. */
	if (res == -EOPNOTSUPP && !keel_caps_get()->sock_cmd)
		missing(keel__conn_shard(o->c),
			"SOCKET_URING_OP_SETSOCKOPT/GETSOCKOPT need Linux 6.7 (this kernel "
			"refused the capability probe's)",
			res);
	finish(o, res);
}

static void
install_cb(struct keel_op *op, int res, uint32_t flags)
{
	struct sockopt_op *o = container_of(op, struct sockopt_op, op);
	int r;

	if (res < 0) {
		if (res == -EINVAL || res == -EOPNOTSUPP) {
			missing(keel__conn_shard(o->c),
				"reading an option of a level other than SOL_SOCKET needs "
				"IORING_OP_FIXED_FD_INSTALL (Linux 6.8)",
				res);
			res = -EOPNOTSUPP;
		}
		finish(o, res);
		return;
	}
	r = sys_opt(o, res);
	close(res);
	finish(o, r);
}

static int
start(struct keel_conn *c, bool get, int level, int name, const void *val, socklen_t len,
      keel_sockopt_fn cb, void *arg)
{
	struct io_uring_sqe *sqe;
	struct sockopt_op *o;
	bool direct;
	int fd;

	if (!len || len > KEEL_SOCKOPT_MAX || (!get && !val) || (get && !cb))
		return -EINVAL;
	if (keel__conn_closing(c))
		return -EPIPE;
	fd = keel__conn_fd(c, &direct);
	o = calloc(1, sizeof(*o));
	if (!o)
		return -ENOMEM;
	o->c = c;
	o->cb = cb;
	o->arg = arg;
	o->get = get;
	o->level = level;
	o->name = name;
	o->len = len;
	if (!get)
		memcpy(o->val, val, len);
	if (!direct) {
		if (keel_defer(plain_cb, o) < 0) {
			free(o);
			return -ENOMEM;
		}
		keel__conn_hold(c);
		return 0;
	}
	sqe = keel_sqe_get();
	if (!sqe) {
		free(o);
		return -EBUSY;
	}
	if (get && level != SOL_SOCKET) {
		io_uring_prep_rw(KEEL_IORING_OP_FIXED_FD_INSTALL, sqe, fd, NULL, 0, 0);
		o->op.fn = install_cb;
	} else {
		keel__sqe_sockopt(sqe, fd, get, level, name, o->val, len);
		o->op.fn = cmd_cb;
	}
	sqe->flags |= IOSQE_FIXED_FILE;
	keel_sqe_bind(sqe, &o->op);
	keel__conn_hold(c);
	return 0;
}

int
keel_conn_setsockopt(struct keel_conn *c, int level, int name, const void *val, socklen_t len,
		     keel_sockopt_fn cb, void *arg)
{
	net_on_own_shard(keel__conn_shard(c));
	return start(c, false, level, name, val, len, cb, arg);
}

int
keel_conn_getsockopt(struct keel_conn *c, int level, int name, socklen_t len, keel_sockopt_fn cb,
		     void *arg)
{
	net_on_own_shard(keel__conn_shard(c));
	return start(c, true, level, name, NULL, len, cb, arg);
}
