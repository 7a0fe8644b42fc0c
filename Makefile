# tsn-dra-driver build and test entry points. Targets that need root say so;
# run them with sudo (CI runs as root).

GO        ?= go
GOFLAGS   ?=
BIN       ?= bin
# Root tests build network namespaces and load eBPF; they skip with a reason when not root.
TEST_FLAGS ?= -count=1

.PHONY: all build test test-unit lint generate demo clean

all: build

## build: compile every command into ./bin (no clang needed: eBPF objects are committed).
build:
	$(GO) build $(GOFLAGS) -o $(BIN)/ ./cmd/...

## test: vet + every Go test (root tests run as root, skip otherwise).
test: lint
	$(GO) test $(GOFLAGS) $(TEST_FLAGS) ./...

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

clean:
	rm -rf $(BIN)

help:
	@grep -E '^## ' $(MAKEFILE_LIST) | sed 's/^## //'
