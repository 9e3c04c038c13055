// SPDX-License-Identifier: MIT
/*
 * keel-kv persistence: one append-only file per shard (--dir/appendonly-<shard>.aof).
 *
 * Every write command that ran on a shard appends, for each key it named, the key's new
 * state as one RESP record (SET k v [PXAT ms] or DEL k: kv_db_record), so a file replays
 * in order to the table whatever commands made it, and expiry times are absolute. A
 * transaction's records go between MULTI and EXEC (kv_aof_tx_begin), so that a start that
 * finds the file ending inside one cuts it at its MULTI, as Redis does. FLUSHALL
 * empties the shard's file (truncated before its next write). Records of one loop pass
 * are gathered and written with keel_file writes of at most 1 GiB (from a registered
 * buffer when they fit in one, else from the heap memory they gathered in), one write in
 * flight per shard. Then, per --appendfsync: always: an fdatasync after each write, and
 * the replies of the commands in that batch wait for it (kv_aof_after_sync); everysec: an
 * fdatasync each second when something was written; no: never.
 *
 * BGREWRITEAOF writes a snapshot of the table to a new file, a piece at a time, while
 * batches go on to the old one; then it copies the old file's records written since the
 * rewrite began (its tail) to the new file, and once the copy has caught up it holds the
 * batches (gathered in memory) for the new file's sync, rename and directory sync, and
 * switches (rw_step). So the records of a long rewrite are on the disk as --appendfsync
 * says, and in memory only briefly.
 *
 * Start: the main thread reads every appendonly-N.aof (any N: the shard count may have
 * changed) and cuts a torn tail (or a transaction the file ends inside, at its MULTI)
 * with ftruncate, logged; a bad record with more after it stops the start unless
 * --aof-truncate-corrupt yes (kv_aof_check). Each shard then applies
 * the records of keys it owns under this run's hash (each key's records are all in one
 * file, in order) and writes its table to a .new file; the last shard to finish switches
 * to the new files in one commit (commit_begin, commit_finish: a crash in the middle is
 * completed by the next start). Replies never depend on the old files after that.
 *
 * Every rename in --dir is followed by an fsync of the directory before anything relies on
 * it: without it a crash may leave the name on the old file.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <keel/keel.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kv.h"
#include "testfault.h"

struct waiter {
	struct waiter *next;
	void (*fn)(void *arg, int err);
	void *arg;
};

/* A_TRUNCATING: FLUSHALL's truncation runs (io-wq), kick_ goes on when it ends. */
enum { A_IDLE, A_WRITING, A_SYNCING, A_FAILED, A_TRUNCATING };

struct aof {
	bool open, stopping;
	int fd;
	int stale_fd; /* the file a FLUSHALL at stop replaced, kept open (kv_aof_stop) */
	/* The file in use opened a second time, for the fdatasync at stop: Linux reports a
	 * writeback error once per open file, so one the ring's syncs on fd used up would not
	 * reach a later fdatasync of fd, but does reach this one (opened before it). */
	int chk_fd;
	struct keel_file f;
	uint64_t off;     /* the file's length as written */
	struct rbuf pend; /* records not yet handed to the disk */
	/* A transaction runs (kv_aof_tx_begin): its records go between MULTI and EXEC. tx_in:
	 * its MULTI is in pend, at tx_at (written before its first record, so one that writes
	 * nothing writes no MULTI either). */
	bool tx_open, tx_in;
	size_t tx_at;
	struct waiter *pw, *pwt; /* waiting for the pending records */
	struct waiter *iw;       /* waiting for the batch in flight */
	int st;
	/* The batch in flight: in a registered buffer (sl) when it fits one, else in the heap
	 * memory it was gathered in (heap). Written in pieces of at most aof_chunk bytes. */
	struct keel_slice sl;
	uint8_t *heap;
	uint8_t *heap_busy; /* a heap batch kv_aof_stop wrote itself while a write of it was in
			     * flight: the kernel may read it until on_written, which frees it */
	size_t wlen, wdone;
	bool flush_queued, dirty, reset, bg_sync;
	bool backlog_held;      /* over backlog_max: the shard's connections stop reading */
	bool held_by_others;    /* ... or another shard's was, and held them (held_shards) */
	uint64_t backlog_holds; /* times it got there (INFO aof_backlog_holds) */
	uint64_t backlog_waits; /* times another's held them (INFO aof_backlog_waits) */
	uint64_t replies_held;  /* replies that waited for their sync (always; INFO) */
	int err;                /* the last write error (writes are refused while set) */
	/* A sync failed (its error): the file may lack records it seems to hold, so it is
	 * rebuilt from the table (a rewrite) and writes are refused until then */
	int sync_lost;
	unsigned rebuild_gap;  /* seconds between tries of a failing rebuild: 1, 2 .. 64 */
	uint64_t rebuild_at;   /* keel_now_ns() before which no rebuild starts */
	bool rw_stale;         /* records gathered after the running rewrite's snapshot were
				* lost: its file will not do, another rebuild follows */
	bool rw_reset;         /* a FLUSHALL the running rewrite's snapshot already holds */
	uint64_t bg_sync_file; /* rewrites when the background sync was issued */
	/* The file a rewrite replaced while the background sync of it was in flight: kept open
	 * until that sync ends (on_bg_synced), since the ring names it by number and a
	 * descriptor opened meanwhile (a rebuild's, another shard's) would take the number and
	 * the sync, with the writeback error it reports once per open file. */
	int bg_close_fd;
	struct kv_db *db;
	struct keel_file_req req, sreq;
	struct keel_timer *tick;
	int dir_fd; /* --dir, synced after every rename in it (open when dir_open) */
	bool dir_open;
	struct keel_file dir_f;
	uint64_t sync_errors; /* failed fdatasyncs and directory fsyncs */
	int stop_err;         /* the stop's write or sync failed (kv_aof_stop_failures) */
	/* BGREWRITEAOF: rw_renamed once the new file has the name, rw_ready once the directory
	 * holding the name is synced too (rw_dir_err: its last sync failed, and writes are
	 * refused as for err; rw_dir_busy: a sync in flight) */
	bool rewriting, rw_renamed, rw_ready, rw_dir_busy;
	int rw_dir_err;
	int rw_fd, rw_chk_fd;
	struct keel_file rw_f;
	/* The snapshot, taken a piece at a time while the shard serves (kv_db_snap_step): each
	 * piece of about rw_copy_max bytes is made when the last one is written. rw_piece holds
	 * the piece being written, rw_done bytes of it so far; rw_len counts the snapshot's
	 * bytes in the new file (its whole length once rw_it.done and the last piece is out). */
	struct kv_snap rw_it;
	struct rbuf rw_piece;
	size_t rw_len, rw_done;
	struct keel_file_req rw_req;
	/* While the snapshot is written, batches still go to the old file (durable as
	 * --appendfsync says, and not kept in memory); the records written there after the
	 * snapshot (its tail, from offset rw_from) are then copied to the new file after the
	 * snapshot, rw_copied bytes so far, through rw_buf (rw_got bytes read, rw_put of them
	 * written). Once the copy has caught up, rw_frozen: no batch starts until the switch
	 * (rw_wait: the copy waits for the batch in flight), so the last sync, rename and
	 * directory sync see the whole tail. rw_tail is false for a rewrite that must not take
	 * the old file's tail: a rebuild (the old file was lost) or one begun with a FLUSHALL
	 * pending; its records gather in memory until the switch, as they always did. */
	bool rw_tail, rw_frozen, rw_wait, rw_mid_synced, rw_old_synced;
	bool rw_parked;      /* held by the test gate (kv_test_rewrite_held); the tick goes on */
	uint64_t trunc_file; /* FLUSHALL's truncation in flight: a->rewrites when it began */
	bool sync_parked;    /* a batch's sync held by the test gate (kv_test_sync_held): A_SYNCING
			      * with no request in flight; on_tick looks again */
	/* The batch in flight or failed is the one of rw_begin: its records are in the
	 * snapshot, and older than what followed (a FLUSHALL may have emptied them since), so
	 * once the new file takes over it is dropped, not written after the snapshot. */
	bool rw_old_batch;
	uint64_t rw_gap; /* the tail still to copy at the copy's last read (0: none yet) */
	size_t rw_read;  /* the copy's read size: rw_copy_max, doubled while it falls behind */
	uint64_t rw_synced_to; /* the new file's bytes its last fdatasync covered */
	bool rw_abandon;       /* a FLUSHALL emptied the table: the rewrite ends at its next step */
	uint64_t rw_from, rw_copied;
	uint8_t *rw_buf;
	size_t rw_got, rw_put;
	struct keel_file chk_f; /* chk_fd, for the tail's reads */
	/* The old file opened again when a rewrite with a tail begins: its fdatasync before the
	 * switch sees every writeback error since, whatever other syncs (the batches', the
	 * tick's, chk_fd's at stop) took: Linux reports one to each open file once. */
	int rw_old_fd;
	struct keel_file rw_old_f;
	uint64_t rewrites;
	bool rw_failed; /* the last rewrite failed (aof_last_bgrewrite_status) */
	/* The automatic rewrite (auto_rewrite): the file's length after the last rewrite or
	 * the start (Redis's aof_base_size); rw_auto, the running rewrite is one; a failed
	 * rewrite puts the next automatic one off until auto_at, auto_gap ms after the
	 * failure (doubled for each failure in a row, up to an hour); rw_fails, the failures in
	 * a row (INFO aof_rewrites_consecutive_failures). */
	uint64_t rw_base, auto_at;
	unsigned auto_gap, rw_fails;
	bool rw_auto;
	unsigned id;
	/* What INFO on any shard reads (published by this shard: publish()). */
	_Atomic uint64_t pub_size, pub_rewrites, pub_sync_errors, pub_buffered, pub_holds,
		pub_replies_held, pub_base, pub_rw_fails, pub_waits;
	_Atomic bool pub_rewriting, pub_err, pub_rw_failed;
	_Atomic int pub_errno; /* kv_aof_error's errno, for other shards (kv_aof_error_on) */
};
static struct aof aofs[KEEL_MAX_SHARDS];

/* The files the main thread checked at start: each shard reads them again to replay its
 * keys, a window at a time (load_window). */
struct loaded {
	unsigned idx;
	size_t len; /* its valid records' bytes (what follows was cut or refused) */
};
static struct loaded *loaded;
static unsigned nloaded;
static _Atomic unsigned shards_loaded;
/* The last shard began the switch to this run's files (commit_begin): from then on the
 * .new files are the next start's to finish or undo, not kv_aof_fini's to remove. */
static _Atomic bool commit_started;
/* ... and a shard of this process made its .new file (so this process holds the
 * directory's lock: nothing else's files are touched). */
static _Atomic bool new_made;
/* The switch is done: every shard's file has its plain name. Until then a shard that has
 * loaded writes its appendonly-S.aof.new while appendonly-S.aof is the last run's file, so
 * no rewrite may start (a rewrite renames its file over the plain name): see rebuild(),
 * auto_rewrite() and kv_aof_stop(). */
static _Atomic bool committed;

static struct aof *
me(void)
{
	return &aofs[keel_shard_id(keel_this_shard())];
}

/* Bytes of records gathered and not yet written: pend and the batch in flight
 * (INFO aof_buffer_length, and what backlog_max bounds). */
static size_t
backlog(const struct aof *a)
{
	return a->pend.len + (a->st == A_WRITING || a->st == A_FAILED ? a->wlen - a->wdone : 0);
}

/* The file fails: a write failed (err), a sync did (sync_lost: rebuilt from memory), or the
 * directory's sync after a rewrite's rename (rw_dir_err). Write commands are refused then
 * (-MISCONF), reads go on, and a held backlog lets go. The hold and the always read gate
 * once looked at err alone: the hold outlasted a failed sync, every connection of every
 * shard waiting while the rebuild failed and backed off (up to 64 s a try), and reads
 * waited for records a failing directory sync kept (a review's runs). */
static bool
refusing(const struct aof *a)
{
	return a->err || a->sync_lost || a->rw_dir_err;
}

static void
publish(struct aof *a)
{
	atomic_store_explicit(&a->pub_size, a->off, memory_order_relaxed);
	atomic_store_explicit(&a->pub_rewrites, a->rewrites, memory_order_relaxed);
	atomic_store_explicit(&a->pub_base, a->rw_base, memory_order_relaxed);
	atomic_store_explicit(&a->pub_rw_fails, a->rw_fails, memory_order_relaxed);
	atomic_store_explicit(&a->pub_sync_errors, a->sync_errors, memory_order_relaxed);
	atomic_store_explicit(&a->pub_buffered, backlog(a), memory_order_relaxed);
	atomic_store_explicit(&a->pub_holds, a->backlog_holds, memory_order_relaxed);
	atomic_store_explicit(&a->pub_waits, a->backlog_waits, memory_order_relaxed);
	atomic_store_explicit(&a->pub_replies_held, a->replies_held, memory_order_relaxed);
	atomic_store_explicit(&a->pub_rewriting, a->rewriting, memory_order_relaxed);
	atomic_store_explicit(&a->pub_rw_failed, a->rw_failed, memory_order_relaxed);
	atomic_store_explicit(&a->pub_errno,
			      a->open ? (a->err          ? a->err
					 : a->rw_dir_err ? a->rw_dir_err
							 : a->sync_lost)
				      : 0,
			      memory_order_relaxed);
	atomic_store_explicit(&a->pub_err, refusing(a), memory_order_relaxed);
}

static void
path_of(char *buf, size_t n, unsigned idx, const char *suffix)
{
	snprintf(buf, n, "%s/appendonly-%u.aof%s", kv_cfg.dir, idx, suffix);
}

/* What a person can do about a failed write of the file (@err, its -errno), or "". */
static const char *
write_hint(int err)
{
	return err == -ENOSPC || err == -EDQUOT
		       ? " (the file system of --dir is full, or its quota: free space there)"
	       : err == -EIO   ? " (the disk failed: the kernel's log, dmesg, says more)"
	       : err == -EFBIG ? " (past the file size limit: ulimit -f)"
			       : "";
}

/* The plain system calls that tests make fail (testfault.h; constant in other builds). */
static int
truncate_file(int fd) /* FLUSHALL */
{
	if (kv_test_fault("ftruncate")) {
		errno = EIO;
		return -1;
	}
	return ftruncate(fd, 0);
}

static int
unlink_file(const char *path) /* at start: a file of a shard this run does not have */
{
	if (kv_test_fault("start-unlink")) {
		errno = EIO;
		return -1;
	}
	return unlink(path);
}

static int
fault_rename(const char *site, const char *from, const char *to) /* commit, BGREWRITEAOF */
{
	if (kv_test_fault(site)) {
		errno = EIO;
		return -1;
	}
	return rename(from, to);
}

static int
stop_datasync(int fd)
{
	if (kv_test_fault("stop-sync")) {
		errno = EIO;
		return -1;
	}
	return fdatasync(fd);
}

/* Whether @name is exactly appendonly-<idx>.aof (no ".tmp", no "01"), with *@idx. */
static bool
is_aof_name(const char *name, unsigned *idx)
{
	char exact[64];

	if (sscanf(name, "appendonly-%u.aof", idx) != 1)
		return false;
	snprintf(exact, sizeof(exact), "appendonly-%u.aof", *idx);
	return !strcmp(exact, name);
}

/* Redis's own persistence in a directory: its append-only file, or directory of them
 * (Redis 7), or its snapshot. */
static bool
redis_file(const char *name)
{
	return !strcmp(name, "appendonly.aof") || !strcmp(name, "appendonlydir") ||
	       !strcmp(name, "dump.rdb");
}

/* The most one write asks of the kernel: keel's file writes take at most INT_MAX bytes
 * (2 GiB), and a shard's batch or snapshot may be larger. KEEL_KV_AOF_WRITE_CHUNK=N (bytes,
 * read once at start) makes it smaller, for the tests that check the pieces. */
#define AOF_CHUNK_MAX (1u << 30)
static size_t aof_chunk = AOF_CHUNK_MAX;
/* KEEL_KV_AOF_CHUNK_SHARD=N: the batch writes of shard N alone are cut to aof_chunk, for
 * the test of one slow disk among fast ones (-1: every shard's). */
static int chunk_shard = -1;

/* A rewrite's step (rw_step): the size of a piece of the snapshot, and of the largest read
 * of the old file's tail that it copies: 1 MiB, or KEEL_KV_AOF_COPY_CHUNK=N bytes (read once
 * at start), for the tests of the pieces and the copy. */
static size_t rw_copy_max = 1u << 20;

/* The records a shard has gathered and not yet written (the batch in flight included):
 * past this many bytes its connections stop reading (kv_aof_backlog_full) until the disk
 * has taken it below half, as Redis's clients wait while its write(2) blocks; else a disk
 * slower than the clients let it grow without bound, the writes in it acknowledged
 * (everysec, no) but only in memory. 64 MiB, or KEEL_KV_AOF_BACKLOG=N bytes (read once at
 * start), for the test of it. */
static size_t backlog_max = 64u << 20;

/* A failed rewrite puts the next automatic one off by this much first (doubled for each
 * failure in a row, up to an hour): 60 s, or KEEL_KV_AOF_AUTO_RETRY_MS=N (read once at
 * start), for the test of it. */
static size_t auto_retry_ms = 60000;
#define AUTO_RETRY_MAX_MS 3600000u

/* Shards whose backlog is held. A held shard's records come from every shard's
 * connections (the parts of commands they hand it), so while any is held every shard's
 * connections stop parsing, as all of Redis's clients wait while its write(2) blocks. */
static _Atomic unsigned held_shards;

/* Records were added (the one place the backlog grows): at the bound, hold. Not while the
 * file fails: writes are refused then (-MISCONF), so the backlog does not grow, and reads
 * go on. */
static void
backlog_grew(struct aof *a)
{
	if (a->backlog_held || a->stopping || refusing(a) || backlog(a) < backlog_max)
		return;
	a->backlog_held = true;
	a->backlog_holds++;
	atomic_fetch_add(&held_shards, 1);
	publish(a);
}

bool
kv_aof_backlog_full(void)
{
	struct aof *a = me();

	if (a->backlog_held)
		return true;
	if (!atomic_load_explicit(&held_shards, memory_order_relaxed))
		return false;
	if (!a->held_by_others) {
		a->held_by_others = true; /* resumed by the releasing shard's message, or on_tick */
		a->backlog_waits++;
		publish(a);
	}
	return true;
}

/* On every other shard, from the one whose backlog went below half: its connections held
 * by that backlog read on (those still held by a backlog of their own stay held). */
static void
others_resume(void *arg)
{
	struct aof *a = me();

	(void)arg;
	if (!a->held_by_others || atomic_load(&held_shards))
		return;
	a->held_by_others = false;
	kv_resume_held();
}

static void
backlog_release(struct aof *a)
{
	a->backlog_held = false;
	atomic_fetch_sub(&held_shards, 1);
	kv_resume_held();
	for (unsigned i = 0; i < kv_cfg.nshards; i++)
		if (i != a->id)
			keel_send(i, others_resume, NULL); /* failing that, their on_tick */
}

/* A write went through: below half of backlog_max again, the held connections read on. */
static void
backlog_check(struct aof *a)
{
	if (!a->backlog_held || (backlog(a) > backlog_max / 2 && !a->stopping && !refusing(a)))
		return;
	backlog_release(a);
}

/* The test knob @name, when set, into *@v: @unit (bytes, ms) from 1 to @max. 0, or -EINVAL
 * (said). */
static int
env_num(const char *name, size_t max, const char *unit, const char *what, size_t *v)
{
	const char *s = getenv(name);
	unsigned long long n;
	char *end;

	if (!s)
		return 0;
	n = strtoull(s, &end, 10);
	if (*end || n == 0 || n > max) {
		fprintf(stderr, "keel-kv: %s=%s: expected %s from 1 to %zu (%s; for tests)\n", name,
			s, unit, max, what);
		return -EINVAL;
	}
	*v = (size_t)n;
	return 0;
}

static size_t
piece(size_t left)
{
	return left < aof_chunk ? left : aof_chunk;
}

/* pwrite(2) all of @p[0..@n) at @off (a large write may be short): 0 or -errno. */
static int
pwrite_all(int fd, const uint8_t *p, size_t n, uint64_t off)
{
	while (n) {
		ssize_t w = pwrite(fd, p, piece(n), (off_t)off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return w < 0 ? -errno : -EIO;
		p += w;
		n -= (size_t)w;
		off += (uint64_t)w;
	}
	return 0;
}

/* Start-up. */

/* The bytes a start reads of an append-only file at a time, to check it and to replay it
 * (each shard): 8 MiB, or KEEL_KV_AOF_LOAD_WINDOW=N (read once at start), for the tests
 * that check the windows. A record larger than the window is read in a window of its size
 * by the shard that owns its key; the check reads such a record by its lines. It
 * read each file whole and kept them all until every shard had loaded: a start's memory
 * was the files' size (313 MB of resident memory for a 309 MB file of one key). */
static size_t load_window = 8u << 20;

/* Fill @buf[*@len..@cap) from @fd at @base + *@len, up to @end (the bytes to read): 0 or
 * -errno. */
static int
window_fill(int fd, uint8_t *buf, size_t cap, size_t *len, size_t base, size_t end)
{
	while (*len < cap && base + *len < end) {
		size_t want = cap - *len < end - base - *len ? cap - *len : end - base - *len;
		ssize_t r = pread(fd, buf + *len, want, (off_t)(base + *len));

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno
				     : -EIO; /* shorter than fstat said: changed under us */
		*len += (size_t)r;
	}
	return 0;
}

/* Grow @*buf's @*cap to @want (more than it is), up to @most: 0 or -ENOMEM. */
static int
window_grow_to(uint8_t **buf, size_t *cap, size_t want, size_t most)
{
	size_t n = want > *cap ? want : *cap * 2;
	uint8_t *p;

	if (n > most)
		n = most;
	p = realloc(*buf, n ? n : 1);
	if (!p)
		return -ENOMEM;
	*buf = p;
	*cap = n;
	return 0;
}

/* The number of a RESP line "<@type>digits\r\n" at @p[*@off..@n): true with *@v, and *@off
 * past it. */
static bool
head_num(const uint8_t *p, size_t n, size_t *off, char type, uint64_t *v)
{
	size_t i = *off + 1;
	uint64_t x = 0;

	if (*off >= n || p[*off] != type)
		return false;
	for (; i < n && p[i] >= '0' && p[i] <= '9' && i - *off <= 19; i++)
		x = x * 10 + (uint64_t)(p[i] - '0');
	if (i == *off + 1 || i + 1 >= n || p[i] != '\r' || p[i + 1] != '\n')
		return false;
	*off = i + 2;
	*v = x;
	return true;
}

/* The head of a SET record (SET k v, or SET k v PXAT ms: @*args 3 or 5) at the start of
 * @p[0..@n), up to its value's length: its key, and the offset just past the value's CRLF.
 * 0 when that head is not all in @p[0..@n) or the record is not a SET (a DEL is small). */
static size_t
big_record_head(const uint8_t *p, size_t n, const uint8_t **key, size_t *klen, unsigned *args)
{
	size_t off = 0;
	uint64_t argc, len;

	if (!head_num(p, n, &off, '*', &argc) || (argc != 3 && argc != 5))
		return 0;
	if (!head_num(p, n, &off, '$', &len) || len != 3 || n - off < 5 ||
	    memcmp(p + off, "SET\r\n", 5))
		return 0;
	off += 5;
	if (!head_num(p, n, &off, '$', &len) || len > n - off || n - off - len < 2)
		return 0;
	*key = p + off;
	*klen = (size_t)len;
	off += (size_t)len + 2;
	if (!head_num(p, n, &off, '$', &len) || len > SIZE_MAX / 2)
		return 0;
	*args = (unsigned)argc;
	return off + (size_t)len + 2;
}

/* The bytes of a SET record's "PXAT ms" arguments, which start at @at in @fd (of @end bytes):
 * read and measured there. 0 with *@len, or -EIO when they are not there. */
static int
pxat_tail(int fd, size_t at, size_t end, size_t *len)
{
	uint8_t t[64];
	size_t got = 0, off = 0;
	uint64_t l;
	int r = window_fill(fd, t, sizeof(t), &got, at, end);

	if (r < 0)
		return r;
	if (!head_num(t, got, &off, '$', &l) || l != 4 || got - off < 6 ||
	    memcmp(t + off, "PXAT\r\n", 6))
		return -EIO;
	off += 6;
	if (!head_num(t, got, &off, '$', &l) || l > got - off || got - off - l < 2)
		return -EIO;
	*len = off + (size_t)l + 2;
	return 0;
}

/* A file a crash left half made: a rewrite not yet renamed over its file (".rewrite", at
 * runtime), a start's new file before its commit (".new"; ".tmp" from older versions), an
 * empty file a FLUSHALL at stop had not yet put in place (".flush"), or the stop's rebuild
 * of a file a failed sync lost, not yet renamed (".stop", stop_rebuild). The file with the
 * plain name is the one that counts (each of these is renamed over it once whole, or
 * removed), so these are removed, with a line each (a rewrite's or a stop's rebuild can be
 * as large as the shard's data). */
static void
leftover(unsigned idx, const char *name)
{
	static const char *const tails[] = { ".rewrite", ".new", ".tmp", ".flush", ".stop" };
	char exact[64], path[4096];

	for (size_t i = 0; i < sizeof(tails) / sizeof(tails[0]); i++) {
		snprintf(exact, sizeof(exact), "appendonly-%u.aof%s", idx, tails[i]);
		if (strcmp(name, exact)) /* exactly: no "01", nothing after the tail */
			continue;
		path_of(path, sizeof(path), idx, tails[i]);
		if (unlink(path) == 0)
			fprintf(stderr, "keel-kv: removed %s, left half made by a crash\n", path);
		else
			fprintf(stderr, "keel-kv: %s, left half made by a crash: %s (remove it)\n",
				path, strerror(errno));
		return;
	}
}

static int commit_recover(void);
static int write_all(int fd, const uint8_t *p, size_t n);

/* --aof-truncate-corrupt yes: the bytes of @path (open as @from, @size bytes) from the bad
 * record at @good on are saved to PATH.corrupt-GOOD (a new file, synced, and --dir after it)
 * before the file is cut there, so that nothing is destroyed; copied a window at a time
 * (load_window). Returns 0 or -errno (printed; @path untouched). */
static int
save_corrupt(const char *path, int from, size_t size, size_t good)
{
	size_t cap = load_window < size - good ? load_window : size - good;
	char side[4200];
	int fd, dfd, r = 0;
	uint8_t *buf;

	snprintf(side, sizeof(side), "%s.corrupt-%zu", path, good);
	fd = open(side, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		r = -errno;
		fprintf(stderr,
			"keel-kv: %s: %s; the bytes --aof-truncate-corrupt cuts from %s go there "
			"(move it away); %s is left as it is\n",
			side, strerror(-r), path, path);
		return r;
	}
	buf = malloc(cap ? cap : 1);
	if (!buf)
		r = -ENOMEM;
	for (size_t at = good; r == 0 && at < size;) {
		size_t len = 0;

		r = window_fill(from, buf, cap, &len, at, size);
		if (r == 0)
			r = write_all(fd, buf, len);
		at += len;
	}
	free(buf);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	close(fd);
	if (r == 0) {
		dfd = open(kv_cfg.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0 || fsync(dfd) < 0)
			r = -errno;
		if (dfd >= 0)
			close(dfd);
	}
	if (r < 0) {
		fprintf(stderr, "keel-kv: writing %s: %s; %s is left as it is\n", side,
			strerror(-r), path);
		unlink(side);
	}
	return r;
}

/* The lock on --dir, held for the life of the process (closed at exit). */
static int dir_lock_fd = -1;

/* Take --dir for this process: an exclusive flock on DIR/keel-kv.lock, which holds the pid
 * of its holder. A second keel-kv on the same directory (a mistaken start, or one whose port
 * is taken) removed the running one's rewrite in progress and cut its file at a record it
 * was still writing, before it failed to bind. */
static int
dir_lock(void)
{
	char path[4096], held[32] = "";
	int fd;
	ssize_t n;

	snprintf(path, sizeof(path), "%s/keel-kv.lock", kv_cfg.dir);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		int e = errno;

		fprintf(stderr, "keel-kv: %s: %s (keel-kv locks --dir with it; %s)\n", path,
			strerror(e),
			e == EROFS     ? "the file system is read-only: remount it read-write, or "
					 "give another --dir"
			: e == ENOTDIR ? "--dir names something that is not a directory"
			: e == ENOSPC || e == EDQUOT ? "free some space there"
						     : "fix the directory's permissions");
		return -e;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;

		n = pread(fd, held, sizeof(held) - 1, 0);
		held[n > 0 ? strcspn(held, " \n") : 0] = 0;
		fprintf(stderr,
			"keel-kv: --dir %s is in use%s%s (%s is locked: %s): one keel-kv a "
			"directory; give this one another --dir, or stop the other first\n",
			kv_cfg.dir, held[0] ? " by keel-kv pid " : "", held, path, strerror(e));
		close(fd);
		return e == EWOULDBLOCK ? -EBUSY : -e;
	}
	/* One width, so a shorter pid leaves nothing of a longer one's behind. */
	snprintf(held, sizeof(held), "%-20ld\n", (long)getpid());
	if (pwrite(fd, held, strlen(held), 0) < 0)
		fprintf(stderr, "keel-kv: %s: writing the pid: %s (the lock holds all the same)\n",
			path, strerror(errno));
	dir_lock_fd = fd;
	return 0;
}

/* Whether @p[0..@n), a file's first bytes that are no keel-kv record, are recognisably
 * another program's: a Redis snapshot (an RDB file, or a Redis 7 append-only file's RDB
 * preamble) or one that starts as Redis's append-only files do, with SELECT. Damage to a
 * keel-kv file's first record (zeros a crash left, a bad block), or a record of a newer
 * keel-kv, is neither: the damage message names it. */
static bool
foreign_file(const uint8_t *p, size_t n)
{
	struct resp_arg argv[8] = { { 0 } };
	struct resp_req req = { .argv = argv, .cap = 8, .max_bulk = UINT64_MAX >> 1 };

	if (n >= 5 && !memcmp(p, "REDIS", 5))
		return true;
	return n && p[0] == '*' && resp_parse(p, n, &req) > 0 && req.argc && argv[0].len == 6 &&
	       !strncasecmp((const char *)argv[0].p, "SELECT", 6);
}

/* kv_aof_check_file's reader: the file @ctx (a descriptor). */
static int
read_at(void *ctx, uint64_t off, uint8_t *buf, size_t len)
{
	size_t got = 0;

	return window_fill(*(const int *)ctx, buf, len, &got, (size_t)off, (size_t)off + len);
}

/* Whether the file @fd (@size bytes) is another program's (foreign_file), from its head. */
static int
foreign_head(int fd, size_t size, bool *foreign)
{
	size_t cap = size < RESP_INLINE_MAX ? size : RESP_INLINE_MAX, len = 0;
	uint8_t *buf = malloc(cap ? cap : 1);
	int r;

	if (!buf)
		return -ENOMEM;
	r = window_fill(fd, buf, cap, &len, 0, cap);
	*foreign = r == 0 && foreign_file(buf, len);
	free(buf);
	return r;
}

/* Whether the file @fd (@size bytes) holds a transaction's MULTI at @at: a torn tail that
 * starts with one is the transaction the file ends inside (kv_aof_check). */
static bool
multi_at(int fd, size_t at, size_t size)
{
	static const char m[] = "*1\r\n$5\r\nMULTI\r\n";
	uint8_t b[sizeof(m) - 1];
	size_t got = 0;

	return size - at >= sizeof(b) &&
	       window_fill(fd, b, sizeof(b), &got, at, at + sizeof(b)) == 0 &&
	       !memcmp(b, m, sizeof(b));
}

/* Check the records of @fd (@path) before any shard replays them, a window at a time
 * (kv_aof_check_file: the verdict a check of the whole file gives). A torn record is cut;
 * damage stops the start, or with --aof-truncate-corrupt yes is saved aside and cut.
 * *@valid gets the valid bytes. Returns 0 or -errno (printed). What follows a bad record
 * used to be read whole for the verdict: damage early in a large file failed the start
 * with ENOMEM, --aof-truncate-corrupt yes included, instead of naming the damage. */
static int
check_file(int fd, const char *path, size_t *valid)
{
	struct stat stt;
	size_t size, good;
	enum kv_aof_tail rest;
	bool foreign = false;
	uint64_t g;
	int r;

	if (fstat(fd, &stt) < 0) {
		r = -errno;
		fprintf(stderr, "keel-kv: %s: %s\n", path, strerror(-r));
		return r;
	}
	size = (size_t)stt.st_size;
	r = kv_aof_check_file(read_at, &fd, size, load_window, &rest, &g);
	if (r == 0 && rest == KV_AOF_CORRUPT && !kv_cfg.aof_truncate_corrupt && g == 0)
		r = foreign_head(fd, size, &foreign);
	if (r < 0) {
		fprintf(stderr, "keel-kv: reading %s: %s\n", path, strerror(-r));
		return r;
	}
	good = (size_t)g;
	if (foreign) {
		/* Another program's file under this name, where cutting it (the option below)
		 * would keep nothing. */
		fprintf(stderr,
			"keel-kv: %s: its first record is not one keel-kv writes: it is not a "
			"keel-kv append-only file (Redis's own, renamed? keel-kv does not read "
			"them: send its data to keel-kv as commands, e.g. with redis-cli --pipe); "
			"the file is left as it is: move it out of --dir\n",
			path);
		return -EINVAL;
	}
	if (rest == KV_AOF_UNSURE && !kv_cfg.aof_truncate_corrupt) {
		fprintf(stderr,
			"keel-kv: %s: the record at offset %zu, %zu bytes after it, runs past the "
			"end of the file, and a whole record starts inside it: either damage "
			"inside the file (a damaged length, swallowing the records after it) or "
			"the last record cut short by a crash, whose value holds a record's bytes; "
			"the bytes cannot tell which, so the file is left as it is. Keep a copy of "
			"it, then start with --aof-truncate-corrupt yes to cut it at offset %zu "
			"(the %zu bytes are saved to %s.corrupt-%zu first: if it was damage, the "
			"records after it can be replayed from there), or repair it by hand\n",
			path, good, size - good, good, size - good, path, good);
		return -EINVAL;
	}
	if (rest == KV_AOF_CORRUPT && !kv_cfg.aof_truncate_corrupt) {
		fprintf(stderr,
			"keel-kv: %s: invalid record at offset %zu, %zu bytes after it: not a "
			"record cut short at the end of the file by a crash, but damage inside the "
			"file or a record of a newer keel-kv; the file is left as it is. Keep a "
			"copy of it, then start with --aof-truncate-corrupt yes to cut it at offset "
			"%zu (the %zu bytes are saved to %s.corrupt-%zu first), or repair it by "
			"hand\n",
			path, good, size - good, good, size - good, path, good);
		return -EINVAL;
	}
	if (rest == KV_AOF_CORRUPT || rest == KV_AOF_UNSURE) {
		r = save_corrupt(path, fd, size, good);
		if (r < 0)
			return r;
		fprintf(stderr,
			"keel-kv: %s: %s at offset %zu%s: saved the %zu bytes from there to "
			"%s.corrupt-%zu and cut the file there (--aof-truncate-corrupt yes%s)\n",
			path, rest == KV_AOF_UNSURE ? "the record" : "invalid record", good,
			rest == KV_AOF_UNSURE ? ", damage or a last record cut short" : "",
			size - good, path, good,
			rest == KV_AOF_UNSURE ? "; it runs past the end of the file, a whole "
						"record inside it"
					      : "");
	} else if (rest == KV_AOF_TORN && multi_at(fd, good, size)) {
		/* Redis cuts it the same (its "Revert incomplete MULTI/EXEC transaction") */
		fprintf(stderr,
			"keel-kv: %s: the file ends inside a transaction: its MULTI at offset %zu "
			"and the %zu bytes from there are cut, so none of it is applied (a crash "
			"in the middle of its write leaves it so)\n",
			path, good, size - good);
	} else if (rest == KV_AOF_TORN) {
		fprintf(stderr,
			"keel-kv: %s: torn record at offset %zu: truncating the file there, %zu "
			"bytes dropped (a record cut short at the end of the file, as a crash "
			"mid-write leaves it)\n",
			path, good, size - good);
	}
	if (good < size && (ftruncate(fd, (off_t)good) < 0 || fsync(fd) < 0)) {
		r = -errno;
		fprintf(stderr, "keel-kv: truncating %s: %s\n", path, strerror(-r));
		return r;
	}
	*valid = good;
	return 0;
}

/* --dir, just made: its name is durable only once its parent directory is synced (POSIX;
 * the files' own syncs cover their entries in --dir, not --dir's in its parent), else a
 * crash could take the directory away with every write acknowledged in it. On failure the
 * directory, still empty, is removed, so that the next start makes and syncs it again.
 * Returns 0 or -errno (printed). */
static int
parent_synced(void)
{
	char copy[4096];
	const char *parent;
	int fd, r = 0;

	snprintf(copy, sizeof(copy), "%s", kv_cfg.dir); /* mkdir took it: under PATH_MAX */
	parent = dirname(copy);                         /* "b" and "b/": "." */
	fd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		r = -errno;
	else if (kv_test_fault("dir-parent-sync"))
		r = -EIO;
	else if (fsync(fd) < 0)
		r = -errno;
	if (fd >= 0)
		close(fd);
	if (r < 0) {
		fprintf(stderr,
			"keel-kv: --dir %s: made, but syncing the directory it is in (%s) failed: "
			"%s; removed it again, as a crash could lose it (check that disk, then "
			"start again)\n",
			kv_cfg.dir, parent, strerror(-r));
		rmdir(kv_cfg.dir);
	}
	return r;
}

int
kv_aof_preload(void)
{
	const char *v;
	DIR *d;
	struct dirent *de;
	int r;

	if (!kv_cfg.aof)
		return 0;
	if (env_num("KEEL_KV_AOF_WRITE_CHUNK", (size_t)1 << 30, "bytes",
		    "the append-only file's largest write", &aof_chunk) < 0 ||
	    env_num("KEEL_KV_AOF_COPY_CHUNK", (size_t)1 << 30, "bytes",
		    "a rewrite's snapshot piece and largest read of the old file's tail",
		    &rw_copy_max) < 0 ||
	    env_num("KEEL_KV_AOF_BACKLOG", (size_t)1 << 40, "bytes",
		    "the records gathered before the shard's connections stop reading",
		    &backlog_max) < 0 ||
	    env_num("KEEL_KV_AOF_LOAD_WINDOW", (size_t)1 << 30, "bytes",
		    "the bytes of a file a start reads at a time", &load_window) < 0 ||
	    env_num("KEEL_KV_AOF_AUTO_RETRY_MS", AUTO_RETRY_MAX_MS, "ms",
		    "the wait after a failed rewrite before the next automatic one",
		    &auto_retry_ms) < 0)
		return -EINVAL;
	if ((v = getenv("KEEL_KV_AOF_CHUNK_SHARD"))) {
		char *end;
		unsigned long n = strtoul(v, &end, 10);

		if (!*v || *end || n >= KEEL_MAX_SHARDS) {
			fprintf(stderr,
				"keel-kv: KEEL_KV_AOF_CHUNK_SHARD=%s: expected a shard from 0 "
				"to %u (whose writes KEEL_KV_AOF_WRITE_CHUNK cuts; for tests)\n",
				v, (unsigned)KEEL_MAX_SHARDS - 1);
			return -EINVAL;
		}
		chunk_shard = (int)n;
	}
	if (mkdir(kv_cfg.dir, 0755) == 0) {
		r = parent_synced();
		if (r < 0)
			return r;
	} else if (errno != EEXIST) {
		fprintf(stderr, "keel-kv: --dir %s: %s (create it or name another)\n", kv_cfg.dir,
			strerror(errno));
		return -errno;
	}
	r = dir_lock(); /* before anything in it is read or changed */
	if (r < 0)
		return r;
	r = commit_recover();
	if (r < 0)
		return r;
	d = opendir(kv_cfg.dir);
	if (!d) {
		fprintf(stderr, "keel-kv: --dir %s: %s\n", kv_cfg.dir, strerror(errno));
		return -errno;
	}
	while ((de = readdir(d))) {
		unsigned idx;
		char tail[16] = "", path[4096];
		struct loaded *l;
		int fd, got = sscanf(de->d_name, "appendonly-%u.aof%15s", &idx, tail);

		if (got == 2)
			leftover(idx, de->d_name);
		if (redis_file(de->d_name))
			fprintf(stderr,
				"keel-kv: %s/%s is a Redis file, which keel-kv does not read: its "
				"data is not loaded (keel-kv keeps appendonly-N.aof files; to bring "
				"Redis's data in, send it to keel-kv, e.g. with redis-cli --pipe, "
				"or start keel-kv with another --dir)\n",
				kv_cfg.dir, de->d_name);
		if (got != 1 || !is_aof_name(de->d_name, &idx))
			continue;
		path_of(path, sizeof(path), idx, "");
		fd = open(path, O_RDWR | O_CLOEXEC);
		if (fd < 0) {
			int e = errno;

			if (e == EISDIR)
				fprintf(stderr,
					"keel-kv: %s: it is a directory, not a file: keel-kv keeps "
					"shard %u's data in a file of that name; move it out of "
					"--dir, or start with another --dir\n",
					path, idx);
			else
				fprintf(stderr, "keel-kv: %s: %s (fix its permissions)\n", path,
					strerror(e));
			closedir(d);
			return -e;
		}
		l = realloc(loaded, (nloaded + 1) * sizeof(*l));
		if (!l) {
			close(fd);
			closedir(d);
			return -ENOMEM;
		}
		loaded = l;
		l = &loaded[nloaded];
		l->idx = idx;
		r = check_file(fd, path, &l->len);
		close(fd);
		if (r < 0) {
			closedir(d);
			return r;
		}
		nloaded++;
	}
	closedir(d);
	return 0;
}

static int
write_all(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t r = write(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

/* The start's switch to this run's files, the commit. Each shard writes its table to
 * appendonly-<shard>.aof.new; once all have (each fdatasync'd), the last one commits:
 * appendonly.commit, holding the new file count, is made durable; every .new file is
 * renamed over its name; the files of shards this run does not have are removed; the
 * directory is synced, and the marker removed. A crash before the marker leaves the old
 * files in force (the .new ones are removed at the next start); after it, the next start
 * completes the switch (commit_finish) before it reads anything. Each shard used to rename
 * its own file as soon as it was written: keys change owners between runs, so a shard's old
 * file holds keys another shard owns now, and a crash before that shard's file was in place
 * lost them (found by kv_server::aof_crash_loop_keeps_every_acknowledged_write). */
static void
marker_path(char *buf, size_t n, const char *suffix)
{
	snprintf(buf, n, "%s/appendonly.commit%s", kv_cfg.dir, suffix);
}

/* Write the marker of a switch to @n files (tmp, fsync, rename, directory fsync). *@placed:
 * the rename was made (the marker may be in force even when the sync then failed). Returns 0
 * or -errno. */
static int
commit_begin(int dir_fd, unsigned n, bool *placed)
{
	char tmp[4096], path[4096], line[32];
	int len = snprintf(line, sizeof(line), "%u\n", n), fd, r;

	marker_path(tmp, sizeof(tmp), ".tmp");
	marker_path(path, sizeof(path), "");
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	r = write_all(fd, (const uint8_t *)line, (size_t)len);
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	close(fd);
	if (r == 0 && fault_rename("commit-marker", tmp, path) < 0)
		r = -errno;
	*placed = r == 0;
	if (r == 0 && fsync(dir_fd) < 0)
		r = -errno;
	if (r < 0)
		unlink(tmp);
	return r;
}

/* fsync of --dir; on failure its name goes to @what. */
static int
dir_synced(int dir_fd, char *what, size_t wlen)
{
	int r;

	if (kv_test_fault("commit-dirsync"))
		errno = EIO;
	else if (fsync(dir_fd) == 0)
		return 0;
	r = -errno;
	snprintf(what, wlen, "%s", kv_cfg.dir);
	return r;
}

/* Rename every .new file of shards 0..@n-1 over its name (one already renamed is gone),
 * remove the files of shards @n and up, sync, remove the marker. Returns 0 or -errno, with
 * the file in @what. */
static int
commit_finish(int dir_fd, unsigned n, char *what, size_t wlen)
{
	char from[4096], to[4096];
	struct dirent *de;
	DIR *d;
	int r = 0;

	for (unsigned i = 0; i < n; i++) {
		path_of(from, sizeof(from), i, ".new");
		path_of(to, sizeof(to), i, "");
		if (fault_rename("commit-rename", from, to) < 0 && errno != ENOENT) {
			r = -errno;
			snprintf(what, wlen, "%s", from);
			return r;
		}
	}
	r = dir_synced(dir_fd, what, wlen);
	if (r < 0)
		return r;
	d = opendir(kv_cfg.dir);
	if (!d) {
		r = -errno;
		snprintf(what, wlen, "%s", kv_cfg.dir);
		return r;
	}
	while (r == 0 && (de = readdir(d))) {
		unsigned idx;

		if (!is_aof_name(de->d_name, &idx) || idx < n) /* leftovers: removed at start */
			continue;
		path_of(to, sizeof(to), idx, "");
		if (unlink_file(to) < 0 && errno != ENOENT) {
			r = -errno;
			snprintf(what, wlen, "%s (a shard this run does not have)", to);
		}
	}
	closedir(d);
	if (r == 0)
		r = dir_synced(dir_fd, what, wlen);
	marker_path(to, sizeof(to), "");
	if (r == 0 && unlink(to) < 0 && errno != ENOENT) {
		r = -errno;
		snprintf(what, wlen, "%s", to);
	}
	if (r == 0)
		r = dir_synced(dir_fd, what, wlen);
	return r;
}

/* At start, before reading: a commit a crash cut short is completed; a marker being written
 * when it came (.tmp) is removed (the old files are in force). */
static int
commit_recover(void)
{
	char path[4096], what[4200] = "", line[32] = "";
	unsigned n = 0;
	FILE *f;
	int dfd, r;

	marker_path(path, sizeof(path), ".tmp");
	if (unlink(path) == 0)
		fprintf(stderr, "keel-kv: removed %s, left half made by a crash\n", path);
	marker_path(path, sizeof(path), "");
	f = fopen(path, "re");
	if (!f && errno == ENOENT)
		return 0;
	if (!f) {
		r = -errno;
		fprintf(stderr, "keel-kv: %s: %s\n", path, strerror(-r));
		return r;
	}
	if (!fgets(line, sizeof(line), f) || sscanf(line, "%u", &n) != 1 || n == 0 ||
	    n > KEEL_MAX_SHARDS) {
		fclose(f);
		fprintf(stderr,
			"keel-kv: %s: not a file count ('%.20s'); not written by keel-kv?\n", path,
			line);
		return -EINVAL;
	}
	fclose(f);
	dfd = open(kv_cfg.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		r = -errno;
		fprintf(stderr, "keel-kv: --dir %s: %s\n", kv_cfg.dir, strerror(-r));
		return r;
	}
	r = commit_finish(dfd, n, what, sizeof(what));
	close(dfd);
	if (r < 0) {
		fprintf(stderr,
			"keel-kv: completing the switch to the append-only files of the last start "
			"(%u shards), cut short by a crash: %s: %s\n",
			n, what, strerror(-r));
		return r;
	}
	fprintf(stderr,
		"keel-kv: completed the switch to the append-only files of the last start (%u "
		"shards), cut short by a crash\n",
		n);
	return 0;
}

static void on_tick(struct keel_timer *t, void *arg);
static void auto_failed_log(struct aof *a, int err);
static void kick(struct aof *a);
static void rw_dir_sync(struct aof *a);
static int rw_begin(struct aof *a, bool *wrote);

/* A stop came while the shards load: a SIGINT or SIGTERM, which the runtime blocks on every
 * thread, is read by a shard's loop, and none has begun while every shard loads (it waits
 * pending, seen here), or one that finished its load read it (keel_stop_requested), as
 * for another shard's failure. A large load ignored them (a second signal too) until it
 * ended. Checked at each window of a file replayed and each piece of the start's new file
 * written: the start stops, the files as they were (the new ones are removed). Tests:
 * KEEL_KV_TEST_HOLD_REPLAY=PATH holds the first check until PATH exists (60 s at most). */
static int
load_interrupted(void)
{
	static _Atomic bool held;
	const char *gate = getenv("KEEL_KV_TEST_HOLD_REPLAY");
	sigset_t p;

	if (gate && !atomic_exchange(&held, true)) {
		struct timespec ms = { 0, 1000000 };

		fprintf(stderr, "keel-kv: the load held by the test gate\n");
		for (int i = 0; i < 60000 && access(gate, F_OK) < 0; i++)
			nanosleep(&ms, NULL);
	}
	if (keel_stop_requested() ||
	    (sigpending(&p) == 0 && (sigismember(&p, SIGINT) || sigismember(&p, SIGTERM))))
		return -EINTR;
	return 0;
}

/* Apply the records of file @l whose keys this shard (@self) owns to @db, reading it a
 * window at a time (load_window; a record larger than the window in one of its size):
 * every shard reads every file, as a key's owner may change between runs. @argv / @cap:
 * the parser's argument array, kept from file to file. Returns 0 or -errno. */
static int
replay_file(struct kv_db *db, unsigned self, const struct loaded *l, struct resp_arg **argv,
	    unsigned *cap)
{
	size_t bcap = load_window < l->len ? load_window : (l->len ? l->len : 1);
	size_t blen = 0, base = 0;
	char path[4096];
	uint8_t *buf;
	int fd, r = 0;

	path_of(path, sizeof(path), l->idx, "");
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	buf = malloc(bcap);
	if (!buf) {
		close(fd);
		return -ENOMEM;
	}
	while (r == 0 && base < l->len) {
		size_t off = 0, vend;
		const uint8_t *key;
		size_t klen;
		unsigned args;

		r = load_interrupted();
		if (r == 0)
			r = window_fill(fd, buf, bcap, &blen, base, l->len);
		while (r == 0 && off < blen) {
			struct resp_req req = { .argv = *argv,
						.cap = *cap,
						.max_bulk = UINT64_MAX >> 1 };
			long n;

			while ((n = resp_parse(buf + off, blen - off, &req)) == RESP_NEED_ARGV) {
				/* Only ever grows (parse_grow's rule): a realloc to 0 would
				 * free the array *argv still names. */
				struct resp_arg *g = req.need > *cap && req.need <= INT_MAX
							     ? realloc(*argv, req.need * sizeof(*g))
							     : NULL;
				if (!g) {
					n = -ENOMEM;
					break;
				}
				*argv = g;
				*cap = (unsigned)req.need;
				req.argv = g;
				req.cap = *cap;
			}
			if (n == RESP_MORE)
				break; /* the rest of this record is in the next window */
			if (n < 0) /* the check passed every record: memory, or the file changed */
				r = n == -ENOMEM ? -ENOMEM : -EIO;
			else if (req.argc < 2) /* MULTI, EXEC: the check cut any transaction */
				;              /* the file ends inside, so this one is whole */
			else if (kv_owner_key(req.argv[1].p, req.argv[1].len) == self)
				r = kv_db_apply(db, req.argv, req.argc);
			if (r == 0)
				off += (size_t)n;
		}
		if (r < 0)
			break;
		if (off == 0 && base + blen == l->len) {
			r = -EIO; /* a record the check found whole is not: the file changed */
			break;
		}
		if (off > 0) {
			memmove(buf, buf + off, blen - off);
			base += off;
			blen -= off;
			continue;
		}
		/* A record larger than the window. Another shard's is skipped unread: every
		 * shard reads every file, and each held the whole of a large value (8 shards, 8
		 * copies). This shard's: a window of its size, at once. */
		vend = big_record_head(buf, blen, &key, &klen, &args);
		if (vend && kv_owner_key(key, klen) != self) {
			size_t tail = 0;

			if (args == 5)
				r = pxat_tail(fd, base + vend, l->len, &tail);
			if (r == 0 && base + vend + tail > l->len)
				r = -EIO; /* the check found it whole: the file changed */
			base += vend + tail;
			blen = 0;
			continue;
		}
		r = window_grow_to(&buf, &bcap, vend ? vend + 64 : bcap * 2, l->len - base);
	}
	free(buf);
	close(fd);
	return r;
}

/* Write @db's table to @fd, synchronously, a piece at a time (its copy in memory stays one
 * piece), adding the bytes written to *@off. The start's new file and the stop's rebuild. */
static int
table_write(struct kv_db *db, int fd, uint64_t *off, bool at_start)
{
	struct rbuf snap = { 0 };
	struct kv_snap it;
	int r = 0;

	kv_db_snap_begin(db, &it);
	while (r == 0 && !it.done) {
		if (at_start && (r = load_interrupted()) < 0)
			break;
		snap.len = 0;
		kv_db_snap_step(db, &it, &snap, rw_copy_max);
		r = snap.oom ? -ENOMEM : write_all(fd, snap.p, snap.len);
		*off += r == 0 ? snap.len : 0;
	}
	rb_free(&snap);
	return r;
}

int
kv_aof_shard_start(struct kv_db *db)
{
	unsigned self = keel_shard_id(keel_this_shard());
	struct aof *a = &aofs[self];
	struct resp_arg *argv = NULL;
	unsigned cap = 0;
	char path[4096];
	int r = 0;

	memset(a, 0, sizeof(*a));
	a->fd = -1;
	a->rw_fd = -1;
	a->stale_fd = -1;
	a->bg_close_fd = -1;
	a->chk_fd = -1;
	a->rw_chk_fd = -1;
	a->rw_old_fd = -1;
	a->dir_fd = -1;
	a->id = self;
	a->db = db;
	if (!kv_cfg.aof)
		return 0;
	a->dir_fd = open(kv_cfg.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (a->dir_fd < 0) {
		r = -errno;
		keel_log(KEEL_LOG_ERROR, "kv", "shard %u: opening --dir %s: %s", self, kv_cfg.dir,
			 strerror(-r));
		return r;
	}
	a->dir_open = true;
	keel_file_from_fd(a->dir_fd, &a->dir_f);
	for (unsigned i = 0; i < nloaded && r == 0; i++)
		r = replay_file(db, self, &loaded[i], &argv, &cap);
	free(argv);
	if (r == -EINTR)
		return r; /* a stop signal: on_start says so */
	if (r < 0) {
		keel_log(KEEL_LOG_ERROR, "kv", "shard %u: replaying the append-only files: %s",
			 self, strerror(-r));
		return r;
	}
	/* This run's file, under its .new name until the last shard commits (above): the
	 * table written a piece at a time, so that its copy in memory stays one piece. */
	path_of(path, sizeof(path), self, ".new");
	atomic_store(&new_made, true);
	a->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	a->chk_fd = a->fd < 0 ? -1 : open(path, O_RDONLY | O_CLOEXEC);
	r = a->chk_fd < 0 ? -errno : table_write(db, a->fd, &a->off, true);
	if (r == 0 && fdatasync(a->fd) < 0)
		r = -errno;
	if (r < 0) {
		size_t old = 0;

		for (unsigned i = 0; i < nloaded; i++)
			old += loaded[i].len;
		if (r == -EINTR)
			; /* a stop signal: on_start says so */
		else if (r == -ENOSPC || r == -EDQUOT)
			keel_log(KEEL_LOG_ERROR, "kv",
				 "shard %u: writing %s: %s: a start writes every shard's data to "
				 "new files before it removes the old ones (%zu bytes), so it "
				 "needs up to about as much free in %s; free some, or move the "
				 "files to a larger --dir (the new files are removed)",
				 self, path, strerror(-r), old, kv_cfg.dir);
		else
			keel_log(KEEL_LOG_ERROR, "kv", "shard %u: writing %s: %s", self, path,
				 strerror(-r));
		if (a->fd >= 0)
			close(a->fd);
		if (a->chk_fd >= 0)
			close(a->chk_fd);
		a->fd = a->chk_fd = -1;
		return r;
	}
	keel_file_from_fd(a->fd, &a->f);
	a->open = true;
	a->rw_base = a->off;
	publish(a);
	if (atomic_fetch_add(&shards_loaded, 1) + 1 == kv_cfg.nshards) {
		/* Every shard's new file is written and synced: switch to them. No client is
		 * served before this (main.c starts the listeners after every shard's start). */
		char what[4200] = "";
		bool placed = false;

		atomic_store(&commit_started, true);
		r = commit_begin(a->dir_fd, kv_cfg.nshards, &placed);
		/* No marker: the switch never began, and the new files are kv_aof_fini's to
		 * remove (a full disk fails the marker too). */
		if (!placed)
			atomic_store(&commit_started, false);
		if (r < 0)
			snprintf(what, sizeof(what), "%s/appendonly.commit", kv_cfg.dir);
		else
			r = commit_finish(a->dir_fd, kv_cfg.nshards, what, sizeof(what));
		if (r < 0)
			keel_log(
				KEEL_LOG_ERROR, "kv",
				"switching to this run's append-only files: %s: %s (the next start "
				"completes or undoes it)",
				what, strerror(-r));
		free(loaded);
		loaded = NULL;
		nloaded = 0;
		if (r < 0)
			return r;
		atomic_store(&committed, true);
	}
	r = keel_timer_create(on_tick, a, &a->tick);
	if (r < 0)
		return r;
	keel_timer_start(a->tick, KEEL_S(1), KEEL_S(1));
	return 0;
}

/* Writing. */

static void
waiters_done(struct waiter *w, int err)
{
	while (w) {
		struct waiter *n = w->next;
		w->fn(w->arg, err);
		free(w);
		w = n;
	}
}

static void on_written(struct keel_file_req *req, int res, void *arg);

/* Answer every reply waiting, for the batch in flight and for the records pending behind
 * it, with @err (0: on disk). On a failed write they get the error now (their changes are
 * in memory, their records are kept and written when the disk takes writes again) rather
 * than wait for as long as the failure lasts. The lists are detached first: an answer may
 * add a waiter. */
static void
answer_waiters(struct aof *a, int err)
{
	struct waiter *iw = a->iw, *pw = a->pw;

	a->iw = a->pw = a->pwt = NULL;
	waiters_done(iw, err);
	waiters_done(pw, err);
}

/* The batch in flight is written: release its memory. */
static void
batch_free(struct aof *a)
{
	if (a->sl.buf)
		keel_slice_put(&a->sl);
	memset(&a->sl, 0, sizeof(a->sl)); /* which of the two holds the next batch is read */
	free(a->heap);
	a->heap = NULL;
}

static void
issue_write(struct aof *a)
{
	size_t left = a->wlen - a->wdone;
	size_t lim = chunk_shard < 0 || a->id == (unsigned)chunk_shard ? aof_chunk : AOF_CHUNK_MAX;
	size_t n = left < lim ? left : lim;
	uint64_t off = a->off + a->wdone;
	struct keel_slice sub;
	int r;

	if (a->sl.buf) {
		r = keel_slice_sub(&a->sl, a->wdone, n, &sub);
		if (r == 0) {
			r = keel_file_write_slice(&a->req, &a->f, &sub, off, on_written, a);
			keel_slice_put(&sub);
		}
	} else {
		r = keel_file_write(&a->req, &a->f, a->heap + a->wdone, n, off, on_written, a);
	}
	if (r < 0) {
		/* Said once while the retries (the tick's) fail alike. */
		if (a->st != A_FAILED || a->err != r) {
			char path[PATH_MAX + 32];

			path_of(path, sizeof(path), a->id, "");
			keel_log(KEEL_LOG_ERROR, "kv",
				 "shard %u: %s: the write could not be issued: %s; tried again "
				 "each second, write commands are refused (-MISCONF) until it "
				 "succeeds",
				 a->id, path, strerror(-r));
		}
		a->err = r;
		a->st = A_FAILED; /* retried by the tick */
		publish(a);
		answer_waiters(a, r);
		return;
	}
	a->st = A_WRITING;
}

/* Start the rebuild of a lost file (sync_lost), unless a rewrite runs already (its file
 * will do, unless rw_stale: rw_switch) or the shard stops. Called from kick_ and the tick,
 * never from inside a command; after a try that failed, the next waits 1, 2, 4 .. 64 s.
 * Not before the start's commit (committed): a shard that has loaded runs its tick and
 * expires keys while others still load, but its file is appendonly-S.aof.new until the
 * commit and the plain name is the last run's file; a rebuild then renamed its file over
 * that one (a crash before the commit had lost the last run's keys of other shards), and
 * the commit renamed the .new file over the rebuild's, the file the shard writes to (every
 * later record acknowledged and lost). The tick starts it after the commit. */
static void
rebuild(struct aof *a)
{
	bool wrote = false;
	uint64_t now;
	int r;

	if (!a->sync_lost || a->rewriting || a->stopping || !atomic_load(&committed))
		return;
	now = keel_now_ns();
	if (now < a->rebuild_at)
		return;
	a->rebuild_gap = a->rebuild_gap ? (a->rebuild_gap < 64 ? a->rebuild_gap * 2 : 64) : 1;
	a->rebuild_at = now + (uint64_t)a->rebuild_gap * 1000000000ull;
	r = rw_begin(a, &wrote);
	if (r < 0 && !wrote) /* before any write (rw_fail logs the failures after) */
		keel_log(KEEL_LOG_ERROR, "kv",
			 "shard %u: rebuilding appendonly-%u.aof: %s (tried again in %u s)", a->id,
			 a->id, strerror(-r), a->rebuild_gap);
}

/* The file no longer holds what the table says it does (@what failed with @err): it is
 * rebuilt from the table (a rewrite, as BGREWRITEAOF, started by the next kick_ and tried
 * again with a back-off) and write commands are refused until it is in place. Replies
 * waiting for records wait for the rebuild, whose snapshot holds them (or get the error at
 * once while no rebuild runs: kick_). The caller kicks. */
static void
file_lost(struct aof *a, int err, const char *what)
{
	if (!a->sync_lost)
		keel_log(KEEL_LOG_ERROR, "kv",
			 "shard %u: appendonly-%u.aof: %s: %s; the file is rebuilt from memory, "
			 "write commands are refused (-MISCONF) until then",
			 a->id, a->id, what, strerror(-err));
	a->sync_lost = err;
	/* The old file's tail, which the running rewrite copies, may not hold what it seems
	 * to either: another rebuild follows that rewrite */
	a->rw_stale |= a->rewriting && a->rw_tail;
	publish(a);
	backlog_check(a); /* refused from now on: a held backlog lets go */
}

/* A failed fdatasync: the kernel may have dropped the pages it could not write (marking
 * them clean), so records the file seems to hold may not be on the disk, and a later sync
 * that succeeds says nothing about them; under appendfsync always, the next batch's sync
 * would acknowledge writes that a restart could then cut off at the hole. */
static void
sync_failed(struct aof *a, int err)
{
	a->sync_errors++;
	file_lost(
		a, err,
		"fdatasync failed, so what was written since the last good sync may not be on disk");
}

static void
on_synced(struct keel_file_req *req, int res, void *arg)
{
	struct aof *a = arg;
	struct waiter *w = a->iw;

	if (a->stopping)
		return;
	a->iw = NULL;
	a->st = A_IDLE;
	if (res < 0 && res != -ECANCELED)
		sync_failed(a, res);
	waiters_done(w, res < 0 ? res : 0);
	kick(a);
}

static void
sync_batch(struct aof *a)
{
	int r;

	if (kv_test_sync_held()) { /* the test gate: in flight, looked at again by on_tick */
		if (!a->sync_parked)
			keel_log(KEEL_LOG_INFO, "kv", "shard %u: sync held by the test gate",
				 a->id);
		a->sync_parked = true;
		a->st = A_SYNCING;
		return;
	}
	a->sync_parked = false;
	r = keel_file_fdatasync(&a->req, &a->f, on_synced, a);

	if (r < 0) {
		on_synced(&a->req, r, a);
		return;
	}
	a->st = A_SYNCING;
}

static void
on_written(struct keel_file_req *req, int res, void *arg)
{
	struct aof *a = arg;

	if (a->stopping) { /* kv_aof_stop wrote the batch itself */
		free(a->heap_busy);
		a->heap_busy = NULL;
		return;
	}
	if (res == -ECANCELED) {
		a->st = A_FAILED;
		return;
	}
	if (res <= 0) {
		int e = res < 0 ? res : -EIO;
		if (a->err != e) { /* a new failure: the first, or another error than the last */
			char path[PATH_MAX + 32];

			path_of(path, sizeof(path), a->id, "");
			keel_log(KEEL_LOG_ERROR, "kv",
				 "shard %u: %s: write failed: %s%s; tried again each second, write "
				 "commands are refused (-MISCONF) until it succeeds",
				 a->id, path, strerror(-e), write_hint(e));
		}
		a->err = e;
		a->st = A_FAILED; /* the batch stays; the tick tries it again */
		backlog_check(a); /* writes are refused now: the hold ends, reads go on */
		publish(a);
		answer_waiters(a, e);
		return;
	}
	a->wdone += (size_t)res;
	backlog_check(a);
	if (a->wdone < a->wlen) {
		issue_write(a);
		return;
	}
	if (a->err) {
		keel_log(KEEL_LOG_INFO, "kv", "shard %u: appendonly writes succeed again", a->id);
		a->err = 0;
		publish(a); /* other shards split writes over this one again */
	}
	a->off += a->wlen;
	batch_free(a);
	a->dirty = true;
	if (kv_cfg.fsync == KV_FSYNC_ALWAYS) {
		sync_batch(a);
		return;
	}
	a->st = A_IDLE;
	waiters_done(a->iw, 0);
	a->iw = NULL;
	kick(a);
}

/* A close through the ring, which has io-wq close a file that no name holds, off the shard's
 * thread (keel_file_close): the last descriptor of a file that a rename replaced or an unlink
 * removed frees its blocks as it closes, and the shard stalled on it for over 100 ms after
 * rewriting a file of 500 MB (ext4, measured). A plain close once the shard stops (the ring
 * refuses requests then) or when there is no memory. */
struct closer {
	struct keel_file_req req;
	struct keel_file f;
};

static void
closer_done(struct keel_file_req *req, int res, void *arg)
{
	free(arg);
}

static void
close_off_shard(struct aof *a, int fd)
{
	struct closer *c;

	if (fd < 0)
		return;
	c = a->stopping ? NULL : malloc(sizeof(*c));
	if (c && keel_file_from_fd(fd, &c->f) == 0 &&
	    keel_file_close(&c->req, &c->f, closer_done, c) == 0)
		return;
	free(c);
	close(fd);
}

/* The rewrite is over (switched to, or failed): its state goes. */
static void
rw_clear(struct aof *a)
{
	a->rewriting = a->rw_renamed = a->rw_ready = false;
	a->rw_tail = a->rw_frozen = a->rw_wait = a->rw_mid_synced = a->rw_old_synced = false;
	a->rw_parked = a->rw_abandon = a->rw_old_batch = a->rw_auto = false;
	a->rw_gap = a->rw_synced_to = 0;
	a->rw_read = 0;
	close_off_shard(a, a->rw_old_fd);
	a->rw_old_fd = -1;
	free(a->rw_buf);
	a->rw_buf = NULL;
	a->rw_got = a->rw_put = 0;
	a->rw_from = a->rw_copied = 0;
}

static void
rw_switch(struct aof *a)
{
	if (a->bg_sync && a->bg_sync_file == a->rewrites && a->bg_close_fd < 0)
		a->bg_close_fd = a->fd; /* the background sync's file: closed when it ends */
	else
		close_off_shard(a, a->fd);
	close_off_shard(a, a->chk_fd);
	a->chk_fd = a->rw_chk_fd;
	a->rw_chk_fd = -1;
	a->fd = a->rw_fd;
	a->f = a->rw_f;
	a->off = a->rw_len + a->rw_copied; /* the snapshot, then the old file's tail */
	a->rw_fd = -1;
	rw_clear(a);
	a->rewrites++;
	a->rw_failed = false;
	a->rw_base = a->off;
	a->rw_fails = a->auto_gap = 0;
	a->auto_at = 0;
	a->err = 0; /* a failed batch is written again, to the new file (on_tick) */
	a->rw_reset = false;
	if (a->rw_stale) { /* records after its snapshot were lost: rebuild again, now */
		a->rw_stale = false;
		a->rebuild_at = 0;
		publish(a);
		return;
	}
	if (a->sync_lost) /* the new file holds the whole table, synced */
		keel_log(KEEL_LOG_INFO, "kv", "shard %u: appendonly-%u.aof rebuilt", a->id, a->id);
	a->sync_lost = 0;
	a->rebuild_gap = 0;
	a->rebuild_at = 0;
	publish(a); /* the errors it cleared, for the other shards' writes */
}

/* Start the next batch when none is in flight. */
static void kick_(struct aof *a);
static int rw_step(struct aof *a);

static void
kick(struct aof *a)
{
	kick_(a);
	publish(a);
}

/* FLUSHALL's truncation ended with @res (0, or -errno): the file is empty, or lost (the
 * rebuild writes the empty table). kick goes on either way, and publishes the new length:
 * kick_ did not, and INFO, and the other shards' sum of the files for the automatic
 * rewrite, kept the length before the FLUSHALL until this shard's next write. */
static void
truncated(struct aof *a, int res)
{
	a->st = A_IDLE;
	if (a->rewrites != a->trunc_file) { /* a rewrite's file, which holds the FLUSHALL, took
					     * its place: nothing of it to apply */
		kick(a);
		return;
	}
	if (res < 0) {
		file_lost(a, res, "ftruncate for FLUSHALL failed");
		kick(a); /* starts the rebuild, or its error reaches the waiters */
		return;
	}
	a->reset = false;
	a->off = 0;
	a->rw_base = 0;  /* an empty file: the next automatic rewrite at the minimum size */
	a->dirty = true; /* the truncation is data too: everysec's next sync covers it */
	kick(a);
}

static void
on_truncated(struct keel_file_req *req, int res, void *arg)
{
	struct aof *a = arg;

	(void)req;
	if (a->stopping) /* kv_aof_stop empties the file itself (a new one: stop_fresh_file) */
		return;
	truncated(a, res);
}

/* FLUSHALL: the table is empty, so is its file. Through the ring, which runs it in io-wq:
 * freeing the blocks of a large file on the shard's thread stalled it (215 ms for 800 MB
 * on ext4), FLUSHALL ASYNC too. A kernel without IORING_OP_FTRUNCATE (before 6.9)
 * truncates here, as before, and says so once. */
static void
truncate_start(struct aof *a)
{
	static bool said;
	int r;

	if (kv_test_fault("ftruncate")) {
		truncated(a, -EIO);
		return;
	}
	a->trunc_file = a->rewrites;
	r = keel_file_ftruncate(&a->req, &a->f, 0, on_truncated, a);
	if (r == -EOPNOTSUPP) {
		if (!said)
			keel_log(KEEL_LOG_INFO, "kv",
				 "FLUSHALL truncates the append-only file on the shard's thread: "
				 "%s",
				 keel_file_last_error());
		said = true;
		truncated(a, ftruncate(a->fd, 0) < 0 ? -errno : 0);
		return;
	}
	if (r < 0) {
		truncated(a, r);
		return;
	}
	a->st = A_TRUNCATING;
}

static void
kick_(struct aof *a)
{
	struct keel_alloc *al;

	if (a->st != A_IDLE || !a->open || a->stopping)
		return;
	if (a->rw_ready)
		rw_switch(a);
	if (a->rw_wait || a->rw_parked) { /* the copy waited for the batch just done; or
					   * the test gate held the rewrite: look again */
		a->rw_wait = a->rw_parked = false;
		rw_step(a);
	}
	rebuild(a);                              /* when the file was lost and no rewrite runs */
	if (a->sync_lost && !a->rewriting) {     /* the rebuild could not start: say so now */
		answer_waiters(a, a->sync_lost); /* idle: only pending records wait */
		return;
	}
	/* Records gather until the new file is in place once the rewrite's copy of the tail
	 * has caught up, for a rewrite that takes no tail, and while the old file is lost. */
	if (a->rewriting && (a->rw_frozen || !a->rw_tail || a->sync_lost))
		return;
	/* FLUSHALL: the table is empty, so is its file. When the truncation fails the flushed
	 * records would come back, and reset stays set until a rebuild's snapshot takes it over
	 * (rw_begin; rw_fail gives it back) or the stop truncates: cleared before, it was lost
	 * when the rebuild failed too, and the old file kept the flushed records. */
	if (a->reset) {
		truncate_start(a);
		return;
	}
	if (!a->pend.len) {
		if (a->pw) { /* waiters with nothing written (a refused command) */
			a->iw = a->pw;
			a->pw = a->pwt = NULL;
			sync_batch(a);
		}
		return;
	}
	al = keel_shard_alloc();
	a->wlen = a->pend.len;
	a->wdone = 0;
	if (a->pend.len <= keel_alloc_buf_max(al) && keel_buf_alloc(al, a->pend.len, &a->sl) == 0) {
		memcpy(a->sl.data, a->pend.p, a->pend.len);
		a->pend.len = 0;
		if (a->pend.cap > 1u << 20)
			rb_free(&a->pend);
	} else {
		/* Too large for a registered buffer (or none to be had): write it from the heap
		 * memory it was gathered in, which the batch now owns. Nothing to allocate, so
		 * nothing to fail; any size (the writes go in pieces). */
		memset(&a->sl, 0, sizeof(a->sl));
		a->heap = a->pend.p;
		memset(&a->pend, 0, sizeof(a->pend));
	}
	a->iw = a->pw;
	a->pw = a->pwt = NULL;
	a->rw_old_batch = false;
	issue_write(a);
}

static void
on_flush(void *arg)
{
	struct aof *a = arg;

	a->flush_queued = false;
	kick(a);
}

static void
queue_flush(struct aof *a)
{
	if (!a->flush_queued && keel_defer(on_flush, a) == 0)
		a->flush_queued = true;
}

static void
on_bg_synced(struct keel_file_req *req, int res, void *arg)
{
	struct aof *a = arg;

	a->bg_sync = false;
	close_off_shard(a, a->bg_close_fd);
	a->bg_close_fd = -1;
	/* A sync of a file a rewrite has replaced since (closed by rw_switch, maybe before
	 * the sync was submitted) says nothing about the file in use, which holds it all; nor
	 * does one of a file the stop replaced (stale_fd: its FLUSHALL's or rebuild's). */
	if (res >= 0 || res == -ECANCELED || a->bg_sync_file != a->rewrites || a->stale_fd >= 0)
		return;
	if (a->stopping) {
		/* After kv_aof_stop, which wrote the file and synced it itself: no rebuild
		 * follows (the file_lost line said one would), and the exit status says it. */
		a->sync_errors++;
		keel_log(KEEL_LOG_ERROR, "kv",
			 "shard %u: appendonly-%u.aof: the background fdatasync in flight when the "
			 "stop began failed: %s; what was written since the last good sync may not "
			 "be on disk (the stop's own sync %s), and the stop cannot rebuild it now",
			 a->id, a->id, strerror(-res),
			 a->stop_err ? "failed too" : "reported no error");
		if (!a->stop_err)
			a->stop_err = res;
		return;
	}
	sync_failed(a, res);
	kick(a);
}

/* The files of all shards together: this one's length, and the others' as they last
 * published them (Redis's --auto-aof-rewrite-min-size is of its one file). */
static uint64_t
files_size(const struct aof *a)
{
	uint64_t t = a->off;

	for (unsigned i = 0; i < kv_cfg.nshards; i++)
		if (&aofs[i] != a)
			t += atomic_load_explicit(&aofs[i].pub_size, memory_order_relaxed);
	return t;
}

/* The file has grown by --auto-aof-rewrite-percentage since the last rewrite (or the
 * start), the files together are at least --auto-aof-rewrite-min-size and this one its
 * share of it (the minimum over the shard count): rewrite it, as BGREWRITEAOF would, so
 * that a file of keys written over and over does not grow without bound (Redis's automatic
 * rewrite; the growth per shard, each file against its own size after its last rewrite;
 * the minimum of the whole, as Redis's is of its one file: held per file, S shards' files
 * together reached about S times it before the first rewrite. The share keeps a small
 * file beside large ones from being rewritten each time it doubles from a few bytes).
 * Not while the file fails (a rebuild is that shard's rewrite), nor before auto_at after a
 * failed rewrite, nor before the start's commit (rebuild() says why). */
static void
auto_rewrite(struct aof *a)
{
	uint64_t grown, all;
	bool wrote = false;
	int r;

	if (!kv_cfg.auto_rw_pct || !a->open || !atomic_load(&committed) || a->rewriting ||
	    refusing(a) || a->off <= a->rw_base || a->off < kv_cfg.auto_rw_min / kv_cfg.nshards ||
	    keel_now_ns() < a->auto_at)
		return;
	all = files_size(a);
	if (all < kv_cfg.auto_rw_min)
		return;
	grown = a->off - a->rw_base;
	/* Redis takes a base of 0 as 1: any file of the minimum size then qualifies. */
	if ((double)grown * 100.0 < (double)a->rw_base * (double)kv_cfg.auto_rw_pct)
		return;
	keel_log(KEEL_LOG_INFO, "kv",
		 "shard %u: appendonly-%u.aof is %llu bytes, %llu more than after its last "
		 "rewrite, and the files together %llu: rewriting it "
		 "(--auto-aof-rewrite-percentage %u, --auto-aof-rewrite-min-size %llu)",
		 a->id, a->id, (unsigned long long)a->off, (unsigned long long)grown,
		 (unsigned long long)all, kv_cfg.auto_rw_pct,
		 (unsigned long long)kv_cfg.auto_rw_min);
	a->rw_auto = true;
	r = rw_begin(a, &wrote);
	if (r < 0 && !wrote) { /* before any write (rw_fail logs the failures after) */
		auto_failed_log(a, r);
		a->rw_auto = false;
	}
}

static void
on_tick(struct keel_timer *t, void *arg)
{
	struct aof *a = arg;

	if (a->stopping)
		return;
	backlog_check(a);    /* records dropped with a lost file, say: read on within a second */
	others_resume(NULL); /* a message from the shard that read on again failed */
	if (a->rw_renamed && !a->rw_dir_busy) /* a failed directory sync, again */
		rw_dir_sync(a);
	rebuild(a); /* a lost file whose rebuild could not start or failed, again */
	auto_rewrite(a);
	if (a->rw_parked) { /* held (the test gate, a step of expired keys): look again */
		a->rw_parked = false;
		rw_step(a);
	}
	if (a->sync_parked && a->st == A_SYNCING) /* held by the test gate: look again */
		sync_batch(a);
	/* everysec: what was written is synced, whatever a later batch is doing. Before the
	 * failed-batch branches, which return: a disk that keeps refusing the next batch
	 * (ENOSPC) left the batches acknowledged before it unsynced for as long. */
	if (kv_cfg.fsync == KV_FSYNC_EVERYSEC && a->dirty && !a->bg_sync &&
	    keel_file_fdatasync(&a->sreq, &a->f, on_bg_synced, a) == 0) {
		a->dirty = false;
		a->bg_sync = true;
		a->bg_sync_file = a->rewrites;
	}
	if (a->st == A_FAILED && a->rw_frozen) {
		/* The rewrite's copy of the tail has caught up without this batch: it goes to
		 * the new file once that is in place, rather than to the old one (after the
		 * copy: it would be in neither) for as long as that fails. */
		if (a->rw_wait) {
			a->rw_wait = false;
			rw_step(a);
		} else if (a->rw_ready) {
			bool old = a->rw_old_batch;

			rw_switch(a);
			if (old) { /* in the snapshot */
				batch_free(a);
				a->st = A_IDLE;
				kick(a);
			} else {
				a->wdone = 0;
				issue_write(a);
				publish(a);
			}
		}
		return;
	}
	if (a->st == A_FAILED) { /* try the failed batch again */
		issue_write(a);
		return;
	}
	if (a->st == A_IDLE && (a->pend.len || a->pw)) /* a flush keel_defer could not queue */
		kick(a);
}

/* A record is about to be added to a->pend: the first of a transaction's goes after its
 * MULTI (kv_aof_tx_begin). Without memory for it, pend.oom drops the records (logged). */
static void
tx_mark(struct aof *a)
{
	if (!a->tx_open || a->tx_in)
		return;
	a->tx_in = true;
	a->tx_at = a->pend.len;
	rb_arr(&a->pend, 1);
	rb_bulk(&a->pend, "MULTI", 5);
}

/* Records were added to a->pend (a command's, an expired key's DEL). */
static void
logged(struct aof *a)
{
	if (a->pend.oom) { /* the records gathered are gone: the file lacks them */
		rb_free(&a->pend);
		a->tx_in = false;            /* its MULTI with them: the rebuild writes the table */
		a->rw_stale |= a->rewriting; /* and so will the running rewrite's */
		file_lost(a, -ENOMEM, "no memory for the records to append");
	}
	queue_flush(a); /* kick_ starts the rebuild, outside this command */
	/* Here, where records are added, whichever shard's connection sent them: records
	 * other shards hand it (the parts of their commands) must hold theirs as well. */
	backlog_grew(a);
}

void
kv_aof_log(const struct kv_cmd *c, struct kv_db *db, struct resp_arg *argv, unsigned argc)
{
	struct aof *a = me();

	if (!a->open)
		return;
	if (!strcmp(c->name, "flushall") || !strcmp(c->name, "flushdb")) {
		a->pend.len = 0;
		a->tx_in = false; /* a transaction's records after it get a MULTI of their own */
		a->reset = true;
		/* A rewrite whose file has not taken over: the old file is emptied now and takes
		 * the writes after (kick_); the rewrite, of a table that is gone, ends. */
		if (a->rewriting && a->rw_tail && !a->rw_frozen)
			a->rw_abandon = true;
	} else if (c->route == KV_R_KEY) {
		tx_mark(a);
		kv_db_record(db, &argv[1], &a->pend);
		a->pend.oom |= kv_test_fault("record-oom");
	} else if (c->route == KV_R_KEYS) {
		/* COPY's source is only read: its record would be its value again. */
		unsigned k = c->flags & KV_F_READS_FIRST ? 1 : 0, n = kv_cmd_nkeys(c, argc);
		/* A command of several records (MSET, DEL of several keys, RENAME's DEL and SET)
		 * goes between MULTI and EXEC as a transaction does, so that a file cut between
		 * them brings back none of it (RENAME's DEL alone lost the value). */
		bool own_tx = !a->tx_open && n - k > 1;

		if (own_tx)
			kv_aof_tx_begin();
		tx_mark(a);
		for (; k < n; k++)
			kv_db_record(db, &argv[1 + k * c->key_step], &a->pend);
		a->pend.oom |= kv_test_fault("record-oom");
		if (own_tx) {
			kv_aof_tx_end(); /* its EXEC, then logged() as below */
			return;
		}
	}
	logged(a);
}

void
kv_aof_expired(const uint8_t *key, size_t klen)
{
	struct aof *a = me();

	/* Not while the files are replayed (not open yet: the start's snapshot leaves the key
	 * out), nor after the stop wrote what was pending. */
	if (!a->open || a->stopping)
		return;
	/* While the file fails, writes are refused and the backlog is not held
	 * (backlog_grew), but reads and the sweep still expire keys: their DELs, gathered for a
	 * file that takes nothing, grew past the backlog's bound. There, what is gathered is
	 * dropped and the file is rebuilt from memory once it can be, where none of those keys
	 * is; until then the DELs of more are not gathered either. */
	if (refusing(a) && backlog(a) >= backlog_max) {
		if (a->pend.len || !a->sync_lost) {
			rb_free(&a->pend);
			a->tx_in = false;
			a->rw_stale |= a->rewriting;
			file_lost(
				a, a->err ? a->err : -ENOBUFS,
				"the records of keys that expired while the file failed went past "
				"the backlog's bound");
			queue_flush(a);
		}
		return;
	}
	tx_mark(a);
	rb_arr(&a->pend, 2);
	rb_bulk(&a->pend, "DEL", 3);
	rb_bulk(&a->pend, key, klen);
	logged(a);
}

void
kv_aof_tx_begin(void)
{
	struct aof *a = me();

	a->tx_open = a->open;
	a->tx_in = false;
}

void
kv_aof_tx_end(void)
{
	struct aof *a = me();

	a->tx_open = false;
	if (!a->tx_in)
		return;
	a->tx_in = false;
	rb_arr(&a->pend, 1);
	rb_bulk(&a->pend, "EXEC", 4);
	logged(a); /* no memory for it: the records go, and the table is written instead */
}

const char *
kv_aof_error_on(unsigned shard)
{
	int e = atomic_load_explicit(&aofs[shard].pub_errno, memory_order_relaxed);

	return e ? strerror(-e) : NULL;
}

const char *
kv_aof_error(void)
{
	struct aof *a = me();

	int e = a->err ? a->err : a->rw_dir_err ? a->rw_dir_err : a->sync_lost;

	return a->open && e ? strerror(-e) : NULL;
}

int
kv_aof_after_sync(void (*fn)(void *arg, int err), void *arg)
{
	struct aof *a = me();
	struct waiter *w;

	if (!a->open || a->stopping || kv_cfg.fsync != KV_FSYNC_ALWAYS)
		return -ENOENT;
	w = kv_test_fault("waiter-oom") ? NULL : malloc(sizeof(*w));
	if (!w) /* the reply cannot wait: the caller answers with an error, never +OK */
		return -ENOMEM;
	w->fn = fn;
	w->arg = arg;
	a->replies_held++;
	/* Nothing gathered since the batch in flight: what this shard logged is in it, so its
	 * sync will do (a read's reply, mostly: with a place among the pending waiters it took
	 * a sync of its own after that one). The order of the replies is kept by their
	 * connections, not by this list. Not after a FLUSHALL (reset: its truncation comes
	 * after that sync) or records lost for want of memory (sync_lost: the rebuild writes
	 * them): pend is empty then, but the batch does not hold the change, and the reply
	 * came with the batch's +OK. */
	if (!a->pend.len && !a->reset && !a->sync_lost &&
	    (a->st == A_WRITING || a->st == A_SYNCING)) {
		w->next = a->iw;
		a->iw = w;
		return 0;
	}
	w->next = NULL;
	if (a->pwt)
		a->pwt->next = w;
	else
		a->pw = w;
	a->pwt = w;
	queue_flush(a);
	return 0;
}

bool
kv_aof_unsynced(void)
{
	struct aof *a = me();

	/* Not after a failed write or sync: writes are refused (-MISCONF) until the file is
	 * whole again, and the ones the failure caught were answered with the error, so a
	 * read shows nothing acknowledged; it is answered, as Redis answers reads under
	 * everysec then (under always Redis exits). */
	return a->open && !a->stopping && kv_cfg.fsync == KV_FSYNC_ALWAYS && !refusing(a) &&
	       (a->pend.len || a->st == A_WRITING || a->st == A_SYNCING || a->st == A_TRUNCATING ||
		a->pw);
}

/* BGREWRITEAOF. */

static int rw_step(struct aof *a);

/* A rewrite failed: aof_last_bgrewrite_status, the failures in a row, and the wait before
 * the next automatic one (BGREWRITEAOF is not put off). */
static void
rw_failed_now(struct aof *a)
{
	a->rw_failed = true;
	a->rw_fails++;
	a->auto_gap = !a->auto_gap                           ? (unsigned)auto_retry_ms
		      : a->auto_gap >= AUTO_RETRY_MAX_MS / 2 ? AUTO_RETRY_MAX_MS
							     : a->auto_gap * 2;
	a->auto_at = keel_now_ns() + (uint64_t)a->auto_gap * 1000000ull;
}

static void
auto_failed_log(struct aof *a, int err)
{
	keel_log(KEEL_LOG_ERROR, "kv",
		 "shard %u: the automatic rewrite of appendonly-%u.aof failed: %s (%u in a row; "
		 "the next automatic one in %u s at the earliest, BGREWRITEAOF tries at once)",
		 a->id, a->id, strerror(-err), a->rw_fails, (a->auto_gap + 999) / 1000);
}

/* The rewrite ends without replacing the file: @err failed it, or (0) the shard is
 * stopping, when kv_aof_stop has written the records gathered meanwhile to the old file,
 * which must stay. */
static void
rw_fail(struct aof *a, int err)
{
	char tmp[4096];

	if (err)
		rw_failed_now(a);
	if (err && a->sync_lost)
		keel_log(KEEL_LOG_ERROR, "kv",
			 "shard %u: rebuilding appendonly-%u.aof: %s (tried again in %u s)", a->id,
			 a->id, strerror(-err), a->rebuild_gap);
	else if (err && a->rw_auto)
		auto_failed_log(a, err);
	else if (err)
		keel_log(KEEL_LOG_ERROR, "kv", "shard %u: BGREWRITEAOF failed: %s", a->id,
			 strerror(-err));
	rb_free(&a->rw_piece);
	close_off_shard(a, a->rw_fd);
	close_off_shard(a, a->rw_chk_fd);
	a->rw_fd = a->rw_chk_fd = -1;
	path_of(tmp, sizeof(tmp), a->id, ".rewrite");
	unlink(tmp);
	rw_clear(a);
	a->rw_stale = false;
	a->reset |= a->rw_reset; /* the old file stays: a FLUSHALL it took must still empty it */
	a->rw_reset = false;
	publish(a);
	queue_flush(a); /* a kick on a later pass: this may run inside BGREWRITEAOF */
}

/* The directory is synced after the rename: until then a crash may leave the name on the
 * old file, and records written to the new one would be lost with it. So the switch waits
 * for the sync; a failed one refuses writes (err) and is tried again each second. */
static void
rw_dir_synced(struct keel_file_req *req, int res, void *arg)
{
	struct aof *a = arg;

	a->rw_dir_busy = false;
	if (a->stopping) /* kv_aof_stop switches to the new file and syncs the directory */
		return;
	if (res < 0) {
		if (!a->rw_dir_err)
			keel_log(
				KEEL_LOG_ERROR, "kv",
				"shard %u: fsync of --dir %s after BGREWRITEAOF renamed its new "
				"file: %s; write commands are refused (-MISCONF) until it succeeds "
				"(tried again each second)",
				a->id, kv_cfg.dir, strerror(-res));
		a->sync_errors++;
		a->rw_dir_err = res;
		publish(a);
		answer_waiters(a, res); /* the records gathered wait for the switch */
		backlog_check(a);
		return;
	}
	if (a->rw_dir_err) {
		a->rw_dir_err = 0;
		publish(a);
	}
	a->rw_renamed = false;
	a->rw_ready = true;
	kick(a);
}

static void
rw_dir_sync(struct aof *a)
{
	int r;

	if (kv_test_fault("rewrite-dirsync")) { /* tests: this sync alone, not the batches' */
		rw_dir_synced(&a->rw_req, -EIO, a);
		return;
	}
	r = keel_file_fsync(&a->rw_req, &a->dir_f, rw_dir_synced, a);
	if (r < 0) {
		rw_dir_synced(&a->rw_req, r, a);
		return;
	}
	a->rw_dir_busy = true;
}

/* The new file, synced, takes the name; then the directory is synced (rw_dir_sync). Returns
 * 0, or -errno when the rename failed (rw_fail ran). */
static int
rw_rename(struct aof *a)
{
	char tmp[4096], path[4096];

	path_of(tmp, sizeof(tmp), a->id, ".rewrite");
	path_of(path, sizeof(path), a->id, "");
	if (fault_rename("rewrite-rename", tmp, path) < 0) {
		int e = -errno;

		rw_fail(a, e);
		return e;
	}
	a->rw_renamed = true; /* from here on the name is the new file's */
	rw_dir_sync(a);
	return 0;
}

static void
rw_synced(struct keel_file_req *req, int res, void *arg)
{
	struct aof *a = arg;

	if (a->stopping) /* not over the file kv_aof_stop completed */
		return rw_fail(a, 0);
	if (res < 0) {
		a->sync_errors++;
		return rw_fail(a, res);
	}
	rw_rename(a);
}

/* The end of one of the rewrite's requests before its last sync: @res failed it (0 for a
 * read or write: -EIO), unless the shard stops or a FLUSHALL ended the rewrite (rw_step
 * says so). Returns true when the rewrite goes on. */
static bool
rw_went(struct aof *a, int res)
{
	if (a->stopping) {
		rw_fail(a, 0);
		return false;
	}
	if (res <= 0 && !a->rw_abandon) {
		rw_fail(a, res < 0 ? res : -EIO);
		return false;
	}
	return true;
}

static void
rw_written(struct keel_file_req *req, int res, void *arg)
{
	struct aof *a = arg;

	if (!rw_went(a, res))
		return;
	a->rw_done += res > 0 ? (size_t)res : 0;
	a->rw_len += res > 0 ? (size_t)res : 0;
	rw_step(a);
}

static void
rw_mid_synced(struct keel_file_req *req, int res, void *arg)
{
	struct aof *a = arg;

	if (res < 0 && !a->stopping && !a->rw_abandon)
		a->sync_errors++;
	if (!rw_went(a, res < 0 ? res : 1))
		return;
	a->rw_mid_synced = true;
	a->rw_synced_to = a->rw_len + a->rw_copied; /* nothing is written during a sync */
	a->rw_gap = 0; /* the tail grew while the sync ran: not the copy falling behind */
	rw_step(a);
}

/* The old file's fdatasync before the switch (rw_step): a failure means pages the copy read
 * may not be what was written (the kernel drops what it could not write), so the new file is
 * rebuilt again after the switch (file_lost sets rw_stale). */
static void
rw_old_synced_cb(struct keel_file_req *req, int res, void *arg)
{
	struct aof *a = arg;

	if (a->stopping) {
		rw_fail(a, 0);
		return;
	}
	if (res < 0) /* -ECANCELED too: not known to be on disk */
		sync_failed(a, res);
	a->rw_old_synced = true;
	rw_step(a);
}

static void
rw_tail_read(struct keel_file_req *req, int res, void *arg)
{
	struct aof *a = arg;

	if (!rw_went(a, res))
		return;
	a->rw_got = res > 0 ? (size_t)res : 0;
	a->rw_put = 0;
	rw_step(a);
}

static void
rw_tail_written(struct keel_file_req *req, int res, void *arg)
{
	struct aof *a = arg;

	if (!rw_went(a, res))
		return;
	if (res > 0) {
		a->rw_put += (size_t)res;
		a->rw_copied += (uint64_t)res;
	}
	rw_step(a);
}

/* A long copy syncs the new file each RW_SYNC_EVERY reads (of the size they have then: a sync
 * between every two would hide whether the copy falls behind); the read size grows to at most
 * RW_READ_GROWTH times rw_copy_max while the copy falls behind. */
#define RW_SYNC_EVERY  64
#define RW_READ_GROWTH 64

/* Read the old file's tail at @at (of a->off) into rw_buf. While the tail left does not
 * shrink from one read to the next (the shard writes faster than the copy goes), the reads
 * double, up to RW_READ_GROWTH times rw_copy_max; batches stop once the tail left fits one
 * read of rw_copy_max, or when it still does not shrink at the largest read (it would never
 * catch up): the copy then finishes what is there while they wait. */
static int
rw_read_tail(struct aof *a, uint64_t at)
{
	uint64_t left = a->off - at;
	int r;

	if (!a->rw_read)
		a->rw_read = rw_copy_max;
	if (!a->rw_frozen && a->rw_gap && left >= a->rw_gap) {
		size_t more = a->rw_read * 2;
		uint8_t *b = more <= rw_copy_max * RW_READ_GROWTH ? malloc(more) : NULL;

		if (b) {
			free(a->rw_buf);
			a->rw_buf = b;
			a->rw_read = more;
		} else {
			a->rw_frozen = true;
		}
	}
	if (left <= rw_copy_max) /* not rw_read: what waits is at most one base read */
		a->rw_frozen = true;
	a->rw_gap = left;
	if (!a->rw_buf && !(a->rw_buf = malloc(a->rw_read)))
		return -ENOMEM;
	r = keel_file_from_fd(a->chk_fd, &a->chk_f);
	if (r < 0)
		return r;
	return keel_file_read(&a->rw_req, &a->chk_f, a->rw_buf,
			      piece(left < a->rw_read ? left : a->rw_read), at, rw_tail_read, a);
}

/* The rewrite's next request (none is in flight): the snapshot's next piece, then the old
 * file's tail (read, then written after the snapshot), then, once the copy has caught up
 * and no batch is in flight, the sync that the rename follows (rw_synced). Returns 0, or the
 * error that ended the rewrite (rw_fail ran). */
static int
rw_step(struct aof *a)
{
	uint64_t at = a->rw_from + a->rw_copied; /* the tail's next byte in the old file */
	int r;

	if (a->rw_abandon) { /* never a rebuild: it copies no tail (rw_tail), kv_aof_log */
		if (a->rw_auto)
			keel_log(KEEL_LOG_INFO, "kv",
				 "shard %u: the automatic rewrite of appendonly-%u.aof abandoned: "
				 "FLUSHALL emptied the table it was writing",
				 a->id, a->id);
		else
			keel_log(KEEL_LOG_INFO, "kv",
				 "shard %u: BGREWRITEAOF abandoned: FLUSHALL emptied the table it "
				 "was writing",
				 a->id);
		rw_fail(a, 0);
		return 0;
	}
	if (kv_test_rewrite_held()) {
		a->rw_parked = true; /* on_tick looks again */
		return 0;
	}
	if (!a->rw_it.done || a->rw_done < a->rw_piece.len) {
		if (a->rw_done == a->rw_piece.len) { /* the next piece, of the table as it is now */
			a->rw_piece.len = a->rw_done = 0;
			kv_db_snap_step(a->db, &a->rw_it, &a->rw_piece, rw_copy_max);
			if (a->rw_piece.oom) {
				r = -ENOMEM;
				goto out;
			}
			if (!a->rw_piece.len && !a->rw_it.done) {
				/* Buckets of expired keys only: the next step on a later pass
				 * (kick_), as for the test gate, or the tick's. */
				a->rw_parked = true;
				queue_flush(a);
				return 0;
			}
		}
		if (a->rw_done < a->rw_piece.len) {
			r = keel_file_write(&a->rw_req, &a->rw_f, a->rw_piece.p + a->rw_done,
					    piece(a->rw_piece.len - a->rw_done), a->rw_len,
					    rw_written, a);
			goto out;
		}
	}
	rb_free(&a->rw_piece);
	if (!a->rw_mid_synced) {
		/* The snapshot to the disk first, whatever the tail: the sync while batches wait
		 * is then of the tail's last pieces only (none when nothing was copied). */
		r = keel_file_fdatasync(&a->rw_req, &a->rw_f, rw_mid_synced, a);
	} else if (a->rw_put < a->rw_got) {
		r = keel_file_write(&a->rw_req, &a->rw_f, a->rw_buf + a->rw_put,
				    a->rw_got - a->rw_put, a->rw_len + a->rw_copied,
				    rw_tail_written, a);
	} else if (a->rw_tail && at < a->off && !a->rw_frozen &&
		   a->rw_len + a->rw_copied - a->rw_synced_to >=
			   RW_SYNC_EVERY * (a->rw_read ? a->rw_read : rw_copy_max)) {
		/* A long copy syncs as it goes, so that the last sync stays short. */
		r = keel_file_fdatasync(&a->rw_req, &a->rw_f, rw_mid_synced, a);
	} else if (a->rw_tail && at < a->off) {
		r = rw_read_tail(a, at);
	} else if (a->st == A_WRITING || a->st == A_TRUNCATING) {
		/* Caught up, with a batch (or FLUSHALL's truncation) in flight: no other starts,
		 * and its end (kick_) brings the copy back for it; the switch must not close the
		 * file under it. */
		a->rw_frozen = a->rw_wait = true;
		return 0;
	} else if (a->rw_tail && a->rw_copied && kv_cfg.fsync != KV_FSYNC_ALWAYS &&
		   !a->rw_old_synced) {
		/* Caught up, nothing in flight that the old file would take after the copy: no
		 * batch starts until the switch (a failed one goes to the new file then:
		 * on_tick). The copy read the old file's pages, which the kernel may have failed
		 * to write and dropped since the last sync (under always every batch was
		 * synced): a sync through rw_old_fd, which sees any writeback error since the
		 * rewrite began, says whether they were what was written. */
		a->rw_frozen = true;
		r = keel_file_from_fd(a->rw_old_fd, &a->rw_old_f);
		if (r == 0)
			r = keel_file_fdatasync(&a->rw_req, &a->rw_old_f, rw_old_synced_cb, a);
	} else {
		a->rw_frozen = true;
		free(a->rw_buf);
		a->rw_buf = NULL;
		if (a->rw_len + a->rw_copied == a->rw_synced_to)
			return rw_rename(a); /* all synced already */
		r = keel_file_fdatasync(&a->rw_req, &a->rw_f, rw_synced, a);
	}
out:
	if (r < 0)
		rw_fail(a, r);
	return r < 0 ? r : 0;
}

/* Start a rewrite: the table goes to a new file, a piece at a time (rw_step), each piece
 * as the table is when it is made. Every change from now on is in the records that follow
 * (the old file's tail, or those gathered in memory), which go to the new file after the
 * snapshot; records still pending or in flight now are in the snapshot too. Applying a
 * record over a state that has it already gives the same state. Returns 0 or -errno;
 * *@wrote tells whether the failure came from the writing (rw_fail ran and logged it). */
static int
rw_begin(struct aof *a, bool *wrote)
{
	char tmp[4096];
	int r;

	path_of(tmp, sizeof(tmp), a->id, ".rewrite");
	a->rw_fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	a->rw_chk_fd = a->rw_fd < 0 ? -1 : open(tmp, O_RDONLY | O_CLOEXEC);
	if (a->rw_chk_fd < 0) {
		r = -errno;
		if (a->rw_fd >= 0)
			close(a->rw_fd);
		a->rw_fd = -1;
		rw_failed_now(a); /* as Redis's a fork that failed */
		publish(a);
		return r;
	}
	keel_file_from_fd(a->rw_fd, &a->rw_f);
	kv_db_snap_begin(a->db, &a->rw_it);
	a->rw_len = a->rw_done = 0;
	a->rw_piece.len = 0;
	a->rewriting = true;
	/* The old file's tail starts after the records gathered so far (in the snapshot too),
	 * pending or in flight: where the file will end once they are written. */
	a->rw_tail = !a->sync_lost && !a->reset;
	if (a->rw_tail) { /* without it the tail cannot be checked: records gather instead */
		char path[4096];

		path_of(path, sizeof(path), a->id, "");
		if (kv_test_fault("rewrite-tail-open")) {
			a->rw_old_fd = -1;
			errno = EMFILE;
		} else {
			a->rw_old_fd = open(path, O_RDONLY | O_CLOEXEC);
		}
		a->rw_tail = a->rw_old_fd >= 0;
		if (!a->rw_tail) /* the rewrite goes on, differently: said as the shard's */
			keel_log(
				KEEL_LOG_WARN, "kv",
				"shard %u: the rewrite cannot read %s to copy its tail (%s): the "
				"records written meanwhile are held in memory until it switches files "
				"(up to the backlog's 64 MiB, past which the shards stop reading), and "
				"with appendfsync always their replies wait for it",
				a->id, path, strerror(errno));
	}
	a->rw_old_batch = a->st == A_WRITING || a->st == A_FAILED;
	/* Begun inside a transaction (BGREWRITEAOF queued in MULTI, --shards 1): the tail
	 * starts at its MULTI, which would otherwise be cut off from its EXEC (its records
	 * before the rewrite are in the snapshot as well: applied twice, the same table). */
	a->rw_from = a->off + (a->rw_old_batch ? a->wlen : 0) + (a->tx_in ? a->tx_at : a->pend.len);
	a->rw_copied = 0;
	a->rw_gap = 0;
	/* A FLUSHALL not yet applied to the file is in the snapshot: the new file must not be
	 * emptied after the switch (rw_fail gives it back to the old file). */
	a->rw_reset = a->reset;
	a->reset = false;
	publish(a);
	*wrote = true;
	return rw_step(a);
}

void
kv_aof_cmd_bgrewrite(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	struct aof *a = me();
	bool wrote = false;
	int r;

	if (!a->open) {
		rb_err(out, "ERR appendonly is off: start keel-kv with --appendonly yes");
		return;
	}
	if (a->rewriting) {
		rb_err(out, KV_AOF_REWRITE_BUSY);
		return;
	}
	r = rw_begin(a, &wrote);
	if (r < 0)
		rb_err(out, "ERR Can't rewrite append only file in background: %s",
		       r == -ENOMEM ? "out of memory" : strerror(-r));
	else
		rb_simple(out, "Background append only file rewriting started");
}

void
kv_aof_info(struct rbuf *out)
{
	char line[768];
	uint64_t size = 0, rewrites = 0, sync_errors = 0, buffered = 0, holds = 0, held = 0;
	uint64_t waits = 0;
	uint64_t base = 0, fails = 0;
	bool rw = false, err = false, rw_failed = false;
	int n;

	for (unsigned i = 0; i < kv_cfg.nshards; i++) {
		size += atomic_load_explicit(&aofs[i].pub_size, memory_order_relaxed);
		rewrites += atomic_load_explicit(&aofs[i].pub_rewrites, memory_order_relaxed);
		base += atomic_load_explicit(&aofs[i].pub_base, memory_order_relaxed);
		/* the shard with the most: a count in a row does not add up over shards */
		uint64_t f = atomic_load_explicit(&aofs[i].pub_rw_fails, memory_order_relaxed);
		fails = f > fails ? f : fails;
		rw |= atomic_load_explicit(&aofs[i].pub_rewriting, memory_order_relaxed);
		err |= atomic_load_explicit(&aofs[i].pub_err, memory_order_relaxed);
		rw_failed |= atomic_load_explicit(&aofs[i].pub_rw_failed, memory_order_relaxed);
		sync_errors += atomic_load_explicit(&aofs[i].pub_sync_errors, memory_order_relaxed);
		buffered += atomic_load_explicit(&aofs[i].pub_buffered, memory_order_relaxed);
		holds += atomic_load_explicit(&aofs[i].pub_holds, memory_order_relaxed);
		waits += atomic_load_explicit(&aofs[i].pub_waits, memory_order_relaxed);
		held += atomic_load_explicit(&aofs[i].pub_replies_held, memory_order_relaxed);
	}
	n = snprintf(line, sizeof(line),
		     "# Persistence\r\nloading:0\r\naof_enabled:%d\r\n"
		     "aof_rewrite_in_progress:%d\r\naof_last_bgrewrite_status:%s\r\n"
		     "aof_rewrites:%llu\r\naof_rewrites_consecutive_failures:%llu\r\n"
		     "aof_current_size:%llu\r\naof_base_size:%llu\r\naof_buffer_length:%llu\r\n"
		     "aof_last_write_status:%s\r\naof_sync_errors:%llu\r\n"
		     "aof_backlog_holds:%llu\r\naof_backlog_waits:%llu\r\n"
		     "aof_replies_held:%llu\r\n\r\n",
		     kv_cfg.aof, rw, rw_failed ? "err" : "ok", (unsigned long long)rewrites,
		     (unsigned long long)fails, (unsigned long long)size, (unsigned long long)base,
		     (unsigned long long)buffered, err ? "err" : "ok",
		     (unsigned long long)sync_errors, (unsigned long long)holds,
		     (unsigned long long)waits, (unsigned long long)held);
	rb_put(out, line, (size_t)n);
}

/* FLUSHALL at stop while a write is in flight: that write (of records FLUSHALL dropped)
 * may still land, so the file is not truncated in place, where it would land inside the
 * records written after it; a new, empty file takes the name, and the old one, which
 * nothing names any more, stays open until the end (a write still queued names its
 * descriptor). Returns 0 (*@renamed: the new file took the name, and the directory wants
 * a sync) or -errno (the file could not be emptied either way). */
static int
stop_fresh_file(struct aof *a, bool *renamed)
{
	char tmp[4096], path[4096];
	int fd;

	path_of(tmp, sizeof(tmp), a->id, ".flush");
	path_of(path, sizeof(path), a->id, "");
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0 || rename(tmp, path) < 0) {
		keel_log(KEEL_LOG_ERROR, "kv",
			 "shard %u: FLUSHALL at stop: a new %s: %s; truncated in place instead (a "
			 "write still in flight may land in it)",
			 a->id, tmp, strerror(errno));
		if (fd >= 0) {
			close(fd);
			unlink(tmp);
		}
		if (truncate_file(a->fd) < 0)
			return -errno;
		a->off = 0;
		return 0;
	}
	a->stale_fd = a->fd;
	a->fd = fd; /* nothing went through the ring on it: its own fdatasync sees everything */
	close(a->chk_fd);
	a->chk_fd = -1;
	a->off = 0;
	*renamed = true;
	return 0;
}

/* The stop with a file a failed sync lost (sync_lost) and no rebuild in place: the table,
 * which holds every write the file was to hold, is written whole to a new file now,
 * synchronously, as the start writes it, synced, renamed over the file's name and the
 * directory synced. Returns 0 or -errno; *@renamed once the new file has the name (and is
 * a->fd): only the directory's sync may have failed then. */
static int
stop_rebuild(struct aof *a, bool *renamed)
{
	char tmp[4096], path[4096];
	uint64_t len = 0;
	int fd, r;

	path_of(tmp, sizeof(tmp), a->id, ".stop");
	path_of(path, sizeof(path), a->id, "");
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	r = fd < 0                          ? -errno
	    : kv_test_fault("stop-rebuild") ? -EIO
					    : table_write(a->db, fd, &len, false);
	if (r == 0 && stop_datasync(fd) < 0)
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0) {
		if (fd >= 0) {
			close(fd);
			unlink(tmp);
		}
		keel_log(KEEL_LOG_ERROR, "kv", "shard %u: rebuilding appendonly-%u.aof at stop: %s",
			 a->id, a->id, strerror(-r));
		return r;
	}
	/* An old write still in flight lands in the old file, which has no name now; the
	 * stale descriptor is closed at the end (kv_aof_fini), after the ring's (a FLUSHALL
	 * at stop, the one other user of stale_fd, does not follow a rebuild). */
	a->stale_fd = a->fd;
	close(a->chk_fd);
	a->chk_fd = -1;
	a->fd = fd;
	a->off = len;
	*renamed = true;
	if (fsync(a->dir_fd) < 0) {
		r = -errno;
		keel_log(KEEL_LOG_ERROR, "kv",
			 "shard %u: appendonly-%u.aof rebuilt at stop, but syncing --dir %s: %s",
			 a->id, a->id, kv_cfg.dir, strerror(-r));
		return r;
	}
	keel_log(KEEL_LOG_INFO, "kv", "shard %u: appendonly-%u.aof rebuilt at stop (%llu bytes)",
		 a->id, a->id, (unsigned long long)len);
	return 0;
}

void
kv_aof_stop(void)
{
	struct aof *a = me();
	bool inflight, dir_sync = false, rebuilt = false;
	int err = 0, r;

	if (!a->open)
		return;
	/* Stopping: in-flight requests are about to be cancelled, so what is gathered goes
	 * out now, synchronously: the batch in flight again (the same bytes at the same
	 * offset: harmless if the kernel wrote them already), then what is pending. The
	 * replies still waiting get the first error of it, if any. */
	a->stopping = true;
	if (a->backlog_held) /* the other shards' connections are not held by it any more */
		backlog_release(a);
	/* A truncation in flight runs in io-wq and cannot be called back: the stop's FLUSHALL
	 * takes a new file, as with a write in flight (one landing after the stop's own
	 * writes would cut them off). */
	inflight = a->st == A_WRITING || a->st == A_TRUNCATING;
	/* Once a rewrite's file has the name, it is the file: it holds the old one's tail up
	 * to where the copy caught up, and no batch has started since (rw_frozen), so a failed
	 * one goes to it. */
	if (a->rw_ready || a->rw_renamed) { /* renamed: its directory sync was cut short */
		if (a->rw_old_batch && a->st == A_FAILED) { /* in the snapshot (rw_old_batch) */
			batch_free(a);
			a->st = A_IDLE;
		}
		dir_sync = a->rw_renamed;
		rw_switch(a);
	} else if (a->rewriting) { /* abandoned: a FLUSHALL it took applies to the old file */
		a->reset |= a->rw_reset;
		a->rw_reset = false;
		if (a->rw_parked || a->rw_wait) /* no request of it in flight to end it */
			rw_fail(a, 0);
	}
	/* The file a failed sync lost, not rebuilt: the table goes to a new one. Whatever was
	 * pending, in a batch or a FLUSHALL not yet applied to the file is in the table. Not
	 * before the start's commit: the plain name is the last run's file then (rebuild());
	 * this run's .new files are removed (kv_aof_fini), or the next start completes a
	 * commit begun, and the failure is reported below. */
	if (a->sync_lost && atomic_load(&committed)) {
		r = stop_rebuild(a, &rebuilt);
		if (rebuilt) {
			a->pend.len = 0;
			a->reset = false;
			a->sync_lost = 0;
			err = r;
		}
	}
	if ((a->st == A_WRITING || a->st == A_FAILED) && (a->sl.buf || a->heap)) {
		if (!rebuilt) { /* the rebuilt file holds the batch's records already */
			r = pwrite_all(a->fd, a->sl.buf ? a->sl.data : a->heap, a->wlen, a->off);
			if (r == 0)
				a->off += a->wlen;
			err = r;
		}
		/* A write still in flight reads the batch until it completes: a slice keeps its
		 * own reference; heap memory waits for on_written. */
		if (a->st == A_WRITING && a->heap) {
			a->heap_busy = a->heap;
			a->heap = NULL;
		}
		batch_free(a);
		a->st = A_IDLE;
	}
	if (a->sync_lost && !err) /* not rebuilt: the file may lack what it seems to hold */
		err = a->sync_lost;
	if (a->reset && inflight) {
		r = stop_fresh_file(a, &dir_sync);
		err = err ? err : r;
	} else if (a->reset) {
		if (truncate_file(a->fd) == 0)
			a->off = 0;
		else if (!err)
			err = -errno;
	}
	if (a->pend.len) {
		r = pwrite_all(a->fd, a->pend.p, a->pend.len, a->off);
		if (r == 0)
			a->off += a->pend.len;
		err = err ? err : r;
	}
	a->pend.len = 0;
	/* Through chk_fd when there is one: the same file, and it sees a writeback error that
	 * the ring's syncs on fd used up (none went through a fresh file's fd). */
	if (stop_datasync(a->chk_fd >= 0 ? a->chk_fd : a->fd) < 0 && !err)
		err = -errno;
	if (dir_sync && fsync(a->dir_fd) < 0 && !err)
		err = -errno;
	if (err && !atomic_load(&committed))
		keel_log(KEEL_LOG_ERROR, "kv",
			 "shard %u: appendonly-%u.aof.new, this start's file, at a stop before the "
			 "start's switch to it: %s (the last run's files stay in force unless the "
			 "switch began)",
			 a->id, a->id, strerror(-err));
	else if (err)
		keel_log(KEEL_LOG_ERROR, "kv",
			 "shard %u: appendonly-%u.aof at stop: %s; the replies still waiting for "
			 "it say so",
			 a->id, a->id, strerror(-err));
	a->stop_err = err;
	answer_waiters(a, err);
}

unsigned
kv_aof_stop_failures(void)
{
	unsigned n = 0;

	/* A stop before the start's commit began: this run's files are removed (kv_aof_fini)
	 * and the last run's stay in force, so what failed on them loses nothing. Read after
	 * every shard has ended: a commit that began while a shard stopped counts. */
	if (!atomic_load(&commit_started))
		return 0;
	for (unsigned i = 0; i < KEEL_MAX_SHARDS; i++)
		n += aofs[i].open && aofs[i].stop_err;
	return n;
}

void
kv_aof_fini(void)
{
	/* A start that failed before the switch: the new files written so far (as large as
	 * their shards' data) would hold the disk until the next start removed them. */
	if (atomic_load(&new_made) && !atomic_load(&commit_started))
		for (unsigned i = 0; i < kv_cfg.nshards; i++) {
			char path[4096];

			path_of(path, sizeof(path), i, ".new");
			if (unlink(path) < 0 && errno != ENOENT)
				fprintf(stderr,
					"keel-kv: %s, this start's unfinished file: %s "
					"(remove it)\n",
					path, strerror(errno));
		}
	for (unsigned i = 0; i < KEEL_MAX_SHARDS; i++) {
		struct aof *a = &aofs[i];
		if (a->fd >= 0 && a->open)
			close(a->fd);
		if (a->rw_fd >= 0 && a->open)
			close(a->rw_fd);
		if (a->rw_chk_fd >= 0 && a->open)
			close(a->rw_chk_fd);
		if (a->rw_old_fd >= 0 && a->open)
			close(a->rw_old_fd);
		if (a->chk_fd >= 0 && a->open)
			close(a->chk_fd);
		if (a->bg_close_fd >= 0 && a->open)
			close(a->bg_close_fd);
		if (a->stale_fd >= 0 && a->open)
			close(a->stale_fd);
		if (a->dir_open)
			close(a->dir_fd);
		rb_free(&a->pend);
		/* Replies still held belong to connections gone with the runtime (kv_aof_stop
		 * answers them; a shard whose start failed never ran it). */
		for (struct waiter *w = a->iw, *n; w; w = n) {
			n = w->next;
			free(w);
		}
		for (struct waiter *w = a->pw, *n; w; w = n) {
			n = w->next;
			free(w);
		}
		free(a->heap);
		free(a->heap_busy);
		rb_free(&a->rw_piece);
		free(a->rw_buf);
		memset(a, 0, sizeof(*a));
	}
	free(loaded);
	loaded = NULL;
	nloaded = 0;
	atomic_store(&committed, false);
}
