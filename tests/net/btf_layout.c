// SPDX-License-Identifier: MIT
/*
 * Raw BTF reader for the ZCRX ABI test (format: the uapi <linux/btf.h>). Only what that
 * test needs: the header, an index of the type section, struct lookup by name, member
 * offsets and sizes. Types are read with memcpy because a section offset need not keep
 * the structs aligned in a malformed file.
 */
#include "btf_layout.h"

#include <errno.h>
#include <linux/btf.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Typedef chains and nested anonymous members are shallow in real BTF; a deeper one is a
 * loop in a malformed file. */
#define MAX_DEPTH 32

static int
fail(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* The bytes that follow a btf_type of @kind with @vlen entries, or -1 for a kind this
 * reader does not know (it then cannot find the next type). */
static int64_t
kind_extra(uint32_t kind, uint32_t vlen)
{
	switch (kind) {
	case BTF_KIND_INT:
		return sizeof(uint32_t);
	case BTF_KIND_PTR:
	case BTF_KIND_FWD:
	case BTF_KIND_TYPEDEF:
	case BTF_KIND_VOLATILE:
	case BTF_KIND_CONST:
	case BTF_KIND_RESTRICT:
	case BTF_KIND_FUNC:
	case BTF_KIND_FLOAT:
	case BTF_KIND_TYPE_TAG:
		return 0;
	case BTF_KIND_ARRAY:
		return sizeof(struct btf_array);
	case BTF_KIND_STRUCT:
	case BTF_KIND_UNION:
		return (int64_t)vlen * sizeof(struct btf_member);
	case BTF_KIND_ENUM:
		return (int64_t)vlen * sizeof(struct btf_enum);
	case BTF_KIND_FUNC_PROTO:
		return (int64_t)vlen * sizeof(struct btf_param);
	case BTF_KIND_VAR:
		return sizeof(struct btf_var);
	case BTF_KIND_DATASEC:
		return (int64_t)vlen * sizeof(struct btf_var_secinfo);
	case BTF_KIND_DECL_TAG:
		return sizeof(struct btf_decl_tag);
	case BTF_KIND_ENUM64:
		return (int64_t)vlen * sizeof(struct btf_enum64);
	default:
		return -1;
	}
}

int
btf_view_init(struct btf_view *v, const void *buf, size_t len, char *err, size_t errlen)
{
	struct btf_header h;
	uint64_t body, pos;
	uint32_t id;

	memset(v, 0, sizeof(*v));
	if (len < sizeof(h))
		return fail(err, errlen, "BTF: %zu bytes, shorter than its %zu-byte header", len,
			    sizeof(h));
	memcpy(&h, buf, sizeof(h));
	if (h.magic != BTF_MAGIC)
		return fail(err, errlen,
			    "BTF: magic 0x%04x, not 0x%04x (not BTF, or another byte order)",
			    h.magic, BTF_MAGIC);
	if (h.version != BTF_VERSION)
		return fail(err, errlen, "BTF: version %u, this reader knows %u", h.version,
			    BTF_VERSION);
	if (h.hdr_len < sizeof(h) || h.hdr_len > len)
		return fail(err, errlen, "BTF: header length %u outside %zu..%zu", h.hdr_len,
			    sizeof(h), len);
	body = len - h.hdr_len;
	if ((uint64_t)h.type_off + h.type_len > body)
		return fail(err, errlen, "BTF: type section %u+%u past the data's %llu bytes",
			    h.type_off, h.type_len, (unsigned long long)body);
	if ((uint64_t)h.str_off + h.str_len > body)
		return fail(err, errlen, "BTF: string section %u+%u past the data's %llu bytes",
			    h.str_off, h.str_len, (unsigned long long)body);
	/* With a NUL last, every name offset inside the section reads a terminated string. */
	if (h.str_len == 0 || ((const char *)buf)[h.hdr_len + h.str_off + h.str_len - 1] != '\0')
		return fail(err, errlen, "BTF: string section empty or not NUL-terminated");
	v->types = (const uint8_t *)buf + h.hdr_len + h.type_off;
	v->types_len = h.type_len;
	v->strs = (const char *)buf + h.hdr_len + h.str_off;
	v->strs_len = h.str_len;

	/* Each type takes at least a btf_type: that bounds the index. */
	v->at = calloc(h.type_len / sizeof(struct btf_type) + 2, sizeof(*v->at));
	if (!v->at)
		return -ENOMEM;
	for (pos = 0, id = 1; pos < v->types_len; id++) {
		struct btf_type t;
		int64_t extra;

		if (v->types_len - pos < sizeof(t)) {
			btf_view_fini(v);
			return fail(err, errlen, "BTF: type %u cut short at byte %llu of %u", id,
				    (unsigned long long)pos, h.type_len);
		}
		memcpy(&t, v->types + pos, sizeof(t));
		extra = kind_extra(BTF_INFO_KIND(t.info), BTF_INFO_VLEN(t.info));
		if (extra < 0) {
			btf_view_fini(v);
			return fail(err, errlen, "BTF: type %u has kind %u, unknown to this reader",
				    id, BTF_INFO_KIND(t.info));
		}
		if ((uint64_t)extra > v->types_len - pos - sizeof(t)) {
			btf_view_fini(v);
			return fail(err, errlen,
				    "BTF: type %u (kind %u, %u entries) runs past the "
				    "type section's %u bytes",
				    id, BTF_INFO_KIND(t.info), BTF_INFO_VLEN(t.info), h.type_len);
		}
		v->at[id] = (uint32_t)pos;
		v->n = id;
		pos += sizeof(t) + (uint64_t)extra;
	}
	return 0;
}

void
btf_view_fini(struct btf_view *v)
{
	free(v->at);
	v->at = NULL;
	v->n = 0;
}

/* Type @id's btf_type; false for void (0) and ids past the last. The bytes after it were
 * checked by btf_view_init. */
static bool
type_at(const struct btf_view *v, uint32_t id, struct btf_type *out)
{
	if (id == 0 || id > v->n)
		return false;
	memcpy(out, v->types + v->at[id], sizeof(*out));
	return true;
}

/* A name from the string section; NULL when @off is outside it. */
static const char *
str_at(const struct btf_view *v, uint32_t off)
{
	return off < v->strs_len ? v->strs + off : NULL;
}

static struct btf_member
member_at(const struct btf_view *v, uint32_t id, uint32_t i)
{
	struct btf_member m;

	memcpy(&m, v->types + v->at[id] + sizeof(struct btf_type) + (size_t)i * sizeof(m),
	       sizeof(m));
	return m;
}

uint32_t
btf_view_struct(const struct btf_view *v, const char *name)
{
	for (uint32_t id = 1; id <= v->n; id++) {
		struct btf_type t;
		const char *n;

		if (!type_at(v, id, &t) || BTF_INFO_KIND(t.info) != BTF_KIND_STRUCT)
			continue;
		n = str_at(v, t.name_off);
		if (n && strcmp(n, name) == 0)
			return id;
	}
	return 0;
}

/* Follow typedefs and qualifiers from @id to the type they name. */
static int
strip(const struct btf_view *v, uint32_t id, uint32_t *out, struct btf_type *t, char *err,
      size_t errlen)
{
	for (int depth = 0; depth < MAX_DEPTH; depth++) {
		if (!type_at(v, id, t))
			return fail(err, errlen, "BTF: type id %u outside 1..%u", id, v->n);
		switch (BTF_INFO_KIND(t->info)) {
		case BTF_KIND_TYPEDEF:
		case BTF_KIND_VOLATILE:
		case BTF_KIND_CONST:
		case BTF_KIND_RESTRICT:
		case BTF_KIND_TYPE_TAG:
			id = t->type;
			break;
		default:
			*out = id;
			return 0;
		}
	}
	return fail(err, errlen, "BTF: typedef/qualifier chain from type %u deeper than %d", id,
		    MAX_DEPTH);
}

static int
size_of(const struct btf_view *v, uint32_t id, int depth, uint64_t *out, char *err, size_t errlen)
{
	struct btf_type t;
	struct btf_array a;
	uint64_t elem;
	int r;

	if (depth > MAX_DEPTH)
		return fail(err, errlen, "BTF: array nesting from type %u deeper than %d", id,
			    MAX_DEPTH);
	r = strip(v, id, &id, &t, err, errlen);
	if (r)
		return r;
	switch (BTF_INFO_KIND(t.info)) {
	case BTF_KIND_INT:
	case BTF_KIND_STRUCT:
	case BTF_KIND_UNION:
	case BTF_KIND_ENUM:
	case BTF_KIND_ENUM64:
	case BTF_KIND_FLOAT:
		*out = t.size;
		return 0;
	case BTF_KIND_PTR:
		/* the running kernel's own pointers: this process's width on a native build */
		*out = sizeof(void *);
		return 0;
	case BTF_KIND_ARRAY:
		memcpy(&a, v->types + v->at[id] + sizeof(t), sizeof(a));
		r = size_of(v, a.type, depth + 1, &elem, err, errlen);
		if (r)
			return r;
		if (a.nelems && elem > UINT64_MAX / a.nelems)
			return fail(err, errlen, "BTF: array type %u's size overflows", id);
		*out = elem * a.nelems;
		return 0;
	default:
		return fail(err, errlen, "BTF: type %u has kind %u, which has no size", id,
			    BTF_INFO_KIND(t.info));
	}
}

int
btf_view_size(const struct btf_view *v, uint32_t id, uint64_t *out, char *err, size_t errlen)
{
	return size_of(v, id, 0, out, err, errlen);
}

static int
find_member(const struct btf_view *v, uint32_t id, const char *name, uint64_t base, int depth,
	    uint64_t *off, uint64_t *size, char *err, size_t errlen)
{
	struct btf_type t;
	uint32_t vlen;
	bool kflag;
	int r;

	if (depth > MAX_DEPTH)
		return fail(err, errlen, "BTF: anonymous members nested deeper than %d", MAX_DEPTH);
	r = strip(v, id, &id, &t, err, errlen);
	if (r)
		return r;
	if (BTF_INFO_KIND(t.info) != BTF_KIND_STRUCT && BTF_INFO_KIND(t.info) != BTF_KIND_UNION)
		return fail(err, errlen, "BTF: type %u has kind %u, not a struct or union", id,
			    BTF_INFO_KIND(t.info));
	vlen = BTF_INFO_VLEN(t.info);
	/* With the kind flag set, a member's offset word also holds its bitfield width. */
	kflag = BTF_INFO_KFLAG(t.info);
	for (uint32_t i = 0; i < vlen; i++) {
		struct btf_member m = member_at(v, id, i);
		uint32_t bit = kflag ? BTF_MEMBER_BIT_OFFSET(m.offset) : m.offset;
		uint32_t bits = kflag ? BTF_MEMBER_BITFIELD_SIZE(m.offset) : 0;
		const char *n = str_at(v, m.name_off);
		struct btf_type mt;
		uint32_t mid;

		if (!n)
			return fail(err, errlen,
				    "BTF: member %u of type %u: name offset %u past "
				    "the string section's %u bytes",
				    i, id, m.name_off, v->strs_len);
		if (*n) {
			if (strcmp(n, name) != 0)
				continue;
			if (bits || bit % 8)
				return fail(err, errlen,
					    "BTF: member %s is a bitfield (bit %u, %u bits)", n,
					    bit, bits);
			r = size_of(v, m.type, 0, size, err, errlen);
			if (r)
				return r;
			*off = base + bit / 8;
			return 0;
		}
		/* An anonymous member: its own members sit at offsets relative to it. */
		r = strip(v, m.type, &mid, &mt, err, errlen);
		if (r)
			return r;
		if (BTF_INFO_KIND(mt.info) != BTF_KIND_STRUCT &&
		    BTF_INFO_KIND(mt.info) != BTF_KIND_UNION)
			continue;
		if (bit % 8)
			return fail(err, errlen, "BTF: anonymous member %u of type %u at bit %u", i,
				    id, bit);
		r = find_member(v, mid, name, base + bit / 8, depth + 1, off, size, err, errlen);
		if (r != -ENOENT)
			return r;
	}
	return -ENOENT;
}

int
btf_view_member(const struct btf_view *v, uint32_t id, const char *name, uint64_t *off,
		uint64_t *size, char *err, size_t errlen)
{
	return find_member(v, id, name, 0, 0, off, size, err, errlen);
}

void
btf_view_member_names(const struct btf_view *v, uint32_t id, char *buf, size_t len)
{
	struct btf_type t;
	size_t used = 0;

	if (len)
		buf[0] = '\0';
	if (!type_at(v, id, &t) ||
	    (BTF_INFO_KIND(t.info) != BTF_KIND_STRUCT && BTF_INFO_KIND(t.info) != BTF_KIND_UNION))
		return;
	for (uint32_t i = 0; i < BTF_INFO_VLEN(t.info) && used < len; i++) {
		struct btf_member m = member_at(v, id, i);
		const char *n = str_at(v, m.name_off);
		int w = snprintf(buf + used, len - used, "%s%s", i ? ", " : "",
				 n && *n ? n : "(anonymous)");

		if (w < 0)
			break;
		used += (size_t)w;
	}
}
