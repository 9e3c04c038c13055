// SPDX-License-Identifier: MIT
/* Disk I/O on the shard ring (keel/file.h): each call, bad input, O_DIRECT alignment, a full
 * file system, the per-shard queue depth and its FIFO, and stop with requests in flight. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

/* A file on the build tree's file system (ext4 here): tmpfs may refuse O_DIRECT. */
static char tmp_path[256];

static int
make_tmp(void)
{
	snprintf(tmp_path, sizeof(tmp_path), "%s/test_file.XXXXXX", KEEL_BIN_DIR);
	int fd = mkstemp(tmp_path);
	cr_assert_geq(fd, 0, "mkstemp %s: %s", tmp_path, strerror(errno));
	return fd;
}

static void
rm_tmp(void)
{
	if (tmp_path[0])
		unlink(tmp_path);
}

/* ---- every call, in one chain ---- */

struct chain {
	struct keel_file_req req;
	struct keel_file f;
	int step;
	char wbuf[64], rbuf[64], a[8], b[8];
	struct iovec iov[2];
	struct statx stx;
	int results[16];
	char readback[64];
	char err[64];
};

static struct chain ch;

static void chain_cb(struct keel_file_req *req, int res, void *arg);

static void
chain_next(struct chain *c)
{
	int r = 0;

	switch (c->step) {
	case 0:
		r = keel_file_openat(&c->req, AT_FDCWD, tmp_path, O_RDWR, 0, 0, &c->f, chain_cb, c);
		break;
	case 1:
		strcpy(c->wbuf, "hello, disk");
		r = keel_file_write(&c->req, &c->f, c->wbuf, 11, 0, chain_cb, c);
		break;
	case 2:
		r = keel_file_fsync(&c->req, &c->f, chain_cb, c);
		break;
	case 3:
		r = keel_file_fdatasync(&c->req, &c->f, chain_cb, c);
		break;
	case 4:
		r = keel_file_read(&c->req, &c->f, c->rbuf, sizeof(c->rbuf), 0, chain_cb, c);
		break;
	case 5:
		memcpy(c->a, "ABCD", 4);
		memcpy(c->b, "EFG", 3);
		c->iov[0] = (struct iovec){ c->a, 4 };
		c->iov[1] = (struct iovec){ c->b, 3 };
		r = keel_file_writev(&c->req, &c->f, c->iov, 2, 100, chain_cb, c);
		break;
	case 6:
		memset(c->a, 0, sizeof(c->a));
		memset(c->b, 0, sizeof(c->b));
		r = keel_file_readv(&c->req, &c->f, c->iov, 2, 100, chain_cb, c);
		break;
	case 7:
		r = keel_file_fallocate(&c->req, &c->f, 0, 0, 8192, chain_cb, c);
		break;
	case 8:
		r = keel_file_statx(&c->req, AT_FDCWD, tmp_path, 0, STATX_SIZE, &c->stx, chain_cb,
				    c);
		break;
	case 9:
		r = keel_file_close(&c->req, &c->f, chain_cb, c);
		SHARD_CHECK_EQ(c->f.fd, -1, "close leaves -1 in the keel_file");
		break;
	default:
		keel_stop(0);
		return;
	}
	if (!SHARD_CHECK_EQ(r, 0, "step %d: %s", c->step, keel_file_last_error()))
		keel_stop(-EIO);
}

static void
chain_cb(struct keel_file_req *req, int res, void *arg)
{
	struct chain *c = arg;

	SHARD_CHECK(req == &c->req, "the callback gets its request");
	c->results[c->step] = res;
	if (c->step == 4 && res > 0)
		memcpy(c->readback, c->rbuf, (size_t)res);
	c->step++;
	chain_next(c);
}

static void
chain_start(void *app)
{
	chain_next(&ch);
}

Test(core_file, every_call_in_a_chain)
{
	struct keel_opts o = test_opts(1);
	int fd = make_tmp();
	close(fd);

	int r = keel_run(&o, chain_start, NULL);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(ch.step, 10, "every step ran (%d)", ch.step);
	cr_assert_geq(ch.results[0], 0, "open: %d", ch.results[0]);
	cr_assert_eq(ch.results[1], 11, "write: %d", ch.results[1]);
	cr_assert_eq(ch.results[2], 0, "fsync");
	cr_assert_eq(ch.results[3], 0, "fdatasync");
	cr_assert_eq(ch.results[4], 11, "read: %d", ch.results[4]);
	cr_assert_eq(memcmp(ch.readback, "hello, disk", 11), 0);
	cr_assert_eq(ch.results[5], 7, "writev: %d", ch.results[5]);
	cr_assert_eq(ch.results[6], 7, "readv: %d", ch.results[6]);
	cr_assert_eq(memcmp(ch.a, "ABCD", 4), 0);
	cr_assert_eq(memcmp(ch.b, "EFG", 3), 0);
	cr_assert_eq(ch.results[7], 0, "fallocate: %d", ch.results[7]);
	cr_assert_eq(ch.results[8], 0, "statx: %d", ch.results[8]);
	cr_assert_eq(ch.stx.stx_size, 8192, "statx sees the fallocated size");
	cr_assert_eq(ch.results[9], 0, "close: %d", ch.results[9]);
	rm_tmp();
}

/* ---- bad input: a closed descriptor, NULLs, calls off the loop ---- */

struct bad {
	struct keel_file_req req[4];
	struct keel_file f;
	char buf[16];
	int res[4], n;
	int sync_neg, sync_null, sync_len;
	int big_v, big_slice, cloexec; /* sizes above INT_MAX; O_CLOEXEC on a direct descriptor */
	int far_w, far_v, far_s;       /* offsets above INT64_MAX other than -1 (the position) */
	char far_err[256];
	char big_v_err[256], cloexec_err[256];
};

static struct bad bad;

static void
bad_cb(struct keel_file_req *req, int res, void *arg)
{
	struct bad *b = arg;
	b->res[req - b->req] = res;
	if (++b->n == 3)
		keel_stop(0);
}

static void
bad_start(void *app)
{
	struct bad *b = &bad;
	struct keel_file neg = { .fd = -1 };
	/* Before the closed number below is taken, so that this cannot reuse it. */
	struct keel_file dn = { .fd = open("/dev/null", O_WRONLY | O_CLOEXEC) };
	int fd = open("/dev/null", O_RDONLY);

	close(fd); /* a descriptor number that is not open */
	b->f = (struct keel_file){ .fd = fd };
	SHARD_CHECK_EQ(keel_file_read(&b->req[0], &b->f, b->buf, 4, 0, bad_cb, b), 0);
	SHARD_CHECK_EQ(keel_file_fsync(&b->req[1], &b->f, bad_cb, b), 0);
	SHARD_CHECK_EQ(keel_file_close(&b->req[2], &b->f, bad_cb, b), 0);
	b->sync_neg = keel_file_read(&b->req[3], &neg, b->buf, 4, 0, bad_cb, b);
	b->sync_null = keel_file_read(&b->req[3], &b->f, b->buf, 4, 0, NULL, b);
	b->sync_len = keel_file_readv(&b->req[3], &neg, NULL, 0, 0, bad_cb, b);
	{
		/* Writes to /dev/null, refused before anything is written (were one let through,
		 * the kernel would only read past the buffers, never write there). */
		struct iovec v[2] = { { b->buf, (size_t)INT_MAX }, { b->buf, 2 } };
		struct keel_slice big;

		b->big_v = keel_file_writev(&b->req[3], &dn, v, 2, 0, bad_cb, b);
		snprintf(b->big_v_err, sizeof(b->big_v_err), "%s", keel_file_last_error());
		SHARD_CHECK_EQ(keel_buf_alloc(keel_shard_alloc(), 16, &big), 0);
		big.len = (uint32_t)INT_MAX + 1u;
		b->big_slice = keel_file_write_slice(&b->req[3], &dn, &big, 0, bad_cb, b);
		big.len = 16;
		b->far_w = keel_file_write(&b->req[3], &dn, b->buf, 3, UINT64_MAX - 1, bad_cb, b);
		snprintf(b->far_err, sizeof(b->far_err), "%s", keel_file_last_error());
		b->far_v = keel_file_writev(&b->req[3], &dn, v + 1, 1, 1ull << 63, bad_cb, b);
		b->far_s = keel_file_write_slice(&b->req[3], &dn, &big, (1ull << 63) + 4096, bad_cb,
						 b);
		keel_slice_put(&big);
		b->cloexec =
			keel_file_openat(&b->req[3], AT_FDCWD, "/dev/null", O_RDONLY | O_CLOEXEC, 0,
					 KEEL_FILE_OPEN_DIRECT_DESC, &dn, bad_cb, b);
		snprintf(b->cloexec_err, sizeof(b->cloexec_err), "%s", keel_file_last_error());
	}
}

Test(core_file, closed_fd_and_bad_arguments)
{
	struct keel_opts o = test_opts(1);
	struct keel_file f;

	int fd = open("/dev/null", O_RDONLY);
	close(fd);
	cr_assert_eq(keel_file_from_fd(fd, &f), -EBADF);

	int r = keel_run(&o, bad_start, NULL);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(bad.big_v, -EINVAL, "iovecs of INT_MAX + 2 bytes");
	cr_assert(strstr(bad.big_v_err, "at most"), "%s", bad.big_v_err);
	cr_assert_eq(bad.big_slice, -EINVAL, "a slice of INT_MAX + 1 bytes");
	cr_assert_eq(bad.far_w, -EINVAL, "a write at offset 2^64 - 2");
	cr_assert(strstr(bad.far_err, "offset"), "%s", bad.far_err);
	cr_assert_eq(bad.far_v, -EINVAL, "a writev at offset 2^63");
	cr_assert_eq(bad.far_s, -EINVAL, "a slice write at offset 2^63 + 4096");
	cr_assert_eq(bad.cloexec, -EINVAL, "O_CLOEXEC with a direct descriptor");
	cr_assert(strstr(bad.cloexec_err, "O_CLOEXEC"), "%s", bad.cloexec_err);
	cr_assert_eq(bad.res[0], -EBADF, "read of a closed fd: %d", bad.res[0]);
	cr_assert_eq(bad.res[1], -EBADF, "fsync of a closed fd: %d", bad.res[1]);
	cr_assert_eq(bad.res[2], -EBADF, "close of a closed fd: %d", bad.res[2]);
	cr_assert_eq(bad.sync_neg, -EBADF, "fd -1 refused in the call");
	cr_assert_eq(bad.sync_null, -EINVAL, "no callback");
	cr_assert_eq(bad.sync_len, -EBADF, "fd -1 checked first");
	cr_assert_eq(bad.n, 3, "no callback for a refused call");
}

/* ---- O_DIRECT: misalignment refused, naming which value ---- */

struct dio {
	struct keel_file_req req;
	struct keel_file f;
	struct keel_slice sl;
	int open_res, read_res;
	int r_off, r_len, r_addr;
	char e_off[384], e_len[384], e_addr[384];
	bool skipped;
};

static struct dio dio;
static bool dio_desc; /* opened into the direct-descriptor table: statx by path, then the slot */

static void
dio_read_cb(struct keel_file_req *req, int res, void *arg)
{
	dio.read_res = res;
	SHARD_CHECK(memcmp(dio.sl.data, "DIRECT", 6) == 0, "the block read back");
	keel_slice_put(&dio.sl);
	keel_stop(0);
}

static void
dio_open_cb(struct keel_file_req *req, int res, void *arg)
{
	struct dio *d = &dio;
	uint32_t a;

	d->open_res = res;
	if (res == -EINVAL) { /* the file system refuses O_DIRECT */
		d->skipped = true;
		keel_stop(0);
		return;
	}
	if (!SHARD_CHECK(res >= 0, "open O_DIRECT: %d", res)) {
		keel_stop(-EIO);
		return;
	}
	SHARD_CHECK(d->f.flags & KEEL_FILE_F_DIRECT_IO, "flags 0x%x", d->f.flags);
	SHARD_CHECK(!dio_desc || (d->f.flags & KEEL_FILE_F_FIXED), "flags 0x%x", d->f.flags);
	SHARD_CHECK(d->f.lbs || d->f.dio_offset_align, "alignment known: lbs %u, dio %u", d->f.lbs,
		    d->f.dio_offset_align);
	a = d->f.dio_offset_align ? d->f.dio_offset_align : d->f.lbs;
	if (!SHARD_CHECK_EQ(keel_buf_alloc(keel_shard_alloc(), 8192, &d->sl), 0)) {
		keel_stop(-EIO);
		return;
	}
	/* docs/file.md promises page-aligned buffers from 4 KiB up. */
	SHARD_CHECK((uintptr_t)d->sl.data % 4096 == 0, "keel_buf_alloc(8192) at %p", d->sl.data);
	/* Each case alone: the message names that value, not the others. */
	struct keel_slice part;
	keel_slice_sub(&d->sl, 0, 4096, &part);
	d->r_off = keel_file_read_slice(&d->req, &d->f, &part, 1, dio_read_cb, d);
	snprintf(d->e_off, sizeof(d->e_off), "%s", keel_file_last_error());
	keel_slice_put(&part);
	d->r_len = keel_file_read(&d->req, &d->f, d->sl.data, a + 1, 0, dio_read_cb, d);
	snprintf(d->e_len, sizeof(d->e_len), "%s", keel_file_last_error());
	d->r_addr = keel_file_read(&d->req, &d->f, d->sl.data + 1, 4096, 0, dio_read_cb, d);
	snprintf(d->e_addr, sizeof(d->e_addr), "%s", keel_file_last_error());
	/* Aligned, at the file's position (-1, 0 on this new descriptor): goes through. keel
	 * cannot know the position, so only the kernel checks it (-1 was once refused as
	 * misaligned, and no O_DIRECT request could use the position). */
	keel_slice_sub(&d->sl, 0, 4096, &part);
	if (!SHARD_CHECK_EQ(
		    keel_file_read_slice(&d->req, &d->f, &part, (uint64_t)-1, dio_read_cb, d), 0,
		    "%s", keel_file_last_error())) {
		keel_slice_put(&d->sl);
		keel_stop(-EIO);
	}
	keel_slice_put(&part);
}

static void
dio_start(void *app)
{
	if (dio_desc)
		SHARD_CHECK_EQ(io_uring_register_files_sparse(keel_shard_ring_get(), 8), 0);
	SHARD_CHECK_EQ(keel_file_openat(&dio.req, AT_FDCWD, tmp_path, O_RDWR | O_DIRECT, 0,
					dio_desc ? KEEL_FILE_OPEN_DIRECT_DESC : 0, &dio.f,
					dio_open_cb, NULL),
		       0);
}

static void
dio_misalignment(bool desc)
{
	struct keel_opts o = test_opts(1);
	char block[4096] = "DIRECT";
	int fd = make_tmp();

	dio_desc = desc;

	cr_assert_eq(pwrite(fd, block, sizeof(block), 0), (ssize_t)sizeof(block));
	close(fd);
	int r = keel_run(&o, dio_start, NULL);
	rm_tmp();
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	if (dio.skipped)
		cr_skip_test("the file system of %s refuses O_DIRECT", KEEL_BIN_DIR);
	cr_assert_eq(dio.r_off, -EINVAL);
	cr_assert(strstr(dio.e_off, "offset 1 is not a multiple"), "%s", dio.e_off);
	cr_assert(!strstr(dio.e_off, "length 4096 is") && !strstr(dio.e_off, "buffer address 0x"),
		  "%s", dio.e_off);
	cr_assert(strstr(dio.e_off, "logical block size"), "%s", dio.e_off);
	cr_assert_eq(dio.r_len, -EINVAL);
	cr_assert(strstr(dio.e_len, "length ") && strstr(dio.e_len, "is not a multiple"), "%s",
		  dio.e_len);
	cr_assert(!strstr(dio.e_len, "offset 0 is") && !strstr(dio.e_len, "buffer address 0x"),
		  "%s", dio.e_len);
	cr_assert_eq(dio.r_addr, -EINVAL);
	cr_assert(strstr(dio.e_addr, "buffer address 0x"), "%s", dio.e_addr);
	cr_assert(!strstr(dio.e_addr, "length 4096 is") && !strstr(dio.e_addr, "offset 0 is"), "%s",
		  dio.e_addr);
	cr_assert_eq(dio.read_res, 4096, "aligned O_DIRECT read at the position: %d", dio.read_res);
}

/* keel_file_stats off its shard: -EINVAL, and one ERROR line naming the fix, however
 * often it is called (before, a bare -EINVAL: a host polling it from its own thread saw
 * only that). */
static struct keel_shard *_Atomic fs_shard;
static _Atomic int fs_errors, fs_named;

static void
fs_start(void *app)
{
	(void)app;
	atomic_store(&fs_shard, keel_this_shard());
}

static void
fs_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)shard, (void)arg;
	if (level != KEEL_LOG_ERROR || strcmp(module, "file") != 0)
		return;
	atomic_fetch_add(&fs_errors, 1);
	if (strstr(msg, "keel_file_stats of shard 0 on a thread that is not a shard") &&
	    strstr(msg, "keel_runtime_submit"))
		atomic_fetch_add(&fs_named, 1);
}

Test(core_file, stats_off_the_shard_are_refused_and_said_once)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	struct keel_file_stats st;

	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, fs_start, NULL), 0);
	WAIT_FOR(atomic_load(&fs_shard) != NULL, "on_start never ran");
	keel_log_set_sink(fs_sink, NULL);
	cr_assert_eq(keel_file_stats(atomic_load(&fs_shard), &st), -EINVAL);
	cr_assert_eq(keel_file_stats(atomic_load(&fs_shard), &st), -EINVAL);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	cr_assert_eq(atomic_load(&fs_errors), 1, "%d ERROR lines for two refusals, want 1",
		     atomic_load(&fs_errors));
	cr_assert_eq(atomic_load(&fs_named), 1, "the line does not name the shard and the fix");
}

Test(core_file, odirect_misalignment_names_the_value)
{
	dio_misalignment(false);
}

/* The same through a direct descriptor: the alignment comes from a statx of the path, and
 * the slot is taken at the open's second completion. */
Test(core_file, odirect_misalignment_names_the_value_for_a_direct_descriptor)
{
	dio_misalignment(true);
}

/* ---- O_DIRECT: the alignment is the opened file's, not its path's ---- */

/* An O_TMPFILE open's path names the directory, so a second stage that reads the alignment
 * by path reads the directory's (ext4 reports STATX_DIOALIGN for regular files only): the
 * statx must go through the new descriptor. A direct descriptor has none to go through, so
 * that combination is refused. */
struct dtmp {
	struct keel_file_req req;
	struct keel_file f;
	int open_res, direct_res;
	char direct_err[384];
};

static struct dtmp dtmp;

static void
dtmp_open_cb(struct keel_file_req *req, int res, void *arg)
{
	dtmp.open_res = res;
	keel_stop(0);
}

static void
dtmp_start(void *app)
{
	struct keel_file f2;

	dtmp.direct_res =
		keel_file_openat(&dtmp.req, AT_FDCWD, KEEL_BIN_DIR, O_TMPFILE | O_RDWR | O_DIRECT,
				 0600, KEEL_FILE_OPEN_DIRECT_DESC, &f2, dtmp_open_cb, NULL);
	snprintf(dtmp.direct_err, sizeof(dtmp.direct_err), "%s", keel_file_last_error());
	SHARD_CHECK_EQ(keel_file_openat(&dtmp.req, AT_FDCWD, KEEL_BIN_DIR,
					O_TMPFILE | O_RDWR | O_DIRECT, 0600, 0, &dtmp.f,
					dtmp_open_cb, NULL),
		       0, "%s", keel_file_last_error());
}

Test(core_file, an_odirect_tmpfile_gets_the_files_alignment_not_its_directorys)
{
	struct keel_opts o = test_opts(1);
	struct statx stx;
	int r = keel_run(&o, dtmp_start, NULL);

	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(dtmp.direct_res, -EINVAL, "O_TMPFILE | O_DIRECT as a direct descriptor: %d",
		     dtmp.direct_res);
	cr_assert(strstr(dtmp.direct_err, "O_TMPFILE"), "%s", dtmp.direct_err);
	if (dtmp.open_res == -EINVAL || dtmp.open_res == -EOPNOTSUPP || dtmp.open_res == -EISDIR)
		cr_skip_test("the file system of %s refuses O_TMPFILE | O_DIRECT (%d)",
			     KEEL_BIN_DIR, dtmp.open_res);
	cr_assert_geq(dtmp.open_res, 0, "open: %d", dtmp.open_res);
	cr_assert_eq(statx(dtmp.f.fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx), 0);
	close(dtmp.f.fd);
	if (!(stx.stx_mask & STATX_DIOALIGN) || !stx.stx_dio_offset_align)
		cr_skip_test("the file system of %s reports no O_DIRECT alignment", KEEL_BIN_DIR);
	cr_assert_eq(dtmp.f.dio_offset_align, stx.stx_dio_offset_align,
		     "keel read %u, the file's statx says %u", dtmp.f.dio_offset_align,
		     stx.stx_dio_offset_align);
	cr_assert_eq(dtmp.f.dio_mem_align, stx.stx_dio_mem_align, "keel read %u, statx says %u",
		     dtmp.f.dio_mem_align, stx.stx_dio_mem_align);
}

/* ---- a full file system: a small tmpfs ---- */

static char mnt_dir[256];
static bool mounted;

static void
tmpfs_fini(void)
{
	if (mounted)
		umount2(mnt_dir, MNT_DETACH);
	if (mnt_dir[0])
		rmdir(mnt_dir);
}

struct full {
	struct keel_file_req req;
	struct keel_file f;
	char path[300];
	char chunk[65536];
	uint64_t off;
	int falloc_res, last_res, writes;
};

static struct full full;

static void full_write_cb(struct keel_file_req *req, int res, void *arg);

static void
full_write_next(struct full *fl)
{
	if (!SHARD_CHECK_EQ(keel_file_write(&fl->req, &fl->f, fl->chunk, sizeof(fl->chunk), fl->off,
					    full_write_cb, fl),
			    0))
		keel_stop(-EIO);
}

static void
full_write_cb(struct keel_file_req *req, int res, void *arg)
{
	struct full *fl = arg;

	fl->last_res = res;
	fl->writes++;
	/* 256 KiB of tmpfs: the writes must fail within 64 chunks of 64 KiB. */
	if (res <= 0 || fl->writes >= 64) {
		keel_stop(0);
		return;
	}
	fl->off += (uint64_t)res;
	full_write_next(fl);
}

static void
full_falloc_cb(struct keel_file_req *req, int res, void *arg)
{
	struct full *fl = arg;

	fl->falloc_res = res;
	full_write_next(fl);
}

static void
full_open_cb(struct keel_file_req *req, int res, void *arg)
{
	struct full *fl = arg;

	if (!SHARD_CHECK(res >= 0, "open on tmpfs: %d", res)) {
		keel_stop(-EIO);
		return;
	}
	SHARD_CHECK_EQ(keel_file_fallocate(&fl->req, &fl->f, 0, 0, 16 << 20, full_falloc_cb, fl),
		       0);
}

static void
full_start(void *app)
{
	SHARD_CHECK_EQ(keel_file_openat(&full.req, AT_FDCWD, full.path, O_CREAT | O_RDWR, 0600, 0,
					&full.f, full_open_cb, &full),
		       0);
}

Test(core_file, full_disk_reports_enospc, .fini = tmpfs_fini)
{
	struct keel_opts o = test_opts(1);

	if (geteuid() != 0)
		cr_skip_test("mounting a small tmpfs needs root (this test runs as uid %u)",
			     (unsigned)geteuid());
	snprintf(mnt_dir, sizeof(mnt_dir), "%s/test_file_mnt.XXXXXX", KEEL_BIN_DIR);
	cr_assert_not_null(mkdtemp(mnt_dir), "mkdtemp: %s", strerror(errno));
	if (mount("keel-test", mnt_dir, "tmpfs", 0, "size=256k") < 0)
		cr_skip_test("mount -t tmpfs -o size=256k %s failed: %s (no CAP_SYS_ADMIN in "
			     "this container?)",
			     mnt_dir, strerror(errno));
	mounted = true;
	snprintf(full.path, sizeof(full.path), "%s/full", mnt_dir);
	memset(full.chunk, 'x', sizeof(full.chunk));

	int r = keel_run(&o, full_start, NULL);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(full.falloc_res, -ENOSPC, "fallocate of 16 MiB on 256 KiB: %d",
		     full.falloc_res);
	cr_assert_eq(full.last_res, -ENOSPC, "writes end in ENOSPC: %d after %d writes",
		     full.last_res, full.writes);
	cr_assert_leq(full.off, 256 << 10, "no more than the tmpfs size was written");
}

/* ---- queue depth: a limit and a FIFO, observed in the counters ---- */

#define QD_N 16

struct qd {
	struct keel_file_req req[QD_N + 1];
	struct keel_file f;
	char buf[QD_N + 1][8];
	int order[QD_N + 1], n;
	int extra_submitted;
	struct keel_file_stats st_mid, st_end;
	unsigned nreq;
};

static struct qd qd;

static void
qd_cb(struct keel_file_req *req, int res, void *arg)
{
	struct qd *q = arg;
	int i = (int)(req - q->req);

	SHARD_CHECK_EQ(res, 8, "read %d", i);
	q->order[q->n++] = i;
	if (q->n == 1) {
		/* Made while QD_N - 2 others wait: it must wait behind them all. */
		keel_file_stats(keel_this_shard(), &q->st_mid);
		q->extra_submitted =
			keel_file_read(&q->req[QD_N], &q->f, q->buf[QD_N], 8, 0, qd_cb, q) == 0;
	}
	if (q->n == (int)q->nreq + 1) {
		keel_file_stats(keel_this_shard(), &q->st_end);
		keel_stop(0);
	}
}

static void
qd_start(void *app)
{
	struct qd *q = &qd;
	int fd = open(tmp_path, O_RDONLY);

	SHARD_CHECK(fd >= 0, "open %s", tmp_path);
	SHARD_CHECK_EQ(keel_file_from_fd(fd, &q->f), 0);
	for (unsigned i = 0; i < q->nreq; i++)
		SHARD_CHECK_EQ(keel_file_read(&q->req[i], &q->f, q->buf[i], 8, i * 8, qd_cb, q), 0);
}

static void
qd_run(unsigned file_qd, unsigned nreq)
{
	struct keel_opts o = test_opts(1);
	char data[QD_N * 8];
	int fd = make_tmp();

	memset(data, 'q', sizeof(data));
	cr_assert_eq(write(fd, data, sizeof(data)), (ssize_t)sizeof(data));
	close(fd);
	o.file_qd = file_qd;
	qd.nreq = nreq;
	int r = keel_run(&o, qd_start, NULL);
	rm_tmp();
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert(qd.extra_submitted);
	cr_assert_eq(qd.n, (int)nreq + 1);
	cr_assert_eq(qd.st_end.qd, file_qd);
	cr_assert_eq(qd.st_end.inflight_max, file_qd, "never more than qd in the ring: %u",
		     qd.st_end.inflight_max);
	cr_assert_eq(qd.st_end.submitted, nreq + 1);
	cr_assert_eq(qd.st_end.issued, nreq + 1);
	/* The FIFO moves after the callback of the completion that frees a slot (so that at
	 * stop a close's callback, which may free the file's object, is the file's last
	 * event): the first callback's extra request joined the rest waiting. */
	cr_assert_eq(qd.st_end.waiting_max, nreq - file_qd + 1,
		     "the FIFO held the rest and the extra request: %u", qd.st_end.waiting_max);
	cr_assert_eq(qd.st_mid.waiting, nreq - file_qd,
		     "at the first completion's callback the rest still waited");
}

Test(core_file, qd1_issues_in_fifo_order)
{
	qd_run(1, QD_N);
	cr_assert_eq(qd.order[QD_N], QD_N, "the request made later completed last");
	/* With one slot, the completion order is the issue order: the FIFO's order. */
	for (int i = 0; i < QD_N; i++)
		cr_assert_eq(qd.order[i], i, "completion %d was request %d", i, qd.order[i]);
}

Test(core_file, qd4_limits_the_ring)
{
	qd_run(4, QD_N);
}

Test(core_file, file_qd_option)
{
	struct keel_opts o;
	char err[256];
	char *argv[] = { "prog", "--file-qd", "7", NULL };
	int argc = 3;

	keel_opts_init(&o);
	cr_assert_eq(o.file_qd, KEEL_FILE_QD_DEFAULT);
	cr_assert_eq(keel_opts_parse(&o, &argc, argv, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(o.file_qd, 7);
	char *bad_argv[] = { "prog", "--file-qd=0", NULL };
	argc = 2;
	cr_assert_eq(keel_opts_parse(&o, &argc, bad_argv, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "--file-qd"), "%s", err);
}

Test(core_file, stop_drain_ms_option)
{
	struct keel_opts o;
	char err[256];
	char *argv[] = { "prog", "--stop-drain-ms", "2500", NULL };
	char *bad_argv[] = { "prog", "--stop-drain-ms", "-1", NULL };
	int argc = 3;

	keel_opts_init(&o);
	cr_assert_eq(o.stop_drain_ms, 0, "no bound by default");
	cr_assert_eq(keel_opts_parse(&o, &argc, argv, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(o.stop_drain_ms, 2500);
	argc = 3;
	cr_assert_eq(keel_opts_parse(&o, &argc, bad_argv, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "--stop-drain-ms"), "%s", err);
}

/* ---- stop with requests in the ring and in the FIFO ---- */

#define STOP_N 6

struct stopt {
	struct keel_file_req req[STOP_N], late;
	struct keel_file f;
	char buf[STOP_N][4];
	int pipefd[2];
	int res[STOP_N], n, late_res;
	struct keel_file_stats st;
};

static struct stopt stp;

static void
stop_cb(struct keel_file_req *req, int res, void *arg)
{
	struct stopt *t = arg;

	t->res[req - t->req] = res;
	if (++t->n == 1)
		t->late_res = keel_file_read(&t->late, &t->f, t->buf[0], 1, 0, stop_cb, t);
	if (t->n == STOP_N)
		keel_file_stats(keel_this_shard(), &t->st);
}

static void
stop_start(void *app)
{
	struct stopt *t = &stp;

	/* An empty pipe: reads stay in the ring until cancelled. */
	t->f = (struct keel_file){ .fd = t->pipefd[0] };
	for (int i = 0; i < STOP_N; i++)
		SHARD_CHECK_EQ(
			keel_file_read(&t->req[i], &t->f, t->buf[i], 4, (uint64_t)-1, stop_cb, t),
			0);
	keel_stop(0);
}

Test(core_file, stop_cancels_inflight_and_waiting)
{
	struct keel_opts o = test_opts(1);

	cr_assert_eq(pipe(stp.pipefd), 0);
	o.file_qd = 2;
	int r = keel_run(&o, stop_start, NULL);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(stp.n, STOP_N, "every callback ran once: %d", stp.n);
	for (int i = 0; i < STOP_N; i++)
		cr_assert_eq(stp.res[i], -ECANCELED, "request %d: %d", i, stp.res[i]);
	cr_assert_eq(stp.late_res, -ESHUTDOWN, "a request made while stopping is refused");
	cr_assert_eq(stp.st.cancelled, STOP_N);
	cr_assert_eq(stp.st.issued, 2, "the waiting ones never reached the ring");
	cr_assert_eq(stp.st.inflight, 0);
	cr_assert_eq(stp.st.waiting, 0);
	close(stp.pipefd[0]);
	close(stp.pipefd[1]);
}

/* A stop hook's writes and the sync its last write's callback makes run to completion; a
 * request made before the stop (an empty pipe's read) is still cancelled. */
#define HOOK_N   8
#define HOOK_LEN 65536

struct hookw {
	struct keel_file_req w[HOOK_N], sync, rd;
	struct keel_file f, pf;
	int pipefd[2];
	char *data, rbuf[4];
	int wres[HOOK_N], sync_res, rd_res, sync_r, nw;
	bool sync_ran, rd_ran;
};

static struct hookw hw;

static void
hw_sync_cb(struct keel_file_req *req, int res, void *arg)
{
	hw.sync_res = res;
	hw.sync_ran = true;
}

static void
hw_write_cb(struct keel_file_req *req, int res, void *arg)
{
	hw.wres[req - hw.w] = res;
	if (++hw.nw == HOOK_N) /* the last write: its sync, made while the shard stops */
		hw.sync_r = keel_file_fdatasync(&hw.sync, &hw.f, hw_sync_cb, NULL);
}

static void
hw_rd_cb(struct keel_file_req *req, int res, void *arg)
{
	hw.rd_res = res;
	hw.rd_ran = true;
}

static void
hw_hook(void *arg)
{
	for (int i = 0; i < HOOK_N; i++)
		SHARD_CHECK_EQ(keel_file_write(&hw.w[i], &hw.f, hw.data + (size_t)i * HOOK_LEN,
					       HOOK_LEN, (uint64_t)i * HOOK_LEN, hw_write_cb, NULL),
			       0, "%s", keel_file_last_error());
}

static void
hw_start(void *app)
{
	hw.pf = (struct keel_file){ .fd = hw.pipefd[0] };
	SHARD_CHECK_EQ(keel_file_read(&hw.rd, &hw.pf, hw.rbuf, 4, (uint64_t)-1, hw_rd_cb, NULL), 0);
	SHARD_CHECK_EQ(keel_shard_on_stop(hw_hook, NULL), 0);
	keel_stop(0);
}

Test(core_file, a_stop_hooks_write_and_sync_complete, .fini = rm_tmp)
{
	struct keel_opts o = test_opts(1);
	int fd = make_tmp();
	char *back;

	hw.data = malloc((size_t)HOOK_N * HOOK_LEN);
	back = malloc((size_t)HOOK_N * HOOK_LEN);
	cr_assert(hw.data && back);
	for (size_t i = 0; i < (size_t)HOOK_N * HOOK_LEN; i++)
		hw.data[i] = (char)(i * 7 + i / 4093);
	cr_assert_eq(pipe(hw.pipefd), 0);
	cr_assert_eq(keel_file_from_fd(fd, &hw.f), 0);
	o.file_qd = 4; /* half the hook's writes wait in the FIFO */
	cr_assert_eq(keel_run(&o, hw_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	for (int i = 0; i < HOOK_N; i++)
		cr_assert_eq(hw.wres[i], HOOK_LEN, "the hook's write %d: %d", i, hw.wres[i]);
	cr_assert_eq(hw.sync_r, 0, "the sync made while stopping: %s", strerror(-hw.sync_r));
	cr_assert(hw.sync_ran);
	cr_assert_eq(hw.sync_res, 0, "the sync: %d", hw.sync_res);
	cr_assert(hw.rd_ran);
	cr_assert_eq(hw.rd_res, -ECANCELED, "the read made before the stop: %d", hw.rd_res);
	cr_assert_eq(pread(fd, back, (size_t)HOOK_N * HOOK_LEN, 0), (ssize_t)HOOK_N * HOOK_LEN);
	cr_assert_eq(memcmp(back, hw.data, (size_t)HOOK_N * HOOK_LEN), 0);
	free(back);
	free(hw.data);
	close(fd);
	close(hw.pipefd[0]);
	close(hw.pipefd[1]);
}

/* A stop hook's request that never ends (an empty pipe's read; on a disk, a hung device or
 * network file system) holds the stop for as long as it runs, unless --stop-drain-ms bounds
 * the wait: past it the request is cancelled and the stop ends. A request its callback
 * makes then is refused (the drain is over). Without the bound the runtime never joined. */
static struct {
	struct keel_file_req rd, again;
	struct keel_file pf;
	int pipefd[2];
	char rbuf[4];
	_Atomic int rd_res, again_r;
	_Atomic bool rd_ran;
	uint64_t made_ms, ended_ms;
} hd;

static void
hd_rd_cb(struct keel_file_req *req, int res, void *arg)
{
	hd.ended_ms = test_now_ms();
	atomic_store(&hd.rd_res, res);
	atomic_store(&hd.again_r,
		     keel_file_read(&hd.again, &hd.pf, hd.rbuf, 4, (uint64_t)-1, hd_rd_cb, NULL));
	atomic_store(&hd.rd_ran, true);
}

static void
hd_hook(void *arg)
{
	hd.made_ms = test_now_ms();
	SHARD_CHECK_EQ(keel_file_read(&hd.rd, &hd.pf, hd.rbuf, 4, (uint64_t)-1, hd_rd_cb, NULL), 0,
		       "%s", keel_file_last_error());
}

static void
hd_start(void *app)
{
	hd.pf = (struct keel_file){ .fd = hd.pipefd[0] };
	SHARD_CHECK_EQ(keel_shard_on_stop(hd_hook, NULL), 0);
	keel_stop(0);
}

Test(core_file, a_stop_hooks_request_that_never_ends_is_cancelled_after_stop_drain_ms)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;

	memset(&hd, 0, sizeof(hd));
	cr_assert_eq(pipe(hd.pipefd), 0);
	o.stop_drain_ms = 50;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, hd_start, NULL), 0);
	WAIT_FOR(atomic_load(&hd.rd_ran), "the hook's read ended (cancelled at --stop-drain-ms)");
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(atomic_load(&hd.rd_res), -ECANCELED, "the hook's read: %d",
		     atomic_load(&hd.rd_res));
	cr_assert_eq(atomic_load(&hd.again_r), -ESHUTDOWN,
		     "a request made by its callback after the bound: %d",
		     atomic_load(&hd.again_r));
	/* Not cancelled before the bound (a lower bound: never late on a slow machine). */
	cr_assert_geq(hd.ended_ms - hd.made_ms, 50u, "cancelled after %llu ms",
		      (unsigned long long)(hd.ended_ms - hd.made_ms));
	close(hd.pipefd[0]);
	close(hd.pipefd[1]);
}

/* Only a hook's requests and their chains drain: a chain of reads the shard was running
 * when the stop began (each callback makes the next read) is refused at its next read even
 * while a hook's write drains. Before, every request made during the drain was taken as
 * one of the hook's, and the chain kept the drain, and the stop, going for ever. */
#define CHAIN_CAP 1000

static struct {
	struct keel_file_req rd, w;
	struct keel_file f;
	char buf[1];
	bool stopping;
	int after, refused_r, w_res;
} ch2;

static void
ch2_read_cb(struct keel_file_req *req, int res, void *arg)
{
	int r;

	if (ch2.stopping && ++ch2.after > CHAIN_CAP)
		return; /* the chain would go on for ever: the test fails below */
	r = keel_file_read(&ch2.rd, &ch2.f, ch2.buf, 1, 0, ch2_read_cb, NULL);
	if (r < 0)
		ch2.refused_r = r;
}

static void
ch2_write_cb(struct keel_file_req *req, int res, void *arg)
{
	ch2.w_res = res;
}

static void
ch2_hook(void *arg)
{
	ch2.stopping = true;
	SHARD_CHECK_EQ(keel_file_write(&ch2.w, &ch2.f, "h", 1, 0, ch2_write_cb, NULL), 0);
}

static void
ch2_start(void *app)
{
	SHARD_CHECK_EQ(keel_shard_on_stop(ch2_hook, NULL), 0);
	SHARD_CHECK_EQ(keel_file_read(&ch2.rd, &ch2.f, ch2.buf, 1, 0, ch2_read_cb, NULL), 0);
	keel_stop(0);
}

Test(core_file, a_chain_running_at_the_stop_does_not_join_the_hooks_drain, .fini = rm_tmp)
{
	struct keel_opts o = test_opts(1);
	int fd = make_tmp();

	cr_assert_eq(write(fd, "x", 1), 1);
	cr_assert_eq(keel_file_from_fd(fd, &ch2.f), 0);
	ch2.refused_r = 0;
	cr_assert_eq(keel_run(&o, ch2_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_leq(ch2.after, 1, "%d reads of the chain ran after the stop began", ch2.after);
	cr_assert_eq(ch2.refused_r, -ESHUTDOWN, "the chain's next read: %d", ch2.refused_r);
	cr_assert_eq(ch2.w_res, 1, "the hook's write: %d", ch2.w_res);
	close(fd);
}

/* A close made while stopping (in the callback of a read the stop cancelled) is taken and
 * closes the descriptor: no file is left open that nothing can close any more. */
static struct {
	struct keel_file_req rd, cl;
	struct keel_file f;
	int pipefd[2], cl_r, cl_res;
	char buf[4];
	bool cl_ran;
} mc;

static void
mc_close_cb(struct keel_file_req *req, int res, void *arg)
{
	mc.cl_res = res;
	mc.cl_ran = true;
}

static void
mc_read_cb(struct keel_file_req *req, int res, void *arg)
{
	SHARD_CHECK_EQ(res, -ECANCELED);
	mc.cl_r = keel_file_close(&mc.cl, &mc.f, mc_close_cb, NULL);
}

static void
mc_start(void *app)
{
	SHARD_CHECK_EQ(keel_file_from_fd(mc.pipefd[0], &mc.f), 0);
	SHARD_CHECK_EQ(keel_file_read(&mc.rd, &mc.f, mc.buf, 4, (uint64_t)-1, mc_read_cb, NULL), 0);
	keel_stop(0);
}

Test(core_file, a_close_made_while_stopping_closes)
{
	struct keel_opts o = test_opts(1);

	cr_assert_eq(pipe(mc.pipefd), 0);
	cr_assert_eq(keel_run(&o, mc_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(mc.cl_r, 0, "keel_file_close while stopping: %s", strerror(-mc.cl_r));
	cr_assert(mc.cl_ran);
	cr_assert_eq(mc.cl_res, 0, "the close: %d", mc.cl_res);
	cr_assert_eq(fcntl(mc.pipefd[0], F_GETFD), -1, "the pipe is still open after the stop");
	if (mc.cl_r < 0)
		close(mc.pipefd[0]);
	close(mc.pipefd[1]);
}

/* ---- slices: registered buffers, and the request's own reference ---- */

struct slc {
	struct keel_file_req req;
	struct keel_file f;
	struct keel_slice w, r;
	unsigned refs_during;
	int wres, rres;
	struct keel_file_stats st;
	bool registered;
};

static struct slc slc;

static void
slc_read_cb(struct keel_file_req *req, int res, void *arg)
{
	struct slc *c = arg;

	c->rres = res;
	SHARD_CHECK_EQ(keel_slice_refs(&c->r), 1, "the request's reference is gone");
	SHARD_CHECK(memcmp(c->r.data, "slice bytes", 11) == 0, "read back");
	keel_slice_put(&c->r);
	keel_file_stats(keel_this_shard(), &c->st);
	keel_stop(0);
}

static void
slc_write_cb(struct keel_file_req *req, int res, void *arg)
{
	struct slc *c = arg;

	c->wres = res;
	SHARD_CHECK_EQ(keel_buf_alloc(keel_shard_alloc(), 11, &c->r), 0);
	SHARD_CHECK_EQ(keel_file_read_slice(&c->req, &c->f, &c->r, 0, slc_read_cb, c), 0);
}

static void
slc_start(void *app)
{
	struct slc *c = &slc;
	int fd = open(tmp_path, O_RDWR);

	SHARD_CHECK_EQ(keel_file_from_fd(fd, &c->f), 0);
	c->registered = keel_shard_bufs_registered();
	SHARD_CHECK_EQ(keel_buf_alloc(keel_shard_alloc(), 11, &c->w), 0);
	memcpy(c->w.data, "slice bytes", 11);
	SHARD_CHECK_EQ(keel_file_write_slice(&c->req, &c->f, &c->w, 0, slc_write_cb, c), 0);
	c->refs_during = keel_slice_refs(&c->w);
	keel_slice_put(&c->w); /* the request keeps the buffer alive */
}

Test(core_file, slices_use_fixed_buffers_and_hold_a_reference)
{
	struct keel_opts o = test_opts(1);
	close(make_tmp());

	int r = keel_run(&o, slc_start, NULL);
	int fd = open(tmp_path, O_RDONLY);
	char back[16] = "";
	cr_assert_eq(read(fd, back, sizeof(back)), 11);
	close(fd);
	rm_tmp();
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(slc.refs_during, 2, "the request holds its own reference");
	cr_assert_eq(slc.wres, 11);
	cr_assert_eq(slc.rres, 11);
	cr_assert_eq(memcmp(back, "slice bytes", 11), 0);
	if (!slc.registered) {
		cr_assert_eq(slc.st.fixed, 0);
		cr_skip_test(
			"the shard's memory was not registered (feature reg_buffers fell back: "
			"RLIMIT_MEMLOCK?): WRITE_FIXED and READ_FIXED were not tested");
	}
	cr_assert_eq(slc.st.fixed, 2, "WRITE_FIXED and READ_FIXED: %llu",
		     (unsigned long long)slc.st.fixed);
}

Test(core_file, slices_without_registration_are_plain)
{
	struct keel_opts o = test_opts(1);
	close(make_tmp());

	o.features[KEEL_FEAT_REG_BUFFERS] = KEEL_POLICY_OFF;
	int r = keel_run(&o, slc_start, NULL);
	rm_tmp();
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_not(slc.registered);
	cr_assert_eq(slc.wres, 11);
	cr_assert_eq(slc.rres, 11);
	cr_assert_eq(slc.st.fixed, 0);
}

/* ---- direct descriptors ---- */

struct dd {
	struct keel_file_req req;
	struct keel_file f, f2;
	char buf[8];
	int step, res[4];
};

static struct dd dd;

static void
dd_cb(struct keel_file_req *req, int res, void *arg)
{
	struct dd *d = arg;

	struct keel_file_stats st;

	d->res[d->step++] = res;
	switch (d->step) {
	case 1: /* no table: -ENFILE, and no slot held; now register one */
		SHARD_CHECK_EQ(keel_file_direct_slots(), 0u, "after a failed open");
		SHARD_CHECK_EQ(io_uring_register_files_sparse(keel_shard_ring_get(), 8), 0);
		SHARD_CHECK_EQ(keel_file_openat(&d->req, AT_FDCWD, tmp_path, O_RDONLY, 0,
						KEEL_FILE_OPEN_DIRECT_DESC, &d->f2, dd_cb, d),
			       0);
		SHARD_CHECK_EQ(keel_file_direct_slots(), 1u, "an open under way");
		break;
	case 2:
		SHARD_CHECK(d->f2.flags & KEEL_FILE_F_FIXED, "flags 0x%x", d->f2.flags);
		SHARD_CHECK_EQ(keel_file_direct_slots(), 1u, "a direct file open");
		SHARD_CHECK_EQ(keel_file_read(&d->req, &d->f2, d->buf, 8, 0, dd_cb, d), 0);
		break;
	case 3:
		SHARD_CHECK_EQ(keel_file_close(&d->req, &d->f2, dd_cb, d), 0);
		SHARD_CHECK_EQ(keel_file_direct_slots(), 1u, "a close under way");
		break;
	default:
		SHARD_CHECK_EQ(keel_file_direct_slots(), 0u, "after the close");
		SHARD_CHECK_EQ(keel_file_stats(keel_this_shard(), &st), 0);
		SHARD_CHECK_EQ(st.direct_slots, 0u);
		keel_stop(0);
	}
}

static void
dd_start(void *app)
{
	SHARD_CHECK_EQ(keel_file_openat(&dd.req, AT_FDCWD, tmp_path, O_RDONLY, 0,
					KEEL_FILE_OPEN_DIRECT_DESC, &dd.f, dd_cb, &dd),
		       0);
	SHARD_CHECK_EQ(keel_file_direct_slots(), 1u, "an open under way");
}

Test(core_file, direct_descriptors)
{
	struct keel_opts o = test_opts(1);
	int fd = make_tmp();

	cr_assert_eq(write(fd, "directfd", 8), 8);
	close(fd);
	int r = keel_run(&o, dd_start, NULL);
	rm_tmp();
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(dd.res[0], -ENFILE, "no file table: %d", dd.res[0]);
	cr_assert_geq(dd.res[1], 0, "open into the table: %d", dd.res[1]);
	cr_assert_eq(dd.res[2], 8, "read through the direct descriptor: %d", dd.res[2]);
	cr_assert_eq(memcmp(dd.buf, "directfd", 8), 0);
	cr_assert_eq(dd.res[3], 0, "close_direct: %d", dd.res[3]);
}

/* Two closes of a copied direct keel_file (a plain value, copied freely): the second finds
 * the slot empty (-EBADF) and the table's count of the shard's files stays right (another
 * direct file open throughout). The count
 * used to drop at each close whatever its result, and the second aborted the process. */
static struct {
	struct keel_file_req op, op2, c1, c2;
	struct keel_file f, g, keep;
	int r1, r2, n, opened;
	unsigned slots;
} dc2;

static void
dc2_closed(struct keel_file_req *req, int res, void *arg)
{
	*(req == &dc2.c1 ? &dc2.r1 : &dc2.r2) = res;
	if (++dc2.n == 2) {
		dc2.slots = keel_file_direct_slots();
		keel_stop(0);
	}
}

static void
dc2_opened(struct keel_file_req *req, int res, void *arg)
{
	if (!SHARD_CHECK(res >= 0, "open: %d", res)) {
		keel_stop(-EIO);
		return;
	}
	if (++dc2.opened < 2) /* another direct file stays open: counted throughout */
		return;
	dc2.g = dc2.f;
	SHARD_CHECK_EQ(keel_file_close(&dc2.c1, &dc2.f, dc2_closed, NULL), 0);
	SHARD_CHECK_EQ(keel_file_close(&dc2.c2, &dc2.g, dc2_closed, NULL), 0);
}

/* A sparse table, and two direct opens of /dev/null (dc2.f, dc2.keep) with @cb. */
static void
dc2_open_two(keel_file_fn cb)
{
	SHARD_CHECK_EQ(io_uring_register_files_sparse(keel_shard_ring_get(), 8), 0);
	SHARD_CHECK_EQ(keel_file_openat(&dc2.op, AT_FDCWD, "/dev/null", O_RDONLY, 0,
					KEEL_FILE_OPEN_DIRECT_DESC, &dc2.f, cb, NULL),
		       0);
	SHARD_CHECK_EQ(keel_file_openat(&dc2.op2, AT_FDCWD, "/dev/null", O_RDONLY, 0,
					KEEL_FILE_OPEN_DIRECT_DESC, &dc2.keep, cb, NULL),
		       0);
}

static void
dc2_start(void *app)
{
	dc2_open_two(dc2_opened);
}

Test(core_file, two_closes_of_a_copied_direct_file_count_one_slot)
{
	struct keel_opts o = test_opts(1);

	memset(&dc2, 0, sizeof(dc2));
	cr_assert_eq(keel_run(&o, dc2_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(dc2.r1, 0, "the first close: %d", dc2.r1);
	cr_assert_eq(dc2.r2, -EBADF, "the second close: %d", dc2.r2);
	cr_assert_eq(dc2.slots, 1u, "slots counted after both closes, one file open: %u",
		     dc2.slots);
}

/* The same two closes waiting in the FIFO when the shard stops (--file-qd 1, the one place
 * held by a read of an empty pipe), so both are done on the spot: the second is -EBADF
 * and the count stays right. The kernel empties an empty slot without a word, so the
 * second reported 0 and counted the slot free twice. */
static void
dc2_stop_closed(struct keel_file_req *req, int res, void *arg)
{
	*(req == &dc2.c1 ? &dc2.r1 : &dc2.r2) = res;
	if (++dc2.n == 2)
		dc2.slots = keel_file_direct_slots();
}

static struct keel_file_req dc2_rd;
static int dc2_pipe[2], dc2_rd_res;
static char dc2_byte;

static void
dc2_read(struct keel_file_req *req, int res, void *arg)
{
	dc2_rd_res = res;
}

static void
dc2_stop_opened(struct keel_file_req *req, int res, void *arg)
{
	struct keel_file pf = { .fd = dc2_pipe[0] };

	if (!SHARD_CHECK(res >= 0, "open: %d", res)) {
		keel_stop(-EIO);
		return;
	}
	if (++dc2.opened < 2)
		return;
	SHARD_CHECK_EQ(keel_file_read(&dc2_rd, &pf, &dc2_byte, 1, (uint64_t)-1, dc2_read, NULL), 0);
	dc2.g = dc2.f;
	SHARD_CHECK_EQ(keel_file_close(&dc2.c1, &dc2.f, dc2_stop_closed, NULL), 0);
	SHARD_CHECK_EQ(keel_file_close(&dc2.c2, &dc2.g, dc2_stop_closed, NULL), 0);
	keel_stop(0);
}

static void
dc2_stop_start(void *app)
{
	dc2_open_two(dc2_stop_opened);
}

Test(core_file, two_closes_of_a_copied_direct_file_at_stop_count_one_slot)
{
	struct keel_opts o = test_opts(1);

	o.file_qd = 1;
	memset(&dc2, 0, sizeof(dc2));
	cr_assert_eq(pipe(dc2_pipe), 0);
	cr_assert_eq(keel_run(&o, dc2_stop_start, NULL), 0);
	close(dc2_pipe[0]);
	close(dc2_pipe[1]);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(dc2_rd_res, -ECANCELED, "the read that held the queue: %d", dc2_rd_res);
	cr_assert_eq(dc2.n, 2);
	cr_assert_eq(dc2.r1, 0, "the first close: %d", dc2.r1);
	cr_assert_eq(dc2.r2, -EBADF, "the second close: %d", dc2.r2);
	cr_assert_eq(dc2.slots, 1u, "slots counted after both closes, one file open: %u",
		     dc2.slots);
}

/* A close of the copy made after the first close completed is refused at once, naming
 * why, and empties nothing (the kernel would empty whatever took the slot meanwhile). */
static int dc2_late, dc2_late_slots;
static char dc2_late_err[384];

static void
dc2_late_closed(struct keel_file_req *req, int res, void *arg)
{
	dc2.r1 = res;
	dc2_late = keel_file_close(&dc2.c2, &dc2.g, dc2_closed, NULL);
	snprintf(dc2_late_err, sizeof(dc2_late_err), "%s", keel_file_last_error());
	dc2_late_slots = (int)keel_file_direct_slots();
	keel_stop(0);
}

static void
dc2_late_opened(struct keel_file_req *req, int res, void *arg)
{
	if (!SHARD_CHECK(res >= 0, "open: %d", res)) {
		keel_stop(-EIO);
		return;
	}
	if (++dc2.opened < 2)
		return;
	dc2.g = dc2.f;
	SHARD_CHECK_EQ(keel_file_close(&dc2.c1, &dc2.f, dc2_late_closed, NULL), 0);
}

static void
dc2_late_start(void *app)
{
	dc2_open_two(dc2_late_opened);
}

Test(core_file, a_close_of_a_copy_after_the_first_close_is_refused)
{
	struct keel_opts o = test_opts(1);

	memset(&dc2, 0, sizeof(dc2));
	cr_assert_eq(keel_run(&o, dc2_late_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(dc2.r1, 0, "the first close: %d", dc2.r1);
	cr_assert_eq(dc2_late, -EBADF, "the copy's close: %d", dc2_late);
	cr_assert(strstr(dc2_late_err, "holds no file opened here"), "%s", dc2_late_err);
	cr_assert_eq(dc2_late_slots, 1, "slots counted, one file open: %d", dc2_late_slots);
}

/* A direct descriptor is a slot of its shard's ring's table: another shard's requests on it
 * are refused (-EXDEV), not made on whatever that shard's table holds at the index. */
static struct {
	struct keel_file_req open, rd, cl;
	struct keel_file f;
	char buf[8];
	int open_res, xres, cl_res;
	char xerr[384];
} xd;

static void
xd_closed(struct keel_file_req *req, int res, void *arg)
{
	xd.cl_res = res;
	keel_stop(0);
}

static void
xd_back(void *arg)
{
	SHARD_CHECK_EQ(keel_file_close(&xd.cl, &xd.f, xd_closed, NULL), 0);
}

static void
xd_on_other(void *arg)
{
	/* This shard has a table too: slot f.fd may hold a file of its own. */
	xd.xres = keel_file_read(&xd.rd, &xd.f, xd.buf, 8, 0, xd_closed, NULL);
	snprintf(xd.xerr, sizeof(xd.xerr), "%s", keel_file_last_error());
	SHARD_CHECK_EQ(keel_send(0, xd_back, NULL), 0);
}

static void
xd_opened(struct keel_file_req *req, int res, void *arg)
{
	xd.open_res = res;
	if (!SHARD_CHECK(res >= 0, "open: %d", res) ||
	    !SHARD_CHECK_EQ(keel_send(1, xd_on_other, NULL), 0))
		keel_stop(-EIO);
}

static void
xd_start(void *app)
{
	SHARD_CHECK_EQ(io_uring_register_files_sparse(keel_shard_ring_get(), 8), 0);
	if (keel_shard_id(keel_this_shard()) == 0)
		SHARD_CHECK_EQ(keel_file_openat(&xd.open, AT_FDCWD, tmp_path, O_RDONLY, 0,
						KEEL_FILE_OPEN_DIRECT_DESC, &xd.f, xd_opened, NULL),
			       0);
}

Test(core_file, a_direct_descriptor_is_refused_on_another_shard)
{
	struct keel_opts o = test_opts(2);
	int fd = make_tmp();

	cr_assert_eq(write(fd, "directfd", 8), 8);
	close(fd);
	int r = keel_run(&o, xd_start, NULL);
	rm_tmp();
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(xd.xres, -EXDEV, "a request on another shard's direct descriptor: %d",
		     xd.xres);
	cr_assert(strstr(xd.xerr, "another shard's ring"), "%s", xd.xerr);
	cr_assert_eq(xd.cl_res, 0, "its close on its own shard: %d", xd.cl_res);
}

/* ---- a burst larger than the SQ: the SQ-full path submits and goes on ---- */

#define BURST_N 200

struct burst {
	struct keel_file_req req[BURST_N];
	struct keel_file f;
	char buf[BURST_N][8];
	int ok, n;
	struct keel_file_stats st;
};

static struct burst burst;

static void
burst_cb(struct keel_file_req *req, int res, void *arg)
{
	struct burst *b = arg;
	int i = (int)(req - b->req);

	b->ok += res == 8 && memcmp(b->buf[i], "burstbur", 8) == 0;
	if (++b->n == BURST_N) {
		keel_file_stats(keel_this_shard(), &b->st);
		keel_stop(0);
	}
}

static void
burst_start(void *app)
{
	struct burst *b = &burst;
	int fd = open(tmp_path, O_RDONLY);

	SHARD_CHECK_EQ(keel_file_from_fd(fd, &b->f), 0);
	for (int i = 0; i < BURST_N; i++)
		SHARD_CHECK_EQ(keel_file_read(&b->req[i], &b->f, b->buf[i], 8, 0, burst_cb, b), 0);
}

Test(core_file, burst_beyond_the_sq_completes)
{
	struct keel_opts o = test_opts(1);
	int fd = make_tmp();

	cr_assert_eq(write(fd, "burstbur", 8), 8);
	close(fd);
	o.ring_entries = 8; /* the SQ holds 8: a qd of 32 fills it four times over */
	o.file_qd = 32;
	int r = keel_run(&o, burst_start, NULL);
	rm_tmp();
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(burst.ok, BURST_N, "%d of %d reads right", burst.ok, BURST_N);
	cr_assert_eq(burst.st.inflight_max, 32);
	cr_assert_eq(burst.st.waiting_max, BURST_N - 32);
}

Test(core_file, from_fd_reads_the_odirect_alignment)
{
	struct keel_file f;
	int fd = make_tmp();
	close(fd);
	fd = open(tmp_path, O_RDWR | O_DIRECT);
	if (fd < 0) {
		rm_tmp();
		cr_skip_test("the file system of %s refuses O_DIRECT: %s", KEEL_BIN_DIR,
			     strerror(errno));
	}
	cr_assert_eq(keel_file_from_fd(fd, &f), 0);
	cr_assert_eq(f.fd, fd);
	cr_assert(f.flags & KEEL_FILE_F_DIRECT_IO, "flags 0x%x", f.flags);
	cr_assert(f.lbs || f.dio_offset_align, "alignment known: lbs %u, dio %u/%u", f.lbs,
		  f.dio_offset_align, f.dio_mem_align);
	close(fd);
	fd = open(tmp_path, O_RDONLY);
	cr_assert_eq(keel_file_from_fd(fd, &f), 0);
	cr_assert_eq(f.flags, 0, "no O_DIRECT, no checks");
	close(fd);
	rm_tmp();
}

/* ---- O_DIRECT: reads keep the read alignment where the file system allows less ---- */

/* statx's stx_dio_read_offset_align (Linux 6.14; XFS sets it): reads are checked against
 * it, writes against dio_offset_align. No file system here reports it, so the test sets
 * the two on an O_DIRECT file whose real alignment is 512: a read at 512 goes to the
 * kernel (and succeeds), a write at 512 is refused naming both figures. */
struct dra {
	struct keel_file_req req;
	struct keel_file f;
	struct keel_slice sl;
	int read_call, read_res, write_call;
	char write_err[512], read_err[512];
};

static struct dra dra;

static void
dra_read_cb(struct keel_file_req *req, int res, void *arg)
{
	(void)req, (void)arg;
	dra.read_res = res;
	keel_slice_put(&dra.sl);
	keel_stop(0);
}

static void
dra_start(void *app)
{
	(void)app;
	if (!SHARD_CHECK_EQ(keel_buf_alloc(keel_shard_alloc(), 4096, &dra.sl), 0)) {
		keel_stop(-EIO);
		return;
	}
	dra.write_call =
		keel_file_write(&dra.req, &dra.f, dra.sl.data, 512, 512, dra_read_cb, NULL);
	snprintf(dra.write_err, sizeof(dra.write_err), "%s", keel_file_last_error());
	dra.read_call = keel_file_read(&dra.req, &dra.f, dra.sl.data, 512, 512, dra_read_cb, NULL);
	if (dra.read_call < 0) {
		snprintf(dra.read_err, sizeof(dra.read_err), "%s", keel_file_last_error());
		keel_slice_put(&dra.sl);
		keel_stop(0);
	}
}

Test(core_file, odirect_reads_keep_the_read_alignment_and_writes_the_write_alignment)
{
	struct keel_opts o = test_opts(1);
	char block[4096] = "READ ALIGN";
	int fd = make_tmp();

	cr_assert_eq(pwrite(fd, block, sizeof(block), 0), (ssize_t)sizeof(block));
	close(fd);
	fd = open(tmp_path, O_RDWR | O_DIRECT);
	if (fd < 0) {
		rm_tmp();
		cr_skip_test("the file system of %s refuses O_DIRECT: %s", KEEL_BIN_DIR,
			     strerror(errno));
	}
	cr_assert_eq(keel_file_from_fd(fd, &dra.f), 0);
	if ((dra.f.dio_offset_align ? dra.f.dio_offset_align : dra.f.lbs) > 512) {
		close(fd);
		rm_tmp();
		cr_skip_test("O_DIRECT on %s needs %u-byte alignment, not 512", KEEL_BIN_DIR,
			     dra.f.dio_offset_align ? dra.f.dio_offset_align : dra.f.lbs);
	}
	dra.f.dio_offset_align = 4096;
	dra.f.dio_read_offset_align = 512;
	int r = keel_run(&o, dra_start, NULL);
	close(fd);
	rm_tmp();
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, 0);
	cr_assert_eq(dra.write_call, -EINVAL, "a write at 512 under a 4096 write alignment: %d",
		     dra.write_call);
	cr_assert(strstr(dra.write_err, "offset 512 is not a multiple of 4096") &&
			  strstr(dra.write_err, "dio_read_offset_align 512"),
		  "%s", dra.write_err);
	cr_assert_eq(dra.read_call, 0, "a read at 512 under a 512 read alignment: %d (%s)",
		     dra.read_call, dra.read_err);
	cr_assert_eq(dra.read_res, 512, "the read's result: %d", dra.read_res);
}

/* ---- a close waiting in the queue when the shard stops ---- */

/* keel_file_close clears the application's handle at once; a close still waiting for room
 * in the ring when the shard stops must close the descriptor all the same (done on the
 * spot, its result reported), not be cancelled with it left open. */
struct qclose {
	struct keel_file_req rd, cl;
	struct keel_file pipe_f, f;
	char buf[4];
	int pipefd[2], fd, rd_res, cl_res, cl_runs;
};

static struct qclose qc;

static void
qc_read_cb(struct keel_file_req *req, int res, void *arg)
{
	qc.rd_res = res;
}

static void
qc_close_cb(struct keel_file_req *req, int res, void *arg)
{
	qc.cl_res = res;
	qc.cl_runs++;
}

static void
qc_start(void *app)
{
	/* An empty pipe's read holds the one slot of the ring (--file-qd 1) until the stop
	 * cancels it; the close waits behind it. */
	qc.pipe_f = (struct keel_file){ .fd = qc.pipefd[0] };
	SHARD_CHECK_EQ(
		keel_file_read(&qc.rd, &qc.pipe_f, qc.buf, 4, (uint64_t)-1, qc_read_cb, NULL), 0);
	SHARD_CHECK_EQ(keel_file_from_fd(qc.fd, &qc.f), 0);
	SHARD_CHECK_EQ(keel_file_close(&qc.cl, &qc.f, qc_close_cb, NULL), 0);
	SHARD_CHECK_EQ(qc.f.fd, -1);
	keel_stop(0);
}

Test(core_file, a_close_waiting_at_stop_still_closes)
{
	struct keel_opts o = test_opts(1);

	cr_assert_eq(pipe(qc.pipefd), 0);
	qc.fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	cr_assert_geq(qc.fd, 0);
	o.file_qd = 1;
	cr_assert_eq(keel_run(&o, qc_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(qc.rd_res, -ECANCELED);
	cr_assert_eq(qc.cl_runs, 1);
	cr_assert_eq(qc.cl_res, 0, "the close reported %d", qc.cl_res);
	errno = 0;
	cr_assert_eq(fcntl(qc.fd, F_GETFD), -1, "descriptor %d is still open after the stop",
		     qc.fd);
	cr_assert_eq(errno, EBADF);
	close(qc.pipefd[0]);
	close(qc.pipefd[1]);
}

/* ---- a close runs off the shard's thread ---- */

/* The last close of a file that no name holds runs a release that can block for long (its
 * blocks are freed then: over 100 ms for 500 MB on ext4), so keel_file_close has io-wq run
 * it: an io-wq worker of the shard's thread ("iou-wrk-<its tid>") exists once the close of
 * an unlinked file has completed, where none did before; the close of a file that still has
 * its name is made inline, and makes none (a worker's round trip would double its cost). */
static struct {
	struct keel_file_req req;
	struct keel_file f;
	int fd, res, runs;
	int workers_before, workers_after;
	pid_t tid;
} ow;

/* The io-wq workers of the shard's thread (ow.tid) now. */
static int
iowq_workers(void)
{
	char path[320], comm[64], want[32];
	int n = 0;
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;

	cr_assert(d);
	while ((e = readdir(d))) {
		FILE *f;

		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		snprintf(want, sizeof(want), "iou-wrk-%d\n", (int)ow.tid);
		if (fgets(comm, sizeof(comm), f) && !strcmp(comm, want))
			n++;
		fclose(f);
	}
	closedir(d);
	return n;
}

static void
ow_closed(struct keel_file_req *req, int res, void *arg)
{
	ow.res = res;
	ow.runs++;
	ow.workers_after = iowq_workers();
	keel_stop(0);
}

static void
ow_start(void *app)
{
	ow.tid = gettid();
	ow.workers_before = iowq_workers();
	SHARD_CHECK_EQ(keel_file_from_fd(ow.fd, &ow.f), 0);
	SHARD_CHECK_EQ(keel_file_close(&ow.req, &ow.f, ow_closed, NULL), 0);
}

/* Close a new file, unlinked first when @unlinked, on a shard of its own (ow). */
static void
ow_run(bool unlinked)
{
	struct keel_opts o = test_opts(1);

	memset(&ow, 0, sizeof(ow));
	ow.fd = make_tmp();
	if (unlinked)
		cr_assert_eq(unlink(tmp_path), 0);
	cr_assert_eq(keel_run(&o, ow_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(ow.runs, 1);
	cr_assert_eq(ow.res, 0, "the close reported %d", ow.res);
	errno = 0;
	cr_assert_eq(fcntl(ow.fd, F_GETFD), -1, "descriptor %d is still open", ow.fd);
	cr_assert_eq(ow.workers_before, 0, "io-wq workers before the close: %d", ow.workers_before);
}

Test(core_file, the_close_of_an_unlinked_file_runs_in_an_io_wq_worker)
{
	ow_run(true);
	cr_assert_geq(ow.workers_after, 1, "no io-wq worker ran the close");
}

Test(core_file, the_close_of_a_file_with_a_name_is_inline, .fini = rm_tmp)
{
	ow_run(false);
	cr_assert_eq(ow.workers_after, 0, "an io-wq worker ran the close");
}

/* A close in the ring when the shard stops (of unlinked files: io-wq's): the stop's cancel may
 * take it from io-wq's queue before a worker runs it, and its handle is cleared already, so
 * the descriptor is closed anyway and the callback reports that close (0), never a cancel
 * that leaves it open. */
static struct {
	struct keel_file_req req[8];
	struct keel_file f[8];
	int fd[8], res[8], runs;
} cs;

static void
cs_closed(struct keel_file_req *req, int res, void *arg)
{
	cs.res[(intptr_t)arg] = res;
	cs.runs++;
}

static void
cs_start(void *app)
{
	for (intptr_t i = 0; i < 8; i++) {
		SHARD_CHECK_EQ(keel_file_from_fd(cs.fd[i], &cs.f[i]), 0);
		SHARD_CHECK_EQ(keel_file_close(&cs.req[i], &cs.f[i], cs_closed, (void *)i), 0);
	}
	keel_stop(0);
}

Test(core_file, a_close_in_the_ring_at_stop_still_closes)
{
	struct keel_opts o = test_opts(1);

	for (int i = 0; i < 8; i++) {
		cs.fd[i] = make_tmp();
		cr_assert_eq(unlink(tmp_path), 0);
	}
	cr_assert_eq(keel_run(&o, cs_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(cs.runs, 8);
	for (int i = 0; i < 8; i++) {
		cr_assert_eq(cs.res[i], 0, "close %d reported %d", i, cs.res[i]);
		errno = 0;
		cr_assert_eq(fcntl(cs.fd[i], F_GETFD), -1, "descriptor %d is still open", cs.fd[i]);
	}
}

/* ---- a close waits for the requests on its descriptor ---- */

/* A close made while requests on its descriptor are in the ring waits for them: the kernel
 * looks a plain descriptor up when it runs a request, and io-wq runs an fdatasync on its
 * own threads, so a close issued beside it could run first (the sync then fails with EBADF,
 * or syncs whatever file took the number). Here a read of an empty pipe and an fdatasync are
 * in the ring when their files are closed: both closes are held (the stats say so at once,
 * before any completion), the pipe's close completes only after the read that the test's
 * write then lets complete, and every request gets its own file's result. */
static struct {
	int pipefd[2], tmpfd;
	struct keel_file_req rd, sy, cl_pipe, cl_tmp;
	struct keel_file pf, tf;
	char buf[8];
	int rd_res, sy_res, clp_res, clt_res;
	int seq, rd_at, sy_at, clp_at, clt_at;
	struct keel_file_stats st;
} cw;

static void
cw_done(struct keel_file_req *req, int res, void *arg)
{
	int at = ++cw.seq;

	if (req == &cw.rd) {
		cw.rd_res = res;
		cw.rd_at = at;
	} else if (req == &cw.sy) {
		cw.sy_res = res;
		cw.sy_at = at;
	} else if (req == &cw.cl_pipe) {
		cw.clp_res = res;
		cw.clp_at = at;
	} else {
		cw.clt_res = res;
		cw.clt_at = at;
	}
	if (cw.seq == 4)
		keel_stop(0);
}

static void
cw_start(void *app)
{
	SHARD_CHECK_EQ(keel_file_from_fd(cw.pipefd[0], &cw.pf), 0);
	SHARD_CHECK_EQ(keel_file_from_fd(cw.tmpfd, &cw.tf), 0);
	SHARD_CHECK_EQ(keel_file_read(&cw.rd, &cw.pf, cw.buf, 4, (uint64_t)-1, cw_done, NULL), 0);
	SHARD_CHECK_EQ(keel_file_fdatasync(&cw.sy, &cw.tf, cw_done, NULL), 0);
	SHARD_CHECK_EQ(keel_file_close(&cw.cl_tmp, &cw.tf, cw_done, NULL), 0);
	SHARD_CHECK_EQ(keel_file_close(&cw.cl_pipe, &cw.pf, cw_done, NULL), 0);
	SHARD_CHECK_EQ(keel_file_stats(keel_this_shard(), &cw.st), 0);
	/* The read completes once this is in the pipe (a loop pass later at the soonest). */
	SHARD_CHECK_EQ(write(cw.pipefd[1], "ping", 4), 4);
}

Test(core_file, a_close_waits_for_the_requests_on_its_descriptor, .fini = rm_tmp)
{
	struct keel_opts o = test_opts(1);

	cr_assert_eq(pipe(cw.pipefd), 0);
	cw.tmpfd = make_tmp();
	cr_assert_eq(keel_run(&o, cw_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(cw.st.inflight, 2, "in the ring after the closes: %u (the read and the sync)",
		     cw.st.inflight);
	cr_assert_eq(cw.st.closes_held, 2, "closes held: %u", cw.st.closes_held);
	cr_assert_eq(cw.st.close_waits, 2);
	cr_assert_eq(cw.rd_res, 4, "the read: %d", cw.rd_res);
	cr_assert_eq(memcmp(cw.buf, "ping", 4), 0);
	cr_assert_eq(cw.sy_res, 0, "the fdatasync: %d", cw.sy_res);
	cr_assert_eq(cw.clp_res, 0, "the pipe's close: %d", cw.clp_res);
	cr_assert_eq(cw.clt_res, 0, "the file's close: %d", cw.clt_res);
	cr_assert_lt(cw.rd_at, cw.clp_at, "the pipe was closed before its read completed");
	cr_assert_lt(cw.sy_at, cw.clt_at, "the file was closed before its fdatasync completed");
	errno = 0;
	cr_assert_eq(fcntl(cw.pipefd[0], F_GETFD), -1);
	cr_assert_eq(fcntl(cw.tmpfd, F_GETFD), -1);
	close(cw.pipefd[1]);
}

/* A close held behind a read of its descriptor when the shard stops: the stop cancels the
 * read, and the close is then made on the spot (its handle is cleared), not left undone. */
static struct {
	int pipefd[2];
	struct keel_file_req rd, cl;
	struct keel_file f;
	char buf[4];
	int rd_res, cl_res, cl_runs, seq, rd_at, cl_at;
} hs;

static void
hs_read(struct keel_file_req *req, int res, void *arg)
{
	hs.rd_res = res;
	hs.rd_at = ++hs.seq;
}

static void
hs_closed(struct keel_file_req *req, int res, void *arg)
{
	hs.cl_res = res;
	hs.cl_runs++;
	hs.cl_at = ++hs.seq;
}

static void
hs_start(void *app)
{
	SHARD_CHECK_EQ(keel_file_from_fd(hs.pipefd[0], &hs.f), 0);
	SHARD_CHECK_EQ(keel_file_read(&hs.rd, &hs.f, hs.buf, 4, (uint64_t)-1, hs_read, NULL), 0);
	SHARD_CHECK_EQ(keel_file_close(&hs.cl, &hs.f, hs_closed, NULL), 0);
	keel_stop(0);
}

Test(core_file, a_held_close_at_stop_still_closes)
{
	struct keel_opts o = test_opts(1);

	cr_assert_eq(pipe(hs.pipefd), 0);
	cr_assert_eq(keel_run(&o, hs_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(hs.rd_res, -ECANCELED);
	cr_assert_eq(hs.cl_runs, 1);
	cr_assert_eq(hs.cl_res, 0, "the close reported %d", hs.cl_res);
	/* The close's callback is the file's last event, at stop too: a host frees its
	 * object there (the close's callback ran first, the read's then read freed memory). */
	cr_assert_lt(hs.rd_at, hs.cl_at, "the close's callback ran before the read's");
	errno = 0;
	cr_assert_eq(fcntl(hs.pipefd[0], F_GETFD), -1, "the pipe is still open after the stop");
	close(hs.pipefd[1]);
}

/* A close made at stop waits for the requests on its descriptor that wait to be cancelled:
 * --file-qd 2, reads of two empty pipes in the ring, a read of a third pipe (A) waiting in
 * the FIFO; stop. The first cancelled read's completion moves A's read aside (cwait), to be
 * cancelled once the ring holds none; the second's callback closes A. The close's callback
 * is the file's last event (a host frees its object there), so A's read, made before it,
 * must be called back first. The close looked only at the ring and the held closes: it was
 * issued at once, and its callback ran before the read's -ECANCELED. */
static struct {
	int pipefd[3][2];
	struct keel_file_req x[2], rd, cl;
	struct keel_file p[2], a;
	char buf[3][1];
	int x_res[2], xn, rd_res, cl_res, cl_ret, seq, rd_at, cl_at;
} zc = { .rd_res = 1, .cl_res = 1, .cl_ret = 1 };

static void
zc_done(struct keel_file_req *req, int res, void *arg)
{
	(void)arg;
	if (req == &zc.rd) {
		zc.rd_res = res;
		zc.rd_at = ++zc.seq;
	} else if (req == &zc.cl) {
		zc.cl_res = res;
		zc.cl_at = ++zc.seq;
	} else {
		zc.x_res[req - zc.x] = res;
		if (++zc.xn == 2)
			zc.cl_ret = keel_file_close(&zc.cl, &zc.a, zc_done, NULL);
	}
}

static void
zc_start(void *app)
{
	(void)app;
	for (int i = 0; i < 2; i++) {
		SHARD_CHECK_EQ(keel_file_from_fd(zc.pipefd[i][0], &zc.p[i]), 0);
		SHARD_CHECK_EQ(keel_file_read(&zc.x[i], &zc.p[i], zc.buf[i], 1, (uint64_t)-1,
					      zc_done, NULL),
			       0);
	}
	SHARD_CHECK_EQ(keel_file_from_fd(zc.pipefd[2][0], &zc.a), 0);
	SHARD_CHECK_EQ(keel_file_read(&zc.rd, &zc.a, zc.buf[2], 1, (uint64_t)-1, zc_done, NULL), 0);
	keel_stop(0);
}

Test(core_file, a_close_made_at_stop_comes_after_the_cancelled_requests_on_its_descriptor)
{
	struct keel_opts o = test_opts(1);

	o.file_qd = 2;
	for (int i = 0; i < 3; i++)
		cr_assert_eq(pipe(zc.pipefd[i]), 0);
	cr_assert_eq(keel_run(&o, zc_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(zc.x_res[0], -ECANCELED, "the first pipe's read: %d", zc.x_res[0]);
	cr_assert_eq(zc.x_res[1], -ECANCELED, "the second pipe's read: %d", zc.x_res[1]);
	cr_assert_eq(zc.cl_ret, 0, "the close at stop: %d", zc.cl_ret);
	cr_assert_eq(zc.rd_res, -ECANCELED, "A's read: %d", zc.rd_res);
	cr_assert_eq(zc.cl_res, 0, "A's close: %d", zc.cl_res);
	cr_assert_lt(zc.rd_at, zc.cl_at,
		     "the close's callback (%d) ran before that of the read it was made after (%d)",
		     zc.cl_at, zc.rd_at);
	errno = 0;
	cr_assert_eq(fcntl(zc.pipefd[2][0], F_GETFD), -1, "A is still open after the stop");
	for (int i = 0; i < 3; i++) {
		if (i < 2)
			close(zc.pipefd[i][0]);
		close(zc.pipefd[i][1]);
	}
}

/* Requests waiting in the FIFO are cancelled at stop in the order they were made, after
 * every one in the ring (made before them): with --file-qd 1 after the one whose
 * completion lets them go; with --file-qd 2 after both in the ring (the first one's
 * completion cancelled them, before the second's callback); and with a stop hook that made
 * a request of its own (its pump at the stop's start cancelled them before the ring's were
 * reaped). */
#define FO_N 4
static struct {
	int pipefd[2];
	struct keel_file_req r[FO_N], hook_req;
	struct keel_file f, hook_f;
	char buf[FO_N][4];
	int n, res[FO_N], at[FO_N], seq, hook_res, hook_at;
} fo;

static void
fo_done(struct keel_file_req *req, int res, void *arg)
{
	int i = (int)(req - fo.r);

	if (req == &fo.hook_req) {
		fo.hook_res = res;
		fo.hook_at = ++fo.seq;
		return;
	}
	fo.res[i] = res;
	fo.at[i] = ++fo.seq;
}

static void
fo_hook(void *arg)
{
	(void)arg;
	SHARD_CHECK_EQ(keel_file_fsync(&fo.hook_req, &fo.hook_f, fo_done, NULL), 0, "%s",
		       keel_file_last_error());
}

static void
fo_start(void *app)
{
	SHARD_CHECK_EQ(keel_file_from_fd(fo.pipefd[0], &fo.f), 0);
	for (int i = 0; i < fo.n; i++)
		SHARD_CHECK_EQ(
			keel_file_read(&fo.r[i], &fo.f, fo.buf[i], 4, (uint64_t)-1, fo_done, NULL),
			0);
	if (fo.hook_f.fd > 0)
		SHARD_CHECK_EQ(keel_shard_on_stop(fo_hook, NULL), 0);
	keel_stop(0);
}

/* @n reads of an empty pipe, @file_qd of them in the ring, and with @hook a stop hook's fsync. */
static void
fo_run(int n, uint32_t file_qd, bool hook)
{
	struct keel_opts o = test_opts(1);
	int in_ring = n < (int)file_qd ? n : (int)file_qd;

	memset(&fo, 0, sizeof(fo));
	fo.n = n;
	o.file_qd = file_qd;
	cr_assert_eq(pipe(fo.pipefd), 0);
	if (hook)
		fo.hook_f.fd = make_tmp();
	cr_assert_eq(keel_run(&o, fo_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	for (int i = 0; i < n; i++) {
		cr_assert_eq(fo.res[i], -ECANCELED, "read %d: %d", i, fo.res[i]);
		/* Those in the ring end in whichever order the cancel ends them. */
		if (i < in_ring)
			cr_assert(fo.at[i] >= 1 && fo.at[i] <= in_ring,
				  "read %d, in the ring, was called back %d", i, fo.at[i]);
		else
			cr_assert_eq(fo.at[i], i + 1, "read %d made was called back %d", i,
				     fo.at[i]);
	}
	if (hook) {
		cr_assert_eq(fo.hook_res, 0, "the hook's fsync: %d", fo.hook_res);
		cr_assert_eq(fo.hook_at, n + 1);
		close(fo.hook_f.fd);
		rm_tmp();
	}
	close(fo.pipefd[0]);
	close(fo.pipefd[1]);
}

Test(core_file, requests_cancelled_at_stop_complete_in_the_order_made)
{
	fo_run(3, 1, false);
}

Test(core_file, requests_cancelled_at_stop_come_after_every_one_in_the_ring)
{
	fo_run(FO_N, 2, false);
}

Test(core_file, requests_cancelled_at_stop_keep_their_order_when_a_stop_hook_drains)
{
	fo_run(3, 1, true);
}

/* The same for a statx through a descriptor (AT_EMPTY_PATH: io-wq looks @dirfd up when it
 * runs): the close is held until the statx has completed, which then describes the file. */
static struct {
	int fd;
	struct keel_file_req sx, cl;
	struct keel_file f;
	struct statx stx;
	int sx_res, cl_res, seq, sx_at, cl_at;
	struct keel_file_stats st;
} sd;

static void
sd_done(struct keel_file_req *req, int res, void *arg)
{
	int at = ++sd.seq;

	if (req == &sd.sx) {
		sd.sx_res = res;
		sd.sx_at = at;
	} else {
		sd.cl_res = res;
		sd.cl_at = at;
		keel_stop(0);
	}
}

static void
sd_start(void *app)
{
	SHARD_CHECK_EQ(keel_file_from_fd(sd.fd, &sd.f), 0);
	SHARD_CHECK_EQ(keel_file_statx(&sd.sx, sd.fd, "", AT_EMPTY_PATH, STATX_SIZE, &sd.stx,
				       sd_done, NULL),
		       0);
	SHARD_CHECK_EQ(keel_file_close(&sd.cl, &sd.f, sd_done, NULL), 0);
	SHARD_CHECK_EQ(keel_file_stats(keel_this_shard(), &sd.st), 0);
}

Test(core_file, a_close_waits_for_a_statx_through_its_descriptor, .fini = rm_tmp)
{
	struct keel_opts o = test_opts(1);

	sd.fd = make_tmp();
	cr_assert_eq(write(sd.fd, "12345", 5), 5);
	cr_assert_eq(keel_run(&o, sd_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(sd.st.closes_held, 1, "closes held: %u", sd.st.closes_held);
	cr_assert_eq(sd.sx_res, 0, "the statx: %d", sd.sx_res);
	cr_assert_eq(sd.stx.stx_size, 5);
	cr_assert_eq(sd.cl_res, 0);
	cr_assert_lt(sd.sx_at, sd.cl_at);
}

/* A second close of a descriptor whose close is held is refused (-EBADF, its callback never
 * runs): the file is still open under that number, and the second close would run after the
 * first, when the number may be another file's. Here a close is held behind a pipe's read,
 * and a copy of the keel_file closed again is refused; the first close completes. */
static struct {
	int pipefd[2];
	struct keel_file_req rd, c1, c2;
	struct keel_file p1, p2;
	char buf[4];
	int c2_ret, c1_res, rd_res, done;
} dc;

static void
dc_done(struct keel_file_req *req, int res, void *arg)
{
	if (req == &dc.rd)
		dc.rd_res = res;
	else if (req == &dc.c1)
		dc.c1_res = res;
	else
		SHARD_CHECK(false, "a refused close's callback ran");
	if (++dc.done == 2)
		keel_stop(0);
}

static void
dc_start(void *app)
{
	SHARD_CHECK_EQ(keel_file_from_fd(dc.pipefd[0], &dc.p1), 0);
	dc.p2 = dc.p1;
	SHARD_CHECK_EQ(keel_file_read(&dc.rd, &dc.p1, dc.buf, 4, (uint64_t)-1, dc_done, NULL), 0);
	SHARD_CHECK_EQ(keel_file_close(&dc.c1, &dc.p1, dc_done, NULL), 0); /* held */
	dc.c2_ret = keel_file_close(&dc.c2, &dc.p2, dc_done, NULL);
	SHARD_CHECK_EQ(write(dc.pipefd[1], "ping", 4), 4);
}

Test(core_file, a_second_close_of_a_held_descriptor_is_refused)
{
	struct keel_opts o = test_opts(1);

	cr_assert_eq(pipe(dc.pipefd), 0);
	cr_assert_eq(keel_run(&o, dc_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(dc.c2_ret, -EBADF, "a second close behind a held one: %d", dc.c2_ret);
	cr_assert_eq(dc.rd_res, 4);
	cr_assert_eq(dc.c1_res, 0);
	errno = 0;
	cr_assert_eq(fcntl(dc.pipefd[0], F_GETFD), -1);
	close(dc.pipefd[1]);
}

/* A direct descriptor closed, then a request on a copy of the keel_file made after that
 * close (the slot is still the file's when it is made), then the copy closed: the copy's
 * close is held behind the request. The first close empties the slot before the request
 * ends, so when it ends the held close finds the slot empty: a second close, which must end
 * with -EBADF, its callback run once, before keel_run returns. It stayed held for ever: its
 * callback never ran, closes_held stayed 1, and the stop, which does not look at held
 * closes, let keel_run return (found by the fortieth session's review). */
static struct {
	struct keel_file_req op, c1, rd, c2;
	struct keel_file f, g;
	char buf[1];
	int open_res, c1_res, rd_res, c2_res, c2_calls, done;
	struct keel_file_stats st;
} ce = { .c2_res = 1 };

static void
ce_done(struct keel_file_req *req, int res, void *arg)
{
	(void)arg;
	if (req == &ce.c2) {
		ce.c2_res = res;
		ce.c2_calls++;
		keel_file_stats(keel_this_shard(), &ce.st);
		return;
	}
	if (req == &ce.c1)
		ce.c1_res = res;
	else
		ce.rd_res = res;
	if (++ce.done == 2)
		keel_stop(0); /* the copy's close: before keel_run returns, or never */
}

static void
ce_open(struct keel_file_req *req, int res, void *arg)
{
	(void)req;
	(void)arg;
	ce.open_res = res;
	if (res < 0) {
		keel_stop(1);
		return;
	}
	ce.g = ce.f;
	SHARD_CHECK_EQ(keel_file_close(&ce.c1, &ce.f, ce_done, NULL), 0);
	SHARD_CHECK_EQ(keel_file_read(&ce.rd, &ce.g, ce.buf, 1, 0, ce_done, NULL), 0);
	SHARD_CHECK_EQ(keel_file_close(&ce.c2, &ce.g, ce_done, NULL), 0); /* held */
}

static void
ce_start(void *app)
{
	(void)app;
	SHARD_CHECK_EQ(io_uring_register_files_sparse(keel_shard_ring_get(), 8), 0);
	SHARD_CHECK_EQ(keel_file_openat(&ce.op, AT_FDCWD, "/dev/zero", O_RDONLY, 0,
					KEEL_FILE_OPEN_DIRECT_DESC, &ce.f, ce_open, NULL),
		       0);
}

Test(core_file, a_copys_close_held_behind_a_request_after_the_first_close_ends_ebadf)
{
	struct keel_opts o = test_opts(1);

	cr_assert_eq(keel_run(&o, ce_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(ce.open_res, 0, "the direct open: %d", ce.open_res);
	cr_assert_eq(ce.c1_res, 0, "the first close: %d", ce.c1_res);
	/* The read ran after the close (-EBADF), or before it (a byte). */
	cr_assert(ce.rd_res == -EBADF || ce.rd_res == 1, "the copy's read: %d", ce.rd_res);
	cr_assert_eq(ce.c2_calls, 1,
		     "the copy's close called back %d times before keel_run "
		     "returned (it was held for ever)",
		     ce.c2_calls);
	cr_assert_eq(ce.c2_res, -EBADF, "the copy's close: %d", ce.c2_res);
	cr_assert_eq(ce.st.closes_held, 0, "closes held at its callback: %u", ce.st.closes_held);
}

/* A close in the ring frees its number before its completion is reaped (io-wq closes, and the
 * completion waits for the shard's next wait), so an open can have the number again while
 * that close is still in the ring, and a close of the new file is then a close of a new file,
 * not a second close: it waits for the first and closes the new file. Here the old file's
 * close is in the ring, the shard waits (in its own callback) until the number is free, opens
 * a new file with open(2), which gets the lowest free number, the same, and closes it. */
static struct {
	int oldfd, newfd, new_ret, old_res, new_res, done;
	struct keel_file_req c_old, c_new;
	struct keel_file f_old, f_new;
	bool freed;
} ru;

static void
ru_done(struct keel_file_req *req, int res, void *arg)
{
	if (req == &ru.c_old)
		ru.old_res = res;
	else
		ru.new_res = res;
	if (++ru.done == 2)
		keel_stop(0);
}

static void
ru_start(void *app)
{
	SHARD_CHECK_EQ(keel_file_from_fd(ru.oldfd, &ru.f_old), 0);
	SHARD_CHECK_EQ(keel_file_close(&ru.c_old, &ru.f_old, ru_done, NULL), 0);
	/* To the kernel now: io-wq closes it while this callback goes on. */
	SHARD_CHECK(io_uring_submit(keel_shard_ring_get()) >= 1);
	/* Waits for the kernel, bounded; its completion is reaped only after this returns. */
	for (int i = 0; i < 100000 && !ru.freed; i++) {
		ru.freed = fcntl(ru.oldfd, F_GETFD) < 0;
		if (!ru.freed)
			usleep(100);
	}
	if (!SHARD_CHECK(ru.freed, "io-wq did not close fd %d in 10 s", ru.oldfd)) {
		keel_stop(-EIO);
		return;
	}
	ru.newfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	SHARD_CHECK_EQ(ru.newfd, ru.oldfd);
	SHARD_CHECK_EQ(keel_file_from_fd(ru.newfd, &ru.f_new), 0);
	ru.new_ret = keel_file_close(&ru.c_new, &ru.f_new, ru_done, NULL);
	if (ru.new_ret < 0)
		ru.done++;
}

Test(core_file, a_close_of_a_number_reused_behind_a_close_in_the_ring_closes_the_new_file,
     .fini = rm_tmp)
{
	struct keel_opts o = test_opts(1);

	ru.oldfd = make_tmp();
	cr_assert_eq(keel_run(&o, ru_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(ru.new_ret, 0, "the new file's close was refused: %d", ru.new_ret);
	cr_assert_eq(ru.old_res, 0);
	cr_assert_eq(ru.new_res, 0, "the new file's close: %d", ru.new_res);
	errno = 0;
	cr_assert_eq(fcntl(ru.newfd, F_GETFD), -1, "the new file's descriptor is still open");
}

/* Two closes of one plain descriptor (a keel_file and its copy), both made while the FIFO is
 * not empty, so both queued unchecked, then an open: --file-qd 3, three reads of empty pipes
 * fill the ring and close(f), close(copy of f), openat(B) wait in the FIFO. Two of the pipes
 * get a byte, so two slots free in one pass: the first close is issued, the open behind the
 * second close too, and the open gets the number the first close freed. The copy's close is
 * a second close of f (made while f's first close had not been issued): it must end with
 * -EBADF, leaving B open. It was held behind the first close, which was in the ring, and
 * issued when that one completed, as a plain close of the number, B's by then. */
static struct {
	int pipefd[3][2], fd;
	struct keel_file_req rd[3], c1, c2, op;
	struct keel_file p[3], f, g, b;
	char buf[3][1];
	int rd_res[3], c1_res, c2_res, op_res, done;
} sq = { .c2_res = 1 };

static void
sq_done(struct keel_file_req *req, int res, void *arg)
{
	(void)arg;
	if (req >= sq.rd && req < sq.rd + 3) {
		sq.rd_res[req - sq.rd] = res;
		return;
	}
	if (req == &sq.c1)
		sq.c1_res = res;
	else if (req == &sq.c2)
		sq.c2_res = res;
	else
		sq.op_res = res;
	if (++sq.done == 3)
		keel_stop(0); /* the third pipe's read: cancelled */
}

static void
sq_start(void *app)
{
	(void)app;
	for (int i = 0; i < 3; i++) {
		SHARD_CHECK_EQ(keel_file_from_fd(sq.pipefd[i][0], &sq.p[i]), 0);
		SHARD_CHECK_EQ(keel_file_read(&sq.rd[i], &sq.p[i], sq.buf[i], 1, (uint64_t)-1,
					      sq_done, NULL),
			       0);
	}
	/* The lowest free number: the open in the ring gets it again once it is closed. */
	sq.fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	SHARD_CHECK_EQ(keel_file_from_fd(sq.fd, &sq.f), 0);
	sq.g = sq.f;
	SHARD_CHECK_EQ(keel_file_close(&sq.c1, &sq.f, sq_done, NULL), 0);
	SHARD_CHECK_EQ(keel_file_close(&sq.c2, &sq.g, sq_done, NULL), 0); /* queued unchecked */
	SHARD_CHECK_EQ(keel_file_openat(&sq.op, AT_FDCWD, "/dev/null", O_RDONLY | O_CLOEXEC, 0, 0,
					&sq.b, sq_done, NULL),
		       0);
	SHARD_CHECK_EQ(write(sq.pipefd[0][1], "x", 1), 1);
	SHARD_CHECK_EQ(write(sq.pipefd[1][1], "x", 1), 1);
}

Test(core_file, a_copys_close_queued_with_the_first_is_refused_and_spares_the_next_file)
{
	struct keel_opts o = test_opts(1);

	o.file_qd = 3;
	for (int i = 0; i < 3; i++)
		cr_assert_eq(pipe(sq.pipefd[i]), 0);
	cr_assert_eq(keel_run(&o, sq_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(sq.rd_res[0], 1, "the first pipe's read: %d", sq.rd_res[0]);
	cr_assert_eq(sq.rd_res[1], 1, "the second pipe's read: %d", sq.rd_res[1]);
	cr_assert_eq(sq.rd_res[2], -ECANCELED, "the third pipe's read: %d", sq.rd_res[2]);
	cr_assert_eq(sq.c1_res, 0, "the first close: %d", sq.c1_res);
	/* What the test is about: the open took the number the first close freed. */
	cr_assert_eq(sq.op_res, sq.fd, "the open got %d, not the closed number %d", sq.op_res,
		     sq.fd);
	cr_assert_eq(sq.b.fd, sq.fd);
	cr_assert_eq(sq.c2_res, -EBADF, "the copy's close, a second close of f: %d", sq.c2_res);
	errno = 0;
	cr_assert_neq(fcntl(sq.b.fd, F_GETFD), -1,
		      "the new file's descriptor %d was closed by the copy's close: %s", sq.b.fd,
		      strerror(errno));
	close(sq.b.fd);
	for (int i = 0; i < 3; i++) {
		close(sq.pipefd[i][0]);
		close(sq.pipefd[i][1]);
	}
}

/* Many closes wait in the FIFO together (--file-qd 1, its slot taken by a read of an empty
 * pipe), more than the shard's first table of unissued closes holds, so it grows and rehashes
 * them: a copy's close made then, of a file whose first close waits among them, is still
 * found a second close and ends with -EBADF, and every first close closes its file. The
 * closes are looked up per descriptor (close_pending); before, each walked the FIFO. */
#define MQ_N 300
static struct {
	int pipefd[2], fd[MQ_N];
	struct keel_file_req rd, c1[MQ_N], c2[MQ_N];
	struct keel_file p, f[MQ_N], g[MQ_N];
	char buf[1];
	int rd_res, c1_res[MQ_N], c2_res[MQ_N], done, copies;
	uint32_t waiting_max;
} mq;

static bool
mq_copied(int i)
{
	return i % 7 == 3;
}

static void
mq_done(struct keel_file_req *req, int res, void *arg)
{
	struct keel_file_stats st;

	(void)arg;
	if (req == &mq.rd)
		mq.rd_res = res;
	else if (req >= mq.c1 && req < mq.c1 + MQ_N)
		mq.c1_res[req - mq.c1] = res;
	else
		mq.c2_res[req - mq.c2] = res;
	if (++mq.done < 1 + MQ_N + mq.copies)
		return;
	SHARD_CHECK_EQ(keel_file_stats(keel_this_shard(), &st), 0);
	mq.waiting_max = st.waiting_max;
	keel_stop(0);
}

static void
mq_start(void *app)
{
	(void)app;
	SHARD_CHECK_EQ(keel_file_from_fd(mq.pipefd[0], &mq.p), 0);
	SHARD_CHECK_EQ(keel_file_read(&mq.rd, &mq.p, mq.buf, 1, (uint64_t)-1, mq_done, NULL), 0);
	for (int i = 0; i < MQ_N; i++) {
		mq.fd[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
		SHARD_CHECK(mq.fd[i] >= 0, "open: %s", strerror(errno));
		SHARD_CHECK_EQ(keel_file_from_fd(mq.fd[i], &mq.f[i]), 0);
		mq.g[i] = mq.f[i];
		SHARD_CHECK_EQ(keel_file_close(&mq.c1[i], &mq.f[i], mq_done, NULL), 0);
	}
	for (int i = 0; i < MQ_N; i++) {
		if (!mq_copied(i))
			continue;
		mq.copies++;
		mq.c2_res[i] = 1;
		SHARD_CHECK_EQ(keel_file_close(&mq.c2[i], &mq.g[i], mq_done, NULL), 0);
	}
	SHARD_CHECK_EQ(write(mq.pipefd[1], "x", 1), 1);
}

Test(core_file, many_closes_waiting_together_each_copys_close_is_refused)
{
	struct keel_opts o = test_opts(1);

	o.file_qd = 1;
	cr_assert_eq(pipe(mq.pipefd), 0);
	cr_assert_eq(keel_run(&o, mq_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(mq.rd_res, 1, "the pipe's read: %d", mq.rd_res);
	cr_assert_geq(mq.waiting_max, MQ_N, "closes that waited together: %u", mq.waiting_max);
	for (int i = 0; i < MQ_N; i++) {
		cr_assert_eq(mq.c1_res[i], 0, "close %d: %d", i, mq.c1_res[i]);
		if (mq_copied(i))
			cr_assert_eq(mq.c2_res[i], -EBADF, "close %d's copy, a second close: %d", i,
				     mq.c2_res[i]);
		errno = 0;
		cr_assert_eq(fcntl(mq.fd[i], F_GETFD), -1, "fd %d was not closed", mq.fd[i]);
	}
	close(mq.pipefd[0]);
	close(mq.pipefd[1]);
}

/* A close that waited in the FIFO (--file-qd 2, both slots taken) and reaches its head while a
 * request on its descriptor is still in the ring is held there too: a read of an empty pipe
 * and an fdatasync take the slots, the pipe's close waits in the FIFO; the sync's completion
 * frees a slot and brings the close up, which is then held behind the read (close_waits
 * counts it), and issued once the read has its bytes. */
static struct {
	int pipefd[2], fd;
	struct keel_file_req rd, sy, cl;
	struct keel_file pf, tf;
	char buf[4];
	int rd_res, sy_res, cl_res, seq, rd_at, cl_at;
	uint64_t close_waits;
	uint32_t waiting_before;
} fh;

static void
fh_done(struct keel_file_req *req, int res, void *arg)
{
	int at = ++fh.seq;
	struct keel_file_stats st;

	if (req == &fh.sy) {
		fh.sy_res = res;
		SHARD_CHECK_EQ(write(fh.pipefd[1], "ping", 4), 4);
	} else if (req == &fh.rd) {
		fh.rd_res = res;
		fh.rd_at = at;
	} else {
		fh.cl_res = res;
		fh.cl_at = at;
		SHARD_CHECK_EQ(keel_file_stats(keel_this_shard(), &st), 0);
		fh.close_waits = st.close_waits;
		keel_stop(0);
	}
}

static void
fh_start(void *app)
{
	struct keel_file_stats st;

	SHARD_CHECK_EQ(keel_file_from_fd(fh.pipefd[0], &fh.pf), 0);
	SHARD_CHECK_EQ(keel_file_from_fd(fh.fd, &fh.tf), 0);
	SHARD_CHECK_EQ(keel_file_read(&fh.rd, &fh.pf, fh.buf, 4, (uint64_t)-1, fh_done, NULL), 0);
	SHARD_CHECK_EQ(keel_file_fdatasync(&fh.sy, &fh.tf, fh_done, NULL), 0);
	SHARD_CHECK_EQ(keel_file_close(&fh.cl, &fh.pf, fh_done, NULL), 0);
	SHARD_CHECK_EQ(keel_file_stats(keel_this_shard(), &st), 0);
	fh.waiting_before = st.waiting;
}

Test(core_file, a_close_from_the_fifo_is_held_behind_its_descriptors_request, .fini = rm_tmp)
{
	struct keel_opts o = test_opts(1);

	cr_assert_eq(pipe(fh.pipefd), 0);
	fh.fd = make_tmp();
	o.file_qd = 2;
	cr_assert_eq(keel_run(&o, fh_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(fh.waiting_before, 1, "the close did not wait in the FIFO");
	cr_assert_eq(fh.close_waits, 1, "closes that were held: %llu",
		     (unsigned long long)fh.close_waits);
	cr_assert_eq(fh.sy_res, 0);
	cr_assert_eq(fh.rd_res, 4);
	cr_assert_eq(fh.cl_res, 0);
	cr_assert_lt(fh.rd_at, fh.cl_at);
	close(fh.fd);
	close(fh.pipefd[1]);
}

/* keel_file_ftruncate: through the ring (io-wq), the size is what it asked for; a length
 * past 2^63 is refused at the call, naming it. */
static struct {
	struct keel_file_req req;
	struct keel_file f;
	struct statx stx;
	int step, trunc_res, statx_res, big;
} ft;

static void ft_next(void);

static void
ft_cb(struct keel_file_req *req, int res, void *arg)
{
	(void)req, (void)arg;
	if (ft.step == 0)
		ft.trunc_res = res;
	else
		ft.statx_res = res;
	ft.step++;
	ft_next();
}

static void
ft_next(void)
{
	int r = 0;

	if (ft.step == 0) {
		ft.big = keel_file_ftruncate(&ft.req, &ft.f, (uint64_t)INT64_MAX + 1, ft_cb, NULL);
		SHARD_CHECK(strstr(keel_file_last_error(), "inside 2^63") != NULL, "%s",
			    keel_file_last_error());
		r = keel_file_ftruncate(&ft.req, &ft.f, 100, ft_cb, NULL);
	} else if (ft.step == 1) {
		r = keel_file_statx(&ft.req, AT_FDCWD, tmp_path, 0, STATX_SIZE, &ft.stx, ft_cb,
				    NULL);
	} else {
		keel_stop(0);
		return;
	}
	if (!SHARD_CHECK_EQ(r, 0, "step %d: %s", ft.step, keel_file_last_error()))
		keel_stop(-EIO);
}

static void
ft_start(void *app)
{
	(void)app;
	ft_next();
}

Test(core_file, ftruncate_through_the_ring_sets_the_size)
{
	struct keel_opts o = test_opts(1);
	static char block[8192];
	int fd = make_tmp();

	cr_assert_eq(write(fd, block, sizeof(block)), (ssize_t)sizeof(block));
	if (!keel_caps_get()->op_supported[KEEL_IORING_OP_FTRUNCATE]) {
		close(fd);
		rm_tmp();
		cr_skip_test("this kernel has no IORING_OP_FTRUNCATE (Linux 6.9)");
	}
	cr_assert_eq(keel_file_from_fd(fd, &ft.f), 0);
	cr_assert_eq(keel_run(&o, ft_start, NULL), 0);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(ft.big, -EINVAL);
	cr_assert_eq(ft.trunc_res, 0, "ftruncate: %d", ft.trunc_res);
	cr_assert_eq(ft.statx_res, 0);
	cr_assert_eq(ft.stx.stx_size, 100, "size %llu", (unsigned long long)ft.stx.stx_size);
	close(fd);
	rm_tmp();
}
