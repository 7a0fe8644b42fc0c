// Package reliability holds the cross-component reliability suite of the TSN DRA driver: the
// driver's claim state, the NIC setup, the NRI pod hooks and the eBPF data path, wired together
// as the daemon wires them, under restarts, churn, hostile input and faults. Every test is a
// _test.go file; root tests build their own network namespaces (random suffixes, removed in
// t.Cleanup) and skip with a reason when not root. See docs/benchmarks.md ("Reliability suite")
// and `make test-reliability`.
package reliability
