package cluster

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// holder is a process that keeps namespaces alive: a shell that sets them up
// and then sleeps. Killing it (after everything entered into its namespaces
// has stopped) makes the kernel free the namespaces with every mount, network
// device and address in them: nothing is left to clean up by hand.
type holder struct {
	name  string
	cmd   *exec.Cmd
	netns *os.File // /proc/<pid>/ns/net, kept open for dialing into it
}

// startHolder runs script under bash in new namespaces (flags: CLONE_NEW*).
// The script must print "ready" on stdout when its set-up is done.
func startHolder(ctx context.Context, name string, flags uintptr, script string, env []string) (*holder, error) {
	cmd := exec.Command("bash", "-c", script)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags, Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the %s namespace holder: %w", name, err)
	}
	h := &holder{name: name, cmd: cmd}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("unexpected output %q", line)
		}
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-ctx.Done():
		err = ctx.Err()
	case <-time.After(30 * time.Second):
		err = fmt.Errorf("timed out")
	}
	if err != nil {
		h.stop()
		return nil, fmt.Errorf("setting up the %s namespaces: %v: %s", name, err, strings.TrimSpace(stderr.String()))
	}
	h.netns, err = os.Open(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid))
	if err != nil {
		h.stop()
		return nil, err
	}
	return h, nil
}

func (h *holder) pid() int { return h.cmd.Process.Pid }

func (h *holder) stop() {
	if h == nil || h.cmd.Process == nil {
		return
	}
	if h.netns != nil {
		h.netns.Close()
	}
	h.cmd.Process.Kill()
	h.cmd.Wait()
}

// enter returns the command line prefix that runs a program in h's namespaces.
func (h *holder) enter(mount bool) []string {
	args := []string{"nsenter", "--target", fmt.Sprint(h.pid()), "--net"}
	if mount {
		args = append(args, "--mount")
	}
	return append(args, "--")
}

// run runs a short command in h's namespaces and returns its combined output.
func (h *holder) run(ctx context.Context, mount bool, args ...string) ([]byte, error) {
	full := append(h.enter(mount), args...)
	out, err := exec.CommandContext(ctx, full[0], full[1:]...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s (in the %s namespaces): %w: %s", strings.Join(args, " "), h.name, err, bytes.TrimSpace(out))
	}
	return out, nil
}

// dial connects to addr from inside h's network namespace. The socket is
// created on a thread switched into that namespace, so it belongs there for
// its whole life; the thread switches back before it is released.
func (h *holder) dial(ctx context.Context, addr string) (net.Conn, error) {
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	defer self.Close()
	if err := unix.Setns(int(h.netns.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("entering the %s network namespace: %w", h.name, err)
	}
	var d net.Dialer
	conn, dialErr := d.DialContext(ctx, "tcp", addr)
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread stays locked and in the wrong namespace: Go ends it when
		// this goroutine exits instead of reusing it.
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("leaving the %s network namespace: %w", h.name, err)
	}
	runtime.UnlockOSThread()
	return conn, dialErr
}
