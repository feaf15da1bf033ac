package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"
)

// FuzzParseEvent feeds arbitrary records to ParseEvent: it must never
// panic, reject with ErrMalformedEvent, and what it accepts must be
// consistent and must not alias the record.
func FuzzParseEvent(f *testing.F) {
	f.Add(encodeRecord(f, sampleDrop(f)))
	f.Add(encodeRecord(f, sampleVerdict(f)))
	f.Add(encodeRecord(f, sampleTrace(f)))
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
		case *TraceEvent:
			if len(rec) < binary.Size(traceEvent{}) || e.Type != EventTrace || !e.Tuple.Src.IsValid() {
				t.Fatalf("accepted trace %+v from %d bytes", e, len(rec))
			}
		default:
			t.Fatalf("unexpected event type %T", ev)
		}
	})
}

// FuzzEndpointRecord feeds arbitrary records-map values to the decoder
// that adoption trusts: it must never panic, and what it accepts must
// describe an endpoint AddEndpoint would accept and encode back to the
// same configuration.
func FuzzEndpointRecord(f *testing.F) {
	for _, cfg := range []EndpointConfig{
		{ID: 7, Identity: 1000, IPv4: addrA, IPv6: addrA6, NetNS: "/x"},
		{ID: 3, Identity: 2000, IPv4: addrB, Detached: true},
	} {
		cfg, err := cfg.withDefaults()
		if err != nil {
			f.Fatal(err)
		}
		rec := newEndpointRecord(cfg, AttachTC)
		b, err := binary.Append(nil, binary.NativeEndian, rec)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint16(cfg.ID), b)
	}
	f.Fuzz(func(t *testing.T, id uint16, b []byte) {
		var rec endpointRecord
		if _, err := binary.Decode(b, binary.NativeEndian, &rec); err != nil {
			return
		}
		cfg, err := rec.endpointConfig(EndpointID(id))
		if err != nil {
			return
		}
		check := cfg
		if !check.Detached {
			check.NetNS = "/x"
		}
		if _, err := check.withDefaults(); err != nil {
			t.Fatalf("accepted %+v, which AddEndpoint refuses: %v", cfg, err)
		}
		again, err := newEndpointRecord(cfg, rec.attachMode()).endpointConfig(EndpointID(id))
		if err != nil || !reflect.DeepEqual(again, cfg) {
			t.Fatalf("re-encoded %+v as %+v, %v", cfg, again, err)
		}
	})
}
