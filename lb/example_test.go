package lb_test

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/lb"
)

// Balance a ClusterIP service across two pods for every process in a
// cgroup (needs root).
func ExampleNew() {
	balancer, err := lb.New(lb.Config{Cgroup: "/sys/fs/cgroup/unified/pods"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer balancer.Close()

	svc := lb.Service{
		Frontend: lb.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:53"), Protocol: nodeplane.ProtoUDP},
	}
	_, err = balancer.Upsert(svc, []lb.Backend{
		{Addr: netip.MustParseAddrPort("10.0.1.5:53")},
		{Addr: netip.MustParseAddrPort("10.0.2.7:53")},
	})
	if err != nil {
		fmt.Println(err)
	}
}

// Drain a backend: it keeps the connections it has and gets no new ones.
func ExampleLB_UpsertBackends() {
	var balancer *lb.LB // from lb.New
	web := lb.Frontend{Addr: netip.MustParseAddrPort("10.96.0.20:80"), Protocol: nodeplane.ProtoTCP}
	err := balancer.UpsertBackends(web, lb.Backend{
		Addr:  netip.MustParseAddrPort("10.0.1.9:8080"),
		State: lb.BackendTerminating,
	})
	if errors.Is(err, lb.ErrServiceNotFound) {
		fmt.Println("no such service")
	}
}

// The model answers what the kernel does with a connect.
func ExampleModel() {
	var m lb.Model
	web := lb.Frontend{Addr: netip.MustParseAddrPort("10.96.0.20:80"), Protocol: nodeplane.ProtoTCP}
	m.Upsert(lb.Service{Frontend: web, SessionAffinity: 30 * time.Second}, []lb.Backend{
		{Addr: netip.MustParseAddrPort("10.0.1.9:8080")},
		{Addr: netip.MustParseAddrPort("10.0.2.4:8080"), State: lb.BackendTerminating},
		{Addr: netip.MustParseAddrPort("10.0.3.1:8080")},
	})
	fmt.Println("eligible:", m.Eligible(web))

	// A TCP connect: bpf_get_prandom_u32 returned 5; slot 5 mod 2.
	r, _ := m.Connect(lb.Request{Dest: web.Addr, Protocol: nodeplane.ProtoTCP, Random: 5, NetNSCookie: 1, Now: 100 * time.Second})
	fmt.Println("connect:", r.Dest)
	// The same namespace is pinned to that backend for 30 s after its last use.
	r, _ = m.Connect(lb.Request{Dest: web.Addr, Protocol: nodeplane.ProtoTCP, Random: 0, NetNSCookie: 1, Now: 120 * time.Second})
	fmt.Println("again:", r.Dest, "pinned:", r.Pinned)

	// Without an active backend the connect fails with EHOSTUNREACH.
	m.Upsert(lb.Service{Frontend: web}, nil)
	_, err := m.Connect(lb.Request{Dest: web.Addr, Protocol: nodeplane.ProtoTCP})
	fmt.Println(err, errors.Is(err, syscall.EHOSTUNREACH))
	// Output:
	// eligible: [{10.0.1.9:8080 100 active false} {10.0.3.1:8080 100 active false}]
	// connect: 10.0.3.1:8080
	// again: 10.0.3.1:8080 pinned: true
	// service has no active backend true
}
