package fqdn

import (
	"errors"
	"testing"
)

// The cases follow Cilium's pkg/fqdn/matchpattern tests and the policy
// documentation: '*' stays within one label, "**." spans labels, a lone '*'
// matches everything, names are case-insensitive and fully qualified.
func TestSelectorMatches(t *testing.T) {
	for _, tc := range []struct {
		sel   Selector
		name  string
		match bool
	}{
		{Selector{MatchName: "example.test"}, "example.test", true},
		{Selector{MatchName: "example.test"}, "example.test.", true},
		{Selector{MatchName: "Example.TEST"}, "eXample.test", true},
		{Selector{MatchName: "example.test"}, "www.example.test", false},
		{Selector{MatchName: "example.test."}, "example.test", true},
		{Selector{MatchPattern: "*.example.test"}, "a.example.test", true},
		{Selector{MatchPattern: "*.example.test"}, "A-b_9.Example.Test.", true},
		{Selector{MatchPattern: "*.example.test"}, "a.b.example.test", false},
		{Selector{MatchPattern: "*.example.test"}, "example.test", false},
		// '*' matches zero characters too, as Cilium's [..]* does.
		{Selector{MatchPattern: "*.example.test"}, ".example.test", true},
		{Selector{MatchPattern: "*.example.test"}, "aexample.test", false},
		{Selector{MatchPattern: "*.example.test"}, "a.example.testx", false},
		{Selector{MatchPattern: "sub*.example.test"}, "subzero.example.test", true},
		{Selector{MatchPattern: "sub*.example.test"}, "sub.example.test", true},
		{Selector{MatchPattern: "sub*.example.test"}, "xsub.example.test", false},
		{Selector{MatchPattern: "*"}, "anything.at.all", true},
		{Selector{MatchPattern: "*"}, ".", true},
		{Selector{MatchPattern: "**"}, "x.y", true},
		{Selector{MatchPattern: "**.example.test"}, "a.b.example.test", true},
		{Selector{MatchPattern: "**.example.test"}, "a.example.test", true},
		{Selector{MatchPattern: "**.example.test"}, "example.test", false},
		{Selector{MatchPattern: "example.test"}, "example.test", true},
		{Selector{MatchPattern: "example.test"}, "exampleXtest", false},
		{Selector{MatchPattern: "a**b.test"}, "axxb.test", true},
	} {
		m, err := Compile(tc.sel)
		if err != nil {
			t.Fatalf("%v: %v", tc.sel, err)
		}
		if got := m.Matches(tc.name); got != tc.match {
			t.Errorf("%v matches %q = %v, want %v (regexp %s)", tc.sel, tc.name, got, tc.match, PatternRegexp(tc.sel.MatchPattern))
		}
	}
}

func TestPatternRegexpIsCiliums(t *testing.T) {
	for pattern, want := range map[string]string{
		"*":              `(^([-a-zA-Z0-9_]+[.])+$)|(^[.]$)`,
		"*.":             `(^([-a-zA-Z0-9_]+[.])+$)|(^[.]$)`,
		"*.Example.test": `^[-a-zA-Z0-9_]*[.]example[.]test[.]$`,
		"**.a.b":         `^([-a-zA-Z0-9_]+([.][-a-zA-Z0-9_]+){0,})[.]a[.]b[.]$`,
	} {
		if got := PatternRegexp(pattern); got != want {
			t.Errorf("PatternRegexp(%q) = %s, want %s", pattern, got, want)
		}
	}
}

func TestCompileRejects(t *testing.T) {
	for _, sel := range []Selector{
		{},
		{MatchName: "a.test", MatchPattern: "*.test"},
		{MatchName: "*.test"},
		{MatchPattern: "a[b].test"},
		{MatchPattern: "a+.test"},
		{MatchName: string(make([]byte, 256))},
	} {
		if _, err := Compile(sel); !errors.Is(err, ErrInvalidSelector) {
			t.Errorf("Compile(%q) = %v, want ErrInvalidSelector", sel, err)
		}
	}
}
