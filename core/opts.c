// SPDX-License-Identifier: MIT
#include <errno.h>
#include <keel/alloc.h>
#include <keel/opts.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const char *const feature_names[KEEL_FEAT__COUNT] = {
	[KEEL_FEAT_SINGLE_ISSUER] = "single_issuer",
	[KEEL_FEAT_DEFER_TASKRUN] = "defer_taskrun",
	[KEEL_FEAT_REG_RING_FD] = "reg_ring_fd",
	[KEEL_FEAT_REG_BUFFERS] = "reg_buffers",
	[KEEL_FEAT_MULTISHOT_ACCEPT] = "multishot_accept",
	[KEEL_FEAT_MULTISHOT_RECV] = "multishot_recv",
	[KEEL_FEAT_RECV_BUNDLE] = "recv_bundle",
	[KEEL_FEAT_PBUF_INC] = "pbuf_inc",
	[KEEL_FEAT_DIRECT_FD] = "direct_fd",
	[KEEL_FEAT_SEND_ZC] = "send_zc",
	[KEEL_FEAT_MIN_WAIT] = "min_wait",
	[KEEL_FEAT_TASKRUN_FLAG] = "taskrun_flag",
};

static const char *const policy_names[] = {
	[KEEL_POLICY_AUTO] = "auto",
	[KEEL_POLICY_OFF] = "off",
	[KEEL_POLICY_ON] = "on",
};

const char *
keel_feature_name(enum keel_feature f)
{
	return (unsigned)f < KEEL_FEAT__COUNT ? feature_names[f] : NULL;
}

const char *
keel_policy_name(enum keel_policy p)
{
	return (unsigned)p <= KEEL_POLICY_ON ? policy_names[p] : "?";
}

void
keel_opts_init(struct keel_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->idle_poll_us = 50;
	o->wait_coalesce_us = KEEL_WAIT_COALESCE_US_DEFAULT;
	o->ring_entries = 256;
	o->cq_entries = KEEL_CQ_ENTRIES_DEFAULT;
	o->stall_ms = 25;
	o->mailbox_entries = 1024;
	o->mailbox_overflow = KEEL_MAILBOX_OVERFLOW_DEFAULT;
	/* The process's level now (KEEL_LOG_INFO unless the host set another): create applies
	 * it, so a host's keel_log_set_level() before is kept, and a second runtime leaves
	 * the first one's level alone, unless --log-level says otherwise. */
	o->log_level = keel_log_get_level();
	o->signals = true;
	o->memory = 256ULL << 20;
	o->file_qd = KEEL_FILE_QD_DEFAULT;
	o->zcrx = KEEL_POLICY_AUTO;
	o->zcrx_area = KEEL_ZCRX_AREA_DEFAULT;
	o->zcrx_rq_entries = KEEL_ZCRX_RQ_ENTRIES_DEFAULT;
}

static int
parse_uint(const char *name, const char *s, unsigned lo, unsigned hi, unsigned *out, char *err,
	   size_t errlen)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	/* strtoul takes leading spaces and a sign: a number here starts with a digit. */
	if (*s < '0' || *s > '9' || *end || errno || v < lo || v > hi)
		return keel__errf(err, errlen, -EINVAL, "%s: '%s' is not a number in %u..%u", name,
				  s, lo, hi);
	*out = (unsigned)v;
	return 0;
}

int
keel_cpulist_parse(const char *s, struct keel_cpuset *out, char *err, size_t errlen)
{
	const char *p = s;
	unsigned long beyond = 0; /* the first CPU at or above KEEL_MAX_CPUS, 0: none */

	memset(out, 0, sizeof(*out));
	if (!*s)
		return keel__errf(err, errlen, -EINVAL,
				  "--cpuset: empty CPU list (expected e.g. 0-3,6)");
	while (*p) {
		char *end;
		unsigned long a, b;

		if (*p < '0' || *p > '9')
			goto bad;
		a = strtoul(p, &end, 10); /* ULONG_MAX on overflow: beyond the limit too */
		b = a;
		if (*end == '-') {
			p = end + 1;
			if (*p < '0' || *p > '9')
				goto bad;
			b = strtoul(p, &end, 10);
		}
		if (a > b)
			goto bad;
		/* A machine may have more CPUs than the set holds (a kernel list such as
		 * cpu/online "0-1279"): keep the ones that fit, and say so after the whole
		 * list has been checked. */
		if (b >= KEEL_MAX_CPUS && !beyond)
			beyond = a >= KEEL_MAX_CPUS ? a : KEEL_MAX_CPUS;
		for (unsigned long c = a; c <= b && c < KEEL_MAX_CPUS; c++)
			keel_cpuset_add(out, (unsigned)c);
		p = end;
		if (*p == ',' && p[1])
			p++;
		else if (*p) /* anything else, or a comma that ends the list */
			goto bad;
	}
	if (beyond)
		return keel__errf(
			err, errlen, -ERANGE,
			"--cpuset: '%s' has CPU %lu, at or above %d (KEEL_MAX_CPUS, keel's "
			"CPU limit); use CPUs below %d",
			s, beyond, KEEL_MAX_CPUS, KEEL_MAX_CPUS);
	return 0;
bad:
	return keel__errf(err, errlen, -EINVAL,
			  "--cpuset: '%s' is not a CPU list (expected e.g. 0-3,6; CPUs < %d)", s,
			  KEEL_MAX_CPUS);
}

static int
parse_bool(const char *name, const char *s, bool *out, char *err, size_t errlen)
{
	if (!strcmp(s, "1") || !strcmp(s, "on") || !strcmp(s, "true") || !strcmp(s, "yes")) {
		*out = true;
		return 0;
	}
	if (!strcmp(s, "0") || !strcmp(s, "off") || !strcmp(s, "false") || !strcmp(s, "no")) {
		*out = false;
		return 0;
	}
	return keel__errf(err, errlen, -EINVAL, "%s: '%s' is not a boolean (expected on or off)",
			  name, s);
}

/* "SIZE" with an optional K, M or G suffix (powers of 1024), at least 2M. */
static int
parse_size_from(const char *name, const char *s, uint64_t min, const char *mins, uint64_t *out,
		char *err, size_t errlen)
{
	char *end;
	unsigned long long v;
	unsigned shift = 0;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (*end == 'K' || *end == 'k')
		shift = 10;
	else if (*end == 'M' || *end == 'm')
		shift = 20;
	else if (*end == 'G' || *end == 'g')
		shift = 30;
	if (shift)
		end++;
	if (shift && (*end == 'B' || *end == 'b'))
		end++; /* 512MB, as the network options take it */
	if (*s < '0' || *s > '9' || *end || errno || end == s || v > (1ULL << 40) >> shift ||
	    (v << shift) < min)
		return keel__errf(err, errlen, -EINVAL,
				  "%s: '%s' is not a size from %s to 1024G (e.g. 512M, 2G)", name,
				  s, mins);
	*out = (uint64_t)v << shift;
	return 0;
}

/* A size of buffer memory: 2 MiB (a huge page, the least region) to 1 TiB. */
static int
parse_size(const char *name, const char *s, uint64_t *out, char *err, size_t errlen)
{
	return parse_size_from(name, s, 2ULL << 20, "2M", out, err, errlen);
}

/* "name=policy[,name=policy...]" */
static int
parse_features(const char *name, const char *s, struct keel_opts *o, char *err, size_t errlen)
{
	char buf[512];
	char *save = NULL;

	if (strlen(s) >= sizeof(buf))
		return keel__errf(err, errlen, -EINVAL, "%s: value too long", name);
	/* strtok_r passes over empty items: "" or "a=on,,b=off" changed nothing, silently. */
	if (!*s || *s == ',' || s[strlen(s) - 1] == ',' || strstr(s, ",,"))
		return keel__errf(err, errlen, -EINVAL,
				  "%s: '%s' has an empty item: give NAME=off|on|auto[,NAME=...]",
				  name, s);
	strcpy(buf, s);
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		int f = -1, p = -1;

		if (!eq)
			return keel__errf(err, errlen, -EINVAL, "%s: '%s' is not NAME=off|on|auto",
					  name, tok);
		*eq = 0;
		for (int i = 0; i < KEEL_FEAT__COUNT; i++)
			if (!strcmp(tok, feature_names[i]))
				f = i;
		for (int i = 0; i <= KEEL_POLICY_ON; i++)
			if (!strcmp(eq + 1, policy_names[i]))
				p = i;
		if (f < 0) {
			char names[256] = "";
			for (int i = 0; i < KEEL_FEAT__COUNT; i++) {
				strcat(names, i ? ", " : "");
				strcat(names, feature_names[i]);
			}
			return keel__errf(err, errlen, -EINVAL,
					  "%s: unknown feature '%s' (known: %s)", name, tok, names);
		}
		if (p < 0)
			return keel__errf(err, errlen, -EINVAL,
					  "%s: policy '%s' for %s is not off, on or auto", name,
					  eq + 1, tok);
		o->features[f] = (enum keel_policy)p;
	}
	return 0;
}

static int
parse_iface(const char *name, const char *s, size_t len, struct keel_opts *o, char *err,
	    size_t errlen)
{
	/* IFNAMSIZ is 16 with the terminator. */
	if (!len || len >= 16 || memchr(s, '/', len) || memchr(s, ' ', len))
		return keel__errf(err, errlen, -EINVAL,
				  "%s: '%.*s' is not an interface name (1-15 characters, no '/')",
				  name, (int)len, s);
	memcpy(o->iface, s, len);
	o->iface[len] = 0;
	return 0;
}

static void rename_flag(char *err, size_t errlen, const char *flag, const char *name);

/* "IF:LIST": the interface, then the queue of shard 0, 1, ... in order; no queue twice (the
 * map planner's parser, so keel-topo --rxqs and a program's --rxqs read alike). */
static int
parse_rxqs(const char *name, const char *s, struct keel_opts *o, char *err, size_t errlen)
{
	struct keel_map_req req;
	int r;

	keel_map_req_init(&req);
	r = keel_map_req_rxqs_parse(&req, s, err, errlen);
	if (r < 0) {
		rename_flag(err, errlen, "--rxqs", name);
		return r;
	}
	r = parse_iface(name, req.iface, strlen(req.iface), o, err, errlen);
	if (r < 0)
		return r;
	memcpy(o->rxqs, req.rxqs, req.nrxqs * sizeof(o->rxqs[0]));
	o->nrxqs = req.nrxqs;
	return 0;
}

enum opt_id {
	OPT_SHARDS,
	OPT_CPUSET,
	OPT_IDLE_POLL,
	OPT_IDLE_POLL_ADAPTIVE,
	OPT_WAIT_COALESCE,
	OPT_WAIT_COALESCE_FIXED,
	OPT_RING_ENTRIES,
	OPT_CQ_ENTRIES,
	OPT_STALL_MS,
	OPT_MAILBOX,
	OPT_MAILBOX_OVERFLOW,
	OPT_LOG_LEVEL,
	OPT_STATS,
	OPT_FEATURE,
	OPT_MAP,
	OPT_MEMORY,
	OPT_HUGEPAGES,
	OPT_FILE_QD,
	OPT_STOP_DRAIN,
	OPT_STOP_FLUSH,
	OPT_ZCRX,
	OPT_IFACE,
	OPT_RXQS,
	OPT_ZCRX_AREA,
	OPT_ZCRX_RQ,
	OPT_HELP,
};

struct opt_desc {
	enum opt_id id;
	const char *name; /* --name */
	const char *env;  /* KEEL_* */
	const char *arg;  /* NULL: a flag */
	const char *help;
};

static const struct opt_desc opt_table[] = {
	{ OPT_SHARDS, "--shards", "KEEL_SHARDS", "N", "number of shards (default: one per CPU)" },
	{ OPT_CPUSET, "--cpuset", "KEEL_CPUSET", "LIST",
	  "CPUs for shards, e.g. 0-3,8 (default: the process's affinity)" },
	{ OPT_IDLE_POLL, "--idle-poll-us", "KEEL_IDLE_POLL_US", "N",
	  "busy-poll N us before sleeping in the kernel (default 50)" },
	{ OPT_IDLE_POLL_ADAPTIVE, "--idle-poll-adaptive", "KEEL_IDLE_POLL_ADAPTIVE", NULL,
	  "poll only while work came within --idle-poll-us in at least 4 of the last 8 idle "
	  "waits; otherwise sleep at once (default off)" },
	{ OPT_WAIT_COALESCE, "--wait-coalesce-us", "KEEL_WAIT_COALESCE_US", "N",
	  "a sleep may gather completions for up to N us before it wakes the shard, while that "
	  "was measured not to slow the shard's work (adaptive; 0: never; default 10; Linux "
	  "6.12)" },
	{ OPT_WAIT_COALESCE_FIXED, "--wait-coalesce-fixed", "KEEL_WAIT_COALESCE_FIXED", NULL,
	  "every sleep gathers for --wait-coalesce-us, not measured (default off)" },
	{ OPT_RING_ENTRIES, "--ring-entries", "KEEL_RING_ENTRIES", "N",
	  "io_uring SQ entries per shard (default 256)" },
	{ OPT_CQ_ENTRIES, "--cq-entries", "KEEL_CQ_ENTRIES", "N",
	  "io_uring CQ entries per shard, >= --ring-entries; size it for the connections a shard "
	  "serves, about 4 each (default 16384)" },
	{ OPT_STALL_MS, "--stall-ms", "KEEL_STALL_MS", "N",
	  "report loop passes longer than N ms (default 25)" },
	{ OPT_MAILBOX, "--mailbox-entries", "KEEL_MAILBOX_ENTRIES", "N",
	  "slots per shard-pair message queue, a power of two (default 1024)" },
	{ OPT_MAILBOX_OVERFLOW, "--mailbox-overflow", "KEEL_MAILBOX_OVERFLOW", "N",
	  "messages to one shard that may wait on the sender beyond its full queue before "
	  "keel_send returns -EAGAIN (default 16384)" },
	{ OPT_LOG_LEVEL, "--log-level", "KEEL_LOG_LEVEL", "LEVEL",
	  "error, warn, info or debug (default info)" },
	{ OPT_STATS, "--stats", "KEEL_STATS", NULL, "print per-shard counters at exit" },
	{ OPT_FEATURE, "--feature", "KEEL_FEATURE", "NAME=POLICY[,..]",
	  "io_uring feature policy off|on|auto; names: single_issuer, defer_taskrun, reg_ring_fd, "
	  "reg_buffers, multishot_accept, multishot_recv, recv_bundle, pbuf_inc, direct_fd, send_zc, "
	  "min_wait, taskrun_flag" },
	{ OPT_MEMORY, "--memory", "KEEL_MEMORY", "SIZE",
	  "registered buffer memory per shard, K/M/G suffixes (default 256M)" },
	{ OPT_HUGEPAGES, "--hugepages", "KEEL_HUGEPAGES", NULL,
	  "back buffer memory with hugetlbfs pages (reserve them in /proc/sys/vm/nr_hugepages)" },
	{ OPT_MAP, "--map", "KEEL_MAP", "FILE",
	  "core/queue map file written by keel-topo --plan (shard i runs on its CPU)" },
	{ OPT_FILE_QD, "--file-qd", "KEEL_FILE_QD", "N",
	  "disk requests per shard in the ring at once; more wait in a FIFO (default 64)" },
	{ OPT_STOP_DRAIN, "--stop-drain-ms", "KEEL_STOP_DRAIN_MS", "N",
	  "at the stop, cancel the disk requests of the stop hooks still running after N ms, "
	  "where the kernel can (default 0: wait for them)" },
	{ OPT_STOP_FLUSH, "--stop-flush-ms", "KEEL_STOP_FLUSH_MS", "N",
	  "at the stop, close connections gracefully (replies queued are sent) and wait up to "
	  "N ms for them before resetting the rest (default 0: reset them at once)" },
	{ OPT_ZCRX, "--zcrx", "KEEL_ZCRX", "off|on|auto",
	  "zero-copy receive on each shard's rx queue; auto falls back to copying with one line "
	  "naming the kernel's reason (default auto)" },
	{ OPT_IFACE, "--iface", "KEEL_IFACE", "IF", "interface whose rx queues the shards own" },
	{ OPT_RXQS, "--rxqs", "KEEL_RXQS", "IF:LIST",
	  "rx queue of each shard in order, e.g. eth0:0-3 (default: the --map entries)" },
	{ OPT_ZCRX_AREA, "--zcrx-area", "KEEL_ZCRX_AREA", "SIZE",
	  "ZCRX receive area per shard, K/M/G suffixes (default 64M)" },
	{ OPT_ZCRX_RQ, "--zcrx-rq-entries", "KEEL_ZCRX_RQ_ENTRIES", "N",
	  "ZCRX refill ring entries per shard, a power of two up to 32768 (default 4096)" },
	{ OPT_HELP, "--help", NULL, NULL, "show this help" },
};

/* @err starts with @flag (a parser shared with keel-topo names the flag): @name instead. */
static void
rename_flag(char *err, size_t errlen, const char *flag, const char *name)
{
	size_t fl = strlen(flag);
	char tmp[512];

	if (!err || !strcmp(flag, name) || strncmp(err, flag, fl))
		return;
	snprintf(tmp, sizeof(tmp), "%s%s", name, err + fl);
	snprintf(err, errlen, "%s", tmp);
}

/* Option @d's value @v into @o; messages name @name, where the value came from (the flag,
 * or its KEEL_* variable). */
static int
apply(const struct opt_desc *d, const char *name, const char *v, struct keel_opts *o, char *err,
      size_t errlen)
{
	int r;

	switch (d->id) {
	case OPT_SHARDS:
		r = parse_uint(name, v, 1, KEEL_MAX_SHARDS, &o->shards, err, errlen);
		if (r == 0)
			o->shards_given = true;
		return r;
	case OPT_CPUSET:
		r = keel_cpulist_parse(v, &o->cpuset, err, errlen);
		if (r < 0)
			rename_flag(err, errlen, "--cpuset", name);
		if (r == 0)
			o->cpuset_given = true;
		/* A CPU past keel's limit (-ERANGE there) is a bad value here: the parser
		 * promises -EINVAL for every one (the message says which). */
		return r == -ERANGE ? -EINVAL : r;
	case OPT_IDLE_POLL:
		return parse_uint(name, v, 0, KEEL__IDLE_POLL_US_MAX, &o->idle_poll_us, err,
				  errlen);
	case OPT_IDLE_POLL_ADAPTIVE:
		return parse_bool(name, v, &o->idle_poll_adaptive, err, errlen);
	case OPT_WAIT_COALESCE:
		return parse_uint(name, v, 0, KEEL__WAIT_COALESCE_US_MAX, &o->wait_coalesce_us, err,
				  errlen);
	case OPT_WAIT_COALESCE_FIXED:
		return parse_bool(name, v, &o->wait_coalesce_fixed, err, errlen);
	case OPT_RING_ENTRIES:
		return parse_uint(name, v, KEEL__RING_ENTRIES_MIN, KEEL__RING_ENTRIES_MAX,
				  &o->ring_entries, err, errlen);
	case OPT_CQ_ENTRIES:
		return parse_uint(name, v, 16, KEEL_CQ_ENTRIES_MAX, &o->cq_entries, err, errlen);
	case OPT_STALL_MS:
		return parse_uint(name, v, 1, KEEL__STALL_MS_MAX, &o->stall_ms, err, errlen);
	case OPT_MAILBOX:
		r = parse_uint(name, v, KEEL__MAILBOX_ENTRIES_MIN, KEEL__MAILBOX_ENTRIES_MAX,
			       &o->mailbox_entries, err, errlen);
		if (r == 0 && (o->mailbox_entries & (o->mailbox_entries - 1)))
			return keel__errf(err, errlen, -EINVAL, "%s: %u is not a power of two",
					  name, o->mailbox_entries);
		return r;
	case OPT_MAILBOX_OVERFLOW:
		return parse_uint(name, v, 0, KEEL__MAILBOX_OVERFLOW_MAX, &o->mailbox_overflow, err,
				  errlen);
	case OPT_LOG_LEVEL:
		if (keel_log_level_parse(v, &o->log_level))
			return keel__errf(err, errlen, -EINVAL,
					  "%s: '%s' is not error, warn, info or debug", name, v);
		return 0;
	case OPT_STATS:
		return parse_bool(name, v, &o->stats, err, errlen);
	case OPT_FEATURE:
		return parse_features(name, v, o, err, errlen);
	case OPT_MAP:
		/* An empty value ("--map $UNSET") meant no map, silently. */
		if (!*v)
			return keel__errf(err, errlen, -EINVAL,
					  "%s: an empty path: give the map's FILE, or leave %s out",
					  name, name);
		o->map_path = v;
		return 0;
	case OPT_MEMORY: {
		/* The allocator's limit: one fixed-buffer slot per region (keel/alloc.h). */
		uint64_t mem = 0;
		int mr = parse_size(name, v, &mem, err, errlen);
		if (mr < 0) /* the range this option takes, not the sizes' 1024G */
			return keel__errf(err, errlen, -EINVAL,
					  "%s: '%s' is not a size from 2M to %lluG (e.g. 512M, 2G)",
					  name, v,
					  (unsigned long long)(KEEL_ALLOC_MAX_MEMORY >> 30));
		if (mem > KEEL_ALLOC_MAX_MEMORY)
			return keel__errf(err, errlen, -EINVAL,
					  "%s: '%s' is more than the maximum of %lluG per shard "
					  "(%u regions of %llu MiB, one fixed-buffer slot each)",
					  name, v,
					  (unsigned long long)(KEEL_ALLOC_MAX_MEMORY >> 30),
					  KEEL_ALLOC_MAX_REGIONS,
					  (unsigned long long)(KEEL_ALLOC_DEFAULT_REGION >> 20));
		o->memory = mem;
		return 0;
	}
	case OPT_HUGEPAGES:
		return parse_bool(name, v, &o->hugepages, err, errlen);
	case OPT_FILE_QD:
		return parse_uint(name, v, 1, KEEL_FILE_QD_MAX, &o->file_qd, err, errlen);
	case OPT_STOP_DRAIN:
		return parse_uint(name, v, 0, 86400000, &o->stop_drain_ms, err, errlen);
	case OPT_STOP_FLUSH:
		return parse_uint(name, v, 0, 86400000, &o->stop_flush_ms, err, errlen);
	case OPT_ZCRX:
		for (int i = 0; i <= KEEL_POLICY_ON; i++)
			if (!strcmp(v, policy_names[i])) {
				o->zcrx = (enum keel_policy)i;
				return 0;
			}
		return keel__errf(err, errlen, -EINVAL, "%s: '%s' is not off, on or auto", name, v);
	case OPT_IFACE:
		return parse_iface(name, v, strlen(v), o, err, errlen);
	case OPT_RXQS:
		return parse_rxqs(name, v, o, err, errlen);
	case OPT_ZCRX_AREA:
		/* From one page, as opts.h and the set-up allow (not parse_size's 2 MiB). */
		return parse_size_from(name, v, 4096, "4K", &o->zcrx_area, err, errlen);
	case OPT_ZCRX_RQ:
		r = parse_uint(name, v, 1, KEEL_ZCRX_RQ_ENTRIES_MAX, &o->zcrx_rq_entries, err,
			       errlen);
		if (r == 0 && (o->zcrx_rq_entries & (o->zcrx_rq_entries - 1)))
			return keel__errf(err, errlen, -EINVAL, "%s: %u is not a power of two",
					  name, o->zcrx_rq_entries);
		return r;
	case OPT_HELP:
		return 1;
	}
	return -EINVAL;
}

/* After option @d was applied to @o: the interface --iface or --rxqs named, into @ifs or
 * @rqs (their source's). */
static void
iface_note(const struct opt_desc *d, const struct keel_opts *o, char *ifs, char *rqs)
{
	if (d->id == OPT_IFACE)
		snprintf(ifs, 32, "%s", o->iface);
	else if (d->id == OPT_RXQS)
		snprintf(rqs, 32, "%s", o->iface);
}

/* --iface and --rxqs name one interface: --rxqs's queues are not another's (the later
 * option won, silently, and one interface's queue numbers went to the other). Levels, lowest
 * first: the queues set before this call (@pre: the program's, or an earlier call's), the
 * environment ([0]), the command line ([1]). A level's --rxqs replaces the queues below it;
 * its --iface must name the queues' interface, but that the command line's --iface drops
 * KEEL_RXQS's queues (the command line over the environment). Returns 0 or -EINVAL. */
static int
iface_pair(struct keel_opts *o, const char *pre, char ifs[2][32], char rqs[2][32], char *err,
	   size_t errlen)
{
	static const char *const ifn[2] = { "KEEL_IFACE", "--iface" };
	static const char *const rqn[2] = { "KEEL_RXQS", "--rxqs" };
	const char *qif = pre[0] ? pre : NULL;
	int qlvl = -1;

	for (int lvl = 0; lvl < 2; lvl++) {
		if (rqs[lvl][0] && ifs[lvl][0] && strcmp(ifs[lvl], rqs[lvl]))
			return keel__errf(err, errlen, -EINVAL,
					  "%s %s conflicts with %s %s:...: the queues are of one "
					  "interface (drop %s, or name the same one)",
					  ifn[lvl], ifs[lvl], rqn[lvl], rqs[lvl], ifn[lvl]);
		if (rqs[lvl][0]) {
			qif = rqs[lvl];
			qlvl = lvl;
		} else if (ifs[lvl][0] && qif && strcmp(ifs[lvl], qif)) {
			if (qlvl != 0 || lvl != 1)
				return keel__errf(
					err, errlen, -EINVAL,
					"%s %s conflicts with the rx queues of %s set %s (drop %s, or "
					"give the queues of %s with %s)",
					ifn[lvl], ifs[lvl], qif,
					qlvl < 0 ? "before (by the program)" : "in KEEL_RXQS",
					ifn[lvl], ifs[lvl], rqn[lvl]);
			o->nrxqs = 0;
			qif = NULL;
		}
	}
	if (qif)
		snprintf(o->iface, sizeof(o->iface), "%.31s", qif);
	else if (ifs[1][0] || ifs[0][0])
		snprintf(o->iface, sizeof(o->iface), "%.31s", ifs[1][0] ? ifs[1] : ifs[0]);
	return 0;
}

/* The bit of keel_opts.from_env that says option @k's value came from its KEEL_* variable;
 * its bit + 32, that the command line added to it (only --feature adds to its variable's). */
#define FROM_ARGV_TOO 32
_Static_assert(sizeof(opt_table) / sizeof(opt_table[0]) <= FROM_ARGV_TOO, "from_env's halves");

static size_t
opt_index(enum opt_id id)
{
	size_t k = 0;

	while (k < sizeof(opt_table) / sizeof(opt_table[0]) && opt_table[k].id != id)
		k++;
	return k;
}

const char *
keel__opt_name(const struct keel_opts *o, const char *flag)
{
	for (size_t k = 0; k < sizeof(opt_table) / sizeof(opt_table[0]); k++) {
		if (strcmp(opt_table[k].name, flag))
			continue;
		if (!((o->from_env >> k) & 1) || !opt_table[k].env)
			return flag;
		if (opt_table[k].id == OPT_FEATURE && (o->from_env >> (k + FROM_ARGV_TOO)) & 1)
			return "--feature (with KEEL_FEATURE)";
		return opt_table[k].env;
	}
	return flag;
}

/* The keel option at argv[*i], if it is one: its entry into *d (NULL: not keel's, left to
 * the program) and its value into *v, *i moved past a separate value. Returns 0; 1 at "--";
 * -EINVAL (message in @err) for a missing value, or a boolean word after a flag. */
static int
scan(int n, char **argv, int *i, const struct opt_desc **d, const char **v, char *err,
     size_t errlen)
{
	const char *a = argv[*i];

	*d = NULL;
	*v = NULL;
	if (!strcmp(a, "--"))
		return 1;
	for (size_t k = 0; k < sizeof(opt_table) / sizeof(opt_table[0]); k++) {
		size_t len = strlen(opt_table[k].name);
		if (!strncmp(a, opt_table[k].name, len) && (a[len] == 0 || a[len] == '=')) {
			*d = &opt_table[k];
			if (a[len] == '=')
				*v = a + len + 1;
			break;
		}
	}
	if (!*d)
		return 0;
	if ((*d)->arg && !*v) {
		if (*i + 1 >= n)
			return keel__errf(err, errlen, -EINVAL, "%s: missing value (expected %s)",
					  (*d)->name, (*d)->arg);
		*v = argv[++*i];
	} else if (!(*d)->arg && !*v) {
		bool b;

		/* "--stats off" would turn stats on and leave "off" to the program. */
		if (*i + 1 < n && parse_bool((*d)->name, argv[*i + 1], &b, NULL, 0) == 0)
			return keel__errf(err, errlen, -EINVAL,
					  "%s takes no separate value: write %s=%s (or leave %s "
					  "out)",
					  (*d)->name, (*d)->name, argv[*i + 1], (*d)->name);
		*v = "on";
	}
	return 0;
}

/* All or nothing: the options are parsed into a copy and argv is only read, so an error
 * found late (a missing value after others were applied, the interface pair, a bad KEEL_*
 * variable once the command line was read) leaves the caller's options and vector as they
 * were, for a usage message or a parse again with other defaults. On success the copy is
 * committed and argv is compacted by a second scan, which cannot fail (the first passed). */
int
keel_opts_parse(struct keel_opts *o, int *argc, char **argv, char *err, size_t errlen)
{
	enum { NOPT = sizeof(opt_table) / sizeof(opt_table[0]) };
	bool env_bad[NOPT] = { false }, given[NOPT] = { false };
	/* The interfaces of --iface and --rxqs, from the environment [0] and the command line
	 * [1]: checked against each other once both are read (iface_pair). */
	char ifs[2][32] = { "", "" }, rqs[2][32] = { "", "" }, pre[32] = "";
	int n = *argc, out = n > 0, r, help = 0; /* argc 0: argv[0] is the NULL */
	struct keel_opts t = *o;
	int i;

	if (t.nrxqs) /* queues set before: the interface they are of */
		snprintf(pre, sizeof(pre), "%s", t.iface);
	/* The environment first, the command line over it: a bad value in the environment
	 * applies nothing, and is an error unless the command line sets that option (it wins)
	 * or asks for --help. --feature adds to KEEL_FEATURE rather than replacing it, so a
	 * bad KEEL_FEATURE is an error with it too. */
	for (size_t k = 0; k < NOPT; k++) {
		const char *v = opt_table[k].env ? getenv(opt_table[k].env) : NULL;
		struct keel_opts e;

		if (!v)
			continue;
		e = t;
		if (apply(&opt_table[k], opt_table[k].env, v, &e, NULL, 0) < 0) {
			env_bad[k] = true;
		} else {
			t = e;
			t.from_env |= 1ULL << k;
			iface_note(&opt_table[k], &t, ifs[0], rqs[0]);
		}
	}

	for (i = 1; i < n; i++) {
		const struct opt_desc *d;
		const char *v;

		r = scan(n, argv, &i, &d, &v, err, errlen);
		if (r < 0)
			return r;
		if (r == 1)
			break;
		if (!d)
			continue;
		given[d - opt_table] = true;
		/* --feature adds to KEEL_FEATURE's: both named then. */
		if (d->id == OPT_FEATURE && (t.from_env >> (d - opt_table)) & 1)
			t.from_env |= 1ULL << (d - opt_table + FROM_ARGV_TOO);
		else
			t.from_env &= ~(1ULL << (d - opt_table));
		/* --rxqs names the interface: not KEEL_IFACE's any more. */
		if (d->id == OPT_RXQS)
			t.from_env &= ~(1ULL << opt_index(OPT_IFACE));
		r = apply(d, d->name, v, &t, err, errlen);
		if (r < 0)
			return r;
		iface_note(d, &t, ifs[1], rqs[1]);
		if (r == 1)
			help = 1;
	}
	r = iface_pair(&t, pre, ifs, rqs, err, errlen);
	if (r < 0)
		return r;
	for (size_t k = 0; k < NOPT && !help; k++) {
		const char *v = opt_table[k].env;

		if (!env_bad[k] || (given[k] && opt_table[k].id != OPT_FEATURE))
			continue;
		v = getenv(v);
		/* again, for the message: it names the variable, not the option */
		r = apply(&opt_table[k], opt_table[k].env, v, &t, err, errlen);
		return r < 0 ? r : -EINVAL;
	}

	*o = t;
	for (i = 1; i < n; i++) {
		const struct opt_desc *d;
		const char *v;

		if (scan(n, argv, &i, &d, &v, NULL, 0) == 1)
			break;
		if (!d)
			argv[out++] = argv[i];
	}
	for (; i < n; i++)
		argv[out++] = argv[i];
	argv[out] = NULL;
	*argc = out;
	return help;
}

int
keel_opts_next(int argc, char **argv, int *i, const struct keel_app_opt *opts, size_t nopts,
	       const char **value, char *err, size_t errlen)
{
	const char *a, *v = NULL;
	size_t k, len;
	bool b;

	*value = NULL;
	if (*i >= argc)
		return -ENOENT;
	a = argv[*i];
	if (!strcmp(a, "--")) {
		++*i;
		return -ENOENT;
	}
	if (strncmp(a, "--", 2))
		return keel__errf(err, errlen, -EINVAL,
				  "unexpected argument %s (options begin with \"--\"; see --help)",
				  a);
	len = strcspn(a, "=");
	if (len == 2 && a[2] == '=') /* "--=x": read as option "--", which nobody wrote */
		return keel__errf(err, errlen, -EINVAL,
				  "%s: no option name before \"=\" (write --NAME=VALUE; \"--\" "
				  "alone ends the options; see --help)",
				  a);
	for (k = 0; k < nopts; k++)
		if (opts[k].name && strlen(opts[k].name) == len && !strncmp(a, opts[k].name, len))
			break;
	if (k == nopts)
		return keel__errf(err, errlen, -EINVAL, "unknown option %.*s (see --help)",
				  (int)len, a);
	if (a[len] == '=')
		v = a + len + 1;
	if (opts[k].arg && !v) {
		/* "--dir --appendonly yes": the next option is no value of --dir's. */
		if (*i + 1 >= argc)
			return keel__errf(err, errlen, -EINVAL, "%s: missing value (expected %s)",
					  opts[k].name, opts[k].arg);
		if (!strncmp(argv[*i + 1], "--", 2))
			return keel__errf(err, errlen, -EINVAL,
					  "%s: missing value (expected %s) before %s; a value that "
					  "begins with \"--\" is written %s=VALUE",
					  opts[k].name, opts[k].arg, argv[*i + 1], opts[k].name);
		v = argv[++*i];
	} else if (!opts[k].arg && v) {
		if (parse_bool(opts[k].name, v, &b, err, errlen) < 0)
			return -EINVAL;
		v = b ? "on" : "off";
	} else if (!opts[k].arg) {
		/* "--udp off" would turn it on and leave "off" an unexpected argument. */
		if (*i + 1 < argc && parse_bool(opts[k].name, argv[*i + 1], &b, NULL, 0) == 0)
			return keel__errf(err, errlen, -EINVAL,
					  "%s takes no separate value: write %s=%s (or leave %s "
					  "out)",
					  opts[k].name, opts[k].name, argv[*i + 1], opts[k].name);
		v = "on";
	}
	++*i;
	*value = v;
	return (int)k;
}

void
keel_opts_help(FILE *f)
{
	fprintf(f, "Runtime options (each also read from its environment variable):\n");
	for (size_t k = 0; k < sizeof(opt_table) / sizeof(opt_table[0]); k++) {
		const struct opt_desc *d = &opt_table[k];
		char left[64];
		snprintf(left, sizeof(left), "%s%s%s", d->name, d->arg ? " " : "",
			 d->arg ? d->arg : "");
		fprintf(f, "  %-34s %s%s%s%s\n", left, d->help, d->env ? " [" : "",
			d->env ? d->env : "", d->env ? "]" : "");
	}
}

void
keel_opts_parse_or_exit(struct keel_opts *o, int *argc, char **argv, const char *usage)
{
	char err[512];
	const char *prog = (*argc > 0 && argv[0]) ? strrchr(argv[0], '/') : NULL;
	int r;

	prog = prog ? prog + 1 : (*argc > 0 && argv[0] ? argv[0] : "keel");
	r = keel_opts_parse(o, argc, argv, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "%s: %s\n", prog, err);
		exit(2);
	}
	if (r == 1) {
		if (usage)
			fputs(usage, stdout);
		keel_opts_help(stdout);
		exit(0);
	}
}
