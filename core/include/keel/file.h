/* SPDX-License-Identifier: MIT */
/*
 * Disk I/O on the shard's ring: open, read, write, readv/writev, fsync/fdatasync, fallocate,
 * statx and close as io_uring operations whose completion is a callback on the shard that
 * submitted them (docs/file.md).
 *
 * Every call takes a caller-owned request (struct keel_file_req, embed it in your own object:
 * nothing is allocated per request) and returns 0 when the request was accepted, in which
 * case its callback runs exactly once, later, from the shard's loop (never inside the call);
 * or -errno, in which case the callback never runs and nothing is held.
 *
 * Each shard admits at most --file-qd disk requests into its ring at once (keel_opts.file_qd,
 * default KEEL_FILE_QD_DEFAULT); the rest wait in a FIFO and are issued, in order, as earlier
 * ones complete. A burst of disk requests thus never fills the SQ nor crowds out the network.
 *
 * Reads and writes of slices (keel_file_read_slice, keel_file_write_slice) use the shard's
 * registered buffers (IORING_OP_READ_FIXED / WRITE_FIXED) when the slice's buffer belongs to
 * this shard's allocator, so a received network slice can be written to disk, and a block
 * read from disk sent on a connection, without a copy. Other memory uses plain READ/WRITE.
 *
 * Files opened with O_DIRECT carry their alignment rules (statx STATX_DIOALIGN, and the
 * device's logical block size): a misaligned request is refused before it is submitted, with
 * -EINVAL and a message (keel_file_last_error(), also logged) naming which of offset, length
 * and buffer address is misaligned.
 */
#ifndef KEEL_FILE_H
#define KEEL_FILE_H

#include <keel/buf.h>
#include <keel/common.h>
#include <keel/op.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

struct iovec;
struct statx;

/** Default per-shard limit on disk requests in the ring (--file-qd). */
#define KEEL_FILE_QD_DEFAULT 64
/* The most --file-qd (keel_opts.file_qd) takes. */
#define KEEL_FILE_QD_MAX 65536

/** keel_file.flags: @fd is a direct descriptor (an index in the ring's file table). */
#define KEEL_FILE_F_FIXED (1u << 0)
/** keel_file.flags: opened with O_DIRECT; requests are checked against the alignment. */
#define KEEL_FILE_F_DIRECT_IO (1u << 1)

/** keel_file_openat() @kflags: install the file as a direct descriptor (see docs/file.md). */
#define KEEL_FILE_OPEN_DIRECT_DESC (1u << 0)

/**
 * An open file of one shard. A plain value: copy it freely on its shard. Filled by
 * keel_file_openat() or keel_file_from_fd(). A plain descriptor's may be used on any shard
 * of the process; a direct descriptor's (KEEL_FILE_F_FIXED) only on the shard that opened
 * it: elsewhere requests are refused with -EXDEV.
 */
struct keel_file {
	int fd;         /* a descriptor, or with KEEL_FILE_F_FIXED an index in the ring's table */
	uint32_t flags; /* KEEL_FILE_F_* */
	/* O_DIRECT only (0 otherwise or when unknown): the alignment requests must keep. */
	uint32_t dio_mem_align;         /* buffer address (statx stx_dio_mem_align) */
	uint32_t dio_offset_align;      /* file offset and length (statx stx_dio_offset_align) */
	uint32_t lbs;                   /* the device's logical block size (sysfs), 0: not found */
	uint32_t ring_;                 /* private: with KEEL_FILE_F_FIXED, whose table @fd is in */
	uint32_t dio_read_offset_align; /* reads' file offset and length where the file system
					   allows less than for writes (statx
					   stx_dio_read_offset_align, Linux 6.14); 0: reads
					   keep dio_offset_align too */
};

struct keel_file_req;

/**
 * Completion of a disk request: @res is what the system call would return (bytes read or
 * written, 0, the new descriptor for an open) or -errno; -ECANCELED when the runtime stopped
 * first. Runs on the submitting shard, from its loop. @req is the caller's again: it may be
 * reused or freed inside the callback.
 */
typedef void (*keel_file_fn)(struct keel_file_req *req, int res, void *arg);

/**
 * A disk request: caller-owned memory, embedded in the caller's object, valid from the call
 * that accepted it until its callback has started. Every field is private.
 */
struct keel_file_req {
	struct keel_op op_; /* private: the ring operation (first: the loop calls op_.fn) */
	struct keel_file_req *next_;
	struct keel_file_req *lprev_, *lnext_; /* the shard's requests in the ring */
	keel_file_fn cb_;
	void *arg_;
	uint8_t kind_, stage_;
	uint8_t sqe_flags_;
	int fd_;
	int oflags_; /* open: flags; fallocate: mode; statx: flags */
	uint32_t len_;
	uint32_t mode_; /* open: mode; statx: mask */
	uint64_t off_;
	uint64_t aux_; /* fallocate: length */
	void *addr_;   /* buffer, iovec array, or struct statx */
	char *path_;   /* open, statx: a copy of the path, freed at completion */
	struct keel_file *file_;
	struct keel_slice slice_; /* a reference held while the kernel may use the bytes */
	bool has_slice_;
	bool drain_;  /* made by a stop hook, or while its requests drain: not cancelled */
	bool second_; /* a close made while a close of its descriptor was not yet issued */
	bool pend_;   /* a close counted in the shard's closes not yet issued (in padding) */
	int dirfd_;
};

/**
 * Open @path relative to @dirfd (AT_FDCWD: the working directory) with open(2) @flags and
 * @mode. On success *out is filled before @cb runs with @res the descriptor (or the direct
 * descriptor's index). With O_DIRECT in @flags, keel then reads the file's alignment (statx
 * STATX_DIOALIGN, and the device's logical block size from sysfs) into *out, in a second
 * ring operation, before @cb runs.
 * @kflags: KEEL_FILE_OPEN_DIRECT_DESC installs the file in the ring's registered file table
 * instead of the process's descriptor table (the table must exist: keel's network layer
 * registers one, or register it with io_uring_register_files_sparse(); -ENFILE in @cb when
 * there is none or it is full). A direct descriptor is invisible to other system calls and threads.
 * Ownership: @path is copied; *out must stay valid until @cb runs, and @dirfd (when not
 * AT_FDCWD) must stay open until then: the request may wait for the ring (--file-qd) and
 * names the descriptor's number when it is issued, so a number closed and reused meanwhile
 * names another directory.
 * Returns: 0 (accepted); -EINVAL (NULL argument, unknown @kflags); -ENOMEM; -ESHUTDOWN once
 * the runtime is stopping. A request that finds no SQE (the ring's submit failed, logged)
 * is accepted and waits at the head of the shard's FIFO, tried again every pass.
 * Context: a shard.
 */
KEEL_API int keel_file_openat(struct keel_file_req *req, int dirfd, const char *path, int flags,
			      mode_t mode, unsigned kflags, struct keel_file *out, keel_file_fn cb,
			      void *arg);

/**
 * Describe an already open descriptor @fd (the caller keeps owning it) as *out. When @fd was
 * opened with O_DIRECT, its alignment is read now (statx and sysfs: system calls on this
 * thread).
 * Returns: 0; -EBADF when @fd is not open; -EINVAL (@out NULL); or statx's -errno for an
 * O_DIRECT descriptor. *out is written only on success.
 * Context: any thread.
 */
KEEL_API int keel_file_from_fd(int fd, struct keel_file *out);

/**
 * Read up to @len bytes at @off of @f into @buf (plain IORING_OP_READ). A short read is not
 * retried: @res says how many bytes came. A read of a pipe or a socket holds one of the
 * shard's --file-qd slots until data comes: as many such reads leave every later request
 * of the shard waiting in the queue (docs/file.md, "Queue depth and the FIFO").
 * Ownership: @buf must stay valid and untouched until @cb runs.
 * Returns: 0; -EINVAL (O_DIRECT misalignment: see keel_file_last_error(); @len over INT_MAX;
 * @off over 2^63 - 1 but for (uint64_t)-1, which reads at the file's position and moves
 * it, as read(2): pipes and other streams; NULL argument);
 * -EBADF (@f->fd is -1); -ESHUTDOWN.
 * Context: a shard.
 */
KEEL_API int keel_file_read(struct keel_file_req *req, const struct keel_file *f, void *buf,
			    size_t len, uint64_t off, keel_file_fn cb, void *arg);

/** As keel_file_read(), writing @len bytes of @buf at @off (a short write is not retried). */
KEEL_API int keel_file_write(struct keel_file_req *req, const struct keel_file *f, const void *buf,
			     size_t len, uint64_t off, keel_file_fn cb, void *arg);

/**
 * Read into @n buffers of @iov at @off (IORING_OP_READV).
 * Ownership: @iov and the memory it points at must stay valid until @cb runs (the request
 * may wait in the shard's FIFO before the kernel sees it).
 * Returns: as keel_file_read(); -EINVAL also for @n 0 or over IOV_MAX.
 * Context: a shard.
 */
KEEL_API int keel_file_readv(struct keel_file_req *req, const struct keel_file *f,
			     const struct iovec *iov, unsigned n, uint64_t off, keel_file_fn cb,
			     void *arg);

/** As keel_file_readv(), writing (IORING_OP_WRITEV). */
KEEL_API int keel_file_writev(struct keel_file_req *req, const struct keel_file *f,
			      const struct iovec *iov, unsigned n, uint64_t off, keel_file_fn cb,
			      void *arg);

/**
 * Read @s->len bytes at @off into @s's bytes: READ_FIXED when @s's buffer is a registered
 * buffer of this shard (keel_buf_fixed()), plain READ otherwise. Use a buffer the app
 * allocated (keel_buf_alloc()), never a received slice (its buffer belongs to a
 * provided-buffer ring).
 * Ownership: @s is borrowed; the request takes its own reference, put before @cb runs (so
 * @cb may reuse @req), which keeps the buffer while the kernel uses it: a write's caller may
 * put @s at once. A read's caller keeps its own reference until @cb, where the bytes read
 * are: put at once, the buffer may be freed, or reused by another allocation, before @cb.
 * Returns: as keel_file_read(); with --feature reg_buffers=on, -ENOMEM when @s's region
 * could not be registered (or that error in @cb when the request waited for room in the
 * ring: it is registered when it is issued).
 * Context: a shard holding @s.
 */
KEEL_API int keel_file_read_slice(struct keel_file_req *req, const struct keel_file *f,
				  const struct keel_slice *s, uint64_t off, keel_file_fn cb,
				  void *arg);

/**
 * Write @s's bytes at @off: WRITE_FIXED for a registered buffer of this shard (a slice
 * received on a connection of this shard, a buffer from keel_buf_alloc()), plain WRITE
 * otherwise (another shard's export, external memory).
 * Ownership, Returns, Context: as keel_file_read_slice().
 */
KEEL_API int keel_file_write_slice(struct keel_file_req *req, const struct keel_file *f,
				   const struct keel_slice *s, uint64_t off, keel_file_fn cb,
				   void *arg);

/**
 * fsync(2) @f through the ring (a directory too: after a rename in it). A failure is reported
 * once per open file and may mean data lost for good, even if a later sync succeeds
 * (docs/file.md, "Durability").
 * Returns: 0, -EINVAL, -ESHUTDOWN, -EBADF (@f closed: fd -1), -EXDEV (a direct descriptor of
 * another shard). Context: a shard.
 */
KEEL_API int keel_file_fsync(struct keel_file_req *req, const struct keel_file *f, keel_file_fn cb,
			     void *arg);

/** fdatasync(2) @f through the ring. As keel_file_fsync(). */
KEEL_API int keel_file_fdatasync(struct keel_file_req *req, const struct keel_file *f,
				 keel_file_fn cb, void *arg);

/**
 * ftruncate(2) @f to @len bytes through the ring (IORING_OP_FTRUNCATE, Linux 6.9), which
 * runs it in io-wq: a truncation that frees a large file's blocks (over 200 ms for 800 MB on
 * ext4) then does not stall the shard. Returns: as keel_file_fsync(), and -EOPNOTSUPP on a
 * kernel without the operation (the reason in keel_file_last_error()). Context: a shard.
 */
KEEL_API int keel_file_ftruncate(struct keel_file_req *req, const struct keel_file *f, uint64_t len,
				 keel_file_fn cb, void *arg);

/**
 * fallocate(2) @len bytes at @off of @f with @mode (0, FALLOC_FL_KEEP_SIZE, ...); -ENOSPC in
 * @cb when the file system is full. Returns: as keel_file_fsync(). Context: a shard.
 */
KEEL_API int keel_file_fallocate(struct keel_file_req *req, const struct keel_file *f, int mode,
				 uint64_t off, uint64_t len, keel_file_fn cb, void *arg);

/**
 * statx(2) @path relative to @dirfd with @flags (AT_EMPTY_PATH with "" and a descriptor in
 * @dirfd: that file) and @mask (STATX_*) into *out.
 * Ownership: @path is copied; *out must stay valid until @cb runs, and @dirfd open (as for
 * keel_file_openat()).
 * Returns: as keel_file_openat(). Context: a shard.
 */
KEEL_API int keel_file_statx(struct keel_file_req *req, int dirfd, const char *path, int flags,
			     unsigned mask, struct statx *out, keel_file_fn cb, void *arg);

/**
 * Close @f (a direct descriptor leaves the ring's table). f->fd is -1 when this returns 0.
 * The close waits until no keel_file request of this shard made before it on the same
 * descriptor is in flight or waiting (keel_file_stats().close_waits counts those that
 * waited): they complete on @f's file, never on another that took the number. It waits as
 * long as they do (a read of an empty pipe: until data comes, or stop). A plain descriptor of
 * a file that no name holds any more (fstat: st_nlink 0) is then closed by an io-wq worker
 * of the shard's thread, so that its slow release (the last close frees its blocks) does not
 * block the shard; @cb may run before that release has finished. Others close inline,
 * but for files of a file system that flushes at close (NFS, FUSE, CIFS), which the kernel
 * itself hands to io-wq.
 * Returns: as keel_file_fsync(), and -EBADF when a close of the same descriptor made before
 * has not been issued yet (it is held, or at stop waits to be cancelled: this is a second
 * close; a close of a number whose close is in the ring waits for it instead: the number
 * may be a new file's), or when @f is a direct descriptor whose slot holds no file that
 * keel_file_openat() put there (closed already through a copy of @f; the close of such a
 * copy that waited in the queue behind the first completes with -EBADF). A close made while
 * requests wait in the queue (or the queue depth is reached, or stop hooks run) returns 0
 * and is queued: a second close (made while a close of its descriptor waited in the queue,
 * was held or waited to be cancelled) is then refused in @cb, with -EBADF, when it reaches
 * the queue's head. Context: a shard.
 */
KEEL_API int keel_file_close(struct keel_file_req *req, struct keel_file *f, keel_file_fn cb,
			     void *arg);

/**
 * Why this shard's last refused request was refused (O_DIRECT alignment, bad arguments):
 * a sentence naming the misaligned values, the alignment and the fix; "" when none was.
 * Context: a shard (the string is the shard's, valid until its next refusal).
 */
KEEL_API const char *keel_file_last_error(void);

/** Disk request counters of one shard. */
struct keel_shard;

struct keel_file_stats {
	uint64_t submitted;    /* accepted by a keel_file_* call */
	uint64_t issued;       /* handed to the ring (once per request, at its first SQE) */
	uint64_t completed;    /* callbacks run */
	uint64_t waited;       /* requests that waited in the FIFO before being issued */
	uint64_t fixed;        /* reads/writes issued as READ_FIXED / WRITE_FIXED */
	uint64_t errors;       /* callbacks run with res < 0 (cancellations included) */
	uint64_t cancelled;    /* callbacks run with -ECANCELED (waiting ones at stop too) */
	uint64_t refused;      /* calls that returned -errno */
	uint64_t close_waits;  /* closes that waited for requests on their descriptor */
	uint32_t inflight;     /* in the ring now */
	uint32_t waiting;      /* in the FIFO now */
	uint32_t inflight_max; /* most in the ring at once: never above qd */
	uint32_t waiting_max;  /* longest the FIFO has been */
	uint32_t qd;           /* the limit (--file-qd) */
	uint32_t closes_held;  /* closes waiting now for requests on their descriptor */
	uint32_t direct_slots; /* keel_file_direct_slots(): direct descriptors held or coming */
};

/**
 * Shard @sh's disk request counters into *out (the stats convention: docs/architecture.md,
 * "Stats").
 * Returns: 0; -EINVAL when @sh is not the calling shard (the counters are plain per-shard
 * fields: an ERROR, once per process, names the fix) or @out is NULL.
 * Context: the shard @sh (keel_this_shard()).
 */
KEEL_API int keel_file_stats(const struct keel_shard *sh, struct keel_file_stats *out);

/**
 * Slots of this shard's registered file table that its keel_files hold: direct descriptors
 * opened with KEEL_FILE_OPEN_DIRECT_DESC and not yet closed (a slot counts until its
 * close's callback), and such opens under way. The table is shared with the network layer's
 * accepted connections (max_files): it counts these before it arms an accept, so that a
 * table they fill leaves new connections in the listen backlog rather than closed.
 * Returns: the count; 0 outside a shard.
 * Context: a shard.
 */
KEEL_API uint32_t keel_file_direct_slots(void);

#ifdef __cplusplus
}
#endif

#endif
