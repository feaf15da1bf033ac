package lb

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/nodeplane/nodeplane"
)

func fe(s string, p nodeplane.Protocol) Frontend {
	return Frontend{Addr: netip.MustParseAddrPort(s), Protocol: p}
}

// describeTable prints a table canonically.
func describeTable(t *table) string {
	var lines []string
	for _, e := range t.services {
		// Slot order matters; the order of the other backends is the
		// caller's and not in the maps.
		bes := slices.Clone(e.backends)
		slices.SortFunc(bes, func(a, b backendEntry) int { return int(a.id) - int(b.id) })
		var bs []string
		for _, b := range bes {
			bs = append(bs, fmt.Sprintf("%d=%s/w%d/%s", b.id, b.Addr, b.Weight, b.State))
		}
		// Which backends are local shows in the slots of an
		// internalTrafficPolicy=Local service; the maps keep no more.
		lines = append(lines, fmt.Sprintf("%d %s %s %s aff=%s itl=%v bank=%d slots=%v {%s}", e.id, e.svc.Frontend, e.svc.Type,
			e.svc.Algorithm, e.svc.SessionAffinity, e.svc.InternalTrafficLocal, e.bank, slotIDs(e), strings.Join(bs, " ")))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}
