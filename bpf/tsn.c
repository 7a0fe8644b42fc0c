//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * TSN metadata proxy: the saver runs at egress of a pod's interface (inside the
 * pod's network namespace) and stores the packet's priority and launch time,
 * after applying the pod's policy; the restorer runs first at egress of the TSN
 * NIC and writes them back onto the same packet. See docs/datapath.md.
 */
#include "fingerprint.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define TSN_PRIO_BUCKETS 17 /* application priorities 0..15, and 16 for ">= 16" */
#define TSN_DENY 0xff

/* Clock of a launch time; the same numbers as BPF_SKB_CLOCK_* (>= 6.11). */
#define TSN_CLK_REALTIME 0
#define TSN_CLK_MONO 1
#define TSN_CLK_TAI 2
#define TSN_CLK_NONE 0xff

#define BPF_SKB_TSTAMP_DELIVERY_MONO_ 1

#define TSN_F_PRIO 1
#define TSN_F_TSTAMP 2
#define TSN_F_AMBIGUOUS 4

#define TSN_ACTION_DEMOTE 0
#define TSN_ACTION_DROP 1

/* Set by the loader before load. */
/* The kernel reports TAI/MONO/REALTIME in __sk_buff->tstamp_type (>= 6.11). */
volatile const __u8 have_clock_types = 0;
/* The slot (per-pod policy, quota and counters) this saver instance serves. */
volatile const __u32 saver_slot = 0;

struct tsn_val {
	__u64 tstamp;   /* launch time; 0 if none saved */
	__u64 saved_ns; /* bpf_ktime_get_ns() at save, for expiry */
	__u32 slot;
	__u32 gen;      /* the slot's generation when saved: a later pod in the slot never sees it */
	__u32 refs;     /* packets in flight that share this fingerprint and metadata */
	__u32 prio;     /* granted priority */
	__u8 app_prio;  /* counter bucket: the priority the application asked for */
	__u8 flags;
	__u8 clock;     /* TSN_CLK_* of tstamp */
	__u8 pad;
};

struct tsn_policy {
	__u8 grant[16]; /* application priority -> granted priority, TSN_DENY if not allowed */
	__u8 action;    /* TSN_ACTION_* for denied priorities */
	__u8 demote_prio;
	__u8 unspec_clock; /* clock of launch times when the kernel does not say (< 6.11) */
	__u8 active;
	__u32 quota;    /* at most this many map entries for the slot */
	__u32 gen;
};

struct tsn_counters {
	__u64 saved;
	__u64 restored;
	__u64 missed;    /* metadata not saved: quota reached, map full, no fingerprint */
	__u64 demoted;
	__u64 dropped;
	__u64 rejected;  /* fingerprint ambiguous: two in-flight packets, different metadata */
	__u64 expired;   /* saved, never reached the NIC before the TTL */
};

struct tsn_cfg {
	__u64 ttl_ns;
	__u64 gc_interval_ns;
	__u16 vxlan_port_a;
	__u16 vxlan_port_b;
	__u8 nic_clock; /* the clock the NIC's qdiscs read launch times in */
	__u8 pad[3];
};

struct tsn_gc {
	struct bpf_timer timer;
	__u64 runs;
	__u64 last_run_ns;
};

/* Sizes are placeholders: the loader sets max_entries from its options. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct tsn_key);
	__type(value, struct tsn_val);
} tsn_meta SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct tsn_policy);
} tsn_policies SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} tsn_inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 64 * TSN_PRIO_BUCKETS);
	__type(key, __u32);
	__type(value, struct tsn_counters);
} tsn_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tsn_cfg);
} tsn_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tsn_gc);
} tsn_gc_timer SEC(".maps");


static __always_inline struct tsn_counters *counters(__u32 slot, __u32 bucket)
{
	__u32 idx = slot * TSN_PRIO_BUCKETS + bucket;
	return bpf_map_lookup_elem(&tsn_stats, &idx);
}

static __always_inline void inflight_dec(__u32 slot)
{
	__u32 *n = bpf_map_lookup_elem(&tsn_inflight, &slot);
	if (n && *n > 0)
		__sync_fetch_and_add(n, -1);
}

/* Forget an entry. Only the CPU whose delete succeeds gives back the quota, so
 * concurrent restorers and the GC never count one entry twice. */
static __always_inline int forget(struct tsn_key *k, struct tsn_val *v, int expired)
{
	__u32 slot = v->slot, gen = v->gen, bucket = v->app_prio;
	if (bpf_map_delete_elem(&tsn_meta, k) != 0)
		return 0;
	struct tsn_policy *pol = bpf_map_lookup_elem(&tsn_policies, &slot);
	if (!pol || pol->gen != gen)
		return 1; /* the slot was released and its quota reset */
	inflight_dec(slot);
	if (expired) {
		struct tsn_counters *c = counters(slot, bucket);
		if (c)
			c->expired++;
	}
	return 1;
}

static __always_inline __u8 launch_clock(struct __sk_buff *skb, struct tsn_policy *pol)
{
	__u8 t = skb->tstamp_type;
	if (have_clock_types)
		return t; /* TSN_CLK_* == BPF_SKB_CLOCK_* */
	/* < 6.11: only "mono delivery time" is marked; SO_TXTIME stamps are unmarked. */
	if (t == BPF_SKB_TSTAMP_DELIVERY_MONO_)
		return TSN_CLK_MONO;
	return pol->unspec_clock;
}

SEC("tc")
int tsn_saver(struct __sk_buff *skb)
{
	__u32 prio = skb->priority;
	__u64 ts = skb->tstamp;

	/* Skip path: nothing the application set. */
	if (!prio && !ts)
		return TSN_PASS;

	__u32 slot = saver_slot, zero = 0;
	struct tsn_policy *pol = bpf_map_lookup_elem(&tsn_policies, &slot);
	struct tsn_cfg *cfg = bpf_map_lookup_elem(&tsn_config, &zero);
	if (!pol || !cfg || !pol->active)
		return TSN_PASS;

	/* A launch time is kept only in the clock the NIC schedules by: TCP's
	 * EDT stamps (mono) and CLOCK_REALTIME stamps are not launch times for it. */
	__u8 clock = TSN_CLK_NONE;
	if (ts) {
		clock = launch_clock(skb, pol);
		if (clock != cfg->nic_clock) {
			ts = 0;
			clock = TSN_CLK_NONE;
		}
	}
	if (!prio && !ts)
		return TSN_PASS;

	__u32 bucket = prio < 16 ? prio : 16;
	struct tsn_counters *c = counters(slot, bucket);
	if (!c)
		return TSN_PASS;

	__u32 granted = prio < 16 ? pol->grant[prio & 15] : TSN_DENY;
	if (granted == TSN_DENY) {
		if (pol->action == TSN_ACTION_DROP) {
			c->dropped++;
			return TSN_DROP;
		}
		granted = pol->demote_prio;
		c->demoted++;
	}
	if (!granted && !ts)
		return TSN_PASS; /* best effort is what the NIC sees anyway */

	struct tsn_key k;
	__u32 poff;
	if (tsn_fingerprint(skb, &k, 0, 0, 0, &poff) < 0) {
		c->missed++;
		return TSN_PASS;
	}

	__u64 now = bpf_ktime_get_ns();
	__u8 flags = (granted ? TSN_F_PRIO : 0) | (ts ? TSN_F_TSTAMP : 0);
	struct tsn_val *old = bpf_map_lookup_elem(&tsn_meta, &k);
	if (old) {
		if (now - old->saved_ns > cfg->ttl_ns) {
			forget(&k, old, 1);
		} else if (old->slot == slot && old->gen == pol->gen && old->prio == granted &&
			   old->tstamp == ts && old->flags == flags) {
			/* Same bytes, same metadata: one entry serves both packets. */
			__sync_fetch_and_add(&old->refs, 1);
			c->saved++;
			return TSN_PASS;
		} else {
			/* Same bytes, different metadata: neither can be told apart at the
			 * NIC. Poison the entry so neither is restored; a miss, not a wrong. */
			old->flags |= TSN_F_AMBIGUOUS;
			__sync_fetch_and_add(&old->refs, 1);
			c->missed++;
			return TSN_PASS;
		}
	}

	__u32 *n = bpf_map_lookup_elem(&tsn_inflight, &slot);
	if (!n) {
		c->missed++;
		return TSN_PASS;
	}
	if (__sync_fetch_and_add(n, 1) >= pol->quota) {
		__sync_fetch_and_add(n, -1);
		c->missed++;
		return TSN_PASS;
	}

	struct tsn_val v = {
		.tstamp = ts,
		.saved_ns = now,
		.slot = slot,
		.gen = pol->gen,
		.refs = 1,
		.prio = granted,
		.app_prio = bucket,
		.flags = flags,
		.clock = clock,
	};
	if (bpf_map_update_elem(&tsn_meta, &k, &v, BPF_NOEXIST) != 0) {
		/* Raced with another CPU on the same bytes, or the map is full. */
		__sync_fetch_and_add(n, -1);
		c->missed++;
		return TSN_PASS;
	}
	c->saved++;
	return TSN_PASS;
}

static __always_inline void restore_tstamp(struct __sk_buff *skb, struct tsn_val *v)
{
	if (skb->tstamp == v->tstamp)
		return; /* survived the path (>= 6.x keeps mono/TAI stamps) */
	if (have_clock_types) {
		if (bpf_skb_set_tstamp(skb, v->tstamp, v->clock) == 0)
			return;
		/* Not an IP skb->protocol: a plain write keeps the type bits, so use it
		 * only when they already say the right clock. */
		if (skb->tstamp_type == v->clock)
			skb->tstamp = v->tstamp;
		return;
	}
	if (v->clock == TSN_CLK_MONO) {
		bpf_skb_set_tstamp(skb, v->tstamp, BPF_SKB_TSTAMP_DELIVERY_MONO_);
		return;
	}
	if (skb->tstamp_type != BPF_SKB_TSTAMP_DELIVERY_MONO_)
		skb->tstamp = v->tstamp;
}

SEC("tc")
int tsn_restorer(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct tsn_cfg *cfg = bpf_map_lookup_elem(&tsn_config, &zero);
	if (!cfg)
		return TSN_PASS;

	struct tsn_key k;
	__u32 poff;
	if (tsn_fingerprint(skb, &k, 1, cfg->vxlan_port_a, cfg->vxlan_port_b, &poff) < 0)
		return TSN_PASS;
	struct tsn_val *v = bpf_map_lookup_elem(&tsn_meta, &k);
	if (!v)
		return TSN_PASS;

	__u32 slot = v->slot;
	struct tsn_policy *pol = bpf_map_lookup_elem(&tsn_policies, &slot);
	if (!pol || pol->gen != v->gen) {
		/* Left over from a pod that is gone. */
		bpf_map_delete_elem(&tsn_meta, &k);
		return TSN_PASS;
	}
	struct tsn_counters *c = counters(slot, v->app_prio);
	if (!c)
		return TSN_PASS;

	if (bpf_ktime_get_ns() - v->saved_ns > cfg->ttl_ns) {
		forget(&k, v, 1);
		return TSN_PASS;
	}
	if (v->flags & TSN_F_AMBIGUOUS) {
		c->rejected++;
	} else {
		if (v->flags & TSN_F_PRIO)
			skb->priority = v->prio;
		if (v->flags & TSN_F_TSTAMP)
			restore_tstamp(skb, v);
		c->restored++;
	}
	if (__sync_fetch_and_add(&v->refs, -1) <= 1)
		forget(&k, v, 0);
	return TSN_PASS;
}

/* Expiry: entries whose packet never reached the NIC (local destinations,
 * drops on the way) are removed once older than the TTL. */
struct gc_ctx {
	__u64 now;
	__u64 ttl;
};

static long gc_elem(void *map, struct tsn_key *k, struct tsn_val *v, struct gc_ctx *ctx)
{
	if (ctx->now - v->saved_ns > ctx->ttl)
		forget(k, v, 1);
	return 0;
}

static int gc_fire(void *map, __u32 *key, struct tsn_gc *gc)
{
	__u32 zero = 0;
	struct tsn_cfg *cfg = bpf_map_lookup_elem(&tsn_config, &zero);
	if (!cfg)
		return 0;
	struct gc_ctx ctx = { .now = bpf_ktime_get_ns(), .ttl = cfg->ttl_ns };
	bpf_for_each_map_elem(&tsn_meta, gc_elem, &ctx, 0);
	gc->runs++;
	gc->last_run_ns = ctx.now;
	bpf_timer_start(&gc->timer, cfg->gc_interval_ns, 0);
	return 0;
}

/* Run once by the loader (BPF_PROG_TEST_RUN) to start the GC timer. The timer
 * lives in a pinned map and keeps firing after the loader exits. */
SEC("tc")
int tsn_gc_arm(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct tsn_cfg *cfg = bpf_map_lookup_elem(&tsn_config, &zero);
	struct tsn_gc *gc = bpf_map_lookup_elem(&tsn_gc_timer, &zero);
	if (!cfg || !gc)
		return 1;
	long err = bpf_timer_init(&gc->timer, &tsn_gc_timer, 1 /* CLOCK_MONOTONIC */);
	if (err && err != -16 /* EBUSY: already armed by an earlier loader */)
		return 2;
	if (bpf_timer_set_callback(&gc->timer, gc_fire))
		return 3;
	if (bpf_timer_start(&gc->timer, cfg->gc_interval_ns, 0))
		return 4;
	return 0;
}

/* Feature probe, run with BPF_PROG_TEST_RUN on an IPv4 frame: 0 if the kernel
 * accepts BPF_SKB_CLOCK_TAI (>= 6.11). */
SEC("tc")
int tsn_probe_clock_tai(struct __sk_buff *skb)
{
	return bpf_skb_set_tstamp(skb, 1, TSN_CLK_TAI) == 0 ? 0 : 1;
}
