package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
)

// fakeAgent is an agentapi.Backend that records requests and answers with
// fixed endpoints; the privileged tests use a real one.
type fakeAgent struct {
	mu     sync.Mutex
	adds   []agentapi.AddRequest
	dels   []agentapi.DelRequest
	gcs    []agentapi.GCRequest
	checks []agentapi.CheckRequest
	addErr error
	// checkErr is Check's answer.
	checkErr error
	status   agentapi.Status
	eps      []agentapi.Endpoint
	addResp  agentapi.AddResponse
}

func (f *fakeAgent) Add(_ context.Context, req agentapi.AddRequest) (agentapi.AddResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.adds = append(f.adds, req)
	return f.addResp, f.addErr
}
func (f *fakeAgent) Del(_ context.Context, req agentapi.DelRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dels = append(f.dels, req)
	return nil
}
func (f *fakeAgent) Check(_ context.Context, req agentapi.CheckRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.checks = append(f.checks, req)
	return f.checkErr
}
func (f *fakeAgent) List(context.Context) ([]agentapi.Endpoint, error) { return f.eps, nil }
func (f *fakeAgent) GC(_ context.Context, req agentapi.GCRequest) (agentapi.GCResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gcs = append(f.gcs, req)
	return agentapi.GCResponse{}, nil
}
func (f *fakeAgent) Status(context.Context) (agentapi.Status, error) { return f.status, nil }

// serveAgent serves b on a unix socket in a temporary directory and returns
// the socket's path.
func serveAgent(t *testing.T, b agentapi.Backend) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: agentapi.NewHandler(b)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

var webResponse = agentapi.AddResponse{
	EndpointID: 3, Identity: 1000,
	Interfaces: []agentapi.Interface{
		{Name: "np3", MAC: "02:00:00:00:00:03"},
		{Name: "eth0", MAC: "0a:58:0a:00:00:05", Sandbox: "/var/run/netns/web"},
	},
	IPs:    []agentapi.IPConfig{{Address: netip.MustParsePrefix("10.0.0.5/32"), Gateway: netip.MustParseAddr("169.254.1.1"), Interface: 1}},
	Routes: []agentapi.Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("169.254.1.1")}},
	MTU:    1500,
}

func netconf(sock string, extra string) []byte {
	return []byte(`{"cniVersion":"1.1.0","name":"np","type":"nodeplane","agentSocket":"` + sock + `"` + extra + `}`)
}

func TestAddResult(t *testing.T) {
	agent := &fakeAgent{addResp: webResponse}
	sock := serveAgent(t, agent)
	var out bytes.Buffer
	p := &plugin{stdout: &out}
	err := p.add(&skel.CmdArgs{
		ContainerID: "c1", Netns: "/var/run/netns/web", IfName: "eth0",
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0",
		StdinData: netconf(sock, `,"runtimeConfig":{"labels":{"app":"web"},"bandwidth":{"egressRate":8000000,"ingressRate":4000000}},
			"args":{"cni":{"labels":[{"key":"tier","value":"fe"}]}}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	want := agentapi.AddRequest{
		Attachment: agentapi.Attachment{ContainerID: "c1", IfName: "eth0"}, NetNS: "/var/run/netns/web",
		Namespace: "prod", Pod: "web-0", Labels: map[string]string{"app": "web", "tier": "fe"},
		EgressRate: 8000000, IngressRate: 4000000,
	}
	if len(agent.adds) != 1 || !equalJSON(t, agent.adds[0], want) {
		t.Fatalf("agent got %+v, want %+v", agent.adds, want)
	}
	// The result as the runtime reads it: CNI 1.1 JSON, checked field by
	// field against the agent's answer.
	const wantJSON = `{"cniVersion":"1.1.0",
		"interfaces":[{"name":"np3","mac":"02:00:00:00:00:03","mtu":1500},{"name":"eth0","mac":"0a:58:0a:00:00:05","mtu":1500,"sandbox":"/var/run/netns/web"}],
		"ips":[{"interface":1,"address":"10.0.0.5/32","gateway":"169.254.1.1"}],
		"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}]}`
	var got, exp any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("result %s: %v", out.Bytes(), err)
	}
	_ = json.Unmarshal([]byte(wantJSON), &exp)
	if !equalJSON(t, got, exp) {
		t.Fatalf("result:\n%s\nwant:\n%s", out.Bytes(), wantJSON)
	}
	// And it parses as a 1.1 result.
	if _, err := current.NewResult(out.Bytes()); err != nil {
		t.Fatal(err)
	}
}

func TestAddOlderVersion(t *testing.T) {
	sock := serveAgent(t, &fakeAgent{addResp: webResponse})
	var out bytes.Buffer
	p := &plugin{stdout: &out}
	conf := []byte(`{"cniVersion":"0.4.0","name":"np","type":"nodeplane","agentSocket":"` + sock + `"}`)
	if err := p.add(&skel.CmdArgs{ContainerID: "c1", Netns: "/x", IfName: "eth0", StdinData: conf}); err != nil {
		t.Fatal(err)
	}
	var res struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct {
			Version string `json:"version"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || res.CNIVersion != "0.4.0" || len(res.IPs) != 1 || res.IPs[0].Version != "4" {
		t.Fatalf("0.4.0 result %s (%v)", out.Bytes(), err)
	}
}

func TestToResultIncomplete(t *testing.T) {
	for name, mut := range map[string]func(*agentapi.AddResponse){
		"no sandbox":         func(r *agentapi.AddResponse) { r.Interfaces = r.Interfaces[:1] },
		"no address":         func(r *agentapi.AddResponse) { r.IPs = nil },
		"host address":       func(r *agentapi.AddResponse) { r.IPs[0].Interface = 0 },
		"index out of range": func(r *agentapi.AddResponse) { r.IPs[0].Interface = 2 },
		"invalid address":    func(r *agentapi.AddResponse) { r.IPs[0].Address = netip.Prefix{} },
		"unnamed":            func(r *agentapi.AddResponse) { r.Interfaces[0].Name = "" },
	} {
		t.Run(name, func(t *testing.T) {
			r := webResponse
			r.Interfaces = append([]agentapi.Interface(nil), r.Interfaces...)
			r.IPs = append([]agentapi.IPConfig(nil), r.IPs...)
			mut(&r)
			_, err := toResult(r)
			if te, ok := err.(*types.Error); !ok || te.Code != types.ErrInternal || te.Msg != "the nodeplane agent returned an incomplete result" {
				t.Fatalf("toResult = %v", err)
			}
		})
	}
}

func TestAgentErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.sock")
	exhausted := serveAgent(t, &fakeAgent{addErr: &agentapi.Error{Code: agentapi.CodeExhausted, Msg: "address pool exhausted", Details: "10.0.0.0/30 has no free IPv4 address"}})
	plain := serveAgent(t, &fakeAgent{addErr: errors.New("disk on fire")})
	for _, tc := range []struct {
		name, sock string
		code       uint
		msg        string
	}{
		{"missing agent", missing, types.ErrTryAgainLater, "nodeplane agent unavailable"},
		{"exhausted", exhausted, agentapi.CodeExhausted, "address pool exhausted: 10.0.0.0/30 has no free IPv4 address"},
		{"plain", plain, agentapi.CodeIOFailure, "disk on fire"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &plugin{stdout: new(bytes.Buffer)}
			err := p.add(&skel.CmdArgs{ContainerID: "c", Netns: "/x", IfName: "eth0", StdinData: netconf(tc.sock, "")})
			te, ok := err.(*types.Error)
			if !ok || te.Code != tc.code || !strings.HasPrefix(te.Msg+": "+te.Details, tc.msg) {
				t.Fatalf("add = %#v; want code %d, %q", err, tc.code, tc.msg)
			}
			if tc.name == "missing agent" && !strings.Contains(te.Details, missing) {
				t.Errorf("details %q do not name the socket", te.Details)
			}
		})
	}
}

// TestAgentMissingEveryCommand: DEL, CHECK and GC without an agent are
// code 11 as ADD is, so that the runtime retries rather than forgets an
// endpoint whose address the agent still holds.
func TestAgentMissingEveryCommand(t *testing.T) {
	conf := netconf(filepath.Join(t.TempDir(), "none.sock"), `,"prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.5/32"}]}`)
	args := &skel.CmdArgs{ContainerID: "c", Netns: "/x", IfName: "eth0", StdinData: conf}
	p := &plugin{}
	for name, cmd := range map[string]func(*skel.CmdArgs) error{"DEL": p.del, "CHECK": p.check, "GC": p.gc} {
		err := cmd(args)
		if te, ok := err.(*types.Error); !ok || te.Code != types.ErrTryAgainLater || te.Msg != "nodeplane agent unavailable" {
			t.Errorf("%s without an agent: %#v", name, err)
		}
	}
}

func TestStatus(t *testing.T) {
	ready := serveAgent(t, &fakeAgent{status: agentapi.Status{Ready: true}})
	notReady := serveAgent(t, &fakeAgent{status: agentapi.Status{Reason: "restoring endpoints"}})
	p := &plugin{}
	if err := p.status(&skel.CmdArgs{StdinData: netconf(ready, "")}); err != nil {
		t.Errorf("ready agent: %v", err)
	}
	err := p.status(&skel.CmdArgs{StdinData: netconf(notReady, "")})
	if te, ok := err.(*types.Error); !ok || te.Code != types.ErrPluginNotAvailable || te.Details != "restoring endpoints" {
		t.Errorf("agent not ready: %#v", err)
	}
	err = p.status(&skel.CmdArgs{StdinData: netconf(filepath.Join(t.TempDir(), "none.sock"), "")})
	if te, ok := err.(*types.Error); !ok || te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, "unavailable") {
		t.Errorf("no agent: %#v", err)
	}
}

func TestDelGCCheck(t *testing.T) {
	agent := &fakeAgent{eps: []agentapi.Endpoint{{
		Attachment: agentapi.Attachment{ContainerID: "c1", IfName: "eth0"},
		Addrs:      []netip.Prefix{netip.MustParsePrefix("10.0.0.5/32")},
	}}}
	sock := serveAgent(t, agent)
	p := &plugin{}
	if err := p.del(&skel.CmdArgs{ContainerID: "c1", IfName: "eth0", StdinData: netconf(sock, "")}); err != nil {
		t.Fatal(err)
	}
	if len(agent.dels) != 1 || agent.dels[0].ContainerID != "c1" || agent.dels[0].NetNS != "" {
		t.Fatalf("agent got %+v", agent.dels)
	}
	gc := `,"cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]`
	if err := p.gc(&skel.CmdArgs{StdinData: netconf(sock, gc)}); err != nil {
		t.Fatal(err)
	}
	if err := p.gc(&skel.CmdArgs{StdinData: netconf(sock, "")}); err != nil {
		t.Fatal(err)
	}
	if len(agent.gcs) != 2 || len(agent.gcs[0].Valid) != 1 || agent.gcs[0].Valid[0] != (agentapi.Attachment{ContainerID: "c1", IfName: "eth0"}) ||
		agent.gcs[1].Valid == nil || len(agent.gcs[1].Valid) != 0 {
		t.Fatalf("agent got %+v", agent.gcs)
	}

	prev := func(addr string) string {
		return `,"prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"interface":0,"address":"` + addr + `"}]}`
	}
	check := func(cid, addr string) error {
		return p.check(&skel.CmdArgs{ContainerID: cid, Netns: "/x", IfName: "eth0", StdinData: netconf(sock, prev(addr))})
	}
	// The plugin hands the agent the attachment, its namespace and the
	// prevResult's addresses (the agent compares them), and passes the
	// agent's error on.
	if err := check("c1", "10.0.0.5/32"); err != nil {
		t.Errorf("CHECK of the agent's endpoint: %v", err)
	}
	want := agentapi.CheckRequest{Attachment: agentapi.Attachment{ContainerID: "c1", IfName: "eth0"}, NetNS: "/x",
		Addrs: []netip.Prefix{netip.MustParsePrefix("10.0.0.5/32")}}
	if len(agent.checks) != 1 || !reflect.DeepEqual(agent.checks[0], want) {
		t.Errorf("agent got %+v, want %+v", agent.checks, want)
	}
	agent.checkErr = agentapi.Errorf(agentapi.CodeUnknownContainer, "no endpoint for container c2 interface eth0")
	if err, ok := check("c2", "10.0.0.5/32").(*types.Error); !ok || err.Code != types.ErrUnknownContainer {
		t.Errorf("CHECK of an unknown container: %v", err)
	}
	if err, ok := check("c1", "not-an-address").(*types.Error); !ok || err.Code != types.ErrDecodingFailure || len(agent.checks) != 2 {
		t.Errorf("CHECK with a bad prevResult address: %v (agent asked %d times, want 2)", err, len(agent.checks))
	}
	if err, ok := p.check(&skel.CmdArgs{ContainerID: "c1", Netns: "/x", IfName: "eth0", StdinData: netconf(sock, "")}).(*types.Error); !ok || err.Code != types.ErrInvalidNetworkConfig {
		t.Errorf("CHECK without prevResult: %v", err)
	}
}

// TestBinaryErrorObjects runs the built plugin as a runtime would and
// reads the error objects it prints: skel's dispatch (version checks,
// environment) and ours (configuration) both end up as CNI JSON on stdout
// with exit status 1.
func TestBinaryErrorObjects(t *testing.T) {
	bin := buildPlugin(t)
	sock := serveAgent(t, &fakeAgent{addResp: webResponse})
	for _, tc := range []struct {
		name, cmd, conf string
		code            uint
		msg             string
	}{
		{"unsupported version", "ADD", `{"cniVersion":"9.9.9","name":"np","type":"nodeplane"}`, types.ErrIncompatibleCNIVersion, "incompatible CNI versions"},
		{"GC before 1.1", "GC", `{"cniVersion":"1.0.0","name":"np","type":"nodeplane"}`, types.ErrIncompatibleCNIVersion, "config version does not allow GC"},
		{"bad config", "ADD", `{"cniVersion":"1.1.0","name":"np","type":"nodeplane","agentSocket":"rel.sock"}`, types.ErrInvalidNetworkConfig, "invalid nodeplane network configuration"},
		{"not json", "ADD", `{"cniVersion":"1.1.0",`, types.ErrDecodingFailure, ""},
		{"missing agent", "ADD", `{"cniVersion":"1.1.0","name":"np","type":"nodeplane","agentSocket":"/nonexistent/agent.sock"}`, types.ErrTryAgainLater, "nodeplane agent unavailable"},
		{"missing agent STATUS", "STATUS", `{"cniVersion":"1.1.0","name":"np","type":"nodeplane","agentSocket":"/nonexistent/agent.sock"}`, types.ErrPluginNotAvailable, "nodeplane agent not available: nodeplane agent unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stdout, err := runPlugin(bin, tc.cmd, tc.conf, "c1", "/proc/self/ns/net")
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v, stdout %s", err, stdout)
			}
			var obj struct {
				CNIVersion string `json:"cniVersion"`
				Code       uint   `json:"code"`
				Msg        string `json:"msg"`
				Details    string `json:"details"`
			}
			if err := json.Unmarshal(stdout, &obj); err != nil {
				t.Fatalf("stdout is not a CNI error object: %s", stdout)
			}
			if obj.Code != tc.code || !strings.HasPrefix(obj.Msg, tc.msg) || obj.Msg == "" {
				t.Fatalf("error object %s; want code %d, msg %q", stdout, tc.code, tc.msg)
			}
		})
	}
	t.Run("VERSION", func(t *testing.T) {
		stdout, err := runPlugin(bin, "VERSION", `{"cniVersion":"1.1.0"}`, "", "")
		if err != nil {
			t.Fatal(err)
		}
		var v struct {
			SupportedVersions []string `json:"supportedVersions"`
		}
		if json.Unmarshal(stdout, &v) != nil || !strings.Contains(strings.Join(v.SupportedVersions, ","), "1.1.0") {
			t.Fatalf("VERSION: %s", stdout)
		}
	})
	t.Run("STATUS", func(t *testing.T) {
		fake := serveAgent(t, &fakeAgent{status: agentapi.Status{Ready: true}})
		if out, err := runPlugin(bin, "STATUS", string(netconf(fake, "")), "", ""); err != nil {
			t.Fatalf("STATUS: %v %s", err, out)
		}
	})
	_ = sock
}

// buildPlugin builds the plugin binary as "nodeplane" in a new directory
// (a CNI_PATH) and returns its path.
func buildPlugin(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), PluginType)
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runPlugin runs the plugin binary with a CNI command and returns stdout.
func runPlugin(bin, command, conf, containerID, netns string) ([]byte, error) {
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID="+containerID, "CNI_NETNS="+netns,
		"CNI_IFNAME=eth0", "CNI_PATH="+filepath.Dir(bin))
	cmd.Stdin = strings.NewReader(conf)
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	err := cmd.Run()
	return stdout.Bytes(), err
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	return bytes.Equal(ja, jb)
}
