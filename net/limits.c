// SPDX-License-Identifier: MIT
/*
 * Limits against hostile peers (docs/reliability.md): the header (first-bytes) and idle
 * timeouts of accepted connections, and the caps on queued send bytes per connection and
 * per shard.
 *
 * Timeouts: accepted connections whose configuration has one are on a per-shard list,
 * swept by one periodic timer (a quarter of the shortest timeout in use). The hot path
 * only sets a flag (keel__lim_rx/keel__lim_tx); the sweep turns the flag into a time, so
 * no clock is read per receive. A connection leaves the list when it closes, or once its
 * header is complete and it has no idle timeout. The timer runs only while the list is
 * not empty, so a shard without timed connections sleeps as before. The period follows the
 * list: a connection with a shorter timeout shortens it at once, and a sweep that finds
 * the shortest ones gone (closed, or past the header their header timeout was waiting for)
 * lengthens it again (else one short-lived listener's 1 ms period would sweep every
 * long-lived connection 1,000 times a second for as long as any stays).
 */
#include <errno.h>
#include <string.h>

#include "net_internal.h"

/* The sweep period @l's pending timeouts need: a quarter of the shorter (the header
 * timeout only while the header is pending), at least 1 ms. */
static uint64_t
lim_period(const struct net_lim *l)
{
	uint64_t t = l->cfg->idle_timeout_ns;
	uint64_t p;

	if (keel__lim_header_pending(l) && (!t || l->cfg->header_timeout_ns < t))
		t = l->cfg->header_timeout_ns;
	p = t / 4;
	return p < KEEL_MS(1) ? KEEL_MS(1) : p;
}

/* (Re)start the sweep to run every @p ns from now. */
static void
sweep_every(struct net_shard *ns, uint64_t p)
{
	ns->lim_period = p;
	keel_timer_start(ns->lim_timer, p, p); /* cannot fail: keel/timer.h */
}

static void
sweep_cb(struct keel_timer *t, void *arg)
{
	struct net_shard *ns = arg;
	uint64_t now = keel_now_ns(), pmin = UINT64_MAX, p;
	struct net_lim *l, *next;

	for (l = ns->lim_head; l; l = next) {
		const struct keel_net_config *cfg = l->cfg;

		next = l->next;
		if (l->active) {
			l->active = false;
			l->last_ns = now;
		}
		if (keel__lim_header_pending(l) && now - l->open_ns >= cfg->header_timeout_ns) {
			ns->st.header_timeouts++;
			keel_conn_abort(l->c, -ETIMEDOUT); /* unlists it */
			continue;
		}
		/* The idle timeout holds while the header is pending too: a silent peer goes
		 * at the shorter of the two. */
		if (cfg->idle_timeout_ns && now - l->last_ns >= cfg->idle_timeout_ns) {
			ns->st.idle_timeouts++;
			keel_conn_abort(l->c, -ETIMEDOUT); /* unlists it */
			continue;
		}
		if (!keel__lim_header_pending(l) && !cfg->idle_timeout_ns) {
			keel__lim_close(ns, l); /* nothing left to time */
			continue;
		}
		p = lim_period(l); /* still timed */
		if (p < pmin)
			pmin = p;
	}
	/* The shortest timeouts are gone: sweep as often as the rest need (the timer was
	 * stopped if the list emptied). */
	if (ns->lim_head && pmin > ns->lim_period)
		sweep_every(ns, pmin);
}

void
keel__lim_open(struct net_shard *ns, struct net_lim *l, struct keel_conn *c,
	       const struct keel_net_config *cfg)
{
	uint64_t p;

	if (!cfg->header_timeout_ns && !cfg->idle_timeout_ns)
		return;
	if (!ns->lim_timer && keel_timer_create(sweep_cb, ns, &ns->lim_timer) < 0) {
		keel_log(KEEL_LOG_ERROR, NET_MOD,
			 "shard %u: no memory for the timeout sweep: header_timeout_ns and "
			 "idle_timeout_ns are not enforced on this connection",
			 ns->id);
		return;
	}
	memset(l, 0, sizeof(*l));
	l->c = c;
	l->cfg = cfg;
	l->need = cfg->header_bytes ? cfg->header_bytes : 1;
	l->open_ns = l->last_ns = keel_now_ns();
	l->next = ns->lim_head;
	if (l->next)
		l->next->prev = l;
	ns->lim_head = l;
	l->listed = true;
	p = lim_period(l);
	if (!ns->lim_period || p < ns->lim_period)
		sweep_every(ns, p);
}

void
keel__lim_close(struct net_shard *ns, struct net_lim *l)
{
	if (!l->listed)
		return;
	l->listed = false;
	if (l->prev)
		l->prev->next = l->next;
	else
		ns->lim_head = l->next;
	if (l->next)
		l->next->prev = l->prev;
	l->prev = l->next = NULL;
	if (!ns->lim_head && ns->lim_timer) {
		keel_timer_stop(ns->lim_timer);
		ns->lim_period = 0;
	}
}

void
keel__lim_stop(struct net_shard *ns)
{
	while (ns->lim_head)
		keel__lim_close(ns, ns->lim_head);
	if (ns->lim_timer) {
		keel_timer_destroy(ns->lim_timer);
		ns->lim_timer = NULL;
	}
}

int
keel__lim_send_refuse(struct net_shard *ns, struct keel_conn *c, bool conn, uint64_t limit)
{
	static _Thread_local uint64_t refused;

	if (conn)
		ns->st.send_cap_conn++;
	else
		ns->st.send_cap_shard++;
	/* Rate-limited: the first, then one in 1000. */
	if (refused++ % 1000 == 0)
		keel_log(KEEL_LOG_WARN, NET_MOD,
			 "shard %u: a connection's send queue would pass %s (%llu bytes): the "
			 "connection is aborted (-ENOBUFS); the peer does not read what it is "
			 "sent, or raise keel_net_config.%s",
			 ns->id, conn ? "send_max" : "the shard's shard_send_max",
			 (unsigned long long)limit, conn ? "send_max" : "shard_send_max");
	keel_conn_abort(c, -ENOBUFS);
	return -ENOBUFS;
}
