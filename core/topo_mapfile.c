// SPDX-License-Identifier: MIT
/* The map file: a small JSON emitter and a small, strict JSON parser (no dependency). The
 * schema is in docs/topology.md; anything outside it is an error, so a typo in a hand-edited
 * map is reported instead of silently ignored. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "topo_internal.h"

#define MAP_FILE_MAX (1u << 20)
#define JSON_DEPTH   8

/* ---- writing ---- */

static void
put_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void
put_str_or_null(FILE *f, const char *s)
{
	if (*s)
		put_str(f, s);
	else
		fputs("null", f);
}

static void
put_int_or_null(FILE *f, int v)
{
	if (v >= 0)
		fprintf(f, "%d", v);
	else
		fputs("null", f);
}

int
keel_map_write(const struct keel_map *m, FILE *f)
{
	fprintf(f, "{\n  \"keel_map\": %u,\n  \"source\": ", m->version);
	put_str(f, m->source);
	fputs(",\n  \"iface\": ", f);
	put_str_or_null(f, m->iface);
	fputs(",\n  \"pci\": ", f);
	put_str_or_null(f, m->pci);
	fputs(",\n  \"numa_node\": ", f);
	put_int_or_null(f, m->numa);
	fprintf(f, ",\n  \"rx_queues\": %u,\n  \"hds\": %s,\n", m->rx_queues,
		m->hds ? "true" : "false");
	fprintf(f, "  \"smt\": \"%s\",\n  \"numa\": \"%s\",\n  \"reserve\": %u,\n",
		m->smt == KEEL_MAP_SMT_ALLOW ? "allow" : "avoid",
		m->numa_policy == KEEL_MAP_NUMA_SPREAD ? "spread" : "local", m->reserve);
	fputs("  \"shards\": [", f);
	for (unsigned i = 0; i < m->nshards; i++) {
		const struct keel_map_shard *s = &m->shards[i];
		fprintf(f, "%s\n    { \"shard\": %u, \"cpu\": %d, \"core\": ", i ? "," : "", i,
			s->cpu);
		put_int_or_null(f, s->core);
		fputs(", \"numa_node\": ", f);
		put_int_or_null(f, s->numa);
		fputs(", \"rxq\": ", f);
		put_int_or_null(f, s->rxq);
		fputs(", \"irq_cpu\": ", f);
		put_int_or_null(f, s->irq_cpu);
		fputs(" }", f);
	}
	fputs(m->nshards ? "\n  ]\n}\n" : "]\n}\n", f);
	return ferror(f) ? -EIO : 0;
}

int
keel_map_save(const struct keel_map *m, const char *path, char *err, size_t errlen)
{
	char tmp[PATH_MAX];
	FILE *f;
	int fd, r;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid()) >= (int)sizeof(tmp))
		return keel__errf(err, errlen, -ENAMETOOLONG, "map path too long: %s", path);
	/* A new file, never one that is there already: keel-topo --plan --apply runs as root,
	 * and a name someone else made first (a symlink in /tmp) must not be written through. */
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		return keel__errf(
			err, errlen, -errno, "cannot create %s: %s (check the directory%s)", tmp,
			strerror(errno),
			errno == EEXIST ? "; a file of that name is in the way: remove it" : "");
	f = fdopen(fd, "w");
	if (!f) {
		r = -errno;
		close(fd);
		unlink(tmp);
		return keel__errf(err, errlen, r, "cannot write %s: %s", tmp, strerror(-r));
	}
	r = keel_map_write(m, f);
	if (fflush(f) != 0 || fsync(fileno(f)) != 0)
		r = -errno ? -errno : -EIO;
	if (fclose(f) != 0 && r == 0)
		r = -EIO;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tmp);
		return keel__errf(err, errlen, r, "writing map %s failed: %s", path, strerror(-r));
	}
	return 0;
}

/* ---- parsing: a tree of values ---- */

enum jtype { J_NULL, J_BOOL, J_INT, J_STR, J_ARR, J_OBJ };

struct jval {
	enum jtype type;
	long long num;    /* J_INT, J_BOOL */
	char *str;        /* J_STR */
	char *key;        /* member name when inside an object */
	struct jval *kid; /* J_ARR, J_OBJ: [n] */
	unsigned n;
	size_t at; /* byte offset, for messages */
};

struct jp {
	const char *s;
	size_t len, pos;
	char *err;
	size_t errlen;
};

/* Every error return of the parser goes through here, so the caller's message is always
 * written (a caller logs it as is). */
static int
jerr_r(struct jp *p, int r, const char *what)
{
	size_t line = 1;

	for (size_t i = 0; i < p->pos && i < p->len; i++)
		line += p->s[i] == '\n';
	return keel__errf(p->err, p->errlen, r, "map file: %s at line %zu (byte %zu)", what, line,
			  p->pos);
}

static int
jerr(struct jp *p, const char *what)
{
	return jerr_r(p, -EINVAL, what);
}

static int
jnomem(struct jp *p)
{
	return jerr_r(p, -ENOMEM, "out of memory while parsing");
}

static void
jfree(struct jval *v)
{
	for (unsigned i = 0; i < v->n; i++)
		jfree(&v->kid[i]);
	free(v->kid);
	free(v->str);
	free(v->key);
	memset(v, 0, sizeof(*v));
}

static void
skip_ws(struct jp *p)
{
	while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
				   p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
		p->pos++;
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int
parse_string(struct jp *p, char **out)
{
	size_t cap = 32, n = 0;
	char *b = malloc(cap);

	if (!b)
		return jnomem(p);
	p->pos++; /* opening quote */
	for (;;) {
		unsigned char c;
		if (p->pos >= p->len) {
			free(b);
			return jerr(p, "unexpected end of file in a string (is it truncated?)");
		}
		c = (unsigned char)p->s[p->pos++];
		if (c == '"')
			break;
		if (c < 0x20) {
			free(b);
			p->pos--; /* the line it is on (a newline: the line the string began on) */
			return jerr(p, c == '\n' ? "string not closed before the end of its line"
						 : "control character in a string");
		}
		if (n + 4 >= cap) {
			char *nb = realloc(b, cap *= 2);
			if (!nb) {
				free(b);
				return jnomem(p);
			}
			b = nb;
		}
		if (c != '\\') {
			b[n++] = (char)c;
			continue;
		}
		if (p->pos >= p->len) {
			free(b);
			return jerr(p, "unterminated escape");
		}
		c = (unsigned char)p->s[p->pos++];
		switch (c) {
		case '"':
		case '\\':
		case '/':
			b[n++] = (char)c;
			break;
		case 'n':
			b[n++] = '\n';
			break;
		case 't':
			b[n++] = '\t';
			break;
		case 'r':
			b[n++] = '\r';
			break;
		case 'b':
			b[n++] = '\b';
			break;
		case 'f':
			b[n++] = '\f';
			break;
		case 'u': {
			unsigned u = 0;
			for (int i = 0; i < 4; i++) {
				int h = p->pos < p->len ? hexval(p->s[p->pos]) : -1;
				if (h < 0) {
					free(b);
					return jerr(p, "bad \\u escape");
				}
				u = u * 16 + (unsigned)h;
				p->pos++;
			}
			/* Names in a map are ASCII; surrogates would need pairing. */
			if (u == 0 || (u >= 0xd800 && u <= 0xdfff)) {
				free(b);
				return jerr(p, "unsupported \\u escape");
			}
			if (u < 0x80) {
				b[n++] = (char)u;
			} else if (u < 0x800) {
				b[n++] = (char)(0xc0 | (u >> 6));
				b[n++] = (char)(0x80 | (u & 0x3f));
			} else {
				b[n++] = (char)(0xe0 | (u >> 12));
				b[n++] = (char)(0x80 | ((u >> 6) & 0x3f));
				b[n++] = (char)(0x80 | (u & 0x3f));
			}
			break;
		}
		default:
			free(b);
			return jerr(p, "bad escape in a string");
		}
	}
	b[n] = 0;
	*out = b;
	return 0;
}

static int parse_value(struct jp *p, struct jval *v, int depth);

#define JSON_MEMBERS_MAX 100000

static int
push(struct jp *p, struct jval *v, struct jval *kid)
{
	struct jval *nk;

	if (v->n >= JSON_MEMBERS_MAX) {
		char msg[160];
		snprintf(msg, sizeof(msg),
			 "more than %d members in one %s (the parser's limit; a map is far "
			 "smaller: is it the right file?)",
			 JSON_MEMBERS_MAX, v->type == J_OBJ ? "object" : "array");
		return jerr_r(p, -E2BIG, msg);
	}
	/* Room doubles at each power of two (the room is implied by n): growing by one each
	 * time copied the array at each member, quadratic (minutes over 100,000 under ASan). */
	if ((v->n & (v->n - 1)) == 0) {
		nk = realloc(v->kid, (v->n ? 2 * (size_t)v->n : 1) * sizeof(*nk));
		if (!nk)
			return jnomem(p);
		v->kid = nk;
	}
	v->kid[v->n++] = *kid;
	return 0;
}

#define MAP_OBJ_MEMBERS_MAX 64

static int
parse_container(struct jp *p, struct jval *v, int depth)
{
	bool obj = p->s[p->pos] == '{';
	char close = obj ? '}' : ']';
	int r;

	v->type = obj ? J_OBJ : J_ARR;
	p->pos++;
	skip_ws(p);
	if (p->pos < p->len && p->s[p->pos] == close) {
		p->pos++;
		return 0;
	}
	for (;;) {
		struct jval kid;
		char *key = NULL;

		memset(&kid, 0, sizeof(kid));
		skip_ws(p);
		if (p->pos >= p->len)
			return jerr(p, "unexpected end of file (is it truncated?)");
		if (obj) {
			if (p->s[p->pos] != '"')
				return jerr(p, "expected a member name");
			r = parse_string(p, &key);
			if (r < 0)
				return r;
			/* A keel map's objects have a dozen members at most: the duplicate check
			 * below is then cheap (it made a 1 MiB file of 90,000 members take 19 s
			 * to refuse). */
			if (v->n >= MAP_OBJ_MEMBERS_MAX) {
				free(key);
				return jerr(p,
					    "an object of more than 64 members (a keel map's have "
					    "a dozen at most)");
			}
			for (unsigned i = 0; i < v->n; i++)
				if (!strcmp(v->kid[i].key, key)) {
					char msg[96];

					snprintf(msg, sizeof(msg),
						 "duplicate member \"%.40s\" (remove one)", key);
					free(key);
					return jerr(p, msg);
				}
			skip_ws(p);
			if (p->pos >= p->len || p->s[p->pos] != ':') {
				free(key);
				return jerr(p, "expected ':'");
			}
			p->pos++;
		}
		r = parse_value(p, &kid, depth + 1);
		kid.key = key;
		if (r == 0)
			r = push(p, v, &kid);
		if (r < 0) {
			jfree(&kid);
			return r;
		}
		skip_ws(p);
		if (p->pos >= p->len)
			return jerr(p, "unexpected end of file (is it truncated?)");
		if (p->s[p->pos] == ',') {
			p->pos++;
			continue;
		}
		if (p->pos < p->len && p->s[p->pos] == close) {
			p->pos++;
			return 0;
		}
		return jerr(p, obj ? "expected ',' or '}'" : "expected ',' or ']'");
	}
}

static int
parse_value(struct jp *p, struct jval *v, int depth)
{
	const char *s;

	if (depth > JSON_DEPTH)
		return jerr(p, "nested too deeply");
	skip_ws(p);
	v->at = p->pos;
	if (p->pos >= p->len)
		return jerr(p, "unexpected end of file (is it truncated?)");
	s = p->s + p->pos;
	if (*s == '{' || *s == '[')
		return parse_container(p, v, depth);
	if (*s == '"') {
		v->type = J_STR;
		return parse_string(p, &v->str);
	}
	if (p->len - p->pos >= 4 && !strncmp(s, "null", 4)) {
		v->type = J_NULL;
		p->pos += 4;
		return 0;
	}
	if (p->len - p->pos >= 4 && !strncmp(s, "true", 4)) {
		v->type = J_BOOL;
		v->num = 1;
		p->pos += 4;
		return 0;
	}
	if (p->len - p->pos >= 5 && !strncmp(s, "false", 5)) {
		v->type = J_BOOL;
		p->pos += 5;
		return 0;
	}
	if (*s == '-' || (*s >= '0' && *s <= '9')) {
		/* Integers only: a map has no fractions. No leading zeros (JSON). */
		size_t i = p->pos + (*s == '-');
		long long n = 0;
		if (i >= p->len || p->s[i] < '0' || p->s[i] > '9')
			return jerr(p, "bad number");
		if (p->s[i] == '0' && i + 1 < p->len && p->s[i + 1] >= '0' && p->s[i + 1] <= '9')
			return jerr(p, "leading zero in a number");
		for (; i < p->len && p->s[i] >= '0' && p->s[i] <= '9'; i++) {
			if (n > (LLONG_MAX - 9) / 10)
				return jerr(p, "number too large");
			n = n * 10 + (p->s[i] - '0');
		}
		if (i < p->len && (p->s[i] == '.' || p->s[i] == 'e' || p->s[i] == 'E'))
			return jerr(p, "only integers are allowed");
		v->type = J_INT;
		v->num = *s == '-' ? -n : n;
		p->pos = i;
		return 0;
	}
	return jerr(p, "unexpected character");
}

/* ---- the schema ---- */

static int
field_err(struct jp *p, const struct jval *v, const char *name, const char *want)
{
	char msg[160];

	p->pos = v->at;
	snprintf(msg, sizeof(msg), "\"%s\" must be %s", name, want);
	return jerr(p, msg);
}

/* An integer in [lo, hi], or -1 for null when @nullable. */
static int
get_int(struct jp *p, const struct jval *v, const char *name, long long lo, long long hi,
	bool nullable, int *out)
{
	char want[96];

	if (nullable && v->type == J_NULL) {
		*out = -1;
		return 0;
	}
	if (v->type != J_INT || v->num < lo || v->num > hi) {
		snprintf(want, sizeof(want), "an integer in %lld..%lld%s", lo, hi,
			 nullable ? " or null" : "");
		return field_err(p, v, name, want);
	}
	*out = (int)v->num;
	return 0;
}

static int
get_str(struct jp *p, const struct jval *v, const char *name, char *out, size_t len, bool nullable)
{
	if (nullable && v->type == J_NULL) {
		out[0] = 0;
		return 0;
	}
	if (v->type == J_STR && strlen(v->str) >= len) {
		char want[64];

		snprintf(want, sizeof(want), "at most %zu characters long (it has %zu)", len - 1,
			 strlen(v->str));
		return field_err(p, v, name, want);
	}
	if (v->type != J_STR || (nullable && !v->str[0]))
		return field_err(p, v, name, nullable ? "a non-empty string or null" : "a string");
	snprintf(out, len, "%s", v->str);
	return 0;
}

static int
parse_shard(struct jp *p, const struct jval *o, unsigned idx, struct keel_map_shard *s)
{
	unsigned seen = 0;
	int v, r;

	if (o->type != J_OBJ)
		return field_err(p, o, "shards[]", "an object");
	for (unsigned i = 0; i < o->n; i++) {
		const struct jval *k = &o->kid[i];
		if (!strcmp(k->key, "shard")) {
			r = get_int(p, k, "shard", idx, idx, false, &v);
			seen |= 1;
		} else if (!strcmp(k->key, "cpu")) {
			r = get_int(p, k, "cpu", 0, KEEL_MAX_CPUS - 1, false, &s->cpu);
			seen |= 2;
		} else if (!strcmp(k->key, "core")) {
			r = get_int(p, k, "core", 0, INT_MAX, true, &s->core);
		} else if (!strcmp(k->key, "numa_node")) {
			r = get_int(p, k, "numa_node", 0, INT_MAX, true, &s->numa);
		} else if (!strcmp(k->key, "rxq")) {
			r = get_int(p, k, "rxq", 0, 65535, true, &s->rxq);
			seen |= 4;
		} else if (!strcmp(k->key, "irq_cpu")) {
			r = get_int(p, k, "irq_cpu", 0, KEEL_MAX_CPUS - 1, true, &s->irq_cpu);
		} else {
			char msg[128];
			p->pos = k->at;
			snprintf(msg, sizeof(msg), "unknown member \"%.40s\" in shard %u", k->key,
				 idx);
			return jerr(p, msg);
		}
		if (r < 0)
			return r;
	}
	if (seen != 7) {
		p->pos = o->at;
		return jerr(p, "a shard needs \"shard\", \"cpu\" and \"rxq\"");
	}
	return 0;
}

/* Where shard @s of the "shards" member starts, for messages. */
static size_t
shard_at(const struct jval *root, unsigned s)
{
	for (unsigned i = 0; i < root->n; i++)
		if (!strcmp(root->kid[i].key, "shards") && root->kid[i].type == J_ARR &&
		    s < root->kid[i].n)
			return root->kid[i].kid[s].at;
	return root->at;
}

static int
from_tree(struct jp *p, const struct jval *root, struct keel_map *m)
{
	const char *required[] = { "keel_map", "iface", "rx_queues", "shards" };
	int v = 0, r = 0;

	if (root->type != J_OBJ) {
		p->pos = root->at;
		return jerr(p, "the document must be an object");
	}
	for (size_t q = 0; q < sizeof(required) / sizeof(required[0]); q++) {
		bool found = false;
		for (unsigned i = 0; i < root->n; i++)
			found |= !strcmp(root->kid[i].key, required[q]);
		if (!found) {
			char msg[96];
			snprintf(msg, sizeof(msg), "missing member \"%s\"", required[q]);
			p->pos = root->at;
			return jerr(p, msg);
		}
	}
	for (unsigned i = 0; i < root->n && r == 0; i++) {
		const struct jval *k = &root->kid[i];
		const char *name = k->key;

		if (!strcmp(name, "keel_map")) {
			r = get_int(p, k, name, KEEL_MAP_VERSION, KEEL_MAP_VERSION, false, &v);
			if (r == 0)
				m->version = (unsigned)v;
		} else if (!strcmp(name, "source")) {
			r = get_str(p, k, name, m->source, sizeof(m->source), false);
		} else if (!strcmp(name, "iface")) {
			r = get_str(p, k, name, m->iface, sizeof(m->iface), true);
		} else if (!strcmp(name, "pci")) {
			r = get_str(p, k, name, m->pci, sizeof(m->pci), true);
		} else if (!strcmp(name, "numa_node")) {
			r = get_int(p, k, name, 0, INT_MAX, true, &m->numa);
		} else if (!strcmp(name, "rx_queues")) {
			r = get_int(p, k, name, 0, 65536, false, &v);
			if (r == 0)
				m->rx_queues = (unsigned)v;
		} else if (!strcmp(name, "hds")) {
			if (k->type != J_BOOL)
				r = field_err(p, k, name, "true or false");
			m->hds = k->num != 0;
		} else if (!strcmp(name, "smt")) {
			if (k->type == J_STR && !strcmp(k->str, "avoid"))
				m->smt = KEEL_MAP_SMT_AVOID;
			else if (k->type == J_STR && !strcmp(k->str, "allow"))
				m->smt = KEEL_MAP_SMT_ALLOW;
			else
				r = field_err(p, k, name, "\"avoid\" or \"allow\"");
		} else if (!strcmp(name, "numa")) {
			if (k->type == J_STR && !strcmp(k->str, "local"))
				m->numa_policy = KEEL_MAP_NUMA_LOCAL;
			else if (k->type == J_STR && !strcmp(k->str, "spread"))
				m->numa_policy = KEEL_MAP_NUMA_SPREAD;
			else
				r = field_err(p, k, name, "\"local\" or \"spread\"");
		} else if (!strcmp(name, "reserve")) {
			r = get_int(p, k, name, 0, KEEL_MAX_CPUS, false, &v);
			if (r == 0)
				m->reserve = (unsigned)v;
		} else if (!strcmp(name, "shards")) {
			if (k->type != J_ARR || k->n == 0 || k->n > KEEL_MAX_SHARDS) {
				r = field_err(p, k, name, "an array of 1 to 256 shards");
				break;
			}
			m->nshards = k->n;
			for (unsigned s = 0; s < k->n && r == 0; s++) {
				m->shards[s].core = m->shards[s].numa = m->shards[s].irq_cpu = -1;
				r = parse_shard(p, &k->kid[s], s, &m->shards[s]);
			}
		} else {
			char msg[128];
			p->pos = k->at;
			snprintf(msg, sizeof(msg), "unknown member \"%.40s\"", name);
			r = jerr(p, msg);
		}
	}
	if (r < 0)
		return r;
	/* Cross-field consistency: queues need an interface and fit rx_queues, which is the
	 * highest rxq + 1 (0 without queues), as keel_map_compute writes it: more would have
	 * the runtime, --check and the plan's ethtool -L ask for queues no shard uses. */
	int top = -1;
	{
		unsigned at = 0;

		for (unsigned s = 0; s < m->nshards; s++)
			if (m->shards[s].rxq > top) {
				top = m->shards[s].rxq;
				at = s;
			}
		if (m->rx_queues > (unsigned)(top + 1)) {
			char msg[160];

			p->pos = m->nshards ? shard_at(root, at) : 0;
			snprintf(msg, sizeof(msg),
				 "\"rx_queues\" is %u, but the highest rxq is %d: it must be %d "
				 "(the highest rxq + 1)",
				 m->rx_queues, top, top + 1);
			return jerr(p, msg);
		}
	}
	for (unsigned s = 0; s < m->nshards; s++) {
		if (m->shards[s].rxq >= 0 && !m->iface[0]) {
			p->pos = shard_at(root, s);
			return jerr(p, "a shard has an rx queue but \"iface\" is null");
		}
		if (m->shards[s].rxq >= 0 && (unsigned)m->shards[s].rxq >= m->rx_queues) {
			char msg[160];
			p->pos = shard_at(root, s);
			/* The one value taken is the highest rxq + 1 (above): not this
			 * shard's rxq + 1, which another shard's may exceed, nor the
			 * interface's count. */
			snprintf(msg, sizeof(msg),
				 "shard %u's rxq %d is not below \"rx_queues\" %u: it must be %d: "
				 "the highest rxq + 1 (or keep every rxq below %u)",
				 s, m->shards[s].rxq, m->rx_queues, top + 1, m->rx_queues);
			return jerr(p, msg);
		}
		for (unsigned o = 0; o < s; o++)
			if (m->shards[s].rxq >= 0 && m->shards[o].rxq == m->shards[s].rxq) {
				char msg[128];
				p->pos = shard_at(root, s);
				snprintf(msg, sizeof(msg),
					 "shards %u and %u both own rxq %d: a queue has one owner",
					 o, s, m->shards[s].rxq);
				return jerr(p, msg);
			}
	}
	return 0;
}

int
keel_map_parse(const char *json, size_t len, struct keel_map *out, char *err, size_t errlen)
{
	struct jp p = { json, len, 0, err, errlen };
	struct jval root;
	int r;

	memset(out, 0, sizeof(*out));
	memset(&root, 0, sizeof(root));
	out->numa = -1;
	{
		const char *z = memchr(json, 0, len);
		if (z) {
			p.pos = (size_t)(z - json);
			return jerr(&p, "NUL byte in the file");
		}
	}
	/* An editor's UTF-8 byte-order mark: JSON has none (RFC 8259 8.1); say so, rather
	 * than "unexpected character" at byte 0. */
	if (len >= 3 && !memcmp(json, "\xef\xbb\xbf", 3))
		return jerr(&p, "a UTF-8 byte-order mark starts the file: save it without one");
	r = parse_value(&p, &root, 0);
	if (r == 0) {
		skip_ws(&p);
		if (p.pos != p.len)
			r = jerr(&p, "data after the document");
	}
	if (r == 0)
		r = from_tree(&p, &root, out);
	jfree(&root);
	if (r < 0)
		out->nshards = 0;
	return r;
}

int
keel_map_load(const char *path, struct keel_map *out, char *err, size_t errlen)
{
	FILE *f = fopen(path, "re");
	char *buf;
	size_t n;
	int r;

	if (!f)
		return keel__errf(
			err, errlen, -errno,
			"cannot read map %s: %s (write one with keel-topo --plan --map %s)", path,
			strerror(errno), path);
	buf = malloc(MAP_FILE_MAX + 1);
	if (!buf) {
		fclose(f);
		return keel__errf(err, errlen, -ENOMEM, "reading map %s: out of memory", path);
	}
	errno = 0;
	n = fread(buf, 1, MAP_FILE_MAX + 1, f);
	/* fread sets errno on a read error (glibc); EIO when it did not say. */
	r = ferror(f) ? (errno ? -errno : -EIO) : 0;
	fclose(f);
	if (r == 0 && n > MAP_FILE_MAX)
		r = keel__errf(err, errlen, -EFBIG,
			       "map %s is larger than %u bytes (a map is a few KiB: is it the "
			       "right file? write one with keel-topo --plan --map %s)",
			       path, MAP_FILE_MAX, path);
	else if (r < 0)
		keel__errf(err, errlen, r,
			   "reading map %s failed: %s (is it a regular file? check the disk, or "
			   "write it again with keel-topo --plan --map %s)",
			   path, strerror(-r), path);
	else
		r = keel_map_parse(buf, n, out, err, errlen);
	free(buf);
	return r;
}
