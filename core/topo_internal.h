/* SPDX-License-Identifier: MIT */
/* Private to core/topo*.c (and the topo tests): the topology object and sysfs helpers. */
#ifndef KEEL_CORE_TOPO_INTERNAL_H
#define KEEL_CORE_TOPO_INTERNAL_H

#include <keel/topo.h>
#include <stdio.h>
#include <string.h>

#include <hwloc.h>

/* Copy @src into @dst[len], truncating; always terminated. */
static inline void
keel__topo_strcpy(char *dst, size_t len, const char *src)
{
	size_t n = strlen(src);

	if (!len)
		return;
	if (n >= len)
		n = len - 1;
	memcpy(dst, src, n);
	dst[n] = 0;
}

struct keel_topo {
	struct keel_topo_info info;
	struct keel_topo_numa *numa;
	struct keel_topo_core *cores;
	struct keel_topo_pu *pus;
	struct keel_topo_nic *nics;
	unsigned nics_cap;
	/* hwloc's NUMA latency matrix (Linux's node distances, an XML file's NUMALatency):
	 * [i * nnuma + j] from numa[i] to numa[j], 0 where it says nothing; NULL when the
	 * topology has none. */
	uint64_t *numa_dist;
	/* The CPUs the topology's source allows (hwloc's allowed cpuset: a live machine's
	 * cgroup cpuset, an XML file's writer's): the others are in the topology, loaded with
	 * HWLOC_TOPOLOGY_FLAG_INCLUDE_DISALLOWED, and shown not allowed. */
	struct keel_cpuset hw_allowed;
	/* Every CPU the source knows of (hwloc's complete cpuset): an XML file's CPUs that were
	 * offline when it was written are here, with no PU in the topology. */
	struct keel_cpuset hw_complete;
};

/* The NUMA latency from node @from to node @to (OS indexes), 0 when not known. */
uint64_t keel__topo_numa_distance(const struct keel_topo *t, int from, int to);

/* Append a zeroed NIC (unknown counts set to -1) to @t. Returns it, or NULL (ENOMEM). */
struct keel_topo_nic *keel__topo_nic_add(struct keel_topo *t);

/* Live facts of one NIC from sysfs, /proc and ethtool: queues, IRQs, channels, driver, hds. */
void keel__topo_sysfs_nic(struct keel_topo_nic *nic);

/* Add every /sys/class/net interface that hwloc did not report (virtual ones), except lo;
 * those without a device link are virtual, local to every CPU. */
int keel__topo_sysfs_virtual(struct keel_topo *t);

/* The interfaces @ifname is over, following its lower_NAME links down (a VLAN over a bond
 * over eth0 and eth1 is over eth0 and eth1), listed sorted into @buf (", " between them, cut
 * at a whole name). Returns their count, 0 when it is over none. */
unsigned keel__topo_sysfs_lower(const char *ifname, char *buf, size_t len);

/* The directory of network interfaces, "/sys/class/net": a pointer so tests can stand in
 * for it with a folder of their own. */
extern const char *keel__sys_class_net;

/* -EINVAL, said in @err, when @h (loaded as this machine's) describes another machine:
 * HWLOC_XMLFILE or HWLOC_SYNTHETIC in the environment (without HWLOC_THISSYSTEM=1). */
int keel__topo_not_here(hwloc_topology_t h, char *err, size_t errlen);

/* Whether @cpu is isolated (isolcpus=: the file keel__sys_cpu_isolated names,
 * /sys/devices/system/cpu/isolated, lists it). The path is a pointer so tests can stand in
 * for it. */
extern const char *keel__sys_cpu_isolated;
bool keel__cpu_isolated(unsigned cpu);

/* Whether irqbalance is running (a /proc/PID/comm called irqbalance); unknown when none is
 * seen from a PID namespace other than the first (a container: the host's is not listed). */
enum keel_topo_state keel__topo_irqbalance(void);
/* Whether this process is in the first PID namespace (the link @keel__proc_self_pidns, a
 * test's to move, names it); true when that cannot be read. */
bool keel__topo_initial_pidns(void);
extern const char *keel__proc_self_pidns;

/* If @irq_name (a /proc/interrupts action name) of interface @ifname (NULL: not known)
 * serves an rx queue, return 1 and its number (0..65535) in *q; 0 when it names something
 * else (config, tx-only, misc, the interface's own vector) or its trailing number is beyond
 * 65535. The interface's name, where it stands as words of @irq_name, is not read. */
int keel__topo_irq_rxq(const char *irq_name, const char *ifname, unsigned *q);

/* Give @n's rx queues their IRQs among the @nirq MSI vectors @irqs, named @names (as
 * irq_names reads them): each by the queue its name gives (keel__topo_irq_rxq; the lower
 * IRQ where two name one queue), then, where virtio-pci has one vector for every virtqueue
 * ("virtio0-virtqueues"), that one to each queue still without. Queues no name gives keep
 * irq -1. */
void keel__topo_rxq_irqs(struct keel_topo_nic *n, const int *irqs, int nirq, char (*names)[64]);

/* Whether shard @i's queue's IRQ (@i has a queue of @nic with an IRQ, and an IRQ CPU) is one
 * that another shard's queue of @m has too (virtio-net with one vector for every virtqueue):
 * an IRQ fires on one set of CPUs, not on each shard's. At the first shard with it, @f (when
 * not NULL) gets keel_map_check's one line for them all, with the fix. Returns 1 at that
 * shard, -1 at the others with it, 0 when no other shard's queue has it. keel-topo's report
 * and SVG use it to say such an IRQ once, as --check does. */
int keel__topo_shared_irq(const struct keel_topo_nic *nic, const struct keel_map *m, unsigned i,
			  FILE *f);

/* The MSI IRQ numbers of the device at @devdir (/sys/class/net/IF/device): the entries of
 * its msi_irqs, or of its parent's when it has none (virtio-net's netdev sits on a virtio
 * device whose PCI parent owns the vectors), however many (a large NIC has thousands).
 * *@out: a malloc'd array (NULL when none; the caller frees it). Returns the count, 0 when
 * there are none, or -ENOMEM. */
int keel__topo_msi_irqs(const char *devdir, int **out);

/* One pass over a /proc/interrupts stream @f: the action name (the line's last field) of
 * each IRQ in @irqs[n] into @names (left as they are for IRQs it does not list; start them
 * ""). Lines of any length. Returns how many were found. */
int keel__topo_irq_names_parse(FILE *f, const int *irqs, int n, char (*names)[64]);

/* Read a CPU list file (smp_affinity_list, cpu/online). Returns 0; -ERANGE when it lists
 * CPUs at or above KEEL_MAX_CPUS (@out has the others: the list was read, it is just wider
 * than a keel_cpuset); or -errno (-EINVAL: malformed). */
int keel__topo_cpulist_read(const char *path, struct keel_cpuset *out);

/* Number of rx-N entries in /sys/class/net/@ifname/queues, or -errno (-ENODEV: no such
 * interface). */
int keel__topo_sysfs_rxq_count(const char *ifname);

/* The ethtool -L channel kind that sets @ifname's rx queues: "rx" for a driver with separate
 * rx channels and no combined ones (veth, say), else "combined". */
const char *keel__topo_sysfs_channel_kind(const char *ifname);
/* The PCI function behind interface @ifname (its own, or the nearest above it: virtio-net's
 * virtioN sits under one) into @pci, and its NUMA node into *@numa (-1: not said). Returns 0,
 * -ENOENT (the interface has no PCI function: veth, lo, ifb), or -ENODEV (no such
 * interface). */
int keel__topo_sysfs_pci_of(const char *ifname, char *pci, size_t len, int *numa);
/* @s as a PCI function ("0000:81:00.0" or "81:00.0"): its bus id in full into @id, and the
 * name of its first network interface into @name. Returns how many interfaces the function
 * has (0: none, a VF without a driver's interface), or -EINVAL when @s is no bus id. */
int keel__topo_sysfs_pci_ifname(const char *s, char *id, size_t idlen, char *name, size_t len);
/* @ifname's RSS indirection table (ETHTOOL_GRXFHINDIR): its size, with the entries (rx
 * queue numbers) in *@table (malloc'd; the caller frees it), or -errno (-EOPNOTSUPP: no
 * table, as veth has none). */
int keel__topo_rss_table(const char *ifname, uint32_t **table);
/* The first queue of the RSS table @t (@n entries) that no shard of @m owns, with how many
 * distinct such queues there are in *@count; -1 (and 0) when every entry is a served
 * queue. */
int keel__topo_rss_unserved(const uint32_t *t, uint32_t n, const struct keel_map *m,
			    unsigned *count);

/* Values for a line a person reads (keel_map_check's and keel-topo's lists of queues and
 * shards): each once, in the order added. Up to KEEL_MAX_SHARDS of them (a map's shards,
 * or their queues); one past that is counted in @over. */
struct keel__topo_list {
	unsigned n, over;
	unsigned v[KEEL_MAX_SHARDS];
};

/* Add @v to @l unless it is there already. Returns whether it was added. */
bool keel__topo_list_add(struct keel__topo_list *l, unsigned v);

/* "a, b, c" of @l into @buf[@len] (at least 24 bytes): whole values only, and where not all
 * fit, as many as do and " and N more" (a list was cut mid-value, and how much was left out
 * unsaid). Returns @buf. */
const char *keel__topo_list_format(const struct keel__topo_list *l, char *buf, size_t len);

/* keel__topo_shared_irq, with the queues and the shards that share shard @i's IRQ in
 * *@queues and *@shards where it returns 1 (keel-topo --plan's note names them). */
int keel__topo_shared_irq_lists(const struct keel_topo_nic *nic, const struct keel_map *m,
				unsigned i, FILE *f, struct keel__topo_list *queues,
				struct keel__topo_list *shards);

/* The map of @o's --map FILE (KEEL_MAP), as the runtime takes it (keel__topo_apply_map): loaded
 * (a PCI function resolved to its interface), validated against this machine when @validate,
 * and refused where --cpuset, a given --shards or --iface conflicts with it, or it has no
 * shards. Logs no error (an INFO line when a PCI function names the interface): keel-bench
 * calls it before it starts a runtime, to refuse such a map as a usage error (exit 2) in the
 * runtime's words. Returns 0 (no --map), 1 with the map
 * in *out (the caller frees it), or -errno with "--map FILE: why" in @why (the option as
 * keel__opt_name names it). */
struct keel_opts;
int keel__topo_map_of_opts(const struct keel_opts *o, bool validate, struct keel_map **out,
			   char *why, size_t whylen);

/* Whether @m, @o's --map as keel__topo_map_of_opts gave it, no longer fits this machine (a
 * CPU offline, its interface gone: keel_map_validate's first fatal reason), said as the
 * runtime says it ("--map FILE: why" into @why). Logs nothing: the runtime logs the lines
 * that only warn when it takes the map. keel-bench asks before it starts the runtime, after
 * the option conflicts (a map of another interface is that conflict, here or not).
 * Returns 0, or -EINVAL (said). */
int keel__topo_map_stale(const struct keel_opts *o, const struct keel_map *m, char *why,
			 size_t whylen);

/* Comma-separated names in /sys/class/net except lo, into @buf ("none" when empty). */
void keel__topo_sysfs_ifnames(char *buf, size_t len);

#endif
