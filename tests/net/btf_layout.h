/* SPDX-License-Identifier: MIT */
/*
 * A small reader of raw BTF (the format of /sys/kernel/btf/vmlinux), enough to look up a
 * struct by name and the byte offset and size of its members. The ZCRX suite uses it to
 * check keel's hand-written copies of the kernel's structs against the running kernel.
 * Every read is bounded by the file's section sizes: a malformed file gives -EINVAL and a
 * message, never a read past the buffer.
 */
#ifndef KEEL_TEST_BTF_LAYOUT_H
#define KEEL_TEST_BTF_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

struct btf_view {
	const uint8_t *types; /* the type section */
	uint32_t types_len;
	const char *strs; /* the string section, its last byte a NUL */
	uint32_t strs_len;
	uint32_t *at; /* at[id]: where type @id starts in types (ids start at 1) */
	uint32_t n;   /* the highest type id */
};

/* Check the header and index every type of the @len bytes at @buf, which must outlive @v.
 * Returns 0, -EINVAL (malformed: the reason in @err) or -ENOMEM. */
int btf_view_init(struct btf_view *v, const void *buf, size_t len, char *err, size_t errlen);
void btf_view_fini(struct btf_view *v);

/* The id of the struct named @name, or 0 when there is none (a forward declaration does not
 * count). */
uint32_t btf_view_struct(const struct btf_view *v, const char *name);

/* The byte size of type @id, through typedefs, qualifiers and arrays.
 * Returns 0 or -EINVAL (the reason in @err). */
int btf_view_size(const struct btf_view *v, uint32_t id, uint64_t *out, char *err, size_t errlen);

/* Member @name of struct or union @id, looked for in its anonymous struct and union
 * members too (their members' offsets are relative to them: the result is relative to
 * @id). Returns 0 with its byte offset and byte size, -ENOENT when @id has no such member,
 * or -EINVAL (the reason in @err). */
int btf_view_member(const struct btf_view *v, uint32_t id, const char *name, uint64_t *off,
		    uint64_t *size, char *err, size_t errlen);

/* The names of @id's members, comma-separated, for a message (cut to fit @len). */
void btf_view_member_names(const struct btf_view *v, uint32_t id, char *buf, size_t len);

#endif
