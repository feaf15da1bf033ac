package lb

import (
	"math"
	"net/netip"
	"strings"
	"testing"

	"github.com/nodeplane/nodeplane"
)

// The tests in this file check the kernel's choices against an oracle that
// shares no code with the load balancer: the service definition the user
// wrote and what Cilium's socket LB promises for it. Each connection is a
// real one through the VIP; the backend that answers names itself and the
// client address it sees, and the client reads getpeername.

// chiSquare returns Pearson's statistic of observed counts against equal
// expected shares.
func chiSquare(counts []int) float64 {
	n := 0
	for _, c := range counts {
		n += c
	}
	exp := float64(n) / float64(len(counts))
	var x float64
	for _, c := range counts {
		d := float64(c) - exp
		x += d * d / exp
	}
	return x
}

// chiSquareCritical001 maps degrees of freedom (backends less one) to the
// chi-square value a uniform choice exceeds with probability 0.001.
var chiSquareCritical001 = map[int]float64{1: 10.83, 2: 13.82, 3: 16.27}

// TestPrivilegedSelectionIsUniformOverActiveBackends: for a nodeplane.ProtoTCP service, the
// socket LB picks a backend uniformly at random among the active ones, as
// Cilium's bpf_sock does; weights only shape the Maglev table of the packet
// path, so they must not skew socket selection, and Maglev services are
// selected the same way at connect(). A terminating and a quarantined
// backend get no new connection. For nodeplane.ProtoUDP the socket cookie picks, which is
// uniform over many sockets. Every connection must show the VIP as its
// peer, reach a backend of the service and be seen there from the client's
// own address.
func TestPrivilegedSelectionIsUniformOverActiveBackends(t *testing.T) {
	e := newEnv(t, 5, Config{})
	be := e.backends(false, 5)
	be[0].Weight, be[1].Weight, be[2].Weight = 1, 100, 1000
	be[3].State = BackendTerminating
	be[4].State = BackendQuarantined
	active := map[string]int{}
	for _, b := range e.top.backends[:3] {
		active[b.name] = 0
	}
	client := e.top.clients[0].v4

	for _, tc := range []struct {
		name string
		svc  Service
		op   string
		n    int
	}{
		{"TCP random", Service{Frontend: fe("10.96.1.1:80", nodeplane.ProtoTCP)}, "dials", 900},
		{"TCP maglev", Service{Frontend: fe("10.96.1.2:80", nodeplane.ProtoTCP), Algorithm: AlgorithmMaglev}, "dials", 900},
		{"UDP by socket", Service{Frontend: fe("10.96.1.3:53", nodeplane.ProtoUDP)}, "sendto", 600},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.upsert(t, tc.svc, be)
			vip := tc.svc.Frontend.Addr.String()
			net := "tcp4"
			if tc.svc.Frontend.Protocol == nodeplane.ProtoUDP {
				net = "udp4"
			}
			counts := map[string]int{}
			for name := range active {
				counts[name] = 0
			}
			for i, res := range e.client.do(clientCmd{Op: tc.op, Net: net, Addr: vip, Msg: "x", Count: tc.n}).Results {
				if res.Err != "" {
					t.Fatalf("connection %d: %s", i, res.Err)
				}
				peer := res.Peer
				if tc.svc.Frontend.Protocol == nodeplane.ProtoUDP {
					peer = res.From
				}
				if peer != vip {
					t.Fatalf("connection %d: peer %s, want the VIP %s", i, peer, vip)
				}
				f := strings.Fields(res.Greeting)
				if len(f) < 2 {
					t.Fatalf("connection %d: greeting %q", i, res.Greeting)
				}
				if _, ok := active[f[0]]; !ok {
					t.Fatalf("connection %d reached %q, not an active backend of the service", i, f[0])
				}
				if seen, err := netip.ParseAddrPort(f[1]); err != nil || seen.Addr() != client {
					t.Fatalf("connection %d: %s saw the client as %s, want %s", i, f[0], f[1], client)
				}
				counts[f[0]]++
			}
			var obs []int
			for _, c := range counts {
				obs = append(obs, c)
			}
			x := chiSquare(obs)
			t.Logf("%d connections: %v, chi-square %.2f", tc.n, counts, x)
			if crit := chiSquareCritical001[len(obs)-1]; x > crit {
				t.Fatalf("distribution %v is not uniform over the active backends: chi-square %.2f > %.2f (p < 0.001)", counts, x, crit)
			}
		})
	}
}

func TestChiSquare(t *testing.T) {
	if x := chiSquare([]int{300, 300, 300}); x != 0 {
		t.Fatalf("equal counts: %v", x)
	}
	// (400-300)^2/300 + (200-300)^2/300 + 0 = 66.67
	if x := chiSquare([]int{400, 200, 300}); math.Abs(x-200.0/3) > 1e-9 {
		t.Fatalf("chiSquare = %v", x)
	}
}
