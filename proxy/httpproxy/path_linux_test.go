package httpproxy_test

import (
	"bufio"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/proxy/httpproxy"
)

// TestPrivilegedHTTPPathNormalized: db's rule allows GET /public/.* only.
// Requests whose raw path escapes that prefix are judged, and forwarded,
// by their path as Cilium's Envoy normalizes it (policy.NormalizeHTTPPath),
// so "/public/../private" is denied and never reaches the server, while
// "/public/./x" reaches it as "/public/x". The server's own answer (it
// echoes the target it received) is the oracle.
func TestPrivilegedHTTPPathNormalized(t *testing.T) {
	e := newEnv(t, nil)
	for _, tc := range []struct {
		target   string
		code     int
		sawPath  string // the target the server received ("" none)
		location string
	}{
		{"/public/../private", 403, "", ""},
		{"/public/%2e%2e/private", 403, "", ""},
		{"/public/./x", 200, "/public/x", ""},
		{"//public//x", 200, "/public/x", ""},
		{"/public/%78?q=/../a", 200, "/public/x?q=/../a", ""},
		{"/public/x%2F..%2F..%2Fprivate", 307, "", "/private"},
		{"/public/a%00", 400, "", ""},
	} {
		t.Run(tc.target, func(t *testing.T) {
			_, reqs0 := e.server.counts()
			c := rawConn(t, e)
			c.SetDeadline(time.Now().Add(3 * time.Second))
			io.WriteString(c, "GET "+tc.target+" HTTP/1.1\r\nHost: db\r\nX-Token: 12345\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.code {
				t.Fatalf("%d %q, want %d", resp.StatusCode, body, tc.code)
			}
			_, reqs := e.server.counts()
			switch {
			case tc.sawPath == "" && reqs != reqs0:
				t.Errorf("the server got the request (%d %q)", resp.StatusCode, body)
			case tc.sawPath != "" && !strings.HasSuffix(string(body), " GET "+tc.sawPath):
				t.Errorf("server saw %q, want GET %s", body, tc.sawPath)
			}
			if tc.code == 403 && string(body) != httpproxy.DeniedBody {
				t.Errorf("body %q, want the denied body", body)
			}
			if loc := resp.Header.Get("Location"); loc != tc.location {
				t.Errorf("Location %q, want %q", loc, tc.location)
			}
		})
	}
}
