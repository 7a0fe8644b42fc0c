#!/usr/bin/env bash
# Builds the binaries of the end-to-end cluster into a cache directory outside
# the repository (default /var/cache/tsn-dra-driver/e2e-v1/bin) and skips any
# binary whose stamp says it is already built at the wanted version.
#
#   kube-apiserver kube-scheduler kube-controller-manager kubelet kubectl etcd
#       from hack/e2e/kube (a Go module of its own: the driver's go.mod stays clean)
#   containerd ctr containerd-shim-runc-v2   go install, tag no_btrfs (NRI is built in)
#   runc                                     go install, tag seccomp (needs libseccomp-dev, cgo)
#   cni/{bridge,host-local,loopback,portmap} go install
#
# Builds run under `nice -n 10`: the machines have 2 cores shared with others.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.sh
source "$here/versions.sh"

GO=${GO:-go}
NICE=${NICE:-nice -n 10}
mkdir -p "$E2E_BIN/cni" "$E2E_CACHE/stamps"

log() { printf '%s build: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# fresh NAME VERSION: true when $E2E_BIN/NAME exists and was built at VERSION.
fresh() {
	local bin=$E2E_BIN/$1 stamp=$E2E_CACHE/stamps/${1//\//_}
	[[ -x $bin && -f $stamp && $(<"$stamp") == "$2" ]]
}
stamp() { printf '%s\n' "$2" >"$E2E_CACHE/stamps/${1//\//_}"; }

build_kube() {
	local want="$KUBE_VERSION etcd-$ETCD_VERSION $(sha256sum "$here/kube/go.sum" | cut -c1-16)"
	local missing=()
	for c in kube-apiserver kube-scheduler kube-controller-manager kubelet kubectl etcd; do
		fresh "$c" "$want" || missing+=("$c")
	done
	((${#missing[@]})) || { log "kubernetes $KUBE_VERSION: cached"; return; }
	log "kubernetes $KUBE_VERSION + etcd $ETCD_VERSION: building ${missing[*]}"
	local major minor
	major=${KUBE_VERSION#v}; major=${major%%.*}
	minor=${KUBE_VERSION#v*.}; minor=${minor%%.*}
	# kubectl refuses to talk to a server whose version it cannot parse, and
	# kubelet reports this version in the Node object.
	local ldflags="-s -w"
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
		ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
	done
	local pkgs=()
	for c in "${missing[@]}"; do
		case $c in
		etcd) pkgs+=(go.etcd.io/etcd/server/v3) ;;
		*) pkgs+=("k8s.io/kubernetes/cmd/$c") ;;
		esac
	done
	local out
	out=$(mktemp -d "$E2E_CACHE/tmp.XXXXXX")
	(cd "$here/kube" && CGO_ENABLED=0 $NICE "$GO" build -trimpath -ldflags "$ldflags" -o "$out/" "${pkgs[@]}")
	# go names the binary of go.etcd.io/etcd/server/v3 after "server".
	[[ -e $out/server ]] && mv "$out/server" "$out/etcd"
	for c in "${missing[@]}"; do
		mv -f "$out/$c" "$E2E_BIN/$c"
		stamp "$c" "$want"
	done
	rmdir "$out"
}

# goinstall NAME VERSION PKG [go flags...]: go install PKG@VERSION as NAME.
goinstall() {
	local name=$1 version=$2 pkg=$3
	shift 3
	if fresh "$name" "$version"; then
		log "$name $version: cached"
		return
	fi
	log "$name $version: building"
	local out
	out=$(mktemp -d "$E2E_CACHE/tmp.XXXXXX")
	GOBIN=$out GOFLAGS= $NICE "$GO" install -trimpath "$@" "$pkg@$version"
	mv -f "$out/$(basename "$pkg")" "$E2E_BIN/$name"
	rmdir "$out"
	stamp "$name" "$version"
}

start=$SECONDS
build_kube
for c in containerd ctr containerd-shim-runc-v2; do
	CGO_ENABLED=0 goinstall "$c" "$CONTAINERD_VERSION" "github.com/containerd/containerd/v2/cmd/$c" \
		-tags no_btrfs -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION"
done
if ! [[ -e /usr/include/seccomp.h ]]; then
	echo "build: runc needs libseccomp-dev (apt-get install libseccomp-dev)" >&2
	exit 1
fi
CGO_ENABLED=1 goinstall runc "$RUNC_VERSION" github.com/opencontainers/runc \
	-tags seccomp -ldflags "-s -w -X main.version=${RUNC_VERSION#v}"
for p in bridge host-local loopback portmap; do
	case $p in host-local) dir=ipam ;; portmap) dir=meta ;; *) dir=main ;; esac
	CGO_ENABLED=0 goinstall "cni/$p" "$CNI_PLUGINS_VERSION" "github.com/containernetworking/plugins/plugins/$dir/$p" \
		-ldflags "-s -w"
done
log "all binaries in $E2E_BIN ($((SECONDS - start)) s)"
