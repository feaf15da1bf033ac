package flow

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/nodeplane/nodeplane/datapath/monitor"
)

// Decoder turns datapath records into flows. It keeps scratch space for
// one record of each type, so it is not safe for concurrent use; decoding
// does not allocate.
type Decoder struct {
	nodeName string
	catalog  *Catalog
	boot     time.Time // wall-clock time at CLOCK_MONOTONIC zero

	drop  monitor.DropNotify
	trace monitor.TraceNotify
	pv    monitor.PolicyVerdictNotify
}

// DecoderConfig configures a Decoder.
type DecoderConfig struct {
	// NodeName is every flow's node_name.
	NodeName string
	// Catalog enriches flows; nil leaves names and labels empty.
	Catalog *Catalog
	// Boot is the wall-clock time at which CLOCK_MONOTONIC was zero; the
	// zero value measures it now (see [MonotonicBoot]).
	Boot time.Time
}

// NewDecoder returns a decoder.
func NewDecoder(cfg DecoderConfig) *Decoder {
	if cfg.Boot.IsZero() {
		cfg.Boot = MonotonicBoot()
	}
	return &Decoder{nodeName: cfg.NodeName, catalog: cfg.Catalog, boot: cfg.Boot}
}

// Decode decodes one record into f, overwriting all of it. It returns an
// error wrapping monitor.ErrMalformed (and the more specific
// monitor.ErrTruncated, ErrVersion, ErrUnknownType or ErrField) for a
// record it cannot decode; f is then undefined.
func (d *Decoder) Decode(rec []byte, f *Flow) error {
	var h monitor.Header
	if err := monitor.DecodeHeader(rec, &h); err != nil {
		return err
	}
	*f = Flow{Type: L3L4, NodeName: d.nodeName, Interface: Interface{Index: h.Ifindex}}
	f.Time = d.boot.Add(time.Duration(h.KtimeNS))
	var err error
	switch h.Type {
	case monitor.MessageTypeTrace:
		err = d.decodeTrace(rec, f)
	case monitor.MessageTypeDrop:
		err = d.decodeDrop(rec, f)
	case monitor.MessageTypePolicyVerdict:
		err = d.decodePolicyVerdict(rec, f)
	}
	if err != nil {
		return err
	}
	d.catalog.enrich(f)
	return nil
}

func setTuple(f *Flow, t *monitor.Tuple, policyPort uint16) {
	f.IP.Source, f.IP.Destination = t.Src, t.Dst
	f.L4.Protocol = t.Proto
	switch t.Proto {
	case ProtoTCP, ProtoUDP, ProtoSCTP:
		f.L4.SourcePort, f.L4.DestinationPort = t.SrcPort, t.DstPort
	case ProtoICMP, ProtoICMPv6:
		f.L4.ICMPType = uint8(policyPort)
	}
}

func setReply(f *Flow, r monitor.TraceReason) {
	if r.Known() {
		f.IsReply, f.IsReplyKnown = r.IsReply(), true
	}
}

func (d *Decoder) decodeTrace(rec []byte, f *Flow) error {
	t := &d.trace
	if err := t.Decode(rec); err != nil {
		return err
	}
	f.Verdict = Forwarded
	f.EventType = EventType{Type: int32(monitor.MessageTypeTrace), SubType: int32(t.ObservationPoint)}
	setTuple(f, &t.Tuple, t.PolicyPort)
	f.L4.TCPFlags = t.TCPFlags
	f.Source.Identity, f.Destination.Identity = t.SrcIdentity, t.DstIdentity
	f.TraceObservationPoint = FromMonitorPoint(t.ObservationPoint)
	f.TraceReason = FromMonitorReason(t.Reason)
	setReply(f, t.Reason)

	// Which end is the endpoint that observed the packet: the sender for
	// the from-endpoint program's points, the receiver at to-endpoint.
	observerIsSource := t.ObservationPoint != monitor.ToEndpoint
	if observerIsSource {
		f.Source.ID = uint32(t.Endpoint)
	} else {
		f.Destination.ID = uint32(t.DstEndpoint)
		if t.Endpoint != t.DstEndpoint {
			f.Source.ID = uint32(t.Endpoint) // a local endpoint's redirect
		}
		if t.DstIfindex != 0 {
			f.Interface.Index = t.DstIfindex
		}
	}
	// Hubble's decodeTrafficDirection: egress when the observer is the
	// source of a request or the destination of a reply.
	if t.Reason.Known() {
		if observerIsSource != t.Reason.IsReply() {
			f.TrafficDirection = Egress
		} else {
			f.TrafficDirection = Ingress
		}
	}
	return nil
}

func (d *Decoder) decodeDrop(rec []byte, f *Flow) error {
	dn := &d.drop
	if err := dn.Decode(rec); err != nil {
		return err
	}
	f.Verdict = Dropped
	f.DropReason = dn.Reason
	f.EventType = EventType{Type: int32(monitor.MessageTypeDrop), SubType: int32(dn.Reason)}
	if dn.Flags&monitor.DropFlagTuple != 0 {
		setTuple(f, &dn.Tuple, dn.PolicyPort)
		f.L4.TCPFlags = dn.TCPFlags
	} else {
		addrsFromFrame(f, dn.Data[:dn.CapLen])
	}
	f.Source.Identity, f.Destination.Identity = dn.SrcIdentity, dn.DstIdentity
	f.TraceObservationPoint = FromMonitorPoint(dn.ObservationPoint)
	f.TrafficDirection = TrafficDirection(dn.Direction)
	if dn.Flags&monitor.DropFlagCT != 0 {
		setReply(f, dn.CTState)
	}
	// The writer's end, and the end whose policy decided.
	if dn.ObservationPoint == monitor.ToEndpoint {
		f.Destination.ID = uint32(dn.Endpoint)
	} else {
		f.Source.ID = uint32(dn.Endpoint)
	}
	if dn.Flags&monitor.DropFlagPolicy != 0 {
		if dn.Direction == monitor.DirectionIngress {
			f.Destination.ID = uint32(dn.PolicyEndpoint)
		} else {
			f.Source.ID = uint32(dn.PolicyEndpoint)
		}
	}
	return nil
}

func (d *Decoder) decodePolicyVerdict(rec []byte, f *Flow) error {
	v := &d.pv
	if err := v.Decode(rec); err != nil {
		return err
	}
	f.Verdict = Forwarded
	if v.Verdict != 0 {
		f.Verdict, f.DropReason = Dropped, v.Verdict
	}
	f.EventType = EventType{Type: int32(monitor.MessageTypePolicyVerdict)}
	setTuple(f, &v.Tuple, v.PolicyPort)
	f.L4.TCPFlags = v.TCPFlags
	f.Source.Identity, f.Destination.Identity = v.SrcIdentity, v.DstIdentity
	f.TraceObservationPoint = FromMonitorPoint(v.ObservationPoint)
	f.PolicyMatchType = v.Match
	f.ProxyPort = v.ProxyPort
	f.IsReply, f.IsReplyKnown = false, true // verdicts are about new connections
	if v.ObservationPoint == monitor.ToEndpoint {
		f.Destination.ID = uint32(v.Endpoint)
	} else {
		f.Source.ID = uint32(v.Endpoint)
	}
	if v.Egress {
		f.TrafficDirection = Egress
		f.Source.ID = uint32(v.PolicyEndpoint)
	} else {
		f.TrafficDirection = Ingress
		f.Destination.ID = uint32(v.PolicyEndpoint)
	}
	return nil
}

// addrsFromFrame fills the addresses of a drop record without a tuple
// (dropped before parsing) from its captured bytes, when they hold them.
func addrsFromFrame(f *Flow, b []byte) {
	const eth = 14
	if len(b) < eth {
		return
	}
	switch binary.BigEndian.Uint16(b[12:]) {
	case 0x0800:
		if len(b) >= eth+20 && b[eth]>>4 == 4 {
			f.IP.Source = netip.AddrFrom4([4]byte(b[eth+12 : eth+16]))
			f.IP.Destination = netip.AddrFrom4([4]byte(b[eth+16 : eth+20]))
		}
	case 0x86dd:
		if len(b) >= eth+40 && b[eth]>>4 == 6 {
			f.IP.Source = netip.AddrFrom16([16]byte(b[eth+8 : eth+24]))
			f.IP.Destination = netip.AddrFrom16([16]byte(b[eth+24 : eth+40]))
		}
	}
}
