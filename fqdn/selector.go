package fqdn

import (
	"fmt"
	"regexp"
	"strings"
)

// MaxNameLength is the longest matchName or matchPattern Cilium accepts.
const MaxNameLength = 255

// dnsChars is the character class a '*' of a matchPattern matches, as in
// Cilium's allowedDNSCharsREGroup.
const dnsChars = "[-a-zA-Z0-9_]"

// multiLabel is what a leading "**." of a pattern becomes: one or more
// whole labels, each followed by its dot (Cilium's dnsWildcardREGroup).
const multiLabel = "(" + dnsChars + "+([.]" + dnsChars + "+){0,})[.]"

// matchAll is the regexp of a pattern made only of '*' (and an optional
// trailing dot): every name, including the root.
const matchAll = "(^(" + dnsChars + "+[.])+$)|(^[.]$)"

// Normalize returns name as Cilium compares names: without surrounding
// spaces, lower case, fully qualified (with a trailing dot).
func Normalize(name string) string {
	name = strings.ToLower(strings.TrimSpace(name))
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}

// Selector is one toFQDNs item (or one DNS rule): exactly one of MatchName
// and MatchPattern is set. It is a comparable value; [Selector.Label] is
// the label identities selected by it carry.
type Selector struct {
	MatchName    string
	MatchPattern string
}

func (s Selector) String() string {
	if s.MatchName != "" {
		return "matchName " + s.MatchName
	}
	return "matchPattern " + s.MatchPattern
}

// LabelKey is the key of the fqdn: label that marks identities selected by
// s, as Cilium's FQDNSelector.IdentityLabel writes it: the name or the
// pattern as given.
func (s Selector) LabelKey() string {
	if s.MatchName != "" {
		return s.MatchName
	}
	return s.MatchPattern
}

// isWildcard reports whether a pattern is only '*'s with an optional
// trailing dot (Cilium's isDNSWildcard).
func isWildcard(p string) bool {
	p = strings.TrimSuffix(p, ".")
	return p != "" && strings.Trim(p, "*") == ""
}

// PatternRegexp returns the anchored regular expression of a matchPattern,
// as Cilium's matchpattern.ToAnchoredRegexp builds it from the sanitized
// pattern: '.' is a literal dot, a run of '*' matches [-a-zA-Z0-9_]*, a
// leading run of two or more '*' followed by '.' matches one or more whole
// labels, and a pattern of only '*' matches every name. The pattern is made
// fully qualified first unless it is only '*'. It does not validate.
func PatternRegexp(pattern string) string {
	pattern = strings.ToLower(strings.TrimSpace(pattern))
	if isWildcard(pattern) {
		return matchAll
	}
	pattern = Normalize(pattern)
	var b strings.Builder
	b.WriteByte('^')
	start, stars := 0, 0
	for stars < len(pattern) && pattern[stars] == '*' {
		stars++
	}
	if stars >= 2 && stars < len(pattern) && pattern[stars] == '.' {
		b.WriteString(multiLabel)
		start = stars + 1
	}
	for i := start; i < len(pattern); i++ {
		switch c := pattern[i]; c {
		case '.':
			b.WriteString("[.]")
		case '*':
			for i+1 < len(pattern) && pattern[i+1] == '*' {
				i++
			}
			b.WriteString(dnsChars + "*")
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('$')
	return b.String()
}

func validChars(s string, star bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '-', c == '_', c == '.', star && c == '*':
		default:
			return false
		}
	}
	return true
}

// Matcher is a compiled [Selector]. It is safe for concurrent use.
type Matcher struct {
	sel  Selector
	name string         // normalized matchName
	re   *regexp.Regexp // matchPattern
}

// Compile validates a selector as Cilium validates FQDN selectors and
// compiles it. Errors wrap [ErrInvalidSelector].
func Compile(s Selector) (*Matcher, error) {
	fail := func(format string, args ...any) (*Matcher, error) {
		return nil, fmt.Errorf("%w: %s: %s", ErrInvalidSelector, s, fmt.Sprintf(format, args...))
	}
	switch {
	case s.MatchName != "" && s.MatchPattern != "":
		return fail("only one of matchName or matchPattern is allowed")
	case s.MatchName == "" && s.MatchPattern == "":
		return fail("one of matchName or matchPattern is required")
	case s.MatchName != "":
		n := strings.TrimSpace(s.MatchName)
		if len(n) > MaxNameLength {
			return fail("longer than %d characters", MaxNameLength)
		}
		if !validChars(n, false) {
			return fail("only 0-9, a-z, A-Z and ., -, _ are allowed")
		}
		return &Matcher{sel: s, name: Normalize(n)}, nil
	}
	p := strings.TrimSpace(s.MatchPattern)
	if len(p) > MaxNameLength {
		return fail("longer than %d characters", MaxNameLength)
	}
	if !validChars(p, true) {
		return fail("only 0-9, a-z, A-Z and ., -, _ and * are allowed")
	}
	re, err := regexp.Compile(PatternRegexp(p))
	if err != nil {
		return fail("%v", err)
	}
	return &Matcher{sel: s, re: re}, nil
}

// Selector returns the selector m was compiled from.
func (m *Matcher) Selector() Selector { return m.sel }

// Matches reports whether the selector selects a DNS name. The name is
// normalized first (see [Normalize]).
func (m *Matcher) Matches(name string) bool {
	name = Normalize(name)
	if m.re == nil {
		return name == m.name
	}
	return m.re.MatchString(name)
}
