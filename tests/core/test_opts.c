// SPDX-License-Identifier: MIT
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <spawn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <liburing.h>

#include "../../core/internal.h"
#include "helpers.h"

extern char **environ;

static int
parse(struct keel_opts *o, char *err, size_t errlen, int *argc, char **argv)
{
	keel_opts_init(o);
	return keel_opts_parse(o, argc, argv, err, errlen);
}

Test(core_opts, parses_owned_options_and_leaves_the_rest_in_order)
{
	struct keel_opts o;
	char err[256];
	char *argv[] = { "prog",
			 "--port",
			 "80",
			 "--shards",
			 "4",
			 "--cpuset=0-1,3",
			 "--idle-poll-us",
			 "0",
			 "--app-flag",
			 "--stats",
			 "--feature",
			 "defer_taskrun=off,reg_ring_fd=on",
			 "--log-level=debug",
			 "--ring-entries",
			 "512",
			 "--stall-ms",
			 "7",
			 "last",
			 NULL };
	int argc = (int)(sizeof(argv) / sizeof(argv[0])) - 1;

	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), 0, "%s", err);
	cr_assert_eq(o.shards, 4);
	cr_assert(keel_cpuset_has(&o.cpuset, 0) && keel_cpuset_has(&o.cpuset, 1) &&
		  !keel_cpuset_has(&o.cpuset, 2) && keel_cpuset_has(&o.cpuset, 3));
	cr_assert(o.cpuset_given);
	cr_assert_eq(o.idle_poll_us, 0);
	cr_assert(o.stats);
	cr_assert_eq(o.features[KEEL_FEAT_DEFER_TASKRUN], KEEL_POLICY_OFF);
	cr_assert_eq(o.features[KEEL_FEAT_REG_RING_FD], KEEL_POLICY_ON);
	cr_assert_eq(o.features[KEEL_FEAT_SINGLE_ISSUER], KEEL_POLICY_AUTO);
	cr_assert_eq(o.log_level, KEEL_LOG_DEBUG);
	cr_assert_eq(o.ring_entries, 512);
	cr_assert_eq(o.stall_ms, 7);
	cr_assert_eq(argc, 5);
	cr_assert_str_eq(argv[1], "--port");
	cr_assert_str_eq(argv[2], "80");
	cr_assert_str_eq(argv[3], "--app-flag");
	cr_assert_str_eq(argv[4], "last");
	cr_assert_null(argv[5]);
}

struct bad_case {
	const char *arg, *val, *must_name;
};

/* A host's own log level survives keel_runtime_create: keel_opts_init starts from the
 * process's level (it was KEEL_LOG_INFO, which create applied over the host's choice); an
 * explicit --log-level still wins. */
/* A create that fails leaves the host's level as it was: the options' level was set
 * before the checks, so a refused create had already changed it. */
Test(core_opts, a_failed_create_leaves_the_hosts_log_level)
{
	struct keel_opts o;
	struct keel_runtime *rt = NULL;

	keel_log_set_level(KEEL_LOG_WARN);
	keel_opts_init(&o);
	o.shards = 1;
	o.signals = false;
	o.log_level = KEEL_LOG_DEBUG;
	o.mailbox_entries = 3;
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	cr_assert_eq(keel_log_get_level(), KEEL_LOG_WARN, "the level is now %d",
		     (int)keel_log_get_level());
	keel_log_set_level(KEEL_LOG_INFO);
}

Test(core_opts, a_hosts_log_level_survives_create_unless_the_options_say_otherwise)
{
	struct keel_opts o;
	struct keel_runtime *rt;
	char err[256] = "";
	char *argv[] = { "prog", "--log-level", "debug", NULL };
	int argc = 3;

	keel_log_set_level(KEEL_LOG_ERROR);
	keel_opts_init(&o);
	o.shards = 1;
	o.signals = false;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	keel_runtime_destroy(rt);
	cr_assert_eq(keel_log_get_level(), KEEL_LOG_ERROR, "the level is now %d",
		     (int)keel_log_get_level());
	keel_opts_init(&o);
	o.shards = 1;
	o.signals = false;
	cr_assert_eq(keel_opts_parse(&o, &argc, argv, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	keel_runtime_destroy(rt);
	cr_assert_eq(keel_log_get_level(), KEEL_LOG_DEBUG);
	keel_log_set_level(KEEL_LOG_INFO);
}

static char opts_logged[1024];

static void
opts_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)level, (void)module, (void)shard, (void)arg;
	snprintf(opts_logged, sizeof(opts_logged), "%s", msg);
}

/* keel_runtime_create refuses, naming the field, what a host set directly that no option
 * could give: a policy past KEEL_POLICY_ON (taken for auto), a log level past debug (debug
 * was turned on), a ring size or idle poll outside the option's range. Each was accepted
 * and the runtime ran. */
static void
refused_directly(void (*set)(struct keel_opts *), const char *want)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt = NULL;

	set(&o);
	opts_logged[0] = 0;
	keel_log_set_sink(opts_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL, "%s: accepted", want);
	keel_log_set_sink(NULL, NULL);
	cr_assert(strstr(opts_logged, want), "'%s' not in '%s'", want, opts_logged);
}

static void
bad_feature(struct keel_opts *o)
{
	o->features[KEEL_FEAT_SEND_ZC] = (enum keel_policy)7;
}
static void
bad_zcrx(struct keel_opts *o)
{
	o->zcrx = (enum keel_policy)9;
}
static void
bad_level(struct keel_opts *o)
{
	o->log_level = (enum keel_log_level)99;
}
static void
bad_ring(struct keel_opts *o)
{
	o->ring_entries = 3;
}
static void
bad_poll(struct keel_opts *o)
{
	o->idle_poll_us = 4000000000u;
}

static void
zero_file_qd(struct keel_opts *o)
{
	o->file_qd = 0; /* taken as the default, silently */
}

static void
big_file_qd(struct keel_opts *o)
{
	o->file_qd = KEEL_FILE_QD_MAX + 1; /* taken as it was */
}

static void
bad_memory(struct keel_opts *o)
{
	o->memory = 1u << 20; /* every shard failed at start with "Invalid argument" */
}

/* Options that ask for what another turns off were accepted and did nothing: a fixed
 * gathering, or min_wait required, with no window; adaptive polling with no poll. */
static void
fixed_without_window(struct keel_opts *o)
{
	o->wait_coalesce_fixed = true;
	o->wait_coalesce_us = 0;
}
static void
min_wait_on_without_window(struct keel_opts *o)
{
	o->features[KEEL_FEAT_MIN_WAIT] = KEEL_POLICY_ON;
	o->wait_coalesce_us = 0;
}
static void
adaptive_without_poll(struct keel_opts *o)
{
	o->idle_poll_adaptive = true;
	o->idle_poll_us = 0;
}

Test(core_opts, contradictory_options_are_refused_naming_the_way_out)
{
	refused_directly(fixed_without_window,
			 "--wait-coalesce-fixed needs --wait-coalesce-us > 0 (give a window, or "
			 "drop --wait-coalesce-fixed)");
	refused_directly(min_wait_on_without_window,
			 "--feature min_wait=on needs --wait-coalesce-us > 0");
	refused_directly(adaptive_without_poll,
			 "--idle-poll-adaptive needs --idle-poll-us > 0 (give a window, or drop "
			 "--idle-poll-adaptive)");
}

/* The same from the command line: what a person types gets the same refusal. */
Test(core_opts, contradictory_options_from_the_command_line_are_refused)
{
	char err[256], a0[] = "prog", a1[] = "--wait-coalesce-fixed", a2[] = "--wait-coalesce-us",
		       a3[] = "0";
	char *argv[] = { a0, a1, a2, a3, NULL };
	int argc = 4;
	struct keel_opts o;
	struct keel_runtime *rt;

	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), 0, "%s", err);
	o.shards = 1;
	o.signals = false;
	o.log_level = KEEL_LOG_WARN;
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
}

/* Lines at WARN and above, each on its own line. */
static char warned[4096];

static void
warn_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	size_t n = strlen(warned);

	(void)module, (void)shard, (void)arg;
	if (level <= KEEL_LOG_WARN && n < sizeof(warned))
		snprintf(warned + n, sizeof(warned) - n, "%s\n", msg);
}

static int
create_warned(struct keel_opts *o)
{
	struct keel_runtime *rt = NULL;
	int r;

	warned[0] = 0;
	keel_log_set_sink(warn_sink, NULL);
	r = keel_runtime_create(o, &rt);
	keel_log_set_sink(NULL, NULL);
	keel_runtime_destroy(rt);
	return r;
}

/* --wait-coalesce-fixed where the ring cannot gather (defer_taskrun off: min_wait is not
 * used) is accepted with a WARN naming it; it was an INFO line about min_wait alone. */
Test(core_opts, fixed_gathering_without_min_wait_warns_naming_the_option)
{
	struct keel_opts o = test_opts(1);

	o.wait_coalesce_fixed = true;
	o.features[KEEL_FEAT_DEFER_TASKRUN] = KEEL_POLICY_OFF;
	cr_assert_eq(create_warned(&o), 0);
	cr_assert(strstr(warned, "--wait-coalesce-fixed: the sleeps cannot gather here") &&
			  strstr(warned, "defer_taskrun"),
		  "warned: '%s'", warned);
	o = test_opts(1); /* gathering allowed: no such line (where the kernel has min_wait) */
	o.wait_coalesce_fixed = true;
	cr_assert_eq(create_warned(&o), 0);
	if (keel_caps_get()->ring_features & IORING_FEAT_MIN_TIMEOUT)
		cr_assert(!strstr(warned, "--wait-coalesce-fixed"), "warned: '%s'", warned);
}

Test(core_opts, values_set_directly_that_no_option_gives_are_refused)
{
	refused_directly(bad_memory, "--memory 1048576 bytes: from 2M to");
	refused_directly(bad_feature, "(--feature send_zc) is 7: not a policy");
	refused_directly(bad_zcrx, "keel_opts.zcrx (--zcrx) is 9");
	refused_directly(bad_level, "keel_opts.log_level 99");
	refused_directly(bad_ring, "--ring-entries 3");
	refused_directly(bad_poll, "--idle-poll-us 4000000000");
	refused_directly(zero_file_qd, "--file-qd 0: from 1 to 65536");
	refused_directly(big_file_qd, "--file-qd 65537: from 1 to 65536");
}

Test(core_opts, malformed_values_are_rejected_naming_the_option)
{
	static const struct bad_case cases[] = {
		{ "--shards", "0", "--shards" },
		{ "--shards", "abc", "--shards" },
		{ "--shards", "-1", "--shards" },
		{ "--shards", " 3", "--shards" }, /* strtoul's spaces and sign: once taken */
		{ "--shards", "+3", "--shards" },
		{ "--memory", " 4M", "--memory" },
		{ "--memory", "+4M", "--memory" },
		/* the range this option takes (it said "from 2M to 1024G") */
		{ "--memory", "2000G", "from 2M to 64G" },
		{ "--cpuset", "3-1", "--cpuset" },
		{ "--cpuset", "0,,x", "--cpuset" },
		{ "--idle-poll-us", "1e3", "--idle-poll-us" },
		{ "--ring-entries", "4", "--ring-entries" },
		{ "--cq-entries", "8", "--cq-entries" },
		{ "--cq-entries", "131072", "--cq-entries" },
		{ "--mailbox-entries", "1000", "--mailbox-entries" },
		{ "--log-level", "loud", "--log-level" },
		{ "--feature", "warp_drive=on", "warp_drive" },
		{ "--feature", "defer_taskrun=maybe", "defer_taskrun" },
		{ "--stall-ms", "", "--stall-ms" },
		/* Empty: no map and no feature change, said nowhere. */
		{ "--map", "", "--map: an empty path" },
		{ "--feature", "", "--feature: '' has an empty item" },
		{ "--feature", "send_zc=on,,bundles=off", "has an empty item" },
		{ "--feature", "send_zc=on,", "has an empty item" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct keel_opts o;
		char err[256] = "";
		char *argv[] = { "prog", (char *)cases[i].arg, (char *)cases[i].val, NULL };
		int argc = 3;

		cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), -EINVAL, "%s %s accepted",
			     cases[i].arg, cases[i].val);
		cr_assert(strstr(err, cases[i].must_name), "message '%s' does not name %s", err,
			  cases[i].must_name);
	}
}

Test(core_opts, missing_value_is_an_error)
{
	struct keel_opts o;
	char err[256];
	char *argv[] = { "prog", "--shards", NULL };
	int argc = 2;

	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), -EINVAL);
	cr_assert(strstr(err, "--shards") && strstr(err, "missing"), "%s", err);
}

/* A flag takes its value after '=' only: "--stats off" turned stats on and left "off" to
 * the program (keel-echo then said "unknown option off"; a program with positional
 * arguments took it for one). A boolean word after a flag is refused naming the form to
 * write; any other word stays the program's. */
Test(core_opts, a_boolean_word_after_a_flag_is_refused_naming_the_form)
{
	struct keel_opts o;
	char err[256];

	{
		char *argv[] = { "prog", "--stats", "off", NULL };
		int argc = 3;

		cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), -EINVAL);
		cr_assert(strstr(err, "--stats takes no separate value: write --stats=off"), "%s",
			  err);
	}
	{
		char *argv[] = { "prog", "--hugepages", "yes", NULL };
		int argc = 3;

		cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), -EINVAL);
		cr_assert(strstr(err, "--hugepages=yes"), "%s", err);
	}
	{
		char *argv[] = { "prog", "--stats=off", "--hugepages", "host", NULL };
		int argc = 4;

		cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), 0, "%s", err);
		cr_assert_eq(o.stats, false);
		cr_assert_eq(o.hugepages, true);
		cr_assert_eq(argc, 2);
		cr_assert_str_eq(argv[1], "host");
	}
}

/* keel_opts_next reads a program's own options by keel_opts_parse's rules: "--opt value",
 * "--opt=value", a flag alone or "=off", "--" the end (the index after it left to the
 * program), and each error said naming the option and the form to write. */
Test(core_opts, a_programs_own_options_are_read_by_keels_rules)
{
	static const struct keel_app_opt own[] = { { "--port", "0..65535" },
						   { NULL, NULL }, /* skipped */
						   { "--udp", NULL } };
	char *argv[] = { "prog", "--port", "7", "--udp=off", "--port=8", "--udp", "--", "x", NULL };
	const char *v;
	char err[256];
	int i = 1;

	cr_assert_eq(keel_opts_next(8, argv, &i, own, 3, &v, err, sizeof(err)), 0);
	cr_assert_str_eq(v, "7");
	cr_assert_eq(keel_opts_next(8, argv, &i, own, 3, &v, err, sizeof(err)), 2);
	cr_assert_str_eq(v, "off");
	cr_assert_eq(keel_opts_next(8, argv, &i, own, 3, &v, err, sizeof(err)), 0);
	cr_assert_str_eq(v, "8");
	cr_assert_eq(keel_opts_next(8, argv, &i, own, 3, &v, err, sizeof(err)), 2);
	cr_assert_str_eq(v, "on");
	cr_assert_eq(keel_opts_next(8, argv, &i, own, 3, &v, err, sizeof(err)), -ENOENT);
	cr_assert_eq(i, 7, "the index after \"--\": %d", i);
	i = 8;
	cr_assert_eq(keel_opts_next(8, argv, &i, own, 3, &v, err, sizeof(err)), -ENOENT);

	static const struct {
		const char *args[3], *says;
	} bad[] = {
		{ { "--port", NULL }, "--port: missing value (expected 0..65535)" },
		{ { "--port", "--udp" },
		  "a value that begins with \"--\" is written --port=VALUE" },
		{ { "--udp", "off" }, "--udp takes no separate value: write --udp=off" },
		{ { "--udp=maybe" }, "--udp: 'maybe' is not a boolean" },
		{ { "--bogus=1" }, "unknown option --bogus" },
		{ { "stray" }, "unexpected argument stray" },
	};
	for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
		char *a[4] = { "prog", (char *)bad[k].args[0], (char *)bad[k].args[1], NULL };
		int n = a[2] ? 3 : 2;

		i = 1;
		err[0] = 0;
		cr_expect_eq(keel_opts_next(n, a, &i, own, 3, &v, err, sizeof(err)), -EINVAL, "%s",
			     bad[k].says);
		cr_expect(strstr(err, bad[k].says), "%s: %s", bad[k].says, err);
	}
}

/* "--=x" has no option name before its "=": it was said as "unknown option --", a name
 * nobody wrote. It is said as what it is, with the forms that are meant. */
Test(core_opts, an_option_with_an_empty_name_is_said_as_one)
{
	static const struct keel_app_opt own[] = { { "--port", "0..65535" } };
	char *argv[] = { "prog", "--=x", NULL };
	const char *v;
	char err[256] = "";
	int i = 1;

	cr_assert_eq(keel_opts_next(2, argv, &i, own, 1, &v, err, sizeof(err)), -EINVAL);
	cr_assert_null(strstr(err, "unknown option"), "%s", err);
	cr_assert(strstr(err, "--=x: no option name before \"=\" (write --NAME=VALUE"), "%s", err);
}

Test(core_opts, environment_is_read_and_argv_overrides_it)
{
	struct keel_opts o;
	char err[256];
	char *argv[] = { "prog", "--stall-ms", "9", NULL };
	int argc = 3;

	setenv("KEEL_SHARDS", "3", 1);
	setenv("KEEL_STALL_MS", "40", 1);
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), 0, "%s", err);
	cr_assert_eq(o.shards, 3);
	cr_assert_eq(o.stall_ms, 9);
	setenv("KEEL_SHARDS", "many", 1);
	argc = 1;
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), -EINVAL);
	cr_assert(strstr(err, "KEEL_SHARDS"), "%s", err);
	unsetenv("KEEL_SHARDS");
	unsetenv("KEEL_STALL_MS");
}

/* A bad environment value is not an error when the command line sets that option (it
 * wins), nor for --help; the parse stopped at it before the command line was read. */
Test(core_opts, a_bad_environment_value_the_command_line_overrides_is_no_error)
{
	struct keel_opts o;
	char err[256];
	char *argv[] = { "prog", "--shards", "2", NULL }, *help[] = { "prog", "--help", NULL };
	char *none[] = { "prog", NULL };
	int argc = 3;

	setenv("KEEL_SHARDS", "abc", 1);
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), 0, "%s", err);
	cr_assert_eq(o.shards, 2);
	argc = 2;
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, help), 1, "%s", err);
	argc = 1;
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, none), -EINVAL);
	cr_assert(strstr(err, "KEEL_SHARDS: 'abc'"), "%s", err);
	unsetenv("KEEL_SHARDS");
}

/* --feature adds to KEEL_FEATURE, so a bad KEEL_FEATURE stays an error with --feature on
 * the command line, and applies none of its words (its first word was applied before). */
Test(core_opts, a_bad_keel_feature_is_an_error_beside_feature_and_applies_nothing)
{
	struct keel_opts o;
	char err[256];
	char *argv[] = { "prog", "--feature", "min_wait=off", NULL };
	int argc = 3;

	setenv("KEEL_FEATURE", "send_zc=on,direct_fd=of", 1);
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), -EINVAL, "%s", err);
	cr_assert(strstr(err, "KEEL_FEATURE: policy 'of' for direct_fd"), "%s", err);
	unsetenv("KEEL_FEATURE");
	keel_opts_init(&o);
	setenv("KEEL_FEATURE", "send_zc=on,direct_fd=of", 1);
	argc = 2;
	argv[1] = "--help";
	cr_assert_eq(keel_opts_parse(&o, &argc, argv, err, sizeof(err)), 1, "%s", err);
	cr_assert_neq(o.features[KEEL_FEAT_SEND_ZC], KEEL_POLICY_ON,
		      "a bad KEEL_FEATURE's first word was applied");
	unsetenv("KEEL_FEATURE");
}

/* The CQ is sized on its own (for connections), and never below the SQ. */
Test(core_opts, cq_entries_sets_the_ring_cq_and_must_cover_the_sq)
{
	struct keel_opts o;
	struct keel_runtime *rt;
	char err[256];
	char *argv[] = { "prog", "--cq-entries", "4096", NULL };
	int argc = 3;

	keel_opts_init(&o);
	cr_assert_eq(o.cq_entries, KEEL_CQ_ENTRIES_DEFAULT);
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), 0, "%s", err);
	cr_assert_eq(o.cq_entries, 4096);
	setenv("KEEL_CQ_ENTRIES", "2048", 1);
	argc = 1;
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), 0, "%s", err);
	unsetenv("KEEL_CQ_ENTRIES");
	cr_assert_eq(o.cq_entries, 2048);
	o = test_opts(1);
	o.ring_entries = 1024;
	o.cq_entries = 512;
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
}

/* Fields set directly are checked as the parser checks them: a gathering window over
 * 100 ms is refused at create. */
Test(core_opts, wait_coalesce_us_set_directly_is_checked_at_create)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;

	o.wait_coalesce_us = 100001;
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	o.wait_coalesce_us = 100000;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	keel_runtime_destroy(rt);
}

/* The same for --stall-ms (0 made every pass a stall: a warning each second, stalls equal
 * to passes), --mailbox-entries (over 2^20: a huge allocation per shard pair) and
 * --mailbox-overflow (over 2^24). */
Test(core_opts, stall_ms_and_mailbox_entries_set_directly_are_checked_at_create)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;

	o.stall_ms = 0;
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	o = test_opts(1);
	o.mailbox_entries = 1u << 21;
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	o.mailbox_entries = 1u << 10;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	keel_runtime_destroy(rt);
	/* --mailbox-overflow past the parser's 2^24 (48 bytes a message waiting: 768 MiB
	 * per destination) was taken. */
	o = test_opts(1);
	o.mailbox_overflow = (1u << 24) + 1;
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	o.mailbox_overflow = 1u << 24;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	keel_runtime_destroy(rt);
}

/* A --cpuset CPU past keel's limit is -EINVAL, as the parser promises for every bad value
 * (it was -ERANGE, which a caller checking for -EINVAL missed). */
Test(core_opts, a_cpuset_past_the_cpu_limit_is_einval)
{
	char err[256], a0[] = "prog", a1[] = "--cpuset", a2[] = "100000";
	char *argv[] = { a0, a1, a2, NULL };
	int argc = 3;
	struct keel_opts o;

	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), -EINVAL, "%s", err);
	cr_assert_not_null(strstr(err, "KEEL_MAX_CPUS"), "%s", err);
}

/* --zcrx-area takes sizes from one page, as opts.h says and the set-up allows; it refused
 * anything under 2 MiB (buffer memory's floor), while the field set directly took 64K. */
Test(core_opts, zcrx_area_takes_sizes_from_one_page)
{
	char err[256], a0[] = "prog", a1[] = "--zcrx-area", a2[] = "64K", a3[] = "1K";
	char *argv[] = { a0, a1, a2, NULL };
	int argc = 3;
	struct keel_opts o;

	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), 0, "%s", err);
	cr_assert_eq(o.zcrx_area, 64u << 10);
	argv[2] = a3;
	argc = 3;
	argv[1] = a1;
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), -EINVAL);
	cr_assert_not_null(strstr(err, "from 4K"), "%s", err);
}

/* Sizes take the suffixes the network options take (512MB as 512M); they refused "MB". */
Test(core_opts, sizes_take_a_b_after_the_suffix_as_the_network_options_do)
{
	char err[256], a0[] = "prog", a1[] = "--memory", a2[] = "512MB", a3[] = "--zcrx-area",
		       a4[] = "64kb", a5[] = "2Mx";
	char *argv[] = { a0, a1, a2, a3, a4, NULL };
	int argc = 5;
	struct keel_opts o;

	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), 0, "%s", err);
	cr_assert_eq(o.memory, 512ull << 20);
	cr_assert_eq(o.zcrx_area, 64u << 10);
	argv[1] = a1;
	argv[2] = a5;
	argv[3] = NULL;
	argc = 3;
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), -EINVAL);
}

Test(core_opts, help_is_reported)
{
	struct keel_opts o;
	char err[256];
	char *argv[] = { "prog", "--help", NULL };
	int argc = 2;

	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), 1);
}

Test(core_opts, cpuset_outside_the_affinity_mask_fails_start)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;

	keel_cpuset_add(&o.cpuset, KEEL_MAX_CPUS - 1);
	o.cpuset_given = true;
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
}

/* The affinity mask keel reads is the creating thread's: a thread pinned to one CPU before
 * it creates the runtime has --cpuset naming another CPU refused, and the message says the
 * mask is that thread's and what to do (it said "this process's" and stopped there). */
static char pinned_logged[4096];

static void
pinned_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)level;
	(void)module;
	(void)shard;
	(void)arg;
	if (strstr(msg, "--cpuset"))
		snprintf(pinned_logged, sizeof(pinned_logged), "%s", msg);
}

Test(core_opts, a_cpuset_outside_a_pinned_creators_mask_says_the_mask_is_the_threads)
{
	struct keel_opts o = test_opts(1);
	struct keel_runtime *rt;
	cpu_set_t all, one;
	int other = -1;

	cr_assert_eq(sched_getaffinity(0, sizeof(all), &all), 0);
	for (int c = 0; c < CPU_SETSIZE && other < 0; c++)
		if (CPU_ISSET(c, &all) && c != sched_getcpu())
			other = c;
	if (other < 0)
		cr_skip_test("one CPU allowed: nothing to pin away from");
	CPU_ZERO(&one);
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &all) && c != other) {
			CPU_SET(c, &one);
			break;
		}
	cr_assert_eq(sched_setaffinity(0, sizeof(one), &one), 0);
	keel_cpuset_add(&o.cpuset, (unsigned)other);
	o.cpuset_given = true;
	keel_log_set_sink(pinned_sink, NULL);
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(sched_setaffinity(0, sizeof(all), &all), 0);
	cr_assert(strstr(pinned_logged, "creating thread's") &&
			  strstr(pinned_logged, "create the runtime first"),
		  "%s", pinned_logged);
}

/* The program contract: a bad option exits with status 2 and one line naming it. */
static int
run_capture(char *const argv[], char *out, size_t outlen)
{
	posix_spawn_file_actions_t fa;
	int pfd[2], status;
	pid_t pid;

	cr_assert_eq(pipe(pfd), 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 2);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
	posix_spawn_file_actions_addclose(&fa, pfd[0]);
	cr_assert_eq(posix_spawn(&pid, argv[0], &fa, NULL, argv, environ), 0, "spawn %s", argv[0]);
	close(pfd[1]);
	status = wait_child_output(pid, pfd[0], out, outlen, TEST_WAIT_MS, argv[0]);
	close(pfd[0]);
	posix_spawn_file_actions_destroy(&fa);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

Test(core_opts, program_exits_2_naming_a_bad_option)
{
	char out[4096];
	char *bad_value[] = { KEEL_BIN_DIR "/keel-bench", "xshard", "--ring-entries", "lots",
			      NULL };
	char *unknown[] = { KEEL_BIN_DIR "/keel-bench", "xshard", "--frobnicate", NULL };
	char *help[] = { KEEL_BIN_DIR "/keel-bench", "xshard", "--help", NULL };

	cr_assert_eq(run_capture(bad_value, out, sizeof(out)), 2, "%s", out);
	cr_assert(strstr(out, "--ring-entries"), "%s", out);
	cr_assert_eq(strchr(out, '\n'), out + strlen(out) - 1, "more than one line: %s", out);
	cr_assert_eq(run_capture(unknown, out, sizeof(out)), 2, "%s", out);
	cr_assert(strstr(out, "--frobnicate"), "%s", out);
	cr_assert_eq(run_capture(help, out, sizeof(out)), 0, "%s", out);
	cr_assert(strstr(out, "--idle-poll-us") && strstr(out, "--stall-ms") &&
			  strstr(out, "--cpuset") && strstr(out, "--feature"),
		  "%s", out);
}

/* keel's zero-copy sends ask for the kernel's copy report (IORING_SEND_ZC_REPORT_USAGE,
 * Linux 6.2): the probe finds it on such a kernel, and a kernel without it (6.1 has both
 * zero-copy opcodes without it, and failed every such send with -EINVAL) is probed false.
 * Only the first case can run on a machine of 6.2 or later. */
Test(core_opts, the_zero_copy_copy_report_is_probed)
{
	struct utsname u;
	unsigned maj = 0, min = 0;

	cr_assert_eq(uname(&u), 0);
	cr_assert_eq(sscanf(u.release, "%u.%u", &maj, &min), 2, "release %s", u.release);
	/* One way only: a distribution kernel may have the features backported below the
	 * release that brought them. */
	if (maj > 6 || (maj == 6 && min >= 2))
		cr_assert(keel_caps_get()->zc_report_usage, "kernel %s: no copy report probed",
			  u.release);
	/* The same for IORING_ASYNC_CANCEL_ANY (5.19), without which a runtime is refused at
	 * create (its stop could never cancel what is in flight, and the join hung). */
	if (maj > 5 || (maj == 5 && min >= 19))
		cr_assert(keel_caps_get()->cancel_any, "kernel %s: no CANCEL_ANY probed",
			  u.release);
}

/* The probe of registered ring descriptors runs on the calling thread, which may hold the
 * most a thread may (16: -EBUSY): the kernel has the feature all the same, and each shard's
 * thread has its own 16. It was recorded missing for the process's life, blaming the
 * kernel ("need Linux 5.18 or later"), and --feature reg_ring_fd=on refused to start. */
Test(core_opts, a_thread_holding_sixteen_ring_descriptors_still_finds_them_supported)
{
	struct io_uring rings[16];
	struct keel_opts o = test_opts(1);
	struct keel_feature_decision d[KEEL_FEAT__COUNT];
	int r;

	for (unsigned i = 0; i < 16; i++) {
		cr_assert_eq(io_uring_queue_init(2, &rings[i], 0), 0);
		r = io_uring_register_ring_fd(&rings[i]);
		if (r == -EINVAL)
			cr_skip_test("this kernel has no registered ring descriptors (5.18)");
		cr_assert_eq(r, 1, "ring %u: %s", i, strerror(-r));
	}
	cr_assert(keel_caps_get()->reg_ring_fd, "the probe took this thread's full table for "
						"a kernel without the feature");
	o.features[KEEL_FEAT_REG_RING_FD] = KEEL_POLICY_ON;
	cr_assert_eq(keel_features_decide(&o, d), 0);
	cr_assert(d[KEEL_FEAT_REG_RING_FD].used);
	for (unsigned i = 0; i < 16; i++)
		io_uring_queue_exit(&rings[i]);
}

/* TCP's zero-copy sends go from fixed buffers only: with reg_buffers off, send_zc says it
 * serves UDP alone, naming reg_buffers (it said "kernel has it" while every TCP send went
 * out plain); UDP's zero-copy sends need no fixed buffer, so it stays used, also when
 * forced on. */
Test(core_opts, send_zc_without_registered_buffers_says_it_serves_udp_alone)
{
	struct keel_opts o = test_opts(1);
	struct keel_feature_decision d[KEEL_FEAT__COUNT];

	if (!keel_caps_get()->zc_report_usage)
		cr_skip_test("no SEND_ZC with the copy report on this kernel (6.2)");
	o.features[KEEL_FEAT_REG_BUFFERS] = KEEL_POLICY_OFF;
	cr_assert_eq(keel_features_decide(&o, d), 0);
	cr_assert(d[KEEL_FEAT_SEND_ZC].used, "%s", d[KEEL_FEAT_SEND_ZC].reason);
	cr_assert(strstr(d[KEEL_FEAT_SEND_ZC].reason, "UDP only") &&
			  strstr(d[KEEL_FEAT_SEND_ZC].reason, "reg_buffers"),
		  "%s", d[KEEL_FEAT_SEND_ZC].reason);
	o.features[KEEL_FEAT_SEND_ZC] = KEEL_POLICY_ON;
	cr_assert_eq(keel_features_decide(&o, d), 0);
	o.features[KEEL_FEAT_REG_BUFFERS] = KEEL_POLICY_AUTO;
	if (keel_caps_get()->reg_buffers) {
		cr_assert_eq(keel_features_decide(&o, d), 0);
		cr_assert(!strstr(d[KEEL_FEAT_SEND_ZC].reason, "UDP only"), "%s",
			  d[KEEL_FEAT_SEND_ZC].reason);
	}
}

/* Accepted, but 'on' means "require it": a runtime with send_zc=on and reg_buffers off
 * warns that TCP's sends go plain, naming --feature reg_buffers=auto|on (it said so at
 * DEBUG only); under auto it stays the decision's reason, with no WARN. */
Test(core_opts, send_zc_on_without_registered_buffers_warns_that_tcp_goes_plain)
{
	struct keel_opts o = test_opts(1);

	if (!keel_caps_get()->zc_report_usage)
		cr_skip_test("no SEND_ZC with the copy report on this kernel (6.2)");
	o.features[KEEL_FEAT_SEND_ZC] = KEEL_POLICY_ON;
	o.features[KEEL_FEAT_REG_BUFFERS] = KEEL_POLICY_OFF;
	cr_assert_eq(create_warned(&o), 0);
	cr_assert(strstr(warned, "--feature send_zc=on") &&
			  strstr(warned, "--feature reg_buffers=auto|on"),
		  "warned: '%s'", warned);
	o.features[KEEL_FEAT_SEND_ZC] = KEEL_POLICY_AUTO;
	cr_assert_eq(create_warned(&o), 0);
	cr_assert(!strstr(warned, "send_zc"), "warned under auto: '%s'", warned);
}

/* A log line longer than keel_log's buffer (4 KiB) ends with a mark saying it was cut and
 * how long it was; it was cut at 1 KiB without a word, and a message that names a long
 * path first (--map PATH: reason) lost its reason. */
static char long_logged[8192];

static void
long_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)level;
	(void)module;
	(void)shard;
	(void)arg;
	snprintf(long_logged, sizeof(long_logged), "%s", msg);
}

Test(core_opts, a_log_line_too_long_says_it_was_cut)
{
	static char big[6001];

	memset(big, 'a', sizeof(big) - 1);
	keel_log_set_sink(long_sink, NULL);
	keel_log(KEEL_LOG_ERROR, "test", "%.2000s END", big);
	cr_assert_eq(strlen(long_logged), 2004, "a line of 2,004 bytes is whole");
	keel_log(KEEL_LOG_ERROR, "test", "%s END", big);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(strlen(long_logged), 4095);
	cr_assert(strstr(long_logged, " [... cut: 6004 bytes in all]"), "%s", long_logged + 4000);
}

/* A feature forced on against the policy of one it needs: the kernel has both, so the fix is
 * a policy. It said "forced on but unavailable: ... (kernel 6.x); use --feature
 * defer_taskrun=auto to fall back", where single_issuer=off was the cause. */
Test(core_opts, a_feature_forced_on_against_one_it_needs_names_that_policy)
{
	struct keel_feature_decision d[KEEL_FEAT__COUNT];
	struct keel_opts o;

	keel_opts_init(&o);
	o.features[KEEL_FEAT_SINGLE_ISSUER] = KEEL_POLICY_OFF;
	o.features[KEEL_FEAT_DEFER_TASKRUN] = KEEL_POLICY_ON;
	long_logged[0] = 0;
	keel_log_set_sink(long_sink, NULL);
	int r = keel_features_decide(&o, d);
	keel_log_set_sink(NULL, NULL);
	if (r == -EPERM || r == -ENOSYS)
		cr_skip_test("io_uring cannot be probed here (%s)", strerror(-r));
	if (!strstr(d[KEEL_FEAT_SINGLE_ISSUER].reason, "policy"))
		cr_skip_test("single_issuer: %s", d[KEEL_FEAT_SINGLE_ISSUER].reason);
	cr_assert_eq(r, -EOPNOTSUPP);
	cr_assert(strstr(long_logged, "defer_taskrun is forced on but needs single_issuer") &&
			  strstr(long_logged, "drop --feature single_issuer=off") &&
			  !strstr(long_logged, "unavailable"),
		  "%s", long_logged);
}

/* A level outside the enum: keel_log_set_level took it as it was, and keel_opts_init copied
 * it, so the runtime's create failed on "opts.log_level 4"; keel_log wrote a line at such a
 * level with its name read past the level names (ASan: global-buffer-overflow). */
Test(core_opts, a_log_level_outside_the_enum_is_kept_in_range)
{
	struct keel_opts o;

	keel_log_set_level((enum keel_log_level)(KEEL_LOG_DEBUG + 1));
	cr_assert_eq(keel_log_get_level(), KEEL_LOG_DEBUG);
	keel_opts_init(&o);
	cr_assert_eq(o.log_level, KEEL_LOG_DEBUG);
	long_logged[0] = 0;
	keel_log_set_sink(long_sink, NULL);
	keel_log((enum keel_log_level)(KEEL_LOG_DEBUG + 1), "test", "past debug");
	keel_log((enum keel_log_level) - 1, "test", "below error");
	cr_assert_str_eq(long_logged, "", "%s", long_logged);
	keel_log(KEEL_LOG_DEBUG, "test", "debug");
	cr_assert_str_eq(long_logged, "debug");
	keel_log_set_sink(NULL, NULL);
	keel_log_set_level((enum keel_log_level) - 1);
	cr_assert_eq(keel_log_get_level(), KEEL_LOG_ERROR);
	keel_log_set_level(KEEL_LOG_INFO);
}

/* An empty vector (argc 0, argv[0] NULL, as an embedder may pass): nothing parsed, nothing
 * written past argv[0], and argc stays 0 (it was written as 1, argv[1] past the end). */
Test(core_opts, an_empty_vector_is_left_as_it_is)
{
	struct keel_opts o;
	char err[256] = "";
	char **argv = calloc(1, sizeof(*argv));
	int argc = 0;

	cr_assert_not_null(argv);
	keel_opts_init(&o);
	cr_assert_eq(keel_opts_parse(&o, &argc, argv, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(argc, 0);
	cr_assert_null(argv[0]);
	free(argv);
}

/* --iface and --rxqs name one interface: in either order, two different ones are refused
 * (the later one won, and one interface's queue numbers went to the other). */
Test(core_opts, iface_and_rxqs_naming_different_interfaces_are_refused)
{
	const char *orders[][5] = {
		{ "prog", "--iface", "eth0", "--rxqs", "eth1:0" },
		{ "prog", "--rxqs", "eth1:0", "--iface", "eth0" },
		{ "prog", "--iface", "eth1", "--rxqs", "eth1:0" },
	};

	for (unsigned i = 0; i < 3; i++) {
		struct keel_opts o;
		char *argv[6] = { (char *)orders[i][0], (char *)orders[i][1], (char *)orders[i][2],
				  (char *)orders[i][3], (char *)orders[i][4], NULL };
		char err[256] = "";
		int argc = 5, r;

		keel_opts_init(&o);
		r = keel_opts_parse(&o, &argc, argv, err, sizeof(err));
		if (i < 2) {
			cr_assert_eq(r, -EINVAL, "order %u: %d", i, r);
			cr_assert(strstr(err, "conflicts with"), "order %u: %s", i, err);
		} else {
			cr_assert_eq(r, 0, "the same interface: %s", err);
			cr_assert_str_eq(o.iface, "eth1");
			cr_assert_eq(o.nrxqs, 1);
		}
	}
}

/* The command line over the environment, for the pair too: its --rxqs replaces KEEL_RXQS
 * and wins over KEEL_IFACE, its --iface drops KEEL_RXQS's queues; a later --rxqs replaces
 * an earlier one. KEEL_IFACE and KEEL_RXQS naming different interfaces are refused, by
 * name. (The first version of the check refused each of the first four.) */
Test(core_opts, the_command_line_sets_the_interface_over_the_environment)
{
	struct {
		const char *iface_env, *rxqs_env, *a1, *a2;
		int want;
		const char *iface;
		unsigned nrxqs;
	} cases[] = {
		{ NULL, "eth0:0-3", "--rxqs", "eth1:0-1", 0, "eth1", 2 },
		{ "eth1", NULL, "--rxqs", "eth0:0-3", 0, "eth0", 4 },
		{ NULL, "eth0:0-3", "--iface", "eth1", 0, "eth1", 0 },
		{ NULL, NULL, "--rxqs=eth0:0", "--rxqs=eth1:0-2", 0, "eth1", 3 },
		{ "eth0", "eth1:0", NULL, NULL, -EINVAL, NULL, 0 },
	};

	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct keel_opts o;
		char *argv[4] = { "prog", NULL, NULL, NULL };
		char err[256] = "";
		int argc = 1, r;

		if (cases[i].a1) {
			argv[argc++] = (char *)cases[i].a1;
			argv[argc++] = (char *)cases[i].a2;
		}
		if (cases[i].iface_env)
			setenv("KEEL_IFACE", cases[i].iface_env, 1);
		if (cases[i].rxqs_env)
			setenv("KEEL_RXQS", cases[i].rxqs_env, 1);
		keel_opts_init(&o);
		r = keel_opts_parse(&o, &argc, argv, err, sizeof(err));
		unsetenv("KEEL_IFACE");
		unsetenv("KEEL_RXQS");
		cr_assert_eq(r, cases[i].want, "case %u: %d %s", i, r, err);
		if (r < 0) {
			cr_assert(strstr(err, "KEEL_IFACE eth0 conflicts with KEEL_RXQS eth1"),
				  "case %u: %s", i, err);
			continue;
		}
		cr_assert_str_eq(o.iface, cases[i].iface, "case %u", i);
		cr_assert_eq(o.nrxqs, cases[i].nrxqs, "case %u", i);
	}
}

/* io_uring refused: the message named the sysctl (kernel.io_uring_disabled=0) whatever it
 * read, where a container's seccomp profile is the usual cause. A seccomp filter here
 * refuses io_uring_setup with EPERM; the sysctl is a file of the test's. */
static void
refuse_syscall(unsigned nr)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { .len = sizeof(f) / sizeof(f[0]), .filter = f };

	cr_assert_eq(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0, "%s", strerror(errno));
	cr_assert_eq(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog), 0, "%s", strerror(errno));
}

Test(core_opts, io_uring_refused_names_what_refuses_it)
{
	static const struct {
		const char *sysctl, *group, *said;
	} cases[] = {
		{ "0\n", "-1\n", "a seccomp filter refuses it" },
		{ "1\n", NULL, "kernel.io_uring_group" },
		/* The group it names (root's, gid 0, has a name everywhere), or that none may. */
		{ "1\n", "0\n",
		  "only CAP_SYS_ADMIN and group root (gid 0, kernel.io_uring_group)" },
		{ "1\n", "-1\n", "kernel.io_uring_group is -1 (no group): only CAP_SYS_ADMIN" },
		{ "2\n", "-1\n", "is 2 (off for every process): set it to 0" },
	};
	struct keel_feature_decision d[KEEL_FEAT__COUNT];
	char path[] = "/tmp/keel-iou-disabled-XXXXXX";
	char gpath[] = "/tmp/keel-iou-group-XXXXXX";
	struct keel_opts o;
	int fd = mkstemp(path);

	cr_assert_geq(fd, 0);
	close(fd);
	fd = mkstemp(gpath);
	cr_assert_geq(fd, 0);
	close(fd);
	keel__sys_io_uring_disabled = path;
	refuse_syscall(__NR_io_uring_setup);
	keel_opts_init(&o);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		FILE *f = fopen(path, "w");

		cr_assert_not_null(f);
		fputs(cases[i].sysctl, f);
		fclose(f);
		/* No group file: the sysctl read as not there. */
		unlink(gpath);
		if (cases[i].group) {
			cr_assert_not_null(f = fopen(gpath, "w"));
			fputs(cases[i].group, f);
			fclose(f);
		}
		keel__sys_io_uring_group = gpath;
		long_logged[0] = 0;
		keel_log_set_sink(long_sink, NULL);
		int r = keel_features_decide(&o, d);
		keel_log_set_sink(NULL, NULL);
		cr_assert_eq(r, -EPERM, "%d", r);
		cr_assert(strstr(long_logged, cases[i].said), "sysctl %s: %s", cases[i].sysctl,
			  long_logged);
	}
	unlink(path);
	unlink(gpath);
}

/* A seccomp profile that allows io_uring_setup and io_uring_enter but refuses
 * io_uring_register: the probe's op list came back NULL from liburing, which the probe took
 * for a memory shortage ("memory ran out for a trial ring", -ENOMEM, probed again at every
 * start). It is the profile, and the message says which call to allow. */
Test(core_opts, a_refused_io_uring_register_names_the_profile_not_memory)
{
	struct keel_feature_decision d[KEEL_FEAT__COUNT];
	struct keel_opts o;
	FILE *f;
	char buf[4096];
	size_t n;

	refuse_syscall(__NR_io_uring_register);
	keel_opts_init(&o);
	long_logged[0] = 0;
	keel_log_set_sink(long_sink, NULL);
	int r = keel_features_decide(&o, d);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(r, -EPERM, "%d %s", r, long_logged);
	cr_assert(strstr(long_logged, "io_uring_register is refused"), "%s", long_logged);
	cr_assert(strstr(long_logged, "allow io_uring_register"), "%s", long_logged);
	cr_assert_null(strstr(long_logged, "memory"), "%s", long_logged);
	cr_assert_eq(keel_caps_get()->register_status, -EPERM);
	/* keel-caps's report says the same. */
	cr_assert_not_null(f = tmpfile());
	keel_caps_print(&o, f);
	rewind(f);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = 0;
	fclose(f);
	cr_assert(strstr(buf, "allow io_uring_register"), "%s", buf);
}

/* hwloc failing to read the machine says why, and names the environment that told it what
 * to read (HWLOC_XMLFILE here: a file that is no topology), where it said only "could not
 * load". */
Test(core_opts, a_topology_hwloc_cannot_load_names_its_environment)
{
	struct keel_runtime *rt = NULL;
	struct keel_opts o;
	int r;

	cr_assert_eq(setenv("HWLOC_XMLFILE", "/proc/self/status", 1), 0);
	keel_opts_init(&o);
	o.shards = 1;
	long_logged[0] = 0;
	keel_log_set_sink(long_sink, NULL);
	r = keel_runtime_create(&o, &rt);
	keel_log_set_sink(NULL, NULL);
	if (r == 0) {
		keel_runtime_destroy(rt);
		cr_skip_test("this hwloc read /proc/self/status as a topology");
	}
	cr_assert(
		strstr(long_logged, "hwloc could not load this machine's topology: ") &&
			strstr(long_logged, "HWLOC_XMLFILE is set, to /proc/self/status (unset it"),
		"%d: %s", r, long_logged);
}

/* A parse that fails leaves argv, argc and the options as they were: it applied and took
 * out of argv the options before the bad one (and all of them when the error came after
 * the command line was read: --iface against --rxqs, a bad environment value), so a caller
 * that printed usage or parsed again with other defaults saw a vector cut short and options
 * half set. Each case fails at a different stage: a bad value, a missing value, a flag with
 * a separate boolean word, the interface pair, a bad KEEL_* variable. */
Test(core_opts, a_failed_parse_leaves_argv_and_the_options_as_they_were)
{
	static const struct {
		const char *env, *val;
		const char *args[8];
	} cases[] = {
		{ NULL, NULL, { "--shards", "3", "--app", "--stats", "--stall-ms", "x", "tail" } },
		{ NULL, NULL, { "--shards", "3", "--app", "--memory=4M", "--stall-ms" } },
		{ NULL, NULL, { "--cpuset=0", "--app", "--hugepages", "on", "tail" } },
		{ NULL, NULL, { "--shards=2", "--iface", "eth0", "--app", "--rxqs", "eth1:0" } },
		{ "KEEL_STALL_MS", "soon", { "--shards", "3", "--app", "--stats", "tail" } },
	};

	for (unsigned c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		struct keel_opts o, before;
		char *argv[10] = { "prog" }, *saved[10];
		char err[256] = "";
		int argc = 1, argc0, r;

		for (unsigned k = 0; k < 8 && cases[c].args[k]; k++)
			argv[argc++] = (char *)cases[c].args[k];
		memcpy(saved, argv, sizeof(argv));
		argc0 = argc;
		keel_opts_init(&o);
		o.shards = 5; /* a program's own default */
		o.idle_poll_us = 7;
		before = o;
		if (cases[c].env)
			setenv(cases[c].env, cases[c].val, 1);
		r = keel_opts_parse(&o, &argc, argv, err, sizeof(err));
		if (cases[c].env)
			unsetenv(cases[c].env);
		cr_assert_eq(r, -EINVAL, "case %u: %d %s", c, r, err);
		cr_assert(err[0], "case %u: no message", c);
		cr_assert_eq(argc, argc0, "case %u: argc %d, was %d", c, argc, argc0);
		for (unsigned k = 0; k < 10; k++)
			cr_assert_eq(argv[k], saved[k], "case %u: argv[%u] is now %s (was %s)", c,
				     k, argv[k] ? argv[k] : "NULL", saved[k] ? saved[k] : "NULL");
		cr_assert(memcmp(&o, &before, sizeof(o)) == 0,
			  "case %u: the options changed (shards %u, stats %d, cpuset_given %d, "
			  "iface '%s')",
			  c, o.shards, o.stats, o.cpuset_given, o.iface);
	}
}

/* More shards than CPUs stacks several on a CPU: allowed (tests do it on purpose), but it
 * was said nowhere. Create says it once, with how many share how many CPUs and the fix; the
 * fix names --cpuset when a --cpuset chose the CPUs, the mask's tools when the process's
 * affinity did. One shard per CPU says nothing. */
Test(core_opts, more_shards_than_cpus_is_said_once_at_create_with_the_fix)
{
	struct keel_opts o = test_opts(3);
	cpu_set_t all;
	int first = -1, nall = 0;
	char want[128];

	cr_assert_eq(sched_getaffinity(0, sizeof(all), &all), 0);
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &all) && c < KEEL_MAX_CPUS) {
			first = first < 0 ? c : first;
			nall++;
		}
	cr_assert_geq(first, 0);
	keel_cpuset_add(&o.cpuset, (unsigned)first);
	o.cpuset_given = true;
	cr_assert_eq(create_warned(&o), 0);
	cr_assert(strstr(warned, "3 shards on 1 CPU (--cpuset") &&
			  strstr(warned, "3 shards share a CPU") &&
			  strstr(warned, "lower --shards to 1, or widen --cpuset"),
		  "warned: '%s'", warned);
	cr_assert_null(strstr(strstr(warned, "share a CPU") + 1, "share a CPU"),
		       "said more than once: '%s'", warned);

	if (nall + 1 <= KEEL_MAX_SHARDS) { /* the process's mask: the fix is to widen it */
		o = test_opts((unsigned)nall + 1);
		cr_assert_eq(create_warned(&o), 0);
		snprintf(want, sizeof(want), "%d shards on %d CPU%s (this process's affinity mask",
			 nall + 1, nall, nall == 1 ? "" : "s");
		cr_assert(strstr(warned, want), "'%s' not in '%s'", want, warned);
		snprintf(want, sizeof(want), "lower --shards to %d, or allow more CPUs", nall);
		cr_assert(strstr(warned, want), "'%s' not in '%s'", want, warned);
	}

	o = test_opts(1); /* a shard per CPU: nothing said */
	keel_cpuset_add(&o.cpuset, (unsigned)first);
	o.cpuset_given = true;
	cr_assert_eq(create_warned(&o), 0);
	cr_assert_null(strstr(warned, "share a CPU"), "warned: '%s'", warned);
}

/* Messages about an option's value name where the value came from: the KEEL_* variable
 * when the environment set it, the flag when the command line did (they named the flag
 * either way, so a user who had set only the variable was told to change a flag never
 * typed). A parse error, a conflict refused at create (one side from each place, then both
 * from the environment), and create's line about shards sharing CPUs. */
static int
parse_env_create(const char *const *env, char **argv, int argc, char *err, size_t errlen)
{
	struct keel_opts o = test_opts(1);
	int r;

	for (unsigned k = 0; env[k]; k += 2)
		setenv(env[k], env[k + 1], 1);
	r = keel_opts_parse(&o, &argc, argv, err, errlen);
	for (unsigned k = 0; env[k]; k += 2)
		unsetenv(env[k]);
	cr_assert_eq(r, 0, "%s", err);
	return create_warned(&o);
}

Test(core_opts, a_message_about_a_value_names_the_variable_that_set_it)
{
	struct keel_opts o;
	char err[256] = "", cpu[16];
	char *argv[] = { "prog", NULL, NULL }, *fixed[] = { "prog", "--wait-coalesce-fixed", NULL };
	int argc = 1, first = -1;
	cpu_set_t all;

	/* a bad value from the environment */
	setenv("KEEL_CPUSET", "3-1", 1);
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), -EINVAL);
	unsetenv("KEEL_CPUSET");
	cr_assert(!strncmp(err, "KEEL_CPUSET: '3-1' is not a CPU list", 36) &&
			  !strstr(err, "--cpuset"),
		  "%s", err);
	argc = 1;
	setenv("KEEL_STALL_MS", "0", 1);
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), -EINVAL);
	unsetenv("KEEL_STALL_MS");
	cr_assert(!strncmp(err, "KEEL_STALL_MS: '0'", 18) && !strstr(err, "--stall-ms"), "%s", err);

	/* a conflict: both sides from the environment, then one from each */
	{
		const char *env[] = { "KEEL_WAIT_COALESCE_FIXED", "on", "KEEL_WAIT_COALESCE_US",
				      "0", NULL };
		cr_assert_eq(parse_env_create(env, argv, 1, err, sizeof(err)), -EINVAL);
		cr_assert(strstr(warned, "KEEL_WAIT_COALESCE_FIXED needs KEEL_WAIT_COALESCE_US > "
					 "0 (give a window, or drop KEEL_WAIT_COALESCE_FIXED)"),
			  "warned: '%s'", warned);
	}
	{
		const char *env[] = { "KEEL_WAIT_COALESCE_US", "0", NULL };
		cr_assert_eq(parse_env_create(env, fixed, 2, err, sizeof(err)), -EINVAL);
		cr_assert(strstr(warned, "--wait-coalesce-fixed needs KEEL_WAIT_COALESCE_US > 0"),
			  "warned: '%s'", warned);
	}
	{
		const char *env[] = { "KEEL_RING_ENTRIES", "1024", "KEEL_CQ_ENTRIES", "512", NULL };
		cr_assert_eq(parse_env_create(env, argv, 1, err, sizeof(err)), -EINVAL);
		cr_assert(strstr(warned, "KEEL_CQ_ENTRIES 512 must be from KEEL_RING_ENTRIES "
					 "(1024)") &&
				  !strstr(warned, "--cq-entries") &&
				  !strstr(warned, "--ring-entries"),
			  "warned: '%s'", warned);
	}

	/* --feature adds to KEEL_FEATURE: a feature forced on by either is named by both (the
	 * command line's --feature took the name alone, though min_wait=on was the
	 * variable's) */
	{
		const char *env[] = { "KEEL_FEATURE", "min_wait=on", "KEEL_WAIT_COALESCE_US", "0",
				      NULL };
		char *feat[] = { "prog", "--feature", "direct_fd=auto", NULL };

		cr_assert_eq(parse_env_create(env, feat, 3, err, sizeof(err)), -EINVAL);
		cr_assert(strstr(warned, "--feature (with KEEL_FEATURE) min_wait=on needs "
					 "KEEL_WAIT_COALESCE_US > 0"),
			  "warned: '%s'", warned);
	}

	/* shards sharing CPUs: KEEL_SHARDS and KEEL_CPUSET in the line and its fix */
	cr_assert_eq(sched_getaffinity(0, sizeof(all), &all), 0);
	for (int c = 0; c < CPU_SETSIZE && first < 0; c++)
		if (CPU_ISSET(c, &all))
			first = c;
	snprintf(cpu, sizeof(cpu), "%d", first);
	{
		const char *env[] = { "KEEL_SHARDS", "2", "KEEL_CPUSET", cpu, NULL };
		cr_assert_eq(parse_env_create(env, argv, 1, err, sizeof(err)), 0);
		cr_assert(strstr(warned, "2 shards on 1 CPU (KEEL_CPUSET") &&
				  strstr(warned, "lower KEEL_SHARDS to 1, or widen KEEL_CPUSET"),
			  "warned: '%s'", warned);
	}
}

/* --stop-flush-ms: 0 (no flush) by default, a range of 0 to a day, from the command line
 * or KEEL_STOP_FLUSH_MS, and a bad value is said under the name that set it. */
Test(core_opts, stop_flush_ms_parses_in_range_naming_the_option)
{
	struct keel_opts o;
	char err[256];
	char *argv[] = { "prog", "--stop-flush-ms", "2000", NULL };
	char *neg[] = { "prog", "--stop-flush-ms", "-1", NULL };
	char *big[] = { "prog", "--stop-flush-ms=86400001", NULL };
	char *none[] = { "prog", NULL };
	int argc = 3;

	keel_opts_init(&o);
	cr_assert_eq(o.stop_flush_ms, 0, "no flush by default");
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, argv), 0, "%s", err);
	cr_assert_eq(o.stop_flush_ms, 2000);
	argc = 3;
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, neg), -EINVAL);
	cr_assert(strstr(err, "--stop-flush-ms"), "%s", err);
	argc = 2;
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, big), -EINVAL);
	cr_assert(strstr(err, "--stop-flush-ms"), "%s", err);
	setenv("KEEL_STOP_FLUSH_MS", "150", 1);
	argc = 1;
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, none), 0, "%s", err);
	cr_assert_eq(o.stop_flush_ms, 150);
	cr_assert_str_eq(keel__opt_name(&o, "--stop-flush-ms"), "KEEL_STOP_FLUSH_MS");
	setenv("KEEL_STOP_FLUSH_MS", "soon", 1);
	argc = 1;
	cr_assert_eq(parse(&o, err, sizeof(err), &argc, none), -EINVAL);
	cr_assert(strstr(err, "KEEL_STOP_FLUSH_MS"), "%s", err);
	unsetenv("KEEL_STOP_FLUSH_MS");
}
