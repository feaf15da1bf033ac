package policy

import (
	"strings"

	"github.com/nodeplane/nodeplane/identity"
)

// labelIndex maps a label's key and value (whatever its source) to the
// identities that carry it. A selector that requires app=web only needs to
// be matched against identities labelled app=web: with ten thousand
// identities in a hundred namespaces, a namespaced selector looks at a
// hundred, not ten thousand.
type labelIndex struct {
	byLabel map[indexKey]map[identity.ID]struct{}
}

type indexKey struct {
	key, value string
}

func newLabelIndex() labelIndex {
	return labelIndex{byLabel: map[indexKey]map[identity.ID]struct{}{}}
}

func (x labelIndex) add(id identity.ID, ls identity.Labels) {
	for l := range ls.All() {
		k := indexKey{l.Key, l.Value}
		set := x.byLabel[k]
		if set == nil {
			set = map[identity.ID]struct{}{}
			x.byLabel[k] = set
		}
		set[id] = struct{}{}
	}
}

func (x labelIndex) remove(id identity.ID, ls identity.Labels) {
	for l := range ls.All() {
		k := indexKey{l.Key, l.Value}
		if set := x.byLabel[k]; set != nil {
			delete(set, id)
			if len(set) == 0 {
				delete(x.byLabel, k)
			}
		}
	}
}

// candidates returns the identities of the smallest indexed set among
// keys, each of which a matching identity must carry; false when keys is
// empty and every identity is a candidate.
func (x labelIndex) candidates(keys []indexKey) ([]identity.ID, bool) {
	if len(keys) == 0 {
		return nil, false
	}
	var best map[identity.ID]struct{}
	for i, k := range keys {
		set := x.byLabel[k]
		if i == 0 || len(set) < len(best) {
			best = set
		}
	}
	out := make([]identity.ID, 0, len(best))
	for id := range best {
		out = append(out, id)
	}
	return out, true
}

// candidateKeys returns the labels a selector's matchLabels require. Keys
// of the cidr source are left out: they match by prefix, not equality.
func candidateKeys(s identity.LabelSelector) []indexKey {
	var out []indexKey
	for k, v := range s.MatchLabels {
		src, key := "", k
		if i := strings.IndexByte(k, ':'); i >= 0 {
			src, key = k[:i], k[i+1:]
		}
		if src == identity.SourceCIDR || key == "" {
			continue
		}
		out = append(out, indexKey{key, v})
	}
	return out
}
