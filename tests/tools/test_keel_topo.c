// SPDX-License-Identifier: MIT
/* keel-topo end to end: the program is run as a person would run it and its output read. */
#include <keel/keel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#ifndef KEEL_TOPO_BIN
#error "KEEL_TOPO_BIN must name the keel-topo binary"
#endif
#ifndef KEEL_TOPOLOGIES_DIR
#define KEEL_TOPOLOGIES_DIR "../shared/topologies"
#endif

/* Run "keel-topo ARGS" through the shell; stdout (and stderr when @merge) into a buffer. */
static int
run(const char *args, bool merge, char **out)
{
	char cmd[2048];
	size_t cap = 1 << 16, len = 0, n;
	char *buf = malloc(cap);
	FILE *p;
	int st;

	cr_assert_not_null(buf);
	snprintf(cmd, sizeof(cmd), "%s %s%s", KEEL_TOPO_BIN, args, merge ? " 2>&1" : "");
	p = popen(cmd, "r");
	cr_assert_not_null(p, "popen %s", cmd);
	while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
		len += n;
		if (cap - len < 4096) {
			cap *= 2;
			buf = realloc(buf, cap);
			cr_assert_not_null(buf);
		}
	}
	buf[len] = 0;
	st = pclose(p);
	*out = buf;
	cr_assert(WIFEXITED(st), "keel-topo %s did not exit normally", args);
	return WEXITSTATUS(st);
}

static const char *
topo_file(const char *name)
{
	static char path[512];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", KEEL_TOPOLOGIES_DIR, name);
	if (stat(path, &st) < 0)
		cr_skip_test("topology file %s is missing (shared/ must sit beside the repo)",
			     path);
	return path;
}

static void
need_python(void)
{
	if (system("python3 -c 'import json, xml.etree.ElementTree' >/dev/null 2>&1") != 0)
		cr_skip_test("python3 with json and xml.etree is needed to check the output");
}

/* The first non-loopback interface of this machine, or skip. */
static const char *
first_iface(void)
{
	static char name[64];
	FILE *p = popen("ls /sys/class/net | grep -v '^lo$' | head -1", "r");

	cr_assert_not_null(p);
	if (!fgets(name, sizeof(name), p))
		name[0] = 0;
	pclose(p);
	name[strcspn(name, "\n")] = 0;
	if (!name[0])
		cr_skip_test("this machine has no network interface besides lo");
	return name;
}

Test(tools_topo, report_describes_this_machine)
{
	char *out;
	const char *ifn = first_iface();
	int rc = run("", true, &out);

	cr_assert_eq(rc, 0, "%s", out);
	cr_assert(strstr(out, "Topology of this machine"), "%s", out);
	cr_assert(strstr(out, "NUMA node 0"), "%s", out);
	cr_assert(strstr(out, ifn), "interface %s missing:\n%s", ifn, out);
	cr_assert(strstr(out, "irqbalance: "), "%s", out);
	cr_assert(strstr(out, "shard 0"), "%s", out);
	free(out);
}

Test(tools_topo, report_of_the_vm_nic_has_its_queue_and_irq)
{
	char *out;
	struct stat st;

	if (stat("/sys/class/net/eth0/device", &st) < 0)
		cr_skip_test("no eth0 NIC with a device on this machine");
	cr_assert_eq(run("--iface eth0", true, &out), 0);
	cr_assert(strstr(out, "rxq 0"), "%s", out);
	cr_assert(strstr(out, "-> eth0 rxq 0"), "%s", out);
	free(out);
}

Test(tools_topo, xml_32em64t_eight_shards_on_node1)
{
	char args[640], *out, *p;
	unsigned seen = 0;

	snprintf(args, sizeof(args), "--xml %s --iface eth0 --shards 8",
		 topo_file("32em64t-2n8c2t-pci-normalio.xml"));
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	for (unsigned i = 0; i < 8; i++) {
		char want[64];
		snprintf(want, sizeof(want), "-> CPU %-4u (core %u, node 1)", 8 + i, 8 + i);
		cr_assert(strstr(out, want), "missing '%s' in\n%s", want, out);
		seen++;
	}
	cr_assert_eq(seen, 8);
	p = strstr(out, "Map (8 shards for eth0, NUMA node 1");
	cr_assert_not_null(p, "%s", out);
	free(out);
}

Test(tools_topo, json_parses_and_has_the_documented_fields)
{
	char *out;
	FILE *f;
	char path[128], cmd[2048];
	static const char check[] =
		"import json,sys\n"
		"d=json.load(open(sys.argv[1]))\n"
		"for k in ['keel_topo','source','live','host','packages','cores','pus','cpus',\n"
		"          'cpus_allowed','numa_nodes','core_list','nics','irqbalance','map',\n"
		"          'map_error']:\n"
		"    assert k in d, k\n"
		"assert d['keel_topo']==1 and d['live'] is True\n"
		"for n in d['numa_nodes']: assert set(n)=={'node','memory_bytes','cpus'}, n\n"
		"for c in d['core_list']: assert {'core','package','numa_node','pus'}<=set(c), c\n"
		"for n in d['nics']:\n"
		"    for k in ['name','netdev','pci','virtual','vf','driver','numa_node',\n"
		"              'local_cpus','rx_queues','tx_queues','channels','hds','rxq']:\n"
		"        assert k in n, k\n"
		"    assert n['hds'] in ('on','off','unknown')\n"
		"    if n['rx_queues'] is not None: assert len(n['rxq'])==n['rx_queues']\n"
		"m=d['map']\n"
		"assert m['keel_map']==1 and len(m['shards'])>=1\n"
		"for s in m['shards']: assert {'shard','cpu','core','numa_node','rxq','irq_cpu'}==set(s)\n";

	need_python();
	cr_assert_eq(run("--json", false, &out), 0, "%s", out);
	snprintf(path, sizeof(path), "/tmp/keel-topo-test-%d.json", (int)getpid());
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs(out, f);
	fclose(f);
	snprintf(cmd, sizeof(cmd), "python3 - %s <<'EOF'\n%sEOF\n", path, check);
	cr_assert_eq(system(cmd), 0, "JSON check failed on:\n%s", out);
	unlink(path);
	free(out);
}

Test(tools_topo, svg_is_well_formed_and_labels_the_shards)
{
	char args[1024], path[128], cmd[1024], *out;

	need_python();
	snprintf(path, sizeof(path), "/tmp/keel-topo-test-%d.svg", (int)getpid());
	snprintf(args, sizeof(args), "--xml %s --iface eth0 --shards 8 --queues 8 --svg %s",
		 topo_file("32em64t-2n8c2t-pci-normalio.xml"), path);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd),
		 "python3 -c \"import sys,xml.etree.ElementTree as E; r=E.parse(sys.argv[1])"
		 ".getroot(); t=[x.text for x in r.iter('{http://www.w3.org/2000/svg}text')]; "
		 "assert r.tag.endswith('svg'); assert all('S%%d'%%i in t for i in range(8)), t; "
		 "assert 'rxq 7' in t, t\" %s",
		 path);
	cr_assert_eq(system(cmd), 0, "SVG check failed for %s", path);
	/* the live machine's picture too */
	snprintf(args, sizeof(args), "--svg %s", path);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd),
		 "python3 -c \"import sys,xml.etree.ElementTree as E; E.parse(sys.argv[1])\" %s",
		 path);
	cr_assert_eq(system(cmd), 0, "live SVG is not well-formed");
	unlink(path);
}

Test(tools_topo, plan_writes_the_map_and_prints_the_commands)
{
	char args[1024], path[128], *out;
	struct keel_map *m = malloc(sizeof(*m));
	char err[512];

	snprintf(path, sizeof(path), "/tmp/keel-topo-test-%d.map.json", (int)getpid());
	snprintf(args, sizeof(args),
		 "--xml %s --iface eth0 --shards 8 --hds --port 9000 --plan --map %s",
		 topo_file("32em64t-2n8c2t-pci-normalio.xml"), path);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert(strstr(out, "ethtool -L eth0 combined 8\n"), "%s", out);
	cr_assert(strstr(out, "ethtool -G eth0 tcp-data-split on\n"), "%s", out);
	cr_assert(strstr(out, "ethtool -G eth0 hds-thresh 0\n"), "%s", out);
	cr_assert(strstr(out, "ethtool -X eth0 equal 8\n"), "%s", out);
	cr_assert(strstr(out, "ethtool -K eth0 ntuple on\n"), "%s", out);
	cr_assert(strstr(out, "dst-port 9000"), "%s", out);
	cr_assert(strstr(out, "systemctl stop irqbalance\n"), "%s", out);
	cr_assert(strstr(out, "rx queue 7 to CPU 15"), "%s", out);
	cr_assert_not_null(m);
	cr_assert_eq(keel_map_load(path, m, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(m->nshards, 8);
	cr_assert_eq(m->shards[7].cpu, 15);
	cr_assert(m->hds);
	cr_assert_str_eq(m->iface, "eth0");
	free(m);
	free(out);
	unlink(path);
	/* --apply only with --plan */
	cr_assert_eq(run("--apply", true, &out), 2, "%s", out);
	cr_assert(strstr(out, "give --plan too"), "%s", out);
	free(out);
}

Test(tools_topo, check_detects_a_map_asking_for_more_queues_than_exist)
{
	char args[256], path[128], *out;
	const char *ifn = first_iface();
	FILE *f;

	snprintf(path, sizeof(path), "/tmp/keel-topo-test-%d.check.json", (int)getpid());
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fprintf(f,
		"{\"keel_map\": 1, \"iface\": \"%s\", \"rx_queues\": 64, \"shards\": "
		"[{\"shard\": 0, \"cpu\": 0, \"rxq\": 63, \"irq_cpu\": 0}]}\n",
		ifn);
	fclose(f);
	snprintf(args, sizeof(args), "--check --map %s", path);
	cr_assert_eq(run(args, false, &out), 1, "%s", out);
	cr_assert(strstr(out, "the map needs 64"), "%s", out);
	cr_assert(strstr(out, "ethtool -L"), "%s", out);
	free(out);
	unlink(path);
}

Test(tools_topo, check_passes_when_the_machine_matches)
{
	char args[256], path[128], *out;
	FILE *f;

	/* A map without NIC on CPU 0: nothing on the machine can disagree with it. */
	snprintf(path, sizeof(path), "/tmp/keel-topo-test-%d.ok.json", (int)getpid());
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fprintf(f, "{\"keel_map\": 1, \"iface\": null, \"rx_queues\": 0, \"shards\": "
		   "[{\"shard\": 0, \"cpu\": 0, \"rxq\": null}]}\n");
	fclose(f);
	snprintf(args, sizeof(args), "--check --map %s", path);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert(strstr(out, "matches"), "%s", out);
	free(out);
	unlink(path);
}

Test(tools_topo, impossible_requests_fail_with_the_fix)
{
	char args[640], *out;
	const char *xml = topo_file("24em64t-2n6c2t-pci.xml");

	snprintf(args, sizeof(args), "--xml %s --iface eth7", xml);
	cr_assert_eq(run(args, true, &out), 2, "%s", out);
	cr_assert(strstr(out, "no interface 'eth7'") && strstr(out, "eth0, eth1"), "%s", out);
	free(out);
	snprintf(args, sizeof(args), "--xml %s --iface eth0 --shards 13", xml);
	cr_assert_eq(run(args, true, &out), 2, "%s", out);
	cr_assert(strstr(out, "--oversubscribe"), "%s", out);
	free(out);
	snprintf(args, sizeof(args), "--xml %s --queues 2 --rxqs eth0:0-2", xml);
	cr_assert_eq(run(args, true, &out), 2, "%s", out);
	cr_assert(strstr(out, "rx queue 2 of eth0 does not exist"), "%s", out);
	free(out);
	cr_assert_eq(run("--smt sometimes", true, &out), 2, "%s", out);
	cr_assert(strstr(out, "not avoid or allow"), "%s", out);
	free(out);
	cr_assert_eq(run("--check --xml /x.xml", true, &out), 2, "%s", out);
	free(out);
}

Test(tools_topo, synthetic_four_nodes_without_nics)
{
	char *out;

	cr_assert_eq(run("--synthetic 'numa:4 core:2 pu:2'", true, &out), 0, "%s", out);
	cr_assert(strstr(out, "NUMA node 3"), "%s", out);
	cr_assert(strstr(out, "NICs:\n  none"), "%s", out);
	cr_assert(strstr(out, "Map (8 shards"), "%s", out);
	cr_assert(strstr(out, "-> no rx queue"), "%s", out);
	free(out);
}

Test(tools_topo, caps_prints_the_feature_decisions)
{
	char *out;

	cr_assert_eq(run("--caps --feature defer_taskrun=off", true, &out), 0, "%s", out);
	cr_assert(strstr(out, "kernel "), "%s", out);
	cr_assert(strstr(out, "defer_taskrun    off"), "%s", out);
	free(out);
}
