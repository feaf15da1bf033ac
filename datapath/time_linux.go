package datapath

import (
	"time"

	"golang.org/x/sys/unix"
)

// MonotonicNow returns the current CLOCK_MONOTONIC time, the clock of
// conntrack expiry and event timestamps.
func MonotonicNow() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		// CLOCK_MONOTONIC cannot fail on Linux.
		panic(err)
	}
	return time.Duration(ts.Nano())
}
