/* SPDX-License-Identifier: MIT */
/*
 * Topology mapper: what the machine looks like (hwloc: packages, NUMA nodes, cores, SMT
 * siblings, caches, the PCI locality of each NIC; sysfs/ethtool on a live machine: rx queues,
 * their IRQs and where those point, channels, header/data split, irqbalance), and the
 * core/queue map computed from it: shard i -> CPU -> rx queue -> IRQ CPU.
 *
 * A map is written as a JSON map file (keel-topo --plan) and read back by every keel program
 * with --map FILE; docs/topology.md documents the schema.
 *
 * Threading: none of these calls touch a shard; call them from any one thread at a time per
 * object (a struct keel_topo is read-only after keel_topo_load()).
 */
#ifndef KEEL_TOPO_H
#define KEEL_TOPO_H

#include <keel/common.h>
#include <keel/opts.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

struct keel_topo;

/** Version of the map file schema written by keel_map_write() ("keel_map": 1). */
#define KEEL_MAP_VERSION 1

/** Longest interface name or PCI bus id a map or report carries, with its NUL. */
#define KEEL_TOPO_NAME_MAX 64

/** Most hardware threads of one core that are recorded. */
#define KEEL_TOPO_MAX_SMT 8

/** A fact that may not be known (offline, or the kernel/driver does not say). */
enum keel_topo_state {
	KEEL_TOPO_UNKNOWN = 0,
	KEEL_TOPO_OFF = 1,
	KEEL_TOPO_ON = 2,
};

/** Where the topology comes from. Zero it for the live machine. */
struct keel_topo_load_opts {
	const char *xml;       /* hwloc XML file (offline), or NULL */
	const char *synthetic; /* hwloc synthetic description, e.g. "pack:2 core:8 pu:2", or NULL */
	unsigned queues;       /* offline only: rx queues of every NIC (0: unknown) */
};

/** One hardware thread (PU). */
struct keel_topo_pu {
	unsigned os;   /* OS CPU number */
	unsigned core; /* index into keel_topo_info.cores */
	unsigned smt;  /* 0 for the core's first thread, 1 for its first sibling, ... */
	bool allowed;  /* in the process's affinity mask (offline: always) */
};

/** One physical core. */
struct keel_topo_core {
	unsigned package; /* logical package index */
	int numa;         /* OS index of its NUMA node, -1 when unknown */
	unsigned npus;
	unsigned pus[KEEL_TOPO_MAX_SMT]; /* OS CPU numbers, first thread first */
	uint64_t l2_bytes, l3_bytes;     /* 0 when unknown */
};

/** One NUMA node. */
struct keel_topo_numa {
	unsigned os;           /* OS index (node N in /sys/devices/system/node) */
	uint64_t memory_bytes; /* local memory, 0 when unknown */
	unsigned ncores;       /* cores whose CPUs are in this node */
	struct keel_cpuset
		cpus;     /* CPUs of the node (a memory-only node: those it is attached to) */
	bool memory_only; /* memory without CPUs of its own: HBM, persistent, CXL, GPU */
	/* Its memory is one this process may use: false outside the cgroup's cpuset.mems (an
	 * XML file: outside the allowed nodeset it was written with); true for a node with no
	 * memory (memory_bytes 0: CPUs only, or not known). */
	bool memory_allowed;
};

/** One rx queue of a NIC and the IRQ that serves it. */
struct keel_topo_rxq {
	unsigned index;
	int irq;                     /* IRQ number, -1 when unknown or none */
	char irq_name[64];           /* its name in /proc/interrupts, "" when unknown */
	bool affinity_known;         /* @affinity was read from /proc/irq/N/smp_affinity_list */
	struct keel_cpuset affinity; /* the CPUs it may fire on now (below KEEL_MAX_CPUS) */
	bool affinity_beyond;        /* it may also fire on CPUs at or above KEEL_MAX_CPUS, which
				      * @affinity cannot hold */
};

/** A network interface, or an Ethernet PCI function without one (e.g. an SR-IOV VF). */
struct keel_topo_nic {
	char name[KEEL_TOPO_NAME_MAX]; /* interface name, or the PCI bus id when no interface */
	char pci[16];                  /* PCI bus id "0000:81:00.0", "" for a virtual interface */
	char driver[32];               /* "" when unknown */
	char model[96];                /* PCI device name, "" when unknown */
	bool netdev;                   /* has a network interface */
	bool is_virtual;               /* no PCI device (veth, bridge...): no NUMA locality */
	char lower[160];               /* live: the interfaces it is over (a bond's, a VLAN's, a
					* macvlan's: its lower_* links, followed down to those
					* over no other), sorted, ", " between them, cut at a
					* whole name; "" when it is over none */
	unsigned nlower;               /* how many (0: over no other interface) */
	bool is_vf;                    /* live: an SR-IOV virtual function (has a physfn) */
	int numa;                      /* OS index of its NUMA node, -1 when not one node */
	struct keel_cpuset local;      /* CPUs local to it (all CPUs for a virtual one) */
	bool local_beyond;             /* CPUs numbered at or above KEEL_MAX_CPUS are local to it
					* too, which @local cannot hold (no shard runs there) */
	int nrxq, ntxq;                /* queue counts, -1 when unknown */
	int ch_rx, ch_tx, ch_combined; /* ethtool channels, -1 when unknown */
	int ch_max_rx, ch_max_tx, ch_max_combined;
	int ring_rx;                      /* rx ring size, -1 when unknown */
	enum keel_topo_state hds;         /* header/data split (tcp-data-split) */
	enum keel_topo_state hds_capable; /* ON: the driver can split, OFF: it cannot */
	int hds_thresh;                   /* header/data split threshold, -1 when unknown */
	bool has_irqs;                    /* the device has MSI IRQs (virtual ones have none) */
	struct keel_topo_rxq *rxq;        /* [nrxq] when nrxq > 0, else NULL */
};

/** What keel_topo_load() found; read-only, owned by the struct keel_topo. */
struct keel_topo_info {
	bool live;        /* the running machine (sysfs facts are present) */
	char source[320]; /* "this machine", "xml FILE" or "synthetic DESC" */
	char host[64];    /* host name, "" when unknown */
	unsigned npackages;
	unsigned nnuma;
	const struct keel_topo_numa *numa; /* [nnuma], in hwloc's order, which need not be the
					    * OS indexes' (a CXL or HBM node may come first,
					    * and node numbers may have gaps): find a node by
					    * its .os, not by indexing with it */
	unsigned ncores;
	const struct keel_topo_core *cores; /* [ncores], in hwloc's logical order */
	unsigned npus;
	const struct keel_topo_pu *pus; /* [npus], in hwloc's logical order */
	unsigned nnics;
	const struct keel_topo_nic *nics; /* [nnics] */
	struct keel_cpuset present;       /* every CPU of the topology */
	struct keel_cpuset allowed;       /* live: the affinity mask; offline: every CPU */
	enum keel_topo_state irqbalance;  /* running (ON), not running (OFF), offline: UNKNOWN */
};

/**
 * Discover a topology: the live machine when @o is NULL or names neither a file nor a
 * synthetic description, else the offline one it names.
 * Ownership: *out belongs to the caller; free it with keel_topo_destroy().
 * Returns: 0 and *out; -ENOENT (no such XML file), -EINVAL (hwloc rejects the file or the
 * description), -ENOMEM; the reason, with the fix, is written to @err.
 */
KEEL_API int keel_topo_load(const struct keel_topo_load_opts *o, struct keel_topo **out, char *err,
			    size_t errlen);

/** Free a topology from keel_topo_load(); NULL is ignored. */
KEEL_API void keel_topo_destroy(struct keel_topo *t);

/** The facts of @t, valid until keel_topo_destroy(@t). */
KEEL_API const struct keel_topo_info *keel_topo_info_get(const struct keel_topo *t);

/**
 * The NIC called @name: an interface name, or a PCI bus id ("0000:88:00.1" or "88:00.1"),
 * which also finds functions without an interface such as SR-IOV VFs.
 * Returns: the NIC, or NULL when there is none.
 */
KEEL_API const struct keel_topo_nic *keel_topo_nic_find(const struct keel_topo *t,
							const char *name);

/**
 * The interfaces of PCI function @pci ("0000:88:00.1"), their names listed into @buf
 * (", " between them; cut at a whole name when @len is short). A bus id names an interface
 * only when its function has one: a VPI card's function has an Ethernet and an InfiniBand
 * one.
 * Returns: their count.
 */
KEEL_API unsigned keel_topo_pci_ifaces(const struct keel_topo *t, const char *pci, char *buf,
				       size_t len);

/**
 * Format @s as a CPU list ("0-3,8") into @buf ("" for an empty set). When it does not fit
 * in @len, it is cut after a whole element and ends in ",..." ("0,2,..."), or is "..." alone.
 * Returns: @buf.
 */
KEEL_API char *keel_topo_cpulist_format(const struct keel_cpuset *s, char *buf, size_t len);

/** "unknown", "off" or "on". */
KEEL_API const char *keel_topo_state_name(enum keel_topo_state s);

/** Whether shards may share a core with another shard on an SMT sibling. */
enum keel_map_smt {
	KEEL_MAP_SMT_AVOID = 0, /* one shard per physical core, never on siblings */
	KEEL_MAP_SMT_ALLOW = 1, /* siblings too: in the order keel_map_numa says (under
				 * LOCAL the NIC node's siblings come before the other
				 * nodes' physical cores) */
};

/** What to do when the NIC's NUMA node runs out of physical cores. */
enum keel_map_numa {
	KEEL_MAP_NUMA_LOCAL = 0,  /* SMT siblings on the local node first, then other nodes */
	KEEL_MAP_NUMA_SPREAD = 1, /* physical cores of the other nodes first, then siblings */
};

/** A map request: the options of keel-topo. Initialise with keel_map_req_init(). */
struct keel_map_req {
	unsigned shards; /* 0: one per physical core local to the NIC, at most one per rx queue
			  * it can have, at most KEEL_MAX_SHARDS */
	char iface[KEEL_TOPO_NAME_MAX]; /* "": the first NIC with a PCI device */
	struct keel_cpuset cpuset;      /* CPUs shards may use... */
	bool cpuset_given;              /* ...when true (else the affinity mask) */
	unsigned rxqs[KEEL_MAX_SHARDS]; /* --rxqs: rx queue of shard i... */
	unsigned nrxqs;                 /* ...for i < nrxqs (0: shard i gets queue i) */
	enum keel_map_smt smt;
	enum keel_map_numa numa;
	unsigned reserve;       /* the first N local cores are kept free for housekeeping */
	bool oversubscribe;     /* more shards than CPUs: CPUs are reused in order */
	bool extra_without_rxq; /* shards beyond the queues that exist (or beyond --rxqs) get
				 * no rx queue; without it that is an error */
	bool hds;               /* the map requires header/data split (ZCRX) */
};

/** Fill @r with the defaults (everything 0: SMT avoid, NUMA local). */
KEEL_API void keel_map_req_init(struct keel_map_req *r);

/**
 * Parse an --rxqs value "IF:LIST" (e.g. "eth0:0-3,8") into @r->iface and @r->rxqs, in the
 * order given (shard i gets the i-th queue listed).
 * Returns: 0, or -EINVAL (not IF:LIST, a queue named twice, more than KEEL_MAX_SHARDS
 * queues) with the reason in @err.
 */
KEEL_API int keel_map_req_rxqs_parse(struct keel_map_req *r, const char *s, char *err,
				     size_t errlen);

/** One shard of a map. */
struct keel_map_shard {
	int cpu;     /* OS CPU number the shard runs on */
	int core;    /* index of its core in the topology it was computed on, -1 unknown */
	int numa;    /* NUMA node of the CPU, -1 unknown */
	int rxq;     /* rx queue of map->iface it owns, -1 none */
	int irq_cpu; /* where that queue's IRQ should point, -1 none */
};

/** keel_map.notes: the default shard count was cut to KEEL_MAX_SHARDS. */
#define KEEL_MAP_NOTE_CLAMPED (1u << 0)

/** A core/queue map. A plain value: copy it, no destructor. */
struct keel_map {
	unsigned version;               /* KEEL_MAP_VERSION */
	char iface[KEEL_TOPO_NAME_MAX]; /* "" when the map has no NIC */
	char pci[16];                   /* its PCI bus id, "" when virtual or none */
	int numa;                       /* its NUMA node, -1 when not one node */
	unsigned rx_queues;             /* rx queues the interface needs (highest rxq + 1) */
	bool hds;                       /* header/data split required */
	enum keel_map_smt smt;          /* the policies it was computed with */
	enum keel_map_numa numa_policy;
	unsigned reserve;
	char source[320]; /* keel_topo_info.source of the topology */
	unsigned notes;   /* KEEL_MAP_NOTE_*: how keel_map_compute() chose (not in the file) */
	unsigned nshards;
	struct keel_map_shard shards[KEEL_MAX_SHARDS];
};

/**
 * Compute the map for @req on @t.
 * Returns: 0 and *out; -ENODEV (no such interface: @err names the ones that exist), -EINVAL
 * (a CPU that does not exist or is outside the affinity mask, a queue that does not exist,
 * more shards than allowed CPUs without oversubscribe, more shards than queues without
 * extra_without_rxq, conflicting options), with the reason and the fix in @err.
 */
KEEL_API int keel_map_compute(const struct keel_topo *t, const struct keel_map_req *req,
			      struct keel_map *out, char *err, size_t errlen);

/** Write @m as a JSON map file document to @f. Returns: 0, or -EIO. */
KEEL_API int keel_map_write(const struct keel_map *m, FILE *f);

/**
 * Write @m to @path (through a temporary file renamed into place).
 * Returns: 0, or -errno with the reason in @err.
 */
KEEL_API int keel_map_save(const struct keel_map *m, const char *path, char *err, size_t errlen);

/**
 * Parse a map file document (strict JSON: unknown fields, duplicates, wrong types, trailing
 * data and out-of-range numbers are errors).
 * Returns: 0 and *out, or -EINVAL with the reason (and where) in @err; -E2BIG when a
 * container has more than 100000 members, -ENOMEM. @err is written on every error.
 */
KEEL_API int keel_map_parse(const char *json, size_t len, struct keel_map *out, char *err,
			    size_t errlen);

/**
 * Read and parse the map file @path.
 * Returns: as keel_map_parse(), or -errno of the open or read (-EFBIG: over 1 MiB); @err is
 * written on every error.
 */
KEEL_API int keel_map_load(const char *path, struct keel_map *out, char *err, size_t errlen);

/**
 * Check that @m can run on this machine now: its CPUs exist and are in the process's
 * affinity mask, its interface exists and has the rx queues it names. Cheap (sysfs only).
 * Returns: 0, or -EINVAL with the first reason, and the fix, in @err.
 */
KEEL_API int keel_map_validate(const struct keel_map *m, char *err, size_t errlen);

/**
 * Compare the live machine @live with @m and write one line per mismatch to @f: a CPU that
 * is gone or not allowed, a missing interface, too few rx queues, an IRQ pointing at the
 * wrong CPU, header/data split off when the map needs it, irqbalance running. Each line
 * names the command that fixes it.
 * Returns: the number of mismatches (0: the machine matches), or -EINVAL when @live is not
 * a live topology.
 */
KEEL_API int keel_map_check(const struct keel_topo *live, const struct keel_map *m, FILE *f);

struct keel_runtime;
struct keel_shard;

/**
 * The rx queue of keel_runtime_rx_iface() that shard @sh owns: the i-th queue of --rxqs
 * when given, else under --map the map file's shards[i].rxq, else with --iface alone
 * queue i, so the program can bind its receive
 * path (e.g. a ZCRX interface queue) to it. Context: any thread, once keel_runtime_create() has
 * returned. Returns: the queue index, or -1 when neither --rxqs nor the map gives the shard a
 * queue.
 */
KEEL_API int keel_shard_rxq(const struct keel_shard *sh);

/**
 * The interface (or PCI bus id) whose rx queues the --map file gives to the shards.
 * Ownership: the string belongs to @rt and lives as long as it.
 * Returns: the name, or NULL when the runtime has no map or the map has no NIC.
 */
KEEL_API const char *keel_runtime_map_iface(const struct keel_runtime *rt);

/**
 * The interface whose rx queues the shards own (keel_shard_rxq()): --iface, the IF of
 * --rxqs, else keel_runtime_map_iface().
 * Ownership: the string belongs to @rt and lives as long as it.
 * Returns: the name, or NULL when none was given.
 */
KEEL_API const char *keel_runtime_rx_iface(const struct keel_runtime *rt);

#ifdef __cplusplus
}
#endif

#endif
