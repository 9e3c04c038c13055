// SPDX-License-Identifier: MIT
/*
 * keel-kv: a shard's key table and the commands that run on it. Everything here runs on
 * the shard that owns the keys involved; routing is server.c's.
 */
#include <ctype.h>
#include <errno.h>
#include <keel/keel.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kv.h"
#include "testfault.h"

/* Reply buffers. */

static bool
rb_reserve(struct rbuf *b, size_t n)
{
	size_t cap;
	uint8_t *p;

	if (b->oom)
		return false;
	if (b->len + n <= b->cap)
		return true;
	cap = b->cap ? b->cap : 256;
	while (cap < b->len + n)
		cap *= 2;
	p = kv_test_fault("reply-oom") ? NULL : realloc(b->p, cap);
	if (!p) {
		b->oom = true;
		return false;
	}
	b->p = p;
	b->cap = cap;
	return true;
}

void
rb_put(struct rbuf *b, const void *p, size_t n)
{
	if (!n || !rb_reserve(b, n))
		return;
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

void
rb_simple(struct rbuf *b, const char *s)
{
	size_t n = strlen(s);

	if (!rb_reserve(b, n + 3))
		return;
	b->p[b->len] = '+';
	memcpy(b->p + b->len + 1, s, n);
	memcpy(b->p + b->len + 1 + n, "\r\n", 2);
	b->len += n + 3;
}

void
rb_err(struct rbuf *b, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(msg))
		n = sizeof(msg) - 1;
	/* An error is one line: Redis turns CR and LF into spaces. */
	for (int i = 0; i < n; i++)
		if (msg[i] == '\r' || msg[i] == '\n')
			msg[i] = ' ';
	rb_put(b, "-", 1);
	rb_put(b, msg, (size_t)n);
	rb_put(b, "\r\n", 2);
}

/* "<c><v>\r\n", written backwards into a small array (snprintf cost more than the
 * rest of a GET's reply). */
static void
rb_prefix(struct rbuf *b, char c, long long v)
{
	char t[32], *q = t + sizeof(t);
	unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;

	*--q = '\n';
	*--q = '\r';
	do {
		*--q = (char)('0' + u % 10);
		u /= 10;
	} while (u);
	if (v < 0)
		*--q = '-';
	*--q = c;
	rb_put(b, q, (size_t)(t + sizeof(t) - q));
}

void
rb_int(struct rbuf *b, long long v)
{
	rb_prefix(b, ':', v);
}

void
rb_bulk(struct rbuf *b, const void *p, size_t n)
{
	rb_prefix(b, '$', (long long)n);
	if (!rb_reserve(b, n + 2))
		return;
	if (n) /* an empty body may have no address (INFO with no section known) */
		memcpy(b->p + b->len, p, n);
	memcpy(b->p + b->len + n, "\r\n", 2);
	b->len += n + 2;
}

void
rb_nil(struct rbuf *b)
{
	rb_put(b, "$-1\r\n", 5);
}

void
rb_arr(struct rbuf *b, long long n)
{
	rb_prefix(b, '*', n);
}

void
rb_free(struct rbuf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* Hashing, time, patterns. */

/* SipHash-1-3 keyed with kv_cfg.hash_key (random per process; keel_hash), as Redis keys its
 * tables with SipHash: a client that knows the function cannot choose keys that share a
 * hash (with an unkeyed mixing, flipping bit 63 of one 8-byte word and undoing it in the
 * next gave 2^(words-1) keys of one full hash, whatever the seed: one shard, one chain). */
uint64_t
kv_hash(const void *key, size_t n)
{
	return keel_hash(&kv_cfg.hash_key, key, n);
}

unsigned
kv_owner_key(const uint8_t *k, size_t n)
{
	const uint8_t *o = memchr(k, '{', n), *c;

	if (o && (c = memchr(o + 1, '}', n - (size_t)(o + 1 - k))) && c > o + 1)
		return kv_owner(kv_hash(o + 1, (size_t)(c - o - 1)));
	return kv_owner(kv_hash(k, n));
}

/* While a transaction runs (kv_clock_freeze), every reading gives its start, as Redis 7
 * keeps one time for a whole EXEC: a key live when it begins cannot expire between two of
 * its commands. */
static _Thread_local int64_t frozen_ms;

int64_t
kv_now_ms(void)
{
	struct timespec ts;
	int64_t ms;

	if (frozen_ms)
		return frozen_ms;
	clock_gettime(CLOCK_REALTIME, &ts);
	ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
#ifdef KEEL_FAULTS
	static _Thread_local int64_t stepped; /* KEEL_KV_TEST_CLOCK_STEP_MS */

	ms += stepped += kv_test_clock_step_ms();
#endif
	return ms;
}

void
kv_clock_freeze(void)
{
	frozen_ms = 0;
	frozen_ms = kv_now_ms();
}

void
kv_clock_thaw(void)
{
	frozen_ms = 0;
}

/* One pattern token other than '*' (?, [class], \x, a byte) against byte @c: whether it
 * matches, and in *@used the pattern bytes it takes. Redis's stringmatchlen's rules,
 * including a class without ']' ending at the pattern's end. */
static bool
glob_one(const uint8_t *pat, size_t plen, uint8_t c, bool nocase, size_t *used)
{
	const uint8_t *p = pat;
	size_t pl = plen;
	bool match = false;

	switch (p[0]) {
	case '?':
		match = true;
		break;
	case '[': {
		bool not ;
		p++;
		pl--;
		not = pl && p[0] == '^';
		if (not ) {
			p++;
			pl--;
		}
		while (pl) {
			if (p[0] == '\\' && pl >= 2) {
				p++;
				pl--;
				if (p[0] == c)
					match = true;
			} else if (p[0] == ']') {
				break;
			} else if (pl >= 3 && p[1] == '-') {
				int lo = p[0], hi = p[2], x = c;
				if (lo > hi) {
					int t = lo;
					lo = hi;
					hi = t;
				}
				if (nocase) {
					lo = tolower(lo);
					hi = tolower(hi);
					x = tolower(x);
				}
				p += 2;
				pl -= 2;
				if (x >= lo && x <= hi)
					match = true;
			} else if (nocase ? tolower(p[0]) == tolower(c) : p[0] == c) {
				match = true;
			}
			p++;
			pl--;
		}
		if (!pl) { /* no ']': Redis treats the end as the end of the class */
			p--;
			pl++;
		}
		if (not )
			match = !match;
		break;
	}
	case '\\':
		if (pl >= 2) {
			p++;
			pl--;
		}
		/* fall through */
	default:
		match = nocase ? tolower(p[0]) == tolower(c) : p[0] == c;
		break;
	}
	*used = (size_t)(p - pat) + 1;
	return match;
}

/* Redis's stringmatchlen: * ? [abc] [^a-z] and \ escapes. Every token but '*' takes one
 * byte, so on a mismatch only the last '*' need take one byte more and try again: time
 * O(pattern x key) and no recursion, where trying each '*' at every position was
 * exponential in the stars (KEYS *a*a*a...*b on a long key held the shard, as Redis's
 * CVE-2022-36021). */
bool
kv_glob(const uint8_t *pat, size_t plen, const uint8_t *s, size_t slen, bool nocase)
{
	const uint8_t *star = NULL, *star_s = NULL;
	size_t star_plen = 0, star_slen = 0, used;

	/* Redis 7.0's quirk, kept: the empty key matches "" and "*" (KEYS's and SCAN's
	 * match-everything case) only, not "**" or "*?*" (stringmatchlen strips trailing
	 * stars only after a byte matched). */
	if (!slen)
		return !plen || (plen == 1 && pat[0] == '*');
	while (slen) {
		if (plen && pat[0] == '*') {
			while (plen && pat[0] == '*') {
				pat++;
				plen--;
			}
			if (!plen)
				return true;
			star = pat;
			star_plen = plen;
			star_s = s;
			star_slen = slen;
			continue;
		}
		if (plen && glob_one(pat, plen, s[0], nocase, &used)) {
			pat += used;
			plen -= used;
			s++;
			slen--;
			continue;
		}
		if (!star)
			return false;
		/* The last '*' takes one byte more; the pattern after it starts again. */
		star_s++;
		star_slen--;
		pat = star;
		plen = star_plen;
		s = star_s;
		slen = star_slen;
	}
	while (plen && pat[0] == '*') {
		pat++;
		plen--;
	}
	return !plen;
}

/* The table. Memory comes from the shard's own arena (keel_shard_malloc). */

static size_t
ent_size(const struct kv_ent *e)
{
	return sizeof(*e) + e->klen + e->vcap;
}

static void
mem_add(struct kv_db *db, long long d)
{
	atomic_fetch_add_explicit(&db->st->used_memory, (uint64_t)d, memory_order_relaxed);
}

static void
counts_publish(struct kv_db *db)
{
	atomic_store_explicit(&db->st->keys, db->count, memory_order_relaxed);
	atomic_store_explicit(&db->st->expires, db->expires, memory_order_relaxed);
}

/* A new, empty array of 16 buckets for @db (its old one, if any, is the caller's).
 * Returns 0 or -ENOMEM (the table as it was). */
static int
table_new(struct kv_db *db)
{
	struct kv_ent **b = keel_shard_malloc(16 * sizeof(*b));

	if (!b)
		return -ENOMEM;
	memset(b, 0, 16 * sizeof(*b));
	db->b = b;
	db->mask = 15;
	mem_add(db, 16 * sizeof(*b));
	return 0;
}

int
kv_db_init(struct kv_db *db, struct kv_stats *st)
{
	memset(db, 0, sizeof(*db));
	db->st = st;
	return table_new(db);
}

static void
ent_free(struct kv_db *db, struct kv_ent *e)
{
	mem_add(db, -(long long)ent_size(e));
	if (e->expire_ms)
		db->expires--;
	db->count--;
	keel_shard_free(e);
}

/* The chain that holds (or will hold) keys of hash @h: while the table grows, the old
 * array's chain until its bucket has been moved. */
static struct kv_ent **
bucket(struct kv_db *db, uint64_t h)
{
	if (db->ob && (h & db->omask) >= db->migrate)
		return &db->ob[h & db->omask];
	return &db->b[h & db->mask];
}

/* Move up to @n buckets of the old array into the new one; after the last, free the old
 * array. No entry moves in memory: pointers to entries stay valid (links do not). */
static void
rehash_step(struct kv_db *db, size_t n)
{
	if (!db->ob)
		return;
	for (; n && db->migrate <= db->omask; n--) {
		struct kv_ent *e = db->ob[db->migrate], *next;

		for (; e; e = next) {
			next = e->next;
			e->next = db->b[e->hash & db->mask];
			db->b[e->hash & db->mask] = e;
		}
		db->ob[db->migrate++] = NULL;
	}
	if (db->migrate > db->omask) {
		mem_add(db, -(long long)((db->omask + 1) * sizeof(*db->ob)));
		keel_shard_free(db->ob);
		db->ob = NULL;
		db->omask = 0;
		db->migrate = 0;
	}
}

void
kv_db_finish_grow(struct kv_db *db)
{
	rehash_step(db, SIZE_MAX);
}

/* Empty the table (kv_db_flush without the watches: its callers have told them). */
static void
flush_keys(struct kv_db *db)
{
	db->changes++;
	kv_db_finish_grow(db);
	for (size_t i = 0; i <= db->mask; i++) {
		struct kv_ent *e = db->b[i], *n;
		for (; e; e = n) {
			n = e->next;
			ent_free(db, e);
		}
		db->b[i] = NULL;
	}
	/* The array starts again at 16 buckets, as after FLUSHALL ASYNC (Redis frees its
	 * tables too): a table emptied of 10 M keys kept 128 MiB of buckets, counted by
	 * --maxmemory, walked by KEYS and paced for by the sweep. Without memory for the new
	 * array the emptied one stays. */
	if (db->mask > 15) {
		struct kv_ent **old = db->b;
		size_t omask = db->mask;

		if (table_new(db) == 0) {
			mem_add(db, -(long long)((omask + 1) * sizeof(*old)));
			keel_shard_free(old);
			db->sweep = 0;
		}
	}
	counts_publish(db);
}

void
kv_db_flush(struct kv_db *db)
{
	if (db->watch.n)
		kv_watch_flush(db);
	flush_keys(db);
}

size_t
kv_db_free_step(struct kv_db *db, size_t budget)
{
	while (db->fb && budget) {
		struct kv_ent **slot = &db->fb[db->fnext];

		for (; *slot && budget; budget--) {
			struct kv_ent *e = *slot;

			*slot = e->next;
			mem_add(db, -(long long)ent_size(e));
			keel_shard_free(e);
			db->fpending--;
		}
		if (*slot)
			break;
		if (db->fnext++ == db->fmask) {
			mem_add(db, -(long long)((db->fmask + 1) * sizeof(*db->fb)));
			keel_shard_free(db->fb);
			db->fb = NULL;
		}
	}
	atomic_store_explicit(&db->st->lazyfree_pending, db->fpending, memory_order_relaxed);
	return db->fpending;
}

void
kv_db_flush_async(struct kv_db *db)
{
	struct kv_ent **old;
	size_t omask;

	kv_db_finish_grow(db);
	kv_db_free_step(db, SIZE_MAX); /* one set aside before: finished first */
	old = db->b;
	omask = db->mask;
	if (db->watch.n)
		kv_watch_flush(db); /* while the keys are there: it looks them up */
	if (db->count < KV_LAZYFREE_MIN || table_new(db) < 0) {
		flush_keys(db);
		return;
	}
	db->changes++;
	db->fb = old;
	db->fmask = omask;
	db->fnext = 0;
	db->fpending = db->count;
	db->count = db->expires = 0;
	db->sweep = 0;
	counts_publish(db);
	atomic_store_explicit(&db->st->lazyfree_pending, db->fpending, memory_order_relaxed);
}

void
kv_db_fini(struct kv_db *db)
{
	kv_watch_fini(db);
	if (!db->b)
		return;
	kv_db_free_step(db, SIZE_MAX);
	kv_db_flush(db);
	mem_add(db, -(long long)((db->mask + 1) * sizeof(*db->b)));
	keel_shard_free(db->b);
	db->b = NULL;
}

/* Double the buckets when there are more keys than buckets: allocate the new array and
 * move KV_GROW_STEP buckets per write from then on (the new array has twice the buckets,
 * so the move ends long before the next doubling is due; should it not, the rest moves at
 * once). A failed allocation leaves the table as it was (longer chains, still correct). */
#define KV_GROW_STEP 4

static void
maybe_grow(struct kv_db *db)
{
	size_t n = (db->mask + 1) * 2;
	struct kv_ent **nb;

	if (db->ob) {
		rehash_step(db, KV_GROW_STEP);
		if (!db->ob || db->count <= db->mask + 1)
			return;
		kv_db_finish_grow(db);
	}
	if (db->count <= db->mask + 1)
		return;
	nb = keel_shard_malloc(n * sizeof(*nb));
	if (!nb)
		return;
	memset(nb, 0, n * sizeof(*nb));
	mem_add(db, (long long)(n * sizeof(*nb)));
	db->ob = db->b;
	db->omask = db->mask;
	db->migrate = 0;
	db->b = nb;
	db->mask = n - 1;
	db->sweep = 0;
	rehash_step(db, KV_GROW_STEP);
}

/* Tell the watches of @e's key (if this shard has any) that it changed (@gone: is being
 * deleted). Alone where the file sees no change: an expiry (its deadline is absolute), a
 * time set again (set_time). */
static void
touched(struct kv_db *db, const struct kv_ent *e, bool gone)
{
	if (__builtin_expect(db->watch.n != 0, 0))
		kv_watch_touch(db, e->data, e->klen, e->hash, gone);
}

/* @e was changed (@gone: is being deleted): counted, and told to the watches of its key. */
static void
changed(struct kv_db *db, const struct kv_ent *e, bool gone)
{
	db->changes++;
	touched(db, e, gone);
}

/* @key of hash @h, expired or not (*@pp: its link); NULL when absent. */
static struct kv_ent *
lookup_any(struct kv_db *db, const struct resp_arg *key, uint64_t h, struct kv_ent ***pp)
{
	struct kv_ent **p = bucket(db, h), *e;

	for (; (e = *p); p = &e->next)
		if (e->hash == h && e->klen == key->len && !memcmp(e->data, key->p, key->len)) {
			*pp = p;
			return e;
		}
	return NULL;
}

/* Delete @e (at its link @p), past its time. Its deadline is absolute, so the file's own
 * records would make it expire again after a restart, but only at that time by the clock
 * of that start: a clock stepped back, or a replay at an earlier time, brought the key back
 * until its old deadline. So it goes to the file as a DEL, as Redis propagates one for
 * every key it expires (lazily or in its cycle), unless @logged is false: the caller
 * writes the key's record itself (kv_db_record). Not counted in db->changes: no command
 * changed it, and a write that changes nothing still appends nothing of its own. */
static void
expire_ent(struct kv_db *db, struct kv_ent **p, struct kv_ent *e, bool logged)
{
	touched(db, e, true);
	if (logged && kv_cfg.aof)
		kv_aof_expired(e->data, e->klen);
	*p = e->next;
	ent_free(db, e);
}

static bool
past(const struct kv_ent *e, int64_t now)
{
	return e->expire_ms && e->expire_ms <= now;
}

/* past() by the clock now, read only for a key with a deadline: most keys have none, and a
 * lookup is every command's (the clock read was the hot path's, and each read steps the
 * test clock, KEEL_KV_TEST_CLOCK_STEP_MS). */
static bool
past_now(const struct kv_ent *e)
{
	return e->expire_ms && e->expire_ms <= kv_now_ms();
}

/* Find @key, of hash @h; an expired key is deleted on the way (lazy expiry). *pp: the
 * link to it. */
static struct kv_ent *
lookup_h(struct kv_db *db, const struct resp_arg *key, uint64_t h, struct kv_ent ***pp)
{
	struct kv_ent **p, *e = lookup_any(db, key, h, &p);

	if (!e)
		return NULL;
	if (past_now(e)) {
		expire_ent(db, p, e, true);
		atomic_fetch_add_explicit(&db->st->expired_lazy, 1, memory_order_relaxed);
		counts_publish(db);
		return NULL;
	}
	if (pp)
		*pp = p;
	return e;
}

static struct kv_ent *
lookup(struct kv_db *db, const struct resp_arg *key, struct kv_ent ***pp)
{
	return lookup_h(db, key, kv_hash(key->p, key->len), pp);
}

const struct kv_ent *
kv_db_find_any(struct kv_db *db, const struct resp_arg *key, uint64_t h)
{
	struct kv_ent **p;

	return lookup_any(db, key, h, &p);
}

static void
unlink_ent(struct kv_db *db, struct kv_ent **p)
{
	struct kv_ent *e = *p;

	changed(db, e, true);
	*p = e->next;
	ent_free(db, e);
	counts_publish(db);
}

static void
set_expire(struct kv_db *db, struct kv_ent *e, int64_t at)
{
	if (e->expire_ms == at)
		return;
	changed(db, e, false);
	if (!e->expire_ms && at)
		db->expires++;
	else if (e->expire_ms && !at)
		db->expires--;
	e->expire_ms = at;
	counts_publish(db);
}

/* EXPIRE and the like, GETEX with a time: the key is given @at. The same time it had
 * changes nothing for the file, but a watch sees the key changed, as Redis signals every
 * time it sets. */
static void
set_time(struct kv_db *db, struct kv_ent *e, int64_t at)
{
	if (e->expire_ms == at)
		touched(db, e, false);
	set_expire(db, e, at);
}

/* A new entry for a key and value of @kv bytes (NULL: no memory, or the test site). */
static struct kv_ent *
ent_alloc(size_t kv)
{
	if (kv_test_fault("store-oom"))
		return NULL;
	return keel_shard_malloc(sizeof(struct kv_ent) + kv);
}

/* Fill the new entry @e (ent_alloc: @key, value @val of @vlen bytes, capacity @cap, expiry
 * @exp) and put it in the table: in place of @old at its link @pp, or as a new key (@old
 * NULL). */
static void
ent_put(struct kv_db *db, struct kv_ent *e, const struct resp_arg *key, uint64_t h,
	struct kv_ent *old, struct kv_ent **pp, const void *val, size_t vlen, size_t cap,
	int64_t exp)
{
	e->hash = h;
	e->klen = (uint32_t)key->len;
	e->vlen = (uint32_t)vlen;
	e->vcap = (uint32_t)cap;
	e->expire_ms = 0;
	e->enc = KV_ENC_SHAPE;
	memcpy(e->data, key->p, key->len);
	if (val != e->data + key->len) /* grow_at built the value in place */
		memcpy(e->data + key->len, val, vlen);
	if (old) {
		e->next = old->next;
		*pp = e;
		ent_free(db, old);
	} else {
		struct kv_ent **bk = bucket(db, e->hash);

		e->next = *bk;
		*bk = e;
	}
	db->count++;
	changed(db, e, false);
	mem_add(db, (long long)ent_size(e));
	if (exp)
		db->expires++;
	e->expire_ms = exp;
	counts_publish(db);
	maybe_grow(db);
}

/* Set @key to @val (value capacity at least @cap), for a key the caller has just looked
 * up: @h its hash, @old (and @pp, its link) what lookup_h() returned, the table not changed
 * since. Returns the entry, or NULL when memory ran out (the old value is then untouched). */
static struct kv_ent *
store_at(struct kv_db *db, const struct resp_arg *key, uint64_t h, struct kv_ent *old,
	 struct kv_ent **pp, const void *val, size_t vlen, size_t cap, bool keepttl)
{
	struct kv_ent *e;
	int64_t exp = old && keepttl ? old->expire_ms : 0;

	if (cap < vlen)
		cap = vlen;
	if (old && old->vcap >= vlen && old->vcap <= 2 * cap + 64) {
		memmove(old->data + old->klen, val, vlen); /* val may point into old */
		old->vlen = (uint32_t)vlen;
		old->enc = KV_ENC_SHAPE;
		changed(db, old, false);
		set_expire(db, old, exp);
		return old;
	}
	e = ent_alloc(key->len + cap);
	if (!e)
		return NULL;
	ent_put(db, e, key, h, old, pp, val, vlen, cap, exp);
	return e;
}

/* Make @key's new value in a new entry of capacity @cap: the old value (@old, at its link
 * @pp, as lookup_h() returned them; NULL for a new key) with @len bytes of @val written at
 * @at over it, zero bytes between, as long as the longer of the two; the TTL kept. The value is
 * made in the new entry itself, so a large APPEND or SETRANGE holds the new value and the old one,
 * not a third copy (a scratch buffer the size of the result, made and copied again, doubled their
 * peak). NULL when memory ran out (@old then untouched). */
static struct kv_ent *
grow_at(struct kv_db *db, const struct resp_arg *key, uint64_t h, struct kv_ent *old,
	struct kv_ent **pp, size_t cap, size_t at, const void *val, size_t len)
{
	size_t have = old ? old->vlen : 0, vlen = at + len > have ? at + len : have;
	struct kv_ent *e;
	uint8_t *v;

	if (cap < vlen)
		cap = vlen;
	e = ent_alloc(key->len + cap);
	if (!e)
		return NULL;
	v = e->data + key->len;
	if (have)
		memcpy(v, old->data + old->klen, have);
	if (at > have)
		memset(v + have, 0, at - have);
	memcpy(v + at, val, len);
	ent_put(db, e, key, h, old, pp, v, vlen, cap, old ? old->expire_ms : 0);
	return e;
}

static struct kv_ent *
store(struct kv_db *db, const struct resp_arg *key, const void *val, size_t vlen, size_t cap,
      bool keepttl)
{
	uint64_t h = kv_hash(key->p, key->len);
	struct kv_ent **pp = NULL, *old = lookup_h(db, key, h, &pp);

	return store_at(db, key, h, old, pp, val, vlen, cap, keepttl);
}

size_t
kv_db_sweep(struct kv_db *db, size_t budget)
{
	int64_t now = kv_now_ms();
	size_t n = 0;

	/* A table that grew and then saw no writes finishes moving here. Keys still in the
	 * old array are swept after their move (and expire lazily on access meanwhile). */
	rehash_step(db, budget);
	if (!db->expires)
		return 0;
	while (budget--) {
		struct kv_ent **p = &db->b[db->sweep & db->mask], *e;
		while ((e = *p)) {
			if (past(e, now)) {
				expire_ent(db, p, e, true);
				n++;
			} else {
				p = &e->next;
			}
		}
		db->sweep = (db->sweep + 1) & db->mask;
	}
	if (n) {
		atomic_fetch_add_explicit(&db->st->expired_swept, n, memory_order_relaxed);
		counts_publish(db);
	}
	return n;
}

void
kv_sweep_pace(size_t buckets, uint64_t *interval_ns, size_t *budget)
{
	const uint64_t min_ns = 1000ull * 1000, max_ns = 100ull * 1000 * 1000, base = 1024;
	const uint64_t pass = kv_sweep_pass_ns(buckets);
	/* 1,024 buckets a tick, as often as the pass needs (with kv_sweep_pass_ns's 4 us a
	 * bucket, never closer than 4 ms; the 1 ms floor and the larger budget below hold for
	 * any pass length it may be given). */
	uint64_t ticks = (buckets + base - 1) / base;
	uint64_t iv = ticks ? pass / ticks : max_ns;

	if (iv > max_ns)
		iv = max_ns;
	if (iv < min_ns)
		iv = min_ns;
	*interval_ns = iv;
	/* Buckets a tick so that pass / iv ticks cover the table. */
	ticks = pass / iv;
	*budget = (size_t)((buckets + ticks - 1) / ticks);
	if (*budget < base)
		*budget = base;
}

/* Commands. */

static const char e_int[] = "ERR value is not an integer or out of range";
static const char e_syntax[] = "ERR syntax error";
static const char e_oom[] = "ERR out of memory";

bool
kv_arg_ll(const struct resp_arg *a, long long *out)
{
	char t[24];
	char *end;

	if (a->len == 0 || a->len > 20)
		return false;
	memcpy(t, a->p, a->len);
	t[a->len] = 0;
	if (t[0] == '+' || isspace((unsigned char)t[0]) || (t[0] == '0' && a->len > 1) ||
	    (t[0] == '-' && a->len > 1 && t[1] == '0'))
		return false;
	errno = 0;
	*out = strtoll(t, &end, 10);
	/* Up to the argument's end: a NUL inside it stops strtoll as the copy's own would. */
	return !errno && end == t + a->len;
}

static bool
arg_is(const struct resp_arg *a, const char *w)
{
	return a->len == strlen(w) && !strncasecmp((const char *)a->p, w, a->len);
}

/* The same word, either case. */
static bool
arg_eq(const struct resp_arg *a, const struct resp_arg *b)
{
	return a->len == b->len && !strncasecmp((const char *)a->p, (const char *)b->p, a->len);
}

/* Persistence (aof.c): a key's state as one record, the table as records, records
 * applied. A record is the key's whole state (SET k v [PXAT ms] or DEL k), so applying
 * a file's records in order gives the table back whatever commands produced them, and
 * an expiry is an absolute unix time in ms (it means the same after a restart). */

static void
rec_set(struct rbuf *out, const struct kv_ent *e)
{
	char t[24];

	rb_arr(out, e->expire_ms ? 5 : 3);
	rb_bulk(out, "SET", 3);
	rb_bulk(out, e->data, e->klen);
	rb_bulk(out, e->data + e->klen, e->vlen);
	if (e->expire_ms) {
		int n = snprintf(t, sizeof(t), "%lld", (long long)e->expire_ms);
		rb_bulk(out, "PXAT", 4);
		rb_bulk(out, t, (size_t)n);
	}
}

void
kv_db_record(struct kv_db *db, const struct resp_arg *key, struct rbuf *out)
{
	struct kv_ent **p, *e = lookup_any(db, key, kv_hash(key->p, key->len), &p);

	/* Past its time since the command ran: its DEL is this record, not a second one
	 * (lookup_h's would go into @out's own buffer while the record is being made). */
	if (e && past_now(e)) {
		expire_ent(db, p, e, false);
		atomic_fetch_add_explicit(&db->st->expired_lazy, 1, memory_order_relaxed);
		counts_publish(db);
		e = NULL;
	}
	if (e) {
		rec_set(out, e);
		return;
	}
	rb_arr(out, 2);
	rb_bulk(out, "DEL", 3);
	rb_bulk(out, key->p, key->len);
}

void
kv_db_snap_begin(struct kv_db *db, struct kv_snap *it)
{
	/* The smaller array's mask while the table doubles: each of its buckets' keys are in
	 * it or in the new array's buckets of the same residue. */
	it->mask = db->ob ? db->omask : db->mask;
	it->next = 0;
	it->done = false;
}

/* The live keys of chain @e into @out. */
static void
snap_chain(const struct kv_ent *e, int64_t now, struct rbuf *out)
{
	for (; e; e = e->next)
		if (!e->expire_ms || e->expire_ms > now)
			rec_set(out, e);
}

void
kv_db_snap_step(struct kv_db *db, struct kv_snap *it, struct rbuf *out, size_t want)
{
	int64_t now = kv_now_ms();
	size_t stride = it->mask + 1, looked = 0;

	/* Masks grow while a snapshot runs, so every array's size is a multiple of stride:
	 * the keys of residue r are in its buckets r, r + stride, ... (the old array's moved
	 * buckets are empty). Only FLUSHALL makes the table small again, and its records
	 * replace the snapshot's (the file is emptied; rw_abandon where the rewrite's own
	 * file has not taken over): residues past the small table then hold nothing, and
	 * each still counts as a bucket looked at, so a step stays bounded. */
	while (!it->done && out->len < want && !out->oom && looked < KV_SNAP_STEP_BUCKETS) {
		for (size_t j = it->next; j <= db->mask; j += stride, looked++)
			snap_chain(db->b[j], now, out);
		if (db->ob)
			for (size_t j = it->next; j <= db->omask; j += stride, looked++)
				snap_chain(db->ob[j], now, out);
		looked += it->next > db->mask;
		it->done = it->next++ == it->mask;
	}
}

int
kv_db_apply(struct kv_db *db, const struct resp_arg *argv, unsigned argc)
{
	struct kv_ent **pp, *e;
	int64_t at;

	if (kv_record_check(argv, argc, &at) < 0)
		return -EINVAL;
	if (argc == 2 || (at && at <= kv_now_ms())) {
		if ((e = lookup(db, &argv[1], &pp)))
			unlink_ent(db, pp);
		return 0;
	}
	e = store(db, &argv[1], argv[2].p, argv[2].len, argv[2].len, false);
	if (!e)
		return -ENOMEM;
	if (at)
		set_expire(db, e, at);
	return 0;
}

/* A read's lookup, counted in keyspace_hits or keyspace_misses as Redis counts each of its
 * lookupKeyRead: GET, MGET, SET ... GET, GETSET, GETDEL, GETEX, STRLEN, GETRANGE, EXISTS and
 * TOUCH (each key), TYPE, TTL and its kin. Only GET and its kin counted, so STRLEN, EXISTS, TTL
 * and GETRANGE of a key there added nothing (redis-server 7.0.15: 4 hits). */
static void
count_read(struct kv_db *db, const struct kv_ent *e)
{
	atomic_fetch_add_explicit(e ? &db->st->hits : &db->st->misses, 1, memory_order_relaxed);
}

static struct kv_ent *
lookup_read(struct kv_db *db, struct resp_arg *key)
{
	struct kv_ent *e = lookup(db, key, NULL);

	count_read(db, e);
	return e;
}

void
kv_reply_too_large(struct rbuf *out, size_t n, bool ran)
{
	rb_err(out,
	       "ERR reply too large: over %zu bytes, past --send-max (%llu bytes)%s; ask for "
	       "fewer or smaller values in one command or transaction, or raise --send-max",
	       n, (unsigned long long)kv_cfg.reply_max, ran ? " (the command ran)" : "");
}

bool
kv_reply_over(struct rbuf *out, size_t start, size_t at, bool ran)
{
	size_t n = out->len - start;

	if (!kv_cfg.reply_max || n <= kv_cfg.reply_max)
		return false;
	out->len = at;
	kv_reply_too_large(out, n, ran);
	return true;
}

static void
cmd_get(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	struct kv_ent *e = lookup_read(db, &argv[1]);

	if (e)
		rb_bulk(out, e->data + e->klen, e->vlen);
	else
		rb_nil(out);
}

/* An expiry option's word: EX, PX, EXAT or PXAT (SET, GETEX). */
static bool
is_expiry_opt(const struct resp_arg *a)
{
	return arg_is(a, "EX") || arg_is(a, "PX") || arg_is(a, "EXAT") || arg_is(a, "PXAT");
}

/* The deadline in ms of an expiry of @v (seconds with @sec; a Unix time with @abs, else
 * from @now), as Redis 7 checks it for SET, SETEX, PSETEX and GETEX (@name). Returns
 * false with the error replied. */
static bool
expiry_at(const struct resp_arg *v, bool sec, bool abs, int64_t now, const char *name,
	  struct rbuf *out, int64_t *at)
{
	long long n;

	if (!kv_arg_ll(v, &n)) {
		rb_err(out, "%s", e_int);
		return false;
	}
	if (n <= 0 || (sec && n > LLONG_MAX / 1000) ||
	    (!abs && (sec ? n * 1000 : n) > LLONG_MAX - now)) {
		rb_err(out, "ERR invalid expire time in '%s' command", name);
		return false;
	}
	*at = (abs ? 0 : now) + (sec ? n * 1000 : n);
	return true;
}

/* expiry_at for the option word @opt (EX, PX, EXAT, PXAT) and its value @v. */
static bool
expiry_opt_at(const struct resp_arg *opt, const struct resp_arg *v, int64_t now, const char *name,
	      struct rbuf *out, int64_t *at)
{
	return expiry_at(v, opt->p[0] == 'E' || opt->p[0] == 'e', opt->len == 4, now, name, out,
			 at);
}

static void
cmd_set(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	bool nx = false, xx = false, keepttl = false, get = false;
	const struct resp_arg *expo = NULL, *expv = NULL; /* the expiry option and its value */
	int64_t exp = 0;
	struct kv_ent *e, **pp = NULL;
	uint64_t h;
	size_t rep;

	/* As Redis 7 reads them: every option first, the expiry's value after. An expiry
	 * option may repeat (the last one counts) but not mix with another or KEEPTTL. */
	for (unsigned i = 3; i < argc; i++) {
		if (arg_is(&argv[i], "NX") && !xx) {
			nx = true;
		} else if (arg_is(&argv[i], "XX") && !nx) {
			xx = true;
		} else if (arg_is(&argv[i], "GET")) {
			get = true;
		} else if (arg_is(&argv[i], "KEEPTTL") && !expo) {
			keepttl = true;
		} else if (is_expiry_opt(&argv[i]) && (!expo || arg_eq(expo, &argv[i])) &&
			   !keepttl && i + 1 < argc) {
			expo = &argv[i];
			expv = &argv[++i];
		} else {
			rb_err(out, "%s", e_syntax);
			return;
		}
	}
	if (expv && !expiry_opt_at(expo, expv, kv_now_ms(), "set", out, &exp))
		return;
	h = kv_hash(argv[1].p, argv[1].len);
	e = lookup_h(db, &argv[1], h, &pp);
	rep = out->len;
	if (get) {
		count_read(db, e);
		if (e)
			rb_bulk(out, e->data + e->klen, e->vlen);
		else
			rb_nil(out);
	}
	if ((nx && e) || (xx && !e)) {
		if (!get)
			rb_nil(out);
		return;
	}
	e = store_at(db, &argv[1], h, e, pp, argv[2].p, argv[2].len, argv[2].len, keepttl);
	if (!e) {
		out->len = rep; /* the old value's reply, with GET: the command failed */
		rb_err(out, "%s", e_oom);
		return;
	}
	if (exp)
		set_expire(db, e, exp);
	if (!get)
		rb_simple(out, "OK");
}

/* SETEX key seconds value, PSETEX key milliseconds value: SET key value EX|PX n. */
static void
setex_generic(struct kv_db *db, struct resp_arg *argv, struct rbuf *out, bool sec, const char *name)
{
	struct kv_ent *e, **pp = NULL;
	int64_t at;
	uint64_t h;

	if (!expiry_at(&argv[2], sec, false, kv_now_ms(), name, out, &at))
		return;
	h = kv_hash(argv[1].p, argv[1].len);
	e = lookup_h(db, &argv[1], h, &pp);
	e = store_at(db, &argv[1], h, e, pp, argv[3].p, argv[3].len, argv[3].len, false);
	if (!e) {
		rb_err(out, "%s", e_oom);
		return;
	}
	set_expire(db, e, at);
	rb_simple(out, "OK");
}

static void
cmd_setex(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	setex_generic(db, argv, out, true, "setex");
}

static void
cmd_psetex(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	setex_generic(db, argv, out, false, "psetex");
}

/* SETNX key value: 1 when it set the key, 0 when the key was there. */
static void
cmd_setnx(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	uint64_t h = kv_hash(argv[1].p, argv[1].len);
	struct kv_ent **pp = NULL, *e = lookup_h(db, &argv[1], h, &pp);

	if (e) {
		rb_int(out, 0);
		return;
	}
	if (!store_at(db, &argv[1], h, NULL, pp, argv[2].p, argv[2].len, argv[2].len, false)) {
		rb_err(out, "%s", e_oom);
		return;
	}
	rb_int(out, 1);
}

/* GETDEL key: the value (nil when there is none), and the key deleted. */
static void
cmd_getdel(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	struct kv_ent **pp, *e = lookup(db, &argv[1], &pp);

	count_read(db, e);
	if (!e) {
		rb_nil(out);
		return;
	}
	rb_bulk(out, e->data + e->klen, e->vlen);
	unlink_ent(db, pp);
}

/* GETEX key [EX s | PX ms | EXAT t | PXAT ms-t | PERSIST]: the value, its expiry set or
 * removed after (a time already past deletes the key), as Redis 7: options mixed are a
 * syntax error, the same one repeated takes the last. */
static void
cmd_getex(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	const struct resp_arg *expo = NULL, *expv = NULL;
	int64_t now = kv_now_ms(), at = 0;
	bool persist = false;
	struct kv_ent **pp, *e;

	for (unsigned i = 2; i < argc; i++) {
		if (arg_is(&argv[i], "PERSIST") && !expo) {
			persist = true;
		} else if (is_expiry_opt(&argv[i]) && (!expo || arg_eq(expo, &argv[i])) &&
			   !persist && i + 1 < argc) {
			expo = &argv[i];
			expv = &argv[++i];
		} else {
			rb_err(out, "%s", e_syntax);
			return;
		}
	}
	/* As Redis 7: the expiry's value is judged only for a key that exists (a missing one
	 * answers nil whatever it is); the options' syntax above, always. */
	e = lookup(db, &argv[1], &pp);
	count_read(db, e);
	if (!e) {
		rb_nil(out);
		return;
	}
	if (expv && !expiry_opt_at(expo, expv, now, "getex", out, &at))
		return;
	rb_bulk(out, e->data + e->klen, e->vlen);
	if (expv && at <= now)
		unlink_ent(db, pp);
	else if (expv)
		set_time(db, e, at);
	else if (persist)
		set_expire(db, e, 0);
}

/* TYPE key: every value here is a string. */
static void
cmd_type(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	rb_simple(out, lookup_read(db, &argv[1]) ? "string" : "none");
}

static void
cmd_getset(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	struct kv_ent *e = lookup_read(db, &argv[1]);
	size_t at = out->len; /* @out may hold the replies before this one */

	if (e)
		rb_bulk(out, e->data + e->klen, e->vlen);
	else
		rb_nil(out);
	if (!store(db, &argv[1], argv[2].p, argv[2].len, argv[2].len, false)) {
		out->len = at;
		rb_err(out, "%s", e_oom);
	}
}

static void
cmd_del(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	long long n = 0;

	for (unsigned i = 1; i < argc; i++) {
		struct kv_ent **pp;
		if (lookup(db, &argv[i], &pp)) {
			unlink_ent(db, pp);
			n++;
		}
	}
	rb_int(out, n);
}

/* @e's value and expiry under @key (of hash @h): in place of @old at its link @pp (what
 * lookup_h returned for it), or as a new key. False when memory ran out (said in @out). */
static bool
put_copy(struct kv_db *db, const struct kv_ent *e, const struct resp_arg *key, uint64_t h,
	 struct kv_ent *old, struct kv_ent **pp, struct rbuf *out)
{
	struct kv_ent *n = ent_alloc(key->len + e->vlen);

	if (!n) {
		rb_err(out, "%s", e_oom);
		return false;
	}
	ent_put(db, n, key, h, old, pp, e->data + e->klen, e->vlen, e->vlen, e->expire_ms);
	n->enc = e->enc; /* COPY keeps the encoding, as Redis's copy of a string does */
	return true;
}

/* Room in the entry at link @pp for a name of @klen bytes before its value (rekey): its
 * bytes (name and value room) are enough, or it is reallocated larger by what the name
 * lacks (the link follows it; the value's room counts the new bytes until rekey moves
 * the value). False when that failed: nothing changed. */
static bool
ent_room_for_key(struct kv_db *db, struct kv_ent **pp, size_t klen)
{
	struct kv_ent *e = *pp, *n;
	size_t more;

	size_t bytes = (size_t)e->klen + e->vcap;

	/* The value's room is 32 bits (rekey gives it the bytes the name does not take): a
	 * rename that would take it past them is refused, as one without memory is. */
	if (klen + e->vlen <= bytes)
		return bytes - klen <= UINT32_MAX;
	more = klen - e->klen; /* klen > e->klen: the value fits its room */
	if ((uint64_t)e->vcap + more > UINT32_MAX || kv_test_fault("store-oom"))
		return false;
	n = keel_shard_realloc(e, ent_size(e) + more);
	if (!n)
		return false;
	n->vcap += (uint32_t)more;
	mem_add(db, (long long)more);
	*pp = n; /* the link is in the entry before it or the bucket array, never in it */
	return true;
}

/* The entry at link @pp takes the name @key (of hash @h), with room for it
 * (ent_room_for_key): its value moves behind the new name in place; it is unlinked from
 * its chain and linked into the new key's, the watches of both names told. No entry of
 * @key may be in the table. */
static void
rekey(struct kv_db *db, struct kv_ent **pp, const struct resp_arg *key, uint64_t h)
{
	struct kv_ent *e = *pp, **bk;
	size_t before = ent_size(e);

	*pp = e->next;
	changed(db, e, true); /* its old name, which goes */
	memmove(e->data + key->len, e->data + e->klen, e->vlen);
	/* The entry's bytes stay: what the name gives up or takes is the value's room. */
	e->vcap = (uint32_t)((size_t)e->klen + e->vcap - key->len);
	memcpy(e->data, key->p, key->len);
	e->klen = (uint32_t)key->len;
	e->hash = h;
	bk = bucket(db, h);
	e->next = *bk;
	*bk = e;
	mem_add(db, (long long)ent_size(e) - (long long)before);
	changed(db, e, false);
	counts_publish(db);
}

/* RENAME key newkey, and RENAMENX (@nx: only when newkey is not there): key's value and
 * expiry under newkey, key gone, as Redis 7 (a missing or expired key is "no such key",
 * newkey's old value and expiry are dropped, a key renamed to itself is left as it is:
 * +OK, or 0 for RENAMENX). The entry is renamed in place, its value not copied (rekey):
 * a rename to a name no longer than the old one cannot fail, a longer one only where its
 * entry cannot grow by the difference (nothing changes then). Atomic on the shard that
 * holds both; server.c refuses keys on two shards (KV_F_ONE_SHARD), as Redis Cluster
 * refuses keys in two slots. */
static void
rename_generic(struct kv_db *db, struct resp_arg *argv, struct rbuf *out, bool nx)
{
	struct kv_ent **pp, **pp2 = NULL, *e = lookup(db, &argv[1], &pp), *old;
	uint64_t h2, h1;

	if (!e) {
		rb_err(out, "ERR no such key");
		return;
	}
	if (argv[1].len == argv[2].len && !memcmp(argv[1].p, argv[2].p, argv[1].len)) {
		if (nx)
			rb_int(out, 0);
		else
			rb_simple(out, "OK");
		return;
	}
	h1 = e->hash;
	h2 = kv_hash(argv[2].p, argv[2].len);
	old = lookup_h(db, &argv[2], h2, &pp2); /* may delete an expired newkey, not key */
	if (old && nx) {
		rb_int(out, 0);
		return;
	}
	/* Each link found again before it is used: deleting an expired newkey, growing key's
	 * entry and deleting newkey's old one each may move the next one's (an entry before
	 * it in the same chain). The room first, so that nothing has changed if it cannot be
	 * had; newkey's old value then goes, and key's entry takes its name. */
	lookup_any(db, &argv[1], h1, &pp);
	if (!ent_room_for_key(db, pp, argv[2].len)) {
		rb_err(out, "%s", e_oom);
		return;
	}
	if (old) {
		lookup_any(db, &argv[2], h2, &pp2);
		unlink_ent(db, pp2);
	}
	lookup_any(db, &argv[1], h1, &pp);
	rekey(db, pp, &argv[2], h2);
	if (nx)
		rb_int(out, 1);
	else
		rb_simple(out, "OK");
}

static void
cmd_rename(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	rename_generic(db, argv, out, false);
}

static void
cmd_renamenx(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	rename_generic(db, argv, out, true);
}

bool
kv_db_index_ok(const struct resp_arg *a, struct rbuf *out)
{
	long long db;

	if (!kv_arg_ll(a, &db))
		rb_err(out, "ERR value is not an integer or out of range");
	else if (db < INT_MIN || db > INT_MAX)
		rb_err(out, "ERR value is out of range, value must between -2147483648 and "
			    "2147483647");
	else if (db != 0)
		rb_err(out, "ERR DB index is out of range");
	else
		return true;
	return false;
}

/* COPY source destination [DB 0] [REPLACE]: source's value and expiry under destination,
 * 1; 0 when source is not there, or destination is and REPLACE was not given. As Redis 7
 * (the options first, then the same key refused; source read as GET reads it, in the
 * keyspace hits and misses); keel-kv's one database is 0. Atomic on the shard that holds
 * both (KV_F_ONE_SHARD, as RENAME). */
static void
cmd_copy(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	struct kv_ent **pp2 = NULL, *e, *old;
	bool replace = false;
	uint64_t h2;

	for (unsigned i = 3; i < argc; i++) {
		if (arg_is(&argv[i], "REPLACE")) {
			replace = true;
		} else if (arg_is(&argv[i], "DB") && i + 1 < argc) {
			if (!kv_db_index_ok(&argv[++i], out))
				return;
		} else {
			rb_err(out, "ERR syntax error");
			return;
		}
	}
	if (argv[1].len == argv[2].len && !memcmp(argv[1].p, argv[2].p, argv[1].len)) {
		rb_err(out, "ERR source and destination objects are the same");
		return;
	}
	e = lookup_read(db, &argv[1]);
	if (!e) {
		rb_int(out, 0);
		return;
	}
	h2 = kv_hash(argv[2].p, argv[2].len);
	old = lookup_h(db, &argv[2], h2, &pp2);
	if (old && !replace) {
		rb_int(out, 0);
		return;
	}
	if (put_copy(db, e, &argv[2], h2, old, pp2, out))
		rb_int(out, 1);
}

uint64_t
kv_random(void)
{
	static _Thread_local uint64_t ctr;

	ctr++;
	return kv_hash(&ctr, sizeof(ctr));
}

/* RANDOMKEY: a key of this shard's table drawn at random (server.c draws the shard by its
 * share of the keys), nil when it has none. A bucket drawn at random, the old array's
 * unmoved ones included while the table grows, then a key of its chain; an expired key
 * drawn is deleted (lazy expiry) and another drawn, as Redis does. After 1,024 empty
 * buckets in a row (a table emptied by deletes: it does not shrink), the buckets are
 * walked from a random one instead, so a sparse table costs one walk, not endless draws. */
static void
cmd_randomkey(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	int64_t now = kv_now_ms();

	while (db->count) {
		size_t nb = db->mask + 1, no = db->ob ? db->omask + 1 - db->migrate : 0;
		size_t at = (size_t)(kv_random() % (nb + no));
		struct kv_ent **chain = NULL, *e;
		size_t len = 0, pick;

		for (unsigned tries = 0; !chain; tries++) {
			struct kv_ent **c = at < nb ? &db->b[at] : &db->ob[db->migrate + at - nb];

			if (*c)
				chain = c;
			else if (tries < 1024)
				at = (size_t)(kv_random() % (nb + no));
			else
				at = (at + 1) % (nb + no);
		}
		for (e = *chain; e; e = e->next)
			len++;
		pick = (size_t)(kv_random() % len);
		for (e = *chain; pick--; e = e->next)
			;
		if (e->expire_ms && e->expire_ms <= now) {
			struct resp_arg key = { .p = e->data, .len = e->klen };

			lookup(db, &key, NULL); /* deletes it, counted as lazy expiry */
			continue;
		}
		rb_bulk(out, e->data, e->klen);
		return;
	}
	rb_nil(out);
}

static void
cmd_exists(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	long long n = 0;

	for (unsigned i = 1; i < argc; i++)
		n += lookup_read(db, &argv[i]) != NULL;
	rb_int(out, n);
}

static void
incr_by(struct kv_db *db, struct resp_arg *key, long long by, struct rbuf *out)
{
	uint64_t h = kv_hash(key->p, key->len);
	struct kv_ent **pp = NULL, *e = lookup_h(db, key, h, &pp);
	long long v = 0;
	char t[24];
	int n;

	if (e) {
		struct resp_arg a = { e->data + e->klen, e->vlen };
		if (!kv_arg_ll(&a, &v)) {
			rb_err(out, "%s", e_int);
			return;
		}
	}
	if ((by < 0 && v < 0 && by < LLONG_MIN - v) || (by > 0 && v > 0 && by > LLONG_MAX - v)) {
		rb_err(out, "ERR increment or decrement would overflow");
		return;
	}
	v += by;
	n = snprintf(t, sizeof(t), "%lld", v);
	if (!store_at(db, key, h, e, pp, t, (size_t)n, 20, true)) {
		rb_err(out, "%s", e_oom);
		return;
	}
	rb_int(out, v);
}

static void
cmd_incr(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	incr_by(db, &argv[1], 1, out);
}

static void
cmd_decr(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	incr_by(db, &argv[1], -1, out);
}

static void
cmd_incrby(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	long long by;

	if (!kv_arg_ll(&argv[2], &by)) {
		rb_err(out, "%s", e_int);
		return;
	}
	incr_by(db, &argv[1], by, out);
}

static void
cmd_decrby(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	long long by;

	if (!kv_arg_ll(&argv[2], &by)) {
		rb_err(out, "%s", e_int);
		return;
	}
	if (by == LLONG_MIN) {
		rb_err(out, "ERR decrement would overflow");
		return;
	}
	incr_by(db, &argv[1], -by, out);
}

/* Room for any long double written with 17 decimals (Redis's MAX_LONG_DOUBLE_CHARS): the
 * largest has 4,933 integer digits. */
#define KV_LD_CHARS (5 * 1024)

/* A float as Redis reads one (string2ld): all @n bytes of it (a NUL inside is not the end),
 * no leading space, not NaN, not out of range. */
static bool
arg_ld(const uint8_t *p, size_t n, long double *out)
{
	char buf[KV_LD_CHARS], *end;
	long double v;

	if (n == 0 || n >= sizeof(buf))
		return false;
	memcpy(buf, p, n);
	buf[n] = 0;
	errno = 0;
	v = strtold(buf, &end);
	if (isspace((unsigned char)buf[0]) || (size_t)(end - buf) != n || errno == EINVAL ||
	    (errno == ERANGE && (v == HUGE_VALL || v == -HUGE_VALL || v == 0)) || isnan(v))
		return false;
	*out = v;
	return true;
}

/* INCRBYFLOAT key increment: the value plus the increment as long doubles, written as Redis
 * 7 writes it (ld2string, LD_STR_HUMAN: 17 decimals, trailing zeros and a bare point cut,
 * "-0" as "0"); the key's deadline kept. */
static void
cmd_incrbyfloat(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	uint64_t h = kv_hash(argv[1].p, argv[1].len);
	struct kv_ent **pp = NULL, *e = lookup_h(db, &argv[1], h, &pp);
	long double v = 0, by;
	char t[KV_LD_CHARS];
	int n;

	if ((e && !arg_ld(e->data + e->klen, e->vlen, &v)) ||
	    !arg_ld(argv[2].p, argv[2].len, &by)) {
		rb_err(out, "ERR value is not a valid float");
		return;
	}
	v += by;
	if (isnan(v) || isinf(v)) {
		rb_err(out, "ERR increment would produce NaN or Infinity");
		return;
	}
	n = snprintf(t, sizeof(t), "%.17Lf", v);
	if (n < 0 || (size_t)n >= sizeof(t)) { /* cannot happen: KV_LD_CHARS holds them all */
		rb_err(out, "ERR increment would produce NaN or Infinity");
		return;
	}
	if (memchr(t, '.', (size_t)n)) {
		while (t[n - 1] == '0')
			n--;
		if (t[n - 1] == '.')
			n--;
	}
	if (n == 2 && t[0] == '-' && t[1] == '0') {
		t[0] = '0';
		n = 1;
	}
	e = store_at(db, &argv[1], h, e, pp, t, (size_t)n, (size_t)n, true);
	if (!e) {
		rb_err(out, "%s", e_oom);
		return;
	}
	e->enc = KV_ENC_STR; /* Redis makes a string of it, not tried as an integer */
	rb_bulk(out, t, (size_t)n);
}

static void
cmd_append(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	/* One lookup, its link carried to the store as incr_by does: a second lookup after
	 * the copy below could find the key expired meanwhile, and the store would make a new
	 * key of the old value and the appended bytes, without the TTL. */
	uint64_t h = kv_hash(argv[1].p, argv[1].len);
	struct kv_ent **pp = NULL, *e = lookup_h(db, &argv[1], h, &pp);
	size_t old = e ? e->vlen : 0, total = old + argv[2].len;
	bool existed = e != NULL;

	if (total > kv_cfg.max_bulk) {
		rb_err(out, "ERR string exceeds maximum allowed size (proto-max-bulk-len)");
		return;
	}
	if (e && e->vcap >= total) {
		memcpy(e->data + e->klen + old, argv[2].p, argv[2].len);
		e->vlen = (uint32_t)total;
		changed(db, e, false);
	} else {
		/* Grow geometrically so that repeated appends are amortised. */
		size_t cap = total < 64 ? 64 : total + total / 2;

		if (cap > kv_cfg.max_bulk)
			cap = total;
		e = grow_at(db, &argv[1], h, e, pp, cap, old, argv[2].p, argv[2].len);
		if (!e) {
			rb_err(out, "%s", e_oom);
			return;
		}
	}
	/* Redis appends to its string in place (raw), empty bytes too; a key APPEND makes is
	 * encoded as SET's. */
	e->enc = existed ? KV_ENC_RAW : KV_ENC_SHAPE;
	rb_int(out, (long long)total);
}

/* GETRANGE key start end (and SUBSTR): Redis 7's clamping of the indexes, an empty string
 * where nothing is left (a missing key included). */
static void
cmd_getrange(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	long long start, end, len;
	struct kv_ent *e;

	if (!kv_arg_ll(&argv[2], &start) || !kv_arg_ll(&argv[3], &end)) {
		rb_err(out, "%s", e_int);
		return;
	}
	e = lookup_read(db, &argv[1]);
	len = e ? e->vlen : 0;
	if (start < 0 && end < 0 && start > end) {
		rb_bulk(out, "", 0);
		return;
	}
	if (start < 0)
		start = len + start < 0 ? 0 : len + start;
	if (end < 0)
		end = len + end < 0 ? 0 : len + end;
	if (end >= len)
		end = len - 1;
	if (!len || start > end)
		rb_bulk(out, "", 0);
	else
		rb_bulk(out, e->data + e->klen + start, (size_t)(end - start + 1));
}

/* SETRANGE key offset value: the value written at @offset, the string grown with zero
 * bytes up to it where shorter; the TTL kept. An empty value changes nothing (and makes no
 * key), as in Redis. One lookup, as APPEND's. */
static void
cmd_setrange(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	uint64_t h = kv_hash(argv[1].p, argv[1].len);
	struct kv_ent **pp = NULL, *e;
	long long off;
	size_t old, total;

	if (!kv_arg_ll(&argv[2], &off)) {
		rb_err(out, "%s", e_int);
		return;
	}
	if (off < 0) {
		rb_err(out, "ERR offset is out of range");
		return;
	}
	e = lookup_h(db, &argv[1], h, &pp);
	old = e ? e->vlen : 0;
	if (!argv[3].len) {
		rb_int(out, (long long)old);
		return;
	}
	if ((uint64_t)off > kv_cfg.max_bulk || (uint64_t)off + argv[3].len > kv_cfg.max_bulk) {
		rb_err(out, "ERR string exceeds maximum allowed size (proto-max-bulk-len)");
		return;
	}
	total = (size_t)off + argv[3].len;
	if (total < old)
		total = old;
	if (e && e->vcap >= total) {
		uint8_t *v = e->data + e->klen;

		if ((size_t)off > old)
			memset(v + old, 0, (size_t)off - old);
		memcpy(v + off, argv[3].p, argv[3].len);
		e->vlen = (uint32_t)total;
		e->enc = KV_ENC_RAW;
		changed(db, e, false);
		rb_int(out, (long long)total);
		return;
	}
	e = grow_at(db, &argv[1], h, e, pp, total, (size_t)off, argv[3].p, argv[3].len);
	if (!e) {
		rb_err(out, "%s", e_oom);
		return;
	}
	e->enc = KV_ENC_RAW; /* a key SETRANGE makes too, as in Redis */
	rb_int(out, (long long)total);
}

/* OBJECT's subcommands that take a key (argv[2]), in cmd_object's order. */
static const char *const object_subs[] = { "encoding", "refcount", "idletime", "freq" };

int
kv_key2_check(const char *name, const struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	bool obj = !strcmp(name, "object");

	if (arg_is(&argv[1], "help")) {
		if (argc == 2)
			return 0;
		if (out)
			rb_err(out, "ERR wrong number of arguments for '%s|help' command", name);
		return -1;
	}
	for (unsigned k = 0; obj && k < 4; k++)
		if (arg_is(&argv[1], object_subs[k])) {
			if (argc == 3)
				return 1;
			if (out)
				rb_err(out, "ERR wrong number of arguments for 'object|%s' command",
				       object_subs[k]);
			return -1;
		}
	if (!obj && arg_is(&argv[1], "usage")) {
		if (argc >= 3)
			return 1;
		if (out)
			rb_err(out, "ERR wrong number of arguments for 'memory|usage' command");
		return -1;
	}
	if (out)
		rb_err(out, "ERR unknown subcommand '%.*s'. Try %s HELP.", kv_err_len(&argv[1]),
		       (const char *)argv[1].p, obj ? "OBJECT" : "MEMORY");
	return -2;
}

/* A HELP subcommand's reply: @n lines, as Redis answers one (an array of status lines). */
static void
help_reply(struct rbuf *out, const char *const *lines, unsigned n)
{
	rb_arr(out, n);
	for (unsigned i = 0; i < n; i++)
		rb_simple(out, lines[i]);
}

/* OBJECT ENCODING | REFCOUNT | IDLETIME | FREQ key, as Redis 7.0 answers them where keel-kv
 * has the answer: a value's encoding by its shape, as Redis encodes a string just SET
 * ("int" for an integer of up to 20 characters, "embstr" up to 44 bytes, else "raw"),
 * "raw" of a value APPEND or SETRANGE changed, no "int" of INCRBYFLOAT's (kv_ent.enc);
 * REFCOUNT 1 (keel-kv shares no values); IDLETIME refused (no access times are kept);
 * FREQ Redis's error under noeviction. A missing key is nil. */
static void
cmd_object(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	static const char *const help[] = {
		"OBJECT <subcommand> <key>. keel-kv's subcommands:",
		"ENCODING <key>",
		"    int, embstr or raw: how Redis would encode the value (raw once APPEND or",
		"    SETRANGE changed it).",
		"REFCOUNT <key>",
		"    1: keel-kv shares no values.",
		"FREQ <key>",
		"    An error: no LFU policy (keel-kv evicts nothing).",
		"IDLETIME <key>",
		"    An error: keel-kv keeps no access time per key.",
		"HELP",
		"    This text.",
	};
	int has_key = kv_key2_check("object", argv, argc, out);
	struct kv_ent *e;
	unsigned k = 0;
	long long v;

	if (has_key <= 0) {
		if (!has_key)
			help_reply(out, help, sizeof(help) / sizeof(help[0]));
		return;
	}
	while (!arg_is(&argv[1], object_subs[k]))
		k++;
	e = lookup_read(db, &argv[2]);
	if (!e) {
		rb_nil(out);
		return;
	}
	if (k == 0) {
		struct resp_arg val = { e->data + e->klen, e->vlen };
		const char *enc = e->enc == KV_ENC_RAW                            ? "raw"
				  : e->enc == KV_ENC_SHAPE && kv_arg_ll(&val, &v) ? "int"
				  : e->vlen <= 44                                 ? "embstr"
										  : "raw";

		rb_bulk(out, enc, strlen(enc));
	} else if (k == 1) {
		rb_int(out, 1);
	} else if (k == 2) {
		rb_err(out, "ERR keel-kv keeps no access time per key: OBJECT IDLETIME has no "
			    "answer");
	} else {
		rb_err(out, "ERR An LFU maxmemory policy is not selected, access frequency not "
			    "tracked. Please note that when switching between policies at runtime "
			    "LRU and LFU data will take some time to adjust.");
	}
}

/* MEMORY USAGE key [SAMPLES count]: the bytes keel-kv counts for the key in used_memory
 * (its entry: header, key and the value's room), as Redis answers with its own objects';
 * SAMPLES is checked and, a string having no elements to sample, not used. */
static void
cmd_memory(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	static const char *const help[] = {
		"MEMORY <subcommand> [<arg> ...]. keel-kv's subcommands:",
		"USAGE <key> [SAMPLES <count>]",
		"    The bytes keel-kv counts for the key in used_memory (its entry).",
		"HELP",
		"    This text.",
	};
	int has_key = kv_key2_check("memory", argv, argc, out);
	struct kv_ent *e;
	long long n;

	if (has_key <= 0) {
		if (!has_key)
			help_reply(out, help, sizeof(help) / sizeof(help[0]));
		return;
	}
	if (argc != 3 && (argc != 5 || !arg_is(&argv[3], "samples"))) {
		rb_err(out, "ERR syntax error");
		return;
	}
	if (argc == 5 && !kv_arg_ll(&argv[4], &n)) {
		rb_err(out, "ERR value is not an integer or out of range");
		return;
	}
	if (argc == 5 && n < 0) {
		rb_err(out, "ERR syntax error");
		return;
	}
	e = lookup_read(db, &argv[2]);
	if (e)
		rb_int(out, (long long)ent_size(e));
	else
		rb_nil(out);
}

static void
cmd_strlen(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	struct kv_ent *e = lookup_read(db, &argv[1]);

	rb_int(out, e ? e->vlen : 0);
}

static void
cmd_mget(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	size_t start = out->len;

	rb_arr(out, argc - 1);
	for (unsigned i = 1; i < argc; i++) {
		cmd_get(db, (struct resp_arg[]){ argv[0], argv[i] }, 2, out);
		if (kv_reply_over(out, start, start, false))
			return;
	}
}

/* One pair of an MSET: its key's hash, and the entry made for it in the first pass. */
struct mset_slot {
	uint64_t h;
	struct kv_ent *pre;
	bool shrink; /* set in place into an entry far larger than the value */
};

/* MSET is atomic on its shard (docs/kv.md): running out of memory part way must change
 * nothing, since an error reply is not logged to the append-only file and keys it changed
 * would revert at the next start. So the first pass allocates every entry a pair needs
 * (its key is absent or its entry too small for the value) before any key changes, and
 * the second, which cannot fail, sets them. A pair without an entry of its own fits the
 * entry the first pass found, and still does in the second: an earlier pair of the same
 * key only replaces it with one made larger than it (or sets it in place). Both passes
 * find a key expired or not (an expired one is overwritten like any other), so that no
 * entry the first pass counted on is deleted by a lazy expiry in between. Entries set in
 * place that are far larger than their value are made smaller afterwards, when memory
 * allows (as SET does), which changes no value. */
/* MSET's pairs set, all or (out of memory: the error in @out) none. */
static bool
mset_all(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	unsigned n = (argc - 1) / 2;
	struct mset_slot stack[16], *sl = n <= 16 ? stack : malloc(n * sizeof(*sl));

	if (!sl) {
		rb_err(out, "%s", e_oom);
		return false;
	}
	for (unsigned k = 0; k < n; k++) {
		const struct resp_arg *key = &argv[1 + 2 * k];
		size_t vlen = argv[2 + 2 * k].len;
		struct kv_ent **pp, *e;

		sl[k].h = kv_hash(key->p, key->len);
		sl[k].shrink = false;
		e = lookup_any(db, key, sl[k].h, &pp);
		sl[k].pre = e && e->vcap >= vlen ? NULL : ent_alloc(key->len + vlen);
		if (!sl[k].pre && !(e && e->vcap >= vlen)) {
			while (k--)
				keel_shard_free(sl[k].pre);
			if (sl != stack)
				free(sl);
			rb_err(out, "%s", e_oom);
			return false;
		}
	}
	for (unsigned k = 0; k < n; k++) {
		const struct resp_arg *key = &argv[1 + 2 * k], *val = &argv[2 + 2 * k];
		struct kv_ent **pp = NULL, *e = lookup_any(db, key, sl[k].h, &pp);

		if (sl[k].pre) {
			ent_put(db, sl[k].pre, key, sl[k].h, e, pp, val->p, val->len, val->len, 0);
			continue;
		}
		if (!e || e->vcap < val->len) { /* cannot be (above): it would write past e */
			keel_log(KEEL_LOG_ERROR, "kv", "%s:%d: MSET found no room for a value",
				 __FILE__, __LINE__);
			abort();
		}
		memcpy(e->data + e->klen, val->p, val->len);
		e->vlen = (uint32_t)val->len;
		e->enc = KV_ENC_SHAPE;
		changed(db, e, false);
		set_expire(db, e, 0);
		sl[k].shrink = e->vcap > 2 * val->len + 64;
	}
	for (unsigned k = 0; k < n; k++) {
		const struct resp_arg *key = &argv[1 + 2 * k];
		struct kv_ent **pp = NULL, *e;

		if (!sl[k].shrink || !(e = lookup_any(db, key, sl[k].h, &pp)) ||
		    e->vcap <= 2 * (size_t)e->vlen + 64)
			continue;
		store_at(db, key, sl[k].h, e, pp, e->data + e->klen, e->vlen, e->vlen, false);
	}
	if (sl != stack)
		free(sl);
	return true;
}

static void
cmd_mset(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	if (mset_all(db, argv, argc, out))
		rb_simple(out, "OK");
}

/* MSETNX: every pair set when none of the keys is there (1), else nothing (0). Atomic as
 * MSET is on its shard; server.c refuses keys on several shards (KV_F_ONE_SHARD). */
static void
cmd_msetnx(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	for (unsigned i = 1; i < argc; i += 2)
		if (lookup(db, &argv[i], NULL)) {
			rb_int(out, 0);
			return;
		}
	if (mset_all(db, argv, argc, out))
		rb_int(out, 1);
}

/* EXPIRE, PEXPIRE (@sec: seconds), and with @abs EXPIREAT, PEXPIREAT (a Unix time). */
static void
expire_generic(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out, bool sec,
	       bool abs, const char *name)
{
	bool nx = false, xx = false, gt = false, lt = false;
	struct kv_ent **pp, *e;
	long long v;
	int64_t at, now = kv_now_ms();

	for (unsigned i = 3; i < argc; i++) { /* the options before the value, as Redis 7 */
		if (arg_is(&argv[i], "NX"))
			nx = true;
		else if (arg_is(&argv[i], "XX"))
			xx = true;
		else if (arg_is(&argv[i], "GT"))
			gt = true;
		else if (arg_is(&argv[i], "LT"))
			lt = true;
		else {
			rb_err(out, "ERR Unsupported option %.*s", kv_err_len(&argv[i]),
			       (const char *)argv[i].p);
			return;
		}
	}
	if (nx && (xx || gt || lt)) {
		rb_err(out, "ERR NX and XX, GT or LT options at the same time are not compatible");
		return;
	}
	if (gt && lt) {
		rb_err(out, "ERR GT and LT options at the same time are not compatible");
		return;
	}
	if (!kv_arg_ll(&argv[2], &v)) {
		rb_err(out, "%s", e_int);
		return;
	}
	if ((sec && (v > LLONG_MAX / 1000 || v < LLONG_MIN / 1000)) ||
	    (!abs && v > 0 && (sec ? v * 1000 : v) > LLONG_MAX - now)) {
		rb_err(out, "ERR invalid expire time in '%s' command", name);
		return;
	}
	at = (abs ? 0 : now) + (sec ? v * 1000 : v);
	e = lookup(db, &argv[1], &pp);
	if (!e) {
		rb_int(out, 0);
		return;
	}
	if ((nx && e->expire_ms) || (xx && !e->expire_ms) ||
	    (gt && (!e->expire_ms || at <= e->expire_ms)) ||
	    (lt && e->expire_ms && at >= e->expire_ms)) {
		rb_int(out, 0);
		return;
	}
	if (at <= now) {
		unlink_ent(db, pp); /* Redis deletes a key given a time in the past */
	} else {
		set_time(db, e, at);
	}
	rb_int(out, 1);
}

static void
cmd_expire(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	expire_generic(db, argv, argc, out, true, false, "expire");
}

static void
cmd_expireat(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	expire_generic(db, argv, argc, out, true, true, "expireat");
}

static void
cmd_pexpireat(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	expire_generic(db, argv, argc, out, false, true, "pexpireat");
}

static void
cmd_pexpire(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	expire_generic(db, argv, argc, out, false, false, "pexpire");
}

/* TTL and PTTL, or (@abs) EXPIRETIME and PEXPIRETIME: the deadline as a Unix time. Seconds
 * are rounded to the nearest, as Redis 7 does for all four. */
static void
ttl_generic(struct kv_db *db, struct resp_arg *argv, struct rbuf *out, bool sec, bool abs)
{
	struct kv_ent *e = lookup_read(db, &argv[1]);
	long long ms;

	if (!e) {
		rb_int(out, -2);
		return;
	}
	if (!e->expire_ms) {
		rb_int(out, -1);
		return;
	}
	ms = abs ? e->expire_ms : e->expire_ms - kv_now_ms();
	if (ms < 0)
		ms = 0;
	rb_int(out, sec ? ms / 1000 + (ms % 1000 >= 500) : ms); /* rounded: +500 could overflow */
}

static void
cmd_ttl(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	ttl_generic(db, argv, out, true, false);
}

static void
cmd_pttl(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	ttl_generic(db, argv, out, false, false);
}

static void
cmd_expiretime(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	ttl_generic(db, argv, out, true, true);
}

static void
cmd_pexpiretime(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	ttl_generic(db, argv, out, false, true);
}

static void
cmd_persist(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	struct kv_ent *e = lookup(db, &argv[1], NULL);

	if (!e || !e->expire_ms) {
		rb_int(out, 0);
		return;
	}
	set_expire(db, e, 0);
	rb_int(out, 1);
}

bool
kv_scan_cursor(const struct resp_arg *a, uint64_t *out)
{
	size_t i = 0, n = a->len;
	uint64_t v = 0;
	bool neg = false;

	/* strtoul: the bytes up to the first NUL; an empty string is 0. */
	for (size_t k = 0; k < n; k++)
		if (!a->p[k]) {
			n = k;
			break;
		}
	if (n && (a->p[0] == '+' || a->p[0] == '-')) {
		neg = a->p[0] == '-';
		i = 1;
	}
	if (i && (i == n || !isdigit(a->p[i])))
		return false; /* a sign alone, or before something else: no number */
	for (; i < n; i++) {
		unsigned d = (unsigned)(a->p[i] - '0');

		if (d > 9 || v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = neg ? (uint64_t)0 - v : v;
	return true;
}

/* The bits of @v in reverse order. */
static uint64_t
rev64(uint64_t v)
{
	v = ((v >> 1) & 0x5555555555555555ull) | ((v & 0x5555555555555555ull) << 1);
	v = ((v >> 2) & 0x3333333333333333ull) | ((v & 0x3333333333333333ull) << 2);
	v = ((v >> 4) & 0x0f0f0f0f0f0f0f0full) | ((v & 0x0f0f0f0f0f0f0f0full) << 4);
	return __builtin_bswap64(v);
}

/* The next cursor after @v over the buckets of @mask: the cursor's bits read from the
 * top of the mask down, counted up by one. */
static uint64_t
rev_next(uint64_t v, uint64_t mask)
{
	return rev64(rev64(v | ~mask) + 1);
}

/* A SCAN call: its filters, and what it gathered. */
struct scan_q {
	const struct resp_arg *pat; /* MATCH (NULL: every key) */
	bool none;                  /* TYPE of a type no key has */
	int64_t now;
	struct rbuf body;
	long long seen, n; /* keys looked at; returned */
};

static void
scan_chain(const struct kv_ent *e, struct scan_q *q)
{
	for (; e; e = e->next) {
		q->seen++;
		if (q->none || (e->expire_ms && e->expire_ms <= q->now))
			continue;
		if (q->pat && !kv_glob(q->pat->p, q->pat->len, e->data, e->klen, false))
			continue;
		rb_bulk(&q->body, e->data, e->klen);
		q->n++;
	}
}

/* One step of a scan of @db's table from cursor @v: the keys of its bucket, and the next
 * cursor (0: the table is done). The buckets are visited in the order of their index's
 * bits reversed (as Redis's SCAN), so that a key present for the whole scan is returned
 * whatever doublings happen between the calls: a bucket's keys move only to buckets that
 * come right after it in that order. While the table doubles, a cursor's old bucket (if
 * not yet moved) and every new bucket it splits into are visited together. */
static uint64_t
scan_step(const struct kv_db *db, uint64_t v, struct scan_q *q)
{
	uint64_t m0, m1;

	if (!db->ob) {
		scan_chain(db->b[v & db->mask], q);
		return rev_next(v, db->mask);
	}
	m0 = db->omask; /* the old, smaller array */
	m1 = db->mask;
	if ((v & m0) >= db->migrate)
		scan_chain(db->ob[v & m0], q);
	do {
		scan_chain(db->b[v & m1], q);
		v = rev_next(v, m1);
	} while (v & (m0 ^ m1)); /* until the count carries into the old array's bits */
	return v;
}

/* SCAN cursor [MATCH pattern] [COUNT n] [TYPE t], on the shard the cursor names (the
 * server routes it): this table's part of the scan, whose cursors the shard count
 * interleaves; the last one of a shard leads to the next shard's first, the last shard's
 * to 0. As Redis: COUNT (default 10) is the keys looked at before the filters, at most
 * ten times as many buckets looked at for them; expired keys and those MATCH or TYPE
 * leaves out are not returned (no type but string exists). */
static void
cmd_scan(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	unsigned nsh = kv_cfg.nshards ? kv_cfg.nshards : 1;
	struct scan_q q = { .now = kv_now_ms() };
	long long count = 10, budget;
	uint64_t c, v, shard, next;
	char num[24];

	if (!kv_scan_cursor(&argv[1], &c)) {
		rb_err(out, "ERR invalid cursor");
		return;
	}
	for (unsigned i = 2; i < argc; i += 2) {
		if (arg_is(&argv[i], "count") && i + 1 < argc) {
			if (!kv_arg_ll(&argv[i + 1], &count)) {
				rb_err(out, "%s", e_int);
				return;
			}
			if (count < 1) {
				rb_err(out, "%s", e_syntax);
				return;
			}
		} else if (arg_is(&argv[i], "match") && i + 1 < argc) {
			q.pat = &argv[i + 1];
			if (q.pat->len == 1 && q.pat->p[0] == '*')
				q.pat = NULL;
		} else if (arg_is(&argv[i], "type") && i + 1 < argc) {
			q.none = !arg_is(&argv[i + 1], "string");
		} else {
			rb_err(out, "%s", e_syntax);
			return;
		}
	}
	shard = c % nsh;
	v = c / nsh;
	budget = count > LLONG_MAX / 10 ? LLONG_MAX : count * 10;
	if (!db->count)
		v = 0; /* nothing to walk (the buckets stay after keys go): done, as Redis's */
	else
		do
			v = scan_step(db, v, &q);
		/* A reply past --send-max ends the step early (SCAN may return fewer keys than
		 * COUNT; its cursor goes on): a COUNT of the whole key space made one of any
		 * size. */
		while (v && budget-- > 0 && q.seen < count &&
		       (!kv_cfg.reply_max || q.body.len < kv_cfg.reply_max));
	if (v)
		next = v * nsh + shard;
	else
		next = shard + 1 < nsh ? shard + 1 : 0;
	rb_arr(out, 2);
	rb_bulk(out, num, (size_t)snprintf(num, sizeof(num), "%llu", (unsigned long long)next));
	rb_arr(out, q.n);
	rb_put(out, q.body.p, q.body.len);
	out->oom |= q.body.oom;
	rb_free(&q.body);
}

static void
cmd_dbsize(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	rb_int(out, (long long)db->count);
}

static void
cmd_flushall(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	if (argc > 2 || (argc == 2 && !arg_is(&argv[1], "SYNC") && !arg_is(&argv[1], "ASYNC"))) {
		rb_err(out, "%s", e_syntax);
		return;
	}
	if (argc == 2 && arg_is(&argv[1], "ASYNC"))
		kv_db_flush_async(db);
	else
		kv_db_flush(db);
	rb_simple(out, "OK");
}

static void
cmd_keys(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	struct rbuf body = { 0 };
	int64_t now = kv_now_ms();
	long long n = 0;

	kv_db_finish_grow(db); /* a pass over every key anyway */
	for (size_t i = 0; i <= db->mask; i++)
		for (struct kv_ent *e = db->b[i]; e; e = e->next) {
			if (e->expire_ms && e->expire_ms <= now)
				continue;
			if (!kv_glob(argv[1].p, argv[1].len, e->data, e->klen, false))
				continue;
			rb_bulk(&body, e->data, e->klen);
			n++;
			/* The key space's names are a reply of any size: refused past --send-max,
			 * as MGET's values are. */
			if (kv_reply_over(&body, 0, 0, false)) {
				rb_put(out, body.p, body.len);
				rb_free(&body);
				return;
			}
		}
	rb_arr(out, n);
	rb_put(out, body.p, body.len);
	out->oom |= body.oom;
	rb_free(&body);
}

/* Replies to KV_R_LOCAL commands come from server.c (fn NULL). */
static const struct kv_cmd cmds[] = {
	{ "ping", -1, KV_F_TX_LOCAL, KV_R_LOCAL, 0, KV_M_NONE, NULL, "fast" },
	{ "echo", 2, KV_F_TX_LOCAL, KV_R_LOCAL, 0, KV_M_NONE, NULL, "fast" },
	{ "wait", 3, KV_F_TX_LOCAL, KV_R_LOCAL, 0, KV_M_NONE, NULL, "noscript" },
	{ "get", 2, 0, KV_R_KEY, 0, KV_M_NONE, cmd_get, "readonly fast" },
	{ "set", -3, KV_F_WRITE | KV_F_DENYOOM, KV_R_KEY, 0, KV_M_NONE, cmd_set, "write denyoom" },
	{ "getset", 3, KV_F_WRITE | KV_F_DENYOOM, KV_R_KEY, 0, KV_M_NONE, cmd_getset,
	  "write denyoom fast" },
	{ "setnx", 3, KV_F_WRITE | KV_F_DENYOOM, KV_R_KEY, 0, KV_M_NONE, cmd_setnx,
	  "write denyoom fast" },
	{ "setex", 4, KV_F_WRITE | KV_F_DENYOOM, KV_R_KEY, 0, KV_M_NONE, cmd_setex,
	  "write denyoom" },
	{ "psetex", 4, KV_F_WRITE | KV_F_DENYOOM, KV_R_KEY, 0, KV_M_NONE, cmd_psetex,
	  "write denyoom" },
	{ "getdel", 2, KV_F_WRITE, KV_R_KEY, 0, KV_M_NONE, cmd_getdel, "write fast" },
	{ "getex", -2, KV_F_WRITE, KV_R_KEY, 0, KV_M_NONE, cmd_getex, "write fast" },
	{ "del", -2, KV_F_WRITE, KV_R_KEYS, 1, KV_M_SUM, cmd_del, "write" },
	{ "unlink", -2, KV_F_WRITE, KV_R_KEYS, 1, KV_M_SUM, cmd_del, "write fast" },
	{ "type", 2, 0, KV_R_KEY, 0, KV_M_NONE, cmd_type, "readonly fast" },
	{ "object", -2, 0, KV_R_KEY2, 0, KV_M_NONE, cmd_object, "" },
	{ "memory", -2, 0, KV_R_KEY2, 0, KV_M_NONE, cmd_memory, "" },
	{ "exists", -2, 0, KV_R_KEYS, 1, KV_M_SUM, cmd_exists, "readonly fast" },
	/* TOUCH counts the keys there, as EXISTS (keel-kv keeps no access times) */
	{ "touch", -2, 0, KV_R_KEYS, 1, KV_M_SUM, cmd_exists, "readonly fast" },
	{ "incr", 2, KV_F_WRITE | KV_F_DENYOOM, KV_R_KEY, 0, KV_M_NONE, cmd_incr,
	  "write denyoom fast" },
	{ "decr", 2, KV_F_WRITE | KV_F_DENYOOM, KV_R_KEY, 0, KV_M_NONE, cmd_decr,
	  "write denyoom fast" },
	{ "incrby", 3, KV_F_WRITE | KV_F_DENYOOM, KV_R_KEY, 0, KV_M_NONE, cmd_incrby,
	  "write denyoom fast" },
	{ "decrby", 3, KV_F_WRITE | KV_F_DENYOOM, KV_R_KEY, 0, KV_M_NONE, cmd_decrby,
	  "write denyoom fast" },
	{ "incrbyfloat", 3, KV_F_WRITE | KV_F_DENYOOM, KV_R_KEY, 0, KV_M_NONE, cmd_incrbyfloat,
	  "write denyoom fast" },
	{ "append", 3, KV_F_WRITE | KV_F_DENYOOM, KV_R_KEY, 0, KV_M_NONE, cmd_append,
	  "write denyoom fast" },
	{ "strlen", 2, 0, KV_R_KEY, 0, KV_M_NONE, cmd_strlen, "readonly fast" },
	{ "getrange", 4, 0, KV_R_KEY, 0, KV_M_NONE, cmd_getrange, "readonly" },
	{ "substr", 4, 0, KV_R_KEY, 0, KV_M_NONE, cmd_getrange, "readonly" },
	{ "setrange", 4, KV_F_WRITE | KV_F_DENYOOM, KV_R_KEY, 0, KV_M_NONE, cmd_setrange,
	  "write denyoom" },
	{ "mget", -2, 0, KV_R_KEYS, 1, KV_M_ARRAY_BY_KEY, cmd_mget, "readonly fast" },
	{ "mset", -3, KV_F_WRITE | KV_F_DENYOOM, KV_R_KEYS, 2, KV_M_OK, cmd_mset, "write denyoom" },
	{ "msetnx", -3, KV_F_WRITE | KV_F_DENYOOM | KV_F_ONE_SHARD, KV_R_KEYS, 2, KV_M_NONE,
	  cmd_msetnx, "write denyoom" },
	{ "rename", 3, KV_F_WRITE | KV_F_ONE_SHARD, KV_R_KEYS, 1, KV_M_NONE, cmd_rename, "write" },
	{ "renamenx", 3, KV_F_WRITE | KV_F_ONE_SHARD, KV_R_KEYS, 1, KV_M_NONE, cmd_renamenx,
	  "write fast" },
	{ "copy", -3, KV_F_WRITE | KV_F_DENYOOM | KV_F_ONE_SHARD | KV_F_KEYS2 | KV_F_READS_FIRST,
	  KV_R_KEYS, 1, KV_M_NONE, cmd_copy, "write denyoom" },
	{ "expire", -3, KV_F_WRITE, KV_R_KEY, 0, KV_M_NONE, cmd_expire, "write fast" },
	{ "pexpire", -3, KV_F_WRITE, KV_R_KEY, 0, KV_M_NONE, cmd_pexpire, "write fast" },
	{ "expireat", -3, KV_F_WRITE, KV_R_KEY, 0, KV_M_NONE, cmd_expireat, "write fast" },
	{ "pexpireat", -3, KV_F_WRITE, KV_R_KEY, 0, KV_M_NONE, cmd_pexpireat, "write fast" },
	{ "ttl", 2, 0, KV_R_KEY, 0, KV_M_NONE, cmd_ttl, "readonly fast" },
	{ "pttl", 2, 0, KV_R_KEY, 0, KV_M_NONE, cmd_pttl, "readonly fast" },
	{ "expiretime", 2, 0, KV_R_KEY, 0, KV_M_NONE, cmd_expiretime, "readonly fast" },
	{ "pexpiretime", 2, 0, KV_R_KEY, 0, KV_M_NONE, cmd_pexpiretime, "readonly fast" },
	{ "persist", 2, KV_F_WRITE, KV_R_KEY, 0, KV_M_NONE, cmd_persist, "write fast" },
	{ "dbsize", 1, 0, KV_R_ALL, 0, KV_M_SUM, cmd_dbsize, "readonly fast" },
	{ "scan", -2, 0, KV_R_CURSOR, 0, KV_M_NONE, cmd_scan, "readonly" },
	{ "randomkey", 1, 0, KV_R_RANDOM, 0, KV_M_NONE, cmd_randomkey, "readonly" },
	{ "flushall", -1, KV_F_WRITE, KV_R_ALL, 0, KV_M_OK, cmd_flushall, "write" },
	{ "flushdb", -1, KV_F_WRITE, KV_R_ALL, 0, KV_M_OK, cmd_flushall, "write" },
	{ "keys", 2, 0, KV_R_ALL, 0, KV_M_CONCAT, cmd_keys, "readonly" },
	{ "info", -1, 0, KV_R_LOCAL, 0, KV_M_NONE, NULL, "loading stale" },
	{ "select", 2, KV_F_TX_LOCAL, KV_R_LOCAL, 0, KV_M_NONE, NULL, "loading stale fast" },
	{ "quit", -1, 0, KV_R_LOCAL, 0, KV_M_NONE, NULL, "fast" },
	{ "shutdown", -1, 0, KV_R_LOCAL, 0, KV_M_NONE, NULL, "admin noscript loading stale" },
	{ "hello", -1, 0, KV_R_LOCAL, 0, KV_M_NONE, NULL, "noscript loading stale fast" },
	{ "time", 1, KV_F_TX_LOCAL, KV_R_LOCAL, 0, KV_M_NONE, NULL, "loading stale fast" },
	{ "auth", -2, 0, KV_R_LOCAL, 0, KV_M_NONE, NULL,
	  "noscript loading stale fast no_auth allow_busy" },
	{ "command", -1, 0, KV_R_LOCAL, 0, KV_M_NONE, NULL, "loading stale" },
	{ "config", -2, 0, KV_R_LOCAL, 0, KV_M_NONE, NULL, "admin loading stale" },
	{ "client", -2, 0, KV_R_LOCAL, 0, KV_M_NONE, kv_client_part, "loading stale" },
	{ "bgrewriteaof", 1, 0, KV_R_ALL, 0, KV_M_REWRITE, kv_aof_cmd_bgrewrite, "admin noscript" },
	/* Transactions (server.c): the queued commands run on one shard, in one go */
	{ "multi", 1, 0, KV_R_LOCAL, 0, KV_M_NONE, NULL, "noscript loading stale fast" },
	{ "exec", 1, 0, KV_R_LOCAL, 0, KV_M_NONE, NULL, "noscript loading stale skip_slowlog" },
	{ "discard", 1, 0, KV_R_LOCAL, 0, KV_M_NONE, NULL, "noscript loading stale fast" },
	{ "reset", 1, 0, KV_R_LOCAL, 0, KV_M_NONE, NULL,
	  "noscript loading stale fast no_auth allow_busy" },
	{ "watch", -2, 0, KV_R_LOCAL, 0, KV_M_NONE, NULL,
	  "noscript loading stale fast allow_busy" },
	{ "unwatch", 1, KV_F_TX_LOCAL, KV_R_LOCAL, 0, KV_M_NONE, NULL,
	  "noscript loading stale fast" },
};

#define NCMDS (sizeof(cmds) / sizeof(cmds[0]))

const struct kv_cmd *
kv_cmd_table(unsigned *n)
{
	*n = NCMDS;
	return cmds;
}

/* A name of up to 8 bytes as one word, lower case: kv_cmd_find then compares one word
 * (and the length) per table entry instead of a string (it runs once per request). */
static uint64_t
name_word(const uint8_t *s, size_t n)
{
	const uint64_t ones = 0x0101010101010101ull, high = ones * 0x80;
	uint64_t w = 0, low, upper;

	memcpy(&w, s, n);
	/* Per byte, without a loop: the high bit set where 'A' <= (byte & 0x7f) <= 'Z',
	 * then 0x20 added there (a byte of 0x80 or more keeps its high bit: it matches no
	 * name either way). */
	low = w & ~high;
	upper = (low + ones * (0x80 - 'A')) & ~(low + ones * (0x80 - 'Z' - 1)) & high;
	return w | upper >> 2;
}

/* The table's names as words (0 for names longer than 8 bytes), set before main() runs,
 * so that no shard writes them. */
static uint64_t cmd_words[NCMDS];
static uint8_t cmd_lens[NCMDS];

__attribute__((constructor)) static void
cmd_words_init(void)
{
	for (unsigned i = 0; i < NCMDS; i++) {
		size_t n = strlen(cmds[i].name);
		cmd_lens[i] = (uint8_t)n;
		cmd_words[i] = n <= 8 ? name_word((const uint8_t *)cmds[i].name, n) : 0;
	}
}

const struct kv_cmd *
kv_cmd_find(const uint8_t *name, size_t len)
{
	uint64_t w;

	if (len == 0 || len > 8) {
		for (unsigned i = 0; i < NCMDS; i++)
			if (cmd_lens[i] == len &&
			    !strncasecmp(cmds[i].name, (const char *)name, len))
				return &cmds[i];
		return NULL;
	}
	w = name_word(name, len);
	for (unsigned i = 0; i < NCMDS; i++)
		if (cmd_words[i] == w && cmd_lens[i] == len)
			return &cmds[i];
	return NULL;
}

bool
kv_cmd_denied(const struct kv_cmd *c)
{
	return (c->flags & KV_F_DENYOOM) && kv_cfg.maxmemory && kv_used_total() > kv_cfg.maxmemory;
}

void
kv_reply_oom(struct kv_db *db, struct rbuf *out)
{
	atomic_fetch_add_explicit(&db->st->oom_rejected, 1, memory_order_relaxed);
	rb_err(out, "OOM command not allowed when used memory > 'maxmemory'.");
}

void
kv_cmd_run(const struct kv_cmd *c, struct kv_db *db, struct resp_arg *argv, unsigned argc,
	   struct rbuf *out)
{
	if (!db->uncounted)
		atomic_fetch_add_explicit(&db->st->commands, 1, memory_order_relaxed);
	c->fn(db, argv, argc, out);
}

void
kv_cmd_exec(const struct kv_cmd *c, struct kv_db *db, struct resp_arg *argv, unsigned argc,
	    struct rbuf *out)
{
	if (kv_cmd_denied(c)) {
		if (!db->uncounted)
			atomic_fetch_add_explicit(&db->st->commands, 1, memory_order_relaxed);
		kv_reply_oom(db, out);
		return;
	}
	kv_cmd_run(c, db, argv, argc, out);
}

void
kv_reply_unknown(struct rbuf *out, struct resp_arg *argv, unsigned argc)
{
	char args[256];
	size_t n = 0;

	args[0] = 0;
	/* Redis 7: up to 128 bytes of arguments, each quoted and followed by a space. */
	for (unsigned i = 1; i < argc && n < 128; i++) {
		int w = snprintf(args + n, sizeof(args) - n, "'%.*s' ",
				 (int)(argv[i].len < 128 - n ? argv[i].len : 128 - n),
				 (const char *)argv[i].p);
		if (w > 0)
			n += (size_t)w < sizeof(args) - n ? (size_t)w : sizeof(args) - n - 1;
	}
	rb_err(out, "ERR unknown command '%.*s', with args beginning with: %s",
	       (int)(argv[0].len < 128 ? argv[0].len : 128), (const char *)argv[0].p, args);
}

void
kv_reply_arity(struct rbuf *out, const struct kv_cmd *c)
{
	rb_err(out, "ERR wrong number of arguments for '%s' command", c->name);
}
