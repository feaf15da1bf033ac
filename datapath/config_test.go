package datapath

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

func TestConfigDefaults(t *testing.T) {
	c, err := Config{}.withDefaults(4096)
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxEndpoints != defaultMaxEndpoints || c.ConntrackMaxEntries != defaultConntrackMaxEntries || c.FragmentsMaxEntries != 8192 ||
		c.EventsBufferSize != defaultEventsBufferSize || c.TCPLifetime != 6*time.Hour || c.Attach != AttachAuto ||
		c.NATMaxEntries != 65536 {
		t.Fatalf("defaults: %+v", c)
	}
	for _, bad := range []Config{
		{MaxEndpoints: -1},
		{MaxEndpoints: 70000},
		{ConntrackMaxEntries: -5},
		{FragmentsMaxEntries: -1},
		{NATMaxEntries: -1},
		{EventsBufferSize: 4096 + 1},
		{EventsBufferSize: 1024},
		{TCPLifetime: 1500 * time.Millisecond},
		{CloseLifetime: -time.Second},
		{Attach: 9},
	} {
		if _, err := bad.withDefaults(4096); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: %v, want ErrInvalidConfig", bad, err)
		}
	}
}

func TestEndpointConfigValidation(t *testing.T) {
	good := EndpointConfig{ID: 3, Identity: 1000, IPv4: addrA, NetNS: "/proc/1/ns/net"}
	c, err := good.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.IfName != "eth0" || c.HostIfName != "np3" || c.MAC.String() != "0a:58:0a:00:00:01" {
		t.Fatalf("defaults: %+v", c)
	}
	c6, err := EndpointConfig{ID: 0x102, Identity: 1000, IPv6: addrA6, Detached: true}.withDefaults()
	if err != nil || c6.MAC.String() != "0a:58:00:00:01:02" {
		t.Fatalf("IPv6-only default MAC: %v %v", c6.MAC, err)
	}

	for name, mod := range map[string]func(*EndpointConfig){
		"ID 0":                        func(c *EndpointConfig) { c.ID = 0 },
		"identity 0":                  func(c *EndpointConfig) { c.Identity = 0 },
		"no address":                  func(c *EndpointConfig) { c.IPv4 = netip.Addr{} },
		"IPv6 in IPv4":                func(c *EndpointConfig) { c.IPv4 = addrA6 },
		"IPv4 in IPv6":                func(c *EndpointConfig) { c.IPv6 = addrA },
		"mapped IPv6":                 func(c *EndpointConfig) { c.IPv6 = netip.MustParseAddr("::ffff:10.0.0.1") },
		"link-local IPv6":             func(c *EndpointConfig) { c.IPv6 = netip.MustParseAddr("fe80::1") },
		"multicast IPv4":              func(c *EndpointConfig) { c.IPv4 = netip.MustParseAddr("224.0.0.1") },
		"multicast MAC":               func(c *EndpointConfig) { c.MAC = net.HardwareAddr{1, 0, 0, 0, 0, 1} },
		"short MAC":                   func(c *EndpointConfig) { c.MAC = net.HardwareAddr{2, 0, 0} },
		"no namespace":                func(c *EndpointConfig) { c.NetNS = "" },
		"detached with netns":         func(c *EndpointConfig) { c.Detached = true },
		"long interface name":         func(c *EndpointConfig) { c.HostIfName = "a-very-long-name" },
		"slash in name":               func(c *EndpointConfig) { c.IfName = "eth/0" },
		"MTU too small":               func(c *EndpointConfig) { c.MTU = 20 },
		"loopback IPv4":               func(c *EndpointConfig) { c.IPv4 = netip.MustParseAddr("127.0.0.1") },
		"loopback IPv4 /8":            func(c *EndpointConfig) { c.IPv4 = netip.MustParseAddr("127.1.2.3") },
		"loopback IPv6":               func(c *EndpointConfig) { c.IPv6 = netip.IPv6Loopback() },
		"broadcast IPv4":              func(c *EndpointConfig) { c.IPv4 = netip.MustParseAddr("255.255.255.255") },
		"this-network IPv4":           func(c *EndpointConfig) { c.IPv4 = netip.MustParseAddr("0.1.2.3") },
		"unspecified IPv4":            func(c *EndpointConfig) { c.IPv4 = netip.IPv4Unspecified() },
		"unspecified IPv6":            func(c *EndpointConfig) { c.IPv6 = netip.IPv6Unspecified() },
		"multicast IPv6":              func(c *EndpointConfig) { c.IPv6 = netip.MustParseAddr("ff02::1") },
		"link-local IPv4":             func(c *EndpointConfig) { c.IPv4 = netip.MustParseAddr("169.254.1.1") },
		"host identity":               func(c *EndpointConfig) { c.Identity = identity.ReservedHost },
		"world identity":              func(c *EndpointConfig) { c.Identity = identity.ReservedWorld },
		"unmanaged identity":          func(c *EndpointConfig) { c.Identity = identity.ReservedUnmanaged },
		"remote-node identity":        func(c *EndpointConfig) { c.Identity = identity.ReservedRemoteNode },
		"world-ipv6 identity":         func(c *EndpointConfig) { c.Identity = identity.ReservedWorldIPv6 },
		"unnamed reserved identity":   func(c *EndpointConfig) { c.Identity = 200 },
		"local-scope (CIDR) identity": func(c *EndpointConfig) { c.Identity = identity.LocalScopeFlag | 1 },
		"identity above 24 bits":      func(c *EndpointConfig) { c.Identity = 1 << 25 },
	} {
		c := good
		mod(&c)
		if _, err := c.withDefaults(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: %v, want ErrInvalidConfig", name, err)
		}
	}

	// The reserved identities an endpoint may have: a health-check
	// endpoint, and one whose labels are not known yet.
	for _, id := range []identity.ID{identity.ReservedHealth, identity.ReservedInit} {
		c := good
		c.Identity = id
		if _, err := c.withDefaults(); err != nil {
			t.Errorf("identity %v: %v", id, err)
		}
	}
}

func TestPolicyKeyRawRoundTrip(t *testing.T) {
	for _, k := range []mapstate.Key{
		{},
		{Identity: 5, Direction: mapstate.Egress},
		{Identity: 1000, Protocol: protoTCP},
		{Identity: 1000, Protocol: protoTCP, Port: 8080, PortPrefixLen: 14},
		{Protocol: protoUDP, Port: 53, PortPrefixLen: 16},
		{Protocol: protoICMP, Port: 0, PortPrefixLen: 1},
	} {
		got, err := rawPolicyKey(k).typed()
		if err != nil || got != k {
			t.Errorf("%v -> %+v -> %v, %v", k, rawPolicyKey(k), got, err)
		}
		e := mapstate.Entry{Deny: k.Identity == 5, ProxyPort: 15001, ProxyPortPriority: 2}
		if r := rawPolicyEntry(e, k); r.typed() != e || r.L4PrefixLen != k.L4PrefixLen() {
			t.Errorf("entry %+v -> %+v", e, r)
		}
	}
	if _, err := (policyKey{PrefixLen: 44}).typed(); err == nil {
		t.Error("a key with half a protocol accepted")
	}
}

func TestIPCacheKey(t *testing.T) {
	for _, s := range []string{"0.0.0.0/0", "10.0.0.0/8", "192.0.2.1/32", "::/0", "2001:db8::/32", "fd00::1/128", "::ffff:10.0.0.0/104"} {
		p := netip.MustParsePrefix(s)
		got, err := ipcacheKeyFor(p).prefix()
		if err != nil || got != p {
			t.Errorf("%v -> %v, %v", p, got, err)
		}
	}
	if k := ipcacheKeyFor(netip.MustParsePrefix("10.1.2.3/8")); k.Addr[1] != 0 || k.PrefixLen != 40 {
		t.Errorf("host bits not masked: %+v", k)
	}
}
