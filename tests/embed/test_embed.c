// SPDX-License-Identifier: MIT
/*
 * keel-embed end to end: the host program (apps/embed) on an ephemeral loopback port with a
 * data directory of the test's own, driven by a client in this file: puts and gets of many
 * keys of random sizes, the worker-thread checksum, a clean stop, a restart that reads
 * everything back, and bad input.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "client.h"
#include "wait.h"

/* The host binary: the in-tree build, or $KEEL_EMBED_BIN (tests/install/install_test.sh
 * runs this suite against a copy built out of tree with pkg-config). */
static const char *
embed_bin(void)
{
	const char *e = getenv("KEEL_EMBED_BIN");

	return e && *e ? e : KEEL_EMBED_BIN;
}

static pid_t live; /* the host a failed test leaves running: killed by the fini */
/* The directories the test in progress made (host_init): the fini removes them all (it kept
 * only the last, so a test that made several, one per case, left the others in /tmp). */
static char live_dirs[64][64];
static unsigned nlive_dirs;

struct host {
	pid_t pid;
	int port;
	char dir[64];   /* the test's directory: config, data/, log */
	char log[96];   /* the host's stderr */
	char *log_text; /* its contents after the stop */
};

static char *
slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *b;
	long n;

	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	b = calloc(1, (size_t)n + 1);
	if (b && fread(b, 1, (size_t)n, f) != (size_t)n)
		b[0] = 0;
	fclose(f);
	return b;
}

/* Write the host's config (@extra: more "KEY VALUE" lines, or "") in a new directory. */
static void
host_init(struct host *h, const char *extra)
{
	char path[128];
	FILE *f;

	memset(h, 0, sizeof(*h));
	snprintf(h->dir, sizeof(h->dir), "/tmp/keel-embed-test.XXXXXX");
	cr_assert_not_null(mkdtemp(h->dir));
	cr_assert_lt(nlive_dirs, 64, "more host directories than the fini can remove");
	snprintf(live_dirs[nlive_dirs++], sizeof(live_dirs[0]), "%s", h->dir);
	snprintf(path, sizeof(path), "%s/data", h->dir);
	cr_assert_eq(mkdir(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/host.conf", h->dir);
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fprintf(f, "# keel-embed test\ndir %s/data\naddr 127.0.0.1\nport 0\nworkers 2\n%s", h->dir,
		extra);
	fclose(f);
	snprintf(h->log, sizeof(h->log), "%s/stderr", h->dir);
}

/* Start the host with --shards @shards (NULL: the map in its config decides) and, when
 * @opt is not NULL, the runtime option @opt @val. */
static void
host_start_opt(struct host *h, const char *shards, const char *opt, const char *val)
{
	char cfg[128];
	uint64_t dl = test_deadline(TEST_WAIT_MS);

	snprintf(cfg, sizeof(cfg), "%s/host.conf", h->dir);
	unlink(h->log);
	h->pid = fork();
	cr_assert_geq(h->pid, 0);
	if (h->pid == 0) {
		int fd = open(h->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlives a failed test */
		dup2(fd, 2);
		const char *argv[12] = { embed_bin(), "--config",    cfg,   "--idle-poll-us",
					 "0",         "--log-level", "warn" };
		int n = 7;

		if (shards) {
			argv[n++] = "--shards";
			argv[n++] = shards;
		}
		if (opt) {
			argv[n++] = opt;
			argv[n++] = val;
		}
		execv(embed_bin(), (char *const *)argv);
		_exit(127);
	}
	live = h->pid;
	h->port = -1;
	while (h->port < 0) {
		char *t = slurp(h->log), *p;
		int st;

		if (t && (p = strstr(t, "keel-embed: listening on ")) && (p = strstr(p, " port ")))
			h->port = atoi(p + 6);
		free(t);
		if (h->port > 0)
			break;
		cr_assert_eq(waitpid(h->pid, &st, WNOHANG), 0, "keel-embed exited at start: %s",
			     (t = slurp(h->log)) ? t : "");
		cr_assert(!test_expired(dl), "keel-embed printed no 'listening' line");
		test_pause();
	}
}

static void
host_start_n(struct host *h, const char *shards)
{
	host_start_opt(h, shards, NULL, NULL);
}

static void
host_start(struct host *h)
{
	host_start_n(h, "2");
}

/* Wait for the host's exit: @want_status (a signal's 128 + N, or 0: a clean stop, said in
 * its log); its stderr kept in log_text. */
static void
host_wait_exit(struct host *h, int want_status)
{
	uint64_t dl = test_deadline(TEST_WAIT_MS);
	int st;

	while (waitpid(h->pid, &st, WNOHANG) == 0) {
		cr_assert(!test_expired(dl), "keel-embed did not stop after SIGTERM");
		test_pause();
	}
	live = 0;
	free(h->log_text);
	h->log_text = slurp(h->log);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == want_status,
		  "keel-embed exit status %#x, not %d: %s", st, want_status,
		  h->log_text ? h->log_text : "");
	if (!want_status)
		cr_assert_not_null(strstr(h->log_text, "keel-embed: stopped (clean)"), "%s",
				   h->log_text);
}

/* SIGTERM; expect a clean exit (status 0) and keep its stderr in log_text. */
static void
host_stop(struct host *h)
{
	kill(h->pid, SIGTERM);
	host_wait_exit(h, 0);
}

static void
host_fini(struct host *h)
{
	free(h->log_text); /* the suite's fini removes h->dir, after a failure too */
	h->log_text = NULL;
}

static void
kill_live(void)
{
	char cmd[160];

	if (live > 0)
		kill(live, SIGKILL);
	live = 0;
	for (unsigned i = 0; i < nlive_dirs; i++) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", live_dirs[i]);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", live_dirs[i]);
	}
	nlive_dirs = 0;
}

TestSuite(embed, .fini = kill_live);

/* Read exactly @n bytes. Returns false at EOF or a reset before any of them came. */
static bool
recv_all(int fd, void *p, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = recv(fd, (char *)p + got, n - got, 0);
		if (r == 0 || (r < 0 && errno == ECONNRESET && got == 0))
			return false;
		cr_assert_gt(r, 0, "recv: %s (no reply within the deadline)", strerror(errno));
		got += (size_t)r;
	}
	return true;
}

static void
be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* Send a request frame: op, id, key, value. */
static void
req_send(int fd, char op, uint32_t id, const char *key, const uint8_t *val, size_t vlen)
{
	size_t klen = strlen(key), plen = 7 + klen + vlen;
	uint8_t *b = malloc(4 + plen);

	cr_assert_not_null(b);
	be32(b, (uint32_t)plen);
	b[4] = (uint8_t)op;
	be32(b + 5, id);
	b[9] = (uint8_t)(klen >> 8);
	b[10] = (uint8_t)klen;
	memcpy(b + 11, key, klen);
	if (vlen)
		memcpy(b + 11 + klen, val, vlen);
	test_send_all(fd, b, 4 + plen);
	free(b);
}

struct reply {
	uint8_t status;
	uint32_t id;
	uint8_t *body;
	size_t len;
};

/* The next reply frame (body malloc'd); false when the host closed the connection. */
static bool
reply_recv(int fd, struct reply *r)
{
	uint8_t h[4], *b;
	uint32_t n;

	if (!recv_all(fd, h, 4))
		return false;
	n = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
	cr_assert_geq(n, 5, "reply frame of %u bytes", n);
	b = malloc(n);
	cr_assert_not_null(b);
	cr_assert(recv_all(fd, b, n), "connection closed inside a reply");
	r->status = b[0];
	r->id = (uint32_t)b[1] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 8 | b[4];
	r->len = n - 5;
	r->body = malloc(r->len + 1);
	memcpy(r->body, b + 5, r->len);
	r->body[r->len] = 0;
	free(b);
	return true;
}

/* A reply with @status and id @id, or a closed connection when @status is -1. */
static void
expect_status(int fd, int status, uint32_t id)
{
	struct reply r;

	if (status < 0) {
		cr_assert(!reply_recv(fd, &r), "expected the host to close the connection");
		return;
	}
	cr_assert(reply_recv(fd, &r), "host closed the connection; expected status %d", status);
	cr_assert_eq(r.status, status, "status %u (%s), expected %d", r.status, r.body, status);
	cr_assert_eq(r.id, id);
	free(r.body);
}

static uint64_t
fnv64(const uint8_t *p, size_t n)
{
	uint64_t h = 14695981039346656037ull;

	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ull;
	return h;
}

#define NKEYS 400

struct kv {
	char key[40];
	uint8_t *val;
	size_t len;
};

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t
rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* Random sizes: mostly small, some up to 256 KiB (many receive buffers), a few empty. */
static size_t
rnd_size(void)
{
	uint64_t r = rnd() % 100;

	if (r < 5)
		return 0;
	if (r < 70)
		return rnd() % 200;
	if (r < 95)
		return rnd() % 20000;
	return rnd() % (256 * 1024);
}

static void
kv_fill(struct kv *kv, unsigned i)
{
	free(kv->val);
	snprintf(kv->key, sizeof(kv->key), "key-%u-%llu", i, (unsigned long long)(rnd() % 1000));
	kv->len = rnd_size();
	kv->val = malloc(kv->len + 1);
	for (size_t b = 0; b < kv->len; b++)
		kv->val[b] = (uint8_t)rnd();
}

/* Pipelined puts of @kv[0..n): every reply OK, ids in any order. */
static void
put_all(int fd, struct kv *kv, unsigned n)
{
	bool *seen = calloc(n, 1);

	for (unsigned i = 0; i < n; i++)
		req_send(fd, 'P', i, kv[i].key, kv[i].val, kv[i].len);
	for (unsigned i = 0; i < n; i++) {
		struct reply r;

		cr_assert(reply_recv(fd, &r), "host closed the connection during puts");
		cr_assert_lt(r.id, n);
		cr_assert(!seen[r.id], "two replies for put %u", r.id);
		seen[r.id] = true;
		cr_assert_eq(r.status, 0, "put %u: status %u: %s", r.id, r.status, r.body);
		free(r.body);
	}
	free(seen);
}

/* Get every key (pipelined) and check every byte. */
static void
get_all(int fd, struct kv *kv, unsigned n)
{
	unsigned got = 0;

	for (unsigned i = 0; i < n; i++)
		req_send(fd, 'G', i, kv[i].key, NULL, 0);
	for (; got < n; got++) {
		struct reply r;

		cr_assert(reply_recv(fd, &r), "host closed the connection during gets");
		cr_assert_lt(r.id, n);
		cr_assert_eq(r.status, 0, "get %s: status %u: %s", kv[r.id].key, r.status, r.body);
		cr_assert_eq(r.len, kv[r.id].len, "get %s: %zu bytes, want %zu", kv[r.id].key,
			     r.len, kv[r.id].len);
		cr_assert(!memcmp(r.body, kv[r.id].val, r.len), "get %s: bytes differ",
			  kv[r.id].key);
		free(r.body);
	}
}

/* One run of the host (one shard) that does @op (put_all or get_all) with @kv, then stops. */
static void
run_once(struct host *h, struct kv *kv, void (*op)(int fd, struct kv *kv, unsigned n))
{
	int fd;

	host_start_n(h, "1");
	fd = test_connect(h->port);
	op(fd, kv, 1);
	close(fd);
	host_stop(h);
}

/* The checksum of every 7th key, computed on the host's worker threads. */
static void
sum_some(int fd, struct kv *kv, unsigned n)
{
	unsigned want = 0;

	for (unsigned i = 0; i < n; i += 7, want++)
		req_send(fd, 'C', i, kv[i].key, NULL, 0);
	for (unsigned k = 0; k < want; k++) {
		struct reply r;
		uint64_t s = 0;

		cr_assert(reply_recv(fd, &r), "host closed the connection during checksums");
		cr_assert_lt(r.id, n);
		cr_assert_eq(r.status, 0, "checksum %u: status %u: %s", r.id, r.status, r.body);
		cr_assert_eq(r.len, 8);
		for (int b = 0; b < 8; b++)
			s = s << 8 | r.body[b];
		cr_assert_eq(s, fnv64(kv[r.id].val, kv[r.id].len), "checksum of %s", kv[r.id].key);
		free(r.body);
	}
}

/* Sum the "N fixed" of every "keel-embed: shard ..." stop line in @log. */
static unsigned long long
fixed_total(const char *log)
{
	unsigned long long t = 0, f;

	for (const char *p = log; (p = strstr(p, " disk requests, ")); p++)
		if (sscanf(p, " disk requests, %llu fixed", &f) == 1)
			t += f;
	return t;
}

Test(embed, put_get_checksum_restart, .timeout = 300)
{
	static struct kv kv[NKEYS];
	struct host h;
	int fd;

	host_init(&h, "");
	host_start(&h);
	for (unsigned i = 0; i < NKEYS; i++)
		kv_fill(&kv[i], i);
	/* Two connections, so that both shards are likely to take puts (the kernel places
	 * each connection); each writes half the keys. */
	fd = test_connect(h.port);
	put_all(fd, kv, NKEYS / 2);
	close(fd);
	fd = test_connect(h.port);
	put_all(fd, kv + NKEYS / 2, NKEYS / 2);
	/* Overwrite a tenth with new values of new sizes: the newest must win. */
	for (unsigned i = 0; i < NKEYS; i += 10) {
		char key[40];

		memcpy(key, kv[i].key, sizeof(key));
		kv_fill(&kv[i], i);
		memcpy(kv[i].key, key, sizeof(key));
		put_all(fd, &kv[i], 1);
	}
	get_all(fd, kv, NKEYS);
	sum_some(fd, kv, NKEYS);
	close(fd);
	host_stop(&h);
	/* The values went from received slices to disk as WRITE_FIXED. */
	cr_assert_gt(fixed_total(h.log_text), 0, "no fixed reads or writes: %s", h.log_text);

	host_start(&h);
	fd = test_connect(h.port);
	get_all(fd, kv, NKEYS);
	sum_some(fd, kv, NKEYS);
	close(fd);
	host_stop(&h);
	cr_assert_not_null(strstr(h.log_text, " 0 skipped"), "%s", h.log_text);
	for (unsigned i = 0; i < NKEYS; i++) {
		free(kv[i].val);
		kv[i].val = NULL;
	}
	host_fini(&h);
}

/* ---- a data file with a record whose sequence number would wrap the host's counter ---- */

/* Shard 0's data file in @dir: @n bytes of @b. */
static void
write_data_file(const char *dir, const uint8_t *b, size_t n)
{
	char path[160];
	FILE *f;

	snprintf(path, sizeof(path), "%s/data/shard-0.dat", dir);
	f = fopen(path, "w");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	cr_assert_eq(fwrite(b, 1, n, f), n);
	fclose(f);
}

static uint32_t
rec_sum(const uint8_t *p, size_t n, uint32_t h)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

/* The magic and pad_ bytes records carry: the fixed magic of an older keel-embed's
 * directory ("KEMB", 0), or a directory's own marker (use_dir_marker). */
static uint8_t rec_marker[6] = { 'K', 'E', 'M', 'B', 0, 0 };

/* A record header for @klen key bytes and @vlen value bytes at @h (key and value after
 * it), with the sum of those bytes plus @sum_off (0: correct). Returns its aligned size. */
static size_t
put_record(uint8_t *h, uint16_t klen, uint32_t vlen, uint64_t seq, uint32_t sum_off)
{
	uint32_t sum;

	memcpy(h, rec_marker, 4);
	memcpy(h + 6, rec_marker + 4, 2);
	memcpy(h + 4, &klen, 2);
	memcpy(h + 8, &vlen, 4);
	sum = rec_sum(h + 24 + klen, vlen, rec_sum(h + 24, klen, 2166136261u)) + sum_off;
	memcpy(h + 12, &sum, 4);
	memcpy(h + 16, &seq, 8);
	return (24 + klen + vlen + 7) & ~(size_t)7;
}

/* A record as apps/embed/main.c writes it (struct rec_hdr: magic "KEMB", key length, pad,
 * value length, FNV-1a 32 of key and value, sequence number; key, value, padding to 8),
 * after a good record (an older keel-embed's file starts with one) and 8 bytes that are no
 * header (the scan resynchronises past them). The sequence number is the largest a
 * counter can hold: taken, the next put's number would wrap to 0, its index entry would
 * keep whatever malloc gave it, and a GET would read any file at any offset. */
static void
write_wrapping_record(const char *dir)
{
	uint8_t b[32 + 8 + 24 + 8] = { 0 }, *h = b + 32 + 8;

	/* The good record: key "a", value "b", sequence 1 (the fixed magic: rec_marker's
	 * default). */
	b[24] = 'a';
	b[25] = 'b';
	put_record(b, 1, 1, 1, 0);
	memset(b + 32, 0xee, 8);
	h[24] = 'x';
	h[25] = 'y';
	put_record(h, 1, 1, UINT64_MAX, 0);
	write_data_file(dir, b, sizeof(b));
}

Test(embed, a_record_whose_sequence_would_wrap_the_counter_is_skipped, .timeout = 120)
{
	struct kv kv = { .key = "after-the-wrap" };
	struct host h;
	int fd;

	host_init(&h, "");
	write_wrapping_record(h.dir);
	host_start_n(&h, "1");
	fd = test_connect(h.port);
	kv.len = 5;
	kv.val = (uint8_t *)strdup("value");
	put_all(fd, &kv, 1);
	get_all(fd, &kv, 1);
	close(fd);
	host_stop(&h);
	free(kv.val);
	cr_assert_not_null(strstr(h.log_text, " 1 skipped"), "%s", h.log_text);
	host_fini(&h);
}

/* ---- a value that holds a record image, behind a header whose checksum fails ---- */

/* A record whose sequence number is the largest the scan accepts (2^63 - 1, from a file
 * made or restored elsewhere): the next put's number would be past it, so the put was
 * acknowledged and then skipped by every later scan. Such a put is refused (ERROR, named)
 * and the record itself is still served. */
Test(embed, puts_past_the_last_sequence_number_are_refused_not_lost, .timeout = 120)
{
	uint8_t b[24 + 8] = { 0 };
	struct reply r;
	struct host h;
	int fd;

	host_init(&h, "");
	b[24] = 'k';
	b[25] = 'v';
	write_data_file(h.dir, b, put_record(b, 1, 1, UINT64_MAX >> 1, 0));
	host_start_n(&h, "1");
	fd = test_connect(h.port);
	req_send(fd, 'P', 7, "after", (const uint8_t *)"value", 5);
	cr_assert(reply_recv(fd, &r), "no reply to the put");
	cr_assert_eq(r.status, 3, "put past the last sequence number: status %u: %s", r.status,
		     r.body);
	cr_assert_not_null(strstr((char *)r.body, "sequence"), "%s", r.body);
	free(r.body);
	req_send(fd, 'G', 8, "k", NULL, 0);
	cr_assert(reply_recv(fd, &r), "no reply to the get");
	cr_assert(r.status == 0 && r.len == 1 && r.body[0] == 'v', "get k: status %u: %s", r.status,
		  r.body);
	free(r.body);
	close(fd);
	host_stop(&h);
	host_fini(&h);
}

/* A record of key "a" whose value was torn (its checksum fails: a write cut short, or
 * several in flight at a crash) and whose value bytes hold a whole record image of key
 * "forged", as a client may store. The scan must skip the torn record's whole extent:
 * stepping through it 8 bytes at a time found and indexed the image, so a client could
 * plant any key and value it liked. A good record after it is still found. */
Test(embed, a_record_image_inside_a_torn_records_value_is_not_indexed, .timeout = 120)
{
	static const char forged_val[] = "evil";
	struct kv good = { .key = "after" };
	uint8_t b[512] = { 0 }, *v;
	size_t off;
	struct host h;
	struct reply r;
	int fd;

	host_init(&h, "");
	/* The torn record: key "a", a 96-byte value whose bytes 7.. hold the image (at
	 * file offset 24 + 1 + 7 = 32, 8-aligned). */
	b[24] = 'a';
	v = b + 25;
	memcpy(v + 7 + 24, "forged", 6);
	memcpy(v + 7 + 24 + 6, forged_val, 4);
	put_record(v + 7, 6, 4, 5, 0);
	off = put_record(b, 1, 96, 1, 1); /* its checksum one off */
	/* A good record after it. */
	memcpy(b + off + 24, "after", 5);
	memcpy(b + off + 29, "value", 5);
	off += put_record(b + off, 5, 5, 2, 0);
	write_data_file(h.dir, b, off);
	host_start_n(&h, "1");
	fd = test_connect(h.port);
	req_send(fd, 'G', 0, "forged", NULL, 0);
	cr_assert(reply_recv(fd, &r), "host closed the connection");
	cr_assert_eq(r.status, 1, "GET forged: status %u, value '%s': the image was indexed",
		     r.status, r.body);
	free(r.body);
	good.len = 5;
	good.val = (uint8_t *)strdup("value");
	get_all(fd, &good, 1);
	close(fd);
	host_stop(&h);
	free(good.val);
	cr_assert_not_null(strstr(h.log_text, " 1 skipped"), "%s", h.log_text);
	host_fini(&h);
}

/* A data file that ends in a torn record: a record of a 4-byte key and 100 value bytes
 * whose header claims @claimed value bytes, cut to its first @keep bytes; then one run
 * puts a key and the next must find it. */
/* A first run of the host on @h's empty directory makes its marker: records put_record
 * makes from now on carry it, as this host's own do. */
static void
use_dir_marker(struct host *h)
{
	char path[160];
	FILE *f;

	host_start_n(h, "1");
	host_stop(h);
	snprintf(path, sizeof(path), "%s/data/marker", h->dir);
	f = fopen(path, "r");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	cr_assert_eq(fread(rec_marker, 1, sizeof(rec_marker), f), sizeof(rec_marker));
	fclose(f);
}

static void
torn_tail_case(uint32_t claimed, size_t keep, bool marked)
{
	struct kv kv = { .key = "after-the-crash" };
	uint8_t b[24 + 4 + 100] = { 0 };
	struct host h;

	host_init(&h, "");
	if (marked)
		use_dir_marker(&h);
	memcpy(b + 24, "torn", 4);
	put_record(b, 4, 100, 1, 0);
	memcpy(b + 8, &claimed, 4); /* the value's length it claims */
	write_data_file(h.dir, b, keep);
	kv.len = 5;
	kv.val = (uint8_t *)strdup("value");
	run_once(&h, &kv, put_all);
	run_once(&h, &kv, get_all);
	free(kv.val);
	host_fini(&h);
}

/* The tail of a crash: a record whose header claims 1,000 value bytes and whose file ends
 * 100 bytes into them. The scan skips it, and the file must be cut there: the puts of the
 * next run were appended inside the extent the torn header claims, and the scan after
 * that skipped them with it (a put acknowledged, then lost at a restart). */
Test(embed, a_record_cut_short_at_the_tail_does_not_hide_the_puts_after_it, .timeout = 120)
{
	torn_tail_case(1000, 24 + 4 + 100, false); /* an older keel-embed's directory */
	torn_tail_case(1000, 24 + 4 + 100, true);  /* a directory with its marker */
}

/* The same with less than a header at the tail (16 of its 24 bytes, no sequence number: a
 * crash inside a header that straddled a page, or a short write): the next run's first put
 * went where the rest of that header would be, so the scan after read the old bytes and
 * the new record's as one header claiming the old record's lengths, and cut the file
 * there (or skipped the claimed extent): the put, acknowledged, was gone. The bytes short
 * of a header are cut off too. */
Test(embed, less_than_a_header_at_the_tail_does_not_hide_the_puts_after_it, .timeout = 120)
{
	torn_tail_case(100, 16, false);
	torn_tail_case(100, 16, true);
}

/* Bytes of a client's value with no header before them (a put whose header write failed
 * or never landed while its value's did): the scan steps through them 8 bytes at a time,
 * and an image of a record there, which a client can make with the magic keel-embed's
 * source names, was indexed for any key it chose. A directory's records carry its own
 * random marker ("marker", made at its first start), which a client cannot know. */
Test(embed, a_record_image_in_bytes_without_a_header_is_not_indexed, .timeout = 120)
{
	struct kv kv = { .key = "a" };
	uint8_t img[8 + 32 + 40] = { 0 };
	struct host h;
	char path[160];
	struct stat st;
	size_t pad;
	FILE *f;
	int fd;

	host_init(&h, "");
	kv.len = 1;
	kv.val = (uint8_t *)strdup("x");
	run_once(&h, &kv, put_all);
	snprintf(path, sizeof(path), "%s/data/marker", h.dir);
	cr_assert_eq(stat(path, &st), 0, "%s: %s", path, strerror(errno));
	cr_assert_eq(st.st_size, 6);
	/* Appended at the tail: the 32 bytes where a header and key did not land, then the
	 * value, whose bytes hold a record of key "victim" at an aligned offset. */
	memcpy(img + 8 + 32 + 24, "victim", 6);
	img[8 + 32 + 30] = 'Z';
	put_record(img + 8 + 32, 6, 1, 1u << 20, 0);
	snprintf(path, sizeof(path), "%s/data/shard-0.dat", h.dir);
	cr_assert_eq(stat(path, &st), 0);
	f = fopen(path, "a");
	cr_assert_not_null(f);
	/* (8 - size % 8) % 8 bytes of padding first, so that the image lies 8-aligned */
	pad = (8 - ((size_t)st.st_size & 7)) & 7;
	cr_assert_eq(fwrite(img + 8 - pad, 1, sizeof(img) - 8 + pad, f), sizeof(img) - 8 + pad);
	fclose(f);
	host_start_n(&h, "1");
	fd = test_connect(h.port);
	req_send(fd, 'G', 1, "victim", NULL, 0);
	expect_status(fd, 1, 1); /* not found: a client's record image was not indexed */
	get_all(fd, &kv, 1);
	close(fd);
	host_stop(&h);
	free(kv.val);
	host_fini(&h);
}

/* Start the host with --shards @shards: it must refuse (exit non-zero), naming the missing
 * marker. (timeout: a host that starts, as it did, serves until stopped.) */
static void
start_refused_naming_the_marker(struct host *h, const char *shards)
{
	char cmd[512];
	int st;

	snprintf(cmd, sizeof(cmd), "timeout 20 '%s' --config %s/host.conf --shards %s 2>%s",
		 embed_bin(), h->dir, shards, h->log);
	st = system(cmd);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0, "status %#x", st);
	free(h->log_text);
	h->log_text = slurp(h->log);
	cr_assert_not_null(strstr(h->log_text, "marker is missing"), "%s", h->log_text);
}

/* Without its marker a directory's records cannot be told from a client's bytes: the host
 * refuses to start and says what to restore, rather than serve an empty store. Even when
 * a client's value holds the fixed magic of an older keel-embed at aligned offsets of the
 * file's first 4 KiB (it was taken for an older directory then, and served none of its
 * records): only a file's first header says that. */
Test(embed, a_missing_marker_is_named_at_start, .timeout = 120)
{
	struct kv kv = { .key = "a" };
	static uint8_t val[7 + 8 * 8];
	struct host h;
	char path[512];

	host_init(&h, "");
	/* The value starts at file offset 25: after 7 bytes, the magic at 32, 40, ... */
	memset(val, 'x', 7);
	for (int i = 0; i < 8; i++)
		memcpy(val + 7 + 8 * i, "KEMB\0\0\0\0", 8);
	kv.len = sizeof(val);
	kv.val = val;
	run_once(&h, &kv, put_all);
	snprintf(path, sizeof(path), "%s/data/marker", h.dir);
	cr_assert_eq(unlink(path), 0);
	start_refused_naming_the_marker(&h, "1");
	host_fini(&h);
}

/* A marker that cannot be read (a directory in its place) is said with the read's error:
 * it read as "holds -1 bytes, not 6 ... restore it from a backup", the wrong cause and fix. */
Test(embed, a_marker_that_cannot_be_read_is_said_with_its_error, .timeout = 60)
{
	struct host h;
	char path[512], cmd[1024];
	int st;

	host_init(&h, "");
	snprintf(path, sizeof(path), "%s/data/marker", h.dir);
	cr_assert_eq(mkdir(path, 0755), 0);
	snprintf(cmd, sizeof(cmd), "timeout 20 '%s' --config %s/host.conf --shards 1 2>%s",
		 embed_bin(), h.dir, h.log);
	st = system(cmd);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0, "status %#x", st);
	h.log_text = slurp(h.log);
	cr_assert(strstr(h.log_text, "marker: Is a directory") &&
			  !strstr(h.log_text, "bytes, not 6"),
		  "%s", h.log_text);
	rmdir(path);
	host_fini(&h);
}

/* A client that sends GETs of a large value and reads none of the replies: each read
 * took a buffer of twice the value (its length + 1, rounded up to a power of two) and 64
 * could be in progress per connection, their replies then held in its send queue, so one
 * such connection held 128 MiB and the shard's other clients got "no buffer memory". The
 * bytes of values in progress now pause reading at 8 MiB, and a value takes a buffer of its
 * own size: with --memory 48M another client's GETs, of the same value too, are all
 * answered. */
Test(embed, a_client_that_reads_no_replies_does_not_take_the_shards_memory, .timeout = 120)
{
	struct kv big = { .key = "big" }, small = { .key = "small" };
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct host h;
	int fd, hog;

	host_init(&h, "");
	big.len = 1u << 20;
	big.val = malloc(big.len);
	cr_assert_not_null(big.val);
	memset(big.val, 'b', big.len);
	small.len = 1;
	small.val = (uint8_t *)strdup("s");
	host_start_opt(&h, "1", "--memory", "48M");
	sa.sin_port = htons((uint16_t)h.port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = test_connect(h.port);
	put_all(fd, &big, 1);
	put_all(fd, &small, 1);
	/* A small receive buffer, so that the host's socket takes little of the replies off
	 * its buffers: what the hog's GETs take stays taken. */
	hog = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(hog, 0);
	cr_assert_eq(setsockopt(hog, SOL_SOCKET, SO_RCVBUF, &(int){ 4096 }, sizeof(int)), 0);
	cr_assert_eq(connect(hog, (struct sockaddr *)&sa, sizeof(sa)), 0, "connect: %s",
		     strerror(errno));
	cr_assert_eq(setsockopt(hog, SOL_SOCKET, SO_RCVTIMEO,
				&(struct timeval){ .tv_sec = TEST_WAIT_MS / 1000 },
				sizeof(struct timeval)),
		     0);
	for (uint32_t i = 0; i < 64; i++)
		req_send(hog, 'G', i, "big", NULL, 0);
	/* The hog's GETs were sent first; however many of them the host has read at each
	 * point of this half second or more, none of these may be refused for memory (the
	 * pauses only give it the time to take what it would take: they cannot fail a host
	 * that bounds it). */
	for (int i = 0; i < 50; i++) {
		get_all(fd, &small, 1);
		get_all(fd, &big, 1);
		usleep(10000);
	}
	/* And the hog's own GETs are all served once it reads: before, 64 buffers of 2 MiB
	 * were more than the shard had, so some were refused or the connection reset. */
	for (uint32_t i = 0; i < 64; i++) {
		struct reply r;

		cr_assert(reply_recv(hog, &r), "the hog's connection closed after %u replies", i);
		cr_assert(r.status == 0 && r.len == big.len, "the hog's GET %u: status %u: %s",
			  r.id, r.status, r.len < 100 ? (char *)r.body : "");
		free(r.body);
	}
	close(hog);
	close(fd);
	host_stop(&h);
	free(big.val);
	free(small.val);
	host_fini(&h);
}

/* The start-up scan reads a data file a window at a time: it read each file whole into
 * one buffer, so a file larger than the memory at hand could not be scanned (files only
 * grow). A file of 160 MiB (a record, then zeros) is scanned with the host's peak
 * resident memory well under the file's size, and the record is found. */
static unsigned long
peak_rss_kib(pid_t pid)
{
	char path[64], t[8192], *p;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC); /* a /proc file has no size to slurp by */
	cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
	n = read(fd, t, sizeof(t) - 1);
	close(fd);
	cr_assert_gt(n, 0, "%s", path);
	t[n] = 0;
	p = strstr(t, "VmHWM:");
	cr_assert_not_null(p, "no VmHWM in %s", path);
	return strtoul(p + 6, NULL, 10);
}

Test(embed, a_data_file_is_scanned_a_window_at_a_time, .timeout = 120)
{
	struct kv kv = { .key = "a" };
	struct host h;
	char path[160];
	unsigned long kib;
	int fd;

	host_init(&h, "");
	kv.len = 1;
	kv.val = (uint8_t *)strdup("x");
	run_once(&h, &kv, put_all);
	snprintf(path, sizeof(path), "%s/data/shard-0.dat", h.dir);
	cr_assert_eq(truncate(path, 160 << 20), 0, "%s: %s", path, strerror(errno));
	host_start_n(&h, "1");
	kib = peak_rss_kib(h.pid);
	fd = test_connect(h.port);
	get_all(fd, &kv, 1);
	close(fd);
	host_stop(&h);
	free(kv.val);
	cr_assert_lt(kib, 120ul << 10, "peak resident memory %lu KiB after scanning 160 MiB", kib);
	host_fini(&h);
}

/* Start @h on one shard with KEEL_FAULTS=@spec; the test is skipped when keel-embed was
 * built without fault injection (its log says so). */
static void
host_start_faults(struct host *h, const char *spec)
{
	char *t;
	bool none;

	setenv("KEEL_FAULTS", spec, 1);
	host_start_n(h, "1");
	unsetenv("KEEL_FAULTS");
	t = slurp(h->log);
	none = t && strstr(t, "no fault injection");
	free(t);
	if (none) {
		host_stop(h);
		host_fini(h);
		kill_live(); /* a skipped test's fini does not run */
		cr_skip_test("keel-embed was built without fault injection");
	}
}

/* A disk write or read that comes back -ECANCELED while the host runs (io-wq could not run
 * it; injected here) is answered, BUSY: before, -ECANCELED was taken for the stop and no
 * reply came, the client waiting for its id for ever. The put and the get go through
 * when sent again. Needs a build with fault injection (the ASan build's). */
Test(embed, a_cancelled_write_or_read_is_answered, .timeout = 120)
{
	struct kv kv = { .key = "cancelled" };
	struct host h;
	int fd;

	host_init(&h, "");
	host_start_faults(&h, "write:ECANCELED:n=1,read:ECANCELED:n=1");
	kv.len = 5;
	kv.val = (uint8_t *)strdup("value");
	fd = test_connect(h.port);
	req_send(fd, 'P', 0, kv.key, kv.val, kv.len);
	expect_status(fd, 4, 0); /* the put whose write was cancelled: BUSY */
	put_all(fd, &kv, 1);
	req_send(fd, 'G', 0, kv.key, NULL, 0);
	expect_status(fd, 4, 0); /* the get whose read was cancelled: BUSY */
	get_all(fd, &kv, 1);
	close(fd);
	host_stop(&h);
	free(kv.val);
	host_fini(&h);
}

/* A disk write refused for memory (-ENOMEM: the value's buffer could not be registered
 * with --feature reg_buffers=on; injected here as the write's result) is answered BUSY and
 * the shard takes puts after it: it used to refuse every later put until a restart, as
 * after a failed write. Needs a build with fault injection (the ASan build's). */
Test(embed, a_write_refused_for_memory_leaves_puts_on, .timeout = 120)
{
	struct kv kv = { .key = "refused" };
	struct host h;
	int fd;

	host_init(&h, "");
	host_start_faults(&h, "write:ENOMEM:n=1");
	kv.len = 5;
	kv.val = (uint8_t *)strdup("value");
	fd = test_connect(h.port);
	req_send(fd, 'P', 0, kv.key, kv.val, kv.len);
	expect_status(fd, 4, 0); /* the put whose write was refused: BUSY */
	put_all(fd, &kv, 1);
	get_all(fd, &kv, 1);
	close(fd);
	host_stop(&h);
	free(kv.val);
	host_fini(&h);
}

/* A disk error among a put's writes fails the put and stops the shard's puts whatever came
 * before it: a put whose header write was cancelled (-ECANCELED) and whose value write then
 * failed (-EIO) was answered BUSY, "write cancelled" (send it again), and the shard went on
 * acknowledging puts past a failed write, without its error line (a review's run). Needs a
 * build with fault injection (the ASan build's). */
Test(embed, a_disk_error_among_a_puts_writes_fails_it_whatever_came_first, .timeout = 120)
{
	struct kv kv = { .key = "disk-error" };
	struct host h;
	int fd;

	host_init(&h, "");
	host_start_faults(&h, "write:ECANCELED:p=1:n=1,write:EIO:p=1:n=1:after=1");
	kv.len = 5000;
	kv.val = malloc(kv.len);
	cr_assert_not_null(kv.val);
	memset(kv.val, 'v', kv.len);
	fd = test_connect(h.port);
	req_send(fd, 'P', 0, kv.key, kv.val, kv.len);
	expect_status(fd, 3, 0); /* the put: its value's write failed */
	req_send(fd, 'P', 1, kv.key, kv.val, kv.len);
	expect_status(fd, 3, 1); /* refused: the shard's data file failed a write */
	close(fd);
	host_stop(&h);
	cr_assert(h.log_text && strstr(h.log_text, "write failed: Input/output error"),
		  "no line for the failed write: %s", h.log_text ? h.log_text : "");
	free(kv.val);
	host_fini(&h);
}

/* Short writes (injected: a write asks for fewer bytes than it should, as ENOSPC part-way
 * or a file size limit makes the kernel do) are continued where they stopped: every put is
 * acknowledged and read back, before and after a restart. Before, one short write failed
 * its put and made the shard refuse every later put until a restart ("this shard's data
 * file failed a write": 273 of 300 in the reviewer's run). Needs a build with fault
 * injection (the ASan build's). */
Test(embed, short_writes_are_continued, .timeout = 180)
{
	enum { N = 60 };
	static struct kv kv[N];
	struct host h;
	char *log;
	int fd;

	host_init(&h, "");
	host_start_faults(&h, "write:short:p=0.3,seed=3");
	for (unsigned i = 0; i < N; i++)
		kv_fill(&kv[i], i);
	fd = test_connect(h.port);
	put_all(fd, kv, N);
	get_all(fd, kv, N);
	close(fd);
	host_stop(&h);
	log = h.log_text;
	cr_assert(log && strstr(log, "write:short") && !strstr(log, "write:short: 0 injected"),
		  "no short write was injected: %s", log ? log : "");
	host_start_n(&h, "1");
	fd = test_connect(h.port);
	get_all(fd, kv, N);
	close(fd);
	host_stop(&h);
	for (unsigned i = 0; i < N; i++)
		free(kv[i].val);
	host_fini(&h);
}

/* Short reads (injected: a read asks for fewer bytes than it should, as an I/O error
 * part-way makes the kernel do) are continued where they stopped: every get and checksum
 * of a stored value answers it. Before, each came back as a server error, "short read"
 * (a review's run). Needs a build with fault injection (the ASan build's). */
Test(embed, short_reads_are_continued, .timeout = 180)
{
	enum { N = 60 };
	static struct kv kv[N];
	struct host h;
	int fd;

	host_init(&h, "");
	host_start_faults(&h, "read:short:p=0.5,seed=5");
	for (unsigned i = 0; i < N; i++)
		kv_fill(&kv[i], i);
	fd = test_connect(h.port);
	put_all(fd, kv, N);
	get_all(fd, kv, N);
	sum_some(fd, kv, N);
	close(fd);
	host_stop(&h);
	cr_assert(h.log_text && strstr(h.log_text, "read:short") &&
			  !strstr(h.log_text, "read:short: 0 injected"),
		  "no short read was injected: %s", h.log_text ? h.log_text : "");
	for (unsigned i = 0; i < N; i++)
		free(kv[i].val);
	host_fini(&h);
}

/* A put whose value arrives in many receives (a client writing 256 bytes at a time, with
 * a pause between): more pieces than the host writes as slices, so it copies the value;
 * before, it answered BUSY ("value in too many pieces") however often it was retried. */
Test(embed, a_value_sent_in_many_small_writes_is_stored, .timeout = 120)
{
	struct kv kv = { .key = "in-pieces" };
	const size_t vlen = 100 * 1024, step = 256;
	size_t klen = strlen(kv.key), plen = 7 + klen + vlen;
	uint8_t *b = malloc(4 + plen);
	struct timespec gap = { .tv_nsec = 1000000 };
	struct host h;
	size_t sent = 0;
	int fd;

	cr_assert_not_null(b);
	kv.len = vlen;
	kv.val = malloc(vlen);
	cr_assert_not_null(kv.val);
	for (size_t i = 0; i < vlen; i++)
		kv.val[i] = (uint8_t)(i * 31 + 7);
	be32(b, (uint32_t)plen);
	b[4] = 'P';
	be32(b + 5, 0);
	b[9] = (uint8_t)(klen >> 8);
	b[10] = (uint8_t)klen;
	memcpy(b + 11, kv.key, klen);
	memcpy(b + 11 + klen, kv.val, vlen);
	host_init(&h, "");
	host_start_n(&h, "1");
	fd = test_connect(h.port);
	while (sent < 4 + plen) {
		size_t n = 4 + plen - sent < step ? 4 + plen - sent : step;
		test_send_all(fd, b + sent, n);
		sent += n;
		nanosleep(&gap, NULL);
	}
	{
		struct reply r;
		cr_assert(reply_recv(fd, &r), "host closed the connection");
		cr_assert_eq(r.status, 0, "put: status %u: %s", r.status, r.body);
		free(r.body);
	}
	get_all(fd, &kv, 1);
	close(fd);
	host_stop(&h);
	free(kv.val);
	free(b);
	host_fini(&h);
}

Test(embed, bad_input, .timeout = 120)
{
	struct host h;
	uint8_t b[16];
	int fd;

	host_init(&h, "");
	host_start(&h);
	fd = test_connect(h.port);
	req_send(fd, 'X', 1, "k", NULL, 0); /* unknown op */
	expect_status(fd, 2, 1);
	req_send(fd, 'G', 2, "missing", NULL, 0);
	expect_status(fd, 1, 2);
	req_send(fd, 'C', 3, "missing", NULL, 0);
	expect_status(fd, 1, 3);
	req_send(fd, 'G', 4, "k", (const uint8_t *)"x", 1); /* bytes after a get's key */
	expect_status(fd, 2, 4);
	be32(b, 3); /* a frame shorter than a request header */
	memcpy(b + 4, "Pab", 3);
	test_send_all(fd, b, 7);
	expect_status(fd, 2, 0);
	be32(b, 7); /* a key length past the frame */
	b[4] = 'G';
	be32(b + 5, 5);
	b[9] = 0x7f;
	b[10] = 0xff;
	test_send_all(fd, b, 11);
	expect_status(fd, 2, 5);
	be32(b, 7); /* an empty key */
	b[4] = 'P';
	be32(b + 5, 6);
	b[9] = b[10] = 0;
	test_send_all(fd, b, 11);
	expect_status(fd, 2, 6);
	{ /* a key over 1024 bytes, whole in its frame */
		char big[1101];
		memset(big, 'k', 1100);
		big[1100] = 0;
		req_send(fd, 'P', 9, big, (const uint8_t *)"v", 1);
		expect_status(fd, 2, 9);
	}
	/* After all that the connection still works. */
	req_send(fd, 'P', 7, "k", (const uint8_t *)"v", 1);
	expect_status(fd, 0, 7);
	/* A frame over the maximum closes the connection at once (no payload needed). */
	be32(b, 0x7fffffff);
	test_send_all(fd, b, 4);
	expect_status(fd, -1, 0);
	close(fd);
	/* So does one just over it, with its header of a valid put. */
	{
		size_t plen = 7 + 1024 + (1u << 20) + 1;
		fd = test_connect(h.port);
		be32(b, (uint32_t)plen);
		test_send_all(fd, b, 4);
		expect_status(fd, -1, 0);
		close(fd);
	}
	/* The host is still serving. */
	fd = test_connect(h.port);
	req_send(fd, 'G', 8, "k", NULL, 0);
	{
		struct reply r;
		cr_assert(reply_recv(fd, &r));
		cr_assert_eq(r.status, 0);
		cr_assert_eq(r.len, 1);
		cr_assert_eq(r.body[0], 'v');
		free(r.body);
	}
	close(fd);
	host_stop(&h);
	host_fini(&h);
}

Test(embed, bad_config, .timeout = 60)
{
	struct host h;
	char cmd[512];
	int st;

	host_init(&h, "colour blue\n");
	snprintf(cmd, sizeof(cmd), "'%s' --config %s/host.conf --shards 1 2>%s", embed_bin(), h.dir,
		 h.log);
	st = system(cmd);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "status %#x", st);
	free(h.log_text);
	h.log_text = slurp(h.log);
	cr_assert_not_null(strstr(h.log_text, "expected 'KEY VALUE' with KEY one of"), "%s",
			   h.log_text);
	host_fini(&h);
}

/* keel-embed's own option is written as keel's are: "--config=FILE" too (it was "unknown
 * argument '--config=...'"), and "--" ends the options, what follows refused by name (it was
 * "unknown argument '--'"). The config here is refused once read, so nothing starts. */
Test(embed, its_option_is_written_as_keels_options_are, .timeout = 60)
{
	static const struct {
		const char *form, *says;
	} cases[] = {
		{ "--config=%s/host.conf --shards 1", "expected 'KEY VALUE' with KEY one of" },
		{ "--shards 1 --config %s/host.conf --", "expected 'KEY VALUE' with KEY one of" },
		{ "--config %s/host.conf -- --shards 1",
		  "keel-embed: unexpected argument --shards" },
		{ "--config %s/host.conf --config", "keel-embed: --config: missing value" },
	};
	struct host h;

	host_init(&h, "colour blue\n");
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char args[256], cmd[768];
		int st;

		snprintf(args, sizeof(args), cases[i].form, h.dir);
		snprintf(cmd, sizeof(cmd), "timeout -s KILL 20 '%s' %s 2>%s", embed_bin(), args,
			 h.log);
		st = system(cmd);
		cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 2, "%s: status %#x", args, st);
		free(h.log_text);
		h.log_text = slurp(h.log);
		cr_expect_not_null(strstr(h.log_text, cases[i].says), "%s: %s", args, h.log_text);
	}
	host_fini(&h);
}

/* Values the config used to read as something else are refused, naming the line and why:
 * a number with junk after it (7070x was 7070), one that wrapped (4294967297 was port 1),
 * a word (abc was port 0: any free port), an address cut at 63 bytes, a map or directory
 * path cut at PATH_MAX - 1 bytes (it was used cut). */
Test(embed, a_malformed_config_value_is_refused_naming_why, .timeout = 60)
{
	static char long_map[PATH_MAX + 8], long_dir[PATH_MAX + 8];
	const char *const bad[][2] = {
		{ long_map, "the path is longer than PATH_MAX - 1 bytes" },
		{ long_dir, "the path is longer than PATH_MAX - 1 bytes" },
		{ "port 7070x\n", "'port' takes a number in 0..65535" },
		{ "port 4294967297\n", "'port' takes a number in 0..65535" },
		{ "port abc\n", "'port' takes a number in 0..65535" },
		{ "port -1\n", "'port' takes a number in 0..65535" },
		{ "workers 2x\n", "'workers' takes a number in 1..64" },
		{ "workers 0\n", "'workers' takes a number in 1..64" },
		{ "addr 1234567890123456789012345678901234567890123456789012345678901234\n",
		  "the address is longer than 63 bytes" },
		{ "port\n", "no value" },
	};

	snprintf(long_map, sizeof(long_map), "map /%0*d\n", PATH_MAX - 1, 0);
	snprintf(long_dir, sizeof(long_dir), "dir /%0*d\n", PATH_MAX - 1, 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct host h;
		char cmd[512], want[128];
		int st;

		host_init(&h, bad[i][0]);
		/* A config read as something else starts the host: killed, not waited for. */
		snprintf(cmd, sizeof(cmd),
			 "timeout -s KILL 20 '%s' --config %s/host.conf --shards 1 2>%s",
			 embed_bin(), h.dir, h.log);
		st = system(cmd);
		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "%s: status %#x", bad[i][0], st);
		free(h.log_text);
		h.log_text = slurp(h.log);
		/* host_init's lines: a comment, dir, addr, port, workers, then the case's. */
		snprintf(want, sizeof(want), "host.conf:6: %s", bad[i][1]);
		cr_assert_not_null(strstr(h.log_text, want), "%s: %s", bad[i][0], h.log_text);
		host_fini(&h);
	}
}

/* A value is the rest of its line: a directory with a space in its name is used whole (it
 * was cut at the space, and the data went to another directory). */
Test(embed, a_config_path_may_hold_spaces, .timeout = 60)
{
	struct host h;
	char extra[256], path[256];

	host_init(&h, "");
	snprintf(path, sizeof(path), "%s/my data", h.dir);
	cr_assert_eq(mkdir(path, 0755), 0);
	snprintf(extra, sizeof(extra), "dir %s/my data   \n", h.dir);
	snprintf(path, sizeof(path), "%s/host.conf", h.dir);
	{
		FILE *f = fopen(path, "a");

		cr_assert_not_null(f);
		fputs(extra, f);
		fclose(f);
	}
	host_start_n(&h, "1");
	host_stop(&h);
	snprintf(path, sizeof(path), "%s/my data/marker", h.dir);
	cr_assert_eq(access(path, F_OK), 0, "%s: %s", path, strerror(errno));
	snprintf(path, sizeof(path), "%s/my", h.dir);
	cr_assert_neq(access(path, F_OK), 0, "the data went to %s", path);
	host_fini(&h);
}

/* The shards' CPUs come from a core/queue map (keel-topo --plan) named in the host's config. */
Test(embed, map_from_config, .timeout = 120)
{
	struct host h;
	char cmd[512], extra[160], *log;
	struct reply r;
	int st, fd;

	host_init(&h, "");
	snprintf(cmd, sizeof(cmd),
		 "'%s' --plan --shards 1 --cpuset 1 --map %s/map.json >%s/plan 2>&1", KEEL_TOPO_BIN,
		 h.dir, h.dir);
	st = system(cmd);
	snprintf(cmd, sizeof(cmd), "%s/plan", h.dir);
	log = slurp(cmd);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "keel-topo --plan: %s", log ? log : "");
	free(log);
	snprintf(extra, sizeof(extra), "map %s/map.json\n", h.dir);
	snprintf(cmd, sizeof(cmd), "%s/host.conf", h.dir);
	{
		FILE *f = fopen(cmd, "a");
		cr_assert_not_null(f);
		fputs(extra, f);
		fclose(f);
	}
	host_start_n(&h, NULL);
	log = slurp(h.log);
	cr_assert_not_null(strstr(log, "1 shards on CPUs 1,"), "%s", log);
	free(log);
	fd = test_connect(h.port);
	req_send(fd, 'P', 1, "m", (const uint8_t *)"map", 3);
	expect_status(fd, 0, 1);
	req_send(fd, 'C', 2, "m", NULL, 0);
	cr_assert(reply_recv(fd, &r));
	cr_assert_eq(r.status, 0);
	free(r.body);
	close(fd);
	host_stop(&h);
	host_fini(&h);
}

/* SIGTERM while checksums wait for the worker threads and replies are unread: the host
 * drains its pool, stops keel and exits cleanly; what was written is still there. A job gate
 * (KEEL_EMBED_TEST_JOB_GATE) holds the jobs until the stop is seen waiting for them, and the
 * signal comes once all of them are in the pool (a connection pauses reading at 64 requests
 * or 8 MiB, so 30 of 200 KB each are read at once). Before, each job waited 20 ms and the
 * first reply was read before the signal: a CI run whose shard was starved for a second had
 * the pool empty by then, and the test failed; and with the gate but 200 requests, those
 * the paused connection had not read by the stop were never answered (44 of 200). */
static bool log_has(const struct host *h, const char *want);

Test(embed, stop_with_work_in_flight, .timeout = 120)
{
	enum { N = 30 };
	static struct kv kv[1];
	struct host h;
	struct reply r;
	unsigned left = 0;
	bool seen[N] = { false };
	char gate[96], want[96];
	const char *at;
	uint64_t sum = 0;
	int fd;

	host_init(&h, "");
	snprintf(gate, sizeof(gate), "%s/job-gate", h.dir); /* the suite's fini removes it */
	fd = open(gate, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	cr_assert_geq(fd, 0, "%s: %s", gate, strerror(errno));
	close(fd);
	setenv("KEEL_EMBED_TEST_JOB_GATE", gate, 1);
	host_start(&h);
	unsetenv("KEEL_EMBED_TEST_JOB_GATE");
	kv_fill(&kv[0], 0);
	kv[0].len = 200000;
	kv[0].val = realloc(kv[0].val, kv[0].len);
	for (size_t b = 0; b < kv[0].len; b++)
		kv[0].val[b] = (uint8_t)rnd();
	fd = test_connect(h.port);
	put_all(fd, kv, 1);
	for (unsigned i = 0; i < N; i++)
		req_send(fd, 'C', i, kv[0].key, NULL, 0);
	snprintf(want, sizeof(want), "keel-embed: test gate: %u checksum jobs in the pool", N);
	WAIT_FOR(log_has(&h, want), "all %u checksums in the pool", N);
	kill(h.pid, SIGTERM);
	WAIT_FOR(log_has(&h, "keel-embed: stopping: "), "the stop waiting for the pool's jobs");
	unlink(gate);
	host_wait_exit(&h, 0);
	at = strstr(h.log_text, "keel-embed: stopping: ");
	cr_assert_eq(sscanf(at, "keel-embed: stopping: %u checksum job", &left), 1, "%s", at);
	cr_assert_eq(left, N, "%s", at);
	/* They finished while the runtime still ran, so every one was answered. */
	sum = fnv64(kv[0].val, kv[0].len);
	for (unsigned got = 0; got < N; got++) {
		uint64_t s = 0;

		cr_assert(reply_recv(fd, &r), "%u of %u checksums answered: %s", got, N,
			  h.log_text);
		cr_assert_eq(r.status, 0, "reply %u: status %u (%s)", got, r.status, r.body);
		cr_assert(r.id < N && !seen[r.id], "reply id %u", r.id);
		seen[r.id] = true;
		cr_assert_eq(r.len, 8);
		for (int b = 0; b < 8; b++)
			s = s << 8 | r.body[b];
		cr_assert_eq(s, sum, "checksum of request %u", r.id);
		free(r.body);
	}
	close(fd);
	host_start(&h);
	fd = test_connect(h.port);
	get_all(fd, kv, 1);
	close(fd);
	host_stop(&h);
	free(kv[0].val);
	host_fini(&h);
}

/* Whether the host's stderr holds @want yet. */
static bool
log_has(const struct host *h, const char *want)
{
	char *t = slurp(h->log);
	bool has = t && strstr(t, want);

	free(t);
	return has;
}

/* A second signal's _exit leaves the host's threads running, as it means to: under
 * ThreadSanitizer (tools/test.sh runs this suite against a TSan keel-embed) that is a
 * "thread leak" report and exit status 66, not the 128 + N the tests check. The option is
 * added to TSAN_OPTIONS for the hosts started after it (other builds ignore it). */
static void
tsan_no_thread_leak_reports(void)
{
	static char opts[512];
	const char *t = getenv("TSAN_OPTIONS");

	snprintf(opts, sizeof(opts), "%s%sreport_thread_leaks=0", t ? t : "", t && *t ? ":" : "");
	setenv("TSAN_OPTIONS", opts, 1);
}

/* A host started with a job gate (KEEL_EMBED_TEST_JOB_GATE, @gate in its directory) whose
 * first checksum, of @kv (put first), a worker holds, and stopped with SIGTERM: returns the
 * client's connection once the stop waits in the pool's drain for that job, the shards
 * still serving. */
static int
stop_waiting_on_a_held_checksum(struct host *h, struct kv *kv, char *gate, size_t gatelen)
{
	int fd;

	host_init(h, "");
	snprintf(gate, gatelen, "%s/job-gate", h->dir); /* the suite's fini removes it */
	fd = open(gate, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	cr_assert_geq(fd, 0, "%s: %s", gate, strerror(errno));
	close(fd);
	setenv("KEEL_EMBED_TEST_JOB_GATE", gate, 1);
	host_start(h);
	unsetenv("KEEL_EMBED_TEST_JOB_GATE");
	kv->len = 5;
	kv->val = (uint8_t *)strdup("value");
	fd = test_connect(h->port);
	put_all(fd, kv, 1);
	req_send(fd, 'C', 1, kv->key, NULL, 0);
	WAIT_FOR(log_has(h, "keel-embed: checksum job held by the test gate"),
		 "the first checksum held in a worker");
	kill(h->pid, SIGTERM);
	WAIT_FOR(log_has(h, "keel-embed: stopping: 1 checksum job"),
		 "the stop waiting for the held checksum");
	return fd;
}

/* A checksum that comes while the host is stopping, after the stop's thread closed the
 * worker pool and before it stops keel, is answered BUSY ("worker pool is stopping": status
 * 4, worth sending again), neither run nor left unanswered. A job gate holds the first
 * checksum in a worker, so the stop certainly waits in the pool's drain, with the shards
 * serving, while the second one comes. */
Test(embed, a_checksum_that_comes_while_stopping_is_answered_busy, .timeout = 120)
{
	struct kv kv = { .key = "sum-at-stop" };
	struct host h;
	struct reply r;
	char gate[96];
	int fd = stop_waiting_on_a_held_checksum(&h, &kv, gate, sizeof(gate));

	req_send(fd, 'C', 2, kv.key, NULL, 0);
	cr_assert(reply_recv(fd, &r), "no reply to the checksum sent during the stop");
	cr_assert_eq(r.id, 2, "reply for id %u (status %u, %s) before the one sent at the stop",
		     r.id, r.status, r.body);
	cr_assert_eq(r.status, 4, "the checksum sent during the stop: status %u (%s), not BUSY",
		     r.status, r.body);
	cr_assert_not_null(strstr((const char *)r.body, "worker pool is stopping"), "%s", r.body);
	free(r.body);
	unlink(gate);
	/* The held job ends and the stop goes on: its reply is sent just before the shards'
	 * stop closes the connection, which may cut it off (the close of a connection with a
	 * send in flight is a reset), so it is checked only when it came. */
	if (reply_recv(fd, &r)) {
		uint64_t sum = 0;

		cr_assert_eq(r.id, 1);
		cr_assert_eq(r.status, 0, "the held checksum: status %u (%s)", r.status, r.body);
		cr_assert_eq(r.len, 8);
		for (int b = 0; b < 8; b++)
			sum = sum << 8 | r.body[b];
		cr_assert_eq(sum, fnv64(kv.val, kv.len));
		free(r.body);
	}
	close(fd);
	host_wait_exit(&h, 0); /* stopping since the SIGTERM above: a second would end it now */
	free(kv.val);
	host_fini(&h);
}

/* A host of two shards with a job gate (KEEL_EMBED_TEST_JOB_GATE, @gate in its directory)
 * and KEEL_EMBED_TEST_STOP_AT_CHECKSUM=@mode: the shard that hands checksum 1 (of @kv, put
 * first) to the worker pool stops the host, no signal involved. Returns the client's
 * connection once the stop waits in the pool's drain for that job, a worker holding it. */
static int
a_shard_stops_while_a_checksum_is_held(struct host *h, struct kv *kv, const char *mode, char *gate,
				       size_t gatelen)
{
	int fd;

	host_init(h, "");
	snprintf(gate, gatelen, "%s/job-gate", h->dir); /* the suite's fini removes it */
	fd = open(gate, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	cr_assert_geq(fd, 0, "%s: %s", gate, strerror(errno));
	close(fd);
	setenv("KEEL_EMBED_TEST_JOB_GATE", gate, 1);
	setenv("KEEL_EMBED_TEST_STOP_AT_CHECKSUM", mode, 1);
	host_start(h);
	unsetenv("KEEL_EMBED_TEST_JOB_GATE");
	unsetenv("KEEL_EMBED_TEST_STOP_AT_CHECKSUM");
	kv->len = 5;
	kv->val = (uint8_t *)strdup("value");
	fd = test_connect(h->port);
	put_all(fd, kv, 1);
	req_send(fd, 'C', 1, kv->key, NULL, 0);
	WAIT_FOR(log_has(h, "keel-embed: checksum job held by the test gate"),
		 "the checksum held in a worker");
	WAIT_FOR(log_has(h, "keel-embed: stopping: 1 checksum job"),
		 "the stop waiting for the held checksum");
	return fd;
}

/* The checksum reply @r: id 1, OK, the FNV-1a 64 of @kv's value. */
static void
expect_held_sum(const struct reply *r, const struct kv *kv)
{
	uint64_t sum = 0;

	cr_assert_eq(r->id, 1);
	cr_assert_eq(r->status, 0, "the held checksum: status %u (%s)", r->status, r->body);
	cr_assert_eq(r->len, 8);
	for (int b = 0; b < 8; b++)
		sum = sum << 8 | r->body[b];
	cr_assert_eq(sum, fnv64(kv->val, kv->len));
}

/* A shard that stops the host itself (as one that cannot listen does: no signal) while a
 * worker holds a checksum job: the result is answered, with its checksum, and its buffer
 * put. The stop hook drained the pool once the stop had begun, when keel_runtime_submit
 * refuses: the result was left on the orphan list, unanswered, its buffer never put ("...
 * still referenced at teardown"). The host now drains the pool before it stops keel, as
 * the signal's stop does. */
Test(embed, a_checksum_held_when_a_shard_stops_the_host_is_answered, .timeout = 120)
{
	struct kv kv = { .key = "sum-at-shard-stop" };
	struct host h;
	struct reply r;
	char gate[96];
	int fd = a_shard_stops_while_a_checksum_is_held(&h, &kv, "host", gate, sizeof(gate));
	bool got;

	unlink(gate);
	got = reply_recv(fd, &r);
	if (!got) {
		char *t = slurp(h.log);

		cr_assert_fail("checksum 1 was not answered (the connection closed): %s", t);
	}
	expect_held_sum(&r, &kv);
	free(r.body);
	close(fd);
	host_wait_exit(&h, 1); /* the shard's status, -ECANCELED */
	cr_assert_null(strstr(h.log_text, "still referenced at teardown"), "%s", h.log_text);
	free(kv.val);
	host_fini(&h);
}

/* A stop that does not wait for the pool (a bare keel_stop on a shard) while a worker holds
 * a checksum job: the result, refused by keel_runtime_submit once the stop has begun, is
 * taken back by its shard's stop hook, which answers it and puts its buffer. It was left on
 * the orphan list that main() frees after the join, its buffer never put. Its reply goes to
 * a connection the stop closes: gracefully (keel-embed's --stop-flush-ms 2000), so the
 * client gets it, then an EOF. It was reset with the connection ("checksum 1 was not
 * answered") before the stop's flush. */
Test(embed, a_result_refused_once_the_stop_began_is_answered_by_its_shard, .timeout = 120)
{
	struct kv kv = { .key = "sum-at-keel-stop" };
	struct host h;
	struct reply r;
	char gate[96], b;
	int fd = a_shard_stops_while_a_checksum_is_held(&h, &kv, "keel", gate, sizeof(gate));

	unlink(gate);
	if (!reply_recv(fd, &r)) {
		char *t = slurp(h.log);

		cr_assert_fail("checksum 1 was not answered (the connection closed): %s", t);
	}
	expect_held_sum(&r, &kv);
	free(r.body);
	cr_assert_eq(recv(fd, &b, 1, 0), 0, "after the reply: %s, not an EOF", strerror(errno));
	close(fd);
	host_wait_exit(&h, 1); /* the shard's status, -ECANCELED */
	cr_assert_null(strstr(h.log_text, "still referenced at teardown"), "%s", h.log_text);
	free(kv.val);
	host_fini(&h);
}

/* A second SIGTERM while the stop waits for a checksum a worker holds (the job gate)
 * exits at once (128 + 15), saying what it drops: it was ignored, the signal thread then
 * waiting in the pool's drain, and only SIGKILL ended such a host. */
Test(embed, a_second_signal_ends_a_stop_that_waits, .timeout = 120)
{
	struct kv kv = { .key = "sum-held" };
	struct host h;
	char gate[96];
	int fd;

	tsan_no_thread_leak_reports();
	fd = stop_waiting_on_a_held_checksum(&h, &kv, gate, sizeof(gate));

	kill(h.pid, SIGTERM);
	host_wait_exit(&h, 128 + SIGTERM);
	cr_assert_not_null(strstr(h.log_text, "second signal: exiting now"), "%s", h.log_text);
	unlink(gate);
	close(fd);
	free(kv.val);
	host_fini(&h);
}

/* A second signal's exit removes the listener's Unix path ("addr unix:PATH"): it skipped
 * the listener's destroy, which does, and the next start failed with EADDRINUSE. The host
 * is stopped while both signals are sent, so that its signal thread takes them together. */
Test(embed, a_second_signal_leaves_no_unix_socket_behind, .timeout = 60)
{
	char conf[160], sock[160], cmd[1024];
	struct host h;
	FILE *f;
	int st;

	tsan_no_thread_leak_reports();
	host_init(&h, "");
	snprintf(conf, sizeof(conf), "%s/unix.conf", h.dir);
	snprintf(sock, sizeof(sock), "%s/sock", h.dir);
	f = fopen(conf, "w");
	cr_assert_not_null(f);
	fprintf(f, "dir %s/data\naddr unix:%s\nport 0\nworkers 1\n", h.dir, sock);
	fclose(f);
	snprintf(cmd, sizeof(cmd),
		 "'%s' --config %s --shards 1 --idle-poll-us 0 >%s 2>&1 </dev/null & p=$!; i=0; "
		 "while [ $i -lt 600 ] && ! grep -qs 'listening on' %s; do sleep 0.1; "
		 "i=$((i + 1)); done; kill -STOP $p; kill -INT $p; kill -TERM $p; kill -CONT $p; "
		 "wait $p",
		 embed_bin(), conf, h.log, h.log);
	st = system(cmd);
	h.log_text = slurp(h.log);
	if (access(sock, F_OK) == 0) {
		unlink(sock);
		cr_assert_fail("%s was left behind: %s", sock, h.log_text);
	}
	cr_assert(WIFEXITED(st) && (WEXITSTATUS(st) == 128 + SIGINT ||
				    WEXITSTATUS(st) == 128 + SIGTERM || WEXITSTATUS(st) == 0),
		  "status %#x: %s", st, h.log_text);
	host_fini(&h);
}

/* ---- the index: keys a client chooses to collide ---- */

static uint32_t
fnv1a32(const char *p)
{
	uint32_t h = 2166136261u;

	for (; *p; p++)
		h = (h ^ (uint8_t)*p) * 16777619u;
	return h;
}

#define IDX_KEYS    3000u
#define IDX_COLLIDE 200u

/* The host's index is hashed under a per-process random key and grows with its keys. It
 * hashed with unkeyed FNV-1a into 65,536 fixed buckets: a client could choose keys of one
 * bucket (here 200 of 3,000, found by trying keys against FNV-1a, as anyone can), and
 * every put and get of them walked the one chain, under the index's mutex that every shard
 * takes. The stop line gives the index's shape. */
Test(embed, keys_built_to_collide_do_not_share_a_chain, .timeout = 120)
{
	static struct kv kv[IDX_KEYS];
	unsigned found = 0, keys, buckets, longest;
	uint32_t want = 0;
	const char *line;
	struct host h;
	int fd;

	for (uint64_t t = 0; found < IDX_COLLIDE; t++) {
		snprintf(kv[found].key, sizeof(kv[found].key), "c-%llx", (unsigned long long)t);
		if (found == 0)
			want = fnv1a32(kv[0].key) & 0xffff;
		if ((fnv1a32(kv[found].key) & 0xffff) == want)
			found++;
	}
	for (unsigned i = IDX_COLLIDE; i < IDX_KEYS; i++)
		snprintf(kv[i].key, sizeof(kv[i].key), "r-%u", i);
	for (unsigned i = 0; i < IDX_KEYS; i++) {
		kv[i].len = 1;
		kv[i].val = malloc(1);
		kv[i].val[0] = (uint8_t)i;
	}
	host_init(&h, "");
	host_start(&h);
	fd = test_connect(h.port);
	put_all(fd, kv, IDX_KEYS);
	get_all(fd, kv, IDX_KEYS);
	close(fd);
	host_stop(&h);
	line = strstr(h.log_text, "keel-embed: index: ");
	cr_assert_not_null(line, "no index line: %s", h.log_text);
	cr_assert_eq(sscanf(line, "keel-embed: index: %u keys in %u buckets, longest chain %u",
			    &keys, &buckets, &longest),
		     3, "%s", line);
	cr_assert_eq(keys, IDX_KEYS, "%s", line);
	cr_assert_geq(buckets, keys, "the index did not grow with its keys: %s", line);
	/* 3,000 keys over at least 3,000 random buckets: a chain of 16 has odds below 1e-9. */
	cr_assert_leq(longest, 16, "%s", line);
	for (unsigned i = 0; i < IDX_KEYS; i++)
		free(kv[i].val);
	host_fini(&h);
}

/* The marker and shard-0.dat both gone, shard-1.dat still there: the start refuses, naming
 * the marker, as with the first file there. The look for data files stopped at the first
 * name missing, so the host drew a new marker and none of shard-1.dat's records matched
 * it again (and its tail was cut). */
Test(embed, a_missing_marker_is_named_when_an_earlier_data_file_is_gone_too, .timeout = 120)
{
	struct host h;
	char path[512], from[512];

	host_init(&h, "");
	snprintf(path, sizeof(path), "%s/data/shard-1.dat", h.dir);
	{
		FILE *f = fopen(path, "w");

		cr_assert_not_null(f);
		fputs("0123456789abcdef", f); /* any bytes: records need the marker to be read */
		fclose(f);
	}
	snprintf(from, sizeof(from), "%s/data/marker", h.dir);
	unlink(from); /* no marker (none was ever written here) */
	start_refused_naming_the_marker(&h, "2");
	host_fini(&h);
}

/* The data files of a run with more shards, one of them gone: those after the gap are
 * still read. Here the keys are written by a 1-shard run, its shard-0.dat moved to
 * shard-2.dat (a 3-shard run's last file, shard-1.dat lost), and the host restarted with 1
 * shard: every key is served from shard-2.dat. The read stopped at the first name missing,
 * and those records went unread without a word. */
Test(embed, data_files_after_a_missing_one_are_still_read, .timeout = 120)
{
	static struct kv kv[20];
	char from[512], to[512];
	struct host h;
	int fd;

	host_init(&h, "");
	host_start_n(&h, "1");
	for (unsigned i = 0; i < 20; i++)
		kv_fill(&kv[i], 1000 + i);
	fd = test_connect(h.port);
	put_all(fd, kv, 20);
	close(fd);
	host_stop(&h);
	snprintf(from, sizeof(from), "%s/data/shard-0.dat", h.dir);
	snprintf(to, sizeof(to), "%s/data/shard-2.dat", h.dir);
	cr_assert_eq(rename(from, to), 0);
	host_start_n(&h, "1");
	fd = test_connect(h.port);
	get_all(fd, kv, 20);
	close(fd);
	host_stop(&h);
	cr_assert(strstr(h.log_text, "keel-embed: 2 data files, 20 records"), "%s", h.log_text);
	for (unsigned i = 0; i < 20; i++)
		free(kv[i].val);
	host_fini(&h);
}
