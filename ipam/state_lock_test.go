//go:build unix

package ipam

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestStateLockExcludes(t *testing.T) {
	sf, err := NewStateFile(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	l1, err := sf.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// A second lock, even on another StateFile of the same path, waits
	// until its context gives up.
	other, _ := NewStateFile(sf.Path())
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if l, err := other.Lock(ctx); !errors.Is(err, context.DeadlineExceeded) {
		if l != nil {
			l.Close()
		}
		t.Fatalf("second lock while the first is held: %v, want a deadline error", err)
	}

	// Once the first is released, the other gets it. (A lock that waits
	// while another is held, and gets it on release, is tested with the
	// flock itself in internal/statefile.)
	if err := l1.Close(); err != nil {
		t.Fatal(err)
	}
	l2, err := other.Lock(context.Background())
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	l2.Close()
	if err := l1.Close(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("second Close: %v, want os.ErrClosed", err)
	}
}

func TestStateLockMissingDirectory(t *testing.T) {
	sf, err := NewStateFile(filepath.Join(t.TempDir(), "missing", "state"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sf.Lock(context.Background()); err == nil {
		t.Fatal("lock in a missing directory succeeded")
	}
}

// TestStateLockSerialisesInvocations plays concurrent CNI ADDs: each one
// builds its own Pool from the state file, allocates one address and
// exits. Under the lock no allocation is lost or given twice.
func TestStateLockSerialisesInvocations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	cfg := func(sf *StateFile) Config {
		return Config{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}, State: sf}
	}
	const n = 24
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			sf, err := NewStateFile(path)
			if err != nil {
				errs <- err
				return
			}
			l, err := sf.Lock(context.Background())
			if err != nil {
				errs <- err
				return
			}
			defer l.Close()
			p, err := New(cfg(sf))
			if err != nil {
				errs <- err
				return
			}
			if _, err := p.AllocateNext(IPv4, fmt.Sprintf("container-%d/eth0", i)); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	sf, _ := NewStateFile(path)
	snap, err := sf.Load()
	if err != nil {
		t.Fatal(err)
	}
	owners := make(map[string]bool)
	addrs := make(map[netip.Addr]bool)
	for _, a := range snap.Allocations {
		owners[a.Owner] = true
		addrs[a.Addr] = true
	}
	if len(snap.Allocations) != n || len(owners) != n || len(addrs) != n {
		t.Fatalf("state holds %d allocations for %d owners and %d addresses, want %d of each",
			len(snap.Allocations), len(owners), len(addrs), n)
	}
}

// lockChildEnv makes the test binary a CNI-like child: "add:PATH:OWNER"
// allocates an address for OWNER under the lock and exits; "hold:PATH"
// takes the lock, says so and waits to be killed.
const lockChildEnv = "NODEPLANE_IPAM_LOCK_CHILD"

func lockChild(arg string) {
	mode, rest, _ := strings.Cut(arg, ":")
	path, owner, _ := strings.Cut(rest, ":")
	sf, err := NewStateFile(path)
	if err == nil {
		var l *StateLock
		l, err = sf.Lock(context.Background())
		if err == nil && mode == "hold" {
			fmt.Println("locked")
			time.Sleep(time.Hour) // until killed
		}
		if err == nil {
			var p *Pool
			if p, err = New(Config{Prefixes: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}, State: sf}); err == nil {
				_, err = p.AllocateNext(IPv4, owner)
			}
			if cerr := l.Close(); err == nil {
				err = cerr
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	os.Exit(0)
}

// TestStateLockBetweenProcesses runs concurrent child processes, as a
// container runtime runs CNI plugins, and kills one that holds the lock.
func TestStateLockBetweenProcesses(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	child := func(arg string) *exec.Cmd {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), lockChildEnv+"="+arg)
		cmd.Stderr = os.Stderr
		return cmd
	}

	// A holder killed with the lock held does not keep it.
	holder := child("hold:" + path)
	out, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill() })
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || line != "locked\n" {
		t.Fatalf("holder: %q, %v", line, err)
	}
	sf, _ := NewStateFile(path)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	if _, err := sf.Lock(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("lock held by another process: %v, want a deadline error", err)
	}
	cancel()
	if err := holder.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = holder.Wait()
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := sf.Lock(ctx)
	if err != nil {
		t.Fatalf("lock after its holder was killed: %v", err)
	}
	l.Close()

	// Twelve ADDs at once: twelve owners, twelve addresses.
	const n = 12
	var cmds []*exec.Cmd
	for i := range n {
		cmd := child(fmt.Sprintf("add:%s:c%d/eth0", path, i))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for i, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("child %d: %v", i, err)
		}
	}
	snap, err := sf.Load()
	if err != nil {
		t.Fatal(err)
	}
	addrs := make(map[netip.Addr]string)
	for _, a := range snap.Allocations {
		addrs[a.Addr] = a.Owner
	}
	if len(snap.Allocations) != n || len(addrs) != n {
		t.Fatalf("after %d concurrent processes the state holds %v", n, snap.Allocations)
	}
}
