package main

import (
	"testing"

	"github.com/nodeplane/nodeplane/internal/testutils/testmain"
)

// The end-to-end tests hold BPF objects (the test agent's datapath) and
// namespaces; testmain fails the run if any outlives the tests.
func TestMain(m *testing.M) { testmain.Run(m) }
