// SPDX-License-Identifier: MIT
/* libkeel as a host loads it with dlopen (test_dlclose.c): one call that starts and joins a
 * runtime with signals on, so the calling thread gets keel's thread-specific signal record. */
#include <keel/keel.h>

__attribute__((visibility("default"))) int keel_test_dl_run(void);

int
keel_test_dl_run(void)
{
	struct keel_opts o;
	struct keel_runtime *rt;
	int r;

	keel_opts_init(&o);
	o.shards = 1;
	o.signals = true;
	o.log_level = KEEL_LOG_WARN;
	o.idle_poll_us = 0;
	r = keel_runtime_create(&o, &rt);
	if (r < 0)
		return r;
	r = keel_runtime_start(rt, NULL, NULL);
	if (r == 0) {
		keel_runtime_stop(rt, 0);
		r = keel_runtime_join(rt);
	}
	keel_runtime_destroy(rt);
	return r;
}
