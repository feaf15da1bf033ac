package bandwidth

import (
	"errors"
	"math/big"
	"testing"
)

func TestParseRate(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Rate
	}{
		{"10M", 10_000_000},
		{"1G", 1_000_000_000},
		{"500k", 500_000},
		{"1Mi", 1 << 20},
		{"1Ki", 1024},
		{"1.5M", 1_500_000},
		{"+2G", 2_000_000_000},
		{"1000", 1000},
		{"1e6", 1_000_000},
		{"1E6", 1_000_000},
		{"25e+5", 2_500_000},
		{".5M", 500_000},
		{"5.M", 5_000_000},
		{"1000001m", 1001},            // 1000.001 rounds up
		{"1000000000000u", 1_000_000}, // micro
		{"1P", MaxRate},
		{"0.0015M", 1500},
		{"1.0000001k", 1001}, // a fraction of a bit rounds up, as Quantity.Value
	} {
		got, err := ParseRate(tc.in)
		if err != nil {
			t.Errorf("ParseRate(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseRate(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestParseRateErrors(t *testing.T) {
	for _, in := range []string{
		"", "M", "-", "+", ".", "abc", "10 M", " 10M", "10M ", "10K", "10mi", "10MB",
		"10Mbit", "1e", "1e+", "1e1.5", "1e--3", "10MM", "0x10", "1,000",
		"-10M",          // negative
		"999",           // below 1 kbit
		"0",             // below 1 kbit
		"1001P",         // above 1 Pbit
		"2Ei",           // above 1 Pbit
		"1e99999999999", // exponent out of range
		"1.5.5M",
	} {
		if r, err := ParseRate(in); !errors.Is(err, ErrInvalidRate) {
			t.Errorf("ParseRate(%q) = %d, %v; want ErrInvalidRate", in, r, err)
		}
	}
}

// TestParseRateOracle checks the parser against an independent one:
// math/big's decimal parsing of the number times the suffix's multiplier,
// rounded up.
func TestParseRateOracle(t *testing.T) {
	mult := map[string]string{"": "1", "k": "1e3", "M": "1e6", "G": "1e9", "T": "1e12", "Ki": "1024", "Mi": "1048576", "Gi": "1073741824", "m": "0.001"}
	for _, num := range []string{"1", "1.5", "0.25", "12.345", "999.999", "100", "3", "7.000001", "0.001"} {
		for suf, m := range mult {
			s := num + suf
			a, _ := new(big.Rat).SetString(num)
			b, _ := new(big.Rat).SetString(m)
			v := new(big.Rat).Mul(a, b)
			q := new(big.Int).Quo(v.Num(), v.Denom())
			if new(big.Rat).SetInt(q).Cmp(v) != 0 {
				q.Add(q, big.NewInt(1))
			}
			got, err := ParseRate(s)
			inRange := q.Cmp(big.NewInt(int64(MinRate))) >= 0 && q.Cmp(big.NewInt(int64(MaxRate))) <= 0
			if !inRange {
				if err == nil {
					t.Errorf("ParseRate(%q) = %d, want out-of-range error (value %v)", s, got, q)
				}
				continue
			}
			if err != nil || uint64(got) != q.Uint64() {
				t.Errorf("ParseRate(%q) = %d, %v; want %v", s, got, err, q)
			}
		}
	}
}

func TestRateStringRoundTrip(t *testing.T) {
	for _, r := range []Rate{MinRate, 1500, 50 * Mbit, Gbit, 1 << 20, 1234567, MaxRate} {
		got, err := ParseRate(r.String())
		if err != nil || got != r {
			t.Errorf("ParseRate(%v.String() = %q) = %d, %v", uint64(r), r.String(), got, err)
		}
	}
}

func TestParseAnnotations(t *testing.T) {
	l, err := ParseAnnotations(map[string]string{
		EgressAnnotation:   "50M",
		IngressAnnotation:  "1Gi",
		PriorityAnnotation: "7",
		"app":              "web",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Limits{Egress: 50 * Mbit, Ingress: 1 << 30, Priority: 7, HasPriority: true}
	if l != want {
		t.Fatalf("got %+v, want %+v", l, want)
	}
	if l, err := ParseAnnotations(nil); err != nil || !l.Unlimited() {
		t.Fatalf("no annotations: %+v, %v", l, err)
	}
	for _, a := range []map[string]string{
		{EgressAnnotation: "fast"},
		{IngressAnnotation: "10"},
		{PriorityAnnotation: "16"},
		{PriorityAnnotation: "-1"},
	} {
		if _, err := ParseAnnotations(a); !errors.Is(err, ErrInvalidRate) {
			t.Errorf("ParseAnnotations(%v): %v, want ErrInvalidRate", a, err)
		}
	}
}

func TestLimitsValidate(t *testing.T) {
	for _, tc := range []struct {
		l  Limits
		ok bool
	}{
		{Limits{}, true},
		{Limits{Egress: 50 * Mbit}, true},
		{Limits{Egress: 999}, false},
		{Limits{Ingress: MaxRate + 1}, false},
		{Limits{Priority: 16, HasPriority: true}, false},
		{Limits{Priority: 16}, true}, // ignored without HasPriority
	} {
		if err := tc.l.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v.Validate() = %v, want ok=%v", tc.l, err, tc.ok)
		}
	}
}
