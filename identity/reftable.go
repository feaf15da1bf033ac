package identity

import "fmt"

// refTable is a reference-counted assignment of IDs from one index range to
// label sets. It is not safe for concurrent use; its owner locks.
type refTable struct {
	scope    Scope
	cluster  uint8
	min, max uint32
	// next is where the search for a free index starts. IDs are handed out
	// round-robin, so that a released ID is not reused before the whole
	// range has been gone through: a stale reference to it (in a packet,
	// a map, a log) is unlikely to name somebody else.
	next uint32
	// prevNext is next before the last creation, for undoCreate.
	prevNext uint32
	byID     map[ID]*refEntry
	byLabels map[Labels]*refEntry
}

type refEntry struct {
	id     ID
	labels Labels
	refs   int64
	// restored marks an entry read back from persisted state and not yet
	// claimed by Allocate: it holds its ID without references.
	restored bool
}

func newClusterTable(cluster uint8) *refTable {
	return &refTable{
		scope: ScopeCluster, cluster: cluster,
		min: MinClusterIndex, max: MaxClusterIndex, next: MinClusterIndex,
		byID: make(map[ID]*refEntry), byLabels: make(map[Labels]*refEntry),
	}
}

func newLocalTable() *refTable {
	return &refTable{
		scope: ScopeLocal,
		min:   1, max: MaxLocalIndex, next: 1,
		byID: make(map[ID]*refEntry), byLabels: make(map[Labels]*refEntry),
	}
}

func (t *refTable) idAt(index uint32) ID {
	if t.scope == ScopeLocal {
		return LocalScopeFlag | ID(index)
	}
	return ID(t.cluster)<<clusterShift | ID(index)
}

// owns reports whether id belongs to this table's range.
func (t *refTable) owns(id ID) bool {
	if id.Scope() != t.scope {
		return false
	}
	return t.scope == ScopeLocal || id.ClusterID() == t.cluster
}

// acquire takes a reference on the entry of labels, creating it with a free
// ID if there is none. If the caller cannot complete the creation (e.g.
// persisting fails) it must call undoCreate.
func (t *refTable) acquire(labels Labels) (e *refEntry, created bool, err error) {
	if e, ok := t.byLabels[labels]; ok {
		e.refs++
		e.restored = false
		return e, false, nil
	}
	index, ok := t.freeIndex()
	if !ok {
		return nil, false, fmt.Errorf("allocate %s identity for %v: %w", t.scope, labels, ErrExhausted)
	}
	e = &refEntry{id: t.idAt(index), labels: labels, refs: 1}
	t.insert(e)
	t.prevNext = t.next
	t.next = index + 1
	if t.next > t.max {
		t.next = t.min
	}
	return e, true, nil
}

// undoCreate takes back the entry the last acquire created.
func (t *refTable) undoCreate(e *refEntry) {
	t.remove(e)
	t.next = t.prevNext
}

// freeIndex finds the first unused index at or after next, wrapping.
func (t *refTable) freeIndex() (uint32, bool) {
	size := t.max - t.min + 1
	if uint32(len(t.byID)) >= size {
		return 0, false
	}
	for i, index := uint32(0), t.next; i < size; i++ {
		if _, used := t.byID[t.idAt(index)]; !used {
			return index, true
		}
		if index++; index > t.max {
			index = t.min
		}
	}
	return 0, false
}

func (t *refTable) insert(e *refEntry) {
	t.byID[e.id] = e
	t.byLabels[e.labels] = e
}

func (t *refTable) remove(e *refEntry) {
	delete(t.byID, e.id)
	delete(t.byLabels, e.labels)
}

// release drops one reference of id. It returns the entry and whether that
// was the last reference; the entry is then removed, and undoRelease puts
// it back.
func (t *refTable) release(id ID) (e *refEntry, last bool, err error) {
	e, ok := t.byID[id]
	if !ok || e.refs == 0 {
		return nil, false, fmt.Errorf("release identity %d: %w", uint32(id), ErrNotAllocated)
	}
	e.refs--
	if e.refs > 0 {
		return e, false, nil
	}
	t.remove(e)
	return e, true, nil
}

// undoRelease reverts a release that removed e.
func (t *refTable) undoRelease(e *refEntry) {
	e.refs++
	t.insert(e)
}
