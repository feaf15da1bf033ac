package policy

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// This file is the HTTP part of L7 policy: the rules' checks, their
// matcher (Envoy's semantics, as Cilium configures it), the proxy ports
// they compile to, and the lookup the HTTP proxy asks per connection.

// ProxyPorts are the ports of a node's L7 proxies (0: none).
type ProxyPorts struct {
	// HTTP is the HTTP proxy's port (proxy/httpproxy).
	HTTP uint16
	// DNS is the DNS proxy's port (proxy/dnsproxy).
	DNS uint16
}

// Proxy port priorities of policy-map entries (mapstate.Entry
// .ProxyPortPriority, higher wins): Cilium's listener priorities, HTTP 101
// and DNS 121, inverted into a byte as Cilium v1.20 does (254 - priority).
const (
	ProxyPriorityHTTP uint8 = 254 - 101
	ProxyPriorityDNS  uint8 = 254 - 121
)

// httpRules checks the HTTP rules of a port rule as Cilium's
// PortRuleHTTP.Sanitize does, and, where Cilium leaves a bad regular
// expression to Envoy to refuse, refuses it here: a rule that cannot be
// enforced must not be accepted.
func (v *validator) httpRules(pr PortRule, path string) {
	if pr.Rules == nil {
		return
	}
	for i, h := range pr.Rules.HTTP {
		hp := fmt.Sprintf("%s.rules.http[%d]", path, i)
		for _, f := range []struct{ name, re string }{{"path", h.Path}, {"method", h.Method}, {"host", h.Host}} {
			if f.re == "" {
				continue
			}
			if _, err := regexp.Compile(anchor(f.re)); err != nil {
				v.fail(hp+"."+f.name, "invalid regular expression: %v", err)
			}
		}
		for j, m := range h.HeaderMatches {
			mp := fmt.Sprintf("%s.headerMatches[%d]", hp, j)
			if m.Name == "" {
				v.fail(mp+".name", "Header name missing")
			}
			switch m.Mismatch {
			case "", "LOG", "ADD", "DELETE", "REPLACE":
			default:
				v.fail(mp+".mismatch", "Invalid header action: %s", m.Mismatch)
			}
			if m.Secret != nil && m.Secret.Name == "" {
				v.fail(mp+".secret.name", "Secret name missing")
			}
		}
	}
}

// anchor makes a regular expression match only whole strings, as Envoy's
// safe_regex matchers do.
func anchor(re string) string { return `^(?:` + re + `)$` }

// HTTPRequest is what HTTP rules see of a request.
type HTTPRequest struct {
	Method string
	// Target is the request's path and query ("/public/x?q=1"): Envoy's
	// :path, which Path rules match whole. The HTTP proxy gives it
	// normalized ([NormalizeHTTPPath]), as Cilium's Envoy does; Decide
	// matches it as given.
	Target string
	// Host is the Host header (Envoy's :authority), with its port if sent.
	Host string
	// Header holds the other headers by canonical name (as net/http.Header).
	Header map[string][]string
}

// headerCheck is one header condition of a rule.
type headerCheck struct {
	name  string // canonical
	value string
	exact bool   // else presence
	field string // "headers[0]", "headerMatches[1]"
}

// HTTPMatcher is a compiled HTTP rule.
type HTTPMatcher struct {
	rule               HTTPRule
	method, path, host *regexp.Regexp
	headers            []headerCheck
}

// CompileHTTPRule compiles a rule. Mismatch actions and secrets are
// refused (ErrInvalidPolicy): the matcher cannot carry them out.
func CompileHTTPRule(r HTTPRule) (*HTTPMatcher, error) {
	m := &HTTPMatcher{rule: r}
	for _, f := range []struct {
		name, re string
		dst      **regexp.Regexp
	}{{"method", r.Method, &m.method}, {"path", r.Path, &m.path}, {"host", r.Host, &m.host}} {
		if f.re == "" {
			continue
		}
		re, err := regexp.Compile(anchor(f.re))
		if err != nil {
			return nil, fmt.Errorf("%w: http %s: %v", ErrInvalidPolicy, f.name, err)
		}
		*f.dst = re
	}
	for i, h := range r.Headers {
		// Cilium: split at the first space; "Name: value" or "Name value"
		// is an exact value, a lone "Name" presence.
		c := headerCheck{field: fmt.Sprintf("headers[%d]", i)}
		if name, value, ok := strings.Cut(h, " "); ok {
			c.name, c.value, c.exact = strings.TrimRight(name, ":"), value, true
		} else {
			c.name = h
		}
		c.name = canonicalHeader(c.name)
		m.headers = append(m.headers, c)
	}
	for i, h := range r.HeaderMatches {
		if h.Secret != nil || h.Mismatch != "" || h.Name == "" {
			return nil, fmt.Errorf("%w: headerMatches[%d]: name missing, secret or mismatch action", ErrInvalidPolicy, i)
		}
		m.headers = append(m.headers, headerCheck{name: canonicalHeader(h.Name), value: h.Value,
			exact: h.Value != "", field: fmt.Sprintf("headerMatches[%d]", i)})
	}
	return m, nil
}

// canonicalHeader is net/textproto's canonical form of a valid header
// name; other names are kept (they match no header a parser accepts).
func canonicalHeader(s string) string {
	upper := true
	b := []byte(s)
	for i, c := range b {
		if !(c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return s
		}
		switch {
		case upper && c >= 'a' && c <= 'z':
			b[i] = c - 'a' + 'A'
		case !upper && c >= 'A' && c <= 'Z':
			b[i] = c - 'A' + 'a'
		}
		upper = c == '-'
	}
	return string(b)
}

// Rule returns the rule the matcher was compiled from.
func (m *HTTPMatcher) Rule() HTTPRule { return m.rule }

// Match reports whether req matches every field of the rule; when it does
// not, field names the first field that failed ("method", "path", "host",
// "headers[0]", "headerMatches[1]") and reason says how.
func (m *HTTPMatcher) Match(req *HTTPRequest) (ok bool, field, reason string) {
	if m.method != nil && !m.method.MatchString(req.Method) {
		return false, "method", fmt.Sprintf("method %q does not match %q", req.Method, m.rule.Method)
	}
	if m.path != nil && !m.path.MatchString(req.Target) {
		return false, "path", fmt.Sprintf("path %q does not match %q", req.Target, m.rule.Path)
	}
	if m.host != nil && !m.host.MatchString(req.Host) {
		return false, "host", fmt.Sprintf("host %q does not match %q", req.Host, m.rule.Host)
	}
	for _, c := range m.headers {
		vals, present := req.Header[c.name]
		if c.name == "Host" {
			vals, present = []string{req.Host}, req.Host != ""
		}
		switch {
		case !present:
			return false, c.field, fmt.Sprintf("header %s missing", c.name)
		case c.exact && strings.Join(vals, ",") != c.value:
			// Envoy matches the values of a repeated header joined with
			// commas.
			return false, c.field, fmt.Sprintf("header %s is %q, not %q", c.name, strings.Join(vals, ","), c.value)
		}
	}
	return true, "", ""
}

// HTTPRuleRef is one HTTP rule with the rule item it belongs to.
type HTTPRuleRef struct {
	// Ref is the rule item; Path the rule's own place in the document
	// ("spec.egress[0].toPorts[0].rules.http[1]").
	Ref  RuleRef
	Path string
	m    *HTTPMatcher
}

// Rule returns the rule.
func (r HTTPRuleRef) Rule() HTTPRule { return r.m.rule }

// HTTPPolicy is what an endpoint's policy says about the HTTP requests of
// one peer to one port in one direction. Its rules are ORed: a request
// passes if any rule matches it, or if some rule allows the port without
// HTTP rules (AllowAll: Cilium adds such a rule to the port's proxy
// configuration as a rule that matches everything).
type HTTPPolicy struct {
	AllowAll bool
	// AllowAllRef is the rule item behind AllowAll (zero when the direction
	// is not enforced).
	AllowAllRef RuleRef
	Rules       []HTTPRuleRef
}

// HTTPMiss is one rule a denied request did not match, and why.
type HTTPMiss struct {
	Rule          HTTPRuleRef
	Field, Reason string
}

// HTTPDecision is the verdict on one request.
type HTTPDecision struct {
	Allowed bool
	// Matched is the rule that allowed the request; nil when AllowAll did
	// (or nothing did).
	Matched *HTTPRuleRef
	// Misses are, for a denied request, every rule with its failed field.
	Misses []HTTPMiss
}

// Decide decides one request.
func (p *HTTPPolicy) Decide(req *HTTPRequest) HTTPDecision {
	if p.AllowAll {
		return HTTPDecision{Allowed: true}
	}
	var d HTTPDecision
	for i := range p.Rules {
		ok, field, reason := p.Rules[i].m.Match(req)
		if ok {
			return HTTPDecision{Allowed: true, Matched: &p.Rules[i]}
		}
		d.Misses = append(d.Misses, HTTPMiss{Rule: p.Rules[i], Field: field, Reason: reason})
	}
	return d
}

// HTTP returns the HTTP policy of the endpoint for traffic with peer in
// direction dir to proto/port, and whether any allowing rule for it has
// HTTP rules (which is when the map redirects it to the HTTP proxy).
func (p *EndpointPolicy) HTTP(peer identity.ID, dir mapstate.Direction, proto nodeplane.Protocol, port uint16) (*HTTPPolicy, bool) {
	out := &HTTPPolicy{}
	if !p.dirs[dir].Enforced || !p.dirs[dir].DefaultDeny {
		out.AllowAll = true
	}
	cache := p.repo.rv.cache
	named := func(name string, proto nodeplane.Protocol) []uint16 {
		if dir == mapstate.Ingress {
			return p.endpoint.namedPort(name, proto)
		}
		if np := p.repo.cfg.NamedPorts; np != nil {
			return np.NamedPorts(peer, name, proto)
		}
		return nil
	}
	redirect := false
	for i := range p.filters {
		f := &p.filters[i]
		if f.dir != dir || f.deny || (f.sel != nil && !cache.selects(f.sel, peer)) {
			continue
		}
		if !f.all && !f.l4.matches(proto, port, named) {
			continue
		}
		redirect = redirect || (!f.all && f.l4.redirHTTP)
		if f.all || len(f.l4.http) == 0 {
			// No HTTP rules (or an empty list, which constrains nothing):
			// every request.
			if !out.AllowAll {
				out.AllowAll, out.AllowAllRef = true, f.entry.ref
			}
			continue
		}
		out.Rules = append(out.Rules, f.l4.http...)
	}
	return out, redirect
}

// compileHTTP compiles the HTTP rules of a port rule for resolve; the
// policy validated, so compiling cannot fail but for a bug.
func compileHTTP(ref RuleRef, portPath string, rules []HTTPRule) ([]HTTPRuleRef, error) {
	out := make([]HTTPRuleRef, 0, len(rules))
	for i, r := range rules {
		m, err := CompileHTTPRule(r)
		if err != nil {
			return nil, err
		}
		out = append(out, HTTPRuleRef{Ref: ref, Path: fmt.Sprintf("%s.rules.http[%d]", portPath, i), m: m})
	}
	return out, nil
}
