package maglev

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"slices"
)

const (
	// DefaultTableSize is Cilium's default table size (its
	// --bpf-lb-maglev-table-size), fit for pools of up to about 160
	// backends at the paper's M > 100·N.
	DefaultTableSize = 16381

	// DefaultHashSeed is Cilium's default cluster-wide seed (its
	// --bpf-lb-maglev-hash-seed). A cluster should pick its own with
	// `head -c12 /dev/urandom | base64 -w0` and use it on every node.
	DefaultHashSeed = "JLfvgnHc2kaSUFaI"
)

// supportedTableSizes are the primes Cilium accepts as table size: each is
// the largest prime below a power of two, from 2^8 to 2^17.
var supportedTableSizes = [...]uint{251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071}

// SupportedTableSizes returns the table sizes a [Config] may name, in
// increasing order. The caller may modify the returned slice.
func SupportedTableSizes() []uint {
	return slices.Clone(supportedTableSizes[:])
}

// Config configures a [Builder]. The zero value is Cilium's default
// configuration.
type Config struct {
	// TableSize is the number of entries M of every table, one of
	// [SupportedTableSizes]. Zero means [DefaultTableSize]. The Maglev paper
	// keeps each backend's share within 1% of its weight when M > 100·N.
	TableSize uint

	// HashSeed is the cluster-wide seed in Cilium's format: 12 bytes,
	// standard base64 encoded. Only its first 4 bytes (big-endian) seed the
	// hash of backend keys; Cilium's datapath uses the other 8 to hash
	// packets. Empty means [DefaultHashSeed].
	HashSeed string
}

// withDefaults returns cfg with zero fields replaced by their defaults.
func (cfg Config) withDefaults() Config {
	if cfg.TableSize == 0 {
		cfg.TableSize = DefaultTableSize
	}
	if cfg.HashSeed == "" {
		cfg.HashSeed = DefaultHashSeed
	}
	return cfg
}

// murmurSeed validates cfg (with defaults applied) and returns the seed of
// the backend key hash.
func (cfg Config) murmurSeed() (uint32, error) {
	if !slices.Contains(supportedTableSizes[:], cfg.TableSize) {
		why := "not prime"
		switch {
		case cfg.TableSize > supportedTableSizes[len(supportedTableSizes)-1]:
			why = "too large"
		case isPrime(cfg.TableSize):
			why = "prime but not supported"
		}
		return 0, fmt.Errorf("%w: %d is %s (supported: %v)", ErrTableSize, cfg.TableSize, why, supportedTableSizes)
	}
	seed, err := ParseHashSeed(cfg.HashSeed)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(seed[:4]), nil
}

// ParseHashSeed decodes a hash seed as Cilium's --bpf-lb-maglev-hash-seed
// takes it: 12 bytes in standard base64. As in Cilium, bytes 0-3 seed the
// backend key hash of the table; the north-south programs hash packets
// with bytes 4-7 (IPv4) and 8-11 (IPv6). Errors wrap [ErrHashSeed].
func ParseHashSeed(s string) ([12]byte, error) {
	var seed [12]byte
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return seed, fmt.Errorf("%w: %q is not standard base64: %w", ErrHashSeed, s, err)
	}
	if len(raw) != len(seed) {
		return seed, fmt.Errorf("%w: %q decodes to %d bytes, want 12", ErrHashSeed, s, len(raw))
	}
	return [12]byte(raw), nil
}

// isPrime reports whether n is prime. It only serves error messages about
// sizes below the largest supported one, so trial division is fast enough.
func isPrime(n uint) bool {
	if n < 2 {
		return false
	}
	for d := uint(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}
