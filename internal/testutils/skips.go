package testutils

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/nodeplane/nodeplane/internal/feature"
)

// MissingFeature is a kernel feature that a test may skip for under
// NODEPLANE_REQUIRE_PRIV=1, because the CI kernel is known to lack it.
type MissingFeature struct {
	// Name is the feature exactly as its probe names it
	// ([feature.UnsupportedFeatureError.Name]) or as cilium/ebpf's
	// not-supported error spells it.
	Name string
	// Reason says why the CI kernel lacks it.
	Reason string
}

// AllowedMissingFeatures is the documented list of kernel features that may
// be missing in CI: a test that skips because of anything else fails there,
// in [SkipIfNotSupported] and again in the CI log check (see skipcheck). The
// README's testing section repeats this list; a test keeps the two equal.
//
// Add a feature only when the CI kernel (Linux 6.18, see doc/reliability.md)
// really lacks it, and name it as the probe does. Under .ci/vmtest's older
// kernel ([TestKernelEnv] is "6.1") the list is that kernel's instead: it
// has every feature above but predates tcx and netkit.
func AllowedMissingFeatures() []MissingFeature {
	if os.Getenv(TestKernelEnv) == "6.1" {
		return []MissingFeature{
			{"tcx", "Linux 6.1 predates tcx (6.6)"},
			{"netkit", "Linux 6.1 predates netkit (6.7)"},
		}
	}
	return []MissingFeature{
		{"sch_fq qdisc", "CONFIG_NET_SCH_FQ is not built"},
		{"fq_codel qdisc", "CONFIG_NET_SCH_FQ_CODEL is not built"},
		{"netem qdisc", "CONFIG_NET_SCH_NETEM is not built"},
		{"Geneve", "CONFIG_GENEVE is not built"},
		{"netkit", "CONFIG_NETKIT is not built"},
		{"dummy interfaces", "CONFIG_DUMMY is not built"},
		{"act_bpf", "CONFIG_NET_ACT_BPF is not built"},
		{"kprobes", "CONFIG_KPROBES is not built"},
		{"IPVS", "CONFIG_IP_VS is not built"},
		{"IPIP tunnels", "CONFIG_NET_IPIP is not built"},
		{"ip6 tunnels", "CONFIG_IPV6_TUNNEL is not built"},
	}
}

// TestKernelEnv names the kernel the tests run on when it is not the CI
// host's; .ci/vmtest sets it to "6.1" in its qemu guest.
const TestKernelEnv = "NODEPLANE_TEST_KERNEL"

// skipPrefix starts every skip message that [SkipIfNotSupported] writes;
// the CI log check looks for it.
const skipPrefix = "kernel feature missing: "

// missingFeatureName returns the name of the feature that err says is
// missing: the probe's name for our own probes, otherwise the error text.
func missingFeatureName(err error) string {
	if fe := (*feature.UnsupportedFeatureError)(nil); errors.As(err, &fe) {
		return fe.Name
	}
	return err.Error()
}

// allowedFeature returns the entry of [AllowedMissingFeatures] that a
// missing-feature error names, if any. Our probes must match a name
// exactly; other errors (cilium/ebpf's) match when their text contains it.
func allowedFeature(err error) (MissingFeature, bool) {
	fe := (*feature.UnsupportedFeatureError)(nil)
	exact := errors.As(err, &fe)
	for _, f := range AllowedMissingFeatures() {
		if exact && fe.Name == f.Name || !exact && strings.Contains(err.Error(), f.Name) {
			return f, true
		}
	}
	return MissingFeature{}, false
}

// skipMessage is what a test that skips for a missing feature logs:
// "kernel feature missing: [NAME]: error".
func skipMessage(name string, err error) string {
	return fmt.Sprintf("%s[%s]: %v", skipPrefix, name, err)
}

// AllowedSkip reports whether a skip message names a feature on the allowed
// list, and which. The CI log check calls it for every skipped test.
func AllowedSkip(msg string) (string, bool) {
	_, rest, ok := strings.Cut(msg, skipPrefix+"[")
	if !ok {
		return "", false
	}
	name, _, ok := strings.Cut(rest, "]")
	if !ok {
		return "", false
	}
	for _, f := range AllowedMissingFeatures() {
		if f.Name == name {
			return name, true
		}
	}
	return name, false
}
