//go:build race

package driver

// raceEnabled: the race detector slows everything several times; latency targets do not apply.
const raceEnabled = true
