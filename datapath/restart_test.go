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
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// The restart tests run pods A and B behind a Datapath pinned in a private
// bpffs. B echoes on two TCP ports; its policy lets A reach the first and
// not the second.
const (
	allowedPort = 8080
	deniedPort  = 8081
)

var allowedKey = PolicyKey{Identity: idA, Direction: Ingress, Protocol: protoTCP, Port: allowedPort, PortPrefixLen: 16}

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
	if err := a.Policy().Update(PolicyKey{Identity: idB, Direction: Egress}, allow); err != nil {
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
	if err := loadPinned(t, w.bpffs, datapathMapNpCounters).Lookup(uint32(FromEndpoint)<<8|uint32(DropPolicyDenied), &percpu); err != nil {
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
	d, err := New(args.Config)
	if err != nil {
		fmt.Fprintln(os.Stderr, "agent:", err)
		return 1
	}
	if _, _, err := installPods(d, args.PodA, args.PodB); err != nil {
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
	proc := func(ns *testutils.NetNS) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), ns.FD()) }
	args := agentArgs{Config: w.config(), PodA: proc(w.podA), PodB: proc(w.podB)}
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
			if err := b.Policy().Apply(map[PolicyKey]PolicyEntry{
				{Identity: idA, Direction: Ingress, Protocol: protoTCP, Port: deniedPort, PortPrefixLen: 16}: allow,
			}, []PolicyKey{allowedKey}); err != nil {
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
			if _, err := a1.Policy().Dump(); !errors.Is(err, ErrClosed) {
				t.Fatalf("policy of a closed Datapath's endpoint: %v, want ErrClosed", err)
			}
			if err := a1.Delete(); !errors.Is(err, ErrClosed) {
				t.Fatalf("Delete after Close: %v, want ErrClosed", err)
			}
			if err := d1.Uninstall(); !errors.Is(err, ErrClosed) {
				t.Fatalf("Uninstall after Close: %v, want ErrClosed", err)
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
			if err != nil || v.Reason != DropPolicyDenied {
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

// TestPrivilegedRestoreRemovesStaleEndpoints leaves endpoints behind in
// every state a dead Datapath can leave them in, and checks what the next
// one adopts, what it removes, and that the IDs and addresses of removed
// endpoints can be used again.
func TestPrivilegedRestoreRemovesStaleEndpoints(t *testing.T) {
	testutils.RequirePrivileged(t)
	bpffs := testutils.NewBPFFS(t)
	node := testutils.NewNetNS(t)
	cfg := Config{BPFFSDir: bpffs, NodeNetNS: nsPath(node), ConntrackMaxEntries: 4096, IPCacheMaxEntries: 4096}
	addr := func(i byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, i}) }
	podB, podC, podE, podF := testutils.NewNetNS(t), testutils.NewNetNS(t), testutils.NewNetNS(t), testutils.NewNetNS(t)

	// The first agent: endpoint 1's pod is deleted after the agent closed
	// (its namespace goes with the subtest), endpoint 2's host interface
	// is deleted by hand, 3 stays, 4 is detached, 5 and 6 are left half
	// added and half deleted, and an entry without a record is planted.
	var gone1 int
	if !t.Run("first agent", func(t *testing.T) {
		podA := testutils.NewNetNS(t)
		d := openPinned(t, cfg)
		for _, ec := range []EndpointConfig{
			{ID: 1, Identity: idA, IPv4: addrA, IPv6: addrA6, NetNS: nsPath(podA)},
			{ID: 2, Identity: idB, IPv4: addrB, NetNS: nsPath(podB)},
			{ID: 3, Identity: idRemote, IPv4: addr(3), NetNS: nsPath(podC)},
			{ID: 4, Identity: idRemote, IPv4: addr(4), Detached: true},
			{ID: 5, Identity: idRemote, IPv4: addr(5), NetNS: nsPath(podE)},
			{ID: 6, Identity: idRemote, IPv4: addr(6), NetNS: nsPath(podF)},
		} {
			ep, err := d.AddEndpoint(ec)
			if err != nil {
				t.Fatal(err)
			}
			if ec.ID == 1 {
				gone1 = ep.HostIfindex()
				// A connection of endpoint 1, which must not outlive it.
				mustUpdate(t, ep.Policy(), map[PolicyKey]PolicyEntry{{Direction: Egress}: allow})
				if v, _, err := ep.TestRun(FromEndpoint, mustBytes(t, tcpPkt(addrA, remote, 1234, 80, TCPSyn))); err != nil || v.Action != ActionPass {
					t.Fatalf("%+v %v", v, err)
				}
			}
		}
		c, _ := d.Endpoint(3)
		mustUpdate(t, c.Policy(), map[PolicyKey]PolicyEntry{allowedKey: allow})
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
	}) {
		return
	}
	// A namespace goes away asynchronously, and its veth pair with it.
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := node.Netlink(t).LinkByIndex(gone1); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("endpoint 1's interface outlived its pod's namespace")
		}
		time.Sleep(20 * time.Millisecond)
	}
	np2, err := node.Netlink(t).LinkByName("np2")
	if err != nil {
		t.Fatal(err)
	}
	if err := node.Netlink(t).LinkDel(np2); err != nil {
		t.Fatal(err)
	}
	records := loadPinned(t, bpffs, recordsMapName)
	for id, st := range map[uint32]recordState{5: recordCreating, 6: recordDeleting} {
		var rec endpointRecord
		if err := records.Lookup(id, &rec); err != nil {
			t.Fatal(err)
		}
		rec.State = st
		if id == 5 {
			rec.HostIfindex = 0 // died right after creating the veth pair
		}
		if err := records.Update(id, rec, ebpf.UpdateExist); err != nil {
			t.Fatal(err)
		}
	}
	orphan := endpointKeyFor(addr(9))
	if err := loadPinned(t, bpffs, datapathMapNpEndpoints).Update(orphan, endpointInfo{EndpointID: 9, Identity: 5}, ebpf.UpdateNoExist); err != nil {
		t.Fatal(err)
	}

	d := openPinned(t, cfg)
	rep := d.Restored()
	if !slices.Equal(rep.Adopted, []EndpointID{3, 4}) || len(rep.Repaired) != 0 {
		t.Fatalf("adopted %v, repaired %+v; want 3 and 4 as they were", rep.Adopted, rep.Repaired)
	}
	want := []struct {
		id     EndpointID
		v4     netip.Addr
		reason string
	}{
		{1, addrA, "is gone"}, {2, addrB, "is gone"},
		{5, addr(5), "while adding"}, {6, addr(6), "while deleting"},
		{9, addr(9), "no record"},
	}
	if len(rep.Removed) != len(want) {
		t.Fatalf("removed %+v", rep.Removed)
	}
	for i, w := range want {
		got := rep.Removed[i]
		if got.ID != w.id || got.IPv4 != w.v4 || !strings.Contains(got.Reason, w.reason) {
			t.Errorf("removed[%d] = %+v, want endpoint %d (%v): %q", i, got, w.id, w.v4, w.reason)
		}
	}
	if got := rep.Removed[0]; got.IPv6 != addrA6 || got.HostIfName != "np1" {
		t.Errorf("removed endpoint 1: %+v", got)
	}

	if cts, err := d.Conntrack().Entries(); err != nil || len(cts) != 0 {
		t.Errorf("conntrack after removing endpoint 1: %+v, %v; want its connection gone", cts, err)
	}

	// Only 3's and 4's state is left, and 3's interface.
	var keys []netip.Addr
	var (
		k    endpointKey
		info endpointInfo
	)
	for it := d.maps.endpoints.Iterate(); it.Next(&k, &info); {
		keys = append(keys, k.Addr.addr(k.IPVersion))
	}
	slices.SortFunc(keys, netip.Addr.Compare)
	if !slices.Equal(keys, []netip.Addr{addr(3), addr(4)}) {
		t.Errorf("endpoints map holds %v", keys)
	}
	for _, m := range []*ebpf.Map{d.maps.policy, d.maps.records} {
		var ids []uint32
		var prev any // nil: the first key
		for {
			var id uint32
			if err := m.NextKey(prev, &id); err != nil {
				break
			}
			ids = append(ids, id)
			prev = id
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []uint32{3, 4}) {
			t.Errorf("%s holds endpoints %v", m, ids)
		}
	}
	entries, err := os.ReadDir(filepath.Join(bpffs, endpointPinDirName))
	if err != nil || len(entries) != 1 || entries[0].Name() != "3" {
		t.Errorf("endpoint pins %v, %v; want 3's only", entries, err)
	}
	for _, name := range []string{"np5", "np6"} {
		if _, err := node.Netlink(t).LinkByName(name); err == nil {
			t.Errorf("%s, of an interrupted endpoint, is still there", name)
		}
	}

	// The IDs and addresses are free again, and the new endpoints work
	// beside the adopted one.
	podA := testutils.NewNetNS(t)
	a, err := d.AddEndpoint(EndpointConfig{ID: 1, Identity: idA, IPv4: addrA, IPv6: addrA6, NetNS: nsPath(podA)})
	if err != nil {
		t.Fatalf("re-adding endpoint 1: %v", err)
	}
	if _, err := d.AddEndpoint(EndpointConfig{ID: 2, Identity: idB, IPv4: addrB, NetNS: nsPath(testutils.NewNetNS(t))}); err != nil {
		t.Fatalf("re-adding endpoint 2: %v", err)
	}
	mustUpdate(t, a.Policy(), map[PolicyKey]PolicyEntry{{Direction: Egress}: allow})
	testutils.ServeEcho(t, podC, "tcp", fmt.Sprintf(":%d", allowedPort))
	testutils.ServeEcho(t, podC, "tcp", fmt.Sprintf(":%d", deniedPort))
	c, err := dial(podA, "tcp", netip.AddrPortFrom(addr(3), allowedPort).String(), 2*time.Second)
	if err != nil {
		t.Fatalf("new endpoint 1 -> adopted endpoint 3: %v", err)
	}
	if err := echo(c, "hello"); err != nil {
		t.Fatal(err)
	}
	if _, err := dial(podA, "tcp", netip.AddrPortFrom(addr(3), deniedPort).String(), 500*time.Millisecond); !isTimeout(err) {
		t.Fatalf("new endpoint 1 -> adopted endpoint 3 on a denied port: %v, want a timeout", err)
	}

	if err := d.Uninstall(); err != nil {
		t.Fatal(err)
	}
	links, err := node.Netlink(t).LinkList()
	if err != nil || len(links) != 1 {
		t.Errorf("node links after Uninstall: %d, %v; want lo only", len(links), err)
	}
	expectNoPins(t, bpffs)
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

// TestPrivilegedRestoreRepairs removes a link pin (which detaches the
// program: no process holds the link) and a policy map while no Datapath
// runs; the next one puts both back, the policy map empty, so that the
// endpoint fails closed until its policy is written again.
func TestPrivilegedRestoreRepairs(t *testing.T) {
	w := newRestartWorld(t, AttachTCX)
	d1 := openPinned(t, w.config())
	a1, _, err := installPods(d1, nsPath(w.podA), nsPath(w.podB))
	if err != nil {
		t.Fatal(err)
	}
	ifindex := a1.HostIfindex()
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(w.bpffs, endpointPinDirName, "1", "from_endpoint")); err != nil {
		t.Fatal(err)
	}
	// The kernel frees an unpinned link after an RCU grace period.
	for deadline := time.Now().Add(5 * time.Second); len(w.programs(t, ifindex)) != 1; {
		if time.Now().After(deadline) {
			t.Fatalf("programs on np1 after its pin was removed: %v, want the egress one only", w.programs(t, ifindex))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := loadPinned(t, w.bpffs, datapathMapNpPolicy).Delete(uint32(2)); err != nil {
		t.Fatal(err)
	}
	// Without B's policy map the datapath fails closed (a missing map
	// denies) even before the repair.
	w.expect(t, allowedPort, false)

	d := openPinned(t, w.config())
	rep := d.Restored()
	if !slices.Equal(rep.Adopted, []EndpointID{1, 2}) || len(rep.Removed) != 0 || len(rep.Repaired) != 2 ||
		rep.Repaired[0].ID != 1 || !strings.Contains(rep.Repaired[0].Reason, "from_endpoint link was not pinned") ||
		rep.Repaired[1].ID != 2 || !strings.Contains(rep.Repaired[1].Reason, "policy map was missing") {
		t.Fatalf("restore report %+v", rep)
	}
	if got := w.programs(t, ifindex); len(got) != 2 {
		t.Fatalf("programs on np1 after the repair: %v, want 2", got)
	}
	if _, err := os.Stat(filepath.Join(w.bpffs, endpointPinDirName, "1", "from_endpoint")); err != nil {
		t.Fatalf("repaired link not pinned: %v", err)
	}
	b, _ := d.Endpoint(2)
	if got, err := b.Policy().Dump(); err != nil || len(got) != 0 {
		t.Fatalf("repaired policy map: %v, %v; want it empty", got, err)
	}
	w.expect(t, allowedPort, false)
	mustUpdate(t, b.Policy(), map[PolicyKey]PolicyEntry{allowedKey: allow})
	w.expect(t, allowedPort, true)
	w.expect(t, deniedPort, false)
	if err := d.Uninstall(); err != nil {
		t.Fatal(err)
	}
	w.expectClean(t)
}

// TestPrivilegedRestoreRefusesWrongNodeNamespace restarts on the right pins
// with the wrong node namespace: the endpoints' interfaces are not there,
// but their links are still bound to them, so New must refuse rather than
// remove the pins and leave the interfaces unfiltered.
func TestPrivilegedRestoreRefusesWrongNodeNamespace(t *testing.T) {
	w := newRestartWorld(t, AttachTCX)
	d1 := openPinned(t, w.config())
	a1, _, err := installPods(d1, nsPath(w.podA), nsPath(w.podB))
	if err != nil {
		t.Fatal(err)
	}
	progs := w.programs(t, a1.HostIfindex())
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}

	wrong := w.config()
	wrong.NodeNetNS = nsPath(testutils.NewNetNS(t))
	if d, err := New(wrong); err == nil || !strings.Contains(err.Error(), "NodeNetNS") {
		if d != nil {
			d.Close()
		}
		t.Fatalf("New in the wrong node namespace: %v, want a refusal naming NodeNetNS", err)
	}
	if got := w.programs(t, a1.HostIfindex()); !slices.Equal(got, progs) {
		t.Fatalf("programs after the refused New: %v, want %v", got, progs)
	}
	w.expect(t, allowedPort, true)
	w.expect(t, deniedPort, false)

	d := openPinned(t, w.config())
	checkAdoptedPods(t, d)
	if err := d.Uninstall(); err != nil {
		t.Fatal(err)
	}
	w.expectClean(t)
}
