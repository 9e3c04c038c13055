// SPDX-License-Identifier: MIT
/* A host that loads libkeel with dlopen and unloads it with dlclose. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <string.h>

#include <criterion/criterion.h>

static struct {
	void *lib;
	sem_t ran, may_exit;
	int r;
} dl;

/* Starts and joins a runtime with signals on (keel's signal record is the thread's), then
 * stays alive until the library is gone, and exits: its thread-specific data's destructors
 * run then. */
static void *
starter(void *arg)
{
	int (*run)(void) = (int (*)(void))dlsym(dl.lib, "keel_test_dl_run");

	(void)arg;
	dl.r = run ? run() : -ENOSYS;
	sem_post(&dl.ran);
	sem_wait(&dl.may_exit);
	return NULL;
}

/* The record of the signal mask a thread blocked for its runtimes is freed by the
 * destructor of a thread-specific key, as the thread exits. A host that unloaded libkeel
 * (dlclose) left that key, and its destructor pointer into the unmapped library: the next
 * exit of a thread that had started a runtime called into it and the process crashed.
 * libkeel deletes its key as it is unloaded. */
Test(core_dlclose, a_thread_that_started_a_runtime_exits_after_libkeel_is_unloaded, .timeout = 60)
{
	pthread_t t;
	void *again;

	dl.lib = dlopen(KEEL_DL_MODULE, RTLD_NOW | RTLD_LOCAL);
	cr_assert_not_null(dl.lib, "dlopen %s: %s", KEEL_DL_MODULE, dlerror());
	cr_assert_eq(sem_init(&dl.ran, 0, 0), 0);
	cr_assert_eq(sem_init(&dl.may_exit, 0, 0), 0);
	cr_assert_eq(pthread_create(&t, NULL, starter, NULL), 0);
	sem_wait(&dl.ran);
	cr_assert_eq(dl.r, 0, "the runtime in the loaded library: %s", strerror(-dl.r));
	cr_assert_eq(dlclose(dl.lib), 0, "%s", dlerror());
	again = dlopen(KEEL_DL_MODULE, RTLD_NOW | RTLD_NOLOAD);
	cr_assert_null(again, "dlclose left the library loaded: the path was not tested");
	sem_post(&dl.may_exit);
	cr_assert_eq(pthread_join(t, NULL), 0);
}
