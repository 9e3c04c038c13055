/* SPDX-License-Identifier: MIT */
/*
 * keel-kv internals shared by its files: reply buffers, the per-shard key table, the
 * command table. docs/kv.md describes the design.
 */
#ifndef KEEL_KV_H
#define KEEL_KV_H

#include <keel/hash.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aofrec.h"
#include "resp.h"

/* A growable reply buffer (malloc: replies cross shards and are freed where they land).
 * An allocation failure sets @oom and drops further bytes; the caller then aborts. */
struct rbuf {
	uint8_t *p;
	size_t len, cap;
	bool oom;
};

void rb_put(struct rbuf *b, const void *p, size_t n);
void rb_simple(struct rbuf *b, const char *s); /* "+s\r\n" */
void rb_err(struct rbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void rb_int(struct rbuf *b, long long v);
void rb_bulk(struct rbuf *b, const void *p, size_t n);
void rb_nil(struct rbuf *b);
void rb_arr(struct rbuf *b, long long n);
void rb_free(struct rbuf *b);

/* One key: key bytes then value bytes in data[]. */
struct kv_ent {
	struct kv_ent *next;
	uint64_t hash;
	int64_t expire_ms; /* unix ms; 0: none */
	uint32_t klen, vlen, vcap;
	/* How Redis would encode the value, for OBJECT ENCODING (enum kv_enc): by its shape
	 * as SET encodes it, raw once APPEND or SETRANGE changed it in place, or a string
	 * never tried as an integer (INCRBYFLOAT's); a value set whole resets it. */
	uint8_t enc;
	uint8_t data[];
};

enum kv_enc {
	KV_ENC_SHAPE, /* int up to 20 characters that read as one, embstr up to 44 bytes, raw */
	KV_ENC_RAW,   /* raw */
	KV_ENC_STR,   /* embstr up to 44 bytes, raw */
};

/* Counters of one shard, written by it, read by INFO on any shard (relaxed). */
struct kv_stats {
	_Atomic uint64_t keys, expires, used_memory;
	_Atomic uint64_t commands, forwarded_out, forwarded_in, fanouts;
	_Atomic uint64_t expired_lazy, expired_swept, oom_rejected;
	_Atomic uint64_t conns, conns_total, proto_errors, timeouts;
	_Atomic uint64_t rejected; /* connections refused past --maxclients */
	_Atomic uint64_t hits, misses;
	_Atomic uint64_t input_holds;      /* receives whose parsing stopped at the reply limits */
	_Atomic uint64_t input_moved;      /* bytes of unparsed input moved to its buffer's start */
	_Atomic uint64_t replies_orphaned; /* replies from another shard for a closed client */
	_Atomic uint64_t args_bytes;       /* argument arrays held by connections and the shard */
	_Atomic uint64_t lazyfree_pending; /* keys FLUSHALL ASYNC set aside, not yet freed */
	_Atomic uint64_t forwarded_exported; /* ... of forwarded_out, handed over as exported
					      * slices of the receive buffer (--handoff export) */
	_Atomic uint64_t watched_keys;       /* keys of this shard watched (kv_watches.keys) */
	_Atomic uint64_t blocked;            /* its clients blocked in WAIT */
	_Atomic uint64_t client_mem;         /* what this shard's clients hold (client_mem) */
	_Atomic uint64_t evicted_clients;    /* clients closed past --maxmemory-clients */
};

/* WATCH (watch.c): the keys of this shard that connections watch, by the key's hash, each
 * entry one connection's watch of one key. Only the shard that owns the keys reads or
 * writes it: a watch of a key on another shard is made and ended by messages to that
 * shard (server.c). */
struct kv_watch;
struct kv_watches {
	struct kv_watch **b; /* NULL while nothing is watched */
	size_t mask, n;      /* n: watches, one per connection and key */
	size_t keys;         /* keys watched (by one connection or more) */
};

/* A shard's key table: chained buckets, a power of two of them. It doubles when it holds
 * more keys than buckets, incrementally (as Redis rehashes): the old array stays beside the
 * new one and every write, and the sweep timer, moves a few of its buckets over, so that no
 * request pays for a pass over the whole table. A key whose old bucket has not been moved
 * yet is still in the old array (bucket index ob[h & omask] >= migrate). */
struct kv_db {
	struct kv_ent **b;
	size_t mask;        /* buckets - 1 */
	struct kv_ent **ob; /* while growing: the old array; NULL otherwise */
	size_t omask;       /* its buckets - 1 */
	size_t migrate;     /* its buckets below this one are moved */
	size_t count, expires;
	size_t sweep; /* next bucket the expiry sweep looks at */
	/* FLUSHALL ASYNC: the array it set aside, whose keys kv_db_free_step frees a budget at
	 * a time (their memory counts in used_memory until then), from bucket fnext on */
	struct kv_ent **fb;
	size_t fmask, fnext, fpending;
	struct kv_stats *st;
	/* Changes commands made: bumped by every key set, deleted or given another deadline,
	 * and by FLUSHALL (not by expiry: an expired key's DEL goes to the append-only file
	 * by itself, kv_aof_expired). A write that leaves it as it was appends nothing of its
	 * own to the file. */
	uint64_t changes;
	/* A part of a command split over shards runs: the command was counted once, where it
	 * was received, so kv_cmd_run and kv_cmd_exec do not count it (each part counted, and
	 * MSET over three shards was three commands in total_commands_processed). */
	bool uncounted;
	struct kv_watches watch;
};

/* Process-wide settings (set before the shards start, read-only after). */
struct kv_config {
	uint64_t maxmemory;         /* 0: no limit */
	uint64_t max_bulk;          /* --proto-max-bulk-len */
	uint64_t query_max;         /* the largest request buffered (client-query-buffer-limit) */
	unsigned timeout_s;         /* --timeout: idle connections closed after this; 0: never */
	uint32_t maxclients;        /* --maxclients: clients open at once, over every shard */
	uint64_t maxmemory_clients; /* --maxmemory-clients: what clients hold together; 0: any */
	unsigned maxmemory_clients_pct; /* ... given as this percentage of --maxmemory; 0: bytes */
	uint32_t shard_clients; /* ... on one shard (its direct-descriptor table's room); 0: any */
	unsigned nshards;
	bool handoff_export;           /* --handoff export: forward requests as exported slices */
	struct keel_hash_key hash_key; /* kv_hash's key: random per process */
	bool aof;                      /* --appendonly yes */
	enum { KV_FSYNC_NO, KV_FSYNC_EVERYSEC, KV_FSYNC_ALWAYS } fsync; /* --appendfsync */
	const char *dir;           /* --dir: where the files live */
	bool aof_truncate_corrupt; /* --aof-truncate-corrupt yes: cut a bad record inside */
	unsigned auto_rw_pct;      /* --auto-aof-rewrite-percentage (0: no automatic rewrite) */
	uint64_t auto_rw_min;      /* --auto-aof-rewrite-min-size */
	uint64_t high_watermark;   /* --high-watermark: replies queued per connection above
				    * which its requests are not parsed (nor read) */
	uint64_t reply_max;        /* --send-max: a reply of several values (MGET, EXEC) made
				    * larger than this is refused (kv_reply_over); 0: no limit */
	bool client_addrs;         /* --client-addrs yes: read each client's addresses at
				    * accept (CLIENT LIST's addr and laddr, CLIENT KILL ADDR) */
};
extern struct kv_config kv_cfg;
extern struct kv_stats kv_stats[];

/* A random 64-bit value (this thread's counter through kv_hash: unpredictable without the
 * process's hash key). */
uint64_t kv_random(void);

/* The hash of a key: owner shard and bucket (SipHash-1-3 keyed with kv_cfg.hash_key). */
uint64_t kv_hash(const void *p, size_t n);
static inline unsigned
kv_owner(uint64_t h)
{
	return (unsigned)((h >> 40) % kv_cfg.nshards);
}
/* The shard that owns a key. Redis Cluster's hash tags, so that keys used together (a
 * transaction's) can be kept on one shard: when the key holds a '{' with a '}' after it and
 * at least one byte between them, only the bytes between the first '{' and the first '}'
 * after it choose the shard ("user:{42}:name" and "user:{42}:mail" share one). */
unsigned kv_owner_key(const uint8_t *k, size_t n);
int64_t kv_now_ms(void);
/* Hold kv_now_ms at the present on this shard until kv_clock_thaw (a transaction). */
void kv_clock_freeze(void);
void kv_clock_thaw(void);
uint64_t kv_used_total(void);
/* An argument as Redis's string2ll reads it (no sign '+', no leading zero or space, no
 * overflow): false when it is not such an integer. */
bool kv_arg_ll(const struct resp_arg *a, long long *out);
/* A database index as SELECT and COPY's DB take it (an integer that fits an int; keel-kv
 * has database 0 only): true for 0, else false with Redis's error written to @out. */
bool kv_db_index_ok(const struct resp_arg *a, struct rbuf *out);
/* An argument's length for a %.*s in an error reply: at most 128 bytes (an int precision
 * of a longer argument, 2 GiB and up with --proto-max-bulk-len, would be negative and
 * read the argument as a C string, past its end). */
static inline int
kv_err_len(const struct resp_arg *a)
{
	return (int)(a->len < 128 ? a->len : 128);
}
bool kv_glob(const uint8_t *pat, size_t plen, const uint8_t *s, size_t slen, bool nocase);
/* A SCAN cursor as Redis reads it (strtoul in base 10 up to a NUL: a sign is taken, a
 * leading space or other byte is not): false when it is not one. The shard that runs it
 * is the cursor modulo the shard count; its table's cursor is the quotient. */
bool kv_scan_cursor(const struct resp_arg *a, uint64_t *out);

int kv_db_init(struct kv_db *db, struct kv_stats *st);
void kv_db_fini(struct kv_db *db);
void kv_db_flush(struct kv_db *db);
/* FLUSHALL ASYNC: the table is empty at once; its keys are freed by kv_db_free_step (a
 * table of fewer than KV_LAZYFREE_MIN keys, or no memory for a new array: at once). */
#define KV_LAZYFREE_MIN 1024
void kv_db_flush_async(struct kv_db *db);
/* Free up to @budget of the keys FLUSHALL ASYNC set aside; returns how many are left. */
size_t kv_db_free_step(struct kv_db *db, size_t budget);
/* Finish a doubling in progress: move every bucket still in the old array (a pass over
 * them; KEYS, FLUSHALL and snapshots, passes over the table themselves, call it). */
void kv_db_finish_grow(struct kv_db *db);
/* Delete up to @budget expired keys' buckets' worth; returns keys deleted. */
size_t kv_db_sweep(struct kv_db *db, size_t budget);
/* The sweep's pace for a table of @buckets buckets: *@interval_ns between ticks and
 * *@budget buckets a tick, so that a whole pass takes at most kv_sweep_pass_ns(@buckets):
 * 5 s, or 4 us a bucket for tables over 1.25 M buckets (a pass walks every key, each a
 * likely cache miss: 2.4 % of a core measured over 2.6 M keys); ticks 1 ms to 100 ms
 * apart, at least 1,024 buckets each. */
static inline uint64_t
kv_sweep_pass_ns(size_t buckets)
{
	uint64_t per = (uint64_t)buckets * 4000;
	return per > 5000000000ull ? per : 5000000000ull;
}
void kv_sweep_pace(size_t buckets, uint64_t *interval_ns, size_t *budget);

/* WATCH on the shard that owns the keys (watch.c). kv_watch_add: connection @id watches
 * the @n keys (once each: a key watched again is still one entry); 0, or -ENOMEM with
 * none of them added. kv_watch_end: whether any of @id's watches of the @n keys saw its
 * key changed (set, deleted, given a time to live, even the one it had, emptied by
 * FLUSHALL) or, live at WATCH, expired since (Redis 7's rule: a key already past its time
 * at WATCH is not changed by its deletion); the watches end. The store calls
 * kv_watch_touch for every key it changes (@gone: deleted, expiry included) and
 * kv_watch_flush before it empties the table, each only while kv_db.watch.n is not 0.
 * kv_watch_end_id: every watch of connection @id ends (a walk of the whole table: for when
 * its keys cannot be read, or were not sent for want of memory). */
int kv_watch_add(struct kv_db *db, uint64_t id, const struct resp_arg *keys, unsigned n);
bool kv_watch_end(struct kv_db *db, uint64_t id, const struct resp_arg *keys, unsigned n);
void kv_watch_end_id(struct kv_db *db, uint64_t id);
void kv_watch_touch(struct kv_db *db, const uint8_t *key, size_t klen, uint64_t h, bool gone);
void kv_watch_flush(struct kv_db *db);
void kv_watch_fini(struct kv_db *db);
/* The entry of @key (hash @h), expired or not; NULL when absent (store.c). */
const struct kv_ent *kv_db_find_any(struct kv_db *db, const struct resp_arg *key, uint64_t h);

/* How a command is routed. */
enum kv_route {
	KV_R_LOCAL,  /* no keys: runs where it was received */
	KV_R_KEY,    /* argv[1] is the key: runs on its owner */
	KV_R_KEYS,   /* every argument from 1 (step 1 or 2) is a key: split per owner */
	KV_R_ALL,    /* every shard's table: run on each, replies merged */
	KV_R_CURSOR, /* argv[1] is a SCAN cursor: runs on the shard it names (kv_scan_cursor) */
	KV_R_RANDOM, /* no key: runs on a shard drawn by its share of the keys (RANDOMKEY) */
	KV_R_KEY2,   /* argv[2] is the key (OBJECT ENCODING k, MEMORY USAGE k): runs on its
		      * owner; with no argv[2] where received, for the arity's error */
};
/* KV_M_REWRITE (BGREWRITEAOF): started when a shard started a rewrite and the others were
 * rewriting already (KV_AOF_REWRITE_BUSY); a shard's other error wins; all busy: busy.
 * KV_M_BULK: the parts' bulk strings as one (CLIENT LIST). KV_M_BULK_BY_ARG: the parts'
 * bulk strings hold a line per argument each, empty but in the one part that has it;
 * merged in the arguments' order (CLIENT LIST ID). KV_M_KILL: the parts' counts, +OK when
 * any is above 0, else Redis's "No such client" (CLIENT KILL ip:port). */
enum kv_merge {
	KV_M_NONE,
	KV_M_SUM,
	KV_M_OK,
	KV_M_ARRAY_BY_KEY,
	KV_M_CONCAT,
	KV_M_REWRITE,
	KV_M_BULK,
	KV_M_BULK_BY_ARG,
	KV_M_KILL,
};

#define KV_F_WRITE     1u
#define KV_F_DENYOOM   2u
#define KV_F_ONE_SHARD 4u  /* KV_R_KEYS that cannot be split: keys on several shards refused */
#define KV_F_TX_LOCAL  8u  /* KV_R_LOCAL taken inside MULTI (it needs no connection) */
#define KV_F_KEYS2     16u /* KV_R_KEYS whose keys are argv[1] and argv[2], options after (COPY) */
#define KV_F_READS_FIRST                                                   \
	32u /* KV_R_KEYS whose first key is only read (COPY's source): the \
	     * append-only file records the others */

struct kv_cmd;
/* OBJECT's or MEMORY's (@name: a command of route KV_R_KEY2) subcommand, checked as Redis checks
 * one before it runs or is queued in MULTI: 1 when @argv[2] is a key, 0 when the request names none
 * (HELP), -1 (a wrong number of arguments) or -2 (an unknown subcommand) with Redis's error in
 * @out, unless NULL. */
int kv_key2_check(const char *name, const struct resp_arg *argv, unsigned argc, struct rbuf *out);
/* CLIENT LIST's and CLIENT KILL's part on this shard's clients (server.c): as a command's
 * function, so a fan-out runs it on every shard. */
void kv_client_part(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out);
typedef void (*kv_cmd_fn)(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out);

struct kv_cmd {
	const char *name;
	int arity; /* Redis's: n exactly, -n at least n */
	unsigned flags;
	enum kv_route route;
	unsigned key_step;      /* KV_R_KEYS: 1 (DEL k k) or 2 (MSET k v k v) */
	enum kv_merge merge;    /* KV_R_KEYS and KV_R_ALL */
	kv_cmd_fn fn;           /* runs on the owner (NULL for KV_R_LOCAL: the server runs it;
				 * CLIENT's is its LIST and KILL part, run on every shard) */
	const char *flag_words; /* for COMMAND: "write denyoom" */
};

/* How many keys @c's @argc arguments name (KV_R_KEYS; 0 for the other routes): argv[1],
 * argv[1 + key_step], ... */
static inline unsigned
kv_cmd_nkeys(const struct kv_cmd *c, unsigned argc)
{
	unsigned n = c->route == KV_R_KEYS ? (argc - 1) / c->key_step : 0;

	return c->flags & KV_F_KEYS2 && n > 2 ? 2 : n;
}

/* Find a command by name (case-insensitive); NULL when unknown. */
const struct kv_cmd *kv_cmd_find(const uint8_t *name, size_t len);
/* The whole table (for COMMAND), *n entries. */
const struct kv_cmd *kv_cmd_table(unsigned *n);
/* Run @c on this shard's table @db (its keys live here), checking maxmemory. */
void kv_cmd_exec(const struct kv_cmd *c, struct kv_db *db, struct resp_arg *argv, unsigned argc,
		 struct rbuf *out);
/* --maxmemory, as Redis checks it once before a command: true when @c (a DENYOOM command)
 * may not run now; kv_reply_oom writes the error for it and counts it in @db's stats. */
bool kv_cmd_denied(const struct kv_cmd *c);
void kv_reply_oom(struct kv_db *db, struct rbuf *out);
/* kv_cmd_exec without the maxmemory check: for the parts of a command split over shards,
 * checked once where it was received (kv_cmd_denied), so no part is refused after another
 * was written. */
void kv_cmd_run(const struct kv_cmd *c, struct kv_db *db, struct resp_arg *argv, unsigned argc,
		struct rbuf *out);
/* Write Redis's reply for an unknown command / wrong arity. */
void kv_reply_unknown(struct rbuf *out, struct resp_arg *argv, unsigned argc);
void kv_reply_arity(struct rbuf *out, const struct kv_cmd *c);
/* A reply of several values (MGET's, a transaction's) made into @out from @start: past
 * kv_cfg.reply_max it is cut back to @at (@start, or where a transaction's last command's
 * reply began) and an error names the limit, saying the command ran when @ran (a write),
 * so that one short request (MGET of one large key, repeated) cannot make the server build
 * and hold a reply of any size. Returns: true when it was refused. */
bool kv_reply_over(struct rbuf *out, size_t start, size_t at, bool ran);
/* The error itself: a reply of @n bytes refused past kv_cfg.reply_max. */
void kv_reply_too_large(struct rbuf *out, size_t n, bool ran);

/* Persistence records (store.c): the state of @key as one RESP record (SET k v [PXAT ms]
 * or DEL k); the check of a record read back (0, and *pxat its expiry or 0; -EINVAL when
 * it is not one keel-kv writes); a record applied to @db (0; -EINVAL; -ENOMEM). */
void kv_db_record(struct kv_db *db, const struct resp_arg *key, struct rbuf *out);
int kv_db_apply(struct kv_db *db, const struct resp_arg *argv, unsigned argc);

/* A snapshot of @db as records, taken a piece at a time while the table goes on changing
 * between pieces (BGREWRITEAOF, docs/kv.md "Persistence"). The pass walks the hash values
 * modulo the bucket count at its start (mask), one residue (next) a step, in every array
 * that holds such keys then: the table may double any number of times between pieces, and
 * a key is written once, at the step of its residue, in the state it has then. So every key
 * that lives through the whole pass is written exactly once; one made or changed after the
 * pass began may be written in its newer state, or not at all, and its own records (written
 * after the snapshot's start) replay over it to the same table, since a record is a key's
 * whole state. */
struct kv_snap {
	size_t mask, next;
	bool done;
};
void kv_db_snap_begin(struct kv_db *db, struct kv_snap *it);
/* Append the records of the next residues to @out until it holds at least @want bytes, the
 * step has looked at KV_SNAP_STEP_BUCKETS buckets (a table of expired keys not yet swept
 * gives no bytes), or the pass is over (it->done); expired keys are left out. Watch
 * out->oom. */
#define KV_SNAP_STEP_BUCKETS 65536
void kv_db_snap_step(struct kv_db *db, struct kv_snap *it, struct rbuf *out, size_t want);

/* The append-only files (aof.c, docs/kv.md "Persistence"). */
/* Main thread, before the shards start: read every appendonly-N.aof of --dir, cut a torn
 * tail (logged); a bad record inside a file stops the start, or with
 * --aof-truncate-corrupt yes is cut after what follows is saved. Returns 0 or -errno
 * (printed). */
int kv_aof_preload(void);
/* On each shard before it listens: apply the records whose keys it owns, rewrite its own
 * file as a snapshot, open it for appending. Returns 0 or -errno (logged). */
int kv_aof_shard_start(struct kv_db *db);
/* After a write command ran on this shard: append the new state of the keys it named. */
void kv_aof_log(const struct kv_cmd *c, struct kv_db *db, struct resp_arg *argv, unsigned argc);
/* A transaction's commands run between these two (tx_run): the records they append go
 * between MULTI and EXEC, so that a start applies all of them or, the file ending inside
 * them, none. One that appends nothing writes no MULTI. */
void kv_aof_tx_begin(void);
void kv_aof_tx_end(void);
/* The store deleted @key because it expired (lazily, by the sweep, RANDOMKEY's draw): append
 * DEL @key, as Redis propagates one (nothing while the files are replayed, or after the
 * stop). */
void kv_aof_expired(const uint8_t *key, size_t klen);
/* Why writes are refused now (the last disk error of this shard's file), or NULL. */
const char *kv_aof_error(void);
/* The same for shard @shard, as of its last publish (checked before a write is split over
 * shards: a part refused there after the others ran would leave the command half done). */
const char *kv_aof_error_on(unsigned shard);
/* True while this shard's records not yet written are over their bound (aof.c,
 * backlog_max), or another shard's are (their records come from every shard's
 * connections): the connections parse no more requests and stop reading until
 * kv_resume_held() (server.c), called once the disk has taken the backlog below half. */
bool kv_aof_backlog_full(void);
void kv_resume_held(void);
/* --appendfsync always: run @fn(@arg, err) once what this shard logged so far is on disk
 * (err 0) or could not be written (-errno). Returns 0; -ENOENT when nothing is to wait
 * for (not always, no file, stopping): the caller replies at once; -ENOMEM when there is
 * no memory to wait: the caller replies at once with an error (the change is in memory,
 * its record not yet on disk), never +OK. */
int kv_aof_after_sync(void (*fn)(void *arg, int err), void *arg);
/* --appendfsync always: this shard has logged records not yet on disk (gathered, being
 * written or synced) and no write or sync has failed: a read's reply waits for them too
 * (server.c, must_hold), or it could show another client a write that a crash then loses. */
bool kv_aof_unsynced(void);
/* A shard's reply to BGREWRITEAOF while it rewrites already (Redis's), without the '-'. */
#define KV_AOF_REWRITE_BUSY "ERR Background append only file rewriting already in progress"
/* BGREWRITEAOF on this shard. */
void kv_aof_cmd_bgrewrite(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out);
/* INFO persistence lines of this process. */
void kv_aof_info(struct rbuf *out);
/* Flush what is pending synchronously and close (the shard's on-stop hook / main at exit). */
void kv_aof_stop(void);
/* After the join: how many shards' stops could not write or sync their file (each logged
 * why); keel-kv's exit status is then 1. */
unsigned kv_aof_stop_failures(void);
void kv_aof_fini(void);

#endif
