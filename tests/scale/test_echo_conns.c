// SPDX-License-Identifier: MIT
/*
 * 10,000 connections over loopback to keel-echo (2,000 under KEEL_TEST_SCALE=small): the
 * server keeps answering them and a new connection, and its memory per idle connection
 * (RSS growth / connections) stays under 16 KiB. The figure is printed.
 */
#include <criterion/criterion.h>

#include "scale.h"

TestSuite(scale, .fini = scale_fini);

Test(scale, echo_10000_connections_bounded_memory)
{
	scale_idle_conns(KEEL_ECHO_BIN, "keel-echo", scale_small() ? 2000 : 10000, "echo", "echo");
}
