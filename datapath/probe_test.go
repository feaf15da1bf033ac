package datapath

import (
	"errors"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// kernelVersion returns the running kernel's major and minor version.
func kernelVersion(tb testing.TB) (major, minor int) {
	tb.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		tb.Fatal(err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		tb.Fatalf("kernel release %q: %v", release, err)
	}
	return major, minor
}

// TestPrivilegedTCXProbeMatchesKernelVersion checks the tcx probe against
// the kernel's version (tcx is in mainline Linux since 6.6), and that a
// Datapath left to choose attaches with tcx exactly when the probe says
// so, and with tc clsact otherwise. .ci/vmtest runs it on 6.1, where the
// answer is tc.
func TestPrivilegedTCXProbeMatchesKernelVersion(t *testing.T) {
	testutils.RequirePrivileged(t)
	major, minor := kernelVersion(t)
	want := major > 6 || major == 6 && minor >= 6

	err := HaveTCX()
	if err != nil && !errors.Is(err, nodeplane.ErrNotSupported) {
		t.Fatalf("tcx probe could not tell: %v", err)
	}
	if got := err == nil; got != want {
		t.Fatalf("Linux %d.%d: tcx probe says supported=%v (%v), want %v", major, minor, got, err, want)
	}

	d, _ := newTestDatapath(t, Config{})
	wantMode := AttachTC
	if want {
		wantMode = AttachTCX
	}
	if got := d.AttachMode(); got != wantMode {
		t.Fatalf("Linux %d.%d: AttachAuto chose %s, want %s", major, minor, got, wantMode)
	}
	t.Logf("Linux %d.%d attaches with %s", major, minor, wantMode)
}
