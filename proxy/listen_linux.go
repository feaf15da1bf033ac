package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/internal/netnsutil"
)

// inNodeNS runs fn in cfg's node namespace (directly for the caller's).
func inNodeNS(cfg Config, fn func() error) error {
	if cfg.NodeNetNS == "" {
		return fn()
	}
	ns, err := netns.GetFromPath(cfg.NodeNetNS)
	if err != nil {
		return fmt.Errorf("proxy: node namespace %s: %w", cfg.NodeNetNS, err)
	}
	defer ns.Close()
	return netnsutil.Do(ns, fn)
}

// transparent sets IP_TRANSPARENT and IPV6_TRANSPARENT (CAP_NET_ADMIN), and
// with origDst the options that report a datagram's original destination.
func transparent(origDst bool) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			opts := [][2]int{{unix.SOL_IP, unix.IP_TRANSPARENT}, {unix.SOL_IPV6, unix.IPV6_TRANSPARENT}}
			if origDst {
				opts = append(opts, [2]int{unix.SOL_IP, unix.IP_RECVORIGDSTADDR},
					[2]int{unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR})
			}
			for _, o := range opts {
				if serr = unix.SetsockoptInt(int(fd), o[0], o[1], 1); serr != nil {
					serr = fmt.Errorf("setsockopt %d/%d: %w", o[0], o[1], serr)
					return
				}
			}
		})
		return errors.Join(err, serr)
	}
}

// ListenTCP returns a transparent TCP listener on the wildcard address and
// port, IPv4 and IPv6, in the node's namespace: the socket the datapath
// assigns redirected connections to. An accepted connection's LocalAddr is
// its original destination ([OriginalDestination]).
func ListenTCP(cfg Config, port uint16) (*net.TCPListener, error) {
	var l net.Listener
	err := inNodeNS(cfg, func() (err error) {
		lc := net.ListenConfig{Control: transparent(false)}
		l, err = lc.Listen(context.Background(), "tcp", net.JoinHostPort("::", strconv.Itoa(int(port))))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("proxy: listen on TCP port %d: %w", port, err)
	}
	return l.(*net.TCPListener), nil
}

// UDPConn is a transparent UDP socket on the wildcard address and a proxy
// port, IPv4 and IPv6, that reports each datagram's original destination
// and answers from it.
type UDPConn struct {
	c *net.UDPConn
}

// ListenUDP returns the UDP socket the datapath assigns redirected
// datagrams to.
func ListenUDP(cfg Config, port uint16) (*UDPConn, error) {
	var pc net.PacketConn
	err := inNodeNS(cfg, func() (err error) {
		lc := net.ListenConfig{Control: transparent(true)}
		pc, err = lc.ListenPacket(context.Background(), "udp", net.JoinHostPort("::", strconv.Itoa(int(port))))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("proxy: listen on UDP port %d: %w", port, err)
	}
	return &UDPConn{c: pc.(*net.UDPConn)}, nil
}

// ReadFrom reads one datagram into b and returns its length, its source
// and its original destination. A datagram whose original destination the
// kernel did not report returns ErrNoOriginalDestination (with n and src
// valid); the socket stays usable.
func (u *UDPConn) ReadFrom(b []byte) (n int, src, origDst netip.AddrPort, err error) {
	var oob [128]byte
	n, oobn, _, from, err := u.c.ReadMsgUDPAddrPort(b, oob[:])
	if err != nil {
		return 0, netip.AddrPort{}, netip.AddrPort{}, err
	}
	src = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return n, src, netip.AddrPort{}, fmt.Errorf("%w: %v", ErrNoOriginalDestination, err)
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= unix.SizeofSockaddrInet4:
			port := binary.BigEndian.Uint16(m.Data[2:4])
			return n, src, netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[4:8])), port), nil
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(m.Data) >= unix.SizeofSockaddrInet6:
			port := binary.BigEndian.Uint16(m.Data[2:4])
			return n, src, netip.AddrPortFrom(netip.AddrFrom16([16]byte(m.Data[8:24])).Unmap(), port), nil
		}
	}
	return n, src, netip.AddrPort{}, ErrNoOriginalDestination
}

// WriteFrom sends b to dst with from as its source address (the original
// destination of the datagram it answers; the socket is transparent, so
// the address need not be the node's). from's port must be the original
// destination's too: the kernel sends from the proxy port otherwise, so
// WriteFrom sends through a socket bound to from, made for the call.
func (u *UDPConn) WriteFrom(b []byte, from, to netip.AddrPort) (int, error) {
	if from.Addr().Is4() != to.Addr().Is4() {
		return 0, fmt.Errorf("proxy: answer from %v to %v: address families differ", from, to)
	}
	fam, sa, dsa := unix.AF_INET6, sockaddr(from), sockaddr(to)
	if from.Addr().Is4() {
		fam = unix.AF_INET
	}
	// A UDP socket sends from its bound port only: bind a transparent
	// socket to the original destination, in the proxy socket's
	// namespace (a socket made on any thread of this process starts in
	// the thread's namespace, so take the namespace from u's socket).
	fd, err := u.socketLikeSelf(fam)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	for _, o := range [][3]int{{unix.SOL_IP, unix.IP_TRANSPARENT, 1}, {unix.SOL_SOCKET, unix.SO_REUSEADDR, 1}} {
		if fam == unix.AF_INET6 && o[1] == unix.IP_TRANSPARENT {
			o = [3]int{unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1}
		}
		if err := unix.SetsockoptInt(fd, o[0], o[1], o[2]); err != nil {
			return 0, fmt.Errorf("proxy: answer socket: %w", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return 0, fmt.Errorf("proxy: bind answer socket to %v: %w", from, err)
	}
	if err := unix.Sendto(fd, b, 0, dsa); err != nil {
		return 0, fmt.Errorf("proxy: answer %v -> %v: %w", from, to, err)
	}
	return len(b), nil
}

// socketLikeSelf makes a UDP socket in the namespace of u's socket.
func (u *UDPConn) socketLikeSelf(fam int) (int, error) {
	rc, err := u.c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var nsfd int = -1
	var cerr error
	err = rc.Control(func(fd uintptr) {
		// SIOCGSKNS returns a descriptor of the socket's namespace.
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, unix.SIOCGSKNS, 0)
		if errno != 0 {
			cerr = errno
			return
		}
		nsfd = int(r)
	})
	if err = errors.Join(err, cerr); err != nil {
		return -1, fmt.Errorf("proxy: namespace of the proxy socket: %w", err)
	}
	ns := netns.NsHandle(nsfd)
	defer ns.Close()
	fd := -1
	err = netnsutil.Do(ns, func() (err error) {
		fd, err = unix.Socket(fam, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("proxy: answer socket: %w", err)
	}
	return fd, nil
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// SetReadDeadline sets the deadline of ReadFrom; Close unblocks it too.
func (u *UDPConn) SetReadDeadline(t time.Time) error { return u.c.SetReadDeadline(t) }

// LocalAddr is the socket's address (the wildcard and the proxy port).
func (u *UDPConn) LocalAddr() net.Addr { return u.c.LocalAddr() }

// Close closes the socket.
func (u *UDPConn) Close() error { return u.c.Close() }

// Dialer opens a proxy's upstream connections: in the node's namespace,
// with the mark that carries the source's identity ([UpstreamMark]).
type Dialer struct {
	Config Config
	// Timeout bounds the connect (default 10s).
	Timeout time.Duration
}

// Dial connects to dst over network ("tcp" or "udp") with socket mark
// mark.
func (d Dialer) Dial(ctx context.Context, network string, dst netip.AddrPort, mark uint32) (net.Conn, error) {
	timeout := d.Timeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	var c net.Conn
	err := inNodeNS(d.Config, func() (err error) {
		nd := net.Dialer{Timeout: timeout, Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
			})
			return errors.Join(err, serr)
		}}
		c, err = nd.DialContext(ctx, network, dst.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("proxy: upstream %s %v: %w", network, dst, err)
	}
	return c, nil
}
