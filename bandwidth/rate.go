package bandwidth

import (
	"fmt"
	"math/big"
	"strconv"
	"strings"
)

// Rate is a data rate in bits per second.
type Rate uint64

// The range of rates the kubelet accepts for the bandwidth annotations
// (pkg/util/bandwidth: "unreasonably small (< 1kbit)", "unreasonably large
// (> 1Pbit)"); [ParseRate] and [Limits.Validate] enforce it too.
const (
	MinRate Rate = 1000
	MaxRate Rate = 1000 * 1000 * 1000 * 1000 * 1000
)

// Common rates.
const (
	Kbit Rate = 1000
	Mbit Rate = 1000 * Kbit
	Gbit Rate = 1000 * Mbit
)

// BytesPerSecond returns the rate in bytes per second, rounded down: the
// unit the kernel's token buckets and the EDT program count in.
func (r Rate) BytesPerSecond() uint64 { return uint64(r) / 8 }

// String formats the rate as the shortest exact Kubernetes quantity with
// a decimal suffix, e.g. "50M" or "1500k"; ParseRate reads it back.
func (r Rate) String() string {
	v := uint64(r)
	for _, s := range []struct {
		suffix string
		mult   uint64
	}{{"P", 1e15}, {"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"k", 1e3}} {
		if v != 0 && v%s.mult == 0 {
			return strconv.FormatUint(v/s.mult, 10) + s.suffix
		}
	}
	return strconv.FormatUint(v, 10)
}

// ParseRate reads a rate in bits per second written as a Kubernetes
// resource quantity, the syntax of the kubernetes.io/egress-bandwidth and
// kubernetes.io/ingress-bandwidth annotations: a decimal number (an
// optional sign, digits with an optional fraction) and an optional suffix,
// either decimal SI (k, M, G, T, P, E; and m, u, n below one), binary SI
// (Ki, Mi, Gi, Ti, Pi, Ei) or a decimal exponent (e3, E-2). "10M" is ten
// million bits per second, "1Mi" 1,048,576. As resource.Quantity.Value, a
// fraction of a bit rounds up. The result must lie within [MinRate,
// MaxRate]. Errors wrap [ErrInvalidRate].
func ParseRate(s string) (Rate, error) {
	v, err := parseQuantity(s)
	if err != nil {
		return 0, fmt.Errorf("%w %q: %v", ErrInvalidRate, s, err)
	}
	if v.Sign() < 0 {
		return 0, fmt.Errorf("%w %q: negative", ErrInvalidRate, s)
	}
	if v.Cmp(new(big.Int).SetUint64(uint64(MinRate))) < 0 {
		return 0, fmt.Errorf("%w %q: below the minimum of %v bit/s", ErrInvalidRate, s, MinRate)
	}
	if v.Cmp(new(big.Int).SetUint64(uint64(MaxRate))) > 0 {
		return 0, fmt.Errorf("%w %q: above the maximum of %v bit/s", ErrInvalidRate, s, MaxRate)
	}
	return Rate(v.Uint64()), nil
}

// maxExponent bounds decimal exponents so that a hostile "1e999999999"
// cannot make the parser allocate a huge number; anything this large is
// far outside [MinRate, MaxRate] anyway.
const maxExponent = 40

// parseQuantity parses a Kubernetes quantity and returns its value rounded
// up to an integer (toward positive infinity, as Quantity.Value).
func parseQuantity(s string) (*big.Int, error) {
	if s == "" {
		return nil, fmt.Errorf("empty quantity")
	}
	rest := s
	neg := false
	switch rest[0] {
	case '+':
		rest = rest[1:]
	case '-':
		neg, rest = true, rest[1:]
	}
	// The number: digits, optionally '.', digits; at least one digit.
	i := 0
	for i < len(rest) && isDigit(rest[i]) {
		i++
	}
	intPart := rest[:i]
	fracPart := ""
	if i < len(rest) && rest[i] == '.' {
		j := i + 1
		for j < len(rest) && isDigit(rest[j]) {
			j++
		}
		fracPart = rest[i+1 : j]
		i = j
	}
	if intPart == "" && fracPart == "" {
		return nil, fmt.Errorf("no digits")
	}
	suffix := rest[i:]

	// value = digits * 10^(exp10 - len(frac)) * 2^exp2
	digits, ok := new(big.Int).SetString(intPart+fracPart, 10)
	if !ok {
		return nil, fmt.Errorf("bad number")
	}
	exp10, exp2, err := parseSuffix(suffix)
	if err != nil {
		return nil, err
	}
	exp10 -= len(fracPart)

	num := new(big.Int).Set(digits)
	den := big.NewInt(1)
	ten := big.NewInt(10)
	if exp10 >= 0 {
		num.Mul(num, new(big.Int).Exp(ten, big.NewInt(int64(exp10)), nil))
	} else {
		den.Exp(ten, big.NewInt(int64(-exp10)), nil)
	}
	num.Lsh(num, uint(exp2))
	if neg {
		num.Neg(num)
	}
	// Ceiling division.
	q, m := new(big.Int).DivMod(num, den, new(big.Int))
	if m.Sign() != 0 {
		q.Add(q, big.NewInt(1))
	}
	return q, nil
}

func parseSuffix(suffix string) (exp10, exp2 int, err error) {
	switch suffix {
	case "":
		return 0, 0, nil
	case "n":
		return -9, 0, nil
	case "u":
		return -6, 0, nil
	case "m":
		return -3, 0, nil
	case "k":
		return 3, 0, nil
	case "M":
		return 6, 0, nil
	case "G":
		return 9, 0, nil
	case "T":
		return 12, 0, nil
	case "P":
		return 15, 0, nil
	case "E":
		return 18, 0, nil
	case "Ki":
		return 0, 10, nil
	case "Mi":
		return 0, 20, nil
	case "Gi":
		return 0, 30, nil
	case "Ti":
		return 0, 40, nil
	case "Pi":
		return 0, 50, nil
	case "Ei":
		return 0, 60, nil
	}
	if suffix[0] == 'e' || suffix[0] == 'E' {
		e := suffix[1:]
		digits := strings.TrimLeft(e, "+-")
		if digits == "" || len(e)-len(digits) > 1 {
			return 0, 0, fmt.Errorf("bad exponent %q", suffix)
		}
		for k := 0; k < len(digits); k++ {
			if !isDigit(digits[k]) {
				return 0, 0, fmt.Errorf("bad exponent %q", suffix)
			}
		}
		n, err := strconv.Atoi(e)
		if err != nil || n > maxExponent || n < -maxExponent {
			return 0, 0, fmt.Errorf("exponent %q out of range", suffix)
		}
		return n, 0, nil
	}
	if suffix == "K" {
		return 0, 0, fmt.Errorf("unknown suffix %q (kilo is lower-case k)", suffix)
	}
	return 0, 0, fmt.Errorf("unknown suffix %q", suffix)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
