package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/policy"
	"github.com/nodeplane/nodeplane/proxy"
)

// Policy decides queries and learns answers; *policy.Engine implements it.
type Policy interface {
	EvaluateDNS(src netip.Addr, dst netip.AddrPort, proto nodeplane.Protocol, name string) (policy.DNSDecision, error)
	ObserveDNS(name string, addrs []netip.Addr, ttl time.Duration) error
}

// Recorder receives the proxy's L7 records; *flow.Observer implements it.
type Recorder interface {
	RecordL7(*flow.L7Record)
}

// Config configures a [Proxy].
type Config struct {
	// Policy decides each query and learns each answer. Required.
	Policy Policy
	// Port is the proxy port, UDP and TCP: the policy's
	// policy.Config.ProxyPorts.DNS. Required.
	Port uint16
	// Proxy says in which namespace the proxy's sockets live (the node's).
	Proxy proxy.Config
	// Recorder gets a record per query and per response. Nil: none.
	Recorder Recorder
	// Timeout bounds the exchange with the server. Zero: 5s.
	Timeout time.Duration
	// IdleTimeout disconnects a TCP client that sends nothing for this
	// long. Zero: 10s.
	IdleTimeout time.Duration
	// RejectRcode answers a query no DNS rule allows: dns.RcodeRefused
	// (the zero value; Cilium's default --tofqdns-dns-reject-response-code
	// "refused") or dns.RcodeNameError ("nameError"). Others are invalid.
	RejectRcode int
	// MaxInFlight bounds the queries handled at once, over UDP and TCP
	// together: beyond it a datagram is dropped and a TCP connection with
	// a query is closed (the clients retry), so that a flood cannot
	// exhaust the node's memory. A TCP connection holds a place only
	// while one of its queries is being handled, not while it is idle or
	// its client is slow to send: TCP clients cannot starve UDP. Zero:
	// 1024.
	MaxInFlight int
	// MaxTCPConnections bounds the TCP client connections open at once;
	// one more is closed as soon as it is accepted. Zero: 256. (Cilium's
	// proxy has no such bound; here every resource a client can hold is
	// bounded.)
	MaxTCPConnections int
	// Logger gets diagnostics. Nil: discarded.
	Logger *slog.Logger
}

// Errors.
var (
	// ErrInvalidConfig wraps a Config that New refuses.
	ErrInvalidConfig = errors.New("dnsproxy: invalid config")
)

// Proxy is a running DNS proxy. Close stops it.
type Proxy struct {
	cfg    Config
	log    *slog.Logger
	udp    *proxy.UDPConn
	tcp    *net.TCPListener
	dialer proxy.Dialer
	// upstream keeps idle UDP sockets to servers (upstream.go).
	upstream upstreams

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	// inFlight holds a token per query being handled.
	inFlight chan struct{}
	// tcpConns holds a token per open TCP client connection.
	tcpConns chan struct{}
}

// tryAcquire takes a token of sem, or reports that it has none left.
func tryAcquire(sem chan struct{}) bool {
	select {
	case sem <- struct{}{}:
		return true
	default:
		return false
	}
}

// New binds the proxy port (UDP and TCP, in Config.Proxy's namespace) and
// starts serving. If either socket cannot be bound (the port is taken, no
// privilege for transparent sockets), New fails and nothing runs.
func New(cfg Config) (_ *Proxy, err error) {
	if cfg.Policy == nil {
		return nil, fmt.Errorf("%w: no Policy", ErrInvalidConfig)
	}
	if cfg.Port == 0 {
		return nil, fmt.Errorf("%w: no Port", ErrInvalidConfig)
	}
	if cfg.RejectRcode != 0 && cfg.RejectRcode != dns.RcodeRefused && cfg.RejectRcode != dns.RcodeNameError {
		return nil, fmt.Errorf("%w: RejectRcode %d is neither REFUSED nor NXDOMAIN", ErrInvalidConfig, cfg.RejectRcode)
	}
	if cfg.Timeout < 0 || cfg.IdleTimeout < 0 || cfg.MaxInFlight < 0 || cfg.MaxTCPConnections < 0 {
		return nil, fmt.Errorf("%w: negative timeout, MaxInFlight or MaxTCPConnections", ErrInvalidConfig)
	}
	p := newProxy(cfg)
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if p.udp, err = proxy.ListenUDP(cfg.Proxy, cfg.Port); err != nil {
		return nil, fmt.Errorf("dnsproxy: %w", err)
	}
	if p.tcp, err = proxy.ListenTCP(cfg.Proxy, cfg.Port); err != nil {
		return nil, fmt.Errorf("dnsproxy: %w", err)
	}
	p.wg.Add(2)
	go p.serveUDP()
	go p.serveTCP()
	return p, nil
}

// newProxy returns a proxy without sockets (handle works on it).
func newProxy(cfg Config) *Proxy {
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Second
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 10 * time.Second
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = 1024
	}
	if cfg.MaxTCPConnections == 0 {
		cfg.MaxTCPConnections = 256
	}
	if cfg.RejectRcode == 0 {
		cfg.RejectRcode = dns.RcodeRefused
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Proxy{cfg: cfg, log: log, dialer: proxy.Dialer{Config: cfg.Proxy, Timeout: cfg.Timeout},
		ctx: ctx, cancel: cancel, conns: map[net.Conn]struct{}{}, inFlight: make(chan struct{}, cfg.MaxInFlight),
		tcpConns: make(chan struct{}, cfg.MaxTCPConnections)}
}

// Close stops serving, closes the sockets and the open TCP connections,
// and waits for the handlers.
func (p *Proxy) Close() error {
	p.cancel()
	var errs []error
	if p.udp != nil {
		errs = append(errs, p.udp.Close())
	}
	if p.tcp != nil {
		errs = append(errs, p.tcp.Close())
	}
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	p.upstream.close()
	return errors.Join(errs...)
}

func (p *Proxy) serveUDP() {
	defer p.wg.Done()
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, src, dst, err := p.udp.ReadFrom(buf)
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			if errors.Is(err, proxy.ErrNoOriginalDestination) {
				p.log.Warn("dnsproxy: datagram without original destination", "src", src)
				continue
			}
			p.log.Warn("dnsproxy: read", "err", err)
			time.Sleep(10 * time.Millisecond) // no busy loop on a failing socket
			continue
		}
		if !tryAcquire(p.inFlight) {
			p.log.Warn("dnsproxy: too many queries in flight; datagram dropped", "src", src)
			continue
		}
		msg := append([]byte(nil), buf[:n]...)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer func() { <-p.inFlight }()
			if reply := p.handle(p.ctx, msg, src, dst, nodeplane.ProtoUDP); reply != nil {
				if _, err := p.udp.WriteFrom(reply, dst, src); err != nil {
					p.log.Warn("dnsproxy: answer", "to", src, "err", err)
				}
			}
		}()
	}
}

func (p *Proxy) serveTCP() {
	defer p.wg.Done()
	for {
		c, err := p.tcp.Accept()
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			p.log.Warn("dnsproxy: accept", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if !tryAcquire(p.tcpConns) {
			p.log.Warn("dnsproxy: too many TCP connections; connection closed", "src", c.RemoteAddr())
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer func() { <-p.tcpConns }()
			defer func() {
				p.mu.Lock()
				delete(p.conns, c)
				p.mu.Unlock()
				c.Close()
			}()
			p.serveConn(c)
		}()
	}
}

// serveConn answers the length-prefixed queries of one TCP client until it
// closes, stalls (IdleTimeout) or sends something that is not DNS framing.
func (p *Proxy) serveConn(c net.Conn) {
	r, err := proxy.RedirectedConn(c)
	if err != nil {
		p.log.Warn("dnsproxy: tcp", "err", err)
		return
	}
	dc := &dns.Conn{Conn: c}
	for {
		_ = c.SetReadDeadline(time.Now().Add(p.cfg.IdleTimeout))
		raw, err := dc.ReadMsgHeader(nil)
		if err != nil {
			return
		}
		// A query place only while the query is handled: reading the
		// next one and writing this answer hold none.
		if !tryAcquire(p.inFlight) {
			p.log.Warn("dnsproxy: too many queries in flight; connection closed", "src", r.Source)
			return
		}
		reply := p.handle(p.ctx, raw, r.Source, r.Destination, nodeplane.ProtoTCP)
		<-p.inFlight
		if reply == nil {
			return
		}
		_ = c.SetWriteDeadline(time.Now().Add(p.cfg.Timeout))
		if _, err := dc.Write(reply); err != nil {
			return
		}
	}
}

// recordBase fills the fields every record of a query shares.
func recordBase(src, dst netip.AddrPort, proto nodeplane.Protocol, port uint16) flow.L7Record {
	return flow.L7Record{Time: time.Now(), Direction: flow.Egress, Protocol: proto,
		Source: src, Destination: dst, ProxyPort: port}
}

func qtypes(m *dns.Msg) []string {
	var out []string
	for _, q := range m.Question {
		out = append(out, dns.TypeToString[q.Qtype])
	}
	return out
}

func normalizeName(n string) string { return strings.ToLower(dns.Fqdn(n)) }
