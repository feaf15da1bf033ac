package identity

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/nodeplane/nodeplane"
)

// The state file is a header line followed by a JSON body:
//
//	nodeplane-identity-state v1 length=<body bytes> crc32c=<8 hex digits>
//	{"clusterID":1,"identities":[{"id":65792,"labels":"k8s:app=web;"},...]}
//
// The length and checksum make a torn or damaged file detectable even
// though it is only ever replaced by rename.
const stateMagic = "nodeplane-identity-state v1"

var crc32c = crc32.MakeTable(crc32.Castagnoli)

type stateEntry struct {
	id     ID
	labels Labels
}

type stateBody struct {
	ClusterID  uint8           `json:"clusterID"`
	Identities []stateIdentity `json:"identities"`
}

type stateIdentity struct {
	ID     ID     `json:"id"`
	Labels string `json:"labels"`
}

// stateFile is an open, locked state file path.
type stateFile struct {
	path string
	lock *os.File
}

func openStateFile(path string) (*stateFile, error) {
	lock, err := lockFile(path + ".lock")
	if err != nil {
		return nil, fmt.Errorf("identity state %s: %w", path, err)
	}
	return &stateFile{path: path, lock: lock}, nil
}

func (s *stateFile) close() error {
	if s.lock == nil {
		return nil
	}
	err := s.lock.Close()
	s.lock = nil
	return err
}

func (s *stateFile) corrupt(format string, args ...any) error {
	return fmt.Errorf("identity state %s: %w: %s", s.path, ErrCorruptState, fmt.Sprintf(format, args...))
}

// load reads and checks the file. A missing file is an empty state.
func (s *stateFile) load(cluster uint8) ([]stateEntry, error) {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("identity state: %w", err)
	}
	nl := bytes.IndexByte(data, '\n')
	if nl < 0 {
		return nil, s.corrupt("no header line (torn write?)")
	}
	header, body := string(data[:nl]), data[nl+1:]
	fields := strings.Fields(strings.TrimPrefix(header, stateMagic))
	if !strings.HasPrefix(header, stateMagic+" ") || len(fields) != 2 ||
		!strings.HasPrefix(fields[0], "length=") || !strings.HasPrefix(fields[1], "crc32c=") {
		return nil, s.corrupt("bad header %q", header)
	}
	length, err := strconv.ParseUint(strings.TrimPrefix(fields[0], "length="), 10, 63)
	if err != nil {
		return nil, s.corrupt("bad length in header %q", header)
	}
	sum, err := strconv.ParseUint(strings.TrimPrefix(fields[1], "crc32c="), 16, 32)
	if err != nil {
		return nil, s.corrupt("bad checksum in header %q", header)
	}
	if uint64(len(body)) != length {
		return nil, s.corrupt("body is %d bytes, header says %d (torn write?)", len(body), length)
	}
	if got := crc32.Checksum(body, crc32c); uint64(got) != sum {
		return nil, s.corrupt("checksum %08x, header says %08x", got, sum)
	}

	var sb stateBody
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&sb); err != nil {
		return nil, s.corrupt("body: %v", err)
	}
	if dec.More() {
		return nil, s.corrupt("data after the body")
	}
	if sb.ClusterID != cluster {
		return nil, s.corrupt("written for cluster %d, allocator is for cluster %d", sb.ClusterID, cluster)
	}

	entries := make([]stateEntry, 0, len(sb.Identities))
	ids := make(map[ID]bool, len(sb.Identities))
	labelSets := make(map[Labels]ID, len(sb.Identities))
	for i, si := range sb.Identities {
		id := si.ID
		labels, err := LabelsFromKey(si.Labels)
		if err != nil {
			return nil, s.corrupt("identity %d: %v", uint32(id), err)
		}
		switch {
		case id.Validate() != nil:
			return nil, s.corrupt("entry %d: %v", i, id.Validate())
		case id.IsReserved():
			return nil, s.corrupt("entry %d: reserved identity %d", i, uint32(id))
		case id.IsCluster() && id.ClusterID() != cluster:
			return nil, s.corrupt("identity %d belongs to cluster %d", uint32(id), id.ClusterID())
		case labels.IsEmpty():
			return nil, s.corrupt("identity %d has no labels", uint32(id))
		case ids[id]:
			return nil, s.corrupt("identity %d appears twice", uint32(id))
		case ScopeOf(labels) != id.Scope():
			return nil, s.corrupt("identity %d is %s-scoped, its labels %v are %s-scoped", uint32(id), id.Scope(), labels, ScopeOf(labels))
		}
		if _, reserved := LookupReserved(labels); reserved {
			return nil, s.corrupt("identity %d has the labels of a reserved identity", uint32(id))
		}
		if other, dup := labelSets[labels]; dup {
			return nil, s.corrupt("labels %v have identities %d and %d", labels, uint32(other), uint32(id))
		}
		ids[id] = true
		labelSets[labels] = id
		entries = append(entries, stateEntry{id: id, labels: labels})
	}
	return entries, nil
}

// save replaces the file with the given state: write a temporary file, fsync
// it, rename it over the old one, fsync the directory.
func (s *stateFile) save(cluster uint8, entries []stateEntry) error {
	if s.lock == nil {
		return fmt.Errorf("identity state %s: %w", s.path, nodeplane.ErrClosed)
	}
	slices.SortFunc(entries, func(a, b stateEntry) int { return cmp.Compare(a.id, b.id) })
	sb := stateBody{ClusterID: cluster, Identities: make([]stateIdentity, len(entries))}
	for i, e := range entries {
		sb.Identities[i] = stateIdentity{ID: e.id, Labels: e.labels.Key()}
	}
	body, err := json.Marshal(sb)
	if err != nil {
		return fmt.Errorf("identity state: %w", err)
	}
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "%s length=%d crc32c=%08x\n", stateMagic, len(body), crc32.Checksum(body, crc32c))
	buf.Write(body)

	tmp := s.path + ".tmp"
	if err := writeSynced(tmp, buf.Bytes()); err != nil {
		return fmt.Errorf("identity state: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("identity state: %w", err)
	}
	if err := syncDir(filepath.Dir(s.path)); err != nil {
		return fmt.Errorf("identity state: %w", err)
	}
	return nil
}

func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
