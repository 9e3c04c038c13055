// SPDX-License-Identifier: MIT
/*
 * keel-kv with 2 shards still answers PING with 5,000 idle connections open (1,000 under
 * KEEL_TEST_SCALE=small), at under 16 KiB of server memory (RSS growth) per idle
 * connection. The figure is printed.
 */
#include <criterion/criterion.h>

#include "scale.h"

TestSuite(scale_kv, .fini = scale_fini);

Test(scale_kv, kv_5000_idle_connections_ping_under_16k_each)
{
	scale_idle_conns(KEEL_KV_BIN, "keel-kv", scale_small() ? 1000 : 5000, "PING\r\n",
			 "+PONG\r\n");
}
