package agentapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
)

// Client calls the agent over its unix socket.
type Client struct {
	socket string
	hc     *http.Client
}

// NewClient returns a client of the agent listening on socket (empty:
// DefaultSocket). It connects on each call.
func NewClient(socket string) *Client {
	if socket == "" {
		socket = DefaultSocket
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{socket: socket, hc: &http.Client{Transport: tr}}
}

// Add creates an endpoint.
func (c *Client) Add(ctx context.Context, req AddRequest) (AddResponse, error) {
	var resp AddResponse
	err := c.call(ctx, PathAdd, req, &resp)
	return resp, err
}

// Del removes an endpoint; it succeeds for one the agent does not know.
func (c *Client) Del(ctx context.Context, req DelRequest) error {
	return c.call(ctx, PathDel, req, nil)
}

// Check verifies an endpoint.
func (c *Client) Check(ctx context.Context, req CheckRequest) error {
	return c.call(ctx, PathCheck, req, nil)
}

// List returns every endpoint the agent manages.
func (c *Client) List(ctx context.Context) ([]Endpoint, error) {
	var eps []Endpoint
	err := c.call(ctx, PathList, nil, &eps)
	return eps, err
}

// GC removes the endpoints of attachments the runtime no longer knows.
func (c *Client) GC(ctx context.Context, req GCRequest) (GCResponse, error) {
	var resp GCResponse
	err := c.call(ctx, PathGC, req, &resp)
	return resp, err
}

// Status reports whether the agent is ready.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.call(ctx, PathStatus, nil, &st)
	return st, err
}

// call POSTs in (GET when in is nil) to path and decodes the answer into
// out. A socket that does not answer is CodeAgentUnavailable; an answer
// with an error status carries the agent's *Error.
func (c *Client) call(ctx context.Context, path string, in, out any) error {
	method, body := http.MethodGet, io.Reader(nil)
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return &Error{Code: CodeDecodeFailure, Msg: "encode request", Details: err.Error()}
		}
		method, body = http.MethodPost, bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://agent"+path, body)
	if err != nil {
		return &Error{Code: CodeIOFailure, Msg: "build request", Details: err.Error()}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return &Error{Code: CodeAgentUnavailable, Msg: "nodeplane agent unavailable",
			Details: fmt.Sprintf("%v; is the agent (examples/node) running on %s?", unwrapURL(err), c.socket)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return &Error{Code: CodeIOFailure, Msg: "read agent response", Details: err.Error()}
	}
	if resp.StatusCode != http.StatusOK {
		var e Error
		if json.Unmarshal(data, &e) != nil || e.Code == 0 {
			return &Error{Code: CodeIOFailure, Msg: "agent error", Details: fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(data))}
		}
		return &e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return &Error{Code: CodeDecodeFailure, Msg: "decode agent response", Details: err.Error()}
	}
	return nil
}

// unwrapURL drops net/http's "Post "http://agent/...":" prefix, which
// names a URL the user never typed.
func unwrapURL(err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		return ue.Err
	}
	return err
}
