/* SPDX-License-Identifier: MIT */
/*
 * For tests only: failures of keel-kv's own plain system calls and allocations, which
 * keel's fault injection (keel/faults.h, io_uring operations) does not reach. Only in
 * KEEL_FAULTS builds; elsewhere kv_test_fault() is constant false and costs nothing.
 *
 * KEEL_KV_TEST_FAULTS="SITE[:after=N][:n=N][,SITE...]" (read once, by kv_test_faults_init
 * or the first call; a bad spec stops the process with status 2):
 * the call at SITE fails, except the first N calls there (after=, default 0), at most N
 * times (n=, default unlimited). Sites (docs/testing.md):
 *   record-oom   no memory to gather a write's append-only record
 *   ftruncate    the append-only file's truncation for FLUSHALL (EIO)
 *   stop-sync    the fdatasync of the append-only file at stop (EIO)
 *   start-unlink the removal of a file of a shard this run does not have, at start (EIO)
 *   commit-marker  the rename that makes the start's commit marker durable (EIO)
 *   commit-rename  a rename of a shard's new file over its name in the start's commit (EIO)
 *   commit-dirsync an fsync of --dir in the start commit's finish (EIO)
 *   rewrite-rename the rename of a rewrite's new file over its name (EIO): BGREWRITEAOF's,
 *                  or the rebuild after a failed sync
 *   rewrite-dirsync the fsync of --dir after that rename (EIO), and each retry of it; the
 *                  batches' syncs are not touched
 *   waiter-oom   no memory for the place a write's reply waits in for its sync (always)
 *   store-oom    no memory for a key's entry in the table (a write gets -ERR out of memory)
 *   reply-oom    no memory to grow a reply or record buffer (rbuf: replies, records)
 *   watch-keys-oom no memory to name the keys a connection watches (to end them, or to
 *                send them with EXEC)
 *   watch-entry-oom no memory for a watch's entry on the shard that owns its key (WATCH
 *                gets -ERR out of memory)
 *   dir-parent-sync the fsync of the directory that holds a --dir the start just made (EIO)
 *
 * KEEL_KV_TEST_REWRITE_GATE=PATH: while PATH exists, a rewrite (BGREWRITEAOF, or the rebuild
 * after a failed sync) holds before each of its steps and looks again each second and
 * after each batch, so a test can act while one runs (kv_test_rewrite_held).
 *
 * KEEL_KV_TEST_SYNC_GATE=PATH: while PATH exists, the sync of a batch written under
 * appendfsync always holds (logging "sync held by the test gate" once) and looks again each
 * second, the batch in flight meanwhile, so a test can send commands while one is
 * (kv_test_sync_held).
 *
 * KEEL_KV_TEST_HOLD_GATE=PATH: while PATH exists (a minute at most), a command whose first
 * argument ends in ":hold" holds the shard that runs it (its thread sleeps, looking again
 * every millisecond, with a line on stderr as it holds and as it lets go, naming the file),
 * so that a test can fill the queues to that shard (kv_test_hold); ":holdNAME" (up to 16
 * letters or digits) waits on PATHNAME instead, so that two shards can be held and let go
 * apart.
 *
 * KEEL_KV_TEST_CLOCK_STEP_MS=N: each reading of keel-kv's clock (kv_now_ms) on a shard is N
 * ms later than the one before on that shard, so a test can make time pass between two
 * commands without waiting (kv_test_clock_step_ms; a bad number stops the process, 2).
 *
 * KEEL_KV_TEST_RANDOM_ANY=1: RANDOMKEY's first draw of a shard takes every shard as
 * likely, whatever keys each holds, as a draw on counts gone stale by the time it runs
 * would (the shard drawn may have none), so a test can reach that case without a race
 * (kv_test_random_any).
 */
#ifndef KEEL_KV_TESTFAULT_H
#define KEEL_KV_TESTFAULT_H

#include <keel/config.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Read the spec (another build: say that it is ignored, when there is one). */
void kv_test_faults_init(void);

#ifdef KEEL_FAULTS
bool kv_test_fault(const char *site);
bool kv_test_rewrite_held(void);
bool kv_test_sync_held(void);
int64_t kv_test_clock_step_ms(void);
/* The hold gate: true when @key (the command's first argument) ends in ":hold[NAME]" and
 * the gate's file (PATH[NAME]) exists, once the file is gone or a minute has passed (the
 * caller's thread held meanwhile). */
bool kv_test_hold(unsigned shard, const uint8_t *key, size_t len);
bool kv_test_random_any(void);
#else
static inline bool
kv_test_fault(const char *site)
{
	(void)site;
	return false;
}

static inline bool
kv_test_rewrite_held(void)
{
	return false;
}

static inline bool
kv_test_sync_held(void)
{
	return false;
}

static inline int64_t
kv_test_clock_step_ms(void)
{
	return 0;
}

static inline bool
kv_test_random_any(void)
{
	return false;
}

static inline bool
kv_test_hold(unsigned shard, const uint8_t *key, size_t len)
{
	(void)shard;
	(void)key;
	(void)len;
	return false;
}
#endif

#endif
