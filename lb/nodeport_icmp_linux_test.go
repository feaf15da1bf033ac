package lb

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// icmpError builds an ICMP (ICMPv6) error from src to dst quoting quote,
// an IP packet from its IP header on, with every checksum valid.
func icmpError(src, dst netip.Addr, typ, code uint8, quote []byte) []byte {
	msg := make([]byte, 8, 8+len(quote))
	msg[0], msg[1] = typ, code
	binary.BigEndian.PutUint32(msg[4:], 1400) // next-hop MTU, or unused
	msg = append(msg, quote...)
	eth := make([]byte, 14)
	var ip []byte
	if src.Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		binary.BigEndian.PutUint16(msg[2:], csumFold(csumAdd(0, msg)))
		ip = make([]byte, 20)
		ip[0], ip[8], ip[9] = 0x45, 64, 1
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(msg)))
		copy(ip[12:], src.AsSlice())
		copy(ip[16:], dst.AsSlice())
		binary.BigEndian.PutUint16(ip[10:], csumFold(csumAdd(0, ip)))
	} else {
		binary.BigEndian.PutUint16(eth[12:], 0x86dd)
		binary.BigEndian.PutUint16(msg[2:], csumFold(csumAdd(pseudo(src, dst, 58, len(msg)), msg)))
		ip = make([]byte, 40)
		ip[0], ip[6], ip[7] = 0x60, 58, 64
		binary.BigEndian.PutUint16(ip[4:], uint16(len(msg)))
		copy(ip[8:], src.AsSlice())
		copy(ip[24:], dst.AsSlice())
	}
	return append(append(eth, ip...), msg...)
}

// icmpSeen is what a client makes of an ICMP error: its addresses and
// those of the quoted packet.
type icmpSeen struct {
	src, dst     netip.Addr
	qsrc, qdst   netip.AddrPort
	typ, code    uint8
	fullQuoteSum bool // the quote's L4 checksum was in it and was checked
}

// readICMPError parses an ICMP error and checks every checksum in it
// from scratch: the outer IPv4 header's, the ICMP checksum, the quoted
// IPv4 header's and, when the quote holds the whole L4 packet, its L4
// checksum.
func readICMPError(tb testing.TB, b []byte) icmpSeen {
	tb.Helper()
	var s icmpSeen
	var msg, quote []byte
	if binary.BigEndian.Uint16(b[12:]) == 0x0800 {
		ip := b[14:34]
		if csumFold(csumAdd(0, ip)) != 0 {
			tb.Fatal("bad outer IPv4 header checksum")
		}
		s.src, s.dst = netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
		msg = b[34:]
		if csumFold(csumAdd(0, msg)) != 0 {
			tb.Fatal("bad ICMP checksum")
		}
		quote = msg[8:]
		if csumFold(csumAdd(0, quote[:20])) != 0 {
			tb.Fatal("bad quoted IPv4 header checksum")
		}
		s.qsrc = netip.AddrPortFrom(netip.AddrFrom4([4]byte(quote[12:16])), binary.BigEndian.Uint16(quote[20:]))
		s.qdst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(quote[16:20])), binary.BigEndian.Uint16(quote[22:]))
		if total := int(binary.BigEndian.Uint16(quote[2:])); total == len(quote) {
			l4 := quote[20:]
			if csumFold(csumAdd(pseudo(s.qsrc.Addr(), s.qdst.Addr(), quote[9], len(l4)), l4)) != 0 {
				tb.Fatal("bad quoted L4 checksum")
			}
			s.fullQuoteSum = true
		}
	} else {
		ip := b[14:54]
		s.src, s.dst = netip.AddrFrom16([16]byte(ip[8:24])), netip.AddrFrom16([16]byte(ip[24:40]))
		msg = b[54:]
		if csumFold(csumAdd(pseudo(s.src, s.dst, 58, len(msg)), msg)) != 0 {
			tb.Fatal("bad ICMPv6 checksum")
		}
		quote = msg[8:]
		s.qsrc = netip.AddrPortFrom(netip.AddrFrom16([16]byte(quote[8:24])), binary.BigEndian.Uint16(quote[40:]))
		s.qdst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(quote[24:40])), binary.BigEndian.Uint16(quote[42:]))
		if int(binary.BigEndian.Uint16(quote[4:]))+40 == len(quote) {
			l4 := quote[40:]
			if csumFold(csumAdd(pseudo(s.qsrc.Addr(), s.qdst.Addr(), quote[6], len(l4)), l4)) != 0 {
				tb.Fatal("bad quoted L4 checksum")
			}
			s.fullQuoteSum = true
		}
	}
	s.typ, s.code = msg[0], msg[1]
	return s
}

// TestPrivilegedNorthSouthICMPErrors: an ICMP error about a translated
// flow reaches the client translated back, as Cilium's rev-NAT does for
// the errors it handles, through BPF_PROG_TEST_RUN with crafted packets.
// A flow is made by running the client's first packet through the XDP
// program; the error quotes that packet as the backend got it, all of it
// or only 8 bytes of its L4 header. In SNAT mode (arriving at the node,
// XDP and tc ingress) the quote node:NAT port -> backend becomes client
// -> frontend and the error goes to the client; in DNAT mode (leaving
// through tc egress) the quote client -> backend becomes client ->
// frontend. An error from the backend comes from the frontend, one from
// a router keeps its source. Every checksum is verified from scratch.
// Errors about no known flow, and ICMP messages that are not errors,
// pass unchanged.
func TestPrivilegedNorthSouthICMPErrors(t *testing.T) {
	testutils.RequirePrivileged(t)
	snat4, snat6 := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("fd00:1::1")
	snatNS, err := NewNorthSouth(NorthSouthConfig{MaglevTableSize: 251, MaglevHashSeed: testSeed, SNATAddrs: []netip.Addr{snat4, snat6}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { snatNS.Close() })
	dnatNS := newTestNorthSouth(t)
	router4, router6 := netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("fd77::1")

	type errKind struct {
		name      string
		typ, code uint8
	}
	for _, tc := range []struct {
		v6    bool
		proto nodeplane.Protocol
		kinds []errKind
	}{
		{false, nodeplane.ProtoTCP, []errKind{{"fragmentation needed", 3, 4}, {"host unreachable", 3, 1}, {"TTL exceeded", 11, 0}}},
		{false, nodeplane.ProtoUDP, []errKind{{"port unreachable", 3, 3}}},
		{true, nodeplane.ProtoTCP, []errKind{{"packet too big", 2, 0}, {"hop limit exceeded", 3, 0}}},
		{true, nodeplane.ProtoUDP, []errKind{{"port unreachable", 1, 4}}},
	} {
		vip, be, client, router, snat := netip.MustParseAddrPort("10.99.0.8:80"), netip.MustParseAddrPort("10.40.0.8:8080"),
			netip.MustParseAddrPort("198.18.0.8:40008"), router4, snat4
		if tc.v6 {
			vip, be, client, router, snat = netip.MustParseAddrPort("[fd99::8]:80"), netip.MustParseAddrPort("[fd40::8]:8080"),
				netip.MustParseAddrPort("[2001:db8::8]:40008"), router6, snat6
		}

		svc := Service{Frontend: Frontend{vip, tc.proto}, Type: LoadBalancer}
		for _, ns := range []*NorthSouth{snatNS, dnatNS} {
			if err := ns.Upsert(svc, []Backend{{Addr: be}}); err != nil {
				t.Fatal(err)
			}
		}
		for _, mode := range []string{"snat-xdp", "snat-tc", "dnat"} {
			ns, prog := snatNS, snatNS.objs.NpNodeportXdp
			switch mode {
			case "snat-tc":
				prog = snatNS.objs.NpNodeportTc
			case "dnat":
				ns, prog = dnatNS, dnatNS.objs.NpNodeportRevnat
			}
			// The flow, as the backend receives it.
			ret, fwd := runProg(t, ns.objs.NpNodeportXdp, testPkt{src: client, dst: vip, proto: uint8(tc.proto)}.bytes())
			if ret != xdpPass {
				t.Fatalf("first packet: verdict %d", ret)
			}
			fsrc, fdst := parsePkt(t, fwd)
			if fdst != be || (mode == "dnat") != (fsrc == client) || (mode != "dnat") != (fsrc.Addr() == snat) {
				t.Fatalf("%s: flow %s -> %s", mode, fsrc, fdst)
			}
			errDst := fsrc.Addr() // the backend answers the packet's source
			for _, k := range tc.kinds {
				for _, from := range []netip.Addr{be.Addr(), router} {
					for _, full := range []bool{true, false} {
						quote := slices.Clone(fwd[14:])
						if !full {
							hl := 20
							if tc.v6 {
								hl = 40
							}
							quote = quote[:hl+8]
						}
						name := fmt.Sprintf("%s/%s/%s/%s/from-%s/full-%v", map[bool]string{false: "v4", true: "v6"}[tc.v6], tc.proto, mode, k.name, from, full)
						t.Run(name, func(t *testing.T) {
							in := icmpError(from, errDst, k.typ, k.code, quote)
							verdict, out := runProgVerdict(t, prog, in)
							if verdict != xdpPass && !(mode != "snat-xdp" && verdict == 0) {
								t.Fatalf("verdict %d", verdict)
							}
							got := readICMPError(t, out)
							wantSrc := from
							if from == be.Addr() {
								wantSrc = vip.Addr()
							}
							want := icmpSeen{src: wantSrc, dst: client.Addr(), qsrc: client, qdst: vip, typ: k.typ, code: k.code, fullQuoteSum: full}
							if got != want {
								t.Fatalf("client gets %+v, want %+v", got, want)
							}
						})
					}
				}
			}
			// An error about a flow the node does not know, and an
			// echo request, pass unchanged.
			stranger := slices.Clone(fwd[14:])
			binary.BigEndian.PutUint16(stranger[map[bool]int{false: 22, true: 42}[tc.v6]:], 9999)
			for _, in := range [][]byte{
				icmpError(be.Addr(), errDst, tc.kinds[0].typ, tc.kinds[0].code, stranger),
				icmpError(be.Addr(), errDst, map[bool]uint8{false: 8, true: 128}[tc.v6], 0, slices.Clone(fwd[14:])),
			} {
				if _, out := runProgVerdict(t, prog, in); !slices.Equal(out, in) {
					t.Errorf("%s: an unrelated ICMP message was changed", mode)
				}
			}
		}
	}
}

// runProgVerdict runs prog on pkt and returns the verdict and the packet
// as the program left it.
func runProgVerdict(tb testing.TB, prog *ebpf.Program, pkt []byte) (uint32, []byte) {
	tb.Helper()
	out := make([]byte, len(pkt)+256)
	opts := ebpf.RunOptions{Data: pkt, DataOut: out}
	ret, err := prog.Run(&opts)
	if err != nil {
		tb.Fatal(err)
	}
	return ret, out[:len(opts.DataOut)]
}
