package ipam

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/nodeplane/nodeplane/internal/statefile"
)

// A state file is an internal/statefile file: a one-line header followed
// by a JSON body:
//
//	nodeplane-ipam-state 1 <body length> <CRC-32C of the body, 8 hex digits>\n
//	{"allocations":[{"addr":"10.0.0.2","owner":"c1/eth0"}],"next":["10.0.0.3"]}
//
// The header makes a torn or corrupted file detectable, and the version lets
// a later format be told apart instead of misread. The body stays readable
// with cat and jq, which is what an operator reaches for at 3 a.m.
var stateFormat = statefile.Format{
	Magic:   "nodeplane-ipam-state",
	Version: 1,
	// A million allocations with long owners fit comfortably.
	MaxBody: 256 << 20,
}

// StateFile keeps a [Snapshot] in one file so that it survives restarts and
// crashes. Save replaces the file atomically: it writes a temporary file
// next to it, fsyncs it, renames it over the old one and fsyncs the
// directory, so a crash at any point leaves either the old or the new state
// on disk, never a mix. Load detects a damaged file by its checksum and
// fails with [ErrCorrupt].
//
// Load and Save take no lock: processes that share a state file serialise
// their read-modify-write cycles with [StateFile.Lock]. A StateFile keeps
// no file open, so it needs no Close.
type StateFile struct {
	f *statefile.File
}

// NewStateFile returns a StateFile at path. Nothing is read or written
// until Load or Save; the directory must exist by then.
func NewStateFile(path string) (*StateFile, error) {
	f, err := statefile.New(path, stateFormat)
	if err != nil {
		return nil, fmt.Errorf("state file: %w: %w", ErrInvalid, err)
	}
	return &StateFile{f: f}, nil
}

// Path returns the file's path.
func (s *StateFile) Path() string { return s.f.Path() }

// Load reads the state. A missing file fails with an error that matches
// [fs.ErrNotExist]: a fresh node, for the caller to tell apart from a lost
// one. A damaged file fails with [ErrCorrupt].
func (s *StateFile) Load() (Snapshot, error) {
	body, err := s.f.Load()
	if err != nil {
		return Snapshot{}, fmt.Errorf("load state: %w", err)
	}
	snap, err := decodeBody(body)
	if err != nil {
		return Snapshot{}, fmt.Errorf("load state %s: %w", s.f.Path(), err)
	}
	return snap, nil
}

// Save replaces the file's content with snap, atomically and durably.
func (s *StateFile) Save(snap Snapshot) error {
	_, err := s.write(snap)
	return err
}

// write saves snap and reports whether the new file was renamed into place
// (so that readers may see it) even if a later step failed.
func (s *StateFile) write(snap Snapshot) (renamed bool, err error) {
	body, err := encodeBody(snap)
	if err != nil {
		return false, fmt.Errorf("save state: %w", err)
	}
	renamed, err = s.f.Save(body)
	if err != nil {
		return renamed, fmt.Errorf("save state: %w", err)
	}
	return true, nil
}

// stateJSON is the body of a state file.
type stateJSON struct {
	Allocations []allocationJSON `json:"allocations"`
	Next        []netip.Addr     `json:"next,omitempty"`
}

type allocationJSON struct {
	Addr  netip.Addr `json:"addr"`
	Owner string     `json:"owner"`
}

// encodeState returns the whole file for snap.
func encodeState(snap Snapshot) ([]byte, error) {
	body, err := encodeBody(snap)
	if err != nil {
		return nil, err
	}
	return stateFormat.Encode(body), nil
}

// decodeState checks a whole file and returns its snapshot.
func decodeState(data []byte) (Snapshot, error) {
	body, err := stateFormat.Decode(data)
	if err != nil {
		return Snapshot{}, err
	}
	return decodeBody(body)
}

func encodeBody(snap Snapshot) ([]byte, error) {
	body := stateJSON{Allocations: make([]allocationJSON, len(snap.Allocations)), Next: snap.Next}
	for i, a := range snap.Allocations {
		body.Allocations[i] = allocationJSON(a)
	}
	if err := checkStateBody(&body); err != nil {
		return nil, err
	}
	return json.Marshal(body)
}

func decodeBody(body []byte) (Snapshot, error) {
	var js stateJSON
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&js); err != nil {
		return Snapshot{}, fmt.Errorf("body: %v: %w", err, ErrCorrupt)
	}
	if dec.More() {
		return Snapshot{}, fmt.Errorf("body: data after the JSON value: %w", ErrCorrupt)
	}
	if err := checkStateBody(&js); err != nil {
		return Snapshot{}, fmt.Errorf("body: %v: %w", err, ErrCorrupt)
	}
	snap := Snapshot{Allocations: make([]Allocation, len(js.Allocations)), Next: js.Next}
	if len(snap.Next) == 0 {
		// "next":[] is the file encodeBody writes without "next": one
		// snapshot, whichever way it was spelled.
		snap.Next = nil
	}
	for i, a := range js.Allocations {
		snap.Allocations[i] = Allocation(a)
	}
	return snap, nil
}

// checkStateBody rejects what no pool could have produced, on the way out
// as on the way in: a state file only ever holds restorable content.
func checkStateBody(js *stateJSON) error {
	seen := make(map[netip.Addr]bool, len(js.Allocations))
	for _, a := range js.Allocations {
		if err := checkAddr(a.Addr); err != nil {
			return err
		}
		if err := checkOwner(a.Owner); err != nil {
			return fmt.Errorf("%s: %w", a.Addr, err)
		}
		if seen[a.Addr] {
			return fmt.Errorf("%s listed twice", a.Addr)
		}
		seen[a.Addr] = true
	}
	for _, a := range js.Next {
		if err := checkAddr(a); err != nil {
			return fmt.Errorf("next: %w", err)
		}
	}
	return nil
}
