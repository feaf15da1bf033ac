package lb

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
)

func TestValidation(t *testing.T) {
	ap := netip.MustParseAddrPort
	v4 := Frontend{Addr: ap("10.96.0.1:80"), Protocol: nodeplane.ProtoTCP}
	be := func(s string) Backend { return Backend{Addr: ap(s)} }
	cases := []struct {
		name     string
		svc      Service
		backends []Backend
		want     error
		msg      string
	}{
		{"ok", Service{Frontend: v4}, []Backend{be("10.0.0.1:8080")}, nil, ""},
		{"ok v6 maglev affinity", Service{Frontend: Frontend{ap("[fd00::1]:53"), nodeplane.ProtoUDP}, Algorithm: AlgorithmMaglev, SessionAffinity: 3 * time.Hour},
			[]Backend{be("[fd00::2]:53"), {Addr: ap("[fd00::3]:53"), State: BackendMaintenance, Weight: 7}}, nil, ""},
		{"no backends is fine", Service{Frontend: v4}, nil, nil, ""},
		{"no address", Service{Frontend: Frontend{Protocol: nodeplane.ProtoTCP}}, nil, ErrInvalidService, "no address"},
		{"port 0", Service{Frontend: Frontend{ap("10.96.0.1:0"), nodeplane.ProtoTCP}}, nil, ErrInvalidService, "port 0"},
		{"4in6 frontend", Service{Frontend: Frontend{ap("[::ffff:10.96.0.1]:80"), nodeplane.ProtoTCP}}, nil, ErrInvalidService, "IPv4-mapped"},
		{"unspecified", Service{Frontend: Frontend{ap("0.0.0.0:80"), nodeplane.ProtoTCP}}, nil, ErrInvalidService, "unspecified"},
		{"zone", Service{Frontend: Frontend{ap("[fe80::1%eth0]:80"), nodeplane.ProtoTCP}}, nil, ErrInvalidService, "zone"},
		{"protocol", Service{Frontend: Frontend{ap("10.96.0.1:80"), 132}}, nil, ErrInvalidService, "protocol 132"},
		{"type", Service{Frontend: v4, Type: 9}, nil, ErrInvalidService, "ServiceType(9)"},
		{"algorithm", Service{Frontend: v4, Algorithm: 5}, nil, ErrInvalidService, "Algorithm(5)"},
		{"affinity fraction", Service{Frontend: v4, SessionAffinity: 1500 * time.Millisecond}, nil, ErrInvalidService, "whole number of seconds"},
		{"affinity negative", Service{Frontend: v4, SessionAffinity: -time.Second}, nil, ErrInvalidService, "whole number"},
		{"affinity too long", Service{Frontend: v4, SessionAffinity: MaxSessionAffinity + time.Second}, nil, ErrInvalidService, "whole number"},
		{"family", Service{Frontend: v4}, []Backend{be("[fd00::2]:80")}, ErrInvalidBackend, "address family"},
		{"duplicate", Service{Frontend: v4}, []Backend{be("10.0.0.1:80"), be("10.0.0.1:80")}, ErrInvalidBackend, "twice"},
		{"backend port", Service{Frontend: v4}, []Backend{be("10.0.0.1:0")}, ErrInvalidBackend, "port 0"},
		{"backend state", Service{Frontend: v4}, []Backend{{Addr: ap("10.0.0.1:80"), State: 4}}, ErrInvalidBackend, "BackendState(4)"},
		{"4in6 backend", Service{Frontend: Frontend{ap("[fd00::1]:80"), nodeplane.ProtoTCP}}, []Backend{be("[::ffff:10.0.0.1]:80")}, ErrInvalidBackend, "IPv4-mapped"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var m Model
			_, err := m.Upsert(c.svc, c.backends)
			if c.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("got %v, want %v mentioning %q", err, c.want, c.msg)
			}
			// A rejected update leaves nothing behind.
			if _, _, ok := m.Lookup(c.svc.Frontend); ok {
				t.Fatal("rejected service was recorded")
			}
		})
	}
}

func TestTooManyBackends(t *testing.T) {
	var m Model
	bes := make([]Backend, MaxBackends+1)
	for i := range bes {
		bes[i] = Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}), 80)}
	}
	if _, err := m.Upsert(Service{Frontend: fe("10.96.0.1:80", nodeplane.ProtoTCP)}, bes); !errors.Is(err, ErrInvalidBackend) {
		t.Fatalf("got %v", err)
	}
	if _, err := m.Upsert(Service{Frontend: fe("10.96.0.1:80", nodeplane.ProtoTCP)}, bes[:MaxBackends]); err != nil {
		t.Fatal(err)
	}
}

func TestStrings(t *testing.T) {
	for got, want := range map[string]string{
		nodeplane.ProtoTCP.String():                     "TCP",
		LoadBalancer.String():                           "LoadBalancer",
		AlgorithmMaglev.String():                        "maglev",
		BackendQuarantined.String():                     "quarantined",
		fe("[fd00::1]:53", nodeplane.ProtoUDP).String(): "[fd00::1]:53/UDP",
	} {
		if got != want {
			t.Errorf("%q, want %q", got, want)
		}
	}
}
