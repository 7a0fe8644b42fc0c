#!/usr/bin/env bash
# Runs the shell commands shown in README.md and docs/*.md, as a user would, so the docs
# cannot drift from the code. Run by `make test` (as root, like CI); `hack/check-docs.sh -n`
# only lists what it would do, `-v` also prints what each command printed.
#
# What counts as "shown" (README.md, docs/*.md, docs/figures/README.md, examples/README.md): every line of a fenced code block marked sh, bash, shell or console.
# Each command is classified below: run here as written (sudo dropped when already root), run
# in an equivalent form that needs no cluster (said why), or skipped with the reason. A command
# nobody classified fails the check: add it to classify() when you add it to the docs.
# Besides, every `make <target>` written anywhere in the docs must be a Makefile target.
set -euo pipefail
cd "$(dirname "$0")/.."

dry=0 verbose=0
[[ ${1:-} == -n ]] && dry=1
[[ ${1:-} == -v ]] && verbose=1
GO=${GO:-go}
HELM=${HELM:-/var/cache/tsn-dra-driver/helm-v4.3.1/helm}
fail=0 ran=0 skipped=0
tmp=$(mktemp -d)
netns=""
cleanup() {
	[[ -n $netns ]] && ip netns del "$netns" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

note() { printf '%-8s %s\n' "$1" "$2"; }

run() { # run <description> <command...>
	local what=$1
	shift
	if ((dry)); then
		note RUN "$what"
		return
	fi
	note RUN "$what"
	if ! "$@" >"$tmp/out" 2>&1; then
		note FAIL "$what"
		tail -n 30 "$tmp/out" | sed 's/^/         | /'
		fail=1
		return
	fi
	ran=$((ran + 1))
	((verbose)) && sed 's/^/         | /' "$tmp/out"
	return 0
}

skip() { # skip <command> <reason>
	note SKIP "$1  ($2)"
	skipped=$((skipped + 1))
}

need_root() {
	if ((EUID != 0)); then
		skip "$1" "needs root"
		return 1
	fi
}

# make_target_exists checks a make command line names real targets without running them.
make_target_exists() {
	make -n "$@" >/dev/null 2>&1 || make -n "$@" 2>&1 | grep -q "Nothing to be done"
}

# talker_in_netns runs an example talker command line in a throw-away network namespace
# whose veth holds the source address of the docs' TEST-NET destination, so
# nothing leaves the machine.
talker_in_netns() {
	# Commands are chained with &&: errexit does not apply inside `if ! run ...`.
	"$GO" build -o "$tmp/talker" ./examples/talker &&
		netns=tsn-docs-$RANDOM$RANDOM &&
		ip netns add "$netns" &&
		ip -n "$netns" link add wire type veth peer name wire-peer &&
		ip -n "$netns" addr add 192.0.2.1/24 dev wire &&
		ip -n "$netns" link set wire up &&
		ip -n "$netns" link set wire-peer up &&
		ip -n "$netns" neigh add 192.0.2.2 lladdr 02:00:00:00:00:02 dev wire &&
		ip netns exec "$netns" "$tmp/talker" "$@" >"$tmp/talker.json" &&
		cat "$tmp/talker.json" &&
		# The summary must say packets were sent, without send errors.
		grep -qE '"sent": *[1-9]' "$tmp/talker.json" &&
		! grep -qE '"send_errors": *[1-9]' "$tmp/talker.json"
}

classify() { # classify <file> <command>
	local file=$1 cmd=$2
	local c=${cmd#sudo }
	case $c in
	"make demo-netns")
		need_root "$cmd" && run "$file: $cmd" make demo-netns ;;
	"make demo")
		# The end-to-end demo is TestE2E with a summary: .ci/run runs it as make e2e.
		if make_target_exists demo; then
			skip "$cmd" "long (a Kubernetes cluster); .ci/run runs the same test as make e2e"
		else
			note FAIL "$file: $cmd: no such make target"
			fail=1
		fi ;;
	"make test")
		skip "$cmd" "this script runs inside make test" ;;
	"make e2e" | "make e2e-cluster" | "make vmtest" | "make vmtest "*)
		# Long (Kubernetes build, qemu): .ci/run runs them on their own. Check the target
		# exists (the word after make: variables may hold quoted spaces).
		local target
		target=$(awk '{print $2}' <<<"$c")
		if make_target_exists "$target"; then
			skip "$cmd" "long; .ci/run runs make e2e and make vmtest"
		else
			note FAIL "$file: $cmd: no such make target"
			fail=1
		fi ;;
	"helm install "*)
		# The same chart and values, rendered instead of installed (no cluster here).
		local args=${c#helm install }
		if [[ -x $HELM ]]; then
			# shellcheck disable=SC2086
			run "$file: $cmd  (as helm template)" "$HELM" template $args
		else
			skip "$cmd" "no helm binary (make helm)"
		fi ;;
	"talker "*)
		need_root "$cmd" || return 0
		# shellcheck disable=SC2086
		run "$file: $cmd  (in a scratch netns)" talker_in_netns ${c#talker } ;;
	"tsn-dra-driver status"*)
		# On this machine: whatever node config, checkpoint and pins it finds; exit 0 unless
		# nothing at all could be read.
		"$GO" build -o "$tmp/tsn-dra-driver" ./cmd/tsn-dra-driver
		# shellcheck disable=SC2086
		run "$file: $cmd" "$tmp/tsn-dra-driver" ${c#tsn-dra-driver } ;;
	"CGO_ENABLED=0 go build "*)
		# shellcheck disable=SC2086
		run "$file: $cmd" env CGO_ENABLED=0 "$GO" ${c#CGO_ENABLED=0 go } ;;
	"cd hack/e2e && go run -mod=mod ./cmd/mkimage "*)
		# Builds the image tarball from the binaries the previous line built.
		run "$file: $cmd" bash -c "$c" ;;
	"hack/figure/run.sh" | "FIGURE_KERNEL="*" hack/figure/run.sh")
		skip "$cmd" "boots the VM test bed (make vmtest); the plot from its kept data runs below" ;;
	"go run ./hack/figure/plot "*)
		# Deterministic: the committed SVG is rewritten identically from the committed data.
		# shellcheck disable=SC2086
		run "$file: $cmd" "$GO" ${c#go } ;;
	"kubectl "* | "nsenter "*)
		skip "$cmd" "needs a cluster (make e2e-cluster); make e2e applies deployments/ and runs the driver" ;;
	"# "*)
		;; # a comment line in a block
	*)
		note FAIL "$file: unclassified command: $cmd (add it to classify() in hack/check-docs.sh)"
		fail=1 ;;
	esac
}

for f in README.md docs/*.md docs/figures/README.md examples/README.md; do
	# Lines of sh/bash/shell/console fenced blocks, trailing comments removed.
	while IFS= read -r line; do
		line=${line%%  #*}
		line=${line%"${line##*[![:space:]]}"}
		[[ -z $line ]] && continue
		classify "$f" "$line"
	done < <(awk '/^```(sh|bash|shell|console)[[:space:]]*$/ {inb=1; next} /^```/ {inb=0} inb' "$f")
done

# `make <target>` mentioned in prose.
for t in $(grep -ohE '`(sudo )?make [a-z][a-z0-9-]*' README.md docs/*.md docs/figures/README.md examples/README.md | sed -E 's/.*make //' | sort -u); do
	if ! make_target_exists "$t"; then
		note FAIL "docs mention \`make $t\`, which the Makefile lacks"
		fail=1
	fi
done

((dry)) && exit 0
echo "check-docs: $ran run, $skipped skipped, $([[ $fail == 0 ]] && echo ok || echo FAILED)"
exit $fail
