/* SPDX-License-Identifier: MIT */
/*
 * Common definitions for every keel header: the export macro, and a static assertion that
 * C and C++ hosts both compile (every header is extern "C" for C++). It lives in alloc/, the
 * lowest layer (alloc <- core <- net <- apps), and depends on nothing; the generated
 * build configuration (keel/config.h: what the installed liburing provides) is core's and
 * is included by the headers that need it.
 */
#ifndef KEEL_COMMON_H
#define KEEL_COMMON_H

#ifdef __cplusplus
#define KEEL_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define KEEL_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

#if defined(__GNUC__)
#define KEEL_API          __attribute__((visibility("default")))
#define KEEL_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define KEEL_API
#define KEEL_PRINTF(f, a)
#endif

#endif
