package driver

import "k8s.io/apimachinery/pkg/api/equality"

// equalPrepared reports whether two prepared states are the same (so nothing is rewritten).
func equalPrepared(a, b PreparedClaim) bool {
	return equality.Semantic.DeepEqual(a, b)
}
