package identity

import (
	"encoding/json"
	"errors"
	"testing"
)

// FuzzParseLabel checks that a parsed label prints back to itself and that a
// set built from it survives the canonical form.
func FuzzParseLabel(f *testing.F) {
	for _, s := range []string{
		"k8s:app=web", "app", "$host", "reserved:=host", ":x", "k8s:a=b=c", "k8s:a:b=c",
		"cidr:10.0.0.0/8", "cidr:2001-db8--0/32", "cidr:0--1/128", "any:x", "k8s:", "k8s:a;b", "\xff",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		l, err := ParseLabel(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidLabel) {
				t.Fatalf("ParseLabel(%q) error %v does not wrap ErrInvalidLabel", s, err)
			}
			return
		}
		again, err := ParseLabel(l.String())
		if err != nil || again != l {
			t.Fatalf("ParseLabel(%q) = %#v, but its String %q parses to %#v, %v", s, l, l.String(), again, err)
		}
		ls, err := NewLabels(l)
		if err != nil {
			t.Fatalf("NewLabels(%#v): %v", l, err)
		}
		back, err := LabelsFromKey(ls.Key())
		if err != nil || back != ls {
			t.Fatalf("LabelsFromKey(%q) = %v, %v", ls.Key(), back, err)
		}
		if got := ls.Slice(); len(got) != 1 || got[0] != l {
			t.Fatalf("Slice() = %#v, want [%#v]", got, l)
		}
		if !ls.Has(l) {
			t.Fatalf("%v does not have its own label %v", ls, l)
		}
		sel, err := SelectorFromLabels(l)
		if err != nil {
			t.Fatalf("SelectorFromLabels(%#v): %v", l, err)
		}
		if !sel.Matches(ls) {
			t.Fatalf("selector %s does not select %v", sel, ls)
		}
	})
}

// FuzzParseLabelList checks that label lists canonicalise consistently.
func FuzzParseLabelList(f *testing.F) {
	for _, s := range []string{
		"k8s:app=web,k8s:io.kubernetes.pod.namespace=prod",
		"k8s:app=a,container:app=b",
		"reserved:host, k8s:node=a",
		"cidr:10.0.0.0/8,reserved:world",
		",", "k8s:a=b,,", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ls, err := ParseLabelList(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidLabel) {
				t.Fatalf("error %v does not wrap ErrInvalidLabel", err)
			}
			return
		}
		back, err := LabelsFromKey(ls.Key())
		if err != nil || back != ls {
			t.Fatalf("LabelsFromKey(%q) = %v, %v", ls.Key(), back, err)
		}
		rebuilt, err := NewLabels(ls.Slice()...)
		if err != nil || rebuilt != ls {
			t.Fatalf("NewLabels(Slice()) = %v, %v; want %v", rebuilt, err, ls)
		}
		data, err := json.Marshal(ls)
		if err != nil {
			t.Fatal(err)
		}
		var fromJSON Labels
		if err := json.Unmarshal(data, &fromJSON); err != nil || fromJSON != ls {
			t.Fatalf("JSON %s round trip = %v, %v", data, fromJSON, err)
		}
		if ls.Len() != len(ls.Slice()) {
			t.Fatalf("Len() = %d, Slice() has %d", ls.Len(), len(ls.Slice()))
		}
	})
}

// FuzzLabelsFromKey checks that only canonical keys are accepted.
func FuzzLabelsFromKey(f *testing.F) {
	for _, s := range []string{"k8s:app=web;", "k8s:b=1;k8s:a=2;", "cidr:10.0.0.0/8=;reserved:world=;", "x", ";", "a:b=c=d;"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ls, err := LabelsFromKey(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidLabel) {
				t.Fatalf("error %v does not wrap ErrInvalidLabel", err)
			}
			return
		}
		if ls.Key() != s {
			t.Fatalf("LabelsFromKey(%q).Key() = %q", s, ls.Key())
		}
		rebuilt, err := NewLabels(ls.Slice()...)
		if err != nil || rebuilt != ls {
			t.Fatalf("NewLabels(Slice()) = %v, %v", rebuilt, err)
		}
	})
}

// FuzzNewSelector feeds selector JSON and a label list: compilation either
// fails with SelectorErrors or yields a selector whose canonical string is
// a fixed point, and matching never panics and agrees with a direct
// evaluation of the requirements.
func FuzzNewSelector(f *testing.F) {
	for _, tc := range [][2]string{
		{`{"matchLabels":{"app":"web"}}`, "k8s:app=web"},
		{`{"matchExpressions":[{"key":"k8s:env","operator":"In","values":["a","b"]}]}`, "k8s:env=b"},
		{`{"matchExpressions":[{"key":"tier","operator":"NotIn","values":["db"]}]}`, "container:tier=db"},
		{`{"matchExpressions":[{"key":"x","operator":"Exists"},{"key":"y","operator":"DoesNotExist"}]}`, "k8s:x"},
		{`{"matchLabels":{"cidr:10.0.0.0/8":""}}`, "cidr:10.1.0.0/16,reserved:world"},
		{`{"matchExpressions":[{"key":"a:b:c","operator":"Foo"}]}`, ""},
		{`{}`, ""},
	} {
		f.Add(tc[0], tc[1])
	}
	f.Fuzz(func(t *testing.T, spec, labels string) {
		var ls LabelSelector
		if json.Unmarshal([]byte(spec), &ls) != nil {
			return
		}
		sel, err := NewSelector(ls)
		if err != nil {
			var se *SelectorError
			if !errors.As(err, &se) || !errors.Is(err, ErrInvalidSelector) {
				t.Fatalf("NewSelector error %v is not a *SelectorError", err)
			}
			return
		}
		set, err := ParseLabelList(labels)
		if err != nil {
			return
		}
		got := sel.Matches(set)

		// Evaluate the spec directly, requirement by requirement.
		want := true
		for k, v := range ls.MatchLabels {
			want = want && evalRequirement(k, SelectorOpIn, []string{v}, set)
		}
		for _, e := range ls.MatchExpressions {
			want = want && evalRequirement(e.Key, e.Operator, e.Values, set)
		}
		if got != want {
			t.Fatalf("%s.Matches(%v) = %v, direct evaluation says %v", sel, set, got, want)
		}
	})
}

func evalRequirement(key string, op SelectorOperator, values []string, ls Labels) bool {
	src, k := parseSource(key)
	if src == "" {
		src = SourceAny
	}
	v, ok := ls.lookup(src, k)
	in := false
	for _, want := range values {
		in = in || want == v
	}
	switch op {
	case SelectorOpIn:
		return ok && in
	case SelectorOpNotIn:
		return !ok || !in
	case SelectorOpExists:
		return ok
	}
	return !ok
}
