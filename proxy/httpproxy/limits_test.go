package httpproxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/policy"
	"github.com/nodeplane/nodeplane/proxy"
)

// allowAll is a Policy that allows every request of every connection.
type allowAll struct{}

func (allowAll) Connection(proxy.Redirected) (Decision, error) {
	return Decision{SourceIdentity: 1000, Sides: []*policy.HTTPPolicy{{AllowAll: true}}}, nil
}

// startLoopback runs the proxy of cfg on a loopback listener, its
// upstream connections going to upstream instead of the original
// destination: the proxy's own code paths without a redirecting datapath.
func startLoopback(t *testing.T, cfg Config, upstream string) string {
	t.Helper()
	cfg.Port = 15001
	if cfg.Policy == nil {
		cfg.Policy = allowAll{}
	}
	if testing.Verbose() {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(cfg)
	p.dial = func(ctx context.Context, network string, _ netip.AddrPort, _ uint32) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, upstream)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.serve(ln)
	t.Cleanup(func() { p.Close() })
	return ln.Addr().String()
}

func dialT(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitClosed reads c until the proxy closes it and returns how long that
// took; a read still blocked after limit fails the test.
func waitClosed(t *testing.T, c net.Conn, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	c.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v", limit)
	}
	return time.Since(start)
}

// stallingUpstream accepts connections, reads one request's headers and
// answers with head, then sends nothing more until the test ends.
func stallingUpstream(t *testing.T, head string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := http.ReadRequest(bufio.NewReader(c)); err != nil {
					return
				}
				io.WriteString(c, head)
				<-done
			}()
		}
	}()
	return ln.Addr().String()
}

// A client that sends its request body slower than StreamIdleTimeout is
// disconnected, and the proxy serves the next client.
func TestStreamIdleTimeoutSlowClientBody(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(up.Close) // after the proxy's (cleanups run last first)
	addr := startLoopback(t, Config{StreamIdleTimeout: 300 * time.Millisecond}, up.Listener.Addr().String())
	c := dialT(t, addr)
	io.WriteString(c, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
	if el := waitClosed(t, c, 5*time.Second); el > 3*time.Second {
		t.Errorf("disconnected after %v, want about 300ms", el)
	}
	c2 := dialT(t, addr)
	c2.SetDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(c2, "GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c2), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("next client: %v %v", resp, err)
	}
}

// An upstream that stalls mid-body is given up after StreamIdleTimeout
// and the client's connection is aborted: it sees the body cut short,
// never a complete-looking response, chunked or not.
func TestStreamIdleTimeoutSlowUpstream(t *testing.T) {
	for name, head := range map[string]string{
		"content-length": "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
		"chunked":        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			addr := startLoopback(t, Config{StreamIdleTimeout: 300 * time.Millisecond}, stallingUpstream(t, head))
			c := dialT(t, addr)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
			start := time.Now()
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				t.Fatalf("body still streaming after 5s (%q)", body)
			case err == nil:
				t.Fatalf("body %q ended cleanly; want it cut short", body)
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Errorf("cut after %v, want about 300ms", el)
			}
		})
	}
}

// A client that stops reading a large response is disconnected after
// StreamIdleTimeout: the upstream's writes then fail instead of blocking
// for ever.
func TestStreamIdleTimeoutSlowClientReader(t *testing.T) {
	upErr := make(chan time.Time, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := []byte(strings.Repeat("x", 64<<10))
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if _, err := w.Write(chunk); err != nil {
				upErr <- time.Now()
				return
			}
		}
	}))
	t.Cleanup(up.Close) // after the proxy's (cleanups run last first)
	addr := startLoopback(t, Config{StreamIdleTimeout: 300 * time.Millisecond}, up.Listener.Addr().String())
	c := dialT(t, addr)
	// A small window, so that the proxy's writes block soon (loopback's
	// autotuning would otherwise buffer tens of megabytes).
	c.(*net.TCPConn).SetReadBuffer(4 << 10)
	io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
	start := time.Now()
	select {
	case at := <-upErr:
		if el := at.Sub(start); el > 5*time.Second {
			t.Errorf("upstream released after %v", el)
		}
	case <-time.After(8 * time.Second):
		t.Fatal("a client that never reads still holds the proxy and its upstream after 8s")
	}
}

// Beyond MaxConnections a new connection is closed at once; a freed slot
// serves the next one.
func TestMaxConnections(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(up.Close) // after the proxy's (cleanups run last first)
	addr := startLoopback(t, Config{MaxConnections: 2}, up.Listener.Addr().String())
	held := []net.Conn{dialT(t, addr), dialT(t, addr)}
	// The accept of both is asynchronous; a request on each makes sure
	// both hold their slots.
	for _, c := range held {
		c.SetDeadline(time.Now().Add(3 * time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != 200 {
			t.Fatalf("held connection: %v %v", resp, err)
		}
	}
	third := dialT(t, addr)
	if el := waitClosed(t, third, 3*time.Second); el > time.Second {
		t.Errorf("third connection closed after %v, want at once", el)
	}
	held[0].Close()
	deadline := time.Now().Add(3 * time.Second)
	for {
		c := dialT(t, addr)
		c.SetDeadline(time.Now().Add(time.Second))
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err == nil && resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("freed slot not reused: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// denyAll is a Policy whose one side has no rule: every request denied.
type denyAll struct{}

func (denyAll) Connection(proxy.Redirected) (Decision, error) {
	return Decision{SourceIdentity: 1000, Sides: []*policy.HTTPPolicy{{}}}, nil
}

// A denied request whose client trickles its body: net/http would read
// the rest of the body before answering, without a deadline; the client
// gets its 403 and is disconnected within StreamIdleTimeout instead.
func TestStreamIdleTimeoutDeniedSlowBody(t *testing.T) {
	addr := startLoopback(t, Config{Policy: denyAll{}, StreamIdleTimeout: 300 * time.Millisecond}, "127.0.0.1:1")
	c := dialT(t, addr)
	io.WriteString(c, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("status %d, want 403", resp.StatusCode)
	}
	if el := waitClosed(t, c, 5*time.Second); time.Since(start) > 3*time.Second {
		t.Errorf("closed after %v, want about 300ms", el)
	}
}

// A denied request whose body arrived whole keeps its connection: the
// next request on it is answered too.
func TestDeniedWholeBodyKeepsConnection(t *testing.T) {
	addr := startLoopback(t, Config{Policy: denyAll{}, StreamIdleTimeout: 300 * time.Millisecond}, "127.0.0.1:1")
	c := dialT(t, addr)
	c.SetDeadline(time.Now().Add(3 * time.Second))
	br := bufio.NewReader(c)
	for i := range 2 {
		io.WriteString(c, "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789")
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != http.StatusForbidden || resp.Close {
			t.Fatalf("request %d: status %d close %v, want 403 kept alive", i, resp.StatusCode, resp.Close)
		}
	}
}
