module github.com/tsn-dra-driver/tsn-dra-driver/hack/e2e

go 1.26.0

require github.com/google/go-containerregistry v0.22.1

require (
	github.com/cilium/ebpf v0.22.0 // indirect
	github.com/go-logr/logr v1.4.3 // indirect
	github.com/vishvananda/netlink v1.3.1 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	k8s.io/klog/v2 v2.140.0 // indirect
)

require (
	github.com/klauspost/compress v1.19.2 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
	github.com/tsn-dra-driver/tsn-dra-driver v0.0.0
	golang.org/x/sys v0.49.0
)

replace github.com/tsn-dra-driver/tsn-dra-driver => ../..
