/* SPDX-License-Identifier: MIT */
/*
 * WATCH on the shard that owns the keys: one entry per connection and key, chained by the
 * key's hash, marked when the store changes the key (docs/kv.md, "Transactions").
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kv.h"

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

int
kv_watch_add(struct kv_db *db, uint64_t id, const struct resp_arg *keys, unsigned n)
{
	struct kv_watches *t = &db->watch;
	int64_t now = kv_now_ms();
	int r = 0;

	for (unsigned i = 0; i < n && r == 0; i++) {
		const struct resp_arg *k = &keys[i];
		uint64_t h = kv_hash(k->p, k->len);
		struct kv_watch *w;
		bool other = false; /* another connection watches the key */

		maybe_grow(t);
		if (!t->b) {
			r = -ENOMEM;
			break;
		}
		for (w = t->b[h & t->mask]; w; w = w->next) {
			if (!same_key(w, k->p, k->len, h))
				continue;
			if (w->id == id)
				break;
			other = true;
		}
		if (w) /* watched already: one entry, as Redis keeps one */
			continue;
		w = malloc(sizeof(*w) + k->len);
		if (!w) {
			r = -ENOMEM;
			break;
		}
		w->id = id;
		w->hash = h;
		w->dirty = false;
		w->expired = past_time(kv_db_find_any(db, k, h), now);
		w->klen = (uint32_t)k->len;
		memcpy(w->key, k->p, k->len);
		w->next = t->b[h & t->mask];
		t->b[h & t->mask] = w;
		t->n++;
		t->keys += !other;
	}
	settle(db);
	return r;
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
