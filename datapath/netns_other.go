//go:build !linux

package datapath

type netNS struct{}

// NewNetNS creates a network namespace; never outside Linux.
func NewNetNS() (*NetNS, error) { return nil, errNotLinux }

// Path returns "" outside Linux.
func (*NetNS) Path() string { return "" }

// Do fails outside Linux.
func (*NetNS) Do(func() error) error { return errNotLinux }

// Close does nothing outside Linux.
func (*NetNS) Close() error { return nil }
