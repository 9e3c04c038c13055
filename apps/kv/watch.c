/* SPDX-License-Identifier: MIT */
/*
 * WATCH on the shard that owns the keys: one entry per connection and key, chained by the
 * key's hash, marked when the store changes the key (docs/kv.md, "Transactions").
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"
#include "testfault.h"

struct kv_watch {
	struct kv_watch *next;
	uint64_t id;   /* the connection (kconn.id: unique over the shards) */
	uint64_t hash; /* kv_hash of the key */
	bool dirty;    /* the key changed since WATCH */
	/* At WATCH the key was there but past its time: its deletion is no change, as in
	 * Redis 7 (it was already gone for any reader); cleared by that deletion. */
	bool expired;
	uint32_t klen;
	uint8_t key[];
};

static bool
same_key(const struct kv_watch *w, const uint8_t *k, size_t klen, uint64_t h)
{
	return w->hash == h && w->klen == klen && !memcmp(w->key, k, klen);
}

/* Whether the entry @e (NULL: absent) is there but past its time at @now. */
static bool
past_time(const struct kv_ent *e, int64_t now)
{
	return e && e->expire_ms && e->expire_ms <= now;
}

/* Whether a watch of the key is in @w's chain. */
static bool
watched(const struct kv_watch *w, const uint8_t *k, size_t klen, uint64_t h)
{
	for (; w; w = w->next)
		if (same_key(w, k, klen, h))
			return true;
	return false;
}

/* Take the watch at @p out of its chain and free it. */
static void
unlink_w(struct kv_watches *t, struct kv_watch **p)
{
	struct kv_watch *w = *p;

	*p = w->next;
	t->n--;
	if (!watched(t->b[w->hash & t->mask], w->key, w->klen, w->hash))
		t->keys--;
	free(w);
}

/* After watches began or ended: with none left the buckets go too; the count of keys
 * watched is published for INFO. */
static void
settle(struct kv_db *db)
{
	struct kv_watches *t = &db->watch;

	if (t->b && !t->n) {
		free(t->b);
		t->b = NULL;
		t->mask = 0;
	}
	atomic_store_explicit(&db->st->watched_keys, t->keys, memory_order_relaxed);
}

/* Double the buckets (or make the first 16) when there are more entries than buckets. A
 * failed allocation keeps the chains as they are (longer, still right). */
static void
maybe_grow(struct kv_watches *t)
{
	size_t n = t->b ? (t->mask + 1) * 2 : 16;
	struct kv_watch **nb;

	if (t->b && t->n <= t->mask + 1)
		return;
	nb = calloc(n, sizeof(*nb));
	if (!nb)
		return;
	if (t->b) {
		for (size_t i = 0; i <= t->mask; i++) {
			struct kv_watch *w = t->b[i], *next;
			for (; w; w = next) {
				next = w->next;
				w->next = nb[w->hash & (n - 1)];
				nb[w->hash & (n - 1)] = w;
			}
		}
		free(t->b);
	}
	t->b = nb;
	t->mask = n - 1;
}

/* The entry of connection @id's watch of the key, in @t's chain for @h; NULL when none. */
static struct kv_watch *
find(const struct kv_watches *t, uint64_t id, const uint8_t *k, size_t klen, uint64_t h)
{
	struct kv_watch *w = t->b ? t->b[h & t->mask] : NULL;

	while (w && !(w->id == id && same_key(w, k, klen, h)))
		w = w->next;
	return w;
}

/* Free the chain of entries from @w on (linked by next, in no table). */
static void
free_chain(struct kv_watch *w)
{
	for (struct kv_watch *next; w; w = next) {
		next = w->next;
		free(w);
	}
}

int
kv_watch_add(struct kv_db *db, uint64_t id, const struct resp_arg *keys, unsigned n)
{
	struct kv_watches *t = &db->watch;
	struct kv_watch *fresh = NULL, **tail = &fresh, *w, *next;
	int64_t now = kv_now_ms();

	/* Every new entry is made before any goes in: a WATCH without the memory for all of
	 * them watches none of its keys here. The connection's list keeps them (watch_cmd
	 * adds them before this answers), but EXEC and UNWATCH end nothing for a key with no
	 * entry here, so the refused WATCH watches nothing. A key named twice gets two entries
	 * here and one in the table (below). */
	for (unsigned i = 0; i < n; i++) {
		const struct resp_arg *k = &keys[i];
		uint64_t h = kv_hash(k->p, k->len);

		if (find(t, id, k->p, k->len, h)) /* watched already: one entry, as Redis keeps */
			continue;
		w = kv_test_fault("watch-entry-oom") ? NULL : malloc(sizeof(*w) + k->len);
		if (!w) {
			free_chain(fresh);
			return -ENOMEM;
		}
		w->id = id;
		w->hash = h;
		w->dirty = false;
		w->expired = past_time(kv_db_find_any(db, k, h), now);
		w->klen = (uint32_t)k->len;
		memcpy(w->key, k->p, k->len);
		w->next = NULL;
		*tail = w;
		tail = &w->next;
	}
	for (w = fresh; w; w = next) {
		bool other = false; /* another connection watches the key */
		struct kv_watch *o;

		next = w->next;
		maybe_grow(t);
		if (!t->b) { /* no table and no memory for one: nothing went in yet */
			free_chain(w);
			return -ENOMEM;
		}
		for (o = t->b[w->hash & t->mask]; o; o = o->next) {
			if (!same_key(o, w->key, w->klen, w->hash))
				continue;
			if (o->id == id)
				break;
			other = true;
		}
		if (o) { /* the same key earlier in this WATCH */
			free(w);
			continue;
		}
		w->next = t->b[w->hash & t->mask];
		t->b[w->hash & t->mask] = w;
		t->n++;
		t->keys += !other;
	}
	settle(db);
	return 0;
}

bool
kv_watch_end(struct kv_db *db, uint64_t id, const struct resp_arg *keys, unsigned n)
{
	struct kv_watches *t = &db->watch;
	int64_t now = kv_now_ms();
	bool changed = false;

	for (unsigned i = 0; i < n && t->b; i++) {
		const struct resp_arg *k = &keys[i];
		uint64_t h = kv_hash(k->p, k->len);
		struct kv_watch **p = &t->b[h & t->mask], *w;

		while ((w = *p)) {
			if (w->id != id || !same_key(w, k->p, k->len, h)) {
				p = &w->next;
				continue;
			}
			if (w->dirty) {
				changed = true;
			} else if (!w->expired) { /* live at WATCH: expired since is a change */
				changed |= past_time(kv_db_find_any(db, k, h), now);
			}
			unlink_w(t, p);
		}
	}
	settle(db);
	return changed;
}

void
kv_watch_end_id(struct kv_db *db, uint64_t id)
{
	struct kv_watches *t = &db->watch;

	for (size_t i = 0; t->b && i <= t->mask; i++) {
		struct kv_watch **p = &t->b[i];

		while (*p)
			if ((*p)->id == id)
				unlink_w(t, p);
			else
				p = &(*p)->next;
	}
	settle(db);
}

static void
touch(struct kv_watch *w, bool gone)
{
	if (w->expired && gone) /* deleted after its time: no change, as in Redis 7 */
		w->expired = false;
	else
		w->dirty = true;
}

void
kv_watch_touch(struct kv_db *db, const uint8_t *key, size_t klen, uint64_t h, bool gone)
{
	struct kv_watches *t = &db->watch;

	if (!t->b)
		return;
	for (struct kv_watch *w = t->b[h & t->mask]; w; w = w->next)
		if (same_key(w, key, klen, h))
			touch(w, gone);
}

void
kv_watch_flush(struct kv_db *db)
{
	struct kv_watches *t = &db->watch;

	if (!t->b)
		return;
	for (size_t i = 0; i <= t->mask; i++)
		for (struct kv_watch *w = t->b[i]; w; w = w->next) {
			struct resp_arg k = { .p = w->key, .len = w->klen };

			/* FLUSHALL of an absent key is no change */
			if (kv_db_find_any(db, &k, w->hash))
				touch(w, true);
		}
}

void
kv_watch_fini(struct kv_db *db)
{
	struct kv_watches *t = &db->watch;

	if (!t->b)
		return;
	for (size_t i = 0; i <= t->mask; i++) {
		struct kv_watch *w = t->b[i], *next;
		for (; w; w = next) {
			next = w->next;
			free(w);
		}
	}
	free(t->b);
	t->b = NULL;
	t->mask = t->n = t->keys = 0;
	settle(db);
}
