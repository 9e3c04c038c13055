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

#include "gen_topo.h"
#include "wait.h"

#ifndef KEEL_TOPO_BIN
#error "KEEL_TOPO_BIN must name the keel-topo binary"
#endif
#ifndef KEEL_TOPOLOGIES_DIR
#define KEEL_TOPOLOGIES_DIR "../shared/topologies"
#endif

/* Run "keel-topo ARGS" through the shell; stdout (and stderr when @merge) into a buffer.
 * The run ends within TEST_WAIT_MS (wait.h) or the test fails naming the command. */
static int
run(const char *args, bool merge, char **out)
{
	char cmd[2048];
	size_t cap = 4 << 20;
	char *buf = malloc(cap);
	int pfd[2], st;
	pid_t pid;

	cr_assert_not_null(buf);
	snprintf(cmd, sizeof(cmd), "'%s' %s%s", KEEL_TOPO_BIN, args, merge ? " 2>&1" : "");
	cr_assert_eq(pipe(pfd), 0);
	pid = fork();
	cr_assert_geq(pid, 0, "fork for %s", cmd);
	if (pid == 0) {
		dup2(pfd[1], 1);
		close(pfd[0]);
		close(pfd[1]);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	st = wait_child_output(pid, pfd[0], buf, cap, TEST_WAIT_MS, cmd);
	close(pfd[0]);
	cr_assert_lt(strlen(buf), cap - 1, "keel-topo %s: more output than the %zu-byte buffer",
		     args, cap);
	*out = buf;
	cr_assert(WIFEXITED(st), "keel-topo %s did not exit normally", args);
	return WEXITSTATUS(st);
}

/* Topology file @name's path, in single quotes: every use is a word of a shell command
 * (run, system), and the checkout's path may hold a space. */
static const char *
topo_file(const char *name)
{
	static char path[512], quoted[520];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", KEEL_TOPOLOGIES_DIR, name);
	if (stat(path, &st) < 0)
		cr_skip_test("topology file %s is missing (shared/ must sit beside the repo)",
			     path);
	snprintf(quoted, sizeof(quoted), "'%s'", path);
	return quoted;
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

/* The whole of file @path, with @room zero bytes after it (for an edit in place). */
static char *
file_text(const char *path, size_t room)
{
	FILE *f = fopen(path, "r");
	char *text;
	long n;

	cr_assert_not_null(f, "%s", path);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	rewind(f);
	text = calloc(1, (size_t)n + room);
	cr_assert_not_null(text);
	cr_assert_eq(fread(text, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	return text;
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

/* The IRQ of eth0's rx queue 0 and its name, found independently of keel (the virtio
 * "-input.0" vector in /proc/interrupts), or skip. */
static int
vm_rxq0_irq(char *name, size_t len)
{
	FILE *p = popen("awk '/virtio[0-9]+-input\\.0$/ {sub(\":\",\"\",$1); print $1, $NF; exit}' "
			"/proc/interrupts",
			"r");
	int irq = -1;
	char nm[64];

	cr_assert_not_null(p);
	if (fscanf(p, "%d %63s", &irq, nm) != 2)
		irq = -1;
	pclose(p);
	if (irq < 0)
		cr_skip_test("eth0 is not a virtio NIC with an input.0 vector");
	snprintf(name, len, "%s", nm);
	return irq;
}

Test(tools_topo, report_of_the_vm_nic_has_its_queue_and_irq)
{
	char *out;
	struct stat st;

	if (stat("/sys/class/net/eth0/device", &st) < 0)
		cr_skip_test("no eth0 NIC with a device on this machine");
	cr_assert_eq(run("--iface eth0", true, &out), 0);
	cr_assert(strstr(out, "-> eth0 rxq 0"), "%s", out);
	/* the queue's IRQ and its name, as /sys/kernel/irq and /proc/interrupts give them */
	{
		char want[160], name[64] = "";
		int irq = vm_rxq0_irq(name, sizeof(name));
		snprintf(want, sizeof(want), "rxq 0   IRQ %-4d %-24s -> CPU ", irq, name);
		cr_assert(strstr(out, want), "missing '%s' in\n%s", want, out);
	}
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
		"assert d['keel_topo']==1 and d['live'] is (sys.argv[2]=='live')\n"
		"for n in d['numa_nodes']: assert set(n)=={'node','memory_bytes','cpus','memory_only','memory_allowed'}, n\n"
		"for c in d['core_list']: assert set(c)=={'core','package','numa_node','pus',\n"
		"    'l2_bytes','l3_bytes'}, c\n"
		"for n in d['nics']:\n"
		"    assert set(n)=={'name','netdev','pci','virtual','lower','vf','model','driver',\n"
		"        'numa_node','local_cpus','rx_queues','tx_queues','channels','rx_ring',\n"
		"        'hds','hds_thresh','irqs','rxq','local_cpus_beyond_limit'}, set(n)\n"
		"    assert isinstance(n['local_cpus_beyond_limit'], bool)\n"
		"    assert isinstance(n['lower'], list) and all(isinstance(x, str) for x in n['lower'])\n"
		"    assert set(n['channels'])=={'rx','tx','combined','max_rx','max_tx',\n"
		"        'max_combined'}, n['channels']\n"
		"    assert n['hds'] in ('on','off','unknown')\n"
		"    assert n['model'] is None or n['model'], n\n"
		"    assert n['driver'] is None or n['driver'], n\n"
		"    assert isinstance(n['irqs'], bool)\n"
		"    for q in n['rxq']: assert set(q)=={'queue','irq','irq_name','affinity',\n"
		"        'affinity_beyond_limit','irq_shared'}, q\n"
		"    for q in n['rxq']: assert q['irq_shared'] is (q['irq'] is not None and\n"
		"        sum(r['irq']==q['irq'] for r in n['rxq'])>1), q\n"
		"    if not d['live']:\n"
		"        assert n['rx_ring'] is None and n['hds_thresh'] is None, n\n"
		"        assert all(v is None for v in n['channels'].values()), n\n"
		"        assert n['driver'] is None, n\n"
		"    if n['rx_queues'] is not None: assert len(n['rxq'])==n['rx_queues']\n"
		"m=d['map']\n"
		"assert m['keel_map']==1 and len(m['shards'])>=1\n"
		"for s in m['shards']: assert {'shard','cpu','core','numa_node','rxq','irq_cpu'}==set(s)\n";

	need_python();
	for (int live = 1; live >= 0; live--) {
		char args[640];
		snprintf(args, sizeof(args), "--xml %s --iface eth0 --queues 4 --json",
			 topo_file("32em64t-2n8c2t-pci-normalio.xml"));
		cr_assert_eq(run(live ? "--json" : args, false, &out), 0, "%s", out);
		snprintf(path, sizeof(path), "/tmp/keel-topo-test-%d.json", (int)getpid());
		f = fopen(path, "w");
		cr_assert_not_null(f);
		fputs(out, f);
		fclose(f);
		snprintf(cmd, sizeof(cmd), "python3 - %s %s <<'EOF'\n%sEOF\n", path,
			 live ? "live" : "offline", check);
		cr_assert_eq(system(cmd), 0, "JSON check failed on:\n%s", out);
		unlink(path);
		free(out);
	}
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
	/* Every queue a ZCRX queue: no RSS table can keep other flows off them ("equal 8"
	 * before, which sent every flow into the areas). */
	cr_assert(!strstr(out, "ethtool -X eth0 equal"), "%s", out);
	cr_assert(strstr(out, "needs queues the shards do not own"), "%s", out);
	/* --apply would run another machine's plan here: refused before anything runs. */
	{
		char a2[1100], *o2;
		snprintf(a2, sizeof(a2), "%s --apply", args);
		cr_assert_eq(run(a2, true, &o2), 2, "%s", o2);
		cr_assert(strstr(o2, "--apply changes this machine"), "%s", o2);
		free(o2);
	}
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
	/* The shards on the last queues: RSS takes every flow to the others, and the service
	 * port alone reaches the shards' through a context over them. */
	snprintf(args, sizeof(args),
		 "--xml %s --iface eth0 --queues 8 --rxqs eth0:4-7 --hds --port 9000 --plan "
		 "--map %s",
		 topo_file("32em64t-2n8c2t-pci-normalio.xml"), path);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert(strstr(out, "ethtool -X eth0 weight 1 1 1 1 0 0 0 0\n"), "%s", out);
	cr_assert(strstr(out, "context new start 4 equal 4"), "%s", out);
	cr_assert(strstr(out, "dst-port 9000 context"), "%s", out);
	free(out);
	unlink(path);
	/* --apply only with --plan */
	cr_assert_eq(run("--apply", true, &out), 2, "%s", out);
	cr_assert(strstr(out, "give --plan too"), "%s", out);
	free(out);
	/* --port only with --plan, --svg not with --check: each was ignored without a word */
	cr_assert_eq(run("--port 9000", true, &out), 2, "%s", out);
	cr_assert(strstr(out, "--port") && strstr(out, "give --plan too"), "%s", out);
	free(out);
	cr_assert_eq(run("--check --svg /tmp/keel-topo-never.svg", true, &out), 2, "%s", out);
	cr_assert(strstr(out, "--svg") && strstr(out, "without --check"), "%s", out);
	cr_assert_neq(access("/tmp/keel-topo-never.svg", F_OK), 0);
	free(out);
	/* --svg with --caps wrote nothing and exited 0; --feature without --caps did nothing */
	cr_assert_eq(run("--caps --svg /tmp/keel-topo-never.svg", true, &out), 2, "%s", out);
	cr_assert(strstr(out, "--svg") && strstr(out, "--caps"), "%s", out);
	cr_assert_neq(access("/tmp/keel-topo-never.svg", F_OK), 0);
	free(out);
	cr_assert_eq(run("--feature send_zc=off", true, &out), 2, "%s", out);
	cr_assert(strstr(out, "--feature") && strstr(out, "give --caps too"), "%s", out);
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

/* A map of one shard on @cpu, without NIC, into @path. */
static void
write_map_without_nic(const char *path, int cpu)
{
	FILE *f = fopen(path, "w");

	cr_assert_not_null(f);
	fprintf(f,
		"{\"keel_map\": 1, \"iface\": null, \"rx_queues\": 0, \"shards\": "
		"[{\"shard\": 0, \"cpu\": %d, \"rxq\": null}]}\n",
		cpu);
	fclose(f);
}

/* The report, --json and --svg show a map file as written; one this machine no longer
 * matches (here a CPU it does not have) is said to be stale on stderr, with what --check
 * lists. Before, the report showed CPU 1023 "(core ?, node ?)" without a word. A map that
 * matches gets no warning. */
Test(tools_topo, a_stale_map_shown_in_the_report_is_said_to_be_stale)
{
	char args[512], path[128], svg[160], *out;

	snprintf(path, sizeof(path), "/tmp/keel-topo-test-%d.stale.json", (int)getpid());
	snprintf(svg, sizeof(svg), "/tmp/keel-topo-test-%d.stale.svg", (int)getpid());
	write_map_without_nic(path, 1023);
	for (unsigned i = 0; i < 3; i++) {
		snprintf(args, sizeof(args), "--map %s%s%s", path,
			 i == 0   ? ""
			 : i == 1 ? " --json"
				  : " --svg ",
			 i == 2 ? svg : "");
		cr_assert_eq(run(args, true, &out), 0, "%s", out);
		cr_assert(strstr(out, "does not match this machine") &&
				  strstr(out, "CPU 1023 does not exist"),
			  "keel-topo %s: %s", args, out);
		free(out);
	}
	unlink(svg);
	write_map_without_nic(path, 0);
	snprintf(args, sizeof(args), "--map %s", path);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert_null(strstr(out, "does not match"), "%s", out);
	free(out);
	unlink(path);
}

Test(tools_topo, check_passes_when_the_machine_matches)
{
	char args[256], path[128], *out;

	/* A map without NIC on CPU 0: nothing on the machine can disagree with it. */
	snprintf(path, sizeof(path), "/tmp/keel-topo-test-%d.ok.json", (int)getpid());
	write_map_without_nic(path, 0);
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
	/* A PCI function with two interfaces (a ConnectX-2 VPI: eth2 and ib0): its bus id
	 * names neither. The plan was made for the first one found, unsaid, where the
	 * runtime refuses the same --iface. */
	for (int i = 0; i < 2; i++) {
		snprintf(args, sizeof(args), "--xml %s --iface %s --queues 4", xml,
			 i ? "05:00.0" : "0000:05:00.0");
		cr_assert_eq(run(args, true, &out), 2, "%s", out);
		cr_assert(strstr(out, "more than one network interface") && strstr(out, "eth2") &&
				  strstr(out, "ib0"),
			  "%s", out);
		free(out);
	}
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

/* A --reserve that takes every core local to the NIC does not move the map to another NUMA
 * node without a word, with --rxqs too (it did: both shards on node 1, the NIC on node 0);
 * --shards places them off the node on purpose. */
Test(tools_topo, a_reserve_of_every_local_core_is_refused_with_rxqs_too)
{
	char args[640], *out;
	const char *xml = topo_file("24em64t-2n6c2t-pci.xml");

	snprintf(args, sizeof(args), "--xml %s --queues 8 --reserve 6 --rxqs eth0:0-1", xml);
	cr_assert_eq(run(args, true, &out), 2, "%s", out);
	cr_assert(strstr(out, "--reserve 6 takes every core local to eth0"), "%s", out);
	free(out);
	snprintf(args, sizeof(args), "--xml %s --queues 8 --reserve 6 --rxqs eth0:0-1 --shards 2",
		 xml);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert(strstr(out, "shard 1   -> CPU 3"), "%s", out);
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
	/* The capability matrix names each kernel capability with its answer here. */
	cr_assert(strstr(out, "capability             here since"), "%s", out);
	cr_assert(strstr(out, "MSG_RING               yes"), "%s", out);
	cr_assert(strstr(out, "SEND_ZC                yes"), "%s", out);
	cr_assert(strstr(out, "RECV_ZC opcode (ZCRX)"), "%s", out);
	free(out);
}

/* Write @doc to a temporary map file; returns its path. */
static const char *
map_file(const char *tag, const char *doc)
{
	static char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "/tmp/keel-topo-test-%d.%s.json", (int)getpid(), tag);
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs(doc, f);
	fclose(f);
	return path;
}

static void
need_vm_eth0(void)
{
	struct stat st;
	char name[64];

	if (stat("/sys/class/net/eth0/device", &st) < 0)
		cr_skip_test("no eth0 NIC with a device on this machine");
	vm_rxq0_irq(name, sizeof(name));
}

Test(tools_topo, check_reports_an_irq_on_the_wrong_cpu_and_hds_off)
{
	char args[256], name[64], want[160], *out;
	const char *path;
	int irq;

	need_vm_eth0();
	irq = vm_rxq0_irq(name, sizeof(name));
	/* The map wants the IRQ on CPU 0 and needs header/data split, which virtio lacks. */
	path = map_file("irq", "{\"keel_map\": 1, \"iface\": \"eth0\", \"rx_queues\": 1, \"hds\": "
			       "true, \"shards\": [{\"shard\": 0, \"cpu\": 0, \"rxq\": 0, "
			       "\"irq_cpu\": 0}]}\n");
	{
		char aff[64] = "", p2[64];
		FILE *f;
		snprintf(p2, sizeof(p2), "/proc/irq/%d/smp_affinity_list", irq);
		f = fopen(p2, "r");
		cr_assert_not_null(f);
		cr_assert_not_null(fgets(aff, sizeof(aff), f));
		fclose(f);
		if (!strcmp(aff, "0\n"))
			cr_skip_test("IRQ %d already points at CPU 0 only", irq);
	}
	snprintf(args, sizeof(args), "--check --map %s", path);
	cr_assert_eq(run(args, false, &out), 1, "%s", out);
	snprintf(want, sizeof(want), "IRQ %d (%s) points at CPU", irq, name);
	cr_assert(strstr(out, want), "missing '%s' in\n%s", want, out);
	snprintf(want, sizeof(want), "echo 0 > /proc/irq/%d/smp_affinity_list", irq);
	cr_assert(strstr(out, want), "%s", out);
	cr_assert(strstr(out, "cannot do header/data split"), "%s", out);
	/* one line per mismatch */
	{
		unsigned lines = 0;
		for (const char *p = out; *p; p++)
			lines += *p == '\n';
		cr_assert_eq(lines, 2, "%s", out);
	}
	free(out);
	unlink(path);
}

Test(tools_topo, check_passes_with_a_nic_map_that_matches)
{
	char args[256], *out;
	const char *path;

	/* eth0 with its one queue and no IRQ CPU demand: nothing can disagree */
	need_vm_eth0();
	path = map_file("nicok", "{\"keel_map\": 1, \"iface\": \"eth0\", \"rx_queues\": 1, "
				 "\"shards\": [{\"shard\": 0, \"cpu\": 0, \"rxq\": 0}]}\n");
	snprintf(args, sizeof(args), "--check --map %s", path);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert(strstr(out, "this machine matches the map (1 shard on eth0)"), "%s", out);
	free(out);
	unlink(path);
}

Test(tools_topo, more_shards_than_the_vm_nic_has_queues_is_an_error)
{
	char *out;

	need_vm_eth0();
	/* keel-topo's own report says what the driver allows (ethtool may not be installed) */
	cr_assert_eq(run("--iface eth0", true, &out), 0, "%s", out);
	if (!strstr(out, "channels combined 1/1 rx 0/0"))
		cr_skip_test("eth0's channel maximum is not 1 combined: %s", out);
	free(out);
	cr_assert_eq(run("--shards 2", true, &out), 2, "%s", out);
	cr_assert(strstr(out, "eth0 has at most 1 rx queue (the driver's channel maximum)"), "%s",
		  out);
	cr_assert(!strstr(out, "ethtool -L eth0 combined 2"), "%s", out);
	free(out);
	cr_assert_eq(run("--shards 2 --no-rxq-for-extra --cpuset 0-1", true, &out), 0, "%s", out);
	cr_assert(strstr(out, "-> no rx queue"), "%s", out);
	free(out);
}

Test(tools_topo, plan_quotes_names_and_apply_runs_no_shell)
{
	char xml[256], cmd[1024], args[640], *out;
	const char *src = topo_file("24em64t-2n6c2t-pci.xml");

	/* An interface name a shell would run: it must come out as one quoted word. */
	snprintf(xml, sizeof(xml), "/tmp/keel-topo-test-%d.evil.xml", (int)getpid());
	snprintf(cmd, sizeof(cmd),
		 "sed 's/name=\"eth0\"/name=\"e;$(touch \\/tmp\\/keel-pwned)'\"'\"'x\"/' %s > %s",
		 src, xml);
	cr_assert_eq(system(cmd), 0);
	snprintf(args, sizeof(args),
		 "--xml %s --queues 2 --shards 2 --plan --map /tmp/keel-topo-test-%d.evil.map "
		 "--iface \"e;\\$(touch /tmp/keel-pwned)'x\"",
		 xml, (int)getpid());
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert(strstr(out, "ethtool -L 'e;$(touch /tmp/keel-pwned)'\\''x' combined 2\n"), "%s",
		  out);
	cr_assert(strstr(out, "ethtool -X 'e;$(touch /tmp/keel-pwned)'\\''x' equal 2\n"), "%s",
		  out);
	free(out);
	snprintf(cmd, sizeof(cmd), "/tmp/keel-topo-test-%d.evil.map", (int)getpid());
	unlink(cmd);
	unlink(xml);
}

Test(tools_topo, plan_steers_a_port_to_non_contiguous_rxqs)
{
	char args[640], *out;
	const char *xml = topo_file("32em64t-2n8c2t-pci-normalio.xml");

	snprintf(args, sizeof(args),
		 "--xml %s --queues 8 --rxqs eth0:4-7 --port 80 --plan --map /tmp/keel-topo-test-%d"
		 ".port.map",
		 xml, (int)getpid());
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert(strstr(out, "ethtool -X eth0 weight 0 0 0 0 1 1 1 1\n"), "%s", out);
	cr_assert(strstr(out, "ethtool -X eth0 context new start 4 equal 4 |"), "%s", out);
	cr_assert(!strstr(out, "start 0"), "%s", out);
	cr_assert(strstr(out, "ethtool -N eth0 flow-type tcp4 dst-port 80 context \"$ctx\"\n"),
		  "%s", out);
	free(out);
	snprintf(args, sizeof(args),
		 "--xml %s --queues 8 --rxqs eth0:6,1,3 --port 80 --plan --map "
		 "/tmp/keel-topo-test-%d.port.map",
		 xml, (int)getpid());
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert(strstr(out, "ethtool -X eth0 context new weight 0 1 0 1 0 0 1 |"), "%s", out);
	cr_assert(strstr(out, "rx queue 6 to CPU 8"), "shard 0 owns queue 6: %s", out);
	free(out);
	snprintf(args, sizeof(args), "/tmp/keel-topo-test-%d.port.map", (int)getpid());
	unlink(args);
}

/* --plan --map FILE of a map that exists, with no option shaping another, plans that map
 * as it is: it wrote a default map over it, losing a hand edit (or an offline plan's
 * options), and printed the new map's commands. Map options still plan (and write) a new
 * one. */
Test(tools_topo, plan_of_an_existing_map_keeps_it)
{
	char args[1024], path[128], *out, *text;
	const char *xml = topo_file("32em64t-2n8c2t-pci-normalio.xml");
	FILE *f;

	snprintf(path, sizeof(path), "/tmp/keel-topo-test-%d.kept.map", (int)getpid());
	snprintf(args, sizeof(args), "--xml %s --queues 2 --iface eth0 --plan --map %s", xml, path);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	free(out);
	/* A hand edit: shard 1 to CPU 14 (on the NIC's node, as the planned CPUs are). */
	text = file_text(path, 16);
	{
		char *at = strstr(text, "\"shard\": 1, \"cpu\": ");
		cr_assert_not_null(at, "%s", text);
		at += strlen("\"shard\": 1, \"cpu\": ");
		cr_assert(at[0] != '1' || at[1] != '4', "%s", text); /* it changes */
		memmove(at + 2, at + strcspn(at, ","), strlen(at + strcspn(at, ",")) + 1);
		at[0] = '1';
		at[1] = '4';
		/* ... and its queue's IRQ with it, which the plan pins */
		at = strstr(at, "\"irq_cpu\": ");
		cr_assert_not_null(at, "%s", text);
		at += strlen("\"irq_cpu\": ");
		memmove(at + 2, at + strcspn(at, " ,}"), strlen(at + strcspn(at, " ,}")) + 1);
		at[0] = '1';
		at[1] = '4';
	}
	f = fopen(path, "w");
	cr_assert_not_null(f);
	fputs(text, f);
	fclose(f);
	snprintf(args, sizeof(args), "--xml %s --queues 2 --plan --map %s", xml, path);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert(strstr(out, "the map in") && strstr(out, "as it is"), "%s", out);
	cr_assert(strstr(out, "eth0 rx queue 1 to CPU 14"), "the commands of the edited map: %s",
		  out);
	free(out);
	f = fopen(path, "r");
	cr_assert_not_null(f);
	{
		char back[8192];
		size_t got = fread(back, 1, sizeof(back) - 1, f);
		back[got] = 0;
		cr_assert_str_eq(back, text, "the map file was rewritten");
	}
	fclose(f);
	/* Flags given off are no map options: the edited map is still kept as it is. */
	snprintf(args, sizeof(args),
		 "--xml %s --queues 2 --plan --map %s --hds=off --oversubscribe=off "
		 "--no-rxq-for-extra=off",
		 xml, path);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert(strstr(out, "the map in") && strstr(out, "as it is") &&
			  strstr(out, "eth0 rx queue 1 to CPU 14"),
		  "flags given off planned a new map: %s", out);
	free(out);
	/* Map options plan a new one, written over it. */
	snprintf(args, sizeof(args), "--xml %s --queues 2 --iface eth0 --plan --map %s", xml, path);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert(strstr(out, "wrote"), "%s", out);
	free(out);
	free(text);
	unlink(path);
}

Test(tools_topo, plan_for_a_vf_says_to_bind_a_driver)
{
	char args[640], *out;

	snprintf(args, sizeof(args),
		 "--xml %s --iface 88:00.1 --plan --map /tmp/keel-topo-test-%d.vf.map",
		 topo_file("16intel64-manyVFs.xml"), (int)getpid());
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert(strstr(out, "has no network interface: bind a network driver"), "%s", out);
	cr_assert(!strstr(out, "the map has no NIC"), "%s", out);
	free(out);
	snprintf(args, sizeof(args), "/tmp/keel-topo-test-%d.vf.map", (int)getpid());
	unlink(args);
}

/* --map FILE (without --plan) reads the map: options that would compute one are refused
 * (exit 2, naming the option), not silently dropped. */
Test(tools_topo, map_file_refuses_the_options_that_would_compute_a_map)
{
	static const char *const opts[] = { "--iface eth1",  "--shards 4",   "--cpuset 0",
					    "--rxqs eth1:0", "--hds",        "--reserve 1",
					    "--smt allow",   "--numa spread" };
	char args[512], *out;
	const char *path = map_file("given", "{\"keel_map\": 1, \"iface\": null, \"rx_queues\": "
					     "0, \"shards\": [{\"shard\": 0, \"cpu\": 0, \"rxq\": "
					     "null}]}\n");

	snprintf(args, sizeof(args), "--check --map %s --iface eth1 --shards 4", path);
	cr_assert_eq(run(args, true, &out), 2, "%s", out);
	cr_assert(strstr(out, "--map") && strstr(out, "decides the map") &&
			  strstr(out, "drop --iface, --shards"),
		  "%s", out);
	free(out);
	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		char name[32];
		snprintf(name, sizeof(name), "drop %.*s", (int)strcspn(opts[i], " "), opts[i]);
		/* the report reads the map too */
		snprintf(args, sizeof(args), "--map %s %s", path, opts[i]);
		cr_assert_eq(run(args, true, &out), 2, "%s: %s", args, out);
		cr_assert(strstr(out, name), "%s: %s", args, out);
		free(out);
	}
	/* A flag given off (or on, then off) changes nothing: not refused. */
	snprintf(args, sizeof(args),
		 "--map %s --hds=off --oversubscribe --oversubscribe=off --no-rxq-for-extra=off",
		 path);
	cr_assert_eq(run(args, true, &out), 0, "%s: %s", args, out);
	free(out);
	/* --plan computes the map and writes it to FILE: the options are what it is made of */
	snprintf(args, sizeof(args), "--synthetic 'core:2 pu:1' --shards 1 --plan --map %s", path);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	free(out);
	unlink(path);
}

Test(tools_topo, map_file_drives_the_report_json_and_svg)
{
	char args[512], svg[128], *out;
	const char *path;

	if (sysconf(_SC_NPROCESSORS_ONLN) < 2)
		cr_skip_test("needs CPU 1");
	path = map_file("show", "{\"keel_map\": 1, \"iface\": null, \"rx_queues\": 0, \"shards\": "
				"[{\"shard\": 0, \"cpu\": 1, \"rxq\": null}]}\n");
	snprintf(args, sizeof(args), "--map %s", path);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert(strstr(out, "Map (1 shard;"), "%s", out);
	cr_assert(strstr(out, "shard 0   -> CPU 1 "), "%s", out);
	free(out);
	snprintf(args, sizeof(args), "--map %s --json", path);
	cr_assert_eq(run(args, false, &out), 0, "%s", out);
	cr_assert(strstr(out, "\"cpu\": 1,"), "%s", out);
	free(out);
	unlink(path);
	/* --plan --svg writes the picture too */
	snprintf(svg, sizeof(svg), "/tmp/keel-topo-test-%d.plan.svg", (int)getpid());
	unlink(svg);
	snprintf(args, sizeof(args),
		 "--synthetic 'core:2 pu:1' --plan --svg %s --map /tmp/keel-topo-test-%d.p.map",
		 svg, (int)getpid());
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	free(out);
	cr_assert_eq(access(svg, R_OK), 0, "--plan --svg wrote no %s", svg);
	unlink(svg);
	snprintf(args, sizeof(args), "/tmp/keel-topo-test-%d.p.map", (int)getpid());
	unlink(args);
}

Test(tools_topo, empty_sources_live_queues_and_caps_with_a_file_are_errors)
{
	char *out;

	cr_assert_eq(run("--synthetic ''", true, &out), 2, "%s", out);
	cr_assert(strstr(out, "--synthetic needs a value"), "%s", out);
	free(out);
	cr_assert_eq(run("--xml ''", true, &out), 2, "%s", out);
	cr_assert(strstr(out, "--xml needs a value"), "%s", out);
	free(out);
	cr_assert_eq(run("--queues 2", true, &out), 2, "%s", out);
	cr_assert(strstr(out, "drop --queues"), "%s", out);
	free(out);
	cr_assert_eq(run("--caps --xml /x.xml", true, &out), 2, "%s", out);
	cr_assert(strstr(out, "--caps describes this machine's kernel"), "%s", out);
	free(out);
}

/* keel-topo reads its options by keel's rules (keel_opts_next), as keel's programs read
 * theirs: "--opt=value" beside "--opt value", a flag alone or with "=on"/"=off", "--" the
 * end of the options (no argument after it), and a missing value said naming the '=' form.
 * Before, "--" was "unknown option '--'", "--json=on" "--json takes no value", and
 * "--shards --json" took --json for the count. */
Test(tools_topo, its_options_are_read_by_keels_rules)
{
	static const struct {
		const char *args, *says;
	} bad[] = {
		{ "-- --json", "unexpected argument '--json' after \"--\"" },
		{ "--shards --json",
		  "--shards: missing value (expected a shard count) before --json; "
		  "a value that begins with \"--\" is written --shards=VALUE" },
		{ "--shards", "--shards: missing value (expected a shard count)" },
		{ "--json off", "--json takes no separate value: write --json=off" },
		{ "--json=maybe", "--json: 'maybe' is not a boolean" },
		{ "stray", "unexpected argument stray" },
	};
	char args[256], *out;

	cr_assert_eq(run("--synthetic='core:2 pu:1' --shards=1 --json=on --", false, &out), 0, "%s",
		     out);
	cr_assert(strstr(out, "\"keel_topo\": 1") && strstr(out, "\"synthetic core:2 pu:1\""), "%s",
		  out);
	free(out);
	cr_assert_eq(run("--synthetic 'core:2 pu:1' --shards 1 --json=off --json --json=off", true,
			 &out),
		     0, "%s", out);
	cr_assert(strstr(out, "Map (1 shard;") && !strstr(out, "\"keel_topo\""), "%s", out);
	free(out);
	for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
		snprintf(args, sizeof(args), "--synthetic 'core:2 pu:1' %s", bad[k].args);
		cr_expect_eq(run(args, true, &out), 2, "%s: %s", args, out);
		cr_expect(strstr(out, bad[k].says), "%s: expected \"%s\" in: %s", args, bad[k].says,
			  out);
		free(out);
	}
}

Test(tools_topo, synthetic_two_packages_with_queues_but_no_nic)
{
	char *out;

	cr_assert_eq(run("--synthetic 'pack:2 numa:2 core:8 pu:2' --queues 4", true, &out), 0, "%s",
		     out);
	/* 4 nodes x 8 cores: no NIC, so every physical core is local and none gets a queue */
	cr_assert(strstr(out, "Map (32 shards"), "%s", out);
	cr_assert(strstr(out, "-> no rx queue"), "%s", out);
	cr_assert(!strstr(out, "-> CPU 1 "), "a sibling was used: %s", out);
	cr_assert(strstr(out, "--queues 4 has no effect"), "%s", out);
	free(out);
}

Test(tools_topo, default_count_is_clamped_with_a_note)
{
	char *out;

	cr_assert_eq(run("--synthetic 'pack:4 numa:4 core:32 pu:2'", true, &out), 0, "%s", out);
	cr_assert(strstr(out, "Map (256 shards, cut to KEEL_MAX_SHARDS"), "%s", out);
	cr_assert(strstr(out, "cut to 256 (KEEL_MAX_SHARDS)"), "%s", out);
	free(out);
}

Test(tools_topo, svg_marks_an_irq_mismatch_in_the_warning_colour)
{
	char args[512], svg[128], *out, *doc;
	const char *path;

	need_vm_eth0();
	path = map_file("svgwarn", "{\"keel_map\": 1, \"iface\": \"eth0\", \"rx_queues\": 1, "
				   "\"shards\": [{\"shard\": 0, \"cpu\": 0, \"rxq\": 0, "
				   "\"irq_cpu\": 0}]}\n");
	snprintf(svg, sizeof(svg), "/tmp/keel-topo-test-%d.warn.svg", (int)getpid());
	snprintf(args, sizeof(args), "--map %s --svg %s", path, svg);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	free(out);
	doc = file_text(svg, 1);
	/* IRQ 38 -> 0-1 against the map's CPU 0: the queue is outlined in orange (#dd6b20),
	 * with the title's warning */
	cr_assert(strstr(doc, "stroke=\"#dd6b20\" stroke-width=\"2\""), "%s", doc);
	cr_assert(strstr(doc, "IRQ placement differs from the map"), "%s", doc);
	free(doc);
	unlink(svg);
	unlink(path);
}

/* The reviewer's machine: 4 packages of 2 nodes of 80 cores x 2 threads, 1280 CPUs, eth0 on
 * node 7 (CPUs 1120-1279, all past KEEL_MAX_CPUS) and eth1 on node 0. The report showed
 * "NUMA node 7, local CPUs " (an empty list: a CPU set cannot hold them) and the map went
 * to other nodes without a word; --json had "local_cpus": "". Now the report, the
 * warning and --json say where eth0's CPUs are. */
Test(tools_topo, a_nic_whose_cpus_are_all_past_keel_max_cpus_is_said_so)
{
	char xml[128], args[512], *out;

	gen_topo_xml("4 2 80 2 --nics eth0@7,eth1@0", xml, sizeof(xml));
	snprintf(args, sizeof(args), "--xml %s --queues 64 --iface eth0", xml);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert(strstr(out, "NUMA node 7, local CPUs: all numbered 1024 or above "
			      "(KEEL_MAX_CPUS, keel's limit), so no shard can run on them\n"),
		  "%s", out);
	cr_assert(strstr(out, "the CPUs local to eth0 (NUMA node 7) are all numbered 1024 or "
			      "above (KEEL_MAX_CPUS, keel's limit)"),
		  "no warning: %s", out);
	cr_assert(strstr(out, "NUMA node 0, local CPUs 0-159\n"), "eth1: %s", out);
	free(out);
	snprintf(args, sizeof(args), "--xml %s --queues 64 --iface eth0 --json", xml);
	cr_assert_eq(run(args, false, &out), 0, "%s", out);
	cr_assert(strstr(out, "\"name\": \"eth0\"") &&
			  strstr(out, "\"local_cpus\": \"\", \"local_cpus_beyond_limit\": true"),
		  "%s", out);
	cr_assert(strstr(out, "\"local_cpus\": \"0-159\", \"local_cpus_beyond_limit\": false"),
		  "%s", out);
	free(out);
	unlink(xml);
}

/* The SVG draws 64 NUMA nodes and 64 of the mapped NIC's rx queues at most: what it leaves
 * out is said in its title line. The nodes and queues past those were dropped without a
 * word. */
Test(tools_topo, svg_says_the_nodes_and_queues_it_does_not_draw)
{
	char xml[128], args[512], path[128], cmd[1024], *out;

	need_python();
	snprintf(path, sizeof(path), "/tmp/keel-topo-test-%d.svg", (int)getpid());
	gen_topo_xml("1 66 1 1 --nics eth0@0", xml, sizeof(xml));
	snprintf(args, sizeof(args), "--xml %s --iface eth0 --queues 80 --shards 2 --svg %s", xml,
		 path);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	free(out);
	snprintf(cmd, sizeof(cmd),
		 "python3 -c \"import sys,xml.etree.ElementTree as E; r=E.parse(sys.argv[1])"
		 ".getroot(); t=' '.join(x.text or '' for x in "
		 "r.iter('{http://www.w3.org/2000/svg}text')); "
		 "assert '2 NUMA nodes past the first 64 not drawn' in t, t; "
		 "assert \\\"16 of eth0's rx queues past the first 64 not drawn\\\" in t, t\" '%s'",
		 path);
	cr_assert_eq(system(cmd), 0, "SVG check failed for %s", path);
	unlink(path);
	unlink(xml);
}

/* A node whose memory the process may not use (an XML file's allowed nodeset, as a cgroup's
 * cpuset.mems makes it) is marked in the report and in --json. */
Test(tools_topo, a_node_whose_memory_is_not_allowed_is_marked)
{
	char xml[128], args[512], *out;

	gen_topo_xml("1 2 2 1 --nics eth0@1 --allowed-nodes 0", xml, sizeof(xml));
	snprintf(args, sizeof(args), "--xml '%s' --iface eth0", xml);
	cr_assert_eq(run(args, true, &out), 0, "%s", out);
	cr_assert(strstr(out, "NUMA node 1: 64.0 GiB memory (not allowed: outside the file's "
			      "allowed nodeset), 2 cores"),
		  "%s", out);
	cr_assert(strstr(out, "NUMA node 0: 64.0 GiB memory, 2 cores"), "%s", out);
	free(out);
	snprintf(args, sizeof(args), "--xml '%s' --iface eth0 --json", xml);
	cr_assert_eq(run(args, false, &out), 0, "%s", out);
	cr_assert(strstr(out, "\"memory_only\": false, \"memory_allowed\": false }") &&
			  strstr(out, "\"memory_only\": false, \"memory_allowed\": true }"),
		  "%s", out);
	free(out);
	unlink(xml);
}
