// SPDX-License-Identifier: MIT
/*
 * keel-embed: a host program that embeds keel (docs/embedding.md, "A worked example").
 *
 * The host owns main(), its signals and a pool of worker threads (pthreads). keel runs the
 * shards, on the CPUs of a core/queue map (keel-topo --plan) named in the host's config
 * file, or of --cpuset. The shards serve a small framed put/get protocol over TCP and keep
 * the values on disk, one append-only data file per shard; the host keeps an in-memory
 * index, rebuilt from the files at start. A "checksum" request is computed on a worker
 * thread, which hands the result back to the shard with keel_runtime_submit().
 *
 * Protocol: KEEL_FRAME_LEN32 frames (a 32-bit big-endian length, then the payload).
 *   request: op (1 byte: 'P' put, 'G' get, 'C' checksum), id (4, BE), key length (2, BE),
 *            key, and for 'P' the value (the rest of the frame);
 *   reply:   status (1 byte: EMB_OK, EMB_NOTFOUND, EMB_BADREQ, EMB_ERROR, EMB_BUSY), id
 *            (4, BE), then: 'G' the value, 'C' the FNV-1a 64-bit hash of the value (8, BE),
 *            an error a message for a person.
 * A frame over EMB_FRAME_MAX closes the connection (the framer's -EMSGSIZE).
 *
 * Data file record (8-byte aligned): struct rec_hdr, key, value, padding. At start each
 * file is scanned; a record whose header or checksum does not hold (a write cut short at
 * a crash or a stop) is skipped: its whole extent when the header names it, else the scan
 * resynchronises on the next aligned header, which carries the directory's random marker
 * (its file "marker") so that a client's value bytes are never taken for one.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dladdr; pkg-config keel passes it too */
#endif
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <keel/keel.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EMB_KEY_MAX       1024u
#define EMB_VALUE_MAX     (1u << 20)
#define EMB_REQ_HDR       7u /* op, id, key length */
#define EMB_FRAME_MAX     (EMB_REQ_HDR + EMB_KEY_MAX + EMB_VALUE_MAX)
#define EMB_CONN_INFLIGHT 64 /* requests in progress per connection before reading pauses */
/* ... or bytes of their values: a client that does not read its replies pins no more
 * buffer memory than that, one value and the send queue's high watermark. */
#define EMB_CONN_INFLIGHT_BYTES (8u << 20)
#define EMB_MAX_FILES           1024

enum { EMB_OK = 0, EMB_NOTFOUND = 1, EMB_BADREQ = 2, EMB_ERROR = 3, EMB_BUSY = 4 };

#define REC_MAGIC 0x424d454bu       /* "KEMB" */
#define SEQ_MAX   (UINT64_MAX >> 1) /* far beyond any count of puts */

struct rec_hdr {
	uint32_t magic;
	uint16_t klen;
	uint16_t pad_;
	uint32_t vlen;
	uint32_t sum; /* FNV-1a 32 of key and value */
	uint64_t seq; /* global order: the highest wins at rebuild */
};

/* ---- the host's configuration ---- */

struct host_cfg {
	char addr[64];
	unsigned port;
	char dir[PATH_MAX];
	unsigned workers;
	char map[PATH_MAX];
};

/* A number of the config: digits only, in 0..@max. */
static bool
cfg_uint(const char *s, unsigned max, unsigned *out)
{
	char *end;
	unsigned long v;

	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (*end || errno || v > max)
		return false;
	*out = (unsigned)v;
	return true;
}

/* "KEY VALUE" lines, the value the rest of the line (a path may hold spaces); '#' starts a
 * comment. A value that does not fit, or a number with anything else in it, is refused
 * naming its line: read otherwise, "dir /data/my files" used /data/my, "port 7070x" 7070
 * and "port abc" any free port. Returns 0 or -1 (message printed). */
static int
cfg_load(const char *path, struct host_cfg *c)
{
	char line[PATH_MAX + 64];
	const char *why = NULL;
	unsigned ln = 0;
	FILE *f = fopen(path, "r");

	snprintf(c->addr, sizeof(c->addr), "127.0.0.1");
	c->port = 7070;
	c->dir[0] = c->map[0] = '\0';
	c->workers = 2;
	if (!f) {
		fprintf(stderr, "keel-embed: cannot open config %s: %s\n", path, strerror(errno));
		return -1;
	}
	while (fgets(line, sizeof(line), f)) {
		char *key = line, *val, *end;
		char *hash = strchr(line, '#');
		size_t klen;

		ln++;
		if (!strchr(line, '\n') && !feof(f)) {
			why = "line too long";
			goto bad;
		}
		if (hash)
			*hash = '\0';
		end = line + strlen(line);
		while (end > line && isspace((unsigned char)end[-1]))
			*--end = '\0';
		while (isspace((unsigned char)*key))
			key++;
		if (!*key)
			continue;
		klen = strcspn(key, " \t");
		val = key + klen;
		while (isspace((unsigned char)*val))
			*val++ = '\0';
		key[klen] = '\0';
		if (!*val) {
			why = "no value";
			goto bad;
		}
		if (!strcmp(key, "addr")) {
			if (strlen(val) >= sizeof(c->addr)) {
				why = "the address is longer than 63 bytes";
				goto bad;
			}
			snprintf(c->addr, sizeof(c->addr), "%s", val);
		} else if (!strcmp(key, "port")) {
			if (!cfg_uint(val, 65535, &c->port)) {
				why = "'port' takes a number in 0..65535";
				goto bad;
			}
		} else if (!strcmp(key, "dir")) {
			if (strlen(val) >= sizeof(c->dir)) {
				why = "the path is longer than PATH_MAX - 1 bytes";
				goto bad;
			}
			snprintf(c->dir, sizeof(c->dir), "%s", val);
		} else if (!strcmp(key, "workers")) {
			if (!cfg_uint(val, 64, &c->workers) || !c->workers) {
				why = "'workers' takes a number in 1..64";
				goto bad;
			}
		} else if (!strcmp(key, "map")) {
			if (strlen(val) >= sizeof(c->map)) {
				why = "the path is longer than PATH_MAX - 1 bytes";
				goto bad;
			}
			snprintf(c->map, sizeof(c->map), "%s", val);
		} else {
			why = "unknown key";
			goto bad;
		}
	}
	fclose(f);
	if (!c->dir[0]) {
		fprintf(stderr, "keel-embed: %s: needs 'dir PATH'\n", path);
		return -1;
	}
	return 0;
bad:
	fclose(f);
	fprintf(stderr,
		"keel-embed: %s:%u: %s: expected 'KEY VALUE' with KEY one of addr, port, dir, "
		"workers, map\n",
		path, ln, why);
	return -1;
}

/* ---- hashes ---- */

static uint32_t
fnv32(uint32_t h, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

static uint64_t
fnv64(const uint8_t *p, size_t n)
{
	uint64_t h = 14695981039346656037ull;

	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211ull;
	return h;
}

/* ---- the index: the host's, shared by the shards under a mutex ---- */

struct ent {
	struct ent *next;
	uint64_t hash; /* index_hash of the key */
	uint32_t file; /* data file (shard) holding the value */
	uint32_t vlen;
	uint64_t off; /* of the value */
	uint64_t seq;
	uint16_t klen;
	uint8_t key[];
};

#define INDEX_BUCKETS_MIN 1024u

/* Keys are a client's choice: hashed under a key drawn at start (keel_hash), so no client
 * can pick keys that share a chain, and the bucket array doubles once the keys outnumber
 * its buckets. The doubling moves every entry at once, under the mutex (a pause of some
 * milliseconds per million keys). */
static struct {
	pthread_mutex_t mu;
	struct ent **b;
	size_t mask, count;
	struct keel_hash_key key;
} idx = { .mu = PTHREAD_MUTEX_INITIALIZER };

static _Atomic uint64_t next_seq = 1;

static int
index_init(void)
{
	int rc = keel_hash_key_random(&idx.key);

	if (rc < 0) {
		fprintf(stderr, "keel-embed: no random key for the index's hash: %s\n",
			strerror(-rc));
		return rc;
	}
	idx.b = calloc(INDEX_BUCKETS_MIN, sizeof(*idx.b));
	if (!idx.b) {
		fprintf(stderr, "keel-embed: no memory for the index\n");
		return -ENOMEM;
	}
	idx.mask = INDEX_BUCKETS_MIN - 1;
	return 0;
}

/* Twice the buckets, every entry moved. Without the memory the index keeps its size: its
 * chains grow longer, nothing is lost. Holds idx.mu. */
static void
index_grow(void)
{
	size_t n = (idx.mask + 1) * 2;
	struct ent **b = calloc(n, sizeof(*b));

	if (!b)
		return;
	for (size_t i = 0; i <= idx.mask; i++)
		while (idx.b[i]) {
			struct ent *e = idx.b[i], **to = &b[e->hash & (n - 1)];

			idx.b[i] = e->next;
			e->next = *to;
			*to = e;
		}
	free(idx.b);
	idx.b = b;
	idx.mask = n - 1;
}

/* The entry for @key (of hash @h) and its link; NULL when absent. Holds idx.mu. */
static struct ent *
index_find(const uint8_t *key, uint16_t klen, uint64_t h)
{
	for (struct ent *e = idx.b[h & idx.mask]; e; e = e->next)
		if (e->hash == h && e->klen == klen && !memcmp(e->key, key, klen))
			return e;
	return NULL;
}

/* Record key -> (file, off, vlen) unless a newer one is there. Returns 0 or -ENOMEM. */
static int
index_put(const uint8_t *key, uint16_t klen, uint32_t file, uint64_t off, uint32_t vlen,
	  uint64_t seq)
{
	uint64_t h = keel_hash(&idx.key, key, klen);
	struct ent *e;
	int rc = 0;

	pthread_mutex_lock(&idx.mu);
	e = index_find(key, klen, h);
	if (!e) {
		struct ent **bk;

		e = malloc(sizeof(*e) + klen);
		if (!e) {
			rc = -ENOMEM;
			goto out;
		}
		e->hash = h;
		e->klen = klen;
		memcpy(e->key, key, klen);
		e->seq = 0; /* below every record's (from 1): the first one fills the entry */
		bk = &idx.b[h & idx.mask];
		e->next = *bk;
		*bk = e;
		if (++idx.count > idx.mask + 1)
			index_grow();
	}
	if (seq > e->seq) {
		e->file = file;
		e->off = off;
		e->vlen = vlen;
		e->seq = seq;
	}
out:
	pthread_mutex_unlock(&idx.mu);
	return rc;
}

static bool
index_get(const uint8_t *key, uint16_t klen, uint32_t *file, uint64_t *off, uint32_t *vlen)
{
	uint64_t h = keel_hash(&idx.key, key, klen);
	const struct ent *e;

	pthread_mutex_lock(&idx.mu);
	e = index_find(key, klen, h);
	if (e) {
		*file = e->file;
		*off = e->off;
		*vlen = e->vlen;
	}
	pthread_mutex_unlock(&idx.mu);
	return e != NULL;
}

/* The index's shape, at the stop: keys, buckets and the longest chain (which stays short
 * whatever keys the clients chose). */
static void
index_report(void)
{
	size_t longest = 0;

	if (!idx.b)
		return;
	for (size_t i = 0; i <= idx.mask; i++) {
		size_t n = 0;

		for (const struct ent *e = idx.b[i]; e; e = e->next)
			n++;
		if (n > longest)
			longest = n;
	}
	fprintf(stderr, "keel-embed: index: %zu keys in %zu buckets, longest chain %zu\n",
		idx.count, idx.mask + 1, longest);
}

static void
index_free(void)
{
	if (!idx.b)
		return;
	for (size_t i = 0; i <= idx.mask; i++)
		while (idx.b[i]) {
			struct ent *e = idx.b[i];
			idx.b[i] = e->next;
			free(e);
		}
	free(idx.b);
	idx.b = NULL;
	idx.count = 0;
}

/* ---- data files: opened and scanned by main() before the shards start ---- */

static struct keel_file files[EMB_MAX_FILES];
static int fds[EMB_MAX_FILES];
static unsigned nfiles;
static uint64_t tails[KEEL_MAX_SHARDS]; /* shard i appends to file i; only it touches tails[i] */
static bool failed[KEEL_MAX_SHARDS];    /* a write failed: the shard refuses puts */

/* The directory's record marker: every header carries it (magic and pad_), 48 random bits
 * drawn when the directory got its first record and kept in its file "marker". A scan that
 * resynchronises through bytes with no header (a write whose header never landed: a crash,
 * or a header write that failed while the value's landed) reads a client's value bytes;
 * without the marker an image of a record there would be indexed, for any key a client
 * chose. Directories of an older keel-embed (records, no marker) keep the fixed magic. */
static uint32_t rec_magic = REC_MAGIC;
static uint16_t rec_mark;

static uint64_t
align8(uint64_t v)
{
	return (v + 7) & ~7ull;
}

/* A window of a data file for the scan: the file is read a few MiB at a time, never whole
 * (files only grow, and a file larger than memory could not be scanned at all). */
#define SCAN_WINDOW (8u << 20) /* more than the largest record: header, key and value */

struct scan_win {
	int fd;
	uint8_t *b;
	uint64_t start, len, size; /* bytes [start, start + len) of a file of size bytes */
};

/* @n bytes at @off (off + n <= size, n <= SCAN_WINDOW), read as needed; NULL on a read
 * error (errno set; 0: the file ended early). */
static const uint8_t *
win_at(struct scan_win *w, uint64_t off, uint64_t n)
{
	uint64_t want;

	if (off >= w->start && off + n <= w->start + w->len)
		return w->b + (off - w->start);
	want = w->size - off < SCAN_WINDOW ? w->size - off : SCAN_WINDOW;
	w->start = off;
	w->len = 0;
	while (w->len < want) {
		ssize_t got = pread(w->fd, w->b + w->len, want - w->len, (off_t)(off + w->len));

		if (got <= 0) {
			if (got == 0)
				errno = 0;
			w->len = 0;
			return NULL;
		}
		w->len += (uint64_t)got;
	}
	return w->b;
}

/* Read file @i into the index. Returns 0 or -1 (message printed). */
static int
scan_file(unsigned i, bool writable, uint64_t *records, uint64_t *skipped)
{
	struct scan_win w = { .fd = fds[i] };
	struct stat st;
	const uint8_t *p;
	uint64_t off = 0, size;

	if (fstat(fds[i], &st) < 0) {
		fprintf(stderr, "keel-embed: data file %u: fstat: %s\n", i, strerror(errno));
		return -1;
	}
	size = (uint64_t)st.st_size;
	w.size = size;
	if (size) {
		w.b = malloc(size < SCAN_WINDOW ? size : SCAN_WINDOW);
		if (!w.b) {
			fprintf(stderr, "keel-embed: no memory to scan data file %u\n", i);
			return -1;
		}
	}
	while (off + sizeof(struct rec_hdr) <= size) {
		struct rec_hdr h;
		uint64_t end;
		bool hdr;

		p = win_at(&w, off, sizeof(h));
		if (!p)
			goto read_err;
		memcpy(&h, p, sizeof(h));
		end = off + sizeof(h) + h.klen + h.vlen;
		hdr = h.magic == rec_magic && h.pad_ == rec_mark && h.klen &&
		      h.klen <= EMB_KEY_MAX && h.vlen <= EMB_VALUE_MAX;
		if (hdr && end <= size && !(p = win_at(&w, off, end - off)))
			goto read_err;
		if (hdr && (end > size || !h.seq || h.seq > SEQ_MAX ||
			    fnv32(fnv32(2166136261u, p + sizeof(h), h.klen), p + sizeof(h) + h.klen,
				  h.vlen) != h.sum)) {
			/* A header whose record does not hold: a write cut short (past the end:
			 * the tail of a crash), a value torn while the writes after it landed,
			 * or a sequence number beyond SEQ_MAX, which could wrap the counter (a
			 * put's number would then repeat or be 0). Its whole extent is skipped,
			 * never scanned: its value bytes are a client's, and may hold the image
			 * of a record for any key. */
			(*skipped)++;
			if (end <= size) {
				off = align8(end);
				continue;
			}
			/* The tail of a crash: the file is cut there, or the puts appended
			 * next would lie inside the extent its header claims, and the next
			 * scan would skip them. */
			if (writable && ftruncate(fds[i], (off_t)off) < 0) {
				fprintf(stderr,
					"keel-embed: data file %u: cutting a record cut short at "
					"offset %llu: %s\n",
					i, (unsigned long long)off, strerror(errno));
				free(w.b);
				return -1;
			}
			if (writable)
				fprintf(stderr,
					"keel-embed: data file %u: a record cut short at offset "
					"%llu (a crash's tail) was cut off\n",
					i, (unsigned long long)off);
			size = off;
			break;
		}
		if (hdr) {
			if (index_put(p + sizeof(h), h.klen, i, off + sizeof(h) + h.klen, h.vlen,
				      h.seq) < 0) {
				fprintf(stderr,
					"keel-embed: data file %u: no memory to index the record at "
					"offset %llu (%llu records indexed)\n",
					i, (unsigned long long)off, (unsigned long long)*records);
				free(w.b);
				return -1;
			}
			if (h.seq >= atomic_load(&next_seq))
				atomic_store(&next_seq, h.seq + 1);
			(*records)++;
			off = align8(end);
			continue;
		}
		if (h.magic == rec_magic && h.pad_ == rec_mark)
			(*skipped)++;
		off += 8; /* no header here: resynchronise on the next aligned one */
	}
	free(w.b);
	/* Fewer bytes than a header left (off is 8-aligned): a header cut short, or the end
	 * of bytes resynchronised through. Cut as above: the next put would go where the
	 * rest of such a header lies, and the next scan would read the two as one header. */
	if (off < size && writable) {
		if (ftruncate(fds[i], (off_t)off) < 0) {
			fprintf(stderr,
				"keel-embed: data file %u: cutting %llu bytes short of a header at "
				"offset %llu: %s\n",
				i, (unsigned long long)(size - off), (unsigned long long)off,
				strerror(errno));
			return -1;
		}
		fprintf(stderr,
			"keel-embed: data file %u: %llu bytes short of a header at offset %llu (a "
			"crash's tail) were cut off\n",
			i, (unsigned long long)(size - off), (unsigned long long)off);
		size = off;
	}
	if (i < KEEL_MAX_SHARDS)
		tails[i] = align8(size);
	return 0;

read_err:
	fprintf(stderr, "keel-embed: reading data file %u at offset %llu: %s\n", i,
		(unsigned long long)off, errno ? strerror(errno) : "short read");
	free(w.b);
	return -1;
}

/* Whether @dir's data files hold records of an older keel-embed, and whether they hold any
 * bytes at all. Only a file's first header is looked at (the fixed magic, pad_ 0, at
 * offset 0): a client's value can hold the fixed magic anywhere else, and in a directory
 * with a marker every file starts with a header carrying the marker, so a client's bytes
 * cannot make a directory that lost its marker pass for an older one. */
static int
old_records(const char *dir, bool *any, bool *old)
{
	*any = *old = false;
	for (unsigned i = 0; i < EMB_MAX_FILES && !*old; i++) {
		char path[PATH_MAX + 32];
		struct rec_hdr b = { 0 };
		ssize_t n;
		int fd;

		snprintf(path, sizeof(path), "%s/shard-%u.dat", dir, i);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		/* Every name, not up to the first gone: shard-0.dat lost with the marker must
		 * not hide shard-1.dat's records (a new marker would never match them). */
		if (fd < 0 && errno == ENOENT)
			continue;
		if (fd < 0 || (n = pread(fd, &b, sizeof(b), 0)) < 0) {
			fprintf(stderr, "keel-embed: cannot read %s: %s\n", path, strerror(errno));
			if (fd >= 0)
				close(fd);
			return -1;
		}
		close(fd);
		*any |= n > 0;
		*old |= n >= 8 && b.magic == REC_MAGIC && !b.pad_; /* a header cut short too */
	}
	return 0;
}

/* @n bytes at @p into a new file @path, synced. Returns 0 or -1 (errno set). */
static int
write_synced(const char *path, const void *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644), e;

	if (fd < 0)
		return -1;
	errno = 0;
	if (write(fd, p, n) != (ssize_t)n || fsync(fd) < 0) {
		e = errno ? errno : EIO; /* a short write sets none */
		close(fd);
		errno = e;
		return -1;
	}
	return close(fd);
}

/* Sync directory @dir (a name made in it). Returns 0 or -1 (errno set). */
static int
sync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), r, e;

	if (fd < 0)
		return -1;
	r = fsync(fd);
	e = errno;
	close(fd);
	errno = e;
	return r;
}

/* The directory's record marker into rec_magic and rec_mark: read from its file, or drawn
 * and made durable (file and directory synced) before any record carries it. Returns 0 or
 * -1 (message printed). */
static int
load_marker(const char *dir)
{
	char path[PATH_MAX + 32], tmp[PATH_MAX + 32];
	uint8_t m[6];
	bool any, old;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/marker", dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		int e;

		n = read(fd, m, sizeof(m));
		e = errno;
		close(fd);
		if (n < 0) { /* a directory, EIO: not a short file, which the advice is for */
			fprintf(stderr, "keel-embed: reading %s: %s\n", path, strerror(e));
			return -1;
		}
		if (n != (ssize_t)sizeof(m)) {
			fprintf(stderr,
				"keel-embed: %s holds %zd bytes, not 6: the data files' records "
				"cannot be read without it (restore it from a backup)\n",
				path, n);
			return -1;
		}
		memcpy(&rec_magic, m, 4);
		memcpy(&rec_mark, m + 4, 2);
		return 0;
	}
	if (errno != ENOENT) {
		fprintf(stderr, "keel-embed: cannot open %s: %s\n", path, strerror(errno));
		return -1;
	}
	if (old_records(dir, &any, &old) < 0)
		return -1;
	if (old) {
		fprintf(stderr,
			"keel-embed: data files of an older keel-embed (no %s): their records "
			"keep the fixed magic, and a value holding the image of one can be "
			"indexed after a write that failed or was cut short (docs/embedding.md)\n",
			path);
		return 0;
	}
	if (any) {
		fprintf(stderr,
			"keel-embed: %s is missing and the data files hold no record readable "
			"without it: restore it from a backup (or move the data files away to "
			"start empty)\n",
			path);
		return -1;
	}
	do {
		if (getentropy(m, sizeof(m)) < 0) {
			fprintf(stderr, "keel-embed: no random bytes for %s: %s\n", path,
				strerror(errno));
			return -1;
		}
		memcpy(&rec_magic, m, 4);
		memcpy(&rec_mark, m + 4, 2);
	} while (rec_magic == REC_MAGIC); /* never taken for an older directory's */
	snprintf(tmp, sizeof(tmp), "%s/marker.tmp", dir);
	if (write_synced(tmp, m, sizeof(m)) < 0 || rename(tmp, path) < 0 || sync_dir(dir) < 0) {
		fprintf(stderr, "keel-embed: cannot write %s: %s\n", path, strerror(errno));
		unlink(tmp);
		return -1;
	}
	return 0;
}

static int
open_files(const char *dir, unsigned nshards)
{
	uint64_t records = 0, skipped = 0;
	unsigned nopen = 0;

	if (load_marker(dir) < 0)
		return -1;
	for (unsigned i = 0; i < EMB_MAX_FILES; i++) {
		char path[PATH_MAX + 32];
		int writable = i < nshards;

		snprintf(path, sizeof(path), "%s/shard-%u.dat", dir, i);
		fds[i] = open(path, (writable ? O_RDWR | O_CREAT : O_RDONLY) | O_CLOEXEC, 0644);
		if (fds[i] < 0) {
			/* The files of a run with more shards: every name, not up to the first
			 * gone (shard-1.dat lost must not hide shard-2.dat's records). */
			if (!writable && errno == ENOENT)
				continue;
			fprintf(stderr,
				"keel-embed: cannot open %s: %s (is 'dir' in the config "
				"an existing, writable directory?)\n",
				path, strerror(errno));
			return -1;
		}
		nfiles = i + 1;
		nopen++;
		int r = keel_file_from_fd(fds[i], &files[i]);

		if (r < 0) {
			fprintf(stderr, "keel-embed: %s: keel_file_from_fd: %s\n", path,
				strerror(-r));
			return -1;
		}
		if (scan_file(i, writable, &records, &skipped))
			return -1;
	}
	fprintf(stderr, "keel-embed: %u data files, %llu records, %llu skipped\n", nopen,
		(unsigned long long)records, (unsigned long long)skipped);
	return 0;
}

/* ---- the host's worker pool ---- */

struct job {
	struct keel_xreq xreq; /* handed back to the shard with keel_runtime_submit() */
	struct cn *cn;
	uint32_t id;
	unsigned shard;
	struct keel_slice val; /* the shard's reference: workers only read the bytes */
	uint64_t sum;
	struct job *next;
	bool handed; /* its result went to its shard (counted in results_out) */
};

/* Results handed back to their shards (keel_runtime_submit) whose job_done has not run
 * yet: the host's own stops wait for them after the pool's drain (results_wait), so their
 * replies are sent before keel's stop aborts the connections. */
static _Atomic unsigned results_out;

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct job *head, *tail;
	bool closing;
	pthread_t thr[64];
	unsigned n;
	unsigned busy;     /* workers holding a job */
	unsigned delay_us; /* tests: each job waits this long (KEEL_EMBED_TEST_JOB_DELAY_US) */
	const char *gate;  /* tests: jobs wait while this file exists (KEEL_EMBED_TEST_JOB_GATE) */
	struct job *orphans; /* results the runtime would no longer take */
} pool = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

static struct keel_runtime *rt;

static void job_back(struct keel_xreq *req);
static void job_done(struct keel_xreq *req);

/* Queue @j for a worker. Returns 0, or -ESHUTDOWN when the pool is closing. */
static int
pool_push(struct job *j)
{
	int rc = 0;

	pthread_mutex_lock(&pool.mu);
	if (pool.closing) {
		rc = -ESHUTDOWN;
	} else {
		j->next = NULL;
		if (pool.tail)
			pool.tail->next = j;
		else
			pool.head = j;
		pool.tail = j;
		pthread_cond_signal(&pool.cv);
		if (pool.gate) { /* tests: how many a stop will find, once the gate holds them */
			unsigned n = pool.busy;

			for (const struct job *q = pool.head; q; q = q->next)
				n++;
			fprintf(stderr, "keel-embed: test gate: %u checksum jobs in the pool\n", n);
		}
	}
	pthread_mutex_unlock(&pool.mu);
	return rc;
}

static void *
worker(void *arg)
{
	(void)arg;
	for (;;) {
		struct job *j;
		int rc;

		pthread_mutex_lock(&pool.mu);
		while (!pool.head && !pool.closing)
			pthread_cond_wait(&pool.cv, &pool.mu);
		j = pool.head;
		if (!j) {
			pthread_mutex_unlock(&pool.mu);
			return NULL;
		}
		pool.head = j->next;
		if (!pool.head)
			pool.tail = NULL;
		pool.busy++;
		pthread_mutex_unlock(&pool.mu);

		if (pool.delay_us) /* tests: so that jobs are certainly queued at a stop */
			usleep(pool.delay_us);
		/* Tests: held while the gate file exists, so that a stop certainly waits for
		 * this job, and a request can come while the pool is closing. */
		if (pool.gate && access(pool.gate, F_OK) == 0) {
			fprintf(stderr, "keel-embed: checksum job held by the test gate\n");
			while (access(pool.gate, F_OK) == 0)
				usleep(10000);
		}
		/* The bytes are the shard's: read them, never put or keep the slice. */
		j->sum = fnv64(j->val.data, j->val.len);
		memset(&j->xreq, 0, sizeof(j->xreq));
		j->xreq.fn = job_back;
		j->xreq.done = job_done;
		j->xreq.arg = j;
		j->handed = true;
		atomic_fetch_add(&results_out, 1); /* before: job_done may run at once */
		rc = keel_runtime_submit(rt, j->shard, &j->xreq);
		pthread_mutex_lock(&pool.mu);
		if (rc < 0) {
			j->handed = false;
			atomic_fetch_sub(&results_out, 1);
			/* The runtime is stopping: its shard's stop hook takes the job back once
			 * the pool has stopped (orphans_take), or main() frees it after the join
			 * (a shard without the hook). */
			j->next = pool.orphans;
			pool.orphans = j;
		}
		pool.busy--;
		pthread_mutex_unlock(&pool.mu);
	}
}

static int
pool_start(unsigned n)
{
	const char *d = getenv("KEEL_EMBED_TEST_JOB_DELAY_US");

	pool.delay_us = d ? (unsigned)strtoul(d, NULL, 10) : 0;
	pool.gate = getenv("KEEL_EMBED_TEST_JOB_GATE");
	if (pool.gate && !*pool.gate)
		pool.gate = NULL;
	pool.n = 0;
	for (unsigned i = 0; i < n; i++) {
		int rc = pthread_create(&pool.thr[i], NULL, worker, NULL);

		if (rc) {
			fprintf(stderr, "keel-embed: cannot start worker thread: %s\n",
				strerror(rc));
			return -1;
		}
		pool.n++;
	}
	return 0;
}

/* Refuse new jobs, let the workers finish the queued ones, join them. Called by the stop's
 * thread (the first signal's), by every shard's stop hook and by main(); the first joins, the
 * others wait for it (stop_mu), so no worker still reads shard memory when a call returns. */
static void
pool_stop(void)
{
	static pthread_mutex_t stop_mu = PTHREAD_MUTEX_INITIALIZER;

	unsigned left = 0;

	pthread_mutex_lock(&stop_mu);
	pthread_mutex_lock(&pool.mu);
	if (!pool.closing && pool.n) {
		for (const struct job *j = pool.head; j; j = j->next)
			left++;
		left += pool.busy;
	}
	pool.closing = true;
	pthread_cond_broadcast(&pool.cv);
	pthread_mutex_unlock(&pool.mu);
	if (left)
		fprintf(stderr,
			"keel-embed: stopping: %u checksum job%s queued or running finish first\n",
			left, left == 1 ? "" : "s");
	for (unsigned i = 0; i < pool.n; i++)
		pthread_join(pool.thr[i], NULL);
	pool.n = 0;
	pthread_mutex_unlock(&stop_mu);
}

/* ---- connections (shard side) ---- */

struct cn {
	struct keel_conn *c; /* NULL once closed */
	struct keel_framer *fr;
	int refs;         /* the connection, and each request in progress */
	int inflight;     /* requests in progress */
	uint64_t inbytes; /* ... and the bytes of their values (buffers they hold) */
	bool paused;
};

static void
cn_unref(struct cn *cn)
{
	if (--cn->refs == 0)
		free(cn);
}

static void
put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* A request whose value was @bytes long finished: resume reading when it had paused. */
static void
cn_request_done(struct cn *cn, uint32_t bytes)
{
	cn->inflight--;
	cn->inbytes -= bytes;
	if (cn->c && cn->paused && cn->inflight < EMB_CONN_INFLIGHT / 2 &&
	    cn->inbytes < EMB_CONN_INFLIGHT_BYTES / 2) {
		cn->paused = false;
		keel_conn_resume_read(cn->c);
	}
}

/* Send a reply: status, id, @body (@blen bytes, copied) and @val (consumed, may be NULL). */
static void
reply(struct cn *cn, uint8_t status, uint32_t id, const void *body, size_t blen,
      struct keel_slice *val)
{
	struct keel_slice s[2];
	unsigned n = 1;
	int r;

	if (!cn->c || keel_buf_alloc(keel_shard_alloc(), 5 + blen, &s[0]) < 0) {
		if (val)
			keel_slice_put(val);
		if (cn->c)
			keel_conn_abort(cn->c, -ENOMEM);
		return;
	}
	s[0].len = (uint32_t)(5 + blen);
	s[0].data[0] = status;
	put_be32(s[0].data + 1, id);
	if (blen)
		memcpy(s[0].data + 5, body, blen);
	if (val)
		s[n++] = *val;
	r = keel_frame_send(cn->c, s, n);
	if (r < 0) {
		for (unsigned i = 0; i < n; i++)
			if (s[i].buf)
				keel_slice_put(&s[i]);
		/* A reply that cannot be queued (-ENOMEM before its header went) would leave the
		 * client waiting for its id on an open connection: end it instead. */
		keel_conn_abort(cn->c, r);
	}
}

static void
reply_err(struct cn *cn, uint8_t status, uint32_t id, const char *msg)
{
	reply(cn, status, id, msg, strlen(msg), NULL);
}

/* Copy @len bytes at @off of frame @fr into @out. */
static void
frame_copy(const struct keel_frame *fr, size_t off, uint8_t *out, size_t len)
{
	for (unsigned i = 0; i < fr->n && len; i++) {
		size_t l = fr->s[i].len;

		if (off >= l) {
			off -= l;
			continue;
		}
		size_t take = l - off < len ? l - off : len;
		memcpy(out, fr->s[i].data + off, take);
		out += take;
		len -= take;
		off = 0;
	}
}

/* PUT: the record header and key from a small buffer, the value slices as received. */
struct wr {
	struct keel_file_req req;
	struct put *put;
	struct keel_slice sl; /* a value slice (held until all of it is written); none for the
			       * header and key */
	uint64_t at;          /* where in the file */
	uint32_t len;         /* bytes this write must move ... */
	uint32_t done;        /* ... and those it moved: keel_file_* does not continue a short
			       * write, so put_written writes the rest */
};

struct put {
	struct cn *cn;
	uint32_t id;
	unsigned shard, pending, nw;
	int err;
	uint16_t klen;
	uint32_t vlen;
	uint64_t off, seq;
	struct wr w[]; /* w[0]: header and key (hk), then one per value slice */
};

static void put_written(struct keel_file_req *req, int res, void *arg);

/* Write what is left of @w: all of it at first, the rest after a short write. */
static int
wr_issue(struct wr *w)
{
	struct put *p = w->put;
	struct keel_slice rest;
	int r;

	if (!w->sl.buf) /* the header and key */
		return keel_file_write(&w->req, &files[p->shard],
				       (uint8_t *)(p->w + p->nw) + w->done, w->len - w->done,
				       w->at + w->done, put_written, w);
	r = keel_slice_sub(&w->sl, w->done, w->len - w->done, &rest);
	if (r < 0)
		return r;
	r = keel_file_write_slice(&w->req, &files[p->shard], &rest, w->at + w->done, put_written,
				  w);
	keel_slice_put(&rest); /* the write holds its own reference */
	return r;
}

/* A put's error that is no failure of the disk: the stop, a write cancelled, or one refused
 * for memory (answered busy, worth sending again). A disk's error among the put's writes
 * (EIO, ENOSPC) takes precedence over these, whichever came first: the client was told
 * "write cancelled" and the shard went on taking puts past a failed write. */
static bool
put_err_soft(int err)
{
	return err == -ESHUTDOWN || err == -ECANCELED || err == -ENOMEM;
}

static void
put_written(struct keel_file_req *req, int res, void *arg)
{
	struct wr *w = arg;
	struct put *p = w->put;
	uint8_t *hk = (uint8_t *)(p->w + p->nw);

	if (req && res >= 0 && (w->done += (uint32_t)res) < w->len) {
		/* Short (ENOSPC part-way, a file size limit, or as the kernel may): the rest,
		 * at the offset that follows; what cannot be written then fails the put. */
		res = res ? wr_issue(w) : -EIO;
		if (res == 0)
			return;
	}
	if (req && w->sl.buf)
		keel_slice_put(&w->sl);
	if (res < 0 && (!p->err || put_err_soft(p->err)))
		p->err = res;
	if (--p->pending)
		return;
	if (!p->err) {
		int rc = index_put(hk + sizeof(struct rec_hdr), p->klen, p->shard,
				   p->off + sizeof(struct rec_hdr) + p->klen, p->vlen, p->seq);
		if (rc < 0)
			reply_err(p->cn, EMB_ERROR, p->id, "index: out of memory");
		else
			reply(p->cn, EMB_OK, p->id, NULL, 0, NULL);
	} else if (p->err == -ESHUTDOWN) {
		reply_err(p->cn, EMB_BUSY, p->id, "stopping");
	} else if (p->err == -ECANCELED) {
		/* At stop, or io-wq could not run it: answered (a client waits for its id);
		 * the space it took at the tail is skipped by the next scan, written or not. */
		reply_err(p->cn, EMB_BUSY, p->id, "write cancelled");
	} else if (p->err == -ENOMEM) {
		/* Refused for memory (the value's buffer could not be registered, --feature
		 * reg_buffers=on), not failed on the disk: the tail is known (its space is
		 * skipped, as a cancelled write's), so puts go on; this one may be sent again. */
		reply_err(p->cn, EMB_BUSY, p->id, "write refused: out of memory");
	} else {
		/* The disk refused a write (EIO, ENOSPC, ...): refuse further puts on this shard
		 * rather than acknowledge some among failures; a restart reads what is there. */
		failed[p->shard] = true;
		keel_log(KEEL_LOG_ERROR, "embed", "data file %u: write failed: %s", p->shard,
			 strerror(-p->err));
		reply_err(p->cn, EMB_ERROR, p->id, "write failed");
	}
	cn_request_done(p->cn, p->vlen);
	cn_unref(p->cn);
	free(p);
}

static void
do_put(struct cn *cn, struct keel_frame *fr, uint32_t id, const uint8_t *key, uint16_t klen)
{
	unsigned shard = keel_shard_id(keel_this_shard());
	size_t voff = EMB_REQ_HDR + klen;
	uint32_t vlen = fr->len - (uint32_t)voff;
	struct keel_slice v[64];
	unsigned nv = 0;
	struct rec_hdr h = { .magic = rec_magic, .klen = klen, .pad_ = rec_mark, .vlen = vlen };
	struct put *p;
	uint8_t *hk;
	uint64_t at;

	if (vlen > EMB_VALUE_MAX) {
		reply_err(cn, EMB_BADREQ, id, "value too large");
		return;
	}
	if (failed[shard]) {
		reply_err(cn, EMB_ERROR, id, "this shard's data file failed a write");
		return;
	}
	/* Numbers past SEQ_MAX are skipped by the scan (they could wrap the counter), so a
	 * put numbered so would be acknowledged and lost at the next start. Only a file
	 * holding a record numbered SEQ_MAX (made or restored elsewhere) gets here. */
	h.seq = atomic_fetch_add(&next_seq, 1);
	if (h.seq > SEQ_MAX) {
		reply_err(cn, EMB_ERROR, id,
			  "sequence numbers used up (a data file holds a record numbered 2^63 - "
			  "1): puts would be lost at the next start");
		return;
	}
	/* The value as sub-slices of what was received: no copy. A value that came in more
	 * receives than that (a client writing it in small pieces) is copied into one buffer
	 * instead, one write as any other. */
	for (unsigned i = 0; i < fr->n && vlen; i++) {
		size_t l = fr->s[i].len;

		if (voff >= l) {
			voff -= l;
			continue;
		}
		if (nv == 64) {
			for (unsigned k = 0; k < nv; k++)
				keel_slice_put(&v[k]);
			nv = 0;
			if (keel_buf_alloc(keel_shard_alloc(), vlen, &v[0]) < 0) {
				reply_err(cn, EMB_BUSY, id, "no buffer memory");
				return;
			}
			frame_copy(fr, EMB_REQ_HDR + klen, v[0].data, vlen);
			v[0].len = vlen;
			nv = 1;
			break;
		}
		if (keel_slice_sub(&fr->s[i], voff, l - voff, &v[nv]) < 0) {
			for (unsigned k = 0; k < nv; k++)
				keel_slice_put(&v[k]);
			reply_err(cn, EMB_BUSY, id, "out of memory");
			return;
		}
		nv++;
		voff = 0;
	}
	p = calloc(1, sizeof(*p) + (nv + 1) * sizeof(struct wr) + sizeof(h) + klen);
	if (!p) {
		for (unsigned k = 0; k < nv; k++)
			keel_slice_put(&v[k]);
		reply_err(cn, EMB_BUSY, id, "out of memory");
		return;
	}
	h.sum = 2166136261u;
	h.sum = fnv32(h.sum, key, klen);
	for (unsigned k = 0; k < nv; k++)
		h.sum = fnv32(h.sum, v[k].data, v[k].len);
	p->cn = cn;
	p->id = id;
	p->shard = shard;
	p->klen = klen;
	p->vlen = vlen;
	p->seq = h.seq;
	p->nw = nv + 1;
	p->off = tails[shard];
	tails[shard] = align8(p->off + sizeof(h) + klen + vlen);
	hk = (uint8_t *)(p->w + p->nw);
	memcpy(hk, &h, sizeof(h));
	memcpy(hk + sizeof(h), key, klen);
	cn->refs++;
	cn->inflight++;
	cn->inbytes += vlen;
	p->pending = 1; /* held until every write is submitted */
	at = p->off;
	for (unsigned k = 0; k < p->nw; k++) {
		struct wr *w = &p->w[k];
		int rc;

		w->put = p;
		w->at = at;
		w->len = k == 0 ? (uint32_t)(sizeof(h) + klen) : v[k - 1].len;
		if (k > 0) { /* the write's own, until all of it is written */
			w->sl = v[k - 1];
			v[k - 1].buf = NULL;
		}
		p->pending++;
		rc = wr_issue(w);
		at += w->len;
		if (rc < 0) {
			if (w->sl.buf)
				keel_slice_put(&w->sl);
			p->pending--;
			if (!p->err || put_err_soft(p->err))
				p->err = rc;
			/* No more of it: value bytes without their header in front would be
			 * scanned at the next start as bytes between records, where a value
			 * holding a record image is what the marker guards against. */
			break;
		}
	}
	for (unsigned k = 0; k < nv; k++)
		if (v[k].buf) /* those whose write was never made */
			keel_slice_put(&v[k]);
	put_written(NULL, 0, &p->w[0]);
}

static void stop_from_shard(int status);

/* Tests: KEEL_EMBED_TEST_STOP_AT_CHECKSUM=host makes the shard that has just handed a
 * checksum job to the pool stop the host as one that cannot listen does
 * (stop_from_shard); =keel makes it call keel_stop itself, as any other stop that does not
 * wait for the pool would. Either way a result may come back after the stop began. */
static void
test_stop_at_checksum(void)
{
	const char *m = getenv("KEEL_EMBED_TEST_STOP_AT_CHECKSUM");

	if (!m || !*m)
		return;
	fprintf(stderr, "keel-embed: test: shard %u stops the host (%s) at a checksum\n",
		keel_shard_id(keel_this_shard()), m);
	if (!strcmp(m, "keel"))
		keel_stop(-ECANCELED);
	else
		stop_from_shard(-ECANCELED);
}

/* GET and CHECKSUM: read the value into a registered buffer of this shard. */
struct rd {
	struct keel_file_req req;
	struct cn *cn;
	uint32_t id;
	uint8_t op;
	struct keel_slice val;
	uint32_t file; /* where the value lies, and how much of it was read */
	uint64_t off;
	uint32_t done;
};

/* A worker's result: the checksum, to the client. */
static void
job_reply(const struct job *j)
{
	uint8_t be[8];

	for (int i = 0; i < 8; i++)
		be[i] = (uint8_t)(j->sum >> (56 - 8 * i));
	reply(j->cn, EMB_OK, j->id, be, sizeof(be), NULL);
}

static void
job_back(struct keel_xreq *req)
{
	job_reply(req->arg);
	keel_xreq_complete(req, 0);
}

/* On the shard, after job_back or when the runtime cancelled the request. */
static void
job_done(struct keel_xreq *req)
{
	struct job *j = req->arg;

	if (j->handed)
		atomic_fetch_sub(&results_out, 1);
	cn_request_done(j->cn, (uint32_t)j->val.len);
	keel_slice_put(&j->val);
	cn_unref(j->cn);
	free(j);
}

static void
read_done(struct keel_file_req *req, int res, void *arg)
{
	struct rd *r = arg;
	struct cn *cn = r->cn;
	uint32_t bytes = (uint32_t)r->val.len; /* the slice may be put below */

	(void)req;
	/* Short (a read cut short by an I/O error part-way, or as the kernel may): the rest,
	 * at the offset that follows, as a short write is continued. A stored value came back
	 * as a server error. Nothing more (0) before the value's end: the file was cut. */
	if (res > 0 && (r->done += (uint32_t)res) < r->val.len) {
		struct keel_slice rest;

		res = keel_slice_sub(&r->val, r->done, r->val.len - r->done, &rest);
		if (res == 0) {
			res = keel_file_read_slice(&r->req, &files[r->file], &rest,
						   r->off + r->done, read_done, r);
			keel_slice_put(&rest); /* the read holds its own reference */
		}
		if (res == 0)
			return;
	} else if (res >= 0) {
		res = (int)r->done; /* all of it, or what came before the file's end */
	}
	if (res != (int)r->val.len) {
		keel_slice_put(&r->val);
		if (res == -ECANCELED) /* at stop, or io-wq could not run it: answered too */
			reply_err(cn, EMB_BUSY, r->id, "read cancelled");
		else if (res == -ESHUTDOWN) /* refused: the stop has begun (as a put's) */
			reply_err(cn, EMB_BUSY, r->id, "stopping");
		else
			reply_err(cn, EMB_ERROR, r->id, res < 0 ? strerror(-res) : "short read");
	} else if (r->op == 'G') {
		reply(cn, EMB_OK, r->id, NULL, 0, r->val.len ? &r->val : NULL);
		if (!r->val.len)
			keel_slice_put(&r->val);
	} else {
		struct job *j = calloc(1, sizeof(*j));

		if (j) {
			j->cn = cn;
			j->id = r->id;
			j->shard = keel_shard_id(keel_this_shard());
			j->val = r->val;
		}
		if (j && pool_push(j) == 0) {
			free(r); /* the job now holds the request's place on the connection */
			test_stop_at_checksum();
			return;
		}
		free(j);
		keel_slice_put(&r->val);
		reply_err(cn, EMB_BUSY, r->id, "worker pool is stopping");
	}
	cn_request_done(cn, bytes);
	cn_unref(cn);
	free(r);
}

static void
do_read(struct cn *cn, uint8_t op, uint32_t id, const uint8_t *key, uint16_t klen)
{
	uint32_t file, vlen;
	uint64_t off;
	struct rd *r;
	int rc;

	if (!index_get(key, klen, &file, &off, &vlen)) {
		reply_err(cn, EMB_NOTFOUND, id, "no such key");
		return;
	}
	r = calloc(1, sizeof(*r));
	if (!r) {
		reply_err(cn, EMB_BUSY, id, "out of memory");
		return;
	}
	/* One byte for an empty value, which still needs a buffer (not vlen + 1: a value of
	 * a power of two would take a buffer of the next one, twice its size). */
	rc = keel_buf_alloc(keel_shard_alloc(), vlen ? vlen : 1, &r->val);
	if (rc < 0) {
		free(r);
		reply_err(cn, EMB_BUSY, id, "no buffer memory");
		return;
	}
	r->val.len = vlen;
	r->cn = cn;
	r->id = id;
	r->op = op;
	r->file = file;
	r->off = off;
	cn->refs++;
	cn->inflight++;
	cn->inbytes += vlen;
	if (vlen == 0) {
		read_done(&r->req, 0, r);
		return;
	}
	rc = keel_file_read_slice(&r->req, &files[file], &r->val, off, read_done, r);
	if (rc < 0) {
		read_done(&r->req, rc, r);
	}
}

static int
on_frame(void *arg, struct keel_frame *fr)
{
	struct cn *cn = arg;
	uint8_t hdr[EMB_REQ_HDR], key[EMB_KEY_MAX];
	uint32_t id = 0;
	uint16_t klen;

	if (fr->len < EMB_REQ_HDR) {
		reply_err(cn, EMB_BADREQ, 0, "frame shorter than a request header");
		goto out;
	}
	frame_copy(fr, 0, hdr, sizeof(hdr));
	id = (uint32_t)hdr[1] << 24 | (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 8 | hdr[4];
	klen = (uint16_t)(hdr[5] << 8 | hdr[6]);
	if (klen == 0 || klen > EMB_KEY_MAX || EMB_REQ_HDR + klen > fr->len) {
		reply_err(cn, EMB_BADREQ, id, "key length 0, over 1024, or past the frame");
		goto out;
	}
	frame_copy(fr, EMB_REQ_HDR, key, klen);
	switch (hdr[0]) {
	case 'P':
		do_put(cn, fr, id, key, klen);
		break;
	case 'G':
	case 'C':
		if (fr->len != EMB_REQ_HDR + klen)
			reply_err(cn, EMB_BADREQ, id, "bytes after the key");
		else
			do_read(cn, hdr[0], id, key, klen);
		break;
	default:
		reply_err(cn, EMB_BADREQ, id, "unknown op (P, G or C)");
	}
out:
	for (unsigned i = 0; i < fr->n; i++)
		keel_slice_put(&fr->s[i]);
	if (cn->c && !cn->paused &&
	    (cn->inflight >= EMB_CONN_INFLIGHT || cn->inbytes >= EMB_CONN_INFLIGHT_BYTES)) {
		cn->paused = true;
		keel_conn_pause_read(cn->c);
	}
	return 0;
}

static void
on_open(struct keel_conn *c)
{
	struct cn *cn = calloc(1, sizeof(*cn));
	struct keel_framer_opts o = { .kind = KEEL_FRAME_LEN32,
				      .max = EMB_FRAME_MAX,
				      .on_frame = on_frame };

	if (!cn) {
		keel_conn_abort(c, -ENOMEM);
		return;
	}
	o.arg = cn;
	if (keel_framer_create(&o, &cn->fr) < 0) {
		free(cn);
		keel_conn_abort(c, -ENOMEM);
		return;
	}
	cn->c = c;
	cn->refs = 1;
	keel_conn_set_user(c, cn);
}

static void
on_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct cn *cn = keel_conn_user(c);

	if (!cn) {
		for (unsigned i = 0; i < n; i++)
			keel_slice_put(&s[i]);
		return;
	}
	keel_framer_on_data(cn->fr, c, s, n); /* a bad frame aborts the connection */
}

static void
on_close(struct keel_conn *c, int status)
{
	struct cn *cn = keel_conn_user(c);

	(void)status;
	if (!cn)
		return;
	cn->c = NULL;
	keel_framer_destroy(cn->fr);
	cn_unref(cn);
}

static const struct keel_conn_ops conn_ops = { .on_open = on_open,
					       .on_data = on_data,
					       .on_close = on_close };

static struct keel_listener *listener;

/* On a shard, in its stop hook, once pool_stop() returned (every worker joined, so the
 * orphan list is final): this shard's results that keel_runtime_submit refused because the
 * stop had begun (a stop that did not wait for the pool first). Each is answered with its
 * checksum, which the worker computed, and released here, on its shard (its slice is this
 * shard's: put anywhere else, or never, it leaked). Every shard's hook runs pool_stop and
 * then this, so each takes its own. With keel-embed's --stop-flush-ms (2000 by default) the
 * reply reaches the client: the network's stop hook, registered before this one (at the
 * listener's start), leaves the connection open for this hook and closes it gracefully
 * after it (the reply, then a FIN), holding the stop up to 2 s for the client to take it
 * (docs/net.md, "The stop's flush"; tested by
 * embed/a_result_refused_once_the_stop_began_is_answered_by_its_shard). With
 * --stop-flush-ms 0 that hook has aborted the connection already, and the reply is lost.
 * A stop the host makes itself drains the pool first (stop_from_shard, stopper), while
 * the runtime runs, so that its replies go out before keel's stop begins, whatever the
 * option. */
static void
orphans_take(void)
{
	unsigned me = keel_shard_id(keel_this_shard());
	struct job **pp, *mine = NULL;

	pthread_mutex_lock(&pool.mu);
	for (pp = &pool.orphans; *pp;) {
		struct job *j = *pp;

		if (j->shard == me) {
			*pp = j->next;
			j->next = mine;
			mine = j;
		} else {
			pp = &j->next;
		}
	}
	pthread_mutex_unlock(&pool.mu);
	while (mine) {
		struct job *j = mine;

		mine = j->next;
		job_reply(j);
		job_done(&j->xreq);
	}
}

/* At stop, on each shard: its disk counters (fixed: reads and writes that went to the ring
 * as READ_FIXED/WRITE_FIXED, i.e. straight from registered buffers). */
static void
shard_stop(void *arg)
{
	struct keel_file_stats fs;

	(void)arg;
	/* However the runtime stops (also a keel_stop that did not wait for the pool), the
	 * workers finish before any shard's memory, which they read, goes with it. */
	pool_stop();
	orphans_take();
	if (keel_file_stats(keel_this_shard(), &fs) == 0)
		fprintf(stderr,
			"keel-embed: shard %u: %llu disk requests, %llu fixed, %llu errors\n",
			keel_shard_id(keel_this_shard()), (unsigned long long)fs.completed,
			(unsigned long long)fs.fixed, (unsigned long long)fs.errors);
}

/* The "listening" line, made before the shards start (the port is known once the listener
 * is created) and written by the last shard to listen: written after keel_runtime_start
 * returned, it came before any shard listened, and a shard that then failed to listen
 * made the host exit 1 after a supervisor had read it. */
static char ready_line[256 + 12 * KEEL_MAX_SHARDS];
static _Atomic unsigned shards_listening;

/* The host's own stop from a shard (one that cannot listen): the workers first, while the
 * runtime still runs, so their results go back and are answered (as the signal's stop
 * does); then keel. The shard waits for the running jobs here as its stop hook would. */
static void
stop_from_shard(int status)
{
	pool_stop();
	keel_stop(status);
}

static void
shard_start(void *app)
{
	int rc = keel_listener_start(listener);
	/* Without its hook a shard could end while workers still read its memory. */
	int hr = keel_shard_on_stop(shard_stop, NULL);

	(void)app;
	if (hr < 0)
		keel_log(KEEL_LOG_ERROR, "embed", "shard %u: no stop hook: %s",
			 keel_shard_id(keel_this_shard()), strerror(-hr));
	if (rc < 0)
		keel_log(KEEL_LOG_ERROR, "embed", "shard %u cannot listen: %s",
			 keel_shard_id(keel_this_shard()), strerror(-rc));
	if (rc < 0 || hr < 0)
		stop_from_shard(rc < 0 ? rc : hr);
	else if (atomic_fetch_add(&shards_listening, 1) + 1 == keel_runtime_shard_count(rt))
		fputs(ready_line, stderr); /* one write: stderr is unbuffered */
}

/* ---- the host's main thread and its signal thread ---- */

static sigset_t stop_set;

static _Atomic bool host_done; /* main: the runtime ended; the signal thread returns */
/* The listener's Unix path ("addr unix:/path"): a second signal's _exit skips the
 * listener's destroy, which removes it, so the exit does (the next start would fail with
 * EADDRINUSE). */
static char unix_path[108];

/* Off the shards, once pool_stop() returned: wait until the shards have taken every result
 * the workers handed back (job_done), at most 10 s, so that their replies are queued and
 * sent before keel's stop aborts the connections (it resets one with a send in flight). A
 * stop right after the drain cut them: 22 of 30 answered in a CI run's
 * embed/stop_with_work_in_flight. */
static void
results_wait(void)
{
	struct timespec ms = { 0, 1000 * 1000 };

	for (unsigned i = 0; i < 10000 && atomic_load(&results_out); i++)
		nanosleep(&ms, NULL);
	if (atomic_load(&results_out))
		fprintf(stderr,
			"keel-embed: stopping: %u checksum results not yet taken by their shards "
			"after 10 s; their replies may not reach the clients\n",
			atomic_load(&results_out));
}

/* The first signal's stop: drain the workers, then stop keel. */
static void *
stopper(void *arg)
{
	(void)arg;
	pool_stop(); /* results still go back: the runtime is running */
	results_wait();
	keel_runtime_stop(rt, 0);
	return NULL;
}

/* Waits for SIGINT/SIGTERM: the first stops the host (in a thread of its own, which waits
 * for the running checksums), a second exits at once, as keel's own signal handling does
 * (a stop waiting on a stuck job could otherwise be ended only by SIGKILL). */
static void *
signal_thread(void *arg)
{
	pthread_t st;
	bool stopping = false, joinable = false;
	int sig;

	(void)arg;
	for (;;) {
		sigwait(&stop_set, &sig);
		if (atomic_load(&host_done))
			break;
		if (stopping) {
			static const char m[] = "keel-embed: second signal: exiting now (running "
						"checksum jobs and unsent replies are dropped)\n";
			ssize_t w = write(2, m, sizeof(m) - 1);

			(void)w;
			if (unix_path[0])
				unlink(unix_path);
			_exit(128 + sig);
		}
		stopping = true;
		joinable = pthread_create(&st, NULL, stopper, NULL) == 0;
		if (!joinable)
			stopper(NULL); /* no thread: the stop, here (a second signal waits) */
	}
	if (joinable)
		pthread_join(st, NULL);
	return NULL;
}

static const char usage[] =
	"usage: keel-embed --config FILE [keel options]\n"
	"  The config file holds 'KEY VALUE' lines: dir PATH (data files; required),\n"
	"  addr ADDR (127.0.0.1), port N (7070; 0: any), workers N (2), map FILE (a core/queue\n"
	"  map from keel-topo --plan: the shards' CPUs). Without a map, --cpuset picks them.\n"
	"  --stop-flush-ms defaults to 2000 here: replies made at the stop are delivered.\n";

int
main(int argc, char **argv)
{
	struct keel_opts opts;
	struct host_cfg cfg = { 0 };
	const char *cfg_path = NULL;
	struct keel_listen_opts lo = { 0 };
	pthread_t sigthr;
	Dl_info di;
	int rc;

	keel_opts_init(&opts);
	opts.signals = false; /* the host owns its signals */
	/* A stop that does not wait for the pool (a bare keel_stop) still delivers the replies
	 * the stop hook makes of the results it takes back: the connections close gracefully,
	 * for up to 2 s (--stop-flush-ms N or KEEL_STOP_FLUSH_MS change it; 0 resets them at
	 * once). */
	opts.stop_flush_ms = 2000;
	keel_opts_parse_or_exit(&opts, &argc, argv, usage);
	/* keel_opts_next: written as keel's options are ("--config FILE", "--config=FILE"). */
	for (int i = 1;;) {
		static const struct keel_app_opt own[] = { { "--config", "FILE" } };
		const char *v;
		char err[256];

		rc = keel_opts_next(argc, argv, &i, own, 1, &v, err, sizeof(err));
		if (rc == -ENOENT && i < argc) /* after "--": keel-embed takes no argument */
			snprintf(err, sizeof(err), "unexpected argument %s", argv[i]);
		else if (rc == -ENOENT)
			break;
		if (rc < 0) {
			fprintf(stderr, "keel-embed: %s\n%s", err, usage);
			return 2;
		}
		cfg_path = v;
	}
	if (!cfg_path) {
		fprintf(stderr, "keel-embed: --config FILE is required\n%s", usage);
		return 2;
	}
	if (cfg_load(cfg_path, &cfg) < 0)
		return 2;
	if (cfg.map[0] && !opts.map_path)
		opts.map_path = cfg.map;
	if (index_init() < 0)
		return 1;

	/* Which malloc this host got (keel leaves it to the C library unless opted in). */
	if (dladdr((void *)malloc, &di) && di.dli_fname)
		fprintf(stderr, "keel-embed: malloc from %s\n", di.dli_fname);

	/* Block the stop signals before any thread exists, so every thread inherits the mask
	 * and only the signal thread takes them. */
	sigemptyset(&stop_set);
	sigaddset(&stop_set, SIGINT);
	sigaddset(&stop_set, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop_set, NULL);

	rc = keel_runtime_create(&opts, &rt);
	if (rc < 0) {
		fprintf(stderr, "keel-embed: cannot create the runtime: %s\n", strerror(-rc));
		return 1;
	}
	if (open_files(cfg.dir, keel_runtime_shard_count(rt)) < 0) {
		rc = -EIO;
		goto destroy;
	}
	lo.addr = cfg.addr;
	if (!strncmp(cfg.addr, "unix:/", 6) && strlen(cfg.addr + 5) < sizeof(unix_path))
		memcpy(unix_path, cfg.addr + 5, strlen(cfg.addr + 5) + 1);
	lo.port = (uint16_t)cfg.port;
	lo.rt = rt;
	rc = keel_listener_create(&lo, keel_runtime_shard_count(rt), &conn_ops, NULL, &listener);
	if (rc < 0) {
		fprintf(stderr, "keel-embed: cannot listen on %s port %u: %s\n", cfg.addr, cfg.port,
			strerror(-rc));
		goto destroy;
	}
	if (pool_start(cfg.workers) < 0) {
		rc = -EAGAIN;
		goto stop_pool;
	}
	{
		size_t n = (size_t)snprintf(
			ready_line, sizeof(ready_line),
			"keel-embed: listening on %s port %u, %u shards on CPUs", cfg.addr,
			keel_listener_port(listener), keel_runtime_shard_count(rt));

		for (unsigned i = 0; i < keel_runtime_shard_count(rt) && n < sizeof(ready_line);
		     i++)
			n += (size_t)snprintf(ready_line + n, sizeof(ready_line) - n, " %d",
					      keel_runtime_shard_cpu(rt, i));
		if (n < sizeof(ready_line))
			snprintf(ready_line + n, sizeof(ready_line) - n, ", %u workers\n",
				 cfg.workers);
	}
	rc = keel_runtime_start(rt, shard_start, NULL);
	if (rc < 0) {
		fprintf(stderr, "keel-embed: cannot start the shards: %s\n", strerror(-rc));
		goto stop_pool;
	}
	if (pthread_create(&sigthr, NULL, signal_thread, NULL)) {
		pool_stop(); /* first, as the signal's stop does: results still go back */
		results_wait();
		keel_runtime_stop(rt, -EAGAIN);
		keel_runtime_join(rt);
		rc = -EAGAIN;
		goto stop_pool;
	}
	rc = keel_runtime_join(rt);
	/* The shards ended (a signal, or keel_stop on a shard): wake the signal thread. */
	atomic_store(&host_done, true);
	pthread_kill(sigthr, SIGTERM);
	pthread_join(sigthr, NULL);
stop_pool:
	pool_stop();
	while (pool.orphans) {
		struct job *j = pool.orphans;
		pool.orphans = j->next;
		/* Left only by a shard without its stop hook (orphans_take), unanswered. Its
		 * slice's memory went with the runtime; its connection's record is the host's,
		 * and this job held a reference to it (the shards have ended). */
		cn_unref(j->cn);
		free(j);
	}
destroy:
	if (listener)
		keel_listener_destroy(listener);
	keel_runtime_destroy(rt);
	for (unsigned i = 0; i < nfiles; i++)
		if (fds[i] >= 0) /* a gap of a run with more shards: -1 */
			close(fds[i]);
	index_report();
	index_free();
	fprintf(stderr, "keel-embed: stopped (%s)\n", rc ? strerror(rc < 0 ? -rc : rc) : "clean");
	return rc ? 1 : 0;
}
