package lb

import (
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/flow"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// FuzzNorthSouthPackets feeds arbitrary frames to the north-south XDP
// program and its tc twins (the header parsers: IPv4, IPv6 extension
// headers, ICMP errors and their quotes, fragments) with SNAT on and a
// service with affinity. Whatever the input, the XDP verdict is pass, drop
// or (DSR too big) TX, and every drop leaves exactly one drop record that
// package flow decodes as a drop with the reason the counters name.
func FuzzNorthSouthPackets(f *testing.F) {
	testutils.RequirePrivileged(f)
	ns, err := NewNorthSouth(NorthSouthConfig{MaglevTableSize: 251, MaglevHashSeed: testSeed,
		SNATAddrs: []netip.Addr{netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("fd00:1::1")}})
	testutils.SkipIfNotSupported(f, err)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { ns.Close() })
	for _, fe := range []netip.AddrPort{netip.MustParseAddrPort("10.99.0.1:80"), netip.MustParseAddrPort("[fd99::1]:80")} {
		be := netip.MustParseAddrPort("10.40.0.1:8080")
		if fe.Addr().Is6() {
			be = netip.MustParseAddrPort("[fd40::1]:8080")
		}
		if err := ns.Upsert(Service{Frontend: Frontend{fe, nodeplane.ProtoTCP}, Type: LoadBalancer, SessionAffinity: time.Minute}, []Backend{{Addr: be}}); err != nil {
			f.Fatal(err)
		}
	}
	reader, err := ns.NewDropReader()
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { reader.Close() })
	dec := flow.NewDecoder(flow.DecoderConfig{})

	client := netip.MustParseAddrPort("198.18.0.1:40000")
	client6 := netip.MustParseAddrPort("[2001:db8::1]:40000")
	f.Add(testPkt{src: client, dst: netip.MustParseAddrPort("10.99.0.1:80"), proto: 6}.bytes())
	f.Add(withExts(testPkt{src: client6, dst: netip.MustParseAddrPort("[fd99::1]:80"), proto: 6}.bytes(), optExt(0, 8), optExt(60, 16)))
	_, fwd := runProg(f, ns.objs.NpNodeportXdp, testPkt{src: client, dst: netip.MustParseAddrPort("10.99.0.1:80"), proto: 6}.bytes())
	f.Add(icmpError(netip.MustParseAddr("10.40.0.1"), netip.MustParseAddr("10.1.0.1"), 3, 4, fwd[14:]))
	f.Add(testPkt{src: client, dst: netip.MustParseAddrPort("10.99.0.1:80"), proto: 6, truncL4: true}.bytes())

	f.Fuzz(func(t *testing.T, pkt []byte) {
		if len(pkt) < 14 || len(pkt) > 1500 {
			return
		}
		before, err := ns.Drops()
		if err != nil {
			t.Fatal(err)
		}
		ret, _ := runProgVerdict(t, ns.objs.NpNodeportXdp, pkt)
		if ret != xdpPass && ret != xdpDrop && ret != 3 {
			t.Fatalf("verdict %d", ret)
		}
		after, err := ns.Drops()
		if err != nil {
			t.Fatal(err)
		}
		var recs int
		for {
			reader.SetDeadline(time.Now().Add(5 * time.Millisecond))
			rec, err := reader.ReadRaw()
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			recs++
			var fl flow.Flow
			if err := dec.Decode(rec, &fl); err != nil {
				t.Fatalf("flow cannot decode a drop record: %v", err)
			}
			if fl.Verdict != flow.Dropped || after[fl.DropReason] <= before[fl.DropReason] {
				t.Fatalf("record says %v %v; counters %v -> %v", fl.Verdict, fl.DropReason, before, after)
			}
		}
		if want := map[bool]int{true: 1, false: 0}[ret == xdpDrop]; recs != want {
			t.Fatalf("verdict %d left %d drop records", ret, recs)
		}
		if len(pkt) >= 54 { // BPF_PROG_TEST_RUN refuses shorter skbs
			runProgVerdict(t, ns.objs.NpNodeportTc, pkt)
			runProgVerdict(t, ns.objs.NpNodeportRevnat, pkt)
			for {
				reader.SetDeadline(time.Now().Add(time.Millisecond))
				if _, err := reader.ReadRaw(); err != nil {
					break
				}
			}
		}
	})
}
