// SPDX-License-Identifier: MIT
/*
 * A small keel server: answers each chunk of bytes it receives with "hello <peer>\n", on
 * every shard, on a host name or a Unix socket. Replies are copied with keel_conn_write
 * (no slices to manage); the network settings are this runtime's own.
 *
 *   ./net-hello --shards 2 localhost 7000      (or: ./net-hello unix:/tmp/hello.sock 0)
 */
#include <arpa/inet.h>
#include <errno.h>
#include <keel/keel.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/un.h>

static void
on_data(struct keel_conn *c, struct keel_slice *s, unsigned n)
{
	struct sockaddr_storage peer;
	char host[INET6_ADDRSTRLEN] = "?", line[128];
	int len;

	for (unsigned i = 0; i < n; i++)
		keel_slice_put(&s[i]); /* the request itself is not needed */
	if (keel_conn_peer_addr(c, &peer, NULL) == 0) {
		if (peer.ss_family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *)&peer)->sin_addr, host,
				  sizeof(host));
		else if (peer.ss_family == AF_INET6)
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&peer)->sin6_addr, host,
				  sizeof(host));
		else
			snprintf(host, sizeof(host), "unix");
	}
	len = snprintf(line, sizeof(line), "hello %s\n", host);
	if (keel_conn_write(c, line, (size_t)len) < 0) /* copied: line may go now */
		keel_conn_close(c);
}

static void
on_close(struct keel_conn *c, int status)
{
}

static const struct keel_conn_ops ops = { .on_data = on_data, .on_close = on_close };

static void
on_start(void *app)
{
	struct keel_net_config nc;
	int r;

	/* This runtime's network settings, on each shard before its first network use. */
	keel_net_config_init(&nc);
	nc.buf_size = 4096;
	nc.high_watermark = 64u << 10;
	nc.low_watermark = 16u << 10;
	r = keel_net_shard_init(&nc);
	if (r == 0)
		r = keel_listener_start(app);
	if (r < 0)
		keel_stop(r);
}

int
main(int argc, char **argv)
{
	struct keel_listen_opts lo = { 0 };
	struct keel_runtime *rt;
	struct keel_listener *l = NULL; /* not written when create fails */
	struct keel_opts opts;
	int r;

	char *end;
	unsigned long port;

	keel_opts_init(&opts);
	keel_opts_parse_or_exit(&opts, &argc, argv, "usage: net-hello [options] HOST PORT\n");
	if (argc != 3) {
		fprintf(stderr, "usage: net-hello [options] HOST PORT\n");
		return 2;
	}
	errno = 0;
	port = strtoul(argv[2], &end, 10);
	if (argv[2][0] < '0' || argv[2][0] > '9' || *end || errno || port > 65535) {
		fprintf(stderr, "net-hello: PORT '%s' is not a number in 0..65535\n", argv[2]);
		return 2;
	}
	if (keel_runtime_create(&opts, &rt) < 0)
		return 1;
	lo.addr = argv[1]; /* a name is resolved here, before any shard runs */
	lo.port = (uint16_t)port;
	lo.rt = rt;
	r = keel_listener_create(&lo, keel_runtime_shard_count(rt), &ops, NULL, &l);
	if (r == 0) {
		fprintf(stderr, "listening on %s port %u\n", argv[1], keel_listener_port(l));
		r = keel_runtime_start(rt, on_start, l);
	}
	if (r == 0)
		r = keel_runtime_join(rt); /* until SIGINT/SIGTERM */
	keel_runtime_destroy(rt);
	keel_listener_destroy(l); /* after the runtime; unlinks a unix: path */
	return r == 0 ? 0 : 1;
}
