/* SPDX-License-Identifier: MIT */
/*
 * Common definitions for every keel header: the export macro. It lives in alloc/, the
 * lowest layer (alloc <- core <- net <- apps), and depends on nothing; the generated
 * build configuration (keel/config.h: what the installed liburing provides) is core's and
 * is included by the headers that need it.
 */
#ifndef KEEL_COMMON_H
#define KEEL_COMMON_H

#if defined(__GNUC__)
#define KEEL_API          __attribute__((visibility("default")))
#define KEEL_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define KEEL_API
#define KEEL_PRINTF(f, a)
#endif

#endif
