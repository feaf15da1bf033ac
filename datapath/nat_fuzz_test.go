package datapath

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane"
)

// l4Residue is the one's-complement sum of an IPv4 or IPv6 packet's L4
// bytes (checksum field included) and its pseudo-header, folded; ok is
// false for what NAT does not translate. The checksum helpers and the
// translation preserve it whether or not the checksum was right, so it
// must be the same before and after. A UDP packet without checksum (zero)
// has residue 0 and must keep its zero.
func l4Residue(pkt []byte) (uint16, bool) {
	if len(pkt) < 14 {
		return 0, false
	}
	var (
		src, dst netip.Addr
		proto    uint8
		l4       []byte
		plen     int
	)
	switch binary.BigEndian.Uint16(pkt[12:]) {
	case 0x0800:
		ip := pkt[14:]
		if len(ip) < 20 || ip[0]>>4 != 4 || ip[0]&0xf < 5 || len(ip) < int(ip[0]&0xf)*4 {
			return 0, false
		}
		hl := int(ip[0]&0xf) * 4
		src, dst, proto = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20])), ip[9]
		l4, plen = ip[hl:], int(binary.BigEndian.Uint16(ip[2:]))-hl
	case 0x86dd:
		ip := pkt[14:]
		if len(ip) < 40 {
			return 0, false
		}
		src, dst, proto = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40])), ip[6]
		l4, plen = ip[40:], int(binary.BigEndian.Uint16(ip[4:]))
	default:
		return 0, false
	}
	var sum uint32
	switch proto {
	case 6, 17, 58:
		sum = pseudoHeaderSum(src, dst, nodeplane.Protocol(proto), plen)
	case 1:
	default:
		return 0, false
	}
	if proto == 17 && len(l4) >= 8 && l4[6] == 0 && l4[7] == 0 {
		return 0, true // no checksum: must stay zero
	}
	r := checksum(sum, l4)
	if r == 0xffff {
		r = 0
	}
	return r, true
}

// FuzzNATPrograms runs arbitrary packets through the masquerading
// programs. Whatever comes in, a packet passes (TC_ACT_OK) or is dropped
// (TC_ACT_SHOT), keeps its length, and a translated packet keeps its L4
// checksum residue and (IPv4) a valid header checksum if it had one.
func FuzzNATPrograms(f *testing.F) {
	pod4, pod6 := netip.MustParseAddr("10.1.0.10"), netip.MustParseAddr("fd00:0:0:10::10")
	for _, p := range []TestPacket{
		{Src: pod4, Dst: masqWorldAddr, Proto: nodeplane.ProtoTCP, SrcPort: 40000, DstPort: 80},
		{Src: pod4, Dst: masqWorldAddr, Proto: nodeplane.ProtoUDP, SrcPort: 61234, DstPort: 53, Payload: []byte("x")},
		{Src: pod4, Dst: masqWorldAddr, Proto: nodeplane.ProtoICMP, ICMPType: 8, ICMPID: 7},
		{Src: pod6, Dst: masqWorldAddr6, Proto: nodeplane.ProtoTCP, SrcPort: 40000, DstPort: 443},
		{Src: pod6, Dst: masqWorldAddr6, Proto: nodeplane.ProtoICMPv6, ICMPType: 128, ICMPID: 9},
		{Src: masqWorldAddr, Dst: masqNodeAddr, Proto: nodeplane.ProtoUDP, SrcPort: 53, DstPort: 61234},
	} {
		b := mustBytes(f, p)
		f.Add(b, false)
		f.Add(b, true)
		f.Add(b[:len(b)-4], false)
	}
	// An ICMP error about the UDP flow above (its port 61234 is in the
	// range, so kept).
	quoted := mustBytes(f, TestPacket{Src: masqNodeAddr, Dst: masqWorldAddr, Proto: nodeplane.ProtoUDP, SrcPort: 61234, DstPort: 53, Payload: []byte("x")})[14:42]
	f.Add(mustBytes(f, TestPacket{Src: masqWorldAddr, Dst: masqNodeAddr, Proto: nodeplane.ProtoICMP, ICMPType: 3, ICMPCode: 3, Payload: quoted}), true)
	d, _, _, wan, _ := newMasqWorld(f, Config{})
	m, err := d.AttachMasquerade(MasqueradeConfig{Ifindex: wan.Index, Address: masqNodeAddr, Address6: masqNodeAddr6, GCInterval: -1})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { m.Close() })
	f.Fuzz(func(t *testing.T, pkt []byte, ingress bool) {
		if len(pkt) < 14 || len(pkt) > 1500 {
			return
		}
		prog := m.egress()
		if ingress {
			prog = m.ingress()
		}
		buf := make([]byte, len(pkt)+256)
		opts := ebpf.RunOptions{Data: pkt, DataOut: buf}
		ret, err := prog.Run(&opts)
		if errors.Is(err, unix.EINVAL) {
			return // the kernel takes no IP packet shorter than its header
		}
		if err != nil {
			t.Fatal(err)
		}
		out := buf[:len(opts.DataOut)]
		if ret != 0 && ret != 2 {
			t.Fatalf("verdict %d", ret)
		}
		if ret == 2 || bytes.Equal(out, pkt) {
			return
		}
		if len(out) != len(pkt) {
			t.Fatalf("length %d -> %d", len(pkt), len(out))
		}
		rin, ok := l4Residue(pkt)
		if !ok {
			t.Fatalf("translated a packet NAT does not handle:\n in % x\nout % x", pkt, out)
		}
		if rout, _ := l4Residue(out); rout != rin {
			t.Fatalf("L4 checksum residue %#x -> %#x:\n in % x\nout % x", rin, rout, pkt, out)
		}
		if binary.BigEndian.Uint16(pkt[12:]) == 0x0800 {
			hl := int(pkt[14]&0xf) * 4
			if checksum(0, pkt[14:14+hl]) == 0xffff && checksum(0, out[14:14+hl]) != 0xffff {
				t.Fatalf("IPv4 header checksum broken:\n in % x\nout % x", pkt, out)
			}
		}
	})
}
