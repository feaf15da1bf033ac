package datapath

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
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/nodeplane/nodeplane"
	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane/datapath/internal/altbuild"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// The restart tests run pods A and B behind a Datapath pinned in a private
// bpffs. B echoes on two TCP ports; its policy lets A reach the first and
// not the second.
const (
	allowedPort = 8080
	deniedPort  = 8081
)

var allowedKey = mapstate.Key{Identity: idA, Direction: mapstate.Ingress, Protocol: protoTCP, Port: allowedPort, PortPrefixLen: 16}

// installPods adds endpoints A (ID 1) and B (ID 2) in the namespaces at
// podA and podB, with A's egress open to B and B's ingress open to A on
// allowedPort only.
func installPods(d *Datapath, podA, podB string) (a, b *Endpoint, err error) {
	if a, err = d.AddEndpoint(EndpointConfig{ID: 1, Identity: idA, IPv4: addrA, IPv6: addrA6, NetNS: podA}); err != nil {
		return nil, nil, err
	}
	if b, err = d.AddEndpoint(EndpointConfig{ID: 2, Identity: idB, IPv4: addrB, IPv6: addrB6, NetNS: podB}); err != nil {
		return nil, nil, err
	}
	if err := a.Policy().Update(mapstate.Key{Identity: idB, Direction: mapstate.Egress}, allow); err != nil {
		return nil, nil, err
	}
	return a, b, b.Policy().Update(allowedKey, allow)
}

type restartWorld struct {
	mode       AttachMode
	bpffs      string
	node       *testutils.NetNS
	podA, podB *testutils.NetNS
}

func newRestartWorld(t *testing.T, mode AttachMode) *restartWorld {
	testutils.RequirePrivileged(t)
	if mode == AttachTCX {
		testutils.SkipIfNotSupported(t, HaveTCX())
	}
	w := &restartWorld{
		mode:  mode,
		bpffs: testutils.NewBPFFS(t),
		node:  testutils.NewNetNS(t),
		podA:  testutils.NewNetNS(t),
		podB:  testutils.NewNetNS(t),
	}
	// Wildcard listeners, dual-stack: B's addresses come with its endpoint.
	testutils.ServeEcho(t, w.podB, "tcp", fmt.Sprintf(":%d", allowedPort))
	testutils.ServeEcho(t, w.podB, "tcp", fmt.Sprintf(":%d", deniedPort))
	return w
}

func (w *restartWorld) config() Config {
	return Config{
		BPFFSDir: w.bpffs, NodeNetNS: nsPath(w.node), Attach: w.mode,
		ConntrackMaxEntries: 4096, IPCacheMaxEntries: 4096,
	}
}

// expect dials B from A on port over IPv4 and IPv6: allowed connections
// must echo, denied ones time out.
func (w *restartWorld) expect(t *testing.T, port uint16, allowed bool) {
	t.Helper()
	for _, dst := range []netip.Addr{addrB, addrB6} {
		addr := netip.AddrPortFrom(dst, port).String()
		c, err := dial(w.podA, "tcp", addr, 500*time.Millisecond)
		switch {
		case allowed && err != nil:
			t.Fatalf("A -> %s: %v, want a connection", addr, err)
		case allowed:
			if err := echo(c, "after the restart"); err != nil {
				t.Fatalf("A -> %s: %v", addr, err)
			}
		case err == nil:
			c.Close()
			t.Fatalf("A -> %s connected: the port is denied", addr)
		case !isTimeout(err):
			t.Fatalf("A -> %s: %v, want a timeout (dropped)", addr, err)
		}
	}
}

// policyDrops reads the count of POLICY_DENIED drops at from-endpoint
// straight from the pinned counters map.
func (w *restartWorld) policyDrops(t *testing.T) uint64 {
	t.Helper()
	var percpu []counter
	if err := loadPinned(t, w.bpffs, datapathMapNpCounters).Lookup(uint32(FromEndpoint)<<8|uint32(monitor.DropPolicyDenied), &percpu); err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range percpu {
		n += c.Packets
	}
	return n
}

// flowEntry reads the stream's conntrack entry from the pinned map.
func (w *restartWorld) flowEntry(t *testing.T, s *stream) ConntrackEntry {
	t.Helper()
	e, ok, err := (&Conntrack{m: loadPinned(t, w.bpffs, datapathMapNpConntrack)}).Lookup(s.tuple)
	if err != nil || !ok {
		t.Fatalf("conntrack entry of %v: %v %v", s.tuple, ok, err)
	}
	return e
}

// programs returns the IDs of the programs attached to the host side of
// an endpoint, ingress then egress, as the kernel reports them.
func (w *restartWorld) programs(t *testing.T, ifindex int) []ebpf.ProgramID {
	t.Helper()
	var ids []ebpf.ProgramID
	if w.mode == AttachTC {
		l, err := w.node.Netlink(t).LinkByIndex(ifindex)
		if err != nil {
			t.Fatal(err)
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, err := w.node.Netlink(t).FilterList(l, parent)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range fs {
				if bf, ok := f.(*netlink.BpfFilter); ok {
					ids = append(ids, ebpf.ProgramID(bf.Id))
				}
			}
		}
		return ids
	}
	for _, typ := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		if err := w.node.Do(func() error {
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: typ})
			if err != nil {
				return err
			}
			for _, p := range res.Programs {
				ids = append(ids, p.ID)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// expectClean checks that nothing of the datapath is left: no interface
// but loopback in the node and pod namespaces, no pin in the bpffs.
func (w *restartWorld) expectClean(t *testing.T) {
	t.Helper()
	for name, ns := range map[string]*testutils.NetNS{"node": w.node, "pod A": w.podA, "pod B": w.podB} {
		links, err := ns.Netlink(t).LinkList()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			if l.Attrs().Name != "lo" {
				t.Errorf("%s namespace still has %s", name, l.Attrs().Name)
			}
		}
	}
	expectNoPins(t, w.bpffs)
}

// expectNoPins checks that dir, the root of a bpffs mount, holds nothing
// but what the kernel puts in every such mount (maps.debug and
// progs.debug, where bpf_preload is loaded).
func expectNoPins(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if n := e.Name(); n != "maps.debug" && n != "progs.debug" {
			t.Errorf("left in %s: %s", dir, n)
		}
	}
}

// stream keeps an echo conversation going over one TCP connection from A
// to B: a 1 KiB message every 2 ms, each read back before the next, with
// a 5 s deadline on every exchange.
type stream struct {
	tuple    Tuple
	echoed   atomic.Int64
	stop     chan struct{}
	finished chan struct{}
	err      error // set before finished is closed
}

func startStream(t *testing.T, ns *testutils.NetNS, dst netip.AddrPort) *stream {
	t.Helper()
	c, err := dial(ns, "tcp", dst.String(), 2*time.Second)
	if err != nil {
		t.Fatalf("open stream to %v: %v", dst, err)
	}
	src := c.LocalAddr().(*net.TCPAddr).AddrPort()
	s := &stream{
		tuple:    Tuple{Src: src.Addr().Unmap(), Dst: dst.Addr(), SrcPort: src.Port(), DstPort: dst.Port(), Proto: protoTCP},
		stop:     make(chan struct{}),
		finished: make(chan struct{}),
	}
	go func() {
		defer close(s.finished)
		defer c.Close()
		msg := bytes.Repeat([]byte("0123456789abcdef"), 64)
		buf := make([]byte, len(msg))
		for i := 0; ; i++ {
			select {
			case <-s.stop:
				return
			default:
			}
			msg[0] = byte(i)
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(msg); err != nil {
				s.err = fmt.Errorf("message %d: write: %w", i, err)
				return
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				s.err = fmt.Errorf("message %d: read: %w", i, err)
				return
			}
			if !bytes.Equal(buf, msg) {
				s.err = fmt.Errorf("message %d came back changed", i)
				return
			}
			s.echoed.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { s.close(t) })
	return s
}

// flowing waits until the stream has echoed 50 more messages.
func (s *stream) flowing(t *testing.T) {
	t.Helper()
	start := s.echoed.Load()
	deadline := time.Now().Add(10 * time.Second)
	for s.echoed.Load() < start+50 {
		select {
		case <-s.finished:
			t.Fatalf("stream %v broke after %d messages: %v", s.tuple, s.echoed.Load(), s.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream %v stalled at %d messages", s.tuple, s.echoed.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// close stops the stream and reports whether it failed before.
func (s *stream) close(t *testing.T) {
	t.Helper()
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.finished
	if s.err != nil {
		t.Errorf("stream %v: %v", s.tuple, s.err)
	}
}

// lifetimeLeft is how long the stream's conntrack entry has left: the TCP
// lifetime of the program that saw its last packet.
func (w *restartWorld) lifetimeLeft(t *testing.T, s *stream) time.Duration {
	t.Helper()
	return w.flowEntry(t, s).Expires - MonotonicNow()
}

func near(got, want time.Duration) bool { return got > want-time.Minute && got <= want+time.Second }

// agentEnv carries agentArgs, as JSON, to a re-executed test binary, which
// then runs agentMain instead of the tests.
const agentEnv = "NODEPLANE_DATAPATH_TEST_AGENT"

type agentArgs struct {
	Config     Config
	PodA, PodB string
	// Adopt makes the agent adopt the endpoints already installed instead
	// of installing pods A and B; AltBuild makes it run altbuild's
	// programs (TestPrivilegedUpgradeUnderTraffic).
	Adopt, AltBuild bool
}

// agentMain is the child of TestPrivilegedCrashKeepsEndpointsEnforced: an
// agent that installs pods A and B on pinned maps, says "ready", and then
// waits to be killed. It never closes its Datapath.
func agentMain() int {
	var args agentArgs
	if err := json.Unmarshal([]byte(os.Getenv(agentEnv)), &args); err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		return 2
	}
	if args.AltBuild {
		spec, err := altbuild.LoadDatapath()
		if err != nil {
			fmt.Fprintln(os.Stderr, "agent:", err)
			return 1
		}
		args.Config.Programs = spec
	}
	d, err := New(args.Config)
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		return 1
	}
	if args.Adopt {
		if rep := d.Restored(); !slices.Equal(rep.Adopted, []EndpointID{1, 2}) || len(rep.Removed) != 0 || len(rep.Repaired) != 0 {
			fmt.Fprintf(os.Stderr, "agent: restore report %+v, want endpoints 1 and 2 adopted as they were\n", rep)
			return 1
		}
	} else if _, _, err := installPods(d, args.PodA, args.PodB); err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		return 1
	}
	fmt.Println("ready")
	// Until the test kills us, or closes stdin because it failed early.
	_, _ = io.Copy(io.Discard, os.Stdin)
	return 0
}

// startAgent runs agentMain in a child process on the world's pins and
// namespaces, and waits until it is ready.
func (w *restartWorld) startAgent(t *testing.T) *exec.Cmd {
	t.Helper()
	return w.startAgentWith(t, agentArgs{})
}

// startAgentWith is startAgent with the Adopt and AltBuild of args.
func (w *restartWorld) startAgentWith(t *testing.T, args agentArgs) *exec.Cmd {
	t.Helper()
	proc := func(ns *testutils.NetNS) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), ns.FD()) }
	args.Config, args.PodA, args.PodB = w.config(), proc(w.podA), proc(w.podB)
	args.Config.NodeNetNS = proc(w.node)
	env, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), agentEnv+"="+string(env))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("said %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("agent did not get ready: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not get ready in 30s")
	}
	return cmd
}

func endpointIDs(eps []*Endpoint) []EndpointID {
	var ids []EndpointID
	for _, ep := range eps {
		ids = append(ids, ep.ID())
	}
	return ids
}

func checkAdoptedPods(t *testing.T, d *Datapath) (a, b *Endpoint) {
	t.Helper()
	rep := d.Restored()
	if !slices.Equal(rep.Adopted, []EndpointID{1, 2}) || len(rep.Removed) != 0 || len(rep.Repaired) != 0 {
		t.Fatalf("restore report %+v, want endpoints 1 and 2 adopted as they were", rep)
	}
	if ids := endpointIDs(d.Endpoints()); !slices.Equal(ids, []EndpointID{1, 2}) {
		t.Fatalf("Endpoints() = %v", ids)
	}
	a, _ = d.Endpoint(1)
	b, _ = d.Endpoint(2)
	if a.IPv4() != addrA || a.IPv6() != addrA6 || a.Identity() != idA || a.HostIfName() != "np1" || a.AttachMode() != d.AttachMode() ||
		b.IPv4() != addrB || b.Identity() != idB || b.HostIfName() != "np2" {
		t.Fatalf("adopted endpoints %+v / %+v", a.cfg, b.cfg)
	}
	got, err := b.Policy().Dump()
	if err != nil || len(got) != 1 || got[allowedKey] != allow {
		t.Fatalf("adopted policy of B: %v %v", got, err)
	}
	return a, b
}

// TestPrivilegedCrashKeepsEndpointsEnforced kills an agent and checks that
// its endpoints keep their programs and policy with no process holding
// them, and that a new Datapath adopts them, changes their policy, and
// removes them without leftovers.
func TestPrivilegedCrashKeepsEndpointsEnforced(t *testing.T) {
	for _, mode := range []AttachMode{AttachTCX, AttachTC} {
		t.Run(mode.String(), func(t *testing.T) {
			w := newRestartWorld(t, mode)
			agent := w.startAgent(t)
			s := startStream(t, w.podA, netip.AddrPortFrom(addrB, allowedPort))
			s.flowing(t)
			w.expect(t, deniedPort, false)
			a1 := w.programs(t, podIfindex(t, w.node, "np1"))
			if len(a1) != 2 {
				t.Fatalf("programs on np1: %v, want 2", a1)
			}

			if err := agent.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			if err := agent.Wait(); err == nil {
				t.Fatal("agent exited cleanly; it was to be killed")
			}

			// Nobody holds the datapath now: its pins and the kernel do.
			if got := w.programs(t, podIfindex(t, w.node, "np1")); !slices.Equal(got, a1) {
				t.Fatalf("programs on np1 after the kill: %v, want %v", got, a1)
			}
			before := w.flowEntry(t, s).Packets
			s.flowing(t)
			if after := w.flowEntry(t, s).Packets; after <= before {
				t.Fatalf("the stream's conntrack entry stopped counting (%d -> %d): its packets bypass the programs", before, after)
			}
			w.expect(t, allowedPort, true)
			drops := w.policyDrops(t)
			w.expect(t, deniedPort, false)
			if got := w.policyDrops(t); got <= drops {
				t.Fatalf("POLICY_DENIED drops %d -> %d: the denied port timed out without the program dropping it", drops, got)
			}
			if left := w.lifetimeLeft(t, s); !near(left, defaultTCPLifetime) {
				t.Fatalf("stream lifetime left %v, want about %v", left, defaultTCPLifetime)
			}

			// A new agent, built with a shorter TCP lifetime: its programs
			// take over the stream, which notices nothing.
			cfg := w.config()
			cfg.TCPLifetime = time.Hour
			d := openPinned(t, cfg)
			a, b := checkAdoptedPods(t, d)
			if got := w.programs(t, a.HostIfindex()); len(got) != 2 || got[0] == a1[0] || got[1] == a1[1] {
				t.Fatalf("programs on np1 after adoption: %v, were %v: not replaced", got, a1)
			}
			s.flowing(t)
			if left := w.lifetimeLeft(t, s); !near(left, time.Hour) {
				t.Fatalf("stream lifetime left %v after adoption, want about 1h: the new programs do not see it", left)
			}

			// The adopted handles work: policy moves from one port to the
			// other, the established stream stays.
			if err := b.Policy().Apply(map[mapstate.Key]mapstate.Entry{
				{Identity: idA, Direction: mapstate.Ingress, Protocol: protoTCP, Port: deniedPort, PortPrefixLen: 16}: allow,
			}, []mapstate.Key{allowedKey}); err != nil {
				t.Fatal(err)
			}
			w.expect(t, deniedPort, true)
			w.expect(t, allowedPort, false)
			s.flowing(t)
			if err := a.SetIdentity(idRemote); err != nil {
				t.Fatal(err)
			}
			w.expect(t, deniedPort, false)
			if err := a.SetIdentity(idA); err != nil {
				t.Fatal(err)
			}
			w.expect(t, deniedPort, true)
			s.close(t)

			if err := d.Uninstall(); err != nil {
				t.Fatal(err)
			}
			w.expectClean(t)
		})
	}
}

// TestPrivilegedGracefulRestart closes a pinning Datapath under a running
// stream and adopts its endpoints in a new one.
func TestPrivilegedGracefulRestart(t *testing.T) {
	for _, mode := range []AttachMode{AttachTCX, AttachTC} {
		t.Run(mode.String(), func(t *testing.T) {
			w := newRestartWorld(t, mode)
			d1 := openPinned(t, w.config())
			a1, _, err := installPods(d1, nsPath(w.podA), nsPath(w.podB))
			if err != nil {
				t.Fatal(err)
			}
			s := startStream(t, w.podA, netip.AddrPortFrom(addrB, allowedPort))
			s.flowing(t)
			progs := w.programs(t, a1.HostIfindex())

			other := w.config()
			other.NodeNetNS = nsPath(testutils.NewNetNS(t))
			if d, err := New(other); !errors.Is(err, ErrBPFFSDirInUse) {
				if d != nil {
					d.Close()
				}
				t.Fatalf("second Datapath on the same pins: %v, want ErrBPFFSDirInUse", err)
			}

			if err := d1.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := a1.Policy().Dump(); !errors.Is(err, nodeplane.ErrClosed) {
				t.Fatalf("policy of a closed Datapath's endpoint: %v, want nodeplane.ErrClosed", err)
			}
			if err := a1.Delete(); !errors.Is(err, nodeplane.ErrClosed) {
				t.Fatalf("Delete after Close: %v, want nodeplane.ErrClosed", err)
			}
			if err := d1.Uninstall(); !errors.Is(err, nodeplane.ErrClosed) {
				t.Fatalf("Uninstall after Close: %v, want nodeplane.ErrClosed", err)
			}
			if got := w.programs(t, a1.HostIfindex()); !slices.Equal(got, progs) {
				t.Fatalf("programs after Close: %v, want %v still attached", got, progs)
			}
			s.flowing(t)
			w.expect(t, allowedPort, true)
			w.expect(t, deniedPort, false)

			cfg := w.config()
			cfg.TCPLifetime = time.Hour
			d2 := openPinned(t, cfg)
			a, _ := checkAdoptedPods(t, d2)
			if a.HostIfindex() != a1.HostIfindex() || !bytes.Equal(a.HostMAC(), a1.HostMAC()) || !bytes.Equal(a.MAC(), a1.MAC()) {
				t.Fatalf("adopted host side %d %v %v, was %d %v %v", a.HostIfindex(), a.HostMAC(), a.MAC(), a1.HostIfindex(), a1.HostMAC(), a1.MAC())
			}
			if got := w.programs(t, a.HostIfindex()); len(got) != 2 || got[0] == progs[0] || got[1] == progs[1] {
				t.Fatalf("programs after adoption: %v, were %v: not replaced", got, progs)
			}
			s.flowing(t)
			if left := w.lifetimeLeft(t, s); !near(left, time.Hour) {
				t.Fatalf("stream lifetime left %v after adoption, want about 1h", left)
			}
			w.expect(t, allowedPort, true)
			w.expect(t, deniedPort, false)
			// The adopted endpoint's programs run test packets too.
			v, _, err := a.TestRun(FromEndpoint, mustBytes(t, tcpPkt(addrA, addrB, 40000, deniedPort, TCPSyn)))
			if err != nil || v.Reason != monitor.DropPolicyDenied {
				t.Fatalf("test run on an adopted endpoint: %+v, %v", v, err)
			}
			s.close(t)

			if err := d2.Uninstall(); err != nil {
				t.Fatal(err)
			}
			w.expectClean(t)
		})
	}
}

// openPinned returns a Datapath, closed at cleanup.
func openPinned(t *testing.T, cfg Config) *Datapath {
	t.Helper()
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// loadPinned opens one of the datapath's maps from its pin, as a process
// without a Datapath can.
func loadPinned(t *testing.T, dir, name string) *ebpf.Map {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}
