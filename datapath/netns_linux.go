package datapath

import (
	"fmt"
	"os"
	"sync"

	"github.com/vishvananda/netns"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/netnsutil"
)

type netNS struct {
	mu     sync.Mutex
	handle netns.NsHandle
}

// NewNetNS creates an anonymous network namespace with its loopback
// interface up. The calling goroutine stays where it was.
func NewNetNS() (*NetNS, error) {
	h, err := netnsutil.New()
	if err != nil {
		return nil, fmt.Errorf("new network namespace: %w", err)
	}
	return &NetNS{netNS{handle: h}}, nil
}

// Path returns a path that names the namespace while it is open, for
// [EndpointConfig].NetNS: /proc/PID/fd/FD of this process.
func (ns *NetNS) Path() string {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), int(ns.handle))
}

// Do runs fn on an OS thread that has entered the namespace and waits for
// it. fn must not start goroutines that expect to be in the namespace: they
// may run on other threads.
func (ns *NetNS) Do(fn func() error) error {
	ns.mu.Lock()
	h := ns.handle
	ns.mu.Unlock()
	if !h.IsOpen() {
		return fmt.Errorf("network namespace: %w", nodeplane.ErrClosed)
	}
	return netnsutil.Do(h, fn)
}

// Close releases the namespace's file descriptor. Closing twice is not an
// error.
func (ns *NetNS) Close() error {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if !ns.handle.IsOpen() {
		return nil
	}
	err := ns.handle.Close()
	ns.handle = netns.None()
	return err
}
