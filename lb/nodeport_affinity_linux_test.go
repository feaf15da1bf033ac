package lb

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
)

// npAffKey and npAffVal mirror struct np_aff_key and struct np_aff_val.
type npAffKey struct {
	Addr   [16]byte
	SvcID  uint32
	Family uint8
	_      [3]byte
}

type npAffVal struct {
	LastUsed  uint64
	BackendID uint32
	_         uint32
}

// TestPrivilegedNorthSouthSessionAffinity runs new flows through the XDP
// program (BPF_PROG_TEST_RUN), IPv4 and IPv6, TCP and UDP. With ClientIP
// affinity every new flow of a client goes to the backend of its first
// flow, which Maglev picked (the oracle: lb/maglev's table and Cilium's
// hash), whatever the hash of the later flows says; another client is
// balanced on its own. A pinned backend that stops taking new flows
// (terminating) loses its pins; a pin not used for the timeout expires
// and the next flow is balanced by Maglev again. Without affinity the
// same flows spread.
func TestPrivilegedNorthSouthSessionAffinity(t *testing.T) {
	ns := newTestNorthSouth(t)
	const timeout = 2 * time.Second
	for _, tc := range []struct {
		fe       Frontend
		backends []Backend
		client   netip.Addr
	}{
		{Frontend{netip.MustParseAddrPort("10.99.0.7:80"), nodeplane.ProtoTCP}, nsBackends("10.20.%d.2", 5, 8080), netip.MustParseAddr("198.18.7.7")},
		{Frontend{netip.MustParseAddrPort("[fd99::7]:53"), nodeplane.ProtoUDP}, nsBackends("fd20::%d", 5, 5353), netip.MustParseAddr("2001:db8::7")},
	} {
		t.Run(tc.fe.String(), func(t *testing.T) {
			svc := Service{Frontend: tc.fe, Type: LoadBalancer, Algorithm: AlgorithmMaglev, SessionAffinity: timeout}
			if err := ns.Upsert(svc, tc.backends); err != nil {
				t.Fatal(err)
			}
			port := uint16(20000)
			// send runs a new flow from addr (a fresh source port) and
			// returns where it went and where Maglev alone would send it.
			send := func(addr netip.Addr, active []Backend) (got, maglev netip.AddrPort) {
				t.Helper()
				port++
				client := netip.AddrPortFrom(addr, port)
				ret, out := runProg(t, ns.objs.NpNodeportXdp, testPkt{src: client, dst: tc.fe.Addr, proto: uint8(tc.fe.Protocol)}.bytes())
				if ret != xdpPass {
					t.Fatalf("verdict %d", ret)
				}
				_, got = parsePkt(t, out)
				return got, expectMaglev(t, active, tc.fe.Protocol, client, tc.fe.Addr.Port())
			}

			pinned, want := send(tc.client, tc.backends)
			if pinned != want {
				t.Fatalf("first flow went to %s, Maglev picks %s", pinned, want)
			}
			differs := 0
			for range 40 {
				got, maglev := send(tc.client, tc.backends)
				if got != pinned {
					t.Fatalf("a new flow of the pinned client went to %s, not %s", got, pinned)
				}
				if maglev != pinned {
					differs++
				}
			}
			if differs == 0 {
				t.Fatal("Maglev alone would have sent every flow to the pinned backend: the test shows nothing")
			}
			// The kernel's pin names the backend.
			s := ns.services[tc.fe]
			var key npAffKey
			key.Addr, key.SvcID, key.Family = npAddr(tc.client), s.id, npFamily(tc.client)
			var val npAffVal
			if err := ns.objs.NpNpAff.Lookup(&key, &val); err != nil {
				t.Fatalf("pin: %v", err)
			}
			if val.BackendID != s.backends[pinned].id {
				t.Fatalf("pin names backend %d, flows went to %d (%s)", val.BackendID, s.backends[pinned].id, pinned)
			}

			// Another client is balanced by its own hash.
			other := netip.MustParseAddr("198.18.9.9")
			if tc.client.Is6() {
				other = netip.MustParseAddr("2001:db8::9")
			}
			if got, maglev := send(other, tc.backends); got != maglev {
				t.Fatalf("another client's first flow went to %s, Maglev picks %s", got, maglev)
			}

			// The pinned backend terminates: the pin is dropped and new
			// flows are balanced over the others, then stick again.
			var next, active []Backend
			for _, b := range tc.backends {
				if b.Addr == pinned {
					b.State = BackendTerminating
				} else {
					active = append(active, b)
				}
				next = append(next, b)
			}
			if err := ns.Upsert(svc, next); err != nil {
				t.Fatal(err)
			}
			repinned, maglev := send(tc.client, active)
			if repinned == pinned || repinned != maglev {
				t.Fatalf("after %s terminated a new flow went to %s, Maglev picks %s", pinned, repinned, maglev)
			}
			for range 10 {
				if got, _ := send(tc.client, active); got != repinned {
					t.Fatalf("not pinned to %s again: %s", repinned, got)
				}
			}

			// Unused for the timeout, the pin expires.
			time.Sleep(timeout + 1100*time.Millisecond)
			if got, maglev := send(tc.client, active); got != maglev {
				t.Fatalf("after the timeout a new flow went to %s, Maglev picks %s", got, maglev)
			}

			// Without affinity the client's flows spread.
			svc.SessionAffinity = 0
			if err := ns.Upsert(svc, next); err != nil {
				t.Fatal(err)
			}
			seen := map[netip.AddrPort]bool{}
			for range 40 {
				got, maglev := send(tc.client, active)
				if got != maglev {
					t.Fatalf("without affinity: %s, Maglev picks %s", got, maglev)
				}
				seen[got] = true
			}
			if len(seen) < 2 {
				t.Errorf("without affinity 40 flows all went to %v", seen)
			}
			if err := ns.Delete(tc.fe); err != nil {
				t.Fatal(err)
			}
			if n := countAffMatches(t, ns); n != 0 {
				t.Errorf("%d affinity match entries left after Delete", n)
			}
		})
	}
}

func countAffMatches(t *testing.T, ns *NorthSouth) int {
	t.Helper()
	var (
		k npAffMatch
		v uint8
		n int
	)
	it := ns.objs.NpNpAffMatch.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(fmt.Errorf("iterate matches: %w", err))
	}
	return n
}
