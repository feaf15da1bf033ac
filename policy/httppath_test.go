package policy

import (
	"strings"
	"testing"
)

// TestNormalizeHTTPPath checks the normalizer against Envoy's own
// expectations (test/common/http/path_utility_test.cc: canonicalPath,
// mergeSlashes; http/conn_manager_impl_test.cc: escaped slashes), and the
// three steps together as Cilium's Envoy runs them.
func TestNormalizeHTTPPath(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		redirect bool
	}{
		// Envoy's NormalizeValidPaths and NormalizeCasePath.
		{"/xyz", "/xyz", false},
		{"/x/y/z", "/x/y/z", false},
		{"/a/b/../c", "/a/c", false},
		{"/a/b/./c", "/a/b/c", false},
		{"a/b/../c", "/a/c", false},
		{"/a/b/../../../../c", "/c", false},
		{"/a/..\\c", "/c", false},
		{"/%c0%af", "/%c0%af", false},
		{"/a/b/%2E%2E/c", "/a/c", false},
		{"/a/b/%2E./c", "/a/c", false},
		{"/a/b/%2E/c", "/a/b/c", false},
		{"..", "/", false},
		{"/../a/b", "/a/b", false},
		{"/./a/b", "/a/b", false},
		{"/A/B/C", "/A/B/C", false},
		{"/a/b/%2e%2e/c", "/a/c", false},
		// Envoy's MergeSlashes (after canonicalization, which keeps
		// these).
		{"/a//b/c/", "/a/b/c/", false},
		{"//a/b/c", "/a/b/c", false},
		{"/a/b/c//", "/a/b/c/", false},
		{"/a////b/c", "/a/b/c", false},
		{"/a//b?a=///c", "/a/b?a=///c", false},
		{"/a//b?", "/a/b?", false},
		{"//a/?b", "/a/?b", false},
		// Escaped slashes: unescaped, then normalized, and redirected
		// (Envoy's "/%5c%25" and "/a/%2F%2f/c" cases are canonicalPath
		// alone; Cilium unescapes them first).
		{"/%5c%25", "/%25", true},
		{"/a/%2F%2f/c", "/a/c", true},
		{"/abc%2f../", "/", true},
		{"/public%2F..%2Fprivate", "/private", true},
		// The query is left alone, escapes and all.
		{"/a/../b?x=/../y&z=%2F", "/b?x=/../y&z=%2F", false},
		// Unreserved escapes are decoded, others kept; raw characters
		// that must be escaped are.
		{"/%7Euser/%41%2d", "/~user/A-", false},
		{"/a%20b/\"q\"", "/a%20b/%22q%22", false},
		// Nested escapes cannot become an escape on a second pass.
		{"/%%30%30", "/%2500", false},
		{"", "/", false},
	} {
		got, redirect, ok := NormalizeHTTPPath(tc.in)
		if !ok || got != tc.want || redirect != tc.redirect {
			t.Errorf("NormalizeHTTPPath(%q) = %q, redirect %v, ok %v; want %q, redirect %v", tc.in, got, redirect, ok, tc.want, tc.redirect)
		}
		// Normalizing is idempotent: what the upstream gets normalizes to
		// itself.
		if again, r2, _ := NormalizeHTTPPath(got); again != got || r2 {
			t.Errorf("NormalizeHTTPPath(%q) = %q, not a fixed point (%q)", got, again, got)
		}
	}
	// Envoy's InvalidPaths: a NUL, raw or escaped, is rejected.
	for _, in := range []string{"/xyz/.%00../abc", "/xyz/%00.%00./abc", "/xyz/AAAAA%%0000/abc", "/a\x00b"} {
		if got, _, ok := NormalizeHTTPPath(in); ok {
			t.Errorf("NormalizeHTTPPath(%q) = %q, want rejected", in, got)
		}
	}
}

// FuzzNormalizeHTTPPath checks what a normalized path must be, whatever
// the input: a path (starting with "/"), with no "." or ".." segment (also
// escaped) and no run of slashes in its path part, the query exactly as
// sent, and a fixed point: normalizing what the upstream receives changes
// nothing and asks for no redirect, so a path cannot be judged as one
// thing and read by the server as another.
func FuzzNormalizeHTTPPath(f *testing.F) {
	for _, s := range []string{"/a/b/../c", "/a/..\\c", "/%c0%af", "/%5c%25", "/a/b/%2E%2E/c", "/a/%2F%2f/c",
		"/%%30%30", "/a//b?a=///c", "/public%2F..%2Fprivate", "..", "/x?%2F", "/a/.%2e/b", "/%2e%2E%2f"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out, _, ok := NormalizeHTTPPath(in)
		if !ok {
			return
		}
		path, query, hasQuery := strings.Cut(out, "?")
		if _, q, hq := strings.Cut(in, "?"); hq != hasQuery || q != query {
			t.Fatalf("%q → %q: query changed", in, out)
		}
		if !strings.HasPrefix(path, "/") {
			t.Fatalf("%q → %q: not a path", in, out)
		}
		if path != "//" && strings.Contains(path, "//") {
			// ("//" alone stays: Envoy's mergeSlashes keeps both the
			// leading and the trailing slash.)
			t.Fatalf("%q → %q: run of slashes", in, out)
		}
		for _, seg := range strings.Split(path, "/") {
			if d := strings.ToLower(strings.ReplaceAll(strings.ToLower(seg), "%2e", ".")); d == "." || d == ".." {
				t.Fatalf("%q → %q: dot segment %q", in, out, seg)
			}
		}
		again, redirect, ok := NormalizeHTTPPath(out)
		if !ok || redirect || again != out {
			t.Fatalf("%q → %q → %q (redirect %v, ok %v): not a fixed point", in, out, again, redirect, ok)
		}
	})
}
