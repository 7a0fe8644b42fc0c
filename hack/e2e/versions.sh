# Versions of everything the end-to-end cluster is built from. Sourced by the
# e2e scripts. Changing a version here rebuilds that component on the next run
# (each binary carries a stamp of the version it was built from).
#
# Kubernetes and etcd are pinned by hack/e2e/kube/go.mod (k8s.io/kubernetes and
# go.etcd.io/etcd/server/v3 as tools); KUBE_VERSION must match it, it only
# feeds the version ldflags.
KUBE_VERSION=v1.37.1
ETCD_VERSION=v3.7.0
CONTAINERD_VERSION=v2.4.2
RUNC_VERSION=v1.5.2
CNI_PLUGINS_VERSION=v1.9.1

# Bump E2E_CACHE_GENERATION to throw away every cached binary at once (e.g.
# after changing how they are built).
E2E_CACHE_GENERATION=v1
E2E_CACHE=${E2E_CACHE:-/var/cache/tsn-dra-driver/e2e-${E2E_CACHE_GENERATION}}
E2E_BIN=${E2E_CACHE}/bin
