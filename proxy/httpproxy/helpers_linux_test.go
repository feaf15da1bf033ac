package httpproxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy"
	"github.com/nodeplane/nodeplane/proxy/httpproxy"
	"github.com/nodeplane/nodeplane/proxy/internal/proxytest"
)

const (
	proxyPort = 15001
	httpPort  = 80
	l4Port    = 9090
	webLabels = "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default"
	dbLabels  = "k8s:app=db,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default"
)

// The policy of the issue: db admits web's GET /public/... with the
// X-Token header 12345 on port 80 (Cilium's headers match exact values;
// there is no regex for header values), and web's TCP 9090 without L7.
const dbPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/public/.*", headers: ["X-Token: 12345"]}
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "9090", protocol: TCP}]}]
`

// env is the proxy world: A is web, B is db, the engine writes their maps
// and the HTTP proxy enforces db's HTTP rules.
type env struct {
	w      *proxytest.World
	engine *policy.Engine
	obs    *flow.Observer
	proxy  *httpproxy.Proxy
	server *whoServer
}

// endpoints maps the world's addresses to identities and policies.
type endpoints struct {
	engine *policy.Engine
	eps    map[netip.Addr]*datapath.Endpoint
}

func (e endpoints) Lookup(a netip.Addr) (identity.ID, *policy.EndpointPolicy, bool) {
	ep, ok := e.eps[a]
	if !ok {
		return 0, nil, false
	}
	pol, ok := e.engine.EndpointPolicy(ep)
	return ep.Identity(), pol, ok
}

type blockSource struct{ done chan struct{} }

func (s blockSource) ReadRaw() ([]byte, error) { <-s.done; return nil, os.ErrClosed }

func newEnv(t testing.TB, pcfg func(*httpproxy.Config)) *env {
	t.Helper()
	w := proxytest.New(t)
	engine, err := policy.NewEngine(policy.EngineConfig{Policy: policy.Config{ProxyPorts: policy.ProxyPorts{HTTP: proxyPort}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { engine.Close() })
	var ids []identity.Identity
	for id, ls := range map[identity.ID]string{proxytest.IDA: webLabels, proxytest.IDB: dbLabels} {
		labels, err := identity.ParseLabelList(ls)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, identity.Identity{ID: id, Labels: labels})
	}
	if err := engine.UpdateIdentities(ids, nil); err != nil {
		t.Fatal(err)
	}
	ps, err := policy.Parse([]byte(dbPolicy), "db.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := engine.AddPolicy(ps[0]); err != nil {
		t.Fatal(err)
	}
	for _, ep := range []*datapath.Endpoint{w.A, w.B} {
		if err := engine.AddEndpoint(ep); err != nil {
			t.Fatal(err)
		}
	}
	src := blockSource{done: make(chan struct{})}
	t.Cleanup(func() { close(src.done) })
	obs, err := flow.New(flow.Config{Source: src, NodeName: "node-1"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := httpproxy.Config{
		Proxy: w.Proxy, Port: proxyPort, Recorder: obs,
		Policy: httpproxy.EnginePolicy{Endpoints: endpoints{engine: engine, eps: map[netip.Addr]*datapath.Endpoint{
			proxytest.A4: w.A, proxytest.A6: w.A, proxytest.B4: w.B, proxytest.B6: w.B,
		}}},
	}
	if pcfg != nil {
		pcfg(&cfg)
	}
	p, err := httpproxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close proxy: %v", err)
		}
	})
	e := &env{w: w, engine: engine, obs: obs, proxy: p}
	e.server = serveWho(t, w.PodB, httpPort)
	serveWho(t, w.PodB, l4Port)
	return e
}

// whoServer answers every request with 200 and "<peer address> <method>
// <target>", and counts the connections it accepted.
type whoServer struct {
	mu       sync.Mutex
	conns    int
	requests int
}

func serveWho(t testing.TB, ns *testutils.NetNS, port int) *whoServer {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) { ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); return err }); err != nil {
		t.Fatal(err)
	}
	s := &whoServer{}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.mu.Lock()
			s.requests++
			s.mu.Unlock()
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			fmt.Fprintf(w, "%s %s %s", netip.MustParseAddr(host).Unmap(), r.Method, r.RequestURI)
			if u := r.Header.Get("Upgrade"); u != "" {
				fmt.Fprintf(w, " upgrade:%s", u)
			}
		}),
		ConnState: func(c net.Conn, st http.ConnState) {
			if st == http.StateNew {
				s.mu.Lock()
				s.conns++
				s.mu.Unlock()
			}
		},
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *whoServer) counts() (conns, requests int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns, s.requests
}

// client is an HTTP client in ns that keeps one connection alive.
func client(ns *testutils.NetNS, dialed *int) *http.Client {
	return &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			MaxConnsPerHost: 1,
			DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
				if dialed != nil {
					*dialed++
				}
				err = ns.Do(func() error {
					c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
					return err
				})
				return c, err
			},
		},
	}
}

func do(t testing.TB, c *http.Client, method, url string, hdr map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// l7Flows returns the L7 flows the observer holds.
func (e *env) l7Flows(t testing.TB) []flow.Flow {
	t.Helper()
	var out []flow.Flow
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := e.obs.GetFlows(ctx, flow.Request{Number: 1000}, func(r *flow.Response) error {
		if r.Flow != nil && r.Flow.Type == flow.L7 {
			out = append(out, *r.Flow)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
