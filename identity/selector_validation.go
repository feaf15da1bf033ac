package identity

import (
	"strings"
)

// This file holds the syntax checks Cilium applies to a policy's label
// selectors (pkg/labels/validation.go, itself built on Kubernetes'
// apimachinery validation): a key is an optional alphanumeric source, ':',
// and a Kubernetes qualified name; a value is a Kubernetes label value.

const (
	qualifiedNameMaxLen = 63
	labelValueMaxLen    = 63
	dnsSubdomainMaxLen  = 253

	// namespaceLabelsPrefix is prepended by Cilium to the labels of a
	// pod's namespace. Validation ignores it, so that it does not eat into
	// the length limits of the Kubernetes key behind it.
	namespaceLabelsPrefix = "io.cilium.k8s.namespace.labels."
)

// checkSelectorKey returns why key is not a valid selector key, or "".
func checkSelectorKey(key string) string {
	labelKey := key
	switch strings.Count(key, ":") {
	case 0:
	case 1:
		i := strings.IndexByte(key, ':')
		source := key[:i]
		if source == "" || !isAlnum(source) {
			return "label source should be a non empty string with only alphanumeric characters"
		}
		labelKey = key[i+1:]
	default:
		return "a valid label key only support ':' character as a source separator with non empty value"
	}
	labelKey = strings.TrimPrefix(labelKey, namespaceLabelsPrefix)
	return checkQualifiedName(labelKey)
}

// checkQualifiedName implements Kubernetes' IsQualifiedName: an optional DNS
// subdomain prefix and '/', then a name of at most 63 characters of
// [A-Za-z0-9_.-] that starts and ends alphanumeric.
func checkQualifiedName(s string) string {
	name := s
	switch strings.Count(s, "/") {
	case 0:
	case 1:
		i := strings.IndexByte(s, '/')
		prefix := s[:i]
		if prefix == "" {
			return "prefix part must be non-empty"
		}
		if reason := checkDNSSubdomain(prefix); reason != "" {
			return "prefix part " + reason
		}
		name = s[i+1:]
	default:
		return "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
	}
	switch {
	case name == "":
		return "name part must be non-empty"
	case len(name) > qualifiedNameMaxLen:
		return "name part must be no more than 63 characters"
	case !isQualifiedNamePart(name):
		return "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName', or 'my.name', or '123-abc')"
	}
	return ""
}

// checkLabelValue implements Kubernetes' IsValidLabelValue: empty, or at most
// 63 characters of [A-Za-z0-9_.-] that start and end alphanumeric.
func checkLabelValue(v string) string {
	if len(v) > labelValueMaxLen {
		return "must be no more than 63 characters"
	}
	if v != "" && !isQualifiedNamePart(v) {
		return "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue', or 'my_value', or '12345')"
	}
	return ""
}

// checkDNSSubdomain implements Kubernetes' IsDNS1123Subdomain.
func checkDNSSubdomain(s string) string {
	if len(s) > dnsSubdomainMaxLen {
		return "must be no more than 253 characters"
	}
	for _, part := range strings.Split(s, ".") {
		if !isDNSLabel(part) {
			return "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com')"
		}
	}
	return ""
}

// isDNSLabel matches [a-z0-9]([-a-z0-9]*[a-z0-9])?.
func isDNSLabel(s string) bool {
	if s == "" || !isLowerAlnum(s[0]) || !isLowerAlnum(s[len(s)-1]) {
		return false
	}
	for i := 1; i < len(s)-1; i++ {
		if !isLowerAlnum(s[i]) && s[i] != '-' {
			return false
		}
	}
	return true
}

// isQualifiedNamePart matches ([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9].
func isQualifiedNamePart(s string) bool {
	if s == "" || !isAlnumByte(s[0]) || !isAlnumByte(s[len(s)-1]) {
		return false
	}
	for i := 1; i < len(s)-1; i++ {
		c := s[i]
		if !isAlnumByte(c) && c != '-' && c != '_' && c != '.' {
			return false
		}
	}
	return true
}

func isAlnum(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isAlnumByte(s[i]) {
			return false
		}
	}
	return true
}

func isAlnumByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func isLowerAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
}
