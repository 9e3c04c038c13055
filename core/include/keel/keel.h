/* SPDX-License-Identifier: MIT */
/*
 * Umbrella header: everything keel exports except raw ring access. keel/ring.h (the
 * shard's io_uring, SQEs, liburing and the kernel ABI of keel/compat.h) is included
 * explicitly by the apps that want it, so this header exposes no liburing type.
 */
#ifndef KEEL_KEEL_H
#define KEEL_KEEL_H

#include <keel/alloc.h>
#include <keel/buf.h>
#include <keel/bufreg.h>
#include <keel/caps.h>
#include <keel/common.h>
#include <keel/config.h>
#include <keel/file.h>
#include <keel/hash.h>
#include <keel/log.h>
#include <keel/msg.h>
/* net: the network layer (library keel_net) when it is on the include path. */
#if __has_include(<keel/net.h>)
#include <keel/frame.h>
#include <keel/net.h>
#include <keel/zcrx.h>
#endif
#include <keel/opts.h>
#include <keel/runtime.h>
#include <keel/time.h>
#include <keel/timer.h>
#include <keel/topo.h>

#endif
