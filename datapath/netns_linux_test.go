package datapath

import (
	"errors"
	"os"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// A NetNS names itself by a path the datapath can open, runs code inside,
// and after Close refuses Do with nodeplane.ErrClosed; closing twice is fine.
func TestPrivilegedNetNS(t *testing.T) {
	testutils.RequirePrivileged(t)
	ns, err := NewNetNS()
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	target, err := os.Readlink(ns.Path())
	if err != nil || target == self {
		t.Fatalf("Path %s -> %q (%v); this process is in %q", ns.Path(), target, err, self)
	}
	var inside string
	if err := ns.Do(func() (err error) {
		inside, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	}); err != nil || inside != target {
		t.Fatalf("Do ran in %q (%v), want %q", inside, err, target)
	}
	if err := ns.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ns.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := ns.Do(func() error { return nil }); !errors.Is(err, nodeplane.ErrClosed) {
		t.Fatalf("Do after Close = %v, want nodeplane.ErrClosed", err)
	}
}
