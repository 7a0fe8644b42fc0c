// Package bpf holds the eBPF programs of the TSN metadata proxy (saver,
// restorer, expiry timer) and a test-only observer, compiled by bpf2go. The
// generated Go files and objects are committed, so building needs no clang;
// `make generate` rebuilds them. pkg/tsn/datapath loads and attaches them.
package bpf

//go:generate go tool bpf2go -go-package bpf -tags linux -cc clang -target bpfel -type tsn_key -type tsn_bucket -type tsn_way -type tsn_policy -type tsn_slot -type tsn_counters -type tsn_misses -type tsn_gc Tsn tsn.c -- -mcpu=v3 -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
//go:generate go tool bpf2go -go-package bpf -tags linux -cc clang -target bpfel -type obs_key Observer observer.c -- -mcpu=v3 -O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu
