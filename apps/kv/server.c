// SPDX-License-Identifier: MIT
/*
 * keel-kv connections: parsing, routing, cross-shard hand-off, in-order replies.
 *
 * A connection lives on the shard that accepted it (its home). Each request is parsed
 * there. A key is owned by shard kv_owner_key(key); a request for a key owned here runs
 * at once, one for another shard's key goes there with keel_call (the request's bytes,
 * copied, or exported from the receive buffer with --handoff export) and its reply comes
 * back to the home shard in the call's completion. Replies leave in request order: a
 * request whose reply is not ready yet holds a place (struct pend) in the connection's
 * queue, and replies behind it wait in the queue too. Per connection, requests reach each
 * shard in the order sent (a local one runs at once, remote ones travel through one FIFO
 * queue per shard pair), so each key sees the connection's commands in order.
 */
#include "server.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <keel/keel.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kv.h"
#include "testfault.h"

struct kv_config kv_cfg = { .max_bulk = RESP_MAX_BULK_DEFAULT,
			    .query_max = 1ull << 30,
			    .maxclients = 10000,
			    .nshards = 1,
			    .fsync = KV_FSYNC_EVERYSEC,
			    .auto_rw_pct = 100,
			    .auto_rw_min = 64ull << 20,
			    .dir = "." };
struct kv_stats kv_stats[KEEL_MAX_SHARDS];
static uint16_t kv_port;
/* Clients open over every shard, each from its on_open to its on_close (--maxclients). */
static _Atomic uint32_t clients_open;
static int64_t kv_start_ms;

/* A reply place in a connection's queue. */
struct pend {
	struct pend *next;
	struct kconn *kc;           /* NULL: the connection closed while this was away */
	struct pend *oprev, *onext; /* ... then on its shard's orphans, until its reply */
	struct rbuf rep;
	size_t counted; /* of rep's bytes, those in kc->pend_bytes (a reply made here) */
	bool done;
	/* A fan-out (KV_R_KEYS split over shards, KV_R_ALL): one part per shard. */
	const struct kv_cmd *cmd;
	unsigned parts_left;
	struct rbuf *parts;  /* [nshards] */
	uint16_t *key_owner; /* KV_M_ARRAY_BY_KEY: the owner of each key, in order */
	unsigned nkeys;
	/* A command run once the replies before it are in (run_later): INFO with its
	 * arguments, or SHUTDOWN */
	enum { LATER_NONE, LATER_INFO, LATER_SHUTDOWN } later_kind;
	struct resp_arg *later;
	unsigned nlater;
	/* WAIT's timeout (kconn.wait names its pend); none: it waits until the client goes or
	 * half-closes */
	struct keel_timer *wait_timer;
};

struct kconn {
	struct keel_conn *c;
	struct kconn *prev, *next; /* the shard's connections */
	uint64_t id;
	/* Input not yet parsed: @in_len bytes from @in + @in_off, the start of a request not
	 * yet whole, or requests held (hold_input). Parsed requests advance @in_off; the rest is
	 * moved to @in's start once it is no longer than what was parsed before it
	 * (in_consume), or before the buffer grows (in_append), so the bytes moved stay within
	 * twice those received (input_moved in INFO shards). Moved after every pass, held
	 * input was copied once per pass, a pass a request behind large replies: O(n^2). */
	uint8_t *in;
	size_t in_off, in_len, in_cap, in_need;
	struct resp_resume in_resume; /* how far resp_parse checked it */
	struct rbuf out;              /* replies ready to queue on the connection */
	struct pend *head, *tail;
	unsigned npend;
	uint64_t pend_bytes;    /* bytes of replies made here waiting behind the head pend */
	struct pend *pend_open; /* the pend reply_to gave the request being run */
	bool closing;           /* a protocol error or QUIT: no more requests; close once replied */
	bool aborted;           /* aborted (conn_fail, past a limit): nothing it asked for runs
				 * from now on, a put-off SHUTDOWN or requests waiting for room */
	bool refused;           /* past --maxclients: told so, closed, in no count */
	bool paused;            /* this code paused reading (too many replies outstanding, or a
				 * request waits for room in a full cross-shard queue) */
	/* Requests for other shards refused with -EAGAIN (a full queue), and every one
	 * for another shard after them, in order: sent once there is room. */
	struct kmsg *bq_head, *bq_tail;
	bool bq_waiting; /* a keel_msg_wait_room() callback will come */
	bool dead;       /* closed while waiting: the callback frees it */
	/* Requests received but not parsed while the replies already made are over the
	 * limits (over_limit): they wait in @in, reading is paused, and resume_cb parses them
	 * once the replies drain. */
	bool held;
	/* A command waits for the replies before it (run_later): nothing after it is parsed
	 * until it has run, as Redis runs a connection's commands one after another */
	bool barrier;
	struct pend *wait;  /* a WAIT's reply waiting for its timeout (wait_cmd): the barrier */
	bool resume_queued; /* resume_cb is deferred (a closed connection is freed there) */
	bool eof;           /* the client half-closed: close once every request is answered */
	bool parsing;       /* inside process(): requests it has not reached may remain */
	/* A reply buffer larger than the high watermark, queued on the connection in pieces
	 * as its queue drains (send_big): a reading client gets a reply of any size, while
	 * --send-max still bounds what one that does not read makes keel queue. */
	struct keel_slice big;
	uint32_t big_off;
	uint64_t idle_queued; /* keel_conn_queued at the last idle check */
	int64_t last_ms;
	/* Its accept and its last receive, on keel_now_ns()'s clock (CLIENT LIST's age and
	 * idle: the loop pass's time, no clock read of their own) */
	uint64_t born_ns, active_ns;
	/* Its last command (CLIENT LIST's cmd): NULL before any; with CLIENT, CONFIG and
	 * COMMAND the subcommand too, lower case ("client|list") */
	const struct kv_cmd *last_cmd;
	char last_sub[16];
	char *name;
	size_t name_len; /* its bytes, counted in client_mem: up to --proto-max-bulk-len */
	struct ktx *tx;  /* MULTI: the commands queued for EXEC */
	/* WATCH: the keys watched, as a request's arguments (RESP bulk strings, wn of them),
	 * all on shard watch_owner, whose table holds the watches (watch.c) */
	struct rbuf wkeys;
	uint32_t *wset; /* ... each once: the offset + 1 of each in wkeys, hashed (wset_*) */
	uint32_t wset_cap;
	unsigned wn, watch_owner;
	bool watching;
	struct resp_arg *argv;
	unsigned argv_cap;
	uint8_t *scratch;
	size_t scratch_cap;
	uint64_t mem;  /* what it held at its last count (client_mem), in the shard's sum */
	bool evicted;  /* closed past --maxmemory-clients: out of the sum */
	bool no_evict; /* CLIENT NO-EVICT on: counted, never closed for --maxmemory-clients */
};

/* A transaction (MULTI ... EXEC): the requests queued, as received, and the one shard they
 * all run on, in one go (a shard runs a callback to completion, so nothing of another
 * connection comes between them). */
struct ktx {
	struct rbuf q;
	unsigned n;
	int owner;                    /* the shard every key so far lives on; -1: no key yet */
	bool dirty;                   /* a command was refused while queued: EXEC aborts */
	bool write;                   /* --appendfsync always: EXEC's reply waits for the disk */
	const struct kv_cmd *denyoom; /* one that --maxmemory may refuse, checked at EXEC */
	uint64_t wid; /* EXEC of a connection that watches (its id): q begins with the keys */
};

/* Per shard. */
struct kv_shard {
	struct kv_db db;
	struct kconn *conns;
	uint64_t client_mem; /* the sum of its clients' mem (published in kv_stats) */
	uint64_t next_id;
	struct keel_timer *sweep, *idle;
	/* Replies that could not be sent home for want of memory (keel_send or
	 * keel_msg_wait_room -ENOMEM), retried by the sweep timer every millisecond: the home
	 * connection waits for each (linked through kmsg.next, unused on this shard). */
	struct kmsg *home_retry;
	/* The watches of closed connections, to end on other shards, that could not be sent
	 * for want of memory: retried with home_retry (watch_gone). */
	struct wgone *gone_retry;
	/* Pends whose connection closed while their replies were away: each is freed when
	 * its reply comes back, and those whose reply never comes (a stop refused to send it
	 * home) by kv_fini, once every shard has ended. */
	struct pend *orphans;
	bool stopped; /* on_stop ran */
	/* Parsing of requests handed over by other shards. */
	struct resp_arg *argv;
	unsigned argv_cap;
	uint8_t *scratch;
	size_t scratch_cap;
};
static struct kv_shard shards[KEEL_MAX_SHARDS];

/* Outstanding replies per connection before reading pauses (a client that pipelines
 * without reading cannot make the home shard hold more than this many). */
#define PEND_MAX 4096

/* The hand-off of one request (or one part of a fan-out) to the owner shard. */
struct kmsg {
	struct kmsg *next; /* in kconn.bq */
	struct pend *pend;
	unsigned part;        /* the owner (the part of a fan-out) */
	unsigned home;        /* the shard the reply goes to */
	struct keel_slice sl; /* --handoff export: the request's bytes; else buf NULL */
	const uint8_t *req;   /* the request's bytes */
	size_t req_len;
	struct rbuf rep;
	size_t counted;  /* of rep's bytes, those in its pend's counted while it waits for a
			  * sync (always): exec_held's, or count_held's on another shard */
	bool admitted;   /* a part of a command --maxmemory admitted where it was received */
	bool tx_write;   /* a transaction's writes: its reply waits as a write's would */
	bool fan_part;   /* a fan-out's part: counted where the command was received */
	unsigned random; /* a RANDOMKEY: the shards tried so far (random_again) */
	unsigned tx;     /* a transaction: this many requests, the reply their array */
	/* WATCH: the request is the keys to watch (W_ADD), or to stop watching (W_END, no
	 * reply); W_EXEC: a transaction (of tx requests, maybe none) whose first request is
	 * the keys its connection watches: it runs only if none changed (tx_run). */
	enum { W_NONE, W_ADD, W_END, W_EXEC } wop;
	uint64_t wid;   /* the connection (kconn.id) */
	uint8_t copy[]; /* copied request bytes */
};

static unsigned
self(void)
{
	return keel_shard_id(keel_this_shard());
}

static void
stat_add(_Atomic uint64_t *c, long long d)
{
	atomic_fetch_add_explicit(c, (uint64_t)d, memory_order_relaxed);
}

uint64_t
kv_used_total(void)
{
	uint64_t t = 0;

	for (unsigned i = 0; i < kv_cfg.nshards; i++)
		t += atomic_load_explicit(&kv_stats[i].used_memory, memory_order_relaxed);
	return t;
}

void
kv_set_port(uint16_t port)
{
	kv_port = port;
}

/* Grow a parser's arrays as resp_parse asks (bounded by the request's own bytes). */
static int
parse_grow(long r, struct resp_req *req, struct resp_arg **argv, unsigned *cap, uint8_t **scr,
	   size_t *scap)
{
	if (r == RESP_NEED_ARGV) {
		struct resp_arg *a;

		/* Only ever grows: a realloc to 0 would free the array it still names. */
		if (req->need <= *cap || req->need > INT_MAX)
			return -ENOMEM;
		a = realloc(*argv, req->need * sizeof(*a));
		if (!a)
			return -ENOMEM;
		stat_add(&kv_stats[self()].args_bytes, (int64_t)((req->need - *cap) * sizeof(*a)));
		*argv = a;
		*cap = (unsigned)req->need;
	} else {
		uint8_t *s = realloc(*scr, req->need);
		if (!s)
			return -ENOMEM;
		stat_add(&kv_stats[self()].args_bytes, (int64_t)(req->need - *scap));
		*scr = s;
		*scap = req->need;
	}
	req->argv = *argv;
	req->cap = *cap;
	req->scratch = *scr;
	req->scratch_cap = *scap;
	return 0;
}

/* After a request: argument arrays grown past this for a large one are freed, so that a
 * connection (or a shard's hand-over parser) does not keep its largest request's size. */
#define ARGV_KEEP    1024
#define SCRATCH_KEEP (64u * 1024)

static void
args_free(struct resp_arg **argv, unsigned *cap, uint8_t **scr, size_t *scap, unsigned keep,
	  size_t scratch_keep)
{
	if (*cap > keep) {
		stat_add(&kv_stats[self()].args_bytes, -(int64_t)(*cap * sizeof(**argv)));
		free(*argv);
		*argv = NULL;
		*cap = 0;
	}
	if (*scap > scratch_keep) {
		stat_add(&kv_stats[self()].args_bytes, -(int64_t)*scap);
		free(*scr);
		*scr = NULL;
		*scap = 0;
	}
}

static void
args_shrink(struct resp_arg **argv, unsigned *cap, uint8_t **scr, size_t *scap)
{
	args_free(argv, cap, scr, scap, ARGV_KEEP, SCRATCH_KEEP);
}

/* Replies. */

static void flush_out(struct kconn *kc);
static void resume_later(struct kconn *kc);

static struct pend *
pend_new(struct kconn *kc)
{
	struct pend *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->kc = kc;
	if (kc->tail)
		kc->tail->next = p;
	else
		kc->head = p;
	kc->tail = p;
	kc->npend++;
	if (kc->npend >= PEND_MAX && !kc->paused) {
		kc->paused = true;
		keel_conn_pause_read(kc->c);
	}
	return p;
}

static void
pend_free(struct pend *p)
{
	rb_free(&p->rep);
	if (p->parts) {
		for (unsigned i = 0; i < kv_cfg.nshards; i++)
			rb_free(&p->parts[i]);
		free(p->parts);
	}
	free(p->key_owner);
	free(p->later);
	if (p->wait_timer)
		keel_timer_destroy(p->wait_timer);
	free(p);
}

/* Where the next reply goes: straight out when nothing waits before it. NULL: no memory
 * (the connection is aborted). */
static struct rbuf *
reply_to(struct kconn *kc)
{
	struct pend *p;

	if (!kc->head)
		return &kc->out;
	p = pend_new(kc);
	if (!p)
		return NULL;
	p->done = true;
	kc->pend_open = p; /* its bytes are counted once made (pend_count) */
	return &p->rep;
}

/* A reply made here went to a pend (reply_to): its bytes count toward the connection's
 * limits as the bytes queued on it do, else a slow reply at the head (an fsync, another
 * shard) let every reply behind it pile up in memory, unbounded but for their count. */
static void
pend_count(struct kconn *kc)
{
	struct pend *p = kc->pend_open;

	if (!p)
		return;
	kc->pend_open = NULL;
	p->counted = p->rep.len;
	kc->pend_bytes += p->counted;
}

/* What paused reading went down (replies outstanding, hand-offs waiting for room): read
 * again unless the input is held too, and parse what is held (resume_later checks). */
static void
unpause(struct kconn *kc)
{
	if (kc->paused && kc->npend < PEND_MAX / 2 && !kc->bq_head) {
		kc->paused = false;
		if (!kc->held)
			keel_conn_resume_read(kc->c);
	}
	resume_later(kc);
}

/* Move the replies that are ready, in order, to the output, while the connection's queue
 * and the output are not above the high watermark (so one reply at least when both are
 * empty; after flush_out the queue is above it, and on_writable follows):
 * the rest wait, counted in pend_bytes, for on_writable. Replies another shard made come
 * back all at once; moved all at once, a pipeline of large remote GETs passed --send-max
 * and a client reading as fast as it could was reset. */
static void later_run(struct kconn *kc, struct pend *p);

static void
drain(struct kconn *kc)
{
	uint64_t queued = keel_conn_queued(kc->c); /* only flush_out, after, changes it */
	struct pend *p;

	while ((p = kc->head) && (p->done || p->later_kind)) {
		if (p->later_kind) /* every reply before it is in: run now (run_later) */
			later_run(kc, p);
		/* Above the watermark, not at it: keel calls on_writable for a queue that went
		 * above it (net/conn.c), so stopping at it exactly waited for ever. */
		if (kc->out.len + queued > kv_cfg.high_watermark)
			break;
		kc->pend_bytes -= p->counted;
		rb_put(&kc->out, p->rep.p, p->rep.len);
		kc->out.oom |= p->rep.oom;
		kc->head = p->next;
		if (!kc->head)
			kc->tail = NULL;
		kc->npend--;
		pend_free(p);
	}
	unpause(kc);
}

static void
release_heap(void *data, uint32_t cap, void *arg)
{
	free(data);
}

/* Replies of at least this many bytes are sent from their own heap memory (wrapped as an
 * external buffer) rather than copied into registered buffers: a 512 MiB value must not
 * need 512 MiB of the shard's registered memory (--memory). */
#define WRAP_MIN (64u * 1024)

#define BIG_PIECE (256u * 1024)

/* The replies cannot all be queued (@err): the connection is aborted, nothing more parsed. */
static void
conn_fail(struct kconn *kc, int err)
{
	keel_conn_abort(kc->c, err);
	kc->closing = true;
	kc->aborted = true;
}

/* Queue the rest of kc->big, a piece at a time, until the connection's queue passes the
 * high watermark (keel_conn_send returns 1: on_writable follows). Returns whether all of it
 * is queued. */
static bool
send_big(struct kconn *kc)
{
	while (kc->big.buf) {
		uint32_t left = kc->big.len - kc->big_off, n = left < BIG_PIECE ? left : BIG_PIECE;
		struct keel_slice piece;
		int r = keel_slice_sub(&kc->big, kc->big_off, n, &piece);

		if (r == 0) {
			r = keel_conn_send(kc->c, &piece);
			if (r < 0)
				keel_slice_put(&piece);
		}
		if (r < 0) { /* closing (the rest goes with it), or no memory */
			keel_slice_put(&kc->big);
			memset(&kc->big, 0, sizeof(kc->big));
			if (r != -EPIPE)
				conn_fail(kc, r);
			return true;
		}
		kc->big_off += n;
		if (kc->big_off == kc->big.len) {
			keel_slice_put(&kc->big);
			memset(&kc->big, 0, sizeof(kc->big));
		}
		if (r == 1)
			break;
	}
	return !kc->big.buf;
}

/* Queue kc->out on the connection, copied into buffers of the shard's allocator, or
 * handed over whole when large (in pieces when larger than the high watermark). */
/* The connection may close now: every reply made is queued (no pending reply, no large one
 * still going out in pieces, nothing left in kc->out), and either no request is taken any
 * more (QUIT, a protocol error: closing) or the client half-closed and nothing it sent
 * waits to run (held input, a barrier, requests waiting for room in a queue). */
static bool
close_due(const struct kconn *kc)
{
	/* Not from a flush inside process(): the requests it has still to run are in no
	 * count, and their replies would be dropped (process's caller flushes after it). */
	if (kc->head || kc->big.buf || kc->out.len || kc->parsing)
		return false;
	return kc->closing || (kc->eof && !kc->held && !kc->barrier && !kc->bq_head);
}

/* What a client holds: its request and reply buffers, replies made and not yet sent (on
 * this shard, queued on its connection, a large one's rest), its transaction's queue, its
 * watched keys, its argument arrays and its name. Redis 7 counts a client's buffers alike
 * for maxmemory-clients (not its name: one of 512 MB set by CLIENT SETNAME went uncounted
 * here, where nothing else bounds it). */
static uint64_t
client_mem(const struct kconn *kc)
{
	return sizeof(*kc) + kc->in_cap + kc->name_len + kc->out.cap + kc->pend_bytes +
	       (uint64_t)kc->npend * sizeof(struct pend) + keel_conn_queued(kc->c) +
	       (kc->big.buf ? kc->big.len - kc->big_off : 0) + (kc->tx ? kc->tx->q.cap : 0) +
	       kc->wkeys.cap + (uint64_t)kc->wset_cap * sizeof(*kc->wset) +
	       (uint64_t)kc->argv_cap * sizeof(*kc->argv) + kc->scratch_cap;
}

static uint64_t
clients_mem_total(void)
{
	uint64_t t = 0;

	for (unsigned i = 0; i < kv_cfg.nshards; i++)
		t += atomic_load_explicit(&kv_stats[i].client_mem, memory_order_relaxed);
	return t;
}

static void
client_mem_set(struct kv_shard *ks, struct kconn *kc, uint64_t m)
{
	ks->client_mem = ks->client_mem - kc->mem + m;
	kc->mem = m;
	atomic_store_explicit(&kv_stats[self()].client_mem, ks->client_mem, memory_order_relaxed);
}

/* Count every client of this shard again: a count taken at a flush holds the replies then
 * queued, which the kernel takes later without a flush to say so (on_writable comes only
 * past the high watermark). */
static void
clients_recount(struct kv_shard *ks)
{
	for (struct kconn *kc = ks->conns; kc; kc = kc->next)
		if (!kc->evicted && !kc->refused)
			client_mem_set(ks, kc, client_mem(kc));
}

/* Past --maxmemory-clients: a shard over its share of it (maxmemory-clients / shards)
 * while the clients of every shard together are over it closes its largest client, as
 * Redis 7 closes the largest, and again until it is not. A shard under its share closes
 * none: the sum can only pass the limit where some shard is over its share, and that one
 * acts (a shard's own clients may use more than its share while the others use less).
 * Its clients are counted again first, so a client whose replies the kernel has taken
 * since its last flush is not closed for them; the other shards' sums are at most a sweep
 * (100 ms) old (on_sweep counts theirs again). */
static void
clients_evict(struct kv_shard *ks)
{
	uint64_t share = kv_cfg.maxmemory_clients / kv_cfg.nshards;

	/* A shard over its share while the sum is under the limit is allowed (clients spread
	 * unevenly): the sum is read before its clients are walked, or each of its flushes
	 * walked them all for nothing. */
	if (clients_mem_total() <= kv_cfg.maxmemory_clients)
		return;
	clients_recount(ks);
	while (ks->client_mem > share && clients_mem_total() > kv_cfg.maxmemory_clients) {
		struct kconn *big = NULL;

		for (struct kconn *kc = ks->conns; kc; kc = kc->next)
			if (!kc->evicted && !kc->refused && !kc->no_evict &&
			    (!big || kc->mem > big->mem))
				big = kc;
		if (!big)
			return;
		client_mem_set(ks, big, 0);
		big->evicted = true;
		stat_add(&kv_stats[self()].evicted_clients, 1);
		keel_log(KEEL_LOG_INFO, "kv",
			 "client id %llu closed: the clients hold more than --maxmemory-clients "
			 "%llu bytes together, and it held the most on this shard",
			 (unsigned long long)big->id, (unsigned long long)kv_cfg.maxmemory_clients);
		conn_fail(big, -ENOBUFS);
	}
}

/* Count what @kc holds now, and close clients past --maxmemory-clients. */
static void
client_mem_count(struct kconn *kc)
{
	struct kv_shard *ks = &shards[self()];

	if (kc->evicted || kc->refused)
		return;
	client_mem_set(ks, kc, client_mem(kc));
	if (kv_cfg.maxmemory_clients && ks->client_mem > kv_cfg.maxmemory_clients / kv_cfg.nshards)
		clients_evict(ks);
}

static void
flush_out_(struct kconn *kc)
{
	struct keel_alloc *a = keel_shard_alloc();
	size_t max = keel_alloc_buf_max(a), off = 0;

	if (kc->big.buf && !send_big(kc))
		return; /* what follows waits behind it, in kc->out */
	if (kc->out.oom) {
		rb_free(&kc->out);
		conn_fail(kc, -ENOMEM);
		return;
	}
	if (kc->out.len >= WRAP_MIN && kc->out.len <= UINT32_MAX) {
		struct keel_slice s;
		int r = keel_buf_wrap(a, kc->out.p, (uint32_t)kc->out.len, release_heap, NULL, &s);
		if (r < 0) {
			rb_free(&kc->out);
			conn_fail(kc, r);
			return;
		}
		memset(&kc->out, 0, sizeof(kc->out)); /* the memory is the slice's now */
		if (s.len > kv_cfg.high_watermark) {
			kc->big = s;
			kc->big_off = 0;
			if (!send_big(kc))
				return;
		} else if ((r = keel_conn_send(kc->c, &s)) < 0) {
			keel_slice_put(&s);
			if (r != -EPIPE) { /* no queue slot: replies would be lost, not late */
				conn_fail(kc, r);
				return;
			}
		}
		off = 0;
	}
	while (off < kc->out.len) {
		size_t n = kc->out.len - off < max ? kc->out.len - off : max;
		struct keel_slice s;
		int r = keel_buf_alloc(a, n, &s);
		if (r < 0) {
			rb_free(&kc->out);
			conn_fail(kc, r);
			return;
		}
		memcpy(s.data, kc->out.p + off, n);
		r = keel_conn_send(kc->c, &s);
		if (r < 0) {
			keel_slice_put(&s);
			if (r != -EPIPE) /* as above */
				conn_fail(kc, r);
			break; /* closing: the rest is dropped with it */
		}
		off += n;
	}
	kc->out.len = 0;
	if (kc->out.cap > WRAP_MIN)
		rb_free(&kc->out); /* a large reply's buffer is not kept per connection */
	if (close_due(kc))
		keel_conn_close(kc->c);
}

/* Every path that grows or drains what a client holds ends here (on_data, a reply from
 * another shard, on_writable, a resume): it is counted here too. */
static void
flush_out(struct kconn *kc)
{
	flush_out_(kc);
	client_mem_count(kc);
}

/* The replies this connection has made and not yet had acknowledged are over the limits:
 * too many outstanding, waiting for room in a cross-shard queue, or more bytes than the
 * high watermark (made here, queued on the connection). */
static bool
over_limit_q(const struct kconn *kc, uint64_t queued)
{
	return kc->npend >= PEND_MAX || kc->bq_head || kc->big.buf ||
	       kc->out.len + kc->pend_bytes + queued > kv_cfg.high_watermark ||
	       (kv_cfg.aof && kv_aof_backlog_full());
}

/* Reply bytes that may be made before the limits are looked at again. */
static size_t
out_room(uint64_t queued)
{
	uint64_t left = queued < kv_cfg.high_watermark ? kv_cfg.high_watermark - queued : 0;

	return left < WRAP_MIN ? (size_t)left : WRAP_MIN;
}

static bool
over_limit(const struct kconn *kc)
{
	return over_limit_q(kc, keel_conn_queued(kc->c));
}

static void resume_cb(void *arg);

/* Parse no more of what was received: the rest waits in kc->in, reading pauses. @limits:
 * stopped at the reply limits (counted in input_holds), not at a barrier. */
static void
hold_input(struct kconn *kc, bool limits)
{
	if (kc->held)
		return;
	kc->held = true;
	kc->in_need = 0; /* a whole request may start there: parse it at once when resumed */
	if (limits)
		stat_add(&kv_stats[self()].input_holds, 1);
	/* Behind a WAIT the connection is still read (into @in, within --client-query-buffer-
	 * limit): its EOF answers the WAIT, its reset ends it, where a WAIT for ever would
	 * otherwise keep a client that left. */
	if (!kc->wait)
		keel_conn_pause_read(kc->c);
}

/* Something that over_limit reads went down: parse the held requests, from the loop
 * (this may run inside a reply's callback, or inside process itself). */
static void
resume_later(struct kconn *kc)
{
	if (!kc->held || kc->resume_queued || kc->closing)
		return;
	if (keel_defer(resume_cb, kc) < 0) {
		kc->out.oom = true; /* no memory: the connection is aborted (flush_out) */
		flush_out(kc);
		return;
	}
	kc->resume_queued = true;
}

void
kv_resume_held(void)
{
	for (struct kconn *kc = shards[self()].conns; kc; kc = kc->next)
		resume_later(kc);
}

/* Fan-out merging. */

static bool
part_error(struct pend *p, struct rbuf *out)
{
	for (unsigned s = 0; s < kv_cfg.nshards; s++)
		if (p->parts[s].len && p->parts[s].p[0] == '-') {
			rb_put(out, p->parts[s].p, p->parts[s].len);
			return true;
		}
	return false;
}

/* BGREWRITEAOF's parts: "started" when at least one shard started a rewrite and each other
 * one either did too or was rewriting already (the first error of any shard said "already
 * in progress" while the others' rewrites ran); a shard's other error (no file, no memory)
 * is the reply; every shard rewriting already: Redis's error for that. */
static void
merge_rewrite(struct pend *p, struct rbuf *out)
{
	static const char busy[] = "-" KV_AOF_REWRITE_BUSY "\r\n";
	bool started = false;

	for (unsigned s = 0; s < kv_cfg.nshards; s++) {
		const struct rbuf *b = &p->parts[s];

		if (b->len == sizeof(busy) - 1 && !memcmp(b->p, busy, b->len))
			continue;
		if (b->len && b->p[0] == '-') {
			rb_put(out, b->p, b->len);
			return;
		}
		started = true;
	}
	if (started)
		rb_simple(out, "Background append only file rewriting started");
	else
		rb_err(out, KV_AOF_REWRITE_BUSY);
}

static long long
arr_count(const struct rbuf *b, size_t *hdr)
{
	const uint8_t *cr = b->len ? memchr(b->p, '\r', b->len) : NULL;

	if (!cr || b->p[0] != '*') {
		*hdr = 0;
		return 0;
	}
	*hdr = (size_t)(cr - b->p) + 2;
	return strtoll((const char *)b->p + 1, NULL, 10);
}

/* The parts' integer replies added up. */
static long long
parts_sum(const struct pend *p)
{
	long long t = 0;

	for (unsigned s = 0; s < kv_cfg.nshards; s++)
		if (p->parts[s].len > 1)
			t += strtoll((const char *)p->parts[s].p + 1, NULL, 10);
	return t;
}

/* A part's bulk string, its body at *@at and its length in *@len; false when it is none. */
static bool
bulk_body(const struct rbuf *b, const uint8_t **at, size_t *len)
{
	const uint8_t *cr = b->len ? memchr(b->p, '\r', b->len) : NULL;
	size_t hdr = cr && b->p[0] == '$' ? (size_t)(cr - b->p) + 2 : 0;

	if (!hdr || b->len < hdr + 2)
		return false;
	*at = b->p + hdr;
	*len = b->len - hdr - 2;
	return true;
}

/* Whether @all, a merge being built, is past --send-max: the merge stops there (its caller's
 * kv_reply_over makes the error), so that it holds at most that and the piece that passed
 * it, not every shard's part, each up to --send-max, again. */
static bool
merge_over(const struct rbuf *all)
{
	return kv_cfg.reply_max && all->len > kv_cfg.reply_max;
}

/* KV_M_BULK_BY_ARG (CLIENT LIST ID): each part has a line for each id argument, in their
 * order, empty unless the client is that shard's; the lines of each argument put in @all
 * in turn, so the list follows the arguments as Redis's does (a repeated id repeated),
 * until past --send-max (merge_over). False when the parts do not hold as many lines each
 * (cannot happen). */
static bool
merge_by_arg(const struct pend *p, struct rbuf *all)
{
	const uint8_t *at[KEEL_MAX_SHARDS] = { 0 }, *end[KEEL_MAX_SHARDS] = { 0 };
	unsigned ns = kv_cfg.nshards;

	for (unsigned s = 0; s < ns; s++) {
		size_t len;

		if (!bulk_body(&p->parts[s], &at[s], &len))
			return false;
		end[s] = at[s] + len;
	}
	while (at[0] < end[0]) {
		for (unsigned s = 0; s < ns; s++) {
			const uint8_t *nl = at[s] < end[s]
						    ? memchr(at[s], '\n', (size_t)(end[s] - at[s]))
						    : NULL;

			if (!nl)
				return false;
			if (nl > at[s])
				rb_put(all, at[s], (size_t)(nl - at[s]) + 1);
			at[s] = nl + 1;
			if (merge_over(all))
				return true;
		}
	}
	for (unsigned s = 1; s < ns; s++)
		if (at[s] != end[s])
			return false;
	return true;
}

static void
merge(struct pend *p)
{
	struct rbuf *out = &p->rep;
	unsigned ns = kv_cfg.nshards;

	for (unsigned s = 0; s < ns; s++)
		if (p->parts[s].oom) {
			out->oom = true;
			return;
		}
	if (p->cmd->merge == KV_M_REWRITE) { /* its errors are merged by their kind */
		merge_rewrite(p, out);
		return;
	}
	if (part_error(p, out))
		return;
	switch (p->cmd->merge) {
	case KV_M_SUM:
		rb_int(out, parts_sum(p));
		break;
	case KV_M_OK:
		rb_simple(out, "OK");
		break;
	case KV_M_KILL:
		if (parts_sum(p))
			rb_simple(out, "OK");
		else
			rb_err(out, "ERR No such client");
		break;
	case KV_M_BULK:
	case KV_M_BULK_BY_ARG: {
		struct rbuf all = { 0 };

		if (p->cmd->merge == KV_M_BULK_BY_ARG) {
			if (!merge_by_arg(p, &all)) {
				rb_free(&all);
				rb_err(out, "ERR internal error merging replies");
				break;
			}
		} else {
			for (unsigned s = 0; s < ns; s++) {
				const uint8_t *at;
				size_t len;

				if (bulk_body(&p->parts[s], &at, &len))
					rb_put(&all, at, len);
				if (merge_over(&all))
					break;
			}
		}
		/* Each part is bounded where it was made; together they may pass it: the merge
		 * stopped once they did (merge_over). */
		if (kv_reply_over(&all, 0, 0, false))
			rb_put(out, all.p, all.len);
		else
			rb_bulk(out, all.p, all.len);
		out->oom |= all.oom;
		rb_free(&all);
		break;
	}
	case KV_M_CONCAT: {
		long long t = 0;
		size_t hdr;
		for (unsigned s = 0; s < ns; s++)
			t += arr_count(&p->parts[s], &hdr);
		rb_arr(out, t);
		for (unsigned s = 0; s < ns; s++) {
			arr_count(&p->parts[s], &hdr);
			if (hdr)
				rb_put(out, p->parts[s].p + hdr, p->parts[s].len - hdr);
			if (kv_reply_over(out, 0, 0, false)) /* each part under it, not all */
				return;
		}
		break;
	}
	case KV_M_ARRAY_BY_KEY: {
		size_t cur[KEEL_MAX_SHARDS];
		for (unsigned s = 0; s < ns; s++)
			arr_count(&p->parts[s], &cur[s]);
		rb_arr(out, p->nkeys);
		for (unsigned i = 0; i < p->nkeys; i++) {
			struct rbuf *b = &p->parts[p->key_owner[i]];
			size_t *c = &cur[p->key_owner[i]];
			size_t l = *c < b->len ? resp_reply_len(b->p + *c, b->len - *c) : 0;
			if (!l) { /* a part shorter than its keys: cannot happen; say so */
				out->len = 0;
				rb_err(out, "ERR internal error merging replies");
				return;
			}
			rb_put(out, b->p + *c, l);
			*c += l;
			if (kv_reply_over(out, 0, 0,
					  false)) /* each part under it, not all together */
				return;
		}
		break;
	}
	case KV_M_REWRITE: /* merged above */
	case KV_M_NONE:
		break;
	}
}

/* A part (or the whole) of a request is answered. */
static void
pend_part_done(struct pend *p, unsigned part, struct rbuf *rep)
{
	if (p->parts) {
		p->parts[part] = *rep;
		memset(rep, 0, sizeof(*rep));
		if (--p->parts_left) {
			/* Waiting for the other parts, a part counts toward the connection's limits
			 * as a whole reply does: the home shard makes its own part at once, before
			 * any other can come back, and a pipeline of split MGETs from a client that
			 * did not read built thousands of them, uncounted (as counted, again,
			 * below). */
			if (p->kc) {
				p->counted += p->parts[part].len;
				p->kc->pend_bytes += p->parts[part].len;
			}
			return;
		}
		merge(p);
	} else {
		p->rep = *rep;
		memset(rep, 0, sizeof(*rep));
	}
	p->done = true;
	if (!p->kc) {
		struct kv_shard *ks = &shards[self()];

		stat_add(&kv_stats[self()].replies_orphaned, 1);
		if (p->oprev)
			p->oprev->onext = p->onext;
		else
			ks->orphans = p->onext;
		if (p->onext)
			p->onext->oprev = p->oprev;
		pend_free(p); /* its connection is gone */
		return;
	}
	/* Counted as replies made here are (pend_count): until drained, they hold the
	 * parsing, so no more requests go out while they wait. */
	p->kc->pend_bytes -= p->counted;
	p->counted = p->rep.len;
	p->kc->pend_bytes += p->counted;
	if (p == p->kc->head) {
		struct kconn *kc = p->kc;
		drain(kc);
		flush_out(kc);
	}
}

/* Keys FLUSHALL ASYNC set aside, freed a budget per sweep tick (a millisecond apart while
 * any are left): about a third of a millisecond of each. */
#define KV_LAZYFREE_STEP 4096

/* The sweep timer's next tick within a millisecond (FLUSHALL ASYNC left keys to free, or
 * a reply waits to be sent home again). */
static void
sweep_soon(struct kv_shard *ks)
{
	uint64_t due;

	if (!ks->sweep)
		return;
	due = keel_timer_deadline_ns(ks->sweep); /* 0: not pending */
	if (!due || due > keel_now_ns() + KEEL_MS(1))
		keel_timer_start(ks->sweep, KEEL_MS(1), 0);
}

/* Run @c against this shard's table; @admitted: a part of a split command whose maxmemory
 * check was made where it was received (kv_cmd_run), else checked now (kv_cmd_exec). */
static void
exec_here(const struct kv_cmd *c, struct resp_arg *argv, unsigned argc, struct rbuf *out,
	  bool admitted)
{
	struct kv_shard *ks = &shards[self()];
	void (*run)(const struct kv_cmd *, struct kv_db *, struct resp_arg *, unsigned,
		    struct rbuf *) = admitted ? kv_cmd_run : kv_cmd_exec;

	if (!ks->db.b) {
		rb_err(out, "ERR keel-kv is shutting down");
		return;
	}
	if (argc > 1)
		kv_test_hold(self(), argv[1].p, argv[1].len); /* the test gate (KEEL_FAULTS) */
	if (c->flags & KV_F_WRITE) {
		const char *e = kv_cfg.aof ? kv_aof_error() : NULL;
		/* Memory first, as Redis: over --maxmemory a write is -OOM even while the
		 * file fails (admitted parts were checked at home). Answered here: a second
		 * check could find the other shards below it by then and run the write. */
		if (e && !admitted && kv_cmd_denied(c)) {
			if (!ks->db.uncounted)
				atomic_fetch_add_explicit(&ks->db.st->commands, 1,
							  memory_order_relaxed);
			kv_reply_oom(&ks->db, out);
			return;
		}
		if (e) {
			rb_err(out, "MISCONF Errors writing to the AOF file: %s", e);
			return;
		}
		uint64_t changes = ks->db.changes;

		run(c, &ks->db, argv, argc, out);
		/* Recorded by what changed, not by the reply: nothing changed (DEL of a missing
		 * key, SETNX of one there, any error reply): no record; a change whose reply
		 * found no memory is recorded all the same (the table has it). */
		if (kv_cfg.aof && ks->db.changes != changes)
			kv_aof_log(c, &ks->db, argv, argc);
		if (__builtin_expect(ks->db.fb != NULL, 0)) /* FLUSHALL ASYNC: free from now on */
			sweep_soon(ks);
		return;
	}
	run(c, &ks->db, argv, argc, out);
}

/* --appendfsync always: does @c's reply wait for the disk? A write's always; a read's while
 * this shard has records not yet on disk, as Redis syncs before it sends any reply: a read
 * answered at once showed other clients a write that a crash could still lose (a client
 * read a 300 MiB value 174 ms before the writer's +OK). */
static bool
must_hold(const struct kv_cmd *c)
{
	return c && kv_cfg.aof && kv_cfg.fsync == KV_FSYNC_ALWAYS &&
	       ((c->flags & KV_F_WRITE) || kv_aof_unsynced());
}

/* An error reply: the command changed nothing, so nothing of it waits for the disk (a
 * write refused while the append-only file is being rebuilt is answered at once, not when
 * the rebuild ends). Replies still leave in order (the connection's queue). Not for EXEC:
 * its error past --send-max says the commands ran (tx_holds decides). */
static bool
rep_is_error(const struct rbuf *r)
{
	return r->len && r->p[0] == '-';
}

static void home_recv(void *arg);

/* Send a reply computed here back to its home shard, waiting for room in its queue. */
static void send_home(struct kmsg *m);

static void
home_room(int status, void *arg)
{
	struct kmsg *m = arg;

	if (status < 0) { /* this shard stops: the home shard's connection goes too */
		rb_free(&m->rep);
		free(m);
		return;
	}
	send_home(m);
}

static void
send_home(struct kmsg *m)
{
	struct kv_shard *ks = &shards[self()];
	int r = keel_send(m->home, home_recv, m);

	if (r == -EAGAIN)
		r = keel_msg_wait_room(m->home, home_room, m);
	if (r == -ENOMEM && ks->sweep) {
		/* Not dropped: the home connection would wait for this reply for ever. */
		m->next = ks->home_retry;
		ks->home_retry = m;
		sweep_soon(ks);
		return;
	}
	if (r < 0)
		home_room(r, m);
}

/* A held reply's batch is on disk (or failed: the reply says so). */
static void
held_done(void *arg, int err)
{
	struct kmsg *m = arg;

	if (err) {
		m->rep.len = 0;
		rb_err(&m->rep, "MISCONF Errors writing to the AOF file: %s", strerror(-err));
	}
	if (m->home == self()) {
		home_recv(m);
		return;
	}
	send_home(m);
}

/* A write's reply @m waits for its record's sync (always), or goes now when there is
 * nothing to wait for. With no memory to wait it goes now as an error: +OK would be
 * sent before the record is on disk. */
static void
hold(struct kmsg *m)
{
	int r = kv_aof_after_sync(held_done, m);

	if (r == -ENOENT)
		held_done(m, 0);
	else if (r < 0)
		held_done(m, r);
}

/* Run a write here and answer part @part of @p once it is on disk (always), or now. */
static void
exec_held(struct pend *p, unsigned part, const struct kv_cmd *c, struct resp_arg *argv,
	  unsigned argc, bool admitted)
{
	struct kmsg *m = calloc(1, sizeof(*m));
	struct rbuf rep = { 0 };

	if (!m) {
		rep.oom = true;
		pend_part_done(p, part, &rep);
		return;
	}
	m->pend = p;
	m->part = part;
	m->home = self();
	exec_here(c, argv, argc, &m->rep, admitted);
	if (rep_is_error(&m->rep)) {
		home_recv(m);
		return;
	}
	/* While it waits its bytes count toward the connection's limits, as a reply made
	 * behind it does (pend_count; pend_part_done counts them again): GETs held behind a
	 * SET's sync grew the server's peak by 88 MB for 4.5 MB of requests. */
	if (p->kc) {
		m->counted = m->rep.len;
		p->counted += m->counted;
		p->kc->pend_bytes += m->counted;
	}
	hold(m);
}

static void local_cmd(struct kconn *kc, const struct kv_cmd *c, struct resp_arg *argv,
		      unsigned argc, struct rbuf *out);

/* Parse again, into this shard's arrays, a request parsed once already (handed over, or
 * queued for EXEC): returns as resp_parse, which only memory can make fail. */
static long
reparse(const uint8_t *p, size_t n, struct resp_req *req)
{
	struct kv_shard *ks = &shards[self()];
	long r;

	*req = (struct resp_req){ .argv = ks->argv,
				  .cap = ks->argv_cap,
				  .scratch = ks->scratch,
				  .scratch_cap = ks->scratch_cap,
				  .max_bulk = UINT64_MAX };
	while ((r = resp_parse(p, n, req)) == RESP_NEED_ARGV || r == RESP_NEED_SCRATCH)
		if (parse_grow(r, req, &ks->argv, &ks->argv_cap, &ks->scratch, &ks->scratch_cap) <
		    0)
			break;
	return r;
}

/* On the shard that owns the keys: connection @id's watches of @keys begin (WATCH's
 * reply in @out). */
static void
watch_add_here(uint64_t id, const struct resp_arg *keys, unsigned n, struct rbuf *out)
{
	struct kv_db *db = &shards[self()].db;

	if (!db->b)
		rb_err(out, "ERR keel-kv is shutting down");
	else if (kv_watch_add(db, id, keys, n) < 0)
		rb_err(out, "ERR out of memory");
	else
		rb_simple(out, "OK");
}

/* On the shard of the keys: connection @id's watches of the keys @req names end. */
static void
watch_end_req(uint64_t id, const uint8_t *req, size_t len)
{
	struct kv_shard *ks = &shards[self()];
	struct resp_req r;
	long n = len ? reparse(req, len, &r) : 0;

	if (n > 0 && r.argc)
		kv_watch_end(&ks->db, id, r.argv + 1, r.argc - 1);
	else /* no keys given, or no memory to read them: a walk of the shard's watches */
		kv_watch_end_id(&ks->db, id);
	args_shrink(&ks->argv, &ks->argv_cap, &ks->scratch, &ks->scratch_cap);
}

/* A command's reply in a transaction no longer than this is not refused on its own past
 * --send-max (the error would be as long). */
#define TX_REPLY_SMALL 160

/* On the owner: a transaction's requests, each parsed again and run, in order; their
 * replies are EXEC's array. Only memory can fail a request parsed once already. Past
 * --send-max a command's reply longer than TX_REPLY_SMALL is refused in the array; once the
 * array passes it even so (short replies, and those errors, add up: 20,000 GETs of a
 * 149-byte value made 3.1 MB), every command still runs, its reply dropped, and EXEC's
 * reply is the error, saying they ran. */
static void
tx_run(struct kmsg *m)
{
	struct kv_shard *ks = &shards[self()];
	size_t off = 0, start = m->rep.len, made = 0;
	bool over = false;
	struct resp_req req;

	kv_clock_freeze();      /* one time for the whole transaction, as Redis */
	if (m->wop == W_EXEC) { /* the watched keys first: EXEC is a null array if one changed */
		long r = reparse(m->req, m->req_len, &req);

		if (r <= 0 || !req.argc) { /* memory: the watches end all the same */
			kv_watch_end_id(&ks->db, m->wid);
			m->rep.oom = true;
			goto out;
		}
		off = (size_t)r;
		if (kv_watch_end(&ks->db, m->wid, req.argv + 1, req.argc - 1)) {
			rb_put(&m->rep, "*-1\r\n", 5);
			goto out;
		}
	}
	rb_arr(&m->rep, m->tx);
	made = m->rep.len - start; /* the reply as made, for the error: over this much */
	if (kv_cfg.aof)
		kv_aof_tx_begin();
	for (unsigned i = 0; i < m->tx; i++) {
		const struct kv_cmd *c;
		size_t at = m->rep.len;
		long r = reparse(m->req + off, m->req_len - off, &req);

		if (r <= 0 || !req.argc) {
			m->rep.oom = true;
			break;
		}
		c = kv_cmd_find(req.argv[0].p, req.argv[0].len);
		if (c->route == KV_R_KEYS && c->key_step == 2 && (req.argc - 1) % 2)
			kv_reply_arity(&m->rep, c); /* MSET's pairs (tx_queue) */
		else if (c->route == KV_R_LOCAL)    /* KV_F_TX_LOCAL's: no connection */
			local_cmd(NULL, c, req.argv, req.argc, &m->rep);
		else /* --maxmemory was checked once, at EXEC */
			exec_here(c, req.argv, req.argc, &m->rep, true);
		/* Past --send-max, a command's reply that carries a value is refused (its own
		 * error, in the array), a write's too (GETEX, GETSET: what it did is done, the
		 * error says so); replies no longer than the error stay. */
		made += m->rep.len - at;
		if (over)
			m->rep.len = at; /* dropped: the error replaces them all */
		else if (m->rep.len - at > TX_REPLY_SMALL)
			kv_reply_over(&m->rep, start, at, c->flags & KV_F_WRITE);
		if (!over && kv_cfg.reply_max && m->rep.len - start > kv_cfg.reply_max) {
			over = true;
			m->rep.len = start;
		}
		off += (size_t)r;
	}
	if (over) {
		m->rep.len = start;
		kv_reply_too_large(&m->rep, made, true);
	}
	if (kv_cfg.aof)
		kv_aof_tx_end();
out:
	kv_clock_thaw();
	args_shrink(&ks->argv, &ks->argv_cap, &ks->scratch, &ks->scratch_cap);
}

/* --appendfsync always: does a transaction's reply wait for the disk? */
static bool
tx_holds(const struct kmsg *m)
{
	return kv_cfg.aof && kv_cfg.fsync == KV_FSYNC_ALWAYS && (m->tx_write || kv_aof_unsynced());
}

/* On the owner: parse the request again and run it. Returns the command (NULL when
 * the request could not be parsed, and for a transaction). */
static const struct kv_cmd *
owner_exec(struct kmsg *m)
{
	const struct kv_cmd *c = NULL;
	struct kv_shard *ks = &shards[self()];
	struct resp_req req;
	long r;

	stat_add(&kv_stats[self()].forwarded_in, 1);
	if (m->tx || m->wop == W_EXEC) {
		tx_run(m);
		if (m->sl.buf)
			keel_slice_put(&m->sl);
		return NULL;
	}
	if (m->wop == W_END) { /* no reply; ends them even without memory to read the keys */
		watch_end_req(m->wid, m->req, m->req_len);
		return NULL;
	}
	r = reparse(m->req, m->req_len, &req);
	if (r > 0 && req.argc && m->wop == W_ADD) {
		watch_add_here(m->wid, req.argv + 1, req.argc - 1, &m->rep);
	} else if (r > 0 && req.argc) {
		c = kv_cmd_find(req.argv[0].p, req.argv[0].len);
		ks->db.uncounted = m->fan_part;
		exec_here(c, req.argv, req.argc, &m->rep, m->admitted);
		ks->db.uncounted = false;
	} else {
		m->rep.oom = true; /* only memory can fail a request parsed once already */
	}
	if (m->sl.buf)
		keel_slice_put(&m->sl); /* the proxy: its last put travels home */
	args_shrink(&ks->argv, &ks->argv_cap, &ks->scratch, &ks->scratch_cap);
	return c;
}

static int
owner_run(void *arg)
{
	owner_exec(arg);
	return 0;
}

/* A reply held on another shard (count_held) of at least this many bytes counts toward
 * its connection's limits while it waits; a smaller one does not, sparing the message
 * (what stays uncounted is at most PEND_MAX of them a connection: 4 MiB). */
#define HELD_COUNT_MIN 1024

/* count_held's message: @bytes of a reply for @p wait on another shard. */
struct held_note {
	struct pend *p;
	size_t bytes;
};

/* On the home shard, before the reply it counts comes (the pair's messages keep their
 * order): its bytes count toward the connection's limits, as exec_held's do; home_recv
 * takes them off when the reply comes. The pend waits for that reply, so it is there
 * (an orphan, kc NULL, once its connection went). */
static void
held_note_recv(void *arg)
{
	struct held_note *n = arg;

	if (n->p->kc) {
		n->p->counted += n->bytes;
		n->p->kc->pend_bytes += n->bytes;
	}
	free(n);
}

/* The reply @m, made here for another shard's connection, is about to wait for this
 * shard's sync (always): its bytes count toward that connection's limits meanwhile,
 * through a message home. Held here uncounted, the replies of a pipeline of reads of large
 * values grew without bound but PEND_MAX (4,096 GETs of 1 MiB: 4 GiB) while the disk was
 * slow, where a reply held on the home shard (exec_held) or one not held (it comes home
 * and counts there) holds the connection's parsing. Without memory or room for the
 * message, the reply waits uncounted, as it did. */
static void
count_held(struct kmsg *m)
{
	size_t bytes = m->rep.len;
	struct held_note *n;

	if (m->home == self() || bytes < HELD_COUNT_MIN)
		return;
	n = malloc(sizeof(*n));
	if (!n)
		return;
	n->p = m->pend;
	n->bytes = bytes;
	if (keel_send(m->home, held_note_recv, n) < 0) { /* not sent: still ours */
		free(n);
		return;
	}
	m->counted = bytes; /* taken off by home_recv */
}

/* --appendfsync always: the request came with keel_send; its reply goes home with
 * keel_send once a write is on disk. A command's error reply changed nothing and goes at
 * once; a transaction's may follow its writes (past --send-max every command ran: tx_run),
 * so it waits as on the home shard (tx_exec): it went before the batch's sync. */
static void
owner_recv(void *arg)
{
	struct kmsg *m = arg;
	const struct kv_cmd *c = owner_exec(m);

	if (m->tx ? tx_holds(m) : (must_hold(c) && !rep_is_error(&m->rep))) {
		count_held(m);
		hold(m);
	} else {
		send_home(m);
	}
}

static void random_done(struct kmsg *m);
static void random_end(struct kconn *kc);

static void
home_recv(void *arg)
{
	struct kmsg *m = arg;

	/* What exec_held or count_held counted while the reply waited: pend_part_done counts
	 * it anew. */
	if (m->counted && m->pend->kc) {
		m->pend->counted -= m->counted;
		m->pend->kc->pend_bytes -= m->counted;
	}
	m->counted = 0;
	if (m->random) {
		random_done(m);
		return;
	}
	pend_part_done(m->pend, m->part, &m->rep);
	free(m);
}

/* Back on the home shard. */
static void
home_done(int status, void *arg)
{
	struct kmsg *m = arg;

	if (m->random) {
		random_done(m);
		return;
	}
	pend_part_done(m->pend, m->part, &m->rep);
	free(m);
}

static void
msg_drop(struct kmsg *m)
{
	if (m->sl.buf) {
		keel_slice_move(&m->sl, self());
		keel_slice_put(&m->sl);
	}
	rb_free(&m->rep);
	free(m);
}

/* Send a request to its owner (m->part). Returns: as keel_call(). */
static int
send_req(struct kmsg *m)
{
	int r;

	if (kv_cfg.aof && kv_cfg.fsync == KV_FSYNC_ALWAYS)
		r = keel_send(m->part, owner_recv, m);
	else
		r = keel_call(m->part, owner_run, m, home_done, m);
	if (r == 0)
		stat_add(&kv_stats[self()].forwarded_out, 1);
	return r;
}

static void
bq_add(struct kconn *kc, struct kmsg *m)
{
	m->next = NULL;
	if (kc->bq_tail)
		kc->bq_tail->next = m;
	else
		kc->bq_head = m;
	kc->bq_tail = m;
	if (!kc->paused) {
		kc->paused = true;
		keel_conn_pause_read(kc->c);
	}
}

static bool watch_lost(const struct kmsg *m);

/* The reply to a request for shard @shard that could not be sent to it (@err): the stop's
 * refusal said as the stop (as exec_here says it), not as "Cannot send after transport
 * endpoint shutdown". */
static void
rb_unreachable(struct rbuf *out, unsigned shard, int err)
{
	if (err == -ESHUTDOWN)
		rb_err(out, "ERR keel-kv is shutting down");
	else
		rb_err(out, "ERR shard %u unreachable: %s", shard, strerror(-err));
}

/* Answer every waiting request with @err (the queue cannot drain: memory, stopping). */
static void
bq_fail(struct kconn *kc, int err)
{
	struct kmsg *m;

	while ((m = kc->bq_head)) {
		kc->bq_head = m->next;
		if (!kc->bq_head)
			kc->bq_tail = NULL;
		if (m->sl.buf) {
			keel_slice_move(&m->sl, self());
			keel_slice_put(&m->sl);
		}
		if (!watch_lost(m))
			rb_unreachable(&m->rep, m->part, err);
		if (m->random)
			random_end(kc);
		pend_part_done(m->pend, m->part, &m->rep);
		free(m);
	}
	/* Reads were paused for the queue (bq_add): nothing waits for room any more. */
	unpause(kc);
}

static void on_room(int status, void *arg);

static void
bq_wait(struct kconn *kc)
{
	int r = keel_msg_wait_room(kc->bq_head->part, on_room, kc);

	if (r < 0) {
		bq_fail(kc, r);
		return;
	}
	kc->bq_waiting = true;
}

static void
on_room(int status, void *arg)
{
	struct kconn *kc = arg;
	struct kmsg *m;

	kc->bq_waiting = false;
	if (kc->dead) { /* the connection closed meanwhile: its requests go unanswered */
		while ((m = kc->bq_head)) {
			kc->bq_head = m->next;
			pend_part_done(m->pend, m->part, &m->rep); /* frees the pend when last */
			if (m->sl.buf) {
				keel_slice_move(&m->sl, self());
				keel_slice_put(&m->sl);
			}
			free(m);
		}
		if (!kc->resume_queued)
			free(kc);
		return;
	}
	/* Aborted since (closed past --maxmemory-clients): its waiting requests are not sent
	 * (an INCR applied for a client already closed), as for one that closed. */
	if (status < 0 || kc->aborted) {
		bq_fail(kc, status < 0 ? status : -ECONNABORTED);
	} else {
		while ((m = kc->bq_head)) {
			/* Read before the send: once sent, @m is the owner shard's. */
			struct kmsg *next = m->next;
			int r = send_req(m);
			if (r == -EAGAIN) {
				bq_wait(kc);
				return;
			}
			kc->bq_head = next;
			if (!kc->bq_head)
				kc->bq_tail = NULL;
			if (r < 0) {
				if (m->sl.buf) {
					keel_slice_move(&m->sl, self());
					keel_slice_put(&m->sl);
				}
				if (!watch_lost(m))
					rb_unreachable(&m->rep, m->part, r);
				if (m->random)
					random_end(kc);
				pend_part_done(m->pend, m->part, &m->rep);
				free(m);
			}
		}
	}
	unpause(kc);
}

/* Send @m (a request for @p) to its owner, m->part, behind the connection's requests that
 * wait for room. Returns: 0; -errno, @m freed. */
static int
hand(struct pend *p, struct kmsg *m)
{
	int r;

	m->home = self();
	if (p->kc && p->kc->bq_head) { /* behind requests waiting for room: in order */
		bq_add(p->kc, m);
		return 0;
	}
	r = send_req(m);
	if (r == -EAGAIN && p->kc) {
		bq_add(p->kc, m);
		bq_wait(p->kc);
		return 0;
	}
	if (r < 0) {
		msg_drop(m);
		return r;
	}
	return 0;
}

/* Hand a request's bytes to @owner. @src, when given, holds those bytes at @off. */
static int
handoff(struct pend *p, unsigned owner, const uint8_t *req, size_t len,
	const struct keel_slice *src, size_t off, bool admitted, const struct ktx *tx,
	bool fan_part)
{
	bool exp = kv_cfg.handoff_export && src;
	struct kmsg *m = malloc(sizeof(*m) + (exp ? 0 : len));
	int r;

	if (!m)
		return -ENOMEM;
	memset(m, 0, sizeof(*m));
	m->pend = p;
	m->part = owner;
	m->req_len = len;
	m->admitted = admitted;
	m->fan_part = fan_part;
	if (tx) {
		m->tx = tx->n;
		m->tx_write = tx->write;
		m->wop = tx->wid ? W_EXEC : W_NONE;
		m->wid = tx->wid;
	}
	if (exp) {
		struct keel_slice sub;
		r = keel_slice_sub(src, off, len, &sub);
		if (r == 0) {
			r = keel_slice_export(&sub, owner, &m->sl);
			keel_slice_put(&sub);
		}
		if (r < 0) {
			free(m);
			return r;
		}
		m->req = m->sl.data;
		stat_add(&kv_stats[self()].forwarded_exported, 1);
	} else {
		memcpy(m->copy, req, len);
		m->req = m->copy;
	}
	return hand(p, m);
}

/* Encode a sub-request: @name and the given arguments, as a RESP array. */
static void
encode(struct rbuf *b, const struct resp_arg *name, const struct resp_arg *argv,
       const unsigned *idx, unsigned n, unsigned step)
{
	rb_arr(b, 1 + (long long)n * step);
	rb_bulk(b, name->p, name->len);
	for (unsigned i = 0; i < n; i++)
		for (unsigned j = 0; j < step; j++)
			rb_bulk(b, argv[idx[i] + j].p, argv[idx[i] + j].len);
}

/* Split a multi-key command (or send an all-shards one) to every shard concerned; the
 * part for this shard runs now. */
static void
fanout(struct kconn *kc, const struct kv_cmd *c, struct resp_arg *argv, unsigned argc,
       const uint8_t *raw, size_t rawlen, const uint16_t *owners, bool admitted)
{
	unsigned ns = kv_cfg.nshards, me = self();
	unsigned nkeys = kv_cmd_nkeys(c, argc);
	struct pend *p = pend_new(kc);
	unsigned *idx = NULL;
	bool want[KEEL_MAX_SHARDS] = { false };

	if (!p || !(p->parts = calloc(ns, sizeof(*p->parts))) ||
	    (nkeys && (!(p->key_owner = malloc(nkeys * sizeof(uint16_t))) ||
		       !(idx = malloc(nkeys * sizeof(*idx)))))) {
		if (p)
			p->rep.oom = true, p->done = true;
		else
			kc->out.oom = true; /* no place for its reply: the connection is aborted */
		free(idx);
		if (p && p->parts) {
			free(p->parts);
			p->parts = NULL;
		}
		return;
	}
	stat_add(&kv_stats[me].fanouts, 1);
	stat_add(&kv_stats[me].commands, 1); /* once; its parts are not counted (uncounted) */
	p->cmd = c;
	p->nkeys = c->merge == KV_M_ARRAY_BY_KEY ? nkeys : 0;
	for (unsigned i = 0; i < nkeys; i++) {
		p->key_owner[i] = owners[i];
		want[owners[i]] = true;
	}
	if (!nkeys)
		for (unsigned s = 0; s < ns; s++)
			want[s] = true;
	for (unsigned s = 0; s < ns; s++)
		p->parts_left += want[s];
	/* Remote parts first, so a reply cannot complete the fan-out before it is whole;
	 * then this shard's, which may complete it. */
	for (unsigned pass = 0; pass < 2; pass++)
		for (unsigned s = 0; s < ns; s++) {
			struct rbuf sub = { 0 };
			unsigned n = 0;
			int r;

			if (!want[s] || (pass == 0) == (s == me))
				continue;
			if (nkeys) {
				for (unsigned i = 0; i < nkeys; i++)
					if (owners[i] == s)
						idx[n++] = 1 + i * c->key_step;
				encode(&sub, &argv[0], argv, idx, n, c->key_step);
			} else {
				rb_put(&sub, raw, rawlen);
			}
			if (sub.oom) {
				rb_free(&sub);
				struct rbuf e = { 0 };
				e.oom = true;
				pend_part_done(p, s, &e);
				continue;
			}
			if (s == me) {
				struct resp_req req = { .argv = kc->argv,
							.cap = kc->argv_cap,
							.scratch = kc->scratch,
							.scratch_cap = kc->scratch_cap,
							.max_bulk = UINT64_MAX };
				struct rbuf rep = { 0 };
				long pr;
				while ((pr = resp_parse(sub.p, sub.len, &req)) == RESP_NEED_ARGV ||
				       pr == RESP_NEED_SCRATCH)
					if (parse_grow(pr, &req, &kc->argv, &kc->argv_cap,
						       &kc->scratch, &kc->scratch_cap) < 0)
						break;
				shards[me].db.uncounted = true;
				if (pr > 0 && must_hold(c)) {
					exec_held(p, s, c, req.argv, req.argc, admitted);
					shards[me].db.uncounted = false;
					rb_free(&sub);
					continue;
				}
				if (pr > 0)
					exec_here(c, req.argv, req.argc, &rep, admitted);
				else
					rep.oom = true;
				shards[me].db.uncounted = false;
				rb_free(&sub);
				pend_part_done(p, s, &rep);
				continue;
			}
			r = handoff(p, s, sub.p, sub.len, NULL, 0, admitted, NULL, true);
			rb_free(&sub);
			if (r < 0) {
				struct rbuf e = { 0 };
				rb_unreachable(&e, s, r);
				pend_part_done(p, s, &e);
			}
		}
	free(idx);
}

/* Commands that run where they are received. */

/* Whether INFO's arguments (@argv[1..@argc)) name section @name, case-insensitively. */
static bool
info_names(const struct resp_arg *argv, unsigned argc, const char *name)
{
	size_t l = strlen(name);

	for (unsigned i = 1; i < argc; i++)
		if (argv[i].len == l && !strncasecmp((const char *)argv[i].p, name, l))
			return true;
	return false;
}

/* A command that reads or ends what the connection's earlier requests do (INFO's counters,
 * SHUTDOWN's last sync) behind replies still being made (a write another shard runs, a
 * sync): it runs once they are in, and nothing after it is parsed until then (kc->barrier),
 * so that it sees what came before it and nothing after, as in Redis. Made at once, a
 * pipelined SET on another shard's key and INFO keyspace could count the key before that
 * shard had stored it, and a SHUTDOWN stopped the shards before the writes sent ahead of
 * it had reached them. Returns true when put off; false (nothing before it, or no memory
 * to keep INFO's arguments) when it is to run now. */
static bool
run_later(struct kconn *kc, int kind, const struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	struct pend *p = kc->pend_open;
	size_t bytes = (size_t)argc * sizeof(*argv);
	uint8_t *b;

	if (!p || out != &p->rep)
		return false;
	if (kind == LATER_INFO) {
		for (unsigned i = 0; i < argc; i++)
			bytes += argv[i].len;
		if (!(p->later = malloc(bytes)))
			return false;
		b = (uint8_t *)(p->later + argc);
		for (unsigned i = 0; i < argc; i++) {
			memcpy(b, argv[i].p, argv[i].len);
			p->later[i] = (struct resp_arg){ b, argv[i].len };
			b += argv[i].len;
		}
		p->nlater = argc;
	}
	p->later_kind = kind;
	p->done = false;
	kc->barrier = true;
	return true;
}

static void shutdown_now(struct kconn *kc);
static void info(struct rbuf *out, struct resp_arg *argv, unsigned argc);

/* The command run_later put off, now at the head: run it, and parse what waited. */
static void
later_run(struct kconn *kc, struct pend *p)
{
	/* An aborted client's put-off command does not run: its SHUTDOWN, reached by a
	 * reply that came in after it was closed past --maxmemory-clients, stopped the server
	 * for a client already gone (a review's find). */
	if (kc->aborted)
		;
	else if (p->later_kind == LATER_INFO)
		info(&p->rep, p->later, p->nlater);
	else
		shutdown_now(kc);
	free(p->later);
	p->later = NULL;
	p->later_kind = LATER_NONE;
	p->done = true;
	kc->barrier = false;
	resume_later(kc);
}

/* The Redis version keel-kv answers as (INFO server, HELLO): clients choose their commands
 * by it. */
#define KV_REDIS_VERSION "7.0.0"

static void
info(struct rbuf *out, struct resp_arg *argv, unsigned argc)
{
	struct rbuf b = { 0 };
	/* The longest line (# Shards': 211 bytes and 16 counters of up to 20 digits) fits;
	 * LINE cuts one that would not rather than read past the buffer. */
	char line[1024];
	/* Every section named (Redis 7 takes several: INFO server clients), or all. */
	bool all = argc < 2 || info_names(argv, argc, "all") || info_names(argv, argc, "default") ||
		   info_names(argv, argc, "everything");
	uint64_t keys = 0, expires = 0, cmds = 0, fwd = 0, conns = 0, total = 0, hits = 0,
		 misses = 0, exp = 0, oom = 0, lazy = 0, watched = 0, rejected = 0, cmem = 0,
		 blocked = 0, evicted = 0, used = kv_used_total();
	unsigned ns = kv_cfg.nshards;
	int n;

#define LD(f)      atomic_load_explicit(&kv_stats[i].f, memory_order_relaxed)
#define WANT(name) (all || info_names(argv, argc, name))
#define LINE(...)                                              \
	do {                                                   \
		n = snprintf(line, sizeof(line), __VA_ARGS__); \
		if (n >= (int)sizeof(line))                    \
			n = (int)sizeof(line) - 1;             \
		rb_put(&b, line, (size_t)n);                   \
	} while (0)
	for (unsigned i = 0; i < ns; i++) {
		keys += LD(keys);
		expires += LD(expires);
		cmds += LD(commands);
		fwd += LD(forwarded_out);
		conns += LD(conns);
		total += LD(conns_total);
		rejected += LD(rejected);
		hits += LD(hits);
		misses += LD(misses);
		exp += LD(expired_lazy) + LD(expired_swept);
		oom += LD(oom_rejected);
		lazy += LD(lazyfree_pending);
		watched += LD(watched_keys);
		blocked += LD(blocked);
		cmem += LD(client_mem);
		evicted += LD(evicted_clients);
	}
	if (WANT("server")) {
		LINE("# Server\r\nredis_version:" KV_REDIS_VERSION "\r\nkeel_kv_version:0.1\r\n"
		     "redis_mode:standalone\r\narch_bits:64\r\nmultiplexing_api:io_uring\r\n"
		     "process_id:%ld\r\ntcp_port:%u\r\nuptime_in_seconds:%lld\r\nshards:%u\r\n\r\n",
		     (long)getpid(), kv_port, (long long)((kv_now_ms() - kv_start_ms) / 1000), ns);
	}
	if (WANT("clients"))
		LINE("# Clients\r\nconnected_clients:%llu\r\nmaxclients:%u\r\n"
		     "blocked_clients:%llu\r\ntotal_watched_keys:%llu\r\n\r\n",
		     (unsigned long long)conns, kv_cfg.maxclients, (unsigned long long)blocked,
		     (unsigned long long)watched);
	if (WANT("memory"))
		LINE("# Memory\r\nused_memory:%llu\r\nused_memory_human:%.2fM\r\nmaxmemory:%llu\r\n"
		     "maxmemory_policy:noeviction\r\nmem_clients_normal:%llu\r\n"
		     "lazyfree_pending_objects:%llu\r\n\r\n",
		     (unsigned long long)used, used / 1048576.0,
		     (unsigned long long)kv_cfg.maxmemory, (unsigned long long)cmem,
		     (unsigned long long)lazy);
	if (WANT("stats"))
		LINE("# Stats\r\ntotal_connections_received:%llu\r\n"
		     "total_commands_processed:%llu\r\nkeyspace_hits:%llu\r\n"
		     "keyspace_misses:%llu\r\nexpired_keys:%llu\r\nrejected_oom:%llu\r\n"
		     "evicted_clients:%llu\r\nrejected_connections:%llu\r\n"
		     "forwarded_requests:%llu\r\n\r\n",
		     (unsigned long long)total, (unsigned long long)cmds, (unsigned long long)hits,
		     (unsigned long long)misses, (unsigned long long)exp, (unsigned long long)oom,
		     (unsigned long long)evicted, (unsigned long long)rejected,
		     (unsigned long long)fwd);
	if (WANT("persistence"))
		kv_aof_info(&b);
	if (WANT("keyspace")) {
		LINE("# Keyspace\r\n");
		if (keys)
			LINE("db0:keys=%llu,expires=%llu,avg_ttl=0\r\n", (unsigned long long)keys,
			     (unsigned long long)expires);
		LINE("\r\n");
	}
	if (WANT("shards")) {
		LINE("# Shards\r\n");
		for (unsigned i = 0; i < ns; i++)
			LINE("shard%u:keys=%llu,expires=%llu,used_memory=%llu,commands=%llu,"
			     "forwarded_out=%llu,forwarded_in=%llu,fanouts=%llu,clients=%llu,"
			     "expired_lazy=%llu,expired_swept=%llu,proto_errors=%llu,"
			     "timeouts=%llu,input_holds=%llu,input_moved=%llu,args_bytes=%llu,"
			     "replies_orphaned=%llu,forwarded_exported=%llu\r\n",
			     i, (unsigned long long)LD(keys), (unsigned long long)LD(expires),
			     (unsigned long long)LD(used_memory), (unsigned long long)LD(commands),
			     (unsigned long long)LD(forwarded_out),
			     (unsigned long long)LD(forwarded_in), (unsigned long long)LD(fanouts),
			     (unsigned long long)LD(conns), (unsigned long long)LD(expired_lazy),
			     (unsigned long long)LD(expired_swept),
			     (unsigned long long)LD(proto_errors), (unsigned long long)LD(timeouts),
			     (unsigned long long)LD(input_holds),
			     (unsigned long long)LD(input_moved),
			     (unsigned long long)LD(args_bytes),
			     (unsigned long long)LD(replies_orphaned),
			     (unsigned long long)LD(forwarded_exported));
		LINE("\r\n");
	}
#undef LD
#undef WANT
#undef LINE
	if (b.len >= 2)
		b.len -= 2; /* no blank line after the last section */
	rb_bulk(out, b.p, b.len);
	out->oom |= b.oom;
	rb_free(&b);
}

static bool
is(const struct resp_arg *a, const char *w)
{
	return a->len == strlen(w) && !strncasecmp((const char *)a->p, w, a->len);
}

static void
command_info(struct rbuf *out, const struct kv_cmd *c)
{
	char words[64];
	unsigned nw = 0;
	const char *w = c->flag_words;
	/* WATCH runs here, not on its keys' shards, but its arguments are keys all the same. */
	bool keys = c->route == KV_R_KEYS || !strcmp(c->name, "watch");
	int first = c->route == KV_R_KEY || keys ? 1 : 0;
	/* Keys to the end (-1), or up to a fixed arity's last argument (RENAME's 2), or the
	 * last of the keys before the options (COPY's 2). */
	int last = -1;

	if (c->route == KV_R_KEY || c->flags & KV_F_KEYS2)
		last = c->route == KV_R_KEY ? 1 : 2;
	else if (!keys)
		last = 0;
	else if (c->arity > 0)
		last = c->arity - 1;

	/* Redis 7's ten fields: the last four (ACL categories, tips, key specifications,
	 * subcommands) are empty, which clients read as "none given". */
	rb_arr(out, 10);
	rb_bulk(out, c->name, strlen(c->name));
	rb_int(out, c->arity);
	for (const char *q = w; *q; q++)
		nw += (*q != ' ' && (q == w || q[-1] == ' '));
	rb_arr(out, nw);
	while (*w) {
		size_t l = strcspn(w, " ");
		memcpy(words, w, l);
		words[l] = 0;
		rb_simple(out, words);
		w += l;
		w += *w == ' ';
	}
	rb_int(out, first);
	rb_int(out, last);
	rb_int(out, first ? (int)(c->key_step ? c->key_step : 1) : 0);
	for (int i = 0; i < 4; i++)
		rb_arr(out, 0);
}

/* CLIENT SETNAME's check and change (an empty name clears it); false: refused, the error
 * written to @out. */
static bool
set_name(struct kconn *kc, const struct resp_arg *name, struct rbuf *out)
{
	char *n = NULL;

	for (size_t i = 0; i < name->len; i++)
		if (name->p[i] <= ' ' || name->p[i] > '~') {
			rb_err(out, "ERR Client names cannot contain spaces, newlines or special "
				    "characters.");
			return false;
		}
	if (name->len && !(n = strndup((const char *)name->p, name->len))) {
		out->oom = true;
		return false;
	}
	free(kc->name);
	kc->name = n;
	kc->name_len = name->len;
	return true;
}

/* AUTH's and HELLO's user, on a Redis whose default user has no password: the default
 * user takes any password; another gets WRONGPASS, written to @out (false). */
static bool
auth_user(const struct resp_arg *user, struct rbuf *out)
{
	if (user->len == 7 && !memcmp(user->p, "default", 7))
		return true;
	rb_err(out, "WRONGPASS invalid username-password pair or user is disabled.");
	return false;
}

/* HELLO [protover [AUTH username password] [SETNAME name]], as Redis 7 parses it, for
 * RESP2 only: HELLO 3 is NOPROTO before its options are read (clients then stay on RESP2;
 * Redis, which takes 3, reads them). No password is set, as on a
 * Redis whose default user has none: AUTH default with any password is taken, another user
 * is refused. The reply is Redis's map as a RESP2 array; the server and version are the
 * ones INFO gives (redis, 7.0.0), which clients read to choose their commands. */
static void
hello_cmd(struct kconn *kc, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	long long ver;
	unsigned i = 1;

	if (argc >= 2) {
		if (!kv_arg_ll(&argv[1], &ver)) {
			rb_err(out, "ERR Protocol version is not an integer or out of range");
			return;
		}
		if (ver != 2) { /* 3 is Redis's too, but not keel-kv's */
			rb_err(out, "NOPROTO unsupported protocol version");
			return;
		}
		i = 2;
	}
	/* One option after another, each applied as it is read, the first error ending it (a
	 * name set before it stays), as Redis 7.0 does. */
	for (; i < argc; i++) {
		unsigned more = argc - 1 - i;

		if (is(&argv[i], "AUTH") && more >= 2) {
			const struct resp_arg *user = &argv[i + 1];

			if (!auth_user(user, out))
				return;
			i += 2;
		} else if (is(&argv[i], "SETNAME") && more >= 1) {
			if (!set_name(kc, &argv[++i], out))
				return;
		} else {
			rb_err(out, "ERR Syntax error in HELLO option '%.*s'", kv_err_len(&argv[i]),
			       (const char *)argv[i].p);
			return;
		}
	}
	rb_arr(out, 14);
	rb_bulk(out, "server", 6);
	rb_bulk(out, "redis", 5);
	rb_bulk(out, "version", 7);
	rb_bulk(out, KV_REDIS_VERSION, strlen(KV_REDIS_VERSION));
	rb_bulk(out, "proto", 5);
	rb_int(out, 2);
	rb_bulk(out, "id", 2);
	rb_int(out, (long long)kc->id);
	rb_bulk(out, "mode", 4);
	rb_bulk(out, "standalone", 10);
	rb_bulk(out, "role", 4);
	rb_bulk(out, "master", 6);
	rb_bulk(out, "modules", 7);
	rb_arr(out, 0);
}

/* SHUTDOWN [NOSAVE|SAVE] [NOW] [FORCE] [ABORT], as Redis 7 parses it: the stop a SIGTERM
 * makes (every shard's append-only file written and synced, as Redis's SHUTDOWN does with
 * appendonly whatever the flags), and no reply: the client sees its connection close.
 * keel-kv keeps no snapshot, so SAVE is refused rather than ignored; ABORT finds nothing to
 * abort (a stop cannot be taken back). */
static void
shutdown_cmd(struct kconn *kc, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	bool nosave = false, save = false, other = false, abort_ = false;

	for (unsigned i = 1; i < argc; i++) {
		if (is(&argv[i], "NOSAVE"))
			nosave = true;
		else if (is(&argv[i], "SAVE"))
			save = true;
		else if (is(&argv[i], "NOW") || is(&argv[i], "FORCE"))
			other = true;
		else if (is(&argv[i], "ABORT"))
			abort_ = true;
		else {
			rb_err(out, "ERR syntax error");
			return;
		}
	}
	if ((abort_ && (nosave || save || other)) || (nosave && save)) {
		rb_err(out, "ERR syntax error");
		return;
	}
	if (abort_) {
		rb_err(out, "ERR No shutdown in progress.");
		return;
	}
	if (save) {
		rb_err(out, "ERR SHUTDOWN SAVE: keel-kv keeps no snapshot to save (its data is "
			    "kept by --appendonly yes, written and synced at any SHUTDOWN); use "
			    "SHUTDOWN or SHUTDOWN NOSAVE");
		return;
	}
	/* After the writes sent before it have run (their records are then in the shards'
	 * files, which the stop writes and syncs). */
	if (!run_later(kc, LATER_SHUTDOWN, argv, argc, out))
		shutdown_now(kc);
}

static void
shutdown_now(struct kconn *kc)
{
	keel_log(KEEL_LOG_WARN, "kv", "shard %u: SHUTDOWN from a client: stopping", self());
	kc->closing = true;
	keel_stop(0);
}

/* CLIENT LIST, INFO and KILL, as Redis 7.0 answers them. A shard knows its own clients
 * only, so LIST and KILL run on every shard (a fan-out of kv_client_part) and their parts
 * are merged: LIST's lines shard by shard, each shard's in the order its clients came
 * (LIST ID's in the ids' order: merge_by_arg). */

/* The subcommand of CLIENT, CONFIG, COMMAND, OBJECT or MEMORY, for CLIENT LIST's cmd field
 * (sub_note). One that is no word (a space, a newline, a control byte) is not, as it would
 * split its client's line (and CLIENT LIST ID's merge counts lines); no such one is known
 * (sub_known), so it is not reached. */
static void
note_sub(struct kconn *kc, const struct resp_arg *sub)
{
	size_t n = sub->len < sizeof(kc->last_sub) - 1 ? sub->len : sizeof(kc->last_sub) - 1;

	for (size_t i = 0; i < n; i++) {
		if (!isgraph(sub->p[i])) {
			kc->last_sub[0] = 0;
			return;
		}
		kc->last_sub[i] = (char)tolower(sub->p[i]);
	}
	kc->last_sub[n] = 0;
}

/* Whether @sub is a subcommand keel-kv knows of @c, when @c is one with subcommands
 * (CLIENT, CONFIG, COMMAND, OBJECT, MEMORY): the ones its code runs, whatever their
 * arguments; to any other it answers "unknown subcommand", and CLIENT LIST's cmd field
 * then says NULL, as Redis's does (its lookup of the command finds none). @c is not NULL. */
static bool
sub_known(const struct kv_cmd *c, const struct resp_arg *argv, unsigned argc)
{
	static const char *const client[] = { "SETNAME",  "GETNAME", "ID",   "INFO",
					      "NO-EVICT", "HELP",    "LIST", "KILL" };
	const struct resp_arg *sub = &argv[1];

	if (c->route == KV_R_KEY2)
		return kv_key2_check(c->name, argv, argc, NULL) != -2;
	if (!strcmp(c->name, "client")) {
		for (size_t i = 0; i < sizeof(client) / sizeof(client[0]); i++)
			if (is(sub, client[i]))
				return true;
		return false;
	}
	if (!strcmp(c->name, "config"))
		return is(sub, "GET");
	return is(sub, "COUNT") || is(sub, "DOCS") || is(sub, "INFO"); /* command */
}

/* As Redis's lastcmd, for CLIENT LIST's cmd field: @c (NULL: none known), with its
 * subcommand where it has them ("client|list"), or NULL for a subcommand it does not
 * know. Set before anything runs, queued in MULTI or refused. */
static void
sub_note(struct kconn *kc, const struct kv_cmd *c, const struct resp_arg *argv, unsigned argc)
{
	kc->last_cmd = c;
	kc->last_sub[0] = 0;
	/* Subcommands: OBJECT and MEMORY (KV_R_KEY2), CLIENT, CONFIG and COMMAND (local);
	 * the route first, so that a key's command (every GET, SET ...) compares no name. */
	if (!c || argc < 2 ||
	    (c->route != KV_R_KEY2 &&
	     (c->route != KV_R_LOCAL || (strcmp(c->name, "client") && strcmp(c->name, "config") &&
					 strcmp(c->name, "command")))))
		return;
	if (sub_known(c, argv, argc))
		note_sub(kc, &argv[1]); /* "object|encoding" */
	else
		kc->last_cmd = NULL;
}

/* Which clients CLIENT LIST or KILL names, from its options (after the subcommand). */
struct client_sel {
	bool old;  /* CLIENT KILL in its old form, CLIENT KILL ip:port (+OK or "No such client") */
	bool none; /* TYPE master, replica, slave or pubsub: keel-kv has no such client */
	bool skipme;                /* KILL: not the calling client (the new form's default) */
	const struct resp_arg *ids; /* these ids (LIST ID takes several, KILL ID one) */
	unsigned nids;
	uint64_t *idv; /* ... parsed and sorted where they are matched (nidv of them) */
	unsigned nidv;
	const struct resp_arg *addr, *laddr;
	uint64_t me; /* the calling client's id */
};

static bool
client_type(const struct resp_arg *t, bool *none, struct rbuf *out)
{
	if (is(t, "normal"))
		return true;
	if (is(t, "master") || is(t, "replica") || is(t, "slave") || is(t, "pubsub")) {
		*none = true;
		return true;
	}
	rb_err(out, "ERR Unknown client type '%.*s'", kv_err_len(t), (const char *)t->p);
	return false;
}

/* Parse @n options at @a as Redis 7.0 does; false, with the error in @out, when they do
 * not parse. */
static bool
client_sel_parse(struct client_sel *s, bool kill, const struct resp_arg *a, unsigned n,
		 struct rbuf *out)
{
	long long id;

	memset(s, 0, sizeof(*s));
	if (!kill) {
		if (n == 2 && is(&a[0], "TYPE"))
			return client_type(&a[1], &s->none, out);
		if (n >= 2 && is(&a[0], "ID")) {
			for (unsigned i = 1; i < n; i++) /* any integer: 0 or -1 lists none */
				if (!kv_arg_ll(&a[i], &id)) {
					rb_err(out, "ERR Invalid client ID");
					return false;
				}
			s->ids = a + 1;
			s->nids = n - 1;
			return true;
		}
		if (n)
			goto syntax;
		return true;
	}
	if (n == 1) {
		s->old = true;
		s->addr = &a[0];
		return true;
	}
	s->skipme = true;
	for (unsigned i = 0; i < n; i += 2) {
		const struct resp_arg *v = &a[i + 1];

		if (i + 1 >= n)
			goto syntax;
		if (is(&a[i], "ID")) {
			if (!kv_arg_ll(v, &id) || id < 1) {
				rb_err(out, "ERR client-id should be greater than 0");
				return false;
			}
			s->ids = v;
			s->nids = 1;
		} else if (is(&a[i], "TYPE")) {
			if (!client_type(v, &s->none, out))
				return false;
		} else if (is(&a[i], "ADDR")) {
			s->addr = v;
		} else if (is(&a[i], "LADDR")) {
			s->laddr = v;
		} else if (is(&a[i], "USER")) { /* keel-kv's one user */
			if (!is(v, "default")) {
				rb_err(out, "ERR No such user '%.*s'", kv_err_len(v),
				       (const char *)v->p);
				return false;
			}
		} else if (is(&a[i], "SKIPME")) {
			if (!is(v, "yes") && !is(v, "no"))
				goto syntax;
			s->skipme = is(v, "yes");
		} else {
			goto syntax;
		}
	}
	return true;
syntax:
	rb_err(out, "ERR syntax error");
	return false;
}

/* Whether @a reads as an address addr_text writes: "ip:port", "[ip6]:port", or "?:0" (what
 * CLIENT LIST shows of every client without --client-addrs: the value a user copies). */
static bool
addr_form(const struct resp_arg *a)
{
	char b[INET6_ADDRSTRLEN + 16], *colon, *end;
	struct in6_addr a6;
	struct in_addr a4;
	unsigned long port;

	if (a->len == 3 && !memcmp(a->p, "?:0", 3))
		return true;
	if (a->len >= sizeof(b))
		return false;
	memcpy(b, a->p, a->len);
	b[a->len] = 0;
	colon = strrchr(b, ':');
	if (!colon || !colon[1] || colon[1] < '0' || colon[1] > '9')
		return false;
	errno = 0;
	port = strtoul(colon + 1, &end, 10);
	if (*end || errno || port > 65535)
		return false;
	*colon = 0;
	if (b[0] == '[' && colon > b + 1 && colon[-1] == ']') {
		colon[-1] = 0;
		return inet_pton(AF_INET6, b + 1, &a6) == 1;
	}
	return inet_pton(AF_INET, b, &a4) == 1;
}

/* @kc's peer (or, @local, its own) address as Redis writes it: "ip:port", "[ip6]:port",
 * or "?:0" when unknown (keel-kv reads the addresses only with --client-addrs yes). */
static void
addr_text(const struct kconn *kc, bool local, char *b, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char ip[INET6_ADDRSTRLEN];
	int r = local ? keel_conn_local_addr(kc->c, &ss, &sl)
		      : keel_conn_peer_addr(kc->c, &ss, &sl);

	if (r == 0 && ss.ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
		snprintf(b, len, "%s:%u", ip, ntohs(a->sin_port));
	} else if (r == 0 && ss.ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
		snprintf(b, len, "[%s]:%u", ip, ntohs(a->sin6_port));
	} else {
		snprintf(b, len, "?:0");
	}
}

static bool
addr_is(const struct kconn *kc, bool local, const struct resp_arg *want)
{
	char b[INET6_ADDRSTRLEN + 16];

	addr_text(kc, local, b, sizeof(b));
	return strlen(b) == want->len && !memcmp(b, want->p, want->len);
}

static int
id_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* @s's ids as a sorted array, each client then matched in log time (a LIST ID of 100,000
 * ids over 1,000 clients parsed every id for every client: each shard stalled 0.7-0.8 s).
 * False without memory. */
static bool
client_ids(struct client_sel *s)
{
	long long id;

	if (!s->nids)
		return true;
	s->idv = malloc(s->nids * sizeof(*s->idv));
	if (!s->idv)
		return false;
	for (unsigned i = 0; i < s->nids; i++)
		if (kv_arg_ll(&s->ids[i], &id) && id > 0)
			s->idv[s->nidv++] = (uint64_t)id;
	qsort(s->idv, s->nidv, sizeof(*s->idv), id_cmp);
	return true;
}

static bool
client_matches(const struct client_sel *s, const struct kconn *kc)
{
	/* Refused past --maxclients, or closed (killed, evicted, failed): no longer a
	 * client, though its close is still under way. */
	if (kc->refused || kc->aborted || s->none || (s->skipme && kc->id == s->me))
		return false;
	if (s->nids && !bsearch(&kc->id, s->idv, s->nidv, sizeof(*s->idv), id_cmp))
		return false;
	return (!s->addr || addr_is(kc, false, s->addr)) &&
	       (!s->laddr || addr_is(kc, true, s->laddr));
}

/* @kc's line of CLIENT LIST (and CLIENT INFO), with Redis 7.0's fields in its order;
 * docs/kv.md says what each holds in keel-kv. @own: the reply being made is in its replies
 * waiting (npend), where Redis does not count it. */
static void
client_line(struct rbuf *b, const struct kconn *kc, uint64_t now, unsigned own)
{
	char addr[INET6_ADDRSTRLEN + 16], laddr[INET6_ADDRSTRLEN + 16], cmd[64], flags[4];
	char head[256], tail[640];
	uint64_t queued = keel_conn_queued(kc->c);
	uint64_t omem = kc->pend_bytes + queued + (kc->big.buf ? kc->big.len - kc->big_off : 0);
	unsigned nf = 0;
	int h, t;

	addr_text(kc, false, addr, sizeof(addr));
	addr_text(kc, true, laddr, sizeof(laddr));
	if (!kc->last_cmd)
		snprintf(cmd, sizeof(cmd), "NULL");
	else if (kc->last_sub[0])
		snprintf(cmd, sizeof(cmd), "%s|%s", kc->last_cmd->name, kc->last_sub);
	else
		snprintf(cmd, sizeof(cmd), "%s", kc->last_cmd->name);
	if (kc->tx)
		flags[nf++] = 'x';
	if (kc->wait) /* blocked, as Redis flags a client in WAIT */
		flags[nf++] = 'b';
	if (kc->closing)
		flags[nf++] = 'c';
	if (!nf)
		flags[nf++] = 'N';
	flags[nf] = 0;
	h = snprintf(head, sizeof(head),
		     "id=%llu addr=%s laddr=%s fd=-1 name=", (unsigned long long)kc->id, addr,
		     laddr);
	t = snprintf(tail, sizeof(tail),
		     " age=%lld idle=%lld flags=%s db=0 sub=0 psub=0 ssub=0 multi=%d qbuf=%zu "
		     "qbuf-free=%zu argv-mem=%zu multi-mem=%zu rbs=%zu rbp=%zu obl=%zu oll=%u "
		     "omem=%llu tot-mem=%llu events=%s cmd=%s user=default redir=-1 resp=2\n",
		     (long long)((now - kc->born_ns) / 1000000000u),
		     (long long)(now > kc->active_ns ? (now - kc->active_ns) / 1000000000u : 0),
		     flags, kc->tx ? (int)kc->tx->n : -1, kc->in_len, kc->in_cap - kc->in_len,
		     (size_t)kc->argv_cap * sizeof(*kc->argv) + kc->scratch_cap,
		     kc->tx ? kc->tx->q.cap : 0, kc->out.cap, kc->out.len, kc->out.len,
		     kc->npend - own, (unsigned long long)omem, (unsigned long long)client_mem(kc),
		     queued ? "rw" : "r", cmd);
	rb_put(b, head, (size_t)h);
	if (kc->name)
		rb_put(b, kc->name, kc->name_len);
	rb_put(b, tail, (size_t)t);
}

/* CLIENT LIST ID: a line per id argument, in their order, empty where the client is not
 * this shard's (or none): merge_by_arg puts the shards' lines in the arguments' order. The
 * matching clients are sorted by id once, each argument then found in log time. An id may
 * repeat: past --send-max @body is the error instead (kv_reply_over; *@over set). False
 * without memory. */
static bool
client_lines_by_arg(const struct client_sel *s, uint64_t now, struct rbuf *body, bool *over)
{
	struct by_id {
		uint64_t id; /* first: id_cmp compares it */
		const struct kconn *kc;
	} *v = NULL;
	size_t n = 0, cap = 0;

	for (const struct kconn *kc = shards[self()].conns; kc; kc = kc->next) {
		if (!client_matches(s, kc))
			continue;
		if (n == cap) {
			struct by_id *nv = realloc(v, (cap ? cap * 2 : 16) * sizeof(*v));

			if (!nv) {
				free(v);
				return false;
			}
			v = nv;
			cap = cap ? cap * 2 : 16;
		}
		v[n].id = kc->id;
		v[n++].kc = kc;
	}
	if (n)
		qsort(v, n, sizeof(*v), id_cmp);
	for (unsigned i = 0; i < s->nids; i++) {
		const struct by_id *f = NULL;
		long long id;

		if (n && kv_arg_ll(&s->ids[i], &id) && id > 0) {
			uint64_t key = (uint64_t)id;

			f = bsearch(&key, v, n, sizeof(*v), id_cmp);
		}
		if (f)
			client_line(body, f->kc, now, f->id == s->me);
		else
			rb_put(body, "\n", 1);
		if ((*over = kv_reply_over(body, 0, 0, false)))
			break;
	}
	free(v);
	return true;
}

void
kv_client_part(struct kv_db *db, struct resp_arg *argv, unsigned argc, struct rbuf *out)
{
	struct kconn *kc = shards[self()].conns;
	bool kill = is(&argv[1], "KILL");
	uint64_t now = keel_now_ns();
	struct client_sel s;
	long long me = 0, n = 0, first = 0;
	struct rbuf body = { 0 };
	bool over = false;

	(void)db;
	/* Its request, made by client_fanout: "CLIENT LIST|KILL <the caller's id> [options]",
	 * checked there, so it parses. */
	if (argc < 3 || !kv_arg_ll(&argv[2], &me) ||
	    !client_sel_parse(&s, kill, argv + 3, argc - 3, out))
		return;
	s.me = (uint64_t)me;
	if (!client_ids(&s)) {
		out->oom = true;
		return;
	}
	if (!kill && s.nids) {
		if (!client_lines_by_arg(&s, now, &body, &over))
			body.oom = true;
		kc = NULL; /* listed: the walk below has nothing to do */
	}
	/* The list is newest first: from its end, the clients in the order they came. */
	while (kc && kc->next)
		kc = kc->next;
	for (; kc; kc = kc->prev) {
		if (!client_matches(&s, kc))
			continue;
		if (!n++)
			first = (long long)kc->id;
		if (!kill) {
			client_line(&body, kc, now, kc->id == s.me);
			/* Names up to --proto-max-bulk-len: bounded as CLIENT LIST ID is. */
			if ((over = kv_reply_over(&body, 0, 0, false)))
				break;
		} else if (kc->id == s.me)
			kc->closing = true; /* the caller (SKIPME no): after its reply, as Redis */
		else
			conn_fail(kc, -ECONNABORTED); /* on_close, freeing it, comes later */
	}
	free(s.idv);
	if (kill) {
		if (n) /* a line per shard and KILL, not per client */
			keel_log(KEEL_LOG_INFO, "kv",
				 "CLIENT KILL closed %lld client%s (id %lld%s)", n,
				 n == 1 ? "" : "s", first, n > 1 ? " and others" : "");
		rb_int(out, n);
		return;
	}
	if (over) /* the error: merge's part_error makes it the reply */
		rb_put(out, body.p, body.len);
	else
		rb_bulk(out, body.p, body.len);
	out->oom |= body.oom;
	rb_free(&body);
}

/* CLIENT LIST or CLIENT KILL from @kc: checked here (an error is the reply), then run on
 * every shard. False for the other subcommands (local_cmd runs them). */
static bool
client_fanout(struct kconn *kc, struct resp_arg *argv, unsigned argc)
{
	/* As the table's CLIENT, run on every shard, merged as each reply wants. */
#define CLIENT_ALL(m)                                                           \
	{                                                                       \
		.name = "client", .arity = -2, .route = KV_R_ALL, .merge = (m), \
		.fn = kv_client_part, .flag_words = ""                          \
	}
	static const struct kv_cmd list_all = CLIENT_ALL(KV_M_BULK),
				   list_by_arg = CLIENT_ALL(KV_M_BULK_BY_ARG),
				   kill_all = CLIENT_ALL(KV_M_SUM),
				   kill_old = CLIENT_ALL(KV_M_KILL);
#undef CLIENT_ALL
	bool kill = is(&argv[1], "KILL");
	struct rbuf req = { 0 }, err = { 0 }, *out;
	struct client_sel s;
	char id[24];

	if (!kill && !is(&argv[1], "LIST"))
		return false;
	if (kill && argc == 2)
		rb_err(&err, "ERR wrong number of arguments for 'client|kill' command");
	else if (client_sel_parse(&s, kill, argv + 2, argc - 2, &err) && (s.addr || s.laddr) &&
		 !kv_cfg.client_addrs) {
		/* Without the addresses, one that no client could have still finds none, as in
		 * Redis ("CLIENT KILL ID", the old form's address "ID"); a real one is refused
		 * naming the option, where it would find none without saying why. */
		if ((s.addr && !addr_form(s.addr)) || (s.laddr && !addr_form(s.laddr))) {
			if (s.old)
				rb_err(&err, "ERR No such client");
			else
				rb_int(&err, 0);
		} else {
			rb_err(&err, "ERR keel-kv reads no client addresses unless started with "
				     "--client-addrs yes (each accept then costs their reads); use "
				     "CLIENT KILL ID id");
		}
	}
	if (err.len || err.oom) {
		out = reply_to(kc);
		if (out) {
			rb_put(out, err.p, err.len);
			out->oom |= err.oom;
		} else {
			kc->out.oom = true; /* no place for its reply: the connection is aborted */
		}
		rb_free(&err);
		return true;
	}
	/* The parts' request: the caller's id (KILL's SKIPME, LIST's own line), then the
	 * options as received. */
	rb_arr(&req, (long long)argc + 1);
	rb_bulk(&req, argv[0].p, argv[0].len);
	rb_bulk(&req, argv[1].p, argv[1].len);
	rb_bulk(&req, id, (size_t)snprintf(id, sizeof(id), "%llu", (unsigned long long)kc->id));
	for (unsigned i = 2; i < argc; i++)
		rb_bulk(&req, argv[i].p, argv[i].len);
	if (req.oom) {
		rb_free(&req);
		kc->out.oom = true;
		return true;
	}
	/* fanout parses this shard's part into kc->argv, which may move: @argv and @s are
	 * not read after it. */
	fanout(kc,
	       !kill   ? (s.nids ? &list_by_arg : &list_all)
	       : s.old ? &kill_old
		       : &kill_all,
	       argv, argc, req.p, req.len, NULL, true);
	rb_free(&req);
	return true;
}

static void watch_release(struct kconn *kc);

/* WAIT's timeout ended (or the client half-closed): its reply is 0, the replicas keel-kv
 * has; what the client sent after it is parsed again. */
static void
wait_end(struct kconn *kc)
{
	struct pend *p = kc->wait;

	if (p->wait_timer) {
		keel_timer_destroy(p->wait_timer); /* allowed inside its own callback */
		p->wait_timer = NULL;
	}
	kc->wait = NULL;
	stat_add(&kv_stats[self()].blocked, -1);
	/* Input held behind it waits as any held input does, unread, until resume_cb (or
	 * unpause) reads on. */
	if (kc->held || kc->paused)
		keel_conn_pause_read(kc->c);
	rb_int(&p->rep, 0);
	p->done = true;
	p->counted = p->rep.len;
	kc->pend_bytes += p->counted;
	kc->barrier = false;
	if (p == kc->head) {
		drain(kc);
		flush_out(kc);
	}
	resume_later(kc);
}

static void
wait_fire(struct keel_timer *t, void *arg)
{
	struct kconn *kc = arg;

	(void)t;
	wait_end(kc);
}

/* WAIT numreplicas timeout: keel-kv has no replicas, so the reply is 0, as Redis 7.0's
 * without any: at once for 0 (or fewer) and inside a transaction; otherwise once the
 * timeout (ms) has passed, for ever with 0, the client blocked meanwhile (nothing it sent
 * after runs until then, as Redis holds a blocked client's commands; CLIENT LIST flags it
 * b). A client that half-closes is answered at once; one that goes is forgotten. The
 * argument errors are redis-server 7.0.15's. */
static void
wait_cmd(struct kconn *kc, struct resp_arg *argv, struct rbuf *out)
{
	struct keel_timer *t = NULL;
	long long n, ms;
	struct pend *p;

	if (!kv_arg_ll(&argv[1], &n)) {
		rb_err(out, "ERR value is not an integer or out of range");
		return;
	}
	if (!kv_arg_ll(&argv[2], &ms)) {
		rb_err(out, "ERR timeout is not an integer or out of range");
		return;
	}
	if (ms < 0) {
		rb_err(out, "ERR timeout is negative");
		return;
	}
	if (n <= 0 || !kc || kc->eof) {
		rb_int(out, 0);
		return;
	}
	/* The timer first: refused, the error is WAIT's reply like any other, and no pend
	 * is taken. A timeout past what the timer's nanoseconds hold (292 years) is none. */
	if (ms && (unsigned long long)ms <= UINT64_MAX / 1000000u) {
		int r = keel_timer_create(wait_fire, kc, &t);

		if (r < 0) {
			rb_err(out, "ERR WAIT: no timer for its timeout (%s)", strerror(-r));
			return;
		}
	}
	/* Its reply waits in a pend of its own: the one reply_to opened for it, or a new one
	 * when nothing waited before it (@out is then the connection's output). */
	p = kc->pend_open;
	if (p && out == &p->rep) {
		kc->pend_open = NULL; /* counted when made (wait_end) */
	} else if (!(p = pend_new(kc))) {
		keel_timer_destroy(t);
		out->oom = true; /* no place for its reply: the connection is aborted */
		return;
	}
	p->wait_timer = t;
	if (t)
		keel_timer_start(t, (uint64_t)ms * 1000000u, 0);
	p->done = false;
	kc->wait = p;
	kc->barrier = true;
	stat_add(&kv_stats[self()].blocked, 1);
	/* Read behind it (hold_input does not pause): reading paused before, at the reply
	 * limits or past PEND_MAX, would otherwise stay so, and a client that left while
	 * blocked for ever would be kept (its EOF and reset are read). */
	keel_conn_resume_read(kc->c);
}

static void
local_cmd(struct kconn *kc, const struct kv_cmd *c, struct resp_arg *argv, unsigned argc,
	  struct rbuf *out)
{
	const char *n = c->name;

	stat_add(&kv_stats[self()].commands, 1);
	if (!strcmp(n, "ping")) {
		if (argc > 2)
			kv_reply_arity(out, c);
		else if (argc == 2)
			rb_bulk(out, argv[1].p, argv[1].len);
		else
			rb_simple(out, "PONG");
	} else if (!strcmp(n, "echo")) {
		rb_bulk(out, argv[1].p, argv[1].len);
	} else if (!strcmp(n, "select")) {
		/* Redis: an integer (string2ll) that fits an int, then the index; there is one
		 * database (checked against redis-server 7.0.15). The argument is not
		 * NUL-terminated (an inline one is followed by what an earlier line left in the
		 * scratch area): kv_arg_ll reads only its bytes. */
		if (kv_db_index_ok(&argv[1], out))
			rb_simple(out, "OK");
	} else if (!strcmp(n, "unwatch")) { /* in a transaction (kc NULL): EXEC ends them */
		rb_simple(out, "OK");
		if (kc)
			watch_release(kc);
	} else if (!strcmp(n, "wait")) {
		wait_cmd(kc, argv, out);
	} else if (!strcmp(n, "quit")) {
		rb_simple(out, "OK");
		kc->closing = true;
	} else if (!strcmp(n, "shutdown")) {
		shutdown_cmd(kc, argv, argc, out);
	} else if (!strcmp(n, "hello")) {
		hello_cmd(kc, argv, argc, out);
	} else if (!strcmp(n, "time")) { /* the wall clock: seconds and microseconds */
		struct timespec ts;
		char sec[24], us[8];
		int ls, lu;

		clock_gettime(CLOCK_REALTIME, &ts);
		ls = snprintf(sec, sizeof(sec), "%lld", (long long)ts.tv_sec);
		lu = snprintf(us, sizeof(us), "%ld", ts.tv_nsec / 1000);
		rb_arr(out, 2);
		rb_bulk(out, sec, (size_t)ls);
		rb_bulk(out, us, (size_t)lu);
	} else if (!strcmp(n, "auth")) { /* a Redis whose default user has no password */
		if (argc == 2)
			rb_err(out,
			       "ERR AUTH <password> called without any password configured for "
			       "the default user. Are you sure your configuration is correct?");
		else if (argc > 3)
			rb_err(out, "ERR syntax error");
		else if (auth_user(&argv[1], out))
			rb_simple(out, "OK");
	} else if (!strcmp(n, "info")) {
		if (!run_later(kc, LATER_INFO, argv, argc, out))
			info(out, argv, argc);
	} else if (!strcmp(n, "command")) {
		unsigned nc;
		const struct kv_cmd *t = kv_cmd_table(&nc);

		/* COMMAND, and COMMAND INFO with no names (Redis 7: every command). */
		if (argc == 1 || (argc == 2 && is(&argv[1], "INFO"))) {
			rb_arr(out, nc);
			for (unsigned i = 0; i < nc; i++)
				command_info(out, &t[i]);
		} else if (is(&argv[1], "COUNT")) {
			if (argc == 2) /* Redis 7's arity error for a subcommand, else */
				rb_int(out, nc);
			else
				rb_err(out,
				       "ERR wrong number of arguments for 'command|count' command");
		} else if (is(&argv[1], "DOCS")) {
			rb_arr(out, 0); /* no documentation: redis-cli then shows no hints */
		} else if (is(&argv[1], "INFO")) {
			size_t start = out->len;

			rb_arr(out, argc - 2);
			/* A name may repeat: a reply of any size, refused past --send-max as
			 * MGET's is (100,000 names made 10 MB). */
			for (unsigned i = 2; i < argc; i++) {
				const struct kv_cmd *k = kv_cmd_find(argv[i].p, argv[i].len);
				if (k)
					command_info(out, k);
				else
					rb_nil(out);
				if (kv_reply_over(out, start, start, false))
					break;
			}
		} else {
			rb_err(out, "ERR unknown subcommand '%.*s'. Try COMMAND HELP.",
			       kv_err_len(&argv[1]), (const char *)argv[1].p);
		}
	} else if (!strcmp(n, "config")) {
		if (is(&argv[1], "GET") && argc >= 3) {
			char v[8][32], dir[PATH_MAX];
			const char *names[] = { "save",
						"appendonly",
						"maxmemory",
						"timeout",
						"proto-max-bulk-len",
						"databases",
						"auto-aof-rewrite-percentage",
						"auto-aof-rewrite-min-size",
						"maxclients",
						"maxmemory-policy",
						"appendfsync",
						"dir",
						"port",
						"maxmemory-clients" };
			const char *vals[14] = {
				"", kv_cfg.aof ? "yes" : "no", v[0], v[1], v[2], "1", v[3], v[4],
				v[5], "noeviction",
				kv_cfg.fsync == KV_FSYNC_ALWAYS     ? "always"
				: kv_cfg.fsync == KV_FSYNC_EVERYSEC ? "everysec"
								    : "no",
				/* Redis answers its working directory, a whole path. */
				realpath(kv_cfg.dir, dir) ? dir : kv_cfg.dir, v[6], v[7]
			};
			struct rbuf body = { 0 };
			unsigned cnt = 0;
			snprintf(v[0], sizeof(v[0]), "%llu", (unsigned long long)kv_cfg.maxmemory);
			snprintf(v[1], sizeof(v[1]), "%u", kv_cfg.timeout_s);
			snprintf(v[2], sizeof(v[2]), "%llu", (unsigned long long)kv_cfg.max_bulk);
			snprintf(v[3], sizeof(v[3]), "%u", kv_cfg.auto_rw_pct);
			snprintf(v[4], sizeof(v[4]), "%llu",
				 (unsigned long long)kv_cfg.auto_rw_min);
			snprintf(v[5], sizeof(v[5]), "%u", kv_cfg.maxclients);
			snprintf(v[6], sizeof(v[6]), "%u", kv_port);
			/* As Redis answers it: the percentage when given as one. */
			if (kv_cfg.maxmemory_clients_pct)
				snprintf(v[7], sizeof(v[7]), "%u%%", kv_cfg.maxmemory_clients_pct);
			else
				snprintf(v[7], sizeof(v[7]), "%llu",
					 (unsigned long long)kv_cfg.maxmemory_clients);
			for (unsigned k = 0; k < sizeof(names) / sizeof(names[0]); k++)
				for (unsigned i = 2; i < argc; i++)
					if (kv_glob(argv[i].p, argv[i].len,
						    (const uint8_t *)names[k], strlen(names[k]),
						    true)) {
						/* A name without a pattern is answered as the
						 * client wrote it, as Redis 7 does ("SAVE"). */
						bool exact = !memchr(argv[i].p, '*', argv[i].len) &&
							     !memchr(argv[i].p, '?', argv[i].len) &&
							     !memchr(argv[i].p, '[', argv[i].len);
						if (exact)
							rb_bulk(&body, argv[i].p, argv[i].len);
						else
							rb_bulk(&body, names[k], strlen(names[k]));
						rb_bulk(&body, vals[k], strlen(vals[k]));
						cnt += 2;
						break;
					}
			rb_arr(out, cnt);
			rb_put(out, body.p, body.len);
			out->oom |= body.oom;
			rb_free(&body);
		} else if (is(&argv[1], "GET")) {
			rb_err(out, "ERR wrong number of arguments for 'config|get' command");
		} else {
			rb_err(out, "ERR unknown subcommand '%.*s'. Try CONFIG HELP.",
			       kv_err_len(&argv[1]), (const char *)argv[1].p);
		}
	} else if (!strcmp(n, "client")) {
		if (is(&argv[1], "SETNAME") && argc == 3) {
			if (set_name(kc, &argv[2], out))
				rb_simple(out, "OK");
		} else if (is(&argv[1], "GETNAME") && argc == 2) {
			if (kc->name)
				rb_bulk(out, kc->name, kc->name_len);
			else
				rb_nil(out);
		} else if (is(&argv[1], "ID") && argc == 2) {
			rb_int(out, (long long)kc->id);
		} else if (is(&argv[1], "HELP") && argc == 2) {
			static const char *const help[] = {
				"CLIENT <subcommand> [<arg> ...]. keel-kv's subcommands:",
				"ID",
				"    This connection's id.",
				"INFO",
				"    This connection's line, as in CLIENT LIST.",
				"LIST [TYPE normal|master|replica|pubsub | ID <id> ...]",
				"    A line per client, over every shard.",
				"KILL <ip:port> | KILL <filter> <value> ...",
				"    Close clients. Filters: ID, TYPE, USER, SKIPME yes|no, and ADDR and "
				"LADDR (these and KILL <ip:port> with --client-addrs yes).",
				"SETNAME <name> | GETNAME",
				"    This connection's name.",
				"NO-EVICT on|off",
				"    Never close this connection for --maxmemory-clients.",
				"HELP",
				"    This text.",
			};

			rb_arr(out, sizeof(help) / sizeof(help[0]));
			for (size_t i = 0; i < sizeof(help) / sizeof(help[0]); i++)
				rb_simple(out, help[i]);
		} else if (is(&argv[1], "INFO") && argc == 2) {
			struct rbuf line = { 0 };

			client_line(&line, kc, keel_now_ns(), out != &kc->out);
			rb_bulk(out, line.p, line.len);
			out->oom |= line.oom;
			rb_free(&line);
		} else if (is(&argv[1], "NO-EVICT") && argc == 3) {
			/* Redis 7's: this client is never closed for --maxmemory-clients (an
			 * admin's or a monitor's connection); it still counts in the sum. */
			if (is(&argv[2], "ON") || is(&argv[2], "OFF")) {
				kc->no_evict = is(&argv[2], "ON");
				rb_simple(out, "OK");
			} else {
				rb_err(out, "ERR syntax error");
			}
		} else if (is(&argv[1], "SETNAME") || is(&argv[1], "GETNAME") ||
			   is(&argv[1], "ID") || is(&argv[1], "NO-EVICT") || is(&argv[1], "INFO") ||
			   is(&argv[1], "HELP")) {
			rb_err(out, "ERR wrong number of arguments for 'client|%s' command",
			       kc->last_sub);
		} else {
			rb_err(out, "ERR unknown subcommand '%.*s'. Try CLIENT HELP.",
			       kv_err_len(&argv[1]), (const char *)argv[1].p);
		}
	}
}

/* One parsed request. @src holds @raw at @off when it came straight from a receive
 * buffer (the export hand-off can then avoid a copy). */
/* A write split over shards (the owners of @nkeys keys, or every shard when @owners is
 * NULL) is refused as a whole when any of them refuses writes (its append-only file
 * fails): each part checked its own shard, so the others ran and the reply still said
 * -MISCONF (an MSET half done, a DEL or FLUSHALL done on the healthy shards). Returns that
 * shard's error, or NULL. As of each shard's last publish: a file that fails after this
 * check still refuses only its own part. */
static const char *
split_write_refused(const struct kv_cmd *c, const uint16_t *owners, unsigned nkeys)
{
	if (!(c->flags & KV_F_WRITE) || !kv_cfg.aof)
		return NULL;
	if (!owners) {
		for (unsigned i = 0; i < kv_cfg.nshards; i++) {
			const char *e = kv_aof_error_on(i);
			if (e)
				return e;
		}
		return NULL;
	}
	for (unsigned i = 0; i < nkeys; i++) {
		const char *e = kv_aof_error_on(owners[i]);
		if (e)
			return e;
	}
	return NULL;
}

/* Transactions. */

static void
tx_free(struct ktx *tx)
{
	if (tx) {
		rb_free(&tx->q);
		free(tx);
	}
}

/* The shard a queued command's keys live on: -1 when it names none (PING, a SCAN cursor
 * that does not parse), -2 when they live on more than one. */
static int
tx_owner(const struct kv_cmd *c, const struct resp_arg *argv, unsigned argc)
{
	int o = -1;
	uint64_t cur;

	if (kv_cfg.nshards == 1)
		return -1;
	switch (c->route) {
	case KV_R_KEY:
		return (int)kv_owner_key(argv[1].p, argv[1].len);
	case KV_R_KEY2:
		return kv_key2_check(c->name, argv, argc, NULL) < 1
			       ? -1
			       : (int)kv_owner_key(argv[2].p, argv[2].len);
	case KV_R_KEYS:
		for (unsigned i = 1, n = 0; n < kv_cmd_nkeys(c, argc); i += c->key_step, n++) {
			int k = (int)kv_owner_key(argv[i].p, argv[i].len);
			if (o >= 0 && k != o)
				return -2;
			o = k;
		}
		return o;
	case KV_R_CURSOR:
		return kv_scan_cursor(&argv[1], &cur) ? (int)(cur % kv_cfg.nshards) : -1;
	default:
		return -1;
	}
}

/* What MULTI, EXEC, DISCARD, RESET and QUIT do at once; the rest runs at EXEC. */
static bool
tx_now(const struct kv_cmd *c)
{
	return !strcmp(c->name, "exec") || !strcmp(c->name, "discard") ||
	       !strcmp(c->name, "reset") || !strcmp(c->name, "multi") ||
	       !strcmp(c->name, "watch") || !strcmp(c->name, "quit");
}

/* Whether @argc words (the name included) fit @c's arity: exactly arity, or at least
 * -arity where it is negative (Redis's convention). */
static bool
arity_ok(const struct kv_cmd *c, unsigned argc)
{
	return c->arity > 0 ? argc == (unsigned)c->arity : argc >= (unsigned)-c->arity;
}

/* Inside MULTI: queue the request (+QUEUED), or say why not, which makes EXEC abort, as
 * Redis does. False for the commands that run at once (tx_now). */
static bool
tx_queue(struct kconn *kc, const struct kv_cmd *c, struct resp_arg *argv, unsigned argc,
	 const uint8_t *raw, size_t rawlen)
{
	struct ktx *tx = kc->tx;
	/* MSET's pairs are checked as it runs (tx_run), as in Redis: an odd count is an error
	 * in EXEC's array, not a refusal here */
	bool arity = c && !arity_ok(c, argc);
	struct rbuf *out;
	int owner;

	if (c && tx_now(c) && !arity)
		return false;
	out = reply_to(kc);
	if (!out) {
		kc->out.oom = true;
		return true;
	}
	if (!c) {
		kv_reply_unknown(out, argv, argc);
		goto refused;
	}
	if (arity && !strcmp(c->name, "exec")) { /* the transaction ends, saying why */
		rb_err(out, "EXECABORT Transaction discarded because of: wrong number of "
			    "arguments for 'exec' command");
		tx_free(tx);
		kc->tx = NULL;
		watch_release(kc); /* as Redis (execCommandAbort): any EXEC unwatches */
		return true;
	}
	if (arity) {
		kv_reply_arity(out, c);
		goto refused;
	}
	if (c->route == KV_R_LOCAL && !(c->flags & KV_F_TX_LOCAL)) {
		rb_err(out, "ERR Command not allowed inside a transaction");
		goto refused;
	}
	/* Commands of several shards, where a transaction runs on one. SCAN's cursor names a
	 * shard, so it tied the transaction to that shard and, refused beside keys of
	 * another, got the CROSSSLOT message about keys it has none of; RANDOMKEY would draw
	 * from the transaction's shard alone. */
	if (kv_cfg.nshards > 1 &&
	    (c->route == KV_R_ALL || c->route == KV_R_CURSOR || c->route == KV_R_RANDOM)) {
		rb_err(out, "ERR '%s' %s: it is taken inside MULTI with --shards 1 only", c->name,
		       c->route == KV_R_ALL
			       ? "runs on every shard, and a keel-kv transaction on one"
		       : c->route == KV_R_CURSOR
			       ? "walks the shards in turn, and a keel-kv transaction runs on one"
			       : "draws from every shard's keys, and a keel-kv transaction runs on "
				 "one");
		goto refused;
	}
	/* OBJECT's and MEMORY's subcommand and its arguments, as Redis checks them before it
	 * queues one: an error here makes EXEC abort. */
	if (c->route == KV_R_KEY2 && kv_key2_check(c->name, argv, argc, out) < 0)
		goto refused;
	owner = tx_owner(c, argv, argc);
	if (owner == -2 || (owner >= 0 && tx->owner >= 0 && owner != tx->owner)) {
		rb_err(out,
		       "CROSSSLOT Keys in request don't hash to the same slot (a keel-kv "
		       "transaction runs on one shard, so its keys must live on one: give them "
		       "a hash tag, as {user42}:name and {user42}:mail, or run --shards 1)");
		goto refused;
	}
	if (tx->q.len + rawlen > kv_cfg.query_max) {
		rb_err(out, "ERR the transaction's queued commands pass "
			    "--client-query-buffer-limit");
		goto refused;
	}
	rb_put(&tx->q, raw, rawlen);
	if (tx->q.oom) {
		rb_err(out, "ERR out of memory");
		goto refused;
	}
	tx->n++;
	if (owner >= 0)
		tx->owner = owner;
	tx->write |= (c->flags & KV_F_WRITE) != 0;
	if (c->flags & KV_F_DENYOOM)
		tx->denyoom = c;
	rb_simple(out, "QUEUED");
	return true;
refused:
	tx->dirty = true;
	return true;
}

/* WATCH, on the connection's shard. The keys of one connection's watches live on one shard
 * (as a transaction's do), whose table holds the watches (watch.c): a watch of a key there
 * is made (W_ADD) and ended (W_END) by messages sent behind the connection's other
 * requests, and EXEC sends the keys watched ahead of the transaction (W_EXEC), which that
 * shard runs only if none of them changed. */

/* The keys a connection watches are kept once each, as Redis keeps one watch per client
 * and key: a client that WATCHed one key again and again (a retry loop that never
 * UNWATCHes) grew its list with every WATCH, 190 MB for 200,000 of one 1 KB key, outside
 * used_memory, and each EXEC sent and hashed them all on the owning shard (1.4 s in one
 * callback), or WATCH failed past --client-query-buffer-limit. wset is an open-addressing
 * set over wkeys: each slot the offset + 1 of a key's bulk string there, at most half full
 * (and the key's hash is computed again where needed: keys are short, sets are small). */

/* The key whose bulk string ("$LEN\r\nKEY\r\n") starts at @off of @b. */
static void
wkey_at(const struct rbuf *b, uint32_t off, const uint8_t **key, size_t *len)
{
	const uint8_t *p = b->p + off + 1;
	size_t n = 0;

	while (*p != '\r')
		n = n * 10 + (size_t)(*p++ - '0');
	*key = p + 2;
	*len = n;
}

/* The slot of @key in @kc's set: where it is, or the empty one where it would go. */
static uint32_t
wset_slot(const struct kconn *kc, const uint8_t *key, size_t len)
{
	uint32_t mask = kc->wset_cap - 1;
	uint32_t i = (uint32_t)kv_hash(key, len) & mask;

	for (;; i = (i + 1) & mask) {
		const uint8_t *k;
		size_t n;

		if (!kc->wset[i])
			return i;
		wkey_at(&kc->wkeys, kc->wset[i] - 1, &k, &n);
		if (n == len && memcmp(k, key, len) == 0)
			return i;
	}
}

/* Rebuild @kc's set for its first @nkeys keys (all of wkeys) at a capacity for @want keys.
 * Returns 0 or -ENOMEM (the set unchanged). */
static int
wset_build(struct kconn *kc, unsigned want)
{
	uint32_t cap = 16, off = 0;
	uint32_t *set;

	while (cap < 2 * (uint64_t)want)
		cap *= 2;
	set = calloc(cap, sizeof(*set));
	if (!set)
		return -ENOMEM;
	free(kc->wset);
	kc->wset = set;
	kc->wset_cap = cap;
	while (off < kc->wkeys.len) {
		const uint8_t *k;
		size_t n;

		wkey_at(&kc->wkeys, off, &k, &n);
		kc->wset[wset_slot(kc, k, n)] = off + 1;
		off = (uint32_t)(k + n + 2 - kc->wkeys.p);
	}
	return 0;
}

static void
watch_keys_free(struct kconn *kc)
{
	rb_free(&kc->wkeys);
	free(kc->wset);
	kc->wset = NULL;
	kc->wset_cap = 0;
	kc->wn = 0;
}

/* A request naming the keys @kc watches (UNWATCH, then the keys): what W_END and W_EXEC
 * carry. Returns 0 or -ENOMEM. */
static int
watch_req(const struct kconn *kc, struct rbuf *b)
{
	if (kv_test_fault("watch-keys-oom"))
		b->oom = true;
	rb_arr(b, (long long)kc->wn + 1);
	rb_bulk(b, "UNWATCH", 7);
	rb_put(b, kc->wkeys.p, kc->wkeys.len);
	return b->oom ? -ENOMEM : 0;
}

/* A request about watches (@op) for the shard of @kc's keys, behind the connection's
 * other requests. Returns 0 (a W_ADD that could not be sent is answered with the error);
 * -errno when it could not be sent (nothing then replies) or no reply could be placed. */
static int
watch_send(struct kconn *kc, unsigned op, const uint8_t *req, size_t len)
{
	struct pend *p = pend_new(kc);
	struct kmsg *m;
	int r;

	if (!p)
		return -ENOMEM;
	m = calloc(1, sizeof(*m) + len);
	if (!m) {
		r = -ENOMEM;
		goto failed;
	}
	memcpy(m->copy, req, len);
	m->req = m->copy;
	m->req_len = len;
	m->pend = p;
	m->part = kc->watch_owner;
	m->wop = op;
	m->wid = kc->id;
	r = hand(p, m);
	if (r == 0)
		return 0;
failed:
	p->done = true;
	if (op != W_ADD)
		return r; /* no reply */
	rb_unreachable(&p->rep, kc->watch_owner, r);
	return 0;
}

/* WATCH key [key ...] (outside MULTI). */
static void
watch_cmd(struct kconn *kc, struct resp_arg *argv, unsigned argc, const uint8_t *raw, size_t rawlen)
{
	unsigned me = self(), owner = me;
	size_t at = kc->wkeys.len;
	unsigned added = 0;
	struct rbuf *out;
	const char *why;
	bool cross = false, limit = false;

	stat_add(&kv_stats[me].commands, 1);
	if (kv_cfg.nshards > 1) {
		owner = kv_owner_key(argv[1].p, argv[1].len);
		for (unsigned i = 2; i < argc; i++)
			cross |= kv_owner_key(argv[i].p, argv[i].len) != owner;
		cross |= kc->watching && owner != kc->watch_owner;
	}
	if (kc->tx) {
		why = "ERR WATCH inside MULTI is not allowed";
		goto refused;
	}
	if (cross) {
		why = "CROSSSLOT Keys in request don't hash to the same slot (a keel-kv transaction "
		      "runs on one shard, so the keys a client watches must live on one, with those "
		      "it watches already: give them a hash tag, as {user42}:name and "
		      "{user42}:mail, or run --shards 1)";
		goto refused;
	}
	/* Only the keys not watched yet are kept (the shard's table keeps each once too). */
	for (unsigned i = 1; i < argc && !kc->wkeys.oom; i++) {
		uint32_t slot;

		if ((kc->wn + added + 1) * 2 > kc->wset_cap &&
		    wset_build(kc, kc->wn + added + 1) < 0) {
			kc->wkeys.oom = true;
			break;
		}
		slot = wset_slot(kc, argv[i].p, argv[i].len);
		if (kc->wset[slot])
			continue;
		if (kc->wkeys.len + argv[i].len + 32 > kv_cfg.query_max ||
		    kc->wkeys.len + argv[i].len + 32 > UINT32_MAX) {
			limit = true;
			break;
		}
		kc->wset[slot] = (uint32_t)kc->wkeys.len + 1;
		rb_bulk(&kc->wkeys, argv[i].p, argv[i].len);
		added++;
	}
	if (kc->wkeys.oom || limit) {
		/* None of this WATCH: the list as it was, and the set without its keys. They
		 * went in after every earlier key (a rebuild inserts in the list's order), so
		 * emptying their slots leaves every earlier key's probe intact. */
		kc->wkeys.len = at;
		kc->wkeys.oom = false;
		for (uint32_t j = 0; j < kc->wset_cap; j++)
			if (kc->wset[j] > at)
				kc->wset[j] = 0;
		if (!kc->wn)
			watch_keys_free(kc);
		why = limit ? "ERR the keys watched pass --client-query-buffer-limit"
			    : "ERR out of memory";
		goto refused;
	}
	kc->wn += added;
	kc->watching = true;
	kc->watch_owner = owner;
	if (owner != me) {
		if (watch_send(kc, W_ADD, raw, rawlen) < 0)
			kc->out.oom = true;
		return;
	}
	if ((out = reply_to(kc)))
		watch_add_here(kc->id, argv + 1, argc - 1, out);
	else
		kc->out.oom = true;
	return;
refused:
	if ((out = reply_to(kc)))
		rb_err(out, "%s", why);
	else
		kc->out.oom = true;
}

/* UNWATCH, DISCARD, an EXEC refused before it ran: @kc's watches end. Without memory to
 * say so the connection is closed, and its close ends them (watch_gone). */
static void
watch_release(struct kconn *kc)
{
	struct rbuf b = { 0 };
	int r;

	if (!kc->watching)
		return;
	r = watch_req(kc, &b);
	if (r == 0 && kc->watch_owner == self())
		watch_end_req(kc->id, b.p, b.len);
	else if (r == 0)
		r = watch_send(kc, W_END, b.p, b.len);
	rb_free(&b);
	if (r < 0) {
		kc->out.oom = true;
		return;
	}
	watch_keys_free(kc);
	kc->watching = false;
}

/* The watches of a closed connection, ended on another shard by a message of their own:
 * not behind the connection's requests waiting for room, which are dropped unsent. */
struct wgone {
	struct wgone *next; /* in kv_shard.gone_retry */
	unsigned owner;
	uint64_t id;
	size_t len;
	uint8_t req[];
};

static void gone_send(struct wgone *g);

static void
gone_room(int status, void *arg)
{
	if (status < 0) { /* this shard stops: so do the others, and their tables */
		free(arg);
		return;
	}
	gone_send(arg);
}

static void
gone_recv(void *arg)
{
	struct wgone *g = arg;

	watch_end_req(g->id, g->req, g->len);
	free(g);
}

/* On the owner: a closed connection's watches there end, found by a walk of its table (no
 * memory to name their keys: watch_gone). */
static void
gone_id_recv(void *arg)
{
	watch_end_req((uint64_t)(uintptr_t)arg, NULL, 0);
}

/* The closed connection @id's watches on @owner end without memory of ours: a message whose
 * argument is the id (keel_send takes none), else they would stay until the stop, walked
 * on every change of their keys. */
static void
gone_by_id(unsigned owner, uint64_t id)
{
	int r = keel_send(owner, gone_id_recv, (void *)(uintptr_t)id);

	if (r < 0)
		keel_log(KEEL_LOG_WARN, "kv",
			 "shard %u: a closed client's watches on shard %u cannot be ended (%s): "
			 "they stay until the stop",
			 self(), owner, strerror(-r));
}

static void
gone_send(struct wgone *g)
{
	struct kv_shard *ks = &shards[self()];
	int r = keel_send(g->owner, gone_recv, g);

	if (r == -EAGAIN)
		r = keel_msg_wait_room(g->owner, gone_room, g);
	if (r == -ENOMEM && ks->sweep) { /* retried by the sweep timer, as home_retry */
		g->next = ks->gone_retry;
		ks->gone_retry = g;
		sweep_soon(ks);
		return;
	}
	if (r < 0) {
		gone_by_id(g->owner, g->id);
		free(g);
	}
}

/* A closed connection's watches of the keys @req names (watch_req's form, or a W_EXEC's,
 * whose first request it is; none: all of them, watch_end_req) end on shard @owner. */
static void
watch_gone(unsigned owner, uint64_t id, const uint8_t *req, size_t len)
{
	struct wgone *g;

	if (owner == self()) {
		watch_end_req(id, req, len);
		return;
	}
	g = kv_test_fault("wgone-oom") ? NULL : malloc(sizeof(*g) + len);
	if (!g) {
		gone_by_id(owner, id);
		return;
	}
	g->owner = owner;
	g->id = id;
	g->len = len;
	if (len)
		memcpy(g->req, req, len);
	gone_send(g);
}

/* A request that will not reach its shard (@m): the watches it was to end end all the
 * same. True for a W_END, which has no reply to make (UNWATCH, DISCARD or a refused EXEC
 * answered already: an error here would be one reply too many). */
static bool
watch_lost(const struct kmsg *m)
{
	if (m->wop == W_END || m->wop == W_EXEC)
		watch_gone(m->part, m->wid, m->req, m->req_len);
	return m->wop == W_END;
}

/* On close: the connection's watches, and those its requests that never left were to end
 * (W_END, W_EXEC), end on their shard. */
static void
watch_close(struct kconn *kc)
{
	for (struct kmsg *m = kc->bq_head; m; m = m->next)
		watch_lost(m);
	if (kc->watching) {
		struct rbuf b = { 0 };

		/* Without memory for the keys, none: the shard then walks its table */
		if (watch_req(kc, &b) < 0)
			b.len = 0;
		watch_gone(kc->watch_owner, kc->id, b.p, b.len);
		rb_free(&b);
		watch_keys_free(kc);
		kc->watching = false;
	}
}

/* EXEC: every queued request runs on the transaction's shard in one go; the reply is the
 * array of theirs. --maxmemory and a failing append-only file refuse it as a whole, before
 * anything runs, as Redis 7 refuses an EXEC. */
static void
tx_exec(struct kconn *kc)
{
	struct ktx *tx = kc->tx;
	unsigned me = self(), owner = tx->owner >= 0 ? (unsigned)tx->owner : me;
	const char *misconf = NULL;
	struct rbuf *out;
	struct pend *p;
	int r;

	kc->tx = NULL;
	stat_add(&kv_stats[me].commands, 1);
	/* An empty transaction still goes to the keys watched: EXEC is a null array if one
	 * changed, as in Redis. */
	if (tx->dirty || (!tx->n && !kc->watching) || (tx->denyoom && kv_cmd_denied(tx->denyoom)) ||
	    (tx->write && kv_cfg.aof && (misconf = kv_aof_error_on(owner)))) {
		out = reply_to(kc);
		if (!out)
			kc->out.oom = true;
		else if (tx->dirty)
			rb_err(out, "EXECABORT Transaction discarded because of previous errors.");
		else if (!tx->n)
			rb_arr(out, 0);
		else if (misconf)
			rb_err(out,
			       "EXECABORT Transaction discarded because of: MISCONF Errors writing "
			       "to the AOF file: %s",
			       misconf);
		else
			rb_err(out, "EXECABORT Transaction discarded because of: OOM command not "
				    "allowed when used memory > 'maxmemory'.");
		tx_free(tx);
		watch_release(kc); /* as Redis: any EXEC unwatches */
		return;
	}
	if (kc->watching) { /* the keys watched go first (tx_run); the watches end there */
		struct rbuf q = { 0 };

		if (watch_req(kc, &q) == 0)
			rb_put(&q, tx->q.p, tx->q.len);
		if (q.oom) {
			rb_free(&q);
			kc->out.oom = true; /* the close ends the watches */
			tx_free(tx);
			return;
		}
		rb_free(&tx->q);
		tx->q = q;
		tx->wid = kc->id;
	}
	p = pend_new(kc);
	if (!p) {
		kc->out.oom = true;
		tx_free(tx);
		return;
	}
	if (owner == me) {
		struct kmsg *m = calloc(1, sizeof(*m));

		if (!m) {
			p->rep.oom = true;
			p->done = true;
			tx_free(tx);
			return;
		}
		m->pend = p;
		m->part = m->home = me;
		m->req = tx->q.p;
		m->req_len = tx->q.len;
		m->tx = tx->n;
		m->tx_write = tx->write;
		m->wop = tx->wid ? W_EXEC : W_NONE;
		m->wid = tx->wid;
		tx_run(m);
		m->req = NULL; /* the queue goes below; a held reply outlives it */
		if (tx_holds(m))
			hold(m);
		else
			home_recv(m);
	} else if ((r = handoff(p, owner, tx->q.p, tx->q.len, NULL, 0, true, tx, false)) < 0) {
		rb_unreachable(&p->rep, owner, r);
		p->done = true;
		/* Their shard never saw the EXEC: ended as UNWATCH ends them, in the connection's
		 * order (a message of their own could come after a later WATCH of the same keys
		 * and end it); if that cannot be sent either, the close ends them. */
		watch_release(kc);
		tx_free(tx);
		return;
	}
	if (tx->wid) { /* they ended with the EXEC (tx_run) */
		watch_keys_free(kc);
		kc->watching = false;
	}
	tx_free(tx);
}

/* MULTI, EXEC (without MULTI), DISCARD, RESET; false for any other command. */
static bool
tx_cmd(struct kconn *kc, const struct kv_cmd *c, struct rbuf *out)
{
	const char *n = c->name;

	if (!strcmp(n, "multi")) {
		if (kc->tx) {
			rb_err(out, "ERR MULTI calls can not be nested");
		} else if (!(kc->tx = calloc(1, sizeof(*kc->tx)))) {
			rb_err(out, "ERR out of memory");
		} else {
			/* the keys watched tie the transaction to their shard */
			kc->tx->owner =
				kc->watching && kv_cfg.nshards > 1 ? (int)kc->watch_owner : -1;
			rb_simple(out, "OK");
		}
	} else if (!strcmp(n, "exec")) {
		rb_err(out, "ERR EXEC without MULTI");
	} else if (!strcmp(n, "discard")) {
		if (kc->tx) {
			tx_free(kc->tx);
			kc->tx = NULL;
			rb_simple(out, "OK");
			watch_release(kc); /* as Redis: DISCARD unwatches */
		} else {
			rb_err(out, "ERR DISCARD without MULTI");
		}
	} else if (!strcmp(n, "reset")) {
		/* Redis 7.0's RESET, of what keel-kv has: the transaction discarded, every
		 * watch ended, the name cleared (NO-EVICT stays, as redis-server 7.0.15 keeps
		 * it; the database is always 0, the protocol RESP2, the user the default). */
		tx_free(kc->tx);
		kc->tx = NULL;
		watch_release(kc);
		free(kc->name);
		kc->name = NULL;
		kc->name_len = 0;
		rb_simple(out, "RESET");
	} else {
		return false;
	}
	stat_add(&kv_stats[self()].commands, 1);
	return true;
}

/* RANDOMKEY's shard: drawn by each shard's share of the keys (their counts as published,
 * at each change), so every key is as likely; -1 when there are none. The shard drawn may
 * have none by the time the command runs there (another client emptied it meanwhile), or
 * only keys past their time (counted until deleted, and RANDOMKEY deletes those it draws):
 * random_again then draws again. */
static int
random_owner(void)
{
	uint64_t total = 0, r;

	for (unsigned i = 0; i < kv_cfg.nshards; i++)
		total += atomic_load_explicit(&kv_stats[i].keys, memory_order_relaxed);
	if (!total)
		return -1;
	r = kv_random() % total;
	for (unsigned i = 0; i < kv_cfg.nshards; i++) {
		uint64_t k = atomic_load_explicit(&kv_stats[i].keys, memory_order_relaxed);

		if (r < k)
			return (int)i;
		r -= k;
	}
	return (int)self(); /* the counts moved under us */
}

/* RANDOMKEY as a request of its own, for the shards it is tried on again: any is this (its
 * arity is 1), so the home shard needs no copy of the bytes it received (an exported
 * request's are gone once it has run). */
static const uint8_t random_req[] = "*1\r\n$9\r\nRANDOMKEY\r\n";

/* Whether @b, from @at on, is a nil reply. */
static bool
rb_nil_at(const struct rbuf *b, size_t at)
{
	return b->len - at == 5 && !memcmp(b->p + at, "$-1\r\n", 5);
}

static void
random_room(int status, void *arg)
{
	struct kmsg *m = arg;
	int r = status;

	if (r == 0) {
		r = send_req(m);
		if (r == -EAGAIN)
			r = keel_msg_wait_room(m->part, random_room, m);
		if (r == 0)
			return;
	}
	rb_unreachable(&m->rep, m->part, r);
	random_done(m);
}

/* On the home shard, RANDOMKEY's reply @m->rep from the shard it ran on: a nil while the
 * counts say other shards hold keys is not the answer (Redis answers nil only when the
 * whole keyspace is empty): the shard is drawn again from the counts (the one that found
 * none now counts 0) and the command tried there, here at once when drawn here, until a
 * key is found, the counts say none is left, or 2 tries a shard are spent (keys deleted as
 * fast as they are found). Tried again only from here, the reply keeps its place in the
 * connection's queue (its pend). Returns true when @m went on (its reply comes back here
 * again), false when @m->rep is the reply. */
static bool
random_again(struct kmsg *m)
{
	static const struct resp_arg argv[1] = { { (const uint8_t *)"RANDOMKEY", 9 } };
	const struct kv_cmd *c = kv_cmd_find(argv[0].p, argv[0].len);
	unsigned me = self();
	int o, r;

	while (rb_nil_at(&m->rep, 0) && !m->rep.oom && m->pend->kc &&
	       m->random < 2 * kv_cfg.nshards && (o = random_owner()) >= 0) {
		m->random++;
		m->rep.len = 0;
		m->part = (unsigned)o;
		if (m->part == me) {
			/* counted once, where it first ran */
			shards[me].db.uncounted = true;
			exec_here(c, (struct resp_arg *)argv, 1, &m->rep, false);
			shards[me].db.uncounted = false;
			if (must_hold(c) && !rep_is_error(&m->rep)) {
				hold(m); /* back in home_recv once synced */
				return true;
			}
			continue;
		}
		m->fan_part = true; /* counted where it first ran */
		m->sl = (struct keel_slice){ 0 };
		m->req = random_req;
		m->req_len = sizeof(random_req) - 1;
		r = send_req(m);
		if (r == -EAGAIN)
			r = keel_msg_wait_room(m->part, random_room, m);
		if (r == 0)
			return true;
		rb_unreachable(&m->rep, m->part, r);
		return false;
	}
	return false;
}

/* The connection's RANDOMKEY is answered: what it sent after it is parsed, from the loop
 * (random_cmd's barrier). */
static void
random_end(struct kconn *kc)
{
	kc->barrier = false;
	resume_later(kc);
}

/* RANDOMKEY's reply @m->rep is back here: tried again (random_again), or given to its
 * place in the connection's queue. */
static void
random_done(struct kmsg *m)
{
	struct kconn *kc = m->pend->kc;

	if (random_again(m))
		return;
	if (kc)
		random_end(kc);
	pend_part_done(m->pend, m->part, &m->rep);
	free(m);
}

/* RANDOMKEY over several shards, its first shard @owner drawn: run there (here at once
 * when drawn here), its reply back here (random_done). Nothing the connection sent after
 * it is parsed until it is answered (kc->barrier), as Redis runs a client's commands one
 * after another: tried again on another shard, it would otherwise find a key that a later
 * command of the same connection wrote there (a pipelined RANDOMKEY, SET k answered k
 * where Redis answers nil). */
static void
random_cmd(struct kconn *kc, const struct kv_cmd *c, struct resp_arg *argv, unsigned argc,
	   unsigned owner)
{
	struct kmsg *m = malloc(sizeof(*m));
	struct pend *p = m ? pend_new(kc) : NULL;
	int r;

	if (!p) {
		free(m);
		kc->out.oom = true;
		return;
	}
	kc->barrier = true;
	memset(m, 0, sizeof(*m));
	m->pend = p;
	m->part = owner;
	m->home = self();
	m->random = 1;
	m->req = random_req;
	m->req_len = sizeof(random_req) - 1;
	if (owner != m->home) {
		r = hand(p, m);
		if (r < 0) {
			random_end(kc);
			rb_unreachable(&p->rep, owner, r);
			p->done = true;
		}
		return;
	}
	exec_here(c, argv, argc, &m->rep, false);
	if (must_hold(c) && !rep_is_error(&m->rep))
		hold(m);
	else
		home_recv(m);
}

static void
dispatch(struct kconn *kc, struct resp_arg *argv, unsigned argc, const uint8_t *raw, size_t rawlen,
	 const struct keel_slice *src, size_t off)
{
	const struct kv_cmd *c = kv_cmd_find(argv[0].p, argv[0].len);
	unsigned me = self(), owner;
	struct rbuf *out;
	uint16_t owners_small[64], *owners = owners_small;
	bool one = true;

	sub_note(kc, c, argv, argc);
	if (__builtin_expect(kc->tx != NULL, 0)) {
		if (tx_queue(kc, c, argv, argc, raw, rawlen))
			return;
		if (!strcmp(c->name, "exec")) {
			tx_exec(kc);
			return;
		}
	}
	if (!c || !arity_ok(c, argc) ||
	    (c->route == KV_R_KEYS && c->key_step == 2 && (argc - 1) % 2)) {
		out = reply_to(kc);
		if (!out)
			goto oom;
		if (!c)
			kv_reply_unknown(out, argv, argc);
		else if (!strcmp(c->name, "exec")) { /* Redis 7.0 words it so in or out of MULTI */
			rb_err(out, "EXECABORT Transaction discarded because of: wrong number of "
				    "arguments for 'exec' command");
			watch_release(kc); /* and it unwatches, as any EXEC */
		} else
			kv_reply_arity(out, c);
		return;
	}
	switch (c->route) {
	case KV_R_LOCAL:
		if (!strcmp(c->name, "watch")) {
			watch_cmd(kc, argv, argc, raw, rawlen);
			return;
		}
		if (c->fn == kv_client_part && client_fanout(kc, argv, argc))
			return;
		out = reply_to(kc);
		if (!out)
			goto oom;
		if (!tx_cmd(kc, c, out))
			local_cmd(kc, c, argv, argc, out);
		return;
	case KV_R_CURSOR: {
		uint64_t cur;

		if (kv_cfg.nshards == 1) {
			owner = me;
			break;
		}
		if (!kv_scan_cursor(&argv[1], &cur)) {
			out = reply_to(kc);
			if (!out)
				goto oom;
			stat_add(&kv_stats[me].commands, 1); /* as where it runs (kv_cmd_run) */
			rb_err(out, "ERR invalid cursor");
			return;
		}
		owner = (unsigned)(cur % kv_cfg.nshards);
		break;
	}
	case KV_R_RANDOM: {
		int o = -1;

		if (kv_cfg.nshards > 1)
			o = kv_test_random_any() ? (int)(kv_random() % kv_cfg.nshards)
						 : random_owner();
		if (o < 0) { /* one shard, or no key on any: nil, unless one came meanwhile */
			owner = me;
			break;
		}
		random_cmd(kc, c, argv, argc, (unsigned)o);
		return;
	}
	case KV_R_KEY:
		/* One shard owns every key: no hash here (the table hashes the key anyway). */
		owner = kv_cfg.nshards == 1 ? me : kv_owner_key(argv[1].p, argv[1].len);
		break;
	case KV_R_KEY2: /* no key (HELP, an error): its reply made here */
		owner = kv_cfg.nshards == 1 || argc < 3 ||
					kv_key2_check(c->name, argv, argc, NULL) < 1
				? me
				: kv_owner_key(argv[2].p, argv[2].len);
		break;
	case KV_R_KEYS: {
		if (kv_cfg.nshards == 1) {
			owner = me;
			break;
		}
		unsigned nkeys = kv_cmd_nkeys(c, argc);
		if (nkeys > 64 && !(owners = malloc(nkeys * sizeof(*owners))))
			goto oom;
		for (unsigned i = 0; i < nkeys; i++) {
			const struct resp_arg *k = &argv[1 + i * c->key_step];
			owners[i] = (uint16_t)kv_owner_key(k->p, k->len);
			one &= owners[i] == owners[0];
		}
		owner = nkeys ? owners[0] : me; /* the arity leaves at least one */
		if (!one && (c->flags & KV_F_ONE_SHARD)) {
			if (owners != owners_small)
				free(owners);
			out = reply_to(kc);
			if (!out)
				goto oom;
			stat_add(&kv_stats[me].commands, 1);
			rb_err(out,
			       "CROSSSLOT Keys in request don't hash to the same slot ('%s' is "
			       "atomic on one shard only: give its keys a hash tag, as "
			       "{user42}:name and {user42}:mail, or run --shards 1)",
			       c->name);
			return;
		}
		if (!one) {
			/* --maxmemory is checked once, here, as Redis checks a command before it
			 * runs: its parts then run whatever memory the others take, so an MSET
			 * is not refused on one shard after another shard wrote its keys. */
			bool denied = kv_cmd_denied(c);
			const char *misconf = denied ? NULL : split_write_refused(c, owners, nkeys);

			if (!denied && !misconf)
				fanout(kc, c, argv, argc, raw, rawlen, owners, true);
			if (owners != owners_small)
				free(owners);
			if (denied || misconf) {
				out = reply_to(kc);
				if (!out)
					goto oom;
				if (denied)
					kv_reply_oom(&shards[me].db, out);
				else
					rb_err(out, "MISCONF Errors writing to the AOF file: %s",
					       misconf);
			}
			return;
		}
		if (owners != owners_small)
			free(owners);
		break;
	}
	case KV_R_ALL:
	default:
		if (kv_cfg.nshards > 1) {
			const char *misconf = split_write_refused(c, NULL, 0);

			if (misconf) {
				out = reply_to(kc);
				if (!out)
					goto oom;
				rb_err(out, "MISCONF Errors writing to the AOF file: %s", misconf);
				return;
			}
			fanout(kc, c, argv, argc, raw, rawlen, NULL, false);
			return;
		}
		owner = me;
		break;
	}
	if (owner == me && must_hold(c)) {
		struct pend *p = pend_new(kc);
		if (!p)
			goto oom;
		exec_held(p, me, c, argv, argc, false);
		return;
	}
	if (owner == me) {
		out = reply_to(kc);
		if (!out)
			goto oom;
		exec_here(c, argv, argc, out, false);
		return;
	}
	{
		struct pend *p = pend_new(kc);
		int r;
		if (!p)
			goto oom;
		r = handoff(p, owner, raw, rawlen, src, off, false, NULL, false);
		if (r < 0) {
			rb_unreachable(&p->rep, owner, r);
			p->done = true;
		}
	}
	return;
oom:
	kc->out.oom = true;
}

/* Parse and run every whole request in @p[0..@n); returns the bytes used. @p is the
 * connection's unparsed input (kc->in + kc->in_off) when @src is NULL: then its first
 * request may be one an earlier call found incomplete, checked up to kc->in_resume. */
static size_t
process_(struct kconn *kc, const uint8_t *p, size_t n, const struct keel_slice *src)
{
	size_t off = 0;
	/* Set up once per call, not per request: an initializer per request zeroed err[]
	 * each time (resp_parse resets argc and need itself, and sets err when it fails;
	 * resume is zeroed on every result but RESP_MORE, which ends the loop). */
	struct resp_req req = { .max_bulk = kv_cfg.max_bulk };

	/* Checked per request: the reply bytes this call may make before a look at the limits
	 * (the connection's queue changes within it only by flush_out, the kernel's
	 * acknowledgements being reaped between passes); kc->paused covers the replies
	 * outstanding and the hand-offs waiting for room. */
	size_t room = out_room(keel_conn_queued(kc->c));

	if (!src)
		req.resume = kc->in_resume;
	kc->in_resume = (struct resp_resume){ 0 };

	while (off < n && !kc->closing && !kc->out.oom) {
		long r;

		if (kc->barrier) { /* a command waits for the replies before it (run_later) */
			hold_input(kc, false);
			break;
		}
		/* Large replies go to the connection as they are made, so that its queue, not
		 * this buffer, says when to stop; then stop while over the limits. */
		if (__builtin_expect(kc->out.len >= room || kc->paused || kc->pend_bytes >= room ||
					     (kv_cfg.aof && kv_aof_backlog_full()),
				     0)) {
			uint64_t queued;

			if (kc->out.len >= WRAP_MIN) {
				flush_out(kc);
				if (kc->closing) /* closed by the flush (--maxmemory-clients) */
					break;
			}
			queued = keel_conn_queued(kc->c);
			if (over_limit_q(kc, queued)) {
				hold_input(kc, true);
				break;
			}
			room = out_room(queued);
		}

		/* kc's arrays may have grown (or moved) since: a fan-out parses with them. */
		req.argv = kc->argv;
		req.cap = kc->argv_cap;
		req.scratch = kc->scratch;
		req.scratch_cap = kc->scratch_cap;

		while ((r = resp_parse(p + off, n - off, &req)) == RESP_NEED_ARGV ||
		       r == RESP_NEED_SCRATCH)
			if (parse_grow(r, &req, &kc->argv, &kc->argv_cap, &kc->scratch,
				       &kc->scratch_cap) < 0) {
				kc->out.oom = true;
				return n;
			}
		if (r == RESP_MORE) {
			kc->in_need = req.need;
			kc->in_resume = req.resume; /* offsets from this request's start */
			break;
		}
		if (r == RESP_ERROR) {
			struct rbuf *out = reply_to(kc);
			stat_add(&kv_stats[self()].proto_errors, 1);
			if (out)
				rb_err(out, "ERR %s", req.err);
			else
				kc->out.oom = true;
			pend_count(kc);
			kc->closing = true; /* Redis replies, then closes */
			keel_conn_pause_read(kc->c);
			return n;
		}
		if (req.argc) {
			dispatch(kc, req.argv, req.argc, p + off, (size_t)r, src, off);
			pend_count(kc);
		}
		off += (size_t)r;
	}
	return off;
}

/* process_, with the connection kept open through it: a reply flushed inside it, after the
 * client half-closed and before the rest of the pipeline was reached, closed the connection,
 * and the requests after it ran with their replies dropped
 * (kv_server/a_client_that_half_closes_past_the_watermark_gets_every_reply). */
static size_t
process(struct kconn *kc, const uint8_t *p, size_t n, const struct keel_slice *src)
{
	size_t used;

	kc->parsing = true;
	used = process_(kc, p, n, src);
	kc->parsing = false;
	return used;
}

/* Move the unparsed input to @in's start. */
static void
in_compact(struct kconn *kc)
{
	if (!kc->in_off)
		return;
	memmove(kc->in, kc->in + kc->in_off, kc->in_len);
	stat_add(&kv_stats[self()].input_moved, (int64_t)kc->in_len);
	kc->in_off = 0;
}

/* @used bytes of the input were parsed. The rest moves to the start once it is no longer
 * than the parsed bytes before it (paid for by them), so the bytes moved stay within the
 * bytes received however many passes parse it. */
static void
in_consume(struct kconn *kc, size_t used)
{
	kc->in_off += used;
	kc->in_len -= used;
	if (!kc->in_len)
		kc->in_off = 0;
	else if (kc->in_off >= kc->in_len)
		in_compact(kc);
}

static int
in_append(struct kconn *kc, const uint8_t *p, size_t n)
{
	/* Growing would copy the parsed bytes too; moving first may spare the growth. Held
	 * input is not read on (but behind a WAIT, where nothing is parsed), so this moves a
	 * request not yet whole, once: it is then at the start until it is parsed. */
	if (kc->in_off + kc->in_len + n > kc->in_cap)
		in_compact(kc);
	if (kc->in_len + n > kc->in_cap) {
		size_t cap = kc->in_cap ? kc->in_cap : 4096;
		uint8_t *b;
		while (cap < kc->in_len + n)
			cap *= 2;
		b = realloc(kc->in, cap);
		if (!b)
			return -ENOMEM;
		kc->in = b;
		kc->in_cap = cap;
	}
	memcpy(kc->in + kc->in_off + kc->in_len, p, n);
	kc->in_len += n;
	return 0;
}

static void
in_shrink(struct kconn *kc)
{
	if (kc->in_len)
		return; /* a request not yet whole: its parse resumes with these */
	if (kc->in_cap > 64 * 1024) {
		free(kc->in); /* a large request's buffer is not kept per connection */
		kc->in = NULL;
		kc->in_cap = 0;
	}
	args_shrink(&kc->argv, &kc->argv_cap, &kc->scratch, &kc->scratch_cap);
}

static void
on_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct kconn *kc = keel_conn_user(c);

	kc->active_ns = keel_now_ns(); /* as Redis's idle: since the client last sent */
	for (unsigned i = 0; i < n; i++) {
		size_t used;

		if (kc->closing || kc->out.oom) {
			keel_slice_put(&s[i]);
			continue;
		}
		if (kc->in_len + s[i].len > kv_cfg.query_max) {
			/* Redis closes a client whose query buffer passes the limit. */
			stat_add(&kv_stats[self()].proto_errors, 1);
			keel_slice_put(&s[i]);
			keel_conn_abort(c, -EMSGSIZE);
			kc->closing = true;
			kc->aborted = true;
			continue;
		}
		if (kc->held) { /* parsed once the replies drain (resume_cb) */
			if (in_append(kc, s[i].data, s[i].len) < 0)
				kc->out.oom = true;
		} else if (kc->in_len == 0) {
			used = process(kc, s[i].data, s[i].len, &s[i]);
			if (used < s[i].len && !kc->closing &&
			    in_append(kc, s[i].data + used, s[i].len - used) < 0)
				kc->out.oom = true;
		} else {
			if (in_append(kc, s[i].data, s[i].len) < 0) {
				kc->out.oom = true;
			} else if (kc->in_len >= kc->in_need) {
				used = process(kc, kc->in + kc->in_off, kc->in_len, NULL);
				in_consume(kc, used);
			}
		}
		keel_slice_put(&s[i]);
	}
	in_shrink(kc);
	/* A request that failed on the spot (a hand-off refused, a fan-out out of memory)
	 * completes its pend at once; when that pend is the head nothing else drains it. */
	drain(kc);
	flush_out(kc);
	/* Active until its requests were run, not from when they arrived: a 64 MiB SET that
	 * took over --timeout to make (a sanitizer build) was closed as idle right after its
	 * reply. Only the idle check reads it: no clock read per receive else. */
	if (kv_cfg.timeout_s)
		kc->last_ms = kv_now_ms();
}

/* Parse what was held (hold_input), now that the replies drained; reading resumes unless
 * the limits are reached again. */
static void
resume_cb(void *arg)
{
	struct kconn *kc = arg;
	size_t used;

	kc->resume_queued = false;
	if (kc->dead) { /* closed meanwhile (on_close) */
		if (!kc->bq_waiting)
			free(kc);
		return;
	}
	if (!kc->held || kc->closing || kc->barrier || over_limit(kc))
		return; /* what lowers the limits, or ends the barrier, calls resume_later again */
	kc->held = false;
	used = process(kc, kc->in + kc->in_off, kc->in_len, NULL);
	in_consume(kc, used);
	in_shrink(kc);
	drain(kc);
	flush_out(kc);
	if (!kc->held && !kc->paused && !kc->closing)
		keel_conn_resume_read(kc->c);
}

/* The connection's queue fell below the low watermark. */
static void
on_writable(struct keel_conn *c)
{
	struct kconn *kc = keel_conn_user(c);

	if (!kc)
		return;
	if (kc->big.buf)
		flush_out(kc); /* the rest of a large reply, then what waits behind it */
	drain(kc);             /* replies that waited for room (drain) */
	flush_out(kc);
	resume_later(kc);
}

static void
on_open(struct keel_conn *c)
{
	struct kv_shard *ks = &shards[self()];
	struct kconn *kc = calloc(1, sizeof(*kc));

	if (!kc) {
		keel_conn_abort(c, -ENOMEM);
		return;
	}
	kc->c = c;
	kc->id = ++ks->next_id * KEEL_MAX_SHARDS + self();
	kc->last_ms = kv_now_ms();
	kc->born_ns = kc->active_ns = keel_now_ns();
	kc->next = ks->conns;
	if (ks->conns)
		ks->conns->prev = kc;
	ks->conns = kc;
	keel_conn_set_user(c, kc);
	/* Past --maxclients, as Redis does: the error, then the close; what the client sent
	 * meanwhile is dropped (closing). And past what this shard's descriptor table holds
	 * (kv_cfg.shard_clients): its next clients would wait in the listen backlog unanswered
	 * once the table is full. */
	if (atomic_fetch_add_explicit(&clients_open, 1, memory_order_relaxed) >=
		    kv_cfg.maxclients ||
	    (kv_cfg.shard_clients &&
	     atomic_load_explicit(&kv_stats[self()].conns, memory_order_relaxed) >=
		     kv_cfg.shard_clients)) {
		atomic_fetch_sub_explicit(&clients_open, 1, memory_order_relaxed);
		stat_add(&kv_stats[self()].rejected, 1);
		kc->refused = true;
		kc->closing = true;
		rb_err(&kc->out, "ERR max number of clients reached");
		flush_out(kc);
		return;
	}
	stat_add(&kv_stats[self()].conns, 1);
	stat_add(&kv_stats[self()].conns_total, 1); /* as Redis: a refused client is in neither */
}

static void
on_data_entry(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	if (!keel_conn_user(c)) { /* opening failed; the abort is on its way */
		for (unsigned i = 0; i < n; i++)
			keel_slice_put(&s[i]);
		return;
	}
	on_data(c, s, n);
}

static void
on_close(struct keel_conn *c, int status)
{
	struct kconn *kc = keel_conn_user(c);
	struct kv_shard *ks = &shards[self()];
	struct pend *p, *next;

	if (!kc)
		return;
	watch_close(kc);
	for (p = kc->head; p; p = next) {
		next = p->next;
		if (p->done || p->later_kind || p == kc->wait) {
			if (p == kc->wait) /* a client that went while blocked in WAIT */
				stat_add(&kv_stats[self()].blocked, -1);
			pend_free(p);
		} else { /* freed when its reply comes back */
			p->kc = NULL;
			p->oprev = NULL;
			p->onext = ks->orphans;
			if (ks->orphans)
				ks->orphans->oprev = p;
			ks->orphans = p;
		}
	}
	if (kc->prev)
		kc->prev->next = kc->next;
	else
		ks->conns = kc->next;
	if (kc->next)
		kc->next->prev = kc->prev;
	client_mem_set(ks, kc, 0);
	if (!kc->refused) {
		stat_add(&kv_stats[self()].conns, -1);
		atomic_fetch_sub_explicit(&clients_open, 1, memory_order_relaxed);
	}
	if (kc->big.buf) /* a large reply not all queued: dropped with it */
		keel_slice_put(&kc->big);
	rb_free(&kc->out);
	free(kc->in);
	free(kc->name);
	tx_free(kc->tx);
	kc->tx = NULL;
	args_free(&kc->argv, &kc->argv_cap, &kc->scratch, &kc->scratch_cap, 0, 0);
	if (kc->bq_waiting || kc->resume_queued) {
		kc->dead = true; /* on_room or resume_cb frees it (and its waiting requests) */
		kc->in = NULL;
		kc->name = NULL;
		kc->argv = NULL;
		kc->scratch = NULL;
		return;
	}
	free(kc);
}

/* The client half-closed (shutdown(SHUT_WR), nc -N): what it sent is answered before the
 * close, replies still being made on other shards included. The default, a close at once,
 * dropped those (kv_server/a_client_that_half_closes_gets_every_reply: 17,252 of 20,000
 * SETs over 3 shards answered). */
static void
on_eof(struct keel_conn *c)
{
	struct kconn *kc = keel_conn_user(c);

	if (!kc) {
		keel_conn_close(c);
		return;
	}
	/* After QUIT or a protocol error (closing) too: what came before them is answered. */
	kc->eof = true;
	if (kc->wait) /* nothing can come after it now: answered at once */
		wait_end(kc);
	if (close_due(kc))
		keel_conn_close(c);
}

const struct keel_conn_ops kv_conn_ops = {
	.on_open = on_open,
	.on_data = on_data_entry,
	.on_eof = on_eof,
	.on_writable = on_writable,
	.on_close = on_close,
};

/* Timers. */

/* Incremental expiry: a bounded number of buckets per tick; more ticks follow at once
 * while many keys are found expired. */
static void
on_sweep(struct keel_timer *t, void *arg)
{
	struct kv_shard *ks = arg;
	struct kmsg *m = ks->home_retry;
	size_t n, budget;
	uint64_t iv;

	struct wgone *g = ks->gone_retry;

	ks->home_retry = NULL;
	while (m) { /* send_home may put it back */
		struct kmsg *next = m->next;
		send_home(m);
		m = next;
	}
	ks->gone_retry = NULL;
	while (g) { /* gone_send may put it back */
		struct wgone *next = g->next;
		gone_send(g);
		g = next;
	}
	if (!ks->db.b)
		return;
	/* What the clients hold now, for every shard's --maxmemory-clients check and INFO. */
	if (kv_cfg.maxmemory_clients) {
		clients_recount(ks);
		if (ks->client_mem > kv_cfg.maxmemory_clients / kv_cfg.nshards)
			clients_evict(ks);
	}
	if (ks->db.fb) /* FLUSHALL ASYNC's keys: a few thousand a millisecond */
		kv_db_free_step(&ks->db, KV_LAZYFREE_STEP);
	/* Paced by the table's size (kv_sweep_pace): a pass in 5 s, or 4 us a bucket over
	 * 1.25 M buckets (a fixed 1,024 buckets every 100 ms took 200 s over 2 M buckets:
	 * expired keys kept their memory, and --maxmemory refused writes for data long
	 * expired). */
	kv_sweep_pace(ks->db.mask + 1, &iv, &budget);
	n = kv_db_sweep(&ks->db, budget);
	if (!ks->db.expires)
		iv = KEEL_MS(100); /* nothing to expire: only the rehash steps run */
	keel_timer_start(
		t,
		n > budget / 4 || ks->home_retry || ks->gone_retry || ks->db.fb ? KEEL_MS(1) : iv,
		0);
}

static void
on_idle_check(struct keel_timer *t, void *arg)
{
	struct kv_shard *ks = arg;
	int64_t now = kv_now_ms();

	/* Idle: nothing asked, and no reply moved, for a while. A reply being made on another
	 * shard, or leaving for a slow reader (the queue changed since the last check), counts
	 * as activity, as Redis counts its writes; a client that stopped reading does not,
	 * whether its replies are in the queue or made and waiting for room there. */
	for (struct kconn *kc = ks->conns; kc; kc = kc->next) {
		uint64_t q = keel_conn_queued(kc->c);

		/* A head reply still being made elsewhere is activity; one made and waiting
		 * for room in the queue is not (the client stopped reading). */
		if ((kc->head && !kc->head->done) || q != kc->idle_queued) {
			kc->last_ms = now;
			kc->idle_queued = q;
			continue;
		}
		if (!kc->closing && now - kc->last_ms > (int64_t)kv_cfg.timeout_s * 1000) {
			kc->closing = true;
			stat_add(&kv_stats[self()].timeouts, 1);
			keel_conn_close(kc->c);
		}
	}
}

static void
on_stop(void *arg)
{
	struct kv_shard *ks = arg;

	while (ks->home_retry) { /* the home shards stop too: their connections go */
		struct kmsg *m = ks->home_retry;
		ks->home_retry = m->next;
		rb_free(&m->rep);
		free(m);
	}
	while (ks->gone_retry) {
		struct wgone *g = ks->gone_retry;
		ks->gone_retry = g->next;
		free(g);
	}
	kv_aof_stop();
	kv_db_fini(&ks->db);
	ks->stopped = true;
}

bool
kv_shard_stopped(void)
{
	return shards[self()].stopped;
}

int
kv_shard_start(void)
{
	struct kv_shard *ks = &shards[self()];
	int r;

	if (self() == 0)
		kv_start_ms = kv_now_ms();
	r = kv_db_init(&ks->db, &kv_stats[self()]);
	if (r < 0)
		return r;
	r = keel_shard_on_stop(on_stop, ks);
	if (r < 0) {
		kv_db_fini(&ks->db);
		return r;
	}
	/* From here on_stop frees the table, loaded or not, and stops the file if it started. */
	r = kv_aof_shard_start(&ks->db);
	if (r < 0)
		return r;
	r = keel_timer_create(on_sweep, ks, &ks->sweep);
	if (r < 0)
		return r;
	keel_timer_start(ks->sweep, KEEL_MS(100), 0);
	if (kv_cfg.timeout_s) {
		r = keel_timer_create(on_idle_check, ks, &ks->idle);
		if (r < 0)
			return r;
		keel_timer_start(ks->idle, KEEL_S(1), KEEL_S(1));
	}
	return 0;
}

void
kv_fini(void)
{
	for (unsigned i = 0; i < KEEL_MAX_SHARDS; i++) {
		/* Every shard has ended: no reply comes back to these any more. */
		for (struct pend *p = shards[i].orphans, *n; p; p = n) {
			n = p->onext;
			pend_free(p);
		}
		free(shards[i].argv);
		free(shards[i].scratch);
		memset(&shards[i], 0, sizeof(shards[i]));
	}
	kv_aof_fini();
}
