package httpproxy

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// This file holds what keeps a client or an upstream from holding the
// proxy's goroutines without bound: the connection cap and the deadlines
// that move with each read and write (Config.StreamIdleTimeout).

// limitListener hands out at most cap(slots) connections at once. A
// connection beyond that is closed at once rather than left in the
// kernel's accept queue, so that its client learns at once instead of
// waiting for a slot that a slow peer may hold for long.
type limitListener struct {
	net.Listener
	slots chan struct{}
	log   *slog.Logger
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
			return &slotConn{Conn: c, release: func() { <-l.slots }}, nil
		default:
			l.log.Warn("httpproxy: connection limit reached; connection closed", "from", c.RemoteAddr())
			c.Close()
		}
	}
}

// slotConn gives its slot back when it is closed (net/http closes every
// connection it served).
type slotConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// upstreamConn is an upstream connection whose every read and write must
// make progress within idle. During the wait for a response's headers
// the read deadline is the earlier of that and headersBy (UpstreamTimeout).
// It is used by one request at a time.
type upstreamConn struct {
	net.Conn
	idle      time.Duration
	headersBy time.Time
}

func (c *upstreamConn) Read(b []byte) (int, error) {
	d := time.Now().Add(c.idle)
	if !c.headersBy.IsZero() && c.headersBy.Before(d) {
		d = c.headersBy
	}
	_ = c.Conn.SetReadDeadline(d)
	return c.Conn.Read(b)
}

func (c *upstreamConn) Write(b []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.idle))
	return c.Conn.Write(b)
}

// clientBody is a request body whose every read from the client must make
// progress within idle: net/http leaves the body without a deadline once
// the headers are in (it has no ReadTimeout here, which would bound the
// whole request, however fast it streams).
type clientBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
}

func (b *clientBody) Read(p []byte) (int, error) {
	_ = b.rc.SetReadDeadline(time.Now().Add(b.idle))
	return b.ReadCloser.Read(p)
}

// clientWriter is a response writer whose every write to the client must
// make progress within idle: a client that stops reading is disconnected
// instead of holding the handler (and the upstream) for ever.
type clientWriter struct {
	http.ResponseWriter
	rc   *http.ResponseController
	idle time.Duration
}

func (w *clientWriter) extend() { _ = w.rc.SetWriteDeadline(time.Now().Add(w.idle)) }

func (w *clientWriter) Write(b []byte) (int, error) {
	w.extend()
	return w.ResponseWriter.Write(b)
}

func (w *clientWriter) WriteHeader(code int) {
	w.extend()
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *clientWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// streamBody copies an upstream body to the client as it arrives, as
// Envoy streams it: the headers and each read are flushed at once, so a
// streamed response (server-sent events, long polls) is not held back in
// a buffer. It returns the first error of either side (nil at the end).
func streamBody(w io.Writer, rc *http.ResponseController, body io.Reader) error {
	if err := rc.Flush(); err != nil {
		return err
	}
	buf := make([]byte, 32<<10)
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			if err := rc.Flush(); err != nil {
				return err
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}
