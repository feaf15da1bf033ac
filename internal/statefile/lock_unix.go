//go:build unix

package statefile

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// lockPollMax bounds the wait between two attempts to take a held lock.
const lockPollMax = 20 * time.Millisecond

// flock takes an exclusive flock on f. flock(2) cannot wait with a
// deadline, so if wait a held lock is polled, backing off to lockPollMax,
// until ctx is done; otherwise it fails at once with ErrLocked.
func flock(ctx context.Context, f *os.File, wait bool) error {
	delay := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return err
		}
		if !wait {
			return ErrLocked
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w: %w", ErrLocked, context.Cause(ctx))
		case <-t.C:
		}
		delay = min(2*delay, lockPollMax)
	}
}
