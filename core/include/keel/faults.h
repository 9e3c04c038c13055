/* SPDX-License-Identifier: MIT */
/*
 * Fault injection for tests (builds configured with -DKEEL_FAULTS=ON only; refused in
 * Release builds). Chosen io_uring operations complete with a chosen error or really move
 * fewer bytes, deterministically from a seed. The rules, and why each injected outcome is
 * one the kernel itself could produce, are in docs/testing.md ("Fault injection").
 *
 * The spec, from keel_faults_set() or the environment variable KEEL_FAULTS (read when a
 * runtime is created, unless a test set a spec itself):
 *   RULE[,RULE...][,seed=N]     RULE: CLASS:ACTION[:p=F][:n=N][:after=N]
 *   CLASS   recv send accept connect read write fsync msgring alloc
 *   ACTION  short (recv, send, read, write: the operation asks for fewer bytes) or an
 *           errno name (ECONNRESET, EPIPE, ENOBUFS, EAGAIN, ECANCELED, EIO, ENOSPC, ...)
 *   p=F     probability per eligible operation (default 1); n=N inject at most N times
 *           (default unlimited); after=N leave the first N eligible operations alone
 *   e.g. KEEL_FAULTS="send:short:p=0.1,recv:ECONNRESET:p=0.01,seed=7"
 */
#ifndef KEEL_FAULTS_H
#define KEEL_FAULTS_H

#include <keel/common.h>
#include <keel/config.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifdef KEEL_FAULTS
/**
 * Replace the fault spec (NULL or "": no faults) and reset the counters.
 * Context: any thread, while no runtime runs (shards read the spec without locks).
 * Returns: 0, or -EINVAL with the reason logged.
 */
KEEL_API int keel_faults_set(const char *spec);

/**
 * How many faults of @cls ("send", ...; NULL: all classes) were injected since the last
 * keel_faults_set().
 * Context: any thread.
 */
KEEL_API uint64_t keel_faults_injected(const char *cls);
#endif

#ifdef __cplusplus
}
#endif

#endif
