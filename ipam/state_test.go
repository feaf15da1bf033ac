package ipam

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/internal/statefile/statefiletest"
)

func testSnapshot() Snapshot {
	return Snapshot{
		Allocations: []Allocation{
			{addr("10.0.0.2"), "ctr-a/eth0"},
			{addr("10.0.0.3"), "ctr-b/eth0"},
			{addr("fd00::2"), "ctr-a/eth0"},
		},
		Next: []netip.Addr{addr("10.0.0.4"), addr("fd00::3")},
	}
}

func TestStateFileRoundTrip(t *testing.T) {
	sf, err := NewStateFile(filepath.Join(t.TempDir(), "ipam.state"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sf.Load(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load of a missing file: %v, want fs.ErrNotExist", err)
	}
	for _, snap := range []Snapshot{testSnapshot(), {}} {
		if err := sf.Save(snap); err != nil {
			t.Fatal(err)
		}
		got, err := sf.Load()
		if err != nil {
			t.Fatal(err)
		}
		if len(snap.Allocations) == 0 {
			snap.Allocations = []Allocation{}
		}
		if !reflect.DeepEqual(got, snap) {
			t.Fatalf("Load = %+v, want %+v", got, snap)
		}
	}
	if _, err := os.Stat(sf.Path() + ".tmp"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("temporary file left behind: %v", err)
	}
	fi, err := os.Stat(sf.Path())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %v, %v; want 0600", fi.Mode(), err)
	}
}

func TestNewStateFileRejectsBadPath(t *testing.T) {
	for _, p := range []string{"", "/", "."} {
		if _, err := NewStateFile(p); !errors.Is(err, ErrInvalid) {
			t.Errorf("NewStateFile(%q): %v", p, err)
		}
	}
}

func TestStateFileRejectsUnsaveableSnapshot(t *testing.T) {
	sf, _ := NewStateFile(filepath.Join(t.TempDir(), "s"))
	for _, snap := range []Snapshot{
		{Allocations: []Allocation{{netip.Addr{}, "x"}}},
		{Allocations: []Allocation{{addr("10.0.0.1"), ""}}},
		{Allocations: []Allocation{{addr("10.0.0.1"), "x"}, {addr("10.0.0.1"), "y"}}},
		{Next: []netip.Addr{{}}},
	} {
		if err := sf.Save(snap); err == nil {
			t.Errorf("Save(%+v) succeeded", snap)
		}
	}
}

// TestStateFileDetectsCorruption changes every byte of a valid file, and cuts
// it at every length: Load must fail with ErrCorrupt each time.
func TestStateFileDetectsCorruption(t *testing.T) {
	good, err := encodeState(testSnapshot())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "s")
	sf, _ := NewStateFile(path)
	check := func(what string, data []byte) {
		t.Helper()
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := sf.Load(); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("%s: Load: %v, want ErrCorrupt", what, err)
		}
	}
	for i := range good {
		for _, flip := range []byte{0x01, 0x80, 0xff} {
			bad := append([]byte(nil), good...)
			bad[i] ^= flip
			check(fmt.Sprintf("byte %d ^ %#x", i, flip), bad)
		}
	}
	for n := range len(good) {
		check(fmt.Sprintf("cut at %d", n), good[:n])
	}
	check("trailing byte", append(append([]byte(nil), good...), '\n'))

	// A future version is reported as such, not misread.
	body := good[len("nodeplane-ipam-state 1"):]
	check("version 2", append([]byte("nodeplane-ipam-state 2"), body...))
	_, err = decodeState(append([]byte("nodeplane-ipam-state 2"), body...))
	if err == nil || !strings.Contains(err.Error(), "this build reads version 1") {
		t.Fatalf("version error does not say so: %v", err)
	}
}

func TestPoolWritesThroughAndRestores(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.state")
	sf, _ := NewStateFile(path)
	cfg := Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/24"), pfx("fd00::/64")}, State: sf}
	p := mustPool(t, cfg)
	for i := range 3 {
		if _, _, err := p.AllocateNextDual(fmt.Sprint("c", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.ReleaseOwner("c1"); err != nil {
		t.Fatal(err)
	}
	want := p.Snapshot()

	// "Restart": a new pool on the same file sees exactly the same state
	// and continues the rotation.
	p2 := mustPool(t, cfg)
	if got := p2.Snapshot(); !reflect.DeepEqual(got, want) {
		t.Fatalf("restored %+v, want %+v", got, want)
	}
	if a, _ := p2.AllocateNext(IPv4, "c3"); a != addr("10.0.0.4") {
		t.Fatalf("first allocation after restart: %s, want 10.0.0.4", a)
	}

	// The caller collects owners that died while the node was down.
	alive := map[string]bool{"c0": true}
	for _, o := range p2.Snapshot().Owners() {
		if !alive[o] {
			if _, err := p2.ReleaseOwner(o); err != nil {
				t.Fatal(err)
			}
		}
	}
	p3 := mustPool(t, cfg)
	if got := p3.Snapshot().Owners(); !reflect.DeepEqual(got, []string{"c0"}) {
		t.Fatalf("owners after GC and restart: %v", got)
	}

	// A corrupt file stops New with a clear error instead of starting empty.
	os.WriteFile(path, []byte("garbage"), 0o600)
	if _, err := New(cfg); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("New on a corrupt file: %v", err)
	}
	// So does a file whose addresses the configuration no longer covers.
	sf.Save(Snapshot{Allocations: []Allocation{{addr("10.9.9.9"), "x"}}})
	if _, err := New(cfg); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("New on a file from another configuration: %v", err)
	}
}

// TestStateWriteFaults fails each step of a state write in turn, once as an
// error the pool sees and once as a crash, and checks what a restart finds.
func TestStateWriteFaults(t *testing.T) {
	cfg := func(sf *StateFile) Config {
		return Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/24"), pfx("fd00::/64")}, State: sf}
	}
	setup := func(t *testing.T) (*Pool, *StateFile, Snapshot) {
		sf, _ := NewStateFile(filepath.Join(t.TempDir(), "ipam.state"))
		p := mustPool(t, cfg(sf))
		for i := range 3 {
			if _, _, err := p.AllocateNextDual(fmt.Sprint("old", i)); err != nil {
				t.Fatal(err)
			}
		}
		return p, sf, p.Snapshot()
	}
	// The mutation under test: a dual-stack allocation and a release in one
	// step would need two writes, so each case runs one call.
	mutations := map[string]func(p *Pool) error{
		"AllocateNextDual": func(p *Pool) error { _, _, err := p.AllocateNextDual("new"); return err },
		"ReleaseOwner":     func(p *Pool) error { _, err := p.ReleaseOwner("old1"); return err },
		"Allocate":         func(p *Pool) error { return p.Allocate(addr("10.0.0.200"), "new") },
	}

	// A clean write takes these steps, in this order.
	p, sf, _ := setup(t)
	clean := &statefiletest.FaultFS{}
	sf.f.FS = clean
	if _, err := p.AllocateNext(IPv4, "x"); err != nil {
		t.Fatal(err)
	}
	wantSteps := statefiletest.SaveSteps
	if !reflect.DeepEqual(clean.Steps, wantSteps) {
		t.Fatalf("steps %v, want %v", clean.Steps, wantSteps)
	}
	const renameStep = statefiletest.RenameStep

	for name, mutate := range mutations {
		for step := 1; step <= len(wantSteps); step++ {
			for _, crash := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/crash=%v", name, wantSteps[step-1], crash), func(t *testing.T) {
					p, sf, old := setup(t)
					// What the mutation produces when nothing fails.
					twin := mustPool(t, Config{Prefixes: cfg(nil).Prefixes})
					twin.Restore(old)
					if err := mutate(twin); err != nil {
						t.Fatal(err)
					}
					updated := twin.Snapshot()

					ffs := &statefiletest.FaultFS{FailAt: step, Crash: crash}
					sf.f.FS = ffs
					err := mutate(p)
					if !errors.Is(err, statefiletest.ErrInjected) {
						t.Fatalf("mutation: %v, want the injected fault", err)
					}
					if got := p.Snapshot(); !reflect.DeepEqual(got, old) {
						t.Fatalf("failed call changed the pool:\n got %+v\nwant %+v", got, old)
					}

					// Restart on the file as the fault left it.
					sf2, _ := NewStateFile(sf.Path())
					p2, err := New(cfg(sf2))
					if err != nil {
						t.Fatalf("restart: %v", err)
					}
					got := p2.Snapshot()
					switch {
					case !crash:
						// The pool put the old state back after a failed
						// directory sync: file and memory agree.
						if !reflect.DeepEqual(got, old) {
							t.Fatalf("after a failed step %d, restart sees\n%+v\nwant the old state\n%+v", step, got, old)
						}
					case step <= renameStep:
						if !reflect.DeepEqual(got, old) {
							t.Fatalf("crash before the rename: restart sees %+v, want the old state", got)
						}
					default:
						if !reflect.DeepEqual(got, updated) {
							t.Fatalf("crash after the rename: restart sees %+v, want the new state %+v", got, updated)
						}
					}
					// A leftover temporary file does not get in the way.
					if _, err := p2.AllocateNext(IPv4, "after"); err != nil {
						t.Fatal(err)
					}
				})
			}
		}
	}
}

// The crash child: a re-executed test binary that saves generation after
// generation of a state file and reports each one on stdout, until killed.
const crashChildEnv = "NODEPLANE_IPAM_CRASH_CHILD"

// generation returns the snapshot of generation g: g allocations, each
// owned by a name that includes g, so that any mix of two generations is
// recognisable.
func generation(g int) Snapshot {
	s := Snapshot{Allocations: []Allocation{}}
	base := u128FromAddr(addr("10.0.0.0"))
	// Sizes vary from one allocation to some 300 KiB of state, so that a
	// kill also lands inside long writes.
	n := 1 + g%7*400
	for i := 1; i <= n; i++ {
		a := base.or(u128{lo: uint64(i)}).addr(true)
		s.Allocations = append(s.Allocations, Allocation{a, fmt.Sprintf("gen%d-%d-%0100d", g, i, i)})
	}
	s.Next = []netip.Addr{base.or(u128{lo: uint64(n + 1)}).addr(true)}
	return s
}

// whichGeneration returns g if s is exactly generation g.
func whichGeneration(s Snapshot) (int, bool) {
	if len(s.Allocations) == 0 {
		return 0, false
	}
	var g, i int
	if _, err := fmt.Sscanf(s.Allocations[0].Owner, "gen%d-%d", &g, &i); err != nil {
		return 0, false
	}
	return g, reflect.DeepEqual(s, generation(g))
}

func crashChild(path string) {
	sf, err := NewStateFile(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	g := 0
	if s, err := sf.Load(); err == nil {
		g, _ = whichGeneration(s)
	}
	out := bufio.NewWriter(os.Stdout)
	for g++; ; g++ {
		if err := sf.Save(generation(g)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Fprintln(out, g)
		out.Flush()
	}
}

func TestMain(m *testing.M) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path)
	}
	if arg := os.Getenv(lockChildEnv); arg != "" {
		lockChild(arg)
	}
	os.Exit(m.Run())
}

// TestStateFileSurvivesSIGKILL kills a writer process at random moments.
// Every time, the file holds exactly the last generation the writer
// reported as saved, or the one after it (saved, not yet reported): never
// a torn or mixed state.
func TestStateFileSurvivesSIGKILL(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.state")
	sf, _ := NewStateFile(path)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0))
	const kills = 100
	var lastAcked int
	for k := range kills {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		started, acked := make(chan struct{}), make(chan int)
		go func() {
			last := -1
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				if last < 0 {
					close(started)
				}
				last, _ = strconv.Atoi(sc.Text())
			}
			if last < 0 {
				close(started)
			}
			acked <- last
		}()
		// Most kills land once the writer is in its loop, at a random
		// point of a save; a few land during start-up.
		if k%8 != 0 {
			<-started
		}
		time.Sleep(time.Duration(rng.IntN(5000)) * time.Microsecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		last := <-acked
		err = cmd.Wait()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() {
			t.Fatalf("kill %d: writer exited by itself: %v", k, err)
		}
		if last > 0 {
			lastAcked = last
		}

		s, err := sf.Load()
		if errors.Is(err, fs.ErrNotExist) && lastAcked == 0 {
			continue // killed before its first save completed
		}
		if err != nil {
			t.Fatalf("kill %d (last saved generation %d): %v", k, lastAcked, err)
		}
		g, ok := whichGeneration(s)
		if !ok {
			t.Fatalf("kill %d: the file is no generation at all: %+v", k, s)
		}
		if g != lastAcked && g != lastAcked+1 {
			t.Fatalf("kill %d: the file holds generation %d, last reported %d", k, g, lastAcked)
		}
		lastAcked = g
		// And a pool restores it.
		if _, err := New(Config{Prefixes: []netip.Prefix{pfx("10.0.0.0/16")}, State: sf}); err != nil {
			t.Fatalf("kill %d: restore: %v", k, err)
		}
	}
	t.Logf("%d kills, %d generations written", kills, lastAcked)
}
