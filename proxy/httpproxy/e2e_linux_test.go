package httpproxy_test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/policy"
	"github.com/nodeplane/nodeplane/proxy/httpproxy"
	"github.com/nodeplane/nodeplane/proxy/internal/proxytest"
)

// TestPrivilegedHTTPPolicy is the end-to-end: an HTTP client in
// web's namespace, a server in db's, db's policy compiled by the engine
// into the real maps, the datapath redirecting port 80 to the proxy. Each
// request's outcome is checked against what the server saw (a denied
// request never reaches it), each is an L7 flow with its verdict, the
// requests share one client and one upstream connection, and port 9090
// (L4 only) reaches the server directly.
func TestPrivilegedHTTPPolicy(t *testing.T) {
	e := newEnv(t, nil)
	for _, dst := range []netip.Addr{proxytest.B4, proxytest.B6} {
		t.Run(dst.String(), func(t *testing.T) {
			base := "http://" + netip.AddrPortFrom(dst, 80).String()
			var dialed int
			c := client(e.w.PodA, &dialed)
			conns0, reqs0 := e.server.counts()
			token := map[string]string{"X-Token": "12345"}
			for _, tc := range []struct {
				method, path string
				hdr          map[string]string
				code         int
			}{
				{"GET", "/public/x", token, 200},
				{"POST", "/public/x", token, 403},
				{"GET", "/private", token, 403},
				{"GET", "/public/x", nil, 403},
				{"GET", "/public/x", map[string]string{"X-Token": "abc"}, 403},
				{"GET", "/public/y?q=1", token, 200},
			} {
				code, body := do(t, c, tc.method, base+tc.path, tc.hdr)
				if code != tc.code {
					t.Errorf("%s %s %v: %d %q, want %d", tc.method, tc.path, tc.hdr, code, body, tc.code)
					continue
				}
				node := proxytest.Node4
				if dst.Is6() {
					node = proxytest.Node6
				}
				want := fmt.Sprintf("%s %s %s", node, tc.method, tc.path) // through the proxy
				if code == 403 {
					want = httpproxy.DeniedBody
				}
				if body != want {
					t.Errorf("%s %s: body %q, want %q", tc.method, tc.path, body, want)
				}
			}
			conns, reqs := e.server.counts()
			if reqs-reqs0 != 2 {
				t.Errorf("server got %d requests, want the 2 allowed", reqs-reqs0)
			}
			if conns-conns0 != 1 || dialed != 1 {
				t.Errorf("%d upstream and %d client connections, want one each (kept alive)", conns-conns0, dialed)
			}

			// L4 only: straight to the server, which sees web itself.
			src := proxytest.A4
			if dst.Is6() {
				src = proxytest.A6
			}
			code, body := do(t, client(e.w.PodA, nil), "GET", "http://"+netip.AddrPortFrom(dst, 9090).String()+"/private", nil)
			if want := fmt.Sprintf("%s GET /private", src); code != 200 || body != want {
				t.Errorf("port 9090: %d %q, want 200 %q", code, body, want)
			}
		})
	}

	// Every request is an L7 request flow with its verdict, and every
	// answer a response flow with its code.
	var req, resp = map[string]int{}, map[string]int{}
	for _, f := range e.l7Flows(t) {
		h := f.L7.HTTP
		if h == nil {
			t.Fatalf("L7 flow without HTTP: %+v", f)
		}
		key := fmt.Sprintf("%s %s %s", f.Verdict, h.Method, h.URL)
		if f.L7.Type == flow.L7Request {
			req[key]++
			if f.Source.Identity != uint32(proxytest.IDA) || f.Destination.Identity != uint32(proxytest.IDB) ||
				f.TrafficDirection != flow.Ingress || f.L4.DestinationPort != 80 {
				t.Errorf("request flow %+v", f)
			}
		} else {
			resp[fmt.Sprintf("%d %s %s", h.Code, h.Method, h.URL)]++
		}
	}
	for _, dst := range []string{"10.0.0.2:80", "[fd00::2]:80"} {
		for key, n := range map[string]int{
			"FORWARDED GET http://" + dst + "/public/x": 1, "DROPPED POST http://" + dst + "/public/x": 1,
			"DROPPED GET http://" + dst + "/private": 1, "DROPPED GET http://" + dst + "/public/x": 2,
			"FORWARDED GET http://" + dst + "/public/y?q=1": 1,
		} {
			if req[key] != n {
				t.Errorf("%d request flows %q, want %d (all: %v)", req[key], key, n, req)
			}
		}
		for key, n := range map[string]int{"200 GET http://" + dst + "/public/x": 1, "403 GET http://" + dst + "/public/x": 2,
			"403 POST http://" + dst + "/public/x": 1, "403 GET http://" + dst + "/private": 1} {
			if resp[key] != n {
				t.Errorf("%d response flows %q, want %d (all: %v)", resp[key], key, n, resp)
			}
		}
	}
}

// TestPrivilegedHTTPPolicyChange changes db's HTTP rules between two
// requests of one kept-alive connection: the second is decided by the new
// rules.
func TestPrivilegedHTTPPolicyChange(t *testing.T) {
	e := newEnv(t, nil)
	var dialed int
	c := client(e.w.PodA, &dialed)
	url := "http://" + proxytest.B4.String() + "/public/x"
	token := map[string]string{"X-Token": "12345"}
	if code, body := do(t, c, "GET", url, token); code != 200 {
		t.Fatalf("before the change: %d %q", code, body)
	}
	ps, err := policy.Parse([]byte(strings.Replace(dbPolicy, `path: "/public/.*"`, `path: "/other/.*"`, 1)), "db.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.engine.ReplacePolicy(ps[0]); err != nil {
		t.Fatal(err)
	}
	if code, body := do(t, c, "GET", url, token); code != 403 {
		t.Errorf("after the change: %d %q, want 403", code, body)
	}
	if dialed != 1 {
		t.Errorf("%d client connections, want the one kept alive", dialed)
	}
}
