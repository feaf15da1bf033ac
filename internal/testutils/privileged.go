package testutils

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
)

// RequirePrivEnv is the environment variable that turns a privilege skip into
// a failure. `.ci/run` sets it to 1.
const RequirePrivEnv = "NODEPLANE_REQUIRE_PRIV"

// privilegedCaps are the effective capabilities a kernel test needs: loading
// programs and maps, reading them back, changing links and routes, and
// mounting bpffs or entering namespaces.
var privilegedCaps = []struct {
	name string
	bit  uint
}{
	{"CAP_BPF", unix.CAP_BPF},
	{"CAP_PERFMON", unix.CAP_PERFMON},
	{"CAP_NET_ADMIN", unix.CAP_NET_ADMIN},
	{"CAP_SYS_ADMIN", unix.CAP_SYS_ADMIN},
}

// RequirePrivileged skips tb unless the process holds every capability a
// kernel test needs, or fails it when NODEPLANE_REQUIRE_PRIV=1.
func RequirePrivileged(tb testing.TB) {
	tb.Helper()
	missing, err := missingCaps()
	if err != nil {
		tb.Fatalf("read capabilities: %v", err)
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("privileged test needs %s (run as root)", strings.Join(missing, ", "))
	if os.Getenv(RequirePrivEnv) == "1" {
		tb.Fatalf("%s; %s=1 forbids skipping", msg, RequirePrivEnv)
	}
	tb.Skip(msg)
}

func missingCaps() ([]string, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("capget: %w", err)
	}
	var missing []string
	for _, c := range privilegedCaps {
		if data[c.bit/32].Effective&(1<<(c.bit%32)) == 0 {
			missing = append(missing, c.name)
		}
	}
	return missing, nil
}

// SkipIfNotSupported skips tb when err says that this kernel lacks a
// feature, fails it on any other error, and returns when err is nil.
//
// Under NODEPLANE_REQUIRE_PRIV=1 a missing feature skips only when it is on
// [AllowedMissingFeatures], the documented list of what the CI kernel
// lacks; any other missing feature fails the test, so that a probe that
// misreads an error cannot silently skip a suite in CI. The skip message
// names the feature in brackets ("kernel feature missing: [NAME]: ...") for
// the CI log check.
func SkipIfNotSupported(tb testing.TB, err error) {
	tb.Helper()
	if err == nil {
		return
	}
	if !errors.Is(err, nodeplane.ErrNotSupported) && !errors.Is(err, ebpf.ErrNotSupported) {
		tb.Fatal(err)
	}
	f, allowed := allowedFeature(err)
	if !allowed {
		if os.Getenv(RequirePrivEnv) == "1" {
			tb.Fatalf("kernel feature missing but not on the allowed list (internal/testutils/skips.go): %v; %s=1 forbids skipping", err, RequirePrivEnv)
		}
		tb.Skip(skipMessage(missingFeatureName(err), err))
	}
	tb.Skip(skipMessage(f.Name, err))
}
