// SPDX-License-Identifier: MIT
/* Network slices to disk and back (keel/file.h): a server writes every received slice to a
 * file with keel_file_write_slice (no copy: the slice's own bytes, WRITE_FIXED when its
 * receive buffer is registered memory), reads the range back into a buffer of its own with
 * keel_file_read_slice and sends that buffer on the connection. The client gets back what it
 * sent, and the file holds it. --file-qd 1 keeps the chunks in order. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

struct chunk {
	struct keel_file_req req;
	struct keel_conn *c;
	struct keel_slice back;
	uint64_t off;
	uint32_t len;
};

static struct keel_file g_f;
static uint64_t g_off;
static struct keel_file_stats g_st;
static bool g_registered;
static _Atomic int g_chunks_done;

static void
read_cb(struct keel_file_req *req, int res, void *arg)
{
	struct chunk *ch = arg;

	SHARD_CHECK_EQ(res, (int)ch->len, "read back %u bytes at %llu", ch->len,
		       (unsigned long long)ch->off);
	int r = keel_conn_send(ch->c, &ch->back);
	if (!SHARD_CHECK(r >= 0, "send: %d", r))
		keel_slice_put(&ch->back);
	keel_file_stats(keel_this_shard(), &g_st);
	g_registered = keel_shard_bufs_registered();
	atomic_fetch_add(&g_chunks_done, 1);
	keel_shard_free(ch);
}

static void
wrote_cb(struct keel_file_req *req, int res, void *arg)
{
	struct chunk *ch = arg;

	SHARD_CHECK_EQ(res, (int)ch->len, "wrote %u bytes at %llu", ch->len,
		       (unsigned long long)ch->off);
	if (!SHARD_CHECK_EQ(keel_buf_alloc(keel_shard_alloc(), ch->len, &ch->back), 0) ||
	    !SHARD_CHECK_EQ(keel_file_read_slice(&ch->req, &g_f, &ch->back, ch->off, read_cb, ch),
			    0, "%s", keel_file_last_error())) {
		keel_shard_free(ch);
		return;
	}
}

static void
disk_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		struct chunk *ch = keel_shard_malloc(sizeof(*ch));
		if (SHARD_CHECK(ch != NULL, "memory")) {
			ch->c = c;
			ch->off = g_off;
			ch->len = s[i].len;
			g_off += s[i].len;
			if (!SHARD_CHECK_EQ(keel_file_write_slice(&ch->req, &g_f, &s[i], ch->off,
								  wrote_cb, ch),
					    0, "%s", keel_file_last_error()))
				keel_shard_free(ch);
		}
		/* The request holds its own reference: the received buffer goes back to its
		 * ring when the write completes. */
		keel_slice_put(&s[i]);
	}
}

static void
disk_close(struct keel_conn *c, int status)
{
}

static const struct keel_conn_ops disk_ops = { .on_data = disk_data, .on_close = disk_close };

Test(net_file, received_slices_to_disk_and_back)
{
	struct keel_opts o = net_test_opts(1);
	struct srv srv;
	char path[256];
	size_t len = test_small() ? 64 << 10 : 192 << 10;
	unsigned char *out = malloc(len), *in = malloc(len), *disk = malloc(len);

	snprintf(path, sizeof(path), "%s/test_file_net.XXXXXX", KEEL_BIN_DIR);
	int fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	cr_assert_eq(keel_file_from_fd(fd, &g_f), 0);
	for (size_t i = 0; i < len; i++)
		out[i] = (unsigned char)(i * 7 + i / 251);
	o.file_qd = 1;
	cr_assert_eq(srv_start(&srv, &o, NULL, &disk_ops), 0);
	int c = cli_connect(srv.port);
	cr_assert_geq(c, 0);
	cr_assert_eq(cli_write_all(c, out, len), 0);
	cr_assert_eq(cli_read_all(c, in, len), 0);
	close(c);
	cr_assert_eq(srv_stop(&srv), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(memcmp(in, out, len), 0, "the bytes came back through the disk");
	cr_assert_eq(pread(fd, disk, len, 0), (ssize_t)len);
	cr_assert_eq(memcmp(disk, out, len), 0, "the file holds what was received");
	cr_assert_eq(g_st.inflight_max, 1);
	cr_assert_eq(g_st.issued, 2 * (uint64_t)atomic_load(&g_chunks_done));
	if (g_registered)
		cr_assert_eq(g_st.fixed, g_st.issued,
			     "receive buffers and allocated buffers are registered memory: "
			     "%llu of %llu fixed",
			     (unsigned long long)g_st.fixed, (unsigned long long)g_st.issued);
	close(fd);
	unlink(path);
	free(out);
	free(in);
	free(disk);
	/* Said, not passed over: the rest ran, the WRITE_FIXED check could not. */
	if (!g_registered)
		cr_skip("the shard's buffers were not registered (RLIMIT_MEMLOCK?): the bytes "
			"were checked, WRITE_FIXED was not");
}
