/* SPDX-License-Identifier: MIT */
/*
 * The network options on a command line (keel_net_opts_parse) and the check of a whole
 * configuration with the field it fails on (keel_net_config_check): one parser and one set
 * of limits for keel-echo, keel-kv, keel-bench and the applications built on keel, which
 * before each parsed these options with their own ranges.
 */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "net_internal.h"

enum net_opt_kind {
	NOPT_COUNT, /* a plain number */
	NOPT_BYTES, /* a number with an optional k/kb, m/mb, g/gb suffix (powers of 1024) */
	NOPT_MS,    /* milliseconds, kept as nanoseconds */
};

struct net_opt {
	const char *name;
	enum net_opt_kind kind;
	uint64_t lo, hi;
	size_t off;  /* offsetof the field in struct keel_net_config */
	size_t size; /* its size: 4 or 8 */
	const char *help;
};

#define NOPT(n, k, l, h, field, text)                                      \
	{                                                                  \
		n, k, l, h, offsetof(struct keel_net_config, field),       \
			sizeof(((struct keel_net_config *)0)->field), text \
	}

/* The ranges are what one option can hold; the relations between fields (powers of two,
 * bulk above buf) are keel_net_config_check's. */
static const struct net_opt net_opts[] = {
	NOPT("--buf-count", NOPT_COUNT, 1, 32768, buf_count,
	     "receive buffers per shard ring, a power of two (default 256)"),
	NOPT("--buf-size", NOPT_BYTES, 1, 1u << 20, buf_size,
	     "bytes per receive buffer, at most 1m (default 16k)"),
	NOPT("--bulk-buf-count", NOPT_COUNT, 0, 32768, bulk_buf_count,
	     "buffers of the bulk ring, a power of two (default 64)"),
	NOPT("--bulk-buf-size", NOPT_BYTES, 0, 1u << 20, bulk_buf_size,
	     "bytes per bulk buffer, at most 1m; 0 or not above --buf-size: no bulk ring "
	     "(default 64k)"),
	NOPT("--bulk-window", NOPT_BYTES, 0, UINT32_MAX, bulk_window,
	     "most bytes of bulk buffers the kernel is handed at once, in whole buffers, at "
	     "least one (0: every buffer; default 512k)"),
	NOPT("--udp-buf-count", NOPT_COUNT, 1, 32768, udp_buf_count,
	     "UDP receive buffers per shard, a power of two (default 256)"),
	NOPT("--udp-buf-size", NOPT_BYTES, 1, 65536, udp_buf_size,
	     "largest UDP datagram received whole (default 64k)"),
	NOPT("--udp-gso-segs", NOPT_COUNT, 0, KEEL_UDP_GSO_MAX, udp_gso_segs,
	     "most datagrams one UDP sendmsg carries (UDP_SEGMENT; 0 or 1: one each; "
	     "default 64)"),
	NOPT("--udp-send-max", NOPT_COUNT, 0, UINT32_MAX, udp_send_max,
	     "UDP datagrams a shard holds in flight; past it keel_udp_send refuses (0: no "
	     "limit; default 16384)"),
	NOPT("--zc-threshold", NOPT_BYTES, 0, UINT32_MAX, zc_threshold,
	     "sends of this many bytes or more use SEND_ZC (default 4294967295: never)"),
	NOPT("--high-watermark", NOPT_BYTES, 1, UINT32_MAX, high_watermark,
	     "queued send bytes of a connection above which its reading pauses, at least "
	     "--low-watermark (default 1m)"),
	NOPT("--low-watermark", NOPT_BYTES, 0, UINT32_MAX, low_watermark,
	     "queued send bytes below which a paused connection reads again, at most "
	     "--high-watermark (default 256k)"),
	NOPT("--max-files", NOPT_COUNT, 1, 1u << 20, max_files,
	     "direct-descriptor slots per shard, the most connections a shard holds "
	     "(default 4096; at most 1048576 and the hard descriptor limit, ulimit -Hn: the "
	     "soft one is raised to it)"),
	NOPT("--header-timeout-ms", NOPT_MS, 0, 86400000, header_timeout_ns,
	     "abort a connection that has not sent --header-bytes bytes this long after its "
	     "accept (slowloris; default 0: off)"),
	NOPT("--header-bytes", NOPT_BYTES, 1, 1u << 30, header_bytes,
	     "bytes --header-timeout-ms waits for (default 1)"),
	NOPT("--idle-timeout-ms", NOPT_MS, 0, 86400000, idle_timeout_ns,
	     "abort a connection with nothing received and no send completed this long "
	     "(default 0: off)"),
	NOPT("--send-max", NOPT_BYTES, 0, UINT64_MAX, send_max,
	     "queued send bytes per connection; one that would pass it is aborted (0: no "
	     "limit; default 64m)"),
	NOPT("--shard-send-max", NOPT_BYTES, 0, UINT64_MAX, shard_send_max,
	     "queued send bytes for all of a shard's connections (0: no limit; default 1g)"),
};

#define NET_NOPTS (sizeof(net_opts) / sizeof(net_opts[0]))

static int errf(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int
errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (err && errlen)
		vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

static const char *
expects(const struct net_opt *d, char *buf, size_t len)
{
	const char *unit = d->kind == NOPT_MS ? " ms" : d->kind == NOPT_BYTES ? " bytes" : "";

	if (d->hi == UINT64_MAX)
		snprintf(buf, len, "%llu or more%s", (unsigned long long)d->lo, unit);
	else
		snprintf(buf, len, "%llu..%llu%s", (unsigned long long)d->lo,
			 (unsigned long long)d->hi, unit);
	return buf;
}

static int
apply(const struct net_opt *d, const char *s, struct keel_net_config *c, char *err, size_t errlen)
{
	char *end, range[64];
	unsigned long long v;
	unsigned shift = 0;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (d->kind == NOPT_BYTES && end != s) {
		if (!strcasecmp(end, "k") || !strcasecmp(end, "kb"))
			shift = 10;
		else if (!strcasecmp(end, "m") || !strcasecmp(end, "mb"))
			shift = 20;
		else if (!strcasecmp(end, "g") || !strcasecmp(end, "gb"))
			shift = 30;
		if (shift)
			end += strlen(end);
	}
	if (!*s || *s < '0' || *s > '9' || *end || errno || v > (UINT64_MAX >> shift) ||
	    (v << shift) < d->lo || (v << shift) > d->hi)
		return errf(err, errlen, "%s: '%s' is not %s%s", d->name, s,
			    expects(d, range, sizeof(range)),
			    d->kind == NOPT_BYTES ? " (suffixes k, m, g: powers of 1024)" : "");
	v <<= shift;
	if (d->kind == NOPT_MS)
		v = KEEL_MS(v);
	if (d->size == sizeof(uint32_t))
		*(uint32_t *)((char *)c + d->off) = (uint32_t)v;
	else
		*(uint64_t *)((char *)c + d->off) = (uint64_t)v;
	return 0;
}

static bool
pow2_in(uint32_t v, uint32_t hi)
{
	return v && v <= hi && !(v & (v - 1));
}

int
keel_net_config_check(const struct keel_net_config *c, char *err, size_t errlen)
{
	if (!c)
		return errf(err, errlen, "no configuration");
	if (!pow2_in(c->buf_count, 32768))
		return errf(err, errlen,
			    "buf_count (--buf-count) %u: not a power of two from 1 to 32768",
			    c->buf_count);
	if (!c->buf_size || c->buf_size > (1u << 20))
		return errf(err, errlen, "buf_size (--buf-size) %u: not 1..1048576 bytes",
			    c->buf_size);
	if (c->bulk_buf_size > (1u << 20))
		return errf(err, errlen, "bulk_buf_size (--bulk-buf-size) %u: above 1048576 bytes",
			    c->bulk_buf_size);
	/* A bulk_buf_size not above buf_size is no bulk ring: its count does not matter. */
	if (c->bulk_buf_size > c->buf_size && !pow2_in(c->bulk_buf_count, 32768))
		return errf(err, errlen,
			    "bulk_buf_count (--bulk-buf-count) %u: not a power of two from 1 to "
			    "32768 (or turn the bulk ring off with --bulk-buf-size 0)",
			    c->bulk_buf_count);
	if (!pow2_in(c->udp_buf_count, 32768))
		return errf(
			err, errlen,
			"udp_buf_count (--udp-buf-count) %u: not a power of two from 1 to 32768",
			c->udp_buf_count);
	if (!c->udp_buf_size || c->udp_buf_size > 65536)
		return errf(err, errlen, "udp_buf_size (--udp-buf-size) %u: not 1..65536 bytes",
			    c->udp_buf_size);
	if (c->udp_gso_segs > KEEL_UDP_GSO_MAX)
		return errf(err, errlen, "udp_gso_segs (--udp-gso-segs) %u: above %u",
			    c->udp_gso_segs, KEEL_UDP_GSO_MAX);
	if (!c->max_files)
		return errf(err, errlen, "max_files (--max-files) 0: a shard needs a slot");
	/* The option's own bound (the kernel's file-table limit), for a config set in code: past
	 * it the table's registration failed with a line that named direct_fd, not this. */
	if (c->max_files > 1u << 20)
		return errf(err, errlen,
			    "max_files (--max-files) %u: above %u, the most a ring's file table "
			    "holds",
			    c->max_files, 1u << 20);
	if (c->accept_backoff_ns < KEEL_MS(1))
		return errf(err, errlen,
			    "accept_backoff_ns %llu: below 1 ms, an accept that keeps failing "
			    "(EMFILE, ENFILE) would be retried every loop pass",
			    (unsigned long long)c->accept_backoff_ns);
	if (!c->high_watermark)
		return errf(err, errlen,
			    "high_watermark (--high-watermark) 0: at least 1 byte (0 would pause "
			    "reading at every send)");
	if (c->low_watermark > c->high_watermark)
		return errf(err, errlen,
			    "low_watermark (--low-watermark) %u above high_watermark "
			    "(--high-watermark) %u",
			    c->low_watermark, c->high_watermark);
	return 0;
}

int
keel_net_opts_parse(struct keel_net_config *c, int *argc, char **argv, char *err, size_t errlen)
{
	int n = *argc, out = n > 0, i, r; /* argc 0: argv[0] is the NULL */
	const char *bulk_opt = NULL;      /* a bulk ring option given */

	for (i = 1; i < n && strcmp(argv[i], "--"); i++) {
		const char *a = argv[i], *v = NULL;
		const struct net_opt *d = NULL;

		for (size_t k = 0; k < NET_NOPTS; k++) {
			size_t len = strlen(net_opts[k].name);

			if (!strncmp(a, net_opts[k].name, len) && (a[len] == 0 || a[len] == '=')) {
				d = &net_opts[k];
				v = a[len] == '=' ? a + len + 1 : NULL;
				break;
			}
		}
		if (!d) {
			argv[out++] = argv[i];
			continue;
		}
		if (!v) {
			char range[64];

			if (i + 1 >= n)
				return errf(err, errlen, "%s: missing value (expected %s)", d->name,
					    expects(d, range, sizeof(range)));
			v = argv[++i];
		}
		r = apply(d, v, c, err, errlen);
		if (r < 0)
			return r;
		if (!strcmp(d->name, "--bulk-buf-count") || !strcmp(d->name, "--bulk-window"))
			bulk_opt = d->name;
	}
	/* A bulk_buf_size not above buf_size is no bulk ring (--buf-size 64k turns off the
	 * default one): its options were taken and did nothing, said nowhere. With
	 * --bulk-buf-size 0 the ring is off as asked, its other options left as they are. */
	if (bulk_opt && c->bulk_buf_size && c->bulk_buf_size <= c->buf_size)
		return errf(err, errlen,
			    "%s: there is no bulk ring (--bulk-buf-size %u is not above --buf-size "
			    "%u): raise --bulk-buf-size above --buf-size, or leave %s out",
			    bulk_opt, c->bulk_buf_size, c->buf_size, bulk_opt);
	for (; i < n; i++)
		argv[out++] = argv[i];
	argv[out] = NULL;
	*argc = out;
	return keel_net_config_check(c, err, errlen);
}

void
keel_net_opts_help(FILE *f)
{
	fprintf(f, "Network options (keel_net_opts_parse; BYTES take k, m, g: powers of 1024):\n");
	for (size_t k = 0; k < NET_NOPTS; k++) {
		const struct net_opt *d = &net_opts[k];
		const char *arg = d->kind == NOPT_MS ? "MS" : d->kind == NOPT_BYTES ? "BYTES" : "N";

		char opt[48];

		snprintf(opt, sizeof(opt), "%s %s", d->name, arg);
		fprintf(f, "  %-34s %s\n", opt, d->help);
	}
}

void
keel_net_opts_parse_or_exit(struct keel_opts *o, struct keel_net_config *c, int *argc, char **argv,
			    const char *usage)
{
	char err[512];
	const char *prog = *argc > 0 && argv[0] ? strrchr(argv[0], '/') : NULL;
	int r;

	prog = prog ? prog + 1 : (*argc > 0 && argv[0] ? argv[0] : "keel");
	r = keel_opts_parse(o, argc, argv, err, sizeof(err));
	if (r == 1) {
		if (usage)
			fputs(usage, stdout);
		keel_net_opts_help(stdout);
		keel_opts_help(stdout);
		exit(0);
	}
	if (r == 0)
		r = keel_net_opts_parse(c, argc, argv, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "%s: %s\n", prog, err);
		exit(2);
	}
}
