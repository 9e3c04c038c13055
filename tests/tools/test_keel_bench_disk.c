// SPDX-License-Identifier: MIT
/*
 * keel-bench disk end to end: a short run on a small file under the build tree, --json, and
 * the fields each engine reports. Speeds are never asserted: only that every engine moved
 * data and that the figures agree with one another (MB/s is IOPS times the block size).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "bench_run.h"

/* The number after "key": from @from on; -1 for null; fails when absent. */
static double
field(const char *json, const char *from, const char *key)
{
	char pat[64];
	const char *at = from ? strstr(json, from) : json;

	cr_assert_not_null(at, "no %s in:\n%s", from, json);
	snprintf(pat, sizeof(pat), "\"%s\": ", key);
	at = strstr(at, pat);
	cr_assert_not_null(at, "no %s after %s in:\n%s", key, from ? from : "the start", json);
	at += strlen(pat);
	if (*at == '{')
		at = strstr(at, "\"iops\": ") + strlen("\"iops\": ");
	return strncmp(at, "null", 4) ? strtod(at, NULL) : -1;
}

static void
check_engine(const char *json, const char *wl, const char *eng, double block)
{
	char from[64];
	snprintf(from, sizeof(from), "\"%s\": {", wl);
	const char *w = strstr(json, from);
	cr_assert_not_null(w, "no %s in:\n%s", wl, json);
	snprintf(from, sizeof(from), "\"%s\": {\"iops\"", eng);
	const char *e = strstr(w, from);
	cr_assert_not_null(e, "no %s figures for %s in:\n%s", eng, wl, json);
	double iops = field(e, NULL, "iops"), mbs = field(e, NULL, "mb_s");
	double lo = field(e, NULL, "iops_min"), hi = field(e, NULL, "iops_max");
	cr_assert_gt(iops, 0, "%s %s moved nothing:\n%s", eng, wl, json);
	/* The median of the rounds, within their range. */
	cr_assert(lo > 0 && lo <= iops && iops <= hi, "%s %s: median %.0f outside %.0f-%.0f", eng,
		  wl, iops, lo, hi);
	double want = iops * block / 1e6;
	cr_assert(mbs > want * 0.99 - 0.1 && mbs < want * 1.01 + 0.1,
		  "%s %s: %.1f MB/s is not %.0f IOPS x %.0f bytes", eng, wl, mbs, iops, block);
}

/* @eng's IOPS per round in workload @wl, into @v (at most @max); returns the count. */
static unsigned
rounds_of(const char *json, const char *wl, const char *eng, double *v, unsigned max)
{
	char pat[64];
	const char *at, *end;
	unsigned n = 0;

	snprintf(pat, sizeof(pat), "\"%s\": {", wl);
	at = strstr(json, pat);
	cr_assert_not_null(at, "no %s in:\n%s", wl, json);
	snprintf(pat, sizeof(pat), "\"%s\": {\"iops\"", eng);
	at = strstr(at, pat);
	cr_assert_not_null(at, "no %s in %s:\n%s", eng, wl, json);
	at = strstr(at, "\"iops_rounds\": [");
	cr_assert_not_null(at);
	at += strlen("\"iops_rounds\": [");
	end = strchr(at, ']');
	while (at < end && n < max) {
		char *e;
		v[n++] = strtod(at, &e);
		at = e + strspn(e, ", ");
	}
	return n;
}

static int
cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* keel_to_@eng is the median of the rounds' ratios (not the ratio of the medians, which can
 * pair one engine's fast round with another's slow one), within its reported min-max. */
static void
check_ratio(const char *json, const char *wl, const char *eng)
{
	double k[8], e[8], q[8], want;
	unsigned n = rounds_of(json, wl, "keel", k, 8), m = rounds_of(json, wl, eng, e, 8);
	char key[64], from[64];

	double tol = 0;

	cr_assert(n == m && n > 0, "%s: %u keel rounds, %u %s rounds", wl, n, eng, m);
	for (unsigned i = 0; i < n; i++) {
		/* The report rounds each round's IOPS to a whole number and the ratio to three
		 * places: a ratio from the rounded IOPS is off by up to q (0.5/k + 0.5/e), which
		 * a slow round (1,156 IOPS, under load) takes past any fixed margin. */
		q[i] = k[i] / e[i];
		if (q[i] * (0.5 / k[i] + 0.5 / e[i]) > tol)
			tol = q[i] * (0.5 / k[i] + 0.5 / e[i]);
	}
	tol += 0.0006;
	qsort(q, n, sizeof(q[0]), cmp_d);
	want = n % 2 ? q[n / 2] : (q[n / 2 - 1] + q[n / 2]) / 2;
	snprintf(from, sizeof(from), "\"%s\": {", wl);
	snprintf(key, sizeof(key), "keel_to_%s", eng);
	double got = field(json, from, key);
	cr_assert(got > want - tol && got < want + tol,
		  "%s %s: %.3f, the rounds give %.3f (+-%.4f)", wl, key, got, want, tol);
	snprintf(key, sizeof(key), "keel_to_%s_min", eng);
	cr_assert(field(json, from, key) > q[0] - tol, "%s", json);
	snprintf(key, sizeof(key), "keel_to_%s_max", eng);
	cr_assert(field(json, from, key) < q[n - 1] + tol, "%s", json);
}

static char path[512];

static void
rm_path(void)
{
	if (path[0])
		unlink(path);
}

Test(tools_disk, json_reports_keel_fio_and_threads, .fini = rm_path)
{
	char args[1024], *out;
	bool fio = system("fio --version >/dev/null 2>&1") == 0;

	snprintf(path, sizeof(path), "%s/bench-disk-%d.dat", KEEL_TOOLS_TMP, (int)getpid());
	snprintf(args, sizeof(args),
		 "disk --path '%s' --size 4M --qd 4 --seconds 0.2 --rounds 3 --direct off --json",
		 path);
	int st = bench_once(args, &out);
	cr_assert_eq(st, 0, "keel-bench %s: status %d:\n%s", args, st, out);
	cr_assert_not_null(strstr(out, "\"mode\": \"disk\""), "%s", out);
	cr_assert_not_null(strstr(out, "\"stat\": \"median\""), "%s", out);
	cr_assert_eq(field(out, NULL, "qd"), 4);
	cr_assert_eq(field(out, NULL, "size"), 4 << 20);
	cr_assert_not_null(strstr(out, "\"direct\": false"), "%s", out);
	cr_assert_geq(field(out, NULL, "cpu"), 0, "the shard's CPU, where the baselines ran");
	cr_assert_not_null(strstr(out, "\"baselines_pinned\": true"), "%s", out);
	/* fio and the threads block for completions: keel must not spin by default. */
	cr_assert_eq(field(out, NULL, "keel_idle_poll_us"), 0, "%s", out);
	for (int w = 0; w < 2; w++) {
		const char *wl = w ? "seqwrite_128k" : "randread_4k";
		double block = w ? 131072 : 4096;
		check_engine(out, wl, "keel", block);
		check_engine(out, wl, "threads", block);
		cr_assert_gt(field(out, wl, "keel_to_threads"), 0);
		check_ratio(out, wl, "threads");
		if (fio) {
			check_engine(out, wl, "fio", block);
			cr_assert_gt(field(out, wl, "keel_to_fio"), 0);
			check_ratio(out, wl, "fio");
		}
	}
	if (!fio) {
		cr_log_warn("fio is not installed: its part of the report was not checked");
		cr_assert_null(strstr(out, "\"fio_skipped\": null"), "%s", out);
	} else
		cr_assert_not_null(strstr(out, "\"fio_skipped\": null"), "%s", out);
	free(out);
}

Test(tools_disk, fio_off_reports_why, .fini = rm_path)
{
	char args[1024], *out;

	snprintf(path, sizeof(path), "%s/bench-disk-off-%d.dat", KEEL_TOOLS_TMP, (int)getpid());
	snprintf(
		args, sizeof(args),
		"disk --path '%s' --size 1M --qd 1 --seconds 0.1 --rounds 1 --direct off --fio off "
		"--json",
		path);
	cr_assert_eq(bench_once(args, &out), 0, "%s", out);
	cr_assert_not_null(strstr(out, "\"fio_skipped\": \"--fio off\""), "%s", out);
	cr_assert_not_null(strstr(out, "\"fio\": null"), "%s", out);
	cr_assert_eq(field(out, "randread_4k", "keel_to_fio"), -1);
	free(out);
}

Test(tools_disk, bad_options_exit_2)
{
	char *out;
	const char *bad[] = { "disk --qd 0", "disk --direct maybe", "disk --size 10",
			      "disk --seconds x", "disk --nope",
			      /* NaN and infinity passed the range checks; a sign, strtoul */
			      "disk --seconds nan", "disk --size inf", "disk --size 1e30",
			      "disk --qd -18446744073709551615" };

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		cr_assert_eq(bench_once(bad[i], &out), 2, "%s: %s", bad[i], out);
		cr_assert_not_null(strstr(out, "keel-bench disk"), "%s", out);
		free(out);
	}
}

/* A path with a space (and a quote): fio's command went through the shell unquoted, so its
 * --filename was split and the run failed (a ';' would have run what followed). */
static char spaced_dir[400];

static void
rm_spaced(void)
{
	rm_path();
	if (spaced_dir[0])
		rmdir(spaced_dir);
}

Test(tools_disk, a_path_with_a_space_and_a_quote_reaches_fio_whole, .fini = rm_spaced)
{
	char args[1400], *out;

	if (system("fio --version >/dev/null 2>&1") != 0)
		cr_skip_test("fio is not installed (apt-get install fio)");
	snprintf(spaced_dir, sizeof(spaced_dir), "%s/bench disk's %d", KEEL_TOOLS_TMP,
		 (int)getpid());
	cr_assert_eq(mkdir(spaced_dir, 0700), 0, "%s: %s", spaced_dir, strerror(errno));
	snprintf(path, sizeof(path), "%s/f.dat", spaced_dir);
	/* the shell that bench_once runs gets the path in double quotes */
	snprintf(args, sizeof(args),
		 "disk --path \"%s\" --size 1M --qd 1 --seconds 0.1 --rounds 1 --direct off --json",
		 path);
	cr_assert_eq(bench_once(args, &out), 0, "%s", out);
	cr_assert_not_null(strstr(out, "\"fio_skipped\": null"), "%s", out);
	cr_assert_gt(field(out, "randread_4k", "keel_to_fio"), 0, "%s", out);
	free(out);
}
