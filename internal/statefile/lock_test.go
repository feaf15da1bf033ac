//go:build unix

package statefile

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
)

func TestTryLockFileExcludes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.lock")
	l1, err := TryLockFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := TryLockFile(path); !errors.Is(err, ErrLocked) {
		if l != nil {
			l.Close()
		}
		t.Fatalf("second TryLockFile while held: %v, want ErrLocked", err)
	}
	if err := l1.Close(); err != nil {
		t.Fatal(err)
	}
	l2, err := TryLockFile(path)
	if err != nil {
		t.Fatalf("TryLockFile after release: %v", err)
	}
	l2.Close()
	if err := l1.Close(); !errors.Is(err, nodeplane.ErrClosed) {
		t.Fatalf("second Close: %v, want nodeplane.ErrClosed", err)
	}
}

func TestWaitLockFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.lock")
	l1, err := WaitLockFile(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if l, err := WaitLockFile(ctx, path); !errors.Is(err, ErrLocked) || !errors.Is(err, context.DeadlineExceeded) {
		if l != nil {
			l.Close()
		}
		t.Fatalf("WaitLockFile while held: %v, want ErrLocked and the deadline", err)
	}
	got := make(chan error, 1)
	go func() {
		l, err := WaitLockFile(context.Background(), path)
		if err == nil {
			err = l.Close()
		}
		got <- err
	}()
	time.Sleep(20 * time.Millisecond)
	select {
	case err := <-got:
		t.Fatalf("lock taken while held: %v", err)
	default:
	}
	l1.Close()
	if err := <-got; err != nil {
		t.Fatalf("waiting lock after release: %v", err)
	}
}

func TestTryLockDir(t *testing.T) {
	dir := t.TempDir()
	l1, err := TryLockDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Close()
	if l, err := TryLockDir(dir); !errors.Is(err, ErrLocked) {
		if l != nil {
			l.Close()
		}
		t.Fatalf("second TryLockDir: %v, want ErrLocked", err)
	}
	missing := filepath.Join(dir, "missing")
	if l, err := TryLockDir(missing); err == nil || errors.Is(err, ErrLocked) {
		if l != nil {
			l.Close()
		}
		t.Fatalf("TryLockDir of a missing directory: %v, want an open error", err)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("TryLockDir created %s: %v", missing, err)
	}
}
