package lb

import (
	"net/netip"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// TestPrivilegedNorthSouthSNATPortTaken: a new SNAT flow whose first
// candidate port is taken (for its backend) gets the next one of the
// range, as np_nat_create's tries promise, and only a range with no free
// port drops. Two clients with the same source port, which is inside the
// NAT range and so the first candidate of both, to a service with one
// backend, in a range of two ports. Before Linux 6.4 a map update's error
// reaches the program with its upper half zero, and a 64-bit comparison
// with -EEXIST took the taken port for a full table: on 6.1 the second
// client was dropped (DROP_NAT_NO_MAPPING).
func TestPrivilegedNorthSouthSNATPortTaken(t *testing.T) {
	testutils.RequirePrivileged(t)
	snat := netip.MustParseAddr("10.1.0.1")
	ns, err := NewNorthSouth(NorthSouthConfig{MaglevTableSize: 251, MaglevHashSeed: testSeed,
		SNATAddrs: []netip.Addr{snat}, NATPortMin: 61000, NATPortMax: 61001})
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	fe := Frontend{netip.MustParseAddrPort("10.99.0.1:80"), nodeplane.ProtoTCP}
	be := netip.MustParseAddrPort("10.20.0.2:8080")
	if err := ns.Upsert(Service{Frontend: fe, Type: LoadBalancer}, []Backend{{Addr: be}}); err != nil {
		t.Fatal(err)
	}
	for i, c := range []struct {
		client string
		port   uint16 // 0: dropped
	}{
		{"198.18.0.1:61000", 61000}, // its own port
		{"198.18.0.2:61000", 61001}, // taken: the next
		{"198.18.0.3:61000", 0},     // none left
	} {
		client := netip.MustParseAddrPort(c.client)
		ret, out := runProg(t, ns.objs.NpNodeportXdp, testPkt{src: client, dst: fe.Addr, proto: 6}.bytes())
		if c.port == 0 {
			if ret != xdpDrop {
				t.Fatalf("client %d (%s): verdict %d, want a drop: no port left", i, client, ret)
			}
			continue
		}
		if ret != xdpPass {
			drops, _ := ns.Drops()
			t.Fatalf("client %d (%s): verdict %d (drops %v)", i, client, ret, drops)
		}
		src, dst := parsePkt(t, out)
		if want := netip.AddrPortFrom(snat, c.port); src != want || dst != be {
			t.Fatalf("client %d (%s): %s -> %s, want %s -> %s", i, client, src, dst, want, be)
		}
	}
}
