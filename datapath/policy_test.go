package datapath

import (
	"errors"
	"testing"

	"github.com/nodeplane/nodeplane/identity"
)

const (
	tcp = 6
	udp = 17
)

func TestLookupPolicy(t *testing.T) {
	const web, db identity.ID = 1000, 2000
	allow := PolicyEntry{}
	deny := PolicyEntry{Deny: true}
	type pkt struct {
		peer  identity.ID
		proto uint8
		port  uint16
	}
	for _, tc := range []struct {
		name    string
		entries map[PolicyKey]PolicyEntry
		pkt     pkt
		want    DropReason // 0 = allowed
	}{
		{"empty map is default deny", nil, pkt{web, tcp, 80}, DropPolicyDenied},
		{"exact allow", map[PolicyKey]PolicyEntry{
			{Identity: web, Protocol: tcp, Port: 80, PortPrefixLen: 16}: allow,
		}, pkt{web, tcp, 80}, 0},
		{"other port denied", map[PolicyKey]PolicyEntry{
			{Identity: web, Protocol: tcp, Port: 80, PortPrefixLen: 16}: allow,
		}, pkt{web, tcp, 81}, DropPolicyDenied},
		{"other identity denied", map[PolicyKey]PolicyEntry{
			{Identity: web, Protocol: tcp, Port: 80, PortPrefixLen: 16}: allow,
		}, pkt{db, tcp, 80}, DropPolicyDenied},
		{"port range 8080-8083 as /14", map[PolicyKey]PolicyEntry{
			{Identity: web, Protocol: tcp, Port: 8080, PortPrefixLen: 14}: allow,
		}, pkt{web, tcp, 8083}, 0},
		{"just past the range", map[PolicyKey]PolicyEntry{
			{Identity: web, Protocol: tcp, Port: 8080, PortPrefixLen: 14}: allow,
		}, pkt{web, tcp, 8084}, DropPolicyDenied},
		{"any peer, any port", map[PolicyKey]PolicyEntry{
			{Protocol: udp}: allow,
		}, pkt{db, udp, 53}, 0},
		{"wildcard deny beats specific allow", map[PolicyKey]PolicyEntry{
			{Identity: web, Protocol: tcp, Port: 80, PortPrefixLen: 16}: allow,
			{Protocol: tcp}: deny,
		}, pkt{web, tcp, 80}, DropPolicyDeny},
		{"peer deny beats wildcard allow", map[PolicyKey]PolicyEntry{
			{}:                             allow,
			{Identity: web, Protocol: tcp}: deny,
		}, pkt{web, tcp, 443}, DropPolicyDeny},
		{"direction is part of the key", map[PolicyKey]PolicyEntry{
			{Direction: Egress}: allow,
		}, pkt{web, tcp, 443}, DropPolicyDenied},
		{"longer wildcard allow wins over shorter peer allow", map[PolicyKey]PolicyEntry{
			{Identity: web}: {ProxyPort: 0},
			{Protocol: tcp, Port: 80, PortPrefixLen: 16}: {ProxyPort: 15001},
		}, pkt{web, tcp, 80}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := LookupPolicy(tc.entries, tc.pkt.peer, Ingress, tc.pkt.proto, tc.pkt.port)
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
	entries := map[PolicyKey]PolicyEntry{
		{Identity: 1000}: {},
		{Protocol: tcp, Port: 80, PortPrefixLen: 16}: {ProxyPort: 15001},
	}
	if d := LookupPolicy(entries, 1000, Ingress, tcp, 80); !d.Allowed || d.ProxyPort != 15001 {
		t.Fatalf("got %+v, want allow via proxy 15001", d)
	}
	if d := LookupPolicy(entries, 1000, Ingress, tcp, 81); !d.Allowed || d.ProxyPort != 0 || d.Key.Identity != 1000 {
		t.Fatalf("got %+v, want allow by the identity entry", d)
	}
}

func TestPolicyKeyValidate(t *testing.T) {
	for _, k := range []PolicyKey{
		{Direction: 2},
		{Protocol: tcp, PortPrefixLen: 17},
		{Port: 80},
		{Protocol: tcp, Port: 8081, PortPrefixLen: 14},
	} {
		if err := k.Validate(); !errors.Is(err, ErrInvalidPolicyKey) {
			t.Errorf("%+v: got %v, want ErrInvalidPolicyKey", k, err)
		}
	}
	if err := (PolicyKey{Identity: 5, Protocol: tcp, Port: 8080, PortPrefixLen: 14}).Validate(); err != nil {
		t.Fatal(err)
	}
}
