// SPDX-License-Identifier: MIT
/*
 * libFuzzer harness for the runtime option parser (keel_opts_parse). The input is split on
 * NUL bytes into an argv (at most 32 arguments). Any argv either parses or fails with a
 * negative errno and a reason; the arguments keel does not take are left in argv, in order,
 * and argc never grows.
 */
#include <errno.h>
#include <keel/opts.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#define MAX_ARGS 32

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *buf = malloc(size + 1), *argv[MAX_ARGS + 2], *orig[MAX_ARGS + 2];
	struct keel_opts o;
	char err[512];
	int argc = 1, argc0, r;
	size_t i = 0;

	CHECK(buf);
	memcpy(buf, data, size);
	buf[size] = '\0';
	argv[0] = "fuzz";
	while (i < size && argc <= MAX_ARGS) {
		argv[argc++] = buf + i;
		i += strlen(buf + i) + 1;
	}
	argv[argc] = NULL;
	argc0 = argc;
	memcpy(orig, argv, sizeof(argv));
	keel_opts_init(&o);
	err[0] = '\0';
	r = keel_opts_parse(&o, &argc, argv, err, sizeof(err));
	CHECK(argc >= 1 && argc <= argc0);
	CHECK(argv[argc] == NULL);
	if (r < 0) {
		CHECK(err[0] != '\0');
	} else {
		/* What is left is a subsequence of the input, in order. */
		int j = 0;
		for (int k = 0; k < argc; k++) {
			while (j < argc0 && orig[j] != argv[k])
				j++;
			CHECK(j < argc0);
			j++;
		}
	}
	free(buf);
	return 0;
}
