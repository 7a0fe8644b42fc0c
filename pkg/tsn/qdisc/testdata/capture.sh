#!/usr/bin/env bash
# Captures the RTM_NEWQDISC requests that iproute2's tc sends for the schedules in
# the encoding tests, as hex, into testdata/tc-<name>.hex. The kernel does not need
# to know the qdisc: tc sends the request before the kernel can refuse it.
# iproute2 6.1 (Debian 12) knows neither the H/R gate commands nor max-sdu: the
# tests check those against the UAPI layout instead, and the VM tests against a kernel.
# Needs root, tc, ip and strace. Usage: testdata/capture.sh (from pkg/tsn/qdisc).
set -euo pipefail
cd "$(dirname "$0")"
ns=qdisc-capture-$$-$RANDOM
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
ip -n "$ns" link add v0 numtxqueues 8 numrxqueues 8 type veth peer v1 numtxqueues 8 numrxqueues 8

capture() {
	local name=$1
	shift
	local out
	out=$(strace -f -e trace=sendmsg -xx -s 65536 ip netns exec "$ns" tc "$@" 2>&1 >/dev/null || true)
	# The request is the sendmsg whose netlink type is RTM_NEWQDISC (0x24); strace
	# prints the header decoded and the rest (tcmsg + attributes) as \x escapes.
	local body
	body=$(grep -F 'nlmsg_type=0x24' <<<"$out" | head -1 | sed -E 's/.*nlmsg_pid=0\}, "([^"]*)".*/\1/' | tr -d '\\x')
	if [[ -z $body ]]; then
		echo "no RTM_NEWQDISC request captured for $name" >&2
		echo "$out" >&2
		exit 1
	fi
	{
		echo "# tc $*"
		echo "$body"
	} >"tc-$name.hex"
	echo "captured tc-$name.hex"
}

capture taprio-basic qdisc replace dev v0 parent root handle 100: taprio num_tc 3 \
	map 2 2 1 0 2 2 2 2 2 2 2 2 2 2 2 2 queues 1@0 1@1 2@2 \
	base-time 1000000000 \
	sched-entry S 01 300000 sched-entry S 02 300000 sched-entry S 04 400000 \
	clockid CLOCK_TAI
capture taprio-full qdisc replace dev v0 parent root handle 9000: taprio num_tc 4 \
	map 3 3 2 1 0 3 3 3 3 3 3 3 3 3 3 3 queues 1@0 1@1 1@2 5@3 \
	base-time 1700000000123456789 \
	sched-entry S 01 250000 sched-entry S 02 250000 sched-entry S 0c 500000 \
	cycle-time 1000000 cycle-time-extension 20000 \
	flags 0x1 txtime-delay 200000 clockid CLOCK_TAI
capture taprio-offload qdisc replace dev v0 parent root handle 100: taprio num_tc 2 \
	map 1 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 queues 1@0 1@1 \
	base-time 0 sched-entry S 03 500000 sched-entry S 01 500000 flags 0x2
capture etf-basic qdisc replace dev v0 parent 100:1 etf clockid CLOCK_TAI delta 300000
capture etf-all qdisc replace dev v0 parent 100:2 handle 20: etf clockid CLOCK_TAI \
	delta 150000 deadline_mode offload skip_sock_check
capture mqprio-basic qdisc replace dev v0 parent root handle 200: mqprio num_tc 3 \
	map 2 2 1 0 2 2 2 2 2 2 2 2 2 2 2 2 queues 1@0 1@1 2@2 hw 0
capture mqprio-channel qdisc replace dev v0 parent root handle 200: mqprio num_tc 2 \
	map 1 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1 queues 2@0 2@2 hw 1 mode channel \
	shaper bw_rlimit min_rate 1Mbit 2Mbit max_rate 10Mbit 20Mbit
