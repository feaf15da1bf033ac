package datapath

import (
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/nodeplane/nodeplane/identity"
	"github.com/nodeplane/nodeplane/internal/testutils"
	"github.com/nodeplane/nodeplane/internal/testutils/testmain"
	"github.com/nodeplane/nodeplane/policy/mapstate"
)

func TestMain(m *testing.M) {
	// The crash test re-executes the test binary as an agent to kill.
	if os.Getenv(agentEnv) != "" {
		os.Exit(agentMain())
	}
	testmain.Run(m)
}

// nsPath names a test namespace by a path the datapath can open.
func nsPath(ns *testutils.NetNS) string {
	return fmt.Sprintf("/proc/self/fd/%d", ns.FD())
}

// newTestDatapath returns a Datapath whose node namespace is a fresh test
// namespace, closed at cleanup. It skips unprivileged runs.
func newTestDatapath(tb testing.TB, cfg Config) (*Datapath, *testutils.NetNS) {
	tb.Helper()
	testutils.RequirePrivileged(tb)
	node := testutils.NewNetNS(tb)
	cfg.NodeNetNS = nsPath(node)
	if cfg.ConntrackMaxEntries == 0 {
		cfg.ConntrackMaxEntries = 4096
	}
	if cfg.IPCacheMaxEntries == 0 {
		cfg.IPCacheMaxEntries = 4096
	}
	d, err := New(cfg)
	testutils.SkipIfNotSupported(tb, err)
	tb.Cleanup(func() {
		if err := d.Close(); err != nil {
			tb.Errorf("close datapath: %v", err)
		}
	})
	return d, node
}

func addDetached(tb testing.TB, d *Datapath, id EndpointID, ident identity.ID, v4, v6 string) *Endpoint {
	tb.Helper()
	cfg := EndpointConfig{ID: id, Identity: ident, Detached: true}
	if v4 != "" {
		cfg.IPv4 = netip.MustParseAddr(v4)
	}
	if v6 != "" {
		cfg.IPv6 = netip.MustParseAddr(v6)
	}
	ep, err := d.AddEndpoint(cfg)
	if err != nil {
		tb.Fatalf("add endpoint %d: %v", id, err)
	}
	return ep
}

func mustBytes(tb testing.TB, p TestPacket) []byte {
	tb.Helper()
	b, err := p.Bytes()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func mustUpdate(tb testing.TB, pm *PolicyMap, entries map[mapstate.Key]mapstate.Entry) {
	tb.Helper()
	if err := pm.Apply(entries, nil); err != nil {
		tb.Fatal(err)
	}
}
