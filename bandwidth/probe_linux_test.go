package bandwidth

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/internal/testutils/testmain"
)

func TestMain(m *testing.M) { testmain.Run(m) }

// TestPrivilegedProbes checks the probes against an independent source:
// whether the kernel knows the sch_fq module (built in or on disk) and
// whether it is 5.18 or newer.
func TestPrivilegedProbes(t *testing.T) {
	testutils.RequirePrivileged(t)

	err := HaveEDT()
	if err != nil && !errors.Is(err, nodeplane.ErrNotSupported) {
		t.Fatalf("HaveEDT: %v", err)
	}
	t.Logf("HaveEDT: %v", err)
	if again := HaveEDT(); (again == nil) != (err == nil) {
		t.Fatalf("HaveEDT changed its answer: %v, then %v", err, again)
	}
	if want := kernelHasModule(t, "sch_fq"); (err == nil) != want {
		t.Errorf("HaveEDT = %v, but the kernel's module lists say sch_fq present=%v", err, want)
	}

	err = HaveDeliveryTime()
	if err != nil && !errors.Is(err, nodeplane.ErrNotSupported) {
		t.Fatalf("HaveDeliveryTime: %v", err)
	}
	t.Logf("HaveDeliveryTime: %v", err)
	if want := kernelAtLeast(t, 5, 18); (err == nil) != want {
		t.Errorf("HaveDeliveryTime = %v on a kernel where >= 5.18 is %v", err, want)
	}
}

// kernelHasModule reports whether the running kernel has a module, built in
// or loaded (/sys/module) or on disk (modules.builtin, modules.dep).
func kernelHasModule(t *testing.T, name string) bool {
	t.Helper()
	if _, err := os.Stat("/sys/module/" + name); err == nil {
		return true
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	dir := "/lib/modules/" + unix.ByteSliceToString(uts.Release[:])
	for _, f := range []string{"modules.builtin", "modules.dep"} {
		b, err := os.ReadFile(dir + "/" + f)
		if err != nil {
			continue
		}
		if strings.Contains(string(b), "/"+name+".ko") {
			return true
		}
	}
	return false
}

// kernelAtLeast compares the running kernel's release with major.minor.
func kernelAtLeast(t *testing.T, major, minor int) bool {
	t.Helper()
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	var maj, min int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(uts.Release[:]), "%d.%d", &maj, &min); err != nil {
		t.Fatalf("kernel release: %v", err)
	}
	return maj > major || maj == major && min >= minor
}
