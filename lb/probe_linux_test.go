package lb

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// TestProbeSocketLBReadsErrors feeds the probe the errors a kernel gives
// and checks that only a missing hook or helper becomes ErrNotSupported: a
// permission problem or another verifier complaint must be reported, or it
// would skip the whole kernel suite.
func TestProbeSocketLBReadsErrors(t *testing.T) {
	verifier := func(cause error, log ...string) error {
		return fmt.Errorf("load program: %w", &ebpf.VerifierError{Cause: cause, Log: log})
	}
	for _, tc := range []struct {
		name    string
		err     error
		missing bool
	}{
		{"loads", nil, false},
		{"no permission (EACCES)", fmt.Errorf("load program: %w", unix.EACCES), false},
		{"no permission (EPERM)", fmt.Errorf("load program: %w", unix.EPERM), false},
		{"verifier EACCES", verifier(unix.EACCES, "0: (85) call bpf_set_retval#187", "R1 !read_ok"), false},
		{"other verifier EINVAL", verifier(unix.EINVAL, "0: (b7) r0 = 1", "At program exit the register R0 has smin=1 smax=1 should have been in [0, 0]"), false},
		{"out of memory", fmt.Errorf("load program: %w", unix.ENOMEM), false},
		{"unknown attach type", fmt.Errorf("load program: %w", unix.EINVAL), true},
		{"unknown helper", verifier(unix.EINVAL, "4: (85) call unknown#187", "invalid func unknown#187"), true},
		{"helper not for this program type", verifier(unix.EINVAL, "program of this type cannot use helper bpf_set_retval#187"), true},
		{"load attributes too new", fmt.Errorf("load program: %w", unix.E2BIG), true},
		{"cilium/ebpf says not supported", fmt.Errorf("load program: %w", ebpf.ErrNotSupported), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := probeSocketLBWith(func(*ebpf.ProgramSpec) error { calls++; return tc.err })
			if tc.err == nil {
				if err != nil || calls != 8 {
					t.Fatalf("probe = %v after %d loads, want nil after 8", err, calls)
				}
				return
			}
			if got := errors.Is(err, nodeplane.ErrNotSupported); got != tc.missing {
				t.Fatalf("probe = %v; ErrNotSupported %v, want %v", err, got, tc.missing)
			}
			if !errors.Is(err, tc.err) && !errors.Is(err, errors.Unwrap(tc.err)) {
				t.Fatalf("probe = %v does not wrap the load error", err)
			}
		})
	}
}

// TestPrivilegedHaveSocketLB runs the probe afresh, not from the cache, and
// checks that the cached answer agrees; on this project's 6.18 kernels the
// answer is nil.
func TestPrivilegedHaveSocketLB(t *testing.T) {
	testutils.RequirePrivileged(t)
	fresh := probeSocketLB()
	testutils.SkipIfNotSupported(t, fresh)
	if cached := HaveSocketLB(); cached != nil {
		t.Fatalf("a fresh probe found socket LB, the cached answer says %v", cached)
	}
}
