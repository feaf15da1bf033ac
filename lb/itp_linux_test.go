package lb

import (
	"syscall"
	"testing"

	"github.com/nodeplane/nodeplane"
)

// TestPrivilegedInternalTrafficLocal: with internalTrafficPolicy=Local a
// client on the node reaches only the backends marked Local, through real
// TCP and UDP connects; with none local the service refuses
// (EHOSTUNREACH, Cilium's answer for a service without backends); turning
// the policy off brings every backend back. The kernel's maps match the
// model at each step (upsert checks).
func TestPrivilegedInternalTrafficLocal(t *testing.T) {
	e := newEnv(t, 3, Config{})
	tcp := Service{Frontend: fe("10.96.0.50:80", nodeplane.ProtoTCP), InternalTrafficLocal: true}
	udp := Service{Frontend: fe("[fd00:96::50]:53", nodeplane.ProtoUDP), InternalTrafficLocal: true}
	bes4, bes6 := e.backends(false, 3), e.backends(true, 3)
	bes4[1].Local, bes6[2].Local = true, true
	e.upsert(t, tcp, bes4)
	e.upsert(t, udp, bes6)

	for _, res := range e.client.do(clientCmd{Op: "dials", Net: "tcp4", Addr: "10.96.0.50:80", Count: 30}).Results {
		if res.Err != "" {
			t.Fatal(res.Err)
		}
		if be := e.top.backendOf(res.Greeting); be != e.top.backends[1] {
			t.Fatalf("TCP reached %s, not the local backend %s", be.name, e.top.backends[1].name)
		}
	}
	for range 10 {
		res := e.client.one(clientCmd{Op: "udpconn", Net: "udp6", Addr: "[fd00:96::50]:53", Msg: "x"})
		if res.Err != "" {
			t.Fatal(res.Err)
		}
		if be := e.top.backendOf(res.Greeting); be != e.top.backends[2] {
			t.Fatalf("UDP reached %s, not the local backend %s", be.name, e.top.backends[2].name)
		}
	}

	// No local backend: refused, although remote ones are active.
	e.upsert(t, tcp, e.backends(false, 3))
	if res := e.client.one(clientCmd{Op: "dial", Net: "tcp4", Addr: "10.96.0.50:80"}); syscall.Errno(res.Errno) != syscall.EHOSTUNREACH {
		t.Fatalf("no local backend: %q (errno %d), want EHOSTUNREACH", res.Err, res.Errno)
	}
	// A local backend that is terminating takes no new connection either.
	bes4 = e.backends(false, 3)
	bes4[0].Local, bes4[0].State = true, BackendTerminating
	e.upsert(t, tcp, bes4)
	if res := e.client.one(clientCmd{Op: "dial", Net: "tcp4", Addr: "10.96.0.50:80"}); syscall.Errno(res.Errno) != syscall.EHOSTUNREACH {
		t.Fatalf("terminating local backend only: %q (errno %d), want EHOSTUNREACH", res.Err, res.Errno)
	}

	// internalTrafficPolicy=Cluster: every active backend.
	tcp.InternalTrafficLocal = false
	e.upsert(t, tcp, e.backends(false, 3))
	seen := map[string]bool{}
	for _, res := range e.client.do(clientCmd{Op: "dials", Net: "tcp4", Addr: "10.96.0.50:80", Count: 30}).Results {
		if res.Err != "" {
			t.Fatal(res.Err)
		}
		seen[e.top.backendOf(res.Greeting).name] = true
	}
	if len(seen) != 3 {
		t.Fatalf("Cluster policy reached %v, want all 3 backends", seen)
	}
}
