// SPDX-License-Identifier: MIT
/*
 * Fault injection (KEEL_FAULTS builds): see keel/faults.h and docs/testing.md. A fault is
 * applied to an SQE when its owner binds it (keel_sqe_bind, the file module, MSG_RING
 * wake-ups), before the kernel sees it: an error replaces the operation with a NOP that
 * completes with that error (IORING_NOP_INJECT_RESULT, Linux 6.10), so the operation never
 * happened; a short result shrinks the length the operation asks for, so the kernel really
 * moves fewer bytes. keel's own permanent operations (keel__internal_arm) are never touched.
 */
#include <errno.h>
#include <keel/faults.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "internal.h"

#ifndef IORING_NOP_INJECT_RESULT
#define IORING_NOP_INJECT_RESULT (1U << 0)
#endif
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)
#endif

enum fclass {
	FC_RECV,
	FC_SEND,
	FC_ACCEPT,
	FC_CONNECT,
	FC_READ,
	FC_WRITE,
	FC_FSYNC,
	FC_MSGRING,
	FC_ALLOC,
	FC_N,
	FC_NONE = -1
};
static const char *const class_names[FC_N] = { "recv",  "send",  "accept",  "connect", "read",
					       "write", "fsync", "msgring", "alloc" };

#define ACT_SHORT 0 /* otherwise the (positive) errno */
#define MAX_RULES 16

struct rule {
	enum fclass cls;
	int act;
	double p;
	uint64_t n, after;
	_Atomic uint64_t seen, injected;
};

static struct {
	unsigned nrules;
	uint64_t seed;
	unsigned gen; /* bumped by every keel_faults_set: shards reseed */
	struct rule rules[MAX_RULES];
} cfg;
static _Atomic int cfg_set; /* a test set a spec: the environment is not read */
static bool env_read;       /* the spec came from KEEL_FAULTS: reported at join */

static _Thread_local uint64_t rng;
static _Thread_local unsigned rng_gen;

static const struct {
	const char *name;
	int err;
} errnos[] = {
	{ "ECONNRESET", ECONNRESET },
	{ "EPIPE", EPIPE },
	{ "ENOBUFS", ENOBUFS },
	{ "EAGAIN", EAGAIN },
	{ "ECANCELED", ECANCELED },
	{ "EIO", EIO },
	{ "ENOSPC", ENOSPC },
	{ "ENOMEM", ENOMEM },
	{ "ECONNREFUSED", ECONNREFUSED },
	{ "ETIMEDOUT", ETIMEDOUT },
	{ "ECONNABORTED", ECONNABORTED },
	{ "EOVERFLOW", EOVERFLOW },
	{ "EINTR", EINTR },
	{ "EMFILE", EMFILE },
	{ "ENFILE", ENFILE },
	{ "EHOSTUNREACH", EHOSTUNREACH },
	{ "ENETUNREACH", ENETUNREACH },
};

static uint64_t
next_rand(void)
{
	if (rng_gen != cfg.gen || !rng) {
		struct keel_shard *s = keel__cur;
		rng_gen = cfg.gen;
		rng = (cfg.seed + 1) * 0x9e3779b97f4a7c15ull ^
		      ((uint64_t)(s ? s->id : 0) + 1) * 0xbf58476d1ce4e5b9ull;
		if (!rng)
			rng = 1;
	}
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 0x2545f4914f6cdd1dull;
}

static int
parse_rule(char *item, struct rule *r)
{
	char *save = NULL, *tok = strtok_r(item, ":", &save);
	int k;

	for (k = 0; k < FC_N; k++)
		if (tok && !strcmp(tok, class_names[k]))
			break;
	if (k == FC_N) {
		keel_log(
			KEEL_LOG_ERROR, "faults",
			"KEEL_FAULTS: unknown class '%s' (one of recv send accept connect read write "
			"fsync msgring alloc)",
			tok ? tok : "");
		return -EINVAL;
	}
	r->cls = (enum fclass)k;
	tok = strtok_r(NULL, ":", &save);
	if (!tok) {
		keel_log(KEEL_LOG_ERROR, "faults",
			 "KEEL_FAULTS: '%s' needs an action (short or an errno name)",
			 class_names[k]);
		return -EINVAL;
	}
	r->act = -1;
	if (!strcmp(tok, "short"))
		r->act = ACT_SHORT;
	for (size_t e = 0; e < sizeof(errnos) / sizeof(errnos[0]); e++)
		if (!strcmp(tok, errnos[e].name))
			r->act = errnos[e].err;
	if (r->act < 0) {
		keel_log(KEEL_LOG_ERROR, "faults",
			 "KEEL_FAULTS: unknown action '%s' for %s (short, or an errno name such as "
			 "ECONNRESET)",
			 tok, class_names[k]);
		return -EINVAL;
	}
	if (r->act == ACT_SHORT && r->cls != FC_RECV && r->cls != FC_SEND && r->cls != FC_READ &&
	    r->cls != FC_WRITE) {
		keel_log(KEEL_LOG_ERROR, "faults",
			 "KEEL_FAULTS: 'short' applies to recv, send, read and write, not %s",
			 class_names[k]);
		return -EINVAL;
	}
	if (r->cls == FC_ALLOC && r->act != ENOMEM) {
		keel_log(KEEL_LOG_ERROR, "faults", "KEEL_FAULTS: alloc faults are ENOMEM only");
		return -EINVAL;
	}
	if (r->act == ENOBUFS && r->cls != FC_RECV) {
		keel_log(
			KEEL_LOG_ERROR, "faults",
			"KEEL_FAULTS: ENOBUFS comes from provided-buffer receives only (recv:ENOBUFS)");
		return -EINVAL;
	}
	r->p = 1.0;
	r->n = 0;
	r->after = 0;
	while ((tok = strtok_r(NULL, ":", &save))) {
		char *end = NULL;
		if (!strncmp(tok, "p=", 2)) {
			r->p = strtod(tok + 2, &end);
			if (end == tok + 2 || *end || !(r->p >= 0 && r->p <= 1))
				goto bad;
		} else if (!strncmp(tok, "n=", 2)) {
			r->n = strtoull(tok + 2, &end, 10);
			if (end == tok + 2 || *end)
				goto bad;
		} else if (!strncmp(tok, "after=", 6)) {
			r->after = strtoull(tok + 6, &end, 10);
			if (end == tok + 6 || *end)
				goto bad;
		} else {
			goto bad;
		}
	}
	return 0;
bad:
	keel_log(KEEL_LOG_ERROR, "faults",
		 "KEEL_FAULTS: bad parameter '%s' for %s (p=0..1, n=COUNT, after=COUNT)", tok,
		 class_names[k]);
	return -EINVAL;
}

int
keel_faults_set(const char *spec)
{
	char *copy, *save = NULL, *item;
	unsigned n = 0;
	uint64_t seed = 0;
	int r = 0;

	atomic_store(&cfg_set, 1);
	cfg.nrules = 0;
	cfg.gen++;
	if (!spec || !*spec)
		return 0;
	copy = strdup(spec);
	if (!copy)
		return -ENOMEM;
	for (item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
		if (!strncmp(item, "seed=", 5)) {
			char *end = NULL;
			seed = strtoull(item + 5, &end, 10);
			if (end == item + 5 || *end) {
				keel_log(KEEL_LOG_ERROR, "faults", "KEEL_FAULTS: bad seed '%s'",
					 item + 5);
				r = -EINVAL;
				break;
			}
			continue;
		}
		if (n == MAX_RULES) {
			keel_log(KEEL_LOG_ERROR, "faults", "KEEL_FAULTS: more than %d rules",
				 MAX_RULES);
			r = -EINVAL;
			break;
		}
		struct rule *ru = &cfg.rules[n];
		memset(ru, 0, sizeof(*ru));
		r = parse_rule(item, ru);
		if (r < 0)
			break;
		n++;
	}
	free(copy);
	if (r < 0)
		return r;
	cfg.seed = seed;
	cfg.nrules = n;
	return 0;
}

int
keel__faults_env(void)
{
	const char *v = getenv("KEEL_FAULTS");

	if (atomic_load(&cfg_set) || !v)
		return 0;
	keel_log(KEEL_LOG_WARN, "faults", "KEEL_FAULTS=%s: injecting faults (a test build)", v);
	env_read = true;
	return keel_faults_set(v);
}

void
keel__faults_env_report(void)
{
	if (!env_read)
		return;
	/* One line per rule, so that a test driving a server process (keel-kv) can tell
	 * whether each rule was met at all: "rule 2 recv:ENOBUFS: 14 injected of 310". */
	for (unsigned i = 0; i < cfg.nrules; i++) {
		const struct rule *r = &cfg.rules[i];
		const char *act = r->act == ACT_SHORT ? "short" : strerrorname_np(r->act);

		keel_log(KEEL_LOG_WARN, "faults",
			 "KEEL_FAULTS rule %u %s:%s: %llu injected of %llu", i + 1,
			 class_names[r->cls], act ? act : "?",
			 (unsigned long long)atomic_load(&r->injected),
			 (unsigned long long)atomic_load(&r->seen));
	}
}

uint64_t
keel_faults_injected(const char *cls)
{
	uint64_t t = 0;

	for (unsigned i = 0; i < cfg.nrules; i++)
		if (!cls || !strcmp(cls, class_names[cfg.rules[i].cls]))
			t += atomic_load(&cfg.rules[i].injected);
	return t;
}

/* The first rule of @cls that fires for this eligible operation, or NULL. Every rule of
 * the class sees the operation (its `seen` and its random draw), in order. */
static struct rule *
fire(enum fclass cls, bool short_ok, bool enobufs_ok)
{
	struct rule *hit = NULL;

	for (unsigned i = 0; i < cfg.nrules; i++) {
		struct rule *r = &cfg.rules[i];
		if (r->cls != cls || (r->act == ACT_SHORT && !short_ok) ||
		    (r->act == ENOBUFS && !enobufs_ok))
			continue;
		uint64_t seen = atomic_fetch_add(&r->seen, 1);
		double u = (double)(next_rand() >> 11) / 9007199254740992.0;
		if (hit || seen < r->after || u >= r->p)
			continue;
		if (r->n && atomic_fetch_add(&r->injected, 1) >= r->n) {
			atomic_fetch_sub(&r->injected, 1);
			continue;
		}
		if (!r->n)
			atomic_fetch_add(&r->injected, 1);
		hit = r;
	}
	return hit;
}

/* A length below @len the kernel could have moved: any for sockets; for files a multiple of
 * 4096, so O_DIRECT alignment still holds (0: no short length fits). */
static uint32_t
short_len(uint32_t len, bool file)
{
	if (file)
		return len > 4096 ? 4096 * (uint32_t)(1 + next_rand() % ((len - 1) / 4096)) : 0;
	return len > 1 ? (uint32_t)(1 + next_rand() % (len - 1)) : 0;
}

void
keel__faults_sqe(struct io_uring_sqe *sqe)
{
	enum fclass cls = FC_NONE;
	bool bsel = sqe->flags & IOSQE_BUFFER_SELECT, short_ok = false, file = false;
	struct rule *r;

	if (__builtin_expect(cfg.nrules == 0, 1))
		return;
	switch (sqe->opcode) {
	case IORING_OP_RECV:
		cls = FC_RECV;
		/* One-shot, not a bundle: the length caps this receive only; the rest stays in
		 * the socket. With a provided buffer a length of 0 means the buffer's. */
		short_ok = !(sqe->ioprio & (IORING_RECV_MULTISHOT | IORING_RECVSEND_BUNDLE)) &&
			   (bsel || sqe->len > 1);
		break;
	case IORING_OP_RECVMSG:
		cls = FC_RECV;
		break;
	case IORING_OP_SEND:
		cls = FC_SEND;
		short_ok = !bsel && !(sqe->ioprio & IORING_RECVSEND_BUNDLE);
		break;
	case IORING_OP_SENDMSG: {
		/* Shortened into a SEND of a prefix of the first iovec: the kernel really sends
		 * only those bytes and the caller's msghdr is left alone. Only without an
		 * address or ancillary data, i.e. on a connected stream: keel sends datagrams
		 * with an address, and a datagram is never sent in part. */
		const struct msghdr *m = (const struct msghdr *)(uintptr_t)sqe->addr;
		cls = FC_SEND;
		short_ok = !bsel && m && !m->msg_name && !m->msg_controllen && m->msg_iovlen >= 1 &&
			   m->msg_iov[0].iov_len >= 1 && m->msg_iov[0].iov_len <= UINT32_MAX;
		break;
	}
	case IORING_OP_SEND_ZC:
		/* Only shortened: a zero-copy send's error path has its own notification
		 * rules, which a NOP does not reproduce. */
		cls = FC_SEND;
		short_ok = true;
		break;
	case IORING_OP_ACCEPT:
		cls = FC_ACCEPT;
		break;
	case IORING_OP_CONNECT:
		cls = FC_CONNECT;
		break;
	case IORING_OP_READ:
	case IORING_OP_READ_FIXED:
		short_ok = file = true;
		/* fall through */
	case IORING_OP_READV:
		cls = FC_READ;
		break;
	case IORING_OP_WRITE:
	case IORING_OP_WRITE_FIXED:
		short_ok = file = true;
		/* fall through */
	case IORING_OP_WRITEV:
		cls = FC_WRITE;
		break;
	case IORING_OP_FSYNC:
		cls = FC_FSYNC;
		break;
	case IORING_OP_MSG_RING:
		cls = FC_MSGRING;
		break;
	default:
		return;
	}
	r = fire(cls, short_ok, cls == FC_RECV && bsel);
	if (!r)
		return;
	if (r->act == ACT_SHORT && sqe->opcode == IORING_OP_SENDMSG) {
		const struct msghdr *m = (const struct msghdr *)(uintptr_t)sqe->addr;
		uint32_t first = (uint32_t)m->msg_iov[0].iov_len;
		sqe->opcode = IORING_OP_SEND;
		sqe->addr = (uint64_t)(uintptr_t)m->msg_iov[0].iov_base;
		sqe->len = first > 1 ? (uint32_t)(1 + next_rand() % first) : 1;
		return;
	}
	if (r->act == ACT_SHORT) {
		uint32_t l = bsel && sqe->len == 0 ? (uint32_t)(1 + next_rand() % 2048)
						   : short_len(sqe->len, file);
		if (l)
			sqe->len = l;
		return;
	}
	if (sqe->opcode == IORING_OP_SEND_ZC)
		return;
	/* The operation never reaches the kernel: a NOP completes in its place with the
	 * error, once, without IORING_CQE_F_MORE (a multishot ends, as on a real error) and
	 * without a buffer. Links, CQE_SKIP_SUCCESS and the user data stay. */
	uint64_t ud = sqe->user_data;
	uint8_t flags = sqe->flags & (uint8_t) ~(IOSQE_FIXED_FILE | IOSQE_BUFFER_SELECT);
	memset(sqe, 0, sizeof(*sqe));
	sqe->opcode = IORING_OP_NOP;
	sqe->flags = flags;
	sqe->rw_flags = IORING_NOP_INJECT_RESULT;
	sqe->len = (uint32_t)-r->act;
	sqe->user_data = ud;
}

bool
keel__faults_alloc(void)
{
	return __builtin_expect(cfg.nrules != 0, 0) && fire(FC_ALLOC, false, false) != NULL;
}
