//go:build !linux

package lb

import (
	"fmt"
	"net/netip"

	"github.com/nodeplane/nodeplane"
)

// LB is the socket-layer load balancer; it needs Linux.
type LB struct{}

var errNotLinux = fmt.Errorf("socket load balancing needs Linux: %w", nodeplane.ErrNotSupported)

// HaveSocketLB reports that socket load balancing needs Linux.
func HaveSocketLB() error { return errNotLinux }

// New fails: socket load balancing needs Linux.
func New(Config) (*LB, error) { return nil, errNotLinux }

func (*LB) Close() error                                     { return nil }
func (*LB) Upsert(Service, []Backend) (ServiceID, error)     { return 0, errNotLinux }
func (*LB) UpsertBackends(Frontend, ...Backend) error        { return errNotLinux }
func (*LB) DeleteBackends(Frontend, ...netip.AddrPort) error { return errNotLinux }
func (*LB) Delete(Frontend) error                            { return errNotLinux }
func (*LB) Lookup(Frontend) (Service, []Backend, bool)       { return Service{}, nil, false }
func (*LB) SetHostAddresses(...netip.Addr) error             { return errNotLinux }
func (*LB) Services() []Frontend                             { return nil }
