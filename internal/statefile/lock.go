package statefile

import (
	"context"
	"fmt"
	"os"

	"github.com/nodeplane/nodeplane"
)

// Lock is an exclusive flock(2) on a file or directory, held until Close.
// The kernel releases it when the descriptor closes, with the process if
// need be, so a crashed holder never leaves it held. Two Locks on one path
// exclude each other within a process too.
type Lock struct {
	f *os.File
}

// TryLockFile locks the file at path, creating it if missing, or fails at
// once with [ErrLocked].
func TryLockFile(path string) (*Lock, error) {
	return lockPath(context.Background(), path, false, false)
}

// WaitLockFile locks the file at path, creating it if missing, and waits
// while another holder has it until ctx is done.
func WaitLockFile(ctx context.Context, path string) (*Lock, error) {
	return lockPath(ctx, path, false, true)
}

// TryLockDir locks the existing directory dir, or fails at once with
// [ErrLocked].
func TryLockDir(dir string) (*Lock, error) {
	return lockPath(context.Background(), dir, true, false)
}

// lockPath opens path (a directory if dir) and locks it, waiting for a
// held lock until ctx is done if wait.
func lockPath(ctx context.Context, path string, dir, wait bool) (*Lock, error) {
	var (
		f   *os.File
		err error
	)
	if dir {
		f, err = os.Open(path)
	} else {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	}
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := flock(ctx, f, wait); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return &Lock{f: f}, nil
}

// Close releases the lock. Closing it twice fails with an error wrapping
// [nodeplane.ErrClosed].
func (l *Lock) Close() error {
	if l.f == nil {
		return fmt.Errorf("unlock: %w", nodeplane.ErrClosed)
	}
	// Closing the descriptor releases the flock.
	err := l.f.Close()
	l.f = nil
	if err != nil {
		return fmt.Errorf("unlock: %w", err)
	}
	return nil
}
