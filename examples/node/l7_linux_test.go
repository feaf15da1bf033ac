package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/examples/internal/agentapi"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/proxy/httpproxy"
)

const httpPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-http, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules: {http: [{method: GET, path: "/public/.*"}]}
`

// TestPrivilegedAgentHTTPPolicy runs the agent with its HTTP proxy and a
// policy with HTTP rules from its manifests: pods it made get their
// requests decided per request, and the requests are L7 flows enriched
// with the pods' names.
func TestPrivilegedAgentHTTPPolicy(t *testing.T) {
	n := newTestNode(t)
	// The proxy connects to db from the node's address; a real node has
	// one, the test's namespace gets one on its loopback.
	n.addLoopbackAddrs(t, netip.MustParseAddr("10.201.1.254"))
	n.writeManifest(t, "db.yaml", httpPolicy)
	cfg := n.config(t)
	cfg.HTTPProxyPort = 15001
	a, _ := n.startAgentWith(t, cfg, ServeConfig{Socket: n.socket})
	c := agentapi.NewClient(n.socket)
	web := addPod(t, c, "c-web", "web")
	db := addPod(t, c, "c-db", "db")

	var ln net.Listener
	if err := db.ns.Do(func() (err error) { ln, err = net.Listen("tcp", ":8080"); return err }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "db %s %s", r.Method, r.URL.Path)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = web.ns.Do(func() error { conn, err = (&net.Dialer{}).DialContext(ctx, network, addr); return err })
			return conn, err
		},
	}}
	base := "http://" + netip.AddrPortFrom(db.addr, 8080).String()
	for _, tc := range []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/public/x", 200, "db GET /public/x"},
		{"POST", "/public/x", 403, httpproxy.DeniedBody},
		{"GET", "/private", 403, httpproxy.DeniedBody},
	} {
		req, _ := http.NewRequest(tc.method, base+tc.path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || string(b) != tc.body {
			t.Errorf("%s %s: %d %q, want %d %q", tc.method, tc.path, resp.StatusCode, b, tc.code, tc.body)
		}
	}

	var seen []string
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := a.Flows().GetFlows(ctx, flow.Request{Number: 100}, func(r *flow.Response) error {
		if f := r.Flow; f != nil && f.Type == flow.L7 && f.L7.Type == flow.L7Request {
			seen = append(seen, fmt.Sprintf("%s %s/%s %s %s", f.Verdict, f.Source.Namespace, f.Source.PodName, f.L7.HTTP.Method, f.L7.HTTP.URL))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"FORWARDED prod/web GET " + base + "/public/x",
		"DROPPED prod/web POST " + base + "/public/x",
		"DROPPED prod/web GET " + base + "/private",
	}
	if strings.Join(seen, "\n") != strings.Join(want, "\n") {
		t.Errorf("L7 request flows:\n%s\nwant\n%s", strings.Join(seen, "\n"), strings.Join(want, "\n"))
	}
}
