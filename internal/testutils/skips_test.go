package testutils

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane/internal/feature"
)

// recorder is a testing.TB that records Skip and Fatal instead of ending
// the goroutine; outcome panics to stop the helper where the real TB would.
type recorder struct {
	testing.TB
	skipped, failed string
}

type stop struct{}

func (r *recorder) Helper()           {}
func (r *recorder) Skip(args ...any)  { r.skipped = fmt.Sprint(args...); panic(stop{}) }
func (r *recorder) Fatal(args ...any) { r.failed = fmt.Sprint(args...); panic(stop{}) }
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = fmt.Sprintf(format, args...)
	panic(stop{})
}
func (r *recorder) Skipf(format string, args ...any)  { r.Skip(fmt.Sprintf(format, args...)) }
func (r *recorder) Errorf(format string, args ...any) { r.failed = fmt.Sprintf(format, args...) }

func runSkipIfNotSupported(err error) (r *recorder) {
	r = &recorder{}
	defer func() {
		if p := recover(); p != nil && p != (stop{}) {
			panic(p)
		}
	}()
	SkipIfNotSupported(r, err)
	return r
}

func TestSkipIfNotSupportedAllowList(t *testing.T) {
	allowed := &feature.UnsupportedFeatureError{Name: "sch_fq qdisc"}
	notListed := &feature.UnsupportedFeatureError{Name: "socket load balancing (cgroup sock_addr hooks)", MinimumVersion: "5.18"}
	ebpfAllowed := fmt.Errorf("attach netkit: %w", ebpf.ErrNotSupported) // text names "netkit"
	other := errors.New("permission denied")

	for _, tc := range []struct {
		name        string
		requirePriv string
		err         error
		wantSkip    string // feature named by the skip, "" for no skip
		wantFail    bool
	}{
		{"nil", "1", nil, "", false},
		{"listed feature skips in CI", "1", allowed, "sch_fq qdisc", false},
		{"listed cilium/ebpf feature skips in CI", "1", ebpfAllowed, "netkit", false},
		{"unlisted feature fails in CI", "1", notListed, "", true},
		{"unlisted feature skips outside CI", "", notListed, notListed.Name, false},
		{"other error fails", "", other, "", true},
		{"other error fails in CI", "1", other, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(RequirePrivEnv, tc.requirePriv)
			r := runSkipIfNotSupported(tc.err)
			if got := r.failed != ""; got != tc.wantFail {
				t.Fatalf("failed=%v (%q), want %v", got, r.failed, tc.wantFail)
			}
			if tc.wantSkip == "" {
				if r.skipped != "" {
					t.Fatalf("skipped with %q, want no skip", r.skipped)
				}
				return
			}
			if !strings.HasPrefix(r.skipped, "kernel feature missing: ["+tc.wantSkip+"]: ") {
				t.Fatalf("skip message %q does not name %q", r.skipped, tc.wantSkip)
			}
			name, ok := AllowedSkip(r.skipped)
			if name != tc.wantSkip || ok != (tc.requirePriv == "1") {
				t.Fatalf("AllowedSkip(%q) = %q, %v", r.skipped, name, ok)
			}
		})
	}
}

func TestAllowedSkipRejectsOtherMessages(t *testing.T) {
	for _, msg := range []string{
		"",
		"iperf3 not installed",
		"privileged test needs CAP_BPF (run as root)",
		"kernel feature missing: tcx requires Linux 6.6 or newer", // no brackets: not from SkipIfNotSupported
		"kernel feature missing: [tcx]: tcx requires Linux 6.6 or newer",
		"kernel feature missing: [sch_fq qdisc",
	} {
		if name, ok := AllowedSkip(msg); ok {
			t.Errorf("AllowedSkip(%q) = %q, true; want false", msg, name)
		}
	}
	if name, ok := AllowedSkip("    x_test.go:12: kernel feature missing: [IPVS]: IPVS not supported by this kernel\n"); !ok || name != "IPVS" {
		t.Errorf("AllowedSkip of an IPVS skip = %q, %v", name, ok)
	}
}

// TestReadmeListsAllowedSkips keeps the README's table and the Go list equal.
func TestReadmeListsAllowedSkips(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	// The table right after the <!-- allowed-skips --> marker; it ends at
	// the first line that is not a table row.
	_, table, ok := strings.Cut(string(b), "<!-- allowed-skips -->\n")
	if !ok {
		t.Fatal("README.md has no <!-- allowed-skips --> marker before the table of allowed skips")
	}
	var rows []string
	for _, l := range strings.Split(table, "\n") {
		if !strings.HasPrefix(l, "|") {
			break
		}
		if strings.HasPrefix(l, "| `") {
			rows = append(rows, l)
		}
	}
	want := AllowedMissingFeatures()
	if len(rows) != len(want) {
		t.Fatalf("README lists %d missing features, internal/testutils/skips.go %d:\n%s", len(rows), len(want), strings.Join(rows, "\n"))
	}
	for i, f := range want {
		if row := fmt.Sprintf("| `%s` | %s |", f.Name, f.Reason); rows[i] != row {
			t.Errorf("README row %d is %q, want %q", i, rows[i], row)
		}
	}
}
