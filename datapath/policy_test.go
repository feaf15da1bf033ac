package datapath

import (
	"errors"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/datapath/monitor"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

const (
	tcp = 6
	udp = 17
)

func TestLookupPolicy(t *testing.T) {
	const web, db identity.ID = 1000, 2000
	allow := mapstate.Entry{}
	deny := mapstate.Entry{Deny: true}
	type pkt struct {
		peer  identity.ID
		proto nodeplane.Protocol
		port  uint16
	}
	for _, tc := range []struct {
		name    string
		entries map[mapstate.Key]mapstate.Entry
		pkt     pkt
		want    monitor.DropReason // 0 = allowed
	}{
		{"empty map is default deny", nil, pkt{web, tcp, 80}, monitor.DropPolicyDenied},
		{"exact allow", map[mapstate.Key]mapstate.Entry{
			{Identity: web, Protocol: tcp, Port: 80, PortPrefixLen: 16}: allow,
		}, pkt{web, tcp, 80}, 0},
		{"other port denied", map[mapstate.Key]mapstate.Entry{
			{Identity: web, Protocol: tcp, Port: 80, PortPrefixLen: 16}: allow,
		}, pkt{web, tcp, 81}, monitor.DropPolicyDenied},
		{"other identity denied", map[mapstate.Key]mapstate.Entry{
			{Identity: web, Protocol: tcp, Port: 80, PortPrefixLen: 16}: allow,
		}, pkt{db, tcp, 80}, monitor.DropPolicyDenied},
		{"port range 8080-8083 as /14", map[mapstate.Key]mapstate.Entry{
			{Identity: web, Protocol: tcp, Port: 8080, PortPrefixLen: 14}: allow,
		}, pkt{web, tcp, 8083}, 0},
		{"just past the range", map[mapstate.Key]mapstate.Entry{
			{Identity: web, Protocol: tcp, Port: 8080, PortPrefixLen: 14}: allow,
		}, pkt{web, tcp, 8084}, monitor.DropPolicyDenied},
		{"any peer, any port", map[mapstate.Key]mapstate.Entry{
			{Protocol: udp}: allow,
		}, pkt{db, udp, 53}, 0},
		{"wildcard deny beats specific allow", map[mapstate.Key]mapstate.Entry{
			{Identity: web, Protocol: tcp, Port: 80, PortPrefixLen: 16}: allow,
			{Protocol: tcp}: deny,
		}, pkt{web, tcp, 80}, monitor.DropPolicyDeny},
		{"peer deny beats wildcard allow", map[mapstate.Key]mapstate.Entry{
			{}:                             allow,
			{Identity: web, Protocol: tcp}: deny,
		}, pkt{web, tcp, 443}, monitor.DropPolicyDeny},
		{"direction is part of the key", map[mapstate.Key]mapstate.Entry{
			{Direction: mapstate.Egress}: allow,
		}, pkt{web, tcp, 443}, monitor.DropPolicyDenied},
		{"longer wildcard allow wins over shorter peer allow", map[mapstate.Key]mapstate.Entry{
			{Identity: web}: {ProxyPort: 0},
			{Protocol: tcp, Port: 80, PortPrefixLen: 16}: {ProxyPort: 15001},
		}, pkt{web, tcp, 80}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := mapstate.Lookup(tc.entries, tc.pkt.peer, mapstate.Ingress, tc.pkt.proto, tc.pkt.port)
			if tc.want == 0 && !d.Allowed {
				t.Fatalf("dropped with %d, want allowed", d.Reason)
			}
			if tc.want != 0 && (d.Allowed || d.Reason != tc.want) {
				t.Fatalf("got %+v, want drop %d", d, tc.want)
			}
		})
	}
}

func TestLookupPolicyProxyPortFromMoreSpecificEntry(t *testing.T) {
	entries := map[mapstate.Key]mapstate.Entry{
		{Identity: 1000}: {},
		{Protocol: tcp, Port: 80, PortPrefixLen: 16}: {ProxyPort: 15001},
	}
	if d := mapstate.Lookup(entries, 1000, mapstate.Ingress, tcp, 80); !d.Allowed || d.ProxyPort != 15001 {
		t.Fatalf("got %+v, want allow via proxy 15001", d)
	}
	if d := mapstate.Lookup(entries, 1000, mapstate.Ingress, tcp, 81); !d.Allowed || d.ProxyPort != 0 || d.Key.Identity != 1000 {
		t.Fatalf("got %+v, want allow by the identity entry", d)
	}
}

func TestPolicyKeyValidate(t *testing.T) {
	for _, k := range []mapstate.Key{
		{Direction: 2},
		{Protocol: tcp, PortPrefixLen: 17},
		{Port: 80},
		{Protocol: tcp, Port: 8081, PortPrefixLen: 14},
	} {
		if err := k.Validate(); !errors.Is(err, mapstate.ErrInvalidKey) {
			t.Errorf("%+v: got %v, want ErrInvalidPolicyKey", k, err)
		}
	}
	if err := (mapstate.Key{Identity: 5, Protocol: tcp, Port: 8080, PortPrefixLen: 14}).Validate(); err != nil {
		t.Fatal(err)
	}
}
