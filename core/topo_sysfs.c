// SPDX-License-Identifier: MIT
/* Live NIC facts: rx/tx queues and their IRQs (sysfs, /proc), channels, rings and driver
 * (ethtool ioctl), header/data split (ethtool netlink), whether irqbalance runs. Nothing
 * here is available offline; what cannot be read stays "unknown", never "off". */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/ethtool.h>
#include <linux/ethtool_netlink.h>
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "internal.h"
#include "topo_internal.h"

/* Kernel ABI facts newer than Debian 12's headers (linux/ethtool_netlink.h, 6.1): the rings
 * attributes after TX_PUSH, added in 6.4 (RX_PUSH, TX_PUSH_BUF_LEN[_MAX]) and 6.13
 * (HDS_THRESH[_MAX]). */
#define RINGS_A_TCP_DATA_SPLIT 11
#define RINGS_A_HDS_THRESH     17
_Static_assert(ETHTOOL_A_RINGS_TCP_DATA_SPLIT == RINGS_A_TCP_DATA_SPLIT, "ethtool ABI");

int (*keel__sched_getaffinity)(pid_t pid, size_t size, cpu_set_t *mask) = sched_getaffinity;

/* How many CPUs the kernel may ever have (the highest possible CPU + 1), at least
 * CPU_SETSIZE: a mask shorter than the kernel's nr_cpu_ids is refused with EINVAL. */
static unsigned
possible_cpus(void)
{
	char buf[256];
	FILE *f = fopen("/sys/devices/system/cpu/possible", "re");
	unsigned long n = 0;

	if (f) {
		if (fgets(buf, sizeof(buf), f)) {
			/* "0-1279" or "0-3,8-11": the last number is the highest. */
			char *p = buf + strcspn(buf, "\n");
			while (p > buf && isdigit((unsigned char)p[-1]))
				p--;
			if (isdigit((unsigned char)*p))
				n = strtoul(p, NULL, 10) + 1;
		}
		fclose(f);
	}
	if (!n) {
		long c = sysconf(_SC_NPROCESSORS_CONF);
		n = c > 0 ? (unsigned long)c : 0;
	}
	if (n < CPU_SETSIZE)
		n = CPU_SETSIZE;
	if (n > (1ul << 20))
		n = 1ul << 20;
	return (unsigned)n;
}

const char *keel__proc_mountinfo = "/proc/self/mountinfo";
const char *keel__proc_cgroup = "/proc/self/cgroup";

/* The mount of the cgroup hierarchy that has controller @ctl ("cpuset", "memory"), from
 * @mountinfo: its mount point and root (a container's bind mount of a subtree has one other
 * than "/") into @mnt and @root, and whether it is cgroup v2. 0, or -ENOENT where none is
 * mounted. */
static int
controller_mount(FILE *mountinfo, const char *ctl, char *mnt, size_t mntlen, char *root,
		 size_t rootlen, bool *v2)
{
	char *line = NULL;
	size_t cap = 0;
	int r = -ENOENT;

	while (r < 0 && getline(&line, &cap, mountinfo) > 0) {
		/* "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER" */
		char rt[PATH_MAX], mp[PATH_MAX], type[32], super[512];
		const char *dash = strstr(line, " - ");

		if (!dash || sscanf(line, "%*s %*s %*s %4095s %4095s", rt, mp) != 2 ||
		    sscanf(dash + 3, "%31s %*s %511s", type, super) != 2)
			continue;
		if (strcmp(type, "cgroup2") == 0 && !*v2) {
			/* v2 unless a v1 hierarchy of @ctl comes later (a hybrid layout) */
			*v2 = true;
			keel__topo_strcpy(mnt, mntlen, mp);
			keel__topo_strcpy(root, rootlen, rt);
		} else if (strcmp(type, "cgroup") == 0) {
			char *save = NULL;

			for (char *o = strtok_r(super, ",", &save); o;
			     o = strtok_r(NULL, ",", &save))
				if (strcmp(o, ctl) == 0) {
					*v2 = false;
					keel__topo_strcpy(mnt, mntlen, mp);
					keel__topo_strcpy(root, rootlen, rt);
					r = 0;
				}
		}
	}
	free(line);
	return r < 0 && *v2 ? 0 : r;
}

/* The directory of this process's cgroup in the hierarchy of controller @ctl into @dir, the
 * length of its mount point's path into *@mntlen (the directories above @dir up to it are
 * its ancestors), and whether it is v2. 0, -ENOENT where there is none, or -errno. */
static int
cgroup_dir(const char *ctl, char *dir, size_t dirlen, size_t *mntlen, bool *v2)
{
	char mnt[PATH_MAX] = "", root[PATH_MAX] = "", *line = NULL, path[PATH_MAX] = "";
	size_t cap = 0, rl;
	FILE *f = fopen(keel__proc_mountinfo, "re");
	int r;

	*v2 = false;
	if (!f)
		return -errno;
	r = controller_mount(f, ctl, mnt, sizeof(mnt), root, sizeof(root), v2);
	fclose(f);
	if (r < 0)
		return r;
	if (!(f = fopen(keel__proc_cgroup, "re")))
		return -errno;
	r = -ENOENT;
	while (r < 0 && getline(&line, &cap, f) > 0) {
		/* "ID:CONTROLLERS:PATH"; v2's is "0::PATH" */
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		bool match = false;
		char *save = NULL;

		if (!c2)
			continue;
		*c2 = 0;
		if (*v2) {
			match = strcmp(line, "0:") == 0;
		} else {
			for (char *o = strtok_r(c1 + 1, ",", &save); o;
			     o = strtok_r(NULL, ",", &save))
				match |= strcmp(o, ctl) == 0;
		}
		if (!match)
			continue;
		c2[1 + strcspn(c2 + 1, "\n")] = 0;
		keel__topo_strcpy(path, sizeof(path), c2 + 1);
		r = 0;
	}
	free(line);
	fclose(f);
	if (r < 0)
		return r;
	/* The mount shows the hierarchy from its root: the path below it is the rest. */
	rl = strcmp(root, "/") == 0 ? 0 : strlen(root);
	if (rl && strncmp(path, root, rl) == 0 && (path[rl] == '/' || !path[rl]))
		memmove(path, path + rl, strlen(path + rl) + 1);
	*mntlen = strlen(mnt);
	if (snprintf(dir, dirlen, "%s%s%s", mnt, path[0] == '/' ? "" : "/",
		     strcmp(path, "/") == 0 ? "" : path) >= (int)dirlen)
		return -ENAMETOOLONG;
	return 0;
}

/* @dir to its parent cgroup's folder: false at the hierarchy's mount point (@mntlen bytes
 * of @dir), past which a container sees nothing of its own. */
static bool
cgroup_up(char *dir, size_t mntlen)
{
	char *slash = strrchr(dir, '/');

	if (!slash || (size_t)(slash - dir) < mntlen)
		return false;
	*slash = 0;
	return true;
}

int
keel__cgroup_cpus(struct keel_cpuset *out, char *file, size_t filelen)
{
	char dir[PATH_MAX];
	size_t mntlen;
	bool v2;
	int r = cgroup_dir("cpuset", dir, sizeof(dir), &mntlen, &v2);

	if (r < 0)
		return r;
	/* v2 gives a cgroup the file only where its parent enabled cpuset for it
	 * (cgroup.subtree_control): a session scope under a slice with AllowedCPUs= has none,
	 * and the nearest ancestor's is the set that binds it. That -ENOENT sent the --cpuset
	 * error to "start the program with a wider mask". Up to the mount point, as the memory
	 * limit's walk: a container sees its own subtree only. */
	for (;;) {
		if (snprintf(file, filelen, "%s/%s", dir,
			     v2 ? "cpuset.cpus.effective" : "cpuset.effective_cpus") >=
		    (int)filelen)
			return -ENAMETOOLONG;
		r = keel__topo_cpulist_read(file, out);
		if (r != -ENOENT)
			return r == -ERANGE ? 0 : r;
		if (!cgroup_up(dir, mntlen))
			return r;
	}
}

int
keel__cgroup_memory_limit(uint64_t *limit, char *file, size_t filelen)
{
	char dir[PATH_MAX], f[PATH_MAX + 32];
	size_t mntlen;
	bool v2, found = false;
	int r = cgroup_dir("memory", dir, sizeof(dir), &mntlen, &v2);

	if (r < 0)
		return r;
	/* This cgroup's limit and its ancestors': the least binds (a v1 child's own file
	 * says nothing of its parent's). The walk ends at the mount point: a container sees
	 * its own subtree only. */
	for (;;) {
		char text[64] = "", *end;
		unsigned long long v;
		FILE *fp;

		snprintf(f, sizeof(f), "%s/%s", dir, v2 ? "memory.max" : "memory.limit_in_bytes");
		if ((fp = fopen(f, "re"))) {
			if (fgets(text, sizeof(text), fp)) {
				errno = 0;
				v = strtoull(text, &end, 10);
				/* v2 says "max" for none; v1 a page-counter maximum near 2^63 */
				if (end != text && !errno && v < (1ULL << 62) &&
				    (!found || v < *limit)) {
					*limit = v;
					keel__topo_strcpy(file, filelen, f);
					found = true;
				}
			}
			fclose(fp);
		}
		if (!cgroup_up(dir, mntlen))
			break;
	}
	return found ? 0 : -ENOENT;
}

const char *
keel__cgroup_excludes(unsigned cpu, char *buf, size_t len)
{
	struct keel_cpuset set;
	char file[PATH_MAX], list[128];

	buf[0] = 0;
	if (keel__cgroup_cpus(&set, file, sizeof(file)) < 0 || keel_cpuset_has(&set, cpu))
		return buf;
	snprintf(buf, len,
		 ": its cgroup's cpuset (%s is %s) excludes it, and taskset cannot widen that",
		 file, keel_topo_cpulist_format(&set, list, sizeof(list)));
	return buf;
}

const char *
keel__cpu_not_online(unsigned cpu, char *buf, size_t len)
{
	struct keel_cpuset on;
	char path[64], list[128];
	int r = keel__topo_cpulist_read("/sys/devices/system/cpu/online", &on);

	buf[0] = 0;
	if ((r != 0 && r != -ERANGE) || keel_cpuset_has(&on, cpu))
		return buf;
	snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%u", cpu);
	if (access(path, F_OK) == 0)
		snprintf(buf, len, "CPU %u is offline (bring it online: echo 1 > %s/online)", cpu,
			 path);
	else
		snprintf(buf, len, "CPU %u does not exist here (CPUs online: %s)", cpu,
			 keel_topo_cpulist_format(&on, list, sizeof(list)));
	return buf;
}

const char *keel__sys_cpu_isolated = "/sys/devices/system/cpu/isolated";
const char *keel__sys_class_net = "/sys/class/net";

bool
keel__cpu_isolated(unsigned cpu)
{
	struct keel_cpuset set;
	int r = keel__topo_cpulist_read(keel__sys_cpu_isolated, &set);

	/* -ERANGE: it also names CPUs a keel_cpuset cannot hold; the set has the others. */
	return (r == 0 || r == -ERANGE) && keel_cpuset_has(&set, cpu);
}

int
keel__affinity_get(struct keel_cpuset *out, unsigned *beyond, char *why, size_t whylen)
{
	unsigned ncpu = possible_cpus(), extra = 0;

	memset(out, 0, sizeof(*out));
	if (beyond)
		*beyond = 0;
	for (;;) {
		size_t size = CPU_ALLOC_SIZE(ncpu);
		cpu_set_t *set = CPU_ALLOC(ncpu);
		int e;

		if (!set)
			return keel__errf(why, whylen, -ENOMEM,
					  "reading this process's CPU affinity mask (%u CPUs): out "
					  "of memory",
					  ncpu);
		if (keel__sched_getaffinity(0, size, set) == 0) {
			for (size_t c = 0; c < size * 8; c++) {
				if (!CPU_ISSET_S(c, size, set))
					continue;
				if (c < KEEL_MAX_CPUS)
					keel_cpuset_add(out, (unsigned)c);
				else
					extra++;
			}
			CPU_FREE(set);
			if (beyond)
				*beyond = extra;
			return 0;
		}
		e = errno;
		CPU_FREE(set);
		/* EINVAL: the kernel has more CPUs than the mask holds (sysfs can be missing
		 * in a container); try a larger one, up to 2^20 CPUs. */
		if (e != EINVAL || ncpu >= (1u << 20))
			return keel__errf(
				why, whylen, -e,
				"sched_getaffinity (a %zu-byte mask, %u CPUs) failed: %s; keel needs "
				"this process's CPU affinity to place shards",
				size, ncpu, strerror(e));
		ncpu *= 2;
	}
}

int
keel__topo_cpulist_read(const char *path, struct keel_cpuset *out)
{
	/* Whole: a list of every other CPU of a 2,048-CPU machine is 4,565 bytes, and a list
	 * cut short would be refused (after a comma) or name a CPU it does not (in a number).
	 * 1 MiB is far past any list (8,192 CPUs one by one are 40 KiB). */
	size_t cap = 4096, n = 0, got;
	char *buf = malloc(cap), *nb;
	FILE *f = fopen(path, "re");
	int r;

	if (!f || !buf) {
		r = f ? -ENOMEM : -errno;
		if (f)
			fclose(f);
		free(buf);
		return r;
	}
	while ((got = fread(buf + n, 1, cap - 1 - n, f)) > 0) {
		n += got;
		if (n < cap - 1)
			continue;
		nb = cap < (1u << 20) ? realloc(buf, cap * 2) : NULL;
		if (!nb) {
			fclose(f);
			free(buf);
			return cap < (1u << 20) ? -ENOMEM : -EFBIG;
		}
		buf = nb;
		cap *= 2;
	}
	fclose(f);
	buf[n] = 0;
	while (n && isspace((unsigned char)buf[n - 1]))
		buf[--n] = 0;
	if (!n) {
		memset(out, 0, sizeof(*out));
		free(buf);
		return 0;
	}
	r = keel_cpulist_parse(buf, out, NULL, 0);
	free(buf);
	return r;
}

int
keel__topo_sysfs_rxq_count(const char *ifname)
{
	char path[PATH_MAX];
	DIR *d;
	struct dirent *e;
	int n = 0;

	if (!*ifname || strchr(ifname, '/'))
		return -ENODEV;
	snprintf(path, sizeof(path), "%s/%s/queues", keel__sys_class_net, ifname);
	d = opendir(path);
	if (!d)
		return errno == ENOENT ? -ENODEV : -errno;
	while ((e = readdir(d)))
		if (!strncmp(e->d_name, "rx-", 3))
			n++;
	closedir(d);
	return n;
}

/* Whether @s is a PCI bus id, "dddd:bb:dd.f" in hex. */
static bool
pci_bus_id(const char *s)
{
	unsigned dom, bus, dev, fn;
	char end;

	return strlen(s) == 12 && sscanf(s, "%4x:%2x:%2x.%1x%c", &dom, &bus, &dev, &fn, &end) == 4;
}

int
keel__topo_sysfs_pci_of(const char *ifname, char *pci, size_t len, int *numa)
{
	char path[PATH_MAX + 16], real[PATH_MAX], *p;

	pci[0] = 0;
	*numa = -1;
	if (!*ifname || strchr(ifname, '/'))
		return -ENODEV;
	snprintf(path, sizeof(path), "%s/%s/device", keel__sys_class_net, ifname);
	if (!realpath(path, real)) {
		snprintf(path, sizeof(path), "%s/%s", keel__sys_class_net, ifname);
		return access(path, F_OK) == 0 ? -ENOENT : -ENODEV;
	}
	/* The nearest PCI function on the way up: a virtio device sits under its own. */
	while ((p = strrchr(real, '/')) && p != real) {
		if (pci_bus_id(p + 1)) {
			FILE *f;

			keel__topo_strcpy(pci, len, p + 1);
			snprintf(path, sizeof(path), "%s/numa_node", real);
			if ((f = fopen(path, "re"))) {
				if (fscanf(f, "%d", numa) != 1 || *numa < 0)
					*numa = -1;
				fclose(f);
			}
			return 0;
		}
		*p = 0;
	}
	return -ENOENT;
}

int
keel__topo_sysfs_pci_ifname(const char *s, char *id, size_t idlen, char *name, size_t len)
{
	unsigned d, b, sl, fn, n = 0;
	struct dirent *de;
	int end = 0;
	DIR *dir;

	name[0] = 0;
	if (sscanf(s, "%x:%x:%x.%x%n", &d, &b, &sl, &fn, &end) != 4 || s[end]) {
		d = 0;
		end = 0;
		if (sscanf(s, "%x:%x.%x%n", &b, &sl, &fn, &end) != 3 || s[end])
			return -EINVAL;
	}
	if (d > 0xffff || b > 0xff || sl > 0x1f || fn > 7)
		return -EINVAL;
	snprintf(id, idlen, "%04x:%02x:%02x.%x", d, b, sl, fn);
	dir = opendir(keel__sys_class_net);
	while (dir && (de = readdir(dir))) {
		char pci[16];
		int numa;

		/* The function itself, the nearest one above the interface (a bridge or root
		 * port further up is not it). */
		if (de->d_name[0] == '.' ||
		    keel__topo_sysfs_pci_of(de->d_name, pci, sizeof(pci), &numa) < 0 ||
		    strcasecmp(pci, id))
			continue;
		if (!n++)
			keel__topo_strcpy(name, len, de->d_name);
	}
	if (dir)
		closedir(dir);
	return (int)n;
}

static int
count_prefix(const char *dir, const char *prefix)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (!strncmp(e->d_name, prefix, strlen(prefix)))
			n++;
	closedir(d);
	return n;
}

void
keel__topo_sysfs_ifnames(char *buf, size_t len)
{
	DIR *d = opendir(keel__sys_class_net);
	struct dirent *e;
	size_t off = 0;

	buf[0] = 0;
	if (d) {
		while ((e = readdir(d))) {
			int n;
			if (e->d_name[0] == '.' || !strcmp(e->d_name, "lo"))
				continue;
			n = snprintf(buf + off, len - off, "%s%s", off ? ", " : "", e->d_name);
			if (n < 0 || (size_t)n >= len - off)
				break;
			off += (size_t)n;
		}
		closedir(d);
	}
	if (!buf[0])
		snprintf(buf, len, "none");
}

/* The interfaces beneath one, collected by lower_walk. */
struct lowers {
	char name[32][IF_NAMESIZE];
	unsigned n;
};

/* Add to @l the interfaces @ifname is over, following their own lower_NAME links down to
 * those over none; @depth bounds the walk (the kernel refuses loops, a folder standing in
 * for sysfs may not). Returns whether @ifname has any lower_NAME link. */
static bool
lower_walk(const char *ifname, unsigned depth, struct lowers *l)
{
	char path[PATH_MAX];
	struct dirent *e;
	bool any = false;
	DIR *d;

	if (strchr(ifname, '/'))
		return false;
	snprintf(path, sizeof(path), "%s/%s", keel__sys_class_net, ifname);
	d = opendir(path);
	if (!d)
		return false;
	while ((e = readdir(d))) {
		const char *name = e->d_name + 6;
		bool seen = false;

		if (strncmp(e->d_name, "lower_", 6) || !*name || strlen(name) >= IF_NAMESIZE)
			continue;
		any = true;
		if (depth < 8 && lower_walk(name, depth + 1, l))
			continue;
		for (unsigned i = 0; i < l->n && !seen; i++)
			seen = !strcmp(l->name[i], name);
		if (!seen && l->n < sizeof(l->name) / sizeof(l->name[0]))
			keel__topo_strcpy(l->name[l->n++], sizeof(l->name[0]), name);
	}
	closedir(d);
	return any;
}

static int
name_cmp(const void *a, const void *b)
{
	return strcmp(a, b);
}

unsigned
keel__topo_sysfs_lower(const char *ifname, char *buf, size_t len)
{
	struct lowers l;
	size_t off = 0;

	l.n = 0;
	if (len)
		buf[0] = 0;
	lower_walk(ifname, 0, &l);
	qsort(l.name, l.n, sizeof(l.name[0]), name_cmp);
	for (unsigned i = 0; i < l.n && off < len; i++) {
		int w = snprintf(buf + off, len - off, "%s%s", off ? ", " : "", l.name[i]);

		if (w < 0 || (size_t)w >= len - off) {
			buf[off] = 0; /* cut at a whole name */
			break;
		}
		off += (size_t)w;
	}
	return l.n;
}

int
keel__topo_sysfs_virtual(struct keel_topo *t)
{
	DIR *d = opendir(keel__sys_class_net);
	struct dirent *e;

	if (!d)
		return errno == ENOENT ? 0 : -errno;
	while ((e = readdir(d))) {
		struct keel_topo_nic *n;
		char path[PATH_MAX];
		struct stat st;
		bool known = false;

		if (e->d_name[0] == '.' || !strcmp(e->d_name, "lo"))
			continue;
		for (unsigned i = 0; i < t->info.nnics; i++)
			if (!strcmp(t->nics[i].name, e->d_name))
				known = true;
		if (known)
			continue;
		n = keel__topo_nic_add(t);
		if (!n) {
			closedir(d);
			return -ENOMEM;
		}
		keel__topo_strcpy(n->name, sizeof(n->name), e->d_name);
		n->netdev = true;
		/* hwloc skips interfaces it cannot place; one with a device link is a real
		 * device hwloc did not tie to PCI, one without is virtual. */
		snprintf(path, sizeof(path), "%s/%s/device", keel__sys_class_net, e->d_name);
		n->is_virtual = stat(path, &st) < 0;
		if (n->is_virtual)
			n->local = t->info.present;
		/* A bond, VLAN or macvlan: its packets arrive on the queues of the interfaces
		 * beneath it, which the mapper names instead of mapping it. */
		n->nlower = keel__topo_sysfs_lower(n->name, n->lower, sizeof(n->lower));
	}
	closedir(d);
	return 0;
}

enum keel_topo_state
keel__topo_irqbalance(void)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	enum keel_topo_state s = KEEL_TOPO_OFF;

	if (!d)
		return KEEL_TOPO_UNKNOWN;
	while ((e = readdir(d)) && s == KEEL_TOPO_OFF) {
		char path[300], comm[32] = "";
		FILE *f;

		if (!isdigit((unsigned char)e->d_name[0]))
			continue;
		snprintf(path, sizeof(path), "/proc/%s/comm", e->d_name);
		f = fopen(path, "re");
		if (!f)
			continue;
		if (fgets(comm, sizeof(comm), f) && !strncmp(comm, "irqbalance", 10) &&
		    (comm[10] == '\n' || comm[10] == 0))
			s = KEEL_TOPO_ON;
		fclose(f);
	}
	closedir(d);
	/* Not seen from a PID namespace other than the first (a container): /proc lists the
	 * namespace's processes only, and the host's irqbalance, which moves the IRQs all
	 * the same, is not among them. (The first one's inode number is fixed: 0xEFFFFFFC.) */
	if (s == KEEL_TOPO_OFF && !keel__topo_initial_pidns())
		s = KEEL_TOPO_UNKNOWN;
	return s;
}

const char *keel__proc_self_pidns = "/proc/self/ns/pid";

bool
keel__topo_initial_pidns(void)
{
	char link[64] = "";
	ssize_t n = readlink(keel__proc_self_pidns, link, sizeof(link) - 1);

	if (n <= 0)
		return true; /* cannot say: taken as the first, as before */
	link[n] = 0;
	return strcmp(link, "pid:[4026531836]") == 0;
}

/* @w is one of @s's words (split at - _ . : @), any digits after it aside, either case. */
static bool
has_token(const char *s, const char *w)
{
	size_t n = strlen(w);

	for (const char *t = s; *t;) {
		size_t len = strcspn(t, "-_.:@");
		size_t alpha = len;

		while (alpha && isdigit((unsigned char)t[alpha - 1]))
			alpha--;
		if (alpha == n && !strncasecmp(t, w, n))
			return true;
		t += len;
		if (*t)
			t++;
	}
	return false;
}

/* A tx-only vector: a word tx ("i40e-eth0-tx-2") with no word rx; a word holding both
 * ("TxRx", "txrx") is a combined one. Words, not substrings: "ctx" is no tx. */
static bool
tx_only(const char *s)
{
	bool tx = false, rx = false;

	for (const char *t = s; *t;) {
		size_t len = strcspn(t, "-_.:@");

		if (len >= 2) {
			bool word_tx = !strncasecmp(t, "tx", 2), word_rx = !strncasecmp(t, "rx", 2);
			bool both = len >= 4 && ((word_tx && !strncasecmp(t + 2, "rx", 2)) ||
						 (word_rx && !strncasecmp(t + 2, "tx", 2)));
			size_t alpha = len;

			while (alpha && isdigit((unsigned char)t[alpha - 1]))
				alpha--;
			if (both)
				tx = rx = true;
			else if (alpha == 2 && word_tx)
				tx = true;
			else if (alpha == 2 && word_rx)
				rx = true;
		}
		t += len;
		if (*t)
			t++;
	}
	return tx && !rx;
}

/* Blank out @ifname where it stands as words of @name (between its ends and - _ . :): the
 * interface's own name says nothing of the vector, and could read as a queue number
 * ("eth-1") or as a word that is no rx queue ("link0", "ctx0"). */
static void
blank_ifname(char *name, const char *ifname)
{
	size_t k = ifname ? strlen(ifname) : 0;

	if (!k)
		return;
	for (char *t = name; (t = strstr(t, ifname)); t++)
		if ((t == name || strchr("-_.:", t[-1])) && (!t[k] || strchr("-_.:", t[k]))) {
			memset(t, '_', k);
			t += k - 1;
		}
}

int
keel__topo_irq_rxq(const char *irq_name, const char *ifname, unsigned *q)
{
	char name[128];
	char *p, *end;
	unsigned long v;
	size_t n;

	keel__topo_strcpy(name, sizeof(name), irq_name);
	/* mlx5 and others append "@pci:0000:..."; the queue number comes before it. */
	p = strchr(name, '@');
	if (p)
		*p = 0;
	/* The interface's own vector, named as the interface (ixgbe's "other"): no queue. */
	if (ifname && ifname[0] && !strcmp(name, ifname))
		return 0;
	blank_ifname(name, ifname);
	/* Not rx: virtio's "output.N" and "config", tx-only vectors, admin/async/link ones,
	 * idpf's mailbox. Whole words of the name (between - _ . :, digits after them
	 * allowed), so an interface called uplink0 does not make its queues "link" ones. */
	if (has_token(name, "config") || has_token(name, "output") || has_token(name, "async") ||
	    has_token(name, "ctrl") || has_token(name, "misc") || has_token(name, "link") ||
	    has_token(name, "event") || has_token(name, "fdir") || has_token(name, "mailbox"))
		return 0;
	if (tx_only(name))
		return 0;
	n = strlen(name);
	if (!n || !isdigit((unsigned char)name[n - 1]))
		return 0;
	p = name + n;
	while (p > name && isdigit((unsigned char)p[-1]))
		p--;
	/* The queue number is set apart ("eth0-TxRx-3", "input.0"), or follows mlx5's "comp";
	 * a name that only ends in a digit is an interface's own vector (ixgbe names its
	 * "other" vector enp3s0f1) or another numbering (gve's blk0), not a queue. */
	if (p == name ||
	    (!strchr("-_.:", p[-1]) && !(p - name >= 4 && !strncasecmp(p - 4, "comp", 4))))
		return 0;
	/* A queue number, not any number: beyond 65535 (or overflowing) it is no rx queue,
	 * and a wrapped value would pass the caller's bound as a negative int. */
	for (end = p; *end == '0' && isdigit((unsigned char)end[1]);)
		end++;
	if (name + n - end > 5)
		return 0;
	v = strtoul(p, &end, 10);
	if (v > 65535)
		return 0;
	*q = (unsigned)v;
	return 1;
}

/* The numbered entries of the directory @dir, appended to *@irqs (*@n of *@cap used,
 * grown as needed). Returns 0 or -ENOMEM (what was read stays). */
static int
msi_dir_read(const char *dir, int **irqs, int *n, int *cap)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int r = 0;

	if (!d)
		return 0;
	while ((e = readdir(d))) {
		if (!isdigit((unsigned char)e->d_name[0]))
			continue;
		if (*n == *cap) {
			int nc = *cap ? *cap * 2 : 64;
			int *g = nc > *cap ? realloc(*irqs, (size_t)nc * sizeof(**irqs)) : NULL;

			if (!g) {
				r = -ENOMEM;
				break;
			}
			*irqs = g;
			*cap = nc;
		}
		(*irqs)[(*n)++] = atoi(e->d_name);
	}
	closedir(d);
	return r;
}

static int
irq_cmp(const void *a, const void *b)
{
	int x = *(const int *)a, y = *(const int *)b;

	return (x > y) - (x < y);
}

int
keel__topo_msi_irqs(const char *devdir, int **out)
{
	char real[PATH_MAX];
	int *irqs = NULL, n = 0, cap = 0, r = 0;

	*out = NULL;
	if (!realpath(devdir, real))
		return 0;
	for (int up = 0; up < 2 && n == 0 && r == 0; up++) {
		char dir[PATH_MAX + 16];
		char *slash;

		snprintf(dir, sizeof(dir), "%s/msi_irqs", real);
		r = msi_dir_read(dir, &irqs, &n, &cap);
		slash = strrchr(real, '/');
		if (n || !slash || slash == real)
			break;
		/* A PCI function (it has a config space) without MSI IRQs uses a legacy INTx
		 * line: its parent is a PCIe port, whose MSI IRQs are the port's own (AER,
		 * PME), not the NIC's. Only a device that is not one (virtio-net's virtioN)
		 * takes its parent's. */
		snprintf(dir, sizeof(dir), "%s/config", real);
		if (access(dir, F_OK) == 0)
			break;
		*slash = 0;
	}
	if (r < 0) {
		free(irqs);
		return r;
	}
	/* In ascending order, not the directory's (a hash order on some file systems): where
	 * two IRQs name one rx queue, the lower-numbered one is taken, on every run. */
	if (n > 1)
		qsort(irqs, (size_t)n, sizeof(*irqs), irq_cmp);
	*out = irqs;
	return n;
}

int
keel__topo_irq_names_parse(FILE *f, const int *irqs, int n, char (*names)[64])
{
	char *line = NULL;
	size_t cap = 0;
	int found = 0;

	/* getline: a line has one column per CPU, so it has no useful fixed bound (a
	 * 4096-byte buffer ends inside the counts with ~370 CPUs, and the name is lost). */
	while (found < n && getline(&line, &cap, f) > 0) {
		char *p = line, *end, *name;
		long v;

		while (*p == ' ')
			p++;
		v = strtol(p, &end, 10);
		if (end == p || *end != ':')
			continue;
		end += strlen(end);
		while (end > line && isspace((unsigned char)end[-1]))
			*--end = 0;
		name = strrchr(line, ' ');
		name = name ? name + 1 : line;
		for (int i = 0; i < n; i++)
			if (irqs[i] == v && !names[i][0]) {
				keel__topo_strcpy(names[i], 64, name);
				found++;
			}
	}
	free(line);
	return found;
}

/* The action name of every IRQ in @irqs: /sys/kernel/irq/N/actions (one small file each),
 * else one pass over /proc/interrupts for all of them. "" where neither names it. */
static void
irq_names(const int *irqs, int n, char (*names)[64])
{
	bool missing = false;
	FILE *f;

	for (int i = 0; i < n; i++) {
		char path[64];

		names[i][0] = 0;
		snprintf(path, sizeof(path), "/sys/kernel/irq/%d/actions", irqs[i]);
		f = fopen(path, "re");
		if (f) {
			/* "name" or "name1,name2" for a shared line: the first is the device's. */
			if (fgets(names[i], 64, f))
				names[i][strcspn(names[i], ",\n")] = 0;
			fclose(f);
		}
		missing |= !names[i][0];
	}
	if (!missing)
		return;
	f = fopen("/proc/interrupts", "re");
	if (!f)
		return;
	keel__topo_irq_names_parse(f, irqs, n, names);
	fclose(f);
}

/* Whether @irq_name is virtio-pci's vector shared by every virtqueue ("virtio0-virtqueues":
 * when the device has too few MSI-X vectors for one per queue, vp_find_vqs_msix falls back to
 * one for the configuration and one for all the queues). */
static bool
irq_shared_by_virtqueues(const char *irq_name)
{
	size_t n = strlen(irq_name), w = sizeof("-virtqueues") - 1;

	return n > w && !strcmp(irq_name + n - w, "-virtqueues");
}

void
keel__topo_rxq_irqs(struct keel_topo_nic *n, const int *irqs, int nirq, char (*names)[64])
{
	for (int i = 0; i < nirq; i++) {
		unsigned q;

		if (!names[i][0] || !keel__topo_irq_rxq(names[i], n->name, &q))
			continue;
		if (n->nrxq <= 0 || q >= (unsigned)n->nrxq || n->rxq[q].irq >= 0)
			continue;
		n->rxq[q].irq = irqs[i];
		keel__topo_strcpy(n->rxq[q].irq_name, sizeof(n->rxq[q].irq_name), names[i]);
	}
	/* The shared vector is every queue's IRQ: "IRQ unknown" for each, and a "pin it by
	 * hand" line per queue, hid that one IRQ serves them all. */
	for (int i = 0; i < nirq; i++) {
		if (!irq_shared_by_virtqueues(names[i]))
			continue;
		for (int q = 0; q < n->nrxq; q++) {
			if (n->rxq[q].irq >= 0)
				continue;
			n->rxq[q].irq = irqs[i];
			keel__topo_strcpy(n->rxq[q].irq_name, sizeof(n->rxq[q].irq_name), names[i]);
		}
		break;
	}
}

static void
read_irqs(struct keel_topo_nic *n)
{
	char dev[PATH_MAX];
	int *irqs = NULL;
	char(*names)[64] = NULL;
	int nirq;

	snprintf(dev, sizeof(dev), "%s/%s/device", keel__sys_class_net, n->name);
	nirq = keel__topo_msi_irqs(dev, &irqs);
	if (nirq > 0 && !(names = calloc((size_t)nirq, sizeof(*names))))
		nirq = -ENOMEM;
	if (nirq < 0)
		keel_log(KEEL_LOG_WARN, "topo",
			 "%s: no memory for its IRQ list: its rx queues' IRQs are not known",
			 n->name);
	n->has_irqs = nirq > 0;
	irq_names(irqs, nirq > 0 ? nirq : 0, names);
	keel__topo_rxq_irqs(n, irqs, nirq, names);
	free(irqs);
	free(names);
	for (int q = 0; q < n->nrxq; q++) {
		char path[64];
		struct keel_topo_rxq *r = &n->rxq[q];
		int rc;

		if (r->irq < 0)
			continue;
		snprintf(path, sizeof(path), "/proc/irq/%d/smp_affinity_list", r->irq);
		rc = keel__topo_cpulist_read(path, &r->affinity);
		/* -ERANGE: read, but it names CPUs a keel_cpuset cannot hold. */
		r->affinity_known = rc == 0 || rc == -ERANGE;
		r->affinity_beyond = rc == -ERANGE;
	}
}

static int
ethtool_ioctl(int fd, const char *ifname, void *cmd)
{
	struct ifreq ifr;

	memset(&ifr, 0, sizeof(ifr));
	if (strlen(ifname) >= sizeof(ifr.ifr_name))
		return -ENAMETOOLONG; /* interface names are at most IFNAMSIZ - 1 */
	memcpy(ifr.ifr_name, ifname, strlen(ifname) + 1);
	ifr.ifr_data = cmd;
	return ioctl(fd, SIOCETHTOOL, &ifr) < 0 ? -errno : 0;
}

int
keel__topo_rss_table(const char *ifname, uint32_t **table)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ethtool_rxfh_indir head = { .cmd = ETHTOOL_GRXFHINDIR, .size = 0 };
	struct ethtool_rxfh_indir *t;
	int r;

	if (fd < 0)
		return -errno;
	r = ethtool_ioctl(fd, ifname, &head); /* size 0: the table's size */
	if (r == 0 && (head.size == 0 || head.size > 65536))
		r = -EOPNOTSUPP;
	if (r < 0) {
		close(fd);
		return r;
	}
	t = calloc(1, sizeof(*t) + head.size * sizeof(t->ring_index[0]));
	if (!t) {
		close(fd);
		return -ENOMEM;
	}
	t->cmd = ETHTOOL_GRXFHINDIR;
	t->size = head.size;
	r = ethtool_ioctl(fd, ifname, t);
	close(fd);
	if (r == 0) {
		*table = malloc(t->size * sizeof(**table));
		if (*table)
			memcpy(*table, t->ring_index, t->size * sizeof(**table));
		else
			r = -ENOMEM;
	}
	free(t);
	return r < 0 ? r : (int)head.size;
}

static void
read_ethtool(struct keel_topo_nic *n)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ethtool_drvinfo di = { .cmd = ETHTOOL_GDRVINFO };
	struct ethtool_channels ch = { .cmd = ETHTOOL_GCHANNELS };
	struct ethtool_ringparam rp = { .cmd = ETHTOOL_GRINGPARAM };

	if (fd < 0)
		return;
	if (ethtool_ioctl(fd, n->name, &di) == 0)
		keel__topo_strcpy(n->driver, sizeof(n->driver), di.driver);
	if (ethtool_ioctl(fd, n->name, &ch) == 0) {
		n->ch_rx = (int)ch.rx_count;
		n->ch_tx = (int)ch.tx_count;
		n->ch_combined = (int)ch.combined_count;
		n->ch_max_rx = (int)ch.max_rx;
		n->ch_max_tx = (int)ch.max_tx;
		n->ch_max_combined = (int)ch.max_combined;
	}
	if (ethtool_ioctl(fd, n->name, &rp) == 0)
		n->ring_rx = (int)rp.rx_pending;
	close(fd);
}

const char *
keel__topo_sysfs_channel_kind(const char *ifname)
{
	struct keel_topo_nic n;

	memset(&n, 0, sizeof(n));
	n.ch_max_rx = n.ch_max_combined = -1;
	keel__topo_strcpy(n.name, sizeof(n.name), ifname);
	read_ethtool(&n);
	return n.ch_max_combined == 0 && n.ch_max_rx > 0 ? "rx" : "combined";
}

/* ---- ethtool netlink: tcp-data-split and hds-thresh (no ioctl carries them) ---- */

#define NLA_ALIGN4(x) (((x) + 3u) & ~3u)

struct nlbuf {
	char b[1024];
	size_t len;
};

static struct nlattr *
nla_put(struct nlbuf *m, uint16_t type, const void *data, size_t len)
{
	struct nlattr *a = (struct nlattr *)(m->b + m->len);

	if (m->len + NLA_ALIGN4(NLA_HDRLEN + len) > sizeof(m->b))
		return NULL;
	a->nla_type = type;
	a->nla_len = (uint16_t)(NLA_HDRLEN + len);
	if (len)
		memcpy((char *)a + NLA_HDRLEN, data, len);
	m->len += NLA_ALIGN4(a->nla_len);
	return a;
}

/* Send one generic netlink request and receive its reply into @rx. Returns the reply's
 * length, or -errno (a NLMSG_ERROR reply's error included). */
static int
genl_call(int fd, struct nlbuf *m, char *rx, size_t rxlen)
{
	struct nlmsghdr *h = (struct nlmsghdr *)m->b;
	ssize_t r;

	h->nlmsg_len = (uint32_t)m->len;
	if (send(fd, m->b, m->len, 0) < 0)
		return -errno;
	r = recv(fd, rx, rxlen, 0);
	if (r < 0)
		return -errno;
	h = (struct nlmsghdr *)rx;
	if (r < (ssize_t)sizeof(*h) || !NLMSG_OK(h, (size_t)r))
		return -EPROTO;
	if (h->nlmsg_type == NLMSG_ERROR) {
		struct nlmsgerr *e = NLMSG_DATA(h);
		return e->error ? e->error : -ENODATA;
	}
	return (int)r;
}

static void
genl_start(struct nlbuf *m, uint16_t family, uint8_t cmd)
{
	struct nlmsghdr *h;
	struct genlmsghdr *g;

	memset(m, 0, sizeof(*m));
	h = (struct nlmsghdr *)m->b;
	g = (struct genlmsghdr *)(m->b + NLMSG_HDRLEN);
	h->nlmsg_type = family;
	h->nlmsg_flags = NLM_F_REQUEST;
	h->nlmsg_seq = 1;
	g->cmd = cmd;
	g->version = 1;
	m->len = NLMSG_HDRLEN + NLA_ALIGN4(sizeof(*g));
}

/* Walk the attributes of a genl reply: calls back with each top-level attribute. */
#define FOR_EACH_ATTR(a, start, end)                                        \
	for (struct nlattr *a = (struct nlattr *)(start);                   \
	     (char *)a + NLA_HDRLEN <= (end) && a->nla_len >= NLA_HDRLEN && \
	     (char *)a + a->nla_len <= (end);                               \
	     a = (struct nlattr *)((char *)a + NLA_ALIGN4(a->nla_len)))

static void
read_hds(struct keel_topo_nic *n)
{
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
	struct timeval tv = { .tv_sec = 1 };
	struct nlbuf m;
	char *rx = malloc(16384); /* per call: two threads may load topologies at once */
	const size_t rxlen = 16384;
	uint16_t family = 0;
	struct nlattr *nest;
	int r;

	if (fd < 0 || !rx) {
		if (fd >= 0)
			close(fd);
		free(rx);
		return;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	genl_start(&m, GENL_ID_CTRL, CTRL_CMD_GETFAMILY);
	nla_put(&m, CTRL_ATTR_FAMILY_NAME, ETHTOOL_GENL_NAME, sizeof(ETHTOOL_GENL_NAME));
	r = genl_call(fd, &m, rx, rxlen);
	if (r > 0) {
		char *end = rx + ((struct nlmsghdr *)rx)->nlmsg_len;
		char *start = rx + NLMSG_HDRLEN + NLA_ALIGN4(sizeof(struct genlmsghdr));
		if (end > rx + r)
			end = rx + r;
		FOR_EACH_ATTR(a, start, end)
		{
			if (a->nla_type == CTRL_ATTR_FAMILY_ID && a->nla_len >= NLA_HDRLEN + 2)
				memcpy(&family, (char *)a + NLA_HDRLEN, 2);
		}
	}
	if (!family)
		goto out;
	genl_start(&m, family, ETHTOOL_MSG_RINGS_GET);
	nest = nla_put(&m, ETHTOOL_A_RINGS_HEADER | NLA_F_NESTED, NULL, 0);
	if (!nest || !nla_put(&m, ETHTOOL_A_HEADER_DEV_NAME, n->name, strlen(n->name) + 1))
		goto out;
	nest->nla_len = (uint16_t)(m.b + m.len - (char *)nest);
	r = genl_call(fd, &m, rx, rxlen);
	if (r > 0) {
		char *end = rx + ((struct nlmsghdr *)rx)->nlmsg_len;
		char *start = rx + NLMSG_HDRLEN + NLA_ALIGN4(sizeof(struct genlmsghdr));
		bool seen = false;
		if (end > rx + r)
			end = rx + r;
		FOR_EACH_ATTR(a, start, end)
		{
			unsigned char *v = (unsigned char *)a + NLA_HDRLEN;
			uint16_t type = a->nla_type & NLA_TYPE_MASK;
			if (type == RINGS_A_TCP_DATA_SPLIT && a->nla_len >= NLA_HDRLEN + 1) {
				seen = true;
				n->hds_capable = KEEL_TOPO_ON;
				n->hds = v[0] == ETHTOOL_TCP_DATA_SPLIT_ENABLED ? KEEL_TOPO_ON
					 : v[0] == ETHTOOL_TCP_DATA_SPLIT_DISABLED
						 ? KEEL_TOPO_OFF
						 : KEEL_TOPO_UNKNOWN;
			} else if (type == RINGS_A_HDS_THRESH && a->nla_len >= NLA_HDRLEN + 4) {
				uint32_t t;
				memcpy(&t, v, 4);
				n->hds_thresh = (int)t;
			}
		}
		/* The kernel omits the attribute when the driver cannot split at all. */
		if (!seen) {
			n->hds = KEEL_TOPO_OFF;
			n->hds_capable = KEEL_TOPO_OFF;
		}
	}
out:
	close(fd);
	free(rx);
}

void
keel__topo_sysfs_nic(struct keel_topo_nic *n)
{
	char path[PATH_MAX], link[PATH_MAX];
	ssize_t len;
	int rx;

	if (!n->netdev)
		return;
	rx = keel__topo_sysfs_rxq_count(n->name);
	if (rx >= 0) {
		snprintf(path, sizeof(path), "%s/%s/queues", keel__sys_class_net, n->name);
		n->nrxq = rx;
		n->ntxq = count_prefix(path, "tx-");
		n->rxq = rx ? calloc((size_t)rx, sizeof(*n->rxq)) : NULL;
		if (rx && !n->rxq) {
			n->nrxq = -1;
		} else {
			for (int q = 0; q < rx; q++) {
				n->rxq[q].index = (unsigned)q;
				n->rxq[q].irq = -1;
			}
		}
	}
	snprintf(path, sizeof(path), "%s/%s/device/physfn", keel__sys_class_net, n->name);
	n->is_vf = access(path, F_OK) == 0;
	snprintf(path, sizeof(path), "%s/%s/device/driver", keel__sys_class_net, n->name);
	len = readlink(path, link, sizeof(link) - 1);
	if (len > 0) {
		char *b;
		link[len] = 0;
		b = strrchr(link, '/');
		keel__topo_strcpy(n->driver, sizeof(n->driver), b ? b + 1 : link);
	}
	read_ethtool(n);
	read_hds(n);
	if (n->nrxq > 0)
		read_irqs(n);
}
