package dnsproxy

import (
	"context"
	"math"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/proxy"
)

// headerLen is the length of a DNS message header.
const headerLen = 12

// handle answers one query message from client, sent to server (the
// original destination) over proto: the packed reply, or nil when the
// message gets no answer (its header is unreadable).
func (p *Proxy) handle(ctx context.Context, raw []byte, client, server netip.AddrPort, proto nodeplane.Protocol) []byte {
	rec := recordBase(client, server, proto, p.cfg.Port)
	q := new(dns.Msg)
	if err := q.Unpack(raw); err != nil || q.Response || len(q.Question) != 1 || q.Opcode != dns.OpcodeQuery {
		return p.formErr(raw, q, rec)
	}
	name := normalizeName(q.Question[0].Name)
	start := time.Now()
	req := rec
	req.L7 = flow.Layer7{Type: flow.L7Request, DNS: &flow.DNS{Query: name, ObservationSource: flow.DNSSourceProxy, Qtypes: qtypes(q)}}

	d, err := p.cfg.Policy.EvaluateDNS(client.Addr(), server, proto, name)
	rec.SourceIdentity, rec.DestinationIdentity = uint32(d.Client), uint32(d.Server)
	req.SourceIdentity, req.DestinationIdentity = rec.SourceIdentity, rec.DestinationIdentity
	if err != nil {
		p.log.Warn("dnsproxy: policy", "client", client, "server", server, "name", name, "err", err)
		req.Verdict = flow.Error
		p.record(&req)
		return p.answer(q, dns.RcodeServerFailure, rec, start, flow.Error)
	}
	if !d.Allowed {
		req.Verdict = flow.Dropped
		p.record(&req)
		return p.answer(q, p.cfg.RejectRcode, rec, start, flow.Dropped)
	}
	req.Verdict = flow.Forwarded
	p.record(&req)

	resp, err := p.exchange(ctx, q, server, proto, d.Client)
	if err != nil {
		p.log.Warn("dnsproxy: upstream", "server", server, "name", name, "err", err)
		return p.answer(q, dns.RcodeServerFailure, rec, start, flow.Error)
	}
	ips, ttl, cnames, usable := answerAddrs(resp, name)
	switch {
	case !usable:
		// Passed on, but nothing is learnt from it: connections to its
		// addresses stay denied (fail closed).
		p.log.Warn("dnsproxy: answer does not follow the CNAME chain of the query; not learnt", "name", name, "server", server)
	case len(ips) > 0:
		// Learnt before the client sees the answer, so the connection it
		// opens next already meets the new identities.
		if err := p.cfg.Policy.ObserveDNS(name, ips, time.Duration(ttl)*time.Second); err != nil {
			p.log.Warn("dnsproxy: observe", "name", name, "err", err)
		}
	}
	out := rec
	out.Verdict = flow.Forwarded
	out.L7 = flow.Layer7{Type: flow.L7Response, Latency: time.Since(start), DNS: &flow.DNS{Query: name,
		IPs: ips, TTL: ttl, CNAMEs: cnames, ObservationSource: flow.DNSSourceProxy,
		Rcode: uint32(resp.Rcode), Qtypes: qtypes(q), RRTypes: rrTypes(resp)}}
	p.record(&out)
	resp.Id = q.Id
	if proto == nodeplane.ProtoUDP {
		// The client's buffer: 512 bytes, or its EDNS0 size.
		resp.Truncate(udpSize(q))
	}
	b, err := resp.Pack()
	if err != nil {
		return p.answer(q, dns.RcodeServerFailure, rec, start, flow.Error)
	}
	return b
}

// exchange forwards a query to the server over proto.
// The upstream socket carries the client's identity in its mark, as
// Cilium's proxies do, so that the datapath enforces the server's ingress
// policy against the client, not the node.
func (p *Proxy) exchange(ctx context.Context, q *dns.Msg, server netip.AddrPort, proto nodeplane.Protocol, src identity.ID) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	network := "udp"
	if proto == nodeplane.ProtoTCP {
		network = "tcp"
	}
	var mark uint32
	if src != identity.Unknown {
		m, err := proxy.UpstreamMark(src, false)
		if err != nil {
			return nil, err
		}
		mark = m
	}
	// UDP sockets are reused (upstream.go); a TCP connection serves one
	// query.
	key := upstreamKey{server: server, mark: mark}
	var c net.Conn
	if network == "udp" {
		c = p.upstream.get(key)
	}
	if c == nil {
		var err error
		if c, err = p.dialer.Dial(ctx, network, server, mark); err != nil {
			return nil, err
		}
	}
	client := &dns.Client{Net: network, Timeout: p.cfg.Timeout, UDPSize: dns.MaxMsgSize}
	fwd := q.Copy()
	fwd.Id = dns.Id()
	resp, _, err := client.ExchangeWithConnContext(ctx, fwd, &dns.Conn{Conn: c, UDPSize: dns.MaxMsgSize})
	if err != nil || network != "udp" {
		c.Close()
	} else {
		p.upstream.put(key, c)
	}
	return resp, err
}

// formErr answers a message that is not a single standard query: FORMERR
// when the header is readable (as a DNS server would), nothing otherwise.
func (p *Proxy) formErr(raw []byte, q *dns.Msg, rec flow.L7Record) []byte {
	if len(raw) < headerLen || raw[2]&0x80 != 0 {
		// No header, or a response (never answer a response: no loops).
		rec.Verdict = flow.Dropped
		rec.L7 = flow.Layer7{Type: flow.L7Request, DNS: &flow.DNS{ObservationSource: flow.DNSSourceProxy}}
		p.record(&rec)
		return nil
	}
	m := new(dns.Msg)
	m.Id = uint16(raw[0])<<8 | uint16(raw[1])
	m.Response = true
	m.Opcode = int(raw[2]>>3) & 0xF
	m.Rcode = dns.RcodeFormatError
	if q != nil && len(q.Question) == 1 {
		m.Question = q.Question
	}
	rec.Verdict = flow.Dropped
	rec.L7 = flow.Layer7{Type: flow.L7Response, DNS: &flow.DNS{ObservationSource: flow.DNSSourceProxy, Rcode: dns.RcodeFormatError}}
	p.record(&rec)
	b, err := m.Pack()
	if err != nil {
		return nil
	}
	return b
}

// answer builds the proxy's own answer with rcode and records it.
func (p *Proxy) answer(q *dns.Msg, rcode int, rec flow.L7Record, start time.Time, v flow.Verdict) []byte {
	m := new(dns.Msg)
	m.SetRcode(q, rcode)
	rec.Verdict = v
	rec.L7 = flow.Layer7{Type: flow.L7Response, Latency: time.Since(start), DNS: &flow.DNS{
		Query: normalizeName(q.Question[0].Name), ObservationSource: flow.DNSSourceProxy,
		Rcode: uint32(rcode), Qtypes: qtypes(q)}}
	p.record(&rec)
	b, err := m.Pack()
	if err != nil {
		return nil
	}
	return b
}

func (p *Proxy) record(r *flow.L7Record) {
	if p.cfg.Recorder != nil {
		p.cfg.Recorder.RecordL7(r)
	}
}

// answerAddrs returns the A and AAAA addresses of an answer to a query
// for qname, their TTL and the CNAME targets, as Cilium's
// ExtractMsgDetails reads an answer: the records must follow the chain
// from qname through each CNAME to its target (a record for any other
// name makes the answer unusable for policy: ok is false), the addresses
// all belong to qname, and the TTL is the lowest of the chain's A, AAAA
// and CNAME records.
func answerAddrs(m *dns.Msg, qname string) (ips []netip.Addr, ttl uint32, cnames []string, ok bool) {
	want := qname
	ttl = math.MaxUint32
	for _, rr := range m.Answer {
		h := rr.Header()
		if normalizeName(h.Name) != want {
			return nil, 0, cnames, false
		}
		switch r := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(r.A.To4()); ok {
				ips = append(ips, a)
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(r.AAAA.To16()); ok {
				ips = append(ips, a.Unmap())
			}
		case *dns.CNAME:
			want = normalizeName(r.Target)
			cnames = append(cnames, r.Target)
		default:
			continue
		}
		ttl = min(ttl, h.Ttl)
	}
	if ttl == math.MaxUint32 {
		ttl = 0
	}
	return ips, ttl, cnames, true
}

func rrTypes(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		out = append(out, dns.TypeToString[rr.Header().Rrtype])
	}
	return out
}

// udpSize is the largest UDP answer the client takes.
func udpSize(q *dns.Msg) int {
	if o := q.IsEdns0(); o != nil && o.UDPSize() > dns.MinMsgSize {
		return int(o.UDPSize())
	}
	return dns.MinMsgSize
}
