// SPDX-License-Identifier: MIT
/*
 * keel_hash (keel/hash.h): SipHash, checked against SipHash-2-4's published vectors through
 * the same code (keel_hash is its 1-3 variant), and keys drawn at random.
 */
#include <keel/hash.h>
#include <stdint.h>
#include <string.h>

#include <criterion/criterion.h>

#include "../../core/internal.h"

/* SipHash-2-4 of the bytes 0, 1, ..., n-1 under the key 00 01 .. 0f, for n = 0..16: the
 * first vectors of the reference implementation's vectors.h, as little-endian bytes. */
static const uint8_t sip24[17][8] = {
	{ 0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72 },
	{ 0xfd, 0x67, 0xdc, 0x93, 0xc5, 0x39, 0xf8, 0x74 },
	{ 0x5a, 0x4f, 0xa9, 0xd9, 0x09, 0x80, 0x6c, 0x0d },
	{ 0x2d, 0x7e, 0xfb, 0xd7, 0x96, 0x66, 0x67, 0x85 },
	{ 0xb7, 0x87, 0x71, 0x27, 0xe0, 0x94, 0x27, 0xcf },
	{ 0x8d, 0xa6, 0x99, 0xcd, 0x64, 0x55, 0x76, 0x18 },
	{ 0xce, 0xe3, 0xfe, 0x58, 0x6e, 0x46, 0xc9, 0xcb },
	{ 0x37, 0xd1, 0x01, 0x8b, 0xf5, 0x00, 0x02, 0xab },
	{ 0x62, 0x24, 0x93, 0x9a, 0x79, 0xf5, 0xf5, 0x93 },
	{ 0xb0, 0xe4, 0xa9, 0x0b, 0xdf, 0x82, 0x00, 0x9e },
	{ 0xf3, 0xb9, 0xdd, 0x94, 0xc5, 0xbb, 0x5d, 0x7a },
	{ 0xa7, 0xad, 0x6b, 0x22, 0x46, 0x2f, 0xb3, 0xf4 },
	{ 0xfb, 0xe5, 0x0e, 0x86, 0xbc, 0x8f, 0x1e, 0x75 },
	{ 0x90, 0x3d, 0x84, 0xc0, 0x27, 0x56, 0xea, 0x14 },
	{ 0xee, 0xf2, 0x7a, 0x8e, 0x90, 0xca, 0x23, 0xf7 },
	{ 0xe5, 0x45, 0xbe, 0x49, 0x61, 0xca, 0x29, 0xa1 },
	{ 0xdb, 0x9b, 0xc2, 0x57, 0x7f, 0xcc, 0x2a, 0x3f },
};

Test(core_hash, is_siphash)
{
	const uint64_t key[2] = { 0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull };
	uint8_t msg[16];

	for (size_t n = 0; n < 16; n++)
		msg[n] = (uint8_t)n;
	for (size_t n = 0; n <= 16; n++) {
		uint64_t w = 0, got = keel__siphash(key, msg, n, 2, 4);

		for (int b = 7; b >= 0; b--)
			w = w << 8 | sip24[n][b];
		cr_assert_eq(got, w, "%zu bytes: %016llx, want %016llx", n, (unsigned long long)got,
			     (unsigned long long)w);
	}
}

/* keel_hash is the 1-3 variant of that code, under the key it is given. */
Test(core_hash, keel_hash_is_siphash_1_3_under_its_key)
{
	struct keel_hash_key k = { { 0x0706050403020100ull, 0x0f0e0d0c0b0a0908ull } };
	const char *s = "a key of some length, longer than a word";

	for (size_t n = 0; n <= strlen(s); n++)
		cr_assert_eq(keel_hash(&k, s, n), keel__siphash(k.k, s, n, 1, 3), "%zu bytes", n);
	cr_assert_neq(keel_hash(&k, s, 8), keel__siphash(k.k, s, 8, 2, 4));
}

/* SipHash-1-3 values from an implementation that is not keel's: CPython 3.11 hashes bytes
 * with it (sys.hash_info.algorithm 'siphash13'), under a zero key with PYTHONHASHSEED=0:
 * PYTHONHASHSEED=0 python3 -c 'print(hex(hash(b"abc") & 0xffffffffffffffff))' */
Test(core_hash, keel_hash_matches_an_independent_siphash_1_3)
{
	struct keel_hash_key zero = { { 0, 0 } };

	cr_assert_eq(keel_hash(&zero, "abc", 3), 0xc03bc3a0042630f2ull, "%016llx",
		     (unsigned long long)keel_hash(&zero, "abc", 3));
	cr_assert_eq(keel_hash(&zero, "hello world, keel", 17), 0x7f2f55303230e2a6ull, "%016llx",
		     (unsigned long long)keel_hash(&zero, "hello world, keel", 17));
}

/* Two keys drawn are different (2^-128 odds of a false failure), and change the hash. */
Test(core_hash, random_keys_differ_and_change_the_hash)
{
	struct keel_hash_key a, b;

	cr_assert_eq(keel_hash_key_random(&a), 0);
	cr_assert_eq(keel_hash_key_random(&b), 0);
	cr_assert(a.k[0] != b.k[0] || a.k[1] != b.k[1]);
	cr_assert_neq(keel_hash(&a, "key", 3), keel_hash(&b, "key", 3));
	cr_assert_eq(keel_hash_key_random(NULL), -EINVAL);
}
