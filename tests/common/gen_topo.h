/* SPDX-License-Identifier: MIT */
/*
 * A synthetic hwloc XML file from tests/common/gen_topo.py (whose path the build gives as
 * KEEL_GEN_TOPO), for topologies the real files in ../shared/topologies do not have: more
 * than two NUMA nodes, a NIC on a node past the first of its package, CPUs numbered past
 * KEEL_MAX_CPUS. Include after criterion.
 */
#ifndef KEEL_TEST_GEN_TOPO_H
#define KEEL_TEST_GEN_TOPO_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#ifndef KEEL_GEN_TOPO
#error "KEEL_GEN_TOPO must name tests/common/gen_topo.py"
#endif

/* Write "gen_topo.py @args" to a new file, its path into @path[@len] (the caller unlinks
 * it); skips the test without python3. */
static inline void __attribute__((unused)) gen_topo_xml(const char *args, char *path, size_t len)
{
	static unsigned seq;
	char cmd[1024];
	int r;

	if (system("python3 -c '' >/dev/null 2>&1") != 0)
		cr_skip_test("python3 is needed to write the synthetic topology (%s)", args);
	snprintf(path, len, "/tmp/keel-gen-topo-%d-%u.xml", (int)getpid(), seq++);
	snprintf(cmd, sizeof(cmd), "python3 '%s' %s > %s", KEEL_GEN_TOPO, args, path);
	r = system(cmd);
	cr_assert_eq(r, 0, "%s: status %d", cmd, r);
}

#endif
