// Command pause is the sandbox ("pause") container of the end-to-end cluster:
// it holds the pod's namespaces, reaps orphans (it is PID 1 when the pod shares
// its PID namespace) and exits on SIGTERM or SIGINT. Built locally so the
// cluster needs no registry.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
