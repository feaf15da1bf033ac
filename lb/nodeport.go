package lb

// NorthSouthConfig configures a [NorthSouth]. The zero value is Cilium's
// default Maglev configuration.
type NorthSouthConfig struct {
	// MaglevTableSize is the size M of every Maglev table, one of
	// maglev.SupportedTableSizes; 0 means maglev.DefaultTableSize.
	MaglevTableSize uint
	// MaglevHashSeed is the cluster's seed in Cilium's format (12 bytes,
	// standard base64): bytes 0–3 seed the backend permutations, bytes 4–7
	// the IPv4 packet hash and 8–11 the IPv6 packet hash, as in Cilium.
	// Empty means maglev.DefaultHashSeed.
	MaglevHashSeed string
}

// XDPMode says how the XDP program of a [NorthSouth] is attached.
type XDPMode uint8

const (
	// XDPNative: in the driver (veth supports it).
	XDPNative XDPMode = iota + 1
	// XDPGeneric: in the stack, after the skb is built, for drivers
	// without XDP support.
	XDPGeneric
)

func (m XDPMode) String() string {
	switch m {
	case XDPNative:
		return "native"
	case XDPGeneric:
		return "generic"
	}
	return "unknown"
}
