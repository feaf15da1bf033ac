//go:build !linux

package datapath

import (
	"fmt"
	"runtime"
	"time"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/statefile"
)

var errNotLinux = fmt.Errorf("datapath on %s: %w", runtime.GOOS, nodeplane.ErrNotSupported)

// HaveTCX reports whether the kernel can attach programs with tcx links;
// never outside Linux.
func HaveTCX() error { return errNotLinux }

// MonotonicNow returns the current CLOCK_MONOTONIC time; outside Linux, the
// time since an arbitrary point.
func MonotonicNow() time.Duration { return time.Since(time.Time{}) }

type nodeNamespace struct{}

func openNodeNamespace(string) (*nodeNamespace, error) { return nil, errNotLinux }

func (*nodeNamespace) close() error { return nil }

func (*nodeNamespace) plumb(EndpointConfig) (hostLink, error) { return hostLink{}, errNotLinux }

func (*nodeNamespace) unplumb(EndpointConfig, hostLink) error { return errNotLinux }

type attachment interface {
	release() error
	detach() error
	replace(*ebpf.Program) error
}

func (*nodeNamespace) attach(AttachMode, int, *endpointPrograms, string) ([]attachment, error) {
	return nil, errNotLinux
}

func lockBPFFSDir(string) (*statefile.Lock, error) { return nil, errNotLinux }

type hostInspection struct {
	host    hostLink
	stale   string
	repairs []string
}

func (*hostInspection) close() {}

func (*nodeNamespace) inspectHost(endpointRecord, string) (*hostInspection, error) {
	return nil, errNotLinux
}

func (*nodeNamespace) adoptAttachments(AttachMode, *hostInspection, *endpointPrograms, string) ([]attachment, error) {
	return nil, errNotLinux
}

func (*nodeNamespace) removeInterruptedHost(endpointRecord) error { return errNotLinux }
