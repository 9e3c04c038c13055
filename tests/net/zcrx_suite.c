// SPDX-License-Identifier: MIT
/*
 * ZCRX set-up: the registration structs against the kernel ABI, the errno -> message
 * mapping, the options, one queue one shard, and the real kernel's refusals on lo and on a
 * veth pair in a namespace this test makes (no device here can do ZCRX: every interface
 * answers EOPNOTSUPP), with the auto fallback still echoing intact.
 */
#include <errno.h>
#include <fcntl.h>
#include <keel/keel.h>
#include <linux/btf.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../net/net_internal.h"
#include "../../net/zcrx.h"
#include "btf_layout.h"
#include "helpers.h"

/* The kernel ABI sizes and offsets (include/uapi/linux/io_uring.h, 6.15-6.18), pinned again
 * here so a change to compat.h that breaks them fails this suite's build too. */
_Static_assert(sizeof(struct keel_zcrx_ifq_reg) == 96, "ifq_reg");
_Static_assert(offsetof(struct keel_zcrx_ifq_reg, area_ptr) == 16, "ifq_reg.area_ptr");
_Static_assert(offsetof(struct keel_zcrx_ifq_reg, region_ptr) == 24, "ifq_reg.region_ptr");
_Static_assert(offsetof(struct keel_zcrx_ifq_reg, offsets) == 32, "ifq_reg.offsets");
_Static_assert(offsetof(struct keel_zcrx_ifq_reg, zcrx_id) == 64, "ifq_reg.zcrx_id");
_Static_assert(offsetof(struct keel_zcrx_ifq_reg, rx_buf_len) == 68, "ifq_reg.rx_buf_len");
_Static_assert(sizeof(struct keel_zcrx_area_reg) == 48, "area_reg");
_Static_assert(offsetof(struct keel_zcrx_area_reg, rq_area_token) == 16, "area_reg.token");
_Static_assert(offsetof(struct keel_zcrx_area_reg, flags) == 24, "area_reg.flags");
_Static_assert(sizeof(struct keel_region_desc) == 64, "region_desc");
_Static_assert(offsetof(struct keel_region_desc, flags) == 16, "region_desc.flags");
_Static_assert(offsetof(struct keel_region_desc, mmap_offset) == 24, "region_desc.mmap");
_Static_assert(sizeof(struct keel_zcrx_offsets) == 32, "offsets");
_Static_assert(sizeof(struct keel_zcrx_rqe) == 16, "rqe");
_Static_assert(sizeof(struct keel_zcrx_cqe) == 16, "cqe");
_Static_assert(KEEL_IORING_REGISTER_ZCRX_IFQ == 32, "register opcode");
_Static_assert(KEEL_IORING_OP_RECV_ZC == 58, "recv_zc opcode");
_Static_assert(KEEL_IORING_ZCRX_AREA_MASK == 0xffff000000000000ULL, "area mask");

/* The static asserts above check keel's copy against numbers copied by hand; this checks it
 * against the running kernel's own layout, read from its BTF. A keel struct member and the
 * kernel's name for it (keel drops the kernel's leading underscores; rx_buf_len is __resv2
 * until the kernel names it). */
struct abi_member {
	const char *keel;
	size_t off, size;
	const char *kernel, *kernel_alt; /* kernel_alt: NULL, or its other name */
};

struct abi_struct {
	const char *kernel;
	size_t size;
	const struct abi_member *m;
	size_t n;
};

#define ABI_M(type, field, kname, kalt)                                                           \
	{                                                                                         \
		.keel = #field, .off = offsetof(type, field), .size = sizeof(((type *)0)->field), \
		.kernel = kname, .kernel_alt = kalt                                               \
	}
#define ABI_S(name, type, members)                                                \
	{                                                                         \
		name, sizeof(type), members, sizeof(members) / sizeof(members[0]) \
	}

static const struct abi_member rqe_m[] = {
	ABI_M(struct keel_zcrx_rqe, off, "off", NULL),
	ABI_M(struct keel_zcrx_rqe, len, "len", NULL),
	ABI_M(struct keel_zcrx_rqe, pad, "__pad", NULL),
};
static const struct abi_member cqe_m[] = {
	ABI_M(struct keel_zcrx_cqe, off, "off", NULL),
	ABI_M(struct keel_zcrx_cqe, pad, "__pad", NULL),
};
static const struct abi_member offsets_m[] = {
	ABI_M(struct keel_zcrx_offsets, head, "head", NULL),
	ABI_M(struct keel_zcrx_offsets, tail, "tail", NULL),
	ABI_M(struct keel_zcrx_offsets, rqes, "rqes", NULL),
	ABI_M(struct keel_zcrx_offsets, resv2, "__resv2", NULL),
	ABI_M(struct keel_zcrx_offsets, resv, "__resv", NULL),
};
static const struct abi_member area_m[] = {
	ABI_M(struct keel_zcrx_area_reg, addr, "addr", NULL),
	ABI_M(struct keel_zcrx_area_reg, len, "len", NULL),
	ABI_M(struct keel_zcrx_area_reg, rq_area_token, "rq_area_token", NULL),
	ABI_M(struct keel_zcrx_area_reg, flags, "flags", NULL),
	ABI_M(struct keel_zcrx_area_reg, dmabuf_fd, "dmabuf_fd", NULL),
	ABI_M(struct keel_zcrx_area_reg, resv2, "__resv2", NULL),
};
static const struct abi_member ifq_m[] = {
	ABI_M(struct keel_zcrx_ifq_reg, if_idx, "if_idx", NULL),
	ABI_M(struct keel_zcrx_ifq_reg, if_rxq, "if_rxq", NULL),
	ABI_M(struct keel_zcrx_ifq_reg, rq_entries, "rq_entries", NULL),
	ABI_M(struct keel_zcrx_ifq_reg, flags, "flags", NULL),
	ABI_M(struct keel_zcrx_ifq_reg, area_ptr, "area_ptr", NULL),
	ABI_M(struct keel_zcrx_ifq_reg, region_ptr, "region_ptr", NULL),
	ABI_M(struct keel_zcrx_ifq_reg, offsets, "offsets", NULL),
	ABI_M(struct keel_zcrx_ifq_reg, zcrx_id, "zcrx_id", NULL),
	ABI_M(struct keel_zcrx_ifq_reg, rx_buf_len, "rx_buf_len", "__resv2"),
	ABI_M(struct keel_zcrx_ifq_reg, resv, "__resv", NULL),
};
static const struct abi_member region_m[] = {
	ABI_M(struct keel_region_desc, user_addr, "user_addr", NULL),
	ABI_M(struct keel_region_desc, size, "size", NULL),
	ABI_M(struct keel_region_desc, flags, "flags", NULL),
	ABI_M(struct keel_region_desc, id, "id", NULL),
	ABI_M(struct keel_region_desc, mmap_offset, "mmap_offset", NULL),
	ABI_M(struct keel_region_desc, resv, "__resv", NULL),
};
/* keel__zcrx_prep_recv writes the ifq index, a uint32_t, at KEEL_SQE_ZCRX_IFQ_IDX_OFF; the
 * kernel's member sits inside an anonymous union of struct io_uring_sqe. */
static const struct abi_member sqe_m[] = {
	{ "ifq index", KEEL_SQE_ZCRX_IFQ_IDX_OFF, sizeof(uint32_t), "zcrx_ifq_idx", NULL },
};
static const struct abi_struct abi_structs[] = {
	ABI_S("io_uring_zcrx_ifq_reg", struct keel_zcrx_ifq_reg, ifq_m),
	ABI_S("io_uring_zcrx_area_reg", struct keel_zcrx_area_reg, area_m),
	ABI_S("io_uring_zcrx_offsets", struct keel_zcrx_offsets, offsets_m),
	ABI_S("io_uring_zcrx_rqe", struct keel_zcrx_rqe, rqe_m),
	ABI_S("io_uring_zcrx_cqe", struct keel_zcrx_cqe, cqe_m),
	ABI_S("io_uring_region_desc", struct keel_region_desc, region_m),
	ABI_S("io_uring_sqe", struct io_uring_sqe, sqe_m),
};

/* The whole file at @path: 0, or -errno (the file cannot be read). */
static int
read_file(const char *path, uint8_t **out, size_t *len)
{
	size_t cap = 1 << 20, used = 0;
	uint8_t *buf = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	for (;;) {
		ssize_t r;

		if (used == cap || !buf) {
			uint8_t *nb;

			/* vmlinux BTF is a few MiB; a file past 1 GiB is not BTF */
			if (buf && (cap *= 2) > (1u << 30)) {
				free(buf);
				close(fd);
				return -EFBIG;
			}
			nb = realloc(buf, cap);
			cr_assert(nb, "no memory for %zu bytes of %s", cap, path);
			buf = nb;
		}
		r = read(fd, buf + used, cap - used);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = -errno;

			free(buf);
			close(fd);
			return e;
		}
		if (r == 0)
			break;
		used += (size_t)r;
	}
	close(fd);
	*out = buf;
	*len = used;
	return 0;
}

/* Compare keel's copy of one struct with the kernel's; mismatches are appended to @bad. */
static void
check_struct(const struct btf_view *v, uint32_t id, const struct abi_struct *s, char *bad,
	     size_t badlen)
{
	char err[256], names[512];
	uint64_t ksize;
	size_t used = strlen(bad);

#define BAD(...) \
	(used += (size_t)snprintf(bad + used, used < badlen ? badlen - used : 0, __VA_ARGS__))
	cr_assert_eq(btf_view_size(v, id, &ksize, err, sizeof(err)), 0, "%s: %s", s->kernel, err);
	/* the SQE's size is liburing's, pinned elsewhere; only its ifq field is keel's */
	if (strcmp(s->kernel, "io_uring_sqe") != 0 && ksize != s->size)
		BAD("\n  struct %s: %llu bytes in the running kernel, %zu in keel", s->kernel,
		    (unsigned long long)ksize, s->size);
	for (size_t i = 0; i < s->n; i++) {
		const struct abi_member *m = &s->m[i];
		uint64_t off = 0, size = 0;
		const char *kname;
		int r;

		kname = m->kernel;
		r = btf_view_member(v, id, kname, &off, &size, err, sizeof(err));
		if (r == -ENOENT && m->kernel_alt) {
			kname = m->kernel_alt;
			r = btf_view_member(v, id, kname, &off, &size, err, sizeof(err));
		}
		cr_assert(r == 0 || r == -ENOENT, "%s.%s: %s", s->kernel, kname, err);
		if (r == -ENOENT) {
			btf_view_member_names(v, id, names, sizeof(names));
			BAD("\n  struct %s has no member %s%s%s (keel's %s); its members: %s",
			    s->kernel, m->kernel, m->kernel_alt ? " or " : "",
			    m->kernel_alt ? m->kernel_alt : "", m->keel, names);
			continue;
		}
		if (off != m->off || size != m->size)
			BAD("\n  %s.%s: byte %llu, %llu bytes in the running kernel; keel's %s: "
			    "byte %zu, %zu bytes",
			    s->kernel, kname, (unsigned long long)off, (unsigned long long)size,
			    m->keel, m->off, m->size);
	}
#undef BAD
}

Test(net_zcrx, abi_layout_matches_kernel)
{
	static const char path[] = "/sys/kernel/btf/vmlinux";
	struct btf_view v;
	uint32_t ids[sizeof(abi_structs) / sizeof(abi_structs[0])];
	char err[256], missing[512] = "", bad[4096] = "";
	uint8_t *buf = NULL;
	size_t len = 0;
	int r = read_file(path, &buf, &len);

	if (r)
		cr_skip_test("cannot read %s (%s): the kernel has no BTF (CONFIG_DEBUG_INFO_BTF) "
			     "or it is not readable here; keel's ZCRX structs were not checked",
			     path, strerror(-r));
	r = btf_view_init(&v, buf, len, err, sizeof(err));
	cr_assert_eq(r, 0, "%s: %s", path, err);
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
		ids[i] = btf_view_struct(&v, abi_structs[i].kernel);
		if (!ids[i])
			snprintf(missing + strlen(missing), sizeof(missing) - strlen(missing),
				 " struct %s", abi_structs[i].kernel);
	}
	if (missing[0]) {
		btf_view_fini(&v);
		free(buf);
		cr_skip_test("the running kernel's BTF lacks%s: a kernel without ZCRX (6.15+, "
			     "CONFIG_IO_URING_ZCRX); keel's ZCRX structs were not checked",
			     missing);
	}
	for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
		check_struct(&v, ids[i], &abi_structs[i], bad, sizeof(bad));
	btf_view_fini(&v);
	free(buf);
	cr_assert(!bad[0],
		  "keel's ZCRX ABI differs from the running kernel's (%s):%s\n"
		  "fix the structs in core/include/keel/compat.h (and their static asserts) to "
		  "the kernel's layout",
		  path, bad);
}

/* A BTF file built here: a header, then @types and @strs as its two sections. */
static size_t
fake_btf(uint8_t *out, const void *types, uint32_t types_len, const char *strs, uint32_t strs_len)
{
	struct btf_header h = {
		.magic = BTF_MAGIC,
		.version = BTF_VERSION,
		.hdr_len = sizeof(h),
		.type_off = 0,
		.type_len = types_len,
		.str_off = types_len,
		.str_len = strs_len,
	};

	memcpy(out, &h, sizeof(h));
	memcpy(out + sizeof(h), types, types_len);
	memcpy(out + sizeof(h) + types_len, strs, strs_len);
	return sizeof(h) + types_len + strs_len;
}

/* The reader's bounds: each malformed file is refused with a message, never read past. */
Test(net_zcrx, abi_btf_reader_refuses_malformed_files)
{
	/* names: "u32" at 1, "s" at 5, "a" at 7 */
	static const char strs[] = "\0u32\0s\0a";
	struct {
		struct btf_type i32;
		uint32_t i32_enc;
		struct btf_type s;
		struct btf_member a;
	} good = {
		.i32 = { .name_off = 1, .info = BTF_KIND_INT << 24, .size = 4 },
		.i32_enc = 32,
		.s = { .name_off = 5, .info = BTF_KIND_STRUCT << 24 | 1, .size = 8 },
		.a = { .name_off = 7, .type = 1, .offset = 32 },
	};
	_Alignas(8) uint8_t file[256] = { 0 };
	uint8_t *heap;
	struct btf_view v;
	char err[256];
	uint64_t off, size;
	size_t n;
	struct btf_header *h = (struct btf_header *)file;

	/* The well-formed file reads: struct s, member a at byte 4, 4 bytes. */
	n = fake_btf(file, &good, sizeof(good), strs, sizeof(strs));
	cr_assert_eq(btf_view_init(&v, file, n, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(btf_view_struct(&v, "s"), 2);
	cr_assert_eq(btf_view_struct(&v, "u32"), 0, "an int is no struct");
	cr_assert_eq(btf_view_member(&v, 2, "a", &off, &size, err, sizeof(err)), 0, "%s", err);
	cr_assert(off == 4 && size == 4, "a at %llu, %llu bytes", (unsigned long long)off,
		  (unsigned long long)size);
	cr_assert_eq(btf_view_member(&v, 2, "b", &off, &size, err, sizeof(err)), -ENOENT);
	btf_view_fini(&v);

	/* Each file below is copied to a heap block of its exact length, so ASan catches a
	 * read past its end. */
#define REFUSED(len, want)                                                              \
	do {                                                                            \
		heap = malloc((len) ? (len) : 1);                                       \
		cr_assert(heap);                                                        \
		memcpy(heap, file, (len));                                              \
		err[0] = '\0';                                                          \
		cr_assert_eq(btf_view_init(&v, heap, (len), err, sizeof(err)), -EINVAL, \
			     "accepted: " want);                                        \
		cr_assert(strstr(err, want), "'%s' missing: %s", want, err);            \
		free(heap);                                                             \
	} while (0)

	n = fake_btf(file, &good, sizeof(good), strs, sizeof(strs));
	REFUSED(sizeof(*h) - 1, "shorter than its");
	n = fake_btf(file, &good, sizeof(good), strs, sizeof(strs));
	h->magic = 0x9feb;
	REFUSED(n, "another byte order");
	n = fake_btf(file, &good, sizeof(good), strs, sizeof(strs));
	h->type_len = 1000;
	REFUSED(n, "type section 0+1000 past the data");
	n = fake_btf(file, &good, sizeof(good), strs, sizeof(strs));
	REFUSED(n - 1, "string section");
	n = fake_btf(file, &good, sizeof(good), strs, sizeof(strs));
	h->hdr_len = 8;
	REFUSED(n, "header length 8");
	n = fake_btf(file, &good, sizeof(good), strs, sizeof(strs) - 1);
	REFUSED(n, "not NUL-terminated");
	/* the struct claims three members and has one */
	good.s.info = BTF_KIND_STRUCT << 24 | 3;
	n = fake_btf(file, &good, sizeof(good), strs, sizeof(strs));
	REFUSED(n, "runs past the type section");
	good.s.info = 31u << 24;
	n = fake_btf(file, &good, sizeof(good), strs, sizeof(strs));
	REFUSED(n, "unknown to this reader");
	/* a type cut in the middle of its btf_type */
	n = fake_btf(file, &good, sizeof(good) - sizeof(good.a) - 4, strs, sizeof(strs));
	REFUSED(n, "cut short");
#undef REFUSED

	/* Indexed fine, but a member's name and type point outside their sections. */
	good.s.info = BTF_KIND_STRUCT << 24 | 1;
	good.a.type = 9;
	n = fake_btf(file, &good, sizeof(good), strs, sizeof(strs));
	cr_assert_eq(btf_view_init(&v, file, n, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(btf_view_member(&v, 2, "a", &off, &size, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "type id 9 outside 1..2"), "%s", err);
	good.a.name_off = 400;
	n = fake_btf(file, &good, sizeof(good), strs, sizeof(strs));
	btf_view_fini(&v);
	cr_assert_eq(btf_view_init(&v, file, n, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(btf_view_member(&v, 2, "a", &off, &size, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "name offset 400 past"), "%s", err);
	btf_view_fini(&v);
	/* a member whose type is a typedef of itself */
	{
		struct {
			struct btf_type td;
			struct btf_type s;
			struct btf_member a;
		} loop = {
			.td = { .name_off = 1, .info = BTF_KIND_TYPEDEF << 24, .type = 1 },
			.s = { .name_off = 5, .info = BTF_KIND_STRUCT << 24 | 1, .size = 4 },
			.a = { .name_off = 7, .type = 1, .offset = 0 },
		};

		n = fake_btf(file, &loop, sizeof(loop), strs, sizeof(strs));
		cr_assert_eq(btf_view_init(&v, file, n, err, sizeof(err)), 0, "%s", err);
		cr_assert_eq(btf_view_member(&v, 2, "a", &off, &size, err, sizeof(err)), -EINVAL);
		cr_assert(strstr(err, "deeper than"), "%s", err);
		btf_view_fini(&v);
	}
}

static void
expect_reason(int err, const char *a, const char *b, const char *c)
{
	char buf[512];
	const char *m = keel__zcrx_reason(-err, "eth7", 3, 64u << 20, buf, sizeof(buf));

	cr_assert_eq(m, buf);
	cr_assert(strstr(m, "eth7") && strstr(m, "rx queue 3"), "no interface/queue: %s", m);
	cr_assert(strstr(m, a), "'%s' missing: %s", a, m);
	if (b)
		cr_assert(strstr(m, b), "'%s' missing: %s", b, m);
	if (c)
		cr_assert(strstr(m, c), "'%s' missing: %s", c, m);
}

Test(net_zcrx, errno_maps_to_meaning_and_fix)
{
	expect_reason(EOPNOTSUPP, "EOPNOTSUPP", "eth7 has no queue API / no parent device",
		      "ZCRX needs bnxt, mlx5, gve or fbnic");
	/* a kernel without ZCRX answers the same: it was blamed on the NIC alone */
	expect_reason(EOPNOTSUPP, "EOPNOTSUPP", "CONFIG_IO_URING_ZCRX", NULL);
	expect_reason(EINVAL, "EINVAL", "header/data split is off",
		      "ethtool -G eth7 tcp-data-split on");
	expect_reason(EEXIST, "EEXIST", "queue 3 already has a zero-copy consumer", NULL);
	expect_reason(EPERM, "EPERM", "needs CAP_NET_ADMIN", NULL);
	expect_reason(ENODEV, "ENODEV", "no interface eth7", NULL);
	expect_reason(ERANGE, "ERANGE", "eth7 has no rx queue 3", "ethtool -L eth7");
	expect_reason(EBUSY, "EBUSY", "AF_XDP", NULL);
	expect_reason(ENOMEM, "ENOMEM", "--zcrx-area", "ulimit -l");
	expect_reason(EIO, "errno 5", NULL, NULL);

	/* The kernel (__net_mp_open_rxq) refuses with EINVAL both when header/data split is
	 * off and when its threshold is not 0: the fix names both settings. */
	expect_reason(EINVAL, "header/data split", "ethtool -G eth7 tcp-data-split on",
		      "hds-thresh 0");

	/* EFAULT for an area over 1 GiB is the kernel's limit on registered memory (6.18 has
	 * it), not "a keel bug"; at 1 GiB or less it still is one. */
	{
		char b[512];

		keel__zcrx_reason(-EFAULT, "eth7", 3, (1ull << 30) + 4096, b, sizeof(b));
		cr_assert(strstr(b, "EFAULT") && strstr(b, "at most 1 GiB") &&
				  strstr(b, "--zcrx-area 1G or less") && !strstr(b, "keel bug"),
			  "%s", b);
		keel__zcrx_reason(-EFAULT, "eth7", 3, 1ull << 30, b, sizeof(b));
		cr_assert(strstr(b, "keel bug"), "%s", b);
	}

	/* A short buffer is cut, never overrun, and stays terminated. */
	char small[16];
	memset(small, 'x', sizeof(small));
	keel__zcrx_reason(-EOPNOTSUPP, "eth7", 3, 64u << 20, small, 8);
	cr_assert_eq(strlen(small), 7);
	cr_assert_eq(small[8], 'x');
}

/* The set-up policy: auto falls back only when the kernel did not take the registration.
 * Once it did (and keel refused what it returned, e.g. -EPROTO for refill ring offsets it
 * cannot use), the queue stays bound to the area until the ring closes with nobody
 * refilling it: that is no copy-path fallback, so it fails under auto too. */
Test(net_zcrx, verdict_registered_then_refused_fails_even_under_auto)
{
	cr_assert_eq(keel__zcrx_verdict(KEEL_POLICY_AUTO, 0, true), KEEL__ZCRX_USE);
	cr_assert_eq(keel__zcrx_verdict(KEEL_POLICY_ON, 0, true), KEEL__ZCRX_USE);
	cr_assert_eq(keel__zcrx_verdict(KEEL_POLICY_AUTO, -EOPNOTSUPP, false), KEEL__ZCRX_FALLBACK);
	cr_assert_eq(keel__zcrx_verdict(KEEL_POLICY_AUTO, -EINVAL, false), KEEL__ZCRX_FALLBACK);
	cr_assert_eq(keel__zcrx_verdict(KEEL_POLICY_ON, -EOPNOTSUPP, false), KEEL__ZCRX_FAIL);
	cr_assert_eq(keel__zcrx_verdict(KEEL_POLICY_ON, -EPROTO, true), KEEL__ZCRX_FAIL);
	cr_assert_eq(keel__zcrx_verdict(KEEL_POLICY_AUTO, -EPROTO, true), KEEL__ZCRX_FAIL);
}

static int
parse(struct keel_opts *o, const char *a, const char *b, char *err, size_t errlen)
{
	char *argv[] = { "prog", (char *)a, (char *)b, NULL };
	int argc = b ? 3 : 2;

	return keel_opts_parse(o, &argc, argv, err, errlen);
}

Test(net_zcrx, options_parse)
{
	struct keel_opts o;
	char err[256];

	keel_opts_init(&o);
	cr_assert_eq(o.zcrx, KEEL_POLICY_AUTO);
	cr_assert_eq(o.zcrx_area, KEEL_ZCRX_AREA_DEFAULT);
	cr_assert_eq(o.zcrx_rq_entries, KEEL_ZCRX_RQ_ENTRIES_DEFAULT);
	cr_assert_eq(parse(&o, "--zcrx", "on", err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(o.zcrx, KEEL_POLICY_ON);
	cr_assert_eq(parse(&o, "--zcrx=off", NULL, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(o.zcrx, KEEL_POLICY_OFF);
	cr_assert_eq(parse(&o, "--zcrx", "maybe", err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "--zcrx") && strstr(err, "maybe"), "%s", err);

	cr_assert_eq(parse(&o, "--rxqs", "eth3:4-6,1", err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(o.iface, "eth3");
	cr_assert_eq(o.nrxqs, 4);
	cr_assert_eq(o.rxqs[0], 4);
	cr_assert_eq(o.rxqs[2], 6);
	cr_assert_eq(o.rxqs[3], 1);
	cr_assert_eq(parse(&o, "--rxqs", "eth3:0,0", err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "named twice") && strstr(err, "its own queue"), "%s", err);
	cr_assert_eq(parse(&o, "--rxqs", "0-3", err, sizeof(err)), -EINVAL);
	cr_assert_eq(parse(&o, "--rxqs", "eth3:", err, sizeof(err)), -EINVAL);
	/* --iface naming another interface than --rxqs' is refused (core_opts has the rest). */
	cr_assert_eq(parse(&o, "--iface", "lo", err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "conflicts with the rx queues of eth3"), "%s", err);
	o.nrxqs = 0;
	cr_assert_eq(parse(&o, "--iface", "averyveryverylongname", err, sizeof(err)), -EINVAL);
	cr_assert_eq(parse(&o, "--iface", "lo", err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(o.iface, "lo");

	cr_assert_eq(parse(&o, "--zcrx-area", "16M", err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(o.zcrx_area, 16ull << 20);
	cr_assert_eq(parse(&o, "--zcrx-rq-entries", "1024", err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(o.zcrx_rq_entries, 1024);
	cr_assert_eq(parse(&o, "--zcrx-rq-entries", "1000", err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "power of two"), "%s", err);
	cr_assert_eq(parse(&o, "--zcrx-rq-entries", "65536", err, sizeof(err)), -EINVAL);
}

Test(net_zcrx, claim_is_one_queue_one_shard)
{
	unsigned owner = 99;

	cr_assert_eq(keel__zcrx_claim("eth9", 5, 0, &owner), 0);
	cr_assert_eq(keel__zcrx_claim("eth9", 5, 1, &owner), -EEXIST);
	cr_assert_eq(owner, 0);
	cr_assert_eq(keel__zcrx_claim("eth9", 6, 1, &owner), 0); /* another queue */
	cr_assert_eq(keel__zcrx_claim("eth8", 5, 1, &owner), 0); /* another interface */
	keel__zcrx_unclaim("eth9", 5);
	cr_assert_eq(keel__zcrx_claim("eth9", 5, 1, &owner), 0);
	keel__zcrx_unclaim("eth9", 5);
	keel__zcrx_unclaim("eth9", 6);
	keel__zcrx_unclaim("eth8", 5);
}

/* Log lines, captured. */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static char logbuf[16384];

static void
sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	static const char *const lv[] = { "error", "warn", "info", "debug" };

	(void)arg;
	pthread_mutex_lock(&log_lock);
	size_t n = strlen(logbuf);
	snprintf(logbuf + n, sizeof(logbuf) - n, "[%s %d %s] %s\n", module, shard,
		 (unsigned)level < 4 ? lv[level] : "?", msg);
	pthread_mutex_unlock(&log_lock);
}

static bool
logged(const char *s)
{
	bool r;

	pthread_mutex_lock(&log_lock);
	r = strstr(logbuf, s) != NULL;
	pthread_mutex_unlock(&log_lock);
	return r;
}

static unsigned
count_of(const char *hay, const char *needle)
{
	unsigned n = 0;

	for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
		n++;
	return n;
}

static void
capture(void)
{
	logbuf[0] = 0;
	keel_log_set_sink(sink, NULL);
}

Test(net_zcrx, two_shards_one_queue_refused_before_kernel)
{
	struct keel_opts o = net_test_opts(2);
	struct keel_runtime *rt = NULL;
	unsigned calls = atomic_load(&keel__zcrx_register_calls);

	/* Set directly: the --rxqs parser already refuses a queue named twice. */
	snprintf(o.iface, sizeof(o.iface), "lo");
	o.rxqs[0] = 0;
	o.rxqs[1] = 0;
	o.nrxqs = 2;
	capture();
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	keel_log_set_sink(NULL, NULL);
	cr_assert(logged("shards 0 and 1 both ask for rx queue 0 of lo: one queue, one shard"),
		  "%s", logbuf);
	cr_assert_eq(atomic_load(&keel__zcrx_register_calls), calls);

	/* With --zcrx off the queues mean nothing to ZCRX and the runtime starts. */
	o.zcrx = KEEL_POLICY_OFF;
	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	keel_runtime_destroy(rt);
}

Test(net_zcrx, on_needs_a_queue_per_shard)
{
	struct keel_opts o = net_test_opts(2);
	struct keel_runtime *rt = NULL;

	o.zcrx = KEEL_POLICY_ON;
	snprintf(o.iface, sizeof(o.iface), "lo");
	o.rxqs[0] = 0;
	o.nrxqs = 1;
	capture();
	cr_assert_eq(keel_runtime_create(&o, &rt), -EINVAL);
	keel_log_set_sink(NULL, NULL);
	cr_assert(logged("1 of 2 shards have no rx queue"), "%s", logbuf);
}

/* A server whose shards record their ZCRX state after starting the listener. */
struct zsrv {
	struct keel_runtime *rt;
	struct keel_listener *l;
	uint16_t port;
	_Atomic int started;
	int start_status[2];
	struct keel_zcrx_stats st[2];
	int st_status[2];
	struct keel_zcrx_stats st_end; /* at the connection's close */
	_Atomic int closes;
};

static void
zecho_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		if (keel_conn_send(c, &s[i]) < 0)
			keel_slice_put(&s[i]);
}

static void
zecho_close(struct keel_conn *c, int status)
{
	struct zsrv *z = keel_conn_app(c);
	(void)status;
	keel_zcrx_stats(keel_this_shard(), &z->st_end);
	atomic_fetch_add(&z->closes, 1);
}

static const struct keel_conn_ops zecho_ops = { .on_data = zecho_data, .on_close = zecho_close };

static void
zon_start(void *arg)
{
	struct zsrv *z = arg;
	struct keel_shard *sh = keel_this_shard();
	unsigned id = keel_shard_id(sh);
	int r = keel_listener_start(z->l);

	z->start_status[id] = r;
	z->st_status[id] = keel_zcrx_stats(sh, &z->st[id]);
	if (r < 0)
		keel_stop(r);
	atomic_fetch_add(&z->started, 1);
}

/* Start a one-shard echo server with @policy on @iface queue 0 and a receive area of
 * @area bytes; returns the runtime's status after the start (0 while running). */
static int zsrv_start_opts(struct zsrv *z, const struct keel_opts *o);

static int
zsrv_start_area(struct zsrv *z, enum keel_policy policy, const char *iface, uint64_t area)
{
	struct keel_opts o = net_test_opts(1);

	o.log_level = KEEL_LOG_INFO;
	o.zcrx = policy;
	snprintf(o.iface, sizeof(o.iface), "%s", iface);
	o.rxqs[0] = 0;
	o.nrxqs = 1;
	o.zcrx_area = area;
	o.zcrx_rq_entries = 256;
	return zsrv_start_opts(z, &o);
}

/* ... with the options @o. */
static int
zsrv_start_opts(struct zsrv *z, const struct keel_opts *o)
{
	struct keel_listen_opts lo;
	int r;

	memset(z, 0, sizeof(*z));
	r = keel_runtime_create(o, &z->rt);
	if (r < 0)
		return r;
	memset(&lo, 0, sizeof(lo));
	lo.addr = "127.0.0.1";
	lo.rt = z->rt;
	r = keel_listener_create(&lo, 1, &zecho_ops, z, &z->l);
	if (r < 0) {
		keel_runtime_destroy(z->rt);
		return r;
	}
	z->port = keel_listener_port(z->l);
	r = keel_runtime_start(z->rt, zon_start, z);
	if (r < 0) {
		keel_runtime_destroy(z->rt);
		keel_listener_destroy(z->l);
		return r;
	}
	WAIT_FOR(atomic_load(&z->started) == 1, "shard did not start");
	return z->start_status[0];
}

static int
zsrv_start(struct zsrv *z, enum keel_policy policy, const char *iface)
{
	return zsrv_start_area(z, policy, iface, 4ull << 20);
}

static int
zsrv_stop(struct zsrv *z)
{
	int r;

	keel_runtime_stop(z->rt, 0);
	r = keel_runtime_join(z->rt);
	keel_runtime_destroy(z->rt);
	keel_listener_destroy(z->l);
	return r;
}

/* A kernel that takes the registration but answers refill-ring offsets that do not fit
 * the region: keel refuses the set-up (-EPROTO) with the kernel holding the queue. */
static long
reg_taken_bad_offsets(int ring_fd, void *arg)
{
	struct keel_zcrx_ifq_reg *reg = arg;

	(void)ring_fd;
	reg->offsets.head = 1u << 30;
	reg->offsets.tail = 0;
	reg->offsets.rqes = 64;
	reg->zcrx_id = 7;
	return 0;
}

static int stuck_first, stuck_second;
static unsigned stuck_calls;

static void
stuck_start(void *arg)
{
	struct zsrv *z = arg;

	stuck_first = keel_listener_start(z->l);
	/* A second try makes the shard's network state again: its ring still holds the
	 * first one's interface queue. */
	stuck_second = keel_listener_start(z->l);
	stuck_calls = atomic_load(&keel__zcrx_register_calls);
	keel_stop(stuck_first);
	atomic_fetch_add(&z->started, 1);
}

/* A network state that failed after the kernel took its ZCRX registration is not made
 * again on that shard: the ring holds the queue until it closes (6.18 has no unregister),
 * so a second registration met the ring's own queue (EEXIST) and, under --zcrx auto, fell
 * back to a copy path that cannot read what the NIC puts in the area. Now each later try
 * fails with the first failure, saying why, and asks the kernel nothing. */
Test(net_zcrx, a_state_that_failed_holding_a_registration_is_not_made_again)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_listen_opts lo;
	struct zsrv z;
	unsigned calls = atomic_load(&keel__zcrx_register_calls);

	keel__zcrx_register = reg_taken_bad_offsets;
	memset(&z, 0, sizeof(z));
	o.log_level = KEEL_LOG_INFO;
	o.zcrx = KEEL_POLICY_AUTO;
	snprintf(o.iface, sizeof(o.iface), "lo");
	o.rxqs[0] = 0;
	o.nrxqs = 1;
	o.zcrx_area = 2u << 20;
	o.zcrx_rq_entries = 256;
	capture();
	cr_assert_eq(keel_runtime_create(&o, &z.rt), 0);
	memset(&lo, 0, sizeof(lo));
	lo.addr = "127.0.0.1";
	lo.rt = z.rt;
	cr_assert_eq(keel_listener_create(&lo, 1, &zecho_ops, &z, &z.l), 0);
	cr_assert_eq(keel_runtime_start(z.rt, stuck_start, &z), 0);
	cr_assert_eq(keel_runtime_join(z.rt), -EPROTO);
	keel_runtime_destroy(z.rt);
	keel_listener_destroy(z.l);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(stuck_first, -EPROTO, "%s", logbuf);
	cr_assert_eq(stuck_second, -EPROTO, "the second try: %d\n%s", stuck_second, logbuf);
	cr_assert_eq(stuck_calls, calls + 1, "the kernel was asked again\n%s", logbuf);
	cr_assert(logged("do not fit") && logged("an earlier one failed") && logged("--zcrx off") &&
			  !logged("falls back to the copy path"),
		  "%s", logbuf);
}

static void
need_root(void)
{
	if (geteuid() != 0)
		cr_skip_test("needs root (CAP_NET_ADMIN): without it the kernel answers EPERM "
			     "before it looks at the interface");
}

Test(net_zcrx, on_fails_on_lo_naming_interface_and_reason)
{
	struct zsrv z;
	unsigned calls = atomic_load(&keel__zcrx_register_calls);
	int r;

	need_root();
	capture();
	r = zsrv_start(&z, KEEL_POLICY_ON, "lo");
	cr_assert_eq(r, -EOPNOTSUPP, "listener start: %d (%s)\n%s", r, strerror(-r), logbuf);
	cr_assert_eq(zsrv_stop(&z), -EOPNOTSUPP);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(atomic_load(&keel__zcrx_register_calls), calls + 1);
	cr_assert(logged("ZCRX on lo rx queue 0: EOPNOTSUPP"), "%s", logbuf);
	cr_assert(logged("lo has no queue API / no parent device: ZCRX needs bnxt, mlx5, gve or "
			 "fbnic"),
		  "%s", logbuf);
}

Test(net_zcrx, auto_falls_back_on_lo_and_echo_is_intact)
{
	struct zsrv z;
	size_t chunk = 64 << 10, total = test_small() ? 256 << 10 : 1 << 20;
	unsigned char *out = malloc(chunk), *in = malloc(chunk);
	uint32_t x = 12345;
	int fd, r;

	need_root();
	capture();
	r = zsrv_start(&z, KEEL_POLICY_AUTO, "lo");
	cr_assert_eq(r, 0, "listener start: %s\n%s", strerror(-r), logbuf);
	cr_assert_eq(z.st_status[0], 0);
	cr_assert_eq(z.st[0].state, KEEL_ZCRX_FALLBACK, "state %s",
		     keel_zcrx_state_name(z.st[0].state));
	cr_assert_eq(z.st[0].err, EOPNOTSUPP);
	cr_assert_eq(z.st[0].rxq, 0);
	cr_assert(logged("ZCRX falls back to the copy path: ZCRX on lo rx queue 0: EOPNOTSUPP"),
		  "%s", logbuf);

	fd = cli_connect(z.port);
	cr_assert_geq(fd, 0);
	for (size_t done = 0; done < total; done += chunk) {
		for (size_t i = 0; i < chunk; i++) {
			x = x * 1103515245u + 12345u;
			out[i] = (unsigned char)(x >> 16);
		}
		cr_assert_eq(cli_write_all(fd, out, chunk), 0);
		cr_assert_eq(cli_read_all(fd, in, chunk), 0);
		cr_assert_eq(memcmp(in, out, chunk), 0, "echo differs in bytes %zu..%zu", done,
			     done + chunk);
	}
	close(fd);
	WAIT_FOR(atomic_load(&z.closes) == 1, "connection not closed");
	/* Every byte came through the copy path, and the stats say so. */
	cr_assert_eq(z.st_end.copy_bytes, total);
	cr_assert_eq(z.st_end.zc_bytes, 0);
	cr_assert_eq(zsrv_stop(&z), 0);
	cr_assert_eq(count_of(logbuf, "ZCRX falls back to the copy path"), 1, "%s", logbuf);
	keel_log_set_sink(NULL, NULL);
	free(out);
	free(in);
}

/* The kernel's EEXIST (the queue has another zero-copy consumer) or EBUSY (an AF_XDP
 * socket holds it) under --zcrx auto: the shard goes on without ZCRX, but what arrives on
 * that queue is not the copy path's to read either (in the other consumer's memory, or
 * taken by XDP), so its connections cannot receive. The fallback was an INFO line, as for
 * a NIC that cannot do ZCRX; it is a WARN that says so. */
static int reg_errno;

static long
reg_refused(int ring_fd, void *arg)
{
	(void)ring_fd, (void)arg;
	errno = reg_errno;
	return -1;
}

Test(net_zcrx, auto_on_a_queue_another_consumer_holds_warns)
{
	static const int errs[] = { EEXIST, EBUSY, EOPNOTSUPP };
	long (*kernel)(int, void *) = keel__zcrx_register;

	need_root();
	for (unsigned i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
		struct zsrv z;
		int r;

		reg_errno = errs[i];
		keel__zcrx_register = reg_refused;
		capture();
		r = zsrv_start(&z, KEEL_POLICY_AUTO, "lo");
		cr_assert_eq(r, 0, "listener start: %s\n%s", strerror(-r), logbuf);
		cr_assert_eq(z.st[0].state, KEEL_ZCRX_FALLBACK);
		cr_assert_eq(zsrv_stop(&z), 0);
		keel_log_set_sink(NULL, NULL);
		keel__zcrx_register = kernel;
		if (errs[i] == EOPNOTSUPP) { /* a NIC that cannot: the copy path reads all */
			cr_assert(logged("info] shard 0: ZCRX falls back to the copy path"), "%s",
				  logbuf);
			continue;
		}
		cr_assert(logged("warn] shard 0: ZCRX falls back to the copy path") &&
				  logged("cannot read what arrives on that queue"),
			  "errno %d:\n%s", errs[i], logbuf);
	}
}

Test(net_zcrx, off_tries_nothing)
{
	struct zsrv z;
	unsigned calls = atomic_load(&keel__zcrx_register_calls);

	cr_assert_eq(zsrv_start(&z, KEEL_POLICY_OFF, "lo"), 0);
	cr_assert_eq(z.st[0].state, KEEL_ZCRX_NONE);
	cr_assert_eq(zsrv_stop(&z), 0);
	cr_assert_eq(atomic_load(&keel__zcrx_register_calls), calls);
}

Test(net_zcrx, unknown_interface_is_enodev)
{
	struct zsrv z;
	int r;

	capture();
	r = zsrv_start(&z, KEEL_POLICY_ON, "keelnosuch0");
	cr_assert_eq(r, -ENODEV, "%d\n%s", r, logbuf);
	zsrv_stop(&z);
	keel_log_set_sink(NULL, NULL);
	cr_assert(logged("there is no interface keelnosuch0"), "%s", logbuf);
}

/* keel_opts.zcrx_area from a C embedder (the command line already refuses these): 0, a
 * size whose page rounding wraps, and one above the maximum are EINVAL naming the field and
 * the range, before any memory is mapped or the kernel asked; never a misleading ENOMEM. */
Test(net_zcrx, bad_zcrx_area_is_einval_naming_the_field)
{
	const uint64_t bad[] = { 0, UINT64_MAX, UINT64_MAX - 100, (1ULL << 40) + 1 };
	unsigned calls = atomic_load(&keel__zcrx_register_calls);
	struct zsrv z;
	int r;

	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		capture();
		r = zsrv_start_area(&z, KEEL_POLICY_ON, "lo", bad[i]);
		cr_assert_eq(r, -EINVAL, "zcrx_area %llu, on: %d (%s)\n%s",
			     (unsigned long long)bad[i], r, strerror(-r), logbuf);
		zsrv_stop(&z);
		cr_assert(logged("zcrx_area"), "%s", logbuf);
		cr_assert(logged("4096 bytes") && logged("1 TiB"), "no range: %s", logbuf);

		capture();
		r = zsrv_start_area(&z, KEEL_POLICY_AUTO, "lo", bad[i]);
		cr_assert_eq(r, 0, "zcrx_area %llu, auto: %d\n%s", (unsigned long long)bad[i], r,
			     logbuf);
		cr_assert_eq(z.st[0].state, KEEL_ZCRX_FALLBACK);
		cr_assert_eq(z.st[0].err, EINVAL, "zcrx_area %llu: err %d",
			     (unsigned long long)bad[i], z.st[0].err);
		cr_assert_eq(zsrv_stop(&z), 0);
		cr_assert(logged("ZCRX falls back to the copy path") && logged("zcrx_area"), "%s",
			  logbuf);
	}
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(atomic_load(&keel__zcrx_register_calls), calls, "the kernel was asked");
}

/* In a child, in a network namespace of its own with a veth pair: --zcrx on fails with
 * EOPNOTSUPP naming the veth, and auto falls back. Exit status 0: as expected. */
static int
veth_child(void)
{
	struct zsrv z;
	int r;

	if (unshare(CLONE_NEWNET) < 0)
		return 10;
	if (system("ip link add keelz0 type veth peer name keelz1 && ip link set keelz0 up && "
		   "ip link set keelz1 up && ip link set lo up") != 0)
		return 11;
	capture();
	r = zsrv_start(&z, KEEL_POLICY_ON, "keelz0");
	zsrv_stop(&z);
	if (r != -EOPNOTSUPP) {
		fprintf(stderr, "on: %d\n%s", r, logbuf);
		return 12;
	}
	if (!logged("ZCRX on keelz0 rx queue 0: EOPNOTSUPP") ||
	    !logged("keelz0 has no queue API / no parent device")) {
		fprintf(stderr, "on: message\n%s", logbuf);
		return 13;
	}
	logbuf[0] = 0;
	r = zsrv_start(&z, KEEL_POLICY_AUTO, "keelz0");
	if (r != 0 || z.st[0].state != KEEL_ZCRX_FALLBACK || z.st[0].err != EOPNOTSUPP) {
		fprintf(stderr, "auto: %d state %d err %d\n%s", r, z.st[0].state, z.st[0].err,
			logbuf);
		zsrv_stop(&z);
		return 14;
	}
	return zsrv_stop(&z) == 0 ? 0 : 15;
}

Test(net_zcrx, veth_in_namespace_refuses_and_auto_falls_back)
{
	pid_t pid;
	int st = 0;

	need_root();
	if (system("ip -V >/dev/null 2>&1") != 0)
		cr_skip_test("the ip command (iproute2) is missing");
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(veth_child());
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st), "child died: status 0x%x", st);
	if (WEXITSTATUS(st) == 10 || WEXITSTATUS(st) == 11)
		cr_skip_test("cannot make a network namespace with a veth pair here (%d)",
			     WEXITSTATUS(st));
	cr_assert_eq(WEXITSTATUS(st), 0, "veth child failed with %d (see its stderr)",
		     WEXITSTATUS(st));
}

/* Run tool @bin of the build with @args (stderr into the output); its exit status, output
 * in @out. */
static int
run_tool(const char *bin, const char *args, char *out, size_t len)
{
	char cmd[512];
	FILE *f;
	size_t n = 0;
	int st;

	snprintf(cmd, sizeof(cmd), "timeout 60 '%s/%s' %s 2>&1", KEEL_BIN_DIR, bin, args);
	f = popen(cmd, "r");
	cr_assert(f, "popen %s", cmd);
	while (n + 1 < len && fgets(out + n, (int)(len - n), f))
		n += strlen(out + n);
	out[n] = 0;
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int
run_echo(const char *args, char *out, size_t len)
{
	return run_tool("keel-echo", args, out, len);
}

/* The readiness probe is the start-up registration: on lo it says what --zcrx on says. */
Test(net_zcrx, probe_on_lo_gives_the_start_up_reason)
{
	char why[512];
	unsigned before;

	need_root();
	before = atomic_load(&keel__zcrx_register_calls);
	cr_assert_eq(keel_zcrx_probe("lo", 0, why, sizeof(why)), -EOPNOTSUPP, "%s", why);
	cr_assert(strstr(why, "ZCRX on lo rx queue 0: EOPNOTSUPP"), "%s", why);
	cr_assert_eq(atomic_load(&keel__zcrx_register_calls), before + 1,
		     "the kernel was not asked");
	/* The claim is given back: a second probe of the same queue is not refused by us. */
	cr_assert_eq(keel_zcrx_probe("lo", 0, why, sizeof(why)), -EOPNOTSUPP, "%s", why);
	cr_assert_eq(keel_zcrx_probe("nosuch0", 0, why, sizeof(why)), -ENODEV, "%s", why);
	cr_assert(strstr(why, "no interface nosuch0"), "%s", why);
}

/* The probe claims its queue as a shard does, under an owner that is no shard
 * (KEEL__ZCRX_PROBE_SHARD): losing the claim to a probe, or a probe losing it to a shard,
 * names what holds the queue (it said "shard 4294967295"). No root: refused before the
 * kernel is asked. */
Test(net_zcrx, a_probe_that_loses_the_claim_names_who_holds_the_queue)
{
	unsigned before = atomic_load(&keel__zcrx_register_calls), owner;
	char why[512];

	/* Another thread's probe holds lo queue 7. */
	cr_assert_eq(keel__zcrx_claim("lo", 7, KEEL__ZCRX_PROBE_SHARD, &owner), 0);
	cr_assert_eq(keel_zcrx_probe("lo", 7, why, sizeof(why)), -EEXIST, "%s", why);
	keel__zcrx_unclaim("lo", 7);
	cr_assert_null(strstr(why, "4294967295"), "%s", why);
	cr_assert(strstr(why, "keel_zcrx_probe"), "%s", why);
	/* A shard of this process registered lo queue 7. */
	cr_assert_eq(keel__zcrx_claim("lo", 7, 3, &owner), 0);
	cr_assert_eq(keel_zcrx_probe("lo", 7, why, sizeof(why)), -EEXIST, "%s", why);
	keel__zcrx_unclaim("lo", 7);
	cr_assert(strstr(why, "shard 3 of this process"), "%s", why);
	cr_assert(strstr(why, "in use"), "%s", why);
	cr_assert_eq(atomic_load(&keel__zcrx_register_calls), before, "the kernel was asked");
}

/* What the probe's registration asked for: a stand-in for the kernel that records the area
 * and the refill ring, then refuses as lo does (no root needed: nothing reaches the kernel). */
static uint64_t probe_area_addr, probe_area_len;
static uint32_t probe_rq_entries;

static long
reg_record_refuse(int ring_fd, void *arg)
{
	const struct keel_zcrx_ifq_reg *reg = arg;
	const struct keel_zcrx_area_reg *area = (const void *)(uintptr_t)reg->area_ptr;

	(void)ring_fd;
	probe_area_addr = area->addr;
	probe_area_len = area->len;
	probe_rq_entries = reg->rq_entries;
	errno = EOPNOTSUPP;
	return -1;
}

/* The probe registers the runtime's default area and refill ring, as a shard started with
 * default options does: a small area (256 KiB until the thirty-seventh session) passed
 * where the default one then failed at start-up (the memory lock limit). */
Test(net_zcrx, probe_registers_the_default_area_and_refill_ring)
{
	long (*kernel)(int, void *) = keel__zcrx_register;
	long pg = sysconf(_SC_PAGESIZE);
	struct keel_opts o;
	char why[512];
	int r;

	keel_opts_init(&o);
	keel__zcrx_register = reg_record_refuse;
	r = keel_zcrx_probe("lo", 0, why, sizeof(why));
	keel__zcrx_register = kernel;
	cr_assert_eq(r, -EOPNOTSUPP, "%s", why);
	cr_assert(strstr(why, "ZCRX on lo rx queue 0: EOPNOTSUPP"), "%s", why);
	cr_assert_eq(probe_area_len, o.zcrx_area, "the probe's area: %llu bytes, the default %llu",
		     (unsigned long long)probe_area_len, (unsigned long long)o.zcrx_area);
	cr_assert_eq(probe_area_len, KEEL_ZCRX_AREA_DEFAULT);
	cr_assert_eq(probe_area_addr % (uint64_t)pg, 0, "the area is not page-aligned");
	cr_assert_eq(probe_rq_entries, o.zcrx_rq_entries);
	cr_assert_eq(probe_rq_entries, KEEL_ZCRX_RQ_ENTRIES_DEFAULT);
}

/* A stand-in for a kernel that refuses the area as 6.18 refuses one over 1 GiB (EFAULT,
 * before it pins a page), recording how many of the area's pages were in memory then. */
static size_t refused_resident, refused_pages;

static long
reg_count_resident_refuse(int ring_fd, void *arg)
{
	const struct keel_zcrx_ifq_reg *reg = arg;
	const struct keel_zcrx_area_reg *area = (const void *)(uintptr_t)reg->area_ptr;
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	unsigned char *vec;

	(void)ring_fd;
	refused_pages = (size_t)(area->len / pg);
	refused_resident = SIZE_MAX;
	vec = malloc(refused_pages);
	if (vec && mincore((void *)(uintptr_t)area->addr, (size_t)area->len, vec) == 0) {
		refused_resident = 0;
		for (size_t i = 0; i < refused_pages; i++)
			refused_resident += vec[i] & 1;
	}
	free(vec);
	errno = EFAULT;
	return -1;
}

/* The area is left to the registration to fault in (the kernel pins it on the shard's
 * thread, so its pages are on the shard's node as a first touch there places them): an
 * area the kernel refuses costs no memory. It was populated first (MAP_POPULATE), so a
 * 2 GiB area refused for its size took 2 GiB, and seconds, before the refusal. */
Test(net_zcrx, a_refused_area_was_never_populated)
{
	long (*kernel)(int, void *) = keel__zcrx_register;
	struct zsrv z;
	int r;

	capture();
	refused_pages = 0;
	keel__zcrx_register = reg_count_resident_refuse;
	r = zsrv_start_area(&z, KEEL_POLICY_AUTO, "lo", 2ull << 30);
	keel__zcrx_register = kernel;
	cr_assert_eq(r, 0, "auto falls back: %d\n%s", r, logbuf);
	cr_assert_eq(zsrv_stop(&z), 0);
	keel_log_set_sink(NULL, NULL);
	/* A machine that commits no 2 GiB mapping (vm.overcommit_memory 2, or little memory)
	 * refuses it before the kernel is asked. */
	if (!refused_pages && logged("ENOMEM"))
		cr_skip_test("the 2 GiB area could not be mapped here (overcommit): %s", logbuf);
	cr_assert_eq(refused_pages, (2ull << 30) / (size_t)sysconf(_SC_PAGESIZE),
		     "the area asked for: %zu pages", refused_pages);
	cr_assert_eq(refused_resident, 0,
		     "%zu of the area's %zu pages were in memory before "
		     "the kernel was asked",
		     refused_resident, refused_pages);
	cr_assert(logged("--zcrx-area 1G or less"), "%s", logbuf);
}

/* The probe's scratch ring (DEFER_TASKRUN + CQE32) cannot be made: the message names what
 * the errno means there. Only EINVAL says the kernel is too old for ZCRX; EPERM is the
 * sysctl that disables io_uring, ENOMEM memory (it said "needs Linux 6.15" for all). */
static int ring_err;

static int
ring_init_fail(unsigned entries, struct io_uring *ring, struct io_uring_params *p)
{
	(void)entries;
	(void)ring;
	(void)p;
	return ring_err;
}

static void
probe_ring_fails(int err, char *why, size_t len)
{
	int (*real)(unsigned, struct io_uring *, struct io_uring_params *) = keel__zcrx_ring_init;
	unsigned before = atomic_load(&keel__zcrx_register_calls);
	int r;

	ring_err = err;
	keel__zcrx_ring_init = ring_init_fail;
	r = keel_zcrx_probe("lo", 0, why, len);
	keel__zcrx_ring_init = real;
	cr_assert_eq(r, err, "%s", why);
	cr_assert_eq(atomic_load(&keel__zcrx_register_calls), before, "registered without a ring");
	cr_assert(strstr(why, "ZCRX on lo rx queue 0: a DEFER_TASKRUN + CQE32 ring could not be "
			      "made"),
		  "%s", why);
}

Test(net_zcrx, probe_names_why_its_ring_could_not_be_made)
{
	/* Each errno's cause; only EINVAL (ring flags unknown) is the kernel's version. */
	static const struct {
		int err;
		const char *says;
	} cases[] = {
		{ -EINVAL, "ZCRX needs Linux 6.15 with CONFIG_IO_URING_ZCRX" },
		{ -EPERM, "kernel.io_uring_disabled" },
		{ -ENOMEM, "ulimit -l" },
		{ -ENOSYS, "CONFIG_IO_URING" },
		{ -EMFILE, "ulimit -n" },
	};
	char why[512];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		probe_ring_fails(cases[i].err, why, sizeof(why));
		cr_assert(strstr(why, cases[i].says), "%s", why);
		if (cases[i].err != -EINVAL)
			cr_assert_null(strstr(why, "6.15"), "%s", why);
	}
}

Test(net_zcrx, keel_topo_check_zcrx_says_per_queue_what_is_missing)
{
	char out[8192];
	int st;

	need_root();
	st = run_tool("keel-topo", "--check --zcrx --iface lo", out, sizeof(out));
	cr_assert_eq(st, 1, "exit %d:\n%s", st, out);
	cr_assert(strstr(out, "lo:\n"), "%s", out);
	cr_assert(strstr(out, "driver: "), "%s", out);
	cr_assert(strstr(out, "rx queue 0: ZCRX cannot work: ZCRX on lo rx queue 0: EOPNOTSUPP"),
		  "%s", out);
	cr_assert(strstr(out, "lo: 0 of 1 queue can do ZCRX"), "%s", out);
	st = run_tool("keel-topo", "--zcrx --xml /dev/null", out, sizeof(out));
	cr_assert_eq(st, 2, "exit %d:\n%s", st, out);
}

/* keel-echo --zcrx auto --iface lo: one fallback line, then 1 MiB echoed intact. */
Test(net_zcrx, keel_echo_auto_on_lo_falls_back_once_and_echoes_1mib)
{
	char out[16384] = "", *port_at;
	size_t n = 0, chunk = 64 << 10, total = 1 << 20;
	unsigned char *w = malloc(chunk), *rd = malloc(chunk);
	int pfd[2], fd, st;
	unsigned port = 0;
	uint32_t x = 99;
	pid_t pid;

	need_root();
	cr_assert_eq(pipe(pfd), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		char bin[512];

		dup2(pfd[1], 2);
		dup2(pfd[1], 1);
		close(pfd[0]);
		snprintf(bin, sizeof(bin), "%s/keel-echo", KEEL_BIN_DIR);
		execl(bin, bin, "--port", "0", "--addr", "127.0.0.1", "--shards", "1",
		      "--idle-poll-us", "0", "--zcrx", "auto", "--iface", "lo", "--log-level",
		      "info", (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	/* Read its output until it says where it listens (it prints that once running). */
	uint64_t dl = test_now_ms() + TEST_WAIT_MS;
	while (!(port_at = strstr(out, "listening on 127.0.0.1 port ")) || !strchr(port_at, ',')) {
		ssize_t k;

		cr_assert(test_now_ms() < dl, "keel-echo never said it listens:\n%.*s", (int)n,
			  out);
		k = read(pfd[0], out + n, sizeof(out) - 1 - n);
		cr_assert_gt(k, 0, "keel-echo ended:\n%.*s", (int)n, out);
		n += (size_t)k;
		out[n] = 0;
	}
	cr_assert_eq(sscanf(port_at, "listening on 127.0.0.1 port %u", &port), 1, "%s", out);
	fd = cli_connect((uint16_t)port);
	cr_assert_geq(fd, 0);
	for (size_t done = 0; done < total; done += chunk) {
		for (size_t i = 0; i < chunk; i++) {
			x = x * 1103515245u + 12345u;
			w[i] = (unsigned char)(x >> 16);
		}
		cr_assert_eq(cli_write_all(fd, w, chunk), 0);
		cr_assert_eq(cli_read_all(fd, rd, chunk), 0);
		cr_assert_eq(memcmp(rd, w, chunk), 0, "echo differs in bytes %zu..%zu", done,
			     done + chunk);
	}
	close(fd);
	kill(pid, SIGTERM);
	for (;;) {
		ssize_t k = read(pfd[0], out + n, sizeof(out) - 1 - n);

		if (k <= 0)
			break;
		n += (size_t)k;
	}
	out[n] = 0;
	close(pfd[0]);
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "keel-echo status 0x%x:\n%s", st, out);
	cr_assert_eq(count_of(out, "ZCRX falls back to the copy path"), 1, "%s", out);
	cr_assert(strstr(out, "ZCRX on lo rx queue 0: EOPNOTSUPP"), "%s", out);
	free(w);
	free(rd);
}

static unsigned long long
json_field(const char *out, const char *key)
{
	const char *p = strstr(out, key);

	cr_assert(p, "no %s in:\n%s", key, out);
	return strtoull(p + strlen(key), NULL, 10);
}

/* keel-bench's network modes take --zcrx: auto on lo falls back and counts what it copied;
 * on fails naming lo and the reason. */
Test(net_zcrx, keel_bench_stream_takes_zcrx_and_reports_fallback_bytes)
{
	static char out[65536];
	int st;

	need_root();
	/* A window of 1 s: with 0.3 s, a shard held 820 ms by a loaded machine (the CI's
	 * parallel build) saw no byte come back in it, and the run measured nothing. */
	st = run_tool("keel-bench",
		      "stream --seconds 1 --warmup 0.1 --no-pin --idle-poll-us 0 --json --zcrx "
		      "auto --iface lo",
		      out, sizeof(out));
	cr_assert_eq(st, 0, "exit %d:\n%s", st, out);
	cr_assert(strstr(out, "\"server_zcrx\": \"fallback\""), "%s", out);
	cr_assert_gt(json_field(out, "\"server_bytes_in\": "), 0, "%s", out);
	/* Counted at each receive completion; bytes_in when the app gets them: what a paused
	 * connection holds at the end (at most the shard's ring, 256 x 16 KiB) is in the
	 * first only. */
	cr_assert_geq(json_field(out, "\"server_zcrx_copy_bytes\": "),
		      json_field(out, "\"server_bytes_in\": "), "%s", out);
	cr_assert_leq(json_field(out, "\"server_zcrx_copy_bytes\": "),
		      json_field(out, "\"server_bytes_in\": ") + 256 * 16384, "%s", out);
	cr_assert_eq(json_field(out, "\"server_zcrx_bytes\": "), 0, "%s", out);
	st = run_tool("keel-bench", "stream --seconds 0.3 --no-pin --zcrx on --iface lo", out,
		      sizeof(out));
	cr_assert_neq(st, 0, "%s", out);
	cr_assert(strstr(out, "ZCRX on lo rx queue 0: EOPNOTSUPP"), "%s", out);
}

/* keel-bench's in-process client runs on a runtime of its own: it must not take the
 * server's --zcrx/--iface/--rxqs (its shards would claim the server's queues, and with
 * --zcrx on a capable NIC fail on EEXIST). Only the 2 server shards try ZCRX. What is
 * asked of the run is its start, not its traffic: on a machine loaded by ctest -j2 its
 * 0.2 s window once saw no byte come back (both shards held, a 26.6 ms stall logged), and
 * keel-bench then exits 1 saying the run measured nothing; that exit is taken, any other
 * failure is not. */
Test(net_zcrx, keel_bench_client_runtime_does_not_take_zcrx)
{
	static char out[65536];
	int st;

	st = run_tool("keel-bench",
		      "stream --client keel --seconds 0.2 --warmup 0.1 --no-pin --idle-poll-us 0 "
		      "--shards 2 --threads 2 --conns 2 --zcrx auto --iface lo --log-level info",
		      out, sizeof(out));
	cr_assert(st == 0 || (st == 1 && strstr(out, "the run measured nothing")), "exit %d:\n%s",
		  st, out);
	cr_assert_eq(count_of(out, "ZCRX falls back to the copy path"), 2, "%s", out);
}

Test(net_zcrx, keel_echo_on_lo_exits_naming_lo_and_reason)
{
	char out[8192];
	int st;

	need_root();
	st = run_echo("--port 0 --addr 127.0.0.1 --shards 1 --idle-poll-us 0 --zcrx on --iface lo",
		      out, sizeof(out));
	cr_assert_neq(st, 0, "keel-echo exited 0:\n%s", out);
	cr_assert_neq(st, 124, "keel-echo did not exit:\n%s", out);
	cr_assert(strstr(out, "ZCRX on lo rx queue 0: EOPNOTSUPP"), "%s", out);
	cr_assert(strstr(out, "lo has no queue API / no parent device"), "%s", out);
	cr_assert_null(strstr(out, "listening on"),
		       "keel-echo said it listens, then exited: a script waiting for the line "
		       "would connect to a server on its way out:\n%s",
		       out);
}

/* A synthetic 32-byte CQE as the kernel writes it for RECV_ZC. */
struct cqe32 {
	struct io_uring_cqe cqe;
	struct keel_zcrx_cqe z;
};
_Static_assert(sizeof(struct cqe32) == 32, "cqe32");

static struct cqe32
mkcqe(int res, uint32_t flags, uint64_t off)
{
	struct cqe32 c;

	memset(&c, 0, sizeof(c));
	c.cqe.res = res;
	c.cqe.flags = flags;
	c.z.off = off;
	return c;
}

#define AREA_ID2 (2ULL << KEEL_IORING_ZCRX_AREA_SHIFT)

Test(net_zcrx, cqe_parse_maps_offsets_and_rejects_bad_ones)
{
	struct keel__zcrx_frag f = { 0, 0 };
	struct cqe32 c;
	const uint64_t len = 1 << 20;

	c = mkcqe(1500, IORING_CQE_F_MORE, AREA_ID2 | 8192);
	cr_assert_eq(keel__zcrx_cqe_parse(&c.cqe, AREA_ID2, len, &f), 1);
	cr_assert_eq(f.off, 8192);
	cr_assert_eq(f.len, 1500);
	/* The last bytes of the area. */
	c = mkcqe(4096, IORING_CQE_F_MORE, AREA_ID2 | (len - 4096));
	cr_assert_eq(keel__zcrx_cqe_parse(&c.cqe, AREA_ID2, len, &f), 1);
	cr_assert_eq(f.off, len - 4096);
	/* One byte past it, an offset past it, another area's id. */
	c = mkcqe(4097, IORING_CQE_F_MORE, AREA_ID2 | (len - 4096));
	cr_assert_eq(keel__zcrx_cqe_parse(&c.cqe, AREA_ID2, len, &f), -EPROTO);
	c = mkcqe(1, IORING_CQE_F_MORE, AREA_ID2 | len);
	cr_assert_eq(keel__zcrx_cqe_parse(&c.cqe, AREA_ID2, len, &f), -EPROTO);
	c = mkcqe(100, IORING_CQE_F_MORE, (1ULL << KEEL_IORING_ZCRX_AREA_SHIFT) | 0);
	cr_assert_eq(keel__zcrx_cqe_parse(&c.cqe, AREA_ID2, len, &f), -EPROTO);
	/* End of stream and errors pass through. */
	c = mkcqe(0, 0, 0);
	cr_assert_eq(keel__zcrx_cqe_parse(&c.cqe, AREA_ID2, len, &f), 0);
	c = mkcqe(-ECONNRESET, 0, 0);
	cr_assert_eq(keel__zcrx_cqe_parse(&c.cqe, AREA_ID2, len, &f), -ECONNRESET);
}

/* 1 MiB in 256 fragments of 4 KiB, scattered over the area in reverse order as a NIC's
 * page pool may hand them out: gathered whole, every byte where the CQEs say. */
Test(net_zcrx, message_of_256_fragments_is_gathered_whole)
{
	const uint32_t nfrag = 256, fsz = 4096;
	const uint64_t area_len = (uint64_t)nfrag * fsz * 2;
	unsigned char *area = malloc(area_len), *want = malloc((size_t)nfrag * fsz);
	struct keel__zcrx_msg m;
	uint32_t x = 7;

	cr_assert(area && want);
	for (size_t i = 0; i < (size_t)nfrag * fsz; i++) {
		x = x * 1103515245u + 12345u;
		want[i] = (unsigned char)(x >> 16);
	}
	keel__zcrx_msg_init(&m, nfrag);
	for (uint32_t i = 0; i < nfrag; i++) {
		uint64_t off = (uint64_t)(nfrag - 1 - i) * 2 * fsz; /* every other page, reversed */
		struct cqe32 c = mkcqe((int)fsz, IORING_CQE_F_MORE, AREA_ID2 | off);
		struct keel__zcrx_frag f;

		memcpy(area + off, want + (size_t)i * fsz, fsz); /* the "NIC" writes the payload */
		cr_assert_eq(keel__zcrx_cqe_parse(&c.cqe, AREA_ID2, area_len, &f), 1);
		cr_assert_eq(keel__zcrx_msg_add(&m, &f), 0, "fragment %u", i);
	}
	cr_assert_eq(m.n, nfrag);
	cr_assert_eq(m.bytes, (uint64_t)nfrag * fsz);
	cr_assert_leq(m.cap, nfrag);
	for (uint32_t i = 0, pos = 0; i < m.n; pos += m.v[i].len, i++)
		cr_assert_eq(memcmp(area + m.v[i].off, want + pos, m.v[i].len), 0, "fragment %u",
			     i);
	/* One more is refused at the bound, not written past it. */
	struct keel__zcrx_frag extra = { 0, 1 };
	cr_assert_eq(keel__zcrx_msg_add(&m, &extra), -E2BIG);
	cr_assert_eq(m.n, nfrag);
	keel__zcrx_msg_reset(&m);
	cr_assert_eq(m.n, 0);
	cr_assert_eq(keel__zcrx_msg_add(&m, &extra), 0);
	keel__zcrx_msg_fini(&m);
	free(area);
	free(want);
}

/* The test plays the kernel on a refill region laid out as 6.18 returns it. */
/* The fragment array's growth: doubling, clamped to the maximum, and no wrap past 2^31
 * fragments (where twice the capacity read 0 in 32 bits, and the array shrank under the
 * next write). */
Test(net_zcrx, message_array_growth_is_clamped_and_does_not_wrap)
{
	cr_assert_eq(keel__zcrx_msg_next_cap(0, 1000), 16);
	cr_assert_eq(keel__zcrx_msg_next_cap(0, 5), 5);
	cr_assert_eq(keel__zcrx_msg_next_cap(16, 1000), 32);
	cr_assert_eq(keel__zcrx_msg_next_cap(512, 1000), 1000);
	cr_assert_eq(keel__zcrx_msg_next_cap(0x80000000u, UINT32_MAX), UINT32_MAX);
	cr_assert_eq(keel__zcrx_msg_next_cap(0xc0000000u, UINT32_MAX), UINT32_MAX);
	cr_assert_eq(keel__zcrx_msg_next_cap(0x7fffffffu, UINT32_MAX), 0xfffffffeu);
}

Test(net_zcrx, refill_ring_entries_tokens_wrap_and_one_publish_per_pass)
{
	uint32_t region[4096 / 4 + 8 * 4];
	struct net_zcrx z;
	struct keel__zcrx_frag f;

	memset(region, 0, sizeof(region));
	memset(&z, 0, sizeof(z));
	z.rq_head = &region[0];
	z.rq_tail = &region[1];                               /* offsets.tail = 4 */
	z.rqes = (struct keel_zcrx_rqe *)(void *)&region[16]; /* offsets.rqes = 64 */
	z.rq_entries = 8;
	z.rq_mask = 7;
	z.area_token = AREA_ID2;

	/* A pass returns three fragments: nothing is visible until the publish. */
	for (uint32_t i = 0; i < 3; i++) {
		f.off = (uint64_t)i * 4096;
		f.len = 100 + i;
		cr_assert_eq(keel__zcrx_refill_add(&z, &f), 0);
	}
	cr_assert_eq(*z.rq_tail, 0);
	cr_assert_eq(keel__zcrx_refill_publish(&z), 3);
	cr_assert_eq(*z.rq_tail, 3);
	cr_assert_eq(keel__zcrx_refill_publish(&z), 0); /* nothing new: no store */
	for (uint32_t i = 0; i < 3; i++) {
		cr_assert_eq(z.rqes[i].off, AREA_ID2 | ((uint64_t)i * 4096));
		cr_assert_eq(z.rqes[i].len, 100 + i);
		cr_assert_eq(z.rqes[i].pad, 0);
	}
	/* Fill the ring: 5 more fit, the ninth does not until the kernel consumes. */
	for (uint32_t i = 3; i < 8; i++) {
		f.off = (uint64_t)i * 4096;
		f.len = 1;
		cr_assert_eq(keel__zcrx_refill_add(&z, &f), 0);
	}
	f.off = 0;
	cr_assert_eq(keel__zcrx_refill_add(&z, &f), -ENOBUFS);
	cr_assert_eq(keel__zcrx_refill_publish(&z), 5);
	*z.rq_head = 4; /* the kernel took four */
	for (uint32_t i = 0; i < 4; i++) {
		f.off = (uint64_t)(20 + i) * 4096;
		f.len = 7;
		cr_assert_eq(keel__zcrx_refill_add(&z, &f), 0);
	}
	cr_assert_eq(keel__zcrx_refill_add(&z, &f), -ENOBUFS);
	cr_assert_eq(keel__zcrx_refill_publish(&z), 4);
	cr_assert_eq(*z.rq_tail, 12);
	/* Wrapped: entries 8..11 sit in slots 0..3. */
	for (uint32_t i = 0; i < 4; i++)
		cr_assert_eq(z.rqes[i].off, AREA_ID2 | ((uint64_t)(20 + i) * 4096), "slot %u", i);
	cr_assert_eq(z.rqes[4].off, AREA_ID2 | (4ULL * 4096)); /* not overwritten */
}

/* In a child without CAP_NET_ADMIN (dropped from its effective set): --zcrx on fails with
 * EPERM and the message names the capability. Exit status 0: as expected. */
static int
nocap_child(void)
{
	struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
	struct __user_cap_data_struct d[2];
	struct zsrv z;
	int r;

	memset(d, 0, sizeof(d));
	if (syscall(SYS_capget, &h, d) < 0)
		return 10;
	d[CAP_NET_ADMIN / 32].effective &= ~(1u << (CAP_NET_ADMIN % 32));
	if (syscall(SYS_capset, &h, d) < 0)
		return 11;
	capture();
	r = zsrv_start(&z, KEEL_POLICY_ON, "lo");
	zsrv_stop(&z);
	if (r != -EPERM) {
		fprintf(stderr, "on without CAP_NET_ADMIN: %d\n%s", r, logbuf);
		return 12;
	}
	if (!logged("ZCRX on lo rx queue 0: EPERM") || !logged("needs CAP_NET_ADMIN")) {
		fprintf(stderr, "message:\n%s", logbuf);
		return 13;
	}
	return 0;
}

Test(net_zcrx, on_without_cap_net_admin_names_the_capability)
{
	pid_t pid;
	int st = 0;

	need_root();
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(nocap_child());
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st), "child died: status 0x%x", st);
	cr_assert_eq(WEXITSTATUS(st), 0, "child failed with %d (see its stderr)", WEXITSTATUS(st));
}

/*
 * The receive path against a simulated kernel side (keel__zcrx_sim_attach): the test
 * writes payload into the area and 32-byte RECV_ZC CQEs naming it, feeds them to the path a
 * connection's completion takes, and reads the refill ring as the kernel would. Every step
 * runs on a shard (run_on): one step is one request, so one loop pass or more, and the
 * deferred refill publish of a step's pass has run before the next step starts.
 */
#define SIM_TOKEN (3ULL << KEEL_IORING_ZCRX_AREA_SHIFT)
#define SIM_AREA  (2u << 20)

struct sim {
	struct keel_runtime *rt;
	struct keel_listener *l;
	struct keel_listener *ul; /* a Unix listener on shard 0, when the test asks */
	char unix_addr[64];
	uint16_t port;
	uint32_t rq_entries;
	struct net_zcrx *z; /* shard 0's simulated interface queue */
	_Atomic int started;
	struct keel_conn *conn;  /* the server side of the test's connection (shard 0) */
	struct keel_framer *fr;  /* its framer (LEN32) */
	struct keel_slice *held; /* [nheld] area slices the test holds across passes */
	unsigned nheld;
	uint64_t seen_frames, seen_frame_len, seen_frame_n;
	bool frame_zero_copy, frame_bytes_ok;
	_Atomic int remote_done; /* shard 1 read and put an exported slice */
	bool stop_hook_ran, stop_bytes_ok;
	uint64_t data_bytes, data_calls; /* delivered to on_data without a framer */
	enum { DATA_PUT, DATA_HOLD, DATA_ECHO } data_mode; /* on_data without a framer */
	int close_status;
	_Atomic int closed;
};
static struct sim S;

static void
sim_start(void *arg)
{
	struct sim *s = arg;
	struct net_shard *ns = NULL;
	unsigned id = keel_shard_id(keel_this_shard());

	if (id == 0) {
		if (s->l && !SHARD_CHECK_EQ(keel_listener_start(s->l), 0))
			keel_stop(-EIO);
		if (s->ul && !SHARD_CHECK_EQ(keel_listener_start(s->ul), 0))
			keel_stop(-EIO);
		if (SHARD_CHECK_EQ(keel__net_shard_get(&ns), 0)) {
			s->z = keel__zcrx_sim_attach(ns, SIM_AREA, s->rq_entries, SIM_TOKEN);
			SHARD_CHECK(s->z != NULL);
		}
	}
	atomic_fetch_add(&s->started, 1);
}

static void held_push(struct keel_slice *s);

static _Atomic unsigned sim_opens; /* connections opened since the last sim_up */

static void
sim_conn_open(struct keel_conn *c)
{
	S.conn = c;
	atomic_fetch_add(&sim_opens, 1);
}

static void
sim_conn_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	/* The app's ordinary framing glue: the same call as on the copy path. */
	if (S.fr) {
		keel_framer_on_data(S.fr, c, s, n);
		return;
	}
	S.data_calls++;
	for (unsigned i = 0; i < n; i++) {
		S.data_bytes += s[i].len;
		if (S.data_mode == DATA_HOLD)
			held_push(&s[i]);
		else if (S.data_mode == DATA_ECHO)
			SHARD_CHECK_EQ(keel_conn_send(c, &s[i]), 0);
		else
			keel_slice_put(&s[i]);
	}
}

static void
sim_conn_close(struct keel_conn *c, int status)
{
	if (S.conn == c) {
		S.conn = NULL;
		S.close_status = status;
		atomic_store(&S.closed, 1);
	}
}

static const struct keel_conn_ops sim_ops = { .on_open = sim_conn_open,
					      .on_data = sim_conn_data,
					      .on_close = sim_conn_close };

/* Start @shards shards; with @listen, a TCP listener on shard 0 (its connections' data
 * goes to S.fr's framer when there is one); with @unix_ops, a Unix listener too. */
static void
sim_up_ex(unsigned shards, uint32_t rq_entries, bool listen, const struct keel_conn_ops *unix_ops)
{
	struct keel_opts o = net_test_opts(shards);

	memset(&S, 0, sizeof(S));
	S.rq_entries = rq_entries;
	o.zcrx = KEEL_POLICY_OFF;
	cr_assert_eq(keel_runtime_create(&o, &S.rt), 0);
	if (listen) {
		struct keel_listen_opts lo;

		memset(&lo, 0, sizeof(lo));
		lo.addr = "127.0.0.1";
		lo.rt = S.rt;
		cr_assert_eq(keel_listener_create(&lo, 1, &sim_ops, &S, &S.l), 0);
		S.port = keel_listener_port(S.l);
	}
	if (unix_ops) {
		struct keel_listen_opts lo;

		snprintf(S.unix_addr, sizeof(S.unix_addr), "unix:@keel-zcrx-test-%d",
			 (int)getpid());
		memset(&lo, 0, sizeof(lo));
		lo.addr = S.unix_addr;
		lo.rt = S.rt;
		cr_assert_eq(keel_listener_create(&lo, 1, unix_ops, &S, &S.ul), 0);
	}
	cr_assert_eq(keel_runtime_start(S.rt, sim_start, &S), 0);
	WAIT_FOR(atomic_load(&S.started) == (int)shards, "shards did not start");
	SHARD_CHECKS_PASSED();
	cr_assert_not_null(S.z);
}

static void
sim_up(unsigned shards, uint32_t rq_entries, bool listen)
{
	sim_up_ex(shards, rq_entries, listen, NULL);
}

static void
sim_down(void)
{
	keel_runtime_stop(S.rt, 0);
	cr_assert_eq(keel_runtime_join(S.rt), 0);
	keel_runtime_destroy(S.rt);
	if (S.l)
		keel_listener_destroy(S.l);
	if (S.ul)
		keel_listener_destroy(S.ul);
	free(S.held);
	SHARD_CHECKS_PASSED();
}

/* sim_up(1, 512, true) with a LEN32 framer (S.fr) calling @on_frame, and a client connected:
 * returns its socket once the server side (S.conn) is open. */
static int
sim_framed(int (*on_frame)(void *arg, struct keel_frame *fr))
{
	struct keel_framer_opts fo;
	int fd;

	memset(&fo, 0, sizeof(fo));
	fo.kind = KEEL_FRAME_LEN32;
	fo.on_frame = on_frame;
	sim_up(1, 512, true);
	cr_assert_eq(keel_framer_create(&fo, &S.fr), 0);
	fd = cli_connect(S.port);
	cr_assert_geq(fd, 0);
	WAIT_FOR(S.conn != NULL, "the connection did not open");
	return fd;
}

struct step {
	struct keel_xreq req;
	void (*fn)(void);
	_Atomic int done;
};

static void
step_cb(struct keel_xreq *r)
{
	struct step *st = r->arg;

	st->fn();
	keel_xreq_complete(r, 0);
	atomic_store(&st->done, 1);
}

/* Run @fn on shard @shard in a pass of its own; return once it ran. */
static void
run_on(unsigned shard, void (*fn)(void))
{
	struct step st;

	memset(&st, 0, sizeof(st));
	st.fn = fn;
	st.req.fn = step_cb;
	st.req.arg = &st;
	cr_assert_eq(keel_runtime_submit(S.rt, shard, &st.req), 0);
	WAIT_FOR(atomic_load(&st.done), "shard %u did not run the step", shard);
}

static uint8_t
pat(uint64_t off)
{
	return (uint8_t)(off * 131 + (off >> 9) + 7);
}

/* The "NIC" writes @len bytes at @off; the "kernel" completes a RECV_ZC naming them. */
static struct cqe32
nic(uint64_t off, uint32_t len)
{
	uint8_t *a = S.z->area;

	for (uint32_t i = 0; i < len; i++)
		a[off + i] = pat(off + i);
	return mkcqe((int)len, IORING_CQE_F_MORE, SIM_TOKEN | off);
}

static bool
bytes_ok(const struct keel_slice *s, uint64_t off)
{
	for (uint32_t i = 0; i < s->len; i++)
		if (s->data[i] != pat(off + i))
			return false;
	return true;
}

static uint32_t
tail_now(void)
{
	return __atomic_load_n(S.z->rq_tail, __ATOMIC_ACQUIRE);
}

static struct keel_zcrx_stats
zst(void)
{
	struct keel_zcrx_stats st;

	memset(&st, 0, sizeof(st));
	SHARD_CHECK_EQ(keel_zcrx_stats(keel_this_shard(), &st), 0);
	return st;
}

/* The shard's network counters (keel_net_stats), from a step. */
static struct keel_net_stats
nst(void)
{
	struct keel_net_stats st;

	memset(&st, 0, sizeof(st));
	SHARD_CHECK_EQ(keel_net_stats(keel_this_shard(), &st), 0);
	return st;
}

/* 64 fragments of varied lengths scattered over the area. */
#define NF 64
static uint64_t
frag_off(unsigned i)
{
	return (uint64_t)((i * 37u) % NF) * 8192 + (i % 3) * 100;
}
static uint32_t
frag_len(unsigned i)
{
	return 1 + (i * 997u) % 4000;
}

static void
held_push(struct keel_slice *s)
{
	S.held = realloc(S.held, (S.nheld + 1) * sizeof(*S.held));
	S.held[S.nheld++] = *s;
}

static void
step_take_put_half(void)
{
	struct net_shard *ns = keel__net_shard_cur();

	for (unsigned i = 0; i < NF; i++) {
		struct cqe32 c = nic(frag_off(i), frag_len(i));
		struct keel_slice s;

		if (!SHARD_CHECK_EQ(keel__zcrx_take(ns, &c.cqe, &s), 1))
			return;
		/* Zero copy: the slice is the area's bytes at the CQE's offset. */
		SHARD_CHECK(s.data == (uint8_t *)S.z->area + frag_off(i), " fragment %u", i);
		SHARD_CHECK_EQ(s.len, frag_len(i));
		SHARD_CHECK(bytes_ok(&s, frag_off(i)), " fragment %u bytes", i);
		if (i % 2 == 0)
			keel_slice_put(&s);
		else
			held_push(&s);
	}
	/* Put but not yet published: the tail moves once, at the end of the pass. */
	SHARD_CHECK_EQ(tail_now(), 0);
	SHARD_CHECK_EQ(zst().refill_publishes, 0);
}

static void
step_check_half_put_rest(void)
{
	struct keel_zcrx_stats st = zst();

	SHARD_CHECK_EQ(tail_now(), NF / 2);
	SHARD_CHECK_EQ(st.refill_publishes, 1); /* one publish for 32 puts */
	SHARD_CHECK_EQ(st.refills, NF / 2);
	SHARD_CHECK_EQ(st.held, NF / 2);
	SHARD_CHECK_EQ(st.zc_frags, NF);
	for (unsigned i = 0; i < NF / 2; i++) {
		const struct keel_zcrx_rqe *e = &S.z->rqes[i];

		SHARD_CHECK_EQ(e->off, SIM_TOKEN | frag_off(2 * i), " entry %u", i);
		SHARD_CHECK_EQ(e->len, frag_len(2 * i), " entry %u", i);
		SHARD_CHECK_EQ(e->pad, 0);
	}
	/* The slices held across passes: still intact, then put. */
	for (unsigned i = 0; i < S.nheld; i++) {
		SHARD_CHECK(bytes_ok(&S.held[i], frag_off(2 * i + 1)), " held %u", i);
		keel_slice_put(&S.held[i]);
	}
	S.nheld = 0;
}

static void
step_check_all_returned_once(void)
{
	struct keel_zcrx_stats st = zst();
	unsigned seen[NF];

	memset(seen, 0, sizeof(seen));
	SHARD_CHECK_EQ(tail_now(), NF);
	SHARD_CHECK_EQ(st.refill_publishes, 2);
	SHARD_CHECK_EQ(st.refills, NF);
	SHARD_CHECK_EQ(st.held, 0);
	SHARD_CHECK_EQ(st.zc_bytes > 0, 1);
	for (unsigned k = 0; k < NF; k++) {
		const struct keel_zcrx_rqe *e = &S.z->rqes[k];

		SHARD_CHECK_EQ(e->off & KEEL_IORING_ZCRX_AREA_MASK, SIM_TOKEN, " entry %u", k);
		for (unsigned i = 0; i < NF; i++)
			if ((e->off & ~KEEL_IORING_ZCRX_AREA_MASK) == frag_off(i) &&
			    e->len == frag_len(i))
				seen[i]++;
	}
	for (unsigned i = 0; i < NF; i++)
		SHARD_CHECK_EQ(seen[i], 1, " fragment %u returned %u times", i, seen[i]);
}

Test(net_zcrx, sim_offsets_bytes_refills_once_one_publish_per_pass)
{
	sim_up(1, 128, false);
	run_on(0, step_take_put_half);
	run_on(0, step_check_half_put_rest);
	run_on(0, step_check_all_returned_once);
	sim_down();
}

/* Completions refused with -EPROTO (an offset outside the area: an ABI keel does not know)
 * are counted, since their buffers never go back (refills stays below what the kernel
 * handed out), and logged rate-limited: each later CQE of the aborted connection's
 * multishot logged again. */
#define BAD_CQES 1500
static void
step_many_bad_offsets(void)
{
	struct net_shard *ns = keel__net_shard_cur();
	struct keel_slice s;

	for (unsigned i = 0; i < BAD_CQES; i++) {
		struct cqe32 c = mkcqe(64, IORING_CQE_F_MORE, AREA_ID2 | (i * 64));

		SHARD_CHECK_EQ(keel__zcrx_take(ns, &c.cqe, &s), -EPROTO);
	}
	SHARD_CHECK_EQ(zst().frags_refused, BAD_CQES);
	SHARD_CHECK_EQ(zst().zc_frags, 0);
	SHARD_CHECK_EQ(zst().held, 0);
}

Test(net_zcrx, sim_refused_fragments_are_counted_and_logged_rate_limited)
{
	sim_up(1, 16, false);
	capture();
	run_on(0, step_many_bad_offsets);
	sim_down();
	keel_log_set_sink(NULL, NULL);
	/* The first, then one in 1000. */
	cr_assert_eq(count_of(logbuf, "outside the 2097152-byte area"), 2, "%s", logbuf);
	cr_assert(logged("keel_zcrx_stats.frags_refused"), "%s", logbuf);
}

/* A completion naming bytes outside the area, or another area, is refused. */
static void
step_bad_offsets(void)
{
	struct net_shard *ns = keel__net_shard_cur();
	struct cqe32 c = mkcqe(4096, IORING_CQE_F_MORE, SIM_TOKEN | (SIM_AREA - 100));
	struct keel_slice s;

	SHARD_CHECK_EQ(keel__zcrx_take(ns, &c.cqe, &s), -EPROTO);
	c = mkcqe(10, IORING_CQE_F_MORE, AREA_ID2 | 0);
	SHARD_CHECK_EQ(keel__zcrx_take(ns, &c.cqe, &s), -EPROTO);
	c = mkcqe(0, 0, 0);
	SHARD_CHECK_EQ(keel__zcrx_take(ns, &c.cqe, &s), 0);
	SHARD_CHECK_EQ(zst().held, 0);
}

Test(net_zcrx, sim_offsets_outside_the_area_are_refused)
{
	sim_up(1, 16, false);
	run_on(0, step_bad_offsets);
	sim_down();
}

/* keel_alloc_malloc as keel's libraries call it (-Wl,--wrap, tests/net/CMakeLists.txt): while
 * alloc_fail_next is set on the calling thread, its next call fails, once. keel_buf_wrap
 * takes a block of buffer headers from it when its free headers have run out. */
void *__real_keel_alloc_malloc(struct keel_alloc *a, size_t size);
void *__wrap_keel_alloc_malloc(struct keel_alloc *a, size_t size);
static _Thread_local bool alloc_fail_next;

void *
__wrap_keel_alloc_malloc(struct keel_alloc *a, size_t size)
{
	if (alloc_fail_next) {
		alloc_fail_next = false;
		return NULL;
	}
	return __real_keel_alloc_malloc(a, size);
}

/* A fragment no buffer header could wrap goes straight back to the kernel, and is counted
 * in zc_frags and zc_bytes all the same, so that refills and zc_frags end equal
 * (docs/zcrx.md, "What to measure"). Fragments are taken and held until the shard's free
 * headers run out and the next block cannot be had. */
#define NOHDR_MAX 4000u /* takes before the headers must have run out (< the ring's 4096) */
static uint64_t nohdr_off, nohdr_bytes;
static uint32_t nohdr_len;

static void
step_take_until_no_header(void)
{
	struct net_shard *ns = keel__net_shard_cur();
	struct keel_zcrx_stats st;
	unsigned i;
	int r = 1;

	nohdr_bytes = 0;
	alloc_fail_next = true;
	for (i = 0; i < NOHDR_MAX && r == 1; i++) {
		uint64_t off = (uint64_t)(i % (SIM_AREA / 4096)) * 4096;
		uint32_t len = 100 + i % 7;
		struct cqe32 c = nic(off, len);
		struct keel_slice s;

		r = keel__zcrx_take(ns, &c.cqe, &s);
		nohdr_bytes += len;
		if (r == 1) {
			held_push(&s);
		} else {
			nohdr_off = off;
			nohdr_len = len;
		}
	}
	alloc_fail_next = false;
	if (!SHARD_CHECK_EQ(r, -ENOMEM, " after %u takes (%u held)", i, S.nheld))
		return;
	st = zst();
	SHARD_CHECK_EQ(st.zc_frags, S.nheld + 1);
	SHARD_CHECK_EQ(st.zc_bytes, nohdr_bytes);
	SHARD_CHECK_EQ(st.held, S.nheld);
	SHARD_CHECK_EQ(st.refills, 1); /* the unwrapped fragment, at once */
	for (unsigned k = 0; k < S.nheld; k++)
		keel_slice_put(&S.held[k]);
}

static void
step_check_refills_equal_frags(void)
{
	struct keel_zcrx_stats st = zst();
	const struct keel_zcrx_rqe *e = &S.z->rqes[0];

	SHARD_CHECK_EQ(st.held, 0);
	SHARD_CHECK_EQ(st.refills, S.nheld + 1);
	SHARD_CHECK_EQ(st.refills, st.zc_frags, " refills and zc_frags differ");
	SHARD_CHECK_EQ(st.refills_pending, 0);
	SHARD_CHECK_EQ(tail_now(), S.nheld + 1);
	/* The first entry written is the fragment no header wrapped. */
	SHARD_CHECK_EQ(e->off, SIM_TOKEN | nohdr_off);
	SHARD_CHECK_EQ(e->len, nohdr_len);
	S.nheld = 0;
}

Test(net_zcrx, sim_a_fragment_no_header_wraps_is_counted_and_refilled)
{
	sim_up(1, 4096, false);
	run_on(0, step_take_until_no_header);
	SHARD_CHECKS_PASSED();
	run_on(0, step_check_refills_equal_frags);
	sim_down();
}

/* A refill ring of 8 entries and 20 fragments put in one pass: 8 go in, 12 wait; the
 * "kernel" consumes, the next completions let the rest in, wrapping the ring. */
#define WF 20
static void
step_wrap_take_put_all(void)
{
	struct net_shard *ns = keel__net_shard_cur();

	for (unsigned i = 0; i < WF; i++) {
		struct cqe32 c = nic((uint64_t)i * 4096, 1000 + i);
		struct keel_slice s;

		if (!SHARD_CHECK_EQ(keel__zcrx_take(ns, &c.cqe, &s), 1))
			return;
		keel_slice_put(&s);
	}
}

static void
step_wrap_consume_8_and_complete(void)
{
	struct net_shard *ns = keel__net_shard_cur();
	struct keel_zcrx_stats st = zst();
	struct cqe32 c;
	struct keel_slice s;

	SHARD_CHECK_EQ(tail_now(), 8);
	SHARD_CHECK_EQ(st.refills, 8);
	SHARD_CHECK_EQ(st.refills_pending, WF - 8);
	/* The kernel takes 8 entries and completes one more receive. */
	__atomic_store_n(S.z->rq_head, 8, __ATOMIC_RELEASE);
	c = nic(100 * 4096, 77);
	if (SHARD_CHECK_EQ(keel__zcrx_take(ns, &c.cqe, &s), 1))
		keel_slice_put(&s);
}

static void
step_wrap_consume_rest(void)
{
	struct net_shard *ns = keel__net_shard_cur();
	struct cqe32 c;
	struct keel_slice s;

	SHARD_CHECK_EQ(tail_now(), 16);
	SHARD_CHECK_EQ(zst().refills_pending, WF - 16 + 1);
	__atomic_store_n(S.z->rq_head, 16, __ATOMIC_RELEASE);
	c = nic(101 * 4096, 78);
	if (SHARD_CHECK_EQ(keel__zcrx_take(ns, &c.cqe, &s), 1))
		keel_slice_put(&s);
}

static void
step_wrap_check(void)
{
	struct keel_zcrx_stats st = zst();

	/* 20 + 2 fragments, all written; the last two are the extra completions. */
	SHARD_CHECK_EQ(tail_now(), WF + 2);
	SHARD_CHECK_EQ(st.refills, WF + 2);
	SHARD_CHECK_EQ(st.refills_pending, 0);
	SHARD_CHECK_EQ(st.refills_lost, 0);
	/* In order, wrapped: entry k sits in slot k % 8. */
	for (unsigned k = 16; k < WF + 2; k++) {
		const struct keel_zcrx_rqe *e = &S.z->rqes[k & 7];
		uint64_t off = k < WF ? (uint64_t)k * 4096 : (uint64_t)(100 + k - WF) * 4096;

		SHARD_CHECK_EQ(e->off, SIM_TOKEN | off, " entry %u", k);
	}
}

Test(net_zcrx, sim_wrapped_refill_ring_and_full_ring_waits)
{
	sim_up(1, 8, false);
	run_on(0, step_wrap_take_put_all);
	run_on(0, step_wrap_consume_8_and_complete);
	run_on(0, step_wrap_consume_rest);
	run_on(0, step_wrap_check);
	sim_down();
}

/* Refill entries that waited for room in a full ring go in once the kernel has consumed
 * entries, even when no completion follows: the shard's retry timer writes them. Before,
 * only a completion or a put tried them again, so with every receive waiting for a buffer
 * they stayed out of the kernel's reach. */
static uint32_t tail_seen, pending_seen;

static void
step_consume_all_without_a_completion(void)
{
	SHARD_CHECK_EQ(tail_now(), 8);
	SHARD_CHECK_EQ(zst().refills_pending, WF - 8);
	__atomic_store_n(S.z->rq_head, 8, __ATOMIC_RELEASE);
}

static void
step_look_at_the_ring(void)
{
	tail_seen = tail_now();
	pending_seen = (uint32_t)zst().refills_pending;
}

Test(net_zcrx, sim_refills_waiting_for_a_full_ring_go_in_without_a_completion)
{
	uint64_t dl;

	sim_up(1, 8, false);
	run_on(0, step_wrap_take_put_all);
	run_on(0, step_consume_all_without_a_completion);
	SHARD_CHECKS_PASSED();
	dl = test_now_ms() + TEST_WAIT_MS;
	do
		run_on(0, step_look_at_the_ring);
	while (tail_seen != 16 && test_now_ms() < dl);
	cr_assert_eq(tail_seen, 16, "the waiting refills were not written (tail %u)", tail_seen);
	cr_assert_eq(pending_seen, WF - 16);
	sim_down();
}

/* 1 MiB in 256 fragments of 4 KiB, scattered in reverse over the area, through a real
 * connection's delivery and the app's framer: one frame of 256 slices of the area. */
#define MSG_FRAGS 256u
#define MSG_BYTES (MSG_FRAGS * 4096u)

static uint64_t
msg_off(unsigned i)
{
	return (uint64_t)(MSG_FRAGS - 1 - i) * 8192; /* every other page, reversed */
}

static int
sim_on_frame(void *arg, struct keel_frame *fr)
{
	uint64_t pos = 4; /* stream offset of the payload's first byte */
	(void)arg;

	S.seen_frames++;
	S.seen_frame_len = fr->len;
	S.seen_frame_n = fr->n;
	S.frame_zero_copy = true;
	S.frame_bytes_ok = true;
	for (unsigned i = 0; i < fr->n; i++) {
		struct keel_slice *s = &fr->s[i];
		unsigned fi = (unsigned)(pos / 4096);
		uint64_t aoff = msg_off(fi) + pos % 4096;

		if (s->data != (uint8_t *)S.z->area + aoff)
			S.frame_zero_copy = false;
		if (!bytes_ok(s, aoff))
			S.frame_bytes_ok = false;
		pos += s->len;
		keel_slice_put(s);
	}
	return 0;
}

/* Fragments @from..@to of the message, as completions on S.conn; the first carries the
 * LEN32 header (the frame's payload length). */
/* Fragments [@from, @to) of a LEN32 frame of @bytes in all (its length over the pattern of
 * the first 4 bytes), fragment i at area offset @off(i). */
static void
inject_frame(unsigned from, unsigned to, uint64_t (*off)(unsigned), uint32_t bytes)
{
	for (unsigned i = from; i < to; i++) {
		struct cqe32 c = nic(off(i), 4096);

		if (i == 0) {
			uint8_t *a = (uint8_t *)S.z->area + off(0);
			uint32_t plen = bytes - 4;

			a[0] = (uint8_t)(plen >> 24);
			a[1] = (uint8_t)(plen >> 16);
			a[2] = (uint8_t)(plen >> 8);
			a[3] = (uint8_t)plen;
		}
		SHARD_CHECK_EQ(keel__conn_zcrx_inject(S.conn, &c.cqe), 0, " fragment %u", i);
	}
}

static void
inject_frags(unsigned from, unsigned to)
{
	inject_frame(from, to, msg_off, MSG_BYTES);
}

static void
step_inject_message(void)
{
	if (SHARD_CHECK(S.conn != NULL))
		inject_frags(0, MSG_FRAGS);
}

static void
step_check_message(void)
{
	struct keel_zcrx_stats st = zst();

	SHARD_CHECK_EQ(S.seen_frames, 1);
	SHARD_CHECK_EQ(S.seen_frame_len, MSG_BYTES - 4);
	SHARD_CHECK_EQ(S.seen_frame_n, MSG_FRAGS);
	SHARD_CHECK(S.frame_zero_copy);
	SHARD_CHECK(S.frame_bytes_ok);
	SHARD_CHECK_EQ(st.zc_frags, MSG_FRAGS);
	SHARD_CHECK_EQ(st.zc_bytes, MSG_BYTES);
	SHARD_CHECK_EQ(st.frames, 1);
	SHARD_CHECK_EQ(st.frame_frags_max, MSG_FRAGS);
	SHARD_CHECK_EQ(st.held, 0);
	SHARD_CHECK_EQ(st.refills, MSG_FRAGS);
	SHARD_CHECK_EQ(tail_now(), MSG_FRAGS);
}

Test(net_zcrx, sim_1mib_message_in_256_fragments_through_conn_and_framer)
{
	int fd;

	fd = sim_framed(sim_on_frame);
	run_on(0, step_inject_message);
	run_on(0, step_check_message);
	close(fd);
	sim_down();
	keel_framer_destroy(S.fr);
}

/* A partial frame holding area slices when the area runs out (RECV_ZC ends with ENOMEM):
 * the framer copies what it holds into a buffer of its own and the slices go back to the
 * kernel (refilled), so a message larger than the area's free buffers can complete. Half a
 * 1 MiB message is held, the area "runs out", the other half follows. */
static bool reclaim_frame_ok;
static unsigned reclaim_frames;
static int kind_now; /* step_kind: the connection's receive kind (2: RECV_ZC armed) */
static void step_kind(void);
static void wait_recv_zc_armed(const char *after);

static int
reclaim_on_frame(void *arg, struct keel_frame *fr)
{
	uint64_t pos = 4; /* stream offset of the payload's first byte */
	(void)arg;

	reclaim_frames++;
	reclaim_frame_ok = fr->len == MSG_BYTES - 4;
	for (unsigned i = 0; i < fr->n; i++) {
		for (uint32_t k = 0; k < fr->s[i].len; k++, pos++)
			if (fr->s[i].data[k] != pat(msg_off((unsigned)(pos / 4096)) + pos % 4096))
				reclaim_frame_ok = false;
		keel_slice_put(&fr->s[i]);
	}
	return 0;
}

static void
step_half_then_enomem(void)
{
	struct cqe32 c = mkcqe(-ENOMEM, 0, 0);

	if (!SHARD_CHECK(S.conn != NULL))
		return;
	inject_frags(0, MSG_FRAGS / 2);
	SHARD_CHECK_EQ(zst().held, MSG_FRAGS / 2);
	SHARD_CHECK_EQ(keel__conn_zcrx_inject(S.conn, &c.cqe), 0);
}

static void
step_reclaimed_then_rest(void)
{
	struct keel_net_stats ns;

	SHARD_CHECK_EQ(zst().held, 0, " the partial frame still holds area slices");
	SHARD_CHECK_EQ(zst().refills, MSG_FRAGS / 2);
	SHARD_CHECK_EQ(keel_net_stats(keel_this_shard(), &ns), 0);
	SHARD_CHECK_EQ(ns.frame_reclaims, 1);
	SHARD_CHECK_EQ(reclaim_frames, 0);
}

static void
step_rest(void)
{
	if (SHARD_CHECK(S.conn != NULL))
		inject_frags(MSG_FRAGS / 2, MSG_FRAGS);
}

static void
step_reclaim_check(void)
{
	SHARD_CHECK_EQ(reclaim_frames, 1);
	SHARD_CHECK(reclaim_frame_ok, " the frame's bytes differ");
	SHARD_CHECK_EQ(zst().held, 0);
	SHARD_CHECK_EQ(zst().refills, MSG_FRAGS);
}

Test(net_zcrx, sim_a_partial_frame_gives_its_area_slices_back_when_the_area_runs_out)
{
	int fd;

	reclaim_frames = 0;
	fd = sim_framed(reclaim_on_frame);
	run_on(0, step_half_then_enomem);
	SHARD_CHECKS_PASSED();
	run_on(0, step_reclaimed_then_rest);
	SHARD_CHECKS_PASSED();
	/* The refill published re-arms the waiting connection, in a pass after it. */
	wait_recv_zc_armed("after the reclaim");
	run_on(0, step_rest);
	run_on(0, step_reclaim_check);
	close(fd);
	sim_down();
	keel_framer_destroy(S.fr);
}

/* A partial frame that holds past three quarters of the area gives its slices back with no
 * ENOMEM from the kernel, which sends none when the area runs out (its ENOMEM is for its
 * own copies; the NIC drops what it cannot place, and a frame that cannot complete then
 * held the area for good). A frame of 450 pages in a 512-page area: 400 arrive (past the
 * line, 384), the framer copies them out, the last 50 follow, and the frame is whole. */
#define BIG_FRAGS 450u

static bool big_ok;
static unsigned big_frames;

static int
big_on_frame(void *arg, struct keel_frame *fr)
{
	uint64_t pos = 4;
	(void)arg;

	big_frames++;
	big_ok = fr->len == BIG_FRAGS * 4096u - 4;
	for (unsigned i = 0; i < fr->n; i++) {
		for (uint32_t k = 0; k < fr->s[i].len; k++, pos++)
			if (fr->s[i].data[k] != pat(pos))
				big_ok = false;
		keel_slice_put(&fr->s[i]);
	}
	return 0;
}

static uint64_t
big_off(unsigned i)
{
	return (uint64_t)i * 4096; /* page i: the frame's bytes are the area's, from 0 */
}

static void
big_inject(unsigned from, unsigned to)
{
	inject_frame(from, to, big_off, BIG_FRAGS * 4096u);
}

static void
step_big_first(void)
{
	if (SHARD_CHECK(S.conn != NULL))
		big_inject(0, 400);
}

static void
step_big_reclaimed(void)
{
	struct keel_net_stats ns;

	SHARD_CHECK_EQ(zst().held, 0, " the partial frame still holds area slices");
	SHARD_CHECK_EQ(keel_net_stats(keel_this_shard(), &ns), 0);
	SHARD_CHECK_EQ(ns.frame_reclaims, 1);
	SHARD_CHECK_EQ(big_frames, 0);
	if (S.conn)
		big_inject(400, BIG_FRAGS);
}

static void
step_big_check(void)
{
	SHARD_CHECK_EQ(big_frames, 1);
	SHARD_CHECK(big_ok, " the frame's bytes differ");
	SHARD_CHECK_EQ(zst().held, 0);
	SHARD_CHECK_EQ(zst().refills, BIG_FRAGS);
}

Test(net_zcrx, sim_a_partial_frame_past_three_quarters_of_the_area_gives_its_slices_back)
{
	int fd;

	big_frames = 0;
	big_ok = false;
	fd = sim_framed(big_on_frame);
	run_on(0, step_big_first);
	SHARD_CHECKS_PASSED();
	run_on(0, step_big_reclaimed); /* a step later: the reclaim runs after the pass */
	SHARD_CHECKS_PASSED();
	run_on(0, step_big_check);
	close(fd);
	sim_down();
	keel_framer_destroy(S.fr);
}

/* The area already past the line when a frame starts (the app holds 390 of 512 pages): the
 * partial frame's slices are given back too. The check ran only when the count crossed the
 * line (held == line + 1), so a frame that began holding after that kept its slices until
 * the kernel's ENOMEM, which the NIC's drops never bring. */
#define LATE_HELD 390u

static uint64_t
late_off(unsigned i)
{
	return (uint64_t)(LATE_HELD + i) * 4096; /* the pages after the app's */
}

static void inject_at(unsigned from, unsigned to);

static void
step_late_hold_then_frame(void)
{
	struct keel_framer_opts fo;

	if (!SHARD_CHECK(S.conn != NULL))
		return;
	S.data_mode = DATA_HOLD;
	inject_at(0, LATE_HELD);
	SHARD_CHECK_EQ(zst().held, LATE_HELD);
	memset(&fo, 0, sizeof(fo));
	fo.kind = KEEL_FRAME_LEN32;
	fo.on_frame = big_on_frame;
	SHARD_CHECK_EQ(keel_framer_create(&fo, &S.fr), 0);
	inject_frame(0, 100, late_off, BIG_FRAGS * 4096u); /* 100 pages of a 450-page frame */
}

static void
step_late_reclaimed(void)
{
	struct keel_net_stats ns;

	SHARD_CHECK_EQ(zst().held, LATE_HELD, " the partial frame still holds area slices");
	SHARD_CHECK_EQ(keel_net_stats(keel_this_shard(), &ns), 0);
	SHARD_CHECK_EQ(ns.frame_reclaims, 1);
	SHARD_CHECK_EQ(big_frames, 0);
	for (unsigned i = 0; i < S.nheld; i++)
		keel_slice_put(&S.held[i]);
	S.nheld = 0;
	/* The frame never completes: its copies are the shard's memory, given back here. */
	keel_framer_destroy(S.fr);
	S.fr = NULL;
}

Test(net_zcrx, sim_a_frame_begun_past_three_quarters_of_the_area_gives_its_slices_back)
{
	int fd;

	big_frames = 0;
	sim_up(1, 512, true);
	fd = cli_connect(S.port);
	cr_assert_geq(fd, 0);
	WAIT_FOR(S.conn != NULL, "the connection did not open");
	run_on(0, step_late_hold_then_frame);
	SHARD_CHECKS_PASSED();
	run_on(0, step_late_reclaimed); /* a step later: the reclaim runs after the pass */
	SHARD_CHECKS_PASSED();
	close(fd);
	sim_down();
}

/* Area slices that a send queue or a paused connection would hold while the area runs low
 * (over three quarters of its 4 KiB buffers held) are copied out and go back to the kernel,
 * as a copy-path ring's buffers do (conn.c, unring): a few peers that never read could
 * otherwise pin the area, and the NIC would drop what it cannot place. The 2 MiB area has
 * 512 buffers: the app holds 384, then echoes 4 fragments and holds 2 more while paused. */
#define PRESS_LINE 384u
#define PRESS_LEN  1000u

static void
inject_at(unsigned from, unsigned to)
{
	for (unsigned i = from; i < to; i++) {
		struct cqe32 c = nic((uint64_t)i * 4096, PRESS_LEN);

		SHARD_CHECK_EQ(keel__conn_zcrx_inject(S.conn, &c.cqe), 0, " fragment %u", i);
	}
}

static void
step_press_hold_echo_pause(void)
{
	if (!SHARD_CHECK(S.conn != NULL))
		return;
	S.data_mode = DATA_HOLD;
	inject_at(0, PRESS_LINE);
	SHARD_CHECK_EQ(zst().held, PRESS_LINE);
	SHARD_CHECK_EQ(nst().recv_copies, 0, " copied below the line");
	/* Over the line: each slice the echo queues is copied and its buffer put. */
	S.data_mode = DATA_ECHO;
	inject_at(PRESS_LINE, PRESS_LINE + 4);
	SHARD_CHECK_EQ(zst().held, PRESS_LINE, " the send queue holds area slices");
	SHARD_CHECK_EQ(nst().recv_copies, 4);
	/* Paused: what completes before the receive's cancel is held, and copied. */
	keel_conn_pause_read(S.conn);
	inject_at(PRESS_LINE + 4, PRESS_LINE + 6);
	SHARD_CHECK_EQ(zst().held, PRESS_LINE, " the paused reads hold area slices");
	SHARD_CHECK_EQ(nst().recv_copies, 6);
}

static void
step_press_resume(void)
{
	if (!SHARD_CHECK(S.conn != NULL))
		return;
	keel_conn_resume_read(S.conn); /* the held 2 are echoed too */
}

static void
step_press_put_all(void)
{
	for (unsigned i = 0; i < S.nheld; i++) {
		SHARD_CHECK(bytes_ok(&S.held[i], (uint64_t)i * 4096), " held %u", i);
		keel_slice_put(&S.held[i]);
	}
	S.nheld = 0;
	SHARD_CHECK_EQ(zst().held, 0);
}

Test(net_zcrx, sim_slices_a_send_queue_or_a_paused_read_would_hold_leave_a_low_area)
{
	uint8_t got[6 * PRESS_LEN];
	int fd;

	sim_up(1, 512, true);
	fd = cli_connect(S.port);
	cr_assert_geq(fd, 0);
	WAIT_FOR(S.conn != NULL, "the connection did not open");
	run_on(0, step_press_hold_echo_pause);
	SHARD_CHECKS_PASSED();
	run_on(0, step_press_resume);
	SHARD_CHECKS_PASSED();
	/* The copies carry the area's bytes: the 6 fragments come back in order. */
	cr_assert_eq(cli_read_all(fd, got, sizeof(got)), 0);
	for (unsigned f = 0; f < 6; f++)
		for (unsigned k = 0; k < PRESS_LEN; k++)
			cr_assert_eq(got[f * PRESS_LEN + k],
				     pat((uint64_t)(PRESS_LINE + f) * 4096 + k),
				     "fragment %u byte %u", f, k);
	run_on(0, step_press_put_all);
	close(fd);
	sim_down();
}

/* A reclaim whose copy finds no memory aborts the framer's connection at once, logged. It
 * used to wait for that connection's next push, which a peer that sent its partial frame
 * and waits never makes: the connection hung, with no log and no on_close. The shard's
 * memory is taken first (hog), then 400 pages of a 450-page frame arrive (past the area's
 * line, so the framers reclaim), and nothing more. */
static struct keel_slice *hog;
static unsigned nhog;

static void
step_hog_memory(void)
{
	for (size_t sz = 1u << 20; sz >= 4096; sz /= 2)
		for (;;) {
			struct keel_slice b;

			if (keel_buf_alloc(keel_shard_alloc(), sz, &b) < 0)
				break;
			hog = realloc(hog, (nhog + 1) * sizeof(*hog));
			hog[nhog++] = b;
		}
	if (SHARD_CHECK(S.conn != NULL))
		big_inject(0, 400);
}

static void
step_hog_free(void)
{
	for (unsigned i = 0; i < nhog; i++)
		keel_slice_put(&hog[i]);
	free(hog);
	hog = NULL;
	nhog = 0;
	SHARD_CHECK_EQ(zst().held, 0, " the failed frame kept area slices");
}

Test(net_zcrx, sim_a_reclaim_without_memory_aborts_a_waiting_connection_at_once)
{
	int fd;

	big_frames = 0;
	fd = sim_framed(big_on_frame);
	run_on(0, step_hog_memory);
	SHARD_CHECKS_PASSED();
	WAIT_FOR(atomic_load(&S.closed), "the connection whose frame could not be copied is still "
					 "open: its peer sends nothing more");
	cr_assert_eq(S.close_status, -ENOMEM);
	cr_assert_eq(big_frames, 0);
	run_on(0, step_hog_free);
	close(fd);
	sim_down();
	keel_framer_destroy(S.fr);
}

/* The simulated RECV_ZC: an accepted TCP connection of a simulated shard arms one, and an
 * injected completion takes recv_cb's path: a final one (no F_MORE) with data is delivered
 * and the receive is armed again; a final EOF closes the connection, whose simulated
 * receive ends like a real one (no hang at close). */
static uint64_t rearms_before;

static void
step_sim_recv_is_armed_then_final_data(void)
{
	struct cqe32 c = nic(7 * 4096, 1234);

	if (!SHARD_CHECK(S.conn != NULL))
		return;
	SHARD_CHECK_EQ(keel__conn_recv_kind(S.conn), 2);
	rearms_before = nst().rearms;
	c.cqe.flags = 0; /* the multishot's last completion, with data */
	SHARD_CHECK_EQ(keel__conn_zcrx_inject(S.conn, &c.cqe), 0);
	SHARD_CHECK_EQ(S.data_bytes, 1234);
	SHARD_CHECK_EQ(keel__conn_recv_kind(S.conn), 2, " not armed again");
	SHARD_CHECK_EQ(nst().rearms, rearms_before + 1);
	SHARD_CHECK_EQ(zst().zc_frags, 1);
}

static void
step_sim_recv_eof(void)
{
	struct cqe32 c = mkcqe(0, 0, 0);

	if (!SHARD_CHECK(S.conn != NULL))
		return;
	SHARD_CHECK_EQ(keel__conn_zcrx_inject(S.conn, &c.cqe), 0);
	/* No on_eof: the connection closes; its receive is no longer armed. */
	if (S.conn)
		SHARD_CHECK_EQ(keel__conn_recv_kind(S.conn), 0);
}

Test(net_zcrx, sim_conn_arms_a_simulated_recv_zc_through_recv_cb)
{
	int fd;

	sim_up(1, 64, true);
	fd = cli_connect(S.port);
	cr_assert_geq(fd, 0);
	WAIT_FOR(S.conn != NULL, "the connection did not open");
	run_on(0, step_sim_recv_is_armed_then_final_data);
	run_on(0, step_sim_recv_eof);
	WAIT_FOR(atomic_load(&S.closed), "the connection did not close after EOF");
	cr_assert_eq(S.close_status, 0);
	close(fd);
	sim_down();
}

/* RECV_ZC only where the NIC's queue can bring the data: accepted TCP connections (steered
 * to the shard that owns their queue). A Unix connection (the kernel answers
 * EPROTONOSUPPORT) and an outbound connection (whose packets the NIC puts on whatever queue
 * its RSS picks: EFAULT) receive through the copy path, accepted or not. */
enum { K_UNIX_ACCEPTED, K_TCP_OUT, K_UNIX_OUT, K_N };
static struct keel_conn *K[K_N];
static int ktag[K_N] = { K_UNIX_ACCEPTED, K_TCP_OUT, K_UNIX_OUT };

static void
k_open(struct keel_conn *c)
{
	int *tag = keel_conn_app(c);

	K[tag == (void *)&S ? K_UNIX_ACCEPTED : *tag] = c;
}

static void
k_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	(void)c;
	for (unsigned i = 0; i < n; i++)
		keel_slice_put(&s[i]);
}

static void
k_close(struct keel_conn *c, int status)
{
	(void)status;
	for (unsigned i = 0; i < K_N; i++)
		if (K[i] == c)
			K[i] = NULL;
}

static const struct keel_conn_ops k_ops = { .on_open = k_open,
					    .on_data = k_data,
					    .on_close = k_close };

static void
step_connect_out(void)
{
	struct keel_conn *c;

	SHARD_CHECK_EQ(keel_conn_connect("127.0.0.1", S.port, 0, &k_ops, &ktag[K_TCP_OUT], &c), 0);
	SHARD_CHECK_EQ(keel_conn_connect(S.unix_addr, 0, 0, &k_ops, &ktag[K_UNIX_OUT], &c), 0);
}

static void
step_check_kinds(void)
{
	/* 2: RECV_ZC (here the simulated one), 1: the copy path's receive. */
	SHARD_CHECK_EQ(keel__conn_recv_kind(S.conn), 2, " accepted TCP");
	SHARD_CHECK_EQ(keel__conn_recv_kind(K[K_UNIX_ACCEPTED]), 1, " accepted Unix");
	SHARD_CHECK_EQ(keel__conn_recv_kind(K[K_TCP_OUT]), 1, " outbound TCP");
	SHARD_CHECK_EQ(keel__conn_recv_kind(K[K_UNIX_OUT]), 1, " outbound Unix");
}

Test(net_zcrx, sim_recv_zc_only_on_accepted_tcp_connections)
{
	memset(K, 0, sizeof(K));
	sim_up_ex(1, 64, true, &k_ops);
	run_on(0, step_connect_out);
	WAIT_FOR(S.conn && K[K_UNIX_ACCEPTED] && K[K_TCP_OUT] && K[K_UNIX_OUT],
		 "connections did not open");
	run_on(0, step_check_kinds);
	sim_down();
}

/* A RECV_ZC the kernel refuses as not TCP (EPROTONOSUPPORT) moves that connection to the
 * copy path: not aborted, and what the peer sends next arrives. One that fails with EFAULT
 * (its packets land in another queue, whose buffers a plain recv refuses with EFAULT too:
 * the copy path cannot read them) is aborted, named, counted in misrouted; it was moved to
 * the copy path, to fail there on the next packet. */
static struct keel_conn *first_conn;
static int refuse_res;

static void
step_refuse(void)
{
	struct cqe32 c = mkcqe(refuse_res, 0, 0); /* a final completion: no F_MORE */

	if (!SHARD_CHECK(S.conn != NULL))
		return;
	first_conn = S.conn;
	SHARD_CHECK_EQ(keel__conn_recv_kind(S.conn), 2);
	SHARD_CHECK_EQ(keel__conn_zcrx_inject(S.conn, &c.cqe), 0);
	if (refuse_res == -EFAULT || refuse_res == -ENOBUFS) {
		SHARD_CHECK(S.conn != first_conn || keel__conn_closing(S.conn),
			    " %d: the connection was not aborted", refuse_res);
		return;
	}
	if (!SHARD_CHECK(S.conn == first_conn, " the connection was closed"))
		return;
	SHARD_CHECK(!keel__conn_closing(S.conn), " the connection is closing");
	SHARD_CHECK_EQ(keel__conn_recv_kind(S.conn), 1, " not on the copy path");
}

static uint64_t seen_bytes;
static struct keel_zcrx_stats seen_zst;
static void
step_read_bytes(void)
{
	seen_bytes = S.data_bytes;
	seen_zst = zst();
}

Test(net_zcrx, sim_recv_zc_not_tcp_moves_to_the_copy_path_and_efault_aborts)
{
	static const int res[] = { -EFAULT, -EPROTONOSUPPORT };
	char buf[3000];
	int fd[2];

	memset(buf, 'z', sizeof(buf));
	sim_up(1, 64, true);
	capture();
	atomic_store(&sim_opens, 0);
	for (unsigned i = 0; i < 2; i++) {
		fd[i] = cli_connect(S.port);
		cr_assert_geq(fd[i], 0);
		/* By count: the second may take the first's freed memory (the first is aborted). */
		WAIT_FOR(atomic_load(&sim_opens) == i + 1 && S.conn != NULL,
			 "connection %u did not open", i);
		refuse_res = res[i];
		run_on(0, step_refuse);
		SHARD_CHECKS_PASSED();
	}
	/* The second receives through the copy path; the first was aborted (reset). */
	cr_assert_eq(cli_write_all(fd[1], buf, 2000), 0);
	uint64_t dl = test_now_ms() + TEST_WAIT_MS;
	do
		run_on(0, step_read_bytes);
	while (seen_bytes < 2000 && test_now_ms() < dl);
	cr_assert_eq(seen_bytes, 2000, "the peer's bytes did not arrive");
	/* Counted: one connection moved, its bytes through the copy path; one aborted. */
	cr_assert_eq(seen_zst.conn_fallbacks, 1);
	cr_assert_eq(seen_zst.misrouted, 1);
	cr_assert_eq(seen_zst.copy_bytes, 2000);
	cr_assert_eq(seen_zst.zc_bytes, 0);
	close(fd[0]);
	close(fd[1]);
	sim_down();
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(count_of(logbuf, "refused a connection's RECV_ZC"), 1, "%s", logbuf);
	cr_assert(logged("RECV_ZC failed with EFAULT"), "%s", logbuf);
	cr_assert(logged("--steer queue"), "%s", logbuf);
}

/* A RECV_ZC that ends with ENOBUFS (no kernel returns it for RECV_ZC as of 6.18) is an
 * error like any other: the connection is aborted. It was taken for the copy path's want
 * of ring buffers: counted in enobufs and parked on the starved list, to be armed again
 * with RECV_ZC by a later kick. */
static struct keel_net_stats seen_nst;
static void
step_net_stats(void)
{
	keel_net_stats(keel_this_shard(), &seen_nst);
}

Test(net_zcrx, sim_recv_zc_enobufs_aborts)
{
	int fd;

	sim_up(1, 64, true);
	first_conn = NULL;
	fd = cli_connect(S.port);
	cr_assert_geq(fd, 0);
	WAIT_FOR(S.conn != NULL, "the connection did not open");
	refuse_res = -ENOBUFS;
	run_on(0, step_refuse);
	SHARD_CHECKS_PASSED();
	run_on(0, step_net_stats);
	cr_assert_eq(seen_nst.enobufs, 0, "taken for the copy path's want of buffers");
	close(fd);
	sim_down();
}

/* Recoverable ends of a RECV_ZC do not abort the connection: -ENOSPC (the CQ was full) is
 * armed again at once; -ENOMEM (the area had no free buffer) waits, and is armed again
 * once a slice is returned or, with none held (the kernel's page pool gives buffers back
 * without a word), after KEEL__ZCRX_RETRY_NS. It moved to the copy path before, where the
 * next packet's area payload fails a plain recv (EFAULT). */
static bool
sim_open_ok(void)
{
	if (!SHARD_CHECK(S.conn != NULL, " the connection was closed"))
		return false;
	return SHARD_CHECK(!keel__conn_closing(S.conn), " the connection is closing");
}

static void
step_enospc(void)
{
	struct cqe32 c = mkcqe(-ENOSPC, 0, 0);

	if (!SHARD_CHECK(S.conn != NULL))
		return;
	SHARD_CHECK_EQ(keel__conn_zcrx_inject(S.conn, &c.cqe), 0);
	if (!sim_open_ok())
		return;
	SHARD_CHECK_EQ(keel__conn_recv_kind(S.conn), 2, " RECV_ZC not armed again");
	c = nic(3 * 4096, 500);
	SHARD_CHECK_EQ(keel__conn_zcrx_inject(S.conn, &c.cqe), 0);
	SHARD_CHECK_EQ(S.data_bytes, 500);
}

static void
step_enomem_while_held(void)
{
	struct net_shard *ns = keel__net_shard_cur();
	struct cqe32 c = nic(4 * 4096, 100);
	struct keel_slice s;

	/* The application holds an area slice. */
	if (!SHARD_CHECK_EQ(keel__zcrx_take(ns, &c.cqe, &s), 1))
		return;
	held_push(&s);
	c = mkcqe(-ENOMEM, 0, 0);
	SHARD_CHECK_EQ(keel__conn_zcrx_inject(S.conn, &c.cqe), 0);
	if (!sim_open_ok())
		return;
	SHARD_CHECK_EQ(keel__conn_recv_kind(S.conn), 0, " armed while no buffer was returned");
}

static void
step_put_held(void)
{
	for (unsigned i = 0; i < S.nheld; i++)
		keel_slice_put(&S.held[i]);
	S.nheld = 0;
}

static int kind_now;
static void
step_kind(void)
{
	kind_now = S.conn ? keel__conn_recv_kind(S.conn) : -1;
}

/* The connection's RECV_ZC armed again @after: polled (bounded), as the re-arm comes a pass
 * or two after what woke it (a deferred publish, the retry timer). */
static void
wait_recv_zc_armed(const char *after)
{
	uint64_t dl = test_now_ms() + TEST_WAIT_MS;

	do
		run_on(0, step_kind);
	while (kind_now != 2 && test_now_ms() < dl);
	cr_assert_eq(kind_now, 2, "RECV_ZC not armed again %s (receive kind %d)", after, kind_now);
}

/* One shard with the simulated queue, listening, and a client connected: its fd. */
static int
sim_conn_up(void)
{
	int fd;

	sim_up(1, 64, true);
	capture();
	fd = cli_connect(S.port);
	cr_assert_geq(fd, 0);
	WAIT_FOR(S.conn != NULL, "the connection did not open");
	return fd;
}

static void
step_enomem_none_held(void)
{
	struct cqe32 c = mkcqe(-ENOMEM, 0, 0);
	struct keel_zcrx_stats st;

	SHARD_CHECK_EQ(zst().held, 0);
	SHARD_CHECK_EQ(keel__conn_zcrx_inject(S.conn, &c.cqe), 0);
	if (!sim_open_ok())
		return;
	SHARD_CHECK_EQ(keel__conn_recv_kind(S.conn), 0, " armed at once, or another receive");
	st = zst();
	SHARD_CHECK_EQ(st.cq_full_rearms, 1);
	SHARD_CHECK_EQ(st.nomem_waits, 2);
	SHARD_CHECK_EQ(st.conn_fallbacks, 0);
}

Test(net_zcrx, sim_recv_zc_cq_full_and_no_buffer_do_not_abort)
{
	int fd;

	fd = sim_conn_up();
	run_on(0, step_enospc);
	SHARD_CHECKS_PASSED();
	run_on(0, step_enomem_while_held);
	SHARD_CHECKS_PASSED();
	run_on(0, step_put_held);
	/* The refill is published at the end of that pass, and the waiting connection armed
	 * after it: poll (bounded) rather than guess which pass. */
	wait_recv_zc_armed("after a slice was returned");
	run_on(0, step_enomem_none_held);
	SHARD_CHECKS_PASSED();
	/* No slice to return: the retry timer arms RECV_ZC again (not the copy path). */
	wait_recv_zc_armed("by the retry");
	close(fd);
	sim_down();
	keel_log_set_sink(NULL, NULL);
	/* Two waits, one line naming the fix. */
	cr_assert_eq(count_of(logbuf, "found no free area buffer"), 1, "%s", logbuf);
	cr_assert(logged("raise --zcrx-area"), "%s", logbuf);
}

/* An ENOMEM that persists with no area slice held: the kernel's copy fallback took every
 * free buffer of the area, and those go back to its free list only as the ZCRX queue's
 * page pool refills, i.e. as that queue receives. A flow whose packets arrive on another
 * queue (copied, not received zero-copy) while the ZCRX queue is idle would be armed again
 * every 10 ms for ever: after KEEL__ZCRX_NOMEM_ROUNDS such ends in a row, each in a retry
 * round of its own, the connection is aborted with ENOMEM and one WARN names the steering.
 * The rounds are driven here (keel__zcrx_retry_now), not waited for; the simulated kernel
 * never moves the refill head. */
static unsigned nomem_round, nomem_aborted_at;

static void
step_nomem_round(void)
{
	struct net_shard *ns = keel__net_shard_cur();
	struct cqe32 c = mkcqe(-ENOMEM, 0, 0);
	struct keel_conn *conn = S.conn;

	if (!sim_open_ok())
		return;
	SHARD_CHECK_EQ(zst().held, 0);
	SHARD_CHECK_EQ(keel__conn_recv_kind(conn), 2, " round %u: RECV_ZC not armed again",
		       nomem_round);
	SHARD_CHECK_EQ(keel__conn_zcrx_inject(conn, &c.cqe), 0);
	if (S.conn != conn || keel__conn_closing(conn)) {
		nomem_aborted_at = nomem_round + 1;
		return;
	}
	SHARD_CHECK_EQ(zst().nomem_aborts, 0);
	/* The retry timer's round: the waiting connection is armed again after this pass. */
	keel__zcrx_retry_now(ns);
	SHARD_CHECK_EQ(__atomic_load_n(S.z->rq_head, __ATOMIC_ACQUIRE), 0);
}

static void
step_payload(void)
{
	struct cqe32 c = nic(5 * 4096, 300);

	if (!sim_open_ok())
		return;
	SHARD_CHECK_EQ(keel__conn_zcrx_inject(S.conn, &c.cqe), 0);
	SHARD_CHECK_EQ(S.data_bytes, 300); /* delivered and put (DATA_PUT) */
}

static struct keel_zcrx_stats end_zst;
static void
step_end_zst(void)
{
	end_zst = zst();
}

/* @n rounds, or fewer when one aborts the connection: returns the round that did (from 1),
 * or 0. */
static unsigned
nomem_rounds(unsigned n)
{
	nomem_aborted_at = 0;
	for (unsigned i = 0; i < n && !nomem_aborted_at; i++) {
		nomem_round = i;
		run_on(0, step_nomem_round);
	}
	return nomem_aborted_at;
}

Test(net_zcrx, sim_recv_zc_enomem_with_nothing_held_aborts_after_the_bound)
{
	unsigned r;
	int fd;

	fd = sim_conn_up();
	/* One more than the bound: the connection must be gone by its last round. */
	r = nomem_rounds(KEEL__ZCRX_NOMEM_ROUNDS + 1);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(r, KEEL__ZCRX_NOMEM_ROUNDS, "aborted at round %u (0: never), not %d", r,
		     KEEL__ZCRX_NOMEM_ROUNDS);
	WAIT_FOR(atomic_load(&S.closed), "on_close did not run");
	cr_assert_eq(S.close_status, -ENOMEM, "on_close status %d", S.close_status);
	run_on(0, step_end_zst);
	cr_assert_eq(end_zst.nomem_aborts, 1);
	cr_assert_eq(end_zst.nomem_waits, KEEL__ZCRX_NOMEM_ROUNDS);
	close(fd);
	sim_down();
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(count_of(logbuf, "not steered to the ZCRX queue"), 1, "%s", logbuf);
	cr_assert(logged("keel-topo --check"), "%s", logbuf);
	cr_assert(logged("keel_zcrx_stats.nomem_aborts"), "%s", logbuf);
}

/* An ENOMEM run that a payload ends before the bound starts again from nothing: twice
 * KEEL__ZCRX_NOMEM_ROUNDS - 1 rounds with a payload between them abort nothing. */
Test(net_zcrx, sim_recv_zc_enomem_that_clears_before_the_bound_does_not_abort)
{
	int fd;

	fd = sim_conn_up();
	cr_assert_eq(nomem_rounds(KEEL__ZCRX_NOMEM_ROUNDS - 1), 0, "aborted before the bound");
	SHARD_CHECKS_PASSED();
	/* The retry's re-arm: poll (bounded) for it, then a payload. */
	wait_recv_zc_armed("(receive kind %d)");
	run_on(0, step_payload);
	SHARD_CHECKS_PASSED();
	cr_assert_eq(nomem_rounds(KEEL__ZCRX_NOMEM_ROUNDS - 1), 0,
		     "aborted: the payload did not end the ENOMEM run");
	SHARD_CHECKS_PASSED();
	run_on(0, step_end_zst);
	cr_assert_eq(end_zst.nomem_aborts, 0);
	cr_assert_eq(end_zst.nomem_waits, 2 * (KEEL__ZCRX_NOMEM_ROUNDS - 1));
	cr_assert_not(atomic_load(&S.closed));
	close(fd);
	sim_down();
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(count_of(logbuf, "not steered to the ZCRX queue"), 0, "%s", logbuf);
}

/* The give-up's two rules, on the shard in one pass (so no retry timer fires between the
 * calls): ENOMEM ends in one retry round count once (a refill's publish wakes a waiting
 * connection without a round: 2 x KEEL__ZCRX_NOMEM_ROUNDS of them abort nothing), and none
 * counts while the shard holds an area slice (its put may bring a buffer back:
 * KEEL__ZCRX_NOMEM_ROUNDS + 1 rounds with a slice held abort nothing). Then the same rounds
 * with nothing held do give up, at the bound. */
static void
step_give_up_rules(void)
{
	struct net_shard *ns = keel__net_shard_cur();
	struct keel__zcrx_nomem w = { 0 };
	struct cqe32 f = nic(9 * 4096, 100);
	struct keel_slice held;
	unsigned i;

	for (i = 0; i < 2 * KEEL__ZCRX_NOMEM_ROUNDS; i++)
		if (!SHARD_CHECK(!keel__zcrx_nomem_give_up(ns, &w),
				 " gave up at ENOMEM %u, all in one retry round", i + 1))
			return;
	if (!SHARD_CHECK_EQ(keel__zcrx_take(ns, &f.cqe, &held), 1))
		return;
	w = (struct keel__zcrx_nomem){ 0 };
	for (i = 0; i < KEEL__ZCRX_NOMEM_ROUNDS + 1; i++) {
		keel__zcrx_retry_now(ns);
		if (!SHARD_CHECK(!keel__zcrx_nomem_give_up(ns, &w),
				 " gave up at round %u with an area slice held", i + 1))
			break;
	}
	keel_slice_put(&held);
	w = (struct keel__zcrx_nomem){ 0 };
	for (i = 0; i < KEEL__ZCRX_NOMEM_ROUNDS; i++) {
		keel__zcrx_retry_now(ns);
		if (keel__zcrx_nomem_give_up(ns, &w))
			break;
	}
	SHARD_CHECK_EQ(i + 1, KEEL__ZCRX_NOMEM_ROUNDS, " gave up at round %u", i + 1);
}

Test(net_zcrx, sim_recv_zc_enomem_counts_one_a_round_and_none_with_a_slice_held)
{
	sim_up(1, 64, false);
	capture();
	run_on(0, step_give_up_rules);
	SHARD_CHECKS_PASSED();
	run_on(0, step_end_zst);
	cr_assert_eq(end_zst.nomem_aborts, 1);
	sim_down();
	keel_log_set_sink(NULL, NULL);
}

/* The decision alone: how a RECV_ZC's error ending is handled. */
Test(net_zcrx, recv_zc_end_action_by_errno_and_held_slices)
{
	cr_assert_eq(keel__zcrx_end_action(-ENOSPC), KEEL__ZCRX_END_REARM);
	cr_assert_eq(keel__zcrx_end_action(-ENOMEM), KEEL__ZCRX_END_WAIT);
	/* The copy path cannot read a ZCRX queue's payload (a plain recv gets EFAULT). */
	cr_assert_eq(keel__zcrx_end_action(-EFAULT), KEEL__ZCRX_END_ABORT);
	cr_assert_eq(keel__zcrx_end_action(-EPROTONOSUPPORT), KEEL__ZCRX_END_COPY);
	cr_assert_eq(keel__zcrx_end_action(-ECONNRESET), KEEL__ZCRX_END_ABORT);
	cr_assert_eq(keel__zcrx_end_action(-EPROTO), KEEL__ZCRX_END_ABORT);
}

/* The decision itself: accepted TCP (IPv4 or IPv6) only. */
Test(net_zcrx, recv_zc_wanted_by_accepted_tcp_only)
{
	cr_assert(keel__zcrx_conn_wants(AF_INET, true));
	cr_assert(keel__zcrx_conn_wants(AF_INET6, true));
	cr_assert_not(keel__zcrx_conn_wants(AF_UNIX, true));
	cr_assert_not(keel__zcrx_conn_wants(AF_INET, false));
	cr_assert_not(keel__zcrx_conn_wants(AF_INET6, false));
	cr_assert_not(keel__zcrx_conn_wants(AF_UNIX, false));
}

/* A slice exported to shard 1 and put there: the fragment comes back on shard 0. */
static struct keel_slice xs;

static void
remote_read_put(void *arg)
{
	(void)arg;
	SHARD_CHECK(bytes_ok(&xs, 5 * 4096));
	keel_slice_put(&xs);
	atomic_store(&S.remote_done, 1);
}

static void
step_export(void)
{
	struct net_shard *ns = keel__net_shard_cur();
	struct cqe32 c = nic(5 * 4096, 3000);
	struct keel_slice s;

	if (!SHARD_CHECK_EQ(keel__zcrx_take(ns, &c.cqe, &s), 1))
		return;
	if (!SHARD_CHECK_EQ(keel_slice_export(&s, 1, &xs), 0))
		return;
	keel_slice_put(&s); /* shard 0's own reference: the export keeps the fragment */
	SHARD_CHECK_EQ(zst().held, 1);
	SHARD_CHECK_EQ(keel_send(1, remote_read_put, NULL), 0);
}

static bool export_returned;
static void
step_export_check(void)
{
	struct keel_zcrx_stats st = zst();

	export_returned = st.refills == 1 && st.held == 0 && tail_now() == 1;
	if (export_returned)
		SHARD_CHECK_EQ(S.z->rqes[0].off, SIM_TOKEN | (5 * 4096));
}

Test(net_zcrx, sim_slice_exported_to_another_shard_returns_when_put_there)
{
	sim_up(2, 16, false);
	run_on(0, step_export);
	WAIT_FOR(atomic_load(&S.remote_done), "shard 1 did not get the slice");
	uint64_t dl = test_now_ms() + TEST_WAIT_MS;
	do
		run_on(0, step_export_check);
	while (!export_returned && test_now_ms() < dl);
	cr_assert(export_returned,
		  "the fragment put on shard 1 never reached shard 0's refill ring");
	sim_down();
}

/* Shutdown while the app holds area slices: the network state goes (report), the slices
 * stay readable, and the last put (in an on-stop hook that runs after the network's)
 * unmaps the area. ASan checks nothing is used after it is freed. */
static void
late_put(void *arg)
{
	(void)arg;
	S.stop_hook_ran = true;
	S.stop_bytes_ok = true;
	for (unsigned i = 0; i < S.nheld; i++) {
		if (!bytes_ok(&S.held[i], (uint64_t)(10 + i) * 4096))
			S.stop_bytes_ok = false;
		keel_slice_put(&S.held[i]);
	}
	S.nheld = 0;
}

static void
step_hold_three(void)
{
	struct net_shard *ns = keel__net_shard_cur();

	for (unsigned i = 0; i < 3; i++) {
		struct cqe32 c = nic((uint64_t)(10 + i) * 4096, 500);
		struct keel_slice s;

		if (SHARD_CHECK_EQ(keel__zcrx_take(ns, &c.cqe, &s), 1))
			held_push(&s);
	}
	/* Registered after the network state's own stop hook: runs after it. */
	SHARD_CHECK_EQ(keel_shard_on_stop(late_put, NULL), 0);
}

Test(net_zcrx, sim_shutdown_with_held_slices_reports_and_stays_valid)
{
	sim_up(1, 16, false);
	capture();
	run_on(0, step_hold_three);
	sim_down();
	keel_log_set_sink(NULL, NULL);
	cr_assert(S.stop_hook_ran);
	cr_assert(S.stop_bytes_ok, "held slices were not readable after the network state went");
	cr_assert(logged("3 area slices are still held"), "%s", logbuf);
	cr_assert(logged("area unmapped"), "%s", logbuf);
}

/* The RECV_ZC SQE a connection of a registered shard arms: opcode 58, multishot, the
 * interface queue's id in zcrx_ifq_idx (byte 44), no buffer selection; a simulated or
 * fallen-back queue arms nothing (the copy path's recv goes instead). */
Test(net_zcrx, recv_zc_sqe_layout)
{
	struct net_shard ns;
	struct net_zcrx z;
	struct io_uring_sqe sqe;
	uint32_t idx;

	memset(&ns, 0, sizeof(ns));
	memset(&z, 0, sizeof(z));
	memset(&sqe, 0xa5, sizeof(sqe));
	ns.zcrx = &z;
	z.state = KEEL_ZCRX_ON;
	z.id = 0x10005;
	cr_assert(keel__zcrx_prep_recv(&ns, &sqe, 42));
	cr_assert_eq(sqe.opcode, KEEL_IORING_OP_RECV_ZC);
	cr_assert_eq(sqe.fd, 42);
	cr_assert_eq(sqe.ioprio, IORING_RECV_MULTISHOT);
	cr_assert_eq(sqe.flags & IOSQE_BUFFER_SELECT, 0);
	cr_assert_eq(sqe.addr, 0);
	cr_assert_eq(sqe.len, 0);
	cr_assert_eq(sqe.msg_flags, 0);
	memcpy(&idx, (const char *)&sqe + 44, sizeof(idx));
	cr_assert_eq(idx, 0x10005);
	z.sim = true;
	cr_assert_not(keel__zcrx_prep_recv(&ns, &sqe, 42));
	z.sim = false;
	z.state = KEEL_ZCRX_FALLBACK;
	cr_assert_not(keel__zcrx_prep_recv(&ns, &sqe, 42));
	ns.zcrx = NULL;
	cr_assert_not(keel__zcrx_prep_recv(&ns, &sqe, 42));
}

/* The pressure line is three quarters of the area's pages, and it counts pages with a slice
 * out: line + 1 fragments of 8 bytes in one page (small messages) hold one page, not line + 1
 * buffers, and are not copied out of an area that is nearly all free; one fragment in each
 * of line more pages then crosses it. */
static void
step_small_frags_one_page(void)
{
	struct net_shard *ns = keel__net_shard_cur();
	uint32_t pg = (uint32_t)sysconf(_SC_PAGESIZE);
	uint32_t pages = SIM_AREA / pg, line = pages - pages / 4, n = 2 * line + 1;
	struct keel_slice *v = calloc(n, sizeof(*v));

	if (!SHARD_CHECK(v != NULL))
		return;
	for (uint32_t i = 0; i <= line; i++) {
		struct cqe32 c = nic(i % (pg / 8) * 8, 8); /* all within page 0 */
		SHARD_CHECK_EQ(keel__zcrx_take(ns, &c.cqe, &v[i]), 1);
	}
	SHARD_CHECK(!keel__zcrx_pressed(ns, S.z->area), " area pressed with 1 of %u pages held",
		    pages);
	SHARD_CHECK_EQ(zst().held, line + 1);
	SHARD_CHECK_EQ(zst().held_pages, 1);
	/* Pages 1..line, one fragment each: line + 1 pages out, past the line. */
	for (uint32_t i = 1; i <= line; i++) {
		struct cqe32 c = nic((uint64_t)i * pg + 100, 8);
		SHARD_CHECK_EQ(keel__zcrx_take(ns, &c.cqe, &v[line + i]), 1);
	}
	SHARD_CHECK(keel__zcrx_pressed(ns, S.z->area), " area not pressed with %u of %u pages held",
		    line + 1, pages);
	SHARD_CHECK_EQ(zst().held_pages, line + 1);
	for (uint32_t i = 0; i < n; i++)
		keel_slice_put(&v[i]);
	SHARD_CHECK(!keel__zcrx_pressed(ns, S.z->area), " area pressed with every slice put");
	free(v);
}

/* The line is below the area's page count whatever its size: at 1-3 pages it was the count
 * itself (n - n / 4), which pages_held cannot pass, so partial frames and held slices of a
 * tiny area (--zcrx-area 4k-12k, or 128k on 64 KiB pages) were never copied out before the
 * kernel's ENOMEM. Three quarters where that is whole. */
Test(net_zcrx, the_pressure_line_of_a_tiny_area_can_be_crossed)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);

	for (uint32_t n = 1; n <= 16; n++) {
		struct net_zcrx *z = calloc(1, sizeof(*z));

		cr_assert_not_null(z);
		cr_assert_eq(keel__zcrx_set_area(z, n * pg), 0);
		cr_assert_lt(z->press_line, n, "%u pages: the line is %u", n, z->press_line);
		if (n % 4 == 0)
			cr_assert_eq(z->press_line, n - n / 4, "%u pages", n);
		free(z->page_slices);
		free(z);
	}
}

Test(net_zcrx, sim_pressure_counts_pages_not_fragments)
{
	sim_up(1, 2048, false);
	run_on(0, step_small_frags_one_page);
	sim_down();
}

/* A shard's ring without DEFER_TASKRUN cannot take ZCRX: the line always said "drop
 * --feature defer_taskrun=off, and single_issuer=off", also when neither was given and the
 * kernel lacked DEFER_TASKRUN. The fix now follows the features' decision. */
Test(net_zcrx, a_ring_without_defer_taskrun_names_the_real_fix)
{
	struct keel_opts o;

	keel_opts_init(&o);
	cr_assert_str_eq(keel__zcrx_ring_fix(&o),
			 "this kernel lacks DEFER_TASKRUN: run Linux 6.1 or later (ZCRX itself "
			 "came in 6.15)");
	o.features[KEEL_FEAT_SINGLE_ISSUER] = KEEL_POLICY_OFF;
	cr_assert_str_eq(keel__zcrx_ring_fix(&o),
			 "drop --feature single_issuer=off, which DEFER_TASKRUN needs");
	o.features[KEEL_FEAT_DEFER_TASKRUN] = KEEL_POLICY_OFF;
	cr_assert_str_eq(keel__zcrx_ring_fix(&o), "drop --feature defer_taskrun=off");
	o.features[KEEL_FEAT_SINGLE_ISSUER] = KEEL_POLICY_AUTO;
	cr_assert_str_eq(keel__zcrx_ring_fix(&o), "drop --feature defer_taskrun=off");
}

/* ... and a shard that meets it under --zcrx auto says that fix, and only it. */
Test(net_zcrx, auto_on_a_ring_without_defer_taskrun_names_the_policy_to_drop)
{
	struct keel_opts o = net_test_opts(1);
	struct zsrv z;
	unsigned calls = atomic_load(&keel__zcrx_register_calls);

	o.log_level = KEEL_LOG_INFO;
	o.zcrx = KEEL_POLICY_AUTO;
	o.features[KEEL_FEAT_DEFER_TASKRUN] = KEEL_POLICY_OFF;
	snprintf(o.iface, sizeof(o.iface), "lo");
	o.rxqs[0] = 0;
	o.nrxqs = 1;
	o.zcrx_area = 4ull << 20;
	o.zcrx_rq_entries = 256;
	capture();
	cr_assert_eq(zsrv_start_opts(&z, &o), 0, "%s", logbuf);
	cr_assert_eq(z.st[0].state, KEEL_ZCRX_FALLBACK, "%s", logbuf);
	cr_assert_eq(zsrv_stop(&z), 0);
	keel_log_set_sink(NULL, NULL);
	cr_assert(logged("ring lacks DEFER_TASKRUN") &&
			  logged("drop --feature defer_taskrun=off") &&
			  !logged("single_issuer=off"),
		  "%s", logbuf);
	cr_assert_eq(atomic_load(&keel__zcrx_register_calls), calls);
}

static int ifindex_errno;

/* A lookup that could not open its socket: 0 with @ifindex_errno. */
static unsigned
ifindex_failing(const char *name)
{
	(void)name;
	errno = ifindex_errno;
	return 0;
}

/* if_nametoindex's 0 was always "there is no interface" (ENODEV), though glibc's lookup
 * fails with the errno of the socket it opens. Each errno is now kept and said with its
 * fix; 0 without one (or ENODEV) is still no such interface. */
Test(net_zcrx, an_interface_lookup_that_could_not_run_says_why)
{
	static const struct {
		int err;
		const char *says;
	} cases[] = {
		{ EMFILE,
		  "looking up the interface's index failed: Too many open files (the lookup "
		  "opens a socket and the process has no descriptor left: raise ulimit -n)" },
		{ ENFILE, "raise fs.file-max" },
		{ EACCES, "a security policy refused" },
		{ 0, "there is no interface lo" },
		{ ENODEV, "there is no interface lo" },
	};
	unsigned (*libc)(const char *) = keel__zcrx_ifindex;

	keel__zcrx_ifindex = ifindex_failing;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct zsrv z;
		int r;

		ifindex_errno = cases[i].err;
		capture();
		r = zsrv_start(&z, KEEL_POLICY_ON, "lo");
		zsrv_stop(&z);
		keel_log_set_sink(NULL, NULL);
		cr_assert_eq(r, cases[i].err ? -cases[i].err : -ENODEV, "errno %d: %d\n%s",
			     cases[i].err, r, logbuf);
		cr_assert(logged(cases[i].says), "errno %d\n%s", cases[i].err, logbuf);
	}
	keel__zcrx_ifindex = libc;
}

/* The process's table of claimed queues full (KEEL_MAX_SHARDS, shared by every runtime in
 * it): -ENOSPC said only "more than 256 queues claimed". It now says the limit, what it
 * counts and what to do. */
Test(net_zcrx, a_full_claim_table_names_the_limit_and_the_fix)
{
	unsigned owner;
	struct zsrv z;
	int r;

	for (int i = 0; i < KEEL_MAX_SHARDS; i++)
		cr_assert_eq(keel__zcrx_claim("keelfill0", i, (unsigned)i, &owner), 0);
	capture();
	r = zsrv_start(&z, KEEL_POLICY_ON, "lo");
	zsrv_stop(&z);
	keel_log_set_sink(NULL, NULL);
	for (int i = 0; i < KEEL_MAX_SHARDS; i++)
		keel__zcrx_unclaim("keelfill0", i);
	cr_assert_eq(r, -ENOSPC, "%d\n%s", r, logbuf);
	cr_assert(logged("ZCRX on lo rx queue 0: this process already holds 256 ZCRX queues, the "
			 "most it can (KEEL_MAX_SHARDS"),
		  "%s", logbuf);
	cr_assert(logged("give ZCRX queues to fewer shards or runtimes in one process") &&
			  logged("a larger KEEL_MAX_SHARDS"),
		  "%s", logbuf);
}
