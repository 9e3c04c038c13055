// SPDX-License-Identifier: MIT
/*
 * The ZCRX receive-side pieces that do not touch the kernel: parsing a RECV_ZC completion
 * into a fragment of the area, gathering the fragments of one message without a fixed-size
 * array (a published integration overran one with 1 MiB messages in 4 KiB fragments), and
 * the refill ring (entries written as slices are put, the tail published once per loop
 * pass). Tests drive them with synthetic CQEs and a refill region they play the kernel on.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "net_internal.h"
#include "zcrx.h"

int
keel__zcrx_cqe_parse(const struct io_uring_cqe *cqe, uint64_t area_token, uint64_t area_len,
		     struct keel__zcrx_frag *out)
{
	const struct keel_zcrx_cqe *z;
	uint64_t off;

	if (cqe->res < 0)
		return cqe->res;
	if (cqe->res == 0)
		return 0;
	/* The second half of the 32-byte CQE. */
	z = (const struct keel_zcrx_cqe *)(const void *)((const char *)cqe + sizeof(*cqe));
	if ((z->off & KEEL_IORING_ZCRX_AREA_MASK) != (area_token & KEEL_IORING_ZCRX_AREA_MASK))
		return -EPROTO;
	off = z->off & ~KEEL_IORING_ZCRX_AREA_MASK;
	if (off >= area_len || (uint64_t)cqe->res > area_len - off)
		return -EPROTO;
	out->off = off;
	out->len = (uint32_t)cqe->res;
	return 1;
}

void
keel__zcrx_msg_init(struct keel__zcrx_msg *m, uint32_t max)
{
	memset(m, 0, sizeof(*m));
	m->max = max;
}

int
keel__zcrx_msg_add(struct keel__zcrx_msg *m, const struct keel__zcrx_frag *f)
{
	if (m->n == m->max)
		return -E2BIG;
	if (m->n == m->cap) {
		uint32_t cap = m->cap ? m->cap * 2 : 16;
		struct keel__zcrx_frag *v;

		if (cap > m->max)
			cap = m->max;
		v = realloc(m->v, (size_t)cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		m->v = v;
		m->cap = cap;
	}
	m->v[m->n++] = *f;
	m->bytes += f->len;
	return 0;
}

void
keel__zcrx_msg_reset(struct keel__zcrx_msg *m)
{
	m->n = 0;
	m->bytes = 0;
}

void
keel__zcrx_msg_fini(struct keel__zcrx_msg *m)
{
	free(m->v);
	memset(m, 0, sizeof(*m));
}

int
keel__zcrx_refill_add(struct net_zcrx *z, const struct keel__zcrx_frag *f)
{
	/* The kernel moves head as it consumes entries; acquire pairs with its release so the
	 * slot it freed is not written before it has read it. */
	uint32_t head = __atomic_load_n(z->rq_head, __ATOMIC_ACQUIRE);
	struct keel_zcrx_rqe *e;

	if (z->rq_local_tail - head >= z->rq_entries)
		return -ENOBUFS;
	e = &z->rqes[z->rq_local_tail & z->rq_mask];
	e->off = (f->off & ~KEEL_IORING_ZCRX_AREA_MASK) | z->area_token;
	e->len = f->len;
	e->pad = 0;
	z->rq_local_tail++;
	return 0;
}

uint32_t
keel__zcrx_refill_publish(struct net_zcrx *z)
{
	uint32_t old = __atomic_load_n(z->rq_tail, __ATOMIC_RELAXED);

	if (old == z->rq_local_tail)
		return 0;
	/* Release: the entries written above are visible before the tail that covers them. */
	__atomic_store_n(z->rq_tail, z->rq_local_tail, __ATOMIC_RELEASE);
	return z->rq_local_tail - old;
}
