package policy

import "strings"

// This file is what Cilium's Envoy does to a request's path before any
// HTTP rule sees it. A rule's path is a regular expression that Cilium
// gives Envoy as a safe_regex (RE2, whole-string) header matcher on
// ":path" (getHTTPRule in Cilium's pkg/envoy/xds_server.go); Envoy's
// :path is the request target's path and query, without a fragment. With
// Cilium's --http-normalize-path (on by default) the HTTP connection
// manager has normalize_path, merge_slashes and
// path_with_escaped_slashes_action UNESCAPE_AND_REDIRECT
// (getHttpFilterChainProto, same file), and Envoy applies them in
// ConnectionManagerUtility::maybeNormalizePath, in this order:
//
//  1. %2F, %2f, %5C and %5c in the path (not the query) are unescaped; if
//     there were any, the request is not forwarded but redirected (307)
//     to the result of all three steps;
//  2. the path is normalized as Envoy's PathUtil::canonicalPath does with
//     Chromium's URL path canonicalizer (url_canon_path.cc): "." and ".."
//     segments (also as %2E) resolved, "\" made "/", percent-escapes of
//     unreserved characters decoded, characters that must not appear raw
//     escaped; a path with a NUL (raw or %00) is rejected (400);
//  3. runs of slashes are merged (PathTransformer::mergeSlashes).
//
// The rules then match the result, and it is what the server receives:
// matching one path and forwarding another would let "/public/../admin"
// pass a rule for "/public/.*".

// NormalizeHTTPPath normalizes a request's :path (path and query, as
// HTTPRequest.Target) as Cilium's Envoy does before its HTTP rules see
// it. redirect says that the path had escaped slashes: Envoy answers 307
// with Location path instead of forwarding (400 for gRPC). ok is false
// for a path Envoy rejects with 400.
func NormalizeHTTPPath(target string) (path string, redirect, ok bool) {
	p, query, _ := strings.Cut(target, "?")
	hasQuery := len(p) < len(target)
	p, redirect = unescapeSlashes(p)
	p, ok = canonicalPath(p)
	if !ok {
		return "", false, false
	}
	p = mergeSlashes(p)
	if hasQuery {
		p += "?" + query
	}
	return p, redirect, true
}

// unescapeSlashes replaces %2F and %5C (either case) by the characters
// they stand for, and reports whether there were any.
func unescapeSlashes(p string) (string, bool) {
	if !strings.Contains(p, "%") {
		return p, false
	}
	var b strings.Builder
	found := false
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) {
			switch strings.ToUpper(p[i+1 : i+3]) {
			case "2F":
				b.WriteByte('/')
				i += 2
				found = true
				continue
			case "5C":
				b.WriteByte('\\')
				i += 2
				found = true
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String(), found
}

// mergeSlashes merges runs of '/' in a path as Envoy does: the segments
// between slashes that are not empty, joined by one slash, with the
// leading and trailing slash kept.
func mergeSlashes(p string) string {
	if !strings.Contains(p, "//") {
		return p
	}
	var segs []string
	for _, s := range strings.Split(p, "/") {
		if s != "" {
			segs = append(segs, s)
		}
	}
	out := strings.Join(segs, "/")
	if strings.HasPrefix(p, "/") {
		out = "/" + out
	}
	if strings.HasSuffix(p, "/") {
		out += "/"
	}
	return out
}

// How the canonicalizer treats each byte (Chromium's kPathCharLookup).
const (
	pathPass     = 0
	pathSpecial  = 1 // needs a look: '.', '%', '\\' and the two below
	pathEscape   = 2 | pathSpecial
	pathUnescape = 4 // an escape of it is decoded
	pathInvalid  = 8 | pathSpecial
)

var pathChars = func() (t [256]byte) {
	t[0] = pathInvalid
	for c := 1; c < 0x20; c++ {
		t[c] = pathEscape
	}
	for c := 0x7f; c < 0x100; c++ {
		t[c] = pathEscape
	}
	for _, c := range " \"#%<>?\\^`{|}" {
		t[c] = pathEscape
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = pathUnescape
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c], t[c+'a'-'A'] = pathUnescape, pathUnescape
	}
	for _, c := range "-_~" {
		t[c] = pathUnescape
	}
	t['.'] = pathSpecial
	return t
}()

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// decodeEscaped decodes the escape at s[i] ('%' and two hex digits).
func decodeEscaped[T ~string | ~[]byte](s T, i int) (byte, bool) {
	if i+3 > len(s) || s[i] != '%' || !isHex(s[i+1]) || !isHex(s[i+2]) {
		return 0, false
	}
	return unhex(s[i+1])<<4 | unhex(s[i+2]), true
}

// dotLen is the length of a dot at s[i]: 1 for ".", 3 for "%2E" or
// "%2e", 0 for anything else.
func dotLen(s string, i int) int {
	switch {
	case s[i] == '.':
		return 1
	case s[i] == '%' && i+3 <= len(s) && s[i+1] == '2' && (s[i+2] == 'e' || s[i+2] == 'E'):
		return 3
	}
	return 0
}

func isURLSlash(c byte) bool { return c == '/' || c == '\\' }

const upperHex = "0123456789ABCDEF"

// canonicalPath is Chromium's CanonicalizePath, as Envoy uses it, on a
// path without its query.
func canonicalPath(in string) (string, bool) {
	if in == "" {
		return "/", true
	}
	out := make([]byte, 0, len(in)+1)
	if !isURLSlash(in[0]) {
		out = append(out, '/')
	}
	ok := true
	lastInvalidPercent := -1 << 30
	for i := 0; i < len(in); i++ {
		c := in[i]
		flags := pathChars[c]
		if flags&pathSpecial == 0 {
			out = append(out, c)
			continue
		}
		if dl := dotLen(in, i); dl > 0 {
			if len(out) == 0 || out[len(out)-1] != '/' {
				// Part of a name.
				out = append(out, '.')
				i += dl - 1
				continue
			}
			switch kind, consumed := classifyAfterDot(in, i+dl); kind {
			case dotName:
				out = append(out, '.')
				i += dl - 1
			case dotCurrent:
				i += dl + consumed - 1
			case dotParent:
				out = backUpToPreviousSlash(out)
				i += dl + consumed - 1
			}
			continue
		}
		switch {
		case c == '\\':
			out = append(out, '/')
		case c == '%':
			v, valid := decodeEscaped(in, i)
			if !valid {
				// Kept as it is; an escape that forms around it once
				// what follows is decoded is escaped (nested escapes).
				lastInvalidPercent = len(out)
				out = append(out, '%')
				continue
			}
			i += 2
			if pathChars[v]&pathUnescape != 0 {
				out = append(out, v)
				if lastInvalidPercent >= len(out)-3 {
					out = checkNestedEscapes(in, i+1, lastInvalidPercent, out)
				}
				continue
			}
			// Kept escaped exactly as sent (the case of its hex digits
			// too).
			out = append(out, '%', in[i-1], in[i])
			if pathChars[v]&pathInvalid == pathInvalid {
				ok = false
			}
		case flags&pathInvalid == pathInvalid:
			out = append(out, '%', upperHex[c>>4], upperHex[c&15])
			ok = false
		case flags&pathEscape == pathEscape:
			out = append(out, '%', upperHex[c>>4], upperHex[c&15])
		default:
			out = append(out, c)
		}
	}
	return string(out), ok
}

type dotKind int

const (
	dotName dotKind = iota
	dotCurrent
	dotParent
)

// classifyAfterDot says what a dot that follows a slash is, looking at
// what follows it (at after), and how many bytes of that belong to it.
func classifyAfterDot(s string, after int) (dotKind, int) {
	if after == len(s) {
		return dotCurrent, 0
	}
	if isURLSlash(s[after]) {
		return dotCurrent, 1
	}
	if dl := dotLen(s, after); dl > 0 {
		a2 := after + dl
		if a2 == len(s) {
			return dotParent, dl
		}
		if isURLSlash(s[a2]) {
			return dotParent, dl + 1
		}
	}
	return dotName, 0
}

// backUpToPreviousSlash removes the last segment of out, which ends with
// a slash, never going above the first slash.
func backUpToPreviousSlash(out []byte) []byte {
	i := len(out) - 1
	if i == 0 {
		return out
	}
	i--
	for out[i] != '/' && i > 0 {
		i--
	}
	return out[:i+1]
}

// checkNestedEscapes keeps a decoded character from completing, with an
// earlier '%' that began no valid escape, an escape that a second
// canonicalization would decode ("%%30%30" must not become "%00"): that
// '%' is then written as "%25". next is the index in in of the next byte
// not yet read.
func checkNestedEscapes(in string, next, lastInvalidPercent int, out []byte) []byte {
	length := len(out)
	last := out[length-1]
	appendNext := lastInvalidPercent == length-2
	if appendNext {
		if next == len(in) || in[next] >= 0x80 {
			return out
		}
		out = append(out, in[next])
	}
	if _, ok := decodeEscaped(out, lastInvalidPercent); ok {
		if !appendNext {
			out = append(out, out[lastInvalidPercent+1])
		}
		out[lastInvalidPercent+1] = '2'
		out[lastInvalidPercent+2] = '5'
		out = append(out, last)
	} else if appendNext {
		out = out[:length]
	}
	return out
}
