// SPDX-License-Identifier: MIT
/*
 * libFuzzer harness for the core/queue map-file parser (keel_map_parse). Any input either
 * parses or fails with -EINVAL and a reason; a document that parses is written back
 * (keel_map_write) and must parse again to the same map (round trip).
 */
#include <errno.h>
#include <keel/topo.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

static void
same_map(const struct keel_map *a, const struct keel_map *b)
{
	CHECK(a->version == b->version);
	CHECK(!strcmp(a->iface, b->iface));
	CHECK(!strcmp(a->pci, b->pci));
	CHECK(a->numa == b->numa && a->rx_queues == b->rx_queues && a->hds == b->hds);
	CHECK(a->smt == b->smt && a->numa_policy == b->numa_policy && a->reserve == b->reserve);
	CHECK(!strcmp(a->source, b->source));
	CHECK(a->nshards == b->nshards);
	for (unsigned i = 0; i < a->nshards; i++)
		CHECK(!memcmp(&a->shards[i], &b->shards[i], sizeof(a->shards[i])));
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct keel_map m, m2;
	char err[512], *text = NULL;
	size_t len = 0;
	FILE *f;
	int r;

	err[0] = '\0';
	r = keel_map_parse((const char *)data, size, &m, err, sizeof(err));
	if (r < 0) {
		CHECK(r == -EINVAL);
		CHECK(err[0] != '\0'); /* a refusal always says why */
		CHECK(memchr(err, '\0', sizeof(err)));
		return 0;
	}
	CHECK(r == 0);
	CHECK(m.nshards <= KEEL_MAX_SHARDS);
	f = open_memstream(&text, &len);
	CHECK(f);
	CHECK(keel_map_write(&m, f) == 0);
	CHECK(fclose(f) == 0);
	r = keel_map_parse(text, len, &m2, err, sizeof(err));
	if (r < 0)
		fprintf(stderr, "round trip refused: %s\n%.*s\n", err, (int)len, text);
	CHECK(r == 0);
	same_map(&m, &m2);
	free(text);
	return 0;
}
