/* SPDX-License-Identifier: MIT */
/*
 * Kernel io_uring ABI pieces that liburing 2.3 (Debian 12) does not define.
 *
 * These are facts of the kernel ABI (include/uapi/linux/io_uring.h of Linux 6.10-6.18),
 * written here so keel builds against the distribution's liburing and still uses the
 * running kernel's newer features. Each struct's size and every field offset is pinned
 * with static assertions (KEEL_STATIC_ASSERT): a mismatch is a build failure, never a
 * silent ABI break. Where the installed liburing already has a piece (KEEL_HAVE_*), its
 * definition wins.
 */
#ifndef KEEL_COMPAT_H
#define KEEL_COMPAT_H

#include <keel/common.h>
#include <keel/config.h>
#include <stddef.h>
#include <stdint.h>

#include <liburing.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Multishot/bundle receive and send flags (sqe->ioprio). */
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4) /* Linux 6.10 */
#endif
#ifndef IORING_RECVSEND_FIXED_BUF
#define IORING_RECVSEND_FIXED_BUF (1U << 2) /* Linux 6.0 */
#endif
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3) /* Linux 6.2 */
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif

/* Provided buffer ring registration flags (io_uring_buf_reg.flags, a u16 at offset 14). */
#ifndef IOU_PBUF_RING_MMAP
#define IOU_PBUF_RING_MMAP 1 /* Linux 6.4 */
#endif
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2 /* Linux 6.12: incremental buffer consumption */
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4) /* Linux 6.12: buffer not fully consumed */
#endif

/* Setup and enter flags newer than liburing 2.3. */
#ifndef IORING_SETUP_NO_SQARRAY
#define IORING_SETUP_NO_SQARRAY (1U << 16) /* Linux 6.6 */
#endif
#ifndef IORING_ENTER_EXT_ARG_REG
#define IORING_ENTER_EXT_ARG_REG (1U << 6) /* Linux 6.13 */
#endif
#ifndef IORING_FEAT_MIN_TIMEOUT
#define IORING_FEAT_MIN_TIMEOUT (1U << 15) /* Linux 6.12 */
#endif

/* Opcodes past liburing 2.3's IORING_OP_LAST (48 there). */
enum {
	KEEL_IORING_OP_READ_MULTISHOT = 49, /* Linux 6.7 */
	KEEL_IORING_OP_WAITID = 50,
	KEEL_IORING_OP_FUTEX_WAIT = 51,
	KEEL_IORING_OP_FUTEX_WAKE = 52,
	KEEL_IORING_OP_FUTEX_WAITV = 53,
	KEEL_IORING_OP_FIXED_FD_INSTALL = 54,
	KEEL_IORING_OP_FTRUNCATE = 55,
	KEEL_IORING_OP_BIND = 56,
	KEEL_IORING_OP_LISTEN = 57,
	KEEL_IORING_OP_RECV_ZC = 58, /* Linux 6.15 */
};

/* Register opcodes past liburing 2.3. */
enum {
	KEEL_IORING_REGISTER_SEND_MSG_RING = 31, /* Linux 6.13 */
	KEEL_IORING_REGISTER_ZCRX_IFQ = 32,      /* Linux 6.15 */
};

/* ZCRX: zero-copy receive into a registered area (Linux 6.15+). */
#define KEEL_IORING_ZCRX_AREA_SHIFT      48
#define KEEL_IORING_ZCRX_AREA_MASK       (~((1ULL << KEEL_IORING_ZCRX_AREA_SHIFT) - 1))
#define KEEL_IORING_MEM_REGION_TYPE_USER 1U

/* Refill queue entry: userspace hands a buffer back to the kernel. */
struct keel_zcrx_rqe {
	uint64_t off;
	uint32_t len;
	uint32_t pad; /* must be zero */
};

/* Second half of a 32-byte CQE for RECV_ZC completions. */
struct keel_zcrx_cqe {
	uint64_t off;
	uint64_t pad;
};

struct keel_zcrx_offsets {
	uint32_t head;
	uint32_t tail;
	uint32_t rqes;
	uint32_t resv2;
	uint64_t resv[2];
};

struct keel_zcrx_area_reg {
	uint64_t addr;
	uint64_t len;
	uint64_t rq_area_token; /* out: area id << 48 */
	uint32_t flags;
	uint32_t dmabuf_fd;
	uint64_t resv2[2];
};

struct keel_zcrx_ifq_reg {
	uint32_t if_idx;
	uint32_t if_rxq;
	uint32_t rq_entries; /* power of two, <= 32768 */
	uint32_t flags;
	uint64_t area_ptr;                /* struct keel_zcrx_area_reg * */
	uint64_t region_ptr;              /* struct keel_region_desc * */
	struct keel_zcrx_offsets offsets; /* out */
	uint32_t zcrx_id;                 /* out */
	uint32_t rx_buf_len;              /* must be zero on 6.18 */
	uint64_t resv[3];
};

struct keel_region_desc {
	uint64_t user_addr;
	uint64_t size;
	uint32_t flags;
	uint32_t id;
	uint64_t mmap_offset;
	uint64_t resv[4];
};

/* Provided buffer ring registration as the kernel reads it (liburing 2.3 names the flags
 * field "pad"; the incremental flag goes there). */
struct keel_buf_reg {
	uint64_t ring_addr;
	uint32_t ring_entries;
	uint16_t bgid;
	uint16_t flags;
	uint64_t resv[3];
};

#define KEEL_ABI_FIELD(type, field, off) \
	KEEL_STATIC_ASSERT(offsetof(type, field) == (off), #type "." #field)

KEEL_STATIC_ASSERT(sizeof(struct keel_zcrx_rqe) == 16, "zcrx_rqe");
KEEL_ABI_FIELD(struct keel_zcrx_rqe, off, 0);
KEEL_ABI_FIELD(struct keel_zcrx_rqe, len, 8);
KEEL_ABI_FIELD(struct keel_zcrx_rqe, pad, 12);
KEEL_STATIC_ASSERT(sizeof(struct keel_zcrx_cqe) == 16, "zcrx_cqe");
KEEL_ABI_FIELD(struct keel_zcrx_cqe, off, 0);
KEEL_ABI_FIELD(struct keel_zcrx_cqe, pad, 8);
KEEL_STATIC_ASSERT(sizeof(struct keel_zcrx_offsets) == 32, "zcrx_offsets");
KEEL_ABI_FIELD(struct keel_zcrx_offsets, head, 0);
KEEL_ABI_FIELD(struct keel_zcrx_offsets, tail, 4);
KEEL_ABI_FIELD(struct keel_zcrx_offsets, rqes, 8);
KEEL_ABI_FIELD(struct keel_zcrx_offsets, resv2, 12);
KEEL_ABI_FIELD(struct keel_zcrx_offsets, resv, 16);
KEEL_STATIC_ASSERT(sizeof(struct keel_zcrx_area_reg) == 48, "zcrx_area_reg");
KEEL_ABI_FIELD(struct keel_zcrx_area_reg, addr, 0);
KEEL_ABI_FIELD(struct keel_zcrx_area_reg, len, 8);
KEEL_ABI_FIELD(struct keel_zcrx_area_reg, rq_area_token, 16);
KEEL_ABI_FIELD(struct keel_zcrx_area_reg, flags, 24);
KEEL_ABI_FIELD(struct keel_zcrx_area_reg, dmabuf_fd, 28);
KEEL_ABI_FIELD(struct keel_zcrx_area_reg, resv2, 32);
KEEL_STATIC_ASSERT(sizeof(struct keel_zcrx_ifq_reg) == 96, "zcrx_ifq_reg");
KEEL_ABI_FIELD(struct keel_zcrx_ifq_reg, if_idx, 0);
KEEL_ABI_FIELD(struct keel_zcrx_ifq_reg, if_rxq, 4);
KEEL_ABI_FIELD(struct keel_zcrx_ifq_reg, rq_entries, 8);
KEEL_ABI_FIELD(struct keel_zcrx_ifq_reg, flags, 12);
KEEL_ABI_FIELD(struct keel_zcrx_ifq_reg, area_ptr, 16);
KEEL_ABI_FIELD(struct keel_zcrx_ifq_reg, region_ptr, 24);
KEEL_ABI_FIELD(struct keel_zcrx_ifq_reg, offsets, 32);
KEEL_ABI_FIELD(struct keel_zcrx_ifq_reg, zcrx_id, 64);
KEEL_ABI_FIELD(struct keel_zcrx_ifq_reg, rx_buf_len, 68);
KEEL_ABI_FIELD(struct keel_zcrx_ifq_reg, resv, 72);
KEEL_STATIC_ASSERT(sizeof(struct keel_region_desc) == 64, "region_desc");
KEEL_ABI_FIELD(struct keel_region_desc, user_addr, 0);
KEEL_ABI_FIELD(struct keel_region_desc, size, 8);
KEEL_ABI_FIELD(struct keel_region_desc, flags, 16);
KEEL_ABI_FIELD(struct keel_region_desc, id, 20);
KEEL_ABI_FIELD(struct keel_region_desc, mmap_offset, 24);
KEEL_ABI_FIELD(struct keel_region_desc, resv, 32);
KEEL_STATIC_ASSERT(sizeof(struct keel_buf_reg) == sizeof(struct io_uring_buf_reg), "buf_reg");
KEEL_ABI_FIELD(struct keel_buf_reg, ring_addr, 0);
KEEL_ABI_FIELD(struct keel_buf_reg, ring_entries, 8);
KEEL_ABI_FIELD(struct keel_buf_reg, bgid, 12);
KEEL_ABI_FIELD(struct keel_buf_reg, flags, 14);
KEEL_ABI_FIELD(struct keel_buf_reg, resv, 16);

/* The ZCRX interface-queue index is the SQE's 32-bit field at byte 44 (zcrx_ifq_idx in the
 * uapi), which it shares with file_index. One name for it, so the test that reads the
 * running kernel's BTF checks the byte keel__zcrx_prep_recv really writes. */
#define KEEL_SQE_ZCRX_IFQ_IDX_OFF 44
KEEL_STATIC_ASSERT(offsetof(struct io_uring_sqe, file_index) == KEEL_SQE_ZCRX_IFQ_IDX_OFF,
		   "sqe.file_index");

#ifdef __cplusplus
}
#endif

#endif
