// SPDX-License-Identifier: MIT
/* UDP sends batched with UDP_SEGMENT: datagrams one callback sends to one destination, of
 * one size (the last may be shorter), share a sendmsg; a different size or destination, the
 * segment limit and an IP packet's payload start another; every datagram arrives whole and
 * in order; a batch the kernel refuses is sent again one by one. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "../../net/net_internal.h"
#include "helpers.h"

#define MAXDG 100

/* What the test asks the shard to send: @n datagrams of @size[i] bytes, to the asker, or
 * every odd one to 127.0.0.1:@alt_port when that is not 0. */
struct gso_cmd {
	uint16_t n, alt_port;
	uint16_t to_port_0;   /* every datagram to 127.0.0.1:0 (refused: EINVAL) */
	uint16_t port_0_from; /* when not 0: datagrams from this index on to 127.0.0.1:0 */
	uint16_t alt_from;    /* when not 0: from this index on to @alt_port, not every odd one */
	uint16_t later;       /* when not 0: datagrams from index @later_from on are sent from a
			       * keel_defer callback, after the pass's completions */
	uint16_t later_from;
	uint16_t size[MAXDG];
};

struct gso_srv {
	struct keel_udp *u;
	_Atomic uint16_t port;
	_Atomic int open_err;
	bool no_check; /* SO_NO_CHECK on the endpoint's socket: the kernel refuses batches */
	_Atomic bool
		close_after; /* close the endpoint right after queueing the datagrams asked for */
	_Atomic unsigned send_errors;
	struct gso_cmd later; /* the command whose last datagrams a deferred call sends */
	struct sockaddr_storage later_src;
};

static uint8_t
pattern(unsigned i, size_t k)
{
	return (uint8_t)(i * 37 + k * 11 + 5);
}

/* Send datagrams [@from, @c->n) of command @c, which @src asked for. */
static void
gso_send_range(struct keel_udp *u, struct gso_srv *g, const struct gso_cmd *c,
	       const struct sockaddr_storage *src, unsigned from)
{
	struct sockaddr_storage alt = *src;

	((struct sockaddr_in *)&alt)->sin_port = htons(c->alt_port);
	if (c->to_port_0)
		((struct sockaddr_in *)&alt)->sin_port = 0;
	for (unsigned i = from; i < c->n && i < MAXDG; i++) {
		struct keel_slice d;
		bool to_alt = c->alt_from ? i >= c->alt_from : c->alt_port && (i & 1);

		if (keel_buf_alloc(keel_shard_alloc(), c->size[i], &d) < 0) {
			atomic_fetch_add(&g->send_errors, 1);
			continue;
		}
		d.len = c->size[i];
		for (size_t k = 0; k < d.len; k++)
			d.data[k] = pattern(i, k);
		if (c->port_0_from && i >= c->port_0_from) {
			struct sockaddr_storage p0 = *src;

			((struct sockaddr_in *)&p0)->sin_port = 0;
			if (keel_udp_send(u, &d, &p0) < 0)
				keel_slice_put(
					&d); /* accepted or not, counted lost: not an error here */
			continue;
		}
		if (keel_udp_send(u, &d, c->to_port_0 || to_alt ? &alt : src) < 0) {
			keel_slice_put(&d);
			atomic_fetch_add(&g->send_errors, 1);
		}
	}
}

/* A command's datagrams from later_from on, from the pass's deferred work. */
static void
gso_send_later(void *arg)
{
	struct gso_srv *g = arg;

	gso_send_range(g->u, g, &g->later, &g->later_src, g->later.later_from);
}

static void
gso_datagram(struct keel_udp *u, struct keel_slice *s, const struct sockaddr_storage *src)
{
	struct gso_srv *g = keel_udp_app(u);
	struct gso_cmd c;

	memset(&c, 0, sizeof(c));
	memcpy(&c, s->data, s->len < sizeof(c) ? s->len : sizeof(c));
	keel_slice_put(s);
	if (c.to_port_0) {
		struct keel_slice none = { 0 };

		/* And a slice without a buffer is refused at the call (it was accepted, and
		 * its put aborted at completion). */
		if (keel_udp_send(u, &none, src) != -EINVAL)
			atomic_fetch_add(&g->send_errors, 1);
	}
	if (c.later) {
		g->later = c;
		g->later_src = *src;
		if (keel_defer(gso_send_later, g) < 0)
			atomic_fetch_add(&g->send_errors, 1);
		c.n = c.later_from;
	}
	gso_send_range(u, g, &c, src, 0);
	if (atomic_load(&g->close_after))
		keel_udp_close(u);
}

static const struct keel_udp_ops gso_ops = { .on_datagram = gso_datagram };

/* The endpoint's socket, found by its port among this process's descriptors. */
static int
endpoint_fd(uint16_t port)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int found = -1;

	while (d && (e = readdir(d)) != NULL) {
		struct sockaddr_in a;
		socklen_t al = sizeof(a);
		int fd = atoi(e->d_name), type;
		socklen_t tl = sizeof(type);

		if (fd <= 2 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) < 0 ||
		    type != SOCK_DGRAM || getsockname(fd, (struct sockaddr *)&a, &al) < 0 ||
		    a.sin_family != AF_INET || ntohs(a.sin_port) != port)
			continue;
		found = fd;
		break;
	}
	if (d)
		closedir(d);
	return found;
}

static void
gso_start(void *arg)
{
	struct gso_srv *g = arg;
	int r = keel_udp_open("127.0.0.1", 0, &gso_ops, g, &g->u), one = 1;

	if (r == 0 && g->no_check) {
		int fd = endpoint_fd(keel_udp_port(g->u));
		r = fd < 0                                                           ? -ENOENT
		    : setsockopt(fd, SOL_SOCKET, SO_NO_CHECK, &one, sizeof(one)) < 0 ? -errno
										     : 0;
	}
	if (r < 0) {
		atomic_store(&g->open_err, r);
		atomic_store(&g->port, 1);
		keel_stop(r);
		return;
	}
	atomic_store(&g->port, keel_udp_port(g->u));
}

struct gso_run {
	struct keel_runtime *rt;
	struct gso_srv srv;
	int fd, alt;
	uint16_t alt_port;
};

/* As gso_run_start, with keel_net_config.udp_send_max at @send_max and the --feature
 * @feature (NULL: none). */
static void
gso_run_start_max(struct gso_run *t, uint32_t segs, bool no_check, uint32_t send_max,
		  const char *feature)
{
	struct keel_opts o = net_test_opts(1);
	struct keel_net_config nc;
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t al = sizeof(a);
	int sz = 4 << 20;

	memset(t, 0, sizeof(*t));
	if (feature)
		net_test_feature(&o, feature);
	t->srv.no_check = no_check;
	keel_net_config_init(&nc);
	nc.udp_gso_segs = segs;
	nc.udp_send_max = send_max;
	cr_assert_eq(keel_net_config_set(&nc), 0);
	cr_assert_eq(keel_runtime_create(&o, &t->rt), 0);
	cr_assert_eq(keel_runtime_start(t->rt, gso_start, &t->srv), 0);
	WAIT_FOR(atomic_load(&t->srv.port), "the shard to open its UDP socket");
	cr_assert_eq(atomic_load(&t->srv.open_err), 0, "open: %s",
		     strerror(-atomic_load(&t->srv.open_err)));
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	t->alt = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(t->alt, 0);
	setsockopt(t->alt, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz));
	cr_assert_eq(bind(t->alt, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(getsockname(t->alt, (struct sockaddr *)&a, &al), 0);
	t->alt_port = ntohs(a.sin_port);
	t->fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(t->fd, 0);
	setsockopt(t->fd, SOL_SOCKET, SO_RCVBUFFORCE, &sz, sizeof(sz));
	a.sin_port = htons(atomic_load(&t->srv.port));
	cr_assert_eq(connect(t->fd, (struct sockaddr *)&a, sizeof(a)), 0);
}

static void
gso_run_start(struct gso_run *t, uint32_t segs, bool no_check)
{
	gso_run_start_max(t, segs, no_check, KEEL_NET_UDP_SEND_MAX_DEFAULT, NULL);
}

static void
gso_run_stop(struct gso_run *t)
{
	keel_runtime_stop(t->rt, 0);
	cr_assert_eq(keel_runtime_join(t->rt), 0);
	keel_runtime_destroy(t->rt);
	close(t->fd);
	close(t->alt);
	cr_assert_eq(atomic_load(&t->srv.send_errors), 0);
}

/* Ask for the datagrams of @size[0..n-1] (every odd one to the second socket with @alt),
 * receive each whole and in order, and return the shard's counters after. */
static struct keel_net_stats
exchange(struct gso_run *t, const uint16_t *size, unsigned n, bool alt)
{
	static uint8_t in[65536];
	struct gso_cmd c = { .n = (uint16_t)n, .alt_port = alt ? t->alt_port : 0 };
	struct keel_net_stats st;
	int r;

	memcpy(c.size, size, n * sizeof(*size));
	cr_assert_eq(send(t->fd, &c, sizeof(c), 0), (ssize_t)sizeof(c));
	for (unsigned i = 0; i < n; i++) {
		int fd = alt && (i & 1) ? t->alt : t->fd;
		ssize_t got;

		wait_fd(fd, POLLIN, TEST_WAIT_MS, 0, "a datagram");
		got = recv(fd, in, sizeof(in), MSG_DONTWAIT);
		cr_assert_eq(got, (ssize_t)size[i], "datagram %u of %u: %zd bytes (%s), want %u", i,
			     n, got, got < 0 ? strerror(errno) : "", size[i]);
		for (size_t k = 0; k < size[i]; k++)
			cr_assert_eq(in[k], pattern(i, k), "datagram %u byte %zu", i, k);
	}
	r = rt_net_stats(t->rt, 0, &st);
	cr_assert_eq(r, 0, "no stats from the shard: %s", strerror(-r));
	return st;
}

static void
fill(uint16_t *size, unsigned n, uint16_t v)
{
	for (unsigned i = 0; i < n; i++)
		size[i] = v;
}

/* The shard's datagrams in flight now. */
static uint64_t
inflight(struct gso_run *t)
{
	struct keel_net_stats st;

	cr_assert_eq(rt_net_stats(t->rt, 0, &st), 0);
	return st.udp_send_inflight;
}

/* udp_send_max 10 and 30 datagrams asked for in one callback (none can complete before
 * the pass ends): the first 10 go, the other 20 are refused with -ENOBUFS and counted;
 * once those 10 are sent, the endpoint sends again. */
static void
send_max_run(uint32_t segs)
{
	struct gso_run t;
	struct keel_net_stats st;
	struct gso_cmd c = { .n = 30 };
	static uint8_t in[2048];
	uint16_t size[5];

	gso_run_start_max(&t, segs, false, 10, NULL);
	for (unsigned i = 0; i < c.n; i++)
		c.size[i] = 100;
	cr_assert_eq(send(t.fd, &c, sizeof(c), 0), (ssize_t)sizeof(c));
	for (unsigned i = 0; i < 10; i++) {
		wait_fd(t.fd, POLLIN, TEST_WAIT_MS, 0, "a datagram");
		cr_assert_eq(recv(t.fd, in, sizeof(in), MSG_DONTWAIT), 100);
		cr_assert_eq(in[7], pattern(i, 7), "datagram %u", i);
	}
	WAIT_FOR(inflight(&t) == 0, "the 10 datagrams' sends to complete");
	cr_assert_eq(rt_net_stats(t.rt, 0, &st), 0);
	cr_assert_eq(st.udp_send_capped, 20, "%llu refused",
		     (unsigned long long)st.udp_send_capped);
	cr_assert_eq(atomic_load(&t.srv.send_errors), 20);
	atomic_store(&t.srv.send_errors, 0);
	fill(size, 5, 100);
	st = exchange(&t, size, 5, false);
	cr_assert_eq(st.udp_send_capped, 20);
	gso_run_stop(&t);
}

Test(net_udp_gso, datagrams_in_flight_past_udp_send_max_are_refused)
{
	send_max_run(KEEL_UDP_GSO_MAX);
}

Test(net_udp_gso, datagrams_in_flight_past_udp_send_max_are_refused_one_by_one)
{
	send_max_run(1);
}

Test(net_udp_gso, datagrams_to_one_destination_share_one_sendmsg)
{
	struct gso_run t;
	struct keel_net_stats st;
	uint16_t size[41];

	gso_run_start(&t, KEEL_UDP_GSO_MAX, false);
	fill(size, 40, 1000);
	size[40] = 300; /* a shorter last one joins */
	st = exchange(&t, size, 41, false);
	cr_assert_eq(st.sends, 1, "%llu sendmsgs for 41 datagrams of one pass",
		     (unsigned long long)st.sends);
	cr_assert_eq(st.udp_gso_sends, 1);
	cr_assert_eq(st.udp_gso_datagrams, 41);
	cr_assert_eq(st.udp_gso_fallbacks, 0);
	gso_run_stop(&t);
}

Test(net_udp_gso, size_destination_and_limits_start_another_sendmsg)
{
	struct gso_run t;
	struct keel_net_stats st, prev;
	/* {1000 1000} {1200 1200 300} {1000}: a larger one, and one after a shorter one. */
	static const uint16_t sizes[] = { 1000, 1000, 1200, 1200, 300, 1000 };
	uint16_t size[MAXDG];

	gso_run_start(&t, 4, false);
	st = exchange(&t, sizes, 6, false);
	cr_assert_eq(st.sends, 3);
	cr_assert_eq(st.udp_gso_sends, 2);
	cr_assert_eq(st.udp_gso_datagrams, 5);
	/* Two destinations in turn: nothing joins. */
	prev = st;
	fill(size, 6, 500);
	st = exchange(&t, size, 6, true);
	cr_assert_eq(st.sends - prev.sends, 6);
	cr_assert_eq(st.udp_gso_sends, prev.udp_gso_sends);
	/* udp_gso_segs 4: ten datagrams in 4 + 4 + 2. */
	prev = st;
	fill(size, 10, 100);
	st = exchange(&t, size, 10, false);
	cr_assert_eq(st.sends - prev.sends, 3);
	cr_assert_eq(st.udp_gso_sends - prev.udp_gso_sends, 3);
	cr_assert_eq(st.udp_gso_datagrams - prev.udp_gso_datagrams, 10);
	/* An IP packet's payload: two of 30,000 bytes fit, a third does not. */
	prev = st;
	fill(size, 3, 30000);
	st = exchange(&t, size, 3, false);
	cr_assert_eq(st.sends - prev.sends, 2);
	cr_assert_eq(st.udp_gso_datagrams - prev.udp_gso_datagrams, 2);
	cr_assert_eq(st.udp_gso_fallbacks, 0);
	/* Six batched sendmsgs, at most three (4 + 4 + 2) in flight at once: the batch states
	 * come back to the pool with their completions. */
	cr_assert_eq(st.udp_gso_sends, 6);
	cr_assert_leq(st.udp_gso_batches, 3, "%llu batch states for %llu batched sendmsgs",
		      (unsigned long long)st.udp_gso_batches, (unsigned long long)st.udp_gso_sends);
	cr_assert_geq(st.udp_gso_batches, 1);
	gso_run_stop(&t);
}

Test(net_udp_gso, udp_gso_segs_1_sends_one_by_one)
{
	struct gso_run t;
	struct keel_net_stats st;
	uint16_t size[10];

	gso_run_start(&t, 1, false);
	fill(size, 10, 1000);
	st = exchange(&t, size, 10, false);
	cr_assert_eq(st.sends, 10);
	cr_assert_eq(st.udp_gso_sends, 0);
	gso_run_stop(&t);
}

/* The kernel refuses a sendmsg with UDP_SEGMENT on a socket with SO_NO_CHECK (EINVAL):
 * each datagram goes again alone, in order, and the endpoint sends one by one after. */
Test(net_udp_gso, a_refused_batch_is_sent_again_one_by_one)
{
	struct gso_run t;
	struct keel_net_stats st, prev;
	uint16_t size[20];

	gso_run_start(&t, KEEL_UDP_GSO_MAX, true);
	fill(size, 20, 1000);
	st = exchange(&t, size, 20, false);
	WAIT_FOR(inflight(&t) == 0, "no datagram in flight");
	cr_assert_eq(rt_net_stats(t.rt, 0, &st), 0);
	/* The refused sendmsg carried nothing: its datagrams went one by one. They were
	 * counted as carried by it, when they joined it. */
	cr_assert_eq(st.udp_gso_sends, 0, "%llu sendmsgs counted as carrying several datagrams",
		     (unsigned long long)st.udp_gso_sends);
	cr_assert_eq(st.udp_gso_datagrams, 0, "%llu datagrams counted as batched",
		     (unsigned long long)st.udp_gso_datagrams);
	cr_assert_eq(st.udp_gso_fallbacks, 1);
	cr_assert_eq(st.sends, 21, "%llu sendmsgs: the refused one and 20 single ones",
		     (unsigned long long)st.sends);
	prev = st;
	fill(size, 5, 1000);
	st = exchange(&t, size, 5, false);
	cr_assert_eq(st.sends - prev.sends, 5);
	cr_assert_eq(st.udp_gso_sends, prev.udp_gso_sends);
	/* Smaller ones too: the socket's EINVAL (SO_NO_CHECK, read back) is no MTU's. */
	prev = st;
	fill(size, 5, 100);
	st = exchange(&t, size, 5, false);
	cr_assert_eq(st.sends - prev.sends, 5);
	cr_assert_eq(st.udp_gso_sends, prev.udp_gso_sends, "batching went on below 1000 bytes");
	/* The batch's datagrams moved to sends of their own and were counted once. */
	WAIT_FOR(inflight(&t) == 0, "no datagram in flight");
	gso_run_stop(&t);
}

Test(net_udp_gso, udp_gso_segs_is_validated)
{
	struct keel_net_config nc;

	keel_net_config_init(&nc);
	cr_assert_eq(nc.udp_gso_segs, KEEL_UDP_GSO_MAX);
	nc.udp_gso_segs = KEEL_UDP_GSO_MAX + 1;
	cr_assert_eq(keel_net_config_set(&nc), -EINVAL);
	nc.udp_gso_segs = 0;
	cr_assert_eq(keel_net_config_set(&nc), 0);
	keel_net_config_init(&nc);
	cr_assert_eq(keel_net_config_set(&nc), 0);
}

/* The same refusal, the endpoint closed in the callback that queued the datagrams: they
 * were accepted (keel_udp_send returned 0), so the fallback still sends each of them. */
Test(net_udp_gso, a_refused_batch_is_sent_again_after_a_close)
{
	struct gso_run t;
	struct keel_net_stats st;
	uint16_t size[20];

	gso_run_start(&t, KEEL_UDP_GSO_MAX, true);
	atomic_store(&t.srv.close_after, true); /* read in the callback of the next datagram */
	fill(size, 20, 1000);
	st = exchange(&t, size, 20, false);
	cr_assert_eq(st.udp_gso_fallbacks, 1);
	gso_run_stop(&t);
}

/* A batch to a destination that refuses every datagram (port 0: EINVAL, alone or
 * batched) is no refusal of batching: the datagrams are lost and counted, and batching
 * stays on. It was turned off for good, so a peer sending from port 0 could do that to
 * every endpoint it reached. The batch's first datagram, sent alone, decides. */
Test(net_udp_gso, a_batch_its_destination_refuses_leaves_batching_on)
{
	struct gso_run t;
	struct keel_net_stats st, prev;
	struct gso_cmd c = { .n = 10, .to_port_0 = 1 };
	uint16_t size[10];

	gso_run_start(&t, KEEL_UDP_GSO_MAX, false);
	for (unsigned i = 0; i < c.n; i++)
		c.size[i] = 100;
	cr_assert_eq(send(t.fd, &c, sizeof(c), 0), (ssize_t)sizeof(c));
	WAIT_FOR(rt_net_stats(t.rt, 0, &st) == 0 && st.udp_send_errors == 10,
		 "the 10 datagrams to port 0 counted lost");
	WAIT_FOR(inflight(&t) == 0, "no datagram in flight");
	cr_assert_eq(rt_net_stats(t.rt, 0, &prev), 0);
	cr_assert_eq(prev.udp_gso_fallbacks, 1);
	fill(size, 10, 1000);
	st = exchange(&t, size, 10, false);
	cr_assert_eq(st.udp_gso_sends - prev.udp_gso_sends, 1, "batching was turned off");
	gso_run_stop(&t);
}

/* A refused batch whose first datagram went alone: EMSGSIZE (its datagrams are larger than
 * the path's MTU, as 2,000-byte ones on a 1,500-byte NIC are, which any peer may send)
 * keeps batching for smaller datagrams; every other refusal (EINVAL: SO_NO_CHECK, too many
 * segments; EIO: IPsec), or EMSGSIZE at sizes no MTU refuses, turns it off for the
 * endpoint. EMSGSIZE turned it off before, for every peer of the endpoint. */
Test(net_udp_gso, a_batch_larger_than_the_mtu_only_stops_batching_that_size)
{
	cr_assert_eq(keel__udp_gso_refused(-EMSGSIZE, 2000, false), KEEL__UDP_GSO_CEILING);
	cr_assert_eq(keel__udp_gso_refused(-EMSGSIZE, 1473, false), KEEL__UDP_GSO_CEILING);
	cr_assert_eq(keel__udp_gso_refused(-EMSGSIZE, KEEL__UDP_GSO_SEG_FLOOR, false),
		     KEEL__UDP_GSO_OFF);
	cr_assert_eq(keel__udp_gso_refused(-EINVAL, 2000, true), KEEL__UDP_GSO_OFF);
	cr_assert_eq(keel__udp_gso_refused(-EIO, 1000, false), KEEL__UDP_GSO_OFF);
}

/* Kernels before 6.14 refused a segment above the path's MTU with EINVAL, the answer for a
 * socket without UDP checksums too: with checksums on, EINVAL is the MTU's, and only that
 * size goes alone. It turned batching off for every peer of the endpoint there, so one
 * peer sending datagrams larger than a NIC's MTU did that. */
Test(net_udp_gso, einval_with_checksums_on_is_the_mtu_of_older_kernels)
{
	cr_assert_eq(keel__udp_gso_refused(-EINVAL, 2000, false), KEEL__UDP_GSO_CEILING);
	cr_assert_eq(keel__udp_gso_refused(-EINVAL, KEEL__UDP_GSO_SEG_FLOOR, false),
		     KEEL__UDP_GSO_OFF);
	cr_assert_eq(keel__udp_gso_refused(-EMSGSIZE, 2000, true), KEEL__UDP_GSO_CEILING);
}

/* The loopback of this process's own network namespace: up, with an MTU of @mtu. */
static void
lo_up_mtu(int mtu)
{
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "lo");
	ifr.ifr_mtu = mtu;
	cr_assert_eq(ioctl(fd, SIOCSIFMTU, &ifr), 0, "MTU of lo: %s", strerror(errno));
	cr_assert_eq(ioctl(fd, SIOCGIFFLAGS, &ifr), 0);
	ifr.ifr_flags |= IFF_UP;
	cr_assert_eq(ioctl(fd, SIOCSIFFLAGS, &ifr), 0, "lo up: %s", strerror(errno));
	close(fd);
}

/* Enter a network namespace of the test's own whose loopback has an MTU of @mtu (1,500, as
 * a NIC has); skips the test where that cannot be (not root). */
static void
enter_netns_mtu(int mtu)
{
	if (geteuid() != 0)
		cr_skip_test("needs root: a network namespace with its own loopback");
	if (unshare(CLONE_NEWNET) < 0)
		cr_skip_test("unshare(CLONE_NEWNET): %s", strerror(errno));
	lo_up_mtu(mtu);
}

/* The same end to end, in a network namespace of the test's own whose loopback has a
 * 1,500-byte MTU, as a NIC has (root only): a batch of 2,000-byte datagrams is refused
 * (EMSGSIZE) and sent again one by one, and 1,000-byte ones are still batched after. */
/* In a network namespace whose loopback has an MTU of @mtu, started in @t: 4 datagrams of
 * @big bytes, over the MTU, refused as a batch (one fallback), then 10 of @small bytes
 * still sent as one batch. Returns the stats after. */
static struct keel_net_stats
over_the_mtu_then_smaller(struct gso_run *t, int mtu, uint16_t big, uint16_t small)
{
	struct keel_net_stats st, prev;
	uint16_t size[10];

	enter_netns_mtu(mtu);
	gso_run_start(t, KEEL_UDP_GSO_MAX, false);
	fill(size, 4, big);
	st = exchange(t, size, 4, false);
	cr_assert_eq(st.udp_gso_fallbacks, 1, "the batch over the MTU was not refused");
	WAIT_FOR(inflight(t) == 0, "no datagram in flight");
	cr_assert_eq(rt_net_stats(t->rt, 0, &prev), 0);
	fill(size, 10, small);
	st = exchange(t, size, 10, false);
	cr_assert_eq(st.udp_gso_sends - prev.udp_gso_sends, 1,
		     "%u-byte datagrams were not batched after the refusal", small);
	return st;
}

Test(net_udp_gso, datagrams_over_the_mtu_go_alone_and_smaller_ones_still_batch)
{
	struct keel_net_stats st, prev;
	struct gso_run t;
	uint16_t size[10];

	prev = over_the_mtu_then_smaller(&t, 1500, 2000, 1000);
	fill(size, 4, 2000);
	st = exchange(&t, size, 4, false);
	cr_assert_eq(st.udp_gso_fallbacks, 1, "2,000-byte datagrams were batched again");
	cr_assert_eq(st.sends - prev.sends, 4);
	gso_run_stop(&t);
}

/* A path MTU below 576 (a route's learned MTU goes down to net.ipv4.route.min_pmtu, 552 by
 * default, as a peer's ICMP may set it; a loopback of 560 bytes stands in here): a batch of
 * 540-byte datagrams refused with EMSGSIZE stops batching at that size only, and 100-byte
 * datagrams are still batched. EMSGSIZE at 548 bytes or less turned batching off for every
 * peer of the endpoint (a review's run). Root only, as above. */
Test(net_udp_gso, a_path_mtu_below_576_only_stops_batching_its_size)
{
	struct gso_run t;

	over_the_mtu_then_smaller(&t, 560, 540, 100);
	gso_run_stop(&t);
}

/* Two batches refused in one pass, for different reasons: 1,600-byte datagrams over the
 * 1,500-byte MTU (EMSGSIZE) and datagrams to port 0 (EINVAL). Each probe judges its own
 * batch's refusal: batching goes on for smaller datagrams. The refusal was the endpoint's
 * last one, so the first probe read the second batch's EINVAL and turned batching off,
 * which a peer sending from port 0 must not be able to do. Root only, as above. */
Test(net_udp_gso, two_batches_refused_at_once_are_each_judged_by_their_own_error)
{
	struct keel_net_stats st, prev;
	struct gso_cmd c = { .n = 8, .port_0_from = 4 };
	static uint8_t in[4096];
	struct gso_run t;
	uint16_t size[10];

	enter_netns_mtu(1500);
	gso_run_start(&t, KEEL_UDP_GSO_MAX, false);
	for (unsigned i = 0; i < 4; i++)
		c.size[i] = 1600;
	for (unsigned i = 4; i < 8; i++)
		c.size[i] = 100;
	cr_assert_eq(send(t.fd, &c, sizeof(c), 0), (ssize_t)sizeof(c));
	for (unsigned i = 0; i < 4; i++) {
		wait_fd(t.fd, POLLIN, TEST_WAIT_MS, 0, "a datagram");
		cr_assert_eq(recv(t.fd, in, sizeof(in), MSG_DONTWAIT), 1600);
	}
	WAIT_FOR(inflight(&t) == 0, "no datagram in flight");
	cr_assert_eq(rt_net_stats(t.rt, 0, &prev), 0);
	cr_assert_eq(prev.udp_gso_fallbacks, 2, "both batches refused");
	fill(size, 10, 1000);
	st = exchange(&t, size, 10, false);
	cr_assert_eq(st.udp_gso_sends - prev.udp_gso_sends, 1,
		     "batching was turned off by the other batch's refusal");
	gso_run_stop(&t);
}

/* Receive @n datagrams of @size bytes on @fd, the @i0-th on of a command (pattern). */
static void
recv_run(int fd, unsigned n, uint16_t size, unsigned i0)
{
	static uint8_t in[65536];

	for (unsigned i = 0; i < n; i++) {
		ssize_t got;

		wait_fd(fd, POLLIN, TEST_WAIT_MS, 0, "a datagram");
		got = recv(fd, in, sizeof(in), MSG_DONTWAIT);
		cr_assert_eq(got, (ssize_t)size, "datagram %u: %zd bytes, want %u", i, got, size);
		for (size_t k = 0; k < size; k++)
			cr_assert_eq(in[k], pattern(i0 + i, k), "datagram %u byte %zu", i, k);
	}
}

/* The INFO lines that say a size now goes alone. */
static _Atomic unsigned ceiling_lines;

static void
ceiling_sink(enum keel_log_level level, const char *module, int shard, const char *msg, void *arg)
{
	(void)module;
	(void)shard;
	(void)arg;
	if (level == KEEL_LOG_INFO && strstr(msg, "or more are sent one by one from now on"))
		atomic_fetch_add(&ceiling_lines, 1);
}

/* A sendmsg of one 2,000-byte datagram queued (not yet submitted) in the pass whose
 * completions then bring the probe that finds batching refused, for 2,000-byte datagrams
 * (over a 1,500-byte MTU: EMSGSIZE) or for all (SO_NO_CHECK: EINVAL): a datagram of that
 * size sent later in the pass goes alone, not into that sendmsg. It joined it, as the
 * endpoint's last sendmsg, and the kernel refused the batch again: a second fallback (and
 * over the MTU a second INFO line for the size). The order is made with single-shot
 * receives: the shard is held while three commands wait in its socket, so each receive armed
 * again completes at once, ahead of what the same pass queued after it; the first command's
 * batch is queued from deferred work (after that receive), so the third command is received
 * in the pass of the probe's completion, ahead of it, and its second datagram goes from
 * deferred work, after it (with @both_ahead, at once, ahead of it too). */
static void
queued_before_refusal_run(bool no_check, bool both_ahead)
{
	struct gso_cmd c1 = { .n = 4, .later = 1 }, c2 = { 0 },
		       c3 = { .n = 2, .later = !both_ahead, .later_from = 1 };
	struct keel_net_stats st;
	struct shard_hold h;
	struct gso_run t;

	if (!no_check)
		enter_netns_mtu(1500);
	gso_run_start_max(&t, KEEL_UDP_GSO_MAX, no_check, KEEL_NET_UDP_SEND_MAX_DEFAULT,
			  "multishot_recv=off");
	fill(c1.size, 4, 2000);
	fill(c3.size, 2, 2000);
	shard_hold_init(&h);
	shard_hold(&h, t.rt, 0);
	cr_assert_eq(send(t.fd, &c1, sizeof(c1), 0), (ssize_t)sizeof(c1));
	cr_assert_eq(send(t.fd, &c2, sizeof(c2), 0), (ssize_t)sizeof(c2));
	cr_assert_eq(send(t.fd, &c3, sizeof(c3), 0), (ssize_t)sizeof(c3));
	shard_hold_release(&h);
	shard_hold_fini(&h);
	recv_run(t.fd, 4, 2000, 0);
	recv_run(t.fd, 2, 2000, 0);
	WAIT_FOR(inflight(&t) == 0, "no datagram in flight");
	cr_assert_eq(rt_net_stats(t.rt, 0, &st), 0);
	cr_assert_eq(st.udp_gso_fallbacks, 1, "%llu batches refused: %s",
		     (unsigned long long)st.udp_gso_fallbacks,
		     both_ahead
			     ? "two 2,000-byte datagrams were batched while a refused batch "
			       "of their size was being probed, and refused again"
			     : "a 2,000-byte datagram joined a sendmsg after the probe had found "
			       "batching it refused");
	/* The refused batch, its 4 datagrams alone, the third command's 2 alone. */
	cr_assert_eq(st.sends, 7, "%llu sendmsgs", (unsigned long long)st.sends);
	gso_run_stop(&t);
}

/* Over the MTU, in a network namespace of the test's own (root only, as above). */
Test(net_udp_gso, a_sendmsg_queued_before_its_size_was_refused_takes_no_more_of_that_size)
{
	queued_before_refusal_run(false, false);
}

Test(net_udp_gso, a_sendmsg_queued_before_batching_was_refused_takes_no_more_datagrams)
{
	queued_before_refusal_run(true, false);
}

/* As above, with both of the third command's datagrams sent ahead of the probe's
 * completion: from a refusal until its probe says, datagrams of the refused size (all,
 * after a refusal taken for the socket's) go alone. They were batched, that batch (two
 * datagrams, made before the probe's answer cleared the tail) went to the kernel, was
 * refused once more and counted a second time in udp_gso_fallbacks. */
Test(net_udp_gso, a_batch_made_while_its_size_was_probed_is_not_refused_again)
{
	queued_before_refusal_run(false, true);
}

Test(net_udp_gso, a_batch_made_while_batching_was_probed_is_not_refused_again)
{
	queued_before_refusal_run(true, true);
}

/* Two batches of 2,000-byte datagrams, to two destinations, refused in one pass over a
 * 1,500-byte MTU: both probes complete, and the size is said once (the second probe's
 * size equal to the ceiling the first set was taken for a lower one). Root only. */
Test(net_udp_gso, a_size_two_batches_found_refused_at_once_is_logged_once)
{
	struct keel_net_stats st;
	struct gso_run t;
	struct gso_cmd c = { .n = 8, .alt_from = 4 };

	enter_netns_mtu(1500);
	keel_log_set_sink(ceiling_sink, NULL);
	gso_run_start(&t, KEEL_UDP_GSO_MAX, false);
	keel_log_set_level(KEEL_LOG_INFO); /* the runtime's create set the tests' WARN */
	c.alt_port = t.alt_port;
	fill(c.size, 8, 2000);
	cr_assert_eq(send(t.fd, &c, sizeof(c), 0), (ssize_t)sizeof(c));
	recv_run(t.fd, 4, 2000, 0);
	recv_run(t.alt, 4, 2000, 4);
	WAIT_FOR(inflight(&t) == 0, "no datagram in flight");
	cr_assert_eq(rt_net_stats(t.rt, 0, &st), 0);
	gso_run_stop(&t);
	keel_log_set_sink(NULL, NULL);
	cr_assert_eq(st.udp_gso_fallbacks, 2, "both batches refused");
	cr_assert_eq(atomic_load(&ceiling_lines), 1,
		     "%u INFO lines for 2,000-byte datagrams going alone, want 1",
		     atomic_load(&ceiling_lines));
}

/* A dual-stack endpoint ("::") batches to a v4-mapped source (IPv4 underneath, through
 * udpv6_sendmsg's v4-mapped path) and to an IPv6 one alike: 20 datagrams of one callback
 * share sendmsgs, none falls back, all arrive whole and in order. */
struct ds_srv {
	struct keel_udp *u;
	_Atomic uint16_t port;
	_Atomic int err, fails;
};

static void
ds_datagram(struct keel_udp *u, struct keel_slice *s, const struct sockaddr_storage *src)
{
	struct ds_srv *g = keel_udp_app(u);

	keel_slice_put(s);
	for (unsigned i = 0; i < 20; i++) {
		struct keel_slice d;

		if (keel_buf_alloc(keel_shard_alloc(), 1000, &d) < 0) {
			g->fails++;
			continue;
		}
		d.len = 1000;
		memset(d.data, (int)i, d.len);
		if (keel_udp_send(u, &d, src) < 0) {
			keel_slice_put(&d);
			g->fails++;
		}
	}
}

static const struct keel_udp_ops ds_ops = { .on_datagram = ds_datagram };

static void
ds_start(void *arg)
{
	struct ds_srv *g = arg;
	int r = keel_udp_open("::", 0, &ds_ops, g, &g->u);

	if (r < 0) {
		g->err = r;
		g->port = 1;
		keel_stop(r);
		return;
	}
	g->port = keel_udp_port(g->u);
}

static void
dual_stack_run(int family)
{
	struct keel_opts o = net_test_opts(1);
	struct sockaddr_storage a = { 0 };
	struct keel_runtime *rt;
	struct keel_net_stats st;
	struct ds_srv g = { 0 };
	uint8_t in[2048];
	socklen_t al;
	int fd;

	cr_assert_eq(keel_runtime_create(&o, &rt), 0);
	cr_assert_eq(keel_runtime_start(rt, ds_start, &g), 0);
	WAIT_FOR(atomic_load(&g.port), "the endpoint on ::");
	cr_assert_eq(g.err, 0, "%s", strerror(-g.err));
	if (family == AF_INET) {
		struct sockaddr_in *a4 = (struct sockaddr_in *)&a;

		a4->sin_family = AF_INET;
		a4->sin_port = htons(g.port);
		a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		al = sizeof(*a4);
	} else {
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&a;

		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(g.port);
		a6->sin6_addr = in6addr_loopback;
		al = sizeof(*a6);
	}
	fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(connect(fd, (struct sockaddr *)&a, al), 0);
	cr_assert_eq(send(fd, "go", 2, 0), 2);
	for (unsigned i = 0; i < 20; i++) {
		ssize_t n;

		wait_fd(fd, POLLIN, TEST_WAIT_MS, 0, "an echo");
		n = recv(fd, in, sizeof(in), MSG_DONTWAIT);
		cr_assert_eq(n, 1000, "family %d, datagram %u: %zd bytes", family, i, n);
		for (unsigned k = 0; k < 1000; k++)
			cr_assert_eq(in[k], (uint8_t)i, "family %d: datagram %u, byte %u is %u",
				     family, i, k, in[k]);
	}
	cr_assert_eq(rt_net_stats(rt, 0, &st), 0);
	cr_assert_gt(st.udp_gso_sends, 0, "family %d: no batch", family);
	cr_assert_lt(st.udp_gso_sends, 20, "family %d: one sendmsg per datagram", family);
	cr_assert_eq(st.udp_gso_fallbacks, 0, "family %d", family);
	cr_assert_eq(atomic_load(&g.fails), 0);
	keel_runtime_stop(rt, 0);
	cr_assert_eq(keel_runtime_join(rt), 0);
	keel_runtime_destroy(rt);
	close(fd);
}

Test(net_udp_gso, a_dual_stack_endpoint_batches_to_v4_mapped_and_ipv6_sources)
{
	dual_stack_run(AF_INET6);
	if (net_bindv6only()) /* "::" is then IPv6 only: no v4-mapped source can reach it */
		cr_skip_test("net.ipv6.bindv6only is 1: the v4-mapped half was not run");
	dual_stack_run(AF_INET);
}
