package lb

import (
	"errors"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
)

// family describes one address family case of the end-to-end tests.
type famCase struct {
	name string
	v6   bool
	// mapped: an AF_INET6 socket reaching an IPv4 service through an
	// IPv4-mapped address.
	mapped bool
	vip    string // TCP frontend
	udpVIP string // UDP frontend
}

var famCases = []famCase{
	{name: "IPv4", vip: "10.96.0.10:80", udpVIP: "10.96.0.11:53"},
	{name: "IPv6", v6: true, vip: "[fd00:96::10]:80", udpVIP: "[fd00:96::11]:53"},
	{name: "IPv4-mapped", mapped: true, vip: "10.96.0.10:80", udpVIP: "10.96.0.11:53"},
}

// dialNet is the network and local address the client agent dials with.
func (f famCase) dialNet(proto string) (network, local string) {
	switch {
	case f.mapped:
		// A dual-stack socket bound to :: reaches IPv4 peers through
		// IPv4-mapped addresses.
		return proto, "[::]:0"
	case f.v6:
		return proto + "6", ""
	}
	return proto + "4", ""
}

// shown is how the application sees an address of this family case.
func (f famCase) shown(a string) string {
	if f.mapped {
		ap := netip.MustParseAddrPort(a)
		return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port()).String()
	}
	return a
}

func (f famCase) clientAddr(ep *endpointNS) netip.Addr {
	if f.v6 {
		return ep.v6
	}
	return ep.v4
}

func TestPrivilegedTCPThroughVIP(t *testing.T) {
	for _, fc := range famCases {
		t.Run(fc.name, func(t *testing.T) {
			e := newEnv(t, 3, Config{})
			e.upsert(t, Service{Frontend: fe(fc.vip, nodeplane.ProtoTCP)}, e.backends(fc.v6, 3))
			network, local := fc.dialNet("tcp")

			r := e.client.do(clientCmd{Op: "dials", Net: network, Local: local, Addr: fc.vip, Count: 60})
			seen := make(map[string]int)
			for _, res := range r.Results {
				if res.Err != "" {
					t.Fatalf("dial %s: %s", fc.vip, res.Err)
				}
				if res.Peer != fc.shown(fc.vip) {
					t.Fatalf("getpeername = %s, want the VIP %s", res.Peer, fc.shown(fc.vip))
				}
				be := e.top.backendOf(res.Greeting)
				if be == nil {
					t.Fatalf("unexpected greeting %q", res.Greeting)
				}
				// The backend sees the client itself: no NAT on the way.
				_, seenAs, _ := strings.Cut(res.Greeting, " ")
				if ap := netip.MustParseAddrPort(seenAs); ap.Addr() != fc.clientAddr(e.top.clients[0]) {
					t.Fatalf("%s saw the client as %s", be.name, seenAs)
				}
				seen[be.name]++
			}
			// 60 random draws from 3 backends miss one with p < 1e-10.
			if len(seen) != 3 {
				t.Fatalf("connections reached %v, want all 3 backends", seen)
			}
		})
	}
}

func TestPrivilegedUDPThroughVIP(t *testing.T) {
	for _, fc := range famCases {
		t.Run(fc.name, func(t *testing.T) {
			e := newEnv(t, 3, Config{})
			svcFE := fe(fc.udpVIP, nodeplane.ProtoUDP)
			e.upsert(t, Service{Frontend: svcFE}, e.backends(fc.v6, 3))
			network, local := fc.dialNet("udp")

			check := func(op string, res clientResult) {
				t.Helper()
				if res.Err != "" {
					t.Fatalf("%s %s: %s", op, fc.udpVIP, res.Err)
				}
				// recvmsg shows the VIP as the source of the answer.
				if got := netip.MustParseAddrPort(res.From); got.Addr().Unmap() != svcFE.Addr.Addr() || got.Port() != svcFE.Addr.Port() {
					t.Fatalf("%s: answer from %s, want the VIP %s", op, res.From, fc.udpVIP)
				}
				// UDP selects by socket cookie: the model names the backend.
				want, err := e.model.Connect(Request{Dest: svcFE.Addr, Protocol: nodeplane.ProtoUDP, SocketCookie: res.Cookie})
				if err != nil {
					t.Fatal(err)
				}
				be := e.top.backendOf(res.Greeting)
				if be == nil || be.addr(fc.v6, backendPort) != want.Dest {
					t.Fatalf("%s: socket %d reached %q, model says %s", op, res.Cookie, res.Greeting, want.Dest)
				}
			}
			var sendtoNet string
			if fc.mapped {
				sendtoNet = "udp" // dual-stack wildcard socket
			} else {
				sendtoNet = network
			}
			for _, res := range e.client.do(clientCmd{Op: "sendto", Net: sendtoNet, Addr: fc.udpVIP, Msg: "ping", Count: 20}).Results {
				check("sendto", res)
			}
			for _, res := range e.client.do(clientCmd{Op: "udpconn", Net: network, Local: local, Addr: fc.udpVIP, Msg: "ping", Count: 20}).Results {
				check("connected", res)
				if res.Peer != fc.shown(fc.udpVIP) {
					t.Fatalf("getpeername of a connected UDP socket = %s, want %s", res.Peer, fc.shown(fc.udpVIP))
				}
			}
		})
	}
}

func TestPrivilegedBackendRemoval(t *testing.T) {
	for _, how := range []string{"deleted", "terminating", "maintenance"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t, 3, Config{})
			svc := Service{Frontend: fe("10.96.0.20:80", nodeplane.ProtoTCP)}
			backends := e.backends(false, 3)
			e.upsert(t, svc, backends)

			conn := e.client.one(clientCmd{Op: "dial", Net: "tcp4", Addr: "10.96.0.20:80", ID: 1})
			if conn.Err != "" {
				t.Fatal(conn.Err)
			}
			victim := e.top.backendOf(conn.Greeting)
			var next []Backend
			for _, b := range backends {
				switch {
				case b.Addr.Addr() != victim.v4:
					next = append(next, b)
				case how == "terminating":
					next = append(next, Backend{Addr: b.Addr, State: BackendTerminating})
				case how == "maintenance":
					next = append(next, Backend{Addr: b.Addr, State: BackendMaintenance})
				}
			}
			e.upsert(t, svc, next)

			for _, res := range e.client.do(clientCmd{Op: "dials", Net: "tcp4", Addr: "10.96.0.20:80", Count: 40}).Results {
				if res.Err != "" {
					t.Fatal(res.Err)
				}
				if be := e.top.backendOf(res.Greeting); be == victim {
					t.Fatalf("new connection reached %s after it was %s", victim.name, how)
				}
			}
			// The established connection still works and still shows the VIP.
			echo := e.client.one(clientCmd{Op: "echo", ID: 1, Msg: "still here"})
			if echo.Err != "" || echo.Greeting != "still here" {
				t.Fatalf("established connection to %s after it was %s: %q, %s", victim.name, how, echo.Greeting, echo.Err)
			}
			if echo.Peer != "10.96.0.20:80" {
				t.Fatalf("getpeername of the established connection = %s", echo.Peer)
			}
			e.client.do(clientCmd{Op: "close", ID: 1})
		})
	}
}

func TestPrivilegedNoBackendRefuses(t *testing.T) {
	e := newEnv(t, 2, Config{})
	tcp := Service{Frontend: fe("10.96.0.30:80", nodeplane.ProtoTCP)}
	udp := Service{Frontend: fe("[fd00:96::30]:53", nodeplane.ProtoUDP)}
	e.upsert(t, tcp, nil)
	e.upsert(t, udp, []Backend{
		{Addr: e.top.backends[0].addr(true, backendPort), State: BackendTerminating},
		{Addr: e.top.backends[1].addr(true, backendPort), State: BackendQuarantined},
	})

	refused := func(what string, res clientResult) {
		t.Helper()
		if syscall.Errno(res.Errno) != syscall.EHOSTUNREACH {
			t.Fatalf("%s: %q (errno %d), want EHOSTUNREACH", what, res.Err, res.Errno)
		}
	}
	refused("TCP connect", e.client.one(clientCmd{Op: "dial", Net: "tcp4", Addr: "10.96.0.30:80"}))
	refused("UDP sendto", e.client.one(clientCmd{Op: "sendto", Net: "udp6", Addr: "[fd00:96::30]:53", Msg: "x"}))
	refused("UDP connect", e.client.one(clientCmd{Op: "udpconn", Net: "udp6", Addr: "[fd00:96::30]:53", Msg: "x"}))
	for _, svc := range []Service{tcp, udp} {
		if _, err := e.model.Connect(Request{Dest: svc.Frontend.Addr, Protocol: svc.Frontend.Protocol}); !errors.Is(err, ErrNoBackends) || !errors.Is(err, syscall.EHOSTUNREACH) {
			t.Fatalf("model: %v", err)
		}
	}

	// Another port of the same address is not a service: untouched.
	direct := e.client.one(clientCmd{Op: "dial", Net: "tcp4", Addr: e.top.backends[0].addr(false, backendPort).String()})
	if direct.Err != "" {
		t.Fatalf("direct connection to a backend: %s", direct.Err)
	}

	// An active backend brings the service back.
	e.upsert(t, tcp, e.backends(false, 1))
	if res := e.client.one(clientCmd{Op: "dial", Net: "tcp4", Addr: "10.96.0.30:80"}); res.Err != "" {
		t.Fatalf("after adding a backend: %s", res.Err)
	}
}

func TestPrivilegedSessionAffinity(t *testing.T) {
	e := newEnv(t, 3, Config{})
	const timeout = 3 * time.Second
	svc := Service{Frontend: fe("10.96.0.40:80", nodeplane.ProtoTCP), SessionAffinity: timeout}
	id := e.upsert(t, svc, e.backends(false, 3))
	netns := e.client.do(clientCmd{Op: "netns"}).NetNS

	// pinnedRun dials n times and requires a single backend, which the
	// kernel's affinity entry must name.
	pinnedRun := func(n int) *endpointNS {
		t.Helper()
		var pinned *endpointNS
		for _, res := range e.client.do(clientCmd{Op: "dials", Net: "tcp4", Addr: "10.96.0.40:80", Count: n}).Results {
			if res.Err != "" {
				t.Fatal(res.Err)
			}
			be := e.top.backendOf(res.Greeting)
			if pinned == nil {
				pinned = be
			}
			if be != pinned {
				t.Fatalf("affinity broken: %s, then %s", pinned.name, be.name)
			}
		}
		var val lbAffinityVal
		key := lb4AffinityKey{Client: netnsClient4(netns), RevNAT: uint16(id), NetNSCookie: 1}
		if err := e.lb.objs.NpLb4Aff.Lookup(&key, &val); err != nil {
			t.Fatalf("affinity entry: %v", err)
		}
		_, backends, _ := e.lb.Lookup(svc.Frontend)
		e.lb.mu.Lock()
		owner := e.lb.t.backends[BackendID(val.BackendID)]
		e.lb.mu.Unlock()
		if owner == nil || backendAddr(owner, BackendID(val.BackendID)) != pinned.addr(false, backendPort) {
			t.Fatalf("kernel pins backend %d, connections went to %s (%v)", val.BackendID, pinned.name, backends)
		}
		return pinned
	}

	first := pinnedRun(10)
	// After the timeout without use the pin expires and a new choice is
	// made; with 3 backends it differs from the old one with p = 2/3 each
	// time.
	changed := false
	for range 8 {
		time.Sleep(timeout + time.Second)
		if pinnedRun(5) != first {
			changed = true
			break
		}
	}
	if !changed {
		t.Fatalf("every pin after expiry was %s again", first.name)
	}

	// A pin to a backend that stops being active is dropped at once.
	pinned := pinnedRun(3)
	var next []Backend
	for _, b := range e.backends(false, 3) {
		if b.Addr == pinned.addr(false, backendPort) {
			b.State = BackendTerminating
		}
		next = append(next, b)
	}
	e.upsert(t, svc, next)
	if again := pinnedRun(5); again == pinned {
		t.Fatalf("still pinned to terminating %s", pinned.name)
	}
}

func backendAddr(e *entry, id BackendID) netip.AddrPort {
	for _, b := range e.backends {
		if b.id == id {
			return b.Addr
		}
	}
	return netip.AddrPort{}
}

// TestPrivilegedUpdatesAreAtomic connects as fast as one client can while
// the backend set of the service changes as fast as the control plane can,
// growing and shrinking so that slots are rewritten and deleted under the
// readers. No connect may fail or go astray: every one must reach one of the
// service's backends, be seen there from the client's own address and show
// the VIP as its peer.
func TestPrivilegedUpdatesAreAtomic(t *testing.T) {
	e := newEnv(t, 4, Config{})
	svc := Service{Frontend: fe("10.96.0.50:80", nodeplane.ProtoTCP)}
	all := e.backends(false, 4)
	sets := [][]Backend{all, all[2:3], {all[0], all[3]}, all[1:], all[3:], all[:2]}
	e.upsert(t, svc, sets[0])

	var (
		wg      sync.WaitGroup
		reply   clientReply
		stop    = make(chan struct{})
		updates int
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(stop)
		reply = e.client.do(clientCmd{Op: "dialfor", Net: "tcp4", Addr: "10.96.0.50:80", Millis: 3000})
	}()
loop:
	for i := 1; ; i++ {
		select {
		case <-stop:
			break loop
		default:
		}
		if _, err := e.lb.Upsert(svc, sets[i%len(sets)]); err != nil {
			t.Error(err)
			break
		}
		updates++
	}
	wg.Wait()

	total := 0
	for _, n := range reply.Backends {
		total += n
	}
	t.Logf("%d connections during %d updates: %v", total, updates, reply.Backends)
	if len(reply.Errnos) != 0 {
		t.Fatalf("connects failed during updates (errno: count): %v", reply.Errnos)
	}
	for name := range reply.Backends {
		if e.top.backendOf(name) == nil {
			t.Errorf("connections reached %q, not a backend of the service", name)
		}
	}
	if client := e.top.clients[0].v4.String(); len(reply.Clients) != 1 || reply.Clients[client] != total {
		t.Errorf("backends saw the client as %v, want %s for all %d connections", reply.Clients, client, total)
	}
	if len(reply.Peers) != 1 || reply.Peers["10.96.0.50:80"] != total {
		t.Errorf("getpeername showed %v, want the VIP for all %d connections", reply.Peers, total)
	}
	if total < 100 || updates < 100 {
		t.Fatalf("too little overlap to tell: %d connections, %d updates", total, updates)
	}
	requireMapsMatch(t, e.lb, nil)
}

// TestPrivilegedExternalIP: an ExternalIP service is translated only once
// its address is the node's. Its frontend here is backend1's real address,
// so an untranslated connect visibly reaches backend1, a translated one
// backend0.
func TestPrivilegedExternalIP(t *testing.T) {
	e := newEnv(t, 2, Config{})
	ext := e.top.backends[1].addr(false, backendPort)
	svc := Service{Frontend: Frontend{Addr: ext, Protocol: nodeplane.ProtoTCP}, Type: ExternalIP}
	e.upsert(t, svc, e.backends(false, 1))

	reaches := func() string {
		t.Helper()
		r := e.client.one(clientCmd{Op: "dial", Net: "tcp4", Addr: ext.String()})
		if r.Err != "" {
			t.Fatal(r.Err)
		}
		return e.top.backendOf(r.Greeting).name
	}
	if got := reaches(); got != "backend1" {
		t.Fatalf("external IP of another host reached %s, want it untouched", got)
	}
	if err := e.lb.SetHostAddresses(ext.Addr(), netip.MustParseAddr("fd00::99")); err != nil {
		t.Fatal(err)
	}
	if got := reaches(); got != "backend0" {
		t.Fatalf("external IP of this host reached %s, want the backend", got)
	}
	if err := e.lb.SetHostAddresses(); err != nil {
		t.Fatal(err)
	}
	if got := reaches(); got != "backend1" {
		t.Fatalf("after removing the host address: %s", got)
	}
}
