package lb

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
)

func backendsOf(addrs ...string) []Backend {
	var out []Backend
	for _, a := range addrs {
		out = append(out, Backend{Addr: netip.MustParseAddrPort(a)})
	}
	return out
}

func TestModelIDsAndBanks(t *testing.T) {
	var m Model
	a := Service{Frontend: fe("10.96.0.1:80", nodeplane.ProtoTCP)}
	b := Service{Frontend: fe("[fd00::1]:80", nodeplane.ProtoTCP)}

	id, _ := m.Upsert(a, backendsOf("10.0.0.1:80", "10.0.0.2:80"))
	e := m.t.services[a.Frontend]
	if id != 1 || e.bank != 0 || e.backends[0].id != 1 || e.backends[1].id != 2 {
		t.Fatalf("first service: ID %d, bank %d, backends %v", id, e.bank, e.backends)
	}
	// A backend that stays keeps its ID; a new one gets the next; the slots
	// change, so the other bank is used.
	m.Upsert(a, backendsOf("10.0.0.2:80", "10.0.0.3:80"))
	e = m.t.services[a.Frontend]
	if e.bank != slotBank || e.backends[0].id != 2 || e.backends[1].id != 3 {
		t.Fatalf("after update: bank %d, backends %v", e.bank, e.backends)
	}
	// Same slots, other weights: same bank.
	bes := backendsOf("10.0.0.2:80", "10.0.0.3:80")
	bes[1].Weight = 5
	m.Upsert(a, bes)
	if e = m.t.services[a.Frontend]; e.bank != slotBank || e.backends[1].Weight != 5 {
		t.Fatalf("weight change: bank %d, %v", e.bank, e.backends)
	}
	// Weight 0 means the default.
	if _, got, _ := m.Lookup(a.Frontend); got[0].Weight != DefaultWeight {
		t.Fatalf("weight %d", got[0].Weight)
	}

	idB, _ := m.Upsert(b, nil)
	if idB != 2 {
		t.Fatalf("second service ID %d", idB)
	}
	// IDs go round: a deleted ID is not handed out again at once.
	if err := m.Delete(b.Frontend); err != nil {
		t.Fatal(err)
	}
	if idB, _ = m.Upsert(b, nil); idB != 3 {
		t.Fatalf("recreated service ID %d, want 3", idB)
	}
	if err := m.Delete(fe("10.9.9.9:1", nodeplane.ProtoTCP)); !errors.Is(err, ErrServiceNotFound) {
		t.Fatalf("delete unknown: %v", err)
	}
}

func TestModelSelection(t *testing.T) {
	var m Model
	svc := Service{Frontend: fe("10.96.0.1:80", nodeplane.ProtoTCP)}
	bes := backendsOf("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80", "10.0.0.5:80")
	bes[1].State = BackendTerminating
	bes[3].State = BackendQuarantined
	m.Upsert(svc, bes)
	udp := Service{Frontend: fe("10.96.0.1:80", nodeplane.ProtoUDP)}
	m.Upsert(udp, bes)

	active := []netip.AddrPort{bes[0].Addr, bes[2].Addr, bes[4].Addr}
	for sel := range uint32(9) {
		r, err := m.Connect(Request{Dest: svc.Frontend.Addr, Protocol: nodeplane.ProtoTCP, Random: sel, SocketCookie: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if want := active[sel%3]; r.Dest != want || !r.Translated {
			t.Fatalf("TCP random %d: %s, want %s", sel, r.Dest, want)
		}
		// UDP selects by socket cookie and ignores Random.
		r, _ = m.Connect(Request{Dest: udp.Frontend.Addr, Protocol: nodeplane.ProtoUDP, Random: 7, SocketCookie: uint64(sel) + 1<<40})
		if want := active[(uint64(sel)+1<<40)%3]; r.Dest != want {
			t.Fatalf("UDP cookie %d: %s, want %s", sel, r.Dest, want)
		}
	}

	// An IPv4-mapped destination reaches the IPv4 service and answers in
	// the same form.
	r, _ := m.Connect(Request{Dest: netip.MustParseAddrPort("[::ffff:10.96.0.1]:80"), Protocol: nodeplane.ProtoTCP, Random: 1})
	if r.Dest != netip.MustParseAddrPort("[::ffff:10.0.0.3]:80") {
		t.Fatalf("mapped: %s", r.Dest)
	}

	// Not a service: untouched.
	for _, req := range []Request{
		{Dest: netip.MustParseAddrPort("10.96.0.1:81"), Protocol: nodeplane.ProtoTCP},
		{Dest: netip.MustParseAddrPort("10.96.0.2:80"), Protocol: nodeplane.ProtoTCP},
		{Dest: svc.Frontend.Addr, Protocol: 132},
	} {
		if r, err := m.Connect(req); err != nil || r.Translated || r.Dest != req.Dest {
			t.Fatalf("%v: %+v, %v", req, r, err)
		}
	}

	// No active backend: refused.
	m.Upsert(svc, bes[1:2])
	if _, err := m.Connect(Request{Dest: svc.Frontend.Addr, Protocol: nodeplane.ProtoTCP}); !errors.Is(err, ErrNoBackends) {
		t.Fatalf("terminating only: %v", err)
	}
}

func TestModelAffinity(t *testing.T) {
	var m Model
	svc := Service{Frontend: fe("10.96.0.1:80", nodeplane.ProtoTCP), SessionAffinity: 10 * time.Second}
	bes := backendsOf("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")
	m.Upsert(svc, bes)
	connect := func(netns uint64, random uint32, now int) Result {
		t.Helper()
		r, err := m.Connect(Request{Dest: svc.Frontend.Addr, Protocol: nodeplane.ProtoTCP, NetNSCookie: netns, Random: random, Now: time.Duration(now) * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	first := connect(1, 0, 100)
	if first.Pinned || first.Dest != bes[0].Addr {
		t.Fatalf("first: %+v", first)
	}
	// Whatever the random value, the client stays pinned, and every use
	// refreshes the pin: 9 s after the last use still counts.
	for i, now := range []int{101, 109, 118, 127} {
		if r := connect(1, uint32(i+1), now); !r.Pinned || r.Dest != first.Dest {
			t.Fatalf("at %d s: %+v", now, r)
		}
	}
	// Another namespace is another client.
	if r := connect(2, 1, 127); r.Pinned || r.Dest != bes[1].Addr {
		t.Fatalf("other netns: %+v", r)
	}
	// Sticky for [last use, last use + timeout): at exactly +10 s the pin
	// has expired and the choice is new.
	if r := connect(1, 2, 137); r.Pinned || r.Dest != bes[2].Addr {
		t.Fatalf("after expiry: %+v", r)
	}
	if r := connect(1, 0, 146); !r.Pinned || r.Dest != bes[2].Addr {
		t.Fatalf("new pin: %+v", r)
	}
	// A pinned backend that is no longer active loses its clients.
	bes[2].State = BackendTerminating
	m.Upsert(svc, bes)
	if r := connect(1, 1, 147); r.Pinned || r.Dest != bes[1].Addr {
		t.Fatalf("pinned to terminating: %+v", r)
	}
}

func TestModelPeer(t *testing.T) {
	var m Model
	vip := netip.MustParseAddrPort("[fd00::1]:53")
	svc := Service{Frontend: Frontend{Addr: vip, Protocol: nodeplane.ProtoUDP}}
	bes := backendsOf("[fd00::2]:53", "[fd00::3]:53")
	m.Upsert(svc, bes)
	r, _ := m.Connect(Request{Dest: vip, Protocol: nodeplane.ProtoUDP, SocketCookie: 7})
	if got := m.Peer(7, nodeplane.ProtoUDP, r.Dest); got != vip {
		t.Fatalf("reverse of %s: %s", r.Dest, got)
	}
	// Another socket, or an address it did not reach through the service,
	// is shown as it is.
	if got := m.Peer(8, nodeplane.ProtoUDP, r.Dest); got != r.Dest {
		t.Fatalf("other socket: %s", got)
	}
	// Removing the backend keeps the reverse entry valid while the service
	// has active backends.
	m.Upsert(svc, []Backend{bes[0]})
	if got := m.Peer(7, nodeplane.ProtoUDP, r.Dest); got != vip {
		t.Fatalf("after backend removal: %s", got)
	}
	// A recreated service has a new ID: old entries are stale.
	m.Delete(svc.Frontend)
	m.Upsert(svc, bes)
	if got := m.Peer(7, nodeplane.ProtoUDP, r.Dest); got != r.Dest {
		t.Fatalf("after recreation: %s", got)
	}

	// IPv4 through an IPv4-mapped peer.
	svc4 := Service{Frontend: fe("10.96.0.1:53", nodeplane.ProtoUDP)}
	m.Upsert(svc4, backendsOf("10.0.0.2:53"))
	r, _ = m.Connect(Request{Dest: netip.MustParseAddrPort("[::ffff:10.96.0.1]:53"), Protocol: nodeplane.ProtoUDP, SocketCookie: 9})
	if got := m.Peer(9, nodeplane.ProtoUDP, r.Dest); got != netip.MustParseAddrPort("[::ffff:10.96.0.1]:53") {
		t.Fatalf("mapped reverse: %s", got)
	}
	// No active backend: the entry is dropped, as in the kernel.
	m.Upsert(svc4, nil)
	if got := m.Peer(9, nodeplane.ProtoUDP, r.Dest); got != r.Dest {
		t.Fatalf("no backends: %s", got)
	}
}

func TestModelExternalIP(t *testing.T) {
	var m Model
	ext := Service{Frontend: fe("203.0.113.7:443", nodeplane.ProtoTCP), Type: ExternalIP}
	m.Upsert(ext, backendsOf("10.0.0.1:443"))
	req := Request{Dest: ext.Frontend.Addr, Protocol: nodeplane.ProtoTCP}
	if r, err := m.Connect(req); err != nil || r.Translated {
		t.Fatalf("external IP of another host: %+v, %v", r, err)
	}
	if err := m.SetHostAddresses(netip.MustParseAddr("203.0.113.7")); err != nil {
		t.Fatal(err)
	}
	if r, err := m.Connect(req); err != nil || r.Dest != netip.MustParseAddrPort("10.0.0.1:443") {
		t.Fatalf("external IP of this host: %+v, %v", r, err)
	}
	// As in Cilium, a service without backends refuses before the host
	// address is considered.
	m.SetHostAddresses()
	m.Upsert(ext, nil)
	if _, err := m.Connect(req); !errors.Is(err, ErrNoBackends) {
		t.Fatalf("external IP without backends: %v", err)
	}
}

func TestModelInternalTrafficLocal(t *testing.T) {
	var m Model
	svc := Service{Frontend: fe("10.96.0.1:80", nodeplane.ProtoTCP), InternalTrafficLocal: true}
	bes := backendsOf("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80")
	bes[1].Local, bes[3].Local = true, true
	bes[3].State = BackendTerminating
	if _, err := m.Upsert(svc, bes); err != nil {
		t.Fatal(err)
	}
	for sel := range uint32(6) {
		r, err := m.Connect(Request{Dest: svc.Frontend.Addr, Protocol: nodeplane.ProtoTCP, Random: sel})
		if err != nil {
			t.Fatal(err)
		}
		if r.Dest != bes[1].Addr {
			t.Fatalf("random %d: %s, want the active local %s", sel, r.Dest, bes[1].Addr)
		}
	}
	bes[1].Local = false
	m.Upsert(svc, bes)
	if _, err := m.Connect(Request{Dest: svc.Frontend.Addr, Protocol: nodeplane.ProtoTCP}); !errors.Is(err, ErrNoBackends) {
		t.Fatalf("no active local backend: %v", err)
	}
	svc.InternalTrafficLocal = false
	m.Upsert(svc, bes)
	if r, err := m.Connect(Request{Dest: svc.Frontend.Addr, Protocol: nodeplane.ProtoTCP, Random: 1}); err != nil || r.Dest != bes[1].Addr {
		t.Fatalf("Cluster policy: %+v, %v", r, err)
	}
}
