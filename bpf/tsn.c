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

#define TSN_ACTION_DEMOTE 0
#define TSN_ACTION_DROP 1

/* Entry states, in the low two bits of tsn_entry.state, a poison bit, and
 * a sequence number bumped on every claim and poisoning, so a compare-and-swap on the state
 * word fails if the entry changed hands (or metadata) since it was read. */
#define ST_FREE 0
#define ST_WRITING 1
#define ST_READY 2
#define ST_MASK 3
#define ST_AMBIGUOUS 4 /* poisoned: same bytes seen with other metadata */
#define SEQ_ONE 8
#define SEQ_MASK (~7u)

/* Consecutive packets of a flow cycle through this many buckets (see bucket_of):
 * 64 buckets of 4 ways hold a default quota (256) of one flow's packets, and
 * their 4 KiB of headers and 16 KiB of ways stay in the CPU's cache. */
#define FLOW_WINDOW_MASK 63

/* Entries per bucket. */
#define WAYS 4
/* A pod takes at most this many ways of its home bucket; its further packets
 * go to their second bucket. Flows of the same shape (length, protocol) share
 * home buckets (see bucket_of), so without the cap one pod at its quota could
 * fill every home bucket of the window and push another pod's packets into
 * second buckets, where a few find no room. */
#define HOME_SHARE 2

/* Set by the loader before load; constant for the verifier and the JIT. */
volatile const __u8 have_clock_types = 0; /* __sk_buff->tstamp_type says TAI/MONO (>= 6.11) */
volatile const __u32 saver_slot = 0;      /* the pod slot this saver instance serves */
volatile const __u32 ttl_units = 954;     /* entry lifetime in units of 2^20 ns (~1.05 ms) */
volatile const __u64 gc_interval_ns = 250000000;
volatile const __u16 vxlan_port_a = 4789;
volatile const __u16 vxlan_port_b = 8472;
volatile const __u8 nic_clock = TSN_CLK_TAI; /* the clock the NIC's qdiscs read launch times in */
volatile const __u32 bucket_mask = 8191;  /* buckets - 1 (a power of two) */

/* One saved packet: one cache line, at index bucket * WAYS + way of
 * tsn_ways. Its state word lives in the bucket header. */
struct tsn_way {
	struct tsn_key key;
	__u64 tstamp;   /* launch time; 0 if none saved */
	__u32 saved;    /* coarse clock >> 20 at save, for expiry */
	__u16 slot;
	__u16 gen;      /* the slot's generation when saved: a later pod in the slot never sees it */
	__u8 prio;      /* granted priority */
	__u8 app_prio;  /* counter bucket: the priority the application asked for */
	__u8 clock;     /* TSN_CLK_* of tstamp */
	__u8 flags;
	__u32 refs;     /* packets in flight with these bytes and this metadata */
	__u32 src;      /* hash of the source address at the pod */
	__u32 home;     /* 0, or 1 + the bucket it overflowed from */
};

/* A bucket's header: one cache line, in its own compact array, so a packet
 * without an entry (host traffic at the NIC) reads only this. */
struct tsn_bucket {
	__u32 state[WAYS]; /* per way: sequence | poison | state */
	__u32 tag[WAYS];   /* per way: hash of the key, to skip other packets' lines */
	__u32 overflow;    /* live entries of this bucket that sit in their second bucket */
	__u16 owner[WAYS]; /* per way: the slot that saved it (valid while the way is not free) */
	__u32 pad[5];
};

struct tsn_policy {
	__u8 grant[16]; /* application priority -> granted priority, TSN_DENY if not allowed */
	__u8 action;    /* TSN_ACTION_* for denied priorities */
	__u8 demote_prio;
	__u8 unspec_clock; /* clock of launch times when the kernel does not say (< 6.11) */
	__u8 active;
	__u32 quota;    /* at most this many entries for the slot */
};

/* Written by the loader only when a pod takes or leaves the slot. */
struct tsn_slot {
	__u32 gen;
	__u32 inflight; /* entries the slot holds now */
};

struct tsn_counters {
	__u64 saved;
	__u64 restored;
	__u64 missed;    /* metadata not saved; why: tsn_miss_reasons */
	__u64 demoted;
	__u64 dropped;
	__u64 rejected;  /* fingerprint ambiguous: two in-flight packets, same bytes, different metadata */
	__u64 expired;   /* saved, never reached the NIC before the TTL */
};

/*
 * Why the saver missed a packet's metadata: indexes of tsn_misses.by_reason,
 * one of them counted with every tsn_counters.missed. They are part of the
 * pinned layout (datapath.MissReason in Go): add, never renumber.
 */
#define TSN_MISS_QUOTA 0          /* the pod holds its quota of entries */
#define TSN_MISS_TABLE_FULL 1     /* every way of both buckets held by live entries */
#define TSN_MISS_NO_FINGERPRINT 2 /* an IP fragment, not IP, or truncated */
#define TSN_MISS_AMBIGUOUS 3      /* same bytes in flight with other metadata: poisoned */
#define TSN_MISS_RACE 4           /* another CPU took the free way first */
#define TSN_MISS_INTERNAL 5       /* a map lookup that cannot fail did */
/* Room for later reasons: a new one must not change the pinned map's value size. */
#define TSN_MISS_REASONS 8

/* Per slot and application priority, at the same index as tsn_stats. A map
 * of its own, so that tsn_counters (pinned, adopted by upgraded drivers)
 * keeps its layout. */
struct tsn_misses {
	__u64 by_reason[TSN_MISS_REASONS];
};

struct tsn_gc {
	struct bpf_timer timer;
	__u64 runs;
	__u64 last_run_ns;
	__u64 expired;
};

/* Sizes are placeholders: the loader sets max_entries from its options. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct tsn_bucket);
} tsn_table SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8192 * WAYS);
	__type(key, __u32);
	__type(value, struct tsn_way);
} tsn_ways SEC(".maps");

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
	__type(value, struct tsn_slot);
} tsn_slots SEC(".maps");

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
	__type(value, struct tsn_gc);
} tsn_gc_timer SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 64 * TSN_PRIO_BUCKETS);
	__type(key, __u32);
	__type(value, struct tsn_misses);
} tsn_miss_reasons SEC(".maps");

static __always_inline struct tsn_counters *counters(__u32 slot, __u32 bucket)
{
	__u32 idx = slot * TSN_PRIO_BUCKETS + bucket;
	return bpf_map_lookup_elem(&tsn_stats, &idx);
}

/*
 * Counts a miss's reason. A global function: the verifier checks it once on
 * its own instead of on every path of the saver that ends in a miss (6.1's
 * verifier already walks the saver's paths close to its limit; see
 * TestVerifierHeadroom). Only misses pay for the call and the lookup.
 */
__noinline int tsn_count_miss(__u32 idx, __u32 reason)
{
	struct tsn_misses *m = bpf_map_lookup_elem(&tsn_miss_reasons, &idx);
	if (m)
		m->by_reason[reason & (TSN_MISS_REASONS - 1)]++;
	return 0;
}

/* The saver's every miss: counted missed, and why. */
static __always_inline int miss(struct tsn_counters *c, __u32 slot, __u32 bucket, __u32 reason)
{
	c->missed++;
	tsn_count_miss(slot * TSN_PRIO_BUCKETS + bucket, reason);
	return TSN_PASS;
}

static __always_inline __u32 now_units(void)
{
	return (__u32)(bpf_ktime_get_coarse_ns() >> 20);
}

/*
 * The age is signed: whoever reads the clock first may meet an entry saved
 * after that (an expiry sweep takes a while; a saver on another CPU read the
 * clock a tick later). Such an entry is younger than "now", not 2^32 units
 * old. (An entry would look young again only after 2^31 units, ~26 days,
 * with no expiry run at all in between.)
 */
static __always_inline int expired(struct tsn_way *e, __u32 now)
{
	return (__s32)(now - e->saved) > (__s32)ttl_units;
}

_Static_assert(sizeof(struct tsn_key) == 32, "tsn_key is 8 words");
_Static_assert(sizeof(struct tsn_way) == 64, "a way is one cache line");
_Static_assert(sizeof(struct tsn_bucket) == 64, "bucket header: one cache line");

static __always_inline struct tsn_way *way_of(__u32 bucket, int way)
{
	__u32 i = bucket * WAYS + (way & (WAYS - 1));
	return bpf_map_lookup_elem(&tsn_ways, &i);
}

static __always_inline __u32 key_hash(const struct tsn_key *k)
{
	const __u32 *w = (const __u32 *)k;
	__u32 h = 0x811c9dc5;
	/* FNV-1a over the 8 words of the key. */
	h = (h ^ w[0]) * 0x01000193;
	h = (h ^ w[1]) * 0x01000193;
	h = (h ^ w[2]) * 0x01000193;
	h = (h ^ w[3]) * 0x01000193;
	h = (h ^ w[4]) * 0x01000193;
	h = (h ^ w[5]) * 0x01000193;
	h = (h ^ w[6]) * 0x01000193;
	h = (h ^ w[7]) * 0x01000193;
	/* murmur3's finalizer: FNV's multiplications only carry upwards, so
	 * without it the low bits (the bucket) ignore most of the key. */
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	return h ^ (h >> 16);
}

/*
 * The bucket of a key. For IPv4 it is a hash of what stays the same along a
 * flow (protocol, lengths) plus the IP ID, which the kernel advances by one per
 * packet: consecutive packets of a flow land in consecutive buckets of a small
 * window, so the saver and the restorer touch memory that is already in cache
 * and TLB instead of a random line of a multi-megabyte table. (Walking the whole
 * table instead, the saver cost ~100 ns more per packet: a cache miss or two on
 * every packet.) Other packets use the full hash.
 */
static __always_inline __u32 bucket_of(const struct tsn_key *k, __u32 h)
{
	if (k->family == 4) {
		__u32 flow = (((__u32)k->proto << 24) | k->l3len) * 0x9e3779b1u;
		if (k->proto == IPPROTO_UDP)
			flow ^= k->l4a * 0x85ebca77u;
		flow ^= flow >> 15;
		return (flow + (bpf_ntohs((__u16)k->id) & FLOW_WINDOW_MASK)) & bucket_mask;
	}
	return h & bucket_mask;
}

static __always_inline __u32 src_hash(const struct tsn_pkt *p)
{
	return (p->src[0] * 0x9e3779b1u) ^ (p->src[1] * 0x85ebca77u) ^ (p->src[2] * 0xc2b2ae3du) ^
	       (p->src[3] * 0x27d4eb2fu);
}

/* Is the packet's source address one of the node's (a masqueraded pod packet)? */
static __always_inline int src_is_local(struct __sk_buff *skb, const struct tsn_key *k, const struct tsn_pkt *p)
{
	struct bpf_fib_lookup fib = {};
	fib.ifindex = skb->ifindex;
	if (k->family == 4) {
		fib.family = 2; /* AF_INET */
		fib.ipv4_dst = p->src[0];
	} else {
		fib.family = 10; /* AF_INET6 */
		__builtin_memcpy(fib.ipv6_dst, p->src, 16);
	}
	return bpf_fib_lookup(skb, &fib, sizeof(fib), 0) == BPF_FIB_LKUP_RET_NOT_FWDED;
}

static __always_inline int key_eq(const struct tsn_key *a, const struct tsn_key *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;
	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4]) |
		(x[5] ^ y[5]) | (x[6] ^ y[6]) | (x[7] ^ y[7])) == 0;
}

/* The entry's slot generation still current: gives its quota back, counts the
 * expiry. Called by whoever freed the entry (only one can). */
static __always_inline void account_free(__u16 slot, __u16 gen, __u8 bucket, int is_expiry)
{
	__u32 s = slot;
	struct tsn_slot *st = bpf_map_lookup_elem(&tsn_slots, &s);
	if (!st || (__u16)st->gen != gen)
		return; /* the slot was released (and its quota reset) since */
	if (st->inflight > 0)
		__sync_fetch_and_add(&st->inflight, -1);
	if (is_expiry) {
		struct tsn_counters *c = counters(s, bucket);
		if (c)
			c->expired++;
	}
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

/* An entry leaves an overflow bucket: its home bucket stops looking there. */
static __always_inline void unhome(__u32 home)
{
	if (!home)
		return;
	__u32 bi = home - 1;
	struct tsn_bucket *b = bpf_map_lookup_elem(&tsn_table, &bi);
	if (b && b->overflow > 0)
		__sync_fetch_and_add(&b->overflow, -1);
}

/* What the saver knows about the packet it is saving. */
struct save {
	struct tsn_key k;
	__u32 h, src, now;
	__u64 ts;
	__u32 slot;
	__u16 gen;
	__u8 granted, bucket, clock, flags;
};

#define SCAN_NONE 0    /* no entry with these bytes */
#define SCAN_SHARED 1  /* same bytes, same metadata: counted on the entry */
#define SCAN_POISON 2  /* same bytes, other metadata: poisoned */

/* Looks for the same bytes in bucket bi; remembers its first free way. */
static __always_inline int scan_bucket(struct tsn_bucket *b, __u32 bi, struct save *sv, int *cand, __u32 *cand_s)
{
	int way;
	for (way = 0; way < WAYS; way++) {
		__u32 s = b->state[way];
		if ((s & ST_MASK) == ST_FREE) {
			if (*cand < 0) {
				*cand = way;
				*cand_s = s;
			}
			continue;
		}
		if ((s & ST_MASK) != ST_READY || b->tag[way] != sv->h)
			continue;
		struct tsn_way *e = way_of(bi, way);
		if (!e || expired(e, sv->now) || !key_eq(&e->key, &sv->k))
			continue;
		if (e->src != sv->src)
			continue; /* another sender's packet: the restorer tells them apart */
		if (e->slot == sv->slot && e->gen == sv->gen && e->prio == sv->granted && e->tstamp == sv->ts &&
		    e->flags == sv->flags) {
			/* Same metadata: one entry serves both packets. */
			__sync_fetch_and_add(&e->refs, 1);
			return SCAN_SHARED;
		}
		/* Same bytes, other metadata: the NIC cannot tell the packets apart.
		 * Poison the entry (and bump its sequence, so a restorer that read it
		 * before fails its claim): a miss, never a wrong restore. */
		__sync_fetch_and_or(&b->state[way & (WAYS - 1)], ST_AMBIGUOUS);
		__sync_fetch_and_add(&b->state[way & (WAYS - 1)], SEQ_ONE);
		return SCAN_POISON;
	}
	return SCAN_NONE;
}

/* How many ways of bucket b hold (or are being written with) entries of slot.
 * Without branches: each one doubles the states the verifier walks through
 * the rest of the saver, and 6.1's verifier gives up at a million. */
static __always_inline __u32 owned_ways(struct tsn_bucket *b, __u32 slot)
{
	__u32 n = 0;
	int way;
	for (way = 0; way < WAYS; way++) {
		__u32 used = ((b->state[way] & ST_MASK) + ST_MASK) >> 2;    /* 1 unless free */
		__u32 mine = (((__u32)b->owner[way] ^ (slot & 0xffff)) - 1) >> 31; /* 1 if equal */
		n += used & mine;
	}
	return n;
}

/* Takes an expired way of bucket b if there is one. */
static __always_inline void expired_way(struct tsn_bucket *b, __u32 bi, __u32 now, int *cand, __u32 *cand_s)
{
	int way;
	for (way = 0; way < WAYS; way++) {
		__u32 s = b->state[way];
		struct tsn_way *e = way_of(bi, way);
		if ((s & ST_MASK) == ST_READY && e && expired(e, now)) {
			*cand = way;
			*cand_s = s;
			return;
		}
	}
}

SEC("tc")
int tsn_saver(struct __sk_buff *skb)
{
	__u32 prio = skb->priority;
	__u64 ts = skb->tstamp;

	/* Skip path: nothing the application set. */
	if (!prio && !ts)
		return TSN_PASS;

	__u32 slot = saver_slot;
	struct tsn_policy *pol = bpf_map_lookup_elem(&tsn_policies, &slot);
	if (!pol || !pol->active)
		return TSN_PASS;

	/* A launch time is kept only in the clock the NIC schedules by: TCP's
	 * EDT stamps (mono) and CLOCK_REALTIME stamps are not launch times for it. */
	__u8 clock = TSN_CLK_NONE;
	if (ts) {
		clock = launch_clock(skb, pol);
		if (clock != nic_clock) {
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

	struct save sv;
	struct tsn_pkt pkt;
	if (tsn_fingerprint(skb, &sv.k, 0, 0, 0, &pkt) < 0)
		return miss(c, slot, bucket, TSN_MISS_NO_FINGERPRINT);
	struct tsn_slot *st = bpf_map_lookup_elem(&tsn_slots, &slot);
	if (!st)
		return miss(c, slot, bucket, TSN_MISS_INTERNAL);
	sv.h = key_hash(&sv.k);
	sv.src = src_hash(&pkt);
	sv.now = now_units();
	sv.ts = ts;
	sv.slot = slot;
	sv.gen = st->gen;
	sv.granted = granted;
	sv.bucket = bucket;
	sv.clock = clock;
	sv.flags = (granted ? TSN_F_PRIO : 0) | (ts ? TSN_F_TSTAMP : 0);

	/* Home bucket: flow-local (see bucket_of). Second bucket: the full hash,
	 * used when the home bucket is full (e.g. a sender whose IP ID is fixed). */
	__u32 b1i = bucket_of(&sv.k, sv.h), b2i = sv.h & bucket_mask;
	if (b2i == b1i)
		b2i ^= 1;
	struct tsn_bucket *b1 = bpf_map_lookup_elem(&tsn_table, &b1i);
	struct tsn_bucket *b2 = bpf_map_lookup_elem(&tsn_table, &b2i);
	if (!b1 || !b2)
		return TSN_PASS;
	int cand1 = -1, cand2 = -1, r;
	__u32 cand1_s = 0, cand2_s = 0;
	r = scan_bucket(b1, b1i, &sv, &cand1, &cand1_s);
	/* (An expired way of the home bucket may still be taken below.) */
	if (owned_ways(b1, slot) >= HOME_SHARE)
		cand1 = -1;
	if (r == SCAN_NONE && (b1->overflow || cand1 < 0))
		r = scan_bucket(b2, b2i, &sv, &cand2, &cand2_s);
	if (r == SCAN_SHARED) {
		c->saved++;
		return TSN_PASS;
	}
	if (r == SCAN_POISON)
		return miss(c, slot, bucket, TSN_MISS_AMBIGUOUS);

	struct tsn_bucket *b = b1;
	__u32 bi = b1i, cand_s = cand1_s, home = 0;
	int cand = cand1;
	if (cand < 0) {
		expired_way(b1, b1i, sv.now, &cand, &cand_s);
		if (cand < 0) {
			b = b2;
			bi = b2i;
			cand = cand2;
			cand_s = cand2_s;
			home = b1i + 1;
			if (cand < 0)
				expired_way(b2, b2i, sv.now, &cand, &cand_s);
		}
	}
	if (cand < 0) /* Every way of both buckets held by other live packets. */
		return miss(c, slot, bucket, TSN_MISS_TABLE_FULL);
	if (__sync_fetch_and_add(&st->inflight, 1) >= pol->quota) {
		__sync_fetch_and_add(&st->inflight, -1);
		return miss(c, slot, bucket, TSN_MISS_QUOTA);
	}
	cand &= WAYS - 1;
	__u32 mine = ((cand_s & SEQ_MASK) + SEQ_ONE) | ST_WRITING;
	if (__sync_val_compare_and_swap(&b->state[cand], cand_s, mine) != cand_s) {
		/* Another CPU took the way first. */
		__sync_fetch_and_add(&st->inflight, -1);
		return miss(c, slot, bucket, TSN_MISS_RACE);
	}
	b->owner[cand] = slot;
	struct tsn_way *e = way_of(bi, cand);
	if (!e) {
		__sync_val_compare_and_swap(&b->state[cand], mine, cand_s);
		__sync_fetch_and_add(&st->inflight, -1);
		return TSN_PASS;
	}
	if ((cand_s & ST_MASK) == ST_READY) {
		/* Reclaimed an expired entry. */
		account_free(e->slot, e->gen, e->app_prio, 1);
		unhome(e->home);
	}
	if (home)
		__sync_fetch_and_add(&b1->overflow, 1);
	e->key = sv.k;
	e->tstamp = ts;
	e->saved = sv.now;
	e->slot = slot;
	e->gen = sv.gen;
	e->prio = granted;
	e->app_prio = bucket;
	e->clock = clock;
	e->flags = sv.flags;
	e->refs = 1;
	e->src = sv.src;
	e->home = home;
	b->tag[cand] = sv.h;
	/* Publish: the fields above are visible before the state says READY. */
	__sync_lock_test_and_set(&b->state[cand], (mine & SEQ_MASK) | ST_READY);
	c->saved++;
	return TSN_PASS;
}

static __always_inline void restore_tstamp(struct __sk_buff *skb, __u64 tstamp, __u8 clock)
{
	if (skb->tstamp == tstamp)
		return; /* survived the path (6.18 keeps mono/TAI stamps) */
	if (have_clock_types) {
		if (bpf_skb_set_tstamp(skb, tstamp, clock) == 0)
			return;
		/* Not an IP skb->protocol: a plain write keeps the type bits, so use it
		 * only when they already say the right clock. */
		if (skb->tstamp_type == clock)
			skb->tstamp = tstamp;
		return;
	}
	if (clock == TSN_CLK_MONO) {
		bpf_skb_set_tstamp(skb, tstamp, BPF_SKB_TSTAMP_DELIVERY_MONO_);
		return;
	}
	if (skb->tstamp_type != BPF_SKB_TSTAMP_DELIVERY_MONO_)
		skb->tstamp = tstamp;
}

#define FIND_NONE 0
#define FIND_DONE 1

/* Looks for the packet's entry in bucket bi and, if found, restores from it. */
static __always_inline int restore_from(struct __sk_buff *skb, struct tsn_bucket *b, __u32 bi, struct tsn_key *k,
					__u32 h, __u32 src, struct tsn_pkt *pkt, int *src_checked)
{
	int way;
	for (way = 0; way < WAYS; way++) {
		__u32 s = b->state[way];
		if ((s & ST_MASK) != ST_READY || b->tag[way] != h)
			continue;
		struct tsn_way *e = way_of(bi, way);
		if (!e || !key_eq(&e->key, k))
			continue;
		/* Another sender's packet with the same bytes is not this entry's.
		 * Only SNAT (masquerade on the NIC) may have changed the source, and
		 * then it is one of the node's own addresses. */
		if (e->src != src) {
			if (pkt->decapped)
				continue;
			if (!*src_checked)
				*src_checked = src_is_local(skb, k, pkt) ? 1 : -1;
			if (*src_checked < 0)
				continue;
		}

		/* Read everything, then claim: a claim that succeeds proves the
		 * entry did not change hands or get poisoned since. */
		__u32 *state = &b->state[way & (WAYS - 1)];
		__u64 tstamp = e->tstamp;
		__u16 slot = e->slot, gen = e->gen;
		__u8 prio = e->prio, bucket = e->app_prio, clock = e->clock, flags = e->flags;
		__u32 home = e->home;
		__u32 freed = ((s & SEQ_MASK) + SEQ_ONE) | ST_FREE;

		__u32 sl = slot;
		struct tsn_slot *st = bpf_map_lookup_elem(&tsn_slots, &sl);
		if (!st || (__u16)st->gen != gen) {
			/* Left over from a pod that is gone. */
			if (__sync_val_compare_and_swap(state, s, freed) == s)
				unhome(home);
			return FIND_DONE;
		}
		/* No expiry check here: key and source prove it is this packet's
		 * entry, however late it comes (the expiry sweep may free it first). */
		struct tsn_counters *c = counters(slot, bucket);
		if (!c)
			return FIND_DONE;
		if (__sync_fetch_and_add(&e->refs, -1) <= 1) {
			if (__sync_val_compare_and_swap(state, s, freed) != s) {
				c->rejected++;
				return FIND_DONE;
			}
			if (st->inflight > 0)
				__sync_fetch_and_add(&st->inflight, -1);
			unhome(home);
		} else if (*state != s) {
			c->rejected++;
			return FIND_DONE;
		}
		if (s & ST_AMBIGUOUS) {
			c->rejected++;
			return FIND_DONE;
		}
		if (flags & TSN_F_PRIO)
			skb->priority = prio;
		if (flags & TSN_F_TSTAMP)
			restore_tstamp(skb, tstamp, clock);
		c->restored++;
		return FIND_DONE;
	}
	return FIND_NONE;
}

SEC("tc")
int tsn_restorer(struct __sk_buff *skb)
{
	struct tsn_key k;
	struct tsn_pkt pkt;
	if (tsn_fingerprint(skb, &k, 1, vxlan_port_a, vxlan_port_b, &pkt) < 0)
		return TSN_PASS;
	/* Only packets the node forwarded: locally originated ones (host
	 * processes) never carry a pod's metadata, even with identical bytes.
	 * (Encapsulation clears the ingress interface: VXLAN packets rely on
	 * the source check, without the SNAT allowance.) */
	if (!pkt.decapped && skb->ingress_ifindex == 0)
		return TSN_PASS;

	__u32 h = key_hash(&k), src = src_hash(&pkt);
	int src_checked = 0;
	__u32 b1i = bucket_of(&k, h);
	struct tsn_bucket *b1 = bpf_map_lookup_elem(&tsn_table, &b1i);
	if (!b1)
		return TSN_PASS;
	if (restore_from(skb, b1, b1i, &k, h, src, &pkt, &src_checked) == FIND_DONE || !b1->overflow)
		return TSN_PASS;
	__u32 b2i = h & bucket_mask;
	if (b2i == b1i)
		b2i ^= 1;
	struct tsn_bucket *b2 = bpf_map_lookup_elem(&tsn_table, &b2i);
	if (b2)
		restore_from(skb, b2, b2i, &k, h, src, &pkt, &src_checked);
	return TSN_PASS;
}

/* Expiry: entries whose packet never reached the NIC (local destinations,
 * drops on the way) and entries of released slots are freed. */
struct gc_ctx {
	__u32 now;
	__u32 freed;
};

static long gc_elem(void *map, __u32 *key, struct tsn_bucket *b, struct gc_ctx *ctx)
{
	int way;
	for (way = 0; way < WAYS; way++) {
		__u32 s = b->state[way];
		if ((s & ST_MASK) != ST_READY)
			continue;
		struct tsn_way *e = way_of(*key, way);
		if (!e)
			continue;
		__u32 sl = e->slot;
		struct tsn_slot *st = bpf_map_lookup_elem(&tsn_slots, &sl);
		int stale = !st || (__u16)st->gen != e->gen;
		if (!stale && !expired(e, ctx->now))
			continue;
		__u16 slot = e->slot, gen = e->gen;
		__u8 bucket = e->app_prio;
		__u32 home = e->home;
		if (__sync_val_compare_and_swap(&b->state[way & (WAYS - 1)], s, ((s & SEQ_MASK) + SEQ_ONE) | ST_FREE) == s) {
			ctx->freed++;
			unhome(home);
			if (!stale)
				account_free(slot, gen, bucket, 1);
		}
	}
	return 0;
}

static int gc_fire(void *map, __u32 *key, struct tsn_gc *gc)
{
	struct gc_ctx ctx = { .now = now_units() };
	bpf_for_each_map_elem(&tsn_table, gc_elem, &ctx, 0);
	gc->runs++;
	gc->expired += ctx.freed;
	gc->last_run_ns = bpf_ktime_get_ns();
	bpf_timer_start(&gc->timer, gc_interval_ns, 0);
	return 0;
}

/* Expiry without bpf_timer, which PREEMPT_RT kernels refuse: the loader runs
 * this every GC interval with BPF_PROG_TEST_RUN. Returns how many it freed. */
SEC("tc")
int tsn_gc_sweep(struct __sk_buff *skb)
{
	struct gc_ctx ctx = { .now = now_units() };
	bpf_for_each_map_elem(&tsn_table, gc_elem, &ctx, 0);
	return ctx.freed;
}

/* Run once by the loader (BPF_PROG_TEST_RUN) to start the GC timer, or to
 * switch it to this loader's program. The timer lives in a pinned map and
 * keeps firing after the loader exits. */
SEC("tc")
int tsn_gc_arm(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct tsn_gc *gc = bpf_map_lookup_elem(&tsn_gc_timer, &zero);
	if (!gc)
		return 1;
	long err = bpf_timer_init(&gc->timer, &tsn_gc_timer, 1 /* CLOCK_MONOTONIC */);
	if (err && err != -16 /* EBUSY: already armed by an earlier loader */)
		return 2;
	if (bpf_timer_set_callback(&gc->timer, gc_fire))
		return 3;
	if (bpf_timer_start(&gc->timer, gc_interval_ns, 0))
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
