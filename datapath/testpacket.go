package datapath

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/nodeplane/nodeplane"
)

// TestPacket describes a packet to feed to [Endpoint.TestRun]; Bytes
// builds it, with valid checksums.
type TestPacket struct {
	// Src and Dst are the IP addresses, both IPv4 or both IPv6.
	Src, Dst netip.Addr
	// Proto is the L4 protocol: TCP, UDP, SCTP, ICMP, ICMPv6, or any other
	// number for a bare payload.
	Proto nodeplane.Protocol
	// SrcPort and DstPort for TCP, UDP and SCTP.
	SrcPort, DstPort uint16
	// TCPFlags for TCP; 0 means a SYN.
	TCPFlags uint8
	// ICMPType, ICMPCode and ICMPID (the echo identifier) for ICMP and
	// ICMPv6.
	ICMPType, ICMPCode uint8
	ICMPID             uint16
	// TTL is the IPv4 TTL or IPv6 hop limit; 0 means 64.
	TTL uint8
	// SrcMAC and DstMAC default to zero addresses, which the datapath
	// does not look at.
	SrcMAC, DstMAC net.HardwareAddr
	Payload        []byte
}

// TCP flags for TestPacket.TCPFlags.
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPAck = 0x10
)

// Bytes returns the packet from its Ethernet header on.
func (p TestPacket) Bytes() ([]byte, error) {
	if !p.Src.IsValid() || !p.Dst.IsValid() || p.Src.Is4() != p.Dst.Is4() {
		return nil, fmt.Errorf("test packet: addresses %v and %v are not of one IP family", p.Src, p.Dst)
	}
	ttl := p.TTL
	if ttl == 0 {
		ttl = 64
	}

	var l4 []byte
	switch p.Proto {
	case 6:
		flags := p.TCPFlags
		if flags == 0 {
			flags = TCPSyn
		}
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint16(l4[0:], p.SrcPort)
		binary.BigEndian.PutUint16(l4[2:], p.DstPort)
		binary.BigEndian.PutUint32(l4[4:], 1) // seq
		l4[12] = 5 << 4                       // data offset
		l4[13] = flags
		binary.BigEndian.PutUint16(l4[14:], 65535) // window
	case 17:
		l4 = make([]byte, 8)
		binary.BigEndian.PutUint16(l4[0:], p.SrcPort)
		binary.BigEndian.PutUint16(l4[2:], p.DstPort)
		binary.BigEndian.PutUint16(l4[4:], uint16(8+len(p.Payload)))
	case 132:
		l4 = make([]byte, 12)
		binary.BigEndian.PutUint16(l4[0:], p.SrcPort)
		binary.BigEndian.PutUint16(l4[2:], p.DstPort)
	case 1, 58:
		l4 = make([]byte, 8)
		l4[0], l4[1] = p.ICMPType, p.ICMPCode
		binary.BigEndian.PutUint16(l4[4:], p.ICMPID)
	}
	l4 = append(l4, p.Payload...)
	// The IPv4 total length and the IPv6 payload length are 16 bits (no
	// jumbograms): refuse what would wrap.
	ipLen := len(l4) // IPv6: the payload length
	if p.Src.Is4() {
		ipLen += 20 // IPv4: the total length
	}
	if ipLen > 65535 {
		return nil, fmt.Errorf("test packet: IP length %d exceeds 65535 bytes", ipLen)
	}

	var l3 []byte
	if p.Src.Is4() {
		l3 = make([]byte, 20)
		l3[0] = 0x45
		binary.BigEndian.PutUint16(l3[2:], uint16(20+len(l4)))
		l3[8], l3[9] = ttl, uint8(p.Proto)
		s, d := p.Src.As4(), p.Dst.As4()
		copy(l3[12:], s[:])
		copy(l3[16:], d[:])
		binary.BigEndian.PutUint16(l3[10:], ^checksum(0, l3))
	} else {
		l3 = make([]byte, 40)
		l3[0] = 0x60
		binary.BigEndian.PutUint16(l3[4:], uint16(len(l4)))
		l3[6], l3[7] = uint8(p.Proto), ttl
		s, d := p.Src.As16(), p.Dst.As16()
		copy(l3[8:], s[:])
		copy(l3[24:], d[:])
	}
	if off := l4ChecksumOffset(p.Proto); off >= 0 && len(l4) >= off+2 {
		var sum uint32
		if p.Proto != 1 { // ICMPv4 has no pseudo-header
			sum = pseudoHeaderSum(p.Src, p.Dst, p.Proto, len(l4))
		}
		c := ^checksum(sum, l4)
		if c == 0 && p.Proto == 17 {
			c = 0xffff // 0 would mean no checksum
		}
		binary.BigEndian.PutUint16(l4[off:], c)
	}

	pkt := make([]byte, 14, 14+len(l3)+len(l4))
	copy(pkt[0:6], p.DstMAC)
	copy(pkt[6:12], p.SrcMAC)
	etherType := uint16(0x0800)
	if p.Src.Is6() {
		etherType = 0x86DD
	}
	binary.BigEndian.PutUint16(pkt[12:], etherType)
	return append(append(pkt, l3...), l4...), nil
}

// l4ChecksumOffset returns where the protocol's checksum is, or -1. SCTP
// uses CRC32c, which the datapath never checks; it is left zero.
func l4ChecksumOffset(proto nodeplane.Protocol) int {
	switch proto {
	case 6:
		return 16
	case 17:
		return 6
	case 1, 58:
		return 2
	}
	return -1
}

func pseudoHeaderSum(src, dst netip.Addr, proto nodeplane.Protocol, length int) uint32 {
	var sum uint32
	for _, b := range [][]byte{src.AsSlice(), dst.AsSlice()} {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	return sum + uint32(proto) + uint32(length)
}

// checksum adds b to the one's-complement sum and folds it.
func checksum(sum uint32, b []byte) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return uint16(sum)
}
