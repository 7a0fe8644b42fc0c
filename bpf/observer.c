//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Test-only observer: attached at the NIC's egress after the restorer. Test
 * packets carry in their payload the priority and launch time they should
 * leave with; the observer counts every such packet by what it actually
 * carries, so tests and the demo can check 100% of them.
 */
#include "fingerprint.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define OBS_MAGIC 0x5453504b /* "TSPK", big endian on the wire */

/* Payload layout, all big endian: magic, tag, seq, want_prio, want_tstamp (u64). */
struct obs_payload {
	__u32 magic;
	__u32 tag;
	__u32 seq;
	__u32 want_prio;
	__u64 want_tstamp;
};

#define OBS_TS_NONE 0     /* no launch time wanted */
#define OBS_TS_RIGHT 1    /* wanted and carried */
#define OBS_TS_MISSING 2  /* wanted, skb->tstamp is 0 */
#define OBS_TS_WRONG 3    /* wanted, another value */
#define OBS_TS_UNWANTED 4 /* none wanted, a value carried */

struct obs_key {
	__u32 tag;
	__u32 want_prio;
	__u32 got_prio;
	__u32 ts_state;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct obs_key);
	__type(value, __u64);
} obs_counts SEC(".maps");

volatile const __u16 obs_vxlan_port = 4789;

SEC("tc")
int tsn_observer(struct __sk_buff *skb)
{
	struct tsn_key k;
	struct tsn_pkt pkt = {};
	struct obs_payload p;

	if (tsn_fingerprint(skb, &k, 1, obs_vxlan_port, 0, &pkt) < 0)
		return TSN_PASS;
	if (bpf_skb_load_bytes(skb, pkt.payload_off, &p, sizeof(p)) < 0)
		return TSN_PASS;
	if (p.magic != bpf_htonl(OBS_MAGIC))
		return TSN_PASS;

	struct obs_key ok = {
		.tag = bpf_ntohl(p.tag),
		.want_prio = bpf_ntohl(p.want_prio),
		.got_prio = skb->priority,
	};
	__u64 want = bpf_be64_to_cpu(p.want_tstamp), got = skb->tstamp;
	if (!want)
		ok.ts_state = got ? OBS_TS_UNWANTED : OBS_TS_NONE;
	else if (got == want)
		ok.ts_state = OBS_TS_RIGHT;
	else
		ok.ts_state = got ? OBS_TS_WRONG : OBS_TS_MISSING;

	__u64 one = 1, *n = bpf_map_lookup_elem(&obs_counts, &ok);
	if (n)
		__sync_fetch_and_add(n, 1);
	else if (bpf_map_update_elem(&obs_counts, &ok, &one, BPF_NOEXIST) != 0) {
		n = bpf_map_lookup_elem(&obs_counts, &ok);
		if (n)
			__sync_fetch_and_add(n, 1);
	}
	return TSN_PASS;
}
