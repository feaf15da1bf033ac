package monitor

import (
	"errors"
	"testing"
)

// TestNames checks the vocabulary against Cilium's and Hubble's spellings
// (pkg/monitor/api/types.go, pkg/option/monitor.go, flow.proto).
func TestNames(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{ToEndpoint.String(), "to-endpoint"},
		{ToStack.String(), "to-stack"},
		{FromEndpoint.String(), "from-endpoint"},
		{ToCrypto.String(), "to-crypto"},
		{ObservationPoint(14).String(), "ObservationPoint(14)"},
		{MessageTypeTrace.String(), "trace"},
		{MessageTypePolicyVerdict.String(), "policy-verdict"},
		{DirectionIngress.String(), "INGRESS"},
		{(TCPFlagSYN | TCPFlagACK | TCPFlagFIN).String(), "SYN, ACK, FIN"},
		{DropPolicyDenied.String(), "POLICY_DENIED"},
		{MatchL3L4.String(), "L3-L4"},
	} {
		if tc.got != tc.want {
			t.Errorf("%q, want %q", tc.got, tc.want)
		}
	}
	if !FromEndpoint.IsFrom() || ToStack.IsFrom() || !FromNetwork.IsFrom() {
		t.Error("IsFrom")
	}
	for r, want := range map[TraceReason][2]bool{
		TraceReasonPolicy: {true, false}, TraceReasonCTEstablished: {true, false}, TraceReasonCTReply: {true, true},
		TraceReasonCTRelated: {true, false}, TraceReasonUnknown: {false, false}, 0x80 | TraceReasonCTReply: {true, true},
	} {
		if r.Known() != want[0] || r.IsReply() != want[1] {
			t.Errorf("%v: known %v reply %v, want %v", r, r.Known(), r.IsReply(), want)
		}
	}
}

func TestAggregationLevels(t *testing.T) {
	for s, want := range map[string]uint8{"none": 0, "disabled": 0, "0": 0, "lowest": 1, "low": 2, "medium": 3, "max": 4, "maximum": 4, "4": 4} {
		l, err := ParseAggregationLevel(s)
		if err != nil {
			t.Fatal(err)
		}
		if n, ok := l.CiliumLevel(); !ok || n != want {
			t.Errorf("%s: Cilium level %d %v, want %d", s, n, ok, want)
		}
	}
	if l, err := ParseAggregationLevel("off"); err != nil || l != AggregationOff {
		t.Errorf("off: %v %v", l, err)
	}
	if _, ok := AggregationOff.CiliumLevel(); ok {
		t.Error("off has a Cilium level")
	}
	if _, err := ParseAggregationLevel("5"); err == nil {
		t.Error("level 5 parsed")
	}
}

// TestDecodeErrors checks that every decoder rejects short and garbage
// records with the specific error, never a panic.
func TestDecodeErrors(t *testing.T) {
	rec := func(typ MessageType, n int) []byte {
		b := make([]byte, n)
		b[0], b[1] = byte(typ), Version
		if n > 16+37 {
			b[16+37] = 4
		}
		return b
	}
	var d DropNotify
	var tr TraceNotify
	var v PolicyVerdictNotify
	for _, tc := range []struct {
		name string
		err  error
		dec  func() error
	}{
		{"short header", ErrTruncated, func() error { return d.Decode(rec(MessageTypeDrop, 15)) }},
		{"short drop", ErrTruncated, func() error { return d.Decode(rec(MessageTypeDrop, DropLen-1)) }},
		{"short trace", ErrTruncated, func() error { return tr.Decode(rec(MessageTypeTrace, TraceLen-1)) }},
		{"short verdict", ErrTruncated, func() error { return v.Decode(rec(MessageTypePolicyVerdict, PolicyVerdictLen-1)) }},
		{"trace as drop", ErrUnknownType, func() error { return d.Decode(rec(MessageTypeTrace, DropLen)) }},
		{"unknown type", ErrUnknownType, func() error { return tr.Decode(rec(MessageType(3), TraceLen)) }},
		{"old version", ErrVersion, func() error { r := rec(MessageTypeTrace, TraceLen); r[1] = 1; return tr.Decode(r) }},
		{"bad IP version", ErrField, func() error { r := rec(MessageTypeTrace, TraceLen); r[16+37] = 0; return tr.Decode(r) }},
		{"bad point", ErrField, func() error { r := rec(MessageTypeTrace, TraceLen); r[66] = 99; return tr.Decode(r) }},
		{"bad capture", ErrField, func() error { r := rec(MessageTypeDrop, DropLen); r[72] = 200; return d.Decode(r) }},
		{"bad direction", ErrField, func() error { r := rec(MessageTypeDrop, DropLen); r[67] = 3; return d.Decode(r) }},
		{"bad egress", ErrField, func() error { r := rec(MessageTypePolicyVerdict, PolicyVerdictLen); r[69] = 2; return v.Decode(r) }},
	} {
		err := tc.dec()
		if !errors.Is(err, tc.err) || !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.err)
		}
	}
	if err := tr.Decode(rec(MessageTypeTrace, TraceLen)); err != nil || !tr.Tuple.Src.Is4() {
		t.Errorf("minimal trace: %v %+v", err, tr)
	}
}
