package flow

import (
	"fmt"
	"slices"
	"strings"
)

// selector is a Kubernetes label selector over Cilium labels
// ("source:key=value"), as Hubble's label filters take it: a key with a
// source prefix ("k8s:app") matches labels of that source only, a key
// without one (or "any:") labels of any source.
type selector []requirement

type requirement struct {
	source, key string
	op          string // "exists", "!", "=", "!=", "in", "notin"
	values      []string
}

func parseSelector(s string) (selector, error) {
	var sel selector
	for _, part := range splitTop(s) {
		part = strings.TrimSpace(part)
		if part == "" {
			return nil, fmt.Errorf("label selector %q: empty requirement", s)
		}
		r, err := parseRequirement(part)
		if err != nil {
			return nil, fmt.Errorf("label selector %q: %v", s, err)
		}
		sel = append(sel, r)
	}
	if len(sel) == 0 {
		return nil, fmt.Errorf("empty label selector")
	}
	return sel, nil
}

// splitTop splits at commas outside parentheses.
func splitTop(s string) []string {
	var out []string
	depth, start := 0, 0
	for i, c := range s {
		switch c {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				out = append(out, s[start:i])
				start = i + 1
			}
		}
	}
	return append(out, s[start:])
}

func parseRequirement(s string) (requirement, error) {
	var r requirement
	var key string
	switch {
	case strings.HasPrefix(s, "!"):
		key, r.op = strings.TrimSpace(s[1:]), "!"
	case strings.Contains(s, "!="):
		k, v, _ := strings.Cut(s, "!=")
		key, r.op, r.values = k, "!=", []string{strings.TrimSpace(v)}
	case strings.Contains(s, "=="):
		k, v, _ := strings.Cut(s, "==")
		key, r.op, r.values = k, "=", []string{strings.TrimSpace(v)}
	case strings.Contains(s, "="):
		k, v, _ := strings.Cut(s, "=")
		key, r.op, r.values = k, "=", []string{strings.TrimSpace(v)}
	default:
		fields := strings.Fields(s)
		switch {
		case len(fields) == 1:
			key, r.op = fields[0], "exists"
		case len(fields) >= 3 && (fields[1] == "in" || fields[1] == "notin"):
			key, r.op = fields[0], fields[1]
			rest := strings.TrimSpace(strings.SplitN(s, fields[1], 2)[1])
			if !strings.HasPrefix(rest, "(") || !strings.HasSuffix(rest, ")") {
				return r, fmt.Errorf("%q: want a parenthesised value list", s)
			}
			for _, v := range strings.Split(rest[1:len(rest)-1], ",") {
				r.values = append(r.values, strings.TrimSpace(v))
			}
		default:
			return r, fmt.Errorf("cannot parse requirement %q", s)
		}
	}
	key = strings.TrimSpace(key)
	if src, k, ok := strings.Cut(key, ":"); ok {
		r.source, key = src, k
	}
	if r.source == "any" {
		r.source = ""
	}
	if key == "" || strings.ContainsAny(key, " ()") {
		return r, fmt.Errorf("invalid key in %q", s)
	}
	r.key = key
	return r, nil
}

func (s selector) matches(labels []string) bool {
	for _, r := range s {
		if !r.matches(labels) {
			return false
		}
	}
	return true
}

func (r requirement) matches(labels []string) bool {
	found, valueIn := false, false
	for _, l := range labels {
		src, kv, ok := strings.Cut(l, ":")
		if !ok {
			src, kv = "", l
		}
		if r.source != "" && src != r.source {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		if k != r.key {
			continue
		}
		found = true
		if slices.Contains(r.values, v) {
			valueIn = true
		}
	}
	switch r.op {
	case "exists":
		return found
	case "!":
		return !found
	case "=", "in":
		return valueIn
	case "!=", "notin":
		return !valueIn
	}
	return false
}
