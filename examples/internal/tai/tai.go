// Package tai reads and sleeps on CLOCK_TAI, the clock SO_TXTIME launch times,
// ETF and taprio use. On a host without PTP, CLOCK_TAI is CLOCK_REALTIME plus
// the kernel's TAI offset (often 0); what matters here is that talker, qdiscs
// and receiver on one machine read the same clock.
package tai

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Now returns CLOCK_TAI in nanoseconds.
func Now() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_TAI, &ts); err != nil {
		// CLOCK_TAI exists on every kernel this project supports (>= 3.10).
		panic(fmt.Sprintf("clock_gettime(CLOCK_TAI): %v", err))
	}
	return ts.Nano()
}

// SleepUntil sleeps until CLOCK_TAI reaches t (ns). It returns at once if t has
// passed and resumes the sleep after signals.
func SleepUntil(t int64) error {
	ts := unix.NsecToTimespec(t)
	for {
		err := unix.ClockNanosleep(unix.CLOCK_TAI, unix.TIMER_ABSTIME, &ts, nil)
		if err != unix.EINTR {
			return err
		}
	}
}
