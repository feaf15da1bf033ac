package testutils

import (
	"fmt"
	"os/exec"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NetNS is an anonymous network namespace that lives until the test ends.
// It has a loopback interface that is up and nothing else.
type NetNS struct {
	handle netns.NsHandle
}

// NewNetNS returns a fresh network namespace, closed by tb.Cleanup. The
// namespace disappears with its last reference: the handle, an interface
// moved into it, or a process started in it.
func NewNetNS(tb testing.TB) *NetNS {
	tb.Helper()
	ns, err := newNetNS()
	if err != nil {
		tb.Fatalf("create netns: %v", err)
	}
	tb.Cleanup(func() { ns.handle.Close() })

	if err := ns.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		tb.Fatalf("bring up loopback: %v", err)
	}
	return ns
}

func newNetNS() (*NetNS, error) {
	var ns *NetNS
	err := onLockedThread(func() (bool, error) {
		orig, err := netns.Get()
		if err != nil {
			return true, fmt.Errorf("get current netns: %w", err)
		}
		defer orig.Close()

		h, err := netns.New()
		if err != nil {
			// netns.New only switches the thread once unshare succeeded.
			return netns.Set(orig) == nil, fmt.Errorf("unshare netns: %w", err)
		}
		ns = &NetNS{handle: h}
		if err := netns.Set(orig); err != nil {
			h.Close()
			return false, fmt.Errorf("restore netns: %w", err)
		}
		return true, nil
	})
	return ns, err
}

// Handle returns the namespace's file descriptor as a netns handle, for
// netlink.NewHandleAt and LinkSetNsFd. It stays owned by ns.
func (ns *NetNS) Handle() netns.NsHandle { return ns.handle }

// FD returns the namespace's file descriptor, owned by ns.
func (ns *NetNS) FD() int { return int(ns.handle) }

// Do runs fn on a fresh OS thread that has entered the namespace, and waits
// for it. fn must not start goroutines that expect to be in the namespace
// (they may run on other threads), and must not unlock the OS thread.
func (ns *NetNS) Do(fn func() error) error {
	var fnErr error
	err := onLockedThread(func() (bool, error) {
		orig, err := netns.Get()
		if err != nil {
			return true, fmt.Errorf("get current netns: %w", err)
		}
		defer orig.Close()
		if err := netns.Set(ns.handle); err != nil {
			return netns.Set(orig) == nil, fmt.Errorf("enter netns: %w", err)
		}
		fnErr = fn()
		if err := netns.Set(orig); err != nil {
			return false, fmt.Errorf("leave netns: %w", err)
		}
		return true, nil
	})
	if err != nil {
		return err
	}
	return fnErr
}

// Start starts cmd inside the namespace. The child inherits the namespace of
// the thread that forks it, so the namespace applies to the whole process.
func (ns *NetNS) Start(cmd *exec.Cmd) error {
	return ns.Do(cmd.Start)
}

// Run runs cmd inside the namespace and waits for it.
func (ns *NetNS) Run(cmd *exec.Cmd) error {
	if err := ns.Start(cmd); err != nil {
		return err
	}
	return cmd.Wait()
}

// Netlink returns a netlink handle bound to the namespace, closed by
// tb.Cleanup.
func (ns *NetNS) Netlink(tb testing.TB) *netlink.Handle {
	tb.Helper()
	h, err := netlink.NewHandleAt(ns.handle)
	if err != nil {
		tb.Fatalf("netlink handle in netns: %v", err)
	}
	tb.Cleanup(func() {
		if err := h.Close(); err != nil {
			tb.Errorf("close netlink handle: %v", err)
		}
	})
	return h
}

// onLockedThread runs fn on a new goroutine locked to its OS thread. fn
// reports whether the thread is clean again (back in its original
// namespace); a thread that is not is never unlocked, so the Go runtime
// destroys it instead of reusing it.
func onLockedThread(fn func() (clean bool, err error)) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		clean, err := fn()
		if clean {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}
