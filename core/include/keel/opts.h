/* SPDX-License-Identifier: MIT */
/*
 * Runtime options, parsed from the command line and KEEL_* environment variables.
 */
#ifndef KEEL_OPTS_H
#define KEEL_OPTS_H

#include <keel/common.h>
#include <keel/log.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Most shards one runtime runs. */
#define KEEL_MAX_SHARDS 256

/** Highest CPU number + 1 that a CPU set holds. */
#define KEEL_MAX_CPUS 1024

/** A set of CPUs (a plain bitmap, so this header needs no _GNU_SOURCE). */
struct keel_cpuset {
	uint64_t bits[KEEL_MAX_CPUS / 64];
};

static inline void
keel_cpuset_add(struct keel_cpuset *s, unsigned cpu)
{
	if (cpu < KEEL_MAX_CPUS)
		s->bits[cpu / 64] |= 1ULL << (cpu % 64);
}

static inline bool
keel_cpuset_has(const struct keel_cpuset *s, unsigned cpu)
{
	return cpu < KEEL_MAX_CPUS && (s->bits[cpu / 64] >> (cpu % 64)) & 1;
}

/** How an io_uring feature is decided at start-up. */
enum keel_policy {
	KEEL_POLICY_AUTO = 0, /* use it when the kernel has it, else fall back with one INFO line */
	KEEL_POLICY_OFF = 1,  /* never use it (how each fallback path is tested) */
	KEEL_POLICY_ON = 2,   /* require it: start-up fails with the reason and the fix */
};

/** io_uring features with a policy. Names for --feature are keel_feature_name(). */
enum keel_feature {
	KEEL_FEAT_SINGLE_ISSUER = 0, /* IORING_SETUP_SINGLE_ISSUER (6.0) */
	KEEL_FEAT_DEFER_TASKRUN,     /* IORING_SETUP_DEFER_TASKRUN (6.1), else COOP_TASKRUN */
	KEEL_FEAT_REG_RING_FD,       /* io_uring_register_ring_fd (5.18) */
	KEEL_FEAT_REG_BUFFERS,       /* shard memory as fixed buffers (5.19; RLIMIT_MEMLOCK) */
	/* net: */
	KEEL_FEAT_MULTISHOT_ACCEPT, /* multishot accept (5.19) */
	KEEL_FEAT_MULTISHOT_RECV,   /* multishot recv/recvmsg with provided buffers (6.0) */
	KEEL_FEAT_RECV_BUNDLE,      /* IORING_RECVSEND_BUNDLE: one CQE, several buffers (6.10) */
	KEEL_FEAT_PBUF_INC,         /* IOU_PBUF_RING_INC: incremental buffer consumption (6.12) */
	KEEL_FEAT_DIRECT_FD,        /* accepted/connected sockets as direct descriptors (5.19) */
	KEEL_FEAT_SEND_ZC,          /* SEND_ZC / SENDMSG_ZC for large sends (6.0 / 6.1) */
	KEEL_FEAT_MIN_WAIT,         /* IORING_FEAT_MIN_TIMEOUT: sleeps that gather (6.12) */
	KEEL_FEAT_TASKRUN_FLAG, /* IORING_SETUP_TASKRUN_FLAG (5.19); auto: polling shards only */
	KEEL_FEAT__COUNT
};

/**
 * Default CQ size per shard: four completions (a multishot receive, a send, a SEND_ZC
 * notification, a cancel) for each of the 4,096 connections a shard's default
 * direct-descriptor table holds, so one pass in which every connection completes does not
 * overflow. 256 KiB of CQ per shard. A CQ that does overflow loses nothing (the kernel
 * holds the excess until the next io_uring_enter) but ends multishot operations, which are
 * then re-armed: counted as cq_overflows in the stats.
 */
#define KEEL_CQ_ENTRIES_DEFAULT 16384

/** Most CQ entries the kernel gives a ring (IORING_MAX_CQ_ENTRIES). */
#define KEEL_CQ_ENTRIES_MAX 65536

/**
 * Default for keel_opts.mailbox_overflow: the application's messages to one destination that
 * may wait on the sender once the destination's queue is full (about 48 bytes each from the
 * sender's arena, so at most 768 KiB per destination) before keel_send and the calls return
 * -EAGAIN. keel's own messages (a call's reply, a buffer going home) wait there too, never
 * refused and not counted: bounded by the calls made and the buffers held. At most 2^24.
 */
#define KEEL_MAILBOX_OVERFLOW_DEFAULT 16384
#define KEEL_WAIT_COALESCE_US_DEFAULT 10

/** Runtime options. Initialise with keel_opts_init(); every field may then be set directly. */
struct keel_opts {
	unsigned shards;           /* --shards: 0 = one per CPU in the cpuset */
	bool shards_given;         /* --shards or KEEL_SHARDS was given (a program's own default
				    * in @shards is not: --map then decides the count) */
	struct keel_cpuset cpuset; /* --cpuset: CPUs for shards, in ascending order */
	bool cpuset_given;         /* false: the process's affinity mask at start */
	unsigned idle_poll_us;     /* --idle-poll-us: busy-poll this long before sleeping */
	bool idle_poll_adaptive;   /* --idle-poll-adaptive: poll only while work comes back
				    * within that window (docs/architecture.md, "Idle polling");
				    * needs idle_poll_us > 0 (create: -EINVAL) */
	unsigned wait_coalesce_us; /* --wait-coalesce-us: a sleep may gather completions this
				    * long (adaptive; 0: never; docs/architecture.md, "Wait
				    * coalescing"; default KEEL_WAIT_COALESCE_US_DEFAULT) */
	bool wait_coalesce_fixed;  /* --wait-coalesce-fixed: every sleep gathers, no trials;
				    * needs wait_coalesce_us > 0 (create: -EINVAL), as does
				    * --feature min_wait=on */
	unsigned ring_entries;     /* --ring-entries: SQ size */
	unsigned cq_entries;       /* --cq-entries: CQ size, >= ring_entries (the kernel rounds
				    * up to a power of two; default KEEL_CQ_ENTRIES_DEFAULT) */
	unsigned stall_ms;         /* --stall-ms: a loop pass longer than this is a stall */
	unsigned mailbox_entries;  /* --mailbox-entries: slots per shard-pair queue (power of 2) */
	unsigned mailbox_overflow; /* --mailbox-overflow: messages to one destination that may
				    * wait on the sender beyond its full queue; then keel_send
				    * returns -EAGAIN (0: none; KEEL_MAILBOX_OVERFLOW_DEFAULT) */
	enum keel_log_level log_level; /* --log-level; keel_opts_init: the process's level now
					* (keel_log_get_level), which create applies */
	bool stats;                    /* --stats: per-shard stats at the join (and each
					* shard's memory at its end), on stderr or through the
					* log sink when one is set, whatever the log level */
	bool signals;                  /* SIGINT/SIGTERM stop the runtime, and every other one
					* with this set (keel_run default) */
	enum keel_policy features[KEEL_FEAT__COUNT]; /* --feature NAME=off|on|auto */
	const char *map_path; /* --map: core/queue map file (keel-topo --plan), NULL: none */
	uint64_t memory; /* --memory: registered buffer memory per shard, bytes (default 256M) */
	bool hugepages;  /* --hugepages: hugetlbfs pages for it (reserved in nr_hugepages) */

	/* --file-qd: disk requests in a shard's ring at once; the rest wait in a FIFO
	 * (default KEEL_FILE_QD_DEFAULT, keel/file.h; docs/file.md) */
	unsigned file_qd;
	/* --stop-drain-ms: how long the stop lets the disk requests its stop hooks made run
	 * before it cancels them, where the kernel can (0: no bound, the default; docs/file.md
	 * "Stop and cancellation") */
	unsigned stop_drain_ms;
	/* --stop-flush-ms: at the stop, the network closes its connections gracefully (their
	 * queued replies sent, then a FIN) and the stop waits up to this many ms, from its
	 * start, for those closes before it cancels what is in flight and resets the rest
	 * (0: no flush, the default: every connection is reset at once; docs/net.md "The
	 * stop's flush") */
	unsigned stop_flush_ms;

	/* ZCRX (zero-copy receive, docs/net.md "ZCRX"). A shard registers an interface queue
	 * when it has an rx queue: the i-th of --rxqs, else its --map entry's, else with
	 * --iface alone queue i. With --map, --iface must be the map's interface (or
	 * keel_runtime_create() fails). */
	enum keel_policy zcrx;          /* --zcrx off|on|auto (default auto) */
	char iface[32];                 /* --iface IF, or the IF of --rxqs ("": the map's) */
	unsigned rxqs[KEEL_MAX_SHARDS]; /* --rxqs IF:LIST: rx queue of shard i... */
	unsigned nrxqs;                 /* ...for i < nrxqs (0: from --map) */
	uint64_t zcrx_area;             /* --zcrx-area: receive area per shard, bytes (one page
					 * to KEEL_ZCRX_AREA_MAX; else EINVAL at set-up) */
	unsigned zcrx_rq_entries;       /* --zcrx-rq-entries: refill ring entries (power of 2) */

	/* Set by keel_opts_parse (keel_opts_init clears it): which options' values came from
	 * their KEEL_* variable rather than the command line, one bit each (and, 32 bits up,
	 * those the command line added to, as --feature adds to KEEL_FEATURE), so that
	 * messages about a value name what the user set (KEEL_SHARDS, not --shards). A host
	 * that sets a field itself after the parse may leave it: a message then names the
	 * variable. */
	uint64_t from_env;
};

/** Default --zcrx-area: 64 MiB of receive area per ZCRX shard. */
#define KEEL_ZCRX_AREA_DEFAULT (64ULL << 20)
/** Most keel_opts.zcrx_area (--zcrx-area): 1 TiB. The least is one page. */
#define KEEL_ZCRX_AREA_MAX (1ULL << 40)
/** Default --zcrx-rq-entries: refill ring entries (the kernel allows up to 32768). */
#define KEEL_ZCRX_RQ_ENTRIES_DEFAULT 4096
/** Most --zcrx-rq-entries (the kernel's IORING_MAX_ZCRX_RQ_ENTRIES... as of 6.18). */
#define KEEL_ZCRX_RQ_ENTRIES_MAX 32768

/** Fill @o with defaults (no shards count = one per CPU, 50 us idle poll, 256 SQ entries,
 * KEEL_CQ_ENTRIES_DEFAULT CQ entries, 25 ms stall threshold, 1024 mailbox slots,
 * KEEL_MAILBOX_OVERFLOW_DEFAULT overflow messages per destination, the process's current
 * log level (keel_log_get_level(): INFO unless the host set another), signals on, 256 MiB
 * of buffer memory per shard on transparent huge pages). */
KEEL_API void keel_opts_init(struct keel_opts *o);

/**
 * Parse KEEL_* environment variables, then the options keel owns in argv (which override
 * them). Recognised options are removed from argv and *argc is updated; options keel does
 * not own are left in place, in order, for the application.
 *
 * Both "--opt value" and "--opt=value" are accepted; a flag (--stats, --hugepages, ...)
 * takes a value only as "--flag=off", and "--flag off" (a boolean word after it) is refused
 * naming that form. "--" ends keel's options.
 *
 * All or nothing: on an error @o, argv and *argc are as they were on entry (the options
 * are parsed into a copy, committed with argv's compaction only on success), so a caller
 * may print usage from argv or parse again with other defaults.
 *
 * Returns: 0; 1 when --help was given (print keel_opts_help() and exit 0); -EINVAL with a
 * one-line message in @err naming the option and what it expects.
 */
KEEL_API int keel_opts_parse(struct keel_opts *o, int *argc, char **argv, char *err, size_t errlen);

/** One of a program's own options, for keel_opts_next(). */
struct keel_app_opt {
	const char *name; /* "--port" */
	const char *arg;  /* what its value is, for messages ("0..65535"); NULL: a flag */
};

/**
 * Program helper: read the program's own option at argv[*i] (in what keel_opts_parse and
 * keel_net_opts_parse left) by the rules they read keel's by, so that every option of a
 * program is written alike: "--name value" or "--name=value"; a flag alone ("--udp") or with
 * a boolean word after '=' ("--udp=off"). "--" ends the options. A separate value that begins
 * with "--" is taken for the next option (its missing value is said, naming the '=' form,
 * which takes any value).
 *
 * @opts: the program's options (@nopts of them; an entry with a NULL name is skipped).
 *
 * Context: any thread; argv is only read.
 *
 * Returns: the index in @opts of the option read, with its value in *value ("on" or "off"
 * for a flag) and *i moved past it and its value; -ENOENT at the end of the options, *i then
 * at argc or at the first argument after "--" (a program that takes no arguments refuses any
 * there); -EINVAL with a one-line message in @err for an unknown option, one with no name
 * before its '=' ("--=x": said so, not as an unknown option "--"), an argument before
 * "--" (a word not an option), a missing value, a flag given a value that is not a boolean,
 * or a boolean word after a flag ("--udp off": write --udp=off).
 */
KEEL_API int keel_opts_next(int argc, char **argv, int *i, const struct keel_app_opt *opts,
			    size_t nopts, const char **value, char *err, size_t errlen);

/** Write the list of runtime options and environment variables to @f. */
KEEL_API void keel_opts_help(FILE *f);

/**
 * Program helper: keel_opts_parse(), and on an error print "PROG: MESSAGE" to stderr and
 * exit with status 2; on --help print @usage (may be NULL) and the runtime options to stdout
 * and exit 0.
 */
KEEL_API void keel_opts_parse_or_exit(struct keel_opts *o, int *argc, char **argv,
				      const char *usage);

/** The --feature name of @f ("defer_taskrun", ...), or NULL. */
KEEL_API const char *keel_feature_name(enum keel_feature f);

/** The name of a policy: "auto", "off" or "on". */
KEEL_API const char *keel_policy_name(enum keel_policy p);

/**
 * Parse a CPU list such as "0-3,8,10-11" into @out.
 * Returns: 0; -ERANGE when the list is well formed but names CPUs at or above
 * KEEL_MAX_CPUS (@out then holds the ones below it; message in @err); -EINVAL for a
 * malformed list (message in @err).
 */
KEEL_API int keel_cpulist_parse(const char *s, struct keel_cpuset *out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
