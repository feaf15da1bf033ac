// Package testutils is the test harness of nodeplane: it gates privileged
// tests on capabilities and kernel features, and gives each test its own
// network namespaces, veth pairs, bpffs and cgroup, all removed by
// t.Cleanup. Nothing here touches the host's network namespace.
//
// A privileged test starts with [RequirePrivileged]; [NewNetNS], [NewBPFFS]
// and [NewCgroup] call it too, so a test that needs them skips rather than
// fails without root. It skips with a message naming the missing
// capabilities, or fails instead when the environment variable
// NODEPLANE_REQUIRE_PRIV is 1, which CI sets so that kernel tests can never
// be skipped silently there. A missing kernel feature is reported with
// [SkipIfNotSupported]: it skips, but under NODEPLANE_REQUIRE_PRIV=1 only
// for a feature on [AllowedMissingFeatures], the documented list of what the
// CI kernel lacks. The command skipcheck checks a `go test -json` log for
// any other skip.
package testutils
