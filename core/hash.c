// SPDX-License-Identifier: MIT
/* Keyed hashing (keel/hash.h): SipHash with a number of compression and finalisation rounds
 * of the caller's choosing; keel_hash is SipHash-1-3. */
#include <errno.h>
#include <keel/hash.h>
#include <string.h>
#include <sys/random.h>

#include "internal.h"

#define ROTL64(x, b) (((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND(v0, v1, v2, v3)     \
	do {                         \
		v0 += v1;            \
		v1 = ROTL64(v1, 13); \
		v1 ^= v0;            \
		v0 = ROTL64(v0, 32); \
		v2 += v3;            \
		v3 = ROTL64(v3, 16); \
		v3 ^= v2;            \
		v0 += v3;            \
		v3 = ROTL64(v3, 21); \
		v3 ^= v0;            \
		v2 += v1;            \
		v1 = ROTL64(v1, 17); \
		v1 ^= v2;            \
		v2 = ROTL64(v2, 32); \
	} while (0)

static inline uint64_t
le64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	return v;
}

uint64_t
keel__siphash(const uint64_t key[2], const void *data, size_t n, unsigned crounds, unsigned drounds)
{
	const uint8_t *p = data;
	uint64_t v0 = key[0] ^ 0x736f6d6570736575ull, v1 = key[1] ^ 0x646f72616e646f6dull;
	uint64_t v2 = key[0] ^ 0x6c7967656e657261ull, v3 = key[1] ^ 0x7465646279746573ull;
	uint64_t m = (uint64_t)n << 56;
	size_t left = n & 7;

	for (const uint8_t *end = p + (n - left); p < end; p += 8) {
		uint64_t w = le64(p);

		v3 ^= w;
		for (unsigned i = 0; i < crounds; i++)
			SIPROUND(v0, v1, v2, v3);
		v0 ^= w;
	}
	for (size_t i = 0; i < left; i++)
		m |= (uint64_t)p[i] << (8 * i);
	v3 ^= m;
	for (unsigned i = 0; i < crounds; i++)
		SIPROUND(v0, v1, v2, v3);
	v0 ^= m;
	v2 ^= 0xff;
	for (unsigned i = 0; i < drounds; i++)
		SIPROUND(v0, v1, v2, v3);
	return v0 ^ v1 ^ v2 ^ v3;
}

uint64_t
keel_hash(const struct keel_hash_key *key, const void *data, size_t n)
{
	return keel__siphash(key->k, data, n, 1, 3);
}

int
keel_hash_key_random(struct keel_hash_key *key)
{
	size_t got = 0;

	if (!key)
		return -EINVAL;
	while (got < sizeof(key->k)) {
		ssize_t r = getrandom((uint8_t *)key->k + got, sizeof(key->k) - got, 0);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		got += (size_t)r;
	}
	return 0;
}
