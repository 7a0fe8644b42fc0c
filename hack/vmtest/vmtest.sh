#!/usr/bin/env bash
# make vmtest: runs Go test packages as root inside Debian's 6.1 kernels (generic
# and PREEMPT_RT), or 6.12 from bookworm-backports, under qemu, for the kernel
# features the host lacks (taprio, etf, mqprio, fexit). Installs what it needs from Debian packages, caches downloads
# outside the repo, and exits non-zero when any test fails on any kernel.
#
# Knobs (environment):
#   VMTEST_PACKAGES  Go packages to test (default: the ones in packages.txt)
#   VMTEST_KERNELS   Debian kernel flavours (default "amd64 rt-amd64"; "bpo-amd64",
#                    "bpo-rt-amd64": the same from bookworm-backports, 6.12)
#   VMTEST_CACHE     download/build cache (default /var/cache/tsn-dra-driver/vmtest-v1)
#   VMTEST_TIMEOUT   seconds one VM may run (default 1200)
#   VMTEST_RUN       -test.run pattern passed to every test binary (default all)
#   VMTEST_MEM       guest memory in MiB (default 1024)
#   VMTEST_SMP       guest CPUs (default 2)
#   VMTEST_VERBOSE   1 passes -test.v (default 1)
#   VMTEST_CMDLINE   appended to the kernel command line (e.g. "loglevel=7" to see
#                    lockup and RCU stall reports on the console)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${VMTEST_CACHE:-/var/cache/tsn-dra-driver/vmtest-v1}
kernels=${VMTEST_KERNELS:-amd64 rt-amd64}
timeout_s=${VMTEST_TIMEOUT:-1200}
mem=${VMTEST_MEM:-1024}
smp=${VMTEST_SMP:-2}
verbose=${VMTEST_VERBOSE:-1}
GO=${GO:-go}
if [[ -n ${VMTEST_PACKAGES:-} ]]; then
	read -r -a packages <<<"$VMTEST_PACKAGES"
else
	mapfile -t packages < <(grep -v '^\s*#' "$here/packages.txt" | grep -v '^\s*$')
fi

log() { printf 'vmtest: %s\n' "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[[ $(id -u) == 0 ]] || { log "needs root (apt-get, and the tests themselves run as root in the VM)"; exit 2; }

# --- host tools ---------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
static_busybox() { [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1; }
static_busybox || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
[[ -x /usr/sbin/tc ]] || need+=(iproute2)
[[ -x /usr/sbin/xtables-nft-multi ]] || need+=(iptables)
command -v modinfo >/dev/null || need+=(kmod)
if ((${#need[@]})); then
	log "installing ${need[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! static_busybox; then
	log "/bin/busybox is dynamically linked; install busybox-static"
	exit 2
fi

mkdir -p "$cache/debs"

# --- kernels ------------------------------------------------------------------
# A flavour is a Debian linux-image-* meta package suffix ("amd64", "rt-amd64"),
# from the machine's own apt sources, or with a "bpo-" prefix ("bpo-amd64",
# "bpo-rt-amd64") from bookworm-backports (6.12: TCX and taprio together). The
# backports suite is read through a private apt configuration under the cache,
# so the machine's /etc/apt is never changed.
bpo_apt=$cache/apt-bookworm-backports
bpo_opts=(-o "Dir::Etc::sourcelist=$bpo_apt/sources.list" -o "Dir::Etc::sourceparts=$bpo_apt/sources.list.d"
	-o "Dir::Etc::preferencesparts=$bpo_apt/preferences.d" -o "Dir::State::lists=$bpo_apt/lists"
	-o "Dir::State::status=/dev/null" -o "Dir::Cache=$bpo_apt/cache" -o APT::Sandbox::User=root)
bpo_update() {
	mkdir -p "$bpo_apt"/{lists/partial,sources.list.d,preferences.d,cache/archives/partial}
	echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main" >"$bpo_apt/sources.list"
	apt-get "${bpo_opts[@]}" update -qq
}

# kernel_dir FLAVOUR: resolves linux-image-FLAVOUR to its versioned package, fetches
# and unpacks it once, and prints the unpacked directory.
kernel_dir() {
	local flavour=$1 pkg ver dir opts=() update=(apt-get update -qq)
	if [[ $flavour == bpo-* ]]; then
		flavour=${flavour#bpo-}
		opts=("${bpo_opts[@]}")
		update=(bpo_update)
		[[ -f $bpo_apt/sources.list ]] || bpo_update
	fi
	pkg=$(apt-cache "${opts[@]}" depends "linux-image-$flavour" 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
	if [[ -z $pkg ]]; then
		"${update[@]}"
		pkg=$(apt-cache "${opts[@]}" depends "linux-image-$flavour" | awk '/Depends: linux-image-/ { print $2; exit }')
	fi
	[[ -n $pkg ]] || { log "cannot resolve linux-image-$flavour"; return 1; }
	ver=$(apt-cache "${opts[@]}" policy "$pkg" | awk '/Candidate:/ { print $2 }')
	dir=$cache/kernel/$pkg-$ver
	if [[ ! -f $dir/.done ]]; then
		log "fetching $pkg $ver"
		rm -rf "$dir" && mkdir -p "$dir"
		(cd "$cache/debs" && apt-get "${opts[@]}" download -qq -o APT::Sandbox::User=root "$pkg=$ver")
		dpkg-deb -x "$cache/debs/${pkg}_${ver//:/%3a}_amd64.deb" "$dir"
		rm -f "$cache/debs/${pkg}_"*.deb
		touch "$dir/.done"
	fi
	echo "$dir"
}

# --- initramfs ----------------------------------------------------------------
# Modules the tests need, loaded in this order; their dependencies are added from
# modinfo. Modules built into a kernel are skipped. Soft dependencies are not
# followed (they name aliases), so crc32c_generic, which libcrc32c (netfilter)
# needs, is listed by hand.
# xfrm_user and nfnetlink: vishvananda/netlink's NewHandle opens XFRM and netfilter
# sockets unless told which families to use, and fails without them.
modules=(virtio_pci 9pnet_virtio 9p veth sch_taprio sch_etf sch_mqprio sch_cbs sch_prio
	sch_htb sch_ingress sch_fq_codel cls_bpf cls_u32 act_bpf act_gact bridge vxlan dummy
	xfrm_user nfnetlink crc32c_generic nf_tables nft_compat nft_chain_nat xt_MASQUERADE xt_nat xt_tcpudp
	${VMTEST_EXTRA_MODULES:-})

# module_order KDIR VERSION: prints .ko paths with dependencies first.
module_order() {
	local mdir=$1/lib/modules/$2
	declare -A seen=()
	local out=()
	visit() {
		local name=${1//-/_} path deps d
		[[ -n ${seen[$name]:-} ]] && return 0
		seen[$name]=1
		if grep -qE "/${name//_/[_-]}\.ko(\.[a-z]+)?$" "$mdir/modules.builtin" 2>/dev/null; then
			return 0
		fi
		path=$(find "$mdir/kernel" -regextype egrep -regex ".*/${name//_/[_-]}\.ko(\.xz|\.zst)?" | head -1)
		if [[ -z $path ]]; then
			log "module $name not found in $2 (skipped)"
			return 0
		fi
		deps=$(modinfo -F depends "$path" | tr ',' ' ')
		for d in $deps; do visit "$d"; done
		out+=("$path")
	}
	for m in "${modules[@]}"; do visit "$m"; done
	printf '%s\n' "${out[@]}"
}

# copy_with_libs BIN DEST: copies a dynamic binary and the shared libraries it loads.
copy_with_libs() {
	local bin=$1 root=$2 lib
	install -D -m 0755 "$bin" "$root/usr/sbin/$(basename "$bin")"
	for lib in $(ldd "$bin" | grep -oE '/[^ ]+'); do
		[[ -e $root$lib ]] || install -D -m 0755 "$lib" "$root$lib"
	done
}

build_initramfs() {
	local kdir=$1 version=$2 image=$3 root
	root=$(mktemp -d "$out/initramfs.XXXXXX") # under $out: removed on exit, also on failure
	mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,repo,out,lib/modules,usr/sbin}
	cp /bin/busybox "$root/bin/busybox"
	for applet in $(/bin/busybox --list); do
		[[ -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
	done
	# iproute2's own tc and ip, for what busybox's applets cannot do (called by full path).
	copy_with_libs /usr/sbin/tc "$root"
	copy_with_libs /usr/sbin/ip "$root"
	# iptables (nft backend) for the NAT topologies of the data path tests; its
	# extensions are loaded with dlopen, so the whole extension directory goes in.
	copy_with_libs /usr/sbin/xtables-nft-multi "$root"
	ln -s xtables-nft-multi "$root/usr/sbin/iptables"
	ln -s xtables-nft-multi "$root/usr/sbin/ip6tables"
	mkdir -p "$root/usr/lib/x86_64-linux-gnu"
	cp -a /usr/lib/x86_64-linux-gnu/xtables "$root/usr/lib/x86_64-linux-gnu/"
	cp /etc/protocols /etc/services "$root/etc/" 2>/dev/null || true
	local m
	: >"$root/etc/modules.order"
	while read -r m; do
		[[ -n $m ]] || continue
		case $m in
		*.xz) xz -dc "$m" >"$root/lib/modules/$(basename "${m%.xz}")" ;;
		*.zst) zstd -qdc "$m" >"$root/lib/modules/$(basename "${m%.zst}")" ;;
		*) cp "$m" "$root/lib/modules/" ;;
		esac
		m=$(basename "$m")
		m=${m%.xz}
		echo "${m%.zst}" >>"$root/etc/modules.order"
	done < <(module_order "$kdir" "$version")
	install -m 0755 "$here/init" "$root/init"
	(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$image.tmp"
	mv "$image.tmp" "$image"
	rm -rf "$root"
}

# --- test binaries ------------------------------------------------------------
out=$(mktemp -d /tmp/vmtest-out.XXXXXX)
trap 'rm -rf "$out"' EXIT
t0=$(now)
: >"$out/tests"
for p in "${packages[@]}"; do
	rel=${p#./}
	name=$(echo "$rel" | tr '/' '_').test
	log "building $p"
	(cd "$repo" && CGO_ENABLED=0 nice -n 10 $GO test -c -o "$out/$name" "./$rel")
	[[ -f $out/$name ]] || { log "$p has no tests"; continue; }
	echo "$rel $name" >>"$out/tests"
done
log "test binaries built in $(elapsed "$t0") s"
args=(-test.count=1)
[[ $verbose == 1 ]] && args+=(-test.v)
[[ -n ${VMTEST_RUN:-} ]] && args+=("-test.run=$VMTEST_RUN")
printf '%s\n' "${args[@]}" >"$out/args"

# --- run ----------------------------------------------------------------------
status=0
failed=()
for flavour in $kernels; do
	kdir=$(kernel_dir "$flavour")
	version=$(ls "$kdir/lib/modules" | head -1)
	vmlinuz=$kdir/boot/vmlinuz-$version
	initrd=$cache/initramfs/$version-$(sha256sum "$here/init" "$here/vmtest.sh" | sha256sum | cut -c1-12).cpio.gz
	if [[ ! -f $initrd ]]; then
		mkdir -p "$cache/initramfs"
		rm -f "$cache/initramfs/$version-"*.cpio.gz # built by an older init or script
		log "building initramfs for $version"
		build_initramfs "$kdir" "$version" "$initrd"
	fi
	rm -f "$out/result" "$out/booted"
	log "booting $version (TCG, ${smp} CPUs, ${mem} MiB)"
	t1=$(now)
	set +e
	timeout --foreground "$timeout_s" nice -n 10 qemu-system-x86_64 \
		-accel tcg,thread=multi -cpu max -smp "$smp" -m "$mem" \
		-kernel "$vmlinuz" -initrd "$initrd" \
		-append "console=ttyS0 panic=-1 oops=panic loglevel=3 quiet ${VMTEST_CMDLINE:-}" \
		-nographic -no-reboot -nic none -monitor none -serial stdio \
		-virtfs local,path="$repo",mount_tag=repo,security_model=none,readonly=on \
		-virtfs local,path="$out",mount_tag=out,security_model=none \
		</dev/null 2>&1 | tr -d '\r' | sed -u "s/^/[$flavour] /" | tee "$out/console-$flavour.log"
	qemu_rc=${PIPESTATUS[0]}
	set -e
	rc=$(cat "$out/result" 2>/dev/null || echo "none")
	boot=$(cat "$out/booted" 2>/dev/null || echo "?")
	log "$version: tests exit $rc, VM $(elapsed "$t1") s (boot to tests ${boot} s), qemu exit $qemu_rc"
	if [[ $rc != 0 ]]; then
		[[ $rc == none ]] && log "$version: the VM gave no result (timeout after ${timeout_s}s or crash)"
		failed+=("$flavour")
		status=1
	fi
done
log "total $(elapsed "$t0") s"
# CI keeps only the end of a long log: repeat what failed, with the lines that say why.
for flavour in "${failed[@]}"; do
	log "FAILED on $flavour:"
	# klog lines dropped; the rest just before each failure is the failing tests' own output.
	grep -v -E '[] :][IW][0-9]{4} [0-9]{2}:[0-9]{2}:[0-9.]+[] ]' "$out/console-$flavour.log" |
		grep -B 12 -E -e '--- FAIL|^\[[^]]*\] (FAIL|panic:)|vmtest-init: === .* exit [1-9]' | tail -n 80 || true
done
exit $status
