package lb

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// The client agent is this test binary re-executed inside a client
// namespace and the test's cgroup, so that its sockets are subject to the
// socket load balancer while the test process's are not. The test drives it
// with one JSON command per line on stdin and reads one JSON answer per
// line on stdout.

const clientAgentEnv = "NODEPLANE_LB_TEST_CLIENT"

type clientCmd struct {
	// Op is one of:
	//   dial     connect Net/Addr, read the greeting, keep the connection as ID
	//   dials    Count times: connect, read the greeting, close
	//   echo     send Msg on connection ID and read it back
	//   close    close connection ID
	//   sendto   Count times: a fresh unconnected UDP socket of Net sends Msg
	//            to Addr and receives the answer
	//   udpconn  Count times: a fresh UDP socket of Net connects to Addr,
	//            sends Msg and receives the answer
	//   dialfor  connect and close for Millis milliseconds, counting
	//            greetings per backend, the client addresses the backends
	//            saw, the peers getpeername showed, and errors per errno
	//   netns    report the namespace cookie
	Op     string
	Net    string
	Local  string // local address to bind, for dial, dials and udpconn
	Addr   string
	ID     int
	Msg    string
	Count  int
	Millis int
}

type clientResult struct {
	Greeting string // first line from a TCP backend, or a UDP answer
	Peer     string // getpeername
	From     string // source of a received datagram
	Cookie   uint64 // SO_COOKIE of the socket
	Errno    int    // errno of a failed system call
	Err      string
}

type clientReply struct {
	Results []clientResult
	// For dialfor.
	Backends map[string]int
	Clients  map[string]int // client address (without port) as a backend saw it
	Peers    map[string]int // getpeername
	Errnos   map[int]int
	NetNS    uint64
	Err      string
}

// runClientAgent serves commands until stdin closes.
func runClientAgent() int {
	conns := make(map[int]net.Conn)
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var cmd clientCmd
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			fmt.Fprintln(os.Stderr, "client agent:", err)
			return 2
		}
		if err := out.Encode(agentDo(cmd, conns)); err != nil {
			return 2
		}
	}
	return 0
}

func agentDo(cmd clientCmd, conns map[int]net.Conn) clientReply {
	var r clientReply
	count := max(cmd.Count, 1)
	switch cmd.Op {
	case "dial":
		c, res := agentDial(cmd.Net, cmd.Local, cmd.Addr)
		if c != nil {
			conns[cmd.ID] = c
		}
		r.Results = append(r.Results, res)
	case "dials":
		for range count {
			c, res := agentDial(cmd.Net, cmd.Local, cmd.Addr)
			if c != nil {
				closeRST(c)
			}
			r.Results = append(r.Results, res)
		}
	case "echo":
		c := conns[cmd.ID]
		if c == nil {
			r.Err = "no connection"
			break
		}
		res := clientResult{Peer: peerOf(c)}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(c, "%s\n", cmd.Msg); err != nil {
			res.setErr(err)
		} else if line, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			res.setErr(err)
		} else {
			res.Greeting = strings.TrimSpace(line)
		}
		r.Results = append(r.Results, res)
	case "close":
		if c := conns[cmd.ID]; c != nil {
			c.Close()
			delete(conns, cmd.ID)
		}
	case "sendto":
		for range count {
			r.Results = append(r.Results, agentSendto(cmd.Net, cmd.Addr, cmd.Msg))
		}
	case "udpconn":
		for range count {
			r.Results = append(r.Results, agentUDPConn(cmd.Net, cmd.Local, cmd.Addr, cmd.Msg))
		}
	case "dialfor":
		r.Backends = make(map[string]int)
		r.Clients = make(map[string]int)
		r.Peers = make(map[string]int)
		r.Errnos = make(map[int]int)
		end := time.Now().Add(time.Duration(cmd.Millis) * time.Millisecond)
		for time.Now().Before(end) {
			c, res := agentDial(cmd.Net, cmd.Local, cmd.Addr)
			if c != nil {
				closeRST(c)
			}
			if res.Errno != 0 || res.Err != "" {
				r.Errnos[res.Errno]++
				continue
			}
			name, seen, _ := strings.Cut(res.Greeting, " ")
			r.Backends[name]++
			if ap, err := netip.ParseAddrPort(seen); err == nil {
				seen = ap.Addr().String()
			}
			r.Clients[seen]++
			r.Peers[res.Peer]++
		}
	case "netns":
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			r.Err = err.Error()
			break
		}
		r.NetNS, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		unix.Close(fd)
		if err != nil {
			r.Err = err.Error()
		}
	default:
		r.Err = "unknown op " + cmd.Op
	}
	return r
}

func agentDial(network, local, addr string) (net.Conn, clientResult) {
	var res clientResult
	d, err := dialer(network, local)
	if err != nil {
		res.setErr(err)
		return nil, res
	}
	c, err := d.Dial(network, addr)
	if err != nil {
		res.setErr(err)
		return nil, res
	}
	res.Peer = peerOf(c)
	res.Cookie = cookieOf(c)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	// Read byte by byte so no echo data is swallowed by a buffer.
	var line []byte
	b := make([]byte, 1)
	for {
		if _, err := c.Read(b); err != nil {
			res.setErr(err)
			c.Close()
			return nil, res
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
	}
	_ = c.SetReadDeadline(time.Time{})
	res.Greeting = string(line)
	return c, res
}

func dialer(network, local string) (*net.Dialer, error) {
	d := &net.Dialer{Timeout: 5 * time.Second}
	if local == "" {
		return d, nil
	}
	ap, err := netip.ParseAddrPort(local)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(network, "tcp") {
		d.LocalAddr = net.TCPAddrFromAddrPort(ap)
	} else {
		d.LocalAddr = net.UDPAddrFromAddrPort(ap)
	}
	return d, nil
}

func agentSendto(network, addr, msg string) clientResult {
	var res clientResult
	pc, err := net.ListenPacket(network, "")
	if err != nil {
		res.setErr(err)
		return res
	}
	defer pc.Close()
	res.Cookie = cookieOf(pc.(syscall.Conn))
	dst, err := net.ResolveUDPAddr(network, addr)
	if err != nil {
		res.setErr(err)
		return res
	}
	if _, err := pc.WriteTo([]byte(msg), dst); err != nil {
		res.setErr(err)
		return res
	}
	_ = pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, from, err := pc.ReadFrom(buf)
	if err != nil {
		res.setErr(err)
		return res
	}
	res.Greeting = string(buf[:n])
	res.From = from.String()
	return res
}

func agentUDPConn(network, local, addr, msg string) clientResult {
	var res clientResult
	d, err := dialer(network, local)
	if err != nil {
		res.setErr(err)
		return res
	}
	c, err := d.Dial(network, addr)
	if err != nil {
		res.setErr(err)
		return res
	}
	defer c.Close()
	res.Peer = peerOf(c)
	res.Cookie = cookieOf(c)
	if _, err := c.Write([]byte(msg)); err != nil {
		res.setErr(err)
		return res
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	// recvmsg with an address, so the recvmsg hook's rewrite is visible.
	n, from, err := c.(*net.UDPConn).ReadFromUDPAddrPort(buf)
	if err != nil {
		res.setErr(err)
		return res
	}
	res.Greeting = string(buf[:n])
	res.From = from.String()
	return res
}

func (r *clientResult) setErr(err error) {
	r.Err = err.Error()
	var errno syscall.Errno
	if errors.As(err, &errno) {
		r.Errno = int(errno)
	}
}

// peerOf asks the kernel, not Go's cached address, for the socket's peer.
func peerOf(c any) string {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return ""
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return ""
	}
	var peer string
	_ = raw.Control(func(fd uintptr) {
		sa, err := unix.Getpeername(int(fd))
		if err != nil {
			peer = "error: " + err.Error()
			return
		}
		peer = sockaddrString(sa)
	})
	return peer
}

func cookieOf(c any) uint64 {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	var cookie uint64
	_ = raw.Control(func(fd uintptr) {
		cookie, _ = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE)
	})
	return cookie
}

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	}
	return fmt.Sprint(sa)
}

// closeRST closes with a reset, so that short-lived test connections leave
// no TIME_WAIT behind.
func closeRST(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}

// client is the test's handle on a running agent.
type client struct {
	tb     testing.TB
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *json.Decoder
	stderr *bytes.Buffer
	mu     sync.Mutex
}

// startClient runs an agent in ep's namespace, inside cgroup cg.
func startClient(tb testing.TB, ep *endpointNS, cg *testutils.Cgroup) *client {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cgfd, err := cg.Open()
	if err != nil {
		tb.Fatal(err)
	}
	defer cgfd.Close()
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), clientAgentEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cgfd.Fd())}
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	c := &client{tb: tb, cmd: cmd, in: in, out: json.NewDecoder(out), stderr: new(bytes.Buffer)}
	cmd.Stderr = c.stderr
	if err := ep.ns.Start(cmd); err != nil {
		tb.Fatalf("start client agent: %v", err)
	}
	tb.Cleanup(func() {
		in.Close()
		if err := cmd.Wait(); err != nil {
			tb.Errorf("client agent: %v\n%s", err, c.stderr)
		}
	})
	return c
}

func (c *client) do(cmd clientCmd) clientReply {
	c.tb.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	line, err := json.Marshal(cmd)
	if err != nil {
		c.tb.Fatal(err)
	}
	if _, err := c.in.Write(append(line, '\n')); err != nil {
		c.tb.Fatalf("client agent: %v\n%s", err, c.stderr)
	}
	var r clientReply
	if err := c.out.Decode(&r); err != nil {
		c.tb.Fatalf("client agent answer: %v\n%s", err, c.stderr)
	}
	if r.Err != "" {
		c.tb.Fatalf("client agent %s: %s", cmd.Op, r.Err)
	}
	return r
}

// one runs cmd and returns its single result.
func (c *client) one(cmd clientCmd) clientResult {
	c.tb.Helper()
	r := c.do(cmd)
	if len(r.Results) != 1 {
		c.tb.Fatalf("client agent %s: %d results", cmd.Op, len(r.Results))
	}
	return r.Results[0]
}
