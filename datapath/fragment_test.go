package datapath

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
)

// fragment splits pkt, an IPv4 packet with a 20-byte header or an IPv6
// packet without extension headers (Ethernet header on), into fragments
// whose payloads hold at most size bytes (a multiple of 8), the way a
// sending stack does.
func fragment(t *testing.T, pkt []byte, id uint32, size int) [][]byte {
	t.Helper()
	if size%8 != 0 {
		t.Fatalf("fragment payload size %d is not a multiple of 8", size)
	}
	v4 := binary.BigEndian.Uint16(pkt[12:]) == 0x0800
	hlen := 40
	if v4 {
		hlen = 20
	}
	eth, hdr, payload := pkt[:14], pkt[14:14+hlen], pkt[14+hlen:]
	var frags [][]byte
	for off := 0; off < len(payload); off += size {
		chunk := payload[off:min(off+size, len(payload))]
		more := off+size < len(payload)
		f := append(append([]byte(nil), eth...), hdr...)
		if v4 {
			ip := f[14:]
			binary.BigEndian.PutUint16(ip[2:], uint16(hlen+len(chunk)))
			binary.BigEndian.PutUint16(ip[4:], uint16(id))
			fo := uint16(off / 8)
			if more {
				fo |= 0x2000 // MF
			}
			binary.BigEndian.PutUint16(ip[6:], fo)
			ip[10], ip[11] = 0, 0
			binary.BigEndian.PutUint16(ip[10:], ^checksum(0, ip[:20]))
		} else {
			ip := f[14:]
			fh := make([]byte, 8)
			fh[0] = ip[6] // the original next header
			offlg := uint16(off)
			if more {
				offlg |= 1 // M
			}
			binary.BigEndian.PutUint16(fh[2:], offlg)
			binary.BigEndian.PutUint32(fh[4:], id)
			ip[6] = 44
			binary.BigEndian.PutUint16(ip[4:], uint16(len(fh)+len(chunk)))
			f = append(f, fh...)
		}
		frags = append(frags, append(f, chunk...))
	}
	return frags
}

// TestPrivilegedFragments feeds fragmented datagrams through the
// from-endpoint program: every fragment gets the first one's verdict, and
// a later fragment whose first one never came is dropped.
func TestPrivilegedFragments(t *testing.T) {
	w := newTestRunWorld(t)
	run := func(t *testing.T, pkt []byte) want {
		t.Helper()
		v, _, err := w.a.TestRun(FromEndpoint, pkt)
		if err != nil {
			t.Fatal(err)
		}
		return wantOf(v)
	}
	payload := make([]byte, 100)
	for i := range payload {
		payload[i] = byte(i)
	}

	for _, fam := range []struct {
		name   string
		src    netip.Addr
		remote netip.Addr
		ping   uint8
	}{
		{"IPv4", addrA, remote, 8},
		{"IPv6", addrA6, remote6, 128},
	} {
		t.Run(fam.name, func(t *testing.T) {
			udp := func(sport, dport uint16) []byte {
				return mustBytes(t, TestPacket{Src: fam.src, Dst: fam.remote, Proto: protoUDP, SrcPort: sport, DstPort: dport, Payload: payload})
			}
			id := uint32(0x1000)
			if fam.src.Is6() {
				id = 0x1000_0000
			}

			t.Run("allowed datagram", func(t *testing.T) {
				frags := fragment(t, udp(40000, 53), id+1, 32)
				if len(frags) != 4 {
					t.Fatalf("%d fragments", len(frags))
				}
				if got := run(t, frags[0]); got != (want{ActionPass, 0, ConntrackNew, idA, idRemote}) {
					t.Fatalf("first fragment: %+v", got)
				}
				for i, f := range frags[1:] {
					if got := run(t, f); got != (want{ActionPass, 0, ConntrackEstablished, idA, idRemote}) {
						t.Fatalf("fragment %d: %+v", i+1, got)
					}
				}
				// The later fragments counted on the first one's connection.
				ct, ok, err := w.d.Conntrack().Lookup(Tuple{Src: fam.src, Dst: fam.remote, SrcPort: 40000, DstPort: 53, Proto: protoUDP})
				if err != nil || !ok || ct.Packets != 4 {
					t.Fatalf("conntrack entry %+v (found %v, %v), want 4 packets", ct, ok, err)
				}
			})
			t.Run("denied datagram", func(t *testing.T) {
				for i, f := range fragment(t, udp(40001, 54), id+2, 32) {
					if got := run(t, f); got != (want{ActionDrop, monitor.DropPolicyDenied, ConntrackNew, idA, idRemote}) {
						t.Fatalf("fragment %d: %+v, want every one denied", i, got)
					}
				}
			})
			t.Run("fragments out of order", func(t *testing.T) {
				frags := fragment(t, udp(40002, 53), id+3, 32)
				if got := run(t, frags[2]); got != (want{ActionDrop, monitor.DropFragmentNotFound, 0, 0, 0}) {
					t.Fatalf("later fragment before the first: %+v", got)
				}
				if got := run(t, frags[0]); got.action != ActionPass {
					t.Fatalf("first fragment: %+v", got)
				}
				if got := run(t, frags[2]); got.action != ActionPass {
					t.Fatalf("later fragment after the first: %+v", got)
				}
			})
			t.Run("identification tells datagrams apart", func(t *testing.T) {
				allowed := fragment(t, udp(40003, 53), id+4, 32)
				denied := fragment(t, udp(40003, 54), id+5, 32)
				run(t, allowed[0])
				run(t, denied[0])
				if got := run(t, denied[1]); got.reason != monitor.DropPolicyDenied {
					t.Fatalf("later fragment of the denied datagram: %+v", got)
				}
				if got := run(t, allowed[1]); got.action != ActionPass {
					t.Fatalf("later fragment of the allowed datagram: %+v", got)
				}
			})
			t.Run("first fragment too short for the L4 header", func(t *testing.T) {
				frags := fragment(t, mustBytes(t, TestPacket{Src: fam.src, Dst: fam.remote, Proto: protoTCP, SrcPort: 40004, DstPort: 80, Payload: payload}), id+6, 8)
				if got := run(t, frags[0]); got != (want{ActionDrop, monitor.DropCTInvalidHeader, 0, 0, 0}) {
					t.Fatalf("8-byte first fragment of a TCP segment: %+v", got)
				}
				if got := run(t, frags[1]); got != (want{ActionDrop, monitor.DropFragmentNotFound, 0, 0, 0}) {
					t.Fatalf("its second fragment: %+v", got)
				}
			})
			t.Run("spoofed first fragment plants nothing", func(t *testing.T) {
				// A sends the first fragment of a datagram in B's name; it is
				// dropped, and B's own later fragment of that datagram finds
				// no ports to inherit.
				b := addrB
				if fam.src.Is6() {
					b = addrB6
				}
				frags := fragment(t, mustBytes(t, TestPacket{Src: b, Dst: fam.remote, Proto: protoUDP, SrcPort: 40008, DstPort: 53, Payload: payload}), id+8, 32)
				if got := run(t, frags[0]); got != (want{ActionDrop, monitor.DropInvalidSourceIP, 0, 0, 0}) {
					t.Fatalf("spoofed first fragment: %+v", got)
				}
				v, _, err := w.b.TestRun(FromEndpoint, frags[1])
				if err != nil {
					t.Fatal(err)
				}
				if got := wantOf(v); got != (want{ActionDrop, monitor.DropFragmentNotFound, 0, 0, 0}) {
					t.Fatalf("B's later fragment: %+v", got)
				}
			})
			t.Run("fragmented ping", func(t *testing.T) {
				proto := nodeplane.Protocol(protoICMP)
				if fam.src.Is6() {
					proto = protoICMPv6
				}
				for i, f := range fragment(t, mustBytes(t, TestPacket{Src: fam.src, Dst: fam.remote, Proto: proto, ICMPType: fam.ping, ICMPID: 77, Payload: payload}), id+7, 48) {
					if got := run(t, f); got.action != ActionPass {
						t.Fatalf("fragment %d of an echo request: %+v", i, got)
					}
				}
			})
		})
	}

	t.Run("IPv6 atomic fragment is a whole packet", func(t *testing.T) {
		b := mustBytes(t, TestPacket{Src: addrA6, Dst: remote6, Proto: protoUDP, SrcPort: 40005, DstPort: 53, Payload: payload})
		frags := fragment(t, b, 9, 256) // one fragment: offset 0, no M flag
		if len(frags) != 1 {
			t.Fatalf("%d fragments", len(frags))
		}
		if got := run(t, frags[0]); got != (want{ActionPass, 0, ConntrackNew, idA, idRemote}) {
			t.Fatalf("atomic fragment: %+v", got)
		}
	})
	t.Run("IPv6 two fragment headers", func(t *testing.T) {
		b := mustBytes(t, TestPacket{Src: addrA6, Dst: remote6, Proto: protoUDP, SrcPort: 40006, DstPort: 53, Payload: payload})
		once := fragment(t, b, 10, 256)[0]
		twice := fragment(t, once, 11, 256)[0]
		if got := run(t, twice); got != (want{ActionDrop, monitor.DropInvalidExtHeader, 0, 0, 0}) {
			t.Fatalf("two fragment headers: %+v", got)
		}
	})
}
