package testutils

import (
	"os"
	"os/exec"
	"testing"
)

// HubbleCLIEnv names the environment variable that holds the path of the
// real hubble CLI, as `.ci/hubble-cli` prints it.
const HubbleCLIEnv = "NODEPLANE_HUBBLE_CLI"

// HubbleCLI returns the path of the real hubble CLI from $NODEPLANE_HUBBLE_CLI.
// Without it the test skips, or fails when NODEPLANE_REQUIRE_PRIV=1: CI
// builds the CLI, so there a missing binary is a broken CI, not a missing
// kernel feature.
func HubbleCLI(tb testing.TB) string {
	tb.Helper()
	path := os.Getenv(HubbleCLIEnv)
	if path == "" {
		msg := "the real hubble CLI is needed: run `export " + HubbleCLIEnv + "=$(.ci/hubble-cli)`"
		if os.Getenv(RequirePrivEnv) == "1" {
			tb.Fatalf("%s; %s=1 forbids skipping", msg, RequirePrivEnv)
		}
		tb.Skip(msg)
	}
	if _, err := exec.LookPath(path); err != nil {
		tb.Fatalf("%s=%s: %v", HubbleCLIEnv, path, err)
	}
	return path
}
