package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

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
