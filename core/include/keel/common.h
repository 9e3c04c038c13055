/* SPDX-License-Identifier: MIT */
/*
 * Common definitions for every keel header: the export macro and the generated build
 * configuration.
 */
#ifndef KEEL_COMMON_H
#define KEEL_COMMON_H

#include <keel/config.h>

#if defined(__GNUC__)
#define KEEL_API          __attribute__((visibility("default")))
#define KEEL_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define KEEL_API
#define KEEL_PRINTF(f, a)
#endif

#endif
