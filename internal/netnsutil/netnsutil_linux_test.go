package netnsutil_test

import (
	"errors"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/nodeplane/nodeplane/internal/netnsutil"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/internal/testutils/testmain"
)

func TestMain(m *testing.M) { testmain.Run(m) }

// New makes a namespace other than the caller's; Do runs in it and leaves
// the caller where it was, returning fn's error.
func TestPrivilegedNewDo(t *testing.T) {
	testutils.RequirePrivileged(t)
	h, err := netnsutil.New()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	here := func() netns.NsHandle {
		cur, err := netns.Get()
		if err != nil {
			t.Fatal(err)
		}
		return cur
	}
	before := here()
	defer before.Close()
	if before.Equal(h) {
		t.Fatal("New returned the caller's namespace")
	}
	errFn := errors.New("from fn")
	err = netnsutil.Do(h, func() error {
		inside, err := netns.Get()
		if err != nil {
			return err
		}
		defer inside.Close()
		if !inside.Equal(h) {
			return errors.New("fn does not run in the namespace")
		}
		return errFn
	})
	if !errors.Is(err, errFn) {
		t.Fatalf("Do = %v, want fn's error", err)
	}
	after := here()
	defer after.Close()
	if !after.Equal(before) {
		t.Fatal("the caller's thread changed namespace")
	}
}
