package datapath

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/datapath/monitor"
)

func encodeRecord(t testing.TB, v any) []byte {
	t.Helper()
	b, err := binary.Append(nil, binary.NativeEndian, v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sampleDrop(t testing.TB) dropEvent {
	tup, err := Tuple{Src: addrA6, Dst: remote6, SrcPort: 40000, DstPort: 443, Proto: protoTCP}.raw()
	if err != nil {
		t.Fatal(err)
	}
	r := dropEvent{
		Hdr:         eventHeader{Type: uint8(EventDrop), Version: EventVersion, EndpointID: 7, Ifindex: 42, KtimeNS: 123456789},
		Tuple:       tup,
		SrcIdentity: 1000, DstIdentity: 3000,
		Reason: uint8(DropPolicyDeny), ObsPoint: uint8(monitor.FromEndpoint), Flags: dropTupleValid, Direction: uint8(monitor.DirectionEgress),
		OrigLen: 74, CapLen: 3,
	}
	copy(r.Data[:], []byte{1, 2, 3})
	return r
}

func sampleVerdict(t testing.TB) policyVerdictEvent {
	tup, err := Tuple{Src: addrA, Dst: addrB, Proto: protoICMP, SrcPort: 9}.raw()
	if err != nil {
		t.Fatal(err)
	}
	return policyVerdictEvent{
		Hdr:   eventHeader{Type: uint8(EventPolicyVerdict), Version: EventVersion, EndpointID: 1, Ifindex: 3, KtimeNS: 5},
		Tuple: tup, SrcIdentity: 1000, DstIdentity: 2000, PolicyEndpointID: 2, ProxyPort: 15001,
		ObsPoint: uint8(monitor.FromEndpoint), Egress: 0, Verdict: 0, MatchType: uint8(MatchL3L4), L4PrefixLen: 24,
		PolicyPort: toBE16(8),
	}
}

func sampleTrace(t testing.TB) traceEvent {
	tup, err := Tuple{Src: addrB, Dst: addrA, SrcPort: 443, DstPort: 40000, Proto: protoTCP}.raw()
	if err != nil {
		t.Fatal(err)
	}
	return traceEvent{
		Hdr:   eventHeader{Type: uint8(EventTrace), Version: EventVersion, EndpointID: 1, Ifindex: 3, KtimeNS: 5},
		Tuple: tup, SrcIdentity: 2000, DstIdentity: 1000, DstEndpointID: 2, ObsPoint: uint8(monitor.ToEndpoint),
		Reason: uint8(monitor.TraceReasonCTReply), OrigLen: 60, TCPFlags: uint8(monitor.TCPFlagACK | monitor.TCPFlagFIN),
		PolicyPort: toBE16(40000), DstIfindex: 77,
	}
}

// TestParseEvent encodes the BTF-checked raw layouts and reads them back
// through monitor's decoders (ParseEvent uses them): the two descriptions
// of the layout agree field for field.
func TestParseEvent(t *testing.T) {
	drop := encodeRecord(t, sampleDrop(t))
	if len(drop) != 208 {
		t.Fatalf("drop record is %d bytes", len(drop))
	}
	ev, err := ParseEvent(drop)
	if err != nil {
		t.Fatal(err)
	}
	d, ok := ev.(*DropEvent)
	if !ok {
		t.Fatalf("parsed %T", ev)
	}
	want := DropEvent{
		EventHeader: EventHeader{Type: EventDrop, Endpoint: 7, Ifindex: 42, Time: 123456789 * time.Nanosecond},
		Tuple:       Tuple{Src: addrA6, Dst: remote6, SrcPort: 40000, DstPort: 443, Proto: protoTCP}, HasTuple: true,
		SrcIdentity: 1000, DstIdentity: 3000, Reason: DropPolicyDeny, Hook: FromEndpoint, OrigLen: 74,
	}
	if d.Direction != Egress || d.PolicyDecided || d.HasCTState {
		t.Fatalf("drop direction %v, policy %v, ct %v", d.Direction, d.PolicyDecided, d.HasCTState)
	}
	if d.EventHeader != want.EventHeader || d.Tuple != want.Tuple || !d.HasTuple || d.SrcIdentity != want.SrcIdentity ||
		d.DstIdentity != want.DstIdentity || d.Reason != want.Reason || d.OrigLen != 74 || string(d.Data) != "\x01\x02\x03" {
		t.Fatalf("got %+v, want %+v", d, want)
	}
	drop[80] = 0xAA
	if d.Data[0] != 1 {
		t.Fatal("event aliases the record")
	}

	ev, err = ParseEvent(encodeRecord(t, sampleVerdict(t)))
	if err != nil {
		t.Fatal(err)
	}
	v := ev.(*PolicyVerdictEvent)
	if !v.Allowed() || v.Direction != Ingress || v.PolicyEndpoint != 2 || v.Match != MatchL3L4 || v.PolicyPort != 8 ||
		v.ProxyPort != 15001 || v.Tuple.Src != addrA || v.Tuple.SrcPort != 9 || v.Header().Endpoint != 1 {
		t.Fatalf("got %+v", v)
	}

	ev, err = ParseEvent(encodeRecord(t, sampleTrace(t)))
	if err != nil {
		t.Fatal(err)
	}
	tr := ev.(*TraceEvent)
	if tr.Point != monitor.ToEndpoint || tr.Reason != monitor.TraceReasonCTReply || tr.DstEndpoint != 2 ||
		tr.DstIfindex != 77 || tr.TCPFlags != monitor.TCPFlagACK|monitor.TCPFlagFIN || tr.OrigLen != 60 ||
		tr.Tuple.DstPort != 40000 || tr.SrcIdentity != 2000 || tr.Type != EventTrace {
		t.Fatalf("got %+v", tr)
	}

	for _, tc := range []struct {
		name string
		rec  []byte
	}{
		{"empty", nil},
		{"short header", drop[:15]},
		{"truncated drop", drop[:207]},
		{"truncated verdict", encodeRecord(t, sampleVerdict(t))[:79]},
		{"unknown type", func() []byte { r := sampleDrop(t); r.Hdr.Type = 9; return encodeRecord(t, r) }()},
		{"unknown version", func() []byte { r := sampleDrop(t); r.Hdr.Version = 1; return encodeRecord(t, r) }()},
		{"capture too long", func() []byte { r := sampleDrop(t); r.CapLen = 129; return encodeRecord(t, r) }()},
		{"bad IP version", func() []byte { r := sampleDrop(t); r.Tuple.IPVersion = 5; return encodeRecord(t, r) }()},
		{"bad direction", func() []byte { r := sampleVerdict(t); r.Egress = 2; return encodeRecord(t, r) }()},
		{"bad drop direction", func() []byte { r := sampleDrop(t); r.Direction = 3; return encodeRecord(t, r) }()},
		{"truncated trace", encodeRecord(t, sampleTrace(t))[:79]},
		{"bad observation point", func() []byte { r := sampleTrace(t); r.ObsPoint = 14; return encodeRecord(t, r) }()},
	} {
		if _, err := ParseEvent(tc.rec); !errors.Is(err, ErrMalformedEvent) {
			t.Errorf("%s: %v, want ErrMalformedEvent", tc.name, err)
		}
	}
}

func TestTupleReverse(t *testing.T) {
	tup := Tuple{Src: addrA, Dst: addrB, SrcPort: 1, DstPort: 2, Proto: protoTCP}
	if r := tup.Reverse(); r.Src != addrB || r.DstPort != 1 || r.Reverse() != tup {
		t.Fatalf("%v reversed is %v", tup, r)
	}
	if _, err := (Tuple{Src: addrA, Dst: addrB6}).raw(); err == nil {
		t.Fatal("mixed families accepted")
	}
	if got := netip.AddrPortFrom(tup.Src, tup.SrcPort).String(); got != "10.0.0.1:1" {
		t.Fatal(got)
	}
}
