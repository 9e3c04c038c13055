// SPDX-License-Identifier: MIT
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
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

/* keel-echo's --port and --max-conns take digits only: an empty --port was port 0 (any free
 * port), and " 7000", "+7000" passed too (a server that started anyway is killed at the
 * deadline, failing the test). */
Test(net_echo, keel_echo_number_options_that_are_not_digits_are_refused)
{
	static const char *const bad[][2] = {
		{ "--port", "" },        { "--port", " 7000" },   { "--port", "+7000" },
		{ "--max-conns", " 5" }, { "--max-conns", "+5" },
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *argv[] = { "keel-echo",       "--addr",          "127.0.0.1",
				 (char *)bad[i][0], (char *)bad[i][1], NULL };
		int st = keel_echo_status(argv);

		cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "%s '%s': status %d", bad[i][0],
			  bad[i][1], st);
	}
}
