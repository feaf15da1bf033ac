package lb

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/internal/testutils"
)

// topology is the test network: a "node" namespace that routes between
// client namespaces and backend namespaces over veth pairs. Each namespace
// has only its own addresses; service addresses exist nowhere, so a
// connection to one works only if the socket layer translates it.
//
//	client k  eth0 10.1.k.2/24 fd00:1:k::2/64 --- ck 10.1.k.1 fd00:1:k::1  node
//	backend j eth0 10.2.j.2/24 fd00:2:j::2/64 --- bj 10.2.j.1 fd00:2:j::1  node
type topology struct {
	node     *testutils.NetNS
	clients  []*endpointNS
	backends []*endpointNS
}

type endpointNS struct {
	name   string
	ns     *testutils.NetNS
	v4, v6 netip.Addr
}

// backendPort is where every backend serves TCP and UDP.
const backendPort = 8080

func newTopology(tb testing.TB, clients, backends int) *topology {
	tb.Helper()
	top := &topology{node: newQuietNS(tb)}
	nodeNL := top.node.Netlink(tb)
	sysctl(tb, top.node, "net/ipv4/ip_forward", "1")
	sysctl(tb, top.node, "net/ipv6/conf/all/forwarding", "1")
	add := func(kind string, idx int) *endpointNS {
		ns := newQuietNS(tb)
		nodeIf := fmt.Sprintf("%c%d", kind[0], idx)
		veth := testutils.NewVeth(tb, top.node, nodeIf, ns, "eth0")
		net := 1
		if kind == "backend" {
			net = 2
		}
		ep := &endpointNS{
			name: fmt.Sprintf("%s%d", kind, idx),
			ns:   ns,
			v4:   netip.MustParseAddr(fmt.Sprintf("10.%d.%d.2", net, idx)),
			v6:   netip.MustParseAddr(fmt.Sprintf("fd00:%d:%d::2", net, idx)),
		}
		gw4 := netip.MustParseAddr(fmt.Sprintf("10.%d.%d.1", net, idx))
		gw6 := netip.MustParseAddr(fmt.Sprintf("fd00:%d:%d::1", net, idx))
		addAddr(tb, nodeNL, veth.Index, netip.PrefixFrom(gw4, 24))
		addAddr(tb, nodeNL, veth.Index, netip.PrefixFrom(gw6, 64))
		nl := ns.Netlink(tb)
		addAddr(tb, nl, veth.PeerIndex, netip.PrefixFrom(ep.v4, 24))
		addAddr(tb, nl, veth.PeerIndex, netip.PrefixFrom(ep.v6, 64))
		for _, gw := range []netip.Addr{gw4, gw6} {
			if err := nl.RouteAdd(&netlink.Route{LinkIndex: veth.PeerIndex, Gw: gw.AsSlice()}); err != nil {
				tb.Fatalf("default route via %s in %s: %v", gw, ep.name, err)
			}
		}
		return ep
	}
	for i := range clients {
		top.clients = append(top.clients, add("client", i))
	}
	for i := range backends {
		top.backends = append(top.backends, add("backend", i))
	}
	return top
}

// newQuietNS is a namespace whose new interfaces skip IPv6 duplicate
// address detection: their link-local addresses, which neighbour discovery
// needs, would otherwise stay tentative for a second or more.
func newQuietNS(tb testing.TB) *testutils.NetNS {
	ns := testutils.NewNetNS(tb)
	sysctl(tb, ns, "net/ipv6/conf/default/accept_dad", "0")
	sysctl(tb, ns, "net/ipv6/conf/all/accept_dad", "0")
	return ns
}

func sysctl(tb testing.TB, ns *testutils.NetNS, name, value string) {
	tb.Helper()
	if err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/"+name, []byte(value), 0)
	}); err != nil {
		tb.Fatalf("sysctl %s: %v", name, err)
	}
}

func addAddr(tb testing.TB, h *netlink.Handle, index int, p netip.Prefix) {
	tb.Helper()
	link, err := h.LinkByIndex(index)
	if err != nil {
		tb.Fatal(err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	if p.Addr().Is6() {
		// Duplicate address detection would keep the address tentative,
		// and unusable, for a second or two.
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(link, addr); err != nil {
		tb.Fatalf("add %s: %v", p, err)
	}
}

// addr returns the backend's address in the family of v6.
func (ep *endpointNS) addr(v6 bool, port uint16) netip.AddrPort {
	if v6 {
		return netip.AddrPortFrom(ep.v6, port)
	}
	return netip.AddrPortFrom(ep.v4, port)
}

// serve starts TCP and UDP servers on port backendPort of every backend,
// for both families. A TCP server first writes "<backend> <client address it
// sees>\n" and then echoes lines; a UDP server answers each datagram with
// "<backend> <client address> <payload>".
func (top *topology) serve(tb testing.TB) {
	tb.Helper()
	for _, be := range top.backends {
		var (
			ln net.Listener
			pc net.PacketConn
		)
		if err := be.ns.Do(func() (err error) {
			// "tcp"/"udp" on the wildcard address is dual-stack.
			if ln, err = net.Listen("tcp", fmt.Sprintf(":%d", backendPort)); err != nil {
				return err
			}
			pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", backendPort))
			return err
		}); err != nil {
			tb.Fatalf("listen in %s: %v", be.name, err)
		}
		var wg sync.WaitGroup
		conns := make(map[net.Conn]struct{})
		var mu sync.Mutex
		wg.Add(2)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns[c] = struct{}{}
				mu.Unlock()
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer func() {
						mu.Lock()
						delete(conns, c)
						mu.Unlock()
						c.Close()
					}()
					if _, err := fmt.Fprintf(c, "%s %s\n", be.name, unmapString(c.RemoteAddr())); err != nil {
						return
					}
					_, _ = io.Copy(c, c)
				}()
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, 2048)
			for {
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				reply := fmt.Sprintf("%s %s %s", be.name, unmapString(from), buf[:n])
				_, _ = pc.WriteTo([]byte(reply), from)
			}
		}()
		tb.Cleanup(func() {
			ln.Close()
			pc.Close()
			mu.Lock()
			for c := range conns {
				c.Close()
			}
			mu.Unlock()
			wg.Wait()
		})
	}
}

func unmapString(a net.Addr) string {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return a.String()
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
}

// backendOf finds the backend a "<backend> ..." greeting names.
func (top *topology) backendOf(greeting string) *endpointNS {
	name, _, _ := strings.Cut(greeting, " ")
	for _, be := range top.backends {
		if be.name == name {
			return be
		}
	}
	return nil
}
