package datapath

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParseEvent feeds arbitrary records to ParseEvent: it must never
// panic, reject with ErrMalformedEvent, and what it accepts must be
// consistent and must not alias the record.
func FuzzParseEvent(f *testing.F) {
	f.Add(encodeRecord(f, sampleDrop(f)))
	f.Add(encodeRecord(f, sampleVerdict(f)))
	f.Add(encodeRecord(f, sampleDrop(f))[:100])
	f.Add([]byte{1, 1, 0, 0})
	f.Fuzz(func(t *testing.T, rec []byte) {
		orig := bytes.Clone(rec)
		ev, err := ParseEvent(rec)
		if err != nil {
			if !errors.Is(err, ErrMalformedEvent) {
				t.Fatalf("error %v does not wrap ErrMalformedEvent", err)
			}
			return
		}
		if !bytes.Equal(rec, orig) {
			t.Fatal("ParseEvent modified its input")
		}
		switch e := ev.(type) {
		case *DropEvent:
			if len(rec) < dropEventSize || e.Type != EventDrop || len(e.Data) > eventCapLen {
				t.Fatalf("accepted drop %+v from %d bytes", e, len(rec))
			}
			if e.HasTuple && (!e.Tuple.Src.IsValid() || e.Tuple.Src.Is4() != e.Tuple.Dst.Is4()) {
				t.Fatalf("inconsistent tuple %v", e.Tuple)
			}
			if len(e.Data) > 0 {
				rec[80] ^= 0xff
				if e.Data[0] == rec[80] {
					t.Fatal("event aliases the record")
				}
			}
		case *PolicyVerdictEvent:
			if len(rec) < verdictEventSize || e.Type != EventPolicyVerdict || e.Direction > Egress {
				t.Fatalf("accepted verdict %+v from %d bytes", e, len(rec))
			}
		default:
			t.Fatalf("unexpected event type %T", ev)
		}
	})
}
