package identity

import (
	"strings"
	"unicode/utf8"
)

// Label sources. A label's source says where the label came from; the same
// key from two sources is two different labels.
const (
	// SourceUnspec is given to a label parsed without a source.
	SourceUnspec = "unspec"
	// SourceAny matches every source. It only appears in selectors; an
	// identity's labels never carry it.
	SourceAny = "any"
	// SourceK8s marks labels imported from Kubernetes (pod labels,
	// namespace labels, service account, cluster name).
	SourceK8s = "k8s"
	// SourceContainer marks labels from the container runtime.
	SourceContainer = "container"
	// SourceReserved marks the dataplane's own labels (reserved:host, ...).
	SourceReserved = "reserved"
	// SourceCIDR marks labels that name an address prefix (cidr:10.0.0.0/8).
	SourceCIDR = "cidr"
	// SourceCIDRGroup marks labels of CIDR groups.
	SourceCIDRGroup = "cidrgroup"
	// SourceFQDN marks labels of addresses learned from DNS lookups.
	SourceFQDN = "fqdn"
)

// Label is one source:key=value label. The zero Label is not valid.
//
// Labels are plain values: compare them with ==. A label with an empty
// Value prints as "source:key".
type Label struct {
	Source string
	Key    string
	Value  string
}

// ParseLabel parses "source:key=value" the way Cilium's labels.ParseLabel
// does:
//
//   - the source is everything before the first ':'; without one the
//     source is [SourceUnspec];
//   - "$name" is short for "reserved:name";
//   - the key runs to the first '=', the value is the rest (it may contain
//     '='); without '=' the value is empty;
//   - "reserved:=name" is read as "reserved:name".
//
// Unlike Cilium, which accepts anything, ParseLabel rejects what cannot be a
// label: an empty key, the selector-only source "any", a cidr label whose key
// is not a prefix or that has a value, ';' (the separator of the canonical
// form), control characters and invalid UTF-8.
func ParseLabel(s string) (Label, error) {
	l := parseLabel(s)
	if err := l.validate(false); err != nil {
		err.(*LabelError).Label = s
		return Label{}, err
	}
	return l, nil
}

// parseSelectLabel parses a label the way [ParseLabel] does, except that a
// label without a source (or with source "unspec") selects every source: its
// source is [SourceAny]. This is how Cilium reads labels that select.
func parseSelectLabel(s string) (Label, error) {
	l := parseLabel(s)
	if l.Source == SourceUnspec {
		l.Source = SourceAny
	}
	if err := l.validate(true); err != nil {
		err.(*LabelError).Label = s
		return Label{}, err
	}
	return l, nil
}

// parseSource splits "source:rest" at the first ':' with Cilium's shorthand
// "$name" for reserved labels. The source is "" when there is none.
func parseSource(s string) (source, rest string) {
	if s == "" {
		return "", ""
	}
	if s[0] == '$' {
		return SourceReserved, s[1:]
	}
	i := strings.IndexByte(s, ':')
	if i < 0 {
		return "", s
	}
	return s[:i], s[i+1:]
}

func parseLabel(s string) Label {
	src, next := parseSource(s)
	if src == "" {
		src = SourceUnspec
	}
	l := Label{Source: src}
	i := strings.IndexByte(next, '=')
	switch {
	case i < 0:
		l.Key = next
	case i == 0 && src == SourceReserved:
		l.Key = next[1:]
	default:
		l.Key, l.Value = next[:i], next[i+1:]
	}
	return l
}

// String returns "source:key=value", or "source:key" for an empty value.
// CIDR labels keep the form they are stored in ("cidr:2001-db8--0/32").
func (l Label) String() string {
	if l.Value == "" {
		return l.Source + ":" + l.Key
	}
	return l.Source + ":" + l.Key + "=" + l.Value
}

// validate checks l. Selecting labels (selector true) may carry SourceAny.
// It returns a *LabelError whose Label field the caller may overwrite.
func (l Label) validate(selector bool) error {
	fail := func(reason string) error {
		return &LabelError{Label: l.String(), Reason: reason}
	}
	if l.Source == "" {
		return fail("empty source")
	}
	if !selector && l.Source == SourceAny {
		return fail(`source "any" only selects; a label needs a real source`)
	}
	for i := 0; i < len(l.Source); i++ {
		if !isSourceByte(l.Source[i]) {
			return fail("source must consist of letters, digits, '-', '_' or '.'")
		}
	}
	if l.Key == "" {
		return fail("empty key")
	}
	if strings.IndexByte(l.Key, '=') >= 0 {
		return fail("key contains '='")
	}
	if reason := checkText(l.Key); reason != "" {
		return fail("key " + reason)
	}
	if reason := checkText(l.Value); reason != "" {
		return fail("value " + reason)
	}
	if l.Source == SourceCIDR {
		if l.Value != "" {
			return fail("a cidr label has no value")
		}
		if _, err := labelKeyToPrefix(l.Key); err != nil {
			return fail("key is not a prefix: " + err.Error())
		}
	}
	return nil
}

func isSourceByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '_' || c == '.'
}

// checkText rejects what would break the canonical form (';' ends a label
// there) or a text format (control characters, invalid UTF-8).
func checkText(s string) string {
	if !utf8.ValidString(s) {
		return "is not valid UTF-8"
	}
	for _, r := range s {
		switch {
		case r == ';':
			return "contains ';'"
		case r < 0x20 || r == 0x7f:
			return "contains a control character"
		}
	}
	return ""
}
