package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/ipam"
	"github.com/nodeplane/nodeplane/policy"
)

// testAgent is a node agent for the plugin's end-to-end tests, composed
// from the SDK as the root example_test.go composes it (ipam.Pool, the
// in-process identity allocator, a pinned datapath.Datapath, the ipcache,
// the policy engine) behind agentapi.NewHandler on a unix socket. It is
// the real dataplane, not a fake: endpoints get veths, programs and policy
// maps, and the tests send TCP through them. The node agent of
// examples/node does the same with restarts, manifests and flows on top.
type testAgent struct {
	sock   string
	nodeNS *datapath.NetNS
	pool   *ipam.Pool
	alloc  *identity.InProcessAllocator
	dp     *datapath.Datapath
	ipc    *ipcache.IPCache
	engine *policy.Engine

	mu     sync.Mutex
	nextID datapath.EndpointID
	eps    map[agentapi.Attachment]*attached
}

type attached struct {
	req   agentapi.AddRequest
	ep    *datapath.Endpoint
	ident identity.ID
	resp  agentapi.AddResponse
}

// gatewayIPv4 is the link-local gateway datapath.AddEndpoint routes every
// endpoint through (its documentation, "Inside the endpoint's
// namespace"); the tests read the pod's routes back to confirm it.
var gatewayIPv4 = netip.MustParseAddr("169.254.1.1")

// startAgent runs a test agent whose node namespace is a new one and whose
// pool is prefix, serving on a socket in a temporary directory. Everything
// goes away with t's cleanup.
func startAgent(t *testing.T, prefix string) *testAgent {
	t.Helper()
	testutils.RequirePrivileged(t)
	a := &testAgent{sock: filepath.Join(t.TempDir(), "agent.sock"), eps: map[agentapi.Attachment]*attached{}}
	var err error
	if a.nodeNS, err = datapath.NewNetNS(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.nodeNS.Close() })
	if a.pool, err = ipam.New(ipam.Config{Prefixes: []netip.Prefix{netip.MustParsePrefix(prefix)}}); err != nil {
		t.Fatal(err)
	}
	if a.alloc, err = identity.NewInProcessAllocator(identity.InProcessConfig{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.alloc.Close() })
	a.dp, err = datapath.New(datapath.Config{BPFFSDir: testutils.NewBPFFS(t), NodeNetNS: a.nodeNS.Path()})
	testutils.SkipIfNotSupported(t, err)
	// Uninstall, not just Close: the endpoints are pinned and would
	// otherwise outlive the test.
	t.Cleanup(func() {
		if err := a.dp.Uninstall(); err != nil {
			t.Errorf("uninstall datapath: %v", err)
		}
		a.dp.Close()
	})
	a.ipc = ipcache.New()
	if err := a.ipc.AddWriter(a.dp.IPCache()); err != nil {
		t.Fatal(err)
	}
	if a.engine, err = policy.NewEngine(policy.EngineConfig{CIDRAllocator: a.alloc, IPCache: a.ipc}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.engine.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	watch := make(chan error, 1)
	go func() { watch <- a.engine.WatchIdentities(ctx, a.alloc) }()
	t.Cleanup(func() {
		cancel()
		if err := <-watch; !errors.Is(err, context.Canceled) {
			t.Errorf("identity watch: %v", err)
		}
	})

	ln, err := net.Listen("unix", a.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: agentapi.NewHandler(a)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return a
}

// Add creates the pod's endpoint: address, identity, veth and programs,
// ipcache entry, policy. On error nothing of it remains.
func (a *testAgent) Add(ctx context.Context, req agentapi.AddRequest) (_ agentapi.AddResponse, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if old, ok := a.eps[req.Attachment]; ok {
		if old.req.NetNS != req.NetNS {
			return agentapi.AddResponse{}, agentapi.Errorf(agentapi.CodeInvalidConfig, "container %s interface %s is already attached in %s", req.ContainerID, req.IfName, old.req.NetNS)
		}
		return old.resp, nil
	}
	ns := req.Namespace
	if ns == "" {
		ns = "default"
	}
	labels, err := identity.PodLabels(identity.PodLabelsConfig{Namespace: ns, Labels: req.Labels})
	if err != nil {
		return agentapi.AddResponse{}, &agentapi.Error{Code: agentapi.CodeInvalidLabels, Msg: "invalid pod labels", Details: err.Error()}
	}
	owner := req.ContainerID + "/" + req.IfName
	addr, err := a.pool.AllocateNext(ipam.IPv4, owner)
	if errors.Is(err, ipam.ErrExhausted) {
		return agentapi.AddResponse{}, &agentapi.Error{Code: agentapi.CodeExhausted, Msg: "address pool exhausted", Details: err.Error()}
	} else if err != nil {
		return agentapi.AddResponse{}, err
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	undo = append(undo, func() { a.pool.Release(addr) })
	ident, _, err := a.alloc.Allocate(ctx, labels)
	if err != nil {
		return agentapi.AddResponse{}, err
	}
	undo = append(undo, func() { a.alloc.Release(context.Background(), ident) })
	a.nextID++
	ep, err := a.dp.AddEndpoint(datapath.EndpointConfig{ID: a.nextID, Identity: ident, IPv4: addr, NetNS: req.NetNS, IfName: req.IfName})
	if err != nil {
		return agentapi.AddResponse{}, &agentapi.Error{Code: agentapi.CodeDataplane, Msg: "cannot add the endpoint", Details: err.Error()}
	}
	undo = append(undo, func() { ep.Delete() })
	host := netip.PrefixFrom(addr, 32)
	if err := a.ipc.Upsert(host, ipcache.Entry{Identity: ident}); err != nil {
		return agentapi.AddResponse{}, err
	}
	undo = append(undo, func() { a.ipc.Delete(host) })
	if err := a.engine.WaitForIdentities(ctx, ident); err != nil {
		return agentapi.AddResponse{}, err
	}
	if err := a.engine.AddEndpoint(ep); err != nil {
		return agentapi.AddResponse{}, err
	}
	resp := agentapi.AddResponse{
		EndpointID: uint16(ep.ID()), Identity: uint32(ident),
		Interfaces: []agentapi.Interface{
			{Name: ep.HostIfName(), MAC: ep.HostMAC().String()},
			{Name: req.IfName, MAC: ep.MAC().String(), Sandbox: req.NetNS},
		},
		IPs:    []agentapi.IPConfig{{Address: host, Gateway: gatewayIPv4, Interface: 1}},
		Routes: []agentapi.Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: gatewayIPv4}},
	}
	a.eps[req.Attachment] = &attached{req: req, ep: ep, ident: ident, resp: resp}
	return resp, nil
}

// Del removes the attachment's endpoint, whether or not its namespace
// still exists, and succeeds for one it does not know.
func (a *testAgent) Del(ctx context.Context, req agentapi.DelRequest) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.del(ctx, req.Attachment)
}

func (a *testAgent) del(ctx context.Context, att agentapi.Attachment) error {
	at, ok := a.eps[att]
	if !ok {
		return nil
	}
	addr := at.ep.IPv4()
	err := errors.Join(
		a.engine.RemoveEndpoint(at.ep),
		at.ep.Delete(),
		a.ipc.Delete(netip.PrefixFrom(addr, 32)),
		a.pool.Release(addr),
	)
	if _, rerr := a.alloc.Release(ctx, at.ident); rerr != nil {
		err = errors.Join(err, rerr)
	}
	if err != nil {
		return &agentapi.Error{Code: agentapi.CodeDataplane, Msg: "cannot remove the endpoint", Details: err.Error()}
	}
	delete(a.eps, att)
	return nil
}

func (a *testAgent) Check(_ context.Context, req agentapi.CheckRequest) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	at, ok := a.eps[req.Attachment]
	if !ok {
		return agentapi.Errorf(agentapi.CodeUnknownContainer, "no endpoint for container %s interface %s", req.ContainerID, req.IfName)
	}
	if at.req.NetNS != req.NetNS {
		return agentapi.Errorf(agentapi.CodeInvalidConfig, "endpoint is in %s, not %s", at.req.NetNS, req.NetNS)
	}
	if ep, ok := a.dp.Endpoint(at.ep.ID()); !ok || ep != at.ep {
		return agentapi.Errorf(agentapi.CodeDataplane, "endpoint %d is not in the datapath", at.ep.ID())
	}
	if have := []netip.Prefix{netip.PrefixFrom(at.ep.IPv4(), 32)}; req.Addrs != nil && !slices.Equal(req.Addrs, have) {
		return agentapi.Errorf(agentapi.CodeDataplane, "endpoint addresses differ from the ADD result: the runtime has %v, the agent's endpoint has %v", req.Addrs, have)
	}
	return nil
}

func (a *testAgent) List(context.Context) ([]agentapi.Endpoint, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []agentapi.Endpoint
	for att, at := range a.eps {
		out = append(out, agentapi.Endpoint{
			Attachment: att, NetNS: at.req.NetNS, Namespace: at.req.Namespace, Pod: at.req.Pod,
			EndpointID: uint16(at.ep.ID()), Identity: uint32(at.ident), HostIfName: at.ep.HostIfName(),
			Addrs: []netip.Prefix{netip.PrefixFrom(at.ep.IPv4(), 32)},
		})
	}
	return out, nil
}

func (a *testAgent) GC(ctx context.Context, req agentapi.GCRequest) (agentapi.GCResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	valid := map[agentapi.Attachment]bool{}
	for _, v := range req.Valid {
		valid[v] = true
	}
	var resp agentapi.GCResponse
	for att := range a.eps {
		if valid[att] {
			continue
		}
		if err := a.del(ctx, att); err != nil {
			return resp, err
		}
		resp.Removed = append(resp.Removed, att)
	}
	return resp, nil
}

func (a *testAgent) Status(context.Context) (agentapi.Status, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return agentapi.Status{Ready: true, Node: "test", Endpoints: len(a.eps)}, nil
}

// endpoint returns the agent's endpoint of an attachment.
func (a *testAgent) endpoint(att agentapi.Attachment) (*attached, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	at, ok := a.eps[att]
	return at, ok
}

// addPolicy parses a policy document and gives it to the engine.
func (a *testAgent) addPolicy(t *testing.T, doc string) {
	t.Helper()
	ps, err := policy.Parse([]byte(doc), "test-policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ps {
		if _, err := a.engine.AddPolicy(p); err != nil {
			t.Fatal(err)
		}
	}
}

func (a *testAgent) String() string { return fmt.Sprintf("agent on %s", a.sock) }
