// SPDX-License-Identifier: MIT
/*
 * Unix domain stream sockets: listeners on a path ("unix:/dir/name", unlinked when the
 * listener is destroyed, unless another file took its place meanwhile) and on an abstract
 * name ("unix:@name"), connects to either, echo with every byte checked.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../net/net_internal.h"
#include "helpers.h"
#include "tmpdir.h"

static uint8_t
pat(uint64_t i)
{
	return (uint8_t)(i * 7 + i / 509 + 3);
}

static void
on_start(void *arg)
{
	int r = keel_listener_start(arg);
	if (!SHARD_CHECK_EQ(r, 0))
		keel_stop(r);
}

/* A plain AF_UNIX client of @name ("/path" or "@abstract"). */
static int
unix_client(const char *name)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	socklen_t len;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	if (name[0] == '@') {
		memcpy(a.sun_path + 1, name + 1, strlen(name) - 1);
		len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name));
	} else {
		memcpy(a.sun_path, name, strlen(name) + 1);
		len = sizeof(a);
	}
	cr_assert_eq(connect(fd, (struct sockaddr *)&a, len), 0, "connect %s: %s", name,
		     strerror(errno));
	return fd;
}

static void
echo_some(int fd, size_t len)
{
	uint8_t *out = malloc(len), *in = malloc(len);

	cr_assert(out && in);
	for (size_t i = 0; i < len; i++)
		out[i] = pat(i);
	for (size_t at = 0; at < len; at += 64u << 10) {
		size_t n = len - at < (64u << 10) ? len - at : (64u << 10);
		cr_assert_eq(cli_write_all(fd, out + at, n), 0);
		cr_assert_eq(cli_read_all(fd, in + at, n), 0);
	}
	cr_assert_eq(memcmp(in, out, len), 0);
	free(out);
	free(in);
}

/* In a new directory @dir (a mkdtemp template), a listener of @rt's @nshards shards on the
 * socket path @dir/@name (in @path, 128 bytes), echoing (echo_ops, counted in @sv). */
static struct keel_listener *
unix_listener(struct keel_runtime *rt, char *dir, const char *name, char *path, unsigned nshards,
	      struct srv *sv)
{
	struct keel_listen_opts lo = { .rt = rt };
	struct keel_listener *l;
	char addr[140];

	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, 128, "%s/%s", dir, name);
	snprintf(addr, sizeof(addr), "unix:%s", path);
	lo.addr = addr;
	cr_assert_eq(keel_listener_create(&lo, nshards, &echo_ops, sv, &l), 0);
	return l;
}

Test(net_unix, path_listener_echoes_and_unlinks_its_path)
{
	struct keel_opts o = net_test_opts(2);
	char dir[] = "/tmp/keel-unix-XXXXXX", path[128];
	struct srv sv = { 0 };
	struct keel_runtime *rt;
	struct keel_listener *l;
	struct stat stt;
	int fds[4];

	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	l = unix_listener(rt, dir, "echo.sock", path, 2, &sv);
	cr_assert_eq(keel_listener_port(l), 0);
	cr_assert_eq(stat(path, &stt), 0);
	cr_assert(S_ISSOCK(stt.st_mode));
	cr_assert_eq(keel_runtime_start(rt, on_start, l), 0);
	for (int i = 0; i < 4; i++)
		fds[i] = unix_client(path);
	for (int i = 0; i < 4; i++)
		echo_some(fds[i], test_small() ? (256u << 10) : (2u << 20));
	for (int i = 0; i < 4; i++)
		close(fds[i]);
	WAIT_FOR(atomic_load(&sv.closes) == 4, "4 on_close");
	cr_assert_eq(atomic_load(&sv.close_errors), 0);
	keel_runtime_stop(rt, 0);
	int r = keel_runtime_join(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	keel_runtime_destroy(rt);
	cr_assert_eq(stat(path, &stt), 0, "the path stays until the listener is destroyed");
	keel_listener_destroy(l);
	cr_assert_eq(stat(path, &stt), -1, "keel unlinks the path it created");
	cr_assert_eq(errno, ENOENT);
	cr_assert_eq(rmdir(dir), 0);
}

/* SEND_ZC on a Unix socket: the kernel refuses it (-EOPNOTSUPP: AF_UNIX does not support
 * zero-copy sends), so such a connection sends with plain sends whatever the threshold;
 * echoed receive buffers of 64 KiB are over it. */
Test(net_unix, send_zc_on_leaves_a_unix_connection_on_plain_sends)
{
	struct keel_opts o = net_test_opts(1);
	char dir[] = "/tmp/keel-unix-XXXXXX", path[128];
	struct keel_net_config nc;
	struct srv sv = { 0 };
	struct keel_runtime *rt;
	struct keel_listener *l;
	int fd;

	net_test_feature(&o, "send_zc=on");
	keel_net_config_init(&nc);
	nc.zc_threshold = 4096;
	cr_assert_eq(keel_net_config_set(&nc), 0);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	l = unix_listener(rt, dir, "zc.sock", path, 1, &sv);
	cr_assert_eq(keel_runtime_start(rt, on_start, l), 0);
	fd = unix_client(path);
	echo_some(fd, 1u << 20);
	close(fd);
	WAIT_FOR(atomic_load(&sv.closes) == 1, "on_close");
	cr_assert_eq(atomic_load(&sv.close_errors), 0, "the connection closed with an error");
	{
		struct keel_net_stats st;

		cr_assert_eq(rt_net_stats(rt, 0, &st), 0);
		cr_assert_eq(st.sends_zc, 0, "%llu SEND_ZC tried on a Unix socket",
			     (unsigned long long)st.sends_zc);
		cr_assert_gt(st.sends, 0);
	}
	keel_runtime_stop(rt, 0);
	int r = keel_runtime_join(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	keel_runtime_destroy(rt);
	keel_listener_destroy(l);
	cr_assert_eq(rmdir(dir), 0);
	keel_net_config_init(&nc);
	cr_assert_eq(keel_net_config_set(&nc), 0);
}

Test(net_unix, existing_path_is_refused_and_left_alone)
{
	char dir[] = "/tmp/keel-unix-XXXXXX", path[128], addr[140];
	struct keel_listen_opts lo = { 0 };
	struct keel_listener *l = NULL;
	struct srv sv = { 0 };
	struct stat stt;
	int fd;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/taken", dir);
	snprintf(addr, sizeof(addr), "unix:%s", path);
	fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	cr_assert_geq(fd, 0);
	close(fd);
	lo.addr = addr;
	cr_assert_eq(keel_listener_create(&lo, 1, &echo_ops, &sv, &l), -EADDRINUSE);
	cr_assert_null(l);
	cr_assert_eq(stat(path, &stt), 0, "someone else's file is not removed");
	cr_assert(S_ISREG(stt.st_mode));
	unlink(path);
	rmdir(dir);
	/* A path longer than sun_path cannot be bound. */
	char lng[200];
	memset(lng, 'a', sizeof(lng));
	memcpy(lng, "unix:/", 6);
	lng[sizeof(lng) - 1] = 0;
	lo.addr = lng;
	cr_assert_eq(keel_listener_create(&lo, 1, &echo_ops, &sv, &l), -EINVAL);
}

/* The listener's path replaced while it runs: the socket unlinked and another file made at
 * the same name (a second server's socket, or a regular file). That file is not keel's, and
 * the destroy leaves it: keel knows its socket by the device and inode it read after the
 * bind. The bound socket keeps its inode alive, so the new file cannot reuse the number. */
static void
replaced_path_case(bool as_socket)
{
	struct keel_opts o = net_test_opts(1);
	char dir[] = "/tmp/keel-unix-XXXXXX", path[128];
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct stat orig, repl, stt;
	struct srv sv = { 0 };
	struct keel_runtime *rt;
	struct keel_listener *l;
	int fd, other = -1;

	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	l = unix_listener(rt, dir, "taken-over.sock", path, 1, &sv);
	cr_assert_eq(stat(path, &orig), 0);
	cr_assert_eq(keel_runtime_start(rt, on_start, l), 0);
	fd = unix_client(path);
	echo_some(fd, 4096);
	close(fd);
	WAIT_FOR(atomic_load(&sv.closes) == 1, "on_close");
	cr_assert_eq(unlink(path), 0);
	if (as_socket) {
		other = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		cr_assert_geq(other, 0);
		memcpy(a.sun_path, path, strlen(path) + 1);
		cr_assert_eq(bind(other, (struct sockaddr *)&a, sizeof(a)), 0, "bind %s: %s", path,
			     strerror(errno));
		cr_assert_eq(listen(other, 1), 0);
	} else {
		fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
		cr_assert_geq(fd, 0);
		cr_assert_eq(write(fd, "mine", 4), 4);
		close(fd);
	}
	cr_assert_eq(stat(path, &repl), 0);
	cr_assert(repl.st_dev != orig.st_dev || repl.st_ino != orig.st_ino,
		  "the replacement has the socket's own identity");
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	keel_listener_destroy(l);
	cr_assert_eq(stat(path, &stt), 0, "the file put in the socket's place was removed");
	cr_assert_eq(stt.st_ino, repl.st_ino);
	cr_assert_eq(stt.st_dev, repl.st_dev);
	if (as_socket) {
		cr_assert(S_ISSOCK(stt.st_mode));
		fd = unix_client(path); /* still the other server's */
		close(fd);
		close(other);
	} else {
		cr_assert(S_ISREG(stt.st_mode));
		cr_assert_eq(stt.st_size, 4);
	}
	SHARD_CHECKS_PASSED();
	rm_dir(dir);
}

Test(net_unix, a_socket_that_took_over_the_path_is_left_at_destroy)
{
	replaced_path_case(true);
}

Test(net_unix, a_file_that_replaced_the_socket_is_left_at_destroy)
{
	replaced_path_case(false);
}

/* The stat right after the bind, which records the socket file's identity for the destroy,
 * failing (keel__unix_path_stat): the create fails with the stat's error and says so in
 * the log, and no file is left at the path, since a socket file keel could not know as its
 * own would never be unlinked. Either the path was removed between the bind and the stat
 * (ENOENT), or the stat failed with the socket file there (EIO): keel unlinks it. The path
 * can then be bound again. */
static bool stat_removes; /* remove the path, then the real stat; else fail with EIO */
static bool stat_saw_socket;
static char stat_log[512];

static int
failing_stat(const char *path, struct stat *st)
{
	stat_saw_socket = stat(path, st) == 0 && S_ISSOCK(st->st_mode);
	if (stat_removes) {
		cr_assert_eq(unlink(path), 0, "unlink %s: %s", path, strerror(errno));
		return stat(path, st);
	}
	errno = EIO;
	return -1;
}

static void
stat_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module;
	(void)shard;
	(void)arg;
	if (level == KEEL_LOG_ERROR && !stat_log[0])
		snprintf(stat_log, sizeof(stat_log), "%s", msg);
}

static void
failed_stat_case(bool removes)
{
	char dir[] = "/tmp/keel-unix-XXXXXX", path[128], addr[140];
	struct keel_listen_opts lo = { 0 };
	struct keel_listener *l = NULL;
	struct srv sv = { 0 };
	struct stat stt = { 0 };
	int r, want = removes ? -ENOENT : -EIO;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/stat.sock", dir);
	snprintf(addr, sizeof(addr), "unix:%s", path);
	lo.addr = addr;
	stat_removes = removes;
	stat_saw_socket = false;
	stat_log[0] = 0;
	keel__unix_path_stat = failing_stat;
	keel_log_set_sink(stat_sink, NULL);
	r = keel_listener_create(&lo, 1, &echo_ops, &sv, &l);
	keel_log_set_sink(NULL, NULL);
	keel__unix_path_stat = stat;
	cr_assert(stat_saw_socket, "the stat was not made on the socket the bind created");
	cr_assert_eq(r, want, "keel_listener_create gave %d (%s), not %s", r, strerror(-r),
		     strerror(-want));
	cr_assert_null(l);
	cr_assert(strstr(stat_log, addr) && strstr(stat_log, "stat of the bound path: ") &&
			  strstr(stat_log, strerror(-want)),
		  "log: '%s'", stat_log);
	cr_assert_eq(stat(path, &stt), -1, "the socket file keel bound was left at %s (mode %o)",
		     path, (unsigned)stt.st_mode);
	cr_assert_eq(errno, ENOENT);
	/* Nothing left behind: the same path binds, and goes at destroy. */
	cr_assert_eq(keel_listener_create(&lo, 1, &echo_ops, &sv, &l), 0);
	cr_assert_eq(stat(path, &stt), 0);
	keel_listener_destroy(l);
	cr_assert_eq(stat(path, &stt), -1, "keel unlinks the path it created");
	cr_assert_eq(rmdir(dir), 0, "%s: %s", dir, strerror(errno));
}

Test(net_unix, a_path_removed_before_its_stat_fails_the_create_and_says_so)
{
	failed_stat_case(true);
}

Test(net_unix, a_failed_stat_of_the_bound_path_fails_the_create_and_removes_the_socket)
{
	failed_stat_case(false);
}

/* keel_conn_connect to an abstract name, on the listener's own runtime: the client
 * writes a pattern, reads the echo and checks it. */
static char abstract_addr[64];
static _Atomic int cli_done, cli_closes;
static int cli_family, cli_err;
static uint64_t cli_got;
#define CLI_BYTES (300u << 10)

static void
cli_open(struct keel_conn *c)
{
	static uint8_t buf[CLI_BYTES];
	struct sockaddr_storage ss;

	for (uint32_t i = 0; i < CLI_BYTES; i++)
		buf[i] = pat(i);
	if (keel_conn_peer_addr(c, &ss, NULL) == 0)
		cli_family = ss.ss_family;
	if (keel_conn_write(c, buf, CLI_BYTES) < 0)
		cli_err = -1;
}

static void
cli_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		for (uint32_t k = 0; k < s[i].len; k++)
			if (s[i].data[k] != pat(cli_got + k) && !cli_err)
				cli_err = (int)(cli_got + k + 1);
		cli_got += s[i].len;
		keel_slice_put(&s[i]);
	}
	if (cli_got == CLI_BYTES) {
		atomic_store(&cli_done, 1);
		keel_conn_close(c);
	}
}

static void
cli_close(struct keel_conn *c, int status)
{
	if (status < 0 && !cli_err)
		cli_err = status;
	atomic_fetch_add(&cli_closes, 1);
}

static const struct keel_conn_ops cli_ops = { .on_open = cli_open,
					      .on_data = cli_data,
					      .on_close = cli_close };

static void
start_both(void *arg)
{
	struct keel_conn *c;
	int r = keel_listener_start(arg);

	if (!SHARD_CHECK_EQ(r, 0)) {
		keel_stop(r);
		return;
	}
	r = keel_conn_connect(abstract_addr, 0, KEEL_S(10), &cli_ops, NULL, &c);
	if (!SHARD_CHECK_EQ(r, 0))
		keel_stop(r);
}

static void
abstract_case(const char *feature)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_listen_opts lo = { 0 };
	struct srv sv = { 0 };
	struct keel_runtime *rt;
	struct keel_listener *l;
	int fd;

	net_test_feature(&o, feature);
	snprintf(abstract_addr, sizeof(abstract_addr), "unix:@keel-test-%d", (int)getpid());
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	lo.addr = abstract_addr;
	cr_assert_eq(keel_listener_create(&lo, 1, &echo_ops, &sv, &l), 0);
	cr_assert_eq(keel_runtime_start(rt, start_both, l), 0);
	/* A plain client too. */
	fd = unix_client(abstract_addr + 5);
	echo_some(fd, 100000);
	close(fd);
	WAIT_FOR(atomic_load(&cli_done) && atomic_load(&cli_closes) == 1,
		 "the keel client's echo (%lu bytes back)", (unsigned long)cli_got);
	WAIT_FOR(atomic_load(&sv.closes) == 2, "the server's two on_close");
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	keel_listener_destroy(l);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(cli_err, 0, "keel client: %d (a byte index + 1, or -errno)", cli_err);
	cr_assert_eq(cli_got, CLI_BYTES);
	cr_assert_eq(cli_family, AF_UNIX);
}

Test(net_unix, abstract_listener_and_keel_connect_echo)
{
	abstract_case("direct_fd=auto");
}

Test(net_unix, abstract_listener_and_keel_connect_echo_plain_descriptors)
{
	abstract_case("direct_fd=off");
}

/* keel_conn_connect to a Unix listener whose backlog is full, with a timeout. An AF_UNIX
 * connect to a full backlog cannot be polled: it blocks in an io-wq worker, and the link
 * timeout interrupts that worker, so the connect itself ends with -EINTR, not -ECANCELED.
 * on_close must still give -ETIMEDOUT (keel_conn_connect's contract). The client is the
 * only thing the shard runs; the test waits for its end, whenever that comes. */
static char full_addr[64];
static _Atomic int full_status = 1;

static void
full_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	(void)c;
	for (unsigned i = 0; i < n; i++)
		keel_slice_put(&s[i]);
}

static void
full_close(struct keel_conn *c, int status)
{
	(void)c;
	atomic_store(&full_status, status);
}

static const struct keel_conn_ops full_ops = { .on_data = full_data, .on_close = full_close };

static void
full_start(void *arg)
{
	struct keel_conn *c;
	int r = keel_conn_connect(full_addr, 0, *(uint64_t *)arg, &full_ops, NULL, &c);

	if (!SHARD_CHECK_EQ(r, 0))
		keel_stop(r);
}

/* An abstract listener (never accepting) with listen(fd, 0), its backlog filled by
 * non-blocking clients until one is refused; they are closed at the end. */
static int
full_listener(const char *name, int *cl, int max, int *ncl)
{
	struct sockaddr_un u = { .sun_family = AF_UNIX };
	socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	memcpy(u.sun_path + 1, name, strlen(name));
	cr_assert_eq(bind(fd, (struct sockaddr *)&u, len), 0, "bind @%s: %s", name,
		     strerror(errno));
	cr_assert_eq(listen(fd, 0), 0);
	for (*ncl = 0; *ncl < max; (*ncl)++) {
		cl[*ncl] = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		cr_assert_geq(cl[*ncl], 0);
		if (connect(cl[*ncl], (struct sockaddr *)&u, len) < 0) {
			cr_assert_eq(errno, EAGAIN, "connect @%s: %s", name, strerror(errno));
			close(cl[*ncl]);
			return fd;
		}
	}
	cr_assert_fail("the backlog of @%s took %d clients and was not full", name, max);
	return -1;
}

static void
full_backlog_case(uint64_t timeout_ns, int want)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_runtime *rt;
	char name[48];
	int cl[64], ncl, lfd, st;

	snprintf(name, sizeof(name), "keel-full-%d", (int)getpid());
	snprintf(full_addr, sizeof(full_addr), "unix:@%s", name);
	lfd = full_listener(name, cl, 64, &ncl);
	atomic_store(&full_status, 1);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, full_start, &timeout_ns), 0);
	if (timeout_ns) {
		WAIT_FOR(atomic_load(&full_status) != 1, "the connect's end");
	} else {
		/* No timeout: it waits until the stop ends it. A pause so that the connect
		 * is in flight (in its worker) before the stop comes. */
		usleep(200 * 1000);
		cr_assert_eq(atomic_load(&full_status), 1, "the connect ended: %d",
			     atomic_load(&full_status));
	}
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
	st = atomic_load(&full_status);
	cr_assert_eq(st, want, "on_close gave %d (%s), not %d (%s)", st, strerror(-st), want,
		     strerror(-want));
	for (int i = 0; i < ncl; i++)
		close(cl[i]);
	close(lfd);
}

Test(net_unix, a_connect_to_a_full_backlog_times_out_with_etimedout)
{
	full_backlog_case(KEEL_MS(300), -ETIMEDOUT);
}

Test(net_unix, a_connect_to_a_full_backlog_ended_by_the_stop_gives_eshutdown)
{
	full_backlog_case(0, -ESHUTDOWN);
}

/* ---- an abstract name that another socket holds ---- */

static char inuse_log[512];

static void
inuse_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module, (void)shard, (void)arg;
	if (level == KEEL_LOG_ERROR && !inuse_log[0])
		snprintf(inuse_log, sizeof(inuse_log), "%s", msg);
}

/* An abstract name has no file to remove: the refusal says another socket holds it (it
 * said "remove the file", as for a path left behind). */
Test(net_unix, a_taken_abstract_name_is_said_as_held_by_another_socket)
{
	char addr[64];
	struct keel_listen_opts lo = { 0 };
	struct keel_listener *l = NULL, *again = NULL;
	struct srv sv = { 0 };
	int r;

	snprintf(addr, sizeof(addr), "unix:@keel-taken-%d", (int)getpid());
	lo.addr = addr;
	cr_assert_eq(keel_listener_create(&lo, 1, &echo_ops, &sv, &l), 0);
	inuse_log[0] = 0;
	keel_log_set_sink(inuse_sink, NULL);
	r = keel_listener_create(&lo, 1, &echo_ops, &sv, &again);
	keel_log_set_sink(NULL, NULL);
	keel_listener_destroy(l);
	cr_assert_eq(r, -EADDRINUSE, "%d: %s", r, inuse_log);
	cr_assert_null(again);
	cr_assert(strstr(inuse_log, addr) && strstr(inuse_log, "abstract name") &&
			  !strstr(inuse_log, "remove the file"),
		  "'%s'", inuse_log);
}
