package flow_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/flow"
)

// FuzzDecode feeds arbitrary records to the decoder: it must never panic
// or modify its input, must reject with an error wrapping
// monitor.ErrMalformed, and what it accepts must be a consistent flow whose
// JSON is valid. Seeds: every record the BPF programs wrote
// (testdata/records), plus the corpus under testdata/fuzz/FuzzDecode.
func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "records", "*.rec"))
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		recs, err := readRecords(b)
		if err != nil {
			f.Fatal(err)
		}
		for _, r := range recs {
			f.Add(r)
		}
	}
	dec := flow.NewDecoder(flow.DecoderConfig{NodeName: "n", Boot: time.Unix(0, 0), Catalog: testCatalog()})
	f.Fuzz(func(t *testing.T, rec []byte) {
		orig := bytes.Clone(rec)
		var fl flow.Flow
		err := dec.Decode(rec, &fl)
		if !bytes.Equal(rec, orig) {
			t.Fatal("Decode modified its input")
		}
		if err != nil {
			if !errors.Is(err, monitor.ErrMalformed) {
				t.Fatalf("error %v does not wrap monitor.ErrMalformed", err)
			}
			if flow.DecodeErrorReason(err) == "" {
				t.Fatal("no reason")
			}
			return
		}
		if len(rec) < monitor.HeaderLen {
			t.Fatalf("accepted %d bytes", len(rec))
		}
		switch monitor.MessageType(rec[0]) {
		case monitor.MessageTypeDrop:
			if len(rec) < monitor.DropLen || fl.Verdict != flow.Dropped {
				t.Fatalf("drop from %d bytes: %+v", len(rec), fl)
			}
		case monitor.MessageTypeTrace:
			if len(rec) < monitor.TraceLen || fl.Verdict != flow.Forwarded || !fl.IP.Source.IsValid() {
				t.Fatalf("trace from %d bytes: %+v", len(rec), fl)
			}
		case monitor.MessageTypePolicyVerdict:
			if len(rec) < monitor.PolicyVerdictLen || !fl.IP.Source.IsValid() {
				t.Fatalf("verdict from %d bytes: %+v", len(rec), fl)
			}
		default:
			t.Fatalf("accepted type %d", rec[0])
		}
		if fl.IP.Source.IsValid() && fl.IP.Source.Is4() != fl.IP.Destination.Is4() {
			t.Fatalf("mixed families %v -> %v", fl.IP.Source, fl.IP.Destination)
		}
		var v map[string]any
		if err := json.Unmarshal(fl.AppendJSON(nil), &v); err != nil {
			t.Fatalf("invalid JSON: %v\n%s", err, fl.AppendJSON(nil))
		}
	})
}
