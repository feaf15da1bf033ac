// Package netnsutil runs code inside network namespaces: the one copy of
// the locked-thread dance that setns(2) needs in Go, used by datapath and
// the test utilities.
package netnsutil

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Do runs fn on a fresh goroutine locked to its OS thread that has entered
// ns, and waits for it. fn must not start goroutines that expect to be in
// the namespace (they may run on other threads), and must not unlock the
// thread.
func Do(ns netns.NsHandle, fn func() error) error {
	return onThread(func(orig netns.NsHandle) (bool, error) {
		if err := netns.Set(ns); err != nil {
			return netns.Set(orig) == nil, fmt.Errorf("enter namespace: %w", err)
		}
		fnErr := fn()
		if err := netns.Set(orig); err != nil {
			return false, errors.Join(fnErr, fmt.Errorf("leave namespace: %w", err))
		}
		return true, fnErr
	})
}

// onThread runs fn on a fresh goroutine locked to its OS thread, with the
// thread's namespace, and waits for it. fn reports whether the thread is
// back in that namespace; a thread that is not stays locked, so the runtime
// retires it rather than reuse it.
func onThread(fn func(orig netns.NsHandle) (back bool, err error)) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current namespace: %w", err)
			return
		}
		back, err := fn(orig)
		orig.Close()
		if back {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// New creates an anonymous network namespace with its loopback interface
// up, without moving the calling thread into it. The namespace lives as
// long as a reference to it: the returned handle, an interface moved into
// it, or a process started in it.
func New() (netns.NsHandle, error) {
	h := netns.None()
	err := onThread(func(orig netns.NsHandle) (bool, error) {
		nh, err := netns.New()
		if err != nil {
			// netns.New only switches the thread once unshare succeeded.
			return netns.Set(orig) == nil, fmt.Errorf("create namespace: %w", err)
		}
		if err := netns.Set(orig); err != nil {
			nh.Close()
			return false, fmt.Errorf("leave new namespace: %w", err)
		}
		h = nh
		return true, nil
	})
	if err != nil {
		return netns.None(), err
	}
	if err := Do(h, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		h.Close()
		return netns.None(), fmt.Errorf("bring up loopback: %w", err)
	}
	return h, nil
}
