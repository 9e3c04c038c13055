// SPDX-License-Identifier: MIT
/*
 * libFuzzer harness for the ZCRX completion path that does not touch the kernel
 * (net/zcrx_rx.c): keel__zcrx_cqe_parse on arbitrary 32-byte CQEs, the gather of a
 * message's fragments (keel__zcrx_msg_*), and the refill ring (keel__zcrx_refill_add /
 * _publish) on a region the harness plays the kernel on.
 *
 * Input: byte 0: the area's size in 4 KiB pages (1..16) and its id (bits 4-7); byte 1: the
 * most fragments per message (1..64); byte 2: the refill ring's size (2..64 entries, a
 * power of two); then 32-byte CQEs as the kernel writes them (res, flags, user_data, then
 * struct keel_zcrx_cqe). user_data bit 0 ends the message after this CQE; bit 1 makes the
 * "kernel" consume the refill ring before it.
 * Checked on every CQE, against an oracle written here from the ABI: the parse's result
 * (payload, end, the CQE's error, or -EPROTO exactly when the offset names another area or
 * the bytes leave the area); a payload fragment lies in the area (its bytes are read: ASan
 * sees a lie); the gather keeps every fragment up to its maximum, refuses the next with
 * -E2BIG, and its byte count is the sum; each refill entry holds the fragment's offset with
 * the area token and its length, and the ring never takes more than it has room for.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "net_internal.h"
#include "zcrx.h"

/* A 32-byte CQE: struct io_uring_cqe (16 bytes, ending in a flexible array, so it cannot
 * be a member before another) and a struct keel_zcrx_cqe behind it. */
struct cqe32 {
	_Alignas(8) uint8_t raw[32];
};
_Static_assert(sizeof(struct io_uring_cqe) == 16, "io_uring_cqe");

static const struct io_uring_cqe *
cqe_of(const struct cqe32 *c)
{
	return (const struct io_uring_cqe *)(const void *)c->raw;
}

static const struct keel_zcrx_cqe *
zcqe_of(const struct cqe32 *c)
{
	return (const struct keel_zcrx_cqe *)(const void *)(c->raw + 16);
}

static int
oracle(const struct cqe32 *c, uint64_t token, uint64_t len)
{
	uint64_t off;

	int res = cqe_of(c)->res;

	if (res < 0)
		return res;
	if (res == 0)
		return 0;
	if ((zcqe_of(c)->off & KEEL_IORING_ZCRX_AREA_MASK) != token)
		return -EPROTO;
	off = zcqe_of(c)->off & ~KEEL_IORING_ZCRX_AREA_MASK;
	if (off >= len || (uint64_t)res > len - off)
		return -EPROTO;
	return 1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t area[16 * 4096];
	struct keel__zcrx_msg m;
	struct net_zcrx z;
	struct keel_zcrx_rqe rqes[64];
	uint32_t head = 0, tail = 0, consumed = 0;
	uint64_t token, area_len, msg_bytes = 0;
	uint32_t max, msg_n = 0;
	volatile uint8_t sink = 0;

	if (size < 3)
		return 0;
	area_len = (uint64_t)((data[0] & 15) + 1) * 4096;
	token = (uint64_t)((data[0] >> 4) + 1) << KEEL_IORING_ZCRX_AREA_SHIFT;
	max = (uint32_t)(data[1] % 64) + 1;
	memset(&z, 0, sizeof(z));
	z.rq_entries = 2u << (data[2] % 6);
	z.rq_mask = z.rq_entries - 1;
	z.rq_head = &head;
	z.rq_tail = &tail;
	z.rqes = rqes;
	z.area_token = token;
	keel__zcrx_msg_init(&m, max);
	data += 3;
	size -= 3;
	for (; size >= sizeof(struct cqe32);
	     data += sizeof(struct cqe32), size -= sizeof(struct cqe32)) {
		struct cqe32 c;
		struct keel__zcrx_frag f = { 0, 0 };
		int r, want;

		memcpy(&c, data, sizeof(c));
		r = keel__zcrx_cqe_parse(cqe_of(&c), token, area_len, &f);
		want = oracle(&c, token, area_len);
		CHECK(r == want);
		if (cqe_of(&c)->user_data & 2) {
			/* The kernel consumes every published entry; check each as it goes. */
			keel__zcrx_refill_publish(&z);
			consumed = tail;
			__atomic_store_n(&head, consumed, __ATOMIC_RELEASE);
		}
		if (r == 1) {
			int a;

			CHECK(f.len == (uint32_t)cqe_of(&c)->res && f.len > 0);
			CHECK(f.off < area_len && f.len <= area_len - f.off);
			sink ^= area[f.off] ^ area[f.off + f.len - 1];
			a = keel__zcrx_msg_add(&m, &f);
			if (msg_n == max) {
				CHECK(a == -E2BIG);
			} else {
				CHECK(a == 0);
				msg_n++;
				msg_bytes += f.len;
				CHECK(m.v[m.n - 1].off == f.off && m.v[m.n - 1].len == f.len);
			}
			CHECK(m.n == msg_n && m.bytes == msg_bytes && m.n <= m.cap && m.cap <= max);
			/* The fragment goes back through the refill ring. */
			uint32_t before = z.rq_local_tail;
			a = keel__zcrx_refill_add(&z, &f);
			if (before - head >= z.rq_entries) {
				CHECK(a == -ENOBUFS && z.rq_local_tail == before);
			} else {
				const struct keel_zcrx_rqe *e = &rqes[before & z.rq_mask];
				CHECK(a == 0 && z.rq_local_tail == before + 1);
				CHECK(e->off == (f.off | token) && e->len == f.len && e->pad == 0);
			}
			CHECK(z.rq_local_tail - head <= z.rq_entries);
		}
		if (cqe_of(&c)->user_data & 1) {
			uint64_t sum = 0;

			for (uint32_t i = 0; i < m.n; i++)
				sum += m.v[i].len;
			CHECK(sum == m.bytes);
			keel__zcrx_msg_reset(&m);
			CHECK(m.n == 0 && m.bytes == 0);
			msg_n = 0;
			msg_bytes = 0;
		}
	}
	{
		uint32_t old = tail, n = keel__zcrx_refill_publish(&z);
		CHECK(n == z.rq_local_tail - old && tail == z.rq_local_tail);
	}
	keel__zcrx_msg_fini(&m);
	(void)sink;
	return 0;
}
