package flow

import (
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/nodeplane/nodeplane"
)

// AppendJSON appends f as the JSON object Hubble prints for a flow
// (protojson of flow.proto's Flow with proto field names, as in `hubble
// observe -o jsonpb`): enums by name, zero values left out, is_reply
// present whenever it is known. It allocates nothing when b has room.
func (f *Flow) AppendJSON(b []byte) []byte {
	b = append(b, '{')
	w := jsonObj{b: b}
	w.key("time")
	w.b = appendTime(w.b, f.Time)
	if f.Verdict != VerdictUnknown {
		w.key("verdict")
		w.str(f.Verdict.String())
	}
	if f.DropReason != 0 {
		w.key("drop_reason")
		w.b = strconv.AppendUint(w.b, uint64(f.DropReason), 10)
	}
	if f.IP.Source.IsValid() {
		w.key("IP")
		w.b = append(w.b, '{')
		ip := jsonObj{b: w.b}
		ip.key("source")
		ip.b = append(ip.b, '"')
		ip.b = f.IP.Source.AppendTo(ip.b)
		ip.b = append(ip.b, '"')
		ip.key("destination")
		ip.b = append(ip.b, '"')
		ip.b = f.IP.Destination.AppendTo(ip.b)
		ip.b = append(ip.b, '"')
		ip.key("ipVersion")
		ip.str(f.IP.Version().String())
		w.b = append(ip.b, '}')
	}
	if f.L4.Protocol != 0 {
		if name := l4Name(f.L4.Protocol); name != "" {
			w.key("l4")
			w.b = append(w.b, '{')
			l4 := jsonObj{b: w.b}
			l4.key(name)
			l4.b = append(l4.b, '{')
			p := jsonObj{b: l4.b}
			switch f.L4.Protocol {
			case nodeplane.ProtoTCP, nodeplane.ProtoUDP, nodeplane.ProtoSCTP:
				p.uint("source_port", uint64(f.L4.SourcePort))
				p.uint("destination_port", uint64(f.L4.DestinationPort))
				if f.L4.Protocol == nodeplane.ProtoTCP && f.L4.TCPFlags != 0 {
					p.key("flags")
					p.b = append(p.b, '{')
					fl := jsonObj{b: p.b}
					for i, n := range jsonTCPFlags {
						if f.L4.TCPFlags&(1<<i) != 0 {
							fl.key(n)
							fl.b = append(fl.b, "true"...)
						}
					}
					p.b = append(fl.b, '}')
				}
			default:
				p.uint("type", uint64(f.L4.ICMPType))
				p.uint("code", uint64(f.L4.ICMPCode))
			}
			l4.b = append(p.b, '}')
			w.b = append(l4.b, '}')
		}
	}
	w.endpoint("source", &f.Source)
	w.endpoint("destination", &f.Destination)
	if f.Type != UnknownType {
		w.key("Type")
		w.str(f.Type.String())
	}
	if f.NodeName != "" {
		w.key("node_name")
		w.str(f.NodeName)
	}
	if f.Type == L7 {
		w.key("l7")
		w.b = f.L7.appendJSON(w.b)
	}
	if f.IsReplyKnown && f.IsReply {
		w.key("reply")
		w.b = append(w.b, "true"...)
	}
	w.key("event_type")
	w.b = append(w.b, '{')
	et := jsonObj{b: w.b}
	et.int("type", int64(f.EventType.Type))
	et.int("sub_type", int64(f.EventType.SubType))
	w.b = append(et.b, '}')
	if f.DestinationService.Name != "" {
		w.key("destination_service")
		w.b = append(w.b, '{')
		s := jsonObj{b: w.b}
		s.key("name")
		s.str(f.DestinationService.Name)
		if f.DestinationService.Namespace != "" {
			s.key("namespace")
			s.str(f.DestinationService.Namespace)
		}
		w.b = append(s.b, '}')
	}
	if f.TrafficDirection != TrafficDirectionUnknown {
		w.key("traffic_direction")
		w.str(f.TrafficDirection.String())
	}
	w.uint("policy_match_type", uint64(f.PolicyMatchType))
	if f.TraceObservationPoint != UnknownPoint {
		w.key("trace_observation_point")
		w.str(f.TraceObservationPoint.String())
	}
	if f.TraceReason != TraceReasonUnknown {
		w.key("trace_reason")
		w.str(f.TraceReason.String())
	}
	if f.DropReason != 0 {
		w.key("drop_reason_desc")
		w.str(f.DropReason.String())
	}
	if f.IsReplyKnown {
		w.key("is_reply")
		w.b = strconv.AppendBool(w.b, f.IsReply)
	}
	if f.Interface.Index != 0 || f.Interface.Name != "" {
		w.key("interface")
		w.b = append(w.b, '{')
		i := jsonObj{b: w.b}
		i.uint("index", uint64(f.Interface.Index))
		if f.Interface.Name != "" {
			i.key("name")
			i.str(f.Interface.Name)
		}
		w.b = append(i.b, '}')
	}
	w.uint("proxy_port", uint64(f.ProxyPort))
	w.key("Summary")
	if f.Type == L7 {
		w.str(f.Summary()) // URLs and names need escaping
	} else {
		w.b = append(w.b, '"')
		w.b = f.AppendSummary(w.b) // plain ASCII
		w.b = append(w.b, '"')
	}
	return append(w.b, '}')
}

// AppendJSON appends r as one line of `hubble observe -o jsonpb`: the
// GetFlowsResponse object with "flow" or "lost_events", "node_name" and
// "time", and a newline.
func (r *Response) AppendJSON(b []byte) []byte {
	b = append(b, '{')
	w := jsonObj{b: b}
	var t time.Time
	switch {
	case r.Flow != nil:
		w.key("flow")
		w.b = r.Flow.AppendJSON(w.b)
		t = r.Flow.Time
	case r.Lost != nil:
		w.key("lost_events")
		w.b = append(w.b, '{')
		l := jsonObj{b: w.b}
		l.key("source")
		l.str(r.Lost.Source.String())
		l.key("num_events_lost")
		l.b = append(l.b, '"')
		l.b = strconv.AppendUint(l.b, r.Lost.NumEventsLost, 10)
		l.b = append(l.b, '"')
		w.b = append(l.b, '}')
		t = r.Lost.Time
	}
	if r.NodeName != "" {
		w.key("node_name")
		w.str(r.NodeName)
	}
	w.key("time")
	w.b = appendTime(w.b, t)
	return append(w.b, '}', '\n')
}

func l4Name(proto nodeplane.Protocol) string {
	switch proto {
	case nodeplane.ProtoTCP:
		return "TCP"
	case nodeplane.ProtoUDP:
		return "UDP"
	case nodeplane.ProtoSCTP:
		return "SCTP"
	case nodeplane.ProtoICMP:
		return "ICMPv4"
	case nodeplane.ProtoICMPv6:
		return "ICMPv6"
	}
	return ""
}

// jsonObj appends the members of a JSON object, with commas.
type jsonObj struct {
	b []byte
	n int
}

func (w *jsonObj) key(k string) {
	if w.n > 0 {
		w.b = append(w.b, ',')
	}
	w.n++
	w.b = appendJSONString(w.b, k)
	w.b = append(w.b, ':')
}

func (w *jsonObj) str(s string) { w.b = appendJSONString(w.b, s) }

// uint appends a non-zero number member (protojson leaves zeros out).
func (w *jsonObj) uint(k string, v uint64) {
	if v != 0 {
		w.key(k)
		w.b = strconv.AppendUint(w.b, v, 10)
	}
}

func (w *jsonObj) int(k string, v int64) {
	if v != 0 {
		w.key(k)
		w.b = strconv.AppendInt(w.b, v, 10)
	}
}

func (w *jsonObj) endpoint(k string, e *Endpoint) {
	if e.ID == 0 && e.Identity == 0 && e.Namespace == "" && e.PodName == "" && len(e.Labels) == 0 {
		return
	}
	w.key(k)
	w.b = append(w.b, '{')
	o := jsonObj{b: w.b}
	o.uint("ID", uint64(e.ID))
	o.uint("identity", uint64(e.Identity))
	if e.Namespace != "" {
		o.key("namespace")
		o.str(e.Namespace)
	}
	if len(e.Labels) > 0 {
		o.key("labels")
		o.b = append(o.b, '[')
		for i, l := range e.Labels {
			if i > 0 {
				o.b = append(o.b, ',')
			}
			o.b = appendJSONString(o.b, l)
		}
		o.b = append(o.b, ']')
	}
	if e.PodName != "" {
		o.key("pod_name")
		o.str(e.PodName)
	}
	w.b = append(o.b, '}')
}

// appendTime appends t as protojson does a Timestamp: RFC 3339 in UTC
// with 0, 3, 6 or 9 fractional digits.
func appendTime(b []byte, t time.Time) []byte {
	t = t.UTC()
	b = append(b, '"')
	b = t.AppendFormat(b, "2006-01-02T15:04:05")
	ns := t.Nanosecond()
	switch {
	case ns == 0:
	case ns%1e6 == 0:
		b = appendFrac(b, ns/1e6, 3)
	case ns%1e3 == 0:
		b = appendFrac(b, ns/1e3, 6)
	default:
		b = appendFrac(b, ns, 9)
	}
	return append(b, 'Z', '"')
}

func appendFrac(b []byte, v, digits int) []byte {
	b = append(b, '.')
	var tmp [9]byte
	for i := digits - 1; i >= 0; i-- {
		tmp[i] = byte('0' + v%10)
		v /= 10
	}
	return append(b, tmp[:digits]...)
}

const hexDigits = "0123456789abcdef"

func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0 // s[start:i] is safe and not yet appended
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			if c == '"' || c == '\\' {
				b = append(b, '\\', c)
			} else {
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// jsonTCPFlags are flow.proto's TCPFlags field names by bit.
var jsonTCPFlags = [...]string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}
