package ipam

import (
	"fmt"
	"net/netip"
)

// Family is an address family.
type Family uint8

// The address families, numbered as in "IPv4" and "IPv6".
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "IPv4"
	case IPv6:
		return "IPv6"
	}
	return fmt.Sprintf("Family(%d)", uint8(f))
}

func (f Family) valid() bool { return f == IPv4 || f == IPv6 }

// index is the family's slot in per-family arrays.
func (f Family) index() int {
	if f == IPv4 {
		return 0
	}
	return 1
}

// bits is the address length.
func (f Family) bits() int {
	if f == IPv4 {
		return 32
	}
	return 128
}

func familyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// checkPrefix rejects what a pool cannot hold: invalid prefixes, prefixes
// with host bits set (a typo for a different network more often than not),
// and IPv4-mapped IPv6 prefixes, which netip keeps apart from IPv4 and would
// only confuse.
func checkPrefix(p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return fmt.Errorf("prefix %s: %w", p, ErrInvalid)
	case p.Addr().Zone() != "":
		return fmt.Errorf("prefix %s has a zone: %w", p, ErrInvalid)
	case p.Addr().Is4In6():
		return fmt.Errorf("prefix %s is IPv4-mapped IPv6; use the IPv4 prefix: %w", p, ErrInvalid)
	case p.Masked() != p:
		return fmt.Errorf("prefix %s has host bits set (did you mean %s?): %w", p, p.Masked(), ErrInvalid)
	}
	return nil
}

// checkOverlap returns ErrOverlap if any two of ps overlap.
func checkOverlap(ps []netip.Prefix) error {
	for i, p := range ps {
		for _, q := range ps[i+1:] {
			if p.Overlaps(q) {
				return fmt.Errorf("%s and %s: %w", p, q, ErrOverlap)
			}
		}
	}
	return nil
}

// checkAddr rejects addresses no pool can contain.
func checkAddr(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("address %s: %w", a, ErrInvalid)
	case a.Zone() != "":
		return fmt.Errorf("address %s has a zone: %w", a, ErrInvalid)
	}
	return nil
}
