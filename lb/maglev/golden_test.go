package maglev

import (
	"math"
	"net/netip"
	"testing"

	"github.com/nodeplane/nodeplane"
	"github.com/nodeplane/nodeplane/internal/testutils/maglevgolden"
)

func loadGolden(tb testing.TB) []maglevgolden.Case {
	return maglevgolden.Load(tb, "testdata/cilium_tables.json.gz")
}

var protocolByName = map[string]nodeplane.Protocol{"TCP": nodeplane.ProtoTCP, "UDP": nodeplane.ProtoUDP, "SCTP": nodeplane.ProtoSCTP, "ANY": nodeplane.ProtoAny}

// goldenBackends returns gc's backends as the Builder takes them.
func goldenBackends(tb testing.TB, gc *maglevgolden.Case) []Backend {
	tb.Helper()
	out := make([]Backend, len(gc.Backends))
	for i, b := range gc.Backends {
		proto, ok := protocolByName[b.Proto]
		if !ok {
			tb.Fatalf("%s: protocol %q", gc.Name, b.Proto)
		}
		key, err := BackendKey(netip.MustParseAddrPort(b.Addr), proto)
		if err != nil {
			tb.Fatal(err)
		}
		out[i] = Backend{Key: key, ID: b.ID, Weight: b.Weight}
	}
	return out
}

// pacings are the ways a Builder can pace weighted turns, which must give
// the same tables: scanning while it is cheap (the default), the calendar
// only, and scanning only.
var pacings = []struct {
	name   string
	budget uint64
}{
	{"default", defaultScanBudget},
	{"calendar", 0},
	{"scan", math.MaxUint32},
}

func newPaced(tb testing.TB, cfg Config, budget uint64) *Builder {
	tb.Helper()
	b, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	b.scanBudget = budget
	return b
}

// TestCiliumGoldenTables checks that the tables equal those Cilium's own
// code computed for the same inputs: all table sizes, three seeds, 1 to
// 1000 backends, IPv4, IPv6 and IPv4-mapped addresses, all protocols, even
// and weighted pools (including weight 0), more backends than entries and
// duplicate keys; and that for every way of pacing weighted turns.
func TestCiliumGoldenTables(t *testing.T) {
	cases := loadGolden(t)
	type key struct {
		cfg    Config
		budget uint64
	}
	builders := map[key]*Builder{}
	for _, gc := range cases {
		backends := goldenBackends(t, &gc)
		for _, p := range pacings {
			t.Run(gc.Name+"/pacing="+p.name, func(t *testing.T) {
				k := key{Config{TableSize: gc.TableSize, HashSeed: gc.HashSeed}, p.budget}
				if builders[k] == nil {
					builders[k] = newPaced(t, k.cfg, k.budget)
				}
				table, err := builders[k].Table(backends)
				if err != nil {
					t.Fatal(err)
				}
				if gc.Table != nil {
					for i := range table {
						if table[i] != gc.Table[i] {
							t.Fatalf("entry %d: got %d, Cilium has %d", i, table[i], gc.Table[i])
						}
					}
				}
				if got := maglevgolden.Digest(table); got != gc.SHA256 {
					t.Fatalf("table digest %s, Cilium's is %s", got, gc.SHA256)
				}
			})
		}
	}
}
