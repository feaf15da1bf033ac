package mapstate

import (
	"fmt"
	"math/bits"
	"strconv"
)

// PortPrefix is a block of ports that share their first Bits bits with
// Port: the unit of a policy-map key. Bits 16 is one port, 0 every port.
type PortPrefix struct {
	Port uint16
	Bits uint8
}

// Last returns the highest port in the block.
func (p PortPrefix) Last() uint16 {
	return p.Port | ^portMask(p.Bits)
}

func (p PortPrefix) String() string {
	switch p.Bits {
	case 16:
		return strconv.Itoa(int(p.Port))
	case 0:
		return "*"
	}
	return fmt.Sprintf("%d-%d", p.Port, p.Last())
}

func portMask(bitsLen uint8) uint16 {
	if bitsLen >= 16 {
		return 0xFFFF
	}
	return ^uint16(0xFFFF >> bitsLen)
}

// PortRangePrefixes splits the range first..last into the fewest
// power-of-two aligned blocks that cover exactly it, the way an LPM key
// set must express a range. A range with last <= first is the single port
// first; 0..0 and 0..65535 are every port.
func PortRangePrefixes(first, last uint16) []PortPrefix {
	if first == 0 && (last == 0 || last == 0xFFFF) {
		return []PortPrefix{{0, 0}}
	}
	if last <= first {
		return []PortPrefix{{first, 16}}
	}
	var out []PortPrefix
	// Walk up from first: at each step take the largest aligned block that
	// starts at cur and does not pass last.
	cur := uint32(first)
	end := uint32(last)
	for cur <= end {
		// Largest block size allowed by alignment of cur.
		size := uint32(1) << bits.TrailingZeros32(cur|1<<16)
		for cur+size-1 > end {
			size >>= 1
		}
		out = append(out, PortPrefix{Port: uint16(cur), Bits: uint8(16 - bits.TrailingZeros32(size))})
		cur += size
	}
	return out
}
