package policy

import (
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

// Port 0 is the wildcard whatever endPort says: Cilium v1.20.2
// (pkg/policy/l4.go) expands a range only when port != 0 && endPort > port,
// and writes one key for port otherwise. The map and the rules must agree
// on that (w.sides fails the test when they do not).
func TestPortZeroWithEndPort(t *testing.T) {
	runRuleKindTests(t, []ruleKindTest{{
		name: "allow port 0 with endPort is every port of the protocol",
		docs: []string{cnp("prod", "p", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEndpoints: [{matchLabels: {app: web}}]
  toPorts: [{ports: [{port: "0", endPort: 100, protocol: TCP}]}]`)},
		flows: []flowCase{
			{webProd, dbProd, "80", "allow", "allow"},
			{webProd, dbProd, "8080", "allow", "allow"},
			{webProd, dbProd, "65535", "allow", "allow"},
			{webProd, dbProd, "80/UDP", "allow", "deny"},
		},
	}, {
		name: "deny port 0 with endPort is every port of the protocol",
		docs: []string{cnp("prod", "p", `
endpointSelector: {matchLabels: {app: db}}
ingress:
- fromEntities: [all]
ingressDeny:
- fromEndpoints: [{matchLabels: {app: web}}]
  toPorts: [{ports: [{port: "0", endPort: 10, protocol: ANY}]}]`)},
		flows: []flowCase{
			{webProd, dbProd, "5", "allow", "deny"},
			{webProd, dbProd, "8080", "allow", "deny"},
			{webProd, dbProd, "8080/SCTP", "allow", "deny"},
			{webProd, dbProd, "8/ICMP", "allow", "allow"},
			{apiProd, dbProd, "8080", "allow", "allow"},
		},
	}})
}

// The compiled map holds one wildcard-port key for port 0 with endPort, not
// the prefixes of 0..endPort.
func TestPortZeroWithEndPortKeys(t *testing.T) {
	w := newWorld(t, Config{}, cnp("prod", "p", `
endpointSelector: {matchLabels: {app: db}}
egress:
- toEndpoints: [{matchLabels: {app: web}}]
  toPorts: [{ports: [{port: "0", endPort: 1000, protocol: UDP}]}]`))
	web, db := w.ident(webProd), w.ident(dbProd)
	pol := w.repo.Compile(Endpoint{Identity: db.ID, Labels: db.Labels})
	var peerKeys int
	for _, k := range pol.State().Keys() {
		if k.Identity != web.ID {
			continue
		}
		peerKeys++
		if k.Protocol != nodeplane.ProtoUDP || k.Port != 0 || k.PortPrefixLen != 0 {
			t.Errorf("key %v, want the whole UDP port space", k)
		}
	}
	if peerKeys != 1 {
		t.Errorf("%d keys for the peer, want 1:\n%v", peerKeys, pol.State().Keys())
	}
	ev := w.repo.Evaluate(Endpoint{Identity: db.ID, Labels: db.Labels}, identity.Identity{ID: web.ID, Labels: web.Labels}, mapstate.Egress, nodeplane.ProtoUDP, 4000)
	if !ev.Allowed || len(ev.AllowedBy) != 1 || ev.AllowedBy[0].Port != "*/UDP" {
		t.Errorf("evaluation %+v, want allowed by */UDP", ev)
	}
}
