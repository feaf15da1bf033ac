package testutils

import (
	"os/exec"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/nodeplane/nodeplane/internal/netnsutil"
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
	RequirePrivileged(tb)
	h, err := netnsutil.New()
	if err != nil {
		tb.Fatalf("create netns: %v", err)
	}
	tb.Cleanup(func() { h.Close() })
	return &NetNS{handle: h}
}

// Handle returns the namespace's file descriptor as a netns handle, for
// netlink.NewHandleAt and LinkSetNsFd. It stays owned by ns.
func (ns *NetNS) Handle() netns.NsHandle { return ns.handle }

// FD returns the namespace's file descriptor, owned by ns.
func (ns *NetNS) FD() int { return int(ns.handle) }

// Do runs fn on a fresh OS thread that has entered the namespace, and waits
// for it. fn must not start goroutines that expect to be in the namespace
// (they may run on other threads), and must not unlock the OS thread.
func (ns *NetNS) Do(fn func() error) error { return netnsutil.Do(ns.handle, fn) }

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
