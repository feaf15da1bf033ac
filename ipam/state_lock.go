package ipam

import (
	"context"
	"fmt"

	"github.com/nodeplane/nodeplane/internal/statefile"
)

// StateLock is an exclusive lock on a [StateFile] between processes (and
// between StateLocks in one process), held until Close.
type StateLock struct {
	l *statefile.Lock
}

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
// process never leaves it held. Where flock(2) does not exist, Lock fails
// with an error wrapping nodeplane.ErrNotSupported.
func (s *StateFile) Lock(ctx context.Context) (*StateLock, error) {
	l, err := statefile.WaitLockFile(ctx, s.f.LockPath())
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	return &StateLock{l: l}, nil
}

// Close releases the lock. Closing it twice is an error wrapping
// nodeplane.ErrClosed.
func (l *StateLock) Close() error {
	if err := l.l.Close(); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return nil
}
