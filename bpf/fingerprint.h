/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Packet fingerprint shared by the saver, the restorer and the test observer.
 *
 * The map that carries metadata from the pod's interface to the NIC is keyed by
 * the packet's content, not by the skb: a clone made by a flooding bridge or a
 * packet tap, a VXLAN-encapsulated copy and a NATed packet all keep the bytes
 * below, while skb pointers are reused by the slab allocator and skb->data
 * moves under encapsulation. Only fields that NAT, DNAT and encapsulation leave
 * alone are used: addresses, ports and checksums are not.
 */
#ifndef TSN_FINGERPRINT_H
#define TSN_FINGERPRINT_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* TCX_NEXT (tcx, >= 6.6) and TC_ACT_UNSPEC (cls_bpf direct-action) are both -1:
 * one return value passes the packet on to the next program on either hook. */
#define TSN_PASS (-1)
/* TCX_DROP == TC_ACT_SHOT. */
#define TSN_DROP 2

#define TSN_PAYLOAD 16

struct tsn_key {
	__u32 id;    /* IPv4 identification, or IPv6 flow label */
	__u16 l3len; /* IPv4 total length, or IPv6 payload length */
	__u8 family; /* 4 or 6 */
	__u8 proto;  /* L4 protocol */
	__u32 l4a;   /* TCP sequence; UDP length; ICMP type/code/sequence */
	__u32 l4b;   /* TCP acknowledgment */
	__u8 data[TSN_PAYLOAD]; /* first L4 payload bytes, zero padded */
};

#define VXLAN_HLEN 8

/* Where the fingerprinted packet's payload starts, and its source address
 * (not part of the key: SNAT rewrites it; the restorer checks it apart). */
struct tsn_pkt {
	__u32 payload_off;
	__u32 src[4];  /* IPv4 in src[0] */
	__u32 decapped; /* the key is the inner packet of a VXLAN packet */
};

static __always_inline int tsn_load_payload(struct __sk_buff *skb, __u32 off, struct tsn_key *k)
{
	/* The verifier wants a constant length: try the longest first. */
	if (bpf_skb_load_bytes(skb, off, k->data, 16) == 0)
		return 0;
	if (bpf_skb_load_bytes(skb, off, k->data, 8) == 0)
		return 0;
	if (bpf_skb_load_bytes(skb, off, k->data, 4) == 0)
		return 0;
	return 0; /* no payload: header fields alone */
}

/*
 * tsn_fingerprint fills k from the packet at skb offset 0 (an Ethernet frame).
 * With decap set, a UDP packet to one of the VXLAN ports is looked into once and
 * the inner packet fingerprinted (flannel/VXLAN overlays over the NIC). On
 * success pkt has where the L4 payload starts and the source address. Returns 0 on success,
 * -1 for packets that cannot be fingerprinted (not IP, fragments, truncated).
 */
/*
 * Fast path: an untagged IPv4 (no options) or IPv6 UDP packet whose headers and
 * first payload bytes are in the linear data, read with direct packet access
 * (no helper calls). Returns 1 if it filled k, 0 to take the general path.
 */
static __always_inline int tsn_fingerprint_fast(struct __sk_buff *skb, struct tsn_key *k, int decap,
						__u16 vxlan_port_a, __u16 vxlan_port_b, struct tsn_pkt *pkt)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);
		struct udphdr *uh = (void *)(iph + 1);
		__u8 *pl = (void *)(uh + 1);
		if ((void *)(pl + TSN_PAYLOAD) > end)
			return 0;
		if (iph->ihl != 5 || iph->protocol != IPPROTO_UDP || (iph->frag_off & bpf_htons(0x3fff)))
			return 0;
		if (decap && ((vxlan_port_a && uh->dest == bpf_htons(vxlan_port_a)) ||
			      (vxlan_port_b && uh->dest == bpf_htons(vxlan_port_b))))
			return 0;
		k->id = iph->id;
		k->l3len = iph->tot_len;
		k->family = 4;
		k->proto = IPPROTO_UDP;
		k->l4a = uh->len;
		k->l4b = 0;
		__builtin_memcpy(k->data, pl, TSN_PAYLOAD);
		pkt->payload_off = sizeof(*eth) + sizeof(*iph) + sizeof(*uh);
		pkt->src[0] = iph->saddr;
		pkt->src[1] = pkt->src[2] = pkt->src[3] = 0;
		return 1;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		struct udphdr *uh = (void *)(ip6 + 1);
		__u8 *pl = (void *)(uh + 1);
		if ((void *)(pl + TSN_PAYLOAD) > end)
			return 0;
		if (ip6->nexthdr != IPPROTO_UDP)
			return 0;
		if (decap && ((vxlan_port_a && uh->dest == bpf_htons(vxlan_port_a)) ||
			      (vxlan_port_b && uh->dest == bpf_htons(vxlan_port_b))))
			return 0;
		k->id = bpf_ntohl(*(__u32 *)ip6) & 0x000fffff;
		k->l3len = ip6->payload_len;
		k->family = 6;
		k->proto = IPPROTO_UDP;
		k->l4a = uh->len;
		k->l4b = 0;
		__builtin_memcpy(k->data, pl, TSN_PAYLOAD);
		pkt->payload_off = sizeof(*eth) + sizeof(*ip6) + sizeof(*uh);
		__builtin_memcpy(pkt->src, &ip6->saddr, 16);
		return 1;
	}
	return 0;
}

static __always_inline int tsn_fingerprint(struct __sk_buff *skb, struct tsn_key *k, int decap,
					   __u16 vxlan_port_a, __u16 vxlan_port_b, struct tsn_pkt *pkt)
{
	pkt->decapped = 0;
	if (tsn_fingerprint_fast(skb, k, decap, vxlan_port_a, vxlan_port_b, pkt))
		return 0;

	__u32 off = 0;
	__u16 proto;
	struct ethhdr eth;
	int layer;

	for (layer = 0; layer < 2; layer++) {
		__builtin_memset(k, 0, sizeof(*k));
		if (bpf_skb_load_bytes(skb, off, &eth, sizeof(eth)) < 0)
			return -1;
		off += sizeof(eth);
		proto = eth.h_proto;
		if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
			__u16 inner[2];
			if (bpf_skb_load_bytes(skb, off, inner, sizeof(inner)) < 0)
				return -1;
			proto = inner[1];
			off += 4;
		}

		__u32 l4off;
		if (proto == bpf_htons(ETH_P_IP)) {
			struct iphdr iph;
			if (bpf_skb_load_bytes(skb, off, &iph, sizeof(iph)) < 0)
				return -1;
			if (iph.ihl < 5)
				return -1;
			/* Fragments carry no (or a partial) L4 header. */
			if (iph.frag_off & bpf_htons(0x3fff))
				return -1;
			k->family = 4;
			k->proto = iph.protocol;
			k->id = iph.id;
			k->l3len = iph.tot_len;
			pkt->src[0] = iph.saddr;
			pkt->src[1] = pkt->src[2] = pkt->src[3] = 0;
			l4off = off + iph.ihl * 4;
		} else if (proto == bpf_htons(ETH_P_IPV6)) {
			struct ipv6hdr ip6;
			if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
				return -1;
			k->family = 6;
			k->proto = ip6.nexthdr;
			__builtin_memcpy(pkt->src, &ip6.saddr, 16);
			k->id = bpf_ntohl(*(__u32 *)&ip6) & 0x000fffff;
			k->l3len = ip6.payload_len;
			l4off = off + sizeof(ip6);
		} else {
			return -1;
		}

		if (k->proto == IPPROTO_UDP) {
			struct udphdr uh;
			if (bpf_skb_load_bytes(skb, l4off, &uh, sizeof(uh)) < 0)
				return -1;
			if (decap && layer == 0 &&
			    ((vxlan_port_a && uh.dest == bpf_htons(vxlan_port_a)) ||
			     (vxlan_port_b && uh.dest == bpf_htons(vxlan_port_b)))) {
				off = l4off + sizeof(uh) + VXLAN_HLEN;
				pkt->decapped = 1;
				continue;
			}
			k->l4a = uh.len;
			pkt->payload_off = l4off + sizeof(uh);
		} else if (k->proto == IPPROTO_TCP) {
			struct tcphdr th;
			if (bpf_skb_load_bytes(skb, l4off, &th, sizeof(th)) < 0)
				return -1;
			k->l4a = th.seq;
			k->l4b = th.ack_seq;
			pkt->payload_off = l4off + th.doff * 4;
		} else if (k->proto == IPPROTO_ICMP || k->proto == IPPROTO_ICMPV6) {
			__u32 h[2];
			if (bpf_skb_load_bytes(skb, l4off, h, sizeof(h)) < 0)
				return -1;
			/* type and code, and the echo sequence; the echo id is a NAT port. */
			k->l4a = (h[0] & bpf_htonl(0xffff0000)) | (h[1] & bpf_htonl(0x0000ffff));
			pkt->payload_off = l4off + sizeof(h);
		} else {
			pkt->payload_off = l4off;
		}
		return tsn_load_payload(skb, pkt->payload_off, k);
	}
	return -1;
}

#endif
