// Package metrics counts flows in Prometheus metrics with Hubble's and
// Cilium's names, as a [flow.Sink] for a flow.Observer:
//
//	hubble_flows_processed_total{type,subtype,verdict}   every flow
//	hubble_drop_total{reason,protocol}                   drops by Hubble reason name
//	hubble_policy_verdicts_total{direction,match,action} policy verdicts (not the host's)
//	hubble_lost_events_total{source}                     lost events
//	cilium_drop_count_total{reason,direction}            drops by Cilium reason text
//
// Label values are spelled as Hubble and Cilium spell them (type "Trace",
// subtype "to-endpoint", verdict "FORWARDED"; reason "POLICY_DENIED",
// protocol "TCP"; direction "ingress", match "l3-only", action
// "forwarded"; source "perf_event_ring_buffer"; reason "Policy denied",
// direction "INGRESS"). Cilium counts cilium_drop_count_total in the
// datapath; here it counts drop records, which is the same while no
// record is lost.
//
// This package is where github.com/prometheus/client_golang enters:
// importing flow alone does not pull it in. `go list -deps
// ./flow/metrics | wc -l` is 240 packages, against 81 for ./flow.
package metrics

import (
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/flow"
)

// Metrics holds the counters. It implements flow.Sink; ObserveFlow does
// not allocate once a label combination has been seen.
type Metrics struct {
	flows, hubbleDrops, verdicts, lost, ciliumDrops *prometheus.CounterVec

	mu    sync.Mutex
	cache map[cacheKey][]prometheus.Counter
}

var _ flow.Sink = (*Metrics)(nil)

// cacheKey identifies the counters one flow increments.
type cacheKey struct {
	msgType, subType int32
	verdict          flow.Verdict
	reason           monitor.DropReason
	proto            nodeplane.Protocol
	dir              flow.TrafficDirection
	match            monitor.PolicyMatch
	hostSource       bool
	l7               string // "HTTP", "DNS" for access-log flows
}

// reservedHost is Cilium's reserved:host identity.
const reservedHost = 1

// New returns the metrics, registered with reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		flows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "hubble", Name: "flows_processed_total",
			Help: "Total number of flows processed",
		}, []string{"type", "subtype", "verdict"}),
		hubbleDrops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "hubble", Name: "drop_total",
			Help: "Number of drops",
		}, []string{"reason", "protocol"}),
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "hubble", Name: "policy_verdicts_total",
			Help: "Total number of Cilium network policy verdicts",
		}, []string{"direction", "match", "action"}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "hubble", Name: "lost_events_total",
			Help: "Number of lost events",
		}, []string{"source"}),
		ciliumDrops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "cilium", Name: "drop_count_total",
			Help: "Total dropped packets, tagged by drop reason and ingress/egress direction",
		}, []string{"reason", "direction"}),
		cache: make(map[cacheKey][]prometheus.Counter),
	}
	for _, c := range []prometheus.Collector{m.flows, m.hubbleDrops, m.verdicts, m.lost, m.ciliumDrops} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// ObserveFlow counts one flow.
func (m *Metrics) ObserveFlow(f *flow.Flow) {
	k := cacheKey{msgType: f.EventType.Type, subType: f.EventType.SubType, verdict: f.Verdict}
	switch monitor.MessageType(f.EventType.Type) {
	case monitor.MessageTypeDrop:
		k.reason, k.proto, k.dir = f.DropReason, f.L4.Protocol, f.TrafficDirection
	case monitor.MessageTypePolicyVerdict:
		k.dir, k.match = f.TrafficDirection, f.PolicyMatchType
		// As Hubble's policy handler: the host may reach any local
		// endpoint, its verdicts are not counted.
		k.hostSource = f.Source.Identity == reservedHost
	case monitor.MessageTypeAccessLog:
		switch {
		case f.L7.HTTP != nil:
			k.l7 = "HTTP"
		case f.L7.DNS != nil:
			k.l7 = "DNS"
		}
	}
	m.mu.Lock()
	cs, ok := m.cache[k]
	if !ok {
		cs = m.counters(k)
		m.cache[k] = cs
	}
	m.mu.Unlock()
	for _, c := range cs {
		c.Inc()
	}
}

func (m *Metrics) counters(k cacheKey) []prometheus.Counter {
	var typ, sub string
	switch monitor.MessageType(k.msgType) {
	case monitor.MessageTypeDrop:
		typ = "Drop"
	case monitor.MessageTypeTrace:
		typ, sub = "Trace", monitor.ObservationPoint(k.subType).String()
	case monitor.MessageTypePolicyVerdict:
		typ = "PolicyVerdict"
	case monitor.MessageTypeAccessLog:
		// Hubble's flows_processed_total: type L7, subtype the record's
		// protocol.
		typ, sub = "L7", k.l7
	default:
		typ = "Unknown"
	}
	cs := []prometheus.Counter{m.flows.WithLabelValues(typ, sub, k.verdict.String())}
	switch monitor.MessageType(k.msgType) {
	case monitor.MessageTypeDrop:
		cs = append(cs,
			m.hubbleDrops.WithLabelValues(k.reason.String(), protocolName(k.proto)),
			m.ciliumDrops.WithLabelValues(CiliumDropReason(k.reason), k.dir.String()))
	case monitor.MessageTypePolicyVerdict:
		if k.hostSource {
			break
		}
		cs = append(cs, m.verdicts.WithLabelValues(strings.ToLower(k.dir.String()),
			strings.ToLower(ciliumMatchName(k.match)), strings.ToLower(k.verdict.String())))
	}
	return cs
}

// ObserveLost counts lost events.
func (m *Metrics) ObserveLost(src flow.LostSource, n uint64) {
	m.lost.WithLabelValues(strings.ToLower(src.String())).Add(float64(n))
}

// protocolName is Hubble's v1.FlowProtocol.
func protocolName(p nodeplane.Protocol) string {
	switch p {
	case nodeplane.ProtoTCP:
		return "TCP"
	case nodeplane.ProtoUDP:
		return "UDP"
	case nodeplane.ProtoICMP:
		return "ICMPv4"
	case nodeplane.ProtoICMPv6:
		return "ICMPv6"
	case nodeplane.ProtoSCTP:
		return "SCTP"
	}
	return "Unknown flow"
}

// ciliumMatchName is Cilium's PolicyMatchType.String.
func ciliumMatchName(m monitor.PolicyMatch) string {
	switch m {
	case monitor.MatchNone:
		return "none"
	case monitor.MatchL3Only:
		return "L3-Only"
	case monitor.MatchL3L4:
		return "L3-L4"
	case monitor.MatchL4Only:
		return "L4-Only"
	case monitor.MatchAll:
		return "all"
	case monitor.MatchL3Proto:
		return "L3-Proto"
	case monitor.MatchProtoOnly:
		return "Proto-Only"
	}
	return "unknown"
}

// CiliumDropReason is the text Cilium's metrics and `cilium monitor` give a
// drop reason (pkg/monitor/api/drop.go).
func CiliumDropReason(r monitor.DropReason) string {
	switch r {
	case monitor.DropInvalidSourceIP:
		return "Invalid source ip"
	case monitor.DropPolicyDenied:
		return "Policy denied"
	case monitor.DropInvalidPacket:
		return "Invalid packet"
	case monitor.DropCTInvalidHeader:
		return "CT: Truncated or invalid header"
	case monitor.DropCTUnknownProto:
		return "CT: Unknown L4 protocol"
	case monitor.DropUnknownL3:
		return "Unsupported L3 protocol"
	case monitor.DropWriteError:
		return "Failed to write or modify packet"
	case monitor.DropNoTunnelKey:
		return "Error retrieving tunnel key"
	case monitor.DropInvalidIdentity:
		return "Invalid identity"
	case monitor.DropUnknownSender:
		return "Unknown sender"
	case monitor.DropUnknownTarget:
		return "Unknown L3 target address"
	case monitor.DropCTCreateFailed:
		return "CT: Map insertion failed"
	case monitor.DropInvalidExtHeader:
		return "Invalid IPv6 extension header"
	case monitor.DropEDTHorizon:
		return "Reached EDT rate-limiting drop horizon"
	case monitor.DropFragmentNotFound:
		return "First logical datagram fragment not found"
	case monitor.DropPolicyDeny:
		return "Policy denied by denylist"
	case monitor.DropEndpointNotReady:
		return "Endpoint policy program not available"
	}
	return r.String()
}
