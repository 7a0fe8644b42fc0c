// Package qdisc holds kernel-level models of the TSN queueing disciplines the
// driver puts on a NIC (taprio, etf, mqprio), encodes them to rtnetlink, decodes
// a dump back into the same models, and applies them as a transaction that puts
// the NIC's previous root qdisc back when anything fails.
//
// vishvananda/netlink knows none of these three qdiscs, so the messages are built
// with its nl package; the byte layout follows include/uapi/linux/pkt_sched.h and
// is checked against what iproute2's tc sends (testdata/capture.sh).
//
// Times are integers in the units the kernel uses: nanoseconds on the qdisc's
// clock (CLOCK_TAI for TSN), so that a decoded model compares exactly with the
// one that was applied. Where the kernel reports something else than what was
// asked for (6.12's max-SDU limits, lowered to the gate windows), the comparison
// knows what the kernel does.
package qdisc
