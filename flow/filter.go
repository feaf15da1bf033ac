package flow

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
)

// ErrInvalidFilter is wrapped by every error of [Compile].
var ErrInvalidFilter = errors.New("invalid flow filter")

// Matcher is a compiled allow- and deny-list of [Filter]s.
type Matcher struct {
	allow, deny []compiled
}

// compiled is one Filter: all its predicates must hold.
type compiled []func(*Flow) bool

// Compile compiles Hubble's whitelist (allow) and blacklist (deny). A flow
// matches when allow is empty or one of its filters matches, and none of
// deny's does. A Filter with no fields set matches every flow.
func Compile(allow, deny []Filter) (*Matcher, error) {
	m := &Matcher{}
	for _, l := range []struct {
		in  []Filter
		out *[]compiled
	}{{allow, &m.allow}, {deny, &m.deny}} {
		for i := range l.in {
			c, err := compile(&l.in[i])
			if err != nil {
				return nil, fmt.Errorf("%w: %v", ErrInvalidFilter, err)
			}
			*l.out = append(*l.out, c)
		}
	}
	return m, nil
}

// Match reports whether f passes the lists.
func (m *Matcher) Match(f *Flow) bool {
	if m == nil {
		return true
	}
	if len(m.allow) > 0 && !slices.ContainsFunc(m.allow, func(c compiled) bool { return c.match(f) }) {
		return false
	}
	return !slices.ContainsFunc(m.deny, func(c compiled) bool { return c.match(f) })
}

func (c compiled) match(f *Flow) bool {
	for _, p := range c {
		if !p(f) {
			return false
		}
	}
	return true
}

func compile(ff *Filter) (compiled, error) {
	var c compiled
	add := func(p func(*Flow) bool, err error) error {
		if err != nil {
			return err
		}
		if p != nil {
			c = append(c, p)
		}
		return nil
	}
	src := func(f *Flow) *Endpoint { return &f.Source }
	dst := func(f *Flow) *Endpoint { return &f.Destination }
	for _, err := range []error{
		add(ipFilter(ff.SourceIP, func(f *Flow) netip.Addr { return f.IP.Source })),
		add(ipFilter(ff.DestinationIP, func(f *Flow) netip.Addr { return f.IP.Destination })),
		add(podFilter(ff.SourcePod, src)),
		add(podFilter(ff.DestinationPod, dst)),
		add(labelFilter(ff.SourceLabel, src)),
		add(labelFilter(ff.DestinationLabel, dst)),
		add(serviceFilter(ff.SourceService, nil)),
		add(serviceFilter(ff.DestinationService, func(f *Flow) *Service { return &f.DestinationService })),
		add(identityFilter(ff.SourceIdentity, src), nil),
		add(identityFilter(ff.DestinationIdentity, dst), nil),
		add(oneOf(ff.TrafficDirection, func(f *Flow) TrafficDirection { return f.TrafficDirection }), nil),
		add(oneOf(ff.Verdict, func(f *Flow) Verdict { return f.Verdict }), nil),
		add(dropReasonFilter(ff.DropReasonDesc), nil),
		add(interfaceFilter(ff.Interface), nil),
		add(eventTypeFilter(ff.EventType), nil),
		add(protocolFilter(ff.Protocol)),
		add(portFilter(ff.SourcePort, func(f *Flow) uint16 { return f.L4.SourcePort })),
		add(portFilter(ff.DestinationPort, func(f *Flow) uint16 { return f.L4.DestinationPort })),
		add(replyFilter(ff.Reply), nil),
		add(tcpFlagsFilter(ff), nil),
		add(nodeNameFilter(ff.NodeName)),
		add(oneOf(ff.IPVersion, func(f *Flow) IPVersion { return f.IP.Version() }), nil),
		l7Filters(ff, add),
	} {
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}

func oneOf[T comparable](vals []T, get func(*Flow) T) func(*Flow) bool {
	if len(vals) == 0 {
		return nil
	}
	return func(f *Flow) bool { return slices.Contains(vals, get(f)) }
}

func ipFilter(ips []string, get func(*Flow) netip.Addr) (func(*Flow) bool, error) {
	if len(ips) == 0 {
		return nil, nil
	}
	var prefixes []netip.Prefix
	for _, s := range ips {
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("IP prefix %q: %v", s, err)
			}
			prefixes = append(prefixes, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("IP address %q: %v", s, err)
		}
		prefixes = append(prefixes, netip.PrefixFrom(a, a.BitLen()))
	}
	return func(f *Flow) bool {
		a := get(f)
		return a.IsValid() && slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(a) })
	}, nil
}

func podFilter(names []string, get func(*Flow) *Endpoint) (func(*Flow) bool, error) {
	if len(names) == 0 {
		return nil, nil
	}
	type nsName struct{ ns, prefix string }
	var fs []nsName
	for _, n := range names {
		if n == "" {
			return nil, errors.New("empty pod name")
		}
		// Hubble's k8s.ParseNamespaceName: no "/" means namespace default.
		ns, name, ok := strings.Cut(n, "/")
		if !ok {
			ns, name = "default", n
		}
		fs = append(fs, nsName{ns, name})
	}
	return func(f *Flow) bool {
		ep := get(f)
		if ep.Namespace == "" && ep.PodName == "" {
			return false
		}
		return slices.ContainsFunc(fs, func(n nsName) bool {
			return (n.prefix == "" || strings.HasPrefix(ep.PodName, n.prefix)) && (n.ns == "" || n.ns == ep.Namespace)
		})
	}, nil
}

func serviceFilter(names []string, get func(*Flow) *Service) (func(*Flow) bool, error) {
	if len(names) == 0 {
		return nil, nil
	}
	if get == nil {
		// The datapath reports no source service: nothing matches.
		return func(*Flow) bool { return false }, nil
	}
	type nsName struct{ ns, prefix string }
	var fs []nsName
	for _, n := range names {
		if n == "" {
			return nil, errors.New("empty service name")
		}
		ns, name, ok := strings.Cut(n, "/")
		if !ok {
			ns, name = "default", n
		}
		fs = append(fs, nsName{ns, name})
	}
	return func(f *Flow) bool {
		s := get(f)
		if s.Name == "" {
			return false
		}
		return slices.ContainsFunc(fs, func(n nsName) bool {
			return (n.prefix == "" || strings.HasPrefix(s.Name, n.prefix)) && (n.ns == "" || n.ns == s.Namespace)
		})
	}, nil
}

func labelFilter(selectors []string, get func(*Flow) *Endpoint) (func(*Flow) bool, error) {
	if len(selectors) == 0 {
		return nil, nil
	}
	var sels []selector
	for _, s := range selectors {
		sel, err := parseSelector(s)
		if err != nil {
			return nil, err
		}
		sels = append(sels, sel)
	}
	return func(f *Flow) bool {
		labels := get(f).Labels
		return slices.ContainsFunc(sels, func(s selector) bool { return s.matches(labels) })
	}, nil
}

func identityFilter(ids []uint32, get func(*Flow) *Endpoint) func(*Flow) bool {
	if len(ids) == 0 {
		return nil
	}
	return func(f *Flow) bool { return slices.Contains(ids, get(f).Identity) }
}

func dropReasonFilter[T ~uint8](reasons []T) func(*Flow) bool {
	if len(reasons) == 0 {
		return nil
	}
	return func(f *Flow) bool { return slices.Contains(reasons, T(f.DropReason)) }
}

func interfaceFilter(ifs []Interface) func(*Flow) bool {
	if len(ifs) == 0 {
		return nil
	}
	return func(f *Flow) bool {
		return slices.ContainsFunc(ifs, func(i Interface) bool {
			return (i.Index == 0 || i.Index == f.Interface.Index) && (i.Name == "" || i.Name == f.Interface.Name)
		})
	}
}

func eventTypeFilter(types []EventTypeFilter) func(*Flow) bool {
	if len(types) == 0 {
		return nil
	}
	return func(f *Flow) bool {
		return slices.ContainsFunc(types, func(t EventTypeFilter) bool {
			return (t.Type == 0 || t.Type == f.EventType.Type) && (!t.MatchSubType || t.SubType == f.EventType.SubType)
		})
	}
}

func protocolFilter(protos []string) (func(*Flow) bool, error) {
	if len(protos) == 0 {
		return nil, nil
	}
	var want [][]nodeplane.Protocol
	var wantHTTP, wantDNS bool
	for _, p := range protos {
		switch strings.ToLower(p) {
		case "icmp":
			want = append(want, []nodeplane.Protocol{nodeplane.ProtoICMP, nodeplane.ProtoICMPv6})
		case "icmpv4":
			want = append(want, []nodeplane.Protocol{nodeplane.ProtoICMP})
		case "icmpv6":
			want = append(want, []nodeplane.Protocol{nodeplane.ProtoICMPv6})
		case "tcp":
			want = append(want, []nodeplane.Protocol{nodeplane.ProtoTCP})
		case "udp":
			want = append(want, []nodeplane.Protocol{nodeplane.ProtoUDP})
		case "sctp":
			want = append(want, []nodeplane.Protocol{nodeplane.ProtoSCTP})
		case "http":
			wantHTTP = true
		case "dns":
			wantDNS = true
		case "vrrp", "igmp":
			// Valid for Hubble; the datapath reports no such flows.
			want = append(want, nil)
		default:
			return nil, fmt.Errorf("unknown protocol %q", p)
		}
	}
	return func(f *Flow) bool {
		return slices.ContainsFunc(want, func(ps []nodeplane.Protocol) bool { return slices.Contains(ps, f.L4.Protocol) }) ||
			wantHTTP && f.L7.HTTP != nil || wantDNS && f.L7.DNS != nil
	}, nil
}

// hasPorts reports whether f's protocol has ports.
func hasPorts(f *Flow) bool {
	switch f.L4.Protocol {
	case nodeplane.ProtoTCP, nodeplane.ProtoUDP, nodeplane.ProtoSCTP:
		return true
	}
	return false
}

func portFilter(ports []string, get func(*Flow) uint16) (func(*Flow) bool, error) {
	if len(ports) == 0 {
		return nil, nil
	}
	var ps []uint16
	for _, s := range ports {
		p, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("port %q: %v", s, err)
		}
		ps = append(ps, uint16(p))
	}
	return func(f *Flow) bool { return hasPorts(f) && slices.Contains(ps, get(f)) }, nil
}

func replyFilter(reply []bool) func(*Flow) bool {
	if len(reply) == 0 {
		return nil
	}
	return func(f *Flow) bool {
		// Hubble: a dropped flow with an unknown reply flag counts as not a
		// reply; any other flow with an unknown flag matches nothing.
		if !f.IsReplyKnown && f.Verdict != Dropped {
			return false
		}
		return slices.Contains(reply, f.IsReplyKnown && f.IsReply)
	}
}

func tcpFlagsFilter(ff *Filter) func(*Flow) bool {
	if len(ff.TCPFlags) == 0 {
		return nil
	}
	flags := ff.TCPFlags
	return func(f *Flow) bool {
		if f.L4.Protocol != nodeplane.ProtoTCP {
			return false
		}
		return slices.ContainsFunc(flags, func(want monitor.TCPFlags) bool { return f.L4.TCPFlags&want == want })
	}
}

func nodeNameFilter(patterns []string) (func(*Flow) bool, error) {
	if len(patterns) == 0 {
		return nil, nil
	}
	for _, p := range patterns {
		if _, err := path.Match(p, ""); err != nil || p == "" {
			return nil, fmt.Errorf("node name pattern %q", p)
		}
	}
	return func(f *Flow) bool {
		if f.NodeName == "" {
			return false
		}
		// Hubble names nodes "cluster/node"; ours are in cluster "default".
		full := f.NodeName
		if !strings.Contains(full, "/") {
			full = "default/" + full
		}
		return slices.ContainsFunc(patterns, func(p string) bool {
			if strings.Contains(p, "/") {
				ok, _ := path.Match(p, full)
				return ok
			}
			ok, _ := path.Match(p, f.NodeName)
			return ok
		})
	}, nil
}
