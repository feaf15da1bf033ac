package datapath

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
)

// TestTestPacketLengthLimits: the IPv4 total length and the IPv6 payload
// length are 16-bit fields; a packet that does not fit is an error, not a
// header with a wrapped length.
func TestTestPacketLengthLimits(t *testing.T) {
	v4 := TestPacket{Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2"), Proto: 17, SrcPort: 1, DstPort: 2}
	v6 := TestPacket{Src: netip.MustParseAddr("fd00::1"), Dst: netip.MustParseAddr("fd00::2"), Proto: 17, SrcPort: 1, DstPort: 2}
	const eth = 14
	for _, tc := range []struct {
		name    string
		p       TestPacket
		payload int
		ok      bool
	}{
		{"IPv4 at the limit", v4, 65535 - 20 - 8, true},
		{"IPv4 one byte over", v4, 65535 - 20 - 8 + 1, false},
		{"IPv4 far over", v4, 70000, false},
		{"IPv6 at the limit", v6, 65535 - 8, true},
		{"IPv6 one byte over", v6, 65535 - 8 + 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := tc.p
			p.Payload = make([]byte, tc.payload)
			b, err := p.Bytes()
			if !tc.ok {
				if err == nil {
					t.Fatalf("Bytes accepted %d bytes of payload (IP length field %d)", tc.payload, binary.BigEndian.Uint16(b[eth+2:]))
				}
				if !strings.Contains(err.Error(), "65535") {
					t.Fatalf("error %q does not name the limit", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var l3len int
			if p.Src.Is4() {
				l3len = int(binary.BigEndian.Uint16(b[eth+2:]))
			} else {
				l3len = 40 + int(binary.BigEndian.Uint16(b[eth+4:]))
			}
			if l3len != len(b)-eth {
				t.Fatalf("IP length says %d bytes, the packet has %d", l3len, len(b)-eth)
			}
		})
	}
}
