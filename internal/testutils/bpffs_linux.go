package testutils

import (
	"testing"

	"golang.org/x/sys/unix"
)

// NewBPFFS mounts a private bpffs instance in a temporary directory and
// returns its path. It is unmounted by tb.Cleanup, which also drops every
// pin inside it.
func NewBPFFS(tb testing.TB) string {
	tb.Helper()
	RequirePrivileged(tb)
	dir := tb.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		tb.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	// Registered after TempDir's own cleanup, so it runs before it.
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmount bpffs %s: %v", dir, err)
		}
	})
	return dir
}
