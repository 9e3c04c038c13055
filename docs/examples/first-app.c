// SPDX-License-Identifier: MIT
/* A first keel app: shard 0 asks every shard to say hello, then stops the runtime. */
#include <keel/keel.h>
#include <stdio.h>

static unsigned replies; /* only shard 0 touches it: no lock */

static int
hello(void *arg)
{
	struct keel_shard *sh = keel_this_shard();
	printf("hello from shard %u on CPU %d\n", keel_shard_id(sh), keel_shard_cpu(sh));
	return 0;
}

static void
replied(int status, void *arg)
{
	if (++replies == keel_shard_count(keel_this_shard()))
		keel_stop(0);
}

static void
on_start(void *app)
{
	struct keel_shard *sh = keel_this_shard();
	for (unsigned i = 0; keel_shard_id(sh) == 0 && i < keel_shard_count(sh); i++)
		keel_call(i, hello, NULL, replied, NULL);
}

int
main(int argc, char **argv)
{
	struct keel_opts opts;
	keel_opts_init(&opts);
	keel_opts_parse_or_exit(&opts, &argc, argv, "usage: first-app [runtime options]\n");
	if (argc > 1) { /* left to the program: it takes none, so a typo ("--shard") is one */
		fprintf(stderr, "first-app: unknown argument %s (--help lists the options)\n",
			argv[1]);
		return 2;
	}
	return keel_run(&opts, on_start, NULL) == 0 ? 0 : 1;
}
