# tsn-dra-driver build and test entry points. Targets that need root say so;
# run them with sudo (CI runs as root).

GO        ?= go
GOFLAGS   ?=
BIN       ?= bin
# Root tests build network namespaces and load eBPF; they skip with a reason when not root.
TEST_FLAGS ?= -count=1
# The reference CNI plugins the pod-lifecycle tests wire pods with, built from
# the Go module proxy into a versioned cache outside the repo.
CNI_PLUGINS_VERSION ?= v1.9.1
CNI_PATH  ?= /var/cache/tsn-dra-driver/cni-$(CNI_PLUGINS_VERSION)
export CNI_PATH

.PHONY: helm all build test test-unit lint generate demo demo-netns bench-datapath bench test-reliability fuzz clean cni-plugins e2e e2e-build e2e-cluster vmtest

all: build

## build: compile every command into ./bin (no clang needed: eBPF objects are committed).
build:
	$(GO) build $(GOFLAGS) -o $(BIN)/ ./cmd/...

## test: vet + every Go test (root tests run as root, skip otherwise), then the commands shown in
##   README.md and docs/ (hack/check-docs.sh).
test: lint cni-plugins helm
	$(GO) test $(GOFLAGS) $(TEST_FLAGS) ./...
	GO=$(GO) hack/check-docs.sh

## test-unit: the tests that need neither root nor a kernel feature.
test-unit:
	TSN_SKIP_ROOT_TESTS=1 $(GO) test $(GOFLAGS) $(TEST_FLAGS) ./...

## lint: gofmt and go vet.
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

## generate: rebuild the eBPF objects with clang (bpf2go) and other generated code.
generate:
	$(GO) generate ./...

## demo: the main job, end to end (root): a single-node Kubernetes on this machine (built from
##   source the first time: 10-30 min; then ~1-2 min), the driver installed from deployments/,
##   talker pods with and without claims; prints per talker what left the TSN NIC without and
##   with the driver. The full log stays in /tmp.
demo: e2e-build
	@log=$$(mktemp /tmp/tsn-demo.XXXXXX); \
	echo "demo: cluster, driver and talker pods (log: $$log)"; \
	cd hack/e2e && $(GO) test -mod=mod -count=1 -v -run '^TestE2E$$' -timeout 50m . >"$$log" 2>&1; rc=$$?; \
	sed -n '/^=== What left tsn0/,/^=== end ===/p' "$$log"; \
	if [ $$rc -ne 0 ]; then grep -E -- '--- FAIL|_test.go:[0-9]+: ' "$$log" | tail -40; echo "demo failed (exit $$rc), full log: $$log"; fi; \
	exit $$rc

## demo-netns: in seconds, no cluster: an emulated TSN node in namespaces, per priority what leaves
##   tsn0 without and with the data path (root).
demo-netns:
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	$(GO) run ./cmd/tsn-demo

## bench-datapath: eBPF data path: ns per program (BPF run stats), sender CPU per packet with and
##   without the proxy, wrong restores, and AttachSaver latency (root; see docs/datapath.md).
bench-datapath:
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	$(GO) test -run '^$$' -bench '^BenchmarkDatapath$$' -benchtime 40000x -count=1 ./pkg/tsn/datapath/
	$(GO) test -run '^$$' -bench '^BenchmarkAttachSaver$$' -benchtime 50x -count=1 ./pkg/tsn/datapath/

## helm: install the helm binary the chart test renders with (deployments/helm) into $(HELM_DIR).
HELM_VERSION ?= v4.3.1
HELM_DIR  ?= /var/cache/tsn-dra-driver/helm-$(HELM_VERSION)
HELM      ?= $(HELM_DIR)/helm
export HELM
helm: $(HELM)

$(HELM_DIR)/helm:
	mkdir -p $(HELM_DIR)
	GOBIN=$(HELM_DIR) CGO_ENABLED=0 nice -n 10 $(GO) install helm.sh/helm/v4/cmd/helm@$(HELM_VERSION)

## bench: one run of every benchmark side by side (data path, latency pod -> wire, Prepare, NRI hooks,
##   driver RSS with 200 claims, map and expiry cost, reliability suite) into docs/benchmarks.md (root).
bench: cni-plugins
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	nice -n 10 $(GO) run ./test/bench -go $(GO) -out docs/benchmarks.md

## test-reliability: the cross-component reliability suite (root; also part of `make test`) and
##   `make fuzz`. See docs/reliability.md.
test-reliability: cni-plugins
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	$(GO) test $(GOFLAGS) $(TEST_FLAGS) -v -timeout 15m ./test/reliability/
	$(MAKE) fuzz

## fuzz: every fuzz target for FUZZTIME each (the seeds under testdata/fuzz run with every `go test`).
FUZZTIME ?= 20s
fuzz:
	$(GO) test $(GOFLAGS) -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./pkg/tsn/config/
	$(GO) test $(GOFLAGS) -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./pkg/driver/apis/v1alpha1/
	$(GO) test $(GOFLAGS) -run '^$$' -fuzz '^FuzzValidate$$' -fuzztime $(FUZZTIME) ./pkg/tsn/schedule/

## cni-plugins: install the bridge, host-local and loopback CNI plugins into $(CNI_PATH).
cni-plugins: $(CNI_PATH)/bridge $(CNI_PATH)/host-local $(CNI_PATH)/loopback

$(CNI_PATH)/%:
	mkdir -p $(CNI_PATH)
	GOBIN=$(CNI_PATH) CGO_ENABLED=0 $(GO) install github.com/containernetworking/plugins/plugins/$(if $(filter host-local,$*),ipam,main)/$*@$(CNI_PLUGINS_VERSION)

## e2e-build: build Kubernetes v1.37.1, etcd, containerd, runc and CNI plugins for the e2e
##   cluster into /var/cache/tsn-dra-driver/e2e-v1 (once; skipped when cached). Needs gcc, libseccomp-dev.
e2e-build:
	hack/e2e/build.sh

## e2e: end-to-end tests on a real single-node Kubernetes (root; see docs/e2e.md).
# hack/e2e imports this module through a replace; -mod=mod lets it follow this go.mod.
e2e: e2e-build
	cd hack/e2e && $(GO) test -mod=mod $(TEST_FLAGS) -v -timeout 50m ./...

## e2e-cluster: start the e2e cluster and keep it up until Ctrl-C (root; see docs/e2e.md).
e2e-cluster: e2e-build
	cd hack/e2e && $(GO) run -mod=mod ./cmd/e2e-cluster -repo $(CURDIR)

## vmtest: the kernel tests (taprio, etf, mqprio, data path on clsact + fexit, seed experiment) as root
##   inside Debian's 6.1 generic and PREEMPT_RT kernels under qemu (root; see docs/vmtest.md).
##   VMTEST_PACKAGES, VMTEST_KERNELS and VMTEST_RUN narrow it down.
vmtest:
	GO=$(GO) hack/vmtest/vmtest.sh

clean:
	rm -rf $(BIN)

help:
	@grep -E '^## ' $(MAKEFILE_LIST) | sed 's/^## //'
