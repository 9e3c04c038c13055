// SPDX-License-Identifier: MIT
/* The hints of a ring's failed submit or io_uring_enter: each errno names its cause and fix;
 * one keel does not expect says so. Before, only EBUSY, EAGAIN and ENOMEM had one, and an
 * enter's line had none at all. */
#include <errno.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../../core/internal.h"

static void
hint_has(int r, const char *what)
{
	const char *h = keel__ring_err_hint(r);

	cr_assert_not_null(h);
	cr_assert(strstr(h, what), "the hint for %s lacks \"%s\": \"%s\"", strerror(-r), what, h);
}

Test(core_ring_err, each_errno_of_a_failed_enter_names_its_fix)
{
	hint_has(-EBUSY, "raise --cq-entries");
	hint_has(-EAGAIN, "memory is short");
	hint_has(-ENOMEM, "memory is short");
	hint_has(-EINVAL, "--feature NAME=on; set it to auto");
	hint_has(-EOPNOTSUPP, "--feature NAME=on; set it to auto");
	hint_has(-EEXIST, "only the shard's own thread may use its ring");
	hint_has(-EOWNERDEAD, "only the shard's own thread may use its ring");
	hint_has(-EBADF, "the host closed a descriptor keel owns");
	hint_has(-EBADFD, "no longer an io_uring");
	hint_has(-EFAULT, "unexpected: the shard goes on and tries again at its next pass");
}
