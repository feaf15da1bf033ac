package mapstate

import (
	"maps"
	"slices"
)

// State is the content of an endpoint's policy map.
type State map[Key]Entry

// Keys returns the state's keys in a stable order ([Key.Compare]).
func (s State) Keys() []Key {
	keys := slices.Collect(maps.Keys(s))
	SortKeys(keys)
	return keys
}

// SortKeys sorts keys in place by [Key.Compare].
func SortKeys(keys []Key) {
	slices.SortFunc(keys, Key.Compare)
}

// Delta is a change to a policy map: keys to insert or overwrite, and keys
// to delete. Applying a delta to the state it was computed from yields the
// new state; keys it does not name are untouched. A key is never in both.
type Delta struct {
	Upserts State
	Deletes []Key
}

// Empty reports whether the delta changes nothing.
func (d Delta) Empty() bool { return len(d.Upserts) == 0 && len(d.Deletes) == 0 }

// Apply applies the delta to s in place.
func (d Delta) Apply(s State) {
	for _, k := range d.Deletes {
		delete(s, k)
	}
	for k, v := range d.Upserts {
		s[k] = v
	}
}

// Diff returns the delta that turns old into new, its deletes sorted.
func Diff(old, new State) Delta {
	d := Delta{Upserts: State{}}
	for k, v := range new {
		if ov, ok := old[k]; !ok || ov != v {
			d.Upserts[k] = v
		}
	}
	for k := range old {
		if _, ok := new[k]; !ok {
			d.Deletes = append(d.Deletes, k)
		}
	}
	SortKeys(d.Deletes)
	return d
}
