package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func waitFor(t *testing.T, buf *syncBuffer, what string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(buf.String(), what) {
			return
		}
	}
	t.Fatalf("no %q in output %q", what, buf.String())
}

// TestPrivilegedRunReload runs `l4lb run` in a namespace of its own: it
// attaches XDP to the configured interface, SIGHUP applies a changed
// file, SIGTERM detaches and exits 0. (The packet path itself is tested by
// lb's TestPrivilegedNorthSouthTraffic.)
func TestPrivilegedRunReload(t *testing.T) {
	testutils.RequirePrivileged(t)
	node, peer := testutils.NewNetNS(t), testutils.NewNetNS(t)
	testutils.NewVeth(t, node, "eth1", peer, "eth0")
	path := filepath.Join(t.TempDir(), "l4lb.yaml")
	if err := os.WriteFile(path, []byte(goodConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	xdpAttached := func() bool {
		l, err := node.Netlink(t).LinkByName("eth1")
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().Xdp != nil && l.Attrs().Xdp.Attached
	}

	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		runtime.LockOSThread() // the thread stays in the namespace and dies with the goroutine
		if err := netns.Set(node.Handle()); err != nil {
			done <- -1
			return
		}
		done <- run([]string{"run", "-config", path}, &stdout, &stderr)
	}()
	waitFor(t, &stdout, "2 services on eth1")
	if !xdpAttached() {
		t.Fatal("no XDP program on eth1")
	}

	next := goodConfig[:strings.Index(goodConfig, `  - frontend: "[fd99::1]`)]
	if err := os.WriteFile(path, []byte(next), 0o600); err != nil {
		t.Fatal(err)
	}
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, &stdout, "reloaded, 1 services")

	os.WriteFile(path, []byte(strings.Replace(next, "tableSize: 251", "tableSize: 509", 1)), 0o600)
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, &stderr, "restart l4lb")

	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d, stderr %q", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("l4lb run did not stop on SIGTERM")
	}
	if xdpAttached() {
		t.Error("XDP program still attached after exit")
	}
}

// TestPrivilegedDSRBackend: `l4lb dsr-backend` starts on an interface in
// its own namespace and exits 0 on SIGTERM; a missing interface is bad
// input. (What the attached programs do is lb's
// TestPrivilegedNorthSouthDSRTraffic.)
func TestPrivilegedDSRBackend(t *testing.T) {
	testutils.RequirePrivileged(t)
	node, peer := testutils.NewNetNS(t), testutils.NewNetNS(t)
	testutils.NewVeth(t, node, "eth1", peer, "eth0")
	if code, _, stderr := runCmd("dsr-backend"); code != exitBadInput || !strings.Contains(stderr, "usage") {
		t.Errorf("no interface: exit %d, %q", code, stderr)
	}
	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(node.Handle()); err != nil {
			done <- -1
			return
		}
		done <- run([]string{"dsr-backend", "eth1"}, &stdout, &stderr)
	}()
	waitFor(t, &stdout, "DSR backend side on eth1")
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d, stderr %q", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("l4lb dsr-backend did not stop on SIGTERM")
	}
	code, stdout2, _ := runCmd("dsr-backend", "no-such-if0")
	if code != exitBadInput || stdout2 != "" {
		t.Errorf("unknown interface: exit %d, stdout %q", code, stdout2)
	}
}

func nsAddr(t *testing.T, ns *testutils.NetNS, ifIndex int, cidr, gw string) {
	t.Helper()
	h := ns.Netlink(t)
	l, err := h.LinkByIndex(ifIndex)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(l, addr); err != nil {
		t.Fatal(err)
	}
	if gw != "" {
		if err := h.RouteAdd(&netlink.Route{LinkIndex: ifIndex, Gw: net.ParseIP(gw)}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPrivilegedRunReloadKeepsFlows: `l4lb run` balances a VIP from a
// client namespace to backend namespaces through a node namespace; a
// reload that adds a backend and changes weights, and one that marks the
// first backend terminating, leave an established connection to it
// working, and new connections keep working.
func TestPrivilegedRunReloadKeepsFlows(t *testing.T) {
	testutils.RequirePrivileged(t)
	client, node := testutils.NewNetNS(t), testutils.NewNetNS(t)
	backends := []*testutils.NetNS{testutils.NewNetNS(t), testutils.NewNetNS(t)}
	if err := node.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0) }); err != nil {
		t.Fatal(err)
	}
	c := testutils.NewVeth(t, node, "c0", client, "eth0")
	nsAddr(t, node, c.Index, "10.1.0.1/24", "")
	nsAddr(t, client, c.PeerIndex, "10.1.0.2/24", "10.1.0.1")
	for i, be := range backends {
		v := testutils.NewVeth(t, node, fmt.Sprintf("b%d", i), be, "eth0")
		nsAddr(t, node, v.Index, fmt.Sprintf("10.2.%d.1/24", i), "")
		nsAddr(t, be, v.PeerIndex, fmt.Sprintf("10.2.%d.2/24", i), fmt.Sprintf("10.2.%d.1", i))
		testutils.ServeEcho(t, be, "tcp4", ":8080")
	}
	config := func(backends string) string {
		return "interface: c0\nservices:\n  - frontend: 10.99.0.1:80/TCP\n    backends:\n" + backends
	}
	path := filepath.Join(t.TempDir(), "l4lb.yaml")
	os.WriteFile(path, []byte(config("      - address: 10.2.0.2:8080\n")), 0o600)

	var stdout, stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(node.Handle()); err != nil {
			done <- -1
			return
		}
		done <- run([]string{"run", "-config", path}, &stdout, &stderr)
	}()
	waitFor(t, &stdout, "1 services on c0")

	dial := func() net.Conn {
		var conn net.Conn
		if err := client.Do(func() (err error) {
			conn, err = net.DialTimeout("tcp", "10.99.0.1:80", 2*time.Second)
			return err
		}); err != nil {
			t.Fatalf("dial the VIP: %v (stderr %q)", err, stderr.String())
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	echo := func(conn net.Conn, msg string) {
		t.Helper()
		conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := conn.Write([]byte(msg)); err != nil {
			t.Fatalf("write %q: %v", msg, err)
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != msg {
			t.Fatalf("echo of %q: %q, %v", msg, buf, err)
		}
	}
	established := dial()
	echo(established, "before reload")

	reloads := 0
	reload := func(cfg string) {
		t.Helper()
		os.WriteFile(path, []byte(cfg), 0o600)
		syscall.Kill(os.Getpid(), syscall.SIGHUP)
		reloads++
		for deadline := time.Now().Add(10 * time.Second); strings.Count(stdout.String(), "reloaded, 1 services") < reloads; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("reload %d not done: stdout %q, stderr %q", reloads, stdout.String(), stderr.String())
			}
		}
	}
	reload(config("      - address: 10.2.0.2:8080\n        weight: 300\n      - address: 10.2.1.2:8080\n"))
	echo(established, "after adding a backend")
	for i := range 8 {
		echo(dial(), fmt.Sprintf("new flow %d", i))
	}
	reload(config("      - address: 10.2.0.2:8080\n        state: terminating\n      - address: 10.2.1.2:8080\n"))
	echo(established, "after its backend started terminating")
	for i := range 8 {
		echo(dial(), fmt.Sprintf("new flow %d after terminating", i))
	}

	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d, stderr %q", code, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("l4lb run did not stop on SIGTERM")
	}
}
