package identity

import (
	"encoding/json"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"strings"
)

// Labels is an immutable set of labels in canonical form: at most one label
// per key (as in Cilium, the key alone identifies a label within a set),
// sorted by key. Labels is comparable: equal sets are ==, and a Labels can
// key a map. The zero value is the empty set.
//
// The canonical form is Cilium's key-value store encoding,
// "source:key=value;" per label, sorted by key; [Labels.Key] returns it and
// [LabelsFromKey] reads it back.
type Labels struct {
	kv string
}

// NewLabels returns the set of the given labels, each checked as
// [ParseLabel] checks parsed ones. When several labels share a key, the last
// one wins, as in Cilium's labels.NewLabels.
func NewLabels(labels ...Label) (Labels, error) {
	for _, l := range labels {
		if err := l.validate(false); err != nil {
			return Labels{}, err
		}
	}
	return makeLabels(slices.Clone(labels)), nil
}

// ParseLabels parses each string with [ParseLabel] and returns their set.
// Duplicate keys: the last one wins.
func ParseLabels(labels ...string) (Labels, error) {
	ls := make([]Label, 0, len(labels))
	for _, s := range labels {
		l, err := ParseLabel(s)
		if err != nil {
			return Labels{}, err
		}
		ls = append(ls, l)
	}
	return makeLabels(ls), nil
}

// ParseLabelList parses a comma-separated list of labels such as
// "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod". Space around each item
// is ignored; an empty item is an error. Values that contain ',' cannot be
// written this way; use [ParseLabels].
func ParseLabelList(list string) (Labels, error) {
	if strings.TrimSpace(list) == "" {
		return Labels{}, nil
	}
	items := strings.Split(list, ",")
	for i, item := range items {
		items[i] = strings.TrimSpace(item)
		if items[i] == "" {
			return Labels{}, &LabelError{Label: list, Reason: fmt.Sprintf("item %d of the list is empty", i+1)}
		}
	}
	return ParseLabels(items...)
}

// labelsFromMap converts a map of keys to values, such as a pod's labels,
// into a set the way Cilium's labels.Map2Labels does: each map key may carry
// a source ("k8s:app"); a non-empty source argument overrides it; without
// either the source is [SourceUnspec]. A map key cannot use the "$name"
// shorthand for reserved labels.
//
// Two map keys that name the same label key ("k8s:app" and "container:app")
// are an error: a map has no order that could pick a winner.
func labelsFromMap(m map[string]string, source string) (Labels, error) {
	ls := make([]Label, 0, len(m))
	for k, v := range m {
		src, key := parseSource(k)
		if source != "" {
			src = source
		}
		if src == "" {
			src = SourceUnspec
		}
		l := Label{Source: src, Key: key, Value: v}
		if err := l.validate(false); err != nil {
			err.(*LabelError).Label = k + "=" + v
			return Labels{}, err
		}
		ls = append(ls, l)
	}
	slices.SortFunc(ls, compareLabels)
	for i := 1; i < len(ls); i++ {
		if ls[i].Key == ls[i-1].Key {
			return Labels{}, &LabelError{Label: ls[i].String(),
				Reason: fmt.Sprintf("key %q appears twice in the map (also as %s)", ls[i].Key, ls[i-1])}
		}
	}
	return encodeSorted(ls), nil
}

// LabelsFromKey reads the canonical form that [Labels.Key] returns. It
// rejects input that is not exactly canonical (unsorted, duplicate keys,
// missing terminator), so that one label set has one key.
func LabelsFromKey(key string) (Labels, error) {
	var prev string
	rest := key
	for n := 0; rest != ""; n++ {
		end := strings.IndexByte(rest, ';')
		if end < 0 {
			return Labels{}, &LabelError{Label: key, Reason: "canonical form: last label lacks the ';' terminator"}
		}
		item := rest[:end]
		colon := strings.IndexByte(item, ':')
		eq := strings.IndexByte(item, '=')
		if colon < 0 || eq < colon {
			return Labels{}, &LabelError{Label: key, Reason: fmt.Sprintf("canonical form: label %d is not source:key=value", n+1)}
		}
		l := Label{Source: item[:colon], Key: item[colon+1 : eq], Value: item[eq+1:]}
		if err := l.validate(false); err != nil {
			return Labels{}, err
		}
		if n > 0 && l.Key <= prev {
			return Labels{}, &LabelError{Label: key, Reason: "canonical form: keys not strictly sorted"}
		}
		prev = l.Key
		rest = rest[end+1:]
	}
	return Labels{kv: key}, nil
}

// makeLabels sorts ls by key, keeps the last label of each key and encodes
// the result. It reorders ls.
func makeLabels(ls []Label) Labels {
	// A stable sort keeps equal keys in input order, so the last of a run
	// is the last given.
	slices.SortStableFunc(ls, func(a, b Label) int { return strings.Compare(a.Key, b.Key) })
	out := ls[:0]
	for i, l := range ls {
		if i+1 < len(ls) && ls[i+1].Key == l.Key {
			continue
		}
		out = append(out, l)
	}
	return encodeSorted(out)
}

func encodeSorted(ls []Label) Labels {
	n := 0
	for _, l := range ls {
		n += len(l.Source) + len(l.Key) + len(l.Value) + 3
	}
	var b strings.Builder
	b.Grow(n)
	for _, l := range ls {
		b.WriteString(l.Source)
		b.WriteByte(':')
		b.WriteString(l.Key)
		b.WriteByte('=')
		b.WriteString(l.Value)
		b.WriteByte(';')
	}
	return Labels{kv: b.String()}
}

func compareLabels(a, b Label) int {
	if c := strings.Compare(a.Key, b.Key); c != 0 {
		return c
	}
	if c := strings.Compare(a.Value, b.Value); c != 0 {
		return c
	}
	return strings.Compare(a.Source, b.Source)
}

// decodeNext splits the first label off a canonical string. It must only be
// given strings built by this package.
func decodeNext(kv string) (l Label, rest string) {
	end := strings.IndexByte(kv, ';')
	item := kv[:end]
	colon := strings.IndexByte(item, ':')
	eq := colon + 1 + strings.IndexByte(item[colon+1:], '=')
	return Label{Source: item[:colon], Key: item[colon+1 : eq], Value: item[eq+1:]}, kv[end+1:]
}

// Key returns the canonical form, "source:key=value;" per label sorted by
// key: the key that names this label set in a key-value store. It is
// stable across releases.
func (ls Labels) Key() string { return ls.kv }

// IsEmpty reports whether the set has no labels.
func (ls Labels) IsEmpty() bool { return ls.kv == "" }

// Len returns the number of labels.
func (ls Labels) Len() int { return strings.Count(ls.kv, ";") }

// All iterates over the labels in key order.
func (ls Labels) All() iter.Seq[Label] {
	return func(yield func(Label) bool) {
		for rest := ls.kv; rest != ""; {
			var l Label
			l, rest = decodeNext(rest)
			if !yield(l) {
				return
			}
		}
	}
}

// Slice returns the labels in key order.
func (ls Labels) Slice() []Label {
	return slices.AppendSeq(make([]Label, 0, ls.Len()), ls.All())
}

// Get returns the label with the given key, whatever its source.
func (ls Labels) Get(key string) (Label, bool) {
	for rest := ls.kv; rest != ""; {
		var l Label
		l, rest = decodeNext(rest)
		if l.Key == key {
			return l, true
		}
		if l.Key > key {
			break
		}
	}
	return Label{}, false
}

// Has reports whether the set holds the label. A label with source "any"
// matches the key and value from every source; a cidr label matches any cidr
// label for a prefix it contains ("cidr:10.0.0.0/8" is in a set holding
// "cidr:10.1.0.0/16"). These are Cilium's Label.Has semantics.
func (ls Labels) Has(l Label) bool {
	v, ok := ls.lookup(l.Source, l.Key)
	return ok && v == l.Value
}

// HasSource reports whether some label has the given source.
func (ls Labels) HasSource(source string) bool {
	for rest := ls.kv; rest != ""; {
		var l Label
		l, rest = decodeNext(rest)
		if l.Source == source {
			return true
		}
	}
	return false
}

// lookup finds the value of the label a selector names by source and key,
// Cilium's Labels.Get/Has for selector keys: source "any" (or "unspec")
// matches the key from every source; other sources must match exactly;
// source "cidr" first matches a cidr label whose prefix lies inside the
// named one, and never matches when the key is not a prefix.
func (ls Labels) lookup(source, key string) (string, bool) {
	var sel netip.Prefix
	if source == SourceCIDR {
		var err error
		if sel, err = labelKeyToPrefix(key); err != nil {
			return "", false
		}
	}
	return ls.lookupPrefix(source, key, sel)
}

// lookupPrefix is lookup with the prefix of a cidr key already parsed.
func (ls Labels) lookupPrefix(source, key string, sel netip.Prefix) (string, bool) {
	if source == SourceCIDR {
		for rest := ls.kv; rest != ""; {
			var l Label
			l, rest = decodeNext(rest)
			if l.Source != SourceCIDR {
				continue
			}
			if p, err := labelKeyToPrefix(l.Key); err == nil && prefixContains(sel, p) {
				return l.Value, true
			}
		}
	}
	l, ok := ls.Get(key)
	if !ok {
		return "", false
	}
	if source != SourceAny && source != SourceUnspec && l.Source != source {
		return "", false
	}
	return l.Value, true
}

// findKey finds the label whose key is needle[1:len(needle)-1], given
// needle = ":" + key + "=". A match must start a label: everything between
// the previous ';' (or the start) and the ':' is the source, which holds
// neither ':' nor '='; that rules out matches inside keys and values.
func (ls Labels) findKey(needle string) (source, value string, ok bool) {
	s := ls.kv
	for off := 0; ; {
		i := strings.Index(s[off:], needle)
		if i < 0 {
			return "", "", false
		}
		i += off
		start := strings.LastIndexByte(s[:i], ';') + 1
		if src := s[start:i]; src != "" && strings.IndexByte(src, ':') < 0 && strings.IndexByte(src, '=') < 0 {
			v := s[i+len(needle):]
			return src, v[:strings.IndexByte(v, ';')], true
		}
		off = i + 1
	}
}

// Merge returns the union of ls and other; for a key in both, other's label
// wins.
func (ls Labels) Merge(other Labels) Labels {
	if other.IsEmpty() {
		return ls
	}
	return makeLabels(append(ls.Slice(), other.Slice()...))
}

// String returns the labels as Cilium prints them: "source:key=value" items
// in key order, joined by ','. CIDR labels print their prefix in standard
// notation ("cidr:2001:db8::/32").
func (ls Labels) String() string {
	var b strings.Builder
	for l := range ls.All() {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		if l.Source == SourceCIDR {
			if p, err := labelKeyToPrefix(l.Key); err == nil {
				b.WriteString(SourceCIDR + ":" + p.String())
				continue
			}
		}
		b.WriteString(l.String())
	}
	return b.String()
}

// MarshalJSON encodes the set as a JSON array of "source:key=value" strings.
func (ls Labels) MarshalJSON() ([]byte, error) {
	strs := make([]string, 0, ls.Len())
	for l := range ls.All() {
		strs = append(strs, l.String())
	}
	return json.Marshal(strs)
}

// UnmarshalJSON decodes a JSON array of label strings, each read by
// [ParseLabel].
func (ls *Labels) UnmarshalJSON(data []byte) error {
	var strs []string
	if err := json.Unmarshal(data, &strs); err != nil {
		return fmt.Errorf("labels: %w", err)
	}
	parsed, err := ParseLabels(strs...)
	if err != nil {
		return err
	}
	*ls = parsed
	return nil
}
