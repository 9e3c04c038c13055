/* SPDX-License-Identifier: MIT */
/*
 * The shard runtime: N shard threads, each pinned to one CPU and owning one io_uring ring,
 * running every callback to completion.
 *
 * Threading: a shard's objects (its ring, timers, ops, connections) are used only on that
 * shard. Other shards reach it with messages (keel/msg.h); threads that are not shards reach
 * it with keel_runtime_submit().
 */
#ifndef KEEL_RUNTIME_H
#define KEEL_RUNTIME_H

#include <keel/common.h>
#include <keel/opts.h>
#include <keel/time.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_runtime;
struct keel_shard;

/** Called once on each shard, on that shard's thread, before its loop starts. */
typedef void (*keel_shard_fn)(void *app);

/** A plain callback with one argument. */
typedef void (*keel_fn)(void *arg);

/**
 * Run the runtime in the calling thread until it stops: create @opts->shards shard threads,
 * pin each to its CPU, call @on_start on every shard, run the loops, and join them.
 * With @opts->signals, SIGINT/SIGTERM stop all shards gracefully; a second one exits the
 * process at once.
 * Returns: the status passed to keel_stop() (0 after a clean stop), or -errno when the
 * runtime could not start (the reason is logged).
 */
KEEL_API int keel_run(const struct keel_opts *opts, keel_shard_fn on_start, void *app);

/**
 * Embedding, step 1: create a runtime (topology, shard table, mailboxes), starting nothing.
 * Returns: 0 and *out, or -errno (-EINVAL for impossible options, -ENOMEM).
 */
KEEL_API int keel_runtime_create(const struct keel_opts *opts, struct keel_runtime **out);

/**
 * Embedding, step 2: start the shard threads; @on_start runs on each. Returns once every
 * shard has its ring and is running. With opts->signals, SIGINT and SIGTERM are blocked in
 * the calling thread (the host must block them in its other threads too) until join; with
 * several such runtimes started on one thread, until the last of them is joined, in any
 * order, which gives back the mask the thread had before the first.
 * Returns: 0, or -errno when a shard failed to start (all shards are then stopped and joined;
 * keel_runtime_join returns the same error). A failure before any shard thread existed
 * (signalfd or eventfd: descriptors ran out) leaves nothing open, and start may be called
 * again. A failed start gives the thread's mask back and leaves a SIGINT or SIGTERM that
 * came meanwhile pending for the host. -ESHUTDOWN with opts->signals once libkeel was
 * unloaded or the process is exiting (its destructors ran: docs/embedding.md).
 * Context: the thread that created the runtime; once (but for that retry).
 */
KEEL_API int keel_runtime_start(struct keel_runtime *rt, keel_shard_fn on_start, void *app);

/**
 * Ask every shard to stop: on-stop hooks run, in-flight operations are cancelled, messages
 * already sent are delivered, then the loops end. The first status given wins.
 * Context: any thread, any number of times, and a signal handler on any thread, a shard's
 * too: it only changes atomics and writes to the sleeping shards' eventfds (it logs only
 * if such a write fails). Not a cancellation point, as keel_runtime_submit: a deferred
 * cancel acts after it (join waits for every call in progress to leave).
 */
KEEL_API void keel_runtime_stop(struct keel_runtime *rt, int status);

/**
 * Wait for all shard threads to end. The shards' buffers are freed with them: a slice of
 * this runtime held in another runtime must be put before this call (architecture.md,
 * "Between runtimes"). With opts->signals, a SIGINT or SIGTERM that came once
 * the shards' loops had ended is taken here before the caller's signal mask is restored, as
 * the shards take them: the first is the stop under way (consumed and logged: it is not
 * delivered after join, to a handler of the host's or otherwise), a second exits the
 * process at once. While a stop cannot end (work that never finishes keeps a shard from
 * quiescence), every 10 s each shard logs a WARN naming what holds it, or the shards it
 * waits for (architecture.md, "Stopping").
 * Returns: the stop status (0 after a clean stop), or keel_runtime_start's error when it
 * failed; the same again from a join after the one that joined. -EDEADLK, logged as an
 * ERROR, when called on one of this runtime's own shards (a callback, on_start, a stop
 * hook): a shard cannot wait for its own end; call keel_stop() there and join on the
 * starting thread. -EALREADY, logged, while another thread's join of the runtime is under
 * way: only one joins.
 * Context: the thread that started the runtime; once. (With opts->signals, a join on
 * another thread leaves the starting thread's mask as it is, logged as in
 * keel_runtime_destroy().) Never one of the runtime's own shards.
 */
KEEL_API int keel_runtime_join(struct keel_runtime *rt);

/**
 * Free a runtime that was never started or has been joined. The last runtime of the process
 * to be destroyed puts RLIMIT_NOFILE's soft limit back where it was before the network
 * raised it for its direct-descriptor tables, if it still holds the value keel set and no
 * descriptor at or above the old limit is open (else it stays, said in a WARN line, as
 * where /proc/self/fd cannot be read; a value the host set meanwhile is left as it is,
 * unsaid: docs/embedding.md, "Memory keel takes per shard").
 * A runtime started but not joined is stopped and joined here; with opts->signals, on
 * another thread than the starting one, that join cannot unblock SIGINT and SIGTERM in the
 * starting thread: it logs an ERROR naming the fix, and that thread gets its mask back when
 * it next joins a runtime it started. When another thread is inside keel_runtime_join()
 * already, the destroy stops the runtime (status 0 unless a stop came first), waits for
 * that join to return (it returns the stop status; also a join at its very end, which
 * still holds the runtime's lock) and then frees the runtime. A join that begins after the
 * destroy has begun is a use after free, as any call on @rt.
 * Context: any thread, after join (with opts->signals, a join on the starting thread), but
 * one of the runtime's own shards: there it cannot free the runtime it runs on, nor join
 * it, so it logs an ERROR naming the fix and returns, destroying nothing (the runtime runs
 * on; the host still joins and destroys it).
 */
KEEL_API void keel_runtime_destroy(struct keel_runtime *rt);

/** Number of shards of @rt. */
KEEL_API unsigned keel_runtime_shard_count(const struct keel_runtime *rt);

/** The CPU that shard @shard is pinned to, or -EINVAL. */
KEEL_API int keel_runtime_shard_cpu(const struct keel_runtime *rt, unsigned shard);

/** The shard the calling thread runs, or NULL on a non-shard thread. */
KEEL_API struct keel_shard *keel_this_shard(void);

/** Id (0..count-1) of @sh. */
KEEL_API unsigned keel_shard_id(const struct keel_shard *sh);

/** Number of shards in @sh's runtime. */
KEEL_API unsigned keel_shard_count(const struct keel_shard *sh);

/** CPU @sh is pinned to. */
KEEL_API int keel_shard_cpu(const struct keel_shard *sh);

/** The runtime @sh belongs to. */
KEEL_API struct keel_runtime *keel_shard_runtime(const struct keel_shard *sh);

/**
 * The options @rt was created with (a copy it owns).
 * Context: any thread, while @rt exists.
 */
KEEL_API const struct keel_opts *keel_runtime_opts(const struct keel_runtime *rt);

/** The io_uring setup flags @sh's ring was created with (IORING_SETUP_*). */
KEEL_API unsigned keel_shard_ring_flags(const struct keel_shard *sh);

/** Monotonic time (CLOCK_MONOTONIC) in nanoseconds as of the start of the current loop pass on this
 * shard (in on_start: as of the shard's start). */
KEEL_API uint64_t keel_now_ns(void);

/**
 * Stop the runtime this shard belongs to (see keel_runtime_stop()).
 * Context: a shard.
 */
KEEL_API void keel_stop(int status);

/**
 * Run @fn(@arg) on this shard on the current loop pass, after timers, in FIFO order; work
 * deferred from inside a deferred callback runs on the next pass.
 * Returns: 0, -EINVAL for a NULL @fn, -ENOMEM, or -ESHUTDOWN once the shard's loop has
 * ended (from the done callback of a foreign request completed with -ECANCELED at the
 * shard's end), where nothing would run it.
 * Context: a shard.
 */
KEEL_API int keel_defer(keel_fn fn, void *arg);

/**
 * Register @fn(@arg) to run on this shard when the runtime begins to stop (before its
 * in-flight operations are cancelled). Disk requests (keel/file.h) a hook makes, and those
 * their callbacks make, go into the ring after that cancel and run to completion, the stop
 * waiting for them (docs/file.md, "Stop and cancellation"): a hook may write and sync. A
 * hook registered once the stop has begun runs as deferred work and cannot make disk
 * requests (-ESHUTDOWN). Hooks run in registration order, once. One
 * registered by a hook runs after the hooks registered before it; one registered once the
 * stop has begun (from a callback run while stopping) runs as deferred work (keel_defer).
 * Returns: 0, -ENOMEM, or -ESHUTDOWN once the shard's loop has ended (as keel_defer).
 * Context: a shard.
 */
KEEL_API int keel_shard_on_stop(keel_fn fn, void *arg);

/**
 * Whether this shard's stop has begun: its stop hooks run or have run. A module that makes
 * per-shard state on first use refuses to make it from then on (the network's calls
 * answer -ESHUTDOWN).
 * Context: a shard.
 */
KEEL_API bool keel_shard_stopping(void);

/**
 * Whether this shard's runtime has been asked to stop (keel_stop, keel_runtime_stop, or a
 * SIGINT/SIGTERM a shard read), whether or not this shard's stop has begun. Long work in
 * an on_start callback (loading files) checks it and returns early: the shard's loop,
 * which would begin its stop, runs only after on_start returns. (With every shard still
 * in on_start, a signal is read by none: see keel_opts.signals.)
 * Context: a shard.
 */
KEEL_API bool keel_stop_requested(void);

/** Per-shard counters. Each is written only by its shard; readers see a recent value. */
struct keel_shard_stats {
	uint64_t passes;          /* loop passes */
	uint64_t enters;          /* io_uring_enter system calls */
	uint64_t cqes;            /* completions reaped */
	uint64_t msgs_sent;       /* cross-shard messages sent (calls and replies included) */
	uint64_t msgs_recv;       /* cross-shard messages run */
	uint64_t msgs_overflow;   /* messages that waited in the sender's overflow list */
	uint64_t msgs_refused;    /* sends and calls refused with -EAGAIN: the destination's
				   * queue and --mailbox-overflow were full */
	uint64_t sleeps;          /* waits in the kernel with nothing to do */
	uint64_t wakeups;         /* MSG_RING or eventfd wake-ups received */
	uint64_t wake_fallbacks;  /* MSG_RING wake-ups that failed, sent again by eventfd */
	uint64_t cq_overflows;    /* passes that found completions held in the kernel's CQ
				   * overflow list (the CQ was full; see --cq-entries) */
	uint64_t cq_dropped;      /* completions the kernel dropped (could not hold them) */
	uint64_t stalls;          /* passes longer than --stall-ms */
	uint64_t timers_fired;    /* timer callbacks run */
	uint64_t deferred;        /* keel_defer callbacks run (and the runtime's own deferred
				   * steps: the network's closes) */
	uint64_t foreign;         /* keel_runtime_submit requests run */
	uint64_t max_pass_ns;     /* longest pass seen */
	uint64_t idle_poll_ns;    /* time spent polling with nothing to do (--idle-poll-us):
				   * CPU the shard burned idle, counted as busy by the OS */
	uint64_t polls_found;     /* idle polls (--idle-poll-us) that found work in the window */
	uint64_t polls_slept;     /* ... that found none in it (then slept in the kernel, or
				   * found work in the sleep's last look): found / (found +
				   * slept) is how often polling paid */
	uint64_t coalesced;       /* sleeps that gathered completions (--wait-coalesce-us) */
	uint64_t coalesce_trials; /* trials started: 4 epochs of 10 ms in the other state */
	uint64_t coalesce_won;    /* trials that kept (or turned) gathering on */
	uint64_t wakeups_ring;    /* ... of the wake-ups, those by MSG_RING (the rest came
				   * through the eventfd: wake_fallbacks, keel_runtime_submit) */
	uint64_t merges;          /* passes that ran the arrivals waiting before they submitted,
				   * so that their replies went out together (docs/architecture.md,
				   * step 6: polling shards; counted in enters too) */
};

/**
 * Copy shard @shard's counters into @out.
 * Returns: 0, or -EINVAL for a shard that does not exist.
 * Context: any thread.
 */
KEEL_API int keel_runtime_stats(const struct keel_runtime *rt, unsigned shard,
				struct keel_shard_stats *out);

/** Print one line of counters per shard to @f, after a header line (what --stats gives at
 * the join: on stderr, or through the log sink when one is set, keel_log_set_sink()). */
KEEL_API void keel_runtime_stats_print(const struct keel_runtime *rt, FILE *f);

/*
 * Foreign threads: a thread that is not a shard (a storage server's own worker, say) hands
 * a request to a shard and gets the completion back on its own terms: a callback, or a
 * completion queue with an eventfd it can poll.
 */
struct keel_xreq;
struct keel_xqueue;

/** Runs on the target shard; must eventually call keel_xreq_complete(), before the shard's
 * stop ends: the timers pending when the stop begins are dropped unrun, and none holds the
 * stop (complete a request that waits for one from a keel_shard_on_stop hook). A request
 * that ran and is not completed when its shard ends is completed then with -ECANCELED, and
 * an error says how many were; its done then runs after the shard's loop, where nothing can
 * be sent: a buffer of another shard it puts last cannot go home (the allocator reports it
 * leaked). fn may hand @req on with keel_runtime_submit (to this shard
 * or another) instead of completing it: on the shard it ran on (from fn, or a callback
 * there later), as it is completed there. Submitted from another thread or shard while
 * it is still that shard's, it would stay on that shard's list of requests that ran (its
 * private fields are not trusted before the first submit, so this is not detected). */
typedef void (*keel_xreq_fn)(struct keel_xreq *req);

/** A request from a foreign thread. Caller-owned memory; set the public fields, then submit. */
struct keel_xreq {
	keel_xreq_fn fn;           /* runs on the shard */
	keel_xreq_fn done;         /* optional: runs on the shard at completion */
	struct keel_xqueue *queue; /* optional: completion is queued here (after done) */
	void *arg;                 /* for the application */
	int status;                /* out: the status given to keel_xreq_complete() */
	/* private to keel */
	struct keel_xreq *next_;
	struct keel_xreq *rnext_, *rprev_; /* on its shard's list of requests that ran */
	struct keel_shard *rsh_;           /* that shard, while the request is on it */
};

/**
 * Hand @req to shard @shard; its fn runs there on a coming loop pass.
 * Ownership: @req must stay valid until it completes: until it is popped from its queue
 * when it has one (done runs before it is queued), else until done ran.
 * Returns: 0; -EINVAL (no such shard, no fn); -ESHUTDOWN until every shard has its ring
 * (early in keel_runtime_start, which may not have returned yet when requests are taken;
 * and for good when it fails) and once the runtime is
 * stopping. A request accepted (0) runs on its shard, also when the stop begins as it is
 * submitted: the shard does not end before it ran (its fn then runs while the shard stops,
 * when keel_send refuses and keel's own messages, such as a buffer going home, still go).
 * Not a cancellation point: a deferred cancel pending in the calling thread acts at its
 * next one, after the call (the call holds the shard's request lock across its wake-up).
 * Asynchronous cancellation (PTHREAD_CANCEL_ASYNCHRONOUS) must be off around it.
 * keel_runtime_join() waits for the calls in progress on other threads to return, as for
 * keel_runtime_stop()'s: a host thread inside this call while the starting thread stops,
 * joins and destroys @rt gets its -ESHUTDOWN before the shard's memory is freed. That
 * covers a call already under way, not one made after the join returned (or just as it
 * returns, before the call is counted): a host whose threads submit until they get
 * -ESHUTDOWN still stops them (joins them, or hears from each that it is done with @rt)
 * before keel_runtime_destroy(). -ESHUTDOWN is final: a thread that calls again and again
 * after it keeps the join waiting (it waits until no call is in progress on any shard at
 * one moment), so a host's threads end their submitting at the first one.
 * Context: any thread.
 */
KEEL_API int keel_runtime_submit(struct keel_runtime *rt, unsigned shard, struct keel_xreq *req);

/**
 * Complete @req with @status: run req->done on this shard if set, then queue it on
 * req->queue if set (waking that queue's eventfd).
 * Context: the shard the request was submitted to.
 */
KEEL_API void keel_xreq_complete(struct keel_xreq *req, int status);

/** Create a completion queue for foreign requests. Returns: 0 and *out, or -errno. */
KEEL_API int keel_xqueue_create(struct keel_xqueue **out);

/** The queue's eventfd: readable while completions are waiting. Owned by the queue. */
KEEL_API int keel_xqueue_fd(const struct keel_xqueue *q);

/**
 * Take up to @max completed requests, oldest first, without blocking.
 * Returns: how many were stored in @out (0 for @max 0 or @out NULL).
 * Context: any thread.
 */
KEEL_API unsigned keel_xqueue_pop(struct keel_xqueue *q, struct keel_xreq **out, unsigned max);

/**
 * Block until at least one completion is waiting (or @timeout_ns passes: KEEL_MS(100); -1
 * waits forever), then pop like keel_xqueue_pop().
 * Returns: how many were stored, 0 on timeout, or -errno: -EINVAL for @max 0 or @out NULL
 * (nothing could be taken, so the wait would never end).
 */
KEEL_API int keel_xqueue_wait(struct keel_xqueue *q, struct keel_xreq **out, unsigned max,
			      int64_t timeout_ns);

/** Free a queue with no request still pointing at it. */
KEEL_API void keel_xqueue_destroy(struct keel_xqueue *q);

#ifdef __cplusplus
}
#endif

#endif
