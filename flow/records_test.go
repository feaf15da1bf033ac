package flow_test

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/flow"
)

// The records under testdata/records were written by the real BPF
// programs: TestPrivilegedCaptureRecords runs each case's packets through
// them (BPF_PROG_TEST_RUN) and, with -update, stores what they wrote. Each
// file is a sequence of records, each preceded by its length (u16 little
// endian). TestDecodeRecords decodes the committed files on any machine;
// both compare with the same table of expected flows, written by hand
// from Hubble's semantics.

var update = flag.Bool("update", false, "rewrite testdata/records from the BPF programs")

// Addresses, identities and endpoint IDs of the capture world.
var (
	addrA    = netip.MustParseAddr("10.0.0.1")
	addrB    = netip.MustParseAddr("10.0.0.2")
	addrA6   = netip.MustParseAddr("fd00::1")
	addrB6   = netip.MustParseAddr("fd00::2")
	remote   = netip.MustParseAddr("192.0.2.10")
	spoofed  = netip.MustParseAddr("10.0.0.99")
	idA      = uint32(1000)
	idB      = uint32(2000)
	idRemote = uint32(3000)
)

// wantFlow is what a table test checks of a flow.
type wantFlow struct {
	verdict        flow.Verdict
	typ, sub       int32
	point          flow.ObservationPoint
	dir            flow.TrafficDirection
	reply          int // -1 unknown, 0 false, 1 true
	srcEP, dstEP   uint32
	srcID, dstID   uint32
	src, dst       netip.Addr
	proto          uint8
	dport          uint16
	flags          monitor.TCPFlags
	icmpType       uint8
	drop           monitor.DropReason
	match          monitor.PolicyMatch
	traceReason    flow.TraceReason
	checkTraceInfo bool
}

const (
	trace = int32(monitor.MessageTypeTrace)
	drop  = int32(monitor.MessageTypeDrop)
	pv    = int32(monitor.MessageTypePolicyVerdict)
)

// recordCase is one capture: what to send, and the flows the records say.
type recordCase struct {
	name string
	send []packet
	want []wantFlow
}

// packet is sent by endpoint ep (1 A, 2 B) at hook from (true) or to.
type packet struct {
	ep                 int
	from               bool
	src, dst           netip.Addr
	proto              uint8
	sport, dport       uint16
	tcpFlags           uint8
	icmpType           uint8
	truncateIPv4Header bool
}

const (
	tcp     = flow.ProtoTCP
	icmp    = flow.ProtoICMP
	syn     = monitor.TCPFlagSYN
	ack     = monitor.TCPFlagACK
	unknown = -1
)

var recordCases = []recordCase{
	{
		name: "local-allowed",
		send: []packet{{ep: 1, from: true, src: addrA, dst: addrB, proto: tcp, sport: 40000, dport: 8080, tcpFlags: uint8(syn)}},
		want: []wantFlow{
			{verdict: flow.Forwarded, typ: pv, point: flow.FromEndpoint, dir: flow.Egress, reply: 0, srcEP: 1, srcID: idA, dstID: idB,
				src: addrA, dst: addrB, proto: tcp, dport: 8080, flags: syn, match: monitor.MatchL3Only},
			{verdict: flow.Forwarded, typ: pv, point: flow.FromEndpoint, dir: flow.Ingress, reply: 0, srcEP: 1, dstEP: 2, srcID: idA, dstID: idB,
				src: addrA, dst: addrB, proto: tcp, dport: 8080, flags: syn, match: monitor.MatchL3L4},
			{verdict: flow.Forwarded, typ: trace, sub: 5, point: flow.FromEndpoint, dir: flow.Egress, reply: 0, srcEP: 1, srcID: idA, dstID: idB,
				src: addrA, dst: addrB, proto: tcp, dport: 8080, flags: syn, traceReason: flow.TraceReasonNew},
			{verdict: flow.Forwarded, typ: trace, sub: 0, point: flow.ToEndpoint, dir: flow.Ingress, reply: 0, srcEP: 1, dstEP: 2, srcID: idA, dstID: idB,
				src: addrA, dst: addrB, proto: tcp, dport: 8080, flags: syn, traceReason: flow.TraceReasonNew},
		},
	},
	{
		name: "local-reply",
		send: []packet{
			{ep: 1, from: true, src: addrA, dst: addrB, proto: tcp, sport: 40001, dport: 8080, tcpFlags: uint8(syn)},
			{ep: 2, from: true, src: addrB, dst: addrA, proto: tcp, sport: 8080, dport: 40001, tcpFlags: uint8(syn | ack)},
		},
		want: []wantFlow{
			{typ: pv}, {typ: pv}, {typ: trace, sub: 5}, {typ: trace, sub: 0},
			// B's reply: B is the source, its program observes; a reply
			// observed by its source is INGRESS, delivered to A EGRESS.
			{verdict: flow.Forwarded, typ: trace, sub: 5, point: flow.FromEndpoint, dir: flow.Ingress, reply: 1, srcEP: 2, srcID: idB, dstID: idA,
				src: addrB, dst: addrA, proto: tcp, dport: 40001, flags: syn | ack, traceReason: flow.TraceReply},
			{verdict: flow.Forwarded, typ: trace, sub: 0, point: flow.ToEndpoint, dir: flow.Egress, reply: 1, srcEP: 2, dstEP: 1, srcID: idB, dstID: idA,
				src: addrB, dst: addrA, proto: tcp, dport: 40001, flags: syn | ack, traceReason: flow.TraceReply},
		},
	},
	{
		name: "local-denied",
		send: []packet{{ep: 1, from: true, src: addrA, dst: addrB, proto: tcp, sport: 40002, dport: 9999, tcpFlags: uint8(syn)}},
		want: []wantFlow{
			{verdict: flow.Forwarded, typ: pv, point: flow.FromEndpoint, dir: flow.Egress, reply: 0, srcEP: 1, srcID: idA, dstID: idB,
				src: addrA, dst: addrB, proto: tcp, dport: 9999, flags: syn, match: monitor.MatchL3Only},
			{verdict: flow.Dropped, typ: pv, point: flow.FromEndpoint, dir: flow.Ingress, reply: 0, srcEP: 1, dstEP: 2, srcID: idA, dstID: idB,
				src: addrA, dst: addrB, proto: tcp, dport: 9999, flags: syn, drop: monitor.DropPolicyDenied, match: monitor.MatchNone},
			// The drop names the receiver's ingress policy, not the sender.
			{verdict: flow.Dropped, typ: drop, sub: 133, point: flow.FromEndpoint, dir: flow.Ingress, reply: 0, srcEP: 1, dstEP: 2, srcID: idA, dstID: idB,
				src: addrA, dst: addrB, proto: tcp, dport: 9999, flags: syn, drop: monitor.DropPolicyDenied},
		},
	},
	{
		name: "remote-to-stack",
		send: []packet{{ep: 1, from: true, src: addrA, dst: remote, proto: tcp, sport: 40003, dport: 80, tcpFlags: uint8(syn)}},
		want: []wantFlow{
			{verdict: flow.Forwarded, typ: pv, point: flow.FromEndpoint, dir: flow.Egress, reply: 0, srcEP: 1, srcID: idA, dstID: idRemote,
				src: addrA, dst: remote, proto: tcp, dport: 80, flags: syn, match: monitor.MatchL3L4},
			{typ: trace, sub: 5},
			{verdict: flow.Forwarded, typ: trace, sub: 3, point: flow.ToStack, dir: flow.Egress, reply: 0, srcEP: 1, srcID: idA, dstID: idRemote,
				src: addrA, dst: remote, proto: tcp, dport: 80, flags: syn, traceReason: flow.TraceReasonNew},
		},
	},
	{
		name: "remote-reply-to-endpoint",
		send: []packet{
			{ep: 1, from: true, src: addrA, dst: remote, proto: tcp, sport: 40004, dport: 80, tcpFlags: uint8(syn)},
			{ep: 1, from: false, src: remote, dst: addrA, proto: tcp, sport: 80, dport: 40004, tcpFlags: uint8(syn | ack)},
		},
		want: []wantFlow{
			{typ: pv}, {typ: trace, sub: 5}, {typ: trace, sub: 3},
			{verdict: flow.Forwarded, typ: trace, sub: 0, point: flow.ToEndpoint, dir: flow.Egress, reply: 1, dstEP: 1, srcID: idRemote, dstID: idA,
				src: remote, dst: addrA, proto: tcp, dport: 40004, flags: syn | ack, traceReason: flow.TraceReply},
		},
	},
	{
		name: "remote-denied-ingress",
		send: []packet{{ep: 1, from: false, src: remote, dst: addrA, proto: tcp, sport: 50000, dport: 22, tcpFlags: uint8(syn)}},
		want: []wantFlow{
			{verdict: flow.Dropped, typ: pv, point: flow.ToEndpoint, dir: flow.Ingress, reply: 0, dstEP: 1, srcID: idRemote, dstID: idA,
				src: remote, dst: addrA, proto: tcp, dport: 22, flags: syn, drop: monitor.DropPolicyDenied, match: monitor.MatchNone},
			{verdict: flow.Dropped, typ: drop, sub: 133, point: flow.ToEndpoint, dir: flow.Ingress, reply: 0, dstEP: 1, srcID: idRemote, dstID: idA,
				src: remote, dst: addrA, proto: tcp, dport: 22, flags: syn, drop: monitor.DropPolicyDenied},
		},
	},
	{
		name: "spoofed-source",
		send: []packet{{ep: 1, from: true, src: spoofed, dst: remote, proto: tcp, sport: 1, dport: 80, tcpFlags: uint8(syn)}},
		want: []wantFlow{
			{verdict: flow.Dropped, typ: drop, sub: 132, point: flow.FromEndpoint, dir: flow.Egress, reply: unknown, srcEP: 1,
				src: spoofed, dst: remote, proto: tcp, dport: 80, flags: syn, drop: monitor.DropInvalidSourceIP},
		},
	},
	{
		name: "icmp-denied",
		send: []packet{{ep: 1, from: true, src: addrA, dst: addrB, proto: icmp, icmpType: 8}},
		want: []wantFlow{
			{verdict: flow.Forwarded, typ: pv, point: flow.FromEndpoint, dir: flow.Egress, reply: 0, srcEP: 1, srcID: idA, dstID: idB,
				src: addrA, dst: addrB, proto: icmp, icmpType: 8, match: monitor.MatchL3Only},
			{verdict: flow.Dropped, typ: pv, point: flow.FromEndpoint, dir: flow.Ingress, reply: 0, srcEP: 1, dstEP: 2, srcID: idA, dstID: idB,
				src: addrA, dst: addrB, proto: icmp, icmpType: 8, drop: monitor.DropPolicyDenied, match: monitor.MatchNone},
			{verdict: flow.Dropped, typ: drop, sub: 133, dir: flow.Ingress, reply: 0, srcEP: 1, dstEP: 2, srcID: idA, dstID: idB,
				src: addrA, dst: addrB, proto: icmp, icmpType: 8, drop: monitor.DropPolicyDenied},
		},
	},
	{
		name: "ipv6-local-allowed",
		send: []packet{{ep: 1, from: true, src: addrA6, dst: addrB6, proto: tcp, sport: 40005, dport: 8080, tcpFlags: uint8(syn)}},
		want: []wantFlow{
			{typ: pv}, {typ: pv},
			{verdict: flow.Forwarded, typ: trace, sub: 5, point: flow.FromEndpoint, dir: flow.Egress, reply: 0, srcEP: 1, srcID: idA, dstID: idB,
				src: addrA6, dst: addrB6, proto: tcp, dport: 8080, flags: syn},
			{verdict: flow.Forwarded, typ: trace, sub: 0, point: flow.ToEndpoint, dir: flow.Ingress, reply: 0, srcEP: 1, dstEP: 2, srcID: idA, dstID: idB,
				src: addrA6, dst: addrB6, proto: tcp, dport: 8080, flags: syn},
		},
	},
	{
		name: "truncated-ipv4-header",
		send: []packet{{ep: 1, from: true, src: addrA, dst: remote, proto: tcp, sport: 1, dport: 80, truncateIPv4Header: true}},
		want: []wantFlow{
			// Dropped before parsing: no tuple, addresses from the
			// captured bytes, direction from the program.
			{verdict: flow.Dropped, typ: drop, sub: 134, point: flow.FromEndpoint, dir: flow.Egress, reply: unknown, srcEP: 1,
				src: addrA, dst: remote, drop: monitor.DropInvalidPacket},
		},
	},
}

// checkFlow compares f with w; zero fields of w (and reply 0 where the
// whole entry is a placeholder with only typ set) are checked only when set.
func checkFlow(t *testing.T, i int, f *flow.Flow, w wantFlow) {
	t.Helper()
	errs := []error{}
	chk := func(name string, got, want any, set bool) {
		if set && got != want {
			errs = append(errs, fmt.Errorf("%s %v, want %v", name, got, want))
		}
	}
	placeholder := w.verdict == 0
	chk("event type", f.EventType.Type, w.typ, true)
	if placeholder {
		chk("subtype", f.EventType.SubType, w.sub, w.typ != pv)
	} else {
		chk("subtype", f.EventType.SubType, w.sub, true)
		chk("verdict", f.Verdict, w.verdict, true)
		chk("drop reason", f.DropReason, w.drop, true)
		chk("direction", f.TrafficDirection, w.dir, true)
		chk("observation point", f.TraceObservationPoint, w.point, w.point != 0)
		chk("source endpoint", f.Source.ID, w.srcEP, true)
		chk("destination endpoint", f.Destination.ID, w.dstEP, true)
		chk("source identity", f.Source.Identity, w.srcID, w.srcID != 0)
		chk("destination identity", f.Destination.Identity, w.dstID, w.dstID != 0)
		chk("source", f.IP.Source, w.src, w.src.IsValid())
		chk("destination", f.IP.Destination, w.dst, w.dst.IsValid())
		chk("protocol", f.L4.Protocol, w.proto, true)
		chk("destination port", f.L4.DestinationPort, w.dport, w.proto == tcp)
		chk("TCP flags", f.L4.TCPFlags, w.flags, w.proto == tcp && w.flags != 0)
		chk("ICMP type", f.L4.ICMPType, w.icmpType, w.proto == icmp)
		chk("match", f.PolicyMatchType, w.match, w.typ == pv)
		chk("trace reason", f.TraceReason, w.traceReason, w.traceReason != 0)
		switch w.reply {
		case unknown:
			chk("reply known", f.IsReplyKnown, false, true)
		default:
			chk("reply", [2]bool{f.IsReplyKnown, f.IsReply}, [2]bool{true, w.reply == 1}, w.typ != pv || w.src.IsValid())
		}
		chk("type", f.Type, flow.L3L4, true)
	}
	if len(errs) > 0 {
		t.Errorf("flow %d: %v\n%s", i, errors.Join(errs...), f.AppendJSON(nil))
	}
}

// readRecords reads a testdata/records file.
func readRecords(b []byte) ([][]byte, error) {
	var recs [][]byte
	for len(b) > 0 {
		if len(b) < 2 {
			return nil, errors.New("trailing byte")
		}
		n := int(binary.LittleEndian.Uint16(b))
		if len(b) < 2+n {
			return nil, errors.New("short record")
		}
		recs = append(recs, b[2:2+n])
		b = b[2+n:]
	}
	return recs, nil
}

func checkRecords(t *testing.T, c recordCase, recs [][]byte) {
	t.Helper()
	dec := flow.NewDecoder(flow.DecoderConfig{NodeName: "node-1", Boot: time.Unix(1_700_000_000, 0)})
	if len(recs) != len(c.want) {
		t.Errorf("%d records, want %d", len(recs), len(c.want))
	}
	var f flow.Flow
	for i, rec := range recs {
		if err := dec.Decode(rec, &f); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if f.NodeName != "node-1" || f.Time.Before(time.Unix(1_700_000_000, 0)) {
			t.Errorf("record %d: node %q, time %v", i, f.NodeName, f.Time)
		}
		if i < len(c.want) {
			checkFlow(t, i, &f, c.want[i])
		}
	}
}

// TestDecodeRecords decodes the records the BPF programs wrote.
func TestDecodeRecords(t *testing.T) {
	for _, c := range recordCases {
		t.Run(c.name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("testdata", "records", c.name+".rec"))
			if err != nil {
				t.Fatal(err)
			}
			recs, err := readRecords(b)
			if err != nil {
				t.Fatal(err)
			}
			checkRecords(t, c, recs)
		})
	}
}
