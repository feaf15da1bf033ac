package httpproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy"
	"github.com/nodeplane/nodeplane/policy/mapstate"
	"github.com/nodeplane/nodeplane/proxy"
)

// DeniedBody is the body of the 403 answer to a denied request: Cilium's
// Envoy's (its HTTP403Message default).
const DeniedBody = "Access denied\r\n"

// Policy says which HTTP rules govern a redirected connection.
type Policy interface {
	// Connection is asked when a connection is accepted (an error then
	// refuses it: closed without an answer) and again for each of its
	// requests, so that policy changes apply to the next request (an error
	// then denies the request).
	Connection(c proxy.Redirected) (Decision, error)
}

// Decision is what governs one connection.
type Decision struct {
	// SourceIdentity and DestinationIdentity are the ends' identities.
	SourceIdentity, DestinationIdentity identity.ID
	// Direction is the policy direction that redirected the connection,
	// for the records (flow.Egress for the source's rules).
	Direction flow.TrafficDirection
	// IngressEnforced says that the destination's ingress policy is among
	// Sides (a local destination): the upstream mark tells its datapath
	// not to decide it again (proxy.UpstreamMark).
	IngressEnforced bool
	// Sides are the HTTP policies that must each allow a request.
	Sides []*policy.HTTPPolicy
}

// Recorder receives the proxy's L7 records; *flow.Observer is one.
type Recorder interface {
	RecordL7(r *flow.L7Record)
}

// Config configures a [Proxy].
type Config struct {
	// Proxy says where the node's namespace is.
	Proxy proxy.Config
	// Port is the proxy port; required.
	Port uint16
	// Policy decides; required.
	Policy Policy
	// Recorder gets the L7 records; optional.
	Recorder Recorder
	// ReadHeaderTimeout bounds the time a client may take to send a
	// request's headers (default 10s).
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a kept-alive client connection without a request
	// for this long (default 60s).
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's header size (default 60 KiB,
	// Envoy's max_request_headers_kb default); larger requests get 431.
	MaxHeaderBytes int
	// UpstreamTimeout bounds the upstream connect and the wait for the
	// response's headers (default 30s).
	UpstreamTimeout time.Duration
	// Logger gets the proxy's errors (default: discarded).
	Logger *slog.Logger
}

// Proxy is a running HTTP proxy.
type Proxy struct {
	cfg    Config
	ln     net.Listener
	srv    *http.Server
	dialer proxy.Dialer
	done   chan struct{}
	conns  sync.Map // net.Conn -> *connState, until the client's connection closes
}

type connKey struct{}

// connState is one client connection's: its decision and its upstream.
type connState struct {
	red      proxy.Redirected
	dec      Decision
	mark     uint32
	err      error // from Policy.Connection
	mu       sync.Mutex
	upstream net.Conn
	br       *bufio.Reader
}

// New binds the proxy's port in the node's namespace and starts serving.
func New(cfg Config) (*Proxy, error) {
	if cfg.Port == 0 {
		return nil, errors.New("httpproxy: Config.Port is required")
	}
	if cfg.Policy == nil {
		return nil, errors.New("httpproxy: Config.Policy is required")
	}
	if cfg.ReadHeaderTimeout == 0 {
		cfg.ReadHeaderTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 60 * time.Second
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = 60 << 10
	}
	if cfg.UpstreamTimeout == 0 {
		cfg.UpstreamTimeout = 30 * time.Second
	}
	if cfg.ReadHeaderTimeout < 0 || cfg.IdleTimeout < 0 || cfg.MaxHeaderBytes < 0 || cfg.UpstreamTimeout < 0 {
		return nil, errors.New("httpproxy: negative timeout or header limit")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ln, err := proxy.ListenTCP(cfg.Proxy, cfg.Port)
	if err != nil {
		return nil, fmt.Errorf("httpproxy: %w", err)
	}
	p := &Proxy{cfg: cfg, ln: ln, done: make(chan struct{}),
		dialer: proxy.Dialer{Config: cfg.Proxy, Timeout: cfg.UpstreamTimeout}}
	p.srv = &http.Server{
		Handler:           p,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		// net/http adds 4 KiB of slack to MaxHeaderBytes; take it off so
		// that the limit is the one configured.
		MaxHeaderBytes: max(cfg.MaxHeaderBytes-4096, 1),
		ErrorLog:       slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
		ConnContext:    p.connContext,
		ConnState:      p.connStateChange,
	}
	go func() {
		defer close(p.done)
		_ = p.srv.Serve(ln)
	}()
	return p, nil
}

// Port returns the proxy's port.
func (p *Proxy) Port() uint16 { return p.cfg.Port }

// Close stops the proxy: the listener and every connection.
func (p *Proxy) Close() error {
	err := p.srv.Close()
	<-p.done
	return err
}

func (p *Proxy) connContext(ctx context.Context, c net.Conn) context.Context {
	cs := &connState{}
	cs.red, cs.err = proxy.RedirectedConn(c)
	if cs.err == nil {
		cs.dec, cs.err = p.cfg.Policy.Connection(cs.red)
	}
	if cs.err == nil {
		cs.mark, cs.err = proxy.UpstreamMark(cs.dec.SourceIdentity, cs.dec.IngressEnforced)
	}
	if cs.err != nil {
		p.cfg.Logger.Warn("httpproxy: connection refused", "from", c.RemoteAddr(), "error", cs.err)
		c.Close()
	}
	p.conns.Store(c, cs)
	return context.WithValue(ctx, connKey{}, cs)
}

// connStateChange closes a client connection's upstream with it.
func (p *Proxy) connStateChange(c net.Conn, s http.ConnState) {
	if s != http.StateClosed && s != http.StateHijacked {
		return
	}
	if v, ok := p.conns.LoadAndDelete(c); ok {
		p.closeUpstream(v.(*connState))
	}
}

// ServeHTTP decides and forwards one request.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	cs, _ := r.Context().Value(connKey{}).(*connState)
	if cs == nil || cs.err != nil {
		http.Error(w, "connection refused by policy", http.StatusForbidden)
		return
	}
	start := time.Now()
	// The rules in force now, not when the connection came: a policy
	// change applies to the next request of a kept-alive connection, as
	// in Envoy. A connection the policy no longer knows gets 403s.
	dec, err := p.cfg.Policy.Connection(cs.red)
	if err != nil {
		p.cfg.Logger.Debug("httpproxy: policy", "from", cs.red.Source, "error", err)
		dec = Decision{SourceIdentity: cs.dec.SourceIdentity, DestinationIdentity: cs.dec.DestinationIdentity, Direction: cs.dec.Direction}
	}
	req := policy.HTTPRequest{Method: r.Method, Target: r.RequestURI, Host: r.Host, Header: r.Header}
	allowed := len(dec.Sides) > 0
	for _, side := range dec.Sides {
		if !side.Decide(&req).Allowed {
			allowed = false
			break
		}
	}
	httpRec := p.httpRecord(r, 0)
	verdict := flow.Forwarded
	if !allowed {
		verdict = flow.Dropped
	}
	p.record(cs, start, verdict, flow.Layer7{Type: flow.L7Request, HTTP: httpRec})
	if !allowed {
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(http.StatusForbidden)
		_, _ = io.WriteString(w, DeniedBody)
		p.record(cs, time.Now(), flow.Forwarded, flow.Layer7{Type: flow.L7Response, Latency: time.Since(start),
			HTTP: &flow.HTTP{Code: http.StatusForbidden, Method: httpRec.Method, URL: httpRec.URL, Protocol: httpRec.Protocol}})
		return
	}
	resp, err := p.roundTrip(r.Context(), cs, r)
	if err != nil {
		p.cfg.Logger.Debug("httpproxy: upstream", "to", cs.red.Destination, "error", err)
		http.Error(w, "upstream connect error or disconnect/reset before headers", http.StatusServiceUnavailable)
		p.record(cs, time.Now(), flow.Error, flow.Layer7{Type: flow.L7Response, Latency: time.Since(start),
			HTTP: &flow.HTTP{Code: http.StatusServiceUnavailable, Method: httpRec.Method, URL: httpRec.URL, Protocol: httpRec.Protocol}})
		return
	}
	removeHopByHop(resp.Header)
	for k, vs := range resp.Header {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.StatusCode)
	_, copyErr := io.Copy(w, resp.Body)
	resp.Body.Close()
	if copyErr != nil || resp.Close {
		p.closeUpstream(cs)
	}
	p.record(cs, time.Now(), flow.Forwarded, flow.Layer7{Type: flow.L7Response, Latency: time.Since(start),
		HTTP: &flow.HTTP{Code: uint32(resp.StatusCode), Method: httpRec.Method, URL: httpRec.URL, Protocol: httpRec.Protocol}})
}

// roundTrip sends r on the connection's upstream, dialing it first if
// there is none (or it broke), and reads the response's headers.
func (p *Proxy) roundTrip(ctx context.Context, cs *connState, r *http.Request) (*http.Response, error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.upstream == nil {
		c, err := p.dialer.Dial(ctx, "tcp", cs.red.Destination, cs.mark)
		if err != nil {
			return nil, err
		}
		cs.upstream, cs.br = c, bufio.NewReader(c)
	}
	out := r.Clone(ctx)
	out.RequestURI = ""
	out.Close = false
	removeHopByHop(out.Header)
	// The body goes out with the headers: the client's "Expect:
	// 100-continue" was answered by this side's server already.
	out.Header.Del("Expect")
	deadline := time.Now().Add(p.cfg.UpstreamTimeout)
	_ = cs.upstream.SetDeadline(deadline)
	if err := out.Write(cs.upstream); err != nil {
		p.closeUpstreamLocked(cs)
		return nil, err
	}
	// Interim (1xx) responses are not forwarded: the client gets the
	// final one, which belongs to this request; left unread, it would be
	// taken for the next request's on this kept-alive connection.
	var resp *http.Response
	for {
		var err error
		resp, err = http.ReadResponse(cs.br, out)
		if err != nil {
			p.closeUpstreamLocked(cs)
			return nil, err
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			break
		}
		resp.Body.Close()
	}
	// The body streams without a deadline of its own beyond the client's.
	_ = cs.upstream.SetDeadline(time.Time{})
	return resp, nil
}

// hopByHop are the headers that concern one connection (RFC 9110 7.6.1),
// which a proxy does not forward; among them Upgrade, so that the proxy,
// which does not switch protocols, never lets a connection out of HTTP.
var hopByHop = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func removeHopByHop(h http.Header) {
	for _, f := range h.Values("Connection") {
		for _, name := range strings.Split(f, ",") {
			if name = textproto.TrimString(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, k := range hopByHop {
		h.Del(k)
	}
}

func (p *Proxy) closeUpstream(cs *connState) {
	cs.mu.Lock()
	p.closeUpstreamLocked(cs)
	cs.mu.Unlock()
}

func (p *Proxy) closeUpstreamLocked(cs *connState) {
	if cs.upstream != nil {
		cs.upstream.Close()
		cs.upstream, cs.br = nil, nil
	}
}

// httpRecord is the flow record of a request: Hubble's URL is absolute.
func (p *Proxy) httpRecord(r *http.Request, code uint32) *flow.HTTP {
	h := &flow.HTTP{Code: code, Method: r.Method, URL: "http://" + r.Host + r.RequestURI, Protocol: r.Proto}
	keys := make([]string, 0, len(r.Header))
	for k := range r.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range r.Header[k] {
			h.Headers = append(h.Headers, flow.HTTPHeader{Key: k, Value: v})
		}
	}
	return h
}

func (p *Proxy) record(cs *connState, t time.Time, v flow.Verdict, l7 flow.Layer7) {
	if p.cfg.Recorder == nil {
		return
	}
	p.cfg.Recorder.RecordL7(&flow.L7Record{
		Time: t, Verdict: v, Direction: cs.dec.Direction, Protocol: nodeplane.ProtoTCP,
		Source: cs.red.Source, Destination: cs.red.Destination,
		SourceIdentity: uint32(cs.dec.SourceIdentity), DestinationIdentity: uint32(cs.dec.DestinationIdentity),
		ProxyPort: p.cfg.Port, L7: l7,
	})
}

// Endpoints tells [EnginePolicy] about addresses: the identity of any
// address, and the compiled policy of a local endpoint's.
type Endpoints interface {
	Lookup(addr netip.Addr) (id identity.ID, pol *policy.EndpointPolicy, ok bool)
}

// EnginePolicy is the [Policy] of compiled endpoint policies: the source's
// egress HTTP rules when it is a local endpoint, and the destination's
// ingress HTTP rules when it is one.
type EnginePolicy struct {
	Endpoints Endpoints
}

// Connection implements [Policy].
func (e EnginePolicy) Connection(c proxy.Redirected) (Decision, error) {
	srcID, srcPol, ok := e.Endpoints.Lookup(c.Source.Addr())
	if !ok || srcPol == nil {
		return Decision{}, fmt.Errorf("httpproxy: source %v is no local endpoint", c.Source)
	}
	dstID, dstPol, ok := e.Endpoints.Lookup(c.Destination.Addr())
	if !ok {
		return Decision{}, fmt.Errorf("httpproxy: no identity for destination %v", c.Destination)
	}
	d := Decision{SourceIdentity: srcID, DestinationIdentity: dstID, Direction: flow.Ingress}
	port := c.Destination.Port()
	eg, redirect := srcPol.HTTP(dstID, mapstate.Egress, nodeplane.ProtoTCP, port)
	if redirect {
		d.Direction = flow.Egress
	}
	d.Sides = append(d.Sides, eg)
	if dstPol != nil {
		in, _ := dstPol.HTTP(srcID, mapstate.Ingress, nodeplane.ProtoTCP, port)
		d.Sides = append(d.Sides, in)
		d.IngressEnforced = true
	}
	return d, nil
}
