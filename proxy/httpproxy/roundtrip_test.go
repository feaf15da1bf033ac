package httpproxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestRoundTripSkipsInterimResponses: an upstream that answers with a
// 100 Continue (or 103 Early Hints) before its final response gets the
// final one returned for the request, and no Expect header is sent to it.
func TestRoundTripSkipsInterimResponses(t *testing.T) {
	client, upstream := net.Pipe()
	defer client.Close()
	defer upstream.Close()
	p := &Proxy{cfg: Config{UpstreamTimeout: 5 * time.Second}}
	uc := &upstreamConn{Conn: client, idle: 5 * time.Second}
	cs := &connState{upstream: uc, br: bufio.NewReader(uc)}

	gotExpect := make(chan string, 1)
	go func() {
		br := bufio.NewReader(upstream)
		req, err := http.ReadRequest(br)
		if err != nil {
			gotExpect <- "read: " + err.Error()
			return
		}
		io.Copy(io.Discard, req.Body)
		gotExpect <- req.Header.Get("Expect")
		io.WriteString(upstream, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"+
			"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
	}()

	req, err := http.NewRequest(http.MethodPost, "http://backend/upload", strings.NewReader("body"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Expect", "100-continue")
	resp, err := p.roundTrip(context.Background(), cs, req, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated || string(body) != "ok" {
		t.Errorf("response %d %q, want the final 201 \"ok\"", resp.StatusCode, body)
	}
	if e := <-gotExpect; e != "" {
		t.Errorf("upstream saw Expect %q, want none", e)
	}
}
