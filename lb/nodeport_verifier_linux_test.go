package lb

import (
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

var verifierProcessed = regexp.MustCompile(`processed (\d+) insns`)

// TestPrivilegedNorthSouthVerifierStats loads the north-south programs in
// every mode, SNAT for both families among them, with the verifier's
// statistics, and logs the instructions it processed per program: the
// number that must stay under the 1M limit of every kernel the SDK runs
// on (issue 16: np_nodeport_tc with dual-stack SNAT went past it on 6.1).
func TestPrivilegedNorthSouthVerifierStats(t *testing.T) {
	testutils.RequirePrivileged(t)
	v4, v6 := netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("fd00:1::1")
	for _, tc := range []struct {
		name string
		cfg  NorthSouthConfig
	}{
		{"dnat", NorthSouthConfig{}},
		{"dsr", NorthSouthConfig{DSR: true}},
		{"snat4", NorthSouthConfig{SNATAddrs: []netip.Addr{v4}}},
		{"snat6", NorthSouthConfig{SNATAddrs: []netip.Addr{v6}}},
		{"snat46", NorthSouthConfig{SNATAddrs: []netip.Addr{v4, v6}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, _, err := tc.cfg.nodeportSpec()
			if err != nil {
				t.Fatal(err)
			}
			coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
				Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats},
			})
			if err != nil {
				t.Fatalf("load: %v", err)
			}
			defer coll.Close()
			names := slices.Sorted(func(yield func(string) bool) {
				for n := range coll.Programs {
					if !yield(n) {
						return
					}
				}
			})
			for _, name := range names {
				m := verifierProcessed.FindStringSubmatch(coll.Programs[name].VerifierLog)
				if m == nil {
					t.Errorf("%s: no instruction count in the verifier log %q", name, coll.Programs[name].VerifierLog)
					continue
				}
				n, _ := strconv.Atoi(m[1])
				t.Logf("%s: %d instructions processed", name, n)
			}
		})
	}
}

// TestPrivilegedNorthSouthTailCalls: the XDP and tc entry programs reach
// the translation through a tail call per family (issue 16). The program
// arrays hold each hook's IPv4 and IPv6 program once NewNorthSouth
// returns; a packet of either family to a frontend is translated through
// the entry; and a slot found empty drops the packet with Cilium's
// DROP_MISSED_TAIL_CALL (140), counted, instead of passing it
// untranslated, while the other family is still translated.
func TestPrivilegedNorthSouthTailCalls(t *testing.T) {
	testutils.RequirePrivileged(t)
	const dropMissedTailCall = monitor.DropReason(140)
	for _, hook := range []string{"xdp", "tc"} {
		t.Run(hook, func(t *testing.T) {
			ns, err := NewNorthSouth(NorthSouthConfig{MaglevTableSize: 251, MaglevHashSeed: testSeed,
				SNATAddrs: []netip.Addr{netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("fd00:1::1")}})
			if err != nil {
				t.Fatal(err)
			}
			defer ns.Close()
			entry, calls, progs := ns.objs.NpNodeportXdp, ns.objs.NpNpCallsXdp, []*ebpf.Program{ns.objs.NpNodeportXdp4, ns.objs.NpNodeportXdp6}
			pass, drop := uint32(xdpPass), uint32(xdpDrop)
			if hook == "tc" {
				entry, calls, progs = ns.objs.NpNodeportTc, ns.objs.NpNpCallsTc, []*ebpf.Program{ns.objs.NpNodeportTc4, ns.objs.NpNodeportTc6}
				pass, drop = 0, 2 // TC_ACT_OK, TC_ACT_SHOT
			}
			for slot, prog := range progs {
				info, err := prog.Info()
				if err != nil {
					t.Fatal(err)
				}
				want, _ := info.ID()
				var got uint32
				if err := calls.Lookup(uint32(slot), &got); err != nil {
					t.Fatalf("slot %d: %v", slot, err)
				}
				if ebpf.ProgramID(got) != want {
					t.Fatalf("slot %d holds program %d, want %s's %d", slot, got, info.Name, want)
				}
			}

			type flowCase struct {
				pkt []byte
				be  netip.AddrPort
			}
			var flows []flowCase
			for _, c := range []struct{ fe, be, client string }{
				{"10.99.0.1:80", "10.40.0.1:8080", "198.18.0.1:40000"},
				{"[fd99::1]:80", "[fd40::1]:8080", "[2001:db8::1]:40000"},
			} {
				fe, be := netip.MustParseAddrPort(c.fe), netip.MustParseAddrPort(c.be)
				if err := ns.Upsert(Service{Frontend: Frontend{fe, nodeplane.ProtoTCP}, Type: LoadBalancer}, []Backend{{Addr: be}}); err != nil {
					t.Fatal(err)
				}
				flows = append(flows, flowCase{testPkt{src: netip.MustParseAddrPort(c.client), dst: fe, proto: 6}.bytes(), be})
			}
			translated := func(f flowCase) bool {
				t.Helper()
				ret, out := runProg(t, entry, f.pkt)
				if ret != pass {
					return false
				}
				_, dst := parsePkt(t, out)
				return dst == f.be
			}
			for i, f := range flows {
				if !translated(f) {
					t.Fatalf("family %d: not translated through the entry program", i)
				}
			}

			// Empty the IPv4 slot.
			if err := calls.Delete(uint32(0)); err != nil {
				t.Fatal(err)
			}
			before, err := ns.Drops()
			if err != nil {
				t.Fatal(err)
			}
			ret, out := runProg(t, entry, flows[0].pkt)
			after, err := ns.Drops()
			if err != nil {
				t.Fatal(err)
			}
			if ret != drop || after[dropMissedTailCall] != before[dropMissedTailCall]+1 {
				t.Fatalf("empty slot: verdict %d, drops[140] %d -> %d; want a drop", ret, before[dropMissedTailCall], after[dropMissedTailCall])
			}
			if _, dst := parsePkt(t, out); dst == flows[0].be {
				t.Fatal("empty slot: the packet was translated")
			}
			if !translated(flows[1]) {
				t.Fatal("IPv6 not translated with the IPv4 slot empty")
			}
		})
	}
}
