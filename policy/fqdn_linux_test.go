package policy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/datapath"
	"github.com/nodeplane/nodeplane/fqdn"
	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/identity/ipcache"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestPrivilegedFQDNTraffic sends real TCP from an endpoint to an address
// outside the cluster that a toFQDNs rule names by pattern: denied before
// a DNS answer gave the address to a matching name, allowed after, and
// denied again for new connections once the answer's TTL ran out, while a
// connection opened before keeps working (conntrack), as in Cilium.
func TestPrivilegedFQDNTraffic(t *testing.T) {
	d, node := newTestDatapath(t, datapath.Config{})
	alloc, err := identity.NewInProcessAllocator(identity.InProcessConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { alloc.Close() })
	ipc := ipcache.New()
	if err := ipc.AddWriter(d.IPCache()); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	clock := func() time.Time { return now }
	engine, err := NewEngine(EngineConfig{CIDRAllocator: alloc, IPCache: ipc, FQDN: &fqdn.Config{Now: clock}, Policy: Config{ProxyPorts: ProxyPorts{DNS: 10053}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { engine.Close() })
	ctx := context.Background()

	// The client endpoint.
	ls := mustLabels(t, "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod,"+clusterLbl)
	id, _, err := alloc.Allocate(ctx, ls)
	if err != nil {
		t.Fatal(err)
	}
	if err := engine.UpdateIdentities([]identity.Identity{{ID: id, Labels: ls}}, nil); err != nil {
		t.Fatal(err)
	}
	clientNS := testutils.NewNetNS(t)
	clientAddr := netip.MustParseAddr("10.0.1.1")
	ep, err := d.AddEndpoint(datapath.EndpointConfig{ID: 1, Identity: id, IPv4: clientAddr,
		NetNS: fmt.Sprintf("/proc/self/fd/%d", clientNS.FD())})
	if err != nil {
		t.Fatal(err)
	}
	if err := ipc.Upsert(netip.PrefixFrom(clientAddr, 32), ipcache.Entry{Identity: id}); err != nil {
		t.Fatal(err)
	}
	if err := engine.AddEndpoint(ep); err != nil {
		t.Fatal(err)
	}

	// Two servers outside the cluster, on the node: one that DNS will
	// name *.example.test, one a name no rule matches.
	nl := node.Netlink(t)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	named, other := netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("192.0.2.11")
	for _, a := range []netip.Addr{named, other} {
		if err := nl.AddrAdd(lo, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}, Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatal(err)
		}
		testutils.ServeEcho(t, node, "tcp", netip.AddrPortFrom(a, 8080).String())
	}

	ps, err := engine.Parse([]byte(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: fqdn, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
  - toFQDNs: [{matchPattern: "*.example.test"}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
`), "fqdn.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := engine.AddPolicy(ps[0]); err != nil {
		t.Fatal(err)
	}

	const timeout = 700 * time.Millisecond
	try := func(dst netip.Addr) error {
		return connect(clientNS, netip.AddrPort{}, netip.AddrPortFrom(dst, 8080), timeout)
	}
	if err := try(named); err == nil {
		t.Fatal("connected before any DNS answer")
	}
	if err := engine.ObserveDNS("api.example.test", []netip.Addr{named}, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := engine.ObserveDNS("api.other.test", []netip.Addr{other}, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := try(named); err != nil {
		t.Fatalf("resolved address: %v", err)
	}
	if err := try(other); err == nil {
		t.Fatal("address of a name no rule matches: connected")
	}

	// A connection opened while the answer is valid.
	var open net.Conn
	if err := clientNS.Do(func() (err error) {
		open, err = net.DialTimeout("tcp", netip.AddrPortFrom(named, 8080).String(), timeout)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if err := echoOnce(open, timeout); err != nil {
		t.Fatal(err)
	}

	now = now.Add(30 * time.Second)
	if _, err := engine.ExpireDNS(); err != nil {
		t.Fatal(err)
	}
	if err := try(named); err == nil {
		t.Fatal("new connection after the TTL ran out: connected")
	}
	if err := echoOnce(open, timeout); err != nil {
		t.Fatalf("open connection cut by the expiry: %v", err)
	}
}
