// Package testutils is the test harness of nodeplane: it gates privileged
// tests on capabilities and kernel features, and gives each test its own
// network namespaces, veth pairs, bpffs and cgroup, all removed by
// t.Cleanup. Nothing here touches the host's network namespace.
//
// A privileged test starts with [RequirePrivileged]. It skips with a message
// naming the missing capabilities, or fails instead when the environment
// variable NODEPLANE_REQUIRE_PRIV is 1, which CI sets so that kernel tests can
// never be skipped silently there. A missing kernel feature is reported with
// [SkipIfNotSupported], which skips in both cases: the machine cannot do it,
// so the test cannot tell.
package testutils
