#!/usr/bin/env bash
# Regenerates docs/figures/gate-cycle.svg from a real run: the seed experiment
# (hack/figure) in Debian's 6.1 kernel with taprio under qemu (make vmtest),
# then the plot. Root; ~30 s with a warm vmtest cache.
#
#   sudo hack/figure/run.sh
#
# The test fails while pod traffic with the driver does not leave taprio on
# that kernel (docs/figures/README.md); the data of every run is kept anyway.
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
