/* SPDX-License-Identifier: MIT */
/* Shared by the libFuzzer harnesses: the entry point's prototype and a check that aborts
 * (libFuzzer keeps the input that made it fail). */
#ifndef KEEL_FUZZ_H
#define KEEL_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                              \
	do {                                                                                  \
		if (!(c)) {                                                                   \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
			abort();                                                              \
		}                                                                             \
	} while (0)

#endif
