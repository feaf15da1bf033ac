package lb

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/cloudflare/ipvs"
	"github.com/cloudflare/ipvs/netmask"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/feature"
	"github.com/nodeplane/nodeplane/internal/testutils"
)

// ipvsProbe asks whether the kernel has IPVS, the peer kube-proxy's IPVS
// mode uses: the generic netlink family "IPVS" exists once ip_vs is loaded.
// CONFIG_IP_VS is a build option (the CI host's 6.18 lacks it, Debian's 6.1
// has it as a module), so the probe names no version.
var ipvsProbe = feature.NewProbe("IPVS", "", probeIPVS)

func probeIPVS() error {
	c, err := ipvs.New()
	if errors.Is(err, os.ErrNotExist) {
		// The family appears when the module loads: try loading it
		// before calling IPVS absent.
		out, merr := exec.Command("modprobe", "ip_vs").CombinedOutput()
		c, err = ipvs.New()
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("generic netlink family IPVS: %w (modprobe ip_vs: %v: %s) (%w)",
				err, merr, bytes.TrimSpace(out), nodeplane.ErrNotSupported)
		}
	}
	if err != nil {
		return err
	}
	return closeIPVS(c)
}

// closeIPVS closes c's netlink socket: the Linux client has Close, the
// Client interface does not.
func closeIPVS(c ipvs.Client) error {
	if cl, ok := c.(io.Closer); ok {
		return cl.Close()
	}
	return nil
}

// haveIPVS reports whether the kernel has IPVS; the error wraps
// nodeplane.ErrNotSupported when it does not.
func haveIPVS() error { return ipvsProbe.Result() }

// ipvsScheduler is the scheduler of the IPVS baseline: round robin, the
// default of kube-proxy's IPVS mode. .ci/vmtest loads its module (ip_vs_rr).
const ipvsScheduler = "rr"

// setupIPVSService makes node balance vip over backends the way
// kube-proxy's IPVS mode does for a ClusterIP or LoadBalancer address: the
// VIP is a local address of the node (kube-proxy puts it on the dummy
// device kube-ipvs0; here it goes on the namespace's loopback, which needs
// no dummy driver and is the same to routing: a /32 local route), an IPVS
// virtual service VIP:port with the round-robin scheduler, and one
// destination per backend in masquerade (NAT) mode, so that the backend
// sees the client's own address. IPVS only intercepts packets for local
// addresses (its hook is at LOCAL_IN), hence the address.
// net.ipv4.vs.conntrack=1 as kube-proxy sets it, so that the connections
// stay in conntrack beside its iptables rules.
//
// The client it returns lives in node (IPVS state is per namespace) and is
// closed by tb.Cleanup.
func setupIPVSService(tb testing.TB, node *testutils.NetNS, vip netip.AddrPort, backends []Backend) ipvs.Client {
	tb.Helper()
	testutils.SkipIfNotSupported(tb, haveIPVS())
	addLocalVIP(tb, node, vip.Addr())
	return createIPVSService(tb, node, vip, backends)
}

// addLocalVIP makes addr a local address of node, on its loopback.
func addLocalVIP(tb testing.TB, node *testutils.NetNS, addr netip.Addr) {
	tb.Helper()
	nl := node.Netlink(tb)
	lo, err := nl.LinkByName("lo")
	if err != nil {
		tb.Fatal(err)
	}
	addAddr(tb, nl, lo.Attrs().Index, netip.PrefixFrom(addr, 32))
}

// createIPVSService is setupIPVSService without the address.
func createIPVSService(tb testing.TB, node *testutils.NetNS, vip netip.AddrPort, backends []Backend) ipvs.Client {
	tb.Helper()
	sysctl(tb, node, "net/ipv4/vs/conntrack", "1")
	var c ipvs.Client
	if err := node.Do(func() (err error) {
		// The socket stays in the namespace it was opened in.
		c, err = ipvs.New()
		return err
	}); err != nil {
		tb.Fatalf("IPVS client in the node namespace: %v", err)
	}
	tb.Cleanup(func() { closeIPVS(c) })
	svc := ipvs.Service{
		Address:   vip.Addr(),
		Port:      vip.Port(),
		Protocol:  ipvs.TCP,
		Family:    ipvs.INET,
		Netmask:   netmask.MaskFrom(32, 32),
		Scheduler: ipvsScheduler,
	}
	if err := c.CreateService(svc); err != nil {
		tb.Fatalf("IPVS service %s: %v", vip, err)
	}
	for _, be := range backends {
		if !be.Addr.Addr().Is4() {
			tb.Fatalf("IPVS baseline: backend %s is not IPv4", be.Addr)
		}
		if err := c.CreateDestination(svc, ipvs.Destination{
			Address:   be.Addr.Addr(),
			Port:      be.Addr.Port(),
			Family:    ipvs.INET,
			FwdMethod: ipvs.Masquerade,
			Weight:    1,
		}); err != nil {
			tb.Fatalf("IPVS destination %s: %v", be.Addr, err)
		}
	}
	return c
}

// TestPrivilegedIPVSBaseline shows that the IPVS peer of the north-south
// benchmarks forwards: before the virtual service exists a connect to the
// VIP (a local address of the node where nothing listens) is refused; with
// it, each connection reaches a backend, which sees the client's own
// address (NAT mode translates the destination only) and echoes a line
// back; round robin alternates the two backends; and IPVS's own counters
// show the connections on its destinations.
func TestPrivilegedIPVSBaseline(t *testing.T) {
	testutils.RequirePrivileged(t)
	testutils.SkipIfNotSupported(t, haveIPVS())
	top := newTopology(t, 1, 2)
	top.serve(t)
	client := top.clients[0]
	backends := []Backend{
		{Addr: top.backends[0].addr(false, backendPort)},
		{Addr: top.backends[1].addr(false, backendPort)},
	}
	vip := netip.MustParseAddrPort("10.99.0.4:80")

	// Without the service nothing forwards the VIP: the node's own stack
	// refuses the connection.
	addLocalVIP(t, top.node, vip.Addr())
	if err := client.ns.Do(func() error {
		c, err := net.DialTimeout("tcp", vip.String(), 2*time.Second)
		if err == nil {
			c.Close()
			return errors.New("connected without an IPVS service")
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("want connection refused, got %w", err)
		}
		return nil
	}); err != nil {
		t.Fatalf("before the service: %v", err)
	}

	c := createIPVSService(t, top.node, vip, backends)

	const conns = 4
	seen := make(map[string]int)
	for i := range conns {
		if err := client.ns.Do(func() error {
			conn, err := net.DialTimeout("tcp", vip.String(), 2*time.Second)
			if err != nil {
				return err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			r := bufio.NewReader(conn)
			greeting, err := r.ReadString('\n')
			if err != nil {
				return fmt.Errorf("greeting: %w", err)
			}
			be := top.backendOf(greeting)
			if be == nil {
				return fmt.Errorf("greeting %q names no backend", greeting)
			}
			local := netip.MustParseAddrPort(conn.LocalAddr().String())
			if want := fmt.Sprintf("%s %s\n", be.name, local); greeting != want {
				return fmt.Errorf("greeting %q, want %q: the backend must see the client's address", greeting, want)
			}
			line := fmt.Sprintf("ping %d\n", i)
			if _, err := conn.Write([]byte(line)); err != nil {
				return err
			}
			echo, err := r.ReadString('\n')
			if err != nil {
				return fmt.Errorf("echo: %w", err)
			}
			if echo != line {
				return fmt.Errorf("echo %q, want %q", echo, line)
			}
			seen[be.name]++
			return nil
		}); err != nil {
			t.Fatalf("connection %d through %s: %v", i, vip, err)
		}
	}
	for _, be := range top.backends {
		if seen[be.name] != conns/len(top.backends) {
			t.Errorf("round robin: backends got %v connections, want %d each", seen, conns/len(top.backends))
			break
		}
	}

	// The counters IPVS reports are summed from per-CPU ones by its rate
	// estimator, every 2 seconds on 6.1, so they lag.
	var total uint64
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		total = ipvsConnections(t, c)
		if total >= conns || time.Now().After(deadline) {
			break
		}
	}
	if total != conns {
		t.Errorf("IPVS counted %d connections on its destinations, want %d", total, conns)
	}
}

// ipvsConnections returns the connections IPVS has counted on the
// destinations of its one service, and checks that they masquerade.
func ipvsConnections(t *testing.T, c ipvs.Client) uint64 {
	t.Helper()
	svcs, err := c.Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 1 {
		t.Fatalf("IPVS has %d services, want 1", len(svcs))
	}
	dests, err := c.Destinations(svcs[0].Service)
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, d := range dests {
		if d.FwdMethod != ipvs.Masquerade {
			t.Fatalf("destination %s: forwarding %v, want masquerade", d.Address, d.FwdMethod)
		}
		total += d.Stats.Connections
	}
	return total
}
