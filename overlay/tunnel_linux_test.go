package overlay_test

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/overlay"
)

// TestPrivilegedTunnel creates VXLAN devices with the default and the
// IANA port and reads them back through netlink: collect-metadata mode,
// port, MTU = underlay MTU - overhead, NOARP, the host addresses; a
// second NewTunnel of the same configuration adopts the device, one of
// another replaces it.
func TestPrivilegedTunnel(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  overlay.TunnelConfig
		port int
		mtu  int
	}{
		{"default", overlay.TunnelConfig{}, 8472, 1450},
		{"IANA port, jumbo underlay", overlay.TunnelConfig{Port: overlay.IANAVXLANPort, UnderlayMTU: 9000}, 4789, 8950},
		{"IPv6 underlay", overlay.TunnelConfig{IPv6Underlay: true, Name: "vx6"}, 8472, 1430},
		{"host addresses", overlay.TunnelConfig{HostAddresses: []netip.Addr{netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("fd01::1")}}, 8472, 1450},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := testutils.NewNetNS(t)
			tc.cfg.NodeNetNS = nsPath(ns)
			tun, err := overlay.NewTunnel(tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			nl := ns.Netlink(t)
			l, err := nl.LinkByIndex(tun.Ifindex())
			if err != nil {
				t.Fatal(err)
			}
			vx, ok := l.(*netlink.Vxlan)
			if !ok {
				t.Fatalf("device is a %s, want vxlan", l.Type())
			}
			if !vx.FlowBased || vx.Port != tc.port || vx.MTU != tc.mtu || vx.Name != tun.Name() || vx.Flags&net.FlagUp == 0 {
				t.Errorf("device %s: collect-metadata %v, port %d, MTU %d; want true, %d, %d", vx.Name, vx.FlowBased, vx.Port, vx.MTU, tc.port, tc.mtu)
			}
			if vx.RawFlags&unix.IFF_NOARP == 0 {
				t.Errorf("device %s has ARP on; want NOARP", vx.Name)
			}
			addrs, err := nl.AddrList(l, netlink.FAMILY_ALL)
			if err != nil {
				t.Fatal(err)
			}
			var got []netip.Addr
			for _, a := range addrs {
				if ip, _ := netip.AddrFromSlice(a.IP); ip.Unmap().IsGlobalUnicast() {
					got = append(got, ip.Unmap())
				}
			}
			if len(got) != len(tc.cfg.HostAddresses) {
				t.Errorf("device addresses %v, want %v", got, tc.cfg.HostAddresses)
			}
			for _, want := range tc.cfg.HostAddresses {
				if !slices.Contains(got, want) {
					t.Errorf("device addresses %v lack %v", got, want)
				}
			}
			if tun.PodMTU() != tc.mtu {
				t.Errorf("PodMTU %d, want %d", tun.PodMTU(), tc.mtu)
			}
			if tun.Adopted() {
				t.Error("a new device reported as adopted")
			}
			// A second tunnel of the same name and configuration adopts
			// the device (a restarting agent); one of another port
			// replaces it.
			same, err := overlay.NewTunnel(tc.cfg)
			if err != nil {
				t.Fatalf("adopting the device: %v", err)
			}
			if !same.Adopted() || same.Ifindex() != tun.Ifindex() {
				t.Errorf("second tunnel: adopted %v, ifindex %d; want true, %d", same.Adopted(), same.Ifindex(), tun.Ifindex())
			}
			other := tc.cfg
			other.Port++
			again, err := overlay.NewTunnel(other)
			if err != nil {
				t.Fatalf("replacing the device: %v", err)
			}
			if again.Adopted() {
				t.Error("a device of another port was adopted")
			}
			if err := same.Close(); err != nil {
				t.Errorf("closing the replaced tunnel: %v", err)
			}
			if err := again.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := nl.LinkByName(tun.Name()); err == nil {
				t.Error("device still there after Close")
			}
			if err := tun.Close(); err != nil {
				t.Errorf("closing the replaced tunnel: %v", err)
			}
		})
	}
}

func TestTunnelConfigInvalid(t *testing.T) {
	for _, cfg := range []overlay.TunnelConfig{
		{Name: "a-name-longer-than-15"},
		{Protocol: 9},
		{UnderlayMTU: 1300},
		{UnderlayMTU: 70000},
		{HostAddresses: []netip.Addr{netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2")}},
		{HostAddresses: []netip.Addr{netip.MustParseAddr("fd01::1"), netip.MustParseAddr("fd01::2")}},
		{HostAddresses: []netip.Addr{{}}},
		{HostAddresses: []netip.Addr{netip.MustParseAddr("::ffff:10.1.0.1")}},
	} {
		if _, err := overlay.NewTunnel(cfg); !errors.Is(err, overlay.ErrInvalidConfig) {
			t.Errorf("NewTunnel(%+v) = %v, want ErrInvalidConfig", cfg, err)
		}
	}
}

// TestPrivilegedGeneve creates a Geneve device where the kernel has it;
// this CI kernel lacks CONFIG_GENEVE, and the probe says so.
func TestPrivilegedGeneve(t *testing.T) {
	ns := testutils.NewNetNS(t)
	testutils.SkipIfNotSupported(t, overlay.HaveGeneve())
	tun, err := overlay.NewTunnel(overlay.TunnelConfig{NodeNetNS: nsPath(ns), Protocol: overlay.Geneve, Name: "np_geneve"})
	if err != nil {
		t.Fatal(err)
	}
	defer tun.Close()
	l, err := ns.Netlink(t).LinkByIndex(tun.Ifindex())
	if err != nil {
		t.Fatal(err)
	}
	g, ok := l.(*netlink.Geneve)
	if !ok || !g.FlowBased || g.Dport != overlay.DefaultGenevePort || g.MTU != 1450 {
		t.Errorf("device %+v, want a collect-metadata Geneve device on %d with MTU 1450", l, overlay.DefaultGenevePort)
	}
}
