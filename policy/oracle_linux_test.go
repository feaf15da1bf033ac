package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// newTestDatapath returns a datapath whose node namespace is a fresh test
// namespace; it skips unprivileged runs.
func newTestDatapath(tb testing.TB, cfg datapath.Config) (*datapath.Datapath, *testutils.NetNS) {
	tb.Helper()
	testutils.RequirePrivileged(tb)
	node := testutils.NewNetNS(tb)
	cfg.NodeNetNS = fmt.Sprintf("/proc/self/fd/%d", node.FD())
	if cfg.ConntrackMaxEntries == 0 {
		cfg.ConntrackMaxEntries = 1 << 16
	}
	if cfg.IPCacheMaxEntries == 0 {
		cfg.IPCacheMaxEntries = 4096
	}
	d, err := datapath.New(cfg)
	testutils.SkipIfNotSupported(tb, err)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := d.Close(); err != nil {
			tb.Errorf("close datapath: %v", err)
		}
	})
	return d, node
}

// TestPrivilegedOracleBPF runs a sample of the oracle's cases through the
// real BPF program with BPF_PROG_TEST_RUN: the compiled map is written
// into a detached endpoint's policy map, every peer identity gets an
// address in the ipcache, and crafted packets go through the endpoint's
// egress (from-endpoint) or ingress (to-endpoint) program. The kernel's
// verdict and drop reason must equal mapstate.Lookup's, and so the
// rules'.
func TestPrivilegedOracleBPF(t *testing.T) {
	d, _ := newTestDatapath(t, datapath.Config{})
	const worlds, endpointsPerWorld, packetsPerEndpoint = 16, 2, 200
	var (
		epID     datapath.EndpointID
		cases    int
		verdicts = map[monitor.DropReason]int{}
	)
	for seed := uint64(1000); seed < 1000+worlds; seed++ {
		w := newOracleWorld(t, seed)
		g := randomGen{rand.New(rand.NewPCG(seed, 3))}

		// Every identity of the world gets an IPv4 address in the ipcache.
		peerAddr := map[identity.ID]netip.Addr{}
		for i, id := range w.identities {
			a := netip.AddrFrom4([4]byte{172, 30, byte(seed), byte(i + 1)})
			if err := d.IPCache().UpsertPrefix(netip.PrefixFrom(a, 32), ipcache.Entry{Identity: id.ID}); err != nil {
				t.Fatal(err)
			}
			peerAddr[id.ID] = a
		}
		for n := 0; n < endpointsPerWorld; n++ {
			// Only identities an endpoint can have (the pure oracle also
			// compiles policies for peers such as world).
			ep := w.endpoints[g.pick(len(w.endpoints))]
			for !ep.ID.IsCluster() && ep.ID != identity.ReservedHealth && ep.ID != identity.ReservedInit {
				ep = w.endpoints[g.pick(len(w.endpoints))]
			}
			epID++
			addr := netip.AddrFrom4([4]byte{10, 200, byte(epID >> 8), byte(epID)})
			dep, err := d.AddEndpoint(datapath.EndpointConfig{ID: epID, Identity: ep.ID, IPv4: addr, Detached: true})
			if err != nil {
				t.Fatal(err)
			}
			state := w.compiled[ep.ID].State()
			if err := dep.Policy().Apply(state, nil); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < packetsPerEndpoint; i++ {
				peer := w.identities[g.pick(len(w.identities))]
				dir := []mapstate.Direction{mapstate.Ingress, mapstate.Egress}[g.pick(2)]
				pkt := g.packet()
				want := mapstate.Lookup(state, peer.ID, dir, pkt.proto, pkt.port)

				tp := datapath.TestPacket{Src: addr, Dst: peerAddr[peer.ID], Proto: pkt.proto}
				hook := datapath.FromEndpoint
				if dir == mapstate.Ingress {
					tp.Src, tp.Dst = tp.Dst, tp.Src
					hook = datapath.ToEndpoint
				}
				// A fresh tuple per packet, so that conntrack sees a new
				// connection and policy decides.
				uniq := uint16(1024 + cases%60000)
				switch pkt.proto {
				case nodeplane.ProtoICMP:
					tp.ICMPType, tp.ICMPID = uint8(pkt.port), uniq
				default:
					tp.SrcPort, tp.DstPort = uniq, pkt.port
				}
				raw, err := tp.Bytes()
				if err != nil {
					t.Fatal(err)
				}
				v, _, err := dep.TestRun(hook, raw)
				if err != nil {
					t.Fatal(err)
				}
				cases++
				verdicts[v.Reason]++
				if v.Conntrack != datapath.ConntrackNew {
					t.Fatalf("case %d: conntrack %v, want a new connection", cases, v.Conntrack)
				}
				dropped := v.Action == datapath.ActionDrop
				if dropped == want.Allowed || dropped && v.Reason != want.Reason {
					t.Fatalf("seed %d: %s of %d with %d, %d/%s: kernel %+v, LookupPolicy %+v",
						seed, dir, ep.ID, peer.ID, pkt.port, pkt.proto, v, want)
				}
			}
			if err := dep.Delete(); err != nil {
				t.Fatal(err)
			}
		}
		for _, a := range peerAddr {
			if err := d.IPCache().DeletePrefix(netip.PrefixFrom(a, 32)); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("%d packets through BPF_PROG_TEST_RUN: %v", cases, verdicts)
	if verdicts[monitor.DropPolicyDenied] == 0 || verdicts[monitor.DropPolicyDeny] == 0 || verdicts[0] == 0 {
		t.Fatalf("sample lacks a verdict kind: %v", verdicts)
	}
}
