package fqdn

import (
	"strings"
	"testing"
)

// globLabel is an independent oracle for one label of a pattern without
// "**.": '*' matches any run of [-a-z0-9_].
func globLabel(p, s string) bool {
	if p == "" {
		return s == ""
	}
	if p[0] == '*' {
		for i := 0; i <= len(s); i++ {
			if i > 0 && !validChars(s[i-1:i], false) || i > 0 && s[i-1] == '.' {
				return false
			}
			if globLabel(p[1:], s[i:]) {
				return true
			}
		}
		return false
	}
	return s != "" && p[0] == s[0] && globLabel(p[1:], s[1:])
}

func FuzzMatchPattern(f *testing.F) {
	f.Add("*.example.test", "a.example.test")
	f.Add("**.example.test", "a.b.example.test")
	f.Add("*", "x.")
	f.Add("a*b*c.test", "abc.test")
	f.Fuzz(func(t *testing.T, pattern, name string) {
		m, err := Compile(Selector{MatchPattern: pattern})
		if err != nil {
			return
		}
		got := m.Matches(name)
		p := strings.ToLower(strings.TrimSpace(pattern))
		n := Normalize(name)
		if isWildcard(p) || strings.HasPrefix(p, "**") || !validChars(strings.TrimSuffix(n, "."), false) && n != "." {
			return
		}
		// Label by label: the pattern's and the name's labels must pair
		// up, each matching as a glob.
		pl := strings.Split(Normalize(p), ".")
		nl := strings.Split(n, ".")
		want := len(pl) == len(nl)
		for i := 0; want && i < len(pl); i++ {
			want = globLabel(pl[i], nl[i])
		}
		if got != want {
			t.Fatalf("pattern %q name %q: got %v, oracle %v (%s)", pattern, name, got, want, PatternRegexp(pattern))
		}
	})
}
