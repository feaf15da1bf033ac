//go:build unix

package ipam

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// StateLock is an exclusive lock on a [StateFile] between processes (and
// between StateLocks in one process), held until Close.
type StateLock struct {
	f *os.File
}

// lockPollMax bounds the wait between two attempts to take a held lock.
const lockPollMax = 20 * time.Millisecond

// Lock takes an exclusive lock on the state file, waiting while someone
// else holds it until ctx is done. Processes that share a state file, such
// as concurrent invocations of a CNI plugin, hold the lock from before
// [New] restores the pool until after their last change is saved, so that
// none works from a state another has already replaced.
//
// The lock is an flock(2) on a file next to the state file, its path with
// ".lock" appended, created if missing and never removed: the state file
// itself is replaced by every Save, so a lock on it would not reach the
// next holder. The kernel releases it when its holder exits, so a crashed
// process never leaves it held.
func (s *StateFile) Lock(ctx context.Context) (*StateLock, error) {
	path := s.path + ".lock"
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock state: %w", err)
	}
	wait := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return &StateLock{f: f}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock state %s: %w", path, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			f.Close()
			return nil, fmt.Errorf("lock state %s: held by another process: %w", path, context.Cause(ctx))
		case <-t.C:
		}
		wait = min(2*wait, lockPollMax)
	}
}

// Close releases the lock. Closing it twice is an error.
func (l *StateLock) Close() error {
	if l.f == nil {
		return fmt.Errorf("unlock state: %w", os.ErrClosed)
	}
	// Closing the descriptor releases the flock.
	err := l.f.Close()
	l.f = nil
	if err != nil {
		return fmt.Errorf("unlock state: %w", err)
	}
	return nil
}
