//go:build !linux

package flow

import "time"

// MonotonicBoot returns the current time: outside Linux there are no
// datapath records to date.
func MonotonicBoot() time.Time { return time.Now() }
