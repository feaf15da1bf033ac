package main

import (
	"bytes"
	"context"
	"debug/buildinfo"
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
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/netnsutil"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/ipam"
)

// CNIToolEnv names an installed cnitool v1.3.1. Unset, the test installs
// one with `go install github.com/containernetworking/cni/cnitool@v1.3.1`
// (../shared/FACTS.md's way; about 5 s cold) into a temporary directory.
const CNIToolEnv = "NODEPLANE_CNITOOL"

// cnitoolVersion is the cnitool the tests run, as the issue asks.
const cnitoolVersion = "v1.3.1"

// dbPolicy lets pods labelled app=web reach app=db on TCP 5432, and
// nothing else reach db.
const dbPolicy = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
`

// TestPrivilegedCNITool drives the plugin with the real cnitool against an
// agent composed in the test from the SDK (see agent_linux_test.go), which
// lets the test look at the pool and the identities directly.
func TestPrivilegedCNITool(t *testing.T) {
	testutils.RequirePrivileged(t)
	a := startAgent(t, "10.20.0.0/24")
	a.addPolicy(t, dbPolicy)
	cnitoolScenario(t, a.sock, a.nodeNS.Path(), a)
}

// TestPrivilegedCNIToolNodeAgent runs the same scenario against the node
// agent binary (examples/node), dual stack, with the policy given as a
// manifest.
func TestPrivilegedCNIToolNodeAgent(t *testing.T) {
	testutils.RequirePrivileged(t)
	sock, nodeNS := startNodeAgent(t, "10.21.0.0/24", "fd00:21::/112", dbPolicy)
	cnitoolScenario(t, sock, nodeNS, nil)
}

// cnitoolScenario drives the plugin with cnitool against the agent on sock
// (whose host-side interfaces are in nodeNS): ADD on fresh namespaces gives
// endpoints whose interface, addresses and routes are what the result
// says, CHECK and STATUS succeed, dbPolicy is enforced between the pods
// with real TCP, DEL twice succeeds and frees the address, and DEL after
// the namespace is deleted succeeds and frees the address and the host
// interface. inproc, when the agent is the test's own, adds checks of its
// pool and identities.
func cnitoolScenario(t *testing.T, sock, nodeNS string, inproc *testAgent) {
	tool := cnitool(t)
	bin := buildPlugin(t)
	api := agentapi.NewClient(sock)
	confDir := writeConfList(t, "nodeplane", "1.1.0", map[string]any{"agentSocket": sock})
	run := func(env []string, args ...string) (stdout, stderr string, err error) {
		cmd := exec.Command(tool, args...)
		cmd.Env = append(os.Environ(), "CNI_PATH="+filepath.Dir(bin), "NETCONFPATH="+confDir)
		cmd.Env = append(cmd.Env, env...)
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err = cmd.Run()
		return o.String(), e.String(), err
	}
	must := func(env []string, args ...string) string {
		t.Helper()
		out, errOut, err := run(env, args...)
		if err != nil {
			t.Fatalf("cnitool %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
		}
		return out
	}
	// released says whether no endpoint of the agent holds addr any more.
	released := func(addr netip.Addr) bool {
		t.Helper()
		if _, ok := endpointWith(t, api, addr); ok {
			return false
		}
		if inproc != nil {
			if _, ok := inproc.pool.Owner(addr); ok {
				return false
			}
		}
		return true
	}

	type pod struct {
		name, netns string
		env         []string
		addr        netip.Addr // IPv4
		res         *current.Result
	}
	add := func(name string) *pod {
		t.Helper()
		p := &pod{name: name, netns: namedNetNS(t, name)}
		p.env = []string{
			"CNI_ARGS=K8S_POD_NAMESPACE=prod;K8S_POD_NAME=" + name,
			`CAP_ARGS={"labels":{"app":"` + name + `"},"bandwidth":{"egressRate":100000000,"egressBurst":4294967295}}`,
		}
		out := must(p.env, "add", "nodeplane", p.netns)
		if name == "web" {
			t.Logf("cnitool add nodeplane %s:\n%s", p.netns, out)
		}
		res, err := current.NewResult([]byte(out))
		if err != nil {
			t.Fatalf("add %s: result %s: %v", name, out, err)
		}
		p.res = res.(*current.Result)
		p.addr = checkResult(t, api, inproc, p.res, p.netns, "prod", name)
		return p
	}
	web, db, other := add("web"), add("db"), add("other")
	for _, p := range []*pod{web, db, other} {
		must(p.env, "check", "nodeplane", p.netns)
	}
	must(nil, "status", "nodeplane", web.netns)

	// The policy between the pods, with real TCP: web reaches db on 5432;
	// not on 8080 (db listens there too); other not on 5432.
	for _, port := range []uint16{5432, 8080} {
		serveIn(t, db.netns, netip.AddrPortFrom(db.addr, port))
	}
	for _, c := range []struct {
		from  *pod
		port  uint16
		allow bool
	}{{web, 5432, true}, {web, 8080, false}, {other, 5432, false}} {
		err := echoFrom(c.from.netns, netip.AddrPortFrom(db.addr, c.port), 2*time.Second)
		if c.allow && err != nil {
			t.Errorf("%s -> db:%d: %v; the policy allows it", c.from.name, c.port, err)
		}
		if !c.allow && err == nil {
			t.Errorf("%s -> db:%d connected; the policy denies it", c.from.name, c.port)
		}
		t.Logf("%s -> db:%d: allowed by policy %v, connection error %v", c.from.name, c.port, c.allow, err)
	}

	// CHECK finds a broken endpoint: with other's IPv4 address removed
	// inside its namespace, the node agent's Check (which looks at the
	// interfaces; the test agent's does not) fails through the plugin.
	if inproc == nil {
		h := netlinkIn(t, other.netns)
		link, err := h.LinkByName(other.res.Interfaces[1].Name)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.AddrDel(link, &netlink.Addr{IPNet: &net.IPNet{IP: other.addr.AsSlice(), Mask: net.CIDRMask(32, 32)}}); err != nil {
			t.Fatal(err)
		}
		if _, errOut, err := run(other.env, "check", "nodeplane", other.netns); err == nil {
			t.Errorf("CHECK of an endpoint without its address succeeded")
		} else {
			t.Logf("CHECK without the address: %s", lastLine(errOut))
		}
	}

	// DEL twice: both succeed, the first frees web's address.
	for i := range 2 {
		must(web.env, "del", "nodeplane", web.netns)
		if !released(web.addr) {
			t.Fatalf("after DEL %d web's address %v is still held", i+1, web.addr)
		}
	}
	// CHECK of a deleted attachment fails; it is not the agent's anymore.
	if _, errOut, err := run(web.env, "check", "nodeplane", web.netns); err == nil {
		t.Errorf("CHECK after DEL succeeded")
	} else {
		t.Logf("CHECK after DEL: %s", lastLine(errOut))
	}

	// DEL after the namespace is gone: the address and the host interface
	// are released and DEL succeeds.
	gone := add("gone")
	hostIf := gone.res.Interfaces[0].Name
	if out, err := exec.Command("ip", "netns", "del", filepath.Base(gone.netns)).CombinedOutput(); err != nil {
		t.Fatalf("ip netns del: %v %s", err, out)
	}
	if _, err := os.Stat(gone.netns); !os.IsNotExist(err) {
		t.Fatalf("%s still exists: %v", gone.netns, err)
	}
	must(gone.env, "del", "nodeplane", gone.netns)
	if !released(gone.addr) {
		t.Errorf("address %v of the deleted namespace is still held", gone.addr)
	}
	if _, err := linkIn(t, nodeNS, hostIf); err == nil {
		t.Errorf("host interface %s survived DEL", hostIf)
	}
	for _, p := range []*pod{db, other} {
		must(p.env, "del", "nodeplane", p.netns)
	}
	if eps, err := api.List(context.Background()); err != nil || len(eps) != 0 {
		t.Errorf("after every DEL the agent lists %+v (%v)", eps, err)
	}
	if inproc != nil && inproc.pool.Used(ipam.IPv4) != 0 {
		t.Errorf("%d addresses in use after every DEL", inproc.pool.Used(ipam.IPv4))
	}
}

// lastLine is the last non-empty line of cnitool's stderr: the error, after
// cobra's usage text.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// endpointWith finds the agent's endpoint that holds addr.
func endpointWith(t *testing.T, api *agentapi.Client, addr netip.Addr) (agentapi.Endpoint, bool) {
	t.Helper()
	eps, err := api.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range eps {
		for _, p := range ep.Addrs {
			if p.Addr() == addr {
				return ep, true
			}
		}
	}
	return agentapi.Endpoint{}, false
}

// checkResult compares an ADD result with the pod's namespace and the
// agent's endpoint, and returns the pod's IPv4 address.
func checkResult(t *testing.T, api *agentapi.Client, inproc *testAgent, res *current.Result, netnsPath, namespace, app string) netip.Addr {
	t.Helper()
	if res.CNIVersion != "1.1.0" || len(res.Interfaces) != 2 || len(res.IPs) == 0 || len(res.Routes) == 0 {
		t.Fatalf("result %+v is not complete", res)
	}
	if res.Interfaces[1].Sandbox != netnsPath || res.Interfaces[0].Sandbox != "" {
		t.Fatalf("interfaces %+v %+v: want the second in %s", res.Interfaces[0], res.Interfaces[1], netnsPath)
	}
	// Inside the namespace: the interface the result names, with its MAC,
	// every address of the result, and every route via its gateway.
	h := netlinkIn(t, netnsPath)
	link, err := h.LinkByName(res.Interfaces[1].Name)
	if err != nil {
		t.Fatalf("interface %s in %s: %v", res.Interfaces[1].Name, netnsPath, err)
	}
	if link.Attrs().HardwareAddr.String() != res.Interfaces[1].Mac {
		t.Errorf("MAC %v, result says %s", link.Attrs().HardwareAddr, res.Interfaces[1].Mac)
	}
	have, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var v4 netip.Addr
	var addrs []netip.Prefix
	for _, ip := range res.IPs {
		pfx, ok := prefixOf(ip.Address)
		if !ok || ip.Interface == nil || *ip.Interface != 1 || pfx.Bits() != pfx.Addr().BitLen() {
			t.Fatalf("result address %v on interface %v: want a host prefix on interface 1", ip.Address, ip.Interface)
		}
		if pfx.Addr().Is4() {
			v4 = pfx.Addr()
		}
		addrs = append(addrs, pfx)
		if !slices.ContainsFunc(have, func(a netlink.Addr) bool { return a.IPNet.String() == ip.Address.String() }) {
			t.Errorf("%s has addresses %v; the result says %v", link.Attrs().Name, have, ip.Address.String())
		}
		if ip.Gateway == nil {
			t.Errorf("address %v without a gateway", ip.Address)
		}
	}
	if !v4.IsValid() {
		t.Fatalf("no IPv4 address in %v", addrs)
	}
	routes, err := h.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range res.Routes {
		ones, _ := want.Dst.Mask.Size()
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool {
			dflt := r.Dst == nil || r.Dst.IP.IsUnspecified()
			return r.Gw.Equal(want.GW) && ((ones == 0 && dflt) || (r.Dst != nil && r.Dst.String() == want.Dst.String()))
		}) {
			t.Errorf("no route to %v via %v in the namespace: %v", want.Dst.String(), want.GW, routes)
		}
	}
	// The agent's endpoint: the result's addresses, host interface,
	// namespace and pod.
	ep, ok := endpointWith(t, api, v4)
	if !ok {
		t.Fatalf("the agent has no endpoint with %v", v4)
	}
	slices.SortFunc(addrs, netip.Prefix.Compare)
	if got := slices.SortedFunc(slices.Values(ep.Addrs), netip.Prefix.Compare); !slices.Equal(got, addrs) || ep.HostIfName != res.Interfaces[0].Name ||
		ep.NetNS != netnsPath || ep.Pod != app || ep.Namespace != namespace || ep.IfName != res.Interfaces[1].Name {
		t.Errorf("agent endpoint %+v; result %v", ep, res)
	}
	if inproc != nil {
		if !inproc.pool.Contains(v4) {
			t.Errorf("%v is not in the pool", v4)
		}
		labels, _ := inproc.alloc.Lookup(identity.ID(ep.Identity))
		for _, l := range []string{"k8s:app=" + app, "k8s:io.kubernetes.pod.namespace=" + namespace} {
			if !strings.Contains(labels.String(), l) {
				t.Errorf("identity %d has labels %v, want %s among them", ep.Identity, labels, l)
			}
		}
	}
	return v4
}

// startNodeAgent builds examples/node and runs it with a node namespace,
// bpffs, state directory and manifests directory of its own, serving on a
// socket in a temporary directory; it returns the socket and the node
// namespace's path. The agent is stopped with SIGTERM at cleanup.
func startNodeAgent(t *testing.T, poolV4, poolV6, manifest string) (sock, nodeNS string) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "node")
	if out, err := exec.Command("go", "build", "-o", bin, "../node").CombinedOutput(); err != nil {
		t.Fatalf("build the node agent: %v\n%s", err, out)
	}
	manifests := filepath.Join(dir, "manifests")
	if err := os.Mkdir(manifests, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(manifests, "policy.yaml"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	sock, nodeNS = filepath.Join(dir, "agent.sock"), anonNetNS(t)
	cmd := exec.Command(bin, "-node", "cni-test", "-state-dir", filepath.Join(dir, "state"), "-bpffs", testutils.NewBPFFS(t),
		"-node-netns", nodeNS, "-pool-v4", poolV4, "-pool-v6", poolV6, "-cgroup", "", "-manifests", manifests,
		"-socket", sock, "-hubble-listen", "", "-metrics-listen", "")
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	})
	api := agentapi.NewClient(sock)
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, err := api.Status(context.Background())
		if err == nil && st.Ready {
			return sock, nodeNS
		}
		select {
		case err := <-done:
			t.Fatalf("agent exited: %v\n%s", err, logs.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready after 60s (%+v, %v)\n%s", st, err, logs.String())
		}
	}
}

// TestPrivilegedCNIErrors checks the error objects a runtime gets (libcni
// in-process, which decodes the plugin's JSON) for a bad configuration, a
// missing agent, an exhausted pool (of the test agent and of the node
// agent's binary) and an unsupported version, and what cnitool prints for
// the first two.
func TestPrivilegedCNIErrors(t *testing.T) {
	testutils.RequirePrivileged(t)
	bin := buildPlugin(t)
	tool := cnitool(t)
	a := startAgent(t, "10.30.0.0/30")
	cni := newLibCNI(t, bin)
	ctx := context.Background()
	ns := anonNetNS(t)

	wantErr := func(t *testing.T, err error, code uint, msg, details string) {
		t.Helper()
		var te *types.Error
		if !errors.As(err, &te) {
			t.Fatalf("error %v (%T) is not a CNI error object", err, err)
		}
		if te.Code != code || te.Msg != msg || !strings.Contains(te.Details, details) {
			t.Fatalf("error object {code %d, msg %q, details %q}; want code %d, msg %q, details with %q", te.Code, te.Msg, te.Details, code, msg, details)
		}
		t.Logf("error object: code %d, msg %q, details %q", te.Code, te.Msg, te.Details)
	}
	rt := func(id string, ns string) *libcni.RuntimeConf {
		return &libcni.RuntimeConf{ContainerID: id, NetNS: ns, IfName: "eth0",
			Args: [][2]string{{"K8S_POD_NAMESPACE", "prod"}, {"K8S_POD_NAME", id}}}
	}

	t.Run("bad config", func(t *testing.T) {
		list := confList(t, "1.1.0", map[string]any{"agentSocket": "agent.sock"})
		_, err := cni.AddNetworkList(ctx, list, rt("bad", ns))
		wantErr(t, err, types.ErrInvalidNetworkConfig, "invalid nodeplane network configuration", `"agentSocket" "agent.sock" is not an absolute path`)
		dir := writeConfList(t, "nodeplane", "1.1.0", map[string]any{"agentSocket": "agent.sock"})
		out := cnitoolFails(t, tool, bin, dir, "add", "nodeplane", ns)
		if !strings.Contains(out, "invalid nodeplane network configuration; \"agentSocket\" \"agent.sock\" is not an absolute path") {
			t.Errorf("cnitool printed %q", out)
		}
	})
	t.Run("missing agent", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "no-agent.sock")
		list := confList(t, "1.1.0", map[string]any{"agentSocket": sock})
		_, err := cni.AddNetworkList(ctx, list, rt("noagent", ns))
		wantErr(t, err, types.ErrTryAgainLater, "nodeplane agent unavailable", sock)
		err = cni.GetStatusNetworkList(ctx, list)
		wantErr(t, err, types.ErrPluginNotAvailable, "nodeplane agent not available: nodeplane agent unavailable", sock)
		dir := writeConfList(t, "nodeplane", "1.1.0", map[string]any{"agentSocket": sock})
		out := cnitoolFails(t, tool, bin, dir, "add", "nodeplane", ns)
		if !strings.Contains(out, "nodeplane agent unavailable; ") || !strings.Contains(out, sock) {
			t.Errorf("cnitool printed %q", out)
		}
	})
	t.Run("unsupported version", func(t *testing.T) {
		list := confList(t, "1.1.0", map[string]any{"agentSocket": a.sock})
		list.Plugins[0], _ = libcni.InjectConf(list.Plugins[0], map[string]any{"cniVersion": "2.0.0", "name": "nodeplane"})
		_, err := cni.AddNetwork(ctx, list.Plugins[0], rt("v2", ns))
		wantErr(t, err, types.ErrIncompatibleCNIVersion, "incompatible CNI versions", "2.0.0")
	})
	t.Run("exhausted pool", func(t *testing.T) {
		list := confList(t, "1.1.0", map[string]any{"agentSocket": a.sock})
		free := int(a.pool.Free(ipam.IPv4))
		if free == 0 {
			t.Fatal("the /30 has no free address")
		}
		var ids []string
		for i := range free {
			id := fmt.Sprintf("fill%d", i)
			if _, err := cni.AddNetworkList(ctx, list, rt(id, anonNetNS(t))); err != nil {
				t.Fatalf("ADD %d of %d: %v", i+1, free, err)
			}
			ids = append(ids, id)
		}
		_, err := cni.AddNetworkList(ctx, list, rt("onetoomany", anonNetNS(t)))
		wantErr(t, err, agentapi.CodeExhausted, "address pool exhausted", "10.30.0.0/30")
		// The failed ADD left nothing behind, and DEL makes room again.
		if n := len(a.dp.Endpoints()); n != free {
			t.Errorf("%d endpoints after %d ADDs and a failed one", n, free)
		}
		if err := cni.DelNetworkList(ctx, list, rt(ids[0], "")); err != nil {
			t.Fatal(err)
		}
		if _, err := cni.AddNetworkList(ctx, list, rt("room", anonNetNS(t))); err != nil {
			t.Errorf("ADD after a DEL freed an address: %v", err)
		}
	})
	t.Run("exhausted pool, node agent", func(t *testing.T) {
		sock, _ := startNodeAgent(t, "10.31.0.0/30", "", dbPolicy)
		list := confList(t, "1.1.0", map[string]any{"agentSocket": sock})
		api := agentapi.NewClient(sock)
		for i := 0; ; i++ {
			_, err := cni.AddNetworkList(ctx, list, rt(fmt.Sprintf("node%d", i), anonNetNS(t)))
			if err == nil {
				if i == 4 {
					t.Fatal("a /30 gave 5 addresses")
				}
				continue
			}
			if i == 0 {
				t.Fatalf("the first ADD failed: %v", err)
			}
			wantErr(t, err, agentapi.CodeExhausted, "address pool exhausted", "10.31.0.0/30")
			if eps, err := api.List(ctx); err != nil || len(eps) != i {
				t.Errorf("after %d ADDs and a failed one the agent lists %d endpoints (%v)", i, len(eps), err)
			}
			for j := range i {
				if err := cni.DelNetworkList(ctx, list, rt(fmt.Sprintf("node%d", j), "")); err != nil {
					t.Errorf("DEL: %v", err)
				}
			}
			return
		}
	})
}

// TestPrivilegedCNIConcurrentAdd runs 50 ADDs at once through libcni, each
// its own plugin process, and checks that the 50 pods get 50 distinct
// addresses, each owned by its attachment; then 50 DELs at once free all.
func TestPrivilegedCNIConcurrentAdd(t *testing.T) {
	testutils.RequirePrivileged(t)
	const n = 50
	bin := buildPlugin(t)
	a := startAgent(t, "10.40.0.0/24")
	cni := newLibCNI(t, bin)
	list := confList(t, "1.1.0", map[string]any{"agentSocket": a.sock})
	rts := make([]*libcni.RuntimeConf, n)
	for i := range rts {
		rts[i] = &libcni.RuntimeConf{ContainerID: fmt.Sprintf("pod%02d", i), NetNS: anonNetNS(t), IfName: "eth0",
			Args:           [][2]string{{"K8S_POD_NAMESPACE", "prod"}, {"K8S_POD_NAME", fmt.Sprintf("pod%02d", i)}},
			CapabilityArgs: map[string]any{"labels": map[string]string{"app": fmt.Sprintf("app%d", i%5)}}}
	}
	list.Plugins[0], _ = libcni.InjectConf(list.Plugins[0], map[string]any{"capabilities": map[string]bool{"labels": true}})
	addrs := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Go(func() {
			res, err := cni.AddNetworkList(context.Background(), list, rts[i])
			if err != nil {
				errs[i] = err
				return
			}
			r, err := current.NewResultFromResult(res)
			if err != nil || len(r.IPs) != 1 {
				errs[i] = fmt.Errorf("result %v: %v", res, err)
				return
			}
			p, _ := prefixOf(r.IPs[0].Address)
			addrs[i] = p.Addr()
		})
	}
	wg.Wait()
	t.Logf("%d concurrent ADDs took %v", n, time.Since(start))
	seen := map[netip.Addr]int{}
	for i, addr := range addrs {
		if errs[i] != nil {
			t.Errorf("ADD %d: %v", i, errs[i])
			continue
		}
		if j, dup := seen[addr]; dup {
			t.Errorf("pods %d and %d both got %v", j, i, addr)
		}
		seen[addr] = i
		if owner, _ := a.pool.Owner(addr); owner != rts[i].ContainerID+"/eth0" {
			t.Errorf("%v belongs to %q, not pod %d", addr, owner, i)
		}
	}
	if len(seen) != n || int(a.pool.Used(ipam.IPv4)) != n || len(a.dp.Endpoints()) != n {
		t.Errorf("%d distinct addresses, %d used in the pool, %d endpoints; want %d each", len(seen), a.pool.Used(ipam.IPv4), len(a.dp.Endpoints()), n)
	}
	for i := range n {
		wg.Go(func() { errs[i] = cni.DelNetworkList(context.Background(), list, rts[i]) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("DEL %d: %v", i, err)
		}
	}
	if used := a.pool.Used(ipam.IPv4); used != 0 || len(a.dp.Endpoints()) != 0 {
		t.Errorf("after 50 DELs: %d addresses used, %d endpoints", used, len(a.dp.Endpoints()))
	}
}

// TestPrivilegedCNIGC adds three attachments, then runs GC from a runtime
// that has no cached attachments (so libcni issues no DELs of its own) and
// lists one as valid: the plugin's GC alone must remove the other two.
func TestPrivilegedCNIGC(t *testing.T) {
	testutils.RequirePrivileged(t)
	bin := buildPlugin(t)
	a := startAgent(t, "10.50.0.0/24")
	list := confList(t, "1.1.0", map[string]any{"agentSocket": a.sock})
	adder := newLibCNI(t, bin)
	for _, id := range []string{"keep", "stale1", "stale2"} {
		if _, err := adder.AddNetworkList(context.Background(), list, &libcni.RuntimeConf{ContainerID: id, NetNS: anonNetNS(t), IfName: "eth0"}); err != nil {
			t.Fatal(err)
		}
	}
	gc := newLibCNI(t, bin)
	err := gc.GCNetworkList(context.Background(), list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "keep", IfName: "eth0"}}})
	if err != nil {
		t.Fatal(err)
	}
	eps, _ := a.List(context.Background())
	if len(eps) != 1 || eps[0].ContainerID != "keep" || a.pool.Used(ipam.IPv4) != 1 || len(a.dp.Endpoints()) != 1 {
		t.Fatalf("after GC: endpoints %+v, %d addresses, %d datapath endpoints; want only keep's", eps, a.pool.Used(ipam.IPv4), len(a.dp.Endpoints()))
	}
	for _, id := range []string{"stale1", "stale2"} {
		if _, ok := a.endpoint(agentapi.Attachment{ContainerID: id, IfName: "eth0"}); ok {
			t.Errorf("%s survived GC", id)
		}
	}
}

// newLibCNI returns libcni as a runtime holds it, finding plugins next to
// bin and caching results in a new directory. Its exec is given: libcni
// creates a missing one lazily, which races when ADDs run concurrently.
func newLibCNI(t *testing.T, bin string) *libcni.CNIConfig {
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}
	return libcni.NewCNIConfigWithCacheDir([]string{filepath.Dir(bin)}, t.TempDir(), exec)
}

// cnitool returns the path of cnitool v1.3.1: $NODEPLANE_CNITOOL, or one
// `go install`ed into a temporary directory. Its build information must
// say v1.3.1. A cnitool that cannot be had fails the test: running the
// real runtime tool is the point.
func cnitool(t *testing.T) string {
	t.Helper()
	bin := os.Getenv(CNIToolEnv)
	if bin == "" {
		gobin := t.TempDir()
		cmd := exec.Command("go", "install", "github.com/containernetworking/cni/cnitool@"+cnitoolVersion)
		cmd.Dir = gobin // outside this module: go install pkg@version uses cnitool's own go.mod
		cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go install cnitool@%s (or set %s): %v\n%s", cnitoolVersion, CNIToolEnv, err, out)
		}
		bin = filepath.Join(gobin, "cnitool")
	}
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		t.Fatalf("%s: %v", bin, err)
	}
	if info.Path != "github.com/containernetworking/cni/cnitool" || info.Main.Version != cnitoolVersion {
		t.Fatalf("%s is %s %s, want cnitool %s", bin, info.Path, info.Main.Version, cnitoolVersion)
	}
	return bin
}

// cnitoolFails runs cnitool, which must fail, and returns its stderr.
func cnitoolFails(t *testing.T, tool, plugin, confDir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(tool, args...)
	cmd.Env = append(os.Environ(), "CNI_PATH="+filepath.Dir(plugin), "NETCONFPATH="+confDir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err == nil {
		t.Fatalf("cnitool %v succeeded", args)
	}
	return stderr.String()
}

// confList returns a network configuration list of one nodeplane plugin
// with extra fields.
func confList(t *testing.T, cniVersion string, extra map[string]any) *libcni.NetworkConfigList {
	t.Helper()
	list, err := libcni.NetworkConfFromBytes(confListBytes(t, "nodeplane", cniVersion, extra))
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func confListBytes(t *testing.T, name, cniVersion string, extra map[string]any) []byte {
	t.Helper()
	plugin := map[string]any{"type": PluginType, "capabilities": map[string]bool{"labels": true, "bandwidth": true}}
	for k, v := range extra {
		plugin[k] = v
	}
	b, err := json.Marshal(map[string]any{"cniVersion": cniVersion, "name": name, "plugins": []any{plugin}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeConfList writes the list into a new NETCONFPATH directory.
func writeConfList(t *testing.T, name, cniVersion string, extra map[string]any) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "10-"+name+".conflist"), confListBytes(t, name, cniVersion, extra), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// namedNetNS creates a namespace the way runtimes and `ip netns` do, a
// bind mount under /run/netns, and returns its path; cleanup deletes it
// unless the test already did.
func namedNetNS(t *testing.T, name string) string {
	t.Helper()
	name = fmt.Sprintf("npcni-%d-%s", os.Getpid(), name)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v %s", name, err, out)
	}
	path := filepath.Join("/run/netns", name)
	t.Cleanup(func() {
		if _, err := os.Stat(path); err == nil {
			exec.Command("ip", "netns", "del", name).Run()
		}
	})
	return path
}

// anonNetNS returns the /proc path of a new anonymous namespace that lives
// until the test ends.
func anonNetNS(t *testing.T) string {
	t.Helper()
	ns, err := datapath.NewNetNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns.Path()
}

func nsHandle(t *testing.T, path string) netns.NsHandle {
	t.Helper()
	h, err := netns.GetFromPath(path)
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func netlinkIn(t *testing.T, path string) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(nsHandle(t, path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func linkIn(t *testing.T, path, name string) (netlink.Link, error) {
	t.Helper()
	return netlinkIn(t, path).LinkByName(name)
}

// serveIn listens on addr inside the namespace at path and echoes what
// each connection sends, until the test ends.
func serveIn(t *testing.T, path string, addr netip.AddrPort) {
	t.Helper()
	var l net.Listener
	err := netnsutil.Do(nsHandle(t, path), func() (err error) {
		l, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
}

// echoFrom connects from inside the namespace at path to dst and echoes
// one message.
func echoFrom(path string, dst netip.AddrPort, timeout time.Duration) error {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return err
	}
	defer h.Close()
	var c net.Conn
	if err := netnsutil.Do(h, func() (err error) {
		c, err = net.DialTimeout("tcp", dst.String(), timeout)
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	msg := []byte("hello")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, msg); err != nil {
		return err
	}
	if string(msg) != "hello" {
		return fmt.Errorf("echo returned %q", msg)
	}
	return nil
}
