package lb

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
)

// v6Ext is one IPv6 extension header: its type and its bytes, the first
// two (next header, length) filled in by withExts.
type v6Ext struct {
	typ  uint8
	body []byte
}

func optExt(typ uint8, n int) v6Ext { return v6Ext{typ, make([]byte, n)} }

func fragExt(offset uint16, more bool) v6Ext {
	b := make([]byte, 8)
	v := offset << 3
	if more {
		v |= 1
	}
	binary.BigEndian.PutUint16(b[2:], v)
	binary.BigEndian.PutUint32(b[4:], 0x1234)
	return v6Ext{44, b}
}

// withExts inserts exts between the IPv6 header of pkt and its L4 header.
func withExts(pkt []byte, exts ...v6Ext) []byte {
	out := slices.Clone(pkt[:54])
	last := out[20]
	out[20] = exts[0].typ
	total := 0
	for i, e := range exts {
		b := slices.Clone(e.body)
		b[0] = last
		if i+1 < len(exts) {
			b[0] = exts[i+1].typ
		}
		switch e.typ {
		case 51: // AH: 4-byte words less 2
			b[1] = byte(len(b)/4 - 2)
		case 44:
		default:
			b[1] = byte(len(b)/8 - 1)
		}
		out = append(out, b...)
		total += len(b)
	}
	binary.BigEndian.PutUint16(out[18:], binary.BigEndian.Uint16(out[18:])+uint16(total))
	return append(out, pkt[54:]...)
}

// TestPrivilegedNorthSouthIPv6ExtHeaders: IPv6 packets to a frontend with
// extension headers are balanced as without them, hop-by-hop, destination
// options and AH being skipped as Cilium's ipv6_hdrlen does, in the XDP
// program and its tc twin; a chain of more than four headers or one ending
// in "no next header" drops with DROP_INVALID_EXTHDR (156), one cut short
// with DROP_INVALID; a first fragment to a frontend drops with
// DROP_FRAG_NOSUPPORT, a later one passes, an atomic one is balanced.
func TestPrivilegedNorthSouthIPv6ExtHeaders(t *testing.T) {
	ns := newTestNorthSouth(t)
	vip := netip.MustParseAddrPort("[fd99::6]:80")
	be := netip.MustParseAddrPort("[fd40::6]:8080")
	if err := ns.Upsert(Service{Frontend: Frontend{vip, nodeplane.ProtoTCP}, Type: LoadBalancer}, []Backend{{Addr: be}}); err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort("[2001:db8::6]:40000")
	base := testPkt{src: client, dst: vip, proto: 6}.bytes()
	other := testPkt{src: client, dst: netip.MustParseAddrPort("[fd99::7]:80"), proto: 6}.bytes()
	five := []v6Ext{optExt(60, 8), optExt(60, 8), optExt(60, 8), optExt(60, 8), optExt(60, 8)}
	for _, tc := range []struct {
		name   string
		pkt    []byte
		reason monitor.DropReason // 0: passes
		xlate  bool
	}{
		{"hop-by-hop and destination options", withExts(base, optExt(0, 8), optExt(60, 16)), 0, true},
		{"routing and AH", withExts(base, optExt(43, 8), optExt(51, 12)), 0, true},
		{"four headers", withExts(base, five[:4]...), 0, true},
		{"five headers", withExts(base, five...), monitor.DropInvalidExtHeader, false},
		{"no next header", withExts(base, optExt(0, 8), optExt(59, 8))[:54+16], monitor.DropInvalidExtHeader, false},
		{"header cut short", withExts(base, optExt(0, 8))[:55], monitor.DropInvalidPacket, false},
		{"atomic fragment", withExts(base, fragExt(0, false)), 0, true},
		{"first fragment", withExts(base, fragExt(0, true)), monitor.DropFragNoSupport, false},
		{"later fragment", withExts(base, fragExt(8, true)), 0, false},
		{"not a frontend", withExts(other, optExt(0, 8)), 0, false},
	} {
		for _, prog := range []struct {
			name       string
			drop, pass uint32
		}{{"xdp", xdpDrop, xdpPass}, {"tc", 2, 0}} {
			if prog.name == "tc" && len(tc.pkt) < 54+8 {
				continue // BPF_PROG_TEST_RUN refuses such a short skb
			}
			t.Run(tc.name+"/"+prog.name, func(t *testing.T) {
				p := ns.objs.NpNodeportXdp
				if prog.name == "tc" {
					p = ns.objs.NpNodeportTc
				}
				before, err := ns.Drops()
				if err != nil {
					t.Fatal(err)
				}
				ret, out := runProg(t, p, tc.pkt)
				after, err := ns.Drops()
				if err != nil {
					t.Fatal(err)
				}
				if tc.reason != 0 {
					if ret != prog.drop || after[tc.reason] != before[tc.reason]+1 {
						t.Fatalf("verdict %d, drops[%s] %d -> %d; want a drop", ret, tc.reason, before[tc.reason], after[tc.reason])
					}
					return
				}
				if ret != prog.pass {
					t.Fatalf("verdict %d, want pass (drops %v)", ret, after)
				}
				if !tc.xlate {
					if !slices.Equal(out, tc.pkt) {
						t.Fatal("a passed packet was changed")
					}
					return
				}
				// The destination is the backend's; the extension
				// headers are untouched; the L4 checksum holds.
				l4 := out[len(out)-(len(base)-54):]
				dst := netip.AddrFrom16([16]byte(out[38:54]))
				if dst != be.Addr() || binary.BigEndian.Uint16(l4[2:]) != be.Port() {
					t.Fatalf("destination %s port %d, want %s", dst, binary.BigEndian.Uint16(l4[2:]), be)
				}
				if !slices.Equal(out[54:len(out)-len(l4)], tc.pkt[54:len(out)-len(l4)]) {
					t.Fatal("extension headers changed")
				}
				if csumFold(csumAdd(pseudo(client.Addr(), be.Addr(), 6, len(l4)), l4)) != 0 {
					t.Fatal("bad TCP checksum")
				}
			})
		}
	}
}
