// SPDX-License-Identifier: MIT
/*
 * Disk I/O on the shard's ring (keel/file.h, docs/file.md).
 *
 * A request is the caller's struct keel_file_req; its keel_op is the SQE's user_data, so
 * nothing is allocated per request (a path is copied into the shard's arena for open and
 * statx, and an O_DIRECT open borrows a struct statx from it until it completes).
 *
 * At most --file-qd requests of a shard are in its ring; the others wait in a FIFO and are
 * issued in order as slots free up, from the completion that freed the slot. A request made
 * while others wait queues behind them even if a slot is free, so the FIFO holds.
 *
 * Stop: requests in the ring are operations like any other, cancelled by the loop's
 * IORING_ASYNC_CANCEL_ANY (their callbacks run with -ECANCELED, or with their result when the
 * kernel finished first); requests still waiting in the FIFO are never issued: they move
 * aside (cancel_waiting), and once the ring holds none made before the stop, the last such
 * completion runs their callbacks with -ECANCELED, so callbacks come in the order the
 * requests were made (a FIFO is never non-empty without a request in the ring, so that
 * completion comes, but when its head found no SQE: then the loop pumps it every pass,
 * keel__file_retry, and the shard is not quiescent; in the loop's last phase, where only a
 * close is taken, final_drain does, keel__file_settle). The requests of stop hooks, and
 * those their callbacks make, are the exception that drains: issued after the stop's cancel, they
 * run to completion (keel__file_stop_hooks; stop_progress cancels nothing more while files.ndrain
 * counts any). A close is the exception: its handle is cleared already, so one cancelled or still
 * waiting is made on the spot (close_now) and reports that, once no request in the ring names its
 * descriptor (it is held until then, at stop as while running: close_check). A close that would
 * go to the ring while a request on its descriptor waits to be cancelled joins them
 * (behind_cwait), so its callback still comes last. New requests are refused with -ESHUTDOWN. The
 * loop's quiescence waits for every request in the ring, so no callback runs after the runtime
 * stopped.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <unistd.h>

#include "bufreg.h"
#include "internal.h"

enum kind {
	K_OPEN = 1,
	K_READ,
	K_WRITE,
	K_READV,
	K_WRITEV,
	K_READ_SLICE,
	K_WRITE_SLICE,
	K_FSYNC,
	K_FDATASYNC,
	K_FALLOCATE,
	K_FTRUNCATE,
	K_STATX,
	K_CLOSE,
};

/* stage_ of an open: the openat, then (O_DIRECT) the statx that reads the alignment. */
enum { ST_FIRST = 0, ST_OPEN_STATX = 1 };

#define OPEN_F_DIRECT_DESC 0x80 /* in sqe_flags_ of an open: IORING_FILE_INDEX_ALLOC */

static uint32_t
qd_of(const struct keel_shard *s)
{
	return s->rt->opts.file_qd; /* 1 to KEEL_FILE_QD_MAX: checked at create */
}

/* A refusal a person may read: kept for keel_file_last_error() and logged, at most one line
 * a second per shard (a misaligned loop would otherwise flood the log). */
static int KEEL_PRINTF(3, 4) refuse(struct keel_shard *s, int r, const char *fmt, ...)
{
	va_list ap;
	uint64_t now = keel__clock_ns();

	va_start(ap, fmt);
	vsnprintf(s->files.last_err, sizeof(s->files.last_err), fmt, ap);
	va_end(ap);
	s->files.st.refused++;
	if (!s->files.err_logged_ns || now - s->files.err_logged_ns >= 1000000000ULL) {
		s->files.err_logged_ns = now;
		keel_log(KEEL_LOG_WARN, "file", "shard %u: %s (%s; logged at most once a second)",
			 s->id, s->files.last_err, strerror(-r));
	}
	return r;
}

/* Whether @req goes into the ring: the shard runs, or it is one of the requests the stop
 * drains (keel__file_stop_hooks); any other is cancelled once the stop has begun. */
static bool
issues(const struct keel_shard *s, const struct keel_file_req *req)
{
	return s->phase == PHASE_RUN || (req->drain_ && !s->files.drain_over);
}

/* Common checks of every call. */
static int
begin(struct keel_shard *s, struct keel_file_req *req, keel_file_fn cb, int kind)
{
	if (!req || !cb)
		return refuse(s, -EINVAL, "disk request without %s",
			      req ? "a callback" : "a request");
	/* Made by a stop hook, or by the callback of a request a hook made (its chain): run
	 * to completion. Any other is refused once the stop has begun, but a close, which
	 * ends on the ring or (cancelled) on the spot, so a descriptor whose last request was
	 * cancelled can still be closed: in the loop's last phase too (a foreign request's
	 * done, run with -ECANCELED at the shard's end), whose reaping takes it. */
	bool drain = (s->files.hooks || s->files.drain_cb) && !s->files.drain_over;

	if (s->phase != PHASE_RUN && !drain && kind != K_CLOSE)
		return refuse(s, -ESHUTDOWN,
			      "disk request refused: the runtime is stopping (shard %u)", s->id);
	memset(req, 0, sizeof(*req));
	req->drain_ = drain;
	req->cb_ = cb;
	req->kind_ = (uint8_t)kind;
	req->fd_ = -1;
	req->dirfd_ = AT_FDCWD;
	return 0;
}

static int
file_ok(struct keel_shard *s, const struct keel_file *f, struct keel_file_req *req)
{
	if (!f)
		return refuse(s, -EINVAL, "disk request without a file");
	if (f->fd < 0)
		return refuse(s, -EBADF, "disk request on a closed keel_file (fd %d)", f->fd);
	/* A direct descriptor is a slot of one ring's table: on another ring the same index is
	 * another file, or one of its connections. */
	if ((f->flags & KEEL_FILE_F_FIXED) && f->ring_ != s->timer_gen)
		return refuse(
			s, -EXDEV,
			"disk request on direct descriptor %d of another shard's ring "
			"(shard %u's table does not hold it): make requests on the shard that "
			"opened it, or open the file without KEEL_FILE_OPEN_DIRECT_DESC",
			f->fd, s->id);
	req->fd_ = f->fd;
	if (f->flags & KEEL_FILE_F_FIXED)
		req->sqe_flags_ = IOSQE_FIXED_FILE;
	return 0;
}

static const char *
kind_name(int k)
{
	switch (k) {
	case K_READ:
	case K_READ_SLICE:
		return "read";
	case K_WRITE:
	case K_WRITE_SLICE:
		return "write";
	case K_READV:
		return "readv";
	case K_WRITEV:
		return "writev";
	default:
		return "request";
	}
}

/* statx's read alignment for direct I/O (Linux 6.14): the mask bit and its field's place in
 * struct statx, which the C library's headers may not name yet. */
#define KEEL_STATX_DIO_READ_ALIGN 0x00020000U
#define KEEL_STATX_DIO_READ_OFF   0xb4
#define KEEL_STATX_DIO            (STATX_TYPE | STATX_DIOALIGN | KEEL_STATX_DIO_READ_ALIGN)
_Static_assert(sizeof(struct statx) >= KEEL_STATX_DIO_READ_OFF + sizeof(uint32_t),
	       "struct statx holds stx_dio_read_offset_align");

/* The offset, and O_DIRECT's rules, checked before the kernel sees the request, so the
 * person reading the error learns which value is wrong instead of a bare EINVAL. An offset
 * above INT64_MAX other than -1 (at the file's position: pipes and other streams) is
 * refused here; the kernel would fail it only in the callback. */
static int
check_dio(struct keel_shard *s, const struct keel_file *f, int kind, const struct iovec *iov,
	  unsigned n, uint64_t off)
{
	uint32_t oa, ma;
	char bad[256];
	size_t k = 0;
	uint64_t total = 0;

	if (off > INT64_MAX && off != UINT64_MAX)
		return refuse(s, -EINVAL,
			      "disk %s at offset %llu: offsets go up to 2^63 - 1 (or are -1: at "
			      "the file's position)",
			      kind_name(kind), (unsigned long long)off);
	if (!(f->flags & KEEL_FILE_F_DIRECT_IO))
		return 0;
	oa = f->dio_offset_align ? f->dio_offset_align : f->lbs;
	if ((kind == K_READ || kind == K_READ_SLICE || kind == K_READV) && f->dio_read_offset_align)
		oa = f->dio_read_offset_align;
	ma = f->dio_mem_align ? f->dio_mem_align : f->lbs;
	if (!oa && !ma)
		return 0; /* alignment unknown (see docs/file.md): the kernel decides */
	bad[0] = 0;
	if (oa && off != UINT64_MAX && off % oa) /* -1: the position, which the kernel checks */
		k += (size_t)snprintf(bad + k, sizeof(bad) - k,
				      "offset %" PRIu64 " is not a multiple of %u; ", off, oa);
	for (unsigned i = 0; i < n; i++)
		total += iov[i].iov_len;
	for (unsigned i = 0; i < n && k < sizeof(bad); i++) {
		if (oa && iov[i].iov_len % oa) {
			k += (size_t)snprintf(bad + k, sizeof(bad) - k,
					      "length %zu%s is not a multiple of %u; ",
					      iov[i].iov_len, n > 1 ? " (of an iovec)" : "", oa);
			break;
		}
	}
	for (unsigned i = 0; i < n && k < sizeof(bad); i++) {
		if (ma && (uintptr_t)iov[i].iov_base % ma) {
			k += (size_t)snprintf(bad + k, sizeof(bad) - k,
					      "buffer address %p is not aligned to %u; ",
					      iov[i].iov_base, ma);
			break;
		}
	}
	if (!k)
		return 0;
	if (k > 2 && k < sizeof(bad))
		bad[k - 2] = 0; /* the last "; " */
	return refuse(s, -EINVAL,
		      "O_DIRECT %s of %" PRIu64 " bytes at %" PRIu64 " on fd %d refused: %s "
		      "(device logical block size %u, statx dio_offset_align %u, "
		      "dio_read_offset_align %u, dio_mem_align %u): align offset and length to "
		      "%u and the buffer address to %u",
		      kind_name(kind), total, off, f->fd, bad, f->lbs, f->dio_offset_align,
		      f->dio_read_offset_align, f->dio_mem_align, oa, ma);
}

/* The device's logical block size from sysfs (a partition's is its disk's), 0 if none: a
 * file system without a block device (tmpfs, NFS, overlay upper dirs on tmpfs). */
static uint32_t
sysfs_lbs(unsigned maj, unsigned min)
{
	static const char *const fmt[] = { "/sys/dev/block/%u:%u/queue/logical_block_size",
					   "/sys/dev/block/%u:%u/../queue/logical_block_size" };
	char path[96], buf[32];

	for (size_t i = 0; i < sizeof(fmt) / sizeof(fmt[0]); i++) {
		int fd, n;
		snprintf(path, sizeof(path), fmt[i], maj, min);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		n = (int)read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n > 0) {
			buf[n] = 0;
			return (uint32_t)strtoul(buf, NULL, 10);
		}
	}
	return 0;
}

static void
dio_fill(struct keel_file *f, const struct statx *stx)
{
	f->flags |= KEEL_FILE_F_DIRECT_IO;
	if (stx->stx_mask & STATX_DIOALIGN) {
		f->dio_mem_align = stx->stx_dio_mem_align;
		f->dio_offset_align = stx->stx_dio_offset_align;
	}
	if (stx->stx_mask & KEEL_STATX_DIO_READ_ALIGN)
		memcpy(&f->dio_read_offset_align, (const char *)stx + KEEL_STATX_DIO_READ_OFF,
		       sizeof(f->dio_read_offset_align));
	if ((stx->stx_mask & STATX_TYPE) && S_ISBLK(stx->stx_mode))
		f->lbs = sysfs_lbs(stx->stx_rdev_major, stx->stx_rdev_minor);
	else
		f->lbs = sysfs_lbs(stx->stx_dev_major, stx->stx_dev_minor);
}

int
keel_file_from_fd(int fd, struct keel_file *out)
{
	struct keel_file f = { .fd = fd };
	struct statx stx;
	int fl;

	if (!out)
		return -EINVAL;
	fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -errno;
	if (fl & O_DIRECT) {
		if (statx(fd, "", AT_EMPTY_PATH, KEEL_STATX_DIO, &stx) < 0)
			return -errno;
		dio_fill(&f, &stx);
	}
	*out = f; /* only on success: a failure leaves *out as it was */
	return 0;
}

/* What a request holds besides the caller's memory: dropped before its callback runs, or
 * when the call that made it fails. */
static void
release(struct keel_file_req *req)
{
	if (req->has_slice_) {
		keel_slice_put(&req->slice_);
		req->has_slice_ = false;
	}
	if (req->path_) {
		keel_shard_free(req->path_);
		req->path_ = NULL;
	}
	if (req->kind_ == K_OPEN && req->addr_) {
		keel_shard_free(req->addr_);
		req->addr_ = NULL;
	}
}

/* The direct descriptor slots keel_file_openat filled (s->files.slots). */
static bool
slot_held(const struct keel_shard *s, int slot)
{
	uint32_t w = (uint32_t)slot / 64;

	return slot >= 0 && w < s->files.slot_words && (s->files.slots[w] >> (slot % 64) & 1);
}

static void
slot_drop(struct keel_shard *s, int slot)
{
	if (slot_held(s, slot))
		s->files.slots[(uint32_t)slot / 64] &= ~(UINT64_C(1) << (slot % 64));
}

/* Returns 0, or -ENOMEM: the bitmap could not grow to @slot. */
static int
slot_take(struct keel_shard *s, int slot)
{
	uint32_t w = (uint32_t)slot / 64;

	if (w >= s->files.slot_words) {
		uint32_t n = w + 1 > 2 * s->files.slot_words ? w + 1 : 2 * s->files.slot_words;
		uint64_t *b = realloc(s->files.slots, n * sizeof(*b));

		if (!b)
			return -ENOMEM;
		memset(b + s->files.slot_words, 0, (n - s->files.slot_words) * sizeof(*b));
		s->files.slots = b;
		s->files.slot_words = n;
	}
	s->files.slots[w] |= UINT64_C(1) << (slot % 64);
	return 0;
}

/* The unissued closes' table (files.pend): its buckets and their number. */
static struct keel_file_req **
pend_tab(struct keel_shard *s, uint32_t *nb)
{
	*nb = s->files.pend
		      ? s->files.pend_nb
		      : (uint32_t)(sizeof(s->files.pend_inline) / sizeof(s->files.pend_inline[0]));
	return s->files.pend ? s->files.pend : s->files.pend_inline;
}

/* Close @req's bucket in a table of @nb buckets: 2 * fd + direct, whose low bits differ
 * from one descriptor to the next (the kernel hands out the lowest free numbers). */
static uint32_t
pend_bucket(const struct keel_file_req *req, uint32_t nb)
{
	return (uint32_t)(2 * (uint32_t)req->fd_ + !!(req->sqe_flags_ & IOSQE_FIXED_FILE)) &
	       (nb - 1);
}

static void
pend_link(struct keel_file_req **tab, uint32_t nb, struct keel_file_req *req)
{
	struct keel_file_req **b = &tab[pend_bucket(req, nb)];

	req->lprev_ = NULL;
	req->lnext_ = *b;
	if (*b)
		(*b)->lprev_ = req;
	*b = req;
}

/* More buckets once closes outnumber them twice: O(1) amortised. Without memory the table
 * stays as it is, correct, its chains longer. */
static void
pend_grow(struct keel_shard *s)
{
	uint32_t nb, nnb;
	struct keel_file_req **tab = pend_tab(s, &nb), **ntab;

	if (s->files.pend_n < 2 * nb || nb > UINT32_MAX / 4)
		return;
	nnb = 4 * nb;
	ntab = calloc(nnb, sizeof(*ntab));
	if (!ntab)
		return;
	for (uint32_t i = 0; i < nb; i++)
		for (struct keel_file_req *r = tab[i], *next; r; r = next) {
			next = r->lnext_;
			pend_link(ntab, nnb, r);
		}
	free(s->files.pend);
	s->files.pend = ntab;
	s->files.pend_nb = nnb;
}

/* Close @req was accepted and not issued: it waits in the FIFO, is held, or waits to be
 * cancelled, until issue() or complete() (pend_drop). */
static void
pend_add(struct keel_shard *s, struct keel_file_req *req)
{
	uint32_t nb;
	struct keel_file_req **tab;

	s->files.pend_n++;
	pend_grow(s);
	tab = pend_tab(s, &nb);
	pend_link(tab, nb, req);
	req->pend_ = true;
}

static void
pend_drop(struct keel_shard *s, struct keel_file_req *req)
{
	uint32_t nb;
	struct keel_file_req **tab;

	if (!req->pend_)
		return;
	tab = pend_tab(s, &nb);
	if (req->lprev_)
		req->lprev_->lnext_ = req->lnext_;
	else
		tab[pend_bucket(req, nb)] = req->lnext_;
	if (req->lnext_)
		req->lnext_->lprev_ = req->lprev_;
	req->lprev_ = req->lnext_ = NULL;
	req->pend_ = false;
	s->files.pend_n--;
}

static void
complete(struct keel_shard *s, struct keel_file_req *req, int res)
{
	bool drain = req->drain_;

	/* A direct descriptor's slot is free again once a close emptied it (a second close of
	 * a copied keel_file finds it empty: -EBADF), or when its open failed or was
	 * cancelled. A stale copy's close may empty a slot that is no file's any more (a
	 * connection's): misuse, as closing a reused descriptor number is; not counted below
	 * zero. */
	if (((req->kind_ == K_CLOSE && (req->sqe_flags_ & IOSQE_FIXED_FILE) && res >= 0) ||
	     (req->kind_ == K_OPEN && (req->sqe_flags_ & OPEN_F_DIRECT_DESC) && res < 0)) &&
	    s->files.direct)
		s->files.direct--;
	if (req->kind_ == K_CLOSE && (req->sqe_flags_ & IOSQE_FIXED_FILE) && res >= 0)
		slot_drop(s, req->fd_);
	release(req);
	pend_drop(s, req);
	s->files.closes -= req->kind_ == K_CLOSE;
	s->files.st.completed++;
	if (res < 0)
		s->files.st.errors++;
	if (res == -ECANCELED)
		s->files.st.cancelled++;
	s->files.drain_cb += drain;
	req->cb_(req, res, req->arg_);
	s->files.drain_cb -= drain;
	/* After the callback, which may have made the next request of a chain (a write, then
	 * its sync): the last one lets the stop cancel again (stop_progress). */
	s->files.ndrain -= drain;
}

/* Close @fd here, synchronously: a plain close, or emptying direct descriptor slot @fd.
 * Returns 0 or -errno. */
static int
fd_close_now(struct keel_shard *s, int fd, bool direct)
{
	if (direct) {
		int none = -1;
		int r = io_uring_register_files_update(&s->ring, (unsigned)fd, &none, 1);

		return r < 0 ? r : 0;
	}
	return close(fd) < 0 ? -errno : 0;
}

/* A close still waiting when the shard stops, or that cannot be issued: keel_file_close
 * cleared the application's handle, so the descriptor is closed here, at once, rather than
 * cancelled (or failed) and left open. Returns 0 or -errno. */
static int
close_now(struct keel_shard *s, struct keel_file_req *req)
{
	bool direct = req->sqe_flags_ & IOSQE_FIXED_FILE;

	/* The kernel empties an empty slot without a word: a second close of a copied
	 * keel_file would report success, count the slot free twice, and empty whatever
	 * took the slot meanwhile. (complete() marks the slot empty.) */
	if (direct && !slot_held(s, req->fd_))
		return -EBADF;
	return fd_close_now(s, req->fd_, direct);
}

/* Put one request on the ring. Returns 0, or -errno with nothing submitted. */
static int
issue(struct keel_shard *s, struct keel_file_req *req)
{
	struct io_uring_sqe *sqe;
	unsigned idx = 0;
	uint64_t boff;
	bool fixed = false;

	if (req->kind_ == K_READ_SLICE || req->kind_ == K_WRITE_SLICE) {
		/* Before the SQE: an SQE once taken cannot be given back. */
		int r = keel_buf_fixed(&req->slice_, &idx, &boff);
		/* A buffer of this shard that wraps memory (a receive buffer of net's provided
		 * buffer ring, carved from an allocator buffer) is still registered memory. */
		if (r == -ENOENT && req->slice_.len)
			r = keel__bufreg_fixed_mem(s, req->slice_.data, req->slice_.len, &idx,
						   &boff);
		if (r == 0)
			fixed = true;
		else if (r == -ENOMEM && s->bufreg->policy_on)
			return -ENOMEM; /* reg_buffers=on promised fixed I/O: no silent plain */
	}
#ifdef KEEL_FAULTS
	if (keel__fault_sqe_take())
		return -EBUSY;
#endif
	sqe = keel__sqe_internal(s);
	if (!sqe)
		return -EBUSY; /* the ring's submit failed (logged): nothing was taken */
	switch (req->kind_) {
	case K_OPEN:
		if (req->stage_ == ST_OPEN_STATX && (req->sqe_flags_ & OPEN_F_DIRECT_DESC))
			/* IORING_OP_STATX takes no direct descriptor: by path (O_TMPFILE,
			 * whose path is its directory, is refused at the call). */
			io_uring_prep_statx(sqe, req->dirfd_, req->path_, 0, KEEL_STATX_DIO,
					    req->addr_);
		else if (req->stage_ == ST_OPEN_STATX)
			/* The file just opened, whatever its path names by now. */
			io_uring_prep_statx(sqe, req->fd_, "", AT_EMPTY_PATH, KEEL_STATX_DIO,
					    req->addr_);
		else {
			io_uring_prep_openat(sqe, req->dirfd_, req->path_, req->oflags_,
					     req->mode_);
			/* Not io_uring_prep_openat_direct(): liburing 2.3 stores index + 1,
			 * which turns IORING_FILE_INDEX_ALLOC (~0U) into 0, a plain open. */
			if (req->sqe_flags_ & OPEN_F_DIRECT_DESC)
				sqe->file_index = IORING_FILE_INDEX_ALLOC;
		}
		break;
	case K_READ:
		io_uring_prep_read(sqe, req->fd_, req->addr_, req->len_, req->off_);
		break;
	case K_WRITE:
		io_uring_prep_write(sqe, req->fd_, req->addr_, req->len_, req->off_);
		break;
	case K_READV:
		io_uring_prep_readv(sqe, req->fd_, req->addr_, req->len_, req->off_);
		break;
	case K_WRITEV:
		io_uring_prep_writev(sqe, req->fd_, req->addr_, req->len_, req->off_);
		break;
	case K_READ_SLICE:
		if (fixed)
			io_uring_prep_read_fixed(sqe, req->fd_, req->slice_.data, req->slice_.len,
						 req->off_, (int)idx);
		else
			io_uring_prep_read(sqe, req->fd_, req->slice_.data, req->slice_.len,
					   req->off_);
		break;
	case K_WRITE_SLICE:
		if (fixed)
			io_uring_prep_write_fixed(sqe, req->fd_, req->slice_.data, req->slice_.len,
						  req->off_, (int)idx);
		else
			io_uring_prep_write(sqe, req->fd_, req->slice_.data, req->slice_.len,
					    req->off_);
		break;
	case K_FSYNC:
		io_uring_prep_fsync(sqe, req->fd_, 0);
		break;
	case K_FDATASYNC:
		io_uring_prep_fsync(sqe, req->fd_, IORING_FSYNC_DATASYNC);
		break;
	case K_FALLOCATE:
		io_uring_prep_fallocate(sqe, req->fd_, req->oflags_, (off_t)req->off_,
					(off_t)req->aux_);
		break;
	case K_FTRUNCATE: /* liburing 2.3 has no helper; the kernel runs it in io-wq */
		io_uring_prep_rw(KEEL_IORING_OP_FTRUNCATE, sqe, req->fd_, NULL, 0, req->off_);
		break;
	case K_STATX:
		io_uring_prep_statx(sqe, req->dirfd_, req->path_, req->oflags_, req->mode_,
				    req->addr_);
		break;
	case K_CLOSE:
		if (req->sqe_flags_ & IOSQE_FIXED_FILE) {
			io_uring_prep_close_direct(sqe, (unsigned)req->fd_);
		} else {
			struct stat st;

			/* The last close of a file that no name holds any more (unlinked, or
			 * renamed over) frees its blocks: over 100 ms for 500 MB on ext4. That
			 * one goes to io-wq, off the shard's thread; any other is made inline,
			 * as a worker's round trip would double its cost (4.0 to 8.4 us a
			 * close here). */
			io_uring_prep_close(sqe, req->fd_);
			if (fstat(req->fd_, &st) == 0 && st.st_nlink == 0)
				sqe->flags |= IOSQE_ASYNC;
		}
		break;
	}
	/* Open, statx and close name no file through the table: only I/O on a direct
	 * descriptor carries IOSQE_FIXED_FILE. */
	if (req->kind_ != K_OPEN && req->kind_ != K_STATX && req->kind_ != K_CLOSE)
		sqe->flags |= req->sqe_flags_ & IOSQE_FIXED_FILE;
	io_uring_sqe_set_data(sqe, &req->op_);
	pend_drop(s, req); /* a close in the ring is no longer pending (close_pending) */
	s->files.nosqe_logged = false; /* the next time none is had is said again */
	KEEL__FAULTS_SQE(sqe);
	s->inflight++;
	s->binds++;
	if (req->stage_ == ST_FIRST) {
		struct keel_file_stats *st = &s->files.st;

		req->lprev_ = NULL;
		req->lnext_ = s->files.live;
		if (s->files.live)
			s->files.live->lprev_ = req;
		s->files.live = req;
		st->issued++;
		if (fixed)
			st->fixed++;
		if (++st->inflight > st->inflight_max)
			st->inflight_max = st->inflight;
		s->files.inflight_drain += req->drain_;
	}
	return 0;
}

/* Whether request @l names descriptor @fd (@fixed: a direct descriptor): its file, or the
 * directory an open or a statx resolves its path in. */
static bool
names_fd(const struct keel_file_req *l, int fd, bool fixed)
{
	if (l->kind_ == K_OPEN || l->kind_ == K_STATX)
		return !fixed && l->dirfd_ == fd;
	return l->fd_ == fd && fixed == !!(l->sqe_flags_ & IOSQE_FIXED_FILE);
}

/* What close @req must do now: CLOSE_GO; CLOSE_HELD, wait, because a request in the ring
 * names its descriptor; -EBADF, another close of it is held, or was not yet issued when this
 * one was made (second_, close_pending): the file is still open under that number, so this
 * is a second close of it, which would run after the first, when the number may be another
 * file's. The kernel looks a plain descriptor up when it runs a request, and io-wq runs some
 * on its own threads from the start (fsync, fallocate, statx, an open that cannot be done
 * inline), so a close issued beside them could run first: they would fail with EBADF, or
 * act on whatever file took the number meanwhile. A close in the ring is only waited for:
 * io-wq frees the number before its completion is reaped, so an open may have the number
 * again already, and this close may be of that new file. Walks the requests in the ring (at
 * most --file-qd) and the held closes. */
enum { CLOSE_GO = 0, CLOSE_HELD = 1 };

static int
close_check(const struct keel_shard *s, const struct keel_file_req *req)
{
	bool fixed = req->sqe_flags_ & IOSQE_FIXED_FILE;
	int r = CLOSE_GO;

	if (req->kind_ != K_CLOSE)
		return CLOSE_GO;
	if (req->second_)
		return -EBADF;
	if (fixed && !slot_held(s, req->fd_))
		return -EBADF; /* emptied by another close (of a copy) since it was made */
	for (const struct keel_file_req *h = s->files.held; h; h = h->next_)
		if (h != req && names_fd(h, req->fd_, fixed))
			return -EBADF;
	for (const struct keel_file_req *l = s->files.live; l; l = l->lnext_)
		if (names_fd(l, req->fd_, fixed))
			r = CLOSE_HELD;
	return r;
}

/* Whether a request of list @l names @req's descriptor. */
static bool
list_names(const struct keel_file_req *l, const struct keel_file_req *req)
{
	bool fixed = req->sqe_flags_ & IOSQE_FIXED_FILE;

	for (; l; l = l->next_)
		if (names_fd(l, req->fd_, fixed))
			return true;
	return false;
}

/* Whether a close of @req's descriptor made before it has not yet been issued: waits in the
 * FIFO, is held, or waits to be cancelled at stop. Then @req, made now, is a second close of
 * the file that one will close, whenever each of them reaches the ring: by then the number
 * may be another file's (an open queued between them takes it as soon as the first close has
 * run). Only a close in the ring is ambiguous (close_check): io-wq may have freed its number
 * already, so @req may be a close of a new file. Looks in one bucket of files.pend, which
 * holds exactly those closes: it walked the FIFO, the held closes and cwait, so each close
 * cost O(queue) while any close was outstanding. @req itself is not in it yet. */
static bool
close_pending(struct keel_shard *s, const struct keel_file_req *req)
{
	bool fixed = req->sqe_flags_ & IOSQE_FIXED_FILE;
	uint32_t nb;
	struct keel_file_req **tab = pend_tab(s, &nb);

	for (const struct keel_file_req *l = tab[pend_bucket(req, nb)]; l; l = l->lnext_)
		if (names_fd(l, req->fd_, fixed))
			return true;
	return false;
}

/* Whether close @req, about to go to the ring at stop (made in a cancelled request's callback,
 * or a stop hook's close at the FIFO's head), must join the requests waiting to be cancelled
 * (cwait) instead, because one of them names its descriptor: that one was made before @req
 * (before the stop, or ahead of it in the FIFO) and is called back, with -ECANCELED, only once
 * the ring holds none of its kind; the close's callback, where a host may free the file's
 * object, must come after it. At the end of cwait the close is made on the spot, or held
 * (end_unissued), as one that waited there is. cwait is filled only at stop. */
static bool
behind_cwait(const struct keel_shard *s, const struct keel_file_req *req)
{
	return req->kind_ == K_CLOSE && list_names(s->files.cwait, req);
}

/* Put close @req aside until close_check() lets it go (held_release). */
static void
hold(struct keel_shard *s, struct keel_file_req *req)
{
	req->next_ = s->files.held;
	s->files.held = req;
	if (!req->aux_) { /* unused by a close: counted once, however often held */
		req->aux_ = 1;
		s->files.st.close_waits++;
	}
	s->files.st.closes_held++;
}

/* Request @done has left the ring: the held closes of the descriptor it named go to the head
 * of the FIFO once nothing else in the ring names it (they were made before anything waiting
 * there). Only the closes @done named are looked at again. One that close_check now refuses
 * goes there too, and pump completes it with that error: a close of a direct descriptor's
 * copy, held behind a request made after the first close, finds the slot emptied by that
 * close (-EBADF) when the request ends. Kept held, it was never called back. */
static void
held_release(struct keel_shard *s, const struct keel_file_req *done)
{
	struct keel_file_req **p = &s->files.held, *req;

	while ((req = *p)) {
		if (!names_fd(done, req->fd_, req->sqe_flags_ & IOSQE_FIXED_FILE) ||
		    close_check(s, req) == CLOSE_HELD) {
			p = &req->next_;
			continue;
		}
		*p = req->next_;
		s->files.st.closes_held--;
		/* Counted as waiting for pump, which takes it at once (not in waiting_max). */
		req->next_ = s->files.head;
		s->files.head = req;
		if (!s->files.tail)
			s->files.tail = req;
		s->files.st.waiting++;
	}
}

/* Request @req found no SQE (the ring's submit failed, logged there; the SQ stays full):
 * it goes back to the head of the FIFO, ahead of what was made after it, and the loop tries
 * the FIFO again at the end of each pass (keel__file_retry) until the ring takes it, or the
 * stop cancels it. Nothing in the ring may end to pump it, so the loop must. In the loop's
 * last phase no pass comes: final_drain settles it at once (keel__file_settle), a close
 * made on the spot, and the line says that. */
static void
wait_for_sqe(struct keel_shard *s, struct keel_file_req *req)
{
	req->next_ = s->files.head;
	s->files.head = req;
	if (!s->files.tail)
		s->files.tail = req;
	if (++s->files.st.waiting > s->files.st.waiting_max)
		s->files.st.waiting_max = s->files.st.waiting;
	if (!s->files.nosqe_logged && s->phase == PHASE_DONE) /* only a close is taken there */
		keel_log(KEEL_LOG_WARN, "core",
			 "shard %u: the ring's submission queue is full at the shard's end: a disk "
			 "close found no SQE and is made on the spot instead, synchronously, once "
			 "no request in the ring names its descriptor (raise --ring-entries if "
			 "this line comes back; said once until one is had)",
			 s->id);
	else if (!s->files.nosqe_logged)
		keel_log(KEEL_LOG_WARN, "core",
			 "shard %u: the ring's submission queue is full: a disk %s waits, tried "
			 "again every pass (raise --ring-entries if this line comes back; said "
			 "once until one is had)",
			 s->id, kind_name(req->kind_));
	s->files.nosqe = s->files.nosqe_logged = true;
	s->internal_retry = true;
}

/* @req at the end of the list @head..@tail (the FIFO, or those waiting to be cancelled). */
static void
append(struct keel_file_req **head, struct keel_file_req **tail, struct keel_file_req *req)
{
	req->next_ = NULL;
	if (*tail)
		(*tail)->next_ = req;
	else
		*head = req;
	*tail = req;
}

/* A request taken from the FIFO that will not be issued (the stop): cancelled, a close made
 * on the spot, or held while a request in the ring names its descriptor. */
static void
end_unissued(struct keel_shard *s, struct keel_file_req *req)
{
	int r = close_check(s, req);

	if (r == CLOSE_HELD)
		hold(s, req);
	else if (r < 0)
		complete(s, req, r);
	else
		complete(s, req, req->kind_ == K_CLOSE ? close_now(s, req) : -ECANCELED);
}

/* The requests stopping took from the FIFO, in order, each once the ring holds none of its
 * kind (every one there made before it): callbacks come in the order requests were made.
 * The hooks' requests are not held behind them: they run to completion, and one made
 * before the stop that the cancel cannot end (in io-wq on a hung device) would hold the
 * hooks' last sync. The last completion of the kind runs this again (pump). */
static void
cancel_waiting(struct keel_shard *s)
{
	while (s->files.cwait) {
		struct keel_file_req *req = s->files.cwait;
		uint32_t busy = req->drain_ ? s->files.inflight_drain
					    : s->files.st.inflight - s->files.inflight_drain;

		if (busy)
			return;
		s->files.cwait = req->next_;
		if (!s->files.cwait)
			s->files.cwait_tail = NULL;
		end_unissued(s, req);
	}
}

/* Issue waiting requests while slots are free; once the runtime stops, those not to be
 * issued move aside (cancel_waiting). */
static void
pump(struct keel_shard *s)
{
	uint32_t qd = qd_of(s);

	/* The stop is held (keel__stop_hold): nothing goes in before its cancel, which would
	 * take a hook's request with it; keel__file_stop_hooks pumps once it is queued. */
	if (s->stop_held) {
		s->files.pump_held = true;
		return;
	}
	while (s->files.head) {
		struct keel_file_req *req = s->files.head;
		bool go = issues(s, req);
		int r;

		if (go && s->files.st.inflight >= qd)
			break;
		s->files.head = req->next_;
		if (!s->files.head)
			s->files.tail = NULL;
		s->files.st.waiting--;
		if (!go) {
			append(&s->files.cwait, &s->files.cwait_tail, req);
			continue;
		}
		/* A close waits for the requests on its descriptor at stop too: they end soon
		 * (cancelled), and held_release then brings it back here. */
		r = close_check(s, req);
		if (r >= 0 && behind_cwait(s, req)) {
			append(&s->files.cwait, &s->files.cwait_tail, req);
			continue;
		}
		if (r == CLOSE_HELD) {
			hold(s, req);
			continue;
		}
		if (r < 0) {
			complete(s, req, r);
			continue;
		}
		r = issue(s, req);
		if (r == -EBUSY) {
			wait_for_sqe(s, req);
			break;
		}
		/* A close that cannot be issued is done here: its handle is already cleared. */
		if (r < 0)
			complete(s, req, req->kind_ == K_CLOSE ? close_now(s, req) : r);
	}
	cancel_waiting(s);
}

void
keel__file_drain_expire(struct keel_shard *s)
{
	s->files.drain_over = true;
	pump(s); /* those waiting in the FIFO are cancelled; the loop cancels the ring's */
}

void
keel__file_retry(struct keel_shard *s)
{
	s->files.nosqe = false;
	pump(s);
}

/* The loop's last phase (PHASE_DONE): a close made there (a foreign request's done, run with
 * -ECANCELED at the shard's end, or a callback final_drain reaps) that found no SQE waits at
 * the FIFO's head, and nothing tries it again: keel__internal_retry runs no more. Its
 * callback never ran, its descriptor stayed open, and the shard freed files.pend with it
 * still linked. pump issues nothing in this phase (issues()): it makes the close on the
 * spot (cancel_waiting), or holds it behind the request in the ring that names its
 * descriptor, whose completion brings it back. A close's callback may make another. */
void
keel__file_settle(struct keel_shard *s)
{
	while (s->files.nosqe)
		keel__file_retry(s);
}

/* The O_DIRECT open's statx stage (issue(), ST_OPEN_STATX) made here, synchronously.
 * Returns 0 or -errno. */
static int
statx_now(struct keel_file_req *req)
{
	int r;

	if (req->sqe_flags_ & OPEN_F_DIRECT_DESC)
		r = statx(req->dirfd_, req->path_, 0, KEEL_STATX_DIO, req->addr_);
	else
		r = statx(req->fd_, "", AT_EMPTY_PATH, KEEL_STATX_DIO, req->addr_);
	return r < 0 ? -errno : 0;
}

/* An open whose statx stage did not happen or failed: the caller never sees the file, so
 * close it here (synchronously: a plain close, or dropping the table slot). */
static void
open_undo(struct keel_shard *s, struct keel_file_req *req)
{
	if (req->fd_ < 0)
		return;
	fd_close_now(s, req->fd_, req->sqe_flags_ & OPEN_F_DIRECT_DESC);
	req->fd_ = -1;
}

static void
file_cb(struct keel_op *op, int res, uint32_t cqe_flags)
{
	struct keel_file_req *req = (struct keel_file_req *)op;
	struct keel_shard *s = keel__cur;

	(void)cqe_flags;
	if (req->kind_ == K_OPEN) {
		if (req->stage_ == ST_FIRST && res >= 0 && (req->oflags_ & O_DIRECT)) {
			/* Second stage: the alignment, before the caller sees the file. */
			req->fd_ = res;
			req->stage_ = ST_OPEN_STATX;
			if (issues(s, req)) {
				int r = issue(s, req);
				if (r == 0)
					return;
				/* No SQE (the ring's submit failed, logged): the same statx on this
				 * thread, a system call on a file just opened, rather than fail the
				 * open (it is live and counted, so it cannot wait in the FIFO). */
				if (r == -EBUSY)
					r = statx_now(req);
				res = r;
			} else
				res = -ECANCELED;
		}
		if (res >= 0 && (req->sqe_flags_ & OPEN_F_DIRECT_DESC)) {
			if (req->stage_ != ST_OPEN_STATX)
				req->fd_ = res;
			if (slot_take(s, req->fd_) < 0) {
				open_undo(s, req);
				res = -ENOMEM;
			}
		}
		if (req->stage_ == ST_OPEN_STATX) {
			if (res < 0) {
				open_undo(s, req);
			} else {
				memset(req->file_, 0, sizeof(*req->file_));
				dio_fill(req->file_, req->addr_);
				req->file_->fd = req->fd_;
				if (req->sqe_flags_ & OPEN_F_DIRECT_DESC) {
					req->file_->flags |= KEEL_FILE_F_FIXED;
					req->file_->ring_ = s->timer_gen;
				}
				res = req->fd_;
			}
		} else if (res >= 0) {
			memset(req->file_, 0, sizeof(*req->file_));
			req->file_->fd = res;
			if (req->sqe_flags_ & OPEN_F_DIRECT_DESC) {
				req->file_->flags |= KEEL_FILE_F_FIXED;
				req->file_->ring_ = s->timer_gen;
			}
		}
	}
	/* A close that io-wq cancelled before a worker ran it (issue: IOSQE_ASYNC; the stop's
	 * cancel, or no worker could be made): its handle is cleared, so it is done here, as
	 * one still waiting would be (pump). */
	if (req->kind_ == K_CLOSE && res == -ECANCELED)
		res = close_now(s, req);
	if (req->lprev_)
		req->lprev_->lnext_ = req->lnext_;
	else
		s->files.live = req->lnext_;
	if (req->lnext_)
		req->lnext_->lprev_ = req->lprev_;
	s->files.st.inflight--;
	s->files.inflight_drain -= req->drain_;
	if (s->files.held)
		held_release(s, req);
	/* Called back before the FIFO moves: at stop, pump completes what waits there (a
	 * close held behind this request, requests made after it) on the spot, and a close's
	 * callback, where a host frees the file's object, must be the file's last event. A
	 * request the callback makes queues behind those that wait (the FIFO is not empty). */
	complete(s, req, res);
	pump(s);
}

void
keel__file_stop_hooks(struct keel_shard *s, bool running)
{
	s->files.hooks = running;
	if (running)
		return;
	if (s->stop_held) {
		/* The hooks have run and their requests wait for the cancel, which the hold
		 * postpones: stop_cancel calls again once it is queued. */
		s->files.pump_held = true;
		return;
	}
	/* The stop's cancel is queued (or nothing was in the ring): what the hooks made goes
	 * in after it, the requests made before the stop that still wait are cancelled. */
	if (!s->files.ndrain && !s->files.pump_held)
		return;
	s->files.pump_held = false;
	if (s->cancel_retry) {
		/* The cancel found no SQE: they wait for it (keel__internal_retry). */
		s->files.nosqe = true;
		s->internal_retry = true;
	} else {
		pump(s);
	}
}

/* Admit a prepared request: issue it now, or queue it behind the ones waiting. On an error
 * the caller's request holds nothing and its callback will not run. */
static int
submit(struct keel_shard *s, struct keel_file_req *req, void *arg)
{
	struct keel_file_stats *st = &s->files.st;
	int r;

	req->op_.fn = file_cb;
	req->arg_ = arg;
	st->qd = qd_of(s);
	s->files.ndrain += req->drain_; /* taken back by a refusal below */
	if (req->kind_ == K_CLOSE) {
		/* Known now, reported when it reaches the FIFO's head or at once (close_check):
		 * once the first close has run, nothing tells the two apart. */
		req->second_ = s->files.closes && close_pending(s, req);
		s->files.closes++; /* taken back by a refusal below */
	}
	if (s->files.head || st->inflight >= st->qd || s->files.hooks || s->stop_held) {
		if (req->kind_ == K_CLOSE)
			pend_add(s, req);
		append(&s->files.head, &s->files.tail, req);
		st->submitted++;
		st->waited++;
		if (++st->waiting > st->waiting_max)
			st->waiting_max = st->waiting;
		return 0;
	}
	r = close_check(s, req);
	if (r < 0) {
		release(req);
		s->files.ndrain -= req->drain_;
		s->files.closes--;
		return refuse(s, r, "close of fd %d refused: a close of it is waiting already",
			      req->fd_);
	}
	/* At stop: the pump that moved them aside, or a completion's, runs them and then it
	 * (cwait is never left non-empty without a request in the ring to pump it). */
	if (behind_cwait(s, req)) {
		st->submitted++;
		pend_add(s, req); /* a close: only a close joins cwait here */
		append(&s->files.cwait, &s->files.cwait_tail, req);
		return 0;
	}
	if (r == CLOSE_HELD) {
		st->submitted++;
		pend_add(s, req);
		hold(s, req);
		return 0;
	}
	r = issue(s, req);
	if (r == -EBUSY) { /* the FIFO is empty: this one waits at its head */
		if (req->kind_ == K_CLOSE)
			pend_add(s, req);
		st->submitted++;
		st->waited++;
		wait_for_sqe(s, req);
		return 0;
	}
	if (r < 0) {
		release(req);
		s->files.ndrain -= req->drain_;
		s->files.closes -= req->kind_ == K_CLOSE;
		return refuse(s, r,
			      "disk %s could not be submitted: its buffer's region could not be "
			      "registered (--feature reg_buffers=on)",
			      kind_name(req->kind_));
	}
	st->submitted++;
	return 0;
}

static int
copy_path(struct keel_shard *s, struct keel_file_req *req, const char *path)
{
	size_t n;

	if (!path)
		return refuse(s, -EINVAL, "disk request without a path");
	n = strlen(path) + 1;
	req->path_ = keel_shard_malloc(n);
	if (!req->path_)
		return refuse(s, -ENOMEM, "no memory to copy a path of %zu bytes", n);
	memcpy(req->path_, path, n);
	return 0;
}

int
keel_file_openat(struct keel_file_req *req, int dirfd, const char *path, int flags, mode_t mode,
		 unsigned kflags, struct keel_file *out, keel_file_fn cb, void *arg)
{
	struct keel_shard *s = cur_shard(__func__);
	int r = begin(s, req, cb, K_OPEN);

	if (r < 0)
		return r;
	if (!out)
		return refuse(s, -EINVAL, "keel_file_openat without a struct keel_file to fill");
	if (kflags & ~KEEL_FILE_OPEN_DIRECT_DESC)
		return refuse(s, -EINVAL, "keel_file_openat: unknown kflags 0x%x", kflags);
	if ((kflags & KEEL_FILE_OPEN_DIRECT_DESC) && (flags & O_CLOEXEC))
		return refuse(
			s, -EINVAL,
			"keel_file_openat: O_CLOEXEC with KEEL_FILE_OPEN_DIRECT_DESC, which the "
			"kernel refuses (a direct descriptor is not in the descriptor table, "
			"so nothing is inherited by exec): drop O_CLOEXEC");
	if ((kflags & KEEL_FILE_OPEN_DIRECT_DESC) && (flags & O_DIRECT) &&
	    (flags & O_TMPFILE) == O_TMPFILE)
		return refuse(s, -EINVAL,
			      "keel_file_openat: O_TMPFILE | O_DIRECT with "
			      "KEEL_FILE_OPEN_DIRECT_DESC: the alignment is read by path, and an "
			      "O_TMPFILE's path is its directory; open a plain descriptor");
	r = copy_path(s, req, path);
	if (r < 0)
		return r;
	if (flags & O_DIRECT) {
		req->addr_ = keel_shard_malloc(sizeof(struct statx));
		if (!req->addr_) {
			release(req);
			return refuse(s, -ENOMEM, "no memory for an O_DIRECT open");
		}
	}
	req->dirfd_ = dirfd;
	req->oflags_ = flags;
	req->mode_ = (uint32_t)mode;
	req->file_ = out;
	if (kflags & KEEL_FILE_OPEN_DIRECT_DESC)
		req->sqe_flags_ = OPEN_F_DIRECT_DESC;
	/* Its slot, from now on: complete() gives it back, a refusal here at once. */
	s->files.direct += !!(kflags & KEEL_FILE_OPEN_DIRECT_DESC);
	r = submit(s, req, arg);
	if (r < 0)
		s->files.direct -= !!(kflags & KEEL_FILE_OPEN_DIRECT_DESC);
	return r;
}

static int
rw(struct keel_file_req *req, const struct keel_file *f, int kind, void *buf, size_t len,
   uint64_t off, keel_file_fn cb, void *arg)
{
	struct keel_shard *s = cur_shard(__func__);
	struct iovec iov = { .iov_base = buf, .iov_len = len };
	int r = begin(s, req, cb, kind);

	if (r < 0 || (r = file_ok(s, f, req)) < 0)
		return r;
	if (!buf && len)
		return refuse(s, -EINVAL, "disk %s without a buffer", kind_name(kind));
	if (len > INT_MAX)
		return refuse(s, -EINVAL, "disk %s of %zu bytes: at most %d per request",
			      kind_name(kind), len, INT_MAX);
	r = check_dio(s, f, kind, &iov, 1, off);
	if (r < 0)
		return r;
	req->addr_ = buf;
	req->len_ = (uint32_t)len;
	req->off_ = off;
	return submit(s, req, arg);
}

int
keel_file_read(struct keel_file_req *req, const struct keel_file *f, void *buf, size_t len,
	       uint64_t off, keel_file_fn cb, void *arg)
{
	return rw(req, f, K_READ, buf, len, off, cb, arg);
}

int
keel_file_write(struct keel_file_req *req, const struct keel_file *f, const void *buf, size_t len,
		uint64_t off, keel_file_fn cb, void *arg)
{
	return rw(req, f, K_WRITE, (void *)buf, len, off, cb, arg);
}

static int
rwv(struct keel_file_req *req, const struct keel_file *f, int kind, const struct iovec *iov,
    unsigned n, uint64_t off, keel_file_fn cb, void *arg)
{
	struct keel_shard *s = cur_shard(__func__);
	int r = begin(s, req, cb, kind);

	if (r < 0 || (r = file_ok(s, f, req)) < 0)
		return r;
	if (!iov || n == 0 || n > IOV_MAX)
		return refuse(s, -EINVAL, "disk %s with %u iovecs: give 1..%d", kind_name(kind),
			      iov ? n : 0, IOV_MAX);
	for (unsigned i = 0, total = 0; i < n; i++) {
		if (iov[i].iov_len > (size_t)INT_MAX - total)
			return refuse(s, -EINVAL,
				      "disk %s of more than %d bytes in %u iovecs: at most %d per "
				      "request",
				      kind_name(kind), INT_MAX, n, INT_MAX);
		total += (unsigned)iov[i].iov_len;
	}
	r = check_dio(s, f, kind, iov, n, off);
	if (r < 0)
		return r;
	req->addr_ = (void *)iov;
	req->len_ = n;
	req->off_ = off;
	return submit(s, req, arg);
}

int
keel_file_readv(struct keel_file_req *req, const struct keel_file *f, const struct iovec *iov,
		unsigned n, uint64_t off, keel_file_fn cb, void *arg)
{
	return rwv(req, f, K_READV, iov, n, off, cb, arg);
}

int
keel_file_writev(struct keel_file_req *req, const struct keel_file *f, const struct iovec *iov,
		 unsigned n, uint64_t off, keel_file_fn cb, void *arg)
{
	return rwv(req, f, K_WRITEV, iov, n, off, cb, arg);
}

static int
rw_slice(struct keel_file_req *req, const struct keel_file *f, int kind,
	 const struct keel_slice *sl, uint64_t off, keel_file_fn cb, void *arg)
{
	struct keel_shard *s = cur_shard(__func__);
	struct iovec iov;
	int r = begin(s, req, cb, kind);

	if (r < 0 || (r = file_ok(s, f, req)) < 0)
		return r;
	if (!sl || !sl->buf)
		return refuse(s, -EINVAL, "disk %s without a slice", kind_name(kind));
	if (sl->len > INT_MAX)
		return refuse(s, -EINVAL, "disk %s of a %u-byte slice: at most %d per request",
			      kind_name(kind), sl->len, INT_MAX);
	iov.iov_base = sl->data;
	iov.iov_len = sl->len;
	r = check_dio(s, f, kind, &iov, 1, off);
	if (r < 0)
		return r;
	/* Our own reference: the kernel may use the bytes until the CQE, whatever the caller
	 * does with its slice meanwhile. */
	keel_slice_get(sl, &req->slice_);
	req->has_slice_ = true;
	req->off_ = off;
	return submit(s, req, arg);
}

int
keel_file_read_slice(struct keel_file_req *req, const struct keel_file *f,
		     const struct keel_slice *sl, uint64_t off, keel_file_fn cb, void *arg)
{
	return rw_slice(req, f, K_READ_SLICE, sl, off, cb, arg);
}

int
keel_file_write_slice(struct keel_file_req *req, const struct keel_file *f,
		      const struct keel_slice *sl, uint64_t off, keel_file_fn cb, void *arg)
{
	return rw_slice(req, f, K_WRITE_SLICE, sl, off, cb, arg);
}

static int
simple(struct keel_file_req *req, const struct keel_file *f, int kind, keel_file_fn cb, void *arg)
{
	struct keel_shard *s = cur_shard(__func__);
	int r = begin(s, req, cb, kind);

	if (r < 0 || (r = file_ok(s, f, req)) < 0)
		return r;
	return submit(s, req, arg);
}

int
keel_file_fsync(struct keel_file_req *req, const struct keel_file *f, keel_file_fn cb, void *arg)
{
	return simple(req, f, K_FSYNC, cb, arg);
}

int
keel_file_fdatasync(struct keel_file_req *req, const struct keel_file *f, keel_file_fn cb,
		    void *arg)
{
	return simple(req, f, K_FDATASYNC, cb, arg);
}

int
keel_file_fallocate(struct keel_file_req *req, const struct keel_file *f, int mode, uint64_t off,
		    uint64_t len, keel_file_fn cb, void *arg)
{
	struct keel_shard *s = cur_shard(__func__);
	int r = begin(s, req, cb, K_FALLOCATE);

	if (r < 0 || (r = file_ok(s, f, req)) < 0)
		return r;
	if (len == 0 || off > INT64_MAX || len > INT64_MAX - off)
		return refuse(s, -EINVAL,
			      "fallocate of %" PRIu64 " bytes at %" PRIu64
			      ": the length must be > 0 and the range inside 2^63",
			      len, off);
	req->oflags_ = mode;
	req->off_ = off;
	req->aux_ = len;
	return submit(s, req, arg);
}

int
keel_file_ftruncate(struct keel_file_req *req, const struct keel_file *f, uint64_t len,
		    keel_file_fn cb, void *arg)
{
	struct keel_shard *s = cur_shard(__func__);
	int r = begin(s, req, cb, K_FTRUNCATE);

	if (r < 0 || (r = file_ok(s, f, req)) < 0)
		return r;
	if (len > INT64_MAX)
		return refuse(s, -EINVAL,
			      "ftruncate to %" PRIu64 " bytes: the length must be inside 2^63",
			      len);
	if (!keel_caps_get()->op_supported[KEEL_IORING_OP_FTRUNCATE])
		return refuse(s, -EOPNOTSUPP,
			      "ftruncate through the ring needs Linux 6.9 (IORING_OP_FTRUNCATE), "
			      "which this kernel does not have");
	req->off_ = len;
	return submit(s, req, arg);
}

int
keel_file_statx(struct keel_file_req *req, int dirfd, const char *path, int flags, unsigned mask,
		struct statx *out, keel_file_fn cb, void *arg)
{
	struct keel_shard *s = cur_shard(__func__);
	int r = begin(s, req, cb, K_STATX);

	if (r < 0)
		return r;
	if (!out)
		return refuse(s, -EINVAL, "keel_file_statx without a struct statx to fill");
	r = copy_path(s, req, path);
	if (r < 0)
		return r;
	req->dirfd_ = dirfd;
	req->oflags_ = flags;
	req->mode_ = mask;
	req->addr_ = out;
	return submit(s, req, arg);
}

int
keel_file_close(struct keel_file_req *req, struct keel_file *f, keel_file_fn cb, void *arg)
{
	struct keel_shard *s = cur_shard(__func__);
	int r = begin(s, req, cb, K_CLOSE);

	if (r < 0 || (r = file_ok(s, f, req)) < 0)
		return r;
	if ((f->flags & KEEL_FILE_F_FIXED) && !slot_held(s, f->fd)) {
		release(req);
		return refuse(s, -EBADF,
			      "close of direct descriptor %d refused: it holds no file opened here "
			      "(closed already, through a copy of this keel_file?)",
			      f->fd);
	}
	r = submit(s, req, arg);
	if (r == 0)
		f->fd = -1;
	return r;
}

const char *
keel_file_last_error(void)
{
	return cur_shard(__func__)->files.last_err;
}

/* Said once per process: a host that polls the counters from its own thread would log
 * at every poll. */
static _Atomic bool stats_off_said;

int
keel_file_stats(const struct keel_shard *sh, struct keel_file_stats *out)
{
	struct keel_shard *s = keel__cur;

	if (!sh || !out)
		return -EINVAL;
	if (sh != s) {
		if (!atomic_exchange(&stats_off_said, true))
			keel_log(
				KEEL_LOG_ERROR, "file",
				"keel_file_stats of shard %u %s: refused (-EINVAL; the counters "
				"are plain fields of that shard, read only there); call it on that "
				"shard, e.g. from a request handed to it with keel_runtime_submit "
				"(said once)",
				sh->id, s ? "on another shard" : "on a thread that is not a shard");
		return -EINVAL;
	}
	s->files.st.qd = qd_of(s);
	s->files.st.direct_slots = s->files.direct;
	*out = s->files.st;
	return 0;
}

uint32_t
keel_file_direct_slots(void)
{
	struct keel_shard *s = keel__cur;

	return s ? s->files.direct : 0;
}
