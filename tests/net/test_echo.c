// SPDX-License-Identifier: MIT
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "helpers.h"

static void
round_trips(unsigned shards)
{
	struct keel_opts o = net_test_opts(shards);
	struct srv s;
	char out[64], in[64];

	cr_assert_eq(srv_start(&s, &o, NULL, NULL), 0);
	for (int k = 0; k < 8; k++) {
		int fd = cli_connect(s.port);
		cr_assert_geq(fd, 0, "connect: %s", strerror(-fd));
		for (int i = 0; i < 100; i++) {
			memset(out, 'a' + (i + k) % 26, sizeof(out));
			cr_assert_eq(cli_write_all(fd, out, sizeof(out)), 0);
			cr_assert_eq(cli_read_all(fd, in, sizeof(in)), 0);
			cr_assert_eq(memcmp(in, out, sizeof(in)), 0);
		}
		close(fd);
	}
	cr_assert_eq(srv_stop(&s), 0);
}

Test(net_echo, round_trip_1_shard)
{
	round_trips(1);
}
Test(net_echo, round_trip_2_shards)
{
	round_trips(2);
}
Test(net_echo, round_trip_4_shards)
{
	round_trips(4);
}
