/* SPDX-License-Identifier: MIT */
/* keel-kv: the connection side (server.c). */
#ifndef KEEL_KV_SERVER_H
#define KEEL_KV_SERVER_H

#include <keel/keel.h>

/** Connection callbacks of keel-kv. */
extern const struct keel_conn_ops kv_conn_ops;

/** Set up this shard's table and timers. Returns: 0 or -errno. Context: a shard, once. */
int kv_shard_start(void);

/** Whether this shard's stop hook ran (its table is gone). Context: a shard. */
bool kv_shard_stopped(void);

/** The port INFO reports. Context: before the shards start. */
void kv_set_port(uint16_t port);

/** Free what the shards left (parser arrays). Context: after the runtime was joined. */
void kv_fini(void);

#endif
