/* SPDX-License-Identifier: MIT */
/*
 * Time units. Every duration and point in time that keel's calls take or return is in
 * nanoseconds (uint64_t, or int64_t where -1 means "forever"), as keel_now_ns() is: timers,
 * timeouts, keel_net_config's durations. Write other units through these helpers, so the
 * unit is in the code: keel_timer_start(t, KEEL_MS(250), 0).
 *
 * The one exception: keel_opts fields mirror command-line options and keep the unit their
 * option's name carries (--idle-poll-us, --stall-ms: idle_poll_us, stall_ms).
 */
#ifndef KEEL_TIME_H
#define KEEL_TIME_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** @x nanoseconds, microseconds, milliseconds or seconds, as nanoseconds (uint64_t). */
#define KEEL_NS(x) ((uint64_t)(x))
#define KEEL_US(x) ((uint64_t)(x)*UINT64_C(1000))
#define KEEL_MS(x) ((uint64_t)(x)*UINT64_C(1000000))
#define KEEL_S(x)  ((uint64_t)(x)*UINT64_C(1000000000))

/** Nanoseconds @ns as whole milliseconds (rounded down), for people and poll(2). */
#define KEEL_NS_TO_MS(ns) ((uint64_t)(ns) / UINT64_C(1000000))

#ifdef __cplusplus
}
#endif

#endif
