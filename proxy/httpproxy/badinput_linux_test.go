package httpproxy_test

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/proxy/httpproxy"
	"github.com/nodeplane/nodeplane/proxy/internal/proxytest"
)

// rawConn connects from web to db:80, which the datapath redirects to the
// proxy.
func rawConn(t *testing.T, e *env) net.Conn {
	t.Helper()
	var c net.Conn
	err := e.w.PodA.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", proxytest.B4.String()+":80", 3*time.Second)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// stillServes checks that the proxy answers a good request on a new
// connection.
func stillServes(t *testing.T, e *env) {
	t.Helper()
	code, body := do(t, client(e.w.PodA, nil), "GET", "http://"+proxytest.B4.String()+"/public/ok",
		map[string]string{"X-Token": "12345"})
	if code != 200 || !strings.HasSuffix(body, "GET /public/ok") {
		t.Fatalf("after bad input: %d %q", code, body)
	}
}

// TestPrivilegedBadInput sends what a proxy must survive: each gets its
// defined outcome and the proxy serves the next client.
func TestPrivilegedBadInput(t *testing.T) {
	e := newEnv(t, func(c *httpproxy.Config) {
		c.ReadHeaderTimeout = 500 * time.Millisecond
		c.MaxHeaderBytes = 8 << 10
	})

	t.Run("malformed request: 400, closed", func(t *testing.T) {
		c := rawConn(t, e)
		c.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(c, "GARBAGE WITHOUT A VERSION\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 400 || !resp.Close {
			t.Errorf("status %d close %v, want 400 and close", resp.StatusCode, resp.Close)
		}
		stillServes(t, e)
	})

	t.Run("oversized headers: 431", func(t *testing.T) {
		c := rawConn(t, e)
		c.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(c, "GET /public/x HTTP/1.1\r\nHost: db\r\nX-Token: 12345\r\nX-Big: "+strings.Repeat("a", 16<<10)+"\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("status %d, want 431", resp.StatusCode)
		}
		stillServes(t, e)
	})

	t.Run("slowloris: disconnected after ReadHeaderTimeout", func(t *testing.T) {
		c := rawConn(t, e)
		io.WriteString(c, "GET /public/x HTTP/1.1\r\nHost: db\r\n")
		start := time.Now()
		done := make(chan error, 1)
		go func() {
			// One header byte every 100ms, never finishing.
			for i := 0; ; i++ {
				if _, err := io.WriteString(c, "X"); err != nil {
					done <- err
					return
				}
				time.Sleep(100 * time.Millisecond)
				if time.Since(start) > 5*time.Second {
					done <- errors.New("still connected after 5s")
					return
				}
			}
		}()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, rerr := io.ReadAll(c) // EOF (or reset) when the proxy gives up
		if ne, ok := rerr.(net.Error); ok && ne.Timeout() {
			t.Fatalf("proxy kept the slow client for 5s")
		}
		if el := time.Since(start); el > 3*time.Second {
			t.Errorf("disconnected after %v, want about 500ms", el)
		}
		c.Close()
		<-done
		stillServes(t, e)
	})

	t.Run("upgrade: forwarded as plain HTTP", func(t *testing.T) {
		c := rawConn(t, e)
		c.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(c, "GET /public/x HTTP/1.1\r\nHost: db\r\nX-Token: 12345\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || strings.Contains(string(body), "upgrade") {
			t.Errorf("%d %q: want 200 from a server that saw no Upgrade header", resp.StatusCode, body)
		}
	})

	t.Run("port taken: New fails, the running proxy stays", func(t *testing.T) {
		_, err := httpproxy.New(httpproxy.Config{Proxy: e.w.Proxy, Port: proxyPort, Policy: httpproxy.EnginePolicy{}})
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Fatalf("second proxy on port %d: %v, want EADDRINUSE", proxyPort, err)
		}
		stillServes(t, e)
	})
}
