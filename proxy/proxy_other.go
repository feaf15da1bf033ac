//go:build !linux

package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/nodeplane/nodeplane"
)

var errNotLinux = fmt.Errorf("proxy: transparent proxying needs Linux: %w", nodeplane.ErrNotSupported)

// Routing is the node's routing for redirected packets; Linux only.
type Routing struct{}

// SetupRouting fails outside Linux.
func SetupRouting(Config) (*Routing, error) { return nil, errNotLinux }

// Close does nothing.
func (*Routing) Close() error { return nil }

// ListenTCP fails outside Linux.
func ListenTCP(Config, uint16) (*net.TCPListener, error) { return nil, errNotLinux }

// UDPConn is a transparent UDP socket; Linux only.
type UDPConn struct{}

// ListenUDP fails outside Linux.
func ListenUDP(Config, uint16) (*UDPConn, error) { return nil, errNotLinux }

// ReadFrom fails outside Linux.
func (*UDPConn) ReadFrom([]byte) (int, netip.AddrPort, netip.AddrPort, error) {
	return 0, netip.AddrPort{}, netip.AddrPort{}, errNotLinux
}

// WriteFrom fails outside Linux.
func (*UDPConn) WriteFrom([]byte, netip.AddrPort, netip.AddrPort) (int, error) { return 0, errNotLinux }

// SetReadDeadline fails outside Linux.
func (*UDPConn) SetReadDeadline(time.Time) error { return errNotLinux }

// LocalAddr is nil outside Linux.
func (*UDPConn) LocalAddr() net.Addr { return nil }

// Close does nothing.
func (*UDPConn) Close() error { return nil }

// Dialer opens upstream connections; Linux only.
type Dialer struct {
	Config  Config
	Timeout time.Duration
}

// Dial fails outside Linux.
func (Dialer) Dial(context.Context, string, netip.AddrPort, uint32) (net.Conn, error) {
	return nil, errNotLinux
}
