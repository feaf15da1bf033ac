package identity

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/nodeplane/nodeplane"
)

// SelectorOperator is the operator of a [SelectorRequirement].
type SelectorOperator string

// The operators of Kubernetes label selectors.
const (
	// SelectorOpIn: the label exists and its value is one of Values.
	SelectorOpIn SelectorOperator = "In"
	// SelectorOpNotIn: the label is absent, or its value is none of Values.
	SelectorOpNotIn SelectorOperator = "NotIn"
	// SelectorOpExists: the label exists, whatever its value.
	SelectorOpExists SelectorOperator = "Exists"
	// SelectorOpDoesNotExist: the label is absent.
	SelectorOpDoesNotExist SelectorOperator = "DoesNotExist"
)

// LabelSelector is the specification of a selector as written in a policy:
// the shape of Kubernetes' metav1.LabelSelector, as Cilium reads it. Keys may
// carry a source ("k8s:app", "reserved:host"); a key without one selects the
// label from every source ("app" is "any:app").
type LabelSelector struct {
	// MatchLabels requires each key to be present with exactly that value.
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
	// MatchExpressions are further requirements; all must hold.
	MatchExpressions []SelectorRequirement `json:"matchExpressions,omitempty"`
}

// SelectorRequirement is one entry of [LabelSelector.MatchExpressions].
type SelectorRequirement struct {
	Key      string           `json:"key"`
	Operator SelectorOperator `json:"operator"`
	// Values must be non-empty for In and NotIn, and empty for Exists and
	// DoesNotExist.
	Values []string `json:"values,omitempty"`
}

// Selector is a compiled label selector. It selects a label set when every
// requirement holds; the zero Selector, like an empty [LabelSelector],
// selects every label set.
//
// A requirement names a label by source and key. Source "any" matches the
// key from every source; any other source must match exactly. Source "cidr"
// also matches every cidr label whose prefix lies inside the named prefix, so
// that "cidr:10.0.0.0/8" selects the identity of 10.1.0.0/16. A requirement
// on an absent label holds for NotIn and DoesNotExist and fails for In and
// Exists, as in Kubernetes.
//
// Selectors are immutable and safe for concurrent use.
type Selector struct {
	reqs []requirement
	str  string
}

type requirement struct {
	source string
	key    string
	op     SelectorOperator
	// values is sorted and free of duplicates.
	values []string
	// prefix is the prefix a cidr-source key names; prefixOK is false for
	// a cidr key that does not parse (such a label is never found, as in
	// Cilium).
	prefix   netip.Prefix
	prefixOK bool
	// needle is ":" + key + "=", for [Labels.findKey].
	needle string
}

// NewSelector validates spec as Cilium validates a policy's selectors and
// compiles it. Every invalid field is reported as a [*SelectorError] (joined
// with [errors.Join] when there are several): keys must be an optional
// alphanumeric source, ':', and a Kubernetes qualified name; values must be
// Kubernetes label values; operators must be In, NotIn, Exists or
// DoesNotExist with values only for In and NotIn.
func NewSelector(spec LabelSelector) (Selector, error) {
	var errs []error
	fail := func(field, value, reason string) {
		errs = append(errs, &SelectorError{Field: field, Value: value, Reason: reason})
	}

	reqs := make([]requirement, 0, len(spec.MatchLabels)+len(spec.MatchExpressions))
	keys := make([]string, 0, len(spec.MatchLabels))
	for k := range spec.MatchLabels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := spec.MatchLabels[k]
		field := "matchLabels[" + k + "]"
		bad := false
		if reason := checkSelectorKey(k); reason != "" {
			fail(field, k, reason)
			bad = true
		}
		if reason := checkLabelValue(v); reason != "" {
			fail(field, v, reason)
			bad = true
		}
		if !bad {
			reqs = append(reqs, newRequirement(k, SelectorOpIn, []string{v}))
		}
	}

	for i, e := range spec.MatchExpressions {
		field := fmt.Sprintf("matchExpressions[%d]", i)
		bad := false
		switch e.Operator {
		case SelectorOpIn, SelectorOpNotIn:
			if len(e.Values) == 0 {
				fail(field+".values", "", "must be specified when `operator` is 'In' or 'NotIn'")
				bad = true
			}
		case SelectorOpExists, SelectorOpDoesNotExist:
			if len(e.Values) > 0 {
				fail(field+".values", strings.Join(e.Values, ","), "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
				bad = true
			}
		default:
			fail(field+".operator", string(e.Operator), "not a valid selector operator (want In, NotIn, Exists or DoesNotExist)")
			bad = true
		}
		if reason := checkSelectorKey(e.Key); reason != "" {
			fail(field+".key", e.Key, reason)
			bad = true
		}
		for j, v := range e.Values {
			if reason := checkLabelValue(v); reason != "" {
				fail(fmt.Sprintf("%s.values[%d]", field, j), v, reason)
				bad = true
			}
		}
		if !bad {
			reqs = append(reqs, newRequirement(e.Key, e.Operator, e.Values))
		}
	}
	if len(errs) > 0 {
		return Selector{}, errors.Join(errs...)
	}
	return makeSelector(reqs), nil
}

// SelectorFromLabels returns the selector that requires each label, with its
// source ("any" for every source) and value: Cilium's NewESFromLabels. The
// labels skip the Kubernetes syntax check of [NewSelector], so that
// selectors for reserved labels and IPv6 cidr labels can be built; they must
// still be valid labels (as [NewSelector] reads them).
func SelectorFromLabels(labels ...Label) (Selector, error) {
	reqs := make([]requirement, 0, len(labels))
	for _, l := range labels {
		if err := l.validate(true); err != nil {
			return Selector{}, err
		}
		r := requirement{source: l.Source, key: l.Key, op: SelectorOpIn, values: []string{l.Value}}
		if r.source == SourceUnspec {
			r.source = SourceAny
		}
		r.compilePrefix()
		reqs = append(reqs, r)
	}
	return makeSelector(reqs), nil
}

// CIDRSelector returns the selector a toCIDR rule uses for prefix: it
// requires the prefix's cidr label, so it selects the identities of every
// prefix inside it; for a zero-length prefix it requires the world label of
// the family (see [WorldLabel]).
func CIDRSelector(prefix netip.Prefix, stack nodeplane.StackMode) (Selector, error) {
	if !prefix.IsValid() {
		return Selector{}, fmt.Errorf("cidr selector for %v: %w", prefix, ErrInvalidPrefix)
	}
	if prefix.Bits() == 0 {
		return SelectorFromLabels(WorldLabel(prefix.Addr(), stack))
	}
	l, err := CIDRLabel(prefix)
	if err != nil {
		return Selector{}, err
	}
	return SelectorFromLabels(l)
}

// newRequirement builds a requirement from a validated selector key: the
// source is what precedes ':' ("any" without one, as for "unspec").
func newRequirement(key string, op SelectorOperator, values []string) requirement {
	src, k := parseSource(key)
	if src == "" || src == SourceUnspec {
		src = SourceAny
	}
	vs := slices.Clone(values)
	slices.Sort(vs)
	vs = slices.Compact(vs)
	r := requirement{source: src, key: k, op: op, values: vs}
	r.compilePrefix()
	return r
}

func (r *requirement) compilePrefix() {
	r.needle = ":" + r.key + "="
	if r.source != SourceCIDR {
		return
	}
	if p, err := labelKeyToPrefix(r.key); err == nil {
		r.prefix, r.prefixOK = p, true
	}
}

func makeSelector(reqs []requirement) Selector {
	slices.SortFunc(reqs, compareRequirements)
	reqs = slices.CompactFunc(reqs, func(a, b requirement) bool { return compareRequirements(a, b) == 0 })
	var b strings.Builder
	for i, r := range reqs {
		if i > 0 {
			b.WriteByte(',')
		}
		r.format(&b)
	}
	return Selector{reqs: reqs, str: b.String()}
}

func compareRequirements(a, b requirement) int {
	return cmp.Or(
		strings.Compare(a.source, b.source),
		strings.Compare(a.key, b.key),
		strings.Compare(string(a.op), string(b.op)),
		slices.Compare(a.values, b.values),
	)
}

// format renders a requirement in Kubernetes' selector syntax with the
// source before the key: "k8s:app=web", "any:env in (dev,prod)",
// "any:tier notin (db)", "any:debug", "!any:debug".
func (r requirement) format(b *strings.Builder) {
	key := r.source + ":" + quoteIfNeeded(r.key)
	switch r.op {
	case SelectorOpIn:
		if len(r.values) == 1 {
			b.WriteString(key + "=" + quoteIfNeeded(r.values[0]))
			return
		}
		b.WriteString(key + " in (")
		formatValues(b, r.values)
		b.WriteByte(')')
	case SelectorOpNotIn:
		b.WriteString(key + " notin (")
		formatValues(b, r.values)
		b.WriteByte(')')
	case SelectorOpExists:
		b.WriteString(key)
	case SelectorOpDoesNotExist:
		b.WriteString("!" + key)
	}
}

func formatValues(b *strings.Builder, values []string) {
	for i, v := range values {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(quoteIfNeeded(v))
	}
}

// quoteIfNeeded quotes s unless it consists only of characters that valid
// keys and values use, so that the canonical form stays unambiguous for
// selectors built from arbitrary labels.
func quoteIfNeeded(s string) string {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isAlnumByte(c) && c != '-' && c != '_' && c != '.' && c != '/' {
			return strconv.Quote(s)
		}
	}
	return s
}

// Matches reports whether the selector selects the label set.
func (s Selector) Matches(ls Labels) bool {
	for i := range s.reqs {
		if !s.reqs[i].matches(ls) {
			return false
		}
	}
	return true
}

func (r *requirement) matches(ls Labels) bool {
	var (
		v  string
		ok bool
	)
	switch {
	case r.source == SourceCIDR && !r.prefixOK:
	case r.source == SourceCIDR:
		v, ok = ls.lookupPrefix(r.source, r.key, r.prefix)
	default:
		var src string
		src, v, ok = ls.findKey(r.needle)
		if ok && r.source != SourceAny && src != r.source {
			v, ok = "", false
		}
	}
	switch r.op {
	case SelectorOpIn:
		return ok && slices.Contains(r.values, v)
	case SelectorOpNotIn:
		return !ok || !slices.Contains(r.values, v)
	case SelectorOpExists:
		return ok
	case SelectorOpDoesNotExist:
		return !ok
	}
	return false
}

// IsWildcard reports whether the selector has no requirements and so
// selects every label set.
func (s Selector) IsWildcard() bool { return len(s.reqs) == 0 }

// String returns the canonical form of the selector: its requirements,
// normalised (matchLabels entries and single-value In are "source:key=value";
// values sorted and deduplicated) and sorted, joined by ','. Selectors that
// select by the same requirements have the same string, so it can key a
// selector cache. A selector without requirements is "<all>".
func (s Selector) String() string {
	if s.str == "" {
		return "<all>"
	}
	return s.str
}
