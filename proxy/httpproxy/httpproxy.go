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
	"net/url"
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

// Config configures a [Proxy]. Every limit has a default for its zero
// value and none can be turned off: each bounds how long, or how many,
// goroutines a client or an upstream can hold.
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
	// UpstreamTimeout bounds the upstream connect and, once the request
	// has been sent, the wait for the response's headers (default 30s).
	UpstreamTimeout time.Duration
	// StreamIdleTimeout bounds the time a request may make no progress
	// while its body is read from the client and written upstream and its
	// response is read from the upstream and written to the client: a
	// client that sends or reads a byte less often (slowloris on the body,
	// a reader that never reads) or an upstream that stalls mid-response
	// is disconnected. Default 5 minutes, Envoy's stream_idle_timeout
	// default. (Cilium sets stream_idle_timeout to 0, disabled, in the
	// listeners of pkg/envoy/xds_server.go; here it cannot be disabled.)
	StreamIdleTimeout time.Duration
	// MaxConnections bounds the client connections open at once; a
	// connection beyond it is closed as soon as it is accepted, without
	// an answer, as Envoy's overload manager refuses connections beyond
	// global_downstream_max_connections. Default 1024 (Envoy's default
	// circuit-breaker max_connections).
	MaxConnections int
	// Logger gets the proxy's errors (default: discarded).
	Logger *slog.Logger
}

// Defaults of the zero Config fields.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 60 * time.Second
	DefaultMaxHeaderBytes    = 60 << 10
	DefaultUpstreamTimeout   = 30 * time.Second
	DefaultStreamIdleTimeout = 5 * time.Minute
	DefaultMaxConnections    = 1024
)

// withDefaults validates cfg and fills in the defaults.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.Port == 0 {
		return cfg, errors.New("httpproxy: Config.Port is required")
	}
	if cfg.Policy == nil {
		return cfg, errors.New("httpproxy: Config.Policy is required")
	}
	if cfg.ReadHeaderTimeout < 0 || cfg.IdleTimeout < 0 || cfg.UpstreamTimeout < 0 || cfg.StreamIdleTimeout < 0 {
		return cfg, errors.New("httpproxy: negative timeout")
	}
	if cfg.MaxHeaderBytes < 0 || cfg.MaxConnections < 0 {
		return cfg, errors.New("httpproxy: negative header or connection limit")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	def(&cfg.IdleTimeout, DefaultIdleTimeout)
	def(&cfg.UpstreamTimeout, DefaultUpstreamTimeout)
	def(&cfg.StreamIdleTimeout, DefaultStreamIdleTimeout)
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return cfg, nil
}

// Proxy is a running HTTP proxy.
type Proxy struct {
	cfg    Config
	ln     net.Listener
	srv    *http.Server
	dialer proxy.Dialer
	// dial connects upstream: dialer.Dial, or a test's.
	dial  func(ctx context.Context, network string, dst netip.AddrPort, mark uint32) (net.Conn, error)
	done  chan struct{}
	conns sync.Map // net.Conn -> *connState, until the client's connection closes
}

type connKey struct{}

// connState is one client connection's: its decision and its upstream.
type connState struct {
	red      proxy.Redirected
	dec      Decision
	mark     uint32
	err      error // from Policy.Connection
	mu       sync.Mutex
	upstream *upstreamConn
	br       *bufio.Reader
}

// New binds the proxy's port in the node's namespace and starts serving.
func New(cfg Config) (*Proxy, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ln, err := proxy.ListenTCP(cfg.Proxy, cfg.Port)
	if err != nil {
		return nil, fmt.Errorf("httpproxy: %w", err)
	}
	p := newProxy(cfg)
	p.serve(ln)
	return p, nil
}

// newProxy returns a proxy of a validated cfg that does not serve yet.
func newProxy(cfg Config) *Proxy {
	p := &Proxy{cfg: cfg, done: make(chan struct{}),
		dialer: proxy.Dialer{Config: cfg.Proxy, Timeout: cfg.UpstreamTimeout}}
	p.dial = p.dialer.Dial
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
	return p
}

// serve serves ln, at most Config.MaxConnections connections at once.
func (p *Proxy) serve(ln net.Listener) {
	p.ln = &limitListener{Listener: ln, slots: make(chan struct{}, p.cfg.MaxConnections), log: p.cfg.Logger}
	go func() {
		defer close(p.done)
		_ = p.srv.Serve(p.ln)
	}()
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
	rc := http.NewResponseController(w)
	// net/http reads a body the handler leaves unread (a denied request's,
	// up to 256 KiB) without a deadline of its own: bound it, so that a
	// client trickling the body of a request it gets no answer to yet
	// cannot hold the connection. Forwarded bodies extend it per read.
	_ = rc.SetReadDeadline(time.Now().Add(p.cfg.StreamIdleTimeout))
	w = &clientWriter{ResponseWriter: w, rc: rc, idle: p.cfg.StreamIdleTimeout}
	// Cover net/http's own final flush of the response too, which may
	// first wait for that unread body (up to the read deadline above).
	defer func() { _ = rc.SetWriteDeadline(time.Now().Add(2 * p.cfg.StreamIdleTimeout)) }()
	// The body the upstream gets reads the client's with a deadline; the
	// request's own stays net/http's, whose state after the handler says
	// whether the connection can serve another request.
	var body io.ReadCloser
	if r.Body != nil && r.Body != http.NoBody {
		body = &clientBody{ReadCloser: r.Body, rc: rc, idle: p.cfg.StreamIdleTimeout}
	}
	// The rules in force now, not when the connection came: a policy
	// change applies to the next request of a kept-alive connection, as
	// in Envoy. A connection the policy no longer knows gets 403s.
	dec, err := p.cfg.Policy.Connection(cs.red)
	if err != nil {
		p.cfg.Logger.Debug("httpproxy: policy", "from", cs.red.Source, "error", err)
		dec = Decision{SourceIdentity: cs.dec.SourceIdentity, DestinationIdentity: cs.dec.DestinationIdentity, Direction: cs.dec.Direction}
	}
	// The rules see, and the upstream gets, the path as Cilium's Envoy
	// normalizes it (policy.NormalizeHTTPPath says how and why).
	target := requestPath(r)
	if !strings.HasPrefix(target, "/") {
		// Envoy answers a target that is no path ("*", authority-form)
		// with 404 before any filter.
		http.Error(w, "", http.StatusNotFound)
		return
	}
	target, redirect, ok := policy.NormalizeHTTPPath(target)
	switch {
	case !ok, redirect && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc"):
		// Envoy's local replies for a path it cannot normalize, and for
		// a redirect a gRPC client would not follow.
		w.Header().Set("Connection", "close")
		http.Error(w, "", http.StatusBadRequest)
		return
	case redirect:
		w.Header().Set("Location", target)
		w.WriteHeader(http.StatusTemporaryRedirect)
		return
	}
	req := policy.HTTPRequest{Method: r.Method, Target: target, Host: r.Host, Header: r.Header}
	allowed := len(dec.Sides) > 0
	for _, side := range dec.Sides {
		if !side.Decide(&req).Allowed {
			allowed = false
			break
		}
	}
	httpRec := p.httpRecord(r, target)
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
	resp, err := p.roundTrip(r.Context(), cs, r, target, body)
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
	copyErr := streamBody(w, rc, resp.Body)
	if copyErr != nil || resp.Close {
		// Closed before the body: closing a body not read to its end
		// would read (and discard) the rest of it first, for as long as
		// the upstream sends.
		p.closeUpstream(cs)
	}
	resp.Body.Close()
	p.record(cs, time.Now(), flow.Forwarded, flow.Layer7{Type: flow.L7Response, Latency: time.Since(start),
		HTTP: &flow.HTTP{Code: uint32(resp.StatusCode), Method: httpRec.Method, URL: httpRec.URL, Protocol: httpRec.Protocol}})
	if copyErr != nil {
		// The upstream stalled or broke mid-body, or the client stopped
		// reading: abort the client's connection, so that a chunked
		// response is not ended as if it were complete.
		p.cfg.Logger.Debug("httpproxy: response body", "to", cs.red.Destination, "error", copyErr)
		panic(http.ErrAbortHandler)
	}
}

// roundTrip sends r on the connection's upstream, dialing it first if
// there is none (or it broke), and reads the response's headers. The
// request goes to target (path and query) when it is not empty, and its
// body is read from body when that is not nil.
func (p *Proxy) roundTrip(ctx context.Context, cs *connState, r *http.Request, target string, body io.ReadCloser) (*http.Response, error) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.upstream == nil {
		c, err := p.dial(ctx, "tcp", cs.red.Destination, cs.mark)
		if err != nil {
			return nil, err
		}
		cs.upstream = &upstreamConn{Conn: c, idle: p.cfg.StreamIdleTimeout}
		cs.br = bufio.NewReader(cs.upstream)
	}
	out := r.Clone(ctx)
	if body != nil {
		out.Body = body
	}
	if target != "" {
		// Opaque: written as it is, not escaped again.
		path, query, hasQuery := strings.Cut(target, "?")
		out.URL = &url.URL{Opaque: path, RawQuery: query, ForceQuery: hasQuery && query == ""}
	}
	out.RequestURI = ""
	out.Close = false
	removeHopByHop(out.Header)
	// The body goes out with the headers: the client's "Expect:
	// 100-continue" was answered by this side's server already.
	out.Header.Del("Expect")
	// Sending the request (its body as fast as the client gives it) is
	// bounded by StreamIdleTimeout per write; the response's headers are
	// then due within UpstreamTimeout, as Envoy's route timeout starts
	// when the downstream request is complete.
	cs.upstream.headersBy = time.Time{}
	if err := out.Write(cs.upstream); err != nil {
		p.closeUpstreamLocked(cs)
		return nil, err
	}
	cs.upstream.headersBy = time.Now().Add(p.cfg.UpstreamTimeout)
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
	// The body streams with StreamIdleTimeout per read.
	cs.upstream.headersBy = time.Time{}
	return resp, nil
}

// requestPath is a request's :path as Envoy's HTTP/1 codec makes it: the
// request target, or the path and query of an absolute-form target
// ("http://host/p?q", RFC 9112 3.2.2).
func requestPath(r *http.Request) string {
	u := r.RequestURI
	if strings.HasPrefix(u, "/") {
		return u
	}
	if i := strings.Index(u, "://"); i > 0 {
		rest := u[i+3:]
		j := strings.IndexAny(rest, "/?")
		switch {
		case j < 0:
			return "/"
		case rest[j] == '?':
			return "/" + rest[j:]
		}
		return rest[j:]
	}
	return u
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

// httpRecord is the flow record of a request with its normalized target:
// Hubble's URL is absolute.
func (p *Proxy) httpRecord(r *http.Request, target string) *flow.HTTP {
	h := &flow.HTTP{Method: r.Method, URL: "http://" + r.Host + target, Protocol: r.Proto}
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
