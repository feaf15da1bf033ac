package policy

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/fqdn"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

const fqdnPolicy = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*.example.test"}, {matchName: exact.other.test}]
  - toFQDNs: [{matchPattern: "*.example.test"}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
`

type fqdnFixture struct {
	e     *Engine
	ipc   *ipcache.IPCache
	clock *time.Time
	web   *recordingMap
	dns   identity.Identity
}

func newFQDNFixture(t *testing.T) *fqdnFixture {
	t.Helper()
	now := time.Unix(1_000_000, 0)
	f := &fqdnFixture{ipc: ipcache.New(), clock: &now}
	alloc := identity.NewLocalAllocator(identity.LocalAllocatorConfig{})
	t.Cleanup(func() { alloc.Close() })
	var err error
	f.e, err = NewEngine(EngineConfig{CIDRAllocator: alloc, IPCache: f.ipc,
		FQDN: &fqdn.Config{Now: func() time.Time { return *f.clock }}, Policy: Config{ProxyPorts: ProxyPorts{DNS: 10053}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.e.Close() })
	web := identity.Identity{ID: 70000, Labels: mustLabels(t, "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,k8s:io.cilium.k8s.policy.cluster=default")}
	f.dns = identity.Identity{ID: 70001, Labels: mustLabels(t, "k8s:k8s-app=kube-dns,k8s:io.kubernetes.pod.namespace=kube-system,k8s:io.cilium.k8s.policy.cluster=default")}
	if err := f.e.UpdateIdentities([]identity.Identity{web, f.dns}, nil); err != nil {
		t.Fatal(err)
	}
	f.ipc.Upsert(netip.MustParsePrefix("10.0.0.1/32"), ipcache.Entry{Identity: web.ID})
	f.ipc.Upsert(netip.MustParsePrefix("10.0.0.53/32"), ipcache.Entry{Identity: f.dns.ID})
	f.web = &recordingMap{id: web.ID}
	if err := f.e.AddEndpoint(f.web); err != nil {
		t.Fatal(err)
	}
	ps, err := f.e.Parse([]byte(fqdnPolicy), "fqdn.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.e.AddPolicy(ps[0]); err != nil {
		t.Fatal(err)
	}
	return f
}

// allowed looks an address up the way the datapath does: ipcache, then
// the endpoint's policy map.
func (f *fqdnFixture) allowed(addr string, port uint16) bool {
	id := identity.ReservedWorldIPv4
	if _, ent, ok := f.ipc.Lookup(netip.MustParseAddr(addr)); ok {
		id = ent.Identity
	}
	m, _ := f.web.snapshot()
	return mapstate.Lookup(m, id, mapstate.Egress, nodeplane.ProtoTCP, port).Allowed
}

func TestEngineFQDNFollowsAnswersAndTTL(t *testing.T) {
	f := newFQDNFixture(t)
	if f.allowed("192.0.2.10", 80) {
		t.Fatal("allowed before any DNS answer")
	}
	if err := f.e.ObserveDNS("WWW.Example.Test", []netip.Addr{netip.MustParseAddr("192.0.2.10")}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := f.e.ObserveDNS("www.other.test", []netip.Addr{netip.MustParseAddr("192.0.2.11")}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if !f.allowed("192.0.2.10", 80) {
		t.Fatal("resolved address not allowed")
	}
	if f.allowed("192.0.2.10", 81) || f.allowed("192.0.2.11", 80) {
		t.Fatal("other port or unmatched name allowed")
	}
	_, ent, _ := f.ipc.Lookup(netip.MustParseAddr("192.0.2.10"))
	ls, _ := f.e.Repository().rv.cache.Labels(ent.Identity)
	if !ls.Has(identity.Label{Source: identity.SourceFQDN, Key: "*.example.test"}) || !ls.Has(identity.Label{Source: identity.SourceCIDR, Key: "192.0.2.10/32"}) {
		t.Fatalf("identity labels %v", ls)
	}
	if got := f.e.FQDNSelections(FQDNSelector{MatchPattern: "*.example.test"}); !slices.Equal(got, []netip.Addr{netip.MustParseAddr("192.0.2.10")}) {
		t.Fatalf("selections %v", got)
	}
	// The trace names the fqdn requirement for an unresolved address.
	*f.clock = f.clock.Add(4 * time.Second)
	if next, err := f.e.ExpireDNS(); err != nil || !next.Equal(time.Unix(1_000_005, 0)) {
		t.Fatalf("ExpireDNS before TTL: next %v, %v", next, err)
	}
	if !f.allowed("192.0.2.10", 80) {
		t.Fatal("expired early")
	}
	*f.clock = f.clock.Add(time.Second)
	if _, err := f.e.ExpireDNS(); err != nil {
		t.Fatal(err)
	}
	if f.allowed("192.0.2.10", 80) {
		t.Fatal("allowed after TTL")
	}
	if _, ok := f.ipc.Get(netip.MustParsePrefix("192.0.2.10/32")); ok {
		t.Fatal("ipcache entry left after TTL")
	}
	m, _ := f.web.snapshot()
	for k := range m {
		if k.Identity == ent.Identity {
			t.Fatalf("map keeps entry %v of the expired identity", k)
		}
	}
	// Deleting the policy releases the remaining identities.
	if _, err := f.e.DeletePolicy(PolicyID{Kind: KindCiliumNetworkPolicy, Namespace: "prod", Name: "fqdn"}); err != nil {
		t.Fatal(err)
	}
	if f.ipc.Len() != 2 {
		t.Fatalf("ipcache after delete: %d entries", f.ipc.Len())
	}
}

func TestEngineEvaluateDNS(t *testing.T) {
	f := newFQDNFixture(t)
	server := netip.MustParseAddrPort("10.0.0.53:53")
	for _, tc := range []struct {
		name  string
		proto nodeplane.Protocol
		dst   netip.AddrPort
		ok    bool
	}{
		{"a.example.test", nodeplane.ProtoUDP, server, true},
		{"A.EXAMPLE.TEST.", nodeplane.ProtoTCP, server, true},
		{"exact.other.test", nodeplane.ProtoUDP, server, true},
		{"x.exact.other.test", nodeplane.ProtoUDP, server, false},
		{"a.b.example.test", nodeplane.ProtoUDP, server, false},
		{"evil.test", nodeplane.ProtoUDP, server, false},
		// Another server is not allowed at all.
		{"a.example.test", nodeplane.ProtoUDP, netip.MustParseAddrPort("192.0.2.53:53"), false},
	} {
		d, err := f.e.EvaluateDNS(netip.MustParseAddr("10.0.0.1"), tc.dst, tc.proto, tc.name)
		if err != nil {
			t.Fatal(err)
		}
		if d.Allowed != tc.ok || d.Reason == "" {
			t.Errorf("%s to %v: %+v, want allowed=%v", tc.name, tc.dst, d, tc.ok)
		}
	}
	// Port 53 to the DNS server redirects to the DNS proxy, TCP and UDP.
	m, _ := f.web.snapshot()
	for _, proto := range []nodeplane.Protocol{nodeplane.ProtoUDP, nodeplane.ProtoTCP} {
		if d := mapstate.Lookup(m, f.dns.ID, mapstate.Egress, proto, 53); !d.Allowed || d.ProxyPort != 10053 {
			t.Fatalf("port 53/%v to the DNS server: %+v", proto, d)
		}
	}
	if _, err := f.e.EvaluateDNS(netip.MustParseAddr("10.9.9.9"), server, nodeplane.ProtoUDP, "a.example.test"); !errors.Is(err, ErrUnknownEndpoint) {
		t.Fatalf("unknown client: %v", err)
	}
}

// Without the DNS machinery, toFQDNs and DNS rules stay refused everywhere
// (fail closed), and the DNS calls say they are not supported.
func TestEngineWithoutFQDNRefuses(t *testing.T) {
	e, err := NewEngine(EngineConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	_, err = e.Parse([]byte(fqdnPolicy), "fqdn.yaml")
	if err == nil || !strings.Contains(err.Error(), "toFQDNs is not supported yet") || !strings.Contains(err.Error(), "DNS rules are not supported yet") {
		t.Fatalf("Parse without FQDN: %v", err)
	}
	// The static parser accepts them (they are valid Cilium); the engine
	// refuses them when they are added.
	ps, err := Parse([]byte(fqdnPolicy), "fqdn.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddPolicy(ps[0]); len(ValidationErrors(err)) != 2 {
		t.Fatalf("AddPolicy of a parsed toFQDNs policy without FQDN: %v", err)
	}
	p := Policy{Kind: KindCiliumNetworkPolicy, Namespace: "prod", Name: "x", Rules: []Rule{{
		EndpointSelector: &identity.LabelSelector{},
		Egress:           []EgressRule{{ToFQDNs: []FQDNSelector{{MatchName: "a.test"}}}}}}}
	if _, err := e.AddPolicy(p); !errors.Is(err, ErrInvalidPolicy) && len(ValidationErrors(err)) == 0 {
		t.Fatalf("AddPolicy without FQDN: %v", err)
	}
	if err := e.ObserveDNS("a.test", nil, time.Second); !errors.Is(err, nodeplane.ErrNotSupported) {
		t.Fatalf("ObserveDNS: %v", err)
	}
	if _, err := NewEngine(EngineConfig{FQDN: &fqdn.Config{}}); err == nil {
		t.Fatal("FQDN without allocator and ipcache accepted")
	}
	if _, err := NewEngine(EngineConfig{Policy: Config{ProxyPorts: ProxyPorts{DNS: 53}}}); err == nil {
		t.Fatal("a DNS proxy port without FQDN accepted")
	}
}

// RunDNSExpiry takes an address away when its answer's TTL runs out, on
// the real clock, without being called again.
func TestEngineRunDNSExpiry(t *testing.T) {
	alloc := identity.NewLocalAllocator(identity.LocalAllocatorConfig{})
	defer alloc.Close()
	ipc := ipcache.New()
	e, err := NewEngine(EngineConfig{CIDRAllocator: alloc, IPCache: ipc, FQDN: &fqdn.Config{},
		Policy: Config{ProxyPorts: ProxyPorts{DNS: 10053}}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ps, err := e.Parse([]byte(fqdnPolicy), "fqdn.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddPolicy(ps[0]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.RunDNSExpiry(ctx, time.Hour, nil) }()
	// Let the loop find nothing and go to sleep for its interval (an
	// hour): the answer must wake it.
	time.Sleep(50 * time.Millisecond)
	addr := netip.MustParseAddr("192.0.2.10")
	if err := e.ObserveDNS("a.example.test", []netip.Addr{addr}, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if _, ok := ipc.Get(netip.PrefixFrom(addr, 32)); !ok {
		t.Fatal("no ipcache entry after the answer")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := ipc.Get(netip.PrefixFrom(addr, 32)); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("address not expired by RunDNSExpiry")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("RunDNSExpiry: %v", err)
	}
}

// A DNS answer that names an address with an identity of its own (here
// the client endpoint's) does not relabel it, and its expiry does not
// remove the endpoint's entry.
func TestEngineFQDNKeepsEndpointAddresses(t *testing.T) {
	f := newFQDNFixture(t)
	web := netip.MustParseAddr("10.0.0.1")
	err := f.e.ObserveDNS("evil.example.test", []netip.Addr{web, netip.MustParseAddr("192.0.2.10")}, time.Second)
	if !errors.Is(err, ErrAddressInUse) {
		t.Fatalf("ObserveDNS of an endpoint's address: %v", err)
	}
	if _, ent, _ := f.ipc.Lookup(web); ent.Identity != 70000 {
		t.Fatalf("endpoint address relabelled to %v", ent.Identity)
	}
	if !f.allowed("192.0.2.10", 80) {
		t.Fatal("the other address of the answer was not allowed")
	}
	*f.clock = f.clock.Add(time.Second)
	if _, err := f.e.ExpireDNS(); err != nil {
		t.Fatal(err)
	}
	if _, ent, ok := f.ipc.Lookup(web); !ok || ent.Identity != 70000 {
		t.Fatalf("endpoint entry after expiry: %v %v", ent, ok)
	}
}

// A toCIDR rule for exactly an address learnt from DNS neither replaces
// nor removes its FQDN identity, which carries the cidr label too.
func TestEngineFQDNAndCIDROfOneAddress(t *testing.T) {
	f := newFQDNFixture(t)
	addr := netip.MustParseAddr("192.0.2.10")
	if err := f.e.ObserveDNS("a.example.test", []netip.Addr{addr}, time.Minute); err != nil {
		t.Fatal(err)
	}
	_, before, _ := f.ipc.Lookup(addr)
	cidr, err := f.e.Parse([]byte(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidr, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toCIDR: [192.0.2.10/32]
    toPorts: [{ports: [{port: "81", protocol: TCP}]}]
`), "cidr.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.e.AddPolicy(cidr[0]); err != nil {
		t.Fatal(err)
	}
	if _, after, _ := f.ipc.Lookup(addr); after.Identity != before.Identity {
		t.Fatalf("toCIDR replaced the FQDN identity %v with %v", before.Identity, after.Identity)
	}
	if !f.allowed("192.0.2.10", 80) || !f.allowed("192.0.2.10", 81) {
		t.Fatal("toFQDNs (80) and toCIDR (81) do not both allow the address")
	}
	if _, err := f.e.DeletePolicy(cidr[0].ID()); err != nil {
		t.Fatal(err)
	}
	if !f.allowed("192.0.2.10", 80) {
		t.Fatal("deleting the toCIDR rule removed the FQDN identity's entry")
	}
	// When the answer expires, the address goes back to nothing.
	*f.clock = f.clock.Add(time.Minute)
	if _, err := f.e.ExpireDNS(); err != nil {
		t.Fatal(err)
	}
	if f.allowed("192.0.2.10", 80) || f.allowed("192.0.2.10", 81) {
		t.Fatal("allowed after expiry")
	}
}

// The other order: a toCIDR rule's identity first, then a DNS answer for
// the address; when the answer expires, the CIDR identity is back.
func TestEngineCIDRThenFQDNOfOneAddress(t *testing.T) {
	f := newFQDNFixture(t)
	cidr, err := f.e.Parse([]byte(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: cidr, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toCIDR: [192.0.2.10/32]
    toPorts: [{ports: [{port: "81", protocol: TCP}]}]
`), "cidr.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.e.AddPolicy(cidr[0]); err != nil {
		t.Fatal(err)
	}
	if f.allowed("192.0.2.10", 80) || !f.allowed("192.0.2.10", 81) {
		t.Fatal("before the answer: want 81 only")
	}
	if err := f.e.ObserveDNS("a.example.test", []netip.Addr{netip.MustParseAddr("192.0.2.10")}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if !f.allowed("192.0.2.10", 80) || !f.allowed("192.0.2.10", 81) {
		t.Fatal("with the answer: want 80 and 81")
	}
	*f.clock = f.clock.Add(time.Minute)
	if _, err := f.e.ExpireDNS(); err != nil {
		t.Fatal(err)
	}
	if f.allowed("192.0.2.10", 80) || !f.allowed("192.0.2.10", 81) {
		t.Fatal("after expiry: want 81 only")
	}
}

// failingDeletes is an ipcache writer whose next n deletes fail.
type failingDeletes struct{ n int }

func (w *failingDeletes) UpsertPrefix(netip.Prefix, ipcache.Entry) error { return nil }
func (w *failingDeletes) DeletePrefix(netip.Prefix) error {
	if w.n > 0 {
		w.n--
		return errors.New("injected delete failure")
	}
	return nil
}

// An ipcache delete that fails when an answer expires is retried by the
// next ExpireDNS: the selections have already let the address go and will
// not report it again, so without the retry the address would stay
// allowed for ever.
func TestEngineFQDNExpiryRetriesFailedDelete(t *testing.T) {
	f := newFQDNFixture(t)
	w := &failingDeletes{n: 1}
	if err := f.ipc.AddWriter(w); err != nil {
		t.Fatal(err)
	}
	if err := f.e.ObserveDNS("www.example.test", []netip.Addr{netip.MustParseAddr("192.0.2.10")}, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if !f.allowed("192.0.2.10", 80) {
		t.Fatal("resolved address not allowed")
	}
	*f.clock = f.clock.Add(5 * time.Second)
	if _, err := f.e.ExpireDNS(); err == nil {
		t.Fatal("ExpireDNS hid the failed ipcache delete")
	}
	if !f.allowed("192.0.2.10", 80) {
		t.Fatal("the failed delete took the entry away all the same")
	}
	if _, err := f.e.ExpireDNS(); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if f.allowed("192.0.2.10", 80) {
		t.Fatal("still allowed after the retry")
	}
	if _, ok := f.ipc.Get(netip.MustParsePrefix("192.0.2.10/32")); ok {
		t.Fatal("ipcache entry left after the retry")
	}
}

// An answer with TTL 0 is learnt (Cilium puts its addresses in the
// datapath before the client gets the answer), not dropped.
func TestEngineFQDNZeroTTL(t *testing.T) {
	f := newFQDNFixture(t)
	if err := f.e.ObserveDNS("www.example.test", []netip.Addr{netip.MustParseAddr("192.0.2.10")}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.e.ExpireDNS(); err != nil {
		t.Fatal(err)
	}
	if !f.allowed("192.0.2.10", 80) {
		t.Fatal("TTL 0 answer not learnt")
	}
	*f.clock = f.clock.Add(fqdn.ZeroTTLLifetime)
	if _, err := f.e.ExpireDNS(); err != nil {
		t.Fatal(err)
	}
	if f.allowed("192.0.2.10", 80) {
		t.Fatalf("still allowed %v later", fqdn.ZeroTTLLifetime)
	}
}

// addFixturePolicy adds one more policy to a fixture's engine.
func (f *fqdnFixture) addPolicy(t *testing.T, doc string) {
	t.Helper()
	ps, err := f.e.Parse([]byte(doc), "extra.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.e.AddPolicy(ps[0]); err != nil {
		t.Fatal(err)
	}
}

// A deny rule that covers the DNS server and port denies every query,
// even when an allow rule with matching DNS rules comes first (Cilium's
// deny precedence: the datapath drops the query).
func TestEvaluateDNSDenyWinsWhateverTheOrder(t *testing.T) {
	f := newFQDNFixture(t)
	src, server := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddrPort("10.0.0.53:53")
	if d, err := f.e.EvaluateDNS(src, server, nodeplane.ProtoUDP, "www.example.test."); err != nil || !d.Allowed {
		t.Fatalf("before the deny: %+v %v", d, err)
	}
	f.addPolicy(t, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: zz-deny-dns, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egressDeny:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}}]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
`)
	d, err := f.e.EvaluateDNS(src, server, nodeplane.ProtoUDP, "www.example.test.")
	if err != nil || d.Allowed || !strings.Contains(d.Reason, "denied by") {
		t.Fatalf("with a deny for 53/UDP: %+v %v, want denied by the deny rule", d, err)
	}
	// The map agrees: the datapath drops the query.
	m, _ := f.web.snapshot()
	if dec := mapstate.Lookup(m, f.dns.ID, mapstate.Egress, nodeplane.ProtoUDP, 53); dec.Allowed {
		t.Fatalf("map allows 53/UDP to the server: %+v", dec)
	}
	// TCP 53 is not covered by the deny: the DNS rules decide.
	if d, err := f.e.EvaluateDNS(src, server, nodeplane.ProtoTCP, "www.example.test."); err != nil || !d.Allowed {
		t.Fatalf("53/TCP: %+v %v", d, err)
	}
}

// An empty DNS rule list is no DNS rules, as in Cilium (the DNS parser,
// and the redirect, only for a non-empty list): the port is allowed
// without the proxy, every name.
func TestEmptyDNSRuleListIsPlainL4(t *testing.T) {
	f := newFQDNFixture(t)
	f.addPolicy(t, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: empty-dns, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}}]
    toPorts:
    - ports: [{port: "5353", protocol: UDP}]
      rules: {dns: []}
`)
	m, _ := f.web.snapshot()
	dec := mapstate.Lookup(m, f.dns.ID, mapstate.Egress, nodeplane.ProtoUDP, 5353)
	if !dec.Allowed || dec.ProxyPort != 0 {
		t.Fatalf("5353/UDP with dns: [] → %+v, want allowed without redirect", dec)
	}
	d, err := f.e.EvaluateDNS(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddrPort("10.0.0.53:5353"), nodeplane.ProtoUDP, "anything.else.")
	if err != nil || !d.Allowed {
		t.Fatalf("EvaluateDNS with dns: [] → %+v %v, want allowed", d, err)
	}
}

// A pass of RunDNSExpiry whose ipcache delete fails does not end the
// loop: the failure is reported and the delete retried by the next pass,
// so the address does not stay allowed for ever.
func TestEngineRunDNSExpiryRetriesFailures(t *testing.T) {
	alloc := identity.NewLocalAllocator(identity.LocalAllocatorConfig{})
	defer alloc.Close()
	ipc := ipcache.New()
	if err := ipc.AddWriter(&failingDeletes{n: 1}); err != nil {
		t.Fatal(err)
	}
	e, err := NewEngine(EngineConfig{CIDRAllocator: alloc, IPCache: ipc, FQDN: &fqdn.Config{},
		Policy: Config{ProxyPorts: ProxyPorts{DNS: 10053}}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ps, err := e.Parse([]byte(fqdnPolicy), "fqdn.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddPolicy(ps[0]); err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddr("192.0.2.10")
	if err := e.ObserveDNS("a.example.test", []netip.Addr{addr}, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	failures := make(chan error, 10)
	go func() {
		done <- e.RunDNSExpiry(ctx, 50*time.Millisecond, func(err error) { failures <- err })
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, ok := ipc.Get(netip.PrefixFrom(addr, 32)); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("address still in the ipcache: the failed delete was not retried")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("RunDNSExpiry: %v", err)
	}
	select {
	case err := <-failures:
		if !strings.Contains(err.Error(), "injected delete failure") {
			t.Fatalf("reported %v", err)
		}
	default:
		t.Fatal("the failed pass was not reported")
	}
}
