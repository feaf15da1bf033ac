package flow

import (
	"net/netip"
	"strconv"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
)

// Layer7 is a flow's layer-7 record (flow.proto's Layer7): one HTTP request or
// response, or one DNS query or answer, as an L7 proxy saw it. Exactly one
// of HTTP and DNS is set.
type Layer7 struct {
	Type L7Type
	// Latency is the time from the request to its response (responses
	// only; Hubble's latency_ns).
	Latency time.Duration
	HTTP    *HTTP
	DNS     *DNS
}

// L7Type is flow.proto's L7FlowType.
type L7Type int32

// L7 record types.
const (
	L7TypeUnknown L7Type = 0
	L7Request     L7Type = 1
	L7Response    L7Type = 2
	L7Sample      L7Type = 3
)

func (t L7Type) String() string {
	switch t {
	case L7Request:
		return "REQUEST"
	case L7Response:
		return "RESPONSE"
	case L7Sample:
		return "SAMPLE"
	}
	return "UNKNOWN_L7_TYPE"
}

// HTTP is flow.proto's HTTP: one request (Code 0) or response.
type HTTP struct {
	// Code is the response's status code; 0 in a request.
	Code uint32
	// Method is the request's method ("GET").
	Method string
	// URL is the request's absolute URL: scheme, Host header and the
	// request target ("http://svc/public/x?q=1"), as Hubble shows it.
	URL string
	// Protocol is the request's version ("HTTP/1.1").
	Protocol string
	// Headers are the message's headers in the order received, canonical
	// names, one entry per value (flow.proto's HTTPHeader).
	Headers []HTTPHeader
}

// HTTPHeader is one header line.
type HTTPHeader struct {
	Key, Value string
}

// DNS is flow.proto's DNS: one query (Rcode 0, no IPs) or answer.
type DNS struct {
	// Query is the queried name, fully qualified with its trailing dot
	// ("www.example.test."), as Cilium records it.
	Query string
	// IPs are the A and AAAA addresses of an answer.
	IPs []netip.Addr
	// TTL is the lowest TTL of the answer's address records, in seconds.
	TTL uint32
	// CNAMEs are the CNAME targets of an answer.
	CNAMEs []string
	// ObservationSource is who saw the message: "proxy" for the DNS
	// proxy (Cilium's accesslog DNSSourceProxy).
	ObservationSource string
	// Rcode is the answer's response code (0 NOERROR, 3 NXDOMAIN, 5
	// REFUSED).
	Rcode uint32
	// Qtypes are the question's types ("A", "AAAA").
	Qtypes []string
	// RRTypes are the types of the answer's records.
	RRTypes []string
}

// DNS observation sources (Cilium's accesslog.DNSDataSource).
const (
	DNSSourceProxy = "proxy"
)

// L7Record is what an L7 proxy reports about one message it handled; an
// Observer turns it into a Flow of Type L7 ([Observer.RecordL7]).
type L7Record struct {
	// Time is when the proxy handled the message (zero: now).
	Time time.Time
	// Verdict is Forwarded for a message the proxy passed on, Dropped
	// for one it denied (Hubble shows Envoy's denied requests as
	// DROPPED), Error when the upstream failed.
	Verdict Verdict
	// Direction is the policy direction that redirected the connection:
	// Egress for the source endpoint's rule, Ingress for the
	// destination's.
	Direction TrafficDirection
	// Protocol is the transport (TCP or UDP).
	Protocol nodeplane.Protocol
	// Source and Destination are the client and the server of the
	// connection (the original destination, not the proxy), also for a
	// response.
	Source, Destination netip.AddrPort
	// SourceIdentity and DestinationIdentity are the ends' identities.
	SourceIdentity, DestinationIdentity uint32
	// ProxyPort is the proxy's port.
	ProxyPort uint16
	L7        Layer7
}

// L7Flow fills f from r as the Observer does (without enrichment), for
// callers that keep their own pipeline.
func L7Flow(r *L7Record, nodeName string, f *Flow) {
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	src, dst := r.Source, r.Destination
	isReply := r.L7.Type == L7Response
	if isReply {
		// Hubble's L7 response flows run from the server to the client.
		src, dst = dst, src
	}
	*f = Flow{
		Time:             t,
		Verdict:          r.Verdict,
		Type:             L7,
		EventType:        EventType{Type: int32(monitor.MessageTypeAccessLog)},
		NodeName:         nodeName,
		IP:               IP{Source: src.Addr(), Destination: dst.Addr()},
		L4:               L4{Protocol: r.Protocol, SourcePort: src.Port(), DestinationPort: dst.Port()},
		TrafficDirection: r.Direction,
		IsReply:          isReply,
		IsReplyKnown:     true,
		ProxyPort:        r.ProxyPort,
		L7:               r.L7,
	}
	f.Source.Identity, f.Destination.Identity = r.SourceIdentity, r.DestinationIdentity
	if isReply {
		f.Source.Identity, f.Destination.Identity = r.DestinationIdentity, r.SourceIdentity
	}
}

// RecordL7 stores an L7 record as a flow, enriched from the Catalog like
// the datapath's records, and tells the Sink. It is safe for concurrent
// use with itself and with Run, so a Sink may be called from several
// goroutines.
func (o *Observer) RecordL7(r *L7Record) {
	var f Flow
	L7Flow(r, o.cfg.NodeName, &f)
	o.dec.catalog.enrich(&f)
	o.seen.Add(1)
	o.ring.Write(&f)
	if o.cfg.Sink != nil {
		o.cfg.Sink.ObserveFlow(&f)
	}
}

// appendJSON appends l as protojson does flow.proto's Layer7.
func (l *Layer7) appendJSON(b []byte) []byte {
	w := jsonObj{b: append(b, '{')}
	if l.Type != L7TypeUnknown {
		w.key("type")
		w.str(l.Type.String())
	}
	if l.Latency > 0 {
		w.key("latency_ns")
		w.b = append(w.b, '"')
		w.b = strconv.AppendUint(w.b, uint64(l.Latency), 10)
		w.b = append(w.b, '"')
	}
	strs := func(k string, v []string) {
		if len(v) == 0 {
			return
		}
		w.key(k)
		w.b = append(w.b, '[')
		for i, s := range v {
			if i > 0 {
				w.b = append(w.b, ',')
			}
			w.b = appendJSONString(w.b, s)
		}
		w.b = append(w.b, ']')
	}
	str := func(k, v string) {
		if v != "" {
			w.key(k)
			w.str(v)
		}
	}
	if d := l.DNS; d != nil {
		w.key("dns")
		o := jsonObj{b: append(w.b, '{')}
		w, o = o, w
		str("query", d.Query)
		ips := make([]string, len(d.IPs))
		for i, ip := range d.IPs {
			ips[i] = ip.String()
		}
		strs("ips", ips)
		w.uint("ttl", uint64(d.TTL))
		strs("cnames", d.CNAMEs)
		str("observation_source", d.ObservationSource)
		w.uint("rcode", uint64(d.Rcode))
		strs("qtypes", d.Qtypes)
		strs("rrtypes", d.RRTypes)
		w, o = o, w
		w.b = append(o.b, '}')
	}
	if h := l.HTTP; h != nil {
		w.key("http")
		o := jsonObj{b: append(w.b, '{')}
		w, o = o, w
		w.uint("code", uint64(h.Code))
		str("method", h.Method)
		str("url", h.URL)
		str("protocol", h.Protocol)
		if len(h.Headers) > 0 {
			w.key("headers")
			w.b = append(w.b, '[')
			for i, hd := range h.Headers {
				if i > 0 {
					w.b = append(w.b, ',')
				}
				hw := jsonObj{b: append(w.b, '{')}
				hw.key("key")
				hw.str(hd.Key)
				hw.key("value")
				hw.str(hd.Value)
				w.b = append(hw.b, '}')
			}
			w.b = append(w.b, ']')
		}
		w, o = o, w
		w.b = append(o.b, '}')
	}
	return append(w.b, '}')
}
