package identity

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/statefile"
)

// The state file is an internal/statefile file, a header line followed by
// a JSON body:
//
//	nodeplane-identity-state 1 <body bytes> <crc32c, 8 hex digits>
//	{"clusterID":1,"identities":[{"id":65792,"labels":"k8s:app=web;"},...]}
//
// Files written before the header was shared with ipam spell it
// "nodeplane-identity-state v1 length=<n> crc32c=<hex>"; they load, and
// the next save rewrites them in the current spelling.
var stateFormat = statefile.Format{
	Magic:   "nodeplane-identity-state",
	Version: 1,
	Legacy:  true,
}

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

// stateFile is an open, locked state file.
type stateFile struct {
	file *statefile.File
	lock *statefile.Lock // nil once closed; nil where flock does not exist
	open bool
}

func openStateFile(path string) (*stateFile, error) {
	file, err := statefile.New(path, stateFormat)
	if err != nil {
		return nil, fmt.Errorf("identity state: %w", err)
	}
	lock, err := statefile.TryLockFile(file.LockPath())
	switch {
	case errors.Is(err, statefile.ErrLocked):
		return nil, fmt.Errorf("identity state %s: in use by another allocator (%s is locked)", path, file.LockPath())
	case errors.Is(err, nodeplane.ErrNotSupported):
		// No flock here: do not point two allocators at one file.
	case err != nil:
		return nil, fmt.Errorf("identity state %s: %w", path, err)
	}
	return &stateFile{file: file, lock: lock, open: true}, nil
}

func (s *stateFile) close() error {
	if !s.open {
		return nil
	}
	s.open = false
	if s.lock == nil {
		return nil
	}
	err := s.lock.Close()
	s.lock = nil
	return err
}

func (s *stateFile) corrupt(format string, args ...any) error {
	return fmt.Errorf("identity state %s: %w: %s", s.file.Path(), ErrCorruptState, fmt.Sprintf(format, args...))
}

// load reads and checks the file. A missing file is an empty state.
func (s *stateFile) load(cluster uint8) ([]stateEntry, error) {
	body, err := s.file.Load()
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("identity state: %w", err)
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
		case labels.Scope() != id.Scope():
			return nil, s.corrupt("identity %d is %s-scoped, its labels %v are %s-scoped", uint32(id), id.Scope(), labels, labels.Scope())
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
	if !s.open {
		return fmt.Errorf("identity state %s: %w", s.file.Path(), nodeplane.ErrClosed)
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
	if _, err := s.file.Save(body); err != nil {
		return fmt.Errorf("identity state: %w", err)
	}
	return nil
}
