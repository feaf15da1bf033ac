package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// nsPath is a path that names ns for EndpointConfig.NetNS and -node-netns,
// from this process or any other.
func nsPath(ns *testutils.NetNS) string {
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), ns.FD())
}

// testNode is what an agent under test runs on: a private node namespace,
// bpffs, state and manifest directories, all removed at cleanup.
type testNode struct {
	nodeNS    *testutils.NetNS
	bpffs     string
	state     string
	manifests string
	socket    string
}

func newTestNode(t testing.TB) *testNode {
	t.Helper()
	testutils.RequirePrivileged(t)
	dir := t.TempDir()
	n := &testNode{
		nodeNS: testutils.NewNetNS(t), bpffs: testutils.NewBPFFS(t),
		state: filepath.Join(dir, "state"), manifests: filepath.Join(dir, "manifests"),
		socket: filepath.Join(dir, "agent.sock"),
	}
	if err := os.Mkdir(n.manifests, 0o700); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *testNode) writeManifest(t *testing.T, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(n.manifests, name), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// addLoopbackAddrs puts host addresses on the node namespace's loopback:
// the node's own address (an L7 proxy's upstream source) or a server
// outside the cluster.
func (n *testNode) addLoopbackAddrs(t testing.TB, addrs ...netip.Addr) {
	t.Helper()
	nl := n.nodeNS.Netlink(t)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if err := nl.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}, Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatal(err)
		}
	}
}

func (n *testNode) config(t testing.TB) Config {
	return Config{Node: "test-node", StateDir: n.state, BPFFSDir: n.bpffs, NodeNetNS: nsPath(n.nodeNS),
		PoolV4: netip.MustParsePrefix("10.201.0.0/24"), Manifests: n.manifests, ManifestPoll: time.Hour,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))}
}

// startAgent runs an agent in this process, serving the API on n.socket,
// until the returned stop function (or the test's cleanup) stops it; the
// endpoints then stay installed unless uninstall is set.
func (n *testNode) startAgent(t *testing.T) (a *Agent, stop func(uninstall bool)) {
	t.Helper()
	return n.startAgentWith(t, n.config(t), ServeConfig{Socket: n.socket})
}

func (n *testNode) startAgentWith(t testing.TB, cfg Config, sc ServeConfig) (a *Agent, stop func(uninstall bool)) {
	t.Helper()
	a, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start agent: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx, sc) }()
	var once sync.Once
	stop = func(uninstall bool) {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("serve: %v", err)
			}
			var err error
			if uninstall {
				err = a.Uninstall(context.Background())
			} else {
				err = a.Close()
			}
			if err != nil {
				t.Errorf("stop agent: %v", err)
			}
		})
	}
	t.Cleanup(func() { stop(true) })
	waitForSocket(t, n.socket)
	return a, stop
}

func waitForSocket(t testing.TB, socket string) {
	t.Helper()
	c := agentapi.NewClient(socket)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := c.Status(context.Background()); err == nil {
			return
		} else if time.Now().After(deadline) {
			t.Fatalf("agent did not answer on %s: %v", socket, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// testPod is a pod namespace with the endpoint the agent made for it.
type testPod struct {
	ns   *testutils.NetNS
	req  agentapi.AddRequest
	resp agentapi.AddResponse
	addr netip.Addr
}

func addPod(t *testing.T, c *agentapi.Client, container, app string) *testPod {
	t.Helper()
	p := &testPod{ns: testutils.NewNetNS(t)}
	p.req = agentapi.AddRequest{Attachment: agentapi.Attachment{ContainerID: container, IfName: "eth0"},
		NetNS: nsPath(p.ns), Namespace: "prod", Pod: app, Labels: map[string]string{"app": app}}
	resp, err := c.Add(context.Background(), p.req)
	if err != nil {
		t.Fatalf("add %s: %v", app, err)
	}
	p.resp, p.addr = resp, resp.IPs[0].Address.Addr()
	return p
}

// dial connects from inside the pod.
func (p *testPod) dial(dst netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := p.ns.Do(func() (err error) { c, err = net.DialTimeout("tcp", dst.String(), timeout); return err })
	return c, err
}

// connects reports whether a TCP connection from p to dst is made and
// echoes a message; a policy drop shows as a timeout.
func (p *testPod) connects(t *testing.T, dst netip.AddrPort) bool {
	t.Helper()
	c, err := p.dial(dst, time.Second)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return false
		}
		t.Fatalf("dial %v: %v (want success or a timeout)", dst, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatalf("write %v: %v", dst, err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "ping\n" {
		t.Fatalf("echo from %v: %q, %v", dst, line, err)
	}
	return true
}

// dbPolicy lets web reach db on 5432 only; nothing selects web.
const dbPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "%d", protocol: TCP}]}]
`

// testWriter sends the agent's log to the test's.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

// TestMain removes the binary agentBinary built.
func TestMain(m *testing.M) {
	if os.Getenv(dialerEnv) == "1" {
		os.Exit(runDialer(os.Stdin, os.Stdout))
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// agentBinary builds the command once per test run.
func agentBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "nodeplane-node-bin-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "node")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// agentProcess is the agent running as a command.
type agentProcess struct {
	cmd  *exec.Cmd
	done chan error
}

// startAgentProcess runs the agent binary on n's directories.
func (n *testNode) startAgentProcess(t *testing.T) *agentProcess {
	t.Helper()
	cmd := exec.Command(agentBinary(t), "-node", "test-node", "-state-dir", n.state, "-bpffs", n.bpffs,
		"-node-netns", nsPath(n.nodeNS), "-pool-v4", "10.201.0.0/24", "-pool-v6", "", "-cgroup", "",
		"-manifests", n.manifests, "-socket", n.socket, "-hubble-listen", "", "-metrics-listen", "")
	cmd.Stdout, cmd.Stderr = testWriter{t}, testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &agentProcess{cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	waitForSocket(t, n.socket)
	return p
}

// stop sends sig and waits for the process to end.
func (p *agentProcess) stop(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if sig != os.Kill && err != nil {
			t.Fatalf("agent exited with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not stop")
	}
}
