package testutils

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Cgroup is a private cgroup2 directory that lives until the test ends.
type Cgroup struct {
	// Path is the directory in the cgroup2 hierarchy.
	Path string
	root string
}

// NewCgroup creates a fresh cgroup2 directory below the cgroup2 mount. At
// cleanup every process still in it is moved to the root and it is removed.
func NewCgroup(tb testing.TB) *Cgroup {
	tb.Helper()
	RequirePrivileged(tb)
	root, err := Cgroup2Root()
	if err != nil {
		tb.Fatal(err)
	}
	dir, err := os.MkdirTemp(root, "nodeplane-test-")
	if err != nil {
		tb.Fatalf("create cgroup: %v", err)
	}
	cg := &Cgroup{Path: dir, root: root}
	tb.Cleanup(func() {
		if err := cg.remove(); err != nil {
			tb.Errorf("remove cgroup %s: %v", dir, err)
		}
	})
	return cg
}

// Open returns a directory fd of the cgroup, for
// syscall.SysProcAttr.CgroupFD (CLONE_INTO_CGROUP) and BPF attachment.
// The caller closes it.
func (cg *Cgroup) Open() (*os.File, error) {
	return os.OpenFile(cg.Path, os.O_RDONLY|unix.O_DIRECTORY, 0)
}

// AddProcess moves the process pid into the cgroup.
func (cg *Cgroup) AddProcess(pid int) error {
	return os.WriteFile(filepath.Join(cg.Path, "cgroup.procs"), []byte(fmt.Sprint(pid)), 0)
}

func (cg *Cgroup) remove() error {
	procs, err := os.ReadFile(filepath.Join(cg.Path, "cgroup.procs"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	for _, pid := range strings.Fields(string(procs)) {
		// A process that exited meanwhile makes this fail; that is fine.
		_ = os.WriteFile(filepath.Join(cg.root, "cgroup.procs"), []byte(pid), 0)
	}
	if err := os.Remove(cg.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// Cgroup2Root returns the mount point of the cgroup2 hierarchy, which is
// /sys/fs/cgroup on unified systems and /sys/fs/cgroup/unified on hybrid
// ones.
func Cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// "36 35 0:30 / /sys/fs/cgroup/unified rw,... - cgroup2 cgroup2 rw"
		fields := strings.Fields(s.Text())
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" && len(fields) > 4 {
				return fields[4], nil
			}
		}
	}
	if err := s.Err(); err != nil {
		return "", err
	}
	return "", errors.New("no cgroup2 hierarchy mounted")
}
