package main

import (
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane/lb/maglev"
)

// FuzzParseBackend: parseBackend never panics; what it accepts has a
// canonical spelling that parses to the same backend, and has a Cilium
// backend key; what it rejects makes the command exit 2 without output.
func FuzzParseBackend(f *testing.F) {
	for _, s := range []string{
		"10.0.0.1:80/TCP", "10.0.0.1:80/udp@0", "[fd00::1]:53/ANY@65535", "[::ffff:1.2.3.4]:1/SCTP@7",
		"[fe80::1%eth0]:80/TCP", "10.0.0.1:080/TCP", "10.0.0.1:80/TCP@", "[10.0.0.1]:80/TCP", "fd00::1:80/TCP",
		"", "/", "@", ":/@", "[]:1/TCP", "10.0.0.1:80/TCP@1@1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		be, err := parseBackend(s)
		if err != nil {
			if strings.HasPrefix(s, "-") {
				return // a flag to the command, not a backend
			}
			code, stdout, stderr := runCmd("maglev-table", "-m", "251", s)
			if code != exitBadInput || stdout != "" || stderr == "" {
				t.Fatalf("%q rejected (%v) but the command exits %d, stdout %q, stderr %q", s, err, code, stdout, stderr)
			}
			return
		}
		if be.Addr.Port() == 0 || be.Addr.Addr().Zone() != "" {
			t.Fatalf("%q: accepted %v", s, be)
		}
		again, err := parseBackend(be.String())
		if err != nil || again != be {
			t.Fatalf("%q → %v → %q → %v, %v", s, be, be.String(), again, err)
		}
		if _, err := maglev.BackendKey(be.Addr, be.Proto); err != nil {
			t.Fatalf("%q: accepted, but no backend key: %v", s, err)
		}
	})
}
