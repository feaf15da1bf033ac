package lb

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// TestPrivilegedCloseReleasesEveryObject checks that Close gives back every
// program, map and link New took: the fds of BPF objects the process holds
// are counted before New, after it (at least one per program and map that
// bpf2go generated, plus the links) and after Close (as before). A map added
// to sock.c that Close forgot would keep its fd and fail the last count.
func TestPrivilegedCloseReleasesEveryObject(t *testing.T) {
	testutils.RequirePrivileged(t)
	testutils.SkipIfNotSupported(t, HaveSocketLB())
	for _, pinned := range []bool{false, true} {
		name := "unpinned"
		if pinned {
			name = "pinned"
		}
		t.Run(name, func(t *testing.T) {
			cfg := Config{Cgroup: testutils.NewCgroup(t).Path}
			if pinned {
				cfg.PinPath = testutils.NewBPFFS(t)
			}
			generated := taggedFields(reflect.TypeFor[sockPrograms]()) + taggedFields(reflect.TypeFor[sockMaps]())
			if generated < 2 {
				t.Fatalf("found %d generated objects; the ebpf tags moved?", generated)
			}
			before := countBPFFDs(t)
			lb, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			open := countBPFFDs(t)
			if want := before + generated + len(lb.links); open < want {
				lb.Close()
				t.Fatalf("%d BPF fds open after New, want at least %d (%d before, %d generated objects, %d links)",
					open, want, before, generated, len(lb.links))
			}
			if err := lb.Close(); err != nil {
				t.Fatal(err)
			}
			if after := countBPFFDs(t); after != before {
				t.Fatalf("%d BPF fds open after Close, %d before New: Close leaked %d", after, before, after-before)
			}
		})
	}
}

// taggedFields counts the fields bpf2go tagged with an object name.
func taggedFields(typ reflect.Type) int {
	n := 0
	for i := range typ.NumField() {
		if _, ok := typ.Field(i).Tag.Lookup("ebpf"); ok {
			n++
		}
	}
	return n
}

// countBPFFDs counts the process's fds that refer to BPF maps, programs and
// links.
func countBPFFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err == nil && strings.HasPrefix(target, "anon_inode:bpf") {
			n++
		}
	}
	return n
}
