package mapstate

import (
	"errors"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
)

const (
	tcp = 6
	udp = 17
)

func TestLookup(t *testing.T) {
	const web, db identity.ID = 1<<16 | 1000, 1<<16 | 2000
	allow := Entry{}
	deny := Entry{Deny: true}
	type pkt struct {
		peer  identity.ID
		proto nodeplane.Protocol
		port  uint16
	}
	for _, tc := range []struct {
		name    string
		entries State
		pkt     pkt
		want    monitor.DropReason // 0 = allowed
	}{
		{"empty map is default deny", nil, pkt{web, tcp, 80}, monitor.DropPolicyDenied},
		{"exact allow", State{
			{Identity: web, Protocol: tcp, Port: 80, PortPrefixLen: 16}: allow,
		}, pkt{web, tcp, 80}, 0},
		{"other port denied", State{
			{Identity: web, Protocol: tcp, Port: 80, PortPrefixLen: 16}: allow,
		}, pkt{web, tcp, 81}, monitor.DropPolicyDenied},
		{"other identity denied", State{
			{Identity: web, Protocol: tcp, Port: 80, PortPrefixLen: 16}: allow,
		}, pkt{db, tcp, 80}, monitor.DropPolicyDenied},
		{"port range 8080-8083 as /14", State{
			{Identity: web, Protocol: tcp, Port: 8080, PortPrefixLen: 14}: allow,
		}, pkt{web, tcp, 8083}, 0},
		{"just past the range", State{
			{Identity: web, Protocol: tcp, Port: 8080, PortPrefixLen: 14}: allow,
		}, pkt{web, tcp, 8084}, monitor.DropPolicyDenied},
		{"any peer, any port", State{
			{Protocol: udp}: allow,
		}, pkt{db, udp, 53}, 0},
		{"wildcard deny beats specific allow", State{
			{Identity: web, Protocol: tcp, Port: 80, PortPrefixLen: 16}: allow,
			{Protocol: tcp}: deny,
		}, pkt{web, tcp, 80}, monitor.DropPolicyDeny},
		{"peer deny beats wildcard allow", State{
			{}:                             allow,
			{Identity: web, Protocol: tcp}: deny,
		}, pkt{web, tcp, 443}, monitor.DropPolicyDeny},
		{"direction is part of the key", State{
			{Direction: Egress}: allow,
		}, pkt{web, tcp, 443}, monitor.DropPolicyDenied},
		{"longer wildcard allow wins over shorter peer allow", State{
			{Identity: web}: {ProxyPort: 0},
			{Protocol: tcp, Port: 80, PortPrefixLen: 16}: {ProxyPort: 15001},
		}, pkt{web, tcp, 80}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Lookup(tc.entries, tc.pkt.peer, Ingress, tc.pkt.proto, tc.pkt.port)
			if tc.want == 0 && !d.Allowed {
				t.Fatalf("dropped with %d, want allowed", d.Reason)
			}
			if tc.want != 0 && (d.Allowed || d.Reason != tc.want) {
				t.Fatalf("got %+v, want drop %d", d, tc.want)
			}
		})
	}
}

func TestLookupProxyPortFromMoreSpecificEntry(t *testing.T) {
	entries := State{
		{Identity: 1<<16 | 1000}:                     {},
		{Protocol: tcp, Port: 80, PortPrefixLen: 16}: {ProxyPort: 15001},
	}
	if d := Lookup(entries, 1<<16|1000, Ingress, tcp, 80); !d.Allowed || d.ProxyPort != 15001 {
		t.Fatalf("got %+v, want allow via proxy 15001", d)
	}
	if d := Lookup(entries, 1<<16|1000, Ingress, tcp, 81); !d.Allowed || d.ProxyPort != 0 || d.Key.Identity != 1<<16|1000 {
		t.Fatalf("got %+v, want allow by the identity entry", d)
	}
}

func TestKeyValidate(t *testing.T) {
	for _, k := range []Key{
		{Direction: 2},
		{Protocol: tcp, PortPrefixLen: 17},
		{Port: 80},
		{Protocol: tcp, Port: 8081, PortPrefixLen: 14},
	} {
		if err := k.Validate(); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%+v: got %v, want ErrInvalidKey", k, err)
		}
	}
	if err := (Key{Identity: 5, Protocol: tcp, Port: 8080, PortPrefixLen: 14}).Validate(); err != nil {
		t.Fatal(err)
	}
}

// Diff gives the delta that turns old into new, and applying it to a copy
// of old gives new, for random pairs of states.
func TestDiffApply(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	randomState := func() State {
		s := State{}
		for range rng.IntN(20) {
			k := Key{Identity: identity.ID(rng.IntN(4)), Direction: Direction(rng.IntN(2))}
			if rng.IntN(2) == 0 {
				k.Protocol, k.Port, k.PortPrefixLen = tcp, uint16(rng.IntN(4)), 16
			}
			s[k] = Entry{Deny: rng.IntN(3) == 0, ProxyPort: uint16(rng.IntN(2))}
		}
		return s
	}
	for range 200 {
		old, new := randomState(), randomState()
		d := Diff(old, new)
		got := maps.Clone(old)
		d.Apply(got)
		if !maps.Equal(got, new) {
			t.Fatalf("Diff(%v, %v) = %+v applies to %v", old, new, d, got)
		}
		for _, k := range d.Deletes {
			if _, ok := d.Upserts[k]; ok {
				t.Fatalf("%v both upserted and deleted", k)
			}
		}
		if d.Empty() != maps.Equal(old, new) {
			t.Fatalf("Empty() = %v for %v -> %v", d.Empty(), old, new)
		}
		if !slices.IsSortedFunc(d.Deletes, Key.Compare) {
			t.Fatalf("deletes not sorted: %v", d.Deletes)
		}
	}
}

// PortRangePrefixes covers exactly first..last, with aligned blocks.
func TestPortRangePrefixes(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 300 {
		first := uint16(rng.IntN(1 << 16))
		last := first + uint16(rng.IntN(3000))
		if last < first {
			last = 0xFFFF
		}
		var covered int
		next := uint32(first)
		for _, p := range PortRangePrefixes(first, last) {
			if p.Port&^portMask(p.Bits) != 0 || uint32(p.Port) != next {
				t.Fatalf("%d-%d: block %v misaligned or not contiguous", first, last, p)
			}
			covered += int(p.Last()) - int(p.Port) + 1
			next = uint32(p.Last()) + 1
		}
		want := int(last) - int(first) + 1
		if first == 0 && (last == 0 || last == 0xFFFF) {
			want = 1 << 16
		} else if last <= first {
			want = 1
		}
		if covered != want {
			t.Fatalf("%d-%d: blocks cover %d ports, want %d", first, last, covered, want)
		}
	}
}
