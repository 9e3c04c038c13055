/* SPDX-License-Identifier: MIT */
/* Private to core/: the runtime and shard structures shared by its source files. */
#ifndef KEEL_CORE_INTERNAL_H
#define KEEL_CORE_INTERNAL_H

#include <keel/keel.h>
#include <keel/ring.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/signalfd.h>

#include <hwloc.h>
#include <liburing.h>

#include "coalesce.h"
#include "hooks.h"

/* Memory left allocated on purpose (what an operation that never completed may still write:
 * loop.c, final_drain) is not LeakSanitizer's to report: the ERROR line said it. */
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#define KEEL__LEAK_ON_PURPOSE(p) __lsan_ignore_object(p)
#else
#define KEEL__LEAK_ON_PURPOSE(p) ((void)(p))
#endif

#define KEEL_CACHELINE 64

/* Fetch the line at @p for writing: to have it owned, not shared, by the time it is written.
 * On x86-64, PREFETCHW where CPUID has it (keel__prefetchw_ok, set as a runtime is created:
 * the build does not assume it). */
extern _Atomic bool keel__prefetchw_ok;
static inline void
keel__prefetch_write(const void *p)
{
#if defined(__x86_64__)
	if (atomic_load_explicit(&keel__prefetchw_ok, memory_order_relaxed))
		__asm__ volatile("prefetchw %0" : : "m"(*(const char *)p));
#else
	__builtin_prefetch(p, 1, 3);
#endif
}

/* The ranges of the options that keel_runtime_create() checks again for fields set
 * directly (opts.c parses them, runtime.c checks them: one definition for both). */
#define KEEL__RING_ENTRIES_MIN     8
#define KEEL__RING_ENTRIES_MAX     32768
#define KEEL__IDLE_POLL_US_MAX     10000000 /* 10 s */
#define KEEL__WAIT_COALESCE_US_MAX 100000   /* 100 ms */
#define KEEL__STALL_MS_MAX         3600000  /* an hour */
#define KEEL__MAILBOX_ENTRIES_MIN  16
#define KEEL__MAILBOX_ENTRIES_MAX  (1u << 20)
/* The most messages to one destination that may wait on the sender (--mailbox-overflow). */
#define KEEL__MAILBOX_OVERFLOW_MAX (1u << 24)

/* Always-on invariant check for states that would corrupt memory. */
#define keel_verify(x)                                             \
	do {                                                       \
		if (__builtin_expect(!(x), 0))                     \
			keel__verify_fail(__FILE__, __LINE__, #x); \
	} while (0)
__attribute__((noreturn)) void keel__verify_fail(const char *file, int line, const char *expr);

/* Counters written by their shard, read by anyone: relaxed atomics (plain moves on x86). */
#define STAT_ADD(s, field, n)                                                                      \
	atomic_store_explicit(&(s)->stats.field,                                                   \
			      atomic_load_explicit(&(s)->stats.field, memory_order_relaxed) + (n), \
			      memory_order_relaxed)
#define STAT_INC(s, field) STAT_ADD(s, field, 1)

struct atomic_stats {
	_Atomic uint64_t passes, enters, cqes, msgs_sent, msgs_recv, msgs_overflow, msgs_refused,
		sleeps, wakeups, wake_fallbacks, cq_overflows, cq_dropped, stalls, timers_fired,
		deferred, foreign, max_pass_ns, idle_poll_ns, polls_found, polls_slept, coalesced,
		coalesce_trials, coalesce_won, wakeups_ring, merges;
};

/* A message in a shard-pair queue: 32 bytes, two per cache line. The kind is implied:
 * send (fn set, done NULL), call (fn and done set), reply (fn NULL; the status rides in
 * arg). */
struct msg {
	union {
		keel_fn send;
		keel_call_fn call;
	} fn;
	void *arg;
	keel_done_fn done;
	void *done_arg;
};
_Static_assert(sizeof(struct msg) == 32, "two messages per cache line");

/* Single-producer single-consumer queue from one shard to another, allocated by (and
 * NUMA-local to) the receiver. Producer and consumer fields live on separate cache lines.
 * Only the producer caches the other side's index, in its outbox: it rereads the
 * consumer's head only when its copy says the queue is full (mbox_has_room). The consumer
 * keeps no copy of tail: it reads it every pass (runtime.mail_scan) or when the sender's
 * mail bit says there is something, and drains up to what it read (drain_one). */
struct mbox {
	_Alignas(KEEL_CACHELINE) _Atomic uint32_t head; /* consumer: next slot to read */
	_Alignas(KEEL_CACHELINE) _Atomic uint32_t tail; /* producer: published end */
	_Alignas(KEEL_CACHELINE) struct msg slots[];
};

/* Messages that did not fit in a full queue, waiting on the sender in order. */
struct ovf_node {
	struct ovf_node *next;
	struct msg m;
	bool heap; /* from malloc (the shard's arena was out, keel's own message): free() */
	bool app;  /* the app's message (counted in ovf_n), not keel's own */
};

/* A keel_msg_wait_room() registration, waiting on the sender for room to one destination. */
struct room_wait {
	struct room_wait *next;
	keel_done_fn fn;
	void *arg;
	int status;
};

/* The sender's view of one destination. */
struct outbox {
	struct mbox *mb;
	/* The producer's indices, in its own memory: on the mbox's tail line, which a
	 * receiver of few shards reads every pass (mail_scan), every message written would
	 * move that line away from it. */
	uint32_t head_cache; /* the receiver's head, as last read */
	uint32_t tail_local; /* written, not yet published */
	uint32_t tail_pub;   /* published: mb->tail, which only this sender writes, kept here
				so that a flush with nothing new does not read the receiver's
				line and one with something new writes it without reading it */
	uint64_t last_flush; /* the sender's flush_seq when it last published here */
	struct ovf_node *ovf_head, *ovf_tail;
	uint32_t ovf_n; /* the app's nodes in the overflow list: its sends stop at
			   opts.mailbox_overflow (keel's own, replies and buffers going home, are
			   not counted: they would refuse the app's sends for traffic it did not
			   make) */
	bool dirty;     /* written or overflowed since the last flush, or room awaited */
	struct room_wait *wait_head, *wait_tail;
};

struct defer_item {
	keel_fn fn;
	void *arg;
};

struct defer_vec {
	struct defer_item *v;
	size_t n, cap;
};

enum shard_phase {
	PHASE_RUN = 0,  /* normal operation */
	PHASE_STOP = 1, /* stop hooks ran, user operations cancelled, draining */
	PHASE_DONE = 2, /* the whole runtime is quiescent */
};

/* An operation that keel itself submits; counted separately so that quiescence ignores it. */
struct internal_op {
	struct keel_op op;
	struct keel_shard *shard;
	bool armed;
	bool retry; /* a read that found no SQE: armed again at the end of a pass */
	bool poll;  /* a POLLIN poll of fd (the caller reads it), not a read */
	int fd;     /* the read's, for that retry */
	void *buf;
	unsigned len;
};

struct keel_shard {
	struct keel_runtime *rt;
	unsigned id;
	int cpu;
	int rxq; /* --map: the rx queue of rt->map->iface this shard owns, -1 none */
	pthread_t thread;
	bool ring_ok;

	struct io_uring ring;
	int ring_fd; /* the real fd, the MSG_RING target for other shards */
	unsigned ring_flags;
	bool taskrun_flag;       /* the kernel flags pending task work in sq_flags */
	bool ring_fd_registered; /* io_uring_register_ring_fd succeeded: enter by its index */
	bool min_wait;           /* sleeps may gather (IORING_FEAT_MIN_TIMEOUT, min_wait used) */
	unsigned gather_nr;      /* completions that end a gathering sleep early */
	unsigned reaped_wakes;   /* wake-up CQEs among those the last reap() ran */
	unsigned gather_sub;     /* SQEs the last gathering sleep submitted */
	bool gather_check;       /* the next reap() judges the last gathering sleep */
	bool gather_skip;        /* it brought nothing new: the next sleep does not gather */

	uint64_t now_ns;
	uint64_t stall_ns;
	uint64_t last_stall_log_ns;
	uint64_t stalls_unlogged;
	bool cq_ovf_logged;   /* the first CQ overflow was logged (the stats count the rest) */
	uint64_t cq_ovf_pass; /* the pass (stats.passes) cq_overflows last counted */
	uint64_t cq_dropped_logged; /* completions dropped, as last logged */
	uint64_t drops_said_ns;     /* when that line was logged (loop.c, cq_drops_log) */
	uint32_t cq_drops_seen;     /* the kernel's count of CQEs it dropped, as last seen */
	uint32_t cq_drops_faked;    /* dropped by keel__fault_msgring_cqe_drop (tests) */
	/* Completions dropped make operations that never complete: the stop takes those it
	 * waited for in vain as lost (loop.c, stop_drops_lost), and a shard that ends with
	 * some leaves what they could write allocated (ops_unmatched). */
	uint64_t lost;          /* user operations the stop gave up on */
	uint64_t drop_inflight; /* s->inflight when stop_drops_lost last saw it change */
	uint64_t drop_since_ns; /* ... and when */
	uint64_t drop_binds;    /* s->binds then: a stop hook's chain binds as it completes */
	uint64_t ops_unmatched; /* operations still counted when the shard ended */
	bool ovf_heap_logged;   /* an overflow node of keel's own came from the heap (logged) */

	/* Operations in flight: all, and keel's own permanent ones. */
	uint64_t inflight;
	uint64_t internal_inflight;
	/* User operations bound so far, and their count when the last cancel-all was queued:
	 * while stopping, a cancel-all is queued again only for operations bound since (one
	 * the cancel cannot reach must not make the shard cancel in a loop). */
	uint64_t binds, cancel_mark;
	uint64_t stop_ns;      /* when the stop began (begin_stop) */
	uint64_t stop_said_ns; /* a stop that does not end was last logged this long into it */
	/* The stop's holds (keel__stop_hold): while stop_held, the stop's cancel and the stop
	 * hooks' disk requests wait for them, until opts.stop_flush_ms from stop_ns. */
	struct keel__stop_hold *holds;
	bool stop_held;
	uint64_t drain_ns; /* when the stop hooks' disk requests went in (drain_check) */

	/* Inbound mail: queues from every shard and the has-mail bitmap (with more than
	 * keel__mail_scan_max shards: runtime.mail_scan), both owned here. */
	struct mbox **inbox; /* [count], inbox[src] */
	uint32_t *in_head;   /* [count]: each inbox's head, the receiver's copy (one line for 16
				inboxes, where the scan would read each head's line) */
	_Alignas(KEEL_CACHELINE) _Atomic uint64_t *mail_bits; /* [(count + 63) / 64] */
	unsigned mail_words;
	_Alignas(KEEL_CACHELINE) _Atomic int sleeping;
	_Alignas(KEEL_CACHELINE) _Atomic int quiescent;

	/* Outbound: one per destination, and the list of destinations to flush. */
	struct outbox *out;
	unsigned *dirty;
	unsigned ndirty;
	uint64_t ovf_pending;
	uint64_t room_waiters;     /* keel_msg_wait_room() registrations not yet handed to defer */
	uint64_t flush_seq;        /* keel__mail_flush calls and sleeps (outbox.last_flush) */
	uint64_t sent_unpublished; /* counted into stats.msgs_sent at the next flush, or
				      before a drain counts its messages received */

	struct keel_op wake_op; /* target of other shards' MSG_RING wake-ups (uncounted) */
	/* Sender side of MSG_RING wake-ups, one per destination shard, so a failure (the only
	 * CQE: IOSQE_CQE_SKIP_SUCCESS) names the shard still to wake. Uncounted. */
	struct keel_op *msgring_ops; /* [rt->count] */
	uint64_t wake_fail_logged_ns;
	struct internal_op cancel_op;
	bool internal_retry; /* an internal read waits to be armed again */
	bool cancel_retry;   /* the stop's cancel found no SQE: made again next pass */

	/* Foreign requests: a mutex-protected list, checked without the lock each pass. */
	pthread_mutex_t xlock;
	struct keel_xreq *xhead, *xtail;
	/* Requests whose fn ran and that are not completed yet (shard-local: linked through
	 * rnext_ and rprev_), completed with -ECANCELED at the shard's end. */
	struct keel_xreq *xrun;
	_Atomic int xpending;
	/* keel_runtime_submit calls to this shard in progress, on any thread (join waits for
	 * none to be left before a destroy may free the lock). */
	_Atomic int xcalls;
	bool xclosed;
	int xefd;
	uint64_t xefd_buf;
	struct internal_op xefd_op;
	unsigned xefd_fails;       /* its reads that failed in a row (foreign.c, xefd_cb) */
	bool xefd_lost;            /* no longer read after too many: each sleep is capped */
	uint64_t xefd_fail_log_ns; /* when a failed read was last logged */

	/* Signals (opts.signals: every shard). */
	int sigfd;
	struct signalfd_siginfo sigbuf;
	struct internal_op sig_op;

	struct defer_vec defer_run, defer_next;
	struct defer_vec stop_hooks;
	struct keel__later *later_head, *later_tail; /* keel__later's queue */

	struct keel_timer **heap;
	size_t heap_n, heap_cap;
	size_t timers_live; /* created or initialised: each has a heap slot reserved */
	unsigned timer_gen; /* this shard's tag in its timers (timer.c) and in its direct
			     * descriptors' keel_file (file.c): unique per process */
	struct keel_timer *timers_all;

	enum shard_phase phase;
	bool stop_begun; /* begin_stop ran or runs: the stop hooks on (keel_shard_stopping) */
	struct atomic_stats stats;

	struct keel__bufreg *bufreg; /* alloc: the shard's allocator and fixed buffers (bufreg.c) */

	/* Disk requests (file.c): the FIFO of those waiting for a slot under --file-qd, those
	 * in the ring (live), and closes held until no request in the ring names their
	 * descriptor (held). */
	struct {
		struct keel_file_req *head, *tail;
		struct keel_file_req *live, *held;
		/* Stopping: taken from the FIFO, not to be issued, waiting to be cancelled (a
		 * close: made on the spot) once the ring holds no request of their kind (made
		 * before the stop, or by its hooks), all made before them. */
		struct keel_file_req *cwait, *cwait_tail;
		uint32_t inflight_drain; /* of st.inflight, the hooks' requests */
		struct keel_file_stats st;
		bool nosqe;        /* the FIFO's head found no SQE: keel__file_retry each pass */
		bool nosqe_logged; /* ... said, until a request is issued again */
		bool hooks;        /* stop hooks run: their requests wait for the stop's cancel */
		uint32_t ndrain;   /* requests of the hooks (and of their callbacks) not yet
				    * completed: stopping, they run to completion; the others
				    * are cancelled */
		uint32_t drain_cb; /* the callback of such a request runs: what it makes is one */
		uint32_t direct;   /* keel_file_direct_slots() */
		uint32_t closes;   /* closes accepted whose callbacks have not run: while there
				    * are any, a new close looks for one of its descriptor not
				    * yet issued (submit, close_pending) */
		/* The closes accepted and not yet issued (waiting in the FIFO, held, or waiting
		 * to be cancelled at stop), hashed by descriptor and chained through their
		 * lprev_/lnext_ (unused until a request is in the ring): close_pending looks in
		 * one bucket rather than walk the FIFO, which made every close O(queue) while a
		 * close was outstanding. pend_inline until more wait than it holds; then
		 * pend, grown 4x as closes wait (a growth that finds no memory keeps the
		 * table: only its chains get longer). */
		struct keel_file_req **pend;
		struct keel_file_req *pend_inline[16];
		uint32_t pend_nb; /* pend's buckets (a power of two) */
		uint32_t pend_n;  /* closes in the table */
		/* Bit N: slot N of the ring's file table holds a file keel_file_openat put
		 * there and no close has emptied yet (a close of any other slot is refused:
		 * a copy's second close, a connection's slot). Grown to the highest slot. */
		uint64_t *slots;
		uint32_t slot_words;
		bool drain_over; /* --stop-drain-ms passed: the drain's requests are cancelled */
		bool pump_held;  /* pump found the stop held: it runs again as the hold ends */
		uint64_t drain_said_ns; /* the wait was last logged this long into the stop */
		uint64_t err_logged_ns;
		char last_err[384];
	} files;
};

struct keel_runtime {
	struct keel_opts opts;
	unsigned count;
	/* count <= keel__mail_scan_max: a shard finds its mail by reading each inbox's tail
	 * every pass (lines that stay in its cache until a sender publishes), not by a
	 * has-mail bit that every publication sets and every drain clears: four more moves of
	 * a shared line per publication (msg.c). */
	bool mail_scan;
	hwloc_topology_t topo;
	struct keel_shard *shards; /* [count] */
	struct keel_feature_decision features[KEEL_FEAT__COUNT];

	keel_shard_fn on_start;
	void *app;

	/* Latches (under start_lock, signalled on latch_cond): every shard has its ring and
	 * inbox (+1: the starting thread); every shard has left its loop, rings may close. */
	pthread_mutex_t start_lock;
	pthread_cond_t latch_cond;
	unsigned ready_left, exit_left;
	unsigned created; /* shard threads created */
	int start_err;

	struct keel_map *map; /* --map: the map file's contents, NULL without --map */

	_Atomic int stopping;
	/* The first status given to a stop: bit 32 says one was, the low 32 bits hold it (one
	 * word, so no stop can see it set but not yet written). */
	_Atomic uint64_t stop_word;
	_Atomic int stop_calls; /* keel_runtime_stop calls in progress (join waits for them) */
	/* A shard logged that its buffers could not be pinned (bufreg.c): one line per runtime,
	 * whatever other runtimes of the process log meanwhile. */
	_Atomic bool memlock_said;

	_Atomic bool started; /* read by keel_runtime_stop on any thread */
	/* keel_runtime_submit takes requests: set once every shard has started (by each shard
	 * before its on_start, and by keel_runtime_start), never when the start failed, so no
	 * request can wait on a shard that will not run it. */
	_Atomic bool accepting;
	/* keel_runtime_join: JOIN_IDLE until one claims it (JOIN_BUSY, another is refused),
	 * JOIN_DONE once it has returned. Set to JOIN_DONE under start_lock and signalled on
	 * join_cond: a destroy on another thread waits for it there. */
	_Atomic int join;
	pthread_cond_t join_cond;
	/* opts.signals: the starting thread's record of the stop signals it blocked (runtime.c),
	 * held from start until the release at join; NULL when none is held. */
	struct keel__sig_hold *sig_hold;
	/* opts.signals: on the process's list of such runtimes from start to join (signal.c) */
	struct keel_runtime *sig_next;
	bool sig_listed;
};

enum { JOIN_IDLE = 0, JOIN_BUSY = 1, JOIN_DONE = 2 };

/* Current shard of this thread (NULL off-shard). */
extern _Thread_local struct keel_shard *keel__cur __attribute__((tls_model("initial-exec")));

static inline struct keel_shard *
cur_shard(const char *fn)
{
	struct keel_shard *s = keel__cur;
	if (__builtin_expect(s == NULL, 0))
		keel__verify_fail(__FILE__, __LINE__, fn);
	return s;
}

uint64_t keel__clock_ns(void);

/* Format an error for a person into @err (may be NULL) and return @r. */
int keel__errf(char *err, size_t errlen, int r, const char *fmt, ...) KEEL_PRINTF(4, 5);
/* @text's lines, one sink call each at @level, whatever the log level (what the user asked
 * for by an option, such as --stats's table), when a sink is set (log.c). Returns false,
 * sending nothing, when none is: the caller writes @text to stderr itself. */
bool keel__log_to_sink(enum keel_log_level level, const char *module, const char *text);
/* What a message about option @flag ("--shards") calls it: its KEEL_* variable when @o's
 * value came from the environment (keel_opts.from_env), else @flag (opts.c). */
const char *keel__opt_name(const struct keel_opts *o, const char *flag);

/* loop.c */
int keel__shard_ring_init(struct keel_shard *s);
void keel__shard_loop(struct keel_shard *s);
void keel__shard_ring_fini(struct keel_shard *s);
void keel__shard_wake(struct keel_shard *target, struct keel_shard *from);
/* What a person can do about a ring's failed submit or io_uring_enter (@r, its -errno): a
 * parenthesised hint, never "" (an unexpected error says so). */
const char *keel__ring_err_hint(int r);
/* The most shards for which a runtime finds mail by reading every inbox (runtime.mail_scan);
 * KEEL_MAIL_SCAN_MAX, set lower by tests to run the has-mail bitmap with few shards. Read
 * when a runtime is created. */
#define KEEL_MAIL_SCAN_MAX 16
extern unsigned keel__mail_scan_max;
/* Fault injection for tests: while non-zero, each MSG_RING wake-up is aimed at an invalid
 * fd (so it fails with -EBADF on the sender) and the count drops by one. */
extern _Atomic unsigned keel__fault_msgring_fail;
/* ... while non-zero, each MSG_RING failure CQE is discarded unseen, as the kernel drops a
 * CQE it has no room nor memory for (counted as dropped, as the kernel counts its own). */
extern _Atomic unsigned keel__fault_msgring_cqe_drop;
extern struct keel_op *_Atomic keel__fault_cqe_drop_op;
/* ... while non-zero, the first CQE of each reap in the loop's final drain is discarded so
 * (as keel__fault_cqe_drop_op does); the count drops by one. */
extern _Atomic unsigned keel__fault_final_cqe_drop;
/* ... while non-zero, each io_uring_enter of the loop reports -EBADR (completions dropped)
 * after it ran; the count drops by one. */
extern _Atomic unsigned keel__fault_enter_ebadr;
/* ... while non-zero, each arming of keel's own read finds no SQE; the count drops by one. */
extern _Atomic unsigned keel__fault_internal_nosqe;
/* ... while non-zero, each completion of a shard's eventfd read is taken as failed with
 * -EIO (the eventfd's count it read is lost: the request it announced runs at the next
 * pass anyway); the count drops by one (foreign.c). */
extern _Atomic unsigned keel__fault_xefd_read_err;
/* Failed eventfd reads in a row after which a shard no longer arms the read (foreign.c). */
#define KEEL__XEFD_FAILS_MAX 8
/* ... while non-zero, each cancel of the shard's final reaping (once it is quiescent, the
 * one that ends keel's own reads) finds no SQE; the count drops by one. */
extern _Atomic unsigned keel__fault_cancel_nosqe;
/* For tests: when set (before the runtime starts), called on the shard's thread as a pass
 * decides to sleep, before it announces it (`sleeping`) and looks for work once more: a
 * test holds a receiver there while a sender publishes, which only that look can find. */
extern void (*keel__hook_before_sleep)(void);
/* How often a stop that does not end says what holds it (10 s; tests set it shorter before
 * the runtime starts): each shard not quiescent, and each quiescent one waiting for them. */
extern uint64_t keel__stop_say_ns;
/* Arm again the internal reads that found no SQE (signalfd, eventfd), and issue the disk
 * requests that did (file.c). */
void keel__internal_retry(struct keel_shard *s);
/* file.c: the FIFO's head found no SQE: issue what waits again (or cancel it, stopping). */
void keel__file_retry(struct keel_shard *s);
/* file.c: the loop's last phase, where keel__internal_retry no longer runs: a close made
 * there that found no SQE is made on the spot now. loop.c, final_drain. */
void keel__file_settle(struct keel_shard *s);
/* file.c: the stop hooks are about to run (@running), or ran and the stop's cancel is
 * queued: the disk requests they made go into the ring after it, and run to completion. */
void keel__file_stop_hooks(struct keel_shard *s, bool running);
/* --stop-drain-ms passed: the stop hooks' requests are cancelled (loop.c, drain_check). */
void keel__file_drain_expire(struct keel_shard *s);

/* The idle-polling policy (core/idlepoll.c). Fixed: poll window_ns after running out of
 * work. Adaptive (--idle-poll-adaptive): poll only while at least KEEL__IDLEPOLL_MIN of the
 * last KEEL__IDLEPOLL_HIST idle waits ended with work within window_ns; else sleep at once. */
#define KEEL__IDLEPOLL_HIST 8
#define KEEL__IDLEPOLL_MIN  4
struct keel__idlepoll {
	uint64_t window_ns; /* --idle-poll-us in ns */
	unsigned hist;      /* the last KEEL__IDLEPOLL_HIST outcomes, newest in bit 0, 1: quick */
	bool adaptive;      /* false: the fixed policy (hist unused) */
	bool own;           /* the loop submitted since the last outcome */
};
void keel__idlepoll_init(struct keel__idlepoll *p, uint64_t window_ns, bool adaptive);
/* How long to poll after running out of work now: the window, or 0 (sleep at once). */
uint64_t keel__idlepoll_window(const struct keel__idlepoll *p);
/* A poll ended: @found work within the window, or the window ran out (then it sleeps). */
void keel__idlepoll_polled(struct keel__idlepoll *p, bool found);
/* A sleep taken at once (no poll before it) ended @gap_ns after the pass that slept began. */
void keel__idlepoll_woke(struct keel__idlepoll *p, uint64_t gap_ns);
/* The pass submits operations: the next quick outcome may be their completions, not an
 * arrival, and is not counted. */
void keel__idlepoll_submitted(struct keel__idlepoll *p);
/* The loop's report of a pass, in order: the idle wait that ended at it (@after_poll: a
 * poll found the pass's @work), then the operations the pass @submitted (their completions
 * may end the next wait). A pass with work that no wait preceded has reaped what was
 * pending, the completions of earlier submissions with it. Returns keel__idlepoll_window. */
uint64_t keel__idlepoll_pass(struct keel__idlepoll *p, bool work, bool after_poll, bool submitted);

struct io_uring_sqe *keel__sqe_internal(struct keel_shard *s);
/* io_uring_submit, counted in enters; a failure is logged with its hint (memory short,
 * --cq-entries). Returns its result. */
int keel__submit_said(struct keel_shard *s);
void keel__internal_arm(struct keel_shard *s, struct internal_op *iop, struct io_uring_sqe *sqe);
/* The last CQE of an internal op: disarm it and stop counting it. Returns it. */
struct internal_op *keel__internal_done(struct keel_op *op);

#ifdef KEEL_FAULTS
/* Tests: while non-zero, each keel_sqe_get() returns NULL and the count drops by one. */
extern _Atomic unsigned keel__fault_sqe_none;
/* ... each keel_defer() fails with -ENOMEM (its vector could not grow), as under memory
 * pressure. */
extern _Atomic unsigned keel__fault_defer_nomem;
/* ... each keel_shard_on_stop() before the stop (or from a stop hook) fails with -ENOMEM
 * (the hooks' vector could not grow): the network's flush then cannot begin. */
extern _Atomic unsigned keel__fault_stop_hook_nomem;
/* Pause points for tests of the races between threads, each called when set (NULL:
 * nothing): keel_runtime_join's end, JOIN_DONE stored with start_lock still held, before
 * the destroy on another thread that waits for it may free @rt (runtime.c, join_claimed);
 * a destroy about to wait there for another thread's join. */
extern void (*keel__hook_join_done)(struct keel_runtime *rt);
extern void (*keel__hook_join_wait)(struct keel_runtime *rt);
/* ... keel_runtime_submit to @shard, counted (xcalls), before it takes the shard's lock;
 * keel_runtime_join finding calls of keel_runtime_submit or keel_runtime_stop in progress
 * (once per join), before it waits for them to leave. */
extern void (*keel__hook_submit)(struct keel_runtime *rt, unsigned shard);
extern void (*keel__hook_join_calls)(struct keel_runtime *rt);
/* ... each keel__submit_said() fails with -ENOMEM without entering the kernel. */
extern _Atomic unsigned keel__fault_submit_fail;
/* ... while non-zero, each submit of a feature probe's trial (caps.c) fails with -ENOMEM, as
 * under memory pressure; the count drops by one. */
extern _Atomic unsigned keel__fault_probe_submit;
/* ... while non-zero, each registration of a buffer region (bufreg.c) fails with -ENOMEM, as
 * when the kernel cannot pin its pages; the count drops by one. */
extern _Atomic unsigned keel__fault_bufreg_nomem;
/* Take one from keel__fault_sqe_none for keel's own SQEs (file.c): true, inject. */
bool keel__fault_sqe_take(void);
/* Fault injection (core/faults.c): apply the spec to a prepared, bound SQE; whether this
 * allocation fails; read KEEL_FAULTS from the environment (0 or -EINVAL). */
void keel__faults_sqe(struct io_uring_sqe *sqe);
bool keel__faults_alloc(void);
int keel__faults_env(void);
/* When KEEL_FAULTS set the rules: log each rule's injected and eligible counts (at join). */
void keel__faults_env_report(void);
#define KEEL__FAULTS_SQE(sqe) keel__faults_sqe(sqe)
#define KEEL__FAULTS_ALLOC()  keel__faults_alloc()
#else
#define KEEL__FAULTS_SQE(sqe) ((void)0)
#define KEEL__FAULTS_ALLOC()  false
#endif
/* Arm @iop as a read of @len bytes of @fd into @buf, or with iop->poll a one-shot POLLIN poll
 * of @fd (logged when no SQE is left). */
void keel__internal_read(struct keel_shard *s, struct internal_op *iop, int fd, void *buf,
			 unsigned len);

/* msg.c */
int keel__mail_init(struct keel_shard *s);
void keel__mail_fini(struct keel_shard *s);
void keel__mail_link(struct keel_shard *s);
unsigned keel__mail_drain(struct keel_shard *s);
void keel__mail_flush(struct keel_shard *s);
/* A message of keel itself: like keel_send, also while the shard drains (PHASE_STOP). */
int keel__send_internal(unsigned dst, keel_fn fn, void *arg);
bool keel__mail_pending(struct keel_shard *s);

/* timer.c */
unsigned keel__timers_run(struct keel_shard *s);
int64_t keel__timers_next_ns(struct keel_shard *s); /* -1: none */
void keel__timers_fini(struct keel_shard *s);
void keel__timers_stop_all(struct keel_shard *s);

/* runtime.c */
int keel__defer_push(struct defer_vec *v, keel_fn fn, void *arg);
unsigned keel__defer_run(struct keel_shard *s);
void keel__defer_fini(struct defer_vec *v);

/* caps.c: prepare @sqe as the socket command SOCKET_URING_OP_GETSOCKOPT (@get) or
 * SETSOCKOPT of @fd (net/sockopt.c; the probe's). */
void keel__sqe_sockopt(struct io_uring_sqe *sqe, int fd, bool get, int level, int name, void *val,
		       uint32_t len);

/* foreign.c */
/* Tests: how many times keel_runtime_submit looked through a shard's list of requests that
 * ran (for one handed on). */
extern _Atomic unsigned keel__foreign_walks;
unsigned keel__foreign_drain(struct keel_shard *s);
void keel__foreign_close(struct keel_shard *s);
/* Arm the read of the shard's wake-up eventfd. */
void keel__foreign_arm(struct keel_shard *s);

/* signal.c */
/* Arm the poll of @s's signalfd (opts.signals: every shard). */
void keel__signal_arm(struct keel_shard *s);
/* SIGINT/SIGTERM @sig was taken (by a shard, or by join once the loops ended: @late): the
 * process's first stops every listed runtime (logged at INFO), a second exits at once. */
void keel__signal_got(int sig, bool late);
/* The process's runtimes with opts.signals: a SIGINT/SIGTERM any of them reads stops them
 * all (one signalfd read takes a process-directed signal from every other). */
void keel__signal_list(struct keel_runtime *rt);
void keel__signal_unlist(struct keel_runtime *rt);

/* bufreg.c: see bufreg.h */
struct keel__bufreg;
int keel__bufreg_init(struct keel_shard *s);
void keel__bufreg_fini(struct keel_shard *s);

/* caps.c */
void keel__features_log(const struct keel_opts *opts, const struct keel_feature_decision *d);

/* --map FILE (topo_map.c): validate the map, then shard i runs on its CPU. Returns 0 (no
 * map), 1 with the map's CPUs in @cpus[*ncpus] and the map in *map (the caller frees it),
 * or -EINVAL for a stale map, or one that conflicts with --cpuset, a given --shards or an
 * --iface of another interface, after logging the reason. */
struct keel_map;
int keel__topo_apply_map(const struct keel_opts *o, int *cpus, unsigned *ncpus,
			 struct keel_map **map, char *why, size_t whylen);

/* --iface without --map (topo_map.c): check, as keel-topo --check does a map, that the rx
 * queue of each of @n shards (@rxqs[i], -1: none) has its IRQ on the shard's CPU (@cpus[i]),
 * and log a warning naming each queue whose IRQ is elsewhere and the fix; @name is what the
 * lines call the option (--iface, or KEEL_IFACE: keel__opt_name). */
void keel__topo_iface_check(const char *name, const char *iface, const int *cpus, const int *rxqs,
			    unsigned n);

/* sched_getaffinity, through a pointer so tests can stand in for a machine with more CPUs
 * than a cpu_set_t holds, or for a failing call (topo_sysfs.c). */
extern int (*keel__sched_getaffinity)(pid_t pid, size_t size, cpu_set_t *mask);

/* The calling thread's affinity mask: its CPUs below KEEL_MAX_CPUS into @out, and in
 * *beyond how many allowed CPUs are at or above it (NULL: not wanted). The mask is sized
 * for the possible CPUs (/sys/devices/system/cpu/possible, else sysconf) and grown while the
 * kernel says EINVAL, so a machine with more than CPU_SETSIZE CPUs works. Returns 0, or
 * -errno with the reason in @why (always written on error). */
int keel__affinity_get(struct keel_cpuset *out, unsigned *beyond, char *why, size_t whylen);

/* The CPUs of this process's cgroup cpuset (cgroup v2's cpuset.cpus.effective, or v1's
 * cpuset.effective_cpus, found through /proc/self/mountinfo and /proc/self/cgroup) into
 * @out, and the file read into @file. 0, or -errno (-ENOENT: no cpuset hierarchy is
 * mounted, or this process is in none). The two /proc paths are pointers so tests can
 * stand in for them. */
extern const char *keel__proc_mountinfo, *keel__proc_cgroup;
int keel__cgroup_cpus(struct keel_cpuset *out, char *file, size_t filelen);
/* The memory limit of this process's memory cgroup and its ancestors (the least of v2's
 * memory.max or v1's memory.limit_in_bytes up to the hierarchy's mount) into @limit, and
 * the file that set it into @file. 0, or -ENOENT where no limit is set or no memory cgroup
 * is found. */
int keel__cgroup_memory_limit(uint64_t *limit, char *file, size_t filelen);

/* For a message about CPU @cpu, outside this process's affinity mask: where its cgroup's
 * cpuset excludes the CPU too, a clause that says so and names the file (no taskset can
 * add it: the caller's advice is then another cgroup); else "". Written into @buf, which
 * is returned. */
const char *keel__cgroup_excludes(unsigned cpu, char *buf, size_t len);
/* The sysctl that io_uring's refusal is read against (caps.c; a test's file in tests). */
extern const char *keel__sys_io_uring_disabled;
extern const char *keel__sys_io_uring_group; /* the same, for kernel.io_uring_group */
/* The fix of a descriptor that could not be made for a shard (EMFILE, ENFILE). */
#define KEEL__NOFILE_HINT                                                                     \
	"; out of file descriptors: each shard takes a ring, an eventfd and a signalfd, and " \
	"its connections' descriptors: raise ulimit -n (or fs.file-max for ENFILE)"
/* Where CPU @cpu is not online here, why, with the fix ("does not exist here (online: LIST)",
 * or "is offline: ..."), into @buf; else "" (also when sysfs cannot say). Checked before a
 * missing CPU is blamed on the mask or the cgroup, which never hold an offline CPU. */
const char *keel__cpu_not_online(unsigned cpu, char *buf, size_t len);

/* SipHash-c-d of @n bytes at @data under @key (hash.c): keel_hash is SipHash-1-3; the tests
 * check SipHash-2-4's published vectors through the same code. */
uint64_t keel__siphash(const uint64_t key[2], const void *data, size_t n, unsigned crounds,
		       unsigned drounds);

#endif
