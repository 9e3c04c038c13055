/* SPDX-License-Identifier: MIT */
/*
 * Logging. Library code never writes to stdout/stderr directly: every message goes through
 * keel_log(), which the application may redirect with keel_log_set_sink().
 */
#ifndef KEEL_LOG_H
#define KEEL_LOG_H

#include <keel/common.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

enum keel_log_level {
	KEEL_LOG_ERROR = 0,
	KEEL_LOG_WARN = 1,
	KEEL_LOG_INFO = 2,
	KEEL_LOG_DEBUG = 3,
};

/**
 * A log sink. @msg is one formatted line without a trailing newline; @shard is the id of
 * the shard that logged it, or -1 when a non-shard thread did.
 * Context: called from any thread, concurrently; the sink must be thread-safe.
 */
typedef void (*keel_log_fn)(enum keel_log_level level, const char *module, int shard,
			    const char *msg, void *arg);

/**
 * Install a log sink; NULL restores the default (one line per message on stderr).
 * Context: any thread; takes effect for messages logged after it returns. Called from a
 * sink (falling back to stderr when the sink's own output failed, say), it takes effect
 * once that sink returns (what the sink logs meanwhile still reaches it), unless another
 * thread installed a sink meanwhile: the later call wins. A thread cancelled inside a sink
 * (pthread_cancel() acting in the sink's write, say) holds nothing of keel's afterwards.
 */
KEEL_API void keel_log_set_sink(keel_log_fn fn, void *arg);

/**
 * Set the most verbose level that is logged (default KEEL_LOG_INFO), for the whole process.
 * keel_runtime_create() applies its opts.log_level, which keel_opts_init() takes from here:
 * a level set before keel_opts_init() stays unless --log-level (or KEEL_LOG_LEVEL) is given.
 * A value outside the enum is taken as the nearest level; a line logged at such a value is
 * never written.
 * Context: any thread.
 */
KEEL_API void keel_log_set_level(enum keel_log_level level);

/** The current log level. Context: any thread. */
KEEL_API enum keel_log_level keel_log_get_level(void);

/** True when a message at @level would be logged (skip expensive formatting otherwise). */
KEEL_API bool keel_log_enabled(enum keel_log_level level);

/**
 * Log one message from @module ("core", "net", ...) at @level.
 * Context: any thread.
 */
KEEL_API void keel_log(enum keel_log_level level, const char *module, const char *fmt, ...)
	KEEL_PRINTF(3, 4);

/**
 * Parse "error", "warn", "info" or "debug".
 * Returns: 0, or -EINVAL for anything else.
 */
KEEL_API int keel_log_level_parse(const char *s, enum keel_log_level *out);

#ifdef __cplusplus
}
#endif

#endif
