package flow

import (
	"time"

	"golang.org/x/sys/unix"
)

// MonotonicBoot returns the wall-clock time at which CLOCK_MONOTONIC (the
// clock of bpf_ktime_get_ns, which stamps records) was zero.
func MonotonicBoot() time.Time {
	var ts unix.Timespec
	now := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return now
	}
	return now.Add(-time.Duration(ts.Nano()))
}
