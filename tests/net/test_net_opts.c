// SPDX-License-Identifier: MIT
/*
 * The network options on a command line (keel_net_opts_parse) and the check that names the
 * field a configuration fails on (keel_net_config_check); keel-echo and keel-kv take their
 * network options through them.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <criterion/criterion.h>

#include "helpers.h"

#define MAXARGS 64

/* Parse the space-separated @line (argv[0] added); the rest left in @left, space-separated. */
static int
parse(struct keel_net_config *c, const char *line, char *err, size_t errlen, char *left,
      size_t leftlen)
{
	char buf[512], *argv[MAXARGS + 1], *tok, *save = NULL;
	int argc = 0, r;

	snprintf(buf, sizeof(buf), "%s", line);
	argv[argc++] = "prog";
	for (tok = strtok_r(buf, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		cr_assert_lt(argc, MAXARGS);
		argv[argc++] = tok;
	}
	argv[argc] = NULL;
	err[0] = 0;
	r = keel_net_opts_parse(c, &argc, argv, err, errlen);
	if (left) {
		left[0] = 0;
		for (int i = 1; i < argc; i++) {
			strncat(left, argv[i], leftlen - strlen(left) - 1);
			if (i + 1 < argc)
				strncat(left, " ", leftlen - strlen(left) - 1);
		}
		cr_assert_null(argv[argc]);
	}
	return r;
}

Test(net_opts, options_set_the_fields_and_leave_the_rest_in_order)
{
	struct keel_net_config c, d;
	char err[256], left[256];

	keel_net_config_init(&c);
	d = c;
	cr_assert_eq(
		parse(&c,
		      "--port 7 --buf-count 512 --buf-size=8k --bulk-buf-count 16 "
		      "--bulk-buf-size 1m --bulk-window 2m --udp-buf-count 64 --udp-buf-size 2048 "
		      "--udp-gso-segs 8 --zc-threshold 4kb --max-files 100 --addr x "
		      "--header-timeout-ms 250 --header-bytes 16 --idle-timeout-ms 1000 "
		      "--send-max 2MB --shard-send-max=1g --high-watermark 512k "
		      "--low-watermark=64k -- --buf-count 2",
		      err, sizeof(err), left, sizeof(left)),
		0, "%s", err);
	cr_assert_str_eq(left, "--port 7 --addr x -- --buf-count 2");
	cr_assert_eq(c.buf_count, 512);
	cr_assert_eq(c.buf_size, 8192);
	cr_assert_eq(c.bulk_buf_count, 16);
	cr_assert_eq(c.bulk_buf_size, 1u << 20);
	cr_assert_eq(c.bulk_window, 2u << 20);
	cr_assert_eq(c.udp_buf_count, 64);
	cr_assert_eq(c.udp_buf_size, 2048);
	cr_assert_eq(c.udp_gso_segs, 8);
	cr_assert_eq(c.zc_threshold, 4096);
	cr_assert_eq(c.max_files, 100);
	cr_assert_eq(c.header_timeout_ns, KEEL_MS(250));
	cr_assert_eq(c.header_bytes, 16);
	cr_assert_eq(c.idle_timeout_ns, KEEL_MS(1000));
	cr_assert_eq(c.send_max, 2u << 20);
	cr_assert_eq(c.shard_send_max, UINT64_C(1) << 30);
	cr_assert_eq(c.high_watermark, 512u << 10);
	cr_assert_eq(c.low_watermark, 64u << 10);
	/* What no option names keeps its value. */
	cr_assert_eq(c.close_timeout_ns, d.close_timeout_ns);
	cr_assert_eq(c.nodelay, d.nodelay);
	cr_assert_eq(keel_net_config_set(&c), 0);
	keel_net_config_init(&c);
	cr_assert_eq(keel_net_config_set(&c), 0);
}

Test(net_opts, a_bad_value_names_the_option_and_what_it_takes)
{
	static const struct {
		const char *line, *says;
	} cases[] = {
		{ "--buf-count", "--buf-count: missing value (expected 1..32768)" },
		{ "--buf-count x", "--buf-count: 'x' is not 1..32768" },
		{ "--buf-count -1", "--buf-count: '-1' is not" },
		{ "--buf-count 0", "--buf-count: '0' is not 1..32768" },
		{ "--buf-count 100", "buf_count (--buf-count) 100: not a power of two" },
		{ "--buf-size 2m", "--buf-size: '2m' is not 1..1048576 bytes" },
		{ "--buf-size 4q", "--buf-size: '4q' is not" },
		{ "--bulk-buf-count 3", "(--bulk-buf-count) 3: not a power of two" },
		{ "--udp-buf-count 3", "(--udp-buf-count) 3: not a power of two" },
		{ "--udp-buf-size 65537", "--udp-buf-size: '65537' is not 1..65536 bytes" },
		{ "--udp-gso-segs 65", "--udp-gso-segs: '65' is not 0..64" },
		{ "--zc-threshold 4g", "--zc-threshold: '4g' is not 0..4294967295 bytes" },
		{ "--max-files 0", "--max-files: '0' is not 1..1048576" },
		{ "--header-timeout-ms 86400001",
		  "--header-timeout-ms: '86400001' is not 0..86400000 ms" },
		{ "--send-max 99999999999g", "--send-max: '99999999999g' is not 0 or more bytes" },
		{ "--idle-timeout-ms=", "--idle-timeout-ms: '' is not" },
		{ "--high-watermark 0", "--high-watermark: '0' is not 1..4294967295 bytes" },
		{ "--high-watermark 64k --low-watermark 128k",
		  "low_watermark (--low-watermark) 131072 above high_watermark (--high-watermark) 65536" },
	};
	char err[256];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct keel_net_config c;

		keel_net_config_init(&c);
		cr_expect_eq(parse(&c, cases[i].line, err, sizeof(err), NULL, 0), -EINVAL, "%s",
			     cases[i].line);
		cr_expect(strstr(err, cases[i].says), "%s: '%s', want '%s'", cases[i].line, err,
			  cases[i].says);
	}
}

Test(net_opts, bulk_ring_off_needs_no_valid_count)
{
	struct keel_net_config c;
	char err[256];

	keel_net_config_init(&c);
	cr_assert_eq(parse(&c, "--bulk-buf-count 3 --bulk-buf-size 0", err, sizeof(err), NULL, 0),
		     0, "%s", err);
	/* Not above --buf-size: no bulk ring, so the bulk options do nothing. They were taken
	 * and said nowhere (--buf-size 64k turns off the default ring of 64k buffers). */
	keel_net_config_init(&c);
	cr_assert_eq(parse(&c, "--bulk-buf-count 3 --bulk-buf-size 16k", err, sizeof(err), NULL, 0),
		     -EINVAL, "a bulk option without a bulk ring accepted");
	cr_assert(strstr(err, "--bulk-buf-count: there is no bulk ring"), "%s", err);
	keel_net_config_init(&c);
	cr_assert_eq(parse(&c, "--buf-size 64k --bulk-window 1m", err, sizeof(err), NULL, 0),
		     -EINVAL, "a bulk option without a bulk ring accepted");
	cr_assert(strstr(err, "--bulk-window: there is no bulk ring") &&
			  strstr(err, "raise --bulk-buf-size above --buf-size"),
		  "%s", err);
	keel_net_config_init(&c); /* the default ring of 64k buffers left alone: no option */
	cr_assert_eq(parse(&c, "--buf-size 64k", err, sizeof(err), NULL, 0), 0, "%s", err);
}

Test(net_opts, config_check_names_each_field)
{
	struct keel_net_config c;
	char err[256];

	keel_net_config_init(&c);
	cr_assert_eq(keel_net_config_check(&c, err, sizeof(err)), 0);
	cr_assert_eq(keel_net_config_check(&c, NULL, 0), 0);
	c.low_watermark = c.high_watermark + 1;
	cr_assert_eq(keel_net_config_check(&c, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "low_watermark"), "%s", err);
	cr_assert_eq(keel_net_config_check(&c, NULL, 0), -EINVAL);
	cr_assert_eq(keel_net_config_set(&c), -EINVAL);
	keel_net_config_init(&c);
	c.max_files = 0;
	cr_assert_eq(keel_net_config_check(&c, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "max_files (--max-files)"), "%s", err);
	/* the option's bound, the kernel's file-table limit, holds for a config set in code */
	c.max_files = (1u << 20) + 1;
	cr_assert_eq(keel_net_config_check(&c, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "max_files (--max-files) 1048577: above 1048576"), "%s", err);
	c.max_files = 1u << 20;
	cr_assert_eq(keel_net_config_check(&c, err, sizeof(err)), 0, "%s", err);
	keel_net_config_init(&c);
	c.udp_buf_size = 0;
	cr_assert_eq(keel_net_config_check(&c, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "udp_buf_size (--udp-buf-size)"), "%s", err);
	cr_assert_eq(keel_net_config_check(NULL, err, sizeof(err)), -EINVAL);
}

/* keel-echo and keel-kv: one parser, so the same value gets the same answer from both. */
static int
run_app(const char *prog, const char *opt, const char *val, char *out, size_t outlen)
{
	char path[512], cmd[1024];
	FILE *f;
	size_t n;
	int st;

	snprintf(path, sizeof(path), "%s/%s", KEEL_BIN_DIR, prog);
	snprintf(cmd, sizeof(cmd), "'%s' --port 0 %s %s --shards 1 2>&1 </dev/null", path, opt,
		 val);
	f = popen(cmd, "r");
	cr_assert_not_null(f);
	n = fread(out, 1, outlen - 1, f);
	out[n] = 0;
	while (fgetc(f) != EOF) /* the rest, so the program never writes to a closed pipe */
		;
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

Test(net_opts, keel_echo_and_keel_kv_answer_alike)
{
	static const char *const apps[] = { "keel-echo", "keel-kv" };
	static const struct {
		const char *opt, *val, *says;
	} cases[] = {
		{ "--header-bytes", "2g", "--header-bytes: '2g' is not 1..1073741824 bytes" },
		{ "--send-max", "1x", "--send-max: '1x' is not 0 or more bytes" },
		{ "--buf-count", "100", "buf_count (--buf-count) 100: not a power of two" },
		{ "--max-files", "0", "--max-files: '0' is not 1..1048576" },
	};
	char out[16384];

	for (size_t a = 0; a < 2; a++) {
		for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
			cr_expect_eq(run_app(apps[a], cases[i].opt, cases[i].val, out, sizeof(out)),
				     2, "%s %s %s:\n%s", apps[a], cases[i].opt, cases[i].val, out);
			cr_expect(strstr(out, cases[i].says), "%s %s %s: '%s', want '%s'", apps[a],
				  cases[i].opt, cases[i].val, out, cases[i].says);
		}
		cr_expect_eq(run_app(apps[a], "--help", "", out, sizeof(out)), 0);
		cr_expect(strstr(out, "--udp-gso-segs N") &&
				  strstr(out, "--shard-send-max BYTES") &&
				  strstr(out, "--idle-poll-us"),
			  "%s --help:\n%s", apps[a], out);
	}
}

/* keel-echo's own arguments: '--' ends the options and an argument after it is refused by
 * name ("unknown option --" before); --forward on one shard says that nothing crosses
 * shards (its stats said "relayed for other shards"). */
Test(net_opts, keel_echo_says_what_its_arguments_do)
{
	char out[16384], cmd[1024];
	FILE *f;
	size_t n;
	int st;

	cr_expect_eq(run_app("keel-echo", "--", "--x", out, sizeof(out)), 2, "%s", out);
	cr_expect(strstr(out, "keel-echo: unexpected argument --x"), "%s", out);
	/* --steer and --max-conns shape a TCP listener: with --udp they were taken and
	 * ignored (the UDP echo started). */
	cr_expect_eq(run_app("keel-echo", "--udp --steer", "cpu", out, sizeof(out)), 2, "%s", out);
	cr_expect(strstr(out, "--steer applies to TCP connections: drop it with --udp"), "%s", out);
	cr_expect_eq(run_app("keel-echo", "--udp --max-conns", "5", out, sizeof(out)), 2, "%s",
		     out);
	cr_expect(strstr(out, "--max-conns applies to TCP connections"), "%s", out);
	/* Stopped by SIGTERM once it says it listens (a fixed delay could end a slow start
	 * early); the program's status is the shell's. */
	snprintf(cmd, sizeof(cmd),
		 "o=$(mktemp); '%s/keel-echo' --port 0 --addr 127.0.0.1 --forward --shards 1 "
		 ">\"$o\" 2>&1 </dev/null & p=$!; i=0; while [ $i -lt 600 ] && "
		 "! grep -q 'listening on' \"$o\"; do sleep 0.1; i=$((i + 1)); done; "
		 "kill -TERM $p; wait $p; s=$?; cat \"$o\"; rm -f \"$o\"; exit $s",
		 KEEL_BIN_DIR);
	f = popen(cmd, "r");
	cr_assert_not_null(f);
	n = fread(out, 1, sizeof(out) - 1, f);
	out[n] = 0;
	st = pclose(f);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d: %s", st, out);
	cr_expect(strstr(out, "--forward with one shard relays every frame to that shard itself"),
		  "%s", out);
}

/* keel-echo's own options are written as keel's runtime options are: "--opt=value" (it was
 * "unknown option --port=70000"), a flag with a boolean after '=' ("--udp=off"), and a
 * boolean word after a flag refused naming that form (it was "unknown option off"). --caps
 * exits before anything starts, once every option was read. */
Test(net_opts, keel_echo_takes_its_options_as_keel_takes_its_own)
{
	char out[16384];

	cr_expect_eq(run_app("keel-echo", "--port=70000", "--caps", out, sizeof(out)), 2, "%s",
		     out);
	cr_expect(strstr(out, "--port expects 0..65535, got 70000"), "%s", out);
	cr_expect_eq(run_app("keel-echo", "--steer=bogus", "--caps", out, sizeof(out)), 2, "%s",
		     out);
	cr_expect(strstr(out, "--steer expects cpu, queue or hash, got bogus"), "%s", out);
	cr_expect_eq(run_app("keel-echo", "--max-conns=5 --udp=off --forward=no", "--caps=on", out,
			     sizeof(out)),
		     0, "%s", out);
	cr_expect(strstr(out, "kernel"), "%s", out);
	cr_expect_eq(run_app("keel-echo", "--udp", "off", out, sizeof(out)), 2, "%s", out);
	cr_expect(strstr(out, "--udp takes no separate value: write --udp=off"), "%s", out);
	cr_expect_eq(run_app("keel-echo", "--addr", "--caps", out, sizeof(out)), 2, "%s", out);
	cr_expect(strstr(out, "--addr: missing value"), "%s", out);
}

/* A second SIGINT/SIGTERM exits at once, skipping every destroy: a Unix listener's socket
 * file was left, and the next start failed with EADDRINUSE until it was removed. The
 * program is stopped while both signals are sent, so that its shard reads them together
 * (the second is then certainly "second", not one that came after a finished stop). */
Test(net_opts, a_second_signal_leaves_no_unix_socket_behind)
{
	char out[16384], cmd[1536], path[108];
	FILE *f;
	size_t n;
	int st;

	snprintf(path, sizeof(path), "/tmp/keel-echo-2sig-%d.sock", (int)getpid());
	unlink(path);
	snprintf(cmd, sizeof(cmd),
		 "o=$(mktemp); '%s/keel-echo' --addr unix:%s --port 0 --shards 1 --idle-poll-us 0 "
		 ">\"$o\" 2>&1 </dev/null & p=$!; i=0; while [ $i -lt 600 ] && "
		 "! grep -q 'listening on' \"$o\"; do sleep 0.1; i=$((i + 1)); done; "
		 "kill -STOP $p; kill -INT $p; kill -TERM $p; kill -CONT $p; wait $p; s=$?; "
		 "cat \"$o\"; rm -f \"$o\"; exit $s",
		 KEEL_BIN_DIR, path);
	f = popen(cmd, "r");
	cr_assert_not_null(f);
	n = fread(out, 1, sizeof(out) - 1, f);
	out[n] = 0;
	st = pclose(f);
	if (access(path, F_OK) == 0) { /* the failure: not left for the next run */
		unlink(path);
		cr_assert_fail("%s was left behind: %s", path, out);
	}
	cr_assert(WIFEXITED(st) &&
			  (WEXITSTATUS(st) == 128 + SIGINT || WEXITSTATUS(st) == 128 + SIGTERM),
		  "status %d: %s", st, out);
	cr_assert(strstr(out, "second signal: exiting now"), "%s", out);
}

/* An empty vector (argc 0, argv[0] NULL): nothing parsed, nothing written past argv[0],
 * argc stays 0. */
Test(net_opts, an_empty_vector_is_left_as_it_is)
{
	struct keel_net_config c;
	char err[256] = "";
	char **argv = calloc(1, sizeof(*argv));
	int argc = 0;

	cr_assert_not_null(argv);
	keel_net_config_init(&c);
	cr_assert_eq(keel_net_opts_parse(&c, &argc, argv, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(argc, 0);
	cr_assert_null(argv[0]);
	free(argv);
}

/* The --max-files line of the help: the soft descriptor limit is raised to the hard one
 * (net/shard.c, nofile_fit), so the ceiling is the hard limit and the option's own 1 << 20;
 * it said "at most ulimit -n", the soft limit, which is no ceiling. */
Test(net_opts, the_max_files_help_names_the_hard_descriptor_limit)
{
	char *text = NULL, line[512] = "";
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	const char *p, *e;

	cr_assert_not_null(f);
	keel_net_opts_help(f);
	fclose(f);
	p = strstr(text, "--max-files");
	cr_assert_not_null(p, "%s", text);
	e = strchr(p, '\n');
	snprintf(line, sizeof(line), "%.*s", (int)(e ? e - p : (ptrdiff_t)strlen(p)), p);
	free(text);
	cr_assert(strstr(line, "ulimit -Hn") && strstr(line, "1048576") &&
			  !strstr(line, "ulimit -n"),
		  "'%s'", line);
}
