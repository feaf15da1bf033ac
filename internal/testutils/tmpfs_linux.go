package testutils

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// Tmpfs is a small private tmpfs mounted on a test's temporary directory,
// to run code out of disk space.
type Tmpfs struct {
	Dir    string
	filler string
}

// NewTmpfs mounts a tmpfs of size bytes (rounded up to pages) on a
// temporary directory and returns it. It is unmounted by tb.Cleanup.
func NewTmpfs(tb testing.TB, size int) *Tmpfs {
	tb.Helper()
	RequirePrivileged(tb)
	dir := tb.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size="+itoa(size)); err != nil {
		tb.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	// Registered after TempDir's own cleanup, so it runs before it.
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmount tmpfs %s: %v", dir, err)
		}
	})
	return &Tmpfs{Dir: dir, filler: filepath.Join(dir, ".filler")}
}

// Fill writes a filler file until the file system is full (ENOSPC).
func (fs *Tmpfs) Fill(tb testing.TB) {
	tb.Helper()
	f, err := os.OpenFile(fs.filler, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	block := bytes.Repeat([]byte{0xaa}, 4096)
	for {
		if _, err := f.Write(block); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				tb.Fatalf("fill tmpfs: %v", err)
			}
			return
		}
	}
}

// Free removes the filler file.
func (fs *Tmpfs) Free(tb testing.TB) {
	tb.Helper()
	if err := os.Remove(fs.filler); err != nil {
		tb.Fatal(err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
