package flow

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/nodeplane/nodeplane/datapath/monitor"
)

// This file is the L7 part of the filters, with the semantics of Hubble's
// pkg/hubble/filters (http.go, fqdn.go, protocol.go).

var (
	httpStatusCodeFull   = regexp.MustCompile(`^[1-5][0-9]{2}$`)
	httpStatusCodePrefix = regexp.MustCompile(`^[1-5][0-9]?\+$`)
)

// l7Filters adds the L7 predicates of ff.
func l7Filters(ff *Filter, add func(func(*Flow) bool, error) error) error {
	// Hubble refuses HTTP filters next to an event type filter that
	// cannot match access-log records.
	l7Types := len(ff.EventType) == 0 || slices.ContainsFunc(ff.EventType, func(t EventTypeFilter) bool {
		return t.Type == int32(monitor.MessageTypeAccessLog)
	})
	httpGiven := len(ff.HTTPStatusCode)+len(ff.HTTPMethod)+len(ff.HTTPPath)+len(ff.HTTPURL)+len(ff.HTTPHeader) > 0
	if httpGiven && !l7Types {
		return errors.New("filtering by http fields requires the event type filter to match 'l7' events")
	}
	return errors.Join(
		add(httpStatusFilter(ff.HTTPStatusCode)),
		add(httpMethodFilter(ff.HTTPMethod), nil),
		add(httpRegexpFilter(ff.HTTPPath, "http path", func(h *HTTP) (string, bool) {
			u, err := url.ParseRequestURI(h.URL)
			if err != nil {
				return "", false
			}
			return u.Path, true
		})),
		add(httpRegexpFilter(ff.HTTPURL, "http url", func(h *HTTP) (string, bool) { return h.URL, true })),
		add(httpHeaderFilter(ff.HTTPHeader), nil),
		add(dnsQueryFilter(ff.DNSQuery)),
	)
}

func httpStatusFilter(codes []string) (func(*Flow) bool, error) {
	if len(codes) == 0 {
		return nil, nil
	}
	var full, prefix []string
	for _, s := range codes {
		switch {
		case httpStatusCodeFull.MatchString(s):
			full = append(full, s)
		case httpStatusCodePrefix.MatchString(s):
			prefix = append(prefix, strings.TrimSuffix(s, "+"))
		default:
			return nil, fmt.Errorf("invalid status code prefix: %q", s)
		}
	}
	return func(f *Flow) bool {
		h := f.L7.HTTP
		if h == nil || h.Code == 0 {
			return false
		}
		code := fmt.Sprintf("%03d", h.Code)
		return slices.Contains(full, code) || slices.ContainsFunc(prefix, func(p string) bool { return strings.HasPrefix(code, p) })
	}, nil
}

func httpMethodFilter(methods []string) func(*Flow) bool {
	if len(methods) == 0 {
		return nil
	}
	return func(f *Flow) bool {
		h := f.L7.HTTP
		return h != nil && h.Method != "" && slices.ContainsFunc(methods, func(m string) bool { return strings.EqualFold(h.Method, m) })
	}
}

func httpRegexpFilter(exprs []string, what string, get func(*HTTP) (string, bool)) (func(*Flow) bool, error) {
	if len(exprs) == 0 {
		return nil, nil
	}
	res := make([]*regexp.Regexp, 0, len(exprs))
	for _, e := range exprs {
		re, err := regexp.Compile(e)
		if err != nil {
			return nil, fmt.Errorf("invalid %s filter: %s: %w", what, e, err)
		}
		res = append(res, re)
	}
	return func(f *Flow) bool {
		h := f.L7.HTTP
		if h == nil || h.URL == "" {
			return false
		}
		s, ok := get(h)
		return ok && slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(s) })
	}, nil
}

func httpHeaderFilter(headers []HTTPHeader) func(*Flow) bool {
	if len(headers) == 0 {
		return nil
	}
	return func(f *Flow) bool {
		h := f.L7.HTTP
		return h != nil && slices.ContainsFunc(h.Headers, func(x HTTPHeader) bool { return slices.Contains(headers, x) })
	}
}

func dnsQueryFilter(patterns []string) (func(*Flow) bool, error) {
	if len(patterns) == 0 {
		return nil, nil
	}
	res := make([]*regexp.Regexp, 0, len(patterns))
	for _, p := range patterns {
		re, err := regexp.Compile(p)
		if err != nil {
			return nil, fmt.Errorf("invalid DNS query filter: %w", err)
		}
		res = append(res, re)
	}
	return func(f *Flow) bool {
		d := f.L7.DNS
		return d != nil && slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(d.Query) })
	}, nil
}
