package bandwidth

import (
	"errors"
	"testing"
)

// FuzzParseRate checks that the parser never panics, that every error
// wraps ErrInvalidRate, that every rate it returns is in range, and that
// the rate's String form parses back to it.
func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"10M", "1G", "500k", "1Mi", "1.5e3", "-1", "", "1e-3", ".5Gi", "1000001m"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRate(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidRate) {
				t.Fatalf("ParseRate(%q): error %v does not wrap ErrInvalidRate", s, err)
			}
			return
		}
		if r < MinRate || r > MaxRate {
			t.Fatalf("ParseRate(%q) = %d out of range", s, r)
		}
		back, err := ParseRate(r.String())
		if err != nil || back != r {
			t.Fatalf("ParseRate(%q) = %d; its String %q parses to %d, %v", s, r, r.String(), back, err)
		}
	})
}
