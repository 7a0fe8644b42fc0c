#!/usr/bin/env bash
# Regenerates docs/figures/gate-cycle.svg from a real run: the seed experiment
# (hack/figure) in a Debian kernel with taprio under qemu (make vmtest), then the
# plot. Root; ~40 s with a warm vmtest cache.
#
#   sudo hack/figure/run.sh                      # 6.12 from bookworm-backports (TCX)
#   sudo FIGURE_KERNEL=amd64 hack/figure/run.sh  # 6.1 (clsact restorer)
#
# On 6.1 the test fails: the restorer's clsact, added after taprio, stops taprio's
# gates and pod traffic with the driver stays queued (docs/figures/README.md); the
# data of every run is kept anyway.
set -uo pipefail
cd "$(dirname "$0")/../.."
log=$(mktemp /tmp/figure-vm.XXXXXX.log)
trap 'rm -f "$log"' EXIT
make vmtest VMTEST_PACKAGES=./hack/figure VMTEST_KERNELS="${FIGURE_KERNEL:-bpo-amd64}" VMTEST_RUN=TestGateCycleFigure VMTEST_TIMEOUT=300 | tee "$log"
rc=${PIPESTATUS[0]}
grep -oE '(FIGMETA|FIGDATA) .*' "$log" >docs/figures/gate-cycle.dat
grep -oE 'figure_test.go:[0-9]+: .*(arrived|taprio children|counters).*' "$log" >docs/figures/gate-cycle.log || true
if ! grep -q FIGDATA docs/figures/gate-cycle.dat; then
	echo "figure: the VM run produced no data" >&2
	exit 1
fi
go run ./hack/figure/plot -in docs/figures/gate-cycle.dat -out docs/figures/gate-cycle.svg
echo "figure: docs/figures/gate-cycle.svg ($(grep -c FIGDATA docs/figures/gate-cycle.dat) packets; test exit $rc)"
