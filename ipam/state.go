package ipam

import (
	"bytes"
	"encoding/json"

	"fmt"
	"hash/crc32"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
)

// A state file is a one-line header followed by a JSON body:
//
//	nodeplane-ipam-state 1 <body length> <CRC-32C of the body, 8 hex digits>\n
//	{"allocations":[{"addr":"10.0.0.2","owner":"c1/eth0"}],"next":["10.0.0.3"]}
//
// The header makes a torn or corrupted file detectable, and the version lets
// a later format be told apart instead of misread. The body stays readable
// with cat and jq, which is what an operator reaches for at 3 a.m.
const (
	stateMagic   = "nodeplane-ipam-state"
	stateVersion = 1
	// maxStateBody bounds what Load reads: a million allocations with long
	// owners fit comfortably.
	maxStateBody = 256 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

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
	path string
	fs   stateFS
}

// NewStateFile returns a StateFile at path. Nothing is read or written
// until Load or Save; the directory must exist by then.
func NewStateFile(path string) (*StateFile, error) {
	if path == "" {
		return nil, fmt.Errorf("state file: empty path: %w", ErrInvalid)
	}
	if filepath.Base(path) == "." || filepath.Base(path) == string(filepath.Separator) {
		return nil, fmt.Errorf("state file %q: not a file name: %w", path, ErrInvalid)
	}
	return &StateFile{path: filepath.Clean(path), fs: osFS{}}, nil
}

// Path returns the file's path.
func (s *StateFile) Path() string { return s.path }

// Load reads the state. A missing file fails with an error that matches
// [fs.ErrNotExist]: a fresh node, for the caller to tell apart from a lost
// one. A damaged file fails with [ErrCorrupt].
func (s *StateFile) Load() (Snapshot, error) {
	data, err := os.ReadFile(s.path)
	if err != nil {
		return Snapshot{}, fmt.Errorf("load state: %w", err)
	}
	snap, err := decodeState(data)
	if err != nil {
		return Snapshot{}, fmt.Errorf("load state %s: %w", s.path, err)
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
	data, err := encodeState(snap)
	if err != nil {
		return false, fmt.Errorf("save state: %w", err)
	}
	tmp := s.path + ".tmp"
	if err := s.writeTemp(tmp, data); err != nil {
		return false, fmt.Errorf("save state: %w", err)
	}
	if err := s.fs.rename(tmp, s.path); err != nil {
		s.fs.remove(tmp)
		return false, fmt.Errorf("save state: %w", err)
	}
	// The rename is only durable once the directory is.
	dir, err := s.fs.openDir(filepath.Dir(s.path))
	if err != nil {
		return true, fmt.Errorf("save state: %w", err)
	}
	err = dir.Sync()
	if cerr := dir.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return true, fmt.Errorf("save state: sync directory: %w", err)
	}
	return true, nil
}

func (s *StateFile) writeTemp(tmp string, data []byte) error {
	f, err := s.fs.create(tmp)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		s.fs.remove(tmp)
	}
	return err
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

func encodeState(snap Snapshot) ([]byte, error) {
	body := stateJSON{Allocations: make([]allocationJSON, len(snap.Allocations)), Next: snap.Next}
	for i, a := range snap.Allocations {
		body.Allocations[i] = allocationJSON(a)
	}
	if err := checkStateBody(&body); err != nil {
		return nil, err
	}
	js, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	header := fmt.Sprintf("%s %d %d %08x\n", stateMagic, stateVersion, len(js), crc32.Checksum(js, castagnoli))
	return append([]byte(header), js...), nil
}

func decodeState(data []byte) (Snapshot, error) {
	nl := bytes.IndexByte(data, '\n')
	if nl < 0 || nl > 100 {
		return Snapshot{}, fmt.Errorf("no header line: %w", ErrCorrupt)
	}
	fields := bytes.Split(data[:nl], []byte(" "))
	if len(fields) != 4 || string(fields[0]) != stateMagic {
		return Snapshot{}, fmt.Errorf("header %q is not a nodeplane ipam state header: %w", data[:nl], ErrCorrupt)
	}
	if v, err := strconv.ParseUint(string(fields[1]), 10, 32); err != nil || v != stateVersion {
		return Snapshot{}, fmt.Errorf("version %q, this build reads version %d: %w", fields[1], stateVersion, ErrCorrupt)
	}
	n, err := strconv.ParseUint(string(fields[2]), 10, 64)
	if err != nil || n > maxStateBody {
		return Snapshot{}, fmt.Errorf("body length %q: %w", fields[2], ErrCorrupt)
	}
	body := data[nl+1:]
	if uint64(len(body)) != n {
		return Snapshot{}, fmt.Errorf("body is %d bytes, header says %d (torn write?): %w", len(body), n, ErrCorrupt)
	}
	want, err := strconv.ParseUint(string(fields[3]), 16, 32)
	if err != nil || len(fields[3]) != 8 {
		return Snapshot{}, fmt.Errorf("checksum %q: %w", fields[3], ErrCorrupt)
	}
	if got := crc32.Checksum(body, castagnoli); got != uint32(want) {
		return Snapshot{}, fmt.Errorf("checksum mismatch: header %08x, body %08x: %w", want, got, ErrCorrupt)
	}

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

// stateFS is the file-system seam of StateFile: the steps of an atomic
// replace, so that tests can fail or "crash" any one of them.
type stateFS interface {
	create(name string) (stateWriter, error)
	rename(from, to string) error
	remove(name string)
	openDir(name string) (stateSyncer, error)
}

type stateSyncer interface {
	Sync() error
	Close() error
}

type stateWriter interface {
	Write([]byte) (int, error)
	stateSyncer
}

type osFS struct{}

func (osFS) create(name string) (stateWriter, error) {
	return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
}

func (osFS) rename(from, to string) error { return os.Rename(from, to) }

func (osFS) remove(name string) { _ = os.Remove(name) }

func (osFS) openDir(name string) (stateSyncer, error) { return os.Open(name) }
