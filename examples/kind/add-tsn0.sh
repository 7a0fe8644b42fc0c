#!/usr/bin/env bash
# Gives every node of a kind cluster an emulated TSN NIC: tsn0, a veth with 8 tx
# queues, whose peer wire0 sits in a "wire" network namespace of the node with
# 192.0.2.2/24 (where examples send). Needs Docker and kind; not run by the
# project's tests (no Docker engine on the test machines).
set -euo pipefail
cluster=${1:-tsn-dra}
for node in $(kind get nodes --name "$cluster"); do
	docker exec "$node" sh -euc '
		ip link show tsn0 >/dev/null 2>&1 && exit 0
		ip netns add wire
		ip link add tsn0 numtxqueues 8 numrxqueues 8 type veth peer wire0 numtxqueues 8 numrxqueues 8
		ip link set wire0 netns wire
		ip addr add 192.0.2.1/24 dev tsn0
		ip link set tsn0 up
		ip -n wire addr add 192.0.2.2/24 dev wire0
		ip -n wire link set wire0 up
		ip -n wire link set lo up
	'
	echo "$node: tsn0 ready"
done
